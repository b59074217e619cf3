"""Review s75 (deployed): the exact check as deployed, for models that decide from floats.

Exact passes are verified as written (ONNX Runtime's graph rewrites off). A constant an exact pass folds can let ONNX
Runtime rewrite the result in a way it could not rewrite the original: Kokoro-82M's head dim, folded, let it fuse each
score ``MatMul`` and its ``Div`` into a ``FusedMatMul`` that multiplies by ``1/sqrt(d)``, one ulp off, and the model's
rounded durations flipped as deployed, every output exact as written (review s75 hunt 12). Where the original decides
a whole number or a boolean from floats (``optimizer.verify.rounded_decisions``), the exact check now runs each result
that passed as written at ONNX Runtime's full optimization level too, against the original so run
(``Verifier._decided_as_deployed``): one more session per result, none for a model with no such decision.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer.verify as verify
from optimizer.api import optimize_with_report
from optimizer.verify import Verifier, rounded_decisions
from tests.test_review_s75_hunt12 import _deployed, _inputs_rounding_apart


def _scores_cast() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Kokoro's attention scores (``MatMul(q, qᵀ) / Sqrt(d)``, ``d`` read from ``Shape`` of a ``Reshape`` with -1),
    their excess over an input threshold scaled past one ulp by 2^24 and cast to int32 (a whole number, as a rounded
    duration); an input whose threshold lies between ``score / sqrt(3)`` and ``score * (1 / sqrt(3))`` in float32."""
    nodes = [
        helper.make_node("Reshape", ["x", "heads"], ["q"]),
        helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["qt", "kt"], ["raw"]),
        helper.make_node("Shape", ["q"], ["shape"]),
        helper.make_node("Gather", ["shape", "three"], ["dim"], axis=0),
        helper.make_node("Cast", ["dim"], ["dim_f"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["dim_f"], ["scale"]),
        helper.make_node("Div", ["raw", "scale"], ["scores"]),
        # Exact in float32: the difference of two values an ulp apart, times a power of two.
        helper.make_node("Sub", ["scores", "threshold"], ["excess"]),
        helper.make_node("Mul", ["excess", "steps"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["decided"], to=TensorProto.INT32),
    ]
    graph = helper.make_graph(
        nodes,
        "deployed",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 6]),
            helper.make_tensor_value_info("threshold", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("decided", TensorProto.INT32, ["B", 2, "S", "S"])],
        [
            numpy_helper.from_array(np.array([0, 0, 2, -1], np.int64), "heads"),
            numpy_helper.from_array(np.array(3, np.int64), "three"),
            numpy_helper.from_array(np.array(2.0**24, np.float32), "steps"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(proto)
    return proto, _inputs_rounding_apart()


def test_a_cast_to_int32_flipped_as_deployed_is_rolled_back():
    proto, inputs = _scores_cast()
    assert rounded_decisions(ir.from_proto(proto)) == ["Cast"]  # the Cast of 'dim' reads a shape: none
    result, report = optimize_with_report(proto, inputs=inputs)
    record = next(r for r in report.passes if r.name == "simplify-shapes")
    # Measured before the fix: applied, verified (max |Δ| 0 as written); as deployed the result's 'decided' was
    # [0, 0, 2, 0] where the original's is [0, 0, 0, 0] (FusedMatMul's alpha = 1/sqrt(3) rounds the other way).
    assert record.status == "rolled back", (record.status, record.detail)
    assert record.detail.startswith("as deployed (ONNX Runtime's graph optimizations on), output 'decided'")
    np.testing.assert_array_equal(_deployed(result, inputs), _deployed(proto, inputs))


def _rounded_twice(with_round: bool) -> ir.Model:
    """``y = x * 2`` through a redundant ``Identity`` (an exact pass removes it), and, ``with_round``, ``n =
    Round(y)`` as a second output."""
    nodes = [helper.make_node("Identity", ["x"], ["x1"]), helper.make_node("Mul", ["x1", "two"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]
    if with_round:
        nodes.append(helper.make_node("Round", ["y"], ["n"]))
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, ["N", 4]))
    graph = helper.make_graph(
        nodes,
        "deployed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        outputs,
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def _without_identity(model: ir.Model) -> ir.Model:
    candidate = ir.from_proto(ir.to_proto(model))
    identity = next(node for node in candidate.graph if node.op_type == "Identity")
    identity.outputs[0].replace_all_uses_with(identity.inputs[0])
    candidate.graph.remove(identity, safe=True)
    return candidate


@pytest.fixture
def sessions(monkeypatch):
    """Each session the verifier opens: (the model's node count, its optimization level)."""
    opened: list[tuple[int, str]] = []
    real = verify.inference_session

    @contextlib.contextmanager
    def spy(model, **options):
        opened.append((len(list(model.graph)), options.get("optimization_level", "disable_all")))
        with real(model, **options) as session:
            yield session

    monkeypatch.setattr(verify, "inference_session", spy)
    return opened


def test_an_exact_result_of_a_rounding_model_runs_once_more_as_deployed(sessions):
    original = _rounded_twice(with_round=True)
    inputs = {"x": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)}
    verifier = Verifier(original, [inputs, {"x": inputs["x"][:2] * 3}])
    del sessions[:]
    assert verifier.check(_without_identity(original)).ok
    # The candidate (2 nodes) once as written and once at "all", both sets in each; the original (3 nodes) at "all"
    # once, its float noise's run, whose outputs the deployed check reuses. Before the fix: no candidate at "all".
    assert sorted(sessions) == [(2, "all"), (2, "disable_all"), (3, "all")], sessions
    del sessions[:]
    assert verifier.check(_without_identity(original)).ok
    assert sorted(sessions) == [(2, "all"), (2, "disable_all")], sessions  # the original's runs kept
    # After an approximate result is accepted, exact results are held to it as deployed: run so once, then kept.
    verifier.rebase(_without_identity(original))
    for opened in ([(2, "all"), (2, "all"), (2, "disable_all")], [(2, "all"), (2, "disable_all")]):
        del sessions[:]
        assert verifier.check(_without_identity(original)).ok
        assert sorted(sessions) == opened, sessions


def test_a_correct_pass_on_a_rounding_model_is_still_applied():
    original = _rounded_twice(with_round=True)
    inputs = {"x": np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)}
    assert rounded_decisions(original) == ["Round"]
    _, report = optimize_with_report(original, inputs=inputs)
    applied = [r.name for r in report.passes if r.status == "applied"]
    assert applied and not [r.detail for r in report.passes if r.status == "rolled back"], report.passes


def test_a_model_that_decides_nothing_opens_no_session_at_full_optimization(sessions):
    original = _rounded_twice(with_round=False)
    assert rounded_decisions(original) == []
    verifier = Verifier(original, [{"x": np.ones((2, 4), np.float32)}])
    assert verifier.noise  # the original's float noise, at "all", measured first as before
    del sessions[:]
    candidate = _without_identity(original)
    assert verifier.check(candidate).ok
    assert sessions == [(len(list(candidate.graph)), "disable_all")]

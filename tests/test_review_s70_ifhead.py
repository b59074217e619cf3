"""Review s70 (ifhead): a classifier head whose logits an ``If``'s branch computes (silero VAD's decoder, one per
branch: 16 kHz and 8 kHz).

``optimizer.verify._logit_head`` refused logits a subgraph computes (``optimizer.runtime.exposing`` added only
main-graph tensors to the outputs), so a rewrite that doubled them behind a saturated Sigmoid was applied as verified.
``exposing`` now carries such a tensor out as one more output of its ``If``: the branch that computes it outputs it, the
other an empty tensor of its dtype, and the logits are compared only on input sets where the base and the result both
took that branch. Silero's head was missed a second time: its Sigmoid is averaged over frames by a ``ReduceMean``, which
no walk from the output looked through. Logits computed deeper (an ``If`` inside a branch, a ``Loop``'s body) stay out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from optimizer.runtime import exposing, run_model
from optimizer.verify import Verifier, _heads
from tests.helpers import optimize_with_rewrite
from tests.test_review_s68_vacuous import _doubled_logits

_OUT = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "classes"])]


def _model(branches: list[onnx.GraphProto], taken: bool = True, *, own_weights: bool = False) -> onnx.ModelProto:
    """``If(taken)`` of ``branches`` after ``r = relu(x @ w1)``; ``w2`` (and ``w3`` with ``own_weights``) and ``b2``
    of standard deviation 10, so the branches' Sigmoids saturate."""
    rng = np.random.default_rng(0)
    weights = {"w1": (32, 64), "w2": (64, 10), **({"w3": (64, 10)} if own_weights else {})}
    initializers = [
        numpy_helper.from_array((rng.standard_normal(shape) * 10).astype(np.float32), name)
        for name, shape in weights.items()
    ]
    initializers += [
        numpy_helper.from_array(np.zeros(10, np.float32), "b2"),
        numpy_helper.from_array(np.array(taken), "taken"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("If", ["taken"], ["y"], then_branch=branches[0], else_branch=branches[1]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])]
    graph = helper.make_graph(nodes, "ifhead", inputs, _OUT, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _branch(name: str, weight: str = "w2", tail: list[onnx.NodeProto] = (), out: str = "") -> onnx.GraphProto:
    """``sigmoid(r @ weight + b2)`` as a branch, its logits ``logits_{name}``, with ``tail`` after it (output
    ``out``)."""
    nodes = [
        helper.make_node("MatMul", ["r", weight], [f"m_{name}"]),
        helper.make_node("Add", [f"m_{name}", "b2"], [f"logits_{name}"]),
        helper.make_node("Sigmoid", [f"logits_{name}"], [f"p_{name}"]),
        *tail,
    ]
    output = out or f"p_{name}"
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)])


def _doubled(name: str):
    def rewrite(model: ir.Model) -> None:
        weight = model.graph.initializers[name]
        weight.const_value = ir.tensor(weight.const_value.numpy() * 2)

    return rewrite


def _fused_in_branch(model: ir.Model) -> None:
    """The then-branch's MatMul and Add made one Gemm (the same values), its logits under a new name."""
    (if_node,) = [node for node in model.graph if node.op_type == "If"]
    branch = if_node.attributes["then_branch"].as_graph()
    matmul, add, sigmoid = list(branch)[:3]
    gemm = ir.node("Gemm", [matmul.inputs[0], matmul.inputs[1], add.inputs[1]])
    gemm.outputs[0].name = "fused_then"
    branch.insert_before(matmul, gemm)
    sigmoid.replace_input_with(0, gemm.outputs[0])
    branch.remove([add, matmul], safe=True)


def test_exposing_carries_a_branch_tensor_out_of_its_if_empty_where_the_other_branch_is_taken():
    rows = {"x": np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)}
    for taken in (True, False):
        model = ir.from_proto(_model([_branch("then"), _branch("otherwise")], taken))
        ran = run_model(exposing(model, ["logits_then", "logits_otherwise"]), rows)
        shown, empty = ("logits_then", "logits_otherwise") if taken else ("logits_otherwise", "logits_then")
        assert ran[shown].shape == (3, 10) and ran[empty].shape == (0,), {k: v.shape for k, v in ran.items()}
        with np.errstate(over="ignore"):
            assert np.allclose(1 / (1 + np.exp(-ran[shown].astype(np.float64))), ran["y"], atol=1e-6)
    with pytest.raises(KeyError):  # not deeper than a branch of the graph's own If
        exposing(model, ["no such tensor"])


def test_a_correct_rewrite_of_the_logits_inside_a_branch_still_verifies(tmp_path: Path):
    # The logits renamed by the fusion are found by the head's key, as a main-graph head's are.
    record = optimize_with_rewrite(_model([_branch("then"), _branch("otherwise")]), _fused_in_branch, tmp_path)
    record = record.passes[-1]
    assert record.status == STATUS_APPLIED, record.detail


def test_a_wrong_rewrite_inside_the_taken_branch_is_rolled_back_naming_its_logits(tmp_path: Path):
    # Before: applied as verified (the logits doubled, every probability still 0.0 or 1.0).
    record = optimize_with_rewrite(_model([_branch("then"), _branch("otherwise")]), _doubled_logits, tmp_path)
    record = record.passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "the logits 'logits_then' (Sigmoid behind output 'y' is saturated" in record.detail, record.detail


def test_each_branch_has_its_own_head_and_the_else_branch_logits_are_held(tmp_path: Path):
    # Silero's 16 kHz and 8 kHz decoders: a head in each branch, each its own logits; the else branch taken here.
    model = _model([_branch("then"), _branch("otherwise", "w3")], taken=False, own_weights=True)
    heads = {head.key: head.logits.name for head in _heads(ir.from_proto(model))}
    assert heads == {"y[1]": "logits_then", "y[2]": "logits_otherwise"}, heads
    record = optimize_with_rewrite(model, _doubled("w3"), tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "the logits 'logits_otherwise'" in record.detail, record.detail


def test_a_head_in_a_branch_that_feeds_the_output_through_a_slice_and_a_concat_is_held(tmp_path: Path):
    first = numpy_helper.from_array(np.array([0], np.int64), "first")
    five = numpy_helper.from_array(np.array([5], np.int64), "five")
    classes = numpy_helper.from_array(np.array([1], np.int64), "classes")
    tail = [
        helper.make_node("Slice", ["p_then", "first", "five", "classes"], ["some"]),
        helper.make_node("Concat", ["some", "p_then"], ["joined"], axis=1),
    ]
    model = _model([_branch("then", tail=tail, out="joined"), _branch("otherwise")])
    model.graph.initializer.extend([first, five, classes])
    record = optimize_with_rewrite(model, _doubled_logits, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "the logits 'logits_then'" in record.detail, record.detail


def test_silero_s_spelling_a_reduce_mean_over_frames_and_a_bias_constant_in_the_branch_is_held(tmp_path: Path):
    # Silero VAD's decoder: its Sigmoid averaged by a ReduceMean (no head was found behind one), the branch's
    # tensors untyped and its constants Constant nodes (the empty fill takes its dtype from them).
    tail = [helper.make_node("ReduceMean", ["p_then", "frames"], ["mean"], keepdims=1)]
    then = _branch("then", tail=tail, out="mean")
    bias = numpy_helper.from_array(np.zeros(10, np.float32), "bias_then")
    then.node.insert(0, helper.make_node("Constant", [], ["b_then"], value=bias))
    then.node[2].input[1] = "b_then"
    otherwise = _branch("otherwise", tail=[helper.make_node("ReduceMean", ["p_otherwise", "frames"], ["mean2"])])
    otherwise.output[0].name = "mean2"
    model = _model([then, otherwise])
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "frames"))
    record = optimize_with_rewrite(model, _doubled_logits, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "the logits 'logits_then'" in record.detail, record.detail


def _nested() -> onnx.ModelProto:
    """The head and its logits in an ``If`` inside the then-branch of the graph's ``If``."""
    inner = helper.make_node("If", ["taken"], ["p_inner"], then_branch=_branch("deep"), else_branch=_branch("deeper"))
    outer = helper.make_graph([inner], "then", [], [helper.make_tensor_value_info("p_inner", TensorProto.FLOAT, None)])
    return _model([outer, _branch("otherwise")])


def _looped() -> onnx.ModelProto:
    """The head and its logits in a ``Loop``'s body (one trip), its scan output squeezed to the output."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["going"], ["still"]),
            helper.make_node("MatMul", ["r", "w2"], ["m_body"]),
            helper.make_node("Add", ["m_body", "b2"], ["logits_body"]),
            helper.make_node("Sigmoid", ["logits_body"], ["p_body"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("trip", TensorProto.INT64, []),
            helper.make_tensor_value_info("going", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("still", TensorProto.BOOL, []),
            helper.make_tensor_value_info("p_body", TensorProto.FLOAT, None),
        ],
    )
    model = _model([_branch("then"), _branch("otherwise")])
    del model.graph.node[2]
    model.graph.initializer.extend(
        [numpy_helper.from_array(np.array(1, np.int64), "once"), numpy_helper.from_array(np.array([0], np.int64), "at")]
    )
    model.graph.node.extend(
        [
            helper.make_node("Loop", ["once", "taken"], ["frames"], body=body),
            helper.make_node("Squeeze", ["frames", "at"], ["y"]),
        ]
    )
    return model


@pytest.mark.parametrize("build", [_nested, _looped], ids=["nested-if", "loop"])
def test_logits_deeper_than_a_branch_of_the_graph_s_if_stay_out_without_a_crash(tmp_path: Path, build):
    # Left out as documented (no head reads them, nothing exposed); a correct rewrite beside them still verifies.
    read = {head.logits.name for head in _heads(ir.from_proto(build()))}
    assert not read & {"logits_deep", "logits_deeper", "logits_body"}, read
    record = optimize_with_rewrite(build(), lambda model: None, tmp_path).passes[-1]
    assert record.status == STATUS_APPLIED, record.detail


@pytest.mark.xfail(
    strict=True,
    reason="open: logits computed in an If inside a branch (or a Loop's body) are not carried out "
    "(optimizer.runtime.branch_values looks one level down), so doubled logits behind a saturated head there verify",
)
def test_a_wrong_rewrite_behind_logits_in_a_nested_if_is_rolled_back(tmp_path: Path):
    record = optimize_with_rewrite(_nested(), _doubled_logits, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_each_input_set_holds_the_logits_of_the_branch_it_takes():
    # The condition an input: the first set takes the then-branch, the second the else-branch; a rewrite of either
    # branch's logits fails on the set that takes it, and only there (the other's are empty on both sides).
    model = _model([_branch("then"), _branch("otherwise", "w3")], own_weights=True)
    model.graph.initializer.pop()  # "taken", now an input
    model.graph.input.append(helper.make_tensor_value_info("taken", TensorProto.BOOL, []))
    rows = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
    sets = [{"x": rows, "taken": np.array(True)}, {"x": rows, "taken": np.array(False)}]
    verifier = Verifier(ir.from_proto(model), sets, labels=["then", "otherwise"])
    for weight, label, logits in (("w2", "then", "logits_then"), ("w3", "otherwise", "logits_otherwise")):
        candidate = ir.from_proto(model)
        _doubled(weight)(candidate)
        result = verifier.check(candidate)
        assert not result.ok and result.input_set == label, (weight, result.input_set, result.first_failure)
        assert f"the logits '{logits}'" in result.first_failure, result.first_failure

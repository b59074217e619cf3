"""Review s74 (draws): verification of models whose main graph draws random numbers, with the draws fed
(``optimizer.verify._FedDraws``): each draw of the main graph that reaches an output (``RandomNormal[Like]``,
``RandomUniform[Like]``, ``Bernoulli``, ``Multinomial``, a ``Dropout`` that may train: its mask) is taken from one run
of the base and fed to copies of the base and of the result in which it is no draw, and every output is compared.

Until this build an output a draw reached was held by its dtype and rank alone, so each of these verified:

1. **A draw changed**: a Dropout's ratio 0.5 → 0.25, a sampler's ``scale`` doubled; now a failure that names the draw
   and what changed (``_Draw.differs``).
2. **A draw removed or added**: a training-mode Dropout dropped as if in inference; a draw added to an output that
   had none fails with its reason too (it failed on other numbers before).
3. **A draw reading other values**: ``RandomNormalLike`` of one row instead of the batch (the rows then share their
   noise), a ``Bernoulli`` of other probabilities: each computed input of a fed draw is compared as an output.
4. **A draw read inside an ``If``'s branch**: the branch reads the value fed.
5. **The ONNX corpus's training-mode Dropouts** (ratio and ``training_mode`` fed as inputs) were refused as
   unverifiable; they verify, and a rewrite that scales their input by 1.001 fails. The Dropout a fed copy computes
   is what ONNX Runtime's computes with that mask, bit for bit (``x * mask / (1 - ratio)``: times ``1 / (1 - ratio)``
   is an ulp off).
6. **An approximate pass on a model whose every output is drawn** (found building this): such a model was refused
   as unverifiable; verifiable now by the exact check, its int8 result was applied with no output compared with its
   twin, which does not feed the draws. It is rolled back with that reason (``Verifier.check_twin``).

Held: a draw not fed (in a model-local function) is still held by its rank; a training-mode Dropout of a constant
ratio 0 is no draw to feed (a rewrite that drops it verifies); a model without draws in its main graph builds nothing
for them (no run, no copy).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.runtime import run_model
from optimizer.verify import Verifier

_N = helper.make_node
_OPSET = helper.make_opsetid("", 18)
_X = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)}


def _model(nodes: list, outputs: dict[str, list], constants: dict[str, np.ndarray], functions: tuple = ()) -> ir.Model:
    """``mean = x @ W`` ([2, 4]) then ``nodes``, computing float ``outputs`` of the given shapes."""
    weight = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    graph = helper.make_graph(
        [_N("MatMul", ["x", "W"], ["mean"]), *nodes],
        "drawn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
        [numpy_helper.from_array(value, name) for name, value in {"W": weight, **constants}.items()],
    )
    opsets = [_OPSET, *([helper.make_opsetid("local", 1)] if functions else [])]
    return ir.from_proto(helper.make_model(graph, opset_imports=opsets, ir_version=9, functions=list(functions)))


def _copy(model: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(model))


def _node(model: ir.Model, op_type: str) -> ir.Node:
    return next(node for node in model.graph if node.op_type == op_type)


_TRAINING = {"ratio": np.array(0.5, np.float32), "training": np.array(True)}
_DROPOUT = [_N("Dropout", ["mean", "ratio", "training"], ["y"]), _N("Relu", ["mean"], ["z"])]
_SAMPLED = [_N("RandomNormalLike", ["mean"], ["noise"], scale=1.0), _N("Add", ["mean", "noise"], ["y"])]
_SAMPLED += [_N("Relu", ["mean"], ["z"])]
_TWO = {"y": [2, 4], "z": [2, 4]}


@pytest.fixture(scope="module")
def dropout() -> tuple[ir.Model, Verifier]:
    model = _model(_DROPOUT, _TWO, _TRAINING)
    return model, Verifier(model, [_X])


@pytest.fixture(scope="module")
def sampler() -> tuple[ir.Model, Verifier]:
    model = _model(_SAMPLED, _TWO, {})
    return model, Verifier(model, [_X])


def test_a_dropouts_ratio_changed_fails_with_its_reason(dropout):
    model, verifier = dropout
    assert verifier.skipped == {"y"} and verifier.check(_copy(model)).ok
    changed = _copy(model)
    changed.graph.initializers["ratio"].const_value = ir.tensor(np.array(0.25, np.float32), name="ratio")
    result = verifier.check(changed)
    assert not result.ok  # verified: 'y' was not compared
    assert "changed the random draw 'y' (ratio 0.5 → 0.25)" in result.first_failure


def test_a_training_dropout_of_ratio_0_dropped_verifies():
    model = _model(_DROPOUT, _TWO, {**_TRAINING, "ratio": np.array(0.0, np.float32)})
    verifier = Verifier(model, [_X])
    dropped = _copy(model)
    dropout = _node(dropped, "Dropout")
    identity = ir.node("Identity", [dropout.inputs[0]], name="kept")
    ir.convenience.replace_nodes_and_values(
        dropped.graph, dropout, [dropout], [identity], dropout.outputs, identity.outputs
    )
    assert verifier._draws_fed() is None and verifier.check(dropped).ok  # "removed the random draw 'y'"


def test_a_samplers_scale_doubled_fails_with_its_reason(sampler):
    model, verifier = sampler
    doubled = _copy(model)
    _node(doubled, "RandomNormalLike").attributes["scale"] = ir.AttrFloat32("scale", 2.0)
    result = verifier.check(doubled)
    assert not result.ok  # verified
    assert "changed the random draw 'noise' (scale 1.0 → 2.0)" in result.first_failure


def test_a_training_dropout_dropped_as_if_in_inference_fails(dropout):
    model, verifier = dropout
    dropped = _copy(model)
    _node(dropped, "Dropout").inputs[2].const_value = ir.tensor(np.array(False), name="training")
    result = verifier.check(dropped)
    assert not result.ok  # verified: y = mean, where the original drops half of it
    assert "removed the random draw 'y' (Dropout)" in result.first_failure


def test_a_draw_added_to_a_compared_output_fails_with_its_reason(sampler):
    model, verifier = sampler
    added = _copy(model)
    relu = _node(added, "Relu")
    draw = ir.node("RandomNormalLike", [relu.outputs[0]], name="extra")
    add = ir.node("Add", [relu.outputs[0], draw.outputs[0]], name="noisy")
    draw.outputs[0].name, add.outputs[0].name, relu.outputs[0].name = "extra", "z", "relu"
    added.graph.extend([draw, add])
    added.graph.outputs[1] = add.outputs[0]
    result = verifier.check(added)
    assert "added the random draw 'extra' (RandomNormalLike), which reaches output 'z'" in result.first_failure


def test_a_draw_of_one_row_instead_of_the_batch_fails(sampler):
    """``RandomNormalLike`` of ``mean[:1]`` broadcast over the batch: every row gets the same noise."""
    model, verifier = sampler
    narrowed = _copy(model)
    draw = _node(narrowed, "RandomNormalLike")
    constants = [ir.Value(name=n, const_value=ir.tensor(np.array([v], np.int64))) for n, v in (("s0", 0), ("s1", 1))]
    for value in constants:
        narrowed.graph.initializers[value.name] = value
    row = ir.node("Slice", [draw.inputs[0], *constants], name="row")
    row.outputs[0].name = "row"
    narrowed.graph.insert_before(draw, row)
    draw.replace_input_with(0, row.outputs[0])
    result = verifier.check(narrowed)
    assert not result.ok  # verified: 'y' kept its shape
    assert "input 0 of the random draw 'noise'" in result.first_failure


def test_a_bernoulli_of_other_probabilities_fails():
    nodes = [_N("Sigmoid", ["mean"], ["p"]), _N("Bernoulli", ["p"], ["b"]), _N("Add", ["mean", "b"], ["y"])]
    model = _model([*nodes, _N("Relu", ["mean"], ["z"])], _TWO, {})
    verifier = Verifier(model, [_X])
    assert verifier.skipped == {"y"} and verifier.check(_copy(model)).ok
    other = _copy(model)
    _node(other, "Sigmoid").op_type = "HardSigmoid"
    result = verifier.check(other)
    assert not result.ok and "input 0 of the random draw 'b'" in result.first_failure  # verified


def test_a_draw_read_inside_a_branch_is_fed():
    def branch(name: str, node: object) -> object:
        output = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)
        return helper.make_graph([node], name, [], [output])

    drawn, kept = branch("drawn", _N("Add", ["mean", "noise"], ["t"])), branch("kept", _N("Relu", ["mean"], ["e"]))
    nodes = [
        _N("RandomNormalLike", ["mean"], ["noise"]),
        _N("If", ["condition"], ["y"], then_branch=drawn, else_branch=kept),
        _N("Relu", ["mean"], ["z"]),
    ]
    model = _model(nodes, _TWO, {"condition": np.array(True)})
    verifier = Verifier(model, [_X])
    assert verifier.skipped == {"y"} and verifier.check(_copy(model)).ok
    wrong = _copy(model)
    then = _node(wrong, "If").attributes["then_branch"].as_graph()
    next(iter(then)).op_type = "Sub"
    assert not verifier.check(wrong).ok  # verified


def _corpus_dropout(ratio: float) -> tuple[ir.Model, dict[str, np.ndarray]]:
    """The ONNX corpus's ``test_training_dropout_mask``: ``y, mask = Dropout(x, r, t)``, ratio and mode fed."""
    graph = helper.make_graph(
        [_N("Dropout", ["x", "r", "t"], ["y", "mask"], seed=0)],
        "training_dropout",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 5]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("t", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4, 5]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [3, 4, 5]),
        ],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
    x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    return model, {"x": x, "r": np.array(ratio, np.float32), "t": np.array(True)}


def test_the_corpus_training_dropout_verifies_and_a_wrong_rewrite_of_it_fails():
    model, inputs = _corpus_dropout(0.75)
    verifier = Verifier(model, [inputs])  # InvalidModelError: every output is computed from random draws
    assert verifier.drawn_outputs_compared() == ["mask", "y"] and not verifier.outputs_never_compared()
    assert verifier.check(_copy(model)).ok
    scaled = _copy(model)
    dropout = _node(scaled, "Dropout")
    factor = ir.Value(name="factor", const_value=ir.tensor(np.array(1.001, np.float32)))
    scaled.graph.initializers["factor"] = factor
    mul = ir.node("Mul", [dropout.inputs[0], factor], name="scale")
    mul.outputs[0].name = "x_scaled"
    scaled.graph.insert_before(dropout, mul)
    dropout.replace_input_with(0, mul.outputs[0])
    assert not verifier.check(scaled).ok
    verifier.add_input_set({**inputs, "r": np.array(0.0, np.float32)}, "ratio 0")
    assert len(verifier._draws_fed().verifier.input_sets) == 2  # a set added later is fed its draws too


@pytest.mark.parametrize("ratio", [0.75, 0.1])
def test_a_fed_dropout_computes_what_onnx_runtimes_does_with_that_mask(ratio):
    from optimizer.draws import draw_values, main_draws, with_draws_fed

    model, inputs = _corpus_dropout(ratio)
    ran = run_model(model, inputs)
    fed = draw_values(model, main_draws(model.graph), [inputs])[1]
    computed = run_model(with_draws_fed(model, fed), {**inputs, "y::graphopt_drawn": ran["mask"]})
    np.testing.assert_array_equal(computed["mask"], ran["mask"])
    assert computed["y"].tobytes() == ran["y"].tobytes()  # -0.0 where it drops a negative value, as ONNX Runtime


def test_a_draw_in_a_local_function_is_not_fed_and_still_held_by_its_rank():
    noisy = helper.make_function(
        "local",
        "Noisy",
        ["a"],
        ["b"],
        [_N("RandomNormalLike", ["a"], ["n"]), _N("Add", ["a", "n"], ["b"])],
        [_OPSET],
    )
    model = _model([_N("Noisy", ["mean"], ["y"], domain="local"), _N("Relu", ["mean"], ["z"])], _TWO, {}, (noisy,))
    verifier = Verifier(model, [_X])
    assert verifier._draws_fed() is None and verifier.outputs_never_compared() == {"random": ["y"]}
    flattened = _copy(model)
    shape = ir.Value(name="flat", const_value=ir.tensor(np.array([8], np.int64)))
    flattened.graph.initializers["flat"] = shape
    call = _node(flattened, "Noisy")
    reshape = ir.node("Reshape", [call.outputs[0], shape], name="flatten")
    flattened.graph.append(reshape)
    reshape.outputs[0].name, call.outputs[0].name = "y", "y_2d"
    flattened.graph.outputs[0] = reshape.outputs[0]
    result = verifier.check(flattened)
    assert not result.ok and "rank 1 instead of 2" in result.first_failure


def test_a_model_without_draws_in_its_main_graph_runs_nothing_for_them(monkeypatch):
    def refused(*args: object) -> None:
        raise AssertionError("the draws of a model without any were run")

    monkeypatch.setattr("optimizer.verify.draw_values", refused)
    model = _model([_N("Relu", ["mean"], ["y"]), _N("Relu", ["mean"], ["z"])], _TWO, {})
    verifier = Verifier(model, [_X])
    assert verifier.check(_copy(model)).ok and verifier._draws_fed() is None


def test_an_approximate_pass_on_a_model_whose_every_output_is_drawn_is_held_to_its_twin_and_budget_fed():
    """Refused as unverifiable until this build; once the exact check fed the draws, int8 of such a model (a
    training-mode BERT) was applied with no output compared with its twin. Since review s75 xfix it is applied only
    compared with its twin and measured by the budget, both fed the input model's draws (a wrong one is rolled back:
    ``tests/test_review_s75_xfix.py``)."""
    from optimizer.api import optimize_with_report

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            _N("MatMul", ["x", "W"], ["h"]),
            _N("Dropout", ["h", "ratio", "training"], ["d"]),
            _N("MatMul", ["d", "W2"], ["y"]),
        ],
        "trained",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        [
            numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W2"),
            *(numpy_helper.from_array(value, name) for name, value in _TRAINING.items()),
        ],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[_OPSET], ir_version=9))
    _, report = optimize_with_report(model, quantize="dynamic")
    (record,) = [record for record in report.passes if record.name == "quantize-dynamic"]
    assert record.status == "applied", record.detail
    assert record.twin and record.cosine is not None and record.cosine > 0.999, (record.twin, record.cosine)
    assert any("fed both models the draws" in warning for warning in report.warnings), report.warnings

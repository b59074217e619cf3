"""The accuracy budget: sensitive layers are found and kept float until the model meets it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import AccuracyBudget
from passes.quantization.dynamic import DynamicQuantizationPass
from passes.quantization.static import StaticQuantizationPass
from tests.passes.quantization.conftest import drift
from tests.passes.quantization.graphs import weights


def _chain_with_a_sensitive_layer() -> ir.Model:
    """x → first → h → mid → k → last → y, where h has one channel ~1000x larger than the rest.

    One int8 scale for all of h (what per-tensor activation quantization uses) then
    rounds every other channel to zero, so quantizing ``mid`` wrecks the output;
    ``mid``'s weight row for the big channel is tiny, so the float output does not
    depend on that channel more than on the others.
    """
    first = weights(16, 16, seed=1, scale=0.3)
    first[:, 0] *= 1000.0
    mid = weights(16, 16, seed=2, scale=0.3)
    mid[0, :] /= 1000.0
    nodes = [
        helper.make_node("MatMul", ["x", "w_first"], ["h"], name="first"),
        helper.make_node("MatMul", ["h", "w_mid"], ["k"], name="mid"),
        helper.make_node("MatMul", ["k", "w_last"], ["y"], name="last"),
    ]
    init = [("w_first", first), ("w_mid", mid), ("w_last", weights(16, 16, seed=3, scale=0.3))]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 16])],
        [numpy_helper.from_array(a, n) for n, a in init],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _samples(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((count, 16)).astype(np.float32)}


def test_without_a_budget_the_sensitive_layer_ruins_the_output():
    model = _chain_with_a_sensitive_layer()
    after = DynamicQuantizationPass(quantize_outputs=True)(model.clone()).model
    assert drift(model, after, _samples(32, seed=7)).cosine < 0.5


def test_the_budget_keeps_exactly_the_sensitive_layer_float():
    model = _chain_with_a_sensitive_layer()
    quantization = DynamicQuantizationPass(
        quantize_outputs=True, budget=AccuracyBudget(min_cosine=0.995), samples=_samples(64)
    )
    result = quantization(model.clone())
    after = result.model
    assert quantization.kept_float == ["mid"]
    assert quantization.quantized == ["first", "last"]
    assert quantization.drift.cosine >= 0.995
    assert any("with 1 layers changed: 1 float (mid)" in note for note in result.notes)
    assert "1 of 3 MatMul stay float: kept float to meet the accuracy budget" in result.refusals
    # held out data agrees
    assert drift(model, after, _samples(32, seed=7)).cosine >= 0.99


def test_a_max_error_budget_works_the_same_way():
    model = _chain_with_a_sensitive_layer()
    quantization = StaticQuantizationPass(
        quantize_outputs=True, per_channel=True, budget=AccuracyBudget(max_error=0.5), samples=_samples(64)
    )
    quantization(model.clone())
    assert "mid" in quantization.kept_float
    assert quantization.drift.max_error <= 0.5


def test_a_budget_already_met_keeps_every_layer_int8():
    model = _chain_with_a_sensitive_layer()
    quantization = DynamicQuantizationPass(
        quantize_outputs=True, budget=AccuracyBudget(min_cosine=-1.0), samples=_samples(16)
    )
    result = quantization(model.clone())
    assert quantization.kept_float == [] and len(quantization.quantized) == 3
    assert result.notes[0].endswith("with every layer int8")


def test_an_unreachable_budget_leaves_the_model_float():
    model = _chain_with_a_sensitive_layer()
    quantization = DynamicQuantizationPass(
        quantize_outputs=True, budget=AccuracyBudget(min_cosine=1.0), samples=_samples(16)
    )
    result = quantization(model.clone())
    assert not result.modified
    assert "cannot be met" in result.notes[-1]


def test_integer_outputs_count_by_agreement():
    """A model whose output is a class id: the budget compares the ids, not nothing."""
    model = _chain_with_a_sensitive_layer()
    argmax = ir.Node("", "ArgMax", [model.graph.outputs[0]], attributes=[ir.AttrInt64("axis", -1)], name="argmax")
    model.graph.append(argmax)
    argmax.outputs[0].name = "label"
    argmax.outputs[0].shape, argmax.outputs[0].type = ir.Shape(["B"]), ir.TensorType(ir.DataType.INT64)
    model.graph.outputs[0] = argmax.outputs[0]
    quantization = DynamicQuantizationPass(
        quantize_outputs=True, budget=AccuracyBudget(min_cosine=0.99), samples=_samples(64)
    )
    quantization(model.clone())
    assert "mid" in quantization.kept_float
    assert quantization.drift.cosine >= 0.99


def test_many_layers_use_local_sensitivity_and_bisection(monkeypatch):
    from passes.quantization import _base

    monkeypatch.setattr(_base, "_EXHAUSTIVE_LAYERS", 1)
    model = _chain_with_a_sensitive_layer()
    quantization = DynamicQuantizationPass(
        quantize_outputs=True, budget=AccuracyBudget(min_cosine=0.995), samples=_samples(64)
    )
    result = quantization(model.clone())
    assert quantization.kept_float == ["mid"]
    assert any("estimated locally" in note for note in result.notes)


def test_per_row_activations_rank_many_layers_by_per_row_local_errors(monkeypatch):
    from passes.quantization import _base

    monkeypatch.setattr(_base, "_EXHAUSTIVE_LAYERS", 1)
    model = _chain_with_a_sensitive_layer()
    quantization = DynamicQuantizationPass(
        activation_scale="row", quantize_outputs=True, budget=AccuracyBudget(min_cosine=0.995), samples=_samples(64)
    )
    result = quantization(model.clone())
    # a channel 1000x the others is in every row: one scale per row does not save ``mid`` either
    assert quantization.kept_float == ["mid"]
    assert any("per-row int8 inputs" in note for note in result.notes)
    assert drift(model, result.model, _samples(16, seed=7)).cosine >= 0.995

"""SmoothQuant: outlier channels after a norm migrate into the next layers' weights, exactly."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from passes._layers import find_layers
from passes.quantization import smoothing
from passes.quantization.dynamic import DynamicQuantizationPass
from tests.helpers import assert_same_outputs
from tests.passes.quantization.conftest import drift
from tests.passes.quantization.graphs import weights


def _pre_norm_block(residual_reads_norm: bool = False) -> ir.Model:
    """x → LayerNormalization (one channel's gamma 50x) → Q and K projections (a pre-LN block).

    With ``residual_reads_norm`` the norm's output also feeds an Add (post-LN BERT),
    where its scale cannot change.
    """
    gamma = np.ones(32, dtype=np.float32)
    gamma[3] = 50.0
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="norm", axis=-1),
        helper.make_node("MatMul", ["n", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["n", "wk"], ["k"], name="k_proj"),
        helper.make_node("Add", ["q", "k"], ["s"], name="sum"),
        helper.make_node("MatMul", ["s", "wo"], ["y"], name="out"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 16])]
    if residual_reads_norm:
        nodes.append(helper.make_node("Add", ["n", "x"], ["r"], name="residual"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["B", "S", 32]))
    init = [
        ("gamma", gamma),
        ("beta", weights(32, seed=1)),
        ("wq", weights(32, 16, seed=2, scale=0.2)),
        ("wk", weights(32, 16, seed=3, scale=0.2)),
        ("wo", weights(16, 16, seed=4, scale=0.2)),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 32])],
        outputs,
        [numpy_helper.from_array(a, n) for n, a in init],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _x(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((count, 8, 32)).astype(np.float32)}


def test_smoothing_alone_leaves_the_outputs_unchanged():
    model = _pre_norm_block()
    smoothed = model.clone()
    layers, _ = find_layers(smoothed.graph, ["matmul"])
    names = smoothing.smooth(smoothed, [layer for layer in layers if layer.name != "out"], [_x(16)], 0.5)
    assert names == ["norm"]
    gamma = smoothed.graph.node("norm").inputs[1].const_value.numpy()
    assert gamma[3] < 50.0  # the outlier channel was divided down
    assert_same_outputs(model, smoothed, _x(4, seed=3), rtol=1e-4, atol=1e-5)


def test_smoothing_improves_dynamic_int8_on_outlier_channels():
    model = _pre_norm_block()
    plain = DynamicQuantizationPass(quantize_outputs=True, samples=_x(32))(model.clone()).model
    smooth = DynamicQuantizationPass(quantize_outputs=True, samples=_x(32), smooth_alpha=0.5)
    result = smooth(model.clone())
    smoothed = result.model
    held_out = _x(8, seed=9)
    assert drift(model, smoothed, held_out).cosine > drift(model, plain, held_out).cosine
    assert "SmoothQuant (alpha 0.5) on 1 norms: norm" in result.notes


def test_a_norm_whose_output_also_feeds_a_residual_is_left_alone():
    model = _pre_norm_block(residual_reads_norm=True)
    layers, _ = find_layers(model.graph, ["matmul"])
    assert smoothing.smooth(model, layers, [_x(4)], 0.5) == []


def _swiglu_block() -> ir.Model:
    """x → gate and up projections → silu(gate) * up → down projection; up's column 5 is 40x the rest."""
    up = weights(32, 48, seed=6, scale=0.2)
    up[:, 5] *= 40.0
    nodes = [
        helper.make_node("MatMul", ["x", "wg"], ["g"], name="gate_proj"),
        helper.make_node("MatMul", ["x", "wu"], ["u"], name="up_proj"),
        helper.make_node("Sigmoid", ["g"], ["sg"], name="sigmoid"),
        helper.make_node("Mul", ["g", "sg"], ["silu"], name="silu"),
        helper.make_node("Mul", ["silu", "u"], ["p"], name="product"),
        helper.make_node("MatMul", ["p", "wd"], ["y"], name="down_proj"),
    ]
    init = [("wg", weights(32, 48, seed=7, scale=0.2)), ("wu", up), ("wd", weights(48, 32, seed=8, scale=0.2))]
    graph = helper.make_graph(
        nodes,
        "swiglu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 32])],
        [numpy_helper.from_array(a, n) for n, a in init],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


def test_a_gated_product_is_smoothed_into_the_up_projections_columns_exactly():
    model = _swiglu_block()
    smoothed = model.clone()
    layers, _ = find_layers(smoothed.graph, ["matmul"])
    assert smoothing.smooth(smoothed, layers, [_x(16)], 0.5) == ["product"]
    up = smoothed.graph.node("up_proj").inputs[1].const_value.numpy()
    original = model.graph.node("up_proj").inputs[1].const_value.numpy()
    ratio = np.abs(up).max(axis=0) / np.abs(original).max(axis=0)
    assert ratio[5] < ratio.min() * 1.01  # the outlier column was divided down the most
    assert_same_outputs(model, smoothed, _x(4, seed=3), rtol=1e-4, atol=1e-5)


def test_smoothing_a_gated_product_improves_dynamic_int8():
    model = _swiglu_block()
    plain = DynamicQuantizationPass(quantize_outputs=True, samples=_x(32))(model.clone()).model
    smoothed = DynamicQuantizationPass(quantize_outputs=True, samples=_x(32), smooth_alpha=0.5)(model.clone()).model
    held_out = _x(8, seed=9)
    assert drift(model, smoothed, held_out).cosine > drift(model, plain, held_out).cosine


def test_a_product_whose_factor_has_another_reader_is_left_alone():
    model = _swiglu_block()
    model.graph.outputs.append(model.graph.node("up_proj").outputs[0])  # up's output is also a model output
    layers, _ = find_layers(model.graph, ["matmul"])
    assert smoothing.smooth(model, layers, [_x(4)], 0.5) == []

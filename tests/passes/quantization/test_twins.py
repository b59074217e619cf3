"""Each reduced-precision pass declares its exact twin, the result computes it, and a wrong realization does not.

The result runs as deployed (ORT_ENABLE_ALL: the integer kernels), the twin as written
(ORT_DISABLE_ALL), compared at the twin kind's tolerance as the pipeline does.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optimizer.protocol import Twin
from optimizer.runtime import collect_values, inference_session, run_session
from optimizer.verify import TWIN_TOLERANCES, compare_outputs
from passes.quantization.dynamic import DynamicQuantizationPass
from passes.quantization.embedding import EmbeddingQuantizationPass
from passes.quantization.float16 import Float16Pass
from passes.quantization.static import StaticQuantizationPass
from tests.helpers import computed_op_types
from tests.passes.quantization.graphs import _model, attention, convnet, mlp, samples, weights
from tests.passes.quantization.test_embedding import _lookup
from tests.passes.quantization.test_smoothing import _pre_norm_block, _x

INTEGER_OPS = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "MatMulInteger", "ConvInteger"}


def matches_twin(model: ir.Model, twin: Twin, feeds: dict[str, np.ndarray]) -> bool:
    """The pipeline's check: ``model`` at ORT_ENABLE_ALL against ``twin`` as written, at the twin kind's tolerance."""
    with inference_session(twin.model, optimization_level="disable_all") as session:
        expected = run_session(session, feeds)
    with inference_session(model, optimization_level="all") as session:
        actual = run_session(session, feeds)
    tolerance = TWIN_TOLERANCES[twin.kind]
    return compare_outputs(expected, actual, {"float32": tolerance, "float16": tolerance}).ok


def _scaled(model: ir.Model, name: str, factor: float = 2.0) -> ir.Model:
    """A copy of ``model`` with initializer ``name`` multiplied by ``factor`` (a wrong scale)."""
    broken = model.clone()
    value = broken.graph.initializers[name]
    array = value.const_value.numpy()
    value.const_value = ir.tensor((array * factor).astype(array.dtype), name=name)
    return broken


def _int8_cases():
    mlp_model, gemm_model, block = mlp(head=False), mlp(gemm_trans_b=True, head=False), _pre_norm_block()
    heads = attention(scale=0.3)
    return {
        "matmul": (mlp_model, samples(mlp_model, 16), samples(mlp_model, 4, seed=5), "up"),
        "gemm-transB": (gemm_model, samples(gemm_model, 16), samples(gemm_model, 4, seed=5), "down"),
        "attention": (heads, samples(heads, 16, S=7), samples(heads, 3, seed=5, S=7), "attn"),
        "shared-input": (block, _x(16), _x(4), "k_proj"),
        "conv": (convnet(), samples(convnet(), 16), samples(convnet(), 2, seed=5), "conv2"),
    }


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize("case", list(_int8_cases()))
def test_int8_results_compute_their_twin_and_a_doubled_scale_does_not(case, mode, per_channel):
    model, calibration, feeds, layer = _int8_cases()[case]
    if mode == "dynamic" and case == "conv":
        layer = "classifier"  # dynamic int8 leaves Conv float
    cls = DynamicQuantizationPass if mode == "dynamic" else StaticQuantizationPass
    result = cls(samples=calibration, per_channel=per_channel, quantize_outputs=True)(model.clone())
    twin = result.twin
    assert result.modified and twin.kind == "int8"
    assert not set(computed_op_types(twin.model)) & INTEGER_OPS  # float arithmetic only
    assert matches_twin(result.model, twin, feeds)
    assert not matches_twin(_scaled(result.model, f"{layer}.weight_scale"), twin, feeds)


@pytest.mark.parametrize("case", ["matmul", "gemm-transB", "attention", "shared-input"])
def test_per_row_int8_results_compute_their_twin_and_a_doubled_scale_does_not(case):
    model, calibration, feeds, layer = _int8_cases()[case]
    result = DynamicQuantizationPass(samples=calibration, activation_scale="row", quantize_outputs=True)(model.clone())
    twin = result.twin
    assert not set(computed_op_types(twin.model)) & INTEGER_OPS
    ops = computed_op_types(twin.model)
    assert "ReduceMax" in ops and ("DynamicQuantizeLinear" in ops) == (case == "attention")  # QAttention: per tensor
    # integer sums first, then the scales: associated as the kernel does, so no rounding tie flips downstream
    weight = twin.model.graph.node("out_proj" if case == "attention" else layer).inputs[1].const_value.numpy()
    np.testing.assert_array_equal(weight, np.rint(weight))
    assert matches_twin(result.model, twin, feeds)
    assert not matches_twin(_scaled(result.model, f"{layer}.weight_scale"), twin, feeds)
    if case != "attention":
        # the per-row rounding is what the twin claims: a per-tensor result does not match it
        per_tensor = DynamicQuantizationPass(samples=calibration, quantize_outputs=True)(model.clone()).model
        # rows of very different sizes: one per-tensor step cannot serve them all
        axis = 0 if case == "gemm-transB" else 1
        spread = {}
        for name, array in feeds.items():
            shape = [1] * array.ndim
            shape[axis] = -1
            spread[name] = (array * np.geomspace(0.01, 100, array.shape[axis]).reshape(shape)).astype(np.float32)
        assert not matches_twin(per_tensor, twin, spread)
        assert matches_twin(result.model, twin, spread)


def test_per_row_twin_of_an_opset_17_model():
    model = ir.from_proto(ir.to_proto(mlp(head=False)))
    model.opset_imports[""] = 17
    result = DynamicQuantizationPass(activation_scale="row", quantize_outputs=True)(model)
    assert matches_twin(result.model, result.twin, samples(mlp(head=False), 4, seed=5))


def test_the_twin_is_built_from_the_input_not_from_the_rewrite():
    model = mlp(head=False)
    result = DynamicQuantizationPass()(model.clone())
    assert "DynamicQuantizeLinear" in computed_op_types(result.twin.model)
    weight = result.twin.model.graph.node("up").inputs[1].const_value.numpy()
    stored = result.model.graph.initializers
    # the dequantized int8 weight: the int8 values the pass chose times their scales
    expected = stored["up.weight_int8"].const_value.numpy() * stored["up.weight_scale"].const_value.numpy()
    np.testing.assert_array_equal(weight, expected.astype(np.float32))
    # rows of the stored int8 weight rolled: the result no longer matches
    broken = result.model.clone()
    values = broken.graph.initializers["up.weight_int8"]
    values.const_value = ir.tensor(np.roll(values.const_value.numpy(), 1, axis=0), name=values.name)
    assert not matches_twin(broken, result.twin, samples(model, 4, seed=5))


def test_static_twin_quantizes_the_bias_as_int32_at_the_product_of_scales():
    model = mlp(head=False)
    result = StaticQuantizationPass(samples=samples(model, 16), quantize_outputs=True)(model.clone())
    add = result.twin.model.graph.node("up_bias")
    bias = add.inputs[1].const_value.numpy()
    stored = result.model.graph.initializers
    expected = stored["up.bias_int32"].const_value.numpy() * stored["up.bias_scale"].const_value.numpy()
    np.testing.assert_array_equal(bias, expected.astype(np.float32))
    assert matches_twin(result.model, result.twin, samples(model, 4, seed=5))


def test_static_twin_requantizes_a_conv_output_read_by_the_next_conv():
    model = convnet()
    # conv1 feeds conv2 directly: one quantize-dequantize pair, at conv1's output range, for both
    relu = model.graph.node("relu1")
    conv2 = model.graph.node("conv2")
    conv2.replace_input_with(0, relu.inputs[0])
    model.graph.remove(relu, safe=True)
    calibration = samples(model, 16)
    result = StaticQuantizationPass(samples=calibration)(model.clone())
    ops = computed_op_types(result.twin.model)
    assert ops.count("QuantizeLinear") == 3  # the input, conv1's output (conv2's input), conv2's output
    assert matches_twin(result.model, result.twin, samples(model, 2, seed=5))


def test_smoothquant_twin_is_the_smoothed_input():
    model = _pre_norm_block()
    quantization = DynamicQuantizationPass(samples=_x(16), smooth_alpha=0.5)
    result = quantization(model.clone())
    assert result.twin.description.startswith("the input after SmoothQuant")
    assert "norm.smoothed_scale" in result.twin.model.graph.initializers
    assert matches_twin(result.model, result.twin, _x(4))


def test_qattention_keeps_the_mask_filter_value_its_twin_claims():
    # A fully masked row takes mask_filter_value's uniform softmax; QAttention's default differs.
    model = attention()
    model.graph.node("attn").attributes["mask_filter_value"] = ir.AttrFloat32("mask_filter_value", -1e9)
    result = DynamicQuantizationPass()(model.clone())
    feeds = samples(model, 2, seed=5, S=5)
    feeds["mask"][1] = 0
    assert matches_twin(result.model, result.twin, feeds)


def test_embedding_twin_is_the_dequantized_table_exactly():
    model = _lookup()
    result = EmbeddingQuantizationPass()(model.clone())
    assert result.twin.kind == "float32"
    assert "table.dequantized" in result.twin.model.graph.initializers
    ids = {"ids": np.array([[7, 1, 2, 999], [0, 7, 5, 6]], dtype=np.int64)}
    assert matches_twin(result.model, result.twin, ids)
    assert not matches_twin(_scaled(result.model, "table.row_scale", 1.01), result.twin, ids)


@pytest.mark.parametrize("keep_io_types", [True, False])
def test_float16_twin_rounds_the_converted_weights(keep_io_types):
    model = attention()
    result = Float16Pass(keep_io_types=keep_io_types)(model)
    twin = result.twin
    assert twin.kind == "float16"
    qkv = twin.model.graph.initializers["qkv"].const_value.numpy()
    assert qkv.dtype == np.float32
    np.testing.assert_array_equal(qkv, qkv.astype(np.float16).astype(np.float32))
    assert twin.model.graph.inputs[0].dtype == result.model.graph.inputs[0].dtype
    assert twin.model.graph.outputs[0].dtype == result.model.graph.outputs[0].dtype
    feeds = samples(model, 2, S=5)
    assert matches_twin(result.model, twin, feeds)
    broken = _scaled(result.model, "wo", 1.5)
    assert not matches_twin(broken, twin, feeds)


def test_the_dynamic_twin_of_an_old_opset_model_is_converted_to_run_dynamic_quantize_linear():
    model = mlp(head=False)
    model.opset_imports[""] = 10  # before DynamicQuantizeLinear (opset 11)
    result = DynamicQuantizationPass()(model.clone())
    assert result.model.opset_imports[""] == 10  # the result needs no conversion
    assert result.twin.model.opset_imports[""] == 18
    assert matches_twin(result.model, result.twin, samples(model, 4, seed=5))


def _floored_causal_attention(hidden: int = 16, heads: int = 2, length: int = 8, layers: int = 2) -> ir.Model:
    """``x [B, S, hidden]`` and a padding ``mask [B, S]`` through ``layers`` residual MultiHeadAttention layers.

    The additive mask is built as fuse-attention builds it: ``Where(causal and not
    padded, 0, -inf)`` floored at float32's minimum by a Max, so a query that sees no
    key (a left-padded one) gets a uniform softmax instead of NaN.
    """
    causal = np.tril(np.ones((length, length), dtype=bool))[None, None]
    nodes = [
        helper.make_node("Cast", ["mask"], ["keep"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["keep", "axes12"], ["keep4"]),
        helper.make_node("And", ["causal", "keep4"], ["allowed"]),
        helper.make_node("Where", ["allowed", "zero", "neg_inf"], ["bias"]),
        helper.make_node("Max", ["bias", "floor"], ["floored"], name="mask_floor"),
    ]
    init = [
        ("causal", causal),
        ("axes12", np.array([1, 2], np.int64)),
        ("zero", np.zeros((), np.float32)),
        ("neg_inf", np.array(-np.inf, np.float32)),
        ("floor", np.array(np.finfo(np.float32).min, np.float32)),
    ]
    h = "x"
    for layer in range(layers):
        names = [f"{p}{layer}" for p in ("wq", "wk", "wv", "wo")]
        init += [(name, weights(hidden, hidden, seed=10 * layer + i, scale=0.5)) for i, name in enumerate(names)]
        q, k, v, o, out = (f"{p}{layer}" for p in ("q", "k", "v", "o", "h"))
        nodes += [
            helper.make_node("MatMul", [h, names[0]], [q]),
            helper.make_node("MatMul", [h, names[1]], [k]),
            helper.make_node("MatMul", [h, names[2]], [v]),
            helper.make_node(
                "MultiHeadAttention", [q, k, v, "", "", "floored"], [o], domain="com.microsoft", num_heads=heads
            ),
            helper.make_node("MatMul", [o, names[3]], [f"p{layer}"]),
            helper.make_node("Add", [h, f"p{layer}"], [out]),
        ]
        h = out
    nodes.append(helper.make_node("Identity", [h], ["y"]))
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", length, hidden]),
        helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", length]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", length, hidden])]
    model = _model(nodes, inputs, outputs, init)
    # Typed as the pipeline's models are: the converter places its Casts by the types it reads.
    for node in model.graph:
        for output in node.outputs:
            output.dtype = ir.DataType.BOOL if output.name in ("keep", "keep4", "allowed") else ir.DataType.FLOAT
    return model


@pytest.mark.parametrize("keep_io_types", [True, False])
def test_float16_keeps_the_mask_floor_finite_for_a_left_padded_batch(keep_io_types):
    # A left-padded query under causal attention sees no key: every bias in its row is
    # -inf, and only the float32-min floor keeps them finite. The converter keeps Max
    # float32 (it is blocked) and casts its result to float16, where the floor was -inf
    # again. Whether a row of -inf comes out NaN is up to the kernel (ORT's CPU
    # MultiHeadAttention did on legacy Llama, and the NaN at the padded positions reached
    # every later query through their keys and values), so the bias itself is checked.
    model = _floored_causal_attention()
    mask = np.ones((2, 8), np.int64)
    mask[0, :3] = 0  # a decoder's tokenizer pads on the left
    feeds = {"x": weights(2, 8, 16, seed=7, scale=1.0), "mask": mask}
    result = Float16Pass(keep_io_types=keep_io_types)(model.clone())
    assert result.modified
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT  # the twin left the input model's types alone
    if not keep_io_types:
        feeds = {"x": feeds["x"].astype(np.float16), "mask": mask}
    (values,) = collect_values(result.model, ["floored", "y"], [feeds])
    assert values["floored"].dtype == np.float16
    assert np.isfinite(values["floored"]).all()
    assert values["floored"].min() == -65504
    actual = values["y"].astype(np.float32)
    assert np.isfinite(actual).all()
    with inference_session(model) as session:
        (expected,) = run_session(session, {"x": feeds["x"].astype(np.float32), "mask": mask}).values()
    unpadded = mask.astype(bool)  # what a left-padded query returns is not defined
    assert compare_outputs(
        {"y": expected[unpadded]}, {"y": actual[unpadded]}, {"float32": TWIN_TOLERANCES["float16"]}
    ).ok
    assert matches_twin(result.model, result.twin, feeds)
    assert "1 Max/Min bound clamped to float16's range" in result.twin.description
    assert result.twin.model.graph.initializers["floor"].const_value.numpy() == -65504
    assert model.graph.initializers["floor"].const_value.numpy() == np.finfo(np.float32).min


def test_float16_leaves_a_bound_alone_where_no_float16_follows():
    # Max(mask, float32 min) feeding only float32 ops (here the graph's float32 output) is exact as it is.
    model = _floored_causal_attention(layers=0)
    model.graph.outputs[0] = model.graph.node("mask_floor").outputs[0]
    result = Float16Pass()(model.clone())
    assert result.twin.model.graph.initializers["floor"].const_value.numpy() == np.finfo(np.float32).min

"""Each reduced-precision pass declares its exact twin, the result computes it, and a wrong realization does not.

The result runs as deployed (ORT_ENABLE_ALL: the integer kernels), the twin as written
(ORT_DISABLE_ALL), compared at the twin kind's tolerance as the pipeline does.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.protocol import Twin
from optimizer.runtime import inference_session, run_session
from optimizer.verify import TWIN_TOLERANCES, compare_outputs
from passes.quantization.dynamic import DynamicQuantizationPass
from passes.quantization.embedding import EmbeddingQuantizationPass
from passes.quantization.float16 import Float16Pass
from passes.quantization.static import StaticQuantizationPass
from tests.helpers import computed_op_types
from tests.passes.quantization.graphs import attention, convnet, mlp, samples
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

"""quantize-static: QDQ around MatMul/Gemm/Conv with calibrated ranges, QAttention for Attention."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import pytest

from passes.quantization._int8 import activation_parameters
from passes.quantization.static import StaticQuantizationPass
from tests.helpers import computed_op_types
from tests.passes.quantization.conftest import drift, ort_op_counts
from tests.passes.quantization.graphs import attention, convnet, mlp, samples


def test_matmul_gets_qdq_and_runs_as_an_integer_matmul_in_onnx_runtime():
    model = mlp(head=False)
    quantization = StaticQuantizationPass(samples=samples(model, 32), method="minmax", quantize_outputs=True)
    after = quantization(model.clone()).model
    ops = collections.Counter(computed_op_types(after))
    assert ops["QuantizeLinear"] == 2 and ops["MatMul"] == 2
    # weights + activations + the MatMul's bias (int32) are dequantized
    assert ops["DequantizeLinear"] == 5
    bias = after.graph.initializers["up.bias_int32"].const_value.numpy()
    assert bias.dtype == np.int32
    # With an int32 bias ORT keeps the integer kernel (a float bias makes it a float Gemm).
    assert ort_op_counts(after)["MatMulIntegerToFloat"] == 2
    assert drift(model, after, samples(model, 4, seed=5)).cosine > 0.999


def test_gemm_with_transposed_weight_quantizes_along_its_output_axis():
    model = mlp(gemm_trans_b=True, head=False)
    after = StaticQuantizationPass(samples=samples(model, 32), quantize_outputs=True)(model.clone()).model
    dq = next(n for n in after.graph if n.name == "down_weight_dq")
    assert dq.attributes.get_int("axis") == 0
    assert after.graph.initializers["down.weight_scale"].const_value.shape == (32,)
    assert drift(model, after, samples(model, 4, seed=5)).cosine > 0.999


def test_conv_outputs_get_qdq_so_onnx_runtime_runs_qlinearconv():
    model = convnet()
    feeds = {"x": np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)}
    quantization = StaticQuantizationPass(samples=feeds)
    after = quantization(model.clone()).model
    assert quantization.quantized == ["conv1", "conv2"] and quantization.kept_float == ["classifier"]
    assert ort_op_counts(after)["QLinearConv"] == 2
    assert drift(model, after, {"x": feeds["x"][:4]}).cosine > 0.999


def test_old_opsets_are_converted_for_per_channel_qdq():
    model = convnet(opset=11)
    feeds = {"x": np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)}
    result = StaticQuantizationPass(samples=feeds)(model.clone())
    after = result.model
    assert after.opset_imports[""] == 18
    assert result.notes[0] == "converted from opset 11 to 18 for QDQ"
    assert drift(model, after, {"x": feeds["x"][:2]}).cosine > 0.999


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_attention_becomes_qattention_with_the_calibrated_input_scale(method):
    model = attention(scale=0.3)
    feeds = samples(model, 16, S=7)
    quantization = StaticQuantizationPass(samples=feeds, method=method)
    after = quantization(model.clone()).model
    ops = computed_op_types(after)
    assert "QAttention" in ops and "DynamicQuantizeLinear" not in ops
    qattention = next(node for node in after.graph if node.op_type == "QAttention")
    expected_scale, _ = activation_parameters(*quantization.ranges["x"])
    assert qattention.inputs[3].const_value.numpy() == pytest.approx(float(expected_scale))
    held_out = samples(model, 3, seed=9, S=7)
    held_out["mask"][-1, 4:] = 0  # a padded row goes through QAttention's mask_index
    assert drift(model, after, held_out).cosine > 0.995


def test_without_samples_nothing_is_quantized():
    quantization = StaticQuantizationPass()
    result = quantization(mlp())
    assert not result.modified
    assert result.refusals == ["no calibration samples: nothing quantized"]


def test_a_bias_too_large_for_int32_raises_its_channels_weight_scale_instead_of_staying_float():
    model = mlp(head=False)
    model.graph.initializers["b1"].const_value = ir.tensor(np.full(64, 1e6, dtype=np.float32))
    feeds = {"x": np.random.default_rng(0).standard_normal((8, 5, 32)).astype(np.float32) * 1e-4}
    after = StaticQuantizationPass(samples=feeds, quantize_outputs=True)(model.clone()).model
    bias = after.graph.initializers["up.bias_int32"].const_value.numpy()
    assert bias.dtype == np.int32 and np.abs(bias).max() < np.iinfo(np.int32).max // 2 + 2**20
    # the bias dominates these channels: their int8 weights at the raised scale cost nothing visible
    assert drift(model, after, {"x": feeds["x"][:2]}).cosine > 0.999
    assert ort_op_counts(after)["MatMulIntegerToFloat"] == 2


def test_attention_and_matmul_reading_one_tensor_share_its_quantize_node():
    model = attention()
    # a second layer on the attention's input: an extra MatMul of x
    weight = ir.Value(name="w_extra", const_value=ir.tensor(np.eye(32, dtype=np.float32)))
    model.graph.register_initializer(weight)
    extra = ir.Node("", "MatMul", [model.graph.inputs[0], weight], name="extra")
    model.graph.append(extra)
    add = ir.Node("", "Add", [model.graph.outputs[0], extra.outputs[0]], name="merge")
    model.graph.append(add)
    add.outputs[0].name, add.outputs[0].shape, add.outputs[0].type = (
        "z",
        ir.Shape(["B", "S", 32]),
        ir.TensorType(ir.DataType.FLOAT),
    )
    model.graph.outputs[0] = add.outputs[0]
    after = StaticQuantizationPass(samples=samples(model, 8, S=5))(model.clone()).model
    names = [node.name for node in after.graph]
    assert len(names) == len(set(names))
    assert computed_op_types(after).count("QuantizeLinear") == 2  # x (shared) and the attention output


def test_a_model_with_a_fixed_batch_of_one_is_calibrated_one_sample_at_a_time():
    model = convnet()
    model.graph.inputs[0].shape = ir.Shape([1, 3, 16, 16])
    feeds = {"x": np.random.default_rng(0).standard_normal((6, 3, 16, 16)).astype(np.float32)}
    result = StaticQuantizationPass(samples=feeds)(model.clone())
    assert result.modified
    assert any("on 6 samples" in note for note in result.notes)

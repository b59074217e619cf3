"""quantize-dynamic: MatMul/Gemm into DynamicQuantizeMatMul, Attention into QAttention."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from passes.quantization.dynamic import DynamicQuantizationPass
from tests.helpers import computed_op_types, run
from tests.passes.quantization.conftest import drift
from tests.passes.quantization.graphs import attention, convnet, mlp, samples


def test_matmul_and_bias_add_become_one_dynamic_quantize_matmul():
    model = mlp(head=False)
    quantization = DynamicQuantizationPass(quantize_outputs=True)
    after = quantization(model.clone()).model
    assert computed_op_types(after) == ["DynamicQuantizeMatMul", "Relu", "DynamicQuantizeMatMul"]
    assert quantization.quantized == ["up", "down"]
    assert after.graph.outputs[0].name == "h"
    assert drift(model, after, samples(model, 4)).cosine > 0.999


def test_gemm_with_transposed_weight_and_bias():
    model = mlp(gemm_trans_b=True, head=False)
    after = DynamicQuantizationPass(quantize_outputs=True)(model.clone()).model
    assert computed_op_types(after).count("DynamicQuantizeMatMul") == 2
    assert "Gemm" not in computed_op_types(after)
    assert drift(model, after, samples(model, 4)).cosine > 0.999


@pytest.mark.parametrize("per_channel", [True, False])
def test_per_channel_and_per_tensor_scales(per_channel):
    model = mlp(head=False)
    after = DynamicQuantizationPass(per_channel=per_channel)(model.clone()).model
    scale = after.graph.initializers["up.weight_scale"].const_value.numpy()
    assert scale.shape == ((64,) if per_channel else ())
    assert drift(model, after, samples(model, 4)).cosine > 0.998


def test_the_layer_producing_a_model_output_stays_float_unless_asked():
    model = mlp(head=True)
    quantization = DynamicQuantizationPass()
    after = quantization(model.clone()).model
    assert quantization.kept_float == ["head"] and computed_op_types(after)[-1] == "MatMul"
    everything = DynamicQuantizationPass(quantize_outputs=True)
    everything(model.clone())
    assert "head" in everything.quantized


def test_exclude_globs_match_names_and_op_types():
    model = mlp(head=False)
    quantization = DynamicQuantizationPass(exclude=["do*"])
    quantization(model.clone())
    assert quantization.quantized == ["up"] and quantization.kept_float == ["down"]
    assert not DynamicQuantizationPass(exclude=["MatMul"])(model.clone()).modified


@pytest.mark.parametrize("unidirectional", [0, 1])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_attention_becomes_qattention(scale, unidirectional):
    model = attention(scale=scale, unidirectional=unidirectional)
    after = DynamicQuantizationPass()(model.clone()).model
    ops = computed_op_types(after)
    assert "QAttention" in ops and "DynamicQuantizeLinear" in ops and "Attention" not in ops
    feeds = samples(model, 3, S=7)
    feeds["mask"][-1, 5:] = 0  # a padded row
    # A non-default scale is folded into the query weights: outputs still match.
    assert drift(model, after, feeds).cosine > 0.999


def test_conv_and_activation_matmuls_are_not_touched():
    assert not DynamicQuantizationPass()(convnet()).modified
    from tests.helpers import parse_model

    two_activations = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3] a, float[3, 4] b) => (float[2, 4] y) { y = MatMul(a, b) }""")
    assert not DynamicQuantizationPass()(two_activations).modified


def test_non_float32_weights_are_refused():
    model = mlp(head=False)
    model.graph.initializers["w1"].const_value = __import__("onnx_ir").tensor(np.ones((32, 64), dtype=np.float64))
    quantization = DynamicQuantizationPass()
    quantization(model)
    assert "up" not in quantization.quantized


def test_projections_of_one_activation_share_its_quantization():
    from tests.passes.quantization.test_smoothing import _pre_norm_block, _x

    model = _pre_norm_block()
    after = DynamicQuantizationPass()(model.clone()).model
    ops = computed_op_types(after)
    assert ops.count("DynamicQuantizeLinear") == 1 and ops.count("MatMulIntegerToFloat") == 2
    assert drift(model, after, _x(4)).cosine > 0.999


def _massive_token(model, count: int = 4):
    """Samples where one token of each sequence is 500x the others (a decoder's attention-sink token)."""
    feeds = samples(model, count)
    feeds["x"][:, 0] *= 500.0
    return feeds


@pytest.mark.parametrize("opset", [17, 18])
def test_per_row_activation_scales_become_matmul_integer_to_float(opset):
    model = mlp(head=False)
    model.opset_imports[""] = opset
    if opset < 18:  # no ops whose signature changed; the test graph is valid at 17 too
        model = ir.from_proto(ir.to_proto(model))
    quantization = DynamicQuantizationPass(activation_scale="row", quantize_outputs=True)
    after = quantization(model.clone()).model
    ops = computed_op_types(after)
    assert ops.count("MatMulIntegerToFloat") == 2 and "DynamicQuantizeMatMul" not in ops
    assert "DynamicQuantizeLinear" not in ops and ops.count("ReduceMax") == 2
    feeds = _massive_token(model)
    per_tensor = DynamicQuantizationPass(quantize_outputs=True)(model.clone()).model
    # one 500x token sets a per-tensor step that rounds every other token's values to a few
    # levels; per row, the other tokens keep their own step
    exact = run(model, feeds)["h"][:, 1:]
    by_rows, by_tensor = (run(m, feeds)["h"][:, 1:] for m in (after, per_tensor))
    assert np.abs(by_rows - exact).max() < np.abs(by_tensor - exact).max() / 10
    assert drift(model, after, samples(model, 4)).cosine > 0.999


def test_per_row_quantizes_an_input_read_by_several_layers_once():
    from tests.passes.quantization.test_smoothing import _pre_norm_block, _x

    model = _pre_norm_block()
    after = DynamicQuantizationPass(activation_scale="row", quantize_outputs=True)(model.clone()).model
    ops = computed_op_types(after)
    assert ops.count("MatMulIntegerToFloat") == 3 and ops.count("ReduceMax") == 2  # norm output, q+k sum
    assert drift(model, after, _x(4)).cosine > 0.999


def test_per_row_leaves_packed_attention_per_tensor():
    model = attention()
    after = DynamicQuantizationPass(activation_scale="row")(model.clone()).model
    ops = computed_op_types(after)
    assert "QAttention" in ops and "DynamicQuantizeLinear" in ops
    assert drift(model, after, samples(model, 3, S=7)).cosine > 0.999


def test_an_unknown_activation_scale_is_refused():
    with pytest.raises(ValueError, match="activation_scale"):
        DynamicQuantizationPass(activation_scale="channel")

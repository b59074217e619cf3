"""fuse-skip-layer-norm: residual Add (+ bias) + LayerNorm/RMSNorm into the Skip* fused ops."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from passes.fusion.skip_layer_norm import SkipLayerNormFusion, SkipRmsNormFusion
from tests.helpers import assert_same_outputs, computed_op_types, parse_model

_TEXT = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[N, S, 4] x, float{skip_shape} skip) => (float[N, S, 4] y, float[N, S, 4] total) {{
      bias = Constant<value = float[4] {{0.1, -0.2, 0.3, 0.5}}>()
      gamma = Constant<value = float[4] {{1.0, 0.5, 2.0, 1.5}}>()
      beta = Constant<value = float[4] {{0.0, 0.1, -0.1, 0.2}}>()
      biased = Add(x, bias)
      total = Add(skip, biased)
      y = {norm}
    }}"""
_NORMS = {
    "LayerNormalization": "LayerNormalization<axis = -1, epsilon = 1e-5>(total, gamma, beta)",
    "SimplifiedLayerNormalization": "SimplifiedLayerNormalization<axis = -1, epsilon = 1e-6>(total, gamma)",
}
_PASSES = {"LayerNormalization": SkipLayerNormFusion, "SimplifiedLayerNormalization": SkipRmsNormFusion}
_FUSED = {
    "LayerNormalization": "SkipLayerNormalization",
    "SimplifiedLayerNormalization": "SkipSimplifiedLayerNormalization",
}


def _inputs():
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal((2, 3, 4)).astype(np.float32) for name in ("x", "skip")}


@pytest.mark.parametrize("norm", list(_NORMS))
def test_residual_add_and_bias_are_fused(norm):
    model = parse_model(_TEXT.format(skip_shape="[N, S, 4]", norm=_NORMS[norm]))
    after = _PASSES[norm]()(model.clone()).model
    assert computed_op_types(after) == [_FUSED[norm]]
    # The residual sum is still a graph output: it now comes from the fused op's fourth output.
    assert after.graph.outputs[1].producer().op_type == _FUSED[norm]
    assert_same_outputs(model, after, _inputs(), rtol=1e-4, atol=1e-5)


def test_rank_2_skip_without_batch_axis_is_fused():
    # ONNX Runtime's SkipLayerNormalization takes a (sequence_length, hidden_size) skip, broadcast over the batch
    # (Pegasus' sinusoidal positions added to the token embeddings; review s66). An [S, 4] of another S is refused.
    model = parse_model(_TEXT.format(skip_shape="[S, 4]", norm=_NORMS["LayerNormalization"]))
    after = SkipLayerNormFusion()(model.clone()).model
    (fused,) = [n for n in after.graph if n.op_type == "SkipLayerNormalization"]
    assert fused.inputs[1].name == "skip"
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "skip": rng.standard_normal((3, 4)).astype(np.float32),
    }
    assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)
    other = parse_model(_TEXT.format(skip_shape="[T, 4]", norm=_NORMS["LayerNormalization"]))
    assert not SkipLayerNormFusion()(other).modified


def test_batch_1_operand_becomes_the_skip():
    # GPT-2's position embeddings are [1, S, D]: the op broadcasts its skip over the batch, never
    # its input, so the batch-1 operand must be passed as skip.
    model = parse_model(
        _TEXT.format(skip_shape="[N, S, 4]", norm=_NORMS["LayerNormalization"]).replace(
            "float[N, S, 4] x,", "float[1, S, 4] x,"
        )
    )
    after = SkipLayerNormFusion()(model.clone()).model
    (fused,) = [n for n in after.graph if n.op_type == "SkipLayerNormalization"]
    assert fused.inputs[1].name == "biased" or fused.inputs[1].shape[0] == 1
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((1, 3, 4)).astype(np.float32),
        "skip": rng.standard_normal((2, 3, 4)).astype(np.float32),
    }
    assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


def test_each_pass_leaves_the_other_normalization_alone():
    model = parse_model(_TEXT.format(skip_shape="[N, S, 4]", norm=_NORMS["SimplifiedLayerNormalization"]))
    assert not SkipLayerNormFusion()(model).modified


@pytest.mark.parametrize("norm", list(_NORMS))
def test_independent_operands_of_unnamed_dims_are_left_alone(norm):
    # A review: x and skip declared [?, ?, 4] (Paddle's and tf2onnx's -1s), fed [1, 5, 4] and [3, 5, 4]: the
    # original broadcasts to 3 rows, the fused op gave 1 (it takes its input's shape and does not broadcast).
    text = _TEXT.format(skip_shape="[?, ?, 4]", norm=_NORMS[norm]).replace("float[N, S, 4] x,", "float[?, ?, 4] x,")
    model = parse_model(
        text.replace("float[N, S, 4] y, float[N, S, 4] total", "float[?, ?, 4] y, float[?, ?, 4] total")
    )
    assert not _PASSES[norm]()(model.clone()).modified


@pytest.mark.parametrize("norm", list(_NORMS))
def test_a_residual_of_unnamed_dims_is_fused(norm):
    # x + F(x): the two operands are computed from one value, whatever their dims read.
    text = _TEXT.format(skip_shape="[?, ?, 4]", norm=_NORMS[norm])
    text = text.replace("float[N, S, 4] x, float[?, ?, 4] skip", "float[?, ?, 4] source")
    text = text.replace(
        "biased = Add(x, bias)", "x = Relu(source)\n      skip = Sigmoid(source)\n      biased = Add(x, bias)"
    )
    model = parse_model(text)
    for node in model.graph:
        if node.op_type in ("Relu", "Sigmoid"):  # shapes as an exporter leaves them: rank known, dims not
            node.outputs[0].shape = ir.Shape([None, None, 4])
            node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    after = _PASSES[norm]()(model.clone()).model
    assert _FUSED[norm] in computed_op_types(after)
    feeds = {"source": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}
    assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


def _constant_scale_and_bias(model: ir.Model) -> None:
    """The graph inputs ``gamma`` and ``beta`` made initializers (the norm's constant scale and bias)."""
    for name in ("gamma", "beta"):
        value = next(v for v in model.graph.inputs if v.name == name)
        model.graph.inputs.remove(value)
        value.const_value = ir.tensor(np.linspace(0.5, 1.5, 8).astype(np.float32), name=name)
        model.graph.register_initializer(value)


def test_operands_whose_rank_only_shape_inference_finds_are_fused():
    # The legacy exporter records no intermediate shapes (Whisper's and wav2vec2's encoders): the residual's
    # operands were "not known to be 3-D" and left unfused; their ranks are read from ONNX's shape inference.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[batch, sequence, 8] x, float[8] gamma, float[8] beta) => (float[batch, sequence, 8] y) {
            h = Relu(x)
            s = Add(h, x)
            y = LayerNormalization<axis = -1>(s, gamma, beta)
        }""")
    _constant_scale_and_bias(model)
    result = SkipLayerNormFusion()(model.clone())
    assert result.modified, result.refusals
    assert computed_op_types(result.model) == ["Relu", "SkipLayerNormalization"]
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    assert_same_outputs(model, result.model, {"x": x}, rtol=1e-4, atol=1e-5)


def test_a_sum_read_between_the_add_and_the_norm_keeps_the_graph_in_order():
    # CLIP's text encoder reads the embeddings' sum (Shape) before its first LayerNorm: the fused op, placed where
    # the norm was, computed the sum after its reader, and the pass failed its postcondition (not in order).
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[batch, sequence, 8] x, float[8] gamma, float[8] beta) => (float[batch, sequence, 8] y) {
            h = Relu(x)
            s = Add(h, x)
            size = Shape(s)
            n = LayerNormalization<axis = -1>(s, gamma, beta)
            y = Reshape(n, size)
        }""")
    _constant_scale_and_bias(model)
    result = SkipLayerNormFusion()(model.clone())
    assert result.modified, result.refusals
    assert "SkipLayerNormalization" in computed_op_types(result.model)
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    assert_same_outputs(model, result.model, {"x": x}, rtol=1e-4, atol=1e-5)

"""Review s63, an encoder sweep (transformers configs, both exporters, opsets 18 and 23).

From opset 18, ReduceL1/L2/LogSum/LogSumExp/Max/Min/Prod/SumSquare read their axes from an input. ONNX Runtime's
symbolic shape inference has a handler for ReduceSum and ReduceMean only: on the others it ran ONNX's inference
without the axes' value, the output got no shape, and the next elementwise op raised ("object of type 'NoneType'
has no len()"), which failed the whole inference. ``simplify-shapes`` then proved no Reshape target of the model:
a legacy opset-18 HuBERT (weight norm of its positional convolution: ReduceL2, Div) kept every shape chain, and
``pack-qkv`` refused both attentions ("a projection has other users", the Shape reads): 236 -> 123 nodes, 68 with
the fix.

ONNX's shape inference names a dim it cannot size ``unk__N``; ``fuse-skip-layer-norm`` read two such names as two
sizes and refused the residual norms after attention of a legacy LayoutLM ("operand shapes differ, or the first
broadcasts"): 2 of 4 fused with the encoder fusions, 4 with the fix.
"""

from __future__ import annotations

import numpy as np
import pytest

from passes.fusion.skip_layer_norm import SkipLayerNormFusion
from passes.shape_simplification import ShapeSimplificationPass, _symbolic_shapes
from tests.helpers import assert_same_outputs, computed_op_types, op_types, parse_model

# A weight-normed projection (torch's weight_norm through the legacy exporter at opset 18: the axes a Constant),
# then a head split whose target is read from the hidden states at run time.
WEIGHT_NORM_HEAD_SPLIT = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[batch, sequence, 16] hidden) => (float[batch, sequence, 4, 4] y)
    <float[16, 16] v = {DIRECTION}, float[1, 16] gain = {GAIN}> {
      axes = Constant<value = int64[1] {0}>()
      norm = REDUCE<keepdims = 1>(v, axes)
      direction = Div(v, norm)
      w = Mul(direction, gain)
      projected = MatMul(hidden, w)
      shape = Shape(hidden)
      start = Constant<value = int64[1] {0}>()
      end = Constant<value = int64[1] {2}>()
      leading = Slice(shape, start, end)
      heads = Constant<value = int64[2] {4, 4}>()
      target = Concat<axis = 0>(leading, heads)
      y = Reshape(projected, target)
    }"""


def _model(reduce: str):
    values = np.random.default_rng(0).uniform(0.5, 1.5, 16 * 17)
    v, gain = (", ".join(f"{x:.3f}" for x in part) for part in (values[:256], values[256:]))
    return parse_model(WEIGHT_NORM_HEAD_SPLIT.replace("REDUCE", reduce).replace("DIRECTION", v).replace("GAIN", gain))


@pytest.mark.parametrize("reduce", ["ReduceL2", "ReduceL1", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceProd"])
def test_a_reduction_reading_its_axes_from_an_input_does_not_stop_the_inference(reduce):
    model = _model(reduce)
    shapes = _symbolic_shapes(model)
    assert not isinstance(shapes, str), shapes
    assert shapes["norm"] == (1, 16)
    original = model.clone()
    result = ShapeSimplificationPass()(model)
    assert result.modified and "Shape" not in op_types(result.model)
    for batch, sequence in [(1, 1), (3, 17)]:
        hidden = np.random.default_rng(batch).standard_normal((batch, sequence, 16)).astype(np.float32)
        assert_same_outputs(original, result.model, {"hidden": hidden})


def test_a_reduction_of_activations_keeps_its_symbolic_dims():
    model = parse_model(
        """
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[batch, sequence, 16] x) => (float[batch, sequence, 16] y) {
          axes = Constant<value = int64[1] {-1}>()
          top = ReduceMax<keepdims = 1>(x, axes)
          y = Sub(x, top)
        }"""
    )
    shapes = _symbolic_shapes(model)
    assert not isinstance(shapes, str), shapes
    assert shapes["top"] == ("batch", "sequence", 1)


# A residual x + F(x) whose F reads its head split target at run time, in a file with no recorded shapes (the
# legacy exporter's): ONNX's shape inference names F(x)'s dims unk__N, x's are batch and sequence.
RESIDUAL_THROUGH_COMPUTED_RESHAPE = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[batch, sequence, 8] x) => (float[batch, sequence, 8] y)
    <float[8] gamma = {GAMMA}, float[8] beta = {BETA}> {
      shape = Shape(x)
      start = Constant<value = int64[1] {0}>()
      end = Constant<value = int64[1] {2}>()
      sliced = Slice(shape, start, end)
      as_float = Cast<to = 1>(sliced)
      leading = Cast<to = 7>(as_float)
      heads = Constant<value = int64[2] {2, 4}>()
      target = Concat<axis = 0>(leading, heads)
      split = Reshape(x, target)
      merged_target = Constant<value = int64[3] {0, 0, 8}>()
      merged = Reshape(split, merged_target)
      h = Relu(merged)
      s = Add(h, x)
      y = LayerNormalization<axis = -1>(s, gamma, beta)
    }"""


def test_a_residual_whose_dims_shape_inference_names_apart_is_fused():
    # LayoutLM's legacy export: two of its four residual norms were left unfused ("operand shapes differ, or the
    # first broadcasts") because the names ONNX's inference made up for unknown dims were read as sizes.
    values = ", ".join(f"{x:.2f}" for x in np.linspace(0.5, 1.5, 8))
    model = parse_model(RESIDUAL_THROUGH_COMPUTED_RESHAPE.replace("GAMMA", values).replace("BETA", values))
    result = SkipLayerNormFusion()(model.clone())
    assert result.modified
    assert "SkipLayerNormalization" in computed_op_types(result.model)
    for batch, sequence in [(1, 1), (3, 5)]:
        x = np.random.default_rng(batch).standard_normal((batch, sequence, 8)).astype(np.float32)
        assert_same_outputs(model, result.model, {"x": x}, rtol=1e-4, atol=1e-5)

"""fuse-layer-norm: decomposed LayerNorm into LayerNormalization."""

from __future__ import annotations

import numpy as np

from passes.fusion.layer_norm import LayerNormFusion
from tests.helpers import assert_same_outputs, computed_op_types, op_types, parse_model

_LAYER_NORM = """
    <ir_version: 9, opset_import: ["" : {opset}]>
    g (float[N, 5, 8] x) => (float[N, 5, 8] y) {{
      axes = Constant<value = int64[1] {{{axis}}}>()
      eps = Constant<value = float {{1e-5}}>()
      two = Constant<value = float {{2.0}}>()
      gamma = Constant<value = float[8] {{1.0, 0.5, 2.0, 1.5, 0.8, 1.2, 0.9, 1.1}}>()
      beta = Constant<value = float[8] {{0.1, -0.2, 0.3, 0.0, 0.5, -0.5, 0.2, 0.1}}>()
      mean = ReduceMean<keepdims = 1>(x, axes)
      d = Sub(x, mean)
      sq = Pow(d, two)
      var = ReduceMean<keepdims = 1>(sq, axes)
      v = Add(var, eps)
      std = Sqrt(v)
      n = Div(d, std)
      s = Mul(gamma, n)
      y = Add(s, beta)
    }}"""


def _inputs():
    return {"x": np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32) * 3 + 1}


def test_decomposed_layer_norm_is_fused():
    model = parse_model(_LAYER_NORM.format(opset=18, axis=-1))
    after = LayerNormFusion()(model.clone()).model
    assert computed_op_types(after) == ["LayerNormalization"]
    assert_same_outputs(model, after, _inputs(), rtol=1e-4, atol=1e-5)


def test_positive_last_axis_is_accepted():
    model = parse_model(_LAYER_NORM.format(opset=18, axis=2))
    after = LayerNormFusion()(model.clone()).model
    assert computed_op_types(after) == ["LayerNormalization"]
    assert_same_outputs(model, after, _inputs(), rtol=1e-4, atol=1e-5)


def test_normalization_over_another_axis_is_left_alone():
    model = parse_model(_LAYER_NORM.format(opset=18, axis=1))
    result = LayerNormFusion()(model.clone())
    assert not result.modified
    assert "LayerNormalization" not in op_types(result.model)


def test_models_below_opset_17_are_left_alone():
    text = _LAYER_NORM.format(opset=18, axis=-1).replace('"" : 18', '"" : 16')
    text = text.replace("ReduceMean<keepdims = 1>(x, axes)", "ReduceMean<keepdims = 1, axes = [-1]>(x)")
    text = text.replace("ReduceMean<keepdims = 1>(sq, axes)", "ReduceMean<keepdims = 1, axes = [-1]>(sq)")
    result = LayerNormFusion()(parse_model(text))
    assert not result.modified


def test_epsilon_that_is_a_graph_input_is_left_alone():
    text = _LAYER_NORM.format(opset=18, axis=-1)
    text = text.replace("(float[N, 5, 8] x)", "(float[N, 5, 8] x, float eps)").replace(
        "eps = Constant<value = float {1e-5}>()", ""
    )
    result = LayerNormFusion()(parse_model(text))
    assert not result.modified


def test_exporters_other_spellings_of_the_square_and_the_root_fuse():
    # A review: a [1]-shaped exponent (Paddle stores scalars so) and TF's Pow(variance + eps, -0.5) were left
    # unfused without a word.
    base = _LAYER_NORM.format(opset=18, axis=-1)
    one_element = base.replace("two = Constant<value = float {2.0}>()", "two = Constant<value = float[1] {2.0}>()")
    tf_root = base.replace("std = Sqrt(v)", "half = Constant<value = float {-0.5}>()\n      inv = Pow(v, half)")
    tf_root = tf_root.replace("n = Div(d, std)", "n = Mul(d, inv)")
    for text in (one_element, tf_root):
        model = parse_model(text)
        after = LayerNormFusion()(model.clone()).model
        assert computed_op_types(after) == ["LayerNormalization"], text
        assert_same_outputs(model, after, _inputs(), rtol=1e-4, atol=1e-5)


def test_other_exponents_are_left_alone():
    base = _LAYER_NORM.format(opset=18, axis=-1)
    cube = base.replace("two = Constant<value = float {2.0}>()", "two = Constant<value = float {3.0}>()")
    quarter_root = base.replace("std = Sqrt(v)", "q = Constant<value = float {-0.25}>()\n      inv = Pow(v, q)")
    quarter_root = quarter_root.replace("n = Div(d, std)", "n = Mul(d, inv)")
    for text in (cube, quarter_root):
        result = LayerNormFusion()(parse_model(text))
        assert not result.modified and "LayerNormalization" not in op_types(result.model), text


def _without_affine(text: str) -> str:
    return text.replace("      s = Mul(gamma, n)\n      y = Add(s, beta)\n", "").replace(
        "n = Div(d, std)", "y = Div(d, std)"
    )


def test_layer_norm_without_scale_and_bias_fuses_with_a_scale_of_ones():
    # elementwise_affine=False ends at the division: unfused before a review.
    for opset in (17, 18):
        text = _without_affine(_LAYER_NORM.format(opset=opset, axis=-1))
        if opset == 17:  # the axes as an attribute, as ReduceMean had them before opset 18
            text = text.replace("ReduceMean<keepdims = 1>(x, axes)", "ReduceMean<keepdims = 1, axes = [-1]>(x)")
            text = text.replace("ReduceMean<keepdims = 1>(sq, axes)", "ReduceMean<keepdims = 1, axes = [-1]>(sq)")
        model = parse_model(text)
        after = LayerNormFusion()(model.clone()).model
        assert computed_op_types(after) == ["LayerNormalization"], opset
        (norm,) = [n for n in after.graph if n.op_type == "LayerNormalization"]
        assert len(norm.inputs) == 2  # no bias
        np.testing.assert_array_equal(norm.inputs[1].const_value.numpy(), np.ones(8, np.float32))
        assert_same_outputs(model, after, _inputs(), rtol=1e-4, atol=1e-5)


def test_layer_norm_without_scale_needs_a_static_last_dim():
    text = _without_affine(_LAYER_NORM.format(opset=18, axis=-1)).replace("5, 8]", "5, D]")
    result = LayerNormFusion()(parse_model(text))
    assert not result.modified
    assert result.refusals == [
        "1 near match at Div left unfused: no scale, and the last dim has no static size to build a scale of ones for"
    ]


def test_layer_norm_without_scale_over_another_axis_is_left_alone():
    result = LayerNormFusion()(parse_model(_without_affine(_LAYER_NORM.format(opset=18, axis=1))))
    assert not result.modified
    assert result.refusals == ["1 near match at Div left unfused: a mean is not over the last axis alone"]


def test_layer_norm_without_scale_of_an_unrecorded_shape_takes_the_inferred_last_dim():
    # Refused before ("no static size"): the input is 3 * z, whose shape the graph does not record (the legacy
    # exporter records none). Shape inference gives the last dim, 8; the inferred shapes are taken back.
    text = _without_affine(_LAYER_NORM.format(opset=18, axis=-1)).replace(
        "g (float[N, 5, 8] x)", "g (float[N, 5, 8] z)"
    )
    text = text.replace("{\n", "{\n      three = Constant<value = float {3.0}>()\n      x = Mul(z, three)\n", 1)
    model = parse_model(text)
    result = LayerNormFusion()(model.clone())
    assert computed_op_types(result.model) == ["Mul", "LayerNormalization"]
    assert result.refusals == []
    (norm,) = [n for n in result.model.graph if n.op_type == "LayerNormalization"]
    np.testing.assert_array_equal(norm.inputs[1].const_value.numpy(), np.ones(8, np.float32))
    assert norm.inputs[0].shape is None
    assert_same_outputs(model, result.model, {"z": _inputs()["x"]}, rtol=1e-4, atol=1e-5)

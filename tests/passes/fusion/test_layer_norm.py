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

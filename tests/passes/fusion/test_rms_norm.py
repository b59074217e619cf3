"""fuse-rms-norm: decomposed RMSNorm into SimplifiedLayerNormalization."""

from __future__ import annotations

import numpy as np
import pytest

from passes.fusion.rms_norm import RmsNormFusion
from tests.helpers import assert_same_outputs, computed_op_types, parse_model

_PREAMBLE = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[N, 5, 8] x) => (float[N, 5, 8] y) {{
      axes = Constant<value = int64[1] {{{axis}}}>()
      eps = Constant<value = float {{1e-6}}>()
      two = Constant<value = float {{2.0}}>()
      one = Constant<value = float {{1.0}}>()
      gamma = Constant<value = float[8] {{1.0, 0.5, 2.0, 1.5, 0.8, 1.2, 0.9, 1.1}}>()
      sq = Pow(x, two)
      ms = ReduceMean<keepdims = 1>(sq, axes)
      v = Add(ms, eps)
      r = Sqrt(v)
      {inverse}
      y = Mul(gamma, n)
    }}"""
_INVERSES = {
    "div": "n = Div(x, r)",
    "reciprocal (dynamo)": "i = Reciprocal(r)\n      n = Mul(x, i)",
    "one over (legacy)": "i = Div(one, r)\n      n = Mul(x, i)",
}


@pytest.mark.parametrize("inverse", list(_INVERSES))
def test_rms_norm_is_fused(inverse):
    model = parse_model(_PREAMBLE.format(axis=-1, inverse=_INVERSES[inverse]))
    after = RmsNormFusion()(model.clone()).model
    assert computed_op_types(after) == ["SimplifiedLayerNormalization"]
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    assert_same_outputs(model, after, {"x": x}, rtol=1e-4, atol=1e-5)


def test_mean_over_another_axis_is_left_alone():
    model = parse_model(_PREAMBLE.format(axis=1, inverse=_INVERSES["div"]))
    result = RmsNormFusion()(model)
    assert not result.modified
    assert result.refusals == ["1 near match at Mul left unfused: the mean is not over the last axis alone"]


def test_rms_norm_without_a_constant_scale_is_left_alone():
    text = _PREAMBLE.format(axis=-1, inverse=_INVERSES["div"])
    text = text.replace("(float[N, 5, 8] x)", "(float[N, 5, 8] x, float[8] gamma)")
    text = text.replace("gamma = Constant<value = float[8] {1.0, 0.5, 2.0, 1.5, 0.8, 1.2, 0.9, 1.1}>()", "")
    assert not RmsNormFusion()(parse_model(text)).modified


def test_a_one_element_exponent_fuses():
    # Exporters that store scalars as [1] tensors (Paddle) wrote Pow(x, [2.0]): unfused before a review.
    text = _PREAMBLE.format(axis=-1, inverse=_INVERSES["div"])
    text = text.replace("two = Constant<value = float {2.0}>()", "two = Constant<value = float[1] {2.0}>()")
    model = parse_model(text)
    after = RmsNormFusion()(model.clone()).model
    assert computed_op_types(after) == ["SimplifiedLayerNormalization"]
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    assert_same_outputs(model, after, {"x": x}, rtol=1e-4, atol=1e-5)


def test_tf_s_inverse_root_fuses():
    # Pow(mean + eps, -0.5), unfused before a review.
    text = _PREAMBLE.format(axis=-1, inverse="half = Constant<value = float {-0.5}>()\n      i = Pow(v, half)")
    text = text.replace("r = Sqrt(v)\n", "").replace("y = Mul(gamma, n)", "n = Mul(i, x)\n      y = Mul(gamma, n)")
    model = parse_model(text)
    after = RmsNormFusion()(model.clone()).model
    assert computed_op_types(after) == ["SimplifiedLayerNormalization"]
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    assert_same_outputs(model, after, {"x": x}, rtol=1e-4, atol=1e-5)

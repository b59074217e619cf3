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


@pytest.mark.parametrize(("power", "fused"), [("0.5", True), ("-0.5", False), ("0.25", False)])
def test_a_division_by_the_root_written_as_a_power_fuses_at_one_half_only(power, fused):
    # x / Pow(v, 0.5) (model code written `x / v ** 0.5`): unfused before a review. x / Pow(v, -0.5) is x * sqrt(v).
    text = _PREAMBLE.format(axis=-1, inverse=f"p = Constant<value = float {{{power}}}>()\n      r2 = Pow(v, p)")
    text = text.replace("r = Sqrt(v)\n", "").replace("y = Mul(gamma, n)", "n = Div(x, r2)\n      y = Mul(gamma, n)")
    model = parse_model(text)
    after = RmsNormFusion()(model.clone()).model
    assert ("SimplifiedLayerNormalization" in computed_op_types(after)) == fused
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    assert_same_outputs(model, after, {"x": x}, rtol=1e-4, atol=1e-5)


def _x():
    return {"x": np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)}


def _without_scale(text: str) -> str:
    return text.replace("      y = Mul(gamma, n)\n", "").replace("n = Div(x, r)", "y = Div(x, r)")


@pytest.mark.parametrize("opset", [13, 18])
def test_rms_norm_without_a_scale_fuses_with_a_scale_of_ones(opset):
    # OLMo-style norms (elementwise_affine=False) end at the division: unfused before a review.
    text = _without_scale(_PREAMBLE.format(axis=-1, inverse=_INVERSES["div"]))
    if opset == 13:  # the axes as an attribute, as ReduceMean had them before opset 18
        text = text.replace('"" : 18', '"" : 13').replace(
            "ReduceMean<keepdims = 1>(sq, axes)", "ReduceMean<keepdims = 1, axes = [-1]>(sq)"
        )
    model = parse_model(text)
    after = RmsNormFusion()(model.clone()).model
    assert computed_op_types(after) == ["SimplifiedLayerNormalization"]
    (norm,) = [n for n in after.graph if n.op_type == "SimplifiedLayerNormalization"]
    np.testing.assert_array_equal(norm.inputs[1].const_value.numpy(), np.ones(8, np.float32))
    assert_same_outputs(model, after, _x(), rtol=1e-4, atol=1e-5)


def test_rms_norm_without_a_scale_needs_a_static_last_dim():
    text = _without_scale(_PREAMBLE.format(axis=-1, inverse=_INVERSES["div"])).replace("5, 8]", "5, D]")
    result = RmsNormFusion()(parse_model(text))
    assert not result.modified
    assert result.refusals == [
        "1 near match at Div left unfused: no scale, and the last dim has no static size to build a scale of ones for"
    ]


def test_rms_norm_without_a_scale_over_another_axis_is_left_alone():
    result = RmsNormFusion()(parse_model(_without_scale(_PREAMBLE.format(axis=1, inverse=_INVERSES["div"]))))
    assert not result.modified
    assert result.refusals == ["1 near match at Div left unfused: the mean is not over the last axis alone"]


def test_a_scale_that_is_not_a_constant_stays_a_mul_after_the_fused_norm():
    text = _PREAMBLE.format(axis=-1, inverse=_INVERSES["div"])
    text = text.replace("(float[N, 5, 8] x)", "(float[N, 5, 8] x, float[8] gamma)")
    text = text.replace("gamma = Constant<value = float[8] {1.0, 0.5, 2.0, 1.5, 0.8, 1.2, 0.9, 1.1}>()", "")
    model = parse_model(text)
    after = RmsNormFusion()(model.clone()).model
    assert computed_op_types(after) == ["SimplifiedLayerNormalization", "Mul"]
    inputs = {**_x(), "gamma": np.linspace(0.5, 2.0, 8, dtype=np.float32)}
    assert_same_outputs(model, after, inputs, rtol=1e-4, atol=1e-5)


def test_a_decomposed_layer_norm_is_left_to_fuse_layer_norm():
    # RMS(x - mean(x)) is a LayerNorm. It was fused into Sub + SimplifiedLayerNormalization + Add (fuse-rms-norm is
    # in the default pipeline, fuse-layer-norm is not), which ONNX Runtime's own LayerNorm fusion no longer sees.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 5, 8] x) => (float[N, 5, 8] y) {
          axes = Constant<value = int64[1] {-1}>()
          eps = Constant<value = float {1e-5}>()
          two = Constant<value = float {2.0}>()
          gamma = Constant<value = float[8] {1.0, 0.5, 2.0, 1.5, 0.8, 1.2, 0.9, 1.1}>()
          mean = ReduceMean<keepdims = 1>(x, axes)
          d = Sub(x, mean)
          sq = Pow(d, two)
          var = ReduceMean<keepdims = 1>(sq, axes)
          v = Add(var, eps)
          std = Sqrt(v)
          n = Div(d, std)
          y = Mul(n, gamma)
        }""")
    result = RmsNormFusion()(model)
    assert not result.modified
    assert result.refusals == [
        "1 near match at Mul left unfused: the input is centered by its own mean: a LayerNorm, left to fuse-layer-norm"
    ]


def test_gemma_s_one_plus_weight_fuses_after_constant_folding():
    # Gemma scales by (1 + w); fold-constants, ahead of fuse-rms-norm in the default pipeline, makes it one vector.
    from passes.constant_folding import FoldConstantsPass

    text = _PREAMBLE.format(axis=-1, inverse=_INVERSES["div"]).replace(
        "y = Mul(gamma, n)", "g1 = Add(one, gamma)\n      y = Mul(n, g1)"
    )
    model = parse_model(text)
    after = RmsNormFusion()(FoldConstantsPass()(model.clone()).model).model
    assert computed_op_types(after) == ["SimplifiedLayerNormalization"]
    assert_same_outputs(model, after, _x(), rtol=1e-4, atol=1e-5)


def _of_an_unrecorded_value(text: str) -> str:
    """The norm's input is ``3 * z``, a value whose shape the graph does not record (no value_info)."""
    text = text.replace("g (float[N, 5, 8] x)", "g (float[N, 5, 8] z)")
    return text.replace("{\n", "{\n      three = Constant<value = float {3.0}>()\n      x = Mul(z, three)\n", 1)


def test_rms_norm_without_a_scale_of_an_unrecorded_shape_takes_the_inferred_last_dim():
    # Refused before ("no static size"): the legacy exporter records no intermediate shape. Shape inference
    # gives the last dim, 8, for the scale of ones; the inferred shapes are taken back afterwards.
    model = parse_model(_of_an_unrecorded_value(_without_scale(_PREAMBLE.format(axis=-1, inverse=_INVERSES["div"]))))
    assert next(n for n in model.graph if n.op_type == "Mul").outputs[0].shape is None
    result = RmsNormFusion()(model.clone())
    assert computed_op_types(result.model) == ["Mul", "SimplifiedLayerNormalization"]
    assert result.refusals == []
    (norm,) = [n for n in result.model.graph if n.op_type == "SimplifiedLayerNormalization"]
    np.testing.assert_array_equal(norm.inputs[1].const_value.numpy(), np.ones(8, np.float32))
    assert norm.inputs[0].shape is None
    assert_same_outputs(model, result.model, {"z": _x()["x"]}, rtol=1e-4, atol=1e-5)


def test_rms_norm_without_a_scale_of_an_unrecorded_symbolic_last_dim_is_refused():
    text = _of_an_unrecorded_value(_without_scale(_PREAMBLE.format(axis=-1, inverse=_INVERSES["div"])))
    result = RmsNormFusion()(parse_model(text.replace("5, 8]", "5, D]")))
    assert not result.modified
    assert result.refusals == [
        "1 near match at Div left unfused: no scale, and the last dim has no static size to build a scale of ones for"
    ]


def test_rms_norm_without_a_scale_does_not_infer_its_width_from_an_overridable_default():
    # A review: the norm's input is Reshape(x, s) with s an initializer that is also a graph input; shape
    # inference read its default [2, 3, -1], a scale of 4 ones was fused, and a caller passing s = [2, 2, -1]
    # got ONNX Runtime's error where the original ran.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 12] x, int64[3] s) => (float y) <int64[3] s = {2, 3, -1}, float eps = {1e-5}> {
          axes = Constant<value = int64[1] {-1}>()
          h = Reshape(x, s)
          x2 = Mul(h, h)
          ms = ReduceMean<keepdims = 1>(x2, axes)
          e = Add(ms, eps)
          r = Sqrt(e)
          y = Div(h, r)
        }""")
    result = RmsNormFusion()(model.clone())
    assert not result.modified
    assert any("no static size" in refusal for refusal in result.refusals), result.refusals

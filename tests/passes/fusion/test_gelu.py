"""fuse-gelu: erf, tanh and sigmoid GELU formulas into Gelu / FastGelu / QuickGelu."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.domains import MS_DOMAIN
from passes.fusion import _targets
from passes.fusion.gelu import GeluFusion
from tests.helpers import assert_same_outputs, computed_op_types, parse_model

_HEADER = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[N, 16] x) => (float[N, 16] y) {{
{body}
    }}"""
_ERF = """
      sqrt2 = Constant<value = float {{1.4142135}}>()
      one = Constant<value = float {{1.0}}>()
      half = Constant<value = float {{{half}}}>()
      a = Div(x, sqrt2)
      e = Erf(a)
      b = Add(e, one)
      c = Mul(x, b)
      y = Mul(c, half)"""
# GPT-2's NewGELU as the legacy exporter writes it: 0.5 * x first, cube by Pow.
_TANH = """
      half = Constant<value = float {0.5}>()
      three = Constant<value = float {3.0}>()
      k = Constant<value = float {0.044715}>()
      s = Constant<value = float {0.7978846}>()
      one = Constant<value = float {1.0}>()
      h = Mul(x, half)
      p = Pow(x, three)
      q = Mul(p, k)
      r = Add(x, q)
      t = Mul(r, s)
      u = Tanh(t)
      v = Add(u, one)
      y = Mul(h, v)"""
_QUICK = """
      k = Constant<value = float {1.702}>()
      a = Mul(x, k)
      s = Sigmoid(a)
      y = Mul(x, s)"""

# Spellings left unfused before a review; each computes GELU exactly as its fused op does.
_SPELLINGS = {
    # HF FastGELUActivation: tanh(x * 0.7978845608 * (1 + 0.044715 * x * x)).
    "tanh-fast-gelu-activation": (
        """
      s = Constant<value = float {0.7978845608}>()
      k = Constant<value = float {0.044715}>()
      one = Constant<value = float {1.0}>()
      half = Constant<value = float {0.5}>()
      xs = Mul(x, s)
      xx = Mul(x, x)
      kxx = Mul(xx, k)
      p = Add(kxx, one)
      t = Mul(xs, p)
      u = Tanh(t)
      v = Add(u, one)
      h = Mul(x, half)
      y = Mul(h, v)""",
        "FastGelu",
    ),
    # The argument distributed: s*x + s*0.044715*x^3.
    "tanh-distributed": (
        """
      s = Constant<value = float {0.7978846}>()
      sk = Constant<value = float {0.035677407}>()
      three = Constant<value = float {3.0}>()
      one = Constant<value = float {1.0}>()
      half = Constant<value = float {0.5}>()
      p = Pow(x, three)
      q = Mul(p, sk)
      sx = Mul(x, s)
      t = Add(sx, q)
      u = Tanh(t)
      v = Add(u, one)
      h = Mul(x, half)
      y = Mul(h, v)""",
        "FastGelu",
    ),
    # x*0.5 + x*0.5*erf(x/sqrt(2)).
    "erf-distributed": (
        """
      sqrt2 = Constant<value = float {1.4142135}>()
      half = Constant<value = float {0.5}>()
      a = Div(x, sqrt2)
      e = Erf(a)
      h = Mul(x, half)
      he = Mul(h, e)
      y = Add(h, he)""",
        "Gelu",
    ),
    # x * (0.5 + 0.5*erf(x/sqrt(2))).
    "erf-one-half-added": (
        """
      sqrt2 = Constant<value = float {1.4142135}>()
      half = Constant<value = float {0.5}>()
      a = Div(x, sqrt2)
      e = Erf(a)
      he = Mul(e, half)
      f = Add(he, half)
      y = Mul(x, f)""",
        "Gelu",
    ),
    # Constants stored as [1] tensors (Paddle, some TF converters), the division as a product.
    "erf-one-element-constants": (
        """
      rsqrt2 = Constant<value = float[1] {0.70710678}>()
      one = Constant<value = float[1] {1.0}>()
      half = Constant<value = float[1] {0.5}>()
      a = Mul(x, rsqrt2)
      e = Erf(a)
      b = Add(one, e)
      c = Mul(half, x)
      y = Mul(c, b)""",
        "Gelu",
    ),
}


def _x():
    return {"x": np.linspace(-6, 6, 64, dtype=np.float32).reshape(4, 16)}


def _fused(text: str, **kwargs) -> tuple:
    model = parse_model(text)
    result = GeluFusion(**kwargs)(model.clone())
    return model, result


@pytest.mark.parametrize(("body", "fused"), [(_ERF.format(half=0.5), "Gelu"), (_TANH, "FastGelu")])
def test_gelu_formulas_are_fused(body, fused):
    model, result = _fused(_HEADER.format(body=body))
    assert computed_op_types(result.model) == [fused]
    assert [n.domain for n in result.model.graph] == ["com.microsoft"]
    assert_same_outputs(model, result.model, _x(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spelling", list(_SPELLINGS))
def test_other_spellings_of_gelu_are_fused(spelling):
    body, fused = _SPELLINGS[spelling]
    model, result = _fused(_HEADER.format(body=body))
    assert computed_op_types(result.model) == [fused]
    assert result.refusals == []
    assert_same_outputs(model, result.model, _x(), rtol=1e-4, atol=1e-5)


def test_gelu_of_a_biased_and_scaled_input_takes_that_input():
    # The fused op's input is the value GELU is of (here twice a Linear's output), not what it is computed from.
    body = """
      bias = Constant<value = float[16] {0.1, -0.2, 0.3, 0.0, 0.5, -0.5, 0.2, 0.1, 0, 0, 0, 0, 1, 1, 1, 1}>()
      two = Constant<value = float {2.0}>()
      sqrt2 = Constant<value = float {1.4142135}>()
      one = Constant<value = float {1.0}>()
      half = Constant<value = float {0.5}>()
      xa = Add(x, bias)
      xb = Mul(xa, two)
      a = Div(xb, sqrt2)
      e = Erf(a)
      b = Add(e, one)
      c = Mul(xb, b)
      y = Mul(c, half)"""
    model, result = _fused(_HEADER.format(body=body))
    assert computed_op_types(result.model) == ["Add", "Mul", "Gelu"]
    assert_same_outputs(model, result.model, _x(), rtol=1e-4, atol=1e-5)


def test_onnx_gelu_becomes_the_contrib_op():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 20]>
        g (float[N, 16] x) => (float[N, 16] y) { y = Gelu(x) }""")
    after = GeluFusion()(model.clone()).model
    assert [(n.domain, n.op_type) for n in after.graph] == [("com.microsoft", "Gelu")]
    assert_same_outputs(model, after, _x(), rtol=1e-5, atol=1e-6)


def test_quick_gelu_is_fused_where_the_target_has_its_kernel(monkeypatch):
    # ONNX Runtime implements com.microsoft.QuickGelu on CPU and CUDA; the kernel table is patched here so the
    # test holds with or without its QuickGelu line.
    monkeypatch.setitem(_targets._KERNELS, (MS_DOMAIN, "QuickGelu"), frozenset({"cpu", "cuda"}))
    model, result = _fused(_HEADER.format(body=_QUICK))
    (node,) = [n for n in result.model.graph if n.op_type != "Constant"]
    assert (node.domain, node.op_type) == ("com.microsoft", "QuickGelu")
    assert node.attributes["alpha"].as_float() == pytest.approx(1.702)
    assert_same_outputs(model, result.model, _x(), rtol=1e-5, atol=1e-6)


def test_quick_gelu_is_refused_where_the_target_lacks_its_kernel(monkeypatch):
    monkeypatch.delitem(_targets._KERNELS, (MS_DOMAIN, "QuickGelu"), raising=False)
    _, result = _fused(_HEADER.format(body=_QUICK))
    assert not result.modified
    assert result.refusals == ["1 of 1 QuickGELU left unfused: target cpu has no kernel for com.microsoft::QuickGelu"]


def test_silu_is_no_gelu_and_is_left_alone_without_a_word():
    _, result = _fused(_HEADER.format(body="      s = Sigmoid(x)\n      y = Mul(x, s)"))
    assert not result.modified and result.refusals == []


_OFF_CONSTANT = _TANH.replace("{0.044715}", "{0.0447}")
_SHARED_CUBE = _TANH.replace("y = Mul(h, v)", "w = Mul(h, v)\n      y = Add(w, p)")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_ERF.format(half=0.6), "erf GELU left unfused: the output is 0.6*x + 0.6*x*erf(..), GELU's is 0.5*x"),
        (_OFF_CONSTANT, "tanh GELU left unfused: the argument is 0.797885*x + 0.0356654*x^3, GELU's is"),
        (_SHARED_CUBE, "tanh GELU left unfused: an intermediate value has other users"),
    ],
    ids=["wrong-outer-constant", "wrong-cubic-constant", "intermediate-used-elsewhere"],
)
def test_near_misses_are_left_alone_with_a_reason(body, reason):
    _, result = _fused(_HEADER.format(body=body))
    assert not result.modified
    assert len(result.refusals) == 1 and reason in result.refusals[0], result.refusals


def test_a_constant_that_would_broadcast_the_output_is_refused():
    # A [1, 1, 1] constant on a rank-2 input makes the output rank 3: a Gelu of x would drop that dim.
    body = _ERF.format(half=0.5).replace(
        "half = Constant<value = float {0.5}>()", "half = Constant<value = float[1, 1, 1] {0.5}>()"
    )
    text = _HEADER.format(body=body).replace("=> (float[N, 16] y)", "=> (float[1, N, 16] y)")
    _, result = _fused(text)
    assert not result.modified
    assert "more dims than the input" in result.refusals[0]

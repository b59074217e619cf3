"""fuse-gelu: erf and tanh GELU formulas into Gelu / FastGelu."""

from __future__ import annotations

import numpy as np
import pytest

from passes.fusion.gelu import GeluFusion
from tests.helpers import assert_same_outputs, computed_op_types, parse_model

_ERF = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[N, 16] x) => (float[N, 16] y) {{
      sqrt2 = Constant<value = float {{1.4142135}}>()
      one = Constant<value = float {{1.0}}>()
      half = Constant<value = float {{{half}}}>()
      a = Div(x, sqrt2)
      e = Erf(a)
      b = Add(e, one)
      c = Mul(x, b)
      y = Mul(c, half)
    }}"""
# GPT-2's NewGELU as the legacy exporter writes it: 0.5 * x first, cube by Pow.
_TANH = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[N, 16] x) => (float[N, 16] y) {
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
      y = Mul(h, v)
    }"""
_SIGMOID = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[N, 16] x) => (float[N, 16] y) {
      k = Constant<value = float {1.702}>()
      a = Mul(x, k)
      s = Sigmoid(a)
      y = Mul(x, s)
    }"""


def _x():
    return {"x": np.linspace(-4, 4, 64, dtype=np.float32).reshape(4, 16)}


@pytest.mark.parametrize(("text", "fused"), [(_ERF.format(half=0.5), "Gelu"), (_TANH, "FastGelu")])
def test_gelu_formulas_are_fused(text, fused):
    model = parse_model(text)
    after = GeluFusion()(model.clone()).model
    assert computed_op_types(after) == [fused]
    assert [n.domain for n in after.graph] == ["com.microsoft"]
    assert_same_outputs(model, after, _x(), rtol=1e-4, atol=1e-5)


def test_onnx_gelu_becomes_the_contrib_op():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 20]>
        g (float[N, 16] x) => (float[N, 16] y) { y = Gelu(x) }""")
    after = GeluFusion()(model.clone()).model
    assert [(n.domain, n.op_type) for n in after.graph] == [("com.microsoft", "Gelu")]
    assert_same_outputs(model, after, _x(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text", [_ERF.format(half=0.6), _SIGMOID], ids=["wrong-constant", "sigmoid-approximation"])
def test_near_misses_are_left_alone(text):
    assert not GeluFusion()(parse_model(text)).modified

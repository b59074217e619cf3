"""simplify-ops' canonical forms (passes._canonical_forms): a computation exporters spell otherwise, written as the
fusions match it; each refused where it would change a shape or where it cannot read what it needs."""

from __future__ import annotations

import numpy as np
import pytest

from passes.op_simplification import SimplifyOpsPass
from tests.helpers import assert_same_outputs, op_types, parse_model

X = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 4)


def _simplified(text: str) -> list[str]:
    model = parse_model(text)
    after = SimplifyOpsPass()(model.clone()).model
    assert_same_outputs(model, after, {"x": X}, rtol=1e-6, atol=1e-7)
    return [op for op in op_types(after) if op != "Constant"]


@pytest.mark.parametrize("order", ["Mul(x, m)", "Mul(m, x)"])
@pytest.mark.parametrize("minus_one", ["float {-1.0}", "float[1] {-1.0}", "float[1, 1, 1] {-1.0}"])
def test_a_product_by_minus_one_is_a_negation(order, minus_one):
    ops = _simplified(f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[2, 3, 4] y) {{
          m = Constant<value = {minus_one}>()
          y = {order}
        }}""")
    assert ops == ["Neg"]


def test_paddles_negation_with_a_bias_of_zero_is_one_negation():
    ops = _simplified("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[2, 3, 4] y) {
          m = Constant<value = float[1] {-1.0}>()
          z = Constant<value = float[1] {0.0}>()
          s = Mul(x, m)
          y = Add(s, z)
        }""")
    assert ops == ["Neg"]


@pytest.mark.parametrize(
    ("constant", "reason"),
    [
        ("float[1, 1, 1, 1] {-1.0}", "a rank-4 -1 makes the product rank 4"),
        ("float[2] {-1.0, -1.0}", "two elements"),
        ("float {-1.0000001}", "not exactly -1"),
    ],
)
def test_a_product_that_is_no_plain_negation_stays(constant, reason):
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[?] y) {{
          m = Constant<value = {constant}>()
          y = Mul(x, m)
        }}""")
    assert "Neg" not in op_types(SimplifyOpsPass()(model.clone()).model), reason


def test_a_one_element_bias_of_zero_that_would_raise_the_rank_stays():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[?] y) {
          z = Constant<value = float[1, 1, 1, 1] {0.0}>()
          y = Add(x, z)
        }""")
    assert "Add" in op_types(SimplifyOpsPass()(model.clone()).model)


@pytest.mark.parametrize(("opset", "axes"), [(17, "axes = Constant<value = int64[1] {-1}>()"), (18, "")])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_a_sum_divided_by_its_count_is_a_mean(opset, axes, keepdims):
    axes_line = axes or "axes = Constant<value = int64[1] {2}>()"
    ops = _simplified(f"""
        <ir_version: 9, opset_import: ["" : {opset}]>
        g (float[2, 3, 4] x) => (float[?] y) {{
          {axes_line}
          n = Constant<value = float {{4.0}}>()
          s = ReduceSum<keepdims = {keepdims}>(x, axes)
          y = Div(s, n)
        }}""")
    assert ops == ["ReduceMean"]


def test_a_sum_over_two_axes_at_opset_13_is_a_mean_with_axes_as_an_attribute():
    model = parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2, 3, 4] x) => (float[?] y) {
          axes = Constant<value = int64[2] {1, 2}>()
          n = Constant<value = float {12.0}>()
          s = ReduceSum(x, axes)
          y = Div(s, n)
        }""")
    after = SimplifyOpsPass()(model.clone()).model
    (mean,) = [node for node in after.graph if node.op_type == "ReduceMean"]
    assert list(mean.attributes.get_ints("axes")) == [1, 2] and len(mean.inputs) == 1
    assert_same_outputs(model, after, {"x": X}, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("shape", "divisor", "reason"),
    [
        ("float[2, 3, N] x", "4.0", "the summed dim has no static size"),
        ("float[2, 3, 4] x", "3.0", "not the count"),
        ("float[2, 3, 4] x", "float[1, 1, 1, 1] {4.0}", "the divisor would raise the rank"),
    ],
)
def test_a_sum_divided_by_something_else_stays(shape, divisor, reason):
    constant = divisor if "{" in divisor else f"float {{{divisor}}}"
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 18]>
        g ({shape}) => (float[?] y) {{
          axes = Constant<value = int64[1] {{2}}>()
          n = Constant<value = {constant}>()
          s = ReduceSum(x, axes)
          y = Div(s, n)
        }}""")
    assert "ReduceMean" not in op_types(SimplifyOpsPass()(model.clone()).model), reason


def test_a_sum_of_nothing_with_noop_with_empty_axes_stays():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x) => (float[?] y) {
          n = Constant<value = float {24.0}>()
          s = ReduceSum<noop_with_empty_axes = 1>(x)
          y = Div(s, n)
        }""")
    assert "ReduceMean" not in op_types(SimplifyOpsPass()(model.clone()).model)


def _einsum(equation: str, a: str, b: str) -> tuple:
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g ({a} a, {b} b) => (float[?] y) {{
          y = Einsum<equation = "{equation}">(a, b)
        }}""")
    return model, SimplifyOpsPass()(model.clone()).model


@pytest.mark.parametrize(
    ("equation", "a", "b", "ops"),
    [
        ("bhqd,bhkd->bhqk", "float[2, 3, 4, 5]", "float[2, 3, 6, 5]", ["Transpose", "MatMul"]),
        ("bhqk,bhkd->bhqd", "float[2, 3, 4, 6]", "float[2, 3, 6, 5]", ["MatMul"]),
        ("b i k , b k j -> b i j", "float[2, 4, 6]", "float[2, 6, 5]", ["MatMul"]),
        ("ik,jk->ij", "float[4, 6]", "float[5, 6]", ["Transpose", "MatMul"]),
    ],
)
def test_a_batched_matrix_product_einsum_is_a_matmul(equation, a, b, ops):
    model, after = _einsum(equation, a, b)
    assert op_types(after) == ops
    rng = np.random.default_rng(0)
    feeds = {
        name: rng.standard_normal([d.value if hasattr(d, "value") else d for d in value.shape]).astype(np.float32)
        for name, value in ((v.name, v) for v in model.graph.inputs)
    }
    assert_same_outputs(model, after, feeds, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("equation", "a", "b"),
    [
        ("...qd,...kd->...qk", "float[2, 4, 5]", "float[2, 6, 5]"),  # an ellipsis
        ("bqd,bkd->bkq", "float[2, 4, 5]", "float[2, 6, 5]"),  # the product's rows and columns swapped
        ("bqd,bkd->qbk", "float[2, 4, 5]", "float[2, 6, 5]"),  # the batch moved
        ("bqd,cdk->bqk", "float[2, 4, 5]", "float[2, 5, 6]"),  # batch letters that differ
        ("bqd,bdq->bqq", "float[2, 4, 4]", "float[2, 4, 4]"),  # a repeated letter (a diagonal)
        ("bqd,bkd->bq", "float[2, 4, 5]", "float[2, 6, 5]"),  # a sum over k as well
    ],
)
def test_an_einsum_that_is_no_plain_matrix_product_stays(equation, a, b):
    _, after = _einsum(equation, a, b)
    assert op_types(after) == ["Einsum"], equation

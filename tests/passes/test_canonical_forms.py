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
        # The product's rows and columns swapped (the operands swapped), the batch moved (the product transposed).
        ("bqd,bkd->bkq", "float[2, 4, 5]", "float[2, 6, 5]", ["Transpose", "MatMul"]),
        ("bqd,bkd->qbk", "float[2, 4, 5]", "float[2, 6, 5]", ["Transpose", "MatMul", "Transpose"]),
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
        ("bqd,cdk->bqk", "float[2, 4, 5]", "float[2, 5, 6]"),  # batch letters that differ
        ("bqd,bdq->bqq", "float[2, 4, 4]", "float[2, 4, 4]"),  # a repeated letter (a diagonal)
        ("bqd,bkd->bq", "float[2, 4, 5]", "float[2, 6, 5]"),  # a sum over k as well
    ],
)
def test_an_einsum_that_is_no_plain_matrix_product_stays(equation, a, b):
    _, after = _einsum(equation, a, b)
    assert op_types(after) == ["Einsum"], equation


# -- A reduction whose dropped axes are restored keeps them --------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "reduced", "restored"),
    [
        ("float[2, 3, 4]", "-1", "-1"),
        ("float[2, 3, 4]", "2", "-1"),
        ("float[2, 3, 4]", "1, 2", "-2, -1"),
        ("float[A, B, C]", "2", "-1"),
        (None, "-1", "-1"),
        (None, "0, 1", "1, 0"),
    ],
)
@pytest.mark.parametrize("reduce_op", ["ReduceSum", "ReduceMax"])
def test_a_reduction_whose_dropped_axes_are_restored_keeps_them(shape, reduced, restored, reduce_op):
    count = reduced.count(",") + 1
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 18]>
        g ({shape or "float[2, 3, 4]"} x) => (float[?] y) {{
          axes = Constant<value = int64[{count}] {{{reduced}}}>()
          back = Constant<value = int64[{count}] {{{restored}}}>()
          s = {reduce_op}<keepdims = 0>(x, axes)
          y = Unsqueeze(s, back)
        }}""")
    if shape is None:  # the rank unknown
        model.graph.inputs[0].shape = None
    after = SimplifyOpsPass()(model.clone()).model
    (node,) = [node for node in after.graph if node.op_type != "Constant"]
    assert node.op_type == reduce_op and node.attributes.get_int("keepdims") == 1
    assert_same_outputs(model, after, {"x": X}, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("shape", "reduced", "restored", "reason"),
    [
        ("float[2, 3, 4]", "2", "1", "restored elsewhere"),
        ("float[2, 3, 4]", "1, 2", "2", "one axis of two restored"),
        (None, "2", "-1", "the same axis only if the rank is 3: unknown here"),
    ],
)
def test_a_reduction_restored_at_other_axes_stays(shape, reduced, restored, reason):
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 18]>
        g ({shape or "float[2, 3, 4]"} x) => (float[?] y) {{
          axes = Constant<value = int64[{reduced.count(",") + 1}] {{{reduced}}}>()
          back = Constant<value = int64[{restored.count(",") + 1}] {{{restored}}}>()
          s = ReduceSum<keepdims = 0>(x, axes)
          y = Unsqueeze(s, back)
        }}""")
    if shape is None:  # the rank unknown
        model.graph.inputs[0].shape = None
    assert "Unsqueeze" in op_types(SimplifyOpsPass()(model.clone()).model), reason


def test_a_reduction_whose_dropped_axes_are_read_elsewhere_too_stays():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x) => (float[?] y, float[?] s) {
          axes = Constant<value = int64[1] {-1}>()
          s = ReduceSum<keepdims = 0>(x, axes)
          y = Unsqueeze(s, axes)
        }""")
    after = SimplifyOpsPass()(model.clone()).model
    assert "Unsqueeze" in op_types(after)
    assert_same_outputs(model, after, {"x": X}, rtol=0, atol=0)


def test_jax_mean_with_keepdims_is_a_mean():
    # jnp.mean(x, -1, keepdims=True): reduce_sum drops the axis, expand_dims restores it, then the division.
    ops = _simplified("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2, 3, 4] x) => (float[?] y) {
          axes = Constant<value = int64[1] {-1}>()
          n = Constant<value = float {4.0}>()
          s = ReduceSum<keepdims = 0>(x, axes)
          k = Unsqueeze(s, axes)
          y = Div(k, n)
        }""")
    assert ops == ["ReduceMean"]


# -- A constant [1, ..., 1, D] is the vector [D] -------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("constant_first", [False, True])
@pytest.mark.parametrize("constant", ["float[1, 1, 4]", "float[1, 4]"])
def test_a_constant_with_leading_ones_is_a_vector(op, constant_first, constant):
    operands = "c, x" if constant_first else "x, c"
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x) => (float[2, 3, 4] y) {{
          c = Constant<value = {constant} {{0.5, 2.0, -3.0, 4.0}}>()
          y = {op}({operands})
        }}""")
    after = SimplifyOpsPass()(model.clone()).model
    (node,) = [node for node in after.graph if node.op_type == op]
    vector = node.inputs[0 if constant_first else 1].const_value
    assert vector is not None and vector.shape.dims == (4,)
    assert_same_outputs(model, after, {"x": X}, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("x", "constant", "reason"),
    [
        ("float[3, 4]", "float[1, 1, 4] {1.0, 2.0, 3.0, 4.0}", "the constant raises the rank"),
        ("float[A, 4]", "float[1, 1, 4] {1.0, 2.0, 3.0, 4.0}", "the constant raises the rank"),
        ("float[2, 3, 4]", "float[1, 3, 1] {1.0, 2.0, 3.0}", "not over the last axis"),
        ("float[2, 3, 4]", "float[3, 4] {1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0}", "a matrix"),
        ("float[2, 3, 4]", "int64[1, 4] {1, 2, 3, 4}", "not float"),
    ],
)
def test_a_constant_that_is_no_vector_over_the_last_axis_stays(x, constant, reason):
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 18]>
        g ({x} x) => (float[?] y) {{
          c = Constant<value = {constant}>()
          y = Mul(x, c)
        }}""")
    after = SimplifyOpsPass()(model.clone()).model
    (node,) = [node for node in after.graph if node.op_type == "Mul"]
    assert node.inputs[1].const_value.shape.rank() > 1, reason


def test_a_rank_unknown_operand_leaves_the_constant_as_it_is():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float x) => (float[?] y) {
          c = Constant<value = float[1, 4] {1.0, 2.0, 3.0, 4.0}>()
          y = Mul(x, c)
        }""")
    for value in model.graph.inputs:
        value.shape = None
    after = SimplifyOpsPass()(model.clone()).model
    (node,) = [node for node in after.graph if node.op_type == "Mul"]
    assert node.inputs[1].const_value.shape.dims == (1, 4)


# -- A normalization's scale applied last --------------------------------------------------------------------------

_ROOTS = {
    "reciprocal": ("r = Sqrt(v)\n          inv = Reciprocal(r)", "inv"),
    "one_over": ("r = Sqrt(v)\n          one = Constant<value = float {1.0}>()\n          inv = Div(one, r)", "inv"),
    "pow": ("p = Constant<value = float {-0.5}>()\n          inv = Pow(v, p)", "inv"),
}
_PLACEMENTS = {
    "in_inverse": "k = Mul({inv}, g)\n          y = Mul(x, k)",
    "in_inverse_swapped": "k = Mul(g, {inv})\n          y = Mul(k, x)",
    "on_input": "k = Mul(g, x)\n          y = Mul(k, {inv})",
    "on_input_swapped": "k = Mul(x, g)\n          y = Mul({inv}, k)",
}


def _norm(root: str, placement: str) -> str:
    lines, inv = _ROOTS[root]
    return f"""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x) => (float[2, 3, 4] y) {{
          axes = Constant<value = int64[1] {{-1}}>()
          eps = Constant<value = float {{1e-6}}>()
          g = Constant<value = float[4] {{0.5, 2.0, -3.0, 4.0}}>()
          ms = ReduceMean(x, axes)
          v = Add(ms, eps)
          {lines}
          {_PLACEMENTS[placement].format(inv=inv)}
        }}"""


def _scale_last(after) -> bool:
    """Whether the graph's output is a product by the constant scale of a product of two tensors."""
    (last,) = [node for node in after.graph if after.graph.outputs[0] in node.outputs]
    first, second = last.inputs
    return last.op_type == "Mul" and second.const_value is not None and first.producer().op_type in ("Mul", "Div")


@pytest.mark.parametrize("placement", list(_PLACEMENTS))
@pytest.mark.parametrize("root", list(_ROOTS))
def test_a_norms_scale_is_applied_last(root, placement):
    model = parse_model(_norm(root, placement))
    after = SimplifyOpsPass()(model.clone()).model
    assert _scale_last(after)
    assert_same_outputs(model, after, {"x": X}, rtol=1e-6, atol=1e-6)


def test_a_scale_on_the_input_of_a_division_by_the_root_is_applied_last():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x) => (float[2, 3, 4] y) {
          axes = Constant<value = int64[1] {-1}>()
          eps = Constant<value = float {1e-6}>()
          g = Constant<value = float[4] {0.5, 2.0, -3.0, 4.0}>()
          ms = ReduceMean(x, axes)
          v = Add(ms, eps)
          r = Sqrt(v)
          k = Mul(x, g)
          y = Div(k, r)
        }""")
    after = SimplifyOpsPass()(model.clone()).model
    assert _scale_last(after)
    assert_same_outputs(model, after, {"x": X}, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("inv = Sqrt(v)|k = Mul(inv, g)|y = Mul(x, k)", "a root, not its inverse"),
        ("r = Sqrt(x)|inv = Reciprocal(r)|k = Mul(inv, g)|y = Mul(x, k)", "no epsilon"),
        ("inv = Sigmoid(x)|k = Mul(g, x)|y = Mul(k, inv)", "a gate, not a norm"),
        ("r = Sqrt(v)|inv = Reciprocal(r)|k = Mul(inv, x)|y = Mul(x, k)", "no constant"),
    ],
)
def test_a_product_that_is_no_norms_scale_keeps_its_order(body, reason):
    text = f"""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x) => (float[2, 3, 4] y) {{
          axes = Constant<value = int64[1] {{-1}}>()
          eps = Constant<value = float {{1e-6}}>()
          g = Constant<value = float[4] {{0.5, 2.0, -3.0, 4.0}}>()
          ms = ReduceMean(x, axes)
          v = Add(ms, eps)
          {body.replace("|", chr(10))}
        }}"""
    model = parse_model(text)
    after = SimplifyOpsPass()(model.clone()).model
    assert not _scale_last(after), reason


def test_a_scaled_inverse_root_read_elsewhere_too_keeps_its_order():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x) => (float[2, 3, 4] y, float[?] k) {
          axes = Constant<value = int64[1] {-1}>()
          eps = Constant<value = float {1e-6}>()
          g = Constant<value = float[4] {0.5, 2.0, -3.0, 4.0}>()
          ms = ReduceMean(x, axes)
          v = Add(ms, eps)
          r = Sqrt(v)
          inv = Reciprocal(r)
          k = Mul(inv, g)
          y = Mul(x, k)
        }""")
    after = SimplifyOpsPass()(model.clone()).model
    assert not _scale_last(after)
    assert_same_outputs(model, after, {"x": X}, rtol=0, atol=0)


# -- Tile of axes of size 1 is an Expand ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("producer", "repeats"),
    [
        ("u = Unsqueeze(x, a2)", "int64[4] {1, 1, 2, 1}"),  # repeat_interleave(kv, 2, dim=1) as the legacy export
        ("u = Unsqueeze(x, a2)", "int64[4] {1, 1, 1, 1}"),
        ("u = Reshape(x, s2)", "int64[4] {1, 3, 1, 1}"),  # a static 1 of the recorded shape
    ],
)
def test_a_tile_of_axes_of_size_one_is_an_expand(producer, repeats):
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[?] y) {{
          a2 = Constant<value = int64[1] {{2}}>()
          s2 = Constant<value = int64[4] {{2, 1, 3, 4}}>()
          r = Constant<value = {repeats}>()
          {producer}
          y = Tile(u, r)
        }}""")
    after = SimplifyOpsPass()(model.clone()).model
    assert "Tile" not in op_types(after) and "Expand" in op_types(after)
    assert_same_outputs(model, after, {"x": X}, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("shape", "repeats", "reason"),
    [
        ("float[2, 3, 4]", "int64[3] {1, 2, 1}", "an axis of size 3 repeated: Tile copies it"),
        ("float[2, N, 4]", "int64[3] {1, 2, 1}", "an axis of unknown size repeated"),
    ],
)
def test_a_tile_that_copies_is_no_expand(shape, repeats, reason):
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g ({shape} x) => (float[?] y) {{
          r = Constant<value = {repeats}>()
          y = Tile(x, r)
        }}""")
    assert "Tile" in op_types(SimplifyOpsPass()(model.clone()).model), reason


# -- unbind over a reshaped last axis is Slices of it --------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "axis", "strided"),
    [
        ("int64[4] {0, 0, 2, 2}", -2, False),  # Qwen's rotate_half: [..., 2, D/2], unbind(-2)
        ("int64[4] {0, 0, -1, 2}", -1, True),  # GPT-J's pairs: [..., D/2, 2], unbind(-1)
        ("int64[4] {2, 3, 2, -1}", 2, False),
        ("int64[4] {0, 0, 2, 2}", 3, True),
    ],
)
@pytest.mark.parametrize("opset", [13, 18])
def test_an_unbind_of_the_last_axis_reshaped_is_slices(target, axis, strided, opset):
    split = (
        f"lo5, hi5 = Split<axis = {axis}, num_outputs = 2>(pairs)"
        if opset >= 18
        else f"lo5, hi5 = Split<axis = {axis}>(pairs, ones)"
    )
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : {opset}]>
        g (float[2, 3, 4] x) => (float[2, 3, 2] lo, float[2, 3, 2] hi) {{
          t = Constant<value = {target}>()
          ones = Constant<value = int64[2] {{1, 1}}>()
          squeezed = Constant<value = int64[1] {{{axis}}}>()
          pairs = Reshape(x, t)
          {split}
          lo = Squeeze(lo5, squeezed)
          hi = Squeeze(hi5, squeezed)
        }}""")
    after = SimplifyOpsPass()(model.clone()).model
    assert [op for op in op_types(after) if op != "Constant"] == ["Slice", "Slice"]
    steps = [constant for node in after.graph if node.op_type == "Slice" for constant in node.inputs[4:]]
    assert bool(steps) == strided
    assert_same_outputs(model, after, {"x": X}, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("target", "split", "reason"),
    [
        ("int64[4] {0, 0, 2, 2}", "Split<axis = 0>(pairs, ones)", "not an axis the reshape made"),
        ("int64[4] {0, -1, 2, 2}", "Split<axis = 2>(pairs, ones)", "a leading dim not copied"),
        ("int64[4] {0, 3, 2, 2}", "Split<axis = 2>(pairs, ones)", "a leading static size of x is 3, copied: held"),
    ],
)
def test_an_unbind_that_is_no_slice_of_the_last_axis_stays(target, split, reason):
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[?] lo, float[?] hi) {{
          t = Constant<value = {target}>()
          ones = Constant<value = int64[2] {{1, 1}}>()
          squeezed = Constant<value = int64[1] {{{split.split("axis = ")[1][0]}}}>()
          pairs = Reshape(x, t)
          lo5, hi5 = {split}
          lo = Squeeze(lo5, squeezed)
          hi = Squeeze(hi5, squeezed)
        }}""")
    after = SimplifyOpsPass()(model.clone()).model
    held = "held" in reason
    assert ("Split" not in op_types(after)) == held, reason

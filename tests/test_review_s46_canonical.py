"""Review (s46): hostile tests of simplify-ops' canonical forms (``passes/_canonical_forms.py``): ``x * -1`` into
``Neg``, a one-element ``x + [0]`` (``x - [0]``, ``x * [1]``, ``x / [1]``) into ``x``, ``ReduceSum(x) / n`` into
``ReduceMean(x)``. Each case runs the original and the rewritten model on ONNX Runtime.

Findings, both in ``_MeanBySum.check``, both fixed (a named-twice axis and a sum of nothing are refused):

1. Duplicate axes. ``ReduceSum(x, axes=[2, -1])`` on a rank-3 ``x`` sums axis 2 once (ONNX Runtime and ONNX's shape
   inference read the axes as a set), but the check counts ``x.shape[2]`` twice (``reduced = [x.shape[axis % rank]
   for axis in axes]``): ``Div(ReduceSum(x, [2, -1]), 16)`` (a quarter of the mean) is taken for a mean over 4 and
   written ``ReduceMean(x, [2, -1])``, 4x the original. At opsets 12, 13 and 18 alike. ``--no-verify`` writes it;
   with verification the whole simplify-ops pass is rolled back (its other rewrites lost too).
2. A sum of nothing. With a summed dim of size 0 the count is 0: ``ReduceSum / 0.0`` is ``0 / 0 = NaN``, ONNX
   Runtime's ``ReduceMean`` over no elements is 0. The check compares ``float(divisor) == prod(reduced)`` with no
   guard for a count of 0 (a ``-0.0`` divisor matches too).

What held (passing tests below, beyond tests/passes/test_canonical_forms.py): float16 and double (exact on ONNX
Runtime; bfloat16 and int refused, numpy kind ``V``/``i``); a -1, [0], divisor, axes or ``x`` that is an overridable
graph input (initializer default) is no constant and no known shape, and the model is left byte-for-byte as it was;
a dim declared in ``value_info`` but not inferable from the inputs is not trusted; a Loop-carried state whose size
grows per iteration is not counted from its first size; If branches reading an outer-scope -1 / x are rewritten
exactly; graph output names, dtypes and shapes are kept; a sum with another reader stays; an empty axes input is a
mean over everything; ``[0] - x``, ``[1] / x``, int ``x * -1`` and a divisor that would raise a reduced-to-scalar
mean's rank stay; model-local functions are not touched (no types/shapes there; checked, not kept). Not a
finding: ``x + [0]`` on ``-0.0`` (accepted for the scalar rule, op_simplification's docstring); float16
``ReduceSum / n`` vs ``ReduceMean`` agreed exactly on ONNX Runtime 1.32 CPU up to n = 4096 (checked, not kept).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from passes.op_simplification import SimplifyOpsPass
from tests.helpers import op_types, parse_model, run

X = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 4)


def _same_on_ort(before: ir.Model, after: ir.Model, feeds: dict[str, np.ndarray], tol: float = 1e-6) -> None:
    """Same output names, dtypes, shapes and values (NaN where NaN) on ONNX Runtime."""
    expected, actual = run(before, feeds), run(after, feeds)
    assert list(expected) == list(actual)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert actual[name].shape == expected[name].shape, name
        np.testing.assert_allclose(actual[name], expected[name], rtol=tol, atol=tol, err_msg=name)


def _simplified(model: ir.Model) -> ir.Model:
    return SimplifyOpsPass()(model.clone()).model


def _status(report) -> str:
    return next(record.status for record in report.passes if record.name == "simplify-ops")


# --- Finding 1: duplicate axes ---------------------------------------------------------------------------------------

_DUPLICATE_AXES = {
    12: """<ir_version: 7, opset_import: ["" : 12]>
        g (float[2, 3, 4] x) => (float[2, 3, 1] y) {
          n = Constant<value = float {16.0}>()
          s = ReduceSum<axes = [2, -1]>(x)
          y = Div(s, n)
        }""",
    13: """<ir_version: 8, opset_import: ["" : 13]>
        g (float[2, 3, 4] x) => (float[2, 3, 1] y) {
          axes = Constant<value = int64[2] {2, -1}>()
          n = Constant<value = float {16.0}>()
          s = ReduceSum(x, axes)
          y = Div(s, n)
        }""",
    18: """<ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x) => (float[2, 3, 1] y) {
          axes = Constant<value = int64[2] {2, -1}>()
          n = Constant<value = float {16.0}>()
          s = ReduceSum(x, axes)
          y = Div(s, n)
        }""",
}


@pytest.mark.parametrize("opset", sorted(_DUPLICATE_AXES))
def test_a_sum_over_a_duplicated_axis_divided_by_the_squared_size_is_no_mean(opset):
    model = parse_model(_DUPLICATE_AXES[opset])
    _same_on_ort(model, _simplified(model), {"x": X})


def test_no_verify_writes_no_wrong_mean_for_duplicated_axes():
    model = parse_model(_DUPLICATE_AXES[18])
    optimized, _ = optimize_with_report(model.clone(), verify=False)
    _same_on_ort(model, optimized, {"x": X})


def test_verification_keeps_the_original_for_duplicated_axes():
    model = parse_model(_DUPLICATE_AXES[18])
    optimized, report = optimize_with_report(model.clone(), verify=True)
    _same_on_ort(model, optimized, {"x": X})
    assert _status(report) in ("rolled back", "unchanged")


# --- Finding 2: a sum of nothing -------------------------------------------------------------------------------------


def _empty_sum(opset: int, divisor: str = "0.0") -> ir.Model:
    return parse_model(f"""
        <ir_version: 9, opset_import: ["" : {opset}]>
        g (float[2, 0] x) => (float[2, 1] y) {{
          axes = Constant<value = int64[1] {{1}}>()
          n = Constant<value = float {{{divisor}}}>()
          s = ReduceSum(x, axes)
          y = Div(s, n)
        }}""")


_EMPTY = {"x": np.zeros((2, 0), np.float32)}


@pytest.mark.parametrize(("opset", "divisor"), [(13, "0.0"), (18, "0.0"), (18, "-0.0")])
def test_a_sum_of_nothing_divided_by_zero_is_no_mean(opset, divisor):
    model = _empty_sum(opset, divisor)
    _same_on_ort(model, _simplified(model), _EMPTY)


def test_no_verify_keeps_the_nan_of_a_sum_of_nothing():
    model = _empty_sum(18)
    optimized, _ = optimize_with_report(model.clone(), verify=False)
    _same_on_ort(model, optimized, _EMPTY)


# --- What held ------------------------------------------------------------------------------------------


def _typed_model(nodes, elem_type, inits, opset) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem_type, [2, 3, 4])],
        [helper.make_tensor_value_info("y", elem_type, ["?"])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize(
    ("op", "constant", "expected"),
    [("Mul", -1, "Neg"), ("Add", 0, "Identity"), ("Sub", 0, "Identity"), ("Div", 1, "Identity"), ("Mean", 4, "")],
)
def test_half_and_double_forms_are_exact(dtype, op, constant, expected):
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    if op == "Mean":
        nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["s"]), helper.make_node("Div", ["s", "c"], ["y"])]
        inits = [numpy_helper.from_array(np.array([2], np.int64), "axes")]
        inits.append(numpy_helper.from_array(np.array(constant, dtype), "c"))
        expected = "ReduceMean"
    else:
        nodes = [helper.make_node(op, ["x", "c"], ["y"])]
        inits = [numpy_helper.from_array(np.array([constant], dtype), "c")]
    model = _typed_model(nodes, elem_type, inits, 18)
    after = _simplified(model)
    assert expected in op_types(after)
    _same_on_ort(model, after, {"x": X.astype(dtype)}, tol=0)


@pytest.mark.parametrize(
    ("signature", "default", "body"),
    [
        ("float[1] m", "float[1] m = {-1.0}", "y = Mul(x, m)"),
        ("float[1] m", "float[1] m = {0.0}", "y = Add(m, x)"),
        ("float[1] m", "float[1] m = {1.0}", "y = Div(x, m)"),
        (
            "float m",
            "float m = {4.0}",
            "axes = Constant<value = int64[1] {2}>()\n s = ReduceSum(x, axes)\n y = Div(s, m)",
        ),
        (
            "int64[1] axes",
            "int64[1] axes = {2}",
            "m = Constant<value = float {4.0}>()\n s = ReduceSum(x, axes)\n y = Div(s, m)",
        ),
    ],
)
def test_an_overridable_default_is_no_constant_and_the_model_stays_as_it_was(signature, default, body):
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x, {signature}) => (float[?] y) <{default}> {{
          {body}
        }}""")
    before = ir.to_proto(model).SerializeToString()
    result = SimplifyOpsPass()(model)
    assert not result.modified
    assert ir.to_proto(result.model).SerializeToString() == before


def test_an_overridable_tensor_is_not_counted_from_its_default():
    """``w`` is a graph input with a [2, 3, 4] default and symbolic dims: a caller may feed [2, 3, 5]."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["w", "axes"], ["s"]), helper.make_node("Div", ["s", "n"], ["y"])],
        "g",
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, ["a", "b", "c"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["?"])],
        [
            numpy_helper.from_array(X, "w"),
            numpy_helper.from_array(np.array([2], np.int64), "axes"),
            numpy_helper.from_array(np.array(4.0, np.float32), "n"),
        ],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))
    after = _simplified(model)
    assert "ReduceMean" not in op_types(after)
    _same_on_ort(model, after, {"w": np.ones((2, 3, 5), np.float32)})


def test_a_dim_declared_in_value_info_but_not_inferable_is_not_counted():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x, int64[3] shape) => (float[?] y) <float[2, 3, 4] r> {
          r = Reshape(x, shape)
          axes = Constant<value = int64[1] {2}>()
          n = Constant<value = float {4.0}>()
          s = ReduceSum(r, axes)
          y = Div(s, n)
        }""")
    after = _simplified(model)
    assert "ReduceMean" not in op_types(after)
    _same_on_ort(model, after, {"x": X, "shape": np.array([2, 4, 3], np.int64)})


def test_a_loop_carried_state_that_grows_is_not_counted_from_its_first_size():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2] v0, int64 trips) => (float[?] last, float[?] means) {
          keep = Constant<value = bool {1}>()
          last, means = Loop(trips, keep, v0) <body = b (int64 i, bool cin, float[2] v) => (bool cout, float[?] next,
                                                                                               float[?] mean) {
            cout = Identity(cin)
            axes = Constant<value = int64[1] {0}>()
            n = Constant<value = float {2.0}>()
            zero = Constant<value = float[1] {0.0}>()
            s = ReduceSum<keepdims = 0>(v, axes)
            mean = Div(s, n)
            w = Add(v, zero)
            next = Concat<axis = 0>(w, v)
          }>
        }""")
    after = _simplified(model)
    _same_on_ort(model, after, {"v0": np.array([1.0, 3.0], np.float32), "trips": np.array(3, np.int64)})


def test_if_branches_reading_outer_values_are_rewritten_exactly():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x, bool c) => (float[?] y) {
          m = Constant<value = float[1] {-1.0}>()
          y = If(c) <then_branch = t () => (float[?] a) {
            a = Mul(x, m)
          }, else_branch = e () => (float[?] b) {
            n = Constant<value = float {4.0}>()
            axes = Constant<value = int64[1] {2}>()
            s = ReduceSum(x, axes)
            b = Div(s, n)
          }>
        }""")
    after = _simplified(model)
    (branching,) = [node for node in after.graph if node.op_type == "If"]
    then_ops = [node.op_type for node in branching.attributes["then_branch"].value]
    else_ops = [node.op_type for node in branching.attributes["else_branch"].value]
    assert then_ops == ["Neg"] and "ReduceMean" in else_ops
    for c in (True, False):
        _same_on_ort(model, after, {"x": X, "c": np.array(c)})


def test_graph_outputs_keep_their_names_and_a_sum_with_another_reader_stays():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x) => (float[2, 3, 4] y, float[2, 3, 4] z, float[2, 3, 1] w, float[2, 3, 1] v,
                                 float[2, 3, 1] s) {
          t = Relu(x)
          m = Constant<value = float[1] {-1.0}>()
          y = Mul(m, t)
          zero = Constant<value = float[1] {0.0}>()
          z = Add(zero, t)
          axes = Constant<value = int64[1] {-1}>()
          n = Constant<value = float[1] {4.0}>()
          q = ReduceSum(t, axes)
          w = Div(q, n)
          s = ReduceSum(x, axes)
          v = Div(s, n)
        }""")
    after = _simplified(model)
    assert [value.name for value in after.graph.outputs] == ["y", "z", "w", "v", "s"]
    assert op_types(after).count("ReduceMean") == 1 and "ReduceSum" in op_types(after)
    _same_on_ort(model, after, {"x": X})


def test_an_empty_axes_input_is_a_mean_over_everything():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3, 4] x) => (float y) {
          axes = Constant<value = int64[0] {}>()
          n = Constant<value = float {24.0}>()
          s = ReduceSum<keepdims = 0>(x, axes)
          y = Div(s, n)
        }""")
    after = _simplified(model)
    assert "ReduceMean" in op_types(after)
    _same_on_ort(model, after, {"x": X + 1})


@pytest.mark.parametrize(
    ("signature", "body"),
    [
        ("float[2, 3, 4] x", "c = Constant<value = float[1] {0.0}>()\n y = Sub(c, x)"),
        ("float[2, 3, 4] x", "c = Constant<value = float[1] {1.0}>()\n y = Div(c, x)"),
        ("int32[2, 3, 4] x", "c = Constant<value = int32[1] {-1}>()\n y = Mul(x, c)"),
        ("int32[2, 3, 4] x", "c = Constant<value = int32[1] {1}>()\n y = Mul(x, c)"),
        (
            "float[2, 3, 4] x",
            "axes = Constant<value = int64[0] {}>()\n c = Constant<value = float[1] {24.0}>()\n"
            " s = ReduceSum<keepdims = 0>(x, axes)\n y = Div(s, c)",
        ),
    ],
)
def test_spellings_that_are_no_canonical_form_stay(signature, body):
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 18]>
        g ({signature}) => ({signature.split("[")[0]}[?] y) {{
          {body}
        }}""")
    ops = op_types(model)
    after = _simplified(model)
    assert op_types(after) == ops
    x = X if signature.startswith("float") else np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 12
    _same_on_ort(model, after, {"x": x})

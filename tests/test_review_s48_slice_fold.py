"""Review of simplify-shapes' ``Slice(Shape(x), a, b)`` fold: outputs before and after on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from passes.shape_simplification import ShapeSimplificationPass
from tests.helpers import assert_same_outputs, op_types, parse_model

I64_MAX, I64_MIN = 9223372036854775807, -9223372036854775808


def _legacy(text: str) -> ir.Model:
    """The model of ``text`` with no intermediate shapes recorded (as the legacy exporter writes it)."""
    model = parse_model(text)
    for node in model.graph:
        for output in node.outputs:
            output.shape = None
    return model


def _simplified(model: ir.Model) -> ir.Model:
    return ShapeSimplificationPass()(model.clone()).model


# x's dims 1 and 2 are static, 0 and 3 symbolic; the output also carries the run's whole shape, so it changes
# with the feeds.
BOUNDS = """
    <ir_version: 9, opset_import: ["" : OPSET]>
    g (float[batch, 5, 7, sequence] x) => (float[n] y) {
      shape = Shape SHAPE_ATTRS (x)
      starts = Constant<value = TYPE[1] {START}>()
      ends = Constant<value = TYPE[1] {END}>()
      EXTRA
      d = Slice(shape, starts, ends ARGS)
      df = Cast<to = 1>(d)
      whole = Shape(x)
      wf = Cast<to = 1>(whole)
      y = Concat<axis = 0>(df, wf)
    }"""
_STEPS_ONLY = {"EXTRA": "steps = Constant<value = int64[1] {1}>()", "ARGS": ", , steps"}
_AXES_ONLY = {"EXTRA": "axes = Constant<value = int64[1] {0}>()", "ARGS": ", axes"}
_AXES_STEPS_32 = {
    "EXTRA": "axes = Constant<value = int32[1] {0}>()\n steps = Constant<value = int32[1] {1}>()",
    "ARGS": ", axes, steps",
}


@pytest.mark.parametrize(
    ("start", "end", "options", "folds"),
    [
        (2, 1, {}, True),  # reversed: empty
        (4, 5, {}, True),  # past the end: empty
        (1, I64_MIN, {}, True),  # empty
        (I64_MAX, I64_MAX, {}, True),  # empty
        (-3, -1, {}, True),  # [5, 7]
        (I64_MIN, 3, {}, False),  # reads the batch
        (1, I64_MAX, {}, False),  # reads the sequence
        (-5, -3, {}, False),  # -5 clamps to 0: reads the batch
        (1, 3, {"TYPE": "int32"}, True),
        (-3, 2147483647, {"TYPE": "int32"}, False),
        (1, 3, {"OPSET": "10"}, True),
        (1, 3, {"OPSET": "11"}, True),
        (1, 3, {"OPSET": "13"}, True),
        (0, 1, {"SHAPE_ATTRS": "<start = 1, end = 3>"}, True),
        (-1, I64_MAX, {"SHAPE_ATTRS": "<start = 1, end = 3>"}, True),
        (1, 2, {"SHAPE_ATTRS": "<start = -3>"}, True),
        (0, 2, {"SHAPE_ATTRS": "<start = -3>"}, True),
        (1, I64_MAX, {"SHAPE_ATTRS": "<end = -1>"}, True),
        (1, 3, {"SHAPE_ATTRS": "<start = -100, end = 100>"}, True),
        (0, I64_MAX, {"SHAPE_ATTRS": "<start = 3, end = 1>"}, True),  # Shape reads nothing
        (1, 3, _STEPS_ONLY, True),  # axes omitted (""), steps [1]
        (1, 3, _AXES_ONLY, True),  # steps missing
        (1, 3, {**_AXES_STEPS_32, "TYPE": "int32"}, True),
    ],
)
def test_slice_bounds_fold_as_onnx_runtime_clamps(start, end, options, folds):
    values = {"OPSET": "17", "TYPE": "int64", "SHAPE_ATTRS": "", "EXTRA": "", "ARGS": "", **options}
    text = BOUNDS.replace("START", str(start)).replace("END", str(end))
    for key, value in values.items():
        text = text.replace(key, value)
    model = _legacy(text)
    after = _simplified(model)
    assert ("Slice" not in op_types(after)) == folds, op_types(after)
    for batch, sequence in [(1, 1), (2, 3), (5, 7)]:
        x = np.zeros((batch, 5, 7, sequence), np.float32)
        assert_same_outputs(model, after, {"x": x}, rtol=0, atol=0)


# A mean over the pooled length as sum / count, the count read from the pooled value's shape (a flatten or a
# view's size does the same). The last ceil_mode window would start past the input (6 = 2 * 3 >= 6): ONNX Runtime
# drops it (PyTorch's rule, ONNX's spec since opset 19) and pools 2, ONNX 1.23's shape inference counts 3.
CEIL_POOL = """
    <ir_version: 9, opset_import: ["" : 19]>
    g (float[batch, 1, 6] x) => (float[batch, 1, 1] y) {
      p = POOL<kernel_shape = [2], strides = [3], ceil_mode = 1>(x)
      shape = Shape(p)
      READ
      count = Cast<to = 1>(d)
      axes = Constant<value = int64[1] {-1}>()
      total = ReduceSum<keepdims = 1>(p, axes)
      y = Div(total, count)
    }"""
_SLICE_READ = (
    "starts = Constant<value = int64[1] {2}>()\n"
    " ends = Constant<value = int64[1] {3}>()\n"
    " d = Slice(shape, starts, ends)"
)
_GATHER_READ = "index = Constant<value = int64[1] {2}>()\n d = Gather<axis = 0>(shape, index)"


@pytest.mark.parametrize("pool", ["MaxPool", "AveragePool", "LpPool"])
@pytest.mark.parametrize("read", [_SLICE_READ, _GATHER_READ], ids=["slice", "gather"])
def test_a_ceil_mode_pool_length_is_read_as_onnx_runtime_runs_it(pool, read):
    model = _legacy(CEIL_POOL.replace("POOL", pool).replace("READ", read))
    after = _simplified(model)
    for batch in (1, 3):
        x = np.random.default_rng(batch).uniform(1, 2, (batch, 1, 6)).astype(np.float32)
        assert_same_outputs(model, after, {"x": x}, rtol=1e-6, atol=1e-6)


# ConvTranspose with auto_pad SAME_UPPER writes input * stride (10) on ONNX Runtime; ONNX's inference adds the
# output_padding (11). Found by review; values computed from it now carry no inferred shape
# (passes._utils._misinferred).
SAME_UPPER_TRANSPOSE = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[batch, 1, 5] x, float[1, 1, 3] w) => (float[batch, 1, 1] y) {
      up = ConvTranspose<auto_pad = "SAME_UPPER", strides = [2], output_padding = [1]>(x, w)
      shape = Shape(up)
      starts = Constant<value = int64[1] {-1}>()
      ends = Constant<value = int64[1] {9223372036854775807}>()
      d = Slice(shape, starts, ends)
      count = Cast<to = 1>(d)
      axes = Constant<value = int64[1] {-1}>()
      total = ReduceSum<keepdims = 1>(up, axes)
      y = Div(total, count)
    }"""


@pytest.mark.parametrize(("length", "folds"), [(6, False), (7, True)])
def test_a_ceil_mode_pool_is_trusted_only_where_no_window_is_dropped(length, folds):
    """At length 7 (kernel 2, stride 3) the last of 3 windows starts at 6, inside the input: ONNX's size is right
    and the read folds; at 6 it would start past the input, ONNX Runtime drops it, and the read stays."""
    text = CEIL_POOL.replace("POOL", "MaxPool").replace("READ", _SLICE_READ).replace("1, 6]", f"1, {length}]")
    model = _legacy(text)
    after = _simplified(model)
    assert ("Slice" not in op_types(after)) == folds
    x = np.random.default_rng(0).uniform(1, 2, (2, 1, length)).astype(np.float32)
    assert_same_outputs(model, after, {"x": x}, rtol=1e-6, atol=1e-6)


def test_a_same_upper_conv_transpose_length_is_read_as_onnx_runtime_runs_it():
    model = _legacy(SAME_UPPER_TRANSPOSE)
    after = _simplified(model)
    rng = np.random.default_rng(0)
    w = rng.uniform(1, 2, (1, 1, 3)).astype(np.float32)
    for batch in (1, 2):
        x = rng.uniform(1, 2, (batch, 1, 5)).astype(np.float32)
        assert_same_outputs(model, after, {"x": x, "w": w}, rtol=1e-6, atol=1e-6)


# The If's branches give 2 and 3 rows: ONNX's inference merges them into an unknown dim.
IF_ROWS = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[batch, 4] x, bool c) => (float[n] y) {
      v = If(c) <then_branch = t () => (float[2, 4] a) {
          k = Constant<value = int64[2] {0, 1}>()
          a = Gather<axis = 0>(x, k)
        }, else_branch = e () => (float[3, 4] b) {
          k2 = Constant<value = int64[3] {0, 1, 0}>()
          b = Gather<axis = 0>(x, k2)
        }>
      shape = Shape(v)
      starts = Constant<value = int64[1] {0}>()
      ends = Constant<value = int64[1] {1}>()
      d = Slice(shape, starts, ends)
      y = Cast<to = 1>(d)
    }"""
# The Loop's carried state doubles each iteration: its declared [batch, 3] holds only before the first.
LOOP_GROWS = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[batch, 3] x, int64 n) => (float[m] y) {
      cond = Constant<value = bool {1}>()
      v = Loop(n, cond, x) <body = body (int64 i, bool c, float[batch, 3] acc) => (bool co, float[batch, 3] out) {
          co = Identity(c)
          out = Concat<axis = 1>(acc, acc)
        }>
      shape = Shape(v)
      starts = Constant<value = int64[1] {1}>()
      ends = Constant<value = int64[1] {9223372036854775807}>()
      d = Slice(shape, starts, ends)
      y = Cast<to = 1>(d)
    }"""


def test_dims_a_subgraph_decides_at_run_time_stay_read():
    model = _legacy(IF_ROWS)
    after = _simplified(model)
    assert "Slice" in op_types(after)
    for batch in (2, 3):
        for c in (True, False):
            assert_same_outputs(model, after, {"x": np.zeros((batch, 4), np.float32), "c": np.array(c)})
    model = _legacy(LOOP_GROWS)
    after = _simplified(model)
    assert "Slice" in op_types(after)
    for count in (0, 1, 2):
        assert_same_outputs(model, after, {"x": np.zeros((2, 3), np.float32), "n": np.array(count, np.int64)})


# A Slice(Shape) in an If branch, used as a Reshape target's tail.
IN_BRANCH = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[batch, 4, 6] x, bool c) => (float[batch, p] y) {
      y = If(c) <then_branch = t () => (float[batch, p] a) {
          s = Shape(x)
          st = Constant<value = int64[1] {1}>()
          en = Constant<value = int64[1] {9223372036854775807}>()
          d = Slice(s, st, en)
          q = ReduceProd<keepdims = 1>(d)
          m = Constant<value = int64[1] {-1}>()
          tg = Concat<axis = 0>(m, q)
          a = Reshape(x, tg)
        }, else_branch = e () => (float[batch, p] b) {
          z = Constant<value = int64[2] {0, -1}>()
          b = Reshape(x, z)
        }>
    }"""


def test_a_slice_in_a_branch_keeps_its_outputs():
    model = _legacy(IN_BRANCH)
    after = _simplified(model)
    for batch in (1, 3):
        for c in (True, False):
            x = np.random.default_rng(batch).standard_normal((batch, 4, 6)).astype(np.float32)
            assert_same_outputs(model, after, {"x": x, "c": np.array(c)})


@pytest.mark.parametrize(("length", "known"), [(6, False), (7, True)])
def test_the_fusions_inferred_shapes_skip_a_dropped_ceil_window(length, known):
    """The fusions' own inference (passes.fusion._inferred_shapes) clears the same sizes: at length 6 ONNX says 3
    windows and ONNX Runtime computes 2, so the pool's output and what is computed from it get no shape."""
    from passes.fusion._inferred_shapes import inferred_shapes

    model = _legacy(f"""
        <ir_version: 9, opset_import: ["" : 19]>
        g (float[1, 1, {length}] x) => (float[1, 1, n] y) {{
          p = MaxPool<kernel_shape = [2], strides = [3], ceil_mode = 1>(x)
          y = Relu(p)
        }}""")
    relu = next(node for node in model.graph if node.op_type == "Relu")
    with inferred_shapes(model):
        pooled, relued = relu.inputs[0].shape, relu.outputs[0].shape
    if known:
        assert list(pooled) == [1, 1, 3] and relued is not None
    else:
        assert pooled is None or pooled[2] != 3, pooled

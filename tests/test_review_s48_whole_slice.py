"""Review of simplify-shapes' whole-Slice removal (onnxscript's ``collapse_slices`` under ONNX's inferred shapes):
a Slice that is not whole at run time must stay; outputs compared on ONNX Runtime before and after."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from passes.shape_simplification import ShapeSimplificationPass
from tests.helpers import assert_same_outputs, op_types, parse_model

# A computed Reshape target of a static dim: the pass proves it constant, which lets the whole-Slice rules run.
TRIGGER = """
      sh = Shape(x)
      i0 = Constant<value = int64[1] {0}>()
      b = Gather<axis = 0>(sh, i0)
      tail = Constant<value = int64[1] {-1}>()
      tgt = Concat<axis = 0>(b, tail)
      xr = Reshape(x, tgt)
      zero = Constant<value = int64[1] {0}>()
      one = Constant<value = int64[1] {1}>()
"""
X = np.arange(6, dtype=np.float32).reshape(2, 3)


def _legacy(model: ir.Model) -> ir.Model:
    for node in model.graph:  # as the legacy exporter writes it: no intermediate shapes
        for output in node.outputs:
            output.shape = None
    return model


def _model(signature: str, body: str) -> ir.Model:
    return _legacy(parse_model(f'<ir_version: 9, opset_import: ["" : 17]>\ng {signature} {{\n{TRIGGER}{body}\n}}'))


def _simplified(model: ir.Model) -> ir.Model:
    after = ShapeSimplificationPass()(model.clone()).model
    assert "Shape" not in op_types(after), op_types(after)  # the trigger fired
    return after


def _run_all_inputs(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    """ONNX Runtime's outputs, feeding overridable initializers too (tests.helpers.run feeds only true inputs)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_a_slice_after_a_resize_by_scales_stays():
    scale = repr(float(np.float32(5 / 3)))
    model = _model(
        "(float[2, 3] x, float[n, 1, 3] z) => (float[2, 3] xr, float[n, 1, k] y)",
        f"""
      scales = Constant<value = float[3] {{1, 1, {scale}}}>()
      r = Resize<mode = "nearest">(z, , scales)
      four = Constant<value = int64[1] {{4}}>()
      two = Constant<value = int64[1] {{2}}>()
      y = Slice(r, zero, four, two, one)""",
    )
    after = _simplified(model)
    for n in (1, 2):
        z = np.arange(n * 3, dtype=np.float32).reshape(n, 1, 3)
        assert_same_outputs(model, after, {"x": X, "z": z})


def _overridable(declared: str) -> ir.Model:
    """``w`` is a graph input with an initializer ([0, 1, 2, 3]): a default a caller may override."""
    text = f"""<ir_version: 9, opset_import: ["" : 17]>
    g (float[2, 3] x, {declared} w) => (float[2, 3] xr, float[m] y) {{
    {TRIGGER}
      four = Constant<value = int64[1] {{4}}>()
      y = Slice(w, zero, four, zero, one)
    }}"""
    proto = onnx.parser.parse_model(text)
    if declared == "float":  # one dim with neither a size nor a name: ORT takes any length
        dims = proto.graph.input[1].type.tensor_type.shape.dim
        dims.add()
    proto.graph.initializer.append(numpy_helper.from_array(np.arange(4, dtype=np.float32), "w"))
    onnx.checker.check_model(proto)
    return _legacy(ir.from_proto(proto))


def test_a_slice_of_an_overridable_initializer_of_unknown_length_stays():
    # (A graph input declaring no shape at all, which ONNX's checker rejects, does lose its Slice and gets the
    # initializer's [4] written onto it; a dim with neither size nor name is what a valid model writes.)
    model = _overridable("float")
    after = _simplified(model)
    assert "Slice" in op_types(after), op_types(after)
    assert after.graph.inputs[1].shape == model.graph.inputs[1].shape
    for size in (6, 4, 2):
        feeds = {"x": X, "w": np.arange(size, dtype=np.float32)}
        for want, got in zip(_run_all_inputs(model, feeds), _run_all_inputs(after, feeds)):
            np.testing.assert_array_equal(got, want)


def test_a_slice_of_an_overridable_initializer_with_a_declared_shape_goes():
    # ONNX Runtime refuses a w other than the declared [4], so the Slice is whole on every run it makes.
    model = _overridable("float[4]")
    after = _simplified(model)
    assert "Slice" not in op_types(after), op_types(after)
    w = np.arange(4, dtype=np.float32) + 10
    for feeds in ({"x": X}, {"x": X, "w": w}):
        for want, got in zip(_run_all_inputs(model, feeds), _run_all_inputs(after, feeds)):
            np.testing.assert_array_equal(got, want)


def test_a_slice_of_an_input_dim_named_like_an_inferred_unknown_stays():
    # ONNX names the dims it cannot derive unk__N: an input's own unk__0 must not make a cut Slice look whole.
    model = _model(
        "(float[2, 3] x, float[unk__0] v, int64[1] e) => (float[2, 3] xr, float[k] y)",
        "  y = Slice(v, zero, e, zero, one)",
    )
    after = _simplified(model)
    assert "Slice" in op_types(after), op_types(after)
    for size, end in ((5, 2), (3, 3), (4, 9)):
        feeds = {"x": X, "v": np.arange(size, dtype=np.float32), "e": np.array([end], np.int64)}
        assert_same_outputs(model, after, feeds)


def test_whole_slices_that_are_graph_outputs_or_empty_go_and_keep_the_outputs():
    model = _model(
        "(float[2, 3] x, float[n, 0, 4] z) => (float[2, 3] xr, float[2, 3] y, float[n, 0, 4] y2, float[2, 2] y3)",
        """
      two = Constant<value = int64[1] {2}>()
      y = Slice(x, zero, two, zero, one)
      y2 = Slice(z, zero, zero, one, one)
      y3 = Slice(x, zero, two, one, one)""",
    )
    after = _simplified(model)
    assert [value.name for value in after.graph.outputs] == ["xr", "y", "y2", "y3"]
    assert op_types(after).count("Slice") == 1, op_types(after)  # y3 takes 2 of x's 3 columns
    for n in (0, 2):
        assert_same_outputs(model, after, {"x": X, "z": np.zeros((n, 0, 4), np.float32)})


def test_a_slice_of_a_sequence_inputs_element_stays():
    model = _model(
        "(float[2, 3] x, seq(float[4]) s) => (float[2, 3] xr, float[k] y)",
        """
      first = Constant<value = int64 {0}>()
      element = SequenceAt(s, first)
      four = Constant<value = int64[1] {4}>()
      y = Slice(element, zero, four, zero, one)""",
    )
    after = _simplified(model)
    for size in (4, 6):
        assert_same_outputs(model, after, {"x": X, "s": [np.arange(size, dtype=np.float32)]})


def test_a_dim_read_of_a_resize_by_scales_stays_computed():
    scale = repr(float(np.float32(5 / 3)))
    model = _legacy(
        parse_model(
            f"""<ir_version: 9, opset_import: ["" : 17]>
    g (float[n, 1, 3] z) => (float[n, 1, k] y) {{
      scales = Constant<value = float[3] {{1, 1, {scale}}}>()
      r = Resize<mode = "nearest">(z, , scales)
      sh = Shape(r)
      last = Constant<value = int64[1] {{-1}}>()
      end = Constant<value = int64[1] {{9223372036854775807}}>()
      size = Slice(sh, last, end)
      sizef = Cast<to = 1>(size)
      y = Mul(r, sizef)
    }}"""
        )
    )
    after = ShapeSimplificationPass()(model.clone()).model
    for n in (1, 2):
        assert_same_outputs(model, after, {"z": np.ones((n, 1, 3), np.float32)})


@pytest.mark.parametrize(("axis", "end", "whole"), [(-1, 2, False), (-1, 3, True), (-2, 1, False), (-2, 2, True)])
def test_negative_axes_read_the_right_dim(axis, end, whole):
    model = _model(
        "(float[2, 3] x, float[n, 2, 3] z) => (float[2, 3] xr, float[a, b, c] y)",
        f"""
      end = Constant<value = int64[1] {{{end}}}>()
      axis = Constant<value = int64[1] {{{axis}}}>()
      y = Slice(z, zero, end, axis, one)""",
    )
    after = _simplified(model)
    assert ("Slice" in op_types(after)) != whole, op_types(after)
    for n in (1, 3):
        assert_same_outputs(model, after, {"x": X, "z": np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)})


def test_an_input_without_a_shape_gets_none_back_after_inference():
    """onnx-ir's shape inference wrote an initializer's shape onto the graph input that declares none; the
    rewrites' inference (declared_shapes_inferred) now gives every graph input its declared shape back."""
    from passes._utils import declared_shapes_inferred

    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[n] x) => (float[n] y) {
          y = Add(x, x)
        }""")
    w = ir.Value(name="w", type=ir.TensorType(ir.DataType.FLOAT))
    w.const_value = ir.tensor(np.ones(4, np.float32), name="w")
    model.graph.inputs.append(w)
    model.graph.register_initializer(w)
    with declared_shapes_inferred(model):
        pass
    assert w.shape is None


def test_a_dim_read_of_an_opset_10_resize_by_scales_stays_computed():
    """Opset 10's Resize takes its scales as the second input (11's as the third): ONNX sizes 3 * 1.6666666 as 4,
    ONNX Runtime as 5, so the size read from its shape stays computed."""
    model = parse_model("""
        <ir_version: 7, opset_import: ["" : 10]>
        g (float[n, 1, 3] z) => (float[n, 1, m] y) {
          sc = Constant<value = float[3] {1.0, 1.0, 1.6666666}>()
          r = Resize<mode = "nearest">(z, sc)
          shape = Shape(r)
          starts = Constant<value = int64[1] {2}>()
          ends = Constant<value = int64[1] {3}>()
          d = Slice(shape, starts, ends)
          df = Cast<to = 1>(d)
          y = Div(r, df)
        }""")
    for node in model.graph:
        for output in node.outputs:
            output.shape = None
    after = ShapeSimplificationPass()(model.clone()).model
    assert_same_outputs(model, after, {"z": np.ones((2, 1, 3), np.float32)})

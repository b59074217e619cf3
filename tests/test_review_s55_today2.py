"""A hostile review of the changes since 4ad7725 (session 55, second pass over the day's commits).

Findings, each fixed and tested here:

1. ``names_defined_twice`` read the main graph and its subgraphs only: in a local function, an Identity whose
   output a Loop body in an untaken ``If`` branch reads, beside a body input named like the Identity's input,
   was removed by remove-identity, and the body read its own value (the default pipeline, verified, "applied").
2. bind-dims declared an output's bound size where ONNX's shape inference could not size it (a slice to
   ``Shape(x)[1] / 2``): ONNX Runtime as deployed (``ORT_ENABLE_ALL``) takes the declared size for the output's
   readers, and ``Shape`` of its ``Relu`` gave 8 where the model computes 4; verification, run unoptimized, passed.
3. ``--static-shapes`` with an approximate pass and no ``--calibration`` on a model refusing the default 128
   positions: the generated samples, drawn again at the bound 128, stopped optimize with an ``InputSpecError``
   where verification's inputs (and, without ``--static-shapes``, the samples) are shortened.
4. compare's hint on generated inputs was added to AFTER's refusal of inputs BEFORE ran on ("bind other sizes
   with --dim"): AFTER's failure, not the sizes'.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, parser

from optimizer.api import optimize_with_report
from optimizer.compare.comparison import CompareSettings, compare
from optimizer.errors import InvalidModelError
from tests.helpers import assert_deployed_equal, run_deployed


def _status(report, name: str) -> str:
    return next(record.status for record in report.passes if record.name == name)


# --- 1. a name a Loop body shadows, in a function -------------------------------------------------------------

_SHADOWED_IN_A_FUNCTION = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[2] xx) => (float[2] yy, float[2] uu) {
  yy, uu = local.f(xx)
}
<domain: "local", opset_import: ["" : 17]>
f (x) => (y, u) {
  w = Relu(x)
  w2 = Identity(w)
  u = Add(x, w)
  s = ReduceSum<keepdims=0>(x)
  big = Constant<value_float = 1000.0>()
  c = Greater(s, big)
  n = Constant<value = int64 {2}>()
  t = Constant<value = bool {1}>()
  y = If(c) <then_branch = th () => (float[2] ty) {
      ty = Loop(n, t, x) <body = b (int64 i, bool cin, float[2] w) => (bool cout, float[2] acc2) {
         cout = Identity(cin)
         acc2 = Add(w, w2)
      }>
    }, else_branch = e () => (float[2] ey) { ey = Mul(x, w2) }>
}"""


@pytest.mark.parametrize("verify", [True, False])
def test_an_identity_in_a_function_whose_name_a_body_shadows_is_kept(verify):
    model = parser.parse_model(_SHADOWED_IN_A_FUNCTION)
    onnx.checker.check_model(model, full_check=True)
    feeds = [{"xx": np.array([1, 2], np.float32)}, {"xx": np.array([1000, 2000], np.float32)}]
    optimized, _ = optimize_with_report(model, verify=verify)
    assert_deployed_equal(model, optimized, feeds)


# --- 2. an output other nodes read, whose size inference does not compute --------------------------------------

_HALF_SLICE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, seq] x) => (float[batch, seq] y, int64[2] z) {
  sh = Shape(x)
  one = Constant<value = int64[1] {1}>()
  two = Constant<value = int64[1] {2}>()
  zero = Constant<value = int64[1] {0}>()
  n = Gather<axis=0>(sh, one)
  half = Div(n, two)
  y = Slice(x, zero, half, one)
  r = Relu(y)
  z = Shape(r)
}"""


@pytest.mark.parametrize("verify", [True, False])
def test_static_shapes_does_not_declare_a_size_inference_cannot_compute_on_an_output_others_read(verify):
    model = parser.parse_model(_HALF_SLICE)
    feeds = [{"x": np.ones((1, 8), np.float32)}]
    assert run_deployed(model, feeds[0])[1].tolist() == [1, 4]
    optimized, report = optimize_with_report(model, static_shapes=True, dims={"batch": 1, "seq": 8}, verify=verify)
    assert _status(report, "bind-dims") == "applied"
    assert_deployed_equal(model, optimized, feeds)


def test_static_shapes_still_binds_an_output_nothing_reads():
    model = parser.parse_model(
        _HALF_SLICE.replace("int64[2] z", "float[batch, seq] z").replace("z = Shape(r)", "z = Relu(x)")
    )
    optimized, _ = optimize_with_report(model, static_shapes=True, dims={"batch": 1, "seq": 8})
    shapes = {
        value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim] for value in optimized.graph.output
    }
    assert shapes["z"] == [1, 8]


# --- 3. generated calibration samples under --static-shapes, on a model refusing 128 positions ------------------


def _position_table_model() -> onnx.ModelProto:
    """``y = MatMul(Relu(x + table[:S]), W)``: a table of 20 positions refuses the default 128."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], start=1, end=2),
        helper.make_node("Slice", ["table", "zero", "shape"], ["positions"]),
        helper.make_node("Add", ["x", "positions"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["h"]),
        helper.make_node("Unsqueeze", ["h", "last"], ["h3"]),
        helper.make_node("MatMul", ["h3", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "positions",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 16])],
        [
            numpy_helper.from_array(np.linspace(-1, 1, 20).astype(np.float32), "table"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([-1], np.int64), "last"),
            numpy_helper.from_array(rng.standard_normal((1, 16)).astype(np.float32), "w"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_static_shapes_shortens_generated_calibration_samples_as_it_does_without():
    model = _position_table_model()
    _, report = optimize_with_report(model, quantize="static", static_shapes=True)
    assert _status(report, "bind-dims") == "applied"
    assert any("verified on shorter ones (sequence=16)" in warning for warning in report.warnings), report.warnings


# --- 4. compare's hint is BEFORE's ---------------------------------------------------------------------------


def _relu_model(path, broken: bool) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    initializers = []
    if broken:  # reshapes to a batch of 2: refuses the generated batch of 1
        initializers.append(numpy_helper.from_array(np.array([2, -1, 8], np.int64), "fixed"))
        nodes += [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Reshape", ["r", "fixed"], ["r2"]),
            helper.make_node("Reshape", ["r2", "shape"], ["y"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["r"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 8])],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def test_compare_does_not_blame_the_generated_sizes_for_after_refusing_what_before_ran(tmp_path):
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    _relu_model(before, broken=False)
    _relu_model(after, broken=True)
    with pytest.raises(InvalidModelError) as raised:
        compare(before, after, settings=CompareSettings(iterations=2, warmup=1), dims={"sequence": 3})
    assert str(raised.value).startswith(f"{after}: ONNX Runtime cannot run it on cpu")
    assert "the inputs were generated" not in str(raised.value)


def test_values_a_body_inside_a_function_defines_under_the_functions_names_are_renamed():
    # The rename made when optimize reads a model covers a function's subgraphs too (its own scope).
    import onnx_ir as ir

    from optimizer.model_io import rename_shadowing_values

    model = ir.from_proto(parser.parse_model(_SHADOWED_IN_A_FUNCTION))
    assert rename_shadowing_values(model) >= 1
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    feeds = [{"xx": np.array([1, 2], np.float32)}, {"xx": np.array([1000, 2000], np.float32)}]
    assert_deployed_equal(parser.parse_model(_SHADOWED_IN_A_FUNCTION), proto, feeds)

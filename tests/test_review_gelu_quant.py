"""Review of 5265fa6 (fuse-gelu reads x's shape only from what ONNX Runtime checks) and 6a3deea (quantization fixes).

Each test is a hole found in review, failing before its fix; its docstring says where the fault was.
Reproduction scripts: /tmp/rev_gq/ (if_verified.py, misc_gelu.py, unnamed_dim.py, dp_nonzero.py,
slice_input_start.py, neg_dim.py, neg_dim_end.py, static_scalar_c.py; run with the venv's python from /tmp/rev_gq).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from optimizer.api import optimize_with_report
from passes.fusion.gelu import GeluFusion
from tests.helpers import run

_GELU = """
  sqrt2 = Constant<value = float {1.4142135}>()
  one = Constant<value = float {1.0}>()
  half = Constant<value = float[%s] {%s}>()
  d = Div(x, sqrt2)
  e = Erf(d)
  b = Add(e, one)
  mm = Mul(x, b)
  y = Mul(mm, half)
}"""


def _gelu_after(head: str, dims: list[int]) -> ir.Model:
    """``head`` (a graph computing ``x``) followed by ``0.5 * x * (1 + erf(x / sqrt 2))``, its 0.5 of shape ``dims``."""
    text = head + _GELU % (", ".join(map(str, dims)), ", ".join(["0.5"] * int(np.prod(dims))))
    return ir.from_proto(onnx.parser.parse_model(text))


def _assert_same_shapes_and_values(model: ir.Model, feeds: list[dict[str, np.ndarray]]) -> None:
    fused = GeluFusion()(model.clone()).model
    for feed in feeds:
        expected, actual = run(model, feed)["y"], run(fused, feed)["y"]
        assert actual.shape == expected.shape, feed
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


# Then-branch computes [6], else-branch [1, 6]; both declared [1, 6]; max(a) > 50 takes the then-branch.
_IF_HEAD = """<ir_version: 9, opset_import: ["" : 18]>
g (float[6] a) => (float y) {
  mx = ReduceMax<keepdims = 0>(a)
  lim = Constant<value = float {50.0}>()
  c = Greater(mx, lim)
  x = If(c) <
    then_branch = t () => (float[1, 6] tout) { tout = Relu(a) },
    else_branch = f () => (float[1, 6] fout) { ax = Constant<value = int64[1] {0}>()  fout = Unsqueeze(a, ax) }
  >"""

# The body's output is declared [1, 6] and computed [6]: the scan output is [n, 6], inferred [n, 1, 6].
_LOOP_HEAD = """<ir_version: 9, opset_import: ["" : 18]>
g (float[6] a, int64 n) => (float y) {
  cond = Constant<value = bool {1}>()
  x = Loop(n, cond) <body = body (int64 i, bool c) => (bool co, float[1, 6] out) { co = Identity(c)  out = Relu(a) }>"""


@pytest.mark.parametrize(
    ("head", "dims", "feed"),
    [
        (_IF_HEAD, [1, 6], {"a": np.full(6, 100.0, np.float32)}),
        (_LOOP_HEAD, [1, 1, 6], {"a": np.linspace(-2, 2, 6).astype(np.float32), "n": np.array(2, np.int64)}),
    ],
    ids=["if", "loop"],
)
def test_gelu_does_not_read_x_rank_from_a_subgraph_declaration(head, dims, feed):
    """Review finding (fixed since): fuse-gelu's _RunTimeShapes removes the main graph's recorded shapes but
    not an If/Loop body's declared outputs, which ONNX inference takes as the node's output shape and ONNX
    Runtime does not check: a [1, 6] / [1, 1, 6] 0.5 is fused on an x of rank 1 / 2 (If: (6,) instead of (1,
    6), reported verified where the branch taken depends on values generated inputs never reach; Loop: (2,
    6) instead of (1, 2, 6))
    """
    """Found in review (5265fa6 and before): a subgraph's declared output shape is a word nothing checks, like
    the main graph's value_info the commit removes; the fused output must keep the original's shape."""
    _assert_same_shapes_and_values(_gelu_after(head, dims), [feed])


def test_gelu_if_branch_case_is_not_reported_verified():
    """Review finding (fixed since): the If case passes the pipeline's verification: generated inputs never
    reach max(a) > 50, so the fused result (6,) where the original gives (1, 6) on a = 100 is reported
    verified
    """
    """Found in review: the hole above is not only under --no-verify; the pipeline's result must keep the
    original's shape on the branch verification does not take."""
    model = _gelu_after(_IF_HEAD, [1, 6])
    result, _ = optimize_with_report(ir.to_proto(model), passes="fuse-gelu")
    feed = {"a": np.full(6, 100.0, np.float32)}
    assert run(ir.from_proto(result), feed)["y"].shape == run(model, feed)["y"].shape


_UNNAMED_HEAD = """<ir_version: 9, opset_import: ["" : 18]>
g (float[4] a) => (float y) {
  s = Shape(a)
  ones = Constant<value = int64[3] {1, 1, 1}>()
  three = Constant<value = int64[1] {3}>()
  k = Slice(ones, s, three)
  c = ConstantOfShape<value = float[1] {0.3}>(k)
  x = Relu(c)"""

_NONZERO_HEAD = """<ir_version: 9, opset_import: ["" : 18]>
g (float[4] a) => (float y) {
  nz = NonZero(a)
  s0 = Shape(nz)
  one_i = Constant<value = int64[1] {1}>()
  two_i = Constant<value = int64[1] {2}>()
  s = Slice(s0, one_i, two_i)
  ones = Constant<value = int64[3] {1, 1, 1}>()
  three = Constant<value = int64[1] {3}>()
  k = Slice(ones, s, three)
  c = ConstantOfShape<value = float[1] {0.3}>(k)
  x = Relu(c)"""


@pytest.mark.parametrize("head", [_UNNAMED_HEAD, _NONZERO_HEAD], ids=["unnamed-input-dim", "nonzero"])
def test_gelu_does_not_read_an_unknown_dim_as_zero(head):
    """Review finding (fixed since): ONNX's data propagation reads a dim with neither value nor name as 0 (a
    graph input declared float[?], NonZero's count): Slice(ones3, Shape(a), 3) is inferred [1, 1, 1]
    whatever a's length, and a [1, 1, 1] 0.5 is fused on an x of rank 3 - len(a): (1, 1) or (1,) instead of
    (1, 1, 1) (verification catches it on generated inputs; wrong under --no-verify)
    Found in review (5265fa6 and before; the NonZero form was known to the lead as an ONNX quirk).
    """
    model = _gelu_after(head, [1, 1, 1])
    if head is _UNNAMED_HEAD:
        model.graph.inputs[0].shape = ir.Shape([None])
    _assert_same_shapes_and_values(model, [{"a": np.array(v, np.float32)} for v in ([0, 0, 0, 0], [1, 0, 0, 0])])


@pytest.mark.parametrize("c_shape", [[], [1], [1, 1]], ids=["scalar", "one", "one-by-one"])
def test_static_quantization_takes_a_gemm_with_a_one_value_c(c_shape):
    """Review finding (fixed since): 6a3deea broadcasts a one-value Gemm C ([], [1], [1, 1]) to an [N] bias;
    quantize-static's twin then writes that [N] bias into the one-value C (Int8Twin.set_input reshapes to
    the old shape): ValueError, 'pass quantize-static raised; rolled back', and every layer stays float
    (before, only that Gemm was refused)
    Found in review (regression of 6a3deea): a false rollback of the whole static quantization.
    """
    k, n = 64, 32
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array((rng.standard_normal((k, k)) * 0.05).astype(np.float32), "W0"),
        numpy_helper.from_array((rng.standard_normal((k, n)) * 0.05).astype(np.float32), "W"),
        numpy_helper.from_array(np.full(c_shape, 0.5, np.float32), "C"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W", "C"], ["g"]),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "review",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", k])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["B", n])],
        initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    calibration = {"x": rng.standard_normal((16, k)).astype(np.float32)}
    result, report = optimize_with_report(proto, quantize="static", calibration=calibration)
    record = next(r for r in report.passes if r.name == "quantize-static")
    assert record.status == "applied", record.detail
    assert "QuantizeLinear" in [node.op_type for node in result.graph.node]


_NEGATIVE_DIM_HEAD = """<ir_version: 9, opset_import: ["" : 18]>
g (float[4] a) => (float y) {
  s = Shape(a)
  ones = Constant<value = int64[8] {1, 1, 1, 1, 1, 1, 1, 1}>()
  zero = Constant<value = int64[1] {0}>()
  k = Slice(ones, zero, s)
  c = ConstantOfShape<value = float[1] {0.3}>(k)
  x = Relu(c)"""


def test_gelu_does_not_take_a_negative_input_dim_as_checked():
    """Review finding (fixed since): a graph input's dim declared -1 (tf2onnx's 'any'; onnx.checker accepts it)
    is not checked by ONNX Runtime, but _RunTimeShapes takes the declaration as checked, and ONNX's data
    propagation reads Shape(a) as [-1]: Slice(ones8, 0, Shape(a)) is inferred to end at -1 (x of rank 7)
    where ONNX Runtime ends at len(a), so a [1, 1] 0.5 is fused on an x of rank len(a): (1,) instead of (1,
    1) for len(a) = 1 (as a Slice start, -1 gives rank 1 where ONNX Runtime gives 0 from len(a) = 3 on:
    reported verified)
    """
    """Found in review (5265fa6 and before): wrong under --no-verify (verified where the generated length is
    one the inferred rank happens to fit)."""
    model = _gelu_after(_NEGATIVE_DIM_HEAD, [1, 1])
    model.graph.inputs[0].shape = ir.Shape([-1])
    _assert_same_shapes_and_values(model, [{"a": np.ones(length, np.float32)} for length in (1, 2, 7)])


_RUNTIME_START_HEAD = """<ir_version: 9, opset_import: ["" : 18]>
g (int64[1] start) => (float y) {
  ones = Constant<value = int64[8] {1, 1, 1, 1, 1, 1, 1, 1}>()
  eight = Constant<value = int64[1] {8}>()
  k = Slice(ones, start, eight)
  c = ConstantOfShape<value = float[1] {0.3}>(k)
  x = Relu(c)"""


def test_gelu_does_not_read_an_unknown_slice_start_as_zero():
    """Review finding (fixed since): ONNX's data propagation of Slice reads a start it does not know (here a
    graph input; the unnamed dim and NonZero cases above are the same) as 0:
    onnx.shape_inference.infer_shapes(data_prop=True) gives ConstantOfShape(Slice(ones8, start, 8)) the
    shape [1]*8, so a [1] 0.5 is fused on an x of rank 8 - start; start = 8 gives () instead of (1,), and
    the pipeline reports fuse-gelu verified (a Slice end it does not know is left unknown: refused)
    Found in review (5265fa6 and before): wrong and verified.
    """
    model = _gelu_after(_RUNTIME_START_HEAD, [1])
    result, _ = optimize_with_report(ir.to_proto(model), passes="fuse-gelu")
    for start in (0, 7, 8):
        feed = {"start": np.array([start], np.int64)}
        assert run(ir.from_proto(result), feed)["y"].shape == run(model, feed)["y"].shape, start

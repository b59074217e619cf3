"""Hostile review of today's review fixes: simplify-ops' checked onnxscript rules, fold-constants' and
merge-subexpressions' random draws (954aff5), compare --generate (60f2f3c) and ``respelled`` (90b971e).

Findings (strict xfails when found, all fixed since: rules for Clip and Pad only from opset 11, NaN bounds refused,
both Clips' dtypes checked, a symbolic row count refused, ConstantOfShape only of types ONNX Runtime fills; none
was a regression of 954aff5: b074922 behaves the same, the checked rules
left these holes open):
- onnxscript's Relu/Clip fusions and FuseMinMaxToClip/FuseMaxMinToClip assume Clip-11 (bounds as inputs). In an
  opset <= 10 model Clip's bounds are attributes: ``Clip(Clip(x, -1, 5), 0, 1)`` becomes a bare ``Clip(x)`` (the
  identity: a silently changed model with ``verify=False``), the Relu/Clip and Min/Max ones a Clip-6 with bound
  inputs ONNX Runtime refuses. Verified, the default pipeline rolls back all of simplify-ops.
- ``FuseConvPad`` reads Pad's pads as an input: a Pad-2 (opset <= 10, pads attribute) before a Conv is an
  IndexError that fails simplify-ops.
- simplify-ops fails on ``Clip(Clip(x))`` wherever the value between the two Clips carries no dtype (ONNX text,
  exports without value_info): ``_ClipRangesMeet.check`` guards only the *first* Clip's input dtype, but
  onnxscript's ``compute_clip_min_max`` reads the second's too (``AttributeError: 'NoneType' object has no attribute
  'numpy'``); the whole pass fails, every other rewrite of it is lost (also in the default pipeline).
- ``_AssigningScatterAllStatic`` inherits onnxscript's ``range(data.shape[0])``: a ScatterND whose data has a
  symbolic first dim fails the pass (``TypeError: 'SymbolicDim' object cannot be interpreted as an integer``).
- ``_cast_fits`` (any float type) and ``_unfilled`` (any type): ``Cast(ConstantOfShape(...), to=FLOAT8E4M3FN)``
  becomes a float8 ``ConstantOfShape`` ONNX Runtime cannot load. Verified: the pass is rolled back with its other
  rewrites; with ``verify=False`` the written model no longer runs.
- ``_ClipRangesMeet`` compares the bounds with ``>``, false for NaN, and onnxscript's Min/Max-to-Clip has no NaN
  check: a chain with a NaN bound is still fused and computes something else (verification catches it and rolls
  the whole pass back; shipped with ``verify=False``).

What held (2026-12-02, onnxruntime 1.32, 2 shared cores):
- Default pipeline, ``verify=False``, on all 23 ``tests/fixtures/*.onnx``: node count, op histogram (subgraphs
  included) and every pass status identical between b074922 and HEAD (no rule newly refused on a fixture).
- Clip chains with known dtypes (float32, float16, int32), against ONNX Runtime on [-3, -1, -0, 0, .25, 2, 7,
  NaN]: min-only then max-only (fused, same), max-only then min-only disjoint (refused), equal bounds (fused),
  Relu(Clip(hi=NaN)) (fused, same), Clip(Relu(lo=-2, hi=-1)) (refused), Relu(Clip()), Relu(Relu), int32
  Relu(Clip(-5, 3)) and Clip(Relu, max only) fused and equal; int32 disjoint Clip(Clip) refused.
- Cast(ConstantOfShape(v)): 300.7 and 1000 to float16 and bool, int64 16777217 to float, -2.7 to int32, double
  0.1 to float, NaN to bool: fused and bit-equal on ONNX Runtime; -0.5 to uint8 and NaN to int32 refused.
  ScatterND with ``reduction="add"`` refused.
- Random draws: two Bernoulli in an If's then-branch, in a Loop body, in a local function; Bernoulli of a
  constant in an If branch; two Dropouts with ``training_mode`` a graph input with default True, a constant True,
  or on constant data: merge-subexpressions, fold-constants, simplify-ops and the default pipeline keep both
  draws; ``graphopt_draw`` never reaches the saved proto. Two RandomUniformLike kept.
- compare --generate with --min-cosine 0.99 on gpt2_kv_{legacy,optimum,dynamo} optimized by the default
  pipeline (logits cosine 1.000000, exit 0) and with --quantize int4 (teacher-forced logits cosine 0.995416,
  output cosine 0.9977, exit 0); no false refusal of the name pairing on these exports.
- ``respelled`` (90b971e) is deterministic (byte-identical protos from two calls) and not vacuous: PP-OCR 566
  nodes, 71 Add/Mul swapped, 18 Div -> Mul, order changed from node 1; MiniLM 354 nodes, 42 swapped, 6 Div -> Mul,
  order changed from node 0. The default pipeline's op histogram on each respelled model equals the exported
  one's but for those Div -> Mul (MiniLM 77 nodes both, PP-OCR 203 both). Neither model has a subgraph or a
  function (``respelled`` leaves subgraphs unrenamed). Weakness, not a bug: nothing asserts the respelling changed
  anything, so a respelled() that became a no-op would pass the metamorphic tests.
- Default pipeline *with* verification on all 23 fixtures: identical counts and statuses at b074922 and HEAD, no
  pass rolled back; int4, dynamic and static int8 on llama_kv_legacy, gpt2_kv_optimum, llama_kv_genai: applied at
  both (8 MatMulNBits for int4), so the prefill set 60f2f3c adds to verification rolled nothing back.
- compare --generate with --inputs a folder of two one-step .npz (batch 1 and 2) on llama_kv_optimum: runs,
  "3 samples in 2 files"; int4 llama_kv_genai at --min-cosine 0.996 exits 5 naming the teacher-forced logits'
  cosine (0.994274; JSON ``logits_cosine`` the same).
- Two identical Ifs each drawing a Bernoulli or a training Dropout in a branch stay two; overridable defaults
  (Reshape shape, If condition, a Mul scalar) survive fold-constants, simplify-ops, simplify-shapes and the default
  pipeline and outputs match with every default overridden. Clip bounds of shape [1] and from a Constant node:
  fused and equal.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from tests.helpers import inferred_model, parse_model, run


def _record(report, name: str):
    return next(record for record in report.passes if record.name == name)


# A second, independent rewrite in the same graph: what a failed or rolled-back pass loses with it.
_RELU_RELU = "r1 = Relu (x)  r = Relu (r1)"


def test_clip_of_clip_without_a_dtype_between_them_does_not_fail_simplify_ops():
    model = parse_model(
        """<ir_version: 10, opset_import: ["" : 18]>
        g (float[6] x) => (float[6] y, float[6] r)
          <float lo = {-1.0}, float hi = {5.0}, float lo2 = {0.0}, float hi2 = {1.0}> {
          c = Clip (x, lo, hi)  y = Clip (c, lo2, hi2)  """
        + _RELU_RELU
        + " }"
    )
    feeds = {"x": np.array([-3, -1, 0, 0.5, 2, 7], np.float32)}
    result, report = optimize_with_report(model, ["simplify-ops"], inputs=feeds)
    record = _record(report, "simplify-ops")
    assert record.status == "applied", (record.status, record.detail)
    assert [node.op_type for node in result.graph].count("Relu") == 1
    for name, value in run(model, feeds).items():
        np.testing.assert_array_equal(run(result, feeds)[name], value)


def test_scatter_nd_over_symbolic_rows_does_not_fail_simplify_ops():
    model = parse_model(
        """<ir_version: 10, opset_import: ["" : 18]>
        g (float[N,4] d, float[N,4] u, float[6] x) => (float[N,4] y, float[6] r) <int64[2,1] i = {0, 1}> {
          y = ScatterND (d, i, u)  """
        + _RELU_RELU
        + " }"
    )
    feeds = {
        "d": np.ones((2, 4), np.float32),
        "u": np.full((2, 4), 2, np.float32),
        "x": np.array([-3, -1, 0, 0.5, 2, 7], np.float32),
    }
    result, report = optimize_with_report(model, ["simplify-ops"], inputs=feeds)
    record = _record(report, "simplify-ops")
    assert record.status == "applied", (record.status, record.detail)
    assert [node.op_type for node in result.graph].count("Relu") == 1


def _float8_cast(fill: str) -> ir.Model:
    """Cast(ConstantOfShape(s), to=FLOAT8E4M3FN), with a value or without (zeros), beside Relu(Relu(x))."""
    value = " <value = float[1] {300.0}>" if fill == "300" else ""
    return parse_model(
        f"""<ir_version: 10, opset_import: ["" : 21]>
        g (int64[1] s, float[6] x) => (float8e4m3fn[3] y, float[6] r) {{
          c = ConstantOfShape{value} (s)  y = Cast <to = 17> (c)  {_RELU_RELU} }}"""
    )


_FLOAT8_FEEDS = {"s": np.array([3], np.int64), "x": np.array([-3, -1, 0, 0.5, 2, 7], np.float32)}


@pytest.mark.parametrize("fill", ["300", "zeros"])
def test_cast_of_constant_of_shape_to_float8_does_not_roll_simplify_ops_back(fill):
    model = _float8_cast(fill)
    result, report = optimize_with_report(model, ["simplify-ops"], inputs=_FLOAT8_FEEDS)
    record = _record(report, "simplify-ops")
    assert record.status == "applied", (record.status, record.detail)
    assert [node.op_type for node in result.graph].count("Relu") == 1


@pytest.mark.parametrize("fill", ["300", "zeros"])
def test_cast_of_constant_of_shape_to_float8_unverified_still_runs(fill):
    model = _float8_cast(fill)
    result, _ = optimize_with_report(model, ["simplify-ops"], verify=False)
    try:
        outputs = run(result, _FLOAT8_FEEDS)
    except Exception as error:  # ONNX Runtime's refusal to load the rewritten ConstantOfShape
        raise AssertionError(f"the rewritten model does not run: {str(error)[:200]}") from error
    for name, value in run(model, _FLOAT8_FEEDS).items():
        np.testing.assert_array_equal(np.asarray(outputs[name], np.float32), np.asarray(value, np.float32))


def _clip_chain(nodes: list[onnx.NodeProto], bounds: dict[str, float]) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6])],
        [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in bounds.items()],
    )
    return inferred_model(graph)


@pytest.mark.parametrize(
    "chain",
    ["Clip(Clip(x, NaN, 5), 0, 1)", "Clip(Relu(x), NaN, 2)", "Max(Min(x, NaN), 0)"],
)
def test_a_clip_chain_with_a_nan_bound_is_not_fused_into_something_else(chain):
    if chain.startswith("Clip(Clip"):
        nodes = [helper.make_node("Clip", ["x", "l1", "h1"], ["c"]), helper.make_node("Clip", ["c", "l2", "h2"], ["y"])]
        bounds = {"l1": np.nan, "h1": 5.0, "l2": 0.0, "h2": 1.0}
    elif chain.startswith("Clip(Relu"):
        nodes = [helper.make_node("Relu", ["x"], ["c"]), helper.make_node("Clip", ["c", "l1", "h1"], ["y"])]
        bounds = {"l1": np.nan, "h1": 2.0}
    else:  # onnxscript's FuseMaxMinToClip: Min propagates the NaN, Clip(x, 0, NaN) does not
        nodes = [helper.make_node("Min", ["x", "h1"], ["c"]), helper.make_node("Max", ["c", "l1"], ["y"])]
        bounds = {"h1": np.nan, "l1": 0.0}
    model = _clip_chain(nodes, bounds)
    feeds = {"x": np.array([-3, -1, 0, 0.5, 2, 7], np.float32)}
    result, _ = optimize_with_report(model, ["simplify-ops"], verify=False)
    np.testing.assert_array_equal(run(result, feeds)["y"], run(model, feeds)["y"])


def _opset10_clip_chain(chain: str) -> ir.Model:
    """``chain`` with Clip-6's bounds as attributes (opset < 11), beside an independent Relu(Relu(x))."""
    first, second = {
        "Clip(Clip(x, -1, 5), 0, 1)": (
            helper.make_node("Clip", ["x"], ["c"], min=-1.0, max=5.0),
            helper.make_node("Clip", ["c"], ["y"], min=0.0, max=1.0),
        ),
        "Relu(Clip(x, -1, 0.5))": (
            helper.make_node("Clip", ["x"], ["c"], min=-1.0, max=0.5),
            helper.make_node("Relu", ["c"], ["y"]),
        ),
        "Clip(Relu(x), -1, 0.5)": (
            helper.make_node("Relu", ["x"], ["c"]),
            helper.make_node("Clip", ["c"], ["y"], min=-1.0, max=0.5),
        ),
        "Min(Max(x, 0), 2)": (
            helper.make_node("Max", ["x", "zero"], ["c"]),
            helper.make_node("Min", ["c", "two"], ["y"]),
        ),
    }[chain]
    nodes = [first, second, helper.make_node("Relu", ["x"], ["r1"]), helper.make_node("Relu", ["r1"], ["r"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [6]) for name in ("y", "r")],
        [helper.make_tensor(name, TensorProto.FLOAT, [], [value]) for name, value in (("zero", 0.0), ("two", 2.0))],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    proto.ir_version = 7
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


_OPSET10_CHAINS = [
    "Clip(Clip(x, -1, 5), 0, 1)",
    "Relu(Clip(x, -1, 0.5))",
    "Clip(Relu(x), -1, 0.5)",
    "Min(Max(x, 0), 2)",
]


@pytest.mark.parametrize("chain", _OPSET10_CHAINS)
def test_an_opset_10_clip_chain_is_not_rewritten_into_something_else(chain):
    # Clip(Clip) becomes a bare Clip(x) (the identity); the others a Clip-6 with bound inputs ORT refuses.
    model = _opset10_clip_chain(chain)
    feeds = {"x": np.array([-3, -1, 0, 0.5, 2, 7], np.float32)}
    result, _ = optimize_with_report(model, ["simplify-ops"], verify=False)
    try:
        outputs = run(result, feeds)
    except Exception as error:
        raise AssertionError(f"the rewritten model does not run: {str(error)[:200]}") from error
    np.testing.assert_array_equal(outputs["y"], run(model, feeds)["y"])


def test_an_opset_10_clip_chain_does_not_cost_the_default_pipeline_its_simplify_ops():
    model = _opset10_clip_chain("Clip(Clip(x, -1, 5), 0, 1)")
    feeds = {"x": np.array([-3, -1, 0, 0.5, 2, 7], np.float32)}
    result, report = optimize_with_report(model, inputs=feeds)
    record = _record(report, "simplify-ops")
    assert record.status == "applied", (record.status, record.detail)
    assert [node.op_type for node in result.graph].count("Relu") == 1


def test_an_opset_10_pad_before_a_conv_does_not_fail_simplify_ops():
    nodes = [
        helper.make_node("Pad", ["x"], ["p"], pads=[0, 0, 1, 1, 0, 0, 1, 1]),
        helper.make_node("Conv", ["p", "w"], ["y"]),
        helper.make_node("Relu", ["x"], ["r1"]),
        helper.make_node("Relu", ["r1"], ["r"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 5, 5]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 1, 3, 3]),
        ],
        [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    proto.ir_version = 7
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto)
    model = ir.from_proto(proto)
    feeds = {"x": np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3) - 3}
    result, report = optimize_with_report(model, ["simplify-ops"], inputs=feeds)
    record = _record(report, "simplify-ops")
    assert record.status == "applied", (record.status, record.detail)
    assert [node.op_type for node in result.graph].count("Relu") == 1

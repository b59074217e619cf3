"""Review of low-rank factorization, initializer deduplication and constant folding (``passes/factorization/``,
``passes/initializer_deduplication.py``, ``passes/constant_folding.py``, ``passes/cleanup.py``,
``passes/op_simplification.py``), run as a user runs them (``optimizer.api``) and compared with ONNX Runtime.

Findings (strict xfails when found; all fixed since, each a plain test: simplify-ops replaces onnxscript's Clip chain,
reducing-ScatterND and Cast(ConstantOfShape) rules by checked ones, and the one for a ConstantOfShape without a value
matched one with a value too (300 cast to uint8 became 0, found while fixing); fold-constants and
merge-subexpressions leave every random draw alone (``passes._utils.draws_random``); fold-constants hides
overridable inputs from the folder), worst first:

- Verification never runs an ``If`` branch its inputs do not take, so a wrong rewrite there ships reported
  applied: onnxscript's ``Relu(Clip(x, lo, hi))`` -> ``Clip(x, max(lo, 0), hi)`` (simplify-ops) is wrong when
  ``hi < 0`` (ONNX Runtime returns ``hi`` where min > max; the original gives 0), and
  ``Clip(Clip(x, lo, hi), lo2, hi2)`` -> ``Clip(x, max(lo, lo2), min(hi, hi2))`` is wrong when the ranges are
  disjoint; ``ScatterND(data, [[0], ..., [n-1]], updates, reduction=add|mul|max)`` is replaced by ``updates``
  (onnxscript's ScatterAllStatic ignores the reduction). In the main graph the verifier catches them and rolls
  every simplification back.
- fold-constants folds random ops onnxscript does not list as non-deterministic (``Bernoulli``, ``Dropout``
  with ``training_mode`` true): the draw is frozen into a constant. In an untaken ``If`` branch that ships as
  verified (a dropout mask that never changes again); in the main graph the verifier usually sees the
  frozen draw differ and rolls the whole pass back (every other fold lost). merge-subexpressions likewise
  merges two training-mode Dropouts of one tensor into one draw (onnx-ir's CSE list).
- fold-constants ignores that an initializer which is also a graph input is a default a caller may override:
  onnxscript's op-specific evaluators (``If``, ``Dropout``, ``Reshape``, ``Expand``) run before its own
  graph-input guard, so ``If(c)``, ``Dropout(x, r, training_mode)`` and ``Reshape(x, shape)`` are folded on the
  default, and the default is then deleted as an unused initializer (the input becomes required). In the
  pipeline the verifier runs the candidate without that input: ``KeyError: 't'`` ("fold-constants failed"),
  every other fold rolled back; with ``verify=False`` the model ships with an input it ignores and no longer
  defaults. The report's own warning says such inputs are "left unfolded". Wrapping the folder in
  ``passes._utils.overridable_inputs_hidden`` (as simplify-ops does) and a ``should_fold`` returning False for
  ``Bernoulli`` and non-constant-false ``Dropout`` training modes made the fold tests here pass, with
  tests/passes/test_constant_folding.py still passing (worktree, 2026-12-02).
- simplify-ops raises ``AttributeError: 'NoneType' object has no attribute 'numpy'`` on ``Clip(Relu(x))`` or
  ``Clip(Clip(x))`` whose intermediate has no dtype (onnxscript's rule reads ``inputs[0].dtype``; fold-constants
  takes its inferred types back when it folds nothing): the pass fails, all its rewrites lost. Likewise
  ``OverflowError`` on ``Cast(ConstantOfShape(value))`` with a value outside the integer type (-1.0 to uint8,
  300.0 to int8, 1e10 to int32: ONNX Runtime wraps; onnxscript's rule builds the value with ``ir.tensor``).

What held (2026-12-02, onnxruntime as installed, FakeSpeed for low-rank timing unless said):
- deduplicate-initializers merges only on dtype + declared shape + bytes (then ``np.array_equal``): there is
  no near-duplicate merging (docs/benchmarks.md "Parameter sharing" decided against it), so no approximation
  is passed off as exact; graph inputs (overridable) and graph outputs are refused; ``-0.0`` vs ``0.0`` and
  NaN payloads are not merged; a duplicate read only inside an ``If`` branch is merged correctly (outer-scope
  reference rewired, outputs equal on both branches).
- fold-constants: RandomNormal/RandomUniformLike (with or without seed) and Multinomial are left; Range of
  5e7, Expand/Tile to 4000x4000 are evaluated but not stored (output limit); Cast float->uint8 of 300/-1.5,
  float->int32 truncation, float8 e4m3fn/e5m2 with and without saturate, integer Div of negatives (-7/2 = -3)
  all match ONNX Runtime; a stale value_info shape on a dynamic dim: ORT reads the same stale shape.
- simplify-ops: lossy Cast chains (f32->f16->f32, f32->i32->f32, i64->i32->i64, f64->f32->f64, ->bool, ->u8)
  are left; Pad into Conv refused for reflect, non-zero constant and negative pads (dilated and SAME_UPPER
  convs fused exactly); BatchNorm into a Conv whose weight another Conv reads is refused; BN into grouped
  Conv/ConvTranspose and Gemm (alpha 2, beta 3, transB) within 1e-5; Reshape(Reshape) with 0 dims exact;
  ``Min(Max(x, a), b)`` -> Clip exact including NaN; Slice reversal / full / stepped / dynamic, ScatterND
  (no reduction) with permuted or repeated rows, Reshape-MatMul-Reshape with a different final split or a
  dynamic one, explicit pads from SAME_LOWER/VALID with strides, Flatten on dynamic dims (axis 0, 1, -1),
  Unsqueeze chains with negative axes, Squeeze-Reshape, Transpose chains, Max/Min chains with NaN and
  broadcasting, Cast(ConstantOfShape) in range, CastCast through bfloat16/float16/float64/int64: all left
  alone or rewritten exactly.
- factorize-lowrank: the reported figures are the held-out samples' (projections graph, 20 samples, ratio
  0.6: note max |d| 0.00948 / cosine 0.9918 = my own on samples 4, 9, 14, 19; the fitted ones give 0.0067 /
  0.9941) and its parameter counts add up (49,344 -> 19,520 = 2 x 9,600 + 192 bias + 128 bias change); Gemm
  transB with a scalar C and a repair (rel. error 0.009 on unseen rows); a tied weight read by a MatMul
  (with bias Add) and a Gemm (own C), factorized once; a layer output that is a graph output and read by
  two nodes; ``Add(b[1,1,N], h)``; a weight also read by a MatMul inside an If branch, Gemm alpha/beta !=
  1, transA, float16 weights and K or N of 1 are refused with a reason; duplicate node names (which
  ``graph.node(name)`` would confuse) are refused by ONNX Runtime before any pass runs; with real timing
  (CLI, ``--min-cosine 0.999``) layers measured slower are refused with the measured ratio.
- Observed, not a finding: fold-constants evaluates a float ``Range`` as the spec says (``start + i * delta``)
  while ONNX Runtime accumulates ``delta``: ``Range(0, 8000, 0.7)`` ends at 7999.6 folded, 8000.49 in ORT (past
  its limit); the fold is rolled back there (max |d| 0.887, rel 1.1e-4), and ``Range(0.1, 3000, 0.3)``'s
  (rel 9.7e-5) ships within the exact passes' 1e-4.
- The API leaves a given ``ir.Model`` or ``ModelProto`` unchanged; the CLI leaves its input file
  byte-identical (sha256 of ``bert_legacy.onnx`` before and after).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from optimizer.api import optimize_with_report
from passes.constant_folding import FoldConstantsPass
from tests.helpers import parse_model


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _records(report) -> dict:
    return {record.name: record for record in report.passes}


def _ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in ir.traversal.RecursiveGraphIterator(model.graph)]


# -- fold-constants and overridable inputs ------------------------------------------------------------------

_DROPOUT_WITH_DEFAULT = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[2, 3] x, bool t) => (float[2, 3] y)
    <bool t = {0}, float r = {0.5}, float[3] w = {1.0, 2.0, 3.0}, float two = {2.0}> {
      d = Dropout(x, r, t)
      w2 = Mul(w, two)
      y = Add(d, w2)
    }"""


def test_an_overridable_input_is_not_folded_and_the_other_folds_stay():
    model = parse_model(_DROPOUT_WITH_DEFAULT)
    optimized, report = optimize_with_report(model.clone())
    record = _records(report)["fold-constants"]
    # The report promises it: "what reads them is left unfolded"; Mul(w, two) is still a constant to fold.
    assert record.status == "applied", f"fold-constants {record.status}: {record.detail[-200:]}"
    assert "Dropout" in _ops(optimized) and "Mul" not in _ops(optimized)
    assert optimized.graph.initializers["t"].const_value is not None


def test_unverified_folding_keeps_an_overridable_input_overridable():
    model = parse_model(_DROPOUT_WITH_DEFAULT)
    optimized, _ = optimize_with_report(model.clone(), verify=False)
    assert "t" in optimized.graph.initializers, "the default of input t was deleted: t is now required"
    assert "Dropout" in _ops(optimized), "Dropout was removed: feeding t=True no longer drops anything"
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(_run(optimized, {"x": x})[0], _run(model, {"x": x})[0])


def _identity_branch() -> onnx.GraphProto:
    output = helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [4])
    return helper.make_graph([helper.make_node("Identity", ["x"], ["e_out"])], "else", [], [output])


def _if_on_overridable_condition() -> ir.Model:
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["then_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [3])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["w"], ["else_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [3])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("If", ["c"], ["chosen"], then_branch=then_branch, else_branch=else_branch),
            helper.make_node("Add", ["x", "chosen"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [3], [1, 2, 3]),
            helper.make_tensor("c", TensorProto.BOOL, [], [True]),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def test_an_if_on_an_overridable_condition_is_not_inlined():
    model = _if_on_overridable_condition()
    folded = FoldConstantsPass()(model.clone()).model
    x = np.zeros(3, np.float32)
    assert "If" in _ops(folded), "the If was inlined on the condition's default"
    feeds = {"x": x, "c": np.array(False)}
    np.testing.assert_array_equal(_run(folded, feeds)[0], _run(model, feeds)[0])


# -- fold-constants and random ops ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "random"), [("Bernoulli", "r = Bernoulli<dtype = 1>(p)"), ("Dropout", "r = Dropout(p, ratio, train)")]
)
def test_random_ops_are_not_folded(kind, random):
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y)
        <float[2, 3] p = {{0.5, 0.5, 0.5, 0.5, 0.5, 0.5}}, float ratio = {{0.5}}, bool train = {{1}}> {{
          {random}
          y = Add(x, r)
        }}""")
    folded = FoldConstantsPass()(model.clone()).model
    assert kind in _ops(folded), f"{kind} was folded into a constant draw"


def test_a_random_op_in_an_untaken_branch_is_not_frozen():
    p = helper.make_tensor("p", TensorProto.FLOAT, [4], [0.5] * 4)
    then_branch = helper.make_graph(
        [helper.make_node("Bernoulli", ["p"], ["mask"], dtype=1), helper.make_node("Mul", ["x", "mask"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [4])],
    )
    else_branch = _identity_branch()
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
            helper.make_node("Greater", ["m", "big"], ["c"]),
            helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [p, helper.make_tensor("big", TensorProto.FLOAT, [], [1e6])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    optimized, report = optimize_with_report(model.clone())
    assert _records(report)["fold-constants"].status in ("applied", "unchanged")  # verified on the other branch
    # A dropout-style mask: each run draws anew in the original; a frozen mask gives one answer forever.
    session = ort.InferenceSession(ir.to_proto(optimized).SerializeToString(), providers=["CPUExecutionProvider"])
    draws = {tuple(session.run(None, {"x": np.full(4, 2e6, np.float32)})[0]) for _ in range(20)}
    assert "Bernoulli" in _ops(optimized) and len(draws) > 1, "the random mask was frozen into a constant"


# -- merge-subexpressions and random ops ---------------------------------------------------------------------


def test_two_training_mode_dropouts_are_not_merged():
    from passes.cleanup import EliminateCommonSubexpressionsPass

    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 3] p) => (float[2, 3] y) <float ratio = {0.5}, bool train = {1}> {
          a = Dropout(p, ratio, train)
          b = Dropout(p, ratio, train)
          y = Sub(a, b)
        }""")
    merged = EliminateCommonSubexpressionsPass()(model.clone()).model
    # Two independent masks: a - b is not zero everywhere (ONNX Runtime draws them apart too).
    assert _ops(merged).count("Dropout") == 2, "the two dropout masks became one"


# -- simplify-ops: onnxscript's Clip/Relu fusions ------------------------------------------------------------

_X = np.linspace(-3, 3, 6, dtype=np.float32).reshape(2, 3)


def _clip_chain(body: str) -> ir.Model:
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y)
        <float lo = {{-2.0}}, float hi = {{-0.5}}, float lo2 = {{0.5}}, float hi2 = {{1.0}}> {{
          {body}
        }}""")
    model.graph.node(0).outputs[0].dtype = ir.DataType.FLOAT  # as after shape inference (see the crash below)
    return model


@pytest.mark.parametrize(
    "body", ["m = Clip(x, lo, hi)\n y = Relu(m)", "m = Clip(x, lo, hi)\n y = Clip(m, lo2, hi2)"], ids=["relu", "clip"]
)
def test_clip_fusions_keep_disjoint_ranges(body):
    from passes.op_simplification import SimplifyOpsPass

    model = _clip_chain(body)
    simplified = SimplifyOpsPass()(model.clone()).model
    np.testing.assert_array_equal(_run(simplified, {"x": _X})[0], _run(model, {"x": _X})[0])


def test_a_wrong_rewrite_in_an_untaken_branch_is_not_shipped_as_verified():
    then_branch = helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["clipped"]), helper.make_node("Relu", ["clipped"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [4])],
        value_info=[helper.make_tensor_value_info("clipped", TensorProto.FLOAT, [4])],
    )
    else_branch = _identity_branch()
    constants = [("big", 1e6), ("lo", -2.0), ("hi", -0.5)]
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
            helper.make_node("Greater", ["m", "big"], ["c"]),
            helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [helper.make_tensor(name, TensorProto.FLOAT, [], [value]) for name, value in constants],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    optimized, report = optimize_with_report(model.clone())
    assert _records(report)["simplify-ops"].status in ("applied", "unchanged", "rolled back")
    large = {"x": np.full(4, 2e6, np.float32)}  # takes the branch: Relu of values clipped to [-2, -0.5] is 0
    np.testing.assert_array_equal(_run(optimized, large)[0], _run(model, large)[0])


def test_a_clip_chain_of_unknown_dtype_does_not_fail_the_pass():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y) <float lo = {-2.0}, float hi = {2.0}, float zero = {0.0}> {
          r = Relu(x)
          y0 = Clip(r, lo, hi)
          y = Add(y0, zero)
        }""")
    _, report = optimize_with_report(model.clone())
    record = _records(report)["simplify-ops"]
    assert record.status == "applied", f"simplify-ops {record.status}: {record.detail[-160:]}"


@pytest.mark.parametrize("reduction", ["add", "mul", "max"])
def test_a_reducing_scatter_over_every_row_is_not_replaced_by_its_updates(reduction):
    from passes.op_simplification import SimplifyOpsPass

    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3] x, float[2, 3] u) => (float[2, 3] y) <int64[2, 1] rows = {{0, 1}}> {{
          y = ScatterND<reduction = "{reduction}">(x, rows, u)
        }}""")
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 3)).astype(np.float32), "u": rng.standard_normal((2, 3)).astype(np.float32)}
    simplified = SimplifyOpsPass()(model.clone()).model
    np.testing.assert_array_equal(_run(simplified, feeds)[0], _run(model, feeds)[0])


@pytest.mark.parametrize(("value", "to"), [("-1.0", 2), ("300.0", 3), ("1e10", 6)], ids=["uint8", "int8", "int32"])
def test_a_constant_of_shape_cast_out_of_range_does_not_fail_the_pass(value, to):
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 3] x) => (float[N, 3] y) <float zero = {{0.0}}> {{
          shape = Shape(x)
          filled = ConstantOfShape<value = float[1] {{{value}}}>(shape)
          cast = Cast<to = {to}>(filled)
          back = Cast<to = 1>(cast)
          sum = Add(x, back)
          y = Add(sum, zero)
        }}""")
    optimized, report = optimize_with_report(model.clone())
    record = _records(report)["simplify-ops"]
    assert record.status == "applied", f"simplify-ops {record.status}: {record.detail[-160:]}"
    x = np.zeros((2, 3), np.float32)
    np.testing.assert_array_equal(_run(optimized, {"x": x})[0], _run(model, {"x": x})[0])

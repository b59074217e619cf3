"""A hostile review of the default pipeline's small exact passes (session 55): remove-identity,
merge-subexpressions, lift-constants, share-transposed-initializers, deduplicate-initializers, remove-unused,
and how they meet fold-constants, run as a user runs them (``optimizer.api``) and compared on ONNX Runtime.

Findings, each fixed and tested here:

1. merge-subexpressions merged ``Constant<value_float = -0.0>`` into ``Constant<value_float = 0.0>`` (onnx-ir
   compares attributes with Python's ``==``, and ``-0.0 == 0.0``; a function call's float attribute likewise):
   ``x / c`` became +inf where the model gives -inf. Read in the main graph, verification rolled the whole pass
   back; read only in an ``If`` branch the verification inputs never take, the wrong model shipped "applied".
2. merge-subexpressions on a graph that lists one output twice: onnx-ir's CSE renamed the kept value to that
   output and added an Identity of the same name for the second listing, so the name was defined twice. Under
   ``--no-verify`` that file was written (exit 0) and ONNX Runtime refuses it ("Duplicate definition of name");
   verified, the whole pass was rolled back.
3. merge-subexpressions failed (``TypeError: unhashable type: 'TypeAndShape'``) on any model with an
   ``Optional<type = ...>`` node: every merge in the model was lost.
4. remove-identity, and fold-constants (onnxscript's folder does the same), renamed ``x`` of ``y = Identity(x)``
   to the graph output ``y`` and merged ``y``'s declared shape into it. An output declared static over a dynamic
   computation (an input made dynamic by hand, the outputs left as exported) then sat on a value other nodes
   read, and ONNX Runtime as deployed (``ORT_ENABLE_ALL``) folds ``Shape(x)`` to the declared size: 3 at every
   length. Verification runs with ONNX Runtime's optimizations off and reported the passes applied. A
   declaration of another rank than ``x``'s made remove-identity fail (``ValueError``).
5. A Loop or Scan body whose input is named like an outer value (onnx's full checker and ONNX Runtime accept the
   shadowing) reads its own value under that name. deduplicate-initializers (and merge-subexpressions' merge of
   small initializers), merge-subexpressions and remove-identity rewire a read to another value by object, and
   the file names it: a body's ``Add(w, w2)`` became ``Add(w, w)`` of the body's own ``w``. In an If branch the
   verification inputs never take, the wrong model shipped "applied"; in the main graph each pass was rolled
   back whole. A value with a name two graphs define is now left alone (``passes._utils.names_defined_twice``).

Held (checked, no test): Identity chains ending at graph outputs, outputs listed twice, an output that is an
input or an initializer, Identity copies in Loop/Scan bodies and If branches (outer values, carried state);
overridable initializers (never merged, deduplicated or shared; overriding them gives the original's outputs);
a local function called with different attributes (not merged), with the same ones (merged, exactly); functions
called only from a branch or from another function, and their opsets, kept by remove-unused; random ops,
training-mode Dropout, calls of drawing functions never merged; equal initializers of another dtype or shape,
-0.0 against 0.0 and NaN payloads never deduplicated; string initializers and Constants (deduplicated
exactly); sparse initializers (densified, exact); a Constant with ``sparse_value`` (a one-line refusal); sibling
branches defining the same names; Split's unused outputs (kept, so the split is the same).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, parser

from optimizer.api import optimize_with_report
from tests.helpers import assert_deployed_equal, run_deployed


def _assert_same(original: onnx.ModelProto, optimized: onnx.ModelProto, feeds_list: list[dict]) -> None:
    """Equal outputs, bit for bit (the sign of an infinity or a zero included), as deployed (ORT_ENABLE_ALL)."""
    assert_deployed_equal(original, optimized, feeds_list, signs=True)


def _status(report, name: str) -> str:
    return next(record.status for record in report.passes if record.name == name)


# --- 1. -0.0 and 0.0 are two constants ------------------------------------------------------------------------

_SIGNED_ZEROS_IN_BRANCHES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) {
  pos = Constant<value_float = 0.0>()
  neg = Constant<value_float = -0.0>()
  s = ReduceSum<keepdims=0>(x)
  big = Constant<value_float = 1000.0>()
  c = Greater(s, big)
  y = If(c) <then_branch = t () => (float[2] ty) { ty = Div(x, neg) },
             else_branch = e () => (float[2] ey) { ey = Div(x, pos) }>
}"""


def test_a_negative_zero_constant_read_in_an_untaken_branch_is_not_merged_into_zero():
    model = parser.parse_model(_SIGNED_ZEROS_IN_BRANCHES)
    optimized, _ = optimize_with_report(model)
    small, large = np.array([1, -2], np.float32), np.array([1000, 2000], np.float32)
    assert [float(v) for v in run_deployed(model, {"x": large})[0]] == [-np.inf, -np.inf]
    _assert_same(model, optimized, [{"x": small}, {"x": large}])


def test_calls_with_negative_and_positive_zero_attributes_are_not_merged():
    model = parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x) => (float[2] y, float[2] z, float[2] w) {
          y = local.f<alpha = 0.0>(x)
          z = local.f<alpha = -0.0>(x)
          w = local.f<alpha = -0.0>(x)
        }
        <domain: "local", opset_import: ["" : 17]>
        f <alpha> (a) => (b) { c = Constant<value_float: float = @alpha>() b = Div(a, c) }
        """)
    optimized, report = optimize_with_report(model, ["merge-subexpressions"], verify=False)
    _assert_same(model, optimized, [{"x": np.array([1, -2], np.float32)}])
    assert [node.op_type for node in optimized.graph.node] == ["f", "f", "f"]


# --- 2. an output listed twice -------------------------------------------------------------------------------

_OUTPUT_LISTED_TWICE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y, float[2] z, float[2] z) {
  y = Relu(x)
  z = Relu(x)
}"""


def test_merging_into_an_output_listed_twice_writes_a_model_onnx_runtime_runs():
    model = parser.parse_model(_OUTPUT_LISTED_TWICE)
    optimized, report = optimize_with_report(model, verify=False)
    _assert_same(model, optimized, [{"x": np.array([1, -2], np.float32)}])
    optimized, report = optimize_with_report(model)
    assert _status(report, "merge-subexpressions") != "rolled back"
    _assert_same(model, optimized, [{"x": np.array([1, -2], np.float32)}])


# --- 3. an attribute onnx-ir cannot hash -----------------------------------------------------------------------


def test_merge_subexpressions_runs_on_a_model_with_an_optional_type_attribute():
    model = parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[2] x) => (bool h, float[2] y) {
          h = OptionalHasElement(o)
          a = Relu(x)
          b = Relu(x)
          y = Add(a, b)
        }""")
    empty = helper.make_node("Optional", [], ["o"], type=helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [2]))
    model.graph.node.insert(0, empty)
    optimized, report = optimize_with_report(model, ["merge-subexpressions"])
    assert _status(report, "merge-subexpressions") == "applied"
    assert [node.op_type for node in optimized.graph.node].count("Relu") == 1
    _assert_same(model, optimized, [{"x": np.array([1, -2], np.float32)}])


# --- 4. an Identity onto an output declared static over a dynamic computation ---------------------------------

_STATIC_OUTPUT_OVER_DYNAMIC_INPUT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N] x) => (float[3] y, int64[1] z) {
  r = Relu(x)
  y = Identity(r)
  z = Shape(r)
}"""


def test_a_stale_output_declaration_is_not_moved_onto_a_value_shape_reads():
    model = parser.parse_model(_STATIC_OUTPUT_OVER_DYNAMIC_INPUT)
    feeds = [{"x": np.ones(5, np.float32)}, {"x": np.ones(1, np.float32)}]
    assert run_deployed(model, feeds[0])[1].tolist() == [5]
    for passes in (None, ["remove-identity"], ["fold-constants"]):
        optimized, report = optimize_with_report(model, passes)
        _assert_same(model, optimized, feeds)
        optimized, report = optimize_with_report(model, passes, verify=False)
        _assert_same(model, optimized, feeds)


def test_an_identity_whose_input_is_declared_of_another_rank_does_not_fail_the_pass():
    model = parser.parse_model(_STATIC_OUTPUT_OVER_DYNAMIC_INPUT.replace("float[3] y", "float[1,N] y"))
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, ["N"]))
    optimized, report = optimize_with_report(model, ["remove-identity"])
    assert _status(report, "remove-identity") == "unchanged"
    _assert_same(model, optimized, [{"x": np.ones(5, np.float32)}])


def test_an_identity_onto_an_output_that_nothing_else_reads_is_still_removed():
    model = parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N] x) => (float[3] y) {
          r = Relu(x)
          y = Identity(r)
        }""")
    optimized, report = optimize_with_report(model, ["remove-identity"])
    assert _status(report, "remove-identity") == "applied"
    assert [node.op_type for node in optimized.graph.node] == ["Relu"]


# --- 5. a name a Loop body's input shadows ---------------------------------------------------------------------

# The rare branch holds a Loop whose body input ``w`` shadows the outer ``w`` and reads the outer ``w2``: pointed at
# the outer ``w``, the read names the body's own.
_SHADOWED_IN_A_RARE_BRANCH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y, float[2] u) {INITIALIZERS} {
  {DEFINE}
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

_SHADOWING = {
    # two equal initializers (deduplicate-initializers, and merge-subexpressions' merge of small ones)
    "equal initializers": ("<float[2] w = {1, 2}, float[2] w2 = {1, 2}>", ""),
    # two equal computations (merge-subexpressions)
    "equal computations": ("", "w = Relu(x)\n  w2 = Relu(x)"),
    # an Identity (remove-identity)
    "an identity": ("", "w = Relu(x)\n  w2 = Identity(w)"),
}


@pytest.mark.parametrize(("initializers", "define"), list(_SHADOWING.values()), ids=list(_SHADOWING))
def test_a_read_inside_a_body_is_not_pointed_at_a_name_the_body_shadows(initializers, define):
    text = _SHADOWED_IN_A_RARE_BRANCH.replace("{INITIALIZERS}", initializers).replace("{DEFINE}", define)
    model = parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)  # onnx accepts the shadowing body input
    feeds = [{"x": np.array([1, 2], np.float32)}, {"x": np.array([1000, 2000], np.float32)}]
    optimized, report = optimize_with_report(model)
    _assert_same(model, optimized, feeds)
    optimized, report = optimize_with_report(model, verify=False)
    _assert_same(model, optimized, feeds)


def test_values_a_body_defines_under_an_outer_name_are_renamed_when_loaded():
    # The general fix behind the guards above: every pass of the pipeline (fusions, folds) rewires reads by
    # object, so once no subgraph name shadows an outer one none can capture a read. The model computes the same.
    from optimizer.model_io import rename_shadowing_values

    text = _SHADOWED_IN_A_RARE_BRANCH.replace("{INITIALIZERS}", _SHADOWING["equal initializers"][0]).replace(
        "{DEFINE}", ""
    )
    model = ir.from_proto(parser.parse_model(text))
    assert rename_shadowing_values(model) == 1
    names = [
        value.name
        for graph in model.graphs()
        if graph is not model.graph
        for value in (*graph.inputs, *(out for node in graph for out in node.outputs))
    ]
    assert "w" not in names and "w__scope" in names
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    feeds = [{"x": np.array([1, 2], np.float32)}, {"x": np.array([1000, 2000], np.float32)}]
    _assert_same(parser.parse_model(text), proto, feeds)
    assert rename_shadowing_values(model) == 0

"""remove-identity, merge-subexpressions and remove-unused on hand-built graphs and exported models."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.inputs import make_inputs
from passes._utils import remove_dead_nodes
from passes.cleanup import (
    EliminateCommonSubexpressionsPass,
    LiftConstantsPass,
    RemoveIdentityPass,
    RemoveUnusedPass,
)
from tests.helpers import assert_same_outputs, op_types, parse_model

X = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}


def test_identity_chain_is_removed():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) {
          a = Identity(x)
          b = Identity(a)
          y = Add(b, a)
        }""")
    after = RemoveIdentityPass()(model.clone()).model
    assert op_types(after) == ["Add"]
    assert_same_outputs(model, after, X)


def test_identity_between_input_and_output_is_kept():
    # Both names are part of the signature: removing the node would rename one.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) {
          y = Identity(x)
        }""")
    result = RemoveIdentityPass()(model.clone())
    assert not result.modified
    assert op_types(result.model) == ["Identity"]


def test_common_subexpressions_are_merged():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) {
          a = Relu(x)
          b = Relu(x)
          y = Add(a, b)
        }""")
    after = EliminateCommonSubexpressionsPass()(model.clone()).model
    assert op_types(after) == ["Relu", "Add"]
    assert_same_outputs(model, after, X)


def test_random_ops_are_not_merged():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) {
          a = RandomUniformLike(x)
          b = RandomUniformLike(x)
          y = Add(a, b)
        }""")
    result = EliminateCommonSubexpressionsPass()(model.clone())
    assert op_types(result.model).count("RandomUniformLike") == 2


def test_dead_nodes_initializers_and_opsets_are_removed():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17, "com.microsoft" : 1]>
        g (float[N, 4] x) => (float[N, 4] y)
        <float[4] unused_weight = {1.0, 2.0, 3.0, 4.0}, float[4] bias = {1.0, 1.0, 1.0, 1.0}> {
          dead = Mul(x, unused_weight)
          dead2 = Relu(dead)
          y = Add(x, bias)
        }""")
    after = RemoveUnusedPass()(model.clone()).model
    assert op_types(after) == ["Add"]
    assert list(after.graph.initializers) == ["bias"]
    assert "com.microsoft" not in after.opset_imports
    assert_same_outputs(model, after, X)


def test_unused_graph_input_is_kept():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x, float[N, 4] unused) => (float[N, 4] y) {
          y = Relu(x)
        }""")
    after = RemoveUnusedPass()(model.clone()).model
    assert [value.name for value in after.graph.inputs] == ["x", "unused"]


def test_cleanup_on_exported_models(exported_model):
    name, model = exported_model
    inputs = make_inputs(model, {"sequence": 16})
    after = model.clone()
    for cleanup in (RemoveIdentityPass(), EliminateCommonSubexpressionsPass(), RemoveUnusedPass()):
        after = cleanup(after).model
    assert len(after.graph) < len(model.graph), name
    assert "Identity" not in op_types(after)
    assert_same_outputs(model, after, inputs)


def test_identity_copying_one_graph_output_to_another_is_kept():
    # onnx-ir merges the two outputs here, which broke Scan bodies in the ONNX corpus.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] total, float[N, 4] copy) {
          total = Relu(x)
          copy = Identity(total)
        }""")
    result = RemoveIdentityPass()(model.clone())
    assert op_types(result.model) == ["Relu", "Identity"]
    assert [value.name for value in result.model.graph.outputs] == ["total", "copy"]


def test_identity_returning_an_outer_value_from_a_branch_is_kept():
    # ONNX Runtime rejects a subgraph that returns an outer-scope value directly.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (bool cond, float[4] x) => (float[4] y) {
          doubled = Add(x, x)
          y = If(cond) <
            then_branch = then_g () => (float[4] out) { out = Identity(doubled) },
            else_branch = else_g () => (float[4] out2) { out2 = Neg(x) }
          >
        }""")
    after = RemoveIdentityPass()(model.clone()).model
    inputs = {"cond": np.array(True), "x": np.arange(4, dtype=np.float32)}
    assert_same_outputs(model, after, inputs)


def test_constants_become_initializers():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) {
          bias = Constant<value = float[4] {1.0, 2.0, 3.0, 4.0}>()
          y = Add(x, bias)
        }""")
    after = LiftConstantsPass()(model.clone()).model
    assert op_types(after) == ["Add"]
    assert after.graph.initializers["bias"].const_value.numpy().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert_same_outputs(model, after, X)


def test_unused_initializers_of_bodies_are_removed_and_read_ones_kept():
    # onnx-ir's dead code pass removes only the main graph's; ORT warns about each one
    # left in a body. ``nested_only`` is read only inside the If nested in the Loop body,
    # ``dead_reader`` only by a dead node, and ``w_out`` is a branch's output itself.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (int64 n, bool cond, float[2] x) => (float[2] y, float[2] z) <float[2] outer_dead = {0.0, 0.0}> {
          y = Loop(n, , x) <body = body (int64 i, bool c_in, float[2] x_in) => (bool c_out, float[2] x_out)
              <float[2] used = {1.0, 2.0}, float[2] unused = {5.0, 6.0}, float[2] nested_only = {3.0, 4.0},
               float[2] dead_reader = {7.0, 8.0}> {
            c_out = Identity(c_in)
            dead = Mul(x_in, dead_reader)
            inner = If(c_in) <
              then_branch = then_g () => (float[2] a) { a = Add(x_in, nested_only) },
              else_branch = else_g () => (float[2] b) { b = Neg(x_in) }
            >
            x_out = Add(inner, used)
          }>
          z = If(cond) <
            then_branch = then_z () => (float[2] w_out) <float[2] w_out = {9.0, 9.0}> { },
            else_branch = else_z () => (float[2] v) { v = Neg(x) }
          >
        }""")
    result = RemoveUnusedPass()(model.clone())
    assert result.modified
    loop, branch = result.model.graph
    body = loop.attributes["body"].as_graph()
    assert sorted(body.initializers) == ["nested_only", "used"]
    assert [node.op_type for node in body] == ["Identity", "If", "Add"]
    assert list(branch.attributes["then_branch"].as_graph().initializers) == ["w_out"]
    assert not result.model.graph.initializers
    for cond in (True, False):
        inputs = {"n": np.array(3), "cond": np.array(cond), "x": np.arange(2, dtype=np.float32)}
        assert_same_outputs(model, result.model, inputs)


def test_a_model_whose_bodies_have_nothing_unused_is_unchanged():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (bool cond, float[2] x) => (float[2] z) {
          z = If(cond) <
            then_branch = then_z () => (float[2] a) <float[2] w = {9.0, 9.0}> { a = Add(x, w) },
            else_branch = else_z () => (float[2] v) { v = Neg(x) }
          >
        }""")
    result = RemoveUnusedPass()(model.clone())
    assert not result.modified
    assert list(result.model.graph.node(0).attributes["then_branch"].as_graph().initializers) == ["w"]


BRANCH_BODY = """then_g () => (float[2] t) <float[2] two = {2.0, 2.0}, float[2] nested_w = {3.0, 4.0}> {
              doubled = Mul(x, two)
              inner = If(c) <
                then_branch = inner_then () => (float[2] p) { p = Add(doubled, nested_w) },
                else_branch = inner_else () => (float[2] q) { q = Neg(doubled) }
              >
              t = Abs(inner)
            }"""
BRANCH_IN_MAIN = f"""
    <ir_version: 9, opset_import: ["" : 17]>
    g (bool c, float[2] x) => (float[2] y) {{
      y = If(c) <then_branch = {BRANCH_BODY}, else_branch = else_g () => (float[2] e) {{ e = Neg(x) }}>
    }}"""
BRANCH_IN_FUNCTION = f"""
    <ir_version: 9, opset_import: ["" : 17, "local" : 1]>
    g (bool c, float[2] x) => (float[2] y) {{ y = local.Block(c, x) }}
    <domain: "local", opset_import: ["" : 17]>
    Block (c, x) => (y) {{
      y = If(c) <then_branch = {BRANCH_BODY}, else_branch = else_g () => (float[2] e) {{ e = Neg(x) }}>
    }}"""


@pytest.mark.parametrize("text", [BRANCH_IN_MAIN, BRANCH_IN_FUNCTION], ids=["main graph", "function"])
def test_remove_dead_nodes_deletes_what_a_rewrite_left_unread_in_a_branch(text):
    # A review: remove_dead_nodes (what every fusion calls after its rewrites) deleted the dead Mul but kept the
    # initializer only it read, in a branch of the main graph or of a function, until a later remove-unused
    # pass; a pass's row in the report then showed a weight it had made dead. ``nested_w`` is read only inside
    # the If nested in the branch: used, it stays.
    model = parse_model(text)
    rewritten = model.clone()
    holder = next(iter(rewritten.functions.values())).graph if rewritten.functions else rewritten.graph
    branch = holder.node(0).attributes["then_branch"].as_graph()
    mul = branch.node(0)
    x = mul.inputs[0]
    fused = ir.node("Add", [x, x], name="fused")  # x * 2 as a fusion would spell it
    branch.insert_after(mul, fused)
    mul.outputs[0].replace_all_uses_with(fused.outputs[0])
    modified = remove_dead_nodes(rewritten)
    assert [node.op_type for node in branch] == ["Add", "If", "Abs"]
    assert list(branch.initializers) == ["nested_w"]
    assert modified
    assert not remove_dead_nodes(rewritten)  # nothing left to delete: an honest modified flag
    for c in (True, False):
        assert_same_outputs(model, rewritten, {"c": np.array(c), "x": np.array([1.0, -2.0], np.float32)})


def test_remove_dead_nodes_deletes_initializers_read_only_inside_a_deleted_node():
    # onnx-ir's dead code pass deletes a dead If but its branches' nodes still count as readers, so the main
    # graph's ``w`` and the Loop body's ``v``, read only inside a dead If's branch, were kept (and written).
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (int64 n, bool c, float[2] x) => (float[2] y) <float[2] w = {1.0, 2.0}> {
          dead = If(c) <
            then_branch = t () => (float[2] a) { a = Add(x, w) }, else_branch = e () => (float[2] b) { b = Neg(x) }
          >
          y = Loop(n, , x) <body = body (int64 i, bool c_in, float[2] x_in) => (bool c_out, float[2] x_out)
              <float[2] v = {3.0, 4.0}> {
            c_out = Identity(c_in)
            gone = If(c_in) <
              then_branch = t2 () => (float[2] p) { p = Mul(x_in, v) },
              else_branch = e2 () => (float[2] q) { q = Neg(x_in) }
            >
            x_out = Neg(x_in)
          }>
        }""")
    after = model.clone()
    modified = remove_dead_nodes(after)
    loop = after.graph.node(0)
    assert op_types(after) == ["Loop"]
    assert [node.op_type for node in loop.attributes["body"].as_graph()] == ["Identity", "Neg"]
    assert not after.graph.initializers
    assert not loop.attributes["body"].as_graph().initializers
    assert modified
    inputs = {"n": np.array(2), "c": np.array(True), "x": np.arange(2, dtype=np.float32)}
    assert_same_outputs(model, after, inputs)


def test_computations_reading_equal_small_initializers_are_merged():
    # The dynamo exporter writes a scalar per use: Range(0, n, 1) twice reads two 0s and two 1s. onnx-ir's CSE
    # compares inputs by identity; they were merged only by a second run, after deduplicate-initializers.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (int64 n) => (int64[M] y) <int64 start_a = {0}, int64 step_a = {1}, int64 start_b = {0}, int64 step_b = {1}> {
          a = Range(start_a, n, step_a)
          b = Range(start_b, n, step_b)
          y = Add(a, b)
        }""")
    after = EliminateCommonSubexpressionsPass()(model.clone()).model
    assert op_types(after) == ["Range", "Add"]
    assert sorted(after.graph.initializers) == ["start_a", "step_a"]
    assert_same_outputs(model, after, {"n": np.array(5, np.int64)})


def test_an_initializer_that_is_a_graph_input_is_not_merged_with_an_equal_one():
    # A graph input's initializer is a default a caller may override.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2] x, float[2] bias) => (float[2] y) <float[2] bias = {1.0, 2.0}, float[2] fixed = {1.0, 2.0}> {
          a = Add(x, bias)
          b = Add(x, fixed)
          y = Mul(a, b)
        }""")
    after = EliminateCommonSubexpressionsPass()(model.clone()).model
    assert op_types(after) == ["Add", "Add", "Mul"]
    assert sorted(after.graph.initializers) == ["bias", "fixed"]

"""simplify-shapes: run-time Reshape/Expand targets become constants, shapes stay dynamic."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.inputs import make_inputs
from passes.constant_folding import FoldConstantsPass
from passes.shape_simplification import ShapeSimplificationPass
from tests.helpers import assert_same_outputs, op_types, parse_model

# The attention head split a legacy export emits: [B, S, 64] -> [B, S, 4, 16], with B
# and S read from another tensor (the hidden states) at run time.
SPLIT_HEADS = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[batch, sequence, 64] hidden) => (float[batch, sequence, 4, 16] y)
    <float[64, 64] w = {WEIGHTS}> {
      projected = MatMul(hidden, w)
      shape = Shape(hidden)
      i0 = Constant<value = int64 {0}>()
      i1 = Constant<value = int64 {1}>()
      axes = Constant<value = int64[1] {0}>()
      b = Gather<axis = 0>(shape, i0)
      s = Gather<axis = 0>(shape, i1)
      b1 = Unsqueeze(b, axes)
      s1 = Unsqueeze(s, axes)
      heads = Constant<value = int64[1] {4}>()
      size = Constant<value = int64[1] {16}>()
      target = Concat<axis = 0>(b1, s1, heads, size)
      y = Reshape<allowzero = ALLOWZERO>(projected, target)
    }"""


def _split_heads(allowzero: int = 0) -> ir.Model:
    weights = ", ".join(f"{v:.3f}" for v in np.random.default_rng(0).standard_normal(64 * 64))
    return parse_model(SPLIT_HEADS.replace("{WEIGHTS}", "{" + weights + "}").replace("ALLOWZERO", str(allowzero)))


def _hidden(batch: int, sequence: int) -> dict[str, np.ndarray]:
    return {"hidden": np.random.default_rng(1).standard_normal((batch, sequence, 64)).astype(np.float32)}


@pytest.mark.parametrize("allowzero", [0, 1])
def test_split_heads_target_becomes_constant(allowzero):
    model = _split_heads(allowzero)
    result = ShapeSimplificationPass()(model.clone())
    assert result.modified
    assert op_types(result.model) == ["MatMul", "Reshape"]
    reshape = result.model.graph.node(1)
    assert reshape.inputs[1].const_value.numpy().tolist() == [0, 0, 4, 16]
    assert reshape.attributes.get_int("allowzero", 0) == 0
    # Still dynamic: the same graph works for other batch and sequence sizes.
    for batch, sequence in [(1, 5), (3, 17)]:
        assert_same_outputs(model, result.model, _hidden(batch, sequence))


def test_merge_heads_uses_minus_one_for_the_product():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[batch, sequence, 4, 16] context, float[batch, sequence, 64] hidden) => (float[batch, sequence, 64] y) {
          shape = Shape(hidden)
          starts = Constant<value = int64[1] {0}>()
          ends = Constant<value = int64[1] {2}>()
          first_two = Slice(shape, starts, ends)
          minus = Constant<value = int64[1] {-1}>()
          target = Concat<axis = 0>(first_two, minus)
          y = Reshape(context, target)
        }""")
    result = ShapeSimplificationPass()(model.clone())
    assert op_types(result.model) == ["Reshape"]
    assert result.model.graph.node(0).inputs[1].const_value.numpy().tolist() == [0, 0, -1]
    rng = np.random.default_rng(2)
    inputs = {
        "context": rng.standard_normal((2, 7, 4, 16)).astype(np.float32),
        "hidden": rng.standard_normal((2, 7, 64)).astype(np.float32),
    }
    assert_same_outputs(model, result.model, inputs)


def test_reshape_with_two_unknown_elements_is_left_alone():
    # [B*S, 192] -> [B, S, 192]: neither B nor S is a dim of the input, so no constant
    # target can express it.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[rows, 8] flat, float[batch, sequence, 8] like) => (float[batch, sequence, 8] y) {
          shape = Shape(like)
          target = Identity(shape)
          y = Reshape(flat, target)
        }""")
    result = ShapeSimplificationPass()(model.clone())
    assert not result.modified


def test_allowzero_with_literal_zero_is_left_alone():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[batch, 0, 4] x) => (float[batch, 0] y) {
          shape = Shape(x)
          i0 = Constant<value = int64[1] {0}>()
          b = Gather<axis = 0>(shape, i0)
          zero = Constant<value = int64[1] {0}>()
          target = Concat<axis = 0>(b, zero)
          y = Reshape<allowzero = 1>(x, target)
        }""")
    result = ShapeSimplificationPass()(model.clone())
    assert not result.modified


def test_expand_keeps_input_dims_with_one():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[batch, 1, sequence] mask, float[batch, 4, sequence] scores) => (float[batch, 4, sequence] y) {
          shape = Shape(scores)
          e = Expand(mask, shape)
          y = Add(e, scores)
        }""")
    result = ShapeSimplificationPass()(model.clone())
    assert op_types(result.model) == ["Expand", "Add"]
    assert result.model.graph.node(0).inputs[1].const_value.numpy().tolist() == [1, 4, 1]
    rng = np.random.default_rng(3)
    inputs = {
        "mask": rng.standard_normal((3, 1, 5)).astype(np.float32),
        "scores": rng.standard_normal((3, 4, 5)).astype(np.float32),
    }
    assert_same_outputs(model, result.model, inputs)


def test_two_input_dims_that_only_broadcast_are_not_taken_as_equal():
    # A review: n and m broadcast in Add (one may be 1), and ORT's inference merges them; the Expand to
    # Shape(y) was rewritten to [1, 4], keeping x's own n = 1 where the original expands to m = 3.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[n, 4] x, float[m, 4] y) => (float[s, 4] total, float[e, 4] expanded) {
          total = Add(x, y)
          shape = Shape(y)
          expanded = Expand(x, shape)
        }""")
    result = ShapeSimplificationPass()(model.clone())
    assert not result.modified
    inputs = {"x": np.arange(4, dtype=np.float32).reshape(1, 4), "y": np.ones((3, 4), np.float32)}
    assert_same_outputs(model, result.model, inputs)


def test_exported_models_lose_their_shape_chains(exported_model):
    name, model = exported_model
    folded = FoldConstantsPass()(model.clone()).model
    result = ShapeSimplificationPass()(folded.clone())
    assert result.modified, name
    assert _computed_reshape_targets(result.model) < _computed_reshape_targets(folded)
    # Verify at two bindings of the symbolic dims: nothing may be baked in.
    for dims in ({"batch": 1, "sequence": 16}, {"batch": 3, "sequence": 9}):
        assert_same_outputs(model, result.model, make_inputs(model, dims), rtol=1e-4, atol=1e-5)


def _computed_reshape_targets(model: ir.Model) -> int:
    return sum(
        1
        for node in model.graph
        if node.op_type == "Reshape" and ir.convenience.get_const_tensor(node.inputs[1]) is None
    )

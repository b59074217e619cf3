"""Review of dbdbd93/a52e566 (fuse-attention reads ORT's symbolic shapes to leave out the mask's Expand).

ORT's symbolic inference reads two graph inputs' same-named dim_params as one symbol, while ONNX Runtime never
checks them equal at run time. A causal mask built from ``Range(0, Shape(attention_mask)[1])``, with
``attention_mask [B, S]`` declared like ``x [B, S, H]``, is proven ``[1, 1, S, S]`` that way and fused without
its Expand: fed a one-column ``attention_mask`` the original broadcasts the ``[1, 1, 1, 1]`` mask over the scores,
the fused op refuses it (``attention_bias`` dimension 2 is not S). Before dbdbd93 the Expand was written and the
two models agreed. The default pipeline reports it verified (its generated inputs give both S the same size).
Reproduction: /tmp/rev_idem/same_named_dim.py.

ORT's symbolic inference also reads an initializer that is also a graph input (a default a caller may
override) by its default: mask rows counted by ``Range(0, rows_count)``, ``rows_count`` such an input with
default 5, read a static 5 ("full-size") and lost their Expand; a caller's ``rows_count = 1`` broadcasts in the
original and is refused by the fused op. graphopt's verification never feeds such inputs. Before dbdbd93 the
Expand was written. Reproduction: /tmp/rev_idem/overridable_default.py.

a52e566 keeps the Expand of mask rows counted by an input value (merged with S), but simplify-shapes, which
trusts that merge, takes it out on a second run once pack-qkv's Attention reads x: a 1-row mask is then refused
(verification rolls the second run's simplify-shapes back; under --no-verify it stays). Not a regression of
these commits; it is why the fixed point holds only with verification. Reproduction:
/tmp/rev_idem/second_run_undoes_expand.py noverify.

The same-named-dims trust is older than these commits: on llama_kv_legacy a second default run (fold-constants,
simplify-shapes) makes the Expand of ``position_ids`` the rotary fusion wrote a no-op, reading ``position_ids
[batch, sequence]`` as batch-sized because ``input_ids`` names its dim ``batch`` too; ``position_ids [1, S]``
with batch 2, which the original broadcasts, is then refused by RotaryEmbedding. Reported verified.
Reproduction: /tmp/rev_idem/position_ids_one_row.py. ONNX's inference path of fuse-attention trusts shared
dim names the same way: a ``mask_bias`` input declared ``[B, 1, S, S]`` (``S`` also x's) is fused without an
Expand and a ``[B, 1, 1, S]`` mask is refused (the last test here).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize
from optimizer.inputs import make_inputs
from passes.fusion.attention import AttentionFusion
from passes.shape_simplification import ShapeSimplificationPass
from tests.helpers import FIXTURES, assert_same_outputs
from tests.passes.fusion._attention_graphs import attention_model, model_inputs, range_causal_mask


def _causal_mask_from_a_second_input() -> ir.Model:
    """The causal mask's length read from ``attention_mask [B, S]``, declared like ``x [B, S, H]``."""
    proto = range_causal_mask("attention_mask")
    proto.graph.input.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "S"]))
    return ir.from_proto(proto)


def _mask_rows_counted_by_an_overridable_default(rows: int) -> ir.Model:
    """The causal mask's rows ``Range(0, rows_count)``, ``rows_count`` an initializer that is also a graph input."""
    proto = range_causal_mask("x")
    proto.graph.input.append(helper.make_tensor_value_info("rows_count", TensorProto.INT64, []))
    proto.graph.initializer.append(numpy_helper.from_array(np.array(rows, np.int64), "rows_count"))
    (unsqueeze,) = [n for n in proto.graph.node if n.output[0] == "rows"]
    unsqueeze.input[0] = "row_positions"
    proto.graph.node.insert(0, helper.make_node("Range", ["zero_i", "rows_count", "one_i"], ["row_positions"]))
    return ir.from_proto(proto)


def _outputs(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    # A session of its own: graphopt's runners feed only the inputs ONNX Runtime lists, not overridable defaults.
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.xfail(
    strict=True,
    reason="dbdbd93: ORT's symbolic inference reads same-named input dims as equal, ONNX Runtime does not check "
    "them; the mask's Expand is left out and a one-column attention_mask the original broadcasts is refused",
)
def test_a_mask_sized_by_a_same_named_dim_of_another_input_keeps_its_expand():
    model = _causal_mask_from_a_second_input()
    fusion = AttentionFusion()
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    feeds = model_inputs(model)
    batch, length = feeds["x"].shape[:2]
    for columns in (length, 1):
        inputs = {**feeds, "attention_mask": np.ones((batch, columns), np.int64)}
        assert_same_outputs(model, after, inputs, rtol=1e-4, atol=1e-5)


def test_mask_rows_counted_by_an_overridable_default_keep_their_expand():
    """Review finding (fixed since): ORT's symbolic inference read an overridable default (an initializer that
    is also a graph input) by its value; mask rows it counts lost their Expand and a caller's own count of 1
    was refused."""
    feeds = model_inputs(_causal_mask_from_a_second_input())
    length = feeds["x"].shape[1]
    model = _mask_rows_counted_by_an_overridable_default(length)
    fusion = AttentionFusion()
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    for rows in (length, 1):
        inputs = {"x": feeds["x"], "rows_count": np.array(rows, np.int64)}
        for expected, actual in zip(_outputs(model, inputs), _outputs(after, inputs), strict=True):
            np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def _mask_rows_counted_by_an_input() -> ir.Model:
    """The causal mask's rows ``Range(0, rows_count)``, ``rows_count`` a plain graph input (a52e566's case)."""
    proto = range_causal_mask("x")
    proto.graph.input.append(helper.make_tensor_value_info("rows_count", TensorProto.INT64, []))
    (unsqueeze,) = [n for n in proto.graph.node if n.output[0] == "rows"]
    unsqueeze.input[0] = "row_positions"
    proto.graph.node.insert(0, helper.make_node("Range", ["zero_i", "rows_count", "one_i"], ["row_positions"]))
    return ir.from_proto(proto)


def test_simplify_shapes_keeps_the_expand_of_mask_rows_only_merged_with_the_query_length():
    # After pack-qkv the Attention op reads x itself, and ORT's inference merges the mask rows with x's S.
    model = _mask_rows_counted_by_an_input()
    fused = optimize(model, passes=["fuse-attention", "pack-qkv"])
    assert {"Attention", "Expand"} <= {node.op_type for node in fused.graph}
    simplified = ShapeSimplificationPass()(fused.clone()).model
    feeds = model_inputs(model)
    for rows in (feeds["x"].shape[1], 1):
        assert_same_outputs(model, simplified, {**feeds, "rows_count": np.array(rows, np.int64)}, rtol=1e-4, atol=1e-5)


def test_a_second_run_keeps_the_broadcast_of_one_row_position_ids():
    # A second run's simplify-shapes (and fold-constants) read position_ids [batch, sequence] as batch-sized because
    # input_ids' dim has the same name, and dropped the Expand the first run's rotary fusion wrote: position_ids
    # [1, S] with batch 2, which the original broadcasts, was refused by RotaryEmbedding (verified). A strict xfail
    # until 2026-12-04: an Expand of a graph input now proves nothing by the dim names it shares with other inputs.
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    once = optimize(model)
    twice = optimize(once, passes=["simplify-shapes"])
    feeds = make_inputs(model, {"batch": 2, "sequence": 3, "past_sequence": 4, "total_sequence": 7})
    feeds["position_ids"] = feeds["position_ids"][:1]
    assert_same_outputs(model, once, feeds, rtol=1e-4, atol=1e-5)
    assert_same_outputs(model, twice, feeds, rtol=1e-4, atol=1e-5)


@pytest.mark.xfail(
    strict=True,
    reason="older than dbdbd93: ONNX's inference path trusts a mask input declared [B, 1, S, S] (S also x's "
    "dim name) as full-size; a [B, 1, 1, S] mask, which the original broadcasts, is refused by the fused op",
)
def test_a_mask_input_declared_full_size_by_shared_dim_names_keeps_its_expand():
    proto = ir.to_proto(attention_model(mask="bias"))
    (mask,) = [value for value in proto.graph.input if value.name == "mask_bias"]
    rows = mask.type.tensor_type.shape.dim[2]
    rows.ClearField("dim_value")
    rows.dim_param = "S"
    model = ir.from_proto(proto)
    after = AttentionFusion()(model.clone()).model
    feeds = model_inputs(model)
    batch, length = feeds["x"].shape[:2]
    feeds["mask_bias"] = np.zeros((batch, 1, 1, length), np.float32)
    assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)

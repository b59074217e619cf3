"""fuse-attention on spellings found in the wild: graphs without recorded shapes, Sub masks, heads batched for bmm.

- Legacy exports record no intermediate shapes: the pass infers what it needs and takes
  it back (``_inferred_shapes``), so it fuses the same graph with or without them, and a
  graph it refuses is left exactly as it was.
- ``scores - (1 - mask) * 10000`` is the negated bias added.
- Hugging Face's eager BART-family attention (``torch.bmm`` on ``[B*N, S, d]``, the scores
  viewed as ``[B, N, S, T]`` for the mask) is the same attention; views that mix heads with
  positions or split the batch the other way are not, and are refused.

Each fused graph is compared with the original on ONNX Runtime at two sequence lengths,
the second sequence of each batch padded.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from passes.fusion.attention import AttentionFusion
from passes.fusion.packed_attention import PackedAttentionFusion
from tests.helpers import FIXTURES, assert_same_outputs, op_types
from tests.passes.fusion._attention_graphs import (
    HEAD_SIZE,
    HEADS,
    attention_model,
    batched_attention_model,
    model_inputs,
    without_value_info,
)

_OLD_OPS = {"Softmax", "MatMul", "Transpose"}


def _fuses(model: ir.Model, packs: bool = True) -> ir.Model:
    """Run fuse-attention (then pack-qkv): one MultiHeadAttention, no Softmax, the original's outputs."""
    fusion = AttentionFusion()
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1, fusion.refusals
    (mha,) = [n for n in after.graph if n.op_type == "MultiHeadAttention"]
    assert mha.attributes.get_int("num_heads") == HEADS
    assert mha.attributes.get_float("scale") == pytest.approx(HEAD_SIZE**-0.5)
    assert "Softmax" not in op_types(after)
    for seq in (5, 9):
        assert_same_outputs(model, after, model_inputs(model, seq), rtol=1e-4, atol=1e-5)
    if packs:
        packed = PackedAttentionFusion(max_sequence=64)(after.clone()).model
        assert op_types(packed).count("Attention") == 1
        for seq in (5, 9):
            assert_same_outputs(model, packed, model_inputs(model, seq), rtol=1e-4, atol=1e-5)
    return after


def _refuses(model: ir.Model, reason: str) -> None:
    proto_before = ir.to_proto(model).SerializeToString()
    result = AttentionFusion()(model)
    assert not result.modified
    assert result.refusals == [f"1 of 1 Softmax left unfused: {reason}"]
    # Nothing inferred is left behind: the model is byte for byte what it was.
    assert ir.to_proto(result.model).SerializeToString() == proto_before


@pytest.mark.parametrize("mask", ["input", "causal"])
def test_a_graph_without_recorded_shapes_fuses(mask):
    model = without_value_info(attention_model(mask=mask))
    assert all(v.shape is None for n in model.graph for v in n.outputs if not v.is_graph_output())
    after = _fuses(model)
    # The shapes inferred for the match are taken back; only the rewrite's own values have any.
    inner = [v for n in after.graph if n.op_type != "MultiHeadAttention" for v in n.outputs if not v.is_graph_output()]
    assert all(v.shape is None for v in inner)


def test_a_fused_graph_output_keeps_its_declared_shape():
    # The op's output becomes the graph output: it takes the shape declared there, not the one inferred for the match.
    model = batched_attention_model()  # fused only with shapes inferred
    model.graph.outputs[0].shape = ir.Shape([None, None, None])
    after = _fuses(model)
    assert list(after.graph.outputs[0].shape) == [None, None, None]
    assert after.graph.outputs[0].dtype == ir.DataType.FLOAT


def test_a_refused_graph_without_recorded_shapes_is_left_as_it_was():
    _refuses(
        without_value_info(attention_model(softmax_axis=2, mask="input")),
        "Softmax is not over the last axis of a 4-D tensor (or of batched [B*N, S, T] scores)",
    )


def test_a_mask_subtracted_from_the_scores_is_the_negated_bias():
    model = batched_attention_model(mask="sub", infer=True)
    after = _fuses(model)
    assert not _OLD_OPS & set(op_types(after)) - {"MatMul"}


def test_scores_subtracted_from_a_mask_are_not_attention():
    # softmax(bias - scores) weights the least similar keys most.
    model = attention_model(mask="input")
    (add,) = [n for n in model.graph if n.op_type == "Add" and n.outputs[0].name == "logits"]
    sub = ir.node("Sub", [add.inputs[1], add.inputs[0]], name="negated")
    model.graph.insert_before(add, sub)
    add.outputs[0].replace_all_uses_with(sub.outputs[0])
    model.graph.remove(add, safe=True)
    _refuses(model, "the scores are subtracted from another term (softmax of their negation)")


@pytest.mark.parametrize("mask", ["add", "sub", None])
@pytest.mark.parametrize("infer", [False, True], ids=["no shapes", "shapes"])
def test_heads_batched_for_bmm_fuse_like_4d_attention(mask, infer):
    model = batched_attention_model(mask=mask, infer=infer)
    after = _fuses(model)
    (mha,) = [n for n in after.graph if n.op_type == "MultiHeadAttention"]
    # Q, K and V are head splits of the projections: the op reads the 3-D projections themselves.
    assert [v.name for v in mha.inputs[:3]] == ["q_proj", "k_proj", "v_proj"]
    assert "Transpose" not in op_types(after) and "Softmax" not in op_types(after)


@pytest.mark.parametrize("infer", [False, True], ids=["no shapes", "shapes"])
def test_a_bmm_view_mixing_heads_and_positions_is_refused(infer):
    model = batched_attention_model(merge="positions", infer=infer)
    _refuses(model, "the query is not known to be a 4-D per-head tensor or one batched as [B*N, S, d]")


@pytest.mark.parametrize("infer", [False, True], ids=["no shapes", "shapes"])
def test_scores_viewed_as_heads_by_batch_are_refused(infer):
    # [N, B, S, T]: the [B, 1, 1, T] mask would meet the rows of other sequences.
    model = batched_attention_model(scores_split="heads_batch", infer=infer)
    _refuses(model, "the [B*N, S, T] scores are split into other leading axes than the heads were merged from")


@pytest.mark.parametrize("fixture", ["mvp_legacy", "mvp_dynamo"])
def test_exported_bart_family_bmm_attention_fuses(fixture):
    model = ir.load(FIXTURES / f"{fixture}.onnx")
    names = optimizer.default_pass_names("cpu")
    prepared = optimizer.optimize(model, names[: names.index("fuse-attention")], verify=False)
    fusion = AttentionFusion()
    fused = fusion(prepared.clone()).model
    assert fusion.fused_count == 1, fusion.refusals
    assert "Softmax" not in op_types(fused)
    packed = PackedAttentionFusion(max_sequence=64)(fused.clone()).model
    assert op_types(packed).count("Attention") == 1
    rng = np.random.default_rng(0)
    for seq in (7, 13):
        mask = np.ones((2, seq), np.int64)
        mask[1, seq - 3 :] = 0
        feeds = {"input_ids": rng.integers(3, 100, (2, seq)), "attention_mask": mask}
        assert_same_outputs(model, fused, feeds, rtol=1e-4, atol=1e-5)
        assert_same_outputs(model, packed, feeds, rtol=1e-4, atol=1e-5)


def test_a_mask_with_its_own_batch_axis_on_the_batched_scores_is_refused():
    # A [B*N, S, T] bias on the merged scores is none of the [B|1, N|1, S, T] biases the op takes.
    model = batched_attention_model(mask=None, infer=True)
    (softmax,) = [n for n in model.graph if n.op_type == "Softmax"]
    bias = ir.Value(name="bias_3d", shape=ir.Shape(["BN", "S", "S"]), type=ir.TensorType(ir.DataType.FLOAT))
    model.graph.inputs.append(bias)
    add = ir.node("Add", [softmax.inputs[0], bias], name="biased")
    model.graph.insert_before(softmax, add)
    softmax.replace_input_with(0, add.outputs[0])
    _refuses(model, "a mask is added to the [B*N, S, T] scores with a batch axis of its own")

"""fuse-attention: scaled dot-product attention subgraphs into MultiHeadAttention."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.attention import AttentionFusion
from tests.helpers import assert_same_outputs, op_types, run

HIDDEN, HEADS, HEAD_SIZE = 8, 2, 4


def _attention_model(
    *,
    softmax_axis: int = -1,
    key_form: str = "split",
    with_mask: bool = True,
    mask_from_input: bool = False,
    scale_after_mask: bool = False,
    kv_heads: int = HEADS,
) -> ir.Model:
    """BERT-style self-attention as the legacy exporter writes it (scale on the scores here).

    ``key_form``: "split" transposes the key with perm (0, 2, 3, 1) straight from the
    head split; "bnsh" splits it like Q/V and then swaps the last two axes.
    """
    rng = np.random.default_rng(0)
    weights = {}
    nodes = []
    for name in "qkv":
        width = HIDDEN if name == "q" else kv_heads * HEAD_SIZE
        weights[f"w{name}"] = rng.standard_normal((HIDDEN, width)).astype(np.float32) * 0.5
        weights[f"b{name}"] = rng.standard_normal(width).astype(np.float32) * 0.1
        nodes += [
            helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}_mm"]),
            helper.make_node("Add", [f"{name}_mm", f"b{name}"], [f"{name}_proj"]),
            helper.make_node("Reshape", [f"{name}_proj", "split_shape"], [f"{name}_split"]),
        ]
    weights["split_shape"] = np.array([0, 0, -1, HEAD_SIZE], dtype=np.int64)
    weights["merge_shape"] = np.array([0, 0, -1], dtype=np.int64)
    weights["sqrt_d"] = np.array(np.sqrt(HEAD_SIZE), dtype=np.float32)
    nodes += [
        helper.make_node("Transpose", ["q_split"], ["q"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["v_split"], ["v"], perm=[0, 2, 1, 3]),
    ]
    if key_form == "split":
        nodes.append(helper.make_node("Transpose", ["k_split"], ["k_t"], perm=[0, 2, 3, 1]))
    else:
        nodes += [
            helper.make_node("Transpose", ["k_split"], ["k"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 1, 3, 2]),
        ]
    nodes += [
        helper.make_node("MatMul", ["q", "k_t"], ["scores"]),
        helper.make_node("Div", ["scores", "sqrt_d"], ["scaled"]),
    ]
    logits = "scaled"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", HIDDEN])]
    if with_mask and mask_from_input:
        # The classic BERT extended mask: (1 - mask) * -10000, as [B, 1, 1, S].
        weights["one"] = np.array(1.0, np.float32)
        weights["filler"] = np.array(-10000.0, np.float32)
        weights["mask_axes"] = np.array([1, 2], np.int64)
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["one", "mask_f"], ["inverted"]),
            helper.make_node("Mul", ["inverted", "filler"], ["mask_2d"]),
            helper.make_node("Unsqueeze", ["mask_2d", "mask_axes"], ["mask_bias"]),
            helper.make_node("Add", ["scaled", "mask_bias"], ["masked"]),
        ]
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "S"]))
        logits = "masked"
    elif with_mask and scale_after_mask:
        # softmax((QK^T + bias) / sqrt(d)): the scale applies to the mask too.
        nodes[-1] = helper.make_node("Add", ["scores", "mask_bias"], ["masked_raw"])
        nodes.append(helper.make_node("Div", ["masked_raw", "sqrt_d"], ["masked"]))
        inputs.append(helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, ["B", 1, 1, "S"]))
        logits = "masked"
    elif with_mask:
        nodes.append(helper.make_node("Add", ["scaled", "mask_bias"], ["masked"]))
        inputs.append(helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, ["B", 1, 1, "S"]))
        logits = "masked"
    nodes += [
        helper.make_node("Softmax", [logits], ["probs"], axis=softmax_axis),
        helper.make_node("MatMul", ["probs", "v"], ["context"]),
        helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_t", "merge_shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", HIDDEN])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto)
    model = ir.from_proto(proto)
    ir.passes.common.ShapeInferencePass()(model)
    return model


def _inputs(with_mask: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 5, HIDDEN)).astype(np.float32)}
    if with_mask:
        # The second sequence is padded after 3 tokens.
        bias = np.zeros((2, 1, 1, 5), np.float32)
        bias[1, ..., 3:] = np.finfo(np.float32).min
        feeds["mask_bias"] = bias
    return feeds


@pytest.mark.parametrize("key_form", ["split", "bnsh"])
def test_self_attention_with_mask_is_fused(key_form):
    model = _attention_model(key_form=key_form)
    fusion = AttentionFusion(pack_qkv=False)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    assert "Softmax" not in op_types(after)
    (mha,) = [n for n in after.graph if n.op_type == "MultiHeadAttention"]
    assert mha.domain == "com.microsoft"
    assert mha.attributes.get_int("num_heads") == HEADS
    assert mha.attributes.get_float("scale") == pytest.approx(1 / np.sqrt(HEAD_SIZE))
    # Either way the key traces back to a head split, so the 3-D projections feed the op.
    assert mha.inputs[1].shape.rank() == 3
    assert_same_outputs(model, after, _inputs(), rtol=1e-4, atol=1e-5)


def test_self_attention_gets_packed_qkv_weights():
    model = _attention_model()
    after = AttentionFusion()(model.clone()).model
    (fused,) = [n for n in after.graph if n.domain == "com.microsoft"]
    assert fused.op_type == "Attention" and fused.attributes.get_int("num_heads") == HEADS
    assert fused.inputs[0].name == "x"
    assert fused.inputs[1].const_value.shape == (HIDDEN, 3 * HIDDEN)
    assert not {"MatMul", "Softmax"} & set(op_types(after))
    assert_same_outputs(model, after, _inputs(), rtol=1e-4, atol=1e-5)


def test_padding_mask_subgraph_becomes_the_ops_mask_input():
    model = _attention_model(mask_from_input=True)
    after = AttentionFusion()(model.clone()).model
    (fused,) = [n for n in after.graph if n.domain == "com.microsoft"]
    assert fused.op_type == "Attention"
    # The 2-D mask (cast to int32) replaces the float bias; its subgraph is gone.
    assert fused.inputs[3].producer().op_type == "Cast" and len(fused.inputs) == 4
    assert not {"Sub", "Unsqueeze"} & set(op_types(after))
    feeds = {"x": _inputs()["x"], "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int64)}
    assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


def test_attention_without_mask_is_fused():
    model = _attention_model(with_mask=False)
    after = AttentionFusion()(model.clone()).model
    assert "Attention" in op_types(after)
    assert_same_outputs(model, after, _inputs(with_mask=False), rtol=1e-4, atol=1e-5)


def test_softmax_over_another_axis_is_left_alone():
    model = _attention_model(softmax_axis=2)
    result = AttentionFusion()(model)
    assert not result.modified
    assert "MultiHeadAttention" not in op_types(result.model)


def test_mask_that_is_not_4d_is_left_alone():
    model = _attention_model()
    model.graph.inputs[1].shape = ir.Shape(["B", "S"])
    assert not AttentionFusion()(model).modified


def test_scale_applied_after_the_mask_is_left_alone():
    # The fused ops scale Q @ K^T only, not the mask; fusing would change the bias' weight.
    model = _attention_model(scale_after_mask=True)
    assert not AttentionFusion()(model).modified


def test_multi_query_attention_by_broadcasting_is_left_alone():
    # One K/V head broadcast by MatMul over 2 query heads: the fused ops need equal head counts.
    model = _attention_model(kv_heads=1)
    assert run(model, _inputs())  # the original runs: MatMul broadcasts the single K/V head
    assert not AttentionFusion()(model).modified

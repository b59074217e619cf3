"""fuse-attention on ONNX's own ``Attention`` (opset 23, torch's dynamo export of sdpa): written out, fused as any
spelled-out attention, and put back where the match refuses it (``passes/fusion/_onnx_attention.py``)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import optimizer
from passes.fusion.attention import AttentionFusion
from tests.helpers import FIXTURES, run
from tests.test_decoder_cache import KV_FIXTURES, decode_feed, prompts, step_feed

_FIXTURE = "llama_kv_dynamo_opset23"
_HEADS, _HEAD = 2, 8
_HIDDEN = _HEADS * _HEAD


def _ops(model: ir.Model) -> Counter:
    return Counter(node.op_type for node in model.graph)


def _encoder(*, mask: str = "bool", causal: int = 0, dtype: int = TensorProto.FLOAT) -> ir.Model:
    """x [B, S, 16] → Q/K/V projections split into 2 heads → ONNX Attention (mask from ``attention_mask``: a bool
    ``[B, 1, S, S]``, its float ``Where(m, 0, -inf)``, or none) → heads merged → [B, S, 16]."""
    rng = np.random.default_rng(0)
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    inits = [
        helper.make_tensor(
            f"W{n}", dtype, [_HIDDEN, _HIDDEN], (rng.standard_normal((_HIDDEN, _HIDDEN)) * 0.3).astype(np_type).ravel()
        )
        for n in "qkv"
    ]
    inits += [
        helper.make_tensor("split", TensorProto.INT64, [4], [0, 0, _HEADS, _HEAD]),
        helper.make_tensor("merge", TensorProto.INT64, [3], [0, 0, _HIDDEN]),
        helper.make_tensor("mask_axes", TensorProto.INT64, [2], [1, 2]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("zero", dtype, [], [0.0]),
        helper.make_tensor("fill", dtype, [], [-np.inf]),
    ]
    nodes = []
    for n in "qkv":
        nodes += [
            helper.make_node("MatMul", ["x", f"W{n}"], [f"{n}_proj"]),
            helper.make_node("Reshape", [f"{n}_proj", "split"], [f"{n}_split"]),
            helper.make_node("Transpose", [f"{n}_split"], [f"{n}_heads"], perm=[0, 2, 1, 3]),
        ]
    attention_inputs = ["q_heads", "k_heads", "v_heads"]
    inputs = [helper.make_tensor_value_info("x", dtype, ["batch", "sequence", _HIDDEN])]
    if mask != "none":
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]))
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["mask_bool"], to=TensorProto.BOOL),
            helper.make_node("Unsqueeze", ["mask_bool", "mask_axes"], ["mask_row"]),
            # ONNX Runtime's kernel takes a mask of [..., S, T] only, not one row broadcast over the queries.
            helper.make_node("Shape", ["x"], ["batch"], start=0, end=1),
            helper.make_node("Shape", ["x"], ["length"], start=1, end=2),
            helper.make_node("Concat", ["batch", "one", "length", "length"], ["mask_shape"], axis=0),
            helper.make_node("Expand", ["mask_row", "mask_shape"], ["mask4"]),
        ]
        if mask == "float":
            nodes.append(helper.make_node("Where", ["mask4", "zero", "fill"], ["mask_bias"]))
        attention_inputs.append("mask_bias" if mask == "float" else "mask4")
    nodes += [
        helper.make_node("Attention", attention_inputs, ["y_heads"], is_causal=causal, scale=float(_HEAD) ** -0.5),
        helper.make_node("Transpose", ["y_heads"], ["y_split"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["y_split", "merge"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "onnx_attention",
        inputs,
        [helper.make_tensor_value_info("y", dtype, ["batch", "sequence", _HIDDEN])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return ir.from_proto(proto)


def _feed(padded: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    mask = np.ones((2, 5), np.int64)
    if padded:
        mask[1, :2] = 0
    return {"x": rng.standard_normal((2, 5, _HIDDEN)).astype(np.float32), "attention_mask": mask}


@pytest.mark.parametrize("mask", ["bool", "float", "none"])
def test_onnx_attention_becomes_multi_head_attention(mask):
    model = _encoder(mask=mask)
    result = AttentionFusion()(model.clone())
    assert result.modified
    ops = _ops(result.model)
    assert ops["MultiHeadAttention"] == 1 and ops["Attention"] == 0 and ops["Softmax"] == 0, ops
    feed = _feed() if mask != "none" else {"x": _feed()["x"]}
    np.testing.assert_allclose(run(result.model, feed)["y"], run(model, feed)["y"], rtol=1e-5, atol=1e-6)


def test_is_causal_is_left_as_written_with_the_reason():
    model = _encoder(causal=1)
    result = AttentionFusion()(model.clone())
    assert not result.modified
    assert _ops(result.model) == _ops(model)
    assert any("is_causal=1" in reason for reason in result.refusals), result.refusals


def test_a_written_out_node_the_match_refuses_is_put_back():
    # fuse-attention matches float32 attention only: a float16 node is written out, refused, and taken back whole.
    model = _encoder(dtype=TensorProto.FLOAT16)
    result = AttentionFusion()(model.clone())
    assert not result.modified
    assert _ops(result.model) == _ops(model)
    assert len(result.model.graph.initializers) == len(model.graph.initializers)
    assert any("written out" in reason for reason in result.refusals), result.refusals


def test_the_opset_23_decoder_becomes_group_query_attention_verified():
    # torch's dynamo export at opset 23 (sdpa as ONNX's Attention), through the default pipeline: the same
    # GroupQueryAttention as the opset-20 export, verified on a left-padded prefill, and the same logits and cache.
    ids, mask = prompts(3)
    kv = KV_FIXTURES[_FIXTURE]
    original = ir.load(FIXTURES / f"{_FIXTURE}.onnx")
    optimized, report = optimizer.optimize_with_report(original.clone(), inputs=step_feed(kv, ids, mask, None))
    statuses = {record.name: record.status for record in report.passes}
    assert statuses["fuse-attention"] == statuses["fuse-group-query-attention"] == "applied", report.failures()
    ops = _ops(optimized)
    assert ops["GroupQueryAttention"] == 2 and ops["Attention"] == 0, ops
    feed = decode_feed(kv)
    want, got = run(original, feed), run(optimized, feed)
    for name, expected in want.items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-4, atol=1e-5, err_msg=name)

"""Review s68 (WavLM): attention as torch's ``F.multi_head_attention_forward`` writes it, which fuse-attention leaves.

WavLM's attention (transformers' ``WavLMAttention``, ``tests/fixtures/export_wavlm_fixture.py``) adds a gated relative
position bias ``[B*N, S, S]`` to the scores and computes the rest with torch's ``multi_head_attention_forward``, as
``nn.MultiheadAttention`` does: the projections are ``[S, B, E]`` and the heads are batched as
``Transpose(Reshape(x, [S, B*N, d]), (1, 0, 2))``, merged with the batch by the Reshape, not from a 4-D per-head
tensor. fuse-attention refused every such block with "the query is not known to be a 4-D per-head tensor or one
batched as [B*N, S, d]", which it is; the refusal now names the layout. Fusing it (the bias as MultiHeadAttention's
``attention_bias`` reshaped to ``[B, N, S, S]``) is not done: strict xfails below.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.attention import AttentionFusion
from tests.helpers import FIXTURES, assert_same_outputs, op_types

HIDDEN, HEADS = 16, 4
_LAYOUT = (
    "the query is batched as [B*N, S, d] from a [S, B, E] projection (torch's multi_head_attention_forward: "
    "WavLM, nn.MultiheadAttention), a layout this pass does not read"
)


def _torch_mha(bias: bool) -> ir.Model:
    """``nn.MultiheadAttention(batch_first=True)`` as torch's legacy exporter writes it (need_weights's bmm path),
    with WavLM's per-batch-and-head bias ``[B*N, S, S]`` added to the scores where ``bias``."""
    d = HIDDEN // HEADS
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32), f"w{p}") for p in "qkv"]
    inits += [
        numpy_helper.from_array(np.array([0, -1, d], np.int64), "heads"),
        numpy_helper.from_array(np.array([0, -1, HIDDEN], np.int64), "merged"),
        numpy_helper.from_array(np.array(d**-0.5, np.float32), "scale"),
    ]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])]  # [S, B, E]
    for p, order in (("q", [1, 0, 2]), ("k", [1, 2, 0]), ("v", [1, 0, 2])):
        nodes += [
            helper.make_node("MatMul", ["xt", f"w{p}"], [f"{p}_proj"]),
            helper.make_node("Reshape", [f"{p}_proj", "heads"], [f"{p}_3d"]),  # [S, B*N, d]
            helper.make_node("Transpose", [f"{p}_3d"], [f"{p}_b"], perm=order),  # [B*N, S, d] ([B*N, d, S])
        ]
    nodes += [
        helper.make_node("Mul", ["q_b", "scale"], ["q_s"]),
        helper.make_node("MatMul", ["q_s", "k_b"], ["scores"]),
    ]
    if bias:
        nodes.append(helper.make_node("Add", ["scores", "bias"], ["biased"]))
    nodes += [
        helper.make_node("Softmax", ["biased" if bias else "scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v_b"], ["ctx"]),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[1, 0, 2]),  # [S, B*N, d]
        helper.make_node("Reshape", ["ctx_t", "merged"], ["ctx_m"]),  # [S, B, E]
        helper.make_node("Transpose", ["ctx_m"], ["y"], perm=[1, 0, 2]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", HIDDEN])]
    if bias:
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["BN", "S", "S"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", HIDDEN])]
    graph = helper.make_graph(nodes, "torch_mha", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    model = ir.from_proto(proto)
    ir.passes.common.ShapeInferencePass()(model)
    return model


def _feeds(bias: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 5, HIDDEN)).astype(np.float32)}
    if bias:
        feeds["bias"] = rng.standard_normal((2 * HEADS, 5, 5)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_wavlm_refusal_names_torch_multi_head_attention_layout(exporter: str):
    """Both exports of the tiny WavLM: every block refused, and the reason says which layout, not that the query is
    not batched as [B*N, S, d] (it is)."""
    model = ir.load(str(FIXTURES / f"wavlm_{exporter}.onnx"))
    result = AttentionFusion()(model)
    assert not result.modified
    assert result.refusals == [f"2 of 2 Softmax left unfused: {_LAYOUT}"]


@pytest.mark.parametrize("bias", [False, True], ids=["nn_multihead_attention", "wavlm_bias"])
def test_torch_multi_head_attention_refusal_names_the_layout(bias: bool):
    result = AttentionFusion()(_torch_mha(bias))
    assert result.refusals == [f"1 of 1 Softmax left unfused: {_LAYOUT}"]


@pytest.mark.xfail(
    strict=True,
    reason="fuse-attention does not read torch's multi_head_attention_forward layout (heads merged with the batch by "
    "Reshape([S, B, E] -> [S, B*N, d]) then Transpose), nor a [B*N, S, T] bias with a batch axis of its own, nor the "
    "output merged back through [S, B*N, d]: WavLM's attention stays MatMul/Softmax/MatMul",
)
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_wavlm_attention_fuses(exporter: str):
    model = ir.load(str(FIXTURES / f"wavlm_{exporter}.onnx"))
    AttentionFusion()(model)
    assert "MultiHeadAttention" in op_types(model), op_types(model)


@pytest.mark.xfail(
    strict=True,
    reason="the same layout spelled by hand (nn.MultiheadAttention, and with WavLM's [B*N, S, S] bias) stays unfused: "
    "fuse-attention does not read torch's multi_head_attention_forward layout",
)
@pytest.mark.parametrize("bias", [False, True], ids=["nn_multihead_attention", "wavlm_bias"])
def test_torch_multi_head_attention_fuses(bias: bool):
    before = _torch_mha(bias)
    after = before.clone()
    AttentionFusion()(after)
    assert "MultiHeadAttention" in op_types(after), op_types(after)
    assert_same_outputs(before, after, _feeds(bias))

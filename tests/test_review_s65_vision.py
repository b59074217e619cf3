"""Review s65 (vision and audio encoders exported from ``transformers``): attention spellings left unpacked.

Small graphs spelled as torch's exporters write the blocks a sweep of ViT, DeiT, BEiT, Swin, ConvNeXt, MobileViT,
SegFormer, YOLOS, DETR, DINOv2, CLIP, wav2vec2, HuBERT and Whisper found left as ``MultiHeadAttention`` with layout
adapters (or unfused) where the same model's other export packs ``Attention``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer

HIDDEN, HEADS, HEAD = 8, 2, 4
PATCHES = 16


def _attention(
    nodes: list, weights: dict, hidden: str, target: str, allowzero: int = 0, merged: tuple = (0, 0, HIDDEN)
) -> str:
    """Self-attention over ``hidden`` [B, S, HIDDEN] as the legacy exporter writes it; the head split's target
    given, and the merge's."""
    rng = np.random.default_rng(0)
    for p in "qkv":
        weights[f"w_{p}"] = (rng.standard_normal((HIDDEN, HIDDEN)) * 0.5).astype(np.float32)
        weights[f"b_{p}"] = (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32)
        nodes += [
            helper.make_node("MatMul", [hidden, f"w_{p}"], [f"{p}_mm"]),
            helper.make_node("Add", [f"{p}_mm", f"b_{p}"], [f"{p}_proj"]),
            helper.make_node("Reshape", [f"{p}_proj", target], [f"{p}_heads"], allowzero=allowzero),
        ]
    weights["scale"] = np.array(HEAD**-0.5, np.float32)
    weights["merged"] = np.array(merged, np.int64)
    nodes += [
        helper.make_node("Transpose", ["q_heads"], ["q"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k_heads"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v_heads"], ["v"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["q", "kt"], ["scores_raw"]),
        helper.make_node("Mul", ["scores_raw", "scale"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["context_heads"]),
        helper.make_node("Transpose", ["context_heads"], ["context_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_t", "merged"], ["context"]),
    ]
    return "context"


def _model(nodes: list, weights: dict, inputs: list, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("context", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    return proto


def _op_types(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


def _same(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    runs = [
        ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)
        for m in (before, after)
    ]
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-4, atol=1e-5)


def _class_token_model(seq_entry: int = PATCHES + 1, head: int = HEAD) -> onnx.ModelProto:
    """BEiT's legacy export: ``cat(cls_token.expand(batch, -1, -1), patches)``, then a head split to [0, 17, -1, 4].

    The exporter writes the expand's target as ``Where(Equal(t, -1), 1, t)`` of ``[batch, -1, -1]``, which ONNX's
    shape inference cannot read, so the concatenation's sequence is unknown (17 at every batch); BEiT has no
    absolute position embedding after it (ViT's ``+ position_embeddings [1, 17, D]`` names the 17 again).
    ``seq_entry``/``head``: the head split's static sequence and head size (a near-miss mixes positions into heads).
    """
    weights = {
        "cls": np.random.default_rng(1).standard_normal((1, 1, HIDDEN)).astype(np.float32),
        "zero": np.array([0], np.int64),
        "minus_one": np.array([-1], np.int64),
        "ones": np.ones(3, np.int64),
        "target": np.array([0, seq_entry, -1, head], np.int64),
    }
    nodes = [
        helper.make_node("Shape", ["patches"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "minus_one", "minus_one"], ["wanted"], axis=0),
        helper.make_node("Equal", ["wanted", "minus_one"], ["keep"]),
        helper.make_node("Where", ["keep", "ones", "wanted"], ["expand_to"]),
        helper.make_node("Expand", ["cls", "expand_to"], ["cls_rows"]),
        helper.make_node("Concat", ["cls_rows", "patches"], ["tokens"], axis=1),
    ]
    _attention(nodes, weights, "tokens", "target", merged=(0, -1, HIDDEN))
    inputs = [helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["batch", PATCHES, HIDDEN])]
    return _model(nodes, weights, inputs)


def _tiled_queries_model() -> onnx.ModelProto:
    """DETR's legacy decoder self-attention: ``zeros_like(query_embed tiled over the batch) + query_embed``, whose
    sequence ONNX's inference leaves unknown (a Tile by a computed ``[1, batch, 1]``), then a head split to
    [0, 5, -1, 4]."""
    queries = 5
    weights = {
        "query_embed": np.random.default_rng(5).standard_normal((queries, 1, HIDDEN)).astype(np.float32),
        "zero": np.array([0], np.int64),
        "one": np.array([1], np.int64),
        "to_batch_first": np.array([1, 0, 2], np.int64),
        "target": np.array([0, queries, -1, HEAD], np.int64),
    }
    nodes = [
        helper.make_node("Shape", ["memory"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["one", "batch", "one"], ["repeats"], axis=0),
        helper.make_node("Tile", ["query_embed", "repeats"], ["tiled"]),
        helper.make_node("Transpose", ["tiled"], ["tiled_bsd"], perm=[1, 0, 2]),
        helper.make_node("Shape", ["tiled_bsd"], ["tiled_shape"]),
        helper.make_node(
            "ConstantOfShape", ["tiled_shape"], ["zeros"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
        ),
        helper.make_node("Add", ["zeros", "tiled_bsd"], ["tokens"]),
    ]
    _attention(nodes, weights, "tokens", "target")
    inputs = [helper.make_tensor_value_info("memory", TensorProto.FLOAT, ["batch", PATCHES, HIDDEN])]
    return _model(nodes, weights, inputs)


@pytest.mark.parametrize("build", [_class_token_model, _tiled_queries_model], ids=["beit_class_token", "detr_tile"])
def test_traced_static_sequence_attention_is_packed(build) -> None:
    """The head split's static sequence is proven by tracing the projection's dim through the Concat of an
    Expand (BEiT: layer 0 was a MultiHeadAttention with four adapters) or a Tile (DETR: the Softmax was left
    unfused, "the head count cannot be derived")."""
    proto = build()
    fused = optimizer.optimize(proto)
    feeds = {
        proto.graph.input[0].name: np.random.default_rng(2).standard_normal((3, PATCHES, HIDDEN)).astype(np.float32)
    }
    _same(proto, fused, feeds)
    kinds = _op_types(fused)
    assert "Softmax" not in kinds and ("Attention" in kinds or "MultiHeadAttention" in kinds), kinds
    if build is _class_token_model:
        assert "Attention" in kinds and "Transpose" not in kinds, kinds


def test_traced_sequence_other_than_the_entry_is_no_head_split() -> None:
    """Near-miss: the traced sequence is 17, the target's static entry 34: the Reshape ([B, 34, 1, 4]) splits
    each token into two positions, which is no head split, and nothing may be fused."""
    proto = _class_token_model(seq_entry=2 * (PATCHES + 1))
    fused = optimizer.optimize(proto)
    feeds = {"patches": np.random.default_rng(2).standard_normal((2, PATCHES, HIDDEN)).astype(np.float32)}
    _same(proto, fused, feeds)
    assert "Softmax" in _op_types(fused), _op_types(fused)


def _strided_audio_model(sequence_from_shape: bool) -> onnx.ModelProto:
    """wav2vec2's dynamo export: two strided convolutions (5 then 2) over samples, then a head split whose sequence
    entry is the exporter's simplification of their output length, ``samples // 10`` (``allowzero=1``).

    ``sequence_from_shape``: the entry read from the projection's shape instead (the legacy export's spelling).
    """
    rng = np.random.default_rng(3)
    weights = {
        "axis_one": np.array([1], np.int64),
        "conv1": (rng.standard_normal((HIDDEN, 1, 5)) * 0.3).astype(np.float32),
        "conv2": (rng.standard_normal((HIDDEN, HIDDEN, 2)) * 0.3).astype(np.float32),
        "ten": np.array(10, np.int64),
        "flat": np.array([-1], np.int64),
        "tail": np.array([-1, HEAD], np.int64),
    }
    nodes = [
        helper.make_node("Unsqueeze", ["input_values", "axis_one"], ["wave"]),
        helper.make_node("Conv", ["wave", "conv1"], ["features1"], kernel_shape=[5], strides=[5]),
        helper.make_node("Conv", ["features1", "conv2"], ["features2"], kernel_shape=[2], strides=[2]),
        helper.make_node("Transpose", ["features2"], ["frames"], perm=[0, 2, 1]),
        helper.make_node("Shape", ["input_values"], ["batch"], start=0, end=1),
    ]
    if sequence_from_shape:
        nodes.append(helper.make_node("Shape", ["frames"], ["sequence"], start=1, end=2))
    else:
        nodes += [
            helper.make_node("Shape", ["input_values"], ["samples"], start=1, end=2),
            helper.make_node("Squeeze", ["samples"], ["samples_scalar"]),
            helper.make_node("Div", ["samples_scalar", "ten"], ["frames_scalar"]),
            helper.make_node("Reshape", ["frames_scalar", "flat"], ["sequence"]),
        ]
    nodes.append(helper.make_node("Concat", ["batch", "sequence", "tail"], ["target"], axis=0))
    _attention(nodes, weights, "frames", "target", allowzero=1)
    inputs = [helper.make_tensor_value_info("input_values", TensorProto.FLOAT, ["batch", "samples"])]
    return _model(nodes, weights, inputs, opset=18)


@pytest.mark.parametrize("sequence_from_shape", [True, False])
def test_computed_sequence_head_split_is_packed(sequence_from_shape: bool) -> None:
    proto = _strided_audio_model(sequence_from_shape)
    fused = optimizer.optimize(proto)
    feeds = {"input_values": np.random.default_rng(4).standard_normal((2, 230)).astype(np.float32)}
    _same(proto, fused, feeds)
    assert "Attention" in _op_types(fused), _op_types(fused)

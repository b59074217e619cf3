"""Review s66: encoder-decoder models (T5, BART, mBART, Marian, Pegasus, M2M100, Whisper), both exporters.

1. T5's legacy export reads the key length of its relative position bias as ``key_states.shape[2]``, after the key
   projection's head split and transpose: ``Gather(Shape(Transpose(Reshape(k_proj, [0, 0, -1, d]))), 2)``. That
   second reader of the projection left the first self-attention of every T5 encoder and decoder a
   MultiHeadAttention ("a projection has other users"); pack-qkv now moves such readers to the packed op's input
   (on the fixture: ``test_review_s64_spellings.py::test_both_attentions_of_a_legacy_t5_encoder_are_packed``).
2. An encoder fed ``inputs_embeds`` sizes its padding mask from them: the mask stayed a bias (``_probe``).
3. Packed attention a quantizer has no form for was not counted among the float layers.
4. A ``[S, D]`` position table added before a LayerNorm was no skip for ``SkipLayerNormalization``.
5. A decoder without a cache (Optimum's ``decoder_model.onnx``) masks its self-attention with the causal order alone,
   read from no mask input: pack-qkv kept the whole bias subgraph as attention_bias, not ``unidirectional=1``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.packed_attention import PackedAttentionFusion
from passes.fusion.skip_layer_norm import SkipLayerNormFusion
from passes.quantization.dynamic import DynamicQuantizationPass
from passes.quantization.int4 import Int4QuantizationPass
from tests.helpers import assert_same_outputs, op_types

_HIDDEN, _HEADS, _HEAD = 8, 2, 4


def _projections(source: str) -> tuple[list, list]:
    """Seeded weights ``wq``, ``wk``, ``wv`` [hidden, hidden] and the MatMuls projecting ``source`` into ``q``, ``k``,
    ``v``."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((_HIDDEN, _HIDDEN)).astype(np.float32), name)
        for name in ("wq", "wk", "wv")
    ]
    nodes = [helper.make_node("MatMul", [source, f"w{p}"], [p]) for p in "qkv"]
    return weights, nodes


def _mha_reading_key_length(axis: int) -> ir.Model:
    """``MultiHeadAttention(x Wq, x Wk, x Wv)`` (2 heads of 4) under T5's relative positions of the ``n`` keys as a
    bias, ``n`` read as T5's legacy export reads it: ``Shape(Transpose(Reshape(x Wk, [0, 0, -1, 4]), perm))[axis]``,
    ``perm`` ``[0, 2, 1, 3]``."""
    weights, nodes = _projections("x")
    nodes += [
        helper.make_node("Reshape", ["k", "split"], ["k4"]),
        helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 1, 3]),
        helper.make_node("Shape", ["kt"], ["kshape"]),
        helper.make_node("Gather", ["kshape", "axis"], ["klen"], axis=0),
        helper.make_node("Range", ["zero", "klen", "step"], ["positions"]),
        helper.make_node("Cast", ["positions"], ["positionsf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["positionsf", "axis0"], ["row"]),
        helper.make_node("Unsqueeze", ["positionsf", "axis1"], ["column"]),
        # T5's relative positions ``memory - query``, scaled: a [1, 1, n, n] bias.
        helper.make_node("Sub", ["row", "column"], ["relative"]),
        helper.make_node("Mul", ["relative", "slope"], ["bias2"]),
        helper.make_node("Unsqueeze", ["bias2", "axes01"], ["bias"]),
        helper.make_node(
            "MultiHeadAttention",
            ["q", "k", "v", "", "", "bias"],
            ["y"],
            domain="com.microsoft",
            num_heads=_HEADS,
            scale=1.0,
        ),
    ]
    initializers = [
        *weights,
        numpy_helper.from_array(np.array([0, 0, -1, _HEAD], np.int64), "split"),
        numpy_helper.from_array(np.array(axis, np.int64), "axis"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "step"),
        numpy_helper.from_array(np.array(0.25, np.float32), "slope"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([0, 1], np.int64), "axes01"),
    ]
    return _self_attention_model(nodes, initializers, "t5_position_bias")


def _self_attention_model(nodes: list, initializers: list, name: str) -> ir.Model:
    """A graph of ``nodes`` from ``x`` [batch, sequence, hidden] to ``y`` of the same shape, at opset 17 with the
    com.microsoft domain."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", _HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", _HIDDEN])],
        initializers,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return ir.serde.deserialize_model(proto)


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((3, 5, _HIDDEN)).astype(np.float32)}


def test_a_key_length_read_through_the_head_split_does_not_stop_packing():
    model = _mha_reading_key_length(axis=2)
    result = PackedAttentionFusion()(model.clone())
    after = result.model
    assert "Attention" in op_types(after) and "MultiHeadAttention" not in op_types(after), result.refusals
    # The key length is read from the packed op's input, at its sequence axis.
    (shape,) = [node for node in after.graph if node.op_type == "Shape"]
    assert shape.inputs[0].name == "x"
    assert_same_outputs(model, after, _feeds(), rtol=1e-4, atol=1e-5)
    # And at another sequence length than the one verified.
    longer = {"x": np.random.default_rng(2).standard_normal((2, 11, _HIDDEN)).astype(np.float32)}
    assert_same_outputs(model, after, longer, rtol=1e-4, atol=1e-5)


def test_a_head_count_read_through_the_head_split_still_stops_packing():
    """Axis 1 after the transpose is the head split's -1 (the heads), no dim of the packed op's input."""
    model = _mha_reading_key_length(axis=1)
    result = PackedAttentionFusion()(model.clone())
    assert "MultiHeadAttention" in op_types(result.model)
    assert any("a projection has other users" in note for note in result.refusals), result.refusals


# -- 2. An encoder fed inputs_embeds: its padding mask is sized from them ---------------------------------------------
# BART's encoder exported with ``inputs_embeds`` (not ``input_ids``) expands its mask to ``[B, 1, S, S]`` by
# ``Shape(inputs_embeds)``; ``token_inputs_of`` took only 2-D integer inputs, so pack-qkv kept the whole bias subgraph
# as attention_bias ("it reads more than [batch, sequence] inputs"): 76 nodes against 48 for the same encoder fed ids.


def _mha_masked_by_embeds_shape(read_values: bool = False) -> ir.Model:
    """``MultiHeadAttention`` over projections of ``inputs_embeds [batch, sequence, 8]`` under the padding bias
    ``(1 - mask) * -1e4`` expanded to ``[B, 1, S, S]`` by ``Shape(inputs_embeds)``; with ``read_values``, the bias
    also adds ``ReduceMean(inputs_embeds)`` (a value, not a shape: no padding mask)."""
    weights, nodes = _projections("inputs_embeds")
    nodes += [
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["onef", "maskf"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "neg"], ["bias2"]),
        helper.make_node("Unsqueeze", ["bias2", "axes12"], ["bias4"]),
        helper.make_node("Shape", ["inputs_embeds"], ["shape"]),
        helper.make_node("Gather", ["shape", "first"], ["batch"], axis=0),
        helper.make_node("Gather", ["shape", "second"], ["sequence"], axis=0),
        helper.make_node("Concat", ["batch", "one", "sequence", "sequence"], ["target"], axis=0),
        helper.make_node("Expand", ["bias4", "target"], ["expanded"]),
    ]
    if read_values:
        nodes += [
            helper.make_node("ReduceMean", ["inputs_embeds"], ["mean"], keepdims=0),
            helper.make_node("Add", ["expanded", "mean"], ["bias"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["expanded"], ["bias"]))
    nodes.append(
        helper.make_node(
            "MultiHeadAttention", ["q", "k", "v", "", "", "bias"], ["y"], domain="com.microsoft", num_heads=_HEADS
        )
    )
    initializers = [
        *weights,
        numpy_helper.from_array(np.array(1.0, np.float32), "onef"),
        numpy_helper.from_array(np.array(-1e4, np.float32), "neg"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
        numpy_helper.from_array(np.array([0], np.int64), "first"),
        numpy_helper.from_array(np.array([1], np.int64), "second"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    graph = helper.make_graph(
        nodes,
        "embeds_mask",
        [
            helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "sequence", _HIDDEN]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", _HIDDEN])],
        initializers,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return ir.serde.deserialize_model(proto)


def _embeds_feeds(batch: int, sequence: int, seed: int) -> dict[str, np.ndarray]:
    mask = np.ones((batch, sequence), np.int64)
    mask[1, sequence // 2 :] = 0
    mask[-1, :2] = 0
    embeds = np.random.default_rng(seed).standard_normal((batch, sequence, _HIDDEN)).astype(np.float32)
    return {"inputs_embeds": embeds, "attention_mask": mask}


def test_a_mask_sized_from_inputs_embeds_becomes_the_mask_index():
    model = _mha_masked_by_embeds_shape()
    result = PackedAttentionFusion()(model.clone())
    (fused,) = [node for node in result.model.graph if node.op_type == "Attention"]
    assert len(fused.inputs) == 4 and fused.inputs[3] is not None, result.refusals
    assert "Expand" not in op_types(result.model)
    for batch, sequence, seed in ((3, 6, 1), (2, 13, 2)):
        assert_same_outputs(model, result.model, _embeds_feeds(batch, sequence, seed), rtol=1e-4, atol=1e-5)


def test_a_bias_reading_the_values_of_inputs_embeds_stays_a_bias():
    result = PackedAttentionFusion()(_mha_masked_by_embeds_shape(read_values=True))
    (fused,) = [node for node in result.model.graph if node.op_type == "Attention"]
    assert len(fused.inputs) == 6 and fused.inputs[5] is not None
    assert any("reads more than [batch, sequence] inputs" in note for note in result.refusals), result.refusals


# -- 3. Packed attention a quantizer has no form for was not counted float -----------------------------------------
# README: a *layer* is a MatMul, Gemm, Conv or packed-QKV Attention with a constant float32 weight. A packed Attention
# stays float under --quantize int4 (no packed 4-bit form), and under --quantize dynamic or static where QAttention
# cannot take it (T5's attention_bias); the closing note said "6 layers int4, 0 float" for a BART encoder whose two
# packed QKV projections (37% of its layer weights) stayed float, and only -v said why.


def _packed_attention_and_projection(attention_bias: bool) -> ir.Model:
    """``y = Relu(Attention(x, W_qkv, b_qkv[, attention_bias]) @ W_out)`` over ``x [batch, sequence, 32]``, 2 heads."""
    hidden = 32
    rng = np.random.default_rng(0)
    inputs = ["x", "w_qkv", "b_qkv"]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", hidden])]
    if attention_bias:
        inputs += ["", "", "attention_bias"]
        graph_inputs.append(
            helper.make_tensor_value_info("attention_bias", TensorProto.FLOAT, ["batch", 2, "sequence", "sequence"])
        )
    nodes = [
        helper.make_node("Attention", inputs, ["context"], domain="com.microsoft", num_heads=2, name="attention"),
        helper.make_node("MatMul", ["context", "w_out"], ["projected"], name="out"),
        helper.make_node("Relu", ["projected"], ["y"]),  # a layer feeding a model output stays float
    ]
    initializers = [
        numpy_helper.from_array(rng.standard_normal((hidden, 3 * hidden)).astype(np.float32) * 0.2, "w_qkv"),
        numpy_helper.from_array(rng.standard_normal(3 * hidden).astype(np.float32) * 0.1, "b_qkv"),
        numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.2, "w_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "packed_attention",
        graph_inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        initializers,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return ir.serde.deserialize_model(proto)


def _samples(attention_bias: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    samples = {"x": rng.standard_normal((4, 6, 32)).astype(np.float32)}
    if attention_bias:
        samples["attention_bias"] = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    return samples


def test_int4_counts_a_packed_attention_it_leaves_float():
    result = Int4QuantizationPass(samples=_samples(False))(_packed_attention_and_projection(attention_bias=False))
    assert result.modified
    assert any(note.startswith("1 layers int4, 1 float:") for note in result.notes), result.notes


def test_dynamic_counts_a_packed_attention_with_a_bias_it_leaves_float():
    result = DynamicQuantizationPass(samples=_samples(True))(_packed_attention_and_projection(attention_bias=True))
    assert result.modified
    assert any(note.startswith("1 layers int8, 1 float:") for note in result.notes), result.notes


# -- 4. A position table without a batch axis added before a LayerNorm ----------------------------------------------
# Pegasus adds sinusoidal positions ``[S, D]`` to the token embeddings ``[B, S, D]`` before its first norm;
# SkipLayerNormalization takes such a skip (ONNX Runtime's ``(sequence_length, hidden_size)`` form), but
# fuse-skip-layer-norm asked both operands to be 3-D ("operands are not known to be 3-D"): a tiny Pegasus encoder kept
# 1 of its 5 norms a LayerNormalization.


def _positions_then_norm(positions: list) -> ir.Model:
    """``LayerNormalization(embeddings [batch, sequence, 8] + positions)`` over the last axis."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["embeddings", "positions"], ["total"]),
            helper.make_node("LayerNormalization", ["total", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5),
        ],
        "positions_norm",
        [
            helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", "sequence", _HIDDEN]),
            helper.make_tensor_value_info("positions", TensorProto.FLOAT, positions),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", _HIDDEN])],
        [
            numpy_helper.from_array(rng.standard_normal(_HIDDEN).astype(np.float32), "gamma"),
            numpy_helper.from_array(rng.standard_normal(_HIDDEN).astype(np.float32), "beta"),
        ],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_position_table_without_batch_axis_is_the_skip():
    model = _positions_then_norm(["sequence", _HIDDEN])
    result = SkipLayerNormFusion()(model.clone())
    assert op_types(result.model) == ["SkipLayerNormalization"], result.refusals
    (fused,) = list(result.model.graph)
    assert fused.inputs[0].name == "embeddings" and fused.inputs[1].name == "positions"
    rng = np.random.default_rng(4)
    feeds = {
        "embeddings": rng.standard_normal((3, 5, _HIDDEN)).astype(np.float32),
        "positions": rng.standard_normal((5, _HIDDEN)).astype(np.float32),
    }
    assert_same_outputs(model, result.model, feeds, rtol=1e-4, atol=1e-5)


def test_a_two_d_operand_of_another_length_is_no_skip():
    """``[other, 8]`` may be ``[1, 8]`` (a broadcast the op does not take) or a length the sum refuses."""
    result = SkipLayerNormFusion()(_positions_then_norm(["other", _HIDDEN]))
    assert "SkipLayerNormalization" not in op_types(result.model)


# -- 5. The causal order alone, from no mask input ------------------------------------------------------------------
# A tiny BART decoder without a cache (its self-attention's bias built from the sequence length alone) kept that bias
# subgraph, "it reads no single input named like an attention mask": 119 nodes, 92 with unidirectional=1 (Whisper's
# decoder 111 and 67).


def _mha_under_causal_bias(window: int | None = None) -> ir.Model:
    """``MultiHeadAttention`` over projections of ``x [batch, sequence, 8]`` under ``[1, 1, S, S]`` causal bias built
    from ``Shape(x)`` (float32's lowest above the diagonal; also ``window`` and more below it, with ``window``)."""
    weights, nodes = _projections("x")
    nodes += [
        helper.make_node("Shape", ["x"], ["shape"], start=1, end=2),
        helper.make_node("Squeeze", ["shape"], ["length"]),
        helper.make_node("Range", ["zero", "length", "step"], ["positions"]),
        helper.make_node("Unsqueeze", ["positions", "axis1"], ["rows"]),
        helper.make_node("Unsqueeze", ["positions", "axis0"], ["columns"]),
        helper.make_node("Greater", ["columns", "rows"], ["future"]),
    ]
    if window is None:
        nodes.append(helper.make_node("Identity", ["future"], ["hidden"]))
    else:
        nodes += [
            helper.make_node("Sub", ["rows", "columns"], ["distance"]),
            helper.make_node("GreaterOrEqual", ["distance", "window"], ["far"]),
            helper.make_node("Or", ["future", "far"], ["hidden"]),
        ]
    nodes += [
        helper.make_node("Where", ["hidden", "lowest", "zerof"], ["bias2"]),
        helper.make_node("Unsqueeze", ["bias2", "axes01"], ["bias"]),
        helper.make_node(
            "MultiHeadAttention", ["q", "k", "v", "", "", "bias"], ["y"], domain="com.microsoft", num_heads=_HEADS
        ),
    ]
    initializers = [
        *weights,
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "step"),
        numpy_helper.from_array(np.array(window or 0, np.int64), "window"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([0, 1], np.int64), "axes01"),
        numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "lowest"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zerof"),
    ]
    return _self_attention_model(nodes, initializers, "causal_only")


def test_a_causal_bias_from_no_mask_input_becomes_unidirectional():
    model = _mha_under_causal_bias()
    result = PackedAttentionFusion(max_sequence=64)(model.clone())
    (fused,) = [node for node in result.model.graph if node.op_type == "Attention"]
    assert fused.attributes.get_int("unidirectional", 0) == 1, result.refusals
    assert len(fused.inputs) == 3 and "Where" not in op_types(result.model)
    for batch, sequence, seed in ((3, 5, 1), (2, 11, 2), (1, 1, 3)):
        x = np.random.default_rng(seed).standard_normal((batch, sequence, _HIDDEN)).astype(np.float32)
        assert_same_outputs(model, result.model, {"x": x}, rtol=1e-4, atol=1e-5)


def test_a_sliding_window_from_no_mask_input_stays_a_bias():
    result = PackedAttentionFusion(max_sequence=64)(_mha_under_causal_bias(window=4))
    (fused,) = [node for node in result.model.graph if node.op_type == "Attention"]
    assert len(fused.inputs) == 6 and fused.inputs[5] is not None
    assert not fused.attributes.get_int("unidirectional", 0)


def test_int4_leaves_attention_unpacked_and_quantizes_q_k_and_v(tmp_path):
    """Under ``--quantize int4`` pack-qkv steps aside: packed, an encoder's Q, K and V stayed float (no 4-bit form);
    unpacked they are MatMuls written in 4 bits."""
    from collections import Counter

    import optimizer
    from tests.helpers import FIXTURES

    result, report = optimizer.optimize_with_report(ir.load(FIXTURES / "bert_legacy.onnx"), quantize="int4")
    ops = Counter(node.op_type for node in result.graph)
    assert ops["Attention"] == 0 and ops["MultiHeadAttention"] == 2, ops
    record = next(p for p in report.passes if p.name == "pack-qkv")
    assert any("left unpacked for quantize-int4 (--quantize int4)" in line for line in record.refusals), record.refusals
    quantized = next(p for p in report.passes if p.name == "quantize-int4")
    assert quantized.status == "applied", quantized.refusals
    # Q, K and V of both layers read 4-bit weights (one merged MatMulNBits each, or three).
    readers = {node.inputs[0].name for node in result.graph if node.op_type == "MatMulNBits"}
    assert len(readers) >= 2 * 2, readers  # per layer: the attention's input and the FFN's

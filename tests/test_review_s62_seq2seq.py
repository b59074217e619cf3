"""Review s62: encoder-decoder decoders (BART, Marian, Whisper, T5) exported with a self-attention and a
cross-attention cache in Optimum's naming (``past_key_values.{i}.decoder.key``, ``past_key_values.{i}.encoder.key``).

1. A decoder step that takes a decoder attention mask over past + new tokens beside its cross-attention cache was
   refused (exit 2, "ONNX Runtime cannot run the input model on generated inputs"): ``cache_length_dims`` counted
   the cross-attention cache's encoder length as a second past dim and gave up, so the decoder mask was generated
   as long as the new tokens alone (a tiny BART's legacy export: ``decoder_attention_mask [1, 128]`` beside a past
   of 128 and 128 new tokens).
2. An encoder-decoder's first decoder step, exported with its presents and a decoder mask beside its encoder's
   (``decoder_attention_mask [batch, total_sequence]``, ``encoder_attention_mask [batch, encoder_sequence]``), had
   ``fuse-attention`` rolled back over ``present.1.decoder.key`` at positions the decoder mask pads (a tiny BART's
   legacy export, max |Δ| 0.0068): ``attention_operand_outputs`` looked for presents named along *the* mask's
   sequence, and two masks name two sequences, so no present was hidden as a cache's.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from optimizer.inputs import cache_length_dims, make_inputs
from optimizer.padding import padded_caches


def _mask_bias(mask: str, prefix: str) -> list[onnx.NodeProto]:
    """``{prefix}bias = Unsqueeze((1 - float(mask)) * -1e4, [1, 2])``: a ``[batch, T]`` 0/1 mask as an additive
    ``[batch, 1, 1, T]`` bias (``onef``, ``neg``, ``axes12`` from ``_constants``)."""
    return [
        helper.make_node("Cast", [mask], [f"{prefix}mf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["onef", f"{prefix}mf"], [f"{prefix}inv"]),
        helper.make_node("Mul", [f"{prefix}inv", "neg"], [f"{prefix}bias2"]),
        helper.make_node("Unsqueeze", [f"{prefix}bias2", "axes12"], [f"{prefix}bias"]),
    ]


def _constants() -> list[onnx.TensorProto]:
    """The token table (16 ids of width 4) and the constants ``_mask_bias`` and the models' Unsqueezes read."""
    rng = np.random.default_rng(0)
    return [
        helper.make_tensor(
            "table", TensorProto.FLOAT, [16, 4], rng.standard_normal((16, 4)).astype(np.float32).ravel()
        ),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("axes12", TensorProto.INT64, [2], [1, 2]),
        helper.make_tensor("onef", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("neg", TensorProto.FLOAT, [], [-1e4]),
    ]


def _seq2seq_step(decoder_mask: bool = True) -> ir.Model:
    """One head of size 4: self-attention over ``Concat(past, new)`` under the decoder mask's bias, cross-attention
    over the encoder cache under the encoder mask's; logits and both presents out."""
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
        helper.make_node("Unsqueeze", ["emb", "one"], ["q"]),
        helper.make_node("Concat", ["past_key_values.0.decoder.key", "q"], ["present.0.decoder.key"], axis=2),
        helper.make_node("Transpose", ["present.0.decoder.key"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Transpose", ["past_key_values.0.encoder.key"], ["ekt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "ekt"], ["cross_scores"]),
        *_mask_bias("encoder_attention_mask", "e"),
        helper.make_node("Add", ["cross_scores", "ebias"], ["cross_masked"]),
        helper.make_node("Softmax", ["cross_masked"], ["cross_p"], axis=-1),
        helper.make_node("MatMul", ["cross_p", "past_key_values.0.encoder.key"], ["cross_out"]),
        helper.make_node("Identity", ["past_key_values.0.encoder.key"], ["present.0.encoder.key"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT64, ["batch", "encoder_sequence"]),
    ]
    if decoder_mask:
        inputs.append(
            helper.make_tensor_value_info("decoder_attention_mask", TensorProto.INT64, ["batch", "total_sequence"])
        )
        nodes += [
            *_mask_bias("decoder_attention_mask", "d"),
            # [B, 1, S, past + S] + [B, 1, 1, T]: ONNX Runtime refuses a mask of another length than past + new.
            helper.make_node("Add", ["scores", "dbias"], ["masked"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["scores"], ["masked"]))
    nodes += [
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "present.0.decoder.key"], ["self_out"]),
        helper.make_node("Add", ["self_out", "cross_out"], ["logits4"]),
        helper.make_node("Squeeze", ["logits4", "one"], ["logits"]),
    ]
    inputs += [
        helper.make_tensor_value_info(
            "past_key_values.0.decoder.key", TensorProto.FLOAT, ["batch", 1, "past_sequence", 4]
        ),
        helper.make_tensor_value_info(
            "past_key_values.0.encoder.key", TensorProto.FLOAT, ["batch", 1, "encoder_sequence", 4]
        ),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 4]),
        helper.make_tensor_value_info("present.0.decoder.key", TensorProto.FLOAT, ["batch", 1, "total_sequence", 4]),
        helper.make_tensor_value_info("present.0.encoder.key", TensorProto.FLOAT, ["batch", 1, "encoder_sequence", 4]),
    ]
    constants = _constants()
    graph = helper.make_graph(nodes, "seq2seq_step", inputs, outputs, constants)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def test_cross_attention_cache_is_no_second_past():
    assert cache_length_dims(_seq2seq_step()) == {"total_sequence": ("past_sequence", "sequence")}
    # Without a decoder mask, the encoder's mask is no mask of past + new tokens.
    assert cache_length_dims(_seq2seq_step(decoder_mask=False)) == {}


def test_generated_decoder_mask_spans_past_and_new_tokens():
    inputs = make_inputs(_seq2seq_step(), {"sequence": 3, "past_sequence": 5, "encoder_sequence": 7})
    assert inputs["decoder_attention_mask"].shape == (1, 8)
    assert inputs["encoder_attention_mask"].shape == (1, 7)
    assert inputs["past_key_values.0.encoder.key"].shape == (1, 1, 7, 4)


def _attention_in_if() -> ir.Model:
    """Optimum's merged decoder in miniature: the whole attention inside both branches of an If on
    ``use_cache_branch``."""

    def branch(name: str) -> onnx.GraphProto:
        nodes = [
            helper.make_node("Transpose", ["x"], [f"{name}_kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["x", f"{name}_kt"], [f"{name}_scores"]),
            helper.make_node("Mul", [f"{name}_scores", "scale"], [f"{name}_scaled"]),
            helper.make_node("Softmax", [f"{name}_scaled"], [f"{name}_p"], axis=-1),
            helper.make_node("MatMul", [f"{name}_p", "x"], [f"{name}_out"]),
        ]
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["batch", 2, "sequence", 4])
        return helper.make_graph(nodes, name, [], [out])

    graph = helper.make_graph(
        [
            helper.make_node(
                "If", ["use_cache_branch"], ["y"], then_branch=branch("with_past"), else_branch=branch("no_past")
            )
        ],
        "merged",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, "sequence", 4]),
            helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, "sequence", 4])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def test_attention_only_in_if_branches_is_said():
    """A merged decoder (Optimum's ``use_cache_branch``) holds every attention in an If: fuse-attention fused
    none and said nothing, where the quantizers say they do not enter such bodies."""
    from passes.fusion.attention import AttentionFusion

    result = AttentionFusion()(_attention_in_if())
    assert not result.modified
    assert any(
        "2 Softmax stand in the body of a Loop, If or Scan ('no_past', 'with_past'), which it does not enter" in note
        for note in result.notes
    ), result.notes


def _seq2seq_prefill() -> ir.Model:
    """One head of size 4 over the new tokens (no past) under the decoder mask, cross-attention over the encoder's
    hidden states under the encoder mask; logits and both presents out."""
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
        helper.make_node("Unsqueeze", ["emb", "one"], ["present.0.decoder.key"]),
        helper.make_node("Transpose", ["present.0.decoder.key"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["present.0.decoder.key", "kt"], ["scores"]),
        *_mask_bias("decoder_attention_mask", "d"),
        helper.make_node("Add", ["scores", "dbias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "present.0.decoder.key"], ["self_out"]),
        helper.make_node("Unsqueeze", ["encoder_hidden_states", "one"], ["present.0.encoder.key"]),
        helper.make_node("Transpose", ["present.0.encoder.key"], ["ekt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["self_out", "ekt"], ["cross_scores"]),
        *_mask_bias("encoder_attention_mask", "e"),
        helper.make_node("Add", ["cross_scores", "ebias"], ["cross_masked"]),
        helper.make_node("Softmax", ["cross_masked"], ["cross_p"], axis=-1),
        helper.make_node("MatMul", ["cross_p", "present.0.encoder.key"], ["cross_out"]),
        helper.make_node("Squeeze", ["cross_out", "one"], ["logits"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "total_sequence"]),
        helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["batch", "encoder_sequence", 4]),
        helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT64, ["batch", "encoder_sequence"]),
        helper.make_tensor_value_info("decoder_attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "total_sequence", 4]),
        helper.make_tensor_value_info("present.0.decoder.key", TensorProto.FLOAT, ["batch", 1, "total_sequence", 4]),
        helper.make_tensor_value_info("present.0.encoder.key", TensorProto.FLOAT, ["batch", 1, "encoder_sequence", 4]),
    ]
    constants = _constants()
    proto = helper.make_model(
        helper.make_graph(nodes, "seq2seq_prefill", inputs, outputs, constants),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def test_decoder_and_cross_attention_presents_are_hidden_as_caches():
    assert padded_caches(_seq2seq_prefill()) == {"present.0.decoder.key", "present.0.encoder.key"}

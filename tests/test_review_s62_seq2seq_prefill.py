"""Review s62 (on a6c189b): an encoder-decoder's first decoder step, exported with its presents and a decoder mask
beside its encoder's (``decoder_attention_mask [batch, total_sequence]``, ``encoder_attention_mask [batch,
encoder_sequence]``), had ``fuse-attention`` rolled back over ``present.1.decoder.key`` at positions the decoder
mask pads (a tiny BART's legacy export, max |Δ| 0.0068): ``attention_operand_outputs`` looked for presents named
along *the* mask's sequence, and two masks name two sequences, so no present was hidden as a cache's.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from optimizer.padding import padded_caches


def _seq2seq_prefill() -> ir.Model:
    """One head of size 4 over the new tokens (no past) under the decoder mask, cross-attention over the encoder's
    hidden states under the encoder mask; logits and both presents out."""
    rng = np.random.default_rng(0)
    table = helper.make_tensor(
        "table", TensorProto.FLOAT, [16, 4], rng.standard_normal((16, 4)).astype(np.float32).ravel()
    )
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
        helper.make_node("Unsqueeze", ["emb", "one"], ["present.0.decoder.key"]),
        helper.make_node("Transpose", ["present.0.decoder.key"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["present.0.decoder.key", "kt"], ["scores"]),
        helper.make_node("Cast", ["decoder_attention_mask"], ["dmf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["onef", "dmf"], ["dinv"]),
        helper.make_node("Mul", ["dinv", "neg"], ["dbias2"]),
        helper.make_node("Unsqueeze", ["dbias2", "axes12"], ["dbias"]),
        helper.make_node("Add", ["scores", "dbias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "present.0.decoder.key"], ["self_out"]),
        helper.make_node("Unsqueeze", ["encoder_hidden_states", "one"], ["present.0.encoder.key"]),
        helper.make_node("Transpose", ["present.0.encoder.key"], ["ekt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["self_out", "ekt"], ["cross_scores"]),
        helper.make_node("Cast", ["encoder_attention_mask"], ["emf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["onef", "emf"], ["einv"]),
        helper.make_node("Mul", ["einv", "neg"], ["ebias2"]),
        helper.make_node("Unsqueeze", ["ebias2", "axes12"], ["ebias"]),
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
    constants = [
        table,
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("axes12", TensorProto.INT64, [2], [1, 2]),
        helper.make_tensor("onef", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("neg", TensorProto.FLOAT, [], [-1e4]),
    ]
    proto = helper.make_model(
        helper.make_graph(nodes, "seq2seq_prefill", inputs, outputs, constants),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def test_decoder_and_cross_attention_presents_are_hidden_as_caches():
    assert padded_caches(_seq2seq_prefill()) == {"present.0.decoder.key", "present.0.encoder.key"}

"""Lengths named apart are verified apart: a rewrite that reads one for the other is caught.

Generated inputs gave every free length one size (128, then 257), so a query's and a key's lengths, an
encoder's and a decoder's, were equal in every set, and a rewrite reading one for the other verified
(``optimizer.inputs.lengths_apart``). Where ONNX Runtime refuses the model on lengths apart (an exporter
named one length differently per input), they stay equal. Outputs at padded positions are read against the
mask of their own length (``optimizer.padding.paddings``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

import optimizer
from optimizer.inputs import lengths_apart
from optimizer.padding import hide_padded, paddings
from optimizer.protocol import NotedResult
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from tests.test_verification_holes import _with_mutant


def _mean_of_keys(key_length: str = "k_len") -> ir.Model:
    """``mean(q, axis 1) + sum(k, axis 1) / len(k)``, the key's length read from its shape."""
    nodes = [
        helper.make_node("ReduceMean", ["q", "axes"], ["q_mean"], keepdims=0),
        helper.make_node("ReduceSum", ["k", "axes"], ["k_sum"], keepdims=0),
        helper.make_node("Shape", ["k"], ["k_shape"], start=1, end=2, name="key_shape"),
        helper.make_node("Cast", ["k_shape"], ["k_count"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["k_sum", "k_count"], ["k_mean"]),
        helper.make_node("Add", ["q_mean", "k_mean"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "lengths",
        [
            helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", "q_len", 4]),
            helper.make_tensor_value_info("k", TensorProto.FLOAT, ["batch", key_length, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


class _KeyLengthFromQuery(ir.passes.InPlacePass):
    """An "exact" rewrite that reads the key's length off the query: right only where the two are equal."""

    def call(self, model):
        (node,) = [node for node in model.graph if node.name == "key_shape"]
        node.replace_input_with(0, model.graph.inputs[0])
        return NotedResult(model, True)


def test_a_rewrite_reading_one_length_for_another_is_rolled_back(monkeypatch):
    _with_mutant(monkeypatch, "key-length-from-query", _KeyLengthFromQuery, approximate=False)
    _, report = optimizer.optimize_with_report(_mean_of_keys(), passes=[])
    record = report.passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert any("q_len=257, k_len=255" in label for label in report.input_sets), report.input_sets


def test_lengths_onnx_runtime_needs_equal_stay_equal():
    # q + k elementwise: ONNX Runtime refuses lengths apart, so the second binding keeps them equal.
    model = _mean_of_keys()
    add = ir.node("Add", [model.graph.inputs[0], model.graph.inputs[1]])
    model.graph.append(add)
    add.outputs[0].name, add.outputs[0].dtype = "sum", ir.DataType.FLOAT
    add.outputs[0].shape = ir.Shape(["batch", "q_len", 4])
    model.graph.outputs.append(add.outputs[0])
    _, report = optimizer.optimize_with_report(model, passes=["remove-identity"])
    assert report.passes[-1].status != STATUS_ROLLED_BACK
    assert any("q_len=257, k_len=257" in label for label in report.input_sets), report.input_sets


def test_a_correct_rewrite_still_applies_with_lengths_apart(monkeypatch):
    class _DoubleNegation(ir.passes.InPlacePass):
        def call(self, model):
            y = model.graph.outputs[0]
            first = ir.node("Neg", [y.producer().outputs[0]])
            second = ir.node("Neg", [first.outputs[0]])
            model.graph.extend([first, second])
            second.outputs[0].dtype, second.outputs[0].shape = y.dtype, y.shape
            second.outputs[0].name, y.name = "y", "y.inner"
            model.graph.outputs[0] = second.outputs[0]
            return NotedResult(model, True)

    _with_mutant(monkeypatch, "double-negation", _DoubleNegation, approximate=False)
    _, report = optimizer.optimize_with_report(_mean_of_keys(), passes=[])
    assert report.passes[-1].status == STATUS_APPLIED, report.passes[-1].detail


def test_lengths_apart_leave_batches_fixed_dims_and_a_single_length_alone():
    model = _mean_of_keys()
    assert lengths_apart(model, {"batch": 2, "q_len": 257, "k_len": 257}, {"batch": 1, "q_len": 128}) == [
        {"batch": 2, "q_len": 257, "k_len": 255}
    ]
    # Never the first binding's size, never one taken.
    assert lengths_apart(model, {"batch": 2, "q_len": 65, "k_len": 65}, {"q_len": 128, "k_len": 63}) == [
        {"batch": 2, "q_len": 65, "k_len": 61}
    ]
    assert lengths_apart(model, {"batch": 2, "q_len": 257, "k_len": 257}, {}, {"k_len": 257}) == []
    assert lengths_apart(_mean_of_keys(key_length="q_len"), {"batch": 2, "q_len": 257}, {}) == []


def _seq2seq_first_step() -> ir.Model:
    """A decoder's first step: tokens and their mask (one length, named twice), encoder states and their mask."""
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("decoder_attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
        helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["batch", "encoder_sequence", 4]),
        helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT64, ["batch", "encoder_sequence"]),
    ]
    nodes = [
        helper.make_node("Add", ["input_ids", "decoder_attention_mask"], ["tokens"]),  # refuses two lengths
        helper.make_node("ReduceSum", ["tokens", "axes"], ["token_sum"], keepdims=0),
        helper.make_node("Cast", ["token_sum"], ["token_sum_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["encoder_hidden_states", "axes"], ["encoded"], keepdims=0),
        helper.make_node("ReduceSum", ["encoded", "last"], ["encoded_sum"], keepdims=0),
        helper.make_node("Add", ["token_sum_f", "encoded_sum"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "first_step",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        [
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("last", TensorProto.INT64, [1], [1]),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_the_encoders_length_is_drawn_apart_where_the_decoders_two_names_must_agree():
    model = _seq2seq_first_step()
    ways = lengths_apart(model, {"batch": 2, "sequence": 257, "total_sequence": 257, "encoder_sequence": 257}, {})
    assert ways[:2] == [
        {"batch": 2, "sequence": 257, "total_sequence": 255, "encoder_sequence": 253},
        {"batch": 2, "sequence": 255, "total_sequence": 255, "encoder_sequence": 257},
    ]
    _, report = optimizer.optimize_with_report(model, passes=["remove-identity"])
    assert any("sequence=255, total_sequence=255, encoder_sequence=257" in label for label in report.input_sets), (
        report.input_sets
    )


def test_each_output_is_read_against_the_mask_of_its_own_length():
    decoder_mask = np.ones((2, 6), np.int64)
    decoder_mask[0, :2] = 0
    encoder_mask = np.ones((2, 4), np.int64)
    encoder_mask[1, -1] = 0
    found = paddings(
        {"attention_mask": decoder_mask, "encoder_attention_mask": encoder_mask},
        ["attention_mask", "encoder_attention_mask"],
    )
    assert set(found) == {(2, 6), (2, 4)}
    reference = {"logits": np.zeros((2, 6, 3), np.float32), "encoded": np.zeros((2, 4, 3), np.float32)}
    outputs = {name: value + 1 for name, value in reference.items()}
    hidden = hide_padded(outputs, found, reference)
    assert (
        (hidden["logits"][0, :2] == 0).all()
        and (hidden["logits"][0, 2:] == 1).all()
        and (hidden["logits"][1] == 1).all()
    )
    assert (
        (hidden["encoded"][1, -1] == 0).all()
        and (hidden["encoded"][1, :-1] == 1).all()
        and (hidden["encoded"][0] == 1).all()
    )


def test_accuracy_figures_leave_out_each_outputs_own_padding():
    # An encoder-decoder's decoder states and encoder states, each beside its own mask: the accuracy figures
    # (``padded_outputs``) left every padded position of both in, as no one mask named both sequences.
    from optimizer.padding import padded_outputs

    inputs = [
        helper.make_tensor_value_info("decoder_states", TensorProto.FLOAT, ["batch", "sequence", 4]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("encoder_states", TensorProto.FLOAT, ["batch", "encoder_sequence", 4]),
        helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT64, ["batch", "encoder_sequence"]),
    ]
    outputs = [
        helper.make_tensor_value_info("decoded", TensorProto.FLOAT, ["batch", "sequence", 4]),
        helper.make_tensor_value_info("encoded", TensorProto.FLOAT, ["batch", "encoder_sequence", 4]),
    ]
    nodes = [
        helper.make_node("Relu", ["decoder_states"], ["decoded"]),
        helper.make_node("Relu", ["encoder_states"], ["encoded"]),
    ]
    model = ir.from_proto(helper.make_model(helper.make_graph(nodes, "two_sequences", inputs, outputs)))
    decoder_mask, encoder_mask = np.ones((2, 6), np.int64), np.ones((2, 4), np.int64)
    decoder_mask[0, :2], encoder_mask[1, -1] = 0, 0
    batch = {"attention_mask": decoder_mask, "encoder_attention_mask": encoder_mask}
    values = {"decoded": np.zeros((2, 6, 4), np.float32), "encoded": np.zeros((2, 4, 4), np.float32)}
    found = padded_outputs(model, batch, values, values)
    assert found["decoded"].shape == (2, 6, 1) and found["decoded"][..., 0].tolist() == (decoder_mask == 0).tolist()
    assert found["encoded"].shape == (2, 4, 1) and found["encoded"][..., 0].tolist() == (encoder_mask == 0).tolist()

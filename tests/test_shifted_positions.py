"""Positions without a mask: generated ``position_ids`` counted ``past + 0..S-1`` alike in every input set of a model
with no mask-like input (the padded copy, which counts them as Hugging Face does on a left-padded row, needs a mask),
so a rewrite reading an ``arange`` of the length for them was verified. A copy of the first set whose first row counts
as after one padded position is now verified too."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

import optimizer
from optimizer.padding import shifted_positions
from optimizer.report import STATUS_ROLLED_BACK
from tests.test_review_s63_coinc import _PositionsAsArange, _with_mutant


def _embeddings_without_mask() -> ir.Model:
    """``wte[input_ids] + wpe[position_ids]``: a decoder's embeddings with no mask input."""
    rng = np.random.default_rng(0)
    tables = [
        onnx.numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "wte"),
        onnx.numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "wpe"),
    ]
    nodes = [
        helper.make_node("Gather", ["wte", "input_ids"], ["tokens"]),
        helper.make_node("Gather", ["wpe", "position_ids"], ["places"]),
        helper.make_node("Add", ["tokens", "places"], ["y"]),
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "position_ids")
    ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 8])
    graph = helper.make_graph(nodes, "embeddings", inputs, [output], tables)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_rewrite_reading_an_arange_for_positions_without_a_mask_is_rolled_back(monkeypatch):
    _with_mutant(monkeypatch, _PositionsAsArange)
    _, report = optimizer.optimize_with_report(_embeddings_without_mask(), passes=["remove-identity"])
    record = report.passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "position_ids counted as after one padded position on row 1" in record.detail


def test_the_embeddings_without_a_mask_still_verify():
    _, report = optimizer.optimize_with_report(_embeddings_without_mask())
    assert report.verified
    assert all(record.status != STATUS_ROLLED_BACK for record in report.passes)


def test_positions_are_shifted_as_after_one_padded_position():
    positions = np.tile(np.arange(4, 12), (2, 1))  # a past of 4, 8 new tokens
    shifted, how = shifted_positions({"position_ids": positions, "input_ids": positions})
    np.testing.assert_array_equal(shifted["position_ids"][0], np.arange(3, 11))
    np.testing.assert_array_equal(shifted["position_ids"][1], positions[1])
    assert shifted["input_ids"] is positions
    assert "row 1" in how
    first, _ = shifted_positions({"position_ids": np.arange(6)[None]})
    np.testing.assert_array_equal(first["position_ids"][0], [1, 0, 1, 2, 3, 4])
    # Positions of another layout (offset below a table), or one position with no past: left alone.
    assert shifted_positions({"position_ids": np.tile(np.arange(2, 10), (2, 1)) * 2}) is None
    assert shifted_positions({"position_ids": np.zeros((1, 1), np.int64)}) is None

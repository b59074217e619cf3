"""Review of the generated-length retry (optimizer/api.py): a decoder with a key/value cache whose mask spans
past + new tokens, with the new tokens' length given by --dim, looped forever when the model refused it.

The mask's total length (past + sequence) is a free dim, but it never drops below the --dim length: once the past
was shortened to nothing, every retry generated the same inputs at the same "shorter" length again.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer.inputs as inputs_module
from optimizer.api import optimize_with_report
from optimizer.errors import GeneratedInputsRefusedError


def _decoder_refusing_long_sequences() -> ir.Model:
    """``y = ids[..., None] + table + sum(past) + sum(mask)`` with a table of 64 positions: it runs only at 64 (or 1)
    new tokens, beside a past and a mask of past + new tokens."""
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids_float", "last"], ["column"]),
        helper.make_node("Add", ["column", "table"], ["positions"]),
        helper.make_node("ReduceSum", ["past_key"], ["past_sum"], keepdims=0),
        helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["mask_float"], ["mask_sum"], keepdims=0),
        helper.make_node("Add", ["past_sum", "mask_sum"], ["sums"]),
        helper.make_node("Add", ["positions", "sums"], ["summed"]),
        helper.make_node("Identity", ["summed"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "decoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
            helper.make_tensor_value_info("past_key", TensorProto.FLOAT, ["batch", 2, "past", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 4])],
        [
            numpy_helper.from_array(np.zeros((64, 4), np.float32), "table"),
            numpy_helper.from_array(np.array([-1], np.int64), "last"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_a_given_length_inside_a_cache_mask_stops_the_retries(monkeypatch):
    tries = []
    shorter = inputs_module.shorter_generated_length

    def counted(*args):
        tries.append(dict(args[2]))
        if len(tries) > 10:
            raise AssertionError(f"generated again and again at the same lengths: {tries[-3:]}")
        return shorter(*args)

    monkeypatch.setattr(inputs_module, "shorter_generated_length", counted)
    with pytest.raises(GeneratedInputsRefusedError, match="cannot run the input model on generated inputs"):
        optimize_with_report(_decoder_refusing_long_sequences(), ["remove-identity"], dims={"sequence": 100})
    assert all(bound["sequence"] == 100 for bound in tries), tries  # the user's length is never shortened

"""Review s73 (late2): the verification sets this session added where the graph compares a length or a reduction with
a constant (``optimizer/compared_inputs.py``'s ``compared_lengths``, ``optimizer/api.py``'s ``_add_compared_lengths``
and ``_add_other_reduced_side``) and the padding checks beside them (``optimizer/padding.py``).

1. Fixed: a decoder's new tokens (or past) held at a compared length kept the first set's past (or new tokens) beside
   them, and the set ran past ``--max-sequence`` (new tokens at 60 beside a past of 32: a mask 92 long under
   ``--max-sequence 64``), where a fused model's rotary caches end. The other is shortened as ``bind_dims`` shortens
   it.
2. Fixed: a float input whose elements are compared with a constant (``Where(x > 10, ...)``, drawn half each side)
   and whose reduction is compared too (``ReduceMax(x) > 1``) was moved, slice by slice, so that the maximum sat at 1:
   no element was past 10 in any set, and a rewrite wrong there verified (it was rolled back before this session's
   reduction holding). ``make_inputs`` leaves such an input as drawn, and verification adds a copy of the first set
   with its reduction held on the other side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.pipeline import STATUS_ROLLED_BACK
from tests.helpers import optimize_with_rewrite


def _decoder(compared: int, read: str, axis: int) -> onnx.ModelProto:
    """A one-layer decoder step whose output switches on ``Less(Shape(read)[axis], compared)``; its present key is its
    past and new tokens together, as long as its mask."""
    nodes = [
        helper.make_node("Shape", [read], ["shape"]),
        helper.make_node("Gather", ["shape", "axis"], ["length"], axis=0),
        helper.make_node("Less", ["length", "compared"], ["cond"]),
        helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids", "axes"], ["ids4"]),
        helper.make_node("Expand", ["ids4", "heads"], ["key"]),
        helper.make_node("Concat", ["past_key_values.0.key", "key"], ["present.0.key"], axis=2),
        helper.make_node("ReduceSum", ["present.0.key"], ["keys"], keepdims=0),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["mask"], ["attended"], keepdims=0),
        helper.make_node("Add", ["keys", "attended"], ["hit"]),
        helper.make_node("Where", ["cond", "hit", "miss"], ["y"]),
    ]
    constants = {
        "axis": np.int64(axis),
        "compared": np.int64(compared),
        "axes": np.array([1, 3], np.int64),
        "heads": np.array([1, 2, 1, 4], np.int64),
        "miss": np.float32(0.0),
    }
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
        helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, ["batch", 2, "past_sequence", 4]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, ["batch", 2, "total_sequence", 4]),
    ]
    initializers = [numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items()]
    graph = helper.make_graph(nodes, "decoder", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


# The dim a comparison reads: the new tokens (``input_ids``' axis 1), or the past (the cache's axis 2).
_READS = {"sequence": ("input_ids", 1), "past_sequence": ("past_key_values.0.key", 2)}


@pytest.fixture(scope="module", params=sorted(_READS))
def capped(request, tmp_path_factory: pytest.TempPathFactory):
    """The compared dim and the report of optimizing a decoder that compares it with 60 under ``--max-sequence 64``."""
    folder: Path = tmp_path_factory.mktemp("late2")
    onnx.save(_decoder(60, *_READS[request.param]), folder / "in.onnx")
    passes = ["remove-identity", "fuse-rotary-embedding"]  # --max-sequence needs a pass it bounds
    _, report = optimize_with_report(folder / "in.onnx", passes, output=folder / "out.onnx", max_sequence=64)
    return request.param, report


def test_a_compared_decoder_length_stays_within_max_sequence_with_the_other(capped) -> None:
    name, report = capped
    compared = [i for i, label in enumerate(report.input_sets) if f"'{name}' at 60, a length the graph" in label]
    assert compared, report.input_sets  # the set at 60 is made, the other length shortened, not dropped
    for index in compared:
        shapes = report.inputs[index]
        past, new, total = shapes["past_key_values.0.key"][2], shapes["input_ids"][1], shapes["attention_mask"][1]
        assert (past, new)[name == "sequence"] == 60
        assert total == past + new <= 64, (report.input_sets[index], shapes)


def _compared_and_reduced() -> onnx.ModelProto:
    """``y = Where(x > 10, hit, 0) + Where(ReduceMax(x) > 1, 2, 0.5)``: one input's elements and maximum compared."""
    constants = {"ten": 10.0, "one": 1.0, "hit": 1.0, "zero": 0.0, "two": 2.0, "miss": 0.5}
    nodes = [
        helper.make_node("Greater", ["x", "ten"], ["past_ten"]),
        helper.make_node("ReduceMax", ["x"], ["largest"], keepdims=1),
        helper.make_node("Greater", ["largest", "one"], ["past_one"]),
        helper.make_node("Where", ["past_ten", "hit", "zero"], ["elements"]),
        helper.make_node("Where", ["past_one", "two", "miss"], ["reduced"]),
        helper.make_node("Add", ["elements", "reduced"], ["y"]),
    ]
    initializers = [numpy_helper.from_array(np.float32(value), name) for name, value in constants.items()]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "L"])]
    graph = helper.make_graph(nodes, "compared_and_reduced", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _set(name: str):
    """A rewrite that changes constant ``name`` to 5: wrong only where the branch that reads it is taken."""

    def rewrite(model: ir.Model) -> None:
        model.graph.initializers[name].const_value = ir.Tensor(np.array(5.0, np.float32), name=name)

    return rewrite


@pytest.mark.parametrize("broken", ["hit", "miss"], ids=["past-the-elements-threshold", "under-the-reduced-one"])
def test_a_rewrite_wrong_past_either_comparison_of_one_input_is_rolled_back(tmp_path: Path, broken: str) -> None:
    record = optimize_with_rewrite(_compared_and_reduced(), _set(broken), tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail

"""Hostile review (s55) of the int8 passes: ``quantize-embeddings`` (``passes/quantization/embedding.py``).

Findings, both fixed (the tests below failed before):

1. **Two unnamed lookups of one table made an invalid model.** Each rewritten ``Gather`` named its four new nodes
   after the table when it had no name of its own (``tab_int8_rows``, ...): a second unnamed lookup of the same
   table (an encoder and a decoder embedding, two id inputs) repeated them, ONNX Runtime refused the result ("two
   nodes with same node name (tab_int8_rows)") and the pass was rolled back, the table left float. New nodes now
   take unique names.
2. **A lookup inside an ``If``/``Loop`` body was left reading the float table.** Only the main graph's Gathers were
   rewritten, while the twin replaced every use of the table, bodies included: the result differed from its twin
   and was rolled back ("differs from its twin ... max abs error 0.211"), and had it passed, the float table would
   have stayed beside its int8 copy under a note of "0.2 MB smaller". Row lookups in bodies are now rewritten too.

And one misleading refusal (``passes/_layers.py``), fixed: a MatMul whose constant is its first operand (``W @ x``)
and one whose weight is already ``DequantizeLinear`` of int8 values were both refused with "weight is not a
constant", which reads as false for a model whose weight plainly is one; each now says which it is.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.runtime import run_model
from passes.quantization.dynamic import DynamicQuantizationPass
from passes.quantization.embedding import EmbeddingQuantizationPass

_ROWS, _WIDTH = 512, 128


def _table() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((_ROWS, _WIDTH)).astype(np.float32)


def _model(nodes, inputs, outputs, initializers) -> ir.Model:
    graph = helper.make_graph(
        nodes, "lookups", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers]
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _ids(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-_ROWS, _ROWS, (2, 5)).astype(np.int64)


def _dequantized_rows(table: np.ndarray) -> np.ndarray:
    scale = np.abs(table).max(axis=1, keepdims=True) / 127
    return np.clip(np.rint(table / scale), -127, 127) * scale


def test_two_unnamed_lookups_of_one_table_are_both_rewritten():
    table = _table()
    model = _model(
        [
            helper.make_node("Gather", ["table", "ids"], ["a"]),
            helper.make_node("Gather", ["table", "other_ids"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", 5]),
            helper.make_tensor_value_info("other_ids", TensorProto.INT64, ["B", 5]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 5, _WIDTH])],
        [("table", table)],
    )
    result = EmbeddingQuantizationPass()(model)
    assert result.modified
    names = [node.name for node in result.model.graph]
    assert len(names) == len(set(names))
    assert "table" not in result.model.graph.initializers
    feeds = {"ids": _ids(1), "other_ids": _ids(2)}
    (y,) = run_model(result.model, feeds).values()  # ONNX Runtime loads it
    rows = _dequantized_rows(table)
    np.testing.assert_allclose(y, rows[feeds["ids"]] + rows[feeds["other_ids"]], rtol=1e-5, atol=1e-5)


def test_a_lookup_inside_an_if_body_is_rewritten_with_the_main_graphs():
    table = _table()
    then_branch = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["inner"])],
        "then",
        [],
        [helper.make_tensor_value_info("inner", TensorProto.FLOAT, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["outer"], ["copy"])],
        "else",
        [],
        [helper.make_tensor_value_info("copy", TensorProto.FLOAT, None)],
    )
    model = _model(
        [
            helper.make_node("Gather", ["table", "ids"], ["outer"]),
            helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch),
        ],
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", 5]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 5, _WIDTH])],
        [("table", table)],
    )
    result = EmbeddingQuantizationPass()(model)
    assert result.modified
    after = result.model
    assert "table" not in after.graph.initializers  # no float copy beside the int8 one
    rows = _dequantized_rows(table)
    ids = _ids(3)
    for flag in (True, False):
        feeds = {"ids": ids, "flag": np.array(flag)}
        (y,) = run_model(after, feeds).values()
        (twin,) = run_model(result.twin.model, feeds).values()
        np.testing.assert_allclose(y, rows[ids], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, twin, rtol=1e-5, atol=1e-5)


def test_a_constant_first_operand_and_a_dequantized_weight_are_refused_as_what_they_are():
    weight = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    model = _model(
        [
            helper.make_node("MatMul", ["w", "x"], ["a"], name="weight_first"),
            helper.make_node("DequantizeLinear", ["w_int8", "w_scale"], ["w_dequantized"]),
            helper.make_node("MatMul", ["a", "w_dequantized"], ["b"], name="already_int8"),
            helper.make_node("MatMul", ["b", "w"], ["y"], name="head"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 16])],
        [("w", weight), ("w_int8", np.ones((16, 16), np.int8)), ("w_scale", np.array(0.01, np.float32))],
    )
    result = DynamicQuantizationPass()(model)
    assert not result.modified
    assert sorted(result.refusals) == [
        "1 of 3 MatMul stay float: its constant is the first operand (W @ x); only x @ W, the constant second, "
        "is taken",
        "1 of 3 MatMul stay float: its result is a model output (--quantize-outputs quantizes it)",
        "1 of 3 MatMul stay float: weight is already quantized (it is read through DequantizeLinear)",
    ]


def test_a_weight_holding_nan_is_refused_with_a_reason_and_the_others_quantized():
    # Before: the whole pass failed ("ValueError: int8 weight of l1: its values and scales do not stand for the
    # float weight"), exit 0, with numpy's RuntimeWarning on stderr.
    rng = np.random.default_rng(0)
    broken = rng.standard_normal((16, 16)).astype(np.float32)
    broken[3, 4] = np.nan
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="l1"),
            helper.make_node("MatMul", ["h", "w2"], ["y"], name="l2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 16])],
        [("w1", rng.standard_normal((16, 16)).astype(np.float32)), ("w2", broken)],
    )
    result = DynamicQuantizationPass()(model)
    assert result.modified
    assert any("weight holds NaN or Inf" in refusal for refusal in result.refusals), result.refusals

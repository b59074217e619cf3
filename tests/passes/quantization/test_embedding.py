"""quantize-embeddings: constant Gather tables to int8 rows with per-row scales."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from passes.quantization.embedding import EmbeddingQuantizationPass
from tests.helpers import computed_op_types
from tests.passes.quantization.conftest import drift


def _lookup(tied: bool = False) -> ir.Model:
    """ids → Gather(table [1000, 96]) (→ MatMul with the table transposed: a tied LM head)."""
    table = np.random.default_rng(0).standard_normal((1000, 96)).astype(np.float32)
    table[7] *= 100.0  # one row far larger: per-row scales keep the others precise
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h"], name="lookup")]
    outputs = [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", "S", 96])]
    if tied:
        nodes += [
            helper.make_node("Transpose", ["table"], ["table_t"], name="tie"),
            helper.make_node("MatMul", ["h", "table_t"], ["logits"], name="head"),
        ]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "S", 1000])]
    graph = helper.make_graph(
        nodes,
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
        outputs,
        [numpy_helper.from_array(table, "table")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_table_becomes_int8_rows_with_per_row_scales():
    model = _lookup()
    quantization = EmbeddingQuantizationPass()
    result = quantization(model.clone())
    after = result.model
    assert computed_op_types(after) == ["Gather", "Gather", "Cast", "Mul"]
    assert after.graph.initializers["table.int8"].const_value.dtype == ir.DataType.INT8
    assert "table" not in after.graph.initializers
    assert result.notes[0].startswith("1 embedding tables int8 (per row)")
    ids = {"ids": np.array([[7, 1, 2, 999], [0, 7, 5, 6]], dtype=np.int64)}
    assert drift(model, after, ids).cosine > 0.9999
    assert after.graph.outputs[0].name == "h"


def test_a_table_tied_to_the_lm_head_stays_float():
    assert not EmbeddingQuantizationPass()(_lookup(tied=True)).modified


def test_a_table_also_gathered_along_another_axis_stays_float():
    model = _lookup()
    columns = ir.Node("", "Gather", [model.graph.initializers["table"], model.graph.inputs[0]], name="columns")
    columns.attributes["axis"] = ir.AttrInt64("axis", 1)
    model.graph.append(columns)
    assert not EmbeddingQuantizationPass()(model).modified


def test_exclude_keeps_a_table_float_by_lookup_name_or_op_type():
    for pattern in ("look*", "Gather"):
        result = EmbeddingQuantizationPass(exclude=(pattern,))(_lookup())
        assert not result.modified
        assert result.refusals == ["1 of 1 embedding tables stay float: matched by --exclude"]
    unmatched = EmbeddingQuantizationPass(exclude=("nothing*",))(_lookup())
    assert unmatched.modified
    assert any("'nothing*' matches no node name" in line for line in unmatched.notes)


def test_exclude_reaches_quantize_embeddings_from_the_command_line(tmp_path):
    from optimizer.cli import main

    source = tmp_path / "lookup.onnx"
    onnx.save(ir.to_proto(_lookup()), source)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(source), "-o", str(out), "--quantize-embeddings", "--exclude", "lookup", "-q"]) == 0
    assert [node.op_type for node in onnx.load(out).graph.node] == ["Gather"]

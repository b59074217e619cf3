"""Review s56 (reduced precision on exported encoders): findings, each with the fix's test."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from passes.quantization.embedding import EmbeddingQuantizationPass


def _model(rows: int, *, lookup: bool = True) -> ir.Model:
    """ids → Gather(table [rows, 64]) → MatMul; without ``lookup`` the ids are a float input read by the MatMul."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    table = numpy_helper.from_array(rng.standard_normal((rows, 64)).astype(np.float32), "table")
    if lookup:
        nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="lookup")]
        inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])]
        initializers = [table, weight]
    else:
        nodes = [helper.make_node("Identity", ["x"], ["e"], name="copy")]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 64])]
        initializers = [weight]
    nodes.append(helper.make_node("MatMul", ["e", "w"], ["y"], name="mm"))
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 64])], initializers
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_quantize_embeddings_says_why_a_small_table_stays_float():
    # The exported encoders' tables (1000 x 64, 64,000 values) stayed float with the pass 'unchanged' and no
    # reason anywhere (terminal, -v, --pipeline-json): a silent no-op of --quantize-embeddings.
    result = EmbeddingQuantizationPass()(_model(1000))
    assert not result.modified
    assert result.refusals == [
        "1 of 1 embedding tables stay float: under 65,536 values: the saving is not worth three extra nodes"
    ]
    big = EmbeddingQuantizationPass()(_model(1024))  # 65,536 values: quantized, nothing refused
    assert big.modified and big.refusals == []


def test_quantize_embeddings_says_it_found_no_table():
    result = EmbeddingQuantizationPass()(_model(1000, lookup=False))
    assert not result.modified
    assert result.notes == [
        "no embedding table in the graph: it takes row Gathers (axis 0, or -2) of a constant float32 [rows, width] "
        "table in the main graph"
    ]

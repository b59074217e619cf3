"""Review s56 (merge-matmul-nbits, int4 embedding tables): what was found and fixed."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.runtime import run_model
from passes.fusion.matmul_nbits_merge import MatMulNBitsMergeFusion
from passes.quantization.int4 import Int4QuantizationPass

K, N, VOCAB = 64, 32, 1024


def _equal_zero_points() -> ir.Model:
    """Three MatMulNBits over ``x`` with equal explicit zero points (8 in every block, as a symmetric export
    stores them), read from one initializer as merge-subexpressions leaves them."""
    rng = np.random.default_rng(0)
    nodes, initializers, outputs = [], [numpy_helper.from_array(np.full(N, 0x88, np.uint8), "z")], []
    for index in range(3):
        initializers += [
            numpy_helper.from_array(rng.integers(0, 256, (N, K // 32, 16), dtype=np.uint8), f"B{index}"),
            numpy_helper.from_array((rng.random(N * K // 32) * 0.01).astype(np.float32), f"s{index}"),
        ]
        attributes = {"K": K, "N": N, "bits": 4, "block_size": 32, "accuracy_level": 4}
        node = helper.make_node(
            "MatMulNBits", ["x", f"B{index}", f"s{index}", "z"], [f"y{index}"], domain="com.microsoft", **attributes
        )
        nodes.append(node)
        outputs.append(helper.make_tensor_value_info(f"y{index}", TensorProto.FLOAT, ["B", "S", N]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K])], outputs, initializers
    )
    imports = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return ir.from_proto(helper.make_model(graph, opset_imports=imports, ir_version=9))


def test_members_sharing_one_zero_points_tensor_merge():
    """Equal zero points (every layer of a symmetric export that stores its 8s) are one initializer after
    merge-subexpressions; every member was refused as 'read by another node too (a tied table, a shared
    layer): merging would copy it', though the copy is a byte per two blocks."""
    model = _equal_zero_points()
    fusion = MatMulNBitsMergeFusion()
    merged = fusion(model.clone())
    assert merged.modified, fusion._tally.lines()
    assert [node.op_type for node in merged.model.graph].count("MatMulNBits") == 1
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, K)).astype(np.float32)}
    expected, actual = run_model(model, feeds), run_model(merged.model, feeds)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-6, err_msg=name)


def _table_read_in_a_body() -> ir.Model:
    """``E`` looked up in the main graph and inside an ``If`` branch, then one MatMul."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((VOCAB, K)).astype(np.float32)
    weight = (rng.standard_normal((K, K)) / 8).astype(np.float32)
    then_branch = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["looked_up"], name="body_lookup")],
        "then",
        [],
        [helper.make_tensor_value_info("looked_up", TensorProto.FLOAT, ["B", "S", K])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["negated"], name="body_neg")],
        "else",
        [],
        [helper.make_tensor_value_info("negated", TensorProto.FLOAT, ["B", "S", K])],
    )
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h"], name="embed"),
        helper.make_node("If", ["flag"], ["branch"], then_branch=then_branch, else_branch=else_branch, name="if"),
        helper.make_node("Add", ["h", "branch"], ["summed"], name="add"),
        helper.make_node("MatMul", ["summed", "W"], ["projected"], name="proj"),
        helper.make_node("Relu", ["projected"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "lookups",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", K])],
        [numpy_helper.from_array(table, "E"), numpy_helper.from_array(weight, "W")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def test_a_table_also_looked_up_inside_a_body_stays_float_with_the_reason():
    """The main graph's lookups became GatherBlockQuantized while the If branch kept reading the float table
    (both stored: the result grew), and the twin read the dequantized table there too: where the branch ran,
    the whole pass was rolled back as 'differs from its twin'."""
    model = _table_read_in_a_body()
    quantization = Int4QuantizationPass()
    result = quantization(model.clone())
    assert result.modified
    assert "GatherBlockQuantized" not in [node.op_type for node in result.model.graph]
    refusals = quantization._tally.lines()
    assert any("read inside an If/Loop/Scan body" in line for line in refusals), refusals
    feeds = {"ids": np.array([[1, 2, 3, 500]], np.int64), "flag": np.array(True)}
    _, report = optimize_with_report(model, inputs=feeds, quantize="int4")
    row = next(row for row in report.passes if row.name == "quantize-int4")
    assert row.status == "applied", row

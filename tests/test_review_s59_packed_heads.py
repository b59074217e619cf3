"""Review s59: split-packed-heads on a packed tensor whose parts are also taken inside a subgraph.

An ``If`` branch may read the packed ``[3, B, H, S, d]`` tensor from the outer scope and take a part there. The
pass inserted the head split after that part's node in the main graph, where the node is not: the pass failed with
``ValueError: Value Node(...) is not in the list`` (its whole repr in the report), and the parts taken in the main
graph, which it can rewrite, were not rewritten either."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from passes.fusion.packed_heads import PackedHeadsSplit
from tests.helpers import assert_same_outputs

B, S, HEADS, SIZE = 2, 5, 2, 4
PART = [B, HEADS, S, SIZE]


def _model() -> ir.Model:
    """``qkv = Transpose(Reshape(x, [0, 0, 3, 2, 4]), [2, 0, 3, 1, 4])``; part 0 taken in the main graph, parts 1
    and 2 in the branches of an If (each through a Relu, so no part is a graph output)."""

    def branch(name: str, index: str) -> object:
        nodes = [
            helper.make_node("Gather", ["qkv", index], [f"{name}_part"], axis=0),
            helper.make_node("Relu", [f"{name}_part"], [f"{name}_out"]),
        ]
        outputs = [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, PART)]
        return helper.make_graph(nodes, name, [], outputs)

    nodes = [
        helper.make_node("Reshape", ["x", "target"], ["packed"]),
        helper.make_node("Transpose", ["packed"], ["qkv"], perm=[2, 0, 3, 1, 4]),
        helper.make_node("Gather", ["qkv", "zero"], ["q"], axis=0),
        helper.make_node("Relu", ["q"], ["q_out"]),
        helper.make_node(
            "If", ["flag"], ["kv_out"], then_branch=branch("then", "one"), else_branch=branch("else", "two")
        ),
    ]
    arrays = {
        "target": np.array([0, 0, 3, HEADS, SIZE], np.int64),
        "zero": np.array(0, np.int64),
        "one": np.array(1, np.int64),
        "two": np.array(2, np.int64),
    }
    graph = helper.make_graph(
        nodes,
        "packed_in_branch",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, 3 * HEADS * SIZE]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("q_out", TensorProto.FLOAT, PART),
            helper.make_tensor_value_info("kv_out", TensorProto.FLOAT, PART),
        ],
        [numpy_helper.from_array(a, name) for name, a in arrays.items()],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _feeds(flag: bool) -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((B, S, 3 * HEADS * SIZE)).astype(np.float32)
    return {"x": x, "flag": np.array(flag)}


def test_parts_taken_inside_a_subgraph_are_left_and_the_main_graphs_are_split():
    original = _model()
    split = PackedHeadsSplit()
    result = split(original.clone())
    assert result.modified and split.fused_count == 1  # the main graph's part; the branches' are left as they are
    for flag in (True, False):
        assert_same_outputs(original, result.model, _feeds(flag))


def test_the_pipeline_does_not_report_the_pass_as_failed():
    _, report = optimize_with_report(_model())
    record = next(r for r in report.passes if r.name == "split-packed-heads")
    assert record.status == "applied", record


def test_parts_taken_only_inside_a_subgraph_are_refused_with_that_reason():
    original = _model()
    for node in list(original.graph):  # the main graph's part goes: only the branches take parts
        if node.op_type in ("Gather", "Relu"):
            original.graph.remove(node, safe=False)
    original.graph.outputs.pop(0)
    split = PackedHeadsSplit()
    result = split(original)
    assert not result.modified
    assert any("each part is a graph output or taken inside a subgraph" in line for line in result.refusals)

"""Review s77 (ci): the clean-clone run at 6fcd4db failed one test, ``tests/test_review_s55_rename.py``'s function
whose ``Loop`` body is its caller's graph attribute: the walks this session added over functions' graphs (the lengths'
``_called_with_graphs``, ``verify.rewritten_windows``) used onnx-ir's recursive iterator, which raises on a reference
to a caller's attribute. Both now walk with ``optimizer.padding.nodes_within``, which skips references."""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from optimizer.compared_inputs import _called_with_graphs, _inlined
from optimizer.verify import rewritten_windows


def _loop_body_given_by_the_caller() -> ir.Model:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cin"], ["cout"]), helper.make_node("Add", ["v", "v"], ["v2"])],
        "b",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cin", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("cout", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v2", TensorProto.FLOAT, [2]),
        ],
    )
    loop = helper.make_node("Loop", ["n", "t", "x"], ["y"])
    loop.attribute.append(onnx.AttributeProto(name="body", ref_attr_name="body", type=onnx.AttributeProto.GRAPH))
    constants = [
        helper.make_node("Constant", [], ["n"], value=helper.make_tensor("n", TensorProto.INT64, [], [2])),
        helper.make_node("Constant", [], ["t"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])),
    ]
    function = helper.make_function(
        "local", "F", ["x"], ["y"], [*constants, loop], [helper.make_opsetid("", 17)], attributes=["body"]
    )
    graph = helper.make_graph(
        [helper.make_node("F", ["x"], ["y"], domain="local", body=body)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    return ir.from_proto(helper.make_model(graph, opset_imports=opsets, functions=[function], ir_version=8))


def test_the_functions_given_a_graph_are_found_past_a_reference_to_the_callers():
    model = _loop_body_given_by_the_caller()
    assert _called_with_graphs(model) == [("local", "F", "")]
    assert _inlined(model) is not None


def test_windows_are_read_past_a_reference_to_the_callers_graph():
    model = _loop_body_given_by_the_caller()
    assert rewritten_windows(model, model) == []

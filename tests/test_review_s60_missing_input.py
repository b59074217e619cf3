"""A rewrite whose result needs an input the original does not take is rolled back with a reason, not a traceback.

A review (2026-12-05): the verifier fed the result the original's inputs and raised a bare ``KeyError``; the pass
was reported "failed" with a traceback (fold-constants dropping an overridable input's default did so until that
was fixed)."""

from __future__ import annotations

import onnx_ir as ir
from onnx import TensorProto, helper

from tests.helpers import optimize_with_rewrite


def _add_required_input(model: ir.Model) -> None:
    extra = ir.Value(name="extra", shape=ir.Shape([2, 3]), type=ir.TensorType(ir.DataType.FLOAT))
    model.graph.inputs.append(extra)
    relu = next(iter(model.graph))
    add = ir.node("Add", [relu.outputs[0], extra])
    model.graph.append(add)
    model.graph.outputs[0] = add.outputs[0]
    relu.outputs[0].name, add.outputs[0].name = "y_before", "y"


def test_a_result_needing_an_input_the_original_lacks_is_rolled_back_with_the_reason(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    report = optimize_with_rewrite(model, _add_required_input, tmp_path)
    (record,) = report.passes
    assert record.status == "rolled back", (record.status, record.detail)
    assert "needs the input 'extra'" in record.detail

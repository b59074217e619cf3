"""Review s75 late75h: which models the exact check runs as deployed (``optimizer.verify.rounded_decisions``).

A model that decides a boolean or a whole number from floats on the way to an output has each exact result run again
at ONNX Runtime's full optimization level; one whose decision is not found is checked as written only, and a
one-ulp flip there is reported verified. Decisions it missed: a voice detector's ``Cast(prob > 0.5, float)`` and a
``Where(prob > 0.5, 1, 0)`` to an output, a ``Round`` in a model-local function (whose inputs record no dtype), a
``Round`` of what an ``If`` on a shape picks from the inputs, and a detector's ``NonMaxSuppression``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.verify import rounded_decisions


def _model(nodes, output_type, initializers=(), functions=()) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "late75h",
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("decided", output_type, ["N"])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half"), *initializers],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=opsets, functions=list(functions)))


def test_a_threshold_cast_to_floats_on_the_way_out_is_a_decision():
    nodes = [
        helper.make_node("Greater", ["prob", "half"], ["speech"]),
        helper.make_node("Cast", ["speech"], ["decided"], to=TensorProto.FLOAT),
    ]
    assert rounded_decisions(_model(nodes, TensorProto.FLOAT)) == ["Greater"]


def test_whole_numbers_a_where_picks_by_a_threshold_are_a_decision():
    nodes = [
        helper.make_node("Greater", ["prob", "half"], ["speech"]),
        helper.make_node("Where", ["speech", "one", "zero"], ["decided"]),
    ]
    ints = [numpy_helper.from_array(np.array(v, np.int64), name) for v, name in ((1, "one"), (0, "zero"))]
    assert rounded_decisions(_model(nodes, TensorProto.INT64, ints)) == ["Greater"]


def test_a_round_in_a_model_local_function_is_a_decision():
    function = helper.make_function(
        "local", "Durations", ["x"], ["y"], [helper.make_node("Round", ["x"], ["y"])], [helper.make_opsetid("", 17)]
    )
    nodes = [helper.make_node("Durations", ["prob"], ["decided"], domain="local")]
    assert rounded_decisions(_model(nodes, TensorProto.FLOAT, functions=[function])) == ["Round"]


def test_a_round_of_what_an_if_on_a_shape_picks_from_the_inputs_is_a_decision():
    """The ``If``'s condition is computed from a shape alone; its branches read the input itself."""
    scaled = helper.make_graph(
        [helper.make_node("Mul", ["prob", "two"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N"])],
    )
    negated = helper.make_graph(
        [helper.make_node("Neg", ["prob"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N"])],
    )
    nodes = [
        helper.make_node("Shape", ["prob"], ["shape"]),
        helper.make_node("ReduceSum", ["shape"], ["length"], keepdims=0),
        helper.make_node("Greater", ["length", "four"], ["long"]),
        helper.make_node("If", ["long"], ["picked"], then_branch=scaled, else_branch=negated),
        helper.make_node("Round", ["picked"], ["rounded"]),
        helper.make_node("Cast", ["rounded"], ["decided"], to=TensorProto.INT32),
    ]
    constants = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(4, np.int64), "four"),
    ]
    model = _model(nodes, TensorProto.INT32, constants)
    assert "Round" in rounded_decisions(model)


def test_a_non_max_suppression_of_computed_scores_is_a_decision():
    """A detector's kept boxes: each score is compared with the score threshold, each overlap with the IoU one."""
    boxes = np.array([[[0, 0, 1, 1], [0, 0, 1, 1.1], [2, 2, 3, 3]]], np.float32)
    nodes = [
        helper.make_node("Reshape", ["prob", "shape"], ["scores"]),
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "most", "iou", "half"], ["decided"]),
    ]
    constants = [
        numpy_helper.from_array(np.array([1, 1, -1], np.int64), "shape"),
        numpy_helper.from_array(boxes, "boxes"),
        numpy_helper.from_array(np.array([3], np.int64), "most"),
        numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
    ]
    assert rounded_decisions(_model(nodes, TensorProto.INT64, constants)) == ["NonMaxSuppression"]

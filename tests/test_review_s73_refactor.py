"""Review of session 73's whole diff for structure (refactor): the helpers merged there keep their behaviour, and a
bug the re-read found in the accuracy figure's text (``optimizer.accuracy.Drift.__str__``), and one in the labels of
the sets ``optimizer.api._add_other_reduced_side`` adds (a ``str.format`` template holding input names), both fixed
in session 73."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from optimizer.accuracy import Drift
from optimizer.api import optimize_with_report
from optimizer.compared_inputs import _affine_by_feature, _affine_numbers
from optimizer.padding import nodes_within


def test_class_scores_top1_text_is_their_own_share() -> None:
    # Class scores all kept (top-1 1.0) beside ids of which half changed (0.5): the class scores' note read 0.5.
    drift = Drift(0.99, 0.1, top1=("probs", 0, 0, 10), ids_top1=("ids", 5, 0, 10))
    assert drift.top1_agreement == 0.5  # the budget's figure: the lowest of the two
    said = str(drift)
    assert "ids: ArgMax ids, top-1 0.500" in said
    assert "probs: class scores, top-1 1.000" in said


def test_affine_numbers_read_one_number_each_and_none_as_identity() -> None:
    assert _affine_numbers(None) == (1.0, 0.0)
    assert _affine_numbers((np.asarray([[2.0]]), np.asarray(-3.0))) == (2.0, -3.0)
    # By feature: one number is every feature's; None is every feature as drawn.
    assert list(_affine_by_feature((0, 2), (np.asarray(0.5), np.asarray(1.0)))) == [((0, 2), 0.5, 1.0)]
    assert list(_affine_by_feature(None, None)) == [(None, 1.0, 0.0)]
    scale, offset = np.asarray([1.0, 2.0, 4.0]), np.asarray(0.0)
    assert [(f, s) for f, s, _ in _affine_by_feature((1, 2), (scale, offset))] == [((1,), 2.0), ((2,), 4.0)]


def test_nodes_within_reaches_every_nested_subgraph() -> None:
    # An If whose then-branch holds a Loop: the Loop's body's node is reached (the walk the random-output check reads
    # outer values by, shared with padding's).
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1]))
    inner = ir.node("Neg", [x], num_outputs=1)
    body = ir.Graph([], inner.outputs, nodes=[inner], name="body")
    loop = ir.node("Loop", [None, None], attributes={"body": body}, num_outputs=1)
    branch = ir.Graph([], loop.outputs, nodes=[loop], name="then")
    other_neg = ir.node("Neg", [x], num_outputs=1)
    other = ir.Graph([], other_neg.outputs, nodes=[other_neg], name="else")
    cond = ir.Value(name="cond", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
    node = ir.node("If", [cond], attributes={"then_branch": branch, "else_branch": other}, num_outputs=1)
    found = list(nodes_within(node))
    assert {id(n) for n in found} == {id(loop), id(inner), id(other_neg)}


def test_an_input_named_with_braces_gets_its_other_reduced_side() -> None:
    # Fixed dims (no second binding) and ReduceMax(x) > 1: a set on the reduction's other side is added, labelled with
    # the first input's name and shape; ``x{}`` in that label took ``format``'s argument, and the run stopped.
    name = "x{}"
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("ReduceMax", [name], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "one"], ["c"]),
        helper.make_node("Mul", [name, "two"], ["x2"]),
        helper.make_node("Where", ["c", "x2", name], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [one, two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    _, report = optimize_with_report(model, passes=["remove-identity"])
    assert report is not None

"""Review s77 (late77h): the cost of reading the lengths compared inside a model's own functions
(``compared_inputs._inlined``, onnx-ir's ``InlinePass`` on a copy, since review s77 xfix77).

- onnx-ir names each inlined node and value by probing ``name_2``, ``name_3``, ... from 2 at every call site: 3,000
  calls of one function take about 2 s to inline, quadratic in the calls (left: README says so; patching onnx-ir's
  private namer was judged too fragile).
- Each read of the lengths inlined the model again, nine times a default run on the same few models (fixed:
  ``inlined_once`` around the reads done back to back).
- A function some call gives a graph, which the inliner refuses, left the whole model read as it was, and the lengths
  compared in every function went unread and unsaid (fixed: the others are inlined, and ``unread_functions`` names it
  in the note on the lengths).
"""

from __future__ import annotations

from unittest import mock

import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx_ir.passes.common import InlinePass

import optimizer.compared_inputs as compared_inputs
from optimizer.api import optimize_with_report
from tests.test_review_s77_xfix77 import _function_model, _model


def test_a_default_run_inlines_each_model_read_back_to_back_once(tmp_path):
    path = tmp_path / "length_of.onnx"
    _function_model(path, nested=False)
    runs, reads = [0], [0]
    inline, sides = InlinePass.__call__, compared_inputs._compared_sides

    def counted_inline(self, model):
        runs[0] += 1
        return inline(self, model)

    def counted_sides(*args, **kwargs):
        reads[0] += 1
        return sides(*args, **kwargs)

    with (
        mock.patch.object(InlinePass, "__call__", counted_inline),
        mock.patch.object(compared_inputs, "_compared_sides", counted_sides),
    ):
        optimize_with_report(ir.load(path))
    # Before the fix: inlined at every read (as many runs as reads).
    assert 0 < runs[0] < reads[0], (runs[0], reads[0])


@pytest.fixture(scope="module")
def given_a_graph():
    """``LengthOf(x)[1] == 7`` beside a call of another function given a graph (``Takes``, which the inliner
    refuses)."""
    length = helper.make_function(
        "local", "LengthOf", ["x"], ["length"], [helper.make_node("Shape", ["x"], ["length"], start=1, end=2)], []
    )
    length.opset_import.extend([helper.make_opsetid("", 17)])
    takes = helper.make_function(
        "local",
        "Takes",
        ["x"],
        ["z"],
        [helper.make_node("Identity", ["x"], ["z"])],
        [helper.make_opsetid("", 17)],
        attributes=["body"],
    )
    body = helper.make_graph(
        [helper.make_node("Identity", ["inner"], ["out"])],
        "body",
        [helper.make_tensor_value_info("inner", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    seven = helper.make_tensor("seven", TensorProto.INT64, [1], [7])
    nodes = [
        helper.make_node("LengthOf", ["x"], ["length"], domain="local"),
        helper.make_node("Takes", ["x"], ["z"], domain="local", body=body),
        helper.make_node("Equal", ["length", "seven"], ["y"]),
    ]
    proto = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L"])],
        [
            helper.make_tensor_value_info("y", TensorProto.BOOL, [1]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", "L"]),
        ],
        [seven],
        [length, takes],
        ["local"],
    )
    return ir.from_proto(proto)


def test_a_function_given_a_graph_leaves_the_others_inlined_and_is_named(given_a_graph):
    inlined = compared_inputs._inlined(given_a_graph)
    # Before the fix: the model as it was, ``LengthOf`` called and its ``Shape`` unread.
    assert [node.op_type for node in inlined.graph] == ["Shape", "Takes", "Equal"]
    assert 7 in compared_inputs.compared_lengths(given_a_graph, None, {"B": 1, "L": 128}).get("L", ())
    assert compared_inputs.unread_functions(given_a_graph) == ["local::Takes"]


def test_the_report_names_a_function_given_a_graph_and_follows_the_others(given_a_graph):
    _, report = optimize_with_report(given_a_graph)
    # Before the fix: no word of ``Takes``, and no set at 7 (``LengthOf`` was not inlined either).
    assert any(
        "own functions local::Takes, whose lengths compared inside were not followed" in w for w in report.warnings
    )
    assert "generated, 'L' at 7, a length the graph compares (B=1, L=7)" in report.input_sets

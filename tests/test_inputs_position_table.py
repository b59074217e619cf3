"""Generated inputs of a decoder whose ``position_ids`` index a position table: GPT-J's rotary sin/cos rows.

GPT-J's legacy export inlines ``embed_positions`` as a ``Constant`` node (no shape recorded) gathered by
``position_ids``; its dynamo export reads it through ``GatherND(Transpose(table), Concat(Unsqueeze(ids, -1)))``.
The table was not seen, so a decode step's positions, counted on from a past of 128, ran past its 128 rows
and the input model failed on its own generated inputs before any pass ran.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import _index_range, alternate_binding, bind_dims, make_inputs
from tests.helpers import run

ROWS = 16


def _decoder(gather: str) -> ir.Model:
    """``rows = table[position_ids]`` beside a cache and a mask over past and new tokens."""
    table = np.arange(ROWS * 4, dtype=np.float32).reshape(ROWS, 4)
    if gather == "constant":
        nodes = [
            helper.make_node("Constant", [], ["table"], value=numpy_helper.from_array(table)),
            helper.make_node("Gather", ["table", "position_ids"], ["rows"]),
        ]
        initializers = []
    else:  # the dynamo export's spelling
        nodes = [
            helper.make_node("Transpose", ["table_init"], ["table"], perm=[0, 1]),
            helper.make_node("Constant", [], ["last"], value=numpy_helper.from_array(np.array([-1], np.int64))),
            helper.make_node("Unsqueeze", ["position_ids", "last"], ["index"]),
            helper.make_node("Concat", ["index"], ["indices"], axis=-1),
            helper.make_node("GatherND", ["table", "indices"], ["rows"]),
        ]
        initializers = [numpy_helper.from_array(table, "table_init")]
    nodes += [
        helper.make_node("Identity", ["past_key"], ["present_key"]),
        helper.make_node("Identity", ["attention_mask"], ["mask_out"]),
        helper.make_node("Identity", ["input_ids"], ["ids_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "position_table",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("past_key", TensorProto.FLOAT, ["batch", 2, "past_sequence", 4]),
        ],
        [
            helper.make_tensor_value_info("rows", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("present_key", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("mask_out", TensorProto.INT64, None),
            helper.make_tensor_value_info("ids_out", TensorProto.INT64, None),
        ],
        initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ir.from_proto(proto)


@pytest.mark.parametrize("gather", ["constant", "gather_nd"])
def test_positions_stay_within_a_table_the_position_ids_index(gather):
    model = _decoder(gather)
    position_ids = model.graph.inputs[2]
    assert _index_range(position_ids) == ROWS
    # Past and new tokens together fit the table (128 + 128 before), and the positions count on from the past.
    bound = bind_dims(model)
    assert bound["past_sequence"] + bound["sequence"] == bound["total_sequence"] <= ROWS
    assert bound["sequence"] >= 1
    inputs = make_inputs(model)
    past = bound["past_sequence"]
    assert inputs["position_ids"][0].tolist() == list(range(past, past + bound["sequence"]))
    assert run(model, inputs)["rows"].shape[-2] == bound["sequence"]  # the model runs on them


def test_a_table_indexed_by_another_component_of_gather_nd_bounds_by_that_axis():
    # position_ids as the second component of a GatherND's index tuple: they index the table's second axis
    # (4), not its rows (16). The component before them has no recorded width, so they may sit at either
    # component: the smaller axis bounds them (tests/test_inputs_gather_nd.py has the widths known).
    model = _decoder("gather_nd")
    concat = next(node for node in model.graph if node.op_type == "Concat")
    zeros = ir.node("Mul", [concat.inputs[0], ir.Value(name="zero", const_value=ir.tensor(np.array(0)))])
    model.graph.initializers["zero"] = zeros.inputs[1]
    model.graph.insert_before(concat, [zeros])
    concat.resize_inputs(2)
    concat.replace_input_with(1, concat.inputs[0])
    concat.replace_input_with(0, zeros.outputs[0])
    assert _index_range(model.graph.inputs[2]) == 4


def test_the_second_binding_still_changes_every_length_within_the_table():
    # Twice the first binding plus one is past the table: capped, it would be the first's again, where a
    # rewrite baking one length in passes. The shorter binding changes it.
    model = _decoder("constant")
    first = bind_dims(model)
    second = alternate_binding(model, longer=True, base=first)
    assert second["past_sequence"] + second["sequence"] == second["total_sequence"] <= ROWS
    assert all(second[name] != first[name] for name in first)


def test_a_relative_position_input_does_not_bound_the_cache():
    # A review: any input named like "position" bounded past + new by the table it indexes, so a 4-row
    # relative-position bucket input cut the verification's bindings to 2 + 2 tokens. Only position_ids do.
    from onnx import parser

    from optimizer.inputs import longest_cache

    proto = parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[batch, sequence] input_ids, int64[batch, sequence] position_ids,
       int64[batch, sequence] relative_position) => (float[batch, sequence, 8] out) {
      e = Gather(E, input_ids)
      p = Gather(P, position_ids)
      r = Gather(R, relative_position)
      s = Add(e, p)
      out = Add(s, r)
    }""")
    for name, rows in (("E", 100), ("P", 1000), ("R", 4)):
        proto.graph.initializer.append(numpy_helper.from_array(np.zeros((rows, 8), np.float32), name))
    assert longest_cache(ir.from_proto(proto)) == 1000

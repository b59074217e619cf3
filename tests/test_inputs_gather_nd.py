"""Generated integer inputs that index a ``GatherND``: every component of the index tuple stays in its table axis.

A ``GatherND`` reads its indices' last axis as a tuple: component k indexes the table's axis ``batch_dims + k``.
Only component 0 was bounded (by the first axis after ``batch_dims``); the others kept whatever another
Gather allowed (an embedding's 100 rows), so the input model failed on its own generated inputs ("invalid
index found") and nothing could be verified. An input that is an index tuple itself was not bounded at all.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from optimizer.inputs import _index_range, bind_dims, make_inputs
from tests.helpers import FIXTURES, run


def _model(signature: str, body: str, tables: dict[str, tuple[int, ...]], infer: bool = False) -> ir.Model:
    """A model of ONNX text, with zero float initializers of the given shapes (their values do not matter)."""
    proto = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\ng {signature}\n{{\n{body}\n}}')
    for name, shape in tables.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), name))
    if infer:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


@pytest.mark.parametrize("infer", [False, True], ids=["widths-from-unsqueeze", "shapes-inferred"])
def test_each_component_of_a_concatenated_index_stays_in_its_table_axis(infer):
    # The review's reproduction, reduced: input_ids are the second component of a GatherND into a [40, 8]
    # table and also an embedding's ids (100 rows). They were bounded by 100, past the table's 8 columns.
    model = _model(
        "(int64[batch, sequence] position_ids, int64[batch, sequence] input_ids)"
        " => (float[batch, sequence] rows, float[batch, sequence, 8] embedded)",
        """
        last = Constant<value_ints = [-1]>()
        positions = Unsqueeze(position_ids, last)
        ids = Unsqueeze(input_ids, last)
        index = Concat<axis = -1>(positions, ids)
        rows = GatherND(T, index)
        embedded = Gather(E, input_ids)
        """,
        {"T": (40, 8), "E": (100, 8)},
        infer,
    )
    position_ids, input_ids = model.graph.inputs
    assert _index_range(position_ids) == 40
    assert _index_range(input_ids) == 8
    inputs = make_inputs(model)
    assert 0 <= inputs["input_ids"].min() and inputs["input_ids"].max() == 7  # within the 8, and all of it
    assert inputs["position_ids"].min() >= 0 and inputs["position_ids"].max() < 40
    run(model, inputs)  # the model runs on its generated inputs


# An index tuple input [n, 2] into a [4, 7, 3] table, beside another use of the same input, and the bound
# each component gets: its own table axis, and the smallest of every other use that reaches it.
_TUPLE_USES = {
    "alone": ("", {}, (4, 7)),
    "also-gathered-whole": ("other = Gather(E, index)", {"E": (5, 3)}, (4, 5)),
    "also-a-tuple-into-a-smaller-table": ("other = GatherND(U, index)", {"U": (6, 5)}, (4, 5)),
    "also-one-component-of-another": (
        "last = Constant<value_ints = [-1]>()\nunit = Unsqueeze(index, last)\nother = GatherND(V, unit)",
        {"V": (3, 2)},
        (3, 3),
    ),
}


@pytest.mark.parametrize("use", list(_TUPLE_USES))
def test_an_index_tuple_input_is_bounded_per_component(use):
    other, tables, highs = _TUPLE_USES[use]
    outputs = "(float[n, 3] rows" + (", float other)" if other else ")")
    model = _model(
        f"(int64[n, 2] index) => {outputs}",
        f"rows = GatherND(T, index)\n{other}",
        {"T": (4, 7, 3), **tables},
    )
    index = make_inputs(model, {"n": 64})["index"]
    assert index.min() >= 0
    # Each column reaches its own bound less one: bounded per component, not all by the smallest.
    assert tuple(int(high) for high in index.max(axis=0) + 1) == highs
    assert _index_range(model.graph.inputs[0]) == min(highs)
    run(model, {"index": index})


@pytest.mark.parametrize("spelling", ["concat", "tuple-input"])
def test_batch_dims_shift_every_component_by_the_batch_axes(spelling):
    # batch_dims=1: the table's axis 0 is the batch, components 0 and 1 index its axes 1 (4) and 2 (7).
    if spelling == "concat":
        signature = "(int64[2, n] row, int64[2, n] column) => (float[2, n] picked, float[2, n, 3] embedded)"
        body = """
        last = Constant<value_ints = [-1]>()
        r = Unsqueeze(row, last)
        c = Unsqueeze(column, last)
        index = Concat<axis = -1>(r, c)
        picked = GatherND<batch_dims = 1>(T, index)
        embedded = Gather(E, column)
        """
    else:
        signature = "(int64[2, n, 2] index) => (float[2, n] picked)"
        body = "picked = GatherND<batch_dims = 1>(T, index)"
    model = _model(signature, body, {"T": (2, 4, 7), "E": (100, 3)})
    inputs = make_inputs(model, {"n": 64})
    if spelling == "concat":
        assert (inputs["row"].max() + 1, inputs["column"].max() + 1) == (4, 7)
    else:
        assert tuple(inputs["index"].reshape(-1, 2).max(axis=0) + 1) == (4, 7)
    assert min(array.min() for array in inputs.values()) >= 0
    run(model, inputs)


@pytest.mark.parametrize("name", ["gpt2_kv_dynamo", "llama_kv_legacy"])
def test_generated_positions_are_never_negative(name):
    # A Gather reads position -1 as the table's last row, a fused RotaryEmbedding refuses it: generated
    # positions count on from the past, from 0 up, in both verification bindings' first.
    model = ir.load(FIXTURES / f"{name}.onnx")
    bound = bind_dims(model)
    positions = make_inputs(model)["position_ids"]
    past = bound["past_sequence"]
    assert positions.min() >= 0
    assert positions[0].tolist() == list(range(past, past + positions.shape[-1]))

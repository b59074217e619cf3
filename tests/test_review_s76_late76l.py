"""Review s76 late76l: a late hostile review of late76k's lookups in bodies and functions
(``verify._rewritten_rows``, ``verify._nodes_given``). The holes found, verified wrong:
- a lookup in a ``Loop``'s body by ids the loop carries (``input_ids`` its first carried value): its ids were no
  graph input's, and a swap of rows 101 and 102 of its table verified with no note (fixed: a ``Loop``'s carried
  values are read as those given at its first iteration);
- a lookup in a model-local function given its table as an input (``Embed(table, input_ids)``): the table was a
  function input, no constant, and a swap of rows 101 and 102 verified with no note (fixed: a table given a function,
  a ``Loop``'s body or a ``Scan``'s state is read as the one given, ``verify._given``);
- a function that calls itself with its own ids (``_CALLS_FOLLOWED`` stops the calls): the ids were traced to
  themselves, and ``_rewritten_rows`` never returned (fixed: each input is traced once).
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.report import STATUS_ROLLED_BACK
from optimizer.verify import _rewritten_rows
from passes._utils import constant_array
from tests.test_review_s76_late76d import _last_pass, _Mutant

_VOCAB, _HIDDEN = 30522, 4
_OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]


def _ids(name: str = "input_ids"):
    return helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])


def _lookup_carried_or_given(path, where: str) -> None:
    """``input_ids`` -> the rows of ``table`` max-pooled over the tokens: looked up in a one-trip ``Loop``'s body by
    the ids it carries, or in a model-local function ``Embed(table, ids)`` the table and the ids are given to."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((_VOCAB, _HIDDEN)).astype(np.float32), "table"),
        numpy_helper.from_array(np.array([1], np.int64), "tokens"),
    ]
    functions, pooled = [], helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", _HIDDEN])
    if where == "loop":
        body = helper.make_graph(
            [
                helper.make_node("Identity", ["going"], ["going_out"]),
                helper.make_node("Identity", ["ids"], ["ids_out"]),
                helper.make_node("Gather", ["table", "ids"], ["rows"]),
            ],
            "body",
            [
                helper.make_tensor_value_info("trip", TensorProto.INT64, []),
                helper.make_tensor_value_info("going", TensorProto.BOOL, []),
                _ids("ids"),
            ],
            [
                helper.make_tensor_value_info("going_out", TensorProto.BOOL, []),
                _ids("ids_out"),
                helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", "sequence", _HIDDEN]),
            ],
        )
        initializers += [
            numpy_helper.from_array(np.array(1, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "going"),
            numpy_helper.from_array(np.array([0, 2], np.int64), "steps_and_tokens"),
        ]
        nodes = [
            helper.make_node("Loop", ["trips", "going", "input_ids"], ["last_ids", "stacked"], body=body),
            helper.make_node("ReduceMax", ["stacked", "steps_and_tokens"], ["pooled"], keepdims=0),
        ]
    else:
        gather = helper.make_node("Gather", ["rows_of", "ids"], ["rows"])
        functions.append(helper.make_function("local", "Embed", ["rows_of", "ids"], ["rows"], [gather], _OPSETS[:1]))
        nodes = [
            helper.make_node("Embed", ["table", "input_ids"], ["embedded"], domain="local"),
            helper.make_node("ReduceMax", ["embedded", "tokens"], ["pooled"], keepdims=0),
        ]
    graph = helper.make_graph(nodes, where, [_ids()], [pooled], initializers)
    onnx.save(helper.make_model(graph, opset_imports=_OPSETS, ir_version=8, functions=functions), path)


class _TableRowsSwapped(_Mutant):
    """Rows 101 and 102 of the initializer ``table`` swapped."""

    def mutate(self, model):
        value = model.graph.initializers["table"]
        table = constant_array(value).copy()
        table[[101, 102]] = table[[102, 101]]
        value.const_value = ir.tensor(table, name=value.name)


@pytest.mark.parametrize("where", ["loop", "function"])
def test_rows_swapped_in_a_table_a_loop_carries_ids_to_or_a_function_is_given_are_rolled_back(tmp_path, where):
    path = tmp_path / "inside.onnx"
    _lookup_carried_or_given(path, where)
    record = _last_pass(path, _TableRowsSwapped, tmp_path)
    # Measured before the fix: applied, no note (a Loop's carried ids, a function's table input: neither traced).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "input_ids reading rows 101, 102 of 'table'" in record.detail


def _calling_itself() -> onnx.ModelProto:
    """A model-local function ``Embed(ids)`` that looks up a ``Constant`` table and calls itself with its own ids."""
    table = numpy_helper.from_array(np.arange(2 * 512, dtype=np.float32).reshape(512, 2), "table")
    nodes = [
        helper.make_node("Constant", [], ["table"], value=table),
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("Embed", ["ids"], ["again"], domain="local"),
    ]
    embed = helper.make_function("local", "Embed", ["ids"], ["rows", "again"], nodes, _OPSETS)
    graph = helper.make_graph(
        [helper.make_node("Embed", ["input_ids"], ["embedded", "unused"], domain="local")],
        "calls_itself",
        [_ids()],
        [helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["batch", "sequence", 2])],
    )
    return helper.make_model(graph, opset_imports=_OPSETS, ir_version=8, functions=[embed])


def test_a_function_calling_itself_with_its_ids_is_read_and_returns():
    proto = _calling_itself()
    swapped = onnx.ModelProto()
    swapped.CopyFrom(proto)
    held = swapped.functions[0].node[0].attribute[0]
    rows = numpy_helper.to_array(held.t).copy()
    rows[[101, 102]] = rows[[102, 101]]
    held.t.CopyFrom(numpy_helper.from_array(rows, "table"))
    found: list = []
    worker = threading.Thread(
        target=lambda: found.append(_rewritten_rows(ir.from_proto(proto), ir.from_proto(swapped))), daemon=True
    )
    worker.start()
    worker.join(10)
    # Measured before the fix: still running after 10 s (the function's ids traced to themselves, forever).
    assert not worker.is_alive() and found, "_rewritten_rows did not return"
    assert ("input_ids", "table", [101, 102]) in found[0]

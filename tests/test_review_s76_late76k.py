"""Review s76 late76k: a late hostile review of late76h's tables blocked along their rows (``verify._rewritten_rows``,
``verify._block_rows``). The hole found, verified wrong:
- an int4 table blocked along its rows (``GatherBlockQuantized``, ``quantize_axis`` 0) whose block's first row is a
  row of zeros (an unused token's, row 384 of block 12): a block's changed scale was read at that row alone, which
  shows no scale, and a rewrite that scaled the rest of block 12 by 1.5 verified with no note (fixed: a block is
  read at its first row that is not one value throughout, ``verify._block_row``);
- a lookup in a ``Scan``'s body (the ids scanned along the batch) or in a model-local function (the ids its call is
  given): its ids were no graph input's, and a swap of rows 101 and 102 of its table verified with no note (fixed:
  ids given a body or function are read as those given, ``verify._nodes_given``);
- a lookup the rewrite added, of a copy of the table under a name of its own (one user of the lookup given its own,
  rows 101 and 102 swapped): the tables of an input, one before and two after, were matched by name alone, the copy
  with none, and it verified with no note (fixed: a table matched with none is compared with the original's table of
  its shape and dtype it differs from least).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.domains import MS_DOMAIN
from optimizer.report import STATUS_ROLLED_BACK
from passes._utils import add_initializer, constant_array
from tests.test_review_s76_late76d import _last_pass, _Mutant

_VOCAB, _WIDTH, _BLOCK = 30522, 32, 32
_ZEROED = 12 * _BLOCK


def _int4_lookup_with_a_padding_row(path) -> None:
    """``input_ids`` looking up ``_VOCAB`` int4 rows by ``GatherBlockQuantized`` (``quantize_axis`` 0: a scale for each
    ``_BLOCK`` rows and column), row ``_ZEROED`` (an unused token's, the first of block 12) all zeros."""
    rng = np.random.default_rng(0)
    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    graph = ir.Graph([ids], [], nodes=[], opset_imports={"": 21, MS_DOMAIN: 1}, name="int4_padding_row")
    rows = rng.integers(-8, 8, (_VOCAB, _WIDTH))
    rows[_ZEROED] = 0
    data = ir.Value(name="table.int4", const_value=ir.Tensor(rows.astype(ml_dtypes.int4), dtype=ir.DataType.INT4))
    graph.register_initializer(data)
    blocks = (-(-_VOCAB // _BLOCK), _WIDTH)
    scales = add_initializer(graph, "table.scale", rng.uniform(0.01, 0.03, blocks).astype(np.float32))
    attributes = {"block_size": _BLOCK, "gather_axis": 0, "quantize_axis": 0}
    node = ir.node("GatherBlockQuantized", [data, ids, scales], attributes, domain=MS_DOMAIN)
    graph.append(node)
    out = node.outputs[0]
    out.name, out.dtype, out.shape = "embeddings", ir.DataType.FLOAT, ir.Shape(["batch", "sequence", _WIDTH])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=10), path)


class _FirstBlockScaled(_Mutant):
    """The scales of block 12 (rows 384 to 415) multiplied by 1.5."""

    def mutate(self, model):
        value = next(node for node in model.graph if node.op_type == "GatherBlockQuantized").inputs[2]
        array = constant_array(value).copy()
        array[_ZEROED // _BLOCK] *= 1.5
        value.const_value = ir.tensor(array, name=value.name)


def test_a_block_scaled_past_its_zeroed_first_row_is_rolled_back(tmp_path):
    path = tmp_path / "table.onnx"
    _int4_lookup_with_a_padding_row(path)
    record = _last_pass(path, _FirstBlockScaled, tmp_path)
    # Measured before the fix: applied, "input_ids reading rows 384 of 'table.scale'" (zeros whatever its scale).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert f"input_ids reading rows {_ZEROED + 1} of 'table.scale'" in record.detail


# --- a lookup in a Scan's body or a model-local function -----------------------------------------------------------

_HIDDEN = 4


def _lookup_inside(path, where: str) -> None:
    """``input_ids`` -> the rows of a ``Constant`` table (``table``) max-pooled over the tokens, looked up in a
    model-local function the ids are given to, or in a ``Scan``'s body over the ids' batch."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((_VOCAB, _HIDDEN)).astype(np.float32), "table")
    held = helper.make_node("Constant", [], ["table"], value=table)
    functions = []
    if where == "function":
        gather = helper.make_node("Gather", ["table", "ids"], ["rows"])
        opsets = [helper.make_opsetid("", 18)]
        functions.append(helper.make_function("local", "Embed", ["ids"], ["rows"], [held, gather], opsets))
        lookup = helper.make_node("Embed", ["input_ids"], ["embedded"], domain="local")
    else:
        body = helper.make_graph(
            [held, helper.make_node("Gather", ["table", "ids"], ["rows"])],
            "body",
            [helper.make_tensor_value_info("ids", TensorProto.INT64, ["sequence"])],
            [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["sequence", _HIDDEN])],
        )
        lookup = helper.make_node("Scan", ["input_ids"], ["embedded"], body=body, num_scan_inputs=1)
    graph = helper.make_graph(
        [lookup, helper.make_node("ReduceMax", ["embedded", "tokens"], ["pooled"], keepdims=0)],
        where,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", _HIDDEN])],
        [numpy_helper.from_array(np.array([1], np.int64), "tokens")],
    )
    opsets = [helper.make_opsetid("", 18), *([helper.make_opsetid("local", 1)] if functions else [])]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8, functions=functions), path)


class _InnerRowsSwapped(_Mutant):
    """Rows 101 and 102 of the ``Constant`` table in the function or the ``Scan``'s body swapped."""

    def mutate(self, model):
        bodies = [*model.functions.values(), model.graph]
        node = next(n for body in bodies for n in ir.traversal.RecursiveGraphIterator(body) if n.op_type == "Constant")
        table = node.attributes["value"].value.numpy().copy()
        table[[101, 102]] = table[[102, 101]]
        node.attributes["value"] = ir.AttrTensor("value", ir.tensor(table))


@pytest.mark.parametrize("where", ["function", "scan"])
def test_rows_swapped_in_a_table_a_scan_or_a_function_looks_up_are_rolled_back(tmp_path, where):
    path = tmp_path / "inside.onnx"
    _lookup_inside(path, where)
    record = _last_pass(path, _InnerRowsSwapped, tmp_path)
    # Measured before the fix: applied, no note (the ids a Scan's body or a function reads were no graph input's).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "input_ids reading rows 101, 102 of 'table'" in record.detail


# --- a lookup the rewrite added, of a copy of the table -------------------------------------------------------------


def _one_lookup_two_users(path) -> None:
    """``input_ids`` -> one ``Gather`` of ``table``, max-pooled (``pooled0``) and min-pooled (``pooled1``)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["rows"]),
            helper.make_node("ReduceMax", ["rows", "tokens"], ["pooled0"], keepdims=0),
            helper.make_node("ReduceMin", ["rows", "tokens"], ["pooled1"], keepdims=0),
        ],
        "one_lookup",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", _HIDDEN]) for name in ("pooled0", "pooled1")],
        [
            numpy_helper.from_array(rng.standard_normal((_VOCAB, _HIDDEN)).astype(np.float32), "table"),
            numpy_helper.from_array(np.array([1], np.int64), "tokens"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), path)


class _SecondUsersCopySwapped(_Mutant):
    """``pooled1`` given a ``Gather`` of its own, of a copy of the table with rows 101 and 102 swapped."""

    def mutate(self, model):
        lookup = next(node for node in model.graph if node.op_type == "Gather")
        user = next(node for node in model.graph if node.op_type == "ReduceMin")
        table = constant_array(lookup.inputs[0]).copy()
        table[[101, 102]] = table[[102, 101]]
        copy = add_initializer(model.graph, "table.copy", table)
        gather = ir.node("Gather", [copy, lookup.inputs[1]])
        gather.outputs[0].name = "copied_rows"
        model.graph.insert_before(user, gather)
        user.replace_input_with(0, gather.outputs[0])


def test_rows_swapped_in_a_copy_a_lookup_the_rewrite_added_reads_are_rolled_back(tmp_path):
    path = tmp_path / "one_lookup.onnx"
    _one_lookup_two_users(path)
    record = _last_pass(path, _SecondUsersCopySwapped, tmp_path)
    # Measured before the fix: applied, no note (one table before, two after: the copy matched with none).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "input_ids reading rows 101, 102 of 'table.copy'" in record.detail

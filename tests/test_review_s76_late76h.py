"""Review s76 late76h: a late hostile review of late76e's sample axis and compared lengths and late76f's quantized
tables (``verify._tables_held``, ``GatherBlockQuantized`` in ``verify._lookups``). The hole found, verified wrong:
- a table blocked along its rows, int4 data read by ``GatherBlockQuantized`` with ``quantize_axis`` 0 (scales of a
  row per 32 rows) or behind a ``DequantizeLinear`` with ``block_size`` on axis 0: the scales' changed rows (blocks
  12 and 40) were read as the table's, ids 12 and 40 both in block 0 were drawn, a swap of the two blocks' scales
  verified, and the note said rows 12 and 40 of the scales were checked (fixed: a block's row is read at the first
  row of its block, ``verify._block_rows``; late76f's strict xfail for the ``DequantizeLinear`` passes now);
- a table two lookups share, one of them given a copy of its own with rows 101 and 102 swapped (a second ``Gather``, or
  one in an ``If``'s branch): the tables of an input, each read once and matched by name, never compared the copy, and
  subgraphs were not read (fixed: each lookup's tables against its own, ``verify._rewritten_rows``, as late76f did
  for rotary caches);
- late76e's lengths between the original's own thresholds, drawn first where a rewrite goes another way, took the
  four sets: beside four windows straddling 128..257 a branch at 1,000 a rewrite wrote was only named, not drawn, and
  the pass applied (rolled back before late76e; fixed: those come last, ``api._lengths_a_rewrite_compares``).
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
from tests.test_review_s76_late76f import _ScalesOfRowsSwapped

_VOCAB, _WIDTH, _BLOCK = 30522, 32, 32


def _int4_lookup_blocked_along_rows(path) -> None:
    """``input_ids`` looking up ``_VOCAB`` int4 rows by ``GatherBlockQuantized`` (``quantize_axis`` 0: a scale for
    each ``_BLOCK`` rows and column), as ONNX Runtime runs it (packed uint8 data refuses that axis)."""
    rng = np.random.default_rng(0)
    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    graph = ir.Graph([ids], [], nodes=[], opset_imports={"": 21, MS_DOMAIN: 1}, name="int4_rows_blocked")
    rows = rng.integers(-8, 8, (_VOCAB, _WIDTH)).astype(ml_dtypes.int4)
    data = ir.Value(name="table.int4", const_value=ir.Tensor(rows, dtype=ir.DataType.INT4, name="table.int4"))
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


def test_block_scales_swapped_in_an_int4_lookup_blocked_along_its_rows_are_rolled_back(tmp_path):
    path = tmp_path / "table.onnx"
    _int4_lookup_blocked_along_rows(path)
    record = _last_pass(path, _ScalesOfRowsSwapped, tmp_path)  # the scales of blocks 12 and 40 exchanged
    # Measured before the fix: applied, "also checked on ..., input_ids reading rows 12, 40 of 'table.scale'" (ids 12
    # and 40, both in block 0: the swap never read).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert f"input_ids reading rows {12 * _BLOCK}, {40 * _BLOCK} of 'table.scale'" in record.detail


# --- a copy of a shared table one lookup is given ------------------------------------------------------------------

_HIDDEN = 4


def _two_lookups(path, in_branch: bool) -> None:
    """``input_ids`` -> the word embeddings max-pooled over the tokens (``pooled0``), and again through a second
    ``Gather`` of the same table, or one in the then-branch of an ``If`` that ids at least 0 always take
    (``pooled1``)."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((_VOCAB, _HIDDEN)).astype(np.float32)
    constants = [
        numpy_helper.from_array(table, "word_embeddings.weight"),
        numpy_helper.from_array(np.array([1], np.int64), "tokens"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
    ]
    nodes = [
        helper.make_node("Gather", ["word_embeddings.weight", "input_ids"], ["rows"]),
        helper.make_node("ReduceMax", ["rows", "tokens"], ["pooled0"], keepdims=0),
    ]
    second = helper.make_node("Gather", ["word_embeddings.weight", "input_ids"], ["again"])
    if in_branch:
        then = helper.make_graph(
            [second], "then", [], [helper.make_tensor_value_info("again", TensorProto.FLOAT, None)]
        )
        negated = helper.make_node("Neg", ["rows"], ["negated"])
        other = helper.make_graph(
            [negated], "else", [], [helper.make_tensor_value_info("negated", TensorProto.FLOAT, None)]
        )
        nodes += [
            helper.make_node("ReduceMin", ["input_ids"], ["least"], keepdims=0),
            helper.make_node("GreaterOrEqual", ["least", "zero"], ["taken"]),
            helper.make_node("If", ["taken"], ["again"], then_branch=then, else_branch=other),
        ]
    else:
        nodes.append(second)
    nodes.append(helper.make_node("ReduceMax", ["again", "tokens"], ["pooled1"], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "two_lookups",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", _HIDDEN]) for name in ("pooled0", "pooled1")],
        constants,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), path)


class _SecondLookupsCopySwapped(_Mutant):
    """The second lookup (the last ``Gather``, in a branch or not) reads a copy of the table, rows 101 and 102
    swapped."""

    def mutate(self, model):
        node = [node for node in ir.traversal.RecursiveGraphIterator(model.graph) if node.op_type == "Gather"][-1]
        value = node.inputs[0]
        table = constant_array(value).copy()
        table[[101, 102]] = table[[102, 101]]
        name = f"{value.name}.copy"
        copy = ir.Value(name=name, shape=value.shape, type=value.type, const_value=ir.tensor(table, name=name))
        model.graph.register_initializer(copy)
        node.replace_input_with(0, copy)


@pytest.mark.parametrize("in_branch", [False, True], ids=["beside", "in_an_if"])
def test_rows_swapped_in_one_lookups_copy_of_a_shared_table_are_rolled_back(tmp_path, in_branch):
    path = tmp_path / "two_lookups.onnx"
    _two_lookups(path, in_branch)
    record = _last_pass(path, _SecondLookupsCopySwapped, tmp_path)
    # Measured before the fix: applied, no note (the table read once, matched by name, unchanged; the copy unread).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "input_ids reading rows 101, 102 of 'word_embeddings.weight.copy'" in record.detail


# --- the original's own ways together, after the rewrite's lengths --------------------------------------------------


def _windows(path, windows: list[tuple[int, int]]) -> None:
    """``x[B, L]`` -> ``x * (1 + 0.1 * (the windows low <= L < high that L is in))``."""
    constants = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("one", 1.0), ("tenth", 0.1))]
    nodes = [helper.make_node("Shape", ["x"], ["length"], start=1, end=2)]
    for index, (low, high) in enumerate(windows):
        constants += [
            helper.make_tensor(f"{end}{index}", TensorProto.INT64, [1], [n])
            for end, n in (("low", low), ("high", high))
        ]
        nodes += [
            helper.make_node("GreaterOrEqual", ["length", f"low{index}"], [f"above{index}"]),
            helper.make_node("Less", ["length", f"high{index}"], [f"below{index}"]),
            helper.make_node("And", [f"above{index}", f"below{index}"], [f"inside{index}"]),
            helper.make_node("Cast", [f"inside{index}"], [f"flag{index}"], to=TensorProto.FLOAT),
        ]
    nodes += [
        helper.make_node("Sum", [f"flag{index}" for index in range(len(windows))], ["count"]),
        helper.make_node("Mul", ["count", "tenth"], ["bump"]),
        helper.make_node("Add", ["bump", "one"], ["scale"]),
        helper.make_node("Mul", ["x", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "windows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "L"])],
        constants,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)


class _ScaledAt1000(_Mutant):
    """The output scaled by 1.1 where ``L == 1000``, past the original's windows."""

    def mutate(self, model):
        graph = model.graph
        product = graph.outputs[0].producer()
        length = add_initializer(graph, "mutant.length", np.array([1000], np.int64))
        new = [ir.node("Shape", [graph.inputs[0]], {"start": 1, "end": 2})]
        new.append(ir.node("Equal", [new[-1].outputs[0], length]))
        new.append(ir.node("Cast", [new[-1].outputs[0]], {"to": ir.DataType.FLOAT}))
        new.append(ir.node("Mul", [new[-1].outputs[0], add_initializer(graph, "mutant.tenth", np.float32(0.1))]))
        new.append(ir.node("Add", [new[-1].outputs[0], add_initializer(graph, "mutant.one", np.float32(1.0))]))
        new.append(ir.node("Mul", [product.inputs[1], new[-1].outputs[0]]))
        graph.insert_before(product, new)
        product.replace_input_with(1, new[-1].outputs[0])


def test_a_rewrites_branch_beside_the_originals_own_windows_is_drawn_first(tmp_path):
    path = tmp_path / "windows.onnx"
    # Each side of each threshold held by 128 and 257; the ways together at 129 to 132 and 200 to 202 no set holds.
    _windows(path, [(129, 200), (130, 201), (131, 202), (132, 203)])
    record = _last_pass(path, _ScaledAt1000, tmp_path)
    # Measured before the fix: applied; the four sets went to 'L' at 129, 130, 131 and 132, and the note named 1000
    # among the lengths "not verified".
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'L' at 1000, a length the rewrite compares" in record.detail

"""Review s77 (xtab): tables that generated inputs reach only at their end, where the length is read off computed rows
or the table is read through pairs of positions (``optimizer/compared_inputs.py``'s ``position_table_lengths``,
``_rows_readers``, ``_relative_end``; ``optimizer/api.py``'s ``_add_table_ends``).

- Legacy RoFormer reads its sinusoidal table's length off ``Shape(LayerNorm(words + token types))[1]``: the walk
  followed rows only through a scale and a pick of one element, and the table got no set at its end (session 76's
  strict xfail in ``test_review_s76_xfix4.py``). It now follows rows through ops that keep their axes.
- DeBERTa's relative table (``rel_embeddings``) is read at ``clip(q - k + span, 0, 2 span - 1)`` (log-bucketed in
  -v3): its last row only by tokens ``span - 1`` apart, its first by tokens ``span`` apart the other way, and no set
  held them (session 76's strict xfail in ``test_review_s76_late76c.py``). The index is now evaluated at the first and
  last positions of each length, and the shortest length that reads both rows gets the table-end set, within the
  attention bound (the report names one past it).
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx_ir as ir
import pytest

import optimizer.api as api
from optimizer import registry
from optimizer.compared_inputs import position_table_lengths
from optimizer.protocol import PassSpec
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from passes._utils import add_initializer, constant_array
from tests.test_review_s76_late76c import _relative

_HIDDEN = 4
_VOCABULARY = 6


def _const(graph: ir.Graph, name: str, array) -> ir.Value:
    return add_initializer(graph, name, np.asarray(array))


def _inputs(name: str) -> tuple[ir.Value, ir.Value, ir.Graph]:
    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    mask = ir.Value(name="attention_mask", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    return ids, mask, ir.Graph([ids, mask], [], nodes=[], opset_imports={"": 17}, name=name)


def _finish(graph: ir.Graph, nodes: list[ir.Node], path) -> None:
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype, out.shape = "last_hidden_state", ir.DataType.FLOAT, ir.Shape(["batch", "sequence", _HIDDEN])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=8), path)


def _length_off_rows(path, spelling: str, rows: int = 256) -> None:
    """Word rows plus token-type rows, a table of ``rows`` positions read at ``Range(0, L)``, ``L`` read off the rows
    as ``spelling`` says: ``Shape(words + types)[1]`` (``sum``), ``Shape(MatMul(Relu(LayerNorm(sum)), W))[1]``
    (``projected``), or ``Shape(sum + c)[1]`` with ``c`` of rank 4, which puts the batch at axis 1 (``higher rank``)."""
    ids, _, graph = _inputs("length_off_rows")
    rng = np.random.default_rng(0)
    words = _const(graph, "word_embeddings.weight", rng.standard_normal((_VOCABULARY, _HIDDEN), np.float32))
    types = _const(graph, "token_type_embeddings.weight", rng.standard_normal((2, _HIDDEN), np.float32))
    table = _const(graph, "embed_positions.weight", rng.standard_normal((rows, _HIDDEN), np.float32))
    nodes = [ir.node("Gather", [words, ids]), ir.node("Shape", [ids])]
    nodes.append(ir.node("ConstantOfShape", [nodes[-1].outputs[0]], {"value": ir.tensor(np.array([0], np.int64))}))
    nodes.append(ir.node("Gather", [types, nodes[-1].outputs[0]]))
    nodes.append(ir.node("Add", [nodes[-1].outputs[0], nodes[0].outputs[0]]))  # the rows read at input 1
    hidden = measured = nodes[-1].outputs[0]
    if spelling == "projected":
        nodes.append(ir.node("LayerNormalization", [hidden, _const(graph, "scale", np.ones(_HIDDEN, np.float32))]))
        nodes.append(ir.node("Relu", [nodes[-1].outputs[0]]))
        weight = _const(graph, "dense.weight", rng.standard_normal((_HIDDEN, 3), np.float32))
        nodes.append(ir.node("MatMul", [nodes[-1].outputs[0], weight]))
        measured = nodes[-1].outputs[0]
    elif spelling == "higher rank":
        nodes.append(ir.node("Add", [hidden, _const(graph, "bias", np.zeros((1, 1, 1, _HIDDEN), np.float32))]))
        measured = nodes[-1].outputs[0]
    nodes.append(ir.node("Shape", [measured]))
    nodes.append(ir.node("Gather", [nodes[-1].outputs[0], _const(graph, "one", np.array(1, np.int64))]))
    zero, step = _const(graph, "zero", np.array(0, np.int64)), _const(graph, "step", np.array(1, np.int64))
    nodes.append(ir.node("Range", [zero, nodes[-1].outputs[0], step]))
    nodes.append(ir.node("Gather", [table, nodes[-1].outputs[0]]))
    nodes.append(ir.node("Add", [hidden, nodes[-1].outputs[0]]))
    _finish(graph, nodes, path)


@pytest.mark.parametrize(("spelling", "found"), [("sum", {"sequence": 256}), ("projected", {"sequence": 256})])
def test_a_length_read_off_computed_rows_finds_the_table(tmp_path, spelling, found):
    # Before: {} for both (the walk followed the rows past a scale and a pick of one element alone).
    path = tmp_path / "rows.onnx"
    _length_off_rows(path, spelling)
    assert position_table_lengths(ir.load(path)) == found


def test_rows_broadcast_into_a_higher_rank_are_not_followed(tmp_path):
    # ``Shape(rows + c)[1]`` with ``c`` of rank 4 is the batch: no table's end there.
    path = tmp_path / "rows.onnx"
    _length_off_rows(path, "higher rank")
    assert position_table_lengths(ir.load(path)) == {}


def _relative_gathered(path, span: int, *, buckets: tuple[int, int] | None = None, absolute: int | None = None):
    """A relative table ``[2 span, hidden]`` read by ``Gather`` at ``Min(Max(r + span, 0), 2 span - 1)``, ``r`` the
    distance ``q - k`` of ``Range(0, L)`` (with ``buckets`` ``(size, max_position)``, DeBERTa-v3's
    ``make_log_bucket_position`` of it, ``span`` the size), into scores ``sum(x_q * rel[q, k])`` added to ``x xᵀ``,
    softmax, times ``x``; with ``absolute``, a table of that many positions added to the word rows first."""
    ids, mask, graph = _inputs("relative")
    rng = np.random.default_rng(1)
    words = _const(graph, "word_embeddings.weight", rng.standard_normal((_VOCABULARY, _HIDDEN), np.float32))
    table = _const(graph, "rel_embeddings.weight", rng.standard_normal((2 * span, _HIDDEN), np.float32))
    zero, one = _const(graph, "zero", np.array(0, np.int64)), _const(graph, "one", np.array(1, np.int64))
    nodes = [ir.node("Gather", [words, ids]), ir.node("Shape", [ids], {"start": 1, "end": 2})]
    nodes.append(ir.node("Squeeze", [nodes[-1].outputs[0]]))
    nodes.append(ir.node("Range", [zero, nodes[-1].outputs[0], one]))
    steps, x = nodes[-1].outputs[0], nodes[0].outputs[0]
    if absolute is not None:
        positions = _const(graph, "position_embeddings.weight", rng.standard_normal((absolute, _HIDDEN), np.float32))
        nodes.append(ir.node("Gather", [positions, steps]))
        nodes.append(ir.node("Add", [x, nodes[-1].outputs[0]]))
        x = nodes[-1].outputs[0]
    nodes.append(ir.node("Unsqueeze", [steps, _const(graph, "column", np.array([1], np.int64))]))
    nodes.append(ir.node("Unsqueeze", [steps, _const(graph, "row", np.array([0], np.int64))]))
    nodes.append(ir.node("Sub", [nodes[-2].outputs[0], nodes[-1].outputs[0]]))
    distance = nodes[-1].outputs[0]
    if buckets is not None:
        size, most = buckets
        middle = size // 2

        def number(name, value, dtype=np.float32):
            return _const(graph, name, np.array(value, dtype))

        nodes.append(ir.node("Sign", [distance]))
        nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], {"to": ir.DataType.FLOAT}))
        sign = nodes[-1].outputs[0]
        nodes.append(ir.node("Less", [distance, number("mid", middle, np.int64)]))
        nodes.append(ir.node("Greater", [distance, number("minus_mid", -middle, np.int64)]))
        nodes.append(ir.node("And", [nodes[-2].outputs[0], nodes[-1].outputs[0]]))
        nodes.append(ir.node("Abs", [distance]))
        nodes.append(
            ir.node("Where", [nodes[-2].outputs[0], number("inside", middle - 1, np.int64), nodes[-1].outputs[0]])
        )
        far = nodes[-1].outputs[0]
        nodes.append(ir.node("Cast", [far], {"to": ir.DataType.FLOAT}))
        nodes.append(ir.node("Div", [nodes[-1].outputs[0], number("mid_f", middle)]))
        nodes.append(ir.node("Log", [nodes[-1].outputs[0]]))
        nodes.append(ir.node("Div", [nodes[-1].outputs[0], number("log_span", np.log((most - 1) / middle))]))
        nodes.append(ir.node("Mul", [nodes[-1].outputs[0], number("mid_less", middle - 1)]))
        nodes.append(ir.node("Ceil", [nodes[-1].outputs[0]]))
        nodes.append(ir.node("Add", [nodes[-1].outputs[0], number("mid_add", middle)]))
        nodes.append(ir.node("Mul", [nodes[-1].outputs[0], sign]))
        logged = nodes[-1].outputs[0]
        nodes.append(ir.node("LessOrEqual", [far, number("mid_le", middle, np.int64)]))
        nodes.append(ir.node("Cast", [distance], {"to": ir.DataType.FLOAT}))
        nodes.append(ir.node("Where", [nodes[-2].outputs[0], nodes[-1].outputs[0], logged]))
        nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], {"to": ir.DataType.INT64}))
        distance = nodes[-1].outputs[0]
    nodes.append(ir.node("Add", [distance, _const(graph, "span", np.array(span, np.int64))]))
    nodes.append(ir.node("Max", [nodes[-1].outputs[0], zero]))
    nodes.append(ir.node("Min", [nodes[-1].outputs[0], _const(graph, "last", np.array(2 * span - 1, np.int64))]))
    nodes.append(ir.node("Gather", [table, nodes[-1].outputs[0]]))  # [q, k, hidden]
    relative = nodes[-1].outputs[0]
    nodes.append(ir.node("Unsqueeze", [x, _const(graph, "key_axis", np.array([2], np.int64))]))
    nodes.append(ir.node("Mul", [nodes[-1].outputs[0], relative]))
    nodes.append(ir.node("ReduceSum", [nodes[-1].outputs[0], _const(graph, "width", np.array([-1], np.int64))]))
    nodes[-1].attributes["keepdims"] = ir.AttrInt64("keepdims", 0)
    biased = nodes[-1].outputs[0]
    nodes.append(ir.node("Transpose", [x], {"perm": [0, 2, 1]}))
    nodes.append(ir.node("MatMul", [x, nodes[-1].outputs[0]]))
    nodes.append(ir.node("Add", [nodes[-1].outputs[0], biased]))
    scores = nodes[-1].outputs[0]
    nodes.append(ir.node("Cast", [mask], {"to": ir.DataType.FLOAT}))
    gate = nodes[-1].outputs[0]
    nodes.append(ir.node("Sub", [gate, _const(graph, "unit", np.array(1.0, np.float32))]))
    nodes.append(ir.node("Mul", [nodes[-1].outputs[0], _const(graph, "masked", np.array(1e4, np.float32))]))
    nodes.append(ir.node("Unsqueeze", [nodes[-1].outputs[0], _const(graph, "query", np.array([1], np.int64))]))
    nodes.append(ir.node("Add", [scores, nodes[-1].outputs[0]]))
    nodes.append(ir.node("Softmax", [nodes[-1].outputs[0]], {"axis": -1}))
    nodes.append(ir.node("MatMul", [nodes[-1].outputs[0], x]))
    summed = nodes[-1].outputs[0]
    nodes.append(ir.node("Unsqueeze", [gate, _const(graph, "hidden", np.array([2], np.int64))]))
    nodes.append(ir.node("Mul", [summed, nodes[-1].outputs[0]]))
    _finish(graph, nodes, path)


def _log_bucket(distance: np.ndarray, size: int, most: int) -> np.ndarray:
    """DeBERTa-v2's ``make_log_bucket_position`` (transformers), in numpy."""
    sign, middle = np.sign(distance), size // 2
    far = np.where((distance < middle) & (distance > -middle), middle - 1, np.abs(distance))
    logged = np.ceil(np.log(far / middle) / np.log((most - 1) / middle) * (middle - 1)) + middle
    return np.where(far <= middle, distance, logged * sign).astype(np.int64)


def _both_ends(size: int, most: int) -> int:
    """The fewest tokens whose bucketed distances plus ``size``, clipped to ``2 size`` rows, read rows 0 and last."""
    for length in range(2, 4 * most):
        steps = np.arange(length)
        index = np.clip(_log_bucket(steps[:, None] - steps[None, :], size, most) + size, 0, 2 * size - 1)
        if index.max() == 2 * size - 1 and index.min() == 0:
            return length
    raise AssertionError("no length reads both ends")


@pytest.mark.parametrize(
    ("spelling", "span", "options", "found"),
    [
        ("clip, GatherElements", 200, None, 201 + 8),
        ("Max and Min, Gather", 200, {}, 201 + 8),
        ("log buckets", 16, {"buckets": (16, 64)}, _both_ends(16, 64) + 8),
        ("beside absolute positions", 200, {"absolute": 300}, 300),
        ("beside fewer absolute positions", 200, {"absolute": 150}, 150),
    ],
)
def test_a_relative_tables_end_is_found_however_its_index_is_spelled(tmp_path, spelling, span, options, found):
    # Before: {} for the first three (the relative index was no table); the absolute table's end where there is one
    # (any length past a relative table's end reads it too; none past the absolute table's runs). Since review s77
    # late77d, 8 tokens past the shortest length reading both ends, where the index is clipped: 45 pairs read each.
    path = tmp_path / "relative.onnx"
    if options is None:  # session 76's spelling (``tests/test_review_s76_late76c.py``)
        _relative(path, span)
    else:
        _relative_gathered(path, span, **options)
    assert position_table_lengths(ir.load(path)) == {"sequence": found}


class _RelativeRows(ir.passes.InPlacePass):
    """The relative table's first and last rows rewritten (``edit``, of a copy of ``rel_embeddings.weight``)."""

    edit = staticmethod(lambda table: table)

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        value = model.graph.initializers["rel_embeddings.weight"]
        value.const_value = ir.tensor(self.edit(constant_array(value).copy()), name=value.name)
        return ir.passes.PassResult(model, True)


class _EndRowsSwapped(_RelativeRows):
    """The first and last rows swapped: each is read only where tokens are ``span`` apart."""

    edit = staticmethod(lambda table: table[[-1, *range(1, len(table) - 1), 0]])


def _report(path, tmp_path, mutant):
    spec = PassSpec("relative-rewrite", mutant, mutant.__doc__.splitlines()[0])
    with mock.patch.object(api, "resolve", lambda names, opts: [*registry.resolve(names, opts), spec]):
        _, report = api.optimize_with_report(path, [], output=tmp_path / "out.onnx")
    assert report.passes[-1].name == "relative-rewrite"
    return report


def test_a_rewrite_wrong_only_at_a_relative_tables_ends_is_rolled_back(tmp_path):
    path = tmp_path / "relative.onnx"
    _relative_gathered(path, 200)
    record = _report(path, tmp_path, _EndRowsSwapped).passes[-1]
    # Before: applied (the sets of 128 and 257 tokens, rows padded, held no pair of tokens 199 or 200 apart).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'sequence' at 209, the last row of a table the length indexes" in record.detail


def test_a_relative_tables_end_past_the_attention_bound_is_named(tmp_path):
    path = tmp_path / "relative.onnx"
    _relative_gathered(path, 2000)
    report = _report(path, tmp_path, _RelativeRows)
    assert report.passes[-1].status == STATUS_APPLIED, report.passes[-1].detail
    assert not any("sequence=2009" in label for label in report.input_sets), report.input_sets
    named = [warning for warning in report.warnings if "('sequence' at 2009; " in warning]
    # Before: no warning (the relative table's end was never looked for).
    assert len(named) == 1, report.warnings
    assert "reads a table to its last row" in named[0] and "attention there would cost" in named[0], named[0]


def test_a_relative_tables_end_short_of_an_unpadded_set_adds_no_set(tmp_path):
    # 33 tokens read both ends of 64 rows (drawn 8 on, 41); the first set's 128 unpadded tokens read them too: no set of
    # 41 is drawn.
    path = tmp_path / "relative.onnx"
    _relative_gathered(path, 32)
    assert position_table_lengths(ir.load(path)) == {"sequence": 33 + 8}
    report = _report(path, tmp_path, _EndRowsSwapped)
    assert not any("the last row of a table" in label for label in report.input_sets), report.input_sets
    assert report.passes[-1].status == STATUS_ROLLED_BACK, report.passes[-1].detail

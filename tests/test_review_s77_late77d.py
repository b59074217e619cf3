"""Review s77 (late77d): a late hostile review of review s77 xtab's relative table ends
(``optimizer/compared_inputs.py``'s ``_relative_end``, ``_relative_reads``, ``_evaluated``, ``_slices_nothing``): the
shortest length at which an index of pairs of positions reads its table's last and first rows, evaluated at the first
and last positions alone.

- The first row was required only where a ``Clip``, or a ``Max`` with its bound second, bounded the index from below:
  ``Max(0, x)`` and ``Where(x < 0, 0, x)`` were taken for no bound, the length found read the last row and not the
  first (one token short), and a rewrite wrong only in row 0 verified under a set labelled at the table's end. The
  first row is now the least the index reads at any length, however it is bounded; a ``Min`` bounds it above on either
  side too.
- A ``Slice`` to an end the graph computes was taken to keep all: one to ``L - 16`` found a length 16 short of the
  first row's. Only a slice to the positions' own length (DeBERTa's ``rel_pos_ids[:query_size]``) is taken to keep
  all.
- At the shortest length one to three pairs of tokens read each end row, and a swap of the two verified on 2 draws of
  30; where the index is clipped, the set is drawn 8 tokens on (45 pairs each), as far as ``--max-sequence`` lets it.
- ``optimizer/api.py``'s ``_add_table_ends`` took a set as long as a relative end to hold it though its tokens were
  padded: a tiny DeBERTa's 512 clipped rows end at 257 tokens, the second binding's length (its tokens 192 apart at
  most), and no set read them.

Each expected length is computed by numpy over every pair of positions, not by the code under test.
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
from optimizer.report import STATUS_ROLLED_BACK
from passes._utils import add_initializer, constant_array

_HIDDEN = 4
_VOCABULARY = 6


def _relative_model(path, span: int, spelling: str, rows: int | None = None) -> None:
    """``input_ids``, ``attention_mask`` -> word rows ``x``; a relative table of ``rows`` (``2 span``) rows read by
    ``Gather`` at ``clip(q - k + span, 0, 2 span - 1)`` (``Range(0, L)``) as ``spelling`` writes it, into scores
    ``sum(x_q * rel[q, k])`` added to ``x xᵀ``, the padded keys masked, softmax, times ``x``; padded tokens zeroed."""
    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    mask = ir.Value(name="attention_mask", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    graph = ir.Graph([ids, mask], [], nodes=[], opset_imports={"": 17}, name="relative")
    made = iter(range(1 << 10))

    def const(value, dtype=np.int64) -> ir.Value:
        return add_initializer(graph, f"c{next(made)}", np.asarray(value, dtype))

    rng = np.random.default_rng(1)
    words = add_initializer(graph, "word_embeddings.weight", rng.standard_normal((_VOCABULARY, _HIDDEN), np.float32))
    shape = (rows or 2 * span, _HIDDEN)
    table = add_initializer(graph, "rel_embeddings.weight", rng.standard_normal(shape, np.float32))
    nodes = [ir.node("Gather", [words, ids]), ir.node("Shape", [ids], {"start": 1, "end": 2})]
    nodes.append(ir.node("Squeeze", [nodes[-1].outputs[0]]))
    length = nodes[-1].outputs[0]
    nodes.append(ir.node("Range", [const(0), length, const(1)]))
    steps, x = nodes[-1].outputs[0], nodes[0].outputs[0]
    nodes.append(ir.node("Unsqueeze", [steps, const([1])]))
    nodes.append(ir.node("Unsqueeze", [steps, const([0])]))
    nodes.append(ir.node("Sub", [nodes[-2].outputs[0], nodes[-1].outputs[0]]))
    distance = nodes[-1].outputs[0]
    if spelling.startswith("slice"):  # the keys cut to ``L + end``: [q, k < L + end]
        nodes.append(ir.node("Unsqueeze", [length, const([0])]))
        if spelling == "slice to L - 16":
            nodes.append(ir.node("Sub", [nodes[-1].outputs[0], const([16])]))
        nodes.append(ir.node("Slice", [distance, const([0]), nodes[-1].outputs[0], const([1]), const([1])]))
        distance = nodes[-1].outputs[0]
    nodes.append(ir.node("Add", [const(span), distance]))
    shifted = nodes[-1].outputs[0]
    if spelling.startswith("slice"):  # as DeBERTa clips it
        nodes.append(ir.node("Clip", [shifted, const(0), const(2 * span - 1)]))
    elif spelling == "unclipped":  # fails past ``span`` tokens
        nodes.append(ir.node("Identity", [shifted]))
    else:  # bounded below as ``spelling`` says, then ``Min(2 span - 1, x)``
        if spelling == "Where below":
            nodes.append(ir.node("Less", [shifted, const(0)]))
            nodes.append(ir.node("Where", [nodes[-1].outputs[0], const(0), shifted]))
        elif spelling == "Clip below":
            nodes.append(ir.node("Clip", [shifted, const(0)]))
        else:
            nodes.append(ir.node("Max", [const(0), shifted]))
        nodes.append(ir.node("Min", [const(2 * span - 1), nodes[-1].outputs[0]]))
    nodes.append(ir.node("Gather", [table, nodes[-1].outputs[0]]))  # [q, k, hidden]
    relative = nodes[-1].outputs[0]
    nodes.append(ir.node("Unsqueeze", [x, const([2])]))
    nodes.append(ir.node("Mul", [nodes[-1].outputs[0], relative]))
    nodes.append(ir.node("ReduceSum", [nodes[-1].outputs[0], const([-1])], {"keepdims": 0}))
    biased = nodes[-1].outputs[0]
    nodes.append(ir.node("Transpose", [x], {"perm": [0, 2, 1]}))
    nodes.append(ir.node("MatMul", [x, nodes[-1].outputs[0]]))
    nodes.append(ir.node("Add", [nodes[-1].outputs[0], biased]))
    scores = nodes[-1].outputs[0]
    nodes.append(ir.node("Cast", [mask], {"to": ir.DataType.FLOAT}))
    gate = nodes[-1].outputs[0]
    nodes.append(ir.node("Sub", [gate, const(1.0, np.float32)]))
    nodes.append(ir.node("Mul", [nodes[-1].outputs[0], const(1e4, np.float32)]))
    nodes.append(ir.node("Unsqueeze", [nodes[-1].outputs[0], const([1])]))
    nodes.append(ir.node("Add", [scores, nodes[-1].outputs[0]]))
    nodes.append(ir.node("Softmax", [nodes[-1].outputs[0]], {"axis": -1}))
    nodes.append(ir.node("MatMul", [nodes[-1].outputs[0], x]))
    summed = nodes[-1].outputs[0]
    nodes.append(ir.node("Unsqueeze", [gate, const([2])]))
    nodes.append(ir.node("Mul", [summed, nodes[-1].outputs[0]]))
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype, out.shape = "last_hidden_state", ir.DataType.FLOAT, ir.Shape(["batch", "sequence", _HIDDEN])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=8), path)


def _both_ends(spelling: str, span: int, rows: int) -> int:
    """The fewest tokens whose index ``clip(q - k + span, 0, 2 span - 1)`` over every pair (the keys cut to ``L - 16``
    where ``spelling`` slices them so) reads rows 0 and ``rows - 1``."""
    for length in range(2, 4 * span):
        keys = length - 16 if spelling == "slice to L - 16" else length
        index = np.clip(np.subtract.outer(np.arange(length), np.arange(keys)) + span, 0, 2 * span - 1)
        if index.size and index.min() == 0 and index.max() == rows - 1:
            return length
    raise AssertionError("no length reads both ends")


@pytest.mark.parametrize(
    ("spelling", "rows"),
    [("Max(0, x)", None), ("Where below", None), ("Clip below", 110)],
)
def test_a_relative_index_bounded_below_however_spelled_is_drawn_at_its_first_row(tmp_path, spelling, rows):
    # Before: 50 for ``Max(0, x)`` and ``Where`` (the last row, 99, is read at 50 tokens, row 0 only at 51: taken for
    # no bound below) and {} for a ``Min(99, x)`` on a table of 110 rows (the bound read only as a ``Min``'s second).
    path = tmp_path / "relative.onnx"
    _relative_model(path, 50, spelling, rows)
    assert position_table_lengths(ir.load(path)) == {"sequence": _both_ends(spelling, 50, 100) + 8}


@pytest.mark.parametrize("spelling", ["slice to L", "slice to L - 16"])
def test_a_slice_of_the_keys_finds_no_length_short_of_the_rows(tmp_path, spelling):
    # Before: 51 for both, the slice to ``L - 16`` taken to keep all: at 51 tokens the keys end at 34, and no pair reads
    # row 0 until 67 (a set labelled at the table's end read none there). A slice to the length itself keeps all.
    path = tmp_path / "relative.onnx"
    _relative_model(path, 50, spelling)
    found = position_table_lengths(ir.load(path)).get("sequence")
    assert found is None or found >= _both_ends(spelling, 50, 100), found
    assert spelling != "slice to L" or found == 51 + 8, found


def test_a_clipped_relative_end_is_drawn_where_many_pairs_read_each_end_row(tmp_path):
    # Before: 51, where one pair of tokens reads row 0 and two row 99 (a swap of the two verified on 2 draws of 30 at
    # 400 rows). An index that is not clipped fails past its rows: drawn at the shortest length.
    path = tmp_path / "relative.onnx"
    _relative_model(path, 50, "slice to L")
    found = position_table_lengths(ir.load(path))["sequence"]
    index = np.clip(np.subtract.outer(np.arange(found), np.arange(found)) + 50, 0, 99)
    assert min((index == 0).sum(), (index == 99).sum()) >= 36, found
    _relative_model(path, 50, "unclipped")
    assert position_table_lengths(ir.load(path)) == {"sequence": 50}


class _FirstRowWrong(ir.passes.InPlacePass):
    """The relative table's first row moved: read only by tokens ``span`` apart, the key after the query."""

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        value = model.graph.initializers["rel_embeddings.weight"]
        table = constant_array(value).copy()
        table[0] += 2.0
        value.const_value = ir.tensor(table, name=value.name)
        return ir.passes.PassResult(model, True)


@pytest.mark.parametrize(
    ("spelling", "span", "longest", "drawn"),
    [("Where below", 200, None, 209), ("Where below", 200, 205, 205), ("slice to L", 256, None, 265)],
)
def test_a_rewrite_wrong_only_at_a_relative_tables_first_row_is_rolled_back(tmp_path, spelling, span, longest, drawn):
    # ``span + 1`` tokens read both ends of ``2 span`` rows, drawn 8 on, or as far as ``--max-sequence`` lets them.
    # Before: the ``Where`` bound read as none, the set drawn at 200 read no row 0; at 512 rows (a tiny DeBERTa's,
    # clipped), the ends at 257 were taken to be read by the second binding, as long, its tokens padded and 192 apart
    # at most: no set drawn (at 205, the same).
    path = tmp_path / "relative.onnx"
    _relative_model(path, span, spelling)
    spec = PassSpec("relative-rewrite", _FirstRowWrong, "relative rewrite")
    options = {} if longest is None else {"max_sequence": longest}
    with mock.patch.object(api, "resolve", lambda names, opts: [*registry.resolve(names, opts), spec]):
        asked = [] if longest is None else ["+fuse-embed-layer-norm"]  # a pass that reads --max-sequence
        _, report = api.optimize_with_report(path, asked, output=tmp_path / "out.onnx", **options)
    record = report.passes[-1]
    assert record.name == "relative-rewrite"
    assert record.status == STATUS_ROLLED_BACK, (record.status, report.input_sets)
    assert f"'sequence' at {drawn}, the last row of a table the length indexes" in record.detail, record.detail

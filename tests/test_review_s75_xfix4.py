"""Review s75 (xfix4): verification reaches the last row of a position table (``optimizer/compared_inputs.py``'s
``position_table_lengths``, ``optimizer/api.py``'s ``_add_table_ends``).

Generated lengths are 128, then half of it where the original refuses that, and a second binding at 257 or half plus
one: a table of 96 rows (or 64 beside ``--max-sequence 100``) was read up to row 64 (32) at most, and a rewrite wrong
only in its last rows verified. Now, where a length indexes a constant table along its rows (a ``Slice`` of a position
buffer, a ``Range`` a ``Gather`` reads by), one set at one row and that table's end is verified too; past the size
limit on such a set, the report names the length left out; a model without such a table takes the old path.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx_ir as ir
import pytest

import optimizer.api as api
from optimizer import registry
from optimizer.protocol import PassSpec
from optimizer.report import STATUS_ROLLED_BACK
from passes._utils import add_initializer, constant_array

_HIDDEN = 4


def _encoder(path, rows: int, spelling: str, hidden: int = _HIDDEN, vocabulary: int = 50) -> None:
    """``input_ids [batch, sequence]`` -> word + position embeddings (a ``rows``-row table, its positions a ``Slice``
    of a buffer, a ``Range``, or none: ``spelling``) -> ``LayerNormalization``; with ``hidden`` wide, the input is
    ``inputs_embeds [batch, sequence, hidden]`` in place of the ids."""
    rng = np.random.default_rng(0)
    embeds = hidden != _HIDDEN
    name, shape = ("inputs_embeds", ["batch", "sequence", hidden]) if embeds else ("input_ids", ["batch", "sequence"])
    dtype = ir.DataType.FLOAT if embeds else ir.DataType.INT64
    source = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(dtype))
    graph = ir.Graph([source], [], nodes=[], opset_imports={"": 17}, name="encoder")
    nodes = []
    if embeds:
        words = source
    else:
        table = add_initializer(graph, "word_embeddings.weight", rng.standard_normal((vocabulary, hidden), np.float32))
        nodes.append(ir.node("Gather", [table, source]))
        words = nodes[-1].outputs[0]
    if spelling != "none":
        table = rng.standard_normal((rows, 1 if embeds else hidden)).astype(np.float32)  # wide: broadcast
        positions = add_initializer(graph, "position_embeddings.weight", table)
        nodes.append(ir.node("Shape", [source], {"start": 1, "end": 2}))
        length = nodes[-1].outputs[0]
        if spelling == "slice":
            buffer = add_initializer(graph, "position_ids", np.arange(rows, dtype=np.int64)[None])
            start = add_initializer(graph, "start", np.array([0], np.int64))
            axis = add_initializer(graph, "axis", np.array([1], np.int64))
            nodes.append(ir.node("Slice", [buffer, start, length, axis]))
        else:
            zero = add_initializer(graph, "zero", np.array(0, np.int64))
            one = add_initializer(graph, "one", np.array(1, np.int64))
            nodes.append(ir.node("Squeeze", [length]))
            nodes.append(ir.node("Range", [zero, nodes[-1].outputs[0], one]))
        nodes.append(ir.node("Gather", [positions, nodes[-1].outputs[0]]))
        nodes.append(ir.node("Add", [words, nodes[-1].outputs[0]]))
        words = nodes[-1].outputs[0]
    scale = add_initializer(graph, "norm.weight", rng.uniform(0.5, 1.5, hidden).astype(np.float32))
    bias = add_initializer(graph, "norm.bias", rng.standard_normal(hidden).astype(np.float32))
    nodes.append(ir.node("LayerNormalization", [words, scale, bias], {"axis": -1, "epsilon": 1e-12}))
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype, out.shape = "last_hidden_state", ir.DataType.FLOAT, ir.Shape(["batch", "sequence", hidden])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=8), path)


class _LastRowWrong(ir.passes.InPlacePass):
    """The position table's last row read as the one before (a Slice end off by one at the longest sequence)."""

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        value = model.graph.initializers["position_embeddings.weight"]
        array = constant_array(value).copy()
        array[-1] = array[-2]
        value.const_value = ir.tensor(array, name=value.name)
        return ir.passes.PassResult(model, True)


def _optimized(path, tmp_path, mutant=None, **options):
    # --max-sequence is refused beside no pass that reads it: a rotary fusion, which finds no rotary here.
    passes = ["fuse-rotary-embedding"] if "max_sequence" in options else []
    specs = [PassSpec("last-row-wrong", mutant, "last row wrong")] if mutant else []
    with mock.patch.object(api, "resolve", lambda names, opts: [*registry.resolve(names, opts), *specs]):
        _, report = api.optimize_with_report(path, passes, output=tmp_path / "out.onnx", **options)
    return report


@pytest.mark.parametrize(
    ("rows", "spelling", "options"), [(96, "slice", {}), (64, "range", {"max_sequence": 100})], ids=["96", "64"]
)
def test_a_rewrite_wrong_only_at_the_tables_last_row_is_rolled_back(tmp_path, rows, spelling, options):
    path = tmp_path / "encoder.onnx"
    _encoder(path, rows, spelling)
    report = _optimized(path, tmp_path, _LastRowWrong, **options)
    record = report.passes[-1]
    assert record.name == "last-row-wrong"
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"
    assert f"'sequence' at {rows}, the last row of a table the length indexes (batch=1, sequence={rows})" in (
        record.detail
    )


@pytest.mark.parametrize(
    ("rows", "hidden", "options", "limit"),
    [(4096, 2048, {}, "sets of 16 MiB at most"), (5000, 4, {"max_sequence": 8192}, "lengths of 4096 at most")],
    ids=["bytes", "length"],
)
def test_a_tables_end_past_the_limits_is_named_in_the_report(tmp_path, rows, hidden, options, limit):
    # 4,096 positions of 2,048 floats are 32 MiB, past the 16 MiB a set adds; 5,000 tokens, past the longest end run
    # (within --max-sequence: past it, the result claims no such length, and none is drawn or named).
    path = tmp_path / "encoder.onnx"
    _encoder(path, rows, "slice", hidden=hidden)
    report = _optimized(path, tmp_path, **options)
    assert not any(f"sequence={rows}" in label for label in report.input_sets), report.input_sets
    named = [warning for warning in report.warnings if f"('sequence' at {rows}; " in warning]
    assert len(named) == 1, report.warnings
    assert "reads a table to its last row" in named[0] and limit in named[0], named[0]


def test_a_model_without_such_a_table_takes_the_old_path(tmp_path):
    # The spy: ``_add_table_ends`` as a no-op (the old path) leaves the sets and warnings of a model without a
    # position table as they are, and takes the table-end set away from one with it.
    reports = {}
    for spelling in ("none", "slice"):
        path = tmp_path / f"{spelling}.onnx"
        _encoder(path, 96, spelling)
        with mock.patch.object(api, "position_table_lengths", return_value={}) as asked:
            old = _optimized(path, tmp_path)
        assert asked.call_count == 1, "position_table_lengths was not asked"
        reports[spelling] = (old, _optimized(path, tmp_path))
    old, new = reports["none"]
    assert (new.input_sets, new.warnings) == (old.input_sets, old.warnings)
    old, new = reports["slice"]
    assert [label for label in new.input_sets if label not in old.input_sets] == [
        "generated, 'sequence' at 96, the last row of a table the length indexes (batch=1, sequence=96)"
    ]


def test_given_inputs_take_the_old_path(tmp_path):
    # Given inputs are the lengths the user runs (the README says to give the longest there): no set at the table's
    # end is added beside them, and the report names none.
    path = tmp_path / "encoder.onnx"
    _encoder(path, 96, "slice")
    ids = np.random.default_rng(1).integers(0, 50, (2, 12))
    with mock.patch.object(api, "position_table_lengths", wraps=api.position_table_lengths) as asked:
        _, report = api.optimize_with_report(path, [], output=tmp_path / "out.onnx", inputs={"input_ids": ids})
    assert asked.call_count == 0
    assert not any("sequence=96" in label for label in report.input_sets), report.input_sets


@pytest.mark.parametrize(
    ("fixture", "ends"),
    [
        ("bert_dynamo", {"sequence": 128}),  # Slice(position_ids, Reshape(Cast(0)), Reshape(Cast(Shape(x)[1])), ...)
        ("distilbert_legacy", {"sequence": 128}),  # Shape(Gather(word_embeddings, input_ids))[1]
        ("gpt2_dynamo", {"sequence": 128}),  # Range(CastLike(0), Shape(mask)[1], CastLike(1)) + 0, then Gather(wpe)
        ("llama_kv_legacy", {}),  # positions a position_ids input gives, past and new tokens: longest_cache's
    ],
)
def test_the_exporters_spellings_of_positions_are_read(fixture, ends):
    from optimizer.compared_inputs import position_table_lengths
    from tests.helpers import FIXTURES

    assert position_table_lengths(ir.load(FIXTURES / f"{fixture}.onnx")) == ends

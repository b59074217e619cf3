"""Review s76 (tcost): the cost of the set verification adds at a position table's end (``optimizer/api.py``'s
``_add_table_ends``, ``_attends``).

Where a length indexes a constant table along its rows, one set at batch 1 and the table's length is verified too,
capped by input bytes (16 MiB, 4x the first set's) and 4,096 tokens. Attention costs the square of the length, which
the input bytes do not show: a 1-layer BERT (hidden 768, 12 heads) with a 4,096-row table took 20 s and 4.4 GiB to
optimize with the set, 4.5 s and 0.56 GiB without (review s76 late76c). Now, where tokens attend to each other, the
set is drawn only where its run costs at most ``_TABLE_END_ATTENTION_GROWTH`` times the first set's, and the report's
warning names the length left out and why; 512-row tables (BERT's, RoBERTa's) and graphs without attention keep it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import optimizer.api as api
from passes._utils import add_initializer

_HIDDEN = 4


def _encoder(path, rows: int, attends: bool = True) -> None:
    """``input_ids [batch, sequence]`` -> word + position embeddings (``position_ids[:, :L]`` of a ``rows``-row
    table) -> one head of self-attention (``Softmax(h hᵀ) h``), or with ``attends`` off a projection by a weight."""
    rng = np.random.default_rng(0)
    source = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    graph = ir.Graph([source], [], nodes=[], opset_imports={"": 17}, name="encoder")
    words = add_initializer(graph, "word_embeddings.weight", rng.standard_normal((50, _HIDDEN), np.float32))
    table = add_initializer(graph, "position_embeddings.weight", rng.standard_normal((rows, _HIDDEN), np.float32))
    buffer = add_initializer(graph, "position_ids", np.arange(rows, dtype=np.int64)[None])
    start = add_initializer(graph, "start", np.array([0], np.int64))
    axis = add_initializer(graph, "axis", np.array([1], np.int64))
    nodes = [ir.node("Gather", [words, source]), ir.node("Shape", [source], {"start": 1, "end": 2})]
    nodes.append(ir.node("Slice", [buffer, start, nodes[-1].outputs[0], axis]))
    nodes.append(ir.node("Gather", [table, nodes[-1].outputs[0]]))
    nodes.append(ir.node("Add", [nodes[0].outputs[0], nodes[-1].outputs[0]]))
    hidden = nodes[-1].outputs[0]
    if attends:
        nodes.append(ir.node("Transpose", [hidden], {"perm": [0, 2, 1]}))
        nodes.append(ir.node("MatMul", [hidden, nodes[-1].outputs[0]]))
        nodes.append(ir.node("Softmax", [nodes[-1].outputs[0]], {"axis": -1}))
        nodes.append(ir.node("MatMul", [nodes[-1].outputs[0], hidden]))
    else:
        weight = add_initializer(graph, "dense.weight", rng.standard_normal((_HIDDEN, _HIDDEN), np.float32))
        nodes.append(ir.node("MatMul", [hidden, weight]))
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype, out.shape = "last_hidden_state", ir.DataType.FLOAT, ir.Shape(["batch", "sequence", _HIDDEN])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=8), path)


def _report(tmp_path, rows: int, attends: bool = True):
    path = tmp_path / f"encoder_{rows}_{attends}.onnx"
    _encoder(path, rows, attends)
    _, report = api.optimize_with_report(path, [], output=tmp_path / "out.onnx")
    return report


def _end_set(report, rows: int) -> list[str]:
    return [label for label in report.input_sets if f"'sequence' at {rows}, the last row of a table" in label]


def _named(report, rows: int) -> list[str]:
    return [warning for warning in report.warnings if f"('sequence' at {rows}; " in warning]


def test_a_4096_row_tables_end_under_attention_is_left_out_and_named(tmp_path):
    # 4,096 tokens against the first set's 128: about 1,024 times its attention, past the 64 allowed.
    report = _report(tmp_path, 4096)
    assert not _end_set(report, 4096), report.input_sets
    named = _named(report, 4096)
    assert len(named) == 1, report.warnings
    assert "reads a table to its last row" in named[0], named[0]
    growth = api._TABLE_END_ATTENTION_GROWTH
    assert f"attention there would cost about 1,024 times the first set's, {growth} at most" in named[0], named[0]


@pytest.mark.parametrize(("growth", "kept"), [(1, False), (64, True)])
def test_the_attention_bound_is_read_where_the_set_is_drawn(tmp_path, monkeypatch, growth, kept):
    # A 256-row table, 4 times the first set's attention: past a bound of 1, within 64.
    monkeypatch.setattr(api, "_TABLE_END_ATTENTION_GROWTH", growth)
    report = _report(tmp_path, 256)
    assert bool(_end_set(report, 256)) is kept, report.input_sets
    assert bool(_named(report, 256)) is not kept, report.warnings
    if not kept:
        assert f"times the first set's, {growth} at most" in _named(report, 256)[0]


@pytest.mark.parametrize(("rows", "attends"), [(512, True), (4096, False)], ids=["512-attention", "4096-projection"])
def test_a_512_row_table_or_a_graph_without_attention_keeps_its_set(tmp_path, rows, attends):
    report = _report(tmp_path, rows, attends)
    assert _end_set(report, rows), report.input_sets
    assert not _named(report, rows), report.warnings


def test_attention_is_told_from_projections(tmp_path):
    for attends in (True, False):
        _encoder(tmp_path / "encoder.onnx", 8, attends)
        assert api._attends(ir.load(tmp_path / "encoder.onnx")) is attends

"""Review s76 late76f: a hostile review of late76d's rotary caches and tables (``verify.counted_position_rows``,
``verify._tables_held``, ONNX's ``RotaryEmbedding`` in ``verify._lookups``) and of the note
``api._lengths_a_rewrite_compares`` gives on lengths no set holds. The holes found, each verified wrong:
- caches a GenAI decoder's layers share, one layer given a copy of its own that is wrong: the caches, each read once,
  were matched by name, and the copy never compared;
- ONNX's own ``RotaryEmbedding`` at positions counted from the mask's length (no ``position_ids`` input): not
  read at all, its last row read one late verified;
- a cache longer than ``--max-sequence`` (8,192 rows, 4,096): its last changed row past the bound was named, and the
  last changed row within it never drawn (the first changed was, harmless);
- the note naming lengths "not verified" was given for a rewrite rolled back anyway;
- tables behind a ``DequantizeLinear`` blocked along their width (the scales' rows the table's), in a ``Constant``'s
  ``value_floats``, or read by ``GatherBlockQuantized`` (what ``--quantize int4`` writes): a swap of two rows verified.
A table blocked along its rows (``block_size`` on axis 0), a strict xfail here, is read since review s76 late76h.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.domains import MS_DOMAIN
from optimizer.report import STATUS_ROLLED_BACK
from passes._utils import add_initializer, constant_array
from tests.helpers import FIXTURES
from tests.test_review_s76_late76d import (
    _last_pass,
    _LastCountedRotaryRow,
    _Mutant,
    _scaled,
    _ScaledAt1500,
    counting_decoder,
)

# --- rotary caches read at positions the graph counts --------------------------------------------------------------

_ROWS = 8192  # past the default --max-sequence of 4,096


@pytest.fixture(scope="module")
def genai_8192_rows(tmp_path_factory):
    """The GenAI Llama fixture (two ``GroupQueryAttention`` with ``do_rotary`` sharing ``cos_cache`` and
    ``sin_cache``) with caches of 8,192 positions, the same frequencies as its own 128."""
    model = ir.load(FIXTURES / "llama_kv_genai.onnx")
    nodes = [node for node in model.graph if node.op_type == "GroupQueryAttention"]
    assert len(nodes) == 2 and all(node.inputs[7] is nodes[0].inputs[7] for node in nodes)  # shared
    half = constant_array(nodes[0].inputs[7]).shape[1]
    angles = np.arange(_ROWS)[:, None] * 10000.0 ** (-np.arange(half) / half)[None, :]
    for index, function in ((7, np.cos), (8, np.sin)):
        table = nodes[0].inputs[index]
        np.testing.assert_allclose(function(angles[: len(constant_array(table))]), constant_array(table), atol=1e-5)
        table.const_value = ir.tensor(function(angles).astype(np.float32), name=table.name)
        table.shape = ir.Shape([_ROWS, half])
    path = tmp_path_factory.mktemp("late76f") / "genai_8192_rows.onnx"
    ir.save(model, path)
    return path


class _OneLayersCopy(_Mutant):
    """The second layer reads a copy of the shared cos/sin caches of its own, row 4,000 read one row late."""

    def mutate(self, model):
        node = [node for node in model.graph if node.op_type == "GroupQueryAttention"][1]
        for index in (7, 8):
            value = node.inputs[index]
            table = constant_array(value).copy()
            table[4000] = table[4001]
            name = f"{value.name}.layers.1"
            copy = ir.Value(name=name, shape=value.shape, type=value.type, const_value=ir.tensor(table, name=name))
            model.graph.register_initializer(copy)
            node.replace_input_with(index, copy)


def test_one_layers_copy_of_shared_rotary_caches_wrong_is_rolled_back(genai_8192_rows, tmp_path):
    record = _last_pass(genai_8192_rows, _OneLayersCopy, tmp_path)
    # Measured before the fix: applied (cos_cache and sin_cache matched by name, unchanged; the copies never read).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "the new token at position 4000, a row of 'cos_cache.layers.1' the pass changed" in record.detail


class _WrongWithinAndPastTheBound(_Mutant):
    """The shared caches' row 1 a float32 step off (harmless), rows 4,000 and 8,191 read one row late."""

    def mutate(self, model):
        node = next(node for node in model.graph if node.op_type == "GroupQueryAttention")
        for index in (7, 8):
            value = node.inputs[index]
            table = constant_array(value).copy()
            table[1] = np.nextafter(table[1], np.float32(2))
            table[4000], table[-1] = table[4001], table[-2]
            value.const_value = ir.tensor(table, name=value.name)


def test_the_last_changed_cache_row_within_max_sequence_is_drawn(genai_8192_rows, tmp_path):
    record = _last_pass(genai_8192_rows, _WrongWithinAndPastTheBound, tmp_path)
    # Measured before the fix: applied, a note naming position 8,191 (past --max-sequence 4096) alone; row 1 drawn.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "the new token at position 4000" in record.detail
    assert not any("not verified" in note for note in record.notes), record.notes  # rolled back: no such word


class _LastOnnxRotaryRow(_LastCountedRotaryRow):
    """ONNX's ``RotaryEmbedding``'s cos/sin caches' last row (position 1,023) read one row late."""

    caches = (1, 2)


def test_an_onnx_rotary_cache_read_at_positions_the_mask_counts_is_read_to_its_last_row(tmp_path):
    path = tmp_path / "onnx_counting_decoder.onnx"
    counting_decoder(path, onnx_op=True)
    record = _last_pass(path, _LastOnnxRotaryRow, tmp_path)
    # Measured before the fix: applied (ONNX's op left to ``_rewritten_rows``, which reads an input's ids alone).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'total_sequence' at 1024, the new token at position 1023, a row of 'rotary_cos_cache'" in record.detail


# --- the note on lengths left out ----------------------------------------------------------------------------------


class _WrongEverywhereAndAt1500(_ScaledAt1500):
    """``_ScaledAt1500``'s branch, and ``x`` scaled by 2.5 where it was by 2 (wrong at every length)."""

    def mutate(self, model):
        super().mutate(model)
        value = model.graph.initializers["two"]
        value.const_value = ir.tensor(np.float32(2.5), name=value.name)


def test_a_rolled_back_rewrite_is_not_said_unverified_at_a_length(tmp_path):
    path = tmp_path / "scaled.onnx"
    _scaled(path, 4096)  # a set of 1,500 x 4,096 floats is past the bytes a set may hold
    record = _last_pass(path, _WrongEverywhereAndAt1500, tmp_path)
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    # Measured before the fix: "... ('sequence' at 1500; sets of 16 MiB at most): it was not verified at them".
    assert not any("not verified" in note for note in record.notes), record.notes


# --- tables behind a DequantizeLinear, in value_floats, read by GatherBlockQuantized -------------------------------

_VOCAB, _WIDTH = 30522, 32


def _quantized_lookup(path, held: str) -> None:
    """``input_ids`` looking up a table of ``_VOCAB`` rows held ``held``: "width blocks" (int8 behind a
    ``DequantizeLinear`` blocked along its width, opset 21), "row blocks" (blocked along its rows),
    "value_floats" (a ``Constant``'s list, one value a row) or "GatherBlockQuantized" (4-bit, as ``--quantize
    int4`` writes it)."""
    rng = np.random.default_rng(0)
    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    graph = ir.Graph([ids], [], nodes=[], opset_imports={"": 21, MS_DOMAIN: 1}, name="quantized_lookup")
    width: list[str | int] = ["batch", "sequence", _WIDTH]
    if held == "value_floats":
        nodes = [ir.node("Constant", [], {"value_floats": rng.standard_normal(_VOCAB).astype(np.float32).tolist()})]
        nodes.append(ir.node("Gather", [nodes[0].outputs[0], ids]))
        width = width[:2]
    elif held == "GatherBlockQuantized":
        rows = add_initializer(graph, "table.quantized", rng.integers(0, 256, (_VOCAB, _WIDTH // 2), np.uint8))
        scales = add_initializer(graph, "table.scale", rng.uniform(0.01, 0.03, (_VOCAB, 1)).astype(np.float32))
        attributes = {"bits": 4, "block_size": 32, "gather_axis": 0, "quantize_axis": 1}
        nodes = [ir.node("GatherBlockQuantized", [rows, ids, scales], attributes, domain=MS_DOMAIN)]
    else:
        rows = add_initializer(graph, "table.quantized", rng.integers(-127, 128, (_VOCAB, _WIDTH), np.int8))
        axis, blocks = (1, (_VOCAB, _WIDTH // 8)) if held == "width blocks" else (0, (-(-_VOCAB // 8), _WIDTH))
        scales = add_initializer(graph, "table.scale", rng.uniform(0.01, 0.03, blocks).astype(np.float32))
        nodes = [ir.node("DequantizeLinear", [rows, scales], {"axis": axis, "block_size": 8})]
        nodes.append(ir.node("Gather", [nodes[0].outputs[0], ids]))
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype, out.shape = "embeddings", ir.DataType.FLOAT, ir.Shape(width)
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=10), path)


class _ScalesOfRowsSwapped(_Mutant):
    """The scales of rows 101 and 102 ([CLS] and [SEP]) exchanged (of a table blocked along its rows: those of the
    blocks holding rows 96 to 103 and 320 to 327); of a ``Constant``'s list, the values of rows 101 and 102."""

    def mutate(self, model):
        node = next(node for node in model.graph if node.op_type != "Gather")
        if node.op_type == "Constant":
            array = np.array(node.attributes["value_floats"].value, np.float32)
            array[[101, 102]] = array[[102, 101]]
            node.attributes["value_floats"] = ir.AttrFloat32s("value_floats", array.tolist())
            return
        value = node.inputs[2 if node.op_type == "GatherBlockQuantized" else 1]
        array = constant_array(value).copy()
        rows = [101, 102] if array.shape[0] == _VOCAB else [12, 40]
        array[rows] = array[rows[::-1]]
        value.const_value = ir.tensor(array, name=value.name)


@pytest.mark.parametrize("held", ["width blocks", "value_floats", "GatherBlockQuantized"])
def test_rows_swapped_in_a_blocked_listed_or_int4_table_are_rolled_back(tmp_path, held):
    path = tmp_path / "table.onnx"
    _quantized_lookup(path, held)
    record = _last_pass(path, _ScalesOfRowsSwapped, tmp_path)
    # Measured before the fix: applied (the scales' rows not read as the table's; a list no table; no lookup).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "input_ids reading rows 101, 102 of" in record.detail


def test_block_scales_swapped_in_a_table_blocked_along_its_rows_are_rolled_back(tmp_path):
    path = tmp_path / "table.onnx"
    _quantized_lookup(path, "row blocks")
    record = _last_pass(path, _ScalesOfRowsSwapped, tmp_path)
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)

"""Review s76 (xfix4): an encoder's rotary caches read at positions the graph counts, ``Range(0, sequence)``
(``optimizer/compared_inputs.py``'s ``position_table_lengths``, ``_rotary_cache_rows``; ``optimizer/api.py``'s
``_add_table_ends``).

A rotary encoder (ModernBERT, NomicBERT, RoFormer, jina-v3-like) takes no ``position_ids``: it rotates at
``Range(0, S)``, expanded to the batch, by a fused ``RotaryEmbedding`` (``com.microsoft``: positions input 1, caches
2 and 3) or ONNX's own (opset 23: positions input 3, caches 1 and 2). Generated sets end far below the caches' rows,
and a rewrite wrong only in rows past them verified (session 76's strict xfail in ``test_review_s76_late76d.py``): the
caches were no table, as the op is no ONNX ``Gather``. They now count as a table whose rows bound the sequence, and
the table-end set (batch 1, the caches' rows) reaches their last row, within the same caps and with the same warning.
So do a fused op's caches read at a constant ``[1]`` offset (what ``fuse-rotary-embedding`` writes for an encoder,
optimized again): the rotated input's recorded sequence dim, named as an input's, ends at their rows less the offset.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx_ir as ir

import optimizer.api as api
from optimizer import registry
from optimizer.compared_inputs import position_table_lengths
from optimizer.domains import MS_DOMAIN
from optimizer.protocol import PassSpec
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from passes._utils import add_initializer, constant_array

_HALF = 4
# The inputs holding each op's positions, then its cos and sin caches.
_READ = {MS_DOMAIN: (1, 2, 3), "": (3, 1, 2)}


def _rotary_encoder(
    path, rows: int, domain: str, *, counted: bool = True, attends: bool = False, offset: int | None = None
) -> None:
    """``x [batch, sequence, 8]`` rotated over caches of ``rows`` positions at ``Expand(Unsqueeze(Cast(Range(0,
    S))), [B, S])`` (``counted``; else at a ``position_ids`` input; with ``offset``, at that ``[1]`` constant offset,
    as ``fuse-rotary-embedding`` writes an encoder's) by a ``RotaryEmbedding`` of ``domain``; with ``attends``, then
    one head of self-attention (``Softmax(y yᵀ) y``)."""
    x = ir.Value(name="x", shape=ir.Shape(["batch", "sequence", 2 * _HALF]), type=ir.TensorType(ir.DataType.FLOAT))
    inputs = [x]
    if not counted:
        inputs.append(
            ir.Value(name="position_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
        )
    opsets = {"": 23} if domain == "" else {"": 17, MS_DOMAIN: 1}
    graph = ir.Graph(inputs, [], nodes=[], opset_imports=opsets, name="rotary_encoder")
    angles = np.arange(rows)[:, None] * 10000.0 ** (-np.arange(_HALF) / _HALF)[None, :]
    cos = add_initializer(graph, "rotary_cos_cache", np.cos(angles).astype(np.float32))
    sin = add_initializer(graph, "rotary_sin_cache", np.sin(angles).astype(np.float32))
    nodes = [ir.node("Shape", [x], {"start": 0, "end": 2})]
    if counted:
        nodes.append(ir.node("Gather", [nodes[0].outputs[0], add_initializer(graph, "one", np.int64(1))]))
        nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], {"to": ir.DataType.INT32}))
        zero, step = add_initializer(graph, "zero", np.int32(0)), add_initializer(graph, "step", np.int32(1))
        nodes.append(ir.node("Range", [zero, nodes[-1].outputs[0], step]))
        nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], {"to": ir.DataType.INT64}))
        nodes.append(ir.node("Unsqueeze", [nodes[-1].outputs[0], add_initializer(graph, "axes", np.array([0]))]))
        nodes.append(ir.node("Expand", [nodes[-1].outputs[0], nodes[0].outputs[0]]))
    positions = nodes[-1].outputs[0] if counted else inputs[1]
    if offset is not None:
        positions = add_initializer(graph, "position_offset", np.array([offset], np.int64))
    operands = [x, None, None, None]
    for at, value in zip(_READ[domain], (positions, cos, sin)):
        operands[at] = value
    nodes.append(ir.node("RotaryEmbedding", operands, {"num_heads": 1}, domain=domain))
    if attends:
        rotated = nodes[-1].outputs[0]
        nodes.append(ir.node("Transpose", [rotated], {"perm": [0, 2, 1]}))
        nodes.append(ir.node("MatMul", [rotated, nodes[-1].outputs[0]]))
        nodes.append(ir.node("Softmax", [nodes[-1].outputs[0]], {"axis": -1}))
        nodes.append(ir.node("MatMul", [nodes[-1].outputs[0], rotated]))
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype, out.shape = "y", ir.DataType.FLOAT, ir.Shape(["batch", "sequence", 2 * _HALF])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=10 if domain == "" else 8), path)


class _Caches(ir.passes.InPlacePass):
    """Rewrites the ``RotaryEmbedding``'s cos/sin caches (``edit`` of each, a copy)."""

    edit = staticmethod(lambda table: table)

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        node = next(node for node in model.graph if node.op_type == "RotaryEmbedding")
        for at in _READ[node.domain][1:]:
            value = node.inputs[at]
            value.const_value = ir.tensor(self.edit(constant_array(value).copy()), name=value.name)
        return ir.passes.PassResult(model, True)


class _LastRowLate(_Caches):
    """The caches' last row read one row late."""

    edit = staticmethod(lambda table: np.concatenate([table[:-1], table[-2:-1]]))


class _SameCaches(_Caches):
    """The caches rewritten as they are."""


def _optimized(path, mutant, tmp_path, **options):
    spec = PassSpec("mutant", mutant, mutant.__doc__.splitlines()[0])
    with mock.patch.object(api, "resolve", lambda names, opts: [*registry.resolve(names, opts), spec]):
        _, report = api.optimize_with_report(path, [], output=tmp_path / "out.onnx", **options)
    assert report.passes[-1].name == "mutant"
    return report


def test_an_onnx_rotary_encoders_last_cache_row_is_read(tmp_path):
    path = tmp_path / "onnx_rotary.onnx"
    _rotary_encoder(path, 1024, "")
    record = _optimized(path, _LastRowLate, tmp_path).passes[-1]
    # Measured before the fix: applied (sets of 128 and 257 tokens; the caches were no table).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'sequence' at 1024, the last row of a table the length indexes (batch=1, sequence=1024)" in record.detail


def test_a_fused_encoders_caches_read_at_a_constant_offset_are_read_to_their_last_row(tmp_path):
    # An encoder ``fuse-rotary-embedding`` fused (a ``[1]`` offset of 0, no ``Range`` left), optimized again.
    path = tmp_path / "offset_rotary.onnx"
    _rotary_encoder(path, 1024, MS_DOMAIN, offset=24)
    assert position_table_lengths(ir.load(path)) == {"sequence": 1000}
    record = _optimized(path, _LastRowLate, tmp_path).passes[-1]
    # Measured before the fix: applied.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'sequence' at 1000, the last row of a table the length indexes" in record.detail


def test_a_correct_rewrite_of_the_caches_is_applied_beside_their_end(tmp_path):
    path = tmp_path / "ms_rotary.onnx"
    _rotary_encoder(path, 1024, MS_DOMAIN)
    report = _optimized(path, _SameCaches, tmp_path)
    assert report.passes[-1].status == STATUS_APPLIED, report.passes[-1].detail
    assert [label for label in report.input_sets if "'sequence' at 1024, the last row of a table" in label]


def test_a_rotary_caches_end_past_the_attention_bound_is_named(tmp_path):
    path = tmp_path / "attending.onnx"
    _rotary_encoder(path, 4096, MS_DOMAIN, attends=True)
    report = _optimized(path, _SameCaches, tmp_path)
    assert not any("sequence=4096" in label for label in report.input_sets), report.input_sets
    named = [warning for warning in report.warnings if "('sequence' at 4096; " in warning]
    # Measured before the fix: no warning (the caches' end was never looked for).
    assert len(named) == 1, report.warnings
    assert "reads a table to its last row" in named[0] and "attention there would cost" in named[0], named[0]


def test_rotary_positions_no_range_counts_take_the_old_path(tmp_path):
    # Positions a graph input gives are drawn within the caches as ids (``_rewritten_rows``): no dim ends there.
    path = tmp_path / "given.onnx"
    _rotary_encoder(path, 1024, MS_DOMAIN, counted=False)
    assert position_table_lengths(ir.load(path)) == {}
    path = tmp_path / "counted.onnx"
    _rotary_encoder(path, 1024, MS_DOMAIN)
    model = ir.load(path)
    assert position_table_lengths(model) == {"sequence": 1024}
    # The Range read as the rotated input, not as positions: no table.
    node = next(node for node in model.graph if node.op_type == "RotaryEmbedding")
    node.replace_input_with(0, node.inputs[1])
    node.replace_input_with(1, model.graph.inputs[0])
    assert position_table_lengths(model) == {}


def _length_off_normalized_rows(path) -> None:
    """Legacy RoFormer's spelling (torch 2.13's legacy exporter): the sinusoidal table's ``Gather(table, Range(0,
    L))``, ``L`` read off ``Shape(LayerNorm(word_rows + token_type_rows))[1]``, the embeddings' output."""
    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    graph = ir.Graph([ids], [], nodes=[], opset_imports={"": 17}, name="legacy_roformer")
    rng = np.random.default_rng(0)
    words = add_initializer(graph, "word_embeddings.weight", rng.standard_normal((50, 8)).astype(np.float32))
    types = add_initializer(graph, "token_type_embeddings.weight", rng.standard_normal((2, 8)).astype(np.float32))
    table = add_initializer(graph, "embed_positions.weight", rng.standard_normal((256, 8)).astype(np.float32))
    nodes = [ir.node("Gather", [words, ids]), ir.node("Shape", [ids])]
    nodes.append(ir.node("ConstantOfShape", [nodes[-1].outputs[0]], {"value": ir.tensor(np.array([0], np.int64))}))
    nodes.append(ir.node("Gather", [types, nodes[-1].outputs[0]]))
    nodes.append(ir.node("Add", [nodes[0].outputs[0], nodes[-1].outputs[0]]))
    scale = add_initializer(graph, "scale", np.ones(8, np.float32))
    nodes.append(ir.node("LayerNormalization", [nodes[-1].outputs[0], scale], {"axis": -1}))
    hidden = nodes[-1].outputs[0]
    nodes.append(ir.node("Shape", [hidden]))
    nodes.append(ir.node("Gather", [nodes[-1].outputs[0], add_initializer(graph, "one", np.int64(1))]))
    zero, step = add_initializer(graph, "zero", np.int64(0)), add_initializer(graph, "step", np.int64(1))
    nodes.append(ir.node("Range", [zero, nodes[-1].outputs[0], step]))
    nodes.append(ir.node("Gather", [table, nodes[-1].outputs[0]]))
    nodes.append(ir.node("Add", [hidden, nodes[-1].outputs[0]]))
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype, out.shape = "y", ir.DataType.FLOAT, ir.Shape(["batch", "sequence", 8])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=8), path)


def test_a_legacy_roformers_sinusoidal_table_is_read_to_its_last_row(tmp_path):
    path = tmp_path / "legacy_roformer.onnx"
    _length_off_normalized_rows(path)
    # The dynamo export of the same RoFormer reads the length off ``input_ids`` and gives 256 (checked in review s76
    # xfix4); the legacy one reads it past an ``Add`` and a ``LayerNormalization``, not followed until review s77 xtab.
    assert position_table_lengths(ir.load(path)) == {"sequence": 256}

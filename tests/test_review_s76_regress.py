"""Review s76 regress: what session 76's verification changes (12ca00c..479cc98) do to the real models together.

Every fixture, the example encoder, PP-OCR's classifier and MiniLM-L3 were optimized at both commits
(``docs/benchmarks.md``, "What session 76's verification costs"): no pass changed status and no note or warning
moved. The one set that did move is MiniLM's table end, from 2 tokens to 512: its 2-row ``token_type_embeddings``
(behind a buffer of zeros sliced to the length) was taken for the position table, so the last row of
``position_embeddings`` (row 511) was never read. This keeps that on the real export.

Found reading the per-pass walks those runs time: ``counted_position_rows`` looked for rotary caches read at positions
the graph counts (no input's ids) in the fused ``RotaryEmbedding`` and ``GroupQueryAttention`` alone, so ONNX's own
``RotaryEmbedding`` (opset 23) at ``position_ids`` counted from the mask's length got no decode step at its changed
rows: a rewrite that read its caches' last row one late (position 1,023, past the generated 512) verified. It is read
now, as the fused op is.
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
from tests.real_models import MINILM_MISSING, minilm_path

MINILM = minilm_path()


@pytest.mark.skipif(MINILM is None, reason=MINILM_MISSING)
def test_minilm_table_end_is_its_position_tables_last_row_not_the_token_types():
    lengths = position_table_lengths(ir.load(MINILM))
    assert lengths == {"sequence_length": 512}  # {'sequence_length': 2} before late76c: the token-type table's end


# --- ONNX's own RotaryEmbedding read at positions the mask counts --------------------------------------------------

_POSITIONS = 1024


def _onnx_rotary_decoder_counting_positions(path) -> None:
    """A one-layer decoder's key: ``input_ids`` embedded, rotated by ONNX's own ``RotaryEmbedding`` (opset 23) at
    ``position_ids = Range(Shape(attention_mask)[1] - Shape(input_ids)[1], Shape(attention_mask)[1])`` counted in the
    graph (a decoder exported without ``position_ids``) over caches of 1,024 positions, and joined to the past: the
    fused op's twin in ``test_review_s76_late76d``."""
    half = 4
    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    mask = ir.Value(
        name="attention_mask", shape=ir.Shape(["batch", "total_sequence"]), type=ir.TensorType(ir.DataType.INT64)
    )
    past = ir.Value(
        name="past_key_values.0.key",
        shape=ir.Shape(["batch", 1, "past_sequence", 2 * half]),
        type=ir.TensorType(ir.DataType.FLOAT),
    )
    graph = ir.Graph([ids, mask, past], [], nodes=[], opset_imports={"": 23}, name="onnx_counting_decoder")
    rng = np.random.default_rng(0)
    words = add_initializer(graph, "embed_tokens.weight", rng.standard_normal((64, 2 * half)).astype(np.float32))
    angles = np.arange(_POSITIONS)[:, None] * 10000.0 ** (-np.arange(half) / half)[None, :]
    cos = add_initializer(graph, "rotary_cos_cache", np.cos(angles).astype(np.float32))
    sin = add_initializer(graph, "rotary_sin_cache", np.sin(angles).astype(np.float32))
    zero, step = add_initializer(graph, "zero", np.array([0], np.int64)), add_initializer(graph, "step", np.int64(1))
    nodes = [ir.node("Gather", [words, ids])]
    total = ir.node("Squeeze", [ir.node("Shape", [mask], {"start": 1, "end": 2}).outputs[0]])
    new = ir.node("Squeeze", [ir.node("Shape", [ids], {"start": 1, "end": 2}).outputs[0]])
    nodes += [total.inputs[0].producer(), total, new.inputs[0].producer(), new]
    nodes.append(ir.node("Sub", [total.outputs[0], new.outputs[0]]))
    nodes.append(ir.node("Range", [nodes[-1].outputs[0], total.outputs[0], step]))
    nodes.append(ir.node("Unsqueeze", [nodes[-1].outputs[0], zero]))
    nodes.append(ir.node("Shape", [ids]))
    nodes.append(ir.node("Expand", [nodes[-2].outputs[0], nodes[-1].outputs[0]]))
    rotated = ir.node("RotaryEmbedding", [nodes[0].outputs[0], cos, sin, nodes[-1].outputs[0]], {"num_heads": 1})
    nodes.append(rotated)
    head = add_initializer(graph, "head", np.array([1], np.int64))
    nodes.append(ir.node("Unsqueeze", [rotated.outputs[0], head]))
    nodes.append(ir.node("Concat", [past, nodes[-1].outputs[0]], {"axis": 2}))
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype = "present.0.key", ir.DataType.FLOAT
    out.shape = ir.Shape(["batch", 1, "total_sequence", 2 * half])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=10), path)


class _LastCountedOnnxRotaryRow(ir.passes.InPlacePass):
    """ONNX's ``RotaryEmbedding``'s cos/sin caches' last row (position 1,023) read one row late."""

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        node = next(node for node in model.graph if node.op_type == "RotaryEmbedding")
        for index in (1, 2):
            value = node.inputs[index]
            table = constant_array(value).copy()
            table[-1] = table[-2]
            value.const_value = ir.tensor(table, name=value.name)
        return ir.passes.PassResult(model, True)


def test_an_onnx_rotary_cache_read_at_positions_the_mask_counts_is_read_to_its_last_row(tmp_path):
    path = tmp_path / "onnx_counting_decoder.onnx"
    _onnx_rotary_decoder_counting_positions(path)
    mutant = _LastCountedOnnxRotaryRow
    spec = PassSpec("mutant", mutant, mutant.__doc__.splitlines()[0])
    with mock.patch.object(api, "resolve", lambda names, options: [*registry.resolve(names, options), spec]):
        _, report = api.optimize_with_report(path, [], output=tmp_path / "mutated.onnx")
    record = report.passes[-1]
    assert record.name == "mutant"
    # The fused op's caches were looked for alone (``counted_position_rows``): applied, no set read position 1,023.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "the new token at position 1023, a row of 'rotary_cos_cache' the pass changed" in record.detail

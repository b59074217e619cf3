"""Review s76 (tables): verification reaches the last row of a position table that positions counting the tokens
index (``optimizer/compared_inputs.py``'s ``position_table_lengths`` and ``_counted_extents``, ``optimizer/api.py``'s
``_add_table_ends``), and ``compared_lengths`` and ``position_table_lengths`` share one walk (``_length_uses``).

RoBERTa and XLM-R compute their positions from the ids, ``cumsum(input_ids != padding_idx) * mask + padding_idx``
(514 rows, so 512 tokens at most), which the walk from ``Shape`` did not reach: no set read the table's last row, and a
rewrite wrong only there verified. Drawn at the table's end, an id at the padding id also counted the last token one
short of it. The graphs here are the legacy and dynamo exporters' spellings of a tiny RoBERTa's embeddings (exported
from a transformers ``RobertaConfig`` with torch 2.13 and read off), and OPT's ``cumsum(attention_mask) * mask - 1 +
2``.
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
from tests.test_review_s75_xfix4 import _LastRowWrong

_HIDDEN = 4
_ROWS = 200  # padding id 1: 198 tokens at most, past the 128 first drawn
_VOCABULARY = 6  # drawn over 6 ids, 198 tokens hold the padding id 1 (all but surely)


def _const(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    return add_initializer(graph, name, np.asarray(array))


def _encoder(path, spelling: str) -> None:
    """``input_ids``, ``attention_mask`` ``[batch, sequence]`` -> word + position embeddings -> LayerNorm, positions
    counted as ``spelling`` writes them: RoBERTa's by the legacy or the dynamo exporter, OPT's from the mask, or a
    near miss (the padding tokens counted: no count of every token); or legacy GPT-2's ``Range`` of the length of
    ``input_ids.view(-1, L)`` (``view``)."""
    rng = np.random.default_rng(0)
    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    mask = ir.Value(name="attention_mask", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    graph = ir.Graph([ids, mask], [], nodes=[], opset_imports={"": 17}, name="encoder")
    words = _const(graph, "word_embeddings.weight", rng.standard_normal((_VOCABULARY, _HIDDEN), np.float32))
    table = _const(graph, "position_embeddings.weight", rng.standard_normal((_ROWS, _HIDDEN), np.float32))
    one, axis = _const(graph, "one", np.array(1, np.int64)), _const(graph, "axis", np.array(1, np.int32))
    word = ir.node("Gather", [words, ids])
    nodes = [word]
    if spelling == "view":  # legacy GPT-2: Range(0, Shape(wte(input_ids.view(-1, L)))[1]), no count
        nodes.append(ir.node("Shape", [ids]))
        nodes.append(ir.node("Gather", [nodes[-1].outputs[0], one], {"axis": 0}))
        nodes.append(ir.node("Unsqueeze", [nodes[-1].outputs[0], _const(graph, "axes", np.array([0], np.int64))]))
        target = [_const(graph, "rest", np.array([-1], np.int64)), nodes[-1].outputs[0]]
        nodes.append(ir.node("Concat", target, {"axis": 0}))
        nodes.append(ir.node("Reshape", [ids, nodes[-1].outputs[0]]))
        word.replace_input_with(1, nodes[-1].outputs[0])
        nodes.append(ir.node("Shape", [word.outputs[0]]))
        nodes.append(ir.node("Gather", [nodes[-1].outputs[0], one], {"axis": 0}))
        nodes.append(ir.node("Range", [_const(graph, "zero", np.array(0, np.int64)), nodes[-1].outputs[0], one]))
    elif spelling == "opt":  # cumsum(mask) * mask - 1, then + 2 (OPT's offset)
        nodes.append(ir.node("CumSum", [mask, one]))
        nodes.append(ir.node("Mul", [nodes[-1].outputs[0], mask]))
        nodes.append(ir.node("Sub", [nodes[-1].outputs[0], one]))
        nodes.append(ir.node("Add", [nodes[-1].outputs[0], _const(graph, "offset", np.array(2, np.int64))]))
    else:
        nodes.append(ir.node("Equal", [ids, one]))
        if spelling != "padding counted":
            nodes.append(ir.node("Not", [nodes[-1].outputs[0]]))
        nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], {"to": ir.DataType.INT32}))
        counted = nodes[-1].outputs[0]
        if spelling == "dynamo":  # cumsum in int64, cast like the int32 mask, + 0, times the mask
            nodes.append(ir.node("Cast", [counted], {"to": ir.DataType.INT64}))
            nodes.append(ir.node("CumSum", [nodes[-1].outputs[0], one], {"exclusive": 0, "reverse": 0}))
            nodes.append(ir.node("CastLike", [nodes[-1].outputs[0], counted]))
            zero = ir.node("Cast", [_const(graph, "zero", np.array(0, np.int64))], {"to": ir.DataType.INT32})
            nodes.extend([zero, ir.node("Add", [nodes[-1].outputs[0], zero.outputs[0]])])
        else:
            nodes.append(ir.node("CumSum", [counted, axis]))
        nodes.append(ir.node("Mul", [nodes[-1].outputs[0], counted]))
        nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], {"to": ir.DataType.INT64}))
        nodes.append(ir.node("Add", [nodes[-1].outputs[0], one]))
    nodes.append(ir.node("Gather", [table, nodes[-1].outputs[0]]))
    nodes.append(ir.node("Add", [word.outputs[0], nodes[-1].outputs[0]]))
    scale = _const(graph, "norm.weight", rng.uniform(0.5, 1.5, _HIDDEN).astype(np.float32))
    bias = _const(graph, "norm.bias", rng.standard_normal(_HIDDEN).astype(np.float32))
    nodes.append(ir.node("LayerNormalization", [nodes[-1].outputs[0], scale, bias], {"axis": -1, "epsilon": 1e-5}))
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype, out.shape = "last_hidden_state", ir.DataType.FLOAT, ir.Shape(["batch", "sequence", _HIDDEN])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=8), path)


class _TableCopied(ir.passes.InPlacePass):
    """The position table replaced by a copy of itself: a correct rewrite."""

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        value = model.graph.initializers["position_embeddings.weight"]
        value.const_value = ir.tensor(constant_array(value).copy(), name=value.name)
        return ir.passes.PassResult(model, True)


def _report(path, tmp_path, mutant):
    specs = [PassSpec("table-rewrite", mutant, "table rewrite")]
    with mock.patch.object(api, "resolve", lambda names, opts: [*registry.resolve(names, opts), *specs]):
        _, report = api.optimize_with_report(path, [], output=tmp_path / "out.onnx")
    return report


@pytest.mark.parametrize("spelling", ["legacy", "dynamo", "opt", "view"])
def test_counted_positions_reach_the_tables_last_row(tmp_path, spelling):
    path = tmp_path / "encoder.onnx"
    _encoder(path, spelling)
    # The last row, 199: 198 tokens + RoBERTa's padding id 1, or OPT's - 1 + 2; Range(0, 200)'s last at 200.
    longest = _ROWS if spelling == "view" else _ROWS - 2
    assert position_table_lengths(ir.load(path)) == {"sequence": longest}
    record = _report(path, tmp_path, _LastRowWrong).passes[-1]
    assert record.name == "table-rewrite"
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"
    assert f"'sequence' at {longest}, the last row of a table the length indexes" in record.detail, record.detail


def test_a_correct_rewrite_of_a_counted_table_is_kept(tmp_path):
    path = tmp_path / "encoder.onnx"
    _encoder(path, "legacy")
    report = _report(path, tmp_path, _TableCopied)
    assert report.passes[-1].status == STATUS_APPLIED, report.passes[-1].detail
    assert any("'sequence' at 198, the last row of a table" in label for label in report.input_sets), report.input_sets


def test_a_count_that_is_no_count_of_every_token_is_not_followed(tmp_path):
    # ``cumsum(input_ids == padding_idx)`` counts the padding tokens: no length reads the table's end.
    path = tmp_path / "encoder.onnx"
    _encoder(path, "padding counted")
    assert position_table_lengths(ir.load(path)) == {}


def test_legacy_gpt2s_positions_are_read():
    # ``Range(0, Shape(wte(Reshape(input_ids, Concat([-1], Unsqueeze(Shape(input_ids)[1])))))[1])``: not followed
    # through the ``Concat`` and the ``Reshape`` until review s76, where the dynamo export's was.
    from tests.helpers import FIXTURES

    assert position_table_lengths(ir.load(FIXTURES / "gpt2_legacy.onnx")) == {"sequence": 128}

"""Review s75 late75g: the input set verification adds to read the embedding rows an exact pass changed
(``Verifier.reach_rewritten_rows``, ``optimizer.verify._rewritten_rows``, from the mutation hunt of review s75).

The hole: the rows were looked for in the first table each token-id input indexes alone, so a pass that swapped the
[CLS] and [SEP] rows (101, 102) of a second table the same ids index (a per-token bias, an output embedding looked up
by the ids) was verified, as the hunt's swap of the word table's rows was before it; and a table changed in more rows
than one input set holds ids (300 rows of 30,522 shifted by one, past the 128 ids of a set) was left to the draws,
which missed them, and verified; rows past what the ids' dtype holds (int16 ids, a 40,000-row table) were written into
the ids, and the OverflowError failed a pass no input can tell apart.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx_ir as ir
import pytest

import optimizer.api as api
from optimizer import registry
from optimizer.protocol import PassSpec
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from passes._utils import add_initializer, constant_array
from tests import test_review_s75_mutants as mutants

_VOCAB, _HIDDEN = 30522, 4


def _two_tables(path) -> None:
    """``input_ids [batch, sequence]`` -> word embeddings + a second table the same ids index -> LayerNormalization."""
    rng = np.random.default_rng(0)
    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    graph = ir.Graph([ids], [], nodes=[], opset_imports={"": 17}, name="two_tables")
    words = add_initializer(graph, "word_embeddings.weight", rng.standard_normal((_VOCAB, _HIDDEN)).astype(np.float32))
    bias = add_initializer(graph, "token_bias.weight", rng.standard_normal((_VOCAB, _HIDDEN)).astype(np.float32))
    scale = add_initializer(graph, "norm.weight", rng.uniform(0.5, 1.5, _HIDDEN).astype(np.float32))
    shift = add_initializer(graph, "norm.bias", rng.standard_normal(_HIDDEN).astype(np.float32))
    nodes = [ir.node("Gather", [words, ids]), ir.node("Gather", [bias, ids])]
    nodes.append(ir.node("Add", [nodes[0].outputs[0], nodes[1].outputs[0]]))
    nodes.append(ir.node("LayerNormalization", [nodes[-1].outputs[0], scale, shift], {"axis": -1, "epsilon": 1e-12}))
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype, out.shape = "last_hidden_state", ir.DataType.FLOAT, ir.Shape(["batch", "sequence", _HIDDEN])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=8), path)


@pytest.fixture(scope="module")
def two_tables(tmp_path_factory):
    path = tmp_path_factory.mktemp("late75g") / "two_tables.onnx"
    _two_tables(path)
    return path


class _SecondTableRowsSwapped(ir.passes.InPlacePass):
    """Rows 101 and 102 ([CLS] and [SEP]) of the second table the ids index exchanged."""

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        value = model.graph.initializers["token_bias.weight"]
        array = constant_array(value).copy()
        array[[101, 102]] = array[[102, 101]]
        value.const_value = ir.tensor(array, name=value.name)
        return ir.passes.PassResult(model, True)


class _ThreeHundredRowsShifted(ir.passes.InPlacePass):
    """Word rows 20,000 to 20,299 read one row late: more rows than a generated set holds ids, none of them read."""

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        value = model.graph.initializers["word_embeddings.weight"]
        array = constant_array(value).copy()
        array[20000:20300] = array[20001:20301]
        value.const_value = ir.tensor(array, name=value.name)
        return ir.passes.PassResult(model, True)


def _record(path, tmp_path, mutant, table_ends=True):
    spec = PassSpec("mutant", mutant, mutant.__doc__.splitlines()[0])
    with (
        mock.patch.object(api, "resolve", lambda names, options: [*registry.resolve(names, options), spec]),
        mock.patch.object(api, "_add_table_ends", api._add_table_ends if table_ends else lambda *args: None),
    ):
        _, report = api.optimize_with_report(path, [], output=tmp_path / "out.onnx")
    record = report.passes[-1]
    assert record.name == "mutant"
    return record


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("late75g") / "encoder.onnx"
    mutants._encoder(path)  # a 256-row position table: generated sets of 128 and 2 x 65 ids
    return path


def test_rows_of_a_second_table_the_ids_index_swapped_are_rolled_back(two_tables, tmp_path):
    import onnxruntime as ort

    # Not a tautology: the swap moves the outputs where the ids read those rows.
    def run(model: ir.Model) -> np.ndarray:
        session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"input_ids": np.array([[101, 7, 102]], np.int64)})[0]

    swapped = ir.load(two_tables)
    _SecondTableRowsSwapped(None).call(swapped)
    assert np.abs(run(swapped) - run(ir.load(two_tables))).max() > 0.1

    record = _record(two_tables, tmp_path, _SecondTableRowsSwapped)
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"
    assert "input_ids reading rows 101, 102 of 'token_bias.weight', which the pass changed" in record.detail


def test_more_rows_changed_than_a_set_holds_none_read_are_rolled_back(encoder, tmp_path):
    # Without the set at the position table's 256 rows (review s75 xfix4), whose 256 drawn ids would likely read one of
    # the 300 rows by chance: the set that reads them on purpose is what is tested.
    record = _record(encoder, tmp_path, _ThreeHundredRowsShifted, table_ends=False)
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"
    assert "input_ids reading rows 20000, " in record.detail
    assert "max abs error" in record.detail


def _int16_ids(path) -> None:
    """``input_ids`` of int16 -> Cast to int64 -> a 40,000-row table, whose rows past 32,767 no id can read."""
    rng = np.random.default_rng(0)
    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT16))
    graph = ir.Graph([ids], [], nodes=[], opset_imports={"": 17}, name="int16_ids")
    words = add_initializer(graph, "word_embeddings.weight", rng.standard_normal((40000, _HIDDEN)).astype(np.float32))
    nodes = [ir.node("Cast", [ids], {"to": ir.DataType.INT64})]
    nodes.append(ir.node("Gather", [words, nodes[0].outputs[0]]))
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype, out.shape = "embeddings", ir.DataType.FLOAT, ir.Shape(["batch", "sequence", _HIDDEN])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=8), path)


class _UnreadableRowsSwapped(ir.passes.InPlacePass):
    """Rows 35,000 and 35,001 exchanged: past what int16 ids can read, so no input the model accepts sees it."""

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        value = model.graph.initializers["word_embeddings.weight"]
        array = constant_array(value).copy()
        array[[35000, 35001]] = array[[35001, 35000]]
        value.const_value = ir.tensor(array, name=value.name)
        return ir.passes.PassResult(model, True)


def test_rows_past_what_the_ids_dtype_holds_do_not_fail_the_pass(tmp_path):
    # The rows were written into the int16 ids: OverflowError, and a pass no input can tell apart failed.
    _int16_ids(tmp_path / "int16.onnx")
    record = _record(tmp_path / "int16.onnx", tmp_path, _UnreadableRowsSwapped)
    assert record.status == STATUS_APPLIED, f"{record.status}: {record.detail}"

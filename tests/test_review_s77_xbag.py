"""Review s77 xbag: three of session 76's strict xfails fixed, in the input sets a pass's result calls for.

- Rewritten embedding rows (``Verifier.reach_rewritten_rows``): more changed rows than any set has samples shared the
  first set's one sample, and rows each in a sample of one set were pooled together by a model that pools across its
  batch too, so a rotation of three rows in a max-pooled bag, or a swap of two in a bag max-pooled over the batch and
  the tokens, verified, as did a swap in a bag whose ids have no batch axis. Now each changed row no set reads also
  fills every kept token of a copy of the first set of its own (``_reach_rows_alone``, four rows at most, the others
  counted in the note).
- A sliding window (``api._lengths_a_rewrite_compares``, ``verify.rewritten_windows``): a decoder's generated sets end
  at 512 positions, so a ``GroupQueryAttention`` given a window of 1,024 the model does not have, or one whose window
  a rewrite took away, verified. Now a decode step one key past each window the rewrite changed is drawn.
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
from optimizer.verify import Verifier
from passes._utils import add_initializer, constant_array
from tests.helpers import FIXTURES
from tests.test_review_s76_late76a import _bag_of_embeddings
from tests.test_review_s76_late76e import _max_bag
from tests.test_review_s76_xfix2 import abs_max_bag

_VOCAB, _HIDDEN = 30522, 4


def _verdict(path, mutant, tmp_path):
    spec = PassSpec("mutant", mutant, (mutant.__doc__ or "mutant").splitlines()[0])
    with mock.patch.object(api, "resolve", lambda names, options: [*registry.resolve(names, options), spec]):
        _, report = api.optimize_with_report(path, [], output=tmp_path / "out.onnx")
    return report.passes[-1]


class _RowsRotated(ir.passes.InPlacePass):
    """Rows ``rows`` of the word table rotated by one."""

    rows = (101, 102, 103, 104)

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        value = model.graph.initializers["word_embeddings.weight"]
        array = constant_array(value).copy()
        rows = list(self.rows)
        array[rows] = array[rows[1:] + rows[:1]]
        value.const_value = ir.tensor(array, name=value.name)
        return ir.passes.PassResult(model, True)


class _SixRowsRotated(_RowsRotated):
    """Rows 101 to 106 of the word table rotated by one."""

    rows = tuple(range(101, 107))


class _TwoRowsSwapped(_RowsRotated):
    """Rows 101 and 102 of the word table exchanged."""

    rows = (101, 102)


# --- (1) rewritten rows, each alone in a set of its own --------------------------------------------------------------


def test_four_rows_rotated_in_a_min_pooled_bag_are_rolled_back(tmp_path):
    """A metamorphic variant of s76 xfix2's three rows in a max-pooled bag: four, under a min."""
    path = tmp_path / "min.onnx"
    _bag_of_embeddings(path, "ReduceMin")
    record = _verdict(path, _RowsRotated, tmp_path)
    # Before the fix: applied, verified; four rows, two samples at most, all four read in the first set's one sample.
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"
    assert "input_ids reading row 10" in record.detail and "alone, which the pass changed" in record.detail


def test_rows_swapped_in_a_bag_max_pooled_over_its_tokens_then_its_batch_are_rolled_back(tmp_path):
    """A metamorphic variant of s76 late76e's bag max-pooled across the batch: two ``ReduceMax`` in turn."""
    path = tmp_path / "two_steps.onnx"
    _max_bag(path, ("batch", "sequence"), (1,))
    model = ir.load(path)
    pooling = next(node for node in model.graph if node.op_type == "ReduceMax")
    batch = add_initializer(model.graph, "batch_axis", np.array([0], np.int64))
    across = ir.node("ReduceMax", [pooling.outputs[0], batch], {"keepdims": 0})
    model.graph.insert_after(pooling, across)
    out = across.outputs[0]
    out.name, out.dtype, out.shape = "batch_pooled", ir.DataType.FLOAT, ir.Shape([_HIDDEN])
    model.graph.outputs[0] = out
    ir.save(model, path)
    record = _verdict(path, _TwoRowsSwapped, tmp_path)
    # Before the fix: applied, verified; rows 101 and 102 each filled a sample of the second binding, and the max
    # over the batch was the same whichever row held which values.
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"
    assert any("reading each of rows 101, 102 of 'word_embeddings.weight' alone" in n for n in record.notes)


def test_rows_swapped_in_a_max_pooled_bag_of_ids_without_a_batch_axis_are_rolled_back(tmp_path):
    path = tmp_path / "one_axis.onnx"
    _max_bag(path, ("sequence",), (0,))
    record = _verdict(path, _TwoRowsSwapped, tmp_path)
    # Before the fix: applied, verified; ``input_ids [sequence]`` has no samples, and both rows were read in its one.
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"


def test_rows_read_alone_are_bounded_and_the_others_counted(tmp_path):
    path = tmp_path / "max.onnx"
    _bag_of_embeddings(path, "ReduceMax")
    added = []
    reach = Verifier._add_reaching_set

    def spy(self, inputs, label):
        added.append(label)
        return reach(self, inputs, label)

    with mock.patch.object(Verifier, "_add_reaching_set", spy):
        record = _verdict(path, _SixRowsRotated, tmp_path)
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"
    alone = [label for label in added if label.endswith("alone, which the pass changed")]
    assert len(alone) == 4, added  # rows 101, 103 (or 104), 105 and 106: spread over the six
    assert any("2 other changed rows were read alone in none (4 sets at most)" in note for note in record.notes)


def test_a_correct_rewrite_of_rows_read_alone_is_kept(tmp_path):
    """Rows 101 to 104 negated behind an ``Abs`` (exact): the sets each reads one of them alone agree."""

    class _RowsNegated(_RowsRotated):
        def call(self, model):
            value = model.graph.initializers["word_embeddings.weight"]
            array = constant_array(value).copy()
            array[list(self.rows)] *= -1
            value.const_value = ir.tensor(array, name=value.name)
            return ir.passes.PassResult(model, True)

    path = tmp_path / "abs.onnx"
    abs_max_bag(path)
    record = _verdict(path, _RowsNegated, tmp_path)
    assert record.status == STATUS_APPLIED, f"{record.status}: {record.detail}"
    assert any("reading each of rows 101, 102, 103, 104" in note for note in record.notes), record.notes


# --- (2) a sliding window past every generated length ---------------------------------------------------------------


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    """The Llama KV fixture with its attention fused into ``GroupQueryAttention``, and a copy whose every one has a
    sliding window of 1,024 (as ONNX Runtime GenAI's model builder writes a windowed model's)."""
    folder = tmp_path_factory.mktemp("xbag")
    fused = folder / "llama_kv_gqa.onnx"
    api.optimize(FIXTURES / "llama_kv_legacy.onnx", output=fused, verify=False)
    model = ir.load(fused)
    for node in model.graph:
        if node.op_type == "GroupQueryAttention":
            node.attributes["local_window_size"] = ir.AttrInt64("local_window_size", 1024)
    ir.save(model, folder / "llama_kv_gqa_window.onnx")
    return folder


class _Window(ir.passes.InPlacePass):
    """Every ``GroupQueryAttention`` given the sliding window ``window`` (-1: none)."""

    window = -1

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        for node in model.graph:
            if node.op_type == "GroupQueryAttention":
                node.attributes["local_window_size"] = ir.AttrInt64("local_window_size", self.window)
        return ir.passes.PassResult(model, True)


def test_a_sliding_window_a_rewrite_takes_away_is_rolled_back(windowed, tmp_path):
    """The reverse of s76 dmut's window given: a window of 1,024 the model has, taken away."""
    record = _verdict(windowed / "llama_kv_gqa_window.onnx", _Window, tmp_path)
    # Before the fix: applied, verified; no generated set held more than 512 positions.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'total_sequence' at 1025, one key past the sliding window of 1024 the rewrite changed" in record.detail


def test_a_sliding_window_a_rewrite_keeps_adds_no_set(windowed, tmp_path):
    class _SameWindow(_Window):
        """Every ``GroupQueryAttention``'s window of 1,024 written again."""

        window = 1024

    record = _verdict(windowed / "llama_kv_gqa_window.onnx", _SameWindow, tmp_path)
    assert record.status == STATUS_APPLIED, (record.status, record.detail)
    assert not any("sliding window" in note for note in record.notes), record.notes

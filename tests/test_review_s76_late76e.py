"""Review s76 late76e: a late hostile review of review s76 xfix2's input sets, the rewritten embedding rows each read
in a sample of its own and the lengths between two thresholds a rewrite compares.

- The samples of ids were the rows along their first axis: sequence-major ids (``input_ids [sequence, batch]``) read
  their 128 tokens as samples, both rewritten rows went to one real sample, and a swap of them in a max-pooled bag of
  embeddings verified (fixed: samples are along the ids' batch axis, ``Verifier._sample_axis``).
- A sample of one row, every token alike, replaced the first set that read the rows beside drawn tokens: a model that
  centres its tokens' rows on their mean reads zero there whichever row it is, and a swap verified (fixed: the first
  set reads them as before too). A model that pools across its batch too hid a swap until review s77 xbag.
- The lengths between two of the original's own thresholds (``between`` on ``before``, never drawn) were counted as
  held for a rewrite's new comparisons: a branch at 129 that a rewrite wrote inside the original's
  ``129 <= L < 200`` verified (fixed in ``api._lengths_a_rewrite_compares``); the ways were looked for at the lengths
  each comparison tells apart alone, and ``L >= 201`` and ``L % 8 == 0`` together (first at 208) were never drawn
  (fixed: a remainder's ways up to a divisor past each, ``_lengths_between``). A rewrite wrong only between the
  original's own thresholds, and a branch on two lengths at once, verified (strict xfails until review s77 xlen:
  the original's ways together get sets, and the ways of several dims together, ``lengths_together``).
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import optimizer.api as api
from optimizer import registry
from optimizer.protocol import PassSpec
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from passes._utils import add_initializer
from tests.test_review_s76_late76a import _SpecialRowsSwapped
from tests.test_review_s76_xfix2 import _length_between

_VOCAB, _HIDDEN = 30522, 4


def _verdict(path, mutant, tmp_path):
    spec = PassSpec("mutant", mutant, (mutant.__doc__ or "mutant").splitlines()[0])
    with mock.patch.object(api, "resolve", lambda names, options: [*registry.resolve(names, options), spec]):
        _, report = api.optimize_with_report(path, [], output=tmp_path / "out.onnx")
    return report.passes[-1]


# --- (1) rewritten rows, each in a sample of its own ----------------------------------------------------------------


def _max_bag(path, dims: tuple[str, ...], axes: tuple[int, ...]) -> None:
    """``input_ids`` of ``dims`` -> the word embeddings max-pooled over ``axes``."""
    rng = np.random.default_rng(0)
    ids = ir.Value(name="input_ids", shape=ir.Shape(list(dims)), type=ir.TensorType(ir.DataType.INT64))
    graph = ir.Graph([ids], [], nodes=[], opset_imports={"": 18}, name="max_bag")
    words = add_initializer(graph, "word_embeddings.weight", rng.standard_normal((_VOCAB, _HIDDEN)).astype(np.float32))
    nodes = [ir.node("Gather", [words, ids])]
    pooled = add_initializer(graph, "pooled", np.array(axes, np.int64))
    nodes.append(ir.node("ReduceMax", [nodes[0].outputs[0], pooled], {"keepdims": 0}))
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype = "sentence_embedding", ir.DataType.FLOAT
    out.shape = ir.Shape([dim for axis, dim in enumerate(dims) if axis not in axes] + [_HIDDEN])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=8), path)


def test_rows_swapped_in_a_sequence_major_max_pooled_bag_are_rolled_back(tmp_path):
    path = tmp_path / "sequence_major.onnx"
    _max_bag(path, ("sequence", "batch"), (0,))
    record = _verdict(path, _SpecialRowsSwapped, tmp_path)
    # Before the fix: applied, verified; the first set's 128 tokens along axis 0 were taken for samples, and rows 101
    # and 102 were written at tokens 0 and 1 of its one real sample (batch 1), whose max hides which row is which.
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"
    assert "second binding (sequence=257, batch=2), input_ids reading rows 101, 102" in record.detail


def test_rows_swapped_in_a_bag_max_pooled_across_the_batch_are_rolled_back(tmp_path):
    path = tmp_path / "across.onnx"
    _max_bag(path, ("batch", "sequence"), (0, 1))
    record = _verdict(path, _SpecialRowsSwapped, tmp_path)
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"


def test_rows_swapped_in_a_bag_centred_over_its_tokens_are_rolled_back(tmp_path):
    """A bag of embeddings centred over its tokens (each token's row less the sample's mean) then max-pooled: a sample
    of one row, every token alike, is zero whichever row it reads."""
    path = tmp_path / "centred.onnx"
    _max_bag(path, ("batch", "sequence"), (1,))
    model = ir.load(path)
    gather, pooling = (node for node in model.graph if node.op_type in ("Gather", "ReduceMax"))
    tokens = add_initializer(model.graph, "tokens", np.array([1], np.int64))
    mean = ir.node("ReduceMean", [gather.outputs[0], tokens], {"keepdims": 1})
    centred = ir.node("Sub", [gather.outputs[0], mean.outputs[0]])
    model.graph.insert_after(gather, [mean, centred])
    pooling.replace_input_with(0, centred.outputs[0])
    ir.save(model, path)
    record = _verdict(path, _SpecialRowsSwapped, tmp_path)
    # Before the fix: applied, verified; rows 101 and 102 each filled a sample of the second binding alone, and the
    # first set, where late76a read them 1 and 2 times beside drawn tokens (a swap shown), was no longer checked.
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"
    assert "generated (batch=1, sequence=128), input_ids reading rows 101, 102" in record.detail
    assert any("second binding (batch=2, sequence=257), input_ids reading rows 101, 102" in n for n in record.notes)


# --- (2) a length between two of the original's thresholds ----------------------------------------------------------


class _ScaledWhere(ir.passes.InPlacePass):
    """The output's product scaled by ``1 + scale`` where the length condition ``condition`` gives holds."""

    scale = 0.1
    factor = 1  # the product's input the scale multiplies

    def __init__(self, context) -> None:
        super().__init__()

    def condition(self, graph, constant) -> list[ir.Node]:
        """The nodes computing the condition, the last one's output a boolean."""
        raise NotImplementedError

    def call(self, model):
        graph = model.graph
        product = graph.outputs[0].producer()

        def constant(name, array):
            return add_initializer(graph, f"mutant.{name}", np.asarray(array))

        new = self.condition(graph, constant)
        new.append(ir.node("Cast", [new[-1].outputs[0]], {"to": ir.DataType.FLOAT}))
        new.append(ir.node("Mul", [new[-1].outputs[0], constant("tenth", np.float32(self.scale))]))
        new.append(ir.node("Add", [new[-1].outputs[0], constant("one", np.float32(1.0))]))
        new.append(ir.node("Mul", [product.inputs[self.factor], new[-1].outputs[0]]))
        graph.insert_before(product, new)
        product.replace_input_with(self.factor, new[-1].outputs[0])
        return ir.passes.PassResult(model, True)


class _ScaledAt129(_ScaledWhere):
    """The output scaled by 1.1 where ``L == 129``, inside the original's own ``129 <= L < 200``."""

    def condition(self, graph, constant):
        new = [ir.node("Shape", [graph.inputs[0]], {"start": 1, "end": 2})]
        new.append(ir.node("Equal", [new[-1].outputs[0], constant("length", [129])]))
        return new


class _ExactAt129(_ScaledAt129):
    """The output times 1.0 where ``L == 129`` (exact)."""

    scale = 0.0


@pytest.fixture(scope="module")
def between(tmp_path_factory):
    path = tmp_path_factory.mktemp("late76e") / "between.onnx"
    ir.save(_length_between(129, 200), path)
    return path


def test_a_branch_a_rewrite_wrote_inside_the_originals_own_thresholds_is_rolled_back(between, tmp_path):
    record = _verdict(between, _ScaledAt129, tmp_path)
    # Before the fix: applied, verified; 129 was the original's way between its thresholds (``between`` on the model
    # the pass was given), counted as held though no set was ever drawn there, and 199 alone was drawn. Since review
    # s77 (xlen) the original's own ways together get a set for the original: 129 is the graph's length there.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'L' at 129, a length the graph compares" in record.detail


def test_an_exact_branch_inside_the_originals_own_thresholds_is_kept_and_checked_there(between, tmp_path):
    spec = PassSpec("mutant", _ExactAt129, "exact")
    with mock.patch.object(api, "resolve", lambda names, options: [*registry.resolve(names, options), spec]):
        _, report = api.optimize_with_report(between, [], output=tmp_path / "out.onnx")
    record = report.passes[-1]
    assert record.status == STATUS_APPLIED, (record.status, record.detail)
    # Checked at 129 on the original's set there (since review s77 xlen; before, on one the rewrite's branch drew).
    assert any("'L' at 129, a length the graph compares (B=1, L=129)" in label for label in report.input_sets)


class _WindowScaledMore(ir.passes.InPlacePass):
    """The original's own ``129 <= L < 200`` scale raised from 1.1 to 1.2 (wrong only inside that window)."""

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        tenth = model.graph.initializers["tenth"]
        tenth.const_value = ir.tensor(np.float32(0.2), name=tenth.name)
        return ir.passes.PassResult(model, True)


def test_a_rewrite_wrong_only_between_the_originals_own_thresholds_is_rolled_back(between, tmp_path):
    record = _verdict(between, _WindowScaledMore, tmp_path)
    # Before review s77 (xlen): applied, verified; the original's own thresholds were drawn one at a time (held at 128
    # and 257), its ways together never, and the rewrite compares nothing new: 129 to 199 were never run.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'L' at 129, a length the graph compares" in record.detail


class _ScaledAtFiveTokensInPairs(_ScaledWhere):
    """The output scaled by 1.1 where ``L == 5`` and ``B == 2`` (two lengths compared at once)."""

    def condition(self, graph, constant):
        lengths = [ir.node("Shape", [graph.inputs[0]], {"start": axis, "end": axis + 1}) for axis in (1, 0)]
        new = [*lengths, ir.node("Equal", [lengths[0].outputs[0], constant("length", [5])])]
        new.append(ir.node("Equal", [lengths[1].outputs[0], constant("batch", [2])]))
        new.append(ir.node("And", [new[-2].outputs[0], new[-1].outputs[0]]))
        return new


def test_a_branch_on_two_lengths_at_once_a_rewrite_wrote_is_rolled_back(between, tmp_path):
    record = _verdict(between, _ScaledAtFiveTokensInPairs, tmp_path)
    # Before review s77 (xlen): applied, verified; 'L' at 5 was drawn at a batch of 1, the first set's, and the second
    # binding's batch of 2 never met it.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'B' at 2 and 'L' at 5, lengths the rewrite compares together" in record.detail


class _ScaledPastThresholdAtMultiplesOfEight(_ScaledWhere):
    """The output scaled by 1.1 where ``L >= 201`` and ``L % 8 == 0`` (first together at 208)."""

    factor = 0

    def condition(self, graph, constant):
        new = [ir.node("Shape", [graph.inputs[0]], {"start": 1, "end": 2})]
        length = new[0].outputs[0]
        new.append(ir.node("GreaterOrEqual", [length, constant("low", [201])]))
        new.append(ir.node("Mod", [length, constant("divisor", [8])]))
        new.append(ir.node("Equal", [new[-1].outputs[0], constant("zero", [0])]))
        new.append(ir.node("And", [new[1].outputs[0], new[-1].outputs[0]]))
        return new


def test_a_branch_past_a_threshold_at_a_multiple_a_rewrite_wrote_is_rolled_back(tmp_path):
    path = tmp_path / "plain.onnx"
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "one"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "L"])],
        [one],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    record = _verdict(path, _ScaledPastThresholdAtMultiplesOfEight, tmp_path)
    # Before the fix: applied, verified; each side of 201 and of the remainder was held (128 and 257), and the ways
    # together were looked for at the lengths each comparison tells apart (200, 201, 8) alone, never at 208.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'L' at 208, a length the rewrite compares" in record.detail

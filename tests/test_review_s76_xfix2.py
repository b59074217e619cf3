"""Review s76 xfix2: two of session 76's strict xfails fixed, in the input sets a pass's result calls for.

- Rewritten embedding rows (``Verifier.reach_rewritten_rows``): the set that reads the rows a pass changed put them
  together in one sample (the first set's, batch 1), so a swap of two rows was invisible to a model that pools its
  tokens' rows symmetrically (a max- or min-pooled bag of embeddings) and verified. Now, where a set has a sample for
  each changed row, each row fills the kept tokens of a sample of its own. More changed rows than any set has samples
  still share the first set's; three rows rotated in a max-pooled bag verified there until review s77 xbag (each row
  no set reads is now also read alone in a set of its own).
- Lengths a rewrite newly compares (``api._lengths_a_rewrite_compares``, ``compared_inputs.compared_lengths``): each
  side of each threshold got a set, but a length between two thresholds whose sides the sets held one at a time
  (``129 <= L < 200`` beside 128 and 257) was never drawn. Now the ways the comparisons of one length go together get
  a length each too (``between``).
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import optimizer.api as api
import optimizer.compared_inputs as compared_inputs
from optimizer import registry
from optimizer.compared_inputs import compared_lengths
from optimizer.protocol import PassSpec
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from optimizer.verify import Verifier
from passes._utils import add_initializer, constant_array
from tests.test_review_s76_dmut import _rotary, _ScaledAtLengths
from tests.test_review_s76_late76a import _bag_of_embeddings, _SpecialRowsSwapped

_VOCAB, _HIDDEN = 30522, 4
_LABEL = "input_ids reading rows 101, 102 of 'word_embeddings.weight', which the pass changed"


def _verdict(path, mutant, tmp_path, **kwargs):
    spec = PassSpec("mutant", mutant, (mutant.__doc__ or "mutant").splitlines()[0])
    with mock.patch.object(api, "resolve", lambda names, options: [*registry.resolve(names, options), spec]):
        _, report = api.optimize_with_report(path, [], output=tmp_path / "out.onnx", **kwargs)
    return report.passes[-1]


# --- (1) rewritten rows, each in a sample of its own ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bags")
    for pooling in ("ReduceMin", "ReduceMax", "ReduceMean"):
        _bag_of_embeddings(folder / f"{pooling}.onnx", pooling)
    return folder


def test_rows_swapped_in_a_min_pooled_bag_are_rolled_back_each_row_in_a_sample_of_its_own(bags, tmp_path):
    added = []
    reach = Verifier._add_reaching_set

    def spy(self, inputs, label):
        added.append((inputs, label))
        return reach(self, inputs, label)

    with mock.patch.object(Verifier, "_add_reaching_set", spy):
        record = _verdict(bags / "ReduceMin.onnx", _SpecialRowsSwapped, tmp_path)
    # Before the fix: applied, verified; rows 101 and 102 were read in the first set's one sample (batch 1), and the
    # minimum over its tokens is the same whichever row holds which values.
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"
    assert _LABEL in record.detail
    (inputs, label), *_ = added
    ids = inputs["input_ids"]
    assert label.startswith("generated, second binding") and ids.shape[0] == 2
    assert (ids[0] == 101).all() and (ids[1] == 102).all()


def test_a_correct_rewrite_of_rows_read_each_in_a_sample_of_its_own_is_kept(tmp_path):
    class _RowsNegated(ir.passes.InPlacePass):
        """Rows 101 and 102 of the word table negated, which the ``Abs`` after the ``Gather`` takes away (exact)."""

        def __init__(self, context) -> None:
            super().__init__()

        def call(self, model):
            value = model.graph.initializers["word_embeddings.weight"]
            array = constant_array(value).copy()
            array[[101, 102]] *= -1
            value.const_value = ir.tensor(array, name=value.name)
            return ir.passes.PassResult(model, True)

    path = tmp_path / "bag.onnx"
    abs_max_bag(path)
    record = _verdict(path, _RowsNegated, tmp_path)
    assert record.status == STATUS_APPLIED, f"{record.status}: {record.detail}"
    assert any(_LABEL in note and "second binding" in note for note in record.notes), record.notes


class _ThreeRowsRotated(ir.passes.InPlacePass):
    """Rows 101, 102 and 103 of the word table rotated."""

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        value = model.graph.initializers["word_embeddings.weight"]
        array = constant_array(value).copy()
        array[[101, 102, 103]] = array[[102, 103, 101]]
        value.const_value = ir.tensor(array, name=value.name)
        return ir.passes.PassResult(model, True)


def test_more_changed_rows_than_samples_share_the_first_set_as_before(bags, tmp_path):
    record = _verdict(bags / "ReduceMean.onnx", _ThreeRowsRotated, tmp_path)
    # No set has three samples: read 1, 2 and 3 times in the first set, as before, and a mean tells the rotation.
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"
    assert "generated (batch=1, sequence=128), input_ids reading rows 101, 102, 103" in record.detail


def test_more_changed_rows_than_samples_in_a_max_pooled_bag_are_rolled_back(bags, tmp_path):
    record = _verdict(bags / "ReduceMax.onnx", _ThreeRowsRotated, tmp_path)
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"


def test_a_table_the_pass_left_alone_takes_no_sample(bags, tmp_path):
    class _TableRewrittenAlike(ir.passes.InPlacePass):
        """The word table rewritten to the same values."""

        def __init__(self, context) -> None:
            super().__init__()

        def call(self, model):
            value = model.graph.initializers["word_embeddings.weight"]
            value.const_value = ir.tensor(constant_array(value).copy(), name=value.name)
            return ir.passes.PassResult(model, True)

    with mock.patch.object(Verifier, "_kept_samples", side_effect=AssertionError("no rows changed")) as spy:
        record = _verdict(bags / "ReduceMax.onnx", _TableRewrittenAlike, tmp_path)
    assert record.status == STATUS_APPLIED, f"{record.status}: {record.detail}"
    assert not spy.called and not any("reading rows" in note for note in record.notes)


def _masked_max_bag(path) -> None:
    """``input_ids``, ``attention_mask`` -> the word embeddings times the mask, max-pooled over the tokens."""
    rng = np.random.default_rng(0)
    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    mask = ir.Value(name="attention_mask", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    graph = ir.Graph([ids, mask], [], nodes=[], opset_imports={"": 18}, name="masked_max_bag")
    words = add_initializer(graph, "word_embeddings.weight", rng.standard_normal((_VOCAB, _HIDDEN)).astype(np.float32))
    nodes = [ir.node("Gather", [words, ids]), ir.node("Cast", [mask], {"to": ir.DataType.FLOAT})]
    nodes.append(ir.node("Unsqueeze", [nodes[-1].outputs[0], add_initializer(graph, "last", np.array([-1]))]))
    nodes.append(ir.node("Mul", [nodes[0].outputs[0], nodes[-1].outputs[0]]))
    tokens = add_initializer(graph, "tokens", np.array([1], np.int64))
    nodes.append(ir.node("ReduceMax", [nodes[-1].outputs[0], tokens], {"keepdims": 0}))
    graph.extend(nodes)
    out = nodes[-1].outputs[0]
    out.name, out.dtype, out.shape = "sentence_embedding", ir.DataType.FLOAT, ir.Shape(["batch", _HIDDEN])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=8), path)


def test_rows_swapped_in_a_masked_max_pooled_bag_fill_only_the_kept_tokens(tmp_path):
    path = tmp_path / "masked.onnx"
    _masked_max_bag(path)
    mask = np.ones((2, 16), np.int64)
    mask[:, :6] = 0  # left padding
    ids = np.random.default_rng(1).integers(1000, 30000, (2, 16)).astype(np.int64)
    added = []
    reach = Verifier._add_reaching_set

    def spy(self, inputs, label):
        added.append(inputs)
        return reach(self, inputs, label)

    with mock.patch.object(Verifier, "_add_reaching_set", spy):
        record = _verdict(path, _SpecialRowsSwapped, tmp_path, inputs={"input_ids": ids, "attention_mask": mask})
    # Before the fix: applied, verified (101 once and 102 twice in the first sample's kept tokens, one max of both).
    assert record.status == STATUS_ROLLED_BACK, f"{record.status}: {record.detail}"
    written = added[0]["input_ids"]
    np.testing.assert_array_equal(written[:, :6], ids[:, :6])  # the padded tokens left as they were
    assert (written[0, 6:] == 101).all() and (written[1, 6:] == 102).all()


# --- (2) a length between two thresholds a rewrite compares --------------------------------------------------------


def _length_between(low: int, high: int) -> ir.Model:
    """``x[B, L]`` -> ``x * (1 + 0.1 * (low <= L < high))``."""
    one, tenth = (helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("one", 1.0), ("tenth", 0.1)))
    nodes = [
        helper.make_node("Shape", ["x"], ["length"], start=1, end=2),
        helper.make_node("GreaterOrEqual", ["length", "low"], ["above"]),
        helper.make_node("Less", ["length", "high"], ["below"]),
        helper.make_node("And", ["above", "below"], ["inside"]),
        helper.make_node("Cast", ["inside"], ["flag"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["flag", "tenth"], ["bump"]),
        helper.make_node("Add", ["bump", "one"], ["scale"]),
        helper.make_node("Mul", ["x", "scale"], ["y"]),
    ]
    bounds = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("low", low), ("high", high))]
    graph = helper.make_graph(
        nodes,
        "between",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "L"])],
        [one, tenth, *bounds],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def test_a_length_between_two_thresholds_each_side_held_is_found():
    model = _length_between(2, 4)
    # Each side of each threshold held (1 and 128): before the fix nothing, and ``between`` did not exist.
    assert compared_lengths(model, {"L": {1, 128}}) == {}
    assert compared_lengths(model, {"L": {1, 128}}, between=True) == {"L": [2]}
    assert compared_lengths(model, {"L": {1, 3, 128}}, between=True) == {}  # 3 goes that way: nothing to add
    assert compared_lengths(model, between=True) == {"L": [1, 2, 3, 4]}  # nothing held: each side, as before


@pytest.fixture(scope="module")
def rotary(tmp_path_factory):
    path = tmp_path_factory.mktemp("xfix2") / "rotary.onnx"
    _rotary(path)
    return path


class _ScaledBetween129And200(_ScaledAtLengths):
    """The rotary's input scaled where ``129 <= sequence < 200``: both sides of 129 and of 200 held by 128 and 257."""

    lengths = (129, 200)


class _ExactBetween129And200(_ScaledBetween129And200):
    """The rotary's input times 1.0 where ``129 <= sequence < 200`` (exact)."""

    def mutate(self, model):
        super().mutate(model)
        tenth = model.graph.initializers["mutant.tenth"]
        tenth.const_value = ir.tensor(np.float32(0.0), name=tenth.name)


def test_a_branch_between_two_thresholds_a_rewrite_wrote_is_rolled_back(rotary, tmp_path):
    record = _verdict(rotary, _ScaledBetween129And200, tmp_path)
    # Before the fix: applied, verified (the sets held 128 and 257, each side of each threshold, never 129 to 199).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'sequence' at 129, a length the rewrite compares" in record.detail


def test_an_exact_branch_between_two_thresholds_is_kept_and_checked_there(rotary, tmp_path):
    record = _verdict(rotary, _ExactBetween129And200, tmp_path)
    assert record.status == STATUS_APPLIED, (record.status, record.detail)
    assert any("'sequence' at 129, a length the rewrite compares" in note for note in record.notes), record.notes


def test_a_pass_that_adds_no_comparison_adds_no_length_between(tmp_path):
    path = tmp_path / "between.onnx"
    ir.save(_length_between(129, 200), path)

    class _Renamed(ir.passes.InPlacePass):
        """The output's producer renamed (no comparison added)."""

        def __init__(self, context) -> None:
            super().__init__()

        def call(self, model):
            model.graph.node(0).name = "renamed"
            return ir.passes.PassResult(model, True)

    calls = []
    between = compared_inputs._lengths_between

    def spy(compared, held, kept):
        found = between(compared, held, kept)
        calls.append(found)
        return found

    with mock.patch.object(compared_inputs, "_lengths_between", spy):
        record = _verdict(path, _Renamed, tmp_path)
    assert record.status == STATUS_APPLIED, (record.status, record.detail)
    # The original's own ways together are drawn for the original (129, since review s77 xlen), and a pass that
    # compares nothing new reads the same ways on both sides of its rewrite: no set.
    assert len(calls) >= 2 and calls[-2] == calls[-1]
    assert not any("a length the rewrite compares" in note for note in record.notes), record.notes


def abs_max_bag(path) -> None:
    """``_bag_of_embeddings``'s max-pooled bag with an ``Abs`` behind its lookup (rows negated read alike), at
    ``path``."""
    _bag_of_embeddings(path, "ReduceMax")
    model = ir.load(path)
    gather = next(node for node in model.graph if node.op_type == "Gather")
    magnitude = ir.node("Abs", [gather.outputs[0]])
    model.graph.insert_after(gather, magnitude)
    next(node for node in model.graph if node.op_type == "ReduceMax").replace_input_with(0, magnitude.outputs[0])
    ir.save(model, path)

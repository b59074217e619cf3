"""Review s72 (late2): a late review of the accuracy budget on ``ArgMax`` ids (read on their logits).

1. **Classes far from every decision made every flip a near tie.** A flip is excused as a near tie where the
   original's logits put the candidate's class within 5 % of their RMS (centred, over the run) of its own pick. A
   classifier whose logits mask some classes with ``-1e9`` (classes a head may not pick, a vocabulary's padding) has
   an RMS of about 1e8: every flip read as a near tie, and a wholly other head (58 of 64 ids changed) met
   ``--min-cosine 0.99`` at 0.9999997 (its logits' error is nothing beside the mask too). The scale of a near tie now
   holds each class within 10 times the run's median distance of a class below its position's pick
   (``_near_scale``). Open (strict xfail): where half the classes or more are masked, that median is the mask's.
2. **A mask of ``-inf`` read as 0.** Values not finite in both runs alike were read as 0, above the log-probabilities
   a ``LogSoftmax`` gives: no id followed its own logits, and an id flipped at a 1e-4 tie counted whole (a
   classifier's sample scored 0, ``--min-worst-cosine`` missed for no loss, its max |Δ| a distance of class numbers).
   They read as the position's lowest finite value now.
3. **A ``TopK`` of k = 1's indices were scored by their share of equal ids.** A greedy decoder written as
   ``TopK(logits, k=1)`` (its indices ``[B, T, 1]``) is an ``ArgMax`` with the axis kept, but the budget read only
   ``ArgMax`` outputs on their logits: a flip at a 1e-4 tie scored its sample 0 and missed ``--min-worst-cosine``, as
   an ``ArgMax``'s did before review s72's budget. Its indices are read on the values it picks among now (and
   ``compare`` holds them, cast to float, as ids).
4. **Ids reshaped on their way out were scored as class numbers.** Only a ``Cast`` or ``Identity`` led from an
   ``ArgMax`` to an output it computes: a classifier's ids cast to float and unsqueezed to ``[batch, 1]`` were a float
   output, and a rewrite that put every id one class off met ``--min-cosine 0.9`` (relative error 0.428 of class
   numbers). ``Reshape``, ``Squeeze``, ``Unsqueeze`` and ``Flatten``, which keep the ids' order, lead there too now
   (in ``compare`` too, which held them by a cosine of class numbers).
5. **The HTML report's verdict said no agreement of such ids.** Every one a class off read "outputs within 1, max rel
   ..." (a concern by its relative error alone); it now says their agreement, as it does integer ids'.
6. ``compare --min-cosine`` held ``ArgMax`` ids cast to float by the cosine of their class numbers (every id one class
   off passed 0.98): review s72 budget's strict xfail ``test_compare_holds_float_ids_shifted_by_one_class`` in
   ``tests/test_review_s72_budget.py``, fixed here (such ids are held equal in value, as integer ids).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import AccuracyBudget, logits_key, paired_drift
from optimizer.runtime import budget_runs, drift_of


def _masked_classifier(head_seed: int, masked: int = 8) -> ir.Model:
    """``x [B, 8]`` -> MatMul -> ``+ mask`` (-1e9 on the last ``masked`` of 20 classes) = ``logits [B, 20]`` ->
    ``ids``."""
    head = np.random.default_rng(head_seed).standard_normal((8, 20)).astype(np.float32)
    bias = np.where(np.arange(20) < 20 - masked, 0.0, -1e9).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "head"], ["raw"]),
            helper.make_node("Add", ["raw", "bias"], ["logits"]),
            helper.make_node("ArgMax", ["logits"], ["ids"], axis=-1, keepdims=0),
        ],
        "masked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B"])],
        [numpy_helper.from_array(head, "head"), numpy_helper.from_array(bias, "bias")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def _other_head_drift(masked: int):
    batches = [{"x": np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)}]
    reference = budget_runs(_masked_classifier(0, masked), batches)
    return drift_of(_masked_classifier(7, masked), batches, reference)


def test_a_wholly_other_head_behind_masked_classes_misses_the_budget():
    drift = _other_head_drift(masked=8)
    name, changed, near, compared = drift.on_logits
    assert changed > compared / 2 and near < changed / 4, drift  # was: every changed id a near tie
    assert not AccuracyBudget(min_cosine=0.9).met(drift), drift  # was met at 0.9999997


@pytest.mark.xfail(
    strict=True,
    reason="open: where half the classes or more are masked far below the rest (-1e9), the run's median distance of a "
    "class below its position's pick is the mask's, the scale of a near tie (_near_scale) is the mask's, and every "
    "flip of a wholly other head still reads as a near tie (and its logits' error as nothing beside the mask)",
)
def test_a_wholly_other_head_behind_half_the_classes_masked_misses_the_budget():
    assert not AccuracyBudget(min_cosine=0.9).met(_other_head_drift(masked=10))


def test_a_tie_flip_beside_masked_classes_is_still_a_near_tie():
    """The rule above excuses what it did where classes are masked: a flip at a 1e-4 tie."""
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((64, 20))
    logits[:, 12:] = -1e9
    logits[5, :2] = [3.0, 3.0 - 1e-4]
    flipped = logits.copy()
    flipped[5, 1] = 3.0 + 1e-4
    before = {"ids": logits.argmax(-1), logits_key("ids"): logits}
    after = {"ids": flipped.argmax(-1), logits_key("ids"): flipped}
    drift = paired_drift([(before, after)])
    assert drift.on_logits == ("ids", 1, 1, 64) and drift.worst_cosine > 0.999, drift


def test_a_tie_flip_beside_a_mask_of_minus_infinity_is_a_near_tie():
    """Log-probabilities (all below 0) with some classes at -inf: a flip at a 1e-4 tie is one."""
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((64, 12))
    raw[:, 8:] = -np.inf
    raw[9, :2] = [4.0, 4.0 - 1e-4]
    flipped = raw.copy()
    flipped[9, 1] = 4.0 + 1e-4

    def log_softmax(values):
        finite = values[:, :8]
        return values - (
            finite.max(-1, keepdims=True)
            + np.log(np.exp(finite - finite.max(-1, keepdims=True)).sum(-1, keepdims=True))
        )

    before, after = ({"ids": values.argmax(-1), logits_key("ids"): log_softmax(values)} for values in (raw, flipped))
    drift = paired_drift([(before, after)])
    assert drift.on_logits == ("ids", 1, 1, 64), drift  # was: 1 changed, 0 at a near tie
    assert AccuracyBudget(min_worst_cosine=0.99).met(drift), drift  # was: worst sample 0
    assert drift.max_error < 0.01, drift  # the logits', not a distance of class numbers


def _top_one(cast: bool = False) -> ir.Model:
    """``x [B, 8]`` -> MatMul = ``logits [B, 12]`` -> ``TopK(k=1)`` -> ``ids [B, 1]`` (its indices; ``cast``: float)."""
    head = np.random.default_rng(4).standard_normal((8, 12)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "head"], ["logits"]),
        helper.make_node("TopK", ["logits", "k"], ["best", "picked" if cast else "ids"], axis=-1),
    ]
    if cast:
        nodes.append(helper.make_node("Cast", ["picked"], ["ids"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        "top_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("ids", TensorProto.FLOAT if cast else TensorProto.INT64, ["B", 1])],
        [numpy_helper.from_array(head, "head"), numpy_helper.from_array(np.array([1], np.int64), "k")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def test_a_tie_flip_of_top_one_indices_is_read_on_their_logits():
    batches = [{"x": np.random.default_rng(5).standard_normal((64, 8)).astype(np.float32)}]
    reference = budget_runs(_top_one(), batches)
    assert set(reference[0]) == {"ids", logits_key("ids")}, set(reference[0])  # was: the indices alone
    logits = reference[0][logits_key("ids")]
    assert logits.shape == (64, 1, 12)
    ordered = np.sort(logits, axis=-1)
    tied = int(np.argmin(ordered[..., -1] - ordered[..., -2]))  # the closest two classes
    second = int(np.argsort(logits[tied, 0])[-2])
    after = [{key: value.copy() for key, value in reference[0].items()}]
    after[0][logits_key("ids")][tied, 0, second] = logits[tied, 0].max() + 1e-4
    after[0]["ids"][tied, 0] = second
    drift = paired_drift(zip(reference, after))
    assert drift.on_logits == ("ids", 1, 1, 64) and AccuracyBudget(min_worst_cosine=0.999).met(drift), drift


def test_compare_holds_top_one_indices_cast_to_float_as_ids():
    from optimizer.class_scores import argmax_outputs

    assert argmax_outputs(_top_one(cast=True)) == {"ids"}


def _unsqueezed_ids(shift: bool) -> ir.Model:
    """``x [B, 8]`` -> MatMul -> ArgMax -> (``+ 1 mod 12``: every id one class off) -> Cast to float -> Unsqueeze."""
    head = np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "head"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["picked"], axis=-1, keepdims=0),
    ]
    if shift:
        nodes += [
            helper.make_node("Add", ["picked", "one"], ["next"]),
            helper.make_node("Mod", ["next", "twelve"], ["k"]),
        ]
    nodes += [
        helper.make_node("Cast", ["k" if shift else "picked"], ["floats"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["floats", "axis"], ["ids"]),
    ]
    constants = {"axis": np.array([1], np.int64), "one": np.array(1, np.int64), "twelve": np.array(12, np.int64)}
    graph = helper.make_graph(
        nodes,
        "unsqueezed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("ids", TensorProto.FLOAT, ["B", 1])],
        [numpy_helper.from_array(head, "head"), *(numpy_helper.from_array(v, k) for k, v in constants.items())],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def test_float_ids_unsqueezed_and_shifted_by_one_class_miss_the_budget():
    batches = [{"x": np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)}]
    drift = drift_of(_unsqueezed_ids(shift=True), batches, budget_runs(_unsqueezed_ids(shift=False), batches))
    assert not AccuracyBudget(min_cosine=0.9).met(drift), drift  # was met: cosine 0.9082 of class numbers
    assert drift.shared == "ids" and "scored by its share of equal values, not a cosine" in str(drift), drift


def test_float_ids_unsqueezed_are_held_as_ids_by_compare():
    from optimizer.accuracy import AccuracyAccumulator
    from optimizer.class_scores import argmax_outputs

    ids = argmax_outputs(_unsqueezed_ids(shift=False))
    before = {"ids": np.arange(64, dtype=np.float32)[:, None] % 12}
    after = {"ids": (before["ids"] + 1) % 12}
    accumulator = AccuracyAccumulator()
    accumulator.add(before, after, ids=ids)
    (result,) = accumulator.results()
    assert result.cosine is None and result.agreement == 0.0, result  # was: cosine 0.90 of class numbers


def test_the_html_verdict_says_float_ids_differ():
    from types import SimpleNamespace

    from optimizer.accuracy import AccuracyAccumulator
    from optimizer.compare.html import _accuracy_phrase

    before = {"ids": np.arange(64, dtype=np.float32)[:, None] % 12}
    accumulator = AccuracyAccumulator()
    accumulator.add(before, {"ids": (before["ids"] + 1) % 12}, ids=frozenset({"ids"}))
    segment = _accuracy_phrase(SimpleNamespace(llm_accuracy=None, accuracy=accumulator.results()))
    assert segment.css == "concern" and "integer agreement 0.000" in segment.text, segment

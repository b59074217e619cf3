"""Review s72 (late 4): top-1 of class scores in optimize's figure and ``--min-top1`` (commit 117e29f).

1. **``--min-top1`` alone dropped the default cosine floor.** A budget of ``--min-top1 X`` alone replaced the default
   floor (``--min-cosine 0.9``) of the approximate passes and their budget searches, and bounds only class scores: a
   model with no class-score output met it whatever its outputs became (cosine 0.1 "verified"), and one with class
   scores beside other outputs (a detector's boxes, an embedding) left those unbounded. Set alone, it now keeps the
   default floor's cosine beside it.
2. **Logits named like class scores but laid out classes first** (a segmenter's ``logits`` ``[batch, classes, height,
   width]``, SegFormer's export) had their top-1 read over the last axis, the image's width: every pixel's class
   changed and the figure said top-1 1.000, meeting ``--min-top1 1``. An output guessed by its name is read for
   top-1 only up to rank 3 (a classifier's ``[batch, classes]``, a recognizer's ``[batch, steps, classes]``); the
   graph's own normalizer over the last axis still finds class scores of any rank.
3. **Class scores named like them whose graph normalizes them along axis 1** (``probs [batch, classes, steps]``, a
   ``Softmax`` over axis 1: a channels-first recognizer) were read for top-1 along their steps, every step's class
   changed at top-1 1.000, in the budget's figure and ``compare``'s table. An output the graph normalizes along another
   axis (``optimizer.class_scores.scores_elsewhere``) gets no top-1 guessed from its name.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from optimizer.accuracy import Drift, output_drift, paired_drift
from optimizer.options import Options
from optimizer.verify import DEFAULT_APPROXIMATION_FLOOR


def test_min_top1_alone_keeps_the_default_cosine_floor():
    """A model with no class scores, its outputs drifted to cosine 0.1: the default floor refuses it, and so must a
    budget of ``--min-top1 0.99`` alone (it met it: the floor was replaced by a bound of nothing)."""
    drift = Drift(0.1, 1.0, worst_cosine=0.1)
    assert not DEFAULT_APPROXIMATION_FLOOR.met(drift)
    budget = Options(min_top1=0.99).budget
    assert budget is not None and budget.min_top1 == 0.99
    assert not budget.met(drift)
    # A bound the user set on the cosine is kept as set, not raised to the floor.
    assert Options(min_top1=0.99, min_cosine=0.5).budget.min_cosine == 0.5
    assert Options(min_top1=0.99, max_error=1.0).budget.min_cosine is None


def test_a_segmenters_logits_laid_out_classes_first_have_no_top1_over_their_width():
    """``logits`` ``[batch, classes, height, width]``: every pixel's class changed, the argmax along the width kept.
    The figure said top-1 1.000 and ``--min-top1 1`` was met."""
    rng = np.random.default_rng(0)
    classes, height, width = 4, 3, 5
    per_class = rng.standard_normal(classes)
    along_width = np.linspace(0.0, 10.0, width)
    expected = (per_class[None, :, None, None] + along_width[None, None, None, :]).repeat(height, axis=2)
    expected = np.repeat(expected, 2, axis=0).astype(np.float32)
    actual = expected[:, ::-1].copy()  # the classes reversed: every pixel's argmax over the classes changes
    assert (np.argmax(expected, axis=1) != np.argmax(actual, axis=1)).all()
    drift = paired_drift([({"logits": expected}, {"logits": actual})])
    assert drift.top1 is None, str(drift)
    budget = Options(min_top1=1.0).budget
    assert drift.top1_agreement is None or not budget.met(drift)


def test_compare_reads_no_top1_of_a_segmenters_logits_along_their_width():
    """``compare``'s accuracy table read the same guess (``OutputAccuracy.top1_agreement``) along the width."""
    from optimizer.accuracy import AccuracyAccumulator

    expected = np.zeros((1, 3, 2, 4), np.float32)
    expected[:, 0] = 1.0
    expected += np.linspace(0.0, 5.0, 4, dtype=np.float32)
    actual = expected[:, ::-1].copy()
    accumulator = AccuracyAccumulator()
    accumulator.add({"logits": expected}, {"logits": actual})
    (result,) = accumulator.results()
    assert result.top1_agreement is None


def _softmax_along_axis_1() -> ir.Model:
    """``probs = Softmax(x, axis=1)`` over ``[batch, 4 classes, 5 steps]``."""
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["probs"], axis=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 5])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 4, 5])],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_probabilities_normalized_along_axis_1_have_no_top1_along_their_steps():
    model = _softmax_along_axis_1()
    logits = np.random.default_rng(1).standard_normal(4)[None, :, None] + np.linspace(0.0, 3.0, 5)[None, None, :]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = np.repeat(probs, 2, axis=0).astype(np.float32)
    actual = expected[:, ::-1].copy()  # every step's class (argmax along axis 1) changes
    assert (np.argmax(expected, axis=1) != np.argmax(actual, axis=1)).all()
    batch = {"x": np.repeat(logits, 2, axis=0).astype(np.float32)}
    drift = output_drift([{"probs": expected}], [{"probs": actual}], [batch], model)
    # The figure said "probs: class scores, top-1 1.000 ... 0 of 8 changed".
    assert drift.top1 is None, str(drift)


def test_compare_reads_no_top1_along_the_steps_of_probabilities_normalized_along_axis_1(tmp_path):
    from optimizer.accuracy import AccuracyAccumulator
    from optimizer.class_scores import scores_elsewhere
    from optimizer.compare.comparison import _accumulate

    model = _softmax_along_axis_1()
    assert scores_elsewhere(model) == {"probs"}
    expected = np.full((2, 4, 5), 0.1, np.float32)
    expected[:, 0] = 0.7
    expected[..., -1] += 0.01
    actual = expected[:, ::-1].copy()
    accumulator = AccuracyAccumulator()
    _accumulate(
        {"probs": expected}, {"probs": actual}, (frozenset(), frozenset(), scores_elsewhere(model)), [], accumulator
    )
    (result,) = accumulator.results()
    assert result.top1_agreement is None

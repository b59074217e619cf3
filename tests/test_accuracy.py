"""Accuracy metrics: errors, cosine similarity, top-1 agreement."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.accuracy import AccuracyAccumulator, AccuracyBudget, compare_accuracy, output_accuracy, paired_drift


def test_identical_outputs():
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    result = output_accuracy("hidden", x, x.copy())
    assert result.exact and result.max_abs_error == 0 and result.cosine == pytest.approx(1.0)
    assert result.top1_agreement is None, "hidden states are not class scores"


def test_errors_and_cosine_of_a_known_perturbation():
    x = np.array([[3.0, 4.0]], np.float32)
    y = np.array([[4.0, 3.0]], np.float32)
    result = output_accuracy("embedding", x, y)
    assert result.max_abs_error == pytest.approx(1.0)
    # relative to max(|x|, rms(x)): 1 / max(3, sqrt(12.5)), not 1 / 3
    assert result.max_rel_error == pytest.approx(1 / np.sqrt(12.5))
    assert result.cosine == pytest.approx(24 / 25)


def test_top1_agreement_on_logits():
    before = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4], [0.0, 0.0, 1.0]], np.float32)
    after = before.copy()
    after[0] = [0.9, 0.1, 0.0]  # row 0 now picks another class
    result = output_accuracy("logits", before, after)
    assert result.top1_agreement == pytest.approx(0.75)


def test_softmax_outputs_count_as_scores_whatever_their_name():
    before = np.eye(3, dtype=np.float32)
    results = compare_accuracy({"out": before}, {"out": before}, score_outputs=frozenset({"out"}))
    assert results[0].top1_agreement == 1.0


def test_integer_outputs_are_compared_exactly():
    result = output_accuracy("ids", np.array([1, 2, 3]), np.array([1, 2, 4]))
    assert not result.exact and result.max_abs_error == 1 and result.cosine is None


def test_missing_output_is_an_error():
    with pytest.raises(ValueError, match="no output named 'b'"):
        compare_accuracy({"a": np.zeros(1), "b": np.zeros(1)}, {"a": np.zeros(1)})


def test_relative_error_is_floored_at_the_outputs_rms():
    # A logit near zero moved by rounding: relative to itself it is 100x off, to the output it is not.
    before = np.array([[10.0, -8.0, 0.001, 6.0]], np.float32)
    after = before + np.float32(0.1)
    result = output_accuracy("hidden", before, after)
    assert result.cosine > 0.999
    rms = np.sqrt(np.mean(before.astype(np.float64) ** 2))
    assert result.max_rel_error == pytest.approx(0.1 / rms, rel=1e-4)
    assert result.max_rel_error < 0.02


def test_accumulated_accuracy_equals_the_accuracy_of_the_concatenated_outputs():
    rng = np.random.default_rng(1)
    before = rng.standard_normal((12, 5)).astype(np.float32)
    after = before + rng.standard_normal((12, 5)).astype(np.float32) * 0.1
    accumulator = AccuracyAccumulator()
    for start in range(0, 12, 5):
        accumulator.add({"logits": before[start : start + 5]}, {"logits": after[start : start + 5]})
    (merged,) = accumulator.results()
    whole = output_accuracy("logits", before, after)
    assert merged.samples == 12 and merged.shape == [5, 5]
    assert merged.cosine == pytest.approx(whole.cosine, rel=1e-12)
    assert merged.top1_agreement == pytest.approx(whole.top1_agreement)
    assert merged.max_abs_error == pytest.approx(whole.max_abs_error)


@pytest.mark.parametrize("shape", [(1, 1), (1,), ()])
def test_an_output_of_one_value_per_sample_is_scored_by_its_relative_error(shape):
    """Sample by sample, the cosine of one number is +-1: such an output doubled, run one sample at a time, must
    not read as cosine 1. Scored over all samples as 1 - r**2 / 2 (r = 1 here: 0.5); equal outputs score 1."""
    values = np.arange(1.0, 9.0, dtype=np.float32)
    runs = [({"y": np.full(shape, v, np.float32)}, {"y": np.full(shape, 2 * v, np.float32)}) for v in values]
    assert paired_drift(runs).cosine == pytest.approx(0.5)
    assert paired_drift([(run[0], run[0]) for run in runs]).cosine == 1.0
    near = [({"y": np.full(shape, v, np.float32)}, {"y": np.full(shape, v * 1.001, np.float32)}) for v in values]
    assert paired_drift(near).cosine == pytest.approx(1 - 0.001**2 / 2)


def test_max_error_counts_integer_outputs():
    """A class id that changed differs by at least 1: --max-error 0 must not accept it."""
    drift = paired_drift([({"cls": np.array([3, 1, 4])}, {"cls": np.array([3, 2, 4])})])
    assert drift.max_error == 1.0
    assert not AccuracyBudget(max_error=0.0).met(drift)
    assert AccuracyBudget(max_error=0.0).met(paired_drift([({"cls": np.array([3])}, {"cls": np.array([3])})]))


def test_the_drift_names_an_output_scored_by_its_relative_error():
    runs = [({"p": np.array([[v]], np.float32)}, {"p": np.array([[3 * v]], np.float32)}) for v in (1.0, 2.0)]
    drift = paired_drift(runs)
    assert drift.relative_error == ("p", pytest.approx(2.0))
    assert "p, one value per sample: relative error 2" in str(drift)
    rows = [({"h": np.ones((1, 4), np.float32)}, {"h": np.ones((1, 4), np.float32)})]
    assert paired_drift(rows).relative_error is None

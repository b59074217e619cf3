"""Accuracy of a rewritten model against the original on the same inputs."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_SCORE_NAME = re.compile(r"logit|score|prob|class", re.IGNORECASE)


@dataclass(frozen=True)
class OutputAccuracy:
    """How far one output of AFTER is from BEFORE.

    ``cosine`` is set for float outputs; ``top1_agreement`` (fraction of rows whose
    argmax over the last axis agrees) for outputs that look like class scores or
    logits: named like ``logits``/``scores``/``probs`` or produced by a Softmax,
    float, with a last axis of at least 2 classes.
    """

    name: str
    dtype: str
    shape: list[int]
    max_abs_error: float
    max_rel_error: float
    cosine: float | None = None
    top1_agreement: float | None = None
    exact: bool = False


def output_accuracy(name: str, before: Any, after: Any, *, scores: bool | None = None) -> OutputAccuracy:
    """Compare one output (arrays of the same shape) of BEFORE and AFTER.

    ``scores`` says whether the output holds class scores; None guesses from the name.
    """
    expected, actual = np.asarray(before), np.asarray(after)
    if expected.shape != actual.shape:
        raise ValueError(f"output '{name}': shape {actual.shape} differs from {expected.shape}")
    exact = bool(np.array_equal(expected, actual, equal_nan=expected.dtype.kind == "f"))
    if expected.dtype.kind not in "fiub" or expected.size == 0:
        return OutputAccuracy(
            name,
            str(expected.dtype),
            list(expected.shape),
            0.0 if exact else np.inf,
            0.0 if exact else np.inf,
            exact=exact,
        )
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    finite = np.isfinite(e) & np.isfinite(a)
    diff = np.abs(np.where(finite, a, 0.0) - np.where(finite, e, 0.0))
    rel = diff / np.maximum(np.abs(np.where(finite, e, 0.0)), 1e-12)
    max_abs, max_rel = float(diff.max()), float(rel.max())
    if not finite.all() and not np.array_equal(np.isfinite(e), np.isfinite(a)):
        max_abs = max_rel = float("inf")
    cosine = top1 = None
    if expected.dtype.kind == "f":
        cosine = _cosine(np.where(finite, e, 0.0).ravel(), np.where(finite, a, 0.0).ravel())
        if (_SCORE_NAME.search(name) is not None if scores is None else scores) and expected.shape[-1:] >= (2,):
            top1 = float(np.mean(np.argmax(e, axis=-1) == np.argmax(a, axis=-1)))
    return OutputAccuracy(name, str(expected.dtype), list(expected.shape), max_abs, max_rel, cosine, top1, exact)


def compare_accuracy(
    before: Mapping[str, Any], after: Mapping[str, Any], score_outputs: frozenset[str] = frozenset()
) -> list[OutputAccuracy]:
    """Per-output accuracy of AFTER against BEFORE, in BEFORE's output order.

    ``score_outputs`` names outputs known to hold class scores (e.g. Softmax outputs);
    others are judged by name.
    """
    missing = [name for name in before if name not in after]
    if missing:
        raise ValueError(f"AFTER has no output named '{missing[0]}'")
    return [
        output_accuracy(name, before[name], after[name], scores=True if name in score_outputs else None)
        for name in before
    ]


def _cosine(x: np.ndarray, y: np.ndarray) -> float:
    norms = np.linalg.norm(x) * np.linalg.norm(y)
    if norms == 0:
        return 1.0 if np.array_equal(x, y) else 0.0
    return float(np.dot(x, y) / norms)


@dataclass(frozen=True)
class AccuracyBudget:
    """How far a reduced-precision model may drift from the float original.

    ``min_cosine``: the mean per-sample cosine similarity of every float output (the
    fraction of agreeing values, for integer outputs) must reach it; ``max_error``: no
    float output element may differ by more. Either or
    both may be set; a budget with neither accepts anything.
    """

    min_cosine: float | None = None
    max_error: float | None = None

    def met(self, drift: Drift) -> bool:
        """Whether ``drift`` is within the budget."""
        if self.min_cosine is not None and not drift.cosine >= self.min_cosine:
            return False
        return self.max_error is None or drift.max_error <= self.max_error

    def describe(self) -> str:
        """The budget as the command-line flags that set it."""
        parts = []
        if self.min_cosine is not None:
            parts.append(f"--min-cosine {self.min_cosine:g}")
        if self.max_error is not None:
            parts.append(f"--max-error {self.max_error:g}")
        return " ".join(parts) or "no budget"


@dataclass(frozen=True)
class Drift:
    """How far AFTER's float outputs are from BEFORE's: the worst output's mean per-sample cosine, the largest error."""

    cosine: float
    max_error: float

    def __str__(self) -> str:
        return f"cosine {self.cosine:.4f}, max |Δ| {self.max_error:.3g}"


def output_drift(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> Drift:
    """Compare runs of two models on the same batches of inputs (one mapping of outputs per batch).

    Each float output's cosine is taken per sample (row along axis 0, flattened) and
    averaged over all samples; an integer or boolean output (class ids, token ids)
    counts by the fraction of its values that agree. The result is the minimum over
    outputs, so one damaged output is not hidden by good ones. Comparing nothing is
    an error, not a perfect score.
    """
    scores: dict[str, list[float]] = {}
    max_error = 0.0
    for expected_run, actual_run in zip(before, after):
        for name, expected in expected_run.items():
            expected, actual = np.asarray(expected), np.asarray(actual_run[name])
            if expected.size == 0 or expected.dtype.kind not in "fiub":
                continue
            if expected.dtype.kind != "f":
                scores.setdefault(name, []).extend(np.atleast_1d(expected == actual).astype(float).ravel())
                continue
            e, a = expected.astype(np.float64), actual.astype(np.float64)
            if not np.isfinite(a).all() and not np.array_equal(np.isfinite(a), np.isfinite(e)):
                return Drift(0.0, float("inf"))
            finite = np.isfinite(e) & np.isfinite(a)
            e, a = np.where(finite, e, 0.0), np.where(finite, a, 0.0)
            max_error = max(max_error, float(np.abs(a - e).max()))
            rows = (e.reshape(len(e), -1), a.reshape(len(a), -1)) if e.ndim >= 2 else (e[None], a[None])
            scores.setdefault(name, []).extend(_cosine(x, y) for x, y in zip(*rows))
    if not scores:
        raise ValueError("no outputs to compare: empty inputs, or only outputs of non-numeric types")
    cosine = min(float(np.mean(values)) for values in scores.values())
    return Drift(cosine, max_error)

"""Accuracy of a rewritten model against the original on the same inputs."""

from __future__ import annotations

import re
from collections.abc import Mapping
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

"""Accuracy of a rewritten model against the original on the same inputs."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import numpy as np

_SCORE_NAME = re.compile(r"logit|score|prob|class", re.IGNORECASE)


@dataclass(frozen=True)
class OutputAccuracy:
    """How far one output of AFTER is from BEFORE, over every sample compared.

    ``max_rel_error`` is relative to each element's magnitude, floored at the output's
    root mean square (``floored_magnitude``, as verification holds elements), so that a
    value that happens to be near zero does not report a huge relative error when the
    output as a whole is close. ``cosine`` is set for float outputs (over all values),
    ``worst_sample_cosine`` for float outputs whose samples hold more than one value (the
    lowest cosine of one sample, a row along axis 0: the sentence a mean hides; each held to
    ``1 - (q - 1)**2 / 2`` of the sample's norm ratio ``q`` too, ``scale_scores``, since its
    cosine does not see one sample scaled by 2 and the whole output's norm barely does);
    ``top1_agreement`` (fraction of rows whose argmax over the last axis agrees) for
    outputs that look like class scores or logits: named like
    ``logits``/``scores``/``probs`` or produced by a Softmax, float, with a last axis of
    at least 2 classes after the samples' axis (a 1-D output is one value per sample); ``agreement`` (fraction of
    values equal) for integer, boolean and string outputs: a predicted label's or token ids', which a classifier is
    judged by and a max |Δ| does not say (one label of 1000 moved and every one read alike until a review in session
    69; string labels had none until a later review).
    ``shape`` is the first batch's; ``samples`` counts the rows (along axis 0) compared, over all batches. Positions a
    padding mask hides are left out of every figure but ``exact`` where they were given (``AccuracyAccumulator.add``).
    """

    name: str
    dtype: str
    shape: list[int]
    max_abs_error: float
    max_rel_error: float
    cosine: float | None = None
    top1_agreement: float | None = None
    exact: bool = False
    samples: int = 1
    # AFTER's norm over BEFORE's (float outputs with a cosine): a cosine does not see an output scaled by 2.
    norm_ratio: float | None = None
    worst_sample_cosine: float | None = None
    agreement: float | None = None


def floored_magnitude(values: np.ndarray) -> np.ndarray:
    """``max(|x|, rms(x))`` elementwise: the magnitude an element's error is measured against.

    A deep model's float rounding error scales with its activations, so an element near
    zero must not demand far more absolute precision than the large ones (verification's
    tolerance and the comparison's relative error both use this).
    """
    magnitude = np.abs(values)
    return np.maximum(magnitude, root_mean_square(magnitude))


def root_mean_square(magnitude: np.ndarray) -> float:
    """The RMS of non-negative values, without the squares overflowing (float64 past 1e154, float32 past 1e19:
    an infinite RMS would make every error relative to it zero) or vanishing."""
    peak = float(magnitude.max()) if magnitude.size else 0.0
    if peak == 0.0 or not math.isfinite(peak):
        return peak
    unit = _power_of_two_above(peak)  # a power of two scales exactly: the same RMS, never out of range
    return unit * float(np.sqrt(np.mean((magnitude.astype(np.float64) / unit) ** 2)))


def root_mean_square_of_parts(parts: Callable[[], Iterable[np.ndarray]]) -> float:
    """``root_mean_square`` of the non-negative finite values of the arrays ``parts()`` yields (called twice: their
    peak, then their squares), bit for bit the value over their concatenation, holding one float64 square per value
    instead of the copies of the whole that it makes."""
    peak, count = 0.0, 0
    for part in parts():
        if part.size:
            peak, count = max(peak, float(part.max())), count + part.size
    if peak == 0.0 or not math.isfinite(peak):
        return peak
    unit = _power_of_two_above(peak)
    squares, start = np.empty(count, np.float64), 0
    for part in parts():
        np.square(part.astype(np.float64, copy=False).ravel() / unit, out=squares[start : start + part.size])
        start += part.size
    return unit * float(np.sqrt(np.mean(squares)))


def _power_of_two_above(value: float) -> float:
    """The smallest power of two at least ``value`` (> 0, finite), or 2**1023 past it (values up to float64's
    largest then scale to at most 2)."""
    return math.ldexp(1.0, min(math.frexp(value)[1], 1023))


def output_accuracy(name: str, before: Any, after: Any, *, scores: bool | None = None) -> OutputAccuracy:
    """Compare one output (arrays of the same shape) of BEFORE and AFTER.

    ``scores`` says whether the output holds class scores; None guesses from the name.
    """
    accumulator = AccuracyAccumulator()
    accumulator.add({name: before}, {name: after}, frozenset({name}) if scores else frozenset(), guess=scores is None)
    return accumulator.results()[0]


class AccuracyAccumulator:
    """``OutputAccuracy`` of each output over many batches, one batch at a time (nothing is kept but sums).

    Each ``add`` compares one batch's outputs; ``results()`` gives the accuracy over all of
    them: the largest errors, the cosine over all values (sums of products, so it equals
    the cosine of the outputs concatenated), top-1 agreement over all rows.
    """

    def __init__(self) -> None:
        self._stats: dict[str, dict[str, Any]] = {}
        # The outputs some of whose positions ``add`` left out as padded, in the order first seen.
        self.padded: list[str] = []

    def add(
        self,
        before: Mapping[str, Any],
        after: Mapping[str, Any],
        score_outputs: frozenset[str] = frozenset(),
        *,
        guess: bool = True,
        padded: Mapping[str, np.ndarray] | None = None,
        ids: frozenset[str] = frozenset(),
        elsewhere: frozenset[str] = frozenset(),
    ) -> None:
        """Compare one batch: outputs of the same shape, by name (``ValueError`` for a shape mismatch).

        ``score_outputs`` names outputs known to hold class scores; with ``guess`` others are judged by name, but for
        those ``elsewhere`` names (``optimizer.class_scores.scores_elsewhere``: classes along another axis).
        ``ids`` names outputs of class or token ids (``optimizer.class_scores.argmax_outputs``): cast to float, they are
        held as integer ones, by their agreement with no cosine (the cosine of class numbers passed every id one class
        off at 0.987).
        ``padded`` maps outputs to the positions a padding mask hides (booleans that broadcast against the
        output, ``optimizer.padding.padded_outputs``): they count in no figure but ``exact`` (errors, cosines,
        top-1 rows), unless AFTER has a NaN or Inf there that BEFORE has not.
        """
        for name, expected in before.items():
            where = (padded or {}).get(name)
            expected, actual = np.asarray(expected), np.asarray(after[name])
            self._add_one(
                name, expected, actual, name in score_outputs, guess and name not in elsewhere, where, name in ids
            )
            if name in ids:
                continue  # class numbers hold no fields of another scale
            if expected.shape == actual.shape and (fields := small_scale_fields(expected)) is not None:
                # Its small-scale fields (a detector's class scores beside its boxes) get a row of their own: the
                # output's cosine is its large values'.
                axis, index = fields
                part = fields_name(name, axis, index)
                if where is not None:
                    where = np.take(np.broadcast_to(where, expected.shape), index, axis=axis)
                # Split along the last axis, the scores' own, the fields' argmax is no top-1: a softmax's small
                # classes beside its winner hold the runner-up, whose flips read as a lost top-1 (0.969 beside
                # the output's 1.000).
                whole_rows = axis != expected.ndim - 1
                self._add_one(
                    part,
                    np.take(expected, index, axis=axis),
                    np.take(actual, index, axis=axis),
                    name in score_outputs and whole_rows,
                    guess and whole_rows,
                    where,
                )

    def _add_one(
        self,
        name: str,
        expected: np.ndarray,
        actual: np.ndarray,
        scores: bool,
        guess: bool,
        padded: np.ndarray | None = None,
        ids: bool = False,
    ) -> None:
        if expected.shape != actual.shape:
            raise ValueError(f"output '{name}': shape {actual.shape} differs from {expected.shape}")
        stats = self._stats.setdefault(
            name,
            {
                "dtype": str(expected.dtype),
                "shape": list(expected.shape),
                "max_abs": 0.0,
                "max_rel": 0.0,
                "dot": 0.0,
                "xx": 0.0,
                "yy": 0.0,
                "unit": 0.0,
                "cosine": expected.dtype.kind == "f" and not ids,
                "same_values": True,
                "agree": 0,
                "rows": 0,
                # Rows of classes: a 1-D output holds one value per sample along axis 0 (a binary classifier's
                # logits [batch]), whose argmax picks a sample, not a class (cosine 0.999999995 read top-1 0.000).
                # Guessed from its name up to rank 3 (``_GUESSED_RANK``): a segmenter's logits hold classes first.
                "top1": (scores or (guess and expected.ndim <= _GUESSED_RANK and _SCORE_NAME.search(name) is not None))
                and expected.ndim >= 2
                and expected.shape[-1] >= 2,
                "exact": True,
                "samples": 0,
                "values": 0,
                "compared": 0,
                "worst_sample": None,
                "integers": True,
                "equal": 0,
            },
        )
        stats["samples"] += int(expected.shape[0]) if expected.ndim else 1
        # Bit-identical means the same dtype too: float16 values equal to float32 ones are "equal in value".
        exact = expected.dtype == actual.dtype and bool(
            np.array_equal(expected, actual, equal_nan=expected.dtype.kind == "f")
        )
        stats["exact"] &= exact
        if expected.dtype.kind not in "fiub" or expected.size == 0:
            differs = not exact
            if expected.size and _strings(expected) and _strings(actual):
                # A string output (a classifier's label, skl2onnx's): its agreement, as class ids', which the
                # approximate passes' budgets score it by; an infinite max |Δ| said nothing of one label in 1000.
                equal = np.asarray(expected == actual, dtype=bool)
                kept = np.ones(equal.shape, bool) if padded is None else ~np.broadcast_to(padded, equal.shape)
                stats["equal"] += int((equal & kept).sum())
                stats["compared"] += int(kept.sum())
                # A tagger's labels that differ only at padded tokens differ nowhere compared, as an integer
                # output's: they failed --min-cosine as "differs ... (agreement 1.000)".
                differs = bool((kept & ~equal).any())
            if differs:
                stats["max_abs"] = stats["max_rel"] = np.inf
            return
        e, a = expected.astype(np.float64), actual.astype(np.float64)
        kept = None
        if padded is not None:
            # Padded positions are zero in both (nothing to any sum), but a NaN or Inf only AFTER has is kept.
            hidden = np.broadcast_to(padded, e.shape) & (np.isfinite(a) | ~np.isfinite(e))
            kept = ~hidden
            e, a = np.where(hidden, 0.0, e), np.where(hidden, 0.0, a)
            if hidden.any() and name not in self.padded:
                self.padded.append(name)
        finite = np.isfinite(e) & np.isfinite(a)
        e0, a0 = np.where(finite, e, 0.0), np.where(finite, a, 0.0)
        integers = _integers(expected, actual)
        stats["integers"] &= integers or ids
        diff = integer_difference(expected, actual) if integers else np.abs(a0 - e0)
        if kept is None:
            magnitude = floored_magnitude(e0)
        else:  # the RMS of the positions compared
            diff = np.where(kept, diff, 0.0)
            magnitude = np.maximum(np.abs(e0), root_mean_square(np.abs(e0[kept])))
        rel = diff / np.maximum(magnitude, np.finfo(np.float64).tiny)
        max_abs, max_rel = float(diff.max()), float(rel.max())
        # Where either is not finite, both must be the same: NaN and NaN, or one infinity.
        unequal = ~finite & ~((np.isnan(e) & np.isnan(a)) | (e == a))
        if unequal.any():
            max_abs = max_rel = float("inf")
        stats["values"] += expected.size
        stats["compared"] += int((finite if kept is None else finite & kept).sum())
        if integers or ids:
            stats["equal"] += int(((diff == 0) if kept is None else (diff == 0) & kept).sum())
        stats["max_abs"] = max(stats["max_abs"], max_abs)
        stats["max_rel"] = max(stats["max_rel"], max_rel)
        if stats["cosine"]:
            x, y = e0.ravel(), a0.ravel()
            # The sums are kept in units of a power of two at least every value seen, so that values past
            # 1e154 do not overflow them (an infinite norm made identical outputs' cosine NaN).
            peak = max(float(np.abs(x).max()), float(np.abs(y).max()))
            if peak > stats["unit"]:
                unit = _power_of_two_above(peak)
                for key in ("dot", "xx", "yy"):
                    stats[key] *= (stats["unit"] / unit) ** 2
                stats["unit"] = unit
            if stats["unit"]:
                x, y = x / stats["unit"], y / stats["unit"]
            stats["dot"] += float(np.dot(x, y))
            stats["xx"] += float(np.dot(x, x))
            stats["yy"] += float(np.dot(y, y))
            stats["same_values"] &= bool(np.array_equal(x, y))
            if expected.ndim > 1 and expected.size > len(expected):
                x_rows, y_rows, equal = _scaled_rows(e0, a0)
                ratios = _norm_ratios(x_rows, y_rows, equal)
                # A zero sample that became nonzero has cosine 0 already (its ratio is infinite).
                held = scale_scores(np.where(np.isinf(ratios), 1.0, ratios))
                lowest = float(np.minimum(_cosines(x_rows, y_rows, equal), held).min())
                stats["worst_sample"] = lowest if stats["worst_sample"] is None else min(stats["worst_sample"], lowest)
            if stats["top1"]:
                agree = np.argmax(e, axis=-1) == np.argmax(a, axis=-1)
                rows = np.ones(agree.shape, bool) if kept is None else kept.any(axis=-1)  # a padded row is no row
                stats["agree"] += int(np.sum(agree & rows))
                stats["rows"] += int(rows.sum())

    def results(self) -> list[OutputAccuracy]:
        """Each output's accuracy over every batch added, in the order first seen."""
        results = []
        for name, stats in self._stats.items():
            cosine = top1 = norm_ratio = None
            # A cosine of one number is +-1, and of no number (all NaN or Inf) nothing: neither is reported.
            if stats["cosine"] and stats["compared"] > 1:
                norms = np.sqrt(stats["xx"]) * np.sqrt(stats["yy"])
                cosine = 1.0 if stats["same_values"] else float(stats["dot"] / norms) if norms else 0.0
                if stats["xx"]:
                    norm_ratio = float(np.sqrt(stats["yy"] / stats["xx"]))
                else:
                    norm_ratio = 1.0 if not stats["yy"] else math.inf
                if stats["top1"] and stats["rows"]:
                    top1 = stats["agree"] / stats["rows"]
            exact = stats["exact"]
            agreement = stats["equal"] / stats["compared"] if stats["integers"] and stats["compared"] else None
            max_abs = 0.0 if exact else stats["max_abs"]
            max_rel = 0.0 if exact else stats["max_rel"]
            results.append(
                OutputAccuracy(
                    name,
                    stats["dtype"],
                    stats["shape"],
                    max_abs,
                    max_rel,
                    cosine,
                    top1,
                    exact,
                    stats["samples"],
                    norm_ratio,
                    stats["worst_sample"] if cosine is not None else None,
                    agreement,
                )
            )
        return results


def _strings(values: np.ndarray) -> bool:
    """Whether ``values`` holds text (ONNX Runtime returns a string tensor as an object array of ``str``)."""
    if values.dtype.kind in "US":
        return True
    return values.dtype.kind == "O" and all(isinstance(value, (str, bytes)) for value in values.flat)


def _integers(expected: np.ndarray, actual: np.ndarray) -> bool:
    return expected.dtype.kind in "iub" and actual.dtype.kind in "iub"


def integer_difference(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """``|actual - expected|`` of integer (or bool) arrays, as float64, computed in integers: through float64
    values past 2**53 that differ by one would read as equal, and in int64 the difference may overflow."""
    e, a = (array.astype(np.int64) if array.dtype.kind == "b" else array for array in (expected, actual))
    if e.dtype.kind != a.dtype.kind or e.dtype.kind == "u":
        wide = [array.astype(object) for array in (e, a)]  # uint64 beside int64: exact in Python integers
        return np.abs(wide[1] - wide[0]).astype(np.float64)
    high, low = np.maximum(e, a).astype(np.int64), np.minimum(e, a).astype(np.int64)
    # The true difference lies in [0, 2**64): unsigned subtraction modulo 2**64 gives it exactly.
    return (high.view(np.uint64) - low.view(np.uint64)).astype(np.float64)


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
    accumulator = AccuracyAccumulator()
    accumulator.add(before, after, score_outputs)
    return accumulator.results()


def vector_cosine(x: np.ndarray, y: np.ndarray) -> float:
    """The cosine of two vectors (``row_cosines`` of one row each)."""
    return float(row_cosines(np.reshape(x, (1, -1)), np.reshape(y, (1, -1)))[0])


def row_cosines(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """The cosine of each row (along axis 0, the rest flattened) of two arrays of one shape, all rows at once:
    exactly 1 for equal rows (dot / (norm * norm) rounds below it, and a budget of 1 must pass), 1 for two zero
    rows and 0 for one, each row scaled by a power of two first (float64 values past 1e154 overflow the squares
    and below 1e-162 underflow them), in [-1, 1]; an infinity gives NaN, said as such, not warned about."""
    return _cosines(*_scaled_rows(expected, actual))


def row_norm_ratios(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Each row's norm in ``actual`` over its norm in ``expected`` (rows along axis 0, each scaled by a power of
    two first, as ``row_cosines`` does): 1 for equal rows and for two zero rows, infinity for a zero row that
    became nonzero."""
    return _norm_ratios(*_scaled_rows(expected, actual))


def _scaled_rows(expected: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both arrays' rows (along axis 0, the rest flattened) in float64, each pair of rows divided by the power of
    two above its largest magnitude (``_power_of_two_above``: exact, and squares stay in range), and which rows
    are equal."""
    x = np.asarray(expected, np.float64).reshape(len(expected), -1)
    y = np.asarray(actual, np.float64).reshape(len(actual), -1)
    equal = np.all(x == y, axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        peak = np.maximum(np.abs(x).max(axis=1, initial=0.0), np.abs(y).max(axis=1, initial=0.0))
        scalable = (peak > 0) & np.isfinite(peak)
        unit = np.where(scalable, np.ldexp(1.0, np.minimum(np.frexp(np.where(scalable, peak, 1.0))[1], 1023)), 1.0)
        return x / unit[:, None], y / unit[:, None], equal


def _cosines(x: np.ndarray, y: np.ndarray, equal: np.ndarray) -> np.ndarray:
    """``row_cosines`` of rows ``_scaled_rows`` gave."""
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        dots = np.einsum("ij,ij->i", x, y)
        cosines = np.where(norms == 0, 0.0, dots / np.where(norms == 0, 1.0, norms))
    cosines = np.where(np.isfinite(cosines), np.clip(cosines, -1.0, 1.0), cosines)
    return np.where(equal, 1.0, cosines)


def _norm_ratios(x: np.ndarray, y: np.ndarray, equal: np.ndarray) -> np.ndarray:
    """``row_norm_ratios`` of rows ``_scaled_rows`` gave."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        before, after = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
        ratios = np.where(before == 0, np.where(after == 0, 1.0, np.inf), after / np.where(before == 0, 1.0, before))
    return np.where(equal, 1.0, ratios)


def scale_scores(ratios: np.ndarray) -> np.ndarray:
    """The cosine a norm ratio ``q`` is held to: ``1 - (q - 1)**2 / 2``, in [-1, 1]. A cosine does not see an
    output scaled by ``q``; its norm then differs from the original's by ``|q - 1|`` of it, what an error at right
    angles of that relative size gives a cosine (``compare --min-cosine``'s rule for the norm)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.clip(np.nan_to_num(1.0 - (np.asarray(ratios, np.float64) - 1.0) ** 2 / 2, nan=-1.0), -1.0, 1.0)


@dataclass(frozen=True)
class AccuracyBudget:
    """How far a reduced-precision model may drift from the float original.

    ``min_cosine``: the mean per-sample cosine similarity of every float output (for an ``ArgMax``'s ids given their
    logits, ``optimizer.runtime.budget_runs``, a score read on their logits: ``paired_drift``; the fraction of agreeing
    values, for other integer and string outputs; for an output of one value per
    sample, ``1 - r**2 / 2`` of its relative error ``r``) must reach it, each sample's
    cosine held to ``1 - (q - 1)**2 / 2`` of its norm ratio ``q`` too (``scale_scores``: a
    cosine does not see an output scaled down by pruning, say); ``min_worst_cosine``:
    the same per-sample score of the worst sample of every output must reach it (a mean
    of 0.995 can hide a sentence at 0.97); ``max_error``: no output element may differ by
    more (integer ones included: a changed integer differs by at least 1, an ``ArgMax``'s ids by their logits'
    largest difference; a changed string label, which has no
    size, meets none); ``min_top1``: the share of class scores' positions whose argmax is kept or flipped at a near
    tie (``paired_drift``, ``Drift.top1``), and of an ``ArgMax``'s ids kept or flipped so (``Drift.ids_top1``), must
    reach it. Any of them
    may be set; a budget with none accepts anything. An output that turned NaN or Inf where the original has a
    number or another NaN or Inf (``paired_drift``: ``Drift(0, inf)``), or one of another shape (a detector's
    count of boxes changed: ``Drift.reshaped``), meets no budget.
    """

    min_cosine: float | None = None
    max_error: float | None = None
    min_worst_cosine: float | None = None
    # The share of class scores' positions whose argmax is kept or flipped at a near tie, or of an ArgMax's ids
    # (``Drift.top1_agreement``, the lowest output's) must reach it; a model of neither meets any.
    min_top1: float | None = None

    @property
    def bounds_anything(self) -> bool:
        """Whether any bound is set (a budget with none accepts every model)."""
        return (self.min_cosine, self.max_error, self.min_worst_cosine, self.min_top1) != (None, None, None, None)

    @property
    def bounds_cosine(self) -> bool:
        """Whether a cosine (mean or worst sample) is bounded, rather than only the largest error."""
        return self.min_cosine is not None or self.min_worst_cosine is not None

    def met(self, drift: Drift) -> bool:
        """Whether ``drift`` is within the budget. An output turned NaN or Inf where the original has a number or
        another NaN or Inf (an infinite ``max_error``) meets none, as ``compare``'s gates hold it: its cosine 0 met
        ``--min-cosine 0``."""
        if not math.isfinite(drift.max_error):
            return False
        if self.min_cosine is not None and not drift.cosine >= self.min_cosine:
            return False
        if self.min_worst_cosine is not None and not drift.worst_cosine >= self.min_worst_cosine:
            return False
        if self.max_error is not None and drift.text_changed is not None:  # a changed label has no size
            return False
        top1 = drift.top1_agreement
        if self.min_top1 is not None and top1 is not None and not top1 >= self.min_top1:
            return False
        return self.max_error is None or drift.max_error <= self.max_error

    def shortfall(self, drift: Drift) -> float:
        """``drift`` as this budget reads it, to order layers by: 1 - the cosine it bounds (the worst
        sample's where that is bounded), else the largest error."""
        if self.min_worst_cosine is not None:
            return 1.0 - drift.worst_cosine
        if self.min_cosine is not None:
            return 1.0 - drift.cosine
        if self.min_top1 is not None and drift.top1_agreement is not None:
            return 1.0 - drift.top1_agreement
        return drift.max_error

    def describe(self) -> str:
        """The budget as the command-line flags that set it."""
        parts = []
        if self.min_cosine is not None:
            parts.append(f"--min-cosine {float(self.min_cosine)!r}")  # :g showed 0.9999999 as 1
        if self.min_worst_cosine is not None:
            parts.append(f"--min-worst-cosine {float(self.min_worst_cosine)!r}")
        if self.max_error is not None:
            parts.append(f"--max-error {float(self.max_error)!r}")
        if self.min_top1 is not None:
            parts.append(f"--min-top1 {float(self.min_top1)!r}")
        return " ".join(parts) or "no budget"


@dataclass(frozen=True)
class Drift:
    """How far AFTER's float outputs are from BEFORE's: the worst output's mean per-sample cosine, the largest
    error, and the worst output's worst sample (``worst_cosine``; the mean where not given)."""

    cosine: float
    max_error: float
    # The worst output, where it holds one value per sample (its cosine is 1 - r**2 / 2): its name and ``r``.
    relative_error: tuple[str, float] | None = None
    worst_cosine: float | None = None
    # Where the samples' norm ratios lowered the worst output's score below its cosine: its name and the norm ratio
    # (after over before) of its sample farthest from 1.
    norm_ratio: tuple[str, float] | None = None
    # Where an output's shape differs from the original's (a detector's NonZero count, boxes kept by a threshold):
    # its name, the original's shape and the candidate's. Its values cannot be paired: those samples score 0.
    reshaped: tuple[str, tuple[int, ...], tuple[int, ...]] | None = None
    # A string output (a classifier's label) some of whose values changed: its name. A label has no size to hold to
    # --max-error: no such budget is met.
    text_changed: str | None = None
    # Where the worst score (or worst sample) is an output's small-scale fields' (``small_scale_fields``): their name.
    fields: str | None = None
    # The output the largest error is in: named where another output's note follows it (a VAD's cache state held
    # ``max |Δ| 1.12``, which read as its softmax probabilities' beside their note).
    max_error_output: str | None = None
    # Where the worst score is an ArgMax's class or token ids' (``budget_runs`` gave their logits): their name, how
    # many of the ids changed, how many of those at a near tie, and how many were compared. Their score is read on
    # their logits, held to the share of ids equal or flipped at a near tie (``_picks_on_logits``).
    on_logits: tuple[str, int, int, int] | None = None
    # Where the worst score is another integer or a text output's, or an ArgMax's ids (cast to float) that the rewrite
    # no longer picks by an ArgMax: its name. Its score is its share of equal values.
    shared: str | None = None
    # Where an output holds class scores (``_holds_class_scores``): the one of the lowest top-1 share, how many of
    # its positions' argmax changed, how many of those at a near tie, and how many were compared (``_tally_top1``):
    # ``AccuracyBudget.min_top1`` holds the share.
    top1: tuple[str, int, int, int] | None = None
    # The ArgMax ids (scored on their logits, ``on_logits``) of the lowest share of ids kept or flipped at a near tie,
    # counted as ``top1``: their top-1, which ``AccuracyBudget.min_top1`` holds too (``--min-top1 0.99`` was met by a
    # classifier returning its ids alone with 1 in 20 changed decisively, until a late review, s73 top1).
    ids_top1: tuple[str, int, int, int] | None = None
    # Each output the original computes as mostly one of its inputs (``with_residuals``), scored less it too: the
    # output's name and the input's. Its cosine alone measures the input (RivaGAN's frame), not what the model adds.
    scored_less: tuple[tuple[str, str], ...] = ()
    # Where the worst score (or worst sample) is an output's less its input (one of ``scored_less``): which, and the
    # lowest and highest scale that input was taken at (``with_residuals``: 1, or the original's on each run).
    added: tuple[str, str] | None = None
    added_scales: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.worst_cosine is None:
            object.__setattr__(self, "worst_cosine", self.cosine)

    @property
    def top1_agreement(self) -> float | None:
        """The lowest share of class scores' positions (``top1``) whose argmax is the original's or flipped at a near
        tie, or of an ``ArgMax``'s ids (``ids_top1``) alike; None where no output holds class scores or such ids."""
        counted = [counts for counts in (self.top1, self.ids_top1) if counts is not None and counts[3]]
        return min((_kept_share(*counts[1:]) for counts in counted), default=None)

    def __str__(self) -> str:
        said = f"cosine {cosine_text(self.cosine)}"
        if cosine_text(self.worst_cosine) != cosine_text(self.cosine):
            said += f" (worst sample {cosine_text(self.worst_cosine)})"
        said += f", max |Δ| {self.max_error:.3g}"
        noted = [named[0] for named in (self.relative_error, self.norm_ratio, self.reshaped) if named is not None]
        if self.fields is not None:
            noted.append(self.fields)
        if self.text_changed is not None:
            noted.append(self.text_changed)  # a string output's note read as holding the max |Δ| too
        noted += [named for named in (self.on_logits and self.on_logits[0], self.shared) if named]
        if self.max_error_output is not None and any(name != self.max_error_output for name in noted):
            said += f" (in {self.max_error_output})"
        if self.relative_error is not None:
            name, error = self.relative_error
            said += f" ({name}, one value per sample: relative error {error:.3g})"
        if self.norm_ratio is not None:
            name, ratio = self.norm_ratio
            said += f" ({name} scaled: a sample's norm {ratio_text(ratio)}x the original's, scored as a cosine)"
        if self.reshaped is not None:
            name, before, after = self.reshaped
            said += (
                f" ({name} is {list(after)} where the original's is {list(before)}: values that cannot be paired, "
                "scored 0)"
            )
        if self.text_changed is not None:
            said += f" ({self.text_changed}: strings changed, which no --max-error holds)"
        if self.fields is not None and (self.norm_ratio is None or self.norm_ratio[0] != self.fields):
            said += f" ({self.fields}: values over 100x smaller than the rest of that output, scored on their own)"
        if self.on_logits is not None:
            name, count, near, compared = self.on_logits
            said += (
                f" ({name}: ArgMax ids, scored on the logits they pick among, centred, as 1 - r²/2 of their relative "
                f"error r, and by the share of ids equal or flipped at a near tie; {count} of {compared} ids changed, "
                f"{near} at a near tie)"
            )
        if self.ids_top1 is not None and self.ids_top1[1] and self.ids_top1[:1] != (self.on_logits or ())[:1]:
            name, changed, near, compared = self.ids_top1
            share = share_text(_kept_share(changed, near, compared))
            said += f" ({name}: ArgMax ids, top-1 {share}; {changed} of {compared} changed, {near} at a near tie)"
        if self.shared is not None:
            said += f" ({self.shared}: scored by its share of equal values, not a cosine)"
        if self.added is not None:
            name, source = self.added
            # At the scale the original gives the input (``with_residuals``): named ``y − x`` alone, a blend's part
            # (``0.95 x + d`` less ``0.95 x``) read as if less ``x``, whose cosine a user would find far higher
            # (review s77 regress).
            said += (
                f" ({residual_name(name, source, self.added_scales)}: what {name} adds to input {source}, which it "
                "mostly is, scored on its own)"
            )
        if others := [pair for pair in self.scored_less if pair != self.added]:
            said += " (" + ", ".join(f"{name} scored less input {source} too" for name, source in others) + ")"
        if self.top1 is not None:
            name, changed, near, compared = self.top1
            own = share_text(_kept_share(changed, near, compared) if compared else None)  # not the ids' beside them
            said += (
                f" ({name}: class scores, top-1 {own}, the share of positions whose argmax is kept or flipped at a "
                f"near tie; {changed} of {compared} changed, {near} at a near tie)"
            )
        return said


def cosine_text(cosine: float, decimals: int = 4) -> str:
    """A cosine with ``decimals`` decimals, or as many more (up to ten) as show two digits of ``1 - cosine``,
    rounded down: a cosine that misses a budget never reads as the budget (0.99896 is "0.9989", not
    "0.9990"; 0.99984 is "0.99984", not "0.9998"). Equal vectors have cosine exactly 1 (``vector_cosine``)."""
    cosine = float(cosine)
    if not math.isfinite(cosine):
        return str(cosine)
    gap = 1.0 - cosine
    if 0 < gap < 10.0 ** (1 - decimals):
        decimals = min(10, max(decimals, math.ceil(-math.log10(gap)) + 1))
    return str(Decimal(repr(cosine)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_FLOOR))


def share_text(share: float | None) -> str:
    """A fraction of values or rows that agree (``agreement``, ``top1_agreement``) to three decimals, or as many more
    (up to ten) as keep one below 1 from reading 1, and a dash for None: one label in 10,000 changed read "1.000"
    (``:.3f``) beside a gate that failed on it."""
    if share is None:
        return "—"
    text = f"{share:.3f}"
    for digits in range(4, 11):
        if not (share < 1 and float(text) >= 1):
            break
        text = f"{share:.{digits}f}"
    return text


def ratio_text(ratio: float) -> str:
    """A norm ratio with three significant digits, or as many more (up to ten) as show two digits of its distance
    from 1: a sample scaled to 0.9996 of its norm is not "1x" (``:.3g`` said so beside "scaled")."""
    ratio = float(ratio)
    gap = abs(ratio - 1.0)
    digits = 3
    if math.isfinite(ratio) and 0 < gap < 0.1:
        digits = min(10, max(digits, math.ceil(-math.log10(gap)) + 2))
    return f"{ratio:.{digits}g}"


# The keys under which an output computed by an ``ArgMax`` carries the float values it picks among (``logits_key``)
# and, where it offsets, scales or looks them up, the ids it picks (``picks_key``); a TopK of k > 1's ranks
# (``ranks_key``).
_LOGITS_SUFFIX = "\x00logits"
_PICKS_SUFFIX = "\x00picks"
_RANKS_SUFFIX = "\x00ranks"
# Between an output's name and an input's, the key of the output less that input (``residual_key``); after them, the
# key of the output less the input as it is, where it differs (``residual_key(..., as_is=True)``), less it at one scale
# where a scale per channel leaves nothing (``residual_key(..., spread=True)``), and of the scale the original's run
# gives the input (``residual_scale_key``).
_LESS = "\x00less\x00"
_AS_IS = "\x00as is"
_SPREAD = "\x00spread"
_SCALE = "\x00scale"


def logits_key(name: str) -> str:
    """The key, beside output ``name`` (an ``ArgMax``'s class or token ids) in one run's outputs, of the float values
    its ``ArgMax`` picks among, laid out as ``name`` is with the classes along one more last axis
    (``optimizer.runtime.budget_runs``): the budget scores the ids on them (``paired_drift``)."""
    return name + _LOGITS_SUFFIX


def picks_key(name: str) -> str:
    """The key, beside output ``name`` (an ``ArgMax``'s ids offset, scaled or looked up: 1-based labels ``ids + 1``)
    in one run's outputs, of the ids its ``ArgMax`` picks, laid out as ``name`` is (``optimizer.runtime.budget_runs``):
    which of its logits each picks (``paired_drift``)."""
    return name + _PICKS_SUFFIX


def ranks_key(name: str) -> str:
    """The key, beside output ``name`` (a sorted ``TopK`` of k > 1's indices) in one run's outputs, of each index's
    rank among the k, laid out as ``name`` is (``optimizer.runtime.budget_runs``): the id at rank j is the j-th
    largest of its logits (``paired_drift``)."""
    return name + _RANKS_SUFFIX


def residual_key(name: str, input_name: str, *, as_is: bool = False, spread: bool = False) -> str:
    """The key, beside output ``name`` in one run's outputs, of that output less input ``input_name``, which the
    original's output mostly is (``with_residuals``), at the scale the original gives the input (``as_is``: at 1;
    ``spread``: at one scale, where the scale per channel taken leaves nothing): the part the model adds, scored on its
    own (``paired_drift``)."""
    return name + _LESS + input_name + (_AS_IS if as_is else _SPREAD if spread else "")


def residual_scale_key(name: str, input_name: str, *, spread: bool = False) -> str:
    """The key, beside output ``name`` in one run's outputs, of the scale (a float, or one per channel laid out as the
    output is, ``_channel_scales``) at which ``residual_key`` takes input ``input_name`` on that run
    (``with_residuals``; ``spread``: the one scale of ``residual_key(..., spread=True)``)."""
    return residual_key(name, input_name, spread=spread) + _SCALE


def residual_name(name: str, input_name: str, scales: tuple[float, float] = (1.0, 1.0)) -> str:
    """How output ``name`` less input ``input_name`` (``with_residuals``) is named where it is scored: ``y − x``, or
    with the scale the input was taken at where it is not 1 to three digits (``y − 0.95·x``; ``scales``, the lowest
    and the highest of the runs', where they differ: ``y − (0.948 to 0.952)·x``)."""
    low, high = (f"{scale:.3g}" for scale in scales)
    if low == high == "1":
        return f"{name} − {input_name}"
    return f"{name} − {low}·{input_name}" if low == high else f"{name} − ({low} to {high})·{input_name}"


def logits_owner(key: str) -> str | None:
    """The output whose logits, picked ids or ranks ``key`` holds (``logits_key``, ``picks_key``, ``ranks_key``), or
    whose part added to an input it holds (``residual_key``), or None for an output's own key."""
    if _LESS in key:
        return key.split(_LESS, 1)[0]
    suffixes = (_LOGITS_SUFFIX, _PICKS_SUFFIX, _RANKS_SUFFIX)
    suffix = next((suffix for suffix in suffixes if key.endswith(suffix)), None)
    return None if suffix is None else key[: -len(suffix)]


def samples_first(outputs: Mapping[str, Any], axes: Mapping[str, int | None]) -> dict[str, Any]:
    """``outputs`` with each output named in ``axes`` (``optimizer.samples.output_sample_axes``) moved so its
    samples lie along axis 0, where every per-sample figure reads them; an axis of None (a model with no batch: the
    run is one sample) puts the whole output in one sample along a new axis 0."""
    moved = {}
    for name, value in outputs.items():
        owner = logits_owner(name) or name  # an ArgMax output's logits (``logits_key``) are laid out as it is
        axis = axes.get(owner, 0)
        if owner in axes and axis is None and isinstance(value, np.ndarray):
            moved[name] = value[np.newaxis]
        elif owner in axes and axis is not None and np.ndim(value) > axis:
            moved[name] = np.moveaxis(np.asanyarray(value), axis, 0)
        else:
            moved[name] = value
    return moved


# An output the original computes as mostly one of its inputs of as many values (a residual ``y = x + d``: a
# watermark encoder's frame plus its mark, a denoiser, a transformer layer exported alone), its distance from that
# input within this fraction of its norm on every run, is scored less that input too: RivaGAN's encoder output read
# cosine 0.99996 after int8 while its watermark, 1 % of it, read 0.965 (worst 0.891), and a rewrite that dropped the
# mark (output = input) would have met --min-cosine 0.99 (review s76 resid). Half: dropping a part of p of the
# output (at right angles) leaves its cosine at sqrt(1 - p**2), 0.995 at 10 %, 0.954 at 30 %, 0.87 at 50 %, so a
# larger part's loss is below the default floor of 0.9 in the output's own score; at 10 % a rewrite that dropped a
# quarter of the output met --min-cosine 0.95 (review s76 late76j).
_MOSTLY_INPUT = 0.5
# An output no further from its input than float32 rounding of it (an Identity, a Cast back and forth) adds nothing
# to score: an fp16 rewrite's rounding of an output that is its input would read a cosine of 0.
_ADDED_FLOOR = 1e-6

# An input of more axes than this is read in an output's shape only reshaped: its axes' orders grow as a factorial.
_PERMUTED_AXES = 5


def _views(x: np.ndarray, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """``x`` read in an output's ``shape``: reshaped (``y [batch, 48]`` from ``x [batch, 3, 16]``), and each order of
    its axes that gives that shape (an output laid out ``[batch, 8, 8, 3]`` from ``x [batch, 3, 8, 8]``, or its height
    and width swapped: left unmatched, a rewrite dropping what such an output adds to its input, 1 % of it, met
    --min-cosine 0.99, review s77 late77b)."""
    yield x.reshape(shape)
    if x.ndim == len(shape) and x.ndim <= _PERMUTED_AXES:
        for order in itertools.permutations(range(x.ndim)):
            if order != tuple(range(x.ndim)) and tuple(x.shape[axis] for axis in order) == tuple(shape):
                yield np.transpose(x, order)


def _far(output: np.ndarray, view: np.ndarray, norm: float) -> bool:
    """Whether ``view`` (an input read in ``output``'s shape, ``_views``) is provably further than ``_MOSTLY_INPUT``
    of ``norm`` (``output``'s) from ``output`` over any positions that leave out only ``output``'s zeros (padding),
    by one dot product: that distance is at least ``|norm - output·view / norm|`` (Cauchy–Schwarz). Every float input
    of an output's size was read against every such output in full, each order of its axes that fits too: a model of 50
    float inputs and 50 outputs of their size (a cache updated in place, a state per layer) spent 13 s a batch there
    (review s77 late77g). NaN or Inf, or an output of zeros, is not far: read in full. Far only past the rounding of
    the sums (``n`` eps of the norm, eight times over): at the edge, an output twice its input (``x + x``), the full
    comparison's distance is exactly half the output's norm, near, and the dot product's rounding put the bound a few
    eps past it: 36 of 500 such runs lost the parts the full comparison scores (review s77 late77i)."""
    if not (norm > 0 and math.isfinite(norm)):
        return False
    axes = list(range(output.ndim))  # einsum reads the view where it lies: no copy of its axes' other order
    bound = abs(norm - float(np.einsum(output, axes, view, axes, [])) / norm)
    slack = 8 * output.size * np.finfo(np.float64).eps
    return math.isfinite(bound) and bound > _MOSTLY_INPUT * norm * (1 + slack)


def with_residuals(
    inputs: Mapping[str, Any],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    unchanged: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``before`` and ``after`` (two models' outputs, run on ``inputs``) with, beside each float output that the
    original's run ``before`` puts within ``_MOSTLY_INPUT`` of its norm of a float input of as many values, read in
    the output's shape (the same shape, or a ``Reshape``/``Flatten`` of it: ``y [batch, 48]`` from ``x [batch, 3,
    16]``, review s76 late76j, or its axes in another order, ``_views``; the nearest, where several are), that output
    less the input at the scale the original's run gives it (``a``, the least-squares scale of the input in the
    original's output; 1 for ``x + d``, 0.95 for an alpha blend ``0.95 x + d``; one per channel where that leaves at
    most half of what one leaves, ``_channel_scales``: ``w_c x + d``, a LayerScale) in both (``residual_key``): the part
    the model adds, which ``paired_drift`` scores on its own where every run has it, where further than
    ``_ADDED_FLOOR`` of the output from ``a x``, and then that scale (``residual_scale_key``). Where ``a x`` is further
    than ``_ADDED_FLOOR`` of the output from ``x``, the output less ``x`` as it is too (``residual_key(...,
    as_is=True)``, where further than that from ``x``): a gain (``y = 1.11 x``) adds ``0.11 x`` to its input, nothing
    to ``a x``. Where scales per channel leave nothing (``w_c x``; at a batch of one, a gate ``g_c x``), the output less
    the input at one scale too (``residual_key(..., spread=True)``, where further than ``_CHANNEL_SPREAD`` of the output
    from it): the channels' spread, which a rewrite replacing the gate by a constant drops, read in ``after`` at its
    own scales per sample and channel (``_rescaled``).
    Given ``unchanged``, a run on which the original adds nothing so (an output within ``_ADDED_FLOOR`` of its input
    scaled: a batch of gates of 0) gives that part as zeros in both, which ``paired_drift`` scores on no sample but
    counts as a run that has it: the part is scored on the other runs (left out, a batch to which the original added
    nothing left it unscored on every batch, review s77 xres).
    Found from the values, not from how the graph spells the sum (``Add(x, d)``, ``Add(d, x)``, ``Sub``, a ``Mul`` by
    ``1 + d``). Positions where both outputs are exactly 0 (padding ``optimizer.padding.unpadded`` zeroed) add 0; a
    sample whose output is its input (a gate of 0) is no sample of the part (``paired_drift``, ``_rows_adding``), but
    single positions so (a ReLU's zeros on the added branch) are scored as any other."""
    floats = {
        name: np.asarray(value, np.float64)
        for name, value in inputs.items()
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size
    }
    if not floats:
        return dict(before), dict(after)
    added_before, added_after = dict(before), dict(after)
    for name, expected in before.items():
        actual = after.get(name)
        if (
            logits_owner(name) is not None
            or not isinstance(expected, np.ndarray)
            or np.ma.isMaskedArray(expected)
            or expected.dtype.kind != "f"
            or not isinstance(actual, np.ndarray)
            or actual.shape != expected.shape
        ):
            continue
        e, a = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
        # Positions both runs return as exactly 0 (padding ``unpadded`` zeroed) add 0 and measure no distance: counted,
        # a padded batch's input there put the output past ``_MOSTLY_INPUT`` of it, and since a part some run lacks
        # is not scored, one padded sample left a rewrite dropping the added part unscored (review s76 regress2).
        padded = (e == 0) & (a == 0)
        with np.errstate(invalid="ignore", over="ignore"):
            norm = float(np.linalg.norm(e))
            # Each input read in the output's shape: as it is laid out, or, where that is not mostly the output, the
            # nearest order of its axes.
            views: dict[str, tuple[float, np.ndarray]] = {}
            for source, x in floats.items():
                for view in _views(x, e.shape) if x.size == expected.size else ():
                    if _far(e, view, norm):
                        continue
                    distance = float(np.linalg.norm(np.where(padded, 0.0, e - view)))
                    if source not in views or distance < views[source][0]:
                        views[source] = (distance, view)
                    if distance <= _MOSTLY_INPUT * norm:
                        break
        distances = {source: distance for source, (distance, _) in views.items()}
        near = {source: d for source, d in distances.items() if math.isfinite(d) and d <= _MOSTLY_INPUT * norm}
        if not near or not math.isfinite(norm):
            continue
        source = min(near, key=near.__getitem__)
        x = views[source][1]
        # A sample the original adds nothing to (its value is the input's: a gate of 0) is no sample of the part
        # (``paired_drift``, ``_rows_adding``): against a rewrite's rounding it read a cosine of 0, and an fp16-like
        # rewrite rolled back (review s76 late76j). Single positions where it is the input's are not left out: zeroed
        # in both runs, a rewrite dropping a ReLU on the added branch (``x + c`` for ``x + relu(c)``, doubling what the
        # model adds) changed it only there, and was verified at --min-cosine 0.99 (review s77 late77g).
        zeroed = padded
        # The input at the scale the original gives it: less ``x`` alone, ``0.95 x + d`` left mostly ``-0.05 x``,
        # which a rewrite dropping ``d`` keeps (it read 0.981 and met --min-cosine 0.98, review s77 xres). The same
        # ``a`` is taken from the rewrite's output, so a rewrite that changes the blend is seen too.
        with np.errstate(invalid="ignore", over="ignore"):
            kept = np.where(zeroed, 0.0, x)
            square = float(np.sum(kept * kept))
            scale = float(np.sum(kept * e)) / square if square > 0 else 1.0
            scale = scale if math.isfinite(scale) else 1.0
            scaled = x * scale
            part = float(np.linalg.norm(np.where(zeroed, 0.0, e - scaled)))
        named_at: float | np.ndarray = scale
        gap = abs(scale - 1.0) * math.sqrt(square)  # how far the input taken is from the input as it is
        spread: list[tuple[str, np.ndarray, float, float]] = []  # less one scale, where one per channel leaves nothing
        if part > _ADDED_FLOOR * norm and (fitted := _channel_scales(e, kept, part)) is not None:
            # A scale per channel (``w_c x + d``, LayerScale): less one scale, the part was mostly ``(w_c - a) x``,
            # which a rewrite dropping ``d`` keeps (it met the default floor until review s78 xfix78).
            one, at_one = part, scaled
            named_at, squares = fitted
            scaled = x * named_at
            with np.errstate(invalid="ignore", over="ignore"):
                part = float(np.linalg.norm(np.where(zeroed, 0.0, e - scaled)))
                gap = math.sqrt(float(np.sum((named_at - 1.0) ** 2 * squares)))
            if part <= _ADDED_FLOOR * norm and one > _CHANNEL_SPREAD * norm:
                # Nothing left less the scales per channel (``w_c x``, or at a batch of one a gate of each sample and
                # channel, ``g_c x``, which no fit tells from it): the channels' spread, ``(w_c - a) x``, is what is
                # scored less one scale, as a part of its own (a gate replaced by a constant kept ``(g_c - 1) x``,
                # scored only less the input as it is, and met the default floor, 0.957, until review s79 xgate).
                # Not the part less the scales (empty here, a part on runs where the model adds ``d``): a batch gated
                # off would score a rewrite dropping ``d`` 1 there.
                spread.append((residual_key(name, source, spread=True), at_one, one, scale))
        if not math.isfinite(part):
            continue
        # Less the input as it is too, where that differs from less ``a x`` by more than float32 rounding of the
        # output, the worse counting (``paired_drift``): a gain (``y = 1.11 x``) is its input at the fitted scale and
        # adds nothing less ``a x``, so a rewrite dropping the gain (``y = x``) read only its norm ratio, 0.995, and
        # met the default floor; less ``x`` its part is ``0.11 x``, which that rewrite drops (review s77 late77e).
        parts = [(residual_key(name, source), scaled, part, named_at)]
        if gap > _ADDED_FLOOR * norm:
            with np.errstate(invalid="ignore", over="ignore"):
                unit = float(np.linalg.norm(np.where(zeroed, 0.0, e - x)))
            parts.append((residual_key(name, source, as_is=True), x, unit, None))
        for key, taken, size, taken_at in parts + spread:
            if not math.isfinite(size):
                continue
            if size <= _ADDED_FLOOR * norm:
                if unchanged:  # nothing added on this run: a run that has the part, no sample of it scored
                    added_before[key], added_after[key] = np.zeros_like(e), np.zeros_like(e)
                continue
            added_before[key] = np.where(zeroed, 0.0, e - taken)
            # The channels' spread is read in the rewrite's output at its own scales per sample and channel
            # (``_rescaled``): an error that no such scale makes (int8's rounding of the input, 0.9 % of the output) is
            # the whole output's to score; beside a spread of 1.1 % it read 0.78 and rolled a dynamic int8 rewrite back
            # (review s79 late79a). A gate or scales flattened, halved or permuted are such scales, and kept.
            read = _rescaled(np.where(zeroed, 0.0, a), kept, named_at) if key.endswith(_SPREAD) else a
            added_after[key] = np.where(zeroed, 0.0, read - taken)
            if taken_at is not None:  # the scale its part is named with
                scale_key = residual_scale_key(name, source, spread=key.endswith(_SPREAD))
                added_before[scale_key] = added_after[scale_key] = taken_at
    return added_before, added_after


# A scale per channel (``_channel_scales``) is fitted only along an axis whose channels each hold at least this many
# values (a fit of one value per channel is exact, whatever the model adds), and taken only where it leaves at most
# this fraction of what one scale leaves: what a model adds that is not its input scaled per channel (a convolution,
# an attention's output) loses about one value in as many as a channel holds to the fit, far from half.
_CHANNEL_VALUES = 16
_CHANNEL_LEFT = 0.5
# A scale per channel that leaves nothing (``w_c x``, or at a batch of one a gate ``g_c x``) leaves the channels'
# spread, what one scale leaves (``(w_c - a) x``), scored as a part of its own where more than this fraction of the
# output (``with_residuals``). Below it float16's rounding is a large share of it: scales within 1e-3 of their mean
# read 0.978 against an fp16 rewrite, 0.9999 at 1.5e-2; a rewrite flattening so small a spread loses at most 1 % of the
# output. Read at the rewrite's own scales per channel (``_rescaled``) that is its rounding of the scales themselves:
# lower guards were measured no better (fp16 0.98 at 1e-3, int8 0.82 at 3e-3, review s79 late79a).
_CHANNEL_SPREAD = 1e-2


def _rescaled(output: np.ndarray, kept: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """Input ``kept`` (read in ``output``'s shape, positions left out 0 in both) at its least-squares scale in
    ``output`` for each sample (along axis 0) and each channel along the axis ``channels`` (scales per channel laid
    out as ``output`` is, ``_channel_scales``) varies along: what of ``output`` the input so scaled explains."""
    axes = tuple(axis for axis in range(1, output.ndim) if channels.shape[axis] == 1)
    with np.errstate(invalid="ignore", over="ignore"):
        square = np.sum(kept * kept, axis=axes, keepdims=True)
        product = np.sum(kept * output, axis=axes, keepdims=True)
        return kept * np.divide(product, square, out=np.zeros_like(square), where=square > 0)


def _channel_scales(e: np.ndarray, kept: np.ndarray, part: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The least-squares scale of input ``kept`` (read in output ``e``'s shape, positions left out 0 in both) in ``e``
    for each channel along axis 1 (``[batch, C, H, W]``), the last (``[batch, L, C]``) or another after the first
    (``[batch, H, C, W]``: not tried, a rewrite dropping ``d`` met the default floor until review s78 late78a), and the
    input's square norm in each, shaped to broadcast over ``e``, where that leaves at most ``_CHANNEL_LEFT`` of
    ``part`` (what one scale leaves) and less than the other axes do; else None. Where each sample (along axis 0)
    holds ``_CHANNEL_VALUES`` values of each channel too, a scale for each sample and channel where that leaves at most
    ``_CHANNEL_LEFT`` of what the one taken leaves (a squeeze-and-excitation gain, ``g_bc x + d``: one sample's is
    fitted per channel, and a batch of two or more left ``(g_bc - a_c) x``, which a rewrite dropping ``d`` kept,
    review s78 late78a). A part that is itself the input scaled per channel (``x + (w_c - 1) x``) cannot be told from
    such a scale: it is the input at that scale and adds nothing, and is scored less the input as it is
    (``with_residuals``), as a gain is."""
    found: tuple[float, np.ndarray, np.ndarray] | None = None
    axes = list(range(e.ndim))
    whole = float(np.einsum(e, axes, e, axes, []))
    for axis in dict.fromkeys((1, e.ndim - 1, *range(2, e.ndim - 1))) if e.ndim > 1 else ():
        if e.shape[axis] < 2 or e.size < _CHANNEL_VALUES * e.shape[axis]:
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            # Per sample and channel (one pass each), summed over the samples for per channel.
            squares = np.einsum(kept, axes, kept, axes, [0, axis])
            products = np.einsum(kept, axes, e, axes, [0, axis])
        reference = part
        each = len(e) > 1 and e[:1].size >= _CHANNEL_VALUES * e.shape[axis]
        fits = [(squares.sum(axis=0), products.sum(axis=0))] + ([(squares, products)] if each else [])
        for square, product in fits:
            with np.errstate(invalid="ignore", over="ignore"):
                scales = np.divide(product, square, out=np.ones_like(square), where=square > 0)
                # What the fit leaves, from the sums (``|e|² − Σ p_c² / q_c``): no more passes over the output.
                left = math.sqrt(max(whole - float(np.sum(product * scales)), 0.0))
            if not (np.isfinite(scales).all() and math.isfinite(left)) or left > _CHANNEL_LEFT * reference:
                continue
            if scales.ndim == 2 and left <= _ADDED_FLOOR * math.sqrt(whole):
                # Nothing left: gains of each sample's own are what the output computes (a squeeze-and-excitation
                # gate, ``g_bc x``); fitted away, a gate replaced by its batch's mean was scored only less the input
                # as it is, and met the default floor (0.956, review s78 late78c). A scale per channel so exact is the
                # model's own (a LayerScale, ``w_c x``, a batch whose gates of ``d`` are 0): taken, that run adds
                # nothing.
                continue
            reference = left
            if found is None or left < found[0]:
                shape = [1] * e.ndim
                shape[axis] = e.shape[axis]
                if scales.ndim == 2:
                    shape[0] = e.shape[0]
                found = (left, scales.reshape(shape), square.reshape(shape))
    return None if found is None else found[1:]


def _part_name(name: str, input_name: str, as_is: bool, spread: bool = False) -> str:
    """The name ``paired_drift`` scores output ``name`` less input ``input_name`` under (``with_residuals``), at the
    scale the original gives the input, ``as_is`` or at one scale (``spread``); ``residual_name`` shows it."""
    return residual_name(name, input_name) + (" as is" if as_is else " spread" if spread else "")


def _rows_adding(part: np.ndarray, output: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
    """Which samples (rows along axis 0) of ``part``, what the original's ``output`` adds to an input it mostly is
    (``with_residuals``), hold any: not zeros (padding, or the original's output its input there at a scale of 1),
    nor, where every such row shares one, within ``_ADDED_FLOOR`` of that row of the output the input at another
    scale than the run's (samples of an alpha blend ``0.95 x + g d`` whose gate is 0). Such a row's part is what is
    left of fitting one scale to the whole run (``(0.95 - a) x``), about 1e-3 of the output where ``d`` is at right
    angles to ``x``: against an fp16 rewrite's rounding it read a cosine of -1, and rolled the rewrite back (review s77
    late77b). Given ``channels`` (the scales per channel the part was taken at, ``_channel_scales``, laid out as
    ``output`` is), a scale per channel alike (``(w_c - a_c) x``, gates of 0 in ``w_c x + g d``). Where a row holds
    fewer than ``_CHANNEL_VALUES`` values of each channel (``[batch, C]``), a row's own fit per channel is exact
    whatever it adds: the scales are then those of the row adding least, and rows within ``_ADDED_FLOOR`` of them (two
    or more) add nothing (kept, a gated row of ``w_c x + g d`` laid out ``[32, 8]`` read 0.92 against an fp16
    rewrite, review s78 late78a)."""
    axis = _channel_axis(channels, part) if channels is not None else None
    few = axis is not None and part[:1].size < _CHANNEL_VALUES * part.shape[axis]
    if axis is not None:
        part, output = np.moveaxis(part, axis, 1), np.moveaxis(output, axis, 1)
    width = part.shape[1] if axis is not None else 1
    part, output = part.reshape(len(part), width, -1), output.reshape(len(output), width, -1)
    scaled = output - part  # the input at the run's scale (or as it is, where the part was zeroed)
    square = np.sum(scaled * scaled, axis=2)
    fit = np.divide(np.sum(part * scaled, axis=2), square, out=np.zeros(square.shape), where=square > 0)
    rows = (part != 0).reshape(len(part), -1).any(axis=1)
    if few and rows.any():  # the scales of the row whose part is least of its output
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.linalg.norm(part.reshape(len(part), -1), axis=1) / np.linalg.norm(
                output.reshape(len(output), -1), axis=1
            )
        fit = np.broadcast_to(fit[np.argmin(np.where(rows & np.isfinite(share), share, np.inf))], fit.shape)
    left = np.linalg.norm((part - fit[:, :, np.newaxis] * scaled).reshape(len(part), -1), axis=1)
    nothing = rows & (left <= _ADDED_FLOOR * np.linalg.norm(output.reshape(len(output), -1), axis=1))
    if few and nothing.sum() < 2:  # one row alone matches its own scales: nothing shared
        nothing[:] = False
    # Only where those rows share one scale, the model's (a blend's alpha): a scale of each sample's own is a gain
    # computed from it (``x (1 + g)``), what the model adds; left out, a rewrite dropping it read only its norm ratio.
    if nothing.any() and np.ptp(fit[nothing], axis=0).max() <= _ADDED_FLOOR:
        rows &= ~nothing
    return rows


def _channel_axis(channels: np.ndarray, part: np.ndarray) -> int | None:
    """The axis of ``part`` (rows along axis 0) along which ``channels`` (scales per channel laid out as it is) vary.
    None where they vary along the rows (a sequence-major output's batch) or no such axis."""
    if channels.ndim != part.ndim or channels.shape[0] != 1:
        return None
    axes = [axis for axis, size in enumerate(channels.shape) if size > 1]
    return axes[0] if len(axes) == 1 else None


def output_drift(
    before: Sequence[Mapping[str, Any]],
    after: Sequence[Mapping[str, Any]],
    batches: Sequence[Mapping[str, Any]] | None = None,
    model: Any = None,
) -> Drift:
    """Compare runs of two models on the same batches of inputs (one mapping of outputs per batch).

    Each float output's cosine is taken per sample (row along axis 0, flattened) and
    averaged over all samples; an integer or boolean output (class ids, token ids)
    counts by the fraction of its values that agree, and its largest difference counts in
    the error (an ``ArgMax``'s ids given their logits, by the logits: ``paired_drift``); class scores' samples are
    held to their top-1 share too (``paired_drift``; given ``model``, the outputs its graph normalizes,
    ``optimizer.class_scores.class_score_outputs``, beside those named like scores). The cosine of a single
    number is +-1, so an output of one value per sample
    (a score, a regression; ``[batch, 1]`` or ``[batch]``) is scored over all samples at
    once by its relative error ``r = |after - before| / |before|`` as ``1 - r**2 / 2``,
    the cosine an error of that size at right angles would give (the rule of
    ``compare --min-cosine`` for an output of one value). The result is the minimum over
    outputs, so one damaged output is not hidden by good ones. Comparing nothing is
    an error, not a perfect score. Given ``batches`` and ``model``, an output the original computes as mostly one of
    its inputs is scored less that input too (``with_residuals``): its own cosine is the input's.
    """
    pairs = zip(before, after)
    score_outputs = elsewhere = ids = frozenset()
    if batches is not None and model is not None:
        # Imported here: a pass used alone in another PassManager loads no more of graphopt than it needs.
        from optimizer.class_scores import argmax_outputs, class_score_layout
        from optimizer.padding import unpadded
        from optimizer.samples import output_sample_axes

        axes = output_sample_axes(model)
        pairs = (
            (samples_first(b, moved := axes.in_run(batch, b)), samples_first(a, moved))
            for batch, run in zip(batches, unpadded(model, batches, pairs))
            for b, a in [with_residuals(batch, *run, unchanged=True)]  # what an output adds to an input it mostly is
        )
        score_outputs, elsewhere = class_score_layout(model)
        ids = argmax_outputs(model)
    return paired_drift(pairs, score_outputs, elsewhere, ids)


def _kept_row_shares(agree: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Each sample's (row along axis 0) share of equal values among its ``kept`` positions; a row with none kept
    (all padding) is no sample."""
    if agree.ndim <= 1:
        return agree[kept].astype(float)
    agree, kept = agree.reshape(len(agree), -1), kept.reshape(len(kept), -1)
    counts = kept.sum(axis=1)
    return (agree & kept).sum(axis=1)[counts > 0] / counts[counts > 0]


def paired_drift(
    runs: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
    score_outputs: frozenset[str] = frozenset(),
    elsewhere: frozenset[str] = frozenset(),
    ids: frozenset[str] = frozenset(),
) -> Drift:
    """``output_drift`` over ``(before, after)`` pairs of outputs, read one pair at a time: a stream of
    runs is never held (only each sample's score is kept).

    ``worst_cosine`` is the lowest per-sample score of any output: a float output's lowest
    row cosine, an integer output's lowest fraction of agreeing values in one row (along
    axis 0), and for an output of one value per sample its score over all samples (no
    single number has a cosine; its relative error over all samples is what is bounded).

    A float output of class scores (``_holds_class_scores``: named in ``score_outputs``, or named like scores or
    logits and not in ``elsewhere``, normalized along another axis) is scored by its cosine as any other, and its
    positions whose argmax is the original's or flipped at a near tie are counted (``_tally_top1``): ``Drift.top1``
    says how many changed, ``AccuracyBudget.min_top1`` holds the share.

    An output of an ``ArgMax``'s class or token ids whose logits both runs give beside it (``logits_key``,
    ``optimizer.runtime.budget_runs``) is scored on them instead (``_picks_on_logits``), integer or cast to float,
    offset or scaled by a constant or not (``_picked_ids``); where only the original's run gives them or the ids come
    out of their picks otherwise (the rewrite computes the ids otherwise), by its share of equal values, as is any
    output ``ids`` names (``optimizer.class_scores.argmax_outputs``: a ``TopK``'s indices cast to float) that no
    logits score.

    A float output whose part added to an input (``residual_key``, ``with_residuals``) every run gives beside it is
    scored as it is and that part as an output of its own (``residual_name``), and so is the part less the input as it
    is, or at one scale where scales per channel leave nothing (``with_residuals``), where runs give it (a run without
    the first has the two within float32 rounding), the worst counting:
    ``Drift.scored_less`` names each, ``Drift.added`` the one of the worst score and ``Drift.added_scales`` the scales
    it took the input at (``residual_scale_key``). A sample whose part is zeros in both runs (the original adds nothing
    there), or the input at one scale every such sample shares (``_rows_adding``), is no sample of it; nor, less the
    input as it is, one within ``_ADDED_FLOOR`` of it.
    """
    scores: dict[str, list[float]] = {}
    # The lowest per-sample score of each output (rows along axis 0).
    lowest: dict[str, float] = {}
    # Outputs of one value per sample: squared norms of the originals and of the errors, summed over runs.
    single: dict[str, list[float]] = {}
    # Float outputs scored by rows: their plain row cosines, and the norm ratio of the row farthest from 1.
    plain: dict[str, list[float]] = {}
    scales: dict[str, float] = {}
    # Outputs' small-scale fields scored on their own (``small_scale_fields``), by the name they are scored under.
    split: set[str] = set()
    # Float outputs' runs scored, and the parts they add to an input (``with_residuals``): each part's output, input,
    # runs and whether it is less the input as it is; a part some run lacks (the output mostly its input on some runs
    # only) is not scored. The lowest and highest scale each part less the input scaled took it at.
    runs_of: dict[str, int] = {}
    residuals: dict[str, tuple[str, str, int, bool]] = {}
    taken_at: dict[str, list[float]] = {}
    max_error = 0.0
    max_error_output = None
    reshaped = changed = None
    # ArgMax outputs scored on their logits: the number of ids changed and compared, by name.
    picked: dict[str, list[int]] = {}
    # Integer and text outputs scored by their share of equal values.
    by_share: set[str] = set()
    # Class scores (``_holds_class_scores``): positions whose argmax changed, of those at a near tie, compared.
    top1: dict[str, list[int]] = {}
    for expected_run, actual_run in runs:
        for name, expected in expected_run.items():
            if logits_owner(name) is not None:  # scored with the ids they give
                continue
            # An integer or text output's padded positions (``optimizer.padding.unpadded`` masks them): left out.
            hidden = np.ma.getmaskarray(expected) if np.ma.isMaskedArray(expected) else None
            expected, actual = np.asarray(expected), np.asarray(actual_run[name])
            if expected.dtype.kind not in "fiub" and not _strings(expected):
                continue
            if expected.shape != actual.shape:
                # A data-dependent count (NonZero, a threshold's boxes) that changed: no value pairs with one of
                # the original's (numpy raised a broadcasting error, failing the pass), so each sample (row along
                # axis 0) of the run scores 0 and, as compare's gates hold an output of another shape, no budget
                # is met (an infinite max_error).
                rows = len(expected) if expected.ndim and len(expected) else 1
                scores.setdefault(name, []).extend([0.0] * rows)
                lowest[name], max_error, max_error_output = 0.0, float("inf"), name
                reshaped = reshaped or (name, expected.shape, actual.shape)
                continue
            if expected.size == 0:
                continue
            if _strings(expected):
                # A string output (a classifier's label): scored by its share of equal values, as class ids are;
                # a changed one has no size, so no --max-error holds it (``text_changed``). It was left out, and a
                # model of labels alone failed every approximate pass on "no outputs to compare".
                agree = np.atleast_1d(np.asarray(expected == actual, dtype=bool))
                kept = np.ones(agree.shape, bool) if hidden is None else ~np.atleast_1d(hidden)
                by_share.add(name)
                scores.setdefault(name, []).extend(agree[kept].astype(float))
                if (rows := _kept_row_shares(agree, kept)).size:
                    lowest[name] = min(lowest.get(name, 1.0), float(rows.min()))
                if not agree[kept].all():
                    changed = changed or name
                continue
            logits = _logits_of(name, expected_run, actual_run, np.atleast_1d(expected).shape)
            chosen = None if logits is None else _picked_ids(name, expected_run, actual_run, expected, actual)
            if chosen is not None:
                # An ArgMax's class or token ids (cast to floats too: their cosine is of class numbers), read on the
                # logits they pick among: an id flipped at a near tie is no lost sample.
                agree = np.atleast_1d(chosen[0] == chosen[1])
                kept = np.ones(agree.shape, bool) if hidden is None else ~np.atleast_1d(hidden)
                ranks = expected_run.get(ranks_key(name))  # a TopK of k > 1's: laid out alike in both runs
                ranks = None if ranks is None or np.shape(ranks) != expected.shape else np.atleast_1d(ranks)
                scored = _picks_on_logits(*(np.atleast_1d(values) for values in chosen), kept, *logits, ranks)
                if scored is None:  # the logits turned NaN or Inf, as a float output's would
                    return Drift(0.0, float("inf"))
                rows, error, near = scored
                counts = picked.setdefault(name, [0, 0, 0])
                counts[0] += int((~agree & kept).sum())
                counts[1] += near
                counts[2] += int(kept.sum())
                if rows.size:
                    scores.setdefault(name, []).extend(rows.tolist())
                    lowest[name] = min(lowest.get(name, 1.0), float(rows.min()))
                if error > max_error:
                    max_error, max_error_output = error, name
                continue
            if expected.dtype.kind != "f" or logits_key(name) in expected_run or name in ids:
                # Integers, or an ArgMax's ids (cast to floats) whose rewrite computes them otherwise (no longer an
                # ArgMax's: ids shifted by one read a cosine of class numbers of 0.9997), or ids no logits score (a
                # TopK's 3 best cast to float, every id one class off, met --min-cosine 0.98): each value equal or not.
                agree = np.atleast_1d(expected == actual)
                kept = np.ones(agree.shape, bool) if hidden is None else ~np.atleast_1d(hidden)
                by_share.add(name)
                scores.setdefault(name, []).extend(agree[kept].astype(float))
                if (rows := _kept_row_shares(agree, kept)).size:
                    lowest[name] = min(lowest.get(name, 1.0), float(rows.min()))
                if (
                    expected.shape == actual.shape
                    and kept.any()
                    and (expected.dtype.kind == "f" or _integers(expected, actual))
                ):
                    differences = (
                        integer_difference(expected, actual)
                        if _integers(expected, actual)
                        else np.abs(actual - expected)
                    )
                    error = float(np.nan_to_num(np.atleast_1d(differences)[kept], nan=np.inf).max())
                    if error > max_error:
                        max_error, max_error_output = error, name
                continue
            e, a = expected.astype(np.float64), actual.astype(np.float64)
            finite = np.isfinite(e) & np.isfinite(a)
            # Where either is not finite both must be the same, NaN and NaN or one infinity, as ``compare`` holds
            # them: an output turned from +Inf to -Inf or NaN (or from a NaN or Inf to a number) met any budget.
            if not finite.all() and (~finite & ~((np.isnan(e) & np.isnan(a)) | (e == a))).any():
                return Drift(0.0, float("inf"))
            e, a = np.where(finite, e, 0.0), np.where(finite, a, 0.0)
            error = float(np.abs(a - e).max())
            if error > max_error:
                max_error, max_error_output = error, name
            parts = [(name, e, a)]
            if (fields := small_scale_fields(e)) is not None:
                # Scored as an output of their own: beside values 100x larger their errors are not seen.
                axis, index = fields
                part = fields_name(name, axis, index)
                parts.append((part, np.take(e, index, axis=axis), np.take(a, index, axis=axis)))
                split.add(part)
            runs_of[name] = runs_of.get(name, 0) + 1
            for source in dict.fromkeys(
                key[len(name + _LESS) :].removesuffix(_SCALE).removesuffix(_AS_IS).removesuffix(_SPREAD)
                for key in expected_run
                if key.startswith(name + _LESS) and key in actual_run
            ):
                # The part the model adds to an input it mostly is (``with_residuals``), less the input at the scale
                # the original gives it and as it is: beside the input its loss is not seen. A run without the part
                # as it is has the two within float32 rounding: it counts as one that has it.
                for spread in (False, True):
                    scale = expected_run.get(residual_scale_key(name, source, spread=spread))
                    if isinstance(scale, float) or isinstance(scale, np.ndarray) and scale.size:  # or one per channel
                        low, high = float(np.min(scale)), float(np.max(scale))
                        bounds = taken_at.setdefault(_part_name(name, source, False, spread), [low, high])
                        bounds[:] = min(bounds[0], low), max(bounds[1], high)
                for as_is, spread in ((False, False), (True, False), (False, True)):
                    key = residual_key(name, source, as_is=as_is, spread=spread)
                    part = _part_name(name, source, as_is, spread)
                    count = residuals.get(part, (name, source, 0))[2] + 1
                    residuals[part] = (name, source, count, as_is, spread)
                    if key in expected_run and np.shape(actual_run[key]) == e.shape:
                        added = [np.nan_to_num(np.asarray(run[key], np.float64)) for run in (expected_run, actual_run)]
                        parts.append((part, *added))
            for scored_name, e, a in parts:  # the whole output, then its small-scale fields
                if scored_name in residuals:
                    # A sample to which the original adds nothing (``with_residuals`` zeroed its part in both) is no
                    # sample of the part: scored 1, nine of them hid a tenth whose part a rewrite dropped at the
                    # default floor (review s77 xres). The output's own score holds it.
                    if not (e.any() or a.any()):
                        continue
                    if e.ndim > 1 and e.size != len(e) and residuals[scored_name][3]:
                        # Less the input as it is, a sample at another scale (a gain of 1.11) adds that gain, but one
                        # within float32 rounding of its input adds nothing: a gain of 1e-7 of its own read -1 against
                        # an fp16 rewrite's rounding, as before review s77 xres (review s77 late77e).
                        rows = np.linalg.norm(e.reshape(len(e), -1), axis=1) > _ADDED_FLOOR * np.linalg.norm(
                            parts[0][1].reshape(len(e), -1), axis=1
                        )
                        e, a = e[rows], a[rows]
                    elif e.ndim > 1 and e.size != len(e):
                        scale_key = residual_scale_key(*residuals[scored_name][:2], spread=residuals[scored_name][4])
                        channels = expected_run.get(scale_key)
                        rows = _rows_adding(e, parts[0][1], channels if isinstance(channels, np.ndarray) else None)
                        e, a = e[rows], a[rows]
                if e.ndim <= 1 or e.size == len(e):
                    sums = single.setdefault(scored_name, [0.0, 0.0])
                    sums[0] += float(np.sum(e * e))
                    sums[1] += float(np.sum((a - e) ** 2))
                    continue
                rows = _scaled_rows(e, a)  # once for both figures
                cosines, ratios = _cosines(*rows), _norm_ratios(*rows)
                if scored_name == name and _holds_class_scores(name, e, score_outputs, elsewhere):
                    _tally_top1(name, e, a, top1)
                # A row whose original is all zeros has no scale to keep: its cosine (0 unless both are) says it.
                ratios = np.where(np.isinf(ratios), 1.0, ratios)
                scored = np.minimum(cosines, scale_scores(ratios))
                scores.setdefault(scored_name, []).extend(scored.tolist())
                plain.setdefault(scored_name, []).extend(cosines.tolist())
                farthest = float(ratios[np.argmax(np.abs(ratios - 1.0))])
                if abs(farthest - 1.0) > abs(scales.get(scored_name, 1.0) - 1.0):
                    scales[scored_name] = farthest
                lowest[scored_name] = min(lowest.get(scored_name, 1.0), float(scored.min()))
    for part, (owner, _, count, *_) in residuals.items():
        if count < runs_of[owner]:
            for table in (scores, lowest, single, plain, scales):
                table.pop(part, None)
    per_output = {name: float(np.mean(values)) for name, values in scores.items()}
    relative: dict[str, float] = {}
    for name, (expected_square, error_square) in single.items():
        if expected_square == 0:
            score, relative[name] = (1.0, 0.0) if error_square == 0 else (0.0, float("inf"))
        else:
            relative[name] = float(np.sqrt(error_square / expected_square))
            score = max(-1.0, 1.0 - relative[name] ** 2 / 2)
        # An output of one value per sample in some batches only ([batch, sequence] at length 1): the worse holds.
        if per_output.get(name, score) < score:  # its per-sample cosines elsewhere are worse
            del relative[name]
        per_output[name] = min(score, per_output.get(name, score))
        lowest[name] = min(score, lowest.get(name, score))
    if not per_output:
        raise ValueError("no outputs to compare: empty inputs, or only outputs of non-numeric types")
    worst = min(per_output, key=per_output.__getitem__)
    worst_sample = min(lowest.get(name, score) for name, score in per_output.items())

    def taken(part: str) -> tuple[float, float]:  # the scales a part was taken at: 1 as it is
        return (1.0, 1.0) if residuals[part][3] else tuple(taken_at.get(part, (1.0, 1.0)))

    # A part is named with the scale it was taken at.
    shown = residual_name(*residuals[worst][:2], taken(worst)) if worst in residuals else worst
    scaled = None
    if worst in plain and per_output[worst] < float(np.mean(plain[worst])) and worst not in relative:
        scaled = (shown, scales.get(worst, 1.0))
    relative_error = (shown, relative[worst]) if worst in relative else None
    # Where the worst score is an output's small-scale fields' (or its worst sample's is), the figure names them.
    fields = worst if worst in split else None
    if fields is None:
        fields = next((name for name in split if lowest.get(name, 1.0) <= worst_sample), None)
    # Where the worst score is an ArgMax's ids', the figure says it was read on their logits; where it is another
    # integer or text output's, that it is a share of equal values, not a cosine.
    on_logits = (worst, *picked[worst]) if worst in picked else None
    shared = worst if worst in by_share else None
    # The outputs scored less an input they mostly are, and where the worst score (or worst sample) is such a part's,
    # which: the figure names them.
    scored_less = tuple(dict.fromkeys(residuals[part][:2] for part in residuals if part in per_output))
    named = worst if worst in residuals else None
    if named is None:
        named = next((part for part in residuals if part in per_output and lowest[part] <= worst_sample), None)
    added = None if named is None else residuals[named][:2]
    return Drift(
        per_output[worst],
        max_error,
        relative_error,
        worst_sample,
        scaled,
        reshaped,
        changed,
        fields,
        max_error_output,
        on_logits,
        shared,
        _lowest_top1(top1),
        _lowest_top1(picked),
        scored_less,
        added,
        (1.0, 1.0) if named is None else taken(named),
    )


def _holds_class_scores(
    name: str, values: np.ndarray, score_outputs: frozenset[str], elsewhere: frozenset[str] = frozenset()
) -> bool:
    """Whether output ``name`` (``values`` laid out samples first) holds class scores whose top-1 is counted:
    ``score_outputs`` names it (``optimizer.class_scores.class_score_outputs``: a Softmax's, or logits one
    normalizes) or it is named like scores or logits, as ``compare`` reads its top-1, with positions of at least 2
    classes along a last axis after the samples'. One found by its name alone is read up to rank 3 (``_GUESSED_RANK``):
    a segmenter's ``logits`` ``[batch, classes, height, width]`` were read for top-1 along their width, every pixel's
    class changed at top-1 1.000; nor is one ``elsewhere`` names (``optimizer.class_scores.scores_elsewhere``: the
    graph normalizes it along another axis)."""
    guessed = values.ndim <= _GUESSED_RANK and name not in elsewhere and _SCORE_NAME.search(name) is not None
    return values.ndim >= 2 and values.shape[-1] >= 2 and (name in score_outputs or guessed)


# The highest rank of an output whose class scores are guessed from its name: a classifier's ``[batch, classes]``, a
# recognizer's ``[batch, steps, classes]``. A rank-4 output so named is a segmenter's ``[batch, classes, h, w]``.
_GUESSED_RANK = 3


def _tally_top1(name: str, expected: np.ndarray, actual: np.ndarray, tally: dict[str, list[int]]) -> None:
    """Adds to ``tally[name]`` how many of class scores' positions changed their argmax, how many of those at a near
    tie, and how many were compared (``_top1_counts``), which ``Drift.top1`` reports and ``--min-top1`` holds: a CTC
    recognizer's logits, dominated by the blank class, kept cosine 0.998 while the argmax changed on a third of the
    non-blank steps and 43 of 48 lines read differently. Its cosine is left as it was: in the score, the share moved
    the default floor for a decoder's next-token logits (int4 of a random-weight decoder, 4 of 16 tokens decisively
    changed, rolled back), and ``--min-cosine`` would bound a language model's next-token agreement."""
    changed, near, compared = _top1_counts(expected, actual)
    counts = tally.setdefault(name, [0, 0, 0])
    counts[0] += changed
    counts[1] += near
    counts[2] += compared


def _lowest_top1(tally: Mapping[str, Sequence[int]]) -> tuple[str, int, int, int] | None:
    """The class scores (``_tally_top1``'s tally) or ArgMax ids (``paired_drift``'s) of the lowest top-1 share: name,
    positions changed, of those at a near tie, compared; None where there are none (or none compared a position)."""
    shares = {name: _kept_share(*counts) for name, counts in tally.items() if counts[2]}
    if not shares:
        return None
    name = min(shares, key=shares.__getitem__)
    return (name, *tally[name])


def _kept_share(changed: int, near: int, compared: int) -> float:
    """The share of ``compared`` positions (or ids) whose pick is kept or flipped at a near tie, ``changed`` of them
    changed and ``near`` of those at a near tie: their top-1 (``Drift.top1_agreement``)."""
    return (compared - changed + near) / compared


def _logits_of(
    name: str, expected_run: Mapping[str, Any], actual_run: Mapping[str, Any], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The logits an ArgMax output ``name`` picks among in both runs (``logits_key``), as float64 ``[*shape, classes]``
    (``shape``: the ids', at least 1-D), or None where either run lacks them (a rewrite left no ArgMax there) or they do
    not fit the ids."""
    key = logits_key(name)
    if key not in expected_run or key not in actual_run:
        return None
    expected, actual = np.asarray(expected_run[key]), np.asarray(actual_run[key])
    if expected.shape != actual.shape or not expected.ndim or expected.shape[-1] == 0 or expected.dtype.kind != "f":
        return None
    if math.prod(expected.shape[:-1]) != math.prod(shape):
        return None
    arranged = (*shape, expected.shape[-1])
    return expected.astype(np.float64).reshape(arranged), actual.astype(np.float64).reshape(arranged)


def _picked_ids(
    name: str, expected_run: Mapping[str, Any], actual_run: Mapping[str, Any], expected: np.ndarray, actual: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The ids an ArgMax output ``name`` (``expected`` and ``actual``) picks in both runs, to read on its logits: the
    output itself, or where it offsets, scales or looks them up, those its ``ArgMax`` picks (``picks_key``), an output
    id left as it was counted as the original's pick. None where only one run changes them so, or where one id picked
    alike comes out otherwise: the rewrite computes the ids otherwise, and they are held equal in value."""
    key = picks_key(name)
    if key not in expected_run and key not in actual_run:
        return expected, actual
    if key not in expected_run or key not in actual_run:
        return None
    before, after = np.asarray(expected_run[key]), np.asarray(actual_run[key])
    if before.shape != expected.shape or after.shape != actual.shape:
        return None
    if ((before == after) & (expected != actual)).any():  # one pick comes out as another id: a tail rewritten
        return None
    return before, np.where(expected == actual, before, after)


def _picks_on_logits(
    expected: np.ndarray,
    actual: np.ndarray,
    kept: np.ndarray,
    expected_logits: np.ndarray,
    actual_logits: np.ndarray,
    ranks: np.ndarray | None = None,
) -> tuple[np.ndarray, float, int] | None:
    """An ArgMax output's per-sample scores (rows along axis 0 with a position kept), largest error and count of ids
    flipped at a near tie, read on the logits it picks among (``[*ids, classes]``). A sample scores the lower of
    ``1 - r**2 / 2`` of its logits' relative error ``r`` (the cosine an error at right angles gives), each position's
    logits centred along the classes (an ArgMax does not see a shift, and logits far from zero have a cosine near 1
    whatever their order) and the error taken against the sample's centred logits or the run's RMS of them per value,
    the larger, and the share of its positions whose id is the original's or
    flipped at a near tie: the candidate's own pick of its logits, which the original's logits put within
    ``_NEAR_TIE`` of their RMS (centred, over the run's positions kept; at most ``_near_scale``'s) of its own pick
    (an id that follows neither,
    the ArgMax rewritten or its ids shifted, is no tie flip; nor is one the original was sure of, however close the
    logits' cosine). The error is the logits' largest difference; at a position whose id follows neither its
    original nor its own logits, the ids' own. None where the logits turn NaN or Inf other than the original's.
    ``ranks`` (a sorted ``TopK`` of k > 1's indices): each position's pick is the rank-th largest, not the largest,
    and its near tie is with the original's rank-th largest (two classes that swap places at a tie)."""
    e, a = expected_logits, actual_logits
    finite = np.isfinite(e) & np.isfinite(a)
    if not finite.all() and (~finite & ~((np.isnan(e) & np.isnan(a)) | (e == a))).any():
        return None
    # A value not finite in both alike (a mask of -inf on classes a position may not pick) reads as the position's
    # lowest finite one: read as 0, it sat above log-probabilities, every pick of the finite values read as no pick
    # of its own logits, and a tie flip counted whole.
    if not finite.all():
        lowest = np.min(np.where(finite, e, np.inf), axis=-1, keepdims=True)
        fill = np.where(np.isfinite(lowest), lowest, 0.0)
        e, a = np.where(finite, e, fill), np.where(finite, a, fill)
    equal = expected == actual
    # The candidate's own pick: a class its logits hold at their largest, the first or another tied there (a float16
    # model's ArgMax ran on float32 values where its logits, rounded to float16, tie: exact tie flips read as ids
    # the original was sure of until a late review).
    index = np.clip(np.nan_to_num(actual, nan=-1), -1, a.shape[-1]).astype(np.int64)
    named = (actual == index) & (index >= 0) & (index < a.shape[-1])
    at = np.take_along_axis(a, np.where(named, index, 0)[..., None], axis=-1)[..., 0]
    own = named & (at == _ranked(a, ranks))
    error = float(np.abs(a - e)[kept].max(initial=0.0))
    if (stray := kept & ~(equal | own)).any():
        ids = integer_difference(expected, actual) if _integers(expected, actual) else np.abs(actual - expected)
        error = max(error, float(np.nan_to_num(ids[stray], nan=np.inf).max()))
    centred = [np.where(kept[..., None], x - x.mean(axis=-1, keepdims=True), 0.0) for x in (e, a)]
    # Probabilities (an ArgMax of a Softmax's output) are tied on their logarithms, as class scores' top-1 is
    # (``_on_logarithms``): a flip between two classes at 0.49 and 0.47 read as one the original was sure of.
    ties = _near_ties(*_on_logarithms(e, a, kept), kept, np.where(own, index, np.argmax(a, axis=-1)), ranks)
    spread = root_mean_square(np.abs(centred[0][kept])) if kept.any() else 0.0  # the run's scale (``_near_ties``)
    near = kept & ~equal & own & ties
    samples = len(kept)
    counted = kept.reshape(samples, -1).sum(axis=1)
    rows = counted > 0
    shares = ((equal | near) & kept).reshape(samples, -1).sum(axis=1)[rows] / counted[rows]
    # ``1 - r**2 / 2`` of each sample's relative error ``r``, the cosine an error at right angles gives, measured
    # against the sample's centred logits floored at the run's scale: a classifier's sample is one position, whose
    # centred logits at a near tie are a tiny vector that flips (its cosine read -1 for a flip of 1e-3).
    x, y = (values.reshape(samples, -1)[rows] for values in centred)
    scale = np.sum(x * x, axis=1)
    floor = counted[rows] * e.shape[-1] * spread**2
    with np.errstate(divide="ignore", invalid="ignore"):
        squared = np.sum((y - x) ** 2, axis=1) / np.maximum(np.maximum(scale, floor), np.finfo(np.float64).tiny)
    scores = np.where(np.all(x == y, axis=1), 1.0, np.clip(1.0 - squared / 2, -1.0, 1.0))
    return np.minimum(scores, shares), error, int(near.sum())


def _near_scale(logits: np.ndarray) -> float:
    """The RMS of ``logits`` (``[positions, classes]``) centred along the classes, each held within ``_FAR`` times the
    run's median distance of a class below its position's pick: classes far from every decision (a mask of -1e9 on
    some, a vocabulary's padding) count as that far, not as themselves. Where half the classes or more are so far,
    the median is theirs, and they count whole."""
    if logits.ndim != 2 or logits.shape[-1] < 2 or not logits.size:
        return 0.0
    top = logits.max(axis=-1, keepdims=True)
    others = np.ones(logits.shape, bool)
    np.put_along_axis(others, logits.argmax(axis=-1)[:, None], False, axis=-1)
    typical = float(np.median((top - logits)[others]))
    held = np.maximum(logits, top - _FAR * typical)
    return root_mean_square(np.abs(held - held.mean(axis=-1, keepdims=True)))


# How many times the run's median distance of a class below its position's pick a class counts at most in the scale
# of a near tie (``_near_scale``): Gaussian logits over 50,000 classes lie within 3 of it; a mask of -1e9 does not.
_FAR = 10.0

# An id flipped where the original's logits put the candidate's class within this fraction of their RMS (centred along
# the classes) of its own pick is a near tie: either class was the original's toss-up. An int8 rewrite's logits move
# by about 2 % of their RMS (cosine 0.9998), and its flips in a review's CTC tail were such ties, where a pruning
# that met --min-cosine 0.98 on the logits alone changed 56 of 288 ids, most of them positions the original was sure
# of.
_NEAR_TIE = 0.05


def _near_ties(
    expected: np.ndarray,
    actual: np.ndarray,
    kept: np.ndarray,
    ids: np.ndarray | None = None,
    ranks: np.ndarray | None = None,
) -> np.ndarray:
    """Where the original's logits ``expected`` (``[..., classes]``, float64) put the class the candidate's logits
    ``actual`` pick (their first largest, or ``ids``, the candidate's own picks) within ``_NEAR_TIE`` of their RMS
    (centred along the classes, over the ``kept`` positions) of the class they pick themselves (a flip there is
    either class's toss-up; with ``ranks``, of their rank-th largest)."""
    centred = np.where(kept[..., None], expected - expected.mean(axis=-1, keepdims=True), 0.0)
    # The original's margin of its pick (its rank-th, with ``ranks``) over the candidate's.
    ids = np.argmax(actual, axis=-1) if ids is None else ids
    chosen = np.take_along_axis(expected, ids[..., None], axis=-1)[..., 0]
    margin = np.abs(_ranked(expected, ranks) - chosen)
    # The scale of the whole run, not of one position: two classes' centred logits are +-margin/2, whose RMS a flip
    # always passes, and a binary classifier would have no near tie.
    spread = root_mean_square(np.abs(centred[kept])) if kept.any() else 0.0
    # Classes far from every decision (a mask of -1e9 on some, a vocabulary's padding) made that RMS huge, and every
    # flip, a wholly other classifier's too, a near tie: the scale is at most their RMS with such values held near.
    return margin <= _NEAR_TIE * min(spread, _near_scale(expected[kept]))


def _ranked(values: np.ndarray, ranks: np.ndarray | None) -> np.ndarray:
    """Each position's ``ranks``-th largest of ``values`` (``[..., classes]``; its largest where ``ranks`` is None)."""
    if ranks is None:
        return values.max(axis=-1)
    ordered = -np.sort(-values, axis=-1)
    return np.take_along_axis(ordered, np.clip(ranks, 0, values.shape[-1] - 1)[..., None], axis=-1)[..., 0]


def _top1_counts(expected: np.ndarray, actual: np.ndarray) -> tuple[int, int, int]:
    """Top-1 of class scores (``[..., classes]``, float64, finite), read as an ``ArgMax``'s ids are on their logits
    (``_picks_on_logits``): how many positions' argmax changed, how many of those at a near tie (``_near_ties``), and
    how many were compared. A position whose original scores are all zero (padding ``optimizer.padding.unpadded``
    zeroed) picks nothing and is not compared. Probabilities (every position's scores non-negative and summing to 1)
    are tied on their logarithms, the logits up to a shift along the classes that centring takes out: on the
    probabilities themselves a confident classifier's spread is tiny, and an int8 rewrite's flip between two classes
    at 0.45 no tie."""
    kept = np.any(expected != 0, axis=-1)
    equal = np.argmax(expected, axis=-1) == np.argmax(actual, axis=-1)
    near = kept & ~equal & _near_ties(*_on_logarithms(expected, actual, kept), kept)
    return int((kept & ~equal).sum()), int(near.sum()), int(kept.sum())


def _on_logarithms(expected: np.ndarray, actual: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``expected`` and ``actual`` (``[..., classes]``, float64), on their logarithms where they are probabilities
    (every ``kept`` position's of the original non-negative and summing to 1), the logits up to a shift along the
    classes that centring takes out: on the probabilities themselves a confident classifier's spread is tiny, and an
    int8 rewrite's flip between two classes at 0.45 no tie (``_near_ties``)."""
    if kept.any() and expected.min() >= 0 and np.allclose(expected[kept].sum(axis=-1), 1.0, rtol=0.0, atol=1e-2):
        tiny = np.finfo(np.float32).tiny  # a probability that underflowed float32 is no -inf logit
        return np.log(np.maximum(expected, tiny)), np.log(np.maximum(actual, tiny))
    return expected, actual


# An output that holds quantities of very different scale side by side (a YOLO detector's ``[batch, 4 + classes,
# anchors]``: box coordinates in pixels beside class scores in [0, 1]) has the cosine of its large values alone:
# NudeNet's detector pruned by 25 % of its channels scored 0.998 while it lost 10 of its 11 detections above 0.5 on
# held-out images (its class scores' cosine 0.61). Fields more than this factor below the others' RMS are scored as
# an output of their own.
_FIELD_SCALE_GAP = 100.0
# Fields are the entries of a short axis (a detector's 4 + classes, or 5 + 80 as YOLOv5 lays them last), not a
# hidden size or a sequence.
_MAX_FIELDS = 256
# At most this many large fields, leading the axis (YOLO's 4 box coordinates, YOLOv5's objectness after them).
_MAX_LEADING_FIELDS = 8


def small_scale_fields(values: np.ndarray) -> tuple[int, np.ndarray] | None:
    """Where a rank-3 float output (samples along axis 0) holds, along axis 1 or 2 of at most 256 entries, fields
    whose root mean square lies more than 100x below the other fields' (box coordinates beside class scores), the
    other fields being at most 8 and leading the axis, then at most a group of 3 repeated to its end (a pose
    model's keypoints): that axis and the small fields' indices before the keypoints (all-zero fields among them),
    else None."""
    if values.ndim != 3 or values.dtype.kind != "f":
        return None
    for axis in (1, 2):
        if not 2 <= values.shape[axis] <= _MAX_FIELDS:
            continue
        rest = tuple(other for other in range(3) if other != axis)
        with np.errstate(over="ignore", invalid="ignore"):
            rms = np.sqrt(np.mean(np.square(values.astype(np.float64)), axis=rest))
        if not np.isfinite(rms).all():
            continue
        nonzero = np.sort(rms[rms > 0])
        if len(nonzero) < 2:
            continue
        gaps = nonzero[1:] / nonzero[:-1]
        widest = int(np.argmax(gaps))
        small = rms <= nonzero[widest]
        # A detector's large fields lead (its box, maybe an objectness), the small ones follow: an LSTM state's
        # or a feature map's quiet units scattered among the rest are no such fields (silero VAD's state: 34 of
        # 128 units, whose relative error after int8 is noise, rolled a correct result back).
        leading = int(np.argmax(small)) if small.any() else 0
        end = leading + (int(np.argmin(small[leading:])) if not small[leading:].all() else len(small) - leading)
        if gaps[widest] >= _FIELD_SCALE_GAP and 1 <= leading <= _MAX_LEADING_FIELDS and _repeats(small[end:]):
            return axis, np.arange(leading, end)
    return None


def _repeats(pattern: np.ndarray) -> bool:
    """Whether ``pattern`` (which fields after a detector's class scores are small) is none, or one group of at
    most 3 fields repeated to its end: a pose model's keypoints after its score (YOLOv8-pose's ``[4 + 1 + 17 * 3]``,
    ``x, y`` in pixels and a small visibility each), whose score was not split off (its loss unseen beside pixels)
    once the small fields had to be the last ones; an LSTM state's quiet units repeat no such group."""
    return any(
        len(pattern) % period == 0 and (pattern.reshape(-1, period) == pattern[:period]).all() for period in (1, 2, 3)
    )


def fields_name(name: str, axis: int, index: np.ndarray) -> str:
    """How an output's small-scale fields (``small_scale_fields``) are named where they are scored."""
    first, last = int(index[0]), int(index[-1])
    span = f"{first}-{last}" if len(index) == last - first + 1 else f"{len(index)} fields from {first} to {last}"
    return f"{name}[{span} along axis {axis}]"

"""Regularized least squares toward a prior: the repair shared by the approximate passes.

A pass that changes a layer (pruning cuts its input channels, low-rank factorization
truncates its weight) repairs it by re-fitting the layer's remaining weights (and bias)
to the original layer's output on calibration samples. With few samples an unregularized
fit can be worse than no repair at all, so the fit is pulled toward the unrepaired
weights (not toward zero), with a strength chosen on held-out batches, and kept only where
it beats no repair there (``GramFit``: streamed, so no layer's input rows are kept).
"""

from __future__ import annotations

import numpy as np

# Candidate regularization strengths, relative to the mean diagonal of XᵀX.
STRENGTHS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


class GramFit:
    """``argmin |[x 1] θ - y|² + λ |θ - prior|²`` from streamed rows, λ chosen on held-out data.

    Every fifth batch is held out (whole batches: rows of one sentence or one image are
    alike, and rows held out beside their neighbours do not show a fit that learnt the
    calibration samples rather than the layer). With fewer than five batches there is no
    whole batch to spare, and every fifth row is held out instead (the better choice than
    none on a few samples). The bias row (the constant column's) is not pulled toward its
    prior. The final fit uses all rows. If the held-out rows are fitted better by the prior
    itself (no repair) than by any λ, the prior is returned: a repair is never worse than
    none on data it did not see.
    """

    def __init__(self, features: int, outputs: int) -> None:
        size = features + 1
        # Sums over every row, over the held-out batches, and (only while fewer than five
        # batches have come: then it is dropped) over the held-out rows; a fitted part is the
        # total less a held-out one. Three Gram matrices at most, two from the fifth batch on.
        self.gram_total, self.cross_total = np.zeros((size, size)), np.zeros((size, outputs))
        self.held: dict[str, list] = {
            split: [np.zeros((size, size)), np.zeros((size, outputs)), 0.0] for split in ("batch", "row")
        }
        self.batches = 0
        self.rows = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """One batch's rows ``x`` and targets ``y``."""
        design = np.concatenate([x.astype(np.float64), np.ones((len(x), 1))], axis=1)
        y = y.astype(np.float64)
        self.gram_total += design.T @ design
        self.cross_total += design.T @ y
        held_rows = {
            "batch": np.full(len(x), self.batches % 5 == 4),
            "row": (self.rows + np.arange(len(x))) % 5 == 4,
        }
        for split, held in self.held.items():
            rows = held_rows[split]
            if rows.any():
                held[0] += design[rows].T @ design[rows]
                held[1] += design[rows].T @ y[rows]
                held[2] += float((y[rows] ** 2).sum())
        self.batches += 1
        self.rows += len(x)
        if self.batches == 5:
            self.held.pop("row", None)  # from now on whole batches are held out

    def solve(self, prior: np.ndarray, gain: float = 1.0) -> tuple[np.ndarray, bool]:
        """The fitted ``θ`` (``[features + 1, outputs]``, bias last) and whether it is the prior unchanged.

        ``gain`` below 1 asks more of a repair: it is kept only where its held-out error is
        below ``gain`` times the prior's (a refit that changes every weight to gain 0.1 % is
        not worth the risk on data it did not see).
        """
        held_gram, held_cross, held_energy = self.held["batch" if self.batches >= 5 else "row"]
        fitted_gram, fitted_cross = self.gram_total - held_gram, self.cross_total - held_cross

        def error(theta: np.ndarray) -> float:
            return float(np.sum(theta * (held_gram @ theta)) - 2 * np.sum(theta * held_cross)) + held_energy

        if self.rows < 5:  # nothing to hold out: fit on what there is, at the middle strength
            return _solve(self.gram_total, self.cross_total, prior, STRENGTHS[len(STRENGTHS) // 2]), False
        fitted = min(
            ((strength, _solve(fitted_gram, fitted_cross, prior, strength)) for strength in STRENGTHS),
            key=lambda candidate: error(candidate[1]),
        )
        if not error(fitted[1]) < gain * error(prior):
            return prior, True
        return _solve(self.gram_total, self.cross_total, prior, fitted[0]), False


def _solve(gram: np.ndarray, cross: np.ndarray, prior: np.ndarray, strength: float) -> np.ndarray:
    gram = gram.copy()
    size = len(gram) - 1
    penalty = strength * np.trace(gram[:size, :size]) / max(size, 1)
    gram[np.arange(size), np.arange(size)] += penalty
    rhs = cross.copy()
    rhs[:size] += penalty * prior[:size]
    return np.linalg.lstsq(gram, rhs, rcond=None)[0] if penalty == 0 else np.linalg.solve(gram, rhs)

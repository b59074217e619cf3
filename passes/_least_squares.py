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
        # [fitted, held out] by whole batches, and the same split by rows.
        self.gram = {split: [np.zeros((size, size)), np.zeros((size, size))] for split in ("batch", "row")}
        self.cross = {split: [np.zeros((size, outputs)), np.zeros((size, outputs))] for split in ("batch", "row")}
        self.target_energy = {"batch": 0.0, "row": 0.0}  # |y|² over the held-out rows
        self.batches = 0
        self.rows = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """One batch's rows ``x`` and targets ``y``."""
        design = np.concatenate([x.astype(np.float64), np.ones((len(x), 1))], axis=1)
        y = y.astype(np.float64)
        held_rows = (self.rows + np.arange(len(x))) % 5 == 4
        parts = {"batch": np.full(len(x), self.batches % 5 == 4), "row": held_rows}
        for split, held in parts.items():
            for part, rows in ((0, ~held), (1, held)):
                if rows.any():
                    self.gram[split][part] += design[rows].T @ design[rows]
                    self.cross[split][part] += design[rows].T @ y[rows]
            self.target_energy[split] += float((y[held] ** 2).sum())
        self.batches += 1
        self.rows += len(x)

    def solve(self, prior: np.ndarray, gain: float = 1.0) -> tuple[np.ndarray, bool]:
        """The fitted ``θ`` (``[features + 1, outputs]``, bias last) and whether it is the prior unchanged.

        ``gain`` below 1 asks more of a repair: it is kept only where its held-out error is
        below ``gain`` times the prior's (a refit that changes every weight to gain 0.1 % is
        not worth the risk on data it did not see).
        """
        split = "batch" if self.batches >= 5 else "row"
        gram, cross = self.gram[split], self.cross[split]

        def error(theta: np.ndarray) -> float:
            held = float(np.sum(theta * (gram[1] @ theta)) - 2 * np.sum(theta * cross[1]))
            return held + self.target_energy[split]

        if self.rows < 5:  # nothing to hold out: fit on what there is, at the middle strength
            return _solve(gram[0] + gram[1], cross[0] + cross[1], prior, STRENGTHS[len(STRENGTHS) // 2]), False
        fitted = min(
            ((strength, _solve(gram[0], cross[0], prior, strength)) for strength in STRENGTHS),
            key=lambda candidate: error(candidate[1]),
        )
        if not error(fitted[1]) < gain * error(prior):
            return prior, True
        return _solve(gram[0] + gram[1], cross[0] + cross[1], prior, fitted[0]), False


def _solve(gram: np.ndarray, cross: np.ndarray, prior: np.ndarray, strength: float) -> np.ndarray:
    gram = gram.copy()
    size = len(gram) - 1
    penalty = strength * np.trace(gram[:size, :size]) / max(size, 1)
    gram[np.arange(size), np.arange(size)] += penalty
    rhs = cross.copy()
    rhs[:size] += penalty * prior[:size]
    return np.linalg.lstsq(gram, rhs, rcond=None)[0] if penalty == 0 else np.linalg.solve(gram, rhs)

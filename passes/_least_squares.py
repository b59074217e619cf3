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
    """``argmin |[x 1] θ - y|² + λ |θ - prior|²`` from streamed rows, λ chosen on held-out batches.

    Every fifth batch is held out (whole batches: rows of one sentence or one image are
    alike, and rows held out beside their neighbours do not show a fit that learnt the
    calibration samples rather than the layer). The bias row (the constant column's) is
    not pulled toward its prior. The final fit uses all rows. If the held-out rows are
    fitted better by the prior itself (no repair) than by any λ, the prior is returned: a
    repair is never worse than none on batches it did not see. With fewer than five
    batches nothing can be held out, and the fit takes the middle strength.
    """

    def __init__(self, features: int, outputs: int) -> None:
        size = features + 1
        self.gram = [np.zeros((size, size)), np.zeros((size, size))]  # fitted rows, held-out rows
        self.cross = [np.zeros((size, outputs)), np.zeros((size, outputs))]
        self.target_energy = 0.0  # |y|² over the held-out rows
        self.batches = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """One batch's rows ``x`` and targets ``y``."""
        design = np.concatenate([x.astype(np.float64), np.ones((len(x), 1))], axis=1)
        y = y.astype(np.float64)
        part = 1 if self.batches % 5 == 4 else 0
        self.gram[part] += design.T @ design
        self.cross[part] += design.T @ y
        if part:
            self.target_energy += float((y**2).sum())
        self.batches += 1

    def solve(self, prior: np.ndarray, gain: float = 1.0) -> tuple[np.ndarray, bool]:
        """The fitted ``θ`` (``[features + 1, outputs]``, bias last) and whether it is the prior unchanged.

        ``gain`` below 1 asks more of a repair: it is kept only where its held-out error is
        below ``gain`` times the prior's (a refit that changes every weight to gain 0.1 % is
        not worth the risk on data it did not see).
        """

        def error(theta: np.ndarray) -> float:
            gram, cross = self.gram[1], self.cross[1]
            return float(np.sum(theta * (gram @ theta)) - 2 * np.sum(theta * cross) + self.target_energy)

        if self.batches < 5:  # nothing held out: fit on what there is, at the middle strength
            return _solve(self.gram[0], self.cross[0], prior, STRENGTHS[len(STRENGTHS) // 2]), False
        fitted = min(
            ((strength, _solve(self.gram[0], self.cross[0], prior, strength)) for strength in STRENGTHS),
            key=lambda candidate: error(candidate[1]),
        )
        if not error(fitted[1]) < gain * error(prior):
            return prior, True
        return _solve(self.gram[0] + self.gram[1], self.cross[0] + self.cross[1], prior, fitted[0]), False


def _solve(gram: np.ndarray, cross: np.ndarray, prior: np.ndarray, strength: float) -> np.ndarray:
    gram = gram.copy()
    size = len(gram) - 1
    penalty = strength * np.trace(gram[:size, :size]) / max(size, 1)
    gram[np.arange(size), np.arange(size)] += penalty
    rhs = cross.copy()
    rhs[:size] += penalty * prior[:size]
    return np.linalg.lstsq(gram, rhs, rcond=None)[0] if penalty == 0 else np.linalg.solve(gram, rhs)

"""Regularized least squares toward a prior: the repair shared by the approximate passes.

A pass that changes a layer (pruning cuts its input channels, low-rank factorization
truncates its weight) repairs it by re-fitting the layer's remaining weights (and bias)
to the original layer's output on calibration samples. With few samples an unregularized
fit can be worse than no repair at all, so the fit is pulled toward the unrepaired
weights (not toward zero), with a strength chosen on held-out rows.
"""

from __future__ import annotations

import numpy as np

# Candidate regularization strengths, relative to the mean diagonal of XᵀX.
STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def fit_toward_prior(design: np.ndarray, target: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``argmin |design θ - target|² + λ |θ - prior|²``, λ chosen among ``STRENGTHS`` on held-out rows.

    ``design`` is ``[rows, features + 1]`` whose last column is all ones (the bias);
    ``prior`` is ``[features + 1, outputs]``, the unrepaired weights with the bias as
    its last row. The bias row is not pulled toward its prior. Every fifth row is held
    out to choose λ; the final fit uses all rows.
    """
    held_out = np.arange(len(design)) % 5 == 4
    strength = min(
        STRENGTHS,
        key=lambda s: fit_error(design[~held_out], target[~held_out], prior, s, design[held_out], target[held_out]),
    )
    return fit(design, target, prior, strength)


def fit(design: np.ndarray, target: np.ndarray, prior: np.ndarray, strength: float) -> np.ndarray:
    """``argmin |design θ - target|² + λ |θ - prior|²`` over the weight rows (the bias row is free)."""
    gram = design.T @ design
    size = len(gram) - 1
    penalty = strength * np.trace(gram[:size, :size]) / max(size, 1)
    gram[np.arange(size), np.arange(size)] += penalty
    rhs = design.T @ target
    rhs[:size] += penalty * prior[:size]
    return np.linalg.solve(gram, rhs)


def fit_error(design, target, prior, strength, check_design, check_target) -> float:
    """The squared error on ``check_*`` of the fit to ``design``/``target`` at ``strength``."""
    solution = fit(design, target, prior, strength)
    return float(((check_design @ solution - check_target) ** 2).sum())

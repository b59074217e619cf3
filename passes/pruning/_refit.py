"""Streamed statistics for pruning: per-channel activation energy and the least-squares refit of a consumer.

Calibration data can be large (hundreds of sentences, each a row per token), so nothing
here keeps a layer's input rows: each batch adds to a Gram matrix ``[x 1]ᵀ[x 1]`` and a
cross term ``[x 1]ᵀ y``, and the fit is a solve on those. Rows that are padding (a
``*mask*`` input of 0 over batch × sequence) are dropped: they are not what the model is
used on, and a padded batch is mostly padding.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Candidate regularization strengths, relative to the mean diagonal of XᵀX (as in passes._least_squares).
STRENGTHS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
# Rows kept per batch of image activations (every k-th position, the same ones on every run).
IMAGE_ROWS = 16384


def channel_rows(batch: Mapping[str, np.ndarray], array: np.ndarray, channel_axis: int) -> np.ndarray:
    """``array`` as rows of its ``channel_axis``, without the rows a padding mask in ``batch`` zeroes.

    Image activations (channels not last) keep every k-th position, at most ``IMAGE_ROWS``.
    The mask is a 2-D 0/1 integer input named ``*mask*`` whose shape is the array's
    leading dims (``[batch, sequence]`` of a ``[batch, sequence, channels]`` activation),
    or their product (a ``[batch * sequence, channels]`` activation).
    """
    moved = np.moveaxis(np.asarray(array), channel_axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    if channel_axis % moved.ndim != moved.ndim - 1:
        # Images: every position is real, and neighbours are alike; an evenly spaced
        # subset keeps a batch's statistics without its millions of rows.
        return rows[:: -(-len(rows) // IMAGE_ROWS)]
    for name, mask in batch.items():
        mask = np.asarray(mask)
        if "mask" not in name.lower() or mask.ndim != 2 or mask.dtype.kind not in "iub":
            continue
        if mask.shape == moved.shape[:-1] or (moved.ndim == 2 and mask.size == len(rows)):
            keep = mask.reshape(-1) != 0
            if keep.any():
                return rows[keep]
    return rows


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

    def solve(self, prior: np.ndarray) -> tuple[np.ndarray, bool]:
        """The fitted ``θ`` (``[features + 1, outputs]``, bias last) and whether it is the prior unchanged."""

        def error(theta: np.ndarray) -> float:
            gram, cross = self.gram[1], self.cross[1]
            return float(np.sum(theta * (gram @ theta)) - 2 * np.sum(theta * cross) + self.target_energy)

        if self.batches < 5:  # nothing held out: fit on what there is, at the middle strength
            return _solve(self.gram[0], self.cross[0], prior, STRENGTHS[len(STRENGTHS) // 2]), False
        fitted = min(
            ((strength, _solve(self.gram[0], self.cross[0], prior, strength)) for strength in STRENGTHS),
            key=lambda candidate: error(candidate[1]),
        )
        if error(prior) <= error(fitted[1]):
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

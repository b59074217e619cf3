"""The rows pruning's statistics are taken over: a layer's input channels, padding dropped.

Calibration data can be large (hundreds of sentences, each a row per token), so nothing
keeps a layer's input rows: each batch adds to a Gram matrix (``passes._least_squares.GramFit``)
and the refit is a solve on it. Rows that are padding (a ``*mask*`` input of 0 over
batch × sequence) are dropped: they are not what the model is used on, and a padded batch
is mostly padding.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Rows kept per batch of image activations (a fixed random subset of positions, the same ones on every run).
IMAGE_ROWS = 16384


def channel_rows(batch: Mapping[str, np.ndarray], array: np.ndarray, channel_axis: int) -> np.ndarray:
    """``array`` as rows of its ``channel_axis``, without the rows a padding mask in ``batch`` zeroes.

    Image activations (channels not last) keep a fixed random subset of positions, at most ``IMAGE_ROWS``.
    The mask is a 2-D 0/1 integer input named ``*mask*`` whose shape is the array's
    leading dims (``[batch, sequence]`` of a ``[batch, sequence, channels]`` activation),
    or their product (a ``[batch * sequence, channels]`` activation).
    """
    moved = np.moveaxis(np.asarray(array), channel_axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    if channel_axis % moved.ndim != moved.ndim - 1:
        # Images: every position is real, and neighbours are alike; a subset keeps a batch's statistics without
        # its millions of rows. Not an evenly spaced one: a step that divides the row width reads the same columns
        # on every row (every 4th position of a 66-wide map: its even columns alone, one phase of a Bayer mosaic or
        # a pixel shuffle), and a repair fitted there is wrong on the other phases. A fixed random subset, the
        # same positions for every array of this size, so that inputs and targets stay row for row.
        step = -(-len(rows) // IMAGE_ROWS)
        if step == 1:
            return rows
        keep = np.random.default_rng(len(rows)).choice(len(rows), -(-len(rows) // step), replace=False)
        return rows[np.sort(keep)]
    for name, mask in batch.items():
        mask = np.asarray(mask)
        if "mask" not in name.lower() or mask.ndim != 2 or mask.dtype.kind not in "iub":
            continue
        if mask.shape == moved.shape[:-1] or (moved.ndim == 2 and mask.size == len(rows)):
            keep = mask.reshape(-1) != 0
            if keep.any():
                return rows[keep]
    return rows

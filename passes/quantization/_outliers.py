"""Outlier input channels: the few channels of a layer's input that dwarf the rest, found on sample inputs.

At accuracy_level 4 ``MatMulNBits`` rounds each input row to int8 per block of
``block_size`` channels, scaled by the block's largest magnitude. A decoder's residual
stream has a few channels 10-30x the median (massive activations); in their blocks the
other channels keep only a few of the 255 levels. ``--int4-outlier-channels K`` takes
the K largest channels of each such input out of the rounding (zeroed before the kernel,
added back exactly in float); this module chooses them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.padding import batch_padding, token_rows, unpadded_rows
from optimizer.runtime import value_collector


@dataclass(frozen=True)
class OutlierChannels:
    """The channels of one input taken out of the rounding: ``indices`` (ascending), and the largest
    channel's max |x| over the median channel's (how far out they are)."""

    indices: np.ndarray
    ratio: float

    def mask(self, width: int) -> np.ndarray:
        """float32 ``[width]``: 0 at the outlier channels, 1 elsewhere (what the kernel's input is multiplied by)."""
        mask = np.ones(width, dtype=np.float32)
        mask[self.indices] = 0.0
        return mask


def choose_outlier_channels(
    model: ir.Model, names: Sequence[str], batches: Sequence[Mapping[str, np.ndarray]], count: int
) -> tuple[dict[str, OutlierChannels], dict[str, str]]:
    """The ``count`` channels of largest max |x| of each named float tensor (last axis) over every
    row of ``batches`` but its padded positions (``optimizer.padding.unpadded_rows``: a pad token's channels
    chose them until a review on 2026-12-07), from one streamed run of ``model``; and why the others were left out
    (``count`` channels or fewer: nothing would be left to round; a value that is not finite)."""
    peaks: dict[str, np.ndarray] = {}
    tokens = token_rows(model, names)
    with value_collector(model, list(dict.fromkeys(names))) as run:
        for batch in batches:
            padding = batch_padding(model, batch)
            for name, array in run(batch).items():
                array = np.asarray(array)
                if array.ndim == 0 or not np.issubdtype(array.dtype, np.floating):
                    continue
                rows = unpadded_rows(array, padding if name in tokens else {})
                if not len(rows):
                    continue
                peak = np.abs(rows).max(axis=0).astype(np.float64)
                peaks[name] = peak if name not in peaks else np.maximum(peaks[name], peak)
    chosen, left_out = {}, {}
    for name in dict.fromkeys(names):
        peak = peaks.get(name)
        if peak is None:
            left_out[name] = "not a float tensor"
        elif peak.size <= count:
            left_out[name] = f"not wider than {count} channels"
        elif not np.all(np.isfinite(peak)):
            left_out[name] = "not finite on the samples"
        else:
            indices = np.sort(np.argsort(-peak, kind="stable")[:count]).astype(np.int64)
            median = float(np.median(peak))
            ratio = float(peak.max() / median) if median > 0 else float("inf")
            chosen[name] = OutlierChannels(indices, ratio)
    return chosen, left_out

"""A Q4_1 grid kept in 8-bit MatMulNBits blocks instead of 4-bit ones plus block offsets (issue 14).

An experiment, measured and not built (docs/benchmarks.md, *8-bit blocks instead of block
offsets*). ``quantize-int4`` stores a recovered Q4_1 grid (``w = d·q + m``, q in 0..15, the zero
between two levels) as 4-bit values with uint8 zero points and adds what those miss as block
offsets (two small ``MatMul`` s and an ``Add`` per layer). At 8 bits the same block fits with
scale ``d / a``: ``v = a·q − round(a·z) + 128`` with ``z = −m / d``, the largest ``a ≤ 16`` that
keeps every ``v`` of the block in 0..255 (8 to 16 for ``z`` in 0..15), so each block's weights move
together by at most ``d / (2a)`` (about ``d / 32``) and no offsets are written; the weight bytes
double.

This script runs graphopt's own command line with ``Int4QuantizationPass._grid`` patched to widen
every grid with float zero points that way; everything else (outlier channels, the twin, the
verification, the 8-bit head) is the pass's. Merge the siblings with a second run::

    python benchmarks/int4_widened_grid.py optimize dyn_opt.onnx -o w8_unmerged.onnx --passes remove-unused \\
        --quantize int4 --quantize-outputs --calibration cal.npz --int4-outlier-channels 8
    graphopt optimize w8_unmerged.onnx -o w8.onnx --passes merge-matmul-nbits
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.cli import main  # noqa: E402
from passes.quantization import int4  # noqa: E402
from passes.quantization._blockwise import Int4Weight  # noqa: E402

LARGEST_MULTIPLIER = 16


def widen(grid: Int4Weight) -> Int4Weight:
    """``grid`` (4-bit, float zero points) as 8-bit blocks of scale ``d / a`` and the implicit zero point 128."""
    if not grid.has_offsets:
        return grid
    q = grid.values.astype(np.int64)
    zero = grid.zero_points.astype(np.float64)
    low, high = q.min(axis=-1), q.max(axis=-1)
    multiplier = np.zeros(zero.shape, np.int64)
    for a in range(LARGEST_MULTIPLIER, 0, -1):
        shift = np.rint(a * zero).astype(np.int64)
        fits = (a * low - shift + 128 >= 0) & (a * high - shift + 128 <= 255)
        multiplier = np.where((multiplier == 0) & fits, a, multiplier)
    if (multiplier == 0).any():
        raise ValueError("a block fits no 8-bit multiple of its step")
    shift = np.rint(multiplier * zero).astype(np.int64)
    values = multiplier[..., None] * q - shift[..., None] + 128
    scales = (grid.scales / multiplier).astype(np.float32)
    return Int4Weight(values.astype(np.uint8), scales, None, grid.k, grid.block_size, 8)


_recovered = int4.Int4QuantizationPass._grid


def _widened(self, layer):
    grid = _recovered(self, layer)
    return None if grid is None else widen(grid)


if __name__ == "__main__":
    int4.Int4QuantizationPass._grid = _widened
    sys.exit(main(sys.argv[1:]))

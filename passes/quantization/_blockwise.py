"""Block-wise 4-bit weights in ONNX Runtime's MatMulNBits layout, and the ways of choosing them.

A ``[K, N]`` weight is cut, per output column, into blocks of ``block_size`` values
along K (the last block padded with zeros); each block has one float scale and, when
asymmetric, one zero point. A stored value ``q`` in ``0..15`` stands for
``(q - zero_point) * scale``; symmetric blocks have no stored zero point and ONNX
Runtime's default, 8, applies (the range is ``[-8, 7] * scale``, the largest magnitude
mapped to -8 so all 16 levels are used).

The layout (com.microsoft ``MatMulNBits``, bits=4): ``B`` is uint8 ``[N, n_blocks,
block_size / 2]``, two values per byte along K, the first in the low nibble;
``scales`` ``[N * n_blocks]``; packed zero points uint8 ``[N, ceil(n_blocks / 2)]`` in
the same nibble order. Float zero points (HQQ's, a recovered Q4_1 grid's) are held here
as float32 ``[N, n_blocks]`` and written as uint8 ones plus block offsets
(``Int4Weight.stored`` / ``offsets``); ``bits`` 8 (a recovered 8-bit grid) stores one
value per byte. The
round-to-nearest parameters are the ones ONNX Runtime's own packer
(``onnxruntime.capi._pybind_state.quantize_matmul_4bits``) computes, value for value
(tests/passes/quantization/test_int4.py compares them); the packing is done here in
numpy because GPTQ and HQQ choose values that packer cannot express.

Three ways of choosing the values:

- ``quantize_rtn``: round to nearest, block by block (no data).
- ``quantize_gptq``: GPTQ (Frantar et al., 2022): columns are rounded one at a
  time along K and each rounding error is spread over the columns not yet rounded,
  weighted by the inverse Hessian ``2 XᵀX`` of the layer's calibration inputs, so
  the *output* error on those inputs is what is minimized, not the weight error.
- ``quantize_hqq``: HQQ (Badri & Shaji, 2023): data-free; each block's zero point
  is refined by half-quadratic splitting to minimize an ``l_p`` (p < 1) weight error,
  which tolerates a few large outliers; the zero points are then float.

And one way of not choosing them: ``recover_grid`` finds a weight that already lies on
a 4- or 8-bit block grid (a dequantized GGUF, GPTQ or AWQ checkpoint) and returns its
exact values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

LEVELS = 16
SYMMETRIC_ZERO_POINT = 8
BLOCK_SIZES = (16, 32, 64, 128, 256)
# GPTQ's damping: a fraction of the Hessian's mean diagonal added to it, so that
# columns the calibration inputs barely excite do not make it singular.
GPTQ_DAMPING = 0.01
# Columns GPTQ rounds between two lazy updates of the rest of the weight.
GPTQ_LAZY_COLUMNS = 128
# HQQ's solver: l_p norm, initial penalty and its growth, iterations (the reference values).
HQQ_NORM, HQQ_BETA, HQQ_KAPPA, HQQ_ITERATIONS = 0.7, 10.0, 1.01, 20
# How far (in steps) a value may sit from its level for a weight to count as already on a grid.
_GRID_TOLERANCE = 1e-3
# How far (relative to its block's largest magnitude) a value may sit from its level: float32 rounding of
# a dequantized checkpoint is ~1e-7; a step that fits a sparse block by accident within 1e-3 steps is not.
_GRID_EXACTNESS = 1e-5


@dataclass(frozen=True)
class Int4Weight:
    """A ``[k, N]`` float weight as 4-bit blocks: ``values`` ``[N, n_blocks, block_size]`` in 0..15,
    ``scales`` ``[N, n_blocks]``, ``zero_points`` ``[N, n_blocks]`` (uint8, or float32 from HQQ;
    None when symmetric: the implicit 8).

    ``bits`` 8 only for a recovered 8-bit grid (``recover_grid``): values 0..255, the
    implicit zero point 128, stored one per byte (MatMulNBits' bits=8 layout).
    """

    values: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    k: int
    block_size: int
    bits: int = 4

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def n(self) -> int:
        return self.values.shape[0]

    @property
    def blocks(self) -> int:
        return self.values.shape[1]

    def dequantize(self) -> np.ndarray:
        """The float32 ``[k, N]`` weight these values stand for: ``(q - zero_point) * scale``."""
        zero = self.levels // 2 if self.zero_points is None else self.zero_points[..., None]
        blocks = (self.values.astype(np.float32) - np.float32(zero)) * self.scales[..., None]
        return np.ascontiguousarray(blocks.reshape(self.n, -1)[:, : self.k].T.astype(np.float32))

    def packed(self) -> np.ndarray:
        """``B`` of MatMulNBits: uint8 ``[N, n_blocks, block_size / 2]``, low nibble first (8 bits: one per byte)."""
        return np.ascontiguousarray(self.values, dtype=np.uint8) if self.bits == 8 else pack_nibbles(self.values)

    @property
    def has_offsets(self) -> bool:
        """True when the zero points are float (HQQ's, or a recovered grid's): ``offsets`` is then not None."""
        return self.zero_points is not None and self.zero_points.dtype != np.uint8

    def stored(self) -> Int4Weight:
        """What MatMulNBits stores: float zero points rounded to uint8 ones (``offsets`` holds the rest)."""
        if not self.has_offsets:
            return self
        integer = np.clip(np.rint(self.zero_points), 0, self.levels - 1).astype(np.uint8)
        return Int4Weight(self.values, self.scales, integer, self.k, self.block_size, self.bits)

    def offsets(self) -> np.ndarray | None:
        """Per block and output column, float32 ``[n_blocks, N]``: what ``stored()`` misses of each weight.

        ``(q - z) * s = (q - round(z)) * s + (round(z) - z) * s``: every weight of a block
        is off by the same ``(round(z) - z) * s``, so ``x @ W`` is the stored weight's
        product plus the sum of ``x`` over each block times that offset. None when the
        zero points are uint8 already (nothing to add).
        """
        if not self.has_offsets:
            return None
        integer = self.stored().zero_points.astype(np.float32)
        return np.ascontiguousarray(((integer - self.zero_points) * self.scales).T.astype(np.float32))

    def split(self, block_size: int) -> Int4Weight:
        """The same weight in blocks of ``block_size``, a divisor of this block size: each part keeps its block's
        scale and zero point, so the values are exactly those of this grid."""
        parts = self.block_size // block_size
        if parts * block_size != self.block_size:
            raise ValueError(f"a block of {self.block_size} does not split into blocks of {block_size}")
        values = self.values.reshape(self.n, self.blocks * parts, block_size)
        scales = np.repeat(self.scales, parts, axis=1)
        zero_points = None if self.zero_points is None else np.repeat(self.zero_points, parts, axis=1)
        return Int4Weight(values, scales, zero_points, self.k, block_size, self.bits)

    def explicit_zero_points(self) -> np.ndarray:
        """uint8 ``[N, n_blocks]`` zero points, the implicit middle level (8, or 128 at 8 bits) where none are
        stored (for ops whose default differs between providers); only for uint8 zero points, not float ones."""
        if self.zero_points is not None:
            return self.zero_points
        return np.full(self.scales.shape, self.levels // 2, dtype=np.uint8)

    def packed_zero_points(self) -> np.ndarray | None:
        """MatMulNBits' zero points: uint8 ``[N, ceil(n_blocks / 2)]`` packed like ``B`` (8 bits: ``[N, n_blocks]``);
        float32 ``[N, n_blocks]`` as they are when float (write ``stored()``'s instead); None when symmetric."""
        if self.zero_points is None or self.zero_points.dtype != np.uint8 or self.bits == 8:
            return self.zero_points
        # An odd count's unused nibble holds the default zero point, as ONNX Runtime's packer writes it.
        return pack_nibbles(self.zero_points, pad=SYMMETRIC_ZERO_POINT)


def pack_nibbles(values: np.ndarray, pad: int = 0) -> np.ndarray:
    """Pairs of 4-bit values along the last axis into bytes, the first in the low nibble (``pad`` ends an odd count)."""
    values = np.asarray(values, dtype=np.uint8)
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.full((*values.shape[:-1], 1), pad, np.uint8)], axis=-1)
    return np.ascontiguousarray(values[..., 0::2] | (values[..., 1::2] << 4))


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` 4-bit values along the last axis of ``packed`` (inverse of ``pack_nibbles``)."""
    packed = np.asarray(packed, dtype=np.uint8)
    both = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return both[..., :count]


def quantize_rtn(weight: np.ndarray, block_size: int, *, symmetric: bool) -> Int4Weight:
    """Round each block of the ``[K, N]`` ``weight`` to its nearest 4-bit value (ONNX Runtime's packer's choice)."""
    weight = np.asarray(weight, dtype=np.float32)
    blocks = _blocks(weight, block_size)
    scales, zero_points = _parameters(blocks, symmetric)
    values = _round(blocks, scales[..., None], _zero(zero_points)[..., None])
    return Int4Weight(values, scales, zero_points, weight.shape[0], block_size)


def recover_grid(weight: np.ndarray, block_size: int, bits: int = 4) -> Int4Weight | None:
    """The exact ``bits``-bit blocks of a ``[K, N]`` weight that already lies on such a grid, else None.

    A model exported from a quantized checkpoint (GGUF Q4_0/Q4_1/Q8_0, GPTQ, AWQ),
    dequantized to float, holds in each block of ``block_size`` values along K at most
    ``2**bits`` equally spaced levels. Re-rounding it loses accuracy for nothing
    (llama.cpp's Q4_1 puts the grid's zero between two levels, where a uint8 zero point
    cannot follow: round to nearest moves every weight of a block by up to half a step).
    A block's step is the first of these that fits: ``(max - min) / (2**bits - 1)``,
    ``max|w| / (2**(bits-1) - 1)`` and ``max|w| / 2**(bits-1)`` (symmetric grids), the
    smallest gap between its values, and at 4 bits ``(max - min) / m`` for ``m`` from 14
    down to 1 (a block that skips levels unevenly, e.g. half of a checkpoint's block read
    at block size 16), each step made ``(max - min) / n`` for the whole number ``n`` of
    steps it spans. Fitting means every value within 1e-3 of a step from a level and
    rebuilt from it to 1e-5 of the block's largest magnitude (a step that fits a sparse
    block only by accident misses that), all within ``2**bits - 1`` steps of the
    minimum. The zero points are uint8 where every block's zero falls on a level (GPTQ,
    AWQ, Q4_0, Q8_0), else float (Q4_1: ``Int4Weight.offsets``). None when K is not a
    multiple of the block (the padding would not lie on the grid) or any block misses.

    A grid of a coarser block is one of every finer block too (each part keeps its
    block's step and zero), and a part need not reveal its step (half of a Q8_0 block
    holds a few of 255 levels): when the blocks of ``block_size`` miss, the blocks of
    twice, four and eight times that size are tried and split.
    """
    grid = _recover_grid(weight, block_size, bits)
    coarser = block_size
    while grid is None and coarser < 8 * block_size:
        coarser *= 2
        # Tried on a few columns first, so a float-trained weight costs little more than one attempt.
        if _recover_grid(weight[:, :8], coarser, bits) is None:
            continue
        found = _recover_grid(weight, coarser, bits)
        grid = None if found is None else found.split(block_size)
    return grid


def _recover_grid(weight: np.ndarray, block_size: int, bits: int) -> Int4Weight | None:
    """``recover_grid`` at exactly ``block_size``."""
    weight = np.asarray(weight, dtype=np.float32)
    k, n = weight.shape
    if k % block_size or weight.size == 0:
        return None
    # Column chunks of about a million values: a float-trained weight fails in its first chunk, and
    # the float64 work (sorting included) stays a few tens of MB whatever the layer's size.
    width = max(1, (1 << 20) // k)
    parts = []
    for start in range(0, n, width):
        part = _grid_blocks(weight[:, start : start + width], block_size, bits)
        if part is None:
            return None
        parts.append(part)
    values, scales, zero = (np.concatenate(arrays, axis=0) for arrays in zip(*parts))
    top_level = (1 << bits) - 1
    tolerance = _GRID_TOLERANCE
    integral = np.abs(zero - np.rint(zero)).max() < tolerance and zero.min() > -0.5 and zero.max() < top_level + 0.5
    if integral:
        # A zero point rounded to its level moves every weight of the block by the same amount: only where that
        # stays within what the values are held to (``_GRID_EXACTNESS`` of the block's largest magnitude).
        peak = np.abs((values - zero[..., None]) * scales[..., None]).max(axis=-1)
        moved = np.abs(zero - np.rint(zero)) * scales
        integral = bool((moved <= _GRID_EXACTNESS * np.maximum(peak, np.finfo(np.float32).tiny)).all())
    if not integral:
        return Int4Weight(values, scales, zero.astype(np.float32), k, block_size, bits)
    # A symmetric grid (Q4_0, Q8_0) moved so every block's zero is the implicit one: no zero points stored.
    delta = (1 << (bits - 1)) - np.rint(zero)[..., None]
    if (values.min(axis=-1, keepdims=True) + delta >= 0).all() and (
        values.max(axis=-1, keepdims=True) + delta <= top_level
    ).all():
        return Int4Weight((values + delta).astype(np.uint8), scales, None, k, block_size, bits)
    return Int4Weight(values, scales, np.rint(zero).astype(np.uint8), k, block_size, bits)


def _grid_blocks(weight: np.ndarray, block_size: int, bits: int) -> tuple[np.ndarray, ...] | None:
    """``recover_grid`` on some columns: their values, scales and float zero points ``[n, blocks]``, or None."""
    levels_count = 1 << bits
    top_level = levels_count - 1
    blocks = _blocks(weight, block_size).astype(np.float64)
    low, high = blocks.min(axis=-1, keepdims=True), blocks.max(axis=-1, keepdims=True)
    spread, peak = high - low, np.maximum(np.abs(low), np.abs(high))
    tolerance = _GRID_TOLERANCE

    @functools.cache
    def distinct_gaps() -> tuple[np.ndarray, np.ndarray]:
        """The gaps between each block's sorted values, and which of them separate two levels (sorted once)."""
        gaps = np.diff(np.sort(blocks, axis=-1), axis=-1)
        return gaps, gaps > tolerance * spread / top_level

    def smallest_gap() -> np.ndarray:
        gaps, distinct = distinct_gaps()
        return np.where(distinct, gaps, np.inf).min(axis=-1, keepdims=True)

    candidates = (
        lambda: spread / top_level,
        lambda: peak / (levels_count // 2 - 1),
        lambda: peak / (levels_count // 2),
        smallest_gap,
    )
    step = np.full_like(low, np.nan)
    for make in candidates:
        candidate = make()
        candidate = np.where(np.isfinite(candidate), candidate, 0.0)
        fitted, exact = _fit_step(blocks, low, spread, peak, candidate, top_level)
        step = np.where(np.isnan(step) & fitted, exact, step)
        if not np.isnan(step).any():
            break
    else:
        # A grid's block spans m <= top_level steps; one whose values skip levels unevenly (half of a
        # Q4_1 block read at block_size 16) is found only by trying each spread / m. At 4 bits only (15
        # tries), never for a block with more distinct values than levels, and on a sample of the blocks
        # left first, so a float-trained weight is refused about as fast as before.
        if bits > 4 or (distinct_gaps()[1].sum(axis=-1) + 1 > levels_count).any():
            return None
        left = np.flatnonzero(np.isnan(step))
        flat = (blocks.reshape(-1, blocks.shape[-1]), low.reshape(-1, 1), spread.reshape(-1, 1), peak.reshape(-1, 1))
        if np.isnan(_step_by_span(*(a[left[:64]] for a in flat), top_level)).any():
            return None
        found = _step_by_span(*(a[left] for a in flat), top_level)
        if np.isnan(found).any():
            return None
        step = step.copy()
        step.reshape(-1)[left] = found[:, 0]
    # A constant block: one level, its value held by the zero point's offset (0 when it is 0).
    step = np.where(spread == 0, np.where(low == 0, 1.0, np.abs(low)), step)
    q = np.rint((blocks - low) / step)
    zero = -low / step
    # Shift the levels (they may not use them all) toward keeping the zero inside the range.
    top = q.max(axis=-1, keepdims=True)
    shift = np.clip(np.ceil(-zero - tolerance), 0, top_level - top)
    values = (q + shift).astype(np.uint8)
    return values, step[..., 0].astype(np.float32), (zero + shift)[..., 0]


def _fit_step(
    blocks: np.ndarray, low: np.ndarray, spread: np.ndarray, peak: np.ndarray, step: np.ndarray, top_level: int
) -> tuple[np.ndarray, np.ndarray]:
    """Which blocks ``step`` fits (every value within ``_GRID_TOLERANCE`` steps of a level ``low + i * step``,
    ``i <= top_level``, and rebuilt from it to ``_GRID_EXACTNESS`` of the block's ``peak``), and per block the
    step remade as ``spread / n`` for the whole number n of steps it spans (without the rounding a peak or a
    gap between two float32 values carries)."""
    q = (blocks - low) / np.where(step > 0, step, 1.0)
    levels = np.rint(q)
    spans = levels.max(axis=-1, keepdims=True)  # q is 0 at each block's minimum
    near = (np.abs(q - levels).max(axis=-1, keepdims=True) < _GRID_TOLERANCE) & (spans <= top_level) & (step > 0)
    if not near.any():
        return near | (spread == 0), step
    exact = np.where(near & (spans >= 1), spread / np.maximum(spans, 1.0), step)
    rebuilt = np.abs(low + levels * exact - blocks).max(axis=-1, keepdims=True)
    return (near & (rebuilt <= _GRID_EXACTNESS * peak)) | (spread == 0), exact


def _step_by_span(
    blocks: np.ndarray, low: np.ndarray, spread: np.ndarray, peak: np.ndarray, top_level: int
) -> np.ndarray:
    """The first ``spread / m``, m from ``top_level - 1`` down to 1, that ``_fit_step`` accepts for each
    ``[rows, block]`` block, per block ``[rows, 1]``; NaN where none does."""
    step = np.full_like(low, np.nan)
    for m in range(top_level - 1, 0, -1):
        fitted, exact = _fit_step(blocks, low, spread, peak, spread / m, top_level)
        step = np.where(np.isnan(step) & fitted, exact, step)
        if not np.isnan(step).any():
            break
    return step


def quantize_gptq(
    weight: np.ndarray,
    inputs: np.ndarray,
    block_size: int,
    *,
    symmetric: bool,
    damping: float = GPTQ_DAMPING,
) -> Int4Weight:
    """GPTQ: round the ``[K, N]`` ``weight`` column by column along K, compensating each error on later columns.

    ``inputs`` are rows of the layer's input ``[rows, K]`` from calibration data. Each
    block's scale and zero point are chosen from the block's weights as GPTQ has updated
    them when rounding reaches the block (its ``static_groups=False``); no column
    reordering, so the blocks stay contiguous as MatMulNBits needs.
    """
    weight = np.asarray(weight, dtype=np.float64)
    k, n = weight.shape
    x = np.asarray(inputs, dtype=np.float64).reshape(-1, k)
    hessian = 2.0 * (x.T @ x) / max(len(x), 1)
    # An input channel the calibration rows never excite has no error to trade: with a unit diagonal
    # and no off-diagonal terms its weights are rounded to nearest and nothing moves into or out of
    # them. (The reference GPTQ zeroes them instead, which is wrong wherever the channel is live.)
    dead = np.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    # Rows are output columns (GPTQ's [out, in] view).
    rows = weight.T.copy()
    hessian[np.diag_indices(k)] += damping * np.mean(np.diag(hessian))
    # Upper Cholesky factor of the inverse Hessian: row i holds the update weights of column i.
    inverse = np.linalg.cholesky(np.linalg.inv(hessian)).T
    padded = _padded_length(k, block_size)
    blocks = padded // block_size
    values = np.zeros((n, padded), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zero_points = None if symmetric else np.zeros((n, blocks), dtype=np.uint8)
    # Chunks of whole blocks, so each block's parameters are chosen from its weights as updated so far.
    lazy = max(GPTQ_LAZY_COLUMNS, block_size)
    scale, zero = np.ones(n), np.full(n, float(SYMMETRIC_ZERO_POINT))
    for start in range(0, k, lazy):
        end = min(start + lazy, k)
        chunk = rows[:, start:end].copy()
        errors = np.zeros_like(chunk)
        local = inverse[start:end, start:end]
        for i in range(end - start):
            column = start + i
            if column % block_size == 0:
                block = column // block_size
                group = np.zeros((n, 1, block_size), dtype=np.float32)
                width = min(block_size, end - column)
                group[:, 0, :width] = chunk[:, i : i + width]
                block_scale, block_zero = _parameters(group, symmetric)
                scales[:, block] = block_scale[:, 0]
                if zero_points is not None:
                    zero_points[:, block] = block_zero[:, 0]
                scale = block_scale[:, 0].astype(np.float64)
                zero = np.asarray(_zero(block_zero), dtype=np.float64).reshape(-1)[:n] * np.ones(n)
            q = _round(chunk[:, i], scale, zero)
            values[:, column] = q
            error = (chunk[:, i] - (q - zero) * scale) / local[i, i]
            chunk[:, i:] -= np.outer(error, local[i, i:])
            errors[:, i] = error
        rows[:, end:] -= errors @ inverse[start:end, end:]
    return Int4Weight(values.reshape(n, blocks, block_size), scales, zero_points, k, block_size)


def quantize_hqq(weight: np.ndarray, block_size: int) -> Int4Weight:
    """HQQ: asymmetric blocks whose float zero points minimize ``‖W - dequantize(quantize(W))‖_p``, p = 0.7.

    Starts from the min-max scale and rounded zero point and alternates (the reference
    solver ONNX Runtime's HQQ quantizer runs): round, shrink the residual with the
    ``l_p`` proximal operator, refit the zero point to what is left; it stops when the
    mean absolute weight error stops falling. The scale stays min-max.
    """
    weight = np.asarray(weight, dtype=np.float32)
    blocks = _blocks(weight, block_size)
    low, high = blocks.min(axis=-1, keepdims=True), blocks.max(axis=-1, keepdims=True)
    spread = np.where(high - low == 0, LEVELS - 1, high - low)
    inverse_scale = np.minimum((LEVELS - 1) / spread, 2e4).astype(np.float32)
    zero = np.rint(-low * inverse_scale).astype(np.float32)
    beta, best = HQQ_BETA, np.inf
    for _ in range(HQQ_ITERATIONS):
        q = np.clip(np.rint(blocks * inverse_scale + zero), 0, LEVELS - 1)
        residual = blocks - (q - zero) / inverse_scale
        error = float(np.abs(residual).mean())
        if error >= best:
            break
        best = error
        magnitude = np.abs(residual)
        shrunk = np.sign(residual) * np.maximum(magnitude - (1.0 / beta) * np.power(magnitude + 1e-8, HQQ_NORM - 1), 0)
        zero = np.mean(q - (blocks - shrunk) * inverse_scale, axis=-1, keepdims=True).astype(np.float32)
        beta *= HQQ_KAPPA
    # The zero point of the last step taken (one that lowered the error) with its own rounding.
    values = np.clip(np.rint(blocks * inverse_scale + zero), 0, LEVELS - 1).astype(np.uint8)
    scales = (1.0 / inverse_scale)[..., 0].astype(np.float32)
    return Int4Weight(values, scales, zero[..., 0].astype(np.float32), weight.shape[0], block_size)


def _padded_length(k: int, block_size: int) -> int:
    return -(-k // block_size) * block_size


def span_overflows(weight: np.ndarray, block_size: int) -> bool:
    """Whether a block of the ``[K, N]`` ``weight``, its range widened to include 0, spans more than float32 holds:
    its asymmetric scale (span / 15) would be infinite and every value of the block NaN."""
    weight = np.asarray(weight, dtype=np.float32)
    if not weight.size or float(weight.max()) - float(weight.min()) <= np.finfo(np.float32).max:
        return False  # (Python floats: the whole weight's span, computed without overflow, bounds each block's)
    blocks = _blocks(weight, block_size)
    low = np.minimum(blocks.min(axis=-1), 0).astype(np.float64)
    high = np.maximum(blocks.max(axis=-1), 0).astype(np.float64)
    return bool((high - low > np.finfo(np.float32).max).any())


def _blocks(weight: np.ndarray, block_size: int) -> np.ndarray:
    """``[K, N]`` as ``[N, n_blocks, block_size]``, K padded with zeros to whole blocks."""
    k = weight.shape[0]
    padded = np.pad(weight, ((0, _padded_length(k, block_size) - k), (0, 0)))
    return np.ascontiguousarray(padded.T.reshape(weight.shape[1], -1, block_size))


def _parameters(blocks: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-block scale and uint8 zero point (None if symmetric), as ONNX Runtime's packer (MLAS) computes them.

    Symmetric: the value of largest magnitude maps to -8 (``scale = that value / -8``,
    negative when it is positive). Asymmetric: the range widened to include 0 spans 15 steps.
    """
    if symmetric:
        high, low = blocks.max(axis=-1), blocks.min(axis=-1)
        peak = np.where(np.abs(high) > np.abs(low), high, low)
        return (peak / np.float32(-SYMMETRIC_ZERO_POINT)).astype(np.float32), None
    low = np.minimum(blocks.min(axis=-1), 0)
    high = np.maximum(blocks.max(axis=-1), 0)
    scale = ((high - low) / np.float32(LEVELS - 1)).astype(np.float32)
    safe = np.where(scale == 0, 1, scale)
    zero_point = np.where(scale == 0, SYMMETRIC_ZERO_POINT, np.clip(np.rint(-low / safe), 0, LEVELS - 1))
    return scale, zero_point.astype(np.uint8)


def _zero(zero_points: np.ndarray | None) -> np.ndarray | float:
    return np.float32(SYMMETRIC_ZERO_POINT) if zero_points is None else zero_points.astype(np.float32)


def _round(values: np.ndarray, scale: np.ndarray, zero: np.ndarray | float) -> np.ndarray:
    """4-bit values ``clip(round(values / scale) + zero)``; a zero scale (an all-zero block) stores the zero point."""
    safe = np.where(scale == 0, 1, scale)
    rounded = np.where(scale == 0, zero, np.rint(values / safe) + zero)
    return np.clip(rounded, 0, LEVELS - 1).astype(np.uint8)

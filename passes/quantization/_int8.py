"""The int8 arithmetic shared by the quantization passes: weight and activation quantization parameters.

Weights are int8, symmetric (zero point 0), per output channel or per tensor: ONNX
Runtime's int8 kernels on x86 take uint8 activations times int8 weights (U8S8),
and symmetric weights let them skip the weight zero-point correction.
Activations are uint8 with a zero point, so a one-sided range (after Relu, GELU's
mostly-positive output) uses all 256 levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# 7-bit weights: on x86 CPUs without VNNI, the U8S8 kernels add pairs of u8*s8
# products in int16 (vpmaddubsw), which saturates for full-range int8 weights.
REDUCED_RANGE_MAX = 63
FULL_RANGE_MAX = 127
# Per-row activations: symmetric int8 in [-127, 127], one scale per row (max|x_row| / 127),
# stored shifted by this zero point as uint8 so the kernels stay U8S8 (ONNX Runtime's S8S8
# MatMulIntegerToFloat measured 10x slower than U8S8 on x86) and the zero point is one scalar,
# which is all MatMulIntegerToFloat accepts. The smallest normal float32 floors the scale of
# an all-zero row.
ROW_LEVELS = 127
ROW_ZERO_POINT = 128
ROW_SCALE_FLOOR = np.finfo(np.float32).tiny


@dataclass(frozen=True)
class QuantizedWeight:
    """An int8 weight and its float scales: ``weight ≈ values * scale`` along ``axis`` (None = per tensor)."""

    values: np.ndarray
    scale: np.ndarray
    axis: int | None

    @property
    def zero_point(self) -> np.ndarray:
        """All-zero int8 zero points shaped like ``scale`` (the weights are symmetric)."""
        return np.zeros(self.scale.shape, dtype=np.int8)

    def dequantize(self) -> np.ndarray:
        """The float32 weight the int8 one stands for."""
        if self.axis is None:
            return self.values.astype(np.float32) * self.scale
        shape = [1] * self.values.ndim
        shape[self.axis] = -1
        return self.values.astype(np.float32) * self.scale.reshape(shape)


def quantize_weight(weight: np.ndarray, axis: int | None, *, reduce_range: bool = False) -> QuantizedWeight:
    """Quantize a float weight to symmetric int8, one scale per slice along ``axis`` (None: one scale).

    A slice that is all zeros gets scale 1 so the kernels never divide by zero.
    """
    weight = np.asarray(weight, dtype=np.float32)
    limit = REDUCED_RANGE_MAX if reduce_range else FULL_RANGE_MAX
    if axis is None:
        peak = np.array(np.abs(weight).max(initial=0.0), dtype=np.float32)
        scale = np.where(peak > 0, peak / limit, 1.0).astype(np.float32)
        values = np.clip(np.rint(weight / scale), -limit, limit).astype(np.int8)
        return QuantizedWeight(values, scale.reshape(()), None)
    axis = axis % weight.ndim
    other = tuple(i for i in range(weight.ndim) if i != axis)
    peak = np.abs(weight).max(axis=other, initial=0.0)
    scale = np.where(peak > 0, peak / limit, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    values = np.clip(np.rint(weight / scale.reshape(shape)), -limit, limit).astype(np.int8)
    return QuantizedWeight(values, scale, axis)


def activation_parameters(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """Scale and uint8 zero point for activations in ``[low, high]``.

    The range is widened to include 0 so that zero (padding, Relu's output) is exact.
    """
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low < 1e-12:
        return np.float32(1.0), np.uint8(0)
    scale = np.float32((high - low) / 255.0)
    zero_point = np.uint8(np.clip(np.rint(-low / scale), 0, 255))
    return scale, zero_point


def quantize_bias(bias: np.ndarray, scale: np.ndarray) -> np.ndarray | None:
    """The bias as int32 at ``scale`` (activation scale x weight scale, per output channel or one), or
    None when a value does not fit int32 (tiny scales): then it stays float.
    """
    values = np.rint(np.asarray(bias, dtype=np.float64) / np.asarray(scale, dtype=np.float64))
    if not np.all(np.abs(values) < np.iinfo(np.int32).max):
        return None
    return values.astype(np.int32)


def claimed_weight(weight: np.ndarray, quantized: QuantizedWeight, layer: str) -> np.ndarray:
    """The float weight an int8 twin claims: ``quantized`` dequantized, checked against ``weight``.

    Symmetric int8 with ``scale = peak / limit`` never clips, so every dequantized value
    lies within half a step of the float one; a scale that does not belong to the values
    (a bug shared by the rewrite and its twin) breaks that, and is refused here rather
    than verified against itself.
    """
    weight = np.asarray(weight, dtype=np.float32)
    dequantized = quantized.dequantize()
    if quantized.axis is None:
        step = np.broadcast_to(quantized.scale, weight.shape)
    else:
        shape = [1] * weight.ndim
        shape[quantized.axis] = -1
        step = np.broadcast_to(quantized.scale.reshape(shape), weight.shape)
    slack = 0.5 * step * (1 + 1e-5) + 1e-7 * np.abs(weight)
    if dequantized.shape != weight.shape or not (np.abs(dequantized - weight) <= slack).all():
        raise ValueError(f"int8 weight of {layer}: its values and scales do not stand for the float weight")
    return dequantized

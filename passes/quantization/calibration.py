"""Activation ranges from calibration data: min-max, percentile and entropy (KL divergence).

The model runs on ONNX Runtime with the requested tensors exposed as extra outputs;
each tensor's values over all samples are summarized in one histogram over a range
symmetric about zero (so ranges from different batches merge exactly).

- ``minmax``: the smallest and largest value seen. Exact, and at the mercy of one outlier.
- ``percentile``: cut ``(100 - percentile) / 2`` % of the values off each tail.
- ``entropy``: the symmetric clipping threshold whose 128-level quantized histogram is
  closest (KL divergence) to the real one, as TensorRT does; the search is
  onnxruntime.quantization's ``HistogramCollector.get_entropy_threshold``.

Percentile and entropy ranges never exceed the min-max range.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from optimizer.padding import batch_padding, token_axes, token_rows, unpadded_rows
from optimizer.progress import track
from optimizer.runtime import value_collector

METHODS = ("minmax", "percentile", "entropy")
DEFAULT_PERCENTILE = 99.999
_BINS = 2048
_ENTROPY_LEVELS = 128


def tensor_ranges(
    runs: Iterable[Mapping[str, np.ndarray]],
    method: str = "minmax",
    percentile: float = DEFAULT_PERCENTILE,
) -> dict[str, tuple[float, float]]:
    """Each tensor's ``(low, high)`` range under ``method``, from its values in ``runs``.

    ``runs`` is iterated twice for percentile and entropy (extremes, then a histogram
    over them), so it may be a re-iterable stream rather than a list held in memory.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile {percentile}: expected a value in (0, 100]")
    extremes: dict[str, tuple[float, float]] = {}
    for run in runs:
        for name, array in run.items():
            finite = _finite(array)
            if finite.size:
                low, high = extremes.get(name, (np.inf, -np.inf))
                extremes[name] = (min(low, float(finite.min())), max(high, float(finite.max())))
            else:
                extremes.setdefault(name, (np.inf, -np.inf))
    extremes = {name: (low, high) if low <= high else (0.0, 0.0) for name, (low, high) in extremes.items()}
    if method == "minmax":
        return extremes
    histograms: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for run in runs:
        for name, array in run.items():
            low, high = extremes[name]
            if low == high:
                continue
            if name not in histograms:
                threshold = max(abs(low), abs(high))
                histograms[name] = (np.zeros(_BINS, np.int64), np.linspace(-threshold, threshold, _BINS + 1))
            counts, edges = histograms[name]
            counts += np.histogram(_finite(array), bins=edges)[0]
    ranges = dict(extremes)
    for name, (counts, edges) in histograms.items():
        low, high = extremes[name]
        if method == "percentile":
            cut_low, cut_high = _percentile_range(counts, edges, percentile)
        else:
            cut_low, cut_high = _entropy_range(counts, edges, low, high)
        ranges[name] = (max(low, cut_low), min(high, cut_high))
    return ranges


def calibrate(
    model: ir.Model,
    names: Sequence[str],
    batches: Sequence[Mapping[str, np.ndarray]],
    method: str = "minmax",
    percentile: float = DEFAULT_PERCENTILE,
) -> dict[str, tuple[float, float]]:
    """The ``(low, high)`` range of each named tensor of ``model`` over the calibration ``batches``.

    The batches are run once per pass over them, one at a time: memory stays at one
    batch's tensors plus a histogram per tensor, whatever the number of samples. A batch's padded
    positions are left out (``optimizer.padding.unpadded_rows``): the model is not used on pad tokens.
    """
    with value_collector(model, names) as run:
        return tensor_ranges(_Stream(run, batches, model, token_rows(model, names)), method, percentile)


def channel_peaks(
    model: ir.Model, names: Sequence[str], batches: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Each named tensor's largest magnitude per channel (last axis) over the batches: SmoothQuant's statistic.

    Only finite values count, as in the ranges: one infinite input value made a norm's output NaN on its
    row, every factor NaN, and the smoothed model NaN on every sample (the budget's points all read cosine 0,
    the model left float); a channel with no finite value has peak 0 (the factors' floor then holds it). A batch's
    padded positions do not count (``optimizer.padding.unpadded_rows``)."""
    peaks: dict[str, np.ndarray] = {}
    tokens = token_rows(model, names)
    with value_collector(model, names) as run:
        for batch in track(batches, "SmoothQuant: channel peaks per batch"):
            padding = batch_padding(model, batch)
            for name, array in run(batch).items():
                array = np.abs(unpadded_rows(np.asarray(array, dtype=np.float32), padding if name in tokens else {}))
                array = np.where(np.isfinite(array), array, np.float32(0.0))
                if not len(array):
                    continue
                peak = array.max(axis=0)
                peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def channel_means(
    model: ir.Model, names: Sequence[str], batches: Sequence[Mapping[str, np.ndarray]], axis: int = 1
) -> dict[str, np.ndarray]:
    """Each named tensor's mean per channel (``axis``; 1 for NCHW activations) over every sample of the batches.

    The statistic of bias correction: a layer's int8 weight error times its input's mean is
    the shift of the layer's mean output, which the bias can take back. Only finite values count, as in the
    ranges: one infinite pixel made a channel's mean infinite, every corrected bias NaN, and each such layer
    lost its correction and its int32 bias (noted as "too large for int32"); a channel with no finite value
    has mean 0 (no correction). A batch's padded positions do not count where the tensor's axes hold a padding mask's
    batch and tokens (``optimizer.padding.token_axes``: a ``Conv1d``'s ``[batch, channels, tokens]`` input, a
    ``Transpose`` of token rows, as in wav2vec's and text CNNs'); they did until a review in session 72.
    """
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    tokens = {name: axes for name, axes in token_axes(model, names).items() if axis not in axes}
    with value_collector(model, names) as run:
        for batch in batches:
            padding = batch_padding(model, batch) if tokens else {}
            for name, array in run(batch).items():
                kept = _unpadded_positions(np.shape(array), tokens.get(name), padding)
                # Channel by channel: float64 copies of a whole activation (a U-Net's 160 channels of 256x256, 8
                # pages) took 5x its float32 bytes; each channel's sum is the same taken alone.
                channels = [
                    _finite_sum(np.take(array, c, axis=axis), None if kept is None else np.take(kept, 0, axis=axis))
                    for c in range(array.shape[axis])
                ]
                sums[name] = sums.get(name, 0.0) + np.array([total for total, _ in channels], np.float64)
                counts[name] = counts.get(name, 0) + np.array([count for _, count in channels], np.int64)
    return {name: (sums[name] / np.maximum(counts[name], 1)).astype(np.float32) for name in sums}


def _finite_sum(values: np.ndarray, kept: np.ndarray | None = None) -> tuple[np.float64, int]:
    """The float64 sum of ``values``' finite elements (those ``kept`` marks, broadcast, where given) and their count."""
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if kept is not None:
        finite &= kept
    return np.where(finite, values, 0.0).sum(), int(np.count_nonzero(finite))


def _unpadded_positions(shape: tuple[int, ...], axes: tuple[int, int] | None, padding) -> np.ndarray | None:
    """Booleans that broadcast against an array of ``shape``, False at the positions ``padding`` (``batch_padding``)
    pads along its batch and token ``axes`` (``optimizer.padding.token_axes``); None where no mask of that batch and
    length pads."""
    if axes is None or max(axes) >= len(shape):
        return None
    batch, sequence = axes
    padded = padding.get((shape[batch], shape[sequence]))
    if padded is None:
        return None
    kept = ~padded if batch < sequence else ~padded.T
    broadcast = [1] * len(shape)
    broadcast[batch], broadcast[sequence] = shape[batch], shape[sequence]
    return kept.reshape(broadcast)


class _Stream:
    """Re-iterable: each iteration runs the model on every batch again."""

    def __init__(
        self, run: Callable[[Mapping[str, np.ndarray]], dict], batches, model: ir.Model, tokens: frozenset[str]
    ) -> None:
        self.run, self.batches, self.model, self.tokens = run, batches, model, tokens

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for batch in track(self.batches, "calibration batches"):
            padding = batch_padding(self.model, batch)
            yield {
                name: unpadded_rows(array, padding if name in self.tokens else {})
                for name, array in self.run(batch).items()
            }


def _finite(array: np.ndarray) -> np.ndarray:
    flat = np.asarray(array, dtype=np.float32).ravel()
    return flat[np.isfinite(flat)]


def _percentile_range(counts: np.ndarray, edges: np.ndarray, percentile: float) -> tuple[float, float]:
    cdf = np.cumsum(counts) / counts.sum()
    tail = (100.0 - percentile) / 200.0
    left = int(np.searchsorted(cdf, tail, side="right"))
    right = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    return float(edges[left]), float(edges[min(right + 1, len(edges) - 1)])


def _entropy_range(counts: np.ndarray, edges: np.ndarray, low: float, high: float) -> tuple[float, float]:
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector("entropy", False, _BINS, _ENTROPY_LEVELS, None, None)
    dtype = np.float32
    histogram = (counts, edges.astype(dtype), dtype(low), dtype(high), dtype(edges[-1]))
    cut_low, cut_high = collector.get_entropy_threshold(histogram, _ENTROPY_LEVELS)
    return float(cut_low), float(cut_high)

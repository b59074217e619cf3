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

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from optimizer.runtime import inference_session, run_session

METHODS = ("minmax", "percentile", "entropy")
DEFAULT_PERCENTILE = 99.999
_BINS = 2048
_ENTROPY_LEVELS = 128


def collect(
    model: ir.Model, names: Sequence[str], batches: Sequence[Mapping[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """Run ``model`` on each batch and return the named tensors' values, one dict per batch."""
    probe = model.clone()
    values = {value.name: value for node in probe.graph for value in node.outputs}
    values.update({value.name: value for value in probe.graph.inputs})
    existing = {value.name for value in probe.graph.outputs}
    missing = [name for name in names if name not in values]
    if missing:
        raise KeyError(f"no tensor named {missing[0]!r} in the model")
    probe.graph.outputs.extend(values[name] for name in dict.fromkeys(names) if name not in existing)
    runs = []
    with inference_session(probe) as session:
        for batch in batches:
            outputs = run_session(session, batch)
            runs.append({name: outputs[name] for name in names})
    return runs


def tensor_ranges(
    runs: Sequence[Mapping[str, np.ndarray]],
    method: str = "minmax",
    percentile: float = DEFAULT_PERCENTILE,
) -> dict[str, tuple[float, float]]:
    """Each tensor's ``(low, high)`` range under ``method``, from its values in ``runs`` (see ``collect``)."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile {percentile}: expected a value in (0, 100]")
    names = list(runs[0]) if runs else []
    ranges = {}
    for name in names:
        arrays = [np.asarray(run[name], dtype=np.float32).ravel() for run in runs]
        arrays = [array[np.isfinite(array)] for array in arrays]
        low = float(min((array.min() for array in arrays if array.size), default=0.0))
        high = float(max((array.max() for array in arrays if array.size), default=0.0))
        if method == "minmax" or low == high:
            ranges[name] = (low, high)
            continue
        histogram = _histogram(arrays, max(abs(low), abs(high)))
        if method == "percentile":
            cut_low, cut_high = _percentile_range(*histogram, percentile)
        else:
            cut_low, cut_high = _entropy_range(*histogram, low, high)
        ranges[name] = (max(low, cut_low), min(high, cut_high))
    return ranges


def calibrate(
    model: ir.Model,
    names: Sequence[str],
    batches: Sequence[Mapping[str, np.ndarray]],
    method: str = "minmax",
    percentile: float = DEFAULT_PERCENTILE,
) -> dict[str, tuple[float, float]]:
    """The ``(low, high)`` range of each named tensor of ``model`` over the calibration ``batches``."""
    return tensor_ranges(collect(model, names, batches), method, percentile)


def channel_peaks(runs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each tensor's largest magnitude per channel (last axis) over ``runs``: SmoothQuant's statistic."""
    peaks: dict[str, np.ndarray] = {}
    for run in runs:
        for name, array in run.items():
            array = np.abs(np.asarray(array, dtype=np.float32))
            peak = array.reshape(-1, array.shape[-1]).max(axis=0)
            peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def _histogram(arrays: Sequence[np.ndarray], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(-threshold, threshold, _BINS + 1, dtype=np.float64)
    counts = np.zeros(_BINS, dtype=np.int64)
    for array in arrays:
        counts += np.histogram(array, bins=edges)[0]
    return counts, edges


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

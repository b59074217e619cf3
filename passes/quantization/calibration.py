"""Activation ranges from calibration data: min-max, percentile and entropy (KL divergence).

The model runs on ONNX Runtime with the requested tensors exposed as extra outputs, a few
samples a run (``_sample_runs``: what one run exposes is held at once); each tensor's values
over all samples are summarized in one histogram over a range symmetric about zero (so
ranges from different runs merge exactly).

- ``minmax``: the smallest and largest value seen. Exact, and at the mercy of one outlier.
- ``percentile``: cut ``(100 - percentile) / 2`` % of the values off each tail.
- ``entropy``: the symmetric clipping threshold whose 128-level quantized histogram is
  closest (KL divergence) to the real one, as TensorRT does; the search is
  onnxruntime.quantization's ``HistogramCollector.get_entropy_threshold``.

Percentile and entropy ranges never exceed the min-max range.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_domain
from optimizer.errors import RuntimeRefusedError
from optimizer.padding import batch_padding, token_axes, token_rows, unpadded_rows
from optimizer.progress import track
from optimizer.runtime import value_collector
from optimizer.samples import SAMPLE_BATCH, SampleAxes, holds_samples, samples_in, split_samples

METHODS = ("minmax", "percentile", "entropy")
DEFAULT_PERCENTILE = 99.999
logger = logging.getLogger(__name__)

_BINS = 2048
_ENTROPY_LEVELS = 128
# The most bytes of exposed tensors one calibration run should return: every intermediate a CNN's layers read, for a
# whole batch of 16 samples at once, set the peak of `--quantize static` (a MobileNetV2-like net at 224x224, 12 images:
# 1.1 GB, 0.75 GB of it that one run's arrays).
_RUN_BYTES = 64 << 20
# Elements of the channels whose float64 copies ``channel_means`` takes at once (512 KB of them): a few channels of a
# large activation, as one alone did, or hundreds of small ones.
_CHANNEL_BLOCK_ELEMENTS = 1 << 16


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
            # Binned as equal widths (numpy's fast path, float64 edges, the same as ``edges``): given the edges as an
            # array numpy sorts every tensor to bin it, the most time calibration took past the model's runs.
            counts += np.histogram(_finite(array), bins=_BINS, range=(edges[0], edges[-1]))[0]
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

    The batches are run once per pass over them, a few samples at a time (``_sample_runs``): memory stays at one
    run's tensors plus a histogram per tensor, whatever the number of samples. A batch's padded
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
        for batch, outputs in _sample_runs(run, model, batches):
            padding = batch_padding(model, batch) if tokens else {}
            for name, array in outputs.items():
                kept = _unpadded_positions(np.shape(array), tokens.get(name), padding)
                # Channel by channel: float64 copies of a whole activation (a U-Net's 160 channels of 256x256, 8
                # pages) took 5x its float32 bytes; each channel's sum is the same taken alone.
                channels = (
                    _channel_sums(array, axis)
                    if kept is None
                    else [
                        _finite_sum(np.take(array, c, axis=axis), np.take(kept, 0, axis=axis))
                        for c in range(array.shape[axis])
                    ]
                )
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


def _channel_sums(array: np.ndarray, axis: int) -> list[tuple[np.float64, int]]:
    """``_finite_sum`` of each channel (``axis``) of ``array``, a block of channels at a time: one call per channel cost
    more than the sums where a run holds one sample (a 1x1 layer's 960 channels of 7x7)."""
    array = np.asarray(array)
    count = array.shape[axis]
    block = max(1, _CHANNEL_BLOCK_ELEMENTS * count // max(array.size, 1))
    found: list[tuple[np.float64, int]] = []
    for start in range(0, count, block):
        channels = np.moveaxis(array[(slice(None),) * axis + (slice(start, start + block),)], axis, 0)
        # Each channel a row, summed along itself as the channel taken alone is: the same pairwise sum.
        values = channels.reshape(len(channels), -1).astype(np.float64)
        finite = np.isfinite(values)
        totals = np.where(finite, values, 0.0).sum(axis=1)
        found += zip(totals, np.count_nonzero(finite, axis=1).tolist())
    return found


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
        for batch, outputs in _sample_runs(self.run, self.model, self.batches, "calibration batches"):
            padding = batch_padding(self.model, batch)
            tokens = self.tokens
            rows = {name: unpadded_rows(array, padding if name in tokens else {}) for name, array in outputs.items()}
            yield rows
            rows.clear()  # as ``_sample_runs`` empties its own: these are views of its tensors


def _sample_runs(
    run: Callable[[Mapping[str, np.ndarray]], dict],
    model: ir.Model,
    batches: Sequence[Mapping[str, np.ndarray]],
    label: str | None = None,
) -> Iterator[tuple[Mapping[str, np.ndarray], dict[str, np.ndarray]]]:
    """Each part of ``batches`` that ``run`` is given, and what it returned (emptied when the next part is asked for),
    one part at a time: one sample a run until a run says how many bytes a sample's exposed tensors take, then as many
    samples as keep a run's within ``_RUN_BYTES`` (at most a batch; a model whose batch is fixed is fed its batches
    whole, ``split_samples``). The batches count as steps of a progress task ``label`` where one is given.

    The statistics are extremes, counts and float64 sums over the samples, which the grouping of samples into runs does
    not change (the sums to float64 rounding); run whole, a batch of 16 images held every exposed activation of all 16
    at once.
    """
    per_run = None  # samples a run, once the first run has said what a sample's tensors take
    for batch in batches if label is None else track(batches, label):
        if per_run is None:
            rest, part, outputs, per_run = _first_run(run, model, batch)
            runs = itertools.chain([(part, outputs)], ((part, run(part)) for part in rest))
        else:
            runs = ((part, run(part)) for part in split_samples(batch, per_run, model))
        for part, outputs in runs:
            yield part, outputs
            # Emptied once taken in: the caller's loop names still hold the dict while the next run returns, and the
            # tensors of two runs were alive at once.
            outputs.clear()


def _first_run(
    run: Callable[[Mapping[str, np.ndarray]], dict], model: ir.Model, batch: Mapping[str, np.ndarray]
) -> tuple[Sequence[Mapping[str, np.ndarray]], Mapping[str, np.ndarray], dict[str, np.ndarray], int]:
    """``_sample_runs``' first run, on ``batch``'s first sample: the parts of ``batch`` left to run, the part run, what
    it returned, and how many samples later runs may take. Where ONNX Runtime refuses one sample alone and runs the
    batch (a model with a batch traced into a ``Reshape``), or where the first two samples run together give other
    extremes than each alone (``_samples_interact``), the whole batch, and whole batches after it."""
    parts = split_samples(batch, 1, model)
    try:
        outputs = run(parts[0])
    except RuntimeRefusedError as error:
        if len(parts) == 1:
            raise
        logger.info("calibration runs whole batches: one sample alone was refused (%s)", error.reason)
        return [], batch, run(batch), SAMPLE_BATCH
    holds = holds_samples(model)
    if len(parts) > 1 and not _keeps_samples_apart(model):
        try:
            interact = _samples_interact(run, outputs, parts[1], split_samples(batch, 2, model)[0], holds)
        except RuntimeRefusedError as error:  # one sample a run is how it runs, and how the batch was refused
            logger.info("calibration runs one sample at a time: two samples together were refused (%s)", error.reason)
            return parts[1:], parts[0], outputs, 1
        if interact:
            logger.info("calibration runs whole batches: two samples run together differ from each run alone")
            outputs.clear()
            return [], batch, run(batch), SAMPLE_BATCH
    exposed = sum(np.asarray(array).nbytes for array in outputs.values())
    samples = max(1, samples_in(parts[0], holds))
    return parts[1:], parts[0], outputs, min(SAMPLE_BATCH, max(1, _RUN_BYTES * samples // max(exposed, 1)))


# ONNX ops that compute each sample's values (along axis 0) from that sample's alone, with constant weights: a graph of
# these alone (a CNN's) needs no check that its samples meet (``_keeps_samples_apart``).
_ELEMENTWISE = frozenset(
    "Abs Add And Ceil Celu Clip Cos Div Elu Equal Erf Exp Floor Gelu Greater GreaterOrEqual HardSigmoid HardSwish "
    "Identity IsInf IsNaN LeakyRelu Less LessOrEqual Log Max Min Mish Mod Mul Neg Not Or Pow PRelu Reciprocal Relu "
    "Round Selu Sigmoid Sign Sin Softplus Softsign Sqrt Sub Tan Tanh ThresholdedRelu Where Xor Cast Dropout".split()
)
_PER_SAMPLE = frozenset(
    "Conv ConvTranspose MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool "
    "InstanceNormalization LRN".split()
)


def _keeps_samples_apart(model: ir.Model) -> bool:
    """Whether every node of ``model``'s graph is one that keeps its samples apart: elementwise ops, convolutions and
    pools, an inference ``BatchNormalization``, a ``Flatten`` or ``Softmax`` from axis 1 on, a ``Gemm`` or 2-D
    constant-weight ``MatMul`` whose rows are the samples. Any other graph (a Reshape, a Transpose, an attention's
    MatMul of two activations, a reduction) gets ``_samples_interact``'s check."""
    for node in model.graph:
        op = node.op_type
        if not is_onnx_domain(node):
            return False
        if op == "Constant" or op in _PER_SAMPLE:
            continue
        if op in _ELEMENTWISE:
            # Activations of another rank broadcast from the right: a ``lengths [B]`` beside ``x [B, B]`` meets its
            # samples along the last axis.
            activations = [value for value in node.inputs if value is not None and not _is_constant(value)]
            ranks = {_rank(value) for value in activations}
            if len(activations) <= 1 or (len(ranks) == 1 and None not in ranks):
                continue
            return False
        if op == "BatchNormalization" and not node.attributes.get_int("training_mode", 0):
            continue
        if op in ("Flatten", "Softmax", "LogSoftmax") and _from_axis_one(node):
            continue
        if (
            op == "Gemm"
            and not node.attributes.get_int("transA", 0)
            and all(_is_constant(value) for value in node.inputs[1:] if value is not None)
        ):
            continue
        if (
            op == "MatMul"
            and _is_constant(node.inputs[1])
            and _rank(node.inputs[0]) == 2
            and _rank(node.inputs[1]) == 2
        ):
            continue
        return False
    return True


def _from_axis_one(node: ir.Node) -> bool:
    """Whether ``node``'s ``axis`` (1 by default, as ``Flatten``'s and an opset-12 ``Softmax``'s) lies past axis 0."""
    default = 1 if node.op_type == "Flatten" else -1
    axis = node.attributes.get_int("axis", default)
    rank = _rank(node.inputs[0])
    return axis >= 1 or (rank is not None and axis + rank >= 1)


def _rank(value: ir.Value | None) -> int | None:
    """The rank of ``value``'s recorded shape; None where none is."""
    return len(value.shape) if value is not None and value.shape is not None else None


def _is_constant(value: ir.Value | None) -> bool:
    """Whether ``value`` is a constant (an initializer, an overridable one too, or a ``Constant``'s output)."""
    return value is not None and ir.convenience.get_const_tensor(value) is not None


def _samples_interact(
    run: Callable[[Mapping[str, np.ndarray]], dict],
    first: Mapping[str, np.ndarray],
    second: Mapping[str, np.ndarray],
    both: Mapping[str, np.ndarray],
    holds: SampleAxes,
) -> bool:
    """Whether the exposed tensors of ``both`` (the first two samples run together) reach other extremes than those of
    the first sample alone (``first``, its run's tensors) and the second (``second``, a part to run): a model whose
    samples meet (a Softmax or a mean over the batch axis, a BatchNormalization left in training mode) computes other
    values one sample a run than a batch at once, and its ranges, read one sample a run, were another model's (a
    Softmax over the batch axis calibrated to exactly 1.0) until review s73 late3. Parts that are not two samples and
    one (a fixed batch, a model run one sample at a time) meet as the batch does: no."""
    if samples_in(both, holds) != 2 or samples_in(second, holds) != 1:
        return False
    alone = [_extremes(first)]
    alone.append(_extremes(run(second)))  # its tensors dropped before the two samples run
    together = _extremes(run(both))
    for name, (low, high) in together.items():
        if any(name not in part for part in alone):
            continue
        expected = (min(part[name][0] for part in alone), max(part[name][1] for part in alone))
        # Batched kernels round differently from one sample's (another GEMM blocking): a thousandth of the range is
        # far past that, and far below what samples that meet change (a Softmax over 2 rows instead of 1 halves it).
        tolerance = 1e-3 * max(abs(low), abs(high), *map(abs, expected)) + 1e-12
        if abs(low - expected[0]) > tolerance or abs(high - expected[1]) > tolerance:
            return True
    return False


def _extremes(outputs: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """The finite ``(min, max)`` of each of ``outputs`` that holds a finite value."""
    found = {}
    for name, array in outputs.items():
        values = _finite(array)
        if values.size:
            found[name] = (float(values.min()), float(values.max()))
    return found


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

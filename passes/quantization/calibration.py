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
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_domain
from optimizer.draws import may_draw
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


def calibrate_with_means(
    model: ir.Model,
    names: Sequence[str],
    mean_names: Sequence[str],
    batches: Sequence[Mapping[str, np.ndarray]],
    method: str = "minmax",
    percentile: float = DEFAULT_PERCENTILE,
    axis: int = 1,
) -> tuple[dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """``calibrate``'s ranges of ``names`` and ``channel_means``' means of ``mean_names``, from the same runs: the
    means are summed on the ranges' first pass over the samples, one pass over them fewer than ``calibrate`` then
    ``channel_means`` (static int8 ran its samples three times, percentile's two passes and the means'). The same
    ranges; the same means to float64 rounding (their sums are grouped by the runs of all the names, not of
    ``mean_names`` alone)."""
    exposed = list(dict.fromkeys([*names, *mean_names]))
    means = _ChannelMeans(model, mean_names, axis)
    with value_collector(model, exposed) as run:
        stream = _Stream(run, batches, model, token_rows(model, exposed), first_pass=means.add)
        ranges = tensor_ranges(stream, method, percentile)
    kept = set(names)
    return {name: value for name, value in ranges.items() if name in kept}, means.means()


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
    means = _ChannelMeans(model, names, axis)
    with value_collector(model, names) as run:
        for batch, outputs in _sample_runs(run, model, batches):
            means.add(batch, outputs)
    return means.means()


class _ChannelMeans:
    """``channel_means``' sums: each named tensor's float64 sum and count of finite values per channel (``axis``) over
    the runs ``add`` is given (a batch's part and what the model returned on it), and their means (``means``)."""

    def __init__(self, model: ir.Model, names: Sequence[str], axis: int) -> None:
        self.model, self.names, self.axis = model, frozenset(names), axis
        self.tokens = {name: axes for name, axes in token_axes(model, names).items() if axis not in axes}
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}

    def add(self, batch: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        axis, tokens = self.axis, self.tokens
        padding = batch_padding(self.model, batch) if tokens else {}
        for name, array in outputs.items():
            if name not in self.names:
                continue
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
            self.sums[name] = self.sums.get(name, 0.0) + np.array([total for total, _ in channels], np.float64)
            self.counts[name] = self.counts.get(name, 0) + np.array([count for _, count in channels], np.int64)

    def means(self) -> dict[str, np.ndarray]:
        counts = self.counts
        return {name: (total / np.maximum(counts[name], 1)).astype(np.float32) for name, total in self.sums.items()}


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
    """Re-iterable: each iteration runs the model on every batch again; ``first_pass``, where given, is also handed
    each part run and its raw tensors on the first iteration (``calibrate_with_means``' channel sums)."""

    def __init__(
        self,
        run: Callable[[Mapping[str, np.ndarray]], dict],
        batches,
        model: ir.Model,
        tokens: frozenset[str],
        first_pass: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], None] | None = None,
    ) -> None:
        self.run, self.batches, self.model, self.tokens = run, batches, model, tokens
        self.first_pass = first_pass
        self.plans: dict[tuple | None, _Plan] = {}  # the first pass's, kept for the next (``_sample_runs``)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        first_pass, self.first_pass = self.first_pass, None
        for batch, outputs in _sample_runs(self.run, self.model, self.batches, "calibration batches", self.plans):
            if first_pass is not None:
                first_pass(batch, outputs)
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
    plans: dict[tuple | None, _Plan] | None = None,
) -> Iterator[tuple[Mapping[str, np.ndarray], dict[str, np.ndarray]]]:
    """Each part of ``batches`` that ``run`` is given, and what it returned (emptied when the next part is asked for),
    one part at a time: one sample a run until a run says how many bytes a sample's exposed tensors take, then as many
    samples as keep a run's within ``_RUN_BYTES`` (at most a batch; a model whose batch is fixed is fed its batches
    whole, ``split_samples``). A batch whose samples are shaped otherwise (longer sentences, larger pages in another
    file) starts again at one sample: a count measured on short samples ran 16 long ones at once. The batches count as
    steps of a progress task ``label`` where one is given. ``plans``: how batches of each samples' shape run
    (``_Plan``; under None, how every batch runs where the model sets it), filled in as they are measured: given again
    to a second pass over the batches, it runs them as the first ended, with no sample alone and no check.

    The statistics are extremes, counts and float64 sums over the samples, which the grouping of samples into runs does
    not change (the sums to float64 rounding); run whole, a batch of 16 images held every exposed activation of all 16
    at once.
    """
    holds = holds_samples(model)
    plans = {} if plans is None else plans
    for batch in batches if label is None else track(batches, label):
        shape = _sample_shape(batch, holds)
        plan = plans.get(None) or plans.get(shape)
        checked = any(known.checked for known in plans.values())
        if plan is None or not checked:
            rest, part, outputs, plan = _first_run(run, model, batch, holds, check=not checked)
            plans[None if plan.fixed else shape] = plan
            runs = itertools.chain([(part, outputs)], ((part, run(part)) for part in rest))
        else:
            runs = ((part, run(part)) for part in split_samples(batch, plan.per_run, model))
        for part, outputs in runs:
            yield part, outputs
            # Emptied once taken in: the caller's loop names still hold the dict while the next run returns, and the
            # tensors of two runs were alive at once.
            outputs.clear()


def _sample_shape(batch: Mapping[str, np.ndarray], holds: SampleAxes) -> tuple:
    """The shapes of ``batch``'s arrays less their samples' axis (``holds``): what one sample's tensors take."""
    shapes = []
    for name, array in sorted(batch.items()):
        shape = tuple(np.shape(array))
        if holds(name, array):
            axis = holds.axis(name)
            shape = shape[:axis] + shape[axis + 1 :]
        shapes.append((name, shape))
    return tuple(shapes)


class _Plan(NamedTuple):
    """How ``_sample_runs`` runs batches after a ``_first_run``: ``per_run`` samples a run, for samples of the batch's
    shape (``_sample_shape``) unless the model ``fixed`` that count (whole batches, one sample a run) whatever their
    bytes; ``checked``: whether ``_samples_interact``'s check was made (or needed none), on two samples or more that
    are not all copies of one."""

    per_run: int
    fixed: bool
    checked: bool


def _first_run(
    run: Callable[[Mapping[str, np.ndarray]], dict],
    model: ir.Model,
    batch: Mapping[str, np.ndarray],
    holds: SampleAxes,
    check: bool = True,
) -> tuple[Sequence[Mapping[str, np.ndarray]], Mapping[str, np.ndarray], dict[str, np.ndarray], _Plan]:
    """``_sample_runs``' first run of ``batch``, on its first sample: the parts of ``batch`` left to run, the part run,
    what it returned, and how later batches run (``_Plan``). Where ONNX Runtime refuses one sample alone and runs the
    batch (a model with a batch traced into a ``Reshape``), or where two or three samples run together give other
    extremes than each alone (``_samples_interact``; checked where ``check``, until a batch holds two samples that are
    not all copies of one: a first file of one sample left a batch-centred model unchecked, and its ranges (0, 0)), the
    whole batch, and whole batches after it."""
    parts = split_samples(batch, 1, model)
    checked = not check or len(parts) > 1
    group = None
    if check and len(parts) > 1 and not _keeps_samples_apart(model, parts[0], holds):
        group = _check_group(parts, holds)
        # A batch of copies of one sample cannot show samples that meet as a mean does (``x - mean(x)`` is 0 alone and
        # together): the next batch is checked. Taken as checked, later batches ran as many samples a run as their
        # bytes allow, unchecked, and a batch-centred model's ranges were (0, 0) (review s75 late75a).
        checked = group is None or not all(_same_arrays(part, parts[0]) for part in group[0])
    try:
        # The check's runs before the first sample's, whose tensors are kept to be taken in: held through them, three
        # samples' tensors were alive at once.
        others = [_summary(run(part)) for part in group[0]] if group is not None else []
    except RuntimeRefusedError as error:
        logger.info("calibration runs whole batches: one sample alone was refused (%s)", error.reason)
        return [], batch, run(batch), _Plan(SAMPLE_BATCH, True, checked)
    try:
        together = _summary(run(group[1])) if group is not None else {}
    except RuntimeRefusedError as error:
        # ``x [B, 4]`` reshaped to ``[1, 4]`` inside runs one sample at a time; ``x + t`` with a table ``t [4, 4]`` its
        # batch of 4 whole, and one sample alone broadcast over the table's 4 rows: the batch whole where it runs.
        try:
            return [], batch, run(batch), _Plan(SAMPLE_BATCH, True, checked)
        except RuntimeRefusedError:
            logger.info(
                "calibration runs one sample at a time: the samples checked together were refused (%s)", error.reason
            )
            return parts[1:], parts[0], run(parts[0]), _Plan(1, True, checked)
    try:
        outputs = run(parts[0])
    except RuntimeRefusedError as error:
        if len(parts) == 1:
            raise
        logger.info("calibration runs whole batches: one sample alone was refused (%s)", error.reason)
        return [], batch, run(batch), _Plan(SAMPLE_BATCH, True, checked)
    if group is not None and _samples_interact([_summary(outputs), *others], together):
        logger.info("calibration runs whole batches: samples run together differ from each run alone")
        outputs.clear()
        return [], batch, run(batch), _Plan(SAMPLE_BATCH, True, checked)
    exposed = sum(np.asarray(array).nbytes for array in outputs.values())
    samples = max(1, samples_in(parts[0], holds))
    per_run = min(SAMPLE_BATCH, max(1, _RUN_BYTES * samples // max(exposed, 1)))
    return parts[1:], parts[0], outputs, _Plan(per_run, False, checked)


# How many samples ``_samples_interact`` runs together: three, so that samples that meet only from the third (``x +
# sum(x[2:])`` over the batch) are found too, as two alone and together were not until review s75 xfix. One run of one
# sample more than two, and one sample more in the run together (5 samples, not 3), on a model whose graph may mix its
# samples (``_keeps_samples_apart``: a CNN whose activations' ranks are recorded runs none; the legacy exporter's
# MobileNetV2-like CNN, whose residual ``Add``s read values of no recorded rank, runs it).
_CHECKED_SAMPLES = 3


def _check_group(
    parts: Sequence[Mapping[str, np.ndarray]], holds: SampleAxes
) -> tuple[list[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None:
    """The samples ``_samples_interact`` checks beside the first, up to ``_CHECKED_SAMPLES`` in all (those of ``parts``
    that differ from the ones taken before them, then the next where too few do), and all of them run together; None
    where the parts are not one sample each (a fixed batch). Two copies of one sample meet as any one does in a
    batch-centred model (``x - mean(x)`` is 0 alone and together), and the check read the first two of a batch that
    began with a copy so (ranges (0, 0) for the batch's (-1.8, 1.5)) until review s74."""
    first = parts[0]
    if samples_in(first, holds) != 1:
        return None
    taken = [0]
    for index, part in enumerate(parts[1:], 1):
        if len(taken) == _CHECKED_SAMPLES:
            break
        if not any(_same_arrays(part, parts[seen]) for seen in taken):
            taken.append(index)
    rest = (index for index in range(1, len(parts)) if index not in taken)
    taken += list(itertools.islice(rest, max(0, _CHECKED_SAMPLES - len(taken))))
    others = [parts[index] for index in taken[1:]]
    if any(samples_in(part, holds) != 1 for part in others):
        return None
    together = {
        name: np.concatenate([array, *(part[name] for part in others)], axis=holds.axis(name))
        if holds(name, array)
        else array
        for name, array in first.items()
    }
    return others, together


def _same_arrays(one: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> bool:
    """Whether two parts of a batch hold the same arrays, value for value."""
    return one.keys() == other.keys() and all(np.array_equal(one[name], other[name]) for name in one)


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


def _keeps_samples_apart(model: ir.Model, sample: Mapping[str, np.ndarray], holds: SampleAxes) -> bool:
    """Whether every node of ``model``'s graph is one that keeps its samples apart: elementwise ops (with no constant
    as long as the batch), convolutions by constant weights (or weights computed from constants alone: a ``Cast`` or
    ``DequantizeLinear`` of one, which is skipped) and pools, an inference ``BatchNormalization``, a
    ``Flatten`` or ``Softmax`` from axis 1 on, a ``Gemm`` or 2-D constant-weight ``MatMul`` whose rows are the samples;
    and every input of ``sample`` with a dim holds its samples along axis 0 (``holds``), where those ops keep them
    apart. Any other graph (a Reshape, a Transpose, an attention's MatMul of two activations, a reduction, a time-major
    ``x [5, batch, 3]`` whose Softmax over axis 1 is over the samples, a table ``t [4, 4]`` beside ``x [batch, 4]``, a
    Softmax over axis 0, a ``Conv`` whose kernel is an activation) gets ``_samples_interact``'s check."""
    inputs = {value.name for value in model.graph.inputs}
    if any(
        np.ndim(array) and (not holds(name, array) or holds.axis(name))
        for name, array in sample.items()
        if name in inputs
    ):
        return False
    # The values computed from constants alone (``_of_constants``), by id, and their shapes (``_computed_shape``).
    fixed: dict[int, tuple[int, ...] | None] = {}

    def from_constants(value: ir.Value | None) -> bool:
        return value is None or id(value) in fixed or _is_constant(value)

    def shape_of(value: ir.Value | None) -> tuple[int, ...] | None:
        tensor = ir.convenience.get_const_tensor(value) if value is not None else None
        return tuple(tensor.shape) if tensor is not None else fixed.get(id(value))

    for node in model.graph:
        op = node.op_type
        if not is_onnx_domain(node):
            return False
        if op == "Constant":
            continue
        if _of_constants(node, from_constants):
            # The same for every sample: a weight's dequantization left to run time (fold-constants keeps a float16
            # weight's Cast past 8,192 elements, and an int8 one's DequantizeLinear or Cast, Sub and Mul).
            fixed.update((id(value), None) for value in node.outputs)
            fixed[id(node.outputs[0])] = _computed_shape(node, shape_of)
            continue
        if op in _PER_SAMPLE:
            # A convolution by an activation mixes samples: ``Conv(x [B, C, H, W], z [B, C, k, k])`` (a Siamese
            # tracker's cross-correlation) makes each of B output channels from one sample's kernel over every sample.
            # A kernel computed from constants alone does not (read as an activation, every CNN whose weights are cast
            # or dequantized at run time got the check until review s75 late75a).
            if all(from_constants(value) for value in node.inputs[1:]):
                continue
            return False
        if op in _ELEMENTWISE:
            # Activations of another rank broadcast from the right: a ``lengths [B]`` beside ``x [B, B]`` meets its
            # samples along the last axis.
            activations = [value for value in node.inputs if not from_constants(value)]
            ranks = {_rank(value) for value in activations}
            constants = [value for value in node.inputs if value is not None and from_constants(value)]
            if any(_batch_long(shape_of(value), ranks) for value in constants):
                return False
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


def _of_constants(node: ir.Node, from_constants: Callable[[ir.Value | None], bool]) -> bool:
    """Whether ``node`` computes from constants alone: it reads a value at least, each one ``from_constants`` says is a
    constant or computed from constants alone, it draws nothing (``may_draw``) and holds no subgraph."""
    return (
        any(value is not None for value in node.inputs)
        and all(from_constants(value) for value in node.inputs)
        and not may_draw(node)
        and not any(attribute.type in _SUBGRAPHS for attribute in node.attributes.values())
    )


_SUBGRAPHS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def _computed_shape(
    node: ir.Node, shape_of: Callable[[ir.Value | None], tuple[int, ...] | None]
) -> tuple[int, ...] | None:
    """The shape of the first output of ``node``, which computes from constants alone (``_of_constants``), from its
    inputs' shapes (``shape_of``): an elementwise op's broadcast, a ``DequantizeLinear``'s data's; None for any other op
    (a ``Reshape``). Not its recorded shape, which a tool may leave stale: ``Cast(c [3, 4])`` recorded as ``[1, 4]`` (or
    ``[4]``) beside ``x [B, 4]``, which ONNX Runtime runs as ``[3, 4]``, was taken to keep the samples apart, and the
    ranges were one sample's over every row (review s75 late75c)."""
    shapes = [shape_of(value) for value in node.inputs if value is not None]
    if node.op_type in ("DequantizeLinear", "QuantizeLinear"):
        return shapes[0]
    if node.op_type not in _ELEMENTWISE or any(shape is None for shape in shapes):
        return None
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


def _from_axis_one(node: ir.Node) -> bool:
    """Whether ``node``'s ``axis`` (1 by default, as ``Flatten``'s and an opset-12 ``Softmax``'s) lies past axis 0."""
    default = 1 if node.op_type == "Flatten" else -1
    axis = node.attributes.get_int("axis", default)
    rank = _rank(node.inputs[0])
    # A negative axis counted from the end; axis 0 is the samples' (a Softmax over the batch read as per sample, until
    # review s75, where its input recorded a rank).
    return axis >= 1 or (axis < 0 and rank is not None and axis + rank >= 1)


def _batch_long(shape: tuple[int, ...] | None, ranks: set[int | None]) -> bool:
    """Whether a constant of ``shape`` may meet an elementwise op's activations (of ``ranks``) along their samples' axis
    with more than one row: a mask traced at the export's batch (``x [B, 4] * c [6, 4]``) gives each of 6 samples its
    row, and one sample alone all 6 (a sample's range was over every row's). Where an activation's rank is unknown, any
    constant whose first dim is not 1; one computed from constants (``_of_constants``) whose shape is not known
    (``_computed_shape``), wherever an activation meets it."""
    if shape is None:
        return bool(ranks)
    if not ranks or not shape:
        return False
    known = [rank for rank in ranks if rank is not None]
    if len(known) == len(ranks) and len(shape) < min(known):
        return False  # broadcast from the right, past the samples' axis
    return len(shape) > max(known, default=0) or shape[0] != 1


def _rank(value: ir.Value | None) -> int | None:
    """The rank of ``value``'s recorded shape; None where none is."""
    return len(value.shape) if value is not None and value.shape is not None else None


def _is_constant(value: ir.Value | None) -> bool:
    """Whether ``value`` is a constant (an initializer, an overridable one too, or a ``Constant``'s output)."""
    return value is not None and ir.convenience.get_const_tensor(value) is not None


# A tensor's finite (min, max) and its shape.
_Summary = tuple[float, float, tuple[int, ...]]


def _samples_interact(alone: Sequence[Mapping[str, _Summary]], together: Mapping[str, _Summary]) -> bool:
    """Whether samples run together (``together``, ``_summary``) give other values than each run alone (``alone``, the
    first sample's first), as far as extremes and shapes tell: a model whose samples meet (a Softmax or a mean over the
    batch axis, a BatchNormalization left in training mode) computes other values one sample a run than a batch at once,
    and its ranges, read one sample a run, were another model's (a Softmax over the batch axis calibrated to exactly
    1.0) until review s73 late3. A tensor shaped alike alone and together, with other extremes for a sample alone than
    for the first, does not hold the samples side by side: it takes some of them (``Gather`` of row 0 of the batch) or
    reduces them (a max over the batch); the first sample's extremes spanning the second's, together read as each alone
    until review s74. Samples that meet in values their extremes and shapes do not show are not found."""
    first = alone[0]
    for name, (low, high, shape) in together.items():
        if any(name not in part for part in alone):
            continue
        if all(part[name][2] == shape for part in alone) and any(
            not _near(first[name][:2], part[name][:2]) for part in alone[1:]
        ):
            return True
        expected = (min(part[name][0] for part in alone), max(part[name][1] for part in alone))
        if not _near((low, high), expected):
            return True
    return False


def _near(one: tuple[float, float], other: tuple[float, float]) -> bool:
    """Whether two ``(low, high)`` ranges are the same to a thousandth of their magnitude: batched kernels round
    differently from one sample's (another GEMM blocking), far below that, and samples that meet change far more (a
    Softmax over 2 rows instead of 1 halves it)."""
    tolerance = 1e-3 * max(map(abs, (*one, *other))) + 1e-12
    return abs(one[0] - other[0]) <= tolerance and abs(one[1] - other[1]) <= tolerance


def _summary(outputs: Mapping[str, np.ndarray]) -> dict[str, _Summary]:
    """The finite ``(min, max)`` and the shape of each of ``outputs`` that holds a finite value."""
    found = {}
    for name, array in outputs.items():
        values = _finite(array)
        if values.size:
            found[name] = (float(values.min()), float(values.max()), tuple(np.shape(array)))
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

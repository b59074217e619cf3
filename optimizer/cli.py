"""The ``graphopt`` command line: ``optimize``, ``compare``, ``make-inputs``, ``passes`` and ``demo``.

User mistakes print one line (``graphopt: error: ...``) and exit 2; SIGINT and
SIGTERM print one line and exit 130 and 143, with temporary files removed; a
traceback means a bug in graphopt. ``--strict``, ``--max-ratio`` and ``--min-cosine``
end a run that fails them with codes of their own (``optimizer.exit_codes``). Progress
goes to stderr (``optimizer.console``), the report to stdout. No flag is ignored: one
that would do nothing in the command it is given to is an error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import io
import math
import os
import re
import signal
import sys
import threading
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizer import exit_codes
from optimizer.errors import (
    PENDING_SIGNALS,
    RECEIVED_SIGNALS,
    GraphoptError,
    InputSpecError,
    Interrupted,
    OptionError,
    OutputPathError,
    one_line,
)
from optimizer.streams import FailSafeStream

if TYPE_CHECKING:
    from rich.console import Console

    from optimizer.compare.comparison import CompareSettings
    from optimizer.options import Options
    from optimizer.report import PipelineReport

# The rest of graphopt (onnx, ONNX Runtime, rich: over a second of imports) is imported
# inside the functions that use it, after ``main`` has installed its signal handlers, so
# that Ctrl-C during start-up is one line too, not a traceback from deep in an import.

EXAMPLE_MODEL = Path(__file__).resolve().parents[1] / "examples" / "encoder.onnx"

# Subcommands that read --config and write --print-config.
_CONFIGURABLE = ("optimize", "demo", "compare")
# Where ``graphopt demo`` writes unless given -o: its folder is made if missing.
DEMO_OUTPUT = "build/demo/encoder.optimized.onnx"
# Argparse dests that are not ``Options`` fields of the same name.
_OPTION_OF_DEST = {"no_verify": "verify", "dim": "dims", "tolerance": "tolerances"}


class _StoreOnce(argparse._StoreAction):
    """argparse's store, refusing a flag given twice with different values: the last one used to win without a
    word, so a CI job's ``$GATES --min-cosine -1`` lifted the gate and ``-o a -o b`` wrote only ``b`` (a review)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        _given_once(parser, namespace, self.dest, option_string, values)
        super().__call__(parser, namespace, values, option_string)


def _given_once(
    parser: argparse.ArgumentParser,
    namespace,  # noqa: ANN001
    dest: str,
    option_string,  # noqa: ANN001
    values,  # noqa: ANN001
    *,
    replacement: str | None = None,
) -> None:
    """Refuse ``dest`` set a second time with another value on one command line, and a flag's old name
    (``replacement`` its new one) beside its new name however either is spelled (argparse passes an
    abbreviation's full name here, which a look at the words of the command line would miss)."""
    if option_string is None:
        return
    given = getattr(namespace, "_given_once", None)
    if given is None:
        given = {}
        namespace._given_once = given
    if dest in given:
        before, spelling, renamed = given[dest]
        old_new = [(spelling, renamed), (option_string, replacement)]
        named = [(old, new) for old, new in old_new if new is not None]
        if named and spelling != option_string:
            old, new = named[0]
            raise OptionError(f"{old} and {new}: the old and the new name of one flag; give {new} once")
        if before != values and not _both_nan(before, values):
            parser.error(f"{option_string} given twice ({before} and {values}): give one")
    given[dest] = (values, option_string, replacement)


class _SwitchOnce(argparse.BooleanOptionalAction):
    """``--x``/``--no-x``, refusing both on one command line: the last one used to win without a word, so
    ``--no-full-range-weights`` after a CI job's ``$FLAGS --full-range-weights`` flipped it (a review)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        value = not (option_string or "").startswith("--no-")
        given = getattr(namespace, "_given_once", None)
        if given is None:
            given = namespace._given_once = {}
        if self.dest in given and given[self.dest][0] != value:
            parser.error(f"{given[self.dest][1]} and {option_string}: give one")
        given[self.dest] = (value, option_string, None)
        super().__call__(parser, namespace, values, option_string)


def _both_nan(first, second) -> bool:  # noqa: ANN001
    """Whether both values are the float NaN (given twice, still one value)."""
    return all(isinstance(value, float) and math.isnan(value) for value in (first, second))


class _OneLineParser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line reported like every other: one line, exit 2; a flag of one
    value given twice with different values is such a mistake (``_StoreOnce``)."""

    words: typing.ClassVar[list[str]] = []  # the command line being parsed
    commands: typing.ClassVar[dict[str, argparse.ArgumentParser]] = {}  # its commands' parsers, by name (``_nearest``)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def error(self, message: str) -> typing.NoReturn:
        # The words and paths argparse names, as every other error names them (``_printable``): a newline in one split
        # the line, an escape sequence reached the terminal, and a byte that is not UTF-8 was "?" or, in argparse's
        # repr (``invalid choice: 'm\\udcff.onnx'``), "\\udcff" (review s75 late75c).
        if message.startswith("the following arguments are required"):
            # A mistyped flag, refused as a missing one: ``make-inputs m.onnx --ouput x.npz`` was told that -o/--output
            # is required, and not of ``--ouput`` (review s75 late75d).
            message += _mistyped(self, _OneLineParser.words)
        message = _printable(_SURROGATE_ESCAPE.sub(r"\1\\x\2", message))
        self.exit(exit_codes.USAGE, f"graphopt: error: {message} (see {self.prog} --help)\n")

    def parse_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """As argparse's, but words the command did not take are refused by that command's parser, naming its
        ``--help`` and the nearest of its flags: argparse refuses them at the top, whose help lists no command's flags
        (``graphopt optimize m.onnx --pases ...`` said "see graphopt --help", a review in session 75)."""
        _OneLineParser.words = list(sys.argv[1:] if args is None else args)  # for a command's ``error`` (``_mistyped``)
        _OneLineParser.commands = getattr(self, "commands", {})
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            name = getattr(parsed, "command", None)
            command = _OneLineParser.commands.get(name, self)
            message = f"unrecognized arguments: {' '.join(extras)}"
            # Not a word after ``--`` (a file's name), nor ``--`` itself: "did you mean --ep?" (review s75 late75c).
            words = extras[: extras.index("--")] if "--" in extras else extras
            unknown = [word.split("=", 1)[0] for word in words if word.startswith("--")]
            nearest, others = _nearest(unknown[0], name, command) if unknown else (None, "")
            if nearest and not others:
                message += f" (did you mean {nearest}?)"
            elif nearest:
                message += f" ({nearest} is a flag of {others})"
            command.error(message)
        return parsed


def _nearest(word: str, name: str | None, command: argparse.ArgumentParser) -> tuple[str | None, str]:
    """The flag nearest ``word`` of command ``name`` (``command``, its parser; None for the top) or of another command,
    and, where it is another's (or nearer one of another's flags than this command's), the commands whose flag it is
    ("graphopt optimize, graphopt demo"), else "": ``make-inputs --input`` was told "did you mean --output?", which
    writes over the file it names (review s75 late75c), and so it was where ``-o`` was left missing too (review s75
    late75f). At the top (``name`` None), none where the nearest is a command's."""
    commands = _OneLineParser.commands
    owners: dict[str, list[str | None]] = {}
    for each, parser in [(name, command), *((other, commands[other]) for other in commands if other != name)]:
        for flag in (flag for action in parser._actions for flag in action.option_strings):
            owners.setdefault(flag, []).append(each)
    flags = [flag for flag in owners if flag.startswith("--")]
    nearest = difflib.get_close_matches(word, flags, n=1)
    if not nearest or owners[nearest[0]][0] == name:
        return (nearest[0] if nearest else None), ""
    if name is None:
        return None, ""
    return nearest[0], ", ".join(f"graphopt {other}" for other in owners[nearest[0]])


def _mistyped(parser: argparse.ArgumentParser, words: list[str]) -> str:
    """The first word of ``words`` (before ``--``) spelled as a flag that is no flag of ``parser`` nor the start of one,
    with the nearest of its flags, as a note to its error ("; --ouput is not a flag: did you mean --output?"), or "".
    A command's parser reads the words after its name (``graphopt --verbose make-inputs``: not a flag of its own)."""
    command = parser.prog.split()[-1] if " " in parser.prog else None
    words = words[words.index(command) + 1 :] if command in words else words
    words = words[: words.index("--")] if "--" in words else words
    flags = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
    for word in (word.split("=", 1)[0] for word in words if word.startswith("--") and word != "--"):
        if not any(flag.startswith(word) for flag in flags):
            nearest, others = _nearest(word, command if command in _OneLineParser.commands else None, parser)
            if nearest and others:  # ``--input``: not "did you mean --output?" (review s75 late75f)
                return f"; {word} is not a flag: {nearest} is a flag of {others}"
            return f"; {word} is not a flag" + (f": did you mean {nearest}?" if nearest else "")
    return ""


class _OldSpelling(argparse.Action):
    """A flag's former spelling: still sets the flag's value, and the CLI prints one line saying what replaced it."""

    old_spelling = True  # not a --config key (optimizer.config)

    def __init__(self, option_strings: list[str], dest: str, *, replacement: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        _given_once(parser, namespace, self.dest, option_string, values, replacement=self.replacement)
        setattr(namespace, self.dest, values)
        spellings = dict(getattr(namespace, "_spellings", None) or {})
        spellings[self.dest] = (option_string, self.replacement)
        namespace._spellings = spellings


class _PrintVersion(argparse.Action):
    """``--version``: one line, unwrapped (argparse's own version action wraps it at the terminal's width)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        print(_version(), flush=True)  # a closed pipe raises here, in main, not at the interpreter's exit
        parser.exit(exit_codes.OK)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand (``parser.commands`` maps each name to its parser)."""
    from optimizer.options import TARGETS

    parser = _OneLineParser(prog="graphopt", description="Optimize ONNX models for ONNX Runtime, verified.")
    parser.add_argument("--version", action=_PrintVersion, help="print graphopt's version and its libraries', and exit")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: graphopt's decisions (what passes left alone and why, failed passes' tracebacks); "
        "-vv: the libraries' logs too",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress and no report; errors only")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    optimize = commands.add_parser("optimize", help="optimize a model and write the result")
    _add_run_flags(optimize)
    optimize.add_argument("model", nargs="?", help="input .onnx file (never modified)")
    optimize.add_argument("-o", "--output", help="output .onnx file (written atomically)")
    _add_pipeline_flags(optimize)

    comparison = commands.add_parser(
        "compare", help="compare two models' latency, throughput, memory, size and accuracy"
    )
    _add_run_flags(comparison)
    comparison.add_argument("before", nargs="?", help="the original model")
    comparison.add_argument("after", nargs="?", help="the optimized model")
    comparison.add_argument(
        "--inputs",
        metavar="DATA",
        help="inputs: an .npz (one array per graph input name), a folder of .npz files or one with an .npy per "
        "input; timed on the first file, accuracy over every sample; with --generate, input_ids (and "
        "attention_mask) alone are held-out text, one row per sequence",
    )
    comparison.add_argument(
        "--dim", action="append", metavar="NAME=VALUE", help="bind a symbolic input dimension (repeatable)"
    )
    _add_compare_flags(comparison, on_optimize=False)

    skeleton = commands.add_parser(
        "make-inputs", help="write an .npz of inputs for a model: the names, dtypes and shapes --inputs expects"
    )
    _add_verbosity_flags(skeleton)
    skeleton.add_argument("model", help="the .onnx model")
    skeleton.add_argument("-o", "--output", required=True, metavar="FILE.npz", help="the .npz to write")
    skeleton.add_argument(
        "--dim", action="append", metavar="NAME=VALUE", help="bind a symbolic input dimension (repeatable)"
    )

    listing = commands.add_parser("passes", help="list the registered passes")
    _add_verbosity_flags(listing, quiet="the names of the --target's default pipeline only, one per line")
    listing.add_argument(
        "--target", choices=TARGETS, default="cpu", help="mark the passes in this target's default pipeline"
    )

    demo = commands.add_parser("demo", help="optimize the example transformer encoder shipped in examples/")
    _add_run_flags(demo)
    demo.add_argument("-o", "--output", default=DEMO_OUTPUT, help="where to write the result")
    _add_pipeline_flags(demo)
    parser.commands = {"optimize": optimize, "compare": comparison, "make-inputs": skeleton, "passes": listing}
    parser.commands["demo"] = demo
    return parser


def _version() -> str:
    """``graphopt 0.1.0 (onnx 1.18.0, onnx-ir 1.1.0, ..., Python 3.11.7)``, read without importing them."""
    from importlib import metadata

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    parts = [
        f"{name} {version}"
        for name in ("onnx", "onnx-ir", "onnxscript", "onnxruntime", "onnxruntime-gpu")
        if (version := installed(name))
    ]
    parts.append(f"Python {sys.version.split()[0]}")
    return f"graphopt {installed('graphopt') or '(not installed)'} ({', '.join(parts)})"


def _add_verbosity_flags(parser: argparse.ArgumentParser, quiet: str = "as `graphopt -q`") -> None:
    # Accepted after the subcommand too (``graphopt optimize ... -v``), added to the top-level count.
    parser.add_argument(
        "-v", "--verbose", dest="sub_verbose", action="count", default=0, help="as `graphopt -v` (repeatable)"
    )
    parser.add_argument("-q", "--quiet", dest="sub_quiet", action="store_true", help=quiet)


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    _add_verbosity_flags(parser)
    parser.add_argument(
        "--config", metavar="FILE.toml", help="read the settings from a TOML file; flags given here override them"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print this command line's settings as a --config file and stop",
    )


def _add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    from optimizer.options import TARGETS

    parser.add_argument(
        "--passes",
        help="comma-separated pass names, in order (default: the target's default pipeline); "
        "+NAME,-NAME,... instead adds passes to the default pipeline or leaves default ones out",
    )
    parser.add_argument(
        "--target", choices=TARGETS, default="cpu", help="execution provider the result is for (default cpu)"
    )
    parser.add_argument(
        "--inputs",
        metavar="DATA",
        help="verification inputs: an .npz with one array per graph input name, or a folder with one .npy per input",
    )
    parser.add_argument(
        "--dim", action="append", metavar="NAME=VALUE", help="bind a symbolic input dimension (repeatable)"
    )
    parser.add_argument(
        "--tolerance", action="append", metavar="DTYPE=RTOL,ATOL", help="override a verification tolerance (repeatable)"
    )
    parser.add_argument(
        "--static-shapes",
        action="store_true",
        help="fix symbolic input dims to their --dim sizes (or --inputs'; any other at its generated size, which a "
        "warning names) so all shape arithmetic folds (the result accepts only those shapes)",
    )
    parser.add_argument(
        "--max-sequence",
        type=int,
        metavar="N",
        help="longest sequence the result must support where a fusion bakes in a table or a probed fact "
        "(rotary cos/sin, attention mask kind, position ids), and that --fp16 checks what is computed from positions "
        "at (default 4096)",
    )
    _add_precision_flags(parser)
    _add_pruning_flags(parser)
    _add_lowrank_flags(parser)
    parser.add_argument("--no-verify", action="store_true", help="do not check each pass's result on ONNX Runtime")
    parser.add_argument(
        "--strict",
        action="store_true",
        help=f"exit {exit_codes.STRICT_FAILED} when a pass asked for by name (--passes) or by flag "
        "(--quantize, --prune-ffn, ...) is rolled back, fails or changes nothing",
    )
    parser.add_argument(
        "--pipeline-json", metavar="FILE.json", help="also write the pipeline report (what each pass did) as JSON"
    )
    parser.add_argument("--report", dest="pipeline_json", action=_OldSpelling, replacement="--pipeline-json")
    parser.add_argument(
        "--compare", action="store_true", help="then compare the input and the result (see `graphopt compare`)"
    )
    _add_compare_flags(parser, on_optimize=True)


def _add_precision_flags(parser: argparse.ArgumentParser) -> None:
    from optimizer.options import CALIBRATION_METHODS

    group = parser.add_argument_group("reduced precision (int8, float16)")
    group.add_argument(
        "--quantize",
        choices=("dynamic", "static", "int4"),
        help="int8: dynamic (weights int8, activations quantized at run time; transformers on CPU) or "
        "static (QDQ with calibrated activation ranges; CNNs); int4: 4-bit weights only (MatMulNBits, "
        "GatherBlockQuantized embeddings; LLMs)",
    )
    group.add_argument(
        "--block-size",
        type=int,
        default=32,
        metavar="N",
        help="with --quantize int4: weights per scale along the input axis, 16/32/64/128/256 (default 32)",
    )
    group.add_argument(
        "--int4-method",
        choices=("rtn", "gptq", "hqq"),
        default="rtn",
        help="with --quantize int4: round to nearest (default), GPTQ (error compensation on --calibration) "
        "or HQQ (data-free optimized zero points)",
    )
    group.add_argument(
        "--symmetric",
        action="store_true",
        help="with --quantize int4: no zero points (range [-8, 7] x scale) instead of one per block",
    )
    group.add_argument(
        "--int4-accuracy-level",
        type=int,
        choices=(0, 4),
        metavar="L",
        help="with --quantize int4: MatMulNBits' accuracy_level, 4 (int8 input, faster; default on cpu) or 0 "
        "(float; default on cuda)",
    )
    group.add_argument(
        "--int4-outlier-channels",
        type=int,
        default=0,
        metavar="K",
        help="with --quantize int4 at accuracy_level 4: keep the K largest channels of each layer's input "
        "(max |x| on the samples) out of the kernel's int8 rounding, added back exactly in float (default 0)",
    )
    group.add_argument(
        "--calibration",
        metavar="DATA",
        help="sample inputs, many along axis 0 (an .npz, a folder of .npz files or one with an .npy per input, "
        "read a batch at a time): calibrate ranges, search the budget, measure accuracy",
    )
    group.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        default="percentile",
        help="activation ranges for --quantize static (default percentile)",
    )
    group.add_argument(
        "--min-cosine", type=float, metavar="X", help="accuracy budget: keep sensitive layers float until cosine >= X"
    )
    group.add_argument(
        "--max-error", type=float, metavar="X", help="accuracy budget: keep sensitive layers float until max |Δ| <= X"
    )
    group.add_argument(
        "--min-worst-cosine",
        type=float,
        metavar="X",
        help="accuracy budget: keep sensitive layers float until every sample's cosine >= X (--min-cosine bounds "
        "the mean)",
    )
    group.add_argument(
        "--min-top1",
        type=float,
        metavar="X",
        help="accuracy budget: keep sensitive layers float until the share of class scores' positions whose argmax "
        "is kept (or flips at a near tie) >= X, and of the ids an ArgMax returns alike",
    )
    group.add_argument(
        "--budget-decode-steps",
        type=int,
        metavar="N",
        help="a budget times a decoder with a key/value cache as a prefill of the calibration tokens and N "
        "one-token steps (default 32; 0: the prefill alone, for long prompts)",
    )
    channel = group.add_mutually_exclusive_group()
    channel.add_argument(
        "--per-channel",
        dest="per_channel",
        action="store_true",
        default=True,
        help="one weight scale per output channel (default)",
    )
    channel.add_argument("--per-tensor", dest="per_channel", action="store_false", help="one weight scale per weight")
    group.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        default=[],
        help="keep layers whose node name or op type matches this glob in float (repeatable); with "
        "--prune-channels, leave whole the channel groups whose consumer matches (--exclude Conv: only the "
        "classifier head); with --lowrank, leave such layers unfactorized",
    )
    group.add_argument(
        "--quantize-embeddings",
        action="store_true",
        help="store embedding tables in int8, one scale per row (a quarter of the size)",
    )
    group.add_argument(
        "--full-range-weights",
        action=_SwitchOnce,
        default=None,
        help="8-bit instead of 7-bit int8 weights: more accurate on CPUs with VNNI/AMX or ARM, "
        "wrong results from saturation on x86 CPUs without VNNI (default: chosen for this CPU, printed as a note)",
    )
    group.add_argument(
        "--quantize-outputs",
        action="store_true",
        help="also quantize layers whose result is a model output (LM head, classifier)",
    )
    group.add_argument(
        "--smooth",
        type=float,
        metavar="ALPHA",
        help="SmoothQuant: migrate activation outliers into the weights after each norm (0.5 is typical)",
    )
    group.add_argument(
        "--activation-scale",
        choices=("tensor", "row"),
        default="tensor",
        help="--quantize dynamic: one activation scale per tensor (default) or per row (token): "
        "decoders with outlier tokens keep far more accuracy, a little slower",
    )
    group.add_argument("--fp16", action="store_true", help="convert to float16 (for --target cuda)")
    group.add_argument(
        "--keep-io-types",
        action=_SwitchOnce,
        default=True,
        help="with --fp16: keep float graph inputs and outputs float32 (default; --no-keep-io-types: float16)",
    )


def _add_lowrank_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("low-rank factorization (after pruning, before quantization)")
    group.add_argument(
        "--lowrank",
        type=float,
        metavar="R",
        help="factorize large MatMul weights W into U·V, removing this fraction of each one's parameters, where "
        "measured faster on this machine (with a budget, --min-cosine/--min-worst-cosine/--max-error: at most R, "
        "ranks chosen per layer); "
        "--importance magnitude: plain SVD; --no-repair: V not re-fitted",
    )


def _add_pruning_flags(parser: argparse.ArgumentParser) -> None:
    from optimizer.options import IMPORTANCE_KINDS

    group = parser.add_argument_group("structured pruning (runs after fusion, before quantization)")
    group.add_argument("--prune-ffn", type=float, metavar="R", help="remove this fraction of each FFN's neurons")
    group.add_argument(
        "--prune-heads", type=float, metavar="R", help="remove this fraction of each fused attention's heads"
    )
    group.add_argument(
        "--prune-channels", type=float, metavar="R", help="remove this fraction of each prunable Conv's output channels"
    )
    group.add_argument(
        "--importance",
        choices=IMPORTANCE_KINDS,
        help="rank units by weight magnitude, by activation on --calibration (default with data), or by "
        "reconstruction: the output error each costs once the repair re-fits the kept units to make up for it "
        "(layers the repair does not re-fit: by activation; the default of --prune-ffn with --prune-heads); "
        "for --lowrank, reconstruction is activation",
    )
    group.add_argument(
        "--global-ranking",
        action="store_true",
        help="rank units across all layers (each layer's scores relative to its mean) instead of per layer",
    )
    group.add_argument(
        "--channel-cost",
        choices=("channels", "parameters", "macs"),
        default="channels",
        help="what --prune-channels R counts: channels (default), or the share of the groups' parameters or "
        "multiply-adds (each channel at its weights' full width: more may go where cut groups meet; the report says "
        "what went); with --global-ranking channels go by effect per parameter or multiply-add",
    )
    group.add_argument(
        "--no-repair",
        dest="repair",
        action="store_false",
        default=None,
        help="do not re-fit the layer after the removed units by least squares on --calibration",
    )


def _add_compare_flags(parser: argparse.ArgumentParser, *, on_optimize: bool) -> None:
    title = "comparison (with --compare)" if on_optimize else "comparison"
    group = parser.add_argument_group(title)
    group.add_argument(
        "--ep", default="cpu", help="execution providers to measure, comma-separated: cpu,cuda (default cpu)"
    )
    group.add_argument("--batch", help="batch sizes, comma-separated (default 1); throughput is reported for each")
    group.add_argument(
        "--threads",
        type=int,
        help="intra-op threads (default: the cores this process may use)"
        + (
            "; also those of the kernel timings of --lowrank, of a --quantize budget and of split-conv-padding "
            "(in the CPU default pipeline)"
            if on_optimize
            else ""
        ),
    )
    group.add_argument(
        "--time-budget",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="timing budget shared by all EPs and batch sizes (default 20)",
    )
    group.add_argument(
        "--iterations", type=int, default=200, help="at most this many interleaved runs per model (default 200)"
    )
    group.add_argument("--warmup", type=int, default=10, help="untimed runs per model first (default 10)")
    group.add_argument(
        "--profile", action="store_true", help="also profile both models and show time per operator type"
    )
    group.add_argument(
        "--generate",
        action="store_true",
        help="causal LMs with a KV cache: time generation (time to first token, decode tokens/s) instead of "
        "one run, and compare them as language models (next-token agreement, perplexity, greedy continuations)",
    )
    group.add_argument(
        "--prompt-length", type=int, default=128, metavar="P", help="with --generate: prompt tokens (default 128)"
    )
    group.add_argument(
        "--new-tokens",
        type=int,
        default=32,
        metavar="N",
        help="with --generate: decode steps timed, and tokens of each greedy continuation (default 32)",
    )
    group.add_argument(
        "--max-ratio",
        type=float,
        metavar="R",
        help=f"exit {exit_codes.SLOWER} when AFTER's latency is above R x BEFORE's "
        "(the upper end of the ratio's 95%% interval)",
    )
    if on_optimize:
        # --min-cosine is the accuracy budget of the approximate passes here.
        group.add_argument(
            "--compare-min-cosine",
            dest="gate_min_cosine",
            type=float,
            metavar="X",
            help=f"exit {exit_codes.LESS_ACCURATE} when an output of the result has a cosine similarity "
            "below X to the input model's (as `compare --min-cosine`)",
        )
        group.add_argument(
            "--compare-min-worst-cosine",
            dest="gate_min_worst_cosine",
            type=float,
            metavar="X",
            help=f"exit {exit_codes.LESS_ACCURATE} when one sample of an output of the result has a cosine "
            "similarity below X to the input model's (as `compare --min-worst-cosine`)",
        )
        group.add_argument("--compare-json", dest="json", metavar="FILE", help="write the comparison as JSON")
        group.add_argument("--json", dest="json", action=_OldSpelling, replacement="--compare-json")
    else:
        group.add_argument(
            "--min-cosine",
            dest="gate_min_cosine",
            type=float,
            metavar="X",
            help=f"exit {exit_codes.LESS_ACCURATE} when an output of AFTER has a cosine similarity below X to BEFORE's",
        )
        group.add_argument(
            "--min-worst-cosine",
            dest="gate_min_worst_cosine",
            type=float,
            metavar="X",
            help=f"exit {exit_codes.LESS_ACCURATE} as --min-cosine X, and when one sample (a row along axis 0, or "
            "along the axis the output holds its samples on) of an output of AFTER has a cosine similarity below X "
            "to BEFORE's",
        )
        group.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    group.add_argument("--html", metavar="FILE", help="write the comparison as a self-contained HTML page")
    # --threads also sets the kernel timings of the passes (budget, --lowrank): not a comparison-only flag.
    parser.compare_dests = frozenset(action.dest for action in group._group_actions) - {"threads"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``graphopt`` console script; returns the exit code (``optimizer.exit_codes``).

    SIGINT and SIGTERM unwind the program (temporary folders and staged output files
    are removed on the way), print one line and return 130 or 143.
    """
    _RECEIVED.clear()
    _RESEND_PENDING.clear()
    with _usable_standard_streams(), _signals_unwind():
        try:
            try:
                try:
                    code = _main(argv)
                except Exception:
                    # An error of the unwinding a signal started is the signal's: a C extension's import
                    # (ONNX Runtime's, onnx's) turns the handler's exception into ImportError, which read
                    # as "ONNX Runtime is not installed" (exit 2), or a traceback.
                    if _RECEIVED:
                        raise Interrupted(_RECEIVED[0]) from None
                    raise
                if _RECEIVED:  # raised where Python ignores exceptions (a weakref or __del__ callback)
                    raise Interrupted(_RECEIVED[0])
                return code
            except GraphoptError as error:
                print(f"graphopt: error: {_printable(str(error))}", file=sys.stderr)
                return error.exit_code
            except MemoryError as error:  # numpy's allocation of sizes --dim or the inputs asked for
                detail = f" ({one_line(error, 160)})" if str(error) else ""
                print(
                    f"graphopt: error: out of memory{detail}; bind smaller sizes with --dim NAME=SIZE or give "
                    "smaller --inputs",
                    file=sys.stderr,
                )
                return exit_codes.USAGE
            except BrokenPipeError:  # --version or --print-config into `| head -0`: nothing is left to print
                from optimizer.console import silence_stdout

                silence_stdout()
                return exit_codes.SIGPIPE
            except OSError as error:  # a path the system refuses where no check foresaw it (a name over NAME_MAX)
                where = f"{os.fsdecode(error.filename)}: " if error.filename is not None else ""
                print(f"graphopt: error: {_printable(where)}{error.strerror or one_line(error)}", file=sys.stderr)
                return exit_codes.USAGE
        except (Interrupted, KeyboardInterrupt) as stop:  # also while the error above is printed
            signum = getattr(stop, "signum", signal.SIGINT)
            print(f"graphopt: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
            return 128 + signum


def _printable(text: str) -> str:
    """``text`` with each character that is not printable (a newline, a tab, an escape) as its Python escape: an
    error stays one line, and an escape sequence in a file name cannot rewrite the terminal. A byte of a path that is
    not UTF-8 (read by Python as a lone surrogate) is shown as the byte, ``\\xff`` as ``ls -b`` shows it, not as
    ``\\udcff``."""
    return "".join(
        char
        if char.isprintable()
        else f"\\x{ord(char) - 0xDC00:02x}"
        if 0xDC80 <= ord(char) <= 0xDCFF
        else repr(char)[1:-1]
        for char in text
    )


@contextlib.contextmanager
def _usable_standard_streams() -> Iterator[None]:
    """A closed stdout or stderr (``graphopt ... >&-``: Python sets it to None) becomes the null device, as a
    pipe whose reader left: the run still writes its files and returns its own code. A stream that cannot
    encode the report's characters (``Δ``, ``→``, box lines into a cp1252 log on Windows) writes ``?``
    for them instead of stopping the run with a UnicodeEncodeError after the model is written; one whose
    writes fail (a full disk) stops showing, not the run (``FailSafeStream``). The streams come back as they
    were when the block ends (``main`` called from Python)."""
    previous = {name: getattr(sys, name) for name in ("stdout", "stderr")}
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 (kept: output after main goes there)
        else:
            if isinstance(stream, io.TextIOWrapper):
                with contextlib.suppress(ValueError, OSError):  # a stream that was closed under us stays as it is
                    stream.reconfigure(errors="replace")
            if not isinstance(stream, FailSafeStream):
                setattr(sys, name, FailSafeStream(stream, f"standard {'output' if name == 'stdout' else 'error'}"))
    try:
        yield
    finally:
        for name, stream in previous.items():
            if stream is not None:
                setattr(sys, name, stream)


def _pass_changes_joined(argv: list[str]) -> list[str]:
    """``--passes -NAME,...`` as ``--passes=-NAME,...`` on ``optimize`` and ``demo``: argparse reads a value that
    starts with ``-`` as a flag.

    Only where every comma-separated item is spelled like a change to the pipeline (``+`` or ``-`` and hyphenated
    words: ``-fuse-atention`` is then an unknown pass, named as such; ``--passes -v`` stays a missing value).
    """
    if not argv or argv[0] not in ("optimize", "demo"):
        return argv
    joined = []
    index = 0
    while index < len(argv):
        word = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else None
        if word == "--passes" and following is not None and following.startswith("-"):
            items = [item.strip() for item in following.split(",") if item.strip()]
            if items and all(_PASS_CHANGE.fullmatch(item) for item in items):
                joined.append(f"--passes={following}")
                index += 2
                continue
        joined.append(word)
        index += 1
    return joined


# argparse's repr of a byte that is not UTF-8 (a lone surrogate), after an even count of backslashes.
_SURROGATE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")

# A change to the default pipeline as --passes spells it: +NAME or -NAME, NAME hyphenated lowercase words.
_PASS_CHANGE = re.compile(r"[+-][a-z0-9]+(?:-[a-z0-9]+)+")


def _main(argv: list[str] | None) -> int:
    from rich.console import Console

    from optimizer.console import ReportConsole, logging_for

    parser = build_parser()
    argv = _pass_changes_joined(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    args.verbose += getattr(args, "sub_verbose", 0)
    args.quiet = args.quiet or getattr(args, "sub_quiet", False)
    if args.verbose and args.quiet:
        raise OptionError("-v and -q: choose one")
    from optimizer.runtime import session_threads

    session_threads()  # a bad $GRAPHOPT_SESSION_THREADS is refused up front, not when a check first opens a session
    words = sys.argv[1:] if argv is None else argv
    for old, new in (getattr(args, "_spellings", None) or {}).values():
        if any(word == new or word.startswith(new + "=") for word in words):
            raise OptionError(f"{old} and {new}: the old and the new name of one flag; give {new} once")
        if not args.quiet:  # -q: errors and failed gates only
            print(f"graphopt: warning: {old} is now {new}; {old} will be removed", file=sys.stderr)
    if args.command in _CONFIGURABLE:
        if args.command == "demo":
            args.model = str(EXAMPLE_MODEL)
        _apply_config(args, argv, parser.commands[args.command])
        if args.print_config:
            from optimizer.config import dump_config

            _refuse_bad_flags(args)  # a recipe printed from a command line that would be refused must not run

            sys.stdout.write(dump_config(args, parser.commands[args.command]))
            sys.stdout.flush()  # a closed pipe raises here, in main, not at the interpreter's exit
            return exit_codes.OK
    # Off a terminal (logs, CI), rich would wrap tables at 80 columns.
    console = ReportConsole() if sys.stdout.isatty() else ReportConsole(width=120)
    errors = Console(stderr=True)
    with logging_for(args.verbose, errors):
        if args.command == "passes":
            return _list_passes(console, args.target, names_only=args.quiet)
        if args.command == "make-inputs":
            return _make_inputs(console, args)
        if args.command == "compare":
            return _finish(_compare(console, errors, args, args.before, args.after))
        made = _make_demo_folder() if args.command == "demo" and args.output == DEMO_OUTPUT else []
        try:
            return _finish(_optimize(console, errors, args))
        except BaseException:
            _remove_empty_folders(made)  # a refused or interrupted demo leaves no empty build/demo/ behind
            raise


def _make_demo_folder() -> list[Path]:
    """The default demo output's folder, made if missing (a given ``-o``'s folder must exist, as for ``optimize``);
    the folders it made, outermost first."""
    from optimizer.errors import OutputPathError

    folder = Path(DEMO_OUTPUT).parent
    missing = [each for each in reversed([folder, *folder.parents]) if each != Path(".") and not each.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _remove_empty_folders([each for each in missing if each.is_dir()])
        raise OutputPathError(f"{folder}: cannot make the demo's folder ({error.strerror or error})") from error
    return missing


def _remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (outermost first) that are still empty, innermost first."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only an empty folder: one another process wrote into stays


def _apply_config(args: argparse.Namespace, argv: list[str] | None, parser: argparse.ArgumentParser) -> None:
    """Fill in ``args`` from ``--config`` where the command line gave no flag; ``args.given``: the dests set either way.

    A config value equal to the flag's default counts as not given, so a printed config
    (which holds only settings away from the defaults) and a hand-written one that
    spells a default out refuse the same things.
    """
    given = _flags_given(argv)
    if args.config is not None:  # `--config "$RECIPE"` with RECIPE unset is refused, not a run without it
        from optimizer.config import load_config

        for dest, value in load_config(args.config, parser).items():
            if dest not in given:
                setattr(args, dest, value)
                if value != parser.get_default(dest):
                    given.add(dest)
    args.given = given
    if args.print_config:
        return
    # Arguments argparse cannot require, since a config file may give them: refused as argparse would.
    required = ("before", "after") if args.command == "compare" else ("model", "output")
    missing = [name for name in required if getattr(args, name) is None]
    if missing:
        named = ", ".join("-o/--output" if name == "output" else name for name in missing)
        keys = " and ".join(f"`{name} = ...`" for name in missing)
        parser.error(f"the following arguments are required: {named} (or {keys} in --config)")


def _flags_given(argv: list[str] | None) -> set[str]:
    """The argparse dests the command line itself sets (not by default)."""
    parser = build_parser()
    for each in (parser, *parser.commands.values()):
        for action in each._actions:  # argparse keeps no public list of a parser's arguments
            action.default = argparse.SUPPRESS
    given = set(vars(parser.parse_args(argv)))
    return given - {"command", "_spellings", "_given_once", "sub_verbose", "sub_quiet", "verbose", "quiet"}


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise ``Interrupted`` in the main thread.

    The first signal unwinds; later ones are ignored, so that they cannot cut the
    clean-up short (SIGKILL still stops a clean-up that hangs). Outside the main thread
    (where Python cannot set handlers) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in signals}

    def unwind(signum: int, frame: Any) -> None:
        if _RESEND_PENDING or _RECEIVED:  # a second Ctrl-C (also one nested below, while the Timer starts), or
            # one after a save raised the pending one (``raise_if_interrupted``): the run is unwinding. A SIGTERM
            # beside a pending SIGINT is the one delivered (and the exit code says so).
            if _RESEND_PENDING and signum == signal.SIGTERM:
                _RESEND_PENDING[0] = signum
            return
        if _inside_module_lock_callback(frame) and hasattr(signal, "pthread_kill"):
            # An exception raised here would be swallowed ("Exception ignored in ... _get_module_lock")
            # and the run would go on: deliver the signal again once the callback has returned. Only
            # there: importlib's other frames pass an exception on, and a signal deferred at each of them
            # was deferred again and again for as long as the run imported (past the written output).
            # A daemon thread (the run's exit never waits on it) that sends nothing once a signal unwound
            # the run: a second Ctrl-C here must not reach Python's own handler after main has restored it.
            _RESEND_PENDING.append(signum)
            main = threading.main_thread().ident
            resend = threading.Timer(0.02, _send_unless_received, (main,))
            resend.daemon = True
            resend.start()
            return
        for each in signals:
            signal.signal(each, signal.SIG_IGN)
        _RECEIVED.append(signum)
        raise Interrupted(signum)

    for signum in signals:
        signal.signal(signum, unwind)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        # The run is over: a deferred signal is not delivered after it, and the next run in this process
        # (``main`` again, or the API, whose saves check ``RECEIVED_SIGNALS``) starts uninterrupted.
        _RESEND_PENDING.clear()
        _RECEIVED.clear()


# Signals ``_signals_unwind`` turned into ``Interrupted``: if a callback swallowed the exception
# anyway, no output is renamed into place (``raise_if_interrupted``) and ``main`` still ends the run
# as interrupted.
_RECEIVED = RECEIVED_SIGNALS
# The signal a Timer will deliver again (``unwind`` deferred it out of importlib's module-lock callback).
_RESEND_PENDING = PENDING_SIGNALS


def _send_unless_received(thread: int) -> None:
    """Deliver the deferred signal again, unless another unwound the run meanwhile or the run is over."""
    pending = list(_RESEND_PENDING)
    _RESEND_PENDING.clear()
    if pending and not _RECEIVED:
        signal.pthread_kill(thread, pending[0])


def _inside_module_lock_callback(frame: Any) -> bool:
    """Whether ``frame`` is importlib's module-lock weakref callback (``_get_module_lock``'s ``cb``), which runs
    where Python ignores exceptions."""
    return (
        frame is not None
        and frame.f_code.co_filename == "<frozen importlib._bootstrap>"
        and frame.f_code.co_name == "cb"
    )


def _optimize(console: Console, errors: Console, args: argparse.Namespace) -> list[tuple[int, list[str]]]:
    """Optimize, write the result and its reports, compare if asked; the gates that failed, with their codes."""
    from optimizer.api import optimize_with_report
    from optimizer.console import progress_sink
    from optimizer.gates import requested_passes, strict_failures
    from optimizer.inputs import refuse_unreadable_data
    from optimizer.model_io import (
        check_paths,
        refuse_data_onnxruntime_will_not_open,
        refuse_path_onnxruntime_cannot_take,
    )
    from optimizer.progress import reporting_to, task
    from optimizer.report import render_table

    options = _refuse_ignored_flags(args, options_from_args(args))
    writes = _optimize_writes(args)
    if args.compare:
        _compare_settings(args)  # bad comparison flags must not cost the optimization first
    # Every output path is checked before any work: a report into a missing folder, or over a file
    # graphopt reads, must not cost the run (nor leave the model written and the report not).
    _refuse_stdout(writes)
    refuse_unreadable_data(args.inputs, "--inputs")
    refuse_unreadable_data(args.calibration, "--calibration")
    check_paths(
        writes,
        [
            ("the --inputs file", args.inputs),
            ("the --calibration file", args.calibration),
            ("the --config file", args.config),
        ],
        models=[("the input model", args.model)],
    )
    if args.compare:
        refuse_data_onnxruntime_will_not_open(args.model, args.model)
        if args.output is not None:
            # The comparison opens the written model at the absolute path save_model returns.
            refuse_path_onnxruntime_cannot_take(Path(args.output).absolute(), f"-o {args.output}")
    if args.compare:
        # What the comparison would refuse must not cost the optimization and its written model first.
        from optimizer.compare.comparison import check_before_optimizing
        from optimizer.inputs import parse_dim_flags

        # Held-out text is the generation comparison's alone; verification generates one step's inputs.
        # --dim from the flags: under --no-verify the options hold none (they are the comparison's alone).
        dims = parse_dim_flags(args.dim)
        args.inputs_are_text = check_before_optimizing(args.model, _compare_settings(args), args.inputs, dims)
    names = _split(args.passes, "--passes") if args.passes is not None else None
    requested = requested_passes(names, options) if args.strict else set()
    with progress_sink(errors, args.quiet) as sink, reporting_to(sink), task(f"optimizing {Path(args.model).name}"):
        _, report = optimize_with_report(
            args.model,
            args.passes,  # comma-separated, split by the API
            output=args.output,
            inputs=_verification_inputs(args),
            calibration=args.calibration,
            options=options,
        )
    if not args.quiet:
        render_table(report, console, verbose=args.verbose > 0)
        # Named as errors name it (``_printable``): a byte that is not UTF-8 was "?", a newline split the line.
        console.print(f"wrote {_printable(str(report.output))}", highlight=False, soft_wrap=True, markup=False)
    if args.pipeline_json:
        report.write_json(args.pipeline_json)  # atomically; a failure names --pipeline-json's path
    failed = []
    if lines := strict_failures(report, requested):
        failed.append((exit_codes.STRICT_FAILED, lines))
    if args.compare:
        failed += _compare(console, errors, args, args.model, report.output, pipeline=report)
    return failed


def _refuse_bad_flags(args: argparse.Namespace) -> None:
    """The checks of flags alone (no file read) that ``optimize``/``demo`` or ``compare`` make before any work."""
    from optimizer.api import refuse_conflicts
    from optimizer.inputs import parse_dim_flags

    if args.command == "compare":
        _refuse_stdout(_compare_writes(args))
        _compare_settings(args)
        parse_dim_flags(args.dim)
        return
    _refuse_stdout(_optimize_writes(args))
    options = _refuse_ignored_flags(args, options_from_args(args))
    if args.compare:
        _compare_settings(args)
    refuse_conflicts(args.passes, options, _verification_inputs(args) is not None, args.calibration is not None)


def _optimize_writes(args: argparse.Namespace) -> dict[str, str | None]:
    """The files ``optimize``/``demo`` write, by the flag that names each (the comparison's with ``--compare``)."""
    writes = {"-o": args.output, _spelled(args, "pipeline_json", "--pipeline-json"): args.pipeline_json}
    if args.compare:
        writes.update({_spelled(args, "json", "--compare-json"): args.json, "--html": args.html})
    return writes


def _compare_writes(args: argparse.Namespace) -> dict[str, str | None]:
    """The reports a comparison writes, by the flag that names each."""
    return {_spelled(args, "json", "--json"): args.json, "--html": args.html}


def _verification_inputs(args: argparse.Namespace) -> str | None:
    """``--inputs`` as the optimization's verification inputs: with ``--compare --no-verify``, or held-out text
    with ``--compare --generate``, they are the comparison's alone (without ``--compare``, ``--no-verify``
    refuses them)."""
    comparisons_alone = args.no_verify or getattr(args, "inputs_are_text", False)
    return None if args.compare and comparisons_alone else args.inputs


def options_from_args(args: argparse.Namespace) -> Options:
    """The ``Options`` the pipeline flags ask for: each flag sets the option of the same name."""
    from optimizer.inputs import parse_dim_flags
    from optimizer.options import Options
    from optimizer.verify import parse_tolerance_flags

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Options) if hasattr(args, f.name)}
    values["exclude"] = tuple(args.exclude or ())
    values["dims"] = parse_dim_flags(args.dim)
    values["verify"] = not args.no_verify
    values["tolerances"] = parse_tolerance_flags(args.tolerance) if args.tolerance else None
    if args.max_sequence is None:
        del values["max_sequence"]
    return Options.build(**values)


def _refuse_ignored_flags(args: argparse.Namespace, options: Options) -> Options:
    """A flag that would do nothing in this command line is an error, not silently dropped.

    - comparison flags without ``--compare``;
    - ``--threads`` without ``--compare`` or a pass that times kernels;
    - ``--dim`` with ``--no-verify``, without ``--compare``, ``--static-shapes`` or an approximate pass;
    - an option flag given explicitly, even at its default value, that no pass in the
      pipeline reads (``--calibration-method percentile`` without ``--quantize static``;
      the registry refuses the same for values away from the default).

    Returns ``options`` for the pipeline: without ``threads``, or ``dims``, where only ``--compare`` uses them.
    """
    from optimizer.registry import all_passes, kernel_timing_passes, resolve, ways_to_ask

    given = getattr(args, "given", set())
    parser_compare = {dest for dest in given if dest in _compare_dests()}
    if parser_compare and not args.compare:
        flags = ", ".join(sorted(_spelled(args, dest, _flag_of_dest(dest)) for dest in parser_compare))
        raise OptionError(f"{flags}: comparison flags do nothing without --compare (add it, or run `graphopt compare`)")
    # Resolved without threads: the registry refuses threads no pass uses, and --compare may use them.
    names = _split(args.passes, "--passes") if args.passes is not None else None
    specs = resolve(names, dataclasses.replace(options, threads=None))
    if not any(spec.kernels_timed(options) for spec in specs):
        if "threads" in given and not args.compare:
            raise OptionError(
                "--threads does nothing here: it sets the threads of --compare and of the kernel timings of "
                f"{kernel_timing_passes()}"
            )
        options = dataclasses.replace(options, threads=None)  # --compare's alone (CompareSettings)
    sized = any(spec.approximate or spec.specializes_shapes for spec in specs)
    if "dim" in given and not options.verify and not args.compare and not sized:
        raise OptionError(
            "--dim does nothing with --no-verify: it sizes the generated verification inputs, --static-shapes, "
            "--compare's inputs and the approximate passes' generated calibration samples"
        )
    if not options.verify and not sized:
        options = dataclasses.replace(options, dims={})  # --compare's alone (the API refuses dims nothing reads)
    read = set().union(*(spec.options_read for spec in specs))
    readers: dict[str, list[Any]] = {}
    for spec in all_passes():
        for option in spec.options_read:
            readers.setdefault(option, []).append(spec)
    changed = set(options.changed())  # the registry refuses these, in the API's words
    for dest in sorted(given):
        option = _OPTION_OF_DEST.get(dest, dest)
        if option in readers and option not in read and option not in changed:
            asks = ways_to_ask(readers[option])
            raise OptionError(f"{_flag_of_dest(dest)} does nothing here: it needs {asks}")
    return options


def _compare_dests() -> frozenset[str]:
    return build_parser().commands["optimize"].compare_dests


def _flag_of_dest(dest: str) -> str:
    """The flag a user types for ``dest`` (the first long one)."""
    for action in build_parser().commands["optimize"]._actions:
        if action.dest == dest and action.option_strings and not isinstance(action, _OldSpelling):
            return next((flag for flag in action.option_strings if flag.startswith("--")), action.option_strings[0])
    return dest


def _spelled(args: argparse.Namespace, dest: str, flag: str) -> str:
    """How the user spelled the flag of ``dest`` (its old name, if they used that), for messages."""
    return (getattr(args, "_spellings", None) or {}).get(dest, (flag,))[0]


def _compare_settings(args: argparse.Namespace) -> CompareSettings:
    """The comparison flags, checked (refused in one line before any work)."""
    from optimizer.compare.comparison import CompareSettings
    from optimizer.compare.timing import EP_PROVIDERS

    given = getattr(args, "given", set())
    if not args.generate and given & {"prompt_length", "new_tokens"}:
        flags = " and ".join(_flag_of_dest(dest) for dest in sorted(given & {"new_tokens", "prompt_length"}))
        raise OptionError(f"{flags}: only with --generate (they set what generation times)")
    eps = _split(args.ep, "--ep")
    for index, name in enumerate(eps):
        if name not in EP_PROVIDERS:
            raise OptionError(f"--ep {name}: unknown execution provider (choose from {', '.join(EP_PROVIDERS)})")
        if name in eps[:index]:
            raise OptionError(f"--ep {args.ep}: {name} is named twice; each provider is measured once")
    if args.max_ratio is not None and not (math.isfinite(args.max_ratio) and args.max_ratio > 0):
        raise OptionError(f"--max-ratio {args.max_ratio}: expected a positive ratio of AFTER's latency to BEFORE's")
    for dest, flag in (("gate_min_cosine", "min-cosine"), ("gate_min_worst_cosine", "min-worst-cosine")):
        cosine = getattr(args, dest)
        if cosine is not None and not (-1.0 <= cosine <= 1.0):
            flag = f"--compare-{flag}" if args.command != "compare" else f"--{flag}"
            raise OptionError(f"{flag} {cosine}: a cosine similarity is between -1 and 1")
    batches = (
        [_positive_int(item, "--batch") for item in _split(args.batch, "--batch")] if args.batch is not None else None
    )
    if batches and (repeated := next((size for index, size in enumerate(batches) if size in batches[:index]), None)):
        # Timed twice, each with half the time budget's share; nothing new measured.
        raise OptionError(f"--batch {args.batch}: batch size {repeated} is named twice; each size is measured once")
    return CompareSettings(
        eps=eps,
        batches=batches,
        threads=args.threads,
        time_budget=args.time_budget,
        iterations=args.iterations,
        warmup=args.warmup,
        profile=args.profile,
        generate=args.generate,
        prompt_length=args.prompt_length,
        new_tokens=args.new_tokens,
    )


def _compare(
    console: Console,
    errors: Console,
    args: argparse.Namespace,
    before: str,
    after: str,
    pipeline: PipelineReport | None = None,
) -> list[tuple[int, list[str]]]:
    """Compare, print and write the comparison; the gates (``--max-ratio``, ``--min-cosine``) that failed.

    ``pipeline``, on ``optimize --compare``, puts the pass table in the ``--html`` page.
    """
    from optimizer.compare.comparison import compare
    from optimizer.compare.report import render_comparison, write_html, write_json
    from optimizer.console import progress_sink
    from optimizer.gates import accuracy_failures, slower_failures, worst_sample_failures
    from optimizer.inputs import parse_dim_flags
    from optimizer.model_io import check_paths, refuse_data_onnxruntime_will_not_open
    from optimizer.progress import reporting_to, task

    _refuse_stdout(_compare_writes(args))
    check_paths(
        _compare_writes(args),
        [("the --inputs file", args.inputs), ("the --config file", args.config)],
        models=[("the BEFORE model", before), ("the AFTER model", after)],
    )
    for model in (before, after):
        refuse_data_onnxruntime_will_not_open(model, model)
    settings = _compare_settings(args)
    inputs = args.inputs  # on ``optimize --compare``: the verification inputs, compared on too
    with progress_sink(errors, args.quiet) as sink:
        watched = _ComparisonProgress(sink) if sink is not None else None
        with reporting_to(watched), task("comparing BEFORE and AFTER"):
            report = compare(
                before,
                after,
                settings=settings,
                inputs=inputs,
                dims=parse_dim_flags(args.dim),
                progress=watched.timed if watched is not None else None,
                # optimize --compare without --inputs: accuracy over the --calibration samples (said so)
                calibration=getattr(args, "calibration", None),
            )
    if not args.quiet:
        render_comparison(report, console)
    if args.json:
        write_json(report, args.json)
    if args.html:
        write_html(report, args.html, pipeline)
    failed = []
    if args.gate_min_cosine is not None and (
        lines := accuracy_failures(
            report, args.gate_min_cosine, "--min-cosine" if args.command == "compare" else "--compare-min-cosine"
        )
    ):
        failed.append((exit_codes.LESS_ACCURATE, lines))
    if args.gate_min_worst_cosine is not None and (
        lines := worst_sample_failures(
            report,
            args.gate_min_worst_cosine,
            "--min-worst-cosine" if args.command == "compare" else "--compare-min-worst-cosine",
        )
    ):
        failed.append((exit_codes.LESS_ACCURATE, lines))
    if args.max_ratio is not None and (lines := slower_failures(report, args.max_ratio)):
        failed.append((exit_codes.SLOWER, lines))
    return failed


class _ComparisonProgress:
    """A sink in front of ``sink`` that also takes ``compare``'s ``progress(label, done, total)`` callback.

    Each timing label becomes a task of its own (``timing cpu batch 1``), ended when its
    runs are done, when the next label comes, or when another step (a memory probe)
    starts: the time budget may end a timing loop before its last run is counted.
    """

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self._timing: tuple[str, Any] | None = None

    def start(self, description: str, total: int | None) -> Any:
        self.end_timing()
        return self.sink.start(description, total)

    def update(self, key: Any, completed: int, description: str | None = None) -> None:
        self.sink.update(key, completed, description)

    def stop(self, key: Any, finished: bool = True) -> None:
        self.end_timing()
        self.sink.stop(key, finished)

    def timed(self, label: str, done: int, total: int) -> None:
        if self._timing is not None and self._timing[0] != label:
            self.end_timing()
        if self._timing is None:
            self._timing = (label, self.sink.start(f"timing {label}", total))
        self.sink.update(self._timing[1], done)
        if done >= total:
            self.end_timing()

    def end_timing(self) -> None:
        if self._timing is not None:
            self.sink.stop(self._timing[1])
            self._timing = None


def _finish(failed: list[tuple[int, list[str]]]) -> int:
    """Print every failed gate's lines; the exit code of the first in ``exit_codes.GATE_ORDER`` (0 if none failed)."""
    for _, lines in failed:
        for line in lines:
            print(f"graphopt: {line}", file=sys.stderr)
    codes = {code for code, _ in failed}
    return next((code for code in exit_codes.GATE_ORDER if code in codes), exit_codes.OK)


def _make_inputs(console: Console, args: argparse.Namespace) -> int:
    from optimizer.input_skeleton import write_input_skeleton
    from optimizer.inputs import parse_dim_flags
    from optimizer.model_io import check_paths

    _refuse_stdout({"-o": args.output})
    # The skeleton is written through a link at -o (write_atomically), unlike a model.
    check_paths({"-o": args.output}, models=[("the model", args.model)], links_replaced=())
    summary = write_input_skeleton(args.model, args.output, parse_dim_flags(args.dim))
    if not args.quiet:
        console.print(summary, highlight=False, soft_wrap=True, markup=False)
    return exit_codes.OK


def _refuse_stdout(writes: dict[str, str | None]) -> None:
    """``-`` means stdout to most tools (``--json - | jq``); graphopt writes each output to a file, atomically,
    so ``-`` is refused in one line rather than written as a file named ``-``."""
    for flag, path in writes.items():
        if path == "-":
            raise OutputPathError(f"{flag} -: graphopt writes this to a file, not to stdout; give a file name")


def _split(text: str, flag: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise InputSpecError(f"{flag}: give at least one value")
    return items


def _positive_int(text: str, flag: str) -> int:
    # ASCII digits only: str.isdigit() accepts '²', which int() then refuses with a traceback.
    if not re.fullmatch(r"[0-9]+", text.strip()) or int(text) <= 0:
        raise InputSpecError(f"{flag} {text}: expected a positive integer")
    return int(text)


def _list_passes(console: Console, target: str, *, names_only: bool = False) -> int:
    """Every registered pass with whether ``target``'s default pipeline runs it and what it does; with
    ``names_only`` (``-q``), the names of ``target``'s default pipeline alone, one per line (for ``--passes``)."""
    from optimizer.registry import all_passes

    for spec in all_passes():
        if names_only:
            if target in spec.default_for:
                console.print(spec.name, highlight=False)
            continue
        marker = "default" if target in spec.default_for else "opt-in "
        console.print(f"{spec.name:34} {marker}  {spec.summary}", highlight=False, soft_wrap=True)
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())

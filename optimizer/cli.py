"""The ``graphopt`` command line: ``optimize``, ``compare``, ``passes`` and ``demo``.

User mistakes print one line (``graphopt: error: ...``) and exit 2; SIGINT and
SIGTERM print one line and exit 130 and 143, with temporary files removed; a
traceback means a bug in graphopt.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import re
import signal
import sys
import threading
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.errors import GraphoptError, InputSpecError, Interrupted

if TYPE_CHECKING:
    from rich.console import Console

    from optimizer.compare.comparison import CompareSettings
    from optimizer.options import Options

# The rest of graphopt (onnx, ONNX Runtime, rich: over a second of imports) is imported
# inside the functions that use it, after ``main`` has installed its signal handlers, so
# that Ctrl-C during start-up is one line too, not a traceback from deep in an import.

EXAMPLE_MODEL = Path(__file__).resolve().parents[1] / "examples" / "encoder.onnx"


class _OneLineParser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line reported like every other: one line, exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"graphopt: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from optimizer.options import TARGETS

    parser = _OneLineParser(prog="graphopt", description="Optimize ONNX models for ONNX Runtime, verified.")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what passes do (and tracebacks of failed passes)"
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    optimize = commands.add_parser("optimize", help="optimize a model and write the result")
    _add_verbose_flag(optimize)
    optimize.add_argument("model", help="input .onnx file (never modified)")
    optimize.add_argument("-o", "--output", required=True, help="output .onnx file (written atomically)")
    _add_pipeline_flags(optimize)

    comparison = commands.add_parser(
        "compare", help="compare two models' latency, throughput, memory, size and accuracy"
    )
    _add_verbose_flag(comparison)
    comparison.add_argument("before", help="the original model")
    comparison.add_argument("after", help="the optimized model")
    comparison.add_argument(
        "--inputs",
        metavar="FILE.npz",
        help="inputs, one array per graph input name; with --generate, input_ids (and attention_mask) alone "
        "are held-out text, one row per sequence",
    )
    comparison.add_argument(
        "--dim", action="append", metavar="NAME=VALUE", help="bind a symbolic input dimension (repeatable)"
    )
    _add_compare_flags(comparison)

    listing = commands.add_parser("passes", help="list the registered passes")
    listing.add_argument(
        "--target", choices=TARGETS, default="cpu", help="mark the passes in this target's default pipeline"
    )

    demo = commands.add_parser("demo", help="optimize the example transformer encoder shipped in examples/")
    _add_verbose_flag(demo)
    demo.add_argument("-o", "--output", default="build/demo/encoder.optimized.onnx", help="where to write the result")
    _add_pipeline_flags(demo)
    return parser


def _add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    # Accepted after the subcommand too (``graphopt optimize ... -v``); SUPPRESS keeps the
    # top-level value when the subcommand's flag is not given.
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    from optimizer.options import TARGETS

    parser.add_argument(
        "--passes",
        help="comma-separated pass names, in order (default: the target's default pipeline); "
        "+NAME,... adds opt-in passes to the default pipeline instead",
    )
    parser.add_argument(
        "--target", choices=TARGETS, default="cpu", help="execution provider the result is for (default cpu)"
    )
    parser.add_argument("--inputs", metavar="FILE.npz", help="verification inputs: one array per graph input name")
    parser.add_argument(
        "--dim", action="append", metavar="NAME=VALUE", help="bind a symbolic input dimension (repeatable)"
    )
    parser.add_argument(
        "--tolerance", action="append", metavar="DTYPE=RTOL,ATOL", help="override a verification tolerance (repeatable)"
    )
    parser.add_argument(
        "--static-shapes",
        action="store_true",
        help="fix symbolic input dims to their --dim sizes so all shape arithmetic folds "
        "(the result accepts only those shapes)",
    )
    parser.add_argument(
        "--max-sequence",
        type=int,
        metavar="N",
        help="longest sequence the result must support where a fusion bakes in a table or a probed fact "
        "(rotary cos/sin, attention mask kind, position ids; default 4096)",
    )
    _add_precision_flags(parser)
    _add_pruning_flags(parser)
    parser.add_argument("--no-verify", action="store_true", help="do not check each pass's result on ONNX Runtime")
    parser.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
    parser.add_argument(
        "--compare", action="store_true", help="then compare the input and the result (see `graphopt compare`)"
    )
    _add_compare_flags(parser)


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
        "--calibration",
        metavar="FILE.npz",
        help="sample inputs, many samples along axis 0: calibrate ranges, search the budget, measure accuracy",
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
        help="keep layers whose node name or op type matches this glob in float (repeatable)",
    )
    group.add_argument(
        "--quantize-embeddings",
        action="store_true",
        help="store embedding tables in int8, one scale per row (a quarter of the size)",
    )
    group.add_argument(
        "--full-range-weights",
        action=argparse.BooleanOptionalAction,
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
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --fp16: keep float graph inputs and outputs float32 (default; --no-keep-io-types: float16)",
    )


def _add_pruning_flags(parser: argparse.ArgumentParser) -> None:
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
        choices=("magnitude", "activation"),
        help="rank units by weight magnitude or by activation on --calibration (default: activation with data)",
    )
    group.add_argument(
        "--global-ranking",
        action="store_true",
        help="rank units across all layers (each layer's scores relative to its mean) instead of per layer",
    )
    group.add_argument(
        "--no-repair",
        dest="repair",
        action="store_false",
        default=None,
        help="do not re-fit the layer after the removed units by least squares on --calibration",
    )


def _add_compare_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("comparison")
    group.add_argument(
        "--ep", default="cpu", help="execution providers to measure, comma-separated: cpu,cuda (default cpu)"
    )
    group.add_argument(
        "--batch", default="1", help="batch sizes, comma-separated (default 1); throughput is reported for each"
    )
    group.add_argument("--threads", type=int, help="intra-op threads (default: the cores this process may use)")
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
    group.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    group.add_argument("--html", metavar="FILE", help="write the comparison as a self-contained HTML page")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``graphopt`` console script; returns the exit code.

    SIGINT and SIGTERM unwind the program (temporary folders and staged output files
    are removed on the way), print one line and return 130 or 143.
    """
    with _signals_unwind():
        try:
            try:
                return _main(argv)
            except GraphoptError as error:
                print(f"graphopt: error: {error}", file=sys.stderr)
                return error.exit_code
        except (Interrupted, KeyboardInterrupt) as stop:  # also while the error above is printed
            signum = getattr(stop, "signum", signal.SIGINT)
            print(f"graphopt: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
            return 128 + signum


def _main(argv: list[str] | None) -> int:
    from rich.console import Console

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(name)s: %(message)s")
    # Off a terminal (logs, CI), rich would wrap tables at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    if args.command == "passes":
        return _list_passes(console, args.target)
    if args.command == "compare":
        return _compare(console, args, args.before, args.after)
    if args.command == "demo":
        args.model = str(EXAMPLE_MODEL)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    return _optimize(console, args)


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

    def unwind(signum: int, frame: object) -> None:
        for each in signals:
            signal.signal(each, signal.SIG_IGN)
        raise Interrupted(signum)

    for signum in signals:
        signal.signal(signum, unwind)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _optimize(console: Console, args: argparse.Namespace) -> int:
    from optimizer.api import optimize_with_report
    from optimizer.model_io import check_paths, write_atomically
    from optimizer.report import render_table

    writes = {"-o": args.output, "--report": args.report}
    if args.compare:
        writes.update({"--json": args.json, "--html": args.html})
        _compare_settings(args)  # bad comparison flags must not cost the optimization first
    # Every output path is checked before any work: a report into a missing folder, or over a file
    # graphopt reads, must not cost the run (nor leave the model written and the report not).
    check_paths(
        writes,
        [("the --inputs file", args.inputs), ("the --calibration file", args.calibration)],
        models=[("the input model", args.model)],
    )
    _, report = optimize_with_report(
        args.model,
        args.passes,  # comma-separated, split by the API
        output=args.output,
        inputs=args.inputs,
        calibration=args.calibration,
        options=options_from_args(args),
    )
    render_table(report, console, verbose=args.verbose)
    console.print(f"wrote {report.output}", highlight=False, soft_wrap=True, markup=False)
    if args.report:
        write_atomically(args.report, report.write_json, "report")
    if args.compare:
        return _compare(console, args, args.model, report.output)
    return 0


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


def _compare_settings(args: argparse.Namespace) -> CompareSettings:
    """The comparison flags, checked (refused in one line before any work)."""
    from optimizer.compare.comparison import CompareSettings

    return CompareSettings(
        eps=_split(args.ep, "--ep"),
        batches=[_positive_int(item, "--batch") for item in _split(args.batch, "--batch")],
        threads=args.threads,
        time_budget=args.time_budget,
        iterations=args.iterations,
        warmup=args.warmup,
        profile=args.profile,
        generate=args.generate,
        prompt_length=args.prompt_length,
        new_tokens=args.new_tokens,
    )


def _compare(console: Console, args: argparse.Namespace, before: str, after: str) -> int:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from optimizer.compare.comparison import compare
    from optimizer.compare.report import render_comparison, write_html, write_json
    from optimizer.inputs import parse_dim_flags
    from optimizer.model_io import check_paths

    check_paths(
        {"--json": args.json, "--html": args.html},
        [("the --inputs file", args.inputs)],
        models=[("the BEFORE model", before), ("the AFTER model", after)],
    )
    settings = _compare_settings(args)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        tasks: dict[str, object] = {}

        def advance(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(f"timing {label}", total=total)
            progress.update(tasks[label], completed=done)

        report = compare(
            before, after, settings=settings, inputs=args.inputs, dims=parse_dim_flags(args.dim), progress=advance
        )
    render_comparison(report, console)
    if args.json:
        write_json(report, args.json)
    if args.html:
        write_html(report, args.html)
    return 0


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


def _list_passes(console: Console, target: str) -> int:
    from optimizer.registry import all_passes

    for spec in all_passes():
        marker = "default" if target in spec.default_for else "opt-in "
        console.print(f"{spec.name:34} {marker}  {spec.summary}", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``graphopt`` command line: ``optimize``, ``passes`` and ``demo``.

User mistakes print one line (``graphopt: error: ...``) and exit 2; a traceback
means a bug in graphopt.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console

from optimizer.api import optimize_with_report
from optimizer.errors import GraphoptError
from optimizer.inputs import parse_dim_flags
from optimizer.registry import TARGETS, all_passes
from optimizer.report import render_table
from optimizer.verify import parse_tolerance_flags

EXAMPLE_MODEL = Path(__file__).resolve().parents[1] / "examples" / "encoder.onnx"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="graphopt", description="Optimize ONNX models for ONNX Runtime, verified.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what passes do (and tracebacks of failed passes)")
    commands = parser.add_subparsers(dest="command", required=True)

    optimize = commands.add_parser("optimize", help="optimize a model and write the result")
    optimize.add_argument("model", help="input .onnx file (never modified)")
    optimize.add_argument("-o", "--output", required=True, help="output .onnx file (written atomically)")
    _add_pipeline_flags(optimize)

    listing = commands.add_parser("passes", help="list the registered passes")
    listing.add_argument("--target", choices=TARGETS, default="cpu", help="mark the passes in this target's default pipeline")

    demo = commands.add_parser("demo", help="optimize the example transformer encoder shipped in examples/")
    demo.add_argument("-o", "--output", default="build/demo/encoder.optimized.onnx", help="where to write the result")
    _add_pipeline_flags(demo)
    return parser


def _add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--passes", help="comma-separated pass names, in order (default: the target's default pipeline)")
    parser.add_argument("--target", choices=TARGETS, default="cpu", help="execution provider the result is for (default cpu)")
    parser.add_argument("--inputs", metavar="FILE.npz", help="verification inputs: one array per graph input name")
    parser.add_argument("--dim", action="append", metavar="NAME=VALUE", help="bind a symbolic input dimension (repeatable)")
    parser.add_argument("--tolerance", action="append", metavar="DTYPE=RTOL,ATOL", help="override a verification tolerance (repeatable)")
    parser.add_argument("--static-shapes", action="store_true", help="fix symbolic input dims to their --dim sizes so all shape arithmetic folds (the result accepts only those shapes)")
    parser.add_argument("--no-verify", action="store_true", help="do not check each pass's result on ONNX Runtime")
    parser.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``graphopt`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(name)s: %(message)s")
    console = Console()
    try:
        if args.command == "passes":
            return _list_passes(console, args.target)
        if args.command == "demo":
            args.model = str(EXAMPLE_MODEL)
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        return _optimize(console, args)
    except GraphoptError as error:
        print(f"graphopt: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("graphopt: interrupted", file=sys.stderr)
        return 130


def _optimize(console: Console, args: argparse.Namespace) -> int:
    passes = [name.strip() for name in args.passes.split(",") if name.strip()] if args.passes else None
    _, report = optimize_with_report(
        args.model,
        passes,
        output=args.output,
        target=args.target,
        inputs=args.inputs,
        dims=parse_dim_flags(args.dim),
        verify=not args.no_verify,
        tolerances=parse_tolerance_flags(args.tolerance),
        static_shapes=args.static_shapes,
    )
    render_table(report, console)
    console.print(f"wrote {report.output}", highlight=False)
    if args.report:
        report.write_json(args.report)
    return 0


def _list_passes(console: Console, target: str) -> int:
    for spec in all_passes():
        marker = "default" if target in spec.default_for else "opt-in "
        console.print(f"{spec.name:34} {marker}  {spec.summary}", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

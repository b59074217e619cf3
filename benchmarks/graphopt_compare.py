"""Running ``graphopt compare`` from the benchmark scripts and reading back its ratio."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def add_timing_flags(parser: argparse.ArgumentParser) -> None:
    """The ``graphopt compare`` settings every benchmark script takes."""
    parser.add_argument("--time-budget", type=float, default=30)
    parser.add_argument("--iterations", type=int, default=200, help="interleaved pairs at most (default 200)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ep", default="cpu", help="execution provider to time: cpu or cuda")


def compare_ratio(
    before: Path, after: Path, out: Path, args: argparse.Namespace, extra: list[str] | None = None
) -> tuple[float, float, float]:
    """Time ``after`` against ``before`` with ``graphopt compare`` (JSON kept at ``out``; ``extra`` flags appended).

    Returns the after/before latency ratio of medians and its 95 % interval, rounded
    to three places. Raises ``subprocess.CalledProcessError`` if compare fails.
    """
    command = [sys.executable, "-m", "optimizer.cli", "compare", str(before), str(after), "--json", str(out)]
    command += ["--time-budget", str(args.time_budget), "--iterations", str(args.iterations)]
    command += ["--threads", str(args.threads), "--ep", args.ep] + list(extra or [])
    subprocess.run(command, check=True, capture_output=True, text=True)
    ratio = json.loads(out.read_text())["providers"][0]["batches"][0]["ratio"]
    return round(ratio["ratio"], 3), round(ratio["low"], 3), round(ratio["high"], 3)

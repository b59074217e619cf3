"""Fusion ablation: the CPU speed-up each fusion pass adds on its own.

For each model: the cleanup passes alone (no fusion) are the baseline; each fusion
pass (with the fusions it builds on) is added to them in turn, then all of them, and ``graphopt
compare`` times the two interleaved at ORT_ENABLE_ALL. A fusion belongs in a
target's default pipeline only if it is faster here. One intra-op thread by default:
on this shared 2-core machine that gives ±0.5 % confidence intervals, two threads ±15 %. Usage::

    python benchmarks/fusion_ablation.py /tmp/bench/bert_legacy.onnx ... [--time-budget 30] [--iterations 400]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from optimizer.registry import all_passes

# A fusion and the fusions whose output it matches.
PREREQUISITES = {
    "fuse-bias-gelu": ["fuse-gelu"],
    "fuse-skip-layer-norm": ["fuse-layer-norm"],
    "fuse-skip-rms-norm": ["fuse-rms-norm"],
}


def optimize(model: Path, passes: list[str], out: Path) -> None:
    """Run ``graphopt optimize`` with exactly ``passes``."""
    subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "optimize", str(model), "-o", str(out), "--passes", ",".join(passes)],
        check=True,
        capture_output=True,
    )


def ratio(before: Path, after: Path, args: argparse.Namespace) -> list[float]:
    """after/before CPU latency ratio and its 95 % CI from ``graphopt compare``."""
    out = after.with_suffix(".json")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "optimizer.cli",
            "compare",
            str(before),
            str(after),
            "--threads",
            str(args.threads),
            "--ep",
            args.ep,
            "--time-budget",
            str(args.time_budget),
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    r = json.loads(out.read_text())["providers"][0]["batches"][0]["ratio"]
    return [round(r["ratio"], 3), round(r["low"], 3), round(r["high"], 3)]


def main() -> None:
    """Time every fusion pass against the cleanup-only pipeline on each model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--time-budget", type=float, default=30)
    parser.add_argument("--ep", default="cpu", help="execution provider to time: cpu or cuda")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--fusions", help="comma-separated fusion passes to time (default: all, then all together)")
    args = parser.parse_args()
    # The default pipeline plus every opt-in fusion except the ones ORT applies to any
    # MatMul at load time.
    everything = [
        spec.name
        for spec in all_passes()
        if spec.default_for or (spec.name.startswith("fuse-") and not spec.name.startswith("fuse-matmul"))
    ]
    fusions = [name for name in everything if name.startswith("fuse-")]
    cleanup = [name for name in everything if name not in fusions]
    timed = args.fusions.split(",") if args.fusions else fusions + ["all"]
    for model in args.models:
        base = model.with_suffix(".cleanup.onnx")
        optimize(model, cleanup, base)
        results = {}
        for fusion in timed:
            chosen = fusions if fusion == "all" else PREREQUISITES.get(fusion, []) + [fusion]
            passes = [name for name in everything if name in cleanup or name in chosen]
            out = model.with_suffix(f".{fusion}.onnx")
            optimize(model, passes, out)
            # A fusion that does not apply leaves the cleanup graph: nothing to time.
            same = out.read_bytes() == base.read_bytes()
            results[fusion] = "no change" if same else ratio(base, out, args)
        print(json.dumps({"model": model.stem, "ratio_vs_cleanup": results}), flush=True)


if __name__ == "__main__":
    main()

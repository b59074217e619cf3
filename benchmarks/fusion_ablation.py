"""Fusion ablation: the CPU speed-up each fusion pass adds on its own.

For each model: the cleanup passes alone (no fusion) are the baseline; each fusion
pass (with the fusions it builds on) is added to them in turn, then all of them, and ``graphopt
compare`` times the two interleaved at ORT_ENABLE_ALL. A fusion belongs in a
target's default pipeline only if it is faster here. One intra-op thread by default:
on this shared 2-core machine that gives ±0.5 % confidence intervals, two threads ±15 %. Usage::

    python benchmarks/fusion_ablation.py /tmp/bench/bert_legacy.onnx ... [--time-budget 30] [--iterations 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from graphopt_compare import add_timing_flags, compare_ratio

from optimizer.registry import all_passes

# A fusion and the fusions whose output it matches.
PREREQUISITES = {
    "pack-qkv": ["fuse-attention"],
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


def main() -> None:
    """Time every fusion pass against the cleanup-only pipeline on each model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    add_timing_flags(parser)
    parser.add_argument("--fusions", help="comma-separated fusion passes to time (default: all, then all together)")
    args = parser.parse_args()
    # The default pipeline plus every opt-in fusion except the ones ORT applies to any
    # MatMul at load time.
    everything = [
        spec.name
        for spec in all_passes()
        if spec.default_for or (spec.name.startswith("fuse-") and not spec.name.startswith("fuse-matmul"))
    ]
    fusions = [name for name in everything if name.startswith(("fuse-", "pack-"))]
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
            results[fusion] = "no change" if same else list(compare_ratio(base, out, out.with_suffix(".json"), args))
        print(json.dumps({"model": model.stem, "ratio_vs_cleanup": results}), flush=True)


if __name__ == "__main__":
    main()

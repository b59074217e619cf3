"""Pruning benchmark: ratio → parameters, file size, CPU latency and accuracy, with and without repair.

For one model with calibration and evaluation inputs (``.npz``, samples along axis 0),
it writes ``graphopt optimize --prune-ffn R`` / ``--prune-heads R`` results into ``--out``
for each ratio and each setting — no calibration data (weight magnitude, no repair; or
graphopt's generated samples), ``--cal-small`` samples (activation importance +
least-squares repair) and all calibration samples, each with and without repair — and
measures them against the original: parameters,
file size, per-output cosine on the evaluation inputs (mean per-sample cosine), and
latency with ``graphopt compare`` (interleaved, ORT_ENABLE_ALL). Usage::

    python benchmarks/pruning_benchmark.py MODEL.onnx --calibration CAL.npz --eval EVAL.npz --out DIR \
        [--ffn 0.1,0.3,0.5] [--heads 0.25,0.5] [--cal-small 8] [--compare-flag=--dim ...] [--time-budget 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
from graphopt_compare import add_timing_flags, compare_ratio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optimizer.accuracy import output_drift  # noqa: E402
from optimizer.inputs import split_samples  # noqa: E402
from passes.pruning._base import parameter_count  # noqa: E402


def optimize(model: Path, out: Path, flags: list[str]) -> None:
    """``graphopt optimize`` with ``flags``."""
    command = [sys.executable, "-m", "optimizer.cli", "optimize", str(model), "-o", str(out), *flags]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)


def per_output_cosine(original: Path, variant: Path, evaluation: dict) -> dict[str, float]:
    """Mean per-sample cosine of each float output of ``variant`` against ``original``."""
    import onnxruntime as ort

    runs = []
    for path in (original, variant):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [meta.name for meta in session.get_outputs()]
        wanted = [meta.name for meta in session.get_inputs()]
        runs.append(
            [dict(zip(names, session.run(None, {n: b[n] for n in wanted}))) for b in split_samples(evaluation, 16)]
        )
    floats = [name for name, value in runs[0][0].items() if value.dtype.kind == "f"]
    return {
        name: round(output_drift([{name: r[name]} for r in runs[0]], [{name: r[name]} for r in runs[1]]).cosine, 4)
        for name in floats
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--calibration", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ffn", default="0.1,0.3,0.5")
    parser.add_argument("--heads", default="0.25,0.5")
    parser.add_argument("--cal-small", type=int, default=8, help="samples in the small calibration setting")
    parser.add_argument("--compare-flag", action="append", default=[])
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--settings", help="comma-separated setting labels to run (default: all)")
    add_timing_flags(parser)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    evaluation = dict(np.load(args.eval))
    calibration = dict(np.load(args.calibration))
    small = args.out / "calibration_small.npz"
    np.savez(small, **{name: array[: args.cal_small] for name, array in calibration.items()})
    baseline = args.out / "float.onnx"
    optimize(args.model, baseline, [])
    settings = {
        "no data (magnitude)": ["--importance", "magnitude", "--no-repair", "--no-verify"],
        "no data (generated samples)": [],
        f"{args.cal_small} samples, no repair": ["--calibration", str(small), "--no-repair"],
        f"{args.cal_small} samples": ["--calibration", str(small)],
        "all samples, no repair": ["--calibration", str(args.calibration), "--no-repair"],
        "all samples": ["--calibration", str(args.calibration)],
    }
    if args.settings:
        settings = {label: flags for label, flags in settings.items() if label in args.settings.split(",")}
    jobs = [("ffn", float(r)) for r in args.ffn.split(",") if r] + [
        ("heads", float(r)) for r in args.heads.split(",") if r
    ]
    base_params = parameter_count(ir.load(baseline))
    for kind, ratio in jobs:
        for label, flags in settings.items():
            path = args.out / f"{kind}-{ratio:g}-{label.replace(' ', '_').replace(',', '')}.onnx"
            try:
                optimize(args.model, path, [f"--prune-{kind}", str(ratio), *flags])
            except subprocess.CalledProcessError as failure:
                print(f"{path.name} failed: {failure.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            row = {
                "model": args.model.stem,
                "prune": kind,
                "ratio": ratio,
                "setting": label,
                "parameters": parameter_count(ir.load(path)),
                "parameters_unpruned": base_params,
                "size_mb": round(path.stat().st_size / 2**20, 2),
                "cosine": per_output_cosine(args.model, path, evaluation),
            }
            if not args.no_latency and label == "all samples":
                row["latency_vs_unpruned"] = compare_ratio(
                    baseline, path, args.out / f"{path.stem}.compare.json", args, args.compare_flag
                )
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

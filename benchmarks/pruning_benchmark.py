"""Pruning benchmark: what a cut keeps, measured on held-out inputs the way a user sees the model.

For one model with calibration and evaluation inputs (``.npz``, samples along axis 0;
the evaluation rows must be disjoint from the calibration rows; ``--eval`` may be given
more than once, each set then reported apart under its file's stem), it writes
``graphopt optimize`` results into ``--out`` for each cut and each setting, and measures
them against the original on the evaluation inputs only:

* every float output: the per-sample cosine to the original, **mean and worst sample**
  (``--output NAME`` picks the outputs to report, e.g. a pooled sentence embedding);
  a ``[N, classes]`` output also gets its **top-1 agreement** with the original;
* parameters (every initializer element) relative to the unpruned model;
* latency against graphopt's unpruned float result with ``graphopt compare``
  (interleaved, ORT_ENABLE_ALL; ratio of medians and its 95 % interval) for the
  settings named by ``--time`` (run under ``flock /tmp/graphopt_timing.lock`` on a shared
  machine).

Cuts: ``--combined 0.3:0.25`` is ``--prune-ffn 0.3 --prune-heads 0.25`` in one run (the
combined cut), ``--ffn``/``--heads``/``--channels`` single cuts. Settings: no calibration
data (weight magnitude, no repair), the first ``--cal-small`` calibration samples, and all
of them, each with and without repair. Usage::

    python benchmarks/pruning_benchmark.py MODEL.onnx --calibration CAL.npz --eval EVAL.npz --out DIR \\
        [--combined 0.3:0.25] [--ffn 0.3] [--heads 0.25] [--channels 0.25] [--output sentence_embedding] \\
        [--cal-small 8] [--settings "all samples"] [--time "all samples"] [--compare-flag=--dim ...] \\
        [--flag=--global-ranking] [--threads 2] [--time-budget 30]

Prints one JSON line per result.
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

from optimizer.parameters import count_parameters  # noqa: E402
from optimizer.samples import split_samples  # noqa: E402


def optimize(model: Path, out: Path, flags: list[str]) -> str:
    """``graphopt optimize`` with ``flags``; its printed report."""
    command = [sys.executable, "-m", "optimizer.cli", "optimize", str(model), "-o", str(out), *flags]
    return subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO).stdout


def outputs_on(path: Path, evaluation: dict[str, np.ndarray], threads: int) -> dict[str, np.ndarray]:
    """Every output of the model at ``path`` on the evaluation inputs, batches of 16 (or the model's fixed
    batch size) concatenated."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [meta.name for meta in session.get_outputs()]
    wanted = [meta.name for meta in session.get_inputs()]
    batches = split_samples(evaluation, 16, ir.load(path))
    runs = [dict(zip(names, session.run(None, {n: b[n] for n in wanted}))) for b in batches]
    return {name: np.concatenate([run[name] for run in runs]) for name in names}


def accuracy(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], wanted: list[str]) -> dict:
    """Per float output: mean and worst per-sample cosine; top-1 agreement for a ``[N, classes]`` output.

    A sample of a ``[N, S, H]`` output is its whole ``[S, H]`` block (padding included, as
    the model computes it); pick pooled outputs with ``--output`` for what a user sees.
    """
    result = {}
    for name, e in expected.items():
        if (wanted and name not in wanted) or e.dtype.kind != "f":
            continue
        x, y = e.reshape(len(e), -1).astype(np.float64), actual[name].reshape(len(e), -1).astype(np.float64)
        cosine = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-30)
        entry = {"cosine_mean": round(float(cosine.mean()), 4), "cosine_worst": round(float(cosine.min()), 4)}
        if e.ndim == 2 and e.shape[1] > 1:
            entry["top1_agreement"] = round(float((e.argmax(1) == actual[name].argmax(1)).mean()), 4)
        result[name] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--calibration", type=Path, required=True)
    parser.add_argument(
        "--eval", type=Path, action="append", required=True, help="held-out inputs; repeat for several sets"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--combined", default="", help="FFN:HEADS ratio pairs cut in one run, comma-separated")
    parser.add_argument("--ffn", default="")
    parser.add_argument("--heads", default="")
    parser.add_argument("--channels", default="")
    parser.add_argument("--output", action="append", default=[], help="outputs to report (default: all float)")
    parser.add_argument("--cal-small", type=int, default=8, help="samples in the small calibration setting")
    parser.add_argument("--settings", help="comma-separated setting labels to run (default: all)")
    parser.add_argument("--time", default="all samples", help="settings to time, comma-separated ('' for none)")
    parser.add_argument("--compare-flag", action="append", default=[])
    parser.add_argument("--flag", action="append", default=[], help="extra optimize flag for every cut")
    add_timing_flags(parser)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    evaluations = {path.stem: dict(np.load(path)) for path in args.eval}
    calibration = dict(np.load(args.calibration))
    small = args.out / "calibration_small.npz"
    np.savez(small, **{name: array[: args.cal_small] for name, array in calibration.items()})
    baseline = args.out / "float.onnx"
    optimize(args.model, baseline, [])
    references = {stem: outputs_on(args.model, inputs, args.threads) for stem, inputs in evaluations.items()}
    settings = {
        "no data (magnitude)": ["--importance", "magnitude", "--no-repair", "--no-verify"],
        f"{args.cal_small} samples, no repair": ["--calibration", str(small), "--no-repair"],
        f"{args.cal_small} samples": ["--calibration", str(small)],
        "all samples, no repair": ["--calibration", str(args.calibration), "--no-repair"],
        "all samples": ["--calibration", str(args.calibration)],
    }
    if args.settings:
        settings = {label: flags for label, flags in settings.items() if label in args.settings.split(",")}
    jobs = [(f"ffn {f} + heads {h}", ["--prune-ffn", f, "--prune-heads", h]) for f, h in _pairs(args.combined)]
    for kind in ("ffn", "heads", "channels"):
        jobs += [(f"{kind} {r}", [f"--prune-{kind}", r]) for r in getattr(args, kind).split(",") if r]
    base_params = count_parameters(ir.load(baseline))
    timed = set(args.time.split(",")) if args.time else set()
    for cut, cut_flags in jobs:
        for label, flags in settings.items():
            stem = f"{cut}-{label}".replace(" ", "_").replace("+", "").replace(",", "")
            path = args.out / f"{stem}.onnx"
            try:
                printed = optimize(args.model, path, [*cut_flags, *flags, *args.flag])
            except subprocess.CalledProcessError as failure:
                print(f"{path.name} failed: {failure.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            row = {
                "model": args.model.stem,
                "cut": cut,
                "setting": label,
                "parameters_ratio": round(count_parameters(ir.load(path)) / base_params, 4),
                "parameters": count_parameters(ir.load(path)),
                "size_mb": round(path.stat().st_size / 2**20, 2),
                "held_out": _held_out(path, evaluations, references, args),
                "notes": [line.strip() for line in printed.splitlines() if line.startswith("prune-")],
            }
            if label in timed:
                row["latency_vs_unpruned"] = compare_ratio(
                    baseline, path, args.out / f"{path.stem}.compare.json", args, args.compare_flag
                )
            print(json.dumps(row), flush=True)


def _held_out(path: Path, evaluations: dict, references: dict, args: argparse.Namespace) -> dict:
    """``accuracy`` on the one evaluation set, or per set (by file stem) when ``--eval`` names several."""
    scores = {
        stem: accuracy(references[stem], outputs_on(path, inputs, args.threads), args.output)
        for stem, inputs in evaluations.items()
    }
    return next(iter(scores.values())) if len(scores) == 1 else scores


def _pairs(text: str) -> list[tuple[str, str]]:
    return [tuple(pair.split(":")) for pair in text.split(",") if pair]


if __name__ == "__main__":
    main()

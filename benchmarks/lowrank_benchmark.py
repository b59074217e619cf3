"""Low-rank factorization against structured pruning: kept parameters → latency ratio → accuracy on held-out data.

Two models with real weights:

- ``minilm``: the MiniLM sentence encoder (``paraphrase-MiniLM-L3-v2.onnx``) with the
  calibration and evaluation sentences of ``data_sources/make_quantization_data.py``.
  Every variant goes through ``optimize_with_report`` (the default pipeline plus the
  approximate pass, verified as the CLI verifies), with the token dims bound to batch 1
  × sequence 128 (the factorization times a layer at 128 rows where its input shape is known, else
  at 1 and 128).
  Accuracy: mean per-sentence cosine of the hidden states and of the pooled embedding
  against the original on the held-out sentences, and the worst sentence's pooled cosine.
- ``smollm2``: SmolLM2-135M (``smollm2_kv_legacy.onnx``), starting from graphopt's
  default float result (``--float``). The approximate passes run directly (no
  verification: it would cost several runs of a 622 MB model per variant) on the first
  ``--calibration-rows`` rows of ``calibration_text.npz``; accuracy is top-1 agreement
  with the original's argmax (and perplexity) over ``--eval-rows`` rows of
  ``heldout_text.npz`` (teacher-forced prefill of 128 tokens). The factorization's speed
  check times the layers at 1 row (one decoded token).

Variants: ``--lowrank R`` for each ratio as plain SVD without data, plain SVD + repair,
activation-aware (whitened) without repair, activation-aware + repair; and FFN pruning
(activation importance + repair, graphopt's best pruning setting on both models) at
the ratio that removes as many parameters as the activation-aware + repair
factorization did. Latency: ``graphopt compare`` of each variant against graphopt's
float result (interleaved, ORT_ENABLE_ALL, ``--threads``), and of that float result
against the original once; MiniLM at batch 1 × sequence 128, SmolLM2 one decode step
after 127 cached tokens. Every timing (the pass's own speed check included) runs under
``flock /tmp/graphopt_timing.lock``. One JSON line per variant. Usage::

    python benchmarks/lowrank_benchmark.py minilm --model MiniLM.onnx --calibration CAL.npz --eval EVAL.npz \
        --out DIR [--ratios 0.25,0.5] [--threads 2] [--time-budget 10]
    python benchmarks/lowrank_benchmark.py smollm2 --float FLOAT.onnx --out DIR [--ratios 0.25] \
        [--calibration-rows 4] [--eval-rows 8]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimizer.accuracy import output_drift  # noqa: E402
from optimizer.api import optimize_with_report  # noqa: E402
from optimizer.parameters import count_parameters  # noqa: E402
from optimizer.samples import split_samples  # noqa: E402
from passes.factorization._timing import MeasuredSpeed  # noqa: E402
from passes.factorization.lowrank import LowRankFactorizationPass  # noqa: E402
from passes.pruning.ffn import FfnPruningPass  # noqa: E402

LOCK = "/tmp/graphopt_timing.lock"
# (name, importance, repair, with data)
SETTINGS = (
    ("plain SVD, no data", "magnitude", False, False),
    ("plain SVD + repair", "magnitude", True, True),
    ("activation-aware", "activation", False, True),
    ("activation-aware + repair", "activation", True, True),
)


def _chosen(names: list[str] | None) -> list[tuple]:
    """The factorization settings named (in the order given), or all of them."""
    by_name = {setting[0]: setting for setting in SETTINGS}
    return [by_name[name] for name in names] if names else list(SETTINGS)


@contextlib.contextmanager
def timing_lock() -> Iterator[None]:
    """The machine-wide timing lock (the one ``flock /tmp/graphopt_timing.lock`` takes)."""
    with open(LOCK, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def compare(before: Path, after: Path, out: Path, args: argparse.Namespace, dims: dict[str, int]) -> list[float]:
    """``graphopt compare`` (the caller holds the timing lock): the after/before latency ratio and its 95 % interval."""
    command = [sys.executable, "-m", "optimizer.cli", "compare", str(before), str(after), "--json", str(out)]
    command += ["--time-budget", str(args.time_budget), "--threads", str(args.threads), "--warmup", "5"]
    for name, size in dims.items():
        command += ["--dim", f"{name}={size}"]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    ratio = json.loads(out.read_text())["providers"][0]["batches"][0]["ratio"]
    return [round(ratio["ratio"], 3), round(ratio["low"], 3), round(ratio["high"], 3)]


def warm_speed_cache(model: ir.Model, ratios: list[float], dims: dict[str, int], threads: int) -> None:
    """Time the factorized shapes once under the lock (the pass's own candidate search and speed notes, without
    any decomposition), so the variants only read the cache; without the lock when all is cached already."""

    def cached(*shape: int) -> float:
        raise LookupError(shape)

    def visit(measure) -> None:
        for ratio in ratios:
            speed = MeasuredSpeed(threads=threads, measure=measure)
            factorize = LowRankFactorizationPass(ratio, dims=dims, speed=speed)
            for group in factorize._candidates(model.graph):
                k, n = group.shape
                for rows in group.rows:
                    factorize.speed.ratio(k, n, group.floor, rows)

    try:
        visit(cached)
    except LookupError:
        with timing_lock():
            visit(None)


def time_all(rows: list[dict], timings: list[tuple], args: argparse.Namespace) -> None:
    """Every comparison in one hold of the timing lock, then one JSON line per variant."""
    with timing_lock():
        for row, (key, before, after, out, dims) in zip(rows, timings):
            if after is not None:
                row[key] = compare(before, after, out, args, dims)
    for row in rows:
        print(json.dumps(row), flush=True)


# -- MiniLM ---------------------------------------------------------------------------------------------


def minilm_accuracy(original: Path, variant: Path, evaluation: dict) -> dict[str, float]:
    import onnxruntime as ort

    runs = []
    for path in (original, variant):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        wanted = [meta.name for meta in session.get_inputs()]
        names = [meta.name for meta in session.get_outputs()]
        runs.append(
            [dict(zip(names, session.run(None, {n: b[n] for n in wanted}))) for b in split_samples(evaluation, 16)]
        )
    hidden, pooled = "onnx::Shape_422", "461"
    worst = 1.0
    for before, after in zip(*runs):
        e, a = before[pooled].astype(np.float64), after[pooled].astype(np.float64)
        cosines = (e * a).sum(-1) / (np.linalg.norm(e, axis=-1) * np.linalg.norm(a, axis=-1))
        worst = min(worst, float(cosines.min()))
    return {
        "hidden_cosine": round(
            output_drift([{hidden: r[hidden]} for r in runs[0]], [{hidden: r[hidden]} for r in runs[1]]).cosine, 4
        ),
        "pooled_cosine": round(
            output_drift([{pooled: r[pooled]} for r in runs[0]], [{pooled: r[pooled]} for r in runs[1]]).cosine, 4
        ),
        "pooled_worst": round(worst, 4),
    }


def run_minilm(args: argparse.Namespace) -> None:
    dims = {"batch_size": 1, "sequence_length": 128}
    calibration = dict(np.load(args.calibration))
    evaluation = dict(np.load(args.eval))
    original = ir.load(args.model)
    float_path = args.out / "float.onnx"
    fused, _ = optimize_with_report(original, dims=dims)
    ir.save(fused, float_path)
    base = count_parameters(fused)
    row = {"model": "minilm", "variant": "graphopt float", "parameters": base}
    rows, timings = [row], [("latency_vs_original", Path(args.model), float_path, args.out / "float.json", dims)]
    warm_speed_cache(fused, args.ratios, dims, args.threads)
    for ratio in args.ratios:
        removed = None
        for name, importance, repair, with_data in _chosen(args.settings):
            path = args.out / f"lowrank_{ratio}_{importance}_{repair}.onnx"
            started = time.time()
            model, report = optimize_with_report(
                original,
                verify=not args.no_verify,
                dims=dims,
                lowrank=ratio,
                importance=importance,
                repair=repair if with_data else None,
                calibration=calibration if with_data else None,
                threads=args.threads,
            )
            ir.save(model, path)
            record = next(r for r in report.passes if r.name == "factorize-lowrank")
            row = _row("minilm", f"lowrank {ratio} {name}", record, model, base, started)
            applied = record.status == "applied"
            if applied:
                row.update(minilm_accuracy(Path(args.model), path, evaluation))
                if importance == "activation" and repair:
                    removed = base - row["parameters"]
            rows.append(row)
            timings.append(("latency", float_path, path if applied else None, args.out / f"{path.stem}.json", dims))
            print(json.dumps(row), file=sys.stderr, flush=True)
        if removed is None or args.no_pruning:
            continue
        # FFN weights: up and down projections, 2 x 384 x 1536 per layer (+ the up bias), 3 layers.
        ffn = sum(
            np.prod(v.const_value.shape.numpy())
            for v in fused.graph.initializers.values()
            if v.const_value is not None and sorted(v.const_value.shape.numpy()) == [384, 1536]
        )
        prune = round(min(0.95, removed / ffn), 3)
        path = args.out / f"prune_ffn_{prune}.onnx"
        started = time.time()
        model, report = optimize_with_report(original, dims=dims, prune_ffn=prune, calibration=calibration)
        ir.save(model, path)
        record = next(r for r in report.passes if r.name == "prune-ffn")
        row = _row("minilm", f"prune-ffn {prune} (as many parameters as lowrank {ratio})", record, model, base, started)
        applied = record.status == "applied"
        if applied:
            row.update(minilm_accuracy(Path(args.model), path, evaluation))
        rows.append(row)
        timings.append(("latency", float_path, path if applied else None, args.out / f"{path.stem}.json", dims))
        print(json.dumps(row), file=sys.stderr, flush=True)
    time_all(rows, timings, args)


def _row(model_name: str, variant: str, record, model: ir.Model, base: int, started: float) -> dict:
    row = {"model": model_name, "variant": variant, "status": record.status, "parameters": count_parameters(model)}
    row["kept"] = round(row["parameters"] / base, 3)
    row["seconds"] = round(time.time() - started)
    if record.status != "applied":
        row["detail"] = record.detail
    return row


# -- SmolLM2 --------------------------------------------------------------------------------------------


def run_smollm2(args: argparse.Namespace) -> None:
    from int8_decoder_diagnosis import logits_of, scores, session
    from int8_decoder_variants import prefill_inputs

    dims = {"batch": 1, "sequence": 1, "past_sequence": 127, "total_sequence": 128}
    calibration = prefill_inputs(args.models_dir / "calibration_text.npz", args.calibration_rows)
    held = np.load(args.models_dir / "heldout_text.npz")
    ids, mask = held["input_ids"][: args.eval_rows], held["attention_mask"][: args.eval_rows]
    original_path = args.models_dir / "smollm2_kv_legacy.onnx"
    reference = logits_of(session(str(original_path), args.threads), ids, mask)
    base = count_parameters(ir.load(args.float))
    row = {"model": "smollm2", "variant": "graphopt float", "parameters": base}
    top1, perplexity = scores(reference, logits_of(session(str(args.float), args.threads), ids, mask), ids)
    row.update(
        top1=round(top1, 4), ppl=round(perplexity, 3), reference_ppl=round(scores(reference, reference, ids)[1], 3)
    )
    rows, timings = [row], [("latency_vs_original", original_path, args.float, args.out / "float.json", dims)]
    print(json.dumps(row), file=sys.stderr, flush=True)
    warm_speed_cache(ir.load(args.float), args.ratios, {"batch": 1, "sequence": 1}, args.threads)

    def measure(name: str, make, path: Path) -> dict:
        started = time.time()
        applied = make(ir.load(args.float))
        ir.save(applied.model, path)
        row = {"model": "smollm2", "variant": name, "parameters": count_parameters(applied.model)}
        row["kept"] = round(row["parameters"] / base, 3)
        row["seconds"] = round(time.time() - started)
        row["notes"] = [note for note in applied.notes if not note.startswith("rank ")]
        del applied
        top1, perplexity = scores(reference, logits_of(session(str(path), args.threads), ids, mask), ids)
        row.update(top1=round(top1, 4), ppl=round(perplexity, 3))
        rows.append(row)
        timings.append(("latency", args.float, path, args.out / f"{path.stem}.json", dims))
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    if args.only_pruning is not None:  # a second process, beside one running the factorizations
        pruning = FfnPruningPass(args.only_pruning, samples=calibration)
        path = args.out / f"prune_ffn_{args.only_pruning}.onnx"
        measure(f"prune-ffn {args.only_pruning}", pruning, path)
        time_all(rows, timings, args)
        path.unlink()  # 650 MB
        return
    for ratio in args.ratios:
        removed = None
        for name, importance, repair, with_data in _chosen(args.settings):
            factorize = LowRankFactorizationPass(
                ratio,
                importance=importance,
                repair=repair,
                samples=calibration if with_data else None,
                dims={"batch": 1, "sequence": 1},
                threads=args.threads,  # its ranks timed at the threads the comparison runs at
            )
            path = args.out / f"lowrank_{ratio}_{importance}_{repair}.onnx"
            row = measure(f"lowrank {ratio} {name}", factorize, path)
            if importance == "activation" and repair:
                removed = base - row["parameters"]
        if removed is None or args.no_pruning:
            continue
        # FFN weights: gate, up and down projections, 3 x 576 x 1536 per layer, 30 layers.
        prune = round(min(0.95, removed / (30 * 3 * 576 * 1536)), 3)
        pruning = FfnPruningPass(prune, samples=calibration)
        path = args.out / f"prune_ffn_{prune}.onnx"
        measure(f"prune-ffn {prune} (as many parameters as lowrank {ratio})", pruning, path)
    time_all(rows, timings, args)
    for _, _, path, _, _ in timings[1:]:
        path.unlink()  # 650 MB each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("minilm", "smollm2"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ratios", default="0.25,0.5", type=lambda text: [float(r) for r in text.split(",")])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-budget", type=float, default=10)
    parser.add_argument("--model", help="minilm: the original model")
    parser.add_argument("--calibration", help="minilm: calibration sentences (.npz)")
    parser.add_argument("--eval", help="minilm: held-out sentences (.npz)")
    parser.add_argument("--float", type=Path, help="smollm2: graphopt's default float result")
    parser.add_argument("--models-dir", type=Path, default=Path("/work/models/smollm2"))
    parser.add_argument("--calibration-rows", type=int, default=4)
    parser.add_argument("--eval-rows", type=int, default=8)
    parser.add_argument("--settings", nargs="*", help="only these factorization settings (by name)")
    parser.add_argument("--no-pruning", action="store_true", help="skip the pruning comparison")
    parser.add_argument("--only-pruning", type=float, metavar="R", help="smollm2: only FFN pruning at this ratio")
    parser.add_argument("--no-verify", action="store_true", help="minilm: measure variants verification rolls back")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (run_minilm if args.which == "minilm" else run_smollm2)(args)


if __name__ == "__main__":
    main()

"""ONNX's own Attention (opset 23) against graphopt's GroupQueryAttention on a cached decoder's steps.

torch's dynamo exporter writes ``scaled_dot_product_attention`` as one ONNX ``Attention``
node from opset 23 on. This exports one Llama-style decoder (SmolLM2-135M's widths: hidden
576, 9 query / 3 key-value heads, MLP 1536, vocabulary 49152; ``--layers`` layers, random
weights) with a key/value cache at opset 20 and at opset 23 (``tests/fixtures/export_fixtures.py``'s
exporter), runs ``graphopt optimize`` on each (``--before REV``: a checkout of an older
graphopt for the opset-23 file too), and times one step of each file interleaved, batch 1,
ORT_ENABLE_ALL: decode steps of one token after ``--pasts`` cached tokens, and a prefill of
``--prefill`` tokens. Printed: each file's median milliseconds and its speed over the
opset-23 export's (the original), with a 95 % bootstrap interval of the ratio of medians.

``--torch-optimize`` exports opset 23 with ``optimize=True``: onnxscript's optimizer then also writes ONNX's own
``RotaryEmbedding`` and ``RMSNormalization``, and that file is the original.

    python benchmarks/onnx_attention_opset23.py --out /tmp/attn23 [--layers 12] [--threads 1 2] [--before /tmp/old]
        [--torch-optimize]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = {"hidden": 576, "heads": 9, "kv_heads": 3, "intermediate": 1536}
VOCAB = 49152


def export(out: Path, layers: int, opset: int, *, torch_optimize: bool = False) -> Path:
    """The decoder exported by the dynamo exporter at ``opset``, through onnxscript's optimizer where
    ``torch_optimize`` (cached: an existing file is kept)."""
    path = out / f"llama_opset{opset}{'_optimized' if torch_optimize else ''}.onnx"
    if path.exists():
        return path
    sys.path.insert(0, str(ROOT))
    import tests.fixtures.export_fixtures as fixtures

    fixtures.SIZE.update(WIDTHS, layers=layers)
    fixtures.KV_VOCAB_SIZE = VOCAB
    fixtures.MAX_POSITIONS = 2048
    fixture = fixtures.KVFixtureModel("llama_kv", fixtures.build_llama_kv, kv_heads=WIDTHS["kv_heads"])
    fixtures.export_kv_dynamo(fixture.build(), fixture, path, opset=opset, optimize=torch_optimize)
    return path


def optimize(source: Path, output: Path, checkout: Path) -> Path:
    """``graphopt optimize source -o output`` with the graphopt at ``checkout`` (cached)."""
    if not output.exists():
        command = [sys.executable, "-m", "optimizer.cli", "optimize", str(source), "-o", str(output), "-q"]
        subprocess.run(command, check=True, cwd=output.parent, env={**os.environ, "PYTHONPATH": str(checkout)})
    return output


def feed(session: ort.InferenceSession, past: int, new: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One step's feed: ``new`` tokens after ``past`` cached ones, nothing padded."""
    values = {}
    for spec in session.get_inputs():
        if spec.name == "input_ids":
            values[spec.name] = rng.integers(0, VOCAB, (1, new), dtype=np.int64)
        elif spec.name == "attention_mask":
            values[spec.name] = np.ones((1, past + new), np.int64)
        elif spec.name == "position_ids":
            values[spec.name] = np.arange(past, past + new, dtype=np.int64)[None]
        else:
            head = WIDTHS["hidden"] // WIDTHS["heads"]
            values[spec.name] = rng.standard_normal((1, WIDTHS["kv_heads"], past, head), dtype=np.float32)
    return values


def interleaved(files: dict[str, Path], threads: int, past: int, new: int, rounds: int) -> dict[str, np.ndarray]:
    """Seconds per run of each file, the files run in turn ``rounds`` times after 5 warm-up rounds."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {
        name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for name, path in files.items()
    }
    rng = np.random.default_rng(0)
    feeds = {name: feed(session, past, new, rng) for name, session in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in files}
    for round_ in range(rounds + 5):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[name])
            if round_ >= 5:
                times[name].append(time.perf_counter() - start)
    return {name: np.asarray(values) for name, values in times.items()}


def speed_interval(base: np.ndarray, other: np.ndarray, draws: int = 2000) -> tuple[float, float, float]:
    """``median(base) / median(other)`` and its 95 % bootstrap interval (rounds resampled in pairs)."""
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(base), (draws, len(base)))
    ratios = np.median(base[picks], axis=1) / np.median(other[picks], axis=1)
    return float(np.median(base) / np.median(other)), *np.percentile(ratios, [2.5, 97.5]).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pasts", type=int, nargs="+", default=[127, 511])
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--before", type=Path, help="a checkout of an older graphopt, run on the opset-23 file too")
    parser.add_argument(
        "--torch-optimize",
        action="store_true",
        help="export opset 23 with optimize=True (attention, rotary and RMS norms as ONNX's own ops)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    opset20 = export(args.out, args.layers, 20)
    opset23 = export(args.out, args.layers, 23, torch_optimize=args.torch_optimize)
    suffix = "_optimized" if args.torch_optimize else ""
    files = {"opset 23 (original)": opset23}
    if args.before is not None:
        files["opset 23, graphopt --before"] = optimize(opset23, args.out / f"before_opset23{suffix}.onnx", args.before)
    files["opset 23, graphopt"] = optimize(opset23, args.out / f"graphopt_opset23{suffix}.onnx", ROOT)
    files["opset 20, graphopt"] = optimize(opset20, args.out / "graphopt_opset20.onnx", ROOT)
    steps = [(f"decode after {past}", past, 1, args.rounds) for past in args.pasts]
    steps.append((f"prefill of {args.prefill}", 0, args.prefill, max(args.rounds // 5, 40)))
    for threads in args.threads:
        for label, past, new, rounds in steps:
            times = interleaved(files, threads, past, new, rounds)
            base = times["opset 23 (original)"]
            print(f"\n{threads} thread{'s' if threads > 1 else ''}, {label} ({rounds} interleaved rounds)")
            for name, values in times.items():
                ratio, low, high = speed_interval(base, values)
                print(f"  {name:30s} {np.median(values) * 1e3:8.2f} ms   speed {ratio:.3f}x ({low:.3f}-{high:.3f})")


if __name__ == "__main__":
    main()

"""Fusion benchmark: graphopt's default pipeline against the two reference fusers.

For each model file it writes, next to it:

* ``<name>.graphopt.onnx``: ``graphopt optimize`` (default cpu pipeline);
* ``<name>.ortopt.onnx``: ``python -m onnxruntime.transformers.optimizer`` with the
  model type of the family (bert, gpt2, vit; Llama has no ORT model type and gets
  ``gpt2``, the closest decoder) and ``--opt_level 0`` so only its fusions run;
* ``<name>.onnxscript.onnx``: onnxscript's ``optimize_for_ort``;

then prints the fused operator counts of each and runs ``graphopt compare``
(interleaved, ORT_ENABLE_ALL for both sides) of graphopt against the original and
against each reference. Usage::

    python tests/fixtures/export_fixtures.py --size bench --out /tmp/bench
    python benchmarks/fusion_benchmark.py /tmp/bench/*_legacy.onnx /tmp/bench/*_dynamo.onnx \
        [--time-budget 30] [--threads 1] [--ep cpu|cuda]
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path

import onnx
from graphopt_compare import add_timing_flags, compare_ratio

FUSED = {
    "attention": ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention"),
    "layer_norm": (
        "LayerNormalization",
        "SkipLayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "EmbedLayerNormalization",
    ),
    "gelu": ("Gelu", "FastGelu", "BiasGelu", "QuickGelu"),
    "rotary": ("RotaryEmbedding",),
}
ORT_MODEL_TYPES = {"bert": "bert", "distilbert": "bert", "gpt2": "gpt2", "llama": "gpt2", "vit": "vit"}
ORT_SHAPES = {"bench": (4, 256)}


def fused_counts(path: Path) -> dict[str, int]:
    """Fused operator counts by family (plus the total node count) of one model file."""
    ops = collections.Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)
    counts = {family: sum(ops[op] for op in names) for family, names in FUSED.items()}
    counts["nodes"] = sum(ops.values())
    return counts


class CommandFailed(Exception):
    """A tool in the benchmark exited non-zero; the message is its last stderr line."""


def run(command: list[str]) -> str:
    """Run a command and return its stdout; raise CommandFailed with its last stderr line."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        lines = result.stderr.strip().splitlines() or ["(no message)"]
        raise CommandFailed(lines[-1][:300])
    return result.stdout


def make_variants(model: Path, heads: int, hidden: int) -> dict[str, Path]:
    """Write the graphopt, ORT-optimizer and onnxscript versions of ``model``; return all paths."""
    family = model.stem.split("_")[0]
    paths = {"original": model}
    paths["graphopt"] = model.with_suffix(".graphopt.onnx")
    run([sys.executable, "-m", "optimizer.cli", "optimize", str(model), "-o", str(paths["graphopt"])])
    paths["ort"] = model.with_suffix(".ortopt.onnx")
    run(
        [
            sys.executable,
            "-m",
            "onnxruntime.transformers.optimizer",
            "--input",
            str(model),
            "--output",
            str(paths["ort"]),
            "--model_type",
            ORT_MODEL_TYPES[family],
            "--num_heads",
            str(heads),
            "--hidden_size",
            str(hidden),
            "--opt_level",
            "0",
        ]
    )
    paths["onnxscript"] = model.with_suffix(".onnxscript.onnx")
    code = (
        "import sys, onnx_ir as ir; from onnxscript.rewriter.ort_fusions import optimize_for_ort;"
        "m = ir.load(sys.argv[1]); optimize_for_ort(m); ir.save(m, sys.argv[2])"
    )
    run([sys.executable, "-c", code, str(model), str(paths["onnxscript"])])
    return paths


def compare(before: Path, after: Path, args: argparse.Namespace) -> dict:
    """The latency ratio graphopt's model / ``before`` with its 95 % interval."""
    try:
        ratio, low, high = compare_ratio(before, after, before.parent / f"{after.stem}.vs.{before.stem}.json", args)
    except subprocess.CalledProcessError as failure:
        lines = failure.stderr.strip().splitlines() or ["(no message)"]
        raise CommandFailed(lines[-1][:300]) from failure
    return {"ratio": ratio, "ci": [low, high]}


def main() -> None:
    """Benchmark every model given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    add_timing_flags(parser)
    args = parser.parse_args()
    for model in args.models:
        paths = make_variants(model, args.heads, args.hidden)
        counts = {name: fused_counts(path) for name, path in paths.items()}
        ratios = {}
        for ref in ("original", "ort", "onnxscript"):
            try:
                ratios[ref] = compare(paths[ref], paths["graphopt"], args)
            except CommandFailed as failure:
                ratios[ref] = {"error": str(failure)}
        print(json.dumps({"model": model.stem, "counts": counts, "graphopt_over": ratios}), flush=True)


if __name__ == "__main__":
    main()

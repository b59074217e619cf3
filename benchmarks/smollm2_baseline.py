"""Baseline numbers on the real SmolLM2-135M KV-cache export: onnxslim and onnxruntime's quantizers.

Reads what ``benchmarks/export_smollm2.py`` wrote to ``--models-dir`` (default
``/work/models/smollm2``): ``--model`` (default ``smollm2_kv_legacy.onnx``) and
``heldout_text.npz``. Builds, in ``--models-dir/variants`` (reused when present, unless
``--rebuild``):

* ``slim``: ``onnxslim MODEL OUT`` (onnxslim from PyPI, default settings);
* ``int4``: ``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`` with
  ``RTNWeightOnlyQuantConfig()`` (round to nearest), ``bits=4, block_size=32,
  is_symmetric=False, accuracy_level=4`` (MatMul weights with an initializer ->
  ``MatMulNBits``);
* ``int4_default`` (only on request): the same quantizer's ``DEFAULT`` algorithm (ORT's C++ block
  quantizer, min/max per block of 32, asymmetric, accuracy_level 4), a cross-check of ``int4``;
* ``int8``: ``onnxruntime.quantization.quantize_dynamic(per_channel=True, reduce_range=True)``
  (otherwise defaults: QInt8 weights, every supported op type).

Each variant is built from the original model (with ``--quantize-slim``: the quantized ones
from the slim graph, reported as ``slim+int4`` ...; the dynamo export needs it, since its
MatMul weights pass through run-time ``Transpose`` nodes that the quantizers skip).
``--extra NAME=PATH`` adds other models with the same inputs (e.g. the other exporter's
file) to every measurement. Then, for the
original and every variant:

* file size, node count, the op-type counts of ``REPORT_OPS`` and the full histogram;
* latency, interleaved: sessions with ``intra_op_num_threads=--threads`` (2),
  ``inter_op_num_threads=1``, ``ORT_ENABLE_ALL``, CPU provider; ``--warmup`` runs each, then
  ``--iterations`` rounds in which every model runs once, the order rotating each round.
  Two feeds: ``decode`` (batch 1, past 127, sequence 1: the past is the original model's
  presents after the first 127 tokens of held-out row 0; the new token is token 127) and
  ``prefill`` (batch 1, sequence 128, past 0: held-out row 1). Reported: median ms, and the
  ratio to the original as median(variant) / median(original) and as the median of the
  per-round ratios;
* teacher-forced accuracy on all of ``heldout_text.npz`` (32 x 128 tokens, prefill in
  batches of 4): top-1 agreement of each position's argmax with the original model's
  (32 x 128 positions), max |logit diff| vs the original, and next-token top-1 accuracy and
  perplexity over the 32 x 127 predicted positions.

Usage::

    python benchmarks/smollm2_baseline.py [--model smollm2_kv_legacy.onnx] [--variants slim int4 int8] \
        [--iterations 30] [--warmup 5] [--threads 2] [--json results.json]

The machine's CPUs may be shared: the load average before and after is printed; only the
interleaved ratios, not absolute times, are comparable across runs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

DEFAULT_DIR = Path("/work/models/smollm2")
REPORT_OPS = ("Softmax", "Neg", "Shape", "Concat", "MatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeLinear")
VARIANTS = ("slim", "int4", "int8")  # the default set; "int4_default" on request
DECODE_PAST = 127
PREFILL = 128
EVAL_BATCH = 4


# ---------------------------------------------------------------- variants


def build_slim(source: Path, target: Path) -> list[str]:
    """onnxslim with its default settings, via its command line."""
    onnxslim = shutil.which("onnxslim", path=str(Path(sys.executable).parent)) or "onnxslim"
    command = [onnxslim, str(source), str(target)]
    subprocess.run(command, check=True)
    return command


def build_int4(source: Path, target: Path) -> list[str]:
    """MatMulNBits int4: RTN, block 32, asymmetric, accuracy_level 4."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer, RTNWeightOnlyQuantConfig

    quantizer = MatMulNBitsQuantizer(
        str(source),
        bits=4,
        block_size=32,
        is_symmetric=False,
        accuracy_level=4,
        algo_config=RTNWeightOnlyQuantConfig(),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), False)
    return [
        "MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=False, accuracy_level=4, "
        "algo_config=RTNWeightOnlyQuantConfig()).process()"
    ]


def build_int4_default(source: Path, target: Path) -> list[str]:
    """MatMulNBits int4 with ORT's own (C++) block quantizer, DEFAULT algorithm: block 32, asymmetric, level 4."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(source)), bits=4, block_size=32, is_symmetric=False, accuracy_level=4
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), False)
    return ["MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=False, accuracy_level=4).process()"]


def build_int8(source: Path, target: Path) -> list[str]:
    """Dynamic int8: per channel, reduced range."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=True, reduce_range=True)
    return ["quantize_dynamic(model, out, per_channel=True, reduce_range=True)"]


BUILDERS = {"slim": build_slim, "int4": build_int4, "int8": build_int8, "int4_default": build_int4_default}


def variant_path(models_dir: Path, model: Path, name: str) -> Path:
    return models_dir / "variants" / f"{model.stem}_{name}.onnx"


# ---------------------------------------------------------------- measurements


def graph_stats(path: Path) -> dict:
    """Bytes (with any external data next to it), node count and op histogram."""
    model = onnx.load(str(path), load_external_data=False)
    histogram = collections.Counter(node.op_type for node in model.graph.node)
    data = [
        path.parent / entry.value
        for t in model.graph.initializer
        for entry in t.external_data
        if entry.key == "location"
    ]
    size = path.stat().st_size + sum(p.stat().st_size for p in set(data))
    return {
        "bytes": size,
        "nodes": len(model.graph.node),
        "ops": {op: histogram[op] for op in REPORT_OPS},
        "histogram": dict(histogram.most_common()),
    }


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Interleaved sessions: an idle one's spinning threads would slow the next (optimizer.runtime.TIMING_CONFIG).
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def layer_count(sess: ort.InferenceSession) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) from the past inputs."""
    pasts = [value for value in sess.get_inputs() if value.name.startswith("past_key_values.")]
    return len(pasts) // 2, pasts[0].shape[1], pasts[0].shape[3]


def feed(sess: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray] | None) -> dict:
    """One step's feed (positions count unmasked tokens, as in export_smollm2.py)."""
    layers, kv_heads, head_dim = layer_count(sess)
    batch, sequence = ids.shape
    if past is None:
        past = [np.zeros((batch, kv_heads, 0, head_dim), dtype=np.float32)] * (2 * layers)
    positions = np.cumsum(mask, axis=1) - 1
    positions = np.where(mask == 0, 1, positions)[:, -sequence:].astype(np.int64)
    names = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **dict(zip(names, past, strict=True))}


def timing_feeds(original: ort.InferenceSession, text: np.ndarray) -> dict[str, dict]:
    """The decode (batch 1, past 127, sequence 1) and prefill (batch 1, sequence 128) feeds."""
    row = text[:1]
    prompt = row[:, :DECODE_PAST]
    outputs = original.run(None, feed(original, prompt, np.ones_like(prompt), None))
    decode = feed(original, row[:, DECODE_PAST : DECODE_PAST + 1], np.ones((1, DECODE_PAST + 1), np.int64), outputs[1:])
    prefill_ids = text[1:2, :PREFILL]
    return {"decode": decode, "prefill": feed(original, prefill_ids, np.ones_like(prefill_ids), None)}


def interleaved(sessions: dict[str, ort.InferenceSession], inputs: dict, iterations: int, warmup: int) -> dict:
    """Median ms of each session over ``iterations`` rotating rounds, after ``warmup`` runs each."""
    names = list(sessions)
    for name in names:
        for _ in range(warmup):
            sessions[name].run(None, inputs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(iterations):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            sessions[name].run(None, inputs)
            times[name].append((time.perf_counter() - start) * 1e3)
    base = times[names[0]]
    result = {}
    for name in names:
        result[name] = {
            "median_ms": statistics.median(times[name]),
            "min_ms": min(times[name]),
            "ratio_of_medians": statistics.median(times[name]) / statistics.median(base),
            "median_round_ratio": statistics.median(t / b for t, b in zip(times[name], base, strict=True)),
        }
    return result


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def accuracy(sessions: dict[str, ort.InferenceSession], text: np.ndarray, mask: np.ndarray) -> dict:
    """Teacher-forced agreement with the first (original) session, next-token accuracy and perplexity."""
    names = list(sessions)
    argmax = {name: [] for name in names}
    max_diff = dict.fromkeys(names, 0.0)
    correct = dict.fromkeys(names, 0)
    nll = dict.fromkeys(names, 0.0)
    count = 0
    for start in range(0, len(text), EVAL_BATCH):
        ids, rows_mask = text[start : start + EVAL_BATCH], mask[start : start + EVAL_BATCH]
        reference = None
        targets = ids[:, 1:]
        count += targets.size
        for name in names:
            logits = sessions[name].run(["logits"], feed(sessions[name], ids, rows_mask, None))[0]
            if reference is None:
                reference = logits
            max_diff[name] = max(max_diff[name], float(np.abs(logits - reference).max()))
            argmax[name].append(logits.argmax(-1))
            predicted = logits[:, :-1]
            correct[name] += int((predicted.argmax(-1) == targets).sum())
            picked = np.take_along_axis(log_softmax(predicted.astype(np.float64)), targets[..., None], axis=-1)
            nll[name] -= float(picked.sum())
    base = np.concatenate(argmax[names[0]])
    return {
        name: {
            "top1_agreement": float((np.concatenate(argmax[name]) == base).mean()),
            "max_abs_logit_diff": max_diff[name],
            "next_token_accuracy": correct[name] / count,
            "perplexity": float(np.exp(nll[name] / count)),
        }
        for name in names
    }


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--model", default="smollm2_kv_legacy.onnx", help="file name in --models-dir")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(BUILDERS))
    parser.add_argument("--rebuild", action="store_true", help="rebuild variants that already exist")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--feeds", nargs="*", default=["decode", "prefill"], choices=["decode", "prefill"])
    parser.add_argument(
        "--quantize-slim", action="store_true", help="build int4/int8 from the slim graph (named slim+int4 ...)"
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more models to measure alongside, as NAME=PATH")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model = args.models_dir / args.model
    (args.models_dir / "variants").mkdir(exist_ok=True)
    paths = {"original": model}
    commands = {}
    for name in args.variants:
        # Quantizers start from the original, or from the slim graph with --quantize-slim.
        source_name = "slim" if args.quantize_slim and name != "slim" else "original"
        if source_name == "slim" and "slim" not in paths:
            raise SystemExit("--quantize-slim needs the slim variant listed first in --variants")
        label = name if source_name == "original" else f"slim+{name}"
        target = variant_path(args.models_dir, model, label.replace("+", "_"))
        if args.rebuild or not target.exists():
            start = time.perf_counter()
            commands[label] = BUILDERS[name](paths[source_name], target)
            print(f"built {label}: {target} in {time.perf_counter() - start:.0f}s")
        else:
            commands[label] = ["(reused existing file)"]
        paths[label] = target
    for extra in args.extra:
        name, _, path = extra.partition("=")
        paths[name] = Path(path)

    results: dict = {"model": str(model), "threads": args.threads, "iterations": args.iterations, "commands": commands}
    results["stats"] = {name: graph_stats(path) for name, path in paths.items()}
    for name, stats in results["stats"].items():
        ops = ", ".join(f"{op} {count}" for op, count in stats["ops"].items() if count)
        print(f"{name:12s} {stats['bytes'] / 1e6:8.1f} MB  nodes {stats['nodes']:5d}  {ops}")

    sessions = {name: session(path, args.threads) for name, path in paths.items()}
    text = np.load(args.models_dir / "heldout_text.npz")
    feeds = timing_feeds(sessions["original"], text["input_ids"])
    results["load_before"] = os.getloadavg()
    results["timing"] = {}
    for label in () if args.no_timing else args.feeds:
        inputs = feeds[label]
        timing = interleaved(sessions, inputs, args.iterations, args.warmup)
        results["timing"][label] = timing
        for name, row in timing.items():
            print(
                f"{label:8s} {name:12s} median {row['median_ms']:8.2f} ms (min {row['min_ms']:.2f})  "
                f"ratio {row['ratio_of_medians']:.3f} (median round ratio {row['median_round_ratio']:.3f})"
            )
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    if not args.no_accuracy:
        results["accuracy"] = accuracy(sessions, text["input_ids"], text["attention_mask"])
        for name, row in results["accuracy"].items():
            print(
                f"accuracy {name:12s} top-1 agreement {row['top1_agreement']:.4f}  max |logit diff| "
                f"{row['max_abs_logit_diff']:.3g}  next-token acc {row['next_token_accuracy']:.4f}  "
                f"ppl {row['perplexity']:.3f}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

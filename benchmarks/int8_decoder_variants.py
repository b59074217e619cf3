"""graphopt's dynamic int8 variants on SmolLM2-135M: top-1 agreement and perplexity on held-out text, twin distance.

Starts from ``--float`` (the original after graphopt's default pipeline: ``graphopt
optimize smollm2_kv_legacy.onnx -o float_opt.onnx``), runs ``DynamicQuantizationPass``
through the API with each variant's options (``activation_scale="row"`` has no CLI flag
yet), calibrating SmoothQuant and the budget on the first ``--calibration-rows`` rows of
``calibration_text.npz`` (past length 0), and writes ``--out/NAME.onnx``. Each result is
scored against the original (ORT_ENABLE_ALL, ``--threads``) on all of ``heldout_text.npz``
(32 x 128 tokens, teacher-forced prefill): top-1 agreement with the original's argmax and
next-token perplexity. ``twin row excess`` is verification's ``int8_row_excess`` on the
logits of two held-out rows (the result at ORT_ENABLE_ALL against its twin as written;
verification accepts up to ``INT8_ROW_EXCESS``). Time the files with
``smollm2_baseline.py --extra NAME=PATH``.

Usage::

    python benchmarks/int8_decoder_variants.py --float float_opt.onnx --out /tmp/int8 [--variants row_w8_smooth ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from int8_decoder_diagnosis import DEFAULT_DIR, logits_of, scores, session  # noqa: E402

from optimizer.accuracy import AccuracyBudget  # noqa: E402
from optimizer.verify import int8_row_excess  # noqa: E402
from passes.quantization.dynamic import DynamicQuantizationPass  # noqa: E402

VARIANTS = {
    "tensor_w7": {},  # what --quantize dynamic does
    "tensor_w7_smooth": {"smooth_alpha": 0.5},
    "row_w7": {"activation_scale": "row"},
    "row_w8": {"activation_scale": "row", "reduce_range": False},
    "row_w7_smooth": {"activation_scale": "row", "smooth_alpha": 0.5},
    "row_w8_smooth03": {"activation_scale": "row", "reduce_range": False, "smooth_alpha": 0.3},
    "row_w8_smooth": {"activation_scale": "row", "reduce_range": False, "smooth_alpha": 0.5},
    "row_w8_smooth07": {"activation_scale": "row", "reduce_range": False, "smooth_alpha": 0.7},
    "row_w8_smooth_head": {
        "activation_scale": "row",
        "reduce_range": False,
        "smooth_alpha": 0.5,
        "quantize_outputs": True,
    },
    "row_w8_smooth_b998": {
        "activation_scale": "row",
        "reduce_range": False,
        "smooth_alpha": 0.5,
        "budget": AccuracyBudget(min_cosine=0.998),
    },
    "row_w8_smooth_b996": {
        "activation_scale": "row",
        "reduce_range": False,
        "smooth_alpha": 0.5,
        "budget": AccuracyBudget(min_cosine=0.996),
    },
    "row_w8_smooth_b997": {
        "activation_scale": "row",
        "reduce_range": False,
        "smooth_alpha": 0.5,
        "budget": AccuracyBudget(min_cosine=0.997),
    },
    # The MLPs only (75 % of the projections' multiply-adds): --exclude '*self_attn*'.
    "row_w8_smooth_mlp": {
        "activation_scale": "row",
        "reduce_range": False,
        "smooth_alpha": 0.5,
        "exclude": ("*self_attn*",),
    },
    "row_w8_smooth_no_o": {
        "activation_scale": "row",
        "reduce_range": False,
        "smooth_alpha": 0.5,
        "exclude": ("*o_proj*",),
    },
    "row_w8_smooth_no_qkv": {
        "activation_scale": "row",
        "reduce_range": False,
        "smooth_alpha": 0.5,
        "exclude": ("*q_proj*", "*k_proj*", "*v_proj*"),
    },
    # The key and value projections float (what the role-scaled budget kept float on the Xeon), queries int8.
    "row_w8_smooth_no_kv": {
        "activation_scale": "row",
        "reduce_range": False,
        "smooth_alpha": 0.5,
        "exclude": ("*k_proj*", "*v_proj*"),
    },
    # On x86 without VNNI 8-bit weights saturate the U8S8 kernels: the same points with 7-bit weights.
    "row_w7_smooth_no_qkv": {
        "activation_scale": "row",
        "smooth_alpha": 0.5,
        "exclude": ("*q_proj*", "*k_proj*", "*v_proj*"),
    },
    "row_w7_smooth_b998": {"activation_scale": "row", "smooth_alpha": 0.5, "budget": AccuracyBudget(min_cosine=0.998)},
    # The same budget timing the layers as a prefill alone (--budget-decode-steps 0), not as a generation.
    "row_w8_smooth_b998_prefill": {
        "activation_scale": "row",
        "reduce_range": False,
        "smooth_alpha": 0.5,
        "budget": AccuracyBudget(min_cosine=0.998),
        "decode_steps": 0,
    },
    "row_w8_smooth_b9985_prefill": {
        "activation_scale": "row",
        "reduce_range": False,
        "smooth_alpha": 0.5,
        "budget": AccuracyBudget(min_cosine=0.9985),
        "decode_steps": 0,
    },
    "row_w8_smooth_b999_prefill": {
        "activation_scale": "row",
        "reduce_range": False,
        "smooth_alpha": 0.5,
        "budget": AccuracyBudget(min_cosine=0.999),
        "decode_steps": 0,
    },
    # What `--quantize dynamic --min-cosine X` does (8-bit weights on a VNNI CPU): the search picks
    # each layer's scheme (per-row scales, SmoothQuant for that layer, weight-only, float).
    "budget_998": {"reduce_range": False, "budget": AccuracyBudget(min_cosine=0.998)},
    "budget_999": {"reduce_range": False, "budget": AccuracyBudget(min_cosine=0.999)},
    "budget_998_w7": {"budget": AccuracyBudget(min_cosine=0.998)},  # the same on a CPU without VNNI
}


def prefill_inputs(path: Path, rows: int | None = None) -> dict[str, np.ndarray]:
    """Text rows as the KV-cache export's inputs: positions 0..S-1, empty caches."""
    text = np.load(path)
    ids, mask = text["input_ids"][:rows], text["attention_mask"][:rows]
    batch, length = ids.shape
    inputs = {"input_ids": ids, "attention_mask": mask}
    inputs["position_ids"] = np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)).copy()
    for layer in range(30):
        for kind in ("key", "value"):
            inputs[f"past_key_values.{layer}.{kind}"] = np.zeros((batch, 3, 0, 64), np.float32)
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--float", type=Path, required=True, help="the original after graphopt's default pipeline")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--calibration-rows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    calibration = prefill_inputs(args.models_dir / "calibration_text.npz", args.calibration_rows)
    held = np.load(args.models_dir / "heldout_text.npz")
    ids, mask = held["input_ids"], held["attention_mask"]
    reference = logits_of(session(str(args.models_dir / "smollm2_kv_legacy.onnx"), args.threads), ids, mask)
    print(f"float perplexity {scores(reference, reference, ids)[1]:.3f}", flush=True)
    for name in args.variants:
        started = time.time()
        quantization = DynamicQuantizationPass(samples=calibration, **VARIANTS[name])
        result = quantization(ir.load(args.float))
        path = args.out / f"{name}.onnx"
        ir.save(result.model, path)
        seconds = time.time() - started
        deployed = session(str(path), args.threads)
        top1, perplexity = scores(reference, logits_of(deployed, ids, mask), ids)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = args.threads
        twin = ort.InferenceSession(
            ir.to_proto(result.twin.model).SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        actual, claimed = logits_of(deployed, ids[:2], mask[:2]), logits_of(twin, ids[:2], mask[:2])
        excess = int8_row_excess({"logits": claimed}, {"logits": actual}, {"logits": reference[:2]}, ["logits"])
        row = {
            "variant": name,
            "top1": round(top1, 4),
            "ppl": round(perplexity, 3),
            "int8_layers": len(quantization.quantized),
            "float_layers": len(quantization.kept_float),
            "twin_max_abs": round(float(np.abs(actual - claimed).max()), 3),
            "twin_row_excess": None if excess is None else round(excess, 2),
            "seconds": round(seconds),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

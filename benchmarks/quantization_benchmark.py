"""Int8 benchmark: graphopt's quantization against onnxruntime.quantization (and onnxsim 0.8's picker).

For one model, with calibration and evaluation inputs (``.npz``, samples along axis 0,
e.g. from ``benchmarks/data_sources/make_quantization_data.py``), it writes into ``--out``:

* ``float.onnx``: graphopt's default (float) pipeline: the fused model every variant starts from;
* ``graphopt-*.onnx``: ``graphopt optimize --quantize dynamic|static`` (per channel, per tensor,
  with an accuracy budget ``--min-cosine``);
* ``ort-*.onnx``: ``onnxruntime.quantization.quantize_dynamic`` (per channel off/on, and per channel
  with ``reduce_range``) and
  ``quantize_static`` (QDQ, per channel, the same calibration data; its defaults, int8
  activations, and after ``quant_pre_process`` with uint8 activations (U8S8), with and without
  ``reduce_range``), run on ``float.onnx``;
* ``onnxsim.onnx``: onnxsim 0.8's ``recommend_quantization`` under a relative-L2 budget of
  ``--onnxsim-budget`` on ``float.onnx``, when ``--onnxsim-path`` points at an install of it.

Then it measures each against the original model: accuracy on the evaluation inputs
(mean per-sample cosine of every float output, worst output; top-1 agreement and,
with ``--labels``, label accuracy of score outputs) and CPU latency with
``graphopt compare`` (interleaved, ORT_ENABLE_ALL on both sides). Usage::

    python benchmarks/quantization_benchmark.py MODEL.onnx --calibration CAL.npz --eval EVAL.npz \
        --out /tmp/qbench/minilm [--scores OUTPUT --labels LABELS.npy] [--budget 0.998] [--compare-flag=--dim ...] \
        [--onnxsim-path /tmp/onnxsim/site] [--time-budget 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from graphopt_compare import add_timing_flags, compare_ratio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optimizer.accuracy import output_drift  # noqa: E402
from optimizer.samples import split_samples  # noqa: E402


def graphopt(model: Path, out: Path, *flags: str) -> Path:
    """Run ``graphopt optimize`` with ``flags``; return the output path."""
    command = [sys.executable, "-m", "optimizer.cli", "optimize", str(model), "-o", str(out), *flags]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    return out


def ort_variants(fused: Path, calibration: dict, out: Path) -> dict[str, Path]:
    """onnxruntime.quantization's dynamic (per channel off/on) and static QDQ models of ``fused``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    paths = {}
    for per_channel in (False, True):
        path = out / f"ort-dynamic{'-per-channel' if per_channel else ''}.onnx"
        quantize_dynamic(str(fused), str(path), weight_type=QuantType.QInt8, per_channel=per_channel)
        paths[path.stem] = path
    # Its best documented setting on x86 CPUs without VNNI: 7-bit weights so the int16 pair sums cannot saturate.
    path = out / "ort-dynamic-per-channel-reduce-range.onnx"
    quantize_dynamic(str(fused), str(path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    paths[path.stem] = path

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(split_samples(calibration, 1))

        def get_next(self):
            return next(self.batches, None)

    path = out / "ort-static-qdq.onnx"
    quantize_static(str(fused), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    paths[path.stem] = path
    # Its recipe for CNNs on x86: quant_pre_process (shape inference, its own fusions) first,
    # and uint8 activations (U8S8: the x86 kernels' fast path; its default, S8S8, left 14 of
    # EfficientNet-Lite0's 49 Convs float behind 30 Transposes); with and without reduce_range,
    # which its docs recommend on x86 CPUs without VNNI.
    prepared = out / "ort-preprocessed.onnx"
    quant_pre_process(str(fused), str(prepared))
    for reduce_range in (False, True):
        path = out / f"ort-static-qdq-u8s8{'-reduce-range' if reduce_range else ''}.onnx"
        settings = {"quant_format": QuantFormat.QDQ, "per_channel": True, "reduce_range": reduce_range}
        settings.update(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        quantize_static(str(prepared), str(path), Reader(), **settings)
        paths[path.stem] = path
    return paths


def onnxsim_variant(fused: Path, calibration: dict, out: Path, site: str, budget: float) -> Path | None:
    """onnxsim 0.8's global scheme picker under ``budget`` (worst relative L2), run in a subprocess."""
    path = out / "onnxsim.onnx"
    script = (
        "import sys, numpy as np, onnx, onnxsim\n"
        "from onnx_ir.passes.common import RemoveUnusedNodesPass\n"
        f"model = onnxsim.simplify(onnx.load({str(fused)!r}))[0]\n"
        f"data = dict(np.load({str(out / 'calibration.npz')!r}))\n"
        "samples = [{k: v[i:i+1] for k, v in data.items()} for i in range(8)]\n"
        f"rec = onnxsim.recommend_quantization(model, accuracy_budget={budget}, calibration_data=samples)\n"
        "import onnx_ir as ir\n"
        "q = ir.from_proto(rec.quantized_model); RemoveUnusedNodesPass()(q)\n"
        f"ir.save(q, {str(path)!r})\n"
        "print(rec.config, rec.meets_budget)\n"
    )
    np.savez(out / "calibration.npz", **calibration)
    env = dict(os.environ, PYTHONPATH=site)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        print(f"onnxsim failed: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    print(f"onnxsim picked: {result.stdout.strip()}", file=sys.stderr)
    return path


def accuracy(original: Path, variant: Path, evaluation: dict, labels: np.ndarray | None, scores: str | None) -> dict:
    """Cosine and top-1 figures of ``variant`` against ``original`` on the evaluation inputs."""
    import onnxruntime as ort

    runs = []
    for path in (original, variant):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        # a model exported for a fixed batch (a CNN at batch 1) is fed that many samples at a time
        fixed = [meta.shape[0] for meta in session.get_inputs() if meta.shape and isinstance(meta.shape[0], int)]
        batches = split_samples(evaluation, min(fixed, default=16))
        names = [meta.name for meta in session.get_outputs()]
        feeds = [{meta.name: batch[meta.name] for meta in session.get_inputs()} for batch in batches]
        runs.append([dict(zip(names, session.run(None, feed))) for feed in feeds])
    drift = output_drift(*runs)
    result = {"cosine": round(drift.cosine, 4), "max_error": round(drift.max_error, 4)}
    if scores:
        name = scores
        before = np.concatenate([run[name] for run in runs[0]]).argmax(-1)
        after = np.concatenate([run[name] for run in runs[1]]).argmax(-1)
        result["top1_agreement"] = round(float(np.mean(before == after)), 4)
        if labels is not None:
            result["label_accuracy"] = round(float(np.mean(after.reshape(-1) == labels.reshape(-1))), 4)
            result["float_label_accuracy"] = round(float(np.mean(before.reshape(-1) == labels.reshape(-1))), 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--calibration", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--labels", type=Path, help="true classes of the evaluation samples (.npy)")
    parser.add_argument("--scores", help="output holding class scores: top-1 agreement (and accuracy with --labels)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=0.998, help="graphopt --min-cosine for the budget variants")
    parser.add_argument("--smooth", help="also pass --smooth ALPHA to graphopt's budget variants")
    parser.add_argument("--onnxsim-path", help="a --target folder holding onnxsim 0.8 (pip install --target)")
    parser.add_argument("--onnxsim-budget", type=float, default=0.05)
    parser.add_argument("--only", help="comma-separated variant names to build and measure")
    parser.add_argument("--compare-flag", action="append", default=[], help="extra `graphopt compare` flag")
    add_timing_flags(parser)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    calibration = dict(np.load(args.calibration))
    evaluation = dict(np.load(args.eval))
    labels = np.load(args.labels) if args.labels else None
    cal = ["--calibration", str(args.calibration)]
    smooth = ["--smooth", args.smooth] if args.smooth else []
    # The budget times its layers at the threads the comparison runs at.
    threads = ["--threads", str(args.threads)] if getattr(args, "threads", None) else []
    fused = graphopt(args.model, args.out / "float.onnx")
    variants = {
        "float": fused,
        "graphopt-dynamic": lambda p: graphopt(args.model, p, "--quantize", "dynamic", *cal),
        "graphopt-dynamic-per-tensor": lambda p: graphopt(args.model, p, "--quantize", "dynamic", "--per-tensor", *cal),
        "graphopt-dynamic-budget": lambda p: graphopt(
            args.model, p, "--quantize", "dynamic", *cal, *smooth, "--min-cosine", str(args.budget), *threads
        ),
        "graphopt-static": lambda p: graphopt(args.model, p, "--quantize", "static", *cal),
        "graphopt-static-budget": lambda p: graphopt(
            args.model, p, "--quantize", "static", *cal, *smooth, "--min-cosine", str(args.budget)
        ),
        # the classifier too (ORT's quantize_static quantizes it): a CNN's last Gemm in int8
        "graphopt-static-outputs": lambda p: graphopt(
            args.model, p, "--quantize", "static", "--quantize-outputs", *cal
        ),
    }
    only = set(args.only.split(",")) if args.only else None
    paths: dict[str, Path] = {}
    for name, make in variants.items():
        if only and name not in only:
            continue
        try:
            paths[name] = make if isinstance(make, Path) else make(args.out / f"{name}.onnx")
        except subprocess.CalledProcessError as failure:
            print(f"{name} failed: {failure.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    if not only or any(name.startswith("ort-") for name in only):
        built = ort_variants(fused, calibration, args.out)
        paths.update({name: path for name, path in built.items() if not only or name in only})
    if args.onnxsim_path and (not only or "onnxsim" in only):
        path = onnxsim_variant(fused, calibration, args.out, args.onnxsim_path, args.onnxsim_budget)
        if path is not None:
            paths["onnxsim"] = path
    for name, path in paths.items():
        row = {"model": args.model.stem, "variant": name, "size_mb": round(path.stat().st_size / 2**20, 2)}
        ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
        row["int8_ops"] = sorted(ops & INT8_OPS)
        try:
            row.update(accuracy(args.model, path, evaluation, labels, args.scores))
        except Exception as error:  # e.g. a reference tool wrote a model ONNX Runtime rejects
            row["error"] = str(error).splitlines()[0][:300]
            print(json.dumps(row), flush=True)
            continue
        try:
            row["latency_ratio"] = compare_ratio(
                args.model, path, args.out / f"{name}.compare.json", args, args.compare_flag
            )
        except subprocess.CalledProcessError as failure:
            row["latency_ratio"] = f"compare failed: {failure.stderr.strip().splitlines()[-1:]}"
        print(json.dumps(row), flush=True)


INT8_OPS = {
    "DynamicQuantizeMatMul",
    "QAttention",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
    "QGemm",
}

if __name__ == "__main__":
    main()

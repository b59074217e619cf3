"""What graphopt's default pipeline (and the opt-in encoder fusions) do to the encoders `export_encoders.py` writes.

For docs/benchmarks.md ("Encoder architectures from transformers"). Needs the exporters' environment (torch,
transformers: it reuses `export_encoders.py`'s input builders) and `graphopt` on the PATH::

    python benchmarks/encoder_sweep.py DIR     # every DIR/ARCH_EXPORTER.onnx; results in DIR/out

For each model and each setting: whether the result was verified, nodes before and after, the fused ops, the
statuses other than applied/unchanged, the fusions' refusals, and the largest difference from the original on
ONNX Runtime (ORT_ENABLE_ALL) at `export_encoders.py`'s two input sizes (padded rows included), checked here
independently of graphopt's own verification.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
import export_encoders  # noqa: E402

FUSED = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "LayerNormalization", "SkipLayerNormalization",
         "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "Gelu", "FastGelu", "BiasGelu",
         "RotaryEmbedding", "EmbedLayerNormalization", "Softmax")  # fmt: skip
SETTINGS = {
    "default": [],
    "+encoder fusions": [
        "--passes",
        "+fuse-layer-norm,+fuse-skip-layer-norm,+fuse-gelu,+fuse-bias-gelu,+fuse-embed-layer-norm",
    ],
}
FUSIONS = ("fuse-attention", "fuse-layer", "fuse-skip", "fuse-gelu", "fuse-bias", "fuse-rotary", "pack")


def _counts(path: Path) -> tuple[dict[str, int], int]:
    ops = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    return {op: ops[op] for op in FUSED if ops[op]}, sum(ops.values())


def _largest_difference(original: Path, optimized: Path, arch: str) -> float:
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (original, optimized)]
    worst = 0.0
    for batch, size, padded in export_encoders._sizes(arch):
        feed = export_encoders.make_inputs(arch, batch, size, padded, 7)
        (before,), (after,) = (session.run(None, feed) for session in sessions)
        worst = max(worst, float(np.abs(before - after).max()))
    return worst


def main() -> None:
    folder = Path(sys.argv[1])
    graphopt = shutil.which("graphopt") or "graphopt"
    (folder / "out").mkdir(exist_ok=True)
    for path in sorted(folder.glob("*_*.onnx")):
        arch = path.stem.rsplit("_", 1)[0]
        if arch not in export_encoders.ARCHS:
            continue
        for label, flags in SETTINGS.items():
            out = folder / "out" / f"{path.stem}{'_x' if flags else ''}.onnx"
            report = out.with_suffix(".json")
            run = subprocess.run(
                [graphopt, "optimize", str(path), "-o", str(out), "--pipeline-json", str(report), "-q", *flags],
                capture_output=True,
                text=True,
            )
            if run.returncode:
                print(f"{path.stem} [{label}] exit {run.returncode}: {run.stderr.strip()[-400:]}")
                continue
            data = json.loads(report.read_text())
            odd = [f"{p['name']}={p['status']}" for p in data["passes"] if p["status"] not in ("applied", "unchanged")]
            refusals = [
                f"{p['name']}: {reason}"
                for p in data["passes"]
                if p["name"].startswith(FUSIONS)
                for reason in p["refusals"]
            ]
            _, before = _counts(path)
            fused, after = _counts(out)
            difference = _largest_difference(path, out, arch)
            print(
                f"{path.stem} [{label}] verified={data['verified']} {before}->{after} {fused} "
                f"largest difference {difference:.2e} {odd}"
            )
            for reason in refusals:
                print("     ", reason[:300])


if __name__ == "__main__":
    main()

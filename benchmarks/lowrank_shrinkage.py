"""How the input covariance is regularized before the activation-aware SVD: held-out output error per layer.

For one projection of each shape in the MiniLM sentence encoder, the layer's inputs at
real (unpadded) tokens of the calibration sentences are the fitted rows (the first N of
them), those of the evaluation sentences the held-out rows. At ``--lowrank R`` the rank
is what R leaves, and each way of building the metric is scored by the relative output
error ``|X (W - U V)| / |X W|`` on the held-out rows and on the fitted rows:

- ``plain``: SVD of the weight (no metric);
- ``ridge``: ``C = XᵀX / N`` plus 1 % of its mean diagonal (graphopt before 2026-11-30);
- ``shrink``: ``C`` shrunk toward its diagonal by ``k / (k + N)``, plus 0.1 % (graphopt now);
- ``diagonal``: the diagonal of ``C`` alone (ASVD-style scaling).

The gap between the fitted and the held-out error is what a budget checked on the fitted
rows would not see. Usage::

    python benchmarks/lowrank_shrinkage.py --model paraphrase-MiniLM-L3-v2.onnx \
        --calibration minilm_calibration.npz --eval minilm_eval.npz [--ratio 0.3] [--rows 128,512,0]

(``data_sources/make_quantization_data.py`` writes the two sentence files; ``--rows 0``
means every calibration row.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.runtime import stream_values  # noqa: E402
from optimizer.samples import split_samples  # noqa: E402
from passes._layers import find_layers, name_nodes  # noqa: E402


def layer_rows(model: ir.Model, layers, path: str) -> dict[str, np.ndarray]:
    """Each layer's input at the real tokens of the sentences in ``path`` (float64 rows)."""
    data = dict(np.load(path))
    mask = data["attention_mask"].astype(bool)
    batches = split_samples(data, model=model)
    out: dict[str, list[np.ndarray]] = {layer.activation.name: [] for layer in layers}
    start = 0
    for batch, run in zip(batches, stream_values(model, list(out), batches)):
        real = mask[start : start + len(batch["attention_mask"])]
        start += len(batch["attention_mask"])
        for name, array in run.items():
            out[name].append(array[real])
    return {name: np.concatenate(parts).astype(np.float64) for name, parts in out.items()}


def factor_product(weight: np.ndarray, x: np.ndarray, rank: int, metric: str) -> np.ndarray:
    """``U V`` at ``rank`` in the metric built from the fitted rows ``x``."""
    k = weight.shape[0]
    if metric == "plain":
        p, s, qt = np.linalg.svd(weight, full_matrices=False)
        return (p[:, :rank] * s[:rank]) @ qt[:rank]
    covariance = x.T @ x / len(x)
    diagonal = np.diag(covariance).copy()
    if metric == "ridge":
        covariance[np.diag_indices(k)] += 1e-2 * diagonal.mean()
    elif metric == "shrink":
        shrink = k / (k + len(x))
        covariance = (1 - shrink) * covariance
        covariance[np.diag_indices(k)] += shrink * diagonal + 1e-3 * diagonal.mean()
    else:  # diagonal
        covariance = np.diag(diagonal + 1e-3 * diagonal.mean())
    lower = np.linalg.cholesky(covariance)
    p, s, qt = np.linalg.svd(lower.T @ weight, full_matrices=False)
    return np.linalg.solve(lower.T, p[:, :rank] * s[:rank]) @ qt[:rank]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--rows", default="128,512,0")
    args = parser.parse_args()
    model = ir.load(args.model)
    name_nodes(model.graph)
    layers, _ = find_layers(model.graph, ("matmul", "gemm"))
    one_per_shape = list({layer.weight.shape: layer for layer in layers if layer.weight.size >= 16384}.values())
    fitted_rows, held_rows = (
        layer_rows(model, one_per_shape, args.calibration),
        layer_rows(model, one_per_shape, args.eval),
    )
    print("| layer | k×n | rank | fitted rows | metric | held-out error | fitted-rows error |")
    print("|---|---|---|---|---|---|---|")
    for layer in one_per_shape:
        weight = layer.weight.astype(np.float64)
        k, n = weight.shape
        rank = int((1 - args.ratio) * k * n / (k + n))
        held = held_rows[layer.activation.name]
        for count in (int(c) for c in args.rows.split(",")):
            fitted = fitted_rows[layer.activation.name]
            fitted = fitted[:count] if count else fitted
            for metric in ("plain", "ridge", "shrink", "diagonal"):
                product = factor_product(weight, fitted, rank, metric)
                errors = [np.linalg.norm(x @ (product - weight)) / np.linalg.norm(x @ weight) for x in (held, fitted)]
                print(
                    f"| {layer.name.split('encoder/')[-1].removesuffix('/MatMul')} | {k}×{n} | {rank} | {len(fitted)} "
                    f"| {metric} | {errors[0]:.3f} | {errors[1]:.3f} |"
                )


if __name__ == "__main__":
    main()

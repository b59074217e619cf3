"""ONNX Runtime's MatMul against a Strassen split of it, at our models' projection shapes.

Each case is ``Y = X @ W`` with ``X [M, k]`` a graph input (M = batch x sequence rows)
and ``W [k, n]`` a constant weight. The Strassen models compute the same product as a
graph of Slice/Add/Sub/MatMul/Concat: one level is 7 half-size MatMuls instead of 8
(the 2x2 block scheme of Strassen 1969), two levels apply it again to each of the 7
(49 quarter-size MatMuls instead of 64). Because ``W`` is constant, every sum of weight
blocks is precomputed as an initializer, so the graph only adds activation blocks (5
per level) and combines the 7 products (8 per level): the most favourable form of the
split a graph rewrite could produce. A row count that does not split evenly (decode's
M = 1) is padded with zero rows and the padding sliced off again, and that cost counts.

Every model runs in one process at ``ORT_ENABLE_ALL``; each Strassen model is timed
interleaved against the plain MatMul (``optimizer.compare.timing.time_interleaved``) and
the ratio is Strassen / MatMul of medians with a paired-bootstrap 95 % interval (below
1 means Strassen is faster). The split's error against the plain MatMul's output is
reported as max |difference| / max |MatMul output|, with the plain MatMul's own error
against a float64 product beside it for scale.

Run it under the timing lock::

    flock /tmp/graphopt_timing.lock .venv/bin/python benchmarks/strassen_benchmark.py --json /tmp/strassen.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.compare.stats import paired_ratio  # noqa: E402
from optimizer.compare.timing import TimedSession, TimingPlan, time_interleaved  # noqa: E402

# (model, projection, k, n) of the weight W [k, n] of each MatMul.
PROJECTIONS = [
    ("MiniLM", "attention q/k/v/o", 384, 384),
    ("MiniLM", "FFN up", 384, 1536),
    ("MiniLM", "FFN down", 1536, 384),
    ("SmolLM2-135M", "attention q/o", 576, 576),
    ("SmolLM2-135M", "attention k/v", 576, 192),
    ("SmolLM2-135M", "MLP gate/up", 576, 1536),
    ("SmolLM2-135M", "MLP down", 1536, 576),
    ("SmolLM2-135M", "LM head", 576, 49152),
]
# (label, batch, sequence): MiniLM is an encoder, so it has no decode step.
ACTIVATIONS = {
    "MiniLM": [("prefill", 1, 128), ("prefill", 8, 128)],
    "SmolLM2-135M": [("decode", 1, 1), ("decode", 8, 1), ("prefill", 1, 128), ("prefill", 8, 128)],
}


@dataclass
class Result:
    model: str
    projection: str
    k: int
    n: int
    phase: str
    batch: int
    sequence: int
    levels: int
    threads: int
    matmul_ms: float
    strassen_ms: float
    ratio: float
    low: float
    high: float
    pairs: int
    split_error: float
    matmul_error: float


def strassen_model(weight: np.ndarray, rows: int, levels: int) -> onnx.ModelProto:
    """``X [rows, k] -> X @ weight`` as ``levels`` levels of Strassen (0: one plain MatMul)."""
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    counter = iter(range(1_000_000))

    def fresh(prefix: str) -> str:
        return f"{prefix}_{next(counter)}"

    def constant(array: np.ndarray, prefix: str) -> str:
        name = fresh(prefix)
        if array.dtype == np.float64:  # weight-side sums are formed in float64, stored as float32
            array = array.astype(np.float32)
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(op_type: str, inputs: list[str], **attributes: object) -> str:
        output = fresh(op_type.lower())
        nodes.append(helper.make_node(op_type, inputs, [output], **attributes))
        return output

    def block(x: str, row_range: tuple[int, int], col_range: tuple[int, int]) -> str:
        starts = constant(np.array([row_range[0], col_range[0]], dtype=np.int64), "starts")
        ends = constant(np.array([row_range[1], col_range[1]], dtype=np.int64), "ends")
        return op("Slice", [x, starts, ends])

    def product(x: str, m: int, w: np.ndarray, depth: int) -> str:
        """X [m, k] @ w, split ``depth`` more times."""
        if depth == 0:
            return op("MatMul", [x, constant(w, "w")])
        k, n = w.shape
        mh, kh, nh = m // 2, k // 2, n // 2
        a11, a12 = block(x, (0, mh), (0, kh)), block(x, (0, mh), (kh, k))
        a21, a22 = block(x, (mh, m), (0, kh)), block(x, (mh, m), (kh, k))
        b11, b12, b21, b22 = w[:kh, :nh], w[:kh, nh:], w[kh:, :nh], w[kh:, nh:]
        # Strassen's seven products; the weight-side sums are constants.
        m1 = product(op("Add", [a11, a22]), mh, b11 + b22, depth - 1)
        m2 = product(op("Add", [a21, a22]), mh, b11, depth - 1)
        m3 = product(a11, mh, b12 - b22, depth - 1)
        m4 = product(a22, mh, b21 - b11, depth - 1)
        m5 = product(op("Add", [a11, a12]), mh, b22, depth - 1)
        m6 = product(op("Sub", [a21, a11]), mh, b11 + b12, depth - 1)
        m7 = product(op("Sub", [a12, a22]), mh, b21 + b22, depth - 1)
        c11 = op("Add", [op("Sub", [op("Add", [m1, m4]), m5]), m7])
        c12 = op("Add", [m3, m5])
        c21 = op("Add", [m2, m4])
        c22 = op("Add", [op("Add", [op("Sub", [m1, m2]), m3]), m6])
        top = op("Concat", [c11, c12], axis=1)
        bottom = op("Concat", [c21, c22], axis=1)
        return op("Concat", [top, bottom], axis=0)

    k, n = weight.shape
    step = 2**levels
    padded = -(-rows // step) * step
    if n % step or k % step:
        raise ValueError(f"W [{k}, {n}] does not split {levels} times")
    x = "X"
    if padded != rows:
        pads = constant(np.array([0, 0, padded - rows, 0], dtype=np.int64), "pads")
        x = op("Pad", [x, pads])
    y = product(x, padded, weight.astype(np.float64), levels)
    if padded != rows:
        y = block(y, (0, rows), (0, n))
    nodes.append(helper.make_node("Identity", [y], ["Y"]))
    graph = helper.make_graph(
        nodes,
        f"strassen{levels}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [rows, n])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def measure(args: argparse.Namespace) -> list[Result]:
    rng = np.random.default_rng(0)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as folder:
        for model_name, projection, k, n in PROJECTIONS:
            if args.only and args.only not in f"{model_name} {projection}":
                continue
            # Scaled like a trained projection (std 1/sqrt(k)); the values do not change timings.
            weight = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
            for phase, batch, sequence in ACTIVATIONS[model_name]:
                if phase not in args.phases:
                    continue
                rows = batch * sequence
                x = rng.standard_normal((rows, k)).astype(np.float32)
                reference = x.astype(np.float64) @ weight.astype(np.float64)
                scale = float(np.abs(reference).max())
                paths = {}
                for levels in [0, *args.levels]:
                    paths[levels] = Path(folder) / f"s{levels}.onnx"
                    onnx.save(strassen_model(weight, rows, levels), paths[levels])
                for threads in args.threads:
                    plain = TimedSession(str(paths[0]), "cpu", {"X": x}, threads)
                    plain_out = plain.outputs()["Y"]
                    matmul_error = float(np.abs(plain_out - reference).max()) / scale
                    for levels in args.levels:
                        split = TimedSession(str(paths[levels]), "cpu", {"X": x}, threads)
                        split_error = float(np.abs(split.outputs()["Y"] - plain_out).max()) / scale
                        plan = TimingPlan(warmup=5, iterations=args.iterations, time_budget=args.time_budget)
                        before, after = time_interleaved(plain, split, plan)
                        estimate = paired_ratio(before, after)
                        result = Result(
                            model_name, projection, k, n, phase, batch, sequence, levels, threads,
                            round(float(np.median(before)) * 1e3, 4), round(float(np.median(after)) * 1e3, 4),
                            round(estimate.ratio, 3), round(estimate.low, 3), round(estimate.high, 3),
                            len(before), float(f"{split_error:.2e}"), float(f"{matmul_error:.2e}"),
                        )  # fmt: skip
                        results.append(result)
                        print(_row(result), flush=True)
                        del split
                    del plain
    return results


def _row(r: Result) -> str:
    return (
        f"| {r.model} {r.projection} | {r.k}x{r.n} | {r.phase} {r.batch}x{r.sequence} | {r.levels} | {r.threads} "
        f"| {r.matmul_ms:.3f} | {r.strassen_ms:.3f} | {r.ratio:.2f} ({r.low:.2f}-{r.high:.2f}) "
        f"| {r.split_error:.1e} | {r.matmul_error:.1e} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--time-budget", type=float, default=3.0, help="seconds per comparison (default 3)")
    parser.add_argument("--iterations", type=int, default=200, help="interleaved pairs at most (default 200)")
    parser.add_argument("--phases", nargs="+", default=["decode", "prefill"], help="decode, prefill or both")
    parser.add_argument("--only", help="measure only projections whose 'model projection' contains this")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    print("| projection | W | rows | levels | threads | MatMul ms | Strassen ms", end="")
    print(" | ratio (95 % CI) | split error | MatMul error |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = measure(args)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()

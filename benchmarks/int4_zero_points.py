"""What ONNX Runtime's MatMulNBits costs per zero-point form and bit width at one row, and what block offsets add.

Why `quantize-int4` writes float zero points (HQQ's, a recovered Q4_1 grid's) as uint8
zero points plus block offsets, and keeps an 8-bit grid in 8 bits only at
accuracy_level 4. Two measurements, each interleaved round by round, medians:

1. One layer ``x [1, K] @ W [K, N]`` (SmolLM2's MLP shape 576x1536 and its LM head
   576x49152): float MatMul against MatMulNBits at accuracy_level 0 and 4, 4 bits with
   no / uint8 / float zero points, and 8 bits.
2. A chain of 100 layers 1024x1024 (52 MB of 4-bit weights, past the caches, as a
   decoder step streams them): MatMulNBits alone against MatMulNBits plus the offsets
   ``Add(y, MatMul(MatMul(x, P), offsets))``.

    python benchmarks/int4_zero_points.py [--threads 1] [--rounds 25]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

BLOCK = 32
OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]


def _nbits_node(name: str, x: str, y: str, k: int, n: int, bits: int, level: int, zero: str, rng) -> tuple:
    blocks = k // BLOCK
    inits = [
        numpy_helper.from_array(rng.integers(0, 256, (n, blocks, BLOCK * bits // 8), dtype=np.uint8), f"{name}.B"),
        numpy_helper.from_array((rng.random(n * blocks) * 0.01).astype(np.float32), f"{name}.S"),
    ]
    inputs = [x, f"{name}.B", f"{name}.S"]
    if zero == "uint8":
        width = -(-blocks * bits // 8)
        inits.append(numpy_helper.from_array(rng.integers(0, 256, (n, width), dtype=np.uint8), f"{name}.Z"))
        inputs.append(f"{name}.Z")
    elif zero == "float":
        inits.append(numpy_helper.from_array((rng.random(n * blocks) * 15).astype(np.float32), f"{name}.Z"))
        inputs.append(f"{name}.Z")
    attributes = {"K": k, "N": n, "bits": bits, "block_size": BLOCK, "accuracy_level": level}
    node = helper.make_node("MatMulNBits", inputs, [y], domain="com.microsoft", name=name, **attributes)
    return [node], inits


def _model(nodes, inits, k: int, n: int, output: str = "Y") -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, 1, k])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, 1, n])],
        inits,
    )
    return helper.make_model(graph, opset_imports=OPSETS).SerializeToString()


def one_layer(k: int, n: int) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
    models = {"float MatMul": _model([helper.make_node("MatMul", ["A", "W"], ["Y"])], [weight], k, n)}
    for level in (0, 4):
        for bits, zero in ((4, "none"), (4, "uint8"), (4, "float"), (8, "none")):
            nodes, inits = _nbits_node("l", "A", "Y", k, n, bits, level, zero, rng)
            models[f"{bits}-bit, {zero} zero points, level {level}"] = _model(nodes, inits, k, n)
    return models


def chain(offsets: bool, layers: int = 100, size: int = 1024) -> bytes:
    rng = np.random.default_rng(0)
    blocks = size // BLOCK
    indicator = np.zeros((size, blocks), dtype=np.float32)
    indicator[np.arange(size), np.arange(size) // BLOCK] = 1
    nodes, inits, current = [], [numpy_helper.from_array(indicator, "P")], "A"
    for i in range(layers):
        out = f"y{i}"
        made, weights = _nbits_node(f"l{i}", current, f"m{i}" if offsets else out, size, size, 4, 4, "uint8", rng)
        nodes += made
        inits += weights
        if offsets:
            table = (rng.standard_normal((blocks, size)) * 1e-4).astype(np.float32)
            inits.append(numpy_helper.from_array(table, f"R{i}"))
            nodes += [
                helper.make_node("MatMul", [current, "P"], [f"s{i}"]),
                helper.make_node("MatMul", [f"s{i}", f"R{i}"], [f"r{i}"]),
                helper.make_node("Add", [f"m{i}", f"r{i}"], [out]),
            ]
        current = out
    return _model(nodes, inits, size, size, current)


def interleaved(models: dict[str, bytes], k: int, threads: int, rounds: int, runs: int) -> dict[str, list[float]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # Interleaved sessions: an idle one's spinning threads would slow the next (optimizer.runtime.TIMING_CONFIG).
    options.add_session_config_entry("session.force_spinning_stop", "1")
    sessions = {
        label: ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"]) for label, blob in models.items()
    }
    x = np.random.default_rng(1).standard_normal((1, 1, k)).astype(np.float32)
    for session in sessions.values():
        session.run(None, {"A": x})
    times = {label: [] for label in sessions}
    for _ in range(rounds):
        for label, session in sessions.items():
            start = time.perf_counter()
            for _ in range(runs):
                session.run(None, {"A": x})
            times[label].append((time.perf_counter() - start) / runs)
    return times


def summary(times: dict[str, list[float]], reference: str) -> dict[str, tuple[float, float, float, float]]:
    """Per form: median seconds, median ratio to ``reference`` over the rounds, and that ratio's 2.5-97.5 % range."""
    base = np.asarray(times[reference])
    rows = {}
    for label, values in times.items():
        ratios = np.asarray(values) / base
        low, high = np.percentile(ratios, [2.5, 97.5])
        rows[label] = (float(np.median(values)), float(np.median(ratios)), float(low), float(high))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op thread(s), medians of {args.rounds} rounds")
    for k, n, runs in ((576, 1536, 100), (576, 49152, 5)):
        rows = summary(interleaved(one_layer(k, n), k, args.threads, args.rounds, runs), "float MatMul")
        print(f"\none layer, 1 x {k} x {n}:\n| form | µs | vs float | 95 % of rounds |\n|---|---|---|---|")
        for label, (seconds, ratio, low, high) in rows.items():
            print(f"| {label} | {seconds * 1e6:.1f} | {ratio:.2f} | {low:.2f}–{high:.2f} |")
    medians = interleaved(
        {"MatMulNBits": chain(False), "with block offsets": chain(True)}, 1024, args.threads, args.rounds, 5
    )
    print("\n100 layers 1024x1024, 4-bit, level 4, one row:\n| form | ms | ratio | 95 % of rounds |\n|---|---|---|---|")
    for label, (seconds, ratio, low, high) in summary(medians, "MatMulNBits").items():
        print(f"| {label} | {seconds * 1e3:.2f} | {ratio:.2f} | {low:.2f}–{high:.2f} |")


if __name__ == "__main__":
    main()

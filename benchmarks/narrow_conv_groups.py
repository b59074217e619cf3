"""How the kept count of a Conv channel group of one NCHWc block or less costs time (pruning's ``_counts``).

A group of ``C`` channels at ``size``×``size`` (batch 1), in five shapes:

- ``out``: a 1×1 Conv 32 → C (C as the producing Conv's output count);
- ``in``: a 1×1 Conv C → 32 on an input of C channels (C as the next Conv's input count);
- ``pw``: 1×1 Conv 32 → C, 1×1 Conv C → 96 (both; ``conv_channel_counts.py`` without its depthwise Conv);
- ``c3``: 3×3 Conv 16 → C, 3×3 Conv C → 16 (a ResNet basic block's inner channels);
- ``pws``: ``pw`` with its second 1×1 Conv at stride 2 (a strided 1×1 reader: ResNet's downsampling shortcut);
- ``fc``: a 1×1 Conv 32 → C, GlobalAveragePool, Flatten, Gemm C → 10 (a classifier head reading the group);
- ``ir``: an inverted residual, 1×1 8 → C, Clip, 3×3 depthwise C, Clip, 1×1 C → 8, residual Add (the expansion
  group ``prune-channels`` cuts in MobileNetV2/EfficientNet-Lite).

For each shape, size and thread count, the sessions of every C of ``--counts`` run interleaved (the order reversed
every other round) under ``flock /tmp/graphopt_timing.lock``: the median of ``--rounds`` rounds, and the median of
the per-round ratios to the first count (the uncut width).

Usage::

    python benchmarks/narrow_conv_groups.py --counts 16 12 8 4 --threads 1 2
    python benchmarks/narrow_conv_groups.py --counts 16 15 14 13 12 11 10 9 8 7 6 5 4 --shapes pw ir in
"""

from __future__ import annotations

import argparse
import fcntl
import platform
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

_LOCK = "/tmp/graphopt_timing.lock"  # timings of concurrent sessions on a shared host take turns


def group(shape: str, channels: int, size: int) -> tuple[bytes, int]:
    """The model of ``shape`` with a group of ``channels`` (random weights), and its input's channel count."""
    rng = np.random.default_rng(0)

    def weight(*dims: int) -> np.ndarray:
        return rng.standard_normal(dims).astype(np.float32) * 0.1

    c = channels
    arrays = {"low": np.array(0, np.float32), "high": np.array(6, np.float32)}
    inputs = {"out": 32, "in": c, "pw": 32, "pws": 32, "fc": 32, "c3": 16, "ir": 8}[shape]
    if shape in ("out", "in"):
        arrays |= {"a": weight(32, c, 1, 1) if shape == "in" else weight(c, 32, 1, 1)}
        nodes = [helper.make_node("Conv", ["x", "a"], ["y"])]
    elif shape in ("pw", "pws"):
        arrays |= {"a": weight(c, 32, 1, 1), "ab": weight(c), "b": weight(96, c, 1, 1), "bb": weight(96)}
        strides = [2, 2] if shape == "pws" else [1, 1]
        nodes = [
            helper.make_node("Conv", ["x", "a", "ab"], ["p"]),
            helper.make_node("Conv", ["p", "b", "bb"], ["y"], strides=strides),
        ]
    elif shape == "fc":
        arrays |= {"a": weight(c, 32, 1, 1), "ab": weight(c), "f": weight(10, c), "fb": weight(10)}
        nodes = [
            helper.make_node("Conv", ["x", "a", "ab"], ["p"]),
            helper.make_node("GlobalAveragePool", ["p"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f1"]),
            helper.make_node("Gemm", ["f1", "f", "fb"], ["y"], transB=1),
        ]
    elif shape == "c3":
        arrays |= {"a": weight(c, 16, 3, 3), "ab": weight(c), "b": weight(16, c, 3, 3), "bb": weight(16)}
        nodes = [
            helper.make_node("Conv", ["x", "a", "ab"], ["p"], pads=[1, 1, 1, 1]),
            helper.make_node("Clip", ["p", "low", "high"], ["pc"]),
            helper.make_node("Conv", ["pc", "b", "bb"], ["y"], pads=[1, 1, 1, 1]),
        ]
    else:
        arrays |= {"a": weight(c, 8, 1, 1), "ab": weight(c), "d": weight(c, 1, 3, 3), "db": weight(c)}
        arrays |= {"b": weight(8, c, 1, 1), "bb": weight(8)}
        nodes = [
            helper.make_node("Conv", ["x", "a", "ab"], ["e"]),
            helper.make_node("Clip", ["e", "low", "high"], ["ec"]),
            helper.make_node("Conv", ["ec", "d", "db"], ["dd"], group=c, pads=[1, 1, 1, 1]),
            helper.make_node("Clip", ["dd", "low", "high"], ["dc"]),
            helper.make_node("Conv", ["dc", "b", "bb"], ["o"]),
            helper.make_node("Add", ["o", "x"], ["y"]),
        ]
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        "group",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, inputs, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(array, name) for name, array in arrays.items() if name in used],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), inputs


def timed(shape: str, size: int, threads: int, counts: list[int], rounds: int) -> dict[int, tuple[float, float]]:
    """Per count: the median ms of a run, and the median per-round ratio to ``counts[0]``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Interleaved sessions: an idle one's spinning threads would slow the next (optimizer.runtime.TIMING_CONFIG).
    options.add_session_config_entry("session.force_spinning_stop", "1")
    sessions, feeds = {}, {}
    for c in counts:
        model, inputs = group(shape, c, size)
        sessions[c] = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feeds[c] = {"x": np.random.default_rng(1).standard_normal((1, inputs, size, size)).astype(np.float32)}
    repeats = max(1, 2_000_000 // (size * size * 16))  # about the same work per sample at every size
    times: dict[int, list[float]] = {c: [] for c in counts}
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for c in counts:
            for _ in range(10):
                sessions[c].run(None, feeds[c])
        for round_ in range(rounds):
            for c in counts if round_ % 2 == 0 else counts[::-1]:
                started = time.perf_counter()
                for _ in range(repeats):
                    sessions[c].run(None, feeds[c])
                times[c].append((time.perf_counter() - started) / repeats * 1e3)
    base = np.array(times[counts[0]])
    return {c: (float(np.median(v)), float(np.median(np.array(v) / base))) for c, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[16, 12, 8, 4])
    parser.add_argument(
        "--shapes", nargs="+", default=["pw", "ir", "out", "in"], choices=["pw", "pws", "fc", "c3", "ir", "out", "in"]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 56, 28, 14])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, onnxruntime {ort.__version__}")
    print(f"| shape | size | threads | {' | '.join(f'C = {c}' for c in args.counts)} |")
    print(f"|---|---|---|{'---|' * len(args.counts)}")
    for threads in args.threads:
        for shape in args.shapes:
            for size in args.sizes:
                result = timed(shape, size, threads, args.counts, args.rounds)
                ratios = " | ".join(f"{ratio:.2f}" for _, ratio in result.values())
                print(f"| {shape} | {size}² | {threads} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()

"""How a Conv channel count that is not a multiple of ONNX Runtime's NCHWc block costs time (pruning's rounding).

EfficientNet-Lite0's block 0 → block 1 at 112×112 as three Convs: project 1×1 32 → C, expand
1×1 C → 96, ReLU6, depthwise 3×3 stride 2 (C is the width ``prune-channels`` cuts). Each C of
``--counts`` is timed against the first (the uncut width), interleaved, on the CPU provider at
``--threads``: the median time of ``--rounds`` rounds of 5 runs after 20 warm-up runs, and the
median of the per-round ratios.

Usage::

    python benchmarks/conv_channel_counts.py --counts 16 15 14 13 12 11 10 9 8 4
    python benchmarks/conv_channel_counts.py --counts 24 22 21 20 18 16 12
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def block(channels: int) -> bytes:
    """The three Convs with ``channels`` between the projection and the expansion, random weights."""
    rng = np.random.default_rng(0)
    arrays = {
        "project": rng.standard_normal((channels, 32, 1, 1)).astype(np.float32) * 0.1,
        "project_bias": np.zeros(channels, np.float32),
        "expand": rng.standard_normal((96, channels, 1, 1)).astype(np.float32) * 0.1,
        "expand_bias": np.zeros(96, np.float32),
        "depthwise": rng.standard_normal((96, 1, 3, 3)).astype(np.float32) * 0.1,
        "low": np.array(0, np.float32),
        "high": np.array(6, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "project", "project_bias"], ["p"]),
        helper.make_node("Conv", ["p", "expand", "expand_bias"], ["e"]),
        helper.make_node("Clip", ["e", "low", "high"], ["r"]),
        helper.make_node("Conv", ["r", "depthwise"], ["y"], group=96, pads=[1, 1, 1, 1], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(array, name) for name, array in arrays.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[16, 15, 14, 13, 12, 11, 10, 9, 8, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    # Interleaved sessions: an idle one's spinning threads would slow the next (optimizer.runtime.TIMING_CONFIG).
    options.add_session_config_entry("session.force_spinning_stop", "1")
    sessions = {c: ort.InferenceSession(block(c), options, providers=["CPUExecutionProvider"]) for c in args.counts}
    x = np.random.default_rng(1).standard_normal((1, 32, 112, 112)).astype(np.float32)
    for session in sessions.values():
        for _ in range(20):
            session.run(None, {"x": x})
    times: dict[int, list[float]] = {c: [] for c in sessions}
    for _ in range(args.rounds):
        for channels, session in sessions.items():
            started = time.perf_counter()
            for _ in range(5):
                session.run(None, {"x": x})
            times[channels].append((time.perf_counter() - started) / 5 * 1e3)
    base = np.array(times[args.counts[0]])
    print(f"{platform.processor() or platform.machine()}, onnxruntime {ort.__version__}, {args.threads} thread(s)")
    print(f"| C | ms | vs C = {args.counts[0]} (median of rounds) |")
    print("|---|---|---|")
    for channels, values in times.items():
        print(f"| {channels} | {np.median(values):.3f} | {np.median(np.array(values) / base):.2f} |")


if __name__ == "__main__":
    main()

"""Softmax written out (ReduceMax, Sub, Exp, ReduceSum, Div) against one ``Softmax``, on ONNX Runtime's CPU EP.

What ``fuse-softmax`` buys on its own, before ``fuse-attention`` takes the softmax into an
attention op: both graphs at ORT_ENABLE_ALL, timed interleaved, the median of each.

    python benchmarks/softmax_fusion.py [--shape 1 12 128 128] [--threads 1] [--rounds 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _models(shape: list[int]) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    axis = numpy_helper.from_array(np.array([-1], np.int64), "axis")
    written_out = [
        helper.make_node("ReduceMax", ["x", "axis"], ["m"], keepdims=1),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Exp", ["d"], ["e"]),
        helper.make_node("ReduceSum", ["e", "axis"], ["s"], keepdims=1),
        helper.make_node("Div", ["e", "s"], ["y"]),
    ]
    opset = [helper.make_opsetid("", 18)]
    return (
        helper.make_model(helper.make_graph(written_out, "written_out", [x], [y], [axis]), opset_imports=opset),
        helper.make_model(
            helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "softmax", [x], [y]),
            opset_imports=opset,
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[1, 12, 128, 128])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = [
        ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for m in _models(args.shape)
    ]
    feeds = {"x": np.random.default_rng(0).standard_normal(args.shape).astype(np.float32)}
    outputs = [s.run(None, feeds)[0] for s in sessions]
    times: list[list[float]] = [[], []]
    for _ in range(args.rounds):
        for session, timed in zip(sessions, times):
            start = time.perf_counter()
            session.run(None, feeds)
            timed.append(time.perf_counter() - start)
    written_out, softmax = (float(np.median(t)) * 1e3 for t in times)
    print(f"shape {args.shape}, {args.threads} thread(s), {args.rounds} interleaved rounds")
    print(f"written out {written_out:.3f} ms, Softmax {softmax:.3f} ms: {written_out / softmax:.2f}x")
    print(f"max |difference| {float(np.abs(outputs[0] - outputs[1]).max()):.2e}")


if __name__ == "__main__":
    main()

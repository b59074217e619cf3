"""Is one DynamicQuantizeMatMul over two layers' columns faster than the two? (``merge-matmul-nbits`` asks it of int8.)

Thirty blocks of ``x -> gate, up = DynamicQuantizeMatMul(x) -> gate * up -> MatMul(down) -> tanh`` (576 -> 1536
-> 576, synthetic int8 weights), written once with gate and up separate and once as one op over 3,072 columns
followed by ``Split``; both timed alternately (medians; 200 runs at one row, 40 at 128) at 1 and 2 threads,
``session.force_spinning_stop`` as graphopt times. Usage: ``python benchmarks/int8_sibling_merge.py``.
"""

import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)
K, N, L = 576, 1536, 30


def model(merged):
    nodes, inits = [], []
    x = "x"
    for layer in range(L):
        ws = [rng.integers(-127, 127, (K, N), dtype=np.int8) for _ in range(2)]
        ss = [np.full(N, 0.0005, np.float32) for _ in range(2)]
        if merged:
            inits += [
                numpy_helper.from_array(np.concatenate(ws, 1), f"w{layer}"),
                numpy_helper.from_array(np.concatenate(ss), f"s{layer}"),
            ]
            nodes.append(
                helper.make_node(
                    "DynamicQuantizeMatMul", [x, f"w{layer}", f"s{layer}"], [f"gu{layer}"], domain="com.microsoft"
                )
            )
            nodes.append(helper.make_node("Split", [f"gu{layer}", "sizes"], [f"g{layer}", f"u{layer}"], axis=-1))
        else:
            for i in range(2):
                inits += [
                    numpy_helper.from_array(ws[i], f"w{layer}_{i}"),
                    numpy_helper.from_array(ss[i], f"s{layer}_{i}"),
                ]
            nodes.append(
                helper.make_node(
                    "DynamicQuantizeMatMul", [x, f"w{layer}_0", f"s{layer}_0"], [f"g{layer}"], domain="com.microsoft"
                )
            )
            nodes.append(
                helper.make_node(
                    "DynamicQuantizeMatMul", [x, f"w{layer}_1", f"s{layer}_1"], [f"u{layer}"], domain="com.microsoft"
                )
            )
        nodes.append(helper.make_node("Mul", [f"g{layer}", f"u{layer}"], [f"m{layer}"]))
        inits.append(numpy_helper.from_array(rng.standard_normal((N, K)).astype(np.float32) * 0.05, f"d{layer}"))
        nodes.append(helper.make_node("MatMul", [f"m{layer}", f"d{layer}"], [f"y{layer}"]))
        nodes.append(helper.make_node("Tanh", [f"y{layer}"], [f"x{layer}"]))  # keeps every block's input in range
        x = f"x{layer}"
    inits.append(numpy_helper.from_array(np.array([N, N], np.int64), "sizes"))
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", K])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    ).SerializeToString()


for threads in (1, 2):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.force_spinning_stop", "1")
    a = ort.InferenceSession(model(False), so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(model(True), so, providers=["CPUExecutionProvider"])
    for S in (1, 128):
        x = rng.standard_normal((1, S, K)).astype(np.float32)
        ra = a.run(None, {"x": x})[0]
        rb = b.run(None, {"x": x})[0]
        ta, tb = [], []
        for _ in range(40 if S == 128 else 200):
            t = time.perf_counter()
            a.run(None, {"x": x})
            ta.append(time.perf_counter() - t)
            t = time.perf_counter()
            b.run(None, {"x": x})
            tb.append(time.perf_counter() - t)
        separate, merged = statistics.median(ta), statistics.median(tb)
        print(
            f"threads {threads} rows {S}: separate {separate * 1e3:.2f} ms, merged {merged * 1e3:.2f} ms, "
            f"ratio {merged / separate:.3f}, max |difference| {np.abs(ra - rb).max():.2e}"
        )

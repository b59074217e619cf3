"""Review of $GRAPHOPT_SESSION_THREADS (session 46): the suite's checking sessions run at 1 thread, users' at one per
core. That is only sound if (a) the variable reaches the checking sessions and not the timing ones, and (b) what the
checks compute does not depend on the thread count. Measured with the CLI on encoder.onnx, the legacy fixtures,
MiniLM and PP-OCR (dynamic, static, int4/GPTQ, --min-cosine budgets): 1 and 2 threads gave byte-identical results
and pipeline reports (ONNX Runtime 1.32: its CPU kernels split the outputs, never a reduction, across threads; MatMul,
Conv, Reduce*, Softmax, CumSum, GlobalAveragePool at 1, 2 and 4 threads were bit-identical too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

import optimizer.compare.timing as compare_timing
import passes._kernel_timing as kernel_timing
from optimizer import runtime
from tests.helpers import calibration_samples

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "encoder.onnx"


def _tiny_matmul() -> bytes:
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [value("x", onnx.TensorProto.FLOAT, [4, 8])],
        [value("y", onnx.TensorProto.FLOAT, [4, 8])],
        [onnx.numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9).SerializeToString()


def test_checking_sessions_take_the_env_threads_timing_sessions_do_not_and_the_checks_numbers_do_not_move(
    monkeypatch,
):
    model = ir.load(EXAMPLE)
    feeds = calibration_samples(model, count=2, sequence=32)
    probed = [model.graph.node(len(model.graph) // 2).outputs[0]]  # a probe into the middle of the encoder
    seen: list[tuple[str, int]] = []

    def spying(module, kind):
        real = module.open_session

        def spy(source, options, providers):
            seen.append((kind, options.intra_op_num_threads))
            return real(source, options, providers)

        monkeypatch.setattr(module, "open_session", spy)

    spying(runtime, "check")  # inference_session (verify, calibration, layer probes, run_batches) and evaluator
    spying(kernel_timing, "timing")  # OneModel: the budget's and --lowrank's kernel timings
    spying(compare_timing, "timing")  # TimedSession: compare's timings (and its accuracy and memory probe)

    results = {}
    for threads in (1, 2):
        monkeypatch.setenv(runtime.SESSION_THREADS_ENV, str(threads))
        seen.clear()
        exact = runtime.run_model(model, feeds)  # ORT_DISABLE_ALL: the float reference
        deployed = runtime.run_batches(model, [feeds])[0]  # ORT_ENABLE_ALL: the checks, the budget's accuracy
        middle = runtime.evaluate(model, probed, feeds)[0]  # a fusion's subgraph probe
        kernel_timing.OneModel(_tiny_matmul(), {"x": np.ones((4, 8), np.float32)}, "cpu", 0, "time it")
        kernel_timing.OneModel(_tiny_matmul(), {"x": np.ones((4, 8), np.float32)}, "cpu", 3, "time it")
        compare_timing.TimedSession(str(EXAMPLE), "cpu", feeds, 3)
        assert seen == [
            ("check", threads),
            ("check", threads),
            ("check", threads),
            ("timing", 0),  # ONNX Runtime's default, as deployed, whatever the variable says
            ("timing", 3),
            ("timing", 3),
        ]
        results[threads] = (exact, deployed, middle)

    # What users' one-per-core sessions compute is what the suite's one-thread sessions check: the verdicts, the
    # float noise (ENABLE_ALL against DISABLE_ALL) and the budget's accuracy figures are measured on the same numbers.
    (exact1, deployed1, middle1), (exact2, deployed2, middle2) = results[1], results[2]
    assert exact1.keys() == exact2.keys() == deployed1.keys() == deployed2.keys()
    for name in exact1:
        np.testing.assert_allclose(exact2[name], exact1[name], rtol=1e-6, atol=1e-6, err_msg=f"{name}, disable_all")
        np.testing.assert_allclose(deployed2[name], deployed1[name], rtol=1e-6, atol=1e-6, err_msg=f"{name}, all")
    np.testing.assert_allclose(middle2, middle1, rtol=1e-6, atol=1e-6)

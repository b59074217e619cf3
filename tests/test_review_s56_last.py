"""Review of the last commits (generated calibration samples at the sizes of the user's --inputs)."""

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

import optimizer.inputs
from optimizer.api import optimize_with_report


def _matmul_model() -> ir.Model:
    weight = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 8])],
        [numpy_helper.from_array(weight, "w")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def test_inputs_too_long_for_sixteen_generated_samples_leave_them_at_the_default_lengths(monkeypatch):
    # Inputs of a sixteenth of the limit ran; 16 generated samples at their length passed it and were refused, with
    # "--dim NAME=SIZE" for a way out, which the inputs' own size then refused: at the default lengths, as before.
    monkeypatch.setattr(optimizer.inputs, "MAX_INPUT_BYTES", 1 << 20)
    inputs = {"x": np.random.default_rng(1).standard_normal((1, 4096, 8)).astype(np.float32)}  # 128 KiB
    _, report = optimize_with_report(_matmul_model(), ["quantize-dynamic"], inputs=inputs)
    (record,) = report.passes
    assert record.status in ("applied", "unchanged"), record.detail

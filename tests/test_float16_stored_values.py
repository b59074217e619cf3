"""convert-float16's check as float16 kernels compute it (the twin's ``deployed`` model) rounds the values the
result stores as float16, read off the result, not only those the converter was expected to store.

Before, the deployed model rounded the activations the pass declared; a realization storing another float16
activation that overflows (a review's injected fault: ``h * 3e4 * (1/3e4)`` in float16, infinite on a GPU, exact
on ONNX Runtime's CPU, which runs the float16 Muls as float32 kernels) was verified."""

from __future__ import annotations

import numpy as np
import onnxruntime.transformers.float16 as ort_float16
from onnx import TensorProto, helper, numpy_helper

from tests.test_review_s55_fp16 import _float, _model, _record


def _model_of_a_matmul() -> object:
    weight = numpy_helper.from_array(np.full((64, 4), 0.1, np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    return _model(nodes, [weight], [_float("x", ["B", 64])], [_float("y", ["B", 4])])


def _scaled_through_float16(real):
    """The converter's result with its float16 ``h`` scaled by 3e4 and back in float16 before its reader."""

    def convert(proto, **kwargs):
        converted = real(proto, **kwargs)
        graph = converted.graph
        reader = next(node for node in graph.node if "h" in node.input)
        for index, name in enumerate(reader.input):
            if name == "h":
                reader.input[index] = "h_back"
        up = numpy_helper.from_array(np.array(3e4, np.float16), "up")
        down = numpy_helper.from_array(np.array(1 / 3e4, np.float16), "down")
        graph.initializer.extend([up, down])
        at = list(graph.node).index(reader)
        graph.node.insert(at, helper.make_node("Mul", ["h_up", "down"], ["h_back"]))
        graph.node.insert(at, helper.make_node("Mul", ["h", "up"], ["h_up"]))
        graph.value_info.extend(
            helper.make_tensor_value_info(name, TensorProto.FLOAT16, ["B", 4]) for name in ("h_up", "h_back")
        )
        return converted

    return convert


def test_a_float16_activation_the_input_does_not_compute_is_refused(monkeypatch):
    monkeypatch.setattr(
        ort_float16, "convert_float_to_float16", _scaled_through_float16(ort_float16.convert_float_to_float16)
    )
    record = _record(_model_of_a_matmul(), {"x": np.full((2, 64), 10.0, np.float32)})
    assert record.status == "unchanged", record.detail
    said = " ".join(record.refusals + record.notes)
    assert "stores 2 float16 values the input does not compute (h_up, h_back)" in said, said


def test_the_converters_own_result_is_still_applied():
    record = _record(_model_of_a_matmul(), {"x": np.full((2, 64), 10.0, np.float32)})
    assert record.status == "applied", record.detail

"""Review s64 (late changes, 26a6dbf..f2c4418): convert-float16's check as float16 kernels compute it
(``_twin.float16_kernels``) on results holding float16 sequences."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from passes.quantization._twin import float16_kernels
from tests.test_review_s55_fp16 import _float, _model, _record


def _split_and_concatenated() -> ir.Model:
    """y = concat(split_to_sequence(x · W)) + x · W: a sequence of the MatMul's rows in between."""
    weight = numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), "W")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("SplitToSequence", ["m"], ["rows"], axis=0),
        helper.make_node("ConcatFromSequence", ["rows"], ["c"], axis=0),
        helper.make_node("Add", ["c", "m"], ["y"]),
    ]
    return _model(nodes, [weight], [_float("x", [2, 4])], [_float("y", [2, 4])])


def test_a_float16_sequence_keeps_its_sequence_type_in_the_kernels_model():
    # The kernels model typed the float16 sequence a float32 tensor and Cast it: ONNX Runtime refused it ("Type
    # (tensor(float)) of output arg (rows.unrounded) ... does not match expected type (seq(tensor(float)))").
    sequence = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT16, None))
    graph = helper.make_graph(
        [
            helper.make_node("SplitToSequence", ["x"], ["rows"], axis=0),
            helper.make_node("ConcatFromSequence", ["rows"], ["c"], axis=0),
            helper.make_node("Add", ["c", "c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 4])],
        value_info=[
            helper.make_value_info("rows", sequence),
            helper.make_tensor_value_info("c", TensorProto.FLOAT16, [2, 4]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    kernels = float16_kernels(ir.from_proto(proto))
    assert kernels is not None
    session = ort.InferenceSession(ir.to_proto(kernels).SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(8, dtype=np.float16).reshape(2, 4)
    (y,) = session.run(None, {"x": x})
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, x + x)


def test_a_model_with_a_sequence_converts_to_float16():
    # Rolled back at f2c4418 ("ONNX Runtime cannot run the result"); applied before 7a3c532 (the input's twin).
    record = _record(_split_and_concatenated(), None)
    assert record.status == "applied", record.detail


def test_a_float16_optional_keeps_its_optional_type_and_its_overflow():
    # As a sequence: an Optional of a float16 tensor was typed a tensor and refused by ONNX Runtime. The element
    # read from it is rounded: 40000 + 40000 is infinite in float16, as on a GPU.
    tensor = helper.make_tensor_type_proto(TensorProto.FLOAT16, [2, 4])
    graph = helper.make_graph(
        [
            helper.make_node("Optional", ["x"], ["o"]),
            helper.make_node("OptionalGetElement", ["o"], ["e"]),
            helper.make_node("Add", ["e", "e"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 4])],
        value_info=[
            helper.make_value_info("o", helper.make_optional_type_proto(tensor)),
            helper.make_tensor_value_info("e", TensorProto.FLOAT16, [2, 4]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    onnx.checker.check_model(proto, full_check=True)
    kernels = float16_kernels(ir.from_proto(proto))
    assert kernels is not None
    session = ort.InferenceSession(ir.to_proto(kernels).SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.full((2, 4), 40000, np.float16)})
    assert np.isposinf(y).all()

"""Review (session 74, extdata): models whose weights are in external data, as torch 2.13's dynamo exporter writes
them (a ``.data`` file beside the ``.onnx``), through every way graphopt hands a model to ONNX Runtime or writes it.

``onnx.save(..., size_threshold=0)`` puts even a Reshape's 16-byte target in the data file. ``onnx_ir.save`` reads
such a small external tensor back into the model file and closes its memory map, which fails with ``BufferError``
while an array of it is still held (a constant a pass read): static quantization's calibration session failed so.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.model_io import load_model
from optimizer.runtime import inference_session


def _all_external(path) -> None:
    """A Reshape to [2, 8] then a MatMul, every initializer (the 16-byte target too) in ``path``'s data file."""
    rng = np.random.default_rng(0)
    shape = numpy_helper.from_array(np.array([2, 8], np.int64), "shape")
    weight = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [shape, weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path, save_as_external_data=True, size_threshold=0, location=f"{path.name}.data")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("extdata") / "m.onnx"
    _all_external(path)
    return path


def test_session_of_a_model_whose_small_external_tensor_is_held(model_path):
    model = load_model(model_path)
    held = model.graph.initializers["shape"].const_value.numpy()  # as a pass reading the Reshape's target holds it
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    with inference_session(model) as session:
        (y,) = session.run(None, {"x": x})
    weight = model.graph.initializers["w"].const_value.numpy()
    np.testing.assert_allclose(y, x.reshape(2, 8) @ weight, rtol=1e-6)
    assert held.tolist() == [2, 8]


def _conv_all_external(path) -> None:
    """Conv, Relu, then a mean over the axes of an int64 initializer (16 bytes), every initializer in the data file."""
    rng = np.random.default_rng(1)
    tensors = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("ReduceMean", ["r", "axes"], ["y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.save(model, path, save_as_external_data=True, size_threshold=0, location=f"{path.name}.data")


def test_static_quantization_of_a_model_with_every_tensor_external(tmp_path):
    from optimizer.api import optimize_with_report

    path = tmp_path / "m.onnx"
    _conv_all_external(path)
    before = (path.read_bytes(), (tmp_path / "m.onnx.data").read_bytes())
    _, report = optimize_with_report(path, ["quantize-static"], output=tmp_path / "out.onnx", quantize="static")
    (record,) = [record for record in report.passes if record.name == "quantize-static"]
    assert record.status == "applied", (record.status, report.warnings)
    assert (path.read_bytes(), (tmp_path / "m.onnx.data").read_bytes()) == before

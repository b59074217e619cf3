"""Review (session 74, late6): kernel timing's ``OneModel`` on a model whose weights are external data, as the
whole-model timing of ``--quantize static`` gives it a torch 2.13 export (weights in a ``.data`` file).

``OneModel`` read every external weight into a copy of the model and serialized it to one proto: the weights twice
more in memory (the proto and its bytes), and past protobuf's 2 GB a model it could not serialize at all.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.model_io import load_model

_ROWS = 2048  # a 2048 x 2048 float32 weight: 16 MiB


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A MatMul by a 16 MiB weight stored in the data file beside the model."""
    path = tmp_path_factory.mktemp("late6") / "m.onnx"
    weight = np.eye(_ROWS, dtype=np.float32) * 2
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, _ROWS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, _ROWS])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path, save_as_external_data=True, location=f"{path.name}.data")
    return path


def test_kernel_timing_of_an_external_weight_does_not_copy_it_in_memory(model_path):
    from passes._kernel_timing import OneModel

    model = load_model(model_path)
    tensor = model.graph.initializers["w"].const_value
    x = np.arange(_ROWS, dtype=np.float32)[None]
    tracemalloc.start()
    try:
        timed = OneModel(model, {"x": x}, "cpu", 1, "time a model")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < tensor.nbytes // 2, f"{peak} bytes allocated to time a model of {tensor.nbytes} bytes of weights"
    assert model.graph.initializers["w"].const_value is tensor  # the caller's model is untouched
    (y,) = timed.session.run(None, {"x": x})
    np.testing.assert_array_equal(y, x * 2)

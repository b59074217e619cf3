"""Session 58's review of its own changes (c6a2b05..b783e16), each with a test that failed before its fix.

* ``--static-shapes`` with ``--quantize static`` on a model below opset 13 whose state holds its batch on axis 1
  (Silero VAD's interface, exported at opset 11): the pass converts a copy to opset 18, onnx's converter (the
  fallback) rebuilt the graph from a proto without the declared shapes ``BindDimsPass`` keeps in the inputs' meta,
  and the samples were cut along the state's axis 0 again: "Got invalid dimensions for input: state ... index: 1",
  rolled back. The converted copy's inputs keep them now.
* ``compare`` (``optimize --compare --inputs --calibration``) counted a shared whole batch as one sample where the
  model fixes its batch: "1 of --inputs i.npz (3 samples) are --calibration samples too" for all 3.
* ``--fp16`` of a ``--quantize dynamic`` result (``DynamicQuantizeMatMul`` then ``Relu``, the output untyped):
  the quantization ops stay float32 now, but onnx's shape inference is not run on com.microsoft ops, the converter
  did not know their output float and fed it uncast to the float16 ``Relu``: "Type (tensor(float16)) of output arg
  ... does not match expected type (tensor(float))", rolled back. The untyped output gets its scales' type.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report


def _state_model(opset: int) -> ir.Model:
    """``input [batch, 64]`` beside ``state [2, batch, 64]`` (its batch on axis 1), two MatMuls, at ``opset``."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(64, 64)).astype(np.float32), name) for name in ("w", "w2")]
    index = numpy_helper.from_array(np.array(0, np.int64), "zero")
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["projected"]),
        helper.make_node("Gather", ["state", "zero"], ["h"], axis=0),
        helper.make_node("Add", ["projected", "h"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vad_like",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 64]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 64])],
        [*weights, index],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


@pytest.mark.parametrize("opset", [10, 11])
def test_static_int8_converted_below_opset_13_keeps_the_declared_state_axis(opset):
    _, report = optimize_with_report(_state_model(opset), quantize="static", static_shapes=True, dims={"batch": 2})
    record = next(r for r in report.passes if r.name == "quantize-static")
    assert "invalid dimensions" not in (record.detail or ""), record.detail
    assert record.status == "applied", (record.status, record.detail)


def _affine(batch: int | None = None) -> ir.Model:
    """``y = Relu(x @ W)`` with ``x [batch, 16]``; bound by ``--static-shapes`` to ``batch`` where given."""
    from passes.dim_binding import BindDimsPass

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [weight],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    if batch is not None:
        BindDimsPass({"batch": batch})(model)
    return model


@pytest.mark.parametrize("batch", [None, 3])
def test_compare_counts_each_sample_of_a_shared_whole_batch(batch):
    from optimizer.samples import shared_samples

    rng = np.random.default_rng(1)
    measured = {"x": rng.normal(size=(3, 16)).astype(np.float32)}
    fitted = {"x": np.concatenate([measured["x"], rng.normal(size=(3, 16)).astype(np.float32)])}
    # --static-shapes bound the batch to the 3 samples of --inputs: all 3 are calibration's (it said "1 of").
    assert shared_samples(fitted, measured, _affine(batch)) == 3


@pytest.mark.parametrize("op", ["DynamicQuantizeMatMul", "MatMulIntegerToFloat"])
def test_fp16_of_a_dynamic_int8_model_feeds_the_float16_op_after_it_a_cast(op):

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-127, 127, size=(16, 16)).astype(np.int8), "wq")
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    a_zero = numpy_helper.from_array(np.array(0, np.uint8), "a_zero")
    if op == "DynamicQuantizeMatMul":
        nodes = [helper.make_node(op, ["x", "wq", "scale", "zero"], ["h"], domain="com.microsoft")]
    else:
        nodes = [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "x_scale", "x_zero"]),
            helper.make_node(op, ["xq", "wq", "x_scale", "scale", "x_zero", "zero"], ["h"], domain="com.microsoft"),
        ]
    graph = helper.make_graph(
        [*nodes, helper.make_node("Relu", ["h"], ["y"])],
        "dynamic_int8",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [weight, scale, zero, a_zero],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = ir.from_proto(helper.make_model(graph, opset_imports=opsets))
    assert next(n for n in model.graph if n.op_type == op).outputs[0].dtype is None  # as ORT's files have it
    _, report = optimize_with_report(model, fp16=True, target="cuda")
    record = next(r for r in report.passes if r.name == "convert-float16")
    assert record.status == "applied", (record.status, record.detail)


def test_a_dynamic_quantize_matmul_output_is_never_typed_from_its_zero_point():
    # Input 3 of DynamicQuantizeMatMul is b_zero_point (int8), not a scale: with b_scale untyped it typed the float
    # output int8 (the diff2 review, read in the code).
    import onnx_ir as ir

    from passes.quantization.float16 import _quantized_outputs_typed

    a = ir.Value(name="a", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 4]))
    b = ir.Value(name="b", type=ir.TensorType(ir.DataType.INT8), shape=ir.Shape([4, 4]))
    scale = ir.Value(name="scale", shape=ir.Shape([4]))
    zero = ir.Value(name="zero", type=ir.TensorType(ir.DataType.INT8), shape=ir.Shape([4]))
    node = ir.Node("com.microsoft", "DynamicQuantizeMatMul", [a, b, scale, zero], num_outputs=1)
    graph = ir.Graph([a, b, scale, zero], node.outputs, nodes=[node], opset_imports={"": 17, "com.microsoft": 1})
    _quantized_outputs_typed(ir.Model(graph, ir_version=8))
    assert node.outputs[0].dtype is None
    scale.dtype = ir.DataType.FLOAT
    _quantized_outputs_typed(ir.Model(graph, ir_version=8))
    assert node.outputs[0].dtype == ir.DataType.FLOAT

"""A layer quantize-static keeps float stays float in ONNX Runtime.

ONNX Runtime's WeightBiasQuantization (ORT_ENABLE_BASIC and up) quantizes the float32 weight of
any Conv, ConvTranspose or Gemm whose data input comes from a per-tensor DequantizeLinear to
per-tensor int8: a layer kept float between int8 layers would run in int8 after all. The pass
gives such a layer a per-channel spelling of the same dequantization, which that rewrite skips.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from passes.quantization.static import _keep_float_layers_float
from tests.passes.quantization.graphs import _model, weights
from tests.passes.quantization.test_static_cnn import EXPANDED, _images, _quantized, mobile_net

_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}


def _session(model: ir.Model, level: str, optimized: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[level]
    if optimized:
        options.optimized_model_filepath = optimized
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(model: ir.Model, level: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return _session(model, level).run(None, feeds)[0]


def _weight_made_int8_by_ort(model: ir.Model, layer: str) -> bool:
    """Whether ONNX Runtime's basic rewrites give ``layer`` a weight dequantized from int8 (the Q they add on the
    float32 weight is folded into an int8 initializer)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "basic.onnx")
        _session(model, "basic", path)
        optimized = onnx.load(path)
    producers = {output: node for node in optimized.graph.node for output in node.output}
    node = next(node for node in optimized.graph.node if node.name == layer)
    source = producers.get(node.input[1])
    return source is not None and source.op_type == "DequantizeLinear"


def test_a_depthwise_conv_kept_float_between_int8_layers_reads_a_per_channel_dequantization_and_stays_float():
    result, quantization = _quantized(mobile_net(), exclude=["b1_depthwise"])
    assert "b1_depthwise" in quantization.kept_float
    graph = result.model.graph
    depthwise = next(node for node in graph if node.name == "b1_depthwise")
    source = depthwise.inputs[0].producer()
    assert source.op_type == "DequantizeLinear"
    assert source.attributes.get_int("axis") == 1
    scale = source.inputs[1].const_value.numpy()
    assert scale.shape == (EXPANDED,) and np.all(scale == scale[0])
    # Its weight is still the float initializer, and ONNX Runtime leaves it so.
    assert depthwise.inputs[1].const_value is not None and depthwise.inputs[1].producer() is None
    assert not _weight_made_int8_by_ort(result.model, "b1_depthwise")
    # ORT's basic rewrites change no value: the float layer computes what it did with them off.
    feeds = _images(4, seed=5)
    np.testing.assert_allclose(
        _run(result.model, "basic", feeds), _run(result.model, "disable", feeds), rtol=0, atol=1e-6
    )


def test_the_int8_layers_still_share_the_per_tensor_dequantization_and_run_as_qlinearconv():
    from tests.passes.quantization.conftest import ort_op_counts

    result, _ = _quantized(mobile_net(), exclude=["b1_depthwise"])
    ops = ort_op_counts(result.model)
    assert ops["QLinearConv"] == 6  # seven Convs, one kept float
    assert ops["Conv"] + ops["FusedConv"] == 1


def _dequantized_gemm(weight_int8: bool) -> ir.Model:
    """``x [B, 8]`` → QuantizeLinear → DequantizeLinear (one scale) → Gemm (transB) → QuantizeLinear →
    DequantizeLinear → ``y [B, 4]``: a float layer between int8 ones. The Gemm's weight a float32 initializer,
    or DequantizeLinear of int8 with ``weight_int8``. (ONNX Runtime 1.32 quantizes the weight only where the
    layer's result is quantized again.)"""
    w = weights(4, 8, seed=3, scale=0.5)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
    ]
    init = [("s", np.array(0.02, np.float32)), ("z", np.array(128, np.uint8)), ("b", weights(4, seed=4))]
    if weight_int8:
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], name="w_dq"))
        init += [("wq", np.rint(w / 0.01).astype(np.int8)), ("ws", np.array(0.01, np.float32))]
    else:
        init.append(("w", w))
    nodes += [
        helper.make_node("Gemm", ["xd", "w", "b"], ["g"], name="fc", transB=1),
        helper.make_node("QuantizeLinear", ["g", "s_out", "z"], ["gq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["gq", "s_out", "z"], ["y"], name="dq_out"),
    ]
    init.append(("s_out", np.array(0.05, np.float32)))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])
    return _model(nodes, [x], [y], init)


def test_onnxruntime_quantizes_a_float_gemm_behind_a_per_tensor_dequantization_and_the_per_channel_one_stops_it():
    feeds = {"x": np.random.default_rng(0).uniform(-2, 2, (6, 8)).astype(np.float32)}
    model = _dequantized_gemm(weight_int8=False)
    # What the rewrite guards against (if ONNX Runtime stops doing this, the guard is no longer needed).
    assert _weight_made_int8_by_ort(model, "fc")
    assert not np.allclose(_run(model, "basic", feeds), _run(model, "disable", feeds), rtol=0, atol=1e-6)
    shielded = _keep_float_layers_float(model.graph)
    assert [node.name for node in shielded] == ["fc"]
    assert not _weight_made_int8_by_ort(model, "fc")
    np.testing.assert_allclose(_run(model, "basic", feeds), _run(model, "disable", feeds), rtol=0, atol=1e-6)


def test_a_layer_whose_weight_is_already_dequantized_int8_is_left_alone():
    model = _dequantized_gemm(weight_int8=True)
    assert _keep_float_layers_float(model.graph) == []
    assert next(node for node in model.graph if node.name == "fc").inputs[0].name == "xd"

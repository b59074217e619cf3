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
import pytest
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


_AFTER_MAXPOOL = "/model/resnet/encoder/stages.0/layers.0/layer/layer.0/convolution/Conv"


def _resnet_with_the_conv_after_the_maxpool_float(monkeypatch=None):
    from optimizer.inputs import make_inputs
    from passes.quantization.static import StaticQuantizationPass
    from tests.helpers import FIXTURES

    model = ir.load(FIXTURES / "resnet_legacy.onnx")
    samples = make_inputs(model, {"batch": 8}, seed=4)
    quantization = StaticQuantizationPass(samples=samples, exclude=["*stages.0/layers.0/layer/layer.0/*"])
    result = quantization(model.clone())
    assert _AFTER_MAXPOOL in quantization.kept_float
    return model, samples, result


def test_a_conv_kept_float_behind_a_maxpool_gets_its_own_uint8_maxpool_and_stays_float():
    # ONNX Runtime moves a single-scale DequantizeLinear past a MaxPool (QDQ propagation), and then quantizes the
    # float Conv after it: the ResNet stem's pooled output feeds the first block's Conv that way.
    from tests.passes.quantization.conftest import ort_op_counts

    model, samples, result = _resnet_with_the_conv_after_the_maxpool_float()
    graph = result.model.graph
    conv = next(node for node in graph if node.name == _AFTER_MAXPOOL)
    own = conv.inputs[0].producer()
    assert own.op_type == "DequantizeLinear" and own.attributes.get_int("axis") == 1
    pool = own.inputs[0].producer()
    assert pool.op_type == "MaxPool" and pool.inputs[0].producer().op_type == "QuantizeLinear"
    assert not _weight_made_int8_by_ort(result.model, _AFTER_MAXPOOL)
    assert ort_op_counts(result.model)["QLinearConv"] == ort_op_counts(model)["Conv"] - 1
    from optimizer.inputs import make_inputs

    feeds = make_inputs(model, {"batch": 2}, seed=9)
    np.testing.assert_allclose(
        _run(result.model, "basic", feeds), _run(result.model, "disable", feeds), rtol=0, atol=1e-6
    )


def test_verification_refuses_a_float_conv_that_onnxruntime_would_quantize_through_a_maxpool(monkeypatch):
    from optimizer.inputs import make_inputs
    from optimizer.qdq_rewrites import layers_quantized_by_onnxruntime
    from optimizer.verify import Verifier
    from passes.quantization import static

    monkeypatch.setattr(static, "_keep_float_layers_float", lambda graph: [])
    model, samples, result = _resnet_with_the_conv_after_the_maxpool_float()
    assert [node.name for node in layers_quantized_by_onnxruntime(result.model)] == [_AFTER_MAXPOOL]
    verifier = Verifier(model, [make_inputs(model, {}, seed=5)], samples=samples)
    verdict = verifier._check_integer_end_to_end(result.model, result.twin, "missed end to end")
    assert not verdict.ok and "WeightBiasQuantization" in verdict.error and _AFTER_MAXPOOL in verdict.error


def test_a_scale_of_shape_one_is_a_single_scale_as_onnxruntime_reads_it():
    from optimizer.qdq_rewrites import one_scale

    def scale(array: np.ndarray) -> ir.Value:
        return ir.Value(name="s", shape=ir.Shape(array.shape), const_value=ir.tensor(array))

    assert one_scale(scale(np.array(0.1, np.float32))) and one_scale(scale(np.array([0.1], np.float32)))
    assert not one_scale(scale(np.full(4, 0.1, np.float32)))
    assert one_scale(ir.Value(name="s", const_value=ir.tensor(np.array([0.1], np.float32))))  # shape from the constant


def test_unnamed_layers_get_unique_names():
    model = _dequantized_gemm(weight_int8=False)
    proto = ir.to_proto(model)
    gemm = next(node for node in proto.graph.node if node.op_type == "Gemm")
    twin = onnx.helper.make_node("Gemm", ["xd", "w", "b"], ["g2"], transB=1)
    gemm.name = ""
    # Its result quantized again too, as ONNX Runtime requires before it quantizes a float layer's weight.
    requantized = [
        onnx.helper.make_node("QuantizeLinear", ["g2", "s_out", "z"], ["g2q"]),
        onnx.helper.make_node("DequantizeLinear", ["g2q", "s_out", "z"], ["y2"]),
    ]
    proto.graph.node.extend([twin, *requantized])
    proto.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["B", 4]))
    model = ir.from_proto(proto)
    assert len(_keep_float_layers_float(model.graph)) == 2
    onnx.checker.check_model(ir.to_proto(model))
    names = [node.name for node in model.graph if node.name]
    assert len(names) == len(set(names))


def test_the_twin_check_refuses_a_float_conv_that_onnxruntime_would_quantize(monkeypatch):
    # Whatever end to end and the segments say: cut at the layer's output, the segment check cannot see it.
    from optimizer.inputs import make_inputs
    from optimizer.verify import Verifier
    from passes.quantization import static

    monkeypatch.setattr(static, "_keep_float_layers_float", lambda graph: [])
    model, samples, result = _resnet_with_the_conv_after_the_maxpool_float()
    verdict = Verifier(model, [make_inputs(model, {}, seed=5)], samples=samples).check_twin(
        result.model, result.twin, base=model
    )
    assert not verdict.ok and "WeightBiasQuantization" in verdict.error


def _three_convs(between: list, extra: list, conv2_input: str, conv2_pads: list[int]) -> ir.Model:
    """``x [B, 3, 12, 12]`` → conv1 + Relu → ``between`` ops → conv2 + Relu → conv3 → ``y``."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        *between,
        helper.make_node("Conv", [conv2_input, "w2", "b2"], ["c2"], name="conv2", pads=conv2_pads),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="conv3"),
    ]
    init = [
        ("w1", weights(8, 3, 3, 3, seed=1, scale=0.4)),
        ("b1", weights(8, seed=2)),
        ("w2", weights(8, 8, 3, 3, seed=3, scale=0.3)),
        ("b2", weights(8, seed=4)),
        ("w3", weights(4, 8, 1, 1, seed=5, scale=0.3)),
        ("b3", weights(4, seed=6)),
        *extra,
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 12, 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4, 12, 12])
    return _model(nodes, [x], [y], init)


@pytest.mark.parametrize("between", ["identity", "dropout", "pad", "cast"])
def test_a_conv_kept_float_behind_ops_onnxruntime_removes_stays_float(between):
    # ONNX Runtime removes an Identity or a Dropout and folds a Pad into the Conv after it, then quantizes
    # that Conv's float weight as if it read the DequantizeLinear directly.
    from passes.quantization.static import StaticQuantizationPass

    cases = {
        "identity": ([helper.make_node("Identity", ["r1"], ["between"], name="id")], [], [1, 1, 1, 1]),
        "dropout": ([helper.make_node("Dropout", ["r1"], ["between"], name="drop")], [], [1, 1, 1, 1]),
        "cast": ([helper.make_node("Cast", ["r1"], ["between"], name="cast", to=TensorProto.FLOAT)], [], [1, 1, 1, 1]),
        "pad": (
            [helper.make_node("Pad", ["r1", "pads"], ["between"], name="pad")],
            [("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))],
            [0, 0, 0, 0],
        ),
    }
    ops, extra, pads = cases[between]
    model = _three_convs(ops, extra, "between", pads)
    samples = {"x": np.random.default_rng(0).standard_normal((16, 3, 12, 12)).astype(np.float32)}
    quantization = StaticQuantizationPass(samples=samples, method="minmax", exclude=["conv2"], quantize_outputs=True)
    result = quantization(model)
    assert quantization.kept_float == ["conv2"]
    assert not _weight_made_int8_by_ort(result.model, "conv2")
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype(np.float32)}
    np.testing.assert_allclose(
        _run(result.model, "basic", feeds), _run(result.model, "disable", feeds), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
def test_a_qdq_layer_the_input_model_already_had_is_not_blamed_on_the_pass(named):
    # The user's model holds a QDQ Conv with a float weight; quantize-dynamic then rewrites its MatMul.
    from optimizer.verify import Verifier
    from passes.quantization.dynamic import DynamicQuantizationPass

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        helper.make_node("Conv", ["xd", "w"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="q2"),
        helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"], name="dq2"),
        helper.make_node("Reshape", ["cd", "shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc"], ["y"], name="fc"),
    ]
    init = [
        ("s", np.array(0.05, np.float32)),
        ("z", np.array(128, np.uint8)),
        ("w", weights(8, 8, 1, 1, seed=1)),
        ("fc", weights(128, 16, seed=2)),
        ("shape", np.array([-1, 128], np.int64)),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 16])
    if not named:  # the pass names its copy's nodes; the input's stay unnamed
        for node in nodes:
            node.name = ""
    model = _model(nodes, [x], [y], init)
    samples = {"x": np.random.default_rng(0).standard_normal((8, 8, 4, 4)).astype(np.float32)}
    result = DynamicQuantizationPass(samples=samples, quantize_outputs=True)(model.clone())
    assert result.modified
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 8, 4, 4)).astype(np.float32)}
    verdict = Verifier(model, [feeds], samples=samples).check_twin(result.model, result.twin, base=model)
    assert "WeightBiasQuantization" not in (verdict.error or "")


@pytest.mark.parametrize(
    ("case", "removed"),
    [
        ("constant 0", True),
        ("reflect", False),
        ("constant 0.5", False),
        ("channel axis", False),
        ("axes input", False),
        ("negative pads", False),
        ("empty pad value", False),
        ("dropout", True),
        ("dropout training", True),  # an inference session drops nothing in either mode
        ("identity", True),
        ("cast to float", True),
        ("cast to half", False),
    ],
)
def test_only_what_onnxruntime_takes_out_before_a_layer_is_looked_through(case, removed):
    # A reflect Pad, one of another value or on the channels stays in ONNX Runtime: the layer after it keeps its
    # float weight, and verification must not refuse it.
    from optimizer.qdq_rewrites import removed_by_onnxruntime

    def const(name, array):
        return ir.Value(name=name, const_value=ir.tensor(np.asarray(array)))

    pads = const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    x = ir.Value(name="x")
    float_x = ir.Value(name="xf", type=ir.TensorType(ir.DataType.FLOAT))
    nodes = {
        "constant 0": ir.Node("", "Pad", [x, pads]),
        "reflect": ir.Node("", "Pad", [x, pads], attributes=[ir.AttrString("mode", "reflect")]),
        "constant 0.5": ir.Node("", "Pad", [x, pads, const("v", np.array(0.5, np.float32))]),
        "channel axis": ir.Node("", "Pad", [x, const("p", np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64))]),
        "axes input": ir.Node("", "Pad", [x, const("p2", np.array([1, 1], np.int64)), None, const("a", np.array([2]))]),
        "negative pads": ir.Node("", "Pad", [x, const("n", np.array([0, 0, 0, 0, 0, 0, -1, -1], np.int64))]),
        "empty pad value": ir.Node("", "Pad", [x, pads, ir.Value(name="")]),
        "cast to float": ir.Node("", "Cast", [float_x], attributes=[ir.AttrInt64("to", 1)]),
        "cast to half": ir.Node("", "Cast", [float_x], attributes=[ir.AttrInt64("to", 10)]),
        "dropout": ir.Node("", "Dropout", [x]),
        "dropout training": ir.Node("", "Dropout", [x, None, const("t", np.array(True))]),
        "identity": ir.Node("", "Identity", [x]),
    }
    assert removed_by_onnxruntime(nodes[case]) is removed


def test_a_conv_after_a_maxpool_of_an_int8_output_is_timed_with_uint8_in_and_out():
    # ONNX Runtime runs QLinearConv -> MaxPool (uint8) -> QLinearConv with no conversion between.
    from passes._layers import find_layers
    from passes.quantization._base import _sample_input_shapes
    from passes.quantization.static import StaticQuantizationPass

    model = _three_convs(
        [helper.make_node("MaxPool", ["r1"], ["pooled"], name="pool", kernel_shape=[1, 1])], [], "pooled", [1, 1, 1, 1]
    )
    samples = {"x": np.random.default_rng(0).standard_normal((8, 3, 12, 12)).astype(np.float32)}
    quantization = StaticQuantizationPass(samples=samples, method="minmax", quantize_outputs=True)
    layers = find_layers(model.graph, ("conv",))[0]
    batches = [samples]
    quantization.prepare(model, layers, batches)
    inputs = _sample_input_shapes(model, layers, batches)
    shapes = {layer.name: quantization.speed_shape(layer, *inputs[layer.activation.name]) for layer in layers}
    assert shapes["conv1"].quantized_output and shapes["conv2"].quantized_input
    assert not shapes["conv1"].quantized_input  # the float input x
    assert not shapes["conv3"].quantized_output  # a graph output


def test_a_new_float_layer_sharing_an_old_ones_weight_is_still_refused():
    # Tied layers share a weight's name; a float layer the pass adds behind a DequantizeLinear is its own.
    from optimizer.verify import _float_layer_quantized_by_onnxruntime

    def model(second: bool) -> ir.Model:
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
            helper.make_node("Conv", ["xd", "w"], ["a"], name="convA"),
        ]
        outputs = ["a"]
        if second:
            nodes.append(helper.make_node("Conv", ["xd", "w"], ["b"], name="convB"))
            outputs.append("b")
        for name in list(outputs):  # results quantized again, as ONNX Runtime requires to quantize a float layer
            nodes.append(helper.make_node("QuantizeLinear", [name, "s", "z"], [f"{name}q"], name=f"{name}_q"))
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}q", "s", "z"], [f"{name}d"], name=f"{name}_dq"))
        outputs = [f"{name}d" for name in outputs]
        init = [("s", np.array(0.05, np.float32)), ("z", np.array(128, np.uint8)), ("w", weights(8, 8, 1, 1, seed=1))]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8, 4, 4])
        ys = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", 8, 4, 4]) for name in outputs]
        return _model(nodes, [x], ys, init)

    assert _float_layer_quantized_by_onnxruntime(model(False), model(False)) == ""
    assert "'convB'" in _float_layer_quantized_by_onnxruntime(model(True), model(False))

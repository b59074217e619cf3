"""quantize-static on a MobileNet-style CNN: QDQ placed so ONNX Runtime runs it in integer kernels end to end.

The fixture is EfficientNet-Lite's shape in miniature: a stem Conv + ReLU6 (Clip 0..6),
two inverted-residual blocks (1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 project)
whose residual Adds chain (the second block's input is the first one's Add), then
global pooling and a classifier.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from optimizer.runtime import inference_session, run_session
from optimizer.verify import TWIN_TOLERANCES, compare_outputs
from passes.quantization.static import StaticQuantizationPass
from tests.passes.quantization.conftest import drift, ort_op_counts
from tests.passes.quantization.graphs import _model, weights

CHANNELS, EXPANDED = 8, 16


def _block(index: int, source: str, nodes: list, init: list, *, clip_low: float = 0.0) -> str:
    """An inverted-residual block reading ``source``; returns its output (the residual Add)."""
    name = f"b{index}"
    nodes += [
        helper.make_node("Conv", [source, f"{name}_we", f"{name}_be"], [f"{name}_e"], name=f"{name}_expand"),
        helper.make_node("Clip", [f"{name}_e", f"{name}_low", "six"], [f"{name}_er"], name=f"{name}_relu6_expand"),
        helper.make_node(
            "Conv",
            [f"{name}_er", f"{name}_wd", f"{name}_bd"],
            [f"{name}_d"],
            name=f"{name}_depthwise",
            group=EXPANDED,
            pads=[1, 1, 1, 1],
            kernel_shape=[3, 3],
        ),
        helper.make_node("Clip", [f"{name}_d", "zero", "six"], [f"{name}_dr"], name=f"{name}_relu6_depthwise"),
        helper.make_node("Conv", [f"{name}_dr", f"{name}_wp", f"{name}_bp"], [f"{name}_p"], name=f"{name}_project"),
        helper.make_node("Add", [source, f"{name}_p"], [f"{name}_out"], name=f"{name}_residual"),
    ]
    seed = 20 + 10 * index
    init += [
        (f"{name}_low", np.array(clip_low, np.float32)),
        (f"{name}_we", weights(EXPANDED, CHANNELS, 1, 1, seed=seed, scale=0.4)),
        (f"{name}_be", weights(EXPANDED, seed=seed + 1)),
        (f"{name}_wd", weights(EXPANDED, 1, 3, 3, seed=seed + 2, scale=0.4)),
        (f"{name}_bd", weights(EXPANDED, seed=seed + 3)),
        (f"{name}_wp", weights(CHANNELS, EXPANDED, 1, 1, seed=seed + 4, scale=0.3)),
        (f"{name}_bp", weights(CHANNELS, seed=seed + 5)),
    ]
    return f"{name}_out"


def mobile_net(*, clip_low: float = 0.0, dead_channel: bool = False, relu_after_add: bool = False) -> ir.Model:
    """``x [B, 3, 16, 16]`` → stem Conv + ReLU6 → two inverted-residual blocks → pool → Gemm ``y``.

    ``clip_low`` is the first block's expand Clip minimum (0 for ReLU6); ``dead_channel``
    makes one stem channel's weights 1e-9 with a bias of 0.5 (a folded BatchNorm's dead channel);
    ``relu_after_add`` puts a Relu after the first residual Add, as ResNet blocks have.
    """
    stem = weights(CHANNELS, 3, 3, 3, seed=9, scale=0.3)
    stem_bias = weights(CHANNELS, seed=10)
    if dead_channel:
        stem[3] = 1e-9
        stem_bias[3] = 0.5
    nodes = [
        helper.make_node("Conv", ["x", "ws", "bs"], ["s"], name="stem", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Clip", ["s", "zero", "six"], ["sr"], name="stem_relu6"),
    ]
    init = [("zero", np.array(0.0, np.float32)), ("six", np.array(6.0, np.float32)), ("ws", stem), ("bs", stem_bias)]
    first = _block(1, "sr", nodes, init, clip_low=clip_low)
    if relu_after_add:
        nodes.append(helper.make_node("Relu", [first], ["b1_relu"], name="b1_residual_relu"))
        first = "b1_relu"
    second = _block(2, first, nodes, init)
    nodes += [
        helper.make_node("GlobalAveragePool", [second], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["y"], name="classifier", transB=1),
    ]
    init += [("fc", weights(5, CHANNELS, seed=13)), ("fcb", weights(5, seed=14))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 5])
    return _model(nodes, [x], [y], init)


def _images(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((count, 3, 16, 16)).astype(np.float32)}


def _quantized(model: ir.Model, **options):
    quantization = StaticQuantizationPass(samples=_images(32, 0), method="minmax", **options)
    return quantization(model.clone()), quantization


def _users(graph: ir.Graph, op_type: str) -> list[ir.Node]:
    return [node for node in graph if node.op_type == op_type]


def test_relu6_and_residual_adds_sit_between_quantize_pairs_so_ort_runs_integer_kernels_end_to_end():
    model = mobile_net()
    result, quantization = _quantized(model)
    graph = result.model.graph
    assert len(quantization.quantized) == 7
    # Each ReLU6 reads its Conv directly and feeds only a QuantizeLinear (no pair between Conv and Clip)...
    for clip in _users(graph, "Clip"):
        assert clip.inputs[0].producer().op_type == "Conv"
        assert [user.op_type for user, _ in clip.outputs[0].uses()] == ["QuantizeLinear"]
    # ...and each residual Add reads two dequantized tensors and is requantized.
    for add in _users(graph, "Add"):
        assert [value.producer().op_type for value in add.inputs] == ["DequantizeLinear"] * 2
        assert [user.op_type for user, _ in add.outputs[0].uses()] == ["QuantizeLinear"]
    ops = ort_op_counts(result.model)
    # ORT's optimized graph: every Conv a QLinearConv (the Clips folded into their output
    # scale), every Add a QLinearAdd; float only at the edges: the input's Quantize and
    # the Dequantize before the pooling and the float classifier.
    assert ops["QLinearConv"] == 7 and ops["QLinearAdd"] == 2
    assert ops["Conv"] == ops["FusedConv"] == ops["Clip"] == ops["Add"] == 0
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1
    assert drift(model, result.model, _images(8, 5)).cosine > 0.995


def test_the_twin_clamps_with_the_activation_and_requantizes_the_adds_as_the_result_does():
    model = mobile_net()
    result, _ = _quantized(model)
    twin = result.twin.model
    # The twin keeps the Clip (ORT drops it in the result: exact, since uint8 at zero point 0
    # saturates at or below 6) and puts its pair after it, and after each Add.
    for clip in _users(twin.graph, "Clip"):
        assert [user.op_type for user, _ in clip.outputs[0].uses()] == ["QuantizeLinear"]
    for add in _users(twin.graph, "Add"):
        assert [user.op_type for user, _ in add.outputs[0].uses()] == ["QuantizeLinear"]
    assert not {"QLinearConv", "QLinearAdd"} & {node.op_type for node in twin.graph}
    feeds = _images(6, 7)
    with inference_session(twin, optimization_level="disable_all") as session:
        expected = run_session(session, feeds)
    with inference_session(result.model, optimization_level="all") as session:
        actual = run_session(session, feeds)
    tolerance = TWIN_TOLERANCES["int8"]
    assert compare_outputs(expected, actual, {"float32": tolerance, "float16": tolerance}).ok
    # A twin that skipped the residual Add's requantization is not what the result computes.
    skipped = twin.clone()
    for add in _users(skipped.graph, "Add"):
        quantize = next(user for user, _ in add.outputs[0].uses())
        dequantize = next(user for user, _ in quantize.outputs[0].uses())
        dequantize.outputs[0].replace_all_uses_with(add.outputs[0])
    with inference_session(skipped, optimization_level="disable_all") as session:
        unquantized = run_session(session, feeds)
    assert np.abs(unquantized["y"] - expected["y"]).max() > 1e-4


def test_a_clip_that_does_not_start_at_zero_keeps_the_pair_on_the_conv_output():
    model = mobile_net(clip_low=-1.0)
    result, _ = _quantized(model)
    graph = result.model.graph
    near_miss = next(node for node in graph if node.name == "b1_relu6_expand")
    # Not folded into the output scale: the Conv's output gets its own pair before the Clip.
    assert near_miss.inputs[0].producer().op_type == "DequantizeLinear"
    others = [clip for clip in _users(graph, "Clip") if clip is not near_miss]
    assert all(clip.inputs[0].producer().op_type == "Conv" for clip in others)
    assert ort_op_counts(result.model)["QLinearConv"] == 7
    assert drift(model, result.model, _images(8, 5)).cosine > 0.995


def test_an_add_with_a_float_input_is_not_requantized():
    model = mobile_net()
    # The first residual now adds the model input's first 8 channels... of a float tensor:
    # an Add whose one input is not int8 stays float (and so does the second, reading it).
    graph = model.graph
    stem_relu = next(node for node in graph if node.name == "stem_relu6")
    residual = next(node for node in graph if node.name == "b1_residual")
    copy = ir.Node("", "Identity", [stem_relu.outputs[0]], name="float_copy")
    copy.outputs[0].name, copy.outputs[0].shape, copy.outputs[0].type = "sr_copy", None, stem_relu.outputs[0].type
    graph.insert_after(stem_relu, copy)
    residual.replace_input_with(0, copy.outputs[0])
    result, _ = _quantized(model)
    adds = _users(result.model.graph, "Add")
    assert all(add.outputs[0].uses() and not _requantized(add) for add in adds)
    ops = ort_op_counts(result.model)
    assert ops["QLinearAdd"] == 0 and ops["QLinearConv"] == 7
    assert drift(model, result.model, _images(8, 5)).cosine > 0.995


def test_a_dead_channel_with_a_bias_gets_a_larger_weight_scale_and_keeps_an_int32_bias():
    model = mobile_net(dead_channel=True)
    result, quantization = _quantized(model)
    graph = result.model.graph
    assert "stem.bias_int32" in graph.initializers
    assert not any("bias kept float" in note for note in result.notes)
    scale = graph.initializers["stem.weight_scale"].const_value.numpy()
    weight = graph.initializers["stem.weight_int8"].const_value.numpy()
    # its scale was raised from 1e-9 / 127 until the bias fit int32, and its weights round to 0
    assert scale[3] > 1e-9 and not weight[3].any()
    assert ort_op_counts(result.model)["QLinearConv"] == 7
    assert drift(model, result.model, _images(8, 5)).cosine > 0.995


def _requantized(add: ir.Node) -> bool:
    return collections.Counter(user.op_type for user, _ in add.outputs[0].uses()) == {"QuantizeLinear": 1}


def test_a_conv_bias_takes_back_the_int8_weights_mean_error_on_its_calibrated_input():
    model = mobile_net()
    samples = _images(32, 0)
    samples["x"] += np.linspace(0.5, 2.0, 3, dtype=np.float32).reshape(1, 3, 1, 1)  # inputs with nonzero means
    result = StaticQuantizationPass(samples=samples, method="minmax")(model.clone())
    graph = result.model.graph
    weight = graph.initializers["stem.weight_int8"].const_value.numpy().astype(np.float64)
    weight *= graph.initializers["stem.weight_scale"].const_value.numpy().reshape(-1, 1, 1, 1)
    original = model.graph.initializers["ws"].const_value.numpy().astype(np.float64)
    bias = model.graph.initializers["bs"].const_value.numpy().astype(np.float64)
    # the stem reads the model input: E[x] per channel is the samples' own mean
    shift = (weight - original).sum(axis=(2, 3)) @ samples["x"].astype(np.float64).mean(axis=(0, 2, 3))
    stored = graph.initializers["stem.bias_int32"].const_value.numpy().astype(np.float64)
    step = graph.initializers["stem.bias_scale"].const_value.numpy().astype(np.float64)
    assert np.abs(stored * step - (bias - shift)).max() <= 0.51 * step.max()
    assert np.abs(shift).max() > 2 * step.max()  # the correction is more than the bias's own rounding
    assert compare_twin(result, samples)


def compare_twin(result, feeds: dict[str, np.ndarray]) -> bool:
    """The result at ORT_ENABLE_ALL computes its twin as written, at the int8 tolerance."""
    with inference_session(result.twin.model, optimization_level="disable_all") as session:
        expected = run_session(session, feeds)
    with inference_session(result.model, optimization_level="all") as session:
        actual = run_session(session, feeds)
    tolerance = TWIN_TOLERANCES["int8"]
    return compare_outputs(expected, actual, {"float32": tolerance, "float16": tolerance}).ok


def test_a_relu_after_a_residual_add_is_folded_into_its_requantization_like_a_convs():
    model = mobile_net(relu_after_add=True)
    result, _ = _quantized(model)
    relu = next(node for node in result.model.graph if node.name == "b1_residual_relu")
    assert relu.inputs[0].producer().op_type == "Add"
    assert [user.op_type for user, _ in relu.outputs[0].uses()] == ["QuantizeLinear"]
    ops = ort_op_counts(result.model)
    assert ops["QLinearAdd"] == 2 and ops["QLinearConv"] == 7 and ops["Relu"] == ops["Add"] == 0
    assert compare_twin(result, _images(6, 7))


def test_through_the_pipeline_a_pad_before_the_depthwise_conv_is_folded_and_nothing_float_is_left_between():
    from optimizer.api import optimize_with_report

    model = mobile_net()
    # the legacy exporter's spelling of padding="same": an explicit zero Pad, the Conv unpadded
    graph = model.graph
    depthwise = next(node for node in graph if node.name == "b1_depthwise")
    pads = ir.Value(name="dw_pads", const_value=ir.tensor(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)))
    graph.register_initializer(pads)
    depthwise.inputs[0].shape = ir.Shape(["B", EXPANDED, 16, 16])  # exporters record it; the fold needs the rank
    pad = ir.Node("", "Pad", [depthwise.inputs[0], pads], name="b1_pad")
    pad.outputs[0].name, pad.outputs[0].type = "b1_padded", depthwise.inputs[0].type
    pad.outputs[0].shape = ir.Shape(["B", EXPANDED, 18, 18])
    graph.insert_before(depthwise, pad)
    depthwise.replace_input_with(0, pad.outputs[0])
    depthwise.attributes["pads"] = ir.AttrInt64s("pads", [0, 0, 0, 0])
    result, report = optimize_with_report(model, ["+quantize-static"], calibration=_images(32, 0), raise_errors=True)
    assert next(r for r in report.passes if r.name == "quantize-static").status == "applied"
    assert "Pad" not in {node.op_type for node in result.graph}
    ops = ort_op_counts(result)
    assert ops["QLinearConv"] == 7 and ops["QLinearAdd"] == 2 and ops["Pad"] == ops["Clip"] == ops["Add"] == 0


def test_the_notes_count_the_folded_activations_and_requantized_adds_and_say_why_not():
    result, _ = _quantized(mobile_net(clip_low=-1.0))
    folded = "4 of 5 Conv activations (Relu, Clip) folded into the requantization after them; the others are not"
    assert any(note.startswith(folded) for note in result.notes)
    assert "2 of 2 Adds read two int8 tensors and are requantized with them (QLinearAdd)" in result.notes


def test_with_a_budget_the_notes_say_their_counts_are_for_every_layer_int8():
    # The budget may keep some of these layers float afterwards (its own notes say which); the counts are made
    # before, for every layer int8, and say so.
    from optimizer.accuracy import AccuracyBudget

    quantization = StaticQuantizationPass(
        samples=_images(48, 0), method="minmax", budget=AccuracyBudget(min_cosine=0.9)
    )
    result = quantization(mobile_net())
    notes = " ".join(result.notes)
    assert "with every layer int8, 5 of 5 Conv activations (Relu, Clip) folded" in notes
    assert "with every layer int8, 2 of 2 Adds read two int8 tensors" in notes

"""split-conv-padding: a tall (k×1) Conv's padding as its own Pad with axes, only where timed faster; ONNX Runtime
keeps such a Pad apart, and simplify-ops leaves it so. Nothing here times anything: the timings are injected."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from passes.conv_padding import PaddingSpeed, SplitConvPaddingPass
from passes.op_simplification import SimplifyOpsPass
from tests.helpers import assert_same_outputs, op_types


def _tall_conv(kernel=(64, 1), pads=(31, 0, 32, 0), opset: int = 18, height="T") -> ir.Model:
    """``x [B, 4, T, 1]`` → Conv (8 filters of ``kernel``, ``pads``) → Relu → ``y``: CREPE's layout."""
    weight = np.random.default_rng(0).standard_normal((8, 4, *kernel)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=list(pads), name="conv"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "tall",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, height, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel())],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _speed(tmp_path, ratio: float, timed: list) -> PaddingSpeed:
    def measure(shape):
        timed.append(shape)
        return ratio

    return PaddingSpeed("cpu", 1, path=tmp_path / "timings.json", measure=measure)


def _signal(height: int = 128) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((2, 4, height, 1)).astype(np.float32)}


def test_padding_measured_faster_as_a_pad_is_split_out_exactly(tmp_path):
    timed: list = []
    original = _tall_conv(height=128)
    result = SplitConvPaddingPass(speed=_speed(tmp_path, 0.5, timed))(original.clone())
    assert result.modified and len(timed) == 1 and timed[0].height == 128
    assert op_types(result.model) == ["Pad", "Conv", "Relu"]
    pad, conv = list(result.model.graph)[:2]
    assert len(pad.inputs) == 4 and list(conv.attributes.get_ints("pads")) == [0, 0, 0, 0]
    assert_same_outputs(original, result.model, _signal())
    # ONNX Runtime keeps the Pad apart (a Pad without axes it folds back into the Conv when it loads the model).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    ort.InferenceSession(ir.to_proto(result.model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert [node.op_type for node in onnx.load(tmp_path / "loaded.onnx").graph.node].count("Pad") == 1
    # A second run keeps it: simplify-ops does not fold it back.
    again = SimplifyOpsPass()(result.model.clone())
    assert op_types(again.model)[:2] == ["Pad", "Conv"]


def test_padding_measured_no_faster_stays_inside_with_the_reason(tmp_path):
    result = SplitConvPaddingPass(speed=_speed(tmp_path, 1.2, []))(_tall_conv(height=128))
    assert not result.modified
    assert any("measured no faster on cpu (1.20x its time)" in line for line in result.refusals), result.refusals


def test_a_square_kernel_is_not_timed(tmp_path):
    timed: list = []
    result = SplitConvPaddingPass(speed=_speed(tmp_path, 0.5, timed))(_tall_conv(kernel=(5, 5), pads=(2, 2, 2, 2)))
    assert not result.modified and not timed and not result.refusals


def test_below_opset_18_a_measured_split_converts_the_model_to_18(tmp_path):
    original = _tall_conv(opset=17, height=128)
    result = SplitConvPaddingPass(speed=_speed(tmp_path, 0.5, []))(original.clone())
    assert result.modified and result.model.opset_imports[""] == 18
    assert op_types(result.model) == ["Pad", "Conv", "Relu"]
    assert any("converted from opset 17 to 18" in note for note in result.notes), result.notes
    assert_same_outputs(original, result.model, _signal())
    unchanged = SplitConvPaddingPass(speed=_speed(tmp_path / "other", 1.2, []))(original.clone())
    assert not unchanged.modified and unchanged.model.opset_imports[""] == 17  # nothing faster: not converted


def test_a_conv_whose_length_is_not_known_is_not_timed(tmp_path):
    timed: list = []
    result = SplitConvPaddingPass(speed=_speed(tmp_path, 0.5, timed))(_tall_conv())  # T symbolic
    assert not result.modified and not timed
    assert any("spatial sizes are not known" in line for line in result.refusals), result.refusals


def test_a_timing_is_kept_per_machine_and_shape(tmp_path):
    timed: list = []
    speed = _speed(tmp_path, 0.5, timed)
    SplitConvPaddingPass(speed=speed)(_tall_conv(height=128))
    SplitConvPaddingPass(speed=speed)(_tall_conv(height=128))
    SplitConvPaddingPass(speed=speed)(_tall_conv(height=64))
    assert [shape.height for shape in timed] == [128, 64]

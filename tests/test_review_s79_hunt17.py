"""Review s79 (hunt 17): real models from PyPI, the softmax spellings and axes they showed.

apeer's nucleus segmenter (napari-czann-segment 0.1.2, tf2onnx 1.9.2, opset 12) ends in a Keras softmax over the
channels that tf2onnx wrote inside its NCHW layout, the change back to NHWC pushed between the ``Exp`` and the
``Div``: ``Transpose(e, [0, 2, 3, 1]) / Reshape(ReduceSum(e, axes=[1]), [-1, 1024, 1024, 1])``. ``fuse-softmax``
left it unfused (its ``Div`` reads no ``Exp``); it is now ``Softmax(Transpose(x), axis=3)``. The same softmax
written in NCHW and fused into ``Softmax(axis=1)`` is slower than the ops written out on ONNX Runtime's CPU: a
softmax over another axis than the last is refused (``tests/test_review_s68_late10.py`` and
``tests/test_review_s59_verify.py``, which held that fusion applied to check verification keeps it, fuse it by hand).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer
from optimizer.report import STATUS_APPLIED
from passes.fusion.softmax import SoftmaxFusion
from tests.helpers import assert_same_outputs, op_types

_SHAPE = [2, 3, 4, 5]  # NCHW logits, softmax over the 3 channels


def _tf2onnx_softmax(*, layout: str = "Reshape", order=(0, 2, 3, 1), target=(-1, 4, 5, 1), opset: int = 12):
    """tf2onnx's channel softmax of an NHWC model: ``Transpose(e, order) / layout(ReduceSum(e, axes=[1]))``."""
    sum_axes = {"axes": [1]} if opset < 13 else {}
    sum_inputs = ["e"] if opset < 13 else ["e", "channels"]
    max_axes = {"axes": [1]} if opset < 18 else {}
    max_inputs = ["x"] if opset < 18 else ["x", "channels"]
    nodes = [
        helper.make_node("ReduceMax", max_inputs, ["peak"], keepdims=1, **max_axes),
        helper.make_node("Sub", ["x", "peak"], ["shifted"]),
        helper.make_node("Exp", ["shifted"], ["e"]),
        helper.make_node("Transpose", ["e"], ["moved"], perm=list(order)),
        helper.make_node("ReduceSum", sum_inputs, ["total"], keepdims=1, **sum_axes),
        helper.make_node("Reshape", ["total", "target"], ["laid"])
        if layout == "Reshape"
        else helper.make_node("Transpose", ["total"], ["laid"], perm=list(order)),
        helper.make_node("Div", ["moved", "laid"], ["y"]),
    ]
    weights = [
        numpy_helper.from_array(np.array(target, np.int64), "target"),
        numpy_helper.from_array(np.array([1], np.int64), "channels"),
    ]
    graph = helper.make_graph(
        nodes,
        "nucleus_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, _SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        weights,
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _logits() -> dict[str, np.ndarray]:
    return {"x": (np.random.default_rng(0).standard_normal(_SHAPE) * 4).astype(np.float32)}


@pytest.mark.parametrize("layout", ["Reshape", "Transpose"])
@pytest.mark.parametrize("opset", [12, 18])
def test_tf2onnx_channel_softmax_behind_its_layout_change_becomes_a_last_axis_softmax(layout, opset):
    # Before: unchanged, its Div's numerator a Transpose of the Exp and its denominator a Reshape of the sum.
    original = _tf2onnx_softmax(layout=layout, opset=opset)
    model = _tf2onnx_softmax(layout=layout, opset=opset)
    result = SoftmaxFusion()(model)
    assert result.modified
    assert op_types(result.model) == ["Transpose", "Softmax"]
    (softmax,) = [node for node in result.model.graph if node.op_type == "Softmax"]
    assert softmax.attributes.get_int("axis") == 3
    assert_same_outputs(original, result.model, _logits())


@pytest.mark.parametrize(
    "options",
    [
        {"order": (0, 2, 1, 3), "target": (-1, 4, 3, 5)},  # the reduced axis not moved last
        {"target": (-1, 5, 4, 1)},  # a Reshape that is not the sum's transpose
        {"order": (0, 3, 2, 1), "target": (-1, 5, 4, 1)},  # the other axes reordered: a Reshape moves elements
        {"target": (0, 4, 5, 1)},  # a copied dim
    ],
    ids=["axis not last", "other target", "other axes reordered", "copied dim"],
)
def test_near_misses_of_the_transposed_softmax_are_left_alone(options):
    model = _tf2onnx_softmax(**options)
    result = SoftmaxFusion()(model)
    assert not result.modified
    assert "Softmax" not in op_types(result.model)


def _nchw_channel_softmax(opset: int = 13) -> onnx.ModelProto:
    """A segmentation head's softmax over the channels of ``[1, 2, 64, 64]`` logits, written out in NCHW."""
    nodes = [
        helper.make_node("ReduceMax", ["x", "channels"], ["peak"], keepdims=1)
        if opset >= 18
        else helper.make_node("ReduceMax", ["x"], ["peak"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["x", "peak"], ["shifted"]),
        helper.make_node("Exp", ["shifted"], ["e"]),
        helper.make_node("ReduceSum", ["e", "channels"], ["total"], keepdims=1),
        helper.make_node("Div", ["e", "total"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "channel_softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 64, 64])],
        [numpy_helper.from_array(np.array([1], np.int64), "channels")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_a_channel_softmax_is_not_fused_into_a_slower_softmax(tmp_path):
    # ONNX Runtime's CPU Softmax (1.32) moves a non-last axis last and back: over the channels of [1, 2, 1024, 1024]
    # logits at one thread 382 ms against 124 ms for the five ops, [1, 6, 128, 128] 1.49 ms against 0.20 ms.
    source = tmp_path / "in.onnx"
    onnx.save(_nchw_channel_softmax(), source)
    _, report = optimizer.optimize_with_report(source, ["fuse-softmax"], output=tmp_path / "out.onnx")
    (record,) = [record for record in report.passes if record.name == "fuse-softmax"]
    assert record.status != STATUS_APPLIED
    assert "Softmax" not in op_types(ir.load(tmp_path / "out.onnx"))
    assert any("not over the last axis" in line for line in record.refusals), record.refusals

"""Review s63 (late): the second binding's lengths drawn apart (``optimizer.inputs.lengths_apart``).

1. Drawn 2 shorter per group, a length reached 1, and a length of one broadcasts against any other: with
   ``--max-sequence 4`` the shorter binding gave three tokens beside a ``[batch, 1]`` mask (``x_len=3,
   mask_len=1``), which ONNX Runtime runs, and that set replaced the equal binding (3 tokens under a mask padded
   per row). A rewrite that reads every row's mask off the first row (wrong on any padded batch) verified: the
   only padded set left was the batch-of-one padded copy, and the second binding's one-column mask pads nothing.
2. Batches named apart stayed equal in every set: a two-tower model's ``text_batch_size`` and
   ``image_batch_size`` were 1 and 1, then 2 and 2, and a rewrite reading the image batch off the text batch
   verified (lengths named apart were drawn apart; batches were left out as batch-like dims).
3. At the exact half (a detector whose feature maps must halve evenly, tried where 257 and 65 are refused) the
   lengths stayed equal: Ultralytics names a YOLO's ``height`` and ``width`` apart, it was verified at 128 x 128
   and 64 x 64 only (64 beside 62 fails as 65 does), and a rewrite reading the height for the width verified.
   Now the next length is half the last there (64 x 32).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

import optimizer
from optimizer.inputs import lengths_apart
from optimizer.protocol import NotedResult
from optimizer.report import STATUS_ROLLED_BACK
from tests.test_distinct_lengths import _KeyLengthFromQuery
from tests.test_verification_holes import _with_mutant


def _masked_tokens(third: bool = False) -> ir.Model:
    """``y = x * mask[..., None]``: tokens ``x [batch, x_len, 4]`` under ``attention_mask [batch, mask_len]``, one
    length named twice (as exporters name it per input); with ``third``, ``bias [batch, bias_len, 4]`` added."""
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last"], ["mask_3d"], name="mask_3d"),
        helper.make_node("Mul", ["x", "mask_3d"], ["y"]),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "x_len", 4]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "mask_len"]),
    ]
    if third:
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch", "bias_len", 4]))
        nodes[-1] = helper.make_node("Mul", ["x", "mask_3d"], ["masked"])
        nodes.append(helper.make_node("Add", ["masked", "bias"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "masked_tokens",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "x_len", 4])],
        [helper.make_tensor("last", TensorProto.INT64, [1], [-1])],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


class _FirstRowsMask(ir.passes.InPlacePass):
    """An "exact" rewrite that masks every row with the first row's mask: right on a batch of one only."""

    def call(self, model):
        (node,) = [node for node in model.graph if node.name == "mask_3d"]
        zero = ir.node("Constant", [], attributes={"value": ir.tensor(np.array([0], np.int64))})
        first = ir.node("Gather", [node.inputs[0], zero.outputs[0]], attributes={"axis": 0})
        model.graph.insert_before(node, [zero, first])
        node.replace_input_with(0, first.outputs[0])
        return NotedResult(model, True)


def test_no_length_is_drawn_down_to_one():
    first = {"batch": 1, "x_len": 4, "mask_len": 4}
    assert lengths_apart(_masked_tokens(), {"batch": 2, "x_len": 3, "mask_len": 3}, first) == []
    # Three lengths from 5: 5, 3 and not 1; the ways that keep two together still draw apart.
    ways = lengths_apart(
        _masked_tokens(third=True), {"batch": 2, "x_len": 5, "mask_len": 5, "bias_len": 5}, {"x_len": 8}
    )
    assert ways and all(min(way["x_len"], way["mask_len"], way["bias_len"]) > 1 for way in ways), ways
    # A length the binding gives as one stays one (a decode step's single new token).
    assert lengths_apart(_masked_tokens(), {"batch": 2, "x_len": 1, "mask_len": 33}, {"x_len": 64}) == [
        {"batch": 2, "x_len": 1, "mask_len": 33}
    ]


def test_a_mask_of_one_column_does_not_replace_the_padded_second_binding(monkeypatch):
    _with_mutant(monkeypatch, "first-rows-mask", _FirstRowsMask, approximate=False)
    # --max-sequence needs a pass that reads it; pack-qkv finds nothing to pack here.
    _, report = optimizer.optimize_with_report(_masked_tokens(), passes=["pack-qkv"], max_sequence=4)
    assert not any("mask_len=1" in label for label in report.input_sets), report.input_sets
    assert report.passes[-1].status == STATUS_ROLLED_BACK, (report.passes[-1].detail, report.input_sets)


def _two_towers(image_batch: str = "image_batch_size", elementwise: bool = False) -> ir.Model:
    """``mean(text, axis 0) + sum(image, axis 0) / len(image)``, the image batch read from its shape (the node
    ``_KeyLengthFromQuery`` rewires to the text); with ``elementwise``, ``+ text * image`` (one batch, two names)."""
    nodes = [
        helper.make_node("ReduceMean", ["text", "axes"], ["text_mean"], keepdims=0),
        helper.make_node("ReduceSum", ["image", "axes"], ["image_sum"], keepdims=0),
        helper.make_node("Shape", ["image"], ["image_shape"], start=0, end=1, name="key_shape"),
        helper.make_node("Cast", ["image_shape"], ["image_count"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["image_sum", "image_count"], ["image_mean"]),
        helper.make_node("Add", ["text_mean", "image_mean"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]
    if elementwise:
        nodes.append(helper.make_node("Mul", ["text", "image"], ["both"]))
        outputs.append(helper.make_tensor_value_info("both", TensorProto.FLOAT, ["text_batch_size", 4]))
    graph = helper.make_graph(
        nodes,
        "two_towers",
        [
            helper.make_tensor_value_info("text", TensorProto.FLOAT, ["text_batch_size", 4]),
            helper.make_tensor_value_info("image", TensorProto.FLOAT, [image_batch, 4]),
        ],
        outputs,
        [helper.make_tensor("axes", TensorProto.INT64, [1], [0])],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_a_rewrite_reading_one_batch_for_another_is_rolled_back(monkeypatch):
    _with_mutant(monkeypatch, "image-batch-from-text", _KeyLengthFromQuery, approximate=False)
    _, report = optimizer.optimize_with_report(_two_towers(), passes=[])
    assert report.passes[-1].status == STATUS_ROLLED_BACK, (report.passes[-1].detail, report.input_sets)
    assert any("text_batch_size=2, image_batch_size=3" in label for label in report.input_sets), report.input_sets


def test_batches_onnx_runtime_needs_equal_stay_equal():
    _, report = optimizer.optimize_with_report(_two_towers(elementwise=True), passes=["remove-identity"])
    assert report.passes[-1].status != STATUS_ROLLED_BACK
    assert any("text_batch_size=2, image_batch_size=2" in label for label in report.input_sets), report.input_sets
    # One batch name: nothing to draw apart.
    assert lengths_apart(_two_towers("text_batch_size"), {"text_batch_size": 2}, {"text_batch_size": 1}) == []


def _halving_detector() -> ir.Model:
    """A feature map pooled by 2, upsampled by 2 and concatenated with itself (odd sizes refused, as YOLO's upsampled
    maps are), summed over its ``height`` x ``width`` and divided by its area, the width read from its shape."""
    nodes = [
        helper.make_node("MaxPool", ["images"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["pooled", "", "scales"], ["upsampled"], mode="nearest"),
        helper.make_node("Concat", ["images", "upsampled"], ["features"], axis=1),
        helper.make_node("ReduceSum", ["features", "spatial"], ["summed"], keepdims=0),
        helper.make_node("Shape", ["features"], ["height"], start=2, end=3),
        helper.make_node("Shape", ["features"], ["width"], start=3, end=4, name="width_shape"),
        helper.make_node("Mul", ["height", "width"], ["area"]),
        helper.make_node("Cast", ["area"], ["area_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["summed", "area_f"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "halving_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])],
        [
            helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2]),
            helper.make_tensor("spatial", TensorProto.INT64, [2], [2, 3]),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


class _WidthFromHeight(ir.passes.InPlacePass):
    """An "exact" rewrite that reads the width off the height: right on square images only."""

    def call(self, model):
        (node,) = [node for node in model.graph if node.name == "width_shape"]
        node.attributes["start"] = ir.AttrInt64("start", 2)
        node.attributes["end"] = ir.AttrInt64("end", 3)
        return NotedResult(model, True)


def test_lengths_are_drawn_apart_by_halves_at_the_exact_half(monkeypatch):
    _with_mutant(monkeypatch, "width-from-height", _WidthFromHeight, approximate=False)
    _, report = optimizer.optimize_with_report(_halving_detector(), passes=[])
    assert report.input_sets[1].startswith("generated, second binding (batch=2, height=64, width=32)"), (
        report.input_sets
    )
    assert report.passes[-1].status == STATUS_ROLLED_BACK, report.passes[-1].detail

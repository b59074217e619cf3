"""simplify-shapes on head splits whose sequence entry is arithmetic on the input's length.

torch's dynamo exporter writes an audio encoder's head split as ``[batch, samples // 80 ... + 1, -1, head]``:
the frames a stack of strided convolutions leaves, computed from the samples, where the legacy exporter reads the
projection's shape. The entry is proven the data's own dim (a 0 in the constant target) when ORT's inference
computes it equal to the convolutions' length, nested floors joined, and every ``Div`` on the way divides values
not negative wherever that length is at least 1 (ONNX's integer ``Div`` truncates, sympy's floors).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import optimizer
from tests.test_review_s65_vision import HIDDEN, _attention, _model, _op_types, _same

# wav2vec2's feature extractor: (kernel, stride) of its seven convolutions (receptive field 400 samples).
_WAV2VEC2_CONVS = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))


def _audio_model(convs: tuple, sequence: list, merged: tuple = (0, 0, HIDDEN)) -> onnx.ModelProto:
    """Convolutions ``convs`` over ``input_values`` [batch, samples], then self-attention whose head split's
    sequence entry is ``sequence``: nodes computing ``frames`` (a 1-D int64) from ``samples`` (a scalar); the
    heads merged back by a Reshape to ``merged``."""
    rng = np.random.default_rng(5)
    weights = {"axis_one": np.array([1], np.int64), "flat": np.array([-1], np.int64)}
    weights["tail"] = np.array([-1, 4], np.int64)
    nodes = [helper.make_node("Unsqueeze", ["input_values", "axis_one"], ["features0"])]
    channels = 1
    for index, (kernel, stride) in enumerate(convs):
        weights[f"conv{index}"] = (rng.standard_normal((HIDDEN, channels, kernel)) * 0.3).astype(np.float32)
        nodes.append(
            helper.make_node(
                "Conv", [f"features{index}", f"conv{index}"], [f"features{index + 1}"], kernel_shape=[kernel],
                strides=[stride],
            )
        )  # fmt: skip
        channels = HIDDEN
    nodes += [
        helper.make_node("Transpose", [f"features{len(convs)}"], ["frames_hidden"], perm=[0, 2, 1]),
        helper.make_node("Shape", ["input_values"], ["batch"], start=0, end=1),
        helper.make_node("Shape", ["input_values"], ["samples_1d"], start=1, end=2),
        helper.make_node("Squeeze", ["samples_1d"], ["samples"]),
        *sequence,
        helper.make_node("Concat", ["batch", "frames", "tail"], ["target"], axis=0),
    ]
    _attention(nodes, weights, "frames_hidden", "target", merged=merged)
    inputs = [helper.make_tensor_value_info("input_values", TensorProto.FLOAT, ["batch", "samples"])]
    return _model(nodes, weights, inputs, opset=18)


def _arithmetic(steps: list[tuple[str, int]]) -> list:
    """Nodes computing ``frames`` from ``samples``: each step an op and an int64 constant operand, then a
    Reshape to 1-D (the dynamo exporter's spelling)."""
    nodes, current = [], "samples"
    for index, (op, operand) in enumerate(steps):
        nodes.append(
            helper.make_node(
                "Constant", [], [f"c{index}"], value=helper.make_tensor("", TensorProto.INT64, [], [operand])
            )
        )
        nodes.append(helper.make_node(op, [current, f"c{index}"], [f"a{index}"]))
        current = f"a{index}"
    nodes.append(
        helper.make_node("Constant", [], ["to_1d"], value=helper.make_tensor("", TensorProto.INT64, [1], [-1]))
    )
    nodes.append(helper.make_node("Reshape", [current, "to_1d"], ["frames"]))
    return nodes


def _feeds(samples: int, batch: int = 2) -> dict:
    return {"input_values": np.random.default_rng(samples).standard_normal((batch, samples)).astype(np.float32)}


def test_wav2vec2_dynamo_length_is_proven_and_packed():
    """The seven-convolution stack's length as torch writes it, ``((samples // 80 - 3) // 2 - 1) // 2 + 1``, whose
    first dividend is negative below 240 samples, where the stack does not run."""
    sequence = _arithmetic([("Div", 80), ("Sub", 3), ("Div", 2), ("Sub", 1), ("Div", 2), ("Add", 1)])
    proto = _audio_model(_WAV2VEC2_CONVS, sequence)
    fused = optimizer.optimize(proto)
    assert "Attention" in _op_types(fused), _op_types(fused)
    for samples in (400, 401, 1600, 3333):
        _same(proto, fused, _feeds(samples))


def test_nested_floors_are_joined():
    """Two strided convolutions (5, then 2) and the entry ``samples // 10``: ORT's inference sizes the frames
    ``floor(floor(samples/5)/2)``, the same for every length."""
    proto = _audio_model(((5, 5), (2, 2)), _arithmetic([("Div", 10)]))
    fused = optimizer.optimize(proto)
    assert "Attention" in _op_types(fused), _op_types(fused)
    for samples in (10, 19, 230, 1001):
        _same(proto, fused, _feeds(samples))


@pytest.mark.parametrize("samples", [2, 7])
def test_a_dividend_negative_where_the_model_runs_keeps_the_entry_computed(samples: int):
    """A convolution (kernel 1, stride 2) leaves ``floor((samples - 1) / 2) + 1`` frames, and the entry is
    ``(samples - 3) // 2 + 2``: equal with sympy's floor, but ONNX's Div truncates ``-1 / 2`` to 0, so at 2
    samples the entry is 2 and the frames 1 — the original splits its 8 channels into 2 positions of 1 head
    (and merges them back into ``[batch, -1, 8]``), and a copied dim would split them into 1 position of 2
    heads."""
    proto = _audio_model(((1, 2),), _arithmetic([("Sub", 3), ("Div", 2), ("Add", 2)]), merged=(0, -1, HIDDEN))
    fused = optimizer.optimize(proto)
    _same(proto, fused, _feeds(samples))


def _grid_model(sequence: list, inputs: list) -> onnx.ModelProto:
    """``x`` [batch, side, side, HIDDEN] flattened to ``[batch, side * side, HIDDEN]``, then self-attention whose head
    split's sequence entry is ``frames`` computed by ``sequence`` from ``side`` (a scalar)."""
    weights = {"flat": np.array([0, -1, HIDDEN], np.int64), "tail": np.array([-1, 4], np.int64)}
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["patches"]),
        helper.make_node("Shape", ["x"], ["batch"], start=0, end=1),
        helper.make_node("Shape", ["x"], ["side_1d"], start=1, end=2),
        helper.make_node("Squeeze", ["side_1d"], ["side"]),
        *sequence,
        helper.make_node("Concat", ["batch", "frames", "tail"], ["target"], axis=0),
    ]
    _attention(nodes, weights, "patches", "target")
    return _model(nodes, weights, inputs, opset=18)


def test_a_patch_count_squared_by_pow_is_proven():
    """A ViT's patch count as the dynamo exporter writes it, ``side ** 2``: ONNX Runtime's inference has no handler
    for ``Pow``, and the entry had no value."""
    two = helper.make_tensor("", TensorProto.INT64, [], [2])
    sequence = [
        helper.make_node("Constant", [], ["two"], value=two),
        helper.make_node("Pow", ["side", "two"], ["count"]),
        helper.make_node("Constant", [], ["to_1d"], value=helper.make_tensor("", TensorProto.INT64, [1], [-1])),
        helper.make_node("Reshape", ["count", "to_1d"], ["frames"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "side", "side", HIDDEN])]
    proto = _grid_model(sequence, inputs)
    # Verified on a 3 × 3 grid: generated inputs would size the side as a sequence, and attend over its square.
    grid = {"x": np.random.default_rng(0).standard_normal((2, 3, 3, HIDDEN)).astype(np.float32)}
    fused = optimizer.optimize(proto, inputs=grid)
    assert "Attention" in _op_types(fused), _op_types(fused)
    for side in (1, 3, 4):
        feeds = {"x": np.random.default_rng(side).standard_normal((2, side, side, HIDDEN)).astype(np.float32)}
        _same(proto, fused, feeds)


def test_an_expand_to_a_target_of_unknown_values_does_not_fail_the_inference():
    """An ``Expand`` whose target's values ONNX Runtime's inference does not know (a graph input here; DINOv2's dynamo
    export builds one with a -1) failed the whole inference in its auto-merge, and no other target was proven."""
    from passes.shape_simplification import ShapeSimplificationPass

    sequence = [helper.make_node("Identity", ["side_1d"], ["frames"]), helper.make_node("Expand", ["y", "to"], ["z"])]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "side", 1, HIDDEN]),
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]),
        helper.make_tensor_value_info("to", TensorProto.INT64, [2]),
    ]
    proto = _grid_model(sequence, inputs)
    proto.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    model = ir.serde.deserialize_model(proto)
    result = ShapeSimplificationPass()(model)
    assert not any("inference failed" in reason for reason in result.refusals), result.refusals
    assert result.modified


def test_wav2vec2s_dynamo_export_packs_attention():
    """The spelling above in a real export (``tests/fixtures/export_audio_fixture.py``: transformers' wav2vec2, tiny
    random weights, torch's dynamo exporter), whose attention stayed a MultiHeadAttention with layout adapters."""
    from tests.helpers import FIXTURES

    proto = onnx.load(FIXTURES / "wav2vec2_dynamo.onnx")
    fused = optimizer.optimize(proto, inputs=_feeds(1600))
    assert "Attention" in _op_types(fused) and "MultiHeadAttention" not in _op_types(fused), _op_types(fused)
    for samples in (400, 1601, 3333):
        _same(proto, fused, _feeds(samples))

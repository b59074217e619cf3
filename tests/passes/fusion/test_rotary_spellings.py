"""fuse-rotary-embedding on two decoder spellings: the rotated channels sliced off the head and joined back
(Phi3's legacy export, StableLM's partial rotary), and positions counted on from a cache's length (a decoder
exported without ``position_ids``, Hugging Face's ``cache_position``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion._probe import dims_read
from passes.fusion.rotary_embedding import RotaryEmbeddingFusion
from tests.helpers import assert_same_outputs, inferred_model, op_types

HEADS, HEAD_SIZE, KV = 2, 8, 2
END = np.iinfo(np.int64).max


def _inv_freq(width: int) -> np.ndarray:
    return (1.0 / 10000 ** (np.arange(0, width, 2) / width)).astype(np.float32).reshape(1, -1)


def _model(nodes, inputs, consts, output_shape) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "rotary",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(array, name) for name, array in consts.items()],
    )
    # Shapes inferred, as the pipeline's own shape inference leaves them: cos's last dim is static.
    return inferred_model(graph)


def _tables_from(positions: str, width: int) -> list[onnx.NodeProto]:
    """cos/sin ``[B or 1, 1, S, width]`` of the ``[B or 1, S, 1]`` float positions ``positions``."""
    return [
        helper.make_node("MatMul", [positions, "inv_freq"], ["freqs"]),
        helper.make_node("Concat", ["freqs", "freqs"], ["table"], axis=-1),
        helper.make_node("Cos", ["table"], ["cos3"]),
        helper.make_node("Sin", ["table"], ["sin3"]),
        helper.make_node("Unsqueeze", ["cos3", "axis1"], ["cos"]),
        helper.make_node("Unsqueeze", ["sin3", "axis1"], ["sin"]),
    ]


def _rotate(x: str, out: str, half: str) -> list[onnx.NodeProto]:
    """``out = x * cos + rotate_half(x) * sin``, the halves split at ``half`` (a [1] bound)."""
    return [
        helper.make_node("Slice", [x, "zero1", half, "last", "one1"], ["lo"]),
        helper.make_node("Slice", [x, half, "end", "last", "one1"], ["hi"]),
        helper.make_node("Neg", ["hi"], ["neg_hi"]),
        helper.make_node("Concat", ["neg_hi", "lo"], ["rotated"], axis=-1),
        helper.make_node("Mul", [x, "cos"], ["x_cos"]),
        helper.make_node("Mul", ["rotated", "sin"], ["rot_sin"]),
        helper.make_node("Add", ["x_cos", "rot_sin"], [out]),
    ]


def _consts(width: int) -> dict[str, np.ndarray]:
    return {
        "inv_freq": _inv_freq(width),
        "axis1": np.array([1], np.int64),
        "axes_last": np.array([-1], np.int64),
        "last": np.array([3], np.int64),
        "zero1": np.array([0], np.int64),
        "one1": np.array([1], np.int64),
        "end": np.array([END], np.int64),
        "three": np.array(3, np.int64),
        "two": np.array(2, np.int64),
        "heads_shape": np.array([0, 0, -1, HEAD_SIZE], np.int64),
    }


def _sliced_rotary_model(width: int = HEAD_SIZE, *, bound: str = "cos", pass_from: int | None = None) -> ir.Model:
    """Phi3's legacy spelling over a ``position_ids`` input::

        x = Transpose(Reshape(h, [0, 0, -1, d]))     # the head split
        r = Shape(cos)[3]                            # bound="cos" (Phi3); "constant": r itself (StableLM)
        y = Concat(rotate(x[..., :r]), x[..., r:])   # rotate_half's bounds: Shape(x[..., :r])[3] / 2

    ``width`` is the tables' (the rotated channels'); ``pass_from`` starts the passed channels elsewhere (a near miss).
    """
    consts = _consts(width)
    consts["width"] = np.array([width], np.int64)
    consts["pass_from"] = np.array([width if pass_from is None else pass_from], np.int64)
    nodes = [
        helper.make_node("Cast", ["position_ids"], ["positions_2d"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["positions_2d", "axes_last"], ["positions"]),  # [B, S, 1]
        *_tables_from("positions", width),
        helper.make_node("Reshape", ["h", "heads_shape"], ["split"]),
        helper.make_node("Transpose", ["split"], ["x"], perm=[0, 2, 1, 3]),
    ]
    if bound == "cos":
        nodes += [
            helper.make_node("Shape", ["cos"], ["cos_shape"]),
            helper.make_node("Gather", ["cos_shape", "three"], ["cos_width"], axis=0),
            helper.make_node("Unsqueeze", ["cos_width", "zero1"], ["rotary_end"]),
        ]
    rotary_end = "rotary_end" if bound == "cos" else "width"
    nodes += [
        helper.make_node("Slice", ["x", "zero1", rotary_end, "last", "one1"], ["x_rot"]),
        helper.make_node(
            "Slice", ["x", rotary_end if pass_from is None else "pass_from", "end", "last", "one1"], ["x_pass"]
        ),
        helper.make_node("Shape", ["x_rot"], ["rot_shape"]),
        helper.make_node("Gather", ["rot_shape", "three"], ["rot_width"], axis=0),
        helper.make_node("Div", ["rot_width", "two"], ["half_0d"]),
        helper.make_node("Unsqueeze", ["half_0d", "zero1"], ["half"]),
        *_rotate("x_rot", "embedded", "half"),
        helper.make_node("Concat", ["embedded", "x_pass"], ["y"], axis=-1),
    ]
    inputs = [
        helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", "S", HEADS * HEAD_SIZE]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["B", "S"]),
    ]
    return _model(nodes, inputs, consts, ["B", HEADS, "S", None])  # a near miss drops channels


def _sliced_feeds(sequence: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(sequence)
    positions = np.stack([np.arange(sequence), np.arange(sequence) + 11])  # the second row offset
    return {"h": rng.standard_normal((2, sequence, HEADS * HEAD_SIZE)).astype(np.float32), "position_ids": positions}


@pytest.mark.parametrize(
    ("width", "bound"), [(HEAD_SIZE, "cos"), (HEAD_SIZE // 2, "cos"), (HEAD_SIZE // 2, "constant"), (2, "constant")]
)
def test_the_rotated_channels_sliced_off_the_head_and_joined_back_are_fused(width, bound):
    # Phi3's legacy export slices x[..., :cos.shape[-1]] (all of the head, or part of it with a
    # partial_rotary_factor) and joins x[..., r:] back; StableLM slices at a constant. Once left unfused
    # ("x is not a head split").
    model = _sliced_rotary_model(width, bound=bound)
    fusion = RotaryEmbeddingFusion(cache_length=64)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    assert not {"Cos", "Sin", "Neg", "Slice", "Concat"} & set(op_types(after))
    (rotary,) = [n for n in after.graph if n.op_type == "RotaryEmbedding"]
    assert rotary.inputs[0].name == "h" and rotary.inputs[1].producer().inputs[0].name == "position_ids"
    assert rotary.attributes.get_int("num_heads") == HEADS
    assert rotary.attributes.get_int("rotary_embedding_dim", 0) == (0 if width == HEAD_SIZE else width)
    assert rotary.inputs[2].const_value.shape == (64, width // 2)
    for sequence in (1, 6, 13):
        assert_same_outputs(model, after, _sliced_feeds(sequence), rtol=1e-5, atol=1e-5)


def test_channels_passed_through_that_are_not_the_rest_of_the_head_are_no_partial_rotation():
    # x[..., :4] rotated, x[..., 6:] joined back: two channels dropped, which no partial RotaryEmbedding of the
    # head computes. The [B, N, S, 4] slice is still rotated as it is (its tables prove its layout), the
    # Concat that drops the channels kept.
    model = _sliced_rotary_model(4, bound="constant", pass_from=6)
    fusion = RotaryEmbeddingFusion(cache_length=64)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    (rotary,) = [n for n in after.graph if n.op_type == "RotaryEmbedding"]
    assert rotary.inputs[0].producer().op_type == "Slice"
    assert not rotary.attributes.get_int("rotary_embedding_dim", 0)
    assert op_types(after)[-1] == "Concat"
    for sequence in (1, 6):
        assert_same_outputs(model, after, _sliced_feeds(sequence), rtol=1e-5, atol=1e-5)


def _cache_positions_model(
    *, spelling: str = "gather", factor: int = 1, clamp: int | None = None, axis: int = 2, extra_axis: bool = False
) -> ir.Model:
    """Rotary over positions ``factor * P + s`` (``Min(P, clamp)`` when given) for ``P = past_key.shape[axis]``
    and ``s`` the token index of ``input_ids`` [B, S], as a decoder exported without ``position_ids`` counts
    them (``past_len + arange(S)``). ``spelling``: the legacy exporter's ``Gather(Shape(past_key), 2)``, or the
    dynamo exporter's ``Shape(past_key, start=2, end=3)``; ``extra_axis``: the batch dim read too."""
    consts = _consts(HEAD_SIZE)
    consts |= {
        "zero": np.array(0, np.int64),
        "one": np.array(1, np.int64),
        "axis": np.array(axis, np.int64),
        "factor": np.array(factor, np.int64),
        "clamp": np.array(clamp if clamp is not None else END, np.int64),
        "emb": np.random.default_rng(0).standard_normal((100, HEADS * HEAD_SIZE)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
        helper.make_node("Shape", ["h"], ["h_shape"]),
        helper.make_node("Gather", ["h_shape", "one"], ["new"], axis=0),
    ]
    if spelling == "gather":
        nodes += [
            helper.make_node("Shape", ["past_key"], ["past_shape"]),
            helper.make_node("Gather", ["past_shape", "axis"], ["past_len"], axis=0),
        ]
    else:
        nodes += [
            helper.make_node("Shape", ["past_key"], ["past_1d"], start=axis, end=axis + 1),
            helper.make_node("Squeeze", ["past_1d", "zero1"], ["past_len"]),
        ]
    nodes += [
        helper.make_node("Min", ["past_len", "clamp"], ["past_clamped"]),
        helper.make_node("Mul", ["past_clamped", "factor"], ["start"]),
    ]
    if extra_axis:
        nodes += [
            helper.make_node("Shape", ["past_key"], ["past_shape_b"]),
            helper.make_node("Gather", ["past_shape_b", "zero"], ["past_batch"], axis=0),
            helper.make_node("Sub", ["start", "past_batch"], ["start_b"]),
            helper.make_node("Add", ["start_b", "one"], ["start_c"]),
        ]
    nodes += [
        helper.make_node("Range", ["zero", "new", "one"], ["index"]),
        helper.make_node("Add", ["index", "start_c" if extra_axis else "start"], ["cache_position"]),
        helper.make_node("Cast", ["cache_position"], ["positions_1d"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["positions_1d", "axes_last"], ["positions_2d"]),  # [S, 1]
        helper.make_node("Unsqueeze", ["positions_2d", "zero1"], ["positions"]),  # [1, S, 1]
        *_tables_from("positions", HEAD_SIZE),
        helper.make_node("Reshape", ["h", "heads_shape"], ["split"]),
        helper.make_node("Transpose", ["split"], ["x"], perm=[0, 2, 1, 3]),
        helper.make_node("Slice", ["x", "zero1", "half_c", "last", "one1"], ["lo"]),
        helper.make_node("Slice", ["x", "half_c", "end", "last", "one1"], ["hi"]),
        helper.make_node("Neg", ["hi"], ["neg_hi"]),
        helper.make_node("Concat", ["neg_hi", "lo"], ["rotated"], axis=-1),
        helper.make_node("Mul", ["x", "cos"], ["x_cos"]),
        helper.make_node("Mul", ["rotated", "sin"], ["rot_sin"]),
        helper.make_node("Add", ["x_cos", "rot_sin"], ["y"]),
    ]
    consts["half_c"] = np.array([HEAD_SIZE // 2], np.int64)
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
        helper.make_tensor_value_info("past_key", TensorProto.FLOAT, ["batch", KV, "past_sequence", HEAD_SIZE]),
    ]
    return _model(nodes, inputs, consts, ["batch", HEADS, "sequence", HEAD_SIZE])


def _cache_feeds(new: int, past: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(new * 100 + past)
    return {
        "input_ids": rng.integers(1, 100, (2, new)),
        "attention_mask": np.ones((2, past + new), np.int64),
        "past_key": rng.standard_normal((2, KV, past, HEAD_SIZE)).astype(np.float32),
    }


@pytest.mark.parametrize("spelling", ["gather", "shape_slice"])
def test_positions_counted_on_from_the_cache_length_read_it_as_an_offset(spelling):
    # Llama exported without position_ids: positions past_key.shape[2] + arange(S). Once refused
    # ("cos/sin read 'past_key', not only [batch, sequence] ids").
    model = _cache_positions_model(spelling=spelling)
    fusion = RotaryEmbeddingFusion(cache_length=64)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    (rotary,) = [n for n in after.graph if n.op_type == "RotaryEmbedding"]
    offset = rotary.inputs[1].producer()
    assert offset.op_type == "Shape" and offset.inputs[0].name == "past_key"
    assert (offset.attributes.get_int("start"), offset.attributes.get_int("end")) == (2, 3)
    for new, past in ((6, 0), (1, 6), (3, 20), (1, 40)):
        assert_same_outputs(model, after, _cache_feeds(new, past), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        # 2P + s: the token index without a past, not counted on with one.
        ({"factor": 2}, "rotary positions are not counted on from the length of 'past_key' (its dim 2)"),
        # Min(P, 16) + s: counted on up to a past of 16, not from 17 on (16 is probed because the graph holds it).
        ({"clamp": 16}, "after a past of 17"),
        # The fixed head count (dim 1) is no cache's length.
        ({"axis": 1}, "cos/sin read the fixed dim 1 of 'past_key', no cache's length"),
        # The batch dim read beside the length: the probes' made-up batch would decide the positions.
        ({"extra_axis": True}, "cos/sin read 'past_key', not only [batch, sequence] ids or one dim of a cache's shape"),
    ],
)
def test_positions_that_read_a_cache_in_another_way_are_left_alone(options, reason):
    result = RotaryEmbeddingFusion(cache_length=64)(_cache_positions_model(**options))
    assert not result.modified
    assert any(reason in line for line in result.refusals), result.refusals


def test_a_cache_read_for_its_values_is_no_length():
    # dims_read proves the cache is read through its shape alone, one axis of it.
    model = _cache_positions_model()
    tables = [n.outputs[0] for n in model.graph if n.op_type in ("Cos", "Sin")]
    past = next(v for v in model.graph.inputs if v.name == "past_key")
    assert dims_read(tables, past) == {2}
    reduce = ir.node("ReduceSum", [past], {"keepdims": 0})
    model.graph.append(reduce)
    assert dims_read([reduce.outputs[0]], past) is None

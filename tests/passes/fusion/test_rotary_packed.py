"""fuse-rotary-embedding on GPT-NeoX's packed projection: query and key sliced off each head of a
``[B, N, S, 3d]`` split at bounds computed from its shape, their leading channels rotated (partial rotary)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.rotary_embedding import RotaryEmbeddingFusion
from tests.helpers import assert_same_outputs, inferred_model

HEADS, HEAD_SIZE = 2, 8
END = np.iinfo(np.int64).max


def _rotated(x: str, out: str, width: int) -> list[onnx.NodeProto]:
    """``out = Concat(rotate_half(x[..., :r]) with cos/sin, x[..., r:])``, ``r = Shape(cos)[3]`` as NeoX's
    legacy export slices it, rotate_half's bounds ``Shape(x[..., :r])[3] / 2``."""
    return [
        helper.make_node("Slice", [x, "zero1", "rotary_end", "last", "one1"], [f"{x}_rot"]),
        helper.make_node("Slice", [x, "rotary_end", "end", "last", "one1"], [f"{x}_pass"]),
        helper.make_node("Shape", [f"{x}_rot"], [f"{x}_rot_shape"]),
        helper.make_node("Gather", [f"{x}_rot_shape", "three"], [f"{x}_rot_width"], axis=0),
        helper.make_node("Div", [f"{x}_rot_width", "two"], [f"{x}_half_0d"]),
        helper.make_node("Unsqueeze", [f"{x}_half_0d", "zero1"], [f"{x}_half"]),
        helper.make_node("Slice", [f"{x}_rot", "zero1", f"{x}_half", "last", "one1"], [f"{x}_lo"]),
        helper.make_node("Slice", [f"{x}_rot", f"{x}_half", "end", "last", "one1"], [f"{x}_hi"]),
        helper.make_node("Neg", [f"{x}_hi"], [f"{x}_neg_hi"]),
        helper.make_node("Concat", [f"{x}_neg_hi", f"{x}_lo"], [f"{x}_rotated"], axis=-1),
        helper.make_node("Mul", [f"{x}_rot", "cos"], [f"{x}_cos"]),
        helper.make_node("Mul", [f"{x}_rotated", "sin"], [f"{x}_sin"]),
        helper.make_node("Add", [f"{x}_cos", f"{x}_sin"], [f"{x}_embedded"]),
        helper.make_node("Concat", [f"{x}_embedded", f"{x}_pass"], [out], axis=-1),
    ]


def _packed_rotary_model(width: int, *, size_axis: int = -1) -> ir.Model:
    """GPT-NeoX's legacy spelling over a ``position_ids`` input::

        qkv = Transpose(Reshape(h, [0, 0, -1, 3d]))       # [B, N, S, 3d]: each head's q, k, v
        e   = (Shape(qkv)[size_axis] + 2) / 3              # d, with size_axis -1
        q, k = qkv[..., :e * 1], qkv[..., e:e * 2]
        y_q, y_k = rotate(q), rotate(k)                   # their first ``width`` channels

    Shape inference cannot size q and k: ``e`` is arithmetic on a shape.
    """
    inv_freq = (1.0 / 10000 ** (np.arange(0, width, 2) / width)).astype(np.float32).reshape(1, -1)
    consts = {
        "inv_freq": inv_freq,
        "axis1": np.array([1], np.int64),
        "axes_last": np.array([-1], np.int64),
        "last": np.array([3], np.int64),
        "zero1": np.array([0], np.int64),
        "one1": np.array([1], np.int64),
        "two1": np.array([2], np.int64),
        "three1": np.array([3], np.int64),
        "size_axis": np.array([size_axis], np.int64),
        "end": np.array([END], np.int64),
        "three": np.array(3, np.int64),
        "two": np.array(2, np.int64),
        "heads_shape": np.array([0, 0, -1, 3 * HEAD_SIZE], np.int64),
    }
    nodes = [
        helper.make_node("Cast", ["position_ids"], ["positions_2d"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["positions_2d", "axes_last"], ["positions"]),
        helper.make_node("MatMul", ["positions", "inv_freq"], ["freqs"]),
        helper.make_node("Concat", ["freqs", "freqs"], ["table"], axis=-1),
        helper.make_node("Cos", ["table"], ["cos3"]),
        helper.make_node("Sin", ["table"], ["sin3"]),
        helper.make_node("Unsqueeze", ["cos3", "axis1"], ["cos"]),
        helper.make_node("Unsqueeze", ["sin3", "axis1"], ["sin"]),
        helper.make_node("Shape", ["cos"], ["cos_shape"]),
        helper.make_node("Gather", ["cos_shape", "three"], ["cos_width"], axis=0),
        helper.make_node("Unsqueeze", ["cos_width", "zero1"], ["rotary_end"]),
        helper.make_node("Reshape", ["h", "heads_shape"], ["split"]),
        helper.make_node("Transpose", ["split"], ["qkv"], perm=[0, 2, 1, 3]),
        helper.make_node("Shape", ["qkv"], ["qkv_shape"]),
        helper.make_node("Gather", ["qkv_shape", "size_axis"], ["qkv_width"], axis=0),
        helper.make_node("Add", ["qkv_width", "two1"], ["qkv_width_2"]),
        helper.make_node("Div", ["qkv_width_2", "three1"], ["head"]),
        helper.make_node("Mul", ["head", "one1"], ["q_end"]),
        helper.make_node("Mul", ["head", "two1"], ["k_end"]),
        helper.make_node("Slice", ["qkv", "zero1", "q_end", "axes_last"], ["q"]),
        helper.make_node("Slice", ["qkv", "q_end", "k_end", "axes_last"], ["k"]),
        *_rotated("q", "y_q", width),
        *_rotated("k", "y_k", width),
    ]
    inputs = [
        helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", "S", HEADS * 3 * HEAD_SIZE]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["B", "S"]),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y_q", "y_k")]
    graph = helper.make_graph(
        nodes, "neox", inputs, outputs, [numpy_helper.from_array(a, name) for name, a in consts.items()]
    )
    return inferred_model(graph)


def _feeds(sequence: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(sequence)
    positions = np.stack([np.arange(sequence), np.arange(sequence) + 5])
    return {
        "h": rng.standard_normal((2, sequence, HEADS * 3 * HEAD_SIZE)).astype(np.float32),
        "position_ids": positions,
    }


@pytest.mark.parametrize("width", [HEAD_SIZE // 4, HEAD_SIZE])
def test_query_and_key_sliced_off_a_packed_projection_are_rotated_as_they_are(width):
    # GPT-NeoX (Pythia) slices q and k off each head of its packed projection at (Shape(qkv)[-1] + 2) / 3:
    # their head size is unknown to shape inference, but the Reshape's constant 3d fixes it (and the
    # projection's width N * 3d the head count). Once left unfused ("x is not a head split ..., nor a
    # 4-D tensor of static head size").
    model = _packed_rotary_model(width)
    fusion = RotaryEmbeddingFusion(cache_length=64)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 2
    rotaries = [n for n in after.graph if n.op_type == "RotaryEmbedding"]
    assert sorted(n.inputs[0].name for n in rotaries) == ["k", "q"]
    for rotary in rotaries:
        assert rotary.inputs[1].producer().inputs[0].name == "position_ids"  # expanded to [B, S]
        assert rotary.attributes.get_int("rotary_embedding_dim", 0) == (0 if width == HEAD_SIZE else width)
        assert rotary.attributes.get_int("num_heads", 0) == (0 if width == HEAD_SIZE else HEADS)
    assert not {"Cos", "Sin", "Neg"} & {n.op_type for n in after.graph}
    for sequence in (1, 6, 13):
        assert_same_outputs(model, after, _feeds(sequence), rtol=1e-5, atol=1e-5)
    feeds = _feeds(6)
    feeds["position_ids"] = feeds["position_ids"][1:]  # [1, S] for 2 rows: the fused op once refused it
    assert_same_outputs(model, after, feeds, rtol=1e-5, atol=1e-5)


def test_a_slice_bound_computed_from_an_unknown_dim_is_no_head_size():
    # The same slices at (Shape(qkv)[2] + 2) / 3: a third of the sequence length, no head size.
    model = _packed_rotary_model(HEAD_SIZE // 4, size_axis=2)
    result = RotaryEmbeddingFusion(cache_length=64)(model.clone())
    assert not result.modified
    assert result.refusals == [
        "2 near matches at Concat left unfused: x is not a head split of a 3-D projection, "
        "nor a 4-D tensor of static head size"
    ]


def test_a_slice_bound_that_wraps_in_int64_is_not_read_as_the_rest_of_the_head():
    # A review: the pass-through slice's end written as Shape(q)[3] + (INT64_MAX - 1) wraps negative in ONNX
    # Runtime (an empty slice), where Python's integers read it as past the head's end, clamped to "the rest".
    proto = ir.to_proto(_packed_rotary_model(HEAD_SIZE // 4))
    big = numpy_helper.from_array(np.array(np.iinfo(np.int64).max - 1, np.int64), "big")
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero_axis")
    three = numpy_helper.from_array(np.array(3, np.int64), "last_axis")
    proto.graph.initializer.extend([big, zero, three])
    wrapped = [
        helper.make_node("Shape", ["q"], ["q_shape_wrapped"]),
        helper.make_node("Gather", ["q_shape_wrapped", "last_axis"], ["q_width_wrapped"], axis=0),
        helper.make_node("Add", ["q_width_wrapped", "big"], ["q_end_wrapped"]),
        helper.make_node("Unsqueeze", ["q_end_wrapped", "zero_axis"], ["q_ends_wrapped"]),
    ]
    nodes = list(proto.graph.node)
    at = next(i for i, node in enumerate(nodes) if node.output[0] == "q_pass")
    nodes[at].input[2] = "q_ends_wrapped"
    del proto.graph.node[:]
    proto.graph.node.extend(nodes[:at] + wrapped + nodes[at:])
    del proto.graph.value_info[:]
    proto = onnx.shape_inference.infer_shapes(proto)
    model = ir.from_proto(proto)
    after = RotaryEmbeddingFusion(cache_length=64)(model.clone()).model
    for sequence in (1, 6):
        assert_same_outputs(model, after, _feeds(sequence), rtol=1e-5, atol=1e-5)

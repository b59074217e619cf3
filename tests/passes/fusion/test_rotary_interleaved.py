"""fuse-rotary-embedding on interleaved rotations: ``rotate_every_two`` of the heads before their transpose
(GPT-J) or after it (Cohere), all of the head or its leading ``rotary_dim`` channels, with
``repeat_interleave``'d cos/sin."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.rotary_embedding import RotaryEmbeddingFusion
from tests.helpers import assert_same_outputs, inferred_model

HEADS, HEAD_SIZE, POSITIONS = 2, 8, 64
END = np.iinfo(np.int64).max


def _gptj_model(
    width: int, *, tables: str = "interleaved", negated: str = "odd", heads_first: bool = False, scaled: bool = False
) -> ir.Model:
    """GPT-J's spelling over a ``position_ids`` input::

        sin, cos = Split(Gather(sincos, position_ids))              # [B, S, r/2] each
        cos = Reshape(Tile(Unsqueeze(cos, [2, 4]), [1, 1, 1, 1, 2]), [0, 0, 1, -1])    # repeat_interleave
        x = Reshape(h, [0, 0, -1, d])                               # [B, S, N, d]
        t = x[..., :r]                                              # or x itself, r = d
        rotated = Reshape(Concat(Unsqueeze(-t[..., 1::2], -1), Unsqueeze(t[..., ::2], -1), -1), [0, 0, N, -1])
        y = Concat(t * cos + rotated * sin, x[..., r:])

    ``tables="halves"`` builds cos/sin as Concat(c, c) instead (a near miss: not the pairs the rotation
    reads); ``negated="even"`` stacks ``(-t[..., ::2], t[..., 1::2])`` instead (a near miss: no rotation).
    ``heads_first`` rotates after the heads' transpose, as Cohere does: ``x = Transpose(Reshape(h, ...))``
    (``[B, N, S, d]``), cos/sin ``[B, 1, S, r]``, the pairs flattened by ``[0, N, 0, -1]``; ``scaled`` then
    scales each head by its own weights between the split and the transpose (as Cohere's ``use_qk_norm``
    normalizes them), so ``x`` is no head split.
    """
    half = width // 2
    inv_freq = 1.0 / 10000 ** (np.arange(0, width, 2) / width)
    angles = np.arange(POSITIONS)[:, None] * inv_freq[None]
    consts = {
        "sincos": np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32),
        "halves": np.array([half, half], np.int64),
        "pairs_axes": np.array([1, 4] if heads_first else [2, 4], np.int64),
        "repeats": np.array([1, 1, 1, 1, 2], np.int64),
        "table_shape": np.array([0, 1, 0, -1] if heads_first else [0, 0, 1, -1], np.int64),
        "axis2": np.array([2], np.int64),
        "heads_shape": np.array([0, 0, -1, HEAD_SIZE], np.int64),
        "flat_shape": np.array([0, HEADS, 0, -1] if heads_first else [0, 0, HEADS, -1], np.int64),
        "zero1": np.array([0], np.int64),
        "one1": np.array([1], np.int64),
        "two1": np.array([2], np.int64),
        "width": np.array([width], np.int64),
        "last": np.array([3], np.int64),
        "minus1": np.array([-1], np.int64),
        "end": np.array([END], np.int64),
    }
    nodes = [
        helper.make_node("Gather", ["sincos", "position_ids"], ["gathered"], axis=0),
        helper.make_node("Split", ["gathered", "halves"], ["sin_half", "cos_half"], axis=-1),
    ]
    for name in ("sin", "cos"):
        if tables == "interleaved":
            nodes += [
                helper.make_node("Unsqueeze", [f"{name}_half", "pairs_axes"], [f"{name}_5d"]),
                helper.make_node("Tile", [f"{name}_5d", "repeats"], [f"{name}_tiled"]),
                helper.make_node("Reshape", [f"{name}_tiled", "table_shape"], [name]),
            ]
        else:
            nodes += [
                helper.make_node("Concat", [f"{name}_half", f"{name}_half"], [f"{name}_3d"], axis=-1),
                helper.make_node("Unsqueeze", [f"{name}_3d", "axis2"], [name]),
            ]
    if heads_first:
        nodes.append(helper.make_node("Reshape", ["h", "heads_shape"], ["split"]))
        if scaled:
            consts["head_scale"] = np.linspace(0.5, 1.5, HEADS * HEAD_SIZE, dtype=np.float32).reshape(HEADS, HEAD_SIZE)
            nodes.append(helper.make_node("Mul", ["split", "head_scale"], ["scaled"]))
        nodes.append(helper.make_node("Transpose", ["scaled" if scaled else "split"], ["x"], perm=[0, 2, 1, 3]))
    elif scaled:  # [B, S, N, d] heads scaled before their transpose: rotated there, no split either
        consts["head_scale"] = np.linspace(0.5, 1.5, HEADS * HEAD_SIZE, dtype=np.float32).reshape(HEADS, HEAD_SIZE)
        nodes.append(helper.make_node("Reshape", ["h", "heads_shape"], ["split"]))
        nodes.append(helper.make_node("Mul", ["split", "head_scale"], ["x"]))
    else:
        nodes.append(helper.make_node("Reshape", ["h", "heads_shape"], ["x"]))
    rotated_part = "x"
    if width < HEAD_SIZE:
        rotated_part = "x_rot"
        nodes += [
            helper.make_node("Slice", ["x", "zero1", "width", "last", "one1"], ["x_rot"]),
            helper.make_node("Slice", ["x", "width", "end", "last", "one1"], ["x_pass"]),
        ]
    nodes += [
        helper.make_node("Slice", [rotated_part, "zero1", "end", "last", "two1"], ["even"]),
        helper.make_node("Slice", [rotated_part, "one1", "end", "last", "two1"], ["odd"]),
        helper.make_node("Neg", [negated], ["negated"]),
        helper.make_node("Unsqueeze", ["negated", "minus1"], ["first_5d"]),
        helper.make_node("Unsqueeze", ["even" if negated == "odd" else "odd", "minus1"], ["second_5d"]),
        helper.make_node("Concat", ["first_5d", "second_5d"], ["stacked"], axis=-1),
        helper.make_node("Reshape", ["stacked", "flat_shape"], ["rotated"]),
        helper.make_node("Mul", [rotated_part, "cos"], ["x_cos"]),
        helper.make_node("Mul", ["rotated", "sin"], ["rot_sin"]),
        helper.make_node("Add", ["x_cos", "rot_sin"], ["embedded" if width < HEAD_SIZE else "y"]),
    ]
    if width < HEAD_SIZE:
        nodes.append(helper.make_node("Concat", ["embedded", "x_pass"], ["y"], axis=-1))
    inputs = [
        helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", "S", HEADS * HEAD_SIZE]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["B", "S"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gptj",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, name) for name, a in consts.items()],
    )
    return inferred_model(graph)


def _feeds(sequence: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(sequence)
    positions = np.stack([np.arange(sequence), np.arange(sequence) + 7])
    return {"h": rng.standard_normal((2, sequence, HEADS * HEAD_SIZE)).astype(np.float32), "position_ids": positions}


@pytest.mark.parametrize("heads_first", [False, True])
@pytest.mark.parametrize("width", [HEAD_SIZE // 2, HEAD_SIZE])
def test_an_interleaved_rotation_is_fused_with_interleaved_set(width, heads_first):
    # GPT-J's (heads_first=False) and Cohere's: once never matched (the docstring said interleaved was
    # refused, and no refusal was noted).
    model = _gptj_model(width, heads_first=heads_first)
    fusion = RotaryEmbeddingFusion(cache_length=POSITIONS)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    (rotary,) = [n for n in after.graph if n.op_type == "RotaryEmbedding"]
    # position_ids expanded to [B, S]: the original broadcasts a [1, S] fed for a batch, ONNX Runtime's op does not.
    assert rotary.inputs[0].name == "h" and rotary.inputs[1].producer().inputs[0].name == "position_ids"
    assert rotary.attributes.get_int("interleaved") == 1
    assert rotary.attributes.get_int("num_heads") == HEADS
    assert rotary.attributes.get_int("rotary_embedding_dim", 0) == (0 if width == HEAD_SIZE else width)
    assert rotary.inputs[2].const_value.shape == (POSITIONS, width // 2)
    assert not {"Neg", "Tile", "Split"} & {n.op_type for n in after.graph}
    assert after.graph.outputs[0].producer().op_type == ("Transpose" if heads_first else "Reshape")
    for sequence in (1, 6, 13):
        assert_same_outputs(model, after, _feeds(sequence), rtol=1e-5, atol=1e-5)
    feeds = _feeds(6)
    feeds["position_ids"] = feeds["position_ids"][1:]  # [1, S] for 2 rows: the fused op once refused it
    assert_same_outputs(model, after, feeds, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (
            {"tables": "halves"},
            "cos/sin are not [B or 1, S, 1, d] tables of a [positions, d/2] table's columns each repeated",
        ),
        ({"negated": "even"}, "not rotate_every_two: the pairs are not x[..., ::2] and x[..., 1::2]"),
    ],
)
def test_an_interleaved_rotation_with_other_tables_or_pairs_is_left_alone(options, reason):
    # cos/sin repeated as two halves pair channel 2i with position frequency i mod r/2: no interleaved
    # RotaryEmbedding computes that; nor (-x[2i], x[2i + 1]), which negates instead of rotating.
    model = _gptj_model(HEAD_SIZE // 2, **options)
    result = RotaryEmbeddingFusion(cache_length=POSITIONS)(model.clone())
    assert not result.modified
    assert result.refusals == [f"1 near match at Concat left unfused: {reason}"]


@pytest.mark.parametrize("width", [HEAD_SIZE // 2, HEAD_SIZE])
def test_an_interleaved_rotation_of_heads_scaled_after_their_split_is_fused_as_it_is(width):
    # Cohere with use_qk_norm normalizes each head between its split and its transpose: x is no head split,
    # and was left unfused ("x of an interleaved rotation is no head split ..."). RotaryEmbedding reads the
    # [B, N, S, d] tensor itself, its layout proved by the [B or 1, 1, S, r] tables.
    model = _gptj_model(width, heads_first=True, scaled=True)
    result = RotaryEmbeddingFusion(cache_length=POSITIONS)(model.clone())
    assert result.modified, result.refusals
    after = result.model
    (rotary,) = [n for n in after.graph if n.op_type == "RotaryEmbedding"]
    assert rotary.inputs[0].name == "x" and rotary.attributes.get_int("interleaved") == 1
    assert rotary.attributes.get_int("rotary_embedding_dim", 0) == (0 if width == HEAD_SIZE else width)
    assert rotary.attributes.get_int("num_heads", 0) == (0 if width == HEAD_SIZE else HEADS)
    assert not {"Neg", "Tile", "Split"} & {n.op_type for n in after.graph}
    for sequence in (1, 6, 13):
        assert_same_outputs(model, after, _feeds(sequence), rtol=1e-5, atol=1e-5)
    feeds = _feeds(6)
    feeds["position_ids"] = feeds["position_ids"][1:]  # [1, S] for 2 rows
    assert_same_outputs(model, after, feeds, rtol=1e-5, atol=1e-5)


def test_an_interleaved_rotation_of_scaled_heads_before_their_transpose_is_merged_into_3d():
    # x [B, S, N, d] with [B, S, 1, r] tables: RotaryEmbedding would read a 4-D x's axis 1 as the heads, so x is
    # merged into [B, S, N*d] for the op and split back (was left alone; CodeGen's heads come so, review s63).
    model = _gptj_model(HEAD_SIZE, scaled=True)
    result = RotaryEmbeddingFusion(cache_length=POSITIONS)(model.clone())
    assert result.modified
    (rotary,) = [n for n in result.model.graph if n.op_type == "RotaryEmbedding"]
    assert rotary.attributes.get_int("interleaved", 0) == 1
    assert rotary.inputs[0].producer().op_type == "Reshape"
    assert_same_outputs(model, result.model, _feeds(6), rtol=1e-5, atol=1e-5)


def test_the_interleaved_heads_split_target_is_an_initializer_not_a_constant_node():
    # As for rotate_half (test_rotary_embedding): a Constant per layer was left for a second run to lift.
    model = _gptj_model(HEAD_SIZE)
    after = RotaryEmbeddingFusion(cache_length=POSITIONS)(model.clone()).model
    assert "Constant" not in {n.op_type for n in after.graph}
    (split,) = [
        n for n in after.graph if n.op_type == "Reshape" and n.inputs[0].producer().op_type == "RotaryEmbedding"
    ]
    assert split.inputs[1].is_initializer()
    assert_same_outputs(model, after, _feeds(6), rtol=1e-5, atol=1e-5)


def test_scaled_heads_before_their_transpose_with_tables_of_halves_are_left_alone():
    # The near miss of the merged [B, S, N, d] form: its tables are not the pairs the rotation reads.
    result = RotaryEmbeddingFusion(cache_length=POSITIONS)(_gptj_model(HEAD_SIZE, scaled=True, tables="halves"))
    assert not result.modified
    assert result.refusals

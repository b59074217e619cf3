"""fuse-rotary-embedding: Hugging Face rotate_half rotary embedding into RotaryEmbedding."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.rotary_embedding import RotaryEmbeddingFusion
from tests.helpers import assert_same_outputs, op_types

HEADS, HEAD_SIZE = 2, 8


# The switched tables: SHORT_TABLE up to SWITCH_AT tokens, LONG_TABLE past it (both TABLE_ROWS rows).
SWITCH_AT, TABLE_ROWS, AGREE = 512, 1024, 16


def _switched_tables(inv_freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Angle tables that agree on the first AGREE positions and differ after (the long one interpolated 4x)."""
    positions = np.arange(TABLE_ROWS, dtype=np.float32)[:, None]
    short = positions * inv_freq
    long = np.where(positions < AGREE, positions, positions / 4) * inv_freq
    return short.astype(np.float32), long.astype(np.float32)


def _rotary_model(
    *,
    split_at: int = HEAD_SIZE // 2,
    positions_from_mask: bool = False,
    switched: bool = False,
    position_input: bool = False,
    past_shift: int | None = None,
    past_factor: int = 1,
    past_clamp: int | None = None,
    past_slice: bool = False,
) -> ir.Model:
    """``rotate(h)`` for h [B, S, HEADS*HEAD_SIZE], positions 0..S-1 (or cumsum(mask) - 1, or a ``position_ids`` input).

    ``past_shift``: an ``ids`` [B, S] input beside a mask [B, T] over past and new tokens,
    positions ``past_factor * (T - S) + past_shift + s`` (factor 1, shift 0: counted on from
    the past, as a decoder without ``position_ids`` does); ``past_clamp``: the past counted up to it only;
    ``past_slice``: the rows ``T - S .. T`` sliced off a ``[TABLE_ROWS, d/2]`` angle table (Falcon's form).

    ``switched``: the angles are a ``[TABLE_ROWS, d/2]`` table sliced to ``S``, the short
    one up to SWITCH_AT tokens and the long one past it (as LongRoPE switches its factors
    at a length).
    """
    inv_freq = (1.0 / 10000 ** (np.arange(0, HEAD_SIZE, 2) / HEAD_SIZE)).astype(np.float32)
    consts = {
        "inv_freq": inv_freq.reshape(1, -1),
        "zero": np.array(0, np.int64),
        "one": np.array(1, np.int64),
        "one_f": np.array(1.0, np.float32),
        "axis1": np.array([1], np.int64),
        "axes01": np.array([0, 1], np.int64),
        "axes_last": np.array([-1], np.int64),
        "heads_shape": np.array([0, 0, HEADS, HEAD_SIZE], np.int64),
        "lo_start": np.array([0], np.int64),
        "mid": np.array([split_at], np.int64),
        "end": np.array([np.iinfo(np.int64).max], np.int64),
    }
    nodes = [helper.make_node("Shape", ["mask"], ["mask_shape"])]
    if switched:
        consts["short"], consts["long"] = _switched_tables(inv_freq)
        consts["switch_at"] = np.array(SWITCH_AT, np.int64)
        nodes += [
            helper.make_node("Gather", ["mask_shape", "one"], ["seq"], axis=0),
            helper.make_node("LessOrEqual", ["seq", "switch_at"], ["is_short"]),
            helper.make_node("Where", ["is_short", "short", "long"], ["angles"]),
            helper.make_node("Unsqueeze", ["seq", "lo_start"], ["seq_1d"]),
            helper.make_node("Slice", ["angles", "lo_start", "seq_1d", "lo_start"], ["freqs_2d"]),  # [S, d/2]
            helper.make_node("Unsqueeze", ["freqs_2d", "lo_start"], ["freqs"]),  # [1, S, d/2]
        ]
    elif position_input:
        nodes += [
            helper.make_node("Cast", ["position_ids"], ["positions_2d"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["positions_2d", "axes_last"], ["positions"]),  # [B, S, 1]
            helper.make_node("MatMul", ["positions", "inv_freq"], ["freqs"]),  # [B, S, d/2]
        ]
    elif past_shift is not None:
        consts["shift"] = np.array(past_shift, np.int64)
        consts["factor"] = np.array(past_factor, np.int64)
        consts["clamp"] = np.array(past_clamp if past_clamp is not None else np.iinfo(np.int64).max, np.int64)
        nodes += [
            helper.make_node("Gather", ["mask_shape", "one"], ["total"], axis=0),
            helper.make_node("Shape", ["ids"], ["ids_shape"]),
            helper.make_node("Gather", ["ids_shape", "one"], ["new"], axis=0),
            helper.make_node("Sub", ["total", "new"], ["past_counted"]),
            helper.make_node("Min", ["past_counted", "clamp"], ["past_tokens"]),
            helper.make_node("Mul", ["past_tokens", "factor"], ["past"]),
            helper.make_node("Add", ["past", "shift"], ["start"]),
            helper.make_node("Add", ["start", "new"], ["stop"]),
        ]
        if past_slice:
            consts["angles"] = np.arange(TABLE_ROWS, dtype=np.float32)[:, None] * inv_freq
            nodes += [
                helper.make_node("Unsqueeze", ["start", "lo_start"], ["start_1d"]),
                helper.make_node("Unsqueeze", ["stop", "lo_start"], ["stop_1d"]),
                helper.make_node("Slice", ["angles", "start_1d", "stop_1d", "lo_start"], ["freqs_2d"]),
            ]
        else:
            nodes += [
                helper.make_node("Range", ["start", "stop", "one"], ["range"]),
                helper.make_node("Cast", ["range"], ["range_f"], to=TensorProto.FLOAT),
                helper.make_node("Unsqueeze", ["range_f", "axes_last"], ["positions"]),  # [S, 1]
                helper.make_node("MatMul", ["positions", "inv_freq"], ["freqs_2d"]),  # [S, d/2]
            ]
        nodes.append(helper.make_node("Unsqueeze", ["freqs_2d", "lo_start"], ["freqs"]))  # [1, S, d/2]
    elif positions_from_mask:
        nodes += [
            helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("CumSum", ["mask_f", "one"], ["cum"]),
            helper.make_node("Sub", ["cum", "one_f"], ["positions_2d"]),
            helper.make_node("Unsqueeze", ["positions_2d", "axes_last"], ["positions"]),  # [B, S, 1]
            helper.make_node("MatMul", ["positions", "inv_freq"], ["freqs"]),  # [B, S, d/2]
        ]
    else:
        nodes += [
            helper.make_node("Gather", ["mask_shape", "one"], ["seq"], axis=0),
            helper.make_node("Range", ["zero", "seq", "one"], ["range"]),
            helper.make_node("Cast", ["range"], ["range_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["range_f", "axes_last"], ["positions"]),  # [S, 1]
            helper.make_node("MatMul", ["positions", "inv_freq"], ["freqs_2d"]),  # [S, d/2]
            helper.make_node("Unsqueeze", ["freqs_2d", "lo_start"], ["freqs"]),  # [1, S, d/2]
        ]
    nodes += [
        helper.make_node("Concat", ["freqs", "freqs"], ["table"], axis=-1),
        helper.make_node("Cos", ["table"], ["cos3"]),
        helper.make_node("Sin", ["table"], ["sin3"]),
        helper.make_node("Unsqueeze", ["cos3", "axis1"], ["cos"]),
        helper.make_node("Unsqueeze", ["sin3", "axis1"], ["sin"]),
        helper.make_node("Reshape", ["h", "heads_shape"], ["split"]),
        helper.make_node("Transpose", ["split"], ["x"], perm=[0, 2, 1, 3]),
        helper.make_node("Slice", ["x", "lo_start", "mid", "axes_last"], ["lo"]),
        helper.make_node("Slice", ["x", "mid", "end", "axes_last"], ["hi"]),
        helper.make_node("Neg", ["hi"], ["neg_hi"]),
        helper.make_node("Concat", ["neg_hi", "lo"], ["rotated"], axis=-1),
        helper.make_node("Mul", ["x", "cos"], ["x_cos"]),
        helper.make_node("Mul", ["rotated", "sin"], ["rot_sin"]),
        helper.make_node("Add", ["x_cos", "rot_sin"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "rotary",
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", "S", HEADS * HEAD_SIZE]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", "S" if past_shift is None else "T"]),
            *([helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["B", "S"])] if position_input else []),
            *([helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])] if past_shift is not None else []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", HEADS, "S", HEAD_SIZE])],
        [numpy_helper.from_array(array, name) for name, array in consts.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _inputs(padded: bool = False, sequence: int = 6) -> dict[str, np.ndarray]:
    mask = np.ones((2, sequence), np.int64)
    if padded:
        mask[0, :2] = 0
    h = np.random.default_rng(0).standard_normal((2, sequence, HEADS * HEAD_SIZE)).astype(np.float32)
    return {"h": h, "mask": mask}


def test_rotary_embedding_is_fused():
    model = _rotary_model()
    fusion = RotaryEmbeddingFusion(cache_length=64)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    assert "RotaryEmbedding" in op_types(after)
    assert not {"Cos", "Sin", "Neg", "Slice"} & set(op_types(after))
    (rotary,) = [n for n in after.graph if n.op_type == "RotaryEmbedding"]
    assert rotary.inputs[0].name == "h" and rotary.attributes.get_int("num_heads") == HEADS
    assert_same_outputs(model, after, _inputs(), rtol=1e-5, atol=1e-5)
    assert_same_outputs(model, after, _inputs(padded=True), rtol=1e-5, atol=1e-5)


def test_shared_rules_keep_each_runs_tables_apart():
    # The rules are built once and shared; each run (here two threads, each with its own instance and a
    # different cache length) reads its own pass's tables, so each fused model gets caches of its length.
    from concurrent.futures import ThreadPoolExecutor

    def fuse(cache_length: int) -> ir.Model:
        return RotaryEmbeddingFusion(cache_length=cache_length)(_rotary_model()).model

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(fuse, [32, 48] * 3))
    for cache_length, after in zip([32, 48] * 3, results):
        (rotary,) = [n for n in after.graph if n.op_type == "RotaryEmbedding"]
        assert rotary.inputs[2].const_value.shape[0] == cache_length
        assert_same_outputs(_rotary_model(), after, _inputs(), rtol=1e-5, atol=1e-5)
    fusion = RotaryEmbeddingFusion()
    assert fusion._rule_sets() is RotaryEmbeddingFusion(cache_length=8)._rule_sets()


def test_partial_rotation_is_left_alone():
    model = _rotary_model(split_at=HEAD_SIZE // 4)
    assert not RotaryEmbeddingFusion(cache_length=64)(model).modified


def test_positions_that_depend_on_the_mask_are_left_alone():
    # Positions cumsum(mask) - 1 (left padding shifts them): one cos/sin cache row per token index cannot express it.
    model = _rotary_model(positions_from_mask=True)
    assert not RotaryEmbeddingFusion(cache_length=64)(model).modified


def test_tables_that_differ_past_the_probe_are_checked_where_they_switch():
    # The cache is built at cache_length (the long table) and a 7-token probe reads rows both
    # tables share; at 300 tokens the model reads the short table, which the cache is not.
    model = _rotary_model(switched=True)
    result = RotaryEmbeddingFusion(cache_length=TABLE_ROWS)(model.clone())
    assert not result.modified
    assert result.refusals == [
        "1 near match at Add left unfused: cos/sin at 512 tokens are not the cache's rows for their positions "
        "(the tables change with the sequence length)"
    ]
    assert_same_outputs(model, result.model, _inputs(sequence=300), rtol=1e-5, atol=1e-5)


def test_a_cache_up_to_the_switch_is_exact():
    # With --max-sequence at the switch, only the short table is ever read: the fusion is exact up to it.
    model = _rotary_model(switched=True)
    fusion = RotaryEmbeddingFusion(cache_length=SWITCH_AT)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    for sequence in (6, 300, SWITCH_AT):
        assert_same_outputs(model, after, _inputs(sequence=sequence), rtol=1e-5, atol=1e-5)


def test_position_ids_are_read_at_every_probed_length():
    # cos/sin of position_ids alone: the fused op reads the input, exact at any length and offset.
    model = _rotary_model(position_input=True)
    fusion = RotaryEmbeddingFusion(cache_length=TABLE_ROWS)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    (rotary,) = [n for n in after.graph if n.op_type == "RotaryEmbedding"]
    expand = rotary.inputs[1].producer()  # position_ids expanded to [B, S] (a [1, S] fed for a batch)
    assert expand.op_type == "Expand" and expand.inputs[0].name == "position_ids"
    feeds = _inputs(sequence=300)
    feeds["position_ids"] = np.arange(300)[None].repeat(2, 0) + np.array([[0], [700]])  # the second row offset
    assert_same_outputs(model, after, feeds, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("shift", "sliced"), [(0, False), (1, False), (0, True)])
def test_positions_counted_on_from_a_past_by_the_mask_length_are_read_as_an_offset(shift, sliced):
    # No position_ids: positions T - S + s for a mask of T tokens over S new ones (a decode step's);
    # with a constant shift the caches hold the shifted rows; sliced off a table, a longer ids input
    # slices at a negative past, which the original cannot run either (a review's case, once refused).
    model = _rotary_model(past_shift=shift, past_slice=sliced)
    fusion = RotaryEmbeddingFusion(cache_length=64)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    (rotary,) = [n for n in after.graph if n.op_type == "RotaryEmbedding"]
    assert rotary.inputs[1].shape == ir.Shape([1]) and rotary.inputs[1].name not in ("mask", "ids")
    for new, past in ((6, 0), (1, 9), (3, 20)):
        feeds = _inputs(sequence=new)
        feeds["mask"] = np.ones((2, new + past), np.int64)
        feeds["ids"] = np.ones((2, new), np.int64)
        assert_same_outputs(model, after, feeds, rtol=1e-5, atol=1e-5)


def test_positions_that_depend_on_the_past_length_in_another_way_are_left_alone():
    # 2 (T - S) + s: the token index without a past, neither it nor counted on with one.
    model = _rotary_model(past_shift=0, past_factor=2)
    result = RotaryEmbeddingFusion(cache_length=64)(model.clone())
    assert not result.modified
    assert result.refusals == [
        "1 near match at Add left unfused: rotary positions follow neither the token index nor one input's length "
        "past the others'"
    ]


def test_a_past_counted_only_up_to_a_constant_is_left_alone():
    # Min(T - S, 16) + s: the same as counting on at pasts of 6 and 4, not from 17 on (a review's case).
    model = _rotary_model(past_shift=0, past_clamp=16)
    result = RotaryEmbeddingFusion(cache_length=64)(model.clone())
    assert not result.modified and "nor one input's length past the others'" in result.refusals[0]


def test_a_mask_not_named_like_one_still_gives_the_offset():
    # The [B, T] input named 'valid_tokens': each input is made longer in turn, whatever its name.
    proto = ir.to_proto(_rotary_model(past_shift=0))
    for value in proto.graph.input:
        value.name = "valid_tokens" if value.name == "mask" else value.name
    for node in proto.graph.node:
        node.input[:] = ["valid_tokens" if name == "mask" else name for name in node.input]
    model = ir.from_proto(proto)
    fusion = RotaryEmbeddingFusion(cache_length=64)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    for new, past in ((6, 0), (1, 9), (3, 20)):
        feeds = _inputs(sequence=new)
        del feeds["mask"]
        feeds["valid_tokens"] = np.ones((2, new + past), np.int64)
        feeds["ids"] = np.ones((2, new), np.int64)
        assert_same_outputs(model, after, feeds, rtol=1e-5, atol=1e-5)


def test_the_cache_length_is_also_taken_as_max_sequence_like_the_other_fusions():
    assert RotaryEmbeddingFusion("cpu", max_sequence=8192).cache_length == 8192
    assert RotaryEmbeddingFusion(cache_length=64).cache_length == 64


def _rotate_half_bounds(size: int) -> dict[str, np.ndarray]:
    """The Slice bounds ``_rotated_nodes`` reads (with ``axl``, the last axis)."""
    return {"s0": np.array([0], np.int64), "mid": np.array([size // 2], np.int64), "end": np.array([size], np.int64)}


def _rotated_nodes() -> list[onnx.NodeProto]:
    """``y = x * cos + rotate_half(x) * sin`` (Hugging Face's rotate_half), over ``x``, ``cos`` and ``sin``."""
    return [
        helper.make_node("Slice", ["x", "s0", "mid", "axl"], ["lo"]),
        helper.make_node("Slice", ["x", "mid", "end", "axl"], ["hi"]),
        helper.make_node("Neg", ["hi"], ["nhi"]),
        helper.make_node("Concat", ["nhi", "lo"], ["rot"], axis=-1),
        helper.make_node("Mul", ["x", "cos"], ["a"]),
        helper.make_node("Mul", ["rot", "sin"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]


def _positions_from_token_ids_model() -> ir.Model:
    """Rotary over positions ``max(cumsum(input_ids != 0) - 1, 0)`` (pad-aware, fairseq style): they read
    the token ids' values, which the probes feed as ones."""
    heads, size = 2, 8
    inv = (1.0 / 10000 ** (np.arange(0, size, 2) / size)).astype(np.float32).reshape(1, -1)
    consts = {
        "emb": np.random.default_rng(0).standard_normal((1000, heads * size)).astype(np.float32),
        "inv": inv,
        "pad": np.array(0, np.int64),
        "one": np.array(1, np.int64),
        "one_f": np.array(1.0, np.float32),
        "zero_f": np.array(0.0, np.float32),
        "ax1": np.array([1], np.int64),
        "axl": np.array([-1], np.int64),
        "hs": np.array([0, 0, heads, size], np.int64),
        **_rotate_half_bounds(size),
    }
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
        helper.make_node("Equal", ["input_ids", "pad"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["real"]),
        helper.make_node("Cast", ["real"], ["real_f"], to=TensorProto.FLOAT),
        helper.make_node("CumSum", ["real_f", "one"], ["cum"]),
        helper.make_node("Sub", ["cum", "one_f"], ["pm1"]),
        helper.make_node("Max", ["pm1", "zero_f"], ["pos2"]),
        helper.make_node("Unsqueeze", ["pos2", "axl"], ["pos"]),
        helper.make_node("MatMul", ["pos", "inv"], ["fr"]),
        helper.make_node("Concat", ["fr", "fr"], ["tab"], axis=-1),
        helper.make_node("Cos", ["tab"], ["cos3"]),
        helper.make_node("Sin", ["tab"], ["sin3"]),
        helper.make_node("Unsqueeze", ["cos3", "ax1"], ["cos"]),
        helper.make_node("Unsqueeze", ["sin3", "ax1"], ["sin"]),
        helper.make_node("Reshape", ["h", "hs"], ["sp"]),
        helper.make_node("Transpose", ["sp"], ["x"], perm=[0, 2, 1, 3]),
        *_rotated_nodes(),
    ]
    graph = helper.make_graph(
        nodes,
        "rope_from_ids",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", heads, "sequence", size])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    return ir.from_proto(proto)


def test_positions_read_from_token_id_values_are_left_alone():
    # A review's model: fused and verified (random ids from 1000 are almost never the pad id 0), while a
    # left-padded row differed by 5.2. The probes feed ones for token ids, so their values must not be read.
    result = RotaryEmbeddingFusion(cache_length=64)(_positions_from_token_ids_model())
    assert not result.modified
    assert any("read the values of an input (token ids?)" in line for line in result.refusals)


def _per_head_rotary_model(sequence_first: bool = False) -> ir.Model:
    """Rotary on a 4-D per-head tensor that is no head split (Qwen3 normalizes each head first):
    ``x [B, N, S, d]`` with ``[B, 1, S, d]`` tables from ``position_ids``; ``sequence_first``: ``x [B, S, N, d]``
    with ``[B, S, 1, d]`` tables (rotated before the transpose), a layout RotaryEmbedding cannot read."""
    heads, size = 3, 8
    inv = (1.0 / 10000 ** (np.arange(0, size, 2) / size)).astype(np.float32)
    consts = {
        "inv": inv.reshape(1, 1, -1),
        "table_axis": np.array([2 if sequence_first else 1], np.int64),
        "axl": np.array([-1], np.int64),
        **_rotate_half_bounds(size),
    }
    nodes = [
        helper.make_node("Cast", ["position_ids"], ["pos_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["pos_f", "axl"], ["pos"]),
        helper.make_node("Mul", ["pos", "inv"], ["fr"]),
        helper.make_node("Concat", ["fr", "fr"], ["tab"], axis=-1),
        helper.make_node("Cos", ["tab"], ["cos3"]),
        helper.make_node("Sin", ["tab"], ["sin3"]),
        helper.make_node("Unsqueeze", ["cos3", "table_axis"], ["cos"]),
        helper.make_node("Unsqueeze", ["sin3", "table_axis"], ["sin"]),
        *_rotated_nodes(),
    ]
    layout = ["batch", "sequence", heads, size] if sequence_first else ["batch", heads, "sequence", size]
    graph = helper.make_graph(
        nodes,
        "per_head_rotary",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, layout),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, layout)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    return ir.from_proto(proto)


def test_a_per_head_tensor_that_is_no_head_split_is_rotated_as_it_is():
    # A review: Qwen3's q_norm/k_norm sit between the head split and the rotary, which was left unfused
    # ("x is not a head split"); RotaryEmbedding reads a 4-D [B, N, S, d] input itself.
    model = _per_head_rotary_model()
    result = RotaryEmbeddingFusion(cache_length=64)(model.clone())
    assert result.modified and op_types(result.model).count("RotaryEmbedding") == 1
    rng = np.random.default_rng(0)
    for sequence in (5, 9):
        positions = np.stack([np.arange(sequence), np.arange(sequence) + 3])
        feeds = {"x": rng.standard_normal((2, 3, sequence, 8)).astype(np.float32), "position_ids": positions}
        assert_same_outputs(model, result.model, feeds, rtol=1e-5, atol=1e-5)


def test_a_4d_tensor_rotated_before_its_transpose_is_left_alone():
    # x [B, S, N, d] with [B, S, 1, d] tables: RotaryEmbedding would read axis 1 as the heads.
    result = RotaryEmbeddingFusion(cache_length=64)(_per_head_rotary_model(sequence_first=True))
    assert not result.modified
    assert any("[B or 1, 1, S, d]" in line for line in result.refusals)


def _position_table_model(rows: int) -> ir.Model:
    """cos/sin Gathered from a ``[rows, d]`` table by ``position_ids`` (GPT-J's ``embed_positions``), x [B, 2, S, 8]."""
    heads, size = 2, 8
    inv = (1.0 / 10000 ** (np.arange(0, size, 2) / size)).astype(np.float32)
    angles = np.arange(rows)[:, None] * inv[None]
    table = np.concatenate([angles, angles], axis=-1)
    consts = {
        "cos_table": np.cos(table).astype(np.float32),
        "sin_table": np.sin(table).astype(np.float32),
        "ax1": np.array([1], np.int64),
        "axl": np.array([-1], np.int64),
        **_rotate_half_bounds(size),
    }
    nodes = [
        helper.make_node("Gather", ["cos_table", "position_ids"], ["cos3"]),
        helper.make_node("Gather", ["sin_table", "position_ids"], ["sin3"]),
        helper.make_node("Unsqueeze", ["cos3", "ax1"], ["cos"]),
        helper.make_node("Unsqueeze", ["sin3", "ax1"], ["sin"]),
        *_rotated_nodes(),
    ]
    layout = ["batch", heads, "sequence", size]
    graph = helper.make_graph(
        nodes,
        "table_rotary",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, layout),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, layout)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    return ir.from_proto(proto)


def test_caches_end_where_a_position_table_shorter_than_max_sequence_ends():
    # GPT-J gathers cos/sin from its n_positions-row table: at the default --max-sequence they could not
    # be evaluated and the rotary was refused. The original refuses position 20 and on, as the fused op does.
    model = _position_table_model(rows=20)
    result = RotaryEmbeddingFusion(cache_length=64)(model.clone())
    assert result.modified and op_types(result.model).count("RotaryEmbedding") == 1
    assert result.notes[0] == (
        "rotary caches end at 20 positions, where cos/sin's tables end (the original refuses position 20); "
        "the fused model takes no longer sequences, as with --max-sequence 20"
    )
    assert len(result.notes) == 2 and "refuses a negative position" in result.notes[1]
    (rotary,) = [n for n in result.model.graph if n.op_type == "RotaryEmbedding"]
    assert rotary.inputs[2].const_value.shape == (20, 4)
    rng = np.random.default_rng(0)
    for sequence in (5, 20):
        positions = np.stack([np.arange(sequence), np.arange(sequence)[::-1]])
        feeds = {"x": rng.standard_normal((2, 2, sequence, 8)).astype(np.float32), "position_ids": positions}
        assert_same_outputs(model, result.model, feeds, rtol=1e-5, atol=1e-5)


def test_a_position_table_too_short_for_caches_names_max_sequence():
    # An 8-row table: shorter than any cache built on a guess; the refusal names --max-sequence.
    model = _position_table_model(rows=8)
    result = RotaryEmbeddingFusion(cache_length=64)(model.clone())
    assert not result.modified
    assert any("at 64 positions (--max-sequence) nor at 16" in line for line in result.refusals)
    assert RotaryEmbeddingFusion(cache_length=8)(model.clone()).modified


def test_the_heads_split_target_is_an_initializer_not_a_constant_node():
    # The pipeline lifts Constant nodes and merges equal computations before the fusions and deduplicates
    # initializers after them: a Constant per layer was left for a second run to merge and lift.
    model = _rotary_model()
    after = RotaryEmbeddingFusion(cache_length=64)(model.clone()).model
    assert "Constant" not in op_types(after)
    (split,) = [
        n for n in after.graph if n.op_type == "Reshape" and n.inputs[0].producer().op_type == "RotaryEmbedding"
    ]
    assert split.inputs[1].is_initializer()
    assert split.inputs[1].const_value.numpy().tolist() == [0, 0, HEADS, HEAD_SIZE]
    assert_same_outputs(model, after, _inputs(), rtol=1e-5, atol=1e-5)

"""Review s62 sweep (base 88f7d66 vs head cb2900d over the fixtures, the s59/s60 models and new tiny exports).

Finding: Phi-3's LongRoPE (transformers' dynamo export: ``inv_freq = long if max(position_ids) + 1 >
original_max_position_embeddings else short``, a one-element ``Greater`` over ``ReduceMax(position_ids)``) was fused
into RotaryEmbedding by 88f7d66 where ``--max-sequence`` (the rotary caches' length) is at most
``original_max_position_embeddings``: no position the fused model takes switches the factors. cb2900d refuses it
("an ordering of a value that may rise and fall with the length"): the comparison reads no length, and positions
past the caches are refused by ONNX Runtime anyway. An ordering of the largest (smallest) position id and constants
is monotone in it; where it holds the same at positions 0 and ``max_sequence - 1`` it is no reason to refuse
(``_probe._same_over_positions``). Where it does switch within the caches (``--max-sequence`` past the original
length) the rotary is still left unfused.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.rotary_embedding import RotaryEmbeddingFusion
from tests.helpers import run

HEADS, HEAD_SIZE, ORIGINAL = 2, 8, 32


def _longrope_model() -> ir.Model:
    """``rotate(h)`` at ``position_ids`` with LongRoPE's factors: the long ones where ``max(position_ids) + 1 >
    ORIGINAL``, the short ones elsewhere (transformers' ``longrope_frequency_update``, as torch.export writes it)."""
    base = (1.0 / 10000 ** (np.arange(0, HEAD_SIZE, 2) / HEAD_SIZE)).astype(np.float32)
    consts = {
        "short": (base / np.array([1.0, 1.1, 1.2, 1.3], np.float32)).reshape(1, -1),
        "long": (base / np.array([2.0, 3.0, 4.0, 5.0], np.float32)).reshape(1, -1),
        "one": np.array(1, np.int64),
        "original": np.array(ORIGINAL, np.int64),
        "axis1": np.array([1], np.int64),
        "axes_last": np.array([-1], np.int64),
        "heads_shape": np.array([0, 0, HEADS, HEAD_SIZE], np.int64),
        "lo_start": np.array([0], np.int64),
        "mid": np.array([HEAD_SIZE // 2], np.int64),
        "end": np.array([np.iinfo(np.int64).max], np.int64),
    }
    n = helper.make_node
    nodes = [
        n("ReduceMax", ["position_ids"], ["max_position"], keepdims=0),
        n("Add", ["max_position", "one"], ["seq_len"]),
        n("Greater", ["seq_len", "original"], ["is_long"]),
        n("Where", ["is_long", "long", "short"], ["inv_freq"]),
        n("Cast", ["position_ids"], ["positions_2d"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["positions_2d", "axes_last"], ["positions"]),
        n("MatMul", ["positions", "inv_freq"], ["freqs"]),
        n("Concat", ["freqs", "freqs"], ["table"], axis=-1),
        n("Cos", ["table"], ["cos3"]),
        n("Sin", ["table"], ["sin3"]),
        n("Unsqueeze", ["cos3", "axis1"], ["cos"]),
        n("Unsqueeze", ["sin3", "axis1"], ["sin"]),
        n("Reshape", ["h", "heads_shape"], ["split"]),
        n("Transpose", ["split"], ["x"], perm=[0, 2, 1, 3]),
        n("Slice", ["x", "lo_start", "mid", "axes_last"], ["lo"]),
        n("Slice", ["x", "mid", "end", "axes_last"], ["hi"]),
        n("Neg", ["hi"], ["neg_hi"]),
        n("Concat", ["neg_hi", "lo"], ["rotated"], axis=-1),
        n("Mul", ["x", "cos"], ["x_cos"]),
        n("Mul", ["rotated", "sin"], ["rot_sin"]),
        n("Add", ["x_cos", "rot_sin"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "longrope",
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", "S", HEADS * HEAD_SIZE]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", "S"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["B", "S"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", HEADS, "S", HEAD_SIZE])],
        [numpy_helper.from_array(array, name) for name, array in consts.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _feeds(sequence: int, start: int = 0, padded: bool = False) -> dict[str, np.ndarray]:
    mask = np.ones((2, sequence), np.int64)
    if padded and sequence > 2:
        mask[1, :2] = 0
    positions = np.where(mask == 0, 1, np.cumsum(mask, 1) - 1 + start)
    h = np.random.default_rng(sequence).standard_normal((2, sequence, HEADS * HEAD_SIZE)).astype(np.float32)
    return {"h": h, "mask": mask, "position_ids": positions.astype(np.int64)}


def _worst(model: ir.Model, fused: ir.Model, cache_length: int) -> float:
    cases = [(1, 0, False), (5, 0, True), (17, 0, True), (1, cache_length - 1, False), (3, cache_length - 3, False)]
    cases.append((cache_length, 0, False))
    worst = 0.0
    for sequence, start, padded in cases:
        feeds = _feeds(sequence, start, padded)
        worst = max(worst, float(np.abs(run(model, feeds)["y"] - run(fused, feeds)["y"]).max()))
    return worst


def test_longrope_within_its_original_length_is_fused():
    model = _longrope_model()
    fusion = RotaryEmbeddingFusion(cache_length=ORIGINAL)
    result = fusion(model.clone())
    assert fusion.fused_count == 1, result.refusals
    assert _worst(model, result.model, ORIGINAL) < 1e-5


def test_longrope_switching_within_the_caches_is_not_fused_wrong():
    model = _longrope_model()
    for cache_length in (2 * ORIGINAL, 128):
        fusion = RotaryEmbeddingFusion(cache_length=cache_length)
        result = fusion(model.clone())
        difference = _worst(model, result.model, cache_length)
        assert difference < 1e-5, f"fused {fusion.fused_count}, off by {difference:.3g} with caches of {cache_length}"

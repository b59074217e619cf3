"""fuse-rotary-embedding: ``position_ids`` of another shape than ``[batch, sequence]``, which the original broadcasts.

ONNX Runtime's RotaryEmbedding reads ``position_ids`` of exactly ``[B, S]`` (or a ``[1]`` offset): a ``[1, S]``
fed for a batch of several rows made the fused model fail ("Input 'position_ids' dimension 0 should be of size
batch_size") where the original ran. The fused op reads them expanded to ``[B, S]``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import optimize
from passes.fusion.rotary_embedding import RotaryEmbeddingFusion
from tests.helpers import FIXTURES, assert_same_outputs, inferred_model, op_types

HEADS, HEAD_SIZE, HIDDEN = 2, 8, 12


def _decoder_rotary(*, per_head: bool = False, batch_shift: bool = False, shift_times: str = "") -> ir.Model:
    """``rotate_half`` of the query and key projections of ``hidden`` [B, S, HIDDEN], positions from ``position_ids``.

    ``per_head``: each head is scaled by a per-head Mul between the split and the rotary (a 4-D tensor that is
    no head split, as Qwen3's normalized heads). ``batch_shift``: the angles are of
    ``position_ids + Shape(position_ids)[0] - Shape(input_ids)[0]``: the same on ``[B, S]`` positions, one less on
    ``[1, S]`` positions fed for 2 rows (a near miss: the broadcast positions are not the ones rotated).
    ``shift_times`` multiplies that shift by ``B - 2`` (``"batch"``: zero at 2 rows, not at 3) or by
    ``Shape(position_ids)[1] - S`` (``"sequence"``: zero unless both dims broadcast, ``[1, 1]``).
    """
    rng = np.random.default_rng(0)
    width = HEADS * HEAD_SIZE
    half = HEAD_SIZE // 2
    inv_freq = (1.0 / 10000 ** (np.arange(0, HEAD_SIZE, 2) / HEAD_SIZE)).astype(np.float32)
    consts = {
        "inv_freq": inv_freq.reshape(1, -1),
        "axes_last": np.array([-1], np.int64),
        "axis1": np.array([1], np.int64),
        "zero1": np.array([0], np.int64),
        "heads_shape": np.array([0, 0, HEADS, HEAD_SIZE], np.int64),
        "lo_start": np.array([0], np.int64),
        "mid": np.array([half], np.int64),
        "end": np.array([np.iinfo(np.int64).max], np.int64),
        "scale": rng.uniform(0.5, 1.5, (1, HEADS, 1, HEAD_SIZE)).astype(np.float32),
    }
    for name in ("q", "k"):
        consts[f"w_{name}"] = rng.standard_normal((HIDDEN, width)).astype(np.float32)
        consts[f"b_{name}"] = rng.standard_normal(width).astype(np.float32)
    positions = "position_ids"
    nodes = []
    if batch_shift:
        positions = "shifted"
        nodes += [
            helper.make_node("Shape", ["position_ids"], ["positions_shape"], start=0, end=1),
            helper.make_node("Shape", ["input_ids"], ["ids_shape"], start=0, end=1),
            helper.make_node("Sub", ["positions_shape", "ids_shape"], ["shift"]),
        ]
        if shift_times == "batch":
            consts["two"] = np.array([2], np.int64)
            nodes += [
                helper.make_node("Sub", ["ids_shape", "two"], ["factor"]),
                helper.make_node("Mul", ["shift", "factor"], ["shift_by"]),
            ]
        elif shift_times == "sequence":
            nodes += [
                helper.make_node("Shape", ["position_ids"], ["positions_length"], start=1, end=2),
                helper.make_node("Shape", ["input_ids"], ["ids_length"], start=1, end=2),
                helper.make_node("Sub", ["positions_length", "ids_length"], ["factor"]),
                helper.make_node("Mul", ["shift", "factor"], ["shift_by"]),
            ]
        nodes.append(helper.make_node("Add", ["position_ids", "shift_by" if shift_times else "shift"], ["shifted"]))
    nodes += [
        helper.make_node("Cast", [positions], ["positions_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["positions_f", "axes_last"], ["positions_3d"]),
        helper.make_node("MatMul", ["positions_3d", "inv_freq"], ["freqs"]),  # [B, S, d/2]
        helper.make_node("Concat", ["freqs", "freqs"], ["table"], axis=-1),
        helper.make_node("Cos", ["table"], ["cos3"]),
        helper.make_node("Sin", ["table"], ["sin3"]),
        helper.make_node("Unsqueeze", ["cos3", "axis1"], ["cos"]),
        helper.make_node("Unsqueeze", ["sin3", "axis1"], ["sin"]),
    ]
    for name in ("q", "k"):
        nodes += [
            helper.make_node("MatMul", ["hidden", f"w_{name}"], [f"{name}_product"]),
            helper.make_node("Add", [f"{name}_product", f"b_{name}"], [f"{name}_hidden"]),
            helper.make_node("Reshape", [f"{name}_hidden", "heads_shape"], [f"{name}_split"]),
            helper.make_node("Transpose", [f"{name}_split"], [f"{name}_heads"], perm=[0, 2, 1, 3]),
        ]
        x = f"{name}_heads"
        if per_head:
            nodes.append(helper.make_node("Mul", [x, "scale"], [f"{name}_scaled"]))
            x = f"{name}_scaled"
        nodes += [
            helper.make_node("Slice", [x, "lo_start", "mid", "axes_last"], [f"{name}_lo"]),
            helper.make_node("Slice", [x, "mid", "end", "axes_last"], [f"{name}_hi"]),
            helper.make_node("Neg", [f"{name}_hi"], [f"{name}_neg_hi"]),
            helper.make_node("Concat", [f"{name}_neg_hi", f"{name}_lo"], [f"{name}_rotated"], axis=-1),
            helper.make_node("Mul", [x, "cos"], [f"{name}_x_cos"]),
            helper.make_node("Mul", [f"{name}_rotated", "sin"], [f"{name}_rot_sin"]),
            helper.make_node("Add", [f"{name}_x_cos", f"{name}_rot_sin"], [name]),
        ]
    graph = helper.make_graph(
        nodes,
        "decoder_rotary",
        [
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
            *([helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])] * batch_shift),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("q", "k")],
        [numpy_helper.from_array(array, name) for name, array in consts.items()],
    )
    return inferred_model(graph)


def _feeds(positions: np.ndarray, batch: int = 2, sequence: int = 5) -> dict[str, np.ndarray]:
    hidden = np.random.default_rng(sequence).standard_normal((batch, sequence, HIDDEN)).astype(np.float32)
    return {"hidden": hidden, "position_ids": positions.astype(np.int64)}


@pytest.mark.parametrize("per_head", [False, True])
def test_position_ids_the_original_broadcasts_over_the_batch_or_sequence_run_fused(per_head):
    model = _decoder_rotary(per_head=per_head)
    fusion = RotaryEmbeddingFusion(cache_length=64)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 2
    assert not {"Cos", "Sin", "Neg"} & set(op_types(after))
    sequence = 5
    for positions in (
        np.arange(sequence)[None] + 3,  # [1, S] for 2 rows: ONNX Runtime's RotaryEmbedding refused it
        np.array([[4], [9]]),  # [B, 1]: one position per row, broadcast over the sequence
        np.stack([np.arange(sequence), np.arange(sequence) + 7]),  # [B, S] as declared
    ):
        assert_same_outputs(model, after, _feeds(positions), rtol=1e-5, atol=1e-5)
    assert_same_outputs(model, after, _feeds(np.arange(1)[None] + 11, batch=3, sequence=1), rtol=1e-5, atol=1e-5)
    expands = [n for n in after.graph if n.op_type == "Expand"]
    # The query and key of one projection input share one expansion; two 4-D tensors have one each.
    assert len(expands) == (2 if per_head else 1)
    assert all(n.inputs[0].name == "position_ids" for n in expands)


def test_tables_that_change_when_position_ids_are_broadcast_are_left_alone():
    # The same tables as the original's on [B, S] position ids, but not on [1, S] ones fed for 2 rows:
    # expanding the input would rotate by other positions than the original's, so it is refused.
    result = RotaryEmbeddingFusion(cache_length=64)(_decoder_rotary(batch_shift=True))
    assert not result.modified
    assert any("(broadcast by the original) are not the cache's rows" in line for line in result.refusals)


@pytest.mark.parametrize("shift_times", ["batch", "sequence"])
def test_tables_that_change_when_position_ids_are_broadcast_at_another_size_are_left_alone(shift_times):
    # A review: probed at one batch (2) and with [1, S] and [B, 1] only, tables shifted by (B_p - B)(B - 2) or
    # (B_p - B)(S_p - S) matched the broadcast rows, and [1, S] ids for 3 rows (or [1, 1] ids) were rotated by
    # other positions than the original's, verified (the verifier feeds [B, S] ids only).
    result = RotaryEmbeddingFusion(cache_length=64)(_decoder_rotary(batch_shift=True, shift_times=shift_times))
    assert not result.modified
    assert any("(broadcast by the original) are not the cache's rows" in line for line in result.refusals), (
        result.refusals
    )


@pytest.mark.parametrize("name", ["llama_kv_legacy", "llama_kv_dynamo"])
def test_an_exported_llama_runs_one_row_of_positions_for_a_batch_fused(name):
    # The KV fixtures, fused: a prompt of 5 tokens after a past of 4, position_ids [[4..8]] for 2 rows.
    model = ir.load(FIXTURES / f"{name}.onnx")
    passes = ["fold-constants", "simplify-shapes", "merge-subexpressions", "fuse-rotary-embedding"]
    after = optimize(model.clone(), passes, verify=False)
    assert op_types(after).count("RotaryEmbedding") == 4
    assert_same_outputs(model, after, _one_row_of_positions(model), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["llama_kv_legacy", "llama_kv_dynamo"])
def test_optimizing_the_fused_model_again_keeps_the_positions_broadcast(name):
    # A review: the default pipeline run on its own result took the rotary's Expand(position_ids, Shape(x)[:2])
    # for a copy (fold-constants and simplify-shapes read position_ids' declared [batch, sequence] as the
    # hidden states'), and the second result refused [1, S] positions for 2 rows, verified.
    model = ir.load(FIXTURES / f"{name}.onnx")
    once = optimize(model.clone(), verify=False)
    twice = optimize(once.clone(), verify=False)
    assert op_types(twice).count("RotaryEmbedding") == 4
    assert op_types(twice).count("Expand") == op_types(once).count("Expand")
    assert_same_outputs(model, twice, _one_row_of_positions(model), rtol=1e-4, atol=1e-5)


def _one_row_of_positions(model: ir.Model) -> dict[str, np.ndarray]:
    """A prompt of 5 tokens after a past of 4 for 2 rows, ``position_ids`` ``[[4..8]]`` (one row for both)."""
    rng = np.random.default_rng(0)
    past, new = 4, 5
    feeds = {
        "input_ids": rng.integers(1, 256, (2, new)),
        "attention_mask": np.ones((2, past + new), np.int64),
        "position_ids": np.arange(past, past + new)[None],
    }
    for value in model.graph.inputs:
        if value.name.startswith("past_key_values."):
            heads, size = value.shape[1], value.shape[3]
            feeds[value.name] = rng.standard_normal((2, heads, past, size)).astype(np.float32)
    return feeds

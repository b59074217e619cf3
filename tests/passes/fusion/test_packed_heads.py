"""split-packed-heads: query, key and value taken apart from one packed projection (timm's ``qkv.reshape(B, N, 3, H,
d).permute(2, 0, 3, 1, 4)`` then ``unbind``/``qkv[i]``, Paddle's Slice + Squeeze) into a head split of a slice each,
which fuse-attention and pack-qkv then fuse into one ``Attention`` with the packed weights as they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optimizer.api import optimize_with_report
from passes.fusion.packed_heads import PackedHeadsSplit
from tests.helpers import assert_same_outputs, op_types

FIXTURES = Path(__file__).parents[2] / "fixtures"
PACKED = ["vit_packed_unbind_legacy", "vit_packed_unbind_dynamo", "vit_packed_index_legacy"]
WIDTH, HEADS, SIZE = 8, 2, 4


def _images(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"pixel_values": np.random.default_rng(seed).standard_normal((batch, 3, 16, 16)).astype(np.float32)}


@pytest.mark.parametrize("name", PACKED)
def test_each_exporters_parts_are_split_and_fused_into_attention(name):
    # Legacy unbind: Split + Squeeze; dynamo unbind: Slice + Squeeze; qkv[i]: Gather. Each must end as two
    # Attention ops with the outputs of the export.
    original = ir.load(FIXTURES / f"{name}.onnx")
    split = PackedHeadsSplit()
    result = split(original.clone())
    assert result.modified and split.fused_count == 6  # 3 parts in each of 2 blocks
    packed = [n for n in result.model.graph if n.op_type == "Transpose" and list(n.attributes["perm"].value)[0] == 2]
    assert not packed  # the [3, B, H, S, d] tensor is read by nothing left
    for batch in (2, 3):
        assert_same_outputs(original, result.model, _images(batch, seed=batch))
    optimized, report = optimize_with_report(original.clone())
    assert op_types(optimized).count("Attention") == 2, [r.notes for r in report.passes]
    statuses = {record.name: record.status for record in report.passes}
    assert statuses["split-packed-heads"] == "applied" and statuses["pack-qkv"] == "applied"
    for batch in (1, 3):
        assert_same_outputs(original, optimized, _images(batch, seed=10 + batch), rtol=1e-4, atol=1e-5)


def _paddle_attention(
    perm=(2, 0, 3, 1, 4), target_from: str = "h", take_start: int = 0, parts: tuple[int, ...] = (0, 1, 2)
) -> ir.Model:
    """Paddle2ONNX's SVTR attention on ``h [B, S, 8]``: ``x = h @ W + b``, reshaped to ``[0, S, 3, 2, 4]`` (S is
    ``Shape(h)[1]`` read through an int32 Cast; for ``target_from``, ``[C, T, 3, 2, 4]`` of ``other [C, T]``),
    transposed by ``perm``, each part a one-wide Slice along axis 0 (from ``take_start``; query, key and value the
    ``parts``-th) and a Squeeze; scaled Q @ K^T, Softmax, @ V, heads merged back to ``[B, S, 8]``."""
    rng = np.random.default_rng(0)
    init = [
        helper.make_tensor("w", TensorProto.FLOAT, [WIDTH, 3 * WIDTH], rng.standard_normal(3 * WIDTH * WIDTH) * 0.3),
        helper.make_tensor("b", TensorProto.FLOAT, [3 * WIDTH], rng.standard_normal(3 * WIDTH) * 0.1),
        helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("one", TensorProto.INT32, [1], [1]),
        helper.make_tensor("two", TensorProto.INT32, [1], [2]),
        helper.make_tensor("axis0", TensorProto.INT32, [1], [0]),
        helper.make_tensor("tail", TensorProto.INT64, [3], [3, HEADS, SIZE]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [SIZE**-0.5]),
        helper.make_tensor("merged", TensorProto.INT64, [3], [0, 0, WIDTH]),
    ]
    nodes = [
        helper.make_node("MatMul", ["h", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["x"]),
        helper.make_node("Shape", [target_from], ["shape"]),
        helper.make_node("Cast", ["shape"], ["shape32"], to=TensorProto.INT32),
        helper.make_node("Slice", ["shape32", "one", "two", "axis0"], ["seq32"]),
        helper.make_node("Cast", ["seq32"], ["seq"], to=TensorProto.INT64),
        helper.make_node("Slice", ["shape32", "axis0", "one", "axis0"], ["batch32"]),
        helper.make_node("Cast", ["batch32"], ["batch"], to=TensorProto.INT64),
        helper.make_node("Concat", ["zero" if target_from == "h" else "batch", "seq", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["packed5"]),
        helper.make_node("Transpose", ["packed5"], ["qkv"], perm=list(perm)),
    ]
    for i, part in enumerate("qkv"):
        start, end = take_start + parts[i], take_start + parts[i] + 1
        init += [
            helper.make_tensor(f"s{i}", TensorProto.INT64, [1], [start]),
            helper.make_tensor(f"e{i}", TensorProto.INT64, [1], [end]),
        ]
        nodes += [
            helper.make_node("Slice", ["qkv", f"s{i}", f"e{i}", "zero"], [f"{part}1"]),
            helper.make_node("Squeeze", [f"{part}1", "zero"], [part]),
        ]
    nodes += [
        helper.make_node("Mul", ["q", "scale"], ["qs"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["qs", "kt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["context"]),
        helper.make_node("Transpose", ["context"], ["tokens"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["tokens", "merged"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", "S", WIDTH])]
    if target_from != "h":
        inputs.append(helper.make_tensor_value_info(target_from, TensorProto.FLOAT, ["C", "T"]))
    graph = helper.make_graph(
        nodes, "svtr", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", WIDTH])], init
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _tokens(batch: int, seq: int, seed: int = 0, other: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {"h": rng.standard_normal((batch, seq, WIDTH)).astype(np.float32)}
    if other is not None:
        feeds["other"] = rng.standard_normal((batch, other)).astype(np.float32)
    return feeds


def test_paddles_slice_and_squeeze_with_an_int32_target_fuse_into_attention():
    # PP-OCRv4's recognizer (SVTR): the sequence entry of the target is Shape(h)[1] read through int32.
    original = _paddle_attention()
    optimized, report = optimize_with_report(original.clone())
    assert op_types(optimized).count("Attention") == 1, [(r.name, r.notes) for r in report.passes]
    for batch, seq in ((1, 5), (3, 11)):
        assert_same_outputs(original, optimized, _tokens(batch, seq, seed=seq), rtol=1e-4, atol=1e-5)


def test_a_packed_tensor_whose_first_axis_is_not_the_parts_is_left_alone():
    original = _paddle_attention(perm=(0, 2, 3, 1, 4))  # [B, 3, H, S, d]: axis 0 is the batch
    split = PackedHeadsSplit()
    result = split(original.clone())
    assert not result.modified and split.fused_count == 0


def test_leading_dims_not_known_to_copy_the_projections_are_refused_with_a_reason():
    # Batch and sequence read from another input: valid wherever they match h's, but not provably so (one such entry
    # beside a copy would be: the element count fixes it).
    original = _paddle_attention(target_from="other")
    split = PackedHeadsSplit()
    result = split(original.clone())
    assert not result.modified
    assert any("leading dims are not known to copy" in line for line in result.refusals), result.refusals
    assert_same_outputs(original, result.model, _tokens(2, 6, other=6))


def test_a_part_taken_past_the_axis_is_left_as_it_is():
    # Slices starting at 1, 2 and 3: the third is empty (the graph fails at run time); none is rewritten wrongly.
    split = PackedHeadsSplit()
    split(_paddle_attention(take_start=1).clone())
    assert split.fused_count == 2  # parts 1 and 2; the one-wide slice at 3 is no part


def test_parts_out_of_order_fuse_into_multi_head_attention_but_are_not_packed():
    # Key from the first third, query from the second: MultiHeadAttention over the slices, never Attention's packed
    # weights read in the wrong order.
    original = _paddle_attention(parts=(1, 0, 2))
    optimized, report = optimize_with_report(original.clone())
    ops = op_types(optimized)
    assert ops.count("MultiHeadAttention") == 1 and "Attention" not in ops
    (packing,) = [record for record in report.passes if record.name == "pack-qkv"]
    assert any("not the thirds of one projection, in order" in line for line in packing.refusals), packing.refusals
    assert_same_outputs(original, optimized, _tokens(2, 7), rtol=1e-4, atol=1e-5)


def test_a_reshape_target_read_through_int32_casts_becomes_constant():
    # Paddle casts the Shape to int32 to slice it and back: simplify-shapes follows the casts, so the target is a
    # constant and shape inference gives the heads' ranks to the passes after it (PP-OCRv4's second attention block).
    from passes._utils import constant_array
    from passes.shape_simplification import ShapeSimplificationPass

    original = _paddle_attention()
    result = ShapeSimplificationPass()(original.clone())
    (reshape,) = [n for n in result.model.graph if n.op_type == "Reshape" and n.outputs[0].name == "packed5"]
    assert constant_array(reshape.inputs[1]).tolist() in ([0, 0, 3, HEADS, SIZE], [0, -1, 3, HEADS, SIZE])
    assert_same_outputs(original, result.model, _tokens(2, 9))

"""fuse-rotary-embedding on ONNX's own ``RotaryEmbedding`` (opset 23, torch's dynamo export at ``optimize=True``):
written out, fused as any spelled-out rotation, and put back where the match refuses it
(``passes/fusion/_onnx_rotary.py``)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import optimizer
from passes.fusion.rotary_embedding import RotaryEmbeddingFusion
from tests.helpers import FIXTURES, run
from tests.test_decoder_cache import KV_FIXTURES, decode_feed, prompts, step_feed

_HEADS, _HEAD = 2, 8
_HIDDEN = _HEADS * _HEAD
_POSITIONS = 64


def _ops(model: ir.Model) -> Counter:
    return Counter((node.domain or "", node.op_type) for node in model.graph)


def _rotated(*, tables: str = "computed", rotary_dim: int = 0, interleaved: int = 0) -> ir.Model:
    """x [B, S, 16] → a projection split into 2 heads of 8 → ONNX RotaryEmbedding → heads merged → y.

    ``tables``: "computed" (cos/sin ``[B, S, r/2]`` computed from ``position_ids``, as torch's export writes them),
    "caches" (``[64, r/2]`` initializers the op indexes with ``position_ids``) or "inputs" (cos/sin fed as float
    graph inputs: no positions prove them, fuse-rotary-embedding refuses).
    """
    width = (rotary_dim or _HEAD) // 2
    rng = np.random.default_rng(0)
    inverse = (10000.0 ** (-np.arange(width) / width)).astype(np.float32)
    angles = np.arange(_POSITIONS, dtype=np.float32)[:, None] * inverse
    inits = [
        helper.make_tensor("W", TensorProto.FLOAT, [_HIDDEN, _HIDDEN], rng.standard_normal(_HIDDEN * _HIDDEN) * 0.3),
        helper.make_tensor("split", TensorProto.INT64, [4], [0, 0, _HEADS, _HEAD]),
        helper.make_tensor("merge", TensorProto.INT64, [3], [0, 0, _HIDDEN]),
        helper.make_tensor("last", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("inv_freq", TensorProto.FLOAT, [width], inverse),
        helper.make_tensor("cos_cache", TensorProto.FLOAT, [_POSITIONS, width], np.cos(angles).ravel()),
        helper.make_tensor("sin_cache", TensorProto.FLOAT, [_POSITIONS, width], np.sin(angles).ravel()),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", _HIDDEN]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["proj"]),
        helper.make_node("Reshape", ["proj", "split"], ["heads_split"]),
        helper.make_node("Transpose", ["heads_split"], ["heads"], perm=[0, 2, 1, 3]),
    ]
    rotary_inputs = ["heads", "cos", "sin"]
    if tables == "computed":
        nodes += [
            helper.make_node("Unsqueeze", ["position_ids", "last"], ["positions"]),
            helper.make_node("Cast", ["positions"], ["positions_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["positions_float", "inv_freq"], ["freqs"]),
            helper.make_node("Cos", ["freqs"], ["cos"]),
            helper.make_node("Sin", ["freqs"], ["sin"]),
        ]
    elif tables == "caches":
        rotary_inputs = ["heads", "cos_cache", "sin_cache", "position_ids"]
    else:
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "sequence", width]) for n in "cs"]
        rotary_inputs = ["heads", "c", "s"]
    partial = {"rotary_embedding_dim": rotary_dim} if rotary_dim else {}
    nodes += [
        helper.make_node("RotaryEmbedding", rotary_inputs, ["rotated"], interleaved=interleaved, **partial),
        helper.make_node("Transpose", ["rotated"], ["rotated_split"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["rotated_split", "merge"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "onnx_rotary",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", _HIDDEN])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return ir.from_proto(proto)


def _feed(model: ir.Model) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feed = {
        "x": rng.standard_normal((2, 5, _HIDDEN)).astype(np.float32),
        "position_ids": np.array([[0, 1, 2, 3, 4], [1, 1, 0, 1, 2]], np.int64),  # row 1 left-padded
    }
    for name in ("c", "s"):
        if name in {v.name for v in model.graph.inputs}:
            feed[name] = rng.standard_normal((2, 5, _HEAD // 2)).astype(np.float32)
    return feed


@pytest.mark.parametrize("tables", ["computed", "caches"])
@pytest.mark.parametrize("rotary_dim", [0, 4])
def test_onnx_rotary_becomes_the_contrib_op_on_the_projection(tables, rotary_dim):
    model = _rotated(tables=tables, rotary_dim=rotary_dim)
    result = RotaryEmbeddingFusion(max_sequence=_POSITIONS)(model.clone())
    assert result.modified, result.refusals
    ops = _ops(result.model)
    assert ops[("com.microsoft", "RotaryEmbedding")] == 1 and ops[("", "RotaryEmbedding")] == 0, ops
    # The contrib op rotates the 3-D projection: nothing of the written-out form is left.
    assert not {op for _, op in ops} & {"Neg", "Slice", "Cos", "Sin"}, ops
    feed = _feed(model)
    np.testing.assert_allclose(run(result.model, feed)["y"], run(model, feed)["y"], rtol=1e-5, atol=1e-6)


def test_interleaved_is_left_as_written_with_the_reason():
    model = _rotated(interleaved=1)
    result = RotaryEmbeddingFusion(max_sequence=_POSITIONS)(model.clone())
    assert not result.modified
    assert _ops(result.model) == _ops(model)
    assert any("interleaved=1" in reason for reason in result.refusals), result.refusals


def test_a_written_out_node_the_match_refuses_is_put_back():
    # cos/sin fed as float inputs prove no positions: fuse-rotary-embedding refuses the written-out rotation, and it
    # is taken back whole (the node, its readers, no added node or initializer left).
    model = _rotated(tables="inputs")
    before = ir.to_proto(model.clone())
    result = RotaryEmbeddingFusion(max_sequence=_POSITIONS)(model.clone())
    assert not result.modified
    after = ir.to_proto(result.model)
    assert [n.op_type for n in after.graph.node] == [n.op_type for n in before.graph.node]
    assert [(n.input, n.output) for n in after.graph.node] == [(n.input, n.output) for n in before.graph.node]
    assert [i.name for i in after.graph.initializer] == [i.name for i in before.graph.initializer]
    assert any("written out" in reason for reason in result.refusals), result.refusals


def test_the_optimized_opset_23_decoder_fuses_as_its_opset_20_export():
    # torch's dynamo export at opset 23 with optimize=True (attention, rotary and RMS norms as ONNX's own ops),
    # through the default pipeline: the ops of the opset-20 export's result (the norms left as ONNX's
    # RMSNormalization, which ONNX Runtime runs as fast), verified, and the same logits and cache on a decode step.
    ids, mask = prompts(3)
    kv = KV_FIXTURES["llama_kv_dynamo_opset23_optimized"]
    results = {}
    for name in ("llama_kv_dynamo_opset23_optimized", "llama_kv_dynamo"):
        original = ir.load(FIXTURES / f"{name}.onnx")
        optimized, report = optimizer.optimize_with_report(original.clone(), inputs=step_feed(kv, ids, mask, None))
        assert report.verified, report.failures()
        results[name] = (original, optimized)
    original, optimized = results["llama_kv_dynamo_opset23_optimized"]
    ops = Counter(node.op_type for node in optimized.graph)
    want = Counter(node.op_type for node in results["llama_kv_dynamo"][1].graph)
    want["RMSNormalization"] = want.pop("SimplifiedLayerNormalization")
    assert ops == want
    feed = decode_feed(kv)
    expected, got = run(original, feed), run(optimized, feed)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("tables", ["computed", "caches"])
def test_the_note_on_out_of_range_positions_is_made_only_where_the_original_computed_them(tables):
    # ONNX's RotaryEmbedding that reads position_ids into its own caches refuses a negative or too large position,
    # as the fused op does: no note that the fused op refuses what the original computed (a review).
    result = RotaryEmbeddingFusion(max_sequence=_POSITIONS)(_rotated(tables=tables).clone())
    assert result.modified
    noted = any("where the original computed any" in note for note in result.notes)
    assert noted == (tables == "computed"), result.notes

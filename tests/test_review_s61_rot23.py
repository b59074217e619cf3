"""Review s61 (rot23): fuse-rotary-embedding on ONNX's own RotaryEmbedding (opset 23)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir

from passes.fusion.rotary_embedding import RotaryEmbeddingFusion
from tests.helpers import run
from tests.passes.fusion.test_onnx_rotary import _POSITIONS, _feed, _rotated


def _ops(model: ir.Model) -> Counter:
    return Counter((node.domain or "", node.op_type) for node in model.graph)


def test_onnx_rotary_of_a_file_without_recorded_shapes_is_fused():
    # A model saved without value_info (after an edit, or by a tool that drops it): the float32 input's type and
    # shape are not recorded. The node was left as "its input is not float32"; fuse-attention infers them for
    # ONNX's Attention, and so must this pass.
    proto = ir.to_proto(_rotated(tables="caches"))
    del proto.graph.value_info[:]
    model = ir.from_proto(proto)
    result = RotaryEmbeddingFusion(max_sequence=_POSITIONS)(ir.from_proto(proto))
    assert not any("not float32" in reason for reason in result.refusals), result.refusals
    assert result.modified, result.refusals
    ops = _ops(result.model)
    assert ops[("com.microsoft", "RotaryEmbedding")] == 1 and ops[("", "RotaryEmbedding")] == 0, ops
    feed = _feed(model)
    np.testing.assert_allclose(run(result.model, feed)["y"], run(model, feed)["y"], rtol=1e-5, atol=1e-6)
    # The inferred shapes were taken back: the values the pass kept are as the file recorded them.
    kept = ir.to_proto(result.model)
    onnx.checker.check_model(kept)


def test_onnx_rotary_refused_without_recorded_shapes_leaves_the_file_as_it_was():
    # The shapes inferred for the pass are taken back with the refused node: nothing changes, not even value_info.
    proto = ir.to_proto(_rotated(tables="inputs"))
    del proto.graph.value_info[:]
    before = ir.to_proto(ir.from_proto(proto))
    result = RotaryEmbeddingFusion(max_sequence=_POSITIONS)(ir.from_proto(proto))
    assert not result.modified
    assert any("written out, not matched" in reason for reason in result.refusals), result.refusals
    after = ir.to_proto(result.model)
    assert after.graph == before.graph


def _rotated_as_output(tables: str) -> ir.Model:
    """``_rotated`` whose rotated heads are also a graph output, as a prefill exported with its cache returns the
    rotated key as ``present.0.key``."""
    proto = ir.to_proto(_rotated(tables=tables))
    rotated = next(v for v in proto.graph.value_info if v.name == "rotated")
    proto.graph.output.append(rotated)
    return ir.from_proto(proto)


def test_onnx_rotary_whose_output_is_a_graph_output_is_fused_under_its_name():
    # Refused as "its output is a graph output" until now: a prefill export with its cache kept its keys'
    # rotations as ONNX's op, where its opset-20 export's result fused them.
    model = _rotated_as_output("caches")
    result = RotaryEmbeddingFusion(max_sequence=_POSITIONS)(model.clone())
    assert result.modified, result.refusals
    assert not result.refusals, result.refusals
    ops = _ops(result.model)
    assert ops[("com.microsoft", "RotaryEmbedding")] == 1 and ops[("", "RotaryEmbedding")] == 0, ops
    assert [v.name for v in result.model.graph.outputs] == ["y", "rotated"]
    feed = _feed(model)
    expected, got = run(model, feed), run(result.model, feed)
    for name in ("y", "rotated"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_onnx_rotary_whose_output_is_a_graph_output_is_put_back_as_it_was():
    model = _rotated_as_output("inputs")  # cos/sin fed as inputs: the match refuses
    before = ir.to_proto(model.clone())
    result = RotaryEmbeddingFusion(max_sequence=_POSITIONS)(model.clone())
    assert not result.modified
    assert any("written out, not matched" in reason for reason in result.refusals), result.refusals
    assert ir.to_proto(result.model).graph == before.graph

"""Review of the day's diff (b0d99af..98e86df): what held up is in the review's report; what did not is here."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto

from optimizer import accuracy
from passes.fusion.attention import AttentionFusion
from tests.helpers import run
from tests.passes.fusion.test_onnx_attention import _encoder, _feed


def _probabilities(bias: np.ndarray, seed: int = 1) -> np.ndarray:
    """A softmax over 8 classes at 16 positions, class 0 the winner everywhere: ``probs [4, 16, 8]``."""
    logits = np.random.default_rng(seed).standard_normal((4, 16, 8)) * 0.3 + bias
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return (exp / exp.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("score_outputs", [frozenset(), frozenset({"probs"})])
def test_small_classes_split_off_a_softmax_get_no_top1(score_outputs):
    # The other classes' probabilities (~3e-4) lie over 100x below the winner's: they are scored as an output of
    # their own. Their argmax is the runner-up, not the top-1: AFTER nudges the losers' logits by 0.02, every
    # position keeps its class (top-1 1.000), and the part read "top-1 0.969" beside it.
    bias = np.array([8.0, 0, 0, 0, 0, 0, 0, 0])
    before = _probabilities(bias)
    after = _probabilities(bias + np.r_[0.0, np.random.default_rng(0).normal(0.0, 0.02, 7)])
    rows = {item.name: item for item in accuracy.compare_accuracy({"probs": before}, {"probs": after}, score_outputs)}
    assert rows["probs"].top1_agreement == 1.0
    part = rows["probs[1-7 along axis 2]"]
    assert part.cosine is not None and part.top1_agreement is None


def _without_recorded_shapes(model: ir.Model) -> ir.Model:
    """``model`` as a file that records no type or shape for its intermediate values (valid ONNX: the legacy
    exporter writes none, and tools that rebuild a graph drop them)."""
    proto = ir.to_proto(model)
    del proto.graph.value_info[:]
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_onnx_attention_without_recorded_shapes_is_fused():
    # Q, K and V had no recorded dtype: the float32 node was left as "it is not float32 or float16", though the pass
    # infers what the file does not record for spelled-out attention (and the default pipeline left it so too).
    model = _without_recorded_shapes(_encoder())
    result = AttentionFusion()(model.clone())
    assert result.modified, result.refusals
    ops = Counter(node.op_type for node in result.model.graph)
    assert ops["MultiHeadAttention"] == 1 and ops["Attention"] == 0, ops
    feed = _feed()
    np.testing.assert_allclose(run(result.model, feed)["y"], run(model, feed)["y"], rtol=1e-5, atol=1e-6)


def test_onnx_attention_without_recorded_shapes_is_refused_for_its_own_reason():
    # float16 is written out and taken back, with the match's reason, not "it is not float32 or float16".
    model = _without_recorded_shapes(_encoder(dtype=TensorProto.FLOAT16))
    result = AttentionFusion()(model.clone())
    assert not result.modified
    assert not any("not float32 or float16" in reason for reason in result.refusals), result.refusals
    assert any("written out" in reason for reason in result.refusals), result.refusals
    assert [node.op_type for node in result.model.graph] == [node.op_type for node in model.graph]


def test_opset_23_decoder_without_recorded_shapes_reaches_group_query_attention():
    # The Llama KV fixture with its value_info dropped: the default pipeline left both layers as "key/value heads
    # [None, None] are not known to equal the query's None", and so fuse-group-query-attention found no cache.
    import optimizer
    from tests.helpers import FIXTURES
    from tests.test_decoder_cache import KV_FIXTURES, decode_feed, prompts, step_feed

    proto = onnx.load(FIXTURES / "llama_kv_dynamo_opset23.onnx")
    del proto.graph.value_info[:]
    original = ir.from_proto(proto)
    kv = KV_FIXTURES["llama_kv_dynamo_opset23"]
    ids, mask = prompts(3)
    optimized, report = optimizer.optimize_with_report(original.clone(), inputs=step_feed(kv, ids, mask, None))
    statuses = {record.name: record.status for record in report.passes}
    assert statuses["fuse-attention"] == statuses["fuse-group-query-attention"] == "applied", report.failures()
    ops = Counter(node.op_type for node in optimized.graph)
    assert ops["GroupQueryAttention"] == 2 and ops["Attention"] == 0, ops
    feed = decode_feed(kv)
    want, got = run(original, feed), run(optimized, feed)
    for name, expected in want.items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-4, atol=1e-5, err_msg=name)

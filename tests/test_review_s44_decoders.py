"""Review (s44): decoders with a KV cache — rotary / GroupQueryAttention fusion, verification, ``compare --generate``.

Each finding is a strict xfail that fails now for the reason it states.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from optimizer.api import optimize_with_report
from optimizer.generation import left_padded
from tests.helpers import FIXTURES

VOCAB = 256
_PASSES = ["fold-constants", "simplify-shapes", "merge-subexpressions", "fuse-rotary-embedding"]


@pytest.fixture(scope="module")
def llama_rotary(tmp_path_factory):
    """llama_kv_legacy with its rotary embeddings fused (verified, applied), saved; and the original's path."""
    original = str(FIXTURES / "llama_kv_legacy.onnx")
    model, report = optimize_with_report(ir.load(original), passes=_PASSES)
    statuses = {record.name: record.status for record in report.passes}
    assert statuses["fuse-rotary-embedding"] == "applied", statuses
    assert not report.failures(), report.failures()
    assert sum(node.op_type == "RotaryEmbedding" for node in model.graph) == 4
    path = str(tmp_path_factory.mktemp("s44") / "llama_rotary.onnx")
    ir.save(model, path)
    notes = next(record.notes for record in report.passes if record.name == "fuse-rotary-embedding")
    return original, path, notes


def _prefill_feed(position_at_pads: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A left-padded prefill of two rows (10 and 6 tokens); positions ``cumsum(mask) - 1``, pads set to
    ``position_at_pads`` (a serving loop that leaves ``cumsum - 1`` unmasked gives -1 there)."""
    rng = np.random.default_rng(0)
    ids, mask = left_padded([rng.integers(0, VOCAB, 10), rng.integers(0, VOCAB, 6)])
    positions = np.where(mask == 0, position_at_pads, np.cumsum(mask, axis=1) - 1)
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions.astype(np.int64)}
    for layer in range(2):
        for kind in ("key", "value"):
            feed[f"past_key_values.{layer}.{kind}"] = np.zeros((2, 2, 0, 16), np.float32)
    return feed, mask.astype(bool)


def _logits(path: str, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], feed)[0]


def test_fused_rotary_matches_at_pads_holding_position_one(llama_rotary):
    """What held: transformers' convention (pads at position 1) gives the original's logits at every real token."""
    original, fused, _ = llama_rotary
    feed, real = _prefill_feed(1)
    np.testing.assert_allclose(_logits(fused, feed)[real], _logits(original, feed)[real], rtol=1e-4, atol=1e-5)


def test_fused_rotary_refuses_pads_at_position_minus_one_loudly_and_says_so(llama_rotary):
    """The original computes cos/sin from ``position_ids`` at run time and runs any int64 position: with the
    pads' positions left at ``cumsum(mask) - 1 = -1`` (a loop that does not ``masked_fill`` them), its logits at
    the real tokens are those of the usual convention. The fused model's ``RotaryEmbedding`` reads a 4096-row
    table and ONNX Runtime refuses the whole batch (``position_ids value -1 ... is out of range [0, 4096)``):
    a loud refusal, never other values, and the pass's report says so (the review found it unsaid; clamping the
    positions would change a real token's negative position without a check seeing it)."""
    original, fused, notes = llama_rotary
    feed, real = _prefill_feed(-1)
    expected = _logits(original, feed)
    reference, _ = _prefill_feed(1)
    np.testing.assert_allclose(expected[real], _logits(original, reference)[real], rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="out of range"):
        _logits(fused, feed)
    assert any("refuses a negative position" in note for note in notes), notes

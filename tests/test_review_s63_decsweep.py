"""Review s63 (decoder sweep): CodeGen's interleaved rotary, its heads split off a packed projection's groups.

``codegen_kv_legacy.onnx``: a random-weight CodeGen (2 layers, hidden 64, 4 heads of 16, the first 8 channels of each
head rotated in interleaved pairs from a fixed 128-position table), one cache step exported by the legacy exporter
(``python benchmarks/decoder_families.py export --families codegen``). CodeGen reshapes its packed QKV projection
into ``mp_num`` groups (``[B, S, 4, 48]``), splits query, value and key off each group and reshapes them into
``[B, S, N, d]`` heads: no head split of one 3-D projection, and shape inference leaves its dims unknown. Its four
rotaries were left unfused ("x of an interleaved rotation is no head split of a 3-D projection (before or after its
transpose), nor a 4-D tensor of static head count and size"), though ``x`` is a ``[B, S, 4, 16]`` tensor; now such
an ``x`` is merged into ``[B, S, N*d]`` for ``RotaryEmbedding(interleaved=1)`` and split back (legacy 488 → 132
nodes, was 172; the dynamo exports at opsets 18 and 23 fuse the same way), and generation stays the export's.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from tests.helpers import FIXTURES
from tests.test_decoder_families import _feed, _session

VOCAB = 256
NAME = "codegen_kv_legacy"


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    result, report = optimizer.optimize_with_report(ir.load(FIXTURES / f"{NAME}.onnx"))
    path = tmp_path_factory.mktemp(NAME) / f"{NAME}.opt.onnx"
    ir.save(result, path)
    return path, result, report


def test_codegen_rotaries_fuse_into_rotary_embedding(optimized):
    _, result, report = optimized
    counts = Counter(node.op_type for node in result.graph.all_nodes())
    assert (counts["RotaryEmbedding"], counts["GroupQueryAttention"]) == (4, 2)
    assert all(
        node.attributes.get_int("interleaved", 0) == 1 and node.attributes.get_int("rotary_embedding_dim", 0) == 8
        for node in result.graph.all_nodes()
        if node.op_type == "RotaryEmbedding"
    )
    assert report.verified and not [record.name for record in report.passes if record.status == "rolled back"]


def test_fused_codegen_generates_as_the_export_does_left_padded(optimized):
    # A left-padded batch of 2 (the second row 4 pads of 9), a prefill and 16 greedy decode steps, each model fed
    # its own presents and the original's tokens; logits compared at every real position and step.
    path, _, _ = optimized
    sessions = [_session(FIXTURES / f"{NAME}.onnx"), _session(path)]
    outputs = [value.name for value in sessions[0].get_outputs()]
    ids = np.random.default_rng(1).integers(1, VOCAB, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, :4] = 0
    caches = [None, None]
    for _ in range(17):
        results = [s.run(outputs, _feed(s, ids, mask, c)) for s, c in zip(sessions, caches, strict=True)]
        real = mask[:, -ids.shape[1] :] == 1
        np.testing.assert_allclose(results[1][0][real], results[0][0][real], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(results[1][0][:, -1].argmax(-1), results[0][0][:, -1].argmax(-1))
        caches = [result[1:] for result in results]
        ids = results[0][0][:, -1].argmax(-1)[:, None]
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)

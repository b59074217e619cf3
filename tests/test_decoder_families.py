"""Decoder families beyond the Llama and GPT-2 fixtures, exported with a KV cache.

``falcon_kv_legacy.onnx``: a random-weight Falcon (2 layers, hidden 64, 4 heads of 16, rotary) with multi-query
attention (one key/value head, broadcast over the query's heads by MatMul), one cache step exported by the legacy
exporter (``/work/exportenv/bin/python benchmarks/decoder_families.py export --families falcon``). Its attention
scale reads the head size as ``Slice(Shape(q), [-1], [max])``, on query and key alike; left computed, that scale
on the key hid the cache's ``Concat`` from fuse-group-query-attention, and the attention stayed a
MultiHeadAttention that concatenates the cache itself.

``phi3_kv_legacy.onnx``: a random-weight Phi-3 (packed QKV projection, the whole head rotated), exported the same
way (``--families phi3``). Its rotary reads ``q[..., :rotary_dim]`` with ``rotary_dim`` the head size: a Slice that
takes the whole head, once simplify-shapes has proven the head split's target. Left in place, the rotary fused on
the Slice's 4-D output, and the query and key went into GroupQueryAttention through Transpose + Reshape adapters
(121 nodes against 97).

``gemma3_kv_legacy.onnx`` (``--families gemma3``: per-head query/key norms, one sliding-window layer of 6 tokens and
one global layer) and ``smollm3_kv_dynamo.onnx`` (``--families smollm3``: the second layer has no rotary, NoPE) guard
spellings the Llama fixtures lack.

Each model must fuse, and the fused model must answer as the export does through padded prompts and decode steps
fed its own presents (metamorphic: the same generation before and after).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

import optimizer
from tests.helpers import FIXTURES

VOCAB = 256
# fixture -> the fused ops the default pipeline must leave
FAMILIES = {
    "falcon_kv_legacy": {"GroupQueryAttention": 2, "RotaryEmbedding": 4, "MultiHeadAttention": 0},
    "phi3_kv_legacy": {"GroupQueryAttention": 2, "RotaryEmbedding": 4, "Transpose": 0},
    "gemma3_kv_legacy": {"GroupQueryAttention": 2, "RotaryEmbedding": 4, "SimplifiedLayerNormalization": 13},
    "smollm3_kv_dynamo": {"GroupQueryAttention": 2, "RotaryEmbedding": 2, "SimplifiedLayerNormalization": 5},
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def optimized(request, tmp_path_factory):
    name = request.param
    result, report = optimizer.optimize_with_report(ir.load(FIXTURES / f"{name}.onnx"))
    path = tmp_path_factory.mktemp(name) / f"{name}.opt.onnx"
    ir.save(result, path)
    return name, path, result, report


def test_the_family_fuses_into_group_query_attention(optimized):
    name, _, result, report = optimized
    counts = Counter(node.op_type for node in result.graph.all_nodes())
    assert {op: counts[op] for op in FAMILIES[name]} == FAMILIES[name]
    assert report.verified and not [record.name for record in report.passes if record.status == "rolled back"]


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feed(session, ids, mask, cache) -> dict[str, np.ndarray]:
    inputs = {value.name: value for value in session.get_inputs()}
    rows, new = ids.shape
    feed = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in inputs:
        feed["position_ids"] = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)[:, -new:]
    pasts = [name for name in inputs if name.startswith("past_key_values.")]
    for index, name in enumerate(pasts):
        heads, size = inputs[name].shape[1], inputs[name].shape[3]
        feed[name] = cache[index] if cache is not None else np.zeros((rows, heads, 0, size), np.float32)
    return feed


@pytest.mark.parametrize(("rows", "padding"), [(1, None), (2, "left"), (2, "right")])
def test_the_fused_model_generates_as_the_export_does(optimized, rows, padding):
    name, path, _, _ = optimized
    sessions = [_session(FIXTURES / f"{name}.onnx"), _session(path)]
    outputs = [value.name for value in sessions[0].get_outputs()]
    rng = np.random.default_rng(rows)
    for prompt in (1, 9):
        mask = np.ones((rows, prompt), np.int64)
        if padding == "left" and prompt > 2:
            mask[1, : prompt // 3] = 0
        if padding == "right" and prompt > 2:
            mask[1, prompt - prompt // 3 :] = 0
        ids = rng.integers(1, VOCAB, (rows, prompt))
        caches = [None, None]
        for step in range(5):  # the prompt, then a chunk of 3 tokens, then one token at a time
            results = [s.run(outputs, _feed(s, ids, mask, c)) for s, c in zip(sessions, caches, strict=True)]
            real = mask[:, -ids.shape[1] :] == 1
            np.testing.assert_allclose(results[1][0][real], results[0][0][real], rtol=1e-4, atol=1e-4)
            caches = [result[1:] for result in results]
            count = 3 if step == 1 else 1
            token = results[0][0][:, -1].argmax(-1)[:, None]
            ids = np.concatenate([token, rng.integers(1, VOCAB, (rows, count - 1))], axis=1)
            mask = np.concatenate([mask, np.ones((rows, count), np.int64)], axis=1)

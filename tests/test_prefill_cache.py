"""A prefill exported with its cache but no past input (``llama_kv_prefill_dynamo_opset23.onnx``).

Its ``present.*`` outputs are the cache the decode steps read next; at the positions the mask pads, what a
fused attention writes there differs from the original's (a query row whose keys are all masked is undefined)
and no later step reads it. Verification hides those positions as it does for a cache computed from a past
input (``optimizer.padding.padded_caches``), so fusing the attention is kept; a change at a real position is
still caught, and the presents drive the decode steps of the same model (``llama_kv_dynamo_opset23.onnx``, the
same weights) to the same tokens.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper

import optimizer
from optimizer.padding import cache_outputs, padded_caches
from optimizer.report import STATUS_APPLIED
from optimizer.verify import Verifier
from tests.helpers import FIXTURES
from tests.test_decoder_cache import DECODE_STEPS, PRESENT_NAMES, prompts, step_feed

PREFILL = FIXTURES / "llama_kv_prefill_dynamo_opset23.onnx"
DECODE = FIXTURES / "llama_kv_dynamo_opset23.onnx"
KV_HEADS = 2


def _prefill_feed(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    feed = step_feed(KV_HEADS, ids, mask, None)
    return {name: feed[name] for name in ("input_ids", "attention_mask", "position_ids")}


def _generate(prefill: ort.InferenceSession, decode: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray):
    """Greedy tokens and each step's last logits: the prefill file, then the decode file fed its presents."""
    outputs = prefill.run(["logits", *PRESENT_NAMES], _prefill_feed(ids, mask))
    tokens, logits = [], [outputs[0][:, -1]]
    for _ in range(DECODE_STEPS):
        token = logits[-1].argmax(-1).astype(np.int64)[:, None]
        tokens.append(token)
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
        outputs = decode.run(["logits", *PRESENT_NAMES], step_feed(KV_HEADS, token, mask, outputs[1:]))
        logits.append(outputs[0][:, -1])
    return np.concatenate(tokens, axis=1), logits


def test_a_prefills_returned_cache_is_read_as_one():
    model = ir.load(PREFILL)
    assert not cache_outputs(model)  # no past input: not a Concat of one
    assert padded_caches(model) == set(PRESENT_NAMES)
    # Named along another sequence than the mask's (an encoder's cross-attention cache), it is compared everywhere.
    proto = onnx.load(PREFILL)
    for output in proto.graph.output[1:]:
        output.type.tensor_type.shape.dim[2].dim_param = "encoder_sequence"
    assert not padded_caches(ir.from_proto(proto))


def test_attention_fuses_on_a_prefill_returning_its_cache_and_generation_is_unchanged(tmp_path):
    output = tmp_path / "prefill.onnx"
    _, report = optimizer.optimize_with_report(str(PREFILL), output=output)
    status = {entry.name: entry.status for entry in report.passes}
    assert status["fuse-attention"] == STATUS_APPLIED  # was rolled back: padded presents compared
    fused = onnx.load(output)
    assert not any(node.op_type == "Attention" and node.domain == "" for node in fused.graph.node)
    assert [value.name for value in fused.graph.output] == ["logits", *PRESENT_NAMES]
    decode = ort.InferenceSession(str(DECODE), providers=["CPUExecutionProvider"])
    before = ort.InferenceSession(str(PREFILL), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        ids, mask = prompts(batch)
        want_tokens, want_logits = _generate(before, decode, ids, mask)
        got_tokens, got_logits = _generate(after, decode, ids, mask)
        np.testing.assert_array_equal(got_tokens, want_tokens)
        for got, want in zip(got_logits, want_logits):
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_a_present_changed_at_real_positions_still_fails_verification():
    model = ir.load(PREFILL)
    ids, mask = prompts(3)
    verifier = Verifier(model, [_prefill_feed(ids, mask)])
    proto = onnx.load(PREFILL)
    graph = proto.graph
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.001, np.float32), "scale"))
    for node in graph.node:
        node.output[:] = ["present.1.key.unscaled" if name == "present.1.key" else name for name in node.output]
        node.input[:] = ["present.1.key.unscaled" if name == "present.1.key" else name for name in node.input]
    graph.node.append(helper.make_node("Mul", ["present.1.key.unscaled", "scale"], ["present.1.key"]))
    result = verifier.check(ir.from_proto(proto))
    assert not result.ok and "present.1.key" in result.first_failure

"""The default pipeline on causal LMs exported with a KV cache, driven by a greedy generation loop.

The ``*_kv_*.onnx`` fixtures (tests/fixtures/export_fixtures.py) run one step: token ids,
an attention mask over past and new tokens, position ids and ``past_key_values.{i}.key/value``
in; ``logits`` and ``present.{i}.key/value`` out. The optimized model must generate the same
tokens and logits as the original when its presents are fed back as the next step's past.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import optimizer
from optimizer.inputs import cache_length_dims, make_inputs
from optimizer.report import STATUS_APPLIED, STATUS_UNCHANGED
from tests.helpers import FIXTURES

VOCAB = 256
LAYERS = 2
HEAD_DIM = 16
PREFILL = 5
DECODE_STEPS = 8
VERIFY_PAST = 7

KV_FIXTURES = {  # name -> KV heads
    "gpt2_kv_legacy": 4,
    "gpt2_kv_dynamo": 4,
    "llama_kv_legacy": 2,
    "llama_kv_dynamo": 2,
    "llama_kv_dynamo_opset23": 2,  # sdpa as ONNX's own Attention
    "llama_kv_dynamo_opset23_optimized": 2,  # attention, rotary and RMS norms as ONNX's own ops
}
PAST_NAMES = [f"past_key_values.{i}.{kind}" for i in range(LAYERS) for kind in ("key", "value")]
PRESENT_NAMES = [f"present.{i}.{kind}" for i in range(LAYERS) for kind in ("key", "value")]

Step = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def step_feed(
    kv_heads: int, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray] | None
) -> dict[str, np.ndarray]:
    """One step's inputs; positions count unmasked tokens (pads get 1, as transformers' generate does)."""
    batch, sequence = input_ids.shape
    if past is None:
        past = [np.zeros((batch, kv_heads, 0, HEAD_DIM), dtype=np.float32)] * len(PAST_NAMES)
    positions = np.cumsum(attention_mask, axis=1) - 1
    positions = np.where(attention_mask == 0, 1, positions)[:, -sequence:].astype(np.int64)
    feed = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": positions}
    feed.update(zip(PAST_NAMES, past, strict=True))
    return feed


def decode_feed(kv_heads: int, batch: int = 2) -> dict[str, np.ndarray]:
    """A decode step after a past of ``VERIFY_PAST`` tokens; row 1 is left-padded by 2."""
    rng = np.random.default_rng(0)
    mask = np.ones((batch, VERIFY_PAST + 1), dtype=np.int64)
    mask[1:, :2] = 0
    past = [rng.standard_normal((batch, kv_heads, VERIFY_PAST, HEAD_DIM)).astype(np.float32) for _ in PAST_NAMES]
    return step_feed(kv_heads, rng.integers(1, VOCAB, (batch, 1)), mask, past)


def session_step(path: str) -> Step:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda feed: session.run(["logits", *PRESENT_NAMES], feed)


def greedy(step: Step, kv_heads: int, prompt: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Prefill ``prompt`` then decode ``DECODE_STEPS`` greedy tokens; returns tokens and each step's last logits."""
    outputs = step(step_feed(kv_heads, prompt, mask, None))
    tokens, logits = [], [outputs[0][:, -1]]
    for _ in range(DECODE_STEPS):
        token = logits[-1].argmax(-1).astype(np.int64)[:, None]
        tokens.append(token)
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
        outputs = step(step_feed(kv_heads, token, mask, outputs[1:]))
        logits.append(outputs[0][:, -1])
    return np.concatenate(tokens, axis=1), logits


def prompts(batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` prompts of ``PREFILL`` tokens; row ``i`` is left-padded by ``2 * i`` (pad id 0)."""
    rng = np.random.default_rng(batch)
    ids = rng.integers(1, VOCAB, (batch, PREFILL), dtype=np.int64)
    mask = np.ones_like(ids)
    for row in range(1, batch):
        mask[row, : 2 * row] = 0
        ids[row, : 2 * row] = 0
    return ids, mask


@pytest.fixture(scope="module", params=sorted(KV_FIXTURES))
def optimized(request, tmp_path_factory):
    name = request.param
    output = tmp_path_factory.mktemp(name) / "optimized.onnx"
    _, report = optimizer.optimize_with_report(
        str(FIXTURES / f"{name}.onnx"), output=output, inputs=decode_feed(KV_FIXTURES[name])
    )
    return name, output, report


def test_every_pass_applies_or_leaves_the_model_unchanged(optimized):
    name, output, report = optimized
    assert all(record.status in (STATUS_APPLIED, STATUS_UNCHANGED) for record in report.passes), report.failures()
    if not name.endswith("_optimized"):  # onnxscript's optimizer has already shrunk an optimize=True export
        assert report.nodes_after < 0.35 * report.nodes_before, (report.nodes_before, report.nodes_after)
    ops = Counter(node.op_type for node in ir.load(output).graph)
    # Attention over the cache is one kernel that appends to it: no Concat of past and new keys is left.
    assert ops["GroupQueryAttention"] == LAYERS
    assert ops["MultiHeadAttention"] == 0
    assert not [n for n in ir.load(output).graph if n.op_type == "Concat" and n.outputs[0].is_graph_output()]
    if name.startswith("llama"):
        assert ops["RotaryEmbedding"] == 2 * LAYERS  # query and key of each layer
        # ONNX's own RMSNormalization (an optimize=True export's) is left as written: ONNX Runtime runs it as fast.
        assert ops["SimplifiedLayerNormalization"] + ops["RMSNormalization"] == 2 * LAYERS + 1
    # The second verification binding is generated; it happens to keep total = past + new tokens.
    second = report.inputs[1]
    assert second["attention_mask"][1] == second["past_key_values.0.key"][2] + second["input_ids"][1]


@pytest.mark.parametrize("batch", [1, 2])
def test_optimized_model_generates_the_same_tokens(optimized, batch):
    name, output, _ = optimized
    kv_heads = KV_FIXTURES[name]
    ids, mask = prompts(batch)
    want_tokens, want_logits = greedy(session_step(str(FIXTURES / f"{name}.onnx")), kv_heads, ids, mask)
    got_tokens, got_logits = greedy(session_step(str(output)), kv_heads, ids, mask)
    np.testing.assert_array_equal(got_tokens, want_tokens)
    for got, want in zip(got_logits, want_logits, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(KV_FIXTURES))
def test_generated_inputs_give_the_mask_the_past_plus_new_length(name):
    # The mask spans the cache and the new tokens: generated inputs bind its length dim to
    # past + sequence (128 + 128 by default, 255 + 257 at the second binding: lengths named apart are drawn
    # apart), so a KV-cache model is verified without --inputs. GPT-2's position_ids index its 128-row wpe: past
    # and new tokens together stay within it (64 + 64; the second binding, which cannot be longer, 31 + 33), the
    # positions counting on from the past.
    model = ir.load(FIXTURES / f"{name}.onnx")
    assert cache_length_dims(model) == {"total_sequence": ("past_sequence", "sequence")}
    _, report = optimizer.optimize_with_report(model)
    new, second = (64, 33) if name.startswith("gpt2") else (128, 257)
    # The past is what the model itself caches for random tokens, not N(0, 1) numbers.
    assert report.input_sets[0] == (
        f"generated (batch=1, sequence={new}, total_sequence={2 * new}, past_sequence={new}), "
        "the cache the model builds from random tokens"
    )
    assert report.input_sets[1].startswith(
        f"generated, second binding (batch=2, sequence={second}, total_sequence={2 * second - 2}, "
        f"past_sequence={second - 2})"
    )
    assert all(record.status in ("applied", "unchanged") for record in report.passes)


def test_generated_positions_of_a_decode_step_start_after_the_cache():
    # Rotary positions read no table: they count from the past length, as in a real decode step.
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    inputs = make_inputs(model, {"sequence": 3, "past_sequence": 5})
    assert inputs["position_ids"].tolist() == [[5, 6, 7]]
    assert inputs["attention_mask"].shape == (1, 8)


def _counting_positions_on_from_the_mask(tmp_path) -> str:
    """The Llama KV fixture without its ``position_ids`` input: positions ``Range(T - S, T)`` from the mask's
    length ``T`` and the ids' ``S``, as a decoder that counts on from its past computes them."""
    proto = onnx.load(FIXTURES / "llama_kv_legacy.onnx")
    graph = proto.graph
    graph.input.remove(next(value for value in graph.input if value.name == "position_ids"))
    constants = [
        numpy_helper.from_array(np.array([1], np.int64), "positions/axis"),
        numpy_helper.from_array(np.array([0], np.int64), "positions/zero_axis"),
        numpy_helper.from_array(np.array(1, np.int64), "positions/one"),
    ]
    nodes = [
        helper.make_node("Shape", ["attention_mask"], ["positions/mask_shape"]),
        helper.make_node("Gather", ["positions/mask_shape", "positions/axis"], ["positions/total"], axis=0),
        helper.make_node("Shape", ["input_ids"], ["positions/ids_shape"]),
        helper.make_node("Gather", ["positions/ids_shape", "positions/axis"], ["positions/new"], axis=0),
        helper.make_node("Sub", ["positions/total", "positions/new"], ["positions/past"]),
        helper.make_node("Squeeze", ["positions/past", "positions/zero_axis"], ["positions/start"]),
        helper.make_node("Squeeze", ["positions/total", "positions/zero_axis"], ["positions/stop"]),
        helper.make_node("Range", ["positions/start", "positions/stop", "positions/one"], ["positions/range"]),
        helper.make_node("Unsqueeze", ["positions/range", "positions/zero_axis"], ["position_ids"]),
    ]
    graph.initializer.extend(constants)
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.checker.check_model(proto)
    path = tmp_path / "llama_kv_no_position_ids.onnx"
    onnx.save(proto, path)
    return str(path)


def test_a_decoder_counting_positions_on_from_the_mask_length_fuses_rotary_and_generates_the_same_tokens(tmp_path):
    source = _counting_positions_on_from_the_mask(tmp_path)
    output = tmp_path / "optimized.onnx"
    _, report = optimizer.optimize_with_report(source, output=output)
    assert all(record.status in (STATUS_APPLIED, STATUS_UNCHANGED) for record in report.passes), report.failures()
    ops = Counter(node.op_type for node in ir.load(output).graph)
    assert ops["RotaryEmbedding"] == 2 * LAYERS and ops["GroupQueryAttention"] == LAYERS

    def without_positions(path: str) -> Step:
        step = session_step(path)
        return lambda feed: step({name: value for name, value in feed.items() if name != "position_ids"})

    for batch in (1, 2):
        ids, mask = prompts(batch)
        want_tokens, want_logits = greedy(without_positions(source), KV_FIXTURES["llama_kv_legacy"], ids, mask)
        got_tokens, got_logits = greedy(without_positions(str(output)), KV_FIXTURES["llama_kv_legacy"], ids, mask)
        np.testing.assert_array_equal(got_tokens, want_tokens)
        for got, want in zip(got_logits, want_logits, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

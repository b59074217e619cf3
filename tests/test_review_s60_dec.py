"""Review of decoders with a key/value cache (2026-12-05, session 60): fuse-group-query-attention on respelled
and subtly different decoders, built from the Llama KV fixture as the default pipeline stages it.

Findings (each test failed before its fix):

1. The causal probes did not look for a length the bias *computes* a switch at: ``probe_lengths`` was called
   without a way to feed the graph, so its bisection of one-element comparisons (which the rotary and pack-qkv
   probes have) never ran. A bias causal except from 140 to 199 keys (``2 * T > 279 and 3 * T < 600``: no
   constant names 140 or 199, and verification runs at 128 and 257) was fused, reported verified, and wrong by
   0.84 on a 160-token prompt. Even a switch on the past's length that constants name was missed: a bias
   open only after a past of exactly 50 (``past > 49 and past <= 50``) was probed as chunks at totals 48 to 51,
   pasts 46 to 49, and fused wrong (0.02 in the presents), verified.
2. KV heads repeated by ``torch.repeat_interleave(r, dim=1)`` (both exporters write it as the same
   ``Expand`` and a ``Reshape`` to ``[B, -1, T, d]``), which is exactly GroupQueryAttention's grouping, were
   refused as "not one cached head per group of query heads": the heads were not accepted as the Reshape's
   inferred dim.
3. A key read scaled by a one-element factor of rank 4 (``[1, 1, 1, 1]``): the factor moved onto the ``[B, S, D]``
   query made it 4-D, ONNX Runtime refused the result, and the whole pass was rolled back.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from optimizer.registry import default_pass_names
from passes._utils import add_initializer
from passes.fusion.group_query_attention import GroupQueryAttentionFusion
from tests.helpers import FIXTURES, run
from tests.passes.fusion.test_group_query_attention import _adder, _wrap_shared_bias

_NAME = "fuse-group-query-attention"


def _staged(name: str) -> ir.Model:
    names = default_pass_names("cpu")
    return optimizer.optimize(ir.load(FIXTURES / f"{name}.onnx"), names[: names.index(_NAME)], verify=False)


@pytest.fixture(scope="module")
def llama() -> ir.Model:
    return _staged("llama_kv_legacy")


def _feed(batch: int, new: int, past: int, kv_heads: int = 2, vocab: int = 256) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(past + new)
    mask = np.ones((batch, past + new), np.int64)
    mask[1:, :2] = 0
    positions = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)[:, -new:]
    feed = {"input_ids": rng.integers(1, vocab, (batch, new)), "attention_mask": mask, "position_ids": positions}
    for layer in range(2):
        for kind in ("key", "value"):
            feed[f"past_key_values.{layer}.{kind}"] = rng.standard_normal((batch, kv_heads, past, 16), np.float32)
    return feed


def _close_where_real(before: ir.Model, after: ir.Model, feed: dict[str, np.ndarray]) -> None:
    expected, actual = run(before, feed), run(after, feed)
    mask = feed["attention_mask"].astype(bool)
    new = feed["input_ids"].shape[1]
    for name, want in expected.items():
        real = mask[:, -new:, None] if name == "logits" else mask[:, None, :, None]
        got = np.where(real, actual[name], 0)
        np.testing.assert_allclose(got, np.where(real, want, 0), rtol=1e-4, atol=1e-5, err_msg=name)


def _opened(llama: ir.Model, build) -> ir.Model:
    """The fixture with the bias every layer shares replaced by ``Where(build(add, graph), 0, bias)``: every key
    visible where ``build``'s condition holds."""

    def opened(add, bias: ir.Value) -> ir.Value:
        graph = bias.graph or bias.producer().graph
        zero = add_initializer(graph, "open", np.array(0.0, np.float32))
        return add("Where", [build(add, graph), zero, bias])

    return _wrap_shared_bias(llama, opened)


def _constant(graph: ir.Graph, name: str, value: int) -> ir.Value:
    return add_initializer(graph, name, np.array([value], np.int64))


def test_a_bias_non_causal_between_two_computed_lengths_is_refused(llama):
    # Causal + padding, but every key visible from 140 to 199 keys: 2 * T > 279 and 3 * T < 600. No constant
    # names those lengths; the comparisons' switches are found by bisection, as for rotary tables.
    def build(add, graph):
        total = add("Shape", [next(v for v in graph.inputs if v.name == "attention_mask")], start=1, end=2)
        above = add("Greater", [add("Mul", [total, _constant(graph, "two", 2)]), _constant(graph, "low", 279)])
        below = add("Less", [add("Mul", [total, _constant(graph, "three", 3)]), _constant(graph, "high", 600)])
        return add("And", [above, below])

    result = GroupQueryAttentionFusion()(_opened(llama, build))
    assert "GroupQueryAttention" not in {n.op_type for n in result.model.graph}
    assert any("not causal" in reason for reason in result.refusals), result.refusals


def test_a_bias_non_causal_at_one_past_length_its_constants_name_is_refused(llama):
    # Every key visible for a chunk after a past of exactly 50 (past > 49 and past <= 50): the constants name 49
    # and 50, but the chunk probes at those totals had pasts of 46 to 49. Fused, it differed by 0.02 in the
    # presents at 2 new tokens after 50, and verified.
    def build(add, graph):
        past = next(v for v in graph.inputs if v.name == "past_key_values.0.key")
        length = add("Shape", [past], start=2, end=3)
        above = add("Greater", [length, _constant(graph, "low", 49)])
        return add("And", [above, add("LessOrEqual", [length, _constant(graph, "high", 50)])])

    result = GroupQueryAttentionFusion()(_opened(llama, build))
    assert "GroupQueryAttention" not in {n.op_type for n in result.model.graph}
    assert any("after 50 (not causal)" in reason for reason in result.refusals), result.refusals


def test_kv_heads_repeated_by_repeat_interleave_fuse(llama):
    # torch's k.repeat_interleave(2, dim=1), as both exporters write it: the repetition's Reshape targets
    # [B, -1, T, d], the heads inferred. That is GroupQueryAttention's grouping (head h reads cache head h // 2).
    model = llama.clone()
    graph = model.graph
    minus_one = add_initializer(graph, "minus_one", np.array([-1], np.int64))
    reshapes = [
        n
        for n in graph
        if n.op_type == "Reshape" and n.inputs[0].producer() is not None and n.inputs[0].producer().op_type == "Expand"
    ]
    assert len(reshapes) == 4
    for reshape in reshapes:
        add = _adder(graph, reshape)
        repeated = reshape.inputs[0]
        batch = add("Shape", [repeated], start=0, end=1)
        rest = add("Shape", [repeated], start=3)
        reshape.replace_input_with(1, add("Concat", [batch, minus_one, rest], axis=0))
    graph.sort()
    result = GroupQueryAttentionFusion()(model.clone())
    ops = Counter(n.op_type for n in result.model.graph)
    assert ops["GroupQueryAttention"] == 2 and ops["MultiHeadAttention"] == 0, result.refusals
    for batch, new, past in ((2, 5, 0), (2, 1, 6), (3, 3, 4)):
        _close_where_real(model, result.model, _feed(batch, new, past))


def test_a_key_scaled_by_a_four_dimensional_factor_is_fused_and_runs():
    # Transpose(Mul(Transpose(present), s)) with s = [[[[1.5]]]]: the factor goes onto the query as a scalar.
    model = _staged("gpt2_kv_legacy")
    graph = model.graph
    factor = add_initializer(graph, "key_factor", np.full((1, 1, 1, 1), 1.5, np.float32))
    for node in [n for n in graph if n.op_type == "MultiHeadAttention"]:
        add = _adder(graph, node)
        swapped = add("Transpose", [node.inputs[1]], perm=[0, 1, 3, 2])
        node.replace_input_with(1, add("Transpose", [add("Mul", [swapped, factor])], perm=[0, 1, 3, 2]))
    result = GroupQueryAttentionFusion()(model.clone())
    ops = Counter(n.op_type for n in result.model.graph)
    assert ops["GroupQueryAttention"] == 2, result.refusals
    for batch, new, past in ((2, 4, 0), (2, 1, 5)):
        _close_where_real(model, result.model, _feed(batch, new, past, kv_heads=4))

"""Soft-capped attention (Gemma 2's ``c * tanh(s / c)`` before the mask) into GroupQueryAttention's ``softcap``.

The Llama KV-cache fixture as the default pipeline leaves it before ``fuse-attention``,
with a soft cap written between its scaled ``Q @ K^T`` and its mask in every layer, the
place Hugging Face's Gemma 2 eager attention puts it and the order ONNX Runtime's kernel
applies it (scale, cap, bias, softmax). MultiHeadAttention has no cap: fuse-attention
must refuse it with the reason, and fuse-group-query-attention fuse it with ``softcap``.
Near-misses change the cap so that it is no longer one ``c`` applied before every mask.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import optimizer
from optimizer.registry import default_pass_names
from passes._utils import add_initializer
from passes.fusion.attention import AttentionFusion
from passes.fusion.group_query_attention import GroupQueryAttentionFusion
from tests.helpers import FIXTURES, run
from tests.test_decoder_cache import KV_FIXTURES, decode_feed, prompts, step_feed

_FIXTURE = "llama_kv_legacy"
# Small enough that tanh saturates on the fixture's scores: without the cap the logits differ.
_CAP = 0.05


@pytest.fixture(scope="module")
def before_attention() -> ir.Model:
    names = default_pass_names("cpu")
    return optimizer.optimize(
        ir.load(FIXTURES / f"{_FIXTURE}.onnx"), names[: names.index("fuse-attention")], verify=False
    )


def _capped(
    model: ir.Model,
    divide=_CAP,
    multiply=_CAP,
    *,
    spelling="Div",
    inside_mask=False,
    after: float | None = None,
    wheres: int = 0,
) -> ir.Model:
    """``model`` with ``multiply * tanh(scores / divide)`` on every layer's scores (``divide``/``multiply``
    a number, or a value name to read: a graph input); with ``inside_mask`` the mask is added first,
    with ``after`` the cap is multiplied by it before the mask; ``wheres`` more masks
    ``Where(bias == 0, x, -1e9)`` after the additive one."""
    model = model.clone()
    graph = model.graph

    def constant(name: str, c) -> ir.Value:
        if isinstance(c, str):
            found = next((v for v in graph.inputs if v.name == c), None)
            if found is None:
                found = ir.Value(name=c, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.FLOAT))
                graph.inputs.append(found)
            return found
        return add_initializer(graph, name, np.array(c, np.float32))

    for index, softmax in enumerate([n for n in graph if n.op_type == "Softmax"]):
        masked = softmax.inputs[0].producer()
        assert masked.op_type == "Add" and masked.inputs[0].producer().op_type == "MatMul"
        scores = masked.outputs[0] if inside_mask else masked.inputs[0]

        def add(op, inputs, _anchor=softmax if inside_mask else masked):
            node = ir.node(op, inputs)
            graph.insert_before(_anchor, node)
            return node.outputs[0]

        if spelling == "Tanh":  # c = 1 once constant folding has removed s / 1 and * 1
            capped = add("Tanh", [scores])
        else:
            if spelling == "Div":
                inner = add("Div", [scores, constant(f"cap_in_{index}", divide)])
            else:
                inner = add("Mul", [scores, constant(f"cap_in_{index}", 1.0 / divide)])
            capped = add("Mul", [add("Tanh", [inner]), constant(f"cap_out_{index}", multiply)])
        if after is not None:
            capped = add("Mul", [capped, constant(f"after_cap_{index}", after)])
        if inside_mask:
            softmax.replace_input_with(0, capped)
        else:
            masked.replace_input_with(0, capped)
        scores = softmax.inputs[0]
        for _ in range(wheres):
            attends = ir.node("Equal", [masked.inputs[1], constant(f"zero_{index}", 0.0)])
            where = ir.node("Where", [attends.outputs[0], scores, constant(f"fill_{index}", -1e9)])
            graph.insert_before(softmax, [attends, where])
            scores = where.outputs[0]
        softmax.replace_input_with(0, scores)
    return model


def _feeds() -> list[dict[str, np.ndarray]]:
    """A left-padded prefill of three rows, a decode step over a padded past, and a two-token chunk."""
    kv = KV_FIXTURES[_FIXTURE]
    ids, mask = prompts(3)
    chunk = decode_feed(kv)
    for name in ("input_ids", "position_ids"):
        chunk[name] = np.concatenate([chunk[name], chunk[name] + (name == "position_ids")], axis=1)
    chunk["attention_mask"] = np.concatenate([chunk["attention_mask"], chunk["attention_mask"][:, -1:]], axis=1)
    return [step_feed(kv, ids, mask, None), decode_feed(kv), chunk]


def _real(feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs with padded positions zeroed (undefined under a fully masked query row)."""
    mask = feed["attention_mask"].astype(bool)
    new = feed["input_ids"].shape[1]
    return {
        name: np.where(mask[:, -new:, None] if name == "logits" else mask[:, None, :, None], value, 0)
        for name, value in outputs.items()
    }


def _fused(model: ir.Model) -> tuple[ir.Model, ir.passes.PassResult, ir.passes.PassResult]:
    attention = AttentionFusion()(model.clone())
    gqa = GroupQueryAttentionFusion()(attention.model)
    return gqa.model, attention, gqa


def _assert_fused_with_cap(model: ir.Model, cap: float) -> None:
    """Both layers of ``model`` fuse into GroupQueryAttention with ``softcap=cap``, outputs as before on real tokens."""
    fused, _, gqa = _fused(model)
    caps = [n.attributes.get_float("softcap") for n in fused.graph if n.op_type == "GroupQueryAttention"]
    assert caps == pytest.approx([cap, cap]), gqa.refusals
    for feed in _feeds():
        expected, actual = _real(feed, run(model, feed)), _real(feed, run(fused, feed))
        for name, want in expected.items():
            np.testing.assert_allclose(actual[name], want, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("spelling", ["Div", "Mul"])
def test_a_soft_cap_before_the_mask_becomes_group_query_attentions_softcap(before_attention, spelling):
    model = _capped(before_attention, spelling=spelling)
    fused, attention, gqa = _fused(model)
    # MultiHeadAttention has no cap: fuse-attention leaves the layers, saying why.
    assert not attention.modified
    assert any("soft-capped (c * tanh(s / c), c = 0.05)" in r for r in attention.refusals), attention.refusals
    ops = Counter(node.op_type for node in fused.graph)
    assert ops["GroupQueryAttention"] == 2, gqa.refusals
    assert ops["MultiHeadAttention"] == ops["Tanh"] == ops["Softmax"] == 0
    for node in (n for n in fused.graph if n.op_type == "GroupQueryAttention"):
        assert node.attributes.get_float("softcap") == pytest.approx(_CAP)
    assert [v.name for v in fused.graph.inputs] == [v.name for v in model.graph.inputs]
    assert [v.name for v in fused.graph.outputs] == [v.name for v in model.graph.outputs]
    for feed in _feeds():
        expected, actual = _real(feed, run(model, feed)), _real(feed, run(fused, feed))
        uncapped = _real(feed, run(before_attention, feed))
        # The cap matters on these scores, so a fusion dropping it would be caught here.
        assert np.abs(uncapped["logits"] - expected["logits"]).max() > 1e-2, np.abs(
            uncapped["logits"] - expected["logits"]
        ).max()
        for name, want in expected.items():
            np.testing.assert_allclose(actual[name], want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_bare_tanh_on_the_scores_is_the_cap_one(before_attention):
    model = _capped(before_attention, spelling="Tanh")
    _assert_fused_with_cap(model, 1.0)


def test_a_cap_several_masks_before_the_softmax_is_found(before_attention):
    # A review: only the four producers nearest the Softmax were searched for the cap's Tanh, so with two
    # Where masks after the additive one nothing was staged and nothing said why.
    model = _capped(before_attention, wheres=2)
    _assert_fused_with_cap(model, _CAP)


def _refused(model: ir.Model) -> tuple[list[str], list[str]]:
    fused, attention, gqa = _fused(model)
    ops = {n.op_type for n in fused.graph}
    assert not ({"GroupQueryAttention", "MultiHeadAttention"} & ops) and "Tanh" in ops
    assert not gqa.modified
    # A refused staging leaves the graph as it found it.
    assert ir.to_proto(fused).SerializeToString() == ir.to_proto(model).SerializeToString()
    assert set(fused.opset_imports) == set(model.opset_imports)
    return attention.refusals, gqa.refusals


@pytest.mark.parametrize(("divide", "multiply"), [(0.5, 0.6), (0.2, 0.05)])
def test_a_cap_dividing_by_one_constant_and_multiplying_by_another_is_a_cap_at_another_scale(
    before_attention, divide, multiply
):
    # c2 * tanh(s / c1) = c2 * tanh((c2 / c1) * s / c2): the cap c2 at c2 / c1 times the scale. A review found
    # it refused, and so ONNX Runtime's own optimized Gemma 2, whose FusedMatMul holds scale / c.
    model = _capped(before_attention, divide=divide, multiply=multiply)
    _assert_fused_with_cap(model, multiply)


def test_a_cap_negative_on_both_sides_is_the_positive_cap(before_attention):
    # (-c) * tanh(s / (-c)) = c * tanh(s / c), tanh being odd: the cap |c| at scale c * f = (-c) * (1 / -c) = 1.
    model = _capped(before_attention, divide=-_CAP, multiply=-_CAP)
    _assert_fused_with_cap(model, _CAP)
    # Only the cap's magnitude is the op's: spelled once with Mul by 1/(-c), the same.
    _assert_fused_with_cap(_capped(before_attention, divide=-_CAP, multiply=-_CAP, spelling="Mul"), _CAP)


@pytest.mark.parametrize(("divide", "multiply"), [(_CAP, -_CAP), (-_CAP, _CAP)])
def test_a_cap_negative_on_one_side_is_refused(before_attention, divide, multiply):
    # c * tanh(s / c') with c * (1/c') < 0 is the cap |c| at a negative scale: refused with the scale's reason.
    attention, _ = _refused(_capped(before_attention, divide=divide, multiply=multiply))
    assert any("scale is not a positive finite number" in r for r in attention), attention


def test_a_cap_of_zero_is_refused(before_attention):
    attention, _ = _refused(_capped(before_attention, divide=_CAP, multiply=0.0))
    assert any("is not a nonzero finite number" in r for r in attention), attention


def test_a_cap_read_from_a_graph_input_is_refused(before_attention):
    attention, _ = _refused(_capped(before_attention, divide="softcap", multiply="softcap"))
    assert any("not a constant scalar" in r for r in attention), attention


def test_a_cap_scaled_after_it_is_refused(before_attention):
    # 2 * c * tanh(s / c) is no cap the op computes (its softcap is one c on both sides).
    attention, _ = _refused(_capped(before_attention, after=2.0))
    assert any("scaled after the cap" in r for r in attention), attention


def test_a_cap_applied_after_the_mask_is_refused(before_attention):
    # softmax(c * tanh((s + mask) / c)): the kernel caps the scores and adds the mask after.
    attention, _ = _refused(_capped(before_attention, inside_mask=True))
    assert any("mask is applied to the scores before their soft cap" in r for r in attention), attention


def test_the_default_pipeline_verifies_the_capped_fusion(before_attention):
    model = _capped(before_attention)
    ids, mask = prompts(3)
    optimized, report = optimizer.optimize_with_report(model, inputs=step_feed(KV_FIXTURES[_FIXTURE], ids, mask, None))
    (record,) = [r for r in report.passes if r.name == "fuse-group-query-attention"]
    assert record.status == "applied", report.failures()
    assert sum(n.op_type == "GroupQueryAttention" for n in optimized.graph) == 2


def test_a_capped_attention_without_a_cache_is_refused_and_left_as_it_was():
    # No cache to append to: GroupQueryAttention refuses, and what was staged for it is taken back.
    names = default_pass_names("cpu")
    model = optimizer.optimize(
        ir.load(FIXTURES / "llama_legacy.onnx"), names[: names.index("fuse-attention")], verify=False
    )
    attention, gqa = _refused(_capped(model))
    assert any("soft-capped (c * tanh(s / c)" in r for r in attention), attention
    assert any("soft-capped attention left unfused: its key/value is not a Concat" in r for r in gqa), gqa


def test_the_kernel_scales_caps_then_adds_the_bias():
    # What the rewrite relies on: ONNX Runtime's GroupQueryAttention computes
    # softmax(c * tanh(scale * Q K^T / c) + bias) over the causal keys (Hugging Face's Gemma 2 order).
    batch, new, past, heads, kv, size, cap, scale = 2, 3, 4, 4, 2, 8, 2.0, 0.7
    total = past + new
    names = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"]
    names += ["", "", "", "attention_bias", "", "", "", "", "", "query_seqlens"]
    node = helper.make_node(
        "GroupQueryAttention", names, ["output", "present_key", "present_value"], domain="com.microsoft",
        num_heads=heads, kv_num_heads=kv, causal=1, scale=scale, softcap=cap,
    )  # fmt: skip
    info = helper.make_tensor_value_info
    shapes = {
        "query": [batch, new, heads * size], "key": [batch, new, kv * size], "value": [batch, new, kv * size],
        "past_key": [batch, kv, past, size], "past_value": [batch, kv, past, size],
        "attention_bias": [batch, 1, new, total],
    }  # fmt: skip
    inputs = [info(name, TensorProto.FLOAT, shape) for name, shape in shapes.items()]
    inputs += [info(name, TensorProto.INT32, [batch]) for name in ("seqlens_k", "query_seqlens")]
    inputs.append(info("total_sequence_length", TensorProto.INT32, []))
    outputs = [info(name, TensorProto.FLOAT, None) for name in node.output]
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    proto = helper.make_model(helper.make_graph([node], "gqa", inputs, outputs), opset_imports=opsets)
    rng = np.random.default_rng(0)
    feed = {name: (rng.normal(size=shape) * 3).astype(np.float32) for name, shape in shapes.items()}
    feed |= {"seqlens_k": np.full(batch, total - 1, np.int32), "query_seqlens": np.full(batch, new, np.int32)}
    feed["total_sequence_length"] = np.array(total, np.int32)
    output = run(ir.from_proto(proto), feed)["output"]

    def heads_of(x, count):
        return x.reshape(batch, -1, count, size).transpose(0, 2, 1, 3)

    keys = np.concatenate([feed["past_key"], heads_of(feed["key"], kv)], 2).repeat(heads // kv, 1)
    values = np.concatenate([feed["past_value"], heads_of(feed["value"], kv)], 2).repeat(heads // kv, 1)
    scores = heads_of(feed["query"], heads) @ keys.transpose(0, 1, 3, 2) * scale
    causal = np.where(np.arange(total)[None] <= np.arange(new)[:, None] + past, 0.0, -np.inf)

    def attend(logits):
        logits = logits + causal
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        return (weights @ values).transpose(0, 2, 1, 3).reshape(batch, new, heads * size)

    bias = feed["attention_bias"]
    np.testing.assert_allclose(output, attend(cap * np.tanh(scores / cap) + bias), rtol=1e-4, atol=1e-5)
    # The other order is far off on these scores: the comparison tells them apart.
    assert np.abs(output - attend(cap * np.tanh((scores + bias) / cap))).max() > 0.1

"""fuse-group-query-attention after ``--static-shapes``: the cache attention fuses at the bound sizes.

``bind-dims`` fixes ``input_ids: [2, 3]``, ``attention_mask: [2, 8]`` and the pasts ``[2, kv, 5, d]``;
fold-constants then turns the repetition's Expand/Reshape targets into constants that hold
at those sizes only, and the dynamo export's batched ``Q @ K^T`` keeps its ``[B*N, T, d]`` views.
ONNX Runtime refuses every other size before running a node, so the pass probes only the
bound sizes (with padded and unpadded masks); near-misses check that a bias that is not
causal there, or a graph fixed only in its batch, are still refused.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from optimizer.registry import default_pass_names
from passes._utils import add_initializer
from passes.dim_binding import BindDimsPass
from passes.fusion.group_query_attention import GroupQueryAttentionFusion
from tests.helpers import FIXTURES
from tests.passes.fusion.test_group_query_attention import _same_where_real

_NAME = "fuse-group-query-attention"
_BATCH, _NEW, _PAST = 2, 3, 5
_DIMS = {"batch": _BATCH, "sequence": _NEW, "past_sequence": _PAST, "total_sequence": _NEW + _PAST}
_OPTIMUM_DIMS = {
    "batch_size": _BATCH,
    "sequence_length": _NEW,
    "past_sequence_length": _PAST,
    "past_sequence_length + sequence_length": _NEW + _PAST,
}
_KV_HEADS = {"llama_kv_legacy": 2, "llama_kv_dynamo": 2, "llama_kv_optimum": 2, "gpt2_kv_legacy": 4}


def _staged(name: str, dims: dict[str, int]) -> ir.Model:
    """The fixture with ``dims`` bound (bind-dims, as ``--static-shapes`` runs it, binding no other dim) and put
    through the default pipeline's passes before this one."""
    names = default_pass_names("cpu")
    before = names[: names.index(_NAME)]
    model = BindDimsPass(dims)(ir.load(FIXTURES / f"{name}.onnx")).model
    return optimizer.optimize(model, before, verify=False)


@pytest.fixture(scope="module")
def static() -> dict[str, ir.Model]:
    return {name: _staged(name, _OPTIMUM_DIMS if "optimum" in name else _DIMS) for name in _KV_HEADS}


def _fused(model: ir.Model) -> tuple[ir.Model, ir.passes.PassResult]:
    result = GroupQueryAttentionFusion()(model.clone())
    return result.model, result


def _feeds(kv_heads: int) -> list[dict[str, np.ndarray]]:
    """At the bound sizes: no padding, a left-padded row over a cache, and a right-padded row."""
    rng = np.random.default_rng(0)
    total = _NEW + _PAST
    masks = [np.ones((_BATCH, total), np.int64)]
    masks.append(np.concatenate([np.zeros((_BATCH, 2), np.int64), np.ones((_BATCH, total - 2), np.int64)], axis=1))
    masks.append(masks[1].copy())
    masks[2][1] = 1
    masks[2][1, -1] = 0
    feeds = []
    for mask in masks:
        positions = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)[:, -_NEW:]
        feed = {
            "input_ids": rng.integers(1, 256, (_BATCH, _NEW)),
            "attention_mask": mask,
            "position_ids": positions,
        }
        for layer in range(2):
            for kind in ("key", "value"):
                shape = (_BATCH, kv_heads, _PAST, 16)
                feed[f"past_key_values.{layer}.{kind}"] = rng.standard_normal(shape).astype(np.float32)
        feeds.append(feed)
    return feeds


@pytest.mark.parametrize("name", sorted(_KV_HEADS))
def test_cached_attention_over_static_shapes_becomes_group_query_attention(static, name):
    model = static[name]
    assert [d for v in model.graph.inputs for d in v.shape if not isinstance(d, int)] == []
    fused, fusion = _fused(model)
    ops = Counter(node.op_type for node in fused.graph)
    assert ops["GroupQueryAttention"] == 2 and ops["MultiHeadAttention"] == 0, fusion.refusals
    assert [(v.name, v.shape) for v in fused.graph.inputs] == [(v.name, v.shape) for v in model.graph.inputs]
    assert [(v.name, v.shape) for v in fused.graph.outputs] == [(v.name, v.shape) for v in model.graph.outputs]
    for node in (n for n in fused.graph if n.op_type == "GroupQueryAttention"):
        assert node.attributes.get_int("kv_num_heads") == _KV_HEADS[name]
        assert node.outputs[1].is_graph_output() and node.outputs[1].name.startswith("present.")
    for feed in _feeds(_KV_HEADS[name]):
        _same_where_real(model, fused, feed)


def test_the_dynamo_exports_batched_key_view_is_read_as_the_repetition(static):
    # Q @ K^T as bmm: the repeated keys merged into [B*N, T, d], transposed, split into [B, N, d, T].
    model = static["llama_kv_dynamo"]
    attention = next(n for n in model.graph if n.op_type == "MultiHeadAttention")
    split = attention.inputs[1].producer().inputs[0].producer()
    merge = split.inputs[0].producer().inputs[0].producer()
    assert (split.op_type, merge.op_type) == ("Reshape", "Reshape")
    assert merge.inputs[1].const_value.numpy().tolist() == [_BATCH * 4, _NEW + _PAST, 16]
    fused, fusion = _fused(model)
    assert Counter(n.op_type for n in fused.graph)["GroupQueryAttention"] == 2, fusion.refusals


def _rewire_merge(model: ir.Model, target: list[int]) -> ir.Model:
    """``model`` with the first layer's batched key view merged by ``target`` (same element count)."""
    model = model.clone()
    attention = next(n for n in model.graph if n.op_type == "MultiHeadAttention")
    merge = attention.inputs[1].producer().inputs[0].producer().inputs[0].producer().inputs[0].producer()
    merge.replace_input_with(1, add_initializer(model.graph, "other_merge", np.array(target, np.int64)))
    return model


def test_a_batched_key_view_that_mixes_rows_is_refused(static):
    # [2T, B*N/2, d] has the same elements as [B*N, T, d], but its rows are not one head's keys.
    total = _NEW + _PAST
    model = _rewire_merge(static["llama_kv_dynamo"], [2 * total, _BATCH * 2, 16])
    model.graph.sort()
    fused, fusion = _fused(model)
    assert Counter(n.op_type for n in fused.graph)["GroupQueryAttention"] == 1
    assert any("repetition is not one cached head" in r for r in fusion.refusals), fusion.refusals


def _wrap_bias(model: ir.Model, build) -> ir.Model:
    """``model`` with the bias every layer shares replaced by ``build(add, bias, mask)``."""
    model = model.clone()
    graph = model.graph
    first = next(n for n in graph if n.op_type == "MultiHeadAttention")
    source = first.inputs[5]
    while source.producer() is not None and source.producer().op_type == "Expand":
        source = source.producer().inputs[0]
    uses = list(source.uses())

    def add(op, inputs, **attributes):
        made = ir.node(op, inputs, attributes)
        graph.insert_before(first, made)
        return made.outputs[0]

    mask = next(v for v in graph.inputs if v.name == "attention_mask")
    wrapped = build(add, source, mask)
    for user, index in uses:
        user.replace_input_with(index, wrapped)
    graph.sort()
    return model


def _open_where(compare: str, axis: int, limit: int):
    """A bias that lets every key through where ``Shape(mask)[axis] <compare> limit``."""

    def build(add, bias, mask):
        size = add("Shape", [mask], start=axis, end=axis + 1)
        bound = add_initializer(bias.graph, "bound", np.array([limit], np.int64))
        zero = add_initializer(bias.graph, "open", np.array(0.0, np.float32))
        return add("Where", [add(compare, [size, bound]), zero, bias])

    return build


def test_a_bias_not_causal_at_the_bound_sizes_is_refused(static):
    model = _wrap_bias(static["llama_kv_legacy"], _open_where("Equal", 1, _NEW + _PAST))
    fused, fusion = _fused(model)
    assert "GroupQueryAttention" not in {n.op_type for n in fused.graph}
    assert any("not causal" in r and f"{_NEW} new tokens after {_PAST}" in r for r in fusion.refusals)


def test_a_bias_not_causal_only_at_sizes_the_graph_refuses_is_fused(static):
    # Open from 9 keys on: the bound graph has 8, and ONNX Runtime refuses any other mask length.
    model = _wrap_bias(static["llama_kv_legacy"], _open_where("Greater", 1, _NEW + _PAST))
    fused, fusion = _fused(model)
    assert Counter(n.op_type for n in fused.graph)["GroupQueryAttention"] == 2, fusion.refusals
    for feed in _feeds(2):
        _same_where_real(model, fused, feed)


def test_a_graph_bound_only_in_its_batch_is_still_probed_at_every_length():
    model = _staged("llama_kv_legacy", {"batch": 1})
    assert model.graph.inputs[0].shape[0] == 1
    model = _wrap_bias(model, _open_where("Greater", 1, 40))
    fused, fusion = _fused(model)
    assert "GroupQueryAttention" not in {n.op_type for n in fused.graph}
    assert any("not causal" in r and "41" in r for r in fusion.refusals), fusion.refusals


def test_static_dims_that_no_call_can_have_are_refused(static):
    model = static["llama_kv_legacy"].clone()
    mask = next(v for v in model.graph.inputs if v.name == "attention_mask")
    mask.shape = ir.Shape([_BATCH, _NEW + _PAST + 1])  # 9 keys, but 5 cached and 3 new tokens
    fused, fusion = _fused(model)
    assert "GroupQueryAttention" not in {n.op_type for n in fused.graph}
    # The pasts and mask fix 4 new tokens; input_ids' 3 (known by name only) fixes nothing, so every probe is refused.
    assert any("refused every probe" in r for r in fusion.refusals), fusion.refusals


def test_an_encoders_static_mask_and_ids_fix_no_size(static):
    # A decoder with cross-attention inputs: their lengths are the encoder's, not the cache's.
    model = static["llama_kv_legacy"].clone()
    for name in ("encoder_attention_mask", "encoder_input_ids"):
        encoder = ir.Value(name=name, shape=ir.Shape([_BATCH, 11]), type=ir.TensorType(ir.DataType.INT64))
        model.graph.inputs.append(encoder)
    fused, fusion = _fused(model)
    assert Counter(n.op_type for n in fused.graph)["GroupQueryAttention"] == 2, fusion.refusals


@pytest.mark.parametrize("name", ["llama_kv_legacy", "llama_kv_dynamo"])
def test_the_static_shapes_pipeline_fuses_and_verifies_it(name):
    _, report = optimizer.optimize_with_report(ir.load(FIXTURES / f"{name}.onnx"), static_shapes=True, dims=_DIMS)
    (record,) = [r for r in report.passes if r.name == _NAME]
    assert record.status == "applied", (record.status, report.failures())


def test_static_ids_known_by_name_only_fix_no_size():
    # A review: a static `decoder_input_ids` (or `input_ids`) beside the real token input pinned the probes to its
    # length, so a bias open at longer lengths was fused. Only the pasts and the bias's mask fix sizes.
    model = _staged("llama_kv_legacy", {"batch": _BATCH, "past_sequence": _PAST}).clone()
    extra = ir.Value(name="decoder_input_ids", shape=ir.Shape([_BATCH, _NEW]), type=ir.TensorType(ir.DataType.INT64))
    model.graph.inputs.append(extra)
    model = _wrap_bias(model, _open_where("Greater", 1, _NEW + _PAST))
    fused, fusion = _fused(model)
    assert "GroupQueryAttention" not in {n.op_type for n in fused.graph}
    assert any("not causal" in r for r in fusion.refusals), fusion.refusals


def test_a_graph_that_refuses_every_probe_is_not_fused():
    # A review: a probe ONNX Runtime refused counted as "the original refuses this size", so token ids declared
    # [3, 9] (no probe has that batch and length) made every probe refused, and a bidirectional bias was fused.
    model = _staged("llama_kv_legacy", {}).clone()
    ids = next(v for v in model.graph.inputs if v.name == "input_ids")
    ids.shape = ir.Shape([3, 9])
    model = _wrap_bias(model, _open_where("Greater", 1, 0))
    fused, fusion = _fused(model)
    assert "GroupQueryAttention" not in {n.op_type for n in fused.graph}
    assert any("refused every probe" in r for r in fusion.refusals), fusion.refusals

"""Review s75 (static): ``pack-qkv`` on a mask input of static dims (an export without dynamic axes, or
``--static-shapes``). ONNX Runtime runs such a mask at its dims alone, so the probes at 7 and 13 tokens were all
refused and the mask stays ``attention_bias``. ``PackedAttentionFusion(static_masks=True)`` probes it at the static
length only, on every pattern a padding mask takes there (all real, padded on the left, on the right, between real
tokens, one real token), each row at each position of a static batch. A bias that is a padding mask on some of
those rows only is refused: the first probes proposed (one token and half padded, each side) accepted a bias that
masks outside the first and last real tokens, one that adds a constant or turns causal where no token (or all but
one) is padded, and one whose third row reads the first's mask. Off by default: a static RoBERTa export so packed ran
no faster (docs/benchmarks.md)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.attention import AttentionFusion
from passes.fusion.packed_attention import PackedAttentionFusion
from tests.helpers import assert_same_outputs
from tests.passes.fusion._attention_graphs import HIDDEN, attention_model

_FILL = -10000.0


def _bias_nodes(kind: str, seq: int | str) -> tuple[list, dict[str, np.ndarray]]:
    """Nodes computing ``mask_bias`` (``[B, 1, 1, S]`` or ``[B, 1, S, S]``) from ``attention_mask`` as ``kind``."""
    weights = {
        "one": np.array(1.0, np.float32),
        "five": np.array(5.0, np.float32),
        "zero": np.array(0.0, np.float32),
        "fill": np.array(_FILL, np.float32),
        "axes_12": np.array([1, 2], np.int64),
        "axis_1": np.array([1], np.int64),
    }
    source = "attention_mask"
    nodes = []
    if kind == "rows_mixed":  # the third row reads the first's mask
        weights["rows"] = np.array([0, 1, 0], np.int64)
        nodes.append(helper.make_node("Gather", ["attention_mask", "rows"], ["mixed"], axis=0))
        source = "mixed"
    if kind == "first_column":  # every token masked like the first
        weights["starts"], weights["ends"] = np.array([0], np.int64), np.array([1], np.int64)
        nodes.append(helper.make_node("Slice", ["attention_mask", "starts", "ends", "axis_1"], ["first"]))
        source = "first"
    nodes.append(helper.make_node("Cast", [source], ["m"], to=TensorProto.FLOAT))
    if kind == "reversed":  # masks the real tokens
        nodes.append(helper.make_node("Mul", ["m", "fill"], ["padding"]))
    elif kind == "span":  # masks outside the first and last real tokens: a hole stays seen
        nodes += [
            helper.make_node("CumSum", ["m", "axis_1"], ["seen_before"]),
            helper.make_node("CumSum", ["m", "axis_1"], ["seen_after"], reverse=1),
            helper.make_node("Greater", ["seen_before", "zero"], ["after_first"]),
            helper.make_node("Greater", ["seen_after", "zero"], ["before_last"]),
            helper.make_node("And", ["after_first", "before_last"], ["inside"]),
            helper.make_node("Where", ["inside", "zero", "fill"], ["padding"]),
        ]
    else:
        nodes += [
            helper.make_node("Sub", ["one", "m"], ["inverted"]),
            helper.make_node("Mul", ["inverted", "fill"], ["padding"]),
        ]
    if kind in ("all_real_adds", "one_real_adds", "adds_one"):
        if kind == "all_real_adds":  # + 5 where no token is padded
            nodes.append(helper.make_node("ReduceMin", ["m", "axis_1"], ["flag"]))
        elif kind == "one_real_adds":  # + 5 where one token is real
            nodes += [
                helper.make_node("ReduceSum", ["m", "axis_1"], ["count"]),
                helper.make_node("Equal", ["count", "one"], ["lone"]),
                helper.make_node("Cast", ["lone"], ["flag"], to=TensorProto.FLOAT),
            ]
        else:
            nodes.append(helper.make_node("Identity", ["one"], ["flag"]))
        nodes += [
            helper.make_node("Mul", ["flag", "five"], ["offset"]),
            helper.make_node("Add", ["padding", "offset"], ["biased"]),
        ]
        nodes.append(helper.make_node("Unsqueeze", ["biased", "axes_12"], ["mask_bias"]))
        return nodes, weights
    nodes.append(
        helper.make_node("Unsqueeze", ["padding", "axes_12"], ["padded_bias" if "causal" in kind else "mask_bias"])
    )
    if "causal" in kind:  # causal + padding, or (causal_unless_unpadded) only where a token is padded
        weights["tril"] = np.tril(np.ones((seq, seq), bool), int(kind == "causal_shifted"))  # one key ahead
        weights["flag_shape"] = np.array([-1, 1, 1, 1], np.int64)
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["mb"], to=TensorProto.BOOL),
            helper.make_node("Unsqueeze", ["mb", "axes_12"], ["keys"]),
            helper.make_node("And", ["tril", "keys"], ["allowed"]),
            helper.make_node("Where", ["allowed", "zero", "fill"], ["causal_bias"]),
        ]
        if kind in ("causal", "causal_shifted"):
            nodes.append(helper.make_node("Identity", ["causal_bias"], ["mask_bias"]))
        else:
            nodes += [
                helper.make_node("ReduceMin", ["m", "axis_1"], ["min"]),
                helper.make_node("Equal", ["min", "one"], ["unpadded"]),
                helper.make_node("Reshape", ["unpadded", "flag_shape"], ["unpadded_4d"]),
                helper.make_node("Where", ["unpadded_4d", "padded_bias", "causal_bias"], ["mask_bias"]),
            ]
    return nodes, weights


def _static_model(kind: str, batch: int | str = 2, seq: int | str = 5) -> ir.Model:
    """``attention_model``'s block with its ``mask_bias`` computed from an int64 ``attention_mask [batch, seq]`` as
    ``kind`` (``_bias_nodes``); an int dim is static, a name symbolic."""
    proto = ir.to_proto(attention_model(mask="bias"))
    graph = proto.graph
    nodes, weights = _bias_nodes(kind, seq)
    kept = [v for v in graph.input if v.name != "mask_bias"]
    del graph.input[:]
    graph.input.extend(kept)
    graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, HIDDEN]))
    graph.input.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, seq]))
    graph.output[0].CopyFrom(helper.make_tensor_value_info("y_out", TensorProto.FLOAT, [batch, seq, HIDDEN]))
    del graph.value_info[:]
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in weights.items())
    model = ir.from_proto(proto)
    ir.passes.common.ShapeInferencePass()(model)
    return model


def _feeds(batch: int, seq: int) -> list[dict[str, np.ndarray]]:
    """Hidden states with masks all real, padded on either side and with holes."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, seq, HIDDEN)).astype(np.float32)
    rows = [np.ones(seq, np.int64), np.r_[0, np.ones(seq - 1, np.int64)], np.r_[np.ones(seq - 2, np.int64), 0, 0]]
    rows.append(np.arange(seq) % 2 == 0)
    return [
        {"x": x, "attention_mask": np.stack([rows[(i + b) % 4] for b in range(batch)]).astype(np.int64)}
        for i in range(4)
    ]


def _packed(model: ir.Model, static_masks: bool = True) -> tuple[ir.Node, list[str], ir.Model]:
    fused = AttentionFusion()(model.clone()).model
    packing = PackedAttentionFusion(static_masks=static_masks)
    result = packing(fused)
    assert packing.fused_count == 1
    (node,) = [n for n in result.model.graph if n.op_type == "Attention"]
    return node, result.refusals, result.model


@pytest.mark.parametrize(
    ("kind", "batch", "seq"),
    [
        ("padding", 1, 5),
        ("padding", 3, 5),
        ("padding", "B", 5),
        ("padding", 3, "S"),
        ("causal", 1, 5),
        ("padding", 1, 2),
    ],
    ids=["batch_1", "batch_3", "batch_dynamic", "sequence_dynamic", "causal_batch_1", "two_tokens"],
)
def test_a_static_padding_mask_becomes_the_packed_ops_mask_index(kind, batch, seq):
    model = _static_model(kind, batch, seq)
    node, refusals, after = _packed(model)
    assert node.inputs[3] is not None and (len(node.inputs) < 6 or node.inputs[5] is None), refusals
    assert refusals == []
    assert node.attributes.get_int("unidirectional", 0) == (kind == "causal")
    sizes = (batch if isinstance(batch, int) else 2, seq if isinstance(seq, int) else 6)
    for feeds in _feeds(*sizes):
        # Causal, a left-padded row's first queries see no key: the degenerate case fuse-attention documents.
        if kind != "causal" or feeds["attention_mask"][:, 0].all():
            assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "batch"),
    [
        ("span", 2),  # the proposal's probes accepted it: no hole between real tokens
        ("all_real_adds", 2),  # accepted: no row all real
        ("causal_unless_unpadded", 2),  # taken for causal: no row all real
        ("one_real_adds", 1),  # accepted: no row of one real token at 5
        ("rows_mixed", 3),  # accepted: its rows cycled to [r0, r1, r0]
        ("reversed", 1),
        ("first_column", 1),
        ("adds_one", 2),
        ("causal_shifted", 1),
    ],
)
def test_a_static_bias_that_is_a_padding_mask_on_some_rows_only_stays_a_bias(kind, batch):
    model = _static_model(kind, batch, 5)
    node, refusals, after = _packed(model)
    assert node.inputs[3] is None and node.inputs[5] is not None
    assert len(refusals) == 1 and "not what a padding (or causal + padding) mask implies" in refusals[0], refusals
    for feeds in _feeds(batch, 5)[:2]:
        assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


def test_a_mask_static_at_one_token_stays_a_bias_and_says_why():
    _, refusals, _ = _packed(_static_model("padding", 2, 1))
    assert refusals == [
        "1 of 1 packed with the mask kept as attention_bias: its mask input attention_mask is static at 1 token: "
        "no probe row can be padded there"
    ]


def test_by_default_a_static_mask_stays_a_bias_as_it_paid_nothing():
    node, refusals, _ = _packed(_static_model("padding", 1, 5), static_masks=False)
    assert node.inputs[3] is None and node.inputs[5] is not None
    assert refusals[0].startswith("1 of 1 packed with the mask kept as attention_bias: ONNX Runtime refuses the bias")


class _StaticMasks(PackedAttentionFusion):
    """pack-qkv with ``static_masks``, as the pipeline builds it (``passes/catalog.py``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, static_masks=True, **kwargs)


def test_a_static_export_is_packed_and_verified_end_to_end(monkeypatch):
    from optimizer.api import optimize_with_report
    from passes.fusion import packed_attention

    monkeypatch.setattr(packed_attention, "PackedAttentionFusion", _StaticMasks)
    after, report = optimize_with_report(_static_model("padding", 1, 6), ["fuse-attention", "pack-qkv"])
    assert report.verified
    (record,) = [record for record in report.passes if record.name == "pack-qkv"]
    assert record.status == "applied" and record.refusals == [], (record.status, record.refusals)
    (node,) = [n for n in after.graph if n.op_type == "Attention"]
    assert node.inputs[3] is not None and "Cast" in {n.op_type for n in after.graph}

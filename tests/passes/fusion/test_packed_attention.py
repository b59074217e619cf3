"""pack-qkv: MultiHeadAttention over projections of one input into Attention with packed QKV weights (stage 2)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.errors import PassSelectionError
from optimizer.registry import default_pass_names, resolve
from passes.fusion.attention import AttentionFusion
from passes.fusion.packed_attention import PackedAttentionFusion
from tests.helpers import assert_same_outputs, op_types
from tests.passes.fusion._attention_graphs import (
    BATCH,
    HEADS,
    HIDDEN,
    SEQ,
    TABLE_LENGTH,
    WINDOW,
    attention_model,
    model_inputs,
    static_targets,
)


def _staged(model: ir.Model) -> tuple[ir.Model, ir.passes.PassResult]:
    """Both stages, as the default pipeline runs them."""
    fused = AttentionFusion()(model.clone()).model
    packing = PackedAttentionFusion()
    return packing(fused).model, packing


def packing_refusals(model: ir.Model) -> list[str]:
    return PackedAttentionFusion()(AttentionFusion()(model.clone()).model).refusals


def _attention(model: ir.Model) -> ir.Node:
    (node,) = [n for n in model.graph if n.domain == "com.microsoft"]
    assert node.op_type == "Attention" and node.attributes.get_int("num_heads") == HEADS
    assert not {"MatMul", "Softmax", "MultiHeadAttention"} & set(op_types(model))
    return node


def test_self_attention_gets_packed_qkv_weights():
    model = attention_model()
    after, packing = _staged(model)
    fused = _attention(after)
    assert packing.fused_count == 1
    assert fused.inputs[0].name == "x"
    assert fused.inputs[1].const_value.shape == (HIDDEN, 3 * HIDDEN)
    assert fused.attributes.get_float("scale") == pytest.approx(0.5)
    # A mask that is a graph input stays the op's attention_bias, and the pass says why.
    assert fused.inputs[5].producer().op_type == "Expand" and fused.inputs[3] is None
    assert packing_refusals(model) == [
        "1 of 1 packed with the mask kept as attention_bias: "
        "it reads more than [batch, sequence] inputs, or goes through If/Loop/Scan"
    ]
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


def test_padding_mask_subgraph_becomes_the_ops_mask_input():
    model = attention_model(mask="input")
    after, _ = _staged(model)
    fused = _attention(after)
    # The 2-D mask (cast to int32) replaces the float bias; its subgraph is gone.
    assert fused.inputs[3].producer().op_type == "Cast" and len(fused.inputs) == 4
    assert not {"Sub", "Unsqueeze", "Expand"} & set(op_types(after))
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


def test_causal_and_padding_mask_becomes_mask_index_and_the_causal_flag():
    model = attention_model(mask="causal")
    after, _ = _staged(model)
    fused = _attention(after)
    assert fused.attributes.get_int("unidirectional") == 1 and len(fused.inputs) == 4
    assert not {"Range", "LessOrEqual", "Where"} & set(op_types(after))
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


# -- A mask's kind holds at every length the packed op accepts -------------------------------------------------
# Local (sliding-window) attention is causal on any probe shorter than its window. The
# packed op's unidirectional flag would let a query see every earlier key, which is
# wrong once a sequence is longer than the window: the kind is probed up to --max-sequence
# and at the lengths where a table the mask reads runs out.


@pytest.mark.parametrize(
    ("mask", "shown_at"),
    [("window_table", TABLE_LENGTH), ("window_range", WINDOW + 1)],  # the table's length; the compared constant
)
def test_a_sliding_window_mask_is_not_taken_for_a_causal_one(mask, shown_at):
    model = attention_model(mask=mask)
    after, _ = _staged(model)
    fused = _attention(after)
    assert not fused.attributes.get_int("unidirectional", 0) and fused.inputs[3] is None
    assert fused.inputs[5] is not None  # the window stays in the bias
    assert packing_refusals(model) == [
        f"1 of 1 packed with the mask kept as attention_bias: it is not what a causal + padding mask implies at "
        f"{shown_at} tokens, though it is at 7 and 13 (a sliding window, or a table that changes past them)"
    ]
    # Past the window the local mask hides keys the causal one would show.
    for seq in (5, WINDOW + 100):
        assert_same_outputs(model, after, model_inputs(model, seq), rtol=1e-4, atol=1e-5)


def test_a_causal_mask_from_a_table_is_causal_up_to_the_tables_length():
    # GPT-2's bias buffer: causal at every length it can be sliced to; past it the model fails anyway.
    model = attention_model(mask="causal_table")
    after, _ = _staged(model)
    fused = _attention(after)
    assert fused.attributes.get_int("unidirectional") == 1 and len(fused.inputs) == 4
    for seq in (5, TABLE_LENGTH):
        assert_same_outputs(model, after, model_inputs(model, seq), rtol=1e-4, atol=1e-5)


def test_a_window_wider_than_max_sequence_is_causal_within_it():
    # The packed op is claimed exact up to --max-sequence; a window wider than that never shows.
    model = attention_model(mask="window_range")
    fused = AttentionFusion()(model.clone()).model
    packing = PackedAttentionFusion(max_sequence=WINDOW)
    after = packing(fused).model
    assert _attention(after).attributes.get_int("unidirectional") == 1
    assert_same_outputs(model, after, model_inputs(model, WINDOW), rtol=1e-4, atol=1e-5)


def test_a_mask_too_large_to_probe_at_max_sequence_stays_a_bias():
    model = attention_model(mask="causal")
    fused = AttentionFusion()(model.clone()).model
    result = PackedAttentionFusion(max_sequence=1 << 20)(fused)
    assert _attention(result.model).inputs[5] is not None
    assert result.refusals == [
        "1 of 1 packed with the mask kept as attention_bias: its kind cannot be probed up to --max-sequence 1048576 "
        "(a [1048576, 1048576] mask is too large to evaluate)"
    ]


def test_a_mask_the_probe_cannot_run_at_other_shapes_stays_a_bias():
    # Static input shapes: the probes at other lengths cannot run, so the mask is not taken for a padding mask.
    model = static_targets(attention_model(mask="input"))
    after, _ = _staged(model)
    fused = _attention(after)
    assert fused.inputs[3] is None and fused.inputs[5] is not None
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


def test_a_narrower_value_gets_qkv_hidden_sizes():
    model = attention_model(value_head_size=2)
    after, _ = _staged(model)
    fused = _attention(after)
    assert list(fused.attributes["qkv_hidden_sizes"].as_ints()) == [HIDDEN, HIDDEN, HEADS * 2]
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


def test_gpt2_conv1d_projection_is_packed():
    model = attention_model(projection="conv1d", mask="causal")
    after, _ = _staged(model)
    fused = _attention(after)
    assert fused.inputs[0].name == "x" and not {"Gemm", "Split"} & set(op_types(after))
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


def test_pack_qkv_runs_right_after_fuse_attention():
    names = default_pass_names("cpu")
    assert names[names.index("fuse-attention") + 1] == "pack-qkv"
    with pytest.raises(PassSelectionError, match="pack-qkv must run after fuse-attention"):
        resolve(["pack-qkv", "fuse-attention"])


# -- Every refusal ---------------------------------------------------------------------------------------------


def _mha_model(inputs: list[str], shapes: dict[str, list | None] | None = None) -> ir.Model:
    """``x`` projected three times into a hand-written MultiHeadAttention reading ``inputs``."""
    rng = np.random.default_rng(0)
    nodes, weights = [], {}
    for name in "qkv":
        weights[f"w{name}"] = rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32)
        nodes.append(helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}_proj"]))
    nodes.append(helper.make_node("MultiHeadAttention", inputs, ["out"], domain="com.microsoft", num_heads=HEADS))
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", HIDDEN])]
    for name, shape in (shapes or {}).items():
        graph_inputs.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT if name != "kpm" else TensorProto.INT32, shape)
        )
    graph = helper.make_graph(
        nodes,
        "mha",
        graph_inputs,
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "S", HIDDEN])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return ir.from_proto(helper.make_model(graph, opset_imports=opsets))


def _cross_attention() -> ir.Model:
    return AttentionFusion()(attention_model(projection="cross")).model


def _projection_also_an_output() -> ir.Model:
    model = attention_model()
    model.graph.outputs.append(next(v for n in model.graph for v in n.outputs if v.name == "q_proj"))
    return AttentionFusion()(model).model


REFUSALS = {
    "key padding mask": (
        lambda: _mha_model(["q_proj", "k_proj", "v_proj", "", "kpm"], {"kpm": ["B", "S"]}),
        "it has a projection bias, key padding mask or past state",
    ),
    "packed": (lambda: _mha_model(["q_proj"]), "the key and value are packed with the query"),
    "4-D key": (
        lambda: _mha_model(["q_proj", "k", "v"], {"k": ["B", HEADS, "S", 4], "v": ["B", HEADS, "S", 4]}),
        "key/value are per-head 4-D tensors",
    ),
    "unknown rank": (
        lambda: _mha_model(["q_proj", "k", "v"], {"k": None, "v": None}),
        "query, key or value is not known to be 3-D",
    ),
    "cross attention": (_cross_attention, "query, key and value are not projections of one input"),
    "projection used": (_projection_also_an_output, "a projection has other users"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_every_refusal_is_counted_with_its_reason(case):
    build, reason = REFUSALS[case]
    model = build()
    assert "MultiHeadAttention" in op_types(model)
    result = PackedAttentionFusion()(model)
    assert not result.modified
    assert result.refusals == [f"1 of 1 MultiHeadAttention left unfused: {reason}"]


def _mask_graph(nodes: list, extra_inputs: list) -> tuple[ir.Model, ir.Value]:
    """A model computing a ``[B, 1, 1, S]`` float bias ``bias`` from ``attention_mask`` (and ``extra_inputs``)."""
    graph = helper.make_graph(
        nodes,
        "mask",
        [helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "S"]), *extra_inputs],
        [helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["B", 1, 1, "S"])],
        [
            numpy_helper.from_array(np.array(0, np.int64), "pad_id"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(-1e9, np.float32), "filler"),
        ],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    return model, model.graph.outputs[0]


_KEEP_TO_BIAS = [
    helper.make_node("Unsqueeze", ["keep", "axes"], ["keep4"]),
    helper.make_node("Where", ["keep4", "zero", "filler"], ["bias"]),
]
_IDS = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"])


def test_a_mask_that_reads_token_ids_is_not_taken_for_the_padding_mask():
    # keep = attention_mask & (input_ids != pad): the probe feeds ids of 1, where it looks like padding alone.
    from passes.fusion.packed_attention import _mask_kind

    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["mask_bool"], to=TensorProto.BOOL),
        helper.make_node("Equal", ["input_ids", "pad_id"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["not_pad"]),
        helper.make_node("And", ["mask_bool", "not_pad"], ["keep"]),
        *_KEEP_TO_BIAS,
    ]
    assert _mask_kind(*_mask_graph(nodes, [_IDS])) == "it reads other inputs' values, not only the mask's"


def test_a_mask_that_reads_only_the_shape_of_token_ids_is_the_padding_mask():
    from passes.fusion.packed_attention import _mask_kind

    nodes = [
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_bool"], to=TensorProto.BOOL),
        helper.make_node("Expand", ["mask_bool", "ids_shape"], ["keep"]),
        *_KEEP_TO_BIAS,
    ]
    model, bias = _mask_graph(nodes, [_IDS])
    mask, causal, _ = _mask_kind(model, bias)
    assert mask.name == "attention_mask" and not causal


def test_a_conv1d_projection_without_a_bias_packs_with_a_zero_bias():
    # simplify-ops drops an all-zero Gemm bias; the packed op gets zeros.
    model = attention_model(mask="causal", projection="conv1d")
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    model.graph.initializers["b_qkv"].const_value = ir.tensor(np.zeros_like(gemm.inputs[2].const_value.numpy()))
    gemm.resize_inputs(2)
    after, packing = _staged(model)
    assert packing.fused_count == 1 and not _attention(after).inputs[2].const_value.numpy().any()
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("attributes", "index", "leading"),
    [({}, [0, 1], True), ({"start": 1}, [0], True), ({"start": 1}, [1], False), ({"end": 2}, None, True)],
)
def test_only_readers_of_batch_and_sequence_move_to_the_packed_input(attributes, index, leading):
    # Gather(Shape(q, start=1), [1]) is the projection width, which the packed input does not share.
    from passes.fusion.packed_attention import _reads_leading_dims

    value = ir.Value(name="q", shape=ir.Shape(["B", "S", 16]))
    shape = ir.node("Shape", [value], attributes)
    if index is not None:
        indices = ir.Value(name="i", const_value=ir.tensor(np.array(index, np.int64)))
        ir.node("Gather", [shape.outputs[0], indices], {"axis": 0})
    assert _reads_leading_dims(shape) is leading


@pytest.mark.parametrize("fed", [(1, SEQ), (BATCH, 1)])
def test_a_mask_whose_dims_are_not_the_inputs_is_broadcast_to_them(fed):
    # attention_mask declared [mask_batch, mask_sequence] (names x does not declare): the original broadcasts a
    # mask of one row (or one column) over the scores; mask_index must be [batch, sequence], so the fused op reads
    # the mask expanded to x's leading dims (a review found the packed op refusing a [1, S] mask for a batch of 2).
    model = attention_model(mask="input")
    mask = next(value for value in model.graph.inputs if value.name == "attention_mask")
    mask.shape = ir.Shape(["mask_batch", "mask_sequence"])
    after, _ = _staged(model)
    fused = _attention(after)
    assert fused.inputs[3].producer().op_type == "Cast"
    assert fused.inputs[3].producer().inputs[0].producer().op_type == "Expand"
    feeds = model_inputs(model)
    feeds["attention_mask"] = np.ones(fed, np.int64)
    assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


def _embedded(model: ir.Model, ids_dims: list[str]) -> ir.Model:
    """``model`` with its hidden states ``x`` computed from an ``input_ids [ids_dims]`` input (a Gather of a table)."""
    x = next(value for value in model.graph.inputs if value.name == "x")
    ids = ir.Value(name="input_ids", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(ids_dims))
    table = ir.Value(
        name="table", const_value=ir.tensor(np.random.default_rng(0).standard_normal((11, HIDDEN), np.float32))
    )
    table.shape, table.type = ir.Shape([11, HIDDEN]), ir.TensorType(ir.DataType.FLOAT)
    model.graph.register_initializer(table)
    gather = ir.node("Gather", [table, ids], name="embedding")
    gather.outputs[0].shape = ir.Shape([None, None, HIDDEN])  # its leading dims unknown: only the ancestry says
    gather.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    model.graph.insert_before(next(iter(model.graph)), gather)
    for user, index in list(x.uses()):
        user.replace_input_with(index, gather.outputs[0])
    model.graph.inputs.remove(x)
    model.graph.inputs.insert(0, ids)
    return model


def test_a_mask_declared_with_the_inputs_dims_is_read_as_it_is():
    # The hidden states computed from input_ids [B, S], the mask declared [B, S]: read as it is, with no Expand.
    after, _ = _staged(_embedded(attention_model(mask="input"), ["B", "S"]))
    assert "Attention" in op_types(after) and "Expand" not in op_types(after)
    # ... and only with the same two names,
    after, _ = _staged(_embedded(attention_model(mask="input"), ["B", "T"]))
    assert "Attention" in op_types(after) and "Expand" in op_types(after)
    # ... from an input the hidden states are computed from (a review: an unused input_ids [B, S] beside x of
    # unknown dims proved nothing, and a [1, S] mask fed for x of batch 2 was refused by the packed op).
    model = attention_model(mask="input")
    x = next(value for value in model.graph.inputs if value.name == "x")
    x.shape = ir.Shape([None, None, HIDDEN])
    unused = ir.Value(name="input_ids", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(["B", "S"]))
    model.graph.inputs.append(unused)
    after, _ = _staged(model)
    assert "Expand" in op_types(after)
    feeds = {**model_inputs(model), "attention_mask": np.ones((1, SEQ), np.int64)}
    feeds["input_ids"] = np.zeros((1, SEQ), np.int64)
    assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


def test_a_where_fill_reaches_the_packed_op_as_its_mask_filter_value():
    # fuse-attention writes a finite Where fill as -1e30; the packed op adds mask_filter_value (default -1e4) to a
    # masked score, so it must be the bias's own (a review: scores of 1e4 next to a -1e4 Where fill came back).
    model = attention_model(mask="input")
    after, _ = _staged(model)
    assert not _attention(after).attributes.get_float("mask_filter_value", 0.0)  # (1 - mask) * -1e4: the default
    where = _where_padding_model()
    after, _ = _staged(where)
    fused = _attention(after)
    assert fused.attributes.get_float("mask_filter_value") == pytest.approx(-1e30)
    feeds = model_inputs(where)
    feeds["x"] = feeds["x"] * 100
    feeds["attention_mask"][0, -1] = 0
    assert_same_outputs(where, after, feeds, rtol=1e-4, atol=1e-3)


def _where_padding_model() -> ir.Model:
    """``attention_model``'s padding mask written ``Where(mask, scores, -1e4)`` (GPT-2's legacy fill)."""
    model = attention_model(mask="input")
    add = next(node for node in model.graph if node.outputs[0].name == "logits")  # scaled scores + mask bias
    mask = next(value for value in model.graph.inputs if value.name == "attention_mask")
    cast = ir.node("Cast", [mask], {"to": ir.DataType.BOOL}, name="mask_bool")
    axes = ir.Value(name="where_axes", const_value=ir.tensor(np.array([1, 2], np.int64)))
    axes.shape, axes.type = ir.Shape([2]), ir.TensorType(ir.DataType.INT64)
    fill = ir.Value(name="where_fill", const_value=ir.tensor(np.array(-1e4, np.float32)))
    fill.shape, fill.type = ir.Shape([]), ir.TensorType(ir.DataType.FLOAT)
    for value in (axes, fill):
        model.graph.register_initializer(value)
    unsqueeze = ir.node("Unsqueeze", [cast.outputs[0], axes], name="mask_4d")
    where = ir.node("Where", [unsqueeze.outputs[0], add.inputs[0], fill], name="masked")
    model.graph.insert_before(add, [cast, unsqueeze, where])
    add.outputs[0].replace_all_uses_with(where.outputs[0])
    model.graph.remove(add, safe=False)
    return model


def _legacy_two_layer_model() -> ir.Model:
    """Two self-attention ``MultiHeadAttention`` ops as the legacy exporter leaves them: no intermediate shape
    recorded. Layer b reads the graph input (its rank follows from it); layer a reads a ``LayerNormalization``
    of it, whose rank only ONNX's shape inference finds (Whisper's and wav2vec2's legacy encoders)."""
    rng = np.random.default_rng(0)
    hidden, heads = 16, 2
    init = {"scale": np.ones(hidden, np.float32), "shift": np.zeros(hidden, np.float32)}
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "shift"], ["normed"], axis=-1)]
    for layer, source in (("a", "normed"), ("b", "x")):
        for part in "qkv":
            init[f"{layer}_w{part}"] = (rng.standard_normal((hidden, hidden)) * 0.3).astype(np.float32)
            init[f"{layer}_b{part}"] = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
            nodes += [
                helper.make_node("MatMul", [source, f"{layer}_w{part}"], [f"{layer}_{part}m"]),
                helper.make_node("Add", [f"{layer}_{part}m", f"{layer}_b{part}"], [f"{layer}_{part}"]),
            ]
        nodes.append(
            helper.make_node(
                "MultiHeadAttention",
                [f"{layer}_q", f"{layer}_k", f"{layer}_v"],
                [f"{layer}_out"],
                domain="com.microsoft",
                num_heads=heads,
            )
        )
    nodes.append(helper.make_node("Add", ["a_out", "b_out"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "legacy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        [numpy_helper.from_array(array, name) for name, array in init.items()],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=9
    )
    return ir.from_proto(proto)


def test_qkv_whose_rank_only_shape_inference_finds_are_packed_with_unique_names():
    # Before: "1 of 2 MultiHeadAttention left unfused: query, key or value is not known to be 3-D". Packed in a
    # second run on inferred shapes, that op first took the name of the one packed in the first run
    # (Attention_0/Attention twice: ONNX Runtime refused the result, and the pass was rolled back).
    model = _legacy_two_layer_model()
    result = PackedAttentionFusion()(model.clone())
    assert result.modified and not result.refusals, result.refusals
    fused = [node for node in result.model.graph if node.op_type == "Attention"]
    assert len(fused) == 2 and len({node.name for node in fused}) == 2
    assert "MultiHeadAttention" not in op_types(result.model)
    x = np.random.default_rng(1).standard_normal((2, 5, 16)).astype(np.float32)
    assert_same_outputs(model, result.model, {"x": x}, rtol=1e-4, atol=1e-5)

"""fuse-attention: scaled dot-product attention subgraphs into MultiHeadAttention (stage 1)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.attention import AttentionFusion
from tests.helpers import assert_same_outputs, op_types, run
from tests.passes.fusion._attention_graphs import (
    BATCH,
    HEAD_SIZE,
    HEADS,
    SEQ,
    WINDOW,
    attention_model,
    model_inputs,
    range_causal_mask,
    variant,
)


def _repeated(value: ir.Value) -> bool:
    """Whether ``value`` is a key/value head repeated for the query's heads: ``Reshape(Expand(Unsqueeze(kv, 2)))``
    (Llama's repeat_kv form) or a plain ``Expand``."""
    node = value.producer()
    if node is not None and node.op_type == "Reshape":
        node = node.inputs[0].producer()
    return node is not None and node.op_type == "Expand"


def _fused(model: ir.Model) -> tuple[ir.Model, ir.Node]:
    fusion = AttentionFusion()
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1
    assert not {"Softmax", "Attention"} & set(op_types(after))
    (mha,) = [n for n in after.graph if n.op_type == "MultiHeadAttention"]
    assert mha.domain == "com.microsoft" and mha.attributes.get_int("num_heads") == HEADS
    return after, mha


@pytest.mark.parametrize("key_form", ["split", "bnsh"])
def test_self_attention_with_mask_is_fused(key_form):
    model = attention_model(key_form=key_form)
    after, mha = _fused(model)
    assert mha.attributes.get_float("scale") == pytest.approx(1 / np.sqrt(HEAD_SIZE))
    # Either way the key traces back to a head split, so the 3-D projections feed the op.
    assert [v.name for v in mha.inputs[:3]] == ["q_proj", "k_proj", "v_proj"]
    # The output Transpose + Reshape back to [B, S, N*d] is the op's own output.
    assert "Transpose" not in op_types(after)
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


def test_attention_without_mask_is_fused():
    model = attention_model(mask=None)
    after, mha = _fused(model)
    assert len(mha.inputs) == 3
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


def test_a_scale_after_the_mask_scales_the_mask():
    # softmax((QK^T + bias) / sqrt(d)): the fused op scales Q @ K^T only, so the bias is scaled for it.
    model = attention_model(scale_after_mask=True)
    after, mha = _fused(model)
    expand = mha.inputs[5].producer()  # [B, 1, 1, S] expanded over the query axis
    scaled_bias = expand.inputs[0].producer()
    assert scaled_bias.op_type == "Mul" and scaled_bias.inputs[0].name == "mask_bias"
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


def test_a_lower_rank_mask_broadcasts_right_aligned():
    # A [1, S] key mask added to [B, N, S, S] scores: unsqueezed to [1, 1, 1, S], then expanded over S.
    model = attention_model()
    model.graph.inputs[1].shape = ir.Shape([1, "S"])
    feeds = model_inputs(model)
    feeds["mask_bias"] = np.array([[0, 0, 0, 0, -1e9]], np.float32)
    after, mha = _fused(model)
    assert mha.inputs[5].producer().op_type == "Expand"
    assert "Unsqueeze" in op_types(after)
    assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


def _sdpa_model(q: list, k: list, v: list, scale: float = 0.5) -> ir.Model:
    """``softmax(q @ k^T * scale) @ v`` on per-head graph inputs, the output left per-head."""
    key_perm = [0, 1, 3, 2] if len(k) == 4 else [0, 2, 1]
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["k"], ["k_t"], perm=key_perm),
            helper.make_node("MatMul", ["q", "k_t"], ["scores"]),
            helper.make_node("Mul", ["scores", "scale"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
            helper.make_node("MatMul", ["probs", "v"], ["out"]),
        ],
        "sdpa",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (("q", q), ("k", k), ("v", v))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    ir.passes.common.ShapeInferencePass()(model)
    return model


def test_per_head_inputs_go_in_as_bnsh_key_value_and_the_output_is_split_back():
    model = _sdpa_model(["B", HEADS, "S", 4], ["B", HEADS, "T", 4], ["B", HEADS, "T", 4])
    after, mha = _fused(model)
    assert mha.inputs[1].name == "k" and mha.inputs[2].name == "v"  # [B, N, T, d]: no Transpose needed
    assert mha.inputs[0].producer().op_type == "Reshape"  # the query merged to [B, S, N*d]
    # Each adapter around the op is reported with why it was needed.
    assert AttentionFusion()(model.clone()).refusals == [
        "1 of 1 fused with the query merged back into [B, S, N*d] (Transpose + Reshape): "
        "it is not a head split of a projection",
        "1 of 1 fused with the output split back into [B, N, S, d] (Reshape + Transpose): "
        "the graph does not merge the heads next",
    ]
    rng = np.random.default_rng(2)
    feeds = {name: rng.standard_normal((2, HEADS, 5 if name == "q" else 6, 4)).astype(np.float32) for name in "qkv"}
    assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


def _projection_scaled_model(layout: str) -> ir.Model:
    """Self-attention with ``0.5 ** 0.5`` on the 3-D query and key projections (BART's ``q_proj(x) * scaling``).

    ``layout``: "heads_first" transposes every head split to ``[N, B, S, d]`` (batch fixed at
    1), so Q, K and V reach the op as per-head tensors, not as their projections;
    "value_per_head" keeps the usual ``[B, N, S, d]`` but passes V through a Relu, so K
    reaches the op per-head beside it.
    """
    rng = np.random.default_rng(3)
    weights = {f"w{n}": (rng.standard_normal((HEADS * 4, HEADS * 4)) * 0.5).astype(np.float32) for n in "qkv"}
    weights["half_root"] = np.array(0.5**0.5, np.float32)
    weights["split"], weights["merge"] = np.array([0, 0, HEADS, 4], np.int64), np.array([0, 0, -1], np.int64)
    to_heads, back = ([2, 0, 1, 3], [1, 2, 0, 3]) if layout == "heads_first" else ([0, 2, 1, 3], [0, 2, 1, 3])
    nodes = []
    for name in "qkv":
        nodes.append(helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}_proj"]))
        projection = f"{name}_proj"
        if name != "v":
            nodes.append(helper.make_node("Mul", [projection, "half_root"], [f"{name}_scaled"]))
            projection = f"{name}_scaled"
        nodes.append(helper.make_node("Reshape", [projection, "split"], [f"{name}_split"]))
        nodes.append(helper.make_node("Transpose", [f"{name}_split"], [f"{name}_heads"], perm=to_heads))
    value = "v_heads"
    if layout == "value_per_head":
        nodes.append(helper.make_node("Relu", ["v_heads"], ["v_relu"]))
        value = "v_relu"
    nodes += [
        helper.make_node("Transpose", ["k_heads"], ["k_t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q_heads", "k_t"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", value], ["context"]),
        helper.make_node("Transpose", ["context"], ["context_t"], perm=back),
        helper.make_node("Reshape", ["context_t", "merge"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "projection_scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", HEADS * 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "S", HEADS * 4])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    ir.passes.common.ShapeInferencePass()(model)
    return model


@pytest.mark.parametrize("layout", ["heads_first", "value_per_head"])
def test_a_scale_on_a_projection_is_applied_once_where_its_head_split_goes_in_per_head(layout):
    # The scale sits inside the head split's output: the op is given that output, so its
    # scale must not repeat the factor (it did: outputs off by 0.8, rolled back by verification).
    model = _projection_scaled_model(layout)
    fusion = AttentionFusion()
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1, fusion.refusals
    (mha,) = [n for n in after.graph if n.op_type == "MultiHeadAttention"]
    if layout == "heads_first":  # both factors are inside the per-head query and key
        assert mha.inputs[0].producer().op_type == "Reshape" and mha.inputs[1].producer().op_type == "Transpose"
        assert mha.attributes.get_float("scale") == pytest.approx(1.0)
    else:  # the query goes in as its unscaled projection, the key per-head with its factor inside
        assert mha.inputs[0].name == "q_proj" and mha.inputs[1].producer().inputs[0].name == "k_split"
        assert mha.attributes.get_float("scale") == pytest.approx(0.5**0.5)
    rng = np.random.default_rng(4)
    for seq in (5, 9):
        feeds = {"x": rng.standard_normal((1, seq, HEADS * 4)).astype(np.float32)}
        assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask", ["window_table", "window_range"])
def test_a_sliding_window_mask_is_the_ops_bias_at_every_length(mask):
    # The op's attention_bias is the graph's own mask: no kind is decided here, so none can be wrong past the window.
    model = attention_model(mask=mask)
    after, mha = _fused(model)
    assert mha.inputs[5] is not None and not mha.attributes.get_int("unidirectional", 0)
    for seq in (5, WINDOW + 100):
        assert_same_outputs(model, after, model_inputs(model, seq), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("projection", ["matmul", "conv1d"])
def test_multi_query_attention_by_broadcasting_repeats_the_shared_head(projection):
    # One K/V head broadcast by MatMul over 2 query heads (Falcon, GPT-BigCode): the fused op needs equal head
    # counts, so the shared head is repeated for each query head.
    model = attention_model(kv_heads=1, projection=projection)
    result = AttentionFusion()(model.clone())
    after = result.model
    assert "Softmax" not in op_types(after)
    (mha,) = [n for n in after.graph if n.op_type == "MultiHeadAttention"]
    assert [_repeated(mha.inputs[i]) for i in (1, 2)] == [True, True]
    assert any("one key/value head repeated for each query head" in note for note in result.refusals)
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shared", ["key", "value"])
def test_one_shared_head_on_one_side_is_repeated_on_that_side(shared):
    heads = {"key": ["B", HEADS, "T", 4], "value": ["B", HEADS, "T", 4]}
    heads[shared] = ["B", 1, "T", 4]
    model = _sdpa_model(["B", HEADS, "S", 4], heads["key"], heads["value"])
    after, mha = _fused(model)
    expanded = [_repeated(mha.inputs[i]) for i in (1, 2)]
    assert expanded == [shared == "key", shared == "value"]
    rng = np.random.default_rng(3)
    feeds = {
        "q": rng.standard_normal((2, HEADS, 5, 4)).astype(np.float32),
        **{
            name: rng.standard_normal((2, 1 if name[0] == shared[0] else HEADS, 6, 4)).astype(np.float32)
            for name in "kv"
        },
    }
    assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


def _flattened_output_model(target: list[int], *, static: bool = False) -> ir.Model:
    """GPT-2's attention (Conv1D projections): the merged heads flattened by ``target`` for the output Gemm.

    ``static`` fixes the input at ``[BATCH, SEQ, HIDDEN]`` (so ``B*S`` is a known size).
    """
    proto = ir.to_proto(attention_model(mask=None, projection="conv1d"))
    graph = proto.graph
    del graph.value_info[:]
    merge = next(n for n in graph.node if n.output[0] == "y_out")
    merge.input[1] = "flat_merge"
    rng = np.random.default_rng(5)
    width = target[1] if target[1] > 0 else HEADS * HEAD_SIZE
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(target, np.int64), "flat_merge"),
            numpy_helper.from_array((rng.standard_normal((width, 3)) * 0.5).astype(np.float32), "w_out"),
        ]
    )
    graph.node.append(helper.make_node("Gemm", ["y_out", "w_out"], ["y"]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    if static:
        for dim, size in zip(graph.input[0].type.tensor_type.shape.dim[:2], (BATCH, SEQ)):
            dim.dim_value = size
    model = ir.from_proto(proto)
    ir.passes.common.ShapeInferencePass()(model)
    return model


@pytest.mark.parametrize(
    ("target", "static"),
    [
        ([-1, HEADS * HEAD_SIZE], False),
        ([-1, HEADS * HEAD_SIZE], True),
        ([BATCH * SEQ, HEADS * HEAD_SIZE], True),
        ([BATCH * SEQ, -1], True),
    ],
)
def test_a_head_merge_that_flattens_batch_and_sequence_is_the_ops_output_flattened(target, static):
    # GPT-2's Conv1D reads [B*S, N*dv]: the op's [B, S, N*dv] output flattened the same way is that
    # tensor. It was split back into [B, N, S, d] ahead of the graph's own Transpose + Reshape.
    model = _flattened_output_model(target, static=static)
    fusion = AttentionFusion()
    result = fusion(model.clone())
    after = result.model
    assert fusion.fused_count == 1 and result.refusals == []
    (mha,) = [n for n in after.graph if n.op_type == "MultiHeadAttention"]
    (flatten,) = [use.node for use in mha.outputs[0].uses()]
    assert flatten.op_type == "Reshape" and list(flatten.inputs[1].const_value.numpy()) == target
    assert [use.node.op_type for use in flatten.outputs[0].uses()] == ["Gemm"]
    assert "Transpose" not in op_types(after)
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", [[-1, HEAD_SIZE], [-1, HEADS * HEAD_SIZE * SEQ]])
def test_a_2d_reshape_that_does_not_merge_the_heads_gets_the_output_split_back(target):
    # Rows of one head's d values, or of whole sequences: not [B*S, N*dv]; the fused output goes
    # back to [B, N, S, d] for the graph's own Transpose and Reshape.
    model = _flattened_output_model(target)
    fusion = AttentionFusion()
    result = fusion(model.clone())
    after = result.model
    assert fusion.fused_count == 1
    assert result.refusals[-1].endswith("the graph does not merge the heads next")
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


# -- Every refusal, by a model that triggers it -------------------------------------------------------------


def _replace(model: ir.Model, old: ir.Node, op: str, inputs: list, domain: str = "", **attrs) -> ir.Model:
    node = ir.node(op, inputs, attrs, domain=domain, name=f"{old.name}_replaced")
    model.graph.insert_before(old, node)
    old.outputs[0].replace_all_uses_with(node.outputs[0])
    node.outputs[0].shape, node.outputs[0].type = old.outputs[0].shape, old.outputs[0].type
    model.graph.remove(old, safe=True)
    if domain:
        model.opset_imports.setdefault(domain, 1)
    return model


def _node(model: ir.Model, output: str) -> ir.Node:
    return next(n for n in model.graph if n.outputs[0].name == output)


def _const(model: ir.Model, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(array.shape), const_value=ir.tensor(array, name=name))
    value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    model.graph.register_initializer(value)
    return value


def _on_scores(op_type: str):
    def build() -> ir.Model:
        model = attention_model()
        softmax = next(n for n in model.graph if n.op_type == "Softmax")
        node = ir.node(op_type, [softmax.inputs[0]], name=op_type.lower())
        model.graph.insert_before(softmax, node)
        softmax.replace_input_with(0, node.outputs[0])
        return model

    return build


def _weak_where_fill() -> ir.Model:
    model = variant(attention_model(), mask="where_min")
    where = next(n for n in model.graph if n.op_type == "Where")
    where.replace_input_with(2, _const(model, "weak_fill", np.array(-1.0, np.float32)))
    return model


def _where_fill_scaled_to_a_weak_mask() -> ir.Model:
    # -1e5 masks, but a scale of 1e-3 after the Where leaves -100: not a mask the op may sum in.
    model = variant(attention_model(), mask="where_min")
    where = next(n for n in model.graph if n.op_type == "Where")
    where.replace_input_with(2, _const(model, "fill", np.array(-1e5, np.float32)))
    softmax = next(n for n in model.graph if n.op_type == "Softmax")
    scaled = ir.node("Mul", [softmax.inputs[0], _const(model, "tiny", np.array(1e-3, np.float32))], name="tiny_scale")
    model.graph.insert_before(softmax, scaled)
    softmax.replace_input_with(0, scaled.outputs[0])
    return model


def _transposed_query_product() -> ir.Model:
    model = attention_model()
    scores = _node(model, "scores")
    query = ir.node("Transpose", [scores.inputs[0]], {"perm": [0, 1, 3, 2]}, name="q_swapped")
    model.graph.insert_before(scores, query)
    return _replace(model, scores, "FusedMatMul", [query.outputs[0], scores.inputs[1]], "com.microsoft", transA=1)


def _with_output(name: str) -> ir.Model:
    model = attention_model()
    model.graph.outputs.append(_node(model, name).outputs[0])
    return model


def _scaled_probs_product() -> ir.Model:
    model = attention_model()
    context = _node(model, "context")
    return _replace(model, context, "FusedMatMul", list(context.inputs), "com.microsoft", alpha=2.0)


def _unknown_rank_mask() -> ir.Model:
    model = attention_model()
    model.graph.inputs[1].shape = None
    return model


def _without_intermediate_types(model: ir.Model) -> ir.Model:
    # Hand-built and some exported graphs record no dtype on intermediate values.
    proto = ir.to_proto(model)
    del proto.graph.value_info[:]
    return ir.from_proto(proto)


REFUSALS = {
    "softmax axis": (
        lambda: attention_model(softmax_axis=2),
        "Softmax is not over the last axis of a 4-D tensor (or of batched [B*N, S, T] scores)",
    ),
    "float64": (lambda: attention_model(dtype=np.float64), "the scores are not float32 (the fused ops' CPU kernels)"),
    "float64 inputs, no shapes": (
        lambda: _without_intermediate_types(attention_model(dtype=np.float64)),
        "the scores are not float32 (the fused ops' CPU kernels)",
    ),
    "not logits": (_on_scores("Abs"), "Softmax input is not Q @ K^T under scalar scales, biases and Where masks"),
    # A bare tanh is the soft cap c = 1, here after the mask: the fused op caps first.
    "masked, then capped": (
        _on_scores("Tanh"),
        "a mask is applied to the scores before their soft cap (the fused op caps first, then masks)",
    ),
    "where fill": (
        _weak_where_fill,
        "a Where on the scores does not mask: its fill, times the scales after it, is above -1e4",
    ),
    "where fill scaled": (
        _where_fill_scaled_to_a_weak_mask,
        "a Where on the scores does not mask: its fill, times the scales after it, is above -1e4",
    ),
    "transA": (_transposed_query_product, "Q @ K^T transposes Q or the batch axes (FusedMatMul transA/transBatch)"),
    "scores used": (lambda: _with_output("scores"), "the scores have other users"),
    "probs used": (lambda: _with_output("probs"), "the probabilities do not feed one MatMul with V"),
    "probs scaled": (_scaled_probs_product, "the probabilities feed a scaled or transposing FusedMatMul"),
    "mask rank": (_unknown_rank_mask, "a mask bias has unknown rank"),
    "3-D query": (
        lambda: _sdpa_model([HEADS, "S", 4], ["B", HEADS, "S", 4], ["B", HEADS, "S", 4]),
        "Q @ K^T or the product with V mixes batched [B*N, S, d] and per-head [B, N, S, d] operands",
    ),
    "3-D key": (
        lambda: _sdpa_model(["B", HEADS, "S", 4], [HEADS, "S", 4], ["B", HEADS, "S", 4]),
        "Q @ K^T or the product with V mixes batched [B*N, S, d] and per-head [B, N, S, d] operands",
    ),
    "3-D value": (
        lambda: _sdpa_model(["B", HEADS, "S", 4], ["B", HEADS, "S", 4], [HEADS, "S", 4]),
        "Q @ K^T or the product with V mixes batched [B*N, S, d] and per-head [B, N, S, d] operands",
    ),
    "3-D, not merged heads": (
        lambda: _sdpa_model([HEADS, "S", 4], [HEADS, "S", 4], [HEADS, "S", 4]),
        "the query is not known to be a 4-D per-head tensor or one batched as [B*N, S, d]",
    ),
    "heads unknown": (
        lambda: _sdpa_model(["B", "N", "S", 4], ["B", "N", "S", 4], ["B", "N", "S", 4]),
        "the head count cannot be derived",
    ),
    "negative scale": (
        lambda: _sdpa_model(["B", HEADS, "S", 4], ["B", HEADS, "S", 4], ["B", HEADS, "S", 4], scale=-0.5),
        "the scale is not a positive finite number",
    ),
    "per-head value size": (
        lambda: _sdpa_model(["B", HEADS, "S", 4], ["B", HEADS, "S", 4], ["B", HEADS, "S", 6]),
        "per-head key and value differ in head size (4 and 6)",
    ),
    "per-head value size unknown": (
        lambda: _sdpa_model(["B", HEADS, "S", 4], ["B", HEADS, "S", 4], ["B", HEADS, "S", "dv"]),
        "per-head key and value are not known to have the same head size (4 and unknown)",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_every_refusal_is_counted_with_its_reason(case):
    build, reason = REFUSALS[case]
    model = build()
    if all(v.shape is not None for v in model.graph.inputs):
        onnx.checker.check_model(ir.to_proto(model))  # a valid graph, left alone for that reason only
    before = op_types(model)
    result = AttentionFusion()(model)
    assert not result.modified
    assert result.refusals == [f"1 of 1 Softmax left unfused: {reason}"]
    assert op_types(result.model) == before


def test_a_fully_masked_query_row_stays_finite_where_the_sdpa_guard_zeroes_it():
    # Left padding under a causal mask leaves the first query rows with no key at all: the SDPA
    # guard makes them 0, the fused op would make them NaN, and the next layer would spread the
    # NaN to every token through its keys. The fused bias gets a finite floor instead.
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["q", "k_t"], ["scores"]),
            helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
            helper.make_node("Where", ["keep", "scaled", "minus_inf"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
            helper.make_node("IsNaN", ["probs"], ["nan"]),
            helper.make_node("Where", ["nan", "zero", "probs"], ["guarded"]),
            helper.make_node("MatMul", ["guarded", "v"], ["out"]),
        ],
        "guarded",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", HEADS, "S", 4]) for n in "qkv"]
        + [helper.make_tensor_value_info("keep", TensorProto.BOOL, ["B", 1, "S", "S"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("minus_inf", TensorProto.FLOAT, [], [-np.inf]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    ir.passes.common.ShapeInferencePass()(model)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((2, HEADS, 5, 4)).astype(np.float32) for n in "qkv"}
    keep = np.tril(np.ones((5, 5), bool))[None, None].repeat(2, 0)
    keep[1, :, :, :2] = False  # the second sequence is left-padded by two tokens
    feeds["keep"] = keep
    after, _ = _fused(model)
    expected, actual = run(model, feeds)["out"], run(after, feeds)["out"]
    assert not np.isnan(actual).any()
    real = keep.any(-1)[:, 0]  # query rows with at least one key
    np.testing.assert_allclose(
        actual.transpose(0, 2, 1, 3)[real], expected.transpose(0, 2, 1, 3)[real], rtol=1e-5, atol=1e-6
    )


def test_a_bias_dim_named_otherwise_than_the_query_length_is_expanded():
    # A [B, 1, Q, S] bias fed with Q = 1 broadcasts in the original; the fused op's
    # attention_bias does not, unless the fusion expands it.
    model = attention_model(mask="bias")
    model.graph.inputs[1].shape = ir.Shape(["B", 1, "Q", "S"])
    after, mha = _fused(model)
    assert mha.inputs[5].producer().op_type == "Expand"
    feeds = model_inputs(model)
    assert feeds["mask_bias"].shape[2] == 1
    assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


def test_blocks_sharing_a_mask_in_interleaved_order_stay_in_topological_order():
    # Block A's Softmax, block B's Softmax, B's product with V, then A's: the mask term both
    # share must be built before B's op, which comes first.
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["mask_bool"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["mask_bool", "axes"], ["keep"]),
    ]
    weights = {"axes": np.array([1, 2], np.int64), "fill": np.array(-np.inf, np.float32)}
    weights["split"], weights["merge"] = np.array([0, 0, HEADS, 4], np.int64), np.array([0, 0, -1], np.int64)
    tails = {}
    for block in "AB":
        for name in "qkv":
            weights[f"{block}w{name}"] = rng.standard_normal((HEADS * 4, HEADS * 4)).astype(np.float32)
            nodes += [
                helper.make_node("MatMul", ["x", f"{block}w{name}"], [f"{block}{name}_proj"]),
                helper.make_node("Reshape", [f"{block}{name}_proj", "split"], [f"{block}{name}_split"]),
            ]
        nodes += [
            helper.make_node("Transpose", [f"{block}q_split"], [f"{block}q"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", [f"{block}k_split"], [f"{block}k_t"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", [f"{block}v_split"], [f"{block}v"], perm=[0, 2, 1, 3]),
            helper.make_node("MatMul", [f"{block}q", f"{block}k_t"], [f"{block}scores"]),
            helper.make_node("Where", ["keep", f"{block}scores", "fill"], [f"{block}logits"]),
            helper.make_node("Softmax", [f"{block}logits"], [f"{block}probs"], axis=-1),
        ]
        tails[block] = [
            helper.make_node("MatMul", [f"{block}probs", f"{block}v"], [f"{block}context"]),
            helper.make_node("Transpose", [f"{block}context"], [f"{block}context_t"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"{block}context_t", "merge"], [f"{block}y"]),
        ]
    nodes += tails["B"] + tails["A"] + [helper.make_node("Add", ["Ay", "By"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "interleaved",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", HEADS * 4]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "S"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", HEADS * 4])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    ir.passes.common.ShapeInferencePass()(model)
    result = AttentionFusion()(model.clone())  # its ensures check the order
    assert op_types(result.model).count("MultiHeadAttention") == 2
    onnx.checker.check_model(ir.to_proto(result.model))
    feeds = {
        "x": rng.standard_normal((2, 5, HEADS * 4)).astype(np.float32),
        "attention_mask": np.ones((2, 5), np.int64),
    }
    feeds["attention_mask"][1, 3:] = 0
    assert_same_outputs(model, result.model, feeds, rtol=1e-4, atol=1e-5)


def test_onnx_flexattention_with_different_head_sizes_is_left_alone():
    # The ONNX backend case test_flexattention_diff_head_sizes_expanded_ver26: K's head size 16, V's 32.
    # ORT's MultiHeadAttention takes per-head key and value of one shape only.
    from onnx.backend.test.case.node import collect_testcases

    import optimizer
    from optimizer.registry import default_pass_names

    # Not collect_testcases(op_type=...): onnx imports its case modules once, filtered by the first call's op type,
    # and every later call (the conformance corpus's, in the same worker) gets that filtered list.
    (case,) = [c for c in collect_testcases() if c.name.endswith("flexattention_diff_head_sizes_expanded_ver26")]
    names = default_pass_names("cpu")
    prepared = optimizer.optimize(ir.from_proto(case.model), names[: names.index("fuse-attention")], verify=False)
    result = AttentionFusion()(prepared)
    assert result.refusals == ["1 of 1 Softmax left unfused: per-head key and value differ in head size (16 and 32)"]
    assert not result.modified


def _range_causal_mask_model() -> ir.Model:
    return ir.from_proto(range_causal_mask())


def test_a_mask_full_size_only_by_symbolic_inference_is_not_expanded():
    # The Llama legacy export's causal mask: fused with an Expand to [1, 1, S, T] from Shape(q), Shape(k),
    # which simplify-shapes then proved a no-op in a second run of the pipeline (it reads ORT's
    # symbolic shapes): the first run now proves it the same way.
    model = _range_causal_mask_model()
    after, mha = _fused(model)
    assert mha.inputs[5].producer().op_type == "Where"
    assert not {"Expand", "Shape", "Concat"} & {n.op_type for n in after.graph if n.name.startswith("MultiHead")}
    feeds = model_inputs(model)
    assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)


def test_a_mask_dim_the_symbolic_inference_only_merged_with_the_query_length_is_expanded():
    # Mask rows counted by an input value: ORT's inference gives them a symbol of their own and, where the
    # mask broadcasts against the scores, merges it with S (an assumption, not arithmetic). Fed 1 row,
    # the original broadcasts it over the queries; the fused op's attention_bias needs the Expand.
    proto = ir.to_proto(_range_causal_mask_model())
    proto.graph.input.append(helper.make_tensor_value_info("rows_count", TensorProto.INT64, []))
    (rows,) = [n for n in proto.graph.node if n.output[0] == "rows"]
    rows.input[0] = "row_positions"
    proto.graph.node.insert(0, helper.make_node("Range", ["zero_i", "rows_count", "one_i"], ["row_positions"]))
    model = ir.from_proto(proto)
    after, mha = _fused(model)
    assert mha.inputs[5].producer().op_type == "Expand"
    for count in (1, 5):
        feeds = {**model_inputs(model), "rows_count": np.array(count, np.int64)}
        assert_same_outputs(model, after, feeds, rtol=1e-4, atol=1e-5)

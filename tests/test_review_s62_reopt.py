"""Review s62 (other tools' outputs, and graphopt's own output fed again): what was found and fixed.

1. A packed-QKV ``Attention`` carrying ``qkv_hidden_sizes`` of three equal widths (onnxscript's
   ``ort_fusions.optimize_for_ort`` writes ``[64, 64, 64]`` on every Attention it fuses) was left whole by
   ``--prune-heads`` with "qkv_hidden_sizes: query, key and value of different widths": any such attribute
   refused the cut, equal widths too. The attribute now only refuses widths that differ, and is cut with the
   heads (``[48, 48, 48]`` for 3 of 4 heads of 16), to the pass's twin.
2. GPT-2's Conv1D projection as ONNX Runtime's transformers optimizer writes it (``optimize_model(...,
   model_type="gpt2")``: the ``Reshape → Gemm → Reshape`` becomes ``FullyConnect_MatMul`` + ``Add``), then
   ``Split`` into Q, K and V: ``pack-qkv`` knew only the Gemm spelling and left both layers of the GPT-2 fixture
   so optimized as MultiHeadAttention, "query, key and value are not projections of one input" (they are: one
   packed projection), and ``--prune-heads`` then refused both ("an attention_bias not known to be shared by
   all heads"). ``Split(x @ W + b)`` is now packed as it is: 69 → 39 nodes, heads pruned as on the export.
3. ``--prune-heads`` on a decoder with a key/value cache (the default pipeline fuses its attention into
   ``GroupQueryAttention``) said "no group to prune in the graph: it prunes fused Attention/MultiHeadAttention
   (com.microsoft) nodes, as fuse-attention writes them": fuse-attention had fused them, and the real reason is
   the cache, whose head count is a dim of the model's past/present inputs and outputs. Each such op is now
   named as left whole for that reason.

Found and not fixed (an xfail below, not strict: which ties flip may vary with the thread count): on a decoder
quantized by ONNX Runtime's ``quantize_dynamic`` (``DynamicQuantizeLinear`` + ``MatMulInteger``), an exact
fusion whose float result moves an activation by one ulp flips the per-tensor int8 rounding downstream, and the
flip cascades: ``fuse-group-query-attention`` on the Llama KV fixture so quantized is rolled back at 0.0126 on
the logits, though the fused model is exactly as far from the float export as the quantized original (RMS
0.004854 against 0.004855 on a 257-token step over a 257-token cache). README's check for kernels that round
their inputs covers ``MatMulNBits`` at accuracy_level 4 only.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import AccuracyBudget
from optimizer.api import optimize_with_report
from passes.fusion.attention import AttentionFusion
from passes.fusion.packed_attention import PackedAttentionFusion
from passes.pruning.heads import HeadPruningPass
from tests.helpers import FIXTURES, assert_same_outputs, op_types, run
from tests.passes.fusion._attention_graphs import attention_model, model_inputs
from tests.passes.pruning.twins import assert_matches_twin

_B, _S, _D, _HEADS = 2, 5, 32, 4


def _packed_attention(sizes: list[int] | None) -> ir.Model:
    """x → Attention (packed [D, 3D] weight and bias, ``qkv_hidden_sizes`` = ``sizes`` when given) → o_proj."""
    rng = np.random.default_rng(0)
    attributes = {"num_heads": _HEADS}
    if sizes is not None:
        attributes["qkv_hidden_sizes"] = sizes
    nodes = [
        helper.make_node("Attention", ["x", "Wqkv", "bqkv"], ["o"], domain="com.microsoft", name="attn", **attributes),
        helper.make_node("MatMul", ["o", "Wo"], ["y"], name="o_proj"),
    ]
    initializers = [
        numpy_helper.from_array((rng.normal(size=(_D, 3 * _D)) * 0.3).astype(np.float32), "Wqkv"),
        numpy_helper.from_array((rng.normal(size=3 * _D) * 0.1).astype(np.float32), "bqkv"),
        numpy_helper.from_array((rng.normal(size=(_D, _D)) * 0.3).astype(np.float32), "Wo"),
    ]
    graph = helper.make_graph(
        nodes,
        "packed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", _S, _D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", _S, _D])],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return ir.from_proto(helper.make_model(graph, opset_imports=opsets, ir_version=8))


def _samples() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).normal(size=(16, _S, _D)).astype(np.float32)}


def test_equal_qkv_hidden_sizes_do_not_stop_head_pruning_and_are_cut_with_the_heads():
    model = _packed_attention([_D, _D, _D])
    result = HeadPruningPass(0.25, samples=_samples(), budget=AccuracyBudget(min_cosine=0.2))(model)
    assert result.modified, result.refusals
    attention = model.graph.node("attn")
    assert attention.attributes.get_int("num_heads") == 3
    assert list(attention.attributes.get_ints("qkv_hidden_sizes")) == [24, 24, 24]
    assert attention.inputs[1].const_value.shape == (_D, 72)
    assert_matches_twin(result, _samples())
    run(result.model, {"x": _samples()["x"][:_B]})  # ONNX Runtime accepts the cut attribute


def test_qkv_hidden_sizes_of_different_widths_still_stop_head_pruning():
    model = _packed_attention([24, 24, 48])  # the same 3 * 32 weight columns, split otherwise
    result = HeadPruningPass(0.25, samples=_samples(), budget=AccuracyBudget(min_cosine=0.2))(model)
    assert not result.modified
    assert any("of different widths" in refusal for refusal in result.refusals), result.refusals


def _conv1d_as_matmul_and_add() -> ir.Model:
    """The GPT-2 Conv1D attention block with its ``Reshape → Gemm → Reshape`` spelled ``MatMul`` + ``Add``."""
    proto = ir.to_proto(attention_model(projection="conv1d", mask="causal"))
    gone = {"x_flat", "qkv_flat", "x_shape", "x_lead", "qkv_shape", "qkv"}
    kept = [node for node in proto.graph.node if not gone & set(node.output)]
    split = next(index for index, node in enumerate(kept) if node.op_type == "Split")
    kept[split:split] = [
        helper.make_node("MatMul", ["x", "w_qkv"], ["qkv_product"], name="FullyConnect_MatMul_0"),
        helper.make_node("Add", ["qkv_product", "b_qkv"], ["qkv"], name="FullyConnect_Add_0"),
    ]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return ir.from_proto(proto)


def test_a_split_of_one_matmul_and_add_projection_is_packed():
    model = _conv1d_as_matmul_and_add()
    fused = AttentionFusion()(model.clone()).model
    packing = PackedAttentionFusion()
    after = packing(fused).model
    assert packing.fused_count == 1, packing.refusals
    (attention,) = [n for n in after.graph if n.op_type == "Attention"]
    assert attention.inputs[0].name == "x"
    assert not {"MultiHeadAttention", "Split", "MatMul"} & set(op_types(after))
    assert_same_outputs(model, after, model_inputs(model), rtol=1e-4, atol=1e-5)


def test_head_pruning_names_group_query_attention_over_a_cache_as_left_whole_for_the_cache():
    past = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2, "past", 8]) for n in ("pk", "pv")]
    present = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "kk", "vv")]
    gqa = helper.make_node(
        "GroupQueryAttention",
        ["q", "k", "v", "pk", "pv", "seqlens", "total"],
        ["y", "kk", "vv"],
        domain="com.microsoft",
        name="gqa",
        num_heads=4,
        kv_num_heads=2,
    )
    inputs = [
        helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", "seq", 32]),
        helper.make_tensor_value_info("k", TensorProto.FLOAT, ["batch", "seq", 16]),
        helper.make_tensor_value_info("v", TensorProto.FLOAT, ["batch", "seq", 16]),
        *past,
        helper.make_tensor_value_info("seqlens", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total", TensorProto.INT32, []),
    ]
    graph = helper.make_graph([gqa], "cached", inputs, present)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = ir.from_proto(helper.make_model(graph, opset_imports=opsets, ir_version=8))
    result = HeadPruningPass(0.5)(model)
    assert not result.modified
    assert any(r.startswith("gqa left whole: GroupQueryAttention over a key/value cache") for r in result.refusals), (
        result.refusals
    )
    assert not any("as fuse-attention writes them" in note for note in result.notes), result.notes


@pytest.mark.xfail(strict=False, reason="exact fusions on a quantize_dynamic model: int8 rounding flips cascade")
def test_group_query_attention_fuses_on_a_decoder_quantized_by_onnxruntime_dynamic(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(FIXTURES / "llama_kv_legacy.onnx", tmp_path / "int8.onnx")
    _, report = optimize_with_report(ir.load(tmp_path / "int8.onnx"))
    (record,) = [p for p in report.passes if p.name == "fuse-group-query-attention"]
    assert record.status == "applied", record.detail

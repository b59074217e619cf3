"""Review s64 (inputs another tool optimized first, and graphopt run on its own output): what was found.

1. ONNX Runtime's transpose optimizer, which runs at ``ORT_ENABLE_BASIC`` (a session saved with
   ``optimized_model_filepath``, and ``onnxruntime.quantization.quant_pre_process`` by default), writes
   ``Shape(Transpose(x, perm))`` as ``Gather(Shape(x), perm)``. simplify-shapes sized only a ``Gather`` or ``Slice``
   read straight from a ``Shape``, so a Llama's rotary split point ``Shape(q)[3] / 2`` stayed computed: its rotary
   embeddings were left unfused ("not a full, non-interleaved rotate_half") and its attentions unpacked, 173 nodes
   out of graphopt where the same model before ORT gives 85. A permuted shape is now read through.
2. A model saved at ``ORT_ENABLE_EXTENDED`` holds ``com.microsoft`` ``FusedMatMul`` (the attention scores'
   ``Q·Kᵀ/√d``), for which ONNX Runtime's symbolic shape inference has no handler: it stopped there, no Reshape
   target after the first attention was proven, and a BERT so saved came out at 124 nodes with its attentions
   unpacked (43 from the export). simplify-shapes' inference now sizes FusedMatMul (transA/transB; the
   batch-transposing forms stay unknown).

Found and not fixed (a strict xfail below): a decoder with a cache that ONNX Runtime's ``quantize_dynamic`` made int8
(``DynamicQuantizeLinear`` quantizes a whole activation with one scale) mixes the values at padded positions into
every real token's. A fused attention returns other values than the exporter's uniform softmax where a query sees
no key (a left-padded row of a prefill: "undefined", and not compared), which moves that scale and every real
token's logits by about 0.015 on the GPT-2 KV fixture, as much as the quantization itself moves them from the
float model. The encoder's ``fuse-attention`` is rolled back for exactly this (its second binding pads a row's
start), but no verification set of a decoder with a cache was a padded prefill (the prefill set was the first set's
one unpadded row; the padded sets all hold a past), so the decoder's ``fuse-attention`` was reported applied at
max |Δ| 0. A padded prefill of two rows is verified since (review s64, llmacc) and the fusion is still applied on
this fixture: the xfail stands.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer
from passes.shape_simplification import ShapeSimplificationPass
from tests.helpers import FIXTURES, assert_same_outputs


def _saved_by_onnxruntime(source: str, level: ort.GraphOptimizationLevel, folder) -> str:
    """The fixture ``source`` as ONNX Runtime's CPU session saves it optimized at ``level``."""
    path = str(folder / f"{source}.ort{int(level)}.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = level
    options.optimized_model_filepath = path
    ort.InferenceSession(str(FIXTURES / f"{source}.onnx"), options, providers=["CPUExecutionProvider"])
    return path


def _deployed(path_or_model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    model = path_or_model if isinstance(path_or_model, str) else ir.to_proto(path_or_model).SerializeToString()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


# 1. A shape read through ONNX Runtime's permutation.


def _permuted_shape_read() -> ir.Model:
    """``x[..., :Shape(x)[perm][3] // 2]`` where ``Shape(x)[perm]`` is ``Gather(Shape(x), [0, 2, 1, 3])``: ONNX
    Runtime's transpose optimizer's spelling of ``Shape(Transpose(x, [0, 2, 1, 3]))[3] // 2``, the rotary split."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "perm"], ["permuted"], axis=0),
        helper.make_node("Gather", ["permuted", "three"], ["head"], axis=0),
        helper.make_node("Div", ["head", "two"], ["half"]),
        helper.make_node("Unsqueeze", ["half", "zero"], ["end"]),
        helper.make_node("Slice", ["x", "zero", "end", "axis"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0, 2, 1, 3], np.int64), "perm"),
        numpy_helper.from_array(np.array(3, np.int64), "three"),
        numpy_helper.from_array(np.array(2, np.int64), "two"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([3], np.int64), "axis"),
    ]
    graph = helper.make_graph(
        nodes,
        "permuted_shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 4, 8])],
        initializers,
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_dim_read_from_a_permuted_shape_is_sized():
    model = _permuted_shape_read()
    before = ir.from_proto(ir.to_proto(model))
    result = ShapeSimplificationPass()(model)
    assert result.modified
    assert not [node.op_type for node in model.graph if node.op_type in ("Shape", "Gather", "Div")]
    inputs = {"x": np.random.default_rng(0).normal(size=(2, 5, 4, 16)).astype(np.float32)}
    assert_same_outputs(before, model, inputs)


def test_a_dim_read_outside_a_permuted_shape_is_left_computed():
    # The permutation's index 7 is past the rank: ONNX Runtime refuses the original; nothing is sized from it.
    model = _permuted_shape_read()
    proto = ir.to_proto(model)
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array([0, 2, 1, 7], np.int64), "perm"))
    model = ir.from_proto(proto)
    ShapeSimplificationPass()(model)
    assert "Shape" in [node.op_type for node in model.graph]


def test_llama_saved_by_onnxruntime_at_basic_level_gets_its_rotary_embeddings_fused(tmp_path):
    saved = _saved_by_onnxruntime("llama_legacy", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, tmp_path)
    assert any(
        node.op_type == "Gather" and "transpose_optimizer" in "".join(node.input)
        for node in onnx.load(saved).graph.node
    )
    result = optimizer.optimize(ir.load(saved), passes=["fold-constants", "simplify-shapes", "fuse-rotary-embedding"])
    assert Counter(node.op_type for node in result.graph)["RotaryEmbedding"] == 4
    rng = np.random.default_rng(3)
    feeds = {"input_ids": rng.integers(0, 1000, (2, 11)), "attention_mask": np.ones((2, 11), np.int64)}
    expected, actual = _deployed(saved, feeds), _deployed(result, feeds)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


# 2. FusedMatMul in symbolic shape inference.


def _scores_reshaped_after_fused_matmul() -> ir.Model:
    """``Reshape(Softmax(FusedMatMul(q, k, transB=1, alpha=0.25)), [Shape(q)[0], Shape(q)[1], Shape(k)[1]])``: a
    Reshape target after ONNX Runtime's FusedMatMul, each element the data's own dim."""
    nodes = [
        helper.make_node("FusedMatMul", ["q", "k"], ["scores"], domain="com.microsoft", transB=1, alpha=0.25),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("Shape", ["q"], ["q_shape"]),
        helper.make_node("Shape", ["k"], ["k_shape"]),
        helper.make_node("Gather", ["q_shape", "zero"], ["b"], axis=0),
        helper.make_node("Gather", ["q_shape", "one"], ["s"], axis=0),
        helper.make_node("Gather", ["k_shape", "one"], ["t"], axis=0),
        helper.make_node("Concat", ["b", "s", "t"], ["target"], axis=0),
        helper.make_node("Reshape", ["probs", "target"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    graph = helper.make_graph(
        nodes,
        "fused_matmul",
        [
            helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", "sequence", 16]),
            helper.make_tensor_value_info("k", TensorProto.FLOAT, ["batch", "total", 16]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", "total"])],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return ir.from_proto(helper.make_model(graph, opset_imports=opsets))


def test_a_reshape_target_after_a_fused_matmul_is_proven():
    model = _scores_reshaped_after_fused_matmul()
    before = ir.from_proto(ir.to_proto(model))
    result = ShapeSimplificationPass()(model)
    assert result.modified, result.refusals
    reshape = next(node for node in model.graph if node.op_type == "Reshape")
    assert reshape.inputs[1].const_value is not None
    assert "Shape" not in [node.op_type for node in model.graph]
    rng = np.random.default_rng(0)
    inputs = {
        "q": rng.normal(size=(2, 5, 16)).astype(np.float32),
        "k": rng.normal(size=(2, 7, 16)).astype(np.float32),
    }
    assert_same_outputs(before, model, inputs)


def test_bert_saved_by_onnxruntime_at_extended_level_gets_packed_attention(tmp_path):
    saved = _saved_by_onnxruntime("bert_legacy", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, tmp_path)
    assert "FusedMatMul" in {node.op_type for node in onnx.load(saved).graph.node}
    result = optimizer.optimize(ir.load(saved))
    ops = Counter(node.op_type for node in result.graph)
    assert ops["Attention"] == 2, ops
    assert len(result.graph) < 60
    rng = np.random.default_rng(4)
    mask = np.ones((3, 9), np.int64)
    mask[1, 6:] = 0
    feeds = {
        "input_ids": rng.integers(0, 1000, (3, 9)),
        "attention_mask": mask,
        "token_type_ids": np.zeros((3, 9), np.int64),
    }
    expected, actual = _deployed(saved, feeds), _deployed(result, feeds)
    valid = mask.astype(bool)
    np.testing.assert_allclose(
        actual["last_hidden_state"][valid], expected["last_hidden_state"][valid], rtol=1e-4, atol=1e-5
    )


# 3. Not fixed: a dynamically quantized decoder's fused attention verified without a padded prefill.


@pytest.mark.xfail(
    strict=True,
    reason="values at padded positions, which differ after the fusion, reach every real token through "
    "DynamicQuantizeLinear's one scale; the padded prefill verification holds since review s64 (llmacc) does not "
    "catch it on this fixture (review s64)",
)
def test_fused_attention_of_a_dynamically_quantized_decoder_keeps_a_padded_prefill(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    quantized = str(tmp_path / "gpt2_kv_int8.onnx")
    quantize_dynamic(str(FIXTURES / "gpt2_kv_legacy.onnx"), quantized)
    passes = ["fold-constants", "simplify-ops", "simplify-shapes", "merge-subexpressions", "fuse-attention"]
    result, report = optimizer.optimize_with_report(ir.load(quantized), passes=passes)
    assert next(p for p in report.passes if p.name == "fuse-attention").status == "applied"
    assert "MultiHeadAttention" in {node.op_type for node in result.graph}
    # A batch of two prompts, the second left-padded by 13 of 40 tokens, with every cache empty: the first step
    # of a batched generation.
    rng = np.random.default_rng(5)
    mask = np.ones((2, 40), np.int64)
    mask[1, :13] = 0
    feeds = {
        "input_ids": rng.integers(0, 256, (2, 40)),
        "attention_mask": mask,
        "position_ids": np.clip(np.cumsum(mask, -1) - 1, 0, None),
    }
    for index in range(2):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{index}.{kind}"] = np.zeros((2, 4, 0, 16), np.float32)
    expected, actual = _deployed(quantized, feeds), _deployed(result, feeds)
    real = mask.astype(bool)
    difference = np.abs(actual["logits"][real] - expected["logits"][real]).max()
    assert difference <= 1e-4, f"real tokens' logits moved by {difference:.3g}"

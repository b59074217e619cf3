"""Late hostile review (s72, late1) of e760d62: the quantizers' Gemm rewrite (``canonical_gemms``) and float16 int4.

Findings:
1. A wrong Gemm rewrite shipped as verified. ``QuantizationPass.call`` writes a Gemm out (``canonical_gemms``) before
   it finds layers, and the twin is built from that rewritten model, but the twin named no ``source``: the pipeline
   took it for a twin of the input itself. A rewrite computing something else (alpha folded in twice: 0.48 off on a
   Tanh output) was in the result and in its twin alike, so the twin check and the layer probe passed it, and the
   accuracy budget did too: "applied" under every quantizer. Fixed: the twin names the rewritten model as its
   ``source`` (``QuantizationPass._twin_source``), which the pipeline holds to the input as an exact rewrite, as it
   holds SmoothQuant's rescaling.
2. A ``Gemm`` whose result is a model output (a classifier or LM head) was quantized without ``--quantize-outputs``
   where its alpha sits on a weight other nodes read: the ``Mul`` by alpha written after it hid that its result is
   the output. Fixed: ``passes._layers.feeds_graph_output`` looks through a ``Mul`` by one constant value.
3. A float16 ``MatMul`` + ``Add`` of a float16 ``[N]`` bias (how a half model's linear layer is exported) kept its
   ``Add`` beside the float16 ``MatMulNBits``, one more kernel per layer: ``passes._layers.bias_add`` took float32
   biases only (a float16 ``Gemm``'s C was folded). Fixed: a float16 layer's float16 bias is folded.
4. An ``--exclude`` glob that matches only the nodes the rewrite wrote (``Transpose``, ``gemm_*``) got no "matches no
   node name or op type" note: the patterns were matched against the rewritten graph. Fixed: against the graph as
   given.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import passes._layers as layers
from optimizer.api import optimize_with_report

K, N, M = 64, 32, 4


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "late1", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _weight(dtype=np.float32, shape=(K, N)) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(shape) / 8).astype(dtype)


def _feeds(shape, dtype=np.float32, count=2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal(shape).astype(dtype)} for _ in range(count)]


def _record(report, quantize: str):
    return next(record for record in report.passes if record.name == f"quantize-{quantize}")


def _alpha_gemm(dtype=np.float32) -> onnx.ModelProto:
    """``Tanh(Gemm(x, W, c, alpha=0.5))``, in float32 or float16."""
    element = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    nodes = [
        helper.make_node("Gemm", ["x", "w", "c"], ["m"], name="gemm", alpha=0.5),
        helper.make_node("Tanh", ["m"], ["y"], name="act"),
    ]
    c = np.random.default_rng(2).standard_normal(N).astype(dtype)
    initializers = [numpy_helper.from_array(_weight(dtype), "w"), numpy_helper.from_array(c, "c")]
    x = helper.make_tensor_value_info("x", element, ["B", K])
    y = helper.make_tensor_value_info("y", element, ["B", N])
    return _model(nodes, [x], [y], initializers)


# -- 1. a wrong Gemm rewrite is rolled back ------------------------------------------------------------------------


@pytest.mark.parametrize(("quantize", "dtype"), [("int4", np.float32), ("dynamic", np.float32), ("int4", np.float16)])
def test_a_wrong_gemm_rewrite_is_rolled_back(monkeypatch, quantize, dtype):
    """alpha folded in twice: the result and its twin both compute 0.25 · x @ W + c where the input computes half."""
    rewrite = layers._rewrite_gemm

    def twice(graph, node, weight, trans_a, alpha, beta, c, taken):
        return rewrite(graph, node, weight, trans_a, alpha * alpha, beta, c, taken)

    monkeypatch.setattr(layers, "_rewrite_gemm", twice)
    _, report = optimize_with_report(
        _alpha_gemm(dtype), quantize=quantize, calibration=_feeds((3, K), dtype), quantize_outputs=True
    )
    record = _record(report, quantize)
    assert record.status == "rolled back", (record.status, record.detail)
    assert "does not compute what the input does" in record.detail, record.detail


def test_a_right_gemm_rewrite_is_verified_as_the_twin_s_source():
    _, report = optimize_with_report(_alpha_gemm(), quantize="int4", calibration=_feeds((3, K)), quantize_outputs=True)
    record = _record(report, "int4")
    assert record.status == "applied", (record.status, record.detail)
    assert "the input (1 Gemm rewritten into the kernels' form" in record.twin, record.twin


# -- 2. a head behind the Mul of its alpha is a model output ---------------------------------------------------------


@pytest.mark.parametrize("quantize", ["int4", "dynamic"])
def test_a_head_whose_alpha_is_written_after_it_stays_float(quantize):
    """The head shares its weight with a body MatMul, so its alpha is a Mul after it; its result is still the output."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="body"),
        helper.make_node("Tanh", ["h"], ["t"], name="act"),
        helper.make_node("Gemm", ["x", "w"], ["y"], name="head", alpha=0.5),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", N]) for name in ("y", "t")]
    model = _model(nodes, [x], outputs, [numpy_helper.from_array(_weight(), "w")])
    result, report = optimize_with_report(model, quantize=quantize, calibration=_feeds((3, K)))
    record = _record(report, quantize)
    assert any("head" == node.name and node.op_type == "Gemm" for node in result.graph.node), record.status
    assert any("its result is a model output" in refusal for refusal in record.refusals), record.refusals


# -- 3. a float16 bias Add is folded into the float16 MatMulNBits ----------------------------------------------------


def test_a_float16_bias_add_is_folded_into_the_float16_matmul_nbits():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="layer"),
        helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
        helper.make_node("Relu", ["a"], ["y"], name="act"),
    ]
    b = np.random.default_rng(3).standard_normal(N).astype(np.float16)
    initializers = [numpy_helper.from_array(_weight(np.float16), "w"), numpy_helper.from_array(b, "b")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["B", K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["B", N])
    model = _model(nodes, [x], [y], initializers)
    feeds = _feeds((3, K), np.float16)
    result, report = optimize_with_report(model, quantize="int4", calibration=feeds, quantize_outputs=True)
    record = _record(report, "int4")
    assert record.status == "applied", (record.status, record.detail)
    ops = Counter(node.op_type for node in result.graph.node)
    assert ops == {"MatMulNBits": 1, "Relu": 1}, ops
    kernel = next(node for node in result.graph.node if node.op_type == "MatMulNBits")
    bias = next(init for init in result.graph.initializer if init.name == kernel.input[-1])
    assert bias.data_type == TensorProto.FLOAT16 and list(bias.dims) == [N]
    np.testing.assert_array_equal(numpy_helper.to_array(bias), b)


# -- 4. --exclude globs are matched against the graph as given ---------------------------------------------------------


def test_an_exclude_pattern_matching_only_the_rewrite_s_own_nodes_is_noted():
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["m"], name="gemm", transA=1),
        helper.make_node("Tanh", ["m"], ["y"], name="act"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [K, M])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])
    model = _model(nodes, [x], [y], [numpy_helper.from_array(_weight(), "w")])
    _, report = optimize_with_report(
        model, quantize="dynamic", calibration=_feeds((K, M)), quantize_outputs=True, exclude=["Transpose", "gemm_*"]
    )
    notes = " ".join(_record(report, "dynamic").notes)
    assert "--exclude 'Transpose' matches no node" in notes, notes
    assert "--exclude 'gemm_*' matches no node" in notes, notes

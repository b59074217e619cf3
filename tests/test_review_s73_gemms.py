"""Late hostile review (s73, gemms) of the quantizers' Gemm rewrite (``passes._layers.canonical_gemms``, e760d62 and
85267f2) and of the layers it feeds.

Findings:
1. A ``Gemm`` with ``beta`` 0 and a C holding an infinity (a mask's ``-inf``) lost every layer of the pass: ONNX
   Runtime (and ONNX's reference) skip C at beta 0, but the rewrite folded ``0 * C`` into a constant (NaN) or a
   ``Mul``, so the exact-rewrite check rolled the whole pass back under int4 and dynamic int8, and static int8
   failed with a ValueError. Fixed: at beta 0 the rewrite drops C.
2. Static int8 failed with "int8 weight of ...: its values and scales do not stand for the float weight" on any
   layer whose bias holds an infinity or NaN (a ``Gemm``'s C, a ``MatMul``'s bias ``Add``): ``_fit_bias`` raised the
   weight's scales to infinity to fit it into int32. Fixed: such entries raise no scale, and the bias stays float
   (``quantize_bias`` gives None), as it does for any bias that fits no int32.
2b. Below opset 11, where Gemm's C is a required input, the rewrite wrote a Gemm without C (a full ``[M, N]``, an
   ``[M, 1]`` or a computed C added after it; C at beta 0 with finding 1's fix): ONNX Runtime refused the rewritten
   model, and int4 and dynamic int8 rolled back every layer of the pass, ``--exclude``'d Gemm or not (static int8
   converts to opset 18 first). Fixed: there the Gemm reads a C of one 0 (``passes._layers._drop_c``).
2c. Gemms with ``transA`` reading one A (Q, K and V) each read a ``Transpose`` of their own: three passes over A,
   and int4 wrote three ``MatMulNBits`` where ``merge-matmul-nbits`` writes one over their columns (dynamic int8 three
   ``DynamicQuantizeLinear`` where it writes one). Fixed: they read one Transpose of A.
3. ``--prune-ffn`` passed over an FFN whose up projection is a ``Gemm`` with a C that is not one value per neuron (a
   full ``[M, N]``, a scalar) without a word: "no group to prune in the graph: it looks for ... up projections with
   constant weights", which they have. Fixed: the group is refused with why (``passes.pruning.ffn._c_refusal``).
4. A ``Gemm`` whose constant is its first operand (``Gemm(W, x, transA=1)``, the weight on the left) was refused as
   "weight is not a constant"; a ``MatMul`` so written says what is wrong. Fixed: the Gemm says so too.

Held (checked against ONNX Runtime on the original, no change): C of ``[1, 1]``, ``[M, 1]``, ``[M, N]`` and scalar;
alpha negative, 0, 1e-3 and not a power of two (float32 and float16); A and Y graph outputs; Y read inside an ``If``
branch; a transB weight two Gemms share (both float where one is excluded); partial quantization by the budget
(float32 and float16, the budget's cosine matching the measured one); GPTQ and outlier channels on a transA Gemm;
``--lowrank`` (refuses with a reason) and ``--prune-channels`` on such Gemms.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.runtime import run_model

K, N, M = 32, 16, 4


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "s73", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _weight(shape=(K, N)) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(shape) / 6).astype(np.float32)


def _feeds(shape=(M, K), count=2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def _record(report, quantize: str):
    return next(record for record in report.passes if record.name == f"quantize-{quantize}")


def _tanh_of(layer_nodes, initializers, *, x_shape=(M, K), y_shape=(M, N)) -> onnx.ModelProto:
    nodes = [*layer_nodes, helper.make_node("Tanh", ["m"], ["y"], name="act")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))
    return _model(nodes, [x], [y], initializers)


def _infinite_c(shape) -> np.ndarray:
    c = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    c.flat[0] = -np.inf
    return c


# -- 1. beta 0 beside a C holding an infinity ------------------------------------------------------------------------


@pytest.mark.parametrize(("quantize", "c_shape"), [("int4", (N,)), ("dynamic", (M, N)), ("static", (1, 1))])
def test_beta_zero_skips_a_c_holding_an_infinity_and_the_gemm_is_quantized(quantize, c_shape):
    model = _tanh_of(
        [helper.make_node("Gemm", ["x", "w", "c"], ["m"], name="gemm", beta=0.0)],
        [("w", _weight()), ("c", _infinite_c(c_shape))],
    )
    feeds = _feeds()
    result, report = optimize_with_report(model, quantize=quantize, calibration=feeds, quantize_outputs=True)
    record = _record(report, quantize)
    assert record.status == "applied", (record.status, record.detail)
    assert Counter(node.op_type for node in result.graph.node)["Tanh"] == 1
    for feed in feeds:
        expected = run_model(ir.from_proto(model), feed)["y"]
        got = run_model(ir.from_proto(result), feed)["y"]
        assert np.isfinite(expected).all() and np.isfinite(got).all()
        assert np.abs(got - expected).max() < 0.5


def test_beta_zero_on_a_gemm_kept_float_is_put_back_with_its_c():
    model = _tanh_of(
        [helper.make_node("Gemm", ["x", "w", "c"], ["m"], name="gemm", beta=0.0, alpha=0.5)],
        [("w", _weight()), ("c", _infinite_c((M, N)))],
    )
    result, report = optimize_with_report(model, quantize="dynamic", exclude=["gemm"], quantize_outputs=True)
    assert _record(report, "dynamic").status == "unchanged"
    gemm = next(node for node in result.graph.node if node.op_type == "Gemm")
    assert list(gemm.input) == ["x", "w", "c"]
    feed = _feeds(count=1)[0]
    expected = run_model(ir.from_proto(model), feed)["y"]
    np.testing.assert_array_equal(run_model(ir.from_proto(result), feed)["y"], expected)


# -- 2. static int8 beside a bias holding an infinity ----------------------------------------------------------------


@pytest.mark.parametrize("form", ["gemm", "matmul + add"])
def test_static_int8_keeps_an_infinite_bias_float_and_quantizes_the_weight(form):
    if form == "gemm":
        nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["m"], name="layer")]
    else:
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["p"], name="layer"),
            helper.make_node("Add", ["p", "c"], ["m"], name="bias"),
        ]
    model = _tanh_of(nodes, [("w", _weight()), ("c", _infinite_c((N,)))])
    feeds = _feeds()
    result, report = optimize_with_report(model, quantize="static", calibration=feeds, quantize_outputs=True)
    record = _record(report, "static")
    assert record.status == "applied", (record.status, record.detail)
    for feed in feeds:
        expected = run_model(ir.from_proto(model), feed)["y"]
        got = run_model(ir.from_proto(result), feed)["y"]
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))
        assert np.abs(got - expected).max() < 0.05


# -- 4. the weight on the left ---------------------------------------------------------------------------------------


def test_a_gemm_with_its_weight_on_the_left_says_so():
    model = _tanh_of(
        [helper.make_node("Gemm", ["w", "x"], ["m"], name="gemm", transA=1, transB=1)],
        [("w", _weight())],
        y_shape=(N, M),
    )
    _, report = optimize_with_report(model, quantize="dynamic", quantize_outputs=True)
    record = _record(report, "dynamic")
    assert record.status == "unchanged"
    assert any("its constant is the first operand" in refusal for refusal in record.refusals), record.refusals


# -- 2b. below opset 11, where Gemm requires C -----------------------------------------------------------------------


def _old_opset_model(gemm: dict, c_shape) -> onnx.ModelProto:
    """``MatMul(Tanh(Gemm(x, W, C)), V)`` at opset 10."""
    nodes = [
        helper.make_node("Gemm", ["x", "w", "c"], ["g"], name="gemm", **gemm),
        helper.make_node("Tanh", ["g"], ["t"], name="hidden"),
        helper.make_node("MatMul", ["t", "v"], ["m"], name="head"),
    ]
    c = np.random.default_rng(2).standard_normal(c_shape).astype(np.float32)
    model = _tanh_of(nodes, [("w", _weight()), ("c", c), ("v", _weight((N, N)))])
    model.opset_import[0].version = 10
    return model


@pytest.mark.parametrize(("quantize", "gemm", "c_shape"), [("dynamic", {}, (M, N)), ("int4", {"beta": 0.0}, (N,))])
def test_below_opset_11_a_gemm_whose_c_is_taken_off_reads_a_zero_c(quantize, gemm, c_shape):
    model = _old_opset_model(gemm, c_shape)
    feeds = _feeds()
    result, report = optimize_with_report(model, quantize=quantize, calibration=feeds, quantize_outputs=True)
    record = _record(report, quantize)
    assert record.status == "applied", (record.status, record.detail)
    kernel = {"dynamic": "DynamicQuantizeMatMul", "int4": "MatMulNBits"}[quantize]
    assert Counter(node.op_type for node in result.graph.node)[kernel] == 2
    for feed in feeds:
        expected = run_model(ir.from_proto(model), feed)["y"]
        assert np.abs(run_model(ir.from_proto(result), feed)["y"] - expected).max() < 0.5


def test_below_opset_11_a_gemm_kept_float_is_put_back_with_its_own_c():
    model = _old_opset_model({"alpha": 0.5}, (M, 1))
    result, report = optimize_with_report(model, quantize="dynamic", exclude=["gemm"], quantize_outputs=True)
    assert _record(report, "dynamic").status == "applied"
    gemm = next(node for node in result.graph.node if node.op_type == "Gemm")
    assert list(gemm.input) == ["x", "w", "c"]
    assert not any("zero_c" in init.name for init in result.graph.initializer)


# -- 2c. one Transpose of an A that several Gemms read ----------------------------------------------------------------


def _three_transposed_readers() -> onnx.ModelProto:
    """``Tanh((g0 + g1) * g2)``, each ``g_i = Gemm(Relu(x), W_i, transA=1)``."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="pre")]
    nodes += [helper.make_node("Gemm", ["a", f"w{i}"], [f"g{i}"], name=f"gemm{i}", transA=1) for i in range(3)]
    nodes += [
        helper.make_node("Add", ["g0", "g1"], ["s"], name="sum"),
        helper.make_node("Mul", ["s", "g2"], ["m"], name="gate"),
    ]
    rng = np.random.default_rng(4)
    weights = [(f"w{i}", (rng.standard_normal((K, N)) / 6).astype(np.float32)) for i in range(3)]
    return _tanh_of(nodes, weights, x_shape=(K, M))


@pytest.mark.parametrize("exclude", [[], ["gemm1"], ["gemm*"]])
def test_gemms_reading_one_a_transposed_read_one_transpose(exclude):
    model = _three_transposed_readers()
    feeds = _feeds((K, M))
    result, report = optimize_with_report(
        model, quantize="int4", calibration=feeds, quantize_outputs=True, exclude=exclude
    )
    assert _record(report, "int4").status == ("unchanged" if exclude == ["gemm*"] else "applied")
    ops = Counter(node.op_type for node in result.graph.node)
    float_gemms = {(): 0, ("gemm1",): 1, ("gemm*",): 3}[tuple(exclude)]
    assert ops["Gemm"] == float_gemms and ops["Transpose"] == (float_gemms < 3), ops
    if not exclude:
        assert ops["MatMulNBits"] == 1, ops  # merge-matmul-nbits: one kernel over their columns
    for feed in feeds:
        expected = run_model(ir.from_proto(model), feed)["y"]
        assert np.abs(run_model(ir.from_proto(result), feed)["y"] - expected).max() < 0.5


# -- 3. prune-ffn beside an up projection's C of another shape --------------------------------------------------------


@pytest.mark.parametrize("c_shape", [(M, N), (1, 1)])
def test_prune_ffn_says_why_an_up_projection_with_another_c_is_left_whole(c_shape):
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Relu", ["x"], ["h"], name="pre"),
        helper.make_node("Gemm", ["h", "up_w", "up_c"], ["u"], name="up", alpha=0.5, beta=2.0),
        helper.make_node("Relu", ["u"], ["a"], name="hidden"),
        helper.make_node("Gemm", ["a", "down_w"], ["m"], name="down"),
    ]
    initializers = [("up_w", _weight()), ("up_c", rng.standard_normal(c_shape).astype(np.float32))]
    initializers.append(("down_w", _weight((N, N))))
    model = _tanh_of(nodes, initializers)
    _, report = optimize_with_report(model, prune_ffn=0.5, calibration=_feeds(count=4))
    record = next(record for record in report.passes if record.name == "prune-ffn")
    assert record.status == "unchanged"
    reason = f"its C of shape {list(c_shape)}, not one value per neuron"
    assert any(reason in refusal for refusal in record.refusals), record.refusals

"""Hostile review (s72) of the quantizers' layer finder (``passes._layers``): ``Gemm`` forms and float16 layers.

Findings:
1. Every quantizer (dynamic int8, static int8, int4) left float a ``Gemm`` with ``transA`` = 1, ``alpha`` other than
   1, a ``beta`` on its C, or a C that is no bias of the output features (a full ``[M, N]``, an ``[M, 1]``, a computed
   C): "transA, alpha or beta is set", "bias of shape [M, N] is not one value per output feature", "bias is not a
   constant". Fixed: ``QuantizationPass.call`` first writes such a Gemm in a form the kernels take
   (``passes._layers.canonical_gemms``: a ``Transpose`` of A, alpha folded into the weight, or a ``Mul`` after where
   other nodes read the weight, beta folded into a constant C, any C that is no feature bias added after) and puts
   it back as written where it stays float (``restore_gemms``). Each result is the quantized ``MatMul`` (+ ``Add``)
   that computes the same, and ONNX Runtime gives it the same outputs.
2. A float16 layer (float16 activations and weights: a model exported in half, or after ``--fp16``) stayed float
   under ``--quantize int4`` ("input is not float32"), though ONNX Runtime 1.32's CPU ``MatMulNBits`` runs float16
   inputs with float16 scales, at accuracy_level 0 and 4 (its result is the float32 kernel's rounded to float16, on
   every element: measured). Fixed: ``find_layers(float16=True)`` takes it for int4 (``Layer.float16``; weight and
   bias as float32 copies), its scales rounded to float16 before the twin dequantizes with them, the kernel's scales
   and bias written float16, and the twin computing the layer in float32 between two Casts; the layer probe forgives
   one float16 step (``FLOAT16_PROBE_TOLERANCE``). A float16 layer under HQQ or outlier channels (block offsets and
   outlier columns are float32 MatMuls) is refused with that reason; int8 (``DynamicQuantizeMatMul``: float32 only)
   is no budget alternative for it.
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
from passes._layers import find_layers
from passes.quantization import int4
from passes.quantization.int4 import Int4QuantizationPass

K, N, M = 128, 64, 4
_KERNELS = {"int4": "MatMulNBits", "dynamic": "DynamicQuantizeMatMul", "static": "QuantizeLinear"}


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "review", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _weight() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((K, N)) / 12).astype(np.float32)


def _c(shape) -> np.ndarray:
    return np.random.default_rng(2).standard_normal(shape).astype(np.float32)


def _gemm(*, alpha=1.0, beta=1.0, trans_a=0, trans_b=0, c_shape=None, rows=M) -> onnx.ModelProto:
    """``Tanh(Gemm(x, W[, C]))`` on ``x`` of ``[rows, K]`` (``[K, rows]`` with transA)."""
    weight = _weight().T.copy() if trans_b else _weight()
    initializers = [numpy_helper.from_array(weight, "w")]
    inputs = ["x", "w"]
    if c_shape is not None:
        initializers.append(numpy_helper.from_array(_c(c_shape), "c"))
        inputs.append("c")
    attributes = dict(alpha=alpha, beta=beta, transA=trans_a, transB=trans_b)
    nodes = [
        helper.make_node("Gemm", inputs, ["m"], name="gemm", **attributes),
        helper.make_node("Tanh", ["m"], ["y"], name="act"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [K, rows] if trans_a else [rows, K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, N])
    return _model(nodes, [x], [y], initializers)


def _matmul_add(*, alpha=1.0, beta=1.0, trans_a=0, c_shape=None, rows=M) -> onnx.ModelProto:
    """What the Gemm computes written as the layer every quantizer took: ``Tanh(MatMul(x, alpha * W) + beta * C)``."""
    initializers = [numpy_helper.from_array((_weight() * np.float32(alpha)).astype(np.float32), "w")]
    nodes = []
    source = "x"
    if trans_a:
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0], name="t"))
        source = "xt"
    nodes.append(helper.make_node("MatMul", [source, "w"], ["m"], name="mm"))
    last = "m"
    if c_shape is not None:
        initializers.append(numpy_helper.from_array((_c(c_shape) * np.float32(beta)).astype(np.float32), "c"))
        nodes.append(helper.make_node("Add", ["m", "c"], ["mc"], name="bias"))
        last = "mc"
    nodes.append(helper.make_node("Tanh", [last], ["y"], name="act"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [K, rows] if trans_a else [rows, K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, N])
    return _model(nodes, [x], [y], initializers)


def _feeds(trans_a=0, rows=M, count=2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    shape = (K, rows) if trans_a else (rows, K)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def _quantized(model: onnx.ModelProto, quantize: str, feeds) -> tuple[onnx.ModelProto, object]:
    result, report = optimize_with_report(model, quantize=quantize, calibration=feeds, quantize_outputs=True)
    return result, next(record for record in report.passes if record.name == f"quantize-{quantize}")


def _outputs(model: onnx.ModelProto, feeds) -> np.ndarray:
    return run_model(ir.from_proto(model), feeds)["y"]


FORMS = {
    "full C [M, N]": dict(c_shape=(M, N)),
    "C [M, 1]": dict(c_shape=(M, 1)),
    "alpha 0.5": dict(alpha=0.5, c_shape=(N,)),
    "transA": dict(trans_a=1),
    "beta 2 on a full C": dict(beta=2.0, c_shape=(M, N)),
    "beta 0.5 on C [1, N], transB": dict(beta=0.5, c_shape=(1, N), trans_b=1),
    "all at once": dict(alpha=0.25, beta=-1.0, trans_a=1, trans_b=1, c_shape=(M, N)),
}


# int4 on every form; the int8 quantizers (whose Gemm path the rewrite feeds the same way) on three.
CASES = [(form, "int4") for form in FORMS] + [
    (form, quantize) for quantize in ("dynamic", "static") for form in ("full C [M, N]", "transA", "all at once")
]


@pytest.mark.parametrize(("form", "quantize"), CASES)
def test_a_gemm_in_any_form_is_quantized_as_the_matmul_and_add_it_computes(form, quantize):
    options = FORMS[form]
    feeds = _feeds(options.get("trans_a", 0))
    result, record = _quantized(_gemm(**options), quantize, feeds)
    assert record.status == "applied", (record.status, record.detail, record.refusals)
    ops = Counter(node.op_type for node in result.graph.node)
    assert ops[_KERNELS[quantize]] == 1, ops
    if quantize != "static":
        assert ops["Gemm"] == 0, ops
    # alpha a power of two: the same integer weights at scaled scales, so the very outputs of the MatMul form.
    reference, _ = _quantized(_matmul_add(**{k: v for k, v in options.items() if k != "trans_b"}), quantize, feeds)
    for feed in feeds:
        np.testing.assert_allclose(_outputs(result, feed), _outputs(reference, feed), atol=2e-5)
        float_output = _outputs(_gemm(**options), feed)
        assert np.abs(_outputs(result, feed) - float_output).max() < 0.5  # int4 on a Tanh; int8 far closer


@pytest.mark.parametrize("quantize", ["int4", "dynamic"])
def test_a_gemm_kept_float_is_put_back_as_it_was_written(quantize):
    """A Gemm --exclude keeps float keeps its one kernel: no Transpose, alpha and C where they were."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "c"], ["m"], name="gemm", alpha=0.5, transA=1),
        helper.make_node("Tanh", ["m"], ["t"], name="act"),
        helper.make_node("MatMul", ["t", "v"], ["m2"], name="mm"),
        helper.make_node("Tanh", ["m2"], ["y"], name="out"),
    ]
    weights = [("w", _weight()), ("v", (rng.standard_normal((N, N)) / 8).astype(np.float32)), ("c", _c((M, N)))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [K, M])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])
    model = _model(nodes, [x], [y], [numpy_helper.from_array(array, name) for name, array in weights])
    result, report = optimize_with_report(model, quantize=quantize, exclude=["gemm"])
    record = next(record for record in report.passes if record.name == f"quantize-{quantize}")
    assert record.status == "applied", (record.detail, record.refusals)
    gemm = next(node for node in result.graph.node if node.op_type == "Gemm")
    assert list(gemm.input) == ["x", "w", "c"] and list(gemm.output) == ["m"]
    assert {a.name: helper.get_attribute_value(a) for a in gemm.attribute} == {"alpha": 0.5, "transA": 1}
    assert Counter(node.op_type for node in result.graph.node)["Transpose"] == 0
    feed = {"x": rng.standard_normal((K, M)).astype(np.float32)}
    assert np.abs(_outputs(result, feed) - _outputs(model, feed)).max() < 0.5  # the MatMul after it is int4


def test_a_pass_that_quantizes_nothing_leaves_the_gemm_as_it_was():
    model = ir.from_proto(_gemm(alpha=0.5, trans_a=1, c_shape=(M, N)))
    before = ir.to_proto(model).SerializeToString()
    result = Int4QuantizationPass(exclude=["gemm"], quantize_outputs=True)(model)
    assert not result.modified
    assert ir.to_proto(result.model).SerializeToString() == before


def test_alpha_on_a_weight_other_nodes_read_is_a_mul_after_and_the_weight_stored_once():
    """Two Gemms share a weight at different alphas: folding alpha would write two copies; a Mul after each keeps
    one."""
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["a"], name="first", alpha=0.5),
        helper.make_node("Gemm", ["x", "w"], ["b"], name="second", alpha=2.0),
        helper.make_node("Add", ["a", "b"], ["s"], name="join"),
        helper.make_node("Tanh", ["s"], ["y"], name="act"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", N])
    model = _model(nodes, [x], [y], [numpy_helper.from_array(_weight(), "w")])
    from passes._layers import canonical_gemms  # new in review s72

    graph = ir.from_proto(model).graph
    forms = canonical_gemms(graph)
    assert len(forms) == 2 and len(find_layers(graph, ("gemm",))[0]) == 2
    assert all(node.inputs[1].name == "w" for node in graph if node.op_type == "Gemm")
    assert Counter(node.op_type for node in graph)["Mul"] == 2
    result, record = _quantized(model, "int4", _feeds())
    assert record.status == "applied", (record.detail, record.refusals)
    assert sum(init.name.endswith("weight_int4") for init in result.graph.initializer) == 1


def test_a_computed_c_scaled_by_beta_is_added_after():
    """C that a node computes (a residual) with beta 2: ``Mul(C, beta)`` added after the quantized product."""
    nodes = [
        helper.make_node("Relu", ["r"], ["c"], name="residual"),
        helper.make_node("Gemm", ["x", "w", "c"], ["m"], name="gemm", beta=2.0),
        helper.make_node("Tanh", ["m"], ["y"], name="act"),
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", width]) for name, width in (("x", K), ("r", N))
    ]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", N])
    model = _model(nodes, inputs, [y], [numpy_helper.from_array(_weight(), "w")])
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((5, K)).astype(np.float32), "r": rng.standard_normal((5, N)).astype(np.float32)}]
    result, record = _quantized(model, "dynamic", feeds)
    assert record.status == "applied", (record.detail, record.refusals)
    assert Counter(node.op_type for node in result.graph.node)["DynamicQuantizeMatMul"] == 1
    assert np.abs(_outputs(result, feeds[0]) - _outputs(model, feeds[0])).max() < 0.05


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("c_shape", [(N,), (1, N), (1,), "rows x 1", "rows x N"])
def test_every_c_broadcast_computes_what_the_gemm_did(c_shape, rows):
    """C of ``[N]``, ``[1, N]``, a scalar, ``[M, 1]`` and ``[M, N]``, at one row and at three (``[1, 1]`` and
    ``[1, N]`` at one row are both a row and a feature bias): the rewritten float Gemm computes the same."""
    shape = {"rows x 1": (rows, 1), "rows x N": (rows, N)}.get(c_shape, c_shape)
    model = _gemm(beta=0.5, alpha=2.0, c_shape=shape, rows=rows)
    from passes._layers import canonical_gemms, restore_gemms  # new in review s72

    graph = ir.from_proto(model).graph
    forms = canonical_gemms(graph)
    assert len(forms) == 1 and len(find_layers(graph, ("gemm",))[0]) == 1
    feed = _feeds(rows=rows, count=1)[0]
    rewritten = ir.Model(graph, ir_version=9)
    np.testing.assert_allclose(run_model(rewritten, feed)["y"], _outputs(model, feed), rtol=1e-5, atol=1e-6)
    assert restore_gemms(graph, forms) == 1
    restored = ir.to_proto(ir.Model(graph, ir_version=9))
    assert [n.op_type for n in restored.graph.node] == ["Gemm", "Tanh"]
    np.testing.assert_array_equal(_outputs(restored, feed), _outputs(model, feed))


# -- 2. float16 layers under int4 --------------------------------------------------------------------------------------


def _half(*, gemm: bool = False, cast_output: bool = False, dtype=np.float16) -> onnx.ModelProto:
    """``MatMul(Relu(layer(x)), V)`` in ``dtype``, the layer a ``MatMul`` or a ``Gemm`` (transB, a ``[N]`` C);
    with ``cast_output`` the result cast to float32 (a half model with a float32 interface)."""
    rng = np.random.default_rng(0)
    element = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    weight = (rng.standard_normal((K, N)) / 12).astype(np.float16).astype(dtype)
    second = (rng.standard_normal((N, N)) / 8).astype(np.float16).astype(dtype)
    initializers = [numpy_helper.from_array(second, "v")]
    if gemm:
        initializers += [
            numpy_helper.from_array(weight.T.copy(), "w"),
            numpy_helper.from_array(rng.standard_normal(N).astype(np.float16).astype(dtype), "b"),
        ]
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["m"], name="layer", transB=1)]
    else:
        initializers.append(numpy_helper.from_array(weight, "w"))
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="layer")]
    nodes += [
        helper.make_node("Relu", ["m"], ["r"], name="act"),
        helper.make_node("MatMul", ["r", "v"], ["h" if cast_output else "y"], name="head"),
    ]
    out = element
    if cast_output:
        nodes.append(helper.make_node("Cast", ["h"], ["y"], name="out", to=TensorProto.FLOAT))
        out = TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", element, ["B", K])
    y = helper.make_tensor_value_info("y", out, ["B", N])
    return _model(nodes, [x], [y], initializers)


def _half_feeds(dtype=np.float16, rows: int = 5) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((rows, K)).astype(np.float16).astype(dtype)} for _ in range(2)]


@pytest.mark.parametrize("form", ["matmul", "gemm", "float32 output"])
def test_a_float16_layer_is_quantized_into_a_float16_matmul_nbits(form):
    options = {"gemm": form == "gemm", "cast_output": form == "float32 output"}
    model = _half(**options)
    result, record = _quantized(model, "int4", _half_feeds())
    assert record.status == "applied", (record.detail, record.refusals)
    kernels = [node for node in result.graph.node if node.op_type == "MatMulNBits"]
    assert len(kernels) == 2 and not any(node.op_type == "Cast" and node.name != "out" for node in result.graph.node)
    initializers = {init.name: init for init in result.graph.initializer}
    for node in kernels:
        assert all(initializers[name].data_type == TensorProto.FLOAT16 for name in node.input[2:3])  # scales
    if form == "gemm":
        assert initializers[kernels[0].input[-1]].data_type == TensorProto.FLOAT16  # the bias
    # The same weights in float32, quantized so: the float16 result stays within float16's rounding of it.
    reference = Int4QuantizationPass(quantize_outputs=True)(ir.from_proto(_half(**options, dtype=np.float32))).model
    for half, single in zip(_half_feeds(), _half_feeds(np.float32)):
        got, expected = _outputs(result, half).astype(np.float32), run_model(reference, single)["y"]
        assert np.abs(got - expected).max() < 1e-2 * np.abs(expected).max()


@pytest.mark.parametrize("level", [0, 4])
def test_a_float16_layer_computes_what_its_twin_claims_at_either_accuracy_level(level):
    model = ir.from_proto(_half())
    result = Int4QuantizationPass(accuracy_level=level, quantize_outputs=True)(model)
    assert result.modified and not result.refusals
    feed = _half_feeds(rows=1)[0]
    got, claimed = run_model(result.model, feed)["y"], run_model(result.twin.model, feed)["y"]
    assert got.dtype == claimed.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), claimed.astype(np.float32), rtol=4e-3, atol=4e-3)


def test_a_float16_layer_with_scales_a_percent_off_is_rolled_back(monkeypatch):
    """The probe forgives one float16 step, not a wrong scale."""
    written = int4.add_initializer

    def scaled(graph, name, array):
        return written(graph, name, array * np.float16(1.01) if name.endswith(".scales") else array)

    monkeypatch.setattr(int4, "add_initializer", scaled)
    _, record = _quantized(_half(), "int4", _half_feeds())
    assert record.status == "rolled back", (record.status, record.detail)
    assert "other weights than its twin's" in record.detail


@pytest.mark.parametrize(
    ("options", "reason"),
    [({"int4_method": "hqq"}, "float zero points"), ({"int4_outlier_channels": 1}, "outlier channels")],
)
def test_a_float16_layer_without_a_float16_form_is_refused_with_why(options, reason):
    _, report = optimize_with_report(
        _half(), quantize="int4", quantize_outputs=True, calibration=_half_feeds(), **options
    )
    record = next(record for record in report.passes if record.name == "quantize-int4")
    assert record.status == "unchanged"
    assert any("a float16 layer" in refusal and reason in refusal for refusal in record.refusals), record.refusals


def test_int8_still_refuses_a_float16_layer():
    _, record = _quantized(_half(), "dynamic", _half_feeds())
    assert record.status == "unchanged"
    assert any("input is not float32" in refusal for refusal in record.refusals), record.refusals


def test_a_float16_gemm_in_another_form_is_quantized_too():
    """transA, alpha, beta and a full C on a float16 Gemm: written out in float16, then a float16 MatMulNBits."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((K, N)) / 12).astype(np.float16)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "c"], ["m"], name="gemm", alpha=0.25, beta=-1.0, transA=1),
        helper.make_node("Relu", ["m"], ["y"], name="act"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [K, M])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [M, N])
    c = rng.standard_normal((M, N)).astype(np.float16)
    model = _model(nodes, [x], [y], [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(c, "c")])
    feeds = [{"x": rng.standard_normal((K, M)).astype(np.float16)}]
    result, record = _quantized(model, "int4", feeds)
    assert record.status == "applied", (record.detail, record.refusals)
    ops = Counter(node.op_type for node in result.graph.node)
    assert ops["MatMulNBits"] == 1 and ops["Gemm"] == 0, ops
    expected = _outputs(model, feeds[0]).astype(np.float32)
    assert np.abs(_outputs(result, feeds[0]).astype(np.float32) - expected).max() < 0.1 * np.abs(expected).max()

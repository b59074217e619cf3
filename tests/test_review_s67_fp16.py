"""Review s67 (convert-float16: statistics past float16's range).

The converter keeps a blocked op float32 but casts its float32 result to float16 right after it, and back to float32
before the next blocked op. A decomposed norm's sum of squares (magika's jax ``LayerNorm``: ``ReduceSum(h * h)`` of
129,000) became infinite there, before the multiplication by ``1 / width`` that brings it back, and the pass was
rolled back: nothing converted. So did ``Pow(h, 2)`` of an ``h`` of 300 between the ``Pow`` and the ``ReduceMean``
(both kept), and a ``Mul(h, h)`` square, computed in float16."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.quantization._twin import float16_kernels
from passes.quantization.float16 import Float16Pass
from tests.real_models import MAGIKA


def _norm(square: str, reduce: str, gain: float, width: int = 500) -> onnx.ModelProto:
    """``h = x * gain``; ``h / Sqrt(Reduce(square(h)) [* 1/width] + eps)``: a jax norm (ReduceSum, then the mean) or
    torch's (ReduceMean), the square a ``Mul(h, h)`` or a ``Pow(h, 2)``."""
    initializers = [
        numpy_helper.from_array(np.array(gain, np.float32), "gain"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
        numpy_helper.from_array(np.array(1 / width, np.float32), "mean"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
    ]
    squared = helper.make_node("Mul", ["h", "h"], ["squares"]) if square == "mul" else (
        helper.make_node("Pow", ["h", "two"], ["squares"])
    )  # fmt: skip
    nodes = [helper.make_node("Mul", ["x", "gain"], ["h"]), squared]
    if reduce == "sum":
        nodes += [
            helper.make_node("ReduceSum", ["squares", "axis"], ["total"], keepdims=1),
            helper.make_node("Mul", ["total", "mean"], ["variance"]),
        ]
    else:
        nodes.append(helper.make_node("ReduceMean", ["squares"], ["variance"], axes=[1], keepdims=1))
    nodes += [
        helper.make_node("Add", ["variance", "eps"], ["shifted"]),
        helper.make_node("Sqrt", ["shifted"], ["scale"]),
        helper.make_node("Div", ["h", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto | ir.Model, feeds: dict) -> list[np.ndarray]:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _as_float16_kernels_compute(proto: onnx.ModelProto):
    result = Float16Pass()(ir.from_proto(proto))
    assert result.modified
    return result, float16_kernels(result.model)


@pytest.mark.parametrize(
    ("square", "reduce", "gain"),
    [("mul", "sum", 16.0), ("mul", "sum", 300.0), ("pow", "mean", 300.0), ("mul", "mean", 300.0)],
)
def test_a_norm_past_float16s_range_computes_its_statistics_in_float32(square, reduce, gain):
    # gain 16: the sum of squares is 128,000 (magika's 129,000); gain 300: each square is 90,000 and the mean too.
    model = _norm(square, reduce, gain)
    x = {"x": np.random.default_rng(1).standard_normal((4, 500)).astype(np.float32)}
    (expected,) = _run(model, x)
    result, deployed = _as_float16_kernels_compute(model)
    (got,) = _run(deployed, x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=0.02, rtol=0.01)


def test_the_activations_beside_the_statistics_stay_float16():
    """The near miss: only the per-row statistic is float32. ``h = x * gain`` and ``Div(h, scale)`` (activation-sized)
    compute in float16, as does a product of two values (``Mul(h, x)``, not a square) before a ``ReduceSum``, and the
    ``Div`` of a softmax by its sum."""
    model = _norm("mul", "sum", 2.0)
    graph = model.graph
    graph.node.extend(
        [
            helper.make_node("Mul", ["h", "x"], ["product"]),
            helper.make_node("ReduceSum", ["product", "axis"], ["dot"], keepdims=1),
            helper.make_node("Exp", ["y"], ["e"]),
            helper.make_node("ReduceSum", ["e", "axis"], ["e_sum"], keepdims=1),
            helper.make_node("Div", ["e", "e_sum"], ["p"]),
        ]
    )
    graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("dot", "p")])
    result = Float16Pass()(ir.from_proto(model)).model
    types = {value.name: value.dtype for node in result.graph for value in node.outputs}
    half, single = ir.DataType.FLOAT16, ir.DataType.FLOAT
    assert [types[name] for name in ("squares", "total", "variance", "shifted")] == [single] * 4  # the statistic
    assert [types[name] for name in ("h", "product", "e")] == [half] * 3  # the activations beside it
    divisions = [node.outputs[0].dtype for node in result.graph if node.op_type == "Div"]
    assert divisions == [half, half]  # Div(h, scale), and the softmax's division by its sum


def test_the_twin_keeps_the_constants_the_statistics_read_float32():
    # 1 / 500 is not a float16 number: the converter keeps it float32 for the kept Mul, and the twin must too.
    result = Float16Pass()(ir.from_proto(_norm("mul", "sum", 16.0)))
    twin = result.twin.model
    held = {name: value.const_value.numpy() for name, value in result.model.graph.initializers.items()}
    assert held["mean"].dtype == np.float32
    np.testing.assert_array_equal(twin.graph.initializers["mean"].const_value.numpy(), held["mean"])
    assert twin.graph.initializers["gain"].const_value.numpy() == np.float16(16.0)


@pytest.fixture(scope="module")
def magika_converted():
    return Float16Pass()(ir.load(MAGIKA))


def test_magika_converts_and_its_float16_kernels_agree_on_real_bytes(magika_converted):
    assert magika_converted.modified
    deployed = float16_kernels(magika_converted.model)
    text = list(b'"""A module."""\n\nimport numpy as np\n\n\ndef f(x):\n    return x * 2\n' * 20)
    png = list(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    rows = []
    for data in (text, png, list(bytes(2048))):
        begin = (data[:1024] + [256] * 1024)[:1024]
        end = ([256] * 1024 + data[-1024:])[-1024:]
        rows.append(begin + end)
    feeds = {"bytes": np.array(rows, np.int32)}
    (expected,) = _run(onnx.load(MAGIKA), feeds)
    (got,) = _run(deployed, feeds)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, atol=5e-3)


@pytest.mark.parametrize("square", ["pow", "mul"])
def test_its_own_result_with_a_float32_constant_of_a_kept_op_is_declined(square):
    # Pow's exponent 2 (and 1 / width, eps) are read by ops kept float32 alone: the converter keeps them float32, and
    # declared them float16. Converting its own result then raised onnx's "Inferred elem type differs" (a traceback
    # and a failed pass) where the pass promises to decline a model converted already.
    first = Float16Pass()(ir.from_proto(_norm(square, "mean" if square == "pow" else "sum", 2.0)))
    again = Float16Pass()(first.model)
    assert not again.modified
    assert any("already float16" in line for line in again.refusals)

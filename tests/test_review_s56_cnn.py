"""Review s56 (CNN path): onnxscript rules that wrote a model ONNX Runtime refuses or that computes otherwise.

Verification caught each, but by rolling back the whole pass: one such BatchNorm, ConvInteger or MatMul cost a
model every other rewrite of ``simplify-ops`` / ``fuse-matmul-add`` / ``fuse-matmul-transpose``. Each candidate
is now left alone with a readable near-miss reason, and the rest of the pass applies.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.matmul import FusedMatMulFusion, MatMulAddFusion
from passes.op_simplification import SimplifyOpsPass
from tests.helpers import assert_same_outputs, op_types, parse_model

_RNG = np.random.default_rng(0)


def _batchnorm_model(
    *, opset: int = 17, training: int = 0, stats=np.float32, shape=(4,), spatial: int | None = None
) -> ir.Model:
    """x * 1 (a no-op simplify-ops removes) into Conv(3 -> 4, 3x3) and a BatchNormalization."""
    weights = {
        "W": _RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "one": np.ones((), np.float32),
        "s": (_RNG.random(shape) + 0.5).astype(stats),
        "b": _RNG.standard_normal(shape).astype(stats),
        "mu": _RNG.standard_normal(shape).astype(stats),
        "var": (_RNG.random(shape) + 0.1).astype(stats),
    }
    attributes = {"training_mode": training} if opset >= 14 else {"spatial": spatial} if spatial is not None else {}
    outputs = ["y", "rm", "rv"] if training else ["y"]
    nodes = [
        helper.make_node("Mul", ["x", "one"], ["x1"]),
        helper.make_node("Conv", ["x1", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "mu", "var"], outputs, **attributes),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6, 6])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return ir.from_proto(model)


@pytest.mark.parametrize(
    "spec",
    [
        # Training mode normalizes by the batch's statistics: folding the running ones was off by 46.
        {"training": 1},
        # Opset 15 allows float16 statistics beside a float32 input: the fold computed them in float16 (0.018 off).
        {"stats": np.float16},
        # Opset 7's spatial=0 keeps one statistic per position: the fold raised a numpy broadcasting error.
        {"opset": 7, "spatial": 0, "shape": (4, 6, 6)},
    ],
)
def test_a_batchnorm_the_fold_cannot_compute_stays_and_the_rest_is_simplified(spec):
    model = _batchnorm_model(**spec)
    after = SimplifyOpsPass()(model.clone()).model
    assert op_types(after) == ["Conv", "BatchNormalization"]  # the no-op Mul went; the BatchNorm stayed
    assert_same_outputs(model, after, {"x": _RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)})


def test_an_inference_batchnorm_of_the_layers_type_still_folds():
    model = _batchnorm_model()
    after = SimplifyOpsPass()(model.clone()).model
    assert op_types(after) == ["Conv"]
    assert_same_outputs(model, after, {"x": _RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)}, atol=1e-5)


def _conv_integer_model(zero_point: int) -> ir.Model:
    return parse_model(f"""
        <ir_version: 8, opset_import: ["" : 13]>
        g (uint8[1, 3, 5, 5] x) => (int32[1, 2, 5, 5] y) {{
          pads = Constant<value = int64[8] {{0, 0, 1, 1, 0, 0, 1, 1}}>()
          w = Constant<value = int8[2, 3, 1, 1] {{1, -2, 3, -1, 2, -3}}>()
          zp = Constant<value = uint8 {{{zero_point}}}>()
          p = Pad(x, pads)
          y = ConvInteger(p, w, zp)
        }}""")


def test_a_pad_is_not_folded_into_a_conv_integer_that_pads_with_its_zero_point():
    # ConvInteger pads with x_zero_point: the folded Pad's 0s became 128s (verification rolled the pass back).
    model = _conv_integer_model(128)
    after = SimplifyOpsPass()(model.clone()).model
    assert "Pad" in op_types(after)
    assert_same_outputs(model, after, {"x": _RNG.integers(100, 160, (1, 3, 5, 5)).astype(np.uint8)}, atol=0)


def test_a_pad_still_folds_into_a_conv_integer_with_zero_point_0():
    model = _conv_integer_model(0)
    after = SimplifyOpsPass()(model.clone()).model
    assert "Pad" not in op_types(after)
    assert_same_outputs(model, after, {"x": _RNG.integers(100, 160, (1, 3, 5, 5)).astype(np.uint8)}, atol=0)


@pytest.mark.parametrize(
    ("a", "c", "dtype", "reason"),
    [
        ("[3, 4]", "[1, 3, 5]", "float", "more than 2 dims"),  # the Add's result is [1, 3, 5], a Gemm's [3, 5]
        ("[1, 4]", "[3, 5]", "float", "does not broadcast into [1, 5]"),  # rows added to a one-row product
        ("[3, 4]", "[5]", "int32", "INT32"),  # ONNX Runtime has no integer Gemm
    ],
)
def test_a_matmul_add_a_gemm_cannot_compute_is_left_with_its_reason(a, c, dtype, reason):
    model = parse_model(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g ({dtype}{a} a, {dtype}[4, 5] b, {dtype}{c} c, float[3, 4] p, float[4, 5] q, float[5] r)
            => ({dtype}[?, ?, ?] y, float[3, 5] z) {{
          m = MatMul(a, b)
          y = Add(m, c)
          n = MatMul(p, q)
          z = Add(n, r)
        }}""")
    fusion = MatMulAddFusion()
    result = fusion(model.clone())
    assert op_types(result.model) == ["MatMul", "Add", "Gemm"]  # the other MatMul + Add still fuses
    assert any(reason in note for note in result.refusals), result.refusals


def test_an_integer_matmul_is_not_fused_into_fused_matmul():
    model = parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (int32[2, 4, 3] a, int32[2, 4, 5] b, float[2, 4, 3] p, float[2, 4, 5] q)
            => (int32[2, 3, 5] y, float[2, 3, 5] z) {
          t = Transpose<perm = [0, 2, 1]>(a)
          y = MatMul(t, b)
          s = Transpose<perm = [0, 2, 1]>(p)
          z = MatMul(s, q)
        }""")
    result = FusedMatMulFusion()(model.clone())
    assert op_types(result.model) == ["Transpose", "MatMul", "FusedMatMul"]
    assert any("INT32" in note for note in result.refusals), result.refusals

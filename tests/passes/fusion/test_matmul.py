"""fuse-matmul-add and fuse-matmul-transpose: onnxscript's MatMul rule sets as passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from optimizer.inputs import make_inputs
from passes.fusion.matmul import FusedMatMulFusion, MatMulAddFusion
from tests.helpers import FIXTURES, assert_same_outputs, computed_op_types, parse_model


def test_2d_matmul_and_bias_become_gemm():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 4] x) => (float[N, 3] y) {
          w = Constant<value = float[4, 3] {1., 2., 3., 4., 5., 6., 7., 8., 9., 1., 2., 3.}>()
          b = Constant<value = float[3] {0.5, -0.5, 1.0}>()
          m = MatMul(x, w)
          y = Add(m, b)
        }""")
    after = MatMulAddFusion()(model.clone()).model
    assert computed_op_types(after) == ["Gemm"]
    assert_same_outputs(model, after, {"x": np.arange(8, dtype=np.float32).reshape(2, 4)})


def test_3d_matmul_is_left_alone():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[B, N, 4] x) => (float[B, N, 3] y) {
          w = Constant<value = float[4, 3] {1., 2., 3., 4., 5., 6., 7., 8., 9., 1., 2., 3.}>()
          b = Constant<value = float[3] {0.5, -0.5, 1.0}>()
          m = MatMul(x, w)
          y = Add(m, b)
        }""")
    assert not MatMulAddFusion()(model).modified


def test_transpose_and_scale_fold_into_fused_matmul():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[B, 3, 4] a, float[B, 5, 4] b) => (float[B, 3, 5] y) {
          two = Constant<value = float {2.0}>()
          bt = Transpose<perm = [0, 2, 1]>(b)
          m = MatMul(a, bt)
          y = Div(m, two)
        }""")
    after = FusedMatMulFusion()(model.clone()).model
    assert computed_op_types(after) == ["FusedMatMul"]
    rng = np.random.default_rng(0)
    feeds = {
        "a": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "b": rng.standard_normal((2, 5, 4)).astype(np.float32),
    }
    assert_same_outputs(model, after, feeds, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["bert_legacy", "gpt2_dynamo", "llama_legacy"])
def test_exported_graphs_stay_correct(name):
    # On these exports the rules find little or nothing: the exporters put a scale Mul
    # between the key Transpose and the MatMul, and GPT-2's Conv1D is already a Gemm.
    # ONNX Runtime's own load-time MatMul fusions see through that; these are opt-in.
    original = ir.load(FIXTURES / f"{name}.onnx")
    passes = [f"+{p}" for p in ("fuse-matmul-add", "fuse-matmul-transpose")]
    model = optimizer.optimize(original, passes)
    assert_same_outputs(original, model, make_inputs(original, {"batch": 2, "sequence": 9}), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("trans_a", "trans_b"), [(1, 0), (0, 1), (1, 1), (0, 0)])
def test_a_transposed_fused_matmul_keeps_its_product(trans_a, trans_b):
    # onnxscript's FusedMatMulTranspose flips each flag in place: Transpose(FusedMatMul(x, y, transA=1)) became
    # y x^T, not y^T x (a review; verification rolled the whole pass back).
    model = parse_model(
        f"""
        <ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[8, 8] x, float[8, 8] y) => (float[8, 8] z) {{
          p = com.microsoft.FusedMatMul<transA = {trans_a}, transB = {trans_b}>(x, y)
          z = Transpose<perm = [1, 0]>(p)
        }}"""
    )
    after = FusedMatMulFusion()(model.clone()).model
    assert computed_op_types(after) == ["FusedMatMul"]
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal((8, 8)).astype(np.float32) for name in ("x", "y")}
    assert_same_outputs(model, after, feeds, rtol=1e-5, atol=1e-5)

"""convert-float16: float16 weights and compute, sensitive reductions float32, I/O types kept."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes.quantization.float16 import Float16Pass
from tests.helpers import parse_model
from tests.passes.quantization.conftest import drift
from tests.passes.quantization.graphs import attention, samples

_DECOMPOSED_LAYER_NORM = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[B, 8] x) => (float[B, 8] y) {
      w = Constant<value = float[8, 8] {1., 0., 0., 0., 0., 0., 0., 1., 0., 1., 0., 0., 0., 0., 1., 0.,
        0., 0., 1., 0., 0., 1., 0., 0., 0., 0., 0., 1., 1., 0., 0., 0., 0., 0., 0., 1., 1., 0., 0., 0.,
        0., 0., 1., 0., 0., 1., 0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 1., 0., 0., 0., 0., 0., 0., 1.}>()
      two = Constant<value = float {2.0}>()
      eps = Constant<value = float {1e-5}>()
      axes = Constant<value = int64[1] {-1}>()
      h = MatMul(x, w)
      mean = ReduceMean<keepdims = 1>(h, axes)
      d = Sub(h, mean)
      sq = Pow(d, two)
      var = ReduceMean<keepdims = 1>(sq, axes)
      ve = Add(var, eps)
      sd = Sqrt(ve)
      y = Div(d, sd)
    }"""


def test_weights_become_float16_and_io_types_stay_float32():
    model = attention()
    converter = Float16Pass()
    after = converter(model.clone()).model
    assert after.graph.initializers["qkv"].const_value.dtype == ir.DataType.FLOAT16
    assert after.graph.inputs[0].dtype == ir.DataType.FLOAT and after.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert drift(model, after, samples(model, 2, S=5)).cosine > 0.9999


def test_normalization_reductions_stay_float32():
    model = parse_model(_DECOMPOSED_LAYER_NORM)
    after = Float16Pass()(model.clone()).model
    for node in after.graph:
        if node.op_type in ("ReduceMean", "Pow", "Sqrt"):
            assert node.outputs[0].dtype == ir.DataType.FLOAT, node.op_type
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32) * 100}
    assert drift(model, after, feeds).cosine > 0.9999


def test_io_types_can_become_float16():
    after = Float16Pass(keep_io_types=False)(attention()).model
    assert after.graph.inputs[0].dtype == ir.DataType.FLOAT16

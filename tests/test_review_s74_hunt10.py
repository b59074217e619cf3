"""Review s74, hunt 10: real models from PyPI (EfficientWord-Net's ResNet-50 hotword embedder, float32 and as shipped
already QDQ int8; captcha-recognizer's YOLO11 slider segmenter), each reproduced here on a tiny model of the same
structure.

Found: ``--quantize static`` on EfficientWord-Net's QDQ model, and ``--quantize dynamic`` on the slider segmenter whose
only ``MatMul`` are its attention's two activation products, quantized no layer and said why only at ``-v`` (the
table read "unchanged", and below it "-v shows 1 more line"); a pass that finds no layer at all said so without
``-v``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import make_inputs
from passes.quantization.dynamic import DynamicQuantizationPass
from passes.quantization.static import StaticQuantizationPass


def _model(nodes, inputs, outputs, initializers) -> ir.Model:
    graph = helper.make_graph(
        nodes, "hunt10", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers]
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _qdq_convs() -> ir.Model:
    """EfficientWord-Net's ``_qint8.onnx``: every Conv reads its weight through DequantizeLinear, its input through
    QuantizeLinear → DequantizeLinear."""
    rng = np.random.default_rng(0)
    nodes, initializers, x = [], [], "x"
    for i in range(2):
        initializers += [
            (f"w{i}_q", rng.integers(-127, 128, (4, 4, 3, 3)).astype(np.int8)),
            (f"w{i}_s", np.full(4, 0.01, np.float32)),
            (f"b{i}", rng.standard_normal(4).astype(np.float32)),
            (f"x{i}_s", np.array(0.05, np.float32)),
            (f"x{i}_z", np.array(128, np.uint8)),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", [x, f"x{i}_s", f"x{i}_z"], [f"xq{i}"]),
            helper.make_node("DequantizeLinear", [f"xq{i}", f"x{i}_s", f"x{i}_z"], [f"xd{i}"]),
            helper.make_node("DequantizeLinear", [f"w{i}_q", f"w{i}_s"], [f"w{i}"], axis=0),
            helper.make_node("Conv", [f"xd{i}", f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"]))
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])],
        initializers,
    )


def test_static_int8_on_an_already_qdq_model_says_without_v_why_it_quantized_nothing():
    model = _qdq_convs()
    samples = make_inputs(model, {}, seed=1)
    result = StaticQuantizationPass(samples=samples)(model)
    assert not result.modified
    reason = "2 of 2 Conv stay float: weight is already quantized (it is read through DequantizeLinear)"
    assert reason in result.refusals  # -v
    assert f"no layer quantized: {reason}" in result.notes  # the default report


def test_dynamic_int8_whose_only_matmuls_multiply_two_activations_says_why_without_v():
    # The slider segmenter's attention (YOLO11's PSA): q^T k and v attn^T, no constant weight to quantize.
    model = _model(
        [
            helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["qt", "k"], ["s"], name="scores"),
            helper.make_node("Softmax", ["s"], ["p"], axis=-1),
            helper.make_node("Transpose", ["p"], ["pt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["v", "pt"], ["y"], name="context"),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8, 16]) for n in ("q", "k", "v")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])],
        [],
    )
    result = DynamicQuantizationPass()(model)
    assert not result.modified
    assert result.refusals
    assert any(note.startswith("no layer") and "MatMul" in note for note in result.notes), result.notes

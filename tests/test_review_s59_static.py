"""Hostile review (s59) of ``--quantize static`` on CNNs: what ONNX Runtime really does to a QDQ graph.

- ONNX Runtime's WeightBiasQuantization quantizes a float Conv/ConvTranspose/Gemm behind a single-scale
  ``DequantizeLinear`` only where the layer's result goes on to a ``QuantizeLinear``. A float head (a model output)
  reading a one-channel int8 output, which no per-channel dequantization can shield, was taken for quantized, and
  the whole static int8 result was rolled back ("ONNX Runtime quantizes that weight") though ONNX Runtime runs it
  exactly as its twin says.
- The note "N of M Adds read two int8 tensors and are requantized with them (QLinearAdd)" counted an Add of a
  requantized Conv output and a layer's *input* (ResNet's stem MaxPool output), which the Add reads as the float
  tensor: "2 of 2" where ONNX Runtime runs one QLinearAdd and one float Add.
- Bias correction averaged every value of a Conv's input: one infinite pixel among the calibration images made the
  channel's mean infinite, the corrected bias NaN, and the layer lost its correction and its int32 bias ("bias kept
  float, too large for int32"), where the ranges ignore non-finite values.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from optimizer.qdq_rewrites import layers_quantized_by_onnxruntime
from optimizer.verify import Verifier
from passes.quantization.static import StaticQuantizationPass
from tests.passes.quantization.graphs import _model, weights


def _one_channel_head() -> ir.Model:
    """``x [B, 3, 12, 12]`` → Conv + Relu → Conv (8 → 1) + Relu → ``head`` Conv (1 → 4) = ``y``, a model
    output."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="head", pads=[1, 1, 1, 1]),
    ]
    init = [
        ("w1", weights(8, 3, 3, 3, seed=1, scale=0.3)),
        ("b1", weights(8, seed=2)),
        ("w2", weights(1, 8, 3, 3, seed=3, scale=0.3)),
        ("b2", weights(1, seed=4)),
        ("w3", weights(4, 1, 3, 3, seed=5, scale=0.3)),
        ("b3", weights(4, seed=6)),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 12, 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4, 12, 12])
    return _model(nodes, [x], [y], init)


def _images(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((count, 3, 12, 12)).astype(np.float32)}


def test_a_float_head_whose_result_is_never_quantized_again_is_not_taken_for_one_onnxruntime_quantizes():
    model = _one_channel_head()
    samples = _images(16, 0)
    quantization = StaticQuantizationPass(samples=samples, method="minmax")
    result = quantization(model.clone())
    assert result.modified and "head" in quantization.kept_float
    head = next(node for node in result.model.graph if node.name == "head")
    assert head.inputs[0].producer().op_type == "DequantizeLinear"  # the int8 conv2's one-channel output
    assert layers_quantized_by_onnxruntime(result.model) == []
    verdict = Verifier(model, [_images(2, 7)], samples=samples).check_twin(result.model, result.twin, base=model)
    assert verdict.ok, verdict.first_failure


def test_a_float_layer_whose_result_is_quantized_again_is_still_one_onnxruntime_quantizes():
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        helper.make_node("Conv", ["xd", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], name="q2"),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"], name="dq2"),
    ]
    init = [("s", np.array(0.05, np.float32)), ("z", np.array(128, np.uint8)), ("w", weights(8, 1, 1, 1, seed=1))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8, 4, 4])
    model = _model(nodes, [x], [y], init)
    assert [node.name for node in layers_quantized_by_onnxruntime(model)] == ["conv"]


def test_the_note_counts_as_qlinearadd_only_the_adds_that_read_two_requantized_outputs():
    # ResNet's first block adds its Conv's requantized output to the stem's MaxPool output: the Add reads that
    # float tensor (the next Conv reads its quantized copy), and ONNX Runtime runs it in float.
    from optimizer.inputs import make_inputs
    from tests.helpers import FIXTURES
    from tests.passes.quantization.conftest import ort_op_counts

    model = ir.load(FIXTURES / "resnet_legacy.onnx")
    quantization = StaticQuantizationPass(samples=make_inputs(model, {"batch": 8}, seed=4))
    result = quantization(model.clone())
    assert result.modified
    counted = ort_op_counts(result.model)["QLinearAdd"]
    assert counted == 1
    assert any(note.startswith(f"{counted} of 2 Adds read two int8 tensors") for note in result.notes), result.notes


def test_an_infinite_calibration_value_leaves_the_bias_correction_and_the_int32_bias_in_place():
    zero, six = np.array(0.0, np.float32), np.array(6.0, np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "zero", "six"], ["r1"], name="relu6"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="head", pads=[1, 1, 1, 1]),
    ]
    init = [
        ("w1", weights(8, 3, 3, 3, seed=1, scale=0.3)),
        ("b1", weights(8, seed=2)),
        ("w2", weights(4, 8, 3, 3, seed=3, scale=0.3)),
        ("b2", weights(4, seed=4)),
        ("zero", zero),
        ("six", six),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 12, 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4, 12, 12])
    model = _model(nodes, [x], [y], init)
    samples = _images(16, 0)
    samples["x"][3, 1, 4, 4] = np.inf  # the Clip after conv1 takes it back to a number: the outputs stay finite
    quantization = StaticQuantizationPass(samples=samples, method="minmax")
    result = quantization(model.clone())
    assert result.modified
    assert all(np.isfinite(means).all() for means in quantization.input_means.values())
    assert not [note for note in result.notes if "bias kept float" in note], result.notes
    conv = next(node for node in result.model.graph if node.name == "conv1")
    assert conv.inputs[2].producer() is not None and conv.inputs[2].producer().op_type == "DequantizeLinear"

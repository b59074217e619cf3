"""An int8 result ONNX Runtime runs in integer kernels end to end (a CNN's QLinearConv chain) has no checkpoint the
segment check can cut at. Where it misses the row rule end to end (ties rounded the other way cascade through
every later layer: EfficientNet-Lite0's rows up to 1.35x their twin's distance on 64 photographs, a correct
model rolled back), it is checked with ONNX Runtime's rewrites off (its QDQ nodes then compute in float, as the
twin says) against its twin at the twin's tolerance, and as written held to ``UNCUT_ROW_EXCESS``."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimizer.inputs import make_inputs
from optimizer.verify import UNCUT_ROW_EXCESS, Verifier
from passes.quantization.static import StaticQuantizationPass
from tests.helpers import FIXTURES


def _quantized():
    model = ir.load(FIXTURES / "resnet_legacy.onnx")
    samples = make_inputs(model, {"batch": 8}, seed=4)
    result = StaticQuantizationPass(samples=samples)(model.clone())
    assert result.modified and result.twin is not None
    verifier = Verifier(model, [make_inputs(model, {}, seed=5)], samples=samples)
    return model, result, verifier


def test_a_correct_qdq_result_is_its_twin_with_the_rewrites_off():
    _, result, verifier = _quantized()
    verdict = verifier._check_integer_end_to_end(result.model, result.twin, "missed end to end")
    assert verdict.ok, verdict.first_failure
    # No row excused where every output met the tolerance as written; else within the bound.
    assert verdict.twin_row_excess is None or verdict.twin_row_excess <= UNCUT_ROW_EXCESS


def test_a_weight_scale_off_is_not_its_twin_with_the_rewrites_off():
    _, result, verifier = _quantized()
    tampered = result.model.clone()
    scales = [
        value
        for value in tampered.graph.initializers.values()
        if value.name.endswith(".weight_scale") and value.const_value is not None
    ]
    assert scales
    array = scales[0].const_value.numpy().copy()
    array.reshape(-1)[:] *= np.float32(1.02)  # 2 %: within what integer rounding might excuse end to end
    scales[0].const_value = ir.tensor(array, name=scales[0].name)
    verdict = verifier._check_integer_end_to_end(tampered, result.twin, "missed end to end")
    assert not verdict.ok
    assert "with ONNX Runtime's rewrites off (its QDQ nodes in float) it is not its twin either" in verdict.error


def _mobile_net_quantized(**options):
    from tests.passes.quantization.test_static_cnn import _images, mobile_net

    model = mobile_net()
    samples = _images(32, 0)
    result = StaticQuantizationPass(samples=samples, method="minmax", **options)(model.clone())
    assert result.modified and result.twin is not None
    verifier = Verifier(model, [_images(4, 7)], samples=samples)
    return model, result, verifier


def test_a_float_conv_reading_a_per_tensor_dequantization_is_refused_with_the_rewrites_off():
    # ONNX Runtime quantizes such a Conv's float weight to int8 per tensor: the twin's float layer is not what runs.
    _, result, verifier = _mobile_net_quantized(exclude=["b1_depthwise"])
    assert verifier._check_integer_end_to_end(result.model, result.twin, "missed end to end").ok
    tampered = result.model.clone()
    depthwise = next(node for node in tampered.graph if node.name == "b1_depthwise")
    own = depthwise.inputs[0].producer()
    assert own.attributes.get_int("axis") == 1  # the pass's per-channel spelling; made per tensor again:
    scale, zero_point = (value.const_value.numpy() for value in own.inputs[1:3])
    own.replace_input_with(1, ir.Value(name="one_scale", const_value=ir.tensor(scale[:1].reshape(()))))
    own.replace_input_with(2, ir.Value(name="one_zero_point", const_value=ir.tensor(zero_point[:1].reshape(()))))
    for value in own.inputs[1:3]:
        tampered.graph.register_initializer(value)
    own.attributes.pop("axis")
    verdict = verifier._check_integer_end_to_end(tampered, result.twin, "missed end to end")
    assert not verdict.ok
    assert "'b1_depthwise' keeps a float weight" in verdict.error and "WeightBiasQuantization" in verdict.error


def test_a_qdq_result_whose_segments_fail_is_held_to_its_twin_with_the_rewrites_off(monkeypatch):
    # A segment that is a long fused integer chain carries its ties' cascade: segment failures of a QDQ result
    # (here one made up) send it to the check an uncut result gets, which passes a correct one...
    from optimizer import verify

    model, result, verifier = _mobile_net_quantized(exclude=["stem"])
    assert verify._segment_checkpoints(result.model, result.twin, model), "the stem kept float leaves a checkpoint"
    monkeypatch.setattr(verify, "_compounded_error", lambda *args: "a made-up systematic error")
    verdict = verifier._check_twin_by_segment(result.model, result.twin, "missed end to end", base=model)
    assert verdict.ok, verdict.first_failure
    assert "a made-up systematic error" in verdict.twin_without_rewrites
    # ...and refuses a wrong one, where the rewrites off show it.
    tampered = result.model.clone()
    scale = next(v for v in tampered.graph.initializers.values() if v.name == "b1_expand.weight_scale")
    scale.const_value = ir.tensor(scale.const_value.numpy() * np.float32(1.02), name=scale.name)
    verdict = verifier._check_twin_by_segment(tampered, result.twin, "missed end to end", base=model)
    assert not verdict.ok
    assert "checked segment by segment" in verdict.error
    assert "with ONNX Runtime's rewrites off (its QDQ nodes in float) it is not its twin either" in verdict.error

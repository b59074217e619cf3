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
    assert verdict.twin_row_excess is not None and verdict.twin_row_excess <= UNCUT_ROW_EXCESS


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

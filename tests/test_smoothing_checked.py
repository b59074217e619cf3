"""The exact rescaling an int8 twin starts from (SmoothQuant's norms and weights) is held to the pass's input: a
wrong rescaling fails verification, where the twin (built from the rescaled model) would have passed it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

import optimizer
from passes.quantization import smoothing
from tests.passes.quantization.test_smoothing import _pre_norm_block, _x


def _quantized(model: ir.Model):
    return optimizer.optimize_with_report(
        model.clone(), ["quantize-dynamic"], quantize="dynamic", smooth=0.5, calibration=_x(32), inputs=_x(4, seed=3)
    )[1]


def test_a_correct_smoothing_verifies():
    report = _quantized(_pre_norm_block())
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert record.status == "applied", record.detail
    assert any("SmoothQuant (alpha 0.5) on 1 norms" in note for note in record.notes)


def test_a_wrong_rescaling_of_the_norm_is_rolled_back(monkeypatch):
    real = smoothing.smooth

    def off_by_two_percent(model, *args, **kwargs):
        norms = real(model, *args, **kwargs)
        for name in norms:  # the norm's scale 2 % off in one channel: not what the input computes
            scale = model.graph.node(name).inputs[1]
            values = scale.const_value.numpy().copy()
            values[3] *= np.float32(1.02)
            scale.const_value = ir.tensor(values)
        return norms

    monkeypatch.setattr(smoothing, "smooth", off_by_two_percent)
    report = _quantized(_pre_norm_block())
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert record.status == "rolled back"
    assert "does not compute what the input does" in record.detail, record.detail

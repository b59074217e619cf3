"""The int8 weight range follows the CPU's features (optimizer.cpu_features), and says so."""

from __future__ import annotations

import sys

import numpy as np
import onnx_ir as ir
import pytest

from optimizer import cpu_features
from optimizer.api import optimize_with_report
from optimizer.cli import EXAMPLE_MODEL
from optimizer.cpu_features import CpuFeatures, int8_weight_range
from tests.helpers import calibration_samples

AVX2 = CpuFeatures("x86", frozenset({"avx2"}))
AVX512_VNNI = CpuFeatures("x86", frozenset({"avx2", "avx512_vnni"}))
AVX_VNNI = CpuFeatures("x86", frozenset({"avx2", "avx_vnni"}))
AMX = CpuFeatures("x86", frozenset({"avx2", "amx_int8"}))
ARM = CpuFeatures("arm", frozenset({"arm_dotprod"}))
ARM_PLAIN = CpuFeatures("arm", frozenset())
UNKNOWN = CpuFeatures("x86", frozenset(), "archspec is not installed")


@pytest.mark.parametrize(
    ("features", "reduce_range"),
    [(AVX2, True), (UNKNOWN, True), (AVX512_VNNI, False), (AVX_VNNI, False), (AMX, False), (ARM, False)],
)
def test_the_default_weight_range_follows_the_features(features, reduce_range):
    choice = int8_weight_range(None, features)
    assert choice.reduce_range is reduce_range
    assert ("7-bit" if reduce_range else "8-bit") in choice.note
    # the note names what was found and the flag that overrides the choice
    assert features.describe() in choice.note
    assert ("--full-range-weights" if reduce_range else "--no-full-range-weights") in choice.note


def test_arm_without_dot_product_still_accumulates_in_int32():
    assert int8_weight_range(None, ARM_PLAIN).reduce_range is False


@pytest.mark.parametrize("asked", [True, False])
def test_an_explicit_choice_wins_over_the_hardware(asked):
    for features in (AVX2, AVX512_VNNI):
        choice = int8_weight_range(asked, features)
        assert choice.reduce_range is (not asked)
        assert "--full-range-weights" in choice.note if asked else "--no-full-range-weights" in choice.note


def test_detection_reports_this_machine():
    found = cpu_features.detect()
    assert found.source == "archspec"
    assert found.features <= set(cpu_features._FEATURE_NAMES)
    if found.arch == "x86":  # every x86 CPU ONNX Runtime's wheels support has AVX2 or is older than 2013
        assert "avx2" in found.features or not found.int32_accumulation


def test_without_archspec_the_choice_is_the_safe_one(monkeypatch):
    monkeypatch.setitem(sys.modules, "archspec", None)
    monkeypatch.setitem(sys.modules, "archspec.cpu", None)
    cpu_features.detect.cache_clear()
    try:
        found = cpu_features.detect()
        assert found.features == frozenset() and "not installed" in found.source
        if found.arch == "x86":
            assert int8_weight_range(None, found).reduce_range is True
    finally:
        cpu_features.detect.cache_clear()


def _largest_int8_weight(model: ir.Model) -> int:
    return max(
        int(np.abs(value.const_value.numpy().astype(np.int32)).max())
        for value in model.graph.initializers.values()
        if value.dtype == ir.DataType.INT8 and value.const_value is not None and value.const_value.size > 1
    )


@pytest.mark.parametrize(("features", "largest"), [(AVX2, 63), (AVX512_VNNI, 127), (ARM, 127)])
def test_quantize_dynamic_takes_its_weight_range_from_the_detected_features(monkeypatch, features, largest):
    # What is written, not whether this machine runs it: 8-bit weights chosen for a CPU this one
    # is not (AVX2 without VNNI) may saturate here, which the next test checks is caught.
    monkeypatch.setattr(cpu_features, "detect", lambda: features)
    original = ir.load(EXAMPLE_MODEL)
    calibration = calibration_samples(original, 8)
    result, report = optimize_with_report(original, ["+quantize-dynamic"], calibration=calibration, verify=False)
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert record.status == "applied", record.detail
    assert any(("7-bit" if largest == 63 else "8-bit") in note for note in record.notes), record.notes
    # symmetric per-channel weights reach the range's end in every channel's largest weight
    assert _largest_int8_weight(result) == largest


def test_the_flag_overrides_the_detected_features(monkeypatch):
    monkeypatch.setattr(cpu_features, "detect", lambda: AVX512_VNNI)
    original = ir.load(EXAMPLE_MODEL)
    result, report = optimize_with_report(
        original,
        ["+quantize-dynamic"],
        calibration=calibration_samples(original, 8),
        full_range_weights=False,
    )
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert any("--no-full-range-weights" in note for note in record.notes), record.notes
    assert _largest_int8_weight(result) == 63


@pytest.mark.skipif(
    cpu_features.detect().arch != "x86" or cpu_features.detect().int32_accumulation,
    reason="this CPU accumulates int8 products in int32 (VNNI): 8-bit weights cannot saturate here",
)
def test_on_a_cpu_without_vnni_saturating_8_bit_weights_are_rolled_back():
    # The reason the default is 7-bit there: ONNX Runtime's AVX2 kernel sums u8 x s8 pairs in
    # int16 and saturates. Asked for anyway, the result differs from its twin and is not kept.
    original = ir.load(EXAMPLE_MODEL)
    calibration = calibration_samples(original, 8)
    _, report = optimize_with_report(original, ["+quantize-dynamic"], calibration=calibration, full_range_weights=True)
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert record.status == "rolled back" and "differs from its twin" in record.detail, record.detail


@pytest.mark.parametrize(
    ("first", "second"),
    [((AVX2, "x86_64_v3"), (AVX512_VNNI, "x86_64_v4")), ((AVX2, "zen2"), (AVX2, "zen3"))],
    ids=["int8-features", "microarchitecture"],
)
def test_kernel_timings_of_two_cpus_with_one_brand_string_are_kept_apart(monkeypatch, first, second):
    # Cloud VMs name an AVX2-only Zen 2 and an AVX-512 VNNI Zen 5 both "AMD EPYC"; a layer timed on one
    # must not decide for the other (their int8 kernels differ several-fold).
    from passes import _kernel_timing

    monkeypatch.setattr(cpu_features, "cpu_name", lambda: "AMD EPYC")
    keys = []
    for features, microarchitecture in (first, second):
        monkeypatch.setattr(cpu_features, "detect", lambda features=features: features)
        monkeypatch.setattr(cpu_features, "microarchitecture", lambda name=microarchitecture: name)
        keys.append(_kernel_timing.runtime_key("cpu", 2))
        assert keys[-1].startswith(f"AMD EPYC ({microarchitecture}; {features.describe()})|ort ")
    assert keys[0] != keys[1]

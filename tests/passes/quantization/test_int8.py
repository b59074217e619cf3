"""The int8 arithmetic: weight scales per channel and per tensor, activation ranges."""

from __future__ import annotations

import numpy as np
import pytest

from passes.quantization._int8 import FULL_RANGE_MAX, REDUCED_RANGE_MAX, activation_parameters, quantize_weight


@pytest.mark.parametrize("reduce_range", [False, True])
def test_per_channel_weights_round_within_half_a_step(reduce_range):
    weight = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32) * np.arange(1, 9)
    quantized = quantize_weight(weight, 1, reduce_range=reduce_range)
    limit = REDUCED_RANGE_MAX if reduce_range else FULL_RANGE_MAX
    assert quantized.values.dtype == np.int8 and quantized.scale.shape == (8,)
    assert np.abs(quantized.values).max() == limit
    np.testing.assert_allclose(quantized.scale, np.abs(weight).max(axis=0) / limit, rtol=1e-6)
    assert np.all(np.abs(quantized.dequantize() - weight) <= quantized.scale / 2 + 1e-7)
    assert not quantized.zero_point.any()


def test_per_tensor_weight_has_one_scale_and_zero_slices_are_safe():
    weight = np.zeros((4, 3), dtype=np.float32)
    weight[0, 0] = -2.0
    quantized = quantize_weight(weight, None)
    assert quantized.scale.shape == () and quantized.values[0, 0] == -FULL_RANGE_MAX
    channel = quantize_weight(weight, 1)
    assert np.all(np.isfinite(channel.scale)) and np.all(channel.scale[1:] == 1.0)
    np.testing.assert_array_equal(channel.dequantize(), weight)


def test_activation_range_includes_zero_and_keeps_zero_exact():
    scale, zero_point = activation_parameters(0.5, 4.0)  # widened to [0, 4]
    assert zero_point == 0 and scale == pytest.approx(4.0 / 255)
    scale, zero_point = activation_parameters(-1.0, 3.0)
    assert scale == pytest.approx(4.0 / 255)
    assert -1.0 + int(zero_point) * float(scale) == pytest.approx(0.0, abs=float(scale) / 2)
    assert activation_parameters(0.0, 0.0) == (1.0, 0)

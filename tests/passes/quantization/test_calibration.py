"""Calibration methods on synthetic distributions with known ranges, and collection on ORT."""

from __future__ import annotations

import numpy as np
import pytest

from passes.quantization import calibration
from tests.passes.quantization.graphs import mlp, samples


def _runs(values: np.ndarray, batches: int = 4) -> list[dict[str, np.ndarray]]:
    return [{"t": chunk} for chunk in np.array_split(values, batches)]


@pytest.fixture
def uniform_with_outliers() -> np.ndarray:
    values = np.random.default_rng(0).uniform(-1.0, 3.0, 400_000).astype(np.float32)
    values[np.random.default_rng(1).choice(values.size, 10, replace=False)] = 100.0
    return values


def test_minmax_is_the_exact_extremes(uniform_with_outliers):
    low, high = calibration.tensor_ranges(_runs(uniform_with_outliers), "minmax")["t"]
    assert low == pytest.approx(uniform_with_outliers.min()) and high == 100.0


def test_percentile_cuts_rare_outliers(uniform_with_outliers):
    low, high = calibration.tensor_ranges(_runs(uniform_with_outliers), "percentile", percentile=99.99)["t"]
    bin_width = 200.0 / 2048  # the histogram spans [-100, 100]
    assert low == pytest.approx(-1.0, abs=bin_width)
    assert high == pytest.approx(3.0, abs=2 * bin_width)
    # 10 outliers in 400 000 values are more than the 0.0005 % tail 99.999 cuts: kept.
    assert calibration.tensor_ranges(_runs(uniform_with_outliers), "percentile", percentile=99.999)["t"][1] == 100.0


def test_entropy_clips_outliers_but_keeps_the_bulk(uniform_with_outliers):
    low, high = calibration.tensor_ranges(_runs(uniform_with_outliers), "entropy")["t"]
    assert low == pytest.approx(-1.0, abs=0.01)
    assert 2.9 <= high <= 12.0


def test_one_sided_data_keeps_zero_as_the_lower_bound():
    values = np.abs(np.random.default_rng(2).standard_normal(100_000)).astype(np.float32)
    for method in calibration.METHODS:
        low, high = calibration.tensor_ranges(_runs(values), method)["t"]
        assert low >= 0.0 and 3.0 < high <= values.max() + 1e-6, method


def test_gaussian_percentile_matches_the_quantile():
    values = np.random.default_rng(3).standard_normal(1_000_000).astype(np.float32)
    low, high = calibration.tensor_ranges(_runs(values), "percentile", percentile=99.0)["t"]
    assert low == pytest.approx(np.quantile(values, 0.005), abs=0.01)
    assert high == pytest.approx(np.quantile(values, 0.995), abs=0.01)


def test_calibrate_reads_intermediate_tensors_from_onnx_runtime():
    model = mlp()
    feeds = samples(model, 8)
    ranges = calibration.calibrate(model, ["x", "r1"], [feeds], "minmax")
    assert ranges["x"] == (pytest.approx(feeds["x"].min()), pytest.approx(feeds["x"].max()))
    assert ranges["r1"][0] == 0.0 and ranges["r1"][1] > 0.0  # after Relu
    with pytest.raises(KeyError):
        calibration.calibrate(model, ["nope"], [feeds])


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibration.tensor_ranges([{"t": np.ones(3, np.float32)}], "mse")

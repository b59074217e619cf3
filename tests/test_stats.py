"""Latency statistics on synthetic timings with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.compare.stats import LatencySummary, paired_ratio


def test_summary_percentiles_in_milliseconds():
    seconds = np.arange(1, 101) / 1000.0  # 1..100 ms
    summary = LatencySummary.of(seconds)
    assert summary.runs == 100
    assert summary.median_ms == pytest.approx(50.5)
    assert summary.p90_ms == pytest.approx(90.1)
    assert summary.p99_ms == pytest.approx(99.01)
    assert summary.min_ms == pytest.approx(1.0)


def test_no_p99_under_a_hundred_runs():
    """Of 20 runs a p99 is the slowest one or two interpolated: left out (None, "—" in the table)."""
    summary = LatencySummary.of(np.arange(1, 100) / 1000.0)
    assert summary.runs == 99 and summary.p99_ms is None and summary.p90_ms == pytest.approx(89.2)


def test_ratio_of_a_clear_speedup_is_tight_and_trusted():
    rng = np.random.default_rng(0)
    drift = 1 + 0.3 * np.sin(np.linspace(0, 6, 200))  # machine load drifting over the run
    before = 0.010 * drift * rng.normal(1, 0.02, 200)
    after = 0.008 * drift * rng.normal(1, 0.02, 200)
    estimate = paired_ratio(before, after)
    assert estimate.ratio == pytest.approx(0.8, rel=0.03)
    assert estimate.low < estimate.ratio < estimate.high
    assert 0.75 < estimate.low and estimate.high < 0.85
    assert estimate.trustworthy and estimate.warning == ""


def test_no_difference_interval_contains_one():
    rng = np.random.default_rng(1)
    before = rng.normal(0.01, 0.0005, 300)
    after = rng.normal(0.01, 0.0005, 300)
    estimate = paired_ratio(before, after)
    assert estimate.low < 1.0 < estimate.high


def test_noisy_runs_are_flagged():
    rng = np.random.default_rng(2)
    before = rng.lognormal(np.log(0.01), 0.8, 100)
    after = rng.lognormal(np.log(0.01), 0.8, 100)
    estimate = paired_ratio(before, after)
    assert not estimate.trustworthy
    assert "too wide" in estimate.warning or "vary by" in estimate.warning


def test_too_few_runs_are_flagged():
    estimate = paired_ratio([0.01] * 5, [0.009] * 5)
    assert not estimate.trustworthy and "only 5 paired runs" in estimate.warning


def test_unpaired_inputs_are_rejected():
    with pytest.raises(ValueError):
        paired_ratio([0.01, 0.02], [0.01])

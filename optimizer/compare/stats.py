"""Statistics for paired latency measurements on a noisy machine.

Two models are timed interleaved (A, B, A, B, ...), so run ``i`` of each saw the same
machine state. The after/before ratio is the ratio of medians, and its confidence
interval comes from a bootstrap that resamples *pairs*, which keeps that pairing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Above this relative spread ((p90 - p10) / median) of the per-pair ratios, the
# noise that pairing cannot cancel is large; the report warns. Drift that hits both
# models of a pair alike does not count, which is the point of interleaving.
NOISY_SPREAD = 0.5
# Fewer paired runs than this: the bootstrap interval means little (one pair gives a zero-width one).
MIN_PAIRS = 10
# A confidence interval wider than this (upper / lower) is flagged as untrustworthy.
WIDE_INTERVAL = 1.2
# Resampled runs drawn at once by the bootstrap (about 100 MB with the values they pick), however many runs were
# timed; 2000 resamples of up to 2,097 pairs are one block.
BOOTSTRAP_BLOCK = 1 << 22

# The fewest runs a p99 is reported from: of fewer, it is the slowest run or two interpolated, a tail that the
# next comparison draws anew (at 20 runs, the maximum itself weighs 81 % of it).
P99_MIN_RUNS = 100


@dataclass(frozen=True)
class LatencySummary:
    """Summary of one model's run times, in milliseconds; ``p99_ms`` is None under ``P99_MIN_RUNS`` runs."""

    runs: int
    mean_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float | None
    min_ms: float
    spread: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencySummary:
        """Summarize run times given in seconds."""
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        if ms.size == 0:
            raise ValueError("no timings to summarize")
        median = float(np.median(ms))
        p10, p90, p99 = np.percentile(ms, [10, 90, 99])
        return cls(
            runs=int(ms.size),
            mean_ms=float(ms.mean()),
            median_ms=median,
            p90_ms=float(p90),
            p99_ms=float(p99) if ms.size >= P99_MIN_RUNS else None,
            min_ms=float(ms.min()),
            spread=float((p90 - p10) / median) if median > 0 else 0.0,
        )


@dataclass(frozen=True)
class RatioEstimate:
    """after/before ratio of median latencies with a bootstrap confidence interval."""

    ratio: float
    low: float
    high: float
    confidence: float
    trustworthy: bool
    warning: str = ""


def paired_ratio(
    before: Sequence[float],
    after: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> RatioEstimate:
    """Ratio median(after)/median(before) with a paired bootstrap interval.

    ``before[i]`` and ``after[i]`` must come from the same interleaved round.
    ``trustworthy`` is False (with a warning) when there are fewer than 10 pairs,
    the interval is wider than ``WIDE_INTERVAL``, or the per-pair ratios spread more
    than ``NOISY_SPREAD``.
    """
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    if a.size != b.size or a.size == 0:
        raise ValueError("paired_ratio needs the same, non-zero number of runs for both models")
    ratio = float(np.median(b) / np.median(a))
    rng = np.random.default_rng(seed)
    # A block of resamples at a time: all at once, --iterations 100000 on a model that runs in microseconds took
    # 2000 x 100,000 picks (4.8 GB with the values they pick), and the system killed the run after its work.
    rows = max(1, BOOTSTRAP_BLOCK // a.size)
    blocks = []
    for start in range(0, resamples, rows):
        picks = rng.integers(0, a.size, size=(min(rows, resamples - start), a.size))
        blocks.append(np.median(b[picks], axis=1) / np.median(a[picks], axis=1))
    ratios = np.concatenate(blocks)
    tail = (1.0 - confidence) / 2.0
    low, high = (float(v) for v in np.quantile(ratios, [tail, 1.0 - tail]))
    warnings = []
    if a.size < MIN_PAIRS:
        warnings.append(f"only {a.size} paired runs")
    if low > 0 and high / low > WIDE_INTERVAL:
        warnings.append(f"the {confidence:.0%} interval {low:.2f}–{high:.2f} is too wide to trust the ratio")
    pair_ratios = b / a
    p10, p50, p90 = np.percentile(pair_ratios, [10, 50, 90])
    pair_spread = float((p90 - p10) / p50)
    if pair_spread > NOISY_SPREAD:
        warnings.append(f"paired run ratios vary by {pair_spread:.0%} (noisy machine?)")
    return RatioEstimate(ratio, low, high, confidence, not warnings, "; ".join(warnings))

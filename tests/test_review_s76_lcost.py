"""Review s76 lcost: the lengths between one dim's thresholds (``compared_inputs._lengths_between``), built faster.

Read one length and one comparison at a time (late76e's), a call took 0.83 s with 300 distinct ``Less`` thresholds on
one length, 9.5 s at 1,000 and 55.6 s at 3,000 (review s76 late76h), and ``api._lengths_a_rewrite_compares`` reads it
twice an exact pass. Now each comparison is read at every length at once in numpy (``_side_classes``), the lengths a
remainder's divisor reaches are marked in numpy (``_told_lengths``), and the ways joined as numbers
(``_joined_classes``); the lengths found are the same, in the same order. Measured here (2 shared cores, one call,
``held`` {128, 257}, before / after): 300 thresholds 0.84 / 0.005-0.014 s, 1,000 8.4 / 0.026-0.040 s, 3,000 104 s on a
busy machine (late76h: 55.6 s) / 0.13-0.20 s, 300 beside a remainder by 64 2.5 / 0.007-0.011 s (docs/benchmarks.md,
"Lengths between thresholds, faster (review s76 lcost)"). Speed is measured there, not asserted here.

``test_lengths_between_matches_the_reference`` holds the new one to a copy of the old (``_reference``) on a few
hundred random sets of comparisons.
"""

from __future__ import annotations

import operator
from functools import partial

import numpy as np

from optimizer.compared_inputs import (
    _LONGEST_COMPARED_LENGTH,
    _length_remainder_side,
    _length_side,
    _lengths_between,
)


def _reference(compared, held, kept):
    """``_lengths_between`` as late76e wrote it (bd5cc06), one length and comparison at a time: the oracle."""
    if len(compared) < 2:
        return []

    def way(length):
        return tuple(side(length) for _, side in compared)

    gone = {way(n) for n in (*held, *kept)}
    between = []
    divisors = [side.args[0] for _, side in compared if getattr(side, "func", None) is _length_remainder_side]
    told = {n for lengths, _ in compared for n in lengths}
    told.update(
        n + step for n in list(told) for divisor in divisors for step in range(min(divisor, _LONGEST_COMPARED_LENGTH))
    )
    for length in sorted(n for n in told if 1 <= n <= _LONGEST_COMPARED_LENGTH):
        if (went := way(length)) not in gone:
            gone.add(went)
            between.append(length)
    return between


_OPS = ("Less", "Greater", "LessOrEqual", "GreaterOrEqual")


def _threshold(rng: np.random.Generator) -> float:
    """0, 1, near the longest length, past it, or anywhere, sometimes halfway between two lengths."""
    picked = rng.choice([0, 1, _LONGEST_COMPARED_LENGTH - 1, _LONGEST_COMPARED_LENGTH, _LONGEST_COMPARED_LENGTH + 1])
    base = int(picked) if rng.random() < 0.3 else int(rng.integers(-5, 300))
    return base + (0.5 if rng.random() < 0.2 else 0.0)


def _comparison(rng: np.random.Generator, depth: int = 0):
    """``(lengths, side)`` as ``compared_inputs._lengths_compared`` yields them: thresholds (one or several, one op or
    two, scaled and offset), an ``Equal`` with one length, or a remainder's comparison of either; or another side."""
    kind = rng.integers(4 if depth == 0 else 2)
    if kind == 3:  # a side no numpy reading knows: read one length at a time
        length = int(rng.integers(1, 300))
        return [length - 1, length], partial(operator.lt, length)
    if kind == 0:
        pairs = [
            (str(rng.choice(_OPS)), np.asarray([_threshold(rng) for _ in range(rng.integers(1, 4))], np.float64))
            for _ in range(rng.integers(1, 3))
        ]
        scale = float(rng.choice([1.0, 1.0, 2.0, 0.5, -1.0, 1 / 3]))
        offset = float(rng.choice([0.0, 0.0, 1.0, -7.0, 0.25]))
        lengths = sorted({int(np.floor((t - offset) / scale)) + d for _, every in pairs for t in every for d in (0, 1)})
        return lengths, partial(_length_side, pairs, scale, offset)
    if kind == 1:
        length = int(rng.choice([0, 1, 2, 7, 64, 200, _LONGEST_COMPARED_LENGTH]))
        return [length], partial(operator.eq, length)
    divisor = int(rng.choice([1, 2, 3, 7, 8, 64, 100]))
    inner_lengths, inner = _comparison(rng, depth + 1)
    return sorted({n + divisor for n in inner_lengths if 0 <= n < divisor}), partial(
        _length_remainder_side, divisor, inner
    )


def test_lengths_between_matches_the_reference():
    rng = np.random.default_rng(76)
    found_any = 0
    for _ in range(300):
        compared = [_comparison(rng) for _ in range(rng.integers(1, 7))]
        held = sorted({int(n) for n in rng.choice([1, 2, 128, 257, 0, 4096, 5000], size=rng.integers(0, 4))})
        kept = sorted({int(n) for n in rng.integers(1, 300, size=rng.integers(0, 4))})
        if rng.random() < 0.1:  # a length not an int: every side one length at a time
            held.append(128.0)
        expected = _reference(compared, held, kept)
        assert _lengths_between(compared, held, kept) == expected, (compared, held, kept)
        found_any += bool(expected)
    assert found_any > 100  # the sets are not all ones with nothing between


def test_lengths_between_many_thresholds_matches_the_reference():
    # late76h's shape, smaller: distinct ``Less`` thresholds on one length beside a remainder's ``Equal``.
    compared = [
        ([t - 1, t], partial(_length_side, [("Less", np.array([t]))], np.asarray(1.0), np.asarray(0.0)))
        for t in (1 + (i * 7) % 4000 for i in range(60))
    ]
    compared.append(([8], partial(_length_remainder_side, 8, partial(operator.eq, 0))))
    assert _lengths_between(compared, [128, 257], []) == _reference(compared, [128, 257], [])

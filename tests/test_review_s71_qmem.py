"""A review of static quantization's memory on large activations (2026-12-07).

fastmrz's 42-node U-Net (NHWC 256², 8 pages a set) peaked at 10.8 GB resident under ``--quantize static`` against
1.7 GB for plain ``optimize``. Most of it was float64 working copies of whole activations: the segment check's
comparison of one output (``_compare_one``: about 15x the tensor's float32 bytes at once), its systematic-error fit
(8x), its row rule (12x), and the bias correction's channel means (5x), each on a 160-channel 256x256 activation of
8 pages (335 MB). Each now works block by block of whole rows (or channel by channel, or in place) with results bit
for bit those of the whole. The peaks are measured with tracemalloc, which sees numpy's allocations.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from optimizer import accuracy, verify
from passes.quantization import calibration
from tests.helpers import parse_model

_SHAPE = (2, 32, 64, 64)  # 1 MB of float32: a large activation, small


@pytest.fixture(scope="module")
def tensors() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A twin's activation, the result's (rounding off it), and the float model's (further off)."""
    rng = np.random.default_rng(0)
    twin = rng.standard_normal(_SHAPE, dtype=np.float32)
    result = twin + np.float32(1e-6) * rng.standard_normal(_SHAPE, dtype=np.float32)
    original = twin + np.float32(1e-3) * rng.standard_normal(_SHAPE, dtype=np.float32)
    return twin, result, original


def _peak(work: Callable[[], object]) -> int:
    """The most bytes ``work`` held at once beyond what was held before it (tracemalloc)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        work()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.fixture
def small_blocks(monkeypatch) -> None:
    # Blocks far smaller than the tensor, as a 335 MB activation's are against the default block.
    monkeypatch.setattr(verify, "_COMPARE_BLOCK", 1 << 14, raising=False)


def test_comparing_an_output_holds_no_float64_copies_of_it(tensors, small_blocks):
    # Before: 14.8x the output's bytes (float64 copies of expected and actual, their masked copies, the magnitude,
    # the relative error); now the squares for its RMS (2x) and one block's copies.
    twin, result, _ = tensors
    peak = _peak(lambda: verify.compare_outputs({"y": twin}, {"y": result}))
    assert peak < 3 * twin.nbytes, f"compare_outputs held {peak / twin.nbytes:.1f}x the output's bytes"


def _fills_and_holes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    expected = (rng.standard_normal((3, 5, 700)) * 4).astype(np.float32)
    expected[0, 1, 3] = -1e9  # a fill: no tolerance lent to the others
    expected[2, 4, 5] = np.nan
    actual = expected + np.float32(2e-4) * rng.standard_normal(expected.shape, dtype=np.float32)
    actual[1, 2, 600] = np.inf
    return expected, actual


@pytest.mark.parametrize("floor", ["none", "per row", "scalar"])
def test_comparing_block_by_block_gives_the_whole_tensors_verdict_bit_for_bit(monkeypatch, floor):
    rng = np.random.default_rng(1)
    expected, actual = _fills_and_holes(rng)
    actual[0, 0, :] = expected[0, 0, :]  # no NaN/Inf mismatch in one of the variants below
    noise = {"none": 0.0, "per row": np.abs(rng.standard_normal(expected.shape[:-1])) * 1e-3, "scalar": 1e-3}[floor]
    checks = []
    for block in (1 << 30, 1000, 7):
        monkeypatch.setattr(verify, "_COMPARE_BLOCK", block, raising=False)
        finite = np.where(np.isfinite(actual), actual, expected)
        checks.append(
            [
                verify._compare_one(name, expected, a, verify.DEFAULT_TOLERANCES, noise)
                for name, a in (
                    ("with holes", actual),
                    ("finite", finite),
                )
            ]
        )
    assert checks[1] == checks[0] and checks[2] == checks[0]
    assert not checks[0][0].ok and "NaN/Inf" in checks[0][0].detail
    assert checks[0][1].max_rel_error > 0


def test_the_systematic_error_fit_works_in_place(tensors, small_blocks):
    # Before: 8.3x the activation's bytes (four float32 copies beside the difference and a copy of the twin, a float64
    # difference); now 3.8x.
    twin, result, _ = tensors
    peak = _peak(lambda: verify._systematic_error(twin, result, 1, None, 1e-5))
    assert peak < 4.5 * twin.nbytes, f"_systematic_error held {peak / twin.nbytes:.1f}x the activation's bytes"


def test_the_row_rule_holds_one_block_of_rows_in_float64(tensors, small_blocks):
    # Before: 12x (float64 copies of the three tensors and of two squared differences); now the original's squares
    # for the floor (2x) and one block's copies.
    twin, result, original = tensors
    peak = _peak(lambda: verify.int8_row_excess({"y": twin}, {"y": result}, {"y": original}, ["y"]))
    assert peak < 3.5 * twin.nbytes, f"int8_row_excess held {peak / twin.nbytes:.1f}x the output's bytes"


@pytest.fixture(scope="module")
def relu() -> object:
    return parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[2, 32, 64, 64] x) => (float[2, 32, 64, 64] y) { y = Relu(x) }"
    )


def test_channel_means_hold_one_channel_in_float64(relu, tensors):
    # Before: the activation copied to float64 twice, with a float64 masked copy: 5x its bytes beside the run's own
    # output; now one channel's copies.
    twin, _, _ = tensors
    batches = [{"x": twin}]
    means = calibration.channel_means(relu, ["y"], batches)  # the session's own allocations out of the way
    peak = _peak(lambda: calibration.channel_means(relu, ["y"], batches))
    assert peak < 2 * twin.nbytes, f"channel_means held {peak / twin.nbytes:.1f}x the activation's bytes"
    assert np.array_equal(means["y"], np.maximum(twin, 0).mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32))


def test_the_rms_of_parts_is_the_rms_of_their_concatenation_bit_for_bit():
    rng = np.random.default_rng(2)
    parts = [
        np.abs(rng.standard_normal(shape)) * 10.0**power for shape, power in (((3, 700), 3), ((0,), 0), ((41,), -5))
    ]
    whole = np.concatenate([part.ravel() for part in parts])
    assert accuracy.root_mean_square_of_parts(lambda: iter(parts)) == accuracy.root_mean_square(whole)
    assert accuracy.root_mean_square_of_parts(lambda: iter([np.zeros(3)])) == 0.0

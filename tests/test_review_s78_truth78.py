"""Review s78 truth78: the pruning report's words against what it did. A Conv group too narrow to round (8 channels
on AVX2's block of 8, the suite's pin) cut to 4 runs as 8 in ONNX Runtime's blocked layout: the note named only the
groups it had rounded, so such a cut was reported without a word on it (README said every group off the block was
named)."""

from __future__ import annotations

import numpy as np

from passes.pruning.channels import ChannelPruningPass


def test_a_group_too_narrow_to_round_is_named_as_the_block_it_runs_as():
    from tests.passes.pruning.graphs import inverted_residual

    calibration = {"x": np.random.default_rng(1).standard_normal((8, 3, 12, 12)).astype(np.float32)}
    pruning = ChannelPruningPass(0.5, samples=calibration, repair=False)
    result = pruning(inverted_residual(expand=1))  # 8 expansion channels a block: one block of 8
    assert pruning.pruned and all(counts == (4, 8) for counts in pruning.pruned.values())
    (note,) = [note for note in result.notes if "NCHWc" in note]
    assert f"{len(pruning.pruned)} narrower groups kept a count off it and run as the multiple above" in note
    assert "4/8 as 8" in note

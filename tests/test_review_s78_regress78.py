"""Review s78 regress78: regression audit of session 78's changes (335252e..89c7a6c) on the 47 models the suite reads,
with --fp16, --prune-channels 0.25 and the quantized runs of review s77 regress (docs/benchmarks.md, "What session
78's changes cost"). Here: what the pruning report says of kept Conv channel counts off this CPU's NCHWc block.
"""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.cpu_features import CpuFeatures
from passes.pruning import _base
from passes.pruning.channels import ChannelPruningPass

AVX512 = CpuFeatures("x86", frozenset({"avx2", "avx512f", "avx512_vnni"}))


@pytest.fixture(scope="module")
def narrow_residual_model():
    from tests.passes.pruning.graphs import inverted_residual

    return inverted_residual(expand=2)  # 16 expansion channels per block: one block of 16


def test_a_narrow_group_s_count_off_the_block_is_said_to_run_as_the_multiple_above(monkeypatch, narrow_residual_model):
    # On AVX-512 a 16-channel group (one block) keeps a multiple of 4 (12 of 16 at 0.25), which ONNX Runtime pads back
    # to 16: the note said only "off it a cut saves no time", as if every kept count were on the block (ResNet's 12/16;
    # its 24/32 until review s78 xfix78b rounded groups wider than one block to the block).
    # Since review s79 xblk a 16-wide group keeps 4 or 16 there (12 of 16 ran slower than 16): the 16-wide model's 0.25
    # is left whole, so the note is checked on a narrower group's count off 4: a 12-wide group's 9 until review s79
    # xnarrow rounded 12- and 8-wide groups a depthwise Conv reads to a multiple of 4 (9 → 8), now a 6-wide group's 5
    # (a width off 4, left unrounded: as 16 or slower; moved with the lead's approval, every assertion as it was).
    from tests.passes.pruning.graphs import inverted_residual

    monkeypatch.setattr(_base, "CHANNEL_MULTIPLE", None)
    monkeypatch.setattr(_base, "cpu_features", lambda: AVX512)
    calibration = {"x": np.random.default_rng(1).standard_normal((8, 3, 12, 12)).astype(np.float32)}
    pruning = ChannelPruningPass(0.25, samples=calibration, repair=False)
    pruning(narrow_residual_model.clone())
    assert pruning.pruned == {}, pruning.pruned
    result = pruning(inverted_residual(expand=2, channels=3))
    assert pruning.pruned and all(counts == (5, 6) for counts in pruning.pruned.values())
    (note,) = [note for note in result.notes if "NCHWc" in note]
    assert f"{len(pruning.pruned)} narrower groups kept a count off it and run as the multiple above" in note
    assert "5/6 as 16" in note

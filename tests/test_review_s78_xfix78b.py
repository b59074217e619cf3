"""Review s78 xfix78b: pruned Conv groups keep whole NCHWc blocks (the fix of late78b's strict xfail).

ONNX Runtime's CPU runs a float Conv in its blocked (NCHWc) layout and pads its filters up to the block (16 with
AVX-512F, 8 on other x86), so a kept count off the block runs as the multiple above it: on AVX-512 24 of a 24-wide
group ran as 32 and 20 as 32 too, so only a cut to one block (16) saves time. Off x86 ONNX Runtime blocks nothing
(ARM's NEON NCHWc kernels are an opt-in build): there counts keep a multiple of 4, and the note must not name a block.
"""

from __future__ import annotations

import numpy as np

from optimizer.cpu_features import CpuFeatures
from passes.pruning import _base
from passes.pruning.channels import ChannelPruningPass

AVX512 = CpuFeatures("x86", frozenset({"avx2", "avx512f"}))
ARM = CpuFeatures("arm", frozenset({"arm_dotprod"}))


def _pruned(monkeypatch, features, expand, ratio):
    from tests.passes.pruning.graphs import inverted_residual

    monkeypatch.setattr(_base, "CHANNEL_MULTIPLE", None)  # undo the suite's AVX2 pin: the faked CPU's block
    monkeypatch.setattr(_base, "cpu_features", lambda: features)
    calibration = {"x": np.random.default_rng(1).standard_normal((8, 3, 12, 12)).astype(np.float32)}
    pruning = ChannelPruningPass(ratio, samples=calibration, repair=False)
    result = pruning(inverted_residual(expand=expand))
    return pruning.pruned, result


def test_on_avx512_a_group_between_one_and_two_blocks_keeps_one_block_or_all(monkeypatch):
    """24 wide, 0.15 keeps 21: the old rule kept 20 (a multiple of 4), which runs as 32 like 24; 0.3 keeps 17 → 16,
    one block, the only cut that saves time there."""
    pruned, result = _pruned(monkeypatch, AVX512, 3, 0.15)
    assert pruned == {}
    assert any("keep multiples of 16 or the whole width" in line for line in result.refusals), result.refusals
    pruned, _ = _pruned(monkeypatch, AVX512, 3, 0.3)
    assert pruned and all(counts == (16, 24) for counts in pruned.values()), pruned


def test_off_x86_counts_keep_a_multiple_of_four_and_the_note_names_no_block(monkeypatch):
    pruned, result = _pruned(monkeypatch, ARM, 2, 0.2)  # 16 wide, 0.2 keeps 13: 12
    assert pruned and all(counts == (12, 16) for counts in pruned.values()), pruned
    notes = [note for note in result.notes if note.startswith("Conv channel counts kept as multiples of 4")]
    assert notes and "blocks no Conv on this CPU" in notes[0] and "block is" not in notes[0], result.notes


def test_on_avx512_a_group_of_one_block_is_left_whole(monkeypatch):
    pruned, _ = _pruned(monkeypatch, AVX512, 2, 0.25)  # 16 wide: 12 kept ran slower than 16 (read unblocked)
    assert pruned == {}, pruned

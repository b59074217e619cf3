"""Review s78 t5blk: pruned Conv channel counts follow ONNX Runtime's NCHWc block on the CPU it runs on.

MLAS blocks its float Convs by 16 channels where it uses AVX-512F, by 8 on AVX2; pruning rounded every kept count
to a multiple of 8, so on an AVX-512 machine (this review's Zen 4) a cut to 136 of 144 channels ran as slow as
144 (benchmarks/conv_channel_counts.py: 88 channels 1.01× the time of 96, docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.cpu_features import CpuFeatures
from passes.pruning import _base
from passes.pruning._groups import ChannelGroup
from passes.pruning.channels import ChannelPruningPass

AVX512 = CpuFeatures("x86", frozenset({"avx2", "avx512f", "avx512_vnni"}))
AVX2 = CpuFeatures("x86", frozenset({"avx2"}))


@pytest.mark.parametrize(
    ("features", "block"),
    [(AVX512, 16), (AVX2, 8), (CpuFeatures("x86", frozenset()), 8), (CpuFeatures("arm", frozenset({"avx512f"})), None)],
)
def test_the_nchwc_block_is_16_channels_only_with_avx512f(features, block):
    assert features.nchwc_block == block
    assert features.describe() == CpuFeatures(features.arch, features.features - {"avx512f"}).describe()


@pytest.mark.parametrize(
    ("width", "multiple"),
    [(144, 16), (96, 16), (64, 16), (48, 16), (40, 16), (32, 16), (24, 16), (16, 4), (60, 16), (12, None)],
)
def test_with_a_block_of_16_groups_wider_than_one_block_keep_multiples_of_16(monkeypatch, width, multiple):
    monkeypatch.setattr(_base, "CHANNEL_MULTIPLE", 16)
    group = ChannelGroup("channels", "g", width, 1, None, channel_axis=1)
    assert _base._alignment(group) == multiple
    if width == 144:  # 136 kept (EfficientNet-Lite0's 0.1 cut): a tie between 128 and 144 keeps 144
        assert len(_base._aligned(group, list(range(8, 144)), np.arange(144.0))) == 144
        assert len(_base._aligned(group, list(range(14, 144)), np.arange(144.0))) == 128


@pytest.fixture(scope="module")
def residual_model():
    from tests.passes.pruning.graphs import inverted_residual

    return inverted_residual(expand=8)  # 64 expansion channels per block: 0.15 cuts 9, keeping 55


@pytest.mark.parametrize(("features", "kept"), [(AVX512, 48), (AVX2, 56)])
def test_the_kept_counts_and_the_note_follow_the_cpus_block(monkeypatch, residual_model, features, kept):
    monkeypatch.setattr(_base, "CHANNEL_MULTIPLE", None)  # undo the suite's AVX2 pin: this CPU's block
    monkeypatch.setattr(_base, "cpu_features", lambda: features)
    calibration = {"x": np.random.default_rng(1).standard_normal((8, 3, 12, 12)).astype(np.float32)}
    pruning = ChannelPruningPass(0.15, samples=calibration, repair=False)
    result = pruning(residual_model.clone())
    assert pruning.pruned and all(counts == (kept, 64) for counts in pruning.pruned.values())
    said = f"multiples of {features.nchwc_block}: ONNX Runtime's NCHWc Conv block on this CPU is {features.nchwc_block}"
    assert any(said in note for note in result.notes)

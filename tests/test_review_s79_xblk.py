"""Review s79 xblk: pruning's kept counts for a Conv channel group of one AVX-512 NCHWc block (16 channels) or less
(``passes/pruning/_base.py``: ``_counts``, ``_aligned``, ``_rounding_note``).

On AVX-512 (ONNX Runtime 1.32, Zen 4, one thread, benchmarks/narrow_conv_groups.py, docs/benchmarks.md) a 1×1 Conv
reading 12 of a 16-wide group took 1.4–1.7× the time of one reading all 16, 8 1.0–1.4×, 4 0.65–1.0×; a 3×3 Conv
reading 12 ran as 16, 8 in 0.79–0.90× of its time; an inverted residual (a depthwise Conv on the group) on 4 of 16
0.97–1.18×. A 16-wide group was cut to 12 or 8 wherever asked (slower than no cut, or no faster, and less accurate),
and the note called 4 of 16 "as 16" though it runs faster. A 16-wide group now keeps the nearest of the counts that
ran faster than 16 (a tie keeps more): 4 or 16 where a 1×1 Conv reads it, 4, 8 or 16 where another Conv does, all 16
through a depthwise Conv; the block of 8 (AVX2, the suite's pin) is unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.cpu_features import CpuFeatures
from passes.pruning import _base
from passes.pruning._groups import ChannelGroup
from passes.pruning.channels import ChannelPruningPass

AVX512 = CpuFeatures("x86", frozenset({"avx2", "avx512f"}))


@pytest.fixture(scope="module")
def calibration():
    return {"x": np.random.default_rng(1).standard_normal((8, 3, 12, 12)).astype(np.float32)}


def _on_avx512(monkeypatch):
    monkeypatch.setattr(_base, "CHANNEL_MULTIPLE", None)  # undo the suite's AVX2 pin: the faked CPU's block
    monkeypatch.setattr(_base, "cpu_features", lambda: AVX512)


def _group(kernel: int) -> ChannelGroup:
    """A 16-wide group read by a Conv of a ``kernel``×``kernel`` kernel."""
    import onnx_ir as ir

    weight = ir.Value(name="w", shape=ir.Shape([32, 16, kernel, kernel]))
    return ChannelGroup("channels", "g", 16, 1, ir.Node("", "Conv", [ir.Value(name="x"), weight]), channel_axis=1)


@pytest.mark.parametrize(
    ("kernel", "asked", "kept"),
    [(1, 15, 16), (1, 12, 16), (1, 10, 16), (1, 9, 4), (1, 8, 4), (1, 5, 4), (1, 1, 4)]
    + [(3, 15, 16), (3, 12, 16), (3, 11, 8), (3, 9, 8), (3, 6, 8), (3, 5, 4)],
)
def test_on_avx512_a_16_wide_group_keeps_the_counts_that_ran_faster(monkeypatch, kernel, asked, kept):
    """Read by a 1×1 Conv: the nearer of 4 and 16 (10 is a tie: 16); by a 3×3 Conv: of 4, 8 and 16 (12 ran as 16)."""
    _on_avx512(monkeypatch)
    assert len(_base._aligned(_group(kernel), list(range(16 - asked, 16)), np.arange(16.0))) == kept


def _basic_block() -> object:
    """``x [B, 3, 12, 12]`` → 3×3 Conv (16, + bias) → Relu → 3×3 Conv (8) → ``y``: 16 channels a 3×3 Conv reads."""
    from onnx import TensorProto, helper

    from tests.passes.pruning.graphs import _model

    rng = np.random.default_rng(3)
    init = [("w1", rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3)]
    init += [("b1", rng.standard_normal(16).astype(np.float32) * 0.1)]
    init += [("w2", rng.standard_normal((8, 16, 3, 3)).astype(np.float32) * 0.3)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 12, 12])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8, 12, 12])]
    return _model(nodes, inputs, outputs, init)


@pytest.mark.parametrize(("ratio", "kept"), [(0.5, (8, 16)), (0.25, None)])
def test_on_avx512_16_channels_a_3x3_conv_reads_keep_8_not_12(monkeypatch, calibration, ratio, kept):
    """Half cut keeps 8 (a 3×3 Conv reading 8 of 16 ran 0.79–0.90× the time of 16); a quarter cut (12, which ran
    0.90–1.02×) is left whole."""
    _on_avx512(monkeypatch)
    pruning = ChannelPruningPass(ratio, samples=calibration, repair=False)
    pruning(_basic_block())
    assert pruning.pruned.get("conv2") == kept, pruning.pruned


@pytest.mark.parametrize(("width", "asked", "kept"), [(16, 12, 8), (16, 10, 8), (8, 6, 6), (12, 9, 8), (32, 23, 24)])
def test_with_the_block_of_8_the_counts_are_unchanged(width, asked, kept):
    """The suite's pin (AVX2's block of 8): 16 wide keeps multiples of 8 (12 a tie: 16), narrower ones as asked."""
    group = ChannelGroup("channels", "g", width, 1, None, channel_axis=1)
    expected = {(16, 12): 16}.get((width, asked), kept)
    assert len(_base._aligned(group, list(range(width - asked, width)), np.arange(float(width)))) == expected


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_on_avx512_a_16_wide_group_a_depthwise_conv_reads_is_left_whole(monkeypatch, calibration, ratio):
    """An inverted residual's 16 expansion channels: 8 (0.5) ran 1.1× the time of all 16 and 4 (0.75) 0.97–1.18×."""
    from tests.passes.pruning.graphs import inverted_residual

    _on_avx512(monkeypatch)
    pruning = ChannelPruningPass(ratio, samples=calibration, repair=False)
    result = pruning(inverted_residual(expand=2))
    assert pruning.pruned == {}, pruning.pruned
    assert any("all 16 where a depthwise Conv reads it" in line for line in result.refusals), result.refusals


def test_on_avx512_a_16_wide_group_without_a_depthwise_conv_keeps_4_not_said_to_run_as_16(monkeypatch):
    """The classifier head's stem channels (16, read by a 1×1 Conv): 0.6 asks 7, the nearer of 4 and 16 is 4, which
    ran 0.56–0.98× the time of 16 (the note said "4/16 as 16")."""
    from tests.passes.pruning.graphs import classifier_head, head_images

    _on_avx512(monkeypatch)
    pruning = ChannelPruningPass(0.6, samples=head_images(8), repair=False)
    result = pruning(classifier_head())
    assert pruning.pruned == {"head": (4, 16), "classifier": (16, 32)}, pruning.pruned
    note = next((note for note in result.notes if "NCHWc" in note), "")
    assert "head 4/16" in note and "4/16 as 16" not in note and "reads in less time" in note, note


def test_on_avx512_4_of_an_8_wide_group_is_not_said_to_run_as_16(monkeypatch, calibration):
    """4 of 8 ran in less time than 8 (and than 16); the note said "as 16"."""
    from tests.passes.pruning.graphs import inverted_residual

    _on_avx512(monkeypatch)
    pruning = ChannelPruningPass(0.5, samples=calibration, repair=False)
    result = pruning(inverted_residual(expand=1))
    assert pruning.pruned and all(counts == (4, 8) for counts in pruning.pruned.values()), pruning.pruned
    note = next((note for note in result.notes if "NCHWc" in note), "")
    assert "4/8" in note and "4/8 as 16" not in note and "reads in less time" in note, note


def test_on_avx512_a_cut_rounded_to_none_says_a_16_wide_group_keeps_4_or_16(monkeypatch):
    from tests.passes.pruning.graphs import classifier_head, head_images

    _on_avx512(monkeypatch)
    pruning = ChannelPruningPass(0.2, samples=head_images(8), repair=False)
    result = pruning(classifier_head())  # the stem's 16 keep 13 → 16; the head's 32 keep 26 → 32
    assert pruning.pruned == {}
    assert any("of one block of 16: 4 or all 16 where a 1×1 Conv reads it" in line for line in result.refusals), (
        result.refusals
    )

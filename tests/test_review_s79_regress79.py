"""Review s79 (regress79): a regression audit of session 79's changes (9f458f5..157e5ae) at both commits on
examples/encoder, real MiniLM, the real models of tests/fixtures/real and every tests/fixtures/*.onnx
(docs/benchmarks.md, "What session 79's changes cost and change"): the residual budget's channels' spread
(``optimizer.accuracy``), fp16's float ``Range``/``Einsum`` angles and pruning's counts for a 16-wide Conv group on
AVX-512 (``passes/pruning/_base.py``).

- A cut rounded to none named the counts a 16-wide group that neither a 1×1 nor a depthwise Conv reads keeps as
  "4, 8 or all 16 otherwise", with nothing before it for "otherwise" to follow where that was the only such group
  (both ResNet fixtures at ``--prune-channels 0.25`` on this AVX-512 machine). It now says which groups those are.
"""

from __future__ import annotations

from passes.pruning.channels import ChannelPruningPass
from tests.test_review_s79_xblk import _basic_block, _on_avx512, calibration  # noqa: F401 (a fixture)


def test_a_cut_rounded_to_none_says_which_16_wide_groups_keep_4_8_or_16(monkeypatch, calibration):  # noqa: F811
    _on_avx512(monkeypatch)
    pruning = ChannelPruningPass(0.25, samples=calibration, repair=False)
    result = pruning(_basic_block())  # 16 channels a 3×3 Conv reads: 12 asked, 16 kept
    assert pruning.pruned == {}, pruning.pruned
    said = [line for line in result.refusals if "of one block of 16" in line]
    assert said and all("otherwise" not in line for line in said), result.refusals
    assert "4, 8 or all 16 where neither a 1×1 nor a depthwise Conv reads it" in said[0], said

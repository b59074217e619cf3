"""Hostile review of session 66's later changes (decode-step and short-chunk verification, pack-qkv's head-split
readers and causal-only bias, SkipLayerNorm's 2-D skip, simplify-shapes' Slice to an undecided end).

Findings (each one's test failed on 0f77ffd):
- At a batch of one (``--dim batch=1``, or given inputs of one row), the only one-token decode step verified pads its
  past at both ends: a chat's every step (one row, one token, no padding) never ran, and a rewrite wrong only there
  verified. On ONNX Runtime GenAI's layout (its second binding a one-token step of two rows) the one-row step was
  the only unpadded one, and e54f96b padded its past's end in place: a regression there.
- A bias that reads no mask input, refused as the causal order alone, was refused in words of a padding mask ("it is
  not what a causal + padding mask implies at 21 tokens").
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from tests._tiny_lm import build, verifier_optimize_builds
from tests.test_review_s64_llmacc import _wrong_where


def _wrong_at_an_unpadded_step_of_one_row(path, source) -> str:
    """``source`` with noise on its logits at one row and one new token after a past whose mask pads nothing."""
    return _wrong_where(
        path,
        "unpadded_step",
        source,
        lambda graph: [
            helper.make_node("Not", ["has_pads"], ["no_pads"]),
            helper.make_node("Not", ["empty"], ["has_past"]),
            helper.make_node("And", ["one_row_step", "no_pads"], ["unpadded"]),
            helper.make_node("And", ["unpadded", "has_past"], ["unpadded_step"]),
        ],
    )


def test_a_rewrite_wrong_only_at_an_unpadded_step_of_one_row_is_not_verified_at_batch_1(tmp_path):
    source = build(tmp_path / "tiny.onnx")
    verifier = verifier_optimize_builds(source, dims={"batch": 1})
    assert verifier.check(ir.load(str(source))).ok
    wrong = ir.load(_wrong_at_an_unpadded_step_of_one_row(tmp_path / "wrong.onnx", source))
    assert not verifier.check(wrong).ok, verifier.labels


def test_the_unpadded_step_mutant_is_right_on_a_padded_step(tmp_path):
    import onnxruntime as ort

    source = build(tmp_path / "tiny.onnx")
    wrong = _wrong_at_an_unpadded_step_of_one_row(tmp_path / "wrong.onnx", source)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (source, wrong)]
    cache = np.random.default_rng(0).standard_normal((1, 1, 6, 16)).astype(np.float32)
    feed = {"input_ids": np.array([[3]]), "position_ids": np.array([[6]])}
    feed.update({"past_key_values.0.key": cache, "past_key_values.0.value": cache})
    padded = {**feed, "attention_mask": np.array([[0, 1, 1, 1, 1, 0, 1]])}
    plain = {**feed, "attention_mask": np.ones((1, 7), np.int64)}
    assert np.array_equal(*[s.run(["logits"], padded)[0] for s in sessions])
    assert np.abs(np.subtract(*[s.run(["logits"], plain)[0] for s in sessions])).max() > 1


def test_a_rewrite_wrong_only_at_an_unpadded_step_of_one_row_is_not_verified_on_genai(tmp_path):
    # ONNX Runtime GenAI's layout: its second binding is a one-token step of two rows, so the one-row step is cut
    # from set 1, and padding its past's end (e54f96b) replaced the only unpadded step.
    source = "tests/fixtures/llama_kv_genai.onnx"
    verifier = verifier_optimize_builds(source)
    assert verifier.check(ir.load(source)).ok
    wrong = ir.load(_wrong_at_an_unpadded_step_of_one_row(tmp_path / "wrong.onnx", source))
    assert not verifier.check(wrong).ok, verifier.labels


@pytest.mark.parametrize("window", [9, 20])
def test_a_causal_only_bias_refused_names_no_padding_mask(window):
    # A bias that reads no mask input was probed for the causal order alone; its refusal spoke of a padding mask.
    from passes.fusion.packed_attention import PackedAttentionFusion
    from tests.test_review_s66_s2s import _mha_under_causal_bias

    result = PackedAttentionFusion(max_sequence=64)(_mha_under_causal_bias(window=window))
    (reason,) = result.refusals
    assert "causal order" in reason and "padding" not in reason, reason

"""Hostile review s68 (gaps): holes in generated verification inputs, each probed by a rewrite wrong only where the
inputs do not reach, or by copies of samples held out beside their fitted originals.

Findings (each one's test failed on ac6d0a3):
1. Fixed. ONNX Runtime GenAI's layout at ``--dim batch_size=2`` (its GroupQueryAttention takes several new tokens
   over a past at one row only): every generated set is a one-token step, and the prefill and padded prefill were
   cut from them, so no set ran a prompt of several tokens at several rows with an empty cache (which the model
   takes), and a rewrite wrong only there verified. ``api._drawn_prompt`` draws 7 tokens a row for the prefill, which
   the padded prefill then pads (``tests/test_review_s68_decsets.py``'s strict xfail is removed).
2. Fixed. ``pads_where_true`` stopped at an ``Add`` of two masks cast to numbers (``causal.float() +
   key_padding_mask.float()``, their ``Or``), at ``Xor`` with a constant (``mask ^ True``) and at ``Equal`` with 0 or 1
   (``masked_fill(mask == 1, -1e9)`` on an integer mask): a key padding mask behind them was generated true (1)
   everywhere, every position padded, every output NaN or constant, and a rewrite of the projections verified.
3. Fixed. A ``*_lens`` input's lengths were read along axis 1 only: features laid out ``[batch, features, time]``
   (NeMo's ``audio_signal [B, 80, T]`` beside ``length``) padded to two lengths were two samples, and a held-out clip
   was a padded copy of a fitted one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import make_inputs
from optimizer.report import STATUS_ROLLED_BACK
from optimizer.samples import hold_out
from tests._tiny_lm import verifier_optimize_builds
from tests.helpers import FIXTURES, optimize_with_rewrite
from tests.test_review_s64_llmacc import _wrong_where
from tests.test_review_s67_hunt import _attention_under_padding_mask, _scaled
from tests.test_review_s68_padfix import _causal_self_attention

GENAI = FIXTURES / "llama_kv_genai.onnx"

# -- 1. GenAI's prompt at two rows ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genai_at_two_rows():
    """The verifier ``optimize`` builds for ONNX Runtime GenAI's Llama fixture at ``--dim batch_size=2``."""
    return verifier_optimize_builds(GENAI, dims={"batch_size": 2})


def test_genai_at_a_batch_of_two_gets_a_drawn_prompt_and_a_padded_one(genai_at_two_rows):
    # The rewrite wrong only at an unpadded one is tests/test_review_s68_decsets.py's (a strict xfail before).
    verifier = genai_at_two_rows
    prompts = [
        (label, inputs)
        for label, inputs in zip(verifier.labels, verifier.input_sets)
        if np.shape(inputs["past_key_values.0.key"])[2] == 0
    ]
    assert [inputs["input_ids"].shape for _, inputs in prompts] == [(2, 7), (2, 7)], verifier.labels
    (label, drawn), (padded_label, padded) = prompts
    ids = drawn["input_ids"]
    assert "drawn" in label and len(np.unique(ids)) > 2 and not np.array_equal(ids[0], ids[1]), (label, ids)
    assert padded_label.startswith("a padded prefill") and (padded["attention_mask"] == 0).any(), padded_label


def test_genai_at_a_batch_of_two_does_not_verify_a_rewrite_wrong_only_at_a_padded_prompt(genai_at_two_rows, tmp_path):
    # Before: no padded prefill at all (its one token a row padded nothing, and the one-token prefill was taken as it).
    wrong = ir.load(_wrong_where(tmp_path / "wrong.onnx", "padded_prefill", GENAI))
    assert not genai_at_two_rows.check(wrong).ok, genai_at_two_rows.labels


# -- 2. a mask that pads where true behind Add and Xor ----------------------------------------------------------------


def _summed_with_a_causal_mask() -> onnx.ModelProto:
    """``_causal_self_attention`` with its masks merged by ``Cast(Cast(future) + Cast(src_mask), bool)``, not ``Or``."""
    proto = _causal_self_attention()
    nodes = list(proto.graph.node)
    (merge,) = [index for index, node in enumerate(nodes) if node.op_type == "Or"]
    nodes[merge : merge + 1] = [
        helper.make_node("Cast", ["future"], ["future_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["padded"], ["padded_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["future_f", "padded_f"], ["hidden_count"]),
        helper.make_node("Cast", ["hidden_count"], ["hidden"], to=TensorProto.BOOL),
    ]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def _attending_by_xor() -> onnx.ModelProto:
    """``_attention_under_padding_mask`` spelled ``Where(src_mask ^ True, scores, -1e9)``: still true pads."""
    proto = _attention_under_padding_mask()
    for node in proto.graph.node:
        if node.op_type == "Where":
            node.input[:] = ["kept", "scores", "fill"]
    proto.graph.node.insert(
        next(i for i, node in enumerate(proto.graph.node) if node.op_type == "Where"),
        helper.make_node("Xor", ["padded", "true"], ["kept"]),
    )
    proto.graph.initializer.append(numpy_helper.from_array(np.array(True), "true"))
    return proto


def test_a_true_pads_mask_summed_with_a_causal_mask_is_generated_padding_some_positions():
    drawn = make_inputs(ir.from_proto(_summed_with_a_causal_mask()), {"batch": 2, "sequence": 8})["src_mask"]
    assert not drawn[0].any() and drawn[1, -2:].all(), drawn  # before: true everywhere


def test_a_rewrite_behind_a_true_pads_mask_summed_with_a_causal_mask_is_rolled_back(tmp_path: Path):
    report = optimize_with_rewrite(_summed_with_a_causal_mask(), _scaled("query"), tmp_path)
    record = report.passes[0]
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)


def test_a_rewrite_behind_a_true_pads_mask_negated_by_xor_is_rolled_back(tmp_path: Path):
    report = optimize_with_rewrite(_attending_by_xor(), _scaled("query"), tmp_path)
    record = report.passes[0]
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)


def test_a_mask_xor_ed_with_another_mask_is_read_as_neither():
    """A guard of fix 2: ``a ^ b`` of two masks pads where neither alone says; it stays generated as before."""
    proto = _attending_by_xor()
    proto.graph.input.append(helper.make_tensor_value_info("other", TensorProto.BOOL, ["batch", 1, "src_len"]))
    for node in proto.graph.node:
        if node.op_type == "Xor":
            node.input[1] = "other"
    drawn = make_inputs(ir.from_proto(proto), {"batch": 2, "src_len": 8})["src_mask"]
    assert drawn.all(), drawn


def test_a_mask_plus_data_is_no_mask():
    """A guard of fix 2: only a sum of masks is their ``Or``; ``Cast(mask) + data`` says nothing of the mask."""
    proto = _summed_with_a_causal_mask()
    for node in proto.graph.node:
        if node.op_type == "Add":
            node.input[0] = "scores"
    drawn = make_inputs(ir.from_proto(proto), {"batch": 2, "sequence": 8})["src_mask"]
    assert drawn.all(), drawn


# -- 3. lengths along a later axis ------------------------------------------------------------------------------------


def _features(clips: list[np.ndarray], length: int, features_last: bool = False) -> dict[str, np.ndarray]:
    """NeMo's ``audio_signal [batch, features, time]`` (``[batch, time, features]`` with ``features_last``) and
    ``length``."""
    values = np.zeros((len(clips), len(clips[0]), length), np.float32)
    lengths = np.zeros(len(clips), np.int64)
    for row, clip in enumerate(clips):
        values[row, :, : clip.shape[1]], lengths[row] = clip, clip.shape[1]
    return {"audio_signal": values.transpose(0, 2, 1) if features_last else values, "length": lengths}


def _feature_clips(count: int = 10, features: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.standard_normal((features, int(rng.integers(5, 12)))).astype(np.float32) for _ in range(count)]


def _unpadded(batches, features_last: bool = False) -> set[bytes]:
    """Each clip of ``batches`` without its padding, as bytes."""
    clips = set()
    for batch in batches:
        for row, length in enumerate(batch["length"]):
            values = batch["audio_signal"][row]
            clips.add(np.ascontiguousarray(values[:length] if features_last else values[:, :length]).tobytes())
    return clips


@pytest.mark.parametrize("features", [4, 12])  # 12: an axis of features that could hold every length too
def test_features_padded_to_two_lengths_along_time_last_are_shared_samples(features):
    clips = _feature_clips(features=features)
    fitted, held = hold_out([_features(clips, 12), _features(clips[::-1], 16)])
    copies = _unpadded(held) & _unpadded(fitted)
    assert not copies, f"{len(copies)} held-out clips are fitted ones padded otherwise"  # before: 2


def test_features_padded_to_two_lengths_with_time_first_stay_shared_samples():
    """A guard of fix 3: ``[batch, time, features]`` is read along axis 1 as before."""
    clips = _feature_clips()
    fitted, held = hold_out([_features(clips, 12, True), _features(clips[::-1], 16, True)])
    assert not _unpadded(held, True) & _unpadded(fitted, True)


def test_features_that_differ_past_a_shared_start_along_time_stay_apart():
    """A guard of fix 3: only what lies past a row's length is left out."""
    clip = _feature_clips(1)[0]
    longer = np.concatenate([clip, np.ones((len(clip), 3), np.float32)], axis=1)
    fitted, held = hold_out([_features([clip], 16), _features([longer], 16)])
    assert len(fitted) == 1 and len(held) == 1


def _padding_where_one() -> onnx.ModelProto:
    """``_attention_under_padding_mask`` with an integer mask read ``masked_fill(src_mask == 1, -1e9)``: 1 pads."""
    proto = _attention_under_padding_mask()
    (mask,) = [value for value in proto.graph.input if value.name == "src_mask"]
    mask.CopyFrom(helper.make_tensor_value_info("src_mask", TensorProto.INT64, ["batch", "src_len"]))
    for node in proto.graph.node:
        if node.op_type == "Cast" and list(node.input) == ["mask3"]:
            node.CopyFrom(helper.make_node("Equal", ["mask3", "one"], ["padded"]))
    proto.graph.initializer.append(numpy_helper.from_array(np.array(1, np.int64), "one"))
    return proto


def test_a_rewrite_behind_an_integer_mask_that_pads_where_it_equals_one_is_rolled_back(tmp_path: Path):
    drawn = make_inputs(ir.from_proto(_padding_where_one()), {"batch": 2, "src_len": 8})["src_mask"]
    assert not drawn[0].any() and drawn[1, -2:].all(), drawn  # before: ones, every position padded
    report = optimize_with_rewrite(_padding_where_one(), _scaled("query"), tmp_path)
    assert report.passes[0].status == STATUS_ROLLED_BACK, (report.passes[0].status, report.passes[0].detail)


def test_a_mask_compared_with_zero_before_its_fill_stays_ones():
    """A guard of fix 2: ``masked_fill(mask == 0, -1e9)`` (the Annotated Transformer's) attends where 1."""
    proto = _padding_where_one()
    proto.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array(0, np.int64), "one"))
    drawn = make_inputs(ir.from_proto(proto), {"batch": 2, "src_len": 8})["src_mask"]
    assert drawn[0].all() and not drawn[1, -2:].any(), drawn

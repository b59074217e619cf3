"""Hostile review of decoders with a key/value cache (session 66): verification holes at inputs it never tried.

Every generated verification set pads a row's start or its end; the decode step is cut from a set whose padding sits
at the start of a row's past, or in its new tokens. No set ever padded the *end of a past* before a real new token:
the mask ``1 1 1 0 0 1`` that a generation loop feeds after right-padded prompts (graphopt's own loop gives ONNX
Runtime GenAI's models their prompts so), or a speculative decoder after masking rejected draft tokens. A rewrite
wrong only there (a kernel that reads the mask as one run of real positions, its start and its length) verified.

Every set with a past holds 128 positions or more, with one new token or about as many as the past: a few new
tokens over a short past (a chat's second turn, a speculative decoder's draft over a short context) never ran.

Findings (each one's test failed on 668156d):
- ``optimize`` verifies a rewrite wrong only at a decode step whose past ends in pads before a real new token.
- ``optimize`` verifies a rewrite wrong only at a few new tokens over a short past.
- ``optimize`` verifies a rewrite wrong only at three rows or more (fixed the same day: the short chunk runs at 3 rows).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from tests._tiny_lm import build, verifier_optimize_builds
from tests.test_review_s64_llmacc import _constant, _wrong_where


def _wrong_after_a_padded_past(path, source) -> str:
    """``source`` (the tiny LM) with noise added to its logits where a row pads the last position of its past while
    its last new token is real: a mask ``... 0 | 1``."""
    proto = onnx.load(str(source))
    for node in proto.graph.node:
        node.output[:] = ["logits_right" if out == "logits" else out for out in node.output]
    graph, node = proto.graph, helper.make_node
    vocab = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    noise = np.random.default_rng(7).standard_normal(vocab).astype(np.float32) * 3
    zero, one, two = (_constant(graph, f"c{v}", np.array(v, np.int64)) for v in (0, 1, 2))
    graph.node.extend(
        [
            node("Shape", ["past_key_values.0.key"], ["past_shape"]),
            node("Gather", ["past_shape", two], ["past"]),
            node("Greater", ["past", zero], ["has_past"]),
            node("Max", ["past", one], ["past_or_one"]),
            node("Sub", ["past_or_one", one], ["last_past"]),
            node("Gather", ["attention_mask", "last_past"], ["past_end"], axis=1),
            node("Gather", ["attention_mask", _constant(graph, "cm1", np.array(-1, np.int64))], ["new_end"], axis=1),
            node("Equal", ["past_end", zero], ["pad_there"]),
            node("Equal", ["new_end", one], ["real_here"]),
            node("And", ["pad_there", "real_here"], ["holes"]),
            node("Cast", ["holes"], ["holes_int"], to=onnx.TensorProto.INT64),
            node("ReduceMax", ["holes_int"], ["any_hole"], keepdims=0),
            node("Equal", ["any_hole", one], ["a_hole"]),
            node("And", ["a_hole", "has_past"], ["hole"]),
            node("Add", ["logits_right", _constant(graph, "noise", noise)], ["noisy"]),
            node("Where", ["hole", "noisy", "logits_right"], ["logits"]),
        ]
    )
    onnx.save(proto, str(path))
    return str(path)


def test_the_mutant_is_wrong_only_after_a_padded_past(tmp_path):
    import onnxruntime as ort

    source = build(tmp_path / "tiny.onnx")
    wrong = _wrong_after_a_padded_past(tmp_path / "wrong.onnx", source)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (source, wrong)]
    rng = np.random.default_rng(0)
    cache = rng.standard_normal((2, 1, 6, 16)).astype(np.float32)
    feed = {
        "input_ids": np.array([[3], [5]], np.int64),
        "position_ids": np.array([[6], [6]], np.int64),
        "past_key_values.0.key": cache,
        "past_key_values.0.value": cache,
    }
    left = np.ones((2, 7), np.int64)
    left[0, :2] = 0
    hole = left.copy()
    hole[1, 4:6] = 0
    same = [s.run(["logits"], {**feed, "attention_mask": left})[0] for s in sessions]
    apart = [s.run(["logits"], {**feed, "attention_mask": hole})[0] for s in sessions]
    assert np.array_equal(*same)
    assert np.abs(apart[0] - apart[1]).max() > 1


def test_a_rewrite_wrong_only_after_a_padded_past_is_not_verified(tmp_path):
    source = build(tmp_path / "tiny.onnx")
    verifier = verifier_optimize_builds(source)
    assert verifier.check(ir.load(str(source))).ok
    wrong = ir.load(_wrong_after_a_padded_past(tmp_path / "wrong.onnx", source))
    assert not verifier.check(wrong).ok, verifier.labels


def test_given_one_token_steps_get_a_copy_whose_past_ends_in_pads(tmp_path):
    # Every set a one-token step already (--dim sequence=1): nothing is cut, so the padded end comes as a copy.
    verifier = verifier_optimize_builds(build(tmp_path / "tiny.onnx"), dims={"sequence": 1})
    copies = [(label, s) for label, s in zip(verifier.labels, verifier.input_sets) if "past positions padded" in label]
    assert len(copies) == 1, verifier.labels
    mask = copies[0][1]["attention_mask"]
    assert (mask[:, -1] == 1).all() and (mask[:, -2] == 0).any(), copies[0][0]


def _wrong_at_a_short_chunk(path, source) -> str:
    """``source`` with noise on its logits where several new tokens follow a past, all under 32 positions."""
    return _wrong_where(
        path,
        "short_chunk",
        source,
        lambda graph: [
            helper.make_node("Greater", ["past", "c0"], ["has_past"]),
            helper.make_node("Greater", ["new", "c1"], ["several"]),
            helper.make_node("And", ["short", "has_past"], ["short_past"]),
            helper.make_node("And", ["short_past", "several"], ["short_chunk"]),
        ],
    )


def test_a_rewrite_wrong_only_at_a_few_tokens_over_a_short_past_is_not_verified(tmp_path):
    source = build(tmp_path / "tiny.onnx")
    verifier = verifier_optimize_builds(source)
    chunks = [inputs for label, inputs in zip(verifier.labels, verifier.input_sets) if "short chunk" in label]
    assert len(chunks) == 1, verifier.labels
    chunk = chunks[0]
    assert chunk["input_ids"].shape == (3, 4) and chunk["past_key_values.0.key"].shape[2] == 3
    assert chunk["position_ids"].tolist() == [[3, 4, 5, 6]] * 3 and chunk["attention_mask"].shape == (3, 7)
    # The cut cache is the first positions of the one the model built: the model's own cache of those tokens.
    first = verifier.input_sets[0]["past_key_values.0.key"][:, :, :3]
    assert np.array_equal(chunk["past_key_values.0.key"], np.concatenate([first] * 3))
    assert verifier.check(ir.load(str(source))).ok
    wrong = ir.load(_wrong_at_a_short_chunk(tmp_path / "wrong.onnx", source))
    assert not verifier.check(wrong).ok, verifier.labels


def test_a_rewrite_wrong_only_at_three_rows_is_not_verified(tmp_path):
    source = build(tmp_path / "tiny.onnx")
    verifier = verifier_optimize_builds(source)
    wrong = _wrong_where(
        tmp_path / "wrong.onnx",
        "three_rows",
        source,
        lambda graph: [helper.make_node("Greater", ["rows", "c2"], ["three_rows"])],
    )
    assert verifier.check(ir.load(str(source))).ok
    assert not verifier.check(ir.load(wrong)).ok, verifier.labels


def _wrong_at_a_draft_over_a_long_past(path, source, extra: str | None = None) -> str:
    """``source`` with noise on its logits where 2 to 8 new tokens follow a past of 32 positions or more: a speculative
    decoder's draft checked over a long context; with ``extra``, only where that condition holds too (the tiny LM's
    ``has_pads``: a row pads a position; ``several_rows``)."""

    def draft(graph: onnx.GraphProto) -> list:
        long_past, most = (_constant(graph, f"d{v}", np.array(v, np.int64)) for v in (31, 9))
        nodes = [
            helper.make_node("Greater", ["past", long_past], ["long"]),
            helper.make_node("Greater", ["new", "c1"], ["several"]),
            helper.make_node("Less", ["new", most], ["few"]),
            helper.make_node("And", ["long", "several"], ["long_several"]),
            helper.make_node("And", ["long_several", "few"], ["draft"]),
        ]
        return nodes + ([helper.make_node("And", ["draft", extra], ["wrong_here"])] if extra else [])

    return _wrong_where(path, "wrong_here" if extra else "draft", source, draft)


def test_a_rewrite_wrong_only_at_a_draft_over_a_long_past_is_not_verified(tmp_path):
    source = build(tmp_path / "tiny.onnx")
    verifier = verifier_optimize_builds(source)
    sets = zip(verifier.labels, verifier.input_sets)
    drafts = [inputs for label, inputs in sets if label.startswith("a draft over a long past")]
    assert len(drafts) == 1, verifier.labels
    (draft,) = drafts
    past = draft["past_key_values.0.key"].shape[2]
    assert draft["input_ids"].shape[1] == 4 and past >= 32
    assert draft["attention_mask"].shape[1] == past + 4 and (draft["attention_mask"] == 1).all()
    assert verifier.check(ir.load(str(source))).ok
    wrong = ir.load(_wrong_at_a_draft_over_a_long_past(tmp_path / "wrong.onnx", source))
    assert not verifier.check(wrong).ok, verifier.labels

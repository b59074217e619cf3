"""Hostile review of decoders' verification sets (session 68): prefills, decode steps, drafts and padded batches
generated for a model with a key/value cache, each probed by a rewrite wrong only at one kind of set.

Findings (each one's test failed on 4c55314):
- ONNX Runtime GenAI's layout: the padded prefill was cut from the second binding, a one-token step, so it was one
  token at two rows that padded nothing (labelled "row 1's first 1 and row 2's last 1 of 1 positions padded"), and a
  rewrite wrong only at a padded prefill verified.
- ONNX Runtime GenAI's layout: the only set of several rows over a past (the second binding, a one-token step) pads
  its last row's new token, so no batched decode step with every row's token real ran (GenAI's own loop over
  right-padded prompts), and a rewrite wrong only there verified.
- ONNX Runtime GenAI's layout: no padded draft (its GroupQueryAttention takes several new tokens over a past at one
  row only, and the padded draft was tried at three rows alone), and a rewrite wrong only at a padded draft verified.
- No set held a hole inside a past (``1 1 0 0 1 1 | 1``: a step after draft tokens a speculative decoder rejected
  and masked, then kept going), and a rewrite wrong only there (a kernel reading the mask as one run of real
  positions before the past's end) verified.
- A prefill of one token a row (``--dim sequence=1``) was labelled padded though it padded nothing, and at one row it
  was the prefill again.
- A present written as ``Identity(Concat(past, new))`` was no cache to verification: its padded positions, and the
  logits at new tokens the mask's tail pads, were compared, and a rewrite moving only those was rolled back.

- A decoder with a 4-D mask ``[batch, 1, sequence, total_sequence]`` was refused on generated inputs (fixed by the
  mask4d review: ``tests/test_review_s68_mask4d.py``). GenAI's layout at ``--dim batch_size=2``, which got no prompt
  of several tokens, was fixed by review s68 gaps (``tests/test_review_s68_gaps.py``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from tests._tiny_lm import build, verifier_optimize_builds
from tests.helpers import FIXTURES
from tests.test_review_s64_llmacc import _constant, _wrong_where

GENAI = FIXTURES / "llama_kv_genai.onnx"


@pytest.fixture(scope="module")
def genai():
    """The verifier ``optimize`` builds for ONNX Runtime GenAI's Llama fixture."""
    verifier = verifier_optimize_builds(GENAI)
    assert verifier.check(ir.load(str(GENAI))).ok, verifier.labels
    return verifier


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny LM and the verifier ``optimize`` builds for it."""
    source = build(tmp_path_factory.mktemp("tiny") / "tiny.onnx")
    verifier = verifier_optimize_builds(source)
    assert verifier.check(ir.load(str(source))).ok, verifier.labels
    return source, verifier


def _every_new_token_real(graph) -> list:
    """``real_batched_step``: several rows, one new token each over a past, every row's token real."""
    last = _constant(graph, "r_last", np.array(-1, np.int64))
    return [
        helper.make_node("Gather", ["attention_mask", last], ["new_column"], axis=1),
        helper.make_node("ReduceMin", ["new_column"], ["least_new"], keepdims=0),
        helper.make_node("Equal", ["least_new", "c1"], ["all_real"]),
        helper.make_node("Greater", ["past", "c0"], ["has_past"]),
        helper.make_node("And", ["has_past", "several_rows"], ["batched_past"]),
        helper.make_node("And", ["batched_past", "one_token"], ["batched_step"]),
        helper.make_node("And", ["batched_step", "all_real"], ["real_batched_step"]),
    ]


def _padded_draft(graph) -> list:
    """``padded_draft``: 2 to 8 new tokens over a past of 32 positions or more, a position padded."""
    long_past, most = (_constant(graph, f"pd{v}", np.array(v, np.int64)) for v in (31, 9))
    return [
        helper.make_node("Greater", ["past", long_past], ["long"]),
        helper.make_node("Greater", ["new", "c1"], ["several"]),
        helper.make_node("Less", ["new", most], ["few"]),
        helper.make_node("And", ["long", "several"], ["long_several"]),
        helper.make_node("And", ["long_several", "few"], ["draft"]),
        helper.make_node("And", ["draft", "has_pads"], ["padded_draft"]),
    ]


def _hole_in_a_past(graph) -> list:
    """``hole``: a row's past pads a position with a real one before and after it inside the past."""
    start, axis = (_constant(graph, f"h{v}", np.array([v], np.int64)) for v in (0, 1))
    return [
        helper.make_node("Unsqueeze", ["past", "c0"], ["past1"]),
        helper.make_node("Slice", ["attention_mask", start, "past1", axis], ["past_mask"]),
        helper.make_node("CumSum", ["past_mask", "c1"], ["ones_so_far"]),
        helper.make_node("ReduceSum", ["past_mask", axis], ["ones_in_past"], keepdims=1),
        helper.make_node("Sub", ["ones_in_past", "ones_so_far"], ["ones_after"]),
        helper.make_node("Equal", ["past_mask", "c0"], ["pad_here"]),
        helper.make_node("Greater", ["ones_so_far", "c0"], ["one_before"]),
        helper.make_node("Greater", ["ones_after", "c0"], ["one_after"]),
        helper.make_node("And", ["pad_here", "one_before"], ["pad_after_one"]),
        helper.make_node("And", ["pad_after_one", "one_after"], ["holes"]),
        helper.make_node("Cast", ["holes"], ["holes_int"], to=7),
        helper.make_node("ReduceMax", ["holes_int"], ["any_hole"], keepdims=0),
        helper.make_node("Equal", ["any_hole", "c1"], ["hole"]),
    ]


def test_genai_gets_a_padded_prefill_that_pads(genai, tmp_path):
    # Cut from the second binding (one token at two rows), the padded prefill padded nothing: one position per row,
    # and a row is never padded wholly. Its label said it padded "row 1's first 1 and row 2's last 1 of 1 positions".
    sets = [(label, s) for label, s in zip(genai.labels, genai.input_sets) if label.startswith("a padded prefill")]
    assert len(sets) == 1, genai.labels
    label, prefill = sets[0]
    mask = prefill["attention_mask"]
    assert mask.shape[0] >= 2 and mask.shape[1] >= 2 and (mask == 0).any(), (label, mask)
    wrong = ir.load(_wrong_where(tmp_path / "wrong.onnx", "padded_prefill", GENAI))
    assert not genai.check(wrong).ok, genai.labels


def test_genai_gets_a_batched_decode_step_whose_every_token_is_real(genai, tmp_path):
    # GenAI's generation loop decodes a batch of right-padded prompts: several rows, every new token real. The
    # second binding's last row pads its new token, and no other set of several rows holds a past.
    wrong = ir.load(_wrong_where(tmp_path / "wrong.onnx", "real_batched_step", GENAI, _every_new_token_real))
    assert not genai.check(wrong).ok, genai.labels


def test_genai_gets_a_padded_draft(genai, tmp_path):
    # Its GroupQueryAttention takes several new tokens over a past at one row only: the padded draft, tried at three
    # rows alone, was refused and left out.
    wrong = ir.load(_wrong_where(tmp_path / "wrong.onnx", "padded_draft", GENAI, _padded_draft))
    assert not genai.check(wrong).ok, genai.labels


def test_a_rewrite_wrong_only_at_a_hole_inside_a_past_is_not_verified(tiny, tmp_path):
    # ``1 1 0 0 1 1 | 1``: a speculative decoder masks the draft tokens it rejected and goes on; every set padded a
    # past's start or its end, never between real positions.
    source, verifier = tiny
    wrong = ir.load(_wrong_where(tmp_path / "wrong.onnx", "hole", source, _hole_in_a_past))
    assert not verifier.check(wrong).ok, verifier.labels


def test_the_hole_mutant_is_wrong_only_at_a_hole(tmp_path):
    import onnxruntime as ort

    source = build(tmp_path / "tiny.onnx")
    wrong = _wrong_where(tmp_path / "wrong.onnx", "hole", source, _hole_in_a_past)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (source, wrong)]
    cache = np.random.default_rng(0).standard_normal((1, 1, 6, 16)).astype(np.float32)
    feed = {
        "input_ids": np.array([[3]], np.int64),
        "position_ids": np.array([[6]], np.int64),
        "past_key_values.0.key": cache,
        "past_key_values.0.value": cache,
    }
    runs = {}
    for name, mask in {
        "start": [0, 0, 1, 1, 1, 1, 1],
        "end": [1, 1, 1, 1, 0, 0, 1],
        "hole": [1, 1, 0, 0, 1, 1, 1],
    }.items():
        runs[name] = [s.run(["logits"], {**feed, "attention_mask": np.array([mask], np.int64)})[0] for s in sessions]
    assert np.array_equal(*runs["start"]) and np.array_equal(*runs["end"])
    assert np.abs(runs["hole"][0] - runs["hole"][1]).max() > 1


@pytest.mark.parametrize("dims", [{"sequence": 1}, {"batch": 1, "sequence": 1}])
def test_a_prefill_of_one_token_a_row_is_not_labelled_padded(tmp_path, dims):
    # ``--dim sequence=1``: the prefill holds one token a row, which is never padded (a row padded wholly means
    # nothing); it was labelled "row 1's first 1 and row 2's last 1 of 1 positions padded" all the same, and at
    # ``--dim batch=1`` it was the prefill again.
    verifier = verifier_optimize_builds(build(tmp_path / "tiny.onnx"), dims=dims)
    for label, inputs in zip(verifier.labels, verifier.input_sets):
        if label.startswith("a padded prefill"):
            assert (inputs["attention_mask"] == 0).any(), label
        if "prefill" in label:
            assert label.startswith(("the prefill", "a prefill of several rows")), label
    several = [inputs for label, inputs in zip(verifier.labels, verifier.input_sets) if "several rows" in label]
    assert [len(inputs["input_ids"]) for inputs in several] == ([] if "batch" in dims else [2]), verifier.labels


def _with_a_4d_mask(path, source) -> str:
    """``source`` (the tiny LM) reading its mask as ``[batch, 1, sequence, total_sequence]`` (1 attends), as some
    exporters write a decoder's mask with causality inside it."""
    import onnx

    proto = onnx.load(str(source))
    (mask,) = [value for value in proto.graph.input if value.name == "attention_mask"]
    mask.CopyFrom(helper.make_tensor_value_info("attention_mask", 7, ["batch", 1, "sequence", "total_sequence"]))
    kept = []
    for node in proto.graph.node:
        if node.op_type == "Cast" and list(node.input) == ["attention_mask"]:
            kept.append(helper.make_node("Cast", ["attention_mask"], ["allowed"], to=onnx.TensorProto.BOOL))
        elif node.output[0] not in ("mb3", "allowed3", "allowed"):
            kept.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    onnx.save(proto, str(path))
    return str(path)


def test_a_decoder_with_a_4d_mask_is_verified_on_generated_inputs(tiny, tmp_path):
    source, _ = tiny
    verifier = verifier_optimize_builds(_with_a_4d_mask(tmp_path / "mask4d.onnx", source))
    assert any(label.startswith("a decode step") for label in verifier.labels), verifier.labels


def _cache_changed_at_padded_positions(path, source) -> str:
    """``source`` (the tiny LM, whose presents are ``Identity`` of the ``Concat`` of past and new keys) with its key
    cache moved by 5 at the positions its mask pads: values no real token reads, as a fused attention's differ
    there from the exporter's."""
    import onnx

    proto = onnx.load(str(source))
    for node in proto.graph.node:
        node.output[:] = ["key_right" if out == "present.0.key" else out for out in node.output]
    axes, five = (
        _constant(proto.graph, "p_axes", np.array([1, 3], np.int64)),
        _constant(proto.graph, "p5", np.float32(5)),
    )
    proto.graph.node.extend(
        [
            helper.make_node("Equal", ["attention_mask", "c0"], ["padded"]),
            helper.make_node("Unsqueeze", ["padded", axes], ["padded4"]),
            helper.make_node("Add", ["key_right", five], ["key_moved"]),
            helper.make_node("Where", ["padded4", "key_moved", "key_right"], ["present.0.key"]),
        ]
    )
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0, np.int64), "c0"))
    onnx.save(proto, str(path))
    return str(path)


def test_a_cache_output_through_identity_is_not_compared_at_padded_positions(tiny, tmp_path):
    # Exporters write a present as the Concat of the past and the new keys; an Identity after it (the tiny LM's, a
    # graph surgery's) hid that it is a cache: its padded positions, and a decoder's logits at new tokens the mask's
    # tail pads, were compared, and a rewrite that moves only what no real token reads was rolled back.
    source, verifier = tiny
    moved = ir.load(_cache_changed_at_padded_positions(tmp_path / "moved.onnx", source))
    assert verifier.check(moved).ok, verifier.check(moved).first_failure


def test_genai_at_a_batch_of_two_gets_a_prefill_of_several_tokens(tmp_path):
    verifier = verifier_optimize_builds(GENAI, dims={"batch_size": 2})

    def prompt(graph) -> list:
        return [
            helper.make_node("Greater", ["new", "c1"], ["several"]),
            helper.make_node("And", ["empty", "several"], ["a_prompt"]),
        ]

    wrong = ir.load(_wrong_where(tmp_path / "wrong.onnx", "a_prompt", GENAI, prompt))
    assert not verifier.check(wrong).ok, verifier.labels

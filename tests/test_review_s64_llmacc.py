"""Hostile review of how decoders are measured (session 64): ``compare --generate``'s language-model accuracy
(``optimizer/llm_accuracy.py``), its generation loop (``optimizer/generation.py``) and the verification ``optimize``
gives a decoder with a key/value cache (``optimizer/api.py``).

AFTERs here are BEFORE with noise added to its logits only where some shape or mask condition holds, as a kernel
taking another path there would be wrong: a one-row one-token decode step (batch 1, what a chat runs), a prefill of
several rows, a prefill with padding.

Findings (each one's test failed on 3c61ab2; the control beside the first passes on both):
- ``compare --generate --batch 1,4`` exits 0 at ``--min-cosine 0.999`` for an AFTER wrong at every decode step of
  batch 1: the language-model accuracy ran 4 rows at a time only (the one-run accuracy is a step of 128 tokens).
- ``optimize`` verifies a rewrite wrong only at a one-token step of one row: its one-token step is cut from the
  padded second binding (2 rows); no set is a step of one row.
- ``optimize`` verifies a rewrite wrong only at a padded prefill, or at a prefill of several rows: its prefill is
  the first set's one unpadded row.
- ``optimize`` verifies a rewrite wrong only where past and new tokens number under 32: every set holds 128 or
  more (a short prompt, a chat's first turn, never ran).
- Held-out text that is the calibration text cut to another length (24 of its 32 tokens), at another offset, or
  longer, is not flagged as calibration's: only rows equal to a calibration row were.
- Held-out text whose mask has pads between a row's tokens (two pieces of text in one row) was joined into one row:
  the first token after the gap was scored as the next of the last before it, and the perplexities held it.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from optimizer.generation import recognise_causal_lm
from optimizer.llm_accuracy import text_from_arrays
from tests._cli_models import run_cli
from tests._tiny_lm import VOCAB, build, verifier_optimize_builds

_QUICK = ["--generate", "--prompt-length", "8", "--new-tokens", "4", "--time-budget", "1", "--iterations", "2"]
_QUICK += ["--warmup", "0", "--threads", "1", "-q"]


def _constant(graph: onnx.GraphProto, name: str, value) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _wrong_where(path, condition: str, source=None, computing=None) -> str:
    """The tiny LM (or ``source``, a model whose logits are ``[batch, sequence, VOCAB]``) with noise (3 times a
    standard normal per token) added to its logits where ``condition`` holds: ``one_row_step`` (one row, one new
    token), ``padded_prefill`` (empty cache, a 0 in the mask), ``rows_prefill`` (empty cache, several rows),
    ``short`` (past and new tokens under 32); or, with ``computing`` (a function of the graph returning nodes that
    read those names, ``rows``, ``new``, ``past``, ``empty``, ``has_pads`` and the constants ``c0``-``c2``), the
    condition those nodes compute."""
    proto = onnx.load(str(source or build(path)))
    vocab = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value or VOCAB
    for node in proto.graph.node:
        node.output[:] = ["logits_right" if out == "logits" else out for out in node.output]
    graph, node = proto.graph, helper.make_node
    noise = np.random.default_rng(7).standard_normal(vocab).astype(np.float32) * 3
    zero, one, two = (_constant(graph, f"c{v}", np.array(v, np.int64)) for v in (0, 1, 2))
    graph.node.extend(
        [
            node("Shape", ["input_ids"], ["ids_shape"]),
            node("Gather", ["ids_shape", zero], ["rows"]),
            node("Gather", ["ids_shape", one], ["new"]),
            node("Shape", ["past_key_values.0.key"], ["past_shape"]),
            node("Gather", ["past_shape", two], ["past"]),
            node("Equal", ["past", zero], ["empty"]),
            node("ReduceMin", ["attention_mask"], ["lowest"], keepdims=0),
            node("Equal", ["lowest", zero], ["has_pads"]),
            node("Equal", ["rows", one], ["one_row"]),
            node("Greater", ["rows", one], ["several_rows"]),
            node("Equal", ["new", one], ["one_token"]),
            node("And", ["one_row", "one_token"], ["one_row_step"]),
            node("And", ["empty", "has_pads"], ["padded_prefill"]),
            node("And", ["empty", "several_rows"], ["rows_prefill"]),
            node("Shape", ["attention_mask"], ["mask_shape"]),
            node("Gather", ["mask_shape", one], ["total"]),
            node("Less", ["total", _constant(graph, "c32", np.array(32, np.int64))], ["short"]),
            *(computing(graph) if computing is not None else []),
            node("Add", ["logits_right", _constant(graph, "noise", noise)], ["noisy"]),
            node("Where", [condition, "noisy", "logits_right"], ["logits"]),
        ]
    )
    onnx.save(proto, str(path))
    return str(path)


# compare --generate


def test_an_after_wrong_at_every_decode_step_of_one_row_fails_the_gates_at_batch_1_4(tmp_path, capsys):
    before = build(tmp_path / "before.onnx")
    after = _wrong_where(tmp_path / "after.onnx", "one_row_step")
    argv = ["compare", before, after, *_QUICK, "--batch", "1,4", "--min-cosine", "0.999", "--json", tmp_path / "r"]
    code, _, err = run_cli(argv, capsys)
    llm = json.loads((tmp_path / "r").read_text())["providers"][0]["llm_accuracy"]
    assert code == 5 and "the greedy decode steps' logits" in err, (code, err, llm)
    assert llm["decode_logits_cosine"] < 0.99 and "each row alone (batch 1)" in llm["note"], llm
    # Measured 4 rows at a time, as the title says; only the cosines take the rows alone too.
    assert llm["batch"] == 4 and llm["exact_match"] == 1.0, llm


def test_a_model_compared_with_itself_at_batch_1_4_has_no_note(tmp_path, capsys):
    model = build(tmp_path / "model.onnx")
    argv = ["compare", model, model, *_QUICK, "--batch", "1,4", "--min-cosine", "0.99999", "--json", tmp_path / "r"]
    code, _, err = run_cli(argv, capsys)
    llm = json.loads((tmp_path / "r").read_text())["providers"][0]["llm_accuracy"]
    assert code == 0, err
    assert llm["batch"] == 4 and "each row alone" not in llm["note"], llm


@pytest.mark.parametrize(
    "cut", [lambda docs: docs[:, :24], lambda docs: docs[:, 4:28], lambda docs: np.concatenate([docs, docs], 1)]
)
def test_held_out_text_cut_from_the_calibration_text_is_flagged(tmp_path, cut):
    # compare's check (a whole compare --generate takes 40 s here): the calibration as compare opens it, the text as
    # --inputs gives it.
    from optimizer.compare.comparison import _calibrated_rows
    from optimizer.samples import open_samples

    model = ir.load(str(build(tmp_path / "model.onnx")))
    lm = recognise_causal_lm(model)
    docs = np.random.default_rng(3).integers(0, VOCAB, (4, 32))
    np.savez(tmp_path / "cal.npz", input_ids=docs, attention_mask=np.ones_like(docs))
    fitted = open_samples(str(tmp_path / "cal.npz"), model, flag="--calibration")
    other = np.random.default_rng(4).integers(0, VOCAB, (4, 32))
    assert _calibrated_rows(fitted, lm, text_from_arrays({"input_ids": docs}, lm, "text")) == 4
    assert _calibrated_rows(fitted, lm, text_from_arrays({"input_ids": cut(docs)}, lm, "text")) == 4
    assert _calibrated_rows(fitted, lm, text_from_arrays({"input_ids": other}, lm, "text")) == 0


def test_held_out_text_with_pads_between_a_rows_tokens_is_one_line(tmp_path, capsys):
    model = build(tmp_path / "model.onnx")
    ids = np.random.default_rng(5).integers(1, VOCAB, (2, 12))
    mask = np.ones_like(ids)
    mask[0, :2] = 0  # pads at a row's start: text
    mask[1, 5:7] = 0  # pads between tokens: two pieces joined
    np.savez(tmp_path / "text.npz", input_ids=ids, attention_mask=mask)
    code, _, err = run_cli(["compare", model, model, *_QUICK, "--inputs", tmp_path / "text.npz"], capsys)
    assert code == 2 and "row 1 masks positions between its tokens" in err and "Traceback" not in err, (code, err)
    mask[1, 5:7] = 1
    lm = recognise_causal_lm(ir.load(str(model)))
    text = text_from_arrays({"input_ids": ids, "attention_mask": mask}, lm, "text")
    assert [len(row) for row in text.rows] == [10, 12], "pads at either end are dropped, as before"


# optimize's verification of a decoder


@pytest.fixture(scope="module")
def tiny_verifier(tmp_path_factory):
    """The Verifier ``optimize`` builds for the tiny LM (generated inputs), and the model's path."""
    path = build(tmp_path_factory.mktemp("verify") / "tiny.onnx")
    return verifier_optimize_builds(path), path


@pytest.mark.parametrize("condition", ["one_row_step", "padded_prefill", "rows_prefill", "short"])
def test_verification_sees_a_rewrite_wrong_only_where_generation_goes(tiny_verifier, tmp_path, condition):
    verifier, source = tiny_verifier
    assert verifier.check(ir.load(str(source))).ok, "the model itself verifies"
    wrong = ir.load(_wrong_where(tmp_path / f"{condition}.onnx", condition, source))
    assert not verifier.check(wrong).ok, f"verified on: {verifier.labels}"


def test_held_out_rows_of_pads_only_are_said_to_be_left_out(tmp_path):
    """A row of pads only (a batch padded to a fixed count) has no next token: it is left out, and the text's
    description says how many were, not only the rows kept."""
    model = build(tmp_path / "model.onnx")
    ids = np.random.default_rng(5).integers(1, VOCAB, (3, 12))
    mask = np.ones_like(ids)
    mask[2] = 0
    lm = recognise_causal_lm(ir.load(str(model)))
    text = text_from_arrays({"input_ids": ids, "attention_mask": mask}, lm, "text")
    assert len(text.rows) == 2 and "1 of 3 left out, holding under two tokens" in text.source, text

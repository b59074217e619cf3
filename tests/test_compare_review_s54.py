"""A hostile review of ``compare --generate`` (2026-12-05): decoders wrong only where no gate looked passed them.

A model wrong only at one-token decode steps (the path generation runs) passed ``--min-cosine`` and
``--min-worst-cosine``: the gates read the teacher-forced prefill and one run over a random cache. One whose
prefill logits were scaled by 1.5 passed (a cosine does not see scale). One that ignored its attention mask
passed at ``--batch 1,4`` (accuracy ran at the first batch, unpadded). The HTML verdict led with the teacher-forced
top-1 of a model whose every continuation differed.
"""

from __future__ import annotations

import json

import pytest

from tests._cli_models import run_cli
from tests._tiny_lm import build

_GENERATE = ["--generate", "--prompt-length", "16", "--new-tokens", "8", "--time-budget", "1", "-q"]


@pytest.fixture
def before(tmp_path):
    return build(tmp_path / "before.onnx")


def test_a_model_wrong_only_at_decode_steps_fails_the_cosine_gates(before, tmp_path, capsys):
    after = build(tmp_path / "after.onnx", decode_bias=True)
    argv = ["compare", before, after, *_GENERATE, "--min-cosine", "0.9999", "--min-worst-cosine", "0.9999"]
    code, _, err = run_cli([*argv, "--json", tmp_path / "r.json"], capsys)
    assert code == 5 and "the greedy decode steps' logits" in err, err
    llm = json.loads((tmp_path / "r.json").read_text())["providers"][0]["llm_accuracy"]
    assert llm["logits_cosine"] == pytest.approx(1.0) and llm["decode_logits_cosine"] < 0.99


def test_scaled_prefill_logits_fail_the_cosine_gate(before, tmp_path, capsys):
    after = build(tmp_path / "after.onnx", prefill_scale=1.5)
    code, _, err = run_cli(["compare", before, after, *_GENERATE, "--min-cosine", "0.99"], capsys)
    assert code == 5 and "the teacher-forced logits" in err, err


def test_a_model_that_ignores_the_mask_fails_at_any_batch_list(before, tmp_path, capsys):
    after = build(tmp_path / "after.onnx", ignore_mask=True)
    code, out, err = run_cli(["compare", before, after, *_GENERATE, "--batch", "1,4", "--min-cosine", "0.999"], capsys)
    assert code == 5, err


def test_the_html_verdict_names_the_continuations(before, tmp_path, capsys):
    after = build(tmp_path / "after.onnx", decode_bias=True)
    code, _, _ = run_cli(["compare", before, after, *_GENERATE, "--html", tmp_path / "r.html"], capsys)
    page = (tmp_path / "r.html").read_text()
    assert code == 0 and "greedy continuations equal 0." in page

"""A hostile review of ``compare --generate`` and the language-model accuracy (session 56).

A decoder whose logits hold ``-inf`` (a vocabulary masked so) compared with itself failed ``--min-cosine`` and
``--min-worst-cosine`` (the cosines were NaN and -1) with a note blaming left padding, even at ``--batch 1``.
Held-out text holding a tokenizer's ``attention_mask`` was refused for a model without a mask, as one step's
inputs missing the cache. A stacked cache (``past_0`` ``[2, batch, heads, sequence, head size]``) was refused as
"no output holds it one step longer" (then for its rank; since session 70 it is generated with). A model fixing its
batch at 1, run at ``--batch 2``, was refused with a hint at its position table.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests._cli_models import run_cli
from tests._tiny_lm import VOCAB, build
from tests.test_generation import bigram_lm

_GENERATE = ["--generate", "--prompt-length", "8", "--new-tokens", "4", "--time-budget", "1", "--iterations", "3"]
_QUICK = [*_GENERATE, "--warmup", "0", "-q"]


def _masked_vocabulary(path, tokens) -> str:
    """The tiny LM with the logits of ``tokens`` at ``-inf`` (never chosen, probability 0)."""
    proto = onnx.load(str(build(path)))
    for node in proto.graph.node:
        node.output[:] = ["logits_open" if out == "logits" else out for out in node.output]
    bias = np.zeros(VOCAB, np.float32)
    bias[list(tokens)] = -np.inf
    proto.graph.initializer.append(numpy_helper.from_array(bias, "vocabulary_mask"))
    proto.graph.node.append(helper.make_node("Add", ["logits_open", "vocabulary_mask"], ["logits"]))
    onnx.save(proto, str(path))
    return str(path)


def test_a_model_with_a_masked_vocabulary_agrees_with_itself(tmp_path, capsys):
    model = _masked_vocabulary(tmp_path / "masked.onnx", [3])
    text = np.random.default_rng(5).integers(0, VOCAB, (3, 12))
    text[:, 5] = 3  # a next token of probability 0: both perplexities are infinite
    np.savez(tmp_path / "text.npz", input_ids=text)
    gates = ["--min-cosine", "0.9999", "--min-worst-cosine", "0.9999"]
    for batch in ("1", "1,2"):
        argv = ["compare", model, model, *_QUICK, "--batch", batch, *gates, "--inputs", tmp_path / "text.npz"]
        code, _, err = run_cli([*argv, "--json", tmp_path / "r.json"], capsys)
        assert code == 0, err
        llm = json.loads((tmp_path / "r.json").read_text())["providers"][0]["llm_accuracy"]
        cosines = ("logits_cosine", "logits_worst_cosine", "decode_logits_cosine", "decode_logits_worst_cosine")
        assert [llm[name] for name in cosines] == [1.0] * 4, llm
        assert llm["note"] == "" and "RuntimeWarning" not in err, (llm["note"], err)
        assert (llm["perplexity_before"], llm["perplexity_after"], llm["perplexity_delta"]) == ("inf", "inf", 0.0)


def test_a_logit_infinite_in_one_model_only_still_fails(tmp_path, capsys):
    before = _masked_vocabulary(tmp_path / "before.onnx", [3])
    after = _masked_vocabulary(tmp_path / "after.onnx", [4])
    code, _, err = run_cli(["compare", before, after, *_QUICK, "--batch", "1,2", "--min-cosine", "0.5"], capsys)
    assert code == 5 and "teacher-forced logits" in err and "cosine nan" in err, err


def test_held_out_text_with_a_mask_scores_a_model_that_takes_none(tmp_path, capsys):
    model = bigram_lm(str(tmp_path / "bigram.onnx"))
    ids = np.random.default_rng(2).integers(0, 32, (3, 9))
    mask = np.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row: its pads are not text
    np.savez(tmp_path / "text.npz", input_ids=ids, attention_mask=mask)
    argv = ["compare", model, model, *_QUICK, "--inputs", tmp_path / "text.npz", "--json", tmp_path / "r.json"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    llm = json.loads((tmp_path / "r.json").read_text())["providers"][0]["llm_accuracy"]
    assert llm["real_text"] and llm["scored_tokens"] == 5 + 8 + 8, llm


def test_a_stacked_cache_is_generated_with(tmp_path, capsys):
    # Refused for its rank ("cache input 'past_0' has rank 5") until session 70, which reads ONNX Runtime's own
    # GPT-2 layout ``[2, batch, heads, past, head size]`` as a cache (tests/test_review_s70_stacked.py).
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["x"]),
        helper.make_node("MatMul", ["x", "W"], ["logits"]),
        helper.make_node("Unsqueeze", ["x", "axes"], ["x5"]),  # [1, batch, 1, sequence, 4]
        helper.make_node("Concat", ["x5", "x5"], ["kv"], axis=0),
        helper.make_node("Concat", ["past_0", "kv"], ["present_0"], axis=3),
    ]
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        nodes,
        "stacked",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("past_0", TensorProto.FLOAT, [2, "batch", 1, "past_sequence", 4]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 16]),
            helper.make_tensor_value_info("present_0", TensorProto.FLOAT, [2, "batch", 1, "total_sequence", 4]),
        ],
        [
            numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "E"),
            numpy_helper.from_array(rng.standard_normal((4, 16)).astype(np.float32), "W"),
            numpy_helper.from_array(np.array([0, 2], np.int64), "axes"),
        ],
    )
    path = str(tmp_path / "stacked.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, _, err = run_cli(["compare", path, path, *_QUICK, "--json", tmp_path / "r.json"], capsys)
    assert code == 0 and "Traceback" not in err, err
    llm = json.loads((tmp_path / "r.json").read_text())["providers"][0]["llm_accuracy"]
    assert llm["top1_agreement"] == 1.0, llm


@pytest.mark.parametrize("command", ["compare", "optimize"])
def test_a_model_fixing_its_batch_at_1_is_refused_at_another_batch(tmp_path, capsys, command):
    proto = onnx.load(str(build(tmp_path / "tiny.onnx")))
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    path = str(tmp_path / "batch1.onnx")
    onnx.save(proto, path)
    models = [path, path] if command == "compare" else [path, "-o", tmp_path / "out.onnx", "--compare"]
    code, _, err = run_cli([command, *models, *_QUICK, "--batch", "1,2"], capsys)
    assert code != 0 and "fixes its batch at 1" in err and "position table" not in err, err
    assert not (tmp_path / "out.onnx").exists()
    code, _, err = run_cli(["compare", path, path, *_QUICK, "--batch", "1"], capsys)
    assert code == 0, err


def test_calibration_beside_held_out_text_does_not_ask_for_held_out_inputs(tmp_path):
    from optimizer.compare.comparison import CompareSettings, compare

    model = str(build(tmp_path / "tiny.onnx"))
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "text.npz", input_ids=rng.integers(0, VOCAB, (3, 10)))
    empty = np.zeros((2, 1, 0, 16), np.float32)
    calibration = {
        "input_ids": rng.integers(0, VOCAB, (2, 10)),
        "attention_mask": np.ones((2, 10), np.int64),
        "position_ids": np.tile(np.arange(10), (2, 1)),
        "past_key_values.0.key": empty,
        "past_key_values.0.value": empty,
    }
    np.savez(tmp_path / "cal.npz", **calibration)
    settings = CompareSettings(generate=True, prompt_length=6, new_tokens=3, iterations=3, warmup=0, time_budget=1)
    report = compare(
        model, model, settings=settings, inputs=str(tmp_path / "text.npz"), calibration=str(tmp_path / "cal.npz")
    )
    warned = [line for line in report.warnings if line.startswith("accuracy measured on --calibration")]
    assert warned and "give held-out --inputs" not in warned[0], report.warnings
    assert report.providers[0].llm_accuracy.real_text


def test_a_model_wrong_at_decode_steps_fails_the_gates_at_new_tokens_1(tmp_path, capsys):
    # One new token is the prefill's choice alone: no decode step's logits were compared, and the step cosines
    # read 1.0 for a model wrong at every step (the one its generation timing ran).
    before, after = build(tmp_path / "before.onnx"), build(tmp_path / "after.onnx", decode_bias=True)
    quick = ["--generate", "--prompt-length", "8", "--new-tokens", "1", "--time-budget", "1", "--iterations", "3", "-q"]
    argv = ["compare", before, after, *quick, "--min-cosine", "0.999", "--json", tmp_path / "r"]
    code, _, err = run_cli(argv, capsys)
    assert code == 5 and "the greedy decode steps' logits" in err, err
    llm = json.loads((tmp_path / "r").read_text())["providers"][0]["llm_accuracy"]
    assert llm["continuation_tokens"] == 1 and llm["exact_match"] == 1.0, llm

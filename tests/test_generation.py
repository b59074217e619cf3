"""Causal LMs with a KV cache: recognition, the generation loop, LLM accuracy and ``compare --generate``.

Runs on the four ``*_kv_*.onnx`` fixtures (vocabulary 256, 128 positions: prompts and
continuations stay short) and on a toy bigram LM built here, which has no attention mask,
no position ids and cache names that say nothing.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.cli import main
from optimizer.compare.comparison import CompareSettings, compare
from optimizer.errors import InputSpecError, InvalidModelError, OptionError
from optimizer.generation import CausalLMSession, random_prompts, recognise_causal_lm
from optimizer.llm_accuracy import measure_llm_accuracy, random_text
from optimizer.runtime import cuda_unavailable_reason
from tests.helpers import FIXTURES

KV_FIXTURES = {
    "gpt2_kv_legacy": 4,
    "gpt2_kv_dynamo": 4,
    "llama_kv_legacy": 2,
    "llama_kv_dynamo": 2,
    "llama_kv_dynamo_opset23": 2,
    "llama_kv_dynamo_opset23_optimized": 2,
}
VOCAB = 256
QUICK = dict(threads=1, iterations=3, warmup=1, time_budget=2.0, prompt_length=6, new_tokens=3)


def fixture(name: str) -> str:
    return str(FIXTURES / f"{name}.onnx")


def session(path: str) -> CausalLMSession:
    lm = recognise_causal_lm(ir.load(path))
    assert not isinstance(lm, str), lm
    return CausalLMSession(path, lm, threads=1)


def renamed(name: str, tmp_path, rename) -> str:
    """The fixture with each cache input and output renamed by ``rename(name)``."""
    model = ir.load(fixture(name))
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.name.startswith(("past", "present")):
            value.name = rename(value.name)
    path = str(tmp_path / f"{name}_renamed.onnx")
    ir.save(model, path)
    return path


def with_noisy_lm_head(name: str, tmp_path, scale: float) -> str:
    """The fixture with random noise added to its LM head's output (a bias the original has not)."""
    proto = onnx.load(fixture(name))
    for node in proto.graph.node:
        node.output[:] = ["logits_exact" if out == "logits" else out for out in node.output]
    noise = np.random.default_rng(7).standard_normal(VOCAB).astype(np.float32) * scale
    proto.graph.initializer.append(numpy_helper.from_array(noise, "lm_head_noise"))
    proto.graph.node.append(helper.make_node("Add", ["logits_exact", "lm_head_noise"], ["logits"]))
    path = str(tmp_path / f"{name}_noisy.onnx")
    onnx.save(proto, path)
    return path


def bigram_lm(path: str, carries_cache: bool = True) -> str:
    """A toy causal LM without attention mask or position ids: logits read the current token only,
    and its cache (named ``state_in``/``state_out``) holds the token embeddings (the new ones
    first, not after the past, without ``carries_cache``)."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"]),
            helper.make_node("MatMul", ["embedded", "head"], ["logits"]),
            helper.make_node("Unsqueeze", ["embedded", "axis"], ["step_state"]),
            helper.make_node(
                "Concat",
                ["state_in", "step_state"] if carries_cache else ["step_state", "state_in"],
                ["state_out"],
                axis=2,
            ),
        ],
        "bigram",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, ["batch", 1, "past", 8]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 32]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["batch", 1, "total", 8]),
        ],
        [
            numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "embedding"),
            numpy_helper.from_array(rng.standard_normal((8, 32)).astype(np.float32), "head"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# Recognition


@pytest.mark.parametrize("name", sorted(KV_FIXTURES))
def test_recognises_the_kv_fixtures(name):
    lm = recognise_causal_lm(ir.load(fixture(name)))
    assert not isinstance(lm, str), lm
    assert (lm.input_ids, lm.attention_mask, lm.position_ids, lm.logits) == (
        "input_ids",
        "attention_mask",
        "position_ids",
        "logits",
    )
    assert [(pair.past, pair.present) for pair in lm.cache] == [
        (f"past_key_values.{i}.{kind}", f"present.{i}.{kind}") for i in range(2) for kind in ("key", "value")
    ]
    assert {pair.matched_by for pair in lm.cache} == {"name"}
    assert {pair.sequence_axis for pair in lm.cache} == {2}
    assert (lm.kv_heads, lm.head_size, lm.cache_dtype, lm.vocab) == (KV_FIXTURES[name], 16, np.float32, VOCAB)


def test_recognises_past_key_i_names(tmp_path):
    # past_key_values.0.value -> past_value_0, present.1.key -> present_key_1
    def rename(name):
        parts = name.split(".")
        return f"{parts[0].split('_')[0]}_{parts[-1]}_{parts[1]}"

    lm = recognise_causal_lm(ir.load(renamed("gpt2_kv_dynamo", tmp_path, rename)))
    assert [(pair.past, pair.present, pair.matched_by) for pair in lm.cache][:2] == [
        ("past_key_0", "present_key_0", "name"),
        ("past_value_0", "present_value_0", "name"),
    ]


def test_pairs_caches_by_shape_where_names_say_nothing(tmp_path):
    # Every cache of the model has one shape: the pairs follow the order of inputs and outputs,
    # and a probe step checks each present begins with its past.
    path = renamed(
        "llama_kv_legacy", tmp_path, lambda name: name.replace("past_key_values", "in").replace("present", "out")
    )
    lm = recognise_causal_lm(ir.load(path))
    assert [(pair.past, pair.present, pair.matched_by) for pair in lm.cache][0] == ("in.0.key", "out.0.key", "shape")
    CausalLMSession(path, lm, threads=1).check_cache_pairs()


def test_the_probe_step_pairs_what_shapes_cannot_tell_apart(tmp_path):
    # Cache outputs in another order than their inputs, and names that say nothing: pairing by
    # shape crosses them; the probe step finds which present carries each past, and the model
    # generates what the original does.
    model = ir.load(fixture("llama_kv_legacy"))
    for value in [*model.graph.inputs, *model.graph.outputs]:
        value.name = value.name.replace("past_key_values", "in").replace("present", "out")
    logits, *presents = list(model.graph.outputs)
    model.graph.outputs.clear()
    model.graph.outputs.extend([logits, *presents[1::2], *presents[0::2]])  # values first
    path = str(tmp_path / "reordered.onnx")
    ir.save(model, path)
    lm = recognise_causal_lm(ir.load(path))
    assert (lm.cache[0].past, lm.cache[0].present, lm.cache[0].matched_by) == ("in.0.key", "out.0.value", "shape")
    reordered = CausalLMSession(path, lm, threads=1)
    reordered.check_cache_pairs()
    assert [(pair.past, pair.present) for pair in reordered.lm.cache] == [
        (f"in.{i}.{kind}", f"out.{i}.{kind}") for i in range(2) for kind in ("key", "value")
    ]
    assert {pair.matched_by for pair in reordered.lm.cache} == {"probe"}
    ids, mask = random_prompts(2, 6, VOCAB, padded=True)
    original = session(fixture("llama_kv_legacy")).greedy(ids, mask, 4).tokens
    np.testing.assert_array_equal(reordered.greedy(ids, mask, 4).tokens, original)


def test_outputs_that_do_not_carry_the_cache_forward_are_refused(tmp_path):
    path = bigram_lm(str(tmp_path / "bigram.onnx"), carries_cache=False)
    bigram = CausalLMSession(path, recognise_causal_lm(ir.load(path)), threads=1)
    with pytest.raises(InvalidModelError, match="no output begins with cache input 'state_in'"):
        bigram.check_cache_pairs()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bert_legacy", "no input is a key/value cache"),
        ("gpt2_legacy", "no input is a key/value cache"),
        ("resnet_legacy", "no input holds token ids"),
    ],
)
def test_models_without_a_kv_cache_are_refused_with_a_reason(name, reason):
    assert reason in recognise_causal_lm(ir.load(fixture(name)))


def test_a_cache_that_does_not_grow_is_refused():
    # ONNX Runtime GenAI's shared buffers: the present is the past's buffer, of the same size.
    model = ir.load(fixture("gpt2_kv_legacy"))
    for value in model.graph.outputs[1:]:
        value.shape = ir.Shape(["batch", 4, "past_sequence", 16])
    reason = recognise_causal_lm(model)
    assert "'past_key_values.0.key' has no symbolic dim that output 'present.0.key' makes longer" in reason


# The generation loop


@pytest.mark.parametrize("name", sorted(KV_FIXTURES))
def test_greedy_with_the_cache_picks_what_the_whole_sequence_picks(name):
    # Each step with the cache must choose the token that a run over the whole sequence so far
    # (no cache) chooses: positions, mask and cache are fed right, left padding included.
    lm_session = session(fixture(name))
    ids, mask = random_prompts(2, 6, VOCAB, padded=True)
    assert mask[1, 0] == 0, "row 1 is left-padded"
    tokens = lm_session.greedy(ids, mask, steps=3).tokens
    assert tokens.shape == (2, 4)
    for step in range(4):
        full_ids = np.concatenate([ids, tokens[:, :step]], axis=1)
        full_mask = np.concatenate([mask, np.ones((2, step), dtype=mask.dtype)], axis=1)
        expected = lm_session.logits(full_ids, full_mask)[:, -1].argmax(-1)
        np.testing.assert_array_equal(tokens[:, step], expected)


def test_a_model_without_mask_or_positions_generates(tmp_path):
    path = bigram_lm(str(tmp_path / "bigram.onnx"))
    lm = recognise_causal_lm(ir.load(path))
    assert (lm.attention_mask, lm.position_ids, lm.vocab) == (None, None, 32)
    assert [(pair.past, pair.present, pair.matched_by) for pair in lm.cache] == [("state_in", "state_out", "shape")]
    bigram = CausalLMSession(path, lm, threads=1)
    bigram.check_cache_pairs()
    ids, mask = random_prompts(2, 5, 32, padded=False)
    run = bigram.greedy(ids, mask, steps=4)
    assert run.tokens.shape == (2, 5) and run.first_token_seconds > 0 and run.decode_seconds > 0
    accuracy = measure_llm_accuracy(
        bigram, bigram, random_text(32, 5, padded=False), batch=2, prompt_length=5, new_tokens=4
    )
    assert accuracy.top1_agreement == accuracy.exact_match == 1.0


def test_a_position_table_too_short_is_one_line_naming_the_length():
    gpt2 = session(fixture("gpt2_kv_legacy"))
    ids, mask = random_prompts(1, 200, VOCAB, padded=False)
    with pytest.raises(InvalidModelError, match="cannot run it at 200 tokens"):
        gpt2.greedy(ids, mask, steps=1)


@pytest.mark.skipif(cuda_unavailable_reason() is not None, reason=f"needs CUDA: {cuda_unavailable_reason()}")
def test_the_cache_stays_on_the_gpu_and_generates_what_the_cpu_generates():
    path = fixture("llama_kv_dynamo")
    lm = recognise_causal_lm(ir.load(path))
    gpu = CausalLMSession(path, lm, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert gpu.on_device
    gpu.check_cache_pairs()
    ids, mask = random_prompts(2, 6, VOCAB, padded=True)
    np.testing.assert_array_equal(gpu.greedy(ids, mask, 4).tokens, session(path).greedy(ids, mask, 4).tokens)


# Language-model accuracy


@pytest.mark.parametrize("name", sorted(KV_FIXTURES))
def test_a_model_agrees_with_itself(name):
    before, after = session(fixture(name)), session(fixture(name))
    accuracy = measure_llm_accuracy(
        before, after, random_text(VOCAB, 8, padded=True), batch=2, prompt_length=6, new_tokens=4
    )
    assert accuracy.top1_agreement == accuracy.exact_match == accuracy.prefix_agreement == 1.0
    assert accuracy.perplexity_delta == 0.0 and accuracy.perplexity_before > 1
    assert accuracy.scored_tokens == 7 + 6 + 5 + 4, "left-padded rows score their real tokens only"
    assert not accuracy.real_text and "not real text" in accuracy.note


@pytest.mark.parametrize("name", ["gpt2_kv_dynamo", "llama_kv_legacy"])
def test_a_noisy_lm_head_disagrees(name, tmp_path):
    # Noise a tenth of the logits' spread on these random-weight models: some next tokens change, not all.
    before, after = session(fixture(name)), session(with_noisy_lm_head(name, tmp_path, scale=0.1))
    accuracy = measure_llm_accuracy(
        before, after, random_text(VOCAB, 12, padded=True), batch=2, prompt_length=8, new_tokens=6
    )
    assert 0 < accuracy.top1_agreement < 0.9
    assert accuracy.exact_match < 1 and accuracy.prefix_agreement < 1
    assert accuracy.perplexity_delta != 0


# compare --generate


def test_compare_generate_reports_ttft_tokens_per_second_and_llm_accuracy():
    settings = CompareSettings(batches=(1, 2), generate=True, **QUICK)
    report = compare(fixture("llama_kv_legacy"), fixture("llama_kv_dynamo"), settings=settings)
    (cpu,) = report.providers
    assert not cpu.batches, "generation replaces the one-run latency"
    assert [g.batch for g in cpu.generation] == [1, 2]
    for g in cpu.generation:
        assert (g.prompt_length, g.new_tokens) == (6, 3)
        assert g.ttft_before.runs == g.ttft_after.runs == g.decode_before.runs == 3
        assert g.ttft_ratio.low <= g.ttft_ratio.high
        assert g.tokens_per_s_after == pytest.approx(g.batch * 3 / (g.decode_after.median_ms / 1000))
        assert g.tokens_per_s_ratio.ratio == pytest.approx(g.tokens_per_s_after / g.tokens_per_s_before)
    assert cpu.llm_accuracy.top1_agreement > 0.99 and cpu.llm_accuracy.exact_match == 1.0
    assert [a.name for a in cpu.accuracy][0] == "logits", "per-output accuracy stays"


def test_cli_compare_generate_prints_and_writes_the_figures(tmp_path, capsys):
    json_path, html_path = tmp_path / "g.json", tmp_path / "g.html"
    flags = ["--threads", "1", "--iterations", "3", "--warmup", "1", "--time-budget", "2", "--batch", "2"]
    flags += ["--prompt-length", "6", "--new-tokens", "3", "--json", str(json_path), "--html", str(html_path)]
    code = main(["compare", fixture("gpt2_kv_legacy"), fixture("gpt2_kv_dynamo"), "--generate", *flags])
    assert code == 0
    out = capsys.readouterr().out
    assert "TTFT" in out and "tokens/s" in out and "as language models" in out and "perplexity" in out
    provider = json.loads(json_path.read_text())["providers"][0]
    (generation,) = provider["generation"]
    assert set(generation) >= {
        "batch",
        "prompt_length",
        "new_tokens",
        "ttft_before",
        "ttft_after",
        "ttft_ratio",
        "decode_before",
        "decode_after",
        "tokens_per_s_before",
        "tokens_per_s_after",
        "tokens_per_s_ratio",
    }
    assert set(generation["ttft_ratio"]) == {"ratio", "low", "high", "confidence", "trustworthy", "warning"}
    assert len(generation["samples_ttft_before_ms"]) == generation["ttft_before"]["runs"]
    assert set(provider["llm_accuracy"]) >= {
        "text",
        "real_text",
        "top1_agreement",
        "perplexity_before",
        "perplexity_after",
        "perplexity_delta",
        "exact_match",
        "prefix_agreement",
        "continuation_tokens",
        "note",
    }
    assert "TTFT" in html_path.read_text()


def test_held_out_text_in_inputs_is_scored(tmp_path, capsys):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, VOCAB, (3, 10), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # right padding, as tokenizers pad by default
    text = tmp_path / "text.npz"
    np.savez(text, input_ids=ids, attention_mask=mask)
    json_path = tmp_path / "t.json"
    flags = ["--threads", "1", "--iterations", "2", "--warmup", "0", "--prompt-length", "4", "--new-tokens", "2"]
    model = fixture("llama_kv_dynamo")
    assert main(["compare", model, model, "--generate", "--inputs", str(text), "--json", str(json_path), *flags]) == 0
    llm = json.loads(json_path.read_text())["providers"][0]["llm_accuracy"]
    assert llm["real_text"] and llm["text"] == f"--inputs {text} (3 rows)" and not llm["note"]
    assert llm["scored_tokens"] == 9 + 6 + 9 and llm["prompts"] == 3 and llm["top1_agreement"] == 1.0


def test_generate_on_a_model_without_a_cache_is_one_line(capsys):
    code = main(["compare", fixture("bert_legacy"), fixture("bert_legacy"), "--generate"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "--generate needs a causal LM with a KV cache" in error and "no input is a key/value cache" in error


@pytest.mark.parametrize("token", [VOCAB, -1])
def test_text_with_ids_outside_the_vocabulary_is_refused(token):
    ids = np.full((1, 4), token, dtype=np.int64)
    with pytest.raises(InputSpecError, match="outside the vocabulary"):
        compare(
            fixture("gpt2_kv_legacy"),
            fixture("gpt2_kv_legacy"),
            settings=CompareSettings(generate=True, **QUICK),
            inputs={"input_ids": ids},
        )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prompt_length", 0, "--prompt-length 0"),
        ("new_tokens", -1, "--new-tokens -1"),
        ("generate", "yes", "--generate"),
        ("prompt_length", 10**9, "the token ids alone take 7.45 GiB"),
    ],
)
def test_bad_generation_settings_are_refused(field, value, message):
    with pytest.raises(OptionError, match=message):
        CompareSettings(**{**QUICK, "generate": True, field: value})

"""A hostile review of ``compare --generate``, the generation benchmark and the language-model accuracy (session 58).

``optimize --max-sequence 32 --compare`` (with ``--generate`` or not) on a decoder whose rotary it fuses exited 2 after
writing its model: the comparison drew its one run's inputs at 128 past and 128 new tokens, which BEFORE ran and
AFTER, whose fused cos/sin caches end at 32 rows, refused with ONNX Runtime's words ("Updating cos_cache and sin_cache
in RotaryEmbedding is not currently supported"; "position_ids value 200 ... is out of range" at 200).

Qwen2-VL's and Qwen3-VL's decoders (multimodal rotary ``position_ids`` ``[3, batch, sequence]``) were refused by
``--generate`` saying "input 'position_ids' is neither the token ids, the attention mask, the position ids nor a
cache": the refusal now says what the input is and what generation feeds.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optimizer.generation import recognise_causal_lm
from tests._cli_models import run_cli
from tests.helpers import FIXTURES
from tests.test_generation import bigram_lm

_QUICK = ["--time-budget", "0.5", "--iterations", "3", "--warmup", "0", "-q"]


def test_optimize_with_a_short_max_sequence_compares_within_it(tmp_path, capsys):
    model, after = FIXTURES / "llama_kv_legacy.onnx", tmp_path / "after.onnx"
    generate = ["--generate", "--prompt-length", "8", "--new-tokens", "4"]
    argv = ["optimize", model, "-o", after, "--max-sequence", "32", "--compare", *generate, *_QUICK]
    code, _, err = run_cli([*argv, "--compare-json", tmp_path / "o.json"], capsys)
    assert code == 0, err
    provider = json.loads((tmp_path / "o.json").read_text())["providers"][0]
    assert provider["accuracy"] and provider["llm_accuracy"]["top1_agreement"] > 0.99, provider
    # The one run alone, on the written model: generated within its tables too.
    code, _, err = run_cli(["compare", model, after, *_QUICK, "--json", tmp_path / "c.json"], capsys)
    assert code == 0, err
    accuracy = json.loads((tmp_path / "c.json").read_text())["providers"][0]["accuracy"]
    assert min(output["cosine"] for output in accuracy) > 0.9999, accuracy


@pytest.mark.parametrize(
    ("name", "dtype", "shape", "said"),
    [
        (
            "position_ids",
            TensorProto.INT64,
            [3, "batch", "sequence"],
            "is INT64 [3, batch, sequence]: generation feeds position ids only as an integer [batch, sequence] tensor",
        ),
        (
            "attention_mask",
            TensorProto.FLOAT,
            ["batch", 1, "sequence", "total"],
            "is FLOAT [batch, 1, sequence, total]: generation feeds attention mask only as",
        ),
    ],
)
def test_an_input_named_for_a_role_in_another_shape_is_refused_as_such(tmp_path, name, dtype, shape, said):
    proto = onnx.load(bigram_lm(str(tmp_path / "lm.onnx")))
    proto.graph.input.append(helper.make_tensor_value_info(name, dtype, shape))  # read by nothing: its shape alone
    reason = recognise_causal_lm(ir.from_proto(proto))
    assert isinstance(reason, str) and f"input '{name}' {said}" in reason, reason
    assert "neither" not in reason


def test_a_second_token_ids_input_is_still_neither(tmp_path):
    proto = onnx.load(bigram_lm(str(tmp_path / "lm.onnx")))
    proto.graph.input.append(helper.make_tensor_value_info("decoder_input_ids", TensorProto.INT64, ["b", "s"]))
    reason = recognise_causal_lm(ir.from_proto(proto))
    assert "input 'decoder_input_ids' is neither the token ids" in reason, reason


def _generation(batch: int, noisy: bool):
    from optimizer.compare.generation_timing import GenerationResult
    from optimizer.compare.stats import LatencySummary, paired_ratio

    rng = np.random.default_rng(batch)
    spread = 3.0 if noisy else 0.01
    ttft_before, ttft_after = 20 * (1 + spread * rng.random(30)), 15 * (1 + spread * rng.random(30))
    decode_before, decode_after = 100 * (1 + spread * rng.random(30)), 80 * (1 + spread * rng.random(30))
    return GenerationResult(
        batch,
        128,
        32,
        LatencySummary.of(ttft_before / 1000),
        LatencySummary.of(ttft_after / 1000),
        paired_ratio(ttft_before, ttft_after),
        LatencySummary.of(decode_before / 1000),
        LatencySummary.of(decode_after / 1000),
        batch * 32 / (np.median(decode_before) / 1000),
        batch * 32 / (np.median(decode_after) / 1000),
        paired_ratio(decode_after, decode_before),
        ttft_before.tolist(),
        ttft_after.tolist(),
        decode_before.tolist(),
        decode_after.tolist(),
    )


def test_the_generation_verdict_leads_with_a_batch_size_whose_intervals_can_be_trusted():
    # As the one-run verdict does (``_Headline``'s docstring): it led with the first --batch, however noisy.
    from optimizer.compare.comparison import ComparisonReport, ModelSummary, ProviderResult
    from optimizer.compare.html import render_html, verdict

    noisy, calm = _generation(1, noisy=True), _generation(8, noisy=False)
    assert not noisy.ttft_ratio.trustworthy and calm.ttft_ratio.trustworthy and calm.tokens_per_s_ratio.trustworthy
    report = ComparisonReport(
        environment={"onnxruntime": "1.32.0"},
        before=ModelSummary("before.onnx", 1000, 10, 100),
        after=ModelSummary("after.onnx", 1000, 10, 100),
        providers=[ProviderResult("cpu", True, generation=[noisy, calm])],
        warnings=[],
    )
    assert verdict(report).startswith(f"AFTER {calm.ttft_ratio.ratio:.2f}× time to first token")
    page = render_html(report)
    assert "latency on cpu at batch 8" in page
    card = page[page.index("id='card-latency'") : page.index("id='card-size'")]
    assert f"batch 1: {noisy.ttft_ratio.ratio:.3f}× time to first token" in card


def test_a_tokenizers_attention_mask_masks_the_text_of_a_model_naming_its_mask_otherwise(tmp_path, capsys):
    # It was ignored as matching no graph input ("'attention_mask' matches no graph input: ignored"), and the
    # pads scored as tokens: 14 scored tokens where the text has 7.
    proto = onnx.load(str(FIXTURES / "llama_kv_legacy.onnx"))
    for value in proto.graph.input:
        if value.name == "attention_mask":
            value.name = "attn_mask"
    for node in proto.graph.node:
        node.input[:] = ["attn_mask" if name == "attention_mask" else name for name in node.input]
    model = tmp_path / "attn_mask.onnx"
    onnx.save(proto, model)
    ids = np.array([[0, 0, 0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 0, 0, 0]])
    np.savez(tmp_path / "text.npz", input_ids=ids, attention_mask=(ids != 0).astype(np.int64))
    generate = ["--generate", "--prompt-length", "3", "--new-tokens", "2", "--batch", "2"]
    argv = ["compare", model, model, *generate, *_QUICK, "--inputs", tmp_path / "text.npz"]
    code, _, err = run_cli([*argv, "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    llm = report["providers"][0]["llm_accuracy"]
    assert (llm["sequences"], llm["scored_tokens"]) == (2, 3 + 4), llm
    assert not any("attention_mask" in warning for warning in report["warnings"]), report["warnings"]

"""Decoders with a KV cache in the layouts Optimum and ONNX Runtime GenAI produce.

``*_kv_optimum.onnx`` and ``llama_kv_genai.onnx`` (tests/fixtures/export_layout_fixtures.py)
hold the same seeded weights as the legacy/dynamo ``*_kv_*.onnx`` fixtures, and
``decoder_layouts_greedy.json`` PyTorch's greedy tokens for them. Every layout, before and
after graphopt, must generate exactly those tokens (metamorphic: one model, three exporters).

GenAI's decoder is already fused (GroupQueryAttention with rotary inside, packed QKV,
SkipSimplifiedLayerNormalization); it names its caches' head size ``kv_cache_dim``, has no
``position_ids``, reads rotary tables of 128 positions and takes several new tokens over a
past only at batch 1: graphopt must bind its inputs within that, not refuse or roll back.
Its GroupQueryAttention reads the mask only as each row's length (tokens from position 0 of
the cache, pads after them): the generation loop right-pads its prompts.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import optimizer
from optimizer.compare.comparison import CompareSettings, compare
from optimizer.generation import CausalLMSession, recognise_causal_lm, with_model_cache
from optimizer.inputs import (
    alternate_binding,
    bind_dims,
    cache_head_sizes,
    chunks_only_at_batch_one,
    longest_cache,
    make_inputs,
)
from optimizer.report import STATUS_APPLIED, STATUS_UNCHANGED
from tests.helpers import FIXTURES

LAYERS = 2
STEPS = 8
REFERENCE = json.loads((FIXTURES / "decoder_layouts_greedy.json").read_text())
# fixture -> (model in REFERENCE, prompts it is checked on)
LAYOUTS = {
    "llama_kv_legacy": ("llama", ("batch1", "batch2")),
    "llama_kv_dynamo": ("llama", ("batch1", "batch2")),
    "llama_kv_optimum": ("llama", ("batch1", "batch2")),
    "llama_kv_genai": ("llama", ("batch1", "batch2")),
    "gpt2_kv_legacy": ("gpt2", ("batch1", "batch2")),
    "gpt2_kv_dynamo": ("gpt2", ("batch1", "batch2")),
    "gpt2_kv_optimum": ("gpt2", ("batch1", "batch2")),
}
NEW_LAYOUTS = ["llama_kv_optimum", "gpt2_kv_optimum", "llama_kv_genai"]


def greedy_tokens(path, fixture: str) -> dict[str, list]:
    lm = recognise_causal_lm(ir.load(path))
    assert not isinstance(lm, str), lm
    session = CausalLMSession(str(path), lm, threads=1)
    session.check_cache_pairs()
    model, prompts = LAYOUTS[fixture]
    got = {}
    for label in prompts:
        run = REFERENCE[model][label]
        ids, mask = np.array(run["input_ids"]), np.array(run["attention_mask"])
        got[label] = session.greedy(ids, mask, STEPS).tokens.tolist()
    return got


def expected_tokens(fixture: str) -> dict[str, list]:
    model, prompts = LAYOUTS[fixture]
    return {label: REFERENCE[model][label]["tokens"] for label in prompts}


@pytest.mark.parametrize("fixture", sorted(LAYOUTS))
def test_every_exporters_layout_generates_pytorchs_tokens(fixture):
    assert greedy_tokens(FIXTURES / f"{fixture}.onnx", fixture) == expected_tokens(fixture)


@pytest.mark.parametrize("fixture", NEW_LAYOUTS)
def test_layout_is_recognised_with_its_caches_paired_by_name(fixture):
    lm = recognise_causal_lm(ir.load(FIXTURES / f"{fixture}.onnx"))
    assert not isinstance(lm, str), lm
    assert sorted((pair.past, pair.present) for pair in lm.cache) == [  # in input order: GenAI's keys come first
        (f"past_key_values.{i}.{kind}", f"present.{i}.{kind}") for i in range(LAYERS) for kind in ("key", "value")
    ]
    assert {pair.matched_by for pair in lm.cache} == {"name"}
    assert lm.head_size == 16 and lm.logits == "logits" and lm.attention_mask == "attention_mask"
    assert lm.position_ids == (None if fixture.endswith("genai") else "position_ids")


def test_genai_caches_head_size_is_read_off_its_attention():
    # GenAI declares the caches [batch_size, 2, past_sequence_length, kv_cache_dim]; the packed
    # QKV query is 128 wide over 4 + 2 * 2 heads: 16. Its cos/sin tables hold 128 rows.
    model = ir.load(FIXTURES / "llama_kv_genai.onnx")
    assert cache_head_sizes(model) == {"kv_cache_dim": 16}
    assert longest_cache(model) == 128
    assert chunks_only_at_batch_one(model)
    assert bind_dims(model) == {
        "batch_size": 1,
        "sequence_length": 64,
        "total_sequence_length": 128,
        "past_sequence_length": 64,
        "kv_cache_dim": 16,
    }
    # Two rows after a past: one decode step each (ORT's kernel refuses a chunk there); the
    # head size never changes.
    second = alternate_binding(model, longer=True)
    assert (second["batch_size"], second["sequence_length"], second["kv_cache_dim"]) == (2, 1, 16)
    assert second["total_sequence_length"] == second["past_sequence_length"] + 1 <= 128
    # A user's sizes win.
    assert bind_dims(model, {"sequence_length": 3, "past_sequence_length": 5})["total_sequence_length"] == 8


def test_genai_decoder_is_fed_right_padded_prompts():
    lm = recognise_causal_lm(ir.load(FIXTURES / "llama_kv_genai.onnx"))
    session = CausalLMSession(str(FIXTURES / "llama_kv_genai.onnx"), lm, threads=1)
    assert lm.padding == "right"
    run = REFERENCE["llama"]["batch2"]
    ids, mask = np.array(run["input_ids"]), np.array(run["attention_mask"])
    # Row 1 (left-padded by 2) gets the logits it gets alone, at its real positions.
    alone = session.logits(ids[1:, 2:], mask[1:, 2:])
    np.testing.assert_allclose(session.logits(ids, mask)[1, 2:], alone[0], rtol=1e-5, atol=1e-5)


def test_exporters_caches_have_no_such_dims():
    # The near miss: a decoder whose attention is not yet fused has no dim fixed by it, and reads
    # its mask position by position (left padding).
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    assert recognise_causal_lm(model).padding == "left"
    assert cache_head_sizes(model) == {}
    assert longest_cache(model) is None
    assert not chunks_only_at_batch_one(model)
    assert bind_dims(model)["past_sequence"] == 128


@pytest.mark.parametrize("fixture", NEW_LAYOUTS)
def test_decode_step_is_verified_on_the_models_own_cache(fixture):
    model = ir.load(FIXTURES / f"{fixture}.onnx")
    cached = with_model_cache(model, make_inputs(model, {"past_sequence_length": 5, "sequence_length": 1}))
    assert cached is not None
    assert cached["past_key_values.0.key"].shape[2] == 5


@pytest.fixture(scope="module", params=NEW_LAYOUTS)
def optimized(request, tmp_path_factory):
    fixture = request.param
    output = tmp_path_factory.mktemp(fixture) / "optimized.onnx"
    _, report = optimizer.optimize_with_report(str(FIXTURES / f"{fixture}.onnx"), output=output)
    return fixture, output, report


def test_default_pipeline_verifies_every_layout_without_dropping_inputs(optimized):
    fixture, output, report = optimized
    assert all(record.status in (STATUS_APPLIED, STATUS_UNCHANGED) for record in report.passes), report.failures()
    assert not [w for w in report.warnings if "not used" in w or "fails on it" in w], report.warnings
    assert report.input_sets[0].endswith("the cache the model builds from random tokens"), report.input_sets
    ops = Counter(node.op_type for node in ir.load(output).graph)
    if fixture == "llama_kv_optimum":  # legacy-exporter-like: fused as the legacy fixture is
        assert ops["GroupQueryAttention"] == LAYERS and ops["RotaryEmbedding"] == 2 * LAYERS
    if fixture == "gpt2_kv_optimum":  # its key is read scaled by sqrt(1/sqrt(d)) between transposes
        assert ops["GroupQueryAttention"] == LAYERS and ops["MultiHeadAttention"] == 0
    records = {record.name: record for record in report.passes}
    if fixture == "llama_kv_genai":  # already fused: kept as GenAI built it, and the report says so
        assert ops["GroupQueryAttention"] == LAYERS and ops["SkipSimplifiedLayerNormalization"] == 2 * LAYERS
        assert report.nodes_after <= report.nodes_before
        for name in ("fuse-attention", "fuse-group-query-attention"):
            assert records[name].notes == [
                "nothing left to fuse: the graph already holds 2 GroupQueryAttention (fused before this run)"
            ]
        assert "4 SkipSimplifiedLayerNormalization" in records["fuse-rms-norm"].notes[0]
    else:  # fused in this run: no such note
        assert not [n for n in records["fuse-attention"].notes if n.startswith("nothing left to fuse")]


def test_optimized_layout_generates_pytorchs_tokens(optimized):
    fixture, output, _ = optimized
    assert greedy_tokens(output, fixture) == expected_tokens(fixture)


def test_compare_generate_times_and_scores_the_optimized_layout(optimized):
    fixture, output, _ = optimized
    quick = dict(threads=1, iterations=3, warmup=1, time_budget=2.0, prompt_length=6, new_tokens=3)
    report = compare(
        str(FIXTURES / f"{fixture}.onnx"), str(output), settings=CompareSettings(batches=(1, 2), generate=True, **quick)
    )
    (cpu,) = report.providers
    assert [g.batch for g in cpu.generation] == [1, 2]
    assert cpu.llm_accuracy.top1_agreement > 0.99 and cpu.llm_accuracy.exact_match == 1.0


@pytest.mark.parametrize("fixture", NEW_LAYOUTS)
def test_int4_quantizes_the_layouts_projections(fixture, tmp_path):
    output = tmp_path / "int4.onnx"
    _, report = optimizer.optimize_with_report(str(FIXTURES / f"{fixture}.onnx"), output=output, quantize="int4")
    records = {record.name: record for record in report.passes}
    assert records["quantize-int4"].status == STATUS_APPLIED, records["quantize-int4"].detail
    assert Counter(node.op_type for node in ir.load(output).graph)["MatMulNBits"] >= 4 * LAYERS
    tokens = greedy_tokens(output, fixture)["batch1"]
    assert len(tokens[0]) == STEPS + 1  # generates; int4 may pick other tokens on random weights


def _quantized_by_onnx_runtime(fixture: str, path) -> None:
    """``fixture`` through ONNX Runtime's own int4 quantizer (RTN, block 32, accuracy_level 4), saved at ``path``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4)
    quantizer = MatMulNBitsQuantizer(onnx.load(FIXTURES / f"{fixture}.onnx"), algo_config=config)
    quantizer.process()
    onnx.save(quantizer.model.model, path)


@pytest.mark.parametrize("fixture", ["llama_kv_legacy", "gpt2_kv_legacy"])
def test_onnx_runtimes_int4_output_fuses_as_the_float_export_does(fixture, tmp_path):
    """Metamorphic: the same decoder with its projections already MatMulNBits (shapes must be carried
    through them for the head splits to be seen) fuses into the same attention and rotary nodes."""
    source, output = tmp_path / "ort_int4.onnx", tmp_path / "optimized.onnx"
    _quantized_by_onnx_runtime(fixture, source)
    _, report = optimizer.optimize_with_report(str(source), output=output)
    assert all(record.status in (STATUS_APPLIED, STATUS_UNCHANGED) for record in report.passes), report.failures()
    ops = Counter(node.op_type for node in ir.load(output).graph)
    assert ops["GroupQueryAttention"] == LAYERS and ops["MatMulNBits"] >= 1  # its quantizer leaves Gemm alone
    if fixture.startswith("llama"):
        assert ops["RotaryEmbedding"] == 2 * LAYERS and ops["SimplifiedLayerNormalization"] >= 1
    assert greedy_tokens(output, fixture) == greedy_tokens(source, fixture)

"""Which decoder families graphopt's default pipeline fuses, and whether their answers stay the same.

Tiny random-weight Hugging Face causal LMs (2 layers, hidden 64, 4 query / 2 key-value heads; 4 / 4 for GPT-NeoX,
GPT-J, OPT and BLOOM, 4 / 1 for Falcon and GPT-BigCode; head size 16, vocabulary 256), each exported as one
key/value-cache step by both torch exporters: logits and ``present.*`` out of ``input_ids``, ``attention_mask``,
``position_ids``
(left out by the ``*_nopos`` variant, whose positions come from the cache's length) and
``past_key_values.*``. Random weights say nothing about accuracy; they say which spellings
fuse and whether the fused graph computes what the export does.

``check`` runs graphopt's default pipeline (with verification) on each export, counts the
fused operators, then drives the original and the result side by side on ONNX Runtime: a
prompt of 1, 3, 9, 17 and 40 tokens at batch 1 and at batch 2 with the second row padded on
the left and on the right, then 12 steps (a chunk of 3 tokens at the second, one token at
the others), each step fed the model's own presents. It prints the largest logits difference
over real tokens. Two steps, two environments::

    /work/exportenv/bin/python benchmarks/decoder_families.py export --out /tmp/families  # torch + transformers
    python benchmarks/decoder_families.py check /tmp/families                             # graphopt's venv
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COMMON = {
    "vocab_size": 256,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}
# name: (config class, model class, config overrides, attention implementation)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, "sdpa"),
    "llama_nopos": ("LlamaConfig", "LlamaForCausalLM", {}, "sdpa"),
    "mistral_window6": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 6}, "eager"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, "sdpa"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}, "sdpa"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}, "sdpa"),
    "phi3_partial": ("Phi3Config", "Phi3ForCausalLM", {"partial_rotary_factor": 0.5}, "sdpa"),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", {}, "sdpa"),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16}, "eager"),
    # A cap of 0.5 on unscaled scores, so that dropping it would show (Gemma 2's real cap is 50).
    "gemma2_softcap": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {"head_dim": 16, "attn_logit_softcapping": 0.5, "query_pre_attn_scalar": 1, "sliding_window": 4096},
        "eager",
    ),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"attention_multiplier": 0.3}, "sdpa"),
    # Packed query/key/value heads, a quarter of each head rotated; 4 key-value heads (no grouping).
    "neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"rotary_pct": 0.25, "num_key_value_heads": 4}, "sdpa"),
    # Interleaved rotation (rotate_every_two) of the first 8 channels, from a fixed position table.
    "gptj": ("GPTJConfig", "GPTJForCausalLM", {"rotary_dim": 8, "num_key_value_heads": 4}, "sdpa"),
    "cohere": ("CohereConfig", "CohereForCausalLM", {}, "sdpa"),
    # Added 2026-12-04. Multi-query attention (one key/value head), Falcon with rotary, BigCode with learned positions.
    "falcon": ("FalconConfig", "FalconForCausalLM", {"num_key_value_heads": 1, "multi_query": True}, "sdpa"),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", {"num_key_value_heads": 1, "n_inner": 128}, "sdpa"),
    # Query/key norms over the whole projection (OLMo2), per head with a sliding window and post-norms (EXAONE 4).
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}, "sdpa"),
    "exaone4": (
        "Exaone4Config",
        "Exaone4ForCausalLM",
        {"head_dim": 16, "sliding_window": 6, "layer_types": ["sliding_attention", "full_attention"]},
        "sdpa",
    ),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", {"sliding_window": None}, "sdpa"),
    # phi-2: LayerNorm, half of each head rotated, attention and MLP in parallel.
    "phi": ("PhiConfig", "PhiForCausalLM", {"partial_rotary_factor": 0.5}, "sdpa"),
    # Gemma 3: per-head query/key norms, one sliding-window layer (window 6) and one global layer.
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 6,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        "sdpa",
    ),
    # SmolLM3: the second layer has no rotary (NoPE).
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {"no_rope_layers": [1, 0]}, "sdpa"),
    # GLM: half of each head rotated, interleaved pairs.
    "glm": ("GlmConfig", "GlmForCausalLM", {"head_dim": 16, "partial_rotary_factor": 0.5}, "sdpa"),
    # Nemotron: LayerNorm1P, half of each head rotated.
    "nemotron": ("NemotronConfig", "NemotronForCausalLM", {"head_dim": 16, "partial_rotary_factor": 0.5}, "sdpa"),
    # No rotary: learned positions (OPT), ALiBi (BLOOM).
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        {"num_key_value_heads": 4, "ffn_dim": 128, "word_embed_proj_dim": 64},
        "sdpa",
    ),
    "bloom": ("BloomConfig", "BloomForCausalLM", {"num_key_value_heads": 4}, "eager"),
    # Added 2026-12-06 (review s63). CodeGen: heads split off the packed projection's groups (mp_num 4), the first
    # 8 channels rotated in interleaved pairs from a fixed 128-position table.
    "codegen": (
        "CodeGenConfig",
        "CodeGenForCausalLM",
        {
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "rotary_dim": 8,
            "n_positions": 128,
            "n_ctx": 128,
            "n_inner": 128,
            "num_key_value_heads": 4,
        },
        "sdpa",
    ),
}
# graphopt options per family (none needed since GPT-J's caches end with its 128-position table by themselves).
OPTIONS: dict[str, dict] = {}
EXPORTERS = ("legacy", "dynamo")
PROMPTS = (1, 3, 9, 17, 40)
STEPS = 12
FUSED = ("RotaryEmbedding", "GroupQueryAttention", "MultiHeadAttention", "SimplifiedLayerNormalization")


def export(out: Path, names: list[str]) -> None:
    """Export every family in ``names`` with both exporters into ``out`` (needs torch and transformers)."""
    import torch
    import transformers

    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import export_fixtures as fixtures

    warnings.filterwarnings("ignore")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        config_class, model_class, overrides, attention = FAMILIES[name]
        torch.manual_seed(fixtures.SEED)
        config = getattr(transformers, config_class)(**{**COMMON, **overrides, "attn_implementation": attention})
        model = getattr(transformers, model_class)(config)
        fixtures.perturb_parameters(model)
        module = _step_module(fixtures, model, positions=not name.endswith("_nopos")).eval()
        for exporter in EXPORTERS:
            path = out / f"{name}_{exporter}.onnx"
            start = time.perf_counter()
            try:
                _export(torch, fixtures, module, path, exporter)
            except Exception as error:  # noqa: BLE001 - an exporter that cannot export a family is a result
                print(f"{path.name}: the {exporter} exporter failed: {str(error).splitlines()[0][:160]}", flush=True)
                continue
            print(f"{path.name}: exported in {time.perf_counter() - start:.1f} s", flush=True)


def _step_module(fixtures, model, positions: bool):
    """One cache step of ``model``; the cache is a plain ``DynamicCache`` without the model's config, so a
    sliding-window layer keeps every past token too (the layout ``Concat(past, new)`` that generation
    loops feed back), and without ``position_ids`` when ``positions`` is False."""
    import torch

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.layers = model.config.num_hidden_layers

        def forward(self, input_ids, attention_mask, *rest):
            position_ids, past = (rest[0], rest[1:]) if positions else (None, rest)
            pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
            cache = fixtures.DynamicCache(ddp_cache_data=pairs)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            present = [tensor for layer in out.past_key_values.layers for tensor in (layer.keys, layer.values)]
            return (out.logits, *present)

    step = Step()
    step.positions = positions
    return step


def _names(layers: int, positions: bool) -> tuple[list[str], list[str]]:
    pasts = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    presents = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    inputs = ["input_ids", "attention_mask", *(["position_ids"] if positions else []), *pasts]
    return inputs, ["logits", *presents]


def _axes(name: str) -> dict[int, str]:
    if name.startswith("past_key_values."):
        return {0: "batch", 2: "past_sequence"}
    if name.startswith("present."):
        return {0: "batch", 2: "total_sequence"}
    return {"attention_mask": {0: "batch", 1: "total_sequence"}}.get(name, {0: "batch", 1: "sequence"})


def _export(torch, fixtures, module, path: Path, exporter: str) -> None:
    inputs, outputs = _names(module.layers, module.positions)
    batch, new, past = fixtures.KV_EXPORT
    rng = np.random.default_rng(fixtures.SEED)
    feed = {
        "input_ids": torch.from_numpy(rng.integers(0, COMMON["vocab_size"], (batch, new))),
        "attention_mask": torch.ones((batch, past + new), dtype=torch.int64),
        "position_ids": torch.arange(past, past + new).repeat(batch, 1),
    }
    # The cache's head count and head size as the model makes them (configs spell them differently).
    with torch.no_grad():
        made = module.model(input_ids=feed["input_ids"], use_cache=True).past_key_values.layers[0].keys
    kv_heads, head_size = made.shape[1], made.shape[3]
    for name in inputs[2 + module.positions :]:
        feed[name] = torch.from_numpy(rng.standard_normal((batch, kv_heads, past, head_size), dtype=np.float32))
    args = tuple(feed[name] for name in inputs)
    if exporter == "legacy":
        axes = {name: _axes(name) for name in [*inputs, *outputs]}
        torch.onnx.export(
            module, args, path, dynamo=False, opset_version=fixtures.LEGACY_OPSET,
            input_names=inputs, output_names=outputs, dynamic_axes=axes,
        )  # fmt: skip
        return
    dims: dict[str, object] = {}
    specs = [
        {axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in _axes(name).items()} for name in inputs
    ]
    shapes = (specs[0], specs[1], tuple(specs[2:]))  # forward(input_ids, attention_mask, *rest)
    torch.onnx.export(
        module, args, path, dynamo=True, optimize=False, external_data=False,
        opset_version=fixtures.DYNAMO_OPSET, input_names=inputs, output_names=outputs, dynamic_shapes=shapes,
    )  # fmt: skip
    fixtures.strip_node_metadata(path)


def check(folder: Path, quantize: str | None = None) -> None:
    """Optimize every export in ``folder`` and print a markdown table of what fused and how far apart they run.

    With ``quantize`` (int4, dynamic: ``--quantize``, no calibration data) the table says instead whether the
    quantization pass applied or was rolled back, and why; the logits difference is then quantization's."""
    sys.path.insert(0, str(ROOT))
    import onnx_ir as ir

    import optimizer

    print("| export | nodes | RotaryEmbedding / GroupQueryAttention / MultiHeadAttention / SimplifiedLayerNorm "
          "| rolled back | max logits difference (real tokens) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for path in sorted(folder.glob("*.onnx")):
        if path.name.endswith(".opt.onnx"):
            continue
        model = ir.load(path)
        before = len(list(model.graph.all_nodes()))
        family = path.stem.rsplit("_", 1)[0]
        settings = {**OPTIONS.get(family, {}), **({"quantize": quantize} if quantize else {})}
        result, report = optimizer.optimize_with_report(model, **settings)
        counts = collections.Counter(node.op_type for node in result.graph.all_nodes())
        optimized = path.with_suffix(".opt.onnx")
        ir.save(result, optimized)
        rolled = [record.name for record in report.passes if record.status == "rolled back"]
        if quantize:
            record = next(record for record in report.passes if record.name.startswith("quantize"))
            rolled = [f"{record.name}: {record.status}{' (' + record.detail[:90] + ')' if record.detail else ''}"]
        worst, failure = _worst_difference(path, optimized)
        fused = " / ".join(str(counts[op]) for op in FUSED)
        after = len(list(result.graph.all_nodes()))
        shown = failure or f"{worst:.1e}"
        options = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in OPTIONS.get(family, {}).items())
        name = f"{path.stem} (`{options}`)" if options else path.stem
        print(f"| {name} | {before} → {after} | {fused} | {', '.join(rolled) or '—'} | {shown} |", flush=True)


def _worst_difference(original: Path, optimized: Path) -> tuple[float, str | None]:
    """The largest logits difference over real tokens across every prompt, padding and step; a failure's text."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [
        ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (original, optimized)
    ]
    inputs = {value.name: value for value in sessions[0].get_inputs()}
    outputs = [value.name for value in sessions[0].get_outputs()]
    pasts = [name for name in inputs if name.startswith("past_key_values.")]
    rng = np.random.default_rng(1)
    worst = 0.0
    for prompt in PROMPTS:
        for rows, padding in ((1, None), (2, "left"), (2, "right")):
            mask = np.ones((rows, prompt), np.int64)
            if padding == "left" and prompt > 2:
                mask[1, : prompt // 3] = 0
            if padding == "right" and prompt > 2:
                mask[1, prompt - prompt // 3 :] = 0
            ids = rng.integers(1, COMMON["vocab_size"], (rows, prompt))
            caches: list[list[np.ndarray] | None] = [None, None]
            for step in range(STEPS + 1):
                results = []
                for index, session in enumerate(sessions):
                    feed = _feed(inputs, pasts, ids, mask, caches[index])
                    try:
                        results.append(session.run(outputs, feed))
                    except Exception as error:  # noqa: BLE001 - report which model failed, and where
                        which = "original" if index == 0 else "optimized"
                        return worst, f"{which} fails at prompt {prompt}, step {step}: {str(error)[:120]}"
                real = mask[:, -ids.shape[1] :] == 1
                worst = max(worst, float(np.abs(results[0][0] - results[1][0])[real].max()))
                caches = [result[1:] for result in results]
                count = 3 if step == 1 else 1
                token = results[0][0][:, -1].argmax(-1)[:, None]
                ids = np.concatenate([token, rng.integers(1, COMMON["vocab_size"], (rows, count - 1))], axis=1)
                mask = np.concatenate([mask, np.ones((rows, count), np.int64)], axis=1)
    return worst, None


def _feed(inputs, pasts, ids, mask, cache) -> dict[str, np.ndarray]:
    rows, new = ids.shape
    feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask}
    if "position_ids" in inputs:
        positions = np.cumsum(mask, axis=1) - 1
        feed["position_ids"] = np.where(mask == 0, 1, positions)[:, -new:].astype(np.int64)
    for index, name in enumerate(pasts):
        heads, size = inputs[name].shape[1], inputs[name].shape[3]
        feed[name] = cache[index] if cache is not None else np.zeros((rows, heads, 0, size), np.float32)
    return feed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    making = commands.add_parser("export", help="export the families (torch and transformers)")
    making.add_argument("--out", type=Path, required=True)
    making.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    checking = commands.add_parser("check", help="optimize and compare every export in a folder (graphopt)")
    checking.add_argument("folder", type=Path)
    checking.add_argument("--quantize", choices=("int4", "dynamic"), help="quantize too; report the pass's status")
    args = parser.parse_args()
    if args.command == "export":
        export(args.out, args.families)
    else:
        check(args.folder, args.quantize)


if __name__ == "__main__":
    main()

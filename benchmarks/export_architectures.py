"""Export random-weight decoders of 20 transformers architectures (no KV cache) with both torch.onnx exporters.

For the fusion sweep of docs/benchmarks.md ("Decoder architectures from transformers"): what the default pipeline
fuses in architectures the test fixtures do not cover. Needs torch 2.13.0 and transformers (5.24 measured)::

    python benchmarks/export_architectures.py ARCH legacy|dynamo [--out DIR] [--size small|medium]

Writes DIR/ARCH_EXPORTER.onnx and checks it on ONNX Runtime against torch at [2, 16] (all ones) and [3, 9]
(right-padded); inputs input_ids, attention_mask, position_ids (int64). As tests/fixtures/export_fixtures.py:
legacy opset 17, dynamo opset 20 (optimize=False), every parameter perturbed by N(0, 0.02), sdpa attention unless
noted. ``small``: 2 layers, hidden 64, 4 heads of 16 (2 key/value heads), 128 positions; ``medium`` (timing):
4 layers, hidden 512, 8 heads of 64, FFN 2048, 512 positions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers as tf

SEED = 0
VOCAB = 1000
SIZES = {"small": (64, 2, 4, 2, 128, 16, 128), "medium": (512, 4, 8, 2, 2048, 64, 512)}
if "--size" in sys.argv and sys.argv.index("--size") + 1 < len(sys.argv):
    _SIZE = sys.argv[sys.argv.index("--size") + 1]
else:
    _SIZE = "small"
H, L, NH, KV, FF, HD, MAXPOS = SIZES[_SIZE]
INPUTS = ("input_ids", "attention_mask", "position_ids")
ATOL = 1e-4

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=H,
    num_hidden_layers=L,
    num_attention_heads=NH,
    intermediate_size=FF,
    max_position_embeddings=MAXPOS,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
    use_cache=False,
)

# name -> (ConfigClass, ModelClass, extra config kwargs, attn implementation)
ARCHS = {
    "qwen2": ("Qwen2Config", "Qwen2Model", dict(num_key_value_heads=KV), "sdpa"),
    # sliding window smaller than the validation length so the band matters
    "mistral": ("MistralConfig", "MistralModel", dict(num_key_value_heads=KV, sliding_window=8, head_dim=HD), "sdpa"),
    "phi3": ("Phi3Config", "Phi3Model", dict(num_key_value_heads=KV), "sdpa"),
    # gemma2 has attention soft-capping: sdpa cannot express it, transformers uses eager for correctness
    "gemma2": (
        "Gemma2Config",
        "Gemma2Model",
        dict(
            num_key_value_heads=KV, head_dim=HD, sliding_window=8, query_pre_attn_scalar=HD, attn_logit_softcapping=50.0
        ),
        "eager",
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3TextModel",
        dict(num_key_value_heads=KV, head_dim=HD, sliding_window=8, query_pre_attn_scalar=HD),
        "sdpa",
    ),
    "qwen3": ("Qwen3Config", "Qwen3Model", dict(num_key_value_heads=KV, head_dim=HD), "sdpa"),
    "olmo2": ("Olmo2Config", "Olmo2Model", dict(num_key_value_heads=KV), "sdpa"),
    "granite": (
        "GraniteConfig",
        "GraniteModel",
        dict(num_key_value_heads=KV, embedding_multiplier=12.0, attention_multiplier=0.2, residual_multiplier=0.22),
        "sdpa",
    ),
    "stablelm": ("StableLmConfig", "StableLmModel", dict(num_key_value_heads=KV, partial_rotary_factor=0.25), "sdpa"),
    "gptneox": ("GPTNeoXConfig", "GPTNeoXModel", dict(rotary_pct=0.25), "sdpa"),
    "falcon": ("FalconConfig", "FalconModel", dict(), "sdpa"),
    "starcoder2": ("Starcoder2Config", "Starcoder2Model", dict(num_key_value_heads=KV, sliding_window=8), "sdpa"),
    "phi": ("PhiConfig", "PhiModel", dict(num_key_value_heads=NH, partial_rotary_factor=0.5), "sdpa"),
    # Added 2026-12-04 (as benchmarks/decoder_families.py's cache exports).
    "exaone4": (
        "Exaone4Config",
        "Exaone4Model",
        dict(
            num_key_value_heads=KV, head_dim=HD, sliding_window=8, layer_types=["sliding_attention", "full_attention"]
        ),
        "sdpa",
    ),
    "smollm3": ("SmolLM3Config", "SmolLM3Model", dict(num_key_value_heads=KV, no_rope_layers=[1, 0]), "sdpa"),
    "glm": ("GlmConfig", "GlmModel", dict(num_key_value_heads=KV, head_dim=HD, partial_rotary_factor=0.5), "sdpa"),
    "nemotron": (
        "NemotronConfig",
        "NemotronModel",
        dict(num_key_value_heads=KV, head_dim=HD, partial_rotary_factor=0.5),
        "sdpa",
    ),
    "cohere": ("CohereConfig", "CohereModel", dict(num_key_value_heads=KV), "sdpa"),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeModel", dict(multi_query=True, n_inner=FF), "sdpa"),
    "opt": ("OPTConfig", "OPTModel", dict(ffn_dim=FF, word_embed_proj_dim=H), "sdpa"),
}


def build(arch: str) -> torch.nn.Module:
    cfg_name, model_name, extra, attn = ARCHS[arch]
    torch.manual_seed(SEED)
    kwargs = dict(COMMON)
    if arch == "falcon":
        kwargs = dict(
            vocab_size=VOCAB,
            hidden_size=H,
            num_hidden_layers=L,
            num_attention_heads=NH,
            bos_token_id=0,
            eos_token_id=0,
            use_cache=False,
            max_position_embeddings=MAXPOS,
        )
    if arch == "gptneox":
        kwargs.pop("pad_token_id")
    kwargs.update(extra)
    config = getattr(tf, cfg_name)(**kwargs)
    config._attn_implementation = attn
    model = getattr(tf, model_name)(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return Wrapper(model).eval()


class Wrapper(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state


def make_inputs(batch, seq, padded, seed=SEED):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    if padded:
        for r in range(1, batch):
            mask[r, seq - r :] = 0
    pos = np.tile(np.arange(seq, dtype=np.int64), (batch, 1))
    return {
        "input_ids": rng.integers(1, VOCAB, (batch, seq), dtype=np.int64),
        "attention_mask": mask,
        "position_ids": pos,
    }


def export(module, arch, exporter, path):
    ex = make_inputs(2, 16, False)
    args = tuple(torch.from_numpy(ex[n]) for n in INPUTS)
    if exporter == "legacy":
        axes = {0: "batch", 1: "sequence"}
        torch.onnx.export(
            module,
            args,
            path,
            dynamo=False,
            opset_version=17,
            input_names=list(INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes={n: axes for n in (*INPUTS, "last_hidden_state")},
        )
    else:
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
        torch.onnx.export(
            module,
            args,
            path,
            dynamo=True,
            optimize=False,
            external_data=False,
            opset_version=20,
            input_names=list(INPUTS),
            output_names=["last_hidden_state"],
            dynamic_shapes={n: dims for n in INPUTS},
        )
        m = onnx.load(path)
        for g in [m.graph, *m.functions]:
            for node in g.node:
                del node.metadata_props[:]
        onnx.save(m, path)


def validate(path, module):
    onnx.checker.check_model(str(path), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, s, padded in ((2, 16, False), (3, 9, True)):
        feed = make_inputs(b, s, padded, SEED + 1)
        (got,) = sess.run(None, feed)
        with torch.no_grad():
            want = module(*(torch.from_numpy(feed[n]) for n in INPUTS)).numpy()
        keep = feed["attention_mask"] == 1
        d = float(np.abs(got - want)[keep].max())
        print(f"   ORT vs torch [{b},{s}] padded={padded}: max diff (unmasked tokens) {d:.2e}")
        if not d <= ATOL:
            raise RuntimeError(f"{path}: diff {d}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("arch", choices=sorted(ARCHS))
    p.add_argument("exporter", choices=("legacy", "dynamo"))
    p.add_argument("--out", type=Path, default=Path("."))
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    a = p.parse_args()
    module = build(a.arch)
    path = a.out / f"{a.arch}_{a.exporter}.onnx"
    t0 = time.perf_counter()
    export(module, a.arch, a.exporter, str(path))
    m = onnx.load(str(path))
    print(
        f"== {path.name}: {len(m.graph.node)} nodes, {path.stat().st_size / 1e6:.2f} MB, "
        f"exported in {time.perf_counter() - t0:.1f}s"
    )
    validate(path, module)


if __name__ == "__main__":
    main()

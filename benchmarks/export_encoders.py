"""Export random-weight encoders of transformers architectures (text, vision, audio) with both torch.onnx exporters.

For the fusion sweep of docs/benchmarks.md ("Encoder architectures from transformers"): what the default pipeline
does to encoders the test fixtures do not cover. Needs torch 2.13.0 and transformers (5.25 measured)::

    python benchmarks/export_encoders.py ARCH legacy|dynamo [--out DIR]

Writes DIR/ARCH_EXPORTER.onnx (one output, ``last_hidden_state``) and checks it on ONNX Runtime against torch at
two input sizes (text: [2, 16] all ones and [3, 9] right-padded, positions where the mask is 0 not compared; vision:
batch 2 and 3; audio: two lengths). Legacy opset 17, dynamo opset 20 (optimize=False), every parameter perturbed
by N(0, 0.02) so no norm is a plain identity; sdpa attention where the architecture has it. 2 layers, hidden 64,
4 heads of 16, FFN 128 (the vision and audio front ends small to match).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers as tf

SEED = 0
VOCAB = 1000
H, L, NH, FF = 64, 2, 4, 128
ATOL = 1e-4
TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=H,
    num_hidden_layers=L,
    num_attention_heads=NH,
    intermediate_size=FF,
    max_position_embeddings=128,
    pad_token_id=0,
)
VISION = dict(
    hidden_size=H,
    num_hidden_layers=L,
    num_attention_heads=NH,
    intermediate_size=FF,
    image_size=32,
    patch_size=8,
    num_channels=3,
)

# name -> (kind, ConfigClass, ModelClass, config kwargs, inputs); kind: text, vision or audio.
ARCHS = {
    "bert": ("text", "BertConfig", "BertModel", TEXT, ("input_ids", "attention_mask", "token_type_ids")),
    "roberta": ("text", "RobertaConfig", "RobertaModel", dict(TEXT, pad_token_id=1), ("input_ids", "attention_mask")),
    "distilbert": (
        "text",
        "DistilBertConfig",
        "DistilBertModel",
        dict(vocab_size=VOCAB, dim=H, n_layers=L, n_heads=NH, hidden_dim=FF, max_position_embeddings=128),
        ("input_ids", "attention_mask"),
    ),
    "albert": (
        "text",
        "AlbertConfig",
        "AlbertModel",
        dict(TEXT, embedding_size=32),
        ("input_ids", "attention_mask", "token_type_ids"),
    ),
    "electra": (
        "text",
        "ElectraConfig",
        "ElectraModel",
        dict(TEXT, embedding_size=32),
        ("input_ids", "attention_mask", "token_type_ids"),
    ),
    "mpnet": ("text", "MPNetConfig", "MPNetModel", dict(TEXT, pad_token_id=1), ("input_ids", "attention_mask")),
    "deberta_v2": (
        "text",
        "DebertaV2Config",
        "DebertaV2Model",
        dict(
            TEXT, relative_attention=True, position_buckets=32, max_relative_positions=64, pos_att_type=["p2c", "c2p"]
        ),
        ("input_ids", "attention_mask"),
    ),
    "modernbert": (
        "text",
        "ModernBertConfig",
        "ModernBertModel",
        dict(TEXT, global_attn_every_n_layers=2, local_attention=8),
        ("input_ids", "attention_mask"),
    ),
    "roformer": (
        "text",
        "RoFormerConfig",
        "RoFormerModel",
        dict(TEXT, embedding_size=H),
        ("input_ids", "attention_mask", "token_type_ids"),
    ),
    "esm": (
        "text",
        "EsmConfig",
        "EsmModel",
        dict(TEXT, position_embedding_type="rotary", mask_token_id=2),
        ("input_ids", "attention_mask"),
    ),
    "t5_encoder": (
        "text",
        "T5Config",
        "T5EncoderModel",
        dict(vocab_size=VOCAB, d_model=H, d_kv=H // NH, d_ff=FF, num_layers=L, num_heads=NH),
        ("input_ids", "attention_mask"),
    ),
    "clip_text": (
        "text",
        "CLIPTextConfig",
        "CLIPTextModel",
        dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH, intermediate_size=FF),
        ("input_ids", "attention_mask"),
    ),
    "vit": ("vision", "ViTConfig", "ViTModel", VISION, ("pixel_values",)),
    "deit": ("vision", "DeiTConfig", "DeiTModel", VISION, ("pixel_values",)),
    "beit": ("vision", "BeitConfig", "BeitModel", dict(VISION, use_relative_position_bias=True), ("pixel_values",)),
    "dinov2": ("vision", "Dinov2Config", "Dinov2Model", VISION, ("pixel_values",)),
    "clip_vision": ("vision", "CLIPVisionConfig", "CLIPVisionModel", VISION, ("pixel_values",)),
    "siglip_vision": ("vision", "SiglipVisionConfig", "SiglipVisionModel", VISION, ("pixel_values",)),
    "swin": (
        "vision",
        "SwinConfig",
        "SwinModel",
        dict(image_size=32, patch_size=2, embed_dim=32, depths=[1, 1], num_heads=[2, 4], window_size=4, mlp_ratio=2.0),
        ("pixel_values",),
    ),
    "convnext": (
        "vision",
        "ConvNextConfig",
        "ConvNextModel",
        dict(image_size=32, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
        ("pixel_values",),
    ),
    "whisper_encoder": (
        "audio",
        "WhisperConfig",
        "WhisperModel",
        dict(
            vocab_size=VOCAB,
            d_model=H,
            encoder_layers=L,
            encoder_attention_heads=NH,
            encoder_ffn_dim=FF,
            decoder_layers=1,
            decoder_attention_heads=NH,
            decoder_ffn_dim=FF,
            num_mel_bins=16,
            max_source_positions=16,
            max_target_positions=16,
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
            decoder_start_token_id=0,
        ),
        ("input_features",),
    ),
    "wav2vec2": (
        "audio",
        "Wav2Vec2Config",
        "Wav2Vec2Model",
        dict(
            hidden_size=H,
            num_hidden_layers=L,
            num_attention_heads=NH,
            intermediate_size=FF,
            conv_dim=(16, 16),
            conv_stride=(5, 2),
            conv_kernel=(10, 3),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
            do_stable_layer_norm=True,
            feat_extract_norm="layer",
        ),
        ("input_values",),
    ),
}


class Wrapper(torch.nn.Module):
    """The encoder with positional inputs and its last hidden state as the one output."""

    def __init__(self, model, names):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args))).last_hidden_state


def build(arch: str) -> torch.nn.Module:
    """The random-weight module of ``arch`` (the encoder only, for Whisper)."""
    _, cfg_name, model_name, kwargs, names = ARCHS[arch]
    torch.manual_seed(SEED)
    config = getattr(tf, cfg_name)(**kwargs)
    if hasattr(config, "_attn_implementation"):
        try:
            config._attn_implementation = "sdpa"
            model = getattr(tf, model_name)(config)
        except (ValueError, ImportError):
            config._attn_implementation = "eager"
            model = getattr(tf, model_name)(config)
    else:
        model = getattr(tf, model_name)(config)
    if arch == "whisper_encoder":
        model = model.get_encoder()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return Wrapper(model, names).eval()


def make_inputs(arch: str, batch: int, size: int, padded: bool, seed: int = SEED) -> dict[str, np.ndarray]:
    """Inputs for ``arch``: ``size`` is the sequence (text) or sample count (audio); vision ignores it."""
    kind, _, _, config, names = ARCHS[arch]
    rng = np.random.default_rng(seed)
    if kind == "vision":
        side = config.get("image_size", 32)
        return {"pixel_values": rng.standard_normal((batch, 3, side, side)).astype(np.float32)}
    if kind == "audio":
        if arch == "whisper_encoder":
            frames = 2 * config["max_source_positions"]
            return {"input_features": rng.standard_normal((batch, config["num_mel_bins"], frames)).astype(np.float32)}
        return {"input_values": rng.standard_normal((batch, size)).astype(np.float32)}
    mask = np.ones((batch, size), np.int64)
    if padded:
        for r in range(1, batch):
            mask[r, size - r :] = 0
    feed = {"input_ids": rng.integers(3, VOCAB, (batch, size), dtype=np.int64), "attention_mask": mask}
    if "token_type_ids" in names:
        feed["token_type_ids"] = np.zeros((batch, size), np.int64)
    return feed


def _sizes(arch: str) -> tuple[tuple[int, int, bool], tuple[int, int, bool]]:
    """(batch, size, padded) for the export and for the second check."""
    kind = ARCHS[arch][0]
    if kind == "audio":
        return (2, 400, False), (3, 720, False)
    return (2, 16, False), (3, 9, True)


def _dynamic_axes(arch: str, name: str) -> dict[int, str]:
    kind = ARCHS[arch][0]
    if kind == "vision" or arch == "whisper_encoder":
        return {0: "batch"}
    return {0: "batch", 1: "sequence"}


def export(module: torch.nn.Module, arch: str, exporter: str, path: str) -> None:
    """Export ``module`` with torch.onnx's ``exporter`` to ``path``."""
    names = ARCHS[arch][4]
    (batch, size, padded), _ = _sizes(arch)
    ex = make_inputs(arch, batch, size, padded)
    args = tuple(torch.from_numpy(ex[n]) for n in names)
    if exporter == "legacy":
        axes = {n: _dynamic_axes(arch, n) for n in names}
        axes["last_hidden_state"] = {0: "batch", 1: "sequence"} if ARCHS[arch][0] != "vision" else {0: "batch"}
        torch.onnx.export(
            module,
            args,
            path,
            dynamo=False,
            opset_version=17,
            input_names=list(names),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
        )
        return
    dims = {"batch": torch.export.Dim("batch", min=1, max=64), "sequence": torch.export.Dim("sequence", max=4096)}
    shapes = {n: {axis: dims[label] for axis, label in _dynamic_axes(arch, n).items()} for n in names}
    torch.onnx.export(
        module,
        args,
        path,
        dynamo=True,
        optimize=False,
        external_data=False,
        opset_version=20,
        input_names=list(names),
        output_names=["last_hidden_state"],
        dynamic_shapes=(tuple(shapes[n] for n in names),),
    )
    model = onnx.load(path)
    for graph in [model.graph, *model.functions]:
        for node in graph.node:
            del node.metadata_props[:]
    onnx.save(model, path)


def validate(path: Path, module: torch.nn.Module, arch: str) -> None:
    """ONNX Runtime's outputs against torch's at the two sizes (unmasked positions); raises past ``ATOL``."""
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ARCHS[arch][4]
    for batch, size, padded in _sizes(arch):
        feed = make_inputs(arch, batch, size, padded, SEED + 1)
        (got,) = session.run(None, feed)
        with torch.no_grad():
            want = module(*(torch.from_numpy(feed[n]) for n in names)).numpy()
        diff = np.abs(got - want)
        if "attention_mask" in feed:
            diff = diff[feed["attention_mask"] == 1]
        print(f"   ORT vs torch {list(next(iter(feed.values())).shape)} padded={padded}: max diff {diff.max():.2e}")
        if not diff.max() <= ATOL:
            raise RuntimeError(f"{path}: diff {diff.max()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("arch", choices=sorted(ARCHS))
    parser.add_argument("exporter", choices=("legacy", "dynamo"))
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    module = build(args.arch)
    path = args.out / f"{args.arch}_{args.exporter}.onnx"
    start = time.perf_counter()
    export(module, args.arch, args.exporter, str(path))
    model = onnx.load(str(path))
    print(
        f"== {path.name}: {len(model.graph.node)} nodes, {path.stat().st_size / 1e6:.2f} MB, "
        f"exported in {time.perf_counter() - start:.1f}s"
    )
    validate(path, module, args.arch)


if __name__ == "__main__":
    main()

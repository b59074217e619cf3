"""Export the local-attention (sliding-window) fixtures the mutation harness needs.

No fixture in ``tests/fixtures`` has a band mask, so the window mutants (window
narrowed, widened, replaced by a plain causal mask) have nothing to act on there.
Run from the repository root with the export environment (torch + transformers)::

    python tests/mutation/export_window_fixtures.py [--out DIR]

It writes ``mistral_window16_dynamo.onnx`` and ``mistral_window160_dynamo.onnx``:
``transformers.MistralModel`` (the tiny configuration of ``tests/fixtures``: hidden
64, 2 layers, 4 query / 2 key-value heads, intermediate 128, vocab 1000, seeded and
perturbed weights) with ``sliding_window`` 16 and 160 and 512 positions, exported by
the dynamo exporter exactly as ``tests/fixtures/export_fixtures.py`` exports its
models. The window of 16 is narrower than every length verification runs at (a
wrong window shows); 160 is wider than the default verification lengths (128, 65),
so a rewrite that drops the band is exact at those lengths and wrong past 160.

Each export is checked against PyTorch at lengths past its window (only where the
mask keeps a token: padded query rows are undefined in both).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import MistralConfig, MistralModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fixtures import export_fixtures as fixtures  # noqa: E402

WINDOWS = (16, 160)
MAX_POSITIONS = 512
ATOL = 1e-4


def build_mistral(window: int) -> torch.nn.Module:
    """The tiny seeded Mistral decoder with a sliding window of ``window`` tokens, in eval mode."""
    torch.manual_seed(fixtures.SEED)
    config = MistralConfig(
        vocab_size=fixtures.VOCAB_SIZE,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=MAX_POSITIONS,
        sliding_window=window,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        use_cache=False,
        attn_implementation=fixtures.ATTN_IMPLEMENTATION,
    )
    model = MistralModel(config)
    fixtures.perturb_parameters(model)
    return fixtures.TextEncoder(model, use_cache=False).eval()


def check_past_the_window(path: Path, module: torch.nn.Module, window: int) -> None:
    """ORT matches PyTorch on unpadded and padded batches longer than the window."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, sequence, padded in ((2, 2 * window + 8, True), (1, window + 40, False)):
        inputs = fixtures.make_inputs(("input_ids", "attention_mask"), batch, sequence, padded, fixtures.SEED + 2)
        (actual,) = session.run(None, inputs)
        with torch.no_grad():
            expected = module(*(torch.from_numpy(inputs[n]) for n in ("input_ids", "attention_mask"))).numpy()
        kept = inputs["attention_mask"].astype(bool)
        error = float(np.abs(actual - expected)[kept].max())
        print(f"   ORT vs torch at [{batch}, {sequence}] padded={padded}: max diff {error:.2e} (unpadded rows)")
        if error > ATOL:
            raise RuntimeError(f"{path.name}: max |diff| {error} exceeds {ATOL}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "fixtures")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for window in WINDOWS:
        fixture = fixtures.FixtureModel(
            f"mistral_window{window}", lambda window=window: build_mistral(window), ("input_ids", "attention_mask")
        )
        fixtures.export_fixture(fixture, "dynamo", out)
        check_past_the_window(out / f"{fixture.name}_dynamo.onnx", fixture.build(), window)


if __name__ == "__main__":
    main()

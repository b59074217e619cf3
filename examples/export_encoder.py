"""Export graphopt's example model, ``examples/encoder.onnx``.

The model is a small BERT-style transformer encoder (``transformers.BertModel``
with no pooler: hidden 128, 4 layers, 4 heads, intermediate 512, vocab 2000,
256 positions). Its weights are random: Hugging Face init under
``torch.manual_seed(0)``, then seeded N(0, 0.02) noise on every parameter so
that no bias or LayerNorm parameter is trivially 0 or 1. Attention uses
``sdpa``, the transformers default.

It is exported with the legacy TorchScript exporter
(``torch.onnx.export(dynamo=False, opset_version=17)``) as one self-contained
file of about 4.5 MB:

* inputs ``input_ids``, ``attention_mask``, ``token_type_ids``: int64
  ``[batch, sequence]``;
* output ``last_hidden_state``: float32 ``[batch, sequence, 128]``.

To regenerate it, run from the repository root::

    python examples/export_encoder.py [--out PATH]

The script then checks the file with ``onnx.checker`` and compares
onnxruntime (CPU) with PyTorch: at batch 2 / sequence 16 with an all-ones
mask, and at batch 3 / sequence 9 with a right-padded mask. It raises if any
output differs by more than ``ATOL``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import BertConfig, BertModel

SEED = 0
VOCAB_SIZE = 2000
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
OPSET = 17
EXPORT_SHAPE = (2, 16)
VALIDATION_SHAPES = ((2, 16, False), (3, 9, True))  # (batch, sequence, padded)
ATOL = 1e-4
MAX_FILE_BYTES = 6_000_000


class Encoder(torch.nn.Module):
    """Calls ``BertModel`` with named tensor inputs and returns only its hidden states."""

    def __init__(self, model: BertModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> torch.Tensor:
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
        ).last_hidden_state


def build_encoder() -> Encoder:
    """Build the seeded BERT-style encoder in eval mode."""
    torch.manual_seed(SEED)
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=256,
        attn_implementation="sdpa",
    )
    model = BertModel(config, add_pooling_layer=False)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return Encoder(model).eval()


def make_inputs(batch: int, sequence: int, padded: bool, seed: int) -> dict[str, np.ndarray]:
    """Random int64 inputs; with ``padded``, row ``i`` has its last ``i`` positions masked out."""
    rng = np.random.default_rng(seed)
    attention_mask = np.ones((batch, sequence), dtype=np.int64)
    if padded:
        for row in range(1, batch):
            attention_mask[row, sequence - row :] = 0
    return {
        "input_ids": rng.integers(0, VOCAB_SIZE, (batch, sequence), dtype=np.int64),
        "attention_mask": attention_mask,
        "token_type_ids": rng.integers(0, 2, (batch, sequence), dtype=np.int64),
    }


def export(module: Encoder, path: Path) -> None:
    """Export with the legacy exporter, with ``batch`` and ``sequence`` dynamic."""
    example = make_inputs(*EXPORT_SHAPE, padded=False, seed=SEED)
    torch.onnx.export(
        module,
        tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES),
        path,
        dynamo=False,
        opset_version=OPSET,
        input_names=list(INPUT_NAMES),
        output_names=[OUTPUT_NAME],
        dynamic_axes={name: {0: "batch", 1: "sequence"} for name in (*INPUT_NAMES, OUTPUT_NAME)},
    )


def validate(path: Path, module: Encoder) -> None:
    """Check the file and compare onnxruntime with PyTorch; raise on any mismatch."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise RuntimeError(f"{path} is {size} bytes, over {MAX_FILE_BYTES}")
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, sequence, padded in VALIDATION_SHAPES:
        inputs = make_inputs(batch, sequence, padded, seed=SEED + 1)
        (actual,) = session.run([OUTPUT_NAME], inputs)
        with torch.no_grad():
            expected = module(*(torch.from_numpy(inputs[name]) for name in INPUT_NAMES)).numpy()
        if actual.shape != expected.shape:
            raise RuntimeError(f"{path.name}: shape {actual.shape} != {expected.shape}")
        max_diff = float(np.abs(actual - expected).max())
        print(f"ORT vs torch at [{batch}, {sequence}] padded={padded}: max diff {max_diff:.2e}")
        if max_diff > ATOL:
            raise RuntimeError(f"{path.name}: max |diff| {max_diff} exceeds {ATOL}")
    print(f"{path}: {size / 1e6:.2f} MB, {len(onnx.load(str(path)).graph.node)} nodes, valid")


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "encoder.onnx",
        help="output file (default: encoder.onnx next to this script)",
    )
    return parser.parse_args()


def main() -> None:
    """Export and validate the example encoder."""
    path: Path = parse_args().out
    path.parent.mkdir(parents=True, exist_ok=True)
    module = build_encoder()
    export(module, path)
    validate(path, module)


if __name__ == "__main__":
    main()

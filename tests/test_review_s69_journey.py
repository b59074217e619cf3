"""Hostile review of the user's journey end to end (README's commands on the examples, the real models and the
decoder fixtures) after session 69's changes to inputs, masks and verification.

Findings (each test failed on 3c63fd0):
- Text for a decoder whose 2-D mask pads where true (PyTorch's key padding mask, read ``Not(mask)``) given with its
  mask to ``--inputs`` or ``--calibration`` (``input_ids`` and a tokenizer's ``attention_mask``, 1 where real) was fed
  as prefills with the mask cast as given: every real token padded and every pad attended to, while the positions
  beside it were counted from it as 1 attends, and ``--generate`` read the same file negated. Now the given mask is
  negated too, with a note.
- Left-padded text for ONNX Runtime GenAI's decoder (which reads its mask only as each row's length, ``seqlens_k``)
  given to ``--inputs`` or ``--calibration`` was fed as it was: the model read a row's pads as its first tokens and its
  last tokens as padding (logits 1.19 off the row run alone), while ``--generate`` moves each row's tokens to its
  start. Now the prefill path moves them too, with a note.
- ``make-inputs`` wrote a per-row lengths input (onnx-asr's ``waveforms_lens``) as zeros: a user filling the
  template's audio in got every frame masked, NeMo's features all zeros, and ``optimize --inputs`` on it verified on
  zeros without a word. Now it writes each row's whole length, as verification draws them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.inputs import check_inputs
from optimizer.runtime import run_model
from tests._tiny_lm import build
from tests.helpers import FIXTURES
from tests.test_review_s69_decgaps import _true_pads

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def lms(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny LM (a 2-D int64 mask, 1 attends) and its twin whose boolean mask pads where true."""
    folder = tmp_path_factory.mktemp("s69journey")
    tiny = build(folder / "tiny.onnx")
    return tiny, _true_pads(tiny, folder / "pads.onnx")


def _text() -> dict[str, np.ndarray]:
    """A tokenizer's output: two rows, the first left-padded, mask 1 where a token is real."""
    return {
        "input_ids": np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]]),
        "attention_mask": np.array([[0, 0, 1, 1, 1]] * 2),
    }


def test_text_for_a_decoder_whose_mask_pads_where_true_is_fed_negated(lms):
    tiny, pads = lms
    logits = []
    for path in (tiny, pads):
        notes: list[str] = []
        model = ir.load(str(path))
        feed = check_inputs(_text(), model, "text.npz", notes)
        logits.append(run_model(model, feed)["logits"])
    np.testing.assert_array_equal(feed["attention_mask"], _text()["attention_mask"] == 0)
    assert any("attention_mask negated" in note for note in notes), notes
    real = _text()["attention_mask"].astype(bool)
    np.testing.assert_allclose(logits[1][real], logits[0][real], atol=1e-5)


def test_left_padded_text_for_a_decoder_reading_lengths_is_fed_right_padded():
    model = ir.load(str(FIXTURES / "llama_kv_genai.onnx"))
    ids, mask = (
        np.array([[0, 0, 0, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8]]),
        np.array([[0, 0, 0, 1, 1, 1, 1, 1]] + [[1] * 8]),
    )
    notes: list[str] = []
    feed = check_inputs({"input_ids": ids, "attention_mask": mask}, model, "text.npz", notes)
    alone = run_model(model, check_inputs({"input_ids": ids[:1, 3:], "attention_mask": mask[:1, 3:]}, model, "t", []))
    real = feed["attention_mask"][0].astype(bool)
    np.testing.assert_allclose(run_model(model, feed)["logits"][0][real], alone["logits"][0], atol=1e-5)
    assert any("moved to its start" in note for note in notes), notes


def test_make_inputs_writes_per_row_lengths_whole(tmp_path: Path):
    """A template whose audio a user fills in keeps its lengths: before, ``waveforms_lens`` was written 0, and
    NeMo's features on real audio beside it were zeros (an optimize ``--inputs`` on it verified nothing)."""
    from optimizer.input_skeleton import write_input_skeleton

    path = FIXTURES / "real" / "nemo80.onnx"
    line = write_input_skeleton(str(path), str(tmp_path / "inputs.npz"), {"N": 4000})
    arrays = dict(np.load(tmp_path / "inputs.npz"))
    np.testing.assert_array_equal(arrays["waveforms_lens"], [4000])
    assert "waveforms_lens int64[1] lengths (each row whole)" in line
    arrays["waveforms"] = np.sin(np.arange(4000, dtype=np.float32) * 0.05)[None]
    assert np.abs(run_model(ir.load(str(path)), arrays)["features"]).max() > 0

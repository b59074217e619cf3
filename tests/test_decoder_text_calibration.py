"""A decoder's calibration or verification data as a tokenizer writes it: token ids and an attention mask only.

README's decoder path says `--quantize int4 --calibration text.npz`; a review found such a file refused for a model
with a KV cache ("no array for graph input 'position_ids'"): every cache input and the position ids were needed.
They are now filled as a prefill is fed (every cache empty, position ids counted from the mask, as `compare
--generate` feeds held-out text), with a note; a file that gives part of the cache is still refused.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.api import optimize_with_report
from optimizer.errors import InputSpecError
from optimizer.inputs import check_inputs
from tests.helpers import FIXTURES

MODEL = FIXTURES / "llama_kv_dynamo.onnx"


def _text(rows: int = 6, length: int = 12) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(0, 100, (rows, length)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    return {"input_ids": ids, "attention_mask": mask}


def test_token_ids_and_a_mask_are_fed_as_prefills():
    model = ir.load(MODEL)
    notes: list[str] = []
    feeds = check_inputs(_text(), model, "--calibration text.npz", notes)
    assert feeds["position_ids"].tolist()[0] == [1, 1, 1, *range(9)]  # pads at 1, as transformers' generate
    assert feeds["past_key_values.0.key"].shape[0] == 6 and feeds["past_key_values.0.key"].shape[2] == 0
    assert any("fed as prefills, every cache empty" in note for note in notes), notes


def test_token_ids_alone_get_a_mask_of_ones():
    feeds = check_inputs({"input_ids": _text()["input_ids"]}, ir.load(MODEL), "x", [])
    assert (feeds["attention_mask"] == 1).all() and feeds["position_ids"].tolist()[1] == list(range(12))


def test_part_of_a_cache_is_still_refused():
    model = ir.load(MODEL)
    text = _text()
    text["past_key_values.0.key"] = check_inputs(_text(), model, "x", [])["past_key_values.0.key"]
    with pytest.raises(InputSpecError, match="no array for graph input"):
        check_inputs(text, model, "x", [])


def test_int4_calibrates_on_text_as_the_readme_says():
    _, report = optimize_with_report(ir.load(MODEL), quantize="int4", calibration=_text())
    record = next(r for r in report.passes if r.name == "quantize-int4")
    assert record.status == "applied", record.detail
    assert report.verified

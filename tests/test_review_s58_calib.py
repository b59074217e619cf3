"""Review of 2026-12-05 (s58, user data): big-endian arrays, and accuracy measured on --calibration's own samples."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx_ir as ir

from optimizer.compare.comparison import CompareSettings, compare
from optimizer.inputs import load_inputs
from optimizer.samples import open_samples
from tests import _tiny_lm
from tests._cli_models import save_matmul_model

_QUICK = CompareSettings(iterations=3, warmup=1, time_budget=2.0)


def _samples(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 8)).astype(np.float32)


def test_big_endian_float32_is_read_as_float32(tmp_path: Path) -> None:
    # numpy.savez keeps an array's byte order: '>f4' data was refused as "'x' is >f4, the model expects float32".
    model_path = save_matmul_model(tmp_path / "m.onnx")
    model = ir.load(model_path)
    values = _samples(6, 0)
    np.savez(tmp_path / "be.npz", x=values.astype(">f4"))
    inputs = load_inputs(tmp_path / "be.npz", model, notes=[])
    assert inputs["x"].dtype == np.float32 and np.array_equal(inputs["x"], values)
    data = open_samples(tmp_path / "be.npz", model)
    assert data.count == 6 and np.array_equal(data.first()["x"], values)
    assert open_samples({"x": values.astype(">f4")}, model).count == 6


def _overlap_warnings(report) -> list[str]:
    return [w for w in report.warnings if "--calibration samples too" in w]


def test_compare_says_which_inputs_are_calibration_samples(tmp_path: Path) -> None:
    # optimize --compare --calibration C --inputs C reported accuracy "on --inputs C (10 samples)" with no word that
    # these are the very samples the ranges (or a repair, a budget) were fitted to.
    model = save_matmul_model(tmp_path / "m.onnx")
    calibration = _samples(10, 1)
    np.savez(tmp_path / "calibration.npz", x=calibration)
    report = compare(
        model, model, settings=_QUICK, inputs=tmp_path / "calibration.npz", calibration=tmp_path / "calibration.npz"
    )
    (warning,) = _overlap_warnings(report)
    assert warning.startswith("10 of --inputs") and "not held-out accuracy" in warning
    # Three of them among two new samples: counted; samples calibration does not hold: no warning.
    np.savez(tmp_path / "mixed.npz", x=np.concatenate([calibration[[7, 2, 2]], _samples(2, 2)]))
    report = compare(
        model, model, settings=_QUICK, inputs=tmp_path / "mixed.npz", calibration=tmp_path / "calibration.npz"
    )
    (warning,) = _overlap_warnings(report)
    assert warning.startswith("3 of --inputs")
    np.savez(tmp_path / "held_out.npz", x=_samples(5, 3))
    report = compare(
        model, model, settings=_QUICK, inputs=tmp_path / "held_out.npz", calibration=tmp_path / "calibration.npz"
    )
    assert not _overlap_warnings(report)


def test_compare_says_which_held_out_text_rows_are_calibration_rows(tmp_path: Path) -> None:
    # optimize --compare --generate with the --calibration text as --inputs: the language-model accuracy was on the
    # calibration rows, captioned as the held-out text.
    lm = _tiny_lm.build(tmp_path / "lm.onnx")
    ids = np.random.default_rng(0).integers(1, _tiny_lm.VOCAB, (6, 8)).astype(np.int64)
    np.savez(tmp_path / "text.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    other = np.random.default_rng(1).integers(1, _tiny_lm.VOCAB, (2, 8)).astype(np.int64)
    np.savez(tmp_path / "held_out.npz", input_ids=np.concatenate([ids[:2], other]))
    settings = CompareSettings(iterations=2, warmup=1, time_budget=2.0, generate=True, prompt_length=8, new_tokens=2)
    report = compare(lm, lm, settings=settings, inputs=tmp_path / "held_out.npz", calibration=tmp_path / "text.npz")
    (warning,) = _overlap_warnings(report)
    assert warning.startswith("2 of --inputs") and "rows" in warning


def test_a_static_int8_figure_on_the_rows_its_ranges_came_from_says_so() -> None:
    # Without a budget nothing is held out: the summary's cosine is on the calibration rows the ranges were taken
    # from, and said nothing of it (4 heavy-tailed rows: 0.9995, worst sample 0.9989; 64 new rows: 0.989, worst
    # 0.75). GPTQ's figure says so; static int8's now does too, and a budget's held-out figure still says its own.
    from optimizer.accuracy import AccuracyBudget
    from passes.quantization.static import StaticQuantizationPass
    from tests.passes.quantization.graphs import mlp

    model = mlp()
    feeds = {"x": np.random.default_rng(5).standard_t(2, (10, 4, 32)).astype(np.float32)}
    plain = StaticQuantizationPass(samples=feeds, method="minmax")
    summary = next(note for note in plain(model.clone()).notes if "layers int8" in note)
    assert "on the calibration samples its ranges were taken from (none held out: an optimistic figure" in summary
    budgeted = StaticQuantizationPass(samples=feeds, method="minmax", budget=AccuracyBudget(min_cosine=0.5))
    result = budgeted(model.clone())
    summary = next(note for note in result.notes if "layers int8" in note and "cosine" in note)
    assert re.search(r"on the \d+ held-out samples?$", summary) and result.fitted_to_samples, summary


def test_held_out_text_beside_an_array_the_model_does_not_read_is_still_the_text(tmp_path: Path) -> None:
    # A tokenizer's output (input_ids, attention_mask, token_type_ids) for a GPT that reads no token type ids: the
    # extra array made the file one step's inputs, and the language-model accuracy ran on random token ids.
    lm = _tiny_lm.build(tmp_path / "lm.onnx")
    ids = np.random.default_rng(0).integers(1, _tiny_lm.VOCAB, (3, 8)).astype(np.int64)
    np.savez(tmp_path / "text.npz", input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids))
    settings = CompareSettings(iterations=2, warmup=1, time_budget=2.0, generate=True, prompt_length=8, new_tokens=2)
    report = compare(lm, lm, settings=settings, inputs=tmp_path / "text.npz")
    assert "'token_type_ids' matches no graph input: ignored" in " ".join(report.warnings), report.warnings
    text = report.providers[0].llm_accuracy.text
    assert "text.npz (3 rows)" in text and "random" not in text, text

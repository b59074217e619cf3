"""Hostile review s69 (cmpgate): ``graphopt compare``'s figures, JSON and exit-code gates after session 69's changes.

Findings (each test failed on fe54e77):
1. Fixed. ``compare --generate`` fed AFTER its 4-D mask in its own convention: an AFTER equal to BEFORE whose graph
   reads a true-pads boolean mask through ``Cast(1 - Cast(mask))`` (read "attends") where BEFORE's ``Where(mask, -inf,
   scores)`` reads "pads" was fed the mask inverted; the next-token agreement of two equal models was 0.06 (only the
   2-D ``mask_pads`` was carried over from BEFORE by fe54e77).
2. Fixed. A boolean text mask (``--inputs``/``--calibration``: token ids beside ``attention_mask``) for a decoder whose
   own mask pads where true, 2-D (``Not(mask)``) or 4-D (``Where(mask, -inf, scores)``), was read as attending where
   true: a PyTorch user's key padding mask (true pads) padded every real token and attended every pad (logits 18 off,
   NaN for the 4-D one), with a note that said "negated". Now booleans for such a model are read in its convention,
   with a note that says so; integers stay a tokenizer's (1 attends). The same for a real decode step's 2-D boolean
   mask made 4-D, and for ``compare --generate``'s held-out text (with a warning).
3. Fixed. ``compare --batch 1,4 --max-ratio R`` on a model at whose batch 4 BEFORE refuses its rows tiled (session
   69's skip, which was exit 2 before) exited 0 on batch 1 alone, and ``--batch 4`` exited 0 on batch 1, a size not
   asked for, timed in its place; the skip was a warning string only. Now the JSON lists ``skipped_batches`` and
   ``--max-ratio`` fails on each, as on a skipped execution provider.
4. Fixed. A string output (a classifier's label) had no ``agreement`` (an infinite max |Δ| alone), where the
   approximate passes' budgets score it by agreement; and every agreement was written ``:.3f``: one label in 10,000
   changed read "1.000" in the terminal's table, the HTML's table and its verdict beside a gate that failed on it (and
   the gate's line gave no figure). Now ``share_text`` writes it with the digits that keep it from reading 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from rich.console import Console

from optimizer.accuracy import OutputAccuracy, output_accuracy
from optimizer.compare.comparison import CompareSettings, compare
from optimizer.gates import accuracy_failures, slower_failures
from optimizer.generation import recognise_causal_lm
from optimizer.inputs import check_inputs
from optimizer.llm_accuracy import text_from_arrays
from optimizer.runtime import run_model
from tests._tiny_lm import build
from tests.test_review_s68_mask4d import _edited
from tests.test_review_s69_decgaps import _decode_step, _true_pads
from tests.test_review_s69_userside import _top_k

_IDS = np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
_ATTENDS = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # a tokenizer's: 1 where a token attends


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The tiny LM (a 2-D int64 mask), its 2-D true-pads twin (``Not(mask)``), its 4-D true-pads twin (``Where(mask,
    -inf, scores)``) and that twin reading the mask through ``Cast(1 - Cast(mask))`` (equal on every input)."""
    folder = tmp_path_factory.mktemp("cmpgate")
    tiny = build(folder / "tiny.onnx")
    pads4 = Path(_edited(tiny, folder / "pads4.onnx", "where_pads"))
    proto = onnx.load(str(pads4))
    at = next(
        i for i, node in enumerate(proto.graph.node) if node.op_type == "Where" and node.input[0] == "attention_mask"
    )
    n = helper.make_node
    proto.graph.node[at].CopyFrom(n("Cast", ["attention_mask"], ["mi"], to=TensorProto.INT64))
    proto.graph.node.insert(at + 1, n("Sub", ["one", "mi"], ["msub"]))
    proto.graph.node.insert(at + 2, n("Cast", ["msub"], ["mkeep"], to=TensorProto.BOOL))
    proto.graph.node.insert(at + 3, n("Where", ["mkeep", "sc1", "ninf"], ["sc"]))
    onnx.save(proto, str(folder / "pads4_sub.onnx"))
    return {
        "tiny": tiny,
        "pads2": _true_pads(tiny, folder / "pads2.onnx"),
        "pads4": pads4,
        "pads4_sub": folder / "pads4_sub.onnx",
    }


@pytest.fixture(scope="module")
def twin_logits(models) -> np.ndarray:
    """The 2-D-masked tiny LM's logits on the text (the tokenizer's mask)."""
    model = ir.load(str(models["tiny"]))
    return run_model(model, check_inputs({"input_ids": _IDS, "attention_mask": _ATTENDS}, model, "t", []))["logits"]


# -- 1. compare --generate: AFTER's 4-D mask in BEFORE's convention ---------------------------------------------------


def test_compare_generate_feeds_afters_4d_mask_in_befores_convention(models):
    before, after = models["pads4"], models["pads4_sub"]
    conventions = [recognise_causal_lm(ir.load(str(path))).mask_convention for path in (before, after)]
    assert conventions == ["pads", "attends"]  # what the graphs say; both are equal on every input
    quick = dict(threads=1, iterations=2, warmup=0, time_budget=0.5, prompt_length=6, new_tokens=3)
    report = compare(before, after, settings=CompareSettings(batches=(2,), generate=True, **quick))
    # Before: AFTER fed the 4-D mask inverted (true where it attends), next-token agreement 0.06.
    llm = report.providers[0].llm_accuracy
    assert llm.top1_agreement == 1.0 and llm.logits_cosine > 0.9999, llm


# -- 2. a boolean text mask for a model that pads where true ----------------------------------------------------------


@pytest.mark.parametrize("which", ["pads2", "pads4"])
def test_a_boolean_text_mask_is_read_in_the_convention_of_a_model_padding_where_true(models, twin_logits, which):
    model = ir.load(str(models[which]))
    notes: list[str] = []
    given = check_inputs({"input_ids": _IDS, "attention_mask": _ATTENDS == 0}, model, "text.npz", notes)  # true pads
    # Before: read as true-attends, every real token padded (logits 18 off; NaN for the 4-D mask).
    got = run_model(model, given)["logits"]
    np.testing.assert_allclose(got[_ATTENDS == 1], twin_logits[_ATTENDS == 1], atol=1e-5)
    assert "boolean: read as the model reads its own, true where a token is padded" in notes[0], notes
    assert "negated" not in notes[0], notes
    # A tokenizer's integers stay 1-attends.
    ints = check_inputs({"input_ids": _IDS, "attention_mask": _ATTENDS}, model, "text.npz", [])
    np.testing.assert_allclose(run_model(model, ints)["logits"][_ATTENDS == 1], twin_logits[_ATTENDS == 1], atol=1e-5)


def test_a_boolean_decode_step_mask_is_read_in_the_convention_of_a_4d_mask_padding_where_true(models):
    model, twin = ir.load(str(models["pads4"])), ir.load(str(models["tiny"]))
    step = _decode_step()
    notes: list[str] = []
    checked = check_inputs({**step, "attention_mask": step["attention_mask"] == 0}, model, "step.npz", notes)
    # Before: the true-pads mask made 4-D as true-attends: the step attended to the 3 pads alone.
    np.testing.assert_allclose(run_model(model, checked)["logits"], run_model(twin, step)["logits"], atol=1e-5)
    assert any("boolean: read as the model reads its own" in note for note in notes), notes


def test_compare_generates_held_out_boolean_text_in_the_convention_of_a_model_padding_where_true(models):
    lm = recognise_causal_lm(ir.load(str(models["pads2"])))
    text = text_from_arrays({"input_ids": _IDS, "attention_mask": _ATTENDS == 0}, lm, "--inputs text.npz")
    # Before: the pads kept (row 0 was [0, 0]) and the real tokens dropped (row 1 was empty).
    assert [row.tolist() for row in text.rows] == [[5, 6, 7], [1, 2, 3, 4, 5]]
    from optimizer.compare.comparison import _held_out_text

    warnings: list[str] = []
    held, _ = _held_out_text(
        {"input_ids": _IDS, "attention_mask": _ATTENDS == 0}, lm, ir.load(str(models["pads2"])), warnings
    )
    assert [row.tolist() for row in held.rows] == [[5, 6, 7], [1, 2, 3, 4, 5]]
    assert any("'attention_mask' is boolean: read as the model reads its own" in w for w in warnings), warnings


# -- 3. a skipped --batch fails --max-ratio ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def top_k_report(tmp_path_factory):
    """compare --batch 1,4 on ``TopK(X [None, 4], k [None])``, at whose batch 4 BEFORE refuses ``k`` tiled."""
    model = _top_k(tmp_path_factory.mktemp("top_k") / "top_k.onnx")
    settings = CompareSettings(eps=("cpu",), batches=(1, 4), threads=1, time_budget=0.2, iterations=2, warmup=0)
    return compare(model, model, settings=settings)


def test_a_skipped_batch_is_in_the_json_and_fails_max_ratio(top_k_report, tmp_path: Path):
    from optimizer.compare.report import write_json

    (provider,) = top_k_report.providers
    assert [batch.batch for batch in provider.batches] == [1]
    write_json(top_k_report, tmp_path / "r.json")
    (written,) = json.loads((tmp_path / "r.json").read_text())["providers"]
    # Before: a warning string alone, and --max-ratio judged batch 1 alone (exit 0).
    assert [skip["batch"] for skip in written["skipped_batches"]] == [4], written
    lines = slower_failures(top_k_report, 1e9)
    assert any(
        line.startswith("--max-ratio 1000000000: cpu batch 4 was skipped (ONNX Runtime refuses") for line in lines
    )


# -- 4. a string label's agreement, and agreement never rounded to 1 -------------------------------------------------


def test_a_string_output_has_an_agreement():
    before = np.array([["cat", "dog"], ["dog", "cat"]], dtype=object)
    after = np.array([["cat", "dog"], ["dog", "dog"]], dtype=object)
    # Before: agreement None (an infinite max |Δ| alone), where the approximate passes' budgets score it by agreement.
    assert output_accuracy("label", before, after).agreement == 0.75
    assert output_accuracy("label", before, before.copy()).agreement == 1.0


def test_one_label_in_ten_thousand_changed_reads_below_1_everywhere(tmp_path: Path):
    from optimizer.compare.html import render_html
    from optimizer.compare.report import _accuracy_table
    from tests.test_html_report import _report

    labels = OutputAccuracy("label", "int64", [10000], 1.0, 1.0, samples=10000, agreement=0.9999)
    report = _report()
    report.providers[0].accuracy = [labels]
    console = Console(width=200, record=True)
    console.print(_accuracy_table(report.providers[0]))
    # Before: "1.000" in the table, the HTML and its verdict ("integer agreement 1.000"), beside a failed gate.
    assert "0.9999" in console.export_text() and "1.000" not in console.export_text()
    page = render_html(report)
    assert "integer agreement 0.9999" in page and "agreement 1.000" not in page
    (line,) = [line for line in accuracy_failures(report, 0.99) if "'label'" in line]
    assert "differs and has no cosine similarity (agreement 0.9999" in line, line


def test_a_batch_asked_of_a_model_without_one_is_skipped_and_fails_max_ratio(tmp_path: Path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    quick = dict(eps=("cpu",), threads=1, time_budget=0.2, iterations=12, warmup=0)
    asked = compare(path, path, settings=CompareSettings(batches=(8,), **quick))
    # Before: batch 2 timed in batch 8's place and --max-ratio judged it alone (exit 0).
    assert [skip.batch for skip in asked.providers[0].skipped_batches] == [8]
    assert any(
        "cpu batch 8 was skipped (no input dim is named like a batch" in line for line in slower_failures(asked, 1e9)
    )
    unasked = compare(path, path, settings=CompareSettings(**quick))  # the default batch is no batch asked for
    assert unasked.providers[0].skipped_batches == []

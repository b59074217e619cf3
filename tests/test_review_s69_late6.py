"""Hostile review s69 (late6): compare's figures and gates after c2437f2 (skipped batches, masks, agreements).

Findings (each test failed on c2437f2):
1. Fixed. Where AFTER fixes its batch (``--static-shapes --dim batch=2``), ``compare --batch 1,8 --max-ratio R``
   timed batch 2 alone, a size not asked for, and exited 0: the batches asked for were neither in
   ``skipped_batches`` nor judged (the very case c2437f2 made fail for a model without a batch).
2. Fixed. A ``--batch`` AFTER alone refuses where BEFORE runs it (a rewrite that fixed the batch inside the graph)
   was exit 2 with "the model does not take a batch of 4 (leave it out of --batch)": advice to hide AFTER's
   regression. Now the error names it AFTER's, and says BEFORE runs that batch.
3. Fixed. A tagger's text labels that differ only at padded tokens (which the accuracy leaves out, agreement 1)
   kept an infinite max |Δ|, and ``--min-cosine`` failed on them "differs and has no cosine similarity (agreement
   1.000)", where an integer output differing at the same positions passes.
4. Fixed (wording). A skipped batch of a model of one fixed row read "timed at the 1 rows its inputs hold".
5. Fixed. The HTML verdict of text labels that differ (c2437f2 gave them an agreement) said "'label' differ: NaN/Inf or
   non-numeric values" without it: one label in 10,000 changed read as any number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import AccuracyAccumulator
from optimizer.compare.comparison import CompareSettings, compare
from optimizer.errors import InvalidModelError
from optimizer.gates import accuracy_failures, slower_failures

_QUICK = dict(eps=("cpu",), threads=1, time_budget=0.1, iterations=2, warmup=0)


def _relu(path: Path, shape: list, *, fixed_inside: bool = False) -> Path:
    """``y = Relu(x)`` on ``x`` of ``shape``; ``fixed_inside``: through a ``Reshape`` to ``[1, 4]`` (a batch of 1
    fixed inside the graph, ``x`` still declared ``[batch, 4]``)."""
    nodes, inits = [helper.make_node("Relu", ["x"], ["y"])], []
    if fixed_inside:
        inits = [numpy_helper.from_array(np.array([1, 4], np.int64), "s")]
        nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def relus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("late6")
    return {
        "dynamic": _relu(folder / "dynamic.onnx", ["batch", 4]),
        "static2": _relu(folder / "static2.onnx", [2, 4]),
        "static1": _relu(folder / "static1.onnx", [1, 4]),
        "batch_of_one": _relu(folder / "batch_of_one.onnx", ["batch", 4], fixed_inside=True),
    }


def test_batches_asked_where_after_fixes_another_are_skipped_and_fail_max_ratio(relus):
    before, after = relus["dynamic"], relus["static2"]  # AFTER of --static-shapes --dim batch=2
    asked = compare(before, after, settings=CompareSettings(batches=(1, 8), **_QUICK))
    (provider,) = asked.providers
    assert [batch.batch for batch in provider.batches] == [2]
    # Before: no skipped batch, and --max-ratio judged batch 2, not asked for, alone (exit 0).
    assert [skip.batch for skip in provider.skipped_batches] == [1, 8], provider.skipped_batches
    lines = slower_failures(asked, 1e9)
    assert any("cpu batch 8 was skipped (AFTER fixes its batch at 2: give --batch 2)" in line for line in lines), lines
    unasked = compare(before, after, settings=CompareSettings(**_QUICK))  # the default batch is no batch asked for
    assert unasked.providers[0].skipped_batches == []


def test_a_batch_after_alone_refuses_is_named_afters_regression(relus):
    settings = CompareSettings(batches=(1, 4), **_QUICK)
    with pytest.raises(InvalidModelError) as raised:
        compare(relus["dynamic"], relus["batch_of_one"], settings=settings)
    message = str(raised.value)
    # Before: "... the model does not take a batch of 4 (leave it out of --batch)", of AFTER's regression.
    assert "AFTER does not take a batch of 4, which BEFORE runs" in message, message
    assert "leave it out of --batch" not in message, message
    # Both refusing it is still the user's batch to leave out.
    with pytest.raises(InvalidModelError, match=r"the model does not take a batch of 4 \(leave it out of --batch\)"):
        compare(relus["batch_of_one"], relus["batch_of_one"], settings=settings)


def test_text_labels_differing_only_at_padded_tokens_pass_min_cosine():
    from tests.test_html_report import _report

    before = np.array([["B", "I", "O"], ["B", "O", "O"]], dtype=object)
    after = before.copy()
    after[1, 2] = "I"  # a padded token's label
    padded = np.array([[False, False, False], [False, False, True]])
    accumulator = AccuracyAccumulator()
    accumulator.add({"tags": before}, {"tags": after}, padded={"tags": padded})
    (tags,) = accumulator.results()
    assert tags.agreement == 1.0
    report = _report()
    report.providers[0].accuracy = [tags]
    # Before: "output 'tags' (object) differs and has no cosine similarity (agreement 1.000)".
    lines = [line for line in accuracy_failures(report, 0.99) if "'tags'" in line]
    assert lines == [], lines
    # A label changed at a real token still fails.
    after[0, 1] = "O"
    accumulator = AccuracyAccumulator()
    accumulator.add({"tags": before}, {"tags": after}, padded={"tags": padded})
    report.providers[0].accuracy = accumulator.results()
    assert any("'tags' (object) differs" in line for line in accuracy_failures(report, 0.99))


def test_a_skipped_batch_of_one_fixed_row_reads_row(relus):
    report = compare(relus["static1"], relus["static1"], settings=CompareSettings(batches=(8,), **_QUICK))
    (skip,) = report.providers[0].skipped_batches
    assert skip.reason == "no input dim is named like a batch: timed at the 1 row its inputs hold instead", skip


def test_the_html_verdict_of_text_labels_that_differ_gives_their_agreement():
    from optimizer.accuracy import output_accuracy
    from optimizer.compare.html import render_html
    from tests.test_html_report import _report

    before = np.array(["cat"] * 9999 + ["dog"], dtype=object)
    after = np.array(["cat"] * 10000, dtype=object)
    report = _report()
    report.providers[0].accuracy = [output_accuracy("label", before, after)]
    # Before: "'label' differ: NaN/Inf or non-numeric values", one label in 10,000 read as any number of them.
    assert "'label' (agreement 0.9999) differ" in render_html(report).replace("&#x27;", "'")

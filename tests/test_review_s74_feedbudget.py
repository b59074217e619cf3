"""Review s74 (feedbudget): the accuracy budgets (the pipeline's ``Verifier.check_approximation``, and quantization's,
pruning's and low-rank's own searches through ``optimizer.draws.budget_references``) measure an output computed from
draws of the main graph fed the same draws in the reference and the candidate (``optimizer.draws.fed_budget_runs``),
where they left it out: an approximate pass's error on a drawn output was bounded by no budget (the two strict xfails
of review s74 late4 and drawsmod now pass). Here: what stays as it was.

1. A model without draws gets its budget runs as they were: no copy, no extra run.
2. A Dropout whose ``training_mode`` is a graph input is not fed: its output stays left out, and the pass's note now
   names it (it said nothing).
3. A result that draws otherwise (its Dropout's ratio changed) is measured without the fed outputs, not against draws
   it does not make.
4. A slice of a fed reference (pruning's output-effect probe) keeps the draws of its batches.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimizer import draws
from optimizer.draws import budget_references, left_out_note
from optimizer.runtime import budget_runs, drift_of
from tests.test_review_s74_drawsmod import _partly_drawn

_BATCHES = [{"x": np.random.default_rng(2).standard_normal((2, 32)).astype(np.float32)} for _ in range(2)]


def test_a_model_without_draws_gets_its_budget_runs_as_they_are(monkeypatch):
    model = _partly_drawn()
    model.graph.initializers["training"].const_value = ir.tensor(np.array(False))  # an inference-mode Dropout
    expected = budget_runs(model, _BATCHES)

    def refused(*args, **kwargs):
        raise AssertionError("a model without draws was copied and run to feed them")

    monkeypatch.setattr(draws, "draw_values", refused)
    reference = budget_references(model, _BATCHES)
    assert type(reference) is list and left_out_note(reference) is None
    assert [sorted(run) for run in reference] == [sorted(run) for run in expected]
    assert all(np.array_equal(run[name], old[name]) for run, old in zip(reference, expected) for name in run)


def test_a_dropout_whose_training_mode_is_an_input_is_left_out_and_named():
    from optimizer.api import optimize_with_report

    model = _partly_drawn()
    model.graph.inputs.append(model.graph.initializers["training"])
    assert [set(run) for run in budget_references(model, _BATCHES)] == [{"z"}, {"z"}]  # not fed: left out
    _, report = optimize_with_report(
        model, ["quantize-dynamic"], quantize="dynamic", dims={"batch": 2}, min_cosine=0.99
    )
    (record,) = [record for record in report.passes if record.name == "quantize-dynamic"]
    assert any("output 'y' not measured" in note for note in record.notes), record.notes


def test_a_result_that_draws_otherwise_is_measured_without_the_fed_outputs():
    model = _partly_drawn()
    reference = budget_references(model, _BATCHES)
    assert all(set(run) == {"y", "z"} for run in reference)  # fed: the Dropout's output measured
    assert drift_of(model.clone(), _BATCHES, reference).max_error == 0  # the same draws: the same outputs
    other = model.clone()
    other.graph.initializers["ratio"].const_value = ir.tensor(np.array(0.25, np.float32))
    # Fed the input's masks, its output would be scaled by 1 / 0.75, not 1 / 0.5: measured on z alone, as it is.
    drift = drift_of(other, _BATCHES, reference)
    assert drift.max_error == 0 and drift.norm_ratio is None, drift


def test_a_slice_of_a_fed_reference_keeps_its_batches_draws():
    model = _partly_drawn()
    part = budget_references(model, _BATCHES)[:1]
    assert "y" in part[0] and len(part.values) == 1
    assert drift_of(model.clone(), _BATCHES[:1], part).max_error == 0  # fed the first batch's masks

"""Review s74 (drawsmod): the random-draw code moved out of ``optimizer/verify.py`` into ``optimizer/draws.py`` (which
outputs a model's draws reach, which draws of the main graph verification feeds, feeding them), and the approximate
passes' own budget searches, which measured a drawn output on the numbers each of their runs drew.

1. **Quantization's budget search measured a Dropout's output on other masks**: the pipeline's budget leaves drawn
   outputs out (``optimizer.draws.undrawn``, review s74 late2), but the search's reference was the float model's
   outputs, all of them: a training-mode Dropout's output beside a deterministic one scored a cosine of 0.455 (the
   table read 1.0000 for the other) and ``--min-cosine 0.99`` left the model float, "cannot be met". Its references
   now leave out what a draw reaches on every run (``optimizer.draws.undrawn_budget_runs``), and so do pruning's
   ("no cut that removes a unit meets --min-cosine 0.99") and low-rank's ("no ranks meet --min-cosine 0.99").
2. **An output random only for an input's value** (a Dropout's ``training_mode`` a graph input, its default True) is
   found random by the pipeline's budget, which runs the model five times, but by no constant: the searches measured
   it on other masks. Where a node may draw, the references leave out the outputs two runs of the first batch differ
   on.

Left here as a strict xfail until review s74 feedbudget, which feeds the draws to the budgets
(``optimizer.draws.budget_references``): no budget measured a drawn output, so an approximate pass's error on one was
bounded by nothing (low-rank of the layer feeding only a Dropout: cosine 0.93 on one mask under ``--min-cosine 0.99``,
reported as 1.0000).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.draws import drawn_outputs, undrawn_budget_runs

_N = helper.make_node


def _partly_drawn(width: int = 32, rank: int | None = None) -> ir.Model:
    """``y = Dropout(x @ W1, 0.5, training=True)`` beside a deterministic ``z = Relu(x @ W2) @ W3``; ``W1`` of
    ``rank`` (default: full)."""
    rng = np.random.default_rng(0)
    first = rng.standard_normal((width, width)).astype(np.float32)
    if rank is not None:
        first = (first[:, :rank] @ first[:rank] / np.sqrt(rank)).astype(np.float32)
    graph = helper.make_graph(
        [
            _N("MatMul", ["x", "W1"], ["h"]),
            _N("Dropout", ["h", "ratio", "training"], ["y"]),
            _N("MatMul", ["x", "W2"], ["a"]),
            _N("Relu", ["a"], ["r"]),
            _N("MatMul", ["r", "W3"], ["z"]),
        ],
        "partly_drawn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width]) for name in ("y", "z")],
        [
            numpy_helper.from_array(first, "W1"),
            *(
                numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), name)
                for name in ("W2", "W3")
            ),
            numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
            numpy_helper.from_array(np.array(True), "training"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


def test_a_budgets_reference_leaves_out_the_outputs_a_draw_reaches():
    model = _partly_drawn()
    assert drawn_outputs(model.graph, model.functions) == {"y"}
    batches = [{"x": np.ones((2, 32), np.float32)}]
    assert [set(run) for run in undrawn_budget_runs(model, batches)] == [{"z"}]


@pytest.mark.parametrize(
    "passes, options",
    [
        (["quantize-dynamic"], {"quantize": "dynamic"}),  # was: "cannot be met ...: model left float" (cosine 0.53)
        (["prune-ffn"], {"prune_ffn": 0.25}),  # was: "no cut that removes a unit meets --min-cosine 0.99"
    ],
    ids=["quantize", "prune"],
)
def test_an_approximate_passs_budget_search_does_not_measure_a_dropouts_output_on_other_masks(passes, options):
    from optimizer.api import optimize_with_report

    _, report = optimize_with_report(_partly_drawn(), passes, dims={"batch": 2}, min_cosine=0.99, **options)
    (record,) = [record for record in report.passes if record.name == passes[0]]
    assert record.status == "applied", record.notes


def test_low_ranks_budget_search_does_not_measure_a_dropouts_output_on_other_masks():
    """Was: "no ranks meet --min-cosine 0.99: nothing factorized", the Dropout's output measured on other masks. ``W1``
    of rank 16, which low-rank factorizes exactly: full rank, nothing meets the budget on the Dropout's output fed one
    mask (``test_a_budget_holds_a_drawn_output_fed_the_same_draws``; review s74 feedbudget)."""
    from optimizer.accuracy import AccuracyBudget
    from passes.factorization.lowrank import LowRankFactorizationPass
    from tests.passes.factorization.graphs import FakeSpeed

    samples = {"x": np.random.default_rng(1).standard_normal((8, 128)).astype(np.float32)}
    budget = AccuracyBudget(min_cosine=0.99)
    factorize = LowRankFactorizationPass(
        0.25, samples=samples, budget=budget, importance="magnitude", repair=False, speed=FakeSpeed()
    )
    result = factorize(_partly_drawn(128, rank=16))
    assert result.modified, getattr(result, "notes", None)


def test_a_budget_search_leaves_out_an_output_random_for_a_training_mode_fed_as_an_input():
    """A Dropout's ``training_mode`` that is a graph input (its default True) draws on every run too, though no
    constant says so: the pipeline's budget leaves its output out (found by running the model), the search measured
    it on other masks ("cannot be met ...: model left float")."""
    from optimizer.api import optimize_with_report

    model = _partly_drawn()
    model.graph.inputs.append(model.graph.initializers["training"])
    assert drawn_outputs(model.graph, model.functions) == set()  # not known without running it
    _, report = optimize_with_report(
        model, ["quantize-dynamic"], quantize="dynamic", dims={"batch": 2}, min_cosine=0.99
    )
    (record,) = [record for record in report.passes if record.name == "quantize-dynamic"]
    assert record.status == "applied", record.notes


def test_a_budget_holds_a_drawn_output_fed_the_same_draws():
    """Left out of every budget, a drawn output's error is bounded by nothing: low-rank factorizes the layer that feeds
    only the Dropout, reports "cosine 1.0000, max |Δ| 0" under ``--min-cosine 0.99``, and fed one mask, the Dropout's
    output of the result is at a cosine of 0.93 from the input's (its twin computes the same, so the twin check passes
    it too). Feeding the draws to the budget's runs (``optimizer.draws.with_draws_fed``) would hold it."""
    from optimizer.accuracy import AccuracyBudget
    from optimizer.draws import draw_values, main_draws, with_draws_fed
    from optimizer.runtime import run_model
    from passes.factorization.lowrank import LowRankFactorizationPass
    from tests.passes.factorization.graphs import FakeSpeed

    samples = {"x": np.random.default_rng(1).standard_normal((8, 128)).astype(np.float32)}
    model = _partly_drawn(128)
    budget = AccuracyBudget(min_cosine=0.99)
    factorize = LowRankFactorizationPass(
        0.25, samples=samples, budget=budget, importance="magnitude", repair=False, speed=FakeSpeed()
    )
    result = factorize(model.clone())
    values, draws = draw_values(model, main_draws(model.graph), [samples])
    before, after = (run_model(with_draws_fed(m, draws), {**samples, **values[0]})["y"] for m in (model, result.model))
    cosine = float((before * after).sum() / np.linalg.norm(before) / np.linalg.norm(after))
    assert cosine >= 0.99, cosine

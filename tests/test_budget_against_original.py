"""A pruning or low-rank pass after an earlier approximate pass searches its budget against the pipeline's input
(``PassContext.original``), as the pipeline then checks it, not against the model it was given (the int8 search
had the same gap: ``tests/test_review_s59_budget.py``)."""

from __future__ import annotations

import numpy as np

from optimizer.accuracy import AccuracyBudget
from passes._utils import add_initializer, constant_array
from passes.factorization.lowrank import LowRankFactorizationPass
from passes.pruning.ffn import FfnPruningPass
from tests.passes.factorization import graphs as lowrank_graphs
from tests.passes.factorization.graphs import FakeSpeed
from tests.passes.pruning.graphs import feeds, ffn_stack


def _moved(model, node_name: str, factor: float):
    """``model`` with node ``node_name``'s weight scaled: an earlier pass's drift, as the original sees it."""
    original = model.clone()
    node = original.graph.node(node_name)
    weight = constant_array(node.inputs[1]) * np.float32(factor)
    node.replace_input_with(1, add_initializer(original.graph, f"{node.inputs[1].name}.moved", weight))
    return original


def test_low_rank_searches_its_ranks_against_the_original():
    model = lowrank_graphs.projections(rank=8)  # exact at rank 8: against its own input, any budget is met
    original = _moved(model, "down_proj", 1.5)  # an earlier pass moved the outputs by half
    x = lowrank_graphs.inputs(128, count=16)
    budget = AccuracyBudget(min_cosine=0.999, max_error=1e-2)
    alone = LowRankFactorizationPass(0.5, samples={"x": x}, budget=budget, speed=FakeSpeed())(model.clone())
    assert alone.modified
    bound = LowRankFactorizationPass(0.5, samples={"x": x}, budget=budget, speed=FakeSpeed(), original=original)
    result = bound(model.clone())
    assert not result.modified and any("no ranks meet" in note for note in result.notes), result.notes


def test_pruning_searches_its_cut_against_the_original():
    model = ffn_stack((1.0, 1.0))
    original = _moved(model, "down_proj1", 1.5)
    samples = feeds(model, 32, seed=1)
    budget = AccuracyBudget(min_cosine=0.97)  # the cut alone: 0.981 on the held-out samples; the earlier pass: 0.962
    alone = FfnPruningPass(0.25, samples=samples, budget=budget)(model.clone())
    assert alone.modified
    result = FfnPruningPass(0.25, samples=samples, budget=budget, original=original)(model.clone())
    assert not result.modified and any("meets" in line for line in result.refusals + result.notes)


def test_the_catalog_hands_the_pipelines_input_to_pruning_and_low_rank():
    from optimizer.options import Options
    from optimizer.protocol import PassContext
    from passes import catalog

    model = ffn_stack((1.0, 1.0))
    context = PassContext(options=Options(), original=model)
    assert catalog._pruning(context, 0.25)["original"] is model

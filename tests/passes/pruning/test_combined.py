"""prune-ffn-heads and the global ranking: units ranked across layers by their effect on the outputs,
one combined cut, repaired layer by layer on the cut model."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.accuracy import AccuracyBudget
from passes.pruning.combined import FfnHeadPruningPass
from passes.pruning.ffn import FfnPruningPass
from tests.passes.pruning.graphs import attention_ffn, feeds, ffn_stack
from tests.passes.pruning.twins import assert_matches_twin
from tests.passes.quantization.conftest import drift


def test_global_ranking_cuts_more_where_the_outputs_feel_it_less():
    """Two alike FFN blocks, the second's output scaled by 0.05: measured by their effect on the
    output, the second block's neurons matter less, so it gives more of the total cut."""
    model = ffn_stack(scales=(1.0, 0.05))
    calibration = feeds(model, 32, seed=1)
    pruning = FfnPruningPass(0.5, samples=calibration, ranking="global", repair=False)
    pruning(model.clone())
    kept_first, kept_second = pruning.pruned["down_proj0"][0], pruning.pruned["down_proj1"][0]
    assert kept_first + kept_second == 32  # half of the 64 neurons in all
    assert kept_second < 10 < 22 < kept_first


def test_global_ranking_beats_per_layer_on_the_outputs():
    model = ffn_stack(scales=(1.0, 0.05))
    calibration, held_out = feeds(model, 32, seed=1), feeds(model, 32, seed=2)
    per_layer = FfnPruningPass(0.5, samples=calibration, repair=False)(model.clone()).model
    ranked = FfnPruningPass(0.5, samples=calibration, ranking="global", repair=False)(model.clone()).model
    assert drift(model, ranked, held_out).cosine > drift(model, per_layer, held_out).cosine


def test_heads_and_neurons_are_cut_together_each_kind_to_its_total():
    model = attention_ffn(layers=2)
    # Ranked by activation, the cut reaches every group here (reconstruction, the default, keeps mha0 whole).
    pruning = FfnHeadPruningPass(0.5, 0.25, samples=feeds(model, 32, seed=1), importance="activation")
    result = pruning(model.clone())
    assert result.modified
    heads = {name: kept for name, kept in pruning.pruned.items() if name.startswith("mha")}
    neurons = {name: kept for name, kept in pruning.pruned.items() if name.startswith("down")}
    assert sum(total - kept for kept, total in heads.values()) == 2  # 25 % of 8 heads
    assert sum(total - kept for kept, total in neurons.values()) == 32  # 50 % of 64 neurons
    for node in result.model.graph:
        if node.op_type == "MultiHeadAttention":
            width = result.model.graph.node(node.name.replace("mha", "out_proj")).inputs[1].const_value.shape[0]
            assert width == node.attributes.get_int("num_heads") * 4
    assert any(note.startswith("ratios ffn 0.50, heads 0.25: 4 groups") for note in result.notes)
    assert any(note.startswith("kept per group (heads/neurons): down_proj0 ") for note in result.notes)
    assert_matches_twin(result, feeds(model, 4, seed=5), feeds(model, 2, sequence=9, seed=6))


@pytest.mark.parametrize("ratios", [(0.3, 0.25), (0.6, 0.5)])
def test_repair_on_the_combined_cut_is_never_worse_than_no_repair(ratios):
    model = attention_ffn(layers=2)
    calibration, held_out = feeds(model, 48, seed=1), feeds(model, 32, seed=2)
    plain = FfnHeadPruningPass(*ratios, samples=calibration, repair=False)(model.clone()).model
    result = FfnHeadPruningPass(*ratios, samples=calibration)(model.clone())
    assert any(note.startswith("without repair:") for note in result.notes)
    assert drift(model, result.model, held_out).cosine >= drift(model, plain, held_out).cosine


def test_budget_search_scales_both_ratios():
    model = attention_ffn(layers=2)
    calibration = feeds(model, 32, seed=1)
    pruning = FfnHeadPruningPass(0.9, 0.75, samples=calibration, budget=AccuracyBudget(min_cosine=0.99))
    result = pruning(model.clone())
    assert any("budget --min-cosine 0.99" in note for note in result.notes)
    if result.modified:
        assert drift(model, result.model, calibration).cosine >= 0.99


def test_without_data_the_combined_cut_ranks_by_magnitude():
    model = attention_ffn(layers=2)
    pruning = FfnHeadPruningPass(0.5, 0.5)
    result = pruning(model.clone())
    assert result.modified and pruning.importance == "magnitude" and not pruning.repair
    removed = {name: total - kept for name, (kept, total) in pruning.pruned.items()}
    assert sum(v for k, v in removed.items() if k.startswith("mha")) == 4
    assert np.isfinite(drift(model, result.model, feeds(model, 4, seed=3)).cosine)


def test_with_data_the_combined_cut_ranks_by_reconstruction_unless_nothing_is_repaired():
    """The combined cut's default importance is reconstruction (measured better on MiniLM's held-out sentences);
    without the repair it would rank by activation anyway, so that is its default then. Other passes keep
    activation."""
    model = attention_ffn(layers=2)
    calibration = feeds(model, 32, seed=1)
    assert FfnHeadPruningPass(0.5, 0.25, samples=calibration).importance == "reconstruction"
    assert FfnHeadPruningPass(0.5, 0.25, samples=calibration, repair=False).importance == "activation"
    assert FfnHeadPruningPass(0.5, 0.25, samples=calibration, importance="activation").importance == "activation"
    assert FfnPruningPass(0.5, samples=calibration).importance == "activation"
    result = FfnHeadPruningPass(0.5, 0.25, samples=calibration)(model.clone())
    assert result.modified

"""Reconstruction importance: units ranked by their cost once the others make up for them (structured OBS)."""

from __future__ import annotations

import numpy as np
import pytest

from passes.pruning._reconstruction import DAMPING, removal_scores
from passes.pruning.ffn import FfnPruningPass
from tests.passes.pruning.graphs import feeds, ffn
from tests.passes.quantization.conftest import drift


def _moments(rows: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Eight input channels, 6 and 7 copies of 0 and 1; a ``[8, 3]`` weight."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 6)) * np.array([1.0, 2.0, 0.5, 1.5, 1.0, 0.7])
    x = np.concatenate([x, x[:, :2]], axis=1)
    return x.T @ x / rows, rng.standard_normal((8, 3))


def _error(gram: np.ndarray, weight: np.ndarray, kept: list[int]) -> float:
    """The output error of the best re-fit of ``weight`` on the ``kept`` channels (damped as the ranking is)."""
    damped = gram + DAMPING * np.diag(gram).mean() * np.eye(len(gram))
    if not kept:
        return float(np.trace(weight.T @ damped @ weight))
    block = damped[np.ix_(kept, kept)]
    explained = damped[:, kept] @ np.linalg.solve(block, damped[kept, :])
    return float(np.trace(weight.T @ (damped - explained) @ weight))


def test_a_channel_that_its_copy_can_stand_for_goes_first_at_almost_no_cost():
    gram, weight = _moments()
    scores = removal_scores(weight, gram, [np.array([c]) for c in range(8)])
    activation = np.sqrt(np.diag(gram)) * np.linalg.norm(weight, axis=1)
    first = int(np.argmin(scores))
    assert first in (0, 1, 6, 7)  # one of a copied pair
    assert scores[first] < 0.2 * activation.min()


@pytest.mark.parametrize("unit", [1, 2])
def test_each_cost_is_the_increase_of_the_best_refits_error(unit):
    """Greedy compensated removal: the k-th unit's cost is error(without the first k) - error(without k - 1)."""
    gram, weight = _moments(seed=3)
    units = [np.arange(u * unit, (u + 1) * unit) for u in range(8 // unit)]
    scores = removal_scores(weight, gram, units)
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(scores[order]) >= 0)
    removed: list[int] = []
    previous = _error(gram, weight, list(range(8)))
    for unit_index in order[: len(units) - 1]:
        removed += units[unit_index].tolist()
        now = _error(gram, weight, [c for c in range(8) if c not in removed])
        # Costs are a running maximum of the increments; on these moments the increments already rise.
        assert scores[unit_index] ** 2 == pytest.approx(now - previous, rel=1e-6, abs=1e-9)
        previous = now


def test_a_neurons_copy_is_pruned_and_the_kept_one_takes_its_part():
    """Neurons 9 and 20 compute what 3 and 12 do: reconstruction removes one of each pair and the repair moves
    its down row onto the other (outputs unchanged); the activation score sees two strong neurons and cuts others."""
    from tests.passes.pruning.twins import assert_matches_twin

    model = ffn(copies=((3, 9), (12, 20)))
    calibration, held_out = feeds(model, 64, seed=1), feeds(model, 16, seed=2)
    result = FfnPruningPass(2 / 32, samples=calibration, importance="reconstruction")(model.clone())
    by_activation = FfnPruningPass(2 / 32, samples=calibration, importance="activation")(model.clone()).model
    kept = result.model.graph.node("down_proj").inputs[1].const_value.shape[0]
    assert kept == 30
    reconstructed, activation = drift(model, result.model, held_out), drift(model, by_activation, held_out)
    assert reconstructed.max_error < 1e-3 < activation.max_error  # 1e-4 against 0.03
    assert_matches_twin(result, held_out)


def test_with_fewer_calibration_rows_than_inputs_a_layer_is_ranked_by_activation():
    model = ffn()
    few = feeds(model, 2, sequence=6, seed=1)  # 12 token rows for 32 neurons, one sample held out: 6 fitted
    result = FfnPruningPass(0.25, samples=few, importance="reconstruction")(model.clone())
    assert "importance reconstruction: down_proj has 6 calibration rows for 32 inputs; ranked by activation" in (
        result.notes
    )


def test_a_wide_layer_removes_the_cheapest_share_per_round(monkeypatch):
    """With more units than rounds, each round takes the cheapest ``1/STEPS`` at once, by their costs then."""
    from passes.pruning import _reconstruction

    gram, weight = _moments(seed=5)
    monkeypatch.setattr(_reconstruction, "STEPS", 4)  # 8 units: two per round
    scores = _reconstruction.removal_scores(weight, gram, [np.array([c]) for c in range(8)])
    alone = [_error(gram, weight, [k for k in range(8) if k != c]) for c in range(8)]
    first_round = set(np.argsort(alone)[:2].tolist())
    assert set(np.argsort(scores, kind="stable")[:2].tolist()) == first_round
    full = _error(gram, weight, list(range(8)))
    assert max(scores[list(first_round)]) ** 2 == pytest.approx(max(alone[c] for c in first_round) - full)


def test_a_constant_neuron_costs_nothing_the_bias_takes_it():
    """Neuron 5's up column is zero and its bias 3: its output is constant, which the repair's bias absorbs,
    so it goes first (its activation score, large, would keep it to the last)."""
    from passes._utils import add_initializer, constant_array

    model = ffn()
    graph = model.graph
    up = constant_array(graph.node("up_proj").inputs[1]).copy()
    bias = constant_array(graph.node("up_bias_add").inputs[1]).copy()
    up[:, 5], bias[5] = 0.0, 3.0
    graph.node("up_proj").replace_input_with(1, add_initializer(graph, "up.constant5", up))
    graph.node("up_bias_add").replace_input_with(1, add_initializer(graph, "up_bias.constant5", bias))
    calibration, held_out = feeds(model, 64, seed=1), feeds(model, 16, seed=2)
    result = FfnPruningPass(1 / 32, samples=calibration, importance="reconstruction")(model.clone())
    assert "kept per group (neurons): down_proj 31/32" in result.notes
    assert drift(model, result.model, held_out).max_error < 1e-5


def test_a_redundant_layer_gives_its_copies_first_under_the_global_ranking():
    """Layer 0's neurons 16-31 copy 0-15; a quarter of all 64 goes. The gain is measured by an uncompensated
    cut, so it is taken per unit of uncompensated effect: the copies go, and nothing is lost."""
    from passes._utils import add_initializer, constant_array
    from tests.passes.pruning.graphs import ffn_stack

    model = ffn_stack((1.0, 1.0))
    graph = model.graph
    for name in ("up_proj0", "up_bias_add0"):
        array = constant_array(graph.node(name).inputs[1]).copy()
        array[..., 16:32] = array[..., 0:16]
        graph.node(name).replace_input_with(1, add_initializer(graph, f"{name}.copies", array))
    calibration, held_out = feeds(model, 64, seed=1), feeds(model, 32, seed=2)
    pruning = FfnPruningPass(0.25, samples=calibration, importance="reconstruction", ranking="global")
    result = pruning(model.clone())
    assert pruning.pruned == {"down_proj0": (16, 32)}
    assert drift(model, result.model, held_out).max_error < 1e-2  # 1.5 ranked layer by layer


@pytest.mark.parametrize("depthwise", [False, True])
def test_a_consumer_the_repair_does_not_refit_is_ranked_by_activation(depthwise):
    """A 3×3 Conv reads the channels: the compensated cost would assume a re-fit that never happens."""
    from passes.pruning.channels import ChannelPruningPass
    from tests.passes.pruning.graphs import convnet, images

    model = convnet(depthwise=depthwise)
    by_activation = ChannelPruningPass(0.25, samples=images(16, seed=1), importance="activation")(model.clone())
    result = ChannelPruningPass(0.25, samples=images(16, seed=1), importance="reconstruction")(model.clone())
    assert (
        "importance reconstruction: conv2 is read by a Conv the repair does not re-fit (it re-fits MatMul, unscaled"
        " Gemm and 1×1 Conv of stride 1 without padding); ranked by activation" in result.notes
    )
    assert [n for n in result.notes if n.startswith("kept")] == [n for n in by_activation.notes if n.startswith("kept")]


def test_without_repair_nothing_is_compensated_so_units_are_ranked_by_activation():
    model = ffn(copies=((3, 9), (12, 20)))
    result = FfnPruningPass(2 / 32, samples=feeds(model, 64, seed=1), importance="reconstruction", repair=False)(
        model.clone()
    )
    assert (
        "importance reconstruction: down_proj is not repaired (--no-repair), so nothing makes up for a removed"
        " unit; ranked by activation" in result.notes
    )

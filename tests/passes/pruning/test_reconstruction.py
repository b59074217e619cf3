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
    few = feeds(model, 2, sequence=6, seed=1)  # 12 token rows for 32 neurons
    result = FfnPruningPass(0.25, samples=few, importance="reconstruction")(model.clone())
    assert "importance reconstruction: down_proj has 12 calibration rows for 32 inputs; ranked by activation" in (
        result.notes
    )

"""Reconstruction importance: rank a layer's units by what their removal costs once the others make up for it.

The activation score of a unit (its energy times its consumer rows' norm) is what its
removal costs the consumer's output when nothing else changes. But the repair re-fits the
consumer on the kept units, and a unit that its neighbours predict well (two correlated
channels, a neuron that is almost a sum of others) costs almost nothing once they take its
part. Optimal Brain Surgeon gives that cost in closed form from the consumer's input
second moments ``H`` (``X^T X / rows``) and weight rows ``W`` (``[inputs, outputs]``):
removing the rows ``B`` of one unit and re-fitting the others by least squares raises the
squared output error by ``tr(W_B^T (H^-1)_BB^-1 W_B)``, and the best compensation moves
``W`` by ``-H^-1[:, B] (H^-1)_BB^-1 W_B``. Removing units one at a time, cheapest first,
each step on the compensated ``W`` and the downdated ``H^-1`` (the structured OBS of
ZipLM and SlimGPT), gives every unit the cost at which it goes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# H is damped by this share of its mean diagonal, as GPTQ and SparseGPT do: without it a
# channel that is nearly a combination of others makes H^-1 blow up on calibration noise.
DAMPING = 0.01


def removal_scores(weight: np.ndarray, gram: np.ndarray, units: Sequence[np.ndarray]) -> np.ndarray:
    """Per unit, the square root of the output error at which greedy compensated removal takes it.

    ``weight``: the consumer as ``[input channels, outputs]``; ``gram``: its inputs' second
    moments ``[input channels, input channels]`` (mean over rows); ``units``: each unit's
    input channel indices. The scores rise in removal order (a running maximum, so the
    ``k`` lowest are the first ``k`` removed) and are on the activation score's scale
    (both are the square root of an output energy); the unit left last gets twice the
    largest cost.
    """
    weight = np.array(weight, dtype=np.float64)
    gram = np.array(gram, dtype=np.float64)
    diagonal = np.diag(gram)
    damping = DAMPING * float(diagonal.mean()) if diagonal.mean() > 0 else 1e-12
    inverse = np.linalg.inv(gram + damping * np.eye(len(gram)))
    inverse = (inverse + inverse.T) / 2
    alive = list(range(len(units)))
    costs = np.zeros(len(units))
    single = all(len(channels) == 1 for channels in units)
    order, reached = [], 0.0
    while len(alive) > 1:
        if single:
            rows = np.array([units[u][0] for u in alive])
            candidates = (weight[rows] ** 2).sum(axis=1) / np.maximum(np.diag(inverse)[rows], 1e-300)
        else:
            candidates = np.array([_block_cost(weight, inverse, units[u]) for u in alive])
        pick = int(np.argmin(candidates))
        unit = alive.pop(pick)
        reached = max(reached, float(candidates[pick]))
        costs[unit] = reached
        order.append(unit)
        _remove(weight, inverse, units[unit])
    costs[alive[0]] = 2 * reached if reached > 0 else 1.0
    return np.sqrt(costs)


def _block_cost(weight: np.ndarray, inverse: np.ndarray, channels: np.ndarray) -> float:
    block = inverse[np.ix_(channels, channels)]
    rows = weight[channels]
    return float(np.sum(rows * np.linalg.solve(block, rows)))


def _remove(weight: np.ndarray, inverse: np.ndarray, channels: np.ndarray) -> None:
    """Remove ``channels``: compensate ``weight`` through the others and downdate ``inverse`` (in place)."""
    block = inverse[np.ix_(channels, channels)]
    columns = inverse[:, channels]
    solved = np.linalg.solve(block, np.concatenate([weight[channels], columns.T], axis=1))
    outputs = weight.shape[1]
    weight -= columns @ solved[:, :outputs]
    inverse -= columns @ solved[:, outputs:]
    weight[channels] = 0.0
    inverse[channels, :] = 0.0
    inverse[:, channels] = 0.0

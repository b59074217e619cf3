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
# Units go in at most this many rounds (the cheapest 1/STEPS of the layer's units at once, each
# round's joint removal exact): one at a time costs a pass over H^-1 per unit, 66 s for 1,536.
STEPS = 128
# Layers with more inputs are ranked by activation: the elimination is cubic in them (1,536: 5 s,
# 4,096: 40 s on 2 cores), and H^-1 alone is n² float64 (8,192: 512 MB).
MAX_INPUTS = 2048


def removal_scores(weight: np.ndarray, gram: np.ndarray, units: Sequence[np.ndarray]) -> np.ndarray:
    """Per unit, the square root of the output error at which greedy compensated removal takes it.

    ``weight``: the consumer as ``[input channels, outputs]``; ``gram``: its inputs' second
    moments ``[input channels, input channels]`` (mean over rows); ``units``: each unit's
    input channel indices. The scores rise in removal order (a running maximum, so the
    ``k`` lowest are the first ``k`` removed; ties are parted by the last bit) and are on
    the activation score's scale
    (both are the square root of an output energy); the unit left last gets twice the
    largest cost. Layers of more than ``STEPS`` units remove the cheapest ``1/STEPS`` of
    them per round (jointly, exactly; ordered within the round by their own costs).
    """
    weight = np.array(weight, dtype=np.float64)
    gram = np.array(gram, dtype=np.float64)
    diagonal = np.diag(gram)
    damping = DAMPING * float(diagonal.mean()) if diagonal.mean() > 0 else 1e-12
    inverse = np.linalg.inv(gram + damping * np.eye(len(gram)))
    inverse = (inverse + inverse.T) / 2
    # The matrices shrink to the channels still in: ``position`` maps a channel to its row now.
    position = np.arange(len(gram))
    alive = list(range(len(units)))
    costs = np.zeros(len(units))
    single = all(len(channels) == 1 for channels in units)
    per_round = max(1, -(-len(units) // STEPS))
    reached, order = 0.0, []
    while len(alive) > 1:
        if single:
            rows = position[np.array([units[u][0] for u in alive])]
            candidates = (weight[rows] ** 2).sum(axis=1) / np.maximum(np.diag(inverse)[rows], 1e-300)
        else:
            candidates = np.array([_block_cost(weight, inverse, position[units[u]]) for u in alive])
        picks = np.argsort(candidates, kind="stable")[: min(per_round, len(alive) - 1)]
        for pick in picks:
            reached = max(reached, float(candidates[pick]))
            costs[alive[pick]] = reached
            order.append(alive[pick])
        removed = np.concatenate([units[alive[pick]] for pick in picks])
        weight, inverse = _remove(weight, inverse, position[removed])
        still = position >= 0
        still[removed] = False
        position = np.where(still, np.cumsum(still) - 1, -1)
        gone = set(picks.tolist())
        alive = [unit for index, unit in enumerate(alive) if index not in gone]
    costs[alive[0]] = 2 * reached if reached > 0 else 1.0
    scores = np.sqrt(costs)
    # The running maximum ties units; a score just above the one before keeps the removal order
    # wherever the scores are sorted (a stable sort would otherwise order ties by index).
    previous = -np.inf
    for unit in [*order, alive[0]]:
        scores[unit] = max(scores[unit], np.nextafter(previous, np.inf))
        previous = scores[unit]
    return scores


def _block_cost(weight: np.ndarray, inverse: np.ndarray, rows: np.ndarray) -> float:
    block = inverse[np.ix_(rows, rows)]
    return float(np.sum(weight[rows] * np.linalg.solve(block, weight[rows])))


def _remove(weight: np.ndarray, inverse: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` compensated through the other rows for removing ``rows``, and ``inverse`` downdated,
    both without ``rows``."""
    kept = np.ones(len(inverse), bool)
    kept[rows] = False
    block = inverse[np.ix_(rows, rows)]
    columns = inverse[np.ix_(kept, rows)]
    solved = np.linalg.solve(block, np.concatenate([weight[rows], columns.T], axis=1))
    outputs = weight.shape[1]
    weight = weight[kept] - columns @ solved[:, :outputs]
    inverse = inverse[np.ix_(kept, kept)] - columns @ solved[:, outputs:]
    return weight, inverse

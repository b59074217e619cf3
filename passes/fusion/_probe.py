"""Probe values for fusions that must know what a subgraph computes: padded token batches for token inputs.

The evaluation itself is ``optimizer.runtime.evaluate`` (only the ancestors of the
probed values are serialized, so probing stays cheap on large models).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from optimizer.runtime import SubgraphError, ancestry

# A left- and a right-padded row: positions or masks built from the attention mask
# show it on one of them.
PADDED_MASK = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])

_INT_TYPES = (ir.DataType.INT64, ir.DataType.INT32)


def graph_inputs_of(values: Sequence[ir.Value]) -> list[ir.Value] | None:
    """The graph inputs the given values depend on; None if they depend on a subgraph-carrying node."""
    try:
        leaves = ancestry(values)[1]
    except SubgraphError:  # an If/Loop/Scan among the ancestors: not probed
        return None
    return [v for v in leaves if v.const_value is None]


def is_mask(value: ir.Value) -> bool:
    """True if a graph input is named like an attention mask."""
    return "mask" in (value.name or "").lower()


def token_inputs_of(values: Sequence[ir.Value], dtypes: tuple[ir.DataType, ...] = _INT_TYPES) -> list[ir.Value] | None:
    """The graph inputs ``values`` depend on, if all are ``[batch, sequence]`` tensors of ``dtypes``, else None.

    These are what ``token_feeds`` can make up probe values for: token ids, the
    attention mask, position ids.
    """
    inputs = graph_inputs_of(values)
    if inputs is None or any(v.dtype not in dtypes or v.shape is None or v.shape.rank() != 2 for v in inputs):
        return None
    return inputs


def token_feeds(
    inputs: Sequence[ir.Value], mask: np.ndarray, overrides: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Probe values shaped like ``mask``: ``mask`` for mask inputs, ones (token id 1) for the rest.

    ``overrides`` replaces inputs by name (position ids, for one).
    """
    overrides = overrides or {}
    feeds = {}
    for value in inputs:
        array = overrides.get(value.name, mask if is_mask(value) else np.ones(mask.shape))
        feeds[value.name] = np.asarray(array).astype(value.dtype.numpy())
    return feeds

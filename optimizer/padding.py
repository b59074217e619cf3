"""Padding in verification: every run on a model with a mask-like input sees at least one padded row.

A rewrite that mishandles padding (a fused attention that ignores its mask, a mask
kind decided wrongly) is exact on inputs without any. Generated inputs pad the last
row of a batch of two or more, but user ``--inputs``, a full set of ``--dim``,
``--static-shapes`` or a batch fixed at 1 can leave every row unpadded; then a padded
copy of the first input set is added.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

_MASK_NAME = re.compile(r"mask", re.IGNORECASE)


def mask_inputs(model: ir.Model, inputs: Mapping[str, np.ndarray]) -> list[str]:
    """Inputs of ``model`` that look like a ``[batch, sequence]`` padding mask (named ``*mask*``, 2-D)."""
    names = []
    for value in model.graph.inputs:
        array = inputs.get(value.name)
        if array is None or not _MASK_NAME.search(value.name) or np.ndim(array) != 2:
            continue
        if array.dtype.kind in "biuf" and np.shape(array)[1] >= 2:
            names.append(value.name)
    return names


def has_padding(inputs: Mapping[str, np.ndarray], masks: Sequence[str]) -> bool:
    """Whether some row of some mask in ``inputs`` masks a position out (a zero)."""
    return any(not np.all(np.asarray(inputs[name]) != 0) for name in masks)


def padded_copy(inputs: Mapping[str, np.ndarray], masks: Sequence[str]) -> tuple[dict[str, np.ndarray], str]:
    """A copy of ``inputs`` whose masks pad the last row's final quarter (at least one position), and what changed.

    Padding goes on the right: every query row keeps keys to attend to, so the
    original's outputs stay finite. Other inputs are unchanged, so the padded
    positions still hold real tokens, as a padded batch does.
    """
    padded = dict(inputs)
    described = []
    for name in masks:
        mask = np.array(inputs[name], copy=True)
        length = mask.shape[1]
        count = max(1, length // 4)
        mask[-1, length - count :] = 0
        padded[name] = mask
        described.append(f"{name}'s last {count} of {length} positions 0 in row {mask.shape[0]}")
    return padded, ", ".join(described)

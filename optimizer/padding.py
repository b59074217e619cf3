"""Padding in verification: every run on a model with a mask-like input sees padding at both ends.

A rewrite that mishandles padding (a fused attention that ignores its mask, a mask
kind decided wrongly, a mask read as key lengths, which assumes right padding) is
exact on inputs without any. Encoders' tokenizers pad on the right, decoders' on the
left, so verification needs both: generated inputs pad the last row's end, and user
``--inputs``, a full set of ``--dim``, ``--static-shapes`` or a batch fixed at 1 can
leave every row unpadded. When no input set pads both a row's start and a row's end,
a padded copy is added (``padded_copy``).

Outputs at padded positions are not compared (``padded_positions``): with causal
attention a left-padded query sees no key at all, and what a model returns there is
not defined (exporters fill such rows with a uniform softmax, fused kernels with
zeros or the first value). That includes a decoder's key/value cache at padded
positions (``present.*``, ``[batch, heads, total_sequence, head_size]``): what later
layers cache there comes from those undefined rows, and no real token reads it (the
mask that pads it is extended, not changed, at each step of generation).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

_MASK_NAME = re.compile(r"mask", re.IGNORECASE)
# Outputs laid out [batch, heads, positions, head_size] whose positions are the mask's.
_CACHE_NAME = re.compile(r"present|cache|key|value", re.IGNORECASE)


def mask_inputs(model: ir.Model, inputs: Mapping[str, np.ndarray]) -> list[str]:
    """Inputs of ``model`` that look like a ``[batch, sequence]`` padding mask: named ``*mask*``,
    2-D, holding only 0 (pad) and 1 (attend), and attending somewhere in every row.

    An additive float mask (0 attends, a large negative number pads) and a boolean one
    (True pads in PyTorch's ``key_padding_mask``, attends in Hugging Face's) do not qualify:
    reading them the wrong way round would hide the real tokens from comparison.
    """
    names = []
    for value in model.graph.inputs:
        array = inputs.get(value.name)
        if array is None or not _MASK_NAME.search(value.name) or np.ndim(array) != 2:
            continue
        array = np.asarray(array)
        if array.dtype.kind not in "iuf" or array.shape[1] < 2:
            continue
        if np.isin(array, (0, 1)).all() and (array == 1).any(axis=1).all():
            names.append(value.name)
    return names


def pads_both_ends(inputs: Mapping[str, np.ndarray], masks: Sequence[str]) -> bool:
    """Whether some mask in ``inputs`` pads the start of a row and some the end of a row."""
    starts = any(np.any(np.asarray(inputs[name])[:, 0] == 0) for name in masks)
    ends = any(np.any(np.asarray(inputs[name])[:, -1] == 0) for name in masks)
    return starts and ends


def padded_copy(inputs: Mapping[str, np.ndarray], masks: Sequence[str]) -> tuple[dict[str, np.ndarray], str]:
    """A copy of ``inputs`` whose masks pad a row's start and a row's end, and a description of what changed.

    With two or more rows the first row is padded on the left (its first quarter) and
    the last on the right (its final quarter); a single row gets both (an eighth at
    each end). At least one position stays unpadded in every row. Other inputs are
    unchanged, so padded positions still hold real tokens, as a padded batch does.
    """
    padded = dict(inputs)
    described = []
    for name in masks:
        mask = np.array(inputs[name], copy=True)
        rows, length = mask.shape
        if rows >= 2:
            left, right = max(1, length // 4), max(1, length // 4)
            mask[0, :left] = 0
            mask[-1, length - right :] = 0
            where = f"row 1's first {left} and row {rows}'s last {right} of {length} positions"
        elif length >= 3:
            left = right = max(1, length // 8)
            mask[0, :left] = 0
            mask[0, length - right :] = 0
            where = f"the first {left} and last {right} of {length} positions"
        else:  # two positions: one real token, padding on the right only
            mask[0, -1] = 0
            where = f"the last of {length} positions"
        padded[name] = mask
        described.append(f"{name}: {where} padded")
    return padded, ", ".join(described)


def padded_positions(inputs: Mapping[str, np.ndarray], masks: Sequence[str]) -> np.ndarray | None:
    """``[batch, sequence]`` booleans, True where every mask in ``inputs`` pads; None without padding.

    A row that a mask pads entirely stays compared: it is no padded batch, and hiding it
    would hide everything.
    """
    if not masks:
        return None
    shape = np.shape(inputs[masks[0]])  # masks of another shape describe another sequence
    padding = np.logical_and.reduce([np.asarray(inputs[n]) == 0 for n in masks if np.shape(inputs[n]) == shape])
    padding &= ~padding.all(axis=1, keepdims=True)
    return padding if padding.any() else None


def hide_padded(outputs: Mapping[str, object], padding: np.ndarray | None, reference: Mapping[str, object]) -> dict:
    """``outputs`` with the values at padded positions taken from ``reference`` (so they are not compared).

    Only outputs laid out ``[batch, sequence, ...]`` like the mask are touched, and a
    key/value cache named like one (``present.0.key``) laid out ``[batch, heads, sequence, d]``.
    """
    if padding is None:
        return dict(outputs)
    hidden = dict(outputs)
    for name, value in outputs.items():
        expected = reference.get(name)
        if not isinstance(value, np.ndarray) or not isinstance(expected, np.ndarray):
            continue
        if value.shape != expected.shape or value.dtype != expected.dtype:
            continue  # a different shape or dtype is a failure the comparison must still see
        if value.shape[:2] == padding.shape:
            where = padding.reshape(padding.shape + (1,) * (value.ndim - 2))
        elif value.ndim == 4 and (value.shape[0], value.shape[2]) == padding.shape and _CACHE_NAME.search(name):
            where = padding[:, None, :, None]
        else:
            continue
        hidden[name] = np.where(where, expected, value)
    return hidden

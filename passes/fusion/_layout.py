"""Tracing tensor layouts through Reshape/Transpose chains, for the attention fusion.

Exporters spell "split the hidden axis into heads" and "transpose the last two axes"
in several ways; these helpers recognise them by evaluating the shape arithmetic
that feeds a Reshape symbolically (``Shape``/``Slice``/``Gather``/``Concat``/
``Unsqueeze`` of a tensor's own shape), so a chain is accepted only when it is a
pure relayout for every input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_domain
from passes._utils import constant_array

_INT64_MAX = np.iinfo(np.int64).max
_SHAPE_PRESERVING = frozenset({"Cast", "Relu", "Neg", "Identity", "Sigmoid", "Tanh", "Erf"})


def producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The value's producer if it is an ONNX-domain ``op_type`` node, else None."""
    if value is None:
        return None
    node = value.producer()
    if node is None or node.op_type != op_type or not is_onnx_domain(node):
        return None
    return node


def perm(node: ir.Node) -> tuple[int, ...] | None:
    """A Transpose node's permutation, or None when it is implicit (reverse)."""
    attr = node.attributes.get("perm")
    return tuple(attr.as_ints()) if attr is not None else None


def strip_scale(value: ir.Value) -> tuple[ir.Value, float]:
    """Walk back through ``Mul``/``Div`` by constant scalars; return the source and the product of the factors."""
    factor = 1.0
    while True:
        node = producer(value, "Mul") or producer(value, "Div")
        if node is None:
            return value, factor
        a, b = node.inputs
        const_b = constant_array(b)
        if node.op_type == "Mul":
            const_a = constant_array(a)
            if const_b is not None and const_b.size == 1:
                value, factor = a, factor * float(const_b.reshape(()))
            elif const_a is not None and const_a.size == 1:
                value, factor = b, factor * float(const_a.reshape(()))
            else:
                return value, factor
        elif const_b is not None and const_b.size == 1 and float(const_b.reshape(())) != 0.0:
            value, factor = a, factor / float(const_b.reshape(()))
        else:
            return value, factor


@dataclass(frozen=True)
class HeadSplit:
    """``Transpose(Reshape(hidden, [0, 0, heads, head_size]), perm)``: where a per-head tensor comes from."""

    hidden: ir.Value  # [batch, seq, heads * head_size]
    split: ir.Value  # [batch, seq, heads, head_size], the Reshape's output
    heads: int | None
    head_size: int


def head_split(value: ir.Value, expected_perm: tuple[int, ...]) -> HeadSplit | None:
    """Match ``value = Transpose(Reshape(hidden, [0, 0, H or -1, d]), expected_perm)``."""
    transpose = producer(value, "Transpose")
    if transpose is None or perm(transpose) != expected_perm:
        return None
    reshape = producer(transpose.inputs[0], "Reshape")
    if reshape is None:
        return None
    target = constant_array(reshape.inputs[1])
    if target is None or target.shape != (4,):
        return None
    if reshape.attributes.get_int("allowzero", 0) != 0 and 0 in target:
        return None
    hidden = reshape.inputs[0]
    if hidden.shape is None or hidden.shape.rank() != 3:
        return None
    batch, seq, heads, head_size = (int(t) for t in target)
    if head_size <= 0 or heads == 0 or heads < -1 or not keeps_dim(seq, hidden, 1):
        return None
    # The batch is copied (0), or inferred (-1) when every other entry is static.
    if not (batch == 0 or (batch == -1 and seq > 0 and heads > 0)):
        return None
    return HeadSplit(hidden, reshape.outputs[0], heads if heads > 0 else None, head_size)


def keeps_dim(target: int, value: ir.Value, axis: int) -> bool:
    """True if a Reshape target entry keeps ``value``'s ``axis``: 0 (copy) or its known static size."""
    if target == 0:
        return True
    dim = value.shape[axis] if value.shape is not None and value.shape.rank() > axis else None
    return isinstance(dim, int) and target == dim


def last_dim(value: ir.Value) -> int | None:
    """The static size of ``value``'s last axis, from its shape or its producer's constant operands."""
    if value.shape is not None and value.shape.rank() and isinstance(value.shape[-1], int):
        return value.shape[-1]
    node = value.producer()
    if node is None:
        return None
    if node.op_type in ("MatMul", "Gemm", "Add") and is_onnx_domain(node):
        for operand in node.inputs[1:] if node.op_type != "Add" else node.inputs:
            array = constant_array(operand)
            if array is not None and array.ndim >= 1 and array.shape[-1] > 1:
                return int(array.shape[-1])
        if node.op_type == "Add":
            return next((d for d in map(last_dim, node.inputs) if d), None)
    if node.op_type == "RotaryEmbedding" or (node.op_type in _SHAPE_PRESERVING and is_onnx_domain(node)):
        return last_dim(node.inputs[0])
    if node.op_type == "Split" and is_onnx_domain(node):
        sizes = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if sizes is not None and node.attributes.get_int("axis", 0) in (-1, 2):
            return int(sizes[list(node.outputs).index(value)])
    return None


def shape_tokens(value: ir.Value | None, depth: int = 0) -> list | None:
    """Evaluate a 1-D int64 shape expression into tokens: ints, or ``(tensor, axis)`` for a tensor's dim."""
    if value is None or depth > 12:
        return None
    array = constant_array(value)
    if array is not None:
        return [int(v) for v in array.reshape(-1)] if array.ndim <= 1 else None
    node = value.producer()
    if node is None or not is_onnx_domain(node):
        return None
    if node.op_type == "Shape":
        source = node.inputs[0]
        if source.shape is None:
            return None
        rank = source.shape.rank()
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", rank)
        return [(source, axis) for axis in range(rank)][start:end]
    if node.op_type == "Concat":
        tokens: list = []
        for operand in node.inputs:
            part = shape_tokens(operand, depth + 1)
            if part is None:
                return None
            tokens += part
        return tokens
    if node.op_type == "Slice":
        data = shape_tokens(node.inputs[0], depth + 1)
        bounds = [constant_array(v) for v in node.inputs[1:3]]
        extra = [constant_array(v) for v in node.inputs[3:] if v is not None]
        if data is None or any(b is None or b.size != 1 for b in bounds + extra):
            return None
        if any(int(e.reshape(())) not in (0, 1) for e in extra):  # axes must be 0, steps 1
            return None
        start, end = (int(b.reshape(())) for b in bounds)
        end = min(end, len(data)) if end < _INT64_MAX else len(data)
        return data[max(start, -len(data)) : end]
    if node.op_type in ("Gather", "Unsqueeze", "Squeeze"):
        data = shape_tokens(node.inputs[0], depth + 1)
        if data is None:
            return None
        if node.op_type != "Gather":
            return data
        index = constant_array(node.inputs[1])
        if index is None or index.ndim > 1:
            return None
        return [data[int(i)] for i in index.reshape(-1)]
    return None


def transposed_key(value: ir.Value) -> tuple[str, ir.Value, HeadSplit | None] | None:
    """Recognise ``value`` as a per-head key with its last two axes swapped, ``[B, N, d, T]``.

    Returns ``("bnsh", k, None)`` with ``k`` the ``[B, N, T, d]`` key, or
    ``("split", split.hidden, split)`` when the swap is fused into the head split
    (``Transpose(Reshape(hidden, [0, 0, H, d]), perm=(0, 2, 3, 1))``).
    """
    split = head_split(value, (0, 2, 3, 1))
    if split is not None:
        return "split", split.hidden, split
    transpose = producer(value, "Transpose")
    if transpose is not None and perm(transpose) == (0, 1, 3, 2):
        return _bnsh_key(transpose.inputs[0])
    # Dynamo: Reshape(Transpose(Reshape(k, [-1, T, d]), (0, 2, 1)), [B, N, d, T]) from Shape(k).
    outer = producer(value, "Reshape")
    middle = producer(outer.inputs[0], "Transpose") if outer is not None else None
    inner = producer(middle.inputs[0], "Reshape") if middle is not None else None
    if inner is None or perm(middle) != (0, 2, 1):
        return None
    key = inner.inputs[0]
    if key.shape is None or key.shape.rank() != 4:
        return None
    if not _is_dims_of(shape_tokens(inner.inputs[1]), key, [None, 2, 3]):
        return None
    if not _is_dims_of(shape_tokens(outer.inputs[1]), key, [0, 1, 3, 2]):
        return None
    return _bnsh_key(key)


def _bnsh_key(key: ir.Value) -> tuple[str, ir.Value, HeadSplit | None]:
    """A ``[B, N, T, d]`` key, described by its head split when it comes straight from one."""
    split = head_split(key, (0, 2, 1, 3))
    if split is not None:
        return "split", split.hidden, split
    return "bnsh", key, None


def _is_dims_of(tokens: list | None, value: ir.Value, axes: list[int | None]) -> bool:
    """True if shape ``tokens`` are ``value``'s dims at ``axes`` (``None``: the one inferred -1).

    A token matches an axis when it is that dim of ``value`` symbolically or equals
    its static size; a leading -1 may stand for the first axis when all others match.
    """
    if tokens is None or len(tokens) != len(axes):
        return False
    for i, (token, axis) in enumerate(zip(tokens, axes)):
        if axis is None or (i == 0 and token == -1):
            if token != -1:
                return False
            continue
        if isinstance(token, tuple):
            if token[0] is not value or token[1] != axis:
                return False
        elif not keeps_dim(token, value, axis) or token == 0:
            return False
    return tokens.count(-1) <= 1

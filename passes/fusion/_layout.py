"""Tracing tensor layouts through Reshape/Transpose chains, for the attention and rotary fusions.

Exporters spell "split the hidden axis into heads" and "transpose the last two axes"
in several ways; these helpers recognise them by evaluating the shape arithmetic
that feeds a Reshape symbolically (``Shape``/``Slice``/``Gather``/``Concat``/
``Unsqueeze`` of a tensor's own shape, or static sizes the shapes prove), so a chain
is accepted only when it is a pure relayout for every input size the graph accepts.
``trace_heads`` walks an attention operand back to where its layout comes from,
composing the permutations of the Transposes on the way.
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


@dataclass(frozen=True)
class HeadSplit:
    """``Transpose(Reshape(hidden, [0, 0, heads, head_size]), perm)``: where a per-head tensor comes from."""

    hidden: ir.Value  # [batch, seq, heads * head_size]
    split: ir.Value  # [batch, seq, heads, head_size], the Reshape's output
    heads: int | None
    head_size: int
    scale: float = 1.0  # a scalar scale between ``hidden`` and the Reshape: ``split`` is ``hidden * scale`` split


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


# -- Tracing per-head attention operands back to where their layout comes from ------------------------------

IDENTITY = (0, 1, 2, 3)


def compose(inner: tuple[int, ...], outer: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation of ``Transpose(Transpose(x, inner), outer)`` as one ``Transpose(x, ·)``."""
    return tuple(inner[axis] for axis in outer)


_BROADCASTING = frozenset({"Add", "Sub", "Mul", "Div", "Where", "And", "Or", "Equal", "Less", "Greater", "Pow"})
_SAME_RANK = _SHAPE_PRESERVING | {"Softmax", "IsNaN", "Not", "Sqrt", "Exp", "Abs"}


def rank(value: ir.Value | None, depth: int = 0) -> int | None:
    """The value's rank, from its shape or, when that is unknown, from the ops producing it.

    Exporters leave shapes off many intermediate values; the rank still follows from a
    Transpose's permutation, a Reshape's target length, or the inputs of element-wise,
    broadcasting and matrix-product ops.
    """
    if value is None:
        return None
    if value.shape is not None:
        return value.shape.rank()
    array = constant_array(value)
    if array is not None:
        return array.ndim
    node = value.producer()
    if node is None or depth > 16:
        return None
    if node.op_type == "Transpose" and perm(node) is not None:
        return len(perm(node))
    if node.op_type == "Reshape" and is_onnx_domain(node):
        tokens = _target_tokens(node.inputs[1])  # the length, even where an entry is unreadable (B * N)
        return len(tokens) if tokens is not None else None
    if node.op_type in ("Unsqueeze", "Squeeze") and is_onnx_domain(node):
        axes = _axes(node)
        data = rank(node.inputs[0], depth + 1)
        if axes is None or data is None:
            return None
        return data + len(axes) if node.op_type == "Unsqueeze" else data - len(axes)
    if node.op_type in _SAME_RANK | {"Transpose"} and is_onnx_domain(node):
        return rank(node.inputs[0], depth + 1)
    matmul = (node.op_type == "MatMul" and is_onnx_domain(node)) or node.op_type == "FusedMatMul"
    if (node.op_type in _BROADCASTING and is_onnx_domain(node)) or matmul:
        ranks = [rank(operand, depth + 1) for operand in node.inputs if operand is not None]
        if None in ranks or not ranks or (matmul and min(ranks) < 2):
            return None
        return max(ranks)
    return None


def _axes(node: ir.Node) -> list[int] | None:
    """An Unsqueeze's or Squeeze's constant axes (input or, before opset 13, attribute)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        array = constant_array(node.inputs[1])
        return [int(a) for a in array.reshape(-1)] if array is not None else None
    if "axes" in node.attributes:
        return list(node.attributes["axes"].as_ints())
    return None


def element_type(value: ir.Value | None, depth: int = 0) -> ir.DataType | None:
    """The value's element type, from its type or, when that is unknown, from the ops producing it.

    Like ``rank``: exporters leave types off intermediate values, and layout ops,
    element-wise ops and matrix products keep their data operands' type.
    """
    if value is None or depth > 32:
        return None
    if value.dtype is not None:
        return value.dtype
    node = value.producer()
    if node is None or not (is_onnx_domain(node) or node.op_type == "FusedMatMul"):
        return None
    if node.op_type == "Cast":
        return ir.DataType(node.attributes.get_int("to"))
    if (
        node.op_type in ("Transpose", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Slice")
        or node.op_type in _SAME_RANK
    ):
        return element_type(node.inputs[0], depth + 1)
    operands = node.inputs[1:] if node.op_type == "Where" else node.inputs
    if node.op_type in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "MatMul", "FusedMatMul"):
        return next((t for t in (element_type(v, depth + 1) for v in operands) if t is not None), None)
    return None


def static_dim(value: ir.Value, axis: int) -> int | None:
    """The static size of ``value``'s ``axis``, or None."""
    shape = value.shape
    if shape is None or not -shape.rank() <= axis < shape.rank():
        return None
    dim = shape[axis]
    return dim if isinstance(dim, int) else None


def traced_dim(value: ir.Value, axis: int, depth: int = 0) -> int | None:
    """The static size of ``value``'s ``axis`` (counted from 0), from its shape or through the ops producing it.

    Exporters leave shapes off intermediate values (legacy Llama's ``repeat_kv``); the size
    still follows through Transposes (their permutation), Reshapes (a literal target entry,
    0 for the input's own dim, or a dim read from a tensor's shape), Unsqueeze, Expand (a
    dim above 1 is kept, a 1 takes the target's) and ops that keep their input's shape.
    """
    static = static_dim(value, axis)
    node = value.producer()
    if static is not None or node is None or depth > 16 or axis < 0:
        return static
    op, data = node.op_type, node.inputs[0]
    if op == "RotaryEmbedding" or (op in _SHAPE_PRESERVING and is_onnx_domain(node)):
        return traced_dim(data, axis, depth + 1)
    if not is_onnx_domain(node):
        return None
    if op == "Transpose":
        order = perm(node)
        return traced_dim(data, order[axis], depth + 1) if order is not None and axis < len(order) else None
    if op == "Reshape":
        tokens = _target_tokens(node.inputs[1])
        token = tokens[axis] if tokens is not None and axis < len(tokens) else None
        if isinstance(token, tuple):
            return traced_dim(token[0], token[1], depth + 1)
        if token == 0 and not node.attributes.get_int("allowzero", 0):
            return traced_dim(data, axis, depth + 1)
        return token if isinstance(token, int) and token > 0 else None
    if op == "Unsqueeze":
        axes = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if axes is None and "axes" in node.attributes:
            axes = np.array(node.attributes["axes"].as_ints())
        data_rank = rank(data)
        if axes is None or data_rank is None:
            return None
        inserted = {int(a) % (data_rank + axes.size) for a in axes.reshape(-1)}
        if axis in inserted:
            return 1
        return traced_dim(data, axis - sum(a < axis for a in inserted), depth + 1)
    if op == "Expand":
        tokens, data_rank = _target_tokens(node.inputs[1]), rank(data)
        if tokens is None or data_rank is None:
            return None
        out_rank = max(data_rank, len(tokens))
        kept = traced_dim(data, axis - (out_rank - data_rank), depth + 1) if axis >= out_rank - data_rank else 1
        if kept is not None and kept > 1:
            return kept
        token = tokens[axis - (out_rank - len(tokens))] if axis >= out_rank - len(tokens) else 1
        if isinstance(token, tuple):
            token = traced_dim(token[0], token[1], depth + 1)
        return token if kept == 1 and isinstance(token, int) and token > 0 else None
    return None


def _target_tokens(value: ir.Value) -> list | None:
    """``shape_tokens`` of a Reshape/Expand target; a ``Concat`` part it cannot read (``Mul`` of dims) is None.

    One unreadable entry does not hide the others: legacy Llama's ``repeat_kv`` target is
    ``[B, H * n_rep, T, d]`` with ``d`` read from the key's shape.
    """
    tokens = shape_tokens(value)
    concat = producer(value, "Concat")
    if tokens is not None or concat is None:
        return tokens
    tokens = []
    for part in concat.inputs:
        found = shape_tokens(part)
        if found is None:
            length = static_dim(part, 0) if rank(part) == 1 else None
            if length is None:
                return None
            found = [None] * length
        tokens += found
    return tokens


def scalar_factor(node: ir.Node) -> tuple[ir.Value, float] | None:
    """``(x, f)`` when ``node`` is ``x * f``, ``f * x`` or ``x / (1/f)``, ``f`` a constant scalar keeping x's rank."""
    if node.op_type not in ("Mul", "Div") or not is_onnx_domain(node) or len(node.inputs) != 2:
        return None
    orders = ((0, 1), (1, 0)) if node.op_type == "Mul" else ((0, 1),)
    for data, factor in orders:
        array = constant_array(node.inputs[factor])
        operand = node.inputs[data]
        if array is None or array.size != 1 or operand is None or constant_array(operand) is not None:
            continue
        # A [1, 1, 1, 1] factor would broadcast a lower-rank operand up: only scalars that keep the rank.
        if array.ndim > 1 and (rank(operand) is None or array.ndim > rank(operand)):
            continue
        f = float(array.reshape(()))
        if node.op_type == "Div":
            if f == 0.0:
                return None
            f = 1.0 / f
        return operand, f
    return None


def same_dim(token, value: ir.Value, axis: int, *, index: int, allowzero: bool, known: int | None = None) -> bool:
    """True if Reshape target entry ``token`` (at ``index``) is provably ``value``'s dim ``axis``.

    The entry copies it (0, at the same index, without ``allowzero``), reads it from
    ``value``'s shape (a ``(tensor, axis)`` token of shape arithmetic with the same dim),
    or states its static size (from the shape, or ``known``).
    """
    if isinstance(token, tuple):
        if token[0] is value and token[1] == axis:
            return True
        mine = value.shape[axis] if value.shape is not None and value.shape.rank() > axis else None
        theirs = token[0].shape[token[1]] if token[0].shape is not None else None
        named = getattr(mine, "value", None)
        return isinstance(named, str) and getattr(theirs, "value", None) == named
    if token == 0:
        return not allowzero and index == axis
    size = static_dim(value, axis)
    return token > 0 and (size if size is not None else known) == token


def split_heads(reshape: ir.Node) -> HeadSplit | None:
    """``reshape`` as a head split ``[B, S, N*d] -> [B, S, N, d]`` that keeps batch and sequence, however spelled.

    Batch and sequence entries are copied (0), read from the input's shape, or stated
    as the input's static sizes (``--static-shapes`` writes ``[1, 16, -1, 32]`` with
    ``allowzero=1``; a size the recorded shape leaves open is traced by ``symbolic_dim``:
    BEiT's class token joined through the legacy ``expand``, DETR's tiled queries); one of
    them may be inferred (-1) when heads and head size are static and multiply to the
    input's width, or the head count may be (-1).
    """
    hidden = reshape.inputs[0]
    if hidden is None or rank(hidden) != 3:
        return None
    tokens = shape_tokens(reshape.inputs[1])
    if tokens is None or len(tokens) != 4 or tokens.count(-1) > 1:
        return None
    allowzero = reshape.attributes.get_int("allowzero", 0) != 0
    batch, seq, heads, size = tokens
    if not isinstance(size, int) or size <= 0 or not isinstance(heads, int) or heads == 0 or heads < -1:
        return None
    width = last_dim(hidden)
    if width is not None and (width % size or (heads > 0 and heads * size != width)):
        return None
    # A static entry may name a size the recorded shape leaves open (BEiT's class token concatenated through the
    # legacy export's expand target, which ONNX's inference cannot read): traced through the ops producing it.
    known = [
        _static_symbolic_dim(hidden, axis) if isinstance(t, int) and t > 0 else None
        for axis, t in enumerate((batch, seq))
    ]
    kept = [
        same_dim(t, hidden, axis, index=axis, allowzero=allowzero, known=known[axis])
        for axis, t in enumerate((batch, seq))
    ]
    if not all(kept):
        # One of batch/sequence inferred: exact only when the rest multiply to the input's width.
        inferred = sum(t == -1 for t in (batch, seq)) == 1 and any(kept)
        if not inferred or heads <= 0 or width != heads * size:
            return None
    if heads == -1:
        heads = width // size if width is not None else None
    return HeadSplit(hidden, reshape.outputs[0], heads, size)


def _static_symbolic_dim(value: ir.Value, axis: int) -> int | None:
    """``value``'s dim ``axis`` where ``symbolic_dim`` traces it to a static size, else None."""
    dim = symbolic_dim(value, axis)
    return dim[0] if dim is not None and not dim[1] else None


def _scaled_source(value: ir.Value, scales: bool) -> tuple[ir.Value, float]:
    factor = 1.0
    while scales and value.producer() is not None:
        step = scalar_factor(value.producer())
        if step is None:
            break
        value, factor = step[0], factor * step[1]
    return value, factor


def relayout(reshape: ir.Node, *, scales: bool = True) -> tuple[ir.Value, tuple[int, ...], float] | None:
    """``(u, p, f)`` when ``reshape``'s output is ``Transpose(u, p) * f`` computed through 3-D.

    The SDPA export transposes the key as ``Reshape(Transpose(Reshape(k, [B*N, T, d]),
    (0, 2, 1)), [B, N, d, T])``: merge the two leading axes, permute the other two,
    split the leading axis back. Targets may be shape arithmetic on ``k``, -1, or
    static sizes (``[12, 16, 32]`` for ``B = 1, N = 12``).
    """
    outer = reshape.attributes.get_int("allowzero", 0) != 0, shape_tokens(reshape.inputs[1])
    if outer[1] is None or len(outer[1]) != 4 or outer[1].count(-1) > 1:
        return None
    value, factor = _scaled_source(reshape.inputs[0], scales)
    perm3 = (0, 1, 2)
    while (transpose := producer(value, "Transpose")) is not None:
        p = perm(transpose)
        if p is None or len(p) != 3 or p[0] != 0:
            return None
        perm3 = compose(p, perm3)
        value, f = _scaled_source(transpose.inputs[0], scales)
        factor *= f
    inner = producer(value, "Reshape")
    source = inner.inputs[0] if inner is not None else None
    if source is None or rank(source) != 4:
        return None
    tokens = shape_tokens(inner.inputs[1])
    allowzero = inner.attributes.get_int("allowzero", 0) != 0
    if tokens is None or len(tokens) != 3 or tokens.count(-1) > 1:
        return None
    merged = tokens[0]
    leading = [static_dim(source, 0), static_dim(source, 1)]
    if not (merged == -1 or (None not in leading and merged == leading[0] * leading[1])):
        return None
    if not all(same_dim(tokens[i], source, i + 1, index=i, allowzero=allowzero) for i in (1, 2)):
        return None
    axes = (0, 1, 1 + perm3[1], 1 + perm3[2])
    # The outer target names u's dims in that order; one -1 is then exactly the missing dim. 0 would copy a
    # dim of the 3-D tensor, not of u.
    if not all(t == -1 or same_dim(t, source, axis, index=-1, allowzero=outer[0]) for t, axis in zip(outer[1], axes)):
        return None
    return source, axes, factor


def keeps_shape(reshape: ir.Node, known: tuple[int | None, ...] = ()) -> bool:
    """True if ``reshape`` provably returns its input's shape (``[0, -1, 0, 16]`` on ``[B, N, S, 16]``).

    ``known`` gives static sizes per axis where the input's shape does not.
    """
    data = reshape.inputs[0]
    tokens = shape_tokens(reshape.inputs[1])
    if data is None or tokens is None or rank(data) != len(tokens) or tokens.count(-1) > 1:
        return False
    allowzero = reshape.attributes.get_int("allowzero", 0) != 0
    hints = list(known) + [None] * len(tokens)
    return all(
        t == -1 or same_dim(t, data, axis, index=axis, allowzero=allowzero, known=hints[axis])
        for axis, t in enumerate(tokens)
    )


@dataclass(frozen=True)
class Traced:
    """Where a 4-D per-head operand comes from: it is ``Transpose(source, perm) * scale``.

    ``split`` is set when ``source`` is a head split's output; then ``split.hidden`` is
    the 3-D tensor it splits before any scalar scale on it (``split.scale``, already
    inside ``source``), so the operand is also the split of ``hidden`` times
    ``scale * split.scale`` (``hidden_scale``).
    """

    source: ir.Value
    perm: tuple[int, ...]
    scale: float
    split: HeadSplit | None

    def canonical(self, wanted: tuple[int, ...] = (0, 2, 1, 3)) -> bool:
        """True if the operand is the head split's output transposed by ``wanted`` (so the 3-D hidden stands for it)."""
        return self.split is not None and self.perm == wanted

    def hidden_scale(self) -> float:
        """The scalar the operand is of the head split of ``split.hidden`` (not of ``source``)."""
        return self.scale * (self.split.scale if self.split is not None else 1.0)


def trace_heads(value: ir.Value, *, scales: bool = True, limit: int = 32) -> Traced | None:
    """Trace a 4-D attention operand back through layout-only ops, composing their permutations.

    Walks Transposes (composed: one ``(0, 2, 3, 1)`` or ``(0, 2, 1, 3)`` then
    ``(0, 1, 3, 2)`` are the same thing), scalar Mul/Div (with ``scales``), Reshapes
    that keep the shape, and the SDPA relayout through 3-D, and stops at a head split
    (``split_heads``) or at anything else. None if the operand is not known to be 4-D.
    """
    current, order, factor = value, IDENTITY, 1.0
    if rank(value) not in (None, 4):
        return None
    four_d = rank(value) == 4  # every step below keeps the rank; a 4-axis Transpose proves it
    for _ in range(limit):
        node = current.producer()
        if node is None or not is_onnx_domain(node):
            break
        if node.op_type == "Transpose":
            p = perm(node)
            if p is None and rank(node.inputs[0]) == 4:
                p = (3, 2, 1, 0)
            if p is None or len(p) != 4:
                break
            current, order, four_d = node.inputs[0], compose(p, order), True
            continue
        step = scalar_factor(node) if scales else None
        if step is not None:
            current, factor = step[0], factor * step[1]
            continue
        if node.op_type != "Reshape":
            break
        split = split_heads(node)
        if split is not None:
            # A scale on the projection (BART's ``q_proj(x) * scaling``) is inside ``current``: kept apart from
            # ``factor`` so that the op, given ``current`` or ``hidden``, applies it exactly once.
            hidden, f = _scaled_source(split.hidden, scales)
            return Traced(current, order, factor, HeadSplit(hidden, split.split, split.heads, split.head_size, f))
        found = relayout(node, scales=scales)
        if found is not None:
            current, order, factor, four_d = found[0], compose(found[1], order), factor * found[2], True
            continue
        if keeps_shape(node):
            current = node.inputs[0]
            continue
        break
    if not four_d and rank(current) != 4:
        return None
    return Traced(current, order, factor, None)


# -- Symbolic dims: proving what a Reshape keeps when its target is shape arithmetic -------------------------

# A dim as ``coefficient * product of named dims`` (names sorted): ``(2, ("batch",))`` is 2 * batch.
Dim = tuple[int, tuple[str, ...]]
_ONE: Dim = (1, ())
_COPY, _INFER = (0, ()), (-1, ())  # Reshape target entries: copy the input's dim, infer from the rest
_DEPTH = 48


def _product(dims) -> Dim | None:
    total = _ONE
    for dim in dims:
        if dim is None:
            return None
        total = (total[0] * dim[0], tuple(sorted(total[1] + dim[1])))
    return total


def _quotient(dividend: Dim | None, divisor: Dim | None) -> Dim | None:
    """``dividend / divisor`` where it divides exactly as a product of named dims, else None."""
    if dividend is None or divisor is None or divisor[0] <= 0 or dividend[0] % divisor[0]:
        return None
    names = list(dividend[1])
    for name in divisor[1]:
        if name not in names:
            return None
        names.remove(name)
    return dividend[0] // divisor[0], tuple(names)


def symbolic_dim(value: ir.Value | None, axis: int, memo: dict | None = None, depth: int = 0) -> Dim | None:
    """``value``'s dim ``axis`` as a product of named dims, or None where the graph does not tell.

    A recorded static size or named dim (an exporter's or shape inference's ``batch``)
    is taken as is; otherwise the size is traced through the ops producing it:
    Transposes, Reshapes (a target entry that is shape arithmetic on other tensors'
    dims, including products such as ``batch * heads``; 0 copies the input's dim; -1 is
    the input's size over the other entries), matrix products, element-wise and
    broadcasting ops (in a valid graph a dim not known to be 1 is the broadcast size),
    ``LayerNormalization``, ``Concat`` (static parts add up on its axis), ``Expand``,
    ``Tile`` and ``ConstantOfShape`` (their shape inputs read by ``symbolic_shape``).
    Two values with equal ``symbolic_dim`` have the same size at every input size.
    """
    memo = {} if memo is None else memo
    if value is None or depth > _DEPTH:
        return None
    value_rank = rank(value)
    if value_rank is None or not -value_rank <= axis < value_rank:
        return None
    axis %= value_rank
    key = (id(value), axis)
    if key not in memo:
        memo[key] = None  # a cycle (none in a valid graph) reads as unknown
        memo[key] = _symbolic_dim(value, axis, value_rank, memo, depth)
    return memo[key]


def _symbolic_dim(value: ir.Value, axis: int, value_rank: int, memo: dict, depth: int) -> Dim | None:
    recorded = value.shape[axis] if value.shape is not None else None
    if isinstance(recorded, int):
        return (recorded, ())
    name = getattr(recorded, "value", None)
    if isinstance(name, str) and not name.startswith("unk__"):  # onnx's inference names unknown dims unk__N
        return _ONE[0], (name,)
    traced = _traced_symbolic_dim(value, axis, value_rank, memo, depth + 1)
    if traced is None and isinstance(name, str):
        return _ONE[0], (name,)
    return traced


def _traced_symbolic_dim(value: ir.Value, axis: int, value_rank: int, memo: dict, depth: int) -> Dim | None:
    node = value.producer()
    if node is None or not (is_onnx_domain(node) or node.op_type == "FusedMatMul"):
        return None
    op, data = node.op_type, node.inputs[0]
    if op == "Transpose":
        order = perm(node) or tuple(reversed(range(value_rank)))
        return symbolic_dim(data, order[axis], memo, depth)
    if op == "Reshape":
        entries = symbolic_shape(node.inputs[1], memo, depth)
        if entries is None or len(entries) != value_rank:
            return None
        copies = not node.attributes.get_int("allowzero", 0)
        entries = [symbolic_dim(data, i, memo, depth) if e == _COPY and copies else e for i, e in enumerate(entries)]
        if entries[axis] != _INFER:
            return entries[axis] if entries[axis] is None or entries[axis][0] > 0 else None
        data_rank = rank(data)
        if data_rank is None or entries.count(_INFER) != 1:
            return None
        total = _product(symbolic_dim(data, i, memo, depth) for i in range(data_rank))
        return _quotient(total, _product(e for i, e in enumerate(entries) if i != axis))
    if op in ("MatMul", "FusedMatMul") and not any(
        node.attributes.get_int(name, 0) for name in ("transA", "transB", "transBatchA", "transBatchB")
    ):
        a, b = node.inputs[:2]
        if axis == value_rank - 1:
            return symbolic_dim(b, -1, memo, depth)
        if axis == value_rank - 2:
            return symbolic_dim(a, -2, memo, depth)
        return _broadcast([a, b], axis, value_rank, memo, depth)
    if op in _SAME_RANK or (op == "LayerNormalization" and value is node.outputs[0]):
        return symbolic_dim(data, axis, memo, depth)
    if op in _BROADCASTING:
        return _broadcast(list(node.inputs), axis, value_rank, memo, depth)
    if op == "Concat":
        # BEiT's legacy export: cat(cls_token.expand(batch, -1, -1), patches) on the sequence axis.
        if axis != node.attributes.get_int("axis", 0) % value_rank:
            return _broadcast(list(node.inputs), axis, value_rank, memo, depth)
        sizes = [symbolic_dim(part, axis, memo, depth) for part in node.inputs]
        if any(size is None or size[1] for size in sizes):
            return None  # only static parts add up to a product of named dims
        return sum(size[0] for size in sizes), ()
    if op == "ConstantOfShape":
        entries = symbolic_shape(data, memo, depth)
        size = entries[axis] if entries is not None and len(entries) == value_rank else None
        return size if size is not None and size[0] >= 0 else None
    if op == "Tile":
        # DETR's legacy export: the query embeddings tiled over the batch.
        repeats = symbolic_shape(node.inputs[1], memo, depth)
        if repeats is None or len(repeats) != value_rank or repeats[axis] is None or repeats[axis][0] < 0:
            return None
        return _product([symbolic_dim(data, axis, memo, depth), repeats[axis]])
    if op == "Expand":
        entries = symbolic_shape(node.inputs[1], memo, depth)
        if entries is None or len(entries) > value_rank:
            return None
        target = entries[axis - (value_rank - len(entries))] if axis >= value_rank - len(entries) else _ONE
        if target is None or target[0] < 0:
            return None
        return (
            _broadcast([data], axis, value_rank, memo, depth)
            if target == _ONE
            else _expanded(data, axis, value_rank, target, memo, depth)
        )
    return None


def _expanded(data: ir.Value, axis: int, out_rank: int, target: Dim, memo: dict, depth: int) -> Dim | None:
    """An Expand's dim ``axis`` where its target entry is ``target`` (not 1): the data's dim there is 1 or the same."""
    data_rank = rank(data)
    if data_rank is None:
        return None
    kept = symbolic_dim(data, axis - (out_rank - data_rank), memo, depth) if axis >= out_rank - data_rank else _ONE
    return target if kept in (_ONE, target) else None


def _broadcast(operands: list, axis: int, out_rank: int, memo: dict, depth: int) -> Dim | None:
    """The broadcast size of ``axis`` (right-aligned): the operands' size that is not 1."""
    sizes = []
    for operand in operands:
        operand_rank = rank(operand)
        if operand_rank is None:
            sizes.append(None)
        elif axis - (out_rank - operand_rank) >= 0:
            sizes.append(symbolic_dim(operand, axis - (out_rank - operand_rank), memo, depth))
    full = {size for size in sizes if size is not None and size != _ONE}
    if len(full) == 1:
        return full.pop()  # in a valid graph an unknown operand size is 1 or this one
    return _ONE if not full and None not in sizes else None


def symbolic_shape(value: ir.Value | None, memo: dict | None = None, depth: int = 0) -> list[Dim | None] | None:
    """The entries of a 1-D int64 shape tensor as ``symbolic_dim`` products (None for an unreadable entry).

    Follows ``Shape``, ``Concat``, ``Gather``, ``Slice``, ``Unsqueeze``/``Squeeze``/``Cast``,
    ``Mul``/``Div`` (the legacy export's ``batch * num_heads``), a 1-D ``Reshape`` and the
    legacy export's ``expand`` target ``Where(Equal(s, -1), 1, s)``. None if even the
    length is unknown.
    """
    memo = {} if memo is None else memo
    if value is None or depth > _DEPTH:
        return None
    array = constant_array(value)
    if array is not None:
        return [(int(v), ()) for v in array.reshape(-1)] if array.ndim <= 1 and array.dtype.kind in "iu" else None
    node = value.producer()
    if node is None or not is_onnx_domain(node):
        return None
    op, depth = node.op_type, depth + 1
    if op == "Shape":
        source_rank = rank(node.inputs[0])
        if source_rank is None:
            return None
        axes = range(source_rank)[node.attributes.get_int("start", 0) : node.attributes.get_int("end", source_rank)]
        return [symbolic_dim(node.inputs[0], axis, memo, depth) for axis in axes]
    if op == "Concat":
        entries: list = []
        for part in node.inputs:
            found = symbolic_shape(part, memo, depth)
            if found is None:
                length = static_dim(part, 0) if rank(part) == 1 else None
                if length is None:
                    return None
                found = [None] * length
            entries += found
        return entries
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
        return symbolic_shape(node.inputs[0], memo, depth)
    if op == "Reshape" and rank(value) == 1:
        return symbolic_shape(node.inputs[0], memo, depth)  # the legacy export's expand target reshaped to [-1]
    if op == "Where" and len(node.inputs) == 3:
        return _where_entries(node, memo, depth)
    data = symbolic_shape(node.inputs[0], memo, depth)
    if data is None:
        return None
    if op == "Gather":
        index = constant_array(node.inputs[1])
        if index is None or index.ndim > 1:
            return None
        if not all(-len(data) <= i < len(data) for i in index.flat):
            return None
        return [data[int(i)] for i in index.reshape(-1)]
    if op == "Slice":
        bounds = [constant_array(v) for v in node.inputs[1:3]]
        if any(b is None or b.size != 1 for b in bounds):
            return None
        extra = [constant_array(v) for v in node.inputs[3:] if v is not None]
        if any(e is None or e.size != 1 or int(e.reshape(())) not in (0, 1) for e in extra):
            return None
        start, end = (int(b.reshape(())) for b in bounds)
        end = min(end, len(data)) if end < _INT64_MAX else len(data)
        return data[max(start, -len(data)) : end]
    if op in ("Mul", "Div") and len(node.inputs) == 2:
        other = symbolic_shape(node.inputs[1], memo, depth)
        if other is None or 1 not in (len(data), len(other)) and len(data) != len(other):
            return None
        length = max(len(data), len(other))
        data, other = (d * length if len(d) == 1 else d for d in (data, other))
        if op == "Mul":
            return [_product([a, b]) for a, b in zip(data, other)]
        return [_quotient(a, b) for a, b in zip(data, other)]
    return None


def _where_entries(node: ir.Node, memo: dict, depth: int) -> list[Dim | None] | None:
    """``Where(Equal(s, c), r, s)`` of a shape ``s`` and constants ``c < 0``, ``r``: the legacy exporter's ``expand``
    target, entry by entry (a dim, never negative, keeps its entry; a constant equal to ``c`` becomes ``r``)."""
    condition, replacement, source = node.inputs
    test = condition.producer() if condition is not None else None
    if test is None or test.op_type != "Equal" or not is_onnx_domain(test) or source not in test.inputs:
        return None
    other = test.inputs[1] if test.inputs[0] is source else test.inputs[0]
    entries = symbolic_shape(source, memo, depth)
    compared, replaced = constant_array(other), constant_array(replacement)
    if entries is None or compared is None or replaced is None:
        return None
    compared, replaced = compared.reshape(-1), replaced.reshape(-1)
    if compared.size not in (1, len(entries)) or replaced.size not in (1, len(entries)):
        return None
    result: list[Dim | None] = []
    for index, entry in enumerate(entries):
        against = int(compared[index % compared.size])
        if entry is None or (entry[1] and (against >= 0 or entry[0] < 0)):
            return None  # a named dim may equal a non-negative constant (a negated one, any)
        if not entry[1] and entry[0] == against:
            entry = (int(replaced[index % replaced.size]), ())
        result.append(entry)
    return result


def merged_heads(value: ir.Value, *, scales: bool = True) -> tuple[ir.Value, tuple[int, ...], float] | None:
    """``(u, p, f)`` when the 3-D ``value`` is ``Transpose(u, p) * f`` with its two leading axes merged.

    Hugging Face's eager BART-family attention batches heads for ``torch.bmm``:
    ``Reshape(Transpose(Reshape(x, [B, S, N, d]), (0, 2, 1, 3)), [B * N, -1, d])``, and
    the key then ``Transpose(·, (0, 2, 1))``. The Reshape must provably keep the 4-D
    tensor's last two dims (``symbolic_dim``), which makes its leading entry ``B * N``
    and its rows ``(b, n)`` in that order. Transposes after it must keep the merged axis
    first; scalar scales (with ``scales``) are collected in ``f``.
    """
    value, factor = _scaled_source(value, scales)
    order = (0, 1, 2)
    while (transpose := producer(value, "Transpose")) is not None:
        p = perm(transpose)
        if p is None or len(p) != 3 or p[0] != 0:
            return None
        order = compose(p, order)
        value, f = _scaled_source(transpose.inputs[0], scales)
        factor *= f
    reshape = producer(value, "Reshape")
    if reshape is None or rank(reshape.inputs[0]) != 4 or rank(value) != 3:
        return None
    source, memo = reshape.inputs[0], {}
    kept = [(symbolic_dim(value, axis, memo), symbolic_dim(source, axis + 1, memo)) for axis in (1, 2)]
    if any(mine is None or mine != theirs for mine, theirs in kept):
        return None
    return source, (0, 1, 1 + order[1], 1 + order[2]), factor

"""Rewrite rules that write one computation in the form the fusions match, where exporters write it otherwise.

``simplify-ops`` runs them before the fusions, so a fusion needs one pattern per computation rather than one per
exporter's spelling:

* ``x * -1`` into ``Neg(x)``, and ``x + [0]`` (``x * [1]``, ...) with a one-element constant of rank 1 into ``x``
  (Paddle2ONNX writes ``-x`` as ``x * [-1] + [0]``): exact. Rotary's ``rotate_half`` is matched with a ``Neg``.
* ``ReduceSum(x) / n``, where ``n`` is the number of elements each sum adds, into ``ReduceMean(x)`` (JAX's
  ``jnp.mean``, hand-written means): ONNX Runtime's mean is the same sum divided by ``n``, up to the order it
  adds in. RMS and layer norms are matched with a ``ReduceMean``.
* A two-operand ``Einsum`` that is a batched matrix product, its axes in any order, into ``MatMul`` with the
  ``Transpose``s that order them (Keras' ``aecd,abcd->acbe``, Funnel's ``bind,bjnd->bnij``, XLNet's
  ``ibnd,jbnd->bnij``): attention is matched with ``MatMul`` products under transposes.
* ``Unsqueeze(Reduce*(x, axes, keepdims=0), axes)`` into ``Reduce*(x, axes, keepdims=1)`` (JAX's
  ``jnp.mean(keepdims=True)``: a sum that drops the axis, then ``expand_dims``): exact.
* A constant ``[1, ..., 1, D]`` operand of ``Add``, ``Sub``, ``Mul`` or ``Div`` into the vector ``[D]`` it is, where
  the other operand has at least its rank (Flax's ``[1, 1, D]`` norm scales): exact. The norms' scales and biases
  are matched as vectors.
* ``Tile(x, repeats)`` into ``Expand(x, repeats)`` where every axis ``repeats`` copies has size 1 in ``x`` (the
  legacy exporter's ``repeat_interleave(kv, r, dim=1)``, ``Tile(Unsqueeze(kv, 2), [1, 1, r, 1, 1])``): exact.
  Grouped-query attention's repeated key/value heads are matched with an ``Expand``.
* The parts ``unbind`` takes of ``x`` reshaped to ``[..., n, D/n]`` (``Squeeze(Split(Reshape(x)), axis=-2)``, the
  original Qwen's ``rotate_half``) or ``[..., D/n, n]`` (axis -1, GPT-J's pairs) into ``Slice``s of ``x``'s last
  axis (contiguous, or every n-th from k): exact. Rotary's halves and pairs are matched as ``Slice``s.
* A normalization's scale multiplied into its inverse root, ``x * (inv * c)``, or into its input, ``(x * c) * inv``
  or ``(x * c) / root``, into ``(x * inv) * c`` (``(x / root) * c``), ``c`` a constant and ``inv`` the inverse
  of the root of ``Add(v, eps)`` (Flax's ``rsqrt(var + eps) * scale``): the same products in another order, so
  the result may differ in the last bit. The norms are matched with their scale applied last.

Each refuses a match whose constant would broadcast the result to another shape, or whose operands' shapes or
constants it cannot read.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from optimizer.domains import onnx_opset


def _constant(value: ir.Value | None) -> np.ndarray | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return tensor.numpy() if tensor is not None else None


def _broadcasts_to_itself(value: ir.Value, constant: np.ndarray) -> bool:
    """Whether a one-element ``constant`` beside ``value`` leaves its shape as it is (its rank is no higher)."""
    if constant.size != 1:
        return False
    if constant.ndim == 0:
        return True
    return value.shape is not None and constant.ndim <= value.shape.rank()


class _NegationByMinusOne(pattern.RewriteRuleClassBase):
    """``Mul(x, -1)`` (either order), a float ``x``, into ``Neg(x)``."""

    def pattern(self, op, x, minus_one):
        return op.Mul(x, minus_one)

    def check(self, context, x, minus_one, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        constant = _constant(minus_one)
        if constant is None or constant.dtype.kind != "f" or not np.all(constant == -1):
            return result.fail("not a product with a constant -1")
        if x.dtype is None or not x.dtype.is_floating_point():
            return result.fail("not a float product")
        if not _broadcasts_to_itself(x, constant):
            return result.fail("the -1 would broadcast the product to another shape")
        return result

    def rewrite(self, op, x, **_):
        return op.Neg(x)


class _OneElementNoOp(pattern.RewriteRuleClassBase):
    """``x + [0]``, ``x - [0]``, ``x * [1]`` and ``x / [1]``, the constant one element of rank 1 or more (no higher
    than ``x``'s), into ``Identity(x)``: onnxscript's no-op rules (``op_simplification._exact_no_op_rules``) match a
    scalar constant only, and Paddle2ONNX writes ``-x`` as ``x * [-1] + [0]``."""

    def __init__(self, op_type: str, operand_first: bool) -> None:
        super().__init__(name=f"OneElementNoOp({op_type}, operand_first={operand_first})")
        self._op_type = op_type
        self._operand_first = operand_first

    def pattern(self, op, x, constant):
        operands = (x, constant) if self._operand_first else (constant, x)
        return getattr(op, self._op_type)(*operands)

    def check(self, context, x, constant, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        array = _constant(constant)
        neutral = 0.0 if self._op_type in ("Add", "Sub") else 1.0
        if array is None or array.dtype.kind != "f" or array.ndim == 0 or not np.all(array == neutral):
            return result.fail("not a one-element constant that leaves x as it is")
        if x.dtype is None or x.dtype.numpy() != array.dtype:
            return result.fail("the constant's dtype is not x's")
        if not _broadcasts_to_itself(x, array):
            return result.fail("the constant would broadcast x to another shape")
        return result

    def rewrite(self, op, x, **_):
        return op.Identity(x)


class _MeanBySum(pattern.RewriteRuleClassBase):
    """``Div(ReduceSum(x, axes), n)``, ``n`` the number of elements each sum adds, into ``ReduceMean(x, axes)``
    (its axes an input from opset 18, an attribute before)."""

    def __init__(self, axes_as_input: bool) -> None:
        super().__init__(name=f"MeanBySum(axes_as_input={axes_as_input})")
        self._axes_as_input = axes_as_input

    def pattern(self, op, x, count):
        return op.Div(op.ReduceSum(x, _allow_other_inputs=True, _outputs=["total"]), count)

    def check(self, context, x, total, count, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        axes = self._axes(total.producer())
        if axes is None:
            return result.fail("the sum's axes are not constant")
        if x.dtype is None or not x.dtype.is_floating_point() or x.shape is None:
            return result.fail("not a float tensor of known rank")
        rank = x.shape.rank()
        if any(not -rank <= axis < rank for axis in axes):
            return result.fail("an axis is out of range")
        if len({axis % rank for axis in axes}) != len(axes):
            return result.fail("an axis is named twice")  # summed once, but counted twice
        reduced = [x.shape[axis % rank] for axis in axes] if axes else list(x.shape)
        if not all(isinstance(dim, int) for dim in reduced):
            return result.fail("a summed dim has no static size")
        if 0 in reduced:
            return result.fail("it sums no elements")  # 0 / 0 is NaN; ONNX Runtime's mean of nothing is 0
        divisor = _constant(count)
        if divisor is None or divisor.dtype.kind != "f" or divisor.size != 1:
            return result.fail("not divided by a constant scalar")
        if float(divisor.reshape(())) != float(np.prod(reduced, dtype=np.int64)):
            return result.fail("not divided by the number of elements summed")
        if not _broadcasts_to_itself(total, divisor):
            return result.fail("the divisor would broadcast the mean to another shape")
        return result

    @staticmethod
    def _axes(node: ir.Node) -> list[int] | None:
        """The sum's axes ([] for all of them), or None where they are not constant or it sums nothing."""
        if node.attributes.get_int("noop_with_empty_axes", 0):
            return None
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            axes = _constant(node.inputs[1])
            return None if axes is None else [int(axis) for axis in axes.reshape(-1)]
        given = node.attributes.get_ints("axes", None)
        return [] if given is None else list(given)

    def rewrite(self, op, x, total, **_):
        node = total.producer()
        axes = self._axes(node)
        keepdims = node.attributes.get_int("keepdims", 1)
        if not axes:
            return op.ReduceMean(x, keepdims=keepdims)
        if self._axes_as_input:
            return op.ReduceMean(x, op.Constant(value=ir.tensor(np.array(axes, np.int64))), keepdims=keepdims)
        return op.ReduceMean(x, axes=axes, keepdims=keepdims)


class _EinsumAsMatMul(pattern.RewriteRuleClassBase):
    """A two-operand ``Einsum`` that is a batched matrix product up to the order of its axes into ``MatMul``, each
    operand transposed to ``batch + [row, k]`` and ``batch + [k, column]`` where it is not so already, and the
    product transposed to the output's order where that is not ``batch + [row, column]``: every letter of both
    operands is a batch letter (in both and in the output), the one contracted letter (in both, not in the
    output) or one free letter per operand (in the output). Keras writes attention so (``aecd,abcd->acbe``,
    ``acbe,aecd->abcd``), and ``torch.einsum`` code, which both torch exporters keep as an ``Einsum``: Hugging Face's
    Funnel (``bind,bjnd->bnij``, ``bnij,bjnd->bind``), XLNet (``ibnd,jbnd->bnij``), BigBird (``bhqd,bhkd->bhqk``);
    the transposes are what ``fuse-attention`` traces. An ellipsis is left alone (Flax's ``...qhd,...khd->...hqk``)."""

    def pattern(self, op, a, b):
        return op.Einsum(a, b, _outputs=["product"])

    def check(self, context, a, b, product, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        form = _batched_product(product.producer())
        if form is None:
            return result.fail("not an Einsum of a batched matrix product")
        if a.dtype not in _MATMUL_TYPES or b.dtype != a.dtype:
            return result.fail("not a type MatMul takes")
        rank = len(form.out)
        if a.shape is None or b.shape is None or a.shape.rank() != rank or b.shape.rank() != rank:
            return result.fail("an operand's rank is unknown")
        # Einsum broadcasts a contracted dim of 1 against the other's; MatMul refuses it. Sizes known to differ
        # are refused; two sizes neither of which is known are taken to be equal, as they are in every attention
        # (the probabilities' columns are the values' rows): there, a 1 against another size would make ONNX
        # Runtime refuse the MatMul at run time, where the Einsum broadcast.
        if _differ(a.shape[form.terms[0].index(form.k)], b.shape[form.terms[1].index(form.k)]):
            return result.fail("the contracted dims may differ (Einsum broadcasts a 1, MatMul does not)")
        return result

    def rewrite(self, op, a, b, product, **_):
        form = _batched_product(product.producer())
        operands = (a, b)
        first = form.rows  # the operand whose free letter comes first in the output: MatMul's left
        left, right = form.terms[first], form.terms[1 - first]
        row, column = _free(left, form), _free(right, form)
        matmul = op.MatMul(
            _transposed(op, operands[first], left, (*form.batch, row, form.k)),
            _transposed(op, operands[1 - first], right, (*form.batch, form.k, column)),
        )
        computed = (*form.batch, row, column)
        if tuple(form.out) == computed:
            return matmul
        return op.Transpose(matmul, perm=[computed.index(letter) for letter in form.out])


class _ProductForm(NamedTuple):
    """An Einsum's two terms, its output, its batch letters in the output's order, its contracted letter, and which
    operand (0 or 1) holds the free letter that comes first in the output."""

    terms: tuple[str, str]
    out: str
    batch: tuple[str, ...]
    k: str
    rows: int


def _free(term: str, form: _ProductForm) -> str:
    (letter,) = (c for c in term if c != form.k and c not in form.batch)
    return letter


def _transposed(op, value, term: str, order: tuple[str, ...]):
    perm = [term.index(letter) for letter in order]
    return value if perm == list(range(len(perm))) else op.Transpose(value, perm=perm)


# The types ONNX's MatMul takes (Einsum takes every numeric type).
_MATMUL_TYPES = frozenset(
    {
        ir.DataType.FLOAT16,
        ir.DataType.FLOAT,
        ir.DataType.DOUBLE,
        ir.DataType.BFLOAT16,
        ir.DataType.INT32,
        ir.DataType.INT64,
        ir.DataType.UINT32,
        ir.DataType.UINT64,
    }
)


def _differ(first: int | ir.SymbolicDim, second: int | ir.SymbolicDim) -> bool:
    """Whether two dims are, or may be, of other sizes where one of them is known: two numbers that differ, or a
    number and a size not known (a 1 against it broadcasts in Einsum alone; any other number may be met by a 1)."""
    if isinstance(first, int) and isinstance(second, int):
        return first != second
    return isinstance(first, int) or isinstance(second, int)


def _batched_product(node: ir.Node) -> _ProductForm | None:
    """The Einsum ``node`` read as a batched matrix product up to the order of its axes (``_EinsumAsMatMul``), or
    None where it is none: an ellipsis, a repeated letter (a diagonal), a letter summed over in one operand alone,
    a batch letter one operand lacks, more or fewer than one contracted letter, or free letters other than one
    per operand."""
    equation = node.attributes.get_string("equation", "").replace(" ", "")
    if "->" not in equation or "." in equation or len(node.inputs) != 2:
        return None
    operands, out = equation.split("->")
    terms = operands.split(",")
    if len(terms) != 2 or not all(term.isalpha() for term in (*terms, out)):
        return None
    first, second = terms
    if not len(first) == len(second) == len(out) >= 2 or any(len(set(t)) != len(t) for t in (first, second, out)):
        return None
    shared = set(first) & set(second)
    contracted = shared - set(out)
    batch = tuple(letter for letter in out if letter in shared)
    free = [set(term) - shared for term in terms]
    if len(contracted) != 1 or len(batch) != len(out) - 2 or any(len(letters) != 1 for letters in free):
        return None
    (first_free,), (second_free,) = free
    if first_free not in out or second_free not in out:
        return None
    rows = 0 if out.index(first_free) < out.index(second_free) else 1
    return _ProductForm((first, second), out, batch, contracted.pop(), rows)


class _KeptReducedAxes(pattern.RewriteRuleClassBase):
    """``Unsqueeze(Reduce*(x, axes, keepdims=0), axes)`` into ``Reduce*(x, axes, keepdims=1)``: JAX writes
    ``jnp.mean(x, -1, keepdims=True)`` as a sum that drops the axis and an ``expand_dims`` that restores it."""

    def __init__(self, reduce_op: str) -> None:
        super().__init__(name=f"KeptReducedAxes({reduce_op})")
        self._reduce_op = reduce_op

    def pattern(self, op, x):
        reduced = getattr(op, self._reduce_op)(x, _allow_other_inputs=True, _outputs=["reduced"])
        return op.Unsqueeze(reduced, _allow_other_inputs=True, _outputs=["restored"])

    def check(self, context, x, reduced, restored, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        reduce, unsqueeze = reduced.producer(), restored.producer()
        if reduce.attributes.get_int("keepdims", 1) != 0:
            return result.fail("the reduction keeps its axes already")
        axes, restored_axes = _MeanBySum._axes(reduce), _unsqueezed_axes(unsqueeze)
        if not axes or restored_axes is None:
            return result.fail("the axes are not constant, or the reduction is over every axis")
        rank = x.shape.rank() if x.shape is not None else None
        if rank is not None:
            if any(not -rank <= axis < rank for axis in (*axes, *restored_axes)):
                return result.fail("an axis is out of range")
            same = sorted(a % rank for a in axes) == sorted(a % rank for a in restored_axes)
        else:  # counted from the same end of the same rank (the restored rank is the input's): the same axes
            same = sorted(axes) == sorted(restored_axes) and len({axis < 0 for axis in axes}) == 1
        if not same or len(set(axes)) != len(axes):
            return result.fail("the restored axes are not the reduced ones")
        return result

    def rewrite(self, op, x, reduced, **_):
        node = reduced.producer()
        attributes = {name: attr.value for name, attr in node.attributes.items() if name != "keepdims"}
        return getattr(op, self._reduce_op)(*node.inputs, keepdims=1, **attributes)


def _unsqueezed_axes(node: ir.Node) -> list[int] | None:
    """The axes an ``Unsqueeze`` inserts (an input from opset 13, an attribute before), or None where not constant."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = _constant(node.inputs[1])
        return None if axes is None else [int(axis) for axis in axes.reshape(-1)]
    given = node.attributes.get_ints("axes", None)
    return None if given is None else list(given)


# The reductions whose ``keepdims`` changes the output's shape alone.
_REDUCE_OPS = (
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)


class _VectorWithLeadingOnes(pattern.RewriteRuleClassBase):
    """``x op c``, ``c`` a float constant of shape ``[1, ..., 1, D]`` (``D > 1``) and ``x`` of rank no lower, into
    ``x op c.reshape(D)``, for ``op`` in ``Add``, ``Sub``, ``Mul`` and ``Div`` (either operand order): the result is
    the same tensor, broadcast alike. Flax stores its norms' scales as ``[1, 1, D]``."""

    def __init__(self, op_type: str, constant_second: bool) -> None:
        super().__init__(name=f"VectorWithLeadingOnes({op_type}, constant_second={constant_second})")
        self._op_type = op_type
        self._constant_second = constant_second

    def pattern(self, op, x, constant):
        operands = (x, constant) if self._constant_second else (constant, x)
        return getattr(op, self._op_type)(*operands)

    def check(self, context, x, constant, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        array = _constant(constant)
        if array is None or array.dtype.kind != "f" or array.ndim < 2 or array.shape[-1] < 2:
            return result.fail("not a float constant of rank 2 or more")
        if any(dim != 1 for dim in array.shape[:-1]):
            return result.fail("the constant is not a vector over the last axis")
        if _constant(x) is not None:
            return result.fail("both operands are constant")
        if x.shape is None or x.shape.rank() < array.ndim:
            return result.fail("the other operand's rank is unknown or lower: the constant may broadcast it")
        return result

    def rewrite(self, op, x, constant, **_):
        vector = op.Constant(value=ir.tensor(_constant(constant).reshape(-1)))
        operands = (x, vector) if self._constant_second else (vector, x)
        return getattr(op, self._op_type)(*operands)


def _inverse_root(value: ir.Value) -> bool:
    """Whether ``value`` is ``1 / sqrt(s)`` (``Reciprocal(Sqrt(s))``, ``Div(1, Sqrt(s))`` or ``Pow(s, -0.5)``) of
    an ``s = Add(v, eps)`` with a constant one-element ``eps``: a normalization's inverse root."""
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx") or None in node.inputs:
        return False
    if node.op_type == "Pow" and len(node.inputs) == 2:
        exponent = _constant(node.inputs[1])
        return (
            exponent is not None
            and exponent.size == 1
            and float(exponent.reshape(())) == -0.5
            and (_epsilon_added(node.inputs[0]))
        )
    if node.op_type == "Reciprocal":
        return _root(node.inputs[0])
    if node.op_type == "Div" and len(node.inputs) == 2:
        one = _constant(node.inputs[0])
        return one is not None and one.size == 1 and float(one.reshape(())) == 1.0 and _root(node.inputs[1])
    return False


def _root(value: ir.Value) -> bool:
    """Whether ``value`` is ``Sqrt(s)`` of an ``s = Add(v, eps)`` with a constant one-element ``eps``."""
    node = value.producer()
    return (
        node is not None
        and node.op_type == "Sqrt"
        and node.domain in ("", "ai.onnx")
        and node.inputs[0] is not None
        and _epsilon_added(node.inputs[0])
    )


def _epsilon_added(value: ir.Value) -> bool:
    node = value.producer()
    if node is None or node.op_type != "Add" or node.domain not in ("", "ai.onnx") or None in node.inputs:
        return False
    constants = [_constant(operand) for operand in node.inputs]
    return sum(c is not None and c.size == 1 for c in constants) == 1


class _TileAsExpand(pattern.RewriteRuleClassBase):
    """``Tile(x, repeats)`` into ``Expand(x, repeats)`` where every axis with a repeat other than 1 has size 1 in
    ``x`` (a static 1, or an axis an ``Unsqueeze`` inserted): each such axis broadcasts to its repeat count, and
    each other keeps ``x``'s size, which is what the ``Tile`` computes."""

    def pattern(self, op, x, repeats):
        return op.Tile(x, repeats)

    def check(self, context, x, repeats, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if onnx_opset(context.model.opset_imports, 0) < 8:
            return result.fail("Expand is an op from opset 8")
        counts = _constant(repeats)
        if counts is None or counts.ndim != 1 or counts.dtype != np.int64 or np.any(counts < 1):
            return result.fail("the repeats are not constant positive counts")
        ones = _unit_axes(x, len(counts))
        if not all(axis in ones for axis in np.flatnonzero(counts != 1).tolist()):
            return result.fail("an axis repeated is not known to have size 1: Tile copies it, Expand would not")
        return result

    def rewrite(self, op, x, repeats, **_):
        return op.Expand(x, repeats)


def _unit_axes(value: ir.Value, rank: int) -> set[int]:
    """The axes (counted from 0, of ``rank``) ``value`` is known to have size 1 along: static 1s of its shape, and
    the axes an ``Unsqueeze`` producing it inserted."""
    ones = set()
    if value.shape is not None and value.shape.rank() == rank:
        ones = {axis for axis, dim in enumerate(value.shape) if isinstance(dim, int) and dim == 1}
    node = value.producer()
    if node is not None and node.op_type == "Unsqueeze" and node.domain in ("", "ai.onnx"):
        inserted = _unsqueezed_axes(node)
        if inserted is not None and all(-rank <= axis < rank for axis in inserted):
            ones |= {axis % rank for axis in inserted}
    return ones


class _UnbindAsSlice(pattern.RewriteRuleClassBase):
    """Part ``k`` of ``unbind`` over ``x`` reshaped to ``[..., n, m]`` or ``[..., m, n]`` (``n * m = D``, ``x``'s
    last dim) into a ``Slice`` of ``x``'s last axis: ``Squeeze(Split(Reshape(x, [..., n, m]), axis=-2)[k])`` is
    ``x[..., k*m:(k+1)*m]`` (Qwen's ``rotate_half``), ``Squeeze(Split(Reshape(x, [..., m, n]), axis=-1)[k])`` is
    ``x[..., k::n]`` (GPT-J's pairs). The leading dims must be copied (``0`` or the same static size)."""

    def pattern(self, op, part):
        return op.Squeeze(part, _allow_other_inputs=True, _outputs=["squeezed"])

    def check(self, context, part, squeezed, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if onnx_opset(context.model.opset_imports, 0) < 10:
            return result.fail("Slice takes its bounds as inputs from opset 10")
        if _unbound_part(part, squeezed.producer()) is None:
            return result.fail("not one part of an unbind of x's last axis reshaped in two")
        return result

    def rewrite(self, op, part, squeezed, **_):
        x, k, n, m, strided = _unbound_part(part, squeezed.producer())

        def ints(*values):
            return op.Constant(value=ir.tensor(np.array(values, np.int64)))

        if strided:
            return op.Slice(x, ints(k), ints(np.iinfo(np.int64).max), ints(-1), ints(n))
        return op.Slice(x, ints(k * m), ints((k + 1) * m), ints(-1))


def _unbound_part(part: ir.Value, squeeze: ir.Node) -> tuple[ir.Value, int, int, int, bool] | None:
    """``(x, k, n, m, strided)`` where ``part`` is output ``k`` of a ``Split`` into ``n`` parts of one along axis -2
    (``strided`` False) or -1 (True) of ``Reshape(x, [..., n, m])`` (or ``[..., m, n]``) that ``squeeze`` squeezes
    along that axis; else None."""
    split = part.producer()
    if split is None or split.op_type != "Split" or split.domain not in ("", "ai.onnx") or split.inputs[0] is None:
        return None
    reshape = split.inputs[0].producer()
    if reshape is None or reshape.op_type != "Reshape" or reshape.domain not in ("", "ai.onnx"):
        return None
    x = reshape.inputs[0]
    target = _constant(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    if x is None or target is None or x.shape is None or not x.shape.rank() or not isinstance(x.shape[-1], int):
        return None
    rank, width = x.shape.rank(), x.shape[-1]
    target = [int(t) for t in target.reshape(-1)]
    if len(target) != rank + 1 or reshape.attributes.get_int("allowzero", 0) and 0 in target:
        return None
    if any(t != 0 and t != dim for t, dim in zip(target[:-2], list(x.shape)[:-1], strict=True)):
        return None  # a leading dim not copied as it is (a -1, or a static size other than x's)
    low, high = target[-2:]
    if low == -1 and high > 0 and width % high == 0:
        low = width // high
    elif high == -1 and low > 0 and width % low == 0:
        high = width // low
    if low <= 0 or high <= 0 or low * high != width:
        return None
    axis = split.attributes.get_int("axis", 0)
    axis = axis + rank + 1 if axis < 0 else axis
    if axis not in (rank - 1, rank):
        return None
    n = low if axis == rank - 1 else high
    if len(split.outputs) != n or not split_in_ones(split, n):
        return None
    squeezed = squeezed_axes(squeeze)
    if squeezed is None or [a + rank + 1 if a < 0 else a for a in squeezed] != [axis]:
        return None
    k = list(split.outputs).index(part)
    return x, k, n, width // n, axis == rank


def split_in_ones(split: ir.Node, n: int) -> bool:
    """Whether ``split`` cuts its axis into ``n`` parts of one (sizes given as an input or attribute, or equal)."""
    if len(split.inputs) > 1 and split.inputs[1] is not None:
        sizes = _constant(split.inputs[1])
        return sizes is not None and sizes.reshape(-1).tolist() == [1] * n
    sizes = split.attributes.get_ints("split", None)
    if sizes is not None:
        return list(sizes) == [1] * n
    parts = split.attributes.get_int("num_outputs", n)
    return parts == n  # equal parts of an axis of n


def squeezed_axes(node: ir.Node) -> list[int] | None:
    """The axes a ``Squeeze`` removes (an input from opset 13, an attribute before), or None where not given."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = _constant(node.inputs[1])
        return None if axes is None else [int(axis) for axis in axes.reshape(-1)]
    given = node.attributes.get_ints("axes", None)
    return None if given is None else list(given)


class _ScaleAppliedLast(pattern.RewriteRuleClassBase):
    """A normalization's scale ``c`` multiplied into its inverse root or its input, into ``(x * inv) * c``:

    * ``x * (inv * c)`` (any operand order) into ``(x * inv) * c``;
    * ``(x * c) * inv`` (any operand order) into ``(x * inv) * c``;
    * ``(x * c) / root`` into ``(x / root) * c``;

    ``c`` a float constant, ``x`` not, ``inv`` the inverse of the root of ``Add(v, eps)`` (``root`` that root).
    Refused in half precision, where ``x * inv`` may overflow and ``x * (inv * c)`` not.
    """

    def __init__(self, form: str, inner_first: bool, constant_second: bool) -> None:
        super().__init__(name=f"ScaleAppliedLast({form}, inner_first={inner_first}, constant_second={constant_second})")
        self._form = form
        self._inner_first = inner_first
        self._constant_second = constant_second

    def pattern(self, op, x, factor, scale):
        inner = op.Mul(*((factor, scale) if self._constant_second else (scale, factor)), _outputs=["scaled"])
        if self._form == "divided":
            return op.Div(inner, x)
        return op.Mul(*((inner, x) if self._inner_first else (x, inner)))

    def check(self, context, x, factor, scale, scaled, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        array = _constant(scale)
        if array is None or array.dtype.kind != "f" or _constant(x) is not None or _constant(factor) is not None:
            return result.fail("not a product of two tensors and a float constant")
        if x is scaled:
            return result.fail("the product squares the scaled factor")  # Mul(k, k): no other operand to reorder
        # In half precision x * inv may overflow where x * (inv * c) does not (the variance need not be x's).
        if array.dtype not in (np.float32, np.float64):
            return result.fail("not a float32 or float64 product")
        if self._form == "divided":
            if not _root(x):
                return result.fail("not divided by a normalization's root")
        elif self._form == "in_inverse" and not _inverse_root(factor):
            return result.fail("the constant does not scale a normalization's inverse root")
        elif self._form == "on_input" and not _inverse_root(x):
            return result.fail("the scaled tensor is not multiplied by a normalization's inverse root")
        return result

    def rewrite(self, op, x, factor, scale, **_):
        if self._form == "divided":  # (factor * c) / x: factor is the input, x the root
            return op.Mul(op.Div(factor, x), scale)
        # in_inverse: x * (inv * c), factor the inverse; on_input: inv * (input * c), x the inverse.
        normalized = op.Mul(x, factor) if not self._inner_first else op.Mul(factor, x)
        return op.Mul(normalized, scale)


NEGATION_RULES = (
    *_NegationByMinusOne.rule().commute(),
    *(_OneElementNoOp.rule(op_type, True) for op_type in ("Add", "Sub", "Mul", "Div")),
    *(_OneElementNoOp.rule(op_type, False) for op_type in ("Add", "Mul")),
)
EINSUM_RULES = (_EinsumAsMatMul.rule(),)
MEAN_RULES_FROM_18 = (_MeanBySum.rule(axes_as_input=True),)
MEAN_RULES_BEFORE_18 = (_MeanBySum.rule(axes_as_input=False),)
KEPT_AXES_RULES = tuple(_KeptReducedAxes.rule(reduce_op) for reduce_op in _REDUCE_OPS)
VECTOR_RULES = tuple(
    _VectorWithLeadingOnes.rule(op_type, second) for op_type in ("Add", "Sub", "Mul", "Div") for second in (True, False)
)
TILE_RULES = (_TileAsExpand.rule(),)
UNBIND_RULES = (_UnbindAsSlice.rule(),)
NORM_SCALE_RULES = (
    *(
        _ScaleAppliedLast.rule(form, inner_first, second)
        for form in ("in_inverse", "on_input")
        for inner_first in (True, False)
        for second in (True, False)
    ),
    *(_ScaleAppliedLast.rule("divided", True, second) for second in (True, False)),
)

"""Rewrite rules that write one computation in the form the fusions match, where exporters write it otherwise.

``simplify-ops`` runs them before the fusions, so a fusion needs one pattern per computation rather than one per
exporter's spelling:

* ``x * -1`` into ``Neg(x)``, and ``x + [0]`` (``x * [1]``, ...) with a one-element constant of rank 1 into ``x``
  (Paddle2ONNX writes ``-x`` as ``x * [-1] + [0]``): exact. Rotary's ``rotate_half`` is matched with a ``Neg``.
* ``ReduceSum(x) / n``, where ``n`` is the number of elements each sum adds, into ``ReduceMean(x)`` (JAX's
  ``jnp.mean``, hand-written means): ONNX Runtime's mean is the same sum divided by ``n``, up to the order it
  adds in. RMS and layer norms are matched with a ``ReduceMean``.
* A two-operand ``Einsum`` that is a batched matrix product into ``MatMul`` (Keras, tf2onnx): attention is matched
  with ``MatMul`` products.

Each refuses a match whose constant would broadcast the result to another shape, or whose operands' shapes or
constants it cannot read.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern


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
    """A two-operand ``Einsum`` that is a batched matrix product, ``...ik,...kj->...ij`` or ``...ik,...jk->...ij``
    (batch letters alike, in the same order, in all three terms), into ``MatMul(a, b)`` or
    ``MatMul(a, Transpose(b))``: Keras and tf2onnx write attention's products so."""

    def pattern(self, op, a, b):
        return op.Einsum(a, b, _outputs=["product"])

    def check(self, context, a, b, product, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        form = _batched_product(product.producer())
        if form is None:
            return result.fail("not an Einsum of a batched matrix product")
        if a.dtype not in _MATMUL_TYPES or b.dtype != a.dtype:
            return result.fail("not a type MatMul takes")
        transposed, rank = form
        if a.shape is None or b.shape is None or a.shape.rank() != rank or b.shape.rank() != rank:
            return result.fail("an operand's rank is unknown")
        # Einsum broadcasts a contracted dim of 1 against the other's; MatMul refuses it. Sizes known to differ
        # are refused; two sizes neither of which is known are taken to be equal, as they are in every attention
        # (the probabilities' columns are the values' rows): there, a 1 against another size would make ONNX
        # Runtime refuse the MatMul at run time, where the Einsum broadcast.
        if _differ(a.shape[-1], b.shape[-1 if transposed else -2]):
            return result.fail("the contracted dims may differ (Einsum broadcasts a 1, MatMul does not)")
        return result

    def rewrite(self, op, a, b, product, **_):
        transposed, rank = _batched_product(product.producer())
        if transposed:
            b = op.Transpose(b, perm=[*range(rank - 2), rank - 1, rank - 2])
        return op.MatMul(a, b)


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


def _batched_product(node: ir.Node) -> tuple[bool, int] | None:
    """Whether the Einsum ``node`` is a batched matrix product with its second operand transposed (True) or not
    (False), and its rank; None where it is no batched matrix product."""
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
    batch, (i, k) = first[:-2], first[-2:]
    j = out[-1]
    if out != batch + i + j or len({i, j, k}) != 3 or {i, j, k} & set(batch):
        return None
    if second == batch + k + j:
        return False, len(out)
    if second == batch + j + k:
        return True, len(out)
    return None


NEGATION_RULES = (
    *_NegationByMinusOne.rule().commute(),
    *(_OneElementNoOp.rule(op_type, True) for op_type in ("Add", "Sub", "Mul", "Div")),
    *(_OneElementNoOp.rule(op_type, False) for op_type in ("Add", "Mul")),
)
EINSUM_RULES = (_EinsumAsMatMul.rule(),)
MEAN_RULES_FROM_18 = (_MeanBySum.rule(axes_as_input=True),)
MEAN_RULES_BEFORE_18 = (_MeanBySum.rule(axes_as_input=False),)

"""Small checks shared by fusion rules: constant scalars, reduction axes, 1-D parameters, and the
unit scale of a normalization that has none."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_op
from passes._utils import constant_array


def scalar(value: ir.Value | None) -> float | None:
    """The value as a Python float if it is a constant with exactly one element, else None."""
    array = constant_array(value)
    if array is None or array.size != 1:
        return None
    return float(array.reshape(()))


# Elementwise ops a constant subgraph may be evaluated through, with numpy's float semantics (IEEE, as ONNX
# Runtime's): the root of a constant (``Sqrt(2)``, unfolded where fold-constants did not run), its inverse.
_FOLDABLE = {
    "Sqrt": np.sqrt,
    "Reciprocal": np.reciprocal,
    "Neg": np.negative,
    "Identity": lambda a: a,
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Pow": np.power,
}
# A constant subgraph deeper than this, or a tensor larger, is left to fold-constants.
_FOLD_DEPTH = 4
_FOLD_SIZE = 1 << 16


def folded_constant(value: ir.Value | None, depth: int = _FOLD_DEPTH) -> np.ndarray | None:
    """``constant_array(value)``, or the value of the float elementwise subgraph computing it from constants.

    Every operand must itself be a constant in ``constant_array``'s sense (an initializer that is
    also a graph input is not: a caller may override it), and a float tensor, except ``Pow``'s
    exponent; the result has the first operand's dtype, as ONNX's ops give.
    """
    array = constant_array(value)
    if array is not None or value is None or depth == 0:
        return array
    node = value.producer()
    if not is_onnx_op(node, *_FOLDABLE) or len(node.outputs) != 1 or None in node.inputs:
        return None
    # A graph input among the operands refuses at once; then each operand in turn, stopping at the first that
    # is no constant (a formula's arithmetic chain would otherwise be walked down at each of its values).
    if any(operand.producer() is None and constant_array(operand) is None for operand in node.inputs):
        return None
    operands = []
    for operand in node.inputs:
        array = folded_constant(operand, depth - 1)
        if array is None or array.size > _FOLD_SIZE:
            return None
        operands.append(array)
    floats = operands[:1] if node.op_type == "Pow" else operands
    if not all(a.dtype.kind == "f" for a in floats) or len({a.dtype for a in floats}) != 1:
        return None
    with np.errstate(all="ignore"):
        return np.asarray(_FOLDABLE[node.op_type](*operands)).astype(operands[0].dtype)


def is_float(value: ir.Value) -> bool:
    """False if the value is known to be anything but float32, the type every fused op has CPU and CUDA kernels for.

    (float16 conversion runs after fusion; ORT's CPU EP has no float64 or bfloat16
    kernels for most fused ops.) An unknown dtype is accepted: a wrong guess makes
    ONNX Runtime refuse the model, which verification turns into a rollback.
    """
    return value.dtype in (ir.DataType.FLOAT, None)


def last_axis_only(node: ir.Node, data: ir.Value) -> bool:
    """True if a Reduce* ``node`` reduces exactly the last axis of ``data`` and keeps dims."""
    return last_axis_refusal(node, data, "it") is None


# The refusal of a reduction over an axis counted from the front of an input of unknown rank.
NO_RANK = "its axis is counted from the front, and the input's rank is unknown"


def last_axis_refusal(node: ir.Node, data: ir.Value, what: str) -> str | None:
    """Why a Reduce* ``node`` (called ``what``) does not reduce exactly the last axis of ``data`` keeping dims, or
    None. A ``GlobalAveragePool`` (every axis after the second) does so only over a rank-3 input. Over a positive
    axis of an input whose rank is unknown (the legacy exporter writes ``mean(2)`` as given and records no shapes),
    or a pool over one, the reason ends with ``NO_RANK``: ``fuse_with_inferred_shapes`` retries then."""
    wrong = f"{what} is not over the last axis alone"
    if node.op_type == "GlobalAveragePool":  # tf2onnx's mean over the last axis of a [batch, seq, hidden] tensor
        pooled = node.inputs[0].shape if node.inputs[0] is not None else None
        if pooled is None:
            return f"{wrong}: {NO_RANK}"
        return None if pooled.rank() == 3 else wrong
    if node.attributes.get_int("keepdims", 1) != 1:
        return wrong
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = constant_array(node.inputs[1])
        if axes is None:
            return wrong
        axes = axes.reshape(-1).tolist()
    else:
        attr = node.attributes.get("axes")
        if attr is None:
            return wrong
        axes = list(attr.as_ints())
    if len(axes) != 1:
        return wrong
    if axes[0] == -1:
        return None
    rank = data.shape.rank() if data.shape is not None else None
    if rank is None:
        return f"{wrong}: {NO_RANK}" if axes[0] >= 0 else wrong
    return None if axes[0] == rank - 1 else wrong


def vector_for_last_dim(value: ir.Value, data: ir.Value) -> bool:
    """True if ``value`` is a constant 1-D tensor as long as ``data``'s last dim. Where that dim is unknown, any
    length but 1: a one-element vector broadcasts in the elementwise spelling, while the fused ops (BiasGelu,
    the norms' scales and biases) need one value per channel, and ONNX Runtime refuses the result."""
    array = constant_array(value)
    if array is None or array.ndim != 1:
        return False
    if data.shape is not None and data.shape.rank() and isinstance(data.shape[-1], int):
        return array.shape[0] == data.shape[-1]
    return array.shape[0] != 1


def static_last_dim(value: ir.Value) -> int | None:
    """The size of ``value``'s last dim if the graph records it as a number, else None."""
    if value.shape is None or not value.shape.rank() or not isinstance(value.shape[-1], int):
        return None
    return value.shape[-1]


# The refusal of a norm without a scale whose last dim is unknown: the scale of ones needs its length.
NO_STATIC_SIZE = "no scale, and the last dim has no static size to build a scale of ones for"


# The refusal of an op the fused one takes only at rank 3 (SkipLayerNormalization's operands, packed Attention's
# query, key and value) where the exporter recorded no rank: ``fuse_with_inferred_shapes`` retries then.
NOT_KNOWN_3D = "not known to be 3-D"


def fuse_with_inferred_shapes(
    fusion, model: ir.Model, fuse: Callable[[ir.Model], int], retry_on: tuple[str, ...] = (NO_STATIC_SIZE, NO_RANK)
) -> int:
    """``fuse(model)``, run again with the missing shapes inferred if it refused for a reason ending with one of
    ``retry_on`` (a norm for ``NO_STATIC_SIZE`` or ``NO_RANK``; ``NOT_KNOWN_3D``).

    A norm's input whose shape the exporter did not record (the legacy exporter records none
    of the intermediate values') has its last dim and rank inferred by ONNX shape inference for the
    second run only (``_inferred_shapes``: on a clone, taken back afterwards), so a model
    needing no inference pays none. The second run traces the whole graph again: its
    refusals replace the first's.
    """
    # Imported here: a norm pass imported alone loads it only when a norm needs a shape inferred.
    from passes.fusion._inferred_shapes import inferred_shapes, lacks_shapes

    _, tally, declined = fusion._state()
    before = len(declined)
    refused_before = {kind: Counter(reasons) for kind, reasons in tally.refused.items()}
    count = fuse(model)
    refused = [
        reason
        for kind, reasons in tally.refused.items()
        for reason, times in reasons.items()
        if times > refused_before.get(kind, Counter())[reason]
    ]
    if not any(reason.endswith(retry_on) for reason in (*declined[before:], *refused)) or not lacks_shapes(model):
        return count
    del declined[before:]
    tally.refused = refused_before  # the candidates left are counted again by the second run
    with inferred_shapes(model):
        return count + fuse(model)


def unit_scale(op, data: ir.Value) -> ir.Value:
    """A constant float32 vector of ones as long as ``data``'s last dim (check ``static_last_dim`` first): the
    scale of a fused normalization whose decomposed form had none (ONNX Runtime's kernels require one)."""
    return op.Constant(value=ir.tensor(np.ones(static_last_dim(data), dtype=np.float32)))


def centered_by_own_mean(value: ir.Value) -> bool:
    """True if ``value`` is ``a - ReduceMean(a)`` over ``a``'s last axis: a LayerNorm's centered input."""
    node = value.producer()
    if not is_onnx_op(node, "Sub") or node.inputs[1] is None:
        return False
    mean = node.inputs[1].producer()
    return is_onnx_op(mean, "ReduceMean") and mean.inputs[0] is node.inputs[0] and last_axis_only(mean, node.inputs[0])


# How a normalization divides by the root of ``s`` (its variance plus epsilon): ``x / Sqrt(s)``,
# ``x * Reciprocal(Sqrt(s))``, ``x * (1 / Sqrt(s))``, or TF's ``x * Pow(s, -0.5)``. The products are spelled
# in both operand orders (neither operand is constant).
NORMALIZATION_INVERSES = (
    "div",
    "reciprocal",
    "one_over",
    "reciprocal_swapped",
    "one_over_swapped",
    "pow_half",
    "pow_half_swapped",
    "div_by_pow_half",
)


def root_power(inverse: str) -> float:
    """The exponent of the ``Pow`` the form ``inverse`` (one of NORMALIZATION_INVERSES) takes a root with:
    ``x / Pow(total, 0.5)`` or ``x * Pow(total, -0.5)``."""
    return 0.5 if inverse == "div_by_pow_half" else -0.5


def divide_by_root(op, x, total, inverse: str, root_exponent):
    """Pattern for ``x / sqrt(total)`` in the form named by ``inverse`` (one of NORMALIZATION_INVERSES);
    ``root_exponent`` is the pattern variable of ``Pow(total, -0.5)``'s (or ``Pow(total, 0.5)``'s) exponent
    (``exponent_fails`` checks it against ``root_power(inverse)``), unused by the other forms."""
    if inverse == "div_by_pow_half":
        return op.Div(x, op.Pow(total, root_exponent))
    if inverse.startswith("pow_half"):
        inverse_root = op.Pow(total, root_exponent)
    else:
        root = op.Sqrt(total)
        if inverse == "div":
            return op.Div(x, root)
        inverse_root = op.Reciprocal(root) if inverse.startswith("reciprocal") else op.Div(1.0, root)
    return op.Mul(inverse_root, x) if inverse.endswith("_swapped") else op.Mul(x, inverse_root)


def square_of(op, x, by_pow: bool, exponent):
    """Pattern for ``x^2`` as ``Pow(x, exponent)`` (``exponent`` a pattern variable: a scalar, a ``[1]``
    tensor or an integer 2, as exporters store it; ``exponent_fails`` checks it) or ``Mul(x, x)``."""
    return op.Pow(x, exponent) if by_pow else op.Mul(x, x)


def widening_constant(constants: tuple[ir.Value | None, ...], data: ir.Value) -> str | None:
    """Why one of a norm's one-element ``constants`` (its epsilon, its exponents) is refused beside ``data``, or None:
    one with more dims than ``data`` has (or than one, where its rank is unknown) broadcasts the decomposed norm's
    output up to its rank, and the fused op's output has ``data``'s (a ``[1, 1, 1, 1]`` epsilon beside ``[B, S, D]``
    made ``[1, B, S, D]``, fused into ``[B, S, D]``)."""
    rank = data.shape.rank() if data.shape is not None else None
    for value in constants:
        array = constant_array(value) if value is not None else None
        if array is not None and array.ndim > (1 if rank is None else rank):
            return f"a constant of the norm has {array.ndim} dims, more than its input: it would raise its rank"
    return None


def exponent_fails(exponent: ir.Value | None, root_exponent: ir.Value | None, power: float = -0.5) -> str | None:
    """Why the matched exponents are not a square and a square root's ``power`` (-0.5, its inverse, or 0.5:
    ``root_power``), or None (either may be absent)."""
    if exponent is not None and scalar(exponent) != 2.0:
        return "the square's exponent is not a constant 2"
    if root_exponent is not None and scalar(root_exponent) != power:
        return f"the root's exponent is not a constant {power}"
    return None

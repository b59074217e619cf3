"""Softmax fusion: a softmax written out as ``Exp`` / ``ReduceSum`` into one ``Softmax``.

Some exports (hand-written attention, ports from frameworks without a fused softmax)
spell the softmax over an axis ``a`` as

    e = Exp(x - ReduceMax(x, axes=[a], keepdims=1))     (the stable form)
    e = Exp(x)                                           (or without the max)
    y = e / ReduceSum(e, axes=[a], keepdims=1)

This pass rewrites either into ``Softmax(x, axis=a)``, so that the attention fusion,
which anchors on ``Softmax``, sees the attention (run it before ``fuse-attention``).

tf2onnx writes a Keras softmax over an NHWC model's channels inside its NCHW layout with the
layout change pushed between the ``Exp`` and the ``Div``:

    y = Transpose(e, perm) / Reshape(ReduceSum(e, axes=[a], keepdims=1), shape)

(the sum's layout change spelled as a ``Reshape``, which moves only its axis of size 1; or
as the same ``Transpose``), ``perm`` moving ``a`` last (apeer's nucleus segmenter in
napari-czann-segment). That one becomes ``Softmax(Transpose(x, perm), axis=last)``: a
``Softmax`` over the last axis, at any opset, 1.2x faster than the six ops on its
``[1, 2, 1024, 1024]`` logits at one thread.

Numerics: the stable form is the same computation as ``Softmax`` up to rounding. The
form without the max is not where it fails: ``Exp`` overflows to inf for float32 inputs
above about 88 (the original then gives NaN or 0 where ``Softmax`` gives the right
weights), and a row whose every ``Exp`` underflows to 0 (every input below about -104)
is 0/0 = NaN in the original and finite under ``Softmax``. So the rewrite only differs
from the original where the original is not finite; output verification, which compares
the two, sees a difference only on inputs that reach those ranges.

Refuses (a near miss, with the reason) when: the reductions are not over one constant axis,
or over different axes (``-1`` beside ``3`` is one axis of a 4-D input: where the graph records
no rank, it is inferred first), or drop the reduced axis (``keepdims=0``); the input is not a
float tensor; or the axis is not known to be the last: ONNX Runtime's CPU ``Softmax``
moves another axis last and back, and ran a softmax over the channels of ``[1, 2, 1024,
1024]`` logits 3.1x slower than the ops written out (``[1, 6, 128, 128]``: 7.5x; review s79
hunt17), and below opset 13 ``Softmax`` normalizes over all axes from ``axis`` on. The
``Exp`` output must feed
exactly the ``ReduceSum`` and the ``Div`` (the rewriter checks that no other node reads a
value it removes). The transposed form is refused, too, where its ``Transpose`` does not move
``a`` last, or its sum's ``Reshape`` is no such layout change (a target other than the
transposed sum's static dims with at most one ``-1``; a ``0`` entry; other axes reordered).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from passes._utils import constant_array
from passes.fusion._base import RuleFusionPass
from passes.fusion._checks import fuse_with_inferred_shapes
from passes.fusion._layout import perm, rank

# A transposed form's refusal that ONNX shape inference may lift (``fuse_with_inferred_shapes``).
_NO_SHAPE = "the input's rank or the sum's shape is not known"
# How tf2onnx spells the sum's layout change in the transposed form.
_LAYOUTS = ("Reshape", "Transpose")
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16, None)


def _single_axis(node: ir.Node, data: ir.Value) -> int | str:
    """The one axis a ``Reduce*`` node reduces (non-negative where ``data``'s rank is known), or why not."""
    if node.attributes.get_int("keepdims", 1) != 1:
        return f"the {node.op_type} drops the reduced axis (keepdims=0)"
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = constant_array(node.inputs[1])
        axes = axes.reshape(-1).tolist() if axes is not None else None
    else:
        attr = node.attributes.get("axes")  # a function's reference to its caller's axes is no constant
        axes = list(attr.as_ints()) if attr is not None and not attr.is_ref() else None
    if axes is None or len(axes) != 1:
        return f"the {node.op_type} is not over one constant axis"
    data_rank = rank(data)
    return axes[0] % data_rank if data_rank is not None else axes[0]


def _reduced_axis(x: ir.Value, total: ir.Value, peak: ir.Value | None) -> int | str:
    """The one axis the sum (and the max) reduce, non-negative where ``x``'s rank is known, or why not."""
    axes = [_single_axis(total.producer(), x)]
    if peak is not None:
        axes.append(_single_axis(peak.producer(), x))
    reason = next((a for a in axes if isinstance(a, str)), None)
    if reason is not None:
        return reason
    if len(set(axes)) != 1:
        if rank(x) is None and min(axes) < 0 <= max(axes):
            return _NO_SHAPE  # -1 beside 3 is one axis of a 4-D input: the retry infers the rank
        return "the max and the sum reduce different axes"
    return axes[0]


def _stable_form_waits(x: ir.Value, total: ir.Value) -> bool:
    """True if ``x`` is ``a - ReduceMax(a)`` whose max and the sum spell one axis apart (``3``, ``-1``) on an ``a`` of
    unknown rank: the stable form's rule fuses it whole once the retry infers the rank (the plain one keeps the max)."""
    node = x.producer()
    if node is None or node.op_type != "Sub" or node.inputs[1] is None or node.inputs[1].producer() is None:
        return False
    peak = node.inputs[1]
    if peak.producer().op_type != "ReduceMax" or peak.producer().inputs[0] is not node.inputs[0]:
        return False
    return _reduced_axis(node.inputs[0], total, peak) == _NO_SHAPE


def _exps_and_sum(op, x, shifted: bool):
    """The pattern's ``Exp(x [- ReduceMax(x)])`` (its max bound as ``peak``) and their ``ReduceSum`` (as ``total``)."""
    if shifted:
        peak = op.ReduceMax(x, _allow_other_inputs=True, _outputs=["peak"])
        exps = op.Exp(op.Sub(x, peak))
    else:
        exps = op.Exp(x)
    return exps, op.ReduceSum(exps, _allow_other_inputs=True, _outputs=["total"])


class _ExpSoftmax(pattern.RewriteRuleClassBase):
    def __init__(self, shifted: bool) -> None:
        super().__init__(name="ExpSoftmax(max subtracted)" if shifted else "ExpSoftmax")
        self._shifted = shifted

    def pattern(self, op, x):
        exps, total = _exps_and_sum(op, x, self._shifted)
        return op.Div(exps, total)

    def check(self, context, x, total, peak=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.dtype not in _FLOATS:
            return result.fail("the input is not a float tensor")
        axis = _reduced_axis(x, total, peak)
        if isinstance(axis, str):
            return result.fail(axis)
        if peak is None and _stable_form_waits(x, total):
            return result.fail(_NO_SHAPE)
        data_rank = rank(x)
        if axis != -1 and data_rank is None:
            return result.fail(_NO_SHAPE)
        if axis != -1 and axis != data_rank - 1:
            # ONNX Runtime's CPU Softmax moves another axis last and back: over the channels of [1, 2, 1024, 1024]
            # logits at one thread 382 ms against 124 ms for the ops written out (1.31x the segmenter's time; review
            # s79 hunt17). Below opset 13 Softmax would normalize from the axis on, too.
            return result.fail("the softmax is not over the last axis (ONNX Runtime's Softmax runs that slower)")
        return result

    def rewrite(self, op, x, total, **_):
        return op.Softmax(x, axis=_single_axis(total.producer(), x))


def _moved_last(transpose: ir.Node, axis: int, data_rank: int | None) -> tuple[int, ...] | str:
    """The permutation of a ``Transpose`` that moves ``axis`` last (of ``data_rank`` axes), or why not."""
    order = perm(transpose)
    if data_rank is None:
        return _NO_SHAPE
    if order is None or sorted(order) != list(range(data_rank)):
        return "the Transpose's permutation is not given"
    if order[-1] != axis:
        return "the Transpose does not move the reduced axis last"
    return order


def _laid_out_as(layout: ir.Node, total: ir.Value, order: tuple[int, ...], axis: int) -> str | None:
    """Why ``layout`` (reading the sum ``total``) is not ``Transpose(total, order)``, or None where it is.

    A ``Reshape`` is that ``Transpose`` when ``order`` keeps the other axes in their order (it moves only the
    reduced axis, of size 1, so no element moves) and its target is the transposed sum's shape: each entry
    that dim's static size, but for at most one ``-1`` (which then infers the one dim left).
    """
    if layout.op_type == "Transpose":
        return None if perm(layout) == order else "the sum is transposed otherwise than the exponentials"
    if [a for a in order if a != axis] != sorted(a for a in order if a != axis):
        return "the Transpose reorders the axes other than the reduced one"
    target = constant_array(layout.inputs[1])
    shape = total.shape
    if shape is None or shape.rank() != len(order):
        return _NO_SHAPE
    if target is None or target.shape != (len(order),):
        return "the sum's Reshape target is not a constant of the input's rank"
    if 0 in target.tolist() or target.tolist().count(-1) > 1:
        return "the sum's Reshape target copies (0) or infers (-1) more than one dim"
    moved = [1 if a == axis else shape[a] for a in order]
    if any(t != -1 and t != d for t, d in zip(target.tolist(), moved, strict=True)):
        return "the sum's Reshape is not the Transpose of its axis of size 1"
    return None


class _TransposedExpSoftmax(pattern.RewriteRuleClassBase):
    """tf2onnx's ``Transpose(e, perm) / Reshape-or-Transpose(ReduceSum(e))``, the layout change before the ``Div``."""

    def __init__(self, shifted: bool, layout: str) -> None:
        super().__init__(name=f"TransposedExpSoftmax({layout}{', max subtracted' if shifted else ''})")
        self._shifted = shifted
        self._layout = layout

    def pattern(self, op, x):
        exps, total = _exps_and_sum(op, x, self._shifted)
        if self._layout == "Reshape":
            laid = op.Reshape(total, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["laid"])
        else:
            laid = op.Transpose(total, _allow_other_attributes=True, _outputs=["laid"])
        return op.Div(op.Transpose(exps, _allow_other_attributes=True, _outputs=["moved"]), laid)

    def check(self, context, x, total, laid, moved, peak=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.dtype not in _FLOATS:
            return result.fail("the input is not a float tensor")
        axis = _reduced_axis(x, total, peak)
        if isinstance(axis, str):
            return result.fail(axis)
        order = _moved_last(moved.producer(), axis, rank(x))
        if isinstance(order, str):
            return result.fail(order)
        reason = _laid_out_as(laid.producer(), total, order, axis)
        return result.fail(reason) if reason is not None else result

    def rewrite(self, op, x, moved, **_):
        order = perm(moved.producer())
        return op.Softmax(op.Transpose(x, perm=list(order)), axis=len(order) - 1)


class SoftmaxFusion(RuleFusionPass):
    """Rewrite ``Exp(x [- ReduceMax(x)]) / ReduceSum(Exp(...))`` over one axis into ``Softmax``.

    See the module docstring for the forms matched, the numerics of the form without the
    max, and the near misses refused. ``Softmax`` is standard ONNX: every target has it.
    """

    def fuse(self, model: ir.Model) -> int:
        # The transposed form reads the sum's shape: inferred where the graph does not record it.
        return fuse_with_inferred_shapes(self, model, super().fuse, retry_on=(_NO_SHAPE,))

    def rule_set(self) -> list[pattern.RewriteRuleSet]:
        # The stable forms first: a plain form would match its Exp(x - max) with x - max as x.
        return [
            pattern.RewriteRuleSet(
                [_ExpSoftmax.rule(shifted), *(_TransposedExpSoftmax.rule(shifted, way) for way in _LAYOUTS)]
            )
            for shifted in (True, False)
        ]

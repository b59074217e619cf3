"""Softmax fusion: a softmax written out as ``Exp`` / ``ReduceSum`` into one ``Softmax``.

Some exports (hand-written attention, ports from frameworks without a fused softmax)
spell the softmax over an axis ``a`` as

    e = Exp(x - ReduceMax(x, axes=[a], keepdims=1))     (the stable form)
    e = Exp(x)                                           (or without the max)
    y = e / ReduceSum(e, axes=[a], keepdims=1)

This pass rewrites either into ``Softmax(x, axis=a)``, so that the attention fusion,
which anchors on ``Softmax``, sees the attention (run it before ``fuse-attention``).

Numerics: the stable form is the same computation as ``Softmax`` up to rounding. The
form without the max is not where it fails: ``Exp`` overflows to inf for float32 inputs
above about 88 (the original then gives NaN or 0 where ``Softmax`` gives the right
weights), and a row whose every ``Exp`` underflows to 0 (every input below about -104)
is 0/0 = NaN in the original and finite under ``Softmax``. So the rewrite only differs
from the original where the original is not finite; output verification, which compares
the two, sees a difference only on inputs that reach those ranges.

Refuses (a near miss, with the reason) when: the reductions are not over one constant axis,
or over different axes, or drop the reduced axis (``keepdims=0``); the input is not a
float tensor; or, below opset 13 (where ``Softmax`` normalizes over all axes from
``axis`` on), the axis is not known to be the last. The ``Exp`` output must feed
exactly the ``ReduceSum`` and the ``Div`` (the rewriter checks that no other node reads a
value it removes).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from optimizer.domains import onnx_opset
from passes._utils import constant_array
from passes.fusion._base import RuleFusionPass
from passes.fusion._layout import rank

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16, None)


def _single_axis(node: ir.Node, data: ir.Value) -> int | str:
    """The one axis a ``Reduce*`` node reduces (non-negative where ``data``'s rank is known), or why not."""
    if node.attributes.get_int("keepdims", 1) != 1:
        return f"the {node.op_type} drops the reduced axis (keepdims=0)"
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = constant_array(node.inputs[1])
        axes = axes.reshape(-1).tolist() if axes is not None else None
    else:
        attr = node.attributes.get("axes")
        axes = list(attr.as_ints()) if attr is not None else None
    if axes is None or len(axes) != 1:
        return f"the {node.op_type} is not over one constant axis"
    data_rank = rank(data)
    return axes[0] % data_rank if data_rank is not None else axes[0]


class _ExpSoftmax(pattern.RewriteRuleClassBase):
    def __init__(self, shifted: bool) -> None:
        super().__init__(name="ExpSoftmax(max subtracted)" if shifted else "ExpSoftmax")
        self._shifted = shifted

    def pattern(self, op, x):
        if self._shifted:
            peak = op.ReduceMax(x, _allow_other_inputs=True, _outputs=["peak"])
            exps = op.Exp(op.Sub(x, peak))
        else:
            exps = op.Exp(x)
        total = op.ReduceSum(exps, _allow_other_inputs=True, _outputs=["total"])
        return op.Div(exps, total)

    def check(self, context, x, total, peak=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.dtype not in _FLOATS:
            return result.fail("the input is not a float tensor")
        axes = [_single_axis(total.producer(), x)]
        if peak is not None:
            axes.append(_single_axis(peak.producer(), x))
        reason = next((a for a in axes if isinstance(a, str)), None)
        if reason is not None:
            return result.fail(reason)
        if len(set(axes)) != 1:
            return result.fail("the max and the sum reduce different axes")
        if onnx_opset(context.model.opset_imports, 0) < 13:
            data_rank = rank(x)
            if not (axes[0] == -1 or (data_rank is not None and axes[0] == data_rank - 1)):
                return result.fail("below opset 13 Softmax normalizes from its axis on: the axis is not the last")
        return result

    def rewrite(self, op, x, total, **_):
        return op.Softmax(x, axis=_single_axis(total.producer(), x))


class SoftmaxFusion(RuleFusionPass):
    """Rewrite ``Exp(x [- ReduceMax(x)]) / ReduceSum(Exp(...))`` over one axis into ``Softmax``.

    See the module docstring for the forms matched, the numerics of the form without the
    max, and the near misses refused. ``Softmax`` is standard ONNX: every target has it.
    """

    def rule_set(self) -> list[pattern.RewriteRuleSet]:
        # The stable form first: the plain form would match its Exp(x - max) with x - max as x.
        return [pattern.RewriteRuleSet([_ExpSoftmax.rule(True)]), pattern.RewriteRuleSet([_ExpSoftmax.rule(False)])]

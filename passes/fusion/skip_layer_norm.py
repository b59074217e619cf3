"""Skip+LayerNorm fusion: residual ``Add`` + normalization into ``SkipLayerNormalization``.

Matches ``LayerNormalization(input + skip [+ bias])`` and
``SimplifiedLayerNormalization(input + skip [+ bias])`` (RMSNorm) over the last axis
and rewrites them into ``com.microsoft.SkipLayerNormalization`` /
``SkipSimplifiedLayerNormalization``. A constant 1-D bias added to either operand
(the preceding Linear layer's bias) is folded in. When the residual sum has other
users (the next block's skip connection) they read the fused op's fourth output.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from optimizer.domains import MS_DOMAIN
from passes.fusion._base import RuleFusionPass
from passes.fusion._checks import is_float, vector_for_last_dim


def _operand_order(a: ir.Value, b: ir.Value) -> tuple[ir.Value, ir.Value] | None:
    """``(input, skip)`` for the fused op, or None if the residual Add broadcasts in a way it cannot.

    The op's skip (not its input) may have batch 1; the sum is symmetric, so the
    operands are swapped when the batch-1 one came first.
    """
    if all(_may_be_equal(x, y) for x, y in zip(a.shape, b.shape)):
        return a, b
    for first, second in ((a, b), (b, a)):
        if second.shape[0] == 1 and first.shape[0] != 1:
            if all(_may_be_equal(x, y) for x, y in zip(list(first.shape)[1:], list(second.shape)[1:])):
                return first, second
    return None


def _may_be_equal(a, b) -> bool:
    """False when two dims are known to differ or one is a static 1 (a broadcast the fused op cannot do).

    Dims of unknown size are accepted: exporters never broadcast a residual Add, and
    verification runs the result.
    """
    if a == b:
        return True
    if a == 1 or b == 1 or (isinstance(a, int) and isinstance(b, int)):
        return False
    named = [getattr(d, "value", None) for d in (a, b) if not isinstance(d, int)]
    return not (len(named) == 2 and None not in named)


class _SkipNorm(pattern.RewriteRuleClassBase):
    def __init__(self, *, simplified: bool, with_bias: bool) -> None:
        super().__init__(name=f"Skip{'Simplified' if simplified else ''}LayerNorm(bias={with_bias})")
        self._simplified = simplified
        self._with_bias = with_bias

    def pattern(self, op, input, skip, bias, gamma):
        if self._with_bias:
            input = op.Add(input, bias)
        total = op.Add(input, skip, _outputs=["total"])
        if self._simplified:
            return op.SimplifiedLayerNormalization(
                total, gamma, _allow_other_attributes=True, _outputs=["normalized"]
            ), total
        return op.LayerNormalization(
            total, gamma, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["normalized"]
        ), total

    def check(self, context, input, skip, gamma, normalized, bias=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        norm = normalized.producer()
        if norm.attributes.get_int("axis", -1) not in (-1,) and not (
            input.shape is not None and norm.attributes.get_int("axis", -1) == input.shape.rank() - 1
        ):
            return result.fail("normalization is not over the last axis")
        if len(norm.outputs) > 1 and any(o.uses() for o in norm.outputs[1:]):
            return result.fail("the normalization's mean/inv-std outputs are used")
        if norm.attributes.get_int("stash_type", 1) != 1:
            return result.fail("stash_type is not float32")
        if not vector_for_last_dim(gamma, input):
            return result.fail("scale is not a constant vector")
        if not self._simplified and len(norm.inputs) > 2 and norm.inputs[2] is not None:
            if not vector_for_last_dim(norm.inputs[2], input):
                return result.fail("LayerNorm bias is not a constant vector")
        if self._with_bias and not vector_for_last_dim(bias, input):
            return result.fail("the folded bias is not a constant vector")
        for operand in (input, skip):
            if operand.const_value is not None:
                return result.fail("an operand of the residual Add is constant")
            # SkipLayerNormalization needs input and skip of the same shape (no broadcasting).
            if operand.shape is None or operand.shape.rank() != 3:
                return result.fail("operands are not known to be 3-D")
        if _operand_order(input, skip) is None:
            return result.fail("operand shapes differ, or the first broadcasts")
        if not is_float(input) or not is_float(skip):
            return result.fail("operands are not float32")
        return result

    def rewrite(self, op, input, skip, gamma, normalized, bias=None, **_):
        norm = normalized.producer()
        input, skip = _operand_order(input, skip)
        epsilon = norm.attributes.get_float("epsilon", 1e-5)
        if self._simplified:
            inputs = [input, skip, gamma] + ([bias] if self._with_bias else [])
            out, _, _, total = op.SkipSimplifiedLayerNormalization(
                *inputs, epsilon=epsilon, _domain=MS_DOMAIN, _outputs=4
            )
        else:
            beta = norm.inputs[2] if len(norm.inputs) > 2 else None
            inputs = [input, skip, gamma, beta] + ([bias] if self._with_bias else [])
            while inputs and inputs[-1] is None:
                inputs.pop()
            out, _, _, total = op.SkipLayerNormalization(*inputs, epsilon=epsilon, _domain=MS_DOMAIN, _outputs=4)
        return out, total


class SkipLayerNormFusion(RuleFusionPass):
    """Rewrite residual Add (+ bias) + ``LayerNormalization`` into ``SkipLayerNormalization``.

    Refuses when the operands are not both 3-D with matching dims (the fused op does
    not broadcast), when the scale or a bias is not constant, or when the
    normalization's extra outputs are used. Run it after LayerNorm fusion.
    """

    commute = True
    fused_ops = ((MS_DOMAIN, "SkipLayerNormalization"),)
    _simplified = False

    def rule_set(self) -> pattern.RewriteRuleSet:
        return pattern.RewriteRuleSet(
            [_SkipNorm.rule(simplified=self._simplified, with_bias=bias) for bias in (True, False)]
        )


class SkipRmsNormFusion(SkipLayerNormFusion):
    """Rewrite residual Add (+ bias) + ``SimplifiedLayerNormalization`` into ``SkipSimplifiedLayerNormalization``.

    Same refusals as ``SkipLayerNormFusion``; run it after RMSNorm fusion.
    """

    fused_ops = ((MS_DOMAIN, "SkipSimplifiedLayerNormalization"),)
    _simplified = True

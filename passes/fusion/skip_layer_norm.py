"""Skip+LayerNorm fusion: residual ``Add`` + normalization into ``SkipLayerNormalization``.

Matches ``LayerNormalization(input + skip [+ bias])`` and
``SimplifiedLayerNormalization(input + skip [+ bias])`` (RMSNorm) over the last axis
and rewrites them into ``com.microsoft.SkipLayerNormalization`` /
``SkipSimplifiedLayerNormalization``. A constant 1-D bias added to either operand
(the preceding Linear layer's bias) is folded in. When the residual sum has other
users (the next block's skip connection) they read the fused op's fourth output.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from passes.fusion._base import RuleFusionPass
from passes.fusion._checks import vector_for_last_dim

_MS = "com.microsoft"


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
        for a, b in zip(input.shape, skip.shape):
            if isinstance(a, int) and isinstance(b, int) and a != b:
                return result.fail("operand shapes differ")
        return result

    def rewrite(self, op, input, skip, gamma, normalized, bias=None, **_):
        norm = normalized.producer()
        epsilon = norm.attributes.get_float("epsilon", 1e-5)
        if self._simplified:
            inputs = [input, skip, gamma] + ([bias] if self._with_bias else [])
            out, _, _, total = op.SkipSimplifiedLayerNormalization(*inputs, epsilon=epsilon, _domain=_MS, _outputs=4)
        else:
            beta = norm.inputs[2] if len(norm.inputs) > 2 else None
            inputs = [input, skip, gamma, beta] + ([bias] if self._with_bias else [])
            while inputs and inputs[-1] is None:
                inputs.pop()
            out, _, _, total = op.SkipLayerNormalization(*inputs, epsilon=epsilon, _domain=_MS, _outputs=4)
        return out, total


class SkipLayerNormFusion(RuleFusionPass):
    """Rewrite residual Add (+ bias) + ``LayerNormalization`` into ``SkipLayerNormalization``.

    Refuses when the operands are not both 3-D with matching dims (the fused op does
    not broadcast), when the scale or a bias is not constant, or when the
    normalization's extra outputs are used. Run it after LayerNorm fusion.
    """

    commute = True
    fused_ops = (("com.microsoft", "SkipLayerNormalization"),)
    _simplified = False

    def rule_set(self) -> pattern.RewriteRuleSet:
        return pattern.RewriteRuleSet(
            [_SkipNorm.rule(simplified=self._simplified, with_bias=bias) for bias in (True, False)]
        )


class SkipRmsNormFusion(SkipLayerNormFusion):
    """Rewrite residual Add (+ bias) + ``SimplifiedLayerNormalization`` into ``SkipSimplifiedLayerNormalization``.

    Same refusals as ``SkipLayerNormFusion``; run it after RMSNorm fusion.
    """

    fused_ops = (("com.microsoft", "SkipSimplifiedLayerNormalization"),)
    _simplified = True

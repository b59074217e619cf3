"""Bias+GELU fusion: ``Gelu(x + bias)`` into ``BiasGelu`` and ``FastGelu(x + bias)`` into ``FastGelu(x, bias)``.

Runs after GELU fusion. The bias must be a constant 1-D tensor over the last axis
(a Linear layer's bias); the other Add operand is the activation.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from optimizer.domains import MS_DOMAIN
from passes.fusion._base import RuleFusionPass
from passes.fusion._checks import is_float, vector_for_last_dim


class _BiasGelu(pattern.RewriteRuleClassBase):
    def __init__(self, fast: bool) -> None:
        super().__init__(name="BiasFastGelu" if fast else "BiasGelu")
        self._fast = fast

    def pattern(self, op, x, bias):
        biased = op.Add(x, bias)
        if self._fast:
            return op.FastGelu(biased, _domain=MS_DOMAIN)
        return op.Gelu(biased, _domain=MS_DOMAIN)

    def check(self, context, x, bias, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not vector_for_last_dim(bias, x):
            return result.fail("bias is not a constant vector over the last axis")
        if x.const_value is not None:
            return result.fail("the activation is itself constant")
        if not is_float(x):
            return result.fail("the activation is not float32")
        return result

    def rewrite(self, op, x, bias):
        if self._fast:
            return op.FastGelu(x, bias, _domain=MS_DOMAIN)
        return op.BiasGelu(x, bias, _domain=MS_DOMAIN)


class BiasGeluFusion(RuleFusionPass):
    """Fold a constant bias Add into the following ``Gelu`` (as ``BiasGelu``) or ``FastGelu``.

    Refuses when the bias is not a constant 1-D tensor over the last axis.
    """

    fused_ops = ((MS_DOMAIN, "BiasGelu"), (MS_DOMAIN, "FastGelu"))

    def rule_set(self) -> pattern.RewriteRuleSet:
        return pattern.RewriteRuleSet([_BiasGelu.rule(False), _BiasGelu.rule(True)])

"""RMSNorm fusion: ``x / sqrt(mean(x^2) + eps) * gamma`` into ``SimplifiedLayerNormalization``.

Matches the form Llama-style models export (``Pow(x, 2)``, its exponent a scalar or a ``[1]``
tensor, or ``Mul(x, x)``; mean over the last axis; ``Div`` by the root or ``Mul`` by its inverse,
``Pow(mean + eps, -0.5)`` included; then the scale)
and rewrites it into ONNX Runtime's ``SimplifiedLayerNormalization`` — a contrib op
ORT registers in the ONNX domain on its CPU and CUDA EPs.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from optimizer.domains import MS_DOMAIN
from passes.fusion._base import RuleFusionPass
from passes.fusion._checks import NORMALIZATION_INVERSES as _INVERSES
from passes.fusion._checks import (
    divide_by_root,
    exponent_fails,
    is_float,
    last_axis_only,
    scalar,
    square_of,
    vector_for_last_dim,
)


class _DecomposedRmsNorm(pattern.RewriteRuleClassBase):
    def __init__(self, *, square_by_pow: bool, inverse: str) -> None:
        super().__init__(name=f"RmsNorm(pow={square_by_pow}, inverse={inverse})")
        self._square_by_pow = square_by_pow
        self._inverse = inverse

    def pattern(self, op, x, gamma, epsilon, exponent, root_exponent):
        square = square_of(op, x, self._square_by_pow, exponent)
        mean_square = op.ReduceMean(square, _allow_other_inputs=True, _outputs=["mean_square"])
        normalized = divide_by_root(op, x, op.Add(mean_square, epsilon), self._inverse, root_exponent)
        return op.Mul(normalized, gamma)

    def check(
        self, context, x, gamma, epsilon, mean_square, exponent=None, root_exponent=None, **_
    ) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if reason := exponent_fails(exponent, root_exponent):
            return result.fail(reason)
        if not is_float(x):
            return result.fail("input is not a float tensor")
        if not last_axis_only(mean_square.producer(), x):
            return result.fail("the mean is not over the last axis alone")
        if scalar(epsilon) is None:
            return result.fail("epsilon is not a constant scalar")
        if not vector_for_last_dim(gamma, x):
            return result.fail("scale is not a constant vector over the last axis")
        return result

    def rewrite(self, op, x, gamma, epsilon, **_):
        return op.SimplifiedLayerNormalization(x, gamma, axis=-1, epsilon=scalar(epsilon), stash_type=1)


class RmsNormFusion(RuleFusionPass):
    """Rewrite decomposed RMSNorm subgraphs into ``SimplifiedLayerNormalization``.

    Refuses a match whose mean is not over the last axis alone or whose epsilon or
    scale is not a constant of the right shape.

    ONNX Runtime registers ``SimplifiedLayerNormalization`` in the default ONNX domain,
    where onnx's checker has no such op: the result runs on ONNX Runtime (and graphopt
    reads it) but fails ``onnx.checker.check_model``.
    """

    fused_ops = (("", "SimplifiedLayerNormalization"),)
    already_fused_ops = ((MS_DOMAIN, "SkipSimplifiedLayerNormalization"),)

    def rule_set(self) -> pattern.RewriteRuleSet:
        rules = [
            _DecomposedRmsNorm.rule(square_by_pow=pow_, inverse=inv) for pow_ in (True, False) for inv in _INVERSES
        ]
        return pattern.RewriteRuleSet(rules)

"""RMSNorm fusion: ``x / sqrt(mean(x^2) + eps) * gamma`` into ``SimplifiedLayerNormalization``.

Matches the form Llama-style models export (``Pow(x, 2)`` or ``Mul(x, x)``, mean over
the last axis, ``Div`` by the root or ``Mul`` by its inverse, then the scale)
and rewrites it into ONNX Runtime's ``SimplifiedLayerNormalization`` — a contrib op
ORT registers in the ONNX domain on its CPU and CUDA EPs.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from optimizer.domains import MS_DOMAIN
from passes.fusion._base import RuleFusionPass
from passes.fusion._checks import NORMALIZATION_INVERSES as _INVERSES
from passes.fusion._checks import divide_by, is_float, last_axis_only, scalar, vector_for_last_dim


class _DecomposedRmsNorm(pattern.RewriteRuleClassBase):
    def __init__(self, *, square_by_pow: bool, inverse: str) -> None:
        super().__init__(name=f"RmsNorm(pow={square_by_pow}, inverse={inverse})")
        self._square_by_pow = square_by_pow
        self._inverse = inverse

    def pattern(self, op, x, gamma, epsilon):
        square = op.Pow(x, 2.0) if self._square_by_pow else op.Mul(x, x)
        mean_square = op.ReduceMean(square, _allow_other_inputs=True, _outputs=["mean_square"])
        root = op.Sqrt(op.Add(mean_square, epsilon))
        normalized = divide_by(op, x, root, self._inverse)
        return op.Mul(normalized, gamma)

    def check(self, context, x, gamma, epsilon, mean_square, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
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

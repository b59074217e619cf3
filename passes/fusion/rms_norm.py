"""RMSNorm fusion: ``x / sqrt(mean(x^2) + eps) [* gamma]`` into ``SimplifiedLayerNormalization``.

Matches the form Llama-style models export (``Pow(x, 2)``, its exponent a scalar or a ``[1]``
tensor, or ``Mul(x, x)``; mean over the last axis; ``Div`` by the root or ``Mul`` by its inverse,
``Pow(mean + eps, -0.5)`` included; then the scale, a constant vector over the last axis)
and rewrites it into ONNX Runtime's ``SimplifiedLayerNormalization`` — a contrib op
ORT registers in the ONNX domain on its CPU and CUDA EPs. A norm without a scale
(OLMo's ``elementwise_affine=False``, or one whose scale is not a constant vector and
so stays a ``Mul`` after it) is fused with a scale of ones. Gemma's ``x_norm * (1 + w)``
fuses once ``fold-constants`` has folded ``1 + w`` into one vector (the default pipeline
runs it first).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from optimizer.domains import MS_DOMAIN, is_onnx_op
from passes.fusion._base import RuleFusionPass
from passes.fusion._checks import (
    NO_STATIC_SIZE,
    centered_by_own_mean,
    divide_by_root,
    exponent_fails,
    fuse_with_inferred_shapes,
    is_float,
    last_axis_refusal,
    root_power,
    scalar,
    square_of,
    static_last_dim,
    unit_scale,
    vector_for_last_dim,
    widening_constant,
)
from passes.fusion._checks import NORMALIZATION_INVERSES as _INVERSES


class _DecomposedRmsNorm(pattern.RewriteRuleClassBase):
    def __init__(self, *, square_by_pow: bool, inverse: str, with_scale: bool) -> None:
        super().__init__(name=f"RmsNorm(pow={square_by_pow}, inverse={inverse}, scale={with_scale})")
        self._square_by_pow = square_by_pow
        self._inverse = inverse
        self._with_scale = with_scale

    def pattern(self, op, x, gamma, epsilon, exponent, root_exponent):
        square = square_of(op, x, self._square_by_pow, exponent)
        mean_square = op.ReduceMean(square, _allow_other_inputs=True, _outputs=["mean_square"])
        normalized = divide_by_root(op, x, op.Add(mean_square, epsilon), self._inverse, root_exponent)
        return op.Mul(normalized, gamma) if self._with_scale else normalized

    def check(
        self, context, x, epsilon, mean_square, gamma=None, exponent=None, root_exponent=None, **_
    ) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if reason := exponent_fails(exponent, root_exponent, root_power(self._inverse)):
            return result.fail(reason)
        if not is_float(x):
            return result.fail("input is not a float tensor")
        if reason := last_axis_refusal(mean_square.producer(), x, "the mean"):
            return result.fail(reason)
        if scalar(epsilon) is None:
            return result.fail("epsilon is not a constant scalar")
        if reason := widening_constant((epsilon, exponent, root_exponent), x):
            return result.fail(reason)
        # The RMS of x - mean(x) is a LayerNorm: as SimplifiedLayerNormalization after a Sub it would hide
        # the LayerNorm from fuse-layer-norm and from ONNX Runtime's own LayerNorm fusion at load time.
        if centered_by_own_mean(x):
            return result.fail("the input is centered by its own mean: a LayerNorm, left to fuse-layer-norm")
        if self._with_scale and not vector_for_last_dim(gamma, x):
            return result.fail("scale is not a constant vector over the last axis")
        if not self._with_scale:
            if _scaled_by_a_vector(context.root.outputs[0], x):
                return result.fail("the norm is scaled by a constant vector, which the scaled rule fuses with it")
            if static_last_dim(x) is None:
                return result.fail(NO_STATIC_SIZE)
        return result

    def rewrite(self, op, x, epsilon, gamma=None, **_):
        scale = gamma if self._with_scale else unit_scale(op, x)
        return op.SimplifiedLayerNormalization(x, scale, axis=-1, epsilon=scalar(epsilon), stash_type=1)


class RmsNormFusion(RuleFusionPass):
    """Rewrite decomposed RMSNorm subgraphs into ``SimplifiedLayerNormalization``.

    Matches the spellings listed in the module docstring, with a constant scale vector
    or none (then the fused op gets a scale of ones; a scale that is not a constant
    vector stays a ``Mul`` after the fused norm). Refuses a match whose mean is not over
    the last axis alone, whose epsilon is not a constant scalar, whose square or root
    exponent is not 2 or -0.5, whose input is ``x - mean(x)`` (a LayerNorm: left whole
    for ``fuse-layer-norm`` and ONNX Runtime's own LayerNorm fusion), or, without a
    scale, whose last dim has no static size, neither recorded nor inferred by ONNX shape
    inference (which runs only when a norm needs it, and gets through the norms fused before
    it and the other contrib ops whose output shapes are known exactly: ``_inferred_shapes``).

    ONNX Runtime registers ``SimplifiedLayerNormalization`` in the default ONNX domain,
    where onnx's checker has no such op: the result runs on ONNX Runtime (and graphopt
    reads it) but fails ``onnx.checker.check_model``.
    """

    fused_ops = (("", "SimplifiedLayerNormalization"),)
    already_fused_ops = ((MS_DOMAIN, "SkipSimplifiedLayerNormalization"),)

    def fuse(self, model: ir.Model) -> int:
        # The scale of ones needs the last dim: inferred where the graph does not record it.
        return fuse_with_inferred_shapes(self, model, super().fuse)

    def rule_set(self) -> pattern.RewriteRuleSet:
        rules = [
            _DecomposedRmsNorm.rule(square_by_pow=pow_, inverse=inv, with_scale=scale)
            for scale in (True, False)
            for pow_ in (True, False)
            for inv in _INVERSES
        ]
        return pattern.RewriteRuleSet(rules)


def _scaled_by_a_vector(normalized: ir.Value, x: ir.Value) -> bool:
    """True if ``normalized``'s one user multiplies it by a constant vector over ``x``'s last axis.

    The scale-less rule matches inside a scaled norm, at a node visited before the scale's ``Mul``:
    it leaves that norm to the scaled rule rather than fuse it with ones and keep the ``Mul``.
    """
    users = normalized.uses()
    if len(users) != 1 or normalized.is_graph_output():
        return False
    node = users[0].node
    if not is_onnx_op(node, "Mul"):
        return False
    other = node.inputs[1 - users[0].idx]
    return vector_for_last_dim(other, x)

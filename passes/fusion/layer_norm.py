"""LayerNorm fusion: the decomposed mean/variance form into ``LayerNormalization``.

Matches ``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) [* gamma [+ beta]]`` over
the last axis (the square as ``Pow(d, 2)``, its exponent a scalar or a ``[1]`` tensor, or
``Mul(d, d)``; the division as ``Div`` or ``Mul`` by its inverse, ``Reciprocal``, ``1 / r`` or
TF's ``Pow(variance + eps, -0.5)``), as older exporters and hand-written models emit it, and
tf2onnx's folded form of Keras' norm (``k = gamma / sqrt(variance + eps)``, ``x * k + (beta -
mean * k)``, products and sums in either order), each mean a ``ReduceMean`` over the last axis or, as tf2onnx
writes it for a ``[batch, seq, hidden]`` tensor, a ``GlobalAveragePool`` of a rank-3 tensor (which averages every
axis after the second: there the last alone),
and rewrites it into one ONNX ``LayerNormalization`` (opset 17+, implemented by
every ONNX Runtime EP). A norm without ``gamma`` and ``beta`` (``elementwise_affine=False``,
or one whose scale is not a constant vector and so stays a ``Mul`` after it) is fused
with a scale of ones and no bias.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from optimizer.domains import onnx_opset
from passes.fusion._base import RuleFusionPass
from passes.fusion._checks import (
    NO_STATIC_SIZE,
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

# What follows the normalization: ``* gamma + beta``, ``* gamma``, or nothing. Longest first: the
# shorter rules match inside the longer forms.
_AFFINES = ("scale_bias", "scale", "none")


def _statistics_fail(context, x, epsilon, mean, variance, exponent, root_exponent, power=-0.5) -> str | None:
    """Why a matched norm's statistics are not LayerNormalization's (mean and variance over the last axis, a
    constant epsilon, a square and an inverse square root), or its model cannot hold the op; None if they are."""
    if onnx_opset(context.model.opset_imports, 0) < 17:
        return "LayerNormalization needs opset 17 or newer"
    if reason := exponent_fails(exponent, root_exponent, power):
        return reason
    if not is_float(x):
        return "input is not a float tensor"
    for reduction in (mean, variance):
        if reason := last_axis_refusal(reduction.producer(), x, "a mean"):
            return reason
    if scalar(epsilon) is None:
        return "epsilon is not a constant scalar"
    return widening_constant((epsilon, exponent, root_exponent), x)


def _mean(op, data, name: str):
    """The mean of ``data`` over its last axis: a ``ReduceMean`` or tf2onnx's ``GlobalAveragePool`` (the last axis
    alone only at rank 3, which ``last_axis_refusal`` checks), matched in one rule by the producer's op (two rules
    each took twice the pass's time on every model)."""
    return pattern.OrValue([op.ReduceMean(data, _allow_other_inputs=True), op.GlobalAveragePool(data)], name=name)


class _DecomposedLayerNorm(pattern.RewriteRuleClassBase):
    def __init__(self, *, square_by_pow: bool, inverse: str, affine: str) -> None:
        super().__init__(name=f"LayerNorm(pow={square_by_pow}, inverse={inverse}, affine={affine})")
        self._square_by_pow = square_by_pow
        self._inverse = inverse
        self._affine = affine

    def pattern(self, op, x, gamma, beta, epsilon, exponent, root_exponent):
        mean = _mean(op, x, "mean")
        centered = op.Sub(x, mean)
        square = square_of(op, centered, self._square_by_pow, exponent)
        variance = _mean(op, square, "variance")
        normalized = divide_by_root(op, centered, op.Add(variance, epsilon), self._inverse, root_exponent)
        if self._affine == "none":
            return normalized
        scaled = op.Mul(normalized, gamma)
        return op.Add(scaled, beta) if self._affine == "scale_bias" else scaled

    def check(
        self,
        context,
        x,
        epsilon,
        mean,
        variance,
        gamma=None,
        beta=None,
        exponent=None,
        root_exponent=None,
        **_,
    ) -> pattern.MatchResult:
        result = pattern.MatchResult()
        power = root_power(self._inverse)
        if reason := _statistics_fail(context, x, epsilon, mean, variance, exponent, root_exponent, power):
            return result.fail(reason)
        if self._affine != "none" and not vector_for_last_dim(gamma, x):
            return result.fail("scale is not a constant vector over the last axis")
        if self._affine == "scale_bias" and not vector_for_last_dim(beta, x):
            return result.fail("bias is not a constant vector over the last axis")
        if self._affine == "none" and static_last_dim(x) is None:
            return result.fail(NO_STATIC_SIZE)
        return result

    def rewrite(self, op, x, epsilon, gamma=None, beta=None, **_):
        if self._affine == "none":
            inputs = [x, unit_scale(op, x)]  # the bias is optional; the scale is not
        else:
            inputs = [x, gamma] + ([beta] if self._affine == "scale_bias" else [])
        return op.LayerNormalization(*inputs, axis=-1, epsilon=scalar(epsilon), stash_type=1)


class _FoldedLayerNorm(pattern.RewriteRuleClassBase):
    """The form tf2onnx writes Keras' ``LayerNormalization`` in (ONNX Runtime's ``FusionLayerNormalizationTF``):
    ``k = gamma / sqrt(variance + eps)``, then ``x * k + (beta - mean * k)``, which is ``(x - mean) * k + beta``."""

    def __init__(self, *, square_by_pow: bool, inverse: str) -> None:
        super().__init__(name=f"LayerNorm(folded, pow={square_by_pow}, inverse={inverse})")
        self._square_by_pow = square_by_pow
        self._inverse = inverse

    def pattern(self, op, x, gamma, beta, epsilon, exponent, root_exponent):
        mean = _mean(op, x, "mean")
        square = square_of(op, op.Sub(x, mean), self._square_by_pow, exponent)
        variance = _mean(op, square, "variance")
        total = op.Add(variance, epsilon)
        if self._inverse == "pow_half":
            inverse_root = op.Pow(total, root_exponent)
        elif self._inverse == "reciprocal":
            inverse_root = op.Reciprocal(op.Sqrt(total))
        else:
            inverse_root = op.Div(1.0, op.Sqrt(total))
        k = op.Mul(inverse_root, gamma)
        return op.Add(op.Mul(x, k), op.Sub(beta, op.Mul(mean, k)))

    def check(self, context, x, epsilon, mean, variance, gamma, beta, exponent=None, root_exponent=None, **_):
        result = pattern.MatchResult()
        if reason := _statistics_fail(context, x, epsilon, mean, variance, exponent, root_exponent):
            return result.fail(reason)
        if not (vector_for_last_dim(gamma, x) and vector_for_last_dim(beta, x)):
            return result.fail("scale or bias is not a constant vector over the last axis")
        return result

    def rewrite(self, op, x, epsilon, gamma, beta, **_):
        return op.LayerNormalization(x, gamma, beta, axis=-1, epsilon=scalar(epsilon), stash_type=1)


class LayerNormFusion(RuleFusionPass):
    """Rewrite decomposed LayerNorm subgraphs into ``LayerNormalization``.

    Matches the spellings listed in the module docstring, with a constant scale and bias,
    a constant scale alone, or neither (then the fused op gets a scale of ones and no bias;
    a scale or bias that is not a constant vector stays a ``Mul``/``Add`` after it).
    Refuses a match whose reductions are not over the last axis alone (a ``GlobalAveragePool`` of a tensor
    whose rank is not 3 averages more than one axis), whose epsilon is
    not a constant scalar, whose square or root exponent is not 2 or -0.5, in a model
    below opset 17, or, without a scale, whose last dim has no static size, neither
    recorded nor inferred by ONNX shape inference (which runs only when a norm needs it).
    """

    fused_ops = (("", "LayerNormalization"),)

    def fuse(self, model: ir.Model) -> int:
        # The scale of ones needs the last dim: inferred where the graph does not record it.
        return fuse_with_inferred_shapes(self, model, super().fuse)

    def rule_set(self) -> list[pattern.RewriteRuleSet]:
        # One rule set per affine form, longest first: the shorter forms match inside the longer.
        return [
            pattern.RewriteRuleSet(
                [
                    _DecomposedLayerNorm.rule(square_by_pow=pow_, inverse=inv, affine=affine)
                    for pow_ in (True, False)
                    for inv in _INVERSES
                ]
            )
            for affine in _AFFINES
        ] + [
            pattern.RewriteRuleSet(
                [
                    _FoldedLayerNorm.rule(square_by_pow=pow_, inverse=inv)
                    for pow_ in (True, False)
                    for inv in ("reciprocal", "one_over", "pow_half")
                ],
                commute=True,
            )
        ]

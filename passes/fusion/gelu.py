"""GELU fusion: the erf and tanh formulas into ONNX Runtime's ``Gelu`` and ``FastGelu``.

Matches ``0.5 * x * (1 + erf(x / sqrt(2)))`` (the division also as a multiplication
by ``1/sqrt(2)``) into ``com.microsoft.Gelu``, and
``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` (the cube as ``Pow(x, 3)``
or ``x * x * x``) into ``com.microsoft.FastGelu``, whichever way the exporter
associated the products. ONNX's own ``Gelu`` (opset 20) is rewritten the same way,
so bias+GELU fusion sees one form.
"""

from __future__ import annotations

import math

from onnxscript.rewriter import pattern

from optimizer.domains import MS_DOMAIN, is_onnx_domain
from passes.fusion._base import RuleFusionPass
from passes.fusion._checks import is_float

_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _product(op, a, b, swapped: bool):
    """``a * b`` with the operands in the given order (for two non-constant operands)."""
    return op.Mul(b, a) if swapped else op.Mul(a, b)


def _half_x_times(op, x, factor, association: str, swapped: bool):
    """``0.5 * x * factor`` in one of the three ways exporters associate it (constants second)."""
    if association == "half_x_first":
        return _product(op, op.Mul(x, 0.5), factor, swapped)
    if association == "x_first":
        return op.Mul(_product(op, x, factor, swapped), 0.5)
    return _product(op, x, op.Mul(factor, 0.5), swapped)


_ASSOCIATIONS = [(a, s) for a in ("half_x_first", "x_first", "factor_first") for s in (False, True)]


class _FormulaGelu(pattern.RewriteRuleClassBase):
    """A GELU formula over a float32 input."""

    def check(self, context, x, **_) -> pattern.MatchResult:
        return pattern.MatchResult() if is_float(x) else pattern.MatchResult().fail("input is not float32")


class _ErfGelu(_FormulaGelu):
    def __init__(self, association: tuple[str, bool], divide: bool) -> None:
        super().__init__(name=f"ErfGelu({association}, divide={divide})")
        self._association = association
        self._divide = divide

    def pattern(self, op, x):
        scaled = op.Div(x, _SQRT_2) if self._divide else op.Mul(x, 1.0 / _SQRT_2)
        return _half_x_times(op, x, op.Add(op.Erf(scaled), 1.0), *self._association)

    def rewrite(self, op, x):
        return op.Gelu(x, _domain=MS_DOMAIN)


class _TanhGelu(_FormulaGelu):
    def __init__(self, association: tuple[str, bool], cube: str, add_swapped: bool) -> None:
        super().__init__(name=f"TanhGelu({association}, cube={cube}, add_swapped={add_swapped})")
        self._association = association
        self._cube = cube
        self._add_swapped = add_swapped

    def pattern(self, op, x):
        if self._cube == "pow":
            cube = op.Pow(x, 3.0)
        else:
            cube = _product(op, op.Mul(x, x), x, self._cube == "mul_swapped")
        cubic = op.Mul(cube, 0.044715)
        inner = op.Mul(op.Add(cubic, x) if self._add_swapped else op.Add(x, cubic), _SQRT_2_OVER_PI)
        return _half_x_times(op, x, op.Add(op.Tanh(inner), 1.0), *self._association)

    def rewrite(self, op, x):
        return op.FastGelu(x, _domain=MS_DOMAIN)


class _OnnxGelu(pattern.RewriteRuleClassBase):
    """ONNX ``Gelu`` (opset 20) into the contrib op, so BiasGelu fusion has one form to match."""

    def pattern(self, op, x):
        return op.Gelu(x, _allow_other_attributes=True, _outputs=["gelu"])

    def check(self, context, x, gelu, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not is_onnx_domain(gelu.producer()):
            return result.fail("already a contrib Gelu")
        if gelu.producer().attributes.get_string("approximate", "none") not in ("none", "tanh"):
            return result.fail("unknown approximation")
        return result if is_float(x) else result.fail("input is not float")

    def rewrite(self, op, x, gelu, **_):
        if gelu.producer().attributes.get_string("approximate", "none") == "tanh":
            return op.FastGelu(x, _domain=MS_DOMAIN)
        return op.Gelu(x, _domain=MS_DOMAIN)


class GeluFusion(RuleFusionPass):
    """Rewrite erf-form GELU into ``Gelu`` and tanh-form GELU into ``FastGelu`` (com.microsoft).

    Refuses non-float inputs and formulas whose constants differ (matched to 1e-5
    relative), e.g. ``x * sigmoid(1.702 x)``, which is a different approximation.
    """

    fused_ops = ((MS_DOMAIN, "Gelu"), (MS_DOMAIN, "FastGelu"))

    def rule_set(self) -> pattern.RewriteRuleSet:
        rules = [_ErfGelu.rule(a, d) for a in _ASSOCIATIONS for d in (True, False)]
        rules += [
            _TanhGelu.rule(a, cube, swapped)
            for a in _ASSOCIATIONS
            for cube in ("pow", "mul", "mul_swapped")
            for swapped in (False, True)
        ]
        rules.append(_OnnxGelu.rule())
        return pattern.RewriteRuleSet(rules)

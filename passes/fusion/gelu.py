"""GELU fusion: the erf, tanh and sigmoid GELU formulas into ONNX Runtime's ``Gelu``, ``FastGelu`` and ``QuickGelu``.

What a subgraph computes is recognised, not how it is spelled. Each ``Erf``, ``Tanh`` and
``Sigmoid`` node is a candidate activation ``A``. Its argument must be a polynomial in some
tensor ``x``, and a value after it a polynomial in ``x`` and ``A``, both built with ``Add``,
``Sub``, ``Mul``, ``Neg``, ``Div`` by a constant and ``Pow`` to a whole power, from constants
of one element (a scalar or a ``[1]`` tensor). Their coefficients must be GELU's, to 1e-5
relative:

=========  ======================================  ====================  =========================
A          argument                                output                fused into
=========  ======================================  ====================  =========================
erf        x / sqrt(2)                             0.5*x + 0.5*x*A       ``Gelu``
tanh       sqrt(2/pi) * (x + 0.044715*x^3)         0.5*x + 0.5*x*A       ``FastGelu``
sigmoid    1.702*x                                 x*A                   ``QuickGelu(alpha=1.702)``
=========  ======================================  ====================  =========================

So every association and distribution of the products matches: ``0.5*x*(1 + erf(x/sqrt(2)))``
in any order, ``x*0.5 + x*0.5*erf(..)``, ``x*(0.5 + 0.5*erf(..))``, GPT-2's ``x + 0.044715*x^3``
(the cube as ``Pow`` or ``x*x*x``), HF's ``FastGELUActivation``
``x*0.7978845608*(1 + 0.044715*x*x)``, the distributed ``s*x + s*0.044715*x^3``, and CLIP's
QuickGELU ``x*sigmoid(1.702*x)``. ``x*sigmoid(x)`` (SiLU) is not a GELU and is left alone
without a word. ONNX's own ``Gelu`` (opset 20) is rewritten into the contrib op too, so
bias+GELU fusion sees one form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_op
from passes._utils import constant_array, replace_value
from passes.fusion._base import FusionPass
from passes.fusion._checks import is_float
from passes.fusion._targets import unsupported_ops

# A polynomial in x and the activation A: (power of x, power of A) -> coefficient.
_Poly = dict[tuple[int, int], float]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
# Exporters store the constants as float32 (0.7978846 for sqrt(2/pi)): 1e-5 relative takes
# that rounding and refuses a constant changed in its fourth digit (0.0447 for 0.044715).
_REL_TOL = 1e-5
# A near miss, reported with its coefficients: the right terms, each within this of GELU's.
# Farther off is another function (SiLU's sigmoid(x), a bare erf), not worth a word.
_NEAR_MISS_TOL = 0.05

_ARITHMETIC = ("Add", "Sub", "Mul", "Div", "Neg", "Pow")
# GELU's subgraph has about ten nodes; a walk longer than this is some other computation.
_MAX_NODES = 24
_MAX_POWER = 8


@dataclass(frozen=True)
class _Form:
    """One GELU approximation: the activation node, its argument in x, the output in x and A, the fused op."""

    kind: str
    argument: _Poly
    output: _Poly
    fused: str
    attributes: tuple[tuple[str, float], ...] = ()


_HALF_X_TIMES_ONE_PLUS_A = {(1, 0): 0.5, (1, 1): 0.5}
_FORMS = {
    "Erf": _Form("erf GELU", {(1, 0): 1 / math.sqrt(2.0)}, _HALF_X_TIMES_ONE_PLUS_A, "Gelu"),
    "Tanh": _Form(
        "tanh GELU",
        {(1, 0): _SQRT_2_OVER_PI, (3, 0): _SQRT_2_OVER_PI * 0.044715},
        _HALF_X_TIMES_ONE_PLUS_A,
        "FastGelu",
    ),
    "Sigmoid": _Form("QuickGELU", {(1, 0): 1.702}, {(1, 1): 1.0}, "QuickGelu", (("alpha", 1.702),)),
}


@dataclass(frozen=True)
class _Match:
    x: ir.Value
    output: ir.Value
    form: _Form


class GeluFusion(FusionPass):
    """Rewrite GELU formulas into ``Gelu`` (erf), ``FastGelu`` (tanh) and ``QuickGelu`` (sigmoid), all com.microsoft.

    Matches what the module docstring lists, in any association of the products. Refuses,
    with a reason, a formula whose activation argument has GELU's terms but coefficients
    off by more than 1e-5 relative (``0.0447`` for ``0.044715``), one whose argument is
    GELU's but whose output is not (``0.6*x*(1 + erf(..))``), one whose intermediate
    values have users outside it, a non-float input, a one-element constant of higher
    rank than the input (it would broadcast the output), ``QuickGelu`` on a target
    without its kernel, and an ONNX ``Gelu`` with an unknown ``approximate``.
    """

    fused_ops = ((MS_DOMAIN, "Gelu"), (MS_DOMAIN, "FastGelu"))
    # QuickGelu is gated on its own (``_quick_gelu_missing``): a target without it still fuses the others.
    already_fused_ops = ((MS_DOMAIN, "QuickGelu"),)

    def fuse(self, model: ir.Model) -> int:
        graph = model.graph
        count = 0
        for node in [n for n in graph if is_onnx_op(n, "Erf", "Tanh", "Sigmoid", "Gelu")]:
            if node.op_type == "Gelu":
                found = _onnx_gelu(node)
            else:
                found = _recognise(node)
                if isinstance(found, _Match) and found.form.fused == "QuickGelu":
                    found = self._quick_gelu_missing() or found
            kind = "ONNX Gelu" if node.op_type == "Gelu" else _FORMS[node.op_type].kind
            if isinstance(found, str):
                self.refuse(kind, found)
            elif found is not None:
                _rewrite(graph, found)
                self.done(kind)
                count += 1
        return count

    def _quick_gelu_missing(self) -> str | None:
        missing = unsupported_ops(((MS_DOMAIN, "QuickGelu"),), self.target)
        return f"target {self.target} has no kernel for {missing[0]}" if missing else None


def _onnx_gelu(node: ir.Node) -> _Match | str:
    approximate = node.attributes.get_string("approximate", "none")
    if approximate not in ("none", "tanh"):
        return f"unknown approximation {approximate!r}"
    if not is_float(node.inputs[0]):
        return "input is not float32"
    form = _FORMS["Tanh" if approximate == "tanh" else "Erf"]
    return _Match(node.inputs[0], node.outputs[0], form)


def _recognise(activation: ir.Node) -> _Match | str | None:
    """The GELU around ``activation``; why a near miss is not one; or None if it is no GELU at all."""
    form = _FORMS[activation.op_type]
    argument = activation.inputs[0]
    near_miss = None
    # x is where the argument's variable operands lead; the nearest value whose polynomial is GELU's
    # argument (a value before x, such as the MatMul ahead of a bias Add, is no x: the bias shows).
    for x in _values_below(argument):
        inner = _Polynomials(x, None)
        polynomial = inner.of(argument)
        if polynomial is None:
            continue
        if not _close(polynomial, form.argument, _REL_TOL):
            if _close(polynomial, form.argument, _NEAR_MISS_TOL):
                near_miss = f"the argument is {_show(polynomial)}, GELU's is {_show(form.argument)}"
            continue
        return _output_of(activation, x, inner, form)
    return near_miss


def _output_of(activation: ir.Node, x: ir.Value, inner: _Polynomials, form: _Form) -> _Match | str:
    """The last value after ``activation`` that is GELU's output polynomial, checked; or why there is none."""
    name = activation.op_type.lower()
    found = None
    for output in reversed(_values_after(activation.outputs[0])):
        outer = _Polynomials(x, activation.outputs[0])
        polynomial = outer.of(output)
        if polynomial is None:
            continue
        if not _close(polynomial, form.output, _REL_TOL):
            found = found or polynomial
            continue
        if reason := _escapes(inner.nodes | outer.nodes | {activation}, output):
            return reason
        if not is_float(x):
            return "input is not float32"
        if _broadcasts(inner.constants + outer.constants, x):
            return "a one-element constant has more dims than the input: the output's shape would change"
        return _Match(x, output, form)
    if found is None:
        return f"the argument is GELU's, but nothing after the {name} is a polynomial in x and {name}"
    return f"the output is {_show(found, name)}, GELU's is {_show(form.output, name)}"


class _Polynomials:
    """Values as polynomials in ``x`` and ``activation`` (None: x alone), with the nodes and constants they took."""

    def __init__(self, x: ir.Value, activation: ir.Value | None) -> None:
        self._x = x
        self._activation = activation
        self._memo: dict[int, _Poly | None] = {}
        self.nodes: set[ir.Node] = set()
        self.constants: list[ir.Value] = []

    def of(self, value: ir.Value | None) -> _Poly | None:
        if value is None:
            return None
        if value is self._x:
            return {(1, 0): 1.0}
        if value is self._activation:
            return {(0, 1): 1.0}
        if id(value) not in self._memo:
            self._memo[id(value)] = self._compute(value)
        return self._memo[id(value)]

    def _compute(self, value: ir.Value) -> _Poly | None:
        number = self._constant(value)
        if number is not None:
            return {(0, 0): number}
        node = value.producer()
        if not is_onnx_op(node, *_ARITHMETIC) or len(self.nodes) >= _MAX_NODES:
            return None
        self.nodes.add(node)
        if node.op_type == "Pow":
            exponent = self._constant(node.inputs[1])
            base = self.of(node.inputs[0])
            if base is None or exponent is None or exponent != int(exponent) or not 1 <= exponent <= 4:
                return None
            return _power(base, int(exponent))
        operands = [self.of(v) for v in node.inputs]
        if any(p is None for p in operands):
            return None
        if node.op_type == "Neg":
            return {k: -c for k, c in operands[0].items()}
        first, second = operands
        if node.op_type == "Add":
            return _sum(first, second)
        if node.op_type == "Sub":
            return _sum(first, {k: -c for k, c in second.items()})
        if node.op_type == "Mul":
            return _product(first, second)
        divisor = second.get((0, 0), 0.0)  # Div: by a constant only
        if set(second) != {(0, 0)} or divisor == 0.0:
            return None
        return {k: c / divisor for k, c in first.items()}

    def _constant(self, value: ir.Value | None) -> float | None:
        array = constant_array(value)
        if array is None or array.size != 1:
            return None
        self.constants.append(value)
        return float(array.reshape(()))


def _values_below(value: ir.Value) -> list[ir.Value]:
    """``value`` and what it is computed from along its first non-constant operands, nearest first."""
    found = [value]
    while len(found) < _MAX_NODES:
        node = found[-1].producer()
        if not is_onnx_op(node, *_ARITHMETIC):
            break
        operand = next((v for v in node.inputs if v is not None and constant_array(v) is None), None)
        if operand is None:
            break
        found.append(operand)
    return found


def _values_after(value: ir.Value) -> list[ir.Value]:
    """The values computed from ``value`` by a chain of arithmetic nodes, each the only user of the last."""
    found: list[ir.Value] = []
    while len(found) < _MAX_NODES and not value.is_graph_output():
        users = {use.node for use in value.uses()}
        if len(users) != 1:
            break
        node = users.pop()
        if not is_onnx_op(node, *_ARITHMETIC):
            break
        value = node.outputs[0]
        found.append(value)
    return found


def _escapes(nodes: set[ir.Node], output: ir.Value) -> str | None:
    """Why the nodes cannot all go (a value other than ``output`` is used outside them), or None."""
    for node in nodes:
        for value in node.outputs:
            if value is output:
                continue
            if value.is_graph_output():
                return "an intermediate value is a graph output"
            if any(use.node not in nodes for use in value.uses()):
                return "an intermediate value has other users"
    return None


def _rewrite(graph: ir.Graph, match: _Match) -> None:
    form = match.form
    attributes = [ir.AttrFloat32(name, value) for name, value in form.attributes]
    fused = ir.Node(MS_DOMAIN, form.fused, [match.x], attributes)
    graph.insert_after(match.output.producer(), fused)
    replace_value(match.output, fused.outputs[0], inherit=True)


def _sum(first: _Poly, second: _Poly) -> _Poly:
    total = dict(first)
    for key, coefficient in second.items():
        total[key] = total.get(key, 0.0) + coefficient
    return total


def _product(first: _Poly, second: _Poly) -> _Poly | None:
    result: _Poly = {}
    for (i, j), a in first.items():
        for (k, m), b in second.items():
            if i + k > _MAX_POWER or j + m > _MAX_POWER:
                return None
            result[i + k, j + m] = result.get((i + k, j + m), 0.0) + a * b
    return result


def _power(base: _Poly, exponent: int) -> _Poly | None:
    result: _Poly | None = base
    for _ in range(exponent - 1):
        result = _product(result, base) if result is not None else None
    return result


def _close(polynomial: _Poly, expected: _Poly, rel_tol: float) -> bool:
    """True if the polynomials have the same terms, each coefficient within ``rel_tol`` (a term that cancels to
    within rounding counts as absent)."""
    scale = max(abs(c) for c in expected.values())
    return all(
        math.isclose(polynomial.get(key, 0.0), expected.get(key, 0.0), rel_tol=rel_tol, abs_tol=1e-7 * scale)
        for key in polynomial.keys() | expected.keys()
    )


def _show(polynomial: _Poly, activation: str = "") -> str:
    """``0.797885*x + 0.0356774*x^3``: the polynomial as a report reads it."""
    terms = []
    for (i, j), coefficient in sorted(polynomial.items(), key=lambda item: (item[0][1], item[0][0])):
        if coefficient == 0.0:
            continue
        factors = [f"{coefficient:.6g}"]
        factors += [f"x^{i}" if i > 1 else "x"] if i else []
        factors += [f"{activation}(..)" + (f"^{j}" if j > 1 else "")] if j else []
        terms.append("*".join(factors))
    return " + ".join(terms) or "0"


def _broadcasts(constants: list[ir.Value], x: ir.Value) -> bool:
    """True if a constant has more dims than ``x`` (or any, where ``x``'s rank is unknown)."""
    rank = max((constant_array(value).ndim for value in constants), default=0)
    return rank > 0 and (x.shape is None or rank > x.shape.rank())

"""GELU fusion: the erf, tanh and sigmoid GELU formulas into ONNX Runtime's ``Gelu``, ``FastGelu`` and ``QuickGelu``.

What a subgraph computes is recognised, not how it is spelled. Each ``Erf``, ``Tanh`` and
``Sigmoid`` node is a candidate activation ``A``. Its argument must be a polynomial in some
tensor ``x``, and a value after it a polynomial in ``x`` and ``A``, both built with ``Add``,
``Sub``, ``Mul``, ``Neg``, ``Div`` by a constant and ``Pow`` to a whole power, from constants
of one value: a scalar or a ``[1]`` tensor, a tensor whose every element is that value (0.5
stored per channel), or one computed from such constants by elementwise ops that
``fold-constants`` has not folded (``Sqrt(2)``; an initializer that is also a graph input is
no constant). A constant with dims must neither add dims to x's nor stretch them: x's rank
must be known and at least the constant's, and a dim over 1 must be x's size there. x's shape is
read only where it holds whatever ONNX Runtime is fed: a graph input's declared shape (checked
when fed, but for a declared rank 0), or what ONNX shape inference derives from those and the
graph; never a shape recorded on another value (``value_info``, a graph output's declaration),
which nothing checks. Their coefficients must be GELU's, to 1e-5 relative:

=========  ======================================  ====================  =========================
A          argument                                output                fused into
=========  ======================================  ====================  =========================
erf        x / sqrt(2)                             0.5*x + 0.5*x*A       ``Gelu``
tanh       sqrt(2/pi) * (x + 0.044715*x^3)         0.5*x + 0.5*x*A       ``FastGelu``
tanh       c*x, c not 1/2 (CLIP: 0.851)            0.5*x + 0.5*x*A       ``QuickGelu(alpha=2c)``
sigmoid    2*sqrt(2/pi) * (x + 0.044715*x^3)       x*A                   ``FastGelu``
sigmoid    alpha*x, alpha not 1 (CLIP: 1.702)      x*A                   ``QuickGelu(alpha)``
=========  ======================================  ====================  =========================

(The tanh GELU written with a sigmoid, and QuickGELU with a tanh: ``0.5*(1 + tanh(u)) =
sigmoid(2u)``. ONNX Runtime's ``QuickGelu`` computes ``x*sigmoid(alpha*x)`` for its ``alpha``
attribute, checked against numpy on its CPU kernel for 0.3, 1.5, 2.5 and -1.5.)

A term GELU lacks (``4e-8*x^5``) must be absent: exactly zero when the products summed into it
are computed exactly on the constants' stored values (``c*x^3 - c*x^3`` is; ``(0.04 + 4e-8)*x^5
- 0.04*x^5`` is not, though it is within float32 rounding of its products), from products no
larger than a hundred times GELU's largest coefficient (``(x + 1e8) - 1e8`` rounds x in float32).
A term GELU needs must be no small difference of large products either: ``x*a*b - x*d`` with ``a*b - d``
= 1/sqrt(2) from products of 1e6 is GELU's argument in exact arithmetic, but float32 rounds each product
by more than the difference can bear. Its products may add up to about 7 times the coefficient (where
float32's rounding of them stays within the 1e-5 the coefficient is matched to).
An argument that is GELU's negated is taken with the activation's symmetry: ``erf(-u) =
-erf(u)``, ``tanh(-u) = -tanh(u)``, ``sigmoid(-u) = 1 - sigmoid(u)``.

So every association and distribution of the products matches: ``0.5*x*(1 + erf(x/sqrt(2)))``
in any order, ``x*0.5 + x*0.5*erf(..)``, ``x*(0.5 + 0.5*erf(..))``, TF's and JAX's
``x*(1 - erf(-x/sqrt(2)))/2``, GPT-2's ``x + 0.044715*x^3`` (the cube as ``Pow`` or
``x*x*x``), HF's ``FastGELUActivation`` ``x*0.7978845608*(1 + 0.044715*x*x)``, the
distributed ``s*x + s*0.044715*x^3``, and CLIP's QuickGELU ``x*sigmoid(1.702*x)``.
A node of the formula whose value other nodes read too (``x^3`` read after the GELU, one
``x / sqrt(2)`` read by two GELUs) stays for them beside the fused op, which computes that
value again (a note counts the nodes still there once every GELU is fused); a formula whose
activation would have to stay is refused: the fused op would compute it twice.
``x*sigmoid(x)`` (SiLU) is not a GELU and is left alone without a word. ONNX's own ``Gelu``
(opset 20) is rewritten into the contrib op too, so bias+GELU fusion sees one form.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_op
from optimizer.runtime import model_graphs
from passes._utils import constant_array, replace_value
from passes.fusion._base import FusionPass
from passes.fusion._checks import folded_constant, is_float
from passes.fusion._targets import unsupported_ops


class _Exact:
    """A coefficient in exact arithmetic on the constants' stored values, worked out when first asked for.

    None: too long a fraction to carry (``_MAX_EXACT_BITS``). Only a term GELU lacks is asked
    for (``_close``): GELU's own terms, and every candidate x of a chain of scalings, never pay
    for ``Fraction`` arithmetic (which made trying the values below a Tanh cost 6x).
    """

    __slots__ = ("_work", "_operands", "_value")

    def __init__(self, work: Callable[..., Fraction | None] | None = None, *operands: object) -> None:
        self._work = work
        self._operands = operands
        self._value: Fraction | None = None

    @classmethod
    def known(cls, value: Fraction) -> _Exact:
        exact = cls()
        exact._value = value
        return exact

    def __call__(self) -> Fraction | None:
        if self._work is not None:
            self._value = self._work(*self._operands)
            self._work, self._operands = None, ()
        return self._value


_EXACT_ZERO = _Exact.known(Fraction(0))


class _Term(NamedTuple):
    """One coefficient of a polynomial, and the sum of the magnitudes of the products added into it."""

    value: float
    # How much rounding the value can carry: c*x^3 - c*x^3 has value 0 and size 2|c|.
    size: float
    # The coefficient in exact arithmetic on the constants' stored values: a term GELU lacks must be 0 here.
    exact: _Exact = _EXACT_ZERO


# A polynomial in x and the activation A: (power of x, power of A) -> term.
_Poly = dict[tuple[int, int], _Term]
# GELU's coefficients, exact.
_Coefficients = dict[tuple[int, int], float]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
# Exporters store the constants as float32 (0.7978846 for sqrt(2/pi)): 1e-5 relative takes
# that rounding and refuses a constant changed in its fourth digit (0.0447 for 0.044715).
_REL_TOL = 1e-5
# A near miss, reported with its coefficients: the right terms, each within this of GELU's.
# Farther off is another function (SiLU's sigmoid(x), a bare erf), not worth a word.
_NEAR_MISS_TOL = 0.05
# A term GELU lacks counts as absent if it is exactly zero on the constants' stored values (``Fraction``
# arithmetic): ``c*x^3 - c*x^3`` is, ``(0.04 + 4e-8)*x^5 - 0.04*x^5`` is not (-3.25 at x = -37.7, where
# a tolerance of float32 rounding took it for cancelled) ...
# ... and if its size is at most this times GELU's largest coefficient: the rounding of a larger
# cancelled product ((x + 1e8) - 1e8) is no longer small beside GELU's terms when float32 computes it.
_CANCELLED_SIZE = 100.0
# Exact coefficients longer than this (numerator and denominator bits) are no longer carried: GELU's
# own need a few hundred; a chain of twenty products of one constant would need thousands, and time.
_MAX_EXACT_BITS = 1024
_LARGE_CANCELLATION = "after large terms cancel, which float32 rounds first"
_UNKNOWN_RANK = "the input's rank does not follow from the graph inputs' shapes: a constant with dims could change it"

_ARITHMETIC = ("Add", "Sub", "Mul", "Div", "Neg", "Pow")
# Ops of a constant subgraph evaluated where fold-constants has not run (``Sqrt(2)``).
_FOLDED = ("Sqrt", "Reciprocal", "Identity")
# GELU's subgraph has about ten nodes; a walk longer than this is some other computation.
_MAX_NODES = 24
# A term GELU needs must not be the small difference of large products either (x*a*b - x*d, a*b - d =
# 0.7071 from products of 1e6): float32 rounds each product by up to 2^-24 of it at each of the formula's
# at most _MAX_NODES ops, so it computes a coefficient to within its products' size times 24 * 2^-24. That
# is within the 1e-5 the coefficient is matched to where the size is at most this times the coefficient
# (about 7; a formula without cancellation has 1).
_NEEDED_SIZE = _REL_TOL / (_MAX_NODES * 2.0**-24)
_SMALL_DIFFERENCE = "coefficient is the small difference of large products: float32 does not compute it"
_MAX_POWER = 8
# A constant of many elements all one number is read as that number up to this size (a per-channel 0.5).
_MAX_UNIFORM = 1 << 16


@dataclass(frozen=True)
class _Form:
    """One GELU approximation: the activation node, its argument in x, the output in x and A, the fused op.

    ``reflection`` is A(-u) written in A(u), for an argument that is GELU's negated. A form with
    ``alpha_per_argument`` takes any argument ``c*x`` (``argument`` is a placeholder) and fuses with alpha
    ``alpha_per_argument * c``.
    """

    kind: str
    argument: _Coefficients
    output: _Coefficients
    fused: str
    reflection: _Coefficients
    attributes: tuple[tuple[str, float], ...] = ()
    alpha_per_argument: float | None = None


_HALF_X_TIMES_ONE_PLUS_A = {(1, 0): 0.5, (1, 1): 0.5}
_ODD = {(0, 1): -1.0}
_SIGMOID_REFLECTION = {(0, 0): 1.0, (0, 1): -1.0}
_TANH_ARGUMENT = {(1, 0): _SQRT_2_OVER_PI, (3, 0): _SQRT_2_OVER_PI * 0.044715}
# The forms each activation may be part of, tried in this order.
_FORMS = {
    "Erf": (_Form("erf GELU", {(1, 0): 1 / math.sqrt(2.0)}, _HALF_X_TIMES_ONE_PLUS_A, "Gelu", _ODD),),
    "Tanh": (
        _Form("tanh GELU", _TANH_ARGUMENT, _HALF_X_TIMES_ONE_PLUS_A, "FastGelu", _ODD),
        # QuickGELU written with a tanh: 0.5*x*(1 + tanh(c*x)) = x*sigmoid(2c*x).
        _Form(
            "QuickGELU as a tanh", {(1, 0): 0.851}, _HALF_X_TIMES_ONE_PLUS_A, "QuickGelu", _ODD, alpha_per_argument=2.0
        ),
    ),
    "Sigmoid": (
        # x*sigmoid(alpha*x), CLIP's alpha 1.702 or another: ONNX Runtime's kernel takes alpha as an attribute.
        _Form("QuickGELU", {(1, 0): 1.702}, {(1, 1): 1.0}, "QuickGelu", _SIGMOID_REFLECTION, alpha_per_argument=1.0),
        # The tanh GELU written with a sigmoid: 0.5*(1 + tanh(u)) = sigmoid(2u), so x*sigmoid(2u) is FastGelu.
        _Form(
            "tanh GELU as a sigmoid",
            {key: 2.0 * c for key, c in _TANH_ARGUMENT.items()},
            {(1, 1): 1.0},
            "FastGelu",
            _SIGMOID_REFLECTION,
        ),
    ),
}


@dataclass(frozen=True)
class _Match:
    x: ir.Value
    output: ir.Value
    form: _Form
    # The formula's nodes: those that go with the rewrite, and those kept because other nodes read their values.
    removed: frozenset[ir.Node] = frozenset()
    kept: frozenset[ir.Node] = frozenset()


class GeluFusion(FusionPass):
    """Rewrite GELU formulas into ``Gelu`` (erf), ``FastGelu`` (tanh) and ``QuickGelu`` (sigmoid), all com.microsoft.

    ``FastGelu`` also takes the tanh GELU written as ``x*sigmoid(2u)``; ``QuickGelu`` takes
    ``x*sigmoid(alpha*x)`` and ``0.5*x*(1 + tanh(alpha*x/2))`` with that alpha, for any alpha
    but 1 (SiLU is left alone).

    Matches what the module docstring lists, in any association of the products, and with
    the argument negated. Refuses, with a reason, a formula whose activation argument has
    GELU's terms but coefficients off by more than 1e-5 relative (``0.0447`` for
    ``0.044715``), one whose argument is GELU's but whose output is not
    (``0.6*x*(1 + erf(..))``) or reads a tensor other than the argument's, one whose
    activation (or a value computed from it) other nodes read, an input or constant known not to be
    float32, a constant of higher rank than the input (or with dims, where the input's rank does
    not follow from the graph inputs' declared shapes) or with a dim over 1 where the input's dim
    is not known from them to be that size (it would broadcast the output), terms that cancel only
    from products too large for float32 to cancel them, a coefficient GELU needs that is the small
    difference of large products (``x*a*b - x*d``), a constant or ``Pow`` exponent
    that is NaN or infinite, ``QuickGelu`` on a target without its kernel, and an ONNX
    ``Gelu`` with an unknown ``approximate``. A term GELU lacks that
    has not cancelled (``4e-8*x^5``) is kept: added after the formula, the formula is fused
    and the term stays; inside it, the output is refused with its polynomial quoted.
    """

    fused_ops = ((MS_DOMAIN, "Gelu"), (MS_DOMAIN, "FastGelu"))
    # QuickGelu is gated on its own (``_quick_gelu_missing``): a target without it still fuses the others.
    already_fused_ops = ((MS_DOMAIN, "QuickGelu"),)

    def fuse(self, model: ir.Model) -> int:
        graph = model.graph
        count = 0
        kept: list[frozenset[ir.Node]] = []
        known = _KnownConstants()
        shapes = _RunTimeShapes(model)
        for node in [n for n in graph if is_onnx_op(n, "Erf", "Tanh", "Sigmoid", "Gelu")]:
            count += self._record(graph, node, self._found(node, known, shapes), kept)
        self._note_kept(graph, kept)
        return count

    def _found(self, node: ir.Node, known: _KnownConstants, shapes: _RunTimeShapes) -> _Match | _Refusal | None:
        if node.op_type == "Gelu":
            found = _onnx_gelu(node)
            return _Refusal("ONNX Gelu", found) if isinstance(found, str) else found
        found = _recognise(node, known, shapes)
        if isinstance(found, _Match) and found.form.fused == "QuickGelu" and self._quick_gelu_missing():
            return _Refusal(found.form.kind, self._quick_gelu_missing())
        return found

    def _record(
        self, graph: ir.Graph, node: ir.Node, found: _Match | _Refusal | None, kept: list[frozenset[ir.Node]]
    ) -> int:
        """Rewrite a match, or count a refusal; the number of rewrites (0 or 1)."""
        if isinstance(found, _Refusal):
            self.refuse(*found)
            return 0
        if found is None:
            return 0
        _rewrite(graph, found)
        self.done("ONNX Gelu" if node.op_type == "Gelu" else found.form.kind)
        kept += [found.kept] if found.kept else []
        return 1

    def _note_kept(self, graph: ir.Graph, kept: list[frozenset[ir.Node]]) -> None:
        """Say which fused formulas left nodes of theirs in place, for the values other nodes read.

        Counted at the end: a node another fused formula read too (``x / sqrt(2)`` of two GELUs) is gone by then.
        """
        # A node is still in the graph if it has not been removed, or read by what stays.
        remaining = [{node for node in nodes if node.graph is graph} for nodes in kept]
        remaining = [nodes for nodes in remaining if nodes]
        if remaining:
            total = len(set().union(*remaining))
            self.note(
                f"{len(remaining)} GELU fused beside {total} node(s) of their formula kept for other readers "
                "of their values (the fused op computes those values again)"
            )

    def _quick_gelu_missing(self) -> str | None:
        missing = unsupported_ops(((MS_DOMAIN, "QuickGelu"),), self.target)
        return f"target {self.target} has no kernel for {missing[0]}" if missing else None


def _onnx_gelu(node: ir.Node) -> _Match | str:
    approximate = node.attributes.get_string("approximate", "none")
    if approximate not in ("none", "tanh"):
        return f"unknown approximation {approximate!r}"
    if not is_float(node.inputs[0]):
        return "input is not float32"
    form = _FORMS["Tanh" if approximate == "tanh" else "Erf"][0]  # the tanh GELU (FastGelu), not QuickGELU
    return _Match(node.inputs[0], node.outputs[0], form)


class _Refusal(NamedTuple):
    kind: str
    # A candidate's reason is worked out only if it is the one reported (``_recognise``).
    reason: str | Callable[[], _Match | str]


def _recognise(activation: ir.Node, known: _KnownConstants, shapes: _RunTimeShapes) -> _Match | _Refusal | None:
    """The GELU around ``activation``; why a near miss is not one; or None if it is no GELU at all."""
    forms = _FORMS[activation.op_type]
    argument = activation.inputs[0]
    # Why candidates whose argument is GELU's (or would be, but for a NaN or a large cancellation) failed,
    # and why arguments were near misses: the farthest candidate's, whose polynomial covers the most.
    reasons: list[_Refusal] = []
    near_misses: list[_Refusal] = []
    # x is where the argument's variable operands lead: the nearest value whose polynomial is GELU's argument
    # and after which the output is GELU's (a value before x, such as the MatMul ahead of a bias Add, is no x:
    # the bias shows; a value after it, such as x*1 when the output reads x, leaves the output no polynomial).
    below = _values_below(argument, known)
    after = _values_after(activation.outputs[0])
    # Every form's output has an x*A term, which only a product of the activation's chain with a tensor can
    # give: without one no output is GELU's, for any x, and a candidate's output is walked only to say why
    # (once, for the reason reported). A Tanh whose chain only adds is otherwise walked for each x below it.
    multiplied = _multiplies_activation(activation.outputs[0], after, known)
    # The output polynomials the last QuickGELU candidate's walk found, by form and sign (see _ScaledOutputs).
    scalings: dict[tuple[str, int], _ScaledOutputs] = {}
    unread = True
    for index, x in enumerate(below):
        # The output multiplies x by the activation, so it reads x or a value between x and the argument
        # outside the argument's chain. Every value of a chain of scalings (x * k * k ...) is some c*x, and
        # without this each would be tried as a QuickGELU's x, its output walked for each.
        unread = unread and not _read_beside_chain(x, below[index - 1] if index else None, activation)
        inner = _Polynomials(known, x)
        polynomial = inner.of(argument)
        if polynomial is None:
            reasons += [_Refusal(forms[0].kind, inner.refusal)] if inner.refusal else []
            continue
        for form in forms:
            # A QuickGELU tried where no product follows its activation could only be reported, and that only
            # near CLIP's alpha (below): a chain of scalings before a Tanh that is only added to is not tried.
            if form.alpha_per_argument is not None and (
                unread or not (multiplied or _near_clips_alpha(form, polynomial))
            ):
                continue
            candidates = _instances(polynomial, form, _REL_TOL)
            if not candidates:
                near = _instances(polynomial, form, _NEAR_MISS_TOL) if form.alpha_per_argument is None else []
                if _instances(polynomial, form, _REL_TOL, cancelled_size=math.inf):
                    needed = _small_difference(polynomial, form.argument)
                    reason = f"the argument is GELU's only {_LARGE_CANCELLATION}"
                    reason = f"the argument's {needed} {_SMALL_DIFFERENCE}" if needed else reason
                    reasons.append(_Refusal(form.kind, reason))
                elif near and not (is_float(x) and inner.float32):
                    # float16 and float64 constants round GELU's differently: the dtype is the reason.
                    near_misses.append(_Refusal(form.kind, "input is not float32"))
                elif near:
                    expected = {key: near[0][1] * c for key, c in form.argument.items()}
                    shown = f"the argument is {_show(polynomial)}, GELU's is {_show(expected)}"
                    near_misses.append(_Refusal(form.kind, shown))
            failures = []
            for instance, sign in candidates:
                walk = functools.partial(_output_of, activation, x, inner, instance, sign, after, shapes)
                scaled = scalings.get((form.kind, sign)) if form.alpha_per_argument is not None else None
                if not multiplied or (scaled is not None and scaled.misses(polynomial, form)):
                    failures.append(_Refusal(form.kind, walk))
                    continue
                polynomials: list[_Poly | None] = []
                found = walk(polynomials)
                if isinstance(found, _Match):
                    return found
                failures.append(_Refusal(form.kind, found))
                if form.alpha_per_argument is not None:
                    scalings[form.kind, sign] = _ScaledOutputs(polynomial, polynomials)
            # The likelier reading's. Any tensor times a sigmoid of it scaled is x*sigmoid(alpha*x) for some alpha
            # (a gate): only one near CLIP's alpha is worth a word.
            if failures and (form.alpha_per_argument is None or _near_clips_alpha(form, polynomial)):
                reasons += failures[:1]
    refusal = (reasons or near_misses or [None])[-1]
    if refusal is not None and callable(refusal.reason):
        reason = refusal.reason()
        if isinstance(reason, _Match):
            # A candidate is left unwalked only where no output can be GELU's (no product, or _ScaledOutputs).
            raise AssertionError(f"a candidate ruled out unwalked is a GELU: {reason}")
        refusal = _Refusal(refusal.kind, reason)
    return refusal


def _multiplies_activation(activation: ir.Value, after: list[ir.Value], known: _KnownConstants) -> bool:
    """False if no value of ``after`` (the activation's chain, see ``_values_after``) can hold a term in x*A.

    Only the chain's values are computed from A (each is its next node's only input read from A), so the
    other operand of a chain node is free of A. ``Add``, ``Sub``, ``Neg``, and ``Mul`` or ``Div`` by a
    constant keep a value ``c*A + f(x)``; only a ``Mul`` by a tensor, or a power of the chain (``Pow``,
    ``Mul(v, v)``), multiplies A by x. ``Div`` by a non-constant is no polynomial.
    """
    previous = activation
    for value in after:
        node = value.producer()
        if node.op_type == "Pow":
            return True
        if node.op_type == "Mul":
            other = [operand for operand in node.inputs if operand is not previous]
            if len(other) != 1 or known.array(other[0]) is None:
                return True
        previous = value
    return False


def _read_beside_chain(value: ir.Value, above: ir.Value | None, activation: ir.Node) -> bool:
    """True if ``value`` is read by a node other than the next one up the argument's chain (``above``'s
    producer, or the activation for the argument itself), or is a graph output."""
    chain = activation if above is None else above.producer()
    return value.is_graph_output() or any(use.node is not chain for use in value.uses())


def _near_clips_alpha(form: _Form, argument: _Poly) -> bool:
    """True if ``form`` (one with ``alpha_per_argument``) would take the argument ``c*x`` with an alpha near 1.702."""
    c = argument.get((1, 0), _Term(0.0, 0.0)).value
    return math.isclose(abs(form.alpha_per_argument * c), 1.702, rel_tol=_NEAR_MISS_TOL)


def _instances(
    polynomial: _Poly, form: _Form, rel_tol: float, cancelled_size: float = _CANCELLED_SIZE
) -> list[tuple[_Form, int]]:
    """The forms the argument ``polynomial`` fits, each with its sign (see ``_sign``), the likelier first.

    A form with ``alpha_per_argument`` fits ``c*x`` for any c whose alpha float32 holds but 1 (SiLU,
    x*sigmoid(x), is no GELU), as itself with that alpha, or as GELU's negated with alpha negated.
    """
    if form.alpha_per_argument is None:
        sign = _sign(polynomial, form.argument, rel_tol, cancelled_size)
        return [] if sign is None else [(form, sign)]
    c = polynomial.get((1, 0), _Term(0.0, 0.0)).value
    alpha = form.alpha_per_argument * c
    if c == 0.0 or not np.isfinite(np.float32(alpha)) or math.isclose(abs(alpha), 1.0, rel_tol=_REL_TOL):
        return []
    if not _close(polynomial, {(1, 0): c}, rel_tol, cancelled_size):
        return []
    found = [
        (dataclasses.replace(form, argument={(1, 0): sign * c}, attributes=(("alpha", sign * alpha),)), sign)
        for sign in (1, -1)
    ]
    return found if c > 0 else found[::-1]


class _ScaledOutputs:
    """The output polynomials a QuickGELU candidate's walk found, to rule out the candidates below it unwalked.

    A QuickGELU candidate's argument is ``c*x``. Below a candidate x' whose argument is ``c'*x'``, each
    candidate x (its argument ``c*x``) has ``x' = (c/c')*x`` exactly: every path from the argument to x
    passes x' (the argument is a polynomial in x'). So each output's polynomial in x is its polynomial in
    x' with x' replaced by ``(c/c')*x``, its x*A coefficient that of x' times ``c/c'``. Where that is
    far from the form's (1e-3 relative, a hundred times the match's 1e-5 and far above float64's rounding
    of a coefficient whose products are no larger than a thousand times it) for every output, no output
    is GELU's in x, and x is not walked: a Tanh after twenty scalings multiplied by the last is otherwise
    walked for each of them.
    """

    def __init__(self, argument: _Poly, outputs: list[_Poly | None]) -> None:
        self._c = argument[1, 0].value
        self._outputs = outputs

    def misses(self, argument: _Poly, form: _Form) -> bool:
        """True if no output can be ``form``'s in the x whose argument is ``argument`` (some ``c*x``)."""
        if not self._outputs or any(polynomial is None for polynomial in self._outputs):
            return False
        ratio = argument[1, 0].value / self._c
        expected = form.output[1, 1]
        for polynomial in self._outputs:
            term = polynomial.get((1, 1))
            if term is None:
                continue  # no x*A term in x', none in x
            if term.size * abs(ratio) > 1e3 * abs(expected):
                return False
            if math.isclose(term.value * ratio, expected, rel_tol=1e-3):
                return False
        return True


def _output_of(
    activation: ir.Node,
    x: ir.Value,
    inner: _Polynomials,
    form: _Form,
    sign: int,
    outputs: list[ir.Value],
    shapes: _RunTimeShapes,
    polynomials: list[_Poly | None] | None = None,
) -> _Match | str:
    """The last of ``outputs`` (``_values_after`` the activation) that is GELU's output polynomial, checked; or
    why there is none. ``polynomials``, if given, receives each output's polynomial (None where it is none).

    ``sign`` is -1 where the argument is GELU's negated: A is then written with the form's reflection.
    """
    name = activation.op_type.lower()
    written_as = {(0, 1): 1.0} if sign > 0 else form.reflection
    found = None
    # Each output is computed from the one before it, so one walk serves them all: what it has taken when
    # it reaches an output (nodes, constants) is what that output takes. Walked afresh per output, a long
    # chain after every Tanh of a model cost its length squared.
    outer = _Polynomials(inner.known, x, activation.outputs[0], written_as, inner)
    walked = []
    for output in outputs:
        polynomial = outer.of(output)
        walked.append((output, polynomial, frozenset(outer.nodes), list(outer.constants), outer.float32))
    if polynomials is not None:
        polynomials += [polynomial for _, polynomial, *_ in walked]
    refusal, foreign = outer.refusal, outer.foreign
    for output, polynomial, taken, constants, float32 in reversed(walked):
        if polynomial is None:
            continue
        if not _close(polynomial, form.output, _REL_TOL):
            found = found or polynomial
            continue
        nodes = inner.nodes | taken | {activation}
        kept = _kept(nodes, output)
        if activation in kept:
            return _activation_read_elsewhere(activation, nodes, output)
        if not (is_float(x) and inner.float32 and float32):
            return "input is not float32"
        if reason := _broadcasts(inner.constants + constants, x, shapes):
            return reason
        return _Match(x, output, form, frozenset(nodes - kept), frozenset(kept))
    # The farthest polynomial that reads x says what the output is; one that does not (1 + erf(..)) says
    # less than the tensor that the next node reads in x's stead.
    if found is not None and _close(found, form.output, _REL_TOL, cancelled_size=math.inf):
        needed = _small_difference(found, form.output, name)
        return (
            f"the output's {needed} {_SMALL_DIFFERENCE}"
            if needed
            else f"the output is GELU's only {_LARGE_CANCELLATION}"
        )
    if found is not None and any(i for i, _ in found):
        return f"the output is {_show(found, name)}, GELU's is {_show(form.output, name)}"
    if refusal is not None:
        return refusal
    if foreign is not None:
        return f"the argument is GELU's of {x.name!r}, but the output reads {foreign.name!r}"
    if not outputs and len(activation.outputs[0].uses()) > 1:
        return f"the {name}'s output has more than one user"
    if found is None:
        return f"the argument is GELU's, but nothing after the {name} is a polynomial in x and {name}"
    return f"the output is {_show(found, name)}, GELU's is {_show(form.output, name)}"


class _Polynomials:
    """Values as polynomials in ``x`` and ``activation`` (None: x alone), with the nodes and constants they took.

    ``activation`` is written as ``written_as`` (A, or the form's reflection). Where a value is no
    polynomial, ``refusal`` says why if that is worth a word (a NaN constant), and ``foreign`` holds
    the first tensor met that is neither x, the activation nor computed by arithmetic from constants.
    """

    def __init__(
        self,
        known: _KnownConstants,
        x: ir.Value,
        activation: ir.Value | None = None,
        written_as: _Coefficients | None = None,
        argument: _Polynomials | None = None,
    ) -> None:
        self.known = known
        self._x = x
        self._activation = activation
        self._written_as = {key: _exactly(c) for key, c in (written_as or {(0, 1): 1.0}).items()}
        # The polynomials the argument's walk in the same x found (no value of it is computed from the activation):
        # their nodes and constants are the argument's, already the formula's. An output reading the argument
        # (a Tanh after a chain of scalings, multiplied by its argument) is otherwise walked down it again.
        self._memo: dict[int, _Poly | None] = (
            {key: found for key, found in argument._memo.items() if found is not None} if argument else {}
        )
        self.nodes: set[ir.Node] = set()
        self.constants: list[ir.Value] = []
        self.refusal: str | None = None
        self.foreign: ir.Value | None = None
        # False once an operand is a constant known to be other than float32 (x's dtype may be unknown).
        self.float32 = True

    def of(self, value: ir.Value | None) -> _Poly | None:
        if value is None:
            return None
        if value is self._x:
            return {(1, 0): _exactly(1.0)}
        if value is self._activation:
            return self._written_as
        if id(value) not in self._memo:
            polynomial = self._compute(value)
            # Float64 overflows only past 1e308 (about eight float32 maxima multiplied); inf - inf would be NaN.
            if polynomial is not None and not all(math.isfinite(term.size) for term in polynomial.values()):
                self.refusal = self.refusal or "the polynomial's coefficients overflow float64"
                polynomial = None
            self._memo[id(value)] = polynomial
        return self._memo[id(value)]

    def _compute(self, value: ir.Value) -> _Poly | None:
        number = self._constant(value)
        if number is not None:
            return {(0, 0): _exactly(number)} if self._finite(number, "a constant") else None
        node = value.producer()
        if not is_onnx_op(node, *_ARITHMETIC):
            self.foreign = self.foreign or value
            return None
        if len(self.nodes) >= _MAX_NODES:
            return None
        self.nodes.add(node)
        if node.op_type == "Pow":
            exponent = self._constant(node.inputs[1], exponent=True)
            if exponent is not None and not self._finite(exponent, "a Pow's exponent"):
                return None
            base = self.of(node.inputs[0])
            if base is None or exponent not in (1.0, 2.0, 3.0, 4.0):
                return None
            return _power(base, int(exponent))
        operands = [self.of(v) for v in node.inputs]
        if any(p is None for p in operands):
            return None
        if node.op_type == "Neg":
            return _negated(operands[0])
        first, second = operands
        if node.op_type == "Add":
            return _sum(first, second)
        if node.op_type == "Sub":
            return _sum(first, _negated(second))
        if node.op_type == "Mul":
            return _product(first, second)
        divisor = second[0, 0] if set(second) == {(0, 0)} else None  # Div: by a constant only
        if divisor is None or divisor.value == 0.0:
            return None
        return {
            key: _Term(
                term.value / divisor.value,
                term.size / abs(divisor.value),
                _Exact(_combined, operator.truediv, term.exact, divisor.exact),
            )
            for key, term in first.items()
        }

    def _constant(self, value: ir.Value | None, exponent: bool = False) -> float | None:
        found = self.known.number(value)
        if found is None:
            return None
        number, float32 = found
        self.constants.append(value)
        self.float32 = self.float32 and (exponent or float32)
        return number

    def _finite(self, number: float, what: str) -> bool:
        if not math.isfinite(number):
            self.refusal = self.refusal or f"{what} is {number}"
        return math.isfinite(number)


class _KnownConstants:
    """The constants of one pass run, each read once: the values below an activation are walked again for each
    candidate x (and once more for each output), and would read each constant's tensor again each time."""

    def __init__(self) -> None:
        self._arrays: dict[ir.Value, np.ndarray | None] = {}
        self._numbers: dict[ir.Value, tuple[float, bool] | None] = {}

    def array(self, value: ir.Value | None) -> np.ndarray | None:
        """``_constant_array(value)``."""
        if value is None:
            return None
        if value not in self._arrays:
            self._arrays[value] = _constant_array(value)
        return self._arrays[value]

    def number(self, value: ir.Value | None) -> tuple[float, bool] | None:
        """The one number a constant holds, and whether it is stored as float32; None if it is no constant or holds
        several numbers. A tensor whose every element is one number (0.5 stored per channel) is that number."""
        if value is None:
            return None
        if value not in self._numbers:
            array = self.array(value)
            number = None
            if array is not None and 0 < array.size <= _MAX_UNIFORM:
                first = array.reshape(-1)[0]
                if array.size == 1 or np.all(array == first) or np.all(np.isnan(array)):
                    number = (float(first), array.dtype == np.float32)
            self._numbers[value] = number
        return self._numbers[value]


def _constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's contents if it is a constant, or a constant's root, inverse or copy left unfolded.

    Arithmetic on constants needs no evaluating: its polynomial is a constant. Only those ops are
    evaluated (``folded_constant``), so a formula's chain is not walked down again at each value.
    """
    if value is not None and is_onnx_op(value.producer(), *_FOLDED):
        return folded_constant(value)
    return constant_array(value)


def _values_below(value: ir.Value, known: _KnownConstants) -> list[ir.Value]:
    """``value`` and what it is computed from along its first non-constant operands, nearest first."""
    found = [value]
    while len(found) < _MAX_NODES:
        node = found[-1].producer()
        if not is_onnx_op(node, *_ARITHMETIC):
            break
        operand = next((v for v in node.inputs if v is not None and known.array(v) is None), None)
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


def _read_outside(value: ir.Value, nodes: set[ir.Node]) -> bool:
    return value.is_graph_output() or any(use.node not in nodes for use in value.uses())


def _kept(nodes: set[ir.Node], output: ir.Value) -> set[ir.Node]:
    """The nodes that must stay beside the fused op: those computing a value other than ``output`` that is
    read outside ``nodes`` (or is a graph output), and those of ``nodes`` that they are computed from."""
    stack = [node for node in nodes if any(v is not output and _read_outside(v, nodes) for v in node.outputs)]
    kept: set[ir.Node] = set()
    while stack:
        node = stack.pop()
        if node not in kept:
            kept.add(node)
            stack += [v.producer() for v in node.inputs if v is not None and v.producer() in nodes]
    return kept


def _activation_read_elsewhere(activation: ir.Node, nodes: set[ir.Node], output: ir.Value) -> str:
    """Why a formula whose activation must stay is refused: the fused op would compute it a second time."""
    name = activation.op_type.lower()
    if _read_outside(activation.outputs[0], nodes):
        where = "a graph output" if activation.outputs[0].is_graph_output() else "read outside the formula"
        return f"the {name}'s output is {where}: the fused op would compute the {name} again"
    return f"a value computed from the {name} is read outside the formula: the fused op would compute the {name} again"


def _rewrite(graph: ir.Graph, match: _Match) -> None:
    form = match.form
    attributes = [ir.AttrFloat32(name, value) for name, value in form.attributes]
    fused = ir.Node(MS_DOMAIN, form.fused, [match.x], attributes)
    graph.insert_after(match.output.producer(), fused)
    replace_value(match.output, fused.outputs[0], inherit=True)
    # Now, not at the pass's end: a later formula sharing a kept node sees only the readers still there.
    graph.remove(match.removed, safe=True)


@functools.lru_cache(maxsize=1024)
def _exactly(number: float) -> _Term:
    """A constant term: ``number`` as stored (a float32 constant is exact as a float, and as a fraction)."""
    return _Term(number, abs(number), _Exact.known(Fraction(number)))


def _carried(exact: Fraction | None) -> Fraction | None:
    """``exact``, or None once its numerator and denominator are too long to carry on cheaply (a long chain of
    products of constants): such a term can no longer be shown to cancel, and a term GELU lacks then refuses."""
    if exact is None or exact.numerator.bit_length() + exact.denominator.bit_length() > _MAX_EXACT_BITS:
        return None
    return exact


def _combined(operation: Callable[..., Fraction], *operands: _Exact) -> Fraction | None:
    """``operation`` on the operands' exact values, carried (``_carried``); None if one of them is."""
    values = [operand() for operand in operands]
    if any(value is None for value in values) or (operation is operator.truediv and values[1] == 0):
        return None
    return _carried(operation(*values))


def _sum_of_products(pairs: list[tuple[_Term, _Term]]) -> Fraction | None:
    """The exact sum of the pairs' products, each partial sum carried (``_carried``), in the order given."""
    total: Fraction | None = Fraction(0)
    for a, b in pairs:
        first, second = a.exact(), b.exact()
        if total is None or first is None or second is None:
            return None
        total = _carried(total + first * second)
    return total


def _negated(polynomial: _Poly) -> _Poly:
    return {
        key: _Term(-term.value, term.size, _Exact(_combined, operator.neg, term.exact))
        for key, term in polynomial.items()
    }


def _sum(first: _Poly, second: _Poly) -> _Poly:
    total = dict(first)
    for key, term in second.items():
        value, size, exact = total.get(key, _Term(0.0, 0.0))
        both = _Exact(_combined, operator.add, exact, term.exact)
        total[key] = _Term(value + term.value, size + term.size, both)
    return total


def _product(first: _Poly, second: _Poly) -> _Poly | None:
    pairs: dict[tuple[int, int], list[tuple[_Term, _Term]]] = {}
    for (i, j), a in first.items():
        for (k, m), b in second.items():
            if i + k > _MAX_POWER or j + m > _MAX_POWER:
                return None
            pairs.setdefault((i + k, j + m), []).append((a, b))
    result: _Poly = {}
    for key, products in pairs.items():
        value = size = 0.0
        for a, b in products:
            value += a.value * b.value
            size += a.size * b.size
        result[key] = _Term(value, size, _Exact(_sum_of_products, products))
    return result


def _power(base: _Poly, exponent: int) -> _Poly | None:
    result: _Poly | None = base
    for _ in range(exponent - 1):
        result = _product(result, base) if result is not None else None
    return result


def _sign(
    polynomial: _Poly, expected: _Coefficients, rel_tol: float, cancelled_size: float = _CANCELLED_SIZE
) -> int | None:
    """1 if the polynomial is ``expected`` (see ``_close``), -1 if it is ``expected`` negated, else None."""
    for sign in (1, -1):
        if _close(polynomial, {key: sign * c for key, c in expected.items()}, rel_tol, cancelled_size):
            return sign
    return None


def _close(polynomial: _Poly, expected: _Coefficients, rel_tol: float, cancelled_size: float = _CANCELLED_SIZE) -> bool:
    """True if the polynomial has ``expected``'s terms, each within ``rel_tol`` and from products of at most
    ``_NEEDED_SIZE`` times it, and every other term cancelled from products of at most ``cancelled_size`` times
    ``expected``'s largest coefficient. An infinite ``cancelled_size`` takes any cancellation (to say why not)."""
    scale = max(abs(c) for c in expected.values())
    for key in polynomial.keys() | expected.keys():
        term = polynomial.get(key, _Term(0.0, 0.0))
        if key in expected:
            if not math.isclose(term.value, expected[key], rel_tol=rel_tol):
                return False
            if math.isfinite(cancelled_size) and term.size > _NEEDED_SIZE * abs(term.value):
                return False
        # The size first: it is at hand, the exact value may have to be worked out.
        elif term.size > cancelled_size * scale or term.exact() != 0:
            return False
    return True


def _small_difference(polynomial: _Poly, expected: _Coefficients, activation: str = "") -> str | None:
    """The first of ``expected``'s terms that the polynomial computes as the small difference of large products
    (see ``_NEEDED_SIZE``), shown as ``x`` or ``x*erf(..)``; None if there is none."""
    for key in sorted(expected, key=lambda key: (key[1], key[0])):
        term = polynomial.get(key)
        if term is not None and term.size > _NEEDED_SIZE * abs(term.value):
            return _show({key: 1.0}, activation).removeprefix("1*")
    return None


def _show(polynomial: _Poly | _Coefficients, activation: str = "") -> str:
    """``0.797885*x + 0.0356774*x^3``: the polynomial as a report reads it."""
    terms = []
    for (i, j), coefficient in sorted(polynomial.items(), key=lambda item: (item[0][1], item[0][0])):
        value = coefficient.value if isinstance(coefficient, _Term) else coefficient
        if value == 0.0:
            continue
        factors = [f"{value:.6g}"]
        factors += [f"x^{i}" if i > 1 else "x"] if i else []
        factors += [f"{activation}(..)" + (f"^{j}" if j > 1 else "")] if j else []
        terms.append("*".join(factors))
    return " + ".join(terms) or "0"


def _broadcasts(constants: list[ir.Value], x: ir.Value, shapes: _RunTimeShapes) -> str | None:
    """Why a constant would give the output a shape other than ``x``'s, or None.

    One with more dims than ``x`` adds dims; a dim over 1 stretches ``x``'s where that is not
    known to be the same size. ``x``'s shape is the one that holds at run time (``_RunTimeShapes``):
    where its rank is unknown, any constant with dims is refused. (A graph output's declared rank
    once stood in for it: ONNX Runtime does not check it, and a ``[1, 1]`` constant fused on an ``x``
    of rank 1 under an output declared ``[a, b, c]`` changed the output's shape; a review.)
    """
    arrays = [_constant_array(value).shape for value in constants]
    rank = max((len(shape) for shape in arrays), default=0)
    if rank == 0:
        return None
    shape = shapes.of(x)
    if shape is None:
        return _UNKNOWN_RANK
    if rank > shape.rank():
        return "a constant has more dims than the input: the output's shape would change"
    for constant in arrays:
        for axis, size in enumerate(constant, start=shape.rank() - len(constant)):
            if size != 1 and shape[axis] != size:
                return (
                    f"a constant of shape {list(constant)} may stretch the input's shape {shape}: "
                    "the output's would change"
                )
    return None


class _RunTimeShapes:
    """Shapes of the main graph's values that hold whatever ONNX Runtime is fed, for one pass run.

    A graph input's declared shape does: ONNX Runtime refuses a feed of another rank or another
    size where a dim is fixed (and an overridable initializer that does not fit it), but for a
    declared rank 0, which it runs with a tensor of any rank. Any other value's is what ONNX
    shape inference derives from those declarations and the graph alone, on a clone with every
    other recorded shape removed: a shape written on a value (``value_info``, a graph output's
    declaration) is an exporter's or a user's word that ONNX Runtime does not check (a graph
    output declared ``[a, b, c]`` and computed ``[5]`` only logs a warning). Inference runs
    through ``_inferred_shapes`` (contrib ops stood in for, lossy Casts hidden from data
    propagation), once per run and only if a value other than an input is asked for; values
    fused later keep their names and their shapes, so what it found still holds.
    """

    def __init__(self, model: ir.Model) -> None:
        self._model = model
        self._inferred: dict[str, ir.Shape] | None = None

    def of(self, value: ir.Value) -> ir.Shape | None:
        """``value``'s shape as it holds at run time; None where its rank is not known so."""
        if value.is_graph_input():
            return _checked(value)
        if self._inferred is None:
            self._inferred = _inferred_from_inputs(self._model)
        return self._inferred.get(value.name) if value.name else None


def _checked(value: ir.Value) -> ir.Shape | None:
    """A graph input's declared shape where ONNX Runtime checks a feed against it: of rank 1 or more, a dim
    declared negative (tf2onnx's -1 for "any", which ONNX Runtime takes as any size) named afresh instead."""
    if value.shape is None or value.shape.rank() == 0:
        return None
    dims = [
        ir.SymbolicDim(f"_unchecked_{value.name}_{axis}") if isinstance(dim, int) and dim < 0 else dim
        for axis, dim in enumerate(value.shape)
    ]
    return ir.Shape(dims)


def _inferred_from_inputs(model: ir.Model) -> dict[str, ir.Shape]:
    """The main graph's shapes, by name, as ONNX shape inference derives them from what ONNX Runtime checks."""
    # Imported here: a graph whose GELU constants are all scalars never loads shape inference.
    from passes.fusion._inferred_shapes import inferred_shapes

    copy = model.clone()
    # A GELU fused earlier in this run is in the graph before the pass imports its domain (``FusionPass.call``):
    # ONNX's inference fails on an op of a domain not imported, and nothing would be inferred.
    copy.opset_imports.setdefault(MS_DOMAIN, 1)
    graph = copy.graph
    values = [*graph.inputs, *graph.initializers.values(), *(out for node in graph for out in node.outputs)]
    for value in values:
        if value.is_graph_input():
            value.shape = _checked(value)
        else:
            value.shape = value.const_value.shape if value.const_value is not None else None
    # Subgraphs' and functions' recorded shapes are unchecked words too (an If branch's declared output shape
    # becomes the If's output shape in ONNX's inference; a Loop's carried values change shape between
    # iterations), as are their inputs' but for a constant's.
    for inner in model_graphs(copy):
        if inner is graph:
            continue
        body = inner.graph if isinstance(inner, ir.Function) else inner
        own = [*body.inputs, *(out for node in body for out in node.outputs)]
        if isinstance(inner, ir.Graph):
            own += list(inner.initializers.values())
        for value in own:
            value.shape = value.const_value.shape if value.const_value is not None else None
    with inferred_shapes(copy):
        return {value.name: value.shape for value in values if value.name and value.shape is not None}

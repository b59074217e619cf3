"""Generated inputs drawn at the constants the graph compares them with.

Drawn as ``optimizer.inputs`` draws them (normal floats, integers 0 or 1, short words), an input the graph compares
with constants falls on one side of every comparison: no element is the category ``Where(Equal(x, "cat"), a, b)``
tests for, none passes a threshold ``x > 10``, a one-element switch ``If(Equal(sr, 16000))`` takes one branch in every
set, and a rewrite wrong on the other side verifies. Here those constants are found and the inputs drawn at them:

- An input of several elements (``_compared_keys``, drawn by ``_compared_drawn`` and ``_drawn_from_compared``): about
  half its elements are the constants an ``Equal`` compares it with, values each side of a constant threshold that
  the usual draws all fall on one side of (``_threshold_sides``: ``Less``, ``Greater``..., a ``Binarizer``, a
  ``Clip``, ``Max`` or ``Min`` bound, a tree ensemble's splits), or NaN where an ``IsNaN`` or an ``Imputer`` reads
  it; followed through ops that move its elements, casts, columns taken, string normalizing and joining, and
  arithmetic by constants (``_after_affine``; for an ``Equal``, only steps undone exactly: ``_shifted_by_constant``);
  a column compared with its own element of a constant row (``Equal(x[B, 4], reference[4])``) held at it in every
  other row (``_compared_row``), or, for a threshold row (``Less(x[B, 4], limits[4])``), just below it in every other
  row and just above in the others (``_threshold_row``).
- An input of one element (``compared_constants``, ``_select_compared_values``): held at each constant in turn in the
  sets of even seeds and at another value in the others, and an ``If`` condition held true, then false; the readers
  are found past copies, strings ops and arithmetic by one constant number or a ``Neg`` (``_compared_readers``).

- A float input a reduction reads whose result is compared with a constant threshold (``_hold_reductions``:
  ``if x.max() > 1: x /= 255``): moved, slice by slice, so that every reduction is below it in the sets of seed 0 and
  above it in those of seed 1 (``_REDUCTIONS``: shifted, or scaled for a norm). ``reduced_sides`` tells
  ``optimizer.api`` which side a set is on, and ``compared_lengths`` which lengths a graph compares with a constant
  (``Equal(Shape(x)[1], 16)``), for the verification sets it adds.

A constant compared with may be computed by a few nodes no fold wrote out (``x > Add(c, c)``: ``_constant_tensor``).
Two float inputs an ``Equal`` compares with each other (``equalled_inputs``) are verified on a set where they are
equal too (``optimizer.api``).

Both walks follow the same moves (``_COMPARED_MOVES``, and a ``Cast``), undo the same exact steps
(``_shifted_by_constant``) and take a comparison back through the same elementwise ops no constant undoes
(``_preimage``: ``Abs(x) > 10`` is ``x > 10`` or ``x < -10``; ``Sqrt``, ``Sigmoid``, a ``Mod``...); the many-element
one also reads columns, thresholds through a ``Scaler`` or past a clamp, and missing values, which the one-element one
does not.

``optimizer.inputs`` calls in here when it generates (lazily: a pass imported alone loads ``optimizer.inputs``, not
this module); ``optimizer.api`` adds the verification sets that hold the constants no generated set holds.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import operator
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import InlinePass

from optimizer.domains import MS_DOMAIN, ROTARY_INPUTS, is_onnx_domain
from optimizer.errors import RuntimeRefusedError
from optimizer.inputs import (
    _INDEX_PRESERVING_OPS,
    _WORDS,
    _as_input_columns,
    _constant_number,
    _index_range,
    _is_mask,
    _lookup_keys,
    _picked_columns,
    _uses_reached,
    runtime_inputs,
)
from optimizer.padding import nodes_and_subgraphs
from optimizer.runtime import constant_value, run_model


def _select_compared_values(model: ir.Model, inputs: dict[str, Any], seed: int) -> set[str]:
    """An integer, float or string input of one element that the model tests for equality with a constant (Silero VAD
    v4's ``If(Equal(sr, 16000))``, a switch's ``If(Equal(mode, "train"))``), through casts and reshapes, holds that
    constant in the sets of even seeds (the first binding) and another value in the others (the second binding):
    drawn alone, the branch the constant selects, the one real audio takes, never ran, and a rewrite wrong in it
    verified. One compared with a threshold (``If(Greater(speed, 1.5))``) holds a value each side of it in turn. In
    place; left as drawn where ONNX Runtime refuses the model on the constant (then each input's is tried on its own:
    one refused dropped every other input's, whose branch never ran). (Where there is no second binding,
    verification adds a set of the first's shapes drawn so: ``compared_constants``.) An input of one
    element that an ``If`` reads as its condition (Optimum's merged decoder's ``use_cache_branch``) is alike, its
    constant true; in the others, a value drawn as that constant (a flag drawn true twice, a 1 drawn where
    ``Equal(flag, 1)``) is moved off it, so the other branch runs: drawn, a flag took one value in every set (every
    dim fixed: the only set), and a rewrite wrong in the other branch verified. Returns the names of the inputs it
    set."""
    drawn = dict(inputs)
    held = compared_constants(model, inputs, seed)
    if seed % 2:
        held = {name: _other_than(value) for name, value in held.items() if np.array_equal(inputs[name], value)}
    inputs.update(held)
    if any(inputs[name] is not drawn[name] for name in drawn):
        try:
            run_model(model, inputs)
        except RuntimeRefusedError:  # the branch it selects needs other inputs than those drawn: left as drawn
            inputs.update(drawn)
            if len(held) > 1:  # each on its own: one input's refused constant does not drop another's
                for name, value in held.items():
                    try:
                        run_model(model, {**inputs, name: value})
                    except RuntimeRefusedError:
                        continue
                    inputs[name] = value
    return {name for name in drawn if inputs[name] is not drawn[name]}


def _other_than(value: np.ndarray) -> np.ndarray:
    """``value`` (one element, boolean, integer, float or string) moved off itself: negated, one nearer 0 (0 to 1), or
    another word, so a true ``If`` condition becomes false; an array of ``value``'s shape and type (of no dims too:
    numpy makes ``~value`` a scalar there, which ONNX Runtime refused, and a scalar flag drawn true stayed true)."""
    if value.dtype.kind == "b":
        return np.asarray(~value)
    if value.dtype.kind == "O":
        return np.full_like(value, next(word for word in _WORDS if word != value.reshape(-1)[0]))
    return np.asarray(value - 1 if value.reshape(-1)[0] > 0 else value + 1, dtype=value.dtype)


def compared_constants(model: ir.Model, inputs: Mapping[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Each integer, float or string input of one element in ``inputs`` that the model tests for equality with a
    constant (``If(Equal(mode, "train"))``, a temperature's ``Where(Equal(t, 0), greedy, sampled)``), through casts and
    reshapes, an ``Add``, ``Sub`` or ``Mul`` of a constant, a ``Div`` by one (``Equal(step + 1, 8)``) or a ``Neg`` and,
    for strings, a ``StringNormalizer`` or a ``StringConcat`` with a constant word (``_compared_readers``: the value
    they turn into the constant), as an array of that constant (of the input's shape and type; a float's, those its type
    holds exactly; where it is compared with several, ``Equal(code, 3)`` and ``Equal(code, 7)``, the ``seed // 2``-th of
    them, in turn; one compared with a threshold, ``If(Greater(speed, 1.5))``, also after arithmetic
    (``If(Greater(step - 10, 0))``), is held each side of it in turn, as ``_threshold_sides`` draws it, whatever the
    usual draws, after every constant ``Equal`` compares it with); and each boolean or integer input of one element
    that an ``If`` reads as its condition so, as an array of true (1)."""
    found = {}
    for value in runtime_inputs(model):
        array = inputs.get(value.name)
        if not isinstance(array, np.ndarray) or array.size != 1 or array.dtype.kind not in "iubfO":
            continue
        # Each constant once, in the order met: a dict (a list was quadratic in a one-hot's arange of 32000 ids). The
        # values each side of a threshold after them: before, a clamp's six met first held ``Equal(n, 7)``'s 7 past
        # the sets verification draws (``_COMPARED_TURNS``), and the branch it selects never ran.
        constants: dict[Any, None] = {}
        sided: dict[Any, None] = {}
        for node, index, undo, affine, preimages in _compared_readers(value):
            if node.op_type == "If" and is_onnx_domain(node) and index == 0 and not constants | sided and not undo:
                found[value.name] = np.ones_like(array)
                break
            sides = None
            if array.dtype.kind in "iuf" and (affine is not None or not undo or preimages):
                sides = _threshold_sides(node, index, array.dtype, straddled=True, affine=affine, preimages=preimages)
            if sides is not None:  # ``If(Greater(speed, 1.5))``: one set each side of it
                for features, drawn in sides:
                    sided.update(dict.fromkeys(drawn.tolist() if features is None else ()))
                continue
            if node.op_type != "Equal" or not is_onnx_domain(node) or len(node.inputs) != 2 or index > 1:
                continue
            tensor = _constant_tensor(node.inputs[1 - index])
            if tensor is None or array.dtype.kind == "b" or (array.dtype.kind == "O") != (tensor.dtype.is_string()):
                continue
            elements = tensor.numpy().reshape(-1)
            if array.dtype.kind == "O":
                elements = np.asarray([e.decode() if isinstance(e, bytes) else str(e) for e in elements], dtype=object)
            for step in undo:  # through an Add, a StringNormalizer...: the values it turns into them
                elements = step(elements)
            # Each element, where it is a vocabulary; filtered as arrays (element by element, a one-hot of a million
            # classes took 3 s a call, and verification calls it about ten times).
            if array.dtype.kind == "O":
                constants.update(dict.fromkeys(elements.tolist()))
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                numbers = elements if elements.dtype.kind in "iu" else elements.astype(np.float64)
                if array.dtype.kind == "f":  # those the input's type holds exactly
                    exact = numbers.astype(np.float64)
                    exact = exact[np.isfinite(exact) & (exact.astype(array.dtype) == exact)]
                    constants.update(dict.fromkeys(exact.tolist()))
                    continue
                info = np.iinfo(array.dtype)
                if numbers.dtype.kind in "iu":
                    kept = numbers[(numbers >= info.min) & (numbers <= info.max)]
                else:  # whole numbers within the type (its largest plus one is exact as a float)
                    kept = numbers[
                        np.isfinite(numbers)
                        & (np.floor(numbers) == numbers)
                        & (numbers >= info.min)
                        & (numbers < float(info.max) + 1)
                    ]
            constants.update(dict.fromkeys(kept.astype(array.dtype).tolist()))
        if held := list({**constants, **sided}):
            found[value.name] = np.full_like(array, held[(seed // 2) % len(held)])
    return found


def _compared_drawn(
    value: ir.Value,
    drawn: np.ndarray,
    rng: np.random.Generator,
    lookups: Sequence[tuple[tuple[int, ...] | None, np.ndarray, bool]] = (),
) -> np.ndarray:
    """``drawn`` with the constants ``value`` is compared with mixed in (``_drawn_from_compared``), where there are;
    where one of its ``lookups`` (``_lookup_keys``) fails on a value none of its keys (a ``OneHotEncoder`` of
    ``zeros=0``), only the constants that are keys of it: mixed in as they were, a sentinel compared beside such an
    encoder made ONNX Runtime refuse every generated input of a model it ran before."""
    compared = _compared_keys(value)
    for _, known, takes_unknown in lookups:
        if not takes_unknown:
            compared = [(columns, keys[np.isin(keys, known)]) for columns, keys in compared]
    compared = [(columns, keys) for columns, keys in compared if keys.size]
    return _drawn_from_compared(compared, drawn, rng) if compared else drawn


# Ops an input compared with constants may reach its comparison through unchanged, its elements only moved, taken or
# repeated, both walks (``_compared_keys``, ``_compared_readers``) follow: ``_INDEX_PRESERVING_OPS`` but ``Cast``
# (followed apart: not of strings). Until a review in session 72 the many-element walk followed neither a ``Slice`` nor
# a ``Tile``, which the one-element one did: tf2onnx's column ``x[:, 0:1]`` before ``Equal(..., 3)`` was never 3.
_COMPARED_MOVES = _INDEX_PRESERVING_OPS - {"Cast"}


def _abs_preimage(op: str, constants: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``Abs(x) op c`` as comparisons of ``x``: ``x op c`` and, mirrored, ``x op' -c`` (none for a negative ``c``)."""
    kept = constants[constants >= 0]
    negated = -kept[kept > 0] if kept.dtype.kind != "u" else kept[:0]
    return [(op, kept), (_MIRRORED.get(op, op), negated)]


def _monotone_preimage(
    inverse: Callable[[np.ndarray], np.ndarray],
    reached: Callable[[np.ndarray], np.ndarray],
    op: str,
    constants: np.ndarray,
) -> list[tuple[str, np.ndarray]]:
    """``f(x) op c`` as ``x op inverse(c)``, for an increasing ``f``, of the ``c`` that ``f`` reaches (``reached``: the
    others are on one side of every ``f(x)``)."""
    with np.errstate(all="ignore"):
        return [(op, inverse(constants[reached(constants)]))]


def _mod_preimage(divisor: float, fmod: int, op: str, constants: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``Mod(x, divisor) op c`` as ``x op c``, of the ``c`` that ``Mod`` keeps as they are (``x`` within one divisor
    of 0, on the side ``Mod`` gives: the divisor's, or with ``fmod`` either)."""
    if fmod:
        return [(op, constants[np.abs(constants) < abs(divisor)])]
    low, high = sorted((0.0, divisor))
    return [(op, constants[(constants >= low) & (constants <= high) & (constants != divisor)])]


def _rounded_preimage(op: str, constants: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``Floor(x) op c`` (or ``Ceil``, ``Round``) as ``x op c``: values 1 each side of ``c`` round each side of it;
    for an ``Equal``, the whole ``c`` alone (held at them, ``x`` rounds to them exactly)."""
    return [(op, constants[constants == np.round(constants)] if op == "Equal" else constants)]


def _erf_inverse(constants: np.ndarray) -> np.ndarray:
    """The ``x`` whose ``erf(x)`` is each of ``constants`` (within -1 and 1): numpy has no ``erf``, nor its inverse,
    and scipy is no dependency; Winitzki's closed form (within 2e-3), then Newton's steps on ``math.erf``."""
    y = np.asarray(constants, np.float64)
    a = 0.147
    log = np.log1p(-y * y)
    first = 2 / (np.pi * a) + log / 2
    x = np.sign(y) * np.sqrt(np.sqrt(first * first - log / a) - first)
    erf = np.vectorize(math.erf, otypes=[np.float64])
    for _ in range(4):
        slope = 2 / np.sqrt(np.pi) * np.exp(-x * x)
        x = np.where(slope > 0, x - (erf(x) - y) / np.where(slope > 0, slope, 1.0), x)
    return x


def _saturated(
    inverse: Callable[[np.ndarray], np.ndarray], ends: Mapping[float, float], constants: np.ndarray
) -> np.ndarray:
    """``inverse`` of ``constants``, but at each of ``ends``, a bound a float32 op reaches only by rounding (``erf``'s
    and ``tanh``'s 1 and -1, the sigmoid's 1), an ``x`` past which float32 gives it: ``Erf(x) >= 1`` holds from x = 4
    on, and was never drawn (its 1 was no value ``Erf`` reaches) until review s74 late3."""
    at_end = np.isin(constants, list(ends))
    found = inverse(np.where(at_end, 0, constants))
    for end, x in ends.items():
        found = np.where(constants == end, x, found)
    return found


# An elementwise op's preimage: from a comparison (``Equal`` or one of ``_SIDES``) with constants of its output to the
# comparisons of its input that tell the same elements apart.
_Preimage = Callable[[str, np.ndarray], list[tuple[str, np.ndarray]]]
# Elementwise ops no constant undoes that an input may reach a comparison through (``Abs(x) > 10``, ``Sqrt(x) > 3``,
# ``Sigmoid(x) > 0.999``, ``Where(Abs(x) < eps, ...)``; a ``Mod`` by a constant, ``_preimage``): each one's preimage,
# which both walks draw, and whether it is exact (an ``Equal`` after one that rounds, ``Equal(Exp(x), 100)``, is held
# at nothing). ``Relu`` and ``Sqrt`` keep the comparisons with values they reach (``Relu(x) > 0`` is ``x > 0``).
# Followed by neither walk until a review in session 73: the usual draws of ``Abs(x) > 10`` all fell on one side,
# and a rewrite wrong on the other verified. Arithmetic after one is a preimage too (``_preimage``), not ``affine``.
# ``Softplus``, ``Softsign``, ``Atan``, ``Sinh``, ``Floor``, ``Ceil`` and ``Round`` not until one in session 74
# (``Softplus(x) > 5``, ``Floor(x) > 5``: never reached); ``Erf`` (``_erf_inverse``) not until a later one
# (``Erf(x) > 0.999999``).
_PREIMAGES: dict[str, tuple[_Preimage, bool]] = {
    "Abs": (_abs_preimage, True),
    "Relu": (partial(_monotone_preimage, np.asarray, lambda c: c >= 0), True),
    "Sqrt": (partial(_monotone_preimage, np.square, lambda c: c >= 0), True),
    "Exp": (partial(_monotone_preimage, np.log, lambda c: c > 0), False),
    "Log": (partial(_monotone_preimage, np.exp, np.isfinite), False),
    "Sigmoid": (
        partial(
            _monotone_preimage,
            partial(_saturated, lambda c: np.log(c / (1 - c)), {1: 30.0}),
            lambda c: (c > 0) & (c <= 1),
        ),
        False,
    ),
    "Tanh": (
        partial(_monotone_preimage, partial(_saturated, np.arctanh, {-1: -10.0, 1: 10.0}), lambda c: np.abs(c) <= 1),
        False,
    ),
    "Softplus": (partial(_monotone_preimage, lambda c: c + np.log(-np.expm1(-c)), lambda c: c > 0), False),
    "Softsign": (partial(_monotone_preimage, lambda c: c / (1 - np.abs(c)), lambda c: np.abs(c) < 1), False),
    "Atan": (partial(_monotone_preimage, np.tan, lambda c: np.abs(c) < np.pi / 2), False),
    "Sinh": (partial(_monotone_preimage, np.arcsinh, np.isfinite), False),
    "Erf": (
        partial(_monotone_preimage, partial(_saturated, _erf_inverse, {-1: -5.0, 1: 5.0}), lambda c: np.abs(c) <= 1),
        False,
    ),
    "Floor": (_rounded_preimage, True),
    "Ceil": (_rounded_preimage, True),
    "Round": (_rounded_preimage, True),
}


def _preimage(
    node: ir.Node, index: int, arithmetic: bool = False
) -> tuple[_Preimage, Callable[[np.ndarray], np.ndarray]] | None:
    """Where ``node`` reads a number at input ``index`` with an op of ``_PREIMAGES``, a ``Mod`` by a constant not 0
    (``Equal(step % 4, 3)``), a ``Pow`` by one above 0 (``x ** 2 > 100``, and ``x * x``), a ``Reciprocal`` or a
    constant divided by it (``1 / x > 1e6``; these not until a review in session 74), a ``LeakyRelu`` or an ``Elu``
    of an ``alpha`` above 0 (taken back through its ``alpha``: ``LeakyRelu(x) > 5``, ``Elu(x) < -0.5``; not until a
    later one in session 74), or, with ``arithmetic`` (after such an op), adds, subtracts, multiplies or divides it by
    a constant number (``_after_affine``: ``Abs(x - mean) / std > 3``; not an integer ``Div``, which truncates), its
    preimage and the step that undoes it for an ``Equal`` (the values it turns into the keys exactly: none where it
    rounds); else None."""
    if arithmetic and (step := _after_affine(node, index, None)) is not None:
        scale, offset = _affine_numbers(step)
        divisor = node.inputs[1] if node.op_type == "Div" else None
        if _by_column(step) or not _keeps_rank(node, index) or not scale or _integer_constant(divisor):
            return None
        shift = _shifted_by_constant(node, index)
        return partial(_affine_preimage, scale, offset), shift[0] if shift is not None else _no_exact_preimage
    if not is_onnx_domain(node):
        return None
    if node.op_type == "Div" and index == 1 and (numerator := _constant_number(node.inputs[0])):
        return partial(_reciprocal_preimage, numerator), _no_exact_preimage  # ``1 / x > 1e6``
    if index > (node.op_type == "Mul"):  # ``x * x`` read at input 1 as well
        return None
    if node.op_type == "Mod":
        divisor = _constant_number(node.inputs[1]) if len(node.inputs) == 2 else None
        if not divisor or not np.isfinite(divisor):
            return None
        preimage, exact = partial(_mod_preimage, divisor, node.attributes.get_int("fmod", 0)), True
    elif node.op_type == "Mul" and len(node.inputs) == 2 and node.inputs[0] is node.inputs[1]:
        preimage, exact = partial(_power_preimage, 2.0), False  # ``x * x``: a square
    elif node.op_type == "Reciprocal":
        preimage, exact = partial(_reciprocal_preimage, 1.0), False
    elif node.op_type == "Pow":
        exponent = _constant_number(node.inputs[1]) if len(node.inputs) == 2 else None
        if exponent is None or not 0 < exponent < _SENTINEL_THRESHOLD:
            return None
        preimage, exact = partial(_power_preimage, exponent), False
    elif node.op_type in ("LeakyRelu", "Elu"):
        # Increasing for an ``alpha`` above 0 (below, a ``LeakyRelu`` turns at 0; of 0, it is a ``Relu``).
        alpha = node.attributes.get_float("alpha", 0.01 if node.op_type == "LeakyRelu" else 1.0)
        if node.op_type == "LeakyRelu" and alpha == 0:
            preimage, exact = _PREIMAGES["Relu"]
        elif not 0 < alpha < _SENTINEL_THRESHOLD:
            return None
        elif node.op_type == "LeakyRelu":
            preimage, exact = partial(_monotone_preimage, partial(_leaky_relu_inverse, alpha), np.isfinite), False
        else:
            reached = partial(np.less, -alpha)  # an ``Elu`` never reaches ``-alpha``
            preimage, exact = partial(_monotone_preimage, partial(_elu_inverse, alpha), reached), False
    elif node.op_type in _PREIMAGES:
        preimage, exact = _PREIMAGES[node.op_type]
    else:
        return None
    return preimage, partial(_equal_preimage, preimage) if exact else _no_exact_preimage


def _reciprocal_preimage(numerator: float, op: str, constants: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``numerator / x op c`` as ``x op' numerator / c`` on the side of 0 that holds it (mirrored: the quotient falls
    as ``x`` grows there, for a ``numerator`` above 0), of the ``c`` not 0: ``1 / x > 1e6`` is ``0 < x < 1e-6``."""
    kept = constants[constants != 0]
    return [(_MIRRORED.get(op, op) if numerator > 0 else op, numerator / kept)]


def _power_preimage(exponent: float, op: str, constants: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``Pow(x, exponent) op c``, for an ``exponent`` above 0, as comparisons of ``x``: of ``Abs(x)`` with the root of
    ``c`` for an even whole ``exponent`` (``x ** 2 > 100`` is ``x > 10`` or ``x < -10``), of ``x`` with it for an odd
    one, and for a fraction (``x`` from 0: below, NaN) with the roots of the ``c`` from 0."""
    with np.errstate(all="ignore"):
        if float(exponent).is_integer() and int(exponent) % 2 == 0:
            kept = constants[constants >= 0]
            return _abs_preimage(op, np.power(kept, 1 / exponent))
        if float(exponent).is_integer():
            return [(op, np.sign(constants) * np.power(np.abs(constants), 1 / exponent))]
        kept = constants[constants >= 0]
        return [(op, np.power(kept, 1 / exponent))]


def _leaky_relu_inverse(alpha: float, constants: np.ndarray) -> np.ndarray:
    """``LeakyRelu``'s inverse, for an ``alpha`` above 0: ``y`` from 0 up, ``y / alpha`` below."""
    return np.where(constants >= 0, constants, constants / alpha)


def _elu_inverse(alpha: float, constants: np.ndarray) -> np.ndarray:
    """``Elu``'s inverse, for an ``alpha`` above 0: ``y`` from 0 up, ``log(1 + y / alpha)`` below (``y`` above
    ``-alpha``)."""
    return np.where(constants >= 0, constants, np.log1p(np.maximum(constants / alpha, -1.0)))


def _affine_preimage(scale: float, offset: float, op: str, constants: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``scale * x + offset op c`` as ``x op c'`` (mirrored where ``scale`` is negative)."""
    return [(op if scale > 0 else _MIRRORED.get(op, op), (constants - offset) / scale)]


def _integer_constant(value: ir.Value | None) -> bool:
    """Whether ``value`` is a constant of an integer type."""
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return tensor is not None and tensor.dtype.is_integer()


def _equal_preimage(preimage: _Preimage, keys: np.ndarray) -> np.ndarray:
    """The values that an op of preimage ``preimage`` (``_preimage``) turns into one of ``keys``."""
    return np.concatenate([found for _, found in preimage("Equal", keys)])


def _no_exact_preimage(keys: np.ndarray) -> np.ndarray:
    """No value: an op that rounds (``Exp``) turns none it is known to into ``keys`` exactly."""
    return keys[:0]


def _compared_keys(value: ir.Value) -> list[tuple[tuple[int, ...] | None, np.ndarray]]:
    """The constants ``value`` is compared with by an ``Equal`` (a hand-written vocabulary, a category switch
    ``Where(Equal(x, "cat"), a, b)``, a code's ``If(Equal(code, 3))``), each as the columns of ``value`` compared
    (None: all of it, as in ``_lookup_keys``) and the constants' distinct elements that ``value``'s type holds exactly.
    Followed through ops that only move, take or repeat its elements (``_COMPARED_MOVES``: a ``Slice`` and a ``Tile``
    too since a review in session 72), a ``Cast`` (not of strings), a ``Gather`` of a column and, for
    strings, a ``StringNormalizer`` (a constant is then drawn as a word that folds to it, in the case the normalizer
    folds from half the time, never a stopword, which it would drop, and not at all where no word folds to it: "Cat"
    after ``LOWER``) or a ``StringConcat`` with a constant word (drawn without it, where the constant ends or starts
    with it). Drawn as before, no element equalled any of them: every row took one branch, and a rewrite that broke
    the other (or swapped two of the constants) verified. Numbers are followed through an ``Add``, ``Sub`` or ``Mul``
    of a constant of one element (of any rank) too, or a ``Div`` by one (``Equal(code + 1, 3)``: drawn as the values it
    turns into a constant exactly; missed until a review in session 71, and a swap of two such constants verified; a
    ``Div`` and a constant of two dims until a later one). ``RegexFullMatch`` and ``StringSplit`` are not followed.
    A number compared with a constant threshold (``_threshold_sides``: skl2onnx's ``Binarizer`` and
    ``KBinsDiscretizer``, ``torch.where(x > t, ...)``, a ``Clip`` bound, then what is compared after it, a tree
    ensemble's splits, column by column, through an ``ArrayFeatureExtractor`` too) is held so to values each side of
    it, where the usual draws all fall on one side: normal floats and codes of 0 or 1 never reached ``x > 10``, and a
    rewrite wrong on that side verified until review s71. So is one normalized by constants first (``(x - mean) /
    std``, skl2onnx's ``Scaler``: ``_after_affine``), drawn in its own units; and a float that an ``IsNaN`` or an
    ``Imputer`` reads is half missing (``_missing_keys``: NaN). Followed through an elementwise op no constant
    undoes too (``_preimage``: ``Abs(x) > 10``, drawn each side of 10 and of -10), and arithmetic after it."""
    kind = "O" if value.dtype == ir.DataType.STRING else value.dtype.numpy().kind
    found: list[tuple[tuple[int, ...] | None, np.ndarray]] = []
    # Each value reached, the columns of ``value`` it holds, whether they are still ``value``'s, the words that the
    # strings ops passed (last first) turn into a key, as functions of the keys, and what constants made of a number
    # on the way (``_after_affine``; None: nothing), whether each step is undone exactly, and the preimages of the ops
    # passed that no constant undoes (``_preimage``, last first), after which ``affine`` no longer changes.
    Undo = Callable[[np.ndarray], np.ndarray]
    pending: list[
        tuple[ir.Value, tuple[int, ...] | None, bool, tuple[Undo, ...], _Affine | None, bool, tuple[_Preimage, ...]]
    ]
    pending = [(value, None, True, (), None, True, ())]
    seen: set[int] = set()
    while pending:
        current, columns, columnar, undo, affine, exact, preimages = pending.pop()
        for node, index in current.uses():
            if id(node) in seen or not (is_onnx_domain(node) or node.domain == "ai.onnx.ml"):
                continue
            seen.add(id(node))
            # ``ai.onnx.ml``'s ops are read for an ``ArrayFeatureExtractor``'s columns and a ``Binarizer``'s threshold.
            onnx_op = is_onnx_domain(node)
            if (
                onnx_op
                and index == 0
                and (
                    node.op_type in _COMPARED_MOVES
                    or (node.op_type == "Cast" and kind != "O")
                    or (node.op_type == "StringNormalizer" and kind == "O")
                )
            ):
                kept = columnar and (
                    node.op_type in ("Identity", "Cast")
                    or (node.op_type == "StringNormalizer" and not node.attributes.get_strings("stopwords", []))
                )
                passed = (partial(_before_normalizer, node), *undo) if node.op_type == "StringNormalizer" else undo
                if kept or not _by_column(affine):  # a column's scale is lost where its columns move
                    pending.append((node.outputs[0], columns, kept, passed, affine, exact, preimages))
                continue
            if kind in "iuf" and (found_preimage := _preimage(node, index, bool(preimages))) is not None:
                preimage, step = found_preimage
                pending.append(
                    (node.outputs[0], columns, columnar, (step, *undo), affine, exact, (preimage, *preimages))
                )
                continue
            if (
                onnx_op
                and kind == "O"
                and node.op_type == "StringConcat"
                and (affix := _concatenated_word(node, index)) is not None
            ):
                steps = (partial(_without_affix, affix, index), *undo)
                pending.append((node.outputs[0], columns, columnar, steps, affine, exact, preimages))
                continue
            if index == 0 and columnar and (local := _picked_columns(node)) is not None:
                picked, kept_affine = _as_input_columns(local, columns), _picked_affine(affine, local)
                if picked is not None and (kept_affine is not None or affine is None):
                    pending.append((node.outputs[0], picked, True, undo, kept_affine, exact, preimages))
                continue
            if kind in "iuf" and columnar and not preimages:  # a row behind ``Abs``: drawn each side of any of it
                if (row := _threshold_row(value, columns, node, index, affine)) is not None:
                    found.append(row)
                    continue
            sides = (
                _threshold_sides(node, index, value.dtype.numpy(), affine=affine, preimages=preimages)
                if kind in "iuf"
                else None
            )
            if sides is not None:
                for features, drawn in sides:
                    held = columns if features is None else _as_input_columns(features, columns) if columnar else None
                    if drawn.size and (features is None or held is not None):
                        found.append((held, drawn))
                if node.op_type in ("Clip", "Max", "Min"):  # clamped, then compared: ``torch.clamp(x, 0, 1) > 0.5``
                    pending.append((node.outputs[0], columns, columnar, undo, affine, exact, preimages))
                continue
            if kind in "iuf" and not preimages and (after := _after_affine(node, index, affine)) is not None:
                # Normalized by constants, then compared: ``(x - mean) / std > t``, skl2onnx's ``Scaler`` before a tree;
                # or equalled where each step is undone exactly (``_shifted_by_constant``: ``Equal(code + 1, 3)``).
                # A constant of more dims (``x + [[1]]``) may add one to the output: ``value``'s columns move. Not
                # followed at all until a review in session 71 (late), though the ``Equal`` walk had followed it.
                shift = _shifted_by_constant(node, index) if exact else None
                kept = columnar and _keeps_rank(node, index)
                if kept or not _by_column(after):
                    steps = (shift[0], *undo) if shift is not None else undo
                    pending.append((node.outputs[0], columns, kept, steps, after, shift is not None, preimages))
                continue
            if kind in "iuf" and (missing := _missing_keys(node, index, kind)) is not None:
                if affine is None or np.isnan(missing).all():  # NaN stays NaN through arithmetic; a number does not
                    found.append((columns, missing))
                continue
            if (
                not exact  # an ``Equal`` after arithmetic not undone exactly: floats rounded on the way seldom equal it
                or not onnx_op
                or node.op_type != "Equal"
                or len(node.inputs) != 2
                or index > 1
                or node.inputs[1 - index] is None
            ):
                continue
            tensor = _constant_tensor(node.inputs[1 - index])
            if tensor is None or not tensor.size:
                continue
            if columnar and (row := _compared_row(value, columns, tensor, undo)) is not None:
                found.append(row)
                continue
            keys = tensor.numpy().ravel()
            if keys.dtype.kind in "OS":
                keys = np.asarray([k.decode() if isinstance(k, bytes) else k for k in keys])
            keys = _distinct(keys)
            if keys.dtype.kind == "V" and tensor.dtype.is_floating_point():  # bfloat16 (ml_dtypes' kind): as floats
                keys = keys.astype(np.float64)
            if kind == "O":
                keys = keys.astype(object) if keys.dtype.kind == "U" else None
                for step in undo if keys is not None else ():
                    keys = step(keys)
            elif keys.dtype.kind in "iuf":
                for step in undo:
                    keys = step(keys)
                with np.errstate(invalid="ignore", over="ignore"):
                    keys = keys[np.isfinite(keys) & (keys.astype(value.dtype.numpy()) == keys)]
            else:
                keys = None
            if keys is not None and keys.size:
                found.append((columns, keys))
    return found


def _compared_row(
    value: ir.Value, columns: tuple[int, ...] | None, tensor: ir.TensorProtocol, undo: Sequence[Callable]
) -> tuple[tuple[int, ...], np.ndarray] | None:
    """Where an ``Equal`` compares the columns ``columns`` of 2-D ``value`` (every one where None), still its own,
    element by element with a constant row (``Equal(x[B, 4], reference[4])``: column j with ``reference[j]``), those
    columns and the row of values of ``value``'s type that the steps passed (``undo``) turn into it, as an array of one
    row (``_drawn_from_compared`` holds whole rows at it); None where the constant is no such row, or an element has no
    such value. Drawn from all of the row's constants, a column held its own in about one row of 8, and a rewrite
    wrong for one column verified, until a review in session 72."""
    if (width := _row_width(value, columns, tensor)) is None:
        return None
    elements = tensor.numpy().reshape(-1)
    if elements.dtype.kind in "OS":
        elements = np.asarray([e.decode() if isinstance(e, bytes) else str(e) for e in elements], dtype=object)
    kind = "O" if value.dtype == ir.DataType.STRING else value.dtype.numpy().kind
    if (kind == "O") != (elements.dtype.kind == "O") or (kind != "O" and elements.dtype.kind not in "iuf"):
        return None
    row = []
    for at in range(elements.size):
        keys = elements[at : at + 1]
        for step in undo:
            keys = step(keys)
        if kind != "O":
            with np.errstate(invalid="ignore", over="ignore"):
                keys = keys[np.isfinite(keys) & (keys.astype(value.dtype.numpy()) == keys)]
        if not keys.size:
            return None
        row.append(keys[0])
    return tuple(range(width)) if columns is None else columns, np.asarray([row], dtype=object if kind == "O" else None)


def _row_width(value: ir.Value, columns: tuple[int, ...] | None, tensor: ir.TensorProtocol) -> int | None:
    """The columns of 2-D ``value`` compared (``columns``; every one where None) where constant ``tensor`` is a row of
    one element for each (shaped ``[1, ..., 1, width]``, two or more), else None."""
    dims, shape = tuple(tensor.shape), value.shape
    if len(dims) < 1 or dims[-1] < 2 or any(dim != 1 for dim in dims[:-1]) or shape is None or shape.rank() != 2:
        return None
    width = len(columns) if columns is not None else shape[1]
    return width if width == dims[-1] else None


def _threshold_row(
    value: ir.Value, columns: tuple[int, ...] | None, node: ir.Node, index: int, affine: _Affine | None
) -> tuple[tuple[int, ...], np.ndarray] | None:
    """Where ``node`` (``Less``, ``Greater``, ``LessOrEqual``, ``GreaterOrEqual``) compares the columns ``columns`` of
    2-D number ``value``, still its own (after ``affine``, one number), element by element with a constant row
    (``Less(x[B, 4], limits[4])``: column j with ``limits[j]``), those columns and two rows, the values of each column
    below and above its own threshold (``_either_side``, ``straddled``), which ``_drawn_from_compared`` holds in turn;
    None where the constant is no such row, or a column has not one value each side (a sentinel). Drawn each side of
    any of the row's thresholds, a column was past its own in about one row of 16, until a review in session 72."""
    if not is_onnx_domain(node) or node.op_type not in _SIDES or len(node.inputs) != 2 or index > 1:
        return None
    tensor = _constant_tensor(node.inputs[1 - index])
    if tensor is None or tensor.dtype.numpy().kind not in "iuf" or _by_column(affine):
        return None
    if (width := _row_width(value, columns, tensor)) is None:
        return None
    op = node.op_type if index == 0 else _MIRRORED[node.op_type]
    scale, offset = _affine_numbers(affine)
    dtype = value.dtype.numpy()
    sides = [
        _either_side(np.asarray([threshold]), op, dtype, scale, offset, True)
        for threshold in tensor.numpy().astype(np.float64).reshape(-1)
    ]
    if any(len(side) != 2 for side in sides):
        return None
    return tuple(range(width)) if columns is None else columns, np.asarray(sides, np.float64).T.astype(dtype)


def _constant_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The constant ``value`` holds, that an input is compared with: an initializer's or a ``Constant``'s, or one a few
    nodes compute from such that no fold wrote out (``constant_value``: ``x > Add(c, c)``, no threshold until a review
    in session 74, and a rewrite wrong past 10 verified); None where it is none, or text computed so."""
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None and value is not None and (array := constant_value(value)) is not None:
        tensor = ir.tensor(array) if array.dtype.kind in "biuf" else None
    return tensor


def _distinct(array: np.ndarray) -> np.ndarray:
    """The distinct elements of ``array``, sorted, as ``np.unique`` gives them; numbers by a sort (numpy 2.4's
    ``np.unique`` hashes them: 0.7 s for a one-hot's million classes, against 0.05)."""
    if array.dtype.kind not in "iuf" or not array.size:
        return np.unique(array)
    ordered = np.sort(array)
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]


# A comparison read from its other side (``Less(t, x)`` is ``x > t``).
_MIRRORED = {"Less": "Greater", "Greater": "Less", "LessOrEqual": "GreaterOrEqual", "GreaterOrEqual": "LessOrEqual"}
_SIDES = {"Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal}
# A tree ensemble's branch modes that compare a feature with a threshold (ai.onnx.ml's ``TreeEnsemble*`` by name, and
# opset 5's ``TreeEnsemble`` by number), as the comparison that sends an element down its true branch.
_TREE_MODES = {
    "BRANCH_LEQ": "LessOrEqual",
    "BRANCH_LT": "Less",
    "BRANCH_GTE": "GreaterOrEqual",
    "BRANCH_GT": "Greater",
    0: "LessOrEqual",
    1: "Less",
    2: "GreaterOrEqual",
    3: "Greater",
}
# A threshold this far from 0 is a sentinel (skl2onnx's one-bin ``KBinsDiscretizer`` compares with float's largest):
# no real value lies past it, and values drawn there overflow what the graph computes from them.
_SENTINEL_THRESHOLD = 2.0**31


def _threshold_sides(
    node: ir.Node,
    index: int,
    dtype: np.dtype,
    *,
    straddled: bool = False,
    affine: _Affine | None = None,
    preimages: Sequence[_Preimage] = (),
) -> list[tuple[tuple[int, ...] | None, np.ndarray]] | None:
    """Values of ``dtype`` on either side of each constant threshold that ``node`` compares its input ``index`` with
    (``_thresholds``), each as the features (columns) of that input it holds for (None: all of it) and the values; None
    where ``node`` is no such comparison. Integers: the threshold's floor, one less and one more (by what the arithmetic
    on the way divides by, where more: an integer ``Div`` truncates); floats: below and above it by 1, or by half the
    gap to the nearest other threshold of that feature where that is less (skl2onnx's ``KBinsDiscretizer`` compares a
    column with every inner edge, a tree ensemble a feature with each split: each bin is drawn), and by at least 1/256
    of the threshold (still apart in float16). A threshold the usual draws already fall on both sides of (normal floats
    around -1 and 1; integers 0 and 1) is left out, so such models draw as before, unless ``straddled`` (an input of one
    element, drawn on one side in every set by chance), and so is a sentinel (beyond ``_SENTINEL_THRESHOLD``, or not
    finite). Where the input reaches ``node`` as ``a * x + b`` (``affine``, ``_after_affine``: normalized by constants),
    all this is of the compared values, drawn as the ``x`` that give them. Where it reaches ``node`` through ops of
    ``_PREIMAGES`` after that (``preimages``, ``_preimage``'s, last first: ``Abs(x) > 10``), each threshold is first
    taken back through them (to ``x > 10`` and ``x < -10``), and the values drawn each side of those."""
    compared = _thresholds(node, index)
    if compared is None:
        return None
    found = []
    for features, op, every in compared:
        # A sentinel is one in the compared units (``Exp(x) > 1e38``, drawn at ``x = 88.7 ± 1``, overflows): out first.
        pending = [(op, every[np.abs(every) < _SENTINEL_THRESHOLD] if preimages else every)]
        for preimage in preimages:
            pending = [before for op, every in pending for before in preimage(op, every)]
        for op, every in pending:
            every = np.unique(every[np.isfinite(every)])  # sorted
            for held_for, scale, offset in _affine_by_feature(features, affine):
                sides = _either_side(every, op, dtype, scale, offset, straddled, near=bool(preimages))
                found.append((held_for, sides))
    return found


# How near 0 a threshold taken back through an op of ``_PREIMAGES`` is not taken as straddled by the usual normal
# draws (``_either_side``): about 3 of 128 fall between it and 0, where ``Log`` and ``Sqrt`` start and ``Abs`` turns.
_NEAR_ZERO = 1 / 16


def _either_side(
    every: np.ndarray, op: str, dtype: np.dtype, scale: float, offset: float, straddled: bool, near: bool = False
) -> np.ndarray:
    """Values of ``dtype`` whose ``scale * x + offset`` lie each side of each of the sorted thresholds ``every``
    (``_threshold_sides``) compared by ``op``; ``straddled`` (an input of one element, held at each in turn), an
    integer's two nearest that the comparison tells apart, not three: ``If(n > 10)`` and ``If(n > 20)`` held ``n`` at
    9, 10, 11 and 19 in the four sets verification draws, and the branch ``n > 20`` selects never ran, until a review
    in session 71 (late). ``near`` (a threshold taken back through an op of ``_PREIMAGES``): floats within half the
    threshold of it, on its side of 0, where a ``Log`` or a ``Sqrt`` is defined, and drawn where it is within
    ``_NEAR_ZERO`` of 0 though the usual draws lie each side (``Log(x) < -10`` is ``0 < x < 4.5e-5``: taken as
    straddled, and drawn 1 each side of it, at -1 and 1, both false, until a review in session 74)."""
    if scale == 0 or not np.isfinite([scale, offset]).all():
        return np.zeros(0, dtype)
    low, high = (0.0, 1.0) if dtype.kind in "iu" else (-1.0, 1.0)  # where the usual draws lie
    thresholds = every[np.abs(every) < _SENTINEL_THRESHOLD]
    if not straddled:
        side = _SIDES[op]
        kept = side(scale * low + offset, thresholds) == side(scale * high + offset, thresholds)
        if near:  # few usual draws are as near 0 as the threshold, where the op's input starts or turns
            kept |= (thresholds != 0) & (np.abs(thresholds / scale) < _NEAR_ZERO)
        thresholds = thresholds[kept]
    if dtype.kind in "iu":
        # A step of 1, or of what an integer ``Div`` divides by: ``code // 4 > 3`` was drawn at 11, 12 and 13, each
        # 3 or less once divided (it truncates), until a review in session 71 (late).
        floors = np.floor((thresholds - offset) / scale)
        step = max(1.0, float(np.ceil(1 / abs(scale))))
        if straddled:  # the step below or the step above, whichever the comparison tells from the floor
            side = _SIDES[op]
            at = side(scale * floors + offset, thresholds)
            other = np.where(side(scale * (floors - step) + offset, thresholds) != at, floors - step, floors + step)
            sides = np.unique(np.concatenate([floors, other]))
        else:
            sides = np.unique(np.concatenate([floors - step, floors, floors + step]))
        info = np.iinfo(dtype)
        return sides[(sides >= info.min) & (sides <= info.max)].astype(dtype)
    # Half the gap to the nearest other threshold of the feature, at most 1, at least 1/256 of the threshold.
    at = np.searchsorted(every, thresholds)  # each threshold's place in ``every``: its neighbours are beside it
    neighbours = np.concatenate([[-np.inf], every, [np.inf]])
    gaps = np.minimum(thresholds - neighbours[at], neighbours[at + 2] - thresholds)
    step = np.maximum(np.minimum(1.0, gaps / 2), np.abs(thresholds) / 256)
    if near:
        step = np.where(thresholds != 0, np.minimum(step, np.abs(thresholds) / 2), step)
    with np.errstate(over="ignore", invalid="ignore"):
        held, below, above = (
            ((np.asarray(v) - offset) / scale).astype(dtype) for v in (thresholds, thresholds - step, thresholds + step)
        )
    kept = [side[(side != held) & np.isfinite(side)] for side in (below, above)]
    return np.concatenate(kept).astype(np.float64)


def _missing_keys(node: ir.Node, index: int, kind: str) -> np.ndarray | None:
    """The value ``node`` reads as missing in its input ``index`` (of numpy ``kind``): NaN for ``IsNaN`` (skl2onnx's
    ``SimpleImputer`` written ``Where(IsNaN(X), means, X)``), ``ai.onnx.ml``'s ``Imputer``'s replaced value (NaN, as
    skl2onnx writes ``missing_values=np.nan``); None for another node. Normal draws are never NaN: the imputed values
    were never read, and a rewrite that changed them verified until review s71."""
    if index != 0:
        return None
    if is_onnx_domain(node) and node.op_type == "IsNaN" and kind == "f":
        return np.asarray([np.nan])
    if node.domain == "ai.onnx.ml" and node.op_type == "Imputer":
        if kind == "f":
            return np.asarray([node.attributes.get_float("replaced_value_float", 0.0)])
        return np.asarray([node.attributes.get_int("replaced_value_int64", 0)])
    return None


# What constants made of an input on the way to a comparison: ``(a, b)``, the values ``a * x + b``, each a number or
# one per column of the last axis (``_after_affine``).
_Affine = tuple[np.ndarray, np.ndarray]


def _after_affine(node: ir.Node, index: int, affine: _Affine | None) -> _Affine | None:
    """``affine`` (None: ``x`` itself) after ``node`` reads it at input ``index``, where ``node`` adds, subtracts,
    multiplies or divides it by a constant (a number, of any rank: ``[[1]]`` too, or one per column: a 1-D constant),
    negates it, or is ``ai.onnx.ml``'s ``Scaler`` (skl2onnx's ``StandardScaler``: ``(x - offset) * scale``); None
    otherwise."""
    if node.domain == "ai.onnx.ml" and node.op_type == "Scaler" and index == 0:
        scale = np.asarray(node.attributes.get_floats("scale", [1.0]), np.float64)
        offset = np.asarray(node.attributes.get_floats("offset", [0.0]), np.float64)
        factor, term = scale, -offset * scale
    elif is_onnx_domain(node) and node.op_type == "Neg":
        factor, term = np.asarray(-1.0), np.asarray(0.0)
    elif is_onnx_domain(node) and node.op_type in ("Add", "Sub", "Mul", "Div") and len(node.inputs) == 2 and index < 2:
        other = node.inputs[1 - index]
        tensor = ir.convenience.get_const_tensor(other) if other is not None else None
        if tensor is None or tensor.dtype.numpy().kind not in "iuf" or not tensor.size:
            return None
        constant = tensor.numpy().astype(np.float64)
        if constant.ndim > 1 and constant.size != 1:
            return None
        constant = constant.reshape(-1) if constant.ndim > 1 else constant  # ``x + [[1]]``: a number
        if node.op_type == "Div" and (index == 1 or (constant == 0).any()):
            return None
        if node.op_type in ("Add", "Sub"):
            sign = -1.0 if node.op_type == "Sub" and index == 1 else 1.0
            factor, term = np.full_like(constant, sign), -constant if node.op_type == "Sub" and index == 0 else constant
        else:
            factor, term = constant if node.op_type == "Mul" else 1 / constant, np.zeros_like(constant)
    else:
        return None
    scale, offset = affine if affine is not None else (np.asarray(1.0), np.asarray(0.0))
    if max(factor.size, scale.size) > 1 and min(factor.size, scale.size) > 1 and factor.size != scale.size:
        return None  # columns that do not line up
    return factor * scale, factor * offset + term


def _keeps_rank(node: ir.Node, index: int) -> bool:
    """Whether ``node`` (``_after_affine``) reading a value at input ``index`` keeps its rank as far as its constant
    tells: not where that constant has more than one dim."""
    other = node.inputs[1 - index] if len(node.inputs) == 2 and index < 2 else None
    tensor = ir.convenience.get_const_tensor(other) if other is not None else None
    return tensor is None or len(tensor.shape) <= 1


def _by_column(affine: _Affine | None) -> bool:
    """Whether ``affine`` (``_after_affine``) differs from column to column."""
    return affine is not None and max(affine[0].size, affine[1].size) > 1


def _affine_numbers(affine: _Affine | None) -> tuple[float, float]:
    """The scale and offset of ``affine`` (``_after_affine``), one number each; 1 and 0 for None (nothing)."""
    if affine is None:
        return 1.0, 0.0
    return float(affine[0].reshape(-1)[0]), float(affine[1].reshape(-1)[0])


def _picked_affine(affine: _Affine | None, picked: tuple[int, ...]) -> _Affine | None:
    """``affine`` of the columns ``picked`` (``_picked_columns``); None where it has none of them."""
    if not _by_column(affine):
        return affine
    scale, offset = (np.broadcast_to(part, (max(affine[0].size, affine[1].size),)) for part in affine)
    if not all(-scale.size <= column < scale.size for column in picked):
        return None
    return scale[list(picked)], offset[list(picked)]


def _affine_by_feature(
    features: tuple[int, ...] | None, affine: _Affine | None
) -> Iterator[tuple[tuple[int, ...] | None, float, float]]:
    """``features`` (None: every one) with the scale and offset ``affine`` gives each, one by one where it differs
    from column to column."""
    if not _by_column(affine):
        yield features, *_affine_numbers(affine)
        return
    scale, offset = (np.broadcast_to(part, (max(affine[0].size, affine[1].size),)) for part in affine)
    for feature in range(scale.size) if features is None else features:
        if -scale.size <= feature < scale.size:
            yield (feature,), float(scale[feature]), float(offset[feature])


def _thresholds(node: ir.Node, index: int) -> list[tuple[tuple[int, ...] | None, str, np.ndarray]] | None:
    """The constant thresholds ``node`` compares its input ``index`` with, as the features of that input they are
    for (None: all of it), the comparison that holds on one side (``Less`` ... as named in ``_SIDES``) and the
    thresholds (float64): a ``Less``, ``Greater``, ``LessOrEqual`` or ``GreaterOrEqual`` with a constant (also one cast
    on the way, ``x > Cast(10)``, or computed from constants, ``x > Add(c, c)``: ``_constant_tensor``),
    ``ai.onnx.ml``'s ``Binarizer`` (skl2onnx's for floats), the bounds a ``Clip``, a ``Max`` or a ``Min`` with a
    constant clips at (``torch.clamp``: a path past the bound is another), and the splits of a tree ensemble
    (``TreeEnsembleClassifier``, ``TreeEnsembleRegressor``, opset 5's ``TreeEnsemble``: scikit-learn's, LightGBM's and
    XGBoost's trees, by feature). None where ``node`` is none of these."""
    if node.domain == "ai.onnx.ml":
        if index != 0:
            return None
        if node.op_type == "Binarizer":
            return [(None, "Greater", np.asarray([node.attributes.get_float("threshold", 0.0)], np.float64))]
        if node.op_type in ("TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"):
            return _tree_thresholds(node)
        return None
    if not is_onnx_domain(node) or index >= len(node.inputs):
        return None
    if node.op_type == "Clip" and index == 0:
        bounds = [(node.inputs[i] if len(node.inputs) > i else None, name, op) for i, name, op in _CLIP_BOUNDS]
        found = []
        for bound, name, op in bounds:
            number = _constant_number(bound) if bound is not None else node.attributes.get_float(name, None)
            if number is not None:
                found.append((None, op, np.asarray([number], np.float64)))
        return found
    if node.op_type not in (*_SIDES, "Max", "Min") or len(node.inputs) != 2 or index > 1:
        return None
    other = node.inputs[1 - index]
    tensor = _constant_tensor(other)
    number = _constant_number(other) if tensor is None else None
    if (tensor is None and number is None) or (tensor is not None and tensor.dtype.numpy().kind not in "iuf"):
        return None
    every = tensor.numpy().astype(np.float64).reshape(-1) if tensor is not None else np.asarray([number])
    # ``Max(x, c)`` is clipped below ``c``, ``Min(x, c)`` above it.
    op = {"Max": "Less", "Min": "Greater"}.get(node.op_type) or (
        node.op_type if index == 0 else _MIRRORED[node.op_type]
    )
    return [(None, op, every)]


# A ``Clip``'s bounds: its input (opset 11 on) or attribute (before), and the side of each that is clipped.
_CLIP_BOUNDS = ((1, "min", "Less"), (2, "max", "Greater"))
# Ops that clamp what they read at constant bounds (``_thresholds``): a path past a bound is another.
_CLAMPS = ("Clip", "Max", "Min")


def _tree_thresholds(node: ir.Node) -> list[tuple[tuple[int, ...] | None, str, np.ndarray]]:
    """The splits of tree ensemble ``node`` (``_thresholds``), grouped by the feature and comparison they test."""
    features = node.attributes.get_ints("nodes_featureids", [])
    if node.op_type == "TreeEnsemble":
        splits, modes = node.attributes.get("nodes_splits"), node.attributes.get("nodes_modes")
        values = splits.value.numpy().reshape(-1).tolist() if splits is not None else []
        modes = modes.value.numpy().reshape(-1).tolist() if modes is not None else []
    else:
        values = node.attributes.get_floats("nodes_values", None)
        if values is None and (tensor := node.attributes.get("nodes_values_as_tensor")) is not None:
            values = tensor.value.numpy().reshape(-1).tolist()
        modes = node.attributes.get_strings("nodes_modes", [])
    grouped: dict[tuple[int, str], list[float]] = {}
    for feature, value, mode in zip(features, values or [], modes):
        if (op := _TREE_MODES.get(mode)) is not None:
            grouped.setdefault((int(feature), op), []).append(float(value))
    return [((feature,), op, np.asarray(found, np.float64)) for (feature, op), found in grouped.items()]


def _concatenated_word(node: ir.Node, index: int) -> str | None:
    """The constant word of one element a ``StringConcat`` joins to its input ``index`` (after it for input 0), or
    None."""
    other = node.inputs[1 - index] if len(node.inputs) == 2 and index < 2 else None
    tensor = ir.convenience.get_const_tensor(other) if other is not None else None
    if tensor is None or tensor.size != 1 or not tensor.dtype.is_string():
        return None
    word = tensor.numpy().reshape(-1)[0]
    return word.decode() if isinstance(word, bytes) else str(word)


def _without_affix(affix: str, index: int, keys: np.ndarray) -> np.ndarray:
    """The words that ``StringConcat`` with ``affix`` (after them for ``index`` 0, else before) turns into ``keys``."""
    if index == 0:
        kept = [key[: len(key) - len(affix)] for key in keys if key.endswith(affix)]
    else:
        kept = [key[len(affix) :] for key in keys if key.startswith(affix)]
    return np.asarray(kept, dtype=object)


def _before_normalizer(node: ir.Node, keys: np.ndarray) -> np.ndarray:
    """The words that ``StringNormalizer`` ``node`` turns into ``keys``: each key, and its other case where the
    normalizer folds it (``CAT`` for ``cat`` after ``LOWER``), none a stopword."""
    action = node.attributes.get_string("case_change_action", "NONE")
    sensitive = node.attributes.get_int("is_case_sensitive", 0)
    stopwords = set(node.attributes.get_strings("stopwords", []))
    folded = {"LOWER": str.lower, "UPPER": str.upper}.get(action)
    unfolded = {"LOWER": str.upper, "UPPER": str.lower}.get(action)
    words = []
    for key in keys:
        if folded is not None and folded(key) != key:
            continue  # no word folds to it
        words.extend([key, unfolded(key)] if unfolded is not None and unfolded(key) != key else [key])
    if not sensitive:
        stopwords = {word.lower() for word in stopwords}
    return np.asarray([word for word in words if (word if sensitive else word.lower()) not in stopwords], dtype=object)


def _shifted_by_constant(node: ir.Node, index: int) -> tuple[Callable[[np.ndarray], np.ndarray], bool] | None:
    """For an ``Add``, ``Sub`` or ``Mul`` (by one not 0) of a numeric constant of one element that reads a value at
    input ``index``, or a ``Div`` of it by one (not 0: ``Equal(code / 2, 3)``, not followed until a review in session
    71, late), or a ``Neg`` (as a ``Mul`` by -1: followed by neither walk for an ``Equal`` nor by the one-element one
    for a threshold until a review in session 72): the function from the numbers it turns into to those it turns into
    them (``_before_shift``; for a ``Neg``, negation), and whether its output keeps the value's columns (a constant of
    at most one dim); else None."""
    if node.op_type == "Neg" and is_onnx_domain(node) and index == 0:
        return np.negative, True
    if node.op_type not in ("Add", "Sub", "Mul", "Div") or not is_onnx_domain(node) or len(node.inputs) != 2:
        return None
    if index > 1 or (node.op_type == "Div" and index != 0):
        return None
    other = node.inputs[1 - index]
    tensor = ir.convenience.get_const_tensor(other) if other is not None else None
    if tensor is None or tensor.size != 1 or tensor.dtype.is_string():
        return None
    constant = tensor.numpy().reshape(-1)[:1]
    if constant.dtype.kind not in "iuf" or (node.op_type in ("Mul", "Div") and not constant[0]):
        return None
    return partial(_before_shift, node.op_type, index, constant), len(tensor.shape) <= 1


def _before_shift(op: str, index: int, constant: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The numbers that ``x + c``, ``x * c``, ``x / c``, ``x - c`` (``op`` ``Sub``, ``index`` 0) or ``c - x`` turns into
    ``keys`` exactly, in ``c``'s type (``constant``, of one element): those whose result, computed back, is the key (an
    integer ``Div`` truncates, as ONNX Runtime's)."""
    integer = constant.dtype.kind in "iu"
    forward = {
        "Add": lambda x: x + constant,
        "Mul": lambda x: x * constant,
        "Div": (lambda x: np.sign(x) * np.sign(constant) * (np.abs(x) // np.abs(constant)))
        if integer
        else (lambda x: x / constant),
        "Sub": (lambda x: x - constant) if index == 0 else (lambda x: constant - x),
    }[op]
    with np.errstate(all="ignore"):
        typed = np.asarray(keys).astype(constant.dtype)
        typed = typed[typed == np.asarray(keys)]
        if op == "Mul":
            before = typed // constant if integer else typed / constant
        elif op == "Div":
            before = typed * constant
        else:
            before = typed - constant if op == "Add" else (typed + constant if index == 0 else constant - typed)
        return before[np.isfinite(before) & (forward(before) == typed)]


def _compared_readers(
    value: ir.Value,
) -> Iterator[
    tuple[ir.Node, int, tuple[Callable[[np.ndarray], np.ndarray], ...], _Affine | None, tuple[_Preimage, ...]]
]:
    """``(node, input index, undo, affine, preimages)`` of each reader of ``value`` (``_readers_through_copies``), also
    past an ``Add``, ``Sub`` or ``Mul`` of a constant, a ``Div`` by one or a ``Neg`` (``_shifted_by_constant``) and, as
    ``_compared_keys`` follows them, a ``StringNormalizer`` (never held at a stopword) and a ``StringConcat`` with a
    constant word: ``undo`` maps the values that reader reads back to ``value``'s (applied in turn), and ``affine`` is
    what the arithmetic passed made of a number (``_after_affine``; None: nothing, or not known), for a threshold:
    ``If(Greater(step - 10, 0))`` was held each side of 0, ``step`` at -1, 0 and 1, all on one side of 10, until a
    review in session 71 (late). A one-element switch ``If(Equal(StringNormalizer(mode), "train"))`` was held at no
    constant until a review in session 71, and the branch "train" selects never ran. Also past an op of
    ``_PREIMAGES`` or a ``Mod`` (``_preimage``: ``If(Abs(x) > 10)``, none past it until a review in session 73), and
    arithmetic after it: ``preimages`` are theirs, last first."""
    Undo = Callable[[np.ndarray], np.ndarray]
    frontier: list[tuple[ir.Value, tuple[Undo, ...], _Affine | None, tuple[_Preimage, ...]]] = [(value, (), None, ())]
    seen: set[int] = set()
    while frontier:
        current, undo, affine, preimages = frontier.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for node, index in current.uses():
            if (node.op_type in _COMPARED_MOVES or node.op_type == "Cast") and index == 0:
                frontier.extend((output, undo, affine, preimages) for output in node.outputs)
            elif not preimages and (shift := _shifted_by_constant(node, index)) is not None:
                after = _after_affine(node, index, affine) if affine is not None or not undo else None
                frontier.append((node.outputs[0], (shift[0], *undo), after, preimages))
            elif (found_preimage := _preimage(node, index, bool(preimages))) is not None:
                frontier.append((node.outputs[0], (found_preimage[1], *undo), affine, (found_preimage[0], *preimages)))
            elif node.op_type == "StringNormalizer" and is_onnx_domain(node) and index == 0:
                frontier.append((node.outputs[0], (partial(_before_normalizer, node), *undo), affine, preimages))
            elif node.op_type == "StringConcat" and (affix := _concatenated_word(node, index)) is not None:
                frontier.append((node.outputs[0], (partial(_without_affix, affix, index), *undo), affine, preimages))
            else:
                yield node, index, undo, affine, preimages


def _drawn_from_compared(
    compared: Sequence[tuple[tuple[int, ...] | None, np.ndarray]], drawn: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``drawn`` (an input's generated values) with about half of the elements ``compared`` (``_compared_keys``) reads
    drawn from the constants they are compared with (or values each side of a threshold), the others left as drawn (a
    value none of them, as a lookup's unknown: strings are words none of them, integers 0 or 1, floats normal); the
    columns compared with a constant row (an entry of 2-D keys: ``_compared_row``, ``_threshold_row``) held a row of
    keys at a time, in turn down the rows. An
    integer or string of one element is left as drawn, and so is a float of one element: ``compared_constants`` holds
    each constant in turn in the sets of even seeds, and another value in the others, where ONNX Runtime runs the
    model on them (drawn here, the one element was the constant in every set by chance, or a constant the model
    refuses; a temperature drawn 0 in the only set of a model of fixed dims ran the greedy branch alone, and a rewrite
    wrong in the sampled one verified)."""
    if drawn.size == 1 and drawn.dtype.kind in "iufOUS":
        return drawn
    drawn = drawn.astype(object) if drawn.dtype.kind in "OUS" else drawn.copy()
    rows = [(columns, keys) for columns, keys in compared if keys.ndim == 2]  # whole rows: ``_compared_row``...
    compared = [(columns, keys) for columns, keys in compared if keys.ndim == 1]
    whole = [keys for columns, keys in compared if columns is None]
    if whole:
        keys = np.concatenate(whole)
        picked = rng.random(drawn.shape) < 0.5
        drawn[picked] = rng.choice(keys, size=int(picked.sum()))
    if drawn.ndim != 2:
        return drawn
    for column in sorted({column for columns, _ in compared for column in columns or ()}):
        if not -drawn.shape[1] <= column < drawn.shape[1]:
            continue
        keys = np.concatenate([*whole, *(keys for columns, keys in compared if columns and column in columns)])
        picked = rng.random(drawn.shape[0]) < 0.5
        drawn[picked, column] = rng.choice(keys, size=int(picked.sum()))
    # A constant row (``_compared_row``, ``_threshold_row``): every other row, from the first or the second, holds
    # each column's own constant, the others none (a threshold's: the values below it, the others those above); a
    # single row so every other column (both sides of the comparison in the set).
    for columns, row in rows:
        if all(-drawn.shape[1] <= column < drawn.shape[1] for column in columns):
            start = int(rng.integers(2))
            for slot, held in enumerate(row):
                first = (slot + start) % 2
                if drawn.shape[0] == 1:
                    drawn[0, list(columns[first::2])] = held[first::2]
                else:
                    drawn[np.ix_(np.arange(first, drawn.shape[0], 2), list(columns))] = held
    return drawn


def _shifted_to(spread: bool, x: np.ndarray, reduced: np.ndarray, target: float, count: int) -> np.ndarray | None:
    """``x`` with each slice moved by one number so that its reduction (``reduced``, of ``count`` elements a slice) is
    ``target``: a maximum, minimum or mean moves by as much as its elements, a sum (``spread``) by ``count`` times."""
    return x + (target - reduced) / (count if spread else 1)


def _scaled_to(power: int, x: np.ndarray, reduced: np.ndarray, target: float, count: int) -> np.ndarray | None:
    """``x`` with each slice scaled so that its norm (``reduced``, of degree ``power`` in ``x``) is ``target``; None
    where a norm or the target is not positive (no scale reaches it)."""
    if target <= 0 or not (reduced > 0).all():
        return None
    return x * (target / reduced) ** (1 / power)


def _l1(x: np.ndarray, axis: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
    return np.sum(np.abs(x), axis=axis, keepdims=keepdims)


def _l2(x: np.ndarray, axis: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
    return np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims))


def _sum_square(x: np.ndarray, axis: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
    return np.sum(np.square(x), axis=axis, keepdims=keepdims)


def _max_abs(x: np.ndarray, axis: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
    return np.max(np.abs(x), axis=axis, keepdims=keepdims)


def _mean_abs(x: np.ndarray, axis: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
    return np.mean(np.abs(x), axis=axis, keepdims=keepdims)


# Reductions a float input may reach a constant threshold through (preprocessing's ``if x.max() > 1: x = x / 255``,
# ``If(ReduceMean(x) > t)``): each one's numpy form and how a slice is moved so that its reduction is a given value
# (``_hold_reductions``). Drawn element by element, the reduction fell on one side in every set (the maximum of 128
# normal draws under 10 in each), and a rewrite wrong on the other side verified until a review in session 73.
_REDUCTIONS: dict[str, tuple[Callable[..., np.ndarray], Callable[..., np.ndarray | None]]] = {
    "ReduceMax": (np.max, partial(_shifted_to, False)),
    "ReduceMin": (np.min, partial(_shifted_to, False)),
    "ReduceMean": (np.mean, partial(_shifted_to, False)),
    "ReduceSum": (np.sum, partial(_shifted_to, True)),
    "ReduceL1": (_l1, partial(_scaled_to, 1)),
    "ReduceL2": (_l2, partial(_scaled_to, 1)),
    "ReduceSumSquare": (_sum_square, partial(_scaled_to, 2)),
    "ReduceMaxAbs": (_max_abs, partial(_scaled_to, 1)),
    "ReduceMeanAbs": (_mean_abs, partial(_scaled_to, 1)),
}
# The reductions of ``_REDUCTIONS`` that are norms, never below 0.
_NORMS = frozenset({"ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceMaxAbs", "ReduceMeanAbs"})
# A reduction of an ``Abs`` as the norm of ``_REDUCTIONS`` it is (an audio peak, ``if wav.abs().max() > 1: wav /=
# wav.abs().max()``: not followed, the peak of 128 normal draws under 10 in every set, until a review in session 74).
_OF_ABSOLUTE = {
    "ReduceMax": "ReduceMaxAbs",
    "ReduceMean": "ReduceMeanAbs",
    "ReduceSum": "ReduceL1",
    "ReduceL1": "ReduceL1",
    "ReduceL2": "ReduceL2",
    "ReduceSumSquare": "ReduceSumSquare",
}
# A reduction compared with constant thresholds (``_reduced_thresholds``): the reduction's op, its axes (None: all),
# the values it is held at in turn (each side of each threshold, sorted), and each comparison (op, thresholds, and the
# scale and offset constants put on the reduced value before it).
_Reduced = tuple[str, tuple[int, ...] | None, np.ndarray, list[tuple[str, np.ndarray, float, float]]]


def _reduction_axes(node: ir.Node) -> tuple[int, ...] | None | bool:
    """The axes reduction ``node`` reduces (None: all), from its attribute (``ReduceSum`` before opset 13, the others
    before 18) or constant input; False where they are not constant or it reduces nothing (empty axes with
    ``noop_with_empty_axes``)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        tensor = ir.convenience.get_const_tensor(node.inputs[1])
        if tensor is None:
            return False
        axes = tuple(int(axis) for axis in tensor.numpy().reshape(-1))
    else:
        axes = tuple(node.attributes.get_ints("axes", []))
    if not axes:
        return False if node.attributes.get_int("noop_with_empty_axes", 0) else None
    return axes


def _reduced_thresholds(value: ir.Value) -> list[_Reduced]:
    """Each reduction of ``_REDUCTIONS`` that reads float ``value`` (directly, or through an ``Identity``, a ``Cast``
    to a float or an ``Abs``, the reduction then read as the norm it is: ``_OF_ABSOLUTE``) and whose result reaches a
    constant threshold (``Less``, ``Greater``, ``LessOrEqual``, ``GreaterOrEqual``) through moves, casts and
    arithmetic by constants (``_after_affine``: ``ReduceMax(x) / 255 > 0.5``), as ``_Reduced``; the values it is held
    at are ``_threshold_sides``' for one element (each side of each threshold, whatever the usual draws)."""
    found: list[_Reduced] = []
    readers = [(node, index, False) for node, index in value.uses()]  # and whether an ``Abs`` came on the way
    seen: set[int] = set()
    while readers:
        node, index, absolute = readers.pop()
        if id(node) in seen or not is_onnx_domain(node) or index != 0:
            continue
        seen.add(id(node))
        if node.op_type in ("Identity", "Abs") or (
            node.op_type == "Cast" and ir.DataType(node.attributes.get_int("to", 0)).is_floating_point()
        ):
            readers.extend((*use, absolute or node.op_type == "Abs") for use in node.outputs[0].uses())
            continue
        op = _OF_ABSOLUTE.get(node.op_type) if absolute else node.op_type
        if op not in _REDUCTIONS or (axes := _reduction_axes(node)) is False:
            continue
        targets: dict[float, None] = {}
        compared: list[tuple[str, np.ndarray, float, float]] = []
        pending: list[tuple[ir.Value, _Affine | None]] = [(node.outputs[0], None)]
        while pending:
            current, affine = pending.pop()
            for reader, at in current.uses():
                if not is_onnx_domain(reader):
                    continue
                # Each slice is held alike: any ``Gather`` of the reductions is on their side (``ReduceMax(x,
                # axes=[1])[0] > 10``, not followed until a review in session 74).
                if (reader.op_type in _COMPARED_MOVES or reader.op_type in ("Cast", "Gather")) and at == 0:
                    pending.append((reader.outputs[0], affine))
                elif (after := _after_affine(reader, at, affine)) is not None and not _by_column(after):
                    pending.append((reader.outputs[0], after))
                elif reader.op_type in _SIDES and (thresholds := _thresholds(reader, at)) is not None:
                    scale, offset = _affine_numbers(affine)
                    for _, sides in _threshold_sides(reader, at, value.dtype.numpy(), straddled=True, affine=affine):
                        targets.update(dict.fromkeys(sides.astype(np.float64).tolist()))
                    compared.extend((op, every, scale, offset) for _, op, every in thresholds)
        if op in _NORMS and targets:
            # A norm is never below 0: a side there is held at half the least positive threshold instead (the values
            # each side of ``ReduceL2(x) < 1e-6`` are -1 and 1, and the tiny-norm branch never ran).
            bounds = np.concatenate([(every - offset) / scale for _, every, scale, offset in compared if scale] or [[]])
            least = min((bound for bound in bounds.tolist() if bound > 0), default=None)
            targets = {t if t > 0 else least / 2: None for t in targets if t > 0 or least is not None}
        if targets:
            found.append((op, axes, np.asarray(sorted(targets)), compared))
    return found


def _reductions_alike(value: ir.Value) -> list[_Reduced]:
    """``_reduced_thresholds(value)``, the reductions of one op over the same axes as one, their values and
    comparisons together: an export writes a node for each (``x.max() > 5`` and ``x.max() > 20``, two ``ReduceMax``),
    and the first one's sides alone were held until a review in session 74."""
    merged: dict[tuple[str, tuple[int, ...] | None], _Reduced] = {}
    for op, axes, targets, compared in _reduced_thresholds(value):
        if (op, axes) in merged:
            _, _, before, earlier = merged[op, axes]
            targets, compared = np.unique(np.concatenate([before, targets])), earlier + compared
        merged[op, axes] = (op, axes, targets, compared)
    return list(merged.values())


def _hold_reductions(model: ir.Model, inputs: dict[str, Any], seed: int, *, compared_too: bool = False) -> set[str]:
    """Each float input of ``inputs`` (no mask) that a reduction compared with a constant threshold reads
    (``_reduced_thresholds``: ``If(ReduceMax(x) > 1)``, as a preprocessing graph writes ``if x.max() > 1: x /= 255``)
    moved so that every slice it reduces is the ``seed``-th of the values each side of the threshold (the first
    reduction found): below it in the sets of seed 0, above it in those of seed 1. Not one whose elements are compared
    with constants too (``_compared_keys``, ``Where(x > 10, ...)``, or looked up), unless ``compared_too``: the draw
    holds those each side of their own thresholds, and moving the slice took every element under the reduction's (a
    maximum held at 1 left none past 10, and a rewrite wrong there verified, until a later review in session 73;
    ``held_reductions`` moves them in a set of their own). In place; returns the names of the inputs it moved. Others
    are left as drawn, byte for byte."""
    moved = set()
    for value, array in _float_inputs(model, inputs):
        if not compared_too and (_compared_keys(value) or _lookup_keys(value)):
            continue
        for op, axes, targets, _ in _reductions_alike(value):
            hold = _REDUCTIONS[op][1]
            drawn = array.astype(np.float64)
            if (reduced := _reduced(op, axes, drawn)) is None:  # axes the array has not: left as drawn
                continue
            with np.errstate(all="ignore"):
                held = hold(drawn, reduced, float(targets[seed % targets.size]), drawn.size // max(reduced.size, 1))
            if held is not None and np.isfinite(held).all():
                inputs[value.name] = held.astype(array.dtype)
                moved.add(value.name)
                break
    return moved


def _float_inputs(model: ir.Model, inputs: Mapping[str, Any]) -> Iterator[tuple[ir.Value, np.ndarray]]:
    """Each float input of ``inputs`` with elements, no mask, and its array: those a reduction's side is read of
    (``_hold_reductions``, ``reduced_sides``)."""
    for value in runtime_inputs(model):
        array = inputs.get(value.name)
        if isinstance(array, np.ndarray) and array.dtype.kind == "f" and array.size and not _is_mask(value):
            yield value, array


def _reduced(op: str, axes: tuple[int, ...] | None, array: np.ndarray) -> np.ndarray | None:
    """``array`` reduced by ``op`` of ``_REDUCTIONS`` over ``axes`` (None: all), its dims kept; None where it has not
    those axes (numpy's ``AxisError``)."""
    try:
        return _REDUCTIONS[op][0](array, axis=axes, keepdims=True)
    except ValueError:
        return None


def held_reductions(model: ir.Model, inputs: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """A copy of ``inputs`` with every input a reduction compared with a constant reads moved as ``_hold_reductions``
    moves it in the sets of ``seed``, those whose elements are compared too (which ``make_inputs`` leaves as drawn)."""
    held = dict(inputs)
    _hold_reductions(model, held, seed, compared_too=True)
    return held


def reduced_sides(model: ir.Model, inputs: Mapping[str, Any]) -> dict[str, tuple]:
    """For each input of ``inputs`` that ``_hold_reductions`` holds, which side of each threshold its reductions
    fall on (each comparison's distinct results over the slices): the sets of one side alone ran one branch."""
    sides = {}
    for value, array in _float_inputs(model, inputs):
        for op, axes, _, compared in _reductions_alike(value):
            if (reduced := _reduced(op, axes, array.astype(np.float64))) is None:
                continue
            sides[value.name] = tuple(
                tuple(np.unique(_SIDES[side](scale * reduced + offset, threshold)).tolist())
                for side, every, scale, offset in compared
                for threshold in every
            )
            break
    return sides


# The longest length a comparison of a length with a constant (``compared_lengths``) is verified at: past it, a
# constant is a limit (a position table's 8192) rather than a length inputs are run at.
_LONGEST_COMPARED_LENGTH = 4096


# A comparison of a length with what is no constant (``_lengths_compared``): the node, the input the length is at,
# its dim (``_length_key``) and factor, and the scale and offset put on it before.
_Met = tuple[ir.Node, int, Any, float, float, float]


def compared_lengths(
    model: ir.Model,
    held: Mapping[str, Collection[int]] | None = None,
    sizes: Mapping[str, int] | None = None,
    bindings: Sequence[Mapping[str, int]] | None = None,
    *,
    between: bool = False,
) -> dict[str, list[int]]:
    """Each named symbolic dim (or, as ``UNNAMED_LENGTH``, one without a name past the first axis) of an input whose
    length the graph reads through ``Shape`` (or ``Size``: of its last symbolic dim, the others at their ``sizes``,
    the first set's; with no ``sizes``, where it is the input's only one: ``Size(x[B, L]) < 64`` was never drawn under
    64 elements until a review in session 74) and compares with a constant (``Equal(Shape(x)[1], 16)``, an exported
    decode step's ``If(Equal(seq_len, 1))``, ``Greater(seq_len, 512)``, ``Less(seq_len, 8)``), through a ``Gather``
    or a ``Slice`` of that length, moves, casts and arithmetic by constants, with the lengths that tell the comparison
    apart: the one an ``Equal`` holds, and the two nearest each side of a threshold (``_threshold_sides``; a ``Clip``,
    ``Max`` or ``Min`` bound too, and what is compared after it, ``Min(seq_len, 512) >= 512``; a remainder's
    comparison, ``Equal(seq_len % 7, 0)``, at the lengths that decide it one divisor on; neither until a review in
    session 74); from 1 to ``_LONGEST_COMPARED_LENGTH``; of those, where ``held`` gives the lengths each dim already
    has, only the ones that go another way than all of them (``Less(seq_len, 8)`` beside 128: 7 alone, not 8).
    Generated at the default lengths and a second binding, no set was 16 long nor past 512, and a rewrite wrong in the
    branch those select verified until a review in session 73. A product of lengths, ``ReduceProd(Shape(x)) > 1000``
    or a ``Mul`` of two, is read as ``Size`` is, and two lengths compared with each other, ``Shape(a)[1] <
    Shape(b)[1]``, at the lengths of each that tell it apart beside the other's size (``_lengths_met``: those sides no
    set of ``bindings``, each set's sizes, holds); neither until a later review in session 74. With ``between``, also
    a length for each way the comparisons of one dim go together that no held length (nor one kept) goes: ``2 <= L``
    and ``L < 4`` beside 1 and 128, whose sides each held apart, at 2 (``_lengths_between``; a rewrite that branched
    there verified until review s76 xfix2)."""
    found, compared, _, _ = _compared_sides(model, held, sizes, bindings)
    for key, sides in compared.items() if between else ():
        kept = found.setdefault(key, {})
        kept.update(dict.fromkeys(_lengths_between(sides, (held or {}).get(key, ()), kept)))
    return {name: sorted(lengths) for name, lengths in found.items() if lengths}


# The comparisons of one dim's length with constants (``_compared_sides``): the lengths each tells apart, and which
# way a length goes there.
_Sides = list[tuple[list[int], Callable[[int], Any]]]


def _compared_sides(
    model: ir.Model,
    held: Mapping[str, Collection[int]] | None = None,
    sizes: Mapping[str, int] | None = None,
    bindings: Sequence[Mapping[str, int]] | None = None,
) -> tuple[dict[Any, dict[int, None]], dict[Any, _Sides], dict[Any, list[frozenset[str]]], list[_Combined]]:
    """The one walk of ``compared_lengths``: the lengths it finds by dim (without ``between``), by dim each
    comparison with a constant (``_Sides``), beside each the other dims a product of lengths took at their
    ``sizes`` there (``_Product``; empty where none), and each sum or product of lengths compared with a constant
    (``_Combined``, ``lengths_combined``). Comparisons inside the model's own functions are read in a copy with their
    calls inlined (``_inlined``): ``L == 7`` there was not followed, and a rewrite wrong only where it holds verified,
    until review s77 (xfix77)."""
    model = _inlined(model)
    found: dict[Any, dict[int, None]] = {}
    compared: dict[Any, _Sides] = {}
    products: dict[Any, list[frozenset[str]]] = {}
    combined: list[_Combined] = []
    meets: list[_Met] = []
    starts = _length_starts(model, sizes)  # each walk's start and the elements it holds
    multiplied: set[int] = set()
    while starts:
        start, elements = starts.pop(0)
        # A product's own value, its comparisons read beside any sizes of its dims (``lengths_combined``): a ``Size``
        # or a ``Mul``'s, and a ``ReduceProd`` of a shape's (``ReduceProd(Shape(x)) == 30``, read at the first set's
        # other sizes alone until review s77 late77f).
        products_read = [(start, elements)] if len(elements) == 1 else []
        for node, index in start.uses() if sizes and len(elements) > 1 else ():
            if node.op_type == "ReduceProd" and index == 0 and is_onnx_domain(node):
                if _reduction_axes(node) in (None, (0,), (-1,)) and (product := _product_of_lengths(elements, sizes)):
                    products_read.append((node.outputs[0], product))
        for value, ((key, factor),) in products_read if sizes else ():
            if isinstance(key, _Product):
                of = sorted(key.of)
                fixed = factor / math.prod(sizes[dim] for dim in of)
                sides = [(lengths, side) for _, lengths, side in _lengths_compared(value, [(_VALUE, 1.0)], sizes)]
                if sides:
                    combined.append(("product", (*of, str(key)), (fixed,), sides))
        for key, lengths, side in _lengths_compared(start, elements, sizes, meets):
            of = key.of if isinstance(key, _Product) else frozenset()
            key = str(key) if isinstance(key, _Product) else key
            if key is not None:
                products.setdefault(key, []).append(of)
                sides = {side(n) for n in (held or {}).get(key, ())}
                kept = [n for n in lengths if 1 <= n <= _LONGEST_COMPARED_LENGTH and side(n) not in sides]
                found.setdefault(key, {}).update(dict.fromkeys(kept))
                compared.setdefault(key, []).append((lengths, side))
        # Two lengths a ``Mul`` multiplies (``Shape(x)[0] * Shape(x)[1] > 1000``): their product followed as one.
        for node, ends in _met_pairs(meets, ("Mul",)):
            if id(node) not in multiplied and (product := _product_of_lengths([end[:2] for end in ends], sizes)):
                multiplied.add(id(node))
                starts.append((node.outputs[0], product))
    for key, lengths in _lengths_met(meets, sizes, bindings):
        found.setdefault(str(key) if isinstance(key, _Product) else key, {}).update(dict.fromkeys(lengths))
    combined += _concatenated_lengths(model, sizes)
    combined += _summed_lengths(meets, sizes)
    return found, compared, products, combined


# The most lengths one sum of ``_summed_lengths`` adds, and the most ``Add``s and ``Sub``s of three or more lengths it
# follows in a model: each is one walk of the sum's uses (a sum of two is followed wherever it is, as before review s78
# xfix78: counted too, one compared after 64 others was no longer drawn, review s78 late78a).
_MOST_SUMMED_LENGTHS = 8
_MOST_SUMS = 64


def _summed_lengths(meets: Sequence[_Met], sizes: Mapping[str, int] | None) -> list[_Combined]:
    """A sum (``_Combined``) for each ``Add`` or ``Sub`` that joins two lengths of ``meets`` (``Shape(a)[1] +
    Shape(b)[1] == 7``, or their difference), or a sum so and another length or sum (``Shape(a)[1] + Shape(b)[1] +
    Shape(c)[1] == 7`` through nested ``Add``s: a linear combination of the lengths), whose value the graph compares
    with constants, read in the sum's own value (``lengths_combined``): of distinct named dims, up to
    ``_MOST_SUMMED_LENGTHS`` of them, and ``_MOST_SUMS`` sums of three or more in all (of two, every one). A sum of
    three was not followed, and a rewrite's branch where it held verified, until review s78 xfix78."""
    # What each input of an ``Add`` or ``Sub`` holds: the dims summed and each one's scale and offset.
    held: dict[tuple[int, int], tuple[tuple[str, ...], tuple[float, ...]]] = {}
    nodes: dict[int, ir.Node] = {}
    for node, index, key, factor, scale, offset in meets:
        if node.op_type in ("Add", "Sub"):
            nodes[id(node)] = node
            if type(key) is str and key:
                held[(id(node), index)] = ((key,), (scale * factor, offset))
    ready = [node for node in nodes.values() if (id(node), 0) in held and (id(node), 1) in held]
    read: set[int] = set()
    found: list[_Combined] = []
    nested = 0  # sums of three or more lengths followed
    while ready:
        node = ready.pop(0)
        if id(node) in read:
            continue
        read.add(id(node))
        (dims_a, terms_a), (dims_b, terms_b) = held[(id(node), 0)], held[(id(node), 1)]
        dims = (*dims_a, *dims_b)
        if len(set(dims)) != len(dims) or len(dims) > _MOST_SUMMED_LENGTHS or len(dims) > 2 and nested >= _MOST_SUMS:
            continue
        nested += len(dims) > 2
        sign = -1.0 if node.op_type == "Sub" else 1.0
        terms = (*terms_a, *(sign * number for number in terms_b))
        further: list[_Met] = []  # the sum's own uses by an ``Add`` or ``Sub`` of what is no constant
        compared = _lengths_compared(node.outputs[0], [(_VALUE, 1.0)], sizes, further)
        sides = [(lengths, side) for _, lengths, side in compared]
        if sides:
            found.append(("sum", dims, terms, sides))
        for user, index, key, _, scale, offset in further:
            if key is not _VALUE or user.op_type not in ("Add", "Sub"):
                continue
            scaled = [scale * number for number in terms]
            scaled[1] += offset  # the offset put on the sum, on its first dim's
            held[(id(user), index)] = (dims, tuple(scaled))
            if (id(user), 1 - index) in held:
                ready.append(user)
    return found


def _concatenated_lengths(model: ir.Model, sizes: Mapping[str, int] | None) -> list[_Combined]:
    """A sum (``_Combined``) for each ``Concat`` of two or more runtime inputs along an axis where each has a named dim
    of its own, whose length along it (``Shape`` of the ``Concat``) the graph compares with constants: read as a
    ``Shape`` of no input, ``Shape(Concat(a, b))[1] == 7`` was not followed until review s77 xfix77, nor one of three
    inputs until review s77 late77f."""
    inputs = {id(value): value for value in runtime_inputs(model)}
    found: list[_Combined] = []
    for node in model.graph:
        if node.op_type != "Concat" or not is_onnx_domain(node) or len(node.inputs) < 2:
            continue
        parts = [inputs.get(id(value)) if value is not None else None for value in node.inputs]
        if any(part is None or part.shape is None for part in parts) or len({len(p.shape) for p in parts}) != 1:
            continue
        rank = len(parts[0].shape)
        axis = node.attributes.get_int("axis", 0)
        if not -rank <= axis < rank:
            continue
        keys = [_length_keys(list(part.shape)) for part in parts]
        joined = [key[axis % rank] for key in keys]
        if not all(joined) or len(set(joined)) != len(joined):
            continue
        shape = [(key, 1.0 if _free(dim) else float(dim)) for key, dim in zip(keys[0], parts[0].shape)]
        shape[axis % rank] = (_VALUE, 1.0)
        for start, held in _shapes_read(node.outputs[0], shape, sizes, sizes_read=False):
            if any(key is _VALUE for key, _ in held):
                sides = [
                    (lengths, side) for key, lengths, side in _lengths_compared(start, held, sizes) if key is _VALUE
                ]
                if sides:
                    found.append(("sum", tuple(joined), (1.0, 0.0) * len(joined), sides))
    return found


# A sum or product of the lengths of named dims compared with constants (``_compared_sides``): ``"sum"`` or
# ``"product"``, the dims, the numbers on them (a sum's scale and offset of each; a product's fixed factor) and the
# comparisons of its value (``_Sides``, each side read at the value itself).
_Combined = tuple[str, tuple[str, ...], tuple[float, ...], _Sides]
# The element a walk of a sum's or product's own value holds (``_compared_sides``): no dim.
_VALUE = object()


def _combined_value(kind: str, dims: Sequence[str], numbers: Sequence[float], lengths: Mapping[str, int]) -> float:
    """The value a sum or product of lengths (``_Combined``) takes at ``lengths``."""
    if kind == "product":
        return numbers[0] * math.prod(lengths[dim] for dim in dims)
    return sum(numbers[2 * at] * lengths[dim] + numbers[2 * at + 1] for at, dim in enumerate(dims))


# The most sizes of the other dims ``lengths_combined`` tries, across the values of every sum or product in a call:
# past them, the ways left are counted, not solved (3,000 values of a product of three dims with many divisors each).
_MOST_COMBINED_TRIES = 4096


def lengths_combined(
    model: ir.Model,
    bindings: Sequence[Mapping[str, int]],
    names: Collection[str],
    before: ir.Model | None = None,
    most: int = 4,
) -> tuple[list[dict[str, int]], int]:
    """The lengths at which to draw sets (a few of ``names`` at a length, the rest as in the first of ``bindings``) so
    that a sum or a product of lengths the graph compares with constants (``Shape(a)[1] + Shape(b)[1] == 7``,
    ``Size(x[B, L, C]) == 30``) goes each way of its comparisons that no binding's sizes go: for each value they tell
    apart, the other dims at the first binding's size, another binding's, a divisor of the value (a product's) or 1,
    and the last dim at the length that gives the value (from 1 to ``_LONGEST_COMPARED_LENGTH``); up to ``most`` sets,
    beside how many ways they leave out. With ``before`` (the model a rewrite was given), only the sums and products
    ``before`` does not compare at those values. A sum was not followed, and a product's length was looked for at the
    first set's other sizes alone (``Size(x) == 30`` beside 128 tokens: none), and a rewrite's branch where either held
    verified until review s77 (xfix77)."""
    if not bindings or most <= 0:
        return [], 0
    first = bindings[0]
    combined = _compared_sides(model, None, first, bindings)[3]
    if not combined:
        return [], 0
    prior = set()
    if before is not None:
        prior = {_combined_key(entry) for entry in _compared_sides(before, None, first, bindings)[3]}
    chosen: list[dict[str, int]] = []
    left = 0
    tries = [_MOST_COMBINED_TRIES]  # the sizes of the other dims left to try, across every value
    for entry in combined:
        kind, dims, numbers, sides = entry
        if _combined_key(entry) in prior or not all(dim in names and dim in first for dim in dims):
            continue
        had = [_combined_value(kind, dims, numbers, binding) for binding in bindings if set(dims) <= set(binding)]
        told = sorted({n for lengths, _ in sides for n in lengths})
        # Every value's way at once (``_side_classes``): one at a time, 3,000 thresholds took 1.8 s a call.
        values = np.asarray([*had, *told], np.float64).reshape(-1)
        ways = _joined_classes([_side_classes(side, values) for _, side in sides], values.size).tolist()
        held = set(ways[: len(had)])
        for value, went in zip(told, ways[len(had) :], strict=True):
            if went in held:
                continue
            if len(chosen) >= most or tries[0] <= 0:  # past the sets, or the tries: counted, not solved
                held.add(went)
                left += 1
                continue
            lengths = _combined_at(kind, dims, numbers, value, bindings, tries)
            if lengths is None and tries[0] <= 0:  # the tries ran out within it: counted too, not dropped unsaid
                held.add(went)
                left += 1
                continue
            if lengths is None or not math.isclose(_combined_value(kind, dims, numbers, {**first, **lengths}), value):
                continue
            held.add(went)
            chosen.append(lengths)
    return chosen, left


def _combined_key(entry: _Combined) -> tuple:
    """What tells a sum or product of lengths (``_Combined``) and the values it compares apart from another's."""
    kind, dims, numbers, sides = entry
    return kind, dims, numbers, tuple(sorted({n for lengths, _ in sides for n in lengths}))


def _combined_at(
    kind: str,
    dims: Sequence[str],
    numbers: Sequence[float],
    value: float,
    bindings: Sequence[Mapping[str, int]],
    tries: list[int],
) -> dict[str, int] | None:
    """The lengths of ``dims`` (those that differ from the first of ``bindings``) at which a sum or product of them
    (``_Combined``) takes ``value``: the other dims at the first binding's size, another's, a divisor of the value or
    1, the last one solved for; None where no length from 1 to ``_LONGEST_COMPARED_LENGTH`` gives it, or ``tries``
    (the sizes left to try, shared across a call of ``lengths_combined``) run out."""
    first = bindings[0]
    whole = abs(value / numbers[0]) if kind == "product" and numbers[0] else 0
    divisors = []
    if float(whole).is_integer() and 0 < whole <= _LONGEST_COMPARED_LENGTH**2:
        numbers_up = np.arange(1, min(math.isqrt(int(whole)), _LONGEST_COMPARED_LENGTH) + 1, dtype=np.int64)
        small = numbers_up[int(whole) % numbers_up == 0].tolist()
        divisors = sorted(n for n in {*small, *(int(whole) // n for n in small)} if n <= _LONGEST_COMPARED_LENGTH)
    for solved in reversed(dims):
        others = [dim for dim in dims if dim != solved]
        candidates = [
            list(dict.fromkeys([first[dim], *sorted({b[dim] for b in bindings if dim in b}), *divisors, 1]))
            for dim in others
        ]
        for sizes in itertools.product(*candidates):
            if tries[0] <= 0:
                return None
            tries[0] -= 1
            at = {**first, **dict(zip(others, sizes, strict=True))}
            zero, one = (_combined_value(kind, dims, numbers, {**at, solved: n}) for n in (0, 1))
            if one == zero:
                continue
            length = (value - zero) / (one - zero)
            if float(length).is_integer() and 1 <= length <= _LONGEST_COMPARED_LENGTH:
                at[solved] = int(length)
                return {dim: at[dim] for dim in dims if at[dim] != first[dim]} or None
    return None


# The inlined copies ``_inlined`` made within ``inlined_once``, by the id of the model (kept, so no other takes the id).
_INLINED: contextvars.ContextVar[dict[int, tuple[ir.Model, ir.Model]] | None] = contextvars.ContextVar(
    "_INLINED", default=None
)


@contextlib.contextmanager
def inlined_once() -> Iterator[None]:
    """Within it, ``_inlined`` inlines each model once: for reads of models no one changes in between
    (``compared_lengths``, ``lengths_together``, ``lengths_combined`` back to back). Each read inlined it again, nine
    times a run, until review s77 late77h."""
    token = _INLINED.set({} if _INLINED.get() is None else _INLINED.get())
    try:
        yield
    finally:
        _INLINED.reset(token)


def _called_with_graphs(model: ir.Model) -> list[ir.OperatorIdentifier]:
    """The model's own functions some call gives a graph (an attribute, or the function's default): the inliner
    refuses them (``_inlined``)."""
    if not model.functions:
        return []
    graphs = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
    found: dict[ir.OperatorIdentifier, None] = {}
    bodies = [model.graph, *(function.graph for function in model.functions.values())]
    for body in bodies:
        # Not onnx-ir's recursive iterator: it raises on a function's graph attribute that refers to its caller's
        # (a Loop whose body the call gives), and the lengths' walk failed there after review s77 late77h.
        for node in nodes_and_subgraphs(body):
            function = model.functions.get(node.op_identifier())
            if function is None:
                continue
            given = [*node.attributes.values(), *(a for a in function.attributes.values() if a.value is not None)]
            if any(attribute.type in graphs for attribute in given):
                found[node.op_identifier()] = None
    return list(found)


def unread_functions(model: ir.Model) -> list[str]:
    """The model's own functions the graph calls whose comparisons the walks of lengths do not read: those given a
    graph, which the inliner refuses (``_inlined``), named ``domain::name``. Left unsaid until review s77 late77h."""
    return [f"{domain}::{name}" for domain, name, _ in _called_with_graphs(model)]


def _inlined(model: ir.Model) -> ir.Model:
    """``model``, or where a graph of it calls a function of the model's own, a copy with those calls inlined (its
    tensors shared): the walks of lengths read ONNX ops alone. A function importing another version of a domain than
    the model is read at the model's (the copy is never run; the inliner refuses to mix them, and a function at opset
    18 in a model at 17 hid its ``L == 7`` until review s77 late77f). A function some call gives a graph is left called
    (the inliner refuses it; ``unread_functions`` names it), the others inlined (the model was read as it is until
    review s77 late77h). Left as it is where the inliner refuses (calls in a cycle). Within ``inlined_once``, the copy
    made for a model before."""
    if not model.functions or not any(
        node.op_identifier() in model.functions for node in nodes_and_subgraphs(model.graph)
    ):
        return model
    kept = _INLINED.get()
    if kept is not None and id(model) in kept:
        return kept[id(model)][1]
    copy = model.clone()
    for function in copy.functions.values():
        for domain, version in list(function.opset_imports.items()):
            function.opset_imports[domain] = copy.opset_imports.get(domain, version)
    refused = set(_called_with_graphs(copy))
    try:
        InlinePass(lambda function: function.identifier() not in refused)(copy)
    except (ValueError, ir.passes.PreconditionError):
        copy = model
    if kept is not None:
        kept[id(model)] = (model, copy)
    return copy


def _lengths_between(
    compared: Sequence[tuple[list[int], Callable[[int], Any]]], held: Collection[int], kept: Collection[int]
) -> list[int]:
    """The lengths (of those the comparisons of one dim, ``compared``, tell apart: ``(lengths, side)``) that go a way
    across all of them together that no ``held`` nor ``kept`` length goes, the shortest of each way: each comparison
    held apart, ``2 <= L < 4`` beside 1 and 128 (each side of each threshold held) was never drawn at 2 or 3. Looked
    for at the lengths each comparison tells apart, and up to a divisor past them where one compares a remainder.
    Each comparison is read at every length at once (``_side_classes``: a comparison with thresholds or of a remainder
    in numpy, another one length at a time); read one length and comparison at a time, 3,000 thresholds on one length
    took 56 s a call until review s76 lcost."""
    if len(compared) < 2:
        return []
    # A remainder's ways come up within a divisor of each threshold's lengths: ``L >= 201`` and ``L % 8 == 0`` go
    # together first at 208, which neither tells apart (a rewrite that branched there verified until review s76
    # late76e).
    divisors = [side.args[0] for _, side in compared if getattr(side, "func", None) is _length_remainder_side]
    told = _told_lengths({n for lengths, _ in compared for n in lengths}, divisors)
    others = [*held, *kept]
    lengths = [*others, *told]
    if all(isinstance(n, (int, np.integer)) and abs(n) <= 2**53 for n in lengths):
        array = np.asarray(lengths, np.int64).reshape(-1)
        columns = [_side_classes(side, array) for _, side in compared]
    else:
        columns = [_classes_of([side(n) for n in lengths]) for _, side in compared]
    ways = _joined_classes(columns, len(lengths))
    gone = set(ways[: len(others)].tolist())
    between = []
    for length, went in zip(told, ways[len(others) :].tolist(), strict=True):
        if went not in gone:
            gone.add(went)
            between.append(length)
    return between


# The most ways of two dims together ``lengths_together`` lists one by one; past them it counts them.
_MOST_WAYS_TOGETHER = 4096


def lengths_together(
    model: ir.Model,
    bindings: Sequence[Mapping[str, int]],
    names: Collection[str],
    before: ir.Model | None = None,
    most: int = 4,
) -> tuple[list[dict[str, int]], int]:
    """The lengths at which to draw sets (each a few of ``names``, the dims the caller may draw, at a length; the rest
    as in the first of ``bindings``) so that each way one dim goes at its comparisons with constants
    (``compared_lengths``, all of that dim's taken together) meets each way of every other such dim in some set: up to
    ``most`` sets, each chosen to meet the most pairs of ways no binding (each set's sizes) holds (first those of the
    ways that split one of ``before``'s, then those of the ways fewest bindings hold); beside them, how many such
    pairs they leave out. Drawn one dim at a time at the first set's
    other sizes, ``L == 5`` and ``B == 2`` together (5 tokens in a batch of 2) were never run, and a rewrite's branch
    there verified until review s77 (xlen). With ``before`` (the model a rewrite was given), only the pairs where
    ``model`` goes a way ``before`` does not on one dim or both: the others are left to the original's sets. Each way
    is drawn at the first set's length where it goes that way, else at the shortest length of a binding that does,
    else at the shortest of the lengths the comparisons tell apart (up to a divisor past them for a remainder, as
    ``_lengths_between`` looks) that does. Where three or more dims are compared, then each way of all of them at once
    that no binding nor chosen set holds, within ``most`` (the ways fewest bindings hold first), the rest counted too:
    each pair held, ``B > 1 and L < 6 and C > 2`` was never run, and a rewrite's branch there verified until review
    s77 (late77c). A product of lengths (``Size(x[B, L]) == 10``) goes its way beside each binding's and set's other
    sizes, not the first's: 10 elements beside ``B == 2`` were drawn as 10 tokens until that review too."""
    if not bindings or most <= 0:
        return [], 0
    first = bindings[0]
    _, compared, products, _ = _compared_sides(model, None, first, bindings)
    dims = sorted(key for key in compared if isinstance(key, str) and key in names and key in first)
    if len(dims) < 2:
        return [], 0
    prior = _compared_sides(before, None, first, bindings)[1] if before is not None else {}
    ways: dict[str, dict[int, int]] = {}  # by dim, each length's way
    arrays: dict[str, tuple[np.ndarray, list[int]]] = {}  # by dim, the lengths looked at and each one's way
    shown: dict[str, dict[int, int]] = {}  # by dim, each way's length
    new: set[str] = set()
    fresh: dict[str, set[int]] = {}  # by dim, the ways that split one of ``before``'s: met first
    for dim in dims:
        sides, old = compared[dim], prior.get(dim, [])
        divisors = [side.args[0] for _, side in (*sides, *old) if getattr(side, "func", None) is _length_remainder_side]
        held = sorted({binding[dim] for binding in bindings if dim in binding})
        told = _told_lengths({n for lengths, _ in (*sides, *old) for n in lengths}, divisors)
        lengths = [*held, *(n for n in told if n not in held)]
        if not all(isinstance(n, (int, np.integer)) and abs(n) <= 2**53 for n in lengths):
            return [], 0
        array = np.asarray(lengths, np.int64).reshape(-1)
        went = _joined_classes([_side_classes(side, array) for _, side in sides], len(lengths)).tolist()
        if before is None or (split := _split_ways(went, old, array)):
            new.add(dim)
            fresh[dim] = split if before is not None else set()
        ways[dim] = dict(zip(lengths, went, strict=True))
        arrays[dim] = (array, went)
        order = [first[dim], *held, *sorted(told)]
        shown[dim] = {}
        for length in order:
            shown[dim].setdefault(ways[dim][length], length)
    pairs = [(a, b) for i, a in enumerate(dims) for b in dims[i + 1 :] if a in new or b in new]
    # A product of lengths compared (``Size(x[B, L]) == 10``) goes the way its dim's length does only beside the
    # other dims at the first set's sizes: elsewhere its way is read, and drawn, at the set's (``_ways_scaled``). Read
    # at the first's, ``B == 2`` and ``Size(x) == 10`` were drawn at (2, 10), never 5 tokens in a batch of 2, and a
    # rewrite's branch there verified until review s77 (late77c).
    scaled = [dim for dim in dims if any(products.get(dim, ()))]

    def realized(picked: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int | None]]:
        # The lengths of a set where each dim goes the way ``picked`` gives (else the first set's), and the ways it
        # goes (None where a product's can not go the way wanted beside the others' sizes).
        at = {dim: shown[dim][way] for dim, way in picked.items()}
        went: dict[str, int | None] = {dim: picked.get(dim, ways[dim][first[dim]]) for dim in dims}
        for dim in scaled:
            sizes = {**first, **at}
            ratios = {_ratio(of, first, sizes) for of in products[dim] if of}
            if ratios == {1.0}:
                continue
            looked = arrays[dim][0].tolist()
            candidates = [shown[dim][went[dim]]] + sorted(
                {n for r in ratios if r for t in looked for n in (math.floor(t / r), math.ceil(t / r)) if n >= 1}
            )
            goes = way_at(dim, sizes, candidates)
            length = next((n for n, way in zip(candidates, goes, strict=True) if way == went[dim]), None)
            if length is None:
                went[dim] = None
            elif length != first[dim] or dim in at:
                at[dim] = length
        return at, went

    def way_at(dim: str, sizes: Mapping[str, int], candidates: Sequence[int]) -> list[int | None]:
        if all(sizes.get(other) == first.get(other) for of in products[dim] for other in of):
            return [ways[dim].get(length) for length in candidates]
        return _ways_scaled(compared[dim], products[dim], first, sizes, *arrays[dim], candidates)

    held_ways = []
    for binding in bindings:
        went = {dim: ways[dim][binding[dim]] for dim in dims if dim in binding}
        for dim in (dim for dim in scaled if dim in went):
            if (way := way_at(dim, binding, [binding[dim]])[0]) is None:
                del went[dim]  # a way none of the lengths looked at goes: held by no pair
            else:
                went[dim] = way
        held_ways.append(went)
    counts = {dim: dict.fromkeys(shown[dim], 0) for dim in dims}
    for went in held_ways:
        for dim, way in went.items():
            counts[dim][way] += 1
    covered = {(a, went[a], b, went[b]) for went in held_ways for a, b in pairs if a in went and b in went}
    wanted: list[tuple[str, int, str, int]] = []
    total = 0
    for a, b in pairs:
        total += len(shown[a]) * len(shown[b])
        for way_a in shown[a]:
            for way_b in shown[b] if len(wanted) < _MOST_WAYS_TOGETHER else ():
                if (a, way_a, b, way_b) not in covered:
                    wanted.append((a, way_a, b, way_b))
    left = total - len(covered) - len(wanted)  # past those listed: counted, not listed
    wanted.sort(
        key=lambda pair: (
            -(pair[1] in fresh.get(pair[0], ())) - (pair[3] in fresh.get(pair[2], ())),
            counts[pair[0]][pair[1]] + counts[pair[2]][pair[3]],
        )
    )
    unmet = set(wanted)
    chosen: list[dict[str, int]] = []
    full = {tuple(went[dim] for dim in dims) for went in held_ways if len(went) == len(dims)}  # the ways of all held
    for pair in wanted:
        if len(chosen) >= most:
            break
        if pair not in unmet:
            continue
        picked = {pair[0]: pair[1], pair[2]: pair[3]}
        for dim in (dim for dim in dims if dim not in picked):
            # Each other dim at the way that meets the most unmet pairs with those picked, else the first set's.
            met = {
                way: sum(_ordered(dim, way, other, picked[other]) in unmet for other in picked) for way in shown[dim]
            }
            if max(met.values(), default=0) > 0:
                picked[dim] = max(met, key=lambda way: (met[way], -counts[dim][way]))
        at, reached = realized(picked)
        chosen.append(at)
        unmet.difference_update(
            _ordered(a, way_a, b, way_b) for a, b in pairs if None not in (way_a := reached[a], way_b := reached[b])
        )
        full.add(tuple(reached[dim] for dim in dims))
    if len(dims) < 3 or not new:
        return chosen, left + len(unmet)
    # Then the ways of all of them at once, where three or more dims are compared: each pair of ways met,
    # ``B > 1 and L < 6 and C > 2`` beside (1, 5, 128), (2, 257, 256) and (2, 5, 2) was never run, and a rewrite's
    # branch there verified until review s77 (late77c).
    total = math.prod(len(shown[dim]) for dim in dims)
    if total > _MOST_WAYS_TOGETHER:
        return chosen, left + len(unmet) + total - len(full)
    unheld = [combo for combo in itertools.product(*(shown[dim] for dim in dims)) if combo not in full]
    unheld.sort(
        key=lambda combo: (
            -sum(way in fresh.get(dim, ()) for dim, way in zip(dims, combo, strict=True)),
            sum(counts[dim][way] for dim, way in zip(dims, combo, strict=True)),
        )
    )
    taken = unheld[: max(most - len(chosen), 0)]
    for combo in taken:
        picked = {dim: way for dim, way in zip(dims, combo, strict=True) if way != ways[dim][first[dim]]}
        chosen.append(realized(picked)[0])
    return chosen, left + len(unmet) + len(unheld) - len(taken)


def _ratio(of: Collection[str], first: Mapping[str, int], sizes: Mapping[str, int]) -> float | None:
    """How many times the product of the dims ``of`` at ``sizes`` holds it at ``first``'s sizes, or None where a size
    is missing or none."""
    if any(not first.get(dim) or sizes.get(dim) is None for dim in of):
        return None
    return math.prod(sizes[dim] / first[dim] for dim in of)


def _ways_scaled(
    sides: _Sides,
    products: Sequence[frozenset[str]],
    first: Mapping[str, int],
    sizes: Mapping[str, int],
    lengths: np.ndarray,
    went: Sequence[int],
    candidates: Sequence[int],
) -> list[int | None]:
    """The way (of ``went``, the way each of ``lengths`` goes beside ``first``'s sizes) that each of ``candidates``
    goes at ``sides`` beside the other dims at ``sizes``, where a side reads a product of lengths (the dims beside it
    in ``products``, taken at ``first``'s sizes there): None where none of ``lengths`` goes that way, or a size is
    missing."""
    ratios = [_ratio(of, first, sizes) for of in products]
    if None in ratios:
        return [None] * len(candidates)
    extra = np.asarray(candidates, np.float64).reshape(-1)
    columns = [
        _side_classes(side, np.concatenate([lengths.astype(np.float64), extra * ratio]))
        for (_, side), ratio in zip(sides, ratios, strict=True)
    ]
    joined = _joined_classes(columns, lengths.size + extra.size).tolist()
    way_of: dict[int, int] = {}
    for number, way in zip(joined[: lengths.size], went, strict=True):
        way_of.setdefault(number, way)
    return [way_of.get(number) for number in joined[lengths.size :]]


def _ordered(a: str, way_a: int, b: str, way_b: int) -> tuple[str, int, str, int]:
    """A pair of ways of two dims (``lengths_together``), the dim first in order first."""
    return (a, way_a, b, way_b) if a < b else (b, way_b, a, way_a)


def _split_ways(went: Sequence[int], old: _Sides, lengths: np.ndarray) -> set[int]:
    """The ways of ``went`` (each of ``lengths``' way at some comparisons) that split a way of the comparisons
    ``old`` (lengths ``old`` sends one way that ``went`` sends several): empty where ``went`` tells apart nothing
    ``old`` does not."""
    was = _joined_classes([_side_classes(side, lengths) for _, side in old], lengths.size).tolist()
    within: dict[int, set[int]] = {}
    for before, way in zip(was, went, strict=True):
        within.setdefault(before, set()).add(way)
    return {way for split in within.values() if len(split) > 1 for way in split}


def _told_lengths(told: set[Any], divisors: Sequence[int]) -> list[Any]:
    """The lengths of ``told`` and up to a divisor of ``divisors`` past each (``_lengths_between``), from 1 to
    ``_LONGEST_COMPARED_LENGTH``, sorted; marked in numpy where all are whole numbers (each length's steps were one
    set's elements, a divisor of 4,096 beside 3,000 thresholds 24 million)."""
    steps = sorted({min(divisor, _LONGEST_COMPARED_LENGTH) for divisor in divisors} - {0})
    if not all(type(n) is int for n in told) or any(not isinstance(step, int) or step < 0 for step in steps):
        told = set(told)
        told.update(
            n + step
            for n in list(told)
            for divisor in divisors
            for step in range(min(divisor, _LONGEST_COMPARED_LENGTH))
        )
        return sorted(n for n in told if 1 <= n <= _LONGEST_COMPARED_LENGTH)
    # Clipped past twice the longest: a length there reaches no length from 1 to the longest, nor does one clipped.
    starts = np.clip(np.asarray(sorted(told), np.int64), -2 * _LONGEST_COMPARED_LENGTH, 2 * _LONGEST_COMPARED_LENGTH)
    marked = np.zeros(_LONGEST_COMPARED_LENGTH + 2, np.int64)  # the lengths each start to its step covers, as changes
    for step in steps or [1]:
        low = np.maximum(starts, 1)
        high = np.minimum(starts + step - 1, _LONGEST_COMPARED_LENGTH)
        inside = low <= high
        np.add.at(marked, low[inside], 1)
        np.add.at(marked, high[inside] + 1, -1)
    return np.flatnonzero(np.cumsum(marked)[: _LONGEST_COMPARED_LENGTH + 1] > 0).tolist()


def _side_classes(side: Callable[[int], Any], lengths: np.ndarray) -> np.ndarray:
    """A number for each of ``lengths`` (whole numbers) that two share where ``side`` (``_lengths_compared``'s) sends
    them the same way: a comparison with thresholds (``_length_side``) and one of a remainder
    (``_length_remainder_side``) read in numpy at once, and an ``Equal`` with one length, where their numbers compare
    in float64 as one length at a time does; any other one length at a time."""
    func, args = getattr(side, "func", None), getattr(side, "args", ())
    if getattr(side, "keywords", None):
        func = None
    if func is _length_side and len(args) == 3 and _float64_number(args[1]) and _float64_number(args[2]):
        pairs = [(op, np.asarray(every)) for op, every in args[0]]
        if all(op in _SIDES and every.ndim == 1 and _compared_in_float64(every) for op, every in pairs):
            with np.errstate(all="ignore"):
                values = args[1] * lengths.astype(np.float64) + args[2]
            sides = [_SIDES[op](values[:, None], every[None, :]) for op, every in pairs]
            return _row_classes(np.concatenate([np.zeros((lengths.size, 0), bool), *sides], axis=1))
    if func is _length_remainder_side and len(args) == 2 and type(args[0]) is int and 0 < args[0] <= 2**62:
        remainders, at = np.unique(lengths % args[0], return_inverse=True)
        return _side_classes(args[1], remainders)[at.reshape(-1)]
    if func is operator.eq and len(args) == 1 and type(args[0]) is int:
        return (lengths == args[0]).astype(np.int64)
    return _classes_of([side(n) for n in lengths.tolist()])


def _float64_number(number: Any) -> bool:
    """Whether ``number`` is a float64 number (a Python float, numpy's, or an array of one of no dims)."""
    return isinstance(number, float) or (
        isinstance(number, np.ndarray) and number.shape == () and number.dtype == np.float64
    )


def _compared_in_float64(every: np.ndarray) -> bool:
    """Whether a float64 number compares with ``every`` in float64 (float64, integers or booleans)."""
    return every.dtype == np.float64 or every.dtype.kind in "iub"


def _joined_classes(columns: Sequence[np.ndarray], size: int) -> np.ndarray:
    """A number for each of ``size`` rows, the same for rows alike in every one of ``columns`` (each a number from 0
    for each row)."""
    joined = np.zeros(size, np.int64)
    for column in columns:
        count = int(column.max(initial=-1)) + 1
        if (int(joined.max(initial=0)) + 1) * count >= 2**62:  # numbered again from 0 before the product overflows
            joined = np.unique(joined, return_inverse=True)[1].reshape(-1).astype(np.int64)
        joined = joined * count + column
    return joined


def _row_classes(matrix: np.ndarray) -> np.ndarray:
    """A number for each row of boolean ``matrix``, the same for rows alike."""
    if not matrix.size:
        return np.zeros(matrix.shape[0], np.int64)
    if matrix.shape[1] == 1:
        return matrix[:, 0].astype(np.int64)
    return np.unique(np.packbits(matrix, axis=1), axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _classes_of(values: Sequence[Any]) -> np.ndarray:
    """A number for each of ``values``, the same for values equal."""
    numbers: dict[Any, int] = {}
    return np.asarray([numbers.setdefault(value, len(numbers)) for value in values], np.int64).reshape(-1)


def position_table_lengths(
    model: ir.Model, avoided: dict[str, set[int]] | None = None, relative: dict[str, int] | None = None
) -> dict[str, int]:
    """Each named symbolic dim of an input whose length indexes a constant table along its rows, with the longest
    length that table allows: positions from ``Range(s, L, 1)`` that a ``Gather`` reads a table of T rows by (T), or a
    ``RotaryEmbedding`` its caches of T rows by (an encoder's rotary, ``_rotary_cache_rows``; or a fused one at a
    constant offset, ``_offset_rotary_extents``), or
    a ``Slice`` of a constant from a constant start to ``L`` along one axis of E rows (BERT's ``position_ids[:, :L]``,
    a table sliced itself: E, or T where the slice indexes a table of fewer rows), ``L`` read through ``Shape`` (of
    the input, or of the rows a ``Gather`` reads by it: DistilBERT's ``Shape(word_embeddings(input_ids))``), a
    ``Gather`` or ``Slice`` of that length, moves and casts (as ``compared_lengths`` reads it, ``_length_uses``), or
    through a ``Reshape`` to a target a ``Concat`` joins from lengths and constants (legacy GPT-2's
    ``input_ids.view(-1, L)``, not followed until review s76); the constants met
    (starts, steps, axes) may be moved or cast on the way, as the dynamo exporter writes them. Generated lengths (128,
    then 65 where 257 is past a 256-row table) never read such a table's last row, and a rewrite wrong only there
    verified until review s75 (xfix4). Also positions that count the tokens up to each (``_counted_extents``:
    RoBERTa's ``cumsum(input_ids != padding_idx) * mask + padding_idx``, a table of 514 rows read to its last at 512
    tokens; not followed until review s76), where ``avoided`` gets the input and the values its elements must not
    hold for every token to count (RoBERTa's padding id; a padding mask's 0, drawn at one row all ones). Also a table
    positions read through an index of pairs of them (``_relative_end``: DeBERTa's relative table, read to its ends
    only by tokens half its rows apart; not followed until review s77), where no table of absolute positions ends the
    dim, put in ``relative`` with the shortest length that reads its ends (the length given is a few tokens on where
    the index is clipped, ``_relative_end``): any longer length reads them too. The smallest extent where a dim meets
    several tables;
    empty where none."""
    found: dict[str, int] = {}
    reads_pairs: dict[str, tuple[int, int]] = {}
    for start, elements in _length_starts(model, sizes_read=False, rows_read=True):
        for key, rows, shortest in _table_extents(start, elements):
            if key and shortest is not None:  # read at that length or longer: the longest such
                drawn, least = reads_pairs.get(key, (rows, shortest))
                reads_pairs[key] = (max(rows, drawn), max(shortest, least))
            elif key:  # a named dim: one without a name has no binding to set
                found[key] = min(rows, found.get(key, rows))
    for key, (rows, shortest) in reads_pairs.items():  # a table of absolute positions ends the lengths the model runs
        if key not in found and relative is not None:
            relative[key] = shortest
        found.setdefault(key, rows)
    for key, rows in _offset_rotary_extents(model):
        found[key] = min(rows, found.get(key, rows))
    for key, rows, off in _counted_extents(model):
        found[key] = min(rows, found.get(key, rows))
        for name, values in off.items() if avoided is not None else ():
            avoided.setdefault(name, set()).update(values)
    return found


def _length_starts(
    model: ir.Model,
    sizes: Mapping[str, int] | None = None,
    *,
    sizes_read: bool = True,
    rows_read: bool = False,
) -> list[tuple[ir.Value, list[tuple[Any, float]]]]:
    """Where a walk of lengths (``_length_uses``) starts: each ``Shape`` of a runtime input (with ``sizes_read``, each
    ``Size`` too, its product as one element, ``_product_of_lengths``; with ``rows_read``, each ``Shape`` of the rows
    a ``Gather`` of a constant table reads by it, DistilBERT's ``Shape(word_embeddings(input_ids))``), with the
    elements its output holds, each the dim it holds (named as ``_length_key`` names it) and the factor on it: a
    fixed size is its factor, and rows without a name (key None too) are drawn at one."""
    starts = []
    for value in runtime_inputs(model):
        if value.shape is not None:
            dims = list(value.shape)
            shape = [(key, 1.0 if _free(dim) else float(dim)) for key, dim in zip(_length_keys(dims), dims)]
            starts.extend(_shapes_read(value, shape, sizes, sizes_read=sizes_read, rows_read=rows_read))
    return starts


def _shapes_read(
    value: ir.Value,
    shape: list[tuple[Any, float]],
    sizes: Mapping[str, int] | None = None,
    *,
    sizes_read: bool = True,
    rows_read: bool = False,
) -> list[tuple[ir.Value, list[tuple[Any, float]]]]:
    """``_length_starts`` of one ``value`` whose dims ``shape`` gives (as the elements of its shape)."""
    starts = []
    for node, index in value.uses():
        if not is_onnx_domain(node):
            continue
        readers = [(node, shape)] if index == 0 else []
        if rows_read and node.op_type == "Gather" and index == 1 and node.attributes.get_int("axis", 0) == 0:
            table = ir.convenience.get_const_tensor(node.inputs[0]) if node.inputs[0] is not None else None
            if table is not None and table.shape:  # rows read by ids [B, L]: [B, L, width]
                rows = [*shape, *((None, float(size)) for size in table.shape[1:])]
                readers = _rows_readers(node.outputs[0], rows)
        for reader, held in readers:
            if reader.op_type == "Shape":
                start, end = reader.attributes.get_int("start", 0), reader.attributes.get_int("end", len(held))
                starts.append((reader.outputs[0], held[start:end]))
            elif sizes_read and reader.op_type == "Size":
                if (product := _product_of_lengths(held, sizes)) is not None:
                    starts.append((reader.outputs[0], product))
    return starts


def _rows_readers(
    rows: ir.Value, dims: list[tuple[Any, float]], seen: set[int] | None = None
) -> list[tuple[ir.Node, list[tuple[Any, float]]]]:
    """Each node that reads ``rows`` (a ``Gather`` of a constant table, ``_shapes_read``, its dims ``dims``) at input 0,
    with the dims it reads: past a ``Gather`` of one element along an axis, which drops it (legacy BART's length off
    ``inputs_embeds[:, :, -1]``; not followed until review s76, late76c), and past ops that keep every axis
    (``_AXES_KEEPING_OPS``: elementwise, ``LayerNormalization``), an ``Add``, ``Sub``, ``Mul`` or ``Div`` by a value
    of no higher rank (``_known_rank``: a scale, a bias, another table's rows of the same ids) and a ``MatMul`` by a
    constant matrix, which changes the last axis alone. Legacy RoFormer reads its sinusoidal table's length off
    ``Shape(LayerNorm(words + token types))[1]``: not followed, that table got no set at its end until review s77."""
    seen = set() if seen is None else seen
    if id(rows) in seen:  # a residual ``Add`` meets its own input again: each value once
        return []
    seen.add(id(rows))
    readers = []
    for user, at in rows.uses():
        if not is_onnx_domain(user) or at > 1 or not user.outputs:
            continue
        if at == 0:
            readers.append((user, dims))
        other = user.inputs[1 - at] if len(user.inputs) == 2 else None
        if user.op_type in _AXES_KEEPING_OPS and at == 0:
            readers.extend(_rows_readers(user.outputs[0], dims, seen))
        elif user.op_type in ("Add", "Sub", "Mul", "Div") and other is not None:
            if (rank := _known_rank(other)) is not None and rank <= len(dims):  # broadcast into the rows: axes kept
                readers.extend(_rows_readers(user.outputs[0], dims, seen))
        elif user.op_type == "MatMul" and at == 0 and other is not None and len(dims) >= 2:
            weight = ir.convenience.get_const_tensor(other)
            if weight is not None and len(weight.shape) == 2:
                readers.extend(_rows_readers(user.outputs[0], [*dims[:-1], (None, float(weight.shape[1]))], seen))
        elif user.op_type == "Gather" and at == 0 and user.inputs[1] is not None:
            picked, axis = ir.convenience.get_const_tensor(user.inputs[1]), user.attributes.get_int("axis", 0)
            if picked is not None and len(picked.shape) == 0 and -len(dims) <= axis < len(dims):
                kept = [d for a, d in enumerate(dims) if a != axis % len(dims)]
                readers.extend(_rows_readers(user.outputs[0], kept, seen))
    return readers


# Ops whose output 0 has the dims of their input 0 (``_rows_readers``): elementwise ones and normalizations.
_AXES_KEEPING_OPS = frozenset(
    {
        "Cast",
        "Identity",
        "Dropout",
        "LayerNormalization",
        "Relu",
        "Gelu",
        "Tanh",
        "Sigmoid",
        "Erf",
        "Neg",
        "Abs",
        "Sqrt",
        "Exp",
        "Softmax",
    }
)


def _known_rank(value: ir.Value | None, depth: int = 0) -> int | None:
    """``value``'s rank where it is recorded or a constant's, or what a ``MatMul``, ``Gather``, ``Unsqueeze``,
    ``ConstantOfShape`` of a ``Shape``, a broadcasting op (the highest of its inputs') or an op of
    ``_AXES_KEEPING_OPS`` makes of its inputs'; None otherwise (``_rows_readers``)."""
    if value is None or depth > 16:
        return None
    if value.shape is not None:
        return len(value.shape)
    if (tensor := ir.convenience.get_const_tensor(value)) is not None:
        return len(tensor.shape)
    node = value.producer()
    if node is None or not is_onnx_domain(node) or not node.inputs:
        return None
    if node.op_type in _AXES_KEEPING_OPS:
        return _known_rank(node.inputs[0], depth + 1)
    if node.op_type in ("Add", "Sub", "Mul", "Div", "Pow", "Where"):
        ranks = []
        for operand in node.inputs:  # the first unknown rank ends the walk: a chain of them is read once
            if (rank := _known_rank(operand, depth + 1)) is None:
                return None
            ranks.append(rank)
        return max(ranks)
    if node.op_type == "MatMul" and len(node.inputs) == 2:  # two matrices or stacks of them
        first, second = _known_rank(node.inputs[0], depth + 1), _known_rank(node.inputs[1], depth + 1)
        return None if first is None or second is None or min(first, second) < 2 else max(first, second)
    if node.op_type == "Gather" and len(node.inputs) == 2:
        data, picks = _known_rank(node.inputs[0], depth + 1), _known_rank(node.inputs[1], depth + 1)
        return None if data is None or picks is None else data + picks - 1
    if node.op_type == "Unsqueeze" and (inner := _known_rank(node.inputs[0], depth + 1)) is not None:
        axes = _folded_ints(node.inputs[1]) if len(node.inputs) > 1 else node.attributes.get_ints("axes", None)
        return None if axes is None else inner + len(axes)
    if node.op_type == "ConstantOfShape" and node.inputs[0] is not None and (shape := node.inputs[0].producer()):
        read = _known_rank(shape.inputs[0], depth + 1) if shape.op_type == "Shape" and shape.inputs else None
        if read is not None:  # as many dims as the ``Shape`` holds of the value it reads
            start, end = shape.attributes.get_int("start", 0), shape.attributes.get_int("end", read)
            return len(range(read)[start:end])
    if node.op_type == "Shape":
        return 1
    return None


def _length_uses(
    pending: list[tuple[ir.Value, list[tuple[Any, float]], _Affine | None]],
) -> Iterator[tuple[ir.Node, int, list[tuple[Any, float]], _Affine | None]]:
    """``(node, index, elements, affine)`` for each use of a value a walk of lengths reaches from ``pending`` (a
    ``Shape``'s output, ``_length_starts``, with the elements it holds and the scale and offset put on them), past the
    moves and casts and a ``Gather`` or ``Slice`` of its elements (``_picked_lengths``), which it follows itself: the
    caller follows any other op by putting its output in ``pending``. The one walk of ``compared_lengths`` and
    ``position_table_lengths``."""
    seen: set[int] = set()
    while pending:
        current, held, affine = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for node, index in current.uses():
            if not is_onnx_domain(node):
                continue
            if (node.op_type in _COMPARED_MOVES - {"Slice"} or node.op_type == "Cast") and index == 0:
                if len(held) == 1 or node.op_type in ("Identity", "Cast"):
                    pending.append((node.outputs[0], held, affine))
            elif node.op_type in ("Gather", "Slice") and index == 0 and affine is None:
                if (picked := _picked_lengths(node, held)) is not None:
                    pending.append((node.outputs[0], picked, None))
            else:  # a move's shape or axes too: a ``Reshape`` to a target of lengths (``_table_extents``)
                yield node, index, held, affine


def _counted_extents(model: ir.Model) -> Iterator[tuple[str, int, dict[str, set[int]]]]:
    """``(dim, rows, avoided)`` for each constant table positions that count tokens index along its rows
    (``position_table_lengths``): a ``CumSum`` along a named dim of a token indicator (``_token_indicator``), each
    position the count of tokens up to it, then cast, times a token indicator, or plus or minus a constant (RoBERTa's
    ``cumsum(input_ids != padding_idx) * mask + padding_idx``; OPT's ``cumsum(attention_mask) * attention_mask - 1 +
    2``); ``rows`` is the length whose last token reads the table's last row where every token counts (its largest
    index minus the offset: 512 of 514 rows at RoBERTa's padding id 1), ``avoided`` what the indicators' inputs must
    not hold for that."""
    for node in model.graph:
        if node.op_type != "CumSum" or not is_onnx_domain(node) or len(node.inputs) != 2:
            continue
        if node.attributes.get_int("exclusive", 0) or node.attributes.get_int("reverse", 0):
            continue
        axis, counted = _folded_ints(node.inputs[1]), _token_indicator(node.inputs[0])
        if axis is None or len(axis) != 1 or counted is None or counted[0].shape is None:
            continue
        source, off = counted
        keys = _length_keys(list(source.shape))
        if not -len(keys) <= axis[0] < len(keys) or not (key := keys[axis[0]]):
            continue
        pending, seen = [(node.outputs[0], 0, off)], set()
        while pending:
            value, offset, off = pending.pop()
            if id(value) in seen:
                continue
            seen.add(id(value))
            if (bound := _index_range(value)) is not None:  # an index below ``bound``: counts up to ``bound - 1``
                if bound - 1 - offset >= 1:
                    yield key, bound - 1 - offset, off
                continue
            for user, index in value.uses():
                if not is_onnx_domain(user) or index > 1 or len(user.inputs) < 1 + index:
                    continue
                other = user.inputs[1 - index] if len(user.inputs) == 2 else None
                if user.op_type in ("Cast", "CastLike", "Identity") and index == 0:
                    pending.append((user.outputs[0], offset, off))
                elif user.op_type in ("Add", "Sub") and (user.op_type == "Add" or index == 0) and other is not None:
                    if (number := _folded_ints(other)) is not None and len(number) == 1:
                        pending.append(
                            (user.outputs[0], offset + (number[0] if user.op_type == "Add" else -number[0]), off)
                        )
                elif user.op_type == "Mul" and other is not None and (also := _token_indicator(other)) is not None:
                    joined = {name: off.get(name, set()) | also[1].get(name, set()) for name in {*off, *also[1]}}
                    pending.append((user.outputs[0], offset, joined))


def _token_indicator(value: ir.Value) -> tuple[ir.Value, dict[str, set[int]]] | None:
    """The runtime input a 0/1 ``value`` marks tokens of (``_counted_extents``), with the values its elements must not
    hold to be marked: a padding mask (``_is_mask``; 0), or ``Not(Equal(ids, c))`` (``c``), through casts; None for
    anything else."""
    negated, avoided = False, None
    for _ in range(8):
        node = value.producer()
        if node is None:
            if not value.is_graph_input() or value.is_initializer() or negated:
                return None
            if avoided is None and not _is_mask(value):
                return None
            return value, {value.name: {0 if avoided is None else avoided}}
        if not is_onnx_domain(node) or not node.inputs or node.inputs[0] is None:
            return None
        if node.op_type in ("Cast", "CastLike", "Identity"):
            value = node.inputs[0]
        elif node.op_type == "Not":
            negated, value = not negated, node.inputs[0]
        elif node.op_type == "Equal" and negated and avoided is None and len(node.inputs) == 2:
            for index in (0, 1):
                number = _folded_ints(node.inputs[1 - index])
                if number is not None and len(number) == 1 and _folded_ints(node.inputs[index]) is None:
                    negated, avoided, value = False, number[0], node.inputs[index]
                    break
            else:
                return None
        else:
            return None
    return None


def _table_extents(shape: ir.Value, elements: list[tuple[Any, float]]) -> Iterator[tuple[Any, int, int | None]]:
    """``(dim, rows, shortest)`` for each table one element of ``shape`` (a ``Shape``'s output, each element the dim it
    holds: ``elements``) indexes along its rows (``position_table_lengths``); ``shortest`` where positions reach it
    only through an index of pairs of them (``_relative_end``), the shortest length reading its ends (any longer
    length reads them too), None otherwise."""
    pending: list[tuple[ir.Value, list[tuple[Any, float]], _Affine | None]] = [(shape, elements, None)]
    for node, index, held, _ in _length_uses(pending):
        if node.op_type == "Concat" and node.attributes.get_int("axis", 0) in (0, -1):
            # A shape put together from lengths and constants (legacy GPT-2's ``input_ids.view(-1, L)``: ``Reshape(x,
            # Concat([-1], Unsqueeze(Shape(x)[1])))``, the rows it reads its positions' length from)
            joined: list[tuple[Any, float]] | None = []
            for piece in node.inputs:
                numbers = _folded_ints(piece) if piece is not node.inputs[index] else None
                if piece is node.inputs[index]:
                    joined.extend(held)
                elif numbers is None or joined is None:
                    joined = None
                    break
                else:
                    joined.extend((None, float(number)) for number in numbers)
            if joined is not None:
                pending.append((node.outputs[0], joined, None))
        elif node.op_type == "Reshape" and index == 1 and node.attributes.get_int("allowzero", 0) == 0:
            # Its output's dims are the lengths its target holds (a constant, -1 or 0: a dim of no name).
            dims = [(key, 1.0) if key and factor == 1.0 else (None, 1.0) for key, factor in held]
            for start, read in _shapes_read(node.outputs[0], dims, sizes_read=False, rows_read=True):
                yield from _table_extents(start, read)
        elif len(held) != 1 or held[0][0] is None:
            continue
        elif node.op_type == "Range" and index == 1 and _folded_ints(node.inputs[2]) == [1]:
            first = _folded_ints(node.inputs[0])
            if first is None or first[0] < 0:
                continue
            ends = [_index_range(node.outputs[0]), _rotary_cache_rows(node.outputs[0])]
            if rows := [end for end in ends if end is not None]:
                yield held[0][0], min(rows), None
            elif (lengths := _relative_end(node.outputs[0], first[0])) is not None:
                yield held[0][0], *lengths
        elif node.op_type == "Slice" and index == 2 and (rows := _sliced_rows(node)) is not None:
            positions = _index_range(node.outputs[0])
            reached = _first_reaching(node, positions - 1) if positions is not None and positions < rows else None
            yield held[0][0], rows if reached is None else reached, None


# The longest length ``_relative_end`` looks for a relative index's end at: past ``_LONGEST_TABLE_END`` of
# ``optimizer.api`` it is named in the report, not drawn.
_LONGEST_RELATIVE = 1 << 16
# Tokens ``_relative_end`` draws past the shortest length that reads a clipped relative index's end rows.
_RELATIVE_MARGIN = 8
# Elementwise ops ``_relative_reads`` evaluates as ONNX does (integer ``Div`` truncates, in ``_evaluated``).
_RELATIVE_OPS: dict[str, Callable[..., np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Neg": np.negative,
    "Abs": np.abs,
    "Sign": np.sign,
    "Log": np.log,
    "Ceil": np.ceil,
    "Floor": np.floor,
    "Min": np.minimum,
    "Max": np.maximum,
    "Where": np.where,
    "Less": np.less,
    "Greater": np.greater,
    "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal,
    "Equal": np.equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Not": np.logical_not,
}
# Ops that pass an index's values on as they are, only moved or repeated (``_relative_reads``); a ``Slice`` too where it
# keeps all (``_slices_nothing``).
_RELATIVE_MOVES = frozenset({"Identity", "Squeeze", "Unsqueeze", "Expand", "Transpose"})


def _relative_end(positions: ir.Value, first: int) -> tuple[int, int] | None:
    """The length to draw, and the shortest length ``L``, at which positions ``Range(first, L)`` (``_table_extents``),
    turned by the graph into an index of pairs of them, read the last row of what that index reads and the least row
    it reads at any length (``_relative_reads``): DeBERTa's relative table, ``rel_embeddings`` projected into
    content-to-position scores ``[.., q, 2 span]`` and picked by ``GatherElements`` at ``clip(q - k + span, 0, 2 span -
    1)`` (log-bucketed in -v3), reads its last row only where tokens are ``span - 1`` apart and its first where they
    are ``span`` apart the other way (201 tokens for 400 rows, past the generated sets' 192), and a rewrite wrong only
    there verified until review s77 (xtab). The least row is the one read at ``_LONGEST_RELATIVE`` where it is no
    negative one, however the index is bounded: only a ``Clip`` or a ``Max`` with its bound second was read as a bound
    until review s77 (late77d), and at ``Max(0, x)`` or ``Where(x < 0, 0, x)`` the length found read the last row and
    not the first. The length drawn is ``_RELATIVE_MARGIN`` tokens on where the index stays within its rows there (a
    clip: more pairs of tokens read the end rows), the shortest otherwise. None where no length up to
    ``_LONGEST_RELATIVE`` reads them, or the positions reach no such index. The index is evaluated at the first and
    last positions alone: a function that grows with the distance of two tokens (a clip, a bucket) takes its extremes
    there, and one that does not is found later, not sooner (the length found still reads the rows)."""

    if not _reaches_an_index(positions):  # nothing to evaluate (nor constants to compute on ONNX Runtime for it)
        return None
    # The dynamo exporter counts the query's and the key's positions by a ``Range`` each, over one length.
    producer = positions.producer()
    graph, limit = (producer.graph, _length_source(producer.inputs[1])) if producer is not None else (None, None)
    counted = [positions]
    for node in graph if graph is not None and limit is not None else ():
        if node.op_type == "Range" and is_onnx_domain(node) and node.outputs[0] is not positions:
            if _length_source(node.inputs[1]) is limit and [
                _folded_ints(v) for v in (node.inputs[0], node.inputs[2])
            ] == [
                [first],
                [1],
            ]:
                counted.append(node.outputs[0])

    # The least row each index reads at any length; an index that goes negative is bounded by nothing below.
    lows = {key: least for key, _, _, least in _relative_reads(counted, first, _LONGEST_RELATIVE, limit) if least >= 0}

    def reached(length: int) -> bool:
        reads = _relative_reads(counted, first, length, limit)
        return any(top >= last and least <= lows.get(key, least) for key, top, last, least in reads)

    if not reached(_LONGEST_RELATIVE):
        return None
    low, high = first + 1, _LONGEST_RELATIVE
    while low < high:  # the largest index grows with the length: the first length that reaches the row
        middle = (low + high) // 2
        low, high = (low, middle) if reached(middle) else (middle + 1, high)
    # At the shortest length one to three pairs of tokens read each end row, and a rewrite swapping the two moved the
    # output within float32's tolerance on 2 draws of 30 (review s77 late77d). Where every index stays within its rows
    # a few tokens on (clipped: the pairs farther apart read the same end rows), 45 pairs read each (caught on 30 of
    # 30, the error 100 times the tolerance's at least).
    longer = low + _RELATIVE_MARGIN
    beyond = _relative_reads(counted, first, longer, limit)
    return (longer if all(least >= 0 and top <= last for _, top, last, least in beyond) else low), low


def _reaches_an_index(positions: ir.Value) -> bool:
    """Whether ``positions`` reach the index of a ``Gather`` or ``GatherElements`` through ops ``_evaluated`` reads
    (``_relative_end``), whatever their other operands."""
    followed = {*_RELATIVE_OPS, *_RELATIVE_MOVES, "Cast", "CastLike", "Clip", "Div", "Slice"}
    for node, index in _uses_reached(positions, lambda node, _: is_onnx_domain(node) and node.op_type in followed):
        if is_onnx_domain(node) and node.op_type in ("Gather", "GatherElements") and index == 1:
            return True
    return False


def _relative_reads(
    positions: list[ir.Value], first: int, length: int, limit: ir.Value | None
) -> list[tuple[int, int, int, int]]:
    """``(node, largest index, last row, least index)`` for each ``Gather`` or ``GatherElements`` (``id`` of) that
    reads an index computed from ``positions``, each ``Range(first, length)`` (``_relative_end``, ``limit`` the value
    the length is read from), and constants alone, evaluated with the positions at their first and last values:
    through ``_RELATIVE_OPS``, casts, ``Clip`` and ``_RELATIVE_MOVES``. The last row is the least of the data's axis's
    (``_axis_size``) and the bound a ``Clip`` or ``Min`` puts on the index on the way."""
    known: dict[int, np.ndarray] = {id(value): np.array([first, length - 1], np.int64) for value in positions}
    tops: dict[int, int | None] = {id(value): None for value in positions}
    reads = []
    pending = list(positions)
    with np.errstate(all="ignore"):
        while pending:
            value = pending.pop()
            for node, index in value.uses():
                if not is_onnx_domain(node) or len(node.outputs) != 1 or id(node.outputs[0]) in known:
                    continue
                if node.op_type in ("Gather", "GatherElements") and index == 1 and len(node.inputs) == 2:
                    axis = node.attributes.get_int("axis", 0)
                    rows, top = _axis_size(node.inputs[0], axis), tops[id(value)]
                    bounds = [bound - 1 for bound in (rows,) if bound] + ([top] if top is not None else [])
                    if bounds and (index := known[id(value)]).dtype.kind in "iu" and index.size:
                        reads.append((id(node), int(index.max()), min(bounds), int(index.min())))
                    continue
                if (evaluated := _evaluated(node, known, tops, limit)) is not None:
                    known[id(node.outputs[0])], tops[id(node.outputs[0])] = evaluated
                    pending.append(node.outputs[0])
    return reads


def _evaluated(
    node: ir.Node, known: dict[int, np.ndarray], tops: dict[int, int | None], limit: ir.Value | None
) -> tuple[np.ndarray, int | None] | None:
    """What ``node`` computes from the values ``known`` holds and constants (``_relative_reads``), with the bound
    ``tops`` says it keeps its values under (None where none is); None where it is none that walk evaluates, or reads
    what it cannot (a ``Slice`` to an end but ``limit``'s, the positions' length: ``_slices_nothing``)."""
    operands = []
    for value in node.inputs:
        if value is None:
            operands.append(None)
        elif id(value) in known:
            operands.append(known[id(value)])
        elif (tensor := ir.convenience.get_const_tensor(value)) is not None:
            operands.append(tensor.numpy())
        elif (array := constant_value(value)) is not None:  # computed from constants: dynamo's ``log(lifted)``
            operands.append(array)
        elif node.op_type in ("Expand", "Slice") and value is not node.inputs[0]:
            operands.append(None)  # a shape or an end the lengths give: the data is passed on
        else:
            return None
    data, none = operands[0], None
    top = tops.get(id(node.inputs[0])) if node.inputs[0] is not None else none
    if data is None:
        return None
    if node.op_type == "Cast":
        to = ir.DataType(node.attributes.get_int("to", ir.DataType.INT64))
        return data.astype(to.numpy()), top if to.is_integer() else none
    if node.op_type == "CastLike" and len(operands) == 2 and operands[1] is not None:
        return data.astype(operands[1].dtype), top if operands[1].dtype.kind in "iu" else none
    if node.op_type == "Clip":
        low, high = (operands + [None, None])[1:3]
        result = np.clip(data, -np.inf if low is None else low, np.inf if high is None else high).astype(data.dtype)
        return result, top if high is None else _whole(np.asarray(high).reshape(-1)[0])
    if node.op_type == "Div" and len(operands) == 2 and operands[1] is not None:
        if data.dtype.kind in "iu":
            return np.trunc(data / operands[1]).astype(data.dtype), none
        return data / operands[1], none
    if node.op_type == "Slice":
        return (data, top) if _slices_nothing(node, limit) else None
    if node.op_type in _RELATIVE_MOVES:
        if node.op_type in ("Expand", "Identity"):
            return data, top
        axes = operands[1] if len(operands) > 1 else None
        axes = node.attributes.get_ints("axes", None) if axes is None else np.reshape(axes, -1).tolist()
        try:
            if node.op_type == "Unsqueeze":
                return None if axes is None else (np.expand_dims(data, tuple(axes)), top)
            if node.op_type == "Squeeze":
                return np.squeeze(data, None if axes is None else tuple(axes)), top
            return np.transpose(data, node.attributes.get_ints("perm", None)), top
        except ValueError:  # axes the positions, evaluated at two, do not have (numpy's AxisError is one)
            return None
    if node.op_type in _RELATIVE_OPS and all(operand is not None for operand in operands):
        try:
            result = _RELATIVE_OPS[node.op_type](*operands)
        except ValueError:  # shapes that do not broadcast
            return None
        read = [id(value) in known for value in node.inputs]
        if node.op_type in ("Min", "Max") and len(operands) == 2 and read.count(True) == 1:
            at = read.index(False)  # the bound, on either side (``Min(2 span - 1, x)``)
            held = tops.get(id(node.inputs[1 - at]))
            if node.op_type == "Max":
                return np.asarray(result), held
            bound = _whole(np.min(operands[at]))
            return np.asarray(result), bound if held is None or bound is None else min(bound, held)
        return np.asarray(result), none
    return None


def _whole(number: Any) -> int | None:
    """``number`` as an int, or None where it is no finite number (a ``Clip`` to infinity bounds nothing)."""
    return int(number) if np.isfinite(number) else None


def _slices_nothing(node: ir.Node, limit: ir.Value | None) -> bool:
    """Whether a ``Slice`` (``_evaluated``) starts at 0 by steps of 1 to the positions' own length (DeBERTa's
    ``rel_pos_ids[:query_size, :]``, read off the value ``limit`` their ``Range`` reads it off) or past the longest
    length looked for (the dynamo exporter's ``[:]``), keeping what it reads whole. An end the graph computes
    otherwise (``L - 1``) was taken to keep all until review s77 (late77d): the length found was one short of the
    rows' and a set labelled at the table's end read none."""
    inputs = [*node.inputs, None, None][:5]
    starts, steps = _folded_ints(inputs[1]), _folded_ints(inputs[4]) if inputs[4] is not None else [1]
    ends = _folded_ints(inputs[2])
    return (
        starts is not None
        and not any(starts)
        and steps is not None
        and all(step == 1 for step in steps)
        and (
            all(end >= _LONGEST_RELATIVE for end in ends)
            if ends is not None
            else limit is not None and _length_source(inputs[2]) is limit
        )
    )


def _length_source(value: ir.Value | None) -> ir.Value | None:
    """The value a length ``value`` is cast, squeezed or reshaped from (``_relative_end``)."""
    for _ in range(8):
        node = value.producer() if value is not None else None
        if node is None or not is_onnx_domain(node) or node.op_type not in _ORDER_KEEPING_OPS or not node.inputs:
            return value
        value = node.inputs[0]
    return value


def _axis_size(value: ir.Value | None, axis: int) -> int | None:
    """The size of ``value``'s ``axis`` where it is provable: recorded or a constant's, or the last of a ``MatMul`` by a
    constant (``_relative_reads``: the scores a relative table projected into)."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    shape = list(tensor.shape) if tensor is not None else list(value.shape) if value.shape is not None else None
    if shape is not None:
        size = shape[axis] if -len(shape) <= axis < len(shape) else None
        return size if isinstance(size, int) else None
    node, rank = value.producer(), _known_rank(value)
    if node is None or not is_onnx_domain(node) or node.op_type != "MatMul" or not rank or axis % rank != rank - 1:
        return None
    weight = ir.convenience.get_const_tensor(node.inputs[1]) if node.inputs[1] is not None else None
    return int(weight.shape[-1]) if weight is not None and len(weight.shape) >= 2 else None


# Ops that pass positions on to a rotary's ``position_ids`` as they are (``_rotary_cache_rows``): casts, reshapes and
# an ``Expand`` to the batch (an encoder's ``arange(S).unsqueeze(0).expand(B, S)``).
_KEEPING_POSITIONS = frozenset({"Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Expand"})


def _rotary_cache_rows(positions: ir.Value) -> int | None:
    """The fewest rows of the cos/sin caches a ``RotaryEmbedding`` reads at ``positions`` (passed on by
    ``_KEEPING_POSITIONS``), fused (``com.microsoft``: ``position_ids`` input 1, caches 2 and 3) or ONNX's own (opset
    23: input 3, caches 1 and 2), each cache a table of recorded or constant rows; None where none does. An encoder's
    rotary read at ``Range(0, S)`` (``position_table_lengths``) reads its caches' last row at their rows' length
    alone: generated lengths end far below, and a rewrite wrong only past them verified until review s76 xfix4 (the
    op's own domain is not ONNX's, so ``_index_range`` stops at it)."""
    found: list[int] = []
    pending, seen = [positions], set()
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        for node, index in value.uses():
            domain = "" if is_onnx_domain(node) else node.domain
            if node.op_type == "RotaryEmbedding" and (read := ROTARY_INPUTS.get(domain)) and index == read[0]:
                for cache in (node.inputs[at] for at in read[1:] if at < len(node.inputs)):
                    if cache is None:
                        continue
                    tensor = ir.convenience.get_const_tensor(cache)
                    dims = list(tensor.shape) if tensor is not None else list(cache.shape or ())
                    if len(dims) == 2 and isinstance(dims[0], int) and dims[0] > 0:
                        found.append(int(dims[0]))
            elif is_onnx_domain(node) and node.op_type in _KEEPING_POSITIONS and index == 0:
                pending.extend(node.outputs)
    return min(found) if found else None


def _offset_rotary_extents(model: ir.Model) -> Iterator[tuple[str, int]]:
    """``(dim, rows)`` for each fused ``RotaryEmbedding`` (``position_table_lengths``) that reads its caches of T rows
    at a constant offset ``p`` (a ``[1]`` ``position_ids``: positions ``p .. p + S - 1``), ``dim`` the name its rotated
    input's recorded sequence axis shares with a graph input's dim (``[B, S, H]``, or ``[B, N, S, d]``), ``rows``
    ``T - p``: an encoder ``fuse-rotary-embedding`` fused (offset 0), optimized again, read no cache row past the
    generated lengths, and a rewrite wrong only there verified until review s76 xfix4."""
    names = {key for value in runtime_inputs(model) if value.shape is not None for key in _length_keys(value.shape)}
    for node in model.graph:
        if node.op_type != "RotaryEmbedding" or node.domain != MS_DOMAIN or len(node.inputs) < 4:
            continue
        offset, x = _folded_ints(node.inputs[1]), node.inputs[0]
        if offset is None or len(offset) != 1 or offset[0] < 0 or x is None or x.shape is None:
            continue
        if x.shape.rank() not in (3, 4) or not isinstance(dim := x.shape[x.shape.rank() - 2], ir.SymbolicDim):
            continue
        rows = _rotary_cache_rows(node.inputs[1])
        if dim.value and dim.value in names and rows is not None and rows > offset[0]:
            yield dim.value, rows - offset[0]


def _sliced_rows(node: ir.Node) -> int | None:
    """The rows a ``Slice`` whose end is a length reads its constant data along (the one axis it slices, from a
    constant start of at least 0, by steps of 1), or None."""
    data = ir.convenience.get_const_tensor(node.inputs[0]) if node.inputs[0] is not None else None
    inputs = [*node.inputs, None, None][:5]
    starts = _folded_ints(inputs[1])
    axes = _folded_ints(inputs[3]) if inputs[3] is not None else [0]
    steps = _folded_ints(inputs[4]) if inputs[4] is not None else [1]
    if data is None or not data.shape or starts is None or axes is None or steps is None:
        return None
    rank = len(data.shape)
    if len(starts) != 1 or starts[0] < 0 or len(axes) != 1 or steps != [1] or not -rank <= axes[0] < rank:
        return None
    return int(data.shape[axes[0]])


def _first_reaching(node: ir.Node, last: int) -> int | None:
    """The shortest length a ``Slice`` of a constant to a length (``_sliced_rows``) holds an element of ``last`` or
    more at, or None where none is: BERT's ``position_ids[:, :L]`` reads a table of T rows to its last at T, while
    BigBird's ``token_type_ids[:, :L]``, zeros, never reads the last of 2 token types (taken for positions that ended
    there, its 2 hid the position table's end until review s76, late76c)."""
    inputs = [*node.inputs, None][:4]
    data, start = ir.convenience.get_const_tensor(inputs[0]).numpy(), _folded_ints(inputs[1])[0]
    along = np.moveaxis(data, _folded_ints(inputs[3])[0] if inputs[3] is not None else 0, 0)
    reached = np.flatnonzero((along.reshape(len(along), -1)[start:] >= last).any(axis=1))
    return start + int(reached[0]) + 1 if reached.size else None


# Ops that keep a constant's elements and their order (the dynamo exporter's ``Reshape(Cast(Constant))`` starts).
_ORDER_KEEPING_OPS = frozenset({"Cast", "CastLike", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten"})


def _folded_ints(value: ir.Value | None) -> list[int] | None:
    """The whole numbers of a constant ``value`` is, through ``_ORDER_KEEPING_OPS``; None where it is none, or one
    of them is no whole number."""
    for _ in range(8):
        tensor = ir.convenience.get_const_tensor(value) if value is not None else None
        if tensor is not None:
            array = tensor.numpy().reshape(-1)
            if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0)):
                return None
            return [int(number) for number in array]
        node = value.producer() if value is not None else None
        if node is None or not is_onnx_domain(node) or node.op_type not in _ORDER_KEEPING_OPS or not node.inputs:
            return None
        value = node.inputs[0]
    return None


def _length_keys(dims: Sequence[Any]) -> list[str | None]:
    """``_length_key`` of each of an input's ``dims``."""
    return [_length_key(dim, axis) for axis, dim in enumerate(dims)]


def _product_of_lengths(
    held: Sequence[tuple[Any, float]], sizes: Mapping[str, int] | None
) -> list[tuple[Any, float]] | None:
    """The product of the elements of a shape ``held`` (``_lengths_compared``) as one element: of the last dim named
    there, the others at their ``sizes`` (the first set's) and the fixed ones at theirs; None where a dim named there
    has no size, or the last appears twice (``x[L, L]``: the product is no multiple of one length)."""
    keys = [key for key, _ in held if key is not None]
    if not keys or keys.count(keys[-1]) > 1 or any(key not in (sizes or {}) for key in keys[:-1]):
        return None
    of = frozenset(str(key) for key in keys[:-1]).union(*(key.of for key in keys if isinstance(key, _Product)))
    factor = float(np.prod([factor for _, factor in held] + [(sizes or {})[key] for key in keys[:-1]]))
    return [(_Product(keys[-1], of) if of else keys[-1], factor)]


class _Product(str):
    """A dim's name where a product of lengths holds it (``_product_of_lengths``), with the other dims the product
    took at their sizes (``of``): a comparison there goes another way where they do (``lengths_together``)."""

    of: frozenset[str]

    def __new__(cls, name: str, of: frozenset[str]) -> _Product:
        made = super().__new__(cls, name)
        made.of = of
        return made


def _free(dim: Any) -> bool:
    """Whether input dim ``dim`` is not a fixed size (a name, no name, or -1)."""
    return not isinstance(dim, int) or dim < 0


def _length_key(dim: Any, axis: int) -> str | None:
    """How ``compared_lengths`` names the length of input dim ``dim`` at ``axis``: its name; ``UNNAMED_LENGTH`` for
    one without a name past the first axis (drawn at ``make_inputs``' ``unnamed_length``); else None (a fixed size, or
    rows without a name, drawn at one)."""
    if isinstance(dim, ir.SymbolicDim) and dim.value:
        return dim.value
    return UNNAMED_LENGTH if _free(dim) and axis > 0 else None


# The name ``compared_lengths`` gives the dims without a name past an input's first axis, which ``make_inputs`` draws
# at one length (``unnamed_length``).
UNNAMED_LENGTH = ""


def unnamed_lengths(model: ir.Model, inputs: Mapping[str, Any]) -> set[int]:
    """The sizes ``inputs`` give the dims without a name past an input's first axis (``UNNAMED_LENGTH``)."""
    found = set()
    for value in runtime_inputs(model):
        array = inputs.get(value.name)
        if isinstance(array, np.ndarray) and value.shape is not None and len(value.shape) == array.ndim:
            found.update(array.shape[a] for a, dim in enumerate(value.shape) if _length_key(dim, a) == UNNAMED_LENGTH)
    return found


def _lengths_compared(
    shape: ir.Value,
    elements: list[tuple[Any, float]],
    sizes: Mapping[str, int] | None = None,
    meets: list[_Met] | None = None,
) -> Iterator[tuple[Any, list[int], Callable[[int], Any]]]:
    """``(dim, lengths, side)`` for each comparison of one element of ``shape`` (a ``Shape``'s or ``Size``'s output,
    each element the dim it holds, named as ``_length_key`` names it, and the factor on it: ``elements``; a
    ``ReduceProd`` of them one, ``_product_of_lengths``) with a constant (``compared_lengths``): ``side`` tells which
    way a length goes there. A comparison with what is no constant is put in ``meets`` (``_lengths_met``)."""
    pending: list[tuple[ir.Value, list[tuple[Any, float]], _Affine | None]] = [(shape, elements, None)]
    for node, index, held, affine in _length_uses(pending):
        if node.op_type == "ReduceProd" and index == 0 and affine is None:
            # ``ReduceProd(Shape(x)) > 1000``, the elements a shape holds: not followed until a review in
            # session 74, and no set of 128 or 257 rows reached 1000.
            if _reduction_axes(node) in (None, (0,), (-1,)) and (product := _product_of_lengths(held, sizes)):
                pending.append((node.outputs[0], product, None))
        elif len(held) != 1:
            continue
        elif (divisor := _length_divisor(node, index)) is not None and affine is None and held[0][1] == 1:
            # ``Equal(seq_len % 7, 0)``: the lengths that decide the remainder, one divisor on (from 1 up). The
            # default lengths, 128 and 257, are no multiple of 7, and a rewrite wrong on one verified until a
            # review in session 74.
            for dim, lengths, side in _lengths_compared(node.outputs[0], held, sizes):
                kept = sorted({n + divisor for n in lengths if 0 <= n < divisor})
                yield dim, kept, partial(_length_remainder_side, divisor, side)
        elif (after := _after_affine(node, index, affine)) is not None and not _by_column(after):
            pending.append((node.outputs[0], held, after))
        elif node.op_type in (*_SIDES, *_CLAMPS) and (thresholds := _thresholds(node, index)) is not None:
            if node.op_type in _CLAMPS:  # clamped, then compared: ``Min(seq_len, 512) >= 512``
                pending.append((node.outputs[0], held, affine))
            dim, factor = held[0]
            scaled = (np.asarray(factor), np.asarray(0.0)) if affine is None else (affine[0] * factor, affine[1])
            sides = _threshold_sides(node, index, np.dtype(np.int64), straddled=True, affine=scaled)
            scale, offset = _affine_numbers(scaled)
            side = partial(_length_side, [(op, every) for _, op, every in thresholds], scale, offset)
            yield dim, [int(n) for _, drawn in sides or () for n in drawn.tolist()], side
        elif node.op_type == "Equal" and index < 2 and len(node.inputs) == 2:
            number = _constant_number(node.inputs[1 - index])
            if number is None:
                if meets is not None:  # another length, perhaps: ``_lengths_met`` pairs them
                    meets.append((node, index, *held[0], *_affine_numbers(affine)))
                continue
            dim, factor = held[0]
            scale, offset = _affine_numbers(affine)
            length = (number - offset) / (scale * factor) if scale * factor else None
            if length is not None and float(length).is_integer():
                yield dim, [int(length)], partial(operator.eq, int(length))
        elif node.op_type in _SIDES and index < 2 and meets is not None:  # no constant: another length, perhaps
            meets.append((node, index, *held[0], *_affine_numbers(affine)))
        elif node.op_type == "Mul" and index < 2 and meets is not None and affine is None:
            meets.append((node, index, *held[0], 1.0, 0.0))  # by another length, perhaps: ``compared_lengths``
        elif node.op_type in ("Add", "Sub") and index < 2 and meets is not None and not _by_column(affine):
            meets.append((node, index, *held[0], *_affine_numbers(affine)))  # another length, perhaps: a sum


def _length_divisor(node: ir.Node, index: int) -> int | None:
    """The constant whole number above 0 that ``node`` takes a length at input ``index`` modulo (a ``Mod``), or None."""
    if not is_onnx_domain(node) or node.op_type != "Mod" or index != 0 or len(node.inputs) != 2:
        return None
    divisor = _constant_number(node.inputs[1])
    return int(divisor) if divisor is not None and divisor > 0 and float(divisor).is_integer() else None


def _length_remainder_side(divisor: int, side: Callable[[int], Any], length: int) -> Any:
    """Which way ``length`` goes at a comparison of its remainder modulo ``divisor`` (``side``)."""
    return side(length % divisor)


def _length_side(
    compared: Sequence[tuple[str, np.ndarray]], scale: float, offset: float, length: int
) -> tuple[tuple[bool, ...], ...]:
    """Which side of each threshold of ``compared`` (``(op, thresholds)``) ``scale * length + offset`` is on."""
    return tuple(tuple(_SIDES[op](scale * length + offset, every).tolist()) for op, every in compared)


def _lengths_met(
    meets: Sequence[_Met], sizes: Mapping[str, int] | None, bindings: Sequence[Mapping[str, int]] | None
) -> Iterator[tuple[str, list[int]]]:
    """``(dim, lengths)`` for each comparison of two lengths of ``meets`` (``Shape(a)[1] < Shape(b)[1]``; a fixed
    size is a constant there): each dim named there at the lengths that tell the comparison apart beside the other at
    its ``sizes`` (the first set's), of the sides no set of ``bindings`` (each one's sizes) holds, one length a side.
    Drawn at one length, then 257 beside 255, the first was never the shorter, and a rewrite wrong there verified until
    a review in session 74."""
    for node, ends in _met_pairs(meets, (*_SIDES, "Equal")):
        if ends[0][0] == ends[1][0]:  # one length with itself is equal at every length
            continue
        side = partial(_met_side, _SIDES.get(node.op_type, operator.eq), *ends)
        held = set()
        for binding in bindings or ():
            if None not in (pair := [1 if end[0] is None else binding.get(end[0]) for end in ends]):
                held.add(side(*pair))
        for moved, (key, factor, scale, offset) in enumerate(ends):
            other = ends[1 - moved]
            fixed = 1 if other[0] is None else (sizes or {}).get(other[0])
            if key is None or fixed is None or not scale * factor:
                continue
            target = (_met_value(other, fixed) - offset) / (scale * factor)
            if not np.isfinite(target):
                continue
            kept = []
            for length in range(
                max(1, math.floor(target) - 1), min(math.ceil(target) + 1, _LONGEST_COMPARED_LENGTH) + 1
            ):
                if (at := side(length, fixed) if moved == 0 else side(fixed, length)) not in held:
                    held.add(at)
                    kept.append(length)
            if kept:
                yield key, kept


def _met_pairs(
    meets: Sequence[_Met], ops: Collection[str]
) -> list[tuple[ir.Node, list[tuple[Any, float, float, float]]]]:
    """Each node of ``ops`` that ``meets`` holds lengths at both inputs of, with its two ends (dim, factor, scale,
    offset)."""
    by_node: dict[int, dict[int, _Met]] = {}
    for met in meets:
        if met[0].op_type in ops:
            by_node.setdefault(id(met[0]), {})[met[1]] = met
    return [(both[0][0], [both[0][2:], both[1][2:]]) for both in by_node.values() if len(both) == 2]


def _met_side(
    compare: Callable[[Any, Any], Any],
    first: tuple[Any, float, float, float],
    second: tuple[Any, float, float, float],
    at_first: float,
    at_second: float,
) -> bool:
    """Which way a comparison of ``_lengths_met`` goes with its ends (dim, factor, scale, offset) at those lengths."""
    return bool(compare(_met_value(first, at_first), _met_value(second, at_second)))


def _met_value(end: tuple[Any, float, float, float], length: float) -> float:
    """The value a comparison of ``_lengths_met`` reads at one end (dim, factor, scale, offset) at ``length``."""
    _, factor, scale, offset = end
    return scale * factor * length + offset


def _picked_lengths(node: ir.Node, held: list[tuple[Any, float]]) -> list[tuple[Any, float]] | None:
    """The elements of a shape ``held`` that a ``Gather`` (axis 0) or a ``Slice`` (of axis 0, constant bounds) of it
    keeps, or None."""
    constants = [ir.convenience.get_const_tensor(v) if v is not None else None for v in node.inputs[1:]]
    if any(tensor is None for tensor in constants) or not constants:
        return None
    numbers = [tensor.numpy().reshape(-1).astype(np.int64).tolist() for tensor in constants]
    if node.op_type == "Gather":
        if node.attributes.get_int("axis", 0) != 0 or not all(-len(held) <= i < len(held) for i in numbers[0]):
            return None
        return [held[i] for i in numbers[0]]
    if len(numbers) < 2:
        return None
    starts, ends, *rest = numbers
    axes = rest[0] if rest else [0]
    steps = rest[1] if len(rest) > 1 else [1]
    if len(starts) != 1 or axes not in ([0], [-1]) or len(steps) != 1 or not steps[0]:
        return None
    return held[slice(starts[0], ends[0], steps[0])]


def equalled_inputs(model: ir.Model, inputs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Each pair of float inputs ``(x, y)`` of ``inputs`` that an ``Equal`` compares with each other, each as it is or
    through an ``Identity`` or a ``Cast`` (``Where(Equal(x, y), a, b)``), ``y`` of ``x``'s shape and type, of a
    shape that broadcasts into ``x``'s (``Equal(x [B, L], y [L])``), or of a wider float type (``Equal(x,
    Cast(y16))``, ``x`` the float16 one): drawn apart, two normal floats are never equal, the branch equality selects
    never ran, and a rewrite wrong there verified until a review in session 74 (beside a broadcast or another type,
    until review s75 late74a). ``optimizer.api`` verifies on a set with ``y`` a copy of ``x`` (``equal_copy``)."""
    arrays = {
        value.name: array
        for value in runtime_inputs(model)
        if isinstance(array := inputs.get(value.name), np.ndarray) and array.dtype.kind == "f" and array.size
    }
    readers: dict[int, tuple[ir.Node, dict[int, str]]] = {}
    for value in runtime_inputs(model):
        if value.name not in arrays:
            continue
        pending, seen = [value], set()
        while pending:
            current = pending.pop()
            for node, index in current.uses():
                if id(node) in seen or not is_onnx_domain(node):
                    continue
                seen.add(id(node))
                if node.op_type in ("Identity", "Cast") and index == 0:
                    pending.append(node.outputs[0])
                elif node.op_type == "Equal" and index < 2:
                    readers.setdefault(id(node), (node, {}))[1].setdefault(index, value.name)
    copies: dict[str, str] = {}  # each input copied, from which: none copied twice, nor both copied and copied from
    for _, sides in readers.values():
        x, y = sides.get(0), sides.get(1)
        if x is None or y is None or x == y or (copied := _copied_side(arrays[x], arrays[y])) is None:
            continue
        x, y = (x, y) if copied else (y, x)
        if y in copies or x in copies or y in copies.values() or np.any(arrays[x] == arrays[y]):
            continue
        copies[y] = x
    return [(x, y) for y, x in copies.items()]


def _copied_side(first: np.ndarray, second: np.ndarray) -> bool | None:
    """Which of two arrays an ``Equal`` compares ``equalled_inputs`` copies from the other: True for ``second`` (of
    ``first``'s shape and type, of a shape that broadcasts into its, or of a wider float type than it), False for
    ``first`` so, None for neither (each copies exactly only into a type as wide)."""
    if first.shape == second.shape:
        return second.dtype.itemsize >= first.dtype.itemsize
    if first.dtype != second.dtype:
        return None
    try:
        joined = np.broadcast_shapes(first.shape, second.shape)
    except ValueError:
        return None
    return True if joined == first.shape else False if joined == second.shape else None


def equal_copy(source: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A copy of ``source`` in the type and shape of ``like`` (``equalled_inputs``): its first rows along each axis
    ``like`` broadcasts, which an ``Equal`` of the two then finds equal."""
    lead = (0,) * (source.ndim - like.ndim)
    picked = source[(*lead, *(slice(0, 1) if size == 1 else slice(None) for size in like.shape))]
    return picked.astype(like.dtype).reshape(like.shape)

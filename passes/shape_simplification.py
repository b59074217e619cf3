"""Replace run-time shape arithmetic feeding Reshape and Expand with constants, keeping shapes dynamic.

Exporters build every attention reshape target at run time:
``Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1)), 4, 16)``.
With symbolic dimensions nothing there is constant, so constant folding leaves it
alone. But Reshape can say "keep this input dimension" with ``0`` and "infer this
one" with ``-1``, and Expand keeps an input dimension with ``1``. This pass proves,
with ONNX Runtime's symbolic shape inference and with classes of dims equal by how
the graph computes them, which target elements equal the input's own dimensions,
rewrites the target into a constant, and leaves the ``Shape → Gather → Concat``
chain dead, and removes it.

onnxscript's constant folder does not do this (it only folds fully known shapes),
nor does onnx's shape inference keep the dimension names needed to prove equality.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter.rules.common import _collapse_slices

from optimizer.domains import is_onnx_domain
from optimizer.errors import one_line
from passes._pass import GraphoptPass
from passes._utils import (
    add_initializer,
    constant_array,
    declared_shapes_inferred,
    fed_from_graph_input,
    overridable_inputs_hidden,
    remove_dead_nodes,
    shared_input_dim_names,
)

# Weights above this many elements are hidden from symbolic inference (declared as
# inputs of the same type and shape): it needs their shapes, not their bytes.
_LARGE_INITIALIZER_ELEMENTS = 1024

Symbol = int | str | None


@dataclass(frozen=True)
class _DimOf:
    """Element ``axis`` of ``Shape(value)``."""

    value: ir.Value
    axis: int


# An element is a size, a dim of a value's shape, a symbol ORT's inference computed (``floor(samples/10) - 1``:
# ``_Computed``), or unknown.
Element = "int | _DimOf | _Computed | None"
Shapes = dict[str, tuple[Symbol, ...]]

# The ops _shape_elements follows.
_FOLLOWED = frozenset(
    {"Shape", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Cast", "Concat", "Gather", "Slice", "Where"}
)
# A Reshape target element that is the data's own dim at its position: 0 under allowzero=0.
_COPY = "copy"
_UNPROVEN = {
    "Reshape": "target elements neither constant nor provably the data's dim at their position: more than one, or "
    "one beside a -1 (or the target is built by ops this pass does not follow)",
    "Expand": "a target element is neither a constant nor provably the data's dim at its position "
    "(or the target is built by ops this pass does not follow; a dim name two graph inputs declare proves no "
    "equal size to an Expand of one of them: it may be fed 1 there and broadcast)",
}


class ShapeSimplificationPass(GraphoptPass, ir.passes.InPlacePass):
    """Turn computed Reshape/Expand shape inputs into constants using 0 (copy), -1 (infer) and 1 (keep).

    Rewrites, in the main graph:
    - a ``Reshape`` whose target is built from ``Shape``/``Gather``/``Slice``/
      ``Unsqueeze``/``Squeeze``/``Reshape``/``Concat``/``Cast`` (and the legacy exporter's
      ``Where(Equal(t, -1), 1, t)``), when each element is a constant or provably the input's
      dimension at the same position (it becomes 0), with at most one element left unknown (it
      becomes -1). ``allowzero=1`` is dropped when no element is a literal 0
      and a -1 beside a 0 is fixed by the input's other dims (it becomes that size); else the
      Reshape is refused, with the reason: a 0-sized dim would make the rewrite fail or differ
      where the original runs;
    - where a target element is computed from the input's dims by ``Add``, ``Sub``, ``Mul``, ``Div``, ``Max``, ``Min``,
      ``Neg`` or ``Pow`` (the dynamo exporter's ``samples // 80 ...`` for a strided front end's length), the same,
      proving the element the data's dim with ORT's arithmetic on symbols (``_computed_equals``);
    - an ``Expand`` whose target elements are constants or provably equal to the
      input's aligned dimension (they become 1);
    - a ``Gather(Shape(x), i)`` or ``Slice(Shape(x), a, b)`` whose dims ONNX's shape inference sizes
      (``_fold_static_dims``), then folds what it feeds (``fold-constants``).
    Refuses, with the reason in its refusals, when ONNX Runtime's symbolic shape inference
    fails on the model or is not installed; leaves every other shape computation as it was.

    Two dims are provably equal where ORT's inference gives them one size or one symbol that
    no broadcast merged, or where ``_DimClasses`` puts them in one class: the dims an op copies,
    the same broadcast of the same dims, and, for a node the outputs need, the dims it fails
    unless equal. ORT's inference (with ``auto_merge``) takes two symbolic dims broadcast against
    each other as equal; where both are the graph inputs' own dims (``n`` against ``m``, or two
    unnamed ones: either may be 1 at run time) no equality through those symbols is used, so an
    ``Expand`` to ``Shape(y)`` beside ``Add(x, y)`` keeps its computed target, while a head split
    of ``(x + y) @ W`` to ``Shape(x + y)`` is a copy by the classes. A merge with a computed dim
    (a mask's ``total`` against ``past + sequence``) is kept: a decoder's shape arithmetic rests
    on it. Ranks and sizes are read from the inference, which reads only what ONNX Runtime
    checks (the inputs' declared shapes), never from a recorded ``value_info``.
    """

    left_as = "left computed"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rewritten: Counter[str] = Counter()
        modified = False
        # Targets made constant let ONNX's inference size dims read at run time; those folded, in turn, leave a
        # target (the repeated key/value heads' [B, N*r, T, d]) one unknown element short of a proof.
        refused: list[tuple[str, str]] = []
        for _ in range(_ROUNDS):
            done, evaluated = self._constant_targets(model)
            rewritten.update(done)
            if evaluated is not None:  # a round whose inference failed keeps the last round's refusals
                refused = evaluated
            folded = any(_dim_read(node) for node in model.graph) and _fold_static_dims(model)
            # A Slice the proven shapes show takes its whole input (Phi3 legacy's q[..., :rotary_dim] at full width,
            # between the head split and the rotary, which then did not see the split) becomes its input.
            whole = bool(done or folded) and _whole_slices_removed(model)
            if folded or whole:
                # What the sizes feed becomes constant too (a head size's Cast and Sqrt: the scale
                # fuse-attention needs constant), and the Identity a whole Slice left goes.
                from passes.constant_folding import FoldConstantsPass

                FoldConstantsPass()(model)
            modified = modified or bool(done) or bool(folded) or whole
            if not folded or not refused:
                break
        for kind, count in rewritten.items():
            for _ in range(count):
                self.done(kind)
        for kind, reason in refused:  # the last round's: what is left computed
            self.refuse(kind, reason)
        return self.result(model, modified=modified)

    def _constant_targets(self, model: ir.Model) -> tuple[Counter[str], list[tuple[str, str]] | None]:
        """Rewrite each computed Reshape/Expand target that is proven into a constant; the rewrites by op type,
        and the targets left computed with why (None where symbolic inference failed: none was evaluated)."""
        done: Counter[str] = Counter()
        refused: list[tuple[str, str]] = []
        candidates = [node for node in model.graph if _computed_target(node)]
        if not candidates:
            # Symbolic inference is most of this pass's time: skip it when it cannot help.
            return done, refused
        shapes = _symbolic_shapes(model)
        if isinstance(shapes, str):
            if shapes not in self._state()[2]:
                self.decline(shapes)
            return done, None
        classes = _DimClasses(model.graph, shapes)
        shared = shared_input_dim_names(model.graph)
        for node in candidates:
            if node.op_type == "Reshape":
                target = _reshape_rewrite(node, shapes, classes)
                if isinstance(target, str):
                    refused.append(("Reshape", target))
                    continue
            else:
                target = _expand_target(node, shapes, classes, shared)
            if target is None:
                refused.append((node.op_type, _UNPROVEN[node.op_type]))
                continue
            constant = add_initializer(
                model.graph, f"{node.name or node.op_type}_shape", np.array(target, dtype=np.int64)
            )
            node.replace_input_with(1, constant)
            done[node.op_type] += 1
        if done:
            remove_dead_nodes(model)
        return done, refused


# Rounds of proving targets and folding the dims they size: the second proves what the first's folds let it.
_ROUNDS = 3


def _fold_static_dims(model: ir.Model) -> int:
    """Replace each ``Gather(Shape(x), i)`` or ``Slice(Shape(x), a, b)`` (``_dim_read``; the shape may be permuted
    first, ``_shape_read``) whose dims ONNX's shape inference sizes with those sizes; return how many.

    onnxscript's folder gathers from a shape with a 1-D index only, and the legacy exporter writes a scalar one
    (``value.size(-1)``) and records no intermediate shapes: GPT-2's eager ``value.size(-1) ** 0.5`` stayed computed,
    its head size static once the head split's target is a constant. ONNX's inference (not ORT's symbolic one,
    which decides ``Equal(len, 4)`` by the symbols' structure and infers an ``If`` from one branch) merges what it
    cannot decide into an unknown dim, which is left computed.
    """
    folded = 0
    # An initializer that is also a graph input is a default a caller may override: no size is read from it.
    with overridable_inputs_hidden(model), declared_shapes_inferred(model):
        for node in list(model.graph):
            if not _dim_read(node) or node.outputs[0].is_graph_output():
                continue
            shape_node, picked = _shape_read(node.inputs[0])
            x = shape_node.inputs[0]
            if x is None or x.shape is None:
                continue
            dims = list(x.shape)[_shape_slice(shape_node, len(x.shape))]
            if picked is not None:
                if not all(-len(dims) <= i < len(dims) for i in picked):
                    continue
                dims = [dims[i] for i in picked]
            value = _read_dims(node, dims)
            if value is None:
                continue
            node.outputs[0].replace_all_uses_with(add_initializer(model.graph, f"{node.name or 'dim'}_size", value))
            folded += 1
    if folded:
        remove_dead_nodes(model)
    return folded


def _whole_slices_removed(model: ir.Model) -> int:
    """Rewrite each Slice that takes the whole of its input by ONNX's inferred shapes (start 0, end at least the
    dim, step 1) into an Identity: onnxscript's ``collapse_slices`` rules; return how many."""
    if not any(node.op_type == "Slice" for node in model.graph):
        return 0
    with overridable_inputs_hidden(model), declared_shapes_inferred(model):
        return _collapse_slices.rules.apply_to_model(model)


def _read_dims(node: ir.Node, dims: list) -> np.ndarray | None:
    """What the ``Gather`` or ``Slice`` ``node`` reads of a shape whose dims are ``dims`` (ints where static), or
    None unless every dim it reads is static."""
    if node.op_type == "Gather":
        index = constant_array(node.inputs[1])
        if index.dtype.kind != "i" or not all(-len(dims) <= i < len(dims) for i in index.reshape(-1).tolist()):
            return None
        sizes = [dims[i] for i in index.reshape(-1).tolist()]
        shape = index.shape
    else:
        # Slice's starts, ends, axes (only 0) and steps (only 1): ONNX clamps as Python's slices do at step 1.
        start, end = (int(constant_array(node.inputs[i]).reshape(-1)[0]) for i in (1, 2))
        sizes = dims[start:end]
        shape = (len(sizes),)
    if not all(isinstance(size, int) for size in sizes):
        return None
    return np.array(sizes, np.int64).reshape(shape)


def _shape_slice(node: ir.Node, rank: int) -> slice:
    """The dims a ``Shape`` node reads of a rank-``rank`` input (its ``start`` and ``end``, clamped as ONNX does)."""
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", rank)
    return slice(max(-rank, min(start, rank)), max(-rank, min(end, rank)))


def _dim_read(node: ir.Node) -> bool:
    """Whether ``node`` is ``Gather(Shape(x), i)`` with a constant index, or ``Slice(Shape(x), start, end)`` with
    constant bounds along axis 0 at step 1 (the legacy exporter's ``query.size(-1)`` in its attention scale):
    dims of ``x`` read at run time."""
    if not is_onnx_domain(node) or not node.inputs or node.inputs[0] is None:
        return False
    if _shape_read(node.inputs[0]) is None:
        return False
    if node.op_type == "Gather":
        return len(node.inputs) == 2 and node.inputs[1] is not None and constant_array(node.inputs[1]) is not None
    if node.op_type != "Slice" or not 3 <= len(node.inputs) <= 5 or None in node.inputs[1:3]:
        return False
    bounds = [constant_array(value) if value is not None else None for value in node.inputs[1:]]
    if any(bound is None or bound.dtype.kind != "i" or bound.size != 1 for bound in bounds[:2]):
        return False
    axes = bounds[2] if len(bounds) > 2 else None
    steps = bounds[3] if len(bounds) > 3 else None
    if len(node.inputs) > 3 and node.inputs[3] is not None and (axes is None or axes.reshape(-1).tolist() != [0]):
        return False
    return len(node.inputs) <= 4 or node.inputs[4] is None or (steps is not None and steps.reshape(-1).tolist() == [1])


def _shape_read(value: ir.Value) -> tuple[ir.Node, list[int] | None] | None:
    """The ``Shape`` node ``value`` is, with None; or, for ``Gather(Shape(x), perm)`` with a constant 1-D index, that
    ``Shape`` node and the dims it picks in order; else None.

    ONNX Runtime's transpose optimizer (at ``ORT_ENABLE_BASIC``, which ``quant_pre_process`` runs) writes
    ``Shape(Transpose(x, perm))`` so: a Llama's rotary split point ``Shape(q)[3] / 2`` stayed computed, and its
    rotary embeddings, attention packing and half its Reshapes were left unfused on such a model.
    """
    node = value.producer()
    if node is None or not is_onnx_domain(node):
        return None
    if node.op_type == "Shape":
        return node, None
    if node.op_type != "Gather" or len(node.inputs) != 2 or node.inputs[0] is None or node.inputs[1] is None:
        return None
    shape, index = node.inputs[0].producer(), constant_array(node.inputs[1])
    if shape is None or shape.op_type != "Shape" or not is_onnx_domain(shape):
        return None
    if index is None or index.dtype.kind != "i" or index.ndim != 1:
        return None
    return shape, index.tolist()


def _computed_target(node: ir.Node) -> bool:
    """Whether ``node`` is a Reshape or Expand whose target is computed by an op this pass follows.

    A filter before inference: the elements are read once the inferred shapes (which say how many dims each
    ``Shape`` reads) are known.
    """
    if node.op_type not in ("Reshape", "Expand") or not is_onnx_domain(node) or len(node.inputs) < 2:
        return False
    producer = node.inputs[1].producer() if node.inputs[1] is not None else None
    return (
        constant_array(node.inputs[1]) is None
        and producer is not None
        and is_onnx_domain(producer)
        and producer.op_type in _FOLLOWED
    )


def _reshape_target(node: ir.Node, shapes: Shapes, classes: _DimClasses) -> list[int | str | None] | None:
    """Each element of ``node``'s target: a size, ``_COPY`` (the data's own dim at that position) or None
    (unknown, at most one and no -1 beside it); None where that cannot be said."""
    elements = _shape_elements(node.inputs[1], _inferred(shapes))
    data_shape = shapes.get(node.inputs[0].name)
    if elements is None or data_shape is None:
        return None
    target: list[int | str | None] = []
    for position, element in enumerate(elements):
        symbol = _symbol_of(element, shapes)
        if isinstance(symbol, int) and _dividends_hold(element, None, shapes):
            target.append(symbol)
        elif _own_dim(element, node, position):
            target.append(_COPY)  # Shape(data)[position]: a copy by the graph's structure, whatever the symbols
        elif isinstance(element, _Computed):
            computed = position < len(data_shape) and _computed_equals(element, data_shape[position], shapes)
            target.append(_COPY if computed else None)
        elif symbol is not None and position < len(data_shape) and data_shape[position] == symbol:
            target.append(_COPY)
        elif isinstance(element, _DimOf) and classes.same(element.value, element.axis, node.inputs[0], position):
            target.append(_COPY)
        else:
            target.append(None)
    unknown = target.count(None)
    if unknown == 1 and -1 in target:
        target = _copy_fixed_by_output(node, target, data_shape, classes)
    unknown = target.count(None)
    if unknown > 1 or (unknown == 1 and -1 in target):
        return None
    return target


def _copy_fixed_by_output(
    node: ir.Node, target: list[int | str | None], data_shape: tuple[Symbol, ...], classes: _DimClasses
) -> list[int | str | None]:
    """``target`` with its unknown element a copy where the size the -1 takes is fixed and fixes it.

    An allowzero=0 Reshape fails unless the product of its target's elements other than the -1 is not 0, so
    where the model runs, copies cancel out: the unknown element times the sizes times the -1's size is the
    data's dims at the positions not copied. Where the -1's output dim is a known size ``K`` (a later
    MatMul's weight rows, which the model fails without) and the data's dims not copied, but the unknown's
    own, multiply to ``K`` times the sizes, the unknown element is the data's dim at its position: BERT's
    merge of heads ``[Shape(h)[0], Shape(h)[1], -1]`` of a context whose batch the mask broadcast.
    """
    if node.attributes.get_int("allowzero", 0) or len(node.outputs[0].uses()) == 0:
        return target
    unknown, minus_one = target.index(None), target.index(-1)
    known = classes.size(node.outputs[0], minus_one)
    if known is None or unknown >= len(data_shape):
        return target
    rest = [
        dim for position, dim in enumerate(data_shape)
        if position != unknown and (position >= len(target) or target[position] != _COPY)
    ]  # fmt: skip
    sizes = [item for item in target if isinstance(item, int) and item != -1]
    if not all(isinstance(dim, int) for dim in rest) or 0 in sizes:
        return target
    if int(np.prod(rest, dtype=np.int64)) != known * int(np.prod(sizes, dtype=np.int64)):
        return target
    return [_COPY if position == unknown else item for position, item in enumerate(target)]


def _reshape_rewrite(node: ir.Node, shapes: Shapes, classes: _DimClasses) -> list[int] | str | None:
    """The constant target for ``node`` (dropping its ``allowzero=1`` where it copies a dim); why not where the
    elements are proven but no constant target computes the same; None where they are not proven.

    A copy (0) and a -1 differ from the original's values where a copied dim is 0 (a zero-sized batch):
    there, ONNX Runtime fails to infer a -1 under allowzero=0, and under allowzero=1 infers it as the product
    of the data's sizes other than 0 over the target's. Under allowzero=1 (which reads 0 as a literal size:
    the rewrite switches to allowzero=0, the same where no element is a literal 0), the original's -1 beside
    a copy becomes the size the data's other dims fix for it, or the Reshape is refused. An element neither
    constant nor a copy still becomes -1 beside a copy, which fails where a copied dim is 0 and the original
    runs (a known gap: refusing it would leave llama's grouped key/value heads, ``[B, 4, S, 16]`` of a
    ``[B, 2, 2, S, 16]``, computed, and prune-heads would not find them).
    """
    target = _reshape_target(node, shapes, classes)
    if target is None:
        return None
    allowzero = node.attributes.get_int("allowzero", 0)
    if not allowzero:
        target = [_COPY if item == 0 else item for item in target]  # a 0 copies under allowzero=0
    copies = _COPY in target
    if allowzero and copies and -1 in target:
        size = _fixed_size(target, shapes[node.inputs[0].name])
        if size is not None:
            target = [size if item == -1 else item for item in target]
    if allowzero and 0 in target and any(item is None or item == -1 for item in target):
        return "allowzero=1 and a literal 0 beside an element that would become -1 (ONNX forbids the pair)"
    if allowzero and copies:
        if 0 in target:
            return "allowzero=1 and a literal 0 beside a dim the rewrite would copy"
        if -1 in target:  # an unknown element (None) stays, becoming -1: the known gap in the docstring
            return (
                "allowzero=1 and a -1 the data's dims do not fix, beside a dim the rewrite would copy (0): at a "
                "0-sized dim ONNX Runtime infers that -1 only under allowzero=1"
            )
        node.attributes.pop("allowzero")
    return [0 if item == _COPY else -1 if item is None else item for item in target]


def _fixed_size(target: list[int | str | None], data_shape: tuple[Symbol, ...]) -> int | None:
    """The size the ``-1`` (or unknown element) of ``target`` takes whatever the run-time dims, or None where
    they decide it.

    The data's dims at the positions not copied, divided by the target's sizes: where all are sizes over 0,
    the copied dims cancel out, also when one of them is 0 (where ONNX Runtime's allowzero=1 Reshape
    infers a -1 from the sizes other than 0, and its allowzero=0 one fails).
    """
    rest = [dim for position, dim in enumerate(data_shape) if position >= len(target) or target[position] != _COPY]
    sizes = [item for item in target if isinstance(item, int) and item != -1]  # _COPY and None are no sizes
    if not all(isinstance(dim, int) and dim > 0 for dim in rest) or not all(size > 0 for size in sizes):
        return None
    total, part = int(np.prod(rest, dtype=np.int64)), int(np.prod(sizes, dtype=np.int64))
    return total // part if total % part == 0 else None


def _expand_target(node: ir.Node, shapes: Shapes, classes: _DimClasses, shared: set[str]) -> list[int] | None:
    elements = _shape_elements(node.inputs[1], _inferred(shapes))
    data_shape = shapes.get(node.inputs[0].name)
    if elements is None or data_shape is None:
        return None
    offset = len(elements) - len(data_shape)
    # A dim name a graph input shares with another input (``shared``) proves no equal size to an Expand of that
    # input (or of an op that copies its dims, as Cast or Unsqueeze), which broadcasts what a caller feeds: a [1, S]
    # position_ids fed for a batch, both declared [batch, sequence] (the rotary fusion's own Expand, which a second
    # optimization of its result took for a copy). Dims computed from the inputs otherwise (a head split's,
    # repeated for grouped query attention) keep the names' proof.
    unproven = shared if fed_from_graph_input(node.inputs[0]) else set()
    target = []
    for position, element in enumerate(elements):
        symbol = _symbol_of(element, shapes)
        if isinstance(symbol, int) and _dividends_hold(element, None, shapes):
            target.append(symbol)
        elif position >= offset and _own_dim(element, node, position - offset):
            target.append(1)
        elif isinstance(element, _Computed):
            dim = data_shape[position - offset] if position >= offset else None
            if dim is None or _mentions(str(dim), unproven) or not _computed_equals(element, dim, shapes):
                return None
            target.append(1)
        elif (
            symbol is not None
            and position >= offset
            and data_shape[position - offset] == symbol
            and not _mentions(str(symbol), unproven)
        ):
            target.append(1)
        elif (
            position >= offset
            and isinstance(element, _DimOf)
            and classes.same(element.value, element.axis, node.inputs[0], position - offset)
        ):
            target.append(1)
        else:
            return None
    return target


def _own_dim(element: Element, node: ir.Node, axis: int) -> bool:
    """Whether ``element`` is ``Shape(data)[axis]`` of ``node``'s own data input: no symbol needs comparing."""
    return isinstance(element, _DimOf) and element.value is node.inputs[0] and element.axis == axis


def _symbol_of(element: Element, shapes: Shapes) -> Symbol:
    if isinstance(element, _Computed):
        return element.symbol
    if element is None or isinstance(element, int):
        return element
    shape = shapes.get(element.value.name)
    if shape is None or element.axis >= len(shape):
        return None
    return shape[element.axis]


class _InferredShapes(dict):
    """Each value's shape by name (ints and symbols, as ``Shapes``), from ORT's symbolic inference, with what it
    computed for small int tensors of shape arithmetic (a ``samples // 10 - 1`` through ``Div`` and ``Add``), read
    on demand: ``expressions(name)``, their elements as sympy integers and expressions, and ``symbols(name)``, as
    ints and symbols (None where a symbol is unproven); and ``dims``, each dim's symbol as a sympy expression."""

    def __init__(self, shapes: Shapes, data: dict[str, object], dims: dict[str, object], unproven: set[str]) -> None:
        super().__init__(shapes)
        self.dims = dims
        self._data, self._unproven, self._read = data, unproven, {}

    def expressions(self, name: str) -> list | None:
        if name not in self._read:
            self._read[name] = _sympy_elements(self._data[name]) if name in self._data else None
        return self._read[name]

    def symbols(self, name: str) -> tuple[Symbol, ...] | None:
        elements = self.expressions(name)
        if elements is None:
            return None
        return tuple(
            int(item) if item.is_Integer else None if _mentions(str(item), self._unproven) else str(item)
            for item in elements
        )


class _ShapeOf:
    """A value's inferred shape (``ShapeOf``), and what the inference computed for it (``_InferredShapes``)."""

    def __init__(self, shapes: Shapes) -> None:
        self._shapes = shapes
        self.expressions: Callable[[str], list | None] = getattr(shapes, "expressions", lambda name: None)
        self.symbols: Callable[[str], tuple[Symbol, ...] | None] = getattr(shapes, "symbols", lambda name: None)

    def __call__(self, value: ir.Value) -> tuple[Symbol, ...] | None:
        return self._shapes.get(value.name) if value.name else None


@dataclass(frozen=True)
class _Computed:
    """An element ORT's inference computed through ``_ARITHMETIC`` ops (``floor(samples/10) - 1``): its symbol (None
    where unproven), its sympy expression, and the values the ``Div`` ops on the way divide. The expression is the
    element's value where none of those is negative (ONNX's integer ``Div`` truncates, sympy's floors):
    ``_dividends_hold``."""

    symbol: Symbol
    expression: object
    dividends: tuple[str, ...]


def _inferred(shapes: Shapes) -> _ShapeOf:
    return _ShapeOf(shapes)


def _shape_elements(value: ir.Value | None, shape_of: _ShapeOf) -> list[Element] | None:
    """The elements of a 1-D int64 shape tensor, traced back through shape arithmetic.

    A ``Shape``'s elements are read from ``shape_of`` its input: its rank says which axes ``start`` and
    ``end`` select.
    """
    if value is None:
        return None
    array = constant_array(value)
    if array is not None:
        return [int(item) for item in array.reshape(-1)] if array.ndim <= 1 else None
    node = value.producer()
    if node is None or not is_onnx_domain(node):
        return None
    inputs = node.inputs
    if node.op_type == "Shape":
        shape = shape_of(inputs[0])
        if shape is None:
            return None
        rank = len(shape)
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", rank)
        axes = range(rank)[slice(start, end)]
        return [shape[axis] if isinstance(shape[axis], int) else _DimOf(inputs[0], axis) for axis in axes]
    if node.op_type in ("Identity", "Unsqueeze", "Squeeze"):
        return _shape_elements(inputs[0], shape_of)
    if node.op_type == "Reshape":
        # The dynamo exporter turns a scalar dim into a 1-D one with Reshape(d, [-1]); the legacy one reshapes
        # its expand target to [-1].
        target = constant_array(inputs[1])
        source = _shape_elements(inputs[0], shape_of)
        if target is not None and target.size == 1 and source is not None:
            if int(target.reshape(-1)[0]) in (-1, len(source)):
                return source
        return None
    if node.op_type == "Cast" and node.attributes.get_int("to") in (ir.DataType.INT64, ir.DataType.INT32):
        # Paddle2ONNX casts a Shape to int32 to slice it and back (PP-OCRv4's attention targets): a dim over
        # 2**31 (an 8 GiB axis of bytes) would wrap there, where none of these graphs' dims comes near.
        return _shape_elements(inputs[0], shape_of)
    if node.op_type == "Concat" and node.attributes.get_int("axis", 0) in (0, -1):
        parts = [_shape_elements(part, shape_of) for part in inputs]
        if any(part is None for part in parts):
            return None
        return [element for part in parts for element in part]
    if node.op_type == "Gather" and node.attributes.get_int("axis", 0) == 0:
        source, indices = _shape_elements(inputs[0], shape_of), constant_array(inputs[1])
        if source is None or indices is None or indices.ndim > 1:
            return None
        if any(not -len(source) <= int(index) < len(source) for index in indices.reshape(-1)):
            return None  # fails at run time (or the shape read is not the one that holds)
        return [source[int(index)] for index in indices.reshape(-1)]
    if node.op_type == "Slice":
        return _slice_elements(node, shape_of)
    if node.op_type == "Where" and len(inputs) == 3:
        return _where_elements(node, shape_of)
    if node.op_type in _ARITHMETIC:
        return _computed_elements(value, shape_of)
    return None


# The integer ops ORT's inference computes a shape tensor's elements through as its sympy arithmetic says (``Div``
# only where that holds: ``_exact``; ``Pow`` of a constant exponent, which ``_broadcast_recording`` computes). Not
# ``Equal`` or ``Where``: it decides those by the symbols' structure.
_ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Neg", "Pow"})
# How many producers back ``_exact`` follows a computed element.
_DEEPEST_ARITHMETIC = 24


def _computed_elements(value: ir.Value, shape_of: _ShapeOf) -> list[Element] | None:
    """The elements ORT's inference computed for ``value``, a shape tensor computed by ``_ARITHMETIC`` ops
    (the dynamo exporter's ``samples // 10 - 1`` for a strided front end's length, where the legacy one reads
    the projection's shape): sizes, and ``_Computed`` symbols; None where it computed none or an op on the way
    may compute other values than its arithmetic (``_exact``)."""
    computed, expressions = shape_of.symbols(value.name), shape_of.expressions(value.name)
    dividends: list[str] = []
    if computed is None or expressions is None or not _exact(value, shape_of, _DEEPEST_ARITHMETIC, dividends, set()):
        return None
    return [
        item if isinstance(item, int) and not dividends else _Computed(item, expression, tuple(dividends))
        for item, expression in zip(computed, expressions)
    ]


def _computed_equals(element: _Computed, dim: Symbol, shapes: Shapes) -> bool:
    """Whether the computed ``element`` is the size of a dim whose symbol is ``dim`` wherever the model runs: the
    same symbol, or expressions equal once nested floors are joined (``_floors_joined``: ORT's inference sizes a
    stack of strided convolutions ``floor(floor(s/5)/2)``, the exporter computes ``s // 10``), and dividends that
    hold (``_dividends_hold``)."""
    if element.symbol is None or dim is None or isinstance(dim, int):
        return False
    expression = getattr(shapes, "dims", {}).get(dim)
    if element.symbol != dim and (
        expression is None or _floors_joined(element.expression) != _floors_joined(expression)
    ):
        return False
    return _dividends_hold(element, dim, shapes)


def _exact(value: ir.Value, shape_of: _ShapeOf, depth: int, dividends: list[str], seen: set[ir.Value]) -> bool:
    """Whether ``value``'s elements are what ORT's sympy arithmetic computes for them where the values every
    ``Div`` on the way divides (added to ``dividends``) are not negative: every op is a read of dims the inference
    proved, a copy of elements or ``_ARITHMETIC`` of integers that do not wrap (``_fits``), every input of each (a
    ``Gather``'s index too) is so computed, and every ``Div`` divides by a positive constant. A value met again
    (``seen``) is not walked again.

    A dim a broadcast merged is no proven size (``_symbolic_shapes``), and arithmetic may cancel it out of the
    inference's values: ``n - m`` of an ``x [n]`` and a ``y [m]`` added together is 0 there, ``n - 1`` where ``m`` is 1.
    """
    if value in seen:  # walked already: had that walk failed, this one's caller would have failed too
        return True
    seen.add(value)
    array = constant_array(value)
    if array is not None:
        return array.dtype.kind in "iu"  # a float constant: ORT's inference truncates its products as ONNX may not
    node = value.producer()
    if node is None or not is_onnx_domain(node) or depth == 0:
        return False
    if node.op_type == "Shape":
        shape = shape_of(node.inputs[0])
        return shape is not None and None not in shape[_shape_slice(node, len(shape))]
    if node.op_type == "Cast" and node.attributes.get_int("to") not in (ir.DataType.INT64, ir.DataType.INT32):
        return False
    if node.op_type not in _FOLLOWED - {"Where"} and node.op_type not in _ARITHMETIC:
        return False
    if node.op_type == "Div":
        divisor = constant_array(node.inputs[1])
        if divisor is None or divisor.dtype.kind != "i" or not (divisor > 0).all() or not node.inputs[0].name:
            return False
        dividends.append(node.inputs[0].name)
    if node.op_type == "Pow" and _power_exponent(node) is None:
        return False
    if (node.op_type in _ARITHMETIC or node.op_type == "Cast") and not _fits(value, shape_of):
        return False
    return all(item is None or _exact(item, shape_of, depth - 1, dividends, seen) for item in node.inputs)


def _fits(value: ir.Value, shape_of: _ShapeOf) -> bool:
    """Whether the elements ORT's inference computed for ``value`` stay within its integer type (``_bits``) for every
    dim up to ``_LARGEST_DIM``: ONNX's integer ops wrap where the inference's sympy arithmetic does not
    (``s * 2**62 // 2**62`` is ``s`` there, 1 at s = 5 in int64; ``s * 65536 // 65536`` after a Cast to int32, at
    s = 65537)."""
    expressions = shape_of.expressions(value.name)
    if expressions is None:
        return False
    limit = 2 ** (_bits(value) - 1)
    return all((bound := _largest_magnitude(item)) is not None and bound < limit for item in expressions)


def _bits(value: ir.Value) -> int:
    """The width of the integers of ``value``, computed from a shape: a constant's, a Cast's, a Shape's (64), or its
    first input's (the other ops keep their inputs' type)."""
    array = constant_array(value)
    if array is not None:
        return array.dtype.itemsize * 8
    node = value.producer()
    if node is None or node.op_type == "Shape" or not node.inputs or node.inputs[0] is None:
        return 64
    if node.op_type == "Cast":
        return 32 if node.attributes.get_int("to") == ir.DataType.INT32 else 64
    return _bits(node.inputs[0])


def _largest_magnitude(expression) -> int | None:  # noqa: ANN001 (a sympy expression)
    """An upper bound of ``|expression|`` where each dim (symbol) is at most ``_LARGEST_DIM``: of rational constants,
    symbols, sums, products, whole powers, floors, Max and Min; None for anything else."""
    import sympy

    if expression.is_Rational:
        return abs(expression)
    if expression.is_Symbol:
        return _LARGEST_DIM
    if isinstance(expression, sympy.Pow):
        base, exponent = expression.args
        magnitude = _largest_magnitude(base)
        if magnitude is None or not (exponent.is_Integer and exponent > 0):
            return None
        return magnitude ** int(exponent)
    parts = [_largest_magnitude(item) for item in expression.args]
    if not parts or None in parts:
        return None
    if isinstance(expression, sympy.Add):
        return sum(parts)
    if isinstance(expression, sympy.Mul):
        return functools.reduce(lambda left, right: left * right, parts)
    if isinstance(expression, (sympy.floor, sympy.ceiling)):
        return parts[0] + 1
    if isinstance(expression, (sympy.Max, sympy.Min)):
        return max(parts)
    return None


def _power_exponent(node: ir.Node) -> int | None:
    """The exponent of a ``Pow`` of integers that is a constant integer from 0 to ``_LARGEST_EXPONENT``, else None."""
    exponent = constant_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if exponent is None or exponent.dtype.kind not in "iu" or exponent.size != 1:
        return None
    value = int(exponent.reshape(-1)[0])
    return value if 0 <= value <= _LARGEST_EXPONENT else None


# The largest exponent a computed ``Pow`` may have: a patch grid's side squared is 2.
_LARGEST_EXPONENT = 4


def _dividends_hold(element: Element, dim: Symbol, shapes: Shapes) -> bool:
    """Whether a ``_Computed`` ``element`` (any other is a value as it is) takes its symbol's value wherever the
    data's dim it equals, ``dim``, is at least 1: its dividends are not negative there.

    Proven by sympy's assumptions (a dim is not negative), or, for expressions of one input dim ``n`` built of
    sums, positive multiples and floors (nondecreasing in ``n``), at the smallest ``n`` where ``dim`` is 1: a
    stack of strided convolutions' length, ``((samples // 80 - 3) // 2 - 1) // 2 + 1`` (the dynamo exporter's
    wav2vec2), divides ``samples // 80 - 3``, negative below 240 samples, where the stack's last convolution has
    no input left (ONNX Runtime fails where a convolution's input is shorter than its kernel). A sequence of no
    frames (``dim`` 0) is outside the proof, as other 0-sized dims are (``_reshape_rewrite``).
    """
    if not isinstance(element, _Computed) or not element.dividends:
        return True

    read = getattr(shapes, "expressions", lambda name: None)
    parts = [read(name) for name in element.dividends]
    if any(part is None for part in parts):
        return False
    dividends = [item for part in parts for item in part]
    if all(item.is_nonnegative for item in dividends):
        return True
    size = getattr(shapes, "dims", {}).get(dim) if isinstance(dim, str) else None
    if size is None or not all(_nondecreasing(item) for item in [size, *dividends]):
        return False
    symbols = set().union(size.free_symbols, *(item.free_symbols for item in dividends))
    if len(symbols) != 1:
        return False
    (n,) = symbols
    low, high = 0, _LARGEST_DIM
    if size.subs(n, high) < 1:
        return False
    while low < high:  # the smallest n where the dim is 1 or more
        middle = (low + high) // 2
        low, high = (middle + 1, high) if size.subs(n, middle) < 1 else (low, middle)
    return all(item.subs(n, low) >= 0 for item in dividends)


# The largest dim ``_dividends_hold`` searches: ONNX Runtime's symbolic inference's own int_max.
_LARGEST_DIM = 2**31 - 1


def _nondecreasing(expression) -> bool:  # noqa: ANN001 (a sympy expression)
    """Whether ``expression`` is built of nondecreasing steps only: rational constants, symbols, sums, products with
    a positive constant, floors, Max and Min."""
    import sympy

    if expression.is_Rational or expression.is_Symbol:
        return True
    if isinstance(expression, (sympy.Add, sympy.floor, sympy.Max, sympy.Min)):
        return all(_nondecreasing(item) for item in expression.args)
    if isinstance(expression, sympy.Mul):
        constants = [item for item in expression.args if item.is_number]
        rest = [item for item in expression.args if not item.is_number]
        return len(rest) == 1 and all(item.is_positive for item in constants) and _nondecreasing(rest[0])
    return False


def _where_elements(node: ir.Node, shape_of: _ShapeOf) -> list[Element] | None:
    """``Where(Equal(s, c), r, s)`` of a shape ``s`` and constants ``c``, ``r``: the legacy exporter's ``expand``
    target (``c`` is -1, which a dim never is), element by element."""
    condition, replacement, source = node.inputs
    test = condition.producer() if condition is not None else None
    if test is None or test.op_type != "Equal" or not is_onnx_domain(test) or source not in test.inputs:
        return None
    other = test.inputs[1] if test.inputs[0] is source else test.inputs[0]
    elements = _shape_elements(source, shape_of)
    compared, replaced = constant_array(other), constant_array(replacement)
    if elements is None or compared is None or replaced is None:
        return None
    compared, replaced = compared.reshape(-1), replaced.reshape(-1)
    if compared.size not in (1, len(elements)) or replaced.size not in (1, len(elements)):
        return None
    result: list[Element] = []
    for index, element in enumerate(elements):
        against = int(compared[index % compared.size])
        if isinstance(element, _DimOf):
            if against >= 0:
                return None  # a dim may be any size that is not negative
            result.append(element)
        elif element is None or isinstance(element, _Computed):
            return None  # a computed symbol may be any size, -1 too
        else:
            result.append(int(replaced[index % replaced.size]) if element == against else element)
    return result


def _slice_elements(node: ir.Node, shape_of: _ShapeOf) -> list[Element] | None:
    source = _shape_elements(node.inputs[0], shape_of)
    bounds = [constant_array(value) for value in node.inputs[1:5]]
    bounds += [None] * (4 - len(bounds))
    if source is None or bounds[0] is None or bounds[1] is None:
        return None
    if bounds[2] is not None and list(bounds[2].reshape(-1)) not in ([0], [-1]):
        return None
    step = int(bounds[3].reshape(-1)[0]) if bounds[3] is not None else 1
    if step == 0:
        return None
    start, end = int(bounds[0].reshape(-1)[0]), int(bounds[1].reshape(-1)[0])
    # ONNX's clamping, not Python's: a negative bound counts from the end, then is clamped to [0, n] (step > 0)
    # or [0, n - 1] for the start and [-1, n - 1] for the end (step < 0).
    n = len(source)
    if step < 0 and end >= 2**63 - 1:  # ONNX Runtime reads it as "through element 0", as Python's None
        end = -n - 1
    start, end = start + n if start < 0 else start, end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return [source[index] for index in range(start, end, step)]


# Ops whose output 0 has input 0's shape, dim for dim.
_SAME_SHAPE = frozenset(
    "Abs Acos Acosh Asin Asinh Atan Atanh BatchNormalization BitwiseNot Cast CastLike Ceil Celu Clip Cos Cosh "
    "CumSum Dropout Elu Erf Exp Floor Gelu GroupNormalization HardSigmoid HardSwish Hardmax Identity "
    "InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Log LogSoftmax LpNormalization "
    "MeanVarianceNormalization Mish Neg Not RMSNormalization Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh "
    "Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Trilu".split()
)
# Elementwise ops whose inputs broadcast against each other (multidirectionally).
_BROADCAST = frozenset(
    "Add And BitShift BitwiseAnd BitwiseOr BitwiseXor Div Equal Greater GreaterOrEqual Less LessOrEqual Max Mean "
    "Min Mod Mul Or Pow PRelu Sub Sum Where Xor".split()
)
# Rounds of the walk over the graph: a broadcast's output joins its inputs' class only once they share one.
_ROUNDS = 4
_MOST_ATOMS = 16

_Dim = tuple[str, int]


class _DimClasses:
    """Which dims of the main graph's values are the same size, by how the graph computes them.

    A union-find over (value, axis): an op's output dim joins the input dim it is a copy of (an elementwise
    op's, a Transpose's, a MatMul's rows and columns, a Gather's, an Unsqueeze's, a Reshape's 0 or its
    target's element, a ConstantOfShape's, ``Range(0, n, 1)``'s n); a broadcast's output dim (an Expand's
    too) joins the input dims that are not 1 where all of them are already in one class, or else the
    broadcast of the same classes seen before, nested ones flattened (broadcasting is max-or-fail with 1 as
    identity: its result depends only on the set of sizes broadcast, so either side may be 1, but two
    broadcasts of one set are one size); and, for a node the graph's outputs need, the dims it fails unless
    equal join (a MatMul's inner dims, a Concat's other axes). Unlike the symbols of ORT's inference, which
    merges two dims broadcast against each other, no class holds a dim and a broadcast of it with another:
    each holds dims equal wherever the model runs.
    """

    def __init__(self, graph: ir.Graph, shapes: Shapes) -> None:
        self._shapes = shapes
        self._parent: dict[_Dim, _Dim] = {}
        self._sizes: dict[_Dim, int] = {}
        self._joined = 0
        # A class that is a broadcast of others (by its root): the dims broadcast, first seen first (a class
        # joined with another has the descriptions of both); and, by their atoms, each broadcast seen this round.
        self._broadcast_of: dict[_Dim, list[tuple[_Dim, ...]]] = {}
        self._by_atoms: dict[frozenset[_Dim], _Dim] = {}
        self._seen: dict[tuple[_Dim, ...], int] = {}
        self._atoms_of: dict[_Dim, frozenset[_Dim]] = {}  # by the root it had
        needed = _needed_nodes(graph)
        nodes = [node for node in graph if is_onnx_domain(node)]
        for _ in range(_ROUNDS):
            joined = self._joined
            self._by_atoms.clear()
            for node in nodes:
                self._read(node, node in needed)
            if self._joined == joined:
                break

    def same(self, a: ir.Value, i: int, b: ir.Value, j: int) -> bool:
        """Whether dim ``i`` of ``a`` and dim ``j`` of ``b`` are the same size wherever the model runs."""
        return bool(a.name and b.name) and self._root((a.name, i)) == self._root((b.name, j))

    def size(self, value: ir.Value, axis: int) -> int | None:
        """The size dim ``axis`` of ``value`` has wherever the model runs, where one in its class is a size."""
        if not value.name:
            return None
        root = self._root((value.name, axis))
        return self._sizes.get(root, self._static((value.name, axis)))

    def _root(self, key: _Dim) -> _Dim:
        # Iterative, with path compression: a chain of a thousand elementwise ops joins a thousand deep.
        root = key
        while (parent := self._parent.get(root, root)) != root:
            root = parent
        while key != root:
            parent = self._parent[key]
            self._parent[key] = root
            key = parent
        return root

    def _join(self, a: _Dim | None, b: _Dim | None) -> None:
        if a is None or b is None:
            return
        ra, rb = self._root(a), self._root(b)
        if ra == rb:
            return
        sizes = [self._sizes.get(ra), self._sizes.get(rb), self._static(a), self._static(b)]
        self._parent[rb] = ra
        self._joined += 1
        if rb in self._broadcast_of:
            self._broadcast_of[ra] = sorted(
                [*self._broadcast_of.get(ra, []), *self._broadcast_of.pop(rb)], key=self._seen.__getitem__
            )
        known = [size for size in sizes if size is not None]
        if known:
            self._sizes[ra] = known[0]

    def _static(self, key: _Dim) -> int | None:
        shape = self._shapes.get(key[0])
        dim = shape[key[1]] if shape is not None and key[1] < len(shape) else None
        return dim if isinstance(dim, int) else None

    def _rank(self, value: ir.Value | None) -> int | None:
        if value is None or not value.name or value.name not in self._shapes:
            return None
        return len(self._shapes[value.name])

    def _key(self, value: ir.Value | None, axis: int) -> _Dim | None:
        rank = self._rank(value)
        if rank is None or not -rank <= axis < rank:
            return None
        return (value.name, axis % rank)

    def _read(self, node: ir.Node, needed: bool) -> None:
        op, inputs, out = node.op_type, node.inputs, node.outputs[0] if node.outputs else None
        rank = self._rank(out)
        if rank is None or not inputs:
            return
        if op in _SAME_SHAPE:
            if self._rank(inputs[0]) == rank:
                for axis in range(rank):
                    self._join(self._key(out, axis), self._key(inputs[0], axis))
        elif op in _BROADCAST:
            self._broadcast(out, [(value, 0) for value in inputs], range(rank))
        elif op == "MatMul" and len(inputs) == 2:
            self._matmul(node, needed)
        elif op == "Transpose":
            perm = node.attributes.get_ints("perm", list(reversed(range(rank))))
            for axis, source in enumerate(perm):
                self._join(self._key(out, axis), self._key(inputs[0], source))
        elif op in ("Unsqueeze", "Squeeze"):
            self._squeezed(node, rank)
        elif op == "Reshape" and len(inputs) == 2:
            self._reshaped(node, rank)
        elif op == "Expand" and len(inputs) == 2:
            elements = _shape_elements(inputs[1], _inferred(self._shapes))
            if elements is not None and len(elements) <= rank:
                self._broadcast(out, [(inputs[0], 0), *((element, 0) for element in elements)], range(rank))
        elif op == "Range" and len(inputs) == 3:
            # Range(0, n, 1) has n elements: a dim's n is never negative.
            start, delta = constant_array(inputs[0]), constant_array(inputs[2])
            limit = _shape_elements(inputs[1], _inferred(self._shapes))
            if start is not None and delta is not None and start.size == 1 and delta.size == 1:
                if int(start.reshape(-1)[0]) == 0 and int(delta.reshape(-1)[0]) == 1 and limit and len(limit) == 1:
                    if isinstance(limit[0], _DimOf):
                        self._join(self._key(out, 0), self._key(limit[0].value, limit[0].axis))
        elif op == "ConstantOfShape":
            elements = _shape_elements(inputs[0], _inferred(self._shapes))
            for axis, element in enumerate(elements or []):
                if isinstance(element, _DimOf):
                    self._join(self._key(out, axis), self._key(element.value, element.axis))
        elif op == "Gather":
            self._gather(node, rank)
        elif op == "Concat" and needed:
            axis = node.attributes.get_int("axis", 0) % rank
            for other in range(rank):
                if other != axis:
                    for value in inputs:
                        self._join(self._key(out, other), self._key(value, other))

    def _broadcast(self, out: ir.Value, operands: list[tuple[ir.Value | Element, int]], axes: range) -> None:
        """Join each of ``out``'s ``axes`` with the operands' dims aligned to it from the right, where those not 1
        are one class (each operand's last ``dropped`` dims are not broadcast: a MatMul's matrix dims).

        An operand is a value or, for an Expand's target, one element of it (a size, or ``_DimOf``) at the
        position of the operands after the first: the target's dims, aligned as one operand.
        """
        rank = self._rank(out)
        values = [(operand, dropped) for operand, dropped in operands if isinstance(operand, ir.Value)]
        elements = [operand for operand, _ in operands if not isinstance(operand, ir.Value)]
        for axis in axes:
            keys = []
            for value, dropped in values:
                operand_rank = self._rank(value)
                if operand_rank is None:
                    return
                position = axis - (rank - operand_rank)
                if 0 <= position < operand_rank - dropped and self._static((value.name, position)) != 1:
                    keys.append((value.name, position))
            if elements:
                position = axis - (rank - len(elements))
                element = elements[position] if position >= 0 else 1
                if element is None or (isinstance(element, int) and element != 1):
                    continue  # a size: the output's dim is static (or unknown)
                if isinstance(element, _DimOf):
                    key = self._key(element.value, element.axis)
                    if key is None:
                        continue
                    if self._static(key) != 1:
                        keys.append(key)
            out_key = self._key(out, axis)
            if not keys or out_key is None:
                continue
            if len({self._root(key) for key in keys}) == 1:
                self._join(out_key, keys[0])
                continue
            # Broadcasting is max-or-fail with 1 as identity: where it runs, its result depends only on the
            # set of sizes broadcast, so two broadcasts of the same classes (also nested: a mask's length
            # against a sum of that length and another) are the same size.
            atoms = frozenset(atom for key in keys for atom in self._atoms(key))
            known = self._by_atoms.get(atoms)
            if known is not None:
                self._join(out_key, known)
            else:
                self._by_atoms[atoms] = out_key
                descriptions = self._broadcast_of.setdefault(self._root(out_key), [])
                if tuple(keys) not in self._seen:
                    self._seen[tuple(keys)] = len(self._seen)
                if tuple(keys) not in descriptions:
                    descriptions.append(tuple(keys))
                    descriptions.sort(key=self._seen.__getitem__)

    def _atoms(self, key: _Dim, visiting: frozenset[_Dim] = frozenset()) -> frozenset[_Dim]:
        """The classes ``key``'s class is a broadcast of (itself, where it is none, or of more than
        ``_MOST_ATOMS``: a chain of broadcasts of new dims would otherwise take quadratic work)."""
        root = self._root(key)
        cached = self._atoms_of.get(root)
        if cached is not None:
            # Found before later joins: each atom is a dim of the class it was the root of, which joins only
            # grow by dims of the same size, so its present root stands for it.
            return frozenset(self._root(atom) for atom in cached)
        descriptions = self._broadcast_of.get(root)
        if not descriptions or root in visiting:
            return frozenset([root])
        inner = visiting | {root}
        atoms = frozenset(atom for operand in descriptions[0] for atom in self._atoms(operand, inner))
        if len(atoms) > _MOST_ATOMS:
            atoms = frozenset([root])
        self._atoms_of[root] = atoms
        return atoms

    def _reshaped(self, node: ir.Node, rank: int) -> None:
        """A Reshape's output dim is its target element where allowzero=1; under allowzero=0, where that is 0
        (a constant's, or a dim's of the class of the data's at that position), the data's."""
        data, out = node.inputs[0], node.outputs[0]
        elements = _shape_elements(node.inputs[1], _inferred(self._shapes))
        if elements is None or len(elements) != rank:
            return
        allowzero = node.attributes.get_int("allowzero", 0)
        for axis, element in enumerate(elements):
            data_dim = self._key(data, axis)
            if isinstance(element, _DimOf):
                dim = self._key(element.value, element.axis)
                if allowzero or (dim is not None and data_dim is not None and self._root(dim) == self._root(data_dim)):
                    self._join(self._key(out, axis), dim)
            elif element == 0 and not allowzero:
                self._join(self._key(out, axis), data_dim)

    def _matmul(self, node: ir.Node, needed: bool) -> None:
        a, b = node.inputs
        out = node.outputs[0]
        rank, rank_a, rank_b = self._rank(out), self._rank(a), self._rank(b)
        if rank is None or rank_a is None or rank_b is None:
            return
        if needed:
            self._join(self._key(a, -1), self._key(b, -2 if rank_b > 1 else 0))
        if rank_a > 1 and rank_b > 1:
            self._join(self._key(out, -2), self._key(a, -2))
            self._join(self._key(out, -1), self._key(b, -1))
            self._broadcast(out, [(a, 2), (b, 2)], range(rank - 2))

    def _squeezed(self, node: ir.Node, rank: int) -> None:
        source = node.inputs[0]
        source_rank = self._rank(source)
        axes = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if axes is None and node.attributes.get("axes") is not None:
            axes = np.array(node.attributes.get_ints("axes"))
        if axes is None or source_rank is None:
            return
        if node.op_type == "Unsqueeze":
            added = {int(axis) % rank for axis in axes.reshape(-1)}
            kept = [axis for axis in range(rank) if axis not in added]
            pairs = zip(kept, range(source_rank))
        else:
            dropped = {int(axis) % source_rank for axis in axes.reshape(-1)}
            pairs = zip(range(rank), [axis for axis in range(source_rank) if axis not in dropped])
        for axis, source_axis in pairs:
            self._join(self._key(node.outputs[0], axis), self._key(source, source_axis))

    def _gather(self, node: ir.Node, rank: int) -> None:
        data, indices = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
        data_rank, index_rank = self._rank(data), self._rank(indices)
        if data_rank is None or index_rank is None or rank != data_rank - 1 + index_rank:
            return
        axis = node.attributes.get_int("axis", 0) % data_rank
        out = node.outputs[0]
        for position in range(axis):
            self._join(self._key(out, position), self._key(data, position))
        for position in range(index_rank):
            self._join(self._key(out, axis + position), self._key(indices, position))
        for position in range(axis + 1, data_rank):
            self._join(self._key(out, position + index_rank - 1), self._key(data, position))


def _needed_nodes(graph: ir.Graph) -> set[ir.Node]:
    """The nodes of ``graph`` its outputs need (whose failure fails the model)."""
    needed: set[ir.Node] = set()
    pending = [value.producer() for value in graph.outputs]
    while pending:
        node = pending.pop()
        if node is None or node in needed or node.graph is not graph:
            continue
        needed.add(node)
        pending.extend(value.producer() for value in node.inputs if value is not None)
    return needed


def _symbolic_shapes(model: ir.Model, merged: set[str] | None = None) -> _InferredShapes | str:
    """Every value's shape as ints and symbol strings, from ORT's symbolic shape inference; or why not.

    ``merged``, when given, receives every symbol the inference merged with another (either side of
    each merge, broadcasts and required equalities alike), for a caller that trusts no merge.

    We drive the tool's inference loop ourselves instead of calling its
    ``infer_shapes``: that one raises on any value it cannot infer and then saves
    a ``sym_shape_infer_temp.onnx`` into the current directory, while the shapes
    it did infer are all we need. ``auto_merge`` lets it continue past broadcasts
    of two different symbols by assuming they are equal, as a valid model needs.
    """
    SymbolicShapeInference = _symbolic_shape_inference_class()
    if SymbolicShapeInference is None:
        return "onnxruntime's symbolic shape inference is not installed"
    proto = _shapes_only_proto(model)
    _name_unnamed_input_dims(proto.graph)
    inputs = {
        dim.dim_param
        for value in proto.graph.input
        for dim in value.type.tensor_type.shape.dim
        if value.type.HasField("tensor_type") and dim.dim_param
    }
    inference = _broadcast_recording(SymbolicShapeInference)(
        int_max=2**31 - 1, auto_merge=True, guess_output_rank=False, verbose=0
    )
    inference.input_symbols, inference.broadcast_merged = inputs, set()
    try:
        inference._preprocess(proto)
        while inference.run_:
            inference._infer_impl()
        known = dict(inference.known_vi_)
    except Exception as error:  # the tool raises assorted errors on graphs it cannot follow
        node = inference.current_node
        where = f" at {node.op_type} node {node.name or node.output[0]!r}" if node is not None else ""
        return f"symbolic shape inference failed{where} ({one_line(error, 200)})"
    # Symbols merged by a broadcast of two input dims, and what the inference merged them into: unproven.
    merges = getattr(inference, "suggested_merge_", {}) or {}
    if merged is not None:
        merged.update(str(symbol) for pair in merges.items() for symbol in pair)
    unproven = set(inference.broadcast_merged)
    unproven |= {str(merges[symbol]) for symbol in inference.broadcast_merged if symbol in merges}
    shapes = {}
    for name, info in known.items():
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        shapes[name] = tuple(
            dim.dim_value
            if dim.HasField("dim_value")
            else (dim.dim_param if dim.dim_param and not _mentions(dim.dim_param, unproven) else None)
            for dim in tensor_type.shape.dim
        )
    return _InferredShapes(shapes, dict(inference.sympy_data_), dict(inference.symbolic_dims_), unproven)


# The most elements of a computed shape tensor read (``_InferredShapes.expressions``): a shape's, not a table's.
_MOST_COMPUTED_ELEMENTS = 16


def _sympy_elements(data: object) -> list | None:
    """The elements of a tensor ORT's inference computed (``sympy_data_``: a sympy integer expression, an int,
    or a list or array of them, at most ``_MOST_COMPUTED_ELEMENTS``) as sympy integers and expressions; None
    where it is something else (floats, relations, a larger table)."""
    import sympy

    items = list(np.asarray(data, dtype=object).reshape(-1)) if isinstance(data, (list, np.ndarray)) else [data]
    if len(items) > _MOST_COMPUTED_ELEMENTS:
        return None
    elements = []
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            elements.append(sympy.Integer(int(item)))
        elif isinstance(item, sympy.Expr) and item.is_integer:
            elements.append(item)
        else:
            return None
    return elements


@functools.lru_cache(maxsize=4096)
def _floors_joined(expression):  # noqa: ANN001, ANN202 (sympy expressions)
    """``expression`` with each floor of an integer sum over a positive integer ``n`` in one form, innermost first:
    ``floor((floor(y) + k) / n)`` of an integer ``k`` as ``floor((y + k) / n)`` (``floor(y) + k`` is ``floor(y + k)``
    and ``floor(floor(z) / n)`` is ``floor(z / n)``), and ``floor((x + c) / n)`` of an integer ``x`` and a constant
    ``c`` as ``floor((x + c mod n) / n) + c div n``. Equal for every value of the symbols."""
    import sympy

    def joined(node):  # noqa: ANN001, ANN202
        if not isinstance(node, sympy.floor):
            return node
        numerator, denominator = sympy.fraction(sympy.together(node.args[0]))
        if not (denominator.is_Integer and denominator > 0):
            return node
        terms = sympy.Add.make_args(sympy.expand(numerator))
        if not all(term.is_integer for term in terms):
            return node
        inner = [term for term in terms if isinstance(term, sympy.floor)]
        if len(inner) == 1:
            rest = sympy.Add(*(term for term in terms if term is not inner[0]))
            return joined(sympy.floor((inner[0].args[0] + rest) / denominator))
        quotient, remainder = divmod(sum(int(term) for term in terms if term.is_Integer), int(denominator))
        if quotient == 0:
            return node
        rest = sympy.Add(*(term for term in terms if not term.is_Integer))
        return sympy.floor((rest + remainder) / denominator) + quotient

    for _ in range(_FLOOR_ROUNDS):  # a floor joined may pull a constant out of the floor around it: join again
        rewritten = expression.replace(lambda node: isinstance(node, sympy.floor), joined)
        if rewritten == expression:
            break
        expression = rewritten
    return expression


# How many times ``_floors_joined`` walks an expression: one more than its floors nest in a stack of convolutions.
_FLOOR_ROUNDS = 8


def _mentions(expression: str, symbols: set[str]) -> bool:
    """Whether ``expression`` (a dim as ORT's inference writes it: a symbol, or a sum or product of them)
    is one of ``symbols`` or is built from one: ``2*b`` of an unproven ``b`` is no more proven."""
    if expression in symbols:
        return True
    # Whole tokens, whatever characters a name holds (``seq-b`` in ``2*seq-b``): a name is mentioned where no
    # identifier character touches it on either side.
    return any(re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", expression) for name in symbols)


def _name_unnamed_input_dims(graph: onnx.GraphProto) -> None:
    """Give each graph input's dim that has no size and no name (or a negative size: -1, "any") a name of its own.

    ORT's inference names such a dim itself, after the inputs are read: a broadcast of two of them (an
    ``Expand(b, Shape(a))`` of ``a``, ``b`` declared ``[?, 4]``) would then be merged without being counted
    among the input dims' unproven merges, and the Expand read as a no-op.
    """
    for index, value in enumerate(graph.input):
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param or (dim.HasField("dim_value") and dim.dim_value >= 0):
                continue
            dim.Clear()
            dim.dim_param = f"graphopt_unnamed_{index}_{axis}"


def _int_attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    """An int attribute of an ONNX ``NodeProto``, or ``default``."""
    return next((attribute.i for attribute in node.attribute if attribute.name == name), default)


_SEQUENCE_VALUE_INFO = getattr(onnx.helper, "make_sequence_value_info", None) or getattr(
    onnx.helper, "make_tensor_sequence_value_info", None
)


# The symbols ORT's ``_new_symbolic_dim_from_output`` names for a size it cannot compute (a NonZero count, a
# sequence element's dim, a Range or Reshape of data values): whatever the op, such a size depends on the data.
_DATA_DEPENDENT = re.compile(r"\w+_o\d+__d\d+$")

# The reductions that take their axes as an input, from the opset given: ReduceSum from 13, the others from 18. ORT's
# inference has no handler for most, and its ReduceSum one (ReduceMean's from 18) reads empty axes as none reduced.
_REDUCTIONS_WITH_AXES_INPUT = {
    "ReduceSum": 13,
    "ReduceMean": 18,
    "ReduceL1": 18,
    "ReduceL2": 18,
    "ReduceLogSum": 18,
    "ReduceLogSumExp": 18,
    "ReduceMax": 18,
    "ReduceMin": 18,
    "ReduceProd": 18,
    "ReduceSumSquare": 18,
}


def _onnx_opset(proto: onnx.ModelProto) -> int:
    """The version of the default operator set ``proto`` imports."""
    return next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), 0)


def _broadcast_recording(base: type) -> type:
    """``base`` (ORT's ``SymbolicShapeInference``) recording, in ``broadcast_merged``, the input dims it
    merges because they broadcast against each other (where one of them may be 1).

    The tool merges symbols in two kinds of places: where an op requires them equal (a
    Concat's other axes, a MatMul's inner dims: a valid model has them equal) and where
    an elementwise op broadcasts them (``_broadcast_shapes``, ``_check_merged_dims`` with
    ``allow_broadcast``, and the auto-merge of ONNX's own inference result in ``_infer_impl``).
    Only the second kind is recorded. A broadcast of a dim (an input's or a computed one) against a
    size is not merged at all: the tool would make the size the input's dim everywhere (``Add(x, y)`` of an x
    ``[a, 4]`` and a y ``[3, 4]`` read x as ``[3, 4]``, and ``Expand(z, Shape(x))`` became
    ``Expand(z, [3, 4])``, wrong for an x ``[1, 4]``); the broadcast's output has the size anyway.
    """

    class BroadcastRecording(base):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 (ORT's own signature)
            super().__init__(*args, **kwargs)
            # CastLike passes its values on as Cast does: torch's dynamo exports bound their aranges by
            # CastLike(Shape(..)[i], c), and without this every such Range got a fresh symbol (now unproven).
            self.dispatcher_["CastLike"] = lambda node: self._compute_on_sympy_data(node, lambda values: values[0])
            for op_type in _REDUCTIONS_WITH_AXES_INPUT:
                self.dispatcher_[op_type] = functools.partial(self._infer_reduction, self.dispatcher_.get(op_type))
            self.dispatcher_.setdefault("FusedMatMul", self._infer_fused_matmul)
            self.dispatcher_["Pow"] = self._infer_power
            self.current_node = None  # the node being inferred, named by a failure's note

        def _infer_fused_matmul(self, node):  # noqa: ANN001, ANN202 (ORT's own signature)
            # ONNX Runtime's own optimizer writes com.microsoft FusedMatMul (a MatMul of a transposed input, or
            # scaled: the attention scores' Q·Kᵀ/√d) into a model saved at ORT_ENABLE_EXTENDED, and the tool has no
            # handler for it: the inference stopped there, at the first attention, and no Reshape target after it
            # was proven (a BERT so saved kept 124 nodes, not 43, and its attentions unpacked). Its shape is a
            # MatMul's of the inputs with their last two dims swapped where transA/transB say; the batch-transposing
            # forms (transBatchA/B) are left unknown, as before.
            flags = {attribute.name: attribute.i for attribute in node.attribute if attribute.type == attribute.INT}
            if flags.get("transBatchA", 0) or flags.get("transBatchB", 0):
                return
            lhs, rhs = self._get_shape(node, 0), self._get_shape(node, 1)
            if lhs is None or rhs is None or len(lhs) < 2 or len(rhs) < 2:
                return
            if flags.get("transA", 0):
                lhs = [*lhs[:-2], lhs[-1], lhs[-2]]
            if flags.get("transB", 0):
                rhs = [*rhs[:-2], rhs[-1], rhs[-2]]
            self._check_merged_dims([lhs[-1], rhs[-2]], allow_broadcast=False)
            shape = [*self._broadcast_shapes(lhs[:-2], rhs[:-2]), lhs[-2], rhs[-1]]
            dtype = self.known_vi_[node.input[0]].type.tensor_type.elem_type
            self.known_vi_[node.output[0]].CopyFrom(onnx.helper.make_tensor_value_info(node.output[0], dtype, shape))

        def _infer_reduction(self, handler, node):  # noqa: ANN001, ANN202 (ORT's own signature)
            # From opset 18 these reductions read their axes from an input, as ReduceSum does from 13. The tool has
            # a handler for ReduceSum and ReduceMean only, and runs ONNX's inference on a node without the value of
            # such an input, which then leaves the output without a shape: the next elementwise op raised and
            # failed the whole inference (a legacy opset-18 HuBERT's weight norm, ReduceL2 then Div: no Reshape
            # target of the model was proven). ONNX's inference reads the axes where their value is known.
            # ReduceSum's handler (ReduceMean's from 18) sized an empty axes input as reducing nothing, where it
            # reduces every axis unless noop_with_empty_axes: ReduceSum(x, []) of [B, S, 8] was proven [B, S, 8], not
            # [1, 1, 1], and a Reshape target read from its shape became [0, 0, -1] (a review; rolled back, or
            # wrong under --no-verify). ONNX's inference below replaces its shape wherever the axes are known.
            if handler is not None:
                handler(node)  # ReduceProd's: the product of a shape's values
            first = _REDUCTIONS_WITH_AXES_INPUT[node.op_type]
            if _onnx_opset(self.out_mp_) < first or len(node.input) < 2 or not node.input[1]:
                return
            axes = self._try_get_value(node, 1)
            try:
                axes = np.array(axes, dtype=np.int64).reshape(-1)
            except (TypeError, ValueError):  # unknown (None), or symbols: the axes are read at run time
                self._reduction_of_unknown_axes(node)
                return
            axes = onnx.numpy_helper.from_array(axes, node.input[1])
            outputs = [onnx.ValueInfoProto(name=node.output[0])]
            graph = onnx.helper.make_graph([node], "tmp", [self.known_vi_[node.input[0]]], outputs, [axes])
            self.tmp_mp_.graph.CopyFrom(graph)
            inferred = onnx.shape_inference.infer_shapes(self.tmp_mp_)
            self.known_vi_[node.output[0]].CopyFrom(inferred.graph.output[0])

        def _reduction_of_unknown_axes(self, node):  # noqa: ANN001, ANN202 (ORT's own signature)
            # Axes read at run time (a graph input, or data) left the output without a shape too, and the next
            # elementwise op failed the whole inference (a review: ReduceMax(x, axes) then Div). With keepdims the
            # output keeps the input's rank, of sizes unknown here (fresh symbols, as ORT's ReduceSum handler gives).
            if node.op_type in ("ReduceSum", "ReduceMean") or not _int_attribute(node, "keepdims", 1):
                return  # ORT's own handler sized it (or raised where it cannot: keepdims=0)
            data = self.known_vi_[node.input[0]].type.tensor_type
            if not data.HasField("shape"):
                return
            dims = [str(dim) for dim in self._new_symbolic_shape(len(data.shape.dim), node)]
            info = onnx.helper.make_tensor_value_info(node.output[0], data.elem_type, dims)
            self.known_vi_[node.output[0]].CopyFrom(info)

        def _infer_power(self, node):  # noqa: ANN001, ANN202 (ORT's own signature)
            # The tool has no handler for Pow: ONNX's inference gives its shape, and a shape's element squared
            # (DINOv2's dynamo export counts its patches (h // 14) ** 2) had no value. An integer base to a small
            # constant integer exponent is computed on symbols, as ONNX computes it.
            self._onnx_infer_single_node(node)
            exponent = self.initializers_.get(node.input[1]) if len(node.input) > 1 else None
            exponent = (
                onnx.numpy_helper.to_array(exponent) if exponent is not None else self.sympy_data_.get(node.input[1])
            )
            if isinstance(exponent, np.ndarray):
                exponent = exponent.reshape(-1)[0] if exponent.size == 1 and exponent.dtype.kind in "iu" else None
            if not isinstance(exponent, (int, np.integer)) or not 0 <= int(exponent) <= _LARGEST_EXPONENT:
                return
            if self.known_vi_[node.input[0]].type.tensor_type.elem_type not in (
                onnx.TensorProto.INT64,
                onnx.TensorProto.INT32,
            ):
                return
            self._compute_on_sympy_data(node, lambda values: values[0] ** int(exponent))

        def _infer_Expand(self, node):  # noqa: ANN001, ANN202, N802 (ORT's own signature)
            # ORT's handler sizes an Expand only where its target's values are known. Where they are not, ONNX's
            # inference left the output's dims unknown and the tool's auto-merge then read the target's values and
            # asserted: the whole inference failed (DINOv2's dynamo export expands its mask to a target built with
            # a -1 beside computed sizes: no target of the model was proven). Such an output's dims are fresh
            # symbols (of the larger of the two ranks), which prove nothing.
            super()._infer_Expand(node)
            if self._try_get_value(node, 1) is not None:
                return
            data, target = self._get_shape(node, 0), self._get_shape(node, 1)
            if data is None or target is None or len(target) != 1 or not isinstance(target[0], int):
                return
            dims = [str(dim) for dim in self._new_symbolic_shape(max(len(data), target[0]), node)]
            dtype = self.known_vi_[node.input[0]].type.tensor_type.elem_type
            self.known_vi_[node.output[0]].CopyFrom(onnx.helper.make_tensor_value_info(node.output[0], dtype, dims))

        def _onnx_infer_single_node(self, node):  # noqa: ANN001, ANN202 (ORT's own signature)
            self.current_node = node
            return super()._onnx_infer_single_node(node)

        def _infer_Slice(self, node):  # noqa: ANN001, ANN202, N802 (ORT's own signature)
            # Where the tool cannot decide whether a symbolic end is within a symbolic dim, it logs "Unable to
            # determine if m <= n, treat as equal" and sizes the slice as the whole dim: x[:Shape(y)[0]] of an
            # x [n, 2] was n, and a Reshape of it to [n, -1] became [0, -1], [2, 2] where the original gives [4, 1]
            # at n = 4, m = 2 (a review). Such a dim is a fresh symbol, which proves nothing.
            super()._infer_Slice(node)
            if _onnx_opset(self.out_mp_) < 10 or len(node.input) < 3 or not node.input[2]:
                return  # below 10 the ends are attributes: numbers
            ends = self._try_get_value(node, 2)
            if ends is None:
                return
            ends = list(ends) if isinstance(ends, (list, tuple, np.ndarray)) else [ends]
            dims = self._get_sympy_shape(node, 0)
            axes = self._try_get_value(node, 3) if len(node.input) > 3 and node.input[3] else range(len(ends))
            axes = list(axes) if isinstance(axes, (list, tuple, np.ndarray, range)) else [axes]
            if len(axes) != len(ends) or not all(isinstance(axis, (int, np.integer)) for axis in axes):
                return
            output = self.known_vi_[node.output[0]].type.tensor_type
            for axis, end in zip(axes, ends, strict=True):
                axis = int(axis) % len(dims)
                if _undecided_within(end, dims[axis]) and output.HasField("shape"):
                    fresh = self._new_symbolic_dim_from_output(node, 0, axis)
                    output.shape.dim[axis].Clear()
                    output.shape.dim[axis].dim_param = str(fresh)

        def _infer_Attention(self, node):  # noqa: ANN001, ANN202, N802 (ORT's own signature)
            # The tool dispatches on the op type alone and skips ONNX's inference for an "Attention": ONNX's own
            # (opset 23, which torch's dynamo exporter writes for sdpa) went to the handler of com.microsoft's,
            # whose inputs differ, and its assertion failed the whole inference. ONNX's inference reads it.
            if node.domain not in ("", "ai.onnx"):
                return super()._infer_Attention(node)
            known = [self.known_vi_[name] for name in node.input if name]
            outputs = [onnx.ValueInfoProto(name=name) for name in node.output]
            self.tmp_mp_.graph.CopyFrom(onnx.helper.make_graph([node], "tmp", known, outputs))
            inferred = onnx.shape_inference.infer_shapes(self.tmp_mp_)
            for index, name in enumerate(node.output):
                if name:
                    self.known_vi_[name].CopyFrom(inferred.graph.output[index])
            return None

        def _infer_SplitToSequence(self, node):  # noqa: ANN001, ANN202, N802 (ORT's own signature)
            # ORT 1.32's handler calls onnx.helper.make_sequence_value_info, which onnx 1.23 renamed
            # make_tensor_sequence_value_info, and reads a scalar split (the chunk size torch's dynamo GPT-2
            # exports give) as a list: either failed the whole inference, and the pass declined the graph.
            # The elements' shape: the input's, with the split axis unknown (chunks may differ: the last is
            # shorter) or, without a split and keepdims=0, removed.
            shape = list(self._get_shape(node, 0))
            axis = _int_attribute(node, "axis", 0) % max(len(shape), 1)
            if len(node.input) < 2 or not node.input[1]:
                if not _int_attribute(node, "keepdims", 1):
                    del shape[axis]
                else:
                    shape[axis] = 1
            elif shape:
                shape[axis] = None
            element_type = self.known_vi_[node.input[0]].type.tensor_type.elem_type
            self.known_vi_[node.output[0]].CopyFrom(_SEQUENCE_VALUE_INFO(node.output[0], element_type, shape))

        def _fuse_tensor_type(self, node, out_idx, dst_type, src_type):  # noqa: ANN001, ANN202 (ORT's own signature)
            # An If's output: ORT zips its branches' dims (to the shorter), and takes the second's shape where the
            # first has none. Branches returning other ranks gave the output one branch's rank, and a target read
            # from its Shape became a constant of that many elements (wrong where the other branch runs). Such an
            # output has no shape here.
            dst, src = _tensor_type_of(dst_type), _tensor_type_of(src_type)
            ranks = [len(tensor.shape.dim) if tensor.HasField("shape") else None for tensor in (dst, src)]
            super()._fuse_tensor_type(node, out_idx, dst_type, src_type)
            if ranks[0] != ranks[1]:
                dst.ClearField("shape")

        def _add_suggested_merge(self, symbols, apply=False):  # noqa: ANN001, ANN202 (ORT's own signature)
            frame = sys._getframe(1)
            caller = frame.f_code.co_name
            # _broadcast_shapes merges a symbol with a size through _merge_symbols and _check_merged_dims.
            outer = frame.f_back.f_back.f_code.co_name if frame.f_back and frame.f_back.f_back else None
            broadcast = caller in ("_broadcast_shapes", "_infer_impl") or (
                caller == "_check_merged_dims"
                and (frame.f_locals.get("allow_broadcast", False) or outer == "_broadcast_shapes")
            )
            named = {str(symbol) for symbol in symbols if isinstance(symbol, str)}
            # A symbol ORT made for a size it cannot compute proves nothing when a broadcast merges it:
            # either side may be 1 there.
            fresh = {name for name in named if _DATA_DEPENDENT.match(name)}
            if broadcast and len(named) > 1 and (named <= self.input_symbols or fresh):
                self.broadcast_merged.update(named)
            if broadcast and named and any(not isinstance(symbol, str) for symbol in symbols):
                # A dim broadcast against a size is not that size (it may be 1), input dim or computed.
                symbols = [symbol for symbol in symbols if not isinstance(symbol, str)]
                if len({str(symbol) for symbol in symbols}) < 2:
                    return None
            return super()._add_suggested_merge(symbols, apply=apply)

    return BroadcastRecording


def _undecided_within(end: object, dim: object) -> bool:
    """Whether a Slice's ``end`` and its input's ``dim`` are both symbolic and sympy cannot decide ``end <= dim``
    (ORT's inference then takes them as equal: ``_infer_Slice``)."""
    import sympy

    if not isinstance(end, sympy.Expr) or not isinstance(dim, sympy.Expr) or end.is_number or dim.is_number:
        return False
    for relation in (lambda: end <= dim, lambda: dim - end >= 0):
        try:
            bool(relation())
            return False
        except TypeError:
            continue
    return True


def _tensor_type_of(type_proto: onnx.TypeProto) -> onnx.TypeProto.Tensor:
    """The tensor type of a tensor's ``type_proto``, or of a sequence's elements."""
    if type_proto.HasField("sequence_type"):
        return type_proto.sequence_type.elem_type.tensor_type
    return type_proto.tensor_type


@functools.cache
def _symbolic_shape_inference_class() -> type | None:
    """ORT's ``SymbolicShapeInference``, loaded from its file.

    Importing it as ``onnxruntime.tools.symbolic_shape_infer`` first runs
    ``onnxruntime/tools/__init__.py``, which imports torch when torch is installed
    (1.8 s here, for nothing we use); the module itself needs only onnx, numpy and
    sympy, so we load the file directly and fall back to the import if it moved.
    """
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tools" / "symbolic_shape_infer.py"
    try:
        if path.is_file():
            file_spec = importlib.util.spec_from_file_location("graphopt_ort_symbolic_shape_infer", path)
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
            return module.SymbolicShapeInference
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference
    except ImportError:  # sympy missing
        return None


def _shapes_only_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto for shape inference: Constants lifted, large weights turned into inputs, and the
    defaults of overridable inputs (initializers that are also graph inputs) left out, so only their declared
    shapes are read.

    The tool cannot read Constant nodes with ``value_ints``-style attributes, and it
    needs only the shapes of weights: dropping their bytes before serializing keeps
    a multi-GB model from being copied. The model is serialized through a view, not a
    clone: a clone costs more than the inference itself at 20,000 nodes.
    """
    graph = model.graph
    large = [
        value
        for value in graph.initializers.values()
        if value.const_value is not None
        and value.const_value.size > _LARGE_INITIALIZER_ELEMENTS
        and not value.is_graph_input()
    ]
    hidden = {id(value) for value in large}
    view = ir.GraphView(
        graph.inputs,
        graph.outputs,
        nodes=graph,
        # An initializer that is also a graph input is a default a caller may override: its value proves nothing.
        initializers=[
            value for value in graph.initializers.values() if id(value) not in hidden and not value.is_graph_input()
        ],
        opset_imports=graph.opset_imports,
        name=graph.name,
    )
    proto = onnx.ModelProto(ir_version=model.ir_version)
    for domain, version in model.opset_imports.items():
        proto.opset_import.add(domain=domain, version=version)
    ir.serde.serialize_graph_into(proto.graph, view, model_ir_version=model.ir_version)
    proto.functions.extend(ir.serde.serialize_function(function) for function in model.functions.values())
    # A small weight in external data is written with its bytes: the tool reads values (a Reshape's target)
    # and cannot follow the location, which onnx-ir keeps absolute or relative to a folder it does not know.
    for index, initializer in enumerate(proto.graph.initializer):
        if initializer.data_location == onnx.TensorProto.EXTERNAL:
            tensor = graph.initializers[initializer.name].const_value
            in_memory = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=initializer.name)
            proto.graph.initializer[index].CopyFrom(ir.serde.serialize_tensor(in_memory))
    for value in large:
        tensor = value.const_value
        proto.graph.input.append(
            onnx.helper.make_tensor_value_info(value.name, int(tensor.dtype), list(tensor.shape.numpy()))
        )
    _lift_constant_nodes(proto.graph)
    return proto


def _lift_constant_nodes(graph: onnx.GraphProto) -> None:
    """Turn the ``Constant`` nodes of ``graph`` (and its subgraphs) into initializers, large ones into inputs.

    A Constant whose output is a graph output, or which holds a sparse tensor, stays.
    """
    outputs = {output.name for output in graph.output}
    kept = []
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _lift_constant_nodes(subgraph)
        tensor = _constant_tensor(node) if node.output[0:1] and node.output[0] not in outputs else None
        if tensor is None:
            kept.append(node)
        elif np.prod(tensor.dims, dtype=np.int64) > _LARGE_INITIALIZER_ELEMENTS:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            graph.initializer.append(tensor)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a standard ``Constant`` node holds, named as its output; None for anything else."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    attribute, name = node.attribute[0], node.output[0]
    helper, types = onnx.helper, onnx.TensorProto
    if attribute.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attribute.t)
        tensor.name = name
        return tensor
    scalars = {"value_float": (types.FLOAT, "f"), "value_int": (types.INT64, "i"), "value_string": (types.STRING, "s")}
    lists = {"value_floats": (types.FLOAT, "floats"), "value_ints": (types.INT64, "ints")}
    lists["value_strings"] = (types.STRING, "strings")
    if attribute.name in scalars:
        dtype, field = scalars[attribute.name]
        return helper.make_tensor(name, dtype, [], [getattr(attribute, field)])
    if attribute.name in lists:
        dtype, field = lists[attribute.name]
        values = list(getattr(attribute, field))
        return helper.make_tensor(name, dtype, [len(values)], values)
    return None

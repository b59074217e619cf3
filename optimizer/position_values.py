"""Float values a graph computes from positions and constants alone (a rotary table's angles and their ``Cos``/``Sin``,
a distance bias), and the part of a graph that computes them, run alone at a length no verification set reaches.

Why: float16 rounds a value to a step that grows with it. Angles computed in float16 from the positions of 257 tokens
(the longest generated set) moved a rotary table within the float16 twin's tolerance, and 9.7x past it at 2,048 tokens
(review s79 mut: an error that grows with the length is not seen at the generated lengths). The values themselves
read no activation, so the graph that computes them is cheap at any length: a ``Range`` or the positions, a few
products, the ``Cos`` and ``Sin``, no attention. A ``Shape`` of an activation on the way is fed an input of that
activation's shape (its values are not read), where the shape is known from the input dims.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
# Integer sources of positions: a length read from a shape, a count up to it, a running count (a mask's cumsum).
_LENGTH_OPS = ("Shape", "Size", "Range", "CumSum")
# Ops whose inputs after the first are no data (shapes, axes, indices) but the first's place.
_DATA_FIRST = ("Reshape", "Expand", "Unsqueeze", "Squeeze", "Tile", "Slice", "Gather", "Pad", "Flatten", "Transpose")
_POSITION_NAME = re.compile(r"position", re.IGNORECASE)


def _constant(value: ir.Value) -> bool:
    producer = value.producer()
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant")


def inferred_types(model: ir.Model) -> ir.Model:
    """A copy of ``model`` with the types and shapes ONNX's inference gives its values (a file may record none;
    onnx-ir's ``ShapeInferencePass`` leaves the large weights out of what it gives onnx), as far as it goes."""
    copy = model.clone()
    ir.passes.common.ShapeInferencePass(strict_mode=False, data_prop=True)(copy)
    return copy


def classified_positions(model: ir.Model) -> tuple[set[str], set[str]]:
    """The names of ``model``'s main-graph values computed from positions (``position_values``: integers, and floats),
    and of all the values computed from positions and constants alone (those and the values computed from constants
    alone, ``Expand(inv_freq, Shape(position_ids))``); ``model`` typed (``inferred_types``)."""
    ints: set[str] = {
        value.name
        for value in model.graph.inputs
        if value.dtype is not None and value.dtype.is_integer() and _POSITION_NAME.search(value.name or "")
    }
    floats: set[str] = set()
    fixed: set[str] = set()
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or not node.outputs:
            continue
        inputs = [value for value in node.inputs if value is not None]
        names = {value.name for value in node.outputs if value.name}
        integers = all(value.dtype is not None and value.dtype.is_integer() for value in node.outputs)
        if node.op_type in _LENGTH_OPS and integers and not all(_constant(value) for value in inputs):
            ints |= names
            continue
        data = inputs[:1] if node.op_type in _DATA_FIRST else inputs
        if integers:
            if any(value.name in ints for value in data):  # not a mask expanded to a length: Expand(mask, Shape(h))
                ints |= names
            elif inputs and all(value.name in fixed or _constant(value) for value in inputs):
                fixed |= names  # a count of constants: ``Range(0, dim, 2)`` of an ``inv_freq`` computed in the graph
            continue
        if not all(value.dtype in _FLOATS for value in node.outputs):
            continue
        if node.op_type == "Cast" and inputs and inputs[0].name in ints:
            floats |= names
            continue
        if not data or not all(v.name in floats or v.name in fixed or _constant(v) for v in data):
            continue
        if not all(v.name in ints or v.name in fixed or _constant(v) for v in inputs[len(data) :]):
            continue  # a row of a table picked by the ids: computed from an input, not from constants
        if any(value.name in floats for value in data):
            floats |= names
        else:
            fixed |= names
    return floats, floats | fixed | ints


def position_values(model: ir.Model) -> list[str]:
    """Names of the float values of ``model``'s main graph that are computed from positions and constants alone and
    read by a computation of other values too (the ``cos`` that ``Mul(h, cos)`` reads, a bias added to the scores),
    or are graph outputs. Positions are the integers a ``Shape``, ``Size``, ``Range`` or ``CumSum`` of other than
    constants computes, an integer input named like positions, and what integer ops compute from them; a float value
    is computed from them where it is their ``Cast`` to float, or a float op's output whose data inputs (the first
    of a ``Reshape``, ``Gather``, ...) are such values, constants, or computed from constants alone, one at least a
    position value. A ``Gather`` of a constant table by positions reads a row, computes nothing: not one."""
    model = inferred_types(model)
    floats, _ = classified_positions(model)
    outputs = {value.name for value in model.graph.outputs}
    found = []
    for node in model.graph:
        for value in node.outputs:
            if value.name not in floats:
                continue
            readers = [user for user, _ in value.uses()]
            if value.name in outputs or any(not all(out.name in floats for out in user.outputs) for user in readers):
                found.append(value.name)
    return found


def position_cut(
    model: ir.Model, names: Sequence[str], dims: Mapping[str, int]
) -> tuple[onnx.ModelProto, dict[str, tuple[np.dtype, tuple[int, ...]]]] | None:
    """The nodes of ``model``'s main graph that compute those of ``names`` it computes from positions and constants
    alone (``classified_positions``), with those values as its outputs, and the inputs a ``Shape`` or ``Size`` alone
    reads made inputs fed at their shapes under ``dims`` (each a dtype and a shape); None where none is left. A value
    whose computation reads an activation (a ``Shape`` of one whose shape is not known, the head size of ``1/sqrt(d)``)
    is left out: the part of the graph computing it is no longer cheap, and a length grows no such value. So is one
    where a node on the way holds a subgraph."""
    model = inferred_types(model)
    _, alone = classified_positions(model)
    producers = {value.name: node for node in model.graph for value in node.outputs if value.name}
    values = {value.name: value for node in model.graph for value in node.outputs}
    values.update((value.name, value) for value in model.graph.inputs)
    fed: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    kept: dict[int, ir.Node] = {}
    read: set[str] = set()
    wanted = []
    for name in names:
        if name not in producers or name not in alone:
            continue
        reached = _computing(name, producers, alone, values, dims)
        if reached is None:
            continue
        nodes, reads, shapes = reached
        wanted.append(name)
        kept.update(nodes)
        read |= reads
        fed.update(shapes)
    if not wanted:
        return None
    nodes = [ir.serde.serialize_node(node) for node in model.graph if id(node) in kept]
    produced = {output for node in nodes for output in node.output}
    weights = model.graph.initializers
    initializers = [
        ir.serde.serialize_tensor(weights[name].const_value)
        for name in sorted(read)
        if name in weights and weights[name].const_value is not None
    ]
    held = {tensor.name for tensor in initializers}
    inputs = [
        ir.serde.serialize_value(value) for value in model.graph.inputs if value.name in read and value.name not in held
    ]
    fed = {name: shape for name, shape in fed.items() if name not in produced}
    inputs += [
        onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(dtype), shape)
        for name, (dtype, shape) in fed.items()
    ]
    outputs = [
        onnx.helper.make_tensor_value_info(name, values[name].dtype, None)
        if values[name].dtype is not None
        else onnx.helper.make_empty_tensor_value_info(name)
        for name in wanted
    ]
    cut = onnx.helper.make_graph(nodes, "position_values", inputs, outputs, initializers)
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    return onnx.helper.make_model(cut, opset_imports=opsets, ir_version=model.ir_version), fed


def _computing(
    name: str,
    producers: Mapping[str, ir.Node],
    alone: set[str],
    values: Mapping[str, ir.Value],
    dims: Mapping[str, int],
) -> tuple[dict[int, ir.Node], set[str], dict[str, tuple[np.dtype, tuple[int, ...]]]] | None:
    """The nodes computing ``name``, the graph inputs and initializers they read, and the activations a ``Shape`` or
    ``Size`` of them reads (fed at their shapes under ``dims``); None where they compute an activation on the way
    (a value not in ``alone`` but a ``Constant``'s) or hold a subgraph."""
    kept: dict[int, ir.Node] = {}
    read: set[str] = set()
    fed: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    frontier = [name]
    while frontier:
        value = frontier.pop()
        node = producers.get(value)
        if node is None:
            read.add(value)
            continue
        if id(node) in kept:
            continue
        if node.op_type != "Constant" and value not in alone:
            return None
        if any(
            attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for attribute in node.attributes.values()
        ):
            return None
        kept[id(node)] = node
        for source in (read_value.name for read_value in node.inputs if read_value is not None):
            if not source:
                continue
            if node.op_type in ("Shape", "Size") and source in producers:
                if (shape := _bound(values.get(source), dims)) is None:
                    return None
                fed[source] = shape
                read.add(source)
                continue
            frontier.append(source)
    return kept, read, fed


def _bound(value: ir.Value | None, dims: Mapping[str, int]) -> tuple[np.dtype, tuple[int, ...]] | None:
    """``value``'s dtype and its shape under ``dims``, or None where either is not known."""
    if value is None or value.shape is None or value.dtype is None:
        return None
    shape = []
    for dim in value.shape:
        if isinstance(dim, int):
            shape.append(dim)
        elif isinstance(dim, ir.SymbolicDim) and dim.value in dims:
            shape.append(dims[dim.value])
        else:
            return None
    try:
        return value.dtype.numpy(), tuple(shape)
    except TypeError:
        return None


def long_binding(
    model: ir.Model,
    dims: Mapping[str, int] | None,
    max_sequence: int,
    held: Sequence[Mapping[str, int]],
) -> tuple[dict[str, int], list[str]]:
    """The sizes ``model``'s named input dims are checked at beyond the verification sets: a batch at 1, the user's
    ``dims`` as given, every other dim at ``max_sequence`` (``--max-sequence``) or the rows of a position table it
    indexes where fewer (``position_table_lengths``: BERT refuses past 512 positions), but a decoder's past at none
    where its new tokens are drawn so long, else at that length less the new tokens (a decode step's one token, fixed
    by the model or by ``dims``: its position is the past's length); and the dims so drawn longer than every set of
    ``held`` holds them (none: nothing to check there). A decode step's past was drawn at 4096 until review s79
    late79e: then it ran unchecked where ``dims`` fixed its new tokens, and else at the one position 4,096, a power of
    two that every float16 ``inv_freq`` times it is exact at, so angles computed in float16 were kept."""
    from optimizer.compared_inputs import position_table_lengths  # here: it imports the verifier's module
    from optimizer.inputs import (
        _ENCODER_NAME,
        _MASK_NAME,
        _PAST_NAME,
        batch_dims,
        cache_length_dims,
        runtime_inputs,
        symbolic_dims,
    )

    dims = dict(dims or {})
    batches = set(batch_dims(model))
    pasts = {past: sequence for past, sequence in cache_length_dims(model).values()}
    tables = position_table_lengths(model)
    lengths = [name for name in symbolic_dims(model) if name not in batches]
    # A cache's length dim beside one other length (the new tokens, as ``cache_length_dims`` finds them but by
    # name), or none: the new tokens fixed (a decode step's one token, ``input_ids [batch, 1]``). A cache or a mask
    # holding one is no new tokens.
    held_by: dict[bool, set[str]] = {True: set(), False: set()}
    for value in runtime_inputs(model):
        name = value.name or ""
        cache = bool(_PAST_NAME.search(name)) and not _ENCODER_NAME.search(name)
        if value.shape is not None and (cache or not _MASK_NAME.search(name)):
            held_by[cache] |= {
                dim.value for dim in value.shape if isinstance(dim, ir.SymbolicDim) and dim.value in lengths
            }
    if len(held_by[True]) == 1 and len(held_by[False]) <= 1:
        pasts.update((past, next(iter(held_by[False]), None)) for past in held_by[True] if past not in pasts)
    bound: dict[str, int] = {}
    for name in symbolic_dims(model):
        if name in dims:
            bound[name] = dims[name]
        elif name in batches:
            bound[name] = 1
        elif name in pasts and pasts[name] not in dims and pasts[name] in symbolic_dims(model):
            bound[name] = 0  # the new tokens are drawn long: positions 0 to the longest
        else:
            longest = min(max_sequence, tables.get(name, max_sequence))
            if name in pasts:  # the new tokens given or fixed: the past takes the rest of the longest length
                longest = min(longest, tables.get(pasts[name], longest))  # a table their positions index
                longest = max(longest - dims.get(pasts[name], 1), 0)
            bound[name] = longest
    for total, (past, sequence) in cache_length_dims(model).items():
        if total in bound and total not in dims:
            bound[total] = bound.get(past, 0) + bound.get(sequence, 0)
    # Read after the sums: a mask's length drawn at 4096 then summed to the 16 new tokens the user gave was called
    # longer than the sets, and the check said 4096 of a run at 16.
    longer = [
        name
        for name in bound
        if name not in dims and name not in batches and all(bound[name] > sizes.get(name, 0) for sizes in held)
    ]
    return bound, longer

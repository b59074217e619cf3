"""Shapes a fusion needs but the exporter did not record, inferred for the time of one pass and then taken back.

Exporters record ``value_info`` for some intermediate values, for all of them or for
none (the legacy exporter leaves it off; a model saved after an edit often has
none). A fusion that decides from ranks and dims (the attention fusion reads a mask's
rank and the dims a Reshape keeps) would then depend on how the file was written,
not on what it computes. ``inferred_shapes`` fills the missing shapes and element
types from ONNX shape inference (with data propagation, so shape arithmetic on
``Shape`` outputs gives symbolic dims) and removes them again when the block ends, so
a pass that rewrote nothing leaves the model exactly as it found it (an honest
``modified=False``) and one that did leaves only its own rewrite.

Inference runs on a clone that owns its types (weights are shared, not serialized:
onnx-ir's ``ShapeInferencePass`` drops initializers over 1 KB while it calls onnx), and
only values with no shape or no type at all are filled; recorded shapes are never
overwritten. An initializer that is also a graph input is inferred from as an input (its
declared shape, not its value): a caller may override it. If inference fails on the graph (onnx-ir's pass then leaves it
unchanged), nothing is filled.

ONNX shape inference stops at an operator it has no schema for: ONNX Runtime's contrib ops
(``SimplifiedLayerNormalization``, which ORT registers in the ONNX domain, and the
``com.microsoft`` ops) get no output shape, and nor does anything computed from them, so a
fusion after an earlier one (an unscaled RMSNorm after a fused scaled one, an attention after
a fused norm or rotary embedding) would see no shapes at all. In the clone, each output of
a contrib op whose shape is a fixed function of the op's inputs is read from a stand-in
that ONNX knows, of exactly that shape and type (``_STAND_INS``: an ``Identity`` of the
input whose shape and type the output keeps, a ``CastLike`` of it where the output takes
another input's type, EmbedLayerNormalization's table ``Gather``); an op not listed, and
an output with no rule, stays unknown, as do their consumers. No dim is ever guessed, and no
stand-in passes values on (ONNX's data propagation would read a norm of a shape as the shape).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common  # noqa: F401  (ir.passes.common)

from optimizer.domains import MS_DOMAIN, ONNX_DOMAINS


def _values(graph: ir.Graph) -> Iterator[ir.Value]:
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


def _element_type(value: ir.Value) -> ir.DataType | None:
    """``value``'s element type where the graph states it: a recorded type or a constant's."""
    if value.type is not None and value.dtype is not None:
        return value.dtype
    if value.const_value is not None:
        return value.const_value.dtype
    node = value.producer()
    if node is not None and node.op_type == "Constant" and node.domain in ONNX_DOMAINS:
        attribute = node.attributes.get("value")
        if attribute is not None and attribute.type == ir.AttributeType.TENSOR:
            return attribute.value.dtype
    return None


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _like_input(node: ir.Node) -> ir.Node | None:
    """Input 0's shape and type: the rule of every output listed with it below."""
    return ir.node("Identity", [node.inputs[0]])


def _like_input_typed_as_scale(node: ir.Node) -> ir.Node | None:
    """Input 0's shape in input 1's type: SimplifiedLayerNormalization's Y (type V, the scale's; X is T).

    An ``Identity`` where the two types are one, else ``CastLike`` (opset 15 on). Never ``Cast``:
    ONNX's data propagation carries values through it, so a norm of a shape computed in
    float would pass for that shape itself (a review: a Reshape's target read so was wrong).
    """
    scale = _input(node, 1)
    dtype = None if scale is None else _element_type(scale)
    if dtype is None:
        return None
    if _element_type(node.inputs[0]) == dtype:
        return _like_input(node)
    graph = node.graph
    opset = graph.opset_imports.get("", 0) if graph is not None else 0
    return ir.node("CastLike", [node.inputs[0], scale]) if opset >= 15 else None


def _query_with_key(node: ir.Node) -> ir.Node | None:
    """GroupQueryAttention's output with a separate key: the query's [B, S, num_heads * head_size] and type
    (a packed query, without a key, holds the key's and value's heads too)."""
    return _like_input(node) if _input(node, 1) is not None else None


def _embedded(node: ir.Node) -> ir.Node | None:
    """EmbedLayerNormalization's output and embedding_sum: ``input_ids``' [B, S] and the word table's
    hidden size, in its type, which is what gathering the table's rows at the ids gives."""
    table = _input(node, 2)
    return None if table is None else ir.node("Gather", [table, node.inputs[0]], {"axis": 0})


# Contrib ops graphopt fuses into, by (domain, op type): for each output whose shape and type are a fixed
# function of the inputs, ONNX ops computing a value of exactly that shape and type. ONNX Runtime's kernels
# allocate these outputs so (its schemas' inference says the same). The types are the schemas': each output
# listed is of its op's type T, the type of input 0 (of the word table for EmbedLayerNormalization), except
# SimplifiedLayerNormalization's Y, of the scale's type V. Not covered, so they stay unknown (or as
# recorded): the norms' mean and inv_std_var ([.., 1], float), EmbedLayerNormalization's mask_index,
# GroupQueryAttention's caches (their length depends on the buffer), and MultiHeadAttention's outputs (the
# output's hidden size is the value's, read from its dims by its rank, not the query's).
_SKIP_NORM = {0: _like_input, 3: _like_input}  # output and input_skip_bias_sum
_STAND_INS: dict[tuple[str, str], dict[int, Callable[[ir.Node], ir.Node | None]]] = {
    **{(domain, "SimplifiedLayerNormalization"): {0: _like_input_typed_as_scale} for domain in ONNX_DOMAINS},
    (MS_DOMAIN, "SkipSimplifiedLayerNormalization"): _SKIP_NORM,
    (MS_DOMAIN, "SkipLayerNormalization"): _SKIP_NORM,
    (MS_DOMAIN, "Gelu"): {0: _like_input},
    (MS_DOMAIN, "FastGelu"): {0: _like_input},  # its optional bias is a vector over the last axis
    (MS_DOMAIN, "QuickGelu"): {0: _like_input},
    (MS_DOMAIN, "BiasGelu"): {0: _like_input},  # likewise its bias
    (MS_DOMAIN, "RotaryEmbedding"): {0: _like_input},
    (MS_DOMAIN, "EmbedLayerNormalization"): {0: _embedded, 2: _embedded},
    (MS_DOMAIN, "GroupQueryAttention"): {0: _query_with_key},
}


# Casts that keep every size a shape can hold (below 2**31): ONNX's data propagation carries a shape's values
# through any Cast unchanged, which is right only for these.
_EXACT_SIZE_TYPES = frozenset({ir.DataType.INT64, ir.DataType.INT32, ir.DataType.UINT64, ir.DataType.UINT32,
                               ir.DataType.DOUBLE, ir.DataType.STRING})  # fmt: skip


def _hide_lossy_casts(model: ir.Model) -> bool:
    """Keep ONNX's data propagation from reading a shape through a Cast that changes it; whether it may run.

    A shape cast to int8 wraps 257 to 1, to bool makes every size 1, to float loses sizes past 2**24;
    ONNX's propagation reads the same shape after each (a review: an ``Expand`` to such a shape was inferred
    ``[2, 7, 257]`` where ONNX Runtime computes ``[2, 7, 1]``, and a GELU fused on it changed the output's
    shape). In the clone each such Cast, in the main graph, its subgraphs and the model's functions, becomes
    ``CastLike`` to a ``Constant`` of its type (opset 15 on), which ONNX infers the same type and shape of,
    and propagates no values through; below opset 15 there is no such op, and propagation is turned off
    (False). A Cast to a string keeps every size (its text reads back the same).
    """
    roots: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    nodes = [node for root in roots for node in ir.traversal.RecursiveGraphIterator(root)]
    lossy = [
        node
        for node in nodes
        if node.op_type == "Cast" and node.domain in ONNX_DOMAINS
        and ir.DataType(node.attributes.get_int("to", 0)) not in _EXACT_SIZE_TYPES
    ]  # fmt: skip
    if not lossy:
        return True
    if any(root.opset_imports.get("", 0) < 15 for root in roots):
        return False
    taken = {value.name for node in nodes for value in (*node.inputs, *node.outputs) if value is not None}
    for index, node in enumerate(lossy):
        dtype = ir.DataType(node.attributes.get_int("to", 0))
        try:
            zero = ir.tensor(np.zeros((), dtype.numpy()))
        except (TypeError, ValueError):  # no numpy type: no constant to cast like
            return False
        like = ir.node("Constant", [], {"value": zero})
        cast_like = ir.node("CastLike", [node.inputs[0], like.outputs[0]])
        node.graph.insert_before(node, [like, cast_like])
        name = f"_inferred_shapes_like_{index}"
        while name in taken:
            name += "_"
        like.outputs[0].name = name
        _take_over(node.outputs[0], cast_like.outputs[0], taken)
        node.graph.remove(node, safe=True)
    return True


def _stand_in_for_contrib_ops(graph: ir.Graph) -> None:
    """Give each read output of a contrib op of ``_STAND_INS`` a stand-in of its exact shape and type.

    Only the clone is edited. The output's readers read the stand-in's output instead, which
    takes the output's name (so what inference gives it is read back by name); the op keeps
    the output under another name, read by none, and its other outputs as they were. An
    output stays as it is where its op has no input 0, it has no rule, or its stand-in
    cannot be built (a type the rule needs is not stated).
    """
    taken = {value.name for value in _values(graph)}
    for node in list(graph):
        rule = _STAND_INS.get((node.domain, node.op_type))
        if rule is None or not node.inputs or node.inputs[0] is None:
            continue
        for index, out in enumerate(node.outputs):
            if index not in rule or not (out.uses() or out.is_graph_output()):
                continue
            stand_in = rule[index](node)
            if stand_in is None:
                continue
            graph.insert_before(node, stand_in)
            _take_over(out, stand_in.outputs[0], taken)


def _take_over(out: ir.Value, new: ir.Value, taken: set[str]) -> None:
    """``new`` takes ``out``'s type, shape, readers and name (so what inference gives it is read back by
    name); ``out`` keeps a name no other value has."""
    new.type, new.shape = out.type, out.shape
    out.replace_all_uses_with(new, replace_graph_outputs=True)
    name, suffix = out.name, 0
    while f"{name}/stood_in{suffix or ''}" in taken:
        suffix += 1
    out.name = f"{name}/stood_in{suffix or ''}"
    taken.add(out.name)
    new.name = name


def _unknown(dim) -> bool:
    return not isinstance(dim, int) and getattr(dim, "value", None) is None


def _incomplete(value: ir.Value) -> bool:
    return value.shape is None or value.type is None or any(_unknown(dim) for dim in value.shape)


def lacks_shapes(model: ir.Model) -> bool:
    """True if a value of the main graph has no recorded shape or type, or a dim neither sized nor named."""
    return any(_incomplete(value) for value in _values(model.graph))


@contextlib.contextmanager
def inferred_shapes(model: ir.Model) -> Iterator[int]:
    """Fill the main graph's missing shapes and types from ONNX shape inference; take them back on exit.

    A recorded shape keeps its sizes and names; only its unknown dims are filled. Yields
    the number of values whose shape was filled in. Values the block creates keep what it
    gives them; values it removes are restored too (harmlessly). A graph output the block
    replaced is declared as the one it replaced was: a rewrite copies the shape of the
    value it replaces, an inferred one while the block runs.
    """
    outputs = list(model.graph.outputs)
    missing = {value.name: value for value in _values(model.graph) if _incomplete(value)}
    filled: list[tuple[ir.Value, ir.Shape | None, bool]] = []
    if missing:
        copy = model.clone()
        for value in _values(copy.graph):
            # onnx-ir's clone shares type objects; the inference pass may set a dtype on them.
            if value.type is not None:
                value.type = ir.TensorType(value.dtype) if isinstance(value.type, ir.TensorType) else value.type
        # An initializer that is also a graph input is a default a caller may override: inferring from its
        # value (a Reshape's target shape) would bake the default into the fusion.
        for value in copy.graph.inputs:
            if value.name in copy.graph.initializers:
                del copy.graph.initializers[value.name]
                value.const_value = None
        _stand_in_for_contrib_ops(copy.graph)
        propagate = _hide_lossy_casts(copy)
        ir.passes.common.ShapeInferencePass(strict_mode=False, data_prop=propagate)(copy)
        for twin in _values(copy.graph):
            value = missing.get(twin.name)
            if value is None:
                continue
            recorded, shape = value.shape, None
            if twin.shape is not None and (recorded is None or recorded.rank() == twin.shape.rank()):
                dims = list(twin.shape) if recorded is None else list(recorded)
                dims = [theirs if _unknown(mine) else mine for mine, theirs in zip(dims, twin.shape)]
                shape = ir.Shape(dims) if recorded is None or dims != list(recorded) else None
            typed = value.type is None and isinstance(twin.type, ir.TensorType) and twin.dtype is not None
            if shape is not None:
                value.shape = shape
            if typed:
                value.type = ir.TensorType(twin.dtype)
            if shape is not None or typed:
                filled.append((value, recorded if shape is not None else value.shape, typed))
    try:
        yield sum(1 for value, recorded, _ in filled if value.shape is not recorded)
    finally:
        for value, recorded, typed in filled:
            value.shape = recorded
            if typed:
                value.type = None
        if len(model.graph.outputs) == len(outputs):
            for new, old in zip(model.graph.outputs, outputs):
                if new is not old:
                    new.shape, new.type = old.shape, old.type

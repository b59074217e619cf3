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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnx_ir as ir
import onnx_ir.passes.common  # noqa: F401  (ir.passes.common)


def _values(graph: ir.Graph) -> Iterator[ir.Value]:
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


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
        ir.passes.common.ShapeInferencePass(strict_mode=False)(copy)
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

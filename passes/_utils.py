"""Small helpers shared by passes: constant lookup and fresh initializers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's contents if it is an initializer or a Constant node's output, else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    return tensor.numpy()


def add_initializer(graph: ir.Graph, base_name: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a new initializer of ``graph`` under an unused name based on ``base_name``."""
    name, suffix = base_name, 0
    while name in graph.initializers:
        suffix += 1
        name = f"{base_name}_{suffix}"
    value = ir.Value(
        name=name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value


def replace_value(old: ir.Value, new: ir.Value, *, inherit: bool = False) -> None:
    """Point every user of ``old``, graph outputs included, at ``new``.

    A graph output keeps its name (``new`` takes it, ``old`` is renamed). With
    ``inherit``, ``new`` always takes ``old``'s name, shape and type: for rewrites that
    compute the same tensor another way, so anything keyed by the tensor's name
    (calibration ranges, exclusion patterns) still finds it.
    """
    if inherit or old.is_graph_output():
        name, old.name = old.name, f"{old.name}.replaced"
        new.name = name
    if inherit:
        new.shape, new.type = old.shape, old.type
    old.replace_all_uses_with(new, replace_graph_outputs=True)


def remove_dead_nodes(model: ir.Model) -> None:
    """Delete the nodes and initializers a rewrite left without users (onnx-ir's dead code pass).

    Passes call this so their own row in the report shows what they removed.
    """
    common_passes.RemoveUnusedNodesPass()(model)

"""Bind symbolic input dimensions to fixed sizes, so all shape arithmetic becomes foldable.

Opt-in (``--static-shapes``): the result only accepts inputs of the bound shapes.
After it, ``fold-constants`` turns every ``Shape`` of a now-static tensor, and the
arithmetic built on it, into constants.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir

from passes._pass import GraphoptPass


class BindDimsPass(GraphoptPass, ir.passes.InPlacePass):
    """Replace the named symbolic dims of graph inputs and outputs with the given sizes.

    Rewrites ``input_ids: [batch, sequence]`` into ``[1, 128]`` for ``dims =
    {"batch": 1, "sequence": 128}``, and drops the shapes recorded on intermediate
    values that mention a bound dim so shape inference recomputes them. Refuses
    (unchanged) when ``dims`` names no dim the graph's inputs use.
    """

    # It specializes the graph's input and output shapes on purpose.
    keeps_interface = False

    def __init__(self, dims: Mapping[str, int]) -> None:
        super().__init__()
        self.dims = dict(dims)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for value in [*graph.inputs, *graph.outputs]:
            bound = _bind(value.shape, self.dims)
            if bound is not None:
                value.shape = bound
                modified = True
        if not modified:
            self.decline(f"none of {sorted(self.dims)} is a symbolic input dim")
            return self.result(model, modified=False)
        boundary = {*graph.inputs, *graph.outputs}
        for node in ir.traversal.RecursiveGraphIterator(graph):
            for value in node.outputs:
                if value not in boundary and _bind(value.shape, self.dims) is not None:
                    value.shape = None
        return self.result(model, modified=True)


def _bind(shape: ir.Shape | None, dims: Mapping[str, int]) -> ir.Shape | None:
    """``shape`` with bound dims replaced, or None if it has none of them."""
    if shape is None:
        return None
    changed = False
    new_dims: list[int | ir.SymbolicDim] = []
    for dim in shape:
        if isinstance(dim, ir.SymbolicDim) and dim.value in dims:
            new_dims.append(dims[dim.value])
            changed = True
        else:
            new_dims.append(dim)
    return ir.Shape(new_dims) if changed else None

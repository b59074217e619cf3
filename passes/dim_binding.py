"""Bind symbolic input dimensions to fixed sizes, so all shape arithmetic becomes foldable.

Opt-in (``--static-shapes``): the result only accepts inputs of the bound shapes.
After it, ``fold-constants`` turns every ``Shape`` of a now-static tensor, and the
arithmetic built on it, into constants.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir

from optimizer.errors import OptionError
from optimizer.inputs import DECLARED_SHAPE
from optimizer.options import checked_dims
from passes._pass import GraphoptPass
from passes._utils import declared_shapes_inferred


class BindDimsPass(GraphoptPass, ir.passes.InPlacePass):
    """Replace the named symbolic dims of graph inputs and outputs with the given sizes.

    Rewrites ``input_ids: [batch, sequence]`` into ``[1, 128]`` for ``dims =
    {"batch": 1, "sequence": 128}``, and drops the shapes recorded on intermediate
    values that mention a bound dim so shape inference recomputes them. Refuses
    (unchanged) when ``dims`` names no dim the graph's inputs use. A graph output's dim
    named like a bound input dim is bound too, unless ONNX's shape inference, from the
    bound inputs, computes another size there (an output declared ``[batch, seq]`` for a
    stride-2 slice of an input ``[batch, seq]``): that dim stays symbolic, with a note. An
    output other nodes read is bound only where inference computes the bound size: ONNX
    Runtime (``ORT_ENABLE_ALL``) and fold-constants take its declared sizes for its readers,
    and a slice to ``Shape(x)[1] / 2``, which inference does not size, declared ``[1, 8]``,
    gave ``Shape`` of its ``Relu`` 8 where it computes 4 (verification, run unoptimized,
    saw nothing).

    ``optimize`` leaves out of ``dims`` a name the user's inputs hold at several sizes (Paddle's ``x [-1, 3, '?',
    '?']`` fed 48x192 lines), with a note, unless ``--dim`` binds it: bound to one of them, the result refused the
    inputs.
    """

    # It specializes the graph's input and output shapes on purpose.
    keeps_interface = False

    def __init__(self, dims: Mapping[str, int]) -> None:
        super().__init__()
        try:
            # Checked as --dim is: {"batch": -1} wrote a -1 size into the inputs (which ONNX's inference reads as a
            # size), 0 an empty batch, 2.5 a batch of 2, all with modified=True and no word.
            self.dims = checked_dims(dims)
        except OptionError as error:
            raise ValueError(str(error)) from None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        on_inputs = {
            dim.value
            for value in graph.inputs
            if value.shape is not None
            for dim in value.shape
            if isinstance(dim, ir.SymbolicDim) and dim.value in self.dims
        }
        if not on_inputs:
            named = sorted(
                {
                    dim.value
                    for value in graph.inputs
                    if value.shape is not None
                    for dim in value.shape
                    if isinstance(dim, ir.SymbolicDim) and dim.value
                }
            )
            if self.dims:
                self.decline(f"none of {sorted(self.dims)} is a symbolic input dim")
            elif named:
                self.decline(
                    f"no size to bind {', '.join(repr(name) for name in named)} to: none given by --dim, and the "
                    "inputs hold no one size for it"
                )
            else:
                self.decline(
                    "no dims to bind: the graph's inputs have no named symbolic dims (a dim declared -1 or "
                    "without a name has no name to bind)"
                )
            return self.result(model, modified=False)
        dims = {name: self.dims[name] for name in on_inputs}
        for value in graph.inputs:
            bound = _bind(value.shape, dims)
            if bound is not None:
                # Calibration passes read which axis holds the samples on the declared shape.
                value.meta.setdefault(DECLARED_SHAPE, value.shape)
                value.shape = bound
        outputs = [value for value in graph.outputs if value not in graph.inputs]
        with declared_shapes_inferred(model):
            computed = [value.shape for value in outputs]
        for value, inferred in zip(outputs, computed):
            read = any(True for _ in value.uses())
            bound = _bind(value.shape, dims, inferred, confirmed=read)
            if bound is not None:
                # The budget reads an output's sequence dim by name on its declared shape (optimizer.padding).
                value.meta.setdefault(DECLARED_SHAPE, value.shape)
                kept = [
                    dim.value
                    for dim, new in zip(value.shape, bound)
                    if isinstance(dim, ir.SymbolicDim) and dim.value in dims and not isinstance(new, int)
                ]
                if kept:
                    unsized = inferred is None or not all(isinstance(dim, int) for dim in inferred)
                    why = "other nodes read it, and " if read and unsized else ""
                    self.note(
                        f"output '{value.name}' keeps {', '.join(kept)} symbolic: {why}ONNX's shape inference "
                        f"computes {_shown(inferred)} from the bound inputs"
                    )
                value.shape = bound
        boundary = {*graph.inputs, *graph.outputs}
        for node in ir.traversal.RecursiveGraphIterator(graph):
            for value in node.outputs:
                if value not in boundary and _bind(value.shape, self.dims) is not None:
                    value.shape = None
        return self.result(model, modified=True)


def _bind(
    shape: ir.Shape | None, dims: Mapping[str, int], inferred: ir.Shape | None = None, *, confirmed: bool = False
) -> ir.Shape | None:
    """``shape`` with bound dims replaced, or None if it has none of them (or none that ``inferred``, a shape
    ONNX's inference computed for the same value, leaves bindable: it keeps a dim where it has another size, and
    with ``confirmed`` every dim where it has not the bound size)."""
    if shape is None:
        return None
    if inferred is not None and len(inferred) != len(shape):
        inferred = None
    changed = False
    new_dims: list[int | ir.SymbolicDim] = []
    for axis, dim in enumerate(shape):
        computed = inferred[axis] if inferred is not None else None
        if isinstance(dim, ir.SymbolicDim) and dim.value in dims:
            if computed != dims[dim.value] and (confirmed or isinstance(computed, int)):
                new_dims.append(dim)
            else:
                new_dims.append(dims[dim.value])
            changed = True
        else:
            new_dims.append(dim)
    return ir.Shape(new_dims) if changed else None


def _shown(shape: ir.Shape | None) -> str:
    if shape is None:
        return "no shape"
    return "[" + ", ".join(str(dim if isinstance(dim, int) else dim.value) for dim in shape) + "]"

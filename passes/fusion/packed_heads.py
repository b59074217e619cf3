"""split-packed-heads: query, key and value heads taken from one packed projection, split from one slice each.

timm's vision transformers, SVTR (PP-OCRv4's recognizer) and many ports compute the three projections as one
``x = Linear(h)`` of width ``3*H*d`` and take them apart as

    qkv = Transpose(Reshape(x, [B, S, 3, H, d]), perm=[2, 0, 3, 1, 4])     # [3, B, H, S, d]
    q, k, v = qkv[0], qkv[1], qkv[2]

where the parts are ``Gather(qkv, i, axis=0)`` (torch's ``qkv[0]``), ``Squeeze(Split(qkv, axis=0)[i], [0])``
(``qkv.unbind(0)``) or ``Squeeze(Slice(qkv, [i], [i + 1], [0]), [0])`` (Paddle). Part ``i`` is the heads split
from columns ``[i*H*d, (i+1)*H*d)`` of ``x``:

    q = Transpose(Reshape(Slice(x, [0], [H*d], [-1]), [0, 0, H, d]), perm=[0, 2, 1, 3])

which is the spelling ``fuse-attention`` (and ``fuse-rotary-embedding``) match: one head split per operand. The
rewrite moves the same values (exact). Any permutation that puts
the ``3`` axis first is read (the part's axes keep their order), any leading rank, any part count.

Refuses, with a reason in the report, a packed tensor whose reshape does not end in static ``[n, H, d]`` with
``n*H*d`` the projection's width, whose leading dims are not known to copy the projection's (all but one must be
``0`` or the same shape arithmetic; the element count fixes the last), or whose projection's rank or width is
unknown; a part taken otherwise (a negative or clamped ``Slice``, a ``Gather`` of a non-constant or non-scalar
index) or inside a subgraph (an ``If`` branch reading the packed tensor) is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_op, onnx_opset
from passes._canonical_forms import split_in_ones, squeezed_axes
from passes._utils import add_initializer, constant_array, unique_name
from passes.fusion._base import FusionPass
from passes.fusion._inferred_shapes import inferred_shapes, lacks_shapes
from passes.fusion._layout import symbolic_dim, symbolic_shape

_KIND = "packed Q/K/V"


class PackedHeadsSplit(FusionPass):
    """Rewrite each part of ``Transpose(Reshape(x, [..., n, H, d]))`` taken along its first axis (the ``n`` axis)
    into the heads split from a ``Slice`` of ``x``. See the module docstring for the forms and refusals."""

    def fuse(self, model: ir.Model) -> int:
        if onnx_opset(model.opset_imports, 0) < 10:
            return 0  # Slice takes its bounds as inputs from opset 10
        packed = [node for node in model.graph if _packed_transpose(node)]
        if not packed:
            return 0
        if lacks_shapes(model):
            with inferred_shapes(model):
                return self._split(model, packed)
        return self._split(model, packed)

    def _split(self, model: ir.Model, transposes: list[ir.Node]) -> int:
        count = 0
        taken = {node.name for node in model.graph if node.name} | {
            value.name for node in model.graph for value in (*node.inputs, *node.outputs) if value is not None
        }
        for transpose in transposes:
            layout = _layout(transpose)
            if isinstance(layout, str):
                self.refuse(_KIND, layout)
                continue
            found = [taken for reader in transpose.outputs[0].uses() for taken in _parts(reader.node, layout[1])]
            # A part taken inside a subgraph (an If branch reading the packed tensor from the outer scope) is left
            # as it is: the head split would have to go into that subgraph.
            parts = [
                (node, k) for node, k in found if node.graph is model.graph and not node.outputs[0].is_graph_output()
            ]
            if not parts:
                why = "no part is taken along its first axis by Gather, Split or a one-wide Slice"
                self.refuse(_KIND, "each part is a graph output or taken inside a subgraph" if found else why)
                continue
            for node, k in parts:
                _rewrite(model.graph, node, k, layout, taken)
                count += 1
            self.done(_KIND)
        return count


def _packed_transpose(node: ir.Node) -> bool:
    """A Transpose of a Reshape's output that moves the third-last axis first (the ``n`` of ``[..., n, H, d]``)."""
    if not is_onnx_op(node, "Transpose") or node.inputs[0] is None:
        return False
    order = node.attributes.get_ints("perm", None)
    source = node.inputs[0].producer()
    return (
        order is not None
        and len(order) >= 4
        and list(order)[0] == len(order) - 3
        and source is not None
        and is_onnx_op(source, "Reshape")
    )


_Layout = tuple[ir.Value, int, int, int, int, tuple[int, ...]]


def _layout(transpose: ir.Node) -> _Layout | str:
    """``(x, n, H, d, leading, perm)`` of a packed Transpose (``_packed_transpose``), or why it is refused:
    ``leading`` dims copied from ``x``, ``perm`` a part's order of ``[..., H, d]``'s axes."""
    reshape = transpose.inputs[0].producer()
    x, order = reshape.inputs[0], list(transpose.attributes.get_ints("perm"))
    count = len(order)
    entries = symbolic_shape(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    if entries is None or len(entries) != count or any(e is None or e[1] or e[0] <= 0 for e in entries[-3:]):
        return "its reshape target does not end in static [n, H, d]"
    n, heads, size = (e[0] for e in entries[-3:])
    width = symbolic_dim(x, -1)
    if x is None or x.shape is None or x.shape.rank() != count - 2 or width is None or width[1]:
        return "the projection's rank or width is not known"
    if width[0] != n * heads * size:
        return f"the projection's width {width[0]} is not {n}×{heads}×{size}"
    copies = not reshape.attributes.get_int("allowzero", 0)
    memo: dict = {}
    unproven = 0
    for axis, entry in enumerate(entries[:-3]):
        if entry == (0, ()) and copies:
            continue
        if entry is None or entry[0] < 0 or entry != symbolic_dim(x, axis, memo):
            unproven += 1
    if unproven > 1:  # one such dim is fixed by the element count, two are not
        return "its reshape's leading dims are not known to copy the projection's"
    rest = tuple(axis - (axis > count - 3) for axis in order[1:])
    return x, n, heads, size, count - 3, rest


def _parts(node: ir.Node, n: int) -> list[tuple[ir.Node, int]]:
    """``(node giving part k, k)`` for what ``node`` takes along the first axis of the packed tensor it reads."""
    if node.domain not in ("", "ai.onnx"):
        return []
    if node.op_type == "Gather":
        index = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if node.attributes.get_int("axis", 0) != 0 or index is None or index.ndim != 0 or index.dtype.kind not in "iu":
            return []
        k = int(index)
        return [(node, k % n)] if -n <= k < n else []
    if node.op_type == "Split":
        if node.attributes.get_int("axis", 0) != 0 or len(node.outputs) != n or not split_in_ones(node, n):
            return []
        return [(use.node, k) for k, out in enumerate(node.outputs) for use in out.uses() if _squeezes_first(use.node)]
    if node.op_type == "Slice" and len(node.inputs) >= 3:
        bounds = [constant_array(v) if v is not None else None for v in node.inputs[1:5]]
        bounds += [None] * (4 - len(bounds))
        starts, ends = bounds[0], bounds[1]
        axes = bounds[2] if len(node.inputs) > 3 and node.inputs[3] is not None else np.zeros(1, np.int64)
        steps = bounds[3] if len(node.inputs) > 4 and node.inputs[4] is not None else np.ones(1, np.int64)
        if any(b is None or b.size != 1 for b in (starts, ends, axes, steps)):
            return []
        start, end = int(starts.ravel()[0]), int(ends.ravel()[0])
        if int(axes.ravel()[0]) != 0 or int(steps.ravel()[0]) != 1 or not 0 <= start < n or end != start + 1:
            return []  # negative or clamped bounds are read against the axis's size: left as they are
        return [(use.node, start) for use in node.outputs[0].uses() if _squeezes_first(use.node)]
    return []


def _squeezes_first(node: ir.Node) -> bool:
    """Whether ``node`` is a Squeeze of axis 0 alone."""
    return is_onnx_op(node, "Squeeze") and squeezed_axes(node) == [0]


def _rewrite(graph: ir.Graph, node: ir.Node, k: int, layout: _Layout, taken: set[str]) -> None:
    """Replace ``node``'s output (part ``k``) by the heads split from the matching slice of the projection;
    ``taken`` holds the graph's node and value names, which the new ones avoid."""
    x, _, heads, size, leading, order = layout
    part = node.outputs[0]
    name = part.name or f"{x.name}_part{k}"

    def ints(label: str, *values: int) -> ir.Value:
        value = add_initializer(graph, unique_name(f"{name}_{label}", taken), np.array(values, np.int64))
        taken.add(value.name)
        return value

    def output(label: str) -> ir.Value:
        return ir.Value(name=unique_name(f"{name}_{label}", taken))

    width = heads * size
    bounds = [ints("start", k * width), ints("end", (k + 1) * width), ints("axis", -1)]
    sliced = ir.Node("", "Slice", [x, *bounds], name=unique_name(f"{name}_slice", taken), outputs=[output("cols")])
    target = ints("shape", *([0] * leading), heads, size)
    split = ir.Node("", "Reshape", [sliced.outputs[0], target], name=unique_name(f"{name}_split", taken))
    split.outputs[0].name = unique_name(f"{name}_split", taken)
    moved = ir.Node(
        "",
        "Transpose",
        split.outputs,
        attributes=[ir.AttrInt64s("perm", list(order))],
        name=unique_name(f"{name}_order", taken),
        outputs=[output("heads")],
    )
    moved.outputs[0].type, moved.outputs[0].shape = part.type, part.shape
    # The fusions read the heads' ranks (a head split is of a 3-D tensor): recorded with the dims known for sure.
    lead = [_known(dim) for dim in x.shape.dims[:leading]]
    sliced.outputs[0].type, sliced.outputs[0].shape = x.type, ir.Shape([*lead, width])
    split.outputs[0].type, split.outputs[0].shape = x.type, ir.Shape([*lead, heads, size])
    graph.insert_after(node, [sliced, split, moved])
    ir.convenience.replace_all_uses_with(part, moved.outputs[0])


def _known(dim: int | ir.SymbolicDim) -> int | str | None:
    """``dim`` where it is a size or a named dim, None where shape inference named an unknown one (``unk__N``)."""
    if isinstance(dim, int):
        return dim
    name = getattr(dim, "value", None)
    return name if isinstance(name, str) and not name.startswith("unk__") else None

"""ONNX's own ``RotaryEmbedding`` (opset 23) written out as the rotate_half form that ``fuse-rotary-embedding`` reads.

torch's dynamo exporter at ``optimize=True`` and opset 23 (onnxscript's ``RotaryEmbedding23`` rule) writes
Hugging Face's ``q * cos + rotate_half(q) * sin`` as one ONNX ``RotaryEmbedding`` node on the per-head
``[B, N, S, d]`` query and key, its cos/sin the ``[B, S, d/2]`` tables of the positions. ONNX Runtime runs the
op, but the model then keeps a Transpose and a Reshape around every rotation and computes cos/sin at every step:
a 12-layer Llama's decode step ran 2–9 % slower than the same model exported at opset 20 (docs/benchmarks.md).
Written out and fused, the model has the ops of that export's result (0.99–1.18× the speed of the op left as
written: a small gain, not at every point). ``spell_out`` writes the node as what it computes::

    c, s  = cos, sin                                  # or Gather(cos_cache, position_ids), Gather(sin_cache, ...)
    C, S  = Unsqueeze(Concat(c, c, -1), 1), ...       # [B, 1, S, r]: each frequency twice, as transformers' tables
    y     = x[..., :r] * C + Concat(-x[..., r/2:r], x[..., :r/2], -1) * S
    y     = Concat(y, x[..., r:], -1)                 # when rotary_embedding_dim r < d

so ``fuse-rotary-embedding`` matches it with every check it makes of a spelled-out rotation (cos/sin evaluated
into caches and proved to be the rows of the positions at every probed length) and rewrites it into
``com.microsoft.RotaryEmbedding`` on the head split's 3-D projection. A written-out node the match refuses is
put back exactly as it was (``take_back``): the pass never leaves the spelled-out form in a model.

Refused, with the reason (the node is left as it is): a 3-D input (heads in ``num_heads``), ``interleaved=1``,
an input other than float32 (what fuse-rotary-embedding fuses), and a head size or ``rotary_embedding_dim`` that is
not known or not even. An output that is a graph output (a prefill exported with its cache: the rotated key is
``present.{i}.key``) is written out under its name, as the rotate_half form's is fused, and given it back if
taken back (it was refused until a review: such an export kept its keys' rotations where its opset-20 export's
result fused them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from optimizer.domains import is_onnx_op
from passes.fusion._builder import remove_added


@dataclass
class SpelledRotary:
    """An ONNX ``RotaryEmbedding`` written out (``spell_out``): ``output`` stands for the node's output now,
    ``nodes`` and ``initializers`` are what was added (``take_back`` removes them)."""

    node: ir.Node
    output: ir.Value
    nodes: list[ir.Node]
    initializers: list[ir.Value]
    # The graph output's name the written-out output took over (the node's output renamed meanwhile), or None.
    output_name: str | None = None

    def matched(self) -> bool:
        """Whether a fusion replaced the written-out rotation (nothing reads its output any longer)."""
        return not self.output.uses() and not self.output.is_graph_output()


def onnx_rotary_nodes(graph: ir.Graph) -> list[ir.Node]:
    """The ONNX ``RotaryEmbedding`` nodes of ``graph`` (its main graph only)."""
    return [node for node in graph if is_onnx_op(node, "RotaryEmbedding")]


@dataclass
class RotaryTables:
    """The ``[B, 1, S, r]`` tables written for the nodes' cos/sin, one per table however many nodes read it (the
    query's and the key's rotation share theirs: fuse-rotary-embedding then builds and checks their caches once),
    and the nodes and initializers that build them (``remove_unused``)."""

    tables: dict[tuple[int, int], ir.Value] = field(default_factory=dict)
    nodes: list[ir.Node] = field(default_factory=list)
    initializers: list[ir.Value] = field(default_factory=list)

    def of(
        self, builder: Callable[[str], Any], values: ir.Value, positions: ir.Value | None, x: ir.Value, width: int
    ) -> ir.Value:
        """``Unsqueeze(Concat(t, t, -1), 1)`` of ``t = values`` (or ``Gather(values, positions)``), built before the
        first node that asks (``builder``), typed and shaped as ``x``'s ``[B, 1, S, width]`` tables."""
        key = (id(values), id(positions))
        if key not in self.tables:
            build = builder(f"OnnxRotaryEmbedding_table_{len(self.tables)}")
            if positions is not None:
                values = build.node("Gather", [values, positions], axis=0)
            doubled = build.node("Concat", [values, values], axis=-1)
            table = build.node("Unsqueeze", [doubled, build.ints("heads_axis", [1])])
            self.tables[key] = table
            self.nodes += build.nodes
            self.initializers += build.initializers
        table = self.tables[key]
        if table.shape is None:
            table.type = x.type
            table.shape = ir.Shape([x.shape[0], 1, x.shape[2], width])
        return table

    def remove_unused(self, graph: ir.Graph) -> None:
        """Remove the tables no written-out rotation reads any longer (all of theirs taken back or fused)."""
        for node in reversed(self.nodes):  # a table's Unsqueeze before the Concat (and Gather) it reads
            if node.graph is graph and not any(output.uses() for output in node.outputs):
                graph.remove(node, safe=True)
        remove_added(graph, [], self.initializers)


def spell_out(builder: Callable[[str], Any], node: ir.Node, index: int, tables: RotaryTables) -> SpelledRotary | str:
    """Write the ONNX ``RotaryEmbedding`` ``node`` out before it (``builder(name)``: a ``_builder.NodeBuilder``
    anchored at it) and point its readers at the written-out result; the reason, changing nothing, where it is
    not written out. Its cos/sin tables are ``tables``' (one per table)."""
    reason = _refusal(node)
    if reason is not None:
        return reason
    build = builder(f"OnnxRotaryEmbedding_{index}")
    x, cos, sin = node.inputs[:3]
    positions = node.inputs[3] if len(node.inputs) > 3 else None
    d = x.shape[3]
    r = node.attributes.get_int("rotary_embedding_dim", 0) or d
    half = r // 2
    axis = build.ints("last_axis", [3])

    def channels(value: ir.Value, start: int, end: int) -> ir.Value:
        return build.node("Slice", [value, build.ints(f"from_{start}", [start]), build.ints(f"to_{end}", [end]), axis])

    rotated_part = x if r == d else channels(x, 0, r)
    negated = build.node("Neg", [channels(rotated_part, half, r)])
    rotated_half = build.node("Concat", [negated, channels(rotated_part, 0, half)], axis=-1)
    cos_table, sin_table = (tables.of(builder, values, positions, x, r) for values in (cos, sin))
    output = build.node(
        "Add", [build.node("Mul", [rotated_part, cos_table]), build.node("Mul", [rotated_half, sin_table])]
    )
    if r < d:
        output = build.node("Concat", [output, channels(x, r, d)], axis=-1)
    original = node.outputs[0]
    output.type, output.shape = original.type, original.shape
    output_name = original.name if original.is_graph_output() else None
    if output_name is not None:  # the graph output keeps its name: the written-out value takes it over
        original.name = f"{output.name}_written_out"
    original.replace_all_uses_with(output, replace_graph_outputs=True)
    if output_name is not None:
        output.name = output_name
    return SpelledRotary(node, output, list(build.nodes), list(build.initializers), output_name)


def take_back(graph: ir.Graph, spelled: SpelledRotary) -> None:
    """Point the readers of the written-out rotation at the ``RotaryEmbedding`` node again and remove what
    ``spell_out`` added (its tables stay for ``RotaryTables.remove_unused``)."""
    original = spelled.node.outputs[0]
    if spelled.output_name is not None:
        spelled.output.name = f"{original.name}_taken_back"
    spelled.output.replace_all_uses_with(original, replace_graph_outputs=True)
    if spelled.output_name is not None:
        original.name = spelled.output_name
    remove_added(graph, spelled.nodes, spelled.initializers)


def _refusal(node: ir.Node) -> str | None:
    """Why ``node`` is not written out, or None."""
    x = node.inputs[0] if node.inputs else None
    if len(node.inputs) < 3 or any(value is None for value in node.inputs[:3]):
        return "an input is missing"
    if x.dtype is None:
        return "its input's type is not known"
    if x.dtype != ir.DataType.FLOAT:
        return "its input is not float32"
    if node.attributes.get_int("interleaved", 0):
        return "interleaved=1 (only the rotation of each head's two halves is written out)"
    if x.shape is None or x.shape.rank() != 4:
        return "its input is not known to be 4-D (a 3-D input carries its heads in num_heads)"
    d = x.shape[3]
    if not isinstance(d, int) or d % 2:
        return "its head size is not known, or odd"
    r = node.attributes.get_int("rotary_embedding_dim", 0) or d
    if r % 2 or r > d:
        return f"rotary_embedding_dim {r} is odd or wider than the head ({d})"
    return None

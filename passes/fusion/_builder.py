"""``NodeBuilder``: nodes added before an anchor node, named after the rewrite that adds them, and remembered.

The fusions that build a fused node and its adapters (``fuse-attention``), or write an op out as what it
computes so a fusion can match it (ONNX's own ``Attention`` and ``RotaryEmbedding``), add their nodes through
one; what it added is listed, so a rewrite the match then refuses is taken back exactly.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes._utils import add_initializer
from passes.fusion._layout import IDENTITY


class NodeBuilder:
    """Adds nodes (named ``name/op_N``) and initializers (``name/...``) to ``graph``, each node just before ``anchor``;
    ``nodes`` and ``initializers`` list what it added, for a rewrite that is taken back."""

    def __init__(self, graph: ir.Graph, anchor: ir.Node, name: str, opset: int) -> None:
        self.graph, self.anchor, self.name, self.opset, self.count = graph, anchor, name, opset, 0
        self.nodes: list[ir.Node] = []
        self.initializers: list[ir.Value] = []

    def node(self, op_type: str, inputs, domain: str = "", **attributes) -> ir.Value:
        self.count += 1
        node = ir.node(op_type, inputs, attributes, domain=domain)
        node.name = f"{self.name}/{op_type}_{self.count}"
        node.outputs[0].name = f"{node.name}_output_0"
        self.graph.insert_before(self.anchor, node)
        self.nodes.append(node)
        return node.outputs[0]

    def constant(self, name: str, array: np.ndarray) -> ir.Value:
        value = add_initializer(self.graph, f"{self.name}/{name}", array)
        self.initializers.append(value)
        return value

    def ints(self, name: str, values: list[int]) -> ir.Value:
        return self.constant(name, np.array(values, dtype=np.int64))

    def transpose(self, value: ir.Value, order: tuple[int, ...]) -> ir.Value:
        return value if order == IDENTITY else self.node("Transpose", [value], perm=list(order))

    def unsqueeze(self, value: ir.Value, axes: list[int]) -> ir.Value:
        if self.opset >= 13:
            return self.node("Unsqueeze", [value, self.ints("unsqueeze_axes", axes)])
        return self.node("Unsqueeze", [value], axes=axes)

    def dim(self, value: ir.Value, axis: int) -> ir.Value:
        """``[value.shape[axis]]`` as a 1-D tensor."""
        if self.opset >= 15:
            return self.node("Shape", [value], start=axis, end=axis + 1)
        return self.node("Gather", [self.node("Shape", [value]), self.ints("axis", [axis])], axis=0)


def remove_added(graph: ir.Graph, nodes: list[ir.Node], initializers: list[ir.Value]) -> None:
    """Remove from ``graph`` the ``nodes`` a builder added (last first) and those of its ``initializers`` nothing
    reads any longer: a written-out op taken back."""
    for added in reversed(nodes):
        if added.graph is graph:
            graph.remove(added, safe=True)
    for value in initializers:
        if not value.uses() and graph.initializers.get(value.name) is value:
            del graph.initializers[value.name]

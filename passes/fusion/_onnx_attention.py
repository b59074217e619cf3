"""ONNX's own ``Attention`` (opset 23) written out as the MatMul/Softmax/MatMul that ``fuse-attention`` reads.

torch's dynamo exporter writes ``scaled_dot_product_attention`` as one ONNX ``Attention``
node from opset 23 on. ONNX Runtime runs that op itself, but its CPU kernel is slower than
``GroupQueryAttention`` on a decoder's cache from a few hundred cached tokens on (a 12-layer
Llama, batch 1, a decode step after 511 cached tokens: 1.14× faster with GroupQueryAttention
at one thread, 1.30× at two; after 127 at one thread 0.95×: ``docs/benchmarks.md``), and
the op hides the attention from the fusions. ``spell_out`` writes the node as what it
computes, in the form torch's exporter writes sdpa below opset 23::

    logits = (Q @ Transpose(K, [0, 1, 3, 2])) * scale (+ mask as a bias)
    probs  = Where(IsNaN(Softmax(logits)), 0, Softmax(logits))
    Y      = probs @ V

so ``fuse-attention`` matches it with every check it makes of spelled-out attention
(masks, scales, layouts) and ``fuse-group-query-attention`` can read the cache around it.
A written-out node that ``fuse-attention`` then refuses is put back (``take_back``): the
pass never leaves the slower spelled-out form in a model. A boolean mask is the bias
``Where(mask, 0, -inf)``, one for every node that reads that mask (``MaskBiases``), a float
mask is added as it is (ONNX's definition). The guard
gives a row whose keys are all masked zeros, as torch's sdpa does; only such rows (padded
query positions, which verification does not compare) can differ from the op's own kernel.

Refused, with the reason (the node is left as it is): 3-D inputs (heads in attributes),
a key/value head count other than the query's (the op's own grouping), a past key/value
input or a present, ``qk_matmul_output`` read, ``is_causal``, a soft cap, types other than
float32 and float16, and Q, K or V whose rank or head size is not known.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_op
from passes.fusion._builder import remove_added


@dataclass
class SpelledAttention:
    """An ONNX ``Attention`` written out (``spell_out``): ``softmax`` is its Softmax, ``output`` what now stands
    for the node's ``Y``, ``nodes`` and ``initializers`` what was added (``take_back`` removes them)."""

    node: ir.Node
    softmax: ir.Node
    output: ir.Value
    nodes: list[ir.Node]
    initializers: list[ir.Value]


@dataclass
class MaskBiases:
    """The biases written for boolean masks, one per mask however many nodes read it (as torch writes one mask for
    every layer below opset 23: fuse-attention then builds one bias term for all, and its GroupQueryAttention one
    set of lengths), and the nodes and initializers that build them (``remove_unused``)."""

    biases: dict[int, ir.Value] = field(default_factory=dict)
    nodes: list[ir.Node] = field(default_factory=list)
    initializers: list[ir.Value] = field(default_factory=list)

    def of(self, builder: Callable[[str], Any], mask: ir.Value, dtype: np.dtype) -> ir.Value:
        """The bias ``Where(mask, 0, -inf)`` of ``mask``, built before the first node that asks (``builder``)."""
        if id(mask) not in self.biases:
            build = builder(f"OnnxAttention_mask_{len(self.biases)}")
            zero = build.constant("zero", np.array(0.0, dtype=dtype))
            fill = build.constant("fill", np.array(-np.inf, dtype=dtype))
            self.biases[id(mask)] = build.node("Where", [mask, zero, fill])
            self.nodes += build.nodes
            self.initializers += build.initializers
        return self.biases[id(mask)]

    def remove_unused(self, graph: ir.Graph) -> None:
        """Remove the biases no written-out node reads any longer (all of theirs taken back)."""
        unread = [node for node in self.nodes if not any(output.uses() for output in node.outputs)]
        remove_added(graph, unread, self.initializers)


def spell_out(builder: Callable[[str], Any], node: ir.Node, index: int, masks: MaskBiases) -> SpelledAttention | str:
    """Write the ONNX ``Attention`` ``node`` out before it (``builder(name)``: ``_builder.NodeBuilder`` anchored
    at it) and point its readers at the written-out ``Y``; the reason, changing nothing, where it is not written out.
    A boolean mask's bias is ``masks``' (one per mask)."""
    reason = _refusal(node)
    if reason is not None:
        return reason
    build = builder(f"OnnxAttention_{index}")
    query, key, value = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    dtype = query.dtype.numpy()
    scale = node.attributes.get_float("scale", 0.0) or 1.0 / np.sqrt(float(query.shape[3]))
    scores = build.node("MatMul", [query, build.node("Transpose", [key], perm=[0, 1, 3, 2])])
    logits = build.node("Mul", [scores, build.constant("scale", np.array(scale, dtype=dtype))])
    if mask is not None:
        if mask.dtype == ir.DataType.BOOL:
            mask = masks.of(builder, mask, dtype)
        logits = build.node("Add", [logits, mask])
    probs = build.node("Softmax", [logits], axis=-1)
    guarded = build.node("Where", [build.node("IsNaN", [probs]), build.constant("zero", np.array(0.0, dtype)), probs])
    output = build.node("MatMul", [guarded, value])
    output.type, output.shape = node.outputs[0].type, node.outputs[0].shape
    node.outputs[0].replace_all_uses_with(output)
    return SpelledAttention(node, probs.producer(), output, list(build.nodes), list(build.initializers))


def take_back(graph: ir.Graph, spelled: SpelledAttention) -> None:
    """Point the readers of the written-out ``Y`` at the ``Attention`` node again and remove what ``spell_out``
    added."""
    spelled.output.replace_all_uses_with(spelled.node.outputs[0])
    remove_added(graph, spelled.nodes, spelled.initializers)


def _refusal(node: ir.Node) -> str | None:
    """Why ``node`` is not written out, or None."""
    attributes = node.attributes
    inputs = list(node.inputs) + [None] * (7 - len(node.inputs))
    query, key, value = inputs[:3]
    if any(v is not None for v in inputs[4:]):
        return "it reads a past key/value (or non-pad lengths): the cache is inside the op"
    if any(output.uses() or output.is_graph_output() for output in node.outputs[1:]):
        return "its present key/value or qk_matmul_output is read"
    if node.outputs[0].is_graph_output():
        return "its output is a graph output"
    if attributes.get_int("is_causal", 0):
        return "is_causal=1 (its causal alignment is not written out here)"
    if attributes.get_float("softcap", 0.0):
        return "it caps the scores (softcap)"
    if query is None or key is None or value is None:
        return "an input is missing"
    if any(v.dtype is None for v in (query, key, value)):
        return "the types of Q, K and V are not known"
    if any(v.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16) for v in (query, key, value)):
        return "it is not float32 or float16"
    if any(v.shape is None or v.shape.rank() != 4 for v in (query, key, value)):
        return "Q, K and V are not known to be 4-D (3-D inputs carry their heads in attributes)"
    heads = [v.shape[1] for v in (query, key, value)]
    if not all(isinstance(h, int) for h in heads) or len(set(heads)) != 1:
        return f"its key/value heads {heads[1:]} are not known to equal the query's {heads[0]} (the op's own grouping)"
    if not attributes.get_float("scale", 0.0) and not isinstance(query.shape[3], int):
        return "its head size is not known (the default scale)"
    return None


def onnx_attention_nodes(graph: ir.Graph) -> list[ir.Node]:
    """The ONNX ``Attention`` nodes of ``graph`` (its main graph only)."""
    return [node for node in graph if is_onnx_op(node, "Attention")]

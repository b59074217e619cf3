"""Cleanup passes: dead code, Identity nodes, common subexpressions.

These wrap onnx-ir's common passes, which do the job on our models (tested in
``tests/passes/test_cleanup.py`` on hand-built graphs and exported transformers);
graphopt adds the bundling, the registry names, and the fixes each class's docstring
names (unused initializers of bodies, Identity guards).
"""

from __future__ import annotations

import math
from collections import Counter

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from optimizer.domains import is_onnx_domain
from optimizer.runtime import graphs_within, model_graphs
from passes._pass import GraphoptPass
from passes._utils import declaration_holds, draws_random, names_defined_twice, remove_dead_nodes
from passes.initializer_deduplication import deduplicate_initializers


class RemoveUnusedPass(GraphoptPass, ir.passes.InPlacePass):
    """Remove nodes and initializers no output depends on, then unused functions and opsets.

    Rewrites: a node whose outputs are neither used nor graph outputs is deleted
    (repeatedly, in subgraphs too); initializers that are not used, not graph inputs
    and not graph outputs are deleted, in the main graph and in every ``Loop``/``If``/
    ``Scan`` body (a body's initializer read only by a graph nested in that body is
    used; one read only inside the body of a deleted node is not); model-local functions
    never called and opset imports no node uses are dropped. Never changes the inputs or
    outputs of the graph or of any body.

    onnx-ir 1.1's ``RemoveUnusedNodesPass`` (which onnxscript's ``remove_unused_nodes``
    calls) deletes unused initializers of the main graph only, and keeps one read only
    inside a deleted node's body; ONNX Runtime warns at load about each one left in a
    body, so those are removed here, by ``passes._utils.remove_dead_nodes`` (which the
    passes call after their rewrites too).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = remove_dead_nodes(model)
        for inner in (common_passes.RemoveUnusedFunctionsPass(), common_passes.RemoveUnusedOpsetsPass()):
            modified = inner(model).modified or modified
        return ir.passes.PassResult(model, modified=modified)


class LiftConstantsPass(GraphoptPass, common_passes.LiftConstantsToInitializersPass):
    """Turn every ``Constant`` node into an initializer (onnx-ir's lifting pass, no size limit).

    ONNX Runtime treats both the same at load time; as initializers they can be
    deduplicated, and the graph holds only computation.
    """

    def __init__(self) -> None:
        super().__init__(lift_all_constants=True, size_limit=0)


class RemoveIdentityPass(GraphoptPass, common_passes.IdentityEliminationPass):
    """Remove ``y = Identity(x)`` by using ``x`` wherever ``y`` was used.

    When ``y`` is a graph output, ``x`` is renamed to ``y``. Refuses (keeps the node)
    when ``y`` is a graph output and ``x`` is a graph input, since both names are
    part of the signature; when both ``x`` and ``y`` are outputs of the same
    (sub)graph; and when ``y`` is a subgraph output and ``x`` comes from the outer
    scope. This is onnx-ir's ``IdentityEliminationPass`` plus those last two guards:
    onnx-ir 1.1 merges the two outputs, which changes the results of ``Scan`` bodies
    that output a state and its copy (ONNX backend tests ``test_scan*_sum``), and
    makes ``If`` branches return an outer value directly, which ONNX Runtime rejects
    (``test_affine_grid_*_expanded``). Our verification caught both.

    Also keeps the node when ``y``'s declared shape does not hold of ``x`` as far as
    ``x``'s shape says: of another rank (onnx-ir raised ``ValueError``, the pass failed),
    or a static size where ``x``'s is symbolic, unknown or another, while ``x`` has other
    readers. Renamed, ``x`` would carry that declaration, and ONNX Runtime, as deployed
    (``ORT_ENABLE_ALL``), folds ``Shape(x)`` to it: an output declared ``float[3]`` over an
    input made dynamic gave ``Shape`` 3 at every length. Verification, which runs with
    ONNX Runtime's optimizations off, saw nothing. And keeps it when ``x`` or ``y`` has a
    name a subgraph defines too (``passes._utils.names_defined_twice``).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._shadowed = names_defined_twice(model)
        return super().call(model)

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type == "Identity" and is_onnx_domain(node) and len(node.inputs) == 1:
            source, graph = node.inputs[0], node.graph
            shadowed = getattr(self, "_shadowed", ())
            if source is not None and (source.name in shadowed or node.outputs[0].name in shadowed):
                return False
            if source is not None and graph is not None and node.outputs[0] in graph.outputs:
                if source in graph.outputs or _from_outer_scope(source, graph):
                    return False
                if not declaration_holds(node):
                    return False
        return super()._try_eliminate_identity_node(node)


class EliminateCommonSubexpressionsPass(GraphoptPass, common_passes.CommonSubexpressionEliminationPass):
    """Merge nodes with the same op, attributes and inputs into one (onnx-ir's CSE).

    Exporters recompute the same ``Shape``/``Gather`` chain for every layer; after
    this pass each distinct computation exists once. Refuses non-deterministic ops
    (random generators), nodes with subgraphs, nodes with a ``-0.0`` float attribute
    (onnx-ir compares attributes with Python's ``==``, where ``-0.0 == 0.0``: it merged
    ``Constant<value_float = -0.0>`` into ``Constant<value_float = 0.0>``, so ``x / c``
    gave +inf for -inf), nodes with an output listed twice among the graph outputs
    (onnx-ir then defined that name twice, a file ONNX Runtime refuses), nodes with an
    output whose name a subgraph defines too (``passes._utils.names_defined_twice``), and
    attributes onnx-ir cannot hash (a type: ``Optional<type = ...>`` made the whole pass fail).

    onnx-ir's CSE compares inputs by identity, and the dynamo exporter writes a scalar
    initializer per use (``Range(0, n, 1)`` twice reads two ``0``s): small initializers
    (at most ``_SMALL_INITIALIZER_ELEMENTS`` values) with equal dtype, shape and contents
    are first merged into one, as deduplicate-initializers does for all of them at the end
    of the pipeline (which a second run's CSE would otherwise build on). Graph inputs and
    outputs are never merged.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        merged = False
        shadowed = names_defined_twice(model)
        for graph in model.graphs():
            merged = (
                deduplicate_initializers(graph, max_elements=_SMALL_INITIALIZER_ELEMENTS, shadowed=shadowed) or merged
            )
        # onnx-ir leaves only Random* and Multinomial unmerged: each other draw (Bernoulli, a training-mode Dropout,
        # a call of a local function that draws) gets an attribute no other node has while it runs, so two are
        # never one draw. A node that leaves some outputs unnamed gets one saying which: onnx-ir keys nodes on the
        # number of outputs, and merged LayerNormalization(y, "", "") with (y2, mean, "") into a read of "".
        # A node that must stay alone (see the docstring) is marked the same way, and an attribute onnx-ir cannot
        # hash is swapped for a number no other node has while it runs.
        drawing = _functions_that_draw(model)
        marked: list[ir.Node] = []
        swapped: list[tuple[ir.Node, ir.Attr]] = []
        for graph in model_graphs(model):
            listed = Counter(id(value) for value in graph.outputs)
            for node in graph:
                if (
                    draws_random(node)
                    or (node.domain, node.op_type, node.overload) in drawing
                    or _has_negative_zero(node)
                    or any(listed[id(output)] > 1 or output.name in shadowed for output in node.outputs)
                ):
                    node.attributes[_DRAW] = ir.AttrInt64(_DRAW, len(marked))
                    marked.append(node)
                elif any(not output.name for output in node.outputs):
                    named = [int(bool(output.name)) for output in node.outputs]
                    node.attributes[_DRAW] = ir.AttrInt64s(_DRAW, named)
                    marked.append(node)
                for attribute in list(node.attributes.values()):
                    if not attribute.is_ref() and attribute.type in _UNHASHABLE:
                        swapped.append((node, attribute))
                        node.attributes[attribute.name] = ir.AttrInt64(attribute.name, -len(swapped))
        try:
            result = super().call(model)
        finally:
            for node in marked:
                node.attributes.pop(_DRAW, None)
            for node, attribute in swapped:
                node.attributes[attribute.name] = attribute
        return ir.passes.PassResult(model, modified=result.modified or merged)


_DRAW = "graphopt_draw"
# Attribute values onnx-ir's CSE puts in a dict key as they are, which cannot be hashed (TypeError).
_UNHASHABLE = (
    ir.AttributeType.TYPE_PROTO,
    ir.AttributeType.TYPE_PROTOS,
    ir.AttributeType.TENSORS,
    ir.AttributeType.SPARSE_TENSOR,
    ir.AttributeType.SPARSE_TENSORS,
)


def _has_negative_zero(node: ir.Node) -> bool:
    """Whether a float attribute of ``node`` is, or holds, ``-0.0`` (which Python's ``==`` takes for ``0.0``)."""
    for attribute in node.attributes.values():
        if attribute.is_ref() or attribute.type not in (ir.AttributeType.FLOAT, ir.AttributeType.FLOATS):
            continue
        values = [attribute.value] if attribute.type == ir.AttributeType.FLOAT else attribute.value
        if any(value == 0 and math.copysign(1.0, value) < 0 for value in values):
            return True
    return False


def _functions_that_draw(model: ir.Model) -> set[tuple[str, str, str]]:
    """The ``(domain, name, overload)`` of each local function that draws random numbers, itself or in a function it
    calls."""
    functions = dict(model.functions)
    drawing: set[tuple[str, str, str]] = set()
    changed = True
    while changed:  # a call of a drawing function draws: to a fixed point over nested calls
        changed = False
        for key, function in functions.items():
            if key in drawing:
                continue
            # Not onnx-ir's recursive iterator: it fails on a graph attribute that is the caller's (body = @body).
            nodes = (node for graph in graphs_within(function) for node in graph)
            if any(draws_random(n) or (n.domain, n.op_type, n.overload) in drawing for n in nodes):
                drawing.add(key)
                changed = True
    return drawing


# Shape vectors, axes, scalars: cheap to compare, and what per-use exporters repeat.
_SMALL_INITIALIZER_ELEMENTS = 64


def _from_outer_scope(value: ir.Value, graph: ir.Graph) -> bool:
    """Whether ``value`` is defined outside ``graph`` (a subgraph reading its parent's value)."""
    producer = value.producer()
    if producer is not None:
        return producer.graph is not graph
    return value not in graph.inputs and value.name not in graph.initializers

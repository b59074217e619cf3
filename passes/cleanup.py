"""Cleanup passes: dead code, Identity nodes, common subexpressions.

These wrap onnx-ir's common passes, which do the job on our models (tested in
``tests/passes/test_cleanup.py`` on hand-built graphs and exported transformers);
graphopt adds the bundling, the registry names, and the fixes each class's docstring
names (unused initializers of bodies, Identity guards).
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from optimizer.domains import is_onnx_domain
from optimizer.model_io import model_graphs
from passes._pass import GraphoptPass
from passes._utils import draws_random, remove_dead_nodes
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
    """

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type == "Identity" and is_onnx_domain(node) and len(node.inputs) == 1:
            source, graph = node.inputs[0], node.graph
            if source is not None and graph is not None and node.outputs[0] in graph.outputs:
                if source in graph.outputs or _from_outer_scope(source, graph):
                    return False
        return super()._try_eliminate_identity_node(node)


class EliminateCommonSubexpressionsPass(GraphoptPass, common_passes.CommonSubexpressionEliminationPass):
    """Merge nodes with the same op, attributes and inputs into one (onnx-ir's CSE).

    Exporters recompute the same ``Shape``/``Gather`` chain for every layer; after
    this pass each distinct computation exists once. Refuses non-deterministic ops
    (random generators) and nodes with subgraphs.

    onnx-ir's CSE compares inputs by identity, and the dynamo exporter writes a scalar
    initializer per use (``Range(0, n, 1)`` twice reads two ``0``s): small initializers
    (at most ``_SMALL_INITIALIZER_ELEMENTS`` values) with equal dtype, shape and contents
    are first merged into one, as deduplicate-initializers does for all of them at the end
    of the pipeline (which a second run's CSE would otherwise build on). Graph inputs and
    outputs are never merged.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        merged = False
        for graph in model.graphs():
            merged = deduplicate_initializers(graph, max_elements=_SMALL_INITIALIZER_ELEMENTS) or merged
        # onnx-ir leaves only Random* and Multinomial unmerged: each other draw (Bernoulli, a training-mode Dropout,
        # a call of a local function that draws) gets an attribute no other node has while it runs, so two are
        # never one draw. A node that leaves some outputs unnamed gets one saying which: onnx-ir keys nodes on the
        # number of outputs, and merged LayerNormalization(y, "", "") with (y2, mean, "") into a read of "".
        drawing = _functions_that_draw(model)
        marked: list[ir.Node] = []
        for graph in model_graphs(model):
            for node in graph:
                if draws_random(node) or (node.domain, node.op_type, node.overload) in drawing:
                    node.attributes[_DRAW] = ir.AttrInt64(_DRAW, len(marked))
                    marked.append(node)
                elif any(not output.name for output in node.outputs):
                    named = [int(bool(output.name)) for output in node.outputs]
                    node.attributes[_DRAW] = ir.AttrInt64s(_DRAW, named)
                    marked.append(node)
        try:
            result = super().call(model)
        finally:
            for node in marked:
                node.attributes.pop(_DRAW, None)
        return ir.passes.PassResult(model, modified=result.modified or merged)


_DRAW = "graphopt_draw"


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
            nodes = ir.traversal.RecursiveGraphIterator(function.graph)
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

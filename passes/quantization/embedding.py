"""Int8 embedding tables: the biggest weights of small transformers, stored in a quarter of the space."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_domain
from optimizer.protocol import Twin
from passes._layers import Layer, excluded, row_lookup, unmatched_patterns
from passes._pass import GraphoptPass
from passes._utils import add_initializer, constant_array, remove_dead_nodes, replace_value, unique_name
from passes.quantization._int8 import quantize_weight

# Tables smaller than this stay float: the saving is not worth three extra nodes.
_MIN_ELEMENTS = 1 << 16
# No scale stands for a NaN or an infinity: a row holding one came back all NaN (an infinity), or rounded to whole
# numbers with its NaN gone (a NaN peak read as a zero row), and verification never saw it unless it looked it up.
_NOT_FINITE = "it holds NaN or Inf, which no scale stands for"
_TOO_SMALL = f"under {_MIN_ELEMENTS:,} values: the saving is not worth three extra nodes"
_LOOKS_FOR = "it takes row Gathers (axis 0, or -2) of a constant float32 [rows, width] table in the main graph"


class EmbeddingQuantizationPass(GraphoptPass, ir.passes.InPlacePass):
    """Rewrite ``Gather(table, ids)`` on a constant float32 ``[rows, width]`` table into
    ``Cast(Gather(table_int8, ids)) * Gather(row_scales, ids)``: one symmetric int8 scale per
    row, so each looked-up row is exact to half a step of its own range.

    Row Gathers inside ``If``/``Loop``/``Scan`` bodies that read the table from the outer
    graph are rewritten too, so the float table goes. Refuses (leaves float) tables read by
    anything but row Gathers (an LM head tied to the embeddings, a fused
    EmbedLayerNormalization), Gathers on another axis,
    tables under 65,536 values, tables holding a NaN or an infinity (no scale stands for one:
    such a row came back all NaN, or rounded to whole numbers), and tables one of whose lookups
    an ``exclude`` glob (``--exclude``) matches by node name or op type (``Gather``), each with its
    reason. Its notes say how many bytes it saved, or, where it found no table, what it looks for.

    The twin (kind ``"float32"``): the input with each such table replaced by its
    dequantized int8 rows, the same float arithmetic otherwise. Where the input already
    quantizes activations (after ``quantize-dynamic``/``quantize-static``), the twin is of
    kind ``"int8"``: the candidate runs with ONNX Runtime's fusions, the twin as written, and
    an activation at a rounding tie may round the other way in one of them (measured on the
    example encoder with 8-bit dynamic weights: 2.2e-3 past the float32 tolerance).
    """

    left_as = "stay float"

    def __init__(self, exclude: Sequence[str] = ()) -> None:
        super().__init__()
        self.exclude = tuple(exclude)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        source = model.clone()  # shares the tables' tensors; the twin replaces the quantized ones
        graph = model.graph
        for pattern in unmatched_patterns(graph, self.exclude):
            self.note(f"--exclude '{pattern}' matches no node name or op type of the graph: it keeps nothing float")
        kept = self._excluded_tables(graph)
        refused: set[str] = set(kept)
        saved, tables = 0, {}
        # Node names are unique per graph (ONNX Runtime refuses a repeat): two unnamed lookups of one table
        # would otherwise both name their new nodes after the table.
        taken = {node.name for node in ir.traversal.RecursiveGraphIterator(graph) if node.name}
        # Value names are unique across the model, bodies included (onnx-ir numbers unnamed ones per graph).
        names = {v.name for n in ir.traversal.RecursiveGraphIterator(graph) for v in (*n.inputs, *n.outputs) if v}
        names |= {v.name for v in (*graph.inputs, *graph.initializers.values())}
        for node in list(ir.traversal.RecursiveGraphIterator(graph)):
            if not row_lookup(node):
                continue
            table = node.inputs[0]
            array = constant_array(table)
            if array is None or array.dtype != np.float32 or array.ndim != 2:
                continue
            if table.name in kept or not _main_graph_constant(table, graph):
                continue  # (a table held inside a body stays as it is)
            if array.size < _MIN_ELEMENTS:
                if table.name not in refused:
                    refused.add(table.name)
                    self.refuse("embedding tables", _TOO_SMALL)
                continue
            if table.name not in tables and not np.isfinite(array).all():
                if table.name not in refused:
                    refused.add(table.name)
                    self.refuse("embedding tables", _NOT_FINITE)
                continue
            if any(not row_lookup(user) or index != 0 for user, index in table.uses()):
                if table.name not in refused:
                    refused.add(table.name)
                    self.refuse("embedding tables", "read by more than row lookups (a tied LM head, a fused op)")
                continue
            if table.name not in tables:
                self.done("embedding tables")
                rows = quantize_weight(array, 0)
                tables[table.name] = (
                    add_initializer(graph, f"{table.name}.int8", rows.values),
                    add_initializer(graph, f"{table.name}.row_scale", rows.scale.reshape(-1, 1)),
                )
                saved += array.nbytes - rows.values.nbytes - rows.scale.nbytes
            values, scales = tables[table.name]
            ids = node.inputs[1]
            prefix = node.name or table.name
            rows = ir.Node("", "Gather", [values, ids], name=unique_name(f"{prefix}_int8_rows", taken))
            row_scales = ir.Node("", "Gather", [scales, ids], name=unique_name(f"{prefix}_row_scales", taken))
            widened = ir.Node("", "Cast", [rows.outputs[0]], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT)])
            widened.name = unique_name(f"{prefix}_widen", taken)
            scaled = ir.Node(
                "", "Mul", [widened.outputs[0], row_scales.outputs[0]], name=unique_name(f"{prefix}_dequantize", taken)
            )
            for made in (rows, row_scales, widened):
                made.outputs[0].name = unique_name(f"{made.name}.output", names)
            node.graph.insert_before(node, [rows, row_scales, widened, scaled])
            replace_value(node.outputs[0], scaled.outputs[0], inherit=True)
        if not tables:
            if not self.said_why():
                self.note(f"no embedding table in the graph: {_LOOKS_FOR}")
            return self.result(model, modified=False)
        remove_dead_nodes(model)
        self.note(f"{len(tables)} embedding tables int8 (per row), {saved / 2**20:.1f} MB smaller")
        return self.result(model, modified=True, twin=_twin(source, list(tables)))

    def _excluded_tables(self, graph: ir.Graph) -> set[str]:
        """Tables one of whose row lookups ``exclude`` matches (each refused once, with the reason)."""
        kept: set[str] = set()
        for node in ir.traversal.RecursiveGraphIterator(graph) if self.exclude else ():
            if node.op_type != "Gather" or not is_onnx_domain(node):
                continue
            table = node.inputs[0]
            array = constant_array(table)
            if array is None or table.name in kept:
                continue
            if excluded(Layer(node, "gather", array, None), self.exclude):
                kept.add(table.name)
                self.refuse("embedding tables", "matched by --exclude")
        return kept


def _main_graph_constant(value: ir.Value, graph: ir.Graph) -> bool:
    """Whether ``value`` is an initializer of the main ``graph`` or a Constant node's output there (no body's)."""
    producer = value.producer()
    return graph.initializers.get(value.name) is value or (producer is not None and producer.graph is graph)


def _twin(source: ir.Model, names: list[str]) -> Twin:
    """``source`` with the named tables replaced by their dequantized int8 rows (``source`` is a copy)."""
    graph = source.graph
    for name in names:
        table = graph.initializers.get(name)
        if table is None:  # a Constant node's table
            table = next(v for node in graph for v in node.outputs if v.name == name)
        dequantized = quantize_weight(constant_array(table), 0).dequantize()
        replacement = add_initializer(graph, f"{name}.dequantized", dequantized)
        table.replace_all_uses_with(replacement)
    remove_dead_nodes(source)
    tables = f"{len(names)} embedding table{'s' if len(names) != 1 else ''}"
    kind = "int8" if any(node.op_type in _QUANTIZES_ACTIVATIONS for node in graph) else "float32"
    return Twin(source, kind, f"the input with {tables} replaced by their dequantized int8 rows")


# Ops through which an earlier int8 pass rounds activations to integers.
_QUANTIZES_ACTIVATIONS = frozenset({"DynamicQuantizeLinear", "QuantizeLinear", "DynamicQuantizeMatMul", "QAttention"})

"""Merge initializers that hold identical tensors, or one the other's transpose.

onnx-ir ships ``DeduplicateHashedInitializersPass``, but it hashes
``tensor.numpy()`` directly and raises ``ValueError: ndarray is not C-contiguous``
on initializers backed by a transposed numpy view, which the dynamo exporter
produces (seen on our ``bert_dynamo`` fixture). This is our own version that
hashes a contiguous copy, block by block.

``ShareTransposedInitializersPass`` stores a matrix and its transpose once: the legacy
exporter writes a tied LM head's weight as a separate initializer holding the embedding
table's transpose (SmolLM2: 113 MB, 17 % of the file). It also merges, ahead of the
approximate passes, a matrix's exact copies read only as layer weights: the legacy
exporter folds ``Transpose(W)`` once per reader, so ALBERT's shared layers read a copy each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

import numpy as np
import onnx_ir as ir

from passes._pass import GraphoptPass
from passes._utils import names_defined_twice


class DeduplicateInitializersPass(GraphoptPass, ir.passes.InPlacePass):
    """Point every use of a duplicate initializer at one canonical copy and delete the rest.

    Two initializers are duplicates when dtype, shape and every byte agree (equal
    SHA-256 digests, then confirmed byte for byte). Exporters repeat constants
    per layer and tie embedding weights. Refuses initializers that are graph
    inputs (they can be overridden at run time) or graph outputs, those
    whose value is not loaded, and a copy whose kept one has a name a subgraph
    defines too (``passes._utils.names_defined_twice``).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        shadowed = names_defined_twice(model)
        for graph in model.graphs():
            modified = deduplicate_initializers(graph, shadowed=shadowed) or modified
        return ir.passes.PassResult(model, modified=modified)


class ShareTransposedInitializersPass(GraphoptPass, ir.passes.InPlacePass):
    """Rewrite a 2-D initializer that holds another's exact transpose into ``Transpose(other)``, and
    point the readers of one that is another's exact copy at that other.

    The legacy exporter's tied LM head (``MatMul(x, lm_head.weight)`` with ``lm_head.weight
    == table.T``) becomes the dynamo exporter's spelling, ``MatMul(x, Transpose(table))``,
    which the quantizers read through (``passes._layers``): int4 packs it once for the head
    and the lookup. Runs before the fusions and quantizers so they see the tie.

    Only the copy whose every reader is a MatMul or Gemm weight input is replaced (those
    read a transposed constant); the kept one is the other (the lookup's table). Refuses
    (leaves both) pairs whose readers are all something else, graph inputs or outputs,
    tensors of fewer than ``min_elements`` values or with a dimension of 1 (a reshape, not a
    transpose), and values not loaded. Exact: the bytes of one equal the other's transpose.

    An exact copy (same dtype, shape and bytes) whose every reader is a MatMul or Gemm weight
    input is merged into the other here, not only by ``deduplicate-initializers`` at the end of
    the pipeline: the legacy exporter folds ``Transpose(W)`` once per reader, so ALBERT's layers,
    which share their weights, each read an identical copy, and a tied head may read the table's
    copy (``Gemm(x, copy, transB=1)``). Left apart until the end, every approximate pass treated
    the copies as unrelated weights: pruning and GPTQ wrote a different copy per reader (a file
    larger than without them) and int8 quantized a tied head beside the float table. Merged, they
    see one weight read by several layers (refused by pruning, fitted once by GPTQ). Not into a
    kept one whose name a subgraph defines too (``passes._utils.names_defined_twice``).
    """

    def __init__(self, min_elements: int = 1024) -> None:
        super().__init__()
        self.min_elements = min_elements

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        shadowed = names_defined_twice(model)
        merged = shared = 0
        for graph in model.graphs():
            copies, transposes = _share_transposed(graph, self.min_elements, self.refuse, shadowed)
            merged, shared = merged + copies, shared + transposes
        if merged:
            self.note(f"{merged} initializers merged into an identical one read as a weight too (a copy per reader)")
        if shared:
            self.note(f"{shared} initializers stored as Transpose of the tensor they transpose (a tied LM head)")
        return ir.passes.PassResult(model, modified=bool(merged or shared))


def _share_transposed(graph: ir.Graph, min_elements: int, refuse, shadowed: Collection[str] = ()) -> tuple[int, int]:
    """Merge exact copies read only as weights, then share transposed ones; how many of each."""
    by_shape: dict[tuple, list[ir.Value]] = {}
    for value in graph.initializers.values():
        tensor = value.const_value
        if value.is_graph_input() or value.is_graph_output() or tensor is None or len(tensor.shape) != 2:
            continue
        shape = tuple(tensor.shape.numpy())
        if min(shape) > 1 and shape[0] * shape[1] >= min_elements and tensor.dtype != ir.DataType.STRING:
            by_shape.setdefault((tensor.dtype, shape), []).append(value)
    digests: dict[tuple[int, bool], str] = {}

    def digest(value: ir.Value, transposed: bool) -> str:
        key = (id(value), transposed)
        if key not in digests:
            array = _contiguous(value.const_value)
            digests[key] = _digest(np.ascontiguousarray(array.T) if transposed else array)
        return digests[key]

    merged = shared = 0
    replaced: set[int] = set()
    for values in by_shape.values():
        for copy in reversed(values):  # the first of equal ones is kept
            if not _read_as_weight(copy):
                continue
            for kept in values:
                if kept is copy or id(kept) in replaced or kept.name in shadowed:
                    continue
                if digest(kept, False) != digest(copy, False):
                    continue
                if not np.array_equal(_contiguous(kept.const_value), _contiguous(copy.const_value)):
                    continue  # a NaN (equal bytes), or a hash collision
                copy.replace_all_uses_with(kept)
                del graph.initializers[copy.name]
                replaced.add(id(copy))
                merged += 1
                break
    for (dtype, shape), values in list(by_shape.items()):
        for copy in values:
            if id(copy) in replaced:
                continue
            for kept in by_shape.get((dtype, shape[::-1]), []):
                if kept is copy or id(kept) in replaced or digest(kept, False) != digest(copy, True):
                    continue
                if not np.array_equal(_contiguous(kept.const_value).T, _contiguous(copy.const_value)):
                    continue
                victim, keeper = (copy, kept) if _read_as_weight(copy) else (kept, copy)
                if not _read_as_weight(victim):
                    refuse("transposed copies", "neither copy is read only as a MatMul/Gemm weight")
                    continue
                _replace_by_transpose(graph, victim, keeper)
                replaced.add(id(victim))
                shared += 1
                break
    return merged, shared


def _read_as_weight(value: ir.Value) -> bool:
    """True if every reader of ``value`` is an ONNX MatMul or Gemm reading it as its weight (input 1)."""
    uses = list(value.uses())
    return bool(uses) and all(
        user.op_type in ("MatMul", "Gemm") and user.domain in ("", "ai.onnx") and index == 1 for user, index in uses
    )


def _replace_by_transpose(graph: ir.Graph, victim: ir.Value, keeper: ir.Value) -> None:
    name = victim.name
    transpose = ir.node("Transpose", [keeper], {"perm": [1, 0]}, name=f"{name}_shared_transpose")
    del graph.initializers[name]
    victim.replace_all_uses_with(transpose.outputs[0])
    transpose.outputs[0].name = name
    transpose.outputs[0].shape = victim.shape
    transpose.outputs[0].type = victim.type
    first = next(iter(graph), None)
    if first is None:
        graph.append(transpose)
    else:
        graph.insert_before(first, transpose)


def deduplicate_initializers(
    graph: ir.Graph, *, max_elements: int | None = None, shadowed: Collection[str] = ()
) -> bool:
    """Point each use of a duplicate initializer of ``graph`` (of at most ``max_elements`` values, if given) at
    its first copy and delete the others, as ``DeduplicateInitializersPass`` does; True if any went. A copy
    whose first is named in ``shadowed`` (``passes._utils.names_defined_twice``) stays."""
    canonical: dict[tuple, ir.Value] = {}
    modified = False
    for value in list(graph.initializers.values()):
        if value.is_graph_input() or value.is_graph_output() or value.const_value is None:
            continue
        if max_elements is not None and value.const_value.size > max_elements:
            continue
        array = _contiguous(value.const_value)
        # Key on the declared shape: onnx-ir may back a scalar with a 1-element array.
        key = (value.const_value.dtype, tuple(value.const_value.shape.numpy()), _digest(array))
        keeper = canonical.setdefault(key, value)
        if keeper is value or keeper.name in shadowed or not np.array_equal(_contiguous(keeper.const_value), array):
            continue
        value.replace_all_uses_with(keeper)
        del graph.initializers[value.name]
        modified = True
    return modified


def _contiguous(tensor: ir.TensorProtocol) -> np.ndarray:
    if tensor.dtype == ir.DataType.STRING:
        return np.array(tensor.string_data(), dtype=object).reshape(tensor.shape.numpy())
    return np.ascontiguousarray(tensor.numpy())


def _digest(array: np.ndarray) -> str:
    if array.dtype == object:
        return hashlib.sha256(repr(array.tolist()).encode()).hexdigest()
    return hashlib.sha256(array.view(np.uint8) if array.ndim else array.tobytes()).hexdigest()

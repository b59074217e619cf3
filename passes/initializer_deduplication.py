"""Merge initializers that hold identical tensors.

onnx-ir ships ``DeduplicateHashedInitializersPass``, but it hashes
``tensor.numpy()`` directly and raises ``ValueError: ndarray is not C-contiguous``
on initializers backed by a transposed numpy view, which the dynamo exporter
produces (seen on our ``bert_dynamo`` fixture). This is our own version that
hashes a contiguous copy, block by block.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_ir as ir

from passes._pass import GraphoptPass


class DeduplicateInitializersPass(GraphoptPass, ir.passes.InPlacePass):
    """Point every use of a duplicate initializer at one canonical copy and delete the rest.

    Two initializers are duplicates when dtype, shape and every byte agree (equal
    SHA-256 digests, then confirmed byte for byte). Exporters repeat constants
    per layer and tie embedding weights. Refuses initializers that are graph
    inputs (they can be overridden at run time) or graph outputs, and those
    whose value is not loaded.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for graph in model.graphs():
            modified = _deduplicate(graph) or modified
        return ir.passes.PassResult(model, modified=modified)


def _deduplicate(graph: ir.Graph) -> bool:
    canonical: dict[tuple, ir.Value] = {}
    modified = False
    for value in list(graph.initializers.values()):
        if value.is_graph_input() or value.is_graph_output() or value.const_value is None:
            continue
        array = _contiguous(value.const_value)
        # Key on the declared shape: onnx-ir may back a scalar with a 1-element array.
        key = (value.const_value.dtype, tuple(value.const_value.shape.numpy()), _digest(array))
        keeper = canonical.setdefault(key, value)
        if keeper is value or not np.array_equal(_contiguous(keeper.const_value), array):
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

"""Evaluating a few values of a graph on ONNX Runtime, for fusions that must know what a subgraph computes.

Only the ancestors of the requested values are serialized (with the initializers
they read), so probing stays cheap on models with gigabytes of weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir


def graph_inputs_of(values: Sequence[ir.Value]) -> list[ir.Value] | None:
    """The graph inputs the given values depend on; None if they depend on a subgraph-carrying node."""
    try:
        leaves = _ancestry(values)[1]
    except ValueError:  # an If/Loop/Scan among the ancestors: not probed
        return None
    return [v for v in leaves if v.const_value is None]


# A left- and a right-padded row: positions or masks built from the attention mask
# show it on one of them.
PADDED_MASK = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])

_INT_TYPES = (ir.DataType.INT64, ir.DataType.INT32)


def is_mask(value: ir.Value) -> bool:
    """True if a graph input is named like an attention mask."""
    return "mask" in (value.name or "").lower()


def token_inputs_of(values: Sequence[ir.Value], dtypes: tuple[ir.DataType, ...] = _INT_TYPES) -> list[ir.Value] | None:
    """The graph inputs ``values`` depend on, if all are ``[batch, sequence]`` tensors of ``dtypes``, else None.

    These are what ``token_feeds`` can make up probe values for: token ids, the
    attention mask, position ids.
    """
    inputs = graph_inputs_of(values)
    if inputs is None or any(v.dtype not in dtypes or v.shape is None or v.shape.rank() != 2 for v in inputs):
        return None
    return inputs


def token_feeds(
    inputs: Sequence[ir.Value], mask: np.ndarray, overrides: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Probe values shaped like ``mask``: ``mask`` for mask inputs, ones (token id 1) for the rest.

    ``overrides`` replaces inputs by name (position ids, for one).
    """
    overrides = overrides or {}
    feeds = {}
    for value in inputs:
        array = overrides.get(value.name, mask if is_mask(value) else np.ones(mask.shape))
        feeds[value.name] = np.asarray(array).astype(value.dtype.numpy())
    return feeds


def _ancestry(values: Sequence[ir.Value]) -> tuple[list[ir.Node], list[ir.Value]]:
    """Nodes computing ``values`` and the producer-less values (inputs, initializers) they read."""
    nodes: dict[int, ir.Node] = {}
    leaves: dict[int, ir.Value] = {}
    stack = list(values)
    while stack:
        value = stack.pop()
        node = value.producer()
        if node is None:
            leaves[id(value)] = value
            continue
        if id(node) in nodes:
            continue
        if any(attr.type == ir.AttributeType.GRAPH for attr in node.attributes.values()):
            raise ValueError("probing through subgraphs is not supported")
        nodes[id(node)] = node
        stack.extend(v for v in node.inputs if v is not None)
    return list(nodes.values()), list(leaves.values())


def evaluate(model: ir.Model, values: Sequence[ir.Value], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Compute ``values`` of ``model`` on ONNX Runtime (CPU) from the graph inputs in ``feeds``."""
    import onnxruntime as ort

    nodes, leaves = _ancestry(values)
    order = {id(node): i for i, node in enumerate(model.graph)}
    nodes.sort(key=lambda node: order[id(node)])
    initializers, inputs = [], []
    for leaf in leaves:
        if leaf.const_value is not None:
            initializers.append(ir.serde.serialize_tensor(leaf.const_value))
            initializers[-1].name = leaf.name
        else:
            inputs.append(ir.serde.serialize_value(leaf))
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(node) for node in nodes],
        "probe",
        inputs,
        [onnx.helper.make_empty_tensor_value_info(value.name) for value in values],
        initializers,
    )
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    needed = {meta.name for meta in session.get_inputs()}
    return session.run([value.name for value in values], {k: v for k, v in feeds.items() if k in needed})

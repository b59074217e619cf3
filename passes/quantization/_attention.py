"""Building com.microsoft ``QAttention`` from a packed-QKV ``Attention`` layer (dynamic and static passes)."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN
from passes._layers import Layer
from passes._utils import add_initializer, replace_value
from passes.quantization._int8 import quantize_weight


def replace_with_qattention(
    graph: ir.Graph,
    layer: Layer,
    activation: tuple[ir.Value, ir.Value, ir.Value],
    *,
    per_channel: bool,
    reduce_range: bool,
) -> None:
    """Replace ``layer`` (an Attention node) by QAttention reading the uint8 ``activation``.

    ``activation`` is ``(values, scale, zero_point)`` of the quantized input, from a
    DynamicQuantizeLinear or a QuantizeLinear placed before the node. A non-default
    ``scale`` is folded into the query third of the weights and bias
    (``folded_weights``), which is exact; ``unidirectional`` and ``mask_filter_value``
    carry over.
    """
    node = layer.node
    num_heads = node.attributes.get_int("num_heads")
    weight, bias = folded_weights(layer)
    quantized = quantize_weight(weight, 1 if per_channel else None, reduce_range=reduce_range)
    values, activation_scale, activation_zero_point = activation
    prefix = node.name
    inputs = [
        values,
        add_initializer(graph, f"{prefix}.weight_int8", quantized.values),
        add_initializer(graph, f"{prefix}.bias", bias),
        activation_scale,
        add_initializer(graph, f"{prefix}.weight_scale", quantized.scale),
        node.inputs[3] if len(node.inputs) > 3 else None,
        activation_zero_point,
        add_initializer(graph, f"{prefix}.weight_zero_point", quantized.zero_point),
    ]
    attributes = [ir.AttrInt64("num_heads", num_heads)]
    if node.attributes.get_int("unidirectional", 0):
        attributes.append(ir.AttrInt64("unidirectional", 1))
    if "mask_filter_value" in node.attributes:
        # What a masked score becomes: a fully masked row (left padding) depends on it.
        value = node.attributes.get_float("mask_filter_value")
        attributes.append(ir.AttrFloat32("mask_filter_value", value))
    fused = ir.Node(MS_DOMAIN, "QAttention", inputs, attributes=attributes, name=f"{prefix}_int8")
    graph.insert_before(node, fused)
    replace_value(node.outputs[0], fused.outputs[0], inherit=True)


def folded_weights(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """The layer's packed QKV weight and bias with a non-default ``scale`` folded into the query third.

    ``softmax(scale * q k^T)`` equals ``softmax(q' k^T / sqrt(head_size))`` for
    ``q' = q * scale * sqrt(head_size)``: exact in float, and QAttention then needs
    only its default scale.
    """
    node = layer.node
    num_heads = node.attributes.get_int("num_heads")
    hidden = layer.weight.shape[1] // 3  # after head pruning, narrower than the input
    weight, bias = layer.weight.copy(), layer.bias.copy()
    scale = node.attributes.get_float("scale", 0.0)
    if scale:
        ratio = scale * math.sqrt(hidden // num_heads)
        weight[:, :hidden] *= ratio
        bias[:hidden] *= ratio
    return weight, bias

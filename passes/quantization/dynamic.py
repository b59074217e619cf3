"""Dynamic int8 quantization: int8 weights stored in the model, activations quantized at run time.

This is the CPU workhorse for transformers: no calibration data is needed, and each
activation gets its own range on every run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN
from passes._layers import Layer, bias_add
from passes._utils import add_initializer, replace_value
from passes.quantization._attention import folded_weights, replace_with_qattention
from passes.quantization._base import QuantizationPass
from passes.quantization._int8 import claimed_weight, quantize_weight
from passes.quantization._twin import Int8Twin


class DynamicQuantizationPass(QuantizationPass):
    """Rewrite float layers with constant weights into ONNX Runtime's dynamic int8 operators.

    - ``MatMul`` (``[..., K] x [K, N]``) and ``Gemm`` (alpha = beta = 1, no transA) become
      com.microsoft ``DynamicQuantizeMatMul``: int8 weights (one scale per output column
      with ``per_channel``), uint8 activations quantized per run, and a following bias
      ``Add`` of a constant ``[N]`` vector folded in.
    - com.microsoft ``Attention`` with packed QKV weights becomes ``DynamicQuantizeLinear``
      + ``QAttention``; a non-default ``scale`` is folded into the query weights, since
      QAttention has no scale attribute.

    The twin (kind ``"int8"``): each such layer reading its input through
    ``DynamicQuantizeLinear`` → ``DequantizeLinear`` (uint8, this run's range: what the
    integer kernels compute) with the dequantized int8 weight as a float constant, the
    bias unchanged (the kernels add it in float), an Attention's ``scale`` folded.

    Refuses (layer stays float): non-float32 tensors, non-constant weights, Gemm with
    transA/alpha/beta, Attention with past/attention_bias/rotary inputs. Conv is not
    handled: ONNX Runtime's ConvInteger measured many times slower than float Conv on
    CPU; use static quantization for CNNs. See ``QuantizationPass`` for which layers
    stay float (``exclude``, model outputs, the accuracy budget).
    """

    kinds = ("matmul", "gemm", "attention")
    twin_inputs = "through DynamicQuantizeLinear"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self._shared: dict[str, tuple[ir.Value, ...] | None] = {}

    def begin(self, layers: Sequence[Layer]) -> None:
        # Activations read by several layers (Q/K/V or gate/up projections of one norm
        # output) are quantized once: DynamicQuantizeLinear + one MatMulIntegerToFloat each.
        readers = Counter(layer.activation.name for layer in layers)
        self._shared = {name: None for name, count in readers.items() if count > 1}

    def quantize_layer(self, graph: ir.Graph, layer: Layer) -> None:
        activation = self._quantized_activation(graph, layer) if layer.activation.name in self._shared else None
        if layer.kind == "attention":
            activation = activation or _quantize_input(graph, layer)
            replace_with_qattention(
                graph, layer, activation, per_channel=self.per_channel, reduce_range=self.reduce_range
            )
        else:
            _quantize_matmul(graph, layer, self.per_channel, self.reduce_range, activation)

    def twin_layer(self, twin: Int8Twin, layer: Layer) -> None:
        twin.quantize_input(layer)
        axis = 1 if self.per_channel else None
        if layer.kind == "attention":
            weight, bias = folded_weights(layer)
            twin.set_weight(
                layer, claimed_weight(weight, quantize_weight(weight, axis, reduce_range=self.reduce_range), layer.name)
            )
            twin.set_input(layer.node, 2, bias)
            layer.node.attributes.pop("scale", None)
        else:
            twin.set_weight(
                layer,
                claimed_weight(
                    layer.weight, quantize_weight(layer.weight, axis, reduce_range=self.reduce_range), layer.name
                ),
            )

    def _quantized_activation(self, graph: ir.Graph, layer: Layer) -> tuple[ir.Value, ...]:
        name = layer.activation.name
        if self._shared[name] is None:
            self._shared[name] = _quantize_input(graph, layer)
        return self._shared[name]


def _quantize_matmul(
    graph: ir.Graph,
    layer: Layer,
    per_channel: bool,
    reduce_range: bool,
    activation: tuple[ir.Value, ...] | None,
) -> None:
    """DynamicQuantizeMatMul, or MatMulIntegerToFloat on an already quantized ``activation``."""
    node = layer.node
    quantized = quantize_weight(layer.weight, 1 if per_channel else None, reduce_range=reduce_range)
    prefix = node.name
    weight = add_initializer(graph, f"{prefix}.weight_int8", quantized.values)
    scale = add_initializer(graph, f"{prefix}.weight_scale", quantized.scale)
    zero_point = add_initializer(graph, f"{prefix}.weight_zero_point", quantized.zero_point)
    result, bias = node.outputs[0], layer.bias
    if bias is None and (following := bias_add(layer)) is not None:
        bias, add, _ = following
        result = add.outputs[0]
    bias = add_initializer(graph, f"{prefix}.bias", bias.astype(np.float32)) if bias is not None else None
    if activation is None:
        inputs, op_type = [layer.activation, weight, scale, zero_point, bias], "DynamicQuantizeMatMul"
    else:
        values, activation_scale, activation_zero_point = activation
        inputs = [values, weight, activation_scale, scale, activation_zero_point, zero_point, bias]
        op_type = "MatMulIntegerToFloat"
    while inputs[-1] is None:
        inputs.pop()
    fused = ir.Node(MS_DOMAIN, op_type, inputs, name=f"{prefix}_int8")
    graph.insert_before(node, fused)
    replace_value(result, fused.outputs[0], inherit=True)


def _quantize_input(graph: ir.Graph, layer: Layer) -> tuple[ir.Value, ...]:
    """``DynamicQuantizeLinear`` of the layer's input, placed right after the input is computed."""
    source = layer.activation
    quantize = ir.Node("", "DynamicQuantizeLinear", [source], num_outputs=3, name=f"{source.name}_quantize")
    for output, suffix in zip(quantize.outputs, ("quantized", "scale", "zero_point")):
        output.name = f"{source.name}.{suffix}"
    producer = source.producer()
    if producer is not None and producer.graph is graph:
        graph.insert_after(producer, quantize)
    else:
        graph.insert_before(layer.node, quantize)
    return tuple(quantize.outputs)

"""Dynamic int8 quantization: int8 weights stored in the model, activations quantized at run time.

This is the CPU workhorse for transformers: no calibration data is needed, and each
activation gets its own range on every run.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes._utils import add_initializer, take_over
from passes.quantization._attention import replace_with_qattention
from passes.quantization._base import QuantizationPass
from passes.quantization._int8 import quantize_weight
from passes.quantization._layers import MS_DOMAIN, Layer, bias_add


class DynamicQuantizationPass(QuantizationPass):
    """Rewrite float layers with constant weights into ONNX Runtime's dynamic int8 operators.

    - ``MatMul`` (``[..., K] x [K, N]``) and ``Gemm`` (alpha = beta = 1, no transA) become
      com.microsoft ``DynamicQuantizeMatMul``: int8 weights (one scale per output column
      with ``per_channel``), uint8 activations quantized per run, and a following bias
      ``Add`` of a constant ``[N]`` vector folded in.
    - com.microsoft ``Attention`` with packed QKV weights becomes ``DynamicQuantizeLinear``
      + ``QAttention``; a non-default ``scale`` is folded into the query weights, since
      QAttention has no scale attribute.

    Refuses (layer stays float): non-float32 tensors, non-constant weights, Gemm with
    transA/alpha/beta, Attention with past/attention_bias/rotary inputs. Conv is not
    handled: ONNX Runtime's ConvInteger measured many times slower than float Conv on
    CPU; use static quantization for CNNs. See ``QuantizationPass`` for which layers
    stay float (``exclude``, model outputs, the accuracy budget).
    """

    kinds = ("matmul", "gemm", "attention")

    def quantize_layer(self, graph: ir.Graph, layer: Layer) -> None:
        if layer.kind == "attention":
            _quantize_attention(graph, layer, self.per_channel, self.reduce_range)
        else:
            _quantize_matmul(graph, layer, self.per_channel, self.reduce_range)


def _quantize_matmul(graph: ir.Graph, layer: Layer, per_channel: bool, reduce_range: bool) -> None:
    node = layer.node
    quantized = quantize_weight(layer.weight, 1 if per_channel else None, reduce_range=reduce_range)
    prefix = node.name
    inputs = [
        layer.activation,
        add_initializer(graph, f"{prefix}.weight_int8", quantized.values),
        add_initializer(graph, f"{prefix}.weight_scale", quantized.scale),
        add_initializer(graph, f"{prefix}.weight_zero_point", quantized.zero_point),
    ]
    result, bias = node.outputs[0], layer.bias
    if bias is None and (following := bias_add(layer)) is not None:
        bias, add, _ = following
        result = add.outputs[0]
    if bias is not None:
        inputs.append(add_initializer(graph, f"{prefix}.bias", bias.astype(np.float32)))
    fused = ir.Node(MS_DOMAIN, "DynamicQuantizeMatMul", inputs, name=f"{prefix}_int8")
    graph.insert_before(node, fused)
    take_over(result, fused.outputs[0])


def _quantize_attention(graph: ir.Graph, layer: Layer, per_channel: bool, reduce_range: bool) -> None:
    quantize_input = ir.Node(
        "", "DynamicQuantizeLinear", [layer.activation], num_outputs=3, name=f"{layer.node.name}_quantize_input"
    )
    graph.insert_before(layer.node, quantize_input)
    activation = tuple(quantize_input.outputs)
    replace_with_qattention(graph, layer, activation, per_channel=per_channel, reduce_range=reduce_range)

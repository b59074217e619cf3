"""Static int8 quantization in QDQ form, with activation ranges from calibration data.

The result stays a float graph with ``QuantizeLinear``/``DequantizeLinear`` pairs
that say where int8 applies; ONNX Runtime fuses them at load time into its integer
kernels (QLinearConv, MatMulIntegerToFloat, ...). Any ONNX tool can read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir
from onnxscript import version_converter

from passes._layers import Layer, bias_add
from passes._utils import add_initializer, constant_array
from passes.quantization import calibration
from passes.quantization._attention import folded_weights, replace_with_qattention
from passes.quantization._base import QuantizationPass
from passes.quantization._int8 import activation_parameters, claimed_weight, quantize_bias, quantize_weight
from passes.quantization._twin import Int8Twin

_QDQ_OPSET = 13
# The oldest opset onnxscript's version converter targets.
_CONVERTED_OPSET = 18


class StaticQuantizationPass(QuantizationPass):
    """Rewrite float layers into QDQ int8 form, with activation scales fixed by calibration.

    - ``MatMul``, ``Gemm`` and ``Conv`` with constant weights: the data input goes through
      ``QuantizeLinear`` → ``DequantizeLinear`` (uint8, calibrated range), the weight
      becomes ``DequantizeLinear`` of an int8 initializer (per output channel with
      ``per_channel``), the bias (a Gemm's or Conv's, or a MatMul's following Add) int32
      at activation scale x weight scale. A Conv's output gets a QDQ pair too, so ONNX
      Runtime can run ``QLinearConv``.
    - com.microsoft ``Attention`` with packed QKV weights becomes ``QuantizeLinear`` +
      ``QAttention`` with the calibrated input scale.

    The twin (kind ``"int8"``): the same steps in float — each layer's input through
    ``QuantizeLinear`` → ``DequantizeLinear`` at its calibrated scale, the dequantized
    int8 weight as a float constant, the bias replaced by its int32 value times its scale,
    a Conv's output through its pair, an Attention's ``scale`` folded and bias float.

    Ranges come from ``samples`` with ``method`` (minmax, percentile, entropy; see
    ``calibration``). Refuses (stays float) as ``DynamicQuantizationPass`` does, and
    entirely when no samples are given.
    """

    kinds = ("matmul", "gemm", "conv", "attention")
    twin_inputs = "at their calibrated scales, biases int32-dequantized"

    def __init__(self, *, method: str = "percentile", **options) -> None:
        super().__init__(**options)
        if method not in calibration.METHODS:
            raise ValueError(f"unknown calibration method {method!r}")
        self.method = method
        self.ranges: dict[str, tuple[float, float]] = {}
        self._quantized_values: dict[str, ir.Value] = {}
        self._quantized_inputs: dict[str, ir.Value] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.samples is None:
            self.decline("no calibration samples: nothing quantized")
            return self.result(model, modified=False)
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        if opset < _QDQ_OPSET:
            # Per-channel DequantizeLinear (its axis attribute) needs opset 13.
            version_converter.convert_version(model, _CONVERTED_OPSET, fallback=True)
        result = super().call(model)
        if opset < _QDQ_OPSET and result.modified:
            result.notes.insert(0, f"converted from opset {opset} to {_CONVERTED_OPSET} for QDQ")
        return result

    def prepare(self, model: ir.Model, layers: Sequence[Layer], batches: Sequence[Mapping[str, np.ndarray]]) -> None:
        names = [layer.activation.name for layer in layers]
        names += [layer.node.outputs[0].name for layer in layers if layer.kind == "conv"]
        self.ranges = calibration.calibrate(model, list(dict.fromkeys(names)), batches, self.method)
        self.note(f"calibrated {len(self.ranges)} activations ({self.method}) on {_count(batches)} samples")

    def begin(self, layers: Sequence[Layer]) -> None:
        self._quantized_values = {}
        self._quantized_inputs: dict[str, ir.Value] = {}

    def quantize_layer(self, graph: ir.Graph, layer: Layer) -> None:
        node = layer.node
        if layer.kind == "attention":
            values = self._quantize(graph, layer.activation, node)
            activation = (values, *values.producer().inputs[1:3])
            replace_with_qattention(
                graph, layer, activation, per_channel=self.per_channel, reduce_range=self.reduce_range
            )
            return
        activation = self._qdq(graph, layer.activation, node)
        node.replace_input_with(0, activation)
        transposed = layer.kind == "gemm" and node.attributes.get_int("transB", 0)
        # Output channels of the stored weight: [K, N] MatMul/Gemm, [N, K] with transB, [M, ...] Conv.
        axis = 0 if layer.kind == "conv" or transposed else 1
        stored = layer.weight.T if transposed else layer.weight
        quantized = quantize_weight(stored, axis if self.per_channel else None, reduce_range=self.reduce_range)
        prefix = node.name
        inputs = [
            add_initializer(graph, f"{prefix}.weight_int8", quantized.values),
            add_initializer(graph, f"{prefix}.weight_scale", quantized.scale),
            add_initializer(graph, f"{prefix}.weight_zero_point", quantized.zero_point),
        ]
        attributes = [ir.AttrInt64("axis", axis)] if quantized.axis is not None else []
        dequantize = ir.Node("", "DequantizeLinear", inputs, attributes=attributes, name=f"{prefix}_weight_dq")
        dequantize.outputs[0].name = f"{prefix}.weight_dequantized"
        graph.insert_before(node, dequantize)
        node.replace_input_with(1, dequantize.outputs[0])
        activation_scale = constant_array(activation.producer().inputs[1])
        self._quantize_bias(graph, layer, activation_scale * quantized.scale)
        if layer.kind == "conv":
            self._quantize_output(graph, node)

    def twin_layer(self, twin: Int8Twin, layer: Layer) -> None:
        node = layer.node
        scale, zero_point = activation_parameters(*self.ranges[twin.source(layer.activation).name])
        twin.quantize_input(layer, scale, zero_point)
        # Output channels: the last axis of Layer.weight ([K, N]), the first of a Conv's.
        axis = (0 if layer.kind == "conv" else 1) if self.per_channel else None
        if layer.kind == "attention":
            weight, bias = folded_weights(layer)
            twin.set_weight(
                layer, claimed_weight(weight, quantize_weight(weight, axis, reduce_range=self.reduce_range), layer.name)
            )
            twin.set_input(node, 2, bias)
            node.attributes.pop("scale", None)
            return
        quantized = quantize_weight(layer.weight, axis, reduce_range=self.reduce_range)
        twin.set_weight(layer, claimed_weight(layer.weight, quantized, layer.name))
        if layer.bias is not None:
            bias, user, slot = layer.bias, node, 2
        elif (following := bias_add(layer)) is not None:
            bias, user, slot = following
        else:
            bias = None
        if bias is not None:
            bias_scale = (np.float32(scale) * quantized.scale).astype(np.float32)
            values = quantize_bias(bias, bias_scale)
            if values is not None:
                twin.set_input(user, slot, values.astype(np.float32) * bias_scale)
        if layer.kind == "conv" and _requantized_output(twin.model.graph, node):
            twin.quantize_output(node, *activation_parameters(*self.ranges[node.outputs[0].name]))

    def _quantize_bias(self, graph: ir.Graph, layer: Layer, scale: np.ndarray) -> None:
        """Store the bias as int32 at ``activation scale * weight scale``, behind a DequantizeLinear.

        ONNX Runtime fuses QDQ MatMul + bias Add and QDQ Gemm into its integer kernels
        only with a bias in this form; with a float bias it runs them in float.
        """
        if layer.bias is not None:
            bias, user, slot = layer.bias, layer.node, 2
        elif (following := bias_add(layer)) is not None:
            bias, user, slot = following
        else:
            return
        values = quantize_bias(bias, scale)
        if values is None:
            # Tiny activation x weight scales: the bias does not fit int32; it stays float.
            self.note(f"{layer.name}: bias kept float, too large for int32 at scale {np.min(scale):g}")
            return
        prefix = layer.node.name
        inputs = [
            add_initializer(graph, f"{prefix}.bias_int32", values),
            add_initializer(graph, f"{prefix}.bias_scale", np.asarray(scale, dtype=np.float32)),
        ]
        attributes = [ir.AttrInt64("axis", 0)] if np.ndim(scale) else []
        dequantize = ir.Node("", "DequantizeLinear", inputs, attributes=attributes, name=f"{prefix}_bias_dq")
        dequantize.outputs[0].name = f"{prefix}.bias_dequantized"
        graph.insert_before(user, dequantize)
        user.replace_input_with(slot, dequantize.outputs[0])

    def _quantize(self, graph: ir.Graph, value: ir.Value, before: ir.Node) -> ir.Value:
        """``QuantizeLinear(value)`` with the calibrated range, inserted before ``before``; one per tensor."""
        if value.name in self._quantized_inputs:
            return self._quantized_inputs[value.name]
        scale, zero_point = activation_parameters(*self.ranges[value.name])
        inputs = [
            value,
            add_initializer(graph, f"{value.name}.scale", np.array(scale, dtype=np.float32)),
            add_initializer(graph, f"{value.name}.zero_point", np.array(zero_point, dtype=np.uint8)),
        ]
        quantize = ir.Node("", "QuantizeLinear", inputs, name=f"{value.name}_q")
        quantize.outputs[0].name = f"{value.name}.quantized"
        graph.insert_before(before, quantize)
        self._quantized_inputs[value.name] = quantize.outputs[0]
        return quantize.outputs[0]

    def _qdq(self, graph: ir.Graph, value: ir.Value, before: ir.Node) -> ir.Value:
        """``DequantizeLinear(QuantizeLinear(value))``, inserted before ``before``; one pair per tensor."""
        if value.name in self._quantized_values:
            return self._quantized_values[value.name]
        if any(value is dequantized for dequantized in self._quantized_values.values()):
            return value  # a Conv output already routed through its QDQ pair
        quantized = self._quantize(graph, value, before)
        dequantize = ir.Node("", "DequantizeLinear", [quantized, *quantized.producer().inputs[1:3]])
        dequantize.name = f"{value.name}_dq"
        dequantize.outputs[0].name = f"{value.name}.dequantized"
        dequantize.outputs[0].shape, dequantize.outputs[0].type = value.shape, value.type
        graph.insert_before(before, dequantize)
        self._quantized_values[value.name] = dequantize.outputs[0]
        return dequantize.outputs[0]

    def _quantize_output(self, graph: ir.Graph, node: ir.Node) -> None:
        """Route a Conv's users through a QDQ pair of its output: what lets ORT form QLinearConv."""
        if not _requantized_output(graph, node):
            return
        output = node.outputs[0]
        users = list(output.uses())
        first_user = min((user for user, _ in users), key=_position(graph))
        dequantized = self._qdq(graph, output, first_user)
        for user, index in users:
            user.replace_input_with(index, dequantized)


def _requantized_output(graph: ir.Graph, node: ir.Node) -> bool:
    """Whether a Conv's output gets a QDQ pair: when it has users, all in ``graph``.

    A graph output stays float, as do outputs read inside If/Loop bodies.
    """
    users = list(node.outputs[0].uses())
    return bool(users) and all(user.graph is graph for user, _ in users)


def _position(graph: ir.Graph):
    order = {id(node): index for index, node in enumerate(graph)}
    return lambda node: order[id(node)]


def _count(batches: Sequence[Mapping[str, np.ndarray]]) -> int:
    return sum(min((len(a) for a in batch.values() if np.ndim(a)), default=1) for batch in batches)

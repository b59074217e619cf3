"""Static int8 quantization in QDQ form, with activation ranges from calibration data.

The result stays a float graph with ``QuantizeLinear``/``DequantizeLinear`` pairs
that say where int8 applies; ONNX Runtime fuses them at load time into its integer
kernels (QLinearConv, MatMulIntegerToFloat, ...). Any ONNX tool can read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from optimizer.domains import onnx_opset
from optimizer.qdq_rewrites import float_layer_behind_dequantize, moves_dequantized
from optimizer.samples import holds_samples, samples_in
from passes._layers import Layer, bias_add, find_layers
from passes._utils import add_initializer, constant_array, remove_dead_nodes, unique_name, weight_array
from passes.quantization import calibration
from passes.quantization._attention import folded_weights, replace_with_qattention
from passes.quantization._base import QuantizationPass, optimistic_figure
from passes.quantization._int8 import (
    FULL_RANGE_MAX,
    REDUCED_RANGE_MAX,
    QuantizedWeight,
    activation_parameters,
    claimed_weight,
    quantize_bias,
    quantize_weight,
)
from passes.quantization._layer_speed import FLOAT, ConvShape, LayerShape, conv_probe, probe_names
from passes.quantization._twin import Int8Twin

_QDQ_OPSET = 13
# The oldest opset onnxscript's version converter targets.
_CONVERTED_OPSET = 18
# A bias stored as int32 keeps this much headroom below int32's largest value.
_BIAS_LIMIT = 2.0**30


class StaticQuantizationPass(QuantizationPass):
    """Rewrite float layers into QDQ int8 form, with activation scales fixed by calibration.

    - ``MatMul``, ``Gemm`` and ``Conv`` with constant weights: the data input goes through
      ``QuantizeLinear`` → ``DequantizeLinear`` (uint8, calibrated range), the weight
      becomes ``DequantizeLinear`` of an int8 initializer (per output channel with
      ``per_channel``), the bias (a Gemm's or Conv's, or a MatMul's following Add) int32
      at activation scale x weight scale. Where a weight channel is so small that its
      bias would not fit int32 at that scale (a dead channel of a folded BatchNorm), the
      channel's weight scale is raised until it does: ONNX Runtime forms its integer
      kernels only with an int32 bias.
    - Bias correction (Conv): the int8 weight's error times the layer input's mean per
      channel (measured on the calibration samples) shifts the mean of each output
      channel; the stored bias takes that shift back (``bias - (W_int8 - W) · E[x]``, the
      kernel's taps summed, padding counted as the mean). Depthwise kernels have 9 taps,
      whose rounding errors do not average out (EfficientNet-Lite0's held-out cosine
      0.9936 without, 0.9958 with).
    - A Conv's output gets a QDQ pair too, so ONNX Runtime can run ``QLinearConv``. When
      the Conv's only user is a ``Relu`` or a ``Clip`` from 0 (ReLU6), the pair goes after
      the activation, at the activation's calibrated range: uint8 with zero point 0 and a
      top at or below the Clip's maximum saturates exactly where the activation clamps,
      so ONNX Runtime drops the activation (ClipQuantFusion, ReluQuantFusion) and one
      ``QLinearConv`` computes Conv + activation + requantization.
    - A residual ``Add`` whose inputs are both such requantized tensors gets a QDQ pair on
      its output (after its Relu/ReLU6 where it has one, as a ResNet block's Add does;
      calibrated), so ONNX Runtime runs ``QLinearAdd`` and the chain of
      blocks stays in uint8 instead of going through float at every residual.
    - com.microsoft ``Attention`` with packed QKV weights becomes ``QuantizeLinear`` +
      ``QAttention`` with the calibrated input scale.

    The twin (kind ``"int8"``): the same steps in float — each layer's input through
    ``QuantizeLinear`` → ``DequantizeLinear`` at its calibrated scale, the dequantized
    int8 weight as a float constant, the (corrected) bias replaced by its int32 value times its scale,
    a Conv's output (or its Relu/Clip's, the activation kept) and each requantized
    residual Add's output through its pair, an Attention's ``scale`` folded and bias float.

    Ranges come from ``samples`` with ``method`` (minmax, percentile, entropy; see
    ``calibration``). Refuses (stays float) as ``DynamicQuantizationPass`` does, and
    entirely when no samples are given. Without a budget nothing is held out, and the summary's
    figure, and the report's ``accuracy_on``, say it is on the samples the ranges were taken from (``fitted_caveat``).
    """

    kinds = ("matmul", "gemm", "conv", "attention")
    measures_speed = True
    confirms_speed = True
    twin_inputs = (
        "at their calibrated scales, biases int32-dequantized, Conv outputs (after a Relu/ReLU6) and residual Adds"
        " requantized"
    )

    def __init__(self, *, method: str = "percentile", **options) -> None:
        super().__init__(**options)
        if method not in calibration.METHODS:
            raise ValueError(f"unknown calibration method {method!r}")
        self.method = method
        self.ranges: dict[str, tuple[float, float]] = {}
        self.input_means: dict[str, np.ndarray] = {}
        self._int8_layers: set[str] = set()
        self._requantized: set[str] = set()
        self._quantized_values: dict[str, ir.Value] = {}
        self._quantized_inputs: dict[str, ir.Value] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.samples is None:
            self.decline("no calibration samples: nothing quantized")
            return self.result(model, modified=False)
        opset = onnx_opset(model.opset_imports, 1)
        # Per-channel DequantizeLinear (its axis attribute) needs opset 13.
        result = self.call_converted(model, _CONVERTED_OPSET) if opset < _QDQ_OPSET else super().call(model)
        if opset < _QDQ_OPSET and result.modified:
            result.notes.insert(0, f"converted from opset {opset} to {_CONVERTED_OPSET} for QDQ")
        return result

    def fitted_caveat(self, smoothed: bool = False) -> str:
        # Ranges (and bias corrections) taken from the very rows the figure is measured on clip none of them: 4
        # heavy-tailed rows read cosine 0.9995 (worst sample 0.9989) where 64 new ones gave 0.989 (worst 0.75).
        fit = "its ranges" + (" and SmoothQuant's factors" if smoothed else "")
        return optimistic_figure(f"{fit} were taken from", self.budget)

    def prepare(self, model: ir.Model, layers: Sequence[Layer], batches: Sequence[Mapping[str, np.ndarray]]) -> None:
        names = [layer.activation.name for layer in layers]
        convs = [layer.node for layer in layers if layer.kind == "conv"]
        tails = [_output_tail(model.graph, node) for node in convs]
        requantized = [tail.outputs[0].name for tail in tails if tail is not None]
        names += requantized
        # Only requantized outputs: an Add reads a layer's input as the float tensor, not its quantized copy (a
        # ResNet block's Add of the stem's MaxPool output was counted as QLinearAdd and runs in float).
        adds = _residual_add_candidates(model.graph, requantized)
        names += adds
        # What reaches each layer quantized with every chosen layer int8 (``speed_shape``'s conversions).
        self._int8_layers = {layer.name for layer in layers}
        self._requantized = {tail.outputs[0].name for tail in tails if tail is not None} | set(adds)
        conv_inputs = list(dict.fromkeys(layer.activation.name for layer in layers if layer.kind == "conv"))
        # The Convs' input means (bias correction) summed on the ranges' first pass: one run of the samples fewer.
        self.ranges, self.input_means = calibration.calibrate_with_means(
            model, list(dict.fromkeys(names)), conv_inputs, batches, self.method
        )
        count = _count(model, batches)
        samples = f"{count} sample{'' if count == 1 else 's'}"
        self.note(f"calibrated {len(self.ranges)} activations ({self.method}) on {samples}")
        if convs:
            # Counted before any budget keeps a layer float: the budget's own notes say what it changed.
            int8 = "with every layer int8, " if self.budget is not None else ""
            folded = sum(tail is not None and tail is not node for tail, node in zip(tails, convs))
            activations = sum(
                len(users := list(node.outputs[0].uses())) == 1 and users[0][0].op_type in ("Relu", "Clip")
                for node in convs
            )
            self.note(
                f"{int8}{folded} of {activations} Conv activations (Relu, Clip) folded into the requantization "
                "after them"
                + ("" if folded == activations else "; the others are not Relu or Clip from a constant 0 (ReLU6)")
            )
            every_add = sum(node.op_type == "Add" and len(node.inputs) == 2 for node in model.graph)
            self.note(
                f"{int8}{len(adds)} of {every_add} Adds read two int8 tensors and are requantized with them "
                "(QLinearAdd)" + ("" if len(adds) == every_add else "; the others have a float or constant input")
            )

    def begin(self, layers: Sequence[Layer]) -> None:
        self._quantized_values = {}
        self._quantized_inputs: dict[str, ir.Value] = {}

    def _apply(self, model: ir.Model, names: Sequence[str]) -> None:
        super()._apply(model, names)
        if _keep_float_layers_float(model.graph):
            remove_dead_nodes(model)

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
        source = activation.producer().inputs[0].producer().inputs[0]  # DequantizeLinear ← QuantizeLinear ← x
        self._quantize_weights(graph, layer, constant_array(activation.producer().inputs[1]), source.name)
        if layer.kind == "conv":
            self._quantize_output(graph, node)

    def _quantize_weights(self, graph: ir.Graph, layer: Layer, activation_scale: np.ndarray, source: str) -> None:
        """Write ``layer``'s weight as ``DequantizeLinear`` of int8 and its bias as int32 at ``activation_scale`` times
        the weight's (a Conv's bias corrected on the mean of ``source``, its input before quantization)."""
        node = layer.node
        transposed = layer.kind == "gemm" and node.attributes.get_int("transB", 0)
        # Output channels of the stored weight: [K, N] MatMul/Gemm, [N, K] with transB, [M, ...] Conv.
        axis = 0 if layer.kind == "conv" or transposed else 1
        stored = layer.weight.T if transposed else layer.weight
        quantized = quantize_weight(stored, axis if self.per_channel else None, reduce_range=self.reduce_range)
        quantized = _fit_bias(quantized, stored, _bias_values(layer), activation_scale, self.reduce_range)
        bias = self._corrected_bias(layer, quantized, source)
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
        self._quantize_bias(graph, layer, bias, activation_scale * quantized.scale)

    # -- timing the layers for the budget ---------------------------------------------------------

    def speed_form(self, scheme: str, layer: Layer | None = None) -> str:
        form = super().speed_form(scheme, layer)
        return form if self.per_channel else f"{form} per-tensor weights"

    def untimed_reason(self, layers: Sequence[Layer]) -> str:
        attention = sum(layer.kind == "attention" for layer in layers)
        if attention:
            return f"not measured: {attention} Attention layers (QAttention) have no timing probe"
        return ""

    def speed_shape(self, layer: Layer, shape: tuple[int, ...], samples: int) -> LayerShape | ConvShape:
        """A Conv as it runs between int8 layers (``conv_probe``) on one sample's input; a MatMul or Gemm as the
        dynamic pass's layers are timed (``layer_probe``: float input, its QuantizeLinear counted)."""
        if layer.kind != "conv":
            return super().speed_shape(layer, shape, samples)
        weight = layer.weight.shape
        attributes = tuple(
            sorted(
                (
                    name,
                    tuple(attr.value)
                    if isinstance(attr.value, Sequence) and not isinstance(attr.value, str)
                    else attr.value,
                )
                for name, attr in layer.node.attributes.items()
                if name != "kernel_shape"
            )
        )
        tail = _output_tail(layer.node.graph, layer.node)
        return ConvShape(
            quantized_input=self._arrives_quantized(layer.activation),
            quantized_output=tail is not None and self._leaves_quantized(tail.outputs[0]),
            batch=max(1, shape[0] // samples),
            c=int(shape[1]),
            spatial=tuple(int(size) for size in shape[2:]),
            m=int(weight[0]),
            kernel=tuple(int(size) for size in weight[2:]),
            attributes=attributes,
            bias=_bias_values(layer) is not None,
        )

    def _arrives_quantized(self, value: ir.Value) -> bool:
        """Whether ``value`` is, with every chosen layer int8, a requantized output (an int8 layer's, a residual
        Add's), directly or through ops ONNX Runtime runs on the quantized values (MaxPool, Reshape, ...)."""
        while value.name not in self._requantized:
            producer = value.producer()
            if producer is None or not moves_dequantized(producer):
                return False
            value = producer.inputs[0]
        return True

    def _leaves_quantized(self, value: ir.Value) -> bool:
        """Whether every reader of ``value`` reads it quantized with every chosen layer int8: an int8 layer, a
        requantized residual Add, or an op ONNX Runtime runs on the quantized values whose readers all do. A
        graph output, or a float reader (a HardSwish, a squeeze-excite Mul), needs it dequantized."""
        readers = list(value.uses())
        if value.is_graph_output() or not readers:
            return False
        for reader, index in readers:
            if index == 0 and reader.name in self._int8_layers:
                continue
            if reader.op_type == "Add" and (after := _output_tail(reader.graph, reader)) is not None:
                if after.outputs[0].name in self._requantized:
                    continue
            if index == 0 and moves_dequantized(reader):
                if self._leaves_quantized(reader.outputs[0]):
                    continue
            return False
        return True

    def _layer_model(self, shape: LayerShape | ConvShape, scheme: str, layer: Layer | None = None) -> ir.Model:
        """The timing probe in ``scheme``: a Conv's (``conv_probe``) with each copy's weight and bias written by
        ``_quantize_weights``, which ONNX Runtime then runs as ``QLinearConv``; a MatMul's rewritten by the pass at
        a made-up input range (the kernels' speed does not depend on it)."""
        if isinstance(shape, ConvShape):
            model = conv_probe(shape, int8=scheme != FLOAT)
            if scheme == FLOAT:
                _keep_float_layers_float(model.graph)  # as the pass writes a float layer after an int8 one
            else:
                graph = model.graph
                for probe in find_layers(graph, ("conv",))[0]:
                    scale = constant_array(probe.activation.producer().inputs[1])
                    self._quantize_weights(graph, probe, scale, "")
            remove_dead_nodes(model)
            return model
        saved = self.ranges
        self.ranges = {**saved, **{f"{name}.x": (-4.0, 4.0) for name in probe_names(shape)}}
        try:
            return super()._layer_model(shape, scheme, layer)
        finally:
            self.ranges = saved

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
        quantized = _fit_bias(quantized, layer.weight, _bias_values(layer), np.float32(scale), self.reduce_range)
        twin.set_weight(layer, claimed_weight(layer.weight, quantized, layer.name))
        bias = self._corrected_bias(layer, quantized, twin.source(layer.activation).name)
        if layer.bias is not None:
            user, slot = node, 2
        elif (following := bias_add(layer)) is not None:
            _, user, slot = following
        if bias is not None:
            bias_scale = (np.float32(scale) * quantized.scale).astype(np.float32)
            values = quantize_bias(bias, bias_scale)
            if values is not None:
                twin.set_input(user, slot, values.astype(np.float32) * bias_scale)
        tail = _output_tail(twin.model.graph, node) if layer.kind == "conv" else None
        if tail is not None:
            twin.quantize_output(tail, *activation_parameters(*self.ranges[tail.outputs[0].name]))
            self._twin_residual_adds(twin)

    def _twin_residual_adds(self, twin: Int8Twin) -> None:
        """Requantize, in the twin, every calibrated Add whose inputs are all dequantized sides of pairs."""
        graph = twin.model.graph
        changed = True
        while changed:
            changed = False
            for node in list(graph):
                if node.op_type != "Add" or not all(
                    value is not None and twin.source(value) is not value for value in node.inputs
                ):
                    continue
                tail = _output_tail(graph, node)
                output = tail.outputs[0] if tail is not None else None
                if output is not None and output.name in self.ranges and not _twin_requantized(twin, output):
                    twin.quantize_output(tail, *activation_parameters(*self.ranges[output.name]))
                    changed = True

    def _corrected_bias(self, layer: Layer, quantized: QuantizedWeight, source: str) -> np.ndarray | None:
        """The bias to store: a Conv's minus its int8 weight's mean error ``(W_int8 - W) · E[x]``; others unchanged."""
        bias = _bias_values(layer)
        means = self.input_means.get(source) if layer.kind == "conv" else None
        if bias is None or means is None:
            return bias
        error = quantized.dequantize().astype(np.float64) - layer.weight.astype(np.float64)
        taps = error.reshape(error.shape[0], error.shape[1], -1).sum(axis=2)  # [M, C/groups]
        per_group = taps.shape[1]
        groups = len(means) // per_group
        grouped = taps.reshape(groups, taps.shape[0] // groups, per_group)
        shift = np.einsum("gok,gk->go", grouped, means.astype(np.float64).reshape(groups, per_group))
        return (bias.astype(np.float64) - shift.reshape(-1)).astype(np.float32)

    def _quantize_bias(self, graph: ir.Graph, layer: Layer, bias: np.ndarray | None, scale: np.ndarray) -> None:
        """Store the bias as int32 at ``activation scale * weight scale``, behind a DequantizeLinear.

        ONNX Runtime fuses QDQ MatMul + bias Add and QDQ Gemm into its integer kernels
        only with a bias in this form; with a float bias it runs them in float.
        """
        if bias is None:
            return
        if layer.bias is not None:
            user, slot = layer.node, 2
        else:
            _, user, slot = bias_add(layer)
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
        """Route a Conv's users through a QDQ pair of its output (after its Relu/Clip): what lets ORT
        form QLinearConv; then requantize the residual Adds this completes."""
        tail = _output_tail(graph, node)
        if tail is None:
            return
        self._requantize(graph, tail)
        self._quantize_residual_adds(graph, tail.outputs[0])

    def _requantize(self, graph: ir.Graph, node: ir.Node) -> ir.Value:
        output = node.outputs[0]
        users = list(output.uses())
        first_user = min((user for user, _ in users), key=_position(graph))
        dequantized = self._qdq(graph, output, first_user)
        for user, index in users:
            user.replace_input_with(index, dequantized)
        return dequantized

    def _quantize_residual_adds(self, graph: ir.Graph, value: ir.Value) -> None:
        """Requantize each Add reading ``value`` (requantized) whose other input is requantized too
        (after the Add's Relu/ReLU6, as for a Conv).

        Then ONNX Runtime runs it as QLinearAdd. An Add whose other input is not (yet)
        int8 is left for the layer that quantizes that input to complete.
        """
        dequantized = self._quantized_values.get(value.name)
        if dequantized is None:
            return
        produced = {id(v) for v in self._quantized_values.values()}
        for user, _ in list(dequantized.uses()):
            if user.op_type != "Add" or not all(v is not None and id(v) in produced for v in user.inputs):
                continue
            tail = _output_tail(graph, user)
            output = tail.outputs[0] if tail is not None else None
            if output is not None and output.name in self.ranges and output.name not in self._quantized_values:
                self._requantize(graph, tail)
                self._quantize_residual_adds(graph, output)


def _keep_float_layers_float(graph: ir.Graph) -> list[ir.Node]:
    """Give each float Conv, ConvTranspose or Gemm that reads a single-scale ``DequantizeLinear`` (directly, or
    through the ops ONNX Runtime moves it past) a dequantization of its own, spelled per channel (the one scale
    and zero point repeated along the layer's input channels), after its own copy of those ops run on the
    quantized values; returns those layers.

    A requantized Conv output (or residual Add) is read through its ``DequantizeLinear`` by every user,
    the layers kept float too. ONNX Runtime's rewrites (``optimizer.qdq_rewrites``) take such a layer for
    a QDQ one whose weight was left unquantized and quantize its float32 weight to int8 with one scale
    for the whole tensor: the layer runs in int8 after all, less accurately than the per-channel int8 it
    was kept float instead of (on EfficientNet-Lite0 one depthwise conv "kept float" this way took the
    worst held-out photograph's logits cosine from 0.979 to 0.856). They look only at single scales; the
    same values dequantized per channel compute exactly what they did and leave the layer float. The ops
    between (``MaxPool``, ``Reshape``, ``Transpose``, ``Squeeze``, ``Unsqueeze``, ``Slice``) commute with a
    dequantization, as ONNX Runtime's own propagation has them: the copies run on the uint8 values and the
    dequantization comes last, where the layer's weight says how many channels it reads.
    """
    shielded = []
    names = {node.name for node in graph}
    for node in list(graph):
        found = float_layer_behind_dequantize(node)
        if found is None:
            continue
        source, between = found
        scale = constant_array(source.inputs[1])
        has_point = len(source.inputs) > 2 and source.inputs[2] is not None
        point = constant_array(source.inputs[2]) if has_point else None
        if scale is None or (has_point and point is None):
            continue
        if (weight := weight_array(node.inputs[1])) is None:
            continue
        axis, channels = _channel_axis(node, weight.shape)
        if channels < 2:  # one channel's scale would be a single one again: repeat it along another axis
            axis, channels = _wide_axis(node.inputs[0].shape)
        if channels < 2:
            continue  # left as it is: verification refuses what ONNX Runtime makes of it
        base = node.name or node.outputs[0].name
        value = source.inputs[0]
        for op in between:  # its own copy of the ops between, on the quantized values
            extra = _uint8_copy(op, point)
            if extra is None:
                continue  # dropped by ONNX Runtime: its input is its output
            name = unique_name(f"{op.name or op.op_type}_for_{base}", names)
            extra = [
                add_initializer(graph, f"{name}.pad_value", item) if isinstance(item, np.ndarray) else item
                for item in extra
            ]
            copy = ir.Node(
                op.domain,
                op.op_type,
                [value, *extra],
                attributes=list(op.attributes.values()),
                name=name,
                version=op.version,
            )
            copy.outputs[0].name = f"{copy.name}.quantized"
            copy.outputs[0].shape, copy.outputs[0].type = op.outputs[0].shape, source.inputs[0].type
            graph.insert_before(node, copy)
            value = copy.outputs[0]
        inputs = [
            value,
            add_initializer(graph, f"{base}.input_scale_per_channel", np.full(channels, scale.reshape(()), np.float32)),
        ]
        if point is not None:
            per_channel = np.full(channels, point.reshape(()), point.dtype)
            inputs.append(add_initializer(graph, f"{base}.input_zero_point_per_channel", per_channel))
        own = ir.Node(
            "",
            "DequantizeLinear",
            inputs,
            attributes=[ir.AttrInt64("axis", axis)],
            name=unique_name(f"{base}_float_input_dq", names),
        )
        data = node.inputs[0]
        own.outputs[0].name, own.outputs[0].shape, own.outputs[0].type = f"{base}.float_input", data.shape, data.type
        graph.insert_before(node, own)
        node.replace_input_with(0, own.outputs[0])
        shielded.append(node)
    return shielded


def _uint8_copy(op: ir.Node, zero_point: np.ndarray | None) -> list[ir.Value | np.ndarray | None] | None:
    """The inputs after the first of ``op``'s copy on the quantized values (``_keep_float_layers_float``): the
    same for ops that only move values; None for a Dropout or a float32-to-float32 Cast, which ONNX Runtime drops
    (no copy: its input is its output); for a ``Pad`` (constant 0, as ``float_layer_behind_dequantize`` admits
    only those), its pad value as the quantized zero (``zero_point``, an array to store)."""
    if op.op_type in ("Dropout", "Cast"):
        return None
    if op.op_type != "Pad":
        return list(op.inputs[1:])
    zero = np.asarray(zero_point).reshape(()) if zero_point is not None else np.array(0, np.uint8)
    return [op.inputs[1], zero, *op.inputs[3:]]


def _wide_axis(shape: ir.Shape | None) -> tuple[int, int]:
    """An axis of ``shape`` with a known size of at least 2, and that size; (0, 0) where there is none."""
    for axis, dim in enumerate(shape or []):
        if isinstance(dim, int) and dim >= 2:
            return axis, dim
    return 0, 0


def _channel_axis(node: ir.Node, weight_shape: Sequence[int]) -> tuple[int, int]:
    """The axis of a layer's data input along which its weight reads channels, and their count."""
    if node.op_type == "Conv":
        return 1, int(weight_shape[1]) * node.attributes.get_int("group", 1)
    if node.op_type == "ConvTranspose":
        return 1, int(weight_shape[0])
    transposed_input = node.attributes.get_int("transA", 0)
    features = int(weight_shape[1] if node.attributes.get_int("transB", 0) else weight_shape[0])
    return (0 if transposed_input else 1), features


def _output_tail(graph: ir.Graph, node: ir.Node) -> ir.Node | None:
    """The node whose output carries a quantized Conv's (or residual Add's) requantized result, or None
    when it stays float.

    The node's only user when that is a ``Relu`` or a ``Clip`` with a constant minimum of 0
    (ONNX Runtime folds either into the following QuantizeLinear when its uint8 zero
    point is 0, which a calibrated range starting at 0 gives); otherwise the node itself.
    """
    if not _requantized_output(graph, node):
        return None
    users = list(node.outputs[0].uses())
    if len(users) == 1 and not node.outputs[0].is_graph_output():
        user, index = users[0]
        if index == 0 and _is_zero_floored_activation(user) and _requantized_output(graph, user):
            return user
    return node


def _is_zero_floored_activation(node: ir.Node) -> bool:
    """Relu, or Clip whose minimum is the constant 0 and whose maximum is a positive constant (ReLU6)."""
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip" or len(node.inputs) != 3 or any(v is None for v in node.inputs[1:]):
        return False
    low, high = (constant_array(v) for v in node.inputs[1:])
    return low is not None and high is not None and np.ndim(low) == 0 and low == 0 and np.ndim(high) == 0 and high > 0


def _residual_add_candidates(graph: ir.Graph, int8_names: Sequence[str]) -> list[str]:
    """Requantized outputs (the Add's, or its Relu/ReLU6's) of the Adds, in graph order, whose inputs are
    all requantized outputs named in ``int8_names`` (Conv outputs) or earlier such outputs."""
    known = set(int8_names)
    found = []
    for node in graph:
        if node.op_type == "Add" and node.domain in ("", "ai.onnx") and len(node.inputs) == 2:
            tail = _output_tail(graph, node)
            if tail is not None and all(v is not None and v.name in known for v in node.inputs):
                known.add(tail.outputs[0].name)
                found.append(tail.outputs[0].name)
    return found


def _bias_values(layer: Layer) -> np.ndarray | None:
    """The layer's bias (its own, or a MatMul's following Add), or None."""
    if layer.bias is not None:
        return np.asarray(layer.bias, dtype=np.float32)
    following = bias_add(layer)
    return None if following is None else np.asarray(following[0], dtype=np.float32)


def _fit_bias(
    quantized: QuantizedWeight, stored: np.ndarray, bias: np.ndarray | None, activation_scale, reduce_range: bool
) -> QuantizedWeight:
    """``quantized`` with each output channel's scale raised where its bias would not fit int32.

    The bias is stored as ``round(bias / (activation scale x weight scale))``; a channel whose
    weights are all but zero (a BatchNorm-folded dead channel: peaks of 1e-9) gets a scale so
    small that a bias of 0.1 overflows int32. Raising that channel's scale until
    ``|bias| / scale`` is at most 2**30 keeps the bias int32 (what lets ONNX Runtime form its
    integer kernel) and rounds the channel's tiny weights to zero or near it.
    """
    if bias is None:
        return quantized
    # An infinite or NaN bias entry fits no int32 at any scale (it made every scale infinite, and the pass failed):
    # the bias then stays float (``quantize_bias``), and the weight's scales stay its own.
    bias = np.where(np.isfinite(bias), bias, 0.0)
    needed = np.abs(np.asarray(bias, dtype=np.float64)) / (float(np.asarray(activation_scale)) * _BIAS_LIMIT)
    scale = np.asarray(quantized.scale, dtype=np.float64)
    if quantized.axis is None:
        needed = needed.max(initial=0.0)
    if np.all(scale >= needed):
        return quantized
    raised = np.maximum(scale, needed).astype(np.float32)
    limit = REDUCED_RANGE_MAX if reduce_range else FULL_RANGE_MAX
    if quantized.axis is None:
        values = np.clip(np.rint(stored / raised), -limit, limit).astype(np.int8)
        return QuantizedWeight(values, raised.reshape(()), None)
    shape = [1] * np.ndim(stored)
    shape[quantized.axis] = -1
    values = np.clip(np.rint(stored / raised.reshape(shape)), -limit, limit).astype(np.int8)
    return QuantizedWeight(values, raised, quantized.axis)


def _twin_requantized(twin: Int8Twin, value: ir.Value) -> bool:
    """Whether ``value`` already goes through a twin quantize-dequantize pair."""
    return any(
        twin.source(dequantize.outputs[0]) is value
        for quantize, _ in value.uses()
        if quantize.op_type == "QuantizeLinear"
        for dequantize, _ in quantize.outputs[0].uses()
    )


def _requantized_output(graph: ir.Graph, node: ir.Node) -> bool:
    """Whether a Conv's output gets a QDQ pair: when it has users, all in ``graph``.

    A graph output stays float, as do outputs read inside If/Loop bodies.
    """
    users = list(node.outputs[0].uses())
    return bool(users) and all(user.graph is graph for user, _ in users)


def _position(graph: ir.Graph):
    order = {id(node): index for index, node in enumerate(graph)}
    return lambda node: order[id(node)]


def _count(model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]]) -> int:
    holds = holds_samples(model)  # a state [2, batch, H] or a table [S, K] beside the samples does not count
    return sum(samples_in(batch, holds) for batch in batches)

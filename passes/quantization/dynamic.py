"""Dynamic int8 quantization: int8 weights stored in the model, activations quantized at run time.

This is the CPU workhorse for transformers: no calibration data is needed, and each
activation gets its own range on every run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, onnx_opset
from passes._layers import Layer, bias_add, find_layers
from passes._utils import add_initializer, replace_value
from passes.quantization import _base, smoothing
from passes.quantization._attention import folded_weights, replace_with_qattention
from passes.quantization._base import QuantizationPass
from passes.quantization._int8 import (
    ROW_LEVELS,
    ROW_SCALE_FLOOR,
    ROW_ZERO_POINT,
    claimed_weight,
    quantize_weight,
)
from passes.quantization._twin import Int8Twin

# ONNX Runtime (1.32, ORT_ENABLE_ALL) fuses DequantizeLinear(int8 weight) -> MatMul into
# com.microsoft MatMulNBits with bits 8, this block size and accuracy_level 4: the kernel rounds
# its input to int8 per row and block of 32 along K (its session default), so "weight-only"
# int8 runs with int8 activations at a scale per 32 values, which its twin claims.
WEIGHT_ONLY_BLOCK = 32
# The largest |w_2i| + |w_2i+1| whose pair sum of u8 x s8 products fits int16: 255 * 128 <= 32767.
SATURATION_FREE_PAIR = 128
# Per-row scales are written with QuantizeLinear, which needs opset 10; older models are converted to the oldest
# opset onnxscript's version converter targets.
_ROW_OPSET = 10
_CONVERTED_OPSET = 18
# Producers whose output SmoothQuant can rescale (see passes.quantization.smoothing).
_SMOOTHABLE_PRODUCERS = (
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "Mul",
)


class DynamicQuantizationPass(QuantizationPass):
    """Rewrite float layers with constant weights into ONNX Runtime's dynamic int8 operators.

    - ``MatMul`` (``[..., K] x [K, N]``) and ``Gemm`` (transA, alpha, beta and a C that is no feature bias written
      out first by ``QuantizationPass.call``) become
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

    With ``activation_scale="row"`` a MatMul/Gemm's input gets one scale per row (per
    token) instead of one per tensor: symmetric int8 at ``max|x_row| / 127``, computed by
    plain ops (``Abs``, ``ReduceMax``, ``Div``, ``Round``) and stored as uint8 shifted by
    128, then com.microsoft ``MatMulIntegerToFloat`` with a ``[..., rows, 1]`` activation
    scale (ONNX Runtime multiplies the scales into the integer product elementwise). A
    decoder's few tokens with massive activations (SmolLM2-135M: one token 2,000x the
    median at a down projection's input) then no longer set every token's step. Its twin
    reads the input through the same per-row rounding written as float ops. Packed-QKV
    ``Attention`` keeps a per-tensor scale (``QAttention`` takes a scalar). A model below
    opset 10 (which lacks ``QuantizeLinear``) is converted to opset 18 first, as
    ``StaticQuantizationPass`` converts one below 13.

    Under an accuracy budget a layer may instead be written in an alternative scheme the
    search found cheaper than float (``QuantizationPass``): ``"row"`` (per-row scales
    for that layer only), ``"smooth"`` (SmoothQuant at alpha 0.5 on the norm feeding it,
    offered where a norm's output is read by layers only), ``"w8"`` (8-bit weights for a
    7-bit pass, offered only where no pair of adjacent int8 weights along K sums past
    128 in magnitude, so the int16 pair sums of x86 kernels without VNNI cannot saturate
    on any uint8 input), and ``"weight-only"`` (MatMul only: an int8 weight through
    ``DequantizeLinear`` into the MatMul, which ONNX Runtime 1.32 fuses into ``MatMulNBits``
    with 8 bits, rounding the input to int8 per row and block of 32 at accuracy_level 4;
    its twin is the dequantized weight with the input rounded so, as int4's twin does).
    Each layer's kernels are timed on this machine for the search
    (``passes.quantization._layer_speed``).

    Refuses (layer stays float): non-float32 tensors, non-constant weights, Attention with
    past/attention_bias/rotary inputs. Conv is not handled: ONNX Runtime's ConvInteger measured many
    times slower than float Conv on CPU; use static quantization for CNNs. See ``QuantizationPass``
    for which layers stay float (``exclude``, model outputs, the accuracy budget).
    """

    kinds = ("matmul", "gemm", "attention")
    twin_inputs = "through DynamicQuantizeLinear"
    measures_speed = True

    def __init__(self, *, activation_scale: Literal["tensor", "row"] = "tensor", **options) -> None:
        super().__init__(**options)
        if activation_scale not in ("tensor", "row"):
            raise ValueError(f"activation_scale {activation_scale!r}: expected 'tensor' or 'row'")
        self.activation_scale = activation_scale
        if activation_scale == "row":
            self.twin_inputs = "through per-row symmetric int8 (max|row| / 127)"
        self._shared: dict[tuple[str, str], tuple[ir.Value, ...] | None] = {}
        # Layers given "w8" whose rows SmoothQuant rescaled so that 8-bit weights could saturate (``_reduce_range``),
        # in the last rewrite: the result's.
        self._saturating: set[str] = set()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._saturating = set()
        opset = onnx_opset(model.opset_imports, 1)
        converts = self.activation_scale == "row" and opset < _ROW_OPSET
        result = self.call_converted(model, _CONVERTED_OPSET) if converts else super().call(model)
        if converts and result.modified:
            result.notes.insert(0, f"converted from opset {opset} to {_CONVERTED_OPSET} for per-row QuantizeLinear")
        if result.modified and self._saturating:
            names = sorted(self._saturating)
            result.notes.append(
                f"8-bit weights the budget chose written 7-bit for {', '.join(names[:6])}"
                f"{' and more' if len(names) > 6 else ''}: SmoothQuant, run for a layer reading the same norm, "
                "rescaled their rows so that an adjacent pair of 8-bit weights could saturate the int16 sums of x86 "
                "kernels without VNNI"
            )
        return result

    def layer_label(self, layer: Layer) -> str:
        # A "w8" layer kept 7-bit (``_reduce_range``) is written as the default's int8.
        return self.precision if layer.name in self._saturating else super().layer_label(layer)

    def alternatives(self, layer: Layer) -> tuple[str, ...]:
        found = []
        # Per-row scales are written with QuantizeLinear, which needs opset 10.
        if layer.kind != "attention" and self.activation_scale == "tensor" and _opset(layer.node) >= 10:
            found.append("row")
        if self.smooth_alpha is None and _read_from_norm(layer):
            found.append("smooth")
        if self.reduce_range and cannot_saturate(layer.weight, self.per_channel):
            found.append("w8")
        # Per channel, DequantizeLinear's axis needs opset 13.
        if layer.kind == "matmul" and (not self.per_channel or _opset(layer.node) >= 13):
            found.append("weight-only")
        return tuple(found)

    def speed_form(self, scheme: str, layer: Layer | None = None) -> str:
        if scheme in ("int8", "smooth", "w8"):
            scheme = self.activation_scale
        return {
            "tensor": "DynamicQuantizeMatMul",
            "row": "per-row quantizer + MatMulIntegerToFloat",
            "weight-only": "DequantizeLinear + MatMul",
        }.get(scheme, scheme)

    def begin(self, layers: Sequence[Layer]) -> None:
        # Activations read by several layers (Q/K/V or gate/up projections of one norm
        # output) are quantized once: one quantizer + one MatMulIntegerToFloat each.
        readers = Counter(self._activation_key(layer) for layer in layers if self.scheme(layer) != "weight-only")
        # A shared per-tensor quantizer is DynamicQuantizeLinear, which needs opset 11: below it each layer
        # quantizes its own input (DynamicQuantizeMatMul).
        shares = not layers or _opset(layers[0].node) >= 11
        self._shared = {key: None for key, count in readers.items() if (count > 1 and shares) or key[1] == "row"}
        self._saturating = set()

    def quantize_layer(self, graph: ir.Graph, layer: Layer) -> None:
        reduce_range = self._reduce_range(layer)
        if self.scheme(layer) == "weight-only":
            _dequantized_weight(graph, layer, self.per_channel, reduce_range)
            return
        key = self._activation_key(layer)
        activation = self._quantized_activation(graph, layer, key) if key in self._shared else None
        if layer.kind == "attention":
            activation = activation or _quantize_input(graph, layer)
            replace_with_qattention(graph, layer, activation, per_channel=self.per_channel, reduce_range=reduce_range)
        else:
            _quantize_matmul(graph, layer, self.per_channel, reduce_range, activation, key[1] == "row")

    def twin_layer(self, twin: Int8Twin, layer: Layer) -> None:
        axis = 1 if self.per_channel else None
        reduce_range = self._reduce_range(layer)
        if self.scheme(layer) == "weight-only":
            from passes.quantization.int4 import _quantize_input_blocks  # int4 imports this module

            quantized = quantize_weight(layer.weight, axis, reduce_range=reduce_range)
            twin.set_weight(layer, claimed_weight(layer.weight, quantized, layer.name))
            _quantize_input_blocks(twin.model, layer, WEIGHT_ONLY_BLOCK)
            return
        if self._activation_key(layer)[1] == "row":
            quantized = quantize_weight(layer.weight, axis, reduce_range=reduce_range)
            claimed_weight(layer.weight, quantized, layer.name)
            twin.quantize_layer_rows(layer, quantized)
            return
        twin.quantize_input(layer)
        if layer.kind == "attention":
            weight, bias = folded_weights(layer)
            twin.set_weight(
                layer, claimed_weight(weight, quantize_weight(weight, axis, reduce_range=reduce_range), layer.name)
            )
            twin.set_input(layer.node, 2, bias)
            layer.node.attributes.pop("scale", None)
        else:
            quantized = quantize_weight(layer.weight, axis, reduce_range=reduce_range)
            twin.set_weight(layer, claimed_weight(layer.weight, quantized, layer.name))

    def _reduce_range(self, layer: Layer) -> bool:
        if self.scheme(layer) != "w8":
            return self.reduce_range
        # "w8" is offered where no adjacent pair of 8-bit weights can saturate; SmoothQuant run for another layer
        # reading the same norm (its "smooth" scheme) rescales this layer's rows too, after the offer: checked on
        # the weight as written (a pair summed 156 after it), else 7-bit weights, with a note.
        if cannot_saturate(layer.weight, self.per_channel):
            return False
        self._saturating.add(layer.name)
        return self.reduce_range

    def _sensitivity(self, model: ir.Model, layers: list[Layer], batches, reference) -> dict[str, float]:
        # Beyond _base._EXHAUSTIVE_LAYERS the base class ranks layers by a local estimate with one
        # scale per tensor; per row that ranks first the layers per-row scales already fix
        # (a decoder's down projections), so the estimate here rounds each row as the kernel does.
        if self.activation_scale != "row" or len(layers) <= _base._EXHAUSTIVE_LAYERS:
            return super()._sensitivity(model, layers, batches, reference)
        current = {layer.name: layer for layer in find_layers(model.graph, self.kinds)[0]}  # weights after smoothing
        scores = _row_local_errors(
            model, [current.get(layer.name, layer) for layer in layers], batches, self.per_channel, self.reduce_range
        )
        self.note(
            f"sensitivity of {len(layers)} layers estimated locally (relative error of each layer's output, "
            "int8 weights and per-row int8 inputs)"
        )
        return scores

    def _activation_key(self, layer: Layer) -> tuple[str, str]:
        """The layer's input and how it is quantized: per row, or per tensor (always for QAttention)."""
        if layer.kind == "attention":
            scale = "tensor"
        else:
            scale = "row" if self.scheme(layer) == "row" else self.activation_scale
        return layer.activation.name, scale

    def _quantized_activation(self, graph: ir.Graph, layer: Layer, key: tuple[str, str]) -> tuple[ir.Value, ...]:
        if self._shared[key] is None:
            quantize = _quantize_input_rows if key[1] == "row" else _quantize_input
            self._shared[key] = quantize(graph, layer)
        return self._shared[key]


def _quantize_matmul(
    graph: ir.Graph,
    layer: Layer,
    per_channel: bool,
    reduce_range: bool,
    activation: tuple[ir.Value, ...] | None,
    per_row: bool = False,
) -> None:
    """DynamicQuantizeMatMul, or MatMulIntegerToFloat on an already quantized ``activation``
    (``per_row``: its scale has one value per row)."""
    node = layer.node
    quantized = quantize_weight(layer.weight, 1 if per_channel else None, reduce_range=reduce_range)
    prefix = node.name
    weight = add_initializer(graph, f"{prefix}.weight_int8", quantized.values)
    scale = add_initializer(graph, f"{prefix}.weight_scale", quantized.scale)
    zero_point = add_initializer(graph, f"{prefix}.weight_zero_point", quantized.zero_point)
    # ONNX Runtime 1.32's MatMulIntegerToFloat adds a bias input wrongly when the activation
    # scale has one value per row (off by up to a third of the output on a small MLP), so with
    # per-row scales the bias stays a separate Add: a following one is left in place, a Gemm's
    # own bias gets one.
    result, bias = node.outputs[0], layer.bias
    if bias is None and not per_row and (following := bias_add(layer)) is not None:
        bias, add, _ = following
        result = add.outputs[0]
    bias = add_initializer(graph, f"{prefix}.bias", bias.astype(np.float32)) if bias is not None else None
    if activation is None:
        inputs, op_type = [layer.activation, weight, scale, zero_point, bias], "DynamicQuantizeMatMul"
    else:
        values, activation_scale, activation_zero_point = activation
        inputs = [values, weight, activation_scale, scale, activation_zero_point, zero_point]
        inputs.append(None if per_row else bias)
        op_type = "MatMulIntegerToFloat"
    while inputs[-1] is None:
        inputs.pop()
    fused = ir.Node(MS_DOMAIN, op_type, inputs, name=f"{prefix}_int8")
    added = [fused]
    if per_row and bias is not None:
        added.append(ir.Node("", "Add", [fused.outputs[0], bias], name=f"{prefix}_bias"))
    graph.insert_before(node, added)
    replace_value(result, added[-1].outputs[0], inherit=True)


def _opset(node: ir.Node) -> int:
    graph = node.graph
    return onnx_opset(graph.opset_imports, 1) if graph is not None else 1


def _dequantized_weight(graph: ir.Graph, layer: Layer, per_channel: bool, reduce_range: bool) -> None:
    """Weight-only int8: the MatMul reads its weight from ``DequantizeLinear`` of the int8 values."""
    node = layer.node
    quantized = quantize_weight(layer.weight, 1 if per_channel else None, reduce_range=reduce_range)
    prefix = node.name
    inputs = [
        add_initializer(graph, f"{prefix}.weight_int8", quantized.values),
        add_initializer(graph, f"{prefix}.weight_scale", quantized.scale),
        add_initializer(graph, f"{prefix}.weight_zero_point", quantized.zero_point),
    ]
    attributes = [ir.AttrInt64("axis", 1)] if per_channel else []
    dequantize = ir.Node("", "DequantizeLinear", inputs, attributes=attributes, name=f"{prefix}_weight_dequantize")
    dequantize.outputs[0].name = f"{prefix}.weight_dequantized"
    graph.insert_before(node, dequantize)
    node.replace_input_with(1, dequantize.outputs[0])


def cannot_saturate(weight: np.ndarray, per_channel: bool) -> bool:
    """Whether 8-bit int8 weights of ``weight`` ``[K, N]`` are safe on x86 kernels without VNNI.

    Those kernels (``vpmaddubsw``) add the u8 x s8 products of adjacent pairs along K in
    int16: with activations up to 255, a pair is safe while ``|w_2i| + |w_2i+1| <= 128``
    (``255 * 128 <= 32767``). Checked for every pair, so no input can saturate.
    """
    values = np.abs(quantize_weight(weight, 1 if per_channel else None, reduce_range=False).values.astype(np.int32))
    if len(values) % 2:
        values = np.concatenate([values, np.zeros((1, values.shape[1]), dtype=np.int32)])
    return bool((values[0::2] + values[1::2]).max(initial=0) <= SATURATION_FREE_PAIR)


def _read_from_norm(layer: Layer) -> bool:
    """Whether SmoothQuant could rescale this layer's input: it comes from a norm (or a per-channel ``Mul``)
    and only MatMul-like layers read it (a residual reader would see the rescaled values)."""
    producer = layer.activation.producer()
    if producer is None or producer.op_type not in _SMOOTHABLE_PRODUCERS or layer.activation.is_graph_output():
        return False
    if producer.op_type == "Mul" and not any(
        # a norm's scale (a constant vector) or a gated product (one side a MatMul's output): GELU's Mul is neither
        value is not None and (value.const_value is not None or getattr(value.producer(), "op_type", "") == "MatMul")
        for value in producer.inputs
    ):
        return False
    readers = smoothing.data_uses(layer.activation)
    return all(user.op_type in ("MatMul", "Gemm", "Attention") and index == 0 for user, index in readers)


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


def _quantize_input_rows(graph: ir.Graph, layer: Layer) -> tuple[ir.Value, ...]:
    """Symmetric int8 per row of the layer's input, stored as uint8 + 128: (values, ``[..., 1]`` scales, 128)."""
    source = layer.activation
    prefix = source.name
    opset = onnx_opset(graph.opset_imports, 1)
    magnitude = ir.Node("", "Abs", [source], name=f"{prefix}_row_abs")
    if opset >= 18:  # ReduceMax's axes became an input at opset 18
        axes = add_initializer(graph, f"{prefix}.row_axes", np.array([-1], dtype=np.int64))
        peak = ir.Node("", "ReduceMax", [magnitude.outputs[0], axes], attributes=[ir.AttrInt64("keepdims", 1)])
    else:
        peak = ir.Node(
            "",
            "ReduceMax",
            [magnitude.outputs[0]],
            attributes=[ir.AttrInt64s("axes", [-1]), ir.AttrInt64("keepdims", 1)],
        )
    peak.name = f"{prefix}_row_peak"
    levels = add_initializer(graph, f"{prefix}.row_levels", np.array(ROW_LEVELS, dtype=np.float32))
    floor = add_initializer(graph, f"{prefix}.row_scale_floor", np.array(ROW_SCALE_FLOOR, dtype=np.float32))
    unit = add_initializer(graph, f"{prefix}.row_unit_scale", np.array(1.0, dtype=np.float32))
    zero_point = add_initializer(graph, f"{prefix}.row_zero_point", np.array(ROW_ZERO_POINT, dtype=np.uint8))
    step = ir.Node("", "Div", [peak.outputs[0], levels], name=f"{prefix}_row_step")
    scale = ir.Node("", "Max", [step.outputs[0], floor], name=f"{prefix}_row_scale")
    scaled = ir.Node("", "Div", [source, scale.outputs[0]], name=f"{prefix}_row_divide")
    # QuantizeLinear at scale 1 rounds half to even and adds the zero point in one op
    # (per-row quantizers added 8 % of the original's prefill time on SmolLM2-135M, 120 activations).
    values = ir.Node("", "QuantizeLinear", [scaled.outputs[0], unit, zero_point], name=f"{prefix}_row_quantize")
    nodes = [magnitude, peak, step, scale, scaled, values]
    values.outputs[0].name, scale.outputs[0].name = f"{prefix}.row_quantized", f"{prefix}.row_scale"
    producer = source.producer()
    if producer is not None and producer.graph is graph:
        graph.insert_after(producer, nodes)
    else:
        graph.insert_before(layer.node, nodes)
    return values.outputs[0], scale.outputs[0], zero_point


def _row_local_errors(
    model: ir.Model, layers: Sequence[Layer], batches, per_channel: bool, reduce_range: bool
) -> dict[str, float]:
    """Relative error of each layer's output on sampled input rows, each row rounded to int8 at its own scale.

    Packed-QKV ``Attention`` layers (per-tensor even here) are estimated with one scale for the sample.
    """
    rows = _base.sample_layer_inputs(model, layers, batches)
    errors = {}
    for layer in layers:
        x = rows[layer.activation.name].astype(np.float64)
        if layer.kind == "attention":
            peak = np.full((len(x), 1), np.abs(x).max())
        else:
            peak = np.abs(x).max(axis=1, keepdims=True)
        scale = np.maximum(peak / ROW_LEVELS, ROW_SCALE_FLOOR)
        rounded = np.rint(x / scale) * scale
        weight = quantize_weight(layer.weight, 1 if per_channel else None, reduce_range=reduce_range)
        exact = x @ layer.weight.astype(np.float64)
        approximate = rounded @ weight.dequantize().astype(np.float64)
        errors[layer.name] = _base.output_error(approximate, exact)
    return errors

"""What ONNX Runtime's load-time QDQ rewrites make of a float layer that sits among int8 ones.

ONNX Runtime (1.32, from ORT_ENABLE_BASIC up) runs two rewrites a QDQ graph's author must know:

- QDQ propagation moves a ``DequantizeLinear`` whose scale and zero point are single constants
  forward past ``MaxPool``, ``Reshape``, ``Transpose``, ``Squeeze``, ``Unsqueeze`` and ``Slice``
  (and ``Identity``, ``Dropout`` and a ``Pad`` before a Conv are removed or folded first);
- WeightBiasQuantization takes a ``Conv``, ``ConvTranspose`` or ``Gemm`` whose data input comes from a
  ``DequantizeLinear`` with a single scale and whose weight is a float32 constant for a QDQ layer whose
  weight was left unquantized, and quantizes that weight to int8 with one scale for the whole tensor
  (its bias to int32) where the layer's result is quantized again (goes on to a ``QuantizeLinear``).

So a layer a quantizer keeps float between int8 layers, reading their dequantized output directly or
through those ops, runs in int8 after all, with a coarser weight than the per-channel int8 it was kept
float instead of. A ``DequantizeLinear`` with its scale repeated along an axis (per channel) computes the
same values and is neither propagated nor read as a single scale.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_domain

PROPAGATED_OPS = ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice")
WEIGHT_QUANTIZING_OPS = ("Conv", "ConvTranspose", "Gemm")


def one_scale(value: ir.Value | None) -> bool:
    """Whether a ``DequantizeLinear`` scale is a single number as ONNX Runtime reads it: shape ``[]`` or ``[1]``
    (by its constant where the shape is unknown)."""
    if value is None:
        return False
    shape = value.shape
    if shape is not None and shape.rank() is not None:
        return shape.rank() == 0 or (shape.rank() == 1 and shape[0] == 1)
    tensor = ir.convenience.get_const_tensor(value)
    return tensor is not None and int(np.prod(tensor.shape)) == 1


def float_layer_behind_dequantize(node: ir.Node) -> tuple[ir.Node, list[ir.Node]] | None:
    """For a ``Conv``/``ConvTranspose``/``Gemm`` with a float32 constant weight whose data input is a
    single-scale ``DequantizeLinear``'s output, directly or through ``PROPAGATED_OPS`` and ops ONNX Runtime removes
    (``removed_by_onnxruntime``), and whose result goes on to a ``QuantizeLinear`` (``_requantized_later``):
    that ``DequantizeLinear`` and the ops between it and the layer (in order); else None."""
    if node.op_type not in WEIGHT_QUANTIZING_OPS or not is_onnx_domain(node) or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    stored = ir.convenience.get_const_tensor(weight) if weight is not None else None
    if stored is None or stored.dtype != ir.DataType.FLOAT:
        return None
    chain: list[ir.Node] = []
    value = node.inputs[0]
    while value is not None and (producer := value.producer()) is not None and is_onnx_domain(producer):
        if producer.op_type == "DequantizeLinear":
            scale = producer.inputs[1] if len(producer.inputs) > 1 else None
            casts = any(op.op_type == "Cast" for op in chain)
            if scale is not None and one_scale(scale) and not (casts and scale.dtype not in (ir.DataType.FLOAT, None)):
                return (producer, chain[::-1]) if _requantized_later(node) else None
            return None
        # A Pad is folded only into the Conv it feeds directly.
        foldable = producer.op_type != "Pad" or (not chain and node.op_type == "Conv")
        if not (foldable and moves_dequantized(producer)):
            return None
        chain.append(producer)
        value = producer.inputs[0] if producer.inputs else None
    return None


def _requantized_later(node: ir.Node) -> bool:
    """Whether a ``QuantizeLinear`` reads ``node``'s result, directly or through any ops after it (or a subgraph
    might). WeightBiasQuantization quantizes a layer only where its result goes on to a ``QuantizeLinear`` (through
    a Relu or Clip, without a branch); with none downstream, as after a model's float head, the layer stays float
    (a head ``Conv`` reading a one-channel int8 output, which no per-channel dequantization can shield, was taken
    for quantized and the whole static int8 result rolled back)."""
    seen: set[int] = set()
    stack = [value for value in node.outputs if value is not None]
    while stack:
        for user, _ in stack.pop().uses():
            if id(user) in seen:
                continue
            seen.add(id(user))
            if user.op_type == "QuantizeLinear" or user.graph is not node.graph:
                return True
            if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in user.attributes.values()):
                return True
            stack.extend(value for value in user.outputs if value is not None)
    return False


def moves_dequantized(node: ir.Node) -> bool:
    """Whether ONNX Runtime moves a single-scale ``DequantizeLinear`` past ``node`` (``PROPAGATED_OPS``) or takes
    ``node`` out (``removed_by_onnxruntime``): either way what reads ``node``'s output reads the quantized values."""
    return (node.op_type in PROPAGATED_OPS and is_onnx_domain(node)) or removed_by_onnxruntime(node)


def removed_by_onnxruntime(node: ir.Node) -> bool:
    """Whether ONNX Runtime (1.32) takes ``node`` out from before a layer: an ``Identity`` whose output is no graph
    output; any ``Dropout`` (in training mode too: an inference session drops nothing); a ``Cast`` of a float32
    tensor to float32; a ``Pad`` it folds into the Conv it feeds (constant mode, a pad value of 0 or none, constant
    pads of 0 or more that leave the batch and channel axes alone, no ``axes`` input)."""
    if not is_onnx_domain(node) or not node.outputs or node.outputs[0].is_graph_output():
        return False
    if node.op_type in ("Identity", "Dropout"):
        return True
    if node.op_type == "Cast":
        source = node.inputs[0] if node.inputs else None
        dtype = source.dtype if source is not None else None
        # Of unknown type, the walk back from the layer shows it: a float32 scale's DequantizeLinear gives float32.
        return node.attributes.get_int("to", 0) == ir.DataType.FLOAT.value and dtype in (ir.DataType.FLOAT, None)
    if node.op_type != "Pad" or node.attributes.get_string("mode", "constant") != "constant":
        return False
    pads = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    fill = node.inputs[2] if len(node.inputs) > 2 else None
    if fill is not None and (fill.name == "" or (value := _constant(fill)) is None or np.any(value != 0)):
        return False  # ONNX Runtime does not fold a pad value given as an empty-named input, nor one of another value
    if pads is None or (len(node.inputs) > 3 and node.inputs[3] is not None):
        return False
    pads = np.asarray(pads).reshape(-1)
    rank = len(pads) // 2
    return rank >= 2 and not np.any(pads < 0) and not np.any(pads[[0, 1, rank, rank + 1]])


def _constant(value: ir.Value | None) -> np.ndarray | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return None if tensor is None else tensor.numpy()


def layers_quantized_by_onnxruntime(model: ir.Model) -> list[ir.Node]:
    """The float layers of ``model`` (any graph) that ONNX Runtime's rewrites would quantize
    (``float_layer_behind_dequantize``)."""
    return [node for node in model.graph.all_nodes() if float_layer_behind_dequantize(node) is not None]

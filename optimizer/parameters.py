"""How many parameters (weight elements) a model holds, at their logical size, whatever their precision."""

from __future__ import annotations

import math
from collections.abc import Iterator

import onnx_ir as ir

from optimizer.domains import is_onnx_domain
from optimizer.protocol import EXACT_CORRECTION_PREFIX
from optimizer.runtime import model_graphs

# Inputs of the quantized ops that hold scales, zero points or group indices: no weights.
_QUANTIZATION_PARAMETERS: dict[str, frozenset[int]] = {
    "QuantizeLinear": frozenset({1, 2}),
    "DequantizeLinear": frozenset({1, 2}),
    "DynamicQuantizeMatMul": frozenset({2, 3}),
    "MatMulIntegerToFloat": frozenset({2, 3, 4, 5}),
    "MatMulInteger": frozenset({2, 3}),
    "ConvInteger": frozenset({2, 3}),
    "QLinearMatMul": frozenset({1, 2, 4, 5, 6, 7}),
    "QLinearConv": frozenset({1, 2, 4, 5, 6, 7}),
    "QAttention": frozenset({3, 4, 6, 7}),
    "MatMulNBits": frozenset({2, 3, 4}),
    "GatherBlockQuantized": frozenset({2, 3}),
}
# Inputs of the fused ops that hold rotary cos/sin tables: positions' angles a fusion computes ahead of time
# (the original computed them at run time), no weights.
_POSITION_TABLES: dict[str, frozenset[int]] = {
    "RotaryEmbedding": frozenset({2, 3}),
    "GroupQueryAttention": frozenset({7, 8}),
}
_WEIGHT_TYPES = frozenset(
    {
        ir.DataType.FLOAT,
        ir.DataType.FLOAT16,
        ir.DataType.BFLOAT16,
        ir.DataType.DOUBLE,
        ir.DataType.INT8,
        ir.DataType.UINT8,
        ir.DataType.INT4,
        ir.DataType.UINT4,
    }
)


def count_parameters(model: ir.Model) -> int:
    """Elements of the model's weights, at their logical size, whatever their precision.

    Counted: initializers (of every graph, subgraph and function) and ``Constant`` node tensors
    (Paddle's exports hold every weight in one) of float, int8/uint8 or int4/uint4 type with more
    than one element (single-element constants are scales and epsilons), and int32 biases that
    a DequantizeLinear widens (static int8). MatMulNBits' packed 4-bit weights count as its
    ``N * K`` weights, GatherBlockQuantized's packed table as two 4-bit values per byte;
    quantization scales, zero points and group indices (by where the quantized ops read them,
    ``_QUANTIZATION_PARAMETERS``, and int8 embedding tables' row scales) are not weights and are
    left out, nor are the rotary cos/sin tables a fusion writes (``_POSITION_TABLES``), nor a pass's
    exact float corrections beside its reduced layers (``EXACT_CORRECTION_PREFIX``: int4's block offsets, the
    rows of its outlier channels the packed weight holds too, their mask and block sums; an HQQ int4 MLP counted
    8,448 parameters where its float original has 8,192). So an int8
    or int4 model has the parameters of its float original, and lifting Constants into initializers
    keeps the count (the rotary fusion drops an ``inv_freq`` constant its tables replace).
    """
    total = 0
    for value, shape, dtype in _weights(model):
        if (value.name or "").startswith(EXACT_CORRECTION_PREFIX):
            continue
        size = math.prod(shape)
        uses = list(value.uses())
        if uses and all(_reads_no_weight(node, index) for node, index in uses):
            continue
        if uses and all(_is_row_scale_lookup(node, index) for node, index in uses):
            continue
        packed = [(node, index) for node, index in uses if node.op_type in ("MatMulNBits", "GatherBlockQuantized")]
        if packed:
            total += _logical_size(*packed[0], size, dtype)
            continue
        widened_bias = dtype == ir.DataType.INT32 and any(
            node.op_type == "DequantizeLinear" and index == 0 for node, index in uses
        )
        if (dtype in _WEIGHT_TYPES or widened_bias) and size > 1:
            total += size
    return total


def _weights(model: ir.Model) -> Iterator[tuple[ir.Value, tuple[int, ...], ir.DataType]]:
    """``(value, shape, dtype)`` of each initializer and ``Constant`` node tensor of every graph of ``model``."""
    for graph in model_graphs(model):
        if isinstance(graph, ir.Graph):
            for value in graph.initializers.values():
                if value.shape is not None and value.dtype is not None and value.shape.is_static():
                    yield value, tuple(value.shape.numpy()), value.dtype
        for node in graph:
            if node.op_type != "Constant" or not is_onnx_domain(node) or "value" not in node.attributes:
                continue
            if node.attributes["value"].is_ref():  # a function's Constant of its caller's attribute: no weight here
                continue
            tensor = node.attributes["value"].as_tensor()
            yield node.outputs[0], tuple(tensor.shape.numpy()), tensor.dtype


def _reads_no_weight(node: ir.Node, index: int) -> bool:
    return index in _QUANTIZATION_PARAMETERS.get(node.op_type, frozenset()) or index in _POSITION_TABLES.get(
        node.op_type, frozenset()
    )


def _is_row_scale_lookup(node: ir.Node, index: int) -> bool:
    """Whether ``node`` looks up rows of an int8 table's scales: ``Gather(scales, ids)`` multiplied
    with ``Cast(Gather(int8 table, ids))``, as quantize-embeddings writes a table."""
    if node.op_type != "Gather" or index != 0:
        return False
    for user, _ in node.outputs[0].uses():
        if user.op_type != "Mul":
            continue
        for operand in user.inputs:
            cast = operand.producer() if operand is not None else None
            rows = cast.inputs[0].producer() if cast is not None and cast.op_type == "Cast" else None
            if rows is not None and rows.op_type == "Gather" and rows.inputs[0] is not None:
                if rows.inputs[0].dtype in (ir.DataType.INT8, ir.DataType.UINT8) and rows.inputs[0].is_initializer():
                    return True
    return False


def _logical_size(node: ir.Node, index: int, size: int, dtype: ir.DataType) -> int:
    """The weights a packed 4-bit tensor holds (its bytes hold two values each)."""
    if node.op_type == "MatMulNBits" and index == 1:
        n, k = node.attributes.get_int("N", 0), node.attributes.get_int("K", 0)
        return n * k if n and k else size * 8 // node.attributes.get_int("bits", 4)
    if dtype in (ir.DataType.UINT8, ir.DataType.INT8) and node.attributes.get_int("bits", 4) == 4:
        return size * 2  # GatherBlockQuantized's uint8 data: two 4-bit values a byte
    return size

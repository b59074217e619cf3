"""Kernels that may round their float inputs inside: MatMulNBits at an ``accuracy_level`` above 0 (4: int8).

At ``accuracy_level`` 4 ONNX Runtime's CPU ``MatMulNBits`` quantizes its input to int8 per
block before the integer product. A change of one ulp in that input (a fused RMSNorm that
sums in another order) can move a value across a rounding boundary, and the flipped code
moves everything after it; through 30 layers it moves SmolLM2's logits by as much as
ONNX Runtime's own load-time rewrites do (1.66 on real text, 9.5 on random inputs, where
the same graph at level 0 moves by 1e-4 and 2e-3). No float tolerance tells such a rewrite from a
wrong one. At level 0 the kernel is float arithmetic on the same 4-bit weights, so a
model's graph can be checked there instead (``optimizer.verify``), with its rounding
kernels otherwise unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN
from optimizer.runtime import model_graphs

ROUNDING_OP = "MatMulNBits"


def _kernels(model: ir.Model) -> Iterator[ir.Node]:
    for graph in model_graphs(model):
        for node in graph:
            if node.op_type == ROUNDING_OP and node.domain == MS_DOMAIN:
                yield node


def _level(node: ir.Node) -> int:
    return node.attributes.get_int("accuracy_level", 0)


def rounding_kernels(model: ir.Model) -> int:
    """How many MatMulNBits in ``model`` (subgraphs and functions included) run at an accuracy_level above 0."""
    return sum(1 for node in _kernels(model) if _level(node) != 0)


# Nodes that round an activation to integers (or to fewer float bits) in ONNX Runtime: quantizers and the integer
# kernels they feed, and a MatMulNBits above accuracy_level 1 (level 4 rounds its input to int8 per block).
_INTEGER_OPS = frozenset(
    {
        "QuantizeLinear",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "QAttention",
        "QGemm",
        "DynamicQuantizeLSTM",
    }
)


def rounds(node: ir.Node) -> bool:
    """Whether ``node`` rounds an activation as ONNX Runtime runs it (``_INTEGER_OPS``, or a MatMulNBits whose
    accuracy_level asks for fp16, bf16 or int8 inputs)."""
    if node.op_type == ROUNDING_OP and node.domain == MS_DOMAIN:
        return _level(node) >= 2
    return node.op_type in _INTEGER_OPS


def outputs_after_rounding(model: ir.Model, skip_input: Callable[[ir.Node, int], bool] | None = None) -> frozenset[str]:
    """The graph outputs of ``model`` that some rounding node (``rounds``) is an ancestor of, within the graph
    (a cut model's fed checkpoints are graph inputs: its segments stop there), not walking the inputs
    ``skip_input`` names (a cut's select of the model's own value at padded positions leads back into the
    segment before)."""
    found = set()
    for output in model.graph.outputs:
        stack, seen = [output], set()
        while stack:
            value = stack.pop()
            node = value.producer() if value is not None else None
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if rounds(node):
                found.add(output.name)
                break
            stack.extend(v for i, v in enumerate(node.inputs) if skip_input is None or not skip_input(node, i))
    return frozenset(found)


def level_signature(model: ir.Model) -> Counter | None:
    """Every output column of every MatMulNBits: its level, bits, block size, K and weights, counted.

    Two models with the same signature compute each column with the same weights, at the
    same level, rounding the input in the same blocks: a rewrite that merges or splits
    MatMulNBits along N (``merge-matmul-nbits``) keeps it; one that changes a column's level,
    block size, weights, scales or zero points, or swaps them between kernels, does not.
    None when a kernel's weights are not constants (nothing to compare them by).
    """
    signature: Counter = Counter()
    for node in _kernels(model):
        columns = _column_digests(node)
        if columns is None:
            return None
        shared = (
            _level(node),
            node.attributes.get_int("bits", 4),
            node.attributes.get_int("block_size", 0),
            node.attributes.get_int("K", 0),
            _digest(_constant(node, 4)),  # g_idx: which scale each row of K takes
        )
        signature.update((*shared, column) for column in columns)
    return signature


def _constant(node: ir.Node, index: int) -> np.ndarray | None:
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _digest(array: np.ndarray | None) -> str:
    return "" if array is None else hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _column_digests(node: ir.Node) -> list[str] | None:
    """Per output column, a digest of its packed weights, scales and zero points; None if they are not constants."""
    columns = node.attributes.get_int("N", 0)
    weights, scales = _constant(node, 1), _constant(node, 2)
    if weights is None or scales is None or columns <= 0:
        return None
    zero_points = _constant(node, 3)
    if len(node.inputs) > 3 and node.inputs[3] is not None and zero_points is None:
        return None
    parts = [weights, scales] + ([zero_points] if zero_points is not None else [])
    if any(part.size % columns for part in parts):
        return None
    rows = [part.reshape(columns, -1) for part in parts]
    return [hashlib.sha1(b"".join(row[column].tobytes() for row in rows)).hexdigest() for column in range(columns)]


@contextlib.contextmanager
def at_level_zero(*models: ir.Model) -> Iterator[None]:
    """Within the block, every MatMulNBits of ``models`` runs at accuracy_level 0; restored after."""
    changed: dict[int, tuple[ir.Node, ir.Attr | None]] = {}
    try:
        for model in models:
            for node in _kernels(model):
                if id(node) in changed or _level(node) == 0:
                    continue
                changed[id(node)] = (node, node.attributes.get("accuracy_level"))
                node.attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", 0)
        yield
    finally:
        for node, attr in changed.values():
            if attr is None:
                node.attributes.pop("accuracy_level", None)
            else:
                node.attributes["accuracy_level"] = attr

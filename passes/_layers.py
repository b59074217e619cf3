"""Finding layers: nodes with a constant float32 weight (what quantization and pruning rewrite).

A *layer* is one node whose weight is an initializer or Constant: MatMul and Gemm
(weight ``[K, N]`` after undoing ``transB``), Conv, and com.microsoft Attention with
packed QKV weights. Each is named (unnamed nodes get a stable name) so ``--exclude``
patterns, sensitivity reports and the float-kept list can refer to it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_domain
from passes._utils import constant_array


@dataclass
class Layer:
    """A node with a constant weight, seen the way the int8 kernels want it.

    ``weight`` is ``[K, N]`` for MatMul, Gemm and Attention (N = output features),
    ``[M, C/groups, *kernel]`` for Conv; ``bias`` is a ``[N]``/``[M]`` vector or None.
    """

    node: ir.Node
    kind: str
    weight: np.ndarray
    bias: np.ndarray | None

    @property
    def name(self) -> str:
        return self.node.name or ""

    @property
    def activation(self) -> ir.Value:
        """The float input the int8 kernel quantizes (the layer's data input)."""
        return self.node.inputs[0]


def name_nodes(graph: ir.Graph) -> None:
    """Give every unnamed node of ``graph`` a unique ``<op_type>_<index>`` name."""
    taken = {node.name for node in graph if node.name}
    for index, node in enumerate(graph):
        if node.name:
            continue
        name = f"{node.op_type}_{index}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)


def find_layers(graph: ir.Graph, kinds: Iterable[str]) -> tuple[list[Layer], dict[ir.Node, str]]:
    """The quantizable layers of ``graph`` of the given kinds, and why other weighted nodes were refused.

    ``kinds`` is a subset of ``{"matmul", "gemm", "conv", "attention"}``. The refusals
    map node → reason, for nodes that looked like candidates.
    """
    kinds = set(kinds)
    layers, refused = [], {}
    for node in graph:
        kind = _kind(node)
        if kind is None or kind not in kinds:
            continue
        found = _layer(node, kind)
        if isinstance(found, str):
            refused[node] = found
        else:
            layers.append(found)
    return layers, refused


def excluded(layer: Layer, patterns: Iterable[str]) -> bool:
    """True if a ``--exclude`` glob matches the layer's node name or its op type."""
    return any(fnmatch.fnmatchcase(layer.name, p) or fnmatch.fnmatchcase(layer.node.op_type, p) for p in patterns)


def feeds_graph_output(layer: Layer) -> bool:
    """True if the layer's result (after a bias Add, if any) is a graph output: an LM head or classifier."""
    output = layer.node.outputs[0]
    if output.is_graph_output():
        return True
    users = [user for user, _ in output.uses()]
    return len(users) == 1 and users[0].op_type == "Add" and users[0].outputs[0].is_graph_output()


def bias_add(layer: Layer) -> tuple[np.ndarray, ir.Node, int] | None:
    """The bias Add after a MatMul: ``(bias vector [N], the Add node, the bias operand's index)``, or None.

    Only when the Add is the MatMul's one user and adds a constant of N values.
    """
    output = layer.node.outputs[0]
    users = list(output.uses())
    if layer.kind != "matmul" or output.is_graph_output() or len(users) != 1:
        return None
    add, index = users[0].node, 1 - users[0].idx
    if add.op_type != "Add" or not is_onnx_domain(add):
        return None
    bias = constant_array(add.inputs[index])
    columns = layer.weight.shape[1]
    if bias is None or bias.dtype != np.float32 or bias.size != columns or bias.shape[-1:] != (columns,):
        return None
    return bias.reshape(-1), add, index


def _kind(node: ir.Node) -> str | None:
    if is_onnx_domain(node):
        return {"MatMul": "matmul", "Gemm": "gemm", "Conv": "conv"}.get(node.op_type)
    if node.domain == MS_DOMAIN and node.op_type == "Attention":
        return "attention"
    return None


def _float32(value: ir.Value | None) -> bool:
    # Legacy exports leave intermediate dtypes unknown; the float32 weight decides then.
    return value is not None and value.dtype in (ir.DataType.FLOAT, None)


def _layer(node: ir.Node, kind: str) -> Layer | str:
    inputs = list(node.inputs)
    if len(inputs) < 2 or not _float32(inputs[0]):
        return "input is not float32"
    weight = constant_array(inputs[1])
    if weight is None:
        return "weight is not a constant"
    if weight.dtype != np.float32:
        return "weight is not float32"
    bias = constant_array(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else None
    if kind == "matmul":
        if weight.ndim != 2:
            return f"weight has rank {weight.ndim}, not 2"
        return Layer(node, kind, weight, None)
    if kind == "gemm":
        return _gemm(node, weight, bias, inputs)
    if kind == "conv":
        if weight.ndim < 3:
            return "weight rank below 3"
        if len(inputs) > 2 and inputs[2] is not None and bias is None:
            return "bias is not a constant"
        return Layer(node, kind, weight, bias)
    return _attention(node, weight, bias, inputs)


def _gemm(node: ir.Node, weight: np.ndarray, bias: np.ndarray | None, inputs: list) -> Layer | str:
    attrs = node.attributes
    if attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_float("beta", 1.0) != 1.0:
        return "transA, alpha or beta is set"
    if weight.ndim != 2:
        return "weight is not 2-D"
    if attrs.get_int("transB", 0):
        weight = weight.T
    if len(inputs) > 2 and inputs[2] is not None:
        if bias is None:
            return "bias is not a constant"
        if bias.size != weight.shape[1]:
            return "bias is not one value per output feature"
        bias = bias.reshape(-1)
    return Layer(node, "gemm", np.ascontiguousarray(weight), bias)


def _attention(node: ir.Node, weight: np.ndarray, bias: np.ndarray | None, inputs: list) -> Layer | str:
    # QAttention has no qkv_hidden_sizes, past/present, attention_bias or cache inputs.
    attrs = node.attributes
    if weight.ndim != 2 or weight.shape[1] % 3:
        return "weight is not [input hidden, 3*hidden]"
    if bias is None or bias.shape != (weight.shape[1],):
        return "no constant [3*hidden] bias"
    if len(inputs) > 4 and any(v is not None for v in inputs[4:]):
        return "uses past, attention_bias or cache inputs"
    if "qkv_hidden_sizes" in attrs or attrs.get_int("do_rotary", 0) or attrs.get_int("past_present_share_buffer", 0):
        return "qkv_hidden_sizes, rotary or shared past buffer"
    if len(node.outputs) > 1 and any(v is not None and v.uses() for v in node.outputs[1:]):
        return "its present output is used"
    return Layer(node, "attention", weight, bias)

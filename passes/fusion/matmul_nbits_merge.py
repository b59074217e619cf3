"""Sibling ``MatMulNBits`` that read one input into one ``MatMulNBits`` over their columns, then ``Split``.

A decoder layer's Q, K and V projections read one norm, as do its MLP's gate and up
projections. Quantized to 4 bits (``quantize-int4``, or ONNX Runtime's own
``matmul_nbits_quantizer``) they are separate ``com.microsoft.MatMulNBits``; at one token
per step each is a small kernel call, and at ``accuracy_level`` 4 each quantizes the same
input to int8 again. This pass writes them as one::

    y_q, y_k, y_v = Split(MatMulNBits(x, [B_q; B_k; B_v], [s_q; s_k; s_v], [z_q; z_k; z_v], bias=[b_q; b_k; b_v]),
                          [N_q, N_k, N_v], axis=-1)

The kernel's blocks run along K, one column at a time, so a column's arithmetic does
not depend on its neighbours: concatenating along N computes each column as before
(measured bit-identical on SmolLM2's int4 decoder, 121 merged groups). Missing zero
points are written as the kernel's default (``2^(bits-1)``), a missing bias as zeros.

``quantize-int4`` writes the exact float corrections of a layer (block offsets, outlier
channels) as ``Add(MatMulNBits(x), MatMul(c, T))``, ``c`` read off ``x`` once for all its
readers; when every member of a group is corrected that way from the same ``c``, the
corrections merge as well: ``Add(MatMulNBits(x), MatMul(c, [T_q | T_k | T_v]))`` before the
``Split``.

Measured on SmolLM2-135M's int4 decode step on the CPU (``docs/benchmarks.md``, *Sibling
MatMulNBits merged*) and on the int4 Llama fixture's decode step on CUDA (an H200: 0.610× the
float original merged, 0.705× unmerged; *CUDA*), so it runs by default on both targets.

Refuses (counted, with the reason) a group member whose packed weight, scales, zero
points or bias are not constants, whose packed weight or scales another node also reads
(a tied embedding table's ``GatherBlockQuantized``, a layer sharing the weight: the pass
runs after ``deduplicate-initializers`` so that such sharing is visible; zero points or a
bias other nodes read too are small and copied), that has ``g_idx``, or whose zero points
are float beside uint8 ones; members that differ in ``K``, ``bits``, ``block_size`` or
``accuracy_level`` form separate groups.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, onnx_opset
from passes._layers import EXACT_CORRECTION_PREFIX
from passes._utils import add_initializer, constant_array, replace_value
from passes.fusion._base import FusionPass

_KIND = "MatMulNBits"
# Inputs of MatMulNBits: A, B, scales, zero_points, g_idx, bias.
_B, _SCALES, _ZERO_POINTS, _G_IDX, _BIAS = 1, 2, 3, 4, 5


@dataclass(eq=False)  # compared by identity: its arrays have no truth value
class _Member:
    node: ir.Node
    n: int
    weight: np.ndarray  # [N, blocks, blob] uint8
    scales: np.ndarray  # [N, blocks]
    zero_points: np.ndarray | None  # uint8 [N, packed bytes] or float [N, blocks]
    bias: np.ndarray | None  # [N]


@dataclass
class _Correction:
    add: ir.Node
    matmul: ir.Node
    table: np.ndarray  # [r, N]


class MatMulNBitsMergeFusion(FusionPass):
    """Merge ``com.microsoft.MatMulNBits`` nodes reading the same input, with equal ``K``, ``bits``,
    ``block_size`` and ``accuracy_level``, into one over their concatenated columns followed by ``Split``
    (their exact ``Add(_, MatMul(c, T))`` corrections merged too when they share ``c``).

    Refuses (counted, with the reason) members with non-constant weights, scales, zero
    points or bias, a packed weight or scales another node also reads, ``g_idx``, or float zero
    points beside uint8 ones (see the module docstring).
    """

    fused_ops = ((MS_DOMAIN, "MatMulNBits"),)

    def fuse(self, model: ir.Model) -> int:
        groups: dict[tuple, list[ir.Node]] = defaultdict(list)
        for node in model.graph:
            if node.domain == MS_DOMAIN and node.op_type == "MatMulNBits" and node.inputs[0] is not None:
                groups[(id(node.inputs[0]), _attribute_key(node))].append(node)
        merged, names = 0, _Names(model.graph)
        for nodes in groups.values():
            if len(nodes) < 2:
                continue
            members = []
            for node in nodes:
                member = _member(node)
                if isinstance(member, str):
                    self.refuse(_KIND, member)
                else:
                    members.append(member)
            # Float zero points take ONNX Runtime's float path; a member without any would join it.
            float_zero = [m for m in members if m.zero_points is not None and m.zero_points.dtype != np.uint8]
            uint8_or_none = [m for m in members if m not in float_zero]
            for part in (uint8_or_none, float_zero):
                if len(part) == 1 and len(members) > 1:
                    self.refuse(
                        _KIND,
                        "the other readers of its input cannot join it (float zero points beside uint8 "
                        "or none, or refused above)",
                    )
                if len(part) < 2:
                    continue
                self._merge(model, part, names)
                merged += 1
                for _ in part:
                    self.done(_KIND)
        if merged:
            model.graph.sort()  # a correction's input may be computed after the group's first member
        return merged

    def _note_already_fused(self, model: ir.Model) -> None:
        """Nothing to say: MatMulNBits without a sibling are this pass's normal input, not its earlier output."""

    def _merge(self, model: ir.Model, members: list[_Member], names: _Names) -> None:
        graph = model.graph
        first = members[0].node
        x = first.inputs[0]
        bits = first.attributes.get_int("bits", 4)
        sizes = [member.n for member in members]
        name = names.fresh(f"{first.name or 'MatMulNBits'}_merged")
        weight = np.concatenate([member.weight for member in members])
        scales = np.concatenate([member.scales for member in members])
        inputs: list[ir.Value | None] = [
            x,
            add_initializer(graph, f"{name}.weight", weight),
            add_initializer(graph, f"{name}.scales", scales.reshape(-1).astype(members[0].scales.dtype)),
        ]
        present = [member.zero_points for member in members if member.zero_points is not None]
        if present:
            width = present[0].shape[1]
            default = _default_zero_points(present[0].dtype, bits, width)
            zero_points = np.concatenate(
                [
                    member.zero_points if member.zero_points is not None else np.tile(default, (member.n, 1))
                    for member in members
                ]
            )
            inputs.append(add_initializer(graph, f"{name}.zero_points", zero_points.reshape(-1)))
        else:
            inputs.append(None)
        if any(member.bias is not None for member in members):
            dtype = next(member.bias.dtype for member in members if member.bias is not None)
            bias = np.concatenate(
                [member.bias if member.bias is not None else np.zeros(member.n, dtype) for member in members]
            )
            inputs += [None, add_initializer(graph, f"{name}.bias", bias)]
        while inputs[-1] is None:
            inputs.pop()
        attributes = [
            ir.AttrInt64("N", int(sum(sizes))) if key == "N" else ir.Attr(key, attr.type, attr.value)
            for key, attr in first.attributes.items()
        ]
        product = ir.Node(MS_DOMAIN, "MatMulNBits", inputs, attributes=attributes, name=name)
        product.outputs[0].name = names.fresh(f"{name}.output", values=True)
        added = [product]
        result = product.outputs[0]
        corrections = [_correction(member.node) for member in members]
        shared = corrections[0].matmul.inputs[0] if corrections[0] is not None else None
        if all(c is not None and c.matmul.inputs[0] is shared for c in corrections):
            table = np.concatenate([c.table for c in corrections], axis=1)
            # Named as int4's own exact corrections are, so a later quantization run leaves it float.
            exact = add_initializer(graph, f"{EXACT_CORRECTION_PREFIX}{name}.correction", table)
            matmul = ir.Node("", "MatMul", [shared, exact], name=f"{name}_correction")
            total = ir.Node("", "Add", [result, matmul.outputs[0]], name=f"{name}_corrected")
            for node in (matmul, total):
                node.name = names.fresh(node.name)
                node.outputs[0].name = names.fresh(f"{node.name}.output", values=True)
            added += [matmul, total]
            result = total.outputs[0]
            olds = [c.add.outputs[0] for c in corrections]
        else:
            olds = [member.node.outputs[0] for member in members]
        split = _split(model, result, sizes, names.fresh(f"{name}_split"))
        added.append(split)
        graph.insert_before(first, added)
        for old, new in zip(olds, split.outputs):
            replace_value(old, new, inherit=True)


def _split(model: ir.Model, value: ir.Value, sizes: list[int], name: str) -> ir.Node:
    """``Split(value, sizes, axis=-1)``: sizes as an input from opset 13, as the attribute before it."""
    if "" not in model.opset_imports and "ai.onnx" not in model.opset_imports:
        model.opset_imports[""] = 13  # a graph of contrib ops only: Split needs the default domain
    opset = onnx_opset(model.opset_imports)
    if opset >= 13:
        sizes_value = add_initializer(model.graph, f"{name}.sizes", np.array(sizes, dtype=np.int64))
        inputs, attributes = [value, sizes_value], [ir.AttrInt64("axis", -1)]
    else:
        inputs, attributes = [value], [ir.AttrInt64("axis", -1), ir.AttrInt64s("split", sizes)]
    return ir.Node("", "Split", inputs, attributes=attributes, num_outputs=len(sizes), name=name)


class _Names:
    """Names no node (or, with ``values``, no value or initializer) of ``graph`` has: ``base``, or
    ``base_1``, ``base_2`` ...; each is taken once issued. Read off the graph once per pass."""

    def __init__(self, graph: ir.Graph) -> None:
        self._graph = graph
        self._nodes = {node.name for node in graph}
        self._values = {value.name for value in graph.inputs}
        self._values |= {output.name for node in graph for output in node.outputs}

    def fresh(self, base: str, *, values: bool = False) -> str:
        taken = self._values if values else self._nodes
        name, suffix = base, 0
        while name in taken or (values and name in self._graph.initializers):
            suffix += 1
            name = f"{base}_{suffix}"
        taken.add(name)
        return name


# Attribute defaults of MatMulNBits: a node that states one groups with a node that leaves it out.
_DEFAULTS = {"bits": 4, "accuracy_level": 0, "weight_prepacked": 0}


def _attribute_key(node: ir.Node) -> tuple:
    values = {**_DEFAULTS, **{key: attr.value for key, attr in node.attributes.items() if key != "N"}}
    return tuple(sorted((key, tuple(v) if isinstance(v, list) else v) for key, v in values.items()))


def _member(node: ir.Node) -> _Member | str:
    """``node``'s constant parts, or why it cannot be merged."""
    inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
    if inputs[_G_IDX] is not None:
        return "it has g_idx (act-order), whose column order a merged weight would have to share"
    if node.attributes.get_int("weight_prepacked", 0):
        return "its weight is prepacked in a kernel's own layout (weight_prepacked)"
    parts = [inputs[_B], inputs[_SCALES], inputs[_ZERO_POINTS], inputs[_BIAS]]
    for value in parts:
        if value is None:
            continue
        if value.is_graph_input() or value.is_graph_output():
            return f"{value.name!r} is a graph input or output: the merged copy would not follow it"
        # A bias (N floats) and zero points (one byte per two blocks) are small beside their weight: copied. Equal
        # zero points are shared after merge-subexpressions (every layer of a symmetric export storing 8s).
        if len(value.uses()) > 1 and value is not inputs[_BIAS] and value is not inputs[_ZERO_POINTS]:
            return f"{value.name!r} is read by another node too (a tied table, a shared layer): merging would copy it"
    weight, scales = constant_array(inputs[_B]), constant_array(inputs[_SCALES])
    if weight is None or scales is None:
        return "its packed weight or scales are not constants"
    n, k = node.attributes.get_int("N", 0), node.attributes.get_int("K", 0)
    bits, block = node.attributes.get_int("bits", 4), node.attributes.get_int("block_size", 0)
    blocks = -(-k // block) if block > 0 else 0
    if n <= 0 or blocks <= 0 or weight.shape != (n, blocks, block * bits // 8) or scales.size != n * blocks:
        return "its packed weight or scales do not have the [N, K / block, block * bits / 8] layout"
    zero_points = bias = None
    if inputs[_ZERO_POINTS] is not None:
        zero_points = constant_array(inputs[_ZERO_POINTS])
        if zero_points is None or zero_points.size % n:
            return "its zero points are not a constant with N rows"
        zero_points = zero_points.reshape(n, -1)
    if inputs[_BIAS] is not None:
        bias = constant_array(inputs[_BIAS])
        if bias is None or bias.shape != (n,):
            return "its bias is not a constant of N values"
    return _Member(node, n, weight, scales.reshape(n, -1), zero_points, bias)


def _correction(node: ir.Node) -> _Correction | None:
    """``Add(node, MatMul(c, T))``, the only reader of ``node``'s output, with ``T`` a constant ``[r, N]``."""
    users = node.outputs[0].uses()
    if len(users) != 1 or node.outputs[0].is_graph_output():
        return None
    add = users[0].node
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2 or add.graph is not node.graph:
        return None
    other = add.inputs[1 - users[0].idx]
    matmul = other.producer() if other is not None else None
    if matmul is None or matmul.op_type != "MatMul" or matmul.domain not in ("", "ai.onnx"):
        return None
    if matmul.graph is not node.graph or matmul.inputs[0] is None or matmul.inputs[1] is None:
        return None
    held = matmul.inputs[1]
    if len(held.uses()) > 1 or held.is_graph_input() or held.is_graph_output():
        return None  # a table other nodes read would be copied
    table = constant_array(held)
    n = node.attributes.get_int("N", 0)
    if table is None or table.ndim != 2 or table.shape[1] != n or len(other.uses()) != 1 or other.is_graph_output():
        return None
    if add.outputs[0].shape is not None and node.outputs[0].shape is not None:
        if len(add.outputs[0].shape) != len(node.outputs[0].shape):
            return None  # the correction broadcasts the product to another rank
    return _Correction(add, matmul, table)


def _default_zero_points(dtype: np.dtype, bits: int, width: int) -> np.ndarray:
    """One column's zero points when a member stores none: ``2^(bits-1)``, packed as the others are."""
    middle = 1 << (bits - 1)
    if dtype != np.uint8:
        return np.full(width, middle, dtype=dtype)
    packed = sum(middle << (bits * slot) for slot in range(8 // bits))  # 8 // bits values per byte
    return np.full(width, packed, dtype=np.uint8)

"""Finding FFN neuron groups: the hidden channels between up (and gate) projections and the down projection."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_domain
from passes._utils import weight_array
from passes.pruning._base import PruningPass
from passes.pruning._groups import (
    ChannelGroup,
    Cut,
    outside_reader,
    shared_constant,
    trace_operands,
    width_last_reshape_target,
)

# Ops that act on each channel independently (their constant operands are scalars or
# one value per channel). Channels flow through them unchanged.
_ELEMENTWISE = frozenset(
    {
        "Relu", "Gelu", "Sigmoid", "Tanh", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Softplus", "Softsign",
        "Elu", "Selu", "LeakyRelu", "HardSigmoid", "HardSwish", "Mish", "Clip", "Identity",
        "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Cast",
    }
)  # fmt: skip
_CONTRIB_ELEMENTWISE = frozenset({"Gelu", "FastGelu", "BiasGelu", "QuickGelu"})


def ffn_groups(graph: ir.Graph) -> tuple[list[ChannelGroup], dict[str, str]]:
    """The FFN groups of ``graph``, and why other MatMul/Gemm consumers were not groups.

    A group is found from its down projection (a MatMul, or a Gemm, with a constant 2-D
    weight): walking back from its input through element-wise ops (activation
    formulas, bias Adds, SwiGLU's product) must reach only projections with constant
    weights, and nothing else may read any value on the way — otherwise cutting the
    channels would change what that other reader sees (a residual, say).
    """
    groups, refused = [], {}
    for node in graph:
        if node.op_type not in ("MatMul", "Gemm") or not is_onnx_domain(node):
            continue
        weight = weight_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is None or weight.ndim != 2 or node.inputs[0].producer() is None:
            continue
        if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
            refused[node.name or node.op_type] = "a Gemm with transA reads its input transposed: no last-axis channels"
            continue
        found = _group(node, weight)
        if isinstance(found, ChannelGroup) and (shared := shared_constant(found)):
            refused[node.name or node.op_type] = shared
        elif isinstance(found, ChannelGroup):
            groups.append(found)
        elif found:
            refused[node.name or node.op_type] = found
    return groups, refused


def _channels_in(node: ir.Node, weight: np.ndarray) -> int:
    transposed = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    return weight.shape[1] if transposed else weight.shape[0]


def _group(consumer: ir.Node, weight: np.ndarray) -> ChannelGroup | str | None:
    channels = _channels_in(consumer, weight)
    group = ChannelGroup("ffn", consumer.name or "", channels, 1, consumer)
    region: dict[int, ir.Node] = {}
    # Nodes that carry the channels from input to output; producers only emit them.
    passthrough: set[int] = set()
    stack = [consumer.inputs[0]]
    seen: set[int] = set()
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        producer = value.producer()
        if producer is None:
            return None  # reaches a graph input: not an FFN hidden layer
        projection = _projection(producer, channels)
        if projection is not None:
            group.producers.extend(projection)
            region[id(producer)] = producer
            continue
        if (refusal := _c_refusal(producer, channels)) is not None:
            return refusal
        if (target := width_last_reshape_target(producer, channels)) is not None:
            # Reshape [B*S, N] <-> [B, S, N] (GPT-2's Conv1D as Gemm): the target's last entry is N.
            region[id(producer)] = producer
            passthrough.add(id(producer))
            group.shape_constants.append((producer, *target))
            stack.append(producer.inputs[0])
            continue
        if not _elementwise(producer):
            computed = [value for value in producer.inputs if value is not None and value.const_value is None]
            if group.producers or (
                len(computed) == 1 and _behind_activation(computed[0], channels, {}) is not None
            ):  # an FFN, with an op between its projections that the walk does not trace: named, not skipped
                return f"{producer.op_type} ({producer.name}) between it and its up projections is not traced"
            return None  # not an FFN (e.g. attention output, a reshape of heads)
        region[id(producer)] = producer
        passthrough.add(id(producer))
        refusal = trace_operands(producer, group, stack, lambda shape: _last_axis(shape, channels))
        if refusal:
            return refusal
    if not group.producers:
        return None
    group.values = [output for node in region.values() for output in node.outputs]
    refusal = outside_reader(region, passthrough, consumer, "; its channels cannot be cut")
    if refusal:
        return refusal
    if channels < 2:
        return None
    return group


def _up_projection(value: ir.Value, channels: int) -> bool:
    """Whether ``value`` is a projection of ``channels`` outputs, or of a multiple of them: up and gate packed
    in one weight and split apart next (ModernBERT's GeGLU, ``Wi`` then ``chunk``), which the walk does not trace."""
    node = value.producer()
    if _projection(node, channels) is not None:
        return True
    weight = weight_array(node.inputs[1]) if node.op_type in ("MatMul", "Gemm") and len(node.inputs) > 1 else None
    if not is_onnx_domain(node) or weight is None or weight.ndim != 2:
        return False
    width = weight.shape[0 if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) else 1]
    return width % channels == 0


def _behind_activation(
    value: ir.Value, channels: int, seen: dict[int, ir.Node | None], depth: int = 12
) -> ir.Node | None:
    """The one up projection (``_up_projection``) that ``value`` is, or that every computed operand of the
    element-wise ops computing it comes from (an activation: GELU's formula, SiLU's ``x * sigmoid(x)``); None
    if there is none, or more than one (a residual sum of a block's input and its output is no activation).

    NormFormer's FFN normalizes after its activation (up → GELU → LayerNorm → down): the LayerNorm was met with
    the activation, not the projection, behind it, and the FFN was skipped without a word."""
    if id(value) in seen:
        return seen[id(value)]
    seen[id(value)] = None
    node = value.producer()
    if node is None or depth < 0:
        return None
    if _up_projection(value, channels):
        found = node
    elif _elementwise(node):
        sources = {
            id(found): found
            for operand in node.inputs
            if operand is not None and operand.const_value is None
            for found in [_behind_activation(operand, channels, seen, depth - 1)]
        }
        found = next(iter(sources.values())) if len(sources) == 1 else None
    else:
        found = None
    seen[id(value)] = found
    return found


def _last_axis(shape: tuple[int, ...], channels: int) -> int | None:
    """-1 for a constant of one value per channel on the last axis (``[N]``, ``[1, 1, N]``)."""
    return -1 if shape[-1:] == (channels,) and np.prod(shape) == channels else None


def _elementwise(node: ir.Node) -> bool:
    if is_onnx_domain(node):
        return node.op_type in _ELEMENTWISE
    return node.domain == MS_DOMAIN and node.op_type in _CONTRIB_ELEMENTWISE


def _projection(node: ir.Node, channels: int) -> list[Cut] | None:
    """The cuts of a MatMul/Gemm producing ``channels`` outputs from a constant weight, or None."""
    if node.op_type not in ("MatMul", "Gemm") or not is_onnx_domain(node) or len(node.inputs) < 2:
        return None
    weight = weight_array(node.inputs[1])
    if weight is None or weight.ndim != 2:
        return None
    transposed = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    axis = 0 if transposed else 1
    if weight.shape[axis] != channels:
        return None
    cuts = [Cut(node, 1, axis)]
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = weight_array(node.inputs[2])
        if bias is None or bias.size != channels:
            return None
        cuts.append(Cut(node, 2, -1))
    return cuts


def _c_refusal(node: ir.Node, channels: int) -> str | None:
    """Why a Gemm computing ``channels`` neurons from a constant weight is no up projection ``_projection`` takes: its C
    is not one value per neuron (a full ``[M, N]``, an ``[M, 1]``, a scalar, a computed C), which the cut does not
    narrow. None for any other node (such an FFN was passed over without a word)."""
    if node.op_type != "Gemm" or not is_onnx_domain(node) or len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    weight = weight_array(node.inputs[1])
    if weight is None or weight.ndim != 2 or weight.shape[0 if node.attributes.get_int("transB", 0) else 1] != channels:
        return None
    c = weight_array(node.inputs[2])
    if c is not None and c.size == channels:
        return None
    what = "a computed C" if c is None else f"its C of shape {list(c.shape)}"
    name = node.name or node.op_type
    return f"up projection {name} adds {what}, not one value per neuron: only a [N] or [1, N] C is cut"


class FfnPruningPass(PruningPass):
    """Remove the least important FFN neurons: columns of the up (and gate) projections, the matching
    bias entries and per-channel constants, rows of the down projection, and Reshape targets.

    Importance is weight magnitude (L2 of the neuron's producer columns times its
    down-projection row) or, with calibration data, activation (RMS of the neuron's
    activation times that row) or reconstruction (its cost after the re-fit, ``PruningPass``).
    With calibration data the down projection is re-fitted
    (see ``PruningPass``). The twin is the input with the removed neurons' down-projection
    rows zeroed. Refuses a group whose hidden values are also read outside it (the down
    projection reading them as its bias too counts), or by a ``Shape``/``Size`` that may pass
    on their width (``_groups.width_reader``), and one whose weights other layers also read or
    that two of its own projections share (a pruned copy would sit beside the shared weight;
    ``_groups.shared_constant``), named in the refusals.
    """

    unit_name = "neurons"
    looks_for = (
        "it looks for a MatMul/Gemm down projection reading, through Relu/Gelu/SiLU-like activations, bias Adds or a "
        "gated product, up projections with constant weights (a PRelu between them is not walked)"
    )
    layer_ops = ("MatMul", "Gemm")
    consumer_rows = "the down projections' rows"

    def find_groups(self, graph: ir.Graph) -> tuple[list[ChannelGroup], dict[str, str]]:
        return ffn_groups(graph)

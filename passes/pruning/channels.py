"""Conv channel groups: output channels, through BatchNorm, activations and depthwise Convs, to the next Conv."""

from __future__ import annotations

from functools import partial

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_domain
from passes._utils import constant_array
from passes.pruning._base import PruningPass
from passes.pruning._groups import ChannelGroup, Cut, outside_reader, trace_operands

# Ops that keep each channel of an NCHW tensor to itself.
_CHANNELWISE = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Mish",
        "Softplus", "Identity", "MaxPool", "AveragePool", "Add", "Sub", "Mul", "Div", "BatchNormalization",
    }
)  # fmt: skip


def channel_groups(graph: ir.Graph) -> tuple[list[ChannelGroup], dict[str, str]]:
    """Conv channel groups of ``graph``, and why other Convs' inputs were not groups.

    A group is found from its consumer, a Conv (``group=1``) with a constant weight:
    walking back from its input through channel-wise ops (activations, pooling,
    BatchNormalization, per-channel constant Add/Mul, zero Pads of H and W) and depthwise
    Convs must end at
    Convs with constant weights, and no value on the way may be read elsewhere. A
    residual Add that ties these channels to another block's fails that test, so the
    group is left whole.
    """
    groups, refused = [], {}
    for node in graph:
        if node.op_type != "Conv" or not is_onnx_domain(node) or node.attributes.get_int("group", 1) != 1:
            continue
        weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is None or weight.ndim < 3 or node.inputs[0].producer() is None:
            continue
        found = _group(node, weight.shape[1])
        if isinstance(found, ChannelGroup):
            groups.append(found)
        elif found:
            refused[node.name or node.op_type] = found
    return groups, refused


def _group(consumer: ir.Node, channels: int) -> ChannelGroup | str | None:
    group = ChannelGroup("channels", consumer.name or "", channels, 1, consumer, channel_axis=1)
    region: dict[int, ir.Node] = {}
    # Nodes that carry the channels from input to output; producers only emit them.
    passthrough: set[int] = set()
    stack, seen = [consumer.inputs[0]], set()
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        node = value.producer()
        if node is None:
            return None  # the image itself
        if node.op_type == "Conv" and is_onnx_domain(node):
            weight = constant_array(node.inputs[1])
            if weight is None or weight.shape[0] != channels:
                return f"{node.name}: a Conv without a constant weight of {channels} output channels"
            region[id(node)] = node
            group.producers.append(Cut(node, 1, 0))
            has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
            if has_bias:
                if constant_array(node.inputs[2]) is None:
                    return f"{node.name}: bias is not a constant"
                group.vectors.append(Cut(node, 2, 0))
            depthwise = node.attributes.get_int("group", 1)
            if depthwise == channels and weight.shape[1] == 1:
                # Depthwise: channel c in is channel c out, so the group continues through it.
                group.group_counts.append(node)
                passthrough.add(id(node))
                stack.append(node.inputs[0])
            elif depthwise != 1:
                return f"{node.name}: a grouped Conv that is not depthwise"
            continue
        if node.op_type == "Pad" and is_onnx_domain(node):
            refusal = _spatial_padding(node)
            if refusal:
                return refusal
            region[id(node)] = node
            passthrough.add(id(node))
            stack.append(node.inputs[0])
            continue
        if node.op_type not in _CHANNELWISE or not is_onnx_domain(node):
            return None  # e.g. a Reshape or Concat: channels are not traced through it
        region[id(node)] = node
        passthrough.add(id(node))
        axis_of = partial(_channel_axis_of, channels=channels, batch_norm=node.op_type == "BatchNormalization")
        refusal = trace_operands(node, group, stack, axis_of)
        if refusal:
            return refusal
    if not group.producers:
        return None
    refusal = outside_reader(region, passthrough, consumer, " (a residual tie?)")
    if refusal:
        return refusal
    group.values = [output for node in region.values() for output in node.outputs if output is not None]
    return group if channels >= 2 else None


def _spatial_padding(pad: ir.Node) -> str | None:
    """Why a Pad is not per-channel: it must pad only H and W, with zeros (TF-style "same" padding)."""
    pads = constant_array(pad.inputs[1]) if len(pad.inputs) > 1 and pad.inputs[1] is not None else None
    value = constant_array(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2] is not None else None
    axes = pad.inputs[3] if len(pad.inputs) > 3 else None
    mode = pad.attributes.get_string("mode", "constant")
    if pads is None or pads.size != 8 or axes is not None or mode != "constant":
        return f"{pad.name}: a Pad that is not constant padding of an NCHW tensor's four dims"
    if pads[[0, 1, 4, 5]].any() or (value is not None and np.any(value != 0)):
        return f"{pad.name}: a Pad of the batch or channel axis, or with a non-zero value"
    return None


def _channel_axis_of(shape: tuple[int, ...], channels: int, batch_norm: bool) -> int | None:
    """The axis of a per-channel constant (``[C]`` for BatchNorm, ``[C, 1, 1]``/``[1, C, 1, 1]`` broadcast)."""
    if batch_norm:
        return 0 if shape == (channels,) else None
    if len(shape) >= 3 and shape[-3] == channels and all(d == 1 for i, d in enumerate(shape) if i != len(shape) - 3):
        return len(shape) - 3
    return None


class ChannelPruningPass(PruningPass):
    """Remove the least important Conv output channels: producer filters and biases, BatchNorm and other
    per-channel constants, depthwise Convs on the way (their filters and ``group``), and the
    consuming Conv's input channels.

    Importance is weight magnitude or, with calibration data, activation (RMS per channel
    of the consumer's input). No least-squares repair: re-fitting a Conv needs its patches,
    not its channels. The twin is the input with the removed channels' input filters of
    the consuming Conv zeroed (whatever an activation makes of a removed channel, only
    that Conv reads it). Refuses groups tied to other blocks by residual Adds, and Convs
    whose input comes through ops that move channels (Reshape, Concat, Split).
    """

    unit_name = "channels"
    consumer_rows = "the next Convs' input filters"

    def find_groups(self, graph: ir.Graph) -> tuple[list[ChannelGroup], dict[str, str]]:
        return channel_groups(graph)

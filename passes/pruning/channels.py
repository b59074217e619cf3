"""Conv channel groups: output channels, through BatchNorm, activations and depthwise Convs, to the next Conv
(or, past a global pooling, to the classifier's Gemm/MatMul)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from fnmatch import fnmatchcase
from functools import partial

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_domain
from passes._utils import weight_array
from passes.pruning._base import PruningPass
from passes.pruning._groups import ChannelGroup, Cut, outside_reader, shared_constant, trace_operands

# What the ratio of a channel cut counts (ChannelPruningPass's ``cost``).
COSTS = ("channels", "parameters", "macs")
# Ops that keep each channel of an NCHW tensor to itself.
_CHANNELWISE = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Mish",
        "Softplus", "Gelu", "Erf", "Identity", "MaxPool", "AveragePool", "Add", "Sub", "Mul", "Div",
        "BatchNormalization",
    }
)  # fmt: skip


# Ops that move, join or split channels, or resample them (Resize, Upsample: U-Net and FPN decoders): a Conv
# reading through one is refused, named (not silently skipped).
_MOVES_CHANNELS = frozenset(
    {"Reshape", "Concat", "Split", "Transpose", "Slice", "Gather", "Flatten", "Squeeze", "Unsqueeze", "DepthToSpace",
     "SpaceToDepth", "Tile", "Expand", "Resize", "Upsample"}
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

    A classifier head is a group too: a Gemm (``transA=0``, constant weight) or MatMul
    (constant 2-D weight) reading ``[N, C]`` from a global pooling over H and W
    (GlobalAveragePool, GlobalMaxPool, or ReduceMean/ReduceMax over axes 2 and 3), through
    a Flatten (``axis=1``), a Squeeze of H and W or a Reshape to ``[N, C]``. Behind the
    pooling the walk is the one above: the channels of the last Conv before it
    (EfficientNet's and MobileNet's 1×1 "head" Conv) are cut with the classifier's weight
    rows that read them, which hold most of the head's parameters for little compute.
    """
    groups, refused = [], {}
    for node in graph:
        if not is_onnx_domain(node) or not node.inputs or node.inputs[0] is None or node.inputs[0].producer() is None:
            continue
        if node.op_type == "Conv" and node.attributes.get_int("group", 1) == 1:
            weight = weight_array(node.inputs[1]) if len(node.inputs) > 1 else None
            if weight is None or weight.ndim < 3:
                continue
            found = _group(node, weight.shape[1], node.inputs[0], [])
        elif node.op_type in ("Gemm", "MatMul"):
            found = _classifier_group(node)
        else:
            continue
        if isinstance(found, ChannelGroup) and (shared := shared_constant(found)):
            refused[node.name or node.op_type] = shared
        elif isinstance(found, ChannelGroup):
            groups.append(found)
        elif found:
            refused[node.name or node.op_type] = found
    return groups, refused


def _classifier_group(consumer: ir.Node) -> ChannelGroup | str | None:
    """The group of a Gemm/MatMul reading globally pooled channels; None if its input is not such a pooling."""
    weight = weight_array(consumer.inputs[1]) if len(consumer.inputs) > 1 else None
    if weight is None or weight.ndim != 2:
        return None
    if consumer.op_type == "Gemm" and consumer.attributes.get_int("transA", 0):
        return None
    transposed = consumer.op_type == "Gemm" and consumer.attributes.get_int("transB", 0)
    channels = weight.shape[1] if transposed else weight.shape[0]
    route, shape_constants = [], []
    value = consumer.inputs[0]
    node = value.producer()
    # From [N, C] back to the pooled [N, C, 1, 1]: one Flatten, Squeeze or Reshape.
    if node is not None and is_onnx_domain(node) and node.op_type in ("Flatten", "Squeeze", "Reshape"):
        refusal = _flattening(node, channels, shape_constants)
        if refusal is not None:
            return refusal or None
        route.append(node)
        value = node.inputs[0]
        node = value.producer()
    if node is None or not is_onnx_domain(node) or not _global_pooling(node):
        return None  # not a classifier over pooled channels (a flattened feature map mixes positions)
    route.append(node)
    found = _group(consumer, channels, node.inputs[0], route)
    if isinstance(found, ChannelGroup):
        found.shape_constants.extend(shape_constants)
    return found


def _flattening(node: ir.Node, channels: int, shape_constants: list) -> str | None:
    """Why ``node`` is not a flattening of pooled ``[N, C, 1, 1]`` to ``[N, C]`` ("" when it is none at all).

    A Reshape whose target names the channel count (``[-1, C]``) is recorded in
    ``shape_constants`` so the cut updates it; ``[N, -1]`` needs no update.
    """
    if node.op_type == "Flatten":
        return None if node.attributes.get_int("axis", 1) == 1 else ""
    if node.op_type == "Squeeze":
        axes = _axes(node)
        return None if axes is not None and sorted(a % 4 for a in axes) == [2, 3] else ""
    target = weight_array(node.inputs[1])
    if target is None or target.ndim != 1 or target.size != 2:
        return ""
    if node.attributes.get_int("allowzero", 0) and 0 in target:
        return ""  # a literal 0 dim
    if target[1] == channels and target[0] != channels:
        shape_constants.append((node, node, 1))
        return None
    return None if target[1] == -1 and target[0] != -1 else ""


def _global_pooling(node: ir.Node) -> bool:
    """Whether ``node`` pools an NCHW tensor over H and W only (so each channel stays itself)."""
    if node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        return True
    if node.op_type not in ("ReduceMean", "ReduceMax"):
        return False
    axes = _axes(node)
    shape = node.inputs[0].shape
    rank = shape.rank() if shape is not None else None
    if axes is None or (rank is None and any(a < 0 for a in axes)):
        return False
    return sorted(a % (rank or 4) for a in axes) == [2, 3] and rank in (None, 4)


def _axes(node: ir.Node) -> list[int] | None:
    """The constant ``axes`` of a Squeeze or Reduce op (an input since opsets 13/18, an attribute before)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = weight_array(node.inputs[1])
        return None if axes is None else [int(a) for a in np.ravel(axes)]
    attribute = node.attributes.get("axes")
    return None if attribute is None else [int(a) for a in attribute.value]


def _group(consumer: ir.Node, channels: int, start: ir.Value, route: list[ir.Node]) -> ChannelGroup | str | None:
    """The group ``consumer`` reads from ``start`` (``route``: the nodes between them, which carry the channels)."""
    group = ChannelGroup("channels", consumer.name or "", channels, 1, consumer, channel_axis=1)
    # Nodes that carry the channels from input to output; producers only emit them.
    region: dict[int, ir.Node] = {id(node): node for node in route}
    passthrough: set[int] = set(region)
    stack, seen = [start], set()
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        node = value.producer()
        if node is None:
            return None  # the image itself
        if node.op_type == "Conv" and is_onnx_domain(node):
            weight = weight_array(node.inputs[1])
            if weight is None or weight.shape[0] != channels:
                return f"{node.name}: a Conv without a constant weight of {channels} output channels"
            region[id(node)] = node
            group.producers.append(Cut(node, 1, 0))
            has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
            if has_bias:
                if weight_array(node.inputs[2]) is None:
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
            # Named wherever the channels were a Conv's, whichever operand the walk took first: a GroupNormalization
            # or InstanceNormalization between two Convs (mixing a channel's positions, or channels) was met before
            # the Conv behind it and the group skipped without a word.
            if group.producers or _reaches_a_conv(node):
                return f"its input channels come through {node.op_type} ({node.name}), which the walk does not trace"
            return None  # not channels a Conv made (e.g. a Resize of the image)
        region[id(node)] = node
        passthrough.add(id(node))
        axis_of = partial(_channel_axis_of, channels=channels, batch_norm=node.op_type == "BatchNormalization")
        refusal = trace_operands(node, group, stack, axis_of)
        if refusal:
            return refusal
    if not group.producers:
        return None
    refusal = outside_reader(region, passthrough, consumer, " (a residual tie?)", channel_axis=1)
    if refusal:
        return refusal
    group.values = [output for node in region.values() for output in node.outputs if output is not None]
    return group if channels >= 2 else None


def _reaches_a_conv(node: ir.Node, depth: int = 8) -> bool:
    """Whether channels ``node`` moves were made by a Conv: one reached walking back through channel-wise and
    channel-moving ops (a Concat of two branches' activations), not the image (a Transpose of NHWC input)."""
    stack, seen = [(node, 0)], set()
    while stack:
        current, steps = stack.pop()
        if id(current) in seen or steps > depth:
            continue
        seen.add(id(current))
        for value in current.inputs:
            producer = value.producer() if value is not None else None
            if producer is None or not is_onnx_domain(producer):
                continue
            if producer.op_type == "Conv":
                return True
            if producer.op_type in _CHANNELWISE or producer.op_type in _MOVES_CHANNELS or producer.op_type == "Pad":
                stack.append((producer, steps + 1))
    return False


def _spatial_padding(pad: ir.Node) -> str | None:
    """Why a Pad is not per-channel: it must pad only H and W, with zeros (TF-style "same" padding)."""
    pads = weight_array(pad.inputs[1]) if len(pad.inputs) > 1 and pad.inputs[1] is not None else None
    value = weight_array(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2] is not None else None
    axes = pad.inputs[3] if len(pad.inputs) > 3 else None
    mode = pad.attributes.get_string("mode", "constant")
    if pads is None or pads.size != 8 or axes is not None or mode != "constant":
        return f"{pad.name}: a Pad that is not constant padding of an NCHW tensor's four dims"
    if pads[[0, 1, 4, 5]].any() or (value is not None and np.any(value != 0)):
        return f"{pad.name}: a Pad of the batch or channel axis, or with a non-zero value"
    return None


def _output_positions(node: ir.Node) -> int | None:
    """Positions per image a Conv/Gemm/MatMul computes each output channel at (H × W; 1 for ``[N, C]``)."""
    shape = node.outputs[0].shape
    if shape is None:
        return None
    inner = list(shape)[2:] if node.op_type == "Conv" else list(shape)[1:-1]
    return math.prod(inner) if all(isinstance(d, int) for d in inner) else None


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
    consuming Conv's input channels — or, for the channels a classifier reads after a global
    pooling, its Gemm/MatMul weight rows (and the Flatten/Reshape between them).

    Importance is weight magnitude or, with calibration data, activation (RMS per channel
    of the consumer's input) or reconstruction (``PruningPass``; where the consumer is
    re-fitted). With calibration data the consumer is re-fitted by least squares where its
    output is its input channels times a matrix: a 1×1 Conv (stride 1,
    no padding) or the classifier's Gemm/MatMul (one row per image, after the pooling);
    a 3×3 Conv is not (re-fitting it needs its patches, not its channels). The twin is the
    input with the removed channels' rows of the consumer's weight zeroed (whatever an
    activation makes of a removed channel, only that consumer reads it). Refuses groups
    tied to other blocks by residual Adds, Convs whose input comes through ops that
    move channels (Reshape, Concat, Split), channels whose count a ``Shape``/``Size`` may
    pass on (``_groups.width_reader``), and groups whose weights other layers also read
    (``_groups.shared_constant``: a pruned copy would sit beside the shared weight).
    """

    unit_name = "channels"
    looks_for = "it looks for a Conv whose output channels reach other Convs (or a pooled Gemm) through per-channel ops"
    layer_ops = ("Conv",)
    consumer_rows = "the next layers' weights (Conv input filters, classifier rows)"

    def __init__(self, ratio: float, *, cost: str = "channels", exclude: Iterable[str] = (), **options) -> None:
        """``cost``: what the ratio counts and, with ``ranking="global"``, what a channel's effect is weighed
        against (``COSTS``): ``channels`` (each counts one), ``parameters`` or ``macs`` (the
        weight elements, or multiply-adds per image, that removing the channel saves: the
        ratio is then that share of the groups' parameters or multiply-adds, and channels go
        by effect per parameter or per multiply-add).

        ``exclude``: glob patterns; a group whose consumer's node name or op type matches one
        is left whole (``exclude=["Conv"]`` cuts only the classifier head's channels)."""
        if cost not in COSTS:
            raise ValueError(f"unknown channel cost {cost!r} (choose from {', '.join(COSTS)})")
        super().__init__(ratio, **options)
        self.cost = cost
        self.exclude = tuple(exclude)
        self._unknown_positions: str | None = None

    def find_groups(self, graph: ir.Graph) -> tuple[list[ChannelGroup], dict[str, str]]:
        groups, refused = channel_groups(graph)
        kept = []
        for group in groups:
            node = group.consumer
            pattern = next(
                (p for p in self.exclude if fnmatchcase(node.name or "", p) or fnmatchcase(node.op_type, p)), None
            )
            if pattern is None:
                kept.append(group)
            else:
                refused[group.name] = f"excluded: its consumer {node.name} ({node.op_type}) matches {pattern!r}"
        return kept, refused

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._unknown_positions = None
        return super().call(model)

    def unit_cost(self, group: ChannelGroup) -> float | None:
        if self.cost == "channels":
            return None
        total = 0.0
        for cut in [*group.producers, *group.vectors, group.consumer_cut]:
            array = weight_array(cut.node.inputs[cut.slot])
            axis = cut.axis % array.ndim
            if array.shape[axis] == 1:  # broadcast: nothing cut
                continue
            per_unit = array.size / array.shape[axis] * group.unit
            if self.cost == "parameters":
                total += per_unit
            elif cut.slot == 1 and cut.node.op_type in ("Conv", "Gemm", "MatMul"):
                # A weight: each element is a multiply-add at every output position. A per-channel vector (a
                # BatchNormalization's scale, a PRelu's slope, a Mul's constant: also input 1) is none.
                positions = _output_positions(cut.node)
                if positions is None:
                    if self._unknown_positions is None:
                        self._unknown_positions = cut.node.name
                        self.note(f"cost macs: {cut.node.name} has no static output shape; ranked by channel counts")
                    return None
                total += per_unit * positions
        return total

"""Channel groups: the constants that must be cut together to remove one unit (a neuron, a head).

A group describes, for ``size`` units of ``unit`` channels each, every slice of a
constant that holds those channels (``Cut``), the attributes that count them
(``num_heads``), and the *consumer*: the layer that reads the channels and whose
weight rows go with them (its input is where activation importance is measured and
what repair re-fits against).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_domain
from passes._utils import add_initializer, weight_array


@dataclass(frozen=True)
class Cut:
    """Slice input ``slot`` of ``node`` along ``axis``: ``blocks`` repeats of ``size * unit`` channels
    (packed Q/K/V weights have three blocks), keeping the chosen units' channels in each."""

    node: ir.Node
    slot: int
    axis: int
    blocks: int = 1
    # Channels per unit in this constant when they differ from the group's: grouped-query
    # attention cuts one key/value head (head_size channels) with its query group.
    unit: int | None = None

    def indices(self, kept: list[int], size: int, unit: int) -> np.ndarray:
        """The channel indices along ``axis`` that remain when only units ``kept`` stay."""
        unit = self.unit or unit
        width = size * unit
        return np.array(
            [b * width + u * unit + i for b in range(self.blocks) for u in kept for i in range(unit)], dtype=np.int64
        )


@dataclass
class ChannelGroup:
    """Units that can be removed together; ``consumer`` reads them through input 0, weight ``[size*unit, ...]``."""

    kind: str
    name: str
    size: int
    unit: int
    consumer: ir.Node
    producers: list[Cut] = field(default_factory=list)
    vectors: list[Cut] = field(default_factory=list)
    # (Reshape, the node holding its target's channel count, that node's input slot)
    shape_constants: list[tuple[ir.Node, ir.Node, int]] = field(default_factory=list)
    head_counts: list[ir.Node] = field(default_factory=list)
    # Shape-constant entries counting units away from the last axis (grouped-query head
    # counts): (node, input slot, index in the constant, count per unit).
    count_entries: list[tuple[ir.Node, int, int, int]] = field(default_factory=list)
    # num_heads attributes that count more than one head per unit: (node, heads per unit).
    grouped_head_counts: list[tuple[ir.Node, int]] = field(default_factory=list)
    # Intermediate tensors whose declared shapes are dropped (re-inferred by ORT).
    reshaped_values: list[ir.Value] = field(default_factory=list)
    # Tensors carrying the channels (their declared channel dim shrinks with them).
    values: list[ir.Value] = field(default_factory=list)
    # Depthwise Convs on the way: their ``group`` attribute is the channel count.
    group_counts: list[ir.Node] = field(default_factory=list)
    # Where activations hold the channels: -1 (transformer features) or 1 (NCHW images).
    channel_axis: int = -1

    @property
    def consumer_cut(self) -> Cut:
        """The consumer's weight rows (columns of a Gemm with ``transB``)."""
        transposed = self.consumer.op_type == "Gemm" and self.consumer.attributes.get_int("transB", 0)
        return Cut(self.consumer, 1, 1 if transposed or self.consumer.op_type == "Conv" else 0)

    def weight_norms(self) -> np.ndarray:
        """Per-unit L2 norm of the producers' columns times that of the consumer's rows (magnitude importance)."""
        produced = np.zeros(self.size)
        for cut in self.producers:
            array = weight_array(cut.node.inputs[cut.slot]).astype(np.float64)
            produced += _unit_sums(np.moveaxis(array, cut.axis, -1) ** 2, self.size, cut.unit or self.unit, cut.blocks)
        consumed = self.consumer_row_norms()
        return np.sqrt(produced) * consumed

    def consumer_row_norms(self) -> np.ndarray:
        """Per-unit L2 norm of the consumer weight's rows that read the unit."""
        weight = weight_array(self.consumer.inputs[1]).astype(np.float64)
        rows = np.moveaxis(weight, self.consumer_cut.axis, -1)
        return np.sqrt(_unit_sums(rows**2, self.size, self.unit, 1))

    def apply(self, graph: ir.Graph, kept: list[int]) -> None:
        """Cut every constant down to the ``kept`` units and update shape constants and head counts."""
        kept = sorted(kept)
        for cut in [*self.producers, *self.vectors, self.consumer_cut]:
            array = weight_array(cut.node.inputs[cut.slot])
            axis = cut.axis % array.ndim
            if array.shape[axis] == 1:  # broadcast along the channel axis: nothing to cut
                continue
            sliced = np.take(array, cut.indices(kept, self.size, self.unit), axis=axis)
            name = f"{cut.node.inputs[cut.slot].name}.pruned"
            cut.node.replace_input_with(cut.slot, add_initializer(graph, name, np.ascontiguousarray(sliced)))
        for reshape, holder, slot in self.shape_constants:
            shape = weight_array(holder.inputs[slot]).copy()
            shape[-1] = len(kept) * self.unit
            target = add_initializer(graph, f"{holder.inputs[slot].name}.pruned", shape)
            if holder is reshape:
                reshape.replace_input_with(slot, target)
                continue
            # A Concat of run-time dims may be shared with other Reshapes: give this one its own.
            inputs = list(holder.inputs)
            inputs[slot] = target
            concat = ir.Node("", "Concat", inputs, attributes=[ir.AttrInt64("axis", 0)], name=f"{reshape.name}_shape")
            graph.insert_before(reshape, concat)
            reshape.replace_input_with(1, concat.outputs[0])
        for node in self.head_counts:
            node.attributes["num_heads"] = ir.AttrInt64("num_heads", len(kept))
            if "qkv_hidden_sizes" in node.attributes:  # packed Attention's equal thirds (heads._attention)
                node.attributes["qkv_hidden_sizes"] = ir.AttrInt64s("qkv_hidden_sizes", [len(kept) * self.unit] * 3)
        for node in self.group_counts:
            node.attributes["group"] = ir.AttrInt64("group", len(kept))
        for node, per_unit in self.grouped_head_counts:
            node.attributes["num_heads"] = ir.AttrInt64("num_heads", len(kept) * per_unit)
        for node, slot, index, per_unit in self.count_entries:
            shape = weight_array(node.inputs[slot]).copy()
            shape[index] = len(kept) * per_unit
            node.replace_input_with(slot, add_initializer(graph, f"{node.inputs[slot].name}.pruned", shape))
        for value in self.reshaped_values:
            value.shape = None
        for value in self.values:
            if value.shape is not None and value.shape.rank() > self.channel_axis % max(value.shape.rank(), 1):
                dims = list(value.shape)
                axis = self.channel_axis % len(dims)
                if isinstance(dims[axis], int):
                    dims[axis] = dims[axis] * len(kept) // self.size
                value.shape = ir.Shape(dims)


def _unit_sums(array: np.ndarray, size: int, unit: int, blocks: int) -> np.ndarray:
    """Sum ``array`` (channels on the last axis: ``blocks`` x ``size`` x ``unit``) per unit."""
    channels = array.reshape(-1, blocks, size, unit)
    return channels.sum(axis=(0, 1, 3))


def width_last_reshape_target(node: ir.Node, channels: int) -> tuple[ir.Node, int] | None:
    """Where a Reshape that keeps ``channels`` last stores that number: ``(node, input slot)``.

    The target is a constant ending in ``channels``, or a Concat (of run-time dims)
    whose last piece is such a constant.
    """
    if node.op_type != "Reshape" or not is_onnx_domain(node):
        return None
    source = node.inputs[0].shape
    if source is not None and (source.rank() < 1 or (isinstance(source[-1], int) and source[-1] != channels)):
        return None
    holder, slot = node, 1
    concat = node.inputs[1].producer()
    if weight_array(node.inputs[1]) is None and concat is not None and concat.op_type == "Concat":
        holder, slot = concat, len(concat.inputs) - 1
    shape = weight_array(holder.inputs[slot])
    if shape is None or shape.ndim != 1 or shape[-1] != channels:
        return None
    return holder, slot


def trace_operands(
    node: ir.Node, group: ChannelGroup, stack: list[ir.Value], channel_axis: Callable[[tuple[int, ...]], int | None]
) -> str | None:
    """Queue a channel-wise node's computed operands for tracing; record its per-channel constants as cuts.

    ``channel_axis`` maps a constant's shape to the axis holding the channels (None: not
    per-channel). Scalars need no cut. Returns why the node refuses, or None.
    """
    for slot, operand in enumerate(node.inputs):
        if operand is None:
            continue
        constant = weight_array(operand)
        if constant is None:
            stack.append(operand)
        elif constant.size > 1:
            axis = channel_axis(constant.shape)
            if axis is None:
                return f"{node.name}: a constant operand of shape {list(constant.shape)} is not per-channel"
            group.vectors.append(Cut(node, slot, axis))
    return None


def outside_reader(
    region: dict[int, ir.Node], passthrough: set[int], consumer: ir.Node, hint: str, channel_axis: int = -1
) -> str | None:
    """Why the region's channels cannot be cut: an output that is a model output or is read outside it.

    Only pass-through nodes and the consumer's data input (input 0: a consumer reading the
    channels as its bias too is no group) may read the region's values, and a ``Shape``
    that provably never passes on the channel count (``width_reader``). With a ``hint``
    (Conv channels), a residual ``Add`` reader is named as the residual tie it is.
    """
    for node in region.values():
        for output in node.outputs:
            if output is None:
                continue
            if output.is_graph_output():
                return f"{node.name} is a model output"
            if (reader := width_reader(output, channel_axis)) is not None:
                return reader
            outside = [
                user
                for user, index in output.uses()
                if not (user.op_type in ("Shape", "Size") and is_onnx_domain(user))
                and id(user) not in passthrough
                and not (user is consumer and index == 0)
            ]
            residual = [user for user in outside if user.op_type == "Add"]
            if residual and hint:
                return (
                    f"residual tie: {output.name} is also read by {residual[0].name or 'Add'}, a residual Add "
                    "outside the block (cutting these channels would change the skip path)"
                )
            if outside:
                return f"{output.name} is also read by {outside[0].name or outside[0].op_type}{hint}"
    return None


def width_reader(value: ir.Value, channel_axis: int) -> str | None:
    """Why a ``Shape``/``Size`` reader of ``value`` may pass on its channel count, which the cut changes, or None.

    The cut model would compute with the new width where the input computed with the old
    one (``y / sqrt(width)``), so such a reader leaves the group whole. A ``Shape`` may stay
    where ``value``'s rank is known and its output either leaves out the channel axis
    (``start``/``end``) or is read only by ``Gather``s of constant indices that pick other
    dims (GPT-2's ``x.size()[:-1]``, spelled ``Shape`` → ``Gather(0)``, ``Gather(1)``).
    """
    for reader, _ in value.uses():
        if reader.op_type not in ("Shape", "Size") or not is_onnx_domain(reader):
            continue
        refusal = (
            f"{value.name}'s width is read by {reader.name or reader.op_type} ({reader.op_type}): "
            "the cut would change what it computes"
        )
        if reader.op_type == "Size" or value.shape is None:
            return refusal
        rank = value.shape.rank()
        dims = list(range(rank))[reader.attributes.get_int("start", 0) : reader.attributes.get_int("end", rank)]
        axis = channel_axis % max(rank, 1)
        if axis not in dims:
            continue
        position, output = dims.index(axis), reader.outputs[0]
        if output.is_graph_output():
            return refusal
        for user, slot in output.uses():
            indices = weight_array(user.inputs[1]) if user.op_type == "Gather" and len(user.inputs) > 1 else None
            picked = (
                indices is not None
                and is_onnx_domain(user)
                and slot == 0
                and user.attributes.get_int("axis", 0) == 0
                and all(-len(dims) <= int(i) < len(dims) for i in np.ravel(indices))
            )
            if not picked or any(int(i) % len(dims) == position for i in np.ravel(indices)):
                return refusal
    return None


def shared_constant(group: ChannelGroup) -> str | None:
    """Why cutting ``group`` would store a constant twice (a weight shared by several layers), or None.

    A constant the group cuts that a node outside its cuts also reads (ALBERT's layers sharing
    their weights, a graph output), or that two of its own cuts read (an autoencoder's weight
    tied between its up and down projections), keeps a copy per reader: the pruned copies
    beside the full one make the model larger, not smaller.
    """
    cuts = [group.consumer_cut, *group.producers, *group.vectors]
    slots = {(id(cut.node), cut.slot) for cut in cuts}
    read_by: dict[int, int] = {}
    for cut in cuts:
        value = cut.node.inputs[cut.slot]
        what = _constant_role(value)
        if value.is_graph_output():
            return f"its {what} {value.name} is also a graph output: pruning would store a pruned copy beside it"
        readers = {id(user) for user, index in value.uses() if (id(user), index) not in slots}
        if readers:
            shared = "shared by several layers" if what == "weight" else "equal vectors merged into one, or shared"
            return (
                f"its {what} {value.name} is also read by {len(readers)} other node(s) ({shared}): "
                "pruning would store a pruned copy beside it"
            )
        read_by[id(value)] = read_by.get(id(value), 0) + 1
        if read_by[id(value)] > 1:
            return (
                f"its {what} {value.name} is read by {read_by[id(value)]} of the layers it cuts (tied between "
                "them): each would keep its own pruned copy"
            )
    return None


def _constant_role(value: ir.Value) -> str:
    """ "weight" for a matrix or a kernel, "bias or scale vector" for a constant of rank 1 (or unknown rank)."""
    shape = value.shape if value.shape is not None else getattr(value.const_value, "shape", None)
    return "weight" if shape is not None and len(shape) >= 2 else "bias or scale vector"

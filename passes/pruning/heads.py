"""Finding attention-head groups on the fused attention ops.

Heads are pruned on the fused graph, after ``fuse-attention``: there a head is a
``num_heads`` attribute and a slice of constant projection weights, instead of head
counts spread over Reshape targets, Transposes and per-exporter shape arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_domain
from passes._utils import weight_array
from passes.pruning._base import PruningPass
from passes.pruning._groups import ChannelGroup, Cut, shared_constant, width_last_reshape_target, width_reader


def head_groups(graph: ir.Graph) -> tuple[list[ChannelGroup], dict[str, str]]:
    """Head groups of the com.microsoft ``Attention`` (packed QKV) and ``MultiHeadAttention`` nodes.

    The attention output must feed only one MatMul/Gemm with a constant weight (the
    output projection), whose rows are cut with the heads. ``MultiHeadAttention``
    needs its query, key and value to be projections (MatMul, optional bias Add,
    optional RotaryEmbedding; or a packed ``[3 × width]`` bias as its input 3, as ONNX Runtime's
    transformers optimizer writes it; a ``key_padding_mask`` is the same for every head) with as many
    heads each, or — grouped-query attention —
    key/value projections with fewer heads repeated as the exporters write ``repeat_kv``
    (a unit is then a key/value head with the query heads reading it); other repetitions
    are left whole.
    """
    groups, refused = [], {}
    for node in graph:
        if node.domain == MS_DOMAIN and node.op_type == "GroupQueryAttention":
            # fuse-group-query-attention's op over a key/value cache: its heads are the cache's dims, which the
            # model's past/present inputs and outputs declare; a cut would change what a generation loop feeds.
            refused[node.name or node.op_type] = _CACHED_HEADS
            continue
        if node.domain != MS_DOMAIN or node.op_type not in ("Attention", "MultiHeadAttention"):
            continue
        found = _attention(node) if node.op_type == "Attention" else _multi_head(node)
        if isinstance(found, ChannelGroup) and (shared := shared_constant(found)):
            found = shared
        if isinstance(found, str):
            refused[node.name or node.op_type] = found
        else:
            groups.append(found)
    return groups, refused


_CACHED_HEADS = (
    "GroupQueryAttention over a key/value cache: its key/value heads are the cache's, a dim of the model's "
    "past/present inputs and outputs, which a cut would change"
)


def _output_projection(node: ir.Node, hidden: int) -> tuple[ir.Node, list, list[ir.Value]] | str:
    """The output projection reading the attention output, the Reshape targets on the way, and their values.

    Between them may sit Reshapes that keep the width last (GPT-2 flattens to 2-D for
    its Conv1D-as-Gemm); their targets' last entry is the width and is cut with it.
    """
    if len(node.outputs) > 1 and any(v is not None and v.uses() for v in node.outputs[1:]):
        return "its present/extra outputs are used"
    value, reshapes, values = node.outputs[0], [], [node.outputs[0]]
    while True:
        if value.is_graph_output():
            return "its output is a model output"
        if (reader := width_reader(value, -1)) is not None:
            return reader
        users = [
            (user, index)
            for user, index in value.uses()
            if not (user.op_type in ("Shape", "Size") and is_onnx_domain(user))
        ]
        if len(users) != 1 or users[0][1] != 0:
            return "its output is read by more than the output projection"
        user = users[0][0]
        target = width_last_reshape_target(user, hidden)
        if target is None:
            break
        reshapes.append((user, *target))
        value = user.outputs[0]
        values.append(value)
    weight = weight_array(user.inputs[1]) if len(user.inputs) > 1 else None
    transposed = user.op_type == "Gemm" and user.attributes.get_int("transB", 0)
    if user.op_type not in ("MatMul", "Gemm") or weight is None or weight.ndim != 2:
        return "its output does not reach a MatMul/Gemm with a constant weight"
    if weight.shape[1 if transposed else 0] != hidden:
        return "the output projection does not read the attention's width"
    return user, reshapes, values


def _attention(node: ir.Node) -> ChannelGroup | str:
    weight = weight_array(node.inputs[1]) if len(node.inputs) > 1 else None
    heads = node.attributes.get_int("num_heads", 0)
    if weight is None or weight.ndim != 2 or weight.shape[1] % 3 or heads < 2:
        return "no constant packed QKV weight or a single head"
    # qkv_hidden_sizes of three equal thirds of the weight (onnxscript's ort_fusions write it so) says what the
    # weight does, and is cut with the heads (ChannelGroup.apply). Only widths that differ stop the cut.
    sizes = list(node.attributes.get_ints("qkv_hidden_sizes", [])) if "qkv_hidden_sizes" in node.attributes else None
    if sizes is not None and sizes != [weight.shape[1] // 3] * 3:
        return "qkv_hidden_sizes: query, key and value of different widths"
    if any(v is not None for i, v in enumerate(node.inputs) if i == 4 or i > 5):
        return "past key/value inputs"
    if len(node.inputs) > 5 and (refusal := _per_head_bias(node.inputs[5])):
        return refusal
    hidden = weight.shape[1] // 3
    projection = _output_projection(node, hidden)
    if isinstance(projection, str):
        return projection
    consumer, reshapes, values = projection
    group = ChannelGroup("heads", node.name or "", heads, hidden // heads, consumer, head_counts=[node])
    group.values, group.shape_constants = values, reshapes
    group.producers.append(Cut(node, 1, 1, blocks=3))
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        if weight_array(node.inputs[2]) is None:
            return "bias is not a constant"
        group.vectors.append(Cut(node, 2, 0, blocks=3))
    # Attention's default scale is 1/sqrt(head_size), unchanged by pruning heads.
    return group


def _per_head_bias(bias: ir.Value | None) -> str | None:
    """Why an ``attention_bias`` input stops the heads being cut, or None (absent, or ``[B or 1, 1, S, T]``).

    A bias shared by all heads (the dynamo exporter's padding mask) is fine; one per head would need cutting too.
    """
    shape = bias.shape if bias is not None else None
    if bias is None or (shape is not None and shape.rank() == 4 and shape[1] == 1):
        return None
    return "an attention_bias not known to be shared by all heads"


def _multi_head(node: ir.Node) -> ChannelGroup | str:
    heads = node.attributes.get_int("num_heads", 0)
    inputs = list(node.inputs)
    if heads < 2 or len(inputs) < 3 or any(v is None for v in inputs[:3]):
        return "not self-attention on separate query, key and value (packed or cached inputs)"
    # A key_padding_mask (input 4) masks key positions for every head alike: every shape the op takes is head-free.
    bias = inputs[3] if len(inputs) > 3 else None
    if any(v is not None for v in inputs[6:]):
        return "past key/value inputs"
    if len(inputs) > 5 and (refusal := _per_head_bias(inputs[5])):
        return refusal
    query = _projection(inputs[0], heads)
    if isinstance(query, str):
        return query
    hidden = weight_array(query[0][0].node.inputs[1]).shape[1]
    head_size = hidden // heads
    keys_values = [_projection(value, heads) for value in inputs[1:3]]
    repeated = None
    if any(isinstance(found, str) for found in keys_values):
        repeated = [_repeated_projection(value, heads, head_size) for value in inputs[1:3]]
        for found in repeated:
            if isinstance(found, str):
                return found
        if len({found.kv_heads for found in repeated}) != 1:
            return "key and value repeat different numbers of heads"
    else:
        widths = [weight_array(cuts[0].node.inputs[1]).shape[1] for cuts, _ in keys_values]
        if any(width != hidden for width in widths):
            return "key/value projections narrower than the query without a recognized head repetition"
    projection = _output_projection(node, hidden)
    if isinstance(projection, str):
        return projection
    consumer, reshapes, values = projection
    if repeated is None:
        group = ChannelGroup("heads", node.name or "", heads, head_size, consumer, head_counts=[node])
        group.values, group.shape_constants = values, reshapes
        for cuts, rotary in [query, *keys_values]:
            _add_projection(group, cuts, rotary)
        if bias is not None:
            # The packed Q/K/V bias ONNX Runtime's transformers optimizer writes (its MatMuls then have none):
            # three blocks of the width, cut as packed Attention's bias is.
            array = weight_array(bias)
            if array is None or array.shape != (3 * hidden,):
                return "a query/key/value bias that is not a constant [3 × width]"
            group.vectors.append(Cut(node, 3, 0, blocks=3))
        return group
    if bias is not None:
        return "a query/key/value bias with key/value heads repeated"
    # Grouped-query attention: a unit is one key/value head and the query heads that share it.
    kv_heads = repeated[0].kv_heads
    per_group = heads // kv_heads
    group = ChannelGroup("heads", node.name or "", kv_heads, per_group * head_size, consumer)
    group.values, group.shape_constants = values, reshapes
    group.grouped_head_counts.append((node, per_group))
    cuts, rotary = query
    _add_projection(group, cuts, rotary, heads_per_unit=per_group)
    for found in repeated:
        _add_projection(group, [replace(cut, unit=head_size) for cut in found.cuts], found.rotary)
        group.count_entries.extend(found.count_entries(per_group))
        group.reshaped_values.extend(found.reshaped)
    return group


def _add_projection(group: ChannelGroup, cuts: list[Cut], rotary: ir.Node | None, heads_per_unit: int = 0) -> None:
    group.producers.append(cuts[0])
    group.vectors.extend(cuts[1:])
    group.values.extend(cut.node.outputs[0] for cut in cuts)
    if rotary is not None:
        if heads_per_unit:
            group.grouped_head_counts.append((rotary, heads_per_unit))
        else:
            group.head_counts.append(rotary)
        group.values.append(rotary.outputs[0])


@dataclass
class _Repeated:
    """A key/value projection whose heads are repeated to the query's count before attention.

    The exporters' ``repeat_kv``: Reshape ``[B, S, kv, d]`` → Transpose to BNSH →
    Unsqueeze → Expand ``[B, kv, n_rep, S, d]`` → Reshape ``[B, heads, S, d]``.
    """

    cuts: list[Cut]
    rotary: ir.Node | None
    kv_heads: int
    split: ir.Node  # Reshape [.., kv, d]
    expand: ir.Node
    merge: ir.Node  # Reshape [.., heads, .., d]
    reshaped: list[ir.Value]

    def count_entries(self, per_group: int) -> list[tuple[ir.Node, int, int, int]]:
        entries = [(self.expand, 1, 1, 1), (self.merge, 1, 1, per_group)]
        split = weight_array(self.split.inputs[1])
        if split[2] == self.kv_heads:
            entries.append((self.split, 1, 2, 1))
        return entries


def _repeated_projection(value: ir.Value, heads: int, head_size: int) -> _Repeated | str:
    refusal = "key/value are neither projections nor repeated projections (grouped-query attention as exported)"
    merge = value.producer()
    if merge is None or merge.op_type != "Reshape" or len(value.uses()) != 1:
        return refusal
    target = weight_array(merge.inputs[1])
    if target is None or target.tolist()[1:2] != [heads] or target.size != 4:
        return refusal
    expand = merge.inputs[0].producer()
    unsqueeze = expand.inputs[0].producer() if expand is not None and expand.op_type == "Expand" else None
    transpose = unsqueeze.inputs[0].producer() if unsqueeze is not None and unsqueeze.op_type == "Unsqueeze" else None
    split = transpose.inputs[0].producer() if transpose is not None and transpose.op_type == "Transpose" else None
    if split is None or split.op_type != "Reshape":
        return refusal
    shape, split_shape = weight_array(expand.inputs[1]), weight_array(split.inputs[1])
    axes = weight_array(unsqueeze.inputs[1]) if len(unsqueeze.inputs) > 1 else None
    if shape is None or split_shape is None or shape.size != 5 or split_shape.size != 4 or axes is None:
        return refusal
    kv_heads = int(shape[1])
    if kv_heads < 1 or heads % kv_heads or int(shape[2]) != heads // kv_heads or axes.tolist() != [2]:
        return refusal
    if tuple(transpose.attributes.get_ints("perm", ())) != (0, 2, 1, 3) or split_shape[3] != head_size:
        return refusal
    chain = [merge.inputs[0], expand.inputs[0], unsqueeze.inputs[0], transpose.inputs[0]]
    if any(len(v.uses()) != 1 for v in chain):
        return refusal
    found = _projection(split.inputs[0], kv_heads)
    if isinstance(found, str):
        return found
    cuts, rotary = found
    if weight_array(cuts[0].node.inputs[1]).shape[1] != kv_heads * head_size:
        return refusal
    return _Repeated(cuts, rotary, kv_heads, split, expand, merge, [*chain, value])


def _projection(value: ir.Value, heads: int) -> tuple[list[Cut], ir.Node | None] | str:
    """Cuts of the MatMul (+ bias Add) computing ``value``, and the RotaryEmbedding on the way, if any."""
    rotary = None
    node = value.producer()
    if node is not None and node.domain == MS_DOMAIN and node.op_type == "RotaryEmbedding":
        if node.attributes.get_int("num_heads", 0) != heads or len(value.uses()) != 1:
            return "a RotaryEmbedding without num_heads, or shared"
        rotary, value = node, node.inputs[0]
        node = value.producer()
    cuts = []
    if node is not None and node.op_type == "Add" and len(value.uses()) == 1:
        for slot in (0, 1):
            bias = weight_array(node.inputs[slot])
            if bias is not None and bias.ndim == 1:
                cuts.append(Cut(node, slot, -1))
                value = node.inputs[1 - slot]
                node = value.producer()
                break
    if node is None or node.op_type != "MatMul" or len(value.uses()) != 1:
        return "query, key or value is not a projection used once"
    weight = weight_array(node.inputs[1])
    if weight is None or weight.ndim != 2 or weight.shape[1] % heads:
        return "a projection weight that is not a constant split evenly into heads"
    return [Cut(node, 1, 1), *cuts], rotary


class HeadPruningPass(PruningPass):
    """Remove the least important attention heads of fused ``Attention``/``MultiHeadAttention`` nodes:
    their Q/K/V weight columns and bias entries, the output projection's rows, ``num_heads``
    (and a RotaryEmbedding's).

    Runs after ``fuse-attention``. Importance and repair as in ``PruningPass`` (a head is
    ``head_size`` channels of the attention output; with grouped-query attention, a unit is
    a key/value head and the query heads reading it). The twin is the input with the
    removed heads' output-projection rows zeroed. Refuses attention whose output reaches
    anything but one output projection (or whose width a ``Shape``/``Size`` may pass on,
    ``_groups.width_reader``), key/value heads repeated other than as the exporters write it,
    an ``attention_bias`` not known to be shared by all heads (``[B or 1, 1, S, T]``: the dynamo
    exporter's padding mask is; a relative-position bias per head is not), and groups whose weights
    other layers also read (ALBERT-style sharing: a pruned copy would sit beside the shared weight,
    ``_groups.shared_constant``).
    """

    unit_name = "heads"
    looks_for = "it prunes fused Attention/MultiHeadAttention (com.microsoft) nodes, as fuse-attention writes them"
    layer_ops = ("Attention", "MultiHeadAttention")
    consumer_rows = "the output projections' rows"

    def find_groups(self, graph: ir.Graph) -> tuple[list[ChannelGroup], dict[str, str]]:
        return head_groups(graph)

    def units_named(self, group: ChannelGroup) -> int:
        # Grouped-query attention: a unit is a key/value head with the query heads reading it.
        return max((per_unit for _, per_unit in group.grouped_head_counts), default=1)

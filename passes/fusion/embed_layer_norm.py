"""Embedding + LayerNorm fusion: BERT's word/position/segment lookups into ``EmbedLayerNormalization``.

Matches ``LayerNormalization(word[input_ids] + position[position_ids] [+ segment[segment_ids]])``
(the Adds in any order) and rewrites it into ``com.microsoft.EmbedLayerNormalization``,
with the int64 ids cast to the int32 the op takes.

Which lookup is which is decided by what indexes it: the word table by a graph input
that is not the position source, the segment table by a graph input whose name says
``token_type``/``segment``, the position table by the rest; of two computed lookups, one
whose indices are all 0 at every probed length is the segment lookup of a model exported
without ``token_type_ids`` (Hugging Face's buffered zeros, sliced and expanded): its row 0
is added into the position table, and the op gets no segment input. Position ids computed in
the graph (a slice of the exporter's ``arange`` buffer) must be ``0..S-1`` on every row
— the op's default — or the match is refused; a ``position_ids`` graph input is passed
to the op instead.

Computed positions are evaluated on ONNX Runtime, and a buffer that counts 0..6 may
do something else at 300: they are checked on a padded 2 × 7 batch and then at each
length ``_probe.probe_lengths`` names (both sides of the buffer's extent and of each
integer the subgraph holds, and ``max_sequence``, ``--max-sequence``). At each they
must be ``0..S-1``, or the original must refuse that length: ONNX Runtime fails, or
the positions are not ``S`` long (HF's ``[1, 512]`` buffer sliced past its end, which
the word embeddings cannot be added to). Each probe is one row of ``S`` ids, so all
are cheap. The probes feed ones for token ids: computed positions (or segment indices)
that read the values of an input other than the mask are refused.

Refuses, with the reason, a LayerNormalization over a sum of two or more lookups when: a table
is not a constant 2-D initializer; the lookups are not on axis 0; more than three are summed;
there is no word or no position lookup; the sum has other users (CLIP's text embeddings, also
its first residual: it would need the op's optional sum output, which the CPU kernel does not
fill in every ORT version); or the LayerNorm is not over the last axis with constant scale and
bias. A LayerNormalization over anything else (a residual sum, one lookup) is no candidate.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_domain
from optimizer.errors import RuntimeRefusedError
from optimizer.runtime import evaluate
from passes._pass import checked_length
from passes._utils import add_initializer, constant_array, replace_value
from passes.fusion._base import FusionPass
from passes.fusion._layout import producer
from passes.fusion._probe import (
    DEFAULT_MAX_SEQUENCE,
    PADDED_MASK,
    is_mask,
    long_mask,
    probe_lengths,
    token_feeds,
    token_inputs_of,
    values_only_from,
)

_SEGMENT_NAMES = ("token_type", "segment")


_SUM_USED = (
    "the sum of the lookups has other users (a residual: it would need the op's optional sum output, which the CPU "
    "kernel does not fill in every ONNX Runtime version)"
)
_TOO_MANY_LOOKUPS = "{} lookups are summed: the op takes a word, a position and a segment lookup"
_NOT_PLAIN_NORM = (
    "the LayerNormalization is not over the last axis with a constant float32 scale and bias, or its mean or "
    "inverse deviation output is used"
)


def _embedding_sum(value: ir.Value) -> tuple[list[ir.Node], str | None] | None:
    """The ``Gather`` lookups that ``value`` sums (a tree of ``Add`` s over two or more of them, in the order a
    depth-first walk meets them) and why the op cannot compute that sum (None where it can); None where ``value``
    is no such sum (a residual ``Add``, one lookup), which is no candidate."""
    adds: list[ir.Node] = []
    gathers: list[ir.Node] = []

    def walk(operand: ir.Value) -> bool:
        add = producer(operand, "Add")
        if add is not None:
            adds.append(add)
            return all(walk(v) for v in add.inputs)
        gather = producer(operand, "Gather")
        gathers.append(gather)
        return gather is not None

    if producer(value, "Add") is None or not walk(value) or len(gathers) < 2:
        return None
    if any(len(list(add.outputs[0].uses())) != 1 or add.outputs[0].is_graph_output() for add in adds):
        return gathers, _SUM_USED
    if any(gather.attributes.get_int("axis", 0) != 0 for gather in gathers):
        return gathers, "a lookup is not on axis 0"
    tables = [constant_array(gather.inputs[0]) for gather in gathers]
    if any(table is None or table.ndim != 2 for table in tables):
        return gathers, "a table is not a constant 2-D initializer"
    return gathers, None


def _is_graph_input(value: ir.Value) -> bool:
    return value.producer() is None and value.const_value is None


def _classify(model: ir.Model, leaves: list[ir.Node], max_sequence: int) -> dict[str, ir.Node] | str:
    """Name the lookups word/segment/position, checking computed positions by evaluation."""
    roles: dict[str, ir.Node] = {}
    computed = [gather for gather in leaves if not _is_graph_input(gather.inputs[1])]
    zeros = None
    if len(computed) == 2:  # positions and, exported without token_type_ids, a segment lookup of zeros
        found = [gather for gather in computed if _zeros_at_every_length(model, gather.inputs[1], max_sequence)]
        if len(found) == 1:
            zeros = found[0]
    for gather in leaves:
        index = gather.inputs[1]
        name = (index.name or "").lower()
        if gather is zeros:
            role = "zero segment"
        elif _is_graph_input(index) and any(key in name for key in _SEGMENT_NAMES):
            role = "segment"
        elif _is_graph_input(index) and "position" in name:
            role = "position"
        elif _is_graph_input(index):
            role = "word"
        else:
            role = "position"
        if role in roles:
            return f"two {role} lookups"
        roles[role] = gather
    if "zero segment" in roles and "segment" in roles:
        return "two segment lookups"
    if "word" not in roles or "position" not in roles:
        return "no word or no position lookup"
    positions = roles["position"].inputs[1]
    if not _is_graph_input(positions):
        wrong = _positions_not_token_index(model, positions, max_sequence)
        if wrong is not None:
            return wrong
    return roles


_NOT_TOKEN_INDEX = "computed position ids are not 0..S-1"
# The probes feed ones for token ids: indices that read their values (``arange + (max(input_ids) > 4090)``) are
# 0..S-1 (or zeros) at every probe, and not on real ids.
_READS_IDS = "they read the values of an input other than the mask (token ids?), which the probes feed as ones"
_REFUSED = "refused"


def _positions_not_token_index(model: ir.Model, positions: ir.Value, max_sequence: int) -> str | None:
    """Why the computed ``positions`` are not ``0..S-1`` at every length the original accepts, or None."""
    inputs = token_inputs_of([positions])
    if inputs is None:
        return _NOT_TOKEN_INDEX
    if not values_only_from(positions, *[v for v in inputs if is_mask(v)]):
        return f"{_NOT_TOKEN_INDEX}: {_READS_IDS}"
    # Once with an all-ones mask, once padded: positions built from the mask (cumsum)
    # agree with 0..S-1 only on the first.
    for mask in (np.ones_like(PADDED_MASK), PADDED_MASK):
        if _probe_positions(model, positions, inputs, mask) is not True:
            return _NOT_TOKEN_INDEX
    lengths = probe_lengths([positions], max_sequence, model=model, inputs=inputs)
    if isinstance(lengths, str):
        return f"{_NOT_TOKEN_INDEX}: {lengths}"
    for length in lengths:
        if _probe_positions(model, positions, inputs, long_mask(length)) is False:
            return f"{_NOT_TOKEN_INDEX} at {length} tokens"
    return None


def _probe_positions(model: ir.Model, positions: ir.Value, inputs: list[ir.Value], mask: np.ndarray) -> bool | str:
    """Whether ``positions`` are ``0..S-1`` on every row for the probe ``mask``.

    ``_REFUSED`` when the original refuses this length: ONNX Runtime fails, or the
    positions' last axis is neither ``S`` nor 1 (their lookups cannot be added to the
    ``[B, S, H]`` word embeddings).
    """
    seq = mask.shape[1]
    try:
        (value,) = evaluate(model, [positions], token_feeds(inputs, mask))
    except RuntimeRefusedError:
        return _REFUSED
    if value.ndim >= 1 and value.shape[-1] not in (1, seq):
        return _REFUSED
    return value.ndim == 2 and value.shape[-1] == seq and bool((value == np.arange(seq)).all())


def _zeros_at_every_length(model: ir.Model, index: ir.Value, max_sequence: int) -> bool:
    """Whether the computed lookup indices ``index`` are all 0, ``[1 or B, S]``, at every length the original
    accepts: on a padded 2 x 7 batch and at each length ``probe_lengths`` names (a buffer of zeros sliced past its
    extent is refused by the original there, as positions are)."""
    inputs = token_inputs_of([index])
    if inputs is None or not values_only_from(index, *[v for v in inputs if is_mask(v)]):
        return False
    lengths = probe_lengths([index], max_sequence, model=model, inputs=inputs)
    if isinstance(lengths, str):
        return False
    masks = [np.ones_like(PADDED_MASK), PADDED_MASK] + [long_mask(n) for n in lengths]
    for number, mask in enumerate(masks):
        try:
            (value,) = evaluate(model, [index], token_feeds(inputs, mask))
        except RuntimeRefusedError:
            if number < 2:
                return False
            continue  # the original refuses this length too
        if value.ndim != 2 or value.shape[-1] != mask.shape[1] or value.shape[0] not in (1, mask.shape[0]):
            return False
        if value.dtype.kind not in "iu" or value.any():
            return False
    return True


def _layer_norm_params(norm: ir.Node) -> tuple[ir.Value, ir.Value, float] | None:
    if norm.attributes.get_int("axis", -1) != -1 or any(o.uses() for o in norm.outputs[1:]):
        return None
    if len(norm.inputs) < 3 or norm.inputs[2] is None:
        return None
    gamma, beta = norm.inputs[1], norm.inputs[2]
    scale = constant_array(gamma)
    if scale is None or constant_array(beta) is None or scale.dtype != np.float32:
        return None
    return gamma, beta, norm.attributes.get_float("epsilon", 1e-5)


class EmbedLayerNormFusion(FusionPass):
    """Rewrite BERT-style embedding lookups + LayerNorm into ``com.microsoft.EmbedLayerNormalization``.

    See the module docstring for how lookups are told apart and the refusals.
    ``max_sequence`` is the longest sequence computed positions are checked at
    (``--max-sequence``). ``fused_count`` holds the rewrites of the last run.
    """

    fused_ops = ((MS_DOMAIN, "EmbedLayerNormalization"),)

    def __init__(self, target: str = "cpu", max_sequence: int = DEFAULT_MAX_SEQUENCE) -> None:
        super().__init__(target)
        self.max_sequence = checked_length(max_sequence)

    def fuse(self, model: ir.Model) -> int:
        count = 0
        graph = model.graph
        for norm in [n for n in graph if n.op_type == "LayerNormalization" and is_onnx_domain(n)]:
            found = _embedding_sum(norm.inputs[0])
            if found is None:
                continue
            leaves, reason = found
            if reason is None and len(leaves) > 3:
                reason = _TOO_MANY_LOOKUPS.format(len(leaves))
            if reason is not None:
                self.refuse("LayerNormalization over embeddings", reason)
                continue
            params = _layer_norm_params(norm)
            if params is None:
                self.refuse("LayerNormalization over embeddings", _NOT_PLAIN_NORM)
                continue
            roles = _classify(model, leaves, self.max_sequence)
            if isinstance(roles, str):
                self.refuse("LayerNormalization over embeddings", roles)
                continue
            self._rewrite(graph, norm, roles, *params)
            self.done("LayerNormalization over embeddings")
            count += 1
        return count

    def _rewrite(self, graph, norm, roles, gamma, beta, epsilon) -> None:
        new_nodes: list[ir.Node] = []

        def int32(value: ir.Value) -> ir.Value:
            if value.dtype == ir.DataType.INT32:
                return value
            node = ir.node("Cast", [value], {"to": ir.DataType.INT32}, name=f"{norm.name}/cast_{value.name}")
            node.outputs[0].name = f"{norm.name}/{value.name}_int32"
            new_nodes.append(node)
            return node.outputs[0]

        segment = roles.get("segment")
        position_ids = roles["position"].inputs[1]
        positions = roles["position"].inputs[0]
        if "zero segment" in roles:  # every token's segment row is row 0: one constant row to add to each position
            row = constant_array(roles["zero segment"].inputs[0])[0]
            table = constant_array(positions)
            positions = add_initializer(graph, f"{positions.name}_with_segment_0", (table + row).astype(table.dtype))
        inputs = [
            int32(roles["word"].inputs[1]),
            int32(segment.inputs[1]) if segment is not None else None,
            roles["word"].inputs[0],
            positions,
            segment.inputs[0] if segment is not None else None,
            gamma,
            beta,
            None,
            int32(position_ids) if _is_graph_input(position_ids) else None,
        ]
        while inputs[-1] is None:
            inputs.pop()
        fused = ir.node(
            "EmbedLayerNormalization",
            inputs,
            {"epsilon": epsilon},
            domain=MS_DOMAIN,
            num_outputs=2,
            name=f"{norm.name}/EmbedLayerNormalization",
        )
        fused.outputs[1].name = f"{norm.name}/mask_index"
        new_nodes.append(fused)
        graph.insert_before(norm, new_nodes)
        output = norm.outputs[0]
        fused.outputs[0].shape, fused.outputs[0].type = output.shape, output.type
        fused.outputs[0].name = f"{norm.name}/embedded"
        replace_value(output, fused.outputs[0])

"""Rotary embedding fusion: ``x * cos + rotate_half(x) * sin`` into ``com.microsoft.RotaryEmbedding``.

Matches the Hugging Face (non-interleaved) form on per-head tensors that come from a
head split, ``x = Transpose(Reshape(h, [0, 0, N, d]), (0, 2, 1, 3))``::

    rotate_half(x) = Concat(-x[..., d/2:], x[..., :d/2], axis=-1)
    cos, sin       = Unsqueeze(<computed from positions>, 1)     # [B or 1, 1, S, d]

and rewrites it into ``RotaryEmbedding(h, position_ids, cos_cache, sin_cache)`` on the
3-D projection ``h`` followed by a fresh head split, so the attention fusion can
hand the 3-D result straight to MultiHeadAttention. A 4-D ``[B, N, S, d]`` tensor that is
no head split (Qwen3 normalizes each head between its split and its rotary) is rotated as
it is, RotaryEmbedding reading a 4-D input as ``[B, N, S, d]``; that layout is proved by
cos and sin being ``[B or 1, 1, S, d]`` tables (``_per_head_size``).

The cos/sin tables are not matched structurally: the subgraph computing them is
evaluated on ONNX Runtime (only its ancestors, cheap) for ``cache_length``
positions to build the caches, then checked to prove that row ``s`` always uses
position ``s`` — or, when the model takes a ``position_ids`` input, position
``position_ids[b, s]``, which the fused op then reads; or, with no ``position_ids``,
position ``T - S + s`` for a mask of ``T`` tokens over ``S`` new ones (a decoder that
counts positions on from its past by the mask's length), which the fused op reads as
its ``[1]`` position offset, computed in the graph. Sequences longer than
``cache_length`` (``--max-sequence``, default 4096) are not supported by the fused
model.

One check is not enough: the caches are the tables at ``cache_length`` tokens, and
a subgraph may read other rows at other lengths (LongRoPE switches from its short to
its long factors past a length). So the tables are checked on a padded batch of 2 × 7
tokens (positions that depend on the mask show there), then on one right-padded row
at each length ``_probe.probe_lengths`` names: both sides of each table's extent and
of each integer the subgraph holds (the length a switch compares with), and
``cache_length``. At each, cos/sin must be the caches' rows for their positions, or
the original must refuse that length (ONNX Runtime fails, or cos/sin are not ``S``
long: a table sliced past its end). Each probe is ``S × d`` numbers, so all are cheap.

Without ``position_ids``, the tables are also evaluated with each input in turn longer
than the others (1 new token after 6, 3 after 4, and one after each length
``probe_lengths`` names and one less: a past), where they must be the rows of the token index, or
all those of ``T - S + s`` for one input (the mask, whatever its name).

Refuses when: the rotation is partial or interleaved; x is not float32, or neither a head
split nor a 4-D tensor of static head size with ``[B or 1, 1, S, d]`` cos/sin;
the cos/sin subgraph reads anything but ``[batch, sequence]`` integer inputs (token
ids, the attention mask, position ids) or contains an If/Loop/Scan; its values are
not ``[c, c]`` halves of a position table; positions depend on the attention mask's
values, or (without ``position_ids``) on its length in any other way than counting on
from a past; or at some probed length cos/sin are not the caches' rows.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from optimizer.domains import MS_DOMAIN
from optimizer.errors import RuntimeRefusedError
from optimizer.runtime import evaluate
from passes._utils import add_initializer, constant_array
from passes.fusion._base import RuleFusionPass
from passes.fusion._checks import is_float
from passes.fusion._layout import head_split, last_dim, producer
from passes.fusion._probe import (
    DEFAULT_MAX_SEQUENCE,
    PADDED_MASK,
    graph_inputs_of,
    long_mask,
    probe_lengths,
    token_feeds,
    token_inputs_of,
    values_only_from,
)

DEFAULT_CACHE_LENGTH = DEFAULT_MAX_SEQUENCE


def _slice_bounds(node: ir.Node, head_size: int) -> tuple[int, int] | None:
    return _slice_bounds_of(node, node.inputs[0], head_size)


def _slice_bounds_of(node: ir.Node, data: ir.Value, head_size: int) -> tuple[int, int] | None:
    """``(start, end)`` of a Slice over the last axis of a ``[B, N, S, head_size]`` tensor."""
    values = [node.inputs[i] if i < len(node.inputs) else None for i in range(1, 5)]
    axes = constant_array(values[2]) if values[2] is not None else None
    steps = constant_array(values[3]) if values[3] is not None else None
    if axes is None or axes.size != 1 or int(axes.reshape(())) not in (-1, 3):
        return None
    if steps is not None and (steps.size != 1 or int(steps.reshape(())) != 1):
        return None
    bounds = [_bound(v, data, head_size) for v in values[:2]]
    if None in bounds:
        return None
    start, end = bounds
    return start, min(end, head_size)


def _bound(value: ir.Value | None, data: ir.Value, head_size: int) -> int | None:
    """A Slice bound: a constant, or the legacy exporter's ``Shape(data)[3] / 2`` (data's last dim = head_size)."""
    array = constant_array(value)
    if array is not None:
        return int(array.reshape(())) if array.size == 1 else None
    node = value.producer() if value is not None else None
    if node is not None and node.op_type == "Unsqueeze":
        return _bound(node.inputs[0], data, head_size)
    div = producer(value, "Div")
    if div is not None:
        numerator, denominator = _bound(div.inputs[0], data, head_size), constant_array(div.inputs[1])
        if numerator is None or denominator is None or denominator.size != 1:
            return None
        return numerator // int(denominator.reshape(()))
    gather = producer(value, "Gather")
    if gather is not None and producer(gather.inputs[0], "Shape") is not None:
        index = constant_array(gather.inputs[1])
        shape_node = producer(gather.inputs[0], "Shape")
        if (
            index is not None
            and index.size == 1
            and int(index.reshape(())) in (3, -1)
            and not shape_node.attributes
            and shape_node.inputs[0] is data
        ):
            return head_size
    return None


def _per_head_size(x: ir.Value, cos: ir.Value, sin: ir.Value) -> int | str:
    """The head size of ``x`` if it is a ``[B, N, S, d]`` per-head tensor that is no head split (Qwen3 normalizes
    each head before its rotary), or why not.

    RotaryEmbedding reads a 4-D input as ``[B, N, S, d]``. The layout is proved by cos and sin:
    ``[B or 1, 1, S, d]`` tables broadcast over axis 1 and run along axis 2, so wherever the
    original multiplies them with ``x`` (the tables' rows are checked at every probed length),
    ``x``'s axis 2 is the sequence. A ``[B, S, N, d]`` tensor rotated before its transpose has
    ``[B, S, 1, d]`` tables, and is refused.
    """
    if x.shape is None or x.shape.rank() != 4 or not isinstance(x.shape[3], int):
        return "x is not a head split of a 3-D projection, nor a 4-D tensor of static head size"
    for table in (cos, sin):
        if table.shape is None or table.shape.rank() != 4 or table.shape[1] != 1 or table.shape[3] != x.shape[3]:
            return (
                "x is a 4-D tensor, but cos/sin are not [B or 1, 1, S, d] tables (the layout [B, N, S, d] is unproved)"
            )
    return x.shape[3]


class _RotateHalf(pattern.RewriteRuleClassBase):
    def __init__(self, fusion: RotaryEmbeddingFusion) -> None:
        super().__init__(name="RotaryEmbedding")
        self._fusion = fusion

    def pattern(self, op, x, cos, sin, lo_start, lo_end, lo_axes, hi_start, hi_end, hi_axes):
        lo = op.Slice(x, lo_start, lo_end, lo_axes, _allow_other_inputs=True, _outputs=["lo"])
        hi = op.Slice(x, hi_start, hi_end, hi_axes, _allow_other_inputs=True, _outputs=["hi"])
        rotated = op.Concat(op.Neg(hi), lo, _allow_other_attributes=True, _outputs=["rotated"])
        return op.Add(op.Mul(x, cos), op.Mul(rotated, sin))

    def check(self, context, x, cos, sin, lo, hi, rotated, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        split = head_split(x, (0, 2, 1, 3))
        if split is None:
            d = _per_head_size(x, cos, sin)
            if isinstance(d, str):
                return result.fail(d)
        else:
            d = split.head_size
        if rotated.producer().attributes.get_int("axis", 0) not in (-1, 3):
            return result.fail("rotate_half does not concatenate on the last axis")
        if _slice_bounds(lo.producer(), d) != (0, d // 2) or _slice_bounds(hi.producer(), d) != (d // 2, d):
            return result.fail("not a full, non-interleaved rotate_half")
        if split is not None and split.heads is None and (last_dim(split.hidden) is None or last_dim(split.hidden) % d):
            return result.fail("the head count is unknown")
        if not is_float(x):
            return result.fail("x is not float32")
        tables = self._fusion.tables(context.model, cos, sin, d)
        if isinstance(tables, str):
            return result.fail(tables)
        return result

    def rewrite(self, op, x, cos, sin, **_):
        split = head_split(x, (0, 2, 1, 3))
        if split is None:  # a [B, N, S, d] tensor (normalized per head, as Qwen3's q_norm/k_norm): rotated as it is
            d = _per_head_size(x, cos, sin)
            cos_cache, sin_cache, position_ids = self._fusion.tables(None, cos, sin, d)
            rotated = op.RotaryEmbedding(x, position_ids, cos_cache, sin_cache, interleaved=0, _domain=MS_DOMAIN)
            rotated.shape, rotated.type = x.shape, x.type
            return rotated
        d = split.head_size
        heads = split.heads or last_dim(split.hidden) // d
        cos_cache, sin_cache, position_ids = self._fusion.tables(None, cos, sin, d)
        rotated = op.RotaryEmbedding(
            split.hidden, position_ids, cos_cache, sin_cache, interleaved=0, num_heads=heads, _domain=MS_DOMAIN
        )
        rotated.shape, rotated.type = split.hidden.shape, split.hidden.type
        heads_split = op.Reshape(rotated, op.Constant(value=ir.tensor(np.array([0, 0, heads, d], dtype=np.int64))))
        return op.Transpose(heads_split, perm=[0, 2, 1, 3])


class RotaryEmbeddingFusion(RuleFusionPass):
    """Rewrite Hugging Face rotary position embeddings into ``com.microsoft.RotaryEmbedding``.

    See the module docstring for the matched form, how the cos/sin caches are built and
    checked, and the refusals. ``cache_length`` bounds the sequence length the fused
    model supports.
    """

    commute = True
    fused_ops = ((MS_DOMAIN, "RotaryEmbedding"),)

    def __init__(
        self, target: str = "cpu", cache_length: int = DEFAULT_CACHE_LENGTH, *, max_sequence: int | None = None
    ) -> None:
        super().__init__(target)
        # ``max_sequence`` is the name the other length-probing fusions take (``--max-sequence``).
        self.cache_length = cache_length if max_sequence is None else max_sequence
        self._tables: dict[tuple[int, int], tuple | str] = {}

    def rule_set(self) -> pattern.RewriteRuleSet:
        self._tables = {}
        return pattern.RewriteRuleSet([_RotateHalf.rule(self)])

    def tables(self, model: ir.Model | None, cos: ir.Value, sin: ir.Value, head_size: int):
        """``(cos_cache, sin_cache, position_ids)`` values for this cos/sin pair, or why there are none.

        Computed once per pair (on the first call, which passes the model) and cached.
        """
        key = (id(cos), id(sin))
        if key not in self._tables:
            self._tables[key] = self._build_tables(model, cos, sin, head_size)
        return self._tables[key]

    def _build_tables(self, model: ir.Model, cos: ir.Value, sin: ir.Value, head_size: int):
        inputs = token_inputs_of([cos, sin])
        if inputs is None:
            read = graph_inputs_of([cos, sin])
            if read is None:
                return "cos/sin are computed through an If/Loop/Scan"
            others = ", ".join(
                f"'{v.name}'"
                for v in read
                if v.dtype not in (ir.DataType.INT64, ir.DataType.INT32) or v.shape is None or v.shape.rank() != 2
            )
            return f"cos/sin read {others}, not only [batch, sequence] ids (a cache's length is not probed)"
        positions = next((v for v in inputs if "position" in (v.name or "")), None)
        # The probes feed ones for token ids: tables that read their values (positions counted from
        # ``input_ids != pad``) would pass every probe and differ on real padded rows.
        allowed = [positions] if positions is not None else []
        if not all(values_only_from(table, *allowed) for table in (cos, sin)):
            other = " other than position_ids" if positions is not None else ""
            return f"cos/sin read the values of an input{other} (token ids?), not only its shape"
        half = head_size // 2
        table_positions = {positions.name: np.arange(self.cache_length)[None]} if positions is not None else {}
        try:
            table_cos, table_sin = evaluate(
                model, [cos, sin], token_feeds(inputs, np.ones((1, self.cache_length)), table_positions)
            )
        except RuntimeRefusedError as error:
            # Most often a position table shorter than the caches asked for: the model itself ends there.
            return (
                f"cos/sin could not be evaluated at {self.cache_length} positions (--max-sequence; a position "
                f"table shorter than that? give --max-sequence up to its rows): {error}"
            )
        cos_cache, sin_cache = _halves(table_cos, half), _halves(table_sin, half)
        if cos_cache is None or sin_cache is None:
            return "cos/sin are not two equal halves of a [positions, d/2] table"
        caches = cos_cache[0], sin_cache[0]
        wrong = _check_rows(model, [cos, sin], inputs, positions, caches, self.cache_length)
        if wrong is not None:
            return wrong
        past = (
            None
            if positions is not None
            else _counts_on_from_past(model, [cos, sin], inputs, caches, self.cache_length)
        )
        if isinstance(past, str):
            return past
        if positions is not None and positions.dtype != ir.DataType.INT64:
            return "position_ids are not int64"
        cos_cache, sin_cache = caches
        graph = model.graph
        cos_value = add_initializer(graph, "rotary_cos_cache", cos_cache.astype(table_cos.dtype))
        sin_value = add_initializer(graph, "rotary_sin_cache", sin_cache.astype(table_sin.dtype))
        if positions is not None:
            position_value = positions
        elif past is not None:
            position_value = _past_length(graph, *past)
        else:
            position_value = add_initializer(graph, "rotary_position_offset", np.zeros(1, dtype=np.int64))
        return cos_value, sin_value, position_value


def _check_rows(
    model: ir.Model,
    tables: list[ir.Value],
    inputs: list[ir.Value],
    positions: ir.Value | None,
    caches: tuple[np.ndarray, np.ndarray],
    cache_length: int,
) -> str | None:
    """Why cos/sin are not the caches' rows for their positions at every probed length, or None.

    Positions are the token index, or drawn at random (when the model reads a
    ``position_ids`` input) below the caches' length.
    """
    rng = np.random.default_rng(0)
    rows = len(caches[0])
    batch, seq = PADDED_MASK.shape
    probes = [(PADDED_MASK, rng.integers(0, min(seq * 3, rows), (batch, seq)))]
    for length in probe_lengths(tables, cache_length):
        probes.append((long_mask(length), rng.integers(0, rows, (1, length))))
    for index, (mask, drawn) in enumerate(probes):
        batch, seq = mask.shape
        feeds = token_feeds(inputs, mask, {positions.name: drawn} if positions is not None else None)
        wanted = drawn if positions is not None else np.arange(seq)[None].repeat(batch, 0)
        try:
            found = evaluate(model, tables, feeds)
        except RuntimeRefusedError as error:
            if index == 0:
                return f"cos/sin could not be evaluated: {error}"
            continue  # the original refuses this length
        for probe, cache in zip(found, caches):
            halves = _halves(probe, cache.shape[-1])
            if halves is None or halves.shape[0] not in (1, batch) or halves.shape[1] != seq:
                if index and probe.ndim >= 2 and probe.shape[-2] not in (1, seq):
                    break  # cos/sin cannot multiply the [B, N, S, d] query: the original refuses this length
                return (
                    "cos/sin of a padded batch have an unexpected shape"
                    if index == 0
                    else f"cos/sin at {seq} tokens have an unexpected shape"
                )
            if wanted.max() >= len(cache):
                return f"cos/sin at {seq} tokens have rows past the {len(cache)} the caches hold"
            if not np.allclose(np.broadcast_to(halves, (batch, seq, halves.shape[-1])), cache[wanted], atol=1e-6):
                if index == 0:
                    return "rotary positions are not the token index (or position_ids): they depend on the mask"
                return (
                    f"cos/sin at {seq} tokens are not the cache's rows for their positions "
                    "(the tables change with the sequence length)"
                )
    return None


# (new tokens, past tokens) of the probes that tell the token index from positions counted on from a past;
# a one-token step is probed after a past of each length ``probe_lengths`` names and one less (a clamp of
# the past at 16 shows at a past of 17).
_PAST_PROBES = ((1, 6), (3, 4))


def _counts_on_from_past(
    model: ir.Model,
    tables: list[ir.Value],
    inputs: list[ir.Value],
    caches: tuple[np.ndarray, np.ndarray],
    cache_length: int,
) -> tuple[ir.Value, ir.Value] | str | None:
    """Without ``position_ids``: ``(longer, ids)`` when cos/sin take position ``T - S + s`` for one input
    ``T`` long over the others' ``S`` (a mask over past and new tokens), None when they take the token
    index ``s`` however long any input is, or why neither.

    Each input is made longer than the others in turn (by the pasts of ``_PAST_PROBES`` and
    each length ``probe_lengths`` names and one less), whatever its name. Shapes the original
    refuses, or where its tables could not multiply the new tokens' query, are skipped: it
    runs no such step either. The other probes feed inputs of one length,
    where the two readings agree.
    """
    rows = len(caches[0])
    lengths = probe_lengths(tables, cache_length)
    shapes = list(_PAST_PROBES) + sorted({(1, past) for length in lengths for past in (length - 1, length)})
    shapes = [(new, past) for new, past in shapes if new + past <= rows]
    longer = None
    for candidate in inputs:
        modes = set()
        for new, past in shapes:
            feeds = token_feeds(inputs, np.ones((1, new)), {candidate.name: np.ones((1, new + past))})
            try:
                found = evaluate(model, tables, feeds)
            except RuntimeRefusedError:
                continue
            for probe, cache in zip(found, caches):
                halves = _halves(probe, cache.shape[-1])
                if halves is None or halves.shape[:2] != (1, new):
                    # This input's length is the new tokens' (the tables follow it), or the tables cannot
                    # multiply a query of ``new`` tokens (a table sliced at a negative past comes out
                    # empty): the original runs no such step.
                    break
                if np.allclose(halves[0], cache[np.arange(new)], atol=1e-6):
                    modes.add("index")
                elif np.allclose(halves[0], cache[past + np.arange(new)], atol=1e-6):
                    modes.add("past")
                else:
                    return "rotary positions follow neither the token index nor one input's length past the others'"
        if modes <= {"index"}:
            continue
        if modes != {"past"} or longer is not None:
            return "rotary positions follow neither the token index nor one input's length past the others'"
        longer = candidate
    if longer is None:
        return None
    others = [value for value in inputs if value is not longer]
    if not others:
        return "rotary positions count on from a past, and no input gives the new tokens' length"
    return longer, others[0]


def _past_length(graph: ir.Graph, mask: ir.Value, ids: ir.Value) -> ir.Value:
    """``[T - S]`` (int64): the longer input's (the mask's) length less the ids', computed at the start of ``graph``."""
    second = add_initializer(graph, "rotary_sequence_axis", np.array([1], dtype=np.int64))
    nodes = [ir.node("Shape", [mask]), ir.node("Shape", [ids])]
    nodes += [ir.node("Gather", [node.outputs[0], second], {"axis": 0}) for node in nodes]
    nodes.append(ir.node("Sub", [nodes[2].outputs[0], nodes[3].outputs[0]]))
    graph.insert_before(next(iter(graph)), nodes)
    offset = nodes[-1].outputs[0]
    offset.dtype, offset.shape = ir.DataType.INT64, ir.Shape([1])
    return offset


def _halves(table: np.ndarray, half: int) -> np.ndarray | None:
    """``[B, S, half]`` from a ``[B, 1, S, 2*half]`` (or ``[B, S, 2*half]``) table whose halves are equal."""
    if table.ndim == 4 and table.shape[1] == 1:
        table = table[:, 0]
    if table.ndim != 3 or table.shape[-1] != 2 * half:
        return None
    if not np.array_equal(table[..., :half], table[..., half:]):
        return None
    return table[..., :half]

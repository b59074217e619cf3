"""Rotary embedding fusion: ``x * cos + rotate_half(x) * sin`` (or ``rotate_every_two``, or the rotation of each
head's two halves) into RotaryEmbedding.

Matches the Hugging Face (non-interleaved) form on per-head tensors that come from a
head split, ``x = Transpose(Reshape(h, [0, 0, N, d]), (0, 2, 1, 3))``::

    rotate_half(x) = Concat(-x[..., d/2:], x[..., :d/2], axis=-1)
    cos, sin       = Unsqueeze(<computed from positions>, 1)     # [B or 1, 1, S, d]

(a Slice's bounds read as ONNX reads them: a negative one counts from the end, ``x[..., -d/2:]`` is ``x[..., d/2:]``)

and rewrites it into ``RotaryEmbedding(h, position_ids, cos_cache, sin_cache)`` on the
3-D projection ``h`` followed by a fresh head split, so the attention fusion can
hand the 3-D result straight to MultiHeadAttention. The head split may be rotated before its transpose,
``x = Reshape(h, [0, 0, N, d])`` (``[B, S, N, d]``) with ``[B or 1, S, 1, d]`` tables (the original Qwen's
``apply_rotary_pos_emb``, Flax's Llama): the same ``RotaryEmbedding`` of ``h``, split as ``x`` was, the tables'
layout checked on their values at every probe (``_SEQUENCE_FIRST``). A 4-D ``[B, N, S, d]`` tensor that is
no head split (Qwen3 normalizes each head between its split and its rotary) is rotated as
it is, RotaryEmbedding reading a 4-D input as ``[B, N, S, d]``; that layout is proved by
cos and sin being ``[B or 1, 1, S, d]`` tables (``_per_head_size``). Its head size ``d`` (and head
count, which a partial rotation needs) is the shape's, or one the graph proves (``_static_dim``):
GPT-NeoX slices query and key off each ``[B, N, S, 3d]`` head of its packed projection at
``(Shape(qkv)[-1] + 2) / 3``, sized by the head split's constant ``3d`` and the projection's ``N * 3d``.

The rotated channels may be a leading slice of the head, joined back to the rest::

    y = Concat(rotate(x[..., :r]), x[..., r:], axis=-1)     # r = cos.shape[-1] or a constant

(Phi3's legacy export slices at ``Shape(cos)[3]``, read as the tables' static last dim,
and StableLM's partial rotary at a constant). Both slices must be of the same ``x``, the
second the rest of the head; ``r = d`` is the full rotation, ``r < d`` fuses with
``rotary_embedding_dim = r`` (ONNX Runtime passes the other channels through).

The rotation may be written on each head's two halves, as GPT-OSS's (transformers' ``GptOss``) is::

    x1, x2 = x[..., :d/2], x[..., d/2:]                   # torch.chunk: two Slices, or one Split
    y = Concat(x1 * cos - x2 * sin, x2 * cos + x1 * sin, axis=-1)

with cos/sin ``[B or 1, 1, S, d/2]`` tables, each frequency once (not two equal halves): what
RotaryEmbedding computes, non-interleaved over the whole head, with those tables' columns as its
caches (built and checked as rotate_half's, below). ``x`` is a head split or a 4-D tensor of static
head size proved ``[B, N, S, d]`` by its ``[B or 1, 1, S, d/2]`` tables, as rotate_half's.

An interleaved rotation, pairing channels ``2i`` and ``2i + 1``, is fused with ``interleaved=1``: GPT-J's,
of the heads before their transpose, ``x = Reshape(h, [0, 0, N, d])`` (``[B, S, N, d]``), and Cohere's,
after it (a head split, ``[B, N, S, d]``)::

    rotate_every_two(t) = Reshape(Concat(Unsqueeze(-t[..., 1::2], -1), Unsqueeze(t[..., ::2], -1), -1),
                                  [0, 0, N, r] or [0, N, 0, r])   # (-t1, t0, -t3, t2, ...); -1 may infer one
    y = Concat(t * cos + rotate_every_two(t) * sin, x[..., r:])    # t = x[..., :r]; or y = that sum, t = x

into ``RotaryEmbedding(h, ..., interleaved=1, num_heads=N)`` (with ``rotary_embedding_dim = r`` when
``r < d``) split back into heads as ``x`` was. Its cos/sin are ``[B or 1, S, 1, r]`` (after the
transpose ``[B or 1, 1, S, r]``) tables whose columns come in equal pairs (``repeat_interleave``);
the caches are every other column. A 4-D ``[B, N, S, d]`` tensor of static head count and size that is
no head split (Cohere with ``use_qk_norm`` normalizes each head between its split and its transpose)
is rotated as it is, as the rotate_half form's, its layout proved by ``[B or 1, 1, S, r]`` tables; a 4-D
``[B, S, N, d]`` tensor of static head count and size that is no head split of one 3-D projection (CodeGen
splits its heads off the packed projection's ``mp_num`` groups) is merged into ``[B, S, N*d]`` for the op and
split back, its layout proved by ``[B or 1, S, 1, r]`` tables.

ONNX's own ``RotaryEmbedding`` (opset 23; torch's dynamo exporter writes one per rotation at ``optimize=True``)
is written out first as the rotate_half form it computes (``_onnx_rotary``), so these rules match it with every
check below; one they refuse is put back as it was.

The cos/sin tables are not matched structurally: the subgraph computing them is
evaluated on ONNX Runtime (only its ancestors, cheap) for ``cache_length``
positions to build the caches, then checked to prove that row ``s`` always uses
position ``s`` — or, when the model takes a ``position_ids`` input, position
``position_ids[b, s]``, which the fused op then reads expanded to ``[B, S]``, the rotated tensor's batch
and sequence (the original broadcasts a ``[1, S]`` or ``[B, 1]`` ``position_ids``, ONNX Runtime's op
takes ``[B, S]`` alone; cos/sin of such positions are probed to be the broadcast rows); or, with no ``position_ids``,
position ``T - S + s`` for a mask of ``T`` tokens over ``S`` new ones (a decoder that
counts positions on from its past by the mask's length), which the fused op reads as
its ``[1]`` position offset, computed in the graph; or position ``P + s`` for a cache read
only for its length ``P`` on one symbolic axis (Hugging Face's ``cache_position`` of a decoder
exported without ``position_ids``: ``Shape(past_key)[2] + arange(S)``), which the fused op reads
as its offset, ``Shape(past_key, start=2, end=3)``. Sequences longer than ``cache_length``
(``--max-sequence``, default 4096; past and new tokens together) are not supported by the
fused model. Where the original cannot evaluate cos/sin at ``cache_length`` positions (GPT-J
gathers them from its ``n_positions``-row table), the caches end at the most positions it
evaluates, one more refused (found by bisection, at least 16), and a note says so: the fused op
refuses positions past its caches, where the original refuses them too.

Under ``--static-shapes`` (every input cos/sin read has static dims, ``position_ids: [1, 128]``), ONNX
Runtime refuses any other shape before running a node, but the values of ``position_ids`` stay free: the
caches are evaluated ``S`` positions at a time (positions ``k*S .. k*S + S - 1`` in the ``k``-th run, up to
``cache_length``, or to where the original refuses one, found by bisection within that run), then cos/sin of
positions drawn at random below their end (on all-ones and left-padded masks) must be the caches' rows.

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
all those of ``T - S + s`` for one input (the mask, whatever its name). With a cache read for
its length, they are evaluated after pasts of the same lengths (and a padded batch after 5),
where they must be the rows of ``P + s``; that the cache is read through ``Shape`` on that
axis alone is checked on the graph (``_probe.dims_read``), so its other dims, made up in the
probes, cannot change the positions.

Refuses when: the rotation is partial in any other way than the leading slice joined back
to the rest of the head; x is not float32, or neither a head split nor a 4-D tensor of
static head size with ``[B or 1, 1, S, d]`` cos/sin; an interleaved rotation is of no head split of
a 3-D projection (before or after its transpose) nor of a 4-D tensor of static head count and size
(``[B, N, S, d]`` or ``[B, S, N, d]``, as its tables show), its pairs are not
``(-t[..., 1::2], t[..., ::2])`` stacked on a new last axis and flattened back into x's layout, or its
cos/sin are not tables of that layout whose columns come in equal pairs; a chunked rotation's halves are
not ``x[..., :d/2]`` and ``x[..., d/2:]`` in that order, are not joined on the last axis, or its cos/sin are not
``[B or 1, 1, S, d/2]`` tables;
the cos/sin subgraph reads anything but ``[batch, sequence]`` integer inputs (token
ids, the attention mask, position ids) and the length of one cache (one symbolic axis of
it, through ``Shape`` alone), reads a cache's length beside ``position_ids`` or the mask,
or contains an If/Loop/Scan; reads inputs of static shape but no ``position_ids`` (positions fixed by
the shapes); its values are
not ``[c, c]`` halves of a position table, are 3-D tables of the batch (``[B, S, d]``, which the
``[B, N, S, d]`` heads broadcast as ``[1, B, S, d]``: batch row ``b`` on head ``b``), or cannot be evaluated at
16 positions; those of a ``[1, S]`` or
``[B, 1]`` ``position_ids`` are not the rows of the positions broadcast; positions depend on the attention mask's
values, or (without ``position_ids``) on its length or the cache's in any other way than
counting on from a past; or at some probed length cos/sin are not the caches' rows.
A chunked rotation spelled otherwise (the inverse rotation, ``x1 * cos + x2 * sin`` first; the difference
as a sum with ``Neg``) is not matched, and no note names it.
"""

from __future__ import annotations

import contextvars
import functools
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from optimizer.domains import MS_DOMAIN, onnx_opset
from optimizer.errors import RuntimeRefusedError
from optimizer.runtime import available_memory, evaluate, evaluator
from passes._pass import checked_length
from passes._utils import add_initializer, constant_array, shape_dims
from passes.fusion._base import RuleFusionPass
from passes.fusion._builder import NodeBuilder
from passes.fusion._checks import is_float
from passes.fusion._inferred_shapes import inferred_shapes, lacks_shapes
from passes.fusion._layout import head_split, last_dim, producer
from passes.fusion._onnx_rotary import RotaryTables, SpelledRotary, onnx_rotary_nodes, spell_out, take_back
from passes.fusion._probe import (
    DEFAULT_MAX_SEQUENCE,
    PADDED_MASK,
    dims_read,
    graph_inputs_of,
    is_mask,
    long_mask,
    probe_lengths,
    token_feeds,
    values_only_from,
)

DEFAULT_CACHE_LENGTH = DEFAULT_MAX_SEQUENCE
_ONNX_ROTARY = "ONNX RotaryEmbedding (opset 23)"


def _unrecorded(node: ir.Node) -> bool:
    """Whether the file records no type or no shape for an ONNX ``RotaryEmbedding``'s input."""
    x = node.inputs[0] if node.inputs else None
    return x is not None and (x.dtype is None or x.shape is None)


def _caches_past_memory(cache_length: int, head_size: int) -> str | None:
    """Why caches of ``cache_length`` positions cannot be built here: the tables the original computes to fill
    them (cos and sin, ``[cache_length, head_size]`` in float32 and its intermediates, counted 8 times over) past
    the memory available (``--max-sequence 99999999999`` raised a MemoryError of 745 GiB inside the pass); None
    where they fit or the memory cannot be read."""
    needed = 8 * 4 * cache_length * head_size
    available = available_memory()
    if available is None or needed <= available:
        return None
    return (
        f"rotary caches of {cache_length} positions (--max-sequence) need about {needed / 2**30:.1f} GiB to build, "
        f"more than the {available / 2**30:.1f} GiB available: give a shorter --max-sequence"
    )


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
    # As ONNX's Slice reads them: a negative bound counts from the end (``x[..., -d/2:]``, ``x[..., :-d/2]``, which
    # rotate_half may be written with), then both are clamped to the axis.
    start, end = (min(max(b + head_size if b < 0 else b, 0), head_size) for b in bounds)
    return start, end


def _bound(value: ir.Value | None, data: ir.Value, head_size: int) -> int | None:
    """A Slice bound: a constant, or the legacy exporter's ``Shape(data)[3] / 2`` (data's last dim = head_size),
    or integer arithmetic on those."""
    array = constant_array(value)
    if array is not None:
        return int(array.reshape(())) if array.size == 1 and array.dtype.kind in "iu" else None
    node = value.producer() if value is not None else None
    if node is not None and node.op_type == "Unsqueeze":
        return _bound(node.inputs[0], data, head_size)
    node = next((producer(value, op) for op in _BOUND_ARITHMETIC if producer(value, op) is not None), None)
    if node is not None:
        # GPT-NeoX's legacy export slices the query off its packed head at ``(Shape(qkv)[-1] + 2) / 3``.
        left, right = (_bound(operand, data, head_size) for operand in node.inputs[:2])
        if left is None or right is None or not (0 <= left < _BOUND_LIMIT and 0 <= right < _BOUND_LIMIT):
            return None
        if node.op_type == "Div" and right == 0:
            return None
        result = _BOUND_ARITHMETIC[node.op_type](left, right)
        # ONNX Runtime's int64 arithmetic wraps where Python's does not: only results far from it are read.
        return result if 0 <= result < _BOUND_LIMIT else None
    gather = producer(value, "Gather")
    if gather is not None and producer(gather.inputs[0], "Shape") is not None:
        index = constant_array(gather.inputs[1])
        shape_node = producer(gather.inputs[0], "Shape")
        if index is None or index.size != 1 or shape_node.attributes or gather.attributes.get_int("axis", 0) != 0:
            return None
        index = int(index.reshape(()))
        if index in (3, -1) and shape_node.inputs[0] is data:
            return head_size
        # Phi3's legacy export slices the rotated part to ``cos.shape[-1]``: a dim shape inference knows.
        shape = shape_node.inputs[0].shape
        if shape is not None and -shape.rank() <= index < shape.rank() and isinstance(shape[index], int):
            return shape[index]
    return None


# Integer arithmetic on non-negative Slice bounds (ONNX's integer Div truncates, as ``//`` does here), on
# operands and results below 2**31: a review's INT64_MAX - 1 plus a dim wrapped negative in ONNX Runtime.
_BOUND_LIMIT = 2**31
# Integer arithmetic on non-negative Slice bounds (ONNX's integer Div truncates, as ``//`` does here).
_BOUND_ARITHMETIC = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a // b,
}


def _static_dim(value: ir.Value, axis: int, depth: int = 0) -> int | None:
    """The static size of axis 1 (heads) or 3 (head size) of a ``[B, N, S, d]`` tensor, from its shape or
    the graph: a head split's Reshape constants (heads from the projection's width when the Reshape infers
    them), or a Slice of the last axis of such a tensor at bounds the graph computes from those sizes.

    GPT-NeoX's legacy export splits its packed projection into ``[B, N, S, 3d]`` heads and slices the
    query, key and value off each at ``Shape(qkv)[-1]`` arithmetic: shape inference leaves every dim
    unknown, but each is fixed by the Reshape's constant ``3d`` and the projection's ``N * 3d``.
    """
    shape = value.shape
    if shape is None or shape.rank() != 4 or depth > 8 or axis not in (1, 3, -1):
        return None
    axis %= 4
    if isinstance(shape[axis], int):
        return shape[axis]
    split = head_split(value, (0, 2, 1, 3))
    if split is not None:
        if axis == 3:
            return split.head_size
        width = last_dim(split.hidden)
        if split.heads is None and width is not None and width % split.head_size == 0:
            return width // split.head_size
        return split.heads
    node = producer(value, "Slice")
    if node is None:
        return None
    data = node.inputs[0]
    if axis == 1:
        # The Slice is over the last axis alone (checked with its bounds below) and keeps the heads.
        return _static_dim(data, 1, depth + 1) if _static_dim(value, 3, depth) is not None else None
    size = _static_dim(data, 3, depth + 1)
    bounds = _slice_bounds_of(node, data, size) if size is not None else None
    if bounds is None or not 0 <= bounds[0] <= bounds[1]:
        return None
    return bounds[1] - bounds[0]


def _per_head_size(
    x: ir.Value, cos: ir.Value, sin: ir.Value, rotary_dim: int | None = None, *, halved: bool = False
) -> int | str:
    """The head size of ``x`` if it is a ``[B, N, S, d]`` per-head tensor that is no head split (Qwen3 normalizes
    each head before its rotary), or why not.

    RotaryEmbedding reads a 4-D input as ``[B, N, S, d]``. The layout is proved by cos and sin:
    ``[B or 1, 1, S, d]`` tables broadcast over axis 1 and run along axis 2, so wherever the
    original multiplies them with ``x`` (the tables' rows are checked at every probed length),
    ``x``'s axis 2 is the sequence. A ``[B, S, N, d]`` tensor rotated before its transpose has
    ``[B, S, 1, d]`` tables, and is refused here (a head split so rotated is ``_SEQUENCE_FIRST``'s). Under a
    partial rotation the tables are ``rotary_dim`` wide; ``halved``, half as wide (a chunked rotation's, each
    frequency once).
    """
    d = _static_dim(x, 3)
    if d is None:
        return "x is not a head split of a 3-D projection, nor a 4-D tensor of static head size"
    width = d if rotary_dim is None else rotary_dim
    if halved:
        width //= 2
    for table in (cos, sin):
        if table.shape is None or table.shape.rank() != 4 or table.shape[1] != 1 or table.shape[3] != width:
            columns = "d/2" if halved else "d"
            return (
                f"x is a 4-D tensor, but cos/sin are not [B or 1, 1, S, {columns}] tables (the layout [B, N, S, d] "
                "is unproved)"
            )
    return d


def _head_size(
    x: ir.Value, cos: ir.Value, sin: ir.Value, rotary_dim: int | None = None, *, halved: bool = False
) -> int | str:
    """The head size of ``x``, a head split or a ``[B, N, S, d]`` per-head tensor (``_per_head_size``), or why
    neither."""
    split = head_split(x, (0, 2, 1, 3))
    if split is None:
        size = _per_head_size(x, cos, sin, rotary_dim, halved=halved)
        sequence_first = _sequence_first_split(x) if isinstance(size, str) and not halved else None
        return sequence_first[2] if sequence_first is not None else size
    if split.heads is None and (last_dim(split.hidden) is None or last_dim(split.hidden) % split.head_size):
        return "the head count is unknown"
    return split.head_size


def _layout(x: ir.Value, cos: ir.Value, sin: ir.Value, rotary_dim: int | None = None) -> int:
    """The layout ``RotaryEmbeddingFusion.tables`` reads rotate_half's tables in, for an ``x`` ``_head_size``
    accepted: 0 (``[B or 1, 1, S, d]`` tables of a ``[B, N, S, d]`` tensor), or ``_SEQUENCE_FIRST`` for a
    ``[B, S, N, d]`` head split rotated before its transpose (the tables' layout is then checked on their values)."""
    if head_split(x, (0, 2, 1, 3)) is not None or not isinstance(_per_head_size(x, cos, sin, rotary_dim), str):
        return 0
    return _SEQUENCE_FIRST


def _split_in_halves(node: ir.Node, head_size: int) -> bool:
    """Whether the ``Split`` ``node`` cuts the last axis of a ``[B, N, S, head_size]`` tensor into its two halves, in
    order: sizes ``[h, h]`` (an input from opset 13, an attribute before) or two equal outputs (``num_outputs=2``, or
    neither given)."""
    if len(node.outputs) != 2 or head_size % 2 or node.attributes.get_int("axis", 0) not in (-1, 3):
        return False
    sizes = constant_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        return False  # sizes computed at run time
    given = node.attributes.get_ints("split", None)
    if sizes is None and given is not None:
        sizes = np.asarray(given)
    if sizes is not None:
        return [int(size) for size in sizes.reshape(-1)] == [head_size // 2] * 2
    return node.attributes.get_int("num_outputs", 2) == 2


def _cut_in_halves(lo: ir.Value, hi: ir.Value, width: int) -> bool:
    """Whether ``lo`` and ``hi`` are the first and second halves of the last axis (``width`` wide) of the tensor they
    are cut from: one ``Split``'s two outputs in order, or two Slices at ``[0, width/2)`` and ``[width/2, width)``."""
    if lo.producer().op_type == "Split":
        return lo.producer() is hi.producer() and _split_in_halves(lo.producer(), width)
    data, half = lo.producer().inputs[0], width // 2
    return _slice_bounds_of(lo.producer(), data, width) == (0, half) and _slice_bounds_of(
        hi.producer(), data, width
    ) == (half, width)


def _check_rotation(
    fusion: RotaryEmbeddingFusion, context, x, cos, sin, lo, hi, rotated, rotary_dim: int
) -> pattern.MatchResult:
    """The checks both rules share: ``rotated`` is rotate_half of ``rotary_dim`` channels, cos/sin their tables."""
    result = pattern.MatchResult()
    if rotated.producer().attributes.get_int("axis", 0) not in (-1, 3):
        return result.fail("rotate_half does not concatenate on the last axis")
    if not _cut_in_halves(lo, hi, rotary_dim):
        return result.fail("not a full, non-interleaved rotate_half")
    if not is_float(x):
        return result.fail("x is not float32")
    tables = fusion.tables(context.model, cos, sin, rotary_dim, interleaved=_layout(x, cos, sin, rotary_dim))
    if isinstance(tables, str):
        return result.fail(tables)
    return result


def _rotary(op, fusion: RotaryEmbeddingFusion, x, cos, sin, rotary_dim: int | None = None, layout: int = 0):
    """``RotaryEmbedding`` of ``x`` (on its 3-D projection when ``x`` is a head split), ``rotary_dim``
    channels of each head rotated (all when None), the rest passed through; ``layout`` is the tables'
    (``RotaryEmbeddingFusion.tables``' ``interleaved``: 0, ``_HALF_WIDTH`` for a chunked rotation's, or
    ``_SEQUENCE_FIRST`` for a ``[B, S, N, d]`` head split, rotated on its projection and split back without a
    transpose)."""
    split = head_split(x, (0, 2, 1, 3))
    if layout == _SEQUENCE_FIRST:  # a [B, S, N, d] head split: rotated on its projection, split as it was
        hidden, heads, d = _sequence_first_split(x)
        width = d if rotary_dim is None else rotary_dim
        cos_cache, sin_cache, position_ids = fusion.tables(None, cos, sin, width, interleaved=layout)
        partial = {} if width == d else {"rotary_embedding_dim": width}
        rotated = op.RotaryEmbedding(
            hidden,
            fusion.positions_for(position_ids, hidden),
            cos_cache,
            sin_cache,
            interleaved=0,
            num_heads=heads,
            **partial,
            _domain=MS_DOMAIN,
        )
        rotated.shape, rotated.type = hidden.shape, hidden.type
        return op.Reshape(rotated, _heads_split_shape(op, heads, d))
    # The rule's check proved x a head split or a [B, N, S, d] tensor of static d (``_head_size``).
    d = split.head_size if split is not None else _static_dim(x, 3)
    width = d if rotary_dim is None else rotary_dim
    cos_cache, sin_cache, position_ids = fusion.tables(None, cos, sin, width, interleaved=layout)
    position_ids = fusion.positions_for(position_ids, split.hidden if split is not None else x)
    # ONNX Runtime needs num_heads with rotary_embedding_dim, whatever the input's rank.
    partial = {} if width == d else {"rotary_embedding_dim": width}
    if split is None:  # a [B, N, S, d] tensor (normalized per head, as Qwen3's q_norm/k_norm): rotated as it is
        heads = {"num_heads": _static_dim(x, 1)} if partial else {}
        rotated = op.RotaryEmbedding(
            x, position_ids, cos_cache, sin_cache, interleaved=0, **heads, **partial, _domain=MS_DOMAIN
        )
        rotated.shape, rotated.type = x.shape, x.type
        return rotated
    heads = split.heads or last_dim(split.hidden) // d
    rotated = op.RotaryEmbedding(
        split.hidden,
        position_ids,
        cos_cache,
        sin_cache,
        interleaved=0,
        num_heads=heads,
        **partial,
        _domain=MS_DOMAIN,
    )
    rotated.shape, rotated.type = split.hidden.shape, split.hidden.type
    heads_split = op.Reshape(rotated, _heads_split_shape(op, heads, d))
    return op.Transpose(heads_split, perm=[0, 2, 1, 3])


def _heads_split_shape(op, heads: int, d: int) -> ir.Value:
    """The ``[0, 0, heads, d]`` target splitting the rotated ``[B, S, N*d]`` into heads, as an initializer.

    An initializer, not a ``Constant`` node: the pipeline turns Constants into initializers and merges
    equal computations before the fusions run, and deduplicates initializers after them, so a Constant
    per layer would be left for the next run to merge and lift.
    """
    return op.initializer(ir.tensor(np.array([0, 0, heads, d], dtype=np.int64)), name="rotary_heads_split_shape")


_RUNNING: contextvars.ContextVar[RotaryEmbeddingFusion] = contextvars.ContextVar("running_rotary_fusion")


class _RotaryRule(pattern.RewriteRuleClassBase):
    """A rule of ``RotaryEmbeddingFusion``: built once and shared, it reads the pass now running (its
    cos/sin tables) from a context variable, so two runs (threads) never see each other's tables."""

    @property
    def _fusion(self) -> RotaryEmbeddingFusion:
        return _RUNNING.get()


class _RotateHalf(_RotaryRule):
    def __init__(self) -> None:
        super().__init__(name="RotaryEmbedding")

    def pattern(self, op, x, cos, sin, lo_start, lo_end, lo_axes, hi_start, hi_end, hi_axes):
        lo = op.Slice(x, lo_start, lo_end, lo_axes, _allow_other_inputs=True, _outputs=["lo"])
        hi = op.Slice(x, hi_start, hi_end, hi_axes, _allow_other_inputs=True, _outputs=["hi"])
        rotated = op.Concat(op.Neg(hi), lo, _allow_other_attributes=True, _outputs=["rotated"])
        return op.Add(op.Mul(x, cos), op.Mul(rotated, sin))

    def check(self, context, x, cos, sin, lo, hi, rotated, **_) -> pattern.MatchResult:
        d = _head_size(x, cos, sin)
        if isinstance(d, str):
            return pattern.MatchResult().fail(d)
        return _check_rotation(self._fusion, context, x, cos, sin, lo, hi, rotated, d)

    def rewrite(self, op, x, cos, sin, **_):
        return _rotary(op, self._fusion, x, cos, sin, layout=_layout(x, cos, sin))


class _RotateHalfBySplit(_RotateHalf):
    """rotate_half with its halves taken by one ``Split`` (``torch.chunk``, ``jnp.split``, ``tf.split``): checked and
    rewritten as the two-Slice spelling (``_check_rotation`` reads the Split)."""

    def __init__(self) -> None:
        _RotaryRule.__init__(self, name="RotaryEmbeddingBySplit")

    def pattern(self, op, x, cos, sin):
        lo, hi = op.Split(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["lo", "hi"])
        rotated = op.Concat(op.Neg(hi), lo, _allow_other_attributes=True, _outputs=["rotated"])
        return op.Add(op.Mul(x, cos), op.Mul(rotated, sin))


# The layout ``RotaryEmbeddingFusion.tables`` reads (as its ``interleaved``) for a chunked rotation's tables:
# ``[B or 1, 1, S, d/2]``, one column per frequency, the caches as they are (0 is rotate_half's two equal
# halves, 1 or 2 rotate_every_two's axis of 1).
_HALF_WIDTH = -1
# ... and for rotate_half's tables of a ``[B, S, N, d]`` head split rotated before its transpose (the original
# Qwen's ``apply_rotary_pos_emb``, Flax's Llama): ``[B or 1, S, 1, d]``, two equal halves.
_SEQUENCE_FIRST = -2


class _ChunkedRotation(_RotaryRule):
    """The rotation written on the two halves of each head, GPT-OSS's (transformers' ``GptOss``)::

        x1, x2 = chunk(x, 2, dim=-1)                          # two Slices, or one Split
        y = Concat(x1 * cos - x2 * sin, x2 * cos + x1 * sin, axis=-1)

    with cos/sin ``[B or 1, 1, S, d/2]`` tables (each frequency once): what RotaryEmbedding computes
    (non-interleaved, over the whole head) with those tables' columns as its caches. ``x`` is a head
    split or a ``[B, N, S, d]`` tensor of static head size, as rotate_half's; the halves, the axis and
    the tables are checked as its, the tables by the same probes (``RotaryEmbeddingFusion.tables``).
    """

    def __init__(self, *, by_split: bool) -> None:
        super().__init__(name="ChunkedRotaryEmbeddingBySplit" if by_split else "ChunkedRotaryEmbedding")
        self._by_split = by_split

    def pattern(self, op, x, cos, sin, lo_start, lo_end, lo_axes, hi_start, hi_end, hi_axes):
        if self._by_split:
            lo, hi = op.Split(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["lo", "hi"])
        else:
            lo = op.Slice(x, lo_start, lo_end, lo_axes, _allow_other_inputs=True, _outputs=["lo"])
            hi = op.Slice(x, hi_start, hi_end, hi_axes, _allow_other_inputs=True, _outputs=["hi"])
        first = op.Sub(op.Mul(lo, cos), op.Mul(hi, sin))
        second = op.Add(op.Mul(hi, cos), op.Mul(lo, sin))
        return op.Concat(first, second, _allow_other_attributes=True, _outputs=["joined"])

    def check(self, context, x, cos, sin, lo, hi, joined, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if joined.producer().attributes.get_int("axis", 0) not in (-1, 3):
            return result.fail("a chunked rotation's halves are not concatenated on the last axis")
        d = _head_size(x, cos, sin, halved=True)
        if isinstance(d, str):
            return result.fail(d)
        if not _cut_in_halves(lo, hi, d):
            return result.fail("not a chunked rotation: the halves are not x[..., :d/2] and x[..., d/2:]")
        if not is_float(x):
            return result.fail("x is not float32")
        tables = self._fusion.tables(context.model, cos, sin, d, interleaved=_HALF_WIDTH)
        if isinstance(tables, str):
            return result.fail(tables)
        return result

    def rewrite(self, op, x, cos, sin, **_):
        return _rotary(op, self._fusion, x, cos, sin, layout=_HALF_WIDTH)


class _PartialRotateHalf(_RotaryRule):
    """``Concat(rotate(x[..., :r]), x[..., r:])``: the first ``r`` channels of each head rotated, the rest
    passed through (Phi3 and StableLM slice to ``cos.shape[-1]``, all of the head or part of it)."""

    def __init__(self) -> None:
        super().__init__(name="PartialRotaryEmbedding")

    def pattern(self, op, x_rot, x_pass, cos, sin, lo_start, lo_end, lo_axes, hi_start, hi_end, hi_axes):
        # x_rot and x_pass are inputs, their Slices of x checked in ``check``: the legacy export reads
        # Shape(x_rot) for rotate_half's bounds, a use outside the pattern that would stop the match.
        lo = op.Slice(x_rot, lo_start, lo_end, lo_axes, _allow_other_inputs=True, _outputs=["lo"])
        hi = op.Slice(x_rot, hi_start, hi_end, hi_axes, _allow_other_inputs=True, _outputs=["hi"])
        rotated = op.Concat(op.Neg(hi), lo, _allow_other_attributes=True, _outputs=["rotated"])
        embedded = op.Add(op.Mul(x_rot, cos), op.Mul(rotated, sin))
        return op.Concat(embedded, x_pass, _allow_other_attributes=True, _outputs=["joined"])

    def check(self, context, x_rot, x_pass, cos, sin, lo, hi, rotated, joined, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if joined.producer().attributes.get_int("axis", 0) not in (-1, 3):
            return result.fail("the rotated and passed channels are not concatenated on the last axis")
        x = _sliced(x_rot, x_pass)
        if x is None:
            return result.fail("the rotated and passed channels are not two Slices of one tensor")
        widths = _rotated_width(x, x_rot)
        if isinstance(widths, str):
            return result.fail(widths)
        d, rotary_dim = widths
        checked = _head_size(x, cos, sin, rotary_dim)
        if isinstance(checked, str):
            return result.fail(checked)
        if _slice_bounds_of(x_pass.producer(), x, d) != (rotary_dim, d):
            return result.fail("the channels passed through are not the rest of the head")
        unknown_heads = head_split(x, (0, 2, 1, 3)) is None and _static_dim(x, 1) is None
        # A [B, S, N, d] head split's heads are its Reshape's (``_SEQUENCE_FIRST``), on axis 2.
        if rotary_dim < d and unknown_heads and _layout(x, cos, sin, rotary_dim) != _SEQUENCE_FIRST:
            return result.fail("a partial rotation of a 4-D tensor of unknown head count")
        return _check_rotation(self._fusion, context, x, cos, sin, lo, hi, rotated, rotary_dim)

    def rewrite(self, op, x_rot, x_pass, cos, sin, **_):
        x = _sliced(x_rot, x_pass)
        rotary_dim = _rotated_width(x, x_rot)[1]
        return _rotary(op, self._fusion, x, cos, sin, rotary_dim, layout=_layout(x, cos, sin, rotary_dim))


def _sliced(x_rot: ir.Value, x_pass: ir.Value) -> ir.Value | None:
    """The tensor both ``x_rot`` and ``x_pass`` are Slices of, or None."""
    nodes = [producer(value, "Slice") for value in (x_rot, x_pass)]
    if None in nodes or nodes[0].inputs[0] is not nodes[1].inputs[0]:
        return None
    return nodes[0].inputs[0]


def _rotated_width(x: ir.Value, x_rot: ir.Value) -> tuple[int, int] | str:
    """``(d, r)``: ``x``'s head size and the ``r`` leading channels ``x_rot`` slices off it, or why not."""
    split = head_split(x, (0, 2, 1, 3))
    if split is not None:
        d = split.head_size
    elif _static_dim(x, 3) is not None:
        d = _static_dim(x, 3)
    else:
        return "x is not a head split of a 3-D projection, nor a 4-D tensor of static head size"
    bounds = _slice_bounds_of(x_rot.producer(), x, d)
    if bounds is None or bounds[0] != 0:
        return "the rotated channels are no leading slice of the head"
    if not 0 < bounds[1] <= d or bounds[1] % 2:
        return f"a rotation of {bounds[1]} of {d} channels"
    return d, bounds[1]


def _sequence_first_split(x: ir.Value) -> tuple[ir.Value, int, int] | None:
    """``(hidden, heads, d)`` when ``x = Reshape(hidden, [0, 0, N or -1, d])``: a ``[B, S, N, d]`` view of the
    ``[B, S, N * d]`` projection (GPT-J rotates its heads before their transpose), else None."""
    reshape = producer(x, "Reshape")
    target = constant_array(reshape.inputs[1]) if reshape is not None else None
    if target is None or target.shape != (4,) or reshape.attributes.get_int("allowzero", 0):
        return None
    hidden = reshape.inputs[0]
    batch, seq, heads, d = (int(t) for t in target)
    if batch != 0 or seq != 0 or d <= 0 or hidden.shape is None or hidden.shape.rank() != 3:
        return None
    width = last_dim(hidden)
    if heads == -1 and width is not None and width % d == 0:
        heads = width // d
    if heads <= 0 or (width is not None and width != heads * d):
        return None
    return hidden, heads, d


def _sequence_first_heads(x: ir.Value, depth: int = 0) -> tuple[int, int] | None:
    """``(N, d)``, the last two dims of a 4-D ``x`` (``[B, S, N, d]`` where its tables say so), when static: from
    its shape, or from the graph where shape inference left them unknown (CodeGen's legacy export: the packed
    projection ``Reshape`` to ``[0, 0, -1, 3 * N/g * d]`` groups, ``Split`` on the last axis, ``Reshape`` to
    ``[0, 0, -1, d]``); else None."""
    shape = x.shape
    if shape is None or shape.rank() != 4 or depth > 8:
        return None
    if all(isinstance(shape[axis], int) and shape[axis] > 0 for axis in (2, 3)):
        return shape[2], shape[3]
    reshape, split = producer(x, "Reshape"), producer(x, "Split")
    if reshape is not None:
        target = constant_array(reshape.inputs[1])
        if target is None or target.shape != (4,) or reshape.attributes.get_int("allowzero", 0):
            return None
        batch, seq, heads, d = (int(t) for t in target)
        data = reshape.inputs[0]
        if batch != 0 or seq != 0 or d <= 0 or data.shape is None:
            return None
        if heads > 0:
            return heads, d
        if data.shape.rank() == 3:
            width = last_dim(data)
        else:
            inner = _sequence_first_heads(data, depth + 1)
            width = inner[0] * inner[1] if inner is not None else None
        if heads != -1 or width is None or width % d:
            return None
        return width // d, d
    if split is not None and split.attributes.get_int("axis", 0) in (-1, 3):
        inner = _sequence_first_heads(split.inputs[0], depth + 1)
        sizes = constant_array(split.inputs[1]) if len(split.inputs) > 1 and split.inputs[1] is not None else None
        if inner is None or sizes is None or sizes.ndim != 1 or len(sizes) != len(split.outputs):
            return None
        if int(sizes.sum()) != inner[1]:
            return None
        return inner[0], int(sizes[x.index()])
    return None


def _strided_bounds(node: ir.Node, width: int) -> tuple[int, int, int] | None:
    """``(start, end, step)`` of a constant Slice over the last axis of a tensor ``width`` wide."""
    values = [node.inputs[i] if i < len(node.inputs) else None for i in range(1, 5)]
    arrays = [constant_array(v) if v is not None else np.array([1]) for v in values]
    if any(a is None or a.size != 1 for a in arrays):
        return None
    start, end, axis, step = (int(a.reshape(())) for a in arrays)
    if axis not in (-1, 3) or start < 0 or end < 0:
        return None
    return start, min(end, width), step


def _last_axis(value: ir.Value | None, rank: int) -> bool:
    """True if ``value`` is the constant ``[-1]`` or ``[rank - 1]`` (an Unsqueeze's axes)."""
    array = constant_array(value)
    return array is not None and array.size == 1 and int(array.reshape(())) in (-1, rank - 1)


@dataclass(frozen=True)
class _InterleavedHeads:
    """Where the tensor an interleaved rotation rotates comes from: ``hidden`` split into ``heads`` of ``d``,
    its heads on axis ``heads_axis`` (2: ``[B, S, N, d]``, GPT-J; 1: ``[B, N, S, d]`` after the transpose,
    Cohere), ``r`` leading channels of each rotated; or (``per_head``) ``hidden`` is the 4-D ``[B, N, S, d]``
    tensor rotated itself, no head split (Cohere's heads normalized first, ``use_qk_norm``)."""

    hidden: ir.Value
    heads: int
    d: int
    r: int
    heads_axis: int
    per_head: bool = False


class _RotateEveryTwo(_RotaryRule):
    """An interleaved rotation (GPT-J's, before the heads' transpose; Cohere's, after it)::

        x = Reshape(h, [0, 0, N, d])  or  Transpose(Reshape(h, [0, 0, N, d]), (0, 2, 1, 3))
        rotate_every_two(t) = Reshape(Concat(Unsqueeze(-t[..., 1::2], -1), Unsqueeze(t[..., ::2], -1), -1),
                                      x's dims, r last)            # (-t1, t0, -t3, t2, ...)
        y = Concat(t * cos + rotate_every_two(t) * sin, x[..., r:])    # t = x[..., :r]; or t = x, y = the sum

    into ``RotaryEmbedding(h, ..., interleaved=1)`` split back as ``x`` was; cos/sin are ``[B or 1, S, 1, r]``
    (``[B or 1, 1, S, r]`` after the transpose) tables whose columns come in equal pairs (``repeat_interleave``).
    An ``x`` that is no head split but a ``[B, N, S, d]`` tensor of static head count and size with
    ``[B or 1, 1, S, r]`` tables (Cohere's heads normalized first) is rotated as it is.
    """

    def __init__(self, *, partial: bool) -> None:
        super().__init__(name="InterleavedRotaryEmbedding" if partial else "InterleavedFullRotaryEmbedding")
        self._partial = partial

    def pattern(self, op, x_rot, x_pass, cos, sin, even_start, even_end, even_axes, odd_start, odd_end, odd_axes):
        even = op.Slice(x_rot, even_start, even_end, even_axes, _allow_other_inputs=True, _outputs=["even"])
        odd = op.Slice(x_rot, odd_start, odd_end, odd_axes, _allow_other_inputs=True, _outputs=["odd"])
        # The axes are inputs from opset 13 on, checked in ``check``.
        negated = op.Unsqueeze(op.Neg(odd), _allow_other_inputs=True, _outputs=["negated"])
        unsqueezed = op.Unsqueeze(even, _allow_other_inputs=True, _outputs=["unsqueezed"])
        stacked = op.Concat(negated, unsqueezed, _allow_other_attributes=True, _outputs=["stacked"])
        rotated = op.Reshape(stacked, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["rotated"])
        embedded = op.Add(op.Mul(x_rot, cos), op.Mul(rotated, sin))
        if not self._partial:
            return embedded
        return op.Concat(embedded, x_pass, _allow_other_attributes=True, _outputs=["joined"])

    def _heads(self, x_rot, x_pass, cos, sin) -> tuple[ir.Value, _InterleavedHeads] | str:
        """``x`` and where its heads come from, or why ``x_rot`` is no rotated part of a head split, nor of a
        ``[B, N, S, d]`` per-head tensor."""
        x = _sliced(x_rot, x_pass) if self._partial else x_rot
        if x is None:
            return "the rotated and passed channels are not two Slices of one tensor"
        split, heads_axis, per_head = _sequence_first_split(x), 2, False
        if split is None:
            heads_first = head_split(x, (0, 2, 1, 3))
            width = last_dim(heads_first.hidden) if heads_first is not None else None
            heads = heads_first.heads if heads_first is not None else None
            if heads is None and width is not None and width % heads_first.head_size == 0:
                heads = width // heads_first.head_size
            if heads is not None:
                split, heads_axis = (heads_first.hidden, heads, heads_first.head_size), 1
            elif heads_first is None and _static_dim(x, 1) is not None and _static_dim(x, 3) is not None:
                # Cohere's use_qk_norm normalizes each head between its split and its transpose: x is rotated
                # as it is, its layout proved by the tables (checked below, once the rotated width is known).
                split, heads_axis, per_head = (x, _static_dim(x, 1), _static_dim(x, 3)), 1, True
            elif heads_first is None and _sequence_first_heads(x) is not None:
                # CodeGen splits its heads off a packed projection's groups (no head split of one 3-D projection):
                # a [B, S, N, d] tensor, merged back to [B, S, N*d] for the op and split again, its layout proved
                # by the tables' evaluation (``tables`` with interleaved=2: [B or 1, S, 1, r] at every probe).
                split, heads_axis, per_head = (x, *_sequence_first_heads(x)), 2, True
            else:
                return (
                    "x of an interleaved rotation is no head split of a 3-D projection (before or after its "
                    "transpose), nor a 4-D tensor of static head count and size"
                )
        hidden, heads, d = split
        r = d
        if self._partial:
            rotated, passed = (_strided_bounds(v.producer(), d) for v in (x_rot, x_pass))
            if rotated is None or passed is None or rotated[0] != 0 or rotated[2] != 1:
                return "the rotated channels are no leading slice of the head"
            r = rotated[1]
            if passed != (r, d, 1):
                return "the channels passed through are not the rest of the head"
        if per_head and heads_axis == 1:
            checked = _per_head_size(x, cos, sin, r)
            if isinstance(checked, str):
                return checked
        return x, _InterleavedHeads(hidden, heads, d, r, heads_axis, per_head)

    def check(self, context, x_rot, x_pass=None, cos=None, sin=None, **values) -> pattern.MatchResult:
        result = pattern.MatchResult()
        joined = values.get("joined")
        if joined is not None and joined.producer().attributes.get_int("axis", 0) not in (-1, 3):
            return result.fail("the rotated and passed channels are not concatenated on the last axis")
        found = self._heads(x_rot, x_pass, cos, sin)
        if isinstance(found, str):
            return result.fail(found)
        x, heads = found
        r = heads.r
        if not 0 < r <= heads.d or r % 2:
            return result.fail(f"an interleaved rotation of {r} of {heads.d} channels")
        if _strided_bounds(values["even"].producer(), r) != (0, r, 2) or _strided_bounds(
            values["odd"].producer(), r
        ) != (1, r, 2):
            return result.fail("not rotate_every_two: the pairs are not x[..., ::2] and x[..., 1::2]")
        negated, unsqueezed, stacked = (values[name].producer() for name in ("negated", "unsqueezed", "stacked"))
        if not all(len(node.inputs) == 2 and _last_axis(node.inputs[1], 5) for node in (negated, unsqueezed)):
            return result.fail("rotate_every_two's pairs are not stacked on a new last axis")
        if stacked.attributes.get_int("axis", 0) not in (-1, 4):
            return result.fail("rotate_every_two's pairs are not stacked on a new last axis")
        if not _flattens_pairs(values["rotated"].producer(), heads):
            return result.fail("rotate_every_two's pairs are not flattened back into the head")
        if not is_float(x):
            return result.fail("x is not float32")
        tables = self._fusion.tables(context.model, cos, sin, r, interleaved=heads.heads_axis)
        if isinstance(tables, str):
            return result.fail(tables)
        return result

    def rewrite(self, op, x_rot, x_pass=None, cos=None, sin=None, **_):
        _, heads = self._heads(x_rot, x_pass, cos, sin)
        cos_cache, sin_cache, position_ids = self._fusion.tables(None, cos, sin, heads.r, interleaved=heads.heads_axis)
        partial = {} if heads.r == heads.d else {"rotary_embedding_dim": heads.r}
        hidden = heads.hidden
        merged = heads.per_head and heads.heads_axis == 2  # a [B, S, N, d] tensor: merged into [B, S, N*d] and back
        position_ids = self._fusion.positions_for(position_ids, hidden, sequence_axis=1 if merged else None)
        if heads.per_head and not merged:  # a [B, N, S, d] tensor, rotated as it is (num_heads only when partial)
            count = {"num_heads": heads.heads} if partial else {}
            rotated = op.RotaryEmbedding(
                hidden, position_ids, cos_cache, sin_cache, interleaved=1, **count, **partial, _domain=MS_DOMAIN
            )
            rotated.shape, rotated.type = hidden.shape, hidden.type
            return rotated
        declared = hidden
        if merged:
            merge = op.initializer(
                ir.tensor(np.array([0, 0, heads.heads * heads.d], dtype=np.int64)), name="rotary_heads_merge_shape"
            )
            hidden = op.Reshape(hidden, merge)
        rotated = op.RotaryEmbedding(
            hidden,
            position_ids,
            cos_cache,
            sin_cache,
            interleaved=1,
            num_heads=heads.heads,
            **partial,
            _domain=MS_DOMAIN,
        )
        if not merged:
            rotated.shape, rotated.type = hidden.shape, hidden.type
        split = op.Reshape(rotated, _heads_split_shape(op, heads.heads, heads.d))
        if merged:
            split.shape, split.type = declared.shape, declared.type
            return split
        return split if heads.heads_axis == 2 else op.Transpose(split, perm=[0, 2, 1, 3])


def _flattens_pairs(reshape: ir.Node, heads: _InterleavedHeads) -> bool:
    """True if ``reshape`` flattens the stacked ``[..., r/2, 2]`` pairs back into ``x``'s 4-D layout: a constant
    target that copies (0) or states each of x's first three axes (only the heads' is static), ``r`` or -1
    last; one of them inferred (-1) when ``r`` is stated."""
    target = constant_array(reshape.inputs[1])
    if target is None or target.shape != (4,) or reshape.attributes.get_int("allowzero", 0):
        return False
    *leading, last = (int(t) for t in target)
    stated = all(t == 0 or (axis == heads.heads_axis and t == heads.heads) for axis, t in enumerate(leading))
    if last == -1:
        return stated
    inferred = [axis for axis, t in enumerate(leading) if t == -1]
    rest_stated = all(
        t == 0 or (axis == heads.heads_axis and t == heads.heads) for axis, t in enumerate(leading) if t != -1
    )
    return last == heads.r and len(inferred) <= 1 and rest_stated


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
        self.cache_length = checked_length(cache_length if max_sequence is None else max_sequence)
        self._tables: dict[tuple[int, int], tuple | str] = {}
        self._expanded: dict[tuple[int, int], ir.Value] = {}
        self._noted: set[str] = set()
        self._read_by_onnx_op: set[int] = set()  # position_ids an ONNX RotaryEmbedding of the original reads
        self._ending: str | None = None  # the note of the caches being built ending early
        self._graph: ir.Graph | None = None

    def fuse(self, model: ir.Model) -> int:
        self._tables, self._expanded, self._noted = {}, {}, set()
        running = _RUNNING.set(self)
        try:
            return self._written_out_and_fused(model)
        finally:
            _RUNNING.reset(running)

    def _written_out_and_fused(self, model: ir.Model) -> int:
        # torch's dynamo exporter at opset 23 (optimize=True) writes the rotation as ONNX's own RotaryEmbedding:
        # written out, it is matched as any spelled-out rotation, and put back where the match refuses it
        # (``_onnx_rotary``).
        rotaries = onnx_rotary_nodes(model.graph)
        # What a node is written out as reads its input's type and shape: where the file records none (a float32
        # node was left as "not float32"), they are inferred for the pass, as fuse-attention's for ONNX's Attention.
        if any(_unrecorded(node) for node in rotaries) and lacks_shapes(model):
            with inferred_shapes(model):
                return self._spelled_and_fused(model, rotaries)
        return self._spelled_and_fused(model, rotaries)

    def _spelled_and_fused(self, model: ir.Model, rotaries: list[ir.Node]) -> int:
        opset = onnx_opset(model.opset_imports, 0)
        tables = RotaryTables()
        spelled: list[SpelledRotary] = []
        self._read_by_onnx_op = {id(node.inputs[3]) for node in rotaries if len(node.inputs) > 3 and node.inputs[3]}
        for index, node in enumerate(rotaries):
            result = spell_out(functools.partial(NodeBuilder, model.graph, node, opset=opset), node, index, tables)
            if isinstance(result, str):
                self.refuse(_ONNX_ROTARY, f"{result}; ONNX Runtime runs it as written")
            else:
                spelled.append(result)
        count = super().fuse(model)
        for written_out in spelled:
            if written_out.matched():
                self.done(_ONNX_ROTARY)
            else:
                take_back(model.graph, written_out)
                self.refuse(
                    _ONNX_ROTARY, "written out, not matched (the near miss says why); ONNX Runtime runs it as written"
                )
        tables.remove_unused(model.graph)
        return count

    def rule_set(self) -> pattern.RewriteRuleSet:
        # The partial form holds the full one: it goes first, so its x is not refused as no head split.
        return [
            pattern.RewriteRuleSet([_PartialRotateHalf.rule()]),
            pattern.RewriteRuleSet([_RotateHalf.rule()]),
            pattern.RewriteRuleSet([_RotateHalfBySplit.rule()]),
            pattern.RewriteRuleSet([_ChunkedRotation.rule(by_split=False)]),
            pattern.RewriteRuleSet([_ChunkedRotation.rule(by_split=True)]),
            pattern.RewriteRuleSet([_RotateEveryTwo.rule(partial=True)]),
            pattern.RewriteRuleSet([_RotateEveryTwo.rule(partial=False)]),
        ]

    def tables(self, model: ir.Model | None, cos: ir.Value, sin: ir.Value, head_size: int, *, interleaved: int = 0):
        """``(cos_cache, sin_cache, position_ids)`` values for this cos/sin pair, or why there are none.

        ``interleaved`` is 0 for tables of two equal halves (``_SEQUENCE_FIRST`` for such ``[B or 1, S, 1, d]``
        tables, of heads rotated before their transpose), ``_HALF_WIDTH`` for ``[B or 1, 1, S, d/2]`` tables
        that are the caches' columns as they are (a chunked rotation's), else the axis (1 or 2) over which
        ``[B or 1, ·, ·, d]`` tables of equal column pairs broadcast: the heads' axis of the rotated tensor.
        Computed once per pair (on the first call, which passes the model) and cached.
        """
        key = (id(cos), id(sin), interleaved)
        if key not in self._tables:
            self._graph = model.graph
            self._ending = None
            self._tables[key] = self._build_tables(model, cos, sin, head_size, interleaved)
            if self._ending is not None and not isinstance(self._tables[key], str):
                self._note_once(self._ending)  # only for caches built: a refused pair ends nothing
        return self._tables[key]

    def _note_once(self, text: str) -> None:
        """A note, once however many cos/sin pairs give it (the dynamo export computes one per layer)."""
        if text not in self._noted:
            self._noted.add(text)
            self.note(text)

    def positions_for(self, positions: ir.Value, rotated: ir.Value, *, sequence_axis: int | None = None) -> ir.Value:
        """What the fused op reads as ``position_ids`` for ``rotated`` (its 3-D ``[B, S, H]`` or 4-D ``[B, N, S, d]``
        input; ``sequence_axis`` 1 for a 4-D ``[B, S, N, d]`` tensor merged into the op's 3-D input): the
        ``position_ids`` input expanded to ``[B, S]``, or ``positions`` as they are (an offset).

        The original broadcasts a ``[1, S]`` (or ``[B, 1]``) ``position_ids`` over the batch (or sequence);
        ONNX Runtime's RotaryEmbedding wants exactly ``[B, S]`` or a ``[1]`` offset, and fails otherwise.
        ``_check_rows`` proved that the tables of broadcast positions are the broadcast rows, so
        ``Expand(position_ids, [B, S])`` of ``rotated``'s shape gives the op the original's positions. The
        shape is read off the input of the projection when ``rotated`` is one (shared by the query and key),
        and the Expand is left out when both shapes are static and equal.
        """
        if positions.is_graph_input() and id(positions) not in self._read_by_onnx_op:
            # (ONNX's own RotaryEmbedding refuses such a position too: no note where it read these positions.)
            self._note_once(
                f"{positions.name} index the fused op's cos/sin tables: ONNX Runtime refuses a negative position "
                "(a padded one left at cumsum(mask) - 1 = -1) or one past the tables, where the original computed "
                "any; give padded positions one in range (transformers' generate gives 1)"
            )
        if not positions.is_graph_input() or positions.shape is None or positions.shape.rank() != 2:
            return positions
        source = _projection_input(rotated)
        anchor = source.producer()
        if anchor is not None and anchor.graph is not self._graph:
            return positions  # computed in a function or subgraph: no Expand of the main graph can read it
        if sequence_axis is None:
            sequence_axis = 1 if source.shape.rank() == 3 else 2
        wanted = [source.shape[0], source.shape[sequence_axis]]
        if all(isinstance(dim, int) for dim in wanted) and list(positions.shape) == wanted:
            return positions
        key = (id(positions), id(source))
        if key not in self._expanded:
            self._expanded[key] = _expanded_positions(self._graph, positions, source, sequence_axis)
        return self._expanded[key]

    def _build_tables(self, model: ir.Model, cos: ir.Value, sin: ir.Value, head_size: int, interleaved: int):
        read = graph_inputs_of([cos, sin])
        if read is None:
            return "cos/sin are computed through an If/Loop/Scan"
        inputs = [v for v in read if _is_token_input(v)]
        others = [v for v in read if not _is_token_input(v)]
        past = _past_length_read([cos, sin], others) if others else None
        if isinstance(past, str):
            return past
        positions = next((v for v in inputs if "position" in (v.name or "")), None)
        if past is not None and (positions is not None or any(is_mask(v) for v in inputs)):
            reader = "position_ids" if positions is not None else "the mask"
            return f"cos/sin read a cache's length and {reader}: which gives the positions is unproved"
        # The probes feed ones for token ids: tables that read their values (positions counted from
        # ``input_ids != pad``) would pass every probe and differ on real padded rows.
        allowed = [positions] if positions is not None else []
        if not all(values_only_from(table, *allowed) for table in (cos, sin)):
            other = " other than position_ids" if positions is not None else ""
            return f"cos/sin read the values of an input{other} (token ids?), not only its shape"
        half = head_size // 2
        pinned = _pinned_shapes(inputs)
        if pinned is not None:
            return self._pinned_tables(model, cos, sin, inputs, positions, pinned, half, interleaved)
        cache_length = self.cache_length
        if (too_long := _caches_past_memory(cache_length, head_size)) is not None:
            return too_long
        table_positions = {positions.name: np.arange(cache_length)[None]} if positions is not None else {}
        # A cache read for its length is empty in the probes that take positions from the token index.
        no_past = _past_feeds(past, 0)
        try:
            table_cos, table_sin = evaluate(
                model,
                [cos, sin],
                token_feeds(inputs, np.ones((1, cache_length)), table_positions) | no_past,
            )
        except RuntimeRefusedError as error:
            # Most often a position table shorter than the caches asked for (GPT-J's ``embed_positions``):
            # the original itself ends there, and so do the caches.
            found = _longest_tables(model, [cos, sin], inputs, positions, cache_length, no_past)
            if found is None:
                shorter = f" nor at {_SHORTEST_TABLE}" if _SHORTEST_TABLE < cache_length else ""
                return (
                    f"cos/sin could not be evaluated at {cache_length} positions (--max-sequence){shorter} (a "
                    f"position table shorter than that? give --max-sequence up to its rows): {error}"
                )
            cache_length, (table_cos, table_sin) = found
            self._ending = (
                f"rotary caches end at {cache_length} positions, where cos/sin's tables end (the original "
                f"refuses position {cache_length}); the fused model takes no longer sequences, as with "
                f"--max-sequence {cache_length}"
            )
        cos_cache, sin_cache = _halves(table_cos, half, interleaved), _halves(table_sin, half, interleaved)
        if cos_cache is None or sin_cache is None:
            if interleaved == _HALF_WIDTH:
                return "cos/sin of a chunked rotation are not [B or 1, 1, S, d/2] tables of a [positions, d/2] table"
            if interleaved == _SEQUENCE_FIRST:
                return (
                    "x is a [B, S, N, d] head split, but cos/sin are not [B or 1, S, 1, d] tables of two equal "
                    "halves of a [positions, d/2] table"
                )
            if interleaved:
                layout = "[B or 1, S, 1, d]" if interleaved == 2 else "[B or 1, 1, S, d]"
                return f"cos/sin are not {layout} tables of a [positions, d/2] table's columns each repeated"
            return "cos/sin are not two equal halves of a [positions, d/2] table"
        caches = cos_cache[0], sin_cache[0]
        wrong = _check_rows(model, [cos, sin], inputs, positions, caches, cache_length, no_past, interleaved)
        if wrong is not None:
            return wrong
        if past is not None:
            wrong = _counts_on_from_cache(model, [cos, sin], inputs, past, caches, cache_length, interleaved)
            if wrong is not None:
                return wrong
            counted = None
        else:
            counted = (
                None
                if positions is not None
                else _counts_on_from_past(model, [cos, sin], inputs, caches, cache_length, interleaved)
            )
        if isinstance(counted, str):
            return counted
        if positions is not None and positions.dtype != ir.DataType.INT64:
            return "position_ids are not int64"
        return self._caches(model, caches, table_cos.dtype, positions, past, counted)

    def _caches(self, model: ir.Model, caches, dtype, positions, past, counted):
        """The initializers of ``caches`` and what the fused op reads as positions: ``positions`` (the
        ``position_ids`` input), a cache's length, the mask's past length, or offset 0."""
        cos_cache, sin_cache = caches
        graph = model.graph
        cos_value = add_initializer(graph, "rotary_cos_cache", cos_cache.astype(dtype))
        sin_value = add_initializer(graph, "rotary_sin_cache", sin_cache.astype(dtype))
        if positions is not None:
            position_value = positions
        elif past is not None:
            position_value = _cache_offset(graph, *past)
        elif counted is not None:
            position_value = _past_length(graph, *counted)
        else:
            position_value = add_initializer(graph, "rotary_position_offset", np.zeros(1, dtype=np.int64))
        return cos_value, sin_value, position_value

    def _pinned_tables(
        self,
        model: ir.Model,
        cos: ir.Value,
        sin: ir.Value,
        inputs: list[ir.Value],
        positions: ir.Value | None,
        pinned: dict[str, tuple[int, ...]],
        half: int,
        interleaved: int,
    ):
        """``_build_tables`` where every input cos/sin read has static dims (``--static-shapes``), or why not.

        ONNX Runtime refuses any other shape than the declared one before running a node, so the
        original (and the rewrite) runs at those shapes alone; but the values of ``position_ids`` stay
        free, so the caches still cover ``cache_length`` positions: they are evaluated ``S`` at a time,
        positions ``k*S .. k*S + S - 1`` in the ``k``-th run, and where the original refuses a run (a
        position table shorter than that, GPT-J's), they end at its last position it evaluates (found by
        bisection within that run, the other positions 0), one more refused. Then cos/sin of positions
        drawn at random below that, on all-ones and padded masks, must be the caches' rows.
        """
        if positions is None:
            return "cos/sin read inputs of static shape but no position_ids (positions fixed by the shapes)"
        if positions.dtype != ir.DataType.INT64:
            return "position_ids are not int64"
        try:
            run = evaluator(model, [cos, sin])
        except RuntimeRefusedError as error:
            return f"cos/sin could not be evaluated: {error}"
        batch, seq = pinned[positions.name]
        masks = _pinned_masks(inputs, pinned)

        def tables_at(values: np.ndarray, mask: int = 0) -> list[np.ndarray] | None:
            feeds = {v.name: masks[mask][v.name] for v in inputs if v is not positions}
            feeds[positions.name] = np.broadcast_to(values, (batch, seq)).astype(np.int64)
            try:
                return run(feeds)
            except RuntimeRefusedError:
                return None

        cache_length, rows, dtype = self.cache_length, [[], []], None
        for start in range(0, self.cache_length, seq):
            count = min(seq, self.cache_length - start)
            values = _chunk(start, count, seq)
            found = tables_at(values)
            if found is None:
                # The original refuses one of these positions: its table ends in this run.
                low, high = 0, count  # evaluated with low of them, refused with high
                while high - low > 1:
                    middle = (low + high) // 2
                    if tables_at(_chunk(start, middle, seq)) is None:
                        high = middle
                    else:
                        low = middle
                cache_length, count = start + low, low
                found = tables_at(_chunk(start, low, seq)) if low else None
                if cache_length < _SHORTEST_TABLE or (low and found is None):
                    return (
                        f"cos/sin could not be evaluated at {_SHORTEST_TABLE} positions through the static "
                        f"{list(pinned[positions.name])} position_ids"
                    )
            if found is not None:
                for index, table in enumerate(found):
                    halved = _halves(table, half, interleaved)
                    if halved is None or halved.shape[1] != seq:
                        return "cos/sin of the static position_ids are not tables of their positions' rows"
                    rows[index].append(halved[0, :count])
                    dtype = table.dtype
            if cache_length < self.cache_length:
                self._ending = (
                    f"rotary caches end at {cache_length} positions, where cos/sin's tables end (the original "
                    f"refuses position {cache_length}); the fused model takes no later positions, as with "
                    f"--max-sequence {cache_length}"
                )
                break
        if seq > cache_length:
            # ONNX Runtime's RotaryEmbedding refuses a sequence longer than its caches: at the one shape the
            # graph takes, the fused model would run nothing.
            return (
                f"the static position_ids hold {seq} positions, more than the {cache_length} the caches cover "
                "(--max-sequence, or where the tables end)"
            )
        caches = tuple(np.concatenate(parts) for parts in rows)
        rng = np.random.default_rng(0)
        for mask in range(len(masks)):
            for draw in range(2):
                drawn = rng.integers(0, cache_length, (batch, seq))
                if draw and cache_length >= seq:
                    drawn[:, :] = cache_length - 1 - np.arange(seq)  # the last rows, descending
                found = tables_at(drawn, mask)
                if found is None:
                    return "cos/sin could not be evaluated at positions below the caches' end"
                for probe, cache in zip(found, caches):
                    halved = _halves(probe, cache.shape[-1], interleaved)
                    if halved is None or halved.shape[0] not in (1, batch) or halved.shape[1] != seq:
                        return "cos/sin of the static position_ids have an unexpected shape"
                    if not np.allclose(np.broadcast_to(halved, (batch, seq, half)), cache[drawn], atol=1e-6):
                        return "cos/sin of the static position_ids are not the caches' rows for their positions"
        return self._caches(model, caches, dtype, positions, None, None)


def _pinned_shapes(inputs: list[ir.Value]) -> dict[str, tuple[int, ...]] | None:
    """Each input's shape when every one has static dims (``--static-shapes``), else None."""
    shapes = {v.name: tuple(v.shape) for v in inputs}
    if not inputs or not all(isinstance(dim, int) for shape in shapes.values() for dim in shape):
        return None
    return shapes


def _pinned_masks(inputs: list[ir.Value], pinned: dict[str, tuple[int, ...]]) -> list[dict[str, np.ndarray]]:
    """Feeds for the inputs of static shape other than the positions: ones, then masks padded on the left."""
    feeds = []
    for padded in (False, True):
        feed = {}
        for value in inputs:
            array = np.ones(pinned[value.name])
            if padded and is_mask(value) and array.shape[-1] >= 4:
                array[:, : array.shape[-1] // 4] = 0
            feed[value.name] = array.astype(value.dtype.numpy())
        feeds.append(feed)
    return feeds if any(is_mask(v) for v in inputs) else feeds[:1]


def _chunk(start: int, count: int, length: int) -> np.ndarray:
    """``[1, length]`` positions ``start .. start + count - 1``, then 0 (a position every table holds)."""
    values = np.zeros((1, length), np.int64)
    values[0, :count] = start + np.arange(count)
    return values


# Caches shorter than this are not built: the tables the original refuses at fewer positions are no table's end.
_SHORTEST_TABLE = 16


def _longest_tables(
    model: ir.Model,
    tables: list[ir.Value],
    inputs: list[ir.Value],
    positions: ir.Value | None,
    cache_length: int,
    fixed: dict[str, np.ndarray],
) -> tuple[int, list[np.ndarray]] | None:
    """``(L, cos/sin)`` for the most positions ``L < cache_length`` at which the original evaluates cos/sin, one
    more refused (a position table of ``L`` rows), or None when it refuses ``_SHORTEST_TABLE`` already.

    The fused op refuses positions past its caches (ONNX Runtime checks each), where the original refuses
    position ``L``: the caches end where the model does, as ``--max-sequence L`` would end them. The rows
    below ``L`` are checked at every probed length like any caches' (``_check_rows``).
    """
    run = evaluator(model, tables)

    def tables_at(length: int) -> list[np.ndarray] | None:
        overrides = {positions.name: np.arange(length)[None]} if positions is not None else {}
        try:
            return run(token_feeds(inputs, np.ones((1, length)), overrides) | fixed)
        except RuntimeRefusedError:
            return None

    if _SHORTEST_TABLE >= cache_length or tables_at(_SHORTEST_TABLE) is None:
        return None
    low, high = _SHORTEST_TABLE, cache_length  # evaluated at low, refused at high
    while high - low > 1:
        middle = (low + high) // 2
        if tables_at(middle) is None:
            high = middle
        else:
            low = middle
    return low, tables_at(low)


def _is_token_input(value: ir.Value) -> bool:
    """A ``[batch, sequence]`` integer input: token ids, the attention mask, position ids."""
    return value.dtype in (ir.DataType.INT64, ir.DataType.INT32) and value.shape is not None and value.shape.rank() == 2


def _projection_input(value: ir.Value) -> ir.Value:
    """``A`` when ``value = A @ W [+ b]`` for a 3-D ``A``, a constant 2-D ``W`` (and 1-D ``b``): its batch and
    sequence are ``value``'s. Else ``value``."""
    node = producer(value, "Add")
    if node is not None:
        for operand, other in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
            bias = constant_array(other)
            if bias is not None and bias.ndim == 1 and producer(operand, "MatMul") is not None:
                value = operand
                break
        else:
            return value
    node = producer(value, "MatMul")
    if node is None:
        return value
    weight, source = constant_array(node.inputs[1]), node.inputs[0]
    if weight is None or weight.ndim != 2 or source.shape is None or source.shape.rank() != 3:
        return value
    return source


def _expanded_positions(graph: ir.Graph, positions: ir.Value, source: ir.Value, sequence_axis: int) -> ir.Value:
    """``Expand(positions, [B, S])`` of ``source``'s batch (axis 0) and sequence (``sequence_axis``), computed
    right after ``source`` (at the start of ``graph`` when it is an input)."""
    if sequence_axis == 1:
        nodes = shape_dims(graph, source, 0, 2)
    else:
        axes = add_initializer(graph, "rotary_batch_sequence_axes", np.array([0, sequence_axis], dtype=np.int64))
        nodes = [ir.node("Shape", [source])]
        nodes.append(ir.node("Gather", [nodes[0].outputs[0], axes], {"axis": 0}))
    nodes.append(ir.node("Expand", [positions, nodes[-1].outputs[0]]))
    anchor = source.producer()
    if anchor is None:  # a graph input
        graph.insert_before(next(iter(graph)), nodes)
    else:
        graph.insert_after(anchor, nodes)
    expanded = nodes[-1].outputs[0]
    expanded.dtype = positions.dtype
    expanded.shape = ir.Shape([source.shape[0], source.shape[sequence_axis]])
    return expanded


def _past_length_read(tables: list[ir.Value], others: list[ir.Value]) -> tuple[ir.Value, int] | str:
    """``(past, axis)`` when cos/sin read, beside token inputs, one input ``past`` and only its size on one
    symbolic ``axis`` (a decoder without ``position_ids`` counting on from ``Shape(past_key)[2]``), or why not."""
    names = ", ".join(f"'{v.name}'" for v in others)
    refusal = f"cos/sin read {names}, not only [batch, sequence] ids or one dim of a cache's shape"
    if len(others) != 1:
        return refusal
    (past,) = others
    axes = dims_read(tables, past)
    if axes is None or len(axes) != 1:
        return refusal
    (axis,) = axes
    if isinstance(past.shape[axis], int):
        return f"cos/sin read the fixed dim {axis} of '{past.name}', no cache's length"
    return past, axis


def _past_feeds(past: tuple[ir.Value, int] | None, length: int) -> dict[str, np.ndarray]:
    """A probe value for the cache read for its length: ``length`` long on that axis (the only one read), 1 or
    its fixed size on the others."""
    if past is None:
        return {}
    value, axis = past
    shape = [length if i == axis else (dim if isinstance(dim, int) else 1) for i, dim in enumerate(value.shape)]
    return {value.name: np.zeros(shape, dtype=value.dtype.numpy())}


def _check_rows(
    model: ir.Model,
    tables: list[ir.Value],
    inputs: list[ir.Value],
    positions: ir.Value | None,
    caches: tuple[np.ndarray, np.ndarray],
    cache_length: int,
    fixed: dict[str, np.ndarray],
    interleaved: int = 0,
) -> str | None:
    """Why cos/sin are not the caches' rows for their positions at every probed length, or None.

    Positions are the token index, or drawn at random (when the model reads a
    ``position_ids`` input) below the caches' length.
    """
    rng = np.random.default_rng(0)
    rows = len(caches[0])
    batch, seq = PADDED_MASK.shape
    probes = [(PADDED_MASK, rng.integers(0, min(seq * 3, rows), (batch, seq)))]
    lengths = probe_lengths(tables, cache_length, model=model, inputs=inputs)
    if isinstance(lengths, str):
        return f"cos/sin: {lengths}"
    for length in lengths:
        probes.append((long_mask(length), rng.integers(0, rows, (1, length))))
    for index, (mask, drawn) in enumerate(probes):
        batch, seq = mask.shape
        feeds = token_feeds(inputs, mask, {positions.name: drawn} if positions is not None else None) | fixed
        wanted = drawn if positions is not None else np.arange(seq)[None].repeat(batch, 0)
        try:
            found = evaluate(model, tables, feeds)
        except RuntimeRefusedError as error:
            if index == 0:
                return f"cos/sin could not be evaluated: {error}"
            continue  # the original refuses this length
        for probe, cache in zip(found, caches):
            halves = _halves(probe, cache.shape[-1], interleaved)
            if halves is None or halves.shape[0] not in (1, batch) or halves.shape[1] != seq:
                if index and probe.ndim >= 2 and probe.shape[-2] not in (1, seq):
                    break  # cos/sin cannot multiply the [B, N, S, d] query: the original refuses this length
                if probe.ndim == 3 and probe.shape[0] != 1:
                    return (
                        "cos/sin are [B, S, ·] tables: against the [B, N, S, d] heads their batch broadcasts over "
                        "the heads, not over the batch"
                    )
                if index == 0 and not inputs and probe.ndim >= 2:
                    # Tables folded to constants (an export without dynamic axes): the padded batch's 7 tokens
                    # cannot be read from them, as no other length can but their own.
                    return (
                        f"cos/sin are constant tables of {probe.shape[-2]} positions that read no input (an export "
                        f"of static shapes?): their rows are fixed by the shapes, and a probe of {seq} tokens "
                        "cannot check them"
                    )
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
    if positions is None:
        return None
    return _check_broadcast_rows(model, tables, inputs, positions, caches, fixed, interleaved)


def _check_broadcast_rows(
    model: ir.Model,
    tables: list[ir.Value],
    inputs: list[ir.Value],
    positions: ir.Value,
    caches: tuple[np.ndarray, np.ndarray],
    fixed: dict[str, np.ndarray],
    interleaved: int,
) -> str | None:
    """Why cos/sin of a ``[1, S]`` or ``[B, 1]`` ``position_ids`` (which the original broadcasts over the batch
    or the sequence) are not the rows of the positions broadcast to ``[B, S]``, or None.

    The fused op reads ``Expand(position_ids, [B, S])`` (ONNX Runtime's kernel refuses any other shape than
    ``[B, S]``); where the original refuses such a shape, or its tables would not broadcast over ``[B, S]``,
    it runs no such batch, and the probe is skipped. Each broadcast shape (``[1, S]``, ``[B, 1]``,
    ``[1, 1]``) is probed at several batches and lengths (``_BROADCAST_MASKS``): tables that read
    ``position_ids``' shape beside the tokens' (``(B_p - B)·(B - 2)`` added to the positions, a
    review's) agree with the broadcast rows at one size and not at another.
    """
    rng = np.random.default_rng(1)
    rows = len(caches[0])
    for mask in _BROADCAST_MASKS:
        batch, seq = mask.shape
        for shape in sorted({(1, seq), (batch, 1), (1, 1)} - {(batch, seq)}):
            drawn = rng.integers(0, min(max(seq, 7) * 3, rows), shape)
            feeds = token_feeds(inputs, mask, {positions.name: drawn}) | fixed
            try:
                found = evaluate(model, tables, feeds)
            except RuntimeRefusedError:
                continue
            wanted = np.broadcast_to(drawn, (batch, seq))
            for probe, cache in zip(found, caches):
                halves = _halves(probe, cache.shape[-1], interleaved)
                if halves is None or halves.shape[0] not in (1, batch) or halves.shape[1] not in (1, seq):
                    break
                if not np.allclose(np.broadcast_to(halves, (batch, seq, halves.shape[-1])), cache[wanted], atol=1e-6):
                    return (
                        f"cos/sin of position_ids shaped {list(shape)} (broadcast by the original) are not the "
                        f"cache's rows for the broadcast positions at batch {batch}, {seq} tokens"
                    )
    return None


# Token masks of the broadcast probes: PADDED_MASK (2 rows of 7), 3 rows of 5 (one left-padded), 2 rows of 1,
# 4 rows of 3: batches and lengths on both sides of 2 and of each other.
_BROADCAST_MASKS = (
    PADDED_MASK,
    np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]),
    np.ones((2, 1), np.int64),
    np.ones((4, 3), np.int64),
)


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
    interleaved: int = 0,
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
    lengths = probe_lengths(tables, cache_length, model=model, inputs=inputs)
    if isinstance(lengths, str):
        return f"cos/sin: {lengths}"
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
                halves = _halves(probe, cache.shape[-1], interleaved)
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


def _counts_on_from_cache(
    model: ir.Model,
    tables: list[ir.Value],
    inputs: list[ir.Value],
    past: tuple[ir.Value, int],
    caches: tuple[np.ndarray, np.ndarray],
    cache_length: int,
    interleaved: int = 0,
) -> str | None:
    """Why cos/sin do not take position ``P + s`` for a cache ``P`` long on the axis they read, or None.

    Probed at the pasts of ``_PAST_PROBES``, one token after each length ``probe_lengths``
    names and one less, and a padded batch after a past of 5 (Hugging Face's ``cache_position``
    ignores padding). Shapes the original refuses, or where its tables could not multiply the
    new tokens' query, are skipped: it runs no such step either.
    """
    rows = len(caches[0])
    lengths = probe_lengths(tables, cache_length, model=model, inputs=inputs)
    if isinstance(lengths, str):
        return f"cos/sin: {lengths}"
    shapes = list(_PAST_PROBES) + sorted({(1, past) for length in lengths for past in (length - 1, length)})
    probes = [(np.ones((1, new)), past_length) for new, past_length in shapes if new + past_length <= rows]
    if PADDED_MASK.shape[1] + 5 <= rows:
        probes.append((PADDED_MASK, 5))
    run = evaluator(model, tables)
    counted = False
    for mask, past_length in probes:
        batch, new = mask.shape
        try:
            found = run(token_feeds(inputs, mask) | _past_feeds(past, past_length))
        except RuntimeRefusedError:
            continue
        for probe, cache in zip(found, caches):
            halves = _halves(probe, cache.shape[-1], interleaved)
            if halves is None or halves.shape[0] not in (1, batch) or halves.shape[1] != new:
                if probe.ndim >= 2 and probe.shape[-2] not in (1, new):
                    break  # cos/sin cannot multiply the new tokens' query: the original runs no such step
                return f"cos/sin after a past of {past_length} have an unexpected shape"
            wanted = cache[past_length + np.arange(new)]
            if not np.allclose(np.broadcast_to(halves, (batch, new, halves.shape[-1])), wanted, atol=1e-6):
                value, axis = past
                return (
                    f"rotary positions are not counted on from the length of '{value.name}' (its dim {axis}) "
                    f"after a past of {past_length}"
                )
        else:
            counted = True
    if not counted:
        return "cos/sin could not be evaluated after any past: positions counted on from a cache are unproved"
    return None


def _cache_offset(graph: ir.Graph, past: ir.Value, axis: int) -> ir.Value:
    """``[P]`` (int64): the cache's length on ``axis``, computed at the start of ``graph``."""
    nodes = shape_dims(graph, past, axis, axis + 1)
    graph.insert_before(next(iter(graph)), nodes)
    offset = nodes[-1].outputs[0]
    offset.dtype, offset.shape = ir.DataType.INT64, ir.Shape([1])
    return offset


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


def _halves(table: np.ndarray, half: int, interleaved: int = 0) -> np.ndarray | None:
    """``[B, S, half]`` from a ``[B, 1, S, 2*half]`` (or ``[B, S, 2*half]``) table whose halves are equal, or
    (``interleaved`` the axis of 1: 2 for GPT-J's ``[B, S, 1, 2*half]``, multiplying ``[B, S, N, 2*half]``
    heads, 1 for Cohere's ``[B, 1, S, 2*half]``) from a table whose columns come in equal pairs
    (``repeat_interleave``), or (``_HALF_WIDTH``) a ``[B, 1, S, half]`` (or ``[B, S, half]``) table as it is, or
    (``_SEQUENCE_FIRST``) from a ``[B, S, 1, 2*half]`` table, multiplying ``[B, S, N, 2*half]`` heads, whose halves are
    equal.

    A 3-D table must be ``[1, S, ·]``: every rule's ``x`` is 4-D ``[B, N, S, d]``, which a ``[B, S, ·]`` table
    multiplies as ``[1, B, S, ·]``, batch row ``b`` on head ``b`` (a review's: the tables of each batch row
    matched the caches' rows, and the fused op rotated each row by its own positions, 3.9 apart).
    """
    if table.ndim == 3 and table.shape[0] != 1:
        return None
    if interleaved == _SEQUENCE_FIRST:  # [B, S, 1, d] against [B, S, N, d]: one row per token, over every head
        if table.ndim != 4 or table.shape[2] != 1:
            return None
        table, interleaved = table[:, :, 0], 0
    if interleaved == _HALF_WIDTH:
        if table.ndim == 4 and table.shape[1] == 1:
            table = table[:, 0]
        return table if table.ndim == 3 and table.shape[-1] == half else None
    if interleaved:
        if table.ndim != 4 or table.shape[interleaved] != 1 or table.shape[-1] != 2 * half:
            return None
        table = table[:, 0] if interleaved == 1 else table[:, :, 0]
        return table[..., 0::2] if np.array_equal(table[..., 0::2], table[..., 1::2]) else None
    if table.ndim == 4 and table.shape[1] == 1:
        table = table[:, 0]
    if table.ndim != 3 or table.shape[-1] != 2 * half:
        return None
    if not np.array_equal(table[..., :half], table[..., half:]):
        return None
    return table[..., :half]

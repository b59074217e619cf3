"""Attention fusion, stage 3: decoder attention over a key/value cache into ``com.microsoft.GroupQueryAttention``.

A decoder exported with a cache (the legacy exporter's and Optimum's
``past_key_values.{i}.key`` → ``present.{i}.key``, the dynamo exporter's; ONNX Runtime
GenAI's model builder writes GroupQueryAttention itself, so nothing is left here) appends each step's keys and
values to the cache with ``Concat(past, new, axis=2)``, returns the result as the
present, and attends over it; grouped-query models repeat each cached head for the
query heads that share it (``Reshape(Expand(Unsqueeze(present, 2)))``). After
``fuse-attention`` that is::

    present_k = Concat(past_k, Transpose(Reshape(k, [0, 0, kv, d])), axis=2)   (same for v)
    out = MultiHeadAttention(q, Repeat(present_k), Repeat(present_v), attention_bias)

(Optimum's GPT-2 export reads the key as ``Transpose(Mul(Transpose(present_k), s))``, the
legacy exporter's SDPA scaling Q and K^T each by a run-time ``s = sqrt(1/sqrt(d))``; since
``Q (s K)^T = (s Q) K^T``, that one-element ``s`` moves onto the query), which becomes one
kernel that appends to the cache, repeats no head and returns the present itself::

    out, present_k, present_v = GroupQueryAttention(q, k, v, past_k, past_v, seqlens_k,
                                                    total_sequence_length, attention_bias,
                                                    query_seqlens, causal=1)

The graph's inputs and outputs keep their names and shapes: a generation loop feeds the
presents back as pasts exactly as before.

Soft-capped attention (Gemma 2: ``softmax(c * tanh(scale * Q K^T / c) + mask)``) has no
MultiHeadAttention, so fuse-attention leaves it; this pass stages it as one (fuse-attention's
match, ``attention.stage_soft_capped``: the cap must be ``c * tanh(f * s)``, ``c`` a nonzero
constant, ahead of every mask, with nothing scaling it after; the op's scale is then
``c * f``, which must be positive: a negative ``c`` on both sides, ``-c * tanh(s / -c)``, is the
cap ``|c|`` since ``tanh`` is odd), applies the same proofs and refusals,
and gives the op ``softcap=|c|``. ONNX Runtime's kernel scales, caps, then adds
``attention_bias`` (checked against numpy on 1.32's CPU kernel), the order of Hugging
Face's eager Gemma 2. A staging that is refused is taken back: the graph is left as it was.

Exactness, and what is proven where:

- The op is told every row holds ``T = past + new`` tokens (``seqlens_k = T - 1``,
  ``query_seqlens = S`` for every row), so its present is the same concatenation and
  query ``s`` sits at absolute position ``P + s``. Padding stays where the exporter put
  it: in the graph's own ``attention_bias``, which the op adds to the scores as before
  (the cache is not compacted; a left-padded batch works as it did).
- ``causal=1`` skips keys after each query's position. That is exact only if the bias
  already masks them, so the bias is evaluated on ONNX Runtime, on one session: padded
  prefills, decode steps and chunks over a past on up to three rows; every total length
  up to 8 as a prefill, a decode step and a two-token chunk; and at each length
  ``_probe.probe_lengths`` names up to ``--max-sequence`` (and one less) a prefill and a
  two-token chunk, among them both sides of each length where a one-element comparison the bias
  computes switches (bisected over prefills and over chunks: ``2 * T > 279``). Every key after
  the query's position must be at most -1e4 (``exp`` of that is 0 in float32), or the original
  must refuse that shape: refusals are read so only past the longest probe that ran (a fixed
  mask buffer); a probe refused at a shorter length, or every probe refused, proves nothing
  and the attention is refused. A sliding window or
  any other extra masking is kept (the bias is still added); a bias with a prefix or
  without a causal part is refused. (ORT's CPU kernel refuses ``causal=0`` with several
  new tokens per row and a past, so a bidirectional decoder keeps MultiHeadAttention.)
  The probes' masks hold 0 (pad) and 1 (attend), the attention mask's contract in every
  exporter; a model that gives other values a meaning is outside it. Where the cache's
  pasts and the mask the bias reads fix sizes (``--static-shapes``: ``attention_mask [1, 256]``,
  the pasts ``[1, kv, 128, d]``), ONNX Runtime refuses every other size before running a node, so
  the probes are moved to those sizes, each with a mask unpadded, padded at both ends, at the
  left and at the right (``_pinned_sizes``); inputs that disagree on a size are refused. Other
  inputs' static dims (``input_ids``, known by name only) fix nothing.
- The repeated heads: the key read by the attention is ``Reshape(Expand(Unsqueeze(C, 2),
  [B, kv, r, T, d]), [B, kv·r, T, d])`` (or ``[B, -1, T, d]``: ``repeat_interleave(r, dim=1)``, as
  both exporters write it) over the cache ``C``, which is query head ``h``
  reading cache head ``h // r``, GroupQueryAttention's grouping. The Expand and Reshape
  targets are shape arithmetic; they are evaluated on the same probes (prefills only up
  to 256 tokens: those run the whole network) and must be those there. A batched
  ``Q @ K^T`` (the dynamo export's bmm once ``--static-shapes`` folds its views) reads the
  repetition as ``Transpose(Reshape(Transpose(Reshape(E, [B*N, T, d]), (0, 2, 1)), [B, N, d, T]),
  (0, 1, 3, 2))``, which is ``Reshape(E, [B, N, T, d])`` when those two targets are those at every probe.
- The bias, the query and the new keys must not be computed from the cache's contents;
  the present's shape, where the bias reads it (a causal table sliced to the keys'
  length), is recomputed from the past and the query.
- ONNX Runtime 1.32 or newer (GroupQueryAttention's ``query_seqlens``); older ones decline.

Rows differ only where nothing is defined: a query whose every key is masked (left
padding under the causal mask) gets uniform weights over all keys from the exporter's
bias and over the keys up to itself from the kernel. Verification does not compare
padded positions of the cache, nor of the logits at padded tokens (over a past, the
mask's last positions: a right-padded query whose whole sliding window is padding sees
no key either, 0.38 apart in a review's 6-token window, and is not compared).

Rotary embeddings stay outside the op (``fuse-rotary-embedding``'s RotaryEmbedding):
GroupQueryAttention's own rotary reads only the first position of each row on a first
prompt, which is wrong for a left-padded batch.

Refuses (with the reason, counted per MultiHeadAttention or soft-capped attention) when: the op has a projection
bias, key padding mask or its own past; key or value is not a cache ``Concat`` on axis 2
whose first input is a 4-D graph input (possibly repeated per query head, the key possibly
scaled as above); the value is read scaled; key and value
differ in repetition or head count; the heads do not divide; the cache's head count or
head size is not static, or the head size is not a multiple of 8 (the kernel's
requirement); there is no attention bias, or it is not provably causal at
every probed length; the inputs' static dims disagree on a size; or the probes cannot make
up an input the bias reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_op
from optimizer.errors import RuntimeRefusedError
from optimizer.runtime import evaluator, import_onnxruntime
from passes._pass import checked_length
from passes._utils import add_initializer, constant_array, replace_value, shape_dims
from passes.fusion._base import FusionPass
from passes.fusion._layout import IDENTITY, compose, head_split, perm, producer
from passes.fusion._probe import (
    DEFAULT_MAX_SEQUENCE,
    graph_inputs_of,
    is_mask,
    probe_lengths,
    values_only_from,
)
from passes.fusion.attention import stage_soft_capped, take_back_staged

# Probe shapes (batch, new tokens, past tokens): a padded prefill, a decode step and a
# chunk of several new tokens over a past, on rows padded at opposite ends; three rows.
_PROBES = ((2, 7, 0), (2, 1, 6), (2, 3, 5), (1, 13, 0), (3, 4, 3))
# Every total length up to this is probed as a prefill, a decode step and a chunk.
_SHORT = 8
# Prefills longer than this run the whole network when the repetition is probed: only the
# decode step and the chunk are probed at longer lengths there.
_LONGEST_NETWORK_PREFILL = 256
# The most bias elements the long probes of one bias may evaluate (as pack-qkv's).
_MAX_PROBED_ELEMENTS = 1 << 27
# A bias entry at or below this is a masked key: exp(-1e4) underflows to 0 in float32.
_MASKED = -1e4


@dataclass(frozen=True)
class _Cache:
    """One side (key or value) of a cached attention: ``present = Concat(past, new, axis=2)``, read repeated."""

    concat: ir.Node
    past: ir.Value  # a graph input [B, kv, P, d]
    new: ir.Value  # [B, kv, S, d]
    read: ir.Value  # what the attention reads: the present, or its per-query-head repetition
    expand: ir.Node | None  # the repetition's Expand and Reshape, when there is one
    reshape: ir.Node | None
    scale: ir.Value | None = None  # a one-element factor the attention reads the cache multiplied by
    # The Reshape that splits a batched [B*N, d, T] view back into [B, N, d, T] (``_batched_view``), when the
    # repetition is read through one; ``reshape`` is then the view's [B*N, T, d] merge.
    split: ir.Node | None = None

    @property
    def present(self) -> ir.Value:
        return self.concat.outputs[0]


@dataclass(frozen=True)
class _Candidate:
    node: ir.Node
    key: _Cache
    value: _Cache
    num_heads: int
    kv_heads: int
    head_size: int
    bias: ir.Value
    # The bias before the Expands that only broadcast it (fuse-attention adds one per layer,
    # whose target reads that layer's key): shared by every layer, probed once.
    source: ir.Value
    softcap: float = 0.0  # a staged soft-capped attention's c (0: none)


def _unexpanded(bias: ir.Value) -> ir.Value:
    while (expand := producer(bias, "Expand")) is not None:
        bias = expand.inputs[0]
    return bias


def _scaled(read: ir.Value) -> tuple[ir.Value, ir.Value | None]:
    """``(x, s)`` when ``read`` is ``Transpose(Mul(Transpose(x, p), s), q)`` with ``q`` undoing ``p`` and ``s``
    one element; else ``(read, None)``.

    The legacy exporter's scaled_dot_product_attention (Optimum's GPT-2 export) multiplies both
    the query and the transposed key by ``sqrt(1 / sqrt(d))``, computed at run time from the
    query's shape: fuse-attention keeps that factor on its key, between two transposes.
    """
    outer = producer(read, "Transpose")
    mul = producer(outer.inputs[0], "Mul") if outer is not None else None
    if mul is None or len(mul.inputs) != 2:
        return read, None
    for data, factor in ((0, 1), (1, 0)):
        inner = producer(mul.inputs[data], "Transpose")
        scale = mul.inputs[factor]
        if inner is None or scale is None or scale.shape is None or scale.dtype not in (None, inner.inputs[0].dtype):
            continue
        if not all(isinstance(dim, int) for dim in scale.shape) or np.prod(list(scale.shape), dtype=int) != 1:
            continue
        first, second = perm(inner), perm(outer)
        if first is not None and second is not None and len(first) == 4 and compose(first, second) == IDENTITY:
            return inner.inputs[0], scale
    return read, None


def _batched_view(read: ir.Value) -> tuple[ir.Node, ir.Node] | None:
    """``(merge, split)`` when ``read`` is ``Transpose(split(Transpose(merge(x), (0, 2, 1))), (0, 1, 3, 2))``.

    A batched ``Q @ K^T`` (the dynamo export's bmm, once ``--static-shapes`` has folded its
    views) merges the repeated keys into ``[B*N, T, d]``, transposes that to ``[B*N, d, T]``
    and splits it into ``[B, N, d, T]``; fuse-attention reads the key as that transposed
    back. When ``merge``'s target is ``[B*N, T, d]`` and ``split``'s ``[B, N, d, T]`` (proven on
    the probes, ``_repeats``), that is ``Reshape(x, [B, N, T, d])``: the row ``b*N + n`` the merge
    makes is the split's ``(b, n)``, and the two transposes of the last two axes cancel.
    """
    outer = producer(read, "Transpose")
    split = producer(outer.inputs[0], "Reshape") if outer is not None else None
    inner = producer(split.inputs[0], "Transpose") if split is not None else None
    merge = producer(inner.inputs[0], "Reshape") if inner is not None else None
    if merge is None or perm(outer) != (0, 1, 3, 2) or perm(inner) != (0, 2, 1):
        return None
    return merge, split


def _cache(read: ir.Value) -> _Cache | str:
    """The cache a MultiHeadAttention key/value reads, through an optional head repetition (possibly
    viewed batched, ``_batched_view``) and a one-element scale, or why not."""
    expand = reshape = split = None
    scaled, scale = _scaled(read)
    concat = producer(scaled, "Concat")
    if concat is None and (view := _batched_view(scaled)) is not None:
        reshape, split = view
    elif concat is None:
        reshape = producer(scaled, "Reshape")
    if reshape is not None:
        expand = producer(reshape.inputs[0], "Expand")
        unsqueeze = producer(expand.inputs[0], "Unsqueeze") if expand is not None else None
        axes = constant_array(unsqueeze.inputs[1]) if unsqueeze is not None and len(unsqueeze.inputs) > 1 else None
        # Axis 2 of the 5-D result, however it is written (-3 counts from the end).
        if unsqueeze is None or axes is None or [int(a) % 5 for a in axes.reshape(-1)] != [2]:
            return "its key/value is neither a cache Concat nor one repeated per query head"
        concat = producer(unsqueeze.inputs[0], "Concat")
    if concat is None or len(concat.inputs) != 2 or concat.attributes.get_int("axis", 0) not in (2, -2):
        return "its key/value is not a Concat of a past and new tokens on the sequence axis"
    past, new = concat.inputs
    if not past.is_graph_input() or past.shape is None or past.shape.rank() != 4:
        return "the cache's past is not a 4-D graph input"
    return _Cache(concat, past, new, read, expand, reshape, scale, split)


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) else None


@functools.cache
def _kernel_takes_query_lengths() -> bool:
    """Whether the installed ONNX Runtime's GroupQueryAttention reads ``query_seqlens`` (input 16), which
    makes several new tokens over a past exact at any batch; older runtimes refuse that or ignore it."""
    schemas = import_onnxruntime().capi.onnxruntime_pybind11_state.get_all_operator_schema()
    for schema in schemas:
        if schema.name == "GroupQueryAttention" and schema.domain == MS_DOMAIN:
            return any(formal.name == "query_seqlens" for formal in schema.inputs)
    return False


def _cache_values(side: _Cache) -> list[ir.Value]:
    """The present and every value of its repetition up to what the attention reads."""
    values = [side.present, side.read]
    if side.expand is not None:
        values += [side.expand.inputs[0], side.expand.outputs[0]]
    return values


def _reads_cache(values: list[ir.Value], cache: list[ir.Value]) -> str | None:
    """``"values"`` if ``values`` are computed from the cache's contents, ``"shape"`` if only from
    ``Shape`` of it (which the rewrite recomputes), else None."""
    wanted = {id(v) for v in cache}
    found, seen, stack = None, set(), [v for v in values if v is not None]
    while stack:
        node = stack.pop().producer()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for value in node.inputs:
            if value is None:
                continue
            if id(value) in wanted:
                if not is_onnx_op(node, "Shape"):
                    return "values"
                found = "shape"
            else:
                stack.append(value)
    return found


def _candidate(node: ir.Node, softcap: float = 0.0) -> _Candidate | str:
    inputs = list(node.inputs) + [None] * (8 - len(node.inputs))
    if any(inputs[i] is not None for i in (3, 4, 6, 7)):
        return "it has a projection bias, key padding mask or past state of its own"
    if node.attributes.get_int("unidirectional", 0):
        return "it is unidirectional"
    key, value = _cache(inputs[1]), _cache(inputs[2])
    if isinstance(key, str) or isinstance(value, str):
        return key if isinstance(key, str) else value
    if (key.expand is None) != (value.expand is None):
        return "only one of key and value is repeated per query head"
    if value.scale is not None:
        return "its value cache is read scaled"
    kv_heads, head_size = _static(key.past.shape[1]), _static(key.past.shape[3])
    if kv_heads is None or head_size is None:
        return "the cache's head count or head size is not static"
    if (_static(value.past.shape[1]), _static(value.past.shape[3])) != (kv_heads, head_size):
        return "key and value caches differ in heads or head size"
    if head_size % 8:
        # ONNX Runtime's kernel refuses to run it ("head_size must be a multiple of 8"), at every call.
        return f"its head size {head_size} is not a multiple of 8, which GroupQueryAttention requires"
    num_heads = node.attributes.get_int("num_heads", 0)
    if num_heads <= 0:
        return "it has no head count"
    if num_heads % kv_heads or (key.expand is None and num_heads != kv_heads):
        return f"{num_heads} query heads do not group over {kv_heads} cached heads"
    bias = inputs[5]
    if bias is None:
        return "it has no attention bias (no causal mask to prove)"
    cache = _cache_values(key) + _cache_values(value)
    if _reads_cache([inputs[0], key.new, value.new, key.scale], cache) is not None:
        return "its query, new keys/values or key scale are computed from its own cache"
    if _reads_cache([bias], cache) == "values":
        return "its bias is computed from the cache's contents"
    return _Candidate(node, key, value, num_heads, kv_heads, head_size, bias, _unexpanded(bias), softcap)


def _feeds(inputs: Sequence[ir.Value], batch: int, new: int, past: int, mask: np.ndarray) -> dict | str:
    """Probe values for the graph inputs ``inputs``: the mask, cumulative positions, token ids of one, zero caches."""
    feeds = {}
    for value in inputs:
        shape = value.shape
        if shape is None:
            return f"it reads {value.name}, whose shape is unknown"
        dtype = value.dtype.numpy()
        if shape.rank() == 4 and is_mask(value):
            # A 4-D mask may hold any pattern a caller feeds (a prefix attending both ways, sequences packed in a
            # row), where GroupQueryAttention reads only each row's length and its own causal order. It was taken for
            # a cache: "whose head count or head size is not static".
            return f"it reads {value.name}, a 4-D mask, where GroupQueryAttention reads only each row's length"
        if shape.rank() == 4:
            dims = [_static(d) for d in shape]
            if dims[1] is None or dims[3] is None:
                return f"it reads {value.name}, whose head count or head size is not static"
            feeds[value.name] = np.zeros((batch, dims[1], past, dims[3]), dtype)
        elif shape.rank() == 2 and is_mask(value):
            feeds[value.name] = mask.astype(dtype)
        elif shape.rank() == 2 and "position" in value.name.lower():
            positions = np.cumsum(mask, axis=1) - 1
            feeds[value.name] = np.where(mask == 0, 1, positions)[:, -new:].astype(dtype)
        elif shape.rank() == 2 and value.dtype in (ir.DataType.INT64, ir.DataType.INT32):
            feeds[value.name] = np.ones((batch, new), dtype)
        else:
            return f"it reads {value.name}, which the probes cannot make up"
    return feeds


def _switch_feeds(values: list[ir.Value], prefill_limit: int) -> list[Callable[[int], dict]]:
    """Feeds at a total length, for ``probe_lengths`` to find where a comparison the values compute switches:
    one row as a prefill (up to ``prefill_limit`` tokens) and as a two-token chunk over a past (the
    length may be read off the mask, the past or the new tokens); none when the probes cannot make up
    the inputs the values read."""
    inputs = graph_inputs_of(values)
    if inputs is None or isinstance(_feeds(inputs, 1, 1, 0, np.ones((1, 1), np.int64)), str):
        return []

    def at(new_of: Callable[[int], int], limit: int) -> Callable[[int], dict]:
        def feeds(total: int) -> dict:
            new = new_of(total)
            made = _feeds(inputs, 1, new, total - new, np.ones((1, total), np.int64)) if total <= limit else None
            if not isinstance(made, dict) or new < 1:
                raise RuntimeRefusedError("probe it", f"no probe of {new} new tokens in {total}")
            return made

        return feeds

    return [at(lambda total: total, prefill_limit), at(lambda total: min(2, total), 1 << 62)]


def _unexplained_refusal(ran: list[int], refused: list[tuple[int, int]]) -> str | None:
    """Why the probes ONNX Runtime refused cannot be read as sizes the graph itself refuses; None when they can.

    ``ran`` holds the total lengths of the probes that ran, ``refused`` the (new, past) of
    those refused. The probes make their feeds up by role (``_feeds``), so a refusal may be
    a wrong guess (ids of another length, a 4-D input that is no cache) rather than the
    graph's limit, and a fact "proved" on no probe, or beside sizes never run, is no proof.
    A graph that refuses long sequences (a fixed mask or position buffer) runs every
    shorter probe: only refusals longer than every probe that ran are read as its limit.
    """
    if refused and not ran:
        return "ONNX Runtime refused every probe (the probes cannot make up inputs this graph accepts)"
    longest = max(ran, default=0)
    for new, past in refused:
        if new + past <= longest:
            return (
                f"ONNX Runtime refused its probe of {new} new tokens after {past} but ran longer ones "
                "(the probes cannot tell which sizes this graph accepts)"
            )
    return None


@dataclass(frozen=True)
class _Pinned:
    """The batch, new-token, past and total sizes the graph's static input dims fix (None: free)."""

    batch: int | None = None
    new: int | None = None
    past: int | None = None
    total: int | None = None


def _pinned_sizes(model: ir.Model, candidates: list[_Candidate]) -> _Pinned | str:
    """What the static dims of the graph's inputs fix of every call's sizes, or why no call fits them.

    ``--static-shapes`` (or an export with fixed sizes) declares ``input_ids: [1, 128]``,
    ``attention_mask: [1, 256]``, ``past_key_values.*: [1, kv, 128, d]``: ONNX Runtime refuses
    any other feed before running a node, so the original and the rewrite both accept only
    those sizes, and a fact probed there holds wherever either runs (the shape arithmetic is
    folded into constants that hold at those sizes only, which probes at other lengths
    would contradict). Only inputs whose role the graph's structure proves fix a size: a
    candidate's past is ``[B, kv, P, d]`` and the one mask a candidate's bias reads
    ``[B, P + S]``. Token ids or positions are known by name only, which proves nothing (an
    encoder's ``input_ids``, or ids beside the real token input): their static dims fix no
    size, and a probe they refuse is read by ``_unexplained_refusal``.
    """
    pasts = {id(side.past) for c in candidates for side in (c.key, c.value)}
    masks = set()
    for candidate in candidates:
        read = [v for v in graph_inputs_of([candidate.source]) or () if is_mask(v)]
        masks |= {id(read[0])} if len(read) == 1 else set()
    found: dict[str, set[int]] = {"batch": set(), "new": set(), "past": set(), "total": set()}
    for value in model.graph.inputs:
        if value.shape is None:
            continue
        if id(value) in pasts:
            roles = {0: "batch", 2: "past"}
        elif id(value) in masks and value.shape.rank() == 2:
            roles = {0: "batch", 1: "total"}
        else:
            continue
        for axis, role in roles.items():
            if isinstance(value.shape[axis], int):
                found[role].add(value.shape[axis])
    if any(len(sizes) > 1 for sizes in found.values()):
        return "its inputs' static dims disagree on the batch or the sequence lengths"
    sizes = {role: next(iter(found[role]), None) for role in found}
    new, past, total = sizes["new"], sizes["past"], sizes["total"]
    if total is not None and (new, past).count(None) == 1:
        new, past = (total - past, past) if new is None else (new, total - new)
    if (new is not None and new < 1) or (past is not None and past < 0):
        return "its inputs' static dims leave no sequence length a call can have"
    if None not in (new, past, total) and new + past != total:
        return "its inputs' static dims disagree on the batch or the sequence lengths"
    return _Pinned(sizes["batch"], new, past, total)


def _fitted(probes: list[tuple[int, int, int, np.ndarray]], pinned: _Pinned) -> list[tuple[int, int, int, np.ndarray]]:
    """``probes`` moved to the sizes the graph's static dims fix, each size with every probe mask it can have."""
    if pinned == _Pinned():
        return probes
    sizes: dict[tuple[int, int, int], None] = {}
    for batch, new, past, _ in probes:
        batch = pinned.batch if pinned.batch is not None else batch
        new = pinned.new if pinned.new is not None else new
        past = pinned.past if pinned.past is not None else past
        if pinned.total is not None and pinned.new is None:  # neither the past nor the new tokens fixed
            new = min(new, pinned.total)
            past = pinned.total - new
        if new >= 1 and past >= 0:
            sizes[(batch, new, past)] = None
    return [(b, s, p, mask) for b, s, p in sizes for mask in _probe_masks(b, s + p)]


def _probe_masks(batch: int, total: int) -> list[np.ndarray]:
    """No padding, ``_probe_mask``'s, and one row padded on the left only and on the right only."""
    masks = [np.ones((batch, total), np.int64), _probe_mask(batch, total)]
    if total >= 4:
        for row in (_probe_mask(2, total)[:1], _probe_mask(2, total)[1:]):
            masks.append(np.repeat(row, batch, axis=0))
    return masks


def _probe_mask(batch: int, total: int) -> np.ndarray:
    """Row 0 left-padded, the last row right-padded (a quarter each), unless the rows are too short to pad."""
    mask = np.ones((batch, total), np.int64)
    if total >= 4:
        mask[0, : total // 4] = 0
        mask[-1, total - total // 4 :] = 0
    return mask


def _causal_at(bias: np.ndarray, new: int, past: int) -> bool:
    """True if the ``[B|1, N|1, S|1, T]`` bias masks every key after its query's position."""
    total = past + new
    if bias.ndim != 4 or bias.shape[2] not in (1, new) or bias.shape[3] != total:
        return False
    if bias.size == 0:
        return True  # no score to leave unmasked
    later = np.arange(total)[None, :] > (past + np.arange(new))[:, None]  # [S, T]
    # The largest score over batch and heads first ([S|1, T]): indexing the broadcast [B, N, S, T] copied it all.
    rows = np.broadcast_to(bias.max(axis=(0, 1)), (new, total))
    return bool(np.where(later, rows, -np.inf).max(initial=-np.inf) <= _MASKED)


def _repeats(candidate: _Candidate, targets: list[np.ndarray], batch: int, total: int) -> bool:
    """True if one side's repetition targets are ``[B, kv, r, T, d]`` (the Expand) and ``[B, kv*r, T, d]`` (the
    Reshape), or, read through a batched view, ``[B*kv*r, T, d]`` and ``[B, kv*r, d, T]`` (its merge and split).

    Broadcasting lets the Expand target say 1 where the cache has the size; the Reshape
    may copy the batch (0) or infer one dim (-1), but not copy axis 2 (that is ``r``). The
    view's targets may infer one dim, but copy none (a copied axis is not the one they name).
    """
    group = candidate.num_heads // candidate.kv_heads
    kv, d, heads = candidate.kv_heads, candidate.head_size, candidate.num_heads
    e, *views = (np.asarray(t).reshape(-1).tolist() for t in targets)
    if (
        len(e) != 5
        or e[2] != group
        or any(got not in (want, 1) for got, want in zip(e, (batch, kv, group, total, d), strict=True))
    ):
        return False
    if len(views) == 2:
        split = views[1]
        inferred = (batch * heads, total, d), (batch, heads, d, total)
        return (
            all(
                len(got) == len(want)
                and got.count(-1) <= 1
                and all(g in (w, -1) for g, w in zip(got, want, strict=True))
                for got, want in zip(views, inferred, strict=True)
            )
            and split[1] == heads
        )
    (r,) = views
    # The heads may be the one inferred dim (-1): torch's repeat_interleave(r, dim=1) is exported, by both
    # exporters, as this Expand and a Reshape to [B, -1, T, d], whose -1 is then kv * r, the heads.
    return not (
        len(r) != 4
        or r.count(-1) > 1
        or r[1] not in (heads, -1)
        or r[0] not in (batch, 0, -1)
        or r[2] not in (total, -1)
        or r[3] not in (d, -1)
    )


class GroupQueryAttentionFusion(FusionPass):
    """Rewrite MultiHeadAttention (or soft-capped attention) over a key/value cache into
    ``com.microsoft.GroupQueryAttention``.

    See the module docstring for the forms, the proofs and the refusals; each
    MultiHeadAttention is counted as fused or refused with its reason. ``max_sequence``
    is the longest sequence the causal mask is proven at (``--max-sequence``).
    """

    fused_ops = ((MS_DOMAIN, "GroupQueryAttention"),)

    def __init__(self, target: str = "cpu", max_sequence: int = DEFAULT_MAX_SEQUENCE) -> None:
        super().__init__(target)
        self.max_sequence = checked_length(max_sequence)

    def fuse(self, model: ir.Model) -> int:
        if not _kernel_takes_query_lengths():
            self.decline(
                "this ONNX Runtime's GroupQueryAttention has no query_seqlens input (ONNX Runtime 1.32 or newer has)"
            )
            return 0
        imported = MS_DOMAIN in model.opset_imports
        model.opset_imports.setdefault(MS_DOMAIN, 1)  # the staged MultiHeadAttention's
        staged = {id(s.node): s for s in stage_soft_capped(model)}
        try:
            count = self._fuse(model, staged)
        finally:
            take_back_staged(model, list(staged.values()))
            if not imported and not any(n.domain == MS_DOMAIN for n in model.graph.all_nodes()):
                del model.opset_imports[MS_DOMAIN]
        return count

    def _fuse(self, model: ir.Model, staged: dict) -> int:
        candidates = []
        for node in [n for n in model.graph if n.op_type == "MultiHeadAttention" and n.domain == MS_DOMAIN]:
            cap = staged.get(id(node))
            kind = "soft-capped attention" if cap is not None else "MultiHeadAttention"
            found = _candidate(node, cap.softcap if cap is not None else 0.0)
            if isinstance(found, str):
                self.refuse(kind, found)
            else:
                candidates.append(found)
        if not candidates:
            return 0
        proven = self._prove(model, candidates)
        lengths: dict = {}
        count = 0
        for candidate in candidates:
            cap = staged.get(id(candidate.node))
            kind = "soft-capped attention" if cap is not None else "MultiHeadAttention"
            reason = proven.get(id(candidate.node))
            if reason is not None:
                self.refuse(kind, reason)
                continue
            if cap is not None:
                cap.connect()
            self._rewrite(model, candidate, count, lengths)
            self.done(kind)
            count += 1
        if count:
            model.graph.sort()
        return count

    def _prove(self, model: ir.Model, candidates: list[_Candidate]) -> dict[int, str]:
        """Why each candidate (by node id) cannot be fused; absent when its bias and shapes hold at every probe.

        Also fills ``self._full``: the ids of bias sources that had the full ``[B|1, 1, S, T]``
        shape at every probe, which the op can read without the per-layer Expand.
        """
        reasons: dict[int, str] = {}
        bias_reason: dict[int, str] = {}
        self._full: set[int] = set()
        pinned = _pinned_sizes(model, candidates)
        if isinstance(pinned, str):
            return {id(c.node): pinned for c in candidates}
        self._pinned = pinned
        for key, bias in {id(c.source): c.source for c in candidates}.items():
            found = self._probe_causal(model, bias)
            if isinstance(found, str):
                bias_reason[key] = found
            elif found:
                self._full.add(key)
        for candidate in candidates:
            if id(candidate.source) in bias_reason:
                reasons[id(candidate.node)] = bias_reason[id(candidate.source)]
        remaining = [c for c in candidates if id(c.node) not in reasons]
        if remaining:
            self._prove_shapes(model, remaining, reasons)
        return reasons

    def _probes(
        self, model: ir.Model, values: list[ir.Value], prefill_limit: int
    ) -> list[tuple[int, int, int, np.ndarray]] | str:
        """(batch, new, past, mask) probes for facts about ``values``, or why they cannot be probed.

        ``_PROBES``; every total up to ``_SHORT`` as a prefill, a decode step and a two-token
        chunk; and at each length ``probe_lengths`` names (and one less: a comparison can
        change at either side of a constant), a prefill (up to ``prefill_limit``) and a chunk.
        Those lengths include both sides of each switch of a one-element comparison the values
        compute (``2 * T > 279``), bisected over prefills and over chunks (``_switch_feeds``): a
        bias causal except from 140 to 199 tokens was fused and verified (a review).
        """
        probes = [(b, s, p, _probe_mask(b, s + p)) for b, s, p in _PROBES]
        lengths = set(range(1, _SHORT + 1))
        found = probe_lengths(values, self.max_sequence, model=model, feeds=_switch_feeds(values, prefill_limit))
        if isinstance(found, str):
            return found
        for n in found:
            lengths |= {n - 1, n}
        if sum(n * n for n in lengths if n <= prefill_limit) > _MAX_PROBED_ELEMENTS:
            return f"it cannot be probed up to --max-sequence {self.max_sequence}"
        for n in sorted(lengths):
            ones = np.ones((1, n), np.int64)
            if n <= prefill_limit:
                probes.append((1, n, 0, ones))
            probes += [(1, 1, n - 1, ones)] if n <= _SHORT else []
            probes += [(1, 2, n - 2, ones)] if n >= 2 else []
        return _fitted(probes, self._pinned)

    def _probe_causal(self, model: ir.Model, bias: ir.Value) -> bool | str:
        """Why ``bias`` is not provably causal, or whether it had the full ``[B|1, 1, S, T]`` shape at every probe."""
        inputs = graph_inputs_of([bias])
        masks = [v for v in inputs or () if is_mask(v)]
        if inputs is None or len(masks) != 1 or not values_only_from(bias, masks[0]):
            return "its bias reads no single attention mask, or reads other inputs' values"
        probes = self._probes(model, [bias], self.max_sequence)
        if isinstance(probes, str):
            return f"its causal mask: {probes}"
        try:
            run = evaluator(model, [bias])
        except RuntimeRefusedError as error:
            return f"its bias cannot be evaluated ({error.reason})"
        full, ran, refused = True, [], []
        for batch, new, past, mask in probes:
            feeds = _feeds(inputs, batch, new, past, mask)
            if isinstance(feeds, str):
                return feeds
            try:
                (value,) = run(feeds)
            except RuntimeRefusedError:
                refused.append((new, past))  # the original refuses this shape, if _unexplained_refusal allows
                continue
            ran.append(new + past)
            if not _causal_at(value, new, past):
                return f"its bias does not mask every later key at {new} new tokens after {past} (not causal)"
            full = full and value.shape[1:] == (1, new, past + new) and value.shape[0] in (1, batch)
        unexplained = _unexplained_refusal(ran, refused)
        return f"its causal mask: {unexplained}" if unexplained else full

    def _prove_shapes(self, model: ir.Model, candidates: list[_Candidate], reasons: dict[int, str]) -> None:
        """Evaluate each repetition's Expand and Reshape targets on the probes (all layers in one session)."""
        repeated = [c for c in candidates if c.key.expand is not None]
        if not repeated:
            return
        sides = [side for c in repeated for side in (c.key, c.value)]
        nodes = [[n for n in (side.expand, side.reshape, side.split) if n is not None] for side in sides]
        starts = np.cumsum([0] + [len(n) for n in nodes]).tolist()
        targets = [node.inputs[1] for side in nodes for node in side]
        inputs = graph_inputs_of(targets)
        probes = self._probes(model, targets, _LONGEST_NETWORK_PREFILL)
        try:
            run = evaluator(model, targets) if inputs is not None and not isinstance(probes, str) else None
        except RuntimeRefusedError:
            run = None
        failed: set[int] = set()
        ran, refused = [], []
        for batch, new, past, mask in probes if run is not None else [(0, 0, 0, None)]:
            feeds = _feeds(inputs, batch, new, past, mask) if run is not None else None
            if not isinstance(feeds, dict):
                failed = {id(c.node) for c in repeated}
                break
            try:
                shapes = run(feeds)
            except RuntimeRefusedError:
                refused.append((new, past))  # the original refuses this shape, if _unexplained_refusal allows
                continue
            ran.append(new + past)
            for index in range(len(sides)):
                candidate = repeated[index // 2]
                if not _repeats(candidate, shapes[starts[index] : starts[index + 1]], batch, new + past):
                    failed.add(id(candidate.node))
        unexplained = _unexplained_refusal(ran, refused)
        for candidate in repeated:
            if unexplained is not None:
                reasons.setdefault(id(candidate.node), f"its key/value repetition: {unexplained}")
            elif id(candidate.node) in failed:
                reasons.setdefault(
                    id(candidate.node),
                    "its key/value repetition is not one cached head per group of query heads at the probes",
                )

    def _rewrite(self, model: ir.Model, candidate: _Candidate, index: int, lengths: dict) -> None:
        graph, node = model.graph, candidate.node
        name = f"GroupQueryAttention_{index}"
        counter = iter(range(1 << 30))

        def add(op_type: str, inputs, **attributes) -> ir.Value:
            number = next(counter)
            made = ir.node(op_type, inputs, attributes, name=f"{name}/{op_type}_{number}")
            made.outputs[0].name = f"{name}/{op_type}_{number}_output_0"
            graph.insert_before(node, made)  # the caller sorts the graph afterwards
            return made.outputs[0]

        query = node.inputs[0]
        if candidate.key.scale is not None:
            # Q (s K)^T = (s Q) K^T: the kernel appends the unscaled keys to the cache. ``s`` is one element of
            # any rank: a [1, 1, 1, 1] one would make the [B, S, D] query 4-D, which the kernel refuses.
            scale = candidate.key.scale
            if scale.shape is None or scale.shape.rank() > 1:
                shape = add_initializer(graph, "GroupQueryAttention/scalar_shape", np.array([], np.int64))
                scale = add("Reshape", [scale, shape])
            query = add("Mul", [query, scale])
        key = self._hidden(graph, candidate.key, candidate, add)
        value = self._hidden(graph, candidate.value, candidate, add)
        layer_lengths = self._lengths(graph, candidate, query, add, lengths)
        seqlens, total = layer_lengths["seqlens"], layer_lengths["total_sequence_length"]
        query_lengths = layer_lengths["query_seqlens"]
        attributes = {"num_heads": candidate.num_heads, "kv_num_heads": candidate.kv_heads, "causal": 1}
        if "scale" in node.attributes:
            attributes["scale"] = node.attributes.get_float("scale")
        if candidate.softcap:
            attributes["softcap"] = candidate.softcap
        inputs = [query, key, value, candidate.key.past, candidate.value.past, seqlens, total]
        bias = candidate.source if id(candidate.source) in self._full else candidate.bias
        inputs += [None, None, None, bias, None, None, None, None, None, query_lengths]
        fused = ir.node(
            "GroupQueryAttention",
            inputs,
            attributes,
            domain=MS_DOMAIN,
            num_outputs=3,
            name=f"{name}/GroupQueryAttention",
        )
        for output, suffix in zip(fused.outputs, ("output", "present_key", "present_value"), strict=True):
            output.name = f"{name}/{suffix}"
        graph.insert_before(node, fused)
        output = node.outputs[0]
        fused.outputs[0].shape, fused.outputs[0].type = output.shape, output.type
        replace_value(output, fused.outputs[0])
        for side, present in ((candidate.key, fused.outputs[1]), (candidate.value, fused.outputs[2])):
            present.shape, present.type = side.present.shape, side.present.type
            # The shapes of the present and of its repetition may feed this layer's own bias (the
            # exporter's total length, fuse-attention's broadcast target): they are computed from
            # the past and the new tokens instead, which come before the op.
            for read, heads in ((side.present, candidate.kv_heads), (side.read, candidate.num_heads)):
                for user, _ in list(read.uses()):
                    if is_onnx_op(user, "Shape") and not user.outputs[0].is_graph_output():
                        replace_value(user.outputs[0], self._cache_shape(graph, side, heads, user, add, layer_lengths))
            replace_value(side.present, present)

    @staticmethod
    def _cache_shape(graph: ir.Graph, side: _Cache, heads: int, shape: ir.Node, add, lengths: dict) -> ir.Value:
        """``[B, heads, P + S, d][start:end]``: the shape of the present (or its repetition) without reading it."""
        start, end = shape.attributes.get_int("start", 0), shape.attributes.get_int("end", 4)
        key = (heads, _static(side.past.shape[3]), start, end)
        if key not in lengths:

            def constant(label: str, values: list[int]) -> ir.Value:
                return add_initializer(graph, f"GroupQueryAttention/{label}", np.array(values, np.int64))

            parts = [lengths["batch"], constant(f"heads_{heads}", [heads]), lengths["total"]]
            parts.append(constant(f"head_size_{key[1]}", [key[1]]))
            whole = add("Concat", parts, axis=0)
            if (start, end) != (0, 4):
                whole = add("Slice", [whole, constant(f"start_{start}", [start]), constant(f"end_{end}", [end])])
            lengths[key] = whole
        return lengths[key]

    @staticmethod
    def _hidden(graph: ir.Graph, side: _Cache, candidate: _Candidate, add) -> ir.Value:
        """The new tokens as ``[B, S, kv*d]``: the head split's input, or the 4-D tensor transposed and merged."""
        split = head_split(side.new, (0, 2, 1, 3))
        if split is not None and split.heads in (candidate.kv_heads, None) and split.head_size == candidate.head_size:
            return split.hidden
        transposed = add("Transpose", [side.new], perm=[0, 2, 1, 3])
        width = candidate.kv_heads * candidate.head_size
        target = add_initializer(graph, f"{side.concat.name}/merged_heads", np.array([0, 0, width], np.int64))
        return add("Reshape", [transposed, target])

    def _lengths(self, graph: ir.Graph, candidate: _Candidate, query: ir.Value, add, lengths: dict):
        """``seqlens_k``, ``total_sequence_length`` and ``query_seqlens`` for one layer, and its batch and total.

        From the bias when it is read whole (its ``[.., S, T]`` shape is the new tokens and the
        keys at every probe), once for all the layers that share it; otherwise from the layer's
        own past and query. (GroupQueryAttention refuses, loudly, a query or cache whose lengths
        disagree with these.)
        """
        # The bias may read the present's shape (a causal table sliced to the keys' length),
        # which the rewrite recomputes from these lengths: then they come from the layer.
        cache = _cache_values(candidate.key) + _cache_values(candidate.value)
        full = id(candidate.source) in self._full and _reads_cache([candidate.source], cache) is None
        key = ("bias", id(candidate.source)) if full else ("layer", id(candidate.node))
        if key not in lengths:
            int32 = ir.DataType.INT32
            past = candidate.key.past

            def dims(value: ir.Value, start: int) -> ir.Value:
                made = shape_dims(graph, value, start, start + 1)
                graph.insert_before(candidate.node, made)  # the caller sorts the graph afterwards
                return made[-1].outputs[0]

            batch = dims(past, 0)
            if full:
                new = dims(candidate.source, 2)
                total = dims(candidate.source, 3)
            else:
                new = dims(query, 1)
                total = add("Add", [dims(past, 2), new])
            total32 = add("Cast", [total], to=int32)
            one = add_initializer(graph, "GroupQueryAttention/one", np.array([1], np.int32))
            scalar = add_initializer(graph, "GroupQueryAttention/scalar_shape", np.array([], np.int64))
            lengths[key] = {
                "batch": batch,
                "total": total,
                "seqlens": add("Expand", [add("Sub", [total32, one]), batch]),
                "total_sequence_length": add("Reshape", [total32, scalar]),
                "query_seqlens": add("Expand", [add("Cast", [new], to=int32), batch]),
            }
        return lengths[key]

"""Causal language models with a key/value cache: recognised from their inputs and outputs, and driven
on ONNX Runtime as a generation loop (prefill over a prompt, then greedy decode steps).

A model is a causal LM with a KV cache when it takes token ids and returns logits, and each cache
input (a past) has an output (its present) that holds the same cache one step longer: the next
step's past. Pasts and presents are paired by name where the names say which layer and which of
key/value they hold (``past_key_values.{i}.key`` → ``present.{i}.key``, as Optimum, the exporters
and ONNX Runtime GenAI name them; ``past_key_{i}`` → ``present_key_{i}``), and by shape where they do
not: an input and an output of the same type and rank whose dims agree but for one that grows (a
past's ``past_sequence`` and a present's ``total_sequence`` or ``past_sequence + sequence``). A cache is
one tensor per layer and key/value, ``[batch, heads, sequence, head size]`` or ``[batch, sequence, heads,
head size]``, or ONNX Runtime's GPT-2 export's stacked ``past_{i}`` ``[2, batch, heads, sequence, head
size]`` (key and value of layer ``i`` in one tensor, its present ``present_{i}`` alike: batch on axis 1).
``recognise_causal_lm`` returns the layout, or the reason it is not one; a probe step on ONNX
Runtime (``CausalLMSession.check_cache_pairs``) then finds which present carries each past
forward, re-pairing caches whose shapes could not tell them apart.

``CausalLMSession`` steps one such model the way transformers' ``generate`` does: left-padded
prompts with an attention mask, position ids ``cumsum(mask) - 1`` (pads at 1), presents fed back
as the next step's pasts. A model that reads the mask only as each row's length (ONNX Runtime
GenAI's GroupQueryAttention ``seqlens_k``) is given the same prompts right-padded, each row's
next token read at its own last position. On CUDA the cache stays on the device between steps (IO binding); only
the token ids, mask and positions go up and the logits come down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN
from optimizer.errors import InvalidModelError, RuntimeRefusedError
from optimizer.inputs import cache_head_sizes, pads_where_true
from optimizer.padding import added_to_scores, causal_mask, causal_masks, is_stacked
from optimizer.runtime import calling_onnxruntime, open_session, run_model, session_options

_IDS_NAME = re.compile(r"input_ids|^ids$|tokens", re.IGNORECASE)
_MASK_NAME = re.compile(r"mask", re.IGNORECASE)
_POSITION_NAME = re.compile(r"position", re.IGNORECASE)
_LOGITS_NAME = re.compile(r"logit", re.IGNORECASE)
_CACHE_WORDS = frozenset({"past", "present", "cache", "kv"})
_KINDS = {"key": "key", "k": "key", "value": "value", "v": "value"}
_PAD_ID = 0
# Keys and values named together (``past_key_values.{i}``): a stacked cache's one tensor holds both (``_layer_key``).
_KEYS_AND_VALUES = re.compile(r"(?<![^_])key_values?(?![^_])")


@dataclass(frozen=True)
class CachePair:
    """One cache tensor: the input that reads it (``past``) and the output that writes it one step longer.

    ``shape`` has the static dims, with None at ``batch_axis`` and at ``sequence_axis``; ``batch_axis`` is 0, or 1 for
    a stacked cache ``[2, batch, heads, sequence, head size]`` (key and value in one tensor, ONNX Runtime's GPT-2
    export); ``matched_by`` is ``"name"`` or ``"shape"``.
    """

    past: str
    present: str
    dtype: np.dtype
    shape: tuple[int | None, ...]
    sequence_axis: int
    matched_by: str
    batch_axis: int = 0

    def sized(self, batch: int, positions: int) -> list[int]:
        """The shape of this cache at ``batch`` rows and ``positions`` positions."""
        return [
            batch if axis == self.batch_axis else positions if axis == self.sequence_axis else d
            for axis, d in enumerate(self.shape)
        ]

    def empty(self, batch: int) -> np.ndarray:
        """The cache before the first step: no positions."""
        return np.zeros(self.sized(batch, 0), dtype=self.dtype)


@dataclass(frozen=True)
class CausalLM:
    """How a causal LM with a KV cache is fed: which inputs hold what, and its cache pairs in input order."""

    input_ids: str
    ids_dtype: np.dtype
    attention_mask: str | None
    mask_dtype: np.dtype | None
    position_ids: str | None
    positions_dtype: np.dtype | None
    logits: str
    vocab: int | None
    cache: tuple[CachePair, ...]
    # "right" where the model reads the mask only as each row's length (see ``mask_is_lengths``).
    padding: str = "left"
    # How a 4-D mask [batch, 1, sequence, past + new] is read (``optimizer.padding.causal_masks``); None for a 2-D one.
    mask_convention: str | None = None
    # Whether a 2-D mask pads where true (PyTorch's key padding mask, ``optimizer.inputs.pads_where_true``).
    mask_pads: bool = False

    def mask_feed(self, mask: np.ndarray, new: int) -> np.ndarray:
        """The model's mask for a ``[batch, past + new]`` mask of 0/1 (1 attends) over ``new`` tokens: itself (in the
        graph's dtype: float 0/1 where it declares floats, ONNX Runtime's GPT-2 export), its negation where the model
        reads it as padding where true (``mask_pads``: fed as given, ones padded every position and every generation
        figure was computed on garbage), or the 4-D mask causal over it (``optimizer.padding.causal_mask``)."""
        if self.mask_convention is None:
            return (np.asarray(mask) == 0 if self.mask_pads else mask).astype(self.mask_dtype, copy=False)
        return causal_mask(np.asarray(mask) != 0, new, self.mask_convention, self.mask_dtype)

    @property
    def cache_dtype(self) -> np.dtype:
        """The dtype of the first cache tensor (a key of the first layer, in the usual layouts)."""
        return self.cache[0].dtype

    @property
    def kv_heads(self) -> int:
        """Key/value heads of the first cache tensor (laid out [batch, heads, sequence, head size], [batch, sequence,
        heads, head size] or stacked [2, batch, heads, sequence, head size])."""
        pair = self.cache[0]
        return int(pair.shape[pair.batch_axis + (2 if pair.sequence_axis == pair.batch_axis + 1 else 1)])

    @property
    def head_size(self) -> int:
        """Size of one head in the first cache tensor (its last dim)."""
        return int(self.cache[0].shape[-1])

    def signature(self, *, presents: bool = True) -> tuple[Any, ...]:
        """The names that must agree for two models to be fed alike (cache pairs in any order: each is fed by
        name); without ``presents``, only the cache inputs (before a probe step has paired them)."""
        pairs = tuple(sorted((pair.past, pair.present if presents else "") for pair in self.cache))
        return (self.input_ids, self.attention_mask, self.position_ids, self.logits, pairs)


def recognise_causal_lm(model: ir.Model) -> CausalLM | str:
    """The layout of ``model`` as a causal LM with a KV cache, or why it is not one (a sentence)."""
    inputs = [value for value in model.graph.inputs if value.name not in model.graph.initializers]
    outputs = list(model.graph.outputs)
    ids = _pick(inputs, _IDS_NAME, rank=2, kinds="iu")
    if ids is None:
        return "no input holds token ids (an integer [batch, sequence] input named input_ids)"
    causal = causal_masks(model)
    mask = _pick(inputs, _MASK_NAME, rank=2, kinds="iubf") or next((v for v in inputs if v.name in causal), None)
    if mask is not None and _kind(mask) == "f" and _rank(mask) == 2 and added_to_scores(mask):
        return (
            f"input '{mask.name}' is {mask.dtype} [batch, past + new tokens] added to the scores (0 attends, a large "
            "negative pads): generation feeds a 2-D attention mask only as 0/1 (1 attends)"
        )
    positions = _pick(inputs, _POSITION_NAME, rank=2, kinds="iu")
    known = {ids.name} | {v.name for v in (mask, positions) if v is not None}
    caches = (v for v in inputs if v.name not in known)
    if not any(_cache_words(v.name) or (_rank(v) == 4 and _kind(v) == "f") or _stacked(v) for v in caches):
        return "no input is a key/value cache (such as past_key_values.{i}.key/value)"
    logits = next((v for v in outputs if v.name == "logits"), None) or _pick(outputs, _LOGITS_NAME, kinds="f")
    if logits is None:
        rank3 = [v for v in outputs if _rank(v) == 3 and _kind(v) == "f" and not _cache_words(v.name)]
        logits = rank3[0] if len(rank3) == 1 else None
    if logits is None:
        return "no output holds logits (a float [batch, sequence, vocabulary] output named logits)"
    known.add(logits.name)
    pasts = [v for v in inputs if v.name not in known]
    presents = [v for v in outputs if v.name not in known]
    pairs = _pair_by_name(pasts, presents)
    paired_inputs = {past.name for past, _, _ in pairs}
    paired_outputs = {present.name for _, present, _ in pairs}
    pairs += _pair_by_shape(
        [v for v in pasts if v.name not in paired_inputs], [v for v in presents if v.name not in paired_outputs]
    )
    by_past = {past.name: (past, present, how) for past, present, how in pairs}
    head_sizes = cache_head_sizes(model)
    cache = []
    for past in pasts:  # in input order
        if past.name not in by_past:
            return _not_fed(past)
        pair = _cache_pair(*by_past[past.name], head_sizes)
        if isinstance(pair, str):
            return pair
        cache.append(pair)
    vocab = logits.shape[-1] if logits.shape is not None and isinstance(logits.shape[-1], int) else None
    return CausalLM(
        input_ids=ids.name,
        ids_dtype=ids.dtype.numpy(),
        attention_mask=mask.name if mask is not None else None,
        mask_dtype=mask.dtype.numpy() if mask is not None else None,
        position_ids=positions.name if positions is not None else None,
        positions_dtype=positions.dtype.numpy() if positions is not None else None,
        padding="right" if mask is not None and mask.name not in causal and mask_is_lengths(model, mask) else "left",
        mask_convention=causal.get(mask.name) if mask is not None else None,
        mask_pads=mask is not None and mask.name not in causal and pads_where_true(mask),
        logits=logits.name,
        vocab=vocab,
        cache=tuple(cache),
    )


# Inputs generation feeds besides the cache: what each must be (an input named for one but not so is refused as such).
_ROLES = (
    (_IDS_NAME, "token ids", "an integer [batch, sequence]", "iu"),
    (_MASK_NAME, "attention mask", "a [batch, past + new tokens] of 0/1 (or [batch, 1, new, past + new])", "iubf"),
    (_POSITION_NAME, "position ids", "an integer [batch, sequence]", "iu"),
)


def _not_fed(value: ir.Value) -> str:
    """Why ``value``, an input that is not the token ids, mask, positions or a cache pair, cannot be fed.

    One named for a role in another shape (Qwen2-VL's multimodal rotary ``position_ids`` ``[3, batch, sequence]``,
    a 4-D float mask) is said to be that, not "neither the position ids nor ..." (a review).
    """
    if not _cache_words(value.name):
        for pattern, role, wanted, kinds in _ROLES:
            if pattern.search(value.name) and not (_rank(value) == 2 and _kind(value) in kinds):
                dims = ", ".join(_dim_text(dim) or "?" for dim in value.shape or ())
                shape = "of unknown shape" if value.shape is None else f"[{dims}]"
                return f"input '{value.name}' is {value.dtype} {shape}: generation feeds {role} only as {wanted} tensor"
    return (
        f"input '{value.name}' is neither the token ids, the attention mask, the position ids nor a cache "
        "(no output holds it one step longer)"
    )


def _rank(value: ir.Value) -> int | None:
    return None if value.shape is None else len(value.shape)


def _kind(value: ir.Value) -> str:
    """numpy's dtype kind of a tensor value ('f', 'i', 'u', 'b'), or '' when it is not a known tensor type."""
    if value.dtype is None or value.dtype == ir.DataType.STRING:
        return ""
    return "f" if value.dtype.is_floating_point() else np.dtype(value.dtype.numpy()).kind


def _pick(values: Sequence[ir.Value], name: re.Pattern, *, rank: int | None = None, kinds: str = "") -> ir.Value | None:
    """The first value whose name matches, of that rank and dtype kind."""
    for value in values:
        if name.search(value.name) and (rank is None or _rank(value) == rank) and _kind(value) in kinds:
            return value
    return None


def _name_parts(name: str) -> list[str]:
    return [part for part in re.split(r"[._/:\-]+", name.lower()) if part]


def _cache_words(name: str) -> bool:
    parts = _name_parts(name)
    return any(part in _CACHE_WORDS or part.startswith(("past", "present")) for part in parts)


def _layer_and_kind(name: str) -> tuple[int, str] | None:
    """``(3, "key")`` for ``past_key_values.3.key``, ``present.3.key``, ``past_key_3``; None without both."""
    if not _cache_words(name):
        return None
    parts = _name_parts(name)
    layers = [int(part) for part in parts if part.isdigit()]
    kinds = [_KINDS[part] for part in parts if part in _KINDS]
    if len(layers) != 1 or not kinds:
        return None
    return layers[0], kinds[-1]  # the last: "past_key_values.0.value" holds a value


def _stacked(value: ir.Value) -> bool:
    """Whether ``value`` is a stacked cache: float ``[2, batch, heads, sequence, head size]``, key and value of one
    layer in one tensor (``past_{i}`` and ``present_{i}`` of ONNX Runtime's GPT-2 export, ``gpt2_helper``)."""
    return _kind(value) == "f" and is_stacked(value)


def _batch_axis(value: ir.Value) -> int:
    """The axis of a cache's batch: 1 in a stacked cache (``_stacked``), else 0."""
    return 1 if _stacked(value) else 0


def _layer_key(value: ir.Value) -> tuple[int, str] | None:
    """``_layer_and_kind`` of ``value``'s name, or ``(i, "key and value")`` for a stacked cache named for its layer
    alone (``past_{i}``, ``present_{i}``) or for its keys and values together (``past_key_values.{i}``: read as a key
    by ``_layer_and_kind``, so paired with ``present.{i}`` by shape alone, and verified over a random cache, until a
    review in session 70)."""
    if _stacked(value) and _cache_words(value.name):
        parts = _KEYS_AND_VALUES.sub("kv", "_".join(_name_parts(value.name))).split("_")
        layers = [int(part) for part in parts if part.isdigit()]
        if len(layers) == 1 and not any(part in _KINDS for part in parts):
            return layers[0], "key and value"
    return _layer_and_kind(value.name)


def _pair_by_name(pasts: Sequence[ir.Value], presents: Sequence[ir.Value]) -> list[tuple[ir.Value, ir.Value, str]]:
    wanted = {}
    for present in presents:
        key = _layer_key(present)
        if key is not None and key not in wanted:
            wanted[key] = present
    pairs = []
    for past in pasts:
        key = _layer_key(past)
        if key is not None and key in wanted:
            pairs.append((past, wanted.pop(key), "name"))
    return pairs


def _growing_axis(past: ir.Value, present: ir.Value) -> int | None:
    """The one axis but batch (``_batch_axis``) where ``past`` has a symbolic dim and ``present`` another: the
    cache's length.

    Without a shape on ``present``, the one symbolic axis of ``past`` but batch.
    """
    if past.shape is None:
        return None
    batch = _batch_axis(past)
    symbolic = [axis for axis in range(len(past.shape)) if axis != batch and not isinstance(past.shape[axis], int)]
    if present.shape is None:
        return symbolic[0] if len(symbolic) == 1 else None
    if len(present.shape) != len(past.shape):
        return None
    # An unnamed dim on the present may be anything, so it may be the longer sequence.
    grows = [
        axis
        for axis in symbolic
        if _dim_text(present.shape[axis]) is None or _dim_text(present.shape[axis]) != _dim_text(past.shape[axis])
    ]
    same = all(
        _dim_text(present.shape[axis]) == _dim_text(past.shape[axis])
        for axis in range(len(past.shape))
        if axis != batch and axis not in grows
    )
    return grows[0] if len(grows) == 1 and same else None


def _dim_text(dim: Any) -> str | None:
    if isinstance(dim, int):
        return str(dim)
    value = getattr(dim, "value", None)
    return None if value is None else str(value).replace(" ", "")


def _pair_by_shape(pasts: Sequence[ir.Value], presents: Sequence[ir.Value]) -> list[tuple[ir.Value, ir.Value, str]]:
    """Pair each past with the first unpaired present of its dtype whose shape is its own but for a longer sequence.

    Unknown dims (no name) prove nothing: both must be named, and differently. A past of another rank than 4 is
    paired only where it is stacked (``_stacked``) or its name says it is a cache, so that ``_cache_pair`` refuses it
    for its rank rather than as no cache at all.
    """
    left = list(presents)
    pairs = []
    for past in pasts:
        named = _cache_words(past.name) and (_rank(past) or 0) >= 3
        if _kind(past) != "f" or (_rank(past) != 4 and not _stacked(past) and not named):
            continue
        for present in left:
            if present.dtype != past.dtype or present.shape is None:
                continue
            axis = _growing_axis(past, present)
            if axis is not None and _dim_text(present.shape[axis]) is not None and _dim_text(past.shape[axis]):
                pairs.append((past, present, "shape"))
                left.remove(present)
                break
    return pairs


def mask_is_lengths(model: ir.Model, mask: ir.Value) -> bool:
    """Whether the attention mask reaches attention only as each row's length: ``seqlens_k`` of a
    GroupQueryAttention (input 5), and shapes.

    ONNX Runtime GenAI's decoders feed ``ReduceSum(mask) - 1`` there: the op then takes each
    row's tokens to start at position 0 of the cache, pads after them (right padding). A
    left-padded row would be read as its pads followed by its first tokens.
    """
    seen, frontier, lengths = set(), [mask], False
    while frontier:
        value = frontier.pop()
        for node, index in value.uses():
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.domain == MS_DOMAIN and node.op_type == "GroupQueryAttention":
                if index != 5:
                    return False
                lengths = True
            elif node.op_type == "Shape" and not node.domain:
                continue
            elif node.domain or node.op_type not in ("ReduceSum", "Sub", "Add", "Cast"):
                return False  # a mask read position by position (an additive bias, a Where)
            else:
                frontier.extend(node.outputs)
    return lengths


def _cache_pair(
    past: ir.Value, present: ir.Value, matched_by: str, head_sizes: Mapping[str, int] | None = None
) -> CachePair | str:
    if _rank(past) != 4 and not _stacked(past):
        return (
            f"cache input '{past.name}' has rank {_rank(past)}: only [batch, heads, sequence, head size] caches (one "
            "tensor per layer and key/value) and stacked [2, batch, heads, sequence, head size] ones are supported"
        )
    if _kind(past) != "f":
        return f"cache input '{past.name}' is {past.dtype}, not a float type"
    axis = _growing_axis(past, present)
    if axis is None:
        return (
            f"cache input '{past.name}' has no symbolic dim that output '{present.name}' makes longer: "
            "a cache of fixed size (a shared buffer, a static export) is not supported"
        )
    shape, batch = [], _batch_axis(past)
    for index, dim in enumerate(past.shape):
        if index in (batch, axis):
            shape.append(None)
        elif isinstance(dim, int):
            shape.append(dim)
        elif _dim_text(dim) in (head_sizes or {}):
            shape.append(head_sizes[_dim_text(dim)])
        else:
            return (
                f"cache input '{past.name}' has a symbolic dim '{_dim_text(dim)}' besides batch and sequence "
                "that no attention reading it fixes"
            )
    return CachePair(past.name, present.name, np.dtype(past.dtype.numpy()), tuple(shape), axis, matched_by, batch)


def positions_from_mask(mask: np.ndarray, sequence: int) -> np.ndarray:
    """Position ids of the last ``sequence`` tokens: ``cumsum(mask) - 1``, 1 at pads (as transformers' ``generate``)."""
    mask = mask.astype(np.int64)
    positions = np.cumsum(mask, axis=1) - 1
    return np.ascontiguousarray(np.where(mask == 0, 1, positions)[:, -sequence:])


def left_padded(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Token-id rows of any lengths as one batch: ids (pad id 0 on the left) and an attention mask."""
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), _PAD_ID, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        if len(row):
            ids[index, -len(row) :] = row
            mask[index, -len(row) :] = 1
    return ids, mask


def random_prompts(
    batch: int, length: int, vocab: int, *, padded: bool, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` prompts of random token ids, ``length`` wide; with ``padded``, row ``r`` is left-padded by
    ``r * length // (2 * batch)`` tokens, so a batch mixes prompt lengths as served batches do."""
    rng = np.random.default_rng(seed)
    rows = []
    for row in range(batch):
        pads = row * length // (2 * batch) if padded else 0
        rows.append(rng.integers(0, vocab, length - pads, dtype=np.int64))
    return left_padded(rows)


@dataclass(frozen=True)
class GreedyRun:
    """Tokens chosen greedily after a prompt ([batch, 1 + steps]), seconds to the first, seconds of the rest;
    with ``keep_logits``, the logits each token was chosen from ([batch, 1 + steps, vocabulary])."""

    tokens: np.ndarray
    first_token_seconds: float
    decode_seconds: float
    logits: np.ndarray | None = None


class CausalLMSession:
    """One causal LM on ONNX Runtime, stepped with its key/value cache.

    ``providers`` are ONNX Runtime's names; with the CUDA provider first, the cache is kept on
    the GPU between steps by IO binding. A model ONNX Runtime cannot load or run at some length
    is an ``InvalidModelError`` that names the length (a position table shorter than the prompt
    and the new tokens is the usual cause).
    """

    def __init__(
        self, path: str, lm: CausalLM, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 0
    ) -> None:
        self.path, self.lm = path, lm
        self.on_device = providers[0] == "CUDAExecutionProvider"
        options = session_options("all", threads, sequential=True)
        try:
            self.session = open_session(path, options, providers)
        except RuntimeRefusedError as error:
            raise InvalidModelError(f"{path}: ONNX Runtime cannot load it: {error.reason}") from error
        self.output_names = [lm.logits, *(pair.present for pair in lm.cache)]
        self._vocab = lm.vocab

    @property
    def vocab(self) -> int:
        """Size of the vocabulary: the logits' last dim (one step over one token when the model does not declare it)."""
        if self._vocab is None:
            ids, mask = np.zeros((1, 1), dtype=np.int64), np.ones((1, 1), dtype=np.int64)
            self._vocab = int(self.forward(ids, mask, self.empty_cache(1))[0].shape[-1])
        return self._vocab

    def empty_cache(self, batch: int) -> list[Any]:
        """The cache before the prompt: every past with no positions."""
        return [pair.empty(batch) for pair in self.lm.cache]

    def forward(self, ids: np.ndarray, mask: np.ndarray, cache: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
        """One step over ``ids`` ([batch, new tokens]) after ``cache``; ``mask`` covers cache and new tokens.

        Returns the logits (on the host) and the next cache (on the device under CUDA).
        """
        lm = self.lm
        feeds = {lm.input_ids: ids.astype(lm.ids_dtype, copy=False)}
        if lm.attention_mask is not None:
            feeds[lm.attention_mask] = lm.mask_feed(mask, ids.shape[1])
        if lm.position_ids is not None:
            feeds[lm.position_ids] = positions_from_mask(mask, ids.shape[1]).astype(lm.positions_dtype, copy=False)
        with self._running(mask.shape[1]):
            if self.on_device:
                logits, *present = self._run_bound(feeds, cache)
            else:
                feeds.update((pair.past, value) for pair, value in zip(lm.cache, cache))
                logits, *present = self.session.run(self.output_names, feeds)
        self._check_growth(present, mask.shape[1])
        return logits, present

    def _run_bound(self, feeds: dict[str, np.ndarray], cache: Sequence[Any]) -> list[Any]:
        """One step with the cache bound on the GPU: pasts are the last step's presents, never copied to the host."""
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for pair, value in zip(self.lm.cache, cache):
            if isinstance(value, np.ndarray):  # the empty cache before the prompt
                binding.bind_cpu_input(pair.past, value)
            else:
                binding.bind_ortvalue_input(pair.past, value)
        binding.bind_output(self.lm.logits, "cpu")
        for pair in self.lm.cache:
            binding.bind_output(pair.present, "cuda", 0)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        logits, *present = binding.get_outputs()
        return [logits.numpy(), *present]

    def _check_growth(self, present: Sequence[Any], total: int) -> None:
        pair, value = self.lm.cache[0], present[0]
        shape = value.shape() if callable(getattr(value, "shape", None)) else value.shape
        if shape[pair.sequence_axis] != total:
            raise InvalidModelError(
                f"{self.path}: output '{pair.present}' holds {shape[pair.sequence_axis]} positions after a step "
                f"that the mask makes {total} long: it is not the cache one step longer"
            )

    @contextlib.contextmanager
    def _running(self, total: int) -> Iterator[None]:
        try:
            with calling_onnxruntime("run it"):
                yield
        except RuntimeRefusedError as error:
            raise InvalidModelError(
                f"{self.path}: ONNX Runtime cannot run it at {total} tokens, past and new (is its position table "
                f"shorter? try a smaller --prompt-length or --new-tokens, or shorter text): {error.reason}"
            ) from error

    def check_cache_pairs(self) -> None:
        """One step after a random cache of two positions: each past must come back at the start of a present.

        The present that carries a past forward is its pair, whatever names or shapes said:
        pairs matched by shape alone can be crossed (every cache of a model often has one
        shape), and are re-paired here (``matched_by`` becomes ``"probe"``). A past that no
        present carries forward, or pairs the names matched that another present carries forward (a loop
        pairing by name feeds it the wrong cache), is an ``InvalidModelError``.
        """
        rng = np.random.default_rng(0)
        cache = [rng.standard_normal(pair.sized(1, 2)).astype(pair.dtype) for pair in self.lm.cache]
        _, present = self.forward(np.ones((1, 1), dtype=np.int64), np.ones((1, 3), dtype=np.int64), cache)
        arrays = [value if isinstance(value, np.ndarray) else value.numpy() for value in present]
        pairs = []
        for pair, past in zip(self.lm.cache, cache):
            holders = [
                self.lm.cache[index].present
                for index, array in enumerate(arrays)
                if _begins_with(array, past, pair.sequence_axis)
            ]
            if len(holders) != 1:
                raise InvalidModelError(
                    f"{self.path}: {'no output' if not holders else 'more than one output'} begins with cache "
                    f"input '{pair.past}' after a step: its outputs do not carry the cache forward"
                )
            if holders[0] == pair.present:
                pairs.append(pair)
            elif pair.matched_by == "name":
                # A serving loop pairs by name (Optimum, GenAI, transformers): it would feed this past the wrong
                # present, so the model is not one to re-pair silently.
                raise InvalidModelError(
                    f"{self.path}: output '{holders[0]}' carries cache input '{pair.past}' forward after a step, "
                    f"not '{pair.present}' as their names pair them: a generation loop would feed it the wrong cache"
                )
            else:
                pairs.append(dataclasses.replace(pair, present=holders[0], matched_by="probe"))
        if len({pair.present for pair in pairs}) != len(pairs):
            raise InvalidModelError(f"{self.path}: two cache inputs come back in one output after a step")
        if tuple(pairs) != self.lm.cache:
            self.lm = dataclasses.replace(self.lm, cache=tuple(pairs))
            self.output_names = [self.lm.logits, *(pair.present for pair in pairs)]

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Logits at every position of ``ids`` (one step over the whole sequence, empty cache): teacher forcing.

        ``ids`` and ``mask`` are left-padded; a model that wants right padding gets each row's
        tokens moved to its start, and its logits moved back. A model that returns the last position's logits
        only (an export for serving, which reads no others) is stepped one token at a time over its cache, as a
        generation loop feeds it, each step's logits kept.
        """
        if self.lm.padding == "right":
            shifts = -_pads(mask)
            logits, _ = self.forward(_roll_rows(ids, shifts), _roll_rows(mask, shifts), self.empty_cache(len(ids)))
            return _roll_rows(logits, -shifts)
        logits, _ = self.forward(ids, mask, self.empty_cache(len(ids)))
        if ids.shape[1] > 1 and (logits.ndim == 2 or (logits.ndim == 3 and logits.shape[1] == 1)):
            # compare --generate refused such a model after timing it ("the logits hold 1 positions for 128 tokens").
            cache, steps = self.empty_cache(len(ids)), []
            for end in range(1, ids.shape[1] + 1):
                step, cache = self.forward(ids[:, end - 1 : end], mask[:, :end], cache)
                steps.append(_last_position(step))
            return np.stack(steps, axis=1)
        return logits

    def greedy(
        self, ids: np.ndarray, mask: np.ndarray, steps: int, *, fed: np.ndarray | None = None, keep_logits: bool = False
    ) -> GreedyRun:
        """Prefill the prompt and take its greedy next token, then ``steps`` decode steps of one token each.

        The first token's seconds cover the prefill and the choice of that token; the decode
        seconds, the ``steps`` steps after it. Every generated token is unmasked. With ``fed``
        (``[batch, >= steps]`` tokens: another model's greedy ones) each step is fed those instead of its
        own choice, so two models' step logits compare on the same tokens; ``tokens`` is still this
        model's own choice at each step.
        """
        cache = self.empty_cache(len(ids))
        last = None
        if self.lm.padding == "right":  # rows start at position 0; each row's last token is its own
            shifts = -_pads(mask)
            ids, mask, last = _roll_rows(ids, shifts), _roll_rows(mask, shifts), mask.sum(axis=1) - 1
        started = time.perf_counter()
        logits, cache = self.forward(ids, mask, cache)
        chosen = [_last_position(logits, last)]
        token = chosen[0].argmax(-1)[:, None]
        first = time.perf_counter() - started
        tokens = [token]
        ones = np.ones((len(ids), 1), dtype=mask.dtype)
        started = time.perf_counter()
        for step in range(steps):
            mask = np.concatenate([mask, ones], axis=1)
            given = token if fed is None else np.asarray(fed)[:, step : step + 1].astype(token.dtype)
            logits, cache = self.forward(given, mask, cache)
            if keep_logits:
                chosen.append(_last_position(logits))
            token = _last_position(logits).argmax(-1)[:, None]
            tokens.append(token)
        decode = time.perf_counter() - started
        kept = np.stack(chosen, axis=1) if keep_logits else None
        return GreedyRun(np.concatenate(tokens, axis=1).astype(np.int64), first, decode, kept)


def _begins_with(array: np.ndarray, past: np.ndarray, axis: int) -> bool:
    """Whether ``array`` holds ``past`` at its first positions along ``axis`` (and is shaped like it elsewhere)."""
    if array.ndim != past.ndim or array.shape[axis] < past.shape[axis]:
        return False
    if any(a != p for index, (a, p) in enumerate(zip(array.shape, past.shape)) if index != axis):
        return False
    carried = np.take(array, range(past.shape[axis]), axis=axis).astype(np.float64)
    return bool(np.allclose(carried, past.astype(np.float64), rtol=1e-3, atol=1e-3))


def _last_position(logits: np.ndarray, last: np.ndarray | None = None) -> np.ndarray:
    """The last position's logits ([batch, vocabulary]), or each row's position ``last`` (right padding);
    models that return only the last position give it as is."""
    if logits.ndim != 3:
        return logits
    if last is None or logits.shape[1] == 1:
        return logits[:, -1]
    return logits[np.arange(len(logits)), last]


def _pads(mask: np.ndarray) -> np.ndarray:
    """Each left-padded row's count of pads."""
    return mask.shape[1] - mask.astype(bool).sum(axis=1)


def _roll_rows(array: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each row of ``array`` rolled along axis 1 by its own shift (left padding to right and back)."""
    return np.stack([np.roll(row, int(shift), axis=0) for row, shift in zip(array, shifts, strict=True)])


# The longest past built by a prefill (its attention scores grow with the square of it);
# longer ones stay random numbers.
MAX_MODEL_CACHE = 1024


def with_model_cache(model: ir.Model, inputs: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray] | None:
    """``inputs`` (generated: a decode step over a cache of random numbers) with each past replaced by
    what ``model`` itself caches after a prefill of random tokens of that length; None when ``model``
    is no causal LM with a cache whose pairs are matched by name, the past is empty or longer than
    ``MAX_MODEL_CACHE``, or the model refuses the prefill (a position table shorter than the past).

    A deep decoder fed an N(0, 1) cache it could never produce amplifies float rounding ten
    times more than on its own cache (SmolLM2-135M: ONNX Runtime's load-time rewrites move the
    logits by up to 7e-3 against 9e-4), so verification of exact rewrites and int4 kernels
    would judge rounding noise, not the rewrite.
    """
    layout = recognise_causal_lm(model)
    if isinstance(layout, str) or not layout.cache or any(p.past not in inputs for p in layout.cache):
        return None
    if any(pair.matched_by != "name" for pair in layout.cache):
        return None  # pairs matched by shape alone may be crossed: a cache fed to the wrong input
    first = layout.cache[0]
    past = np.asarray(inputs[first.past]).shape[first.sequence_axis]
    ids = np.asarray(inputs[layout.input_ids])
    if past == 0 or past > MAX_MODEL_CACHE or ids.ndim != 2 or ids.size == 0:
        return None
    batch = ids.shape[0]
    # Another stream than the generated inputs' (same seed): a prefill of the very tokens that follow it
    # gave past and new positions equal values in the first layer, so a rewrite ignoring the mask passed.
    rng = np.random.default_rng((seed, 1))
    high = layout.vocab or int(ids.max()) + 1
    feeds: dict[str, np.ndarray] = {layout.input_ids: rng.integers(0, high, (batch, past)).astype(layout.ids_dtype)}
    if layout.attention_mask is not None:
        feeds[layout.attention_mask] = layout.mask_feed(np.ones((batch, past)), past)
    if layout.position_ids is not None:
        feeds[layout.position_ids] = np.tile(np.arange(past), (batch, 1)).astype(layout.positions_dtype)
    feeds.update({pair.past: pair.empty(batch) for pair in layout.cache})
    try:
        outputs = run_model(model, {**inputs, **feeds})
    except RuntimeRefusedError:
        return None
    cached = dict(inputs)
    for pair in layout.cache:
        present = outputs.get(pair.present)
        if not isinstance(present, np.ndarray) or present.shape != np.asarray(inputs[pair.past]).shape:
            return None
        cached[pair.past] = present
    return cached

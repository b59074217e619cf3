"""Verification inputs: read from an .npz file, or generated from the graph's input types.

Generated inputs follow what a transformer or CNN expects: symbolic dimensions are
bound by name (``--dim NAME=VALUE``; batch-like dims default to 1, every other
symbolic dim to 128; ``GeneratedLengths`` tries others where the model refuses those), token-id-like
integer inputs stay inside the embedding table
they index (a Constant node's too; each component of a ``GatherND``'s index tuple within
the table axis it indexes; through ``Add``/``Sub``/``Mul`` by constants, as torch's legacy export
flattens ``table[batch, ids]``, every final index; an input whose component no shape tells, under
the widest axis it may index where ONNX Runtime takes that, else one value with a warning), a
decoder's positions count on from its past (never below 0; alike on every row, but on a row
whose start a padded copy pads: ``padding.padded_copy``) and,
where ``position_ids`` index a table (GPT-2's ``wpe``, GPT-J's rotary sin/cos rows), past and
new tokens together stay within its rows, attention masks are ones (with two or more rows, the last row's final
quarter is padding, so verification exercises masking), per-row lengths (``waveforms_lens [batch]``) are the
lengths of the input they describe (``_row_length``), a one-element integer tested for equality with a constant
holds it in the first binding and another value in the second, as a one-element ``If`` condition holds true and
then false (``optimizer.compared_inputs``), floats are standard
normal, 8- and 16-bit integers that index nothing (raw pixels, audio samples) span their type's
range where ONNX Runtime runs the model on that (half of them; the other half are 0 or 1, as flags of those
types are), and other integers that index nothing are 0 or 1.
Strings are short words, or, for a string input that a lookup of ``ai.onnx.ml`` reads (``LabelEncoder``,
``CategoryMapper``, ``OneHotEncoder``), mostly that lookup's own keys (``_lookup_keys``: a model that reads
single letters maps every word to its default, and every row's outputs would be the same; so are integer and
float inputs such a lookup maps, which 0 or 1 and normal draws miss as well, through a ``Cast`` or column by column,
and the tokens a ``TfIdfVectorizer`` counts, from its pool). A string, an integer code indexing nothing, or a float
that an ``Equal`` compares with constants (a category switch ``Where(Equal(x, "cat"), a, b)``, also behind an ``Add``
of a constant) is half those constants (none a strict ``OneHotEncoder`` beside them fails on, nor for a float cast to
an index), and one compared with a constant threshold (``Less``, ``Greater``..., a ``Binarizer``, a ``Clip`` bound, a
tree ensemble's splits) that the usual draws all fall on one side of is half values each side of it
(``optimizer.compared_inputs``; a one-element one holds each in turn in even seeds); a float a reduction reads
whose result is compared with a constant threshold (``if x.max() > 1: x /= 255``; not one whose elements are
compared too) is moved so that the reduction is below it in the sets of seed 0 and above it in those of seed 1
(``_hold_reductions`` there); a sequence holds
``SEQUENCE_LENGTH`` generated tensors; an optional input is given (not empty).

Inputs whose *values* the model reads as sizes, axes, counts or parameters (a
Reshape's shape, Slice's starts and steps, Split's sizes, TopK's k, a Resize's
scales, an integer divisor...) get values that fit what they size or index instead:
the data's own dims, distinct axes, sizes that sum to the split axis, 1, 0.
Generation then tries the original model on ONNX Runtime, and on a refusal goes
on to the next candidates (ones, small positive values, the plain random values);
if ONNX Runtime refuses them all, ``make_inputs`` says so in one line, naming both
ways out (``--inputs FILE.npz``, ``--no-verify``). Models without such inputs are
not run here. Generation is seeded, so the same model always gets the same inputs.

Inputs are held in memory, so graphopt refuses, before allocating anything, inputs that
would take more than ``MAX_INPUT_BYTES`` (4 GiB) in all: the generated verification sets
(the first binding, its padded copy when the model has a mask input, and the second,
longer binding), generated calibration samples (16 along the batch axis), and the arrays
an .npz file declares. The count is of the arrays kept; generation draws one input at a
time in float64 or int64 before casting, and the model's activations come on top.

User-given values are checked before use: an .npz must be a zip of .npy arrays (read
without unpickling: object arrays are refused), with one array per graph input that has
no default value; an input with a default value (an initializer) keeps it, and a value
given for it is refused rather than silently dropped, since graphopt runs models with
their own defaults. An input that is all NaN, or inputs that are all empty, are refused:
nothing can be verified on them. ``nan_note`` describes inputs that are partly NaN.

Calibration and evaluation data, in the forms users hold them, are read by ``optimizer.samples``
(``open_samples``, ``SampleData``), which checks each chunk here: integer arrays of another width
are cast where every value fits, and a missing token type ids input is zeros, each with
a note (``check_inputs``). ``write_input_skeleton`` writes a model's inputs as an .npz
template (``graphopt make-inputs``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_domain
from optimizer.errors import InputSpecError, RuntimeRefusedError, one_line
from optimizer.runtime import run_model

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 1
# The files a data folder (--inputs, --calibration) is read from.
DATA_FOLDER_SUFFIXES = (".npz", ".npy")
DEFAULT_SEQUENCE = 128

_BATCH_NAME = re.compile(r"batch|^n$|^b$|^N$", re.IGNORECASE)
# One letter names a batch (NCHW's N) or a length (onnx-asr's ``waveforms [batch_size, N]``): see ``batch_dims``.
_ONE_LETTER_BATCH = re.compile(r"^[nb]$", re.IGNORECASE)
_MASK_NAME = re.compile(r"mask", re.IGNORECASE)
_POSITION_NAME = re.compile(r"position", re.IGNORECASE)
# The position ids a decoder's rotary or position table reads (not a relative-position bucket input).
_POSITION_IDS_NAME = re.compile(r"position_ids$", re.IGNORECASE)
# Per-row valid lengths of another input (``waveforms_lens``, ``length``, ``input_lengths``): see ``_row_length``.
_LENGTHS_NAME = re.compile(r"(^|_)(lens?|lengths?)$", re.IGNORECASE)

# Ops that carry integer indices through unchanged, on the way to the Gather that
# uses them (exporters add casts and reshapes between token ids and embeddings).
_INDEX_PRESERVING_OPS = frozenset(
    {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Transpose", "Slice", "Tile"}
)
# Ops that move an integer no farther from 0 than it was, by a scalar constant (Div by c >= 1 truncates toward 0;
# Max/Min with a c >= 0 inside the table): an index within the table before one stays within it after.
_CONTRACTING_OPS = {"Div": 1, "Max": 0, "Min": 0}
_DEFAULT_INT_HIGH = 2
# Integer types of raw data (pixels, audio samples) rather than ids, sizes or flags: an input of one that indexes no
# table is drawn over the type's whole range (half of its elements; the others 0 or 1, as the type also carries
# flags), where ONNX Runtime runs the model on that. Drawn as 0 or 1, a uint8 image let a rewrite adding in uint8
# (wrapping past 255) where the model widened first verify; drawn over the range alone, a uint8 flag was almost
# never 0 (or 1), and a wrong rewrite of the branch it selects verified.
_RAW_DATA_TYPES = frozenset({ir.DataType.UINT8, ir.DataType.INT8, ir.DataType.UINT16, ir.DataType.INT16})
# A Loop's trip count, where an input gives it: its body runs more than once.
_LOOP_TRIPS = 3

# Generated sequences hold this many tensors; a sequence's elements declared without
# a shape are 1-D of this length (a guess, so such models are run before use).
SEQUENCE_LENGTH = 2
_UNKNOWN_ELEMENT_SHAPE = (4,)
_WORDS = np.array(["alpha", "Beta", "gamma delta", "x7"], dtype=object)
_WAYS_OUT = "pass real inputs with --inputs FILE.npz, or --no-verify"

# Inputs graphopt generates or loads, in all, may take at most this many bytes (see the
# module docstring): far more than any verification needs (a transformer's inputs at batch
# 16 and 4096 tokens take a few MiB; a batch of 64 video clips of 16 frames at 224x224,
# 590 MiB), and little enough that a typo in --dim is one line, not a swapping machine.
MAX_INPUT_BYTES = 4 << 30
# ONNX stores dims as int64.
MAX_DIM = 2**63 - 1
_SMALLER_WAYS_OUT = (
    "bind smaller sizes with --dim NAME=SIZE, give real inputs with --inputs FILE.npz, "
    "or skip verification with --no-verify"
)
# Bytes counted per generated string (a pointer and a short str object).
_STRING_BYTES = 64


def _symbolic(dim: object) -> bool:
    """``isinstance(dim, ir.SymbolicDim)``, an int ruled out first: onnx-ir's ``SymbolicDim`` derives from a typing
    ``Protocol``, whose ``isinstance`` runs Python code (about 1 µs) for each int, and most dims are ints (input
    generation asked it some 200,000 times over 200 models of the ONNX backend corpus)."""
    return type(dim) is not int and isinstance(dim, ir.SymbolicDim)


def symbolic_dims(model: ir.Model) -> list[str]:
    """Names of the symbolic dimensions of the graph's inputs, in first-seen order."""
    names: list[str] = []
    for value in runtime_inputs(model):
        if value.shape is None:
            continue
        for dim in value.shape:
            if _symbolic(dim) and dim.value and dim.value not in names:
                names.append(dim.value)
    return names


def bind_dims(
    model: ir.Model, overrides: Mapping[str, int] | None = None, *, max_positions: int | None = None
) -> dict[str, int]:
    """Map every named symbolic input dimension to a size: ``overrides`` first, then defaults.

    ``max_positions`` (``--max-sequence``: the fused model's rotary caches end there) bounds
    every dim the overrides leave free that is not named like a batch, and a decoder's past
    and new tokens together. Raises ``InputSpecError`` for an override naming a dim the model does not have.
    """
    overrides = dict(overrides or {})
    names = symbolic_dims(model)
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        known = ", ".join(names) or "none"
        raise InputSpecError(f"--dim {unknown[0]}: the model has no symbolic dimension of that name (it has: {known})")
    _refuse_unsummed_cache_lengths(model, overrides)
    bound = {}
    fixed = _fixed_dims(model)
    batches = set(batch_dims(model)) or image_batch_dims(model)
    for name in names:
        if name in overrides:
            bound[name] = overrides[name]
        elif name in fixed:
            bound[name] = fixed[name]
        elif name in batches:
            bound[name] = DEFAULT_BATCH
        else:
            bound[name] = DEFAULT_SEQUENCE
    # The dims the model reads at one size only stay too: `--max-sequence 8` shrank GenAI's `kv_cache_dim`.
    return _with_cache_lengths(model, bound, {**fixed, **overrides}, max_positions)


def _refuse_unsummed_cache_lengths(model: ir.Model, dims: Mapping[str, int]) -> None:
    """``InputSpecError`` where ``dims`` bind a decoder's mask length (``cache_length_dims``' total) to other than
    its past plus its new tokens: all three given apart from that sum, the total at or under the past or under the
    new tokens (the total alone is split between them, ``_with_cache_lengths``). Before, the past stayed at its
    default 128 (or the new tokens did) beside the bound mask, and ONNX Runtime refused the inputs, ``make-inputs``
    writing them all the same. The sum is held only where an output (the present cache) is as long as the mask: a
    cache in a buffer of fixed size, longer than the mask, declares its present as long as its past. Nor where a
    ``GroupQueryAttention`` reads the cache: ONNX Runtime GenAI's declares its present as long as the mask, yet runs a
    shared buffer longer than it (a past of 16 beside a mask of 8, refused here until a later review in session 69). A
    mask longer than its past and new tokens together is refused in any buffer."""
    shared = any(node.domain == MS_DOMAIN and node.op_type == "GroupQueryAttention" for node in model.graph.all_nodes())
    outputs = (
        set()
        if shared
        else {
            dim.value
            for value in model.graph.outputs
            if value.shape is not None
            for dim in value.shape
            if _symbolic(dim)
        }
    )
    for total, (past, sequence) in cache_length_dims(model).items():
        if total not in dims:
            continue
        given, summed = f"--dim {total}={dims[total]}", total in outputs
        if summed and past in dims and sequence in dims and dims[total] != dims[past] + dims[sequence]:
            wrong = f"is not {past}={dims[past]} plus {sequence}={dims[sequence]}"
        elif past in dims and sequence in dims and dims[total] > dims[past] + dims[sequence]:
            # Longer than its past and new tokens in any buffer, a fixed one or GroupQueryAttention's shared one.
            wrong = f"is longer than {past}={dims[past]} plus {sequence}={dims[sequence]}"
        elif summed and past in dims and dims[total] <= dims[past]:
            wrong = f"leaves no new token beside {past}={dims[past]}"
        elif sequence in dims and dims[total] < dims[sequence]:
            wrong = f"is shorter than {sequence}={dims[sequence]}"
        else:
            continue
        raise InputSpecError(
            f"{given} {wrong}: a decoder's mask spans its past and its new tokens ({total} = {past} + {sequence}); "
            "bind two of the three and the third follows"
        )


def free_dims(model: ir.Model, dims: Mapping[str, int] | None) -> list[str]:
    """The symbolic input dims verification sizes itself: not given by ``dims``, not fixed by the model, not a
    batch."""
    taken = {*(dims or {}), *_fixed_dims(model), *batch_dims(model)}
    return [name for name in symbolic_dims(model) if name not in taken]


def free_lengths(model: ir.Model, dims: Mapping[str, int] | None, bound: Mapping[str, int]) -> str:
    """``name=size, ...`` of the free dims (``free_dims``) as ``bound``."""
    return ", ".join(f"{name}={bound[name]}" for name in free_dims(model, dims) if name in bound)


def shorter_generated_length(
    model: ir.Model, dims: Mapping[str, int] | None, bound: Mapping[str, int], cap: int | None = None
) -> int | None:
    """Half the longest free dim of ``bound`` (``free_dims``), to generate inputs again where the input model
    refused them (CLIP's text encoder reads 77 positions and refuses the default 128); None at 8 or fewer, where
    no dim is free (the lengths are the user's or the model's), or where it would not be below ``cap``, the
    lengths' bound already tried (a mask's past + new tokens over a --dim length: the same inputs again)."""
    longest = max((bound[name] for name in free_dims(model, dims) if name in bound), default=None)
    if longest is None or longest <= SHORTEST_GENERATED:
        return None
    shorter = max(longest // 2, SHORTEST_GENERATED)
    return None if cap is not None and shorter >= cap else shorter


SHORTEST_GENERATED = 8
# Lengths tried, in turn, where the input model refused the default and every shorter one, or computed constant
# outputs on them: a speech front end's STFT reads frames of 400 samples, and over 128 samples its features are zeros.
LONGER_GENERATED = (512, 2048)
# Longer lengths are tried only where this many sets at them stay under MAX_INPUT_BYTES (verification's sets and a
# second binding at twice the length, or 16 calibration samples).
_LONGER_SETS = 64


class GeneratedLengths:
    """The lengths generated inputs are drawn at, and the next to try where ONNX Runtime refuses the input model on
    them (``advance``): the default (within ``max_positions``, ``--max-sequence``), then halves down to
    ``SHORTEST_GENERATED`` (CLIP's text encoder reads 77 positions), then each of ``LONGER_GENERATED`` along the
    free dims (``free_dims``: not the user's ``dims``, not a batch) up to ``max_positions``, where no input holds
    them at two axes (a length, not an image's height and width). Where the model ran but
    every output was constant (``degenerate``), the shorter lengths are skipped: they hold less still."""

    def __init__(self, model: ir.Model, dims: Mapping[str, int] | None, max_positions: int | None = None) -> None:
        self.model = model
        self.user_dims = dict(dims or {})
        self.max_positions = max_positions
        self.cap = max_positions  # the bound on free lengths, halved on each refusal
        self.longer: dict[str, int] = {}
        self.first_refused = ""  # the free lengths first left (``free_lengths``), "" while the first are kept
        self.first_degenerate = False  # whether they were left for constant outputs, not a refusal
        self._first_degenerate_at: tuple[int | None, dict[str, int]] | None = None  # (cap, longer) there
        self.settled = False  # back at the first constant lengths (``back_to_first_degenerate``): no others tried
        self.refused_after_degenerate = False  # whether ONNX Runtime refused lengths tried after constant ones

    @property
    def dims(self) -> dict[str, int]:
        """The dims to bind: the user's, and the free ones at a longer length once one is tried."""
        return {**self.longer, **self.user_dims}

    def binding(self) -> dict[str, int]:
        """The binding the next inputs are generated at (``bind_dims``)."""
        return bind_dims(self.model, self.dims, max_positions=self.cap)

    def advance(self, bound: Mapping[str, int], *, degenerate: bool = False) -> bool:
        """Move on from ``bound``, the binding just refused; False where no other lengths are left to try."""
        if self.settled:
            return False
        if degenerate and self._first_degenerate_at is None:
            self._first_degenerate_at = (self.cap, dict(self.longer))
        elif not degenerate and self._first_degenerate_at is not None:
            self.refused_after_degenerate = True
        first = free_lengths(self.model, self.user_dims, bound)
        moved = self._move(bound, degenerate)
        if moved and not self.first_refused:
            self.first_refused, self.first_degenerate = first, degenerate
        return moved

    def back_to_first_degenerate(self) -> bool:
        """Back to the first lengths on which every output was constant, where no others are left to try (such a
        model is verified there, with a warning); False where there were none, or it is back there already."""
        if self._first_degenerate_at is None or self.settled:
            return False
        self.cap, self.longer = self._first_degenerate_at
        self.settled = True
        return True

    def _move(self, bound: Mapping[str, int], degenerate: bool) -> bool:
        if not self.longer and not degenerate:
            shorter = shorter_generated_length(self.model, self.user_dims, bound, self.cap)
            if shorter is not None:
                self.cap = shorter
                return True
        free = [name for name in free_dims(self.model, self.user_dims) if name in bound]
        if self._held_together(free):
            return False  # an image's height and width: 2,048 × 2,048 drawn for a detector's zeros is minutes
        longest = max((bound[name] for name in free), default=None)
        within = [size for size in LONGER_GENERATED if self.max_positions is None or size <= self.max_positions]
        longer = next((size for size in within if longest is not None and size > longest), None)
        if longer is None:
            return False
        lengths = dict.fromkeys(free, longer)
        # A mask's length is its past plus its new tokens, two of which give the third: 512 for the mask and the past
        # beside --dim sequence=4 made inputs ONNX Runtime refused (``bind_dims`` refuses them now).
        for total, (past, sequence) in cache_length_dims(self.model).items():
            if total in self.user_dims:
                # The user's mask length fixes their sum: 512 for both beside --dim total_sequence=9 was refused as
                # the user's own --dim ("is not past_sequence=512 plus sequence=512").
                lengths.pop(past, None)
                lengths.pop(sequence, None)
            elif past in {**lengths, **self.user_dims} and sequence in {**lengths, **self.user_dims}:
                lengths.pop(total, None)
        if not lengths:
            return False
        candidate = {**lengths, **self.user_dims}
        if input_bytes(self.model, candidate)[0] > MAX_INPUT_BYTES // _LONGER_SETS:
            return False  # a 2-D length: the refusal at the default says more than one of size
        self.longer, self.cap = lengths, self.max_positions
        return True

    def _held_together(self, free: Sequence[str]) -> bool:
        """Whether one input holds the ``free`` dims at two axes (longer lengths are tried along lengths only): an
        image's height and width, named apart or one name for both (``x [1, 3, size, size]``)."""
        return _held_together(self.model, free)

    def note(self, bound: Mapping[str, int], subject: str, done: str) -> str | None:
        """The line saying which lengths ``subject`` (``the input model``) was refused on or constant on, and which
        ``bound`` it was ``done`` on (``verified``, ``compared``); None where the first lengths were kept."""
        if not self.first_refused:
            return None
        what = (
            f"every output of {subject} is constant on generated inputs"
            if self.first_degenerate
            else f"ONNX Runtime cannot run {subject} on generated inputs"
        )
        way = "longer" if self.longer else "shorter"
        kept = free_lengths(self.model, self.user_dims, bound)
        if self.settled and self.first_degenerate:
            return (
                f"every output of {subject} is constant on generated inputs of {kept}, and ONNX Runtime refused "
                f"the longer ones: {done} on those constants, which a wrong rewrite may match as well; "
                "give --inputs or --dim for the lengths you run"
            )
        return (
            f"{what} of {self.first_refused}: {done} on {way} ones ({kept}); "
            "give --inputs or --dim for the lengths you run"
        )


def _held_together(model: ir.Model, names: Sequence[str]) -> bool:
    """Whether one input of ``model`` holds two of the dims ``names`` at two axes (or one of them at two)."""
    return any(
        sum(_symbolic(dim) and dim.value in names for dim in value.shape) > 1
        for value in runtime_inputs(model)
        if value.shape is not None
    )


_PAST_NAME = re.compile(r"past|cache", re.IGNORECASE)
_IDS_NAME = re.compile(r"input_ids|^ids$|tokens", re.IGNORECASE)
# An encoder-decoder's cross-attention cache (Optimum's ``past_key_values.{i}.encoder.key``) and its encoder's
# mask span the encoder's positions, which a decode step neither grows nor counts into the decoder's mask.
_ENCODER_NAME = re.compile(r"encoder|cross", re.IGNORECASE)


def cache_length_dims(model: ir.Model) -> dict[str, tuple[str, str]]:
    """``{total: (past, sequence)}`` for a decoder with a key/value cache: its attention mask
    spans the past and the new tokens, so its length dim must be their sum.

    Found by name: a 2-D ``*mask*`` input (or a 4-D one ``[batch, 1, sequence, total]``, ``causal_masks``, whose
    sequence is the ``input_ids``') whose last dim is neither the ``input_ids``
    sequence dim nor the cache's, and a ``past*``/``*cache*`` input with its own dim. An
    encoder-decoder's encoder mask and cross-attention cache (named ``*encoder*``/``*cross*``)
    are neither: their length is the encoder's.
    """
    from optimizer.padding import causal_masks  # lazily: a pass imported alone loads no padding

    inputs = runtime_inputs(model)
    batches = set(batch_dims(model))

    def symbolic(value: ir.Value, axis: int) -> str | None:
        if value.shape is None or len(value.shape) <= abs(axis) - (axis < 0):
            return None
        dim = value.shape[axis]
        return dim.value if _symbolic(dim) and dim.value else None

    sequence = next(
        (symbolic(v, -1) for v in inputs if _IDS_NAME.search(v.name) and v.shape and len(v.shape) == 2), None
    )
    decoder_inputs = [v for v in inputs if not _ENCODER_NAME.search(v.name)]
    causal = causal_masks(model)
    masks = [
        symbolic(v, -1)
        for v in decoder_inputs
        if _MASK_NAME.search(v.name)
        and v.shape
        and (len(v.shape) == 2 or (v.name in causal and symbolic(v, 2) == sequence))
    ]
    fixed = _fixed_dims(model)
    pasts = {
        dim.value
        for v in decoder_inputs
        if _PAST_NAME.search(v.name) and v.shape is not None
        for dim in v.shape
        if _symbolic(dim) and dim.value and dim.value not in batches and dim.value not in fixed
    }
    if sequence is None or len(pasts) != 1:
        return {}
    (past,) = pasts
    return {total: (past, sequence) for total in masks if total and total not in (sequence, past)}


# com.microsoft attention ops that read a cache: the input indices of their past key and value.
_CACHE_READERS = {"GroupQueryAttention": (3, 4), "MultiHeadAttention": (6, 7)}
_QUERY_SEQLENS = 16  # GroupQueryAttention's input of new tokens per row


def cache_head_sizes(model: ir.Model) -> dict[str, int]:
    """Sizes of the symbolic last dims of cache inputs that the attention reading them fixes: ``{dim: size}``.

    ONNX Runtime GenAI declares its caches ``[batch_size, kv_heads, past_sequence_length,
    kv_cache_dim]`` (one export for plain and quantized caches), yet the GroupQueryAttention
    reading them takes only its head size there. That size is read off the op: its query's last
    dim over the query heads (``num_heads``), or over ``num_heads + 2 * kv_num_heads`` when Q, K
    and V are packed in the query. A dim read as two sizes, or from an op whose query width is
    not static, is left out.
    """
    sizes: dict[str, set[int]] = {}
    for value in model.graph.inputs:
        if value.shape is None or len(value.shape) != 4 or isinstance(value.shape[-1], int):
            continue
        name = value.shape[-1].value if _symbolic(value.shape[-1]) else None
        for node, index in value.uses():
            head = _head_size_read_by(node, index)
            if name and head is not None:
                sizes.setdefault(name, set()).add(head)
    return {name: found.pop() for name, found in sizes.items() if len(found) == 1}


def longest_cache(model: ir.Model) -> int | None:
    """The most positions (past and new together) the model accepts, where a table it reads says so; else None.

    A GroupQueryAttention that applies rotary itself (``do_rotary=1``, as ONNX Runtime GenAI's
    decoders do) reads its cos/sin caches at every position up to the total length and refuses a
    longer one: their rows are the limit. So are the rows of a table a ``position_ids`` input
    indexes (GPT-J gathers its rotary's sin/cos from ``n_positions`` rows): a decode step's positions
    count on from its past (``_offset_positions_past_the_cache``), and past the table the model fails.
    """
    # Positions are drawn from the least that stays in the table (``_index_low``): the rows past it are the limit.
    # Read under the widest axis an element may index: a batch axis of 1 beside the positions in a GatherND
    # tuple is no limit on them (``_vary_ambiguous_indices`` tries the wider draw on ONNX Runtime).
    limits = [
        rows - _index_low(value, widest=True)
        for value in runtime_inputs(model)
        if _POSITION_IDS_NAME.search(value.name) and (rows := _index_range(value, widest=True)) is not None
    ]
    for node in model.graph.all_nodes():
        if node.domain != MS_DOMAIN or node.op_type != "GroupQueryAttention":
            continue
        if not node.attributes.get_int("do_rotary", 0) or len(node.inputs) < 9:
            continue
        for table in node.inputs[7:9]:
            if table is not None and table.shape is not None and isinstance(table.shape[0], int):
                limits.append(table.shape[0])
    return min(limits) if limits else None


def chunks_only_at_batch_one(model: ir.Model) -> bool:
    """Whether the model runs several new tokens over a past only one row at a time.

    ONNX Runtime's GroupQueryAttention without ``query_seqlens`` (input 16; ONNX Runtime GenAI's
    decoders do not feed it) refuses a batch of more than one row when several new tokens
    follow a past: a served batch decodes one token a row.
    """
    return any(
        node.domain == MS_DOMAIN
        and node.op_type == "GroupQueryAttention"
        and (len(node.inputs) <= _QUERY_SEQLENS or node.inputs[_QUERY_SEQLENS] is None)
        for node in model.graph.all_nodes()
    )


def _head_size_read_by(node: ir.Node, index: int) -> int | None:
    """The head size a com.microsoft attention node takes at its past input ``index``, or None."""
    if node.domain != MS_DOMAIN or index not in _CACHE_READERS.get(node.op_type, ()):
        return None
    query = node.inputs[0]
    if query is None or query.shape is None or len(query.shape) != 3 or not isinstance(query.shape[-1], int):
        return None
    heads = node.attributes.get_int("num_heads", 0)
    packed = len(node.inputs) < 2 or node.inputs[1] is None
    if packed and node.op_type == "GroupQueryAttention":
        heads += 2 * node.attributes.get_int("kv_num_heads", 0)
    elif packed:
        return None  # MultiHeadAttention packs Q, K and V in a 5-D query, not this one
    return query.shape[-1] // heads if heads and query.shape[-1] % heads == 0 else None


def _fixed_dims(model: ir.Model) -> dict[str, int]:
    """Symbolic input dims that the model reads as one size only: a cache's head size named as a dim
    (ONNX Runtime GenAI's ``kv_cache_dim``), fixed by the attention that reads the cache, and a features axis a
    weight fixes (``weight_sized_dims``)."""
    return {**weight_sized_dims(model), **cache_head_sizes(model)}


# Ops whose output keeps each axis of their first input where it was (a constant other operand broadcasts).
_AXIS_KEEPING = frozenset(
    {
        "Identity",
        "Cast",
        "Relu",
        "Sigmoid",
        "Tanh",
        "Elu",
        "LeakyRelu",
        "Neg",
        "Abs",
        "Exp",
        "Log",
        "Sqrt",
        "Softplus",
        "Add",
        "Sub",
        "Mul",
        "Div",
    }
)
_RECURRENT = frozenset({"LSTM", "GRU", "RNN"})


def weight_sized_dims(model: ir.Model) -> dict[str, int]:
    """Symbolic input dims that a weight fixes: ``{dim: size}``.

    madmom's converter declares every input ``[input_dim_0, input_dim_1]`` where the second is a spectrogram's
    bins, which the first layer's weights fix (482 for an RNN's ``W``, 1,575 for a ``MatMul``): drawn at 128 or
    its halves, every set was refused and the model with it ("give real inputs"), and with ``--inputs`` the second
    binding drew the bins anew and was dropped. An input's axis is followed through ops that keep or move axes
    (``Unsqueeze``, ``Squeeze``, ``Transpose``, a ``Slice`` or ``Pad`` along other axes, elementwise ops) to a
    ``MatMul`` or ``Gemm`` by a constant matrix, an ``LSTM``/``GRU``/``RNN``'s constant ``W`` (its features axis) or
    a ``Conv``'s constant weight (its channels), or to an elementwise op with a constant whose size there is not 1.
    A dim read as two sizes is left out.
    """
    sizes: dict[str, set[int]] = {}
    for value in runtime_inputs(model):
        if value.shape is None:
            continue
        for axis, dim in enumerate(value.shape):
            if _symbolic(dim) and dim.value:
                for size in _sizes_fixing_axis(value, axis, len(value.shape)):
                    sizes.setdefault(dim.value, set()).add(size)
    return {name: found.pop() for name, found in sizes.items() if len(found) == 1}


def _sizes_fixing_axis(
    value: ir.Value, axis: int, rank: int, depth: int = 0, seen: set[tuple[int, int]] | None = None
) -> Iterator[int]:
    """The sizes that constant weights fix ``value``'s ``axis`` (of ``rank``) to, read through its readers (each
    value and axis once: a value read by many elementwise ops is not walked again from each)."""
    seen = set() if seen is None else seen
    if depth > 16 or (id(value), axis) in seen:
        return
    seen.add((id(value), axis))
    for node, index in value.uses():
        if not is_onnx_domain(node) or not node.outputs:
            continue
        op, out = node.op_type, node.outputs[0]
        constants = [ir.convenience.get_const_tensor(v) if v is not None else None for v in node.inputs]
        if op in ("MatMul", "Gemm") and index == 0 and constants[1] is not None and len(constants[1].shape) == 2:
            trans_a = op == "Gemm" and node.attributes.get_int("transA", 0)
            trans_b = op == "Gemm" and node.attributes.get_int("transB", 0)
            if axis == (rank - 2 if trans_a else rank - 1):
                yield int(constants[1].shape[1 if trans_b else 0])
        elif op in _RECURRENT and index == 0 and constants[1] is not None and axis == 2:
            yield int(constants[1].shape[2])
        elif op == "Conv" and index == 0 and constants[1] is not None and axis == 1:
            yield int(constants[1].shape[1]) * node.attributes.get_int("group", 1)
        elif op in _AXIS_KEEPING and index == 0:
            others = [c for c in constants[1:] if c is not None]
            if len(others) != len(node.inputs) - 1:
                continue  # a computed operand may broadcast this axis out
            out_rank = max([rank, *(len(c.shape) for c in others)])
            out_axis = axis + out_rank - rank
            fixed = {
                int(c.shape[out_axis - out_rank + len(c.shape)]) for c in others if out_axis >= out_rank - len(c.shape)
            }
            fixed.discard(1)
            if fixed:
                yield from fixed
            else:
                yield from _sizes_fixing_axis(out, out_axis, out_rank, depth + 1, seen)
        elif op == "Unsqueeze" and index == 0:
            axes = _constant_ints(node.inputs[1]) if len(node.inputs) > 1 else node.attributes.get_ints("axes", None)
            if axes is None:
                continue
            out_rank = rank + len(axes)
            kept = [position for position in range(out_rank) if position not in {a % out_rank for a in axes}]
            yield from _sizes_fixing_axis(out, kept[axis], out_rank, depth + 1, seen)
        elif op == "Squeeze" and index == 0:
            axes = _constant_ints(node.inputs[1]) if len(node.inputs) > 1 else node.attributes.get_ints("axes", None)
            squeezed = {a % rank for a in axes} if axes is not None else None
            if squeezed is not None and axis not in squeezed:
                moved = axis - sum(a < axis for a in squeezed)
                yield from _sizes_fixing_axis(out, moved, rank - len(squeezed), depth + 1, seen)
        elif op == "Transpose" and index == 0:
            perm = list(node.attributes.get_ints("perm", list(reversed(range(rank)))))
            if sorted(perm) == list(range(rank)):
                yield from _sizes_fixing_axis(out, perm.index(axis), rank, depth + 1, seen)
        elif op == "Slice" and index == 0:
            axes = _constant_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
            starts = _constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None
            if starts is not None and axis not in {
                a % rank for a in (axes if axes is not None else range(len(starts)))
            }:
                yield from _sizes_fixing_axis(out, axis, rank, depth + 1, seen)
        elif op == "Pad" and index == 0:
            pads = _constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None
            if pads is not None and len(pads) == 2 * rank and pads[axis] == pads[axis + rank] == 0:
                yield from _sizes_fixing_axis(out, axis, rank, depth + 1, seen)


def recurrent_batch_axes(model: ir.Model) -> dict[str, set[int]]:
    """The axes past the first of each input that have neither name nor size (``None``, or -1) and reach the batch
    axis of an ``LSTM``/``GRU``/``RNN``: of its ``X``, or of its ``initial_h``/``initial_c`` (axis 1, or 0 with
    ``layout=1``), as ``{input name: axes}``.

    Silero VAD v6's ``state [2, None, 128]`` is the LSTM's ``h``/``c`` stacked, and its rows are the audio's, the
    unnamed leading dim of ``input [None, None]``; drawn at 128 (an unnamed dim past the first is taken for a
    length) beside one audio row, ONNX Runtime refused every set and the model with it ("give real inputs"). Such
    an axis is drawn as a batch (``DEFAULT_BATCH``). The axis is followed through ``Identity``, ``Cast``,
    ``Unsqueeze``, ``Squeeze``, ``Transpose``, and a ``Gather``, ``Slice`` or ``Split`` along other axes, into the
    branches of an ``If`` that read it (a subgraph capture) and out through the ``If``'s outputs.
    """
    unnamed = [
        (value, axis)
        for value in runtime_inputs(model)
        if value.shape is not None
        for axis, dim in enumerate(value.shape)
        if axis and ((isinstance(dim, int) and dim < 0) or (_symbolic(dim) and not dim.value))
    ]
    if not unnamed or not any(
        node.op_type in _RECURRENT or node.op_type == "Concat"
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
    ):
        return {}
    branch_outputs: dict[int, list[ir.Value]] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "If" and is_onnx_domain(node):
            for attribute in node.attributes.values():
                if isinstance(attribute.value, ir.Graph):
                    for output, branch_output in zip(node.outputs, attribute.value.outputs):
                        branch_outputs.setdefault(id(branch_output), []).append(output)
    found: dict[str, set[int]] = {}
    carried = _leading_axes(model)
    for value, axis in unnamed:
        if _reaches_recurrent_batch(value, axis, len(value.shape), branch_outputs, set(), carried=carried):
            found.setdefault(value.name, set()).add(axis)
    return found


def recurrent_step_inputs(model: ir.Model) -> set[str]:
    """The inputs whose first axis has neither name nor size and reaches a recurrent op's steps axis (``X``'s axis 0, or
    1 with ``layout=1``; ``_reaches_recurrent_batch``): a sequence-major ``x [None, None, 8]`` a ``GRU`` reads as it
    is. Such an axis is drawn as a length, not a batch: at one step, a rewrite wrong only past the first (a ``GRU``
    made to run backwards) verified, until a review in session 72."""
    if not any(node.op_type in _RECURRENT for node in ir.traversal.RecursiveGraphIterator(model.graph)):
        return set()
    found = set()
    for value in runtime_inputs(model):
        dim = value.shape[0] if value.shape is not None and value.shape.rank() else 0
        unnamed = (isinstance(dim, int) and dim < 0) or (_symbolic(dim) and not dim.value)
        if unnamed and _reaches_recurrent_batch(value, 0, value.shape.rank(), {}, set(), steps=True):
            found.add(value.name)
    return found


def _recurrent_batch_size(model: ir.Model, bound: Mapping[str, int]) -> int:
    """The rows a recurrent state's unnamed batch (``recurrent_batch_axes``) is drawn at: the size ``bound`` gives the
    dims named like a batch (``batch_dims``) that lead the inputs, where they agree (``input [batch, T]`` beside
    ``state [2, None, 4]``: drawn at 1 beside a second binding's 2 rows, ONNX Runtime's LSTM refused that set), else
    ``DEFAULT_BATCH`` (the rows of inputs that lead with an unnamed dim)."""
    batches = set(batch_dims(model))
    sizes = {
        bound[dim.value]
        for value in runtime_inputs(model)
        if value.shape is not None and value.shape.rank()
        for dim in value.shape[:1]
        if _symbolic(dim) and dim.value in batches and dim.value in bound
    }
    return sizes.pop() if len(sizes) == 1 else DEFAULT_BATCH


def _reaches_recurrent_batch(
    value: ir.Value,
    axis: int,
    rank: int,
    branch_outputs: Mapping[int, list[ir.Value]],
    seen: set,
    depth: int = 0,
    carried: Collection[tuple[int, int]] = (),
    steps: bool = False,
) -> bool:
    """Whether ``value``'s ``axis`` (of ``rank``) reaches a recurrent op's batch axis (``recurrent_batch_axes``), or a
    ``Concat`` along another axis beside a value whose same axis is an input's leading one (``carried``, as
    ``(id(value), axis)``: ``_leading_axes``); with ``steps``, its steps axis instead (``recurrent_step_inputs``)."""
    if depth > 32 or (id(value), axis, rank) in seen:
        return False
    seen.add((id(value), axis, rank))
    follow = partial(
        _reaches_recurrent_batch,
        branch_outputs=branch_outputs,
        seen=seen,
        depth=depth + 1,
        carried=carried,
        steps=steps,
    )
    if any(follow(output, axis, rank) for output in branch_outputs.get(id(value), ())):
        return True
    for node, index in value.uses():
        if not is_onnx_domain(node) or not node.outputs:
            continue
        if node.op_type in _RECURRENT:
            layout = node.attributes.get_int("layout", 0)
            # X [seq, batch, input] and initial_h/c [directions, batch, hidden]; batch first with layout=1.
            if steps and index == 0 and rank == 3 and axis == (1 if layout else 0):
                return True
            if not steps and index in (0, 5, 6) and rank == 3 and axis == (0 if layout else 1):
                return True
        elif node.op_type == "Concat" and not steps:
            # The rows of another input's leading axis, which a Concat along another axis holds them equal to: the
            # audio's ``level [None, 1]`` beside ``state [2, None, 4]``'s rows drew the state at 128, until a review
            # in session 72.
            if node.attributes.get_int("axis", 0) % rank != axis and any(
                other is not None and other is not value and (id(other), axis) in carried for other in node.inputs
            ):
                return True
        elif any(follow(out, moved, out_rank) for out, moved, out_rank in _axis_moves(node, index, axis, rank)):
            return True
    return False


# Reductions whose output keeps the axes they do not reduce (``_axis_moves`` with ``reductions``).
_REDUCTIONS = frozenset(
    {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSumExp"}
)


def _axis_moves(
    node: ir.Node, index: int, axis: int, rank: int, *, reductions: bool = False
) -> list[tuple[ir.Value, int, int]]:
    """Where ONNX ``node``, reading a value at input ``index``, carries that value's ``axis`` (of ``rank``) whole to an
    output: ``(output, its axis there, its rank)`` for each (``recurrent_batch_axes``). Through ``Identity``, ``Cast``,
    ``Unsqueeze``, ``Squeeze``, ``Transpose``, a ``Gather``, ``Slice`` or ``Split`` along other axes and, with
    ``reductions``, a reduction over other axes (``_REDUCTIONS``)."""
    if index != 0 or not node.outputs:
        return []
    op, out = node.op_type, node.outputs[0]
    if op in ("Identity", "Cast"):
        return [(out, axis, rank)]
    if op == "Unsqueeze":
        axes = _constant_ints(node.inputs[1]) if len(node.inputs) > 1 else node.attributes.get_ints("axes", None)
        if axes is not None:
            out_rank = rank + len(axes)
            kept = [position for position in range(out_rank) if position not in {a % out_rank for a in axes}]
            if len(kept) == rank:
                return [(out, kept[axis], out_rank)]
    elif op == "Squeeze":
        axes = _constant_ints(node.inputs[1]) if len(node.inputs) > 1 else node.attributes.get_ints("axes", None)
        squeezed = {a % rank for a in axes} if axes is not None else None
        if squeezed is not None and axis not in squeezed:
            return [(out, axis - sum(a < axis for a in squeezed), rank - len(squeezed))]
    elif op == "Transpose":
        perm = list(node.attributes.get_ints("perm", list(reversed(range(rank)))))
        if sorted(perm) == list(range(rank)):
            return [(out, perm.index(axis), rank)]
    elif op == "Gather":
        along = node.attributes.get_int("axis", 0) % rank
        indices = node.inputs[1] if len(node.inputs) > 1 else None
        constant = ir.convenience.get_const_tensor(indices) if indices is not None else None
        if constant is not None:
            index_rank = len(constant.shape)
        else:
            index_rank = indices.shape.rank() if indices is not None and indices.shape is not None else None
        if along != axis and index_rank is not None:
            moved = axis if axis < along else axis - 1 + index_rank
            return [(out, moved, rank - 1 + index_rank)]
    elif op in ("Slice", "Split"):
        axes = _constant_ints(node.inputs[3]) if op == "Slice" and len(node.inputs) > 3 else None
        if op == "Slice":
            starts = _constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None
            cut = None if starts is None else {a % rank for a in (axes if axes is not None else range(len(starts)))}
        else:
            cut = {node.attributes.get_int("axis", 0) % rank}
        if cut is not None and axis not in cut:
            return [(output, axis, rank) for output in node.outputs]
    elif reductions and op in _REDUCTIONS:
        axes = _constant_ints(node.inputs[1]) if len(node.inputs) > 1 else node.attributes.get_ints("axes", None)
        reduced = {a % rank for a in axes} if axes else None  # none: every axis (or none, with noop_with_empty_axes)
        if reduced is not None and axis not in reduced:
            if node.attributes.get_int("keepdims", 1):
                return [(out, axis, rank)]
            return [(out, axis - sum(a < axis for a in reduced), rank - len(reduced))]
    return []


def _leading_axes(model: ir.Model) -> set[tuple[int, int]]:
    """``(id(value), axis)`` of each value whose ``axis`` is an input's leading one, carried whole (``_axis_moves``,
    reductions too): the rows a ``Concat`` along another axis holds another value's axis equal to
    (``_reaches_recurrent_batch``). Only leading axes drawn as the rows (``_recurrent_batch_size``): with no name or
    size, named like a batch (``batch_dims``), or of size 1; not a sequence-major input's steps
    (``recurrent_step_inputs``), nor a dim of another name or size (linked to it, a state was drawn at one row)."""
    batches, steps = set(batch_dims(model)), recurrent_step_inputs(model)

    def rows(dim: int | ir.SymbolicDim) -> bool:
        if isinstance(dim, int):
            return dim == 1 or dim < 0
        return not dim.value or dim.value in batches

    found: set[tuple[int, int]] = set()
    pending = [
        (value, 0, value.shape.rank())
        for value in runtime_inputs(model)
        if value.shape is not None and value.shape.rank() and value.name not in steps and rows(value.shape[0])
    ]
    while pending:
        value, axis, rank = pending.pop()
        if (id(value), axis) in found:
            continue
        found.add((id(value), axis))
        for node, index in value.uses():
            if is_onnx_domain(node):
                pending.extend(_axis_moves(node, index, axis, rank, reductions=True))
    return found


def _with_cache_lengths(
    model: ir.Model, bound: dict[str, int], fixed: Mapping[str, int], max_positions: int | None = None
) -> dict[str, int]:
    limit = longest_cache(model)
    batches = set(batch_dims(model))
    if max_positions is not None:
        limit = max_positions if limit is None else min(limit, max_positions)
        # Every length, not only the token ids': exporters name one sequence differently per input
        # (``inputs_embeds_dynamic_axes_1`` beside ``attention_mask_dynamic_axes_1``), which must stay equal.
        for name in bound:
            if name not in fixed and name not in batches:
                bound[name] = min(bound[name], max_positions)
    rows = max((size for name, size in bound.items() if name in batches), default=1)
    # The masks' lengths given first: another mask's over the same past and new tokens (named apart) follows from what
    # they give; summed before, it kept the defaults' 256 beside a given mask of 9, and ONNX Runtime refused them.
    lengths = sorted(cache_length_dims(model).items(), key=lambda item: item[0] not in fixed)
    for total, (past, sequence) in lengths:
        if total in fixed and past in bound and sequence in bound:
            # A mask's length given with one of its parts gives the other (``--dim total_sequence=9 --dim
            # sequence=4``: a past of 5, where the default 128 made inputs ONNX Runtime refused).
            if sequence in fixed and past not in fixed and fixed[total] >= bound[sequence]:
                bound[past] = fixed[total] - bound[sequence]
            elif past in fixed and sequence not in fixed and fixed[total] > bound[past]:
                bound[sequence] = fixed[total] - bound[past]
            elif past not in fixed and sequence not in fixed and fixed[total] > 0:
                # The mask's length alone (``--dim total_sequence=9``): split between past and new tokens as their
                # defaults are (a past of 5, 4 new tokens), one new token a row where the model takes no more after a
                # past. Left at their defaults, they were 256 beside a mask of 9, which ONNX Runtime refused.
                if rows > 1 and bound[past] and chunks_only_at_batch_one(model):
                    bound[sequence] = 1
                else:
                    share = bound[sequence] / max(1, bound[past] + bound[sequence])
                    bound[sequence] = max(1, int(fixed[total] * share))
                bound[past] = fixed[total] - bound[sequence]
            continue
        if total in fixed or past not in bound or sequence not in bound:
            continue
        if rows > 1 and bound[past] and sequence not in fixed and chunks_only_at_batch_one(model):
            bound[sequence] = 1  # several rows after a past: one decode step each, as served
        if limit is not None and bound[past] + bound[sequence] > limit:
            # A decoder whose rotary or position tables end at `limit` positions (ONNX Runtime GenAI's,
            # GPT-J's) refuses longer: past and new tokens shrink alike, where the user did not fix them.
            # At least one new token; the past takes what is left, down to none (a prefill): a past of
            # one beside one new token would pass `--max-sequence 1`.
            scale = limit / (bound[past] + bound[sequence])
            if sequence not in fixed:
                bound[sequence] = max(1, int(bound[sequence] * scale))
            if past not in fixed:
                bound[past] = min(bound[past], max(0, limit - bound[sequence]))
        bound[total] = bound[past] + bound[sequence]
    if limit is not None:
        _positions_within(model, bound, fixed, limit)
    return bound


def _positions_within(model: ir.Model, bound: dict[str, int], fixed: Mapping[str, int], limit: int) -> None:
    """Bound the length dims of a ``position_ids`` input outside a cache (a model without a past) by ``limit``.

    Its positions index a table of ``limit`` rows, and a fused ``RotaryEmbedding`` reading that table as its
    caches refuses a longer sequence, even one whose positions stay inside it; the original model reads no
    more rows at any position a real sequence has.
    """
    in_caches = {dim for total, pair in cache_length_dims(model).items() for dim in (total, *pair)}
    batches = set(batch_dims(model))
    for value in runtime_inputs(model):
        if not _POSITION_IDS_NAME.search(value.name) or value.shape is None:
            continue
        for dim in value.shape:
            name = dim.value if _symbolic(dim) else None
            if name in bound and name not in fixed and name not in in_caches and name not in batches:
                bound[name] = min(bound[name], limit)


def _named_dim_sizes(model: ir.Model, inputs: Mapping[str, np.ndarray]) -> Iterator[tuple[str, str, int]]:
    """``(dim name, "input[axis]", size)`` for each named symbolic input dim ``inputs`` give an array for."""
    for value in runtime_inputs(model):
        array = inputs.get(value.name)
        if not isinstance(array, np.ndarray) or value.shape is None or len(value.shape) != array.ndim:
            continue
        for axis, dim in enumerate(value.shape):
            if _symbolic(dim) and dim.value:
                yield dim.value, f"{value.name}[{axis}]", int(np.shape(array)[axis])


def dims_from_inputs(model: ir.Model, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The size each named symbolic input dim has in ``inputs``."""
    dims: dict[str, int] = {}
    for name, _, size in _named_dim_sizes(model, inputs):
        dims.setdefault(name, size)
    return dims


def dims_of_several_sizes(model: ir.Model, inputs: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
    """The named symbolic input dims that ``inputs`` hold at more than one size, each with where
    (``x[2]=48``, ``x[3]=192``): Paddle's exporter names both a height and a width ``?``, and ONNX Runtime
    runs any size at each. ``dims_from_inputs`` takes the first size for such a name."""
    seen: dict[str, list[tuple[str, int]]] = {}
    for name, where, size in _named_dim_sizes(model, inputs):
        seen.setdefault(name, []).append((where, size))
    return {
        name: [f"{where}={size}" for where, size in places]
        for name, places in seen.items()
        if len({size for _, size in places}) > 1
    }


def alternate_binding(
    model: ir.Model,
    overrides: Mapping[str, int] | None = None,
    *,
    longer: bool = False,
    base: Mapping[str, int] | None = None,
    max_positions: int | None = None,
    exact_half: bool = False,
) -> dict[str, int] | None:
    """A second binding that changes every dim not fixed by ``overrides``, or None if there is none.

    From ``base`` (the sizes of the first verification set; the defaults where it does
    not say), batch-like dims grow by one; others go to about half (half plus one, or with
    ``exact_half`` half, for a detector whose feature maps must halve evenly: YOLO's 65 × 65
    fails its upsampling Concat, 64 × 64 runs), which stays inside
    position tables sized for the default, or with ``longer`` to twice the larger of
    ``base`` and the default, plus one (past a sliding window or a table of that size);
    token counts stay within ``max_positions`` (``bind_dims``) and the tables that bound a decoder's
    past and new tokens (``longest_cache``); where those leave a longer length as the first's, the
    binding is the shorter one.
    """
    overrides = dict(overrides or {})
    defaults = bind_dims(model, overrides, max_positions=max_positions)
    bound = dict(defaults)
    bound.update({name: size for name, size in (base or {}).items() if name in bound and name not in overrides})
    fixed = _fixed_dims(model)
    free = [name for name in bound if name not in overrides and name not in fixed]
    if not free:
        return None
    alternate = dict(bound)
    named = set(batch_dims(model))
    # A batch only guessed (no dim named like one) is a length in the shorter binding: it halves, where the
    # original refused the longer one (a 128-row table read by the leading ``frames`` of ``x [frames, 16]``).
    batches = _batch_like_dims(model) if longer or named else set()
    for name in free:
        if name in batches:
            alternate[name] = bound[name] + 1
        elif longer:
            alternate[name] = 2 * max(bound[name], defaults[name]) + 1
        elif exact_half:
            alternate[name] = max(bound[name] // 2, 1)
        else:
            alternate[name] = bound[name] // 2 + 1
    alternate = _with_cache_lengths(model, alternate, {**fixed, **overrides}, max_positions)
    if longer and any(alternate[name] == bound[name] for name in free if name not in batches):
        # A table the model reads (GPT-2's 128-row wpe) left a length as the first binding's, where a
        # rewrite baking that length in would pass: the shorter binding changes it.
        return alternate_binding(model, overrides, base=base, max_positions=max_positions)
    return alternate


def lengths_apart(
    model: ir.Model,
    binding: Mapping[str, int],
    first: Mapping[str, int],
    overrides: Mapping[str, int] | None = None,
    max_positions: int | None = None,
    halving: bool = False,
) -> list[dict[str, int]]:
    """``binding`` with the free lengths drawn apart, each way to try in turn; empty where fewer than two are free
    (and fewer than two batches are named apart: ``_batches_apart``). With ``halving`` (``alternate_binding``'s
    ``exact_half``: a detector's feature maps must halve evenly, and 64 beside 62 fails as 65 did), each next group
    is half the last instead.

    Generated bindings give every free length one size (128, then 257): an encoder-decoder's encoder and decoder
    lengths, a query's and a key's, an image's height and width were equal in every set, and a rewrite that read
    one for the other verified. Exporters also name one length differently per input
    (``input_ids_dynamic_axes_1`` beside ``attention_mask_dynamic_axes_1``; a first decoder step's
    ``total_sequence`` mask beside its ``sequence`` tokens), and ONNX Runtime refuses such a model where those
    differ. So the ways, in order: every free length at a size of its own; the lengths only inputs named
    ``*encoder*``/``*cross*`` hold apart from the others; each length apart from all the others (up to four
    lengths). Within a group the lengths keep ``binding``'s size; each other group is 2 shorter than the last (1
    where one input holds two of the lengths, an image's height and width: one odd beside one even, as a stride-2
    SAME padding differs by parity, and 257 beside 255 let a rewrite reading the height's for the width verify),
    never the size ``first`` gives a length (``_sizes_apart``); a decoder's mask of past plus new tokens follows
    them (``cache_length_dims``)."""
    overrides = dict(overrides or {})
    fixed = _fixed_dims(model)
    derived = set(cache_length_dims(model))
    batches = _batch_like_dims(model) | set(batch_dims(model))
    lengths = [
        name
        for name in symbolic_dims(model)
        if name in binding and name not in overrides and name not in fixed and name not in derived
        if name not in batches
    ]
    if len(lengths) < 2:
        return _batches_apart(model, binding, {**fixed, **overrides}, [])
    held: dict[str, set[bool]] = {}
    for value in runtime_inputs(model):
        for dim in value.shape or ():
            if _symbolic(dim) and dim.value in lengths:
                held.setdefault(dim.value, set()).add(bool(_ENCODER_NAME.search(value.name)))
    encoder = [name for name in lengths if held.get(name) == {True}]
    step = 1 if _held_together(model, lengths) else 2
    partitions = [[[name] for name in lengths], [encoder, [n for n in lengths if n not in encoder]]]
    if len(lengths) <= _LENGTHS_EACH_APART:
        partitions += [[[name], [n for n in lengths if n != name]] for name in lengths]
    found, seen = [], set()
    for groups in partitions:
        groups = [group for group in groups if group]
        key = frozenset(frozenset(group) for group in groups)
        if len(groups) < 2 or key in seen:
            continue
        seen.add(key)
        apart = _sizes_apart(binding, first, groups, halving, step)
        if apart is None:
            continue
        apart = _with_cache_lengths(model, apart, {**fixed, **overrides}, max_positions)
        if len({apart[group[0]] for group in groups}) == len(groups) and apart not in found:
            found.append(apart)
    return _batches_apart(model, binding, {**fixed, **overrides}, found)


def _batches_apart(
    model: ir.Model, binding: Mapping[str, int], taken: Mapping[str, int], ways: list[dict[str, int]]
) -> list[dict[str, int]]:
    """``ways`` (or ``binding`` where there are none) with the batches named apart grown apart (each next one row more
    than the last), then ``ways`` as they are; ``ways`` alone where fewer than two free dims are named like a batch.

    A two-tower model's ``text_batch_size`` and ``image_batch_size`` each grew by one, equal in every set, and a
    rewrite that read one for the other verified. Where ONNX Runtime refuses them apart (one batch named per input),
    they stay equal in the ways after."""
    batches = [name for name in batch_dims(model) if name in binding and name not in taken]
    if len(batches) < 2:
        return ways
    grown = {name: binding[name] + index for index, name in enumerate(batches)}
    return [{**way, **grown} for way in ways or [dict(binding)]] + ways


# The most free lengths each tried apart from all the others (``lengths_apart``): each try the original refuses
# is one more run of it.
_LENGTHS_EACH_APART = 4


def _sizes_apart(
    binding: Mapping[str, int],
    first: Mapping[str, int],
    groups: Sequence[Sequence[str]],
    halving: bool = False,
    step: int = 2,
) -> dict[str, int] | None:
    """``binding`` with each of ``groups`` at one size of its own: the first group's first length's, each next
    ``step`` shorter than the last (with ``halving``, half the last; never one ``first`` gives a length of the
    group); None where that reaches 1 (a length of one broadcasts) where ``binding`` gave more."""
    apart, taken = dict(binding), set()
    for group in groups:
        size = binding[group[0]]
        while size in taken or any(size == first.get(name) for name in group):
            size = size // 2 if halving else size - step
        # A length of one broadcasts against any other: ONNX Runtime ran three tokens beside a [batch, 1] mask, a set
        # that holds neither lengths apart nor a padded row, taken for the second binding in place of equal lengths.
        if size < 1 or size == 1 < binding[group[0]]:
            return None
        apart.update(dict.fromkeys(group, size))
        taken.add(size)
    return apart


def guessed_batch_dims(model: ir.Model) -> list[str]:
    """The dims taken for a batch where none is named like one (``_batch_like_dims``: Paddle's
    ``DynamicDimension.0``, tf2onnx's ``unk__214``), in input order; empty where one is named so."""
    if batch_dims(model):
        return []
    guessed = _batch_like_dims(model)
    return [name for name in symbolic_dims(model) if name in guessed]


def image_batch_dims(model: ir.Model) -> set[str]:
    """The guessed batches (``guessed_batch_dims``) that lead an image's or a video's input, rank 4 or 5 with a fixed
    number of channels on axis 1 (``x [DynamicDimension.0, 3, 48, W]``), or 1 to 4 of them on the last axis (NHWC:
    tf2onnx's ``input [unk__614, unk__615, unk__616, 3]`` of a Keras model, bound at 128 images of 128 × 128 until a
    review): NCHW's N (NHWC's) is a batch whatever its name, and is bound as one (1, then 2), not as a length. Bound at
    128 (and 129 in the second binding), Paddle's PP-OCRv6 recognizer verified 128 images and took 6 minutes where 35
    s do, and ``--static-shapes`` fixed a batch of 128 (a review); a leading dim of another input (``x [frames,
    16]``) may be a length and stays bound as one."""
    guessed = set(guessed_batch_dims(model))
    return {
        value.shape[0].value
        for value in runtime_inputs(model)
        if value.shape is not None
        and len(value.shape) in (4, 5)
        and _symbolic(value.shape[0])
        and value.shape[0].value in guessed
        and (
            (isinstance(value.shape[1], int) and value.shape[1] > 0)
            or (isinstance(value.shape[-1], int) and 0 < value.shape[-1] <= _MOST_CHANNELS_LAST)
        )
    }


# The most channels an image's last axis holds (NHWC: gray, RGB, RGBA); a wider fixed last axis may be features.
_MOST_CHANNELS_LAST = 4


def _batch_like_dims(model: ir.Model) -> set[str]:
    """The input dims to treat as a batch: those named like one; where no dim is (Paddle's
    ``p2o.DynamicDimension.0``, tf2onnx's ``unk__214``), each symbolic dim that leads an input of
    rank 2 or more and stands nowhere else in any input. A batch grows by one in a second binding,
    not to a length past the tables: 257 images instead of 2 is gigabytes and minutes."""
    named = set(batch_dims(model))
    if named:
        return named
    return _unnamed_leading_dims(model, per_row_scalars=False)


# Dims named like a length (a rank-2 ``[sequence, hidden]`` input without a batch): never taken for a batch.
_LENGTH_NAME = re.compile(r"seq|length|len$|time|token|position|past|total|width|height", re.IGNORECASE)


def verification_bindings(
    model: ir.Model, dims: Mapping[str, int] | None = None, max_positions: int | None = None
) -> list[Mapping[str, int] | None]:
    """The bindings of the input sets verification generates: the first (twice, for the padded
    copy, when an input looks like a mask) and the second, longer one (see ``alternate_binding``)."""
    first = bind_dims(model, dims, max_positions=max_positions)
    bindings: list[Mapping[str, int] | None] = [first]
    if any(_is_mask(value) for value in runtime_inputs(model)):
        bindings.append(first)
    alternate = alternate_binding(model, dims, longer=True, max_positions=max_positions)
    if alternate is not None:
        bindings.append(alternate)
    return bindings


def batch_dims(model: ir.Model) -> list[str]:
    """Names of the symbolic input dims that look like a batch axis (``batch``, ``N``...). A one-letter ``N`` or
    ``B`` is one unless an input holds it after its first axis beside another dim named like a batch: onnx-asr's
    ``waveforms [batch_size, N]`` names its samples so, and bound as a batch (1) the audio was one sample long;
    NCHW's ``N`` leads its input, and an LSTM's state ``h0 [1, B, 16]`` beside ``x [B, T, 8]`` holds no other
    (read as no batch, its ``--batch`` was ignored and 128 rows were timed)."""
    later = {
        dim.value
        for value in runtime_inputs(model)
        if value.shape is not None
        for dim in list(value.shape)[1:]
        if _symbolic(dim)
        and dim.value
        and any(
            _symbolic(other) and other.value and other.value != dim.value and _BATCH_NAME.search(other.value)
            for other in value.shape
        )
    }
    return [
        name
        for name in symbolic_dims(model)
        if _BATCH_NAME.search(name) and not (_ONE_LETTER_BATCH.match(name) and name in later)
    ]


def parse_dim_flags(flags: list[str] | None) -> dict[str, int]:
    """Parse ``NAME=VALUE`` strings from the command line into a dict (VALUE in ASCII digits, 1 to 2^63 - 1)."""
    dims: dict[str, int] = {}
    for flag in flags or []:
        name, sep, value = flag.partition("=")
        # str.isdigit() accepts "²", which int() refuses, and int() reads other scripts' digits.
        if not sep or not name.strip() or not re.fullmatch(r"[0-9]+", value.strip()) or int(value) <= 0:
            raise InputSpecError(f"--dim {flag}: expected NAME=VALUE with a positive integer VALUE")
        if int(value) > MAX_DIM:
            raise InputSpecError(f"--dim {flag}: larger than an ONNX dimension can be (2^63 - 1)")
        if name.strip() in dims and dims[name.strip()] != int(value):
            raise InputSpecError(f"--dim {name.strip()} given twice ({dims[name.strip()]} and {int(value)}): give one")
        dims[name.strip()] = int(value)
    return dims


def load_inputs(
    path: str | os.PathLike, model: ir.Model, *, flag: str = "--inputs", notes: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Read one input set: an .npz file whose keys are the graph's input names, or a folder with one
    .npy file per input (file stem = input name); ``flag`` names it in errors.

    The file is read as a zip of .npy arrays, never unpickled. Anything else (an empty,
    truncated or corrupt file, a member that is no .npy array, object arrays, arrays that
    declare more than ``MAX_INPUT_BYTES``) is an ``InputSpecError`` in one line; then
    ``check_inputs`` checks the arrays against the model (mending casts and token type
    ids, with ``notes``). A folder of .npz files is many input sets: ``open_samples`` reads it.
    """
    source = f"{flag} {path}"
    if Path(path).is_dir():
        return check_inputs(_read_input_folder(Path(path), source), model, source, notes)
    return check_inputs(_read_npz(Path(path), source), model, source, notes)


def data_folder_files(path: Path, source: str) -> list[Path]:
    """The ``.npz``/``.npy`` files of a data folder, sorted; one of those names that is not a readable regular file
    (a link whose target is missing, a folder, a device) is refused: skipping it would drop its samples unsaid."""
    try:
        files = sorted(p for p in path.iterdir() if p.suffix in DATA_FOLDER_SUFFIXES)
    except OSError as error:
        raise InputSpecError(f"{source}: cannot read the folder ({error.strerror or one_line(error)})") from error
    for file in files:
        if not file.is_file():
            what = "a link whose target is missing" if file.is_symlink() and not file.exists() else "not a regular file"
            raise InputSpecError(f"{source}: {file.name} is {what}; remove it from the folder or restore it")
    return files


def _read_input_folder(path: Path, source: str) -> dict[str, np.ndarray]:
    """One input set from a folder of .npy files, loaded (within ``MAX_INPUT_BYTES``)."""
    files = data_folder_files(path, source)
    if not files:
        raise InputSpecError(f"{source}: is a folder, not a .npz file, and holds no .npy file per input")
    if any(p.suffix == ".npz" for p in files):
        raise InputSpecError(
            f"{source}: a folder of .npz files is many input sets (which --calibration and compare take); "
            "give one input set: an .npz file or a folder with one .npy per input"
        )
    arrays = _read_npy_folder(files, source)
    total = sum(a.nbytes for a in arrays.values())
    if total > MAX_INPUT_BYTES:
        raise InputSpecError(
            f"{source}: its arrays take {format_bytes(total)}, more than graphopt's limit of "
            f"{format_bytes(MAX_INPUT_BYTES)}: give fewer or smaller samples"
        )
    return {name: np.array(a) for name, a in arrays.items()}


_NPY_MAGIC = b"\x93NUMPY"


def _read_npz(path: Path, source: str) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_NPY_MAGIC))
    except FileNotFoundError as error:
        raise InputSpecError(f"{source}: no such file") from error
    except IsADirectoryError as error:
        raise InputSpecError(f"{source}: is a folder, not a .npz file") from error
    except OSError as error:
        raise InputSpecError(f"{source}: cannot read it ({error.strerror or one_line(error)})") from error
    unreadable = f"{source}: not a readable .npz file"
    if not head:
        raise InputSpecError(f"{unreadable} (the file is empty)")
    if head.startswith(_NPY_MAGIC):  # a .npy file holds one array, not named inputs
        raise InputSpecError(f"{source}: a single array, not a .npz file with one array per input name")
    if not head.startswith(b"PK"):
        raise InputSpecError(
            f"{unreadable} (not a zip archive of .npy arrays, as numpy.savez writes, one per graph input name)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = [_member_header(archive, info, unreadable) for info in archive.infolist()]
            names = [name for name, *_ in members]
            repeated = next((name for name in names if names.count(name) > 1), None)
            if repeated is not None:
                raise InputSpecError(f"{unreadable} (it holds two arrays named '{repeated}')")
            total = sum(nbytes for *_, nbytes in members)
            if total > MAX_INPUT_BYTES:
                raise InputSpecError(
                    f"{source}: its arrays take {format_bytes(total)}, more than graphopt's limit of "
                    f"{format_bytes(MAX_INPUT_BYTES)}: give fewer or smaller samples"
                )
            arrays = {}
            for name, info, *_ in members:
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as error:
        # zipfile's own words ("Bad CRC-32 for file 'x.npy'"); numpy's are not shown, as
        # some of them advise loading pickles.
        detail = one_line(error) if isinstance(error, (zipfile.BadZipFile, zlib.error, EOFError)) else "data ends early"
        raise InputSpecError(f"{unreadable} (truncated or corrupt: {detail})") from error
    except (RuntimeError, NotImplementedError) as error:
        # zipfile raises these for encrypted members and compression methods it lacks.
        raise InputSpecError(f"{unreadable} ({one_line(error)}; save it with numpy.savez)") from error
    return arrays


def _member_header(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, unreadable: str
) -> tuple[str, zipfile.ZipInfo, int]:
    """(input name, member, bytes of data) of one .npz member, from its .npy header alone."""
    if not info.filename.endswith(".npy"):
        raise InputSpecError(f"{unreadable} ('{info.filename}' is not a .npy array; an .npz holds only arrays)")
    name = info.filename[: -len(".npy")]
    with archive.open(info) as member:
        try:
            shape, _, dtype = _npy_header(member)
        except ValueError as error:
            raise InputSpecError(f"{unreadable} ('{info.filename}' is not a .npy array)") from error
        header_bytes = member.tell()
    if dtype.hasobject:
        raise InputSpecError(
            f"{unreadable} ('{name}' holds Python objects, which graphopt does not unpickle: save numeric arrays)"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > info.file_size - header_bytes:
        declared = f"{dtype}[{', '.join(str(d) for d in shape)}]"
        raise InputSpecError(
            f"{unreadable} (truncated or corrupt: '{name}' declares {declared} "
            f"but holds {info.file_size - header_bytes} bytes of data)"
        )
    return name, info, nbytes


def _npy_header(member: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of the .npy array ``member`` is positioned at; after it, at its data."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version in ((2, 0), (3, 0)):  # 3.0 only differs in allowing UTF-8 field names
        return np.lib.format.read_array_header_2_0(member)
    raise ValueError(f"format version {version}")


def as_arrays(values: Any, source: str) -> dict[str, np.ndarray]:
    """A mapping of input names to array-likes (an API argument) as arrays; ``InputSpecError`` for anything else.

    Values become arrays of numbers, booleans or strings; ``None``, ragged lists and other
    Python objects are refused in one line, naming ``source``.
    """
    if not isinstance(values, Mapping):
        raise InputSpecError(
            f"{source}: expected a mapping of input names to arrays, or an .npz path, not {type(values).__name__}"
        )
    arrays = {}
    for name, value in values.items():
        if not isinstance(name, str):
            raise InputSpecError(f"{source}: input names are strings, not {name!r}")
        if value is None:
            raise InputSpecError(f"{source}: '{name}' is None, not an array")
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as error:
            raise InputSpecError(f"{source}: '{name}' is not an array (rows of different lengths or types)") from error
        if array.dtype.hasobject and not all(isinstance(item, str) for item in array.flat):
            kind = type(value).__name__ if array.ndim == 0 else "object"
            raise InputSpecError(f"{source}: '{name}' holds Python objects ({kind}), not numbers or strings")
        arrays[name] = array
    return arrays


def refuse_unreadable_data(data: Any, flag: str) -> None:
    """Refuse data (``--inputs``, ``--calibration``) given as an empty path, which named the current folder
    (``--calibration "$DATA"`` with ``DATA`` unset read every .npz there), or as a path to a pipe or a device: an
    .npz is a zip archive, read by seeking, and a pipe with no writer would block the run before it starts; and a
    data folder with a data file name that is no regular file (``data_folder_files``). Data in any other form
    (arrays, an iterable, None) is left to its reader."""
    if not isinstance(data, (str, os.PathLike)):
        return
    if not os.fspath(data):  # Path("") is the current folder
        raise InputSpecError(f"{flag} '': an empty path; give an .npz file or a folder")
    path = Path(data)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise InputSpecError(f"{flag} {data}: not a regular file or folder (a pipe or a device); give an .npz file")
    if path.is_dir():
        data_folder_files(path, f"{flag} {data}")


def refuse_dims_unlike(dims: Mapping[str, int] | None, held: Mapping[str, int], where: str) -> None:
    """Refuse ``--dim`` sizes that the given inputs, which hold the dims ``held``, contradict: the inputs
    bind the dims, so a different ``--dim`` would be silently dropped. ``where`` names the inputs."""
    unlike = [name for name, size in (dims or {}).items() if name in held and held[name] != size]
    if unlike:
        asked = " ".join(f"{name}={dims[name]}" for name in unlike)
        given = ", ".join(f"{name}={held[name]}" for name in unlike)
        raise InputSpecError(f"--dim {asked}: {where} have {given}; drop --dim or give inputs of that size")


def check_inputs(
    arrays: Mapping[str, np.ndarray], model: ir.Model, source: str, notes: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Check that ``arrays`` has every graph input with the right dtype and rank; return them in input order.

    Refused, naming ``source``: a missing input, a value that is not an array, a wrong
    dtype or rank, a value for an input that has a default value (an initializer: graphopt
    runs models with their own defaults, so the value would be dropped), a float input
    that is all NaN, and inputs that are all empty (nothing to verify on).

    With ``notes`` (a list the caller shows), two mistakes are mended instead, each with
    a note: an integer (or boolean) array of another width is cast when every value
    survives the cast (int32 token ids for an int64 input; a cast that would change a value
    is refused in one line, and floats are never cast), and
    a missing input that is safe to zero (``zero_fillable``: token type / segment ids) is
    filled with zeros of the shape the other inputs give its dims; a causal LM's text
    (``input_ids``, an attention mask or not) is fed as prefills, and a tokenizer's 0/1 mask for one the graph
    wants in another form is made that form (``optimizer.tokenizer_inputs.mend_text_inputs``). Arrays that match no
    graph input (a misspelt name) are noted as ignored. An array in the other byte order (``>f4``, saved on a
    big-endian machine) holds the same values: it is read in this machine's order, not refused.
    """
    defaults = [value.name for value in model.graph.inputs if value.name in model.graph.initializers]
    overridden = next((name for name in defaults if name in arrays), None)
    if overridden is not None:
        raise InputSpecError(
            f"{source}: '{overridden}' has a default value in the model (an initializer), which graphopt "
            f"verifies and optimizes with: remove '{overridden}' from the inputs"
        )
    required = [value.name for value in runtime_inputs(model)]
    missing = [name for name in required if name not in arrays]
    if notes is not None:
        from optimizer.tokenizer_inputs import mend_text_inputs  # lazily: a pass imported alone loads none of it

        arrays, missing = mend_text_inputs(model, arrays, required, missing, source, notes)
    fillable = [v for v in runtime_inputs(model) if v.name in missing and notes is not None and zero_fillable(v)]
    if len(fillable) < len(missing):
        first = next(name for name in missing if name not in {v.name for v in fillable})
        from optimizer.tokenizer_inputs import text_not_taken  # lazily, as above

        raise InputSpecError(
            f"{source}: no array for graph input '{first}' (keys must be the input names: {', '.join(required)})"
            + (text_not_taken(model, arrays, missing) if notes is not None else "")
        )
    checked: dict[str, np.ndarray] = {}
    for value in runtime_inputs(model):
        if value.name in missing:
            continue
        array = arrays[value.name]
        if not isinstance(array, np.ndarray):
            raise InputSpecError(f"{source}: '{value.name}' is a {type(array).__name__}, not an array")
        if not array.dtype.isnative:  # big-endian '>f4' (saved on such a machine) is float32: the same values
            array = array.astype(array.dtype.newbyteorder("="))
        if value.dtype is not None and value.dtype != ir.DataType.STRING and array.dtype != value.dtype.numpy():
            if notes is None:
                raise InputSpecError(
                    f"{source}: '{value.name}' is {array.dtype}, the model expects {value.dtype.numpy()}"
                )
            array = _cast_exactly(array, value, source, notes)
        if value.shape is not None and len(value.shape) != array.ndim:
            raise InputSpecError(
                f"{source}: '{value.name}' has rank {array.ndim}, the model expects {len(value.shape)}"
            )
        if array.dtype.kind in "fc" and array.size and np.isnan(array).all():
            raise InputSpecError(f"{source}: '{value.name}' is all NaN: nothing can be checked on it")
        if value.dtype == ir.DataType.STRING and (array.dtype.kind not in "OU" or array.dtype.itemsize == 0):
            # numpy bytes ('S') reach ONNX Runtime as one run of bytes: b"Hello", b"WORLD" read "HelloWORLD".
            shown = {"S": "bytes (numpy 'S'; give str)", "U": "strings of no length"}.get(array.dtype.kind)
            raise InputSpecError(f"{source}: '{value.name}' is {shown or array.dtype}, the model expects strings")
        _refuse_other_fixed_dims(value, array, source)
        checked[value.name] = array
    for value in fillable:
        checked[value.name] = _zeros_for(value, model, checked, source)
        _add_note(notes, f"'{value.name}' missing: filled with zeros ({_ZERO_FILL_MEANING})")
    unused = [name for name in arrays if name not in required and name not in defaults]
    if unused and notes is not None:
        # Each key as its repr: a newline in one split the warning, an escape sequence reached the terminal (review s75
        # late75d).
        names = ", ".join(repr(name) for name in unused)
        _add_note(notes, f"{names} {'matches' if len(unused) == 1 else 'match'} no graph input: ignored")
    shaped = [checked[name] for name in required if name in checked and checked[name].ndim]
    if shaped and all(array.size == 0 for array in shaped):
        raise InputSpecError(f"{source}: every array is empty: there are no samples to check anything on")
    bound = dims_from_inputs(model, checked)
    if empty := next((name for name in batch_dims(model) if bound.get(name) == 0), None):
        # A model written or verified at batch 0 checks nothing (and --static-shapes would fix it there).
        raise InputSpecError(f"{source}: the inputs have {empty}=0: there are no samples to check anything on")
    return {name: checked[name] for name in required}


def _refuse_other_fixed_dims(value: ir.Value, array: np.ndarray, source: str) -> None:
    """``InputSpecError`` where ``array`` differs from a size ``value`` fixes past axis 0 (ONNX Runtime refuses such
    inputs; axis 0 may hold many samples, each run one at a time)."""
    for axis, dim in enumerate(value.shape or ()):
        if axis and isinstance(dim, int) and dim >= 0 and array.shape[axis] != dim:
            raise InputSpecError(
                f"{source}: '{value.name}' has {array.shape[axis]} on axis {axis}, where the model fixes {dim}"
            )


def constant_inputs_note(arrays: Mapping[str, np.ndarray]) -> str | None:
    """A note naming the float inputs (masks aside) that hold one value repeated (``make-inputs``' zeros, a past of
    zeros, a placeholder), or None: a rewrite wrong wherever other values go could pass verification on them, even
    beside token ids that vary."""
    constant = [
        name
        for name, array in arrays.items()
        if np.asarray(array).dtype.kind == "f"
        and np.size(array) > 1
        and not _MASK_NAME.search(name)
        and not _varies(np.asarray(array))
    ]
    if not constant:
        return None
    return (
        f"{quoted_names(constant)} {'holds' if len(constant) == 1 else 'hold'} one value repeated (zeros from "
        "make-inputs?): a rewrite that is wrong for other values could pass verification on them alone"
    )


def quoted_names(names: Sequence[str]) -> str:
    """The first three of ``names`` quoted, and how many more, for a note."""
    return ", ".join(f"'{name}'" for name in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _varies(array: np.ndarray) -> bool:
    flat = array.reshape(-1)
    return bool(np.any(flat != flat[0]))


# Inputs that may be left out of user data and filled with zeros. Zero is the value a
# tokenizer itself writes for them when it encodes one sentence (segment A), so a model
# fed zeros computes what it computes on such text. Nothing else is zero-filled: a zero
# attention mask hides every token, zero token ids are one repeated token, zero position
# ids put every token at one position, and a zero float input is no sample at all.
_ZERO_SAFE_NAME = re.compile(r"token_type|segment_id|type_ids", re.IGNORECASE)
_ZERO_FILL_MEANING = "token type 0: one segment, as a tokenizer writes for a single sentence"


def zero_fillable(value: ir.Value) -> bool:
    """Whether a graph input may be left out of user data and filled with zeros: an integer tensor
    named like token type or segment ids (see ``_ZERO_SAFE_NAME`` for why only these)."""
    dtype = value.dtype
    return (
        isinstance(value.type, ir.TensorType)
        and dtype is not None
        and dtype.is_integer()
        and _ZERO_SAFE_NAME.search(value.name) is not None
    )


def _zeros_for(value: ir.Value, model: ir.Model, given: Mapping[str, np.ndarray], source: str) -> np.ndarray:
    """Zeros of ``value``'s shape, its symbolic dims sized as ``given`` binds them."""
    bound = dims_from_inputs(model, given)
    # A fixed batch the given arrays hold several of (calibration for a model that fixes its batch): as many rows.
    shapes = {v.name: v.shape for v in model.graph.inputs if v.shape is not None and v.shape.rank()}
    rows = {
        np.shape(array)[0]
        for name, array in given.items()
        if name in shapes and np.ndim(array) and isinstance(shapes[name][0], int)
    }
    shape = []
    for axis, dim in enumerate(value.shape if value.shape is not None else [None]):
        if axis == 0 and isinstance(dim, int) and dim > 0 and len(rows) == 1 and min(rows) % dim == 0:
            shape.append(min(rows))
        elif isinstance(dim, int) and dim >= 0:
            shape.append(dim)
        elif _symbolic(dim) and dim.value in bound:
            shape.append(bound[dim.value])
        else:
            raise InputSpecError(
                f"{source}: no array for graph input '{value.name}', and its shape cannot be told from the other "
                "inputs to fill it with zeros: give it"
            )
    return np.zeros(shape, dtype=value.dtype.numpy())


def _cast_exactly(array: np.ndarray, value: ir.Value, source: str, notes: list[str]) -> np.ndarray:
    """``array`` cast to ``value``'s dtype, with a note, if every value survives the cast; else ``InputSpecError``."""
    target = np.dtype(value.dtype.numpy())
    refused = f"{source}: '{value.name}' is {array.dtype}, the model expects {target}"
    # Integers and booleans only: a float array cast to another width (float64 data for a
    # float32 input) changes values almost always, and a float holding ids is a mistake upstream.
    if array.dtype.kind not in "biu" or target.kind not in "biu":
        raise InputSpecError(refused)
    if target.kind == "b":
        outside = (array != 0) & (array != 1)
    elif array.dtype.kind == "b" or not array.size:
        outside = np.zeros(array.shape, bool)
    else:  # compared as Python ints: uint64 and int64 do not fit in one numpy dtype
        low, high = int(np.iinfo(target).min), int(np.iinfo(target).max)
        outside = (array < low) if int(array.min()) < low else np.zeros(array.shape, bool)
        if int(array.max()) > high:
            outside = outside | (array > high)
    if outside.any():
        was = array.ravel()[int(np.argmax(outside.ravel()))].item()
        raise InputSpecError(
            f"{refused}, and {was} does not fit in {target.name}: convert it yourself (.astype({target.name})) "
            "if that is what you mean"
        )
    cast = array.astype(target)
    _add_note(notes, f"'{value.name}' {array.dtype} cast to {target.name} (every value kept)")
    return cast


def _add_note(notes: list[str] | None, note: str) -> None:
    if notes is not None and note not in notes:
        notes.append(note)


def nan_note(arrays: Mapping[str, Any]) -> str | None:
    """``'x' holds 2 NaN among 6 values``: the first input that is partly NaN, or None.

    Outputs that a NaN reaches are NaN in both models and compare as equal, so
    verification checks less than the inputs' size suggests. Infinities are values
    (``-inf`` in an additive attention mask) and are not counted.
    """
    for name, array in arrays.items():
        if isinstance(array, np.ndarray) and array.dtype.kind in "fc" and array.size:
            count = int(np.count_nonzero(np.isnan(array)))
            if count:
                return f"'{name}' holds {count} NaN among {array.size} values"
    return None


def input_bytes(
    model: ir.Model, dims: Mapping[str, int] | None = None, *, unnamed_length: int = DEFAULT_SEQUENCE
) -> tuple[int, str]:
    """Bytes one generated input set takes at the binding ``dims`` (``bind_dims`` fills the rest) and with unnamed
    dims past the first axis at ``unnamed_length`` (``make_inputs``), without generating it, and the largest input as
    ``'x' float32[1, 128]``.

    Inputs graphopt cannot generate count nothing here (``make_inputs`` says why).
    """
    bound = bind_dims(model, dims)
    total, largest, described = 0, -1, ""
    batch_axes, steps = recurrent_batch_axes(model), recurrent_step_inputs(model)
    rows = _recurrent_batch_size(model, bound) if batch_axes else DEFAULT_BATCH
    for value in runtime_inputs(model):
        try:
            shape = _concrete_shape(
                value, bound, batch_axes.get(value.name, ()), unnamed_length, rows, value.name in steps
            )
        except InputSpecError:
            continue
        kind = value.type
        while isinstance(kind, ir.OptionalType):
            kind = kind.elem_type
        copies = SEQUENCE_LENGTH if isinstance(kind, ir.SequenceType) else 1
        dtype = value.dtype
        bits = _STRING_BYTES * 8 if dtype is None or dtype == ir.DataType.STRING else dtype.bitwidth
        # Python ints: a product of dims can pass int64 (numpy's prod would wrap around).
        nbytes = copies * math.ceil(math.prod(shape) * bits / 8)
        total += nbytes
        if nbytes > largest:
            name = dtype.numpy().name if dtype is not None and dtype != ir.DataType.STRING else "string"
            largest, described = nbytes, f"'{value.name}' {name}[{', '.join(str(d) for d in shape)}]"
    return total, described


def refuse_oversized(
    model: ir.Model,
    bindings: list[Mapping[str, int] | None],
    *,
    what: str = "generated inputs",
    ways_out: str = _SMALLER_WAYS_OUT,
    unnamed_length: int = DEFAULT_SEQUENCE,
) -> None:
    """``InputSpecError`` if generating one input set per binding (unnamed dims past the first axis at
    ``unnamed_length``) would take more than ``MAX_INPUT_BYTES`` in all.

    The message names the total, the largest input, and ``ways_out``.
    """
    sizes = [input_bytes(model, dims, unnamed_length=unnamed_length) for dims in bindings]
    total = sum(nbytes for nbytes, _ in sizes)
    if total > MAX_INPUT_BYTES:
        largest = max(sizes)[1]
        raise InputSpecError(
            f"{what} would take {format_bytes(total)} (largest: {largest}), more than graphopt's limit of "
            f"{format_bytes(MAX_INPUT_BYTES)}: {ways_out}"
        )


def format_bytes(nbytes: int) -> str:
    """A size for people, ``5.96 GiB``: three significant digits in the largest binary unit that fits."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    power = 0
    while power < len(units) - 1 and nbytes >= 1024 ** (power + 1):
        power += 1
    return f"{nbytes / 1024**power:.3g} {units[power]}" if power else f"{nbytes} bytes"


def make_inputs(
    model: ir.Model,
    dims: Mapping[str, int] | None = None,
    *,
    seed: int = 0,
    notes: list[str] | None = None,
    unnamed_length: int = DEFAULT_SEQUENCE,
) -> dict[str, Any]:
    """Generate one value per graph input, with symbolic dims bound by ``bind_dims``.

    Tensors are arrays, sequences lists of arrays (``GeneratedSequence``), optionals
    their value. Inputs whose values set sizes, axes or counts (see the module
    docstring) get fitting values, checked by running the model on ONNX Runtime, with
    the next candidates tried on a refusal. Raises ``InputSpecError`` for an input with
    no type or shape, for inputs that would take more than ``MAX_INPUT_BYTES``, or when
    ONNX Runtime refuses every candidate: pass real inputs with ``--inputs`` or skip
    verification with ``--no-verify``. An index input that could only be generated as one value
    repeated (``_vary_ambiguous_indices``) is said in ``notes`` (a list the caller shows) and logged. An unnamed dim
    past the first axis (not a recurrent batch) is drawn at ``unnamed_length``.
    """
    # Lazily: a pass imported alone loads none of it.
    from optimizer.compared_inputs import _hold_reductions, _select_compared_values

    refuse_oversized(model, [dims], unnamed_length=unnamed_length)
    bound = bind_dims(model, dims)
    rng = np.random.default_rng(seed)
    values = runtime_inputs(model)
    batch_axes, steps = recurrent_batch_axes(model), recurrent_step_inputs(model)
    rows = _recurrent_batch_size(model, bound) if batch_axes else DEFAULT_BATCH
    shapes = {
        value.name: _concrete_shape(
            value, bound, batch_axes.get(value.name, ()), unnamed_length, rows, value.name in steps
        )
        for value in values
    }
    inputs = {value.name: _generate(model, value, shapes[value.name], rng, bound) for value in values}
    _offset_positions_past_the_cache(model, inputs, bound)
    held = _select_compared_values(model, inputs, seed)
    _hold_reductions(model, inputs, seed)
    rounds = _candidate_rounds(model, inputs, shapes, bound)
    if rounds and held & set(rounds[0]):
        # A constant held that is read as a size too (``If(Equal(n, 3))`` beside ``Range(0, n)``): tried first as it
        # is, then replaced as other sizes are (every round replaced it, and the branch it selects never ran).
        rounds = [{name: value for name, value in rounds[0].items() if name not in held}, *rounds]
    guessed = [value.name for value in values if value.shape is None]  # sequence elements of unknown shape
    narrow = _narrowed_raw_data(model, inputs, seed, bound)
    if rounds or guessed:
        try:
            inputs = _first_accepted(model, inputs, rounds or [{}], guessed)
        except InputSpecError:
            if not narrow:
                raise
            inputs = _first_accepted(model, {**inputs, **narrow}, rounds or [{}], guessed)
            _raw_data_refused(narrow, "with every candidate for the inputs read as sizes", notes)
    elif narrow:
        try:
            run_model(model, inputs)
        except RuntimeRefusedError as error:
            if error.action != "load the model":  # the model itself: verification says so
                inputs = _narrowed_if_accepted(model, inputs, narrow, error.reason, notes)
    return _vary_ambiguous_indices(model, inputs, shapes, seed, bound, notes)


def _vary_ambiguous_indices(
    model: ir.Model,
    inputs: dict[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    seed: int,
    dims: Mapping[str, int],
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """``inputs``, with the integer inputs generated as one repeated value only because their elements may sit at
    several components of a ``GatherND`` index tuple, the smallest axis of size 1 (a batch axis; see
    ``_index_bounds``), drawn again under the widest of those axes: kept where the original model runs on them
    (ONNX Runtime refuses a ``Gather`` or ``GatherND`` index out of its table), else left as they were, with a
    note (in ``notes``, and logged) that verification does not exercise other values of them."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the first draw stays as it was
    widened = {}
    for value in runtime_inputs(model):
        array = inputs.get(value.name)
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "iu" or array.size < 2 or _varies(array):
            continue
        if _is_mask(value) or _index_bounds(value, dims, widest=True) == _index_bounds(value, dims):
            continue
        wider = _generate_tensor(model, value, shapes[value.name], rng, dims, widest=True)
        if _varies(wider):
            widened[value.name] = wider
    if not widened:
        return inputs
    _offset_positions_past_the_cache(model, widened, dims, widest=True)
    try:
        run_model(model, {**inputs, **widened})
    except RuntimeRefusedError as error:
        note = (
            f"generated {_quoted(widened)}: one value repeated, since an element may index a table axis of size 1 "
            f"and ONNX Runtime refuses wider values ({error.reason}); verification does not exercise other values "
            "(pass real inputs with --inputs FILE.npz)"
        )
        logger.warning("%s", note)
        _add_note(notes, note)
        return inputs
    return {**inputs, **widened}


def _offset_positions_past_the_cache(
    model: ir.Model, inputs: dict[str, Any], bound: Mapping[str, int], *, widest: bool = False
) -> None:
    """A decode step's new tokens come after the cached ones: their positions start at the past length
    (``widest``: for positions drawn under ``_index_bounds(widest=True)``)."""
    pasts = {past for past, _ in cache_length_dims(model).values()}
    if len(pasts) != 1:
        return
    offset = bound.get(next(iter(pasts)), 0)
    for value in runtime_inputs(model):
        array = inputs.get(value.name)
        if not _POSITION_NAME.search(value.name) or not isinstance(array, np.ndarray) or array.dtype.kind not in "iu":
            continue
        table = _index_range(value, bound, widest=widest)
        if table is None or int(array.max(initial=0)) + offset < table:
            inputs[value.name] = (array + offset).astype(array.dtype)


class GeneratedSequence(list):
    """A generated ``seq(tensor)`` input: the list of arrays ONNX Runtime takes, plus the
    ``shape`` (its length, then its elements') that reports print for every input."""

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *np.shape(self[0])) if self else (0,)


def leads_unnamed(value: ir.Value) -> bool:
    """Whether ``value``'s first dim has neither name nor size: ``None`` (skl2onnx's ``X [None, 4]``), or declared -1
    (any size, to Paddle and tf2onnx): rows that no binding names."""
    if value.shape is None or not value.shape.rank():
        return False
    dim = value.shape[0]
    return (isinstance(dim, int) and dim < 0) or (_symbolic(dim) and not dim.value)


def runtime_inputs(model: ir.Model) -> list[ir.Value]:
    """Graph inputs the caller must feed; inputs that are also initializers are optional overrides."""
    return [value for value in model.graph.inputs if value.name not in model.graph.initializers]


def _concrete_shape(
    value: ir.Value,
    bound: Mapping[str, int],
    batch_axes: Collection[int] = (),
    length: int = DEFAULT_SEQUENCE,
    rows: int = DEFAULT_BATCH,
    steps: bool = False,
) -> tuple[int, ...]:
    """The shape to generate: of the tensor, or of each element of a sequence or optional. An unnamed dim is drawn
    as a batch (``DEFAULT_BATCH``) on the first axis (as a length where ``steps``: ``recurrent_step_inputs``), at
    ``rows`` on ``batch_axes`` (``recurrent_batch_axes``, ``_recurrent_batch_size``), else as a length (``length``)."""
    if not isinstance(value.type, (ir.TensorType, ir.SequenceType, ir.OptionalType)):
        raise InputSpecError(
            f"input '{value.name}' is of type {value.type}, which graphopt cannot generate; {_WAYS_OUT}"
        )
    if value.shape is None:
        if not isinstance(value.type, ir.TensorType):
            return _UNKNOWN_ELEMENT_SHAPE
        # --inputs do not stand in for it: verification generates sets of its own beside them.
        raise InputSpecError(
            f"input '{value.name}' has no shape, which ONNX requires on graph inputs; give it one (dynamic axes "
            "are fine), or --no-verify"
        )
    shape = []
    for axis, dim in enumerate(value.shape):
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
        elif isinstance(dim, int) or not dim.value:  # -1: some exporters (Paddle) mark a dynamic dim this way
            shape.append((length if steps else DEFAULT_BATCH) if axis == 0 else rows if axis in batch_axes else length)
        else:
            shape.append(bound[dim.value])
    return tuple(shape)


def _generate(
    model: ir.Model, value: ir.Value, shape: tuple[int, ...], rng: np.random.Generator, dims: Mapping[str, int]
) -> Any:
    kind = value.type
    while isinstance(kind, ir.OptionalType):  # given, not empty: that is what exercises the graph
        kind = kind.elem_type
    if isinstance(kind, ir.SequenceType):
        if not isinstance(kind.elem_type, ir.TensorType):
            raise InputSpecError(
                f"input '{value.name}' is a sequence of {kind.elem_type}, which graphopt cannot generate; {_WAYS_OUT}"
            )
        return GeneratedSequence(_generate_tensor(model, value, shape, rng, dims) for _ in range(SEQUENCE_LENGTH))
    return _generate_tensor(model, value, shape, rng, dims)


# The lookups, and the attributes that hold the keys they map: ai.onnx.ml's (LabelEncoder: opset 1's classes_strings,
# opset 2's keys_strings/keys_int64s/keys_floats, opset 4's keys_tensor; CategoryMapper and OneHotEncoder map strings
# or integers by their cats), and ONNX's TfIdfVectorizer, which counts the n-grams of its pool (none of them drawn,
# every count is 0).
_LOOKUP_KEY_ATTRIBUTES = {
    ("ai.onnx.ml", "LabelEncoder"): ("classes_strings", "keys_strings", "keys_int64s", "keys_floats", "keys_tensor"),
    ("ai.onnx.ml", "CategoryMapper"): ("cats_strings", "cats_int64s"),
    ("ai.onnx.ml", "OneHotEncoder"): ("cats_strings", "cats_int64s"),
    ("", "TfIdfVectorizer"): ("pool_strings", "pool_int64s"),
}
# Ops a lookup's keys may reach it through unchanged (a Keras export reshapes its strings before its StringLookup).
_KEY_MOVES = ("Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose")


def _lookup_keys(value: ir.Value) -> list[tuple[tuple[int, ...] | None, np.ndarray, bool]]:
    """The lookups reading ``value`` (``_LOOKUP_KEY_ATTRIBUTES``; directly, through ops that only move its elements or
    a ``Cast``, or some columns of a 2-D ``value``, taken by an ``ArrayFeatureExtractor`` or a ``Gather`` of one
    constant index along axis 1, as skl2onnx's ``ColumnTransformer`` and ``OneHotEncoder`` take them), each as the
    columns of ``value`` it reads (None: all of it), the keys it knows of ``value``'s kind (strings as an object array,
    integers, floats) and whether a value none of them may be drawn. A LabelEncoder of opset 1 maps an integer to its
    ``classes_strings`` entry: its keys are their positions. Behind a ``Cast`` (int32 codes, or a float column, cast to
    the int64 an ``ai.onnx.ml`` lookup takes, as skl2onnx writes them: missed, every row mapped to the default and a
    swapped code table verified), the keys of another kind that ``value``'s type holds exactly, as for float codes a
    ``OneHotEncoder`` reads itself (it casts them to its int64 cats: drawn normal, they were none, until a review in
    session 69; with ``zeros=0`` ONNX Runtime refused every generated input). A ``OneHotEncoder`` of
    ``zeros=0`` (scikit-learn's ``handle_unknown="error"``) fails on a value none of its cats: none is drawn for it
    (one was, and ONNX Runtime refused every generated input of such a pipeline); nor are its columns drawn from another
    column's cats (skl2onnx gives each column its own encoder: drawn from the first one's, the others failed)."""
    kind = "O" if value.dtype == ir.DataType.STRING else value.dtype.numpy().kind
    found: list[tuple[tuple[int, ...] | None, np.ndarray, bool]] = []
    # Each value reached, the columns of ``value`` it holds (None: all, as they are), whether a Cast was passed, and
    # whether its columns are still ``value``'s (not moved by a Reshape or Transpose).
    pending: list[tuple[ir.Value, tuple[int, ...] | None, bool, bool]] = [(value, None, False, True)]
    seen: set[int] = set()
    while pending:
        current, columns, cast, columnar = pending.pop()
        for node, index in current.uses():
            if id(node) in seen:
                continue
            seen.add(id(node))
            if is_onnx_domain(node) and (node.op_type in _KEY_MOVES or (node.op_type == "Cast" and kind != "O")):
                kept = columnar and node.op_type in ("Identity", "Cast")
                pending.append((node.outputs[0], columns, cast or node.op_type == "Cast", kept))
                continue
            if index == 0 and columnar and (picked := _picked_columns(node)) is not None:
                if (picked := _as_input_columns(picked, columns)) is not None:
                    pending.append((node.outputs[0], picked, cast, True))
                continue
            # A OneHotEncoder casts float codes to its int64 cats itself (as a Cast before it would).
            keys = _keys_of(node, kind, value, cast or (node.op_type == "OneHotEncoder" and kind == "f"))
            if keys is not None:
                unknown = node.op_type != "OneHotEncoder" or node.attributes.get_int("zeros", 1) != 0
                found.append((columns, keys, unknown))
    return found


def _picked_columns(node: ir.Node) -> tuple[int, ...] | None:
    """The columns ``node`` takes of its 2-D data (input 0) by constant indices: an ``ArrayFeatureExtractor``'s, or a
    ``Gather``'s one index along axis 1; else None."""
    data = node.inputs[0] if node.inputs else None
    rank = data.shape.rank() if data is not None and data.shape is not None else None
    if len(node.inputs) < 2 or node.inputs[1] is None or rank not in (2, None):
        return None
    if node.domain == "ai.onnx.ml" and node.op_type == "ArrayFeatureExtractor":
        taken = ir.convenience.get_const_tensor(node.inputs[1])
        return tuple(int(column) for column in taken.numpy().reshape(-1)) if taken is not None else None
    if not is_onnx_domain(node) or node.op_type != "Gather" or node.attributes.get_int("axis", 0) not in (1, -1):
        return None
    if node.attributes.get_int("axis", 0) == -1 and rank is None:
        return None
    taken = ir.convenience.get_const_tensor(node.inputs[1])
    return (int(taken.numpy().reshape(-1)[0]),) if taken is not None and taken.numpy().size == 1 else None


def _as_input_columns(picked: tuple[int, ...], columns: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """``picked`` (``_picked_columns`` of a value holding the input's ``columns``, every one where None) as columns of
    the input; None where one is out of range."""
    if columns is None:
        return picked
    if not all(-len(columns) <= column < len(columns) for column in picked):
        return None
    return tuple(columns[column] for column in picked)


def _keys_of(node: ir.Node, kind: str, value: ir.Value, cast: bool) -> np.ndarray | None:
    """The keys lookup ``node`` (``_LOOKUP_KEY_ATTRIBUTES``) knows of ``kind`` (``_lookup_keys``), or None."""
    attributes = _LOOKUP_KEY_ATTRIBUTES.get(("" if is_onnx_domain(node) else node.domain, node.op_type), ())
    for name in attributes:
        attribute = node.attributes.get(name)
        if attribute is None:
            continue
        keys = attribute.value.numpy() if attribute.type == ir.AttributeType.TENSOR else attribute.value
        keys = np.asarray([key.decode() if isinstance(key, bytes) else key for key in np.asarray(keys).ravel()])
        if name == "classes_strings" and kind in "iu":
            keys = np.arange(len(keys))
        if not keys.size:
            continue
        if kind == "O" and all(isinstance(key, str) for key in keys):
            return keys.astype(object)
        if kind != "O" and keys.dtype.kind in "iuf" and cast:
            with np.errstate(invalid="ignore", over="ignore"):
                keys = keys[keys.astype(value.dtype.numpy()) == keys]
            if keys.size:
                return keys
        elif kind != "O" and keys.dtype.kind in "iuf" and (kind == "f") == (keys.dtype.kind == "f"):
            return keys
    return None


def _with_unknown(keys: np.ndarray) -> np.ndarray:
    """``keys`` and one value that is none of them (its default's case)."""
    if keys.dtype == object:
        return np.concatenate([keys, [word for word in _WORDS if word not in set(keys)][:1]])
    return np.concatenate([keys, [keys.max() + 1]])


def _drawn_from_keys(
    lookups: Sequence[tuple[tuple[int, ...] | None, np.ndarray, bool]], drawn: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``drawn`` (an input's generated values) with the elements its ``lookups`` read (``_lookup_keys``) drawn from
    their keys, and a value none of them where every lookup takes one (its default's case): all of them from the first
    lookup of the whole input, and the columns a lookup of their own reads from that one's."""
    drawn = drawn.astype(object) if drawn.dtype.kind in "OUS" else drawn.copy()
    unknown = all(takes for _, _, takes in lookups)
    whole = [keys for columns, keys, _ in lookups if columns is None]
    if whole:
        drawn[...] = rng.choice(_with_unknown(whole[0]) if unknown else whole[0], size=drawn.shape)
    for columns, keys, _ in lookups:
        for column in columns or ():
            if drawn.ndim == 2 and -drawn.shape[1] <= column < drawn.shape[1]:
                drawn[:, column] = rng.choice(_with_unknown(keys) if unknown else keys, size=drawn.shape[0])
    return drawn


def _generate_tensor(
    model: ir.Model,
    value: ir.Value,
    shape: tuple[int, ...],
    rng: np.random.Generator,
    dims: Mapping[str, int],
    *,
    widest: bool = False,
) -> np.ndarray:
    """One generated tensor at the binding ``dims`` (see the module docstring); ``widest``: indices under
    ``_index_bounds(widest=True)``."""
    # Lazily: a pass imported alone loads no padding, nor the drawing of compared values.
    from optimizer.compared_inputs import _compared_drawn, _compared_keys, _drawn_from_compared
    from optimizer.padding import (
        added_to_scores,
        causal_mask,
        causal_masks,
        cross_masks,
        encoded_mask,
        key_mask,
        key_masks,
    )

    dtype = value.dtype
    if dtype == ir.DataType.STRING:
        drawn = rng.choice(_WORDS, size=shape)
        drawn = _drawn_from_keys(lookups, drawn, rng) if (lookups := _lookup_keys(value)) else drawn
        return _compared_drawn(value, drawn, rng, lookups)
    numpy_dtype = dtype.numpy()
    convention = causal_masks(model).get(value.name) if len(shape) == 4 else None
    if convention is not None and shape[2] <= shape[3]:
        # A decoder's 4-D mask: causal over the new tokens (the last ``sequence`` of ``total`` positions), the key
        # positions padded as a 2-D mask's are.
        real = _padding_mask((shape[0], shape[3]), np.dtype(np.int8)) != 0
        return causal_mask(real, shape[2], convention, numpy_dtype)
    if len(shape) == 4 and (convention := {**key_masks(model), **cross_masks(model)}.get(value.name)) is not None:
        real = _padding_mask((shape[0], shape[3]), np.dtype(np.int8)) != 0
        return key_mask(real, shape[2], convention, numpy_dtype)
    is_mask = _is_mask(value)
    if is_mask and pads_where_true(value):
        # The other convention's padding mask inverted: real positions false, and the same positions padded (all
        # zeros padded none, and a rewrite that dropped the mask verified).
        return (_padding_mask(shape, np.dtype(np.int8)) == 0).astype(numpy_dtype)
    if dtype == ir.DataType.BOOL:
        if is_mask:
            return np.ones(shape, dtype=bool)
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.is_integer():
        if is_mask:
            return _padding_mask(shape, numpy_dtype)
        if (lookups := _lookup_keys(value)) and _indexes_nothing(value, dims, widest=widest):
            # Codes an ai.onnx.ml lookup maps (to names, to other codes), indexing no table: drawn 0 or 1, as other
            # integers, they were none of its keys, every row mapped to its default, and a rewrite that swapped two of
            # its values verified.
            drawn = _drawn_from_keys(lookups, rng.integers(0, 2, size=shape), rng)
            return _compared_drawn(value, drawn, rng, lookups).astype(numpy_dtype)
        low = _index_low(value, dims, widest=widest)
        if _POSITION_NAME.search(value.name) and shape:
            # Positions count up from 0 (or the least that stays in the table), within the position table
            # when there is one (rotary positions read no table: 0, 1, 2, ... as a tokenizer's would).
            table = _index_range(value, dims, widest=widest)
            span = table - low if table is not None and table > low else None
            if span and span < shape[-1] and _scatters_at(value):
                # A static cache written at its positions (ScatterND): wrapped, two positions wrote one slot (which
                # ONNX leaves undefined), 128 tokens into a cache of 16. Unwrapped, ONNX Runtime refuses them, and
                # verification runs shorter lengths, as before a review in session 69 bounded scatters' indices.
                span = None
            positions = low + (np.arange(shape[-1]) % span if span else np.arange(shape[-1]))
            return np.broadcast_to(positions, shape).astype(numpy_dtype)
        length = _row_length(model, value, dims) if len(shape) == 1 else None
        if length is not None:
            return _full_lengths(shape, length).astype(numpy_dtype)
        loops = _loops_counted_by(value)
        trips = _trips_allowed(loops, dims) if loops else None
        if trips is not None:
            # A Loop's trip count: 0 or 1, as other integers are drawn, would run its body at most once, and a
            # rewrite wrong from the second trip on would verify. Within a table it also indexes.
            table = _index_range(value, dims, widest=widest)
            trips = trips if table is None else max(low, min(trips, table - 1))
            return np.full(shape, trips, dtype=numpy_dtype)
        if _raw_data(value, dims, widest=widest):
            # Half over the type's range, half 0 or 1 (a flag read as a boolean, or compared with 1: drawn over
            # the range alone, a 0 or a 1 is rare and a wrong rewrite of what it selects verified).
            info = np.iinfo(numpy_dtype)
            wide = rng.integers(info.min, info.max, size=shape, endpoint=True)
            small = rng.integers(0, _DEFAULT_INT_HIGH, size=shape)
            return np.where(rng.random(shape) < 0.5, wide, small).astype(numpy_dtype)
        lows = _index_lows(value, shape, dims, widest=widest)
        highs = np.maximum(_index_highs(value, shape, dims, widest=widest), lows + 1)
        drawn = rng.integers(lows, highs, size=shape)
        if lookups and np.ndim(lows) == 0 and np.ndim(highs) == 0:
            # Codes a lookup maps that also index a table (an id embedded and named): half of them its keys within
            # the table, no unknown past it (drawn over the table alone, they were mostly none of its keys, and a
            # swapped name verified), half over the table (its other rows).
            inside = [(columns, keys[(keys >= lows) & (keys < highs)], False) for columns, keys, _ in lookups]
            if inside := [lookup for lookup in inside if lookup[1].size]:
                drawn = np.where(rng.random(shape) < 0.5, _drawn_from_keys(inside, drawn, rng), drawn)
        if (compared := _compared_keys(value)) and _indexes_nothing(value, dims, widest=widest):
            # Codes and flags compared with constants (``Where(Equal(code, 3), ...)``), indexing no table: half of them
            # those constants. Ids that index a table (``Equal(input_ids, pad)``) are drawn as before.
            drawn = _drawn_from_compared(compared, drawn, rng)
        return drawn.astype(numpy_dtype)
    if dtype.is_floating_point():
        if _MASK_NAME.search(value.name) and added_to_scores(value):
            # 0 attends, float's lowest pads (generated 0/1, it masked nothing: a rewrite flooring it verified).
            return encoded_mask(_padding_mask(shape, np.dtype(np.int8)) != 0, "additive", numpy_dtype)
        if is_mask:
            return _padding_mask(shape, numpy_dtype)
        if lookups := _lookup_keys(value):  # a LabelEncoder's float keys, a float column's cats: normal draws miss them
            drawn = _drawn_from_keys(lookups, rng.standard_normal(shape), rng)
            return _compared_drawn(value, drawn, rng, lookups).astype(numpy_dtype)
        if len(shape) == 1 and (length := _row_length(model, value, dims)) is not None:
            # Float per-row lengths are fractions of the row (SpeechBrain's ``wav_lens``): 1, the whole row, the last
            # of two or more 0.75. Drawn normal until a later review in session 69, most were negative, every frame
            # of such a row masked. Frame counts (compared with the positions unscaled) are drawn as integer ones:
            # fractions made them one frame long until a review in session 69 (late 8).
            if _counts_frames(value):
                return _full_lengths(shape, length).astype(numpy_dtype)
            return _relative_lengths(shape).astype(numpy_dtype)
        # A float compared with constants (``Where(Equal(x, -1), fill, x)``, a sentinel): normal draws are none of them.
        # Not one cast to an index (``Gather(table, Cast(x))``): a constant past the table made ONNX Runtime refuse
        # every generated input, as integers that index a table are left as drawn.
        drawn = rng.standard_normal(shape)
        if (compared := _compared_keys(value)) and _indexes_nothing(value, dims, widest=widest):
            drawn = _drawn_from_compared(compared, drawn, rng)
        return drawn.astype(numpy_dtype)
    raise InputSpecError(f"input '{value.name}' has type {dtype}, which graphopt cannot generate; {_WAYS_OUT}")


def _scatters_at(value: ir.Value) -> bool:
    """Whether integer input ``value`` reaches a ``ScatterND``'s or ``ScatterElements``' indices through ops that carry
    indices unchanged (``_INDEX_PRESERVING_OPS``, ``Add``/``Sub``, ``Concat``)."""
    carrying = _INDEX_PRESERVING_OPS | {"Add", "Sub", "Concat"}
    for node, index in _uses_reached(value, lambda node, _: node.op_type in carrying):
        if node.op_type in ("ScatterND", "ScatterElements") and index == 1:
            return True
    return False


def _uses_reached(value: ir.Value, follows: Callable[[ir.Node, int], bool]) -> Iterator[tuple[ir.Node, int]]:
    """Each ``(node, input index)`` that reads ``value``, or an output of a node read on the way that ``follows``
    accepts (given the node and the index it reads at; the walk goes on through its outputs), each value visited
    once."""
    frontier, seen = [value], set()
    while frontier:
        current = frontier.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for node, index in current.uses():
            yield node, index
            if follows(node, index):
                frontier.extend(node.outputs)


def _full_lengths(shape: tuple[int, ...], length: int) -> np.ndarray:
    """Per-row lengths ``[batch]`` counted in positions: every row at full ``length``, the last of two or more a
    quarter shorter (as a padding mask pads it)."""
    lengths = np.full(shape, length)
    if shape[0] >= 2:
        lengths[-1] = length - length // 4
    return lengths


# Ops a float lengths input passes through unscaled on its way to a comparison with the positions (moved, cast,
# rounded or bounded: ``clamp(lengths, max=T)``).
_LENGTH_CARRYING_OPS = frozenset({*_INDEX_PRESERVING_OPS, "Round", "Floor", "Ceil", "Clip", "Min", "Max"})
_COMPARISON_OPS = frozenset({"Less", "LessOrEqual", "Greater", "GreaterOrEqual"})


def _counts_frames(value: ir.Value) -> bool:
    """Whether float per-row lengths ``value`` are frame counts: compared (``Less``, ``Greater``...) through ops that
    only move, cast, round, bound, shift or shrink them (a ``Mul`` by a constant of 1 or less, a ``Div`` by one of 1
    or more: sample counts divided by a hop length) with positions not scaled either, where fractions of the row are
    scaled by its size first (SpeechBrain's ``wav_lens * T``) or compared with positions divided by it (``arange(T) /
    T``). A comparison with one constant number (``lengths > 0``) holds no positions and is passed over. Fractions
    where the graph says neither. Until a review in session 70, any ``Mul``, ``Div``, offset or clamp read as such a
    scale: counts divided by a hop length, clamped, multiplied by 1, or compared with positions times a hop length
    were drawn as fractions, one frame real a row."""

    def carries(node: ir.Node, index: int) -> bool:
        if not is_onnx_domain(node):
            return False
        if node.op_type in ("Mul", "Div"):
            factor = _constant_factor(node, index)
            return factor is not None and abs(factor) <= 1
        if node.op_type == "Add" or (node.op_type == "Sub" and index == 0):
            return _constant_number(node.inputs[1 - index]) is not None  # an offset: NeMo's ``len + 2 pad - n_fft``
        return node.op_type in _LENGTH_CARRYING_OPS

    for node, index in _uses_reached(value, carries):
        if is_onnx_domain(node) and node.op_type in _COMPARISON_OPS and len(node.inputs) == 2:
            if _constant_number(node.inputs[1 - index]) is None:
                return not _scaled(node.inputs[1 - index])
    return False


def _scaled(value: ir.Value | None) -> bool:
    """Whether positions ``value`` are computed by a ``Mul`` or ``Div`` that shrinks them (by a constant under 1, or
    one over 1 dividing, or by a value the graph computes: ``arange(T) / T``) through ops that only move, cast or
    round them, or grow them by a constant (frame positions times a hop length, in samples); or are a constant of
    several numbers all in [0, 1) (a static export's ``arange(T) / T``, folded)."""
    for _ in range(16):
        if (tensor := ir.convenience.get_const_tensor(value) if value is not None else None) is not None:
            array = tensor.numpy()
            return bool(array.size >= 2 and array.min() >= 0 and array.max() < 1)
        node = value.producer() if value is not None else None
        if node is None:
            return False
        if node.op_type in ("Mul", "Div") and len(node.inputs) == 2:
            index = 0 if _constant_number(node.inputs[0]) is None else 1
            factor = _constant_factor(node, index)
            if factor is None or abs(factor) < 1:
                return True
            value = node.inputs[index]
            continue
        if node.op_type not in _LENGTH_CARRYING_OPS or not node.inputs:
            return False
        value = node.inputs[0]
    return False


def _constant_factor(node: ir.Node, index: int) -> float | None:
    """What the ``Mul`` or ``Div`` ``node`` multiplies its input ``index`` by where the other is one constant number:
    that number, or one over a ``Div``'s divisor; None otherwise (a divisor read, a computed operand, a zero)."""
    if node.op_type not in ("Mul", "Div") or len(node.inputs) != 2 or (node.op_type == "Div" and index != 0):
        return None
    number = _constant_number(node.inputs[1 - index])
    if number is None or number == 0:
        return None
    return number if node.op_type == "Mul" else 1 / number


def _constant_number(value: ir.Value | None) -> float | None:
    """The number every element of constant ``value`` holds, or None (not constant, empty, or several numbers); a
    constant only moved, cast or broadcast on the way (``_INDEX_PRESERVING_OPS``: ``lengths > Cast(0)``, an integer
    constant promoted to the lengths' type) holds the number it holds, cast so. Until a review in session 70 such a one
    was no constant: fractions checked ``> Cast(0)`` before ``* T`` were drawn as frame counts, every frame real."""
    casts = []  # the types cast to on the way back to the constant (applied from it outward)
    for _ in range(16):
        tensor = ir.convenience.get_const_tensor(value) if value is not None else None
        if tensor is not None:
            break
        node = value.producer() if value is not None else None
        if node is None or not is_onnx_domain(node) or node.op_type not in _INDEX_PRESERVING_OPS or not node.inputs:
            return None
        if node.op_type == "Cast":
            casts.append(ir.DataType(node.attributes.get_int("to", ir.DataType.FLOAT)).numpy())
        value = node.inputs[0]
    if tensor is None or tensor.size == 0:
        return None
    array = tensor.numpy().reshape(-1)
    if array.dtype.kind not in "biuf" or any(np.dtype(dtype).kind not in "biuf" for dtype in casts):
        return None
    for dtype in reversed(casts):
        array = array.astype(dtype)
    array = array.astype(np.float64)
    return float(array[0]) if (array == array[0]).all() else None


def _relative_lengths(shape: tuple[int, ...]) -> np.ndarray:
    """Float per-row lengths as fractions of the row (``_row_length``'s input in a float type): 1.0, the last of two
    or more rows 0.75, as integer lengths are drawn."""
    lengths = np.ones(shape)
    if shape[0] >= 2:
        lengths[-1] = 0.75
    return lengths


def _row_length(model: ir.Model, value: ir.Value, dims: Mapping[str, int]) -> int | None:
    """The length a per-row lengths input (``_LENGTHS_NAME``, shaped ``[batch]``: onnx-asr's ``waveforms_lens``,
    NeMo's ``length``, Piper's ``input_lengths``) gives each row: the size ``dims`` binds the one symbolic dim, not a
    batch, of the input its name starts with (``waveforms``), else of all inputs; None where that is not one dim, or
    where it is past a table the lengths also index or the trips of a Loop they count. A static dim is a batch where
    another input of rank 2 or more leads with it (``[1]`` beside ``[1, length]``).
    Drawn 0 or 1, as other integers, such lengths masked every frame of a speech front end: its features were zeros
    before and after, and a rewrite scaling its mel filterbank verified. The batch is one named like it, else one
    guessed (``_batch_like_dims``) or leading an input of rank 2 or more (``_leading_dims``: torch's dynamo export of
    ``waveforms [s0, s1]`` beside ``waveforms_lens [s0]``, whose lengths were drawn 0 or 1 until a later review in
    session 69)."""
    if not _LENGTHS_NAME.search(value.name) or value.shape is None or len(value.shape) != 1:
        return None
    batches = set(batch_dims(model)) or _batch_like_dims(model) | _leading_dims(model)
    others = [other for other in runtime_inputs(model) if other is not value and other.shape is not None]
    rows = value.shape[0]
    if _symbolic(rows):
        if rows.value not in batches:
            return None
    elif not any(len(other.shape) >= 2 and other.shape[0] == rows for other in others):
        # A batch exported static: pythainlp's thai2rom encoder, ``input_tensor [1, input_length]`` beside
        # ``input_lengths [1]`` (an LSTM's sequence_lens), drew 0 or 1 until review s74 (hunt 9), the LSTM run over
        # no step or one, and its outputs zeros or a step's.
        return None
    prefix = _LENGTHS_NAME.sub("", value.name)

    def lengths(values: list[ir.Value]) -> set[str]:
        return {
            dim.value
            for other in values
            for dim in other.shape
            if _symbolic(dim) and dim.value and dim.value not in batches
        }

    found = lengths([other for other in others if prefix and other.name == prefix]) or lengths(others)
    length = dims.get(next(iter(found))) if len(found) == 1 else None
    if length is None:
        return None
    # Lengths that also index a table (a length bucket's embedding), or count a Loop's trips (``max_length [1]``
    # beside ``input_ids [1, T]``), are drawn as such: a row's full length past the table, or past the trips a body
    # indexing a table allows, made ONNX Runtime refuse every generated input (review s74 late4).
    table = _index_range(value, dims)
    loops = _loops_counted_by(value)
    trips = _trips_allowed(loops, dims) if loops else None
    if (table is not None and length >= table) or (loops and (trips is None or length > trips)):
        return None
    return length


def _raw_data(value: ir.Value, dims: Mapping[str, int] | None = None, *, widest: bool = False) -> bool:
    """Whether integer input ``value`` holds raw data drawn over its type's whole range (``_RAW_DATA_TYPES``: pixels,
    audio samples; half of its elements, the others 0 or 1): of such a type, and indexing no table
    (``_index_bounds``)."""
    return value.dtype in _RAW_DATA_TYPES and _indexes_nothing(value, dims, widest=widest)


def _indexes_nothing(value: ir.Value, dims: Mapping[str, int] | None = None, *, widest: bool = False) -> bool:
    """Whether integer input ``value`` indexes no table (``_index_bounds`` bounds none of its elements)."""
    whole, components, low, component_lows = _index_bounds(value, dims, widest=widest)
    return whole is None and not components and not low and not component_lows


def _narrowed_raw_data(
    model: ir.Model, inputs: Mapping[str, Any], seed: int, dims: Mapping[str, int]
) -> dict[str, Any]:
    """For the raw-data inputs in ``inputs`` (``_raw_data``), the same drawn as other integers are (0 or 1): what
    generation falls back to where ONNX Runtime refuses the original model on the whole range."""
    rng = np.random.default_rng([seed, 2])
    narrow: dict[str, Any] = {}
    for value in runtime_inputs(model):
        drawn = inputs.get(value.name)
        if drawn is None or not _raw_data(value, dims):
            continue
        if isinstance(drawn, list):
            narrow[value.name] = GeneratedSequence(
                rng.integers(0, _DEFAULT_INT_HIGH, size=np.shape(x)).astype(x.dtype) for x in drawn
            )
        elif isinstance(drawn, np.ndarray):
            narrow[value.name] = rng.integers(0, _DEFAULT_INT_HIGH, size=drawn.shape).astype(drawn.dtype)
    return narrow


def _narrowed_if_accepted(
    model: ir.Model, inputs: dict[str, Any], narrow: Mapping[str, Any], reason: str, notes: list[str] | None
) -> dict[str, Any]:
    """``inputs`` with the raw-data inputs narrowed (``narrow``, with a note) where the original model runs on that,
    else as they are: a refusal of the narrowed values too is not of the values' range (a length the model refuses,
    which the caller may retry shorter), and the note would blame them."""
    narrowed = {**inputs, **narrow}
    try:
        run_model(model, narrowed)
    except RuntimeRefusedError:
        return inputs
    _raw_data_refused(narrow, reason, notes)
    return narrowed


def _raw_data_refused(narrow: Mapping[str, Any], reason: str, notes: list[str] | None) -> None:
    """Say (in ``notes``, and logged) that the raw-data inputs ``narrow`` names were drawn as 0 or 1, and why."""
    note = (
        f"generated {_quoted(narrow)}: 0 or 1 only, since ONNX Runtime refuses the input model on values over the "
        f"whole range of their type ({reason}); verification does not exercise other values "
        "(pass real inputs with --inputs FILE.npz)"
    )
    logger.warning("%s", note)
    _add_note(notes, note)


def _readers_through_copies(value: ir.Value) -> Iterator[tuple[ir.Node, int]]:
    """``(node, input index)`` of each reader of ``value``, or of a cast or reshape of it (``_INDEX_PRESERVING_OPS``,
    followed through rather than yielded)."""

    def copies(node: ir.Node, index: int) -> bool:
        return node.op_type in _INDEX_PRESERVING_OPS and index == 0

    yield from ((node, index) for node, index in _uses_reached(value, copies) if not copies(node, index))


def _loops_counted_by(value: ir.Value) -> list[ir.Node]:
    """The ``Loop`` nodes whose trip count ``M`` is ``value`` (or a cast or reshape of it)."""
    return [node for node, index in _readers_through_copies(value) if node.op_type == "Loop" and index == 0]


# Ops that read an index (at input 1) along an axis of their data (input 0); SequenceAt reads one of a sequence.
_INDEXING_OPS = frozenset({"Gather", "GatherElements", "SequenceAt"})


def _trips_allowed(loops: list[ir.Node], dims: Mapping[str, int]) -> int | None:
    """``_LOOP_TRIPS``, or fewer where a body indexes a table by its iteration number (``Gather(x, i)`` with ``x``
    of 2 rows runs 2 trips); None (draw the count as other integers) where such a table's size is unknown."""
    trips = _LOOP_TRIPS
    for loop in loops:
        body = loop.attributes.get("body")
        if body is None or body.is_ref() or not body.value.inputs:
            continue
        for node, index in _readers_through_copies(body.value.inputs[0]):
            if node.op_type in _INDEXING_OPS and index == 1:
                size = _indexed_size(node, dims)
                if size is None:
                    return None
                trips = min(trips, size)
    return trips


def _indexed_size(node: ir.Node, dims: Mapping[str, int]) -> int | None:
    """How many entries ``node`` (an ``_INDEXING_OPS`` node) can index, where known."""
    if node.op_type == "SequenceAt":
        return SEQUENCE_LENGTH if node.inputs[0] is not None and node.inputs[0].is_graph_input() else None
    data = node.inputs[0]
    if data is None or data.shape is None or not data.shape.rank():
        return None
    dim = data.shape[node.attributes.get_int("axis", 0)]
    return dim if isinstance(dim, int) else dims.get(str(dim))


def pads_where_true(value: ir.Value) -> bool:
    """Whether mask input ``value`` pads where it is true (PyTorch's key padding mask) rather than attends there
    (Hugging Face's): read, through casts, reshapes and any ``Not``, as the condition of a ``Where`` that takes a fill
    of -1e3 or below where it holds (arabic-name-romanizer's decoder: ``Where(src_mask, -1e9, scores)``) or as what
    multiplies one, or negated as a multiplier of data, not of a constant (its encoder: ``memory *
    Cast(Not(src_mask))``; ``scores - 1e9 * Cast(Not(mask))`` is Hugging Face's convention, read as PyTorch's until a
    review), or as the condition of a ``Where`` that takes zeros there and data elsewhere (slovnet's
    ``masked_fill(pad_mask, 0)``: read as neither, generated true everywhere, every word padded, until review s74);
    through ``Or`` and ``And`` with another mask too (a causal mask's ``Or``: read as neither, it was
    generated true everywhere until a review), through an ``Add`` of it and another mask cast to numbers (their
    ``Or``), and through ``Xor`` or ``Equal`` with a constant (``mask ^ True`` and ``mask == 0`` negate it; read as
    neither through any of these, it was generated true everywhere until a review in session 68). Generated as ones,
    such a mask padded every position: the scores and means behind it were constant, and a rewrite of the projections
    before them verified."""
    seen: set[tuple[int, bool]] = set()
    frontier = [(value, False)]
    while frontier:
        current, negated = frontier.pop()
        if (id(current), negated) in seen:
            continue
        seen.add((id(current), negated))
        for node, index in current.uses():
            if not is_onnx_domain(node):
                continue
            if node.op_type in _INDEX_PRESERVING_OPS and index == 0:
                frontier.extend((out, negated) for out in node.outputs)
            elif node.op_type == "Not":
                frontier.extend((out, not negated) for out in node.outputs)
            elif node.op_type in ("Or", "And"):
                # Combined with another mask of its convention (PyTorch's ``attn_mask.logical_or(key_padding_mask)``
                # beside a causal one), the result pads or attends where it does.
                frontier.extend((out, negated) for out in node.outputs)
            elif node.op_type == "Add" and len(node.inputs) == 2 and _is_cast_mask(node.inputs[1 - index]):
                # Two 0/1 masks summed (``causal.float() + key_padding_mask.float()``) are nonzero where either is
                # true, as by ``Or``. Plus data or a constant it is no mask.
                frontier.extend((out, negated) for out in node.outputs)
            elif node.op_type in ("Xor", "Equal") and len(node.inputs) == 2:
                # ``mask ^ True`` and ``mask == 0`` negate it, ``mask ^ False`` and ``mask == 1`` keep it; with
                # another mask, or any other value, they say neither.
                bit = _constant_bit(node.inputs[1 - index])
                if bit is not None:
                    flips = bit == (node.op_type == "Xor")
                    frontier.extend((out, negated != flips) for out in node.outputs)
            elif node.op_type == "Where" and index == 0 and len(node.inputs) == 3:
                if _is_fill(node.inputs[1]):
                    return not negated
                if _is_fill(node.inputs[2]):
                    return negated
                # ``data.masked_fill(mask, 0)`` zeroes data where the mask holds, as ``data * Cast(Not(mask))``
                # below: slovnet's CNN encoder zeroes its padded words so.
                if _zeroes_data(node.inputs[1], node.inputs[2]):
                    return not negated
                if _zeroes_data(node.inputs[2], node.inputs[1]):
                    return negated
            elif node.op_type == "Mul" and len(node.inputs) == 2:
                # Times a fill it marks the padded positions (an additive mask); times data, the kept ones. Times
                # another constant it says neither: ``scores - 1e9 * Cast(Not(mask))`` pads where the mask is false.
                other = node.inputs[1 - index]
                if _is_fill(other):
                    return not negated
                if other is None or _broadcast_constant(other) is None:
                    return negated
    return False


def _is_cast_mask(value: ir.Value | None) -> bool:
    """Whether ``value`` is a boolean cast to numbers (0 and 1: a mask), through casts and reshapes."""
    while value is not None and (node := value.producer()) is not None and is_onnx_domain(node):
        if node.op_type == "Cast" and _is_boolean(node.inputs[0]):
            return True
        if node.op_type not in _INDEX_PRESERVING_OPS:
            return False
        value = node.inputs[0]
    return False


# Ops whose output is boolean whatever their inputs' types (a value's dtype is unknown before shape inference).
_BOOLEAN_OPS = frozenset(
    {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf"}
)


def _is_boolean(value: ir.Value | None) -> bool:
    """Whether ``value`` is boolean: so typed, or the output of a comparison or a logical op."""
    if value is None:
        return False
    producer = value.producer()
    return value.dtype == ir.DataType.BOOL or (
        producer is not None and is_onnx_domain(producer) and producer.op_type in _BOOLEAN_OPS
    )


def _constant_bit(value: ir.Value | None) -> int | None:
    """1 where constant ``value`` is 1 (or true) everywhere, 0 where it is 0 (or false) everywhere, else None."""
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None or tensor.size == 0:
        return None
    array = tensor.numpy()
    return 1 if (array == 1).all() else 0 if (array == 0).all() else None


def _zeroes_data(zero: ir.Value | None, data: ir.Value | None) -> bool:
    """Whether ``zero`` is a constant of zeros everywhere and ``data`` no constant, either of them maybe broadcast to a
    shape (``_broadcast_constant``: ``torch.zeros_like(x)``): a ``Where`` taking them zeroes data where it takes
    ``zero``."""
    zeros = _broadcast_constant(zero) if zero is not None else None
    if zeros is None or zeros.size == 0 or (zeros.numpy() != 0).any():
        return False
    return data is not None and _broadcast_constant(data) is None


def _broadcast_constant(value: ir.Value) -> ir.TensorProtocol | None:
    """The constant ``value`` is, or that a ``ConstantOfShape``, or an ``Expand``, cast or reshape of a constant,
    repeats into it (``torch.full_like(scores, min)``): a fill built at the scores' shape is no data (``Where(mask, 0,
    fill)``, Hugging Face's mask attending where true, was read as zeroing data, padding where true, until review s74
    late3)."""
    while (tensor := ir.convenience.get_const_tensor(value)) is None:
        node = value.producer()
        if node is None or not is_onnx_domain(node) or not node.inputs or node.inputs[0] is None:
            return None
        if node.op_type == "ConstantOfShape":
            attribute = node.attributes.get("value")
            return attribute.as_tensor() if attribute is not None else ir.tensor(np.zeros(1, np.float32))
        if node.op_type not in _BROADCAST_MOVES:
            return None
        value = node.inputs[0]
    return tensor


# Ops that repeat, cast or reshape a constant without changing which numbers it holds (``_broadcast_constant``).
_BROADCAST_MOVES = frozenset({"Expand", "Cast", "CastLike", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Tile"})


def _is_fill(value: ir.Value | None) -> bool:
    """Whether ``value`` is a constant whose every element is -1e3 or below (a mask's fill: -1e9, -inf), or one
    broadcast to a shape (``_broadcast_constant``)."""
    tensor = _broadcast_constant(value) if value is not None else None
    if tensor is None or not tensor.dtype.is_floating_point() or tensor.size == 0:
        return False
    return bool(np.all(tensor.numpy().astype(np.float64) <= -1e3))


def _is_mask(value: ir.Value) -> bool:
    """Whether input ``value`` is a padding mask, by name or by what the graph does with it
    (``optimizer.padding.looks_like_mask``)."""
    from optimizer.padding import looks_like_mask  # lazily: a pass imported alone loads no padding

    return looks_like_mask(value)


def _padding_mask(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Ones (attend), except that a ``[batch >= 2, seq >= 4]`` mask pads its last row's final quarter.

    Right padding leaves every query row some key to attend to, so the original's
    outputs stay finite, while verification still sees masking at work.
    """
    mask = np.ones(shape, dtype=dtype)
    if len(shape) == 2 and shape[0] >= 2 and shape[1] >= 4:
        mask[-1, shape[1] - shape[1] // 4 :] = 0
    return mask


def _index_range(value: ir.Value, dims: Mapping[str, int] | None = None, *, widest: bool = False) -> int | None:
    """The smallest table size any element of ``value`` indexes into, if any (see ``_index_bounds``)."""
    whole, components, _, _ = _index_bounds(value, dims, widest=widest)
    bounds = [bound for bound in (whole, *components.values()) if bound is not None]
    return min(bounds) if bounds else None


def _index_low(value: ir.Value, dims: Mapping[str, int] | None = None, *, widest: bool = False) -> int:
    """The least value to generate for every element of integer ``value``: 0, unless it is offset below a table
    (``_index_bounds``)."""
    _, _, low, component_lows = _index_bounds(value, dims, widest=widest)
    return max([low, *component_lows.values()])


def _index_lows(
    value: ir.Value, shape: tuple[int, ...], dims: Mapping[str, int] | None = None, *, widest: bool = False
) -> int | np.ndarray:
    """The least value to generate integer ``value`` of ``shape`` from: ``_index_low``, or, where ``value`` is a
    ``GatherND`` index tuple itself, one per position along its last axis (each component offset on its own)."""
    _, components, low, component_lows = _index_bounds(value, dims, widest=widest)
    if not components or not shape:
        return max([low, *component_lows.values()])  # ``_index_low``, from the bounds already walked
    return np.array([max(low, component_lows.get(component, 0)) for component in range(shape[-1])])


def _index_highs(
    value: ir.Value, shape: tuple[int, ...], dims: Mapping[str, int] | None = None, *, widest: bool = False
) -> int | np.ndarray:
    """The exclusive upper bound to generate integer ``value`` of ``shape`` under.

    The table size its elements index (``_index_bounds``), or, where ``value`` is a ``GatherND``
    index tuple itself (its last axis the tuple's components), one bound per position along that
    last axis, to broadcast against it; ``_DEFAULT_INT_HIGH`` where no table (or an empty one) bounds it.
    """
    whole, components, _, _ = _index_bounds(value, dims, widest=widest)
    if not components or not shape:
        return _index_range(value, dims, widest=widest) or _DEFAULT_INT_HIGH
    highs = []
    for component in range(shape[-1]):
        bounds = [bound for bound in (whole, components.get(component)) if bound is not None]
        highs.append(min(bounds) if bounds else 0)
    return np.array([high or _DEFAULT_INT_HIGH for high in highs])


# How the elements of the value ``_index_bounds`` follows sit in the value reached: ("axis", offset):
# position j along the followed value's last axis is position offset + j along this one's; ("range", low,
# high): each element is at some position in [low, high) along this one's last axis (high None: unknown).
_IndexPlace = tuple[str, int] | tuple[str, int, int | None]

# An affine map of the followed value's elements reaching the value now followed: each element v became
# scale * v + offset for one (scale, offset) pair of the two arrays broadcast together. Aligned arrays broadcast
# against the value as ONNX broadcasts (right-aligned), so a constant added to it meets each pair at its own
# elements; once a Reshape, Concat... moves elements, the pairs are a flat list that any element of a constant
# may meet.
_MAX_PAIRS = 4096
_IDENTITY_MAP = (np.array(1, np.int64), np.array(0, np.int64), True)
_AFFINE_OPS = frozenset({"Add", "Sub", "Mul", "Neg"})
# Ops that select elements of their data (input 0) unchanged: ids gathered there (torch's ``prefix[:, -1]``,
# ``Gather(prefix, -1, axis=1)``) index a table after them as drawn. Not followed, arabic-name-romanizer's decoder
# drew its ids 0 or 1, and 2 of its 160 embedding rows were verified.
_SELECTING_OPS = frozenset({"Gather", "GatherElements", "GatherND"})


def _pairs(scale: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (scale, offset) pairs as two flat arrays; the corners of their bounding box where there are
    more than ``_MAX_PAIRS`` (a bound ``_affine_interval`` checks, linear in both, holds on the box where it holds
    on its corners)."""
    scale, offset = np.broadcast_arrays(scale, offset)
    pairs = np.unique(np.stack([scale.reshape(-1), offset.reshape(-1)], axis=1), axis=0)
    if len(pairs) > _MAX_PAIRS:
        pairs = np.array(
            [(a, b) for a in (pairs[:, 0].min(), pairs[:, 0].max()) for b in (pairs[:, 1].min(), pairs[:, 1].max())]
        )
    return pairs[:, 0], pairs[:, 1]


def _moved(mapping: tuple) -> tuple:
    """``mapping`` once elements change places: its pairs, no longer aligned with the value."""
    scale, offset, aligned = mapping
    return mapping if not aligned and scale.ndim == 1 else (*_pairs(scale, offset), False)


def _then_affine(mapping: tuple, node: ir.Node, index: int, dims: Mapping[str, int] | None) -> tuple | None:
    """``mapping`` followed by ``node`` (Add, Sub, Mul by an integer constant, or Neg) reading the followed value at
    ``index``; None where the other operand is not a constant (see ``_integer_constant``) or does not broadcast."""
    scale, offset, aligned = mapping
    if node.op_type == "Neg":
        return -scale, -offset, aligned
    if len(node.inputs) != 2 or (constant := _integer_constant(node.inputs[1 - index], dims)) is None:
        return None
    if not aligned:  # any pair may meet any element of the constant
        scale, offset, constant = scale[:, None], offset[:, None], constant.reshape(1, -1)
    try:
        if node.op_type == "Add":
            scale, offset = np.broadcast_arrays(scale, offset + constant)
        elif node.op_type == "Mul":
            scale, offset = scale * constant, offset * constant
        elif index == 0:  # Sub(v, c)
            scale, offset = np.broadcast_arrays(scale, offset - constant)
        else:  # Sub(c, v)
            scale, offset = np.broadcast_arrays(-scale, constant - offset)
    except ValueError:  # shapes that do not broadcast: ONNX Runtime refuses the model itself
        return None
    if not aligned or max(scale.size, offset.size) > _MAX_PAIRS:
        return (*_pairs(scale, offset), False)
    return np.array(scale), np.array(offset), True


def _affine_interval(size: int, mapping: tuple) -> tuple[int, int | None]:
    """The values ``[low, high)`` (``high`` None: no end) that, drawn for the followed value, keep ``mapping``'s image
    inside a table axis of ``size`` for every pair: in [0, size) where that leaves at least two values to draw, else
    in ONNX's [-size, size) (a model that negates an index reads rows from the end by design); (0, 0) where none
    fits. Only values from 0 are drawn; a pair that scales by 0 takes any."""

    def interval(first: int, end: int) -> tuple[int, int | None] | None:
        low, last = 0, None
        for a, b in zip(*(part.tolist() for part in _pairs(*mapping[:2]))):
            if a == 0:
                if not first <= b < end:
                    return None
                continue
            # first <= a * v + b <= end - 1, solved for v (ceiling and floor divisions by |a|)
            below, above = (first - b, end - 1 - b) if a > 0 else (b - end + 1, b - first)
            low, last = max(low, -(-below // abs(a))), (above // abs(a) if last is None else min(last, above // abs(a)))
        if last is not None and last < low:
            return None
        return low, None if last is None else last + 1

    within = interval(0, size)
    if within is not None and (within[1] is None or within[1] - within[0] >= 2):
        return within
    return interval(-size, size) or within or (0, 0)


def _index_bounds(
    value: ir.Value, dims: Mapping[str, int] | None = None, *, widest: bool = False
) -> tuple[int | None, dict[int, int], int, dict[int, int]]:
    """The exclusive bounds ``value``'s elements are drawn under: one for every element, one per position along its
    last axis, the least value to draw for every element (0 unless ``value`` is offset below the table; see
    below), and the least per position along its last axis (a ``GatherND`` tuple's components, each offset on
    its own).

    A ``Gather`` reads every element as an index into the table's ``axis``: its size bounds them all.
    A ``GatherND`` reads its indices' last axis as a tuple, component k indexing the table's axis ``batch_dims +
    k``. A ``ScatterElements`` (a ``ScatterND``) writes at its indices as the ``Gather`` (``GatherND``) reads: a graph
    network that sums its edges into its nodes so (``x [num_nodes, 8]``, its edges' targets in ``edge_index``) was
    taken for a batch of nodes, cut into 16, and ``compare`` said ONNX Runtime cannot run it. A ``GatherElements``
    reads each element along its ``axis`` as a ``Gather`` does (torch's ``x.gather(0, index)``: so too until a later
    review in session 69, its nodes cut into 16).
    ``value`` is followed to both through ``Cast``/``Identity`` (which keep its last axis), ``Div`` by a scalar
    constant of at least 1 (read unchanged, its quotient's bounds are mapped back through it, ``_through_division``;
    elsewhere it keeps an index drawn within the table within it) and ``Max``/``Min`` with one of at least 0 (which keep
    an index drawn within the table within it, ``_contracts``), ``Unsqueeze`` (a new last axis puts every element at
    component 0; GPT-J's dynamo export), a last-axis ``Concat`` (the components of the inputs before it shift it on;
    where their widths are unknown, it may sit at any component; widths are read by ``_last_dim``) and the other
    index-preserving ops and the data of a ``Gather``, ``GatherElements`` or ``GatherND`` (which move elements to
    positions unknown). So an input that is an index tuple itself has its
    component j bounded by the table's axis ``batch_dims + j``; one whose elements may sit at several components, by the
    smallest of those axes (with ``widest``, the largest: a guess that ``_vary_ambiguous_indices`` checks on ONNX
    Runtime). Where one input indexes several tables, each bound is the smallest met: a bound on every element (a
    Gather's) also bounds each component.

    ``value`` is followed through ``Add``, ``Sub`` and ``Mul`` by an integer constant and ``Neg`` too (torch's
    legacy export spells ``table[batch, ids]`` as ``Gather(Flatten(table), ids + Range(0, 2) * 64)``): each
    element ends as ``scale * v + offset``, for one of the pairs the constants broadcast to it, and is drawn
    so that every pair keeps it in the table (``_affine_interval``; ``ids - 1`` is drawn from 1). A constant
    is an initializer, a ``Constant`` node's tensor, or what a few integer ops compute from them, from fixed
    dims and from the graph inputs' dims as ``dims`` binds them (``_integer_constant``); past an operand that
    is not one, nothing is followed (and that table bounds nothing). Negative values are not drawn: an index
    read as drawn is bounded by its axis's size.
    A table's size is its recorded shape's,
    or a constant's (an initializer, a ``Constant`` node's tensor, through a ``Transpose``, ``Flatten``, ``Cast``
    or ``Identity``: GPT-J's legacy export inlines its ``embed_positions`` as a Constant with no shape
    recorded); a dim that is not a number bounds nothing.

    Where nothing above bounds ``value``, an ``Equal`` with a constant table of integers it reaches unchanged (a
    one-hot encoding, ``_compared_table``) bounds it by that table's values and one past them, which no class matches:
    no table is read out of range there, but drawn 0 or 1 it selects 2 of the table's classes; drawn over the classes
    alone, a check against special token ids (``Equal(ids, [101, 102])``) found every token special.
    """
    whole: list[int] = []
    components: dict[int, int] = {}
    lows = [0]
    component_lows: dict[int, int] = {}
    frontier: list[tuple[ir.Value, _IndexPlace, tuple]] = [(value, ("axis", 0), _IDENTITY_MAP)]
    seen: set[tuple] = set()
    # A Div read by the value as drawn is mapped back through (``_through_division``). Values reached through
    # any other Div (after an offset, or at a shifted component): its bound holds only for the index as it
    # reaches the table, so no affine op after it is followed (Div(i, 2) - 10 is not i - 10). Max/Min pass the
    # drawn values through unchanged where they are past their constant, so an offset after them still applies.
    contracted: set[int] = set()
    # The classes an Equal compares the value with (``_compared_table``): drawn over them where no table bounds it.
    compared: list[tuple[int, int]] = []
    while frontier:
        current, place, mapping = frontier.pop()
        key = (
            id(current),
            place,
            mapping[2],
            *(part.shape for part in mapping[:2]),
            *(part.tobytes() for part in mapping[:2]),
        )
        if key in seen:
            continue
        seen.add(key)
        for node, index in current.uses():
            if not is_onnx_domain(node):
                continue
            if (
                node.op_type == "Div"
                and index == 0
                and id(current) not in contracted
                and place == ("axis", 0)
                and _is_identity(mapping)
                and _contracts(node, dims)
            ):
                _through_division(node, dims, widest, whole, components, lows, component_lows)
                continue
            if id(current) in contracted or (node.op_type == "Div" and index == 0):
                contracted.update(id(out) for out in node.outputs)
            if node.op_type in ("Gather", "GatherElements", "ScatterElements") and index == 1:
                table = _table_shape(node.inputs[0], dims)
                if table and isinstance(size := table[node.attributes.get_int("axis", 0) % len(table)], int):
                    low, high = _affine_interval(size, mapping)
                    lows.append(low)
                    if high is not None:
                        whole.append(high)
            elif node.op_type in ("GatherND", "ScatterND") and index == 1:
                table = _table_shape(node.inputs[0], dims)
                if not table:
                    continue
                first = node.attributes.get_int("batch_dims", 0)  # the table axis component 0 indexes
                width = _last_dim(current)  # the components of the tuple; the table's axes left where unknown
                end = len(table) if width is None else min(len(table), first + width)
                if place[0] == "axis":
                    for component in range(end - first - place[1]):
                        size = table[first + place[1] + component]
                        if not isinstance(size, int):
                            continue
                        low, high = _affine_interval(size, mapping)
                        component_lows[component] = max(low, component_lows.get(component, 0))
                        if high is not None:
                            components[component] = min(high, components.get(component, high))
                else:
                    if place[2] is not None:
                        end = min(end, first + place[2])
                    sizes = [size for size in table[first + place[1] : end] if isinstance(size, int)]
                    intervals = [_affine_interval(size, mapping) for size in sizes]
                    if widest and intervals:  # a guess: the widest axis the element may index
                        intervals = [max(intervals, key=lambda pair: math.inf if pair[1] is None else pair[1])]
                    lows.extend(low for low, _ in intervals)
                    if highs := [high for _, high in intervals if high is not None]:
                        whole.append(min(highs))
            elif (
                node.op_type in _AFFINE_OPS
                and id(current) not in contracted
                and (mapped := _then_affine(mapping, node, index, dims)) is not None
            ):
                frontier.extend((out, place, mapped) for out in node.outputs)
            elif node.op_type == "Unsqueeze" and index == 0:
                axes = _constant_ints(node.inputs[1] if len(node.inputs) > 1 else None)
                rank = _rank(current)
                if axes is not None and (-1 in axes or (rank is not None and rank + len(axes) - 1 in axes)):
                    kept = ("range", 0, 1)  # a new last axis of one: every element is component 0
                elif axes is not None and rank is not None:
                    kept = place  # the last axis stays last
                else:
                    kept = ("range", 0, None)
                frontier.extend((out, kept, _moved(mapping)) for out in node.outputs)
            elif node.op_type == "Concat":
                rank = _rank(current)
                axis = node.attributes.get_int("axis", 0)
                if axis == -1 or (rank is not None and axis == rank - 1):
                    widths = [_last_dim(before) for before in node.inputs[:index]]
                    if None in widths:
                        kept = ("range", 0, None)
                    elif place[0] == "axis":
                        kept = ("axis", place[1] + sum(widths))
                    else:
                        high = None if place[2] is None else place[2] + sum(widths)
                        kept = ("range", place[1] + sum(widths), high)
                elif axis < -1 or (rank and axis % rank != rank - 1):
                    kept = place  # joined along another axis: the last keeps its components
                else:
                    kept = ("range", 0, None)
                frontier.extend((out, kept, _moved(mapping)) for out in node.outputs)
            elif node.op_type == "Equal" and index < 2 and len(node.inputs) == 2 and _unchanged(mapping):
                if (table := _compared_table(node.inputs[1 - index], dims)) is not None:
                    compared.append(table)
            elif node.op_type == "Where" and index == 2 and _normalizes_negative(node, current, dims):
                # torch's Where(i < 0, i + n, i): an index drawn non-negative takes the last branch, itself.
                frontier.extend((out, place, mapping) for out in node.outputs)
            elif node.op_type in _CONTRACTING_OPS and index == 0 and _contracts(node, dims):
                frontier.extend((out, place, mapping) for out in node.outputs)
            elif (node.op_type in _INDEX_PRESERVING_OPS or node.op_type in _SELECTING_OPS) and index == 0:
                if node.op_type in ("Cast", "Identity"):
                    frontier.extend((out, place, mapping) for out in node.outputs)
                else:
                    frontier.extend((out, ("range", 0, None), _moved(mapping)) for out in node.outputs)
    if compared and not whole and not components and max(lows) == 0:
        lows.append(min(low for low, _ in compared))
        # One value past the classes, which none matches: a table of special ids ([CLS] 101, [SEP] 102) is no one-hot,
        # and drawn over its values alone every token was special (a review).
        whole.append(max(high for _, high in compared) + 1)
    width = _last_dim(value)  # a tuple is no wider than the input: a table's further axes bound nothing of it
    components = {j: size for j, size in components.items() if width is None or j < width}
    component_lows = {j: low for j, low in component_lows.items() if width is None or j < width}
    return (min(whole) if whole else None), components, max(lows), component_lows


def _compared_table(value: ir.Value | None, dims: Mapping[str, int] | None) -> tuple[int, int] | None:
    """``[low, high)`` of the integers a constant of more than one element holds, from 0, where they fill at least half
    of that span: the classes an ``Equal`` one-hot encodes its other operand against (tf2onnx's spelling of jax's
    ``one_hot``, magika's bytes against 0 ... 256); else None. Drawn 0 or 1, as other integers that index nothing
    are, magika's bytes selected 2 of its 257 embedding rows, and a rewrite wrong for every other byte verified."""
    table = _integer_constant(value, dims) if value is not None else None
    if table is None or table.size < 2:
        return None
    classes = np.unique(table[table >= 0])
    if classes.size < 2 or 2 * classes.size < classes[-1] - classes[0] + 1:
        return None
    return int(classes[0]), int(classes[-1]) + 1


def _unchanged(mapping: tuple) -> bool:
    """Whether every element reaches the followed value as drawn, wherever it moved (each pair scales by 1, adds 0)."""
    scale, offset, _ = mapping
    return bool(np.all(scale == 1) and np.all(offset == 0))


def _is_identity(mapping: tuple) -> bool:
    """Whether ``mapping`` leaves every element as drawn (the followed value reaches this one unchanged)."""
    scale, offset, aligned = mapping
    return aligned and scale.size == 1 and offset.size == 1 and int(scale) == 1 and int(offset) == 0


def _through_division(
    node: ir.Node,
    dims: Mapping[str, int] | None,
    widest: bool,
    whole: list[int],
    components: dict[int, int],
    lows: list[int],
    component_lows: dict[int, int],
) -> None:
    """Add to the bounds ``_index_bounds`` collects those of ``Div(v, c)`` (``c >= 1`` a scalar constant, ``v``
    the followed value unchanged) mapped back through the division: the quotient's own bounds are followed from
    the Div's output (an offset or a negation after it included), and a quotient in ``[low, high)`` takes ``v``
    in ``[c * low, c * high)`` (drawn from 0, ``v // c`` truncates as ONNX's integer Div does). A quotient that
    may start at 0 keeps ``v`` within the quotient's own bound, as before this mapping: within the table,
    ``v // c`` stays within it."""
    divisor = int(_integer_constant(node.inputs[1], dims).reshape(()))
    high, by_component, low, low_by_component = _index_bounds(node.outputs[0], dims, widest=widest)
    if low == 0 and not any(low_by_component.values()):
        divisor = 1
    lows.append(divisor * low)
    if high is not None:
        whole.append(divisor * high)
    for component, bound in by_component.items():
        components[component] = min(divisor * bound, components.get(component, divisor * bound))
    for component, bound in low_by_component.items():
        component_lows[component] = max(divisor * bound, component_lows.get(component, 0))


def _normalizes_negative(node: ir.Node, value: ir.Value, dims: Mapping[str, int] | None) -> bool:
    """Whether ``node`` is ``Where(Less(value, c), _, value)`` with a constant ``c <= 0``: torch's normalization of
    a negative index (``i + n`` where ``i < 0``), which passes a non-negative ``value`` through unchanged."""
    condition = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    if condition is None or condition.op_type != "Less" or not is_onnx_domain(condition):
        return False
    if len(condition.inputs) != 2 or condition.inputs[0] is not value:
        return False
    limit = _integer_constant(condition.inputs[1], dims)
    return limit is not None and limit.size == 1 and int(limit.reshape(())) <= 0


def _contracts(node: ir.Node, dims: Mapping[str, int] | None) -> bool:
    """Whether ``node`` (``_CONTRACTING_OPS``) reads a scalar integer constant as its second operand, at least the
    op's least: drawn within the table, its first operand then keeps the result within it (conservatively:
    ``Div(i, 3)`` could take up to three times the rows)."""
    if len(node.inputs) != 2 or (constant := _integer_constant(node.inputs[1], dims)) is None or constant.size != 1:
        return False
    return int(constant.reshape(())) >= _CONTRACTING_OPS[node.op_type]


def _rank(value: ir.Value) -> int | None:
    """``value``'s rank where its shape is recorded, or where it is an ``Unsqueeze`` of one that is."""
    if value.shape is not None:
        return len(value.shape)
    node = value.producer()
    if node is not None and is_onnx_domain(node) and node.op_type == "Unsqueeze" and len(node.inputs) > 1:
        axes = _constant_ints(node.inputs[1])
        inner = _rank(node.inputs[0]) if node.inputs[0] is not None else None
        if axes is not None and inner is not None:
            return inner + len(axes)
    return None


def _last_dim(value: ir.Value | None, depth: int = 0) -> int | None:
    """The size of ``value``'s last axis where it is provable, else None: recorded, a constant's, 1 after an
    ``Unsqueeze(-1)``, or what ``Cast``/``Identity``/``Neg``, broadcasting ops (``Add``, ``Sub``, ``Mul``, ``Where``),
    ``Expand`` (its target's last entry, ``_shape_last``) and a last-axis ``Concat`` (the sum) make of their inputs'."""
    if value is None or depth > _MAX_HOPS:
        return None
    if value.shape is not None:
        last = value.shape[-1] if len(value.shape) else None
        return last if isinstance(last, int) else None
    if (constant := _integer_constant(value)) is not None:
        return constant.shape[-1] if constant.ndim else None
    node = value.producer()
    if node is None or not is_onnx_domain(node):
        return None
    if node.op_type == "Unsqueeze" and len(node.inputs) > 1:
        axes = _constant_ints(node.inputs[1])
        return 1 if axes is not None and -1 in axes else None
    if node.op_type in ("Cast", "Identity", "Neg"):
        return _last_dim(node.inputs[0], depth + 1)
    if node.op_type in ("Add", "Sub", "Mul", "Where"):
        return _broadcast_last([_width_or_scalar(v, depth + 1) for v in node.inputs])
    if node.op_type == "Expand" and len(node.inputs) == 2:
        return _broadcast_last([_width_or_scalar(node.inputs[0], depth + 1), _shape_last(node.inputs[1], depth + 1)])
    if node.op_type == "Concat" and node.attributes.get_int("axis", 0) == -1:
        widths = [_last_dim(v, depth + 1) for v in node.inputs]
        return None if None in widths else sum(widths)
    return None


def _width_or_scalar(value: ir.Value | None, depth: int) -> int | None:
    """``_last_dim``, or 1 for a value of rank 0 (it broadcasts as a 1 would)."""
    if value is not None and value.shape is not None and len(value.shape) == 0:
        return 1
    constant = _integer_constant(value) if value is not None else None
    if constant is not None and constant.ndim == 0:
        return 1
    return _last_dim(value, depth)


def _broadcast_last(widths: list[int | None]) -> int | None:
    """The last axis ONNX broadcasting makes of axes of these sizes (None: unknown), where provable."""
    known = {width for width in widths if width is not None and width != 1}
    if len(known) == 1:
        return known.pop()  # unknown ones are 1 or this, or the model fails
    return 1 if not known and None not in widths else None


def _shape_last(value: ir.Value | None, depth: int = 0) -> int | None:
    """The last entry of a 1-D shape tensor, where provable: a constant's, ``Shape(x)``'s (``x``'s last dim), the last
    input's of a ``Concat``."""
    if value is None or depth > _MAX_HOPS:
        return None
    if (constant := _integer_constant(value)) is not None:
        return int(constant.reshape(-1)[-1]) if constant.size else None
    node = value.producer()
    if node is None or not is_onnx_domain(node):
        return None
    if node.op_type == "Shape" and node.attributes.get_int("end", None) is None:
        return _last_dim(node.inputs[0], depth + 1)
    if node.op_type == "Concat" and node.inputs:
        return _shape_last(node.inputs[-1], depth + 1)
    if node.op_type in ("Cast", "Identity"):
        return _shape_last(node.inputs[0], depth + 1)
    return None


def _table_shape(value: ir.Value | None, dims: Mapping[str, int] | None = None) -> tuple | None:
    """``value``'s shape where it is recorded (named dims as ``dims`` binds them: a cache input that a
    ``beam_idx`` reorders has the generated batch), or a constant's it is (see ``_index_range``), else None."""
    if value is None:
        return None
    if value.shape is not None:
        return tuple(dims.get(dim.value, dim) if dims and _symbolic(dim) and dim.value else dim for dim in value.shape)
    if (tensor := ir.convenience.get_const_tensor(value)) is not None:  # an initializer or a Constant node's
        return tuple(tensor.shape)
    node = value.producer()
    if node is None or not is_onnx_domain(node):
        return None
    if node.op_type in ("Cast", "Identity"):
        return _table_shape(node.inputs[0], dims)
    if node.op_type == "Flatten":  # torch's legacy export flattens a table that two indices address
        inner = _table_shape(node.inputs[0], dims)
        if inner is None:
            return None
        axis = node.attributes.get_int("axis", 1) % (len(inner) + 1) if inner else 0
        parts = (inner[:axis], inner[axis:])
        return tuple(math.prod(part) if all(isinstance(d, int) for d in part) else None for part in parts)
    if node.op_type == "Transpose":
        inner = _table_shape(node.inputs[0], dims)
        if inner is None:
            return None
        perm = node.attributes.get_ints("perm", list(reversed(range(len(inner)))))
        return tuple(inner[axis] for axis in perm) if sorted(perm) == list(range(len(inner))) else None
    return None


def _constant_ints(value: ir.Value | None) -> list[int] | None:
    """The integers of a constant (an initializer or a ``Constant`` node's tensor), else None."""
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None or tensor.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
        return None
    return [int(v) for v in tensor.numpy().reshape(-1)]


def _shape_dims(node: ir.Node, dims: Mapping[str, int] | None = None) -> list | None:
    """The dims a ``Shape`` node returns, as recorded (numbers or symbols; named dims as ``dims`` binds them: the
    generated inputs have those sizes, and shape inference gives an intermediate value the same names where it
    copies an input's dim), or None where no shape is recorded."""
    data = node.inputs[0] if is_onnx_domain(node) and node.inputs else None
    if data is None or data.shape is None:
        return None
    shape = list(data.shape)
    if dims:
        shape = [dims.get(dim.value, dim) if _symbolic(dim) and dim.value else dim for dim in shape]
    return shape[node.attributes.get_int("start", 0) : node.attributes.get_int("end", len(shape))]


def _is_size(dim: Any) -> bool:
    return isinstance(dim, int) and dim >= 0


# Constants ``_integer_constant`` computes stay this small (an offset per batch row, a stride).
_MAX_CONSTANT = 1 << 16
_ARITHMETIC = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}


def _integer_constant(
    value: ir.Value | None, dims: Mapping[str, int] | None = None, depth: int = 0
) -> np.ndarray | None:
    """``value``'s integers (as int64) where constants and fixed dims decide them, else None.

    An integer initializer or ``Constant`` node's tensor, or what ``Add``/``Sub``/``Mul``/``Neg``, ``Cast`` to an
    integer, ``Identity``, ``Gather``, ``Unsqueeze``, ``Squeeze``, ``Reshape``, ``Concat``, ``Expand`` and ``Range``
    compute from such, and ``Shape`` of a value whose recorded dims (those sliced) are all numbers or a graph input's
    dims that ``dims`` binds (``_shape_dims``): torch's legacy
    export builds a flattened index's row offsets as ``Range(0, Shape(ids)[0]) * rows``. At most ``_MAX_CONSTANT``
    elements, through at most ``_MAX_HOPS`` ops.
    """
    if value is None or depth > _MAX_HOPS:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is not None:
        if not tensor.dtype.is_integer() or tensor.size > _MAX_CONSTANT:
            return None
        return tensor.numpy().astype(np.int64)
    node = value.producer()
    if node is None or not is_onnx_domain(node) or len(node.outputs) != 1:
        return None
    if node.op_type == "Shape":
        sizes = _shape_dims(node, dims)
        return np.array(sizes, np.int64) if sizes is not None and all(_is_size(d) for d in sizes) else None
    if node.op_type == "Gather" and len(node.inputs) == 2 and (shape := node.inputs[0]) is not None:
        producer = shape.producer()
        sizes = _shape_dims(producer, dims) if producer is not None and producer.op_type == "Shape" else None
        picks = _integer_constant(node.inputs[1], dims, depth + 1)
        if sizes is not None and picks is not None and all(-len(sizes) <= pick < len(sizes) for pick in picks.flat):
            chosen = [sizes[pick] for pick in picks.reshape(-1).tolist()]  # fixed dims of a partly symbolic shape
            return np.array(chosen, np.int64).reshape(picks.shape) if all(_is_size(d) for d in chosen) else None
    if node.op_type == "Cast" and not ir.DataType(node.attributes.get_int("to", 0)).is_integer():
        return None
    operands = [_integer_constant(v, dims, depth + 1) if v is not None else None for v in node.inputs]
    if not operands or operands[0] is None:
        return None
    data, rest = operands[0], operands[1:]
    try:
        if node.op_type in _ARITHMETIC and len(rest) == 1 and rest[0] is not None:
            result = _ARITHMETIC[node.op_type](data, rest[0])
        elif node.op_type == "Neg":
            result = -data
        elif node.op_type in ("Cast", "Identity"):
            result = data
        elif node.op_type == "Gather" and len(rest) == 1 and rest[0] is not None:
            result = np.take(data, rest[0], axis=node.attributes.get_int("axis", 0))
        elif node.op_type in ("Unsqueeze", "Squeeze"):
            axes = rest[0] if rest and rest[0] is not None else node.attributes.get_ints("axes", None)
            if node.op_type == "Unsqueeze":
                result = None if axes is None else np.expand_dims(data, tuple(np.reshape(axes, -1).tolist()))
            else:
                result = np.squeeze(data, None if axes is None else tuple(np.reshape(axes, -1).tolist()))
        elif node.op_type == "Reshape" and len(rest) == 1 and rest[0] is not None:
            target = rest[0].reshape(-1).tolist()
            if not node.attributes.get_int("allowzero", 0):
                target = [data.shape[i] if size == 0 else size for i, size in enumerate(target)]
            result = data.reshape(target)
        elif node.op_type == "Concat" and None not in rest:
            result = np.concatenate([data, *rest], axis=node.attributes.get_int("axis", 0))
        elif node.op_type == "Expand" and len(rest) == 1 and rest[0] is not None:
            target = np.broadcast_shapes(data.shape, tuple(rest[0].reshape(-1).tolist()))
            result = np.broadcast_to(data, target) if math.prod(target) <= _MAX_CONSTANT else None
        elif node.op_type == "Range" and len(rest) == 2 and None not in rest and rest[1].item() != 0:
            count = max(0, -(-(rest[0].item() - data.item()) // rest[1].item()))
            result = np.arange(data.item(), rest[0].item(), rest[1].item()) if count <= _MAX_CONSTANT else None
        else:
            result = None
    except (ValueError, IndexError):  # what ONNX Runtime would refuse (numpy's AxisError is both): nothing to read
        return None
    if result is None or np.size(result) > _MAX_CONSTANT:
        return None
    return np.asarray(result, np.int64)


# --- inputs whose values are read as sizes, axes, counts or parameters -------------------

# A candidate builder gets the consuming node, the input's shape and numpy dtype, and
# the shape of any other graph value (None where unknown); it returns the values to
# try (flat, or any shape with the input's size), or None if it cannot say.
_Builder = Callable[[ir.Node, tuple[int, ...], np.dtype, Callable[[ir.Value | None], tuple[int, ...] | None]], Any]


def _const(number: float) -> _Builder:
    return lambda node, shape, dtype, shape_of: np.full(shape, number)


def _axes(node, shape, dtype, shape_of):
    """Distinct axes 0, 1, ... of the data (Slice, Pad, Reduce*), if it has that many."""
    data = shape_of(node.inputs[0])
    count = int(np.prod(shape))
    return np.arange(count) if data is None or count <= len(data) else None


def _new_axes(node, shape, dtype, shape_of):
    return np.arange(int(np.prod(shape)))  # Unsqueeze: distinct, inside the output's rank


def _unit_axes(node, shape, dtype, shape_of):
    """Squeeze: the data's axes of size 1."""
    data = shape_of(node.inputs[0])
    count = int(np.prod(shape))
    ones = [axis for axis, size in enumerate(data or ()) if size == 1]
    return np.array(ones[:count]) if len(ones) >= count else None


def _reshape_target(node, shape, dtype, shape_of):
    """The data's own dims, leading ones merged (or trailing ones added) to the target's rank."""
    count = int(np.prod(shape))
    data = shape_of(node.inputs[0])
    if data is None:
        return np.array([1] * (count - 1) + [-1]) if count else None
    if count <= len(data):
        return np.array([int(np.prod(data[: len(data) - count + 1]))] + list(data[len(data) - count + 1 :]))
    return np.array(list(data) + [1] * (count - len(data)))


def _split_sizes(node, shape, dtype, shape_of):
    """Split/SplitToSequence: sizes that add up to the split axis (a scalar split: 1)."""
    if not shape:
        return np.ones(shape)
    data = shape_of(node.inputs[0])
    count = int(np.prod(shape))
    if data is None or not data or count == 0:
        return None
    size = data[node.attributes.get_int("axis", 0) % len(data)]
    sizes = [size // count] * count
    sizes[-1] += size - sum(sizes)
    return np.array(sizes)


def _resize_sizes(node, shape, dtype, shape_of):
    """Resize's sizes: the data's own dims (on the resized axes)."""
    data = shape_of(node.inputs[0])
    if data is None:
        return None
    axes = node.attributes.get_ints("axes", list(range(len(data))))
    return np.array([data[axis] for axis in axes])


def _roi(node, shape, dtype, shape_of):
    """Resize's region of interest: the whole image (starts 0, ends 1)."""
    count = int(np.prod(shape))
    return np.array([0.0] * (count // 2) + [1.0] * (count - count // 2))


def _affine_grid_size(node, shape, dtype, shape_of):
    """AffineGrid's output size: theta's batch, one channel, small spatial dims."""
    theta = shape_of(node.inputs[0])
    count = int(np.prod(shape))
    return np.array([theta[0], 1] + [4] * (count - 2)) if theta and count >= 2 else None


def _col2im_image(node, shape, dtype, shape_of):
    """Col2Im's image shape for 1x1 blocks: the data's blocks laid out along the last axis."""
    data = shape_of(node.inputs[0])
    count = int(np.prod(shape))
    if not data or not count:
        return None
    strides = node.attributes.get_ints("strides", [1] * count)
    pads = node.attributes.get_ints("pads", [0] * 2 * count)
    blocks = [1] * (count - 1) + [data[-1]]
    # With 1x1 blocks an axis of size n, padded by p in all, holds (n + p - 1) // stride + 1 of them.
    image = [(b - 1) * s + 1 - pads[i] - pads[i + count] for i, (b, s) in enumerate(zip(blocks, strides))]
    return np.array(image) if min(image) >= 1 else None


def _unpooled_shape(node, shape, dtype, shape_of):
    """MaxUnpool's output shape: the size pooling would have started from."""
    data = shape_of(node.inputs[0])
    kernel = node.attributes.get_ints("kernel_shape", [])
    if data is None or len(data) != len(kernel) + 2 or int(np.prod(shape)) != len(data):
        return None
    strides = node.attributes.get_ints("strides", [1] * len(kernel))
    pads = node.attributes.get_ints("pads", [0] * 2 * len(kernel))
    spatial = [
        (size - 1) * stride + k - pads[i] - pads[i + len(kernel)]
        for i, (size, stride, k) in enumerate(zip(data[2:], strides, kernel))
    ]
    return np.array([*data[:2], *spatial])


_INTEGER_ONLY = frozenset({"Div", "Mod"})  # a float divisor of 0 is a value, not an error
_REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2")
_REDUCTIONS += ("ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")

# (op, input index) -> what fits there. The first fitting candidate is tried first;
# ones, small positive values and the plain random values come after it.
_VALUE_ROLES: dict[tuple[str, int], _Builder] = {
    ("Reshape", 1): _reshape_target,
    ("Expand", 1): _const(1),  # broadcasts to the data's own shape
    ("Tile", 1): _const(1),
    ("ConstantOfShape", 0): _const(4),
    ("Range", 0): _const(0),
    ("Range", 1): _const(4),
    ("Range", 2): _const(1),
    ("Slice", 1): _const(0),
    ("Slice", 2): lambda node, shape, dtype, shape_of: np.full(shape, 1 << 30),  # clamped to the dim
    ("Slice", 3): _axes,
    ("Slice", 4): _const(1),
    ("TopK", 1): _const(1),
    ("OneHot", 1): _const(4),
    ("Split", 1): _split_sizes,
    ("SplitToSequence", 1): _split_sizes,
    ("Squeeze", 1): _unit_axes,
    ("Unsqueeze", 1): _new_axes,
    ("Pad", 1): _const(0),
    ("Pad", 3): _axes,
    ("CumSum", 1): _const(0),
    ("CumProd", 1): _const(0),
    ("Div", 1): _const(1),
    ("Mod", 1): _const(1),
    ("Resize", 1): _roi,
    ("Resize", 2): _const(1),
    ("Resize", 3): _resize_sizes,
    ("Upsample", 1): _const(1),
    ("Dropout", 1): _const(0),  # ratio 0: deterministic even in training mode
    ("NonMaxSuppression", 3): _const(0.5),
    ("AffineGrid", 1): _affine_grid_size,
    ("Col2Im", 1): _col2im_image,
    ("Col2Im", 2): _const(1),
    ("MaxUnpool", 2): _unpooled_shape,
    ("Trilu", 1): _const(0),
    ("MelWeightMatrix", 0): _const(8),
    ("MelWeightMatrix", 1): _const(16),
    ("MelWeightMatrix", 2): _const(8000),
    ("MelWeightMatrix", 3): _const(0),
    ("MelWeightMatrix", 4): _const(4000),
    **{(op, 1): _axes for op in _REDUCTIONS},
}
# Integer values are followed through ops that compute new integers (a size sliced out
# of a shape input, then concatenated into a Reshape target) for this many ops.
_MAX_HOPS = 8


def _value_uses(value: ir.Value) -> list[tuple[ir.Node, int, bool]]:
    """Where ``value``'s values are read as sizes, axes or parameters: (node, input index, direct).

    Direct means through ops that only move the values (Cast, Reshape...), so a fitting
    value can be built for that position; otherwise the values reach it computed.
    """
    found: list[tuple[ir.Node, int, bool]] = []
    frontier: list[tuple[ir.Value, bool, int]] = [(value, True, 0)]
    seen: set[int] = set()
    while frontier:
        current, direct, hops = frontier.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for node, index in current.uses():
            if not is_onnx_domain(node) or node.op_type in ("Shape", "Size"):
                continue
            if (node.op_type, index) in _VALUE_ROLES:
                if node.op_type not in _INTEGER_ONLY or (current.dtype is not None and current.dtype.is_integer()):
                    found.append((node, index, direct))
                continue
            moves = node.op_type in _INDEX_PRESERVING_OPS and index == 0
            if hops >= _MAX_HOPS:
                continue
            for output in node.outputs:
                if moves or output.dtype is None or output.dtype.is_integer():
                    frontier.append((output, direct and moves, hops + 1))
    return found


def _candidate_rounds(
    model: ir.Model,
    inputs: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    bound: Mapping[str, int],
) -> list[dict[str, np.ndarray]]:
    """The inputs to try in turn, each round replacing the value-carrying inputs; [] if there are none."""
    graph_inputs = {value.name: value for value in model.graph.inputs}

    def shape_of(value: ir.Value | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if value.name in shapes and graph_inputs.get(value.name) is value:
            return shapes[value.name]
        if value.const_value is not None:
            return tuple(value.const_value.shape)
        if value.shape is None:
            return None
        dims = [d if isinstance(d, int) else bound.get(d.value) if d.value else None for d in value.shape]
        return tuple(dims) if all(isinstance(d, int) and d >= 0 for d in dims) else None

    candidates: dict[str, list[np.ndarray]] = {}
    for value in runtime_inputs(model):
        default = inputs[value.name]
        if not isinstance(default, np.ndarray) or default.dtype.kind not in "iuf":
            continue
        uses = _value_uses(value)
        if not uses:
            continue
        shape, dtype = default.shape, default.dtype
        fits = [
            _VALUE_ROLES[node.op_type, index](node, shape, dtype, shape_of) for node, index, direct in uses if direct
        ]
        fit = next((_as_input(f, shape, dtype) for f in fits if f is not None and np.size(f) == default.size), None)
        generic = [np.ones(shape, dtype), np.full(shape, 2, dtype)]
        candidates[value.name] = [fit, *generic, default] if fit is not None else [default, *generic]
    if not candidates:
        return []
    count = max(len(values) for values in candidates.values())
    return [{name: values[min(i, len(values) - 1)] for name, values in candidates.items()} for i in range(count)]


def _as_input(values: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.asarray(values).astype(dtype).reshape(shape)


def _first_accepted(
    model: ir.Model, inputs: dict[str, Any], rounds: list[dict[str, np.ndarray]], guessed: list[str]
) -> dict[str, Any]:
    """The first round of candidates the original model runs on; InputSpecError if ONNX Runtime refuses every one.

    ``guessed`` names the inputs generated without a declared shape (they are named in the error too).
    """
    first_error: RuntimeRefusedError | None = None
    for replacements in rounds:
        candidate = {**inputs, **replacements}
        try:
            run_model(model, candidate)
        except RuntimeRefusedError as error:
            if error.action == "load the model":  # the model itself, not its inputs: verification says so
                return {**inputs, **rounds[0]}
            first_error = first_error or error
            logger.info("generated inputs refused (%s); trying the next candidates", error.reason)
            continue
        return candidate
    what = []
    if rounds[-1]:  # every input replaced (a first round may keep a compared constant: ``make_inputs``)
        what.append(f"{_quoted(rounds[-1])} (which the model reads as sizes, axes or counts)")
    if guessed:
        what.append(f"{_quoted(guessed)} (sequence elements of no declared shape)")
    raise InputSpecError(
        f"ONNX Runtime refuses every value graphopt generated for {' and '.join(what)}: {first_error.reason}; "
        f"{_WAYS_OUT}"
    )


def _quoted(names: Any) -> str:
    return ", ".join(f"'{name}'" for name in names)


# Where ``BindDimsPass`` (``--static-shapes``) keeps a graph input's shape as declared before it bound it: the
# axis that holds the samples is read there. Bound, Silero VAD's ``state [2, batch, 128]`` beside ``input [batch,
# T]`` read as a fixed batch of 2 along axis 0, and every calibration pass fed it 16 samples along axis 1.
DECLARED_SHAPE = "graphopt.declared_shape"


def _leading_dims(model: ir.Model) -> set[str]:
    """The symbolic dims that lead an input of rank 2 or more and stand at no later axis of any input, not named like
    a length (``_LENGTH_NAME``): as ``_batch_like_dims`` guesses a batch, but one that also leads an input of rank 1
    (a per-row scalar: ``t [s13]`` beside ``x [s13, 8]``) is one too."""
    return _unnamed_leading_dims(model, per_row_scalars=True)


def _unnamed_leading_dims(model: ir.Model, *, per_row_scalars: bool) -> set[str]:
    """The symbolic dims that lead an input of rank 2 or more and stand at no later axis of any input, nor (unless
    ``per_row_scalars``) lead an input of rank 1, not named like a length (``_LENGTH_NAME``)."""
    leading: set[str] = set()
    elsewhere: set[str] = set()
    for value in runtime_inputs(model):
        if value.shape is None:
            continue
        for axis, dim in enumerate(value.shape):
            if not _symbolic(dim) or not dim.value:
                continue
            if axis == 0 and len(value.shape) >= 2:
                leading.add(dim.value)
            elif axis > 0 or not per_row_scalars:
                elsewhere.add(dim.value)
    return {name for name in leading - elsewhere if not _LENGTH_NAME.search(name)}


def _read_npy_folder(files: list[Path], source: str) -> dict[str, np.ndarray]:
    """One memory-mapped array per .npy file, named by the file's stem: nothing is read until sliced."""
    arrays = {}
    for file in files:
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, EOFError) as error:  # object arrays, a bad or missing header (an empty file)
            raise InputSpecError(
                f"{source}: {file.name} is not a readable .npy array ({one_line(error, 120)}; "
                "graphopt does not unpickle objects)"
            ) from error
        except OSError as error:
            raise InputSpecError(f"{source}: cannot read {file.name} ({error.strerror or one_line(error)})") from error
        if not isinstance(array, np.ndarray):  # np.load gives an .npz archive for a zip named .npy
            close = getattr(array, "close", None)
            if close is not None:
                close()
            raise InputSpecError(f"{source}: {file.name} is an .npz archive, not one .npy array; rename it .npz")
        arrays[file.stem] = array
    return arrays

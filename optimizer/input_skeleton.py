"""``graphopt make-inputs``: a skeleton of a model's inputs, written as an ``.npz`` a user fills with real data.

Each input gets arrays of the shapes the model takes (its dims bound as ``--dim`` says, else as verification binds
them): token ids small valid ids, masks ones (or the form the graph reads them in), lengths each row's full length,
position ids counted, other values as verification generates them; and one line saying what was written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from optimizer.errors import InputSpecError, RuntimeRefusedError
from optimizer.inputs import (
    _POSITION_NAME,
    GeneratedLengths,
    _counts_frames,
    _index_low,
    _index_range,
    _is_mask,
    _row_length,
    _value_uses,
    make_inputs,
    pads_where_true,
    refuse_oversized,
    runtime_inputs,
    symbolic_dims,
    zero_fillable,
)
from optimizer.runtime import run_model
from optimizer.samples import _savez

_TOKEN_IDS = re.compile(r"input_ids|token_ids|^ids$|tokens|decoder_input_ids", re.IGNORECASE)
# Token ids in the skeleton: small, valid ids (most vocabularies keep their special tokens
# below 1000, so 1000 + i is an ordinary word piece where the table is that large).
_SKELETON_FIRST_ID = 1000


def write_input_skeleton(
    model_path: str | os.PathLike, out_path: str | os.PathLike, dims: Mapping[str, int] | None = None
) -> str:
    """Write an .npz with one correctly named, typed and shaped array per input of the model; return a summary line.

    Symbolic dims come from ``dims``, else the defaults of verification (batch-like 1,
    others 128), and where ONNX Runtime refuses the model on those, the other lengths verification
    tries (``GeneratedLengths``: shorter, then 512 and 2,048 along the free dims; a speech front end's STFT
    needs more than 128 samples). Token ids are small valid ids (inside the embedding table they index),
    attention masks (named so, or read so: ``optimizer.padding.looks_like_mask``) ones, position ids 0, 1, 2... (on
    from the past's length over a key/value cache), token type ids zeros, per-row lengths (``waveforms_lens``) each
    row's whole length, inputs read as sizes or axes the values verification finds ONNX Runtime accepts, other numbers
    zeros. The file is a template to overwrite with
    real data: it runs (or the line says ONNX Runtime refused it at every length tried), but says nothing about
    accuracy. Raises ``InputSpecError`` where
    generation does (an input of no shape).
    """
    from optimizer.model_io import load_model, write_atomically

    model = load_model(model_path)
    lengths = GeneratedLengths(model, dims)
    first: tuple[dict[str, int], dict[str, Any], list[str], str] | None = None
    while True:
        bound = lengths.binding()
        # make_inputs' own check names --inputs and --no-verify, which make-inputs does not take.
        refuse_oversized(model, [bound], what="the inputs", ways_out="bind smaller sizes with --dim NAME=SIZE")
        arrays, described = _skeleton_arrays(model, make_inputs(model, bound), bound)
        try:
            run_model(model, arrays)
            refused = ""
        except RuntimeRefusedError as error:
            refused = error.reason
        if first is None:
            first = (bound, arrays, described, refused)
        if not refused or not lengths.advance(bound):
            break
    if refused:  # at every length tried: the first is written, and the line says so
        bound, arrays, described, refused = first
    write_atomically(out_path, lambda path: _savez(path, arrays), "input skeleton")
    shown = ", ".join(f"{name}={size}" for name, size in bound.items())
    held = "; ".join(described) or "no arrays (the model has no inputs to feed)"
    line = f"wrote {out_path}: {held}" + (f" ({shown})" if shown else "")
    if refused:
        ask = "give other --dim sizes" if dims else "give --dim NAME=SIZE"
        if not dims and not symbolic_dims(model):
            # ``input [None, None]`` beside a ``state [2, None, 4]`` whose rows only a ``Concat`` holds to the audio's
            # (Silero VAD v6's reach its LSTM's batch, and run): no name for --dim to bind.
            ask = "its input dims have no names for --dim to bind: overwrite the arrays with data the model takes"
        line += f"; ONNX Runtime refuses the model on these, at every length tried ({refused}): {ask}"
    elif lengths.first_refused:
        line += f" (ONNX Runtime refused the model at {lengths.first_refused})"
    return line


# How a 4-D mask's values read (``optimizer.padding.causal_masks``), as make-inputs describes them.
_CONVENTION_WORDS = {"additive": "0 attends", "pads": "true pads", "attends": "1 attends"}


def _skeleton_arrays(
    model: ir.Model, generated: Mapping[str, Any], dims: Mapping[str, int]
) -> tuple[dict[str, Any], list[str]]:
    """The skeleton's arrays from generated inputs (``_skeleton_value``) at ``dims``, and the words describing each.
    A per-row integer lengths input (``_row_length``: ``waveforms_lens``) is each row's whole length: written as zeros
    until a review in session 69, every frame of a speech front end was masked, its outputs zeros, on a template whose
    audio a user filled in (and then the last of several rows a quarter shorter, and float lengths normal draws, each
    said to be whole, until a later one). Float lengths are fractions of each row, SpeechBrain's ``wav_lens``: ones,
    said so (zeros until a later review in session 69, every frame masked, a mean over them NaN)."""
    from optimizer.padding import (  # lazily: a pass imported alone loads no padding
        causal_mask,
        causal_masks,
        cross_masks,
        key_mask,
        key_masks,
    )

    arrays, described = dict(generated), []
    causal, keys = causal_masks(model), {**key_masks(model), **cross_masks(model)}
    for value in runtime_inputs(model):
        array = arrays[value.name]
        if isinstance(array, list):
            raise InputSpecError(
                f"input '{value.name}' is a sequence, which an .npz file cannot hold: give such inputs in Python"
            )
        if value.name in causal and np.ndim(array) == 4:
            # A decoder's 4-D mask: ones would let every token read those after it.
            rows, _, new, total = np.shape(array)
            real = np.ones((rows, total), bool)
            arrays[value.name] = causal_mask(real, new, causal[value.name], np.asarray(array).dtype)
            what = f" causal ({_CONVENTION_WORDS[causal[value.name]]}, no position padded)"
        elif value.name in keys and np.ndim(array) == 4:
            rows, _, new, total = np.shape(array)
            arrays[value.name] = key_mask(np.ones((rows, total), bool), new, keys[value.name], np.asarray(array).dtype)
            what = f" ({_CONVENTION_WORDS[keys[value.name]]}, no position padded)"
        elif value.dtype.is_integer() and (length := _row_length(model, value, dims)) is not None:
            # Each row whole: generation draws the last of two or more rows a quarter shorter (as a padding mask pads
            # it), which a template of full rows cut.
            arrays[value.name] = np.full(np.shape(array), length, dtype=np.asarray(array).dtype)
            what = " lengths (each row whole)"
        elif (
            value.dtype.is_floating_point()
            and np.ndim(array) == 1
            and (length := _row_length(model, value, dims)) is not None
        ):
            # Float lengths are fractions of each row (SpeechBrain's ``wav_lens``): zeros masked every frame. Frame
            # counts (``_counts_frames``) are each row's whole length, as integer ones (ones: one frame each).
            if _counts_frames(value):
                arrays[value.name] = np.full(np.shape(array), length, dtype=np.asarray(array).dtype)
                what = " lengths (each row whole)"
            else:
                arrays[value.name] = np.ones(np.shape(array), dtype=np.asarray(array).dtype)
                what = " lengths as fractions of each row (1: whole)"
        else:
            arrays[value.name], what = _skeleton_value(value, np.asarray(array))
        a = arrays[value.name]
        kind = "string" if a.dtype.kind in "UO" else a.dtype.name
        described.append(f"{value.name} {kind}[{', '.join(str(d) for d in a.shape)}]{what}")
    return arrays, described


def _skeleton_value(value: ir.Value, generated: np.ndarray) -> tuple[np.ndarray, str]:
    """A skeleton's value for one input, and the words saying what it holds."""
    if generated.dtype.kind == "O":  # strings: an .npz holds them as unicode, not pickled objects
        return generated.astype(str), " words"
    if _value_uses(value) or generated.dtype.kind not in "biuf":
        return generated, ""  # read as sizes or axes: the value verification found ORT accepts
    if zero_fillable(value):
        return np.zeros_like(generated), " zeros"
    if _is_mask(value):
        if pads_where_true(value):
            return np.zeros_like(generated), " zeros (true pads: PyTorch's key padding mask)"
        return np.ones_like(generated), " ones"
    if generated.dtype.kind in "iu" and _POSITION_NAME.search(value.name):
        return generated, " positions"
    if generated.dtype.kind in "iu" and (_TOKEN_IDS.search(value.name) or _index_range(value)):
        table = _index_range(value)
        # Past the special tokens where the table is known to be large; from 0 where it is
        # small or unknown (a fused EmbedLayerNormalization reads ids no Gather shows).
        low = _SKELETON_FIRST_ID if table is not None and table > 2 * _SKELETON_FIRST_ID else 0
        low = max(low, _index_low(value))  # an index offset below its table (ids - 1) starts past 0
        span = max(1, min(table or 64, low + 64) - low)
        ids = low + np.arange(generated.size) % span
        return ids.reshape(generated.shape).astype(generated.dtype), f" token ids {ids.min()}..{ids.max()}"
    return np.zeros_like(generated), " zeros"

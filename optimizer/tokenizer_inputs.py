"""Inputs a user's tokenizer writes, made what the graph reads: a causal LM's text fed as prefills, and 0/1 masks.

A user holds what a tokenizer writes: ``input_ids`` and a ``[batch, length]`` mask of 0/1, 1 where a token attends.
Graphs want other things beside it: a decoder with a key/value cache wants its caches (empty for a prefill) and
position ids; a mask may be wanted as floats (ONNX Runtime's GPT-2 export), 4-D and causal (a decoder's), 4-D over
keys (an encoder's extended or square mask), additive (0 where real, float's lowest where padded), or true where
padded. ``mend_text_inputs`` makes each, with a note saying what was made, and refuses in one line what cannot be
read (a row a length-read mask cannot say, a float mask that is no tokenizer's). ``optimizer.inputs.check_inputs``
calls it for user-given inputs (``--inputs``, ``--calibration``); ``compare --generate`` and the LLM accuracy read
text's masks with ``tokens_attending``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from optimizer.errors import InputSpecError
from optimizer.generation import positions_from_mask, recognise_causal_lm
from optimizer.inputs import (
    _IDS_NAME,
    _MASK_NAME,
    _PAST_NAME,
    _POSITION_IDS_NAME,
    _add_note,
    pads_where_true,
    runtime_inputs,
)
from optimizer.padding import added_to_scores, causal_mask, causal_masks, encoded_mask, key_mask, key_masks


def mend_text_inputs(
    model: ir.Model,
    arrays: Mapping[str, np.ndarray],
    required: Sequence[str],
    missing: Sequence[str],
    source: str,
    notes: list[str],
) -> tuple[Mapping[str, np.ndarray], list[str]]:
    """``arrays`` (given for ``model``'s inputs ``required``, ``missing`` those not given) with a tokenizer's output
    made what the graph reads, each change a note in ``notes``; and the inputs still missing. A 2-D float mask held
    as 0/1 integers is cast (``_float_mask_of_tokens``); a causal LM's text is fed as prefills (``prefill_of_text``:
    every cache empty, position ids counted from the mask, a 2-D mask for a 4-D causal one made that); a real decode
    step's 2-D mask made 4-D and causal (``_decode_step_masks``); a model without a cache's 4-D, additive or
    pads-where-true mask made from a tokenizer's (``_key_padding_masks``). ``InputSpecError``, naming ``source``,
    where text's mask cannot be read (``_refuse_unreadable_lengths``, ``_refuse_float_text_mask``)."""
    missing = list(missing)
    if cast := _float_mask_of_tokens(model, arrays):
        for name, array in cast.items():
            _add_note(notes, f"'{name}' {np.asarray(arrays[name]).dtype} cast to {array.dtype} (0 and 1 kept)")
        arrays = {**arrays, **cast}
    # A tokenizer's [batch, length] mask for a decoder's 4-D one: made that, causal over it, with the prefill.
    flat = [name for name in causal_masks(model) if np.ndim(arrays.get(name)) == 2]
    if (missing or flat) and (prefill := prefill_of_text(model, arrays, missing + flat)):
        lm = recognise_causal_lm(model)
        _refuse_unreadable_lengths(lm, arrays, source)
        filled = sorted(set(prefill) - set(arrays) - set(flat))
        # Booleans are read in such a model's own convention (``tokens_attending``), integers as a tokenizer's.
        padding = [
            name
            for name in sorted(set(prefill) & set(arrays))
            if np.asarray(arrays[name]).dtype == np.bool_ and _booleans_pad(model)
        ]
        mended = []
        if lm.input_ids in prefill:
            moved = "tokens and position ids" if lm.position_ids in arrays else "tokens"
            mended.append(f"each row's {moved} moved to its start (the model reads its mask as each row's length)")
        if lm.mask_pads and lm.attention_mask in arrays and lm.attention_mask not in padding:
            mended.append(f"{lm.attention_mask} negated (1 attends; the graph reads true as padding)")
        mended += [
            f"{name} boolean: read as the model reads its own, true where a token is padded (give 0/1 integers "
            "for a tokenizer's mask, 1 where a token attends)"
            for name in padding
        ]
        text = sorted(set(arrays) - set(flat))
        arrays = {**arrays, **prefill}
        missing = [name for name in required if name not in arrays]
        _add_note(
            notes,
            f"holds a decoder's token ids ({', '.join(text)}) without {', '.join(filled)}: fed as prefills, every "
            "cache empty"
            + (", position ids counted from the mask" if lm.position_ids in filled else "")
            + "".join(f", {name} made [batch, 1, length, length], causal" for name in flat)
            + "".join(f", {what}" for what in mended),
        )
    if stepped := _decode_step_masks(model, arrays, flat, source):
        booleans = [name for name in sorted(stepped) if np.asarray(arrays[name]).dtype == np.bool_]
        arrays = {**arrays, **stepped}
        _add_note(
            notes,
            f"holds a decoder's decode step with {', '.join(sorted(stepped))} [batch, past + new]: made "
            "[batch, 1, new, past + new], causal over it"
            + "".join(
                f", {name} boolean: read as the model reads its own, true where a token is padded"
                for name in booleans
                if _booleans_pad(model)
            ),
        )
    if keyed := _key_padding_masks(model, arrays):
        arrays = {**arrays, **keyed}
        made = ", ".join(
            f"{name} [batch, length] made "
            + (
                "true where padded, false where real (the graph reads true as padding)"
                if np.ndim(keyed[name]) == 2 and keyed[name].dtype == bool
                else "0 where real and float's lowest where padded (the graph adds it to the scores)"
                if np.ndim(keyed[name]) == 2
                else f"[batch, 1, {'1' if np.shape(keyed[name])[2] == 1 else 'length'}, length], every query "
                "attending to its row's real tokens"
                # Square, it may be a causal decoder's exported without its cache, which the graph cannot tell from an
                # encoder's: said, as its figures would be computed with every later token in view.
                + (
                    " (an encoder's, not causal: for a decoder's, give the 4-D causal mask itself)"
                    if np.ndim(keyed[name]) == 4 and np.shape(keyed[name])[2] > 1
                    else ""
                )
            )
            for name in sorted(keyed)
        )
        _add_note(notes, f"holds a tokenizer's mask: {made}")
    if missing or flat:
        _refuse_float_text_mask(model, arrays, source)
    return arrays, missing


def text_not_taken(model: ir.Model, arrays: Mapping[str, np.ndarray], missing: Sequence[str]) -> str:
    """Why ``arrays`` holding token ids were not fed as prefills (``prefill_of_text``) where only a cache or position
    ids are ``missing``: the model is no causal LM generation recognises (ONNX Runtime's GPT-2 export, its mask 2-D
    floats). "" otherwise. The refusal named ``position_ids`` alone, as if text were never taken."""
    decoder = all(_PAST_NAME.search(name) or _POSITION_IDS_NAME.search(name) for name in missing)
    if not decoder or not any(_IDS_NAME.search(name) for name in arrays):
        return ""
    lm = recognise_causal_lm(model)
    return (
        f"; token ids are fed as prefills only to a decoder graphopt recognises, and here {lm}"
        if isinstance(lm, str)
        else ""
    )


def _refuse_unreadable_lengths(lm: Any, arrays: Mapping[str, np.ndarray], source: str) -> None:
    """``InputSpecError`` where text for ``lm`` (an ``optimizer.generation.CausalLM``) that reads its mask only as each
    row's length (``padding`` "right": ONNX Runtime GenAI's ``seqlens_k``) holds a row its length cannot say: pads
    between a row's tokens (read as tokens, and as many of its last tokens cut: fed as given, as ``--generate``
    refuses), or no token at all (ONNX Runtime's GroupQueryAttention refused its length of -1 in a message naming
    none of the inputs)."""
    given = arrays.get(lm.attention_mask) if lm.attention_mask is not None else None
    if lm.padding != "right" or given is None or np.ndim(given) != 2:
        return
    for index, keep in enumerate(np.asarray(given) != 0):
        held = np.flatnonzero(keep)
        if not len(held):
            raise InputSpecError(
                f"{source}: '{lm.attention_mask}' row {index} holds no token, and the model reads its mask as each "
                "row's length (ONNX Runtime GenAI's), which must be one or more: leave the row out"
            )
        if held[-1] - held[0] + 1 != len(held):
            raise InputSpecError(
                f"{source}: '{lm.attention_mask}' row {index} masks positions between its tokens ({held[0]} to "
                f"{held[-1]}), and the model reads its mask only as each row's length (ONNX Runtime GenAI's): pads go "
                "at either end of a row; give each piece of text a row of its own"
            )


def _refuse_float_text_mask(model: ir.Model, arrays: Mapping[str, np.ndarray], source: str) -> None:
    """``InputSpecError`` where ``arrays`` are a causal LM's text (2-D token ids) beside a mask of their shape held
    as floats, which ``prefill_of_text`` does not take: the refusal named a missing cache or ``position_ids`` (what
    text is fed without), not the mask, as ``compare --generate`` does."""
    lm = recognise_causal_lm(model)
    if isinstance(lm, str) or lm.attention_mask is None or lm.input_ids not in arrays:
        return
    ids, mask = np.asarray(arrays[lm.input_ids]), arrays.get(lm.attention_mask)
    if mask is None or ids.ndim != 2 or np.shape(mask) != ids.shape or is_text_mask(np.asarray(mask), lm):
        return
    if lm.mask_convention is None and np.asarray(mask).dtype.kind == "f" and np.dtype(lm.mask_dtype).kind == "f":
        raise InputSpecError(
            f"{source}: '{lm.attention_mask}' must hold 0 and 1 alone (1 attends, as a tokenizer writes it), where it "
            f"holds other {np.asarray(mask).dtype} values (an additive mask?): save the tokenizer's mask"
        )
    raise InputSpecError(
        f"{source}: '{lm.attention_mask}' must be 0/1 integers or booleans of the ids' shape {list(ids.shape)} "
        f"(a tokenizer's mask), not {np.asarray(mask).dtype}: save it as integers (mask.astype(np.int64))"
    )


def _decode_step_masks(
    model: ir.Model, arrays: Mapping[str, np.ndarray], flat: Sequence[str], source: str
) -> dict[str, np.ndarray]:
    """The 4-D masks ``[batch, 1, new, past + new]`` (``optimizer.padding.causal_mask``, in the graph's convention) for
    the masks ``flat`` of a decoder (``causal_masks``) that ``arrays`` hold as a tokenizer's ``[batch, past + new]`` of
    0/1 beside ``new`` token ids a row and their caches (a real decode step, which ``prefill_of_text`` does not take:
    its caches are given; an empty past too). Such a step was refused with the mask's dtype or rank, as if the mask
    were wrong. ``InputSpecError`` where such a mask's length is not past + new (made 4-D all the same, ONNX Runtime
    refused it in a broadcast of the scores)."""
    lm = recognise_causal_lm(model) if flat else None
    if lm is None or isinstance(lm, str) or np.ndim(arrays.get(lm.input_ids)) != 2:
        return {}
    if not lm.cache or any(pair.past not in arrays for pair in lm.cache):
        return {}  # text without its caches: ``prefill_of_text``'s
    batch, new = np.shape(arrays[lm.input_ids])
    if np.ndim(arrays[lm.cache[0].past]) <= lm.cache[0].sequence_axis:
        return {}  # a cache of another rank: refused as such
    past = np.shape(arrays[lm.cache[0].past])[lm.cache[0].sequence_axis]
    conventions = causal_masks(model)
    made = {}
    for name in flat:
        mask, value = np.asarray(arrays[name]), next(v for v in model.graph.inputs if v.name == name)
        if mask.ndim != 2 or mask.shape[0] != batch or mask.dtype.kind not in "biu":
            continue
        if value.dtype is None or not np.isin(mask, (0, 1)).all():
            continue
        if mask.shape[1] != past + new:
            raise InputSpecError(
                f"{source}: '{name}' holds {mask.shape[1]} positions a row, where the {past} cached and {new} new "
                f"tokens make {past + new}: a decoder's [batch, past + new] mask spans both"
            )
        # Booleans for a mask the graph reads as padding where true are in its convention (``tokens_attending``).
        real = ~mask if mask.dtype == np.bool_ and conventions[name] == "pads" else mask != 0
        made[name] = causal_mask(real, new, conventions[name], value.dtype.numpy())
    return made


def _float_mask_of_tokens(model: ir.Model, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A causal LM's 2-D float mask of 0 and 1 (``recognise_causal_lm``: ONNX Runtime's GPT-2 export) that ``arrays``
    hold as a tokenizer's 0/1 integers or booleans, cast to the graph's dtype (every value kept), for text and a real
    decode step alike: floats are cast nowhere else, and such a mask was refused for its dtype."""
    floats = [
        value.name
        for value in runtime_inputs(model)
        if _MASK_NAME.search(value.name)
        and value.dtype is not None
        and value.dtype.is_floating_point()
        and value.shape is not None
        and value.shape.rank() == 2
        and np.ndim(arrays.get(value.name)) == 2
        and np.asarray(arrays[value.name]).dtype.kind in "biu"
    ]
    lm = recognise_causal_lm(model) if floats else None
    if lm is None or isinstance(lm, str) or lm.attention_mask not in floats:
        return {}
    mask = np.asarray(arrays[lm.attention_mask])
    return {lm.attention_mask: mask.astype(lm.mask_dtype)} if np.isin(mask, (0, 1)).all() else {}


def _key_padding_masks(model: ir.Model, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The 4-D masks of a model without a cache (``optimizer.padding.key_masks``: an encoder's square
    ``[batch, 1, sequence, sequence]``, or Hugging Face's extended ``[batch, 1, 1, sequence]``) that ``arrays`` hold
    as a tokenizer's ``[batch, length]`` of 0/1 integers or booleans (1 attends): each made the mask in which every
    query attends to its row's real positions (``optimizer.padding.key_mask``), in the graph's convention and dtype;
    and the 2-D float masks the graph adds to the scores (``optimizer.padding.added_to_scores``) so held: made 0 where
    real and float's lowest where padded, and so held as floats of 0 and 1 (added as given, a tokenizer's mask cast to
    floats masked nothing, until a review in session 69). Such masks were refused for their dtype or rank, where
    generated ones are made so. A 2-D boolean mask the graph reads as padding where true (``pads_where_true``) held as
    0/1 integers is a tokenizer's too: made true where padded (cast value for value until a review in session 69, it
    was inverted)."""
    made = {}
    for value in runtime_inputs(model):
        mask = np.asarray(arrays.get(value.name))
        if mask.ndim != 2 or mask.dtype.kind not in "biuf" or not mask.size or not np.isin(mask, (0, 1)).all():
            continue
        if mask.dtype.kind == "f" and not (mask == 1).any():
            continue  # all zeros: an additive mask that pads nothing, as given
        if _MASK_NAME.search(value.name) and value.dtype is not None and value.dtype.is_floating_point():
            if value.shape is not None and value.shape.rank() == 2 and added_to_scores(value):
                made[value.name] = encoded_mask(mask != 0, "additive", value.dtype.numpy())
        elif _MASK_NAME.search(value.name) and value.dtype == ir.DataType.BOOL and mask.dtype.kind in "iu":
            # A tokenizer's integers for a boolean mask the graph reads as padding where true: cast value for value
            # (1 to true), every real token was padded and every pad attended to. Given as booleans, it is the
            # graph's own convention and fed as it is.
            if value.shape is not None and value.shape.rank() == 2 and pads_where_true(value):
                made[value.name] = mask == 0
    for name, convention in key_masks(model).items():
        mask = np.asarray(arrays.get(name))
        value = next(v for v in model.graph.inputs if v.name == name)
        if mask.ndim != 2 or mask.dtype.kind not in "biu" or not mask.size or not np.isin(mask, (0, 1)).all():
            continue
        queries = 1 if value.shape[2] == 1 else mask.shape[1]
        made[name] = key_mask(mask != 0, queries, convention, value.dtype.numpy())
    return made


def prefill_of_text(
    model: ir.Model, arrays: Mapping[str, np.ndarray], missing: Sequence[str]
) -> dict[str, np.ndarray] | None:
    """The inputs a causal LM with a KV cache needs beside held-out text (``input_ids``, and an attention mask or
    not) to run it as a prefill: every cache empty, the mask ones where not given, position ids counted from it (as
    ``compare --generate`` feeds text). None unless those are all that is missing: a tokenizer's output is what a
    user holds (README's ``--quantize int4 --calibration text.npz`` was refused for its position ids). The mask is
    integers or booleans, or floats of 0 and 1 where the model's own mask is float (``is_text_mask``), 1 attending (a
    tokenizer's, whatever the model's convention): a given one is returned negated where the graph reads its mask as
    padding where true (``CausalLM.mask_pads``), and with the ids (and given position ids), each row's tokens moved to
    its start, where it reads the mask as each row's length (``padding`` "right"). Booleans for a model that pads
    where its mask is true are read so (``tokens_attending``)."""
    lm = recognise_causal_lm(model)
    if isinstance(lm, str) or lm.input_ids not in arrays or not all(pair.past in missing for pair in lm.cache):
        return None
    if not set(missing) <= {pair.past for pair in lm.cache} | {lm.attention_mask, lm.position_ids}:
        return None
    ids = np.asarray(arrays[lm.input_ids])
    given = arrays.get(lm.attention_mask) if lm.attention_mask is not None else None
    mask = np.ones(ids.shape, np.int64) if given is None else np.asarray(given)
    if ids.ndim != 2 or mask.shape != ids.shape or not is_text_mask(mask, lm):
        return None
    mask = tokens_attending(mask, lm)
    filled = {pair.past: pair.empty(len(ids)) for pair in lm.cache}
    starts = (mask != 0).argmax(axis=1) if lm.padding == "right" and given is not None else np.zeros(len(ids), int)
    if starts.any():
        # A model that reads its mask only as each row's length (GenAI's ``seqlens_k``) read a left-padded row's pads
        # as its first tokens and its last tokens as padding: each row's tokens moved to its start, as ``--generate``
        # feeds them.
        ids, mask = (
            np.stack([np.roll(row, -int(start)) for row, start in zip(array, starts, strict=True)])
            for array in (ids, mask)
        )
        filled[lm.input_ids] = ids
        given_positions = arrays.get(lm.position_ids) if lm.position_ids is not None else None
        if given_positions is not None and np.shape(given_positions) == ids.shape:
            # Given positions move with their tokens (left behind, each row's tokens read the pads' positions).
            filled[lm.position_ids] = np.stack(
                [np.roll(row, -int(start)) for row, start in zip(np.asarray(given_positions), starts, strict=True)]
            )
    # A given mask too where the graph reads it as padding where true: text's mask is a tokenizer's (1 attends), as
    # the positions below and ``--generate`` read it; cast as given, it padded every real token and attended to pads.
    if lm.attention_mask in missing or (given is not None and (lm.mask_pads or starts.any())):
        filled[lm.attention_mask] = lm.mask_feed(mask, ids.shape[1])
    if lm.position_ids in missing:
        filled[lm.position_ids] = positions_from_mask(mask, ids.shape[1]).astype(lm.positions_dtype)
    return filled


def tokens_attending(mask: np.ndarray, lm: Any) -> np.ndarray:
    """Text's mask ``mask`` as a tokenizer's, true or 1 where a token attends: integers as given (a tokenizer's,
    whatever the model's convention), and booleans for a model whose own mask pads where true (``booleans_pad``)
    read in that convention, true where a token is padded (PyTorch's key padding mask), so negated. Such a boolean
    mask was read as attending where true: every real token padded, every pad attended."""
    mask = np.asarray(mask)
    return ~mask if mask.dtype == np.bool_ and booleans_pad(lm) else mask


def _booleans_pad(model: ir.Model) -> bool:
    """``booleans_pad`` of ``model`` as a causal LM (False for one generation does not recognise)."""
    lm = recognise_causal_lm(model)
    return not isinstance(lm, str) and booleans_pad(lm)


def booleans_pad(lm: Any) -> bool:
    """Whether the causal LM ``lm`` (an ``optimizer.generation.CausalLM``) reads its mask as padding where true: a 2-D
    one (``mask_pads``) or a 4-D one of convention ``"pads"`` (``optimizer.padding.causal_masks``)."""
    return bool(lm.mask_pads or lm.mask_convention == "pads")


def is_text_mask(mask: np.ndarray, lm: Any) -> bool:
    """Whether ``mask`` is a tokenizer's mask the text of ``lm`` (an ``optimizer.generation.CausalLM``) may hold:
    integers or booleans, or, where the model's own mask is 2-D float (ONNX Runtime's GPT-2 export), floats of 0 and 1
    alone (an additive 0/-inf mask read as 0/1 would attend to its pads and pad every real token; for a 4-D mask, an
    additive one with nothing padded is all zeros)."""
    if mask.dtype.kind in "biu":
        return True
    floats = lm.mask_convention is None and lm.mask_dtype is not None and np.dtype(lm.mask_dtype).kind == "f"
    return mask.dtype.kind == "f" and floats and bool(np.isin(mask, (0, 1)).all())

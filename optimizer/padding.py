"""Padding in verification: every run on a model with a mask-like input sees padding at both ends.

A rewrite that mishandles padding (a fused attention that ignores its mask, a mask
kind decided wrongly, a mask read as key lengths, which assumes right padding) is
exact on inputs without any. Encoders' tokenizers pad on the right, decoders' on the
left, so verification needs both: generated inputs pad the last row's end, and user
``--inputs``, a full set of ``--dim``, ``--static-shapes`` or a batch fixed at 1 can
leave every row unpadded. When no input set pads both a row's start and a row's end,
a padded copy is added (``padded_copy``).

Outputs at padded positions are not compared (``padded_positions``): with causal
attention a left-padded query sees no key at all, and what a model returns there is
not defined (exporters fill such rows with a uniform softmax, fused kernels with
zeros or the first value). That includes a decoder's key/value cache at padded
positions (``present.*``, ``[batch, heads, total_sequence, head_size]``): what later
layers cache there comes from those undefined rows, and no real token reads it (the
mask that pads it is extended, not changed, at each step of generation), as long as it
holds ordinary values: a NaN, an Inf, or a value far past any the original caches is
compared (``hide_padded``), since the next step's ``q . k`` of it is not masked away.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN

_MASK_NAME = re.compile(r"mask", re.IGNORECASE)
# The per-row positions a decoder's rotary or position table reads (``inputs._POSITION_IDS_NAME``).
_POSITION_IDS_NAME = re.compile(r"position_ids$", re.IGNORECASE)
# Ops whose outputs after the first are a key/value cache with past and new positions.
_CACHE_OPS = frozenset({"GroupQueryAttention", "MultiHeadAttention", "Attention"})


class PadsWhereTrue(str):
    """The name of a mask input that pads where it is true (PyTorch's key padding mask), as ``mask_inputs`` returns
    it: the functions here read it inverted (``padded_at``), and write its padded positions true."""


class AdditiveMask(str):
    """The name of a 2-D float mask input the graph adds to the scores (``added_to_scores``: 0 attends, a large negative
    pads), as ``mask_inputs`` returns it: ``padded_at`` reads its values at -1e3 or below as padded, and the functions
    here write its padded positions float's lowest. Read as 0/1 until a review in session 69: generated so it masked
    nothing, and its zeros, where it attends, were hidden from verification as padding."""


class CausalMask(str):
    """The name of a 4-D mask input ``[batch, 1, sequence, total_sequence]`` (causal inside: ``causal_masks``; or,
    not ``causal``, a key padding for every query: ``key_masks``), as ``mask_inputs`` returns it, with how the graph
    reads it: ``padded_at`` reads it as the key positions no query attends to, ``[batch, total_sequence]``."""

    convention: str
    causal: bool

    def __new__(cls, name: str, convention: str, causal: bool = True) -> CausalMask:
        mask = super().__new__(cls, name)
        mask.convention, mask.causal = convention, causal
        return mask


_CACHE_NAME = re.compile(r"past|cache", re.IGNORECASE)
_CROSS_NAME = re.compile(r"encoder|cross", re.IGNORECASE)


# Ops a mask passes through unchanged on its way to the scores.
_MASK_LAYOUT_OPS = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Identity", "Expand", "Slice", "Tile"})


def causal_masks(model: ir.Model) -> dict[str, str]:
    """``{name: convention}`` for the inputs named ``*mask*`` declared ``[batch, 1, sequence, total_sequence]`` (some
    exporters' and hand-written generation loops' decoder mask, causal inside): ``"additive"`` for a float one the
    graph adds to the scores (0 attends, a large negative pads), ``"pads"`` for one it reads as padding where true
    (``optimizer.inputs.pads_where_true``: ``Where(mask, -inf, scores)``), ``"attends"`` otherwise (1 or true attends:
    ``Where(mask, scores, -inf)``, a multiplier). Its third and fourth dims must be named, and differently, and the
    model must take a 4-D cache (``past*``/``*cache*``): a cross-attention mask (``cross_masks``: named
    ``*encoder*``/``*cross*``, or over a length another input holds, as ``memory_mask [batch, 1, sequence, source]``
    beside ``encoder_hidden_states [batch, source, width]``, or masking scores whose keys read no cache), or one in a
    model without a cache, is not causal. Taken
    for one, a cross mask's length was bound to past + new and it was generated causal over the encoder's positions."""
    if not any(_CACHE_NAME.search(value.name) and _is_4d(value) for value in model.graph.inputs):
        return {}
    cross = cross_masks(model)
    return {name: convention for name, convention in _four_d_masks(model, square=False).items() if name not in cross}


def cross_masks(model: ir.Model) -> dict[str, str]:
    """``{name: convention}`` (as ``causal_masks``) for the 4-D inputs named ``*mask*`` declared ``[batch, 1, sequence,
    source]`` over an encoder's positions: named ``*encoder*``/``*cross*``, or whose last dim another input holds, not
    named ``*mask*`` nor a self-attention's cache (``encoder_hidden_states [batch, source, width]``, a cache named
    ``*encoder*``/``*cross*``; a static cache's length is the self-attention's), or masking scores whose keys read no
    cache input in a model that takes one (``_keys_read_no_cache``: a memory the graph computes), and the square ones
    ``[batch, 1, sequence, sequence]`` named ``*encoder*``/``*cross*`` (which ``key_masks`` leaves out; generated ones
    until a review in session 69). Generated as a key padding the same for every query (``key_mask``): they were
    generated ones, padding nothing (a rewrite dropping an additive one verified). Not read as padding in comparison
    (``mask_inputs``): the outputs at every decoder position are defined."""
    held = {
        _dim_value(dim)
        for value in model.graph.inputs
        if not _MASK_NAME.search(value.name)
        and (_CROSS_NAME.search(value.name) or not _CACHE_NAME.search(value.name))
        and (shape := _declared(value)) is not None
        for dim in shape
    }
    cached = any(_CACHE_NAME.search(value.name) and _is_4d(value) for value in model.graph.inputs)
    found = _four_d_masks(model, square=False, named_cross=True)
    square = _four_d_masks(model, square=True, named_cross=True)
    found.update((name, convention) for name, convention in square.items() if _CROSS_NAME.search(name))
    return {
        name: convention
        for name, convention in found.items()
        if _CROSS_NAME.search(name)
        or _dim_value(_declared(_input(model, name))[3]) in held
        or (cached and _keys_read_no_cache(_input(model, name)))
    }


# Ops the scores pass through unchanged in layout, or scaled, between their MatMul and the mask.
_SCORES_PATH_OPS = frozenset({"Mul", "Div", "Add", "Sub", "Cast", *_MASK_LAYOUT_OPS, "Transpose"})


def _keys_read_no_cache(mask: ir.Value) -> bool:
    """Whether the scores ``mask`` is added to (or chosen by, in a ``Where``), through ops that only move, cast or
    negate it, are a ``MatMul`` of keys (its second input) computed from no 4-D cache input (``past*``/``*cache*``): a
    cross-attention over a memory the graph computes (``memory_mask [batch, 1, sequence, source]`` over frames of
    another length, which no input holds: read as causal, its source was bound to past + new until a review in session
    69). False wherever no such ``MatMul`` is found (a fused attention op reads the mask) or one reads a cache."""
    frontier, seen, scores = [mask], set(), []
    while frontier and len(seen) < 64:
        current = frontier.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for node, index in current.uses():
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type in _MASK_LAYOUT_OPS or node.op_type in ("Cast", "Not"):
                frontier.extend(node.outputs)
            elif node.op_type == "Where" and index == 0:
                # Where(mask, scores, -inf) chooses the scores; Where(mask, 0, -inf) makes a bias to add to them.
                data = [v for v in node.inputs[1:] if v is not None and ir.convenience.get_const_tensor(v) is None]
                if data:
                    scores.extend(data)
                else:
                    frontier.extend(node.outputs)
            elif node.op_type == "Add" and len(node.inputs) == 2:
                scores.append(node.inputs[1 - index])
    matmuls = [matmul for value in scores if (matmul := _scores_matmul(value)) is not None]
    return bool(matmuls) and not any(_reads_cache(matmul.inputs[1]) for matmul in matmuls)


def _scores_matmul(value: ir.Value | None) -> ir.Node | None:
    """The ``MatMul`` that computes the scores ``value`` through scales and layout ops, or None."""
    for _ in range(16):
        node = value.producer() if value is not None else None
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "MatMul":
            return node
        if node.op_type not in _SCORES_PATH_OPS or not node.inputs:
            return None
        # The operand that is no constant: the scores, not their scale.
        value = next((v for v in node.inputs if v is not None and ir.convenience.get_const_tensor(v) is None), None)
    return None


def _reads_cache(value: ir.Value | None, limit: int = 4096) -> bool:
    """Whether ``value`` is computed from a 4-D graph input named ``past*``/``*cache*`` (or is one), or from more than
    ``limit`` values (not shown free of one). Breadth first: a self-attention's cache is a few ops above its keys."""
    frontier, seen = collections.deque([value]), set()
    while frontier and len(seen) < limit:
        current = frontier.popleft()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        node = current.producer()
        if node is None:
            if current.is_graph_input() and _CACHE_NAME.search(current.name) and _is_4d(current):
                return True
            continue
        frontier.extend(node.inputs)
    return len(seen) >= limit


def _input(model: ir.Model, name: str) -> ir.Value:
    return next(value for value in model.graph.inputs if value.name == name)


def key_masks(model: ir.Model) -> dict[str, str]:
    """``{name: convention}`` (as ``causal_masks``) for the inputs named ``*mask*`` declared
    ``[batch, 1, sequence, sequence]``, one name twice (an encoder's extended mask, or a decoder's exported without
    its cache; not ``*encoder*``/``*cross*``), or, in a model without a cache, ``[batch, 1, 1, sequence]`` (Hugging
    Face's extended mask, one row every query reads): generated as a key padding the same for every query
    (``key_mask``), which pads as a 2-D mask does (they were generated ones, padding nothing, until reviews on
    2026-12-06)."""
    cache = any(_CACHE_NAME.search(value.name) and _is_4d(value) for value in model.graph.inputs)
    return _four_d_masks(model, square=True, one_query=not cache)


def _four_d_masks(
    model: ir.Model, *, square: bool, one_query: bool = False, named_cross: bool = False
) -> dict[str, str]:
    """The 4-D ``*mask*`` inputs ``[batch, 1, sequence, total]`` whose last two dims are named, the same name where
    ``square``, else two (or, ``one_query``, whose third dim is 1 and last named), and how the graph reads each
    (``causal_masks``); those named ``*encoder*``/``*cross*`` only where ``named_cross``."""
    from optimizer.inputs import pads_where_true  # imported here: optimizer.inputs is heavier than this module

    found = {}
    for value in model.graph.inputs:
        shape = _declared(value)
        if not _MASK_NAME.search(value.name) or (_CROSS_NAME.search(value.name) and not named_cross):
            continue
        if value.dtype is None or shape is None or shape.rank() != 4:
            continue
        sequence, total = _dim_value(shape[2]), _dim_value(shape[3])
        if one_query and shape[2] == 1 and total is not None:
            sequence = total
        if shape[1] != 1 or sequence is None or total is None or (sequence == total) != square:
            continue
        if value.dtype.is_floating_point() and added_to_scores(value):
            found[value.name] = "additive"
        elif value.dtype != ir.DataType.STRING:
            found[value.name] = "pads" if pads_where_true(value) else "attends"
    return found


# The attention ops' inputs they add to the scores where float: ONNX Attention's attn_mask, and com.microsoft's
# attention_bias.
_SCORE_BIASES = {
    ("", "Attention"): 3,
    ("ai.onnx", "Attention"): 3,
    (MS_DOMAIN, "MultiHeadAttention"): 5,
    (MS_DOMAIN, "Attention"): 5,
}


def added_to_scores(value: ir.Value) -> bool:
    """Whether an ``Add`` (or an attention op's input it adds to the scores, ``_SCORE_BIASES``: ONNX ``Attention``'s
    float ``attn_mask``, taken for 1 attends and generated 0/1, masked nothing) reads ``value`` through ops that only
    move it (an additive mask)."""
    frontier, steps = [value], 0
    while frontier and steps < 32:
        current, steps = frontier.pop(), steps + 1
        for node, index in current.uses():
            if _SCORE_BIASES.get((node.domain, node.op_type)) == index:
                return True
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Add":
                return True
            if node.op_type in _MASK_LAYOUT_OPS or (
                node.op_type == "Cast"
                and node.outputs[0].dtype is not None
                and node.outputs[0].dtype.is_floating_point()
            ):
                frontier.extend(node.outputs)
    return False


def looks_like_mask(value: ir.Value) -> bool:
    """Whether graph input ``value`` is a padding mask by its name (``*mask*``) or by what the graph does with it
    (``reads_as_attention_mask``)."""
    return bool(_MASK_NAME.search(value.name)) or reads_as_attention_mask(value)


def pads_positions(value: ir.Value) -> bool:
    """Whether graph input ``value`` is a padding mask as verification and the statistics read one: it looks like a
    mask (``looks_like_mask``) and is no feature mask (``is_feature_mask``)."""
    return looks_like_mask(value) and not is_feature_mask(value)


def is_feature_mask(value: ir.Value) -> bool:
    """Whether the 2-D graph input ``value`` marks which features are present rather than which positions pad (a
    tabular ``feature_mask``): no attention reads it (``reads_as_attention_mask``), the graph only multiplies computed
    values by it (``_only_multiplies``: its values reach no scores, no pooling's divisor, no op of another domain), and
    no integer input whose last dim is its last is read as an embedding's indices (``_beside_token_ids``: a text CNN
    that zeroes its pad tokens' embeddings is padded). Until a review in session 72 every 0/1 input named ``*mask*``
    was a padding mask, and a tabular one left its absent features' rows out of the statistics and verification."""
    shape = _declared(value)
    if shape is None or shape.rank() != 2 or reads_as_attention_mask(value):
        return False
    return _only_multiplies(value) and not _beside_token_ids(value)


def feature_mask_inputs(model: ir.Model, inputs: Mapping[str, np.ndarray]) -> list[str]:
    """The inputs of ``model`` that ``inputs`` holds as a feature mask (``is_feature_mask``), 2-D, of 0 and 1, with two
    positions a row or more: verification pads them as it pads a padding mask (``padded_copy``), compared at every
    position. Left out of ``mask_inputs``, a feature mask got no padded copy, and on the user's inputs of all ones a
    rewrite wrong only where it holds a 0 (one that dropped an audio model's ``input_values * attention_mask``)
    verified, until a late review in session 72 (``tests/test_review_s72_late5.py``)."""
    names = []
    for value in model.graph.inputs:
        array = inputs.get(value.name)
        if array is None or np.ndim(array) != 2 or np.shape(array)[1] < 2 or not is_feature_mask(value):
            continue
        array = np.asarray(array)
        if array.dtype.kind in "biuf" and np.isin(array, (0, 1)).all():
            names.append(value.name)
    return names


# Ops a feature mask passes through, as their first input, unchanged in value on its way to the features it multiplies.
_FEATURE_MASK_PATH_OPS = frozenset({*_MASK_LAYOUT_OPS, "Cast", "Transpose"})


def _only_multiplies(value: ir.Value) -> bool:
    """Whether every read of ``value``, through ops that only move or cast it, multiplies computed values by it
    (``Mul`` with an operand no constant, or ``Where(mask, values, c)`` with ``|c| < 1e3``: absent features zeroed, or
    ``ScatterND`` at its ``NonZero`` positions: ``h[mask] = embedding``, ``_scatters_at``), and no ``Softmax`` reads the
    product through scales and masks (``_softmax_ahead``: a mask scaled by a computed minimum is added to the scores);
    False where anything else reads it (an ``Add`` to scores, a ``ReduceSum`` counting its tokens, a graph output),
    except a count of its positions that only sizes what is scattered there (``_sizes_only``). Both exporters write
    wav2vec2's ``hidden_states[mask_time_indices] = masked_spec_embed`` so: an int64 ``mask_time_indices`` (as Hugging
    Face's pretraining example feeds it) was a padding mask, every frame it does not mask hidden from verification and
    left out of the statistics, until a review in session 73 (``tests/test_review_s73_padding.py``)."""
    frontier, seen, multiplies = [value], set(), False
    while frontier:
        current = frontier.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if len(seen) > 64 or current.is_graph_output():
            return False
        for node, index in current.uses():
            if node.domain not in ("", "ai.onnx"):
                return False
            if node.op_type in _FEATURE_MASK_PATH_OPS and index == 0:
                frontier.extend(node.outputs)
            elif node.op_type == "Mul" and len(node.inputs) == 2 and _constant(node.inputs[1 - index]) is None:
                if _softmax_ahead(node):
                    return False  # scaled by a computed minimum and added to the scores: an attention mask
                multiplies = True
            elif node.op_type == "Where" and index == 0 and len(node.inputs) == 3:
                constants = [c for v in node.inputs[1:] if (c := _constant(v)) is not None]
                if len(constants) != 1 or not bool((np.abs(constants[0]) < 1e3).all()) or _softmax_ahead(node):
                    return False
                multiplies = True
            elif node.op_type == "NonZero" and _scatters_at(node.outputs[0]):
                multiplies = True
            elif node.op_type == "ReduceSum" and index == 0 and _sizes_only(node.outputs[0]):
                continue  # how many positions it marks, as the size of what a ScatterND writes there (dynamo's)
            else:
                return False
    return multiplies


def _scatters_at(positions: ir.Value) -> bool:
    """Whether the ``NonZero`` output ``positions`` (transposed to ``[n, rank]``) is only the indices of a
    ``ScatterND`` (``index_put``: others' values written at the mask's positions), or sized by a ``Shape``."""
    frontier, scatters = [positions], False
    while frontier:
        for node, index in frontier.pop().uses():
            if node.domain not in ("", "ai.onnx"):
                return False
            if node.op_type == "Transpose" and index == 0:
                frontier.extend(node.outputs)
            elif node.op_type == "ScatterND" and index == 1:
                scatters = True
            elif node.op_type != "Shape":
                return False
    return scatters


# Where a count of positions may go when it only sizes a tensor: the shape operands of these ops.
_SHAPE_OPERANDS = {"Expand": 1, "Reshape": 1, "Tile": 1, "ConstantOfShape": 0}


def _sizes_only(count: ir.Value) -> bool:
    """Whether ``count`` (a ``ReduceSum`` of a mask), through ``Concat``, casts and reshapes, is only a shape operand
    (``_SHAPE_OPERANDS``): dynamo's ``index_put`` expands the values it scatters to as many rows as the mask holds."""
    frontier, seen = [count], set()
    while frontier:
        current = frontier.pop()
        if id(current) in seen or len(seen) > 32:
            return False
        seen.add(id(current))
        for node, index in current.uses():
            if node.domain not in ("", "ai.onnx"):
                return False
            if node.op_type in ("Concat", "Cast", "Reshape", "Unsqueeze", "Squeeze") and (
                node.op_type == "Concat" or index == 0
            ):
                frontier.extend(node.outputs)
            elif _SHAPE_OPERANDS.get(node.op_type) != index:
                return False
    return True


# Ops token ids pass through to an embedding's Gather.
_TOKEN_ID_PATH_OPS = frozenset({*_MASK_LAYOUT_OPS, "Cast"})


def _beside_token_ids(mask: ir.Value) -> bool:
    """Whether a graph input not like a mask, its second dim ``mask``'s last (the same static size, or both dims
    symbolic, whatever their names: exporters name one length per input, ``x_len`` beside ``mask_len``), holds tokens:
    per-position vectors (three dims or more: ``inputs_embeds [batch, sequence, hidden]``, frames), or integers read as
    the indices of a ``Gather`` (an embedding: token ids) through ops that only move or cast them, or by an op of
    another domain (ONNX Runtime's ``EmbedLayerNormalization``). A tabular ``x [batch, features]`` is neither. A length
    named otherwise beside the mask's was no token's, and the mask a feature mask (the second binding padded its rows
    alike), until a late review in session 72. Integers named like token ids (``_named_like_token_ids``) are tokens
    whatever reads them."""
    last = _declared(mask)[-1]
    for value in mask.graph.inputs if mask.graph is not None else ():
        shape = _declared(value)
        if value is mask or value.dtype is None or shape is None or shape.rank() < 2:
            continue
        symbolic = not isinstance(last, int) and not isinstance(shape[1], int)
        if not (symbolic or (isinstance(last, int) and shape[1] == last)) or looks_like_mask(value):
            continue
        if shape.rank() >= 3:
            return True
        if not value.dtype.is_integer():
            continue
        if _named_like_token_ids(value.name):
            return True
        frontier = [value]
        for _ in range(16):
            if not frontier:
                break
            current = frontier.pop()
            for node, index in current.uses():
                if node.domain not in ("", "ai.onnx") or (node.op_type == "Gather" and index == 1):
                    return True
                if node.op_type in _TOKEN_ID_PATH_OPS and index == 0:
                    frontier.extend(node.outputs)
    return False


def _named_like_token_ids(name: str) -> bool:
    """Whether an input's name says it holds token ids (``input_ids``, ``decoder_input_ids``, ``token_ids``), read
    by an embedding or not: a tagger whose ids the graph masks before anything reads them (``Mul(input_ids, mask)``)
    lost its padding mask to the feature-mask rule, and its padded labels counted as agreeing, until a review in
    session 72."""
    lowered = name.lower()
    return lowered.endswith("input_ids") or lowered.endswith("token_ids") or lowered in ("ids", "tokens")


# Ops that turn a mask's 0/1 into the numbers added to the scores (``(1 - mask) * min``, clamped), besides those
# that move it.
_MASK_ARITHMETIC_OPS = frozenset({"Sub", "Mul", "Equal", "Max", "Min"})
# Ops that move a mask's values (their first input) on its way to the scores: a layout, and the gathers of
# transformers 5's mask functions (``Flatten``, then ``Gather`` at the batch and key positions, combined by ``And``).
_MASK_GATHER_OPS = frozenset({*_MASK_LAYOUT_OPS, "Flatten", "Gather", "GatherElements", "GatherND"})
# ONNX Runtime's attention ops' 0/1 padding mask inputs: a model fused already reads its mask there.
_MASK_INDICES = {(MS_DOMAIN, "Attention"): 3, (MS_DOMAIN, "MultiHeadAttention"): 4}


def reads_as_attention_mask(value: ir.Value) -> bool:
    """Whether the graph reads the 2-D input ``value`` (numbers or booleans) as an attention mask, whatever its name:
    through ops that only move, cast or negate it, and arithmetic with constants, it is scaled to -1e3 or beyond
    (``Mul`` by such a constant, or a ``Where`` choosing one) and added to (or chooses among) scores a ``MatMul`` of two
    computed operands gives (queries and keys), as Hugging Face's extended mask ``(1 - mask[:, None, None, :]) * min``
    is, or as transformers 5 builds it (gathered at the key positions, ``And`` with another mask, ``Where(mask, 0,
    min)``). The imitator ALBERT taggers' ``onnx::Unsqueeze_1`` (PyTorch 2.0's legacy export) is one: named
    otherwise, its padding was scored as real tokens until a review in session 69. A ``token_type_ids`` or
    ``position_ids`` (read by an embedding's ``Gather``) is none, nor a float bias added to the scores unscaled (its
    values are no 0/1). One that ONNX Runtime's ``Attention`` reads as its ``mask_index`` or ``MultiHeadAttention`` as
    its ``key_padding_mask``, or that, scaled so, an attention op adds to its scores (``_SCORE_BIASES``: a model fused
    already) is one too."""
    return next(_attention_reads(value), False) is not False


def _attention_reads(value: ir.Value) -> Iterator[ir.Node | None]:
    """Where the graph reads the 2-D input ``value`` as an attention mask (``reads_as_attention_mask``): each scores
    ``MatMul`` it is added to or chooses among, or None for an attention op that reads it (a model fused already)."""
    shape = _declared(value)
    if value.dtype is None or value.dtype == ir.DataType.STRING or shape is None or shape.rank() != 2:
        return
    frontier, seen = [(value, False)], set()
    while frontier and len(seen) < 64:
        current, scaled = frontier.pop()
        if (id(current), scaled) in seen:
            continue
        seen.add((id(current), scaled))
        for node, index in current.uses():
            if _MASK_INDICES.get((node.domain, node.op_type)) == index and not scaled:
                yield None
            if _SCORE_BIASES.get((node.domain, node.op_type)) == index and scaled:
                yield None
            if node.domain not in ("", "ai.onnx") or not node.outputs:
                continue
            if (node.op_type in _MASK_GATHER_OPS and index == 0) or node.op_type in ("Cast", "Not", "And", "Or"):
                frontier.extend((out, scaled) for out in node.outputs)
            elif node.op_type in _MASK_ARITHMETIC_OPS and len(node.inputs) == 2:
                constant = _constant(node.inputs[1 - index])
                if constant is None:
                    continue
                large = node.op_type == "Mul" and constant.size > 0 and bool((np.abs(constant) >= 1e3).all())
                frontier.append((node.outputs[0], scaled or large))
            elif node.op_type == "Where" and index == 0:
                branches = [v for v in node.inputs[1:] if v is not None]
                constants = [c for v in branches if (c := _constant(v)) is not None]
                large = any(c.size > 0 and (np.abs(c) >= 1e3).all() for c in constants)
                data = [v for v in branches if _constant(v) is None]
                if large:
                    yield from (_scores_matmul(v) for v in data if _query_key_scores(v))
                # Filled where it masks, else the mask's own values: transformers 4's ``inverted.masked_fill(
                # inverted.bool(), min)`` of ``inverted = 1 - mask``, read as no attention mask until a review in
                # session 73 (``tests/test_review_s73_padding.py``).
                if large and all(any((id(v), s) in seen for s in (False, True)) for v in data):
                    frontier.append((node.outputs[0], True))
            elif node.op_type == "Add" and len(node.inputs) == 2 and scaled:
                if _query_key_scores(node.inputs[1 - index]):
                    yield _scores_matmul(node.inputs[1 - index])


def _constant(value: ir.Value | None) -> np.ndarray | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return None if tensor is None else np.asarray(tensor.numpy(), dtype=np.float64)


def _query_key_scores(value: ir.Value | None) -> bool:
    """Whether ``value`` is computed by a ``MatMul`` of two computed operands (queries and keys, not a layer's input and
    its weight) through scales and layout ops (``_scores_matmul``)."""
    matmul = _scores_matmul(value)
    return matmul is not None and all(
        operand is not None and ir.convenience.get_const_tensor(operand) is None for operand in matmul.inputs[:2]
    )


def causal_mask(real: np.ndarray, sequence: int, convention: str, dtype: np.dtype) -> np.ndarray:
    """The 4-D mask ``[batch, 1, sequence, total]`` of ``convention`` (``causal_masks``) over the key positions
    ``real`` (``[batch, total]``, True where a token is real): the new tokens are the last ``sequence`` positions, and
    each attends to the real positions up to its own. A query that would attend to none (a row's padded start) attends
    to every real position of its row instead, as Hugging Face's ``_unmask_unattended`` does: scores masked
    everywhere are NaN under ``-inf``, and its outputs are padding (``padded_at``), not compared."""
    real = np.asarray(real, bool)
    total = real.shape[1]
    positions = total - sequence + np.arange(sequence)
    attend = (np.arange(total)[None, :] <= positions[:, None])[None] & real[:, None, :]
    attend = np.where(attend.any(axis=-1, keepdims=True), attend, real[:, None, :])[:, None]
    return encoded_mask(attend, convention, dtype)


def key_mask(real: np.ndarray, sequence: int, convention: str, dtype: np.dtype) -> np.ndarray:
    """The 4-D mask ``[batch, 1, sequence, total]`` of ``convention`` in which every query attends to the key positions
    ``real`` (``[batch, total]``, True where a token is real) alone (``key_masks``)."""
    real = np.asarray(real, bool)
    return encoded_mask(
        np.broadcast_to(real[:, None, None, :], (len(real), 1, sequence, real.shape[1])), convention, dtype
    )


def encoded_mask(attend: np.ndarray, convention: str, dtype: np.dtype) -> np.ndarray:
    """Booleans ``attend`` (True where a query attends to a key) written as a mask of ``convention``
    (``causal_masks``) and ``dtype``."""
    if convention == "additive":
        return np.where(attend, 0, np.finfo(dtype).min).astype(dtype)
    return (~attend if convention == "pads" else attend).astype(dtype)


def mask_inputs(model: ir.Model, inputs: Mapping[str, np.ndarray]) -> list[str]:
    """Inputs of ``model`` that look like a ``[batch, sequence]`` padding mask: named ``*mask*`` or read by the graph
    as an attention mask (``reads_as_attention_mask``), no feature mask (``is_feature_mask``), 2-D, holding only 0
    (pad) and 1 (attend), and attending somewhere in every row; or, where the graph reads it as padding where true
    (``optimizer.inputs.pads_where_true``: ``Where(src_mask, -1e9, scores)``), holding only false (attend) and true
    (pad), false somewhere in every row, returned as a ``PadsWhereTrue``.

    A float one the graph adds to the scores (``added_to_scores``: 0 attends, a large negative number pads) qualifies
    as an ``AdditiveMask`` where it holds only 0 and -1e3 or below, 0 somewhere in every row (read as 0/1, its zeros,
    where it attends, were hidden until a review in session 69); a boolean one the graph
    does not read as padding where true (True attends in Hugging Face's) does not qualify:
    reading it the wrong way round would hide the real tokens from comparison. A 4-D mask
    (``causal_masks``, ``key_masks``: the graph says its convention) does, given 4-D and attending somewhere in every
    row, as a ``CausalMask``.
    """
    from optimizer.inputs import pads_where_true  # imported here: optimizer.inputs is heavier than this module

    names = []
    causal = causal_masks(model)
    four_d = {name: CausalMask(name, convention) for name, convention in causal.items()}
    four_d.update({name: CausalMask(name, convention, causal=False) for name, convention in key_masks(model).items()})
    for value in model.graph.inputs:
        array = inputs.get(value.name)
        if value.name in four_d and np.ndim(array) == 4:
            if (~padded_at(inputs, four_d[value.name])).any(axis=1).all():
                names.append(four_d[value.name])
            continue
        if value.name in causal and np.ndim(array) == 2:
            # The key positions a 4-D mask is causal over (1 attends, whatever its dtype), as the decoder's set
            # builders cut and pad it (``optimizer.api._KeyMasks``).
            if np.isin(array, (0, 1)).all() and np.shape(array)[1] >= 2 and (np.asarray(array) != 0).any(axis=1).all():
                names.append(value.name)
            continue
        if array is None or np.ndim(array) != 2 or not pads_positions(value):
            continue
        array = np.asarray(array)
        if array.dtype.kind not in "biuf" or array.shape[1] < 2:
            continue
        if array.dtype.kind == "f" and added_to_scores(value):
            if ((array == 0) | (array <= -1e3)).all() and (array == 0).any(axis=1).all():
                names.append(AdditiveMask(value.name))
            continue
        if not np.isin(array, (0, 1)).all():
            continue
        if pads_where_true(value):
            if (array == 0).any(axis=1).all():
                names.append(PadsWhereTrue(value.name))
        elif array.dtype.kind != "b" and (array == 1).any(axis=1).all():
            names.append(value.name)
    return names


def padded_at(inputs: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """Where mask ``name`` (one of ``mask_inputs``) of ``inputs`` pads, as booleans: its zeros, or its true values
    where it pads where true (``PadsWhereTrue``); for a 4-D mask (``CausalMask``), ``[batch, total_sequence]``: the key
    positions no query attends to."""
    mask = np.asarray(inputs[name])
    if isinstance(name, CausalMask):
        attends = (
            mask > -1e3 if name.convention == "additive" else (mask == 0 if name.convention == "pads" else mask != 0)
        )
        return ~attends.any(axis=(1, 2))
    if isinstance(name, AdditiveMask):
        return mask <= -1e3
    return mask != 0 if isinstance(name, PadsWhereTrue) else mask == 0


def cache_outputs(model: ir.Model) -> frozenset[str]:
    """Graph outputs that are a decoder's key/value cache ``[batch, heads, past + new, head_size]``.

    Decided from the graph, not the name: the output is ``Concat(past, new, axis=2)`` where
    ``past`` is computed from a 4-D graph input (every exporter's cache update; the dynamo
    exporter concatenates the input with an empty tensor first), or a fused attention op's
    present; either of them through ``Identity`` or ``Cast`` (``_renamed``) too.
    """
    names = set()
    for value in model.graph.outputs:
        node = _renamed(value).producer()
        if node is None:
            continue
        if node.op_type == "Concat" and node.domain in ("", "ai.onnx") and len(node.inputs) == 2:
            if node.attributes.get_int("axis", 0) in (2, -2) and _from_4d_input(node.inputs[0]):
                names.add(value.name)
        elif node.op_type in _CACHE_OPS and node.domain == "com.microsoft" and _renamed(value) is not node.outputs[0]:
            names.add(value.name)
    return frozenset(names)


def padded_caches(model: ir.Model) -> frozenset[str]:
    """The outputs whose padded positions verification hides as a cache's: ``cache_outputs``, stacked ones
    (``stacked_cache_outputs``), and the key/value outputs of a prefill exported with its cache but no past input
    (``attention_operand_outputs``)."""
    return cache_outputs(model) | stacked_cache_outputs(model) | attention_operand_outputs(model)


def stacked_cache_outputs(model: ir.Model) -> frozenset[str]:
    """Graph outputs that stack a layer's key and value caches ``[2, batch, heads, past + new, head_size]`` (ONNX
    Runtime's GPT-2 export's ``present_{i}``, ``gpt2_helper``): ``Concat(Unsqueeze(key), Unsqueeze(value), axis=0)``
    of two caches as ``cache_outputs`` decides them, their past read from a 4-D input or gathered from a stacked one
    (``Gather(past_{i}, 0)``, ``Gather(past_{i}, 1)``). Its padded positions were compared as any value's: a fused
    attention differing only at a padded query's key and value (in the next layer's cache) was rolled back on text a
    tokenizer padded (a review in session 70). ONNX Runtime's fused ``Attention`` writes its stacked present itself:
    ``cache_outputs`` has it."""
    names = set()
    for value in model.graph.outputs:
        node = _renamed(value).producer()
        if node is None or node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        if node.attributes.get_int("axis", 0) == 0 and all(_unsqueezed_cache(operand) for operand in node.inputs):
            names.add(value.name)
    return frozenset(names)


def _unsqueezed_cache(value: ir.Value | None) -> bool:
    """Whether ``value`` is ``Unsqueeze(cache, axes=[0])`` of a cache ``[batch, heads, past + new, head_size]``
    (``stacked_cache_outputs``)."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "Unsqueeze" or node.domain not in ("", "ai.onnx") or not node.inputs:
        return False
    axes = node.attributes.get_ints("axes") if "axes" in node.attributes else None
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        constant = node.inputs[1].const_value
        axes = None if constant is None else constant.numpy().reshape(-1).tolist()
    if axes is None or list(axes) != [0]:
        return False
    inner = _renamed(node.inputs[0])
    producer = inner.producer()
    if producer is None:
        return False
    if producer.op_type in _CACHE_OPS and producer.domain == "com.microsoft":
        return inner is not producer.outputs[0]
    if producer.op_type != "Concat" or producer.domain not in ("", "ai.onnx") or len(producer.inputs) != 2:
        return False
    past = producer.inputs[0]
    return producer.attributes.get_int("axis", 0) in (2, -2) and (_from_4d_input(past) or _from_stacked_input(past))


def _from_stacked_input(value: ir.Value | None) -> bool:
    """Whether ``value`` is the key or the value of a stacked graph input ``[2, batch, heads, past, head_size]``
    (``_gathered_stack``)."""
    return _gathered_stack(value) is not None


def _gathered_stack(value: ir.Value | None) -> ir.Value | None:
    """The stacked graph input ``[2, batch, heads, past, head_size]`` that ``value`` gathers its key or value from
    (``Gather(input, i, axis=0)``, through Concat, Identity and Cast, as ``_graph_input_behind``), or None."""
    for _ in range(8):
        node = value.producer() if value is not None else None
        if node is None:
            return None
        if node.op_type == "Gather" and node.attributes.get_int("axis", 0) == 0:
            data = node.inputs[0]
            stacked = data is not None and data.is_graph_input() and data.shape is not None and data.shape.rank() == 5
            return data if stacked else None
        if node.op_type not in ("Concat", "Identity", "Cast") or not node.inputs:
            return None
        value = node.inputs[0]
    return None


def attention_operand_outputs(model: ir.Model) -> frozenset[str]:
    """4-D graph outputs ``[batch, heads, sequence, head_size]`` that an attention reads as its key or value,
    whose third dim the model names as an integer mask's sequence (``_integer_masks``; an encoder-decoder's
    decoder mask and encoder mask each name their own).

    A prefill exported with its cache but no past input returns them (``present.*``): the cache a decode step
    reads next, at positions the mask pads there too. Decided from the graph: the output reaches, through ops
    that only move or repeat it (the heads' transpose, grouped-query attention's repeat), ONNX's own
    ``Attention`` or ONNX Runtime's ``MultiHeadAttention``/``GroupQueryAttention`` as the key or value, or a
    ``MatMul`` as its right operand whose left one comes from a ``Softmax`` (the value) or whose product a
    ``Softmax`` reads after scaling and masking (the key). A cross-attention cache is one where the model
    takes its encoder's mask (``present.{i}.encoder.key`` beside ``encoder_attention_mask``): the decode steps
    read it under that mask, so its padded positions are as unread. One whose sequence no mask names is left out.
    """
    masks, _ = _integer_masks(model)
    sequences = {_dim_value(_declared(value)[-1]) for value in model.graph.inputs if value.name in masks} - {None}
    if not sequences:
        return frozenset()
    names = set()
    for value in model.graph.outputs:
        shape = _declared(value)
        if shape is None or shape.rank() != 4 or _dim_value(shape[2]) not in sequences:
            continue
        if _read_as_key_or_value(value):
            names.add(value.name)
    return frozenset(names)


# Ops a key or value passes through on its way into attention without its positions being mixed: the
# heads' transpose and grouped-query attention's repeat (Unsqueeze, Expand, Reshape; Slice of whole axes),
# and (as either operand) the scale torch's decomposed attention multiplies the key by.
_KV_LAYOUT_OPS = frozenset(
    {"Identity", "Cast", "Slice", "Unsqueeze", "Squeeze", "Expand", "Reshape", "Transpose", "Tile"}
)
_KV_READERS = {("", "Attention"), ("com.microsoft", "MultiHeadAttention"), ("com.microsoft", "GroupQueryAttention")}
# Ops between the scores MatMul and its Softmax: the scale, the mask, a cast.
_SCORE_OPS = frozenset({"Mul", "Div", "Add", "Where", "Cast"})


def _read_as_key_or_value(value: ir.Value) -> bool:
    """Whether ``value`` reaches an attention as its key or value (``attention_operand_outputs``)."""
    frontier, seen = [value], set()
    while frontier:
        current = frontier.pop()
        if id(current) in seen or len(seen) > 64:
            continue
        seen.add(id(current))
        for node, index in current.uses():
            domain = "" if node.domain == "ai.onnx" else node.domain
            if (domain, node.op_type) in _KV_READERS and index in (1, 2):
                return True
            if domain != "":
                continue
            if node.op_type == "MatMul" and index == 1 and (_softmax_behind(node.inputs[0]) or _softmax_ahead(node)):
                return True
            if (node.op_type in _KV_LAYOUT_OPS and index == 0) or node.op_type in ("Mul", "Div"):
                frontier.extend(node.outputs)
    return False


def _softmax_behind(value: ir.Value | None, depth: int = 3) -> bool:
    """Whether ``value`` is a Softmax's output, through at most ``depth`` casts, dropouts or masks (``Where``)."""
    node = value.producer() if value is not None else None
    if node is None:
        return False
    if node.op_type == "Softmax":
        return True
    if depth == 0 or node.op_type not in ("Cast", "Dropout", "Where", "Identity"):
        return False
    operands = node.inputs[1:] if node.op_type == "Where" else node.inputs[:1]
    return any(_softmax_behind(operand, depth - 1) for operand in operands)


def _softmax_ahead(node: ir.Node, depth: int = 4) -> bool:
    """Whether a Softmax reads ``node``'s output through at most ``depth`` scales, masks or casts."""
    frontier = [(node, 0)]
    while frontier:
        current, steps = frontier.pop()
        for reader, _ in current.outputs[0].uses():
            if reader.op_type == "Softmax":
                return True
            if reader.op_type in _SCORE_OPS and steps < depth:
                frontier.append((reader, steps + 1))
    return False


def _from_4d_input(value: ir.Value | None) -> bool:
    """Whether ``value`` is computed from a 4-D graph input (only through ops that keep it 4-D: Concat, Cast...)."""
    source = _graph_input_behind(value)
    return source is not None and _is_4d(source)


def _is_4d(value: ir.Value) -> bool:
    return value.shape is not None and value.shape.rank() == 4


# The axis of a cache's length by its rank: [batch, heads, sequence, d], or stacked [2, batch, heads, sequence, d].
_CACHE_LENGTH_AXIS = {4: 2, 5: 3}


def is_stacked(value: ir.Value) -> bool:
    """Whether ``value`` is declared ``[2, batch, heads, sequence, head_size]``: a stacked key and value cache."""
    return value.shape is not None and value.shape.rank() == 5 and value.shape[0] == 2


def _renamed(value: ir.Value) -> ir.Value:
    """The value that ``value`` is an ``Identity`` or ``Cast`` of, through up to 8 of them, else ``value`` (a present
    written as ``Identity(Concat(past, new))`` holds that Concat's positions)."""
    seen = 0
    while (node := value.producer()) is not None and node.op_type in ("Identity", "Cast") and node.inputs:
        if node.domain not in ("", "ai.onnx") or node.inputs[0] is None or seen >= 8:
            break
        value, seen = node.inputs[0], seen + 1
    return value


def _graph_input_behind(value: ir.Value | None) -> ir.Value | None:
    """The graph input ``value`` is, or is computed from through Concat, Identity and Cast (following the
    operand that is a graph input, else the first: a Concat of the past with an empty tensor); None if none."""
    seen = 0
    while value is not None and seen < 8:
        if value.is_graph_input():
            return value
        node = value.producer()
        if node is None or node.op_type not in ("Concat", "Identity", "Cast") or not node.inputs:
            return None
        value = next((v for v in node.inputs if v is not None and v.is_graph_input()), node.inputs[0])
        seen += 1
    return None


def pads_both_ends(inputs: Mapping[str, np.ndarray], masks: Sequence[str]) -> bool:
    """Whether some mask in ``inputs`` pads the start of a row and some the end of a row."""
    starts = any(np.any(padded_at(inputs, name)[:, 0]) for name in masks)
    ends = any(np.any(padded_at(inputs, name)[:, -1]) for name in masks)
    return starts and ends


def padded_copy(inputs: Mapping[str, np.ndarray], masks: Sequence[str]) -> tuple[dict[str, np.ndarray], str]:
    """A copy of ``inputs`` whose masks pad a row's start and a row's end, and a description of what changed.

    Masks are ``mask_inputs``' (one that pads where true, ``PadsWhereTrue``, is written true where padded; a 4-D one,
    ``CausalMask``, is padded at its key positions and made causal again, ``causal_mask``). With two or
    more rows the last row that keeps a real token is padded on the right
    (its final quarter) and the first other one on the left (its first quarter, or its first third where that would
    leave the two rows as many real tokens); a single row gets both (an eighth at each end). At least one position
    stays unpadded in every row (a mask of one position a row is left as it is, and the description says so). Other
    inputs are unchanged, so padded positions still hold real tokens, as a padded
    batch does, except ``position_ids`` on a row whose start is padded, which count as Hugging Face's do there
    (``_positions_after_padding``): generated positions are ``0..S-1`` (after the past) on every row,
    and a rewrite that dropped ``position_ids`` for an ``arange`` verified.
    """
    padded = dict(inputs)
    described = []
    for name in masks:
        real = ~padded_at(inputs, name)
        mask = real.copy()
        rows, length = mask.shape
        if length < 2:  # one position a row: padding it would pad the row wholly
            described.append(f"{name}: nothing padded (one position a row)")
            continue
        if rows >= 2:
            left, right = max(1, length // 4), max(1, length // 4)
            # The last row that keeps a real token when its end is padded (a left-padded
            # prompt may hold only its last one), and the first other row for the start.
            ends = [r for r in range(rows) if mask[r, : length - right].any()]
            end_row = ends[-1] if ends else rows - 1
            start_row = next((r for r in range(rows) if r != end_row and mask[r, left:].any()), 0)
            mask[start_row, :left] = 0
            mask[end_row, length - right :] = 0
            # Rows left with as many real tokens each (a quarter off each) let a rewrite that reads one row's count
            # for another's (a mean pooling's divisor averaged over the batch) verify: the start row loses its first
            # third instead, so the counts differ by more than float16's tolerance.
            wider = max(left + 1, length // 3)
            if np.count_nonzero(mask[start_row]) == np.count_nonzero(mask[end_row]) and mask[start_row, wider:].any():
                left = wider
                mask[start_row, :left] = 0
            where = f"row {start_row + 1}'s first {left} and row {end_row + 1}'s last {right} of {length} positions"
        elif length >= 3:
            left = right = max(1, length // 8)
            mask[0, :left] = 0
            mask[0, length - right :] = 0
            where = f"the first {left} and last {right} of {length} positions"
        else:  # two positions: one real token, padding on the right only
            mask[0, -1] = 0
            where = f"the last of {length} positions"
        # Never a fully padded row where there was a real token: it is compared (``padded_positions``)
        # but means nothing.
        emptied = ~mask.any(axis=1) & real.any(axis=1)
        mask[emptied] = real[emptied]
        original = np.asarray(inputs[name])
        if isinstance(name, CausalMask):  # the same new tokens over the padded key positions
            written = causal_mask if name.causal else key_mask
            padded[name] = written(mask, original.shape[2], name.convention, original.dtype)
        else:
            fill = np.finfo(original.dtype).min if isinstance(name, AdditiveMask) else isinstance(name, PadsWhereTrue)
            padded[name] = np.where(mask, original, fill).astype(original.dtype)
        described.append(f"{name}: {where} padded")
    for name, positions in inputs.items():
        if _POSITION_IDS_NAME.search(name) and name not in masks:
            counted = _positions_after_padding(
                positions, [(~padded_at(inputs, m), ~padded_at(padded, m)) for m in masks]
            )
            if counted is not None:
                padded[name], rows = counted
                described.append(f"{name} counted from the first real token on row {rows} (cumsum(mask) - 1)")
    return padded, ", ".join(described)


def _positions_after_padding(positions: object, masks: Sequence[tuple[object, np.ndarray]]) -> tuple | None:
    """``positions`` (``[batch, new]``) with each row that a mask of ``[batch, past + new]`` pads at its start (and
    did not before) counted as Hugging Face's ``generate`` counts it: ``cumsum(mask) - 1`` over the past and the new
    tokens, 1 at padded positions; and the 1-based numbers of the rows changed. The first mask (``(before, after)``
    pairs) whose rows to change count ``past + s`` as generated is read; None where none does or none pads a row's
    start (another layout, positions offset into a table): the values are at most the largest generated, so within
    any table it indexes."""
    if not isinstance(positions, np.ndarray) or positions.ndim != 2 or positions.dtype.kind not in "iu":
        return None
    rows, new = positions.shape
    for before, mask in masks:
        if np.ndim(mask) != 2 or np.shape(mask)[0] != rows or np.shape(mask)[1] < max(new, 2):
            continue
        past = np.shape(mask)[1] - new
        real = np.asarray(mask) != 0
        counted = np.where(real, np.cumsum(real, axis=1) - 1, 1)[:, past:]
        changed = [r for r in range(rows) if not real[r, 0] and np.asarray(before)[r, 0] != 0]
        if changed and all(np.array_equal(positions[r], past + np.arange(new)) for r in changed):
            result = positions.copy()
            result[changed] = counted[changed]
            return result, ", ".join(str(r + 1) for r in changed)
    return None


def shifted_positions(inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str] | None:
    """A copy of ``inputs`` whose ``position_ids`` on the first row count as Hugging Face's do after one padded
    position (``cumsum(mask) - 1``: one less, 1 at the padded one), and what changed; None where no ``position_ids``
    input counts ``past + 0..S-1`` on its first row over two or more positions.

    For a model with positions and no mask, which ``padded_copy`` leaves alone: generated positions counted alike in
    every input set, so a rewrite reading an ``arange`` of the length for them verified. The values stay within the
    generated ones, so within any table they index."""
    shifted, described = dict(inputs), []
    for name, positions in inputs.items():
        if not _POSITION_IDS_NAME.search(name) or not isinstance(positions, np.ndarray) or positions.ndim != 2:
            continue
        if positions.dtype.kind not in "iu" or positions.size == 0:
            continue
        past, new = int(positions[0, 0]), positions.shape[1]
        if past < 0 or past + new < 2:
            continue
        before = np.ones((positions.shape[0], past + new), np.int64)
        after = before.copy()
        after[0, 0] = 0
        counted = _positions_after_padding(positions, [(before, after)])
        if counted is not None:
            shifted[name] = counted[0]
            described.append(f"{name} counted as after one padded position on row 1 (cumsum(mask) - 1)")
    return (shifted, ", ".join(described)) if described else None


def padded_positions(inputs: Mapping[str, np.ndarray], masks: Sequence[str]) -> np.ndarray | None:
    """``[batch, sequence]`` booleans, True where every mask in ``inputs`` of the first one's shape pads; None
    without padding (``paddings`` has every sequence's).

    A row that a mask pads entirely stays compared: it is no padded batch, and hiding it
    would hide everything.
    """
    if not masks:
        return None
    return paddings(inputs, masks).get(np.shape(inputs[masks[0]]))


Paddings = Mapping[tuple[int, ...], np.ndarray]


def paddings(inputs: Mapping[str, np.ndarray], masks: Sequence[str]) -> dict[tuple[int, ...], np.ndarray]:
    """For each shape ``[batch, sequence]`` of the masks in ``inputs``, booleans True where every mask of that shape
    pads (as ``padded_positions``); the shapes without padding are left out. Masks of another length describe
    another sequence: an encoder-decoder's encoder mask beside its decoder's."""
    shaped: dict[tuple[int, ...], list[np.ndarray]] = {}
    for name in masks:
        padded = padded_at(inputs, name)
        shaped.setdefault(padded.shape, []).append(padded)
    found = {}
    for shape, padded in shaped.items():
        padding = np.logical_and.reduce(padded)
        padding &= ~padding.all(axis=1, keepdims=True)
        if padding.any():
            found[shape] = padding
    return found


def batch_padding(model: ir.Model, batch: Mapping[str, np.ndarray]) -> Paddings:
    """Where ``batch`` pads, by shape (``paddings`` of the masks ``mask_inputs`` finds in it); empty without padding."""
    return paddings(batch, mask_inputs(model, batch))


def unpadded_rows(array: np.ndarray, padding: Paddings) -> np.ndarray:
    """``array`` ``[..., channels]`` as rows ``[n, channels]``, without the positions ``padding`` (``batch_padding``)
    marks: where its leading dims are a mask's ``[batch, sequence]``, their product (a 2-D ``[batch * sequence,
    channels]``). The statistics a data-aware rewrite fits (GPTQ's Hessian, outlier channels, SmoothQuant's peaks,
    int8 ranges) are taken over what the model is used on: a padded batch's pad tokens are not, and in a batch of
    short sentences they are most rows. Any other array's rows are all kept (a decoder's mask over its past and new
    tokens is no activation's shape); callers pass no ``padding`` for an activation ``token_rows`` does not take as
    tokens. An array with no values gives none (``[0, channels]`` or ``[rows, 0]``)."""
    array = np.asarray(array)
    if array.ndim == 0:
        return array.reshape(1, 1)
    # The row count spelled out: ``reshape(-1, 0)`` of a ``[..., 0]`` array has nothing to infer it from.
    rows = array.reshape(math.prod(array.shape[:-1]), array.shape[-1])
    padded = padding.get(tuple(array.shape[:-1]))
    if padded is None and array.ndim == 2:
        padded = next((mask for mask in padding.values() if mask.size == len(rows)), None)
    return rows if padded is None else rows[~padded.reshape(-1)]


# Ops that read and write ``[batch, channels, spatial...]``: their axis 1 is no sequence.
_CHANNELS_FIRST_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "ConvInteger",
        "QLinearConv",
        "MaxPool",
        "AveragePool",
        "LpPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "BatchNormalization",
        "InstanceNormalization",
    }
)


def token_rows(model: ir.Model, names: Iterable[str]) -> frozenset[str]:
    """Those of ``names`` whose rows may be a padding mask's tokens (``unpadded_rows`` matches them by shape), by the
    graph: laid out ``[batch, sequence, ...]`` (``token_axes`` gives batch on axis 0 and the sequence on axis 1), and
    no op reading it lays it out channels first (``Conv``, pooling, ``BatchNormalization``). A ``[sequence, batch,
    embed]`` layout (torch's ``MultiheadAttention`` reads ``[sequence * batch, embed]``) or a ``[batch, channels,
    length]`` map of as many channels as tokens matched a mask by shape alone and lost real rows until a review on
    2026-12-07."""
    axes = token_axes(model, names)
    values = _values_by_name(model)
    return frozenset(
        name
        for name, layout in axes.items()
        if layout == (0, 1) and not any(node.op_type in _CHANNELS_FIRST_OPS for node, _ in values[name].uses())
    )


def token_axes(model: ir.Model, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """For those of ``names`` whose axes hold a padding mask's batch and tokens, ``(batch axis, sequence axis)``, by
    the graph: followed back through each op's first computed input (an embedding ``Gather``'s indices) to the graph's
    inputs, taken as ``[batch, sequence, ...]``, each ``Transpose`` moves the two axes, an ``Unsqueeze`` or
    ``Squeeze`` shifts them (one that drops either, or whose axes are not constants, keeps no layout; a batch of 1
    dropped leaves its tokens' rows in order), a ``Reshape`` whose shape's leading 0s copy both keeps them where they
    are, another ``Reshape`` or a ``Flatten`` keeps a batch-first layout's rows in order, and an ``LSTM``, ``GRU`` or
    ``RNN`` reading them as its ``layout`` says lays its ``Y`` out so (its final states hold no tokens); no op on the
    way lays them out channels first (``Conv``, pooling, ``BatchNormalization``: its output's axes mix positions).
    Where the layout is not certain the name is left out: its rows are all kept, the safe side. Rows computed from
    constants alone (positions, a position table's ``[1, sequence, d]``) are read batch first through a ``Transpose`` or
    ``Reshape`` alone, as before: they hold no input's batch to move. A ``Conv1d``'s input
    ``[batch, channels, tokens]`` (a ``Transpose`` of token rows, wav2vec's and text CNNs') is ``(0, 2)``: bias
    correction's channel means leave its padded positions out (``passes.quantization.calibration.channel_means``).
    The input the axes are followed back to must be one a mask pads (``_masked_inputs``): an encoder-decoder's
    decoder rows beside the encoder's mask are not its tokens, whatever their length. ``Unsqueeze``, ``Squeeze`` and
    the recurrent ops were taken to keep the layout, and a convolution's input was matched to no mask, until a review
    in session 72."""
    values = _values_by_name(model)
    masked = _masked_inputs(model)
    found = {}
    for name in names:
        if name not in values or (traced := _token_layout(values[name])) is None:
            continue
        root, layout = traced
        if masked is None or not root.is_graph_input() or root.name in masked:
            found[name] = layout
    return found


def _values_by_name(model: ir.Model) -> dict[str, ir.Value]:
    values = {value.name: value for value in model.graph.inputs}
    values.update({value.name: value for node in model.graph for value in node.outputs})
    return values


def _masked_inputs(model: ir.Model) -> frozenset[str] | None:
    """The graph inputs whose tokens a padding mask (``pads_positions``) pads (``token_rows``): for each mask, the
    other inputs whose second dim is named as its last (``input_ids [batch, sequence]`` beside ``attention_mask [batch,
    sequence]``); None (any input) where a mask's last dim is unnamed or no other input names it (a decoder's mask over
    its past and new tokens). An encoder-decoder's encoder mask dropped the decoder's real rows where its length was
    the encoder's by chance (``paddings`` matches by shape) until a review on 2026-12-07 (late 5)."""
    found: set[str] = set()
    for mask in model.graph.inputs:
        shape = _declared(mask)
        if not pads_positions(mask) or shape is None or shape.rank() < 2:
            continue
        length = _dim_value(shape[-1])
        sharers = {
            value.name
            for value in model.graph.inputs
            if value is not mask
            and not looks_like_mask(value)
            and (other := _declared(value)) is not None
            and other.rank() >= 2
            and length is not None
            and _dim_value(other[1]) == length
        }
        if not sharers:
            return None
        found |= sharers | {mask.name}  # a value computed from the mask first is laid out along its positions
    return frozenset(found)


# Recurrent ops whose first output ``Y`` is ``[sequence, directions, batch, hidden]`` (``layout`` 0) or ``[batch,
# sequence, directions, hidden]`` (``layout`` 1), read from ``X`` ``[sequence, batch, input]`` or ``[batch, sequence,
# input]``.
_RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})


# The steps read from rows computed from constants alone (``_token_layout``): what moved them before session 72.
_MOVES = frozenset({"perm", "reshape"})


def _token_layout(value: ir.Value, limit: int = 4096) -> tuple[ir.Value, tuple[int, int]] | None:
    """The value ``value``'s axes are followed back to (a graph input, or one computed from no computed input) and the
    axes of its batch and sequence (``token_axes``); None where they are not certain."""
    steps: list[tuple[str, object]] = []  # each layout change, from the value back
    current = value
    for _ in range(limit):
        node = current.producer()
        if node is None:
            break
        if node.op_type in _CHANNELS_FIRST_OPS:
            return None
        if node.op_type == "Transpose":
            if "perm" not in node.attributes:
                return None
            steps.append(("perm", list(node.attributes.get_ints("perm"))))
        elif node.op_type in ("Reshape", "Flatten"):
            steps.append(("reshape", _copied_axes(node)))
        elif node.op_type in ("Unsqueeze", "Squeeze") and node.domain in ("", "ai.onnx"):
            steps.append((node.op_type, _moved_axes(node)))
        elif node.op_type in _RECURRENT_OPS and node.domain in ("", "ai.onnx"):
            # A final state holds no tokens (None).
            steps.append(("recurrent", node.attributes.get_int("layout", 0) if current is node.outputs[0] else None))
        computed = [v for v in node.inputs if v is not None and v.const_value is None and not v.is_initializer()]
        if not computed:
            break
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and computed[0] is node.inputs[0]:
            steps.append(("gather", _gathered_axis(node)))  # not an embedding's: its table is a constant
        current = computed[0]
    if not current.is_graph_input():
        # Rows computed from constants alone (positions: ``Unsqueeze(Range(0, S), 0)``, a position table's or rotary's
        # ``[1, sequence, d]``) hold no input's batch to move: read batch first as before.
        steps = [("reshape", 0) if kind == "reshape" else (kind, step) for kind, step in steps if kind in _MOVES]
    batch, sequence, units = 0, 1, set()  # units: the axes an Unsqueeze inserted (of size 1)
    for kind, step in reversed(steps):
        if step is None:
            return None  # axes not constants, or a recurrent op's final state
        # A flattening keeps a batch-first layout's rows in batch-major order, or one where only inserted 1s precede
        # the batch (``Unsqueeze`` at axis 0).
        in_order = batch < sequence and all(axis in units for axis in range(batch))
        if kind == "reshape":
            if max(batch, sequence) < step:  # both among the leading axes the Reshape copies (its shape's 0s)
                units = {u for u in units if u < step}
                continue
            if not in_order:
                return None  # a sequence-major layout flattened: its rows are no batch-major tokens
            batch, sequence, units = 0, 1, set()
        elif kind == "perm":
            if batch not in step or sequence not in step:
                return None
            units = {step.index(u) for u in units if u in step}
            batch, sequence = step.index(batch), step.index(sequence)
        elif kind == "recurrent":
            # X read as [sequence, batch, ...] (layout 0) or [batch, sequence, ...] (layout 1), else its steps are no
            # tokens; Y [sequence, directions, batch, hidden] or [batch, sequence, directions, hidden].
            if (batch, sequence) != ((1, 0) if step == 0 else (0, 1)):
                return None
            (batch, sequence), units = ((2, 0) if step == 0 else (0, 1)), set()
        elif kind == "gather":
            # An axis picked from: dropped where the index is one number (torch's ``select`` of packed q/k/v, which was
            # taken to keep the layout until a review in session 73); rows of tokens no more where it is theirs.
            axis, dropped = step
            if axis in (batch, sequence):
                return None
            if dropped:
                batch, sequence = batch - (axis < batch), sequence - (axis < sequence)
                units = {u - (axis < u) for u in units if u != axis}
        elif kind == "Unsqueeze":
            rank, axes = step
            kept = [axis for axis in range(rank) if axis not in axes]
            if max(batch, sequence, *units) >= len(kept):
                return None
            batch, sequence, units = kept[batch], kept[sequence], {kept[u] for u in units} | set(axes)
        else:  # Squeeze
            axes = step[1]
            if sequence in axes:
                return None
            if batch in axes:  # a batch of 1 dropped: its tokens' rows, in order, as a flattening leaves them
                # The tokens lead then only where no other axis lies between (a ``[1, channels, tokens]`` squeezed is
                # rows of channels: read as tokens until a late review in session 72).
                if not in_order or any(axis not in units and axis not in axes for axis in range(batch + 1, sequence)):
                    return None
                batch, sequence, units = 0, 1, set()
                continue
            batch -= sum(axis < batch for axis in axes)
            sequence -= sum(axis < sequence for axis in axes)
            units = {u - sum(axis < u for axis in axes) for u in units if u not in axes}
    return current, (batch, sequence)


def _copied_axes(node: ir.Node) -> int:
    """How many leading axes a ``Reshape`` copies from its input: its constant shape's leading 0s (``allowzero``
    unset: torch's ``[0, 0, -1]`` after a bidirectional ``LSTM``), or the leading dims its input and output are
    declared with alike (``_alike_leading``: the dynamo exporter's ``[batch, heads, sequence, d]`` reshaped to itself,
    with ``allowzero=1``, before its heads are merged; read as a flattening, which put the tokens at axis 1, its heads,
    until a review in session 73); 0 for a ``Flatten``, or a shape neither constant nor declared."""
    if node.op_type != "Reshape" or len(node.inputs) < 2:
        return 0
    declared = _alike_leading(node.inputs[0], node.outputs[0])
    shape = _constant(node.inputs[1])
    if node.attributes.get_int("allowzero", 0) or shape is None:
        return declared
    copied = 0
    for dim in shape.reshape(-1):
        if dim != 0:
            break
        copied += 1
    return max(copied, declared)


def _alike_leading(source: ir.Value | None, result: ir.Value) -> int:
    """How many leading dims ``source`` and ``result`` are declared with alike: the same size, or the same name.
    Rows in row-major order: where a reshape keeps the leading dims, each of their positions keeps its values."""
    if source is None or source.shape is None or result.shape is None:
        return 0
    alike = 0
    for before, after in zip(source.shape, result.shape):
        if isinstance(before, int) and isinstance(after, int):
            if before != after:
                break
        elif _dim_value(before) is None or _dim_value(before) != _dim_value(after):
            break
        alike += 1
    return alike


def _gathered_axis(node: ir.Node) -> tuple[int, bool] | None:
    """For a ``Gather`` of computed data, the axis it picks from and whether it drops it (one number for its index);
    None where a negative axis meets an unknown rank or the index is not a constant of known rank."""
    axis = node.attributes.get_int("axis", 0)
    data, indices = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    if axis < 0:
        if data is None or data.shape is None:
            return None
        axis += data.shape.rank()
    index = _constant(indices)
    if index is None and (indices is None or indices.shape is None):
        return None
    return axis, (index.ndim if index is not None else indices.shape.rank()) == 0


def _moved_axes(node: ir.Node) -> tuple[int, frozenset[int]] | None:
    """For an ``Unsqueeze``, its output's rank and the axes it inserts; for a ``Squeeze``, its input's rank and the
    axes it drops; None where the axes are not constants (a ``Squeeze`` without axes drops the 1s its input holds) or a
    negative axis meets an unknown rank."""
    axes = node.attributes.get_ints("axes") if "axes" in node.attributes else None
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        constant = _constant(node.inputs[1])
        axes = None if constant is None else [int(axis) for axis in constant.reshape(-1)]
    if axes is None:
        return None
    shaped = node.outputs[0] if node.op_type == "Unsqueeze" else node.inputs[0]
    rank = shaped.shape.rank() if shaped is not None and shaped.shape is not None else None
    if rank is None and node.op_type == "Unsqueeze" and (inner := node.inputs[0]) is not None and inner.shape:
        rank = inner.shape.rank() + len(axes)
    if rank is None:
        if any(axis < 0 for axis in axes):
            return None
        rank = max(axes) + 1 + 4  # non-negative axes need no rank: a bound past any batch or sequence axis
    return rank, frozenset(axis % rank if axis < 0 else axis for axis in axes)


def by_shape(padding: np.ndarray | Paddings | None) -> Paddings:
    """``padding`` (one ``padded_positions`` array, ``paddings``' mapping or None) as a mapping by shape."""
    if padding is None:
        return {}
    if isinstance(padding, np.ndarray):
        return {padding.shape: padding}
    return padding


@dataclasses.dataclass(frozen=True)
class NewTokens:
    """A decoder's outputs laid out ``[batch, new tokens, ...]`` (its logits) beside a mask of ``past + new``
    positions, and the inputs that say, per input set, how long the past and the new tokens are."""

    outputs: frozenset[str]
    pasts: tuple[str, ...]
    token_ids: tuple[str, ...]

    def past_length(self, inputs: Mapping[str, np.ndarray], padding: np.ndarray | Paddings | None) -> int | None:
        """The past's length in ``inputs`` where a mask (``padding``'s width: ``padded_positions`` or ``paddings``)
        is exactly past + new tokens, so the new tokens are its last positions; None otherwise (a static buffer
        longer than both)."""
        widths = {shape[1] for shape in by_shape(padding)}
        if not widths:
            return None
        # A past [batch, heads, past, d], or stacked [2, batch, heads, past, d].
        pasts = {
            np.shape(inputs[name])[_CACHE_LENGTH_AXIS[np.ndim(inputs[name])]]
            for name in self.pasts
            if np.ndim(inputs.get(name)) in _CACHE_LENGTH_AXIS
        }
        news = {np.shape(inputs[name])[1] for name in self.token_ids if np.ndim(inputs.get(name)) == 2}
        if len(pasts) != 1 or len(news) != 1:
            return None
        (past,), (new,) = pasts, news
        return past if past + new in widths else None


def new_token_outputs(model: ir.Model) -> NewTokens | None:
    """The outputs of a decoder with a past laid out ``[batch, new tokens, ...]`` (its logits) while its mask
    covers ``past + new`` positions; None where the graph does not say so.

    Decided from the graph, then checked per input set (``NewTokens.past_length``):
    - the model has cache outputs (``cache_outputs``), computed from 4-D past inputs whose third dim has
      one name (``past``), or stacked ones (``stacked_cache_outputs``: their fourth dim, of stacked inputs);
    - its integer mask inputs share one length, and a 2-D integer input not named like a mask (the token
      ids) has another (``new``);
    - the mask's length is the caches' (the same name, or ``past + new``), or the caches are declared
      ``past + new`` and the mask's length names no other input (an encoder's mask beside its hidden
      states is another sequence); a cache declared as another expression of those two dims alone counts
      as ``past + new`` beside one declared so (the dynamo exporter declares GPT-Neo's local layer's
      present ``past + Max(0, -past + Min(128, past + new))``, the slice of its 128-row band table);
    - no ``GroupQueryAttention`` reads the mask already: it takes each row's tokens to end where the
      row's ones end, not at the mask's end;
    - the output (three dims or more, no cache) names its second dim as the token ids do.
    """
    caches, stacked = cache_outputs(model), stacked_cache_outputs(model)
    if not (caches or stacked) or any(
        node.op_type == "GroupQueryAttention" and node.domain == "com.microsoft" for node in model.graph.all_nodes()
    ):
        return None
    masks, total = _integer_masks(model)
    if not masks or total is None:
        return None
    token_ids, token_lengths = [], set()
    for value in model.graph.inputs:
        shape = value.shape
        if _MASK_NAME.search(value.name) or value.dtype is None or not value.dtype.is_integer():
            continue
        if shape is None or shape.rank() != 2:
            continue
        if isinstance(shape[1], ir.SymbolicDim) and shape[1].value and shape[1].value != total:
            token_ids.append(value.name)
            token_lengths.add(shape[1].value)
    if len(token_lengths) != 1:
        return None
    (new,) = token_lengths
    outputs = {value.name: value for value in model.graph.outputs}
    # Each cache's past input and the axis of its length (a stacked one's is its fourth).
    laid = [(_past_input(outputs[name]), 2) for name in sorted(caches)]
    laid += [(_stacked_past_input(outputs[name]), 3) for name in sorted(stacked)]
    pasts = [value for value, _ in laid]
    past_names = {_dim_name(value, axis) for value, axis in laid if value is not None}
    if None in pasts or len(past_names) != 1 or None in past_names:
        return None
    (past,) = past_names
    summed = f"{past} + {new}"
    cache_lengths = {_dim_name(outputs[name], 2) for name in caches} | {_dim_name(outputs[name], 3) for name in stacked}
    elsewhere = any(
        value.name not in masks and value.shape is not None and any(_dim_value(dim) == total for dim in value.shape)
        for value in model.graph.inputs
    )
    declared_summed = summed in cache_lengths and all(
        length == summed or _names_only(length, {past, new}) for length in cache_lengths
    )
    if not (total in cache_lengths or total == summed or (declared_summed and not elsewhere)):
        return None
    names = frozenset(
        name
        for name, value in outputs.items()
        if name not in caches | stacked
        and value.shape is not None
        and value.shape.rank() >= 3
        and _dim_name(value, 1) == new
    )
    if not names:
        return None
    return NewTokens(names, tuple(sorted(value.name for value in pasts)), tuple(token_ids))


# A dim name the dynamo exporter writes as a sympy expression: its words besides these name dims.
_EXPRESSION_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYMPY_FUNCTIONS = frozenset({"Max", "Min", "floor", "ceiling", "Mod", "FloorDiv", "CeilToInt", "FloorToInt"})


def _names_only(length: str | None, dims: set[str]) -> bool:
    """Whether the dim name ``length`` is an expression (``past + Max(0, -past + Min(128, past + new))``) of
    exactly the dims ``dims``."""
    if length is None:
        return False
    return set(_EXPRESSION_WORD.findall(length)) - _SYMPY_FUNCTIONS == dims


def _stacked_past_input(value: ir.Value) -> ir.Value | None:
    """The stacked graph input a stacked cache output (``stacked_cache_outputs``) extends: the one its key's past is
    gathered from (``_gathered_stack``), or None."""
    key = _renamed(value).producer().inputs[0].producer().inputs[0]  # Concat(Unsqueeze(key), ...)
    node = _renamed(key).producer()
    return _gathered_stack(node.inputs[0]) if node is not None and node.op_type == "Concat" and node.inputs else None


def _past_input(value: ir.Value) -> ir.Value | None:
    """The graph input a cache output ``Concat(past, new)`` (or an ``Identity`` or ``Cast`` of one) extends, or
    None."""
    node = _renamed(value).producer()
    if node is None or node.op_type != "Concat" or not node.inputs:
        return None
    return _graph_input_behind(node.inputs[0])


def _dim_name(value: ir.Value, axis: int) -> str | None:
    shape = value.shape
    return _dim_value(shape[axis]) if shape is not None and shape.rank() > axis else None


def _dim_value(dim: object) -> str | None:
    # An int ruled out first: ``isinstance`` against onnx-ir's SymbolicDim (a typing Protocol's subclass) runs
    # Python code for each int.
    return dim.value if type(dim) is not int and isinstance(dim, ir.SymbolicDim) and dim.value else None


# How far past the largest value of the original's cache a padded position's value may lie and still be hidden.
_PADDED_CACHE_BOUND = 16.0


def _largest_finite(array: np.ndarray) -> float:
    """The largest finite magnitude in ``array`` (0 where it has none)."""
    finite = np.abs(array[np.isfinite(array)])
    return float(finite.max()) if finite.size else 0.0


def hide_padded(
    outputs: Mapping[str, object],
    padding: np.ndarray | Paddings | None,
    reference: Mapping[str, object],
    caches: frozenset[str] = frozenset(),
    new_tokens: frozenset[str] = frozenset(),
    past: int | None = None,
) -> dict:
    """``outputs`` with the values at padded positions taken from ``reference`` (so they are not compared).

    ``padding`` is one mask shape's (``padded_positions``) or every one's (``paddings``); each output is read
    against the mask of its own length. Only outputs laid out ``[batch, sequence, ...]`` like a mask, with three
    dims or more (a pooled ``[batch, 128]`` beside a 128-token mask is no sequence: its columns would be hidden),
    are touched, the ``caches`` (``cache_outputs``) laid out ``[batch, heads, sequence, d]`` (or stacked, ``[2, batch,
    heads, sequence, d]``: ``stacked_cache_outputs``), and a decoder's
    ``new_tokens`` outputs (``NewTokens.outputs``: ``[batch, new, ...]``) on a mask's last ``new`` positions,
    where that mask is ``past`` (``NewTokens.past_length``) plus the new tokens. A NaN or Inf the reference lacks is
    never hidden, nor a cache value past ``_PADDED_CACHE_BOUND`` times the largest of the reference's cache (or 1).
    """
    shaped = by_shape(padding)
    if not shaped:
        return dict(outputs)
    hidden = dict(outputs)
    for name, value in outputs.items():
        expected = reference.get(name)
        if not isinstance(value, np.ndarray) or not isinstance(expected, np.ndarray):
            continue
        if value.shape != expected.shape or value.dtype != expected.dtype:
            continue  # a different shape or dtype is a failure the comparison must still see
        if name in caches and value.ndim == 5:  # stacked: [2, batch, heads, sequence, d]
            if (mask := shaped.get((value.shape[1], value.shape[3]))) is None:
                continue
            where = mask[None, :, None, :, None]
        elif name in caches:  # before the sequence rule: a cache's heads may number as many as the positions
            if value.ndim != 4 or (mask := shaped.get((value.shape[0], value.shape[2]))) is None:
                continue
            where = mask[:, None, :, None]
        elif value.ndim >= 3 and (mask := shaped.get(value.shape[:2])) is not None:  # [batch, 384] is no sequence
            where = mask.reshape(mask.shape + (1,) * (value.ndim - 2))
        elif (
            name in new_tokens
            and past is not None
            and value.ndim >= 3
            and value.shape[1] > 0
            and (mask := shaped.get((value.shape[0], past + value.shape[1]))) is not None
        ):
            # Over a past the new tokens are the mask's last positions. A right-padded query whose
            # window (a sliding window shorter than the padding) holds only padded keys sees none,
            # and what a kernel returns there is undefined, as in a prefill.
            tail = mask[:, past:]
            where = tail.reshape(tail.shape + (1,) * (value.ndim - 2))
        else:
            continue
        # A NaN or Inf the reference does not have is never hidden: a cache slot left unwritten
        # is read again (with weight 0, and 0 * NaN is NaN) at the next step.
        where = where & (np.isfinite(value) | ~np.isfinite(expected))
        if name in caches:
            # Nor is a cache value far past any the original caches: the next step's q . k of a key holding the
            # mask's fill (float32's lowest) overflows to an infinity no additive mask takes back, and a key
            # 1e3 times the others outgrows a -1e4 fill (until review s79 mut2 such a cache was verified).
            where = where & (np.abs(value) <= _PADDED_CACHE_BOUND * max(_largest_finite(expected), 1.0))
        hidden[name] = np.where(where, expected, value)
    return hidden


def unpadded(
    model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]], runs: Iterable[tuple[Mapping, Mapping]]
) -> Iterator[tuple[dict, dict]]:
    """Each ``(before, after)`` pair of outputs, run on the matching batch of ``batches``, with the values at
    the positions the batch's padding mask hides (``padded_outputs``) set to zero in both: what a model
    returns there is undefined, and an accuracy budget counting it holds real tokens to noise. A NaN or Inf
    ``after`` has where ``before`` does not is kept, as in ``hide_padded``. An integer, boolean or text output
    (a tagger's class per token) is masked there instead (a ``numpy.ma.MaskedArray`` on both sides): zeros would
    be equal values, which its share of equal values counted as agreement."""
    layout = padding_layout(model)
    for batch, (before, after) in zip(batches, runs):
        zeroed_before, zeroed_after = dict(before), dict(after)
        for name, where in padded_outputs(model, batch, before, after, layout).items():
            expected, actual = before[name], after[name]
            if expected.dtype.kind != "f" and np.shape(actual) == expected.shape:
                hidden = np.broadcast_to(where, expected.shape)
                zeroed_before[name] = np.ma.masked_array(expected, mask=hidden)
                zeroed_after[name] = np.ma.masked_array(actual, mask=hidden)
                continue
            zero = np.zeros((), expected.dtype)
            zeroed_before[name] = np.where(where, zero, expected)
            zeroed_after[name] = np.where(where & (np.isfinite(actual) | ~np.isfinite(expected)), zero, actual)
        yield zeroed_before, zeroed_after


PaddingLayout = tuple[frozenset[str], dict[str, int], NewTokens | None]


def padding_layout(model: ir.Model) -> PaddingLayout:
    """What ``padded_outputs`` reads from the graph, once per model: its integer masks (``_integer_masks``), the
    outputs laid out along one of their sequence dims (by axis), and a decoder's ``new_token_outputs``."""
    masks, _ = _integer_masks(model)
    ends = {value: _declared(value)[-1] for value in model.graph.inputs if value.name in masks}
    sequences = {_dim_value(dim) for dim in ends.values()} - {None}
    sizes: dict[int, list[frozenset[str] | None]] = {}
    for value, dim in ends.items():
        if isinstance(dim, int) and dim >= 2:
            sizes.setdefault(dim, []).append(_key_inputs(value))
    return masks, _sequence_outputs(model, sequences, sizes), new_token_outputs(model)


def _key_inputs(mask: ir.Value) -> frozenset[str] | None:
    """The graph inputs the keys are computed from, of the scores the graph adds ``mask`` to (``_attention_reads``);
    None where an attention op reads it, no scores are found, or their keys are computed from a ``Loop``'s or
    ``Scan``'s state (keys unknown: a static tagger whose layers run in a loop body had its tags laid out by size
    alone until the late-8 review in session 69, then none until one in session 70, its body's state taken
    for the keys' only input)."""
    keys: set[str] = set()
    for matmul in _attention_reads(mask):
        if matmul is None or (ancestors := _ancestor_inputs(matmul.inputs[1], mask.graph)) is None:
            return None
        keys |= ancestors
    return frozenset(keys) if keys else None


def _ancestor_inputs(value: ir.Value | None, graph: ir.Graph | None) -> frozenset[str] | None:
    """The names of ``graph``'s inputs ``value`` is computed from, the outer values a producer's subgraphs read
    included (an ``If``'s branches read the graph's inputs by name: Optimum's merged decoder); None where it is
    computed from the input of a subgraph it starts in (a ``Loop``'s or ``Scan``'s state, not followed out to what
    feeds it). Until a review in session 70 an ``If``'s output was computed from its condition alone: a static
    decoder's logits computed in one were laid out along its encoder's mask, real decoder tokens left out."""
    frontier, seen, found, entered = [value], set(), set(), set()
    while frontier:
        current = frontier.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if current.is_graph_input():
            if current.graph is graph:
                found.add(current.name)
            elif id(current.graph) not in entered:  # a body's state, fed by its node's inputs where entered
                return None
        if (node := current.producer()) is not None and id(node) not in seen:
            seen.add(id(node))
            frontier.extend(node.inputs)
            for inner in nodes_within(node):
                entered.add(id(inner.graph))
                frontier.extend(inner.inputs)
    return frozenset(found)


def nodes_within(node: ir.Node) -> Iterator[ir.Node]:
    """The nodes of ``node``'s subgraphs, however deep (a function's reference to its caller's graph holds none)."""
    for attribute in node.attributes.values():
        if attribute.is_ref() or attribute.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            continue
        for body in [attribute.value] if attribute.type == ir.AttributeType.GRAPH else attribute.value:
            for inner in body:
                yield inner
                yield from nodes_within(inner)


def nodes_and_subgraphs(graph: ir.Graph) -> Iterator[ir.Node]:
    """``graph``'s nodes and those of their subgraphs, however deep (not onnx-ir's recursive iterator, which fails on a
    function's graph attribute that refers to its caller's)."""
    for node in graph:
        yield node
        yield from nodes_within(node)


def padded_outputs(
    model: ir.Model,
    batch: Mapping[str, np.ndarray],
    before: Mapping[str, object],
    after: Mapping[str, object],
    layout: PaddingLayout | None = None,
) -> dict[str, np.ndarray]:
    """For each output of ``before`` and ``after`` (run on ``batch``) that the batch's padding masks cover, the
    positions its own mask pads (``paddings``: the masks of its length) as booleans shaped to broadcast against
    the output; outputs no mask covers are left out.

    Stricter than verification's ``hide_padded``: only an integer mask counts, or a boolean one the graph reads as
    padding where true, or a float one the graph adds to the scores or a decoder's beside its cache (``_integer_masks``:
    another float 0/1 ``mask`` may be an imputation model's "missing" flags, the very values it exists
    to fill), and only outputs whose second dim
    the model names as a mask's sequence dim (``[batch, sequence, ...]``, three dims or more: a
    ``[batch, 384]`` embedding beside a 384-token mask is no sequence; an encoder-decoder's decoder and encoder
    masks each name their own), caches whose third dim it names so, and a decoder's ``new_token_outputs`` on
    the mask's last positions (where the batch's mask is past plus new tokens). ``layout`` is
    ``padding_layout(model)``, computed here when not given."""
    masks, laid_out, new_tokens = layout if layout is not None else padding_layout(model)
    shaped = paddings(batch, [name for name in mask_inputs(model, batch) if name in masks])
    if not shaped or not (laid_out or new_tokens):
        return {}
    # A decoder's logits: the mask's last positions, where the batch's mask is its past plus new tokens.
    past = new_tokens.past_length(batch, shaped) if new_tokens is not None else None
    tail = {name: 1 for name in new_tokens.outputs if name not in laid_out} if past is not None else {}
    found = {}
    for name, axis in {**laid_out, **tail}.items():
        expected, actual = before.get(name), after.get(name)
        batch_axis = 1 if axis == 3 else 0  # only a stacked cache [2, batch, heads, sequence, d] is laid out on axis 3
        if not isinstance(expected, np.ndarray) or not isinstance(actual, np.ndarray):
            continue
        # Integer outputs too (tags, token ids): their values there are as undefined, and count in max_error; and
        # text (a tagger's labels per token, an object array of str): left out, its padding counted as agreement.
        if expected.shape != actual.shape or expected.dtype.kind not in "fiubOUS" or expected.ndim < 2:
            continue
        if name in tail:
            mask = shaped.get((expected.shape[0], past + expected.shape[1]))
            positions = mask[:, past:] if mask is not None and expected.shape[1] > 0 else None
        else:
            positions = shaped.get((expected.shape[batch_axis], expected.shape[axis]))
        if positions is None:
            continue
        shape = [1] * expected.ndim
        shape[batch_axis], shape[axis] = positions.shape
        found[name] = positions.reshape(shape)
    return found


def _integer_masks(model: ir.Model) -> tuple[frozenset[str], str | None]:
    """The integer ``[batch, sequence]`` inputs named like a mask or read as one, no feature mask (``pads_positions``),
    their sequence
    dim named or static (the imitator taggers' ``[1, 256]``), boolean ones the graph reads as padding where true
    (PyTorch's key padding mask, ``optimizer.inputs.pads_where_true``) and the 4-D masks (``causal_masks``,
    ``key_masks``), a float one the graph adds to the scores (``added_to_scores``: 0 attends, a large negative pads),
    and a float one of a model with a 4-D or stacked cache (a decoder's 0/1 mask, ONNX Runtime's GPT-2 export's, which
    generation feeds so; its stacked ``past_{i}`` counted since a review in session 70), and the symbolic name of
    their last dim (None unless the named ones share one). A boolean one was left out, and every accuracy figure
    counted the positions it pads: a result exact on every real token missed a budget at cosine 0 where an integer
    mask's pass met it; so did such float ones, which verification hid, until reviews in session 69."""
    from optimizer.inputs import pads_where_true  # imported here: optimizer.inputs is heavier than this module

    names, dims = set(), set()
    causal = {**causal_masks(model), **key_masks(model)}
    cached = any(
        _CACHE_NAME.search(value.name) and (_is_4d(value) or is_stacked(value)) for value in model.graph.inputs
    )
    for value in model.graph.inputs:
        shape = _declared(value)
        if value.name in causal:
            names.add(value.name)
            dims.add(_dim_value(shape[-1]))
            continue
        if value.dtype is None or shape is None or shape.rank() != 2 or not pads_positions(value):
            continue
        if not (_dim_value(shape[1]) or isinstance(shape[1], int)):
            continue
        # A float one the graph adds to the scores pads whatever the model (``AdditiveMask``); a 0/1 one only beside a
        # cache or where the graph makes it an attention mask (elsewhere it may be an imputation model's "missing"
        # flags, see ``padded_outputs``).
        floats = value.dtype.is_floating_point() and (
            added_to_scores(value) or cached or reads_as_attention_mask(value)
        )
        if not value.dtype.is_integer() and not (value.dtype == ir.DataType.BOOL and pads_where_true(value)):
            if not floats:
                continue
        names.add(value.name)
        if _dim_value(shape[1]):
            dims.add(shape[1].value)
    return frozenset(names), (dims.pop() if len(dims) == 1 else None)


def _declared(value: ir.Value) -> ir.Shape | None:
    """``value``'s shape as declared before ``--static-shapes`` bound it (``DECLARED_SHAPE``), else as it is: a bound
    ``attention_mask [4, 16]`` names no sequence dim, and the approximate passes after ``bind-dims`` counted padded
    positions in their budget, where the pipeline's check (on the input model) did not."""
    from optimizer.inputs import DECLARED_SHAPE  # imported here: optimizer.inputs is heavier than this module

    return value.meta.get(DECLARED_SHAPE, value.shape)


def _sequence_outputs(
    model: ir.Model, sequences: set[str], sizes: Mapping[int, list[frozenset[str] | None]] | None = None
) -> dict[str, int]:
    """Outputs laid out along one of ``sequences`` by name, or along a static mask's length in ``sizes`` where the
    output's dim is that static size too (a static ``[1, 256]`` mask beside ``tags [1, 256]``): ``[batch, sequence,
    ...]`` (axis 1, three dims or more, or two for an integer, boolean or text output: a tagger's class per token,
    where a float ``[batch, 384]`` is a pooled embedding), and the caches ``[batch, heads, sequence, head_size]``
    (axis 2) or stacked ``[2, batch, heads, sequence, head_size]`` (axis 3, batch on axis 1). ``sizes`` maps each
    static length to its masks' key inputs (``_key_inputs``): an output computed from another 2-D input of that
    static length that none of them computes its keys from is none (a static encoder-decoder's decoder logits beside
    its encoder's mask: read per encoder token until a review in session 69, late 8)."""
    caches = padded_caches(model)
    sizes = sizes or {}
    laid_out = {}
    for value in model.graph.outputs:
        shape = _declared(value)
        per_token = value.dtype is not None and not value.dtype.is_floating_point()
        if shape is None or shape.rank() < (2 if per_token else 3):
            continue
        axis = _CACHE_LENGTH_AXIS.get(shape.rank(), 1) if value.name in caches else 1
        dim = shape[axis]
        if (isinstance(dim, ir.SymbolicDim) and dim.value and dim.value in sequences) or (
            isinstance(dim, int) and dim in sizes and _read_along_keys(model, value, dim, sizes[dim])
        ):
            laid_out[value.name] = axis
    return laid_out


def _read_along_keys(model: ir.Model, output: ir.Value, size: int, keys: list[frozenset[str] | None]) -> bool:
    """Whether every 2-D graph input of static length ``size`` that ``output`` is computed from, masks aside, is one
    some mask of that length's keys (``keys``, None: unknown, any) are computed from: a static encoder-decoder's
    logits read both ids, each beside its own mask of that length (``paddings`` pads where all of them pad). Until a
    review in session 70, all had to feed one mask's keys, and such logits were laid out along none."""
    ancestors = _ancestor_inputs(output, model.graph)
    if ancestors is None:
        return True
    others = {
        value.name
        for value in model.graph.inputs
        if value.name in ancestors
        and not looks_like_mask(value)
        and (shape := _declared(value)) is not None
        and shape.rank() == 2
        and shape[1] == size
    }
    return any(known is None for known in keys) or others <= frozenset().union(*keys)

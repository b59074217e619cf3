"""Attention fusion, stage 2: ``MultiHeadAttention`` over projections of one input into packed ``Attention``.

``fuse-attention`` leaves ``com.microsoft.MultiHeadAttention`` reading the 3-D query,
key and value. Where those are constant projections of one input ``x``
(``x @ W + b``, bias optional, either operand order; or GPT-2's Conv1D,
``Split(Reshape(Gemm(Reshape(x, [-1, D]), W, b)))``, or ``Split(x @ W + b)`` as other tools rewrite it), this
pass rewrites the op into one ``com.microsoft.Attention`` reading ``x`` with packed ``[D, q+k+v]`` weights and bias
(``qkv_hidden_sizes`` when the value's width differs), keeping ``num_heads`` and
``scale``.

When the op's ``attention_bias`` (behind the Expand that broadcasts it) is exactly what
a 2-D padding mask graph input implies (optionally combined with a causal mask), the
Attention op reads that mask, cast to int32, as ``mask_index`` (with
``unidirectional=1`` for the causal one; expanded first to the input's ``[batch, sequence]``
unless its declared dims are those, ``_mask_index``) and the exporter's bias subgraph goes away. A bias that
reads no mask input and is the causal order alone (an encoder-decoder's decoder without a cache: Optimum's
``decoder_model.onnx``) becomes ``unidirectional=1`` without a ``mask_index``. Otherwise the bias stays as
Attention's ``attention_bias``, which is exact at any length.

Which mask it is is decided by evaluating the bias on ONNX Runtime (``_mask_kind``), and
a kind read off one length holds only there: a sliding-window mask (GPT-Neo's local
layers, window 256) is causal on every probe shorter than its window. So the bias is
probed on padded rows at 7 and 13 tokens, at every shorter length from 2 (``_short_mask``: a
constant below 8 that the mask compares the length with, ``S <= 4``, switches there, and
``probe_lengths`` names no length below 8), and then at every length ``_probe.probe_lengths``
names: both sides of each table's extent and of each integer the mask compares with, and
``max_sequence`` (``--max-sequence``, the longest sequence the result must support). It
must be the same kind at each, or the original graph must refuse that length (ONNX
Runtime fails, or the bias does not broadcast to ``[B, N, S, S]``: GPT-2's 1024-position
causal table sliced past its end); anything else keeps the bias. Each long probe is one
``[1, 1, S, S]`` mask (0.2 s at 4096 tokens); where those probes would evaluate more than
``_MAX_PROBED_ELEMENTS`` elements (``--max-sequence`` above ~11000) the bias is kept rather
than trusted unprobed.

A mask input of static dims (an export without dynamic axes, or ``--static-shapes``) takes none of those probes:
ONNX Runtime refuses every other shape, so the bias stays ``attention_bias`` and the refusal says why. With
``static_masks=True`` (the pass's keyword alone, not the pipeline's) such a mask is probed at its dims only, the one
length the graph accepts: all real, one token and about half padded on either side, padding between real tokens,
one real token first and last, a row of each count of real tokens (``_static_rows``), each row at each position of
a static batch beside other rows (``_fitted``); a static batch with a dynamic length takes the usual probes so
fitted. A static length of 1 is refused, and so are dims whose rows would evaluate more than 16 times
``_MAX_PROBED_ELEMENTS`` in all (past about 1290 tokens at a batch of 1: 4 s at 1024 on a shared CPU).
Off by default: a static RoBERTa export (hidden 256, 4 layers, 128 tokens) so packed ran no faster.

Refuses (with the reason, counted per MultiHeadAttention) when the op has a projection
bias, key padding mask or past state; key and value are packed with the query, per-head
4-D tensors or of unknown rank; query, key and value are not projections of one 3-D
input; or a projection has other users (besides Shapes whose Gathers read its batch or sequence, directly or
through a head split ``Reshape(p, [0, 0, ...])`` and Transposes: T5's position bias reads its key length so, and
those readers move to the packed op's input). (The weights' sizes and types and the widths'
fit with the head count follow from the op being valid.)

The fused op differs from the graph in the degenerate case ``fuse-attention`` documents
(a query row whose keys are all masked).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_op
from optimizer.errors import RuntimeRefusedError
from optimizer.runtime import ancestry, evaluate
from passes._pass import checked_length
from passes._utils import add_initializer, constant_array, replace_value
from passes.fusion._base import FusionPass
from passes.fusion._checks import NOT_KNOWN_3D, fuse_with_inferred_shapes
from passes.fusion._layout import last_dim, producer, rank, shape_tokens
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

# A second probe, longer and padded differently, so a bias that happens to match the
# first one at its length alone is not taken for a padding mask.
_LONGER_MASK = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]])
# Lengths below the probes above and probe_lengths' shortest (8), each probed on two padded rows (_short_mask).
_SHORT_LENGTHS = (2, 3, 4, 5, 6, 8)
# The most mask elements the long probes of one bias may evaluate (float32: 512 MiB in all):
# 4096² plus the tables' lengths fits many times over.
_MAX_PROBED_ELEMENTS = 1 << 27
# How many times those elements a static mask's probe rows may evaluate in all (``_static_kind``): a row of each
# count of real tokens makes them grow as the static length cubed.
_STATIC_PROBES = 16
# What a probe says when the original graph refuses the probed length.
_REFUSED = "refused"

_Packed = tuple[ir.Value, np.ndarray, np.ndarray, list[int]]


def _single_use(value: ir.Value) -> bool:
    return len(list(value.uses())) == 1 and not value.is_graph_output()


def _reads_leading_dims(node: ir.Node) -> bool:
    """True if ``node`` is a Shape whose result only says batch and sequence (axes 0-1).

    ``fuse-attention`` reads them from the query and key to broadcast a mask; the packed
    op's input has the same leading dims, so such readers move to it.
    """
    if not is_onnx_op(node, "Shape"):
        return False
    start = node.attributes.get_int("start", 0)
    if start < 0:
        return False
    if "end" in node.attributes:
        return start < node.attributes.get_int("end") <= 2
    shape = node.outputs[0]
    users = [user for user, _ in shape.uses()]
    return bool(users) and not shape.is_graph_output() and all(_gathers_leading(user, shape, start) for user in users)


def _gathers_leading(node: ir.Node, shape: ir.Value, start: int) -> bool:
    """True if ``node`` gathers only axes 0 and 1 of the tensor from ``shape`` (a Shape from axis ``start``)."""
    index = constant_array(node.inputs[1]) if is_onnx_op(node, "Gather") and node.inputs[0] is shape else None
    if index is None or node.attributes.get_int("axis", 0) != 0 or (index < 0).any():
        return False
    return {start + int(i) for i in index.reshape(-1)} <= {0, 1}


# Shape nodes, each with the Gathers that read it and the projection's axes each picks.
_DimReads = list[tuple[ir.Node, list[tuple[ir.Node, np.ndarray]]]]


def _head_dim_reads(node: ir.Node) -> _DimReads | None:
    """For a head split ``Reshape(projection, [0, 0, ...])`` read (through Transposes) only by Shapes whose Gathers
    pick its batch and sequence axes: each Shape with its Gathers and the projection's axes they pick; else None.

    T5's relative position bias reads the key length as ``key_states.shape[2]``, after the head split and its
    transpose: the packed op's input has the same batch and sequence, so such readers move to it (a review found T5's
    first self-attention left a MultiHeadAttention, "a projection has other users").
    """
    if not is_onnx_op(node, "Reshape") or node.attributes.get_int("allowzero", 0) or len(node.inputs) != 2:
        return None
    target = constant_array(node.inputs[1]) if node.inputs[1] is not None else None
    if target is None or target.ndim != 1 or target.size < 3 or target[:2].tolist() != [0, 0]:
        return None
    return _dim_reads(node.outputs[0], {0: 0, 1: 1})


def _dim_reads(value: ir.Value, axes: dict[int, int]) -> _DimReads | None:
    """``_head_dim_reads`` of ``value``, whose axes ``axes`` are the projection's (the others are not known)."""
    users = [user for user, _ in value.uses()]
    if not users or value.is_graph_output():
        return None
    reads = []
    for user in users:
        if is_onnx_op(user, "Transpose") and "perm" in user.attributes:
            perm = user.attributes.get_ints("perm")
            found = _dim_reads(user.outputs[0], {axis: axes[p] for axis, p in enumerate(perm) if p in axes})
        elif is_onnx_op(user, "Shape") and "start" not in user.attributes and "end" not in user.attributes:
            found = _gathered_dims(user, axes)
        else:
            return None
        if found is None:
            return None
        reads += found
    return reads


def _gathered_dims(
    shape: ir.Node, axes: dict[int, int]
) -> list[tuple[ir.Node, list[tuple[ir.Node, np.ndarray]]]] | None:
    """``[(shape, [(Gather, the projection's axes it picks), ...])]`` when every reader of the Shape ``shape``
    gathers axes in ``axes`` with a constant non-negative index, else None."""
    output = shape.outputs[0]
    picks = []
    for user, _ in output.uses():
        gathers = is_onnx_op(user, "Gather") and len(user.inputs) == 2 and user.inputs[0] is output
        index = constant_array(user.inputs[1]) if gathers else None
        if index is None or user.attributes.get_int("axis", 0) != 0 or index.dtype.kind != "i":
            return None
        if not all(int(i) in axes for i in index.reshape(-1)):
            return None
        picks.append((user, np.vectorize(axes.__getitem__, otypes=[index.dtype])(index)))
    return [(shape, picks)] if picks and not output.is_graph_output() else None


def _hidden_use(value: ir.Value) -> bool:
    """True if the op is the value's only user apart from Shapes reading its batch and sequence (directly, or
    through a head split: ``_head_dim_reads``)."""
    others = [user for user, _ in value.uses() if not _reads_leading_dims(user) and _head_dim_reads(user) is None]
    return len(others) == 1 and not value.is_graph_output()


def _matmul_and_bias(value: ir.Value) -> tuple[ir.Node, np.ndarray, np.ndarray | None, ir.Value] | None:
    """``(MatMul, W, b, its output)`` when ``value = x @ W [+ b]`` with constant 2-D ``W`` (and 1-D ``b`` of its
    width), else None."""
    bias, product = None, value
    add = producer(value, "Add")
    if add is not None:
        for operand, other in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
            array = constant_array(other)
            if array is not None and producer(operand, "MatMul") is not None:
                bias, product = array, operand
                break
        else:
            return None
    matmul = producer(product, "MatMul")
    weight = constant_array(matmul.inputs[1]) if matmul is not None else None
    if weight is None or weight.ndim != 2 or (bias is not None and bias.shape != (weight.shape[1],)):
        return None
    return matmul, weight, bias, product


def _projection(value: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray | None] | str:
    """``(x, W, b)`` when ``value = x @ W [+ b]`` with constant 2-D ``W`` (and 1-D ``b``), else why not."""
    found = _matmul_and_bias(value)
    if found is None or rank(found[0].inputs[0]) != 3:
        return _NOT_PROJECTIONS
    matmul, weight, bias, product = found
    if not _hidden_use(value) or (product is not value and not _single_use(product)):
        return "a projection has other users"
    return matmul.inputs[0], weight, bias


_NOT_PROJECTIONS = "query, key and value are not projections of one input"


def _packed_qkv(hidden: list[ir.Value]) -> _Packed | str:
    """Input, packed weights ``[D, q+k+v]``, packed bias and widths, when Q/K/V project one input, else why not."""
    if producer(hidden[0], "Split") is not None:
        return _packed_by_split(hidden)
    if producer(hidden[0], "Slice") is not None:
        return _packed_by_slices(hidden)
    parts = [_projection(v) for v in hidden]
    reason = next((p for p in parts if isinstance(p, str)), None)
    if reason is not None:
        return reason
    if len({id(part[0]) for part in parts}) != 1:
        return _NOT_PROJECTIONS
    weights = [part[1] for part in parts]
    biases = [part[2] if part[2] is not None else np.zeros(w.shape[1], w.dtype) for part, w in zip(parts, weights)]
    widths = [w.shape[1] for w in weights]
    return parts[0][0], np.concatenate(weights, axis=1), np.concatenate(biases).astype(weights[0].dtype), widths


def _packed_by_slices(hidden: list[ir.Value]) -> _Packed | str:
    """timm's and SVTR's one projection: Q, K, V are the consecutive thirds of ``x @ W [+ b]``'s last axis, each a
    ``Slice`` of it (as ``split-packed-heads`` writes them): its weight and bias are the packed ones as they are."""
    slices = [producer(v, "Slice") for v in hidden]
    if any(s is None or len(s.inputs) < 4 for s in slices) or len({id(s.inputs[0]) for s in slices}) != 1:
        return _NOT_PROJECTIONS
    packed = slices[0].inputs[0]
    bounds = []
    for node in slices:
        starts, ends, axes = (constant_array(v) for v in node.inputs[1:4])
        steps = constant_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
        if any(b is None or b.size != 1 for b in (starts, ends, axes)) or int(axes.reshape(-1)[0]) not in (-1, 2):
            return _NOT_PROJECTIONS
        if steps is not None and (steps.size != 1 or int(steps.reshape(-1)[0]) != 1):
            return _NOT_PROJECTIONS
        bounds.append((int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])))
    others = [user for user, _ in packed.uses() if user not in slices and not _reads_leading_dims(user)]
    if others or packed.is_graph_output() or not all(_hidden_use(v) for v in hidden):
        return "a projection has other users"
    found = _packed_projection(packed)
    if isinstance(found, str):
        return found
    x, weight, bias, product = found
    if product is not packed and not _single_use(product):
        return _NOT_PROJECTIONS
    width = weight.shape[1] // 3
    if weight.shape[1] % 3 or bounds != [(0, width), (width, 2 * width), (2 * width, 3 * width)]:
        return "query, key and value are not the thirds of one projection, in order"
    return x, weight, bias, [width] * 3


def _packed_projection(packed: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray, ir.Value] | str:
    """``(x, W, b, x @ W)`` where ``packed = x @ W [+ b]`` with constant ``W`` and a 3-D ``x`` (``b`` zeros where
    there is none), else why not."""
    found = _matmul_and_bias(packed)
    if found is None:
        return _NOT_PROJECTIONS
    matmul, weight, bias, product = found
    if rank(matmul.inputs[0]) is None:
        return f"the projection's input is {NOT_KNOWN_3D}"  # retried with shapes inferred
    if rank(matmul.inputs[0]) != 3:
        return _NOT_PROJECTIONS
    bias = bias if bias is not None else np.zeros(weight.shape[1], weight.dtype)
    return matmul.inputs[0], weight, bias.astype(weight.dtype), product


def _packed_by_split(hidden: list[ir.Value]) -> _Packed | str:
    """GPT-2's Conv1D: Q, K, V are the three outputs of ``Split(Reshape(Gemm(Reshape(x, [-1, D]), W, b)))``."""
    split = producer(hidden[0], "Split")
    if list(split.outputs) != hidden or split.attributes.get_int("axis", 0) not in (-1, 2):
        return _NOT_PROJECTIONS
    outer = producer(split.inputs[0], "Reshape")
    gemm = producer(outer.inputs[0], "Gemm") if outer is not None else None
    inner = producer(gemm.inputs[0], "Reshape") if gemm is not None else None
    if inner is None:
        return _split_of_matmul(split, hidden)
    if not all(_hidden_use(v) for v in hidden) or not all(_single_use(v) for v in (split.inputs[0], outer.inputs[0])):
        return "a projection has other users"
    attrs = gemm.attributes
    if attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_float("beta", 1.0) != 1.0 or attrs.get_int("transA", 0):
        return _NOT_PROJECTIONS
    transposed = attrs.get_int("transB", 0)
    weight = constant_array(gemm.inputs[1])
    if weight is None or weight.ndim != 2:
        return _NOT_PROJECTIONS
    # A zero bias is often dropped by simplify-ops: no bias input is a zero bias.
    has_bias = len(gemm.inputs) > 2 and gemm.inputs[2] is not None
    bias = constant_array(gemm.inputs[2]) if has_bias else np.zeros(weight.shape[1 - transposed], weight.dtype)
    if bias is None or bias.shape != (weight.shape[1 - transposed],):
        return _NOT_PROJECTIONS
    weight = weight.T if transposed else weight
    x = inner.inputs[0]
    flatten = shape_tokens(inner.inputs[1])
    if x.shape is None or x.shape.rank() != 3 or flatten != [-1, weight.shape[0]]:
        return _NOT_PROJECTIONS
    # The Reshape back to 3-D must restore x's batch and sequence dims.
    restored = outer.outputs[0].shape
    same_dims = (
        restored is not None
        and restored.rank() == 3
        and all(
            restored[i] == x.shape[i] and (isinstance(restored[i], int) or restored[i].value is not None)
            for i in (0, 1)
        )
    )
    if not same_dims and shape_tokens(outer.inputs[1]) != [(x, 0), (x, 1), weight.shape[1]]:
        return _NOT_PROJECTIONS
    widths = [last_dim(v) for v in hidden]
    if None in widths or sum(widths) != weight.shape[1]:
        return _NOT_PROJECTIONS
    return x, np.ascontiguousarray(weight), bias, widths


def _split_of_matmul(split: ir.Node, hidden: list[ir.Value]) -> _Packed | str:
    """Q, K, V as the three outputs of ``Split(x @ W [+ b])`` on the last axis: GPT-2's Conv1D as ONNX Runtime's
    transformers optimizer (``FullyConnect_MatMul`` + ``Add``), onnxslim and other tools rewrite the Gemm between
    its two Reshapes. The projection's weight and bias are the packed ones as they are."""
    packed = split.inputs[0]
    found = _packed_projection(packed)
    if isinstance(found, str):
        return found
    x, weight, bias, product = found
    if (
        not all(_hidden_use(v) for v in hidden)
        or not _single_use(packed)
        or (product is not packed and not _single_use(product))
    ):
        return "a projection has other users"
    widths = [last_dim(v) for v in hidden]
    if None in widths or sum(widths) != weight.shape[1]:
        return _NOT_PROJECTIONS
    sizes = constant_array(split.inputs[1]) if len(split.inputs) > 1 and split.inputs[1] is not None else None
    if sizes is not None and [int(size) for size in sizes.reshape(-1)] != widths:  # declared widths out of date
        return _NOT_PROJECTIONS
    return x, weight, bias, widths


# Attention's mask_filter_value when none is set: what the kernel adds to a masked score.
_MASK_FILTER_DEFAULT = -10000.0


def _probe_mask(
    model: ir.Model, bias: ir.Value, inputs: list[ir.Value], mask: np.ndarray, masked: list[float] | None = None
) -> bool | str | None:
    """Whether ``bias`` is the padding mask (False) or causal + padding (True) for the probe ``mask``, else None;
    ``masked`` gets the values the bias holds where it masks.

    ``_REFUSED`` when the original graph refuses this length: ONNX Runtime fails on the
    bias subgraph, or the bias cannot broadcast to the ``[B, N, S, S]`` scores it is added to.
    """
    try:
        (value,) = evaluate(model, [bias], token_feeds(inputs, mask))
    except RuntimeRefusedError:
        return _REFUSED
    batch, seq = mask.shape
    if value.ndim > 4:
        return None
    value = value.reshape((1,) * (4 - value.ndim) + value.shape)  # broadcasting is right-aligned
    wanted = (batch, value.shape[1], seq, seq)
    if any(d not in (1, seq) for d in value.shape[2:]):
        return _REFUSED
    if any(d not in (1, want) for d, want in zip(value.shape, wanted)):
        return None
    # 0 where allowed, at most -1e4 elsewhere: the bias is that pattern of zeros.
    allowed = value == 0
    if not np.all(allowed | (value <= -1e4)):
        return None
    if masked is not None and not allowed.all():
        masked.extend(np.unique(value[~allowed]).tolist())
    allowed = np.broadcast_to(allowed, wanted)
    padding = mask[:, None, None, :] == 1
    if np.array_equal(allowed, np.broadcast_to(padding, wanted)):
        return False
    causal = padding & np.tril(np.ones((seq, seq), bool))
    return True if np.array_equal(allowed, np.broadcast_to(causal, wanted)) else None


def _unprobed(mask: ir.Value) -> str:
    """Why a bias the original refuses to evaluate on every padded probe row is kept: the mask's static dims, where
    it has them (the probes are 2 rows of 7 and of 13 tokens)."""
    dims = list(mask.shape) if mask.shape is not None else []
    static = [dim if isinstance(dim, int) else getattr(dim, "value", None) or "?" for dim in dims]
    why = f"its dims are static, [{', '.join(map(str, static))}]: " if any(isinstance(d, int) for d in dims) else ""
    return (
        f"ONNX Runtime refuses the bias on every padded probe of {mask.name} ({why}2 rows of "
        f"{PADDED_MASK.shape[1]} and of {_LONGER_MASK.shape[1]} tokens), so which mask it is was not seen"
    )


def _static_dims(mask: ir.Value) -> tuple[int | None, int | None]:
    """The mask input's batch and sequence sizes where they are static, else None for each."""
    dims = list(mask.shape)[:2] if mask.shape is not None and mask.shape.rank() >= 2 else [None, None]
    return tuple(dim if isinstance(dim, int) else None for dim in dims)


def _fitted(mask: np.ndarray, batch: int | None) -> list[np.ndarray]:
    """The probe rows ``mask`` as the batches a mask input of static ``batch`` takes (a dynamic one takes them as
    they are): each row alone for a batch of 1; for more, one batch per row, starting at it and going on through the
    rows in turn, so each row is seen at each position beside different rows (a bias that reads another row's mask,
    ``mask[[0, 1, 0]]``, shows)."""
    if batch is None:
        return [mask]
    return [mask[[(first + at) % len(mask) for at in range(batch)]] for first in range(len(mask))]


def _probe_fitted(
    model: ir.Model,
    bias: ir.Value,
    inputs: list[ir.Value],
    mask: np.ndarray,
    batch: int | None,
    masked: list[float] | None = None,
) -> bool | str | None:
    """``_probe_mask`` on each batch of ``_fitted(mask, batch)``: the kind all agree on, else None. A batch whose
    only real tokens are first (``[1, 0, 0]`` alone, at a static batch of 1) is causal + padding as much as padding,
    which ``_probe_mask`` calls padding: it counts only where it is neither."""
    kinds = set()
    for each in _fitted(mask, batch):
        found = _probe_mask(model, bias, inputs, each, masked)
        if found is not False or each[:, 1:].any():
            kinds.add(found)
    return kinds.pop() if len(kinds) == 1 else None


def _static_rows(length: int) -> np.ndarray:
    """The probe rows at a mask input's static ``length`` (at least 2), the one length ONNX Runtime runs it at, so
    every pattern a padding mask takes is probed there: all real; one token and about half padded, on the left and
    on the right; one real token, first and last; and from 3 tokens padding between real ones (alternate tokens,
    both ends real); and a right-padded row of each count of real tokens none of those has. A bias that is a padding
    mask only on some of them (one that masks outside the first and last real tokens, adds a constant or turns causal
    where no token is padded, or masks more where six of 8 tokens are real) is refused."""
    half = max(1, (length - 1) // 2)
    rows = {}
    for pad in (1, half):
        rows[(0,) * pad + (1,) * (length - pad)] = None
        rows[(1,) * (length - pad) + (0,) * pad] = None
    for row in (
        (1,) * length,
        (1,) + (0,) * (length - 1),
        (0,) * (length - 1) + (1,),
        tuple((t + 1) % 2 for t in range(length)),
        tuple(t % 2 for t in range(length)),
        (1,) + (0,) * (length - 2) + (1,),
    ):
        rows[row] = None
    # A bias may read how many tokens are real (a ReduceSum of the mask): at 8 tokens the rows above hold 1, 2, 4, 5,
    # 7 and 8, and one that masks a real token more where 6 are was taken for a padding mask (review s75 late75b).
    counts = {sum(row) for row in rows}
    for real in range(1, length):
        if real not in counts:
            rows[(1,) * real + (0,) * (length - real)] = None
    return np.array(list(rows), np.int64)


def _short_mask(length: int) -> np.ndarray:
    """Two ``[2, length]`` probe rows, the first left-padded and the second right-padded by one token (``length``
    at least 2, so each keeps a real token): at a short length the mask is still seen to pad on either side."""
    mask = np.ones((2, length), np.int64)
    mask[0, 0] = mask[1, -1] = 0
    return mask


def _one_fill(masked: list[float]) -> float | None:
    """The value the packed op's ``mask_filter_value`` must add where the bias masked with ``masked`` (every
    masked value seen on the probes): its largest, where every other is it or twice it (padding and causal
    masks summed); float32's lowest for -inf (exp gives 0 either way). None where the fills differ (-1e4 for
    the causal order and float32's lowest for padding): the op fills the causal order with float32's lowest
    whatever ``mask_filter_value`` is, so a left-padded row would attend elsewhere (a review)."""
    if not masked:
        return _MASK_FILTER_DEFAULT
    values = np.asarray(masked, dtype=np.float64)
    fill = float(values.max())
    if fill == -math.inf:
        return float(np.finfo(np.float32).min)
    lowest = float(np.finfo(np.float32).min)
    if fill <= lowest:  # Hugging Face's masks: float32's lowest, as the op's causal fill
        return lowest if bool(np.all(values <= lowest)) else None
    multiples = values / fill
    if not bool(np.all(np.isclose(multiples, 1.0) | np.isclose(multiples, 2.0))):
        return None
    return fill


def _mask_index(graph: ir.Graph, anchor: ir.Node, mask: ir.Value, x: ir.Value, casts: dict) -> ir.Value:
    """The 2-D mask input as the Attention op's ``mask_index``: int32 (cast once per graph) and
    ``[batch, sequence]`` of ``x``.

    The exporter's bias broadcasts the mask over the scores, so a mask of one row (or one column) fed for
    a batch runs there; ``mask_index`` must be ``[batch, sequence]``. Unless the mask is that by its
    declared dims (``_batch_sequence_of``) it is first ``Expand`` ed to ``Shape(x)[:2]``: the same
    broadcast, kept once per mask and ``x``'s leading dims.
    """
    dims = _leading_dims(x)
    proven = _batch_sequence_of(mask, x, dims, graph)
    key = (id(mask),) if proven else (id(mask), dims if dims is not None else id(x))
    if key in casts:
        return casts[key]
    source, added = mask, []
    if not proven:
        prefix = f"{mask.name}/{anchor.name}"  # one per mask and x: named for the first op that reads it
        shape = ir.node("Shape", [x], name=f"{prefix}/batch_sequence_shape")
        starts = add_initializer(graph, f"{mask.name}/batch_sequence_start", np.array([0], dtype=np.int64))
        ends = add_initializer(graph, f"{mask.name}/batch_sequence_end", np.array([2], dtype=np.int64))
        target = ir.node("Slice", [shape.outputs[0], starts, ends], name=f"{prefix}/batch_sequence")
        expand = ir.node("Expand", [mask, target.outputs[0]], name=f"{prefix}/broadcast")
        added += [shape, target, expand]
        for step in added:
            step.outputs[0].name = f"{step.name}_output"
        source = expand.outputs[0]
    if source.dtype != ir.DataType.INT32:
        name = f"{mask.name}/to_int32" if source is mask else f"{source.name}/to_int32"
        cast = ir.node("Cast", [source], {"to": ir.DataType.INT32}, name=name)
        cast.outputs[0].name = f"{mask.name}_int32" if source is mask else f"{source.name}_int32"
        added.append(cast)
        source = cast.outputs[0]
    if added:
        graph.insert_before(anchor, added)
    casts[key] = source
    return source


def _batch_sequence_of(mask: ir.Value, x: ir.Value, dims: tuple | None, graph: ir.Graph) -> bool:
    """Whether the 2-D ``mask`` is ``[batch, sequence]`` of ``x``, whose leading dims are ``dims``: the same
    sizes or names, or (``x``'s unknown) two dim names another graph input that ``x`` is computed from
    declares first too (``input_ids [batch, sequence]``: dims declared with the same name on two graph
    inputs are taken as equal, as ONNX means them)."""
    own = _leading_dims(mask)
    if own is None:
        return False
    if dims is not None:
        return own == dims
    if not all(isinstance(dim, str) for dim in own):
        return False
    others = {id(other) for other in graph.inputs if other is not mask and _leading_dims(other) == own}
    return bool(others) and _computed_from(x, others)


def _computed_from(value: ir.Value, sources: set[int]) -> bool:
    """Whether one of the graph inputs whose ids are ``sources`` is an ancestor of ``value`` (``ancestry``)."""
    _, leaves = ancestry([value], through_subgraphs=True)
    return any(id(leaf) in sources for leaf in leaves)


def _leading_dims(value: ir.Value) -> tuple | None:
    """``value``'s first two dims as ints or dim names, or None where either is unknown."""
    if value.shape is None or value.shape.rank() < 2:
        return None
    dims = []
    for dim in list(value.shape)[:2]:
        dim = dim if isinstance(dim, int) else getattr(dim, "value", None)
        if dim is None:
            return None
        dims.append(dim)
    return tuple(dims)


def _mask_kind(
    model: ir.Model, bias: ir.Value, max_sequence: int = DEFAULT_MAX_SEQUENCE, static_masks: bool = False
) -> tuple[ir.Value, bool] | str:
    """``(mask_input, causal, fill)`` when the additive ``bias`` is what a 2-D padding mask input implies (or, where
    it reads no mask input, the causal order alone: ``mask_input`` None), else why not.

    The bias subgraph is evaluated on ONNX Runtime for a left- and a right-padded row at
    7 and 13 tokens and at each shorter length from 2 (``_SHORT_LENGTHS``: ``probe_lengths`` names none
    below 8, where a comparison of the length with a small constant may switch the kind), then for one
    right-padded row at each of ``probe_lengths`` up to
    ``max_sequence``; it must be 0 where ``mask[b, t] == 1`` (and ``t <= s`` if
    causal) and at most -1e4 elsewhere, whatever exporter code built it, at each length
    the original graph accepts (see the module docstring). With ``static_masks``, a mask input of static dims is
    probed at those dims instead (``_static_kind``, ``_fitted``).
    """
    mask_types = (ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL, ir.DataType.FLOAT)
    inputs = token_inputs_of([bias], mask_types)
    if inputs is None:
        return "it reads more than [batch, sequence] inputs, or goes through If/Loop/Scan"
    masks = [v for v in inputs if is_mask(v)]
    if len(masks) > 1:
        return "it reads no single input named like an attention mask"
    if not values_only_from(bias, *masks):
        return "it reads other inputs' values, not only the mask's"
    # Without a mask input (an encoder-decoder's decoder_model.onnx: its self-attention's bias is the causal order
    # alone, built from the sequence length) the probes are rows of no padding, and only the causal order is taken.
    probe = (lambda mask: mask) if masks else np.ones_like
    masked: list[float] = []
    # A mask input of static dims (an export without dynamic axes, or --static-shapes): ONNX Runtime runs it at
    # those dims alone, so a static length is probed there only (every pattern at once), a static batch on fitted rows.
    batch, length = _static_dims(masks[0]) if masks and static_masks else (None, None)
    if length is not None:
        return _static_kind(model, bias, inputs, masks[0], batch, length)
    kinds = {_probe_fitted(model, bias, inputs, probe(mask), batch, masked) for mask in (PADDED_MASK, _LONGER_MASK)}
    if len(kinds) != 1 or kinds & {None, _REFUSED} or (not masks and kinds != {True}):
        if not masks:
            return "it reads no input named like an attention mask, and is not the causal order on the probed rows"
        if kinds == {_REFUSED}:
            # A mask input of static dims (an export without dynamic axes, or --static-shapes) takes no probe row.
            return _unprobed(masks[0])
        return "it is not what a padding (or causal + padding) mask implies on the probed rows"
    causal = kinds.pop()
    # What the bias was taken for, in a refusal's words: without a mask input, no padding was probed.
    what = f"what a {'causal + padding' if causal else 'padding'} mask implies" if masks else "the causal order"
    for length in _SHORT_LENGTHS:
        found = _probe_fitted(model, bias, inputs, probe(_short_mask(length)), batch, masked)
        if found != _REFUSED and found != causal:
            return f"it is not {what} at {length} tokens, though it is at 7 and 13"
    probed = {PADDED_MASK.shape[1], _LONGER_MASK.shape[1], *_SHORT_LENGTHS}
    lengths = probe_lengths([bias], max_sequence, model=model, inputs=inputs)
    if isinstance(lengths, str):
        return lengths
    lengths = [n for n in lengths if n not in probed]
    if sum(n * n for n in lengths) > _MAX_PROBED_ELEMENTS:
        return (
            f"its kind cannot be probed up to --max-sequence {max_sequence} "
            f"(a [{max_sequence}, {max_sequence}] mask is too large to evaluate)"
        )
    for length in lengths:
        found = _probe_fitted(model, bias, inputs, probe(long_mask(length)), batch)
        if found != _REFUSED and found != causal:
            return (
                f"it is not {what} at {length} tokens, though it is at 7 and 13 "
                "(a sliding window, or a table that changes past them)"
            )
    return _with_fill(masks[0] if masks else None, causal, masked)


def _with_fill(mask: ir.Value | None, causal: bool, masked: list[float]) -> tuple[ir.Value | None, bool, float] | str:
    """``(mask, causal, fill)`` with the one fill of the ``masked`` values (``_one_fill``), else why not."""
    fill = _one_fill(masked)
    if fill is None:
        return (
            "it masks with different values where padding and where the causal order masks (the packed op adds "
            "one value for padding and float32's lowest for the causal order)"
        )
    return mask, causal, fill


def _static_kind(
    model: ir.Model, bias: ir.Value, inputs: list[ir.Value], mask: ir.Value, batch: int | None, length: int
) -> tuple[ir.Value, bool, float] | str:
    """``_mask_kind`` of a bias whose ``mask`` input has a static ``length`` (and ``batch``, if not None): probed
    on ``_static_rows(length)`` alone, as ONNX Runtime refuses every other length; every row must give one kind."""
    if length < 2:
        return f"its mask input {mask.name} is static at {length} token: no probe row can be padded there"
    rows = _static_rows(length)
    # A dynamic batch takes the rows in batches of at most the elements bounded (a row of each count is ``length``
    # rows); a static one takes each of its batches in a run of its own (``_fitted``). All of them together grow as
    # ``length`` cubed: bounded too, as their time is (4 s at 1024 tokens, a batch of 1, on a shared CPU).
    per_run = batch or max(1, _MAX_PROBED_ELEMENTS // (length * length))
    total = len(rows) * (batch or 1) * length * length
    if per_run * length * length > _MAX_PROBED_ELEMENTS:
        return f"its kind cannot be probed at {mask.name}'s static dims (a [{length}, {length}] mask is too large)"
    if total > _STATIC_PROBES * _MAX_PROBED_ELEMENTS:
        return (
            f"its kind cannot be probed at {mask.name}'s static dims: {len(rows)} probe rows of {length} tokens (one "
            "for each count of real tokens, which a bias may read) are too many to evaluate"
        )
    masked: list[float] = []
    runs = [rows] if batch is not None else [rows[at : at + per_run] for at in range(0, len(rows), per_run)]
    kinds = {_probe_fitted(model, bias, inputs, each, batch, masked) for each in runs}
    kind = kinds.pop() if len(kinds) == 1 else None
    if kind == _REFUSED:
        return (
            f"ONNX Runtime refuses the bias on the probes of {mask.name} at its static dims "
            f"[{batch if batch is not None else '?'}, {length}], so which mask it is was not seen"
        )
    if kind is None:
        return (
            f"it is not what a padding (or causal + padding) mask implies on every probed row at {mask.name}'s "
            f"static {length} tokens (padded on either side, between real tokens, or not at all)"
        )
    return _with_fill(mask, kind, masked)


def _unexpanded(bias: ir.Value) -> ir.Value:
    """The bias before the Expands that only broadcast it (their target shapes read the query and key)."""
    while (expand := producer(bias, "Expand")) is not None:
        bias = expand.inputs[0]
    return bias


def _check(node: ir.Node) -> list[ir.Value] | str:
    """The 3-D query, key and value of a MultiHeadAttention ``node`` Attention can take, else why not."""
    inputs = list(node.inputs) + [None] * (8 - len(node.inputs))
    if any(v is not None for v in (inputs[3], inputs[4], *inputs[6:])) or any(
        list(out.uses()) or out.is_graph_output() for out in node.outputs[1:]
    ):
        return "it has a projection bias, key padding mask or past state"
    query, key, value = inputs[:3]
    if key is None or value is None:
        return "the key and value are packed with the query"
    ranks = [rank(v) for v in (query, key, value)]
    if 4 in ranks[1:]:
        return "key/value are per-head 4-D tensors"
    if ranks != [3, 3, 3]:
        return f"query, key or value is {NOT_KNOWN_3D}"
    return [query, key, value]


class PackedAttentionFusion(FusionPass):
    """Rewrite ``MultiHeadAttention`` over constant projections of one input into packed ``com.microsoft.Attention``.

    See the module docstring for the forms and refusals; each MultiHeadAttention is
    counted as packed or refused with its reason. ``max_sequence`` is the longest
    sequence a mask's kind is probed at (``--max-sequence``). ``fused_count`` holds the
    rewrites of the last run. With ``for_int4`` (``quantize-int4`` in the run, however asked for) it leaves every
    MultiHeadAttention as it is and says so: packed QKV weights have no 4-bit form, and unpacked, Q, K and V are
    MatMuls ``quantize-int4`` writes in 4 bits (a tiny BART encoder packed kept 37 % of its layer weights float under
    ``--quantize int4``). With ``static_masks`` a mask input of static dims (an export without dynamic axes, or
    ``--static-shapes``), which ONNX Runtime refuses the usual probes on, is probed at its dims (``_static_kind``) and
    becomes ``mask_index`` too; off by default, and not in the pipeline: a static RoBERTa export so packed ran no
    faster (``docs/benchmarks.md``, review s75).
    """

    fused_ops = ((MS_DOMAIN, "Attention"),)

    def __init__(
        self,
        target: str = "cpu",
        max_sequence: int = DEFAULT_MAX_SEQUENCE,
        for_int4: bool = False,
        static_masks: bool = False,
    ) -> None:
        super().__init__(target)
        self.max_sequence = checked_length(max_sequence)
        self.for_int4 = for_int4
        self.static_masks = static_masks

    def fuse(self, model: ir.Model) -> int:
        if self.for_int4:
            if any(node.op_type == "MultiHeadAttention" and node.domain == MS_DOMAIN for node in model.graph):
                self.decline(
                    "left unpacked for quantize-int4 (--quantize int4): packed QKV weights have no 4-bit form, and "
                    "unpacked, Q, K and V are MatMuls quantize-int4 writes in 4 bits"
                )
            return 0
        self._kept: list[str] = []
        # Shared by both runs below: the ops packed so far (their names count on), and each mask's kind and Cast.
        self._packed = 0
        self._masks: dict[int, tuple[ir.Value, bool] | str] = {}
        self._casts: dict[int, ir.Value] = {}
        # The legacy exporter records no intermediate shapes: ranks ONNX's inference finds are read then.
        count = fuse_with_inferred_shapes(self, model, self._fuse, retry_on=(NOT_KNOWN_3D,))
        # Not refusals, but why a packed op reads the mask as attention_bias instead of mask_index.
        for reason, times in Counter(self._kept).most_common():
            self.decline(f"{times} of {count} packed with {reason}")
        if count:
            model.graph.sort()  # the shared mask Cast is built before the first op that reads it
        return count

    def _fuse(self, model: ir.Model) -> int:
        count = 0
        for node in [n for n in model.graph if n.op_type == "MultiHeadAttention" and n.domain == MS_DOMAIN]:
            found = _check(node)
            if isinstance(found, str):
                self.refuse("MultiHeadAttention", found)
                continue
            packed = _packed_qkv(found)
            if isinstance(packed, str):
                self.refuse("MultiHeadAttention", packed)
                continue
            self._rewrite(model, node, packed, self._packed, self._masks, self._casts)
            self.done("MultiHeadAttention")
            self._packed += 1
            count += 1
        return count

    def _rewrite(self, model: ir.Model, node: ir.Node, packed: _Packed, index: int, masks: dict, casts: dict) -> None:
        graph = model.graph
        x, weights, biases, widths = packed
        name = f"Attention_{index}"
        attributes = {"num_heads": node.attributes.get_int("num_heads")}
        for attr in ("scale", "mask_filter_value"):
            if attr in node.attributes:
                attributes[attr] = node.attributes.get_float(attr)
        if node.attributes.get_int("unidirectional", 0):
            attributes["unidirectional"] = 1
        if widths[2] != widths[0]:
            attributes["qkv_hidden_sizes"] = widths
        bias = node.inputs[5] if len(node.inputs) > 5 else None
        mask_index = None
        if bias is not None:
            probe = _unexpanded(bias)
            if id(probe) not in masks:
                masks[id(probe)] = _mask_kind(model, probe, self.max_sequence, self.static_masks)
            if isinstance(masks[id(probe)], str):
                self._kept.append(f"the mask kept as attention_bias: {masks[id(probe)]}")
            else:
                # A plain padding (or causal + padding) mask: the op reads the 2-D mask and the
                # exporter's [B, 1, S, T] bias subgraph goes away.
                mask, causal, filter_value = masks[id(probe)]
                mask_index = _mask_index(graph, node, mask, x, casts) if mask is not None else None
                bias = None
                if causal:
                    attributes["unidirectional"] = 1
                # The kernel adds mask_filter_value to a masked score where the bias added its own value:
                # -1e30 for fuse-attention's Where fills, under which a masked score of 1e4 stays masked.
                if filter_value != _MASK_FILTER_DEFAULT:
                    attributes["mask_filter_value"] = filter_value
                else:
                    attributes.pop("mask_filter_value", None)
        inputs = [
            x,
            add_initializer(graph, f"{name}/qkv_weight", weights),
            add_initializer(graph, f"{name}/qkv_bias", biases),
            mask_index,
            None,
            bias,
        ]
        while inputs[-1] is None:
            inputs.pop()
        fused = ir.node("Attention", inputs, attributes, domain=MS_DOMAIN, name=f"{name}/Attention")
        fused.outputs[0].name = f"{name}/Attention_output_0"
        graph.insert_before(node, fused)
        for hidden in node.inputs[:3]:
            for user, _ in list(hidden.uses()):
                if _reads_leading_dims(user):
                    user.replace_input_with(0, x)
                for shape, gathers in _head_dim_reads(user) or []:
                    shape.replace_input_with(0, x)
                    for gather, index in gathers:
                        gather.replace_input_with(1, add_initializer(graph, f"{name}/input_axis", index))
        output = node.outputs[0]
        fused.outputs[0].shape, fused.outputs[0].type = output.shape, output.type
        replace_value(output, fused.outputs[0])

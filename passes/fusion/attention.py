"""Attention fusion, stage 1: scaled dot-product attention into ``com.microsoft.MultiHeadAttention``.

Anchored on each ``Softmax`` over the last axis of a 4-D float32 tensor (or of 3-D scores
``[B*N, S, T]``, below), it recognises what the subgraph computes, not one exporter's
spelling of it:

    logits = Q @ K^T, scaled and masked in any order      (MatMul, or FusedMatMul with transB)
    probs  = Softmax(logits)
    probs  = Where(IsNaN(probs), 0, probs)                 (optional: the SDPA guard)
    output = probs @ V

- Scales: Mul/Div by constant scalars on the scores, on Q or K (before or after their
  transposes, or on the 3-D projection before the head split) and FusedMatMul's
  ``alpha`` multiply into the op's ``scale``. A scale applied after a mask scales the
  mask too, so the mask is multiplied by it.
- Masks: additive biases (several are summed; ``scores - bias`` adds the negated bias,
  the ``scores - 10000 * (1 - mask)`` of early TF ports) and ``Where(cond, scores, fill)``
  (or ``Where(cond, fill, scores)``) with a constant scalar fill of -inf or a large
  negative number, which becomes the bias ``Where(cond, 0, fill)`` (a finite fill written
  ``_WHERE_FILL``: the bias adds where the Where replaced, so a masked score of 1e4 came back
  next to a -1e4 fill; exact wherever a row's largest unmasked score is above fill + 104).
  The op's ``attention_bias`` is
  4-D ``[B|1, N|1, S, T]``: a lower-rank bias is unsqueezed (broadcasting is
  right-aligned), and one that may broadcast in the last two axes is expanded. Its dims
  are read from ONNX's shape inference and, where that leaves them open (a ``Range``'s
  length: the legacy causal mask), from ONNX Runtime's symbolic inference (the one simplify-shapes
  reads), so no Expand is written that a second run's simplify-shapes proves a no-op. A dim that
  inference merged with another proves nothing here: the merge is its assumption (a broadcast read
  as equal sizes), and a mask row count of 1 broadcasts in the original.
- Layouts: Q, K^T and V are traced back through Transposes (composing permutations),
  Reshapes that keep the shape, the SDPA export's relayout of the key through 3-D and a
  head split ``[B, S, N*d] -> [B, S, N, d]`` (``_layout.trace_heads``). An operand that
  is its head split transposed the usual way is given to the op as the 3-D hidden
  tensor; any other (rotary output, repeated KV heads, a cached key) as a ``[B, N, T, d]``
  key/value, with one Transpose where its layout needs it, and the query is flattened
  to 3-D.
- Heads batched for ``torch.bmm`` (Hugging Face's eager BART-family attention): Q, K and V
  viewed as ``[B*N, S, d]`` (``_layout.merged_heads``: a Reshape of a 4-D tensor that
  provably keeps its last two dims, so its rows are ``(b, n)``), the 3-D scores viewed as
  ``[B, N, S, T]`` to add the mask and back to ``[B*N, S, T]`` for the Softmax, the output
  viewed as ``[B, N, S, dv]``. It is the same attention when Q, K and V were merged from
  the same ``(B, N)`` and every view splits the rows into those same axes and keeps S and
  T; the dims are compared as products of named dims (``_layout.symbolic_dim``, which
  reads the legacy export's ``Mul(batch, heads)``), not as one exporter's literal target.
- Soft cap (Gemma 2): ``c * tanh(s / c)`` (or ``tanh(s * (1/c)) * c``; a bare ``tanh(s)``
  is ``c = 1``) on the scaled scores, ahead of every mask: any ``c * tanh(f * s)``, ``c`` a
  nonzero constant scalar, is the cap ``|c|`` at scale ``c * f`` (a negative ``c`` on both
  sides is the positive cap, ``tanh`` being odd; a negative scale is refused).
  MultiHeadAttention has no cap, so this pass refuses it with the reason;
  ``stage_soft_capped`` builds the same MultiHeadAttention, unread, for
  ``fuse-group-query-attention``, whose op takes ``softcap`` (scale, cap, then the bias: the
  order Hugging Face's Gemma 2 eager attention computes).
- Output: Transposes composing to ``(0, 2, 1, 3)`` and a Reshape merging the last two
  axes are replaced by the op's 3-D output; a Reshape flattening batch and sequence too
  (``[-1, N*dv]``, ``[B*S, N*dv]``: GPT-2's Conv1D ``Gemm`` input) by the same flatten of
  that output; otherwise the output is split back into ``[B, N, S, dv]``.
- Shapes the exporter did not record (legacy exports record none) are inferred for the
  match and taken back afterwards (``_inferred_shapes``), so a refused graph is left as it
  was and a fused one gains no shapes but its rewrite's.

Packing the projections into ``Attention`` and reading a plain padding mask as the op's
mask input is stage 2 (``packed_attention``), a pass verified on its own.

Refuses (with the reason, counted per Softmax) when: Softmax is not over the last axis of
a 4-D (or batched 3-D) float32 tensor; its input is not Q @ K^T under scalar scales, biases,
Where masks and views of the batched scores; the scores are soft-capped (always: see
above), or go through a Tanh that is not one cap ``c * tanh(f * s)`` (``c`` not a nonzero
constant scalar, ``c * f`` not positive, a mask inside the cap, a scale after it, two
caps); the scores are subtracted from another term (softmax of their negation); a Where
mask's fill is not -inf or large negative; the scores
or probabilities have other users; batched and per-head operands are mixed; a batched
operand is not a 4-D per-head tensor with its batch and head axes merged (torch's
``multi_head_attention_forward`` merges them from a ``[S, B, E]`` projection: WavLM, refused by that name);
Q, K and V are not known to be merged from the same batch and heads; a view of the batched scores changes
S or T or splits the rows into other axes (``[N, B, S, T]``); a mask added to the batched
``[B*N, S, T]`` scores has a leading axis of its own; the batched output is not split back
into ``[B, N, S, dv]`` the same way; the probabilities do not feed one MatMul (or plain
FusedMatMul) with V; the product transposes Q or the batch axes; a bias has unknown rank
(even after shape inference); Q, K or V is not known to be 4-D; the head count cannot be
derived or the scale is not a positive number; K/V have another head count than Q
(multi-query attention by broadcasting); or K and V go in as per-head tensors whose head
sizes differ or are not both known (ORT's kernel needs one shape for both; FlexAttention
allows a wider value).

The mask is decided by no evaluation here: ``attention_bias`` is the graph's own bias,
exact at every length. Reading it as a padding or causal mask (``mask_index``,
``unidirectional``) is ``pack-qkv``'s, which probes it at every length that matters.

Semantics differ in one degenerate case: a query row whose keys are *all* masked (left
padding under a causal mask) gets zeros from the SDPA guard but uniform weights from the
fused op. Where the guard is present the bias is floored at float32's lowest value
(``Max``), so that row is finite, not NaN: a NaN there would reach every token through
the next layer's keys. Without the guard the original is NaN there too.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_domain, is_onnx_op, onnx_opset
from passes._utils import replace_value
from passes.fusion._base import FusionPass
from passes.fusion._builder import NodeBuilder
from passes.fusion._checks import is_float, scalar
from passes.fusion._inferred_shapes import inferred_shapes, lacks_shapes
from passes.fusion._layout import (
    IDENTITY,
    HeadSplit,
    Traced,
    compose,
    element_type,
    head_split,
    keeps_shape,
    last_dim,
    merged_heads,
    producer,
    rank,
    same_dim,
    scalar_factor,
    shape_tokens,
    static_dim,
    symbolic_dim,
    trace_heads,
    traced_dim,
)
from passes.fusion._onnx_attention import (
    MaskBiases,
    SpelledAttention,
    onnx_attention_nodes,
    spell_out,
    take_back,
)
from passes.shape_simplification import _symbolic_shapes

# Scores filled with at most this much are masked out: exp(-1e4) underflows to 0 in float32
# next to any unmasked score, so Where(cond, s, fill) and s + Where(cond, 0, fill) agree.
_MASKED = -1e4
# What a finite Where fill becomes in the additive bias. The Where replaces a masked score by its fill; the bias
# adds to it, so with the fill itself a masked score above about -fill (|s| ~ 1e4) came back into the softmax (a
# review's large activations). -1e30 keeps any score under 1e22 masked, stays finite when several such masks
# add up (a row with every key masked then gets uniform weights, as the fill gives it), and agrees with the Where
# wherever the row's largest unmasked score is above fill + 104 (exp(fill - max) is 0 in float32 there).
_WHERE_FILL = -1e30
_TO_HEADS = (0, 2, 1, 3)  # [B, S, N, d] <-> [B, N, S, d]
_SWAP_LAST = (0, 1, 3, 2)


@dataclass
class _Bias:
    """One additive term of the logits: ``value * factor``, or a ``Where`` mask turned into one."""

    value: ir.Value  # the bias, or the Where condition
    factor: float  # the scales applied after it
    at: ir.Value  # the masked scores: the output of the Add, Sub or Where applying it
    fill: float | None = None  # a Where mask: the fill, and whether the scores are its true branch
    scores_if_true: bool = True

    def rank(self) -> int | None:
        return rank(self.value)


@dataclass
class _Logits:
    product: ir.Node  # Q @ K^T: MatMul or FusedMatMul
    scale: float  # applied to the product between it and the Softmax (FusedMatMul alpha included)
    key_transposed: bool  # the product's second operand is K^T (FusedMatMul transB=1 reads K itself)
    biases: list[_Bias] = field(default_factory=list)
    chain: list[ir.Value] = field(default_factory=list)  # the values from the product to the Softmax
    regroups: list[ir.Node] = field(default_factory=list)  # Reshapes on the way ([B*N, S, T] <-> [B, N, S, T])
    # The c of a soft cap c * tanh(s / c) between the scaled product and every mask (Gemma 2), or None.
    softcap: float | None = None


@dataclass
class _Attention:
    softmax: ir.Node
    logits: _Logits
    query: Traced
    key: Traced  # traced so that the key [B, N, T, d] is Transpose(key.source, key.perm)
    value: Traced
    probs_matmul: ir.Node
    scale: float
    guarded: bool  # the SDPA guard Where(IsNaN(p), 0, p) sits between the Softmax and the product with V
    output: ir.Value  # the [B, N, S, dv] output: the product with V, or the split of a batched one
    heads: int | None = None  # the head count a batched [B*N, ...] layout states


def _single_user(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0]


def _soft_cap(node: ir.Node) -> tuple[ir.Value, float, list[ir.Value]] | str | None:
    """``(x, c, values)`` when ``node`` is a soft cap ``c * tanh(x)`` (Gemma 2's ``c * tanh(s / c)``, also
    ``tanh(x) * c`` and ``tanh(x) / (1/c)``), ``values`` the Tanh's output; a reason when it scales a Tanh
    by no nonzero finite constant scalar; None when it scales no Tanh.

    Any ``c * tanh(f * s)`` is the fused op's cap ``|c|`` at scale ``c * f``, since
    ``c * tanh(f * s) = |c| * tanh((c * f) * s / |c|)`` (for ``c < 0``, ``tanh`` is odd:
    ``c * tanh(f * s) = |c| * tanh(-f * s)``): the factors inside the Tanh (Gemma 2's ``1/c``, or
    that merged with the attention scale into one constant) are the walk's to collect, from
    ``c``, and a negative scale is refused with the others. A bare ``tanh(s)`` is the cap ``c = 1``.
    """
    if is_onnx_op(node, "Tanh") and node.inputs[0] is not None:
        return node.inputs[0], 1.0, []
    if node.op_type not in ("Mul", "Div") or not is_onnx_domain(node) or len(node.inputs) != 2:
        return None
    if producer(node.inputs[0], "Tanh") is None and not (
        node.op_type == "Mul" and producer(node.inputs[1], "Tanh") is not None
    ):
        return None
    outer = scalar_factor(node)
    tanh = outer[0].producer() if outer is not None else None
    if outer is None or tanh is None or not is_onnx_op(tanh, "Tanh") or tanh.inputs[0] is None:
        return "the scores are soft-capped (c * tanh(s / c)) by a c that is not a constant scalar"
    cap = outer[1]
    if not (math.isfinite(cap) and cap != 0):
        return f"the scores' soft cap c = {cap:g} is not a nonzero finite number"
    return tanh.inputs[0], cap, [tanh.outputs[0]]


def _logits(value: ir.Value, depth: int = 0) -> _Logits | str:
    """Walk from the Softmax input back to ``Q @ K^T`` through scales, biases, Where masks and a soft cap.

    A soft cap must sit between the scaled product and every mask, with nothing scaling its
    result: ``softmax(c * tanh(scale * Q @ K^T / c) + bias)``, the order GroupQueryAttention
    computes (Hugging Face's Gemma 2 caps after its scaling and before the mask).
    """
    factor, biases, chain, regroups = 1.0, [], [], []
    softcap = None
    while depth < 8:
        chain.append(value)
        node = value.producer()
        if node is None:
            break
        if is_onnx_op(node, "MatMul"):
            return _Logits(node, factor, True, biases, chain, regroups, softcap)
        if node.op_type == "FusedMatMul" and node.domain == MS_DOMAIN:
            attrs = node.attributes
            if attrs.get_int("transA", 0) or attrs.get_int("transBatchA", 0) or attrs.get_int("transBatchB", 0):
                return "Q @ K^T transposes Q or the batch axes (FusedMatMul transA/transBatch)"
            alpha = attrs.get_float("alpha", 1.0)
            return _Logits(node, factor * alpha, not attrs.get_int("transB", 0), biases, chain, regroups, softcap)
        cap = _soft_cap(node)
        if isinstance(cap, str):
            return cap
        if cap is not None:
            if softcap is not None:
                return _TWO_CAPS
            if factor != 1.0:
                return _SCALED_CAP
            # The cap is |c|, the scale below it c times the factors inside it (``_soft_cap``).
            value, softcap, factor = cap[0], abs(cap[1]), cap[1]
            chain += cap[2]
            depth += 1
            continue
        step = scalar_factor(node)
        if step is not None:
            value, factor = step[0], factor * step[1]
            continue
        if softcap is not None and node.op_type in ("Add", "Sub", "Where") and is_onnx_domain(node):
            return _MASK_IN_CAP
        if is_onnx_op(node, "Add") and len(node.inputs) == 2:
            reasons = []
            for side in (0, 1):
                found = _logits(node.inputs[side], depth + 1)
                if isinstance(found, str):
                    reasons.append(found)
                    continue
                if found.softcap is not None and factor != 1.0:
                    return _SCALED_CAP
                found.scale *= factor
                for bias in found.biases:
                    bias.factor *= factor
                found.biases += [*biases, _Bias(node.inputs[1 - side], factor, node.outputs[0])]
                found.chain = [*chain, *found.chain]
                found.regroups += regroups
                return found
            return min(reasons, key=lambda r: r == _NOT_LOGITS)  # a specific reason over the generic one
        if is_onnx_op(node, "Sub") and len(node.inputs) == 2:
            # scores - bias (BERT-era TF exports: scores - 10000 * (1 - mask)) adds the negated bias.
            found = _logits(node.inputs[0], depth + 1)
            if isinstance(found, str):
                negated = _logits(node.inputs[1], depth + 1)
                return _NEGATED if not isinstance(negated, str) else found
            if found.softcap is not None and factor != 1.0:
                return _SCALED_CAP
            found.scale *= factor
            for bias in found.biases:
                bias.factor *= factor
            found.biases += [*biases, _Bias(node.inputs[1], -factor, node.outputs[0])]
            found.chain = [*chain, *found.chain]
            found.regroups += regroups
            return found
        if is_onnx_op(node, "Reshape"):
            # Batched attention views [B*N, S, T] as [B, N, S, T] to add the mask (checked in _batched).
            regroups.append(node)
            value = node.inputs[0]
            depth += 1
            continue
        if is_onnx_op(node, "Where"):
            cond, on_true, on_false = node.inputs
            fills = scalar(on_true), scalar(on_false)
            if (fills[0] is None) == (fills[1] is None):
                break
            fill = fills[1] if fills[0] is None else fills[0]
            if not fill < 0:
                return _NOT_MASKED
            biases.append(_Bias(cond, factor, node.outputs[0], fill, scores_if_true=fills[0] is None))
            value = on_true if fills[0] is None else on_false
            depth += 1
            continue
        break
    if (node := value.producer()) is not None and is_onnx_op(node, "DequantizeLinear"):
        return _QUANTIZED
    return _NOT_LOGITS


_NOT_FLOAT = "the scores are not float32 (the fused ops' CPU kernels)"
_NOT_LOGITS = "Softmax input is not Q @ K^T under scalar scales, biases and Where masks"
# A QDQ model (onnxruntime.quantization.quantize_static, smart-turn v3.2): the scores are quantized and dequantized
# between the MatMul and the Softmax; fusing would drop steps the model rounds at.
_QUANTIZED = (
    "the scores are read through DequantizeLinear (a QDQ-quantized model): fuse attention in the float model, "
    "then quantize it"
)
_NEGATED = "the scores are subtracted from another term (softmax of their negation)"
_NOT_MASKED = "a Where on the scores does not mask: its fill, times the scales after it, is above -1e4"
_SCALED_CAP = "the soft-capped scores are scaled after the cap (not c * tanh(s / c) with one c)"
_TWO_CAPS = "the scores are soft-capped twice"
_MASK_IN_CAP = "a mask is applied to the scores before their soft cap (the fused op caps first, then masks)"
_CAPPED = (
    "its scores are soft-capped (c * tanh(s / c), c = {cap:g}), which MultiHeadAttention cannot compute: "
    "GroupQueryAttention can, over a key/value cache (fuse-group-query-attention, on the CPU target)"
)


def _probs_consumer(softmax: ir.Node) -> ir.Node | str:
    """The MatMul reading the probabilities (through the optional ``Where(IsNaN(p), 0, p)`` guard), or why not."""
    probs = softmax.outputs[0]
    wrong = "the probabilities do not feed one MatMul with V"
    if probs.is_graph_output():
        return wrong
    uses = [node for node, _ in probs.uses()]
    if len(uses) == 2:
        isnan = next((n for n in uses if is_onnx_op(n, "IsNaN")), None)
        where = next((n for n in uses if is_onnx_op(n, "Where")), None)
        if isnan is None or where is None or where.inputs[0] is not isnan.outputs[0] or where.inputs[2] is not probs:
            return wrong
        if scalar(where.inputs[1]) != 0.0:
            return wrong
        probs = where.outputs[0]
        user = _single_user(probs)
        uses = [user] if user is not None else []
    if len(uses) != 1 or uses[0].inputs[0] is not probs:
        return wrong
    user = uses[0]
    if is_onnx_op(user, "MatMul"):
        return user
    if user.op_type == "FusedMatMul" and user.domain == MS_DOMAIN:
        attrs = user.attributes
        plain = attrs.get_float("alpha", 1.0) == 1.0 and not any(
            attrs.get_int(name, 0) for name in ("transA", "transB", "transBatchA", "transBatchB")
        )
        return user if plain else "the probabilities feed a scaled or transposing FusedMatMul"
    return wrong


def _operand(value: ir.Value, *, scales: bool = True) -> tuple[Traced, ir.Value] | None:
    """``value`` traced as a 4-D per-head operand, and the 4-D tensor whose leading axes are its batch and heads.

    A 3-D operand must be such a tensor with its two leading axes merged (``merged_heads``).
    """
    if rank(value) != 3:
        traced = trace_heads(value, scales=scales)
        return (traced, value) if traced is not None else None
    merged = merged_heads(value, scales=scales)
    if merged is None:
        return None
    source, order, factor = merged
    traced = trace_heads(source, scales=scales)
    if traced is None:
        return None
    return Traced(traced.source, compose(traced.perm, order), traced.scale * factor, traced.split), source


def _unread_operand(role: str, value: ir.Value) -> str:
    """Why the ``role`` operand ``value`` is not read, naming torch's ``multi_head_attention_forward`` layout.

    That function (WavLM's attention, ``nn.MultiheadAttention``) projects ``[S, B, E]`` and batches the heads as
    ``Transpose(Reshape(x, [S, B*N, d]), (1, 0, 2))`` (the key ``(1, 2, 0)``): heads merged with the batch by the
    Reshape before the transpose, not from a 4-D per-head tensor, which this pass does not read.
    """
    while value.producer() is not None and (step := scalar_factor(value.producer())) is not None:
        value = step[0]
    transpose = producer(value, "Transpose")
    reshape = producer(transpose.inputs[0], "Reshape") if transpose is not None else None
    order = transpose.attributes.get("perm") if transpose is not None else None
    if (
        reshape is not None
        and order is not None
        and tuple(order.as_ints()) in ((1, 0, 2), (1, 2, 0))
        and rank(reshape.inputs[0]) == 3
    ):
        return (
            f"the {role} is batched as [B*N, S, d] from a [S, B, E] projection (torch's multi_head_attention_forward:"
            " WavLM, nn.MultiheadAttention), a layout this pass does not read"
        )
    return f"the {role} is not known to be a 4-D per-head tensor or one batched as [B*N, S, d]"


def _same_dims(a: ir.Value, b: ir.Value, axes_a, axes_b, memo: dict) -> bool:
    dims = [symbolic_dim(a, axis, memo) for axis in axes_a], [symbolic_dim(b, axis, memo) for axis in axes_b]
    return None not in dims[0] and dims[0] == dims[1]


def _scores_operand(value: ir.Value, on_path: set[int]) -> ir.Value:
    """The scores ``value`` is computed from before masks and scales: Q @ K^T or a Reshape of it.

    Their shape is the scores' (a mask broadcasts to them), and unlike the masked sum's
    it is not lost where shape inference cannot broadcast two unknown dims.
    """
    while (node := value.producer()) is not None and not is_onnx_op(node, "Reshape") and id(value) in on_path:
        operand = next((v for v in node.inputs if v is not None and id(v) in on_path), None)
        if operand is None:
            break
        value = operand
    return value


def _batched(logits: _Logits, probs_matmul: ir.Node, views: list[ir.Value]) -> tuple[ir.Value, int | None] | str:
    """Check attention computed on ``[B*N, S, *]`` tensors; return its ``[B, N, S, dv]`` output and head count.

    Q @ K^T on merged ``[B*N, S, d]`` tensors is Q @ K^T on ``[B, N, S, d]`` with its
    leading axes merged when Q, K and V were merged from the same ``(B, N)``. Every
    Reshape between the product and the Softmax must keep the last two axes (S, T) and
    split the merged axis into those same ``(B, N)`` (so a ``[B, 1, 1, T]`` mask meets
    the rows it masks), and the product with V must be split back the same way.
    """
    memo: dict = {}
    leading = [tuple(symbolic_dim(view, axis, memo) for axis in (0, 1)) for view in views]
    if any(None in dims for dims in leading) or len(set(leading)) != 1:
        return "query, key and value are not known to be batched over the same batch and heads"
    lead = leading[0]
    on_path = {id(v) for v in (logits.product.outputs[0], *logits.chain)}
    for reshape in logits.regroups:
        data, out = _scores_operand(reshape.inputs[0], on_path), reshape.outputs[0]
        ranks = rank(data), rank(out)
        if ranks not in ((3, 4), (4, 3), (3, 3), (4, 4)) or not _same_dims(data, out, (-2, -1), (-2, -1), memo):
            return "a Reshape between Q @ K^T and the Softmax changes the query or key axis"
        if ranks == (4, 4) and not _same_dims(data, out, (0, 1), (0, 1), memo):
            return "a Reshape between Q @ K^T and the Softmax changes the batch or head axis"
        if ranks == (3, 4) and tuple(symbolic_dim(out, axis, memo) for axis in (0, 1)) != lead:
            return "the [B*N, S, T] scores are split into other leading axes than the heads were merged from"
    for bias in logits.biases:
        at = rank(bias.at)
        if at is None:
            return "a mask is added to scores of unknown rank"
        if at == 3 and bias.rank() == 3:  # [B*N | 1, S, T]: not one of the [B, N, S, T] masks the op takes
            return "a mask is added to the [B*N, S, T] scores with a batch axis of its own"
    output = probs_matmul.outputs[0]
    if rank(output) == 3:
        split = _single_user(output)
        if split is None or not is_onnx_op(split, "Reshape") or split.inputs[0] is not output:
            return "the [B*N, S, d] output is not split back into [B, N, S, d]"
        output = split.outputs[0]
        if rank(output) != 4 or not _same_dims(split.inputs[0], output, (-2, -1), (-2, -1), memo):
            return "the [B*N, S, d] output is not split back into [B, N, S, d]"
        if tuple(symbolic_dim(output, axis, memo) for axis in (0, 1)) != lead:
            return "the [B*N, S, d] output is split into other leading axes than the heads were merged from"
    heads = lead[1][0] if not lead[1][1] else None
    return output, heads


def _match(softmax: ir.Node, opset: int) -> _Attention | str:
    """Recognise the attention around ``softmax``, or say why not."""
    axis = softmax.attributes.get_int("axis", -1 if opset >= 13 else 1)
    scores = softmax.inputs[0]
    not_last_axis = "Softmax is not over the last axis of a 4-D tensor (or of batched [B*N, S, T] scores)"
    last = (-1, 2) if rank(scores) == 3 else (-1, 3) if rank(scores) in (4, None) else ()
    if axis not in last:
        return not_last_axis
    if not is_float(scores):
        return _NOT_FLOAT
    logits = _logits(scores)
    if isinstance(logits, str):
        return logits
    # What reaches the Softmax is fill * (the scales after the Where): that must mask.
    if any(bias.fill is not None and not bias.fill * bias.factor <= _MASKED for bias in logits.biases):
        return _NOT_MASKED
    if any(_single_user(v) is None for v in [logits.product.outputs[0], *logits.chain]):
        return "the scores have other users"
    probs_matmul = _probs_consumer(softmax)
    if isinstance(probs_matmul, str):
        return probs_matmul
    if any(bias.rank() is None for bias in logits.biases):
        return "a mask bias has unknown rank"
    # Where the scores' shape is not recorded, their rank is the product's (4, checked below) or a bias's.
    if any(bias.rank() > 4 for bias in logits.biases):
        return not_last_axis
    operands = (*logits.product.inputs[:2], probs_matmul.inputs[1])
    batched = logits.regroups or 3 in (rank(scores), *map(rank, operands))
    if batched and (rank(operands[0]) != rank(operands[1]) or rank(operands[2]) != rank(probs_matmul.inputs[0])):
        return "Q @ K^T or the product with V mixes batched [B*N, S, d] and per-head [B, N, S, d] operands"
    query = _operand(operands[0])
    if query is None:
        return _unread_operand("query", operands[0])
    key = _operand(operands[1])
    if key is None:
        return _unread_operand("key", operands[1])
    value = _operand(operands[2], scales=False)
    if value is None:
        return _unread_operand("value", operands[2])
    (query, q_view), (key, k_view), (value, v_view) = query, key, value
    output, heads = probs_matmul.outputs[0], None
    if batched:
        found = _batched(logits, probs_matmul, [q_view, k_view, v_view])
        if isinstance(found, str):
            return found
        output, heads = found
    if logits.key_transposed:
        key = Traced(key.source, compose(key.perm, _SWAP_LAST), key.scale, key.split)
    # Intermediate values often carry no type; the ops producing Q, K and V tell.
    if any(element_type(v) not in (ir.DataType.FLOAT, None) for v in operands):
        return _NOT_FLOAT
    # The op's scale is relative to the tensors it is given (``_query_input``, ``_key_value_inputs``): a scale on
    # the projection is inside a head split's output but not inside the projection before it.
    query_scale = query.hidden_scale() if query.canonical() else query.scale
    scale = logits.scale * query_scale * (key.hidden_scale() if _kv_as_hidden(key, value) else key.scale)
    guarded = probs_matmul.inputs[0] is not softmax.outputs[0]
    return _Attention(softmax, logits, query, key, value, probs_matmul, scale, guarded, output, heads)


def _head_count(split: HeadSplit) -> int | None:
    """The head count of a head split: its Reshape target, or the hidden width over the head size."""
    if split.heads is not None:
        return split.heads
    hidden = last_dim(split.hidden)
    return hidden // split.head_size if hidden is not None and hidden % split.head_size == 0 else None


def _dims(traced: Traced) -> tuple[int | None, int | None]:
    """``(heads, head size)`` of the traced ``[B, N, *, d]`` operand, where its shape or head split tells."""
    if traced.canonical():
        return _head_count(traced.split), traced.split.head_size
    heads, size = (static_dim(traced.source, traced.perm[axis]) for axis in (1, 3))
    if traced.split is not None:  # an unusual transpose of a head split: its [B, S, N, d] axes
        split_dims = {2: _head_count(traced.split), 3: traced.split.head_size}
        heads, size = heads or split_dims.get(traced.perm[1]), size or split_dims.get(traced.perm[3])
    reshape = traced.source.producer()
    if traced.perm == IDENTITY and reshape is not None and is_onnx_op(reshape, "Reshape"):
        tokens = shape_tokens(reshape.inputs[1])  # repeat_kv: Reshape(Expand(k), [B, N, T, d])
        if tokens is not None and len(tokens) == 4:
            heads = heads or (tokens[1] if isinstance(tokens[1], int) and tokens[1] > 0 else None)
            size = size or (tokens[3] if isinstance(tokens[3], int) and tokens[3] > 0 else None)
    # Shapes the exporter left off: follow the layout ops back to a literal size.
    heads = heads or traced_dim(traced.source, traced.perm[1])
    return heads, size or traced_dim(traced.source, traced.perm[3])


def _split_behind_elementwise(value: ir.Value, depth: int = 0) -> HeadSplit | None:
    """A head split reached through element-wise ops (rotary embedding: ``q * cos + rotate(q) * sin``)."""
    split = head_split(value, _TO_HEADS)
    if split is not None or depth > 4:
        return split
    node = value.producer()
    if node is None or node.op_type not in ("Add", "Mul", "Sub") or not is_onnx_domain(node):
        return None
    for operand in node.inputs:
        if operand is not None and operand.const_value is None:
            found = _split_behind_elementwise(operand, depth + 1)
            if found is not None:
                return found
    return None


def _heads(match: _Attention) -> int | None:
    """The query's head count, from its head split, shapes, projection widths or the scores' shape."""
    heads = _dims(match.query)[0]
    if heads is None and match.query.perm == IDENTITY:
        split = _split_behind_elementwise(match.query.source)
        heads = _head_count(split) if split is not None else None
    if rank(match.softmax.inputs[0]) == 3:  # batched [B*N, S, T] scores: the head count their split states
        return heads or match.heads
    return heads or match.heads or static_dim(match.softmax.inputs[0], 1)


def _kv_mismatch(match: _Attention, num_heads: int, *, shared_ok: bool = True) -> str | None:
    """Why K/V do not have the query's head count, or None.

    The fused ops need as many K/V heads as query heads. One key/value head that MatMul broadcasts over the
    query's (multi-query attention: Falcon, GPT-BigCode) is repeated for MultiHeadAttention (``_shared_heads``);
    not where ``shared_ok`` is False (the soft-capped staging for GroupQueryAttention).
    """
    query_batch = _batch(match.query)
    for name, traced in (("key", match.key), ("value", match.value)):
        heads, _ = _dims(traced)
        if heads is not None and heads != num_heads and not (shared_ok and heads == 1):
            return f"the {name} has {heads} heads, the query {num_heads}"
        # MatMul broadcasts a batch of 1 too; the fused op needs the query's batch.
        if _batch(traced) == 1 and query_batch != 1:
            return f"the {name} has a batch of 1, which MatMul broadcasts over the query's"
    # Per-head [B, N, T, d] key and value must have the same shape (ORT's kernels check it,
    # and reject the model at run time otherwise); 3-D ones may differ in width
    # (qkv_hidden_sizes). A head size the graph does not tell cannot be assumed equal.
    if not (match.key.canonical() and match.value.canonical()):
        key_size, value_size = _dims(match.key)[1], _dims(match.value)[1]
        if key_size is None or value_size is None:
            sizes = " and ".join(str(size) if size is not None else "unknown" for size in (key_size, value_size))
            return f"per-head key and value are not known to have the same head size ({sizes})"
        if key_size != value_size:
            return f"per-head key and value differ in head size ({key_size} and {value_size})"
    return None


def _query_input(build: NodeBuilder, query: Traced) -> ir.Value:
    """The 3-D ``[B, S, N*d]`` query: the head split's input, or the per-head query merged back."""
    if query.canonical():
        return query.split.hidden
    per_token = build.transpose(query.source, compose(query.perm, _TO_HEADS))
    return build.node("Reshape", [per_token, build.ints("merge_heads", [0, 0, -1])])


def _kv_as_hidden(key: Traced, value: Traced) -> bool:
    """True if the op reads key and value as the 3-D tensors their head splits split."""
    return key.canonical() and value.canonical()


def _key_value_inputs(
    build: NodeBuilder, key: Traced, value: Traced, adapters: list[str], num_heads: int
) -> tuple[ir.Value, ir.Value]:
    """3-D key and value when both are plain head splits, else both ``[B, N, T, d]``; one head the query's
    ``num_heads`` share (multi-query attention) repeated for each of them.

    A Transpose or Expand it needs is named in ``adapters``.
    """
    shared = [_shared_heads(traced, num_heads) for traced in (key, value)]
    if _kv_as_hidden(key, value) and not any(shared):
        return key.split.hidden, value.split.hidden
    if key.perm != IDENTITY or value.perm != IDENTITY:
        adapters.append(_KV_TRANSPOSED)
    inputs = [build.transpose(key.source, key.perm), build.transpose(value.source, value.perm)]
    if any(shared):
        adapters.append(_KV_REPEATED)
        for side, (traced, one) in enumerate(zip((key, value), shared, strict=True)):
            if one:
                inputs[side] = _repeated_heads(build, inputs[side], num_heads, _dims(traced)[1])
    return inputs[0], inputs[1]


def _repeated_heads(build: NodeBuilder, kv: ir.Value, num_heads: int, head_size: int | None) -> ir.Value:
    """``[B, 1, T, d]`` repeated into ``[B, N, T, d]``: as Llama's ``repeat_kv``,
    ``Reshape(Expand(Unsqueeze(kv, 2), [1, 1, N, 1, 1]), [0, N, -1, d])``, which fuse-group-query-attention reads
    as a cache's repetition; a plain ``Expand(kv, [1, N, 1, 1])`` where the head size is not known."""
    if head_size is None:
        return build.node("Expand", [kv, build.ints("kv_heads", [1, num_heads, 1, 1])])
    repeated = build.node("Expand", [build.unsqueeze(kv, [2]), build.ints("kv_repeat", [1, 1, num_heads, 1, 1])])
    return build.node("Reshape", [repeated, build.ints("kv_heads", [0, num_heads, -1, head_size])])


def _batch(traced: Traced) -> int | None:
    """The static batch of the traced ``[B, N, *, d]`` operand, or None."""
    if traced.split is not None and traced.perm[0] == 0:
        return static_dim(traced.split.hidden, 0) or static_dim(traced.source, 0)
    return static_dim(traced.source, traced.perm[0])


def _shared_heads(traced: Traced, num_heads: int) -> bool:
    """Whether the traced key or value has one head, which MatMul broadcasts over the query's ``num_heads``."""
    return num_heads > 1 and _dims(traced)[0] == 1


def _full_size(dim, along) -> bool:
    """True if a bias dim is known not to broadcast: a static size above 1, or the same named dim as ``along``.

    ``along`` is the query's (or key's) length. Another symbol may be 1 at run time and
    broadcast in the original, which the fused op's ``attention_bias`` does not. Symbols are onnx-ir's
    dims or ORT's symbolic inference's strings; None (unknown) proves nothing.
    """
    if isinstance(dim, int):
        return dim > 1
    name = dim if isinstance(dim, str) else getattr(dim, "value", None)
    return name is not None and name == (along if isinstance(along, str) else getattr(along, "value", None))


def _full_in_both(trailing: list[list], lengths: list) -> bool:
    """True if in both of the last two axes (keys, then queries) some mask term is full-size (``_full_size``)."""
    return all(any(_full_size(t[axis], lengths[axis]) for t in trailing) for axis in (0, 1))


class _SymbolicShapes:
    """ORT's symbolic shapes of the model (``shape_simplification._symbolic_shapes``), inferred once, at the first
    mask whose dims ONNX's inference leaves open; empty where the inference fails.

    ONNX's inference (``_inferred_shapes``) gives a ``Range``'s length a fresh symbol, so the legacy
    export's causal mask, built from ``Range(0, Shape(x)[1])``, reads ``[?, ?, ?, ?]``; ORT's follows
    the arithmetic to ``[batch, 1, sequence, sequence]``. simplify-shapes proves the same facts
    with it, so leaving the Expand in would only hand them to the next run.
    """

    def __init__(self, model: ir.Model) -> None:
        self._model, self._shapes = model, None

    def of(self, value: ir.Value) -> tuple | None:
        if self._shapes is None:
            merged: set[str] = set()
            shapes = _symbolic_shapes(self._model, merged)
            # A symbol the inference merged with another is equal by its assumption (a broadcast it
            # read as equal sizes), not by the shape arithmetic: it proves nothing here.
            self._shapes = (
                {name: tuple(None if d in merged else d for d in shape) for name, shape in shapes.items()}
                if isinstance(shapes, dict)
                else {}
            )
        return self._shapes.get(value.name) if value.name else None


_SYMBOLIC = "symbolic shapes"  # the rewrite cache's ``_SymbolicShapes``


def _full_size_symbolically(match: _Attention, query: ir.Value, key: ir.Value, key_axis: int, shapes) -> bool:
    """True if ORT's symbolic shapes prove that in S and in T some mask term is full-size: a static size above
    1, or the symbol of the query's (key's) length. A dim the inference merged with another (assumed
    equal) is unknown there (None), so it proves nothing."""
    query_shape, key_shape = shapes.of(query), shapes.of(key)
    if query_shape is None or key_shape is None or len(query_shape) < 2 or len(key_shape) <= key_axis:
        return False
    lengths = [key_shape[key_axis], query_shape[1]]  # trailing order: keys, then queries
    trailing = []
    for bias in match.logits.biases:
        shape = shapes.of(bias.value)
        if shape is None:
            return False
        trailing.append(list(reversed(shape))[:2] + [None] * (2 - min(len(shape), 2)))
    return _full_in_both(trailing, lengths)


def _dim_of(value: ir.Value, axis: int):
    shape = value.shape
    return shape[axis] if shape is not None and shape.rank() > axis else None


def _bias_term(build: NodeBuilder, bias: _Bias, dtype: np.dtype, cache: dict) -> tuple[ir.Value, list]:
    """The additive bias one term stands for, and its known trailing dims (built once per graph)."""
    key = ("term", id(bias.value), bias.fill, bias.scores_if_true, bias.factor)
    shape = list(bias.value.shape) if bias.value.shape is not None else [None] * (bias.rank() or 0)
    if key not in cache:
        value = bias.value
        if bias.fill is not None:
            written = bias.fill if not math.isfinite(bias.fill) else _WHERE_FILL
            zero, fill = build.constant("zero", np.array(0, dtype)), build.constant("fill", np.array(written, dtype))
            value = build.node("Where", [value, zero, fill] if bias.scores_if_true else [value, fill, zero])
        if bias.factor != 1.0:
            # softmax((s + b) * f) = softmax(s * f + b * f): the op scales only Q @ K^T.
            value = build.node("Mul", [value, build.constant("bias_scale", np.array(bias.factor, dtype))])
        cache[key] = value
    return cache[key], shape


def _summed_bias(build: NodeBuilder, match: _Attention, cache: dict) -> tuple[ir.Value, list[list]]:
    """The mask terms summed into one 4-D bias (built once per graph), and each term's last two dims, reversed.

    Where the SDPA guard zeroes fully masked query rows, the sum gets a finite floor:
    the fused op computes softmax over the bias there, NaN for -inf, which would reach
    every token through the next layer's keys. The floor keeps that row finite
    (uniform weights) instead.
    """
    dtype = np.dtype(np.float32)
    terms = [_bias_term(build, bias, dtype, cache) for bias in match.logits.biases]
    trailing = [list(reversed(s))[:2] + [None] * (2 - min(len(s), 2)) for _, s in terms]
    key = ("bias", tuple(id(value) for value, _ in terms), match.guarded)
    if key not in cache:
        total, shape = terms[0]
        for value, term_shape in terms[1:]:
            total = build.node("Add", [total, value])
            shape = term_shape if len(term_shape) > len(shape) else shape
        if match.guarded:
            floor = build.constant("mask_floor", np.array(np.finfo(np.float32).min, dtype))
            floored = build.node("Max", [total, floor])
            floored.shape, floored.type = total.shape, total.type  # Max with a scalar keeps the shape
            total = floored
        if len(shape) < 4:
            total = build.unsqueeze(total, list(range(4 - len(shape))))
        cache[key] = total
    return cache[key], trailing


def _attention_bias(
    build: NodeBuilder, match: _Attention, query: ir.Value, key: ir.Value, cache: dict, adapters: list[str]
) -> ir.Value | None:
    """The summed mask as the op's ``[B|1, N|1, S, T]`` ``attention_bias``, or None without one.

    An Expand it needs is named in ``adapters``.
    """
    if not match.logits.biases:
        return None
    total, trailing = _summed_bias(build, match, cache)
    # MultiHeadAttention broadcasts only the batch and head axes; the sum is full-size in an axis
    # where any term is.
    key_axis = 1 if rank(key) == 3 else 2
    lengths = [_dim_of(key, key_axis), _dim_of(query, 1)]  # trailing order: keys, then queries
    if _full_in_both(trailing, lengths):
        return total
    if _full_size_symbolically(match, query, key, key_axis, cache[_SYMBOLIC]):
        return total
    adapters.append(_EXPANDED)
    cache_key = ("expand", id(total), id(query), id(key))
    if cache_key not in cache:
        sizes = [build.ints("ones", [1, 1]), build.dim(query, 1), build.dim(key, key_axis)]
        cache[cache_key] = build.node("Expand", [total, build.node("Concat", sizes, axis=0)])
    return cache[cache_key]


def _merged_output(match: _Attention, known: list[int | None]) -> tuple[ir.Value, ir.Value, list[int] | None] | None:
    """Where the graph merges the attention output's heads: ``(merged, per_token, flat)``, or None.

    Follows single users through Transposes composing to ``(0, 2, 1, 3)`` (to ``per_token``,
    ``[B, S, N, dv]``) and Reshapes that keep the shape, to a Reshape merging the last two
    axes that keeps batch and sequence (0, -1, a shape read from the tensor or the static
    size; ``flat`` is None), or one flattening batch and sequence too into ``[B*S, N*dv]``
    (GPT-2's Conv1D ``Gemm`` reads 2-D; ``flat`` is that target, see ``_flattens_heads``).
    ``known`` gives the static ``[B, N, S, dv]`` sizes the output's shape may not carry.
    """
    value, order = match.output, IDENTITY
    for _ in range(8):
        user = _single_user(value)
        if user is None or not is_onnx_domain(user):
            return None
        if user.op_type == "Transpose" and user.attributes.get("perm") is not None:
            p = tuple(user.attributes["perm"].as_ints())
            if len(p) != 4:
                return None
            value, order, known = user.outputs[0], compose(order, p), [known[a] for a in p]
            continue
        if user.op_type != "Reshape" or user.inputs[0] is not value:
            return None
        if keeps_shape(user, tuple(known)):
            value = user.outputs[0]
            continue
        if order != _TO_HEADS:
            return None
        if _merges_heads(user, known):
            return user.outputs[0], value, None
        flat = _flattens_heads(user, known)
        return (user.outputs[0], value, flat) if flat is not None else None
    return None


def _per_token_output(match: _Attention) -> ir.Value | None:
    """The value that holds the attention output as ``[B, S, N, dv]``, where the graph's single users of it are
    Transposes composing to ``(0, 2, 1, 3)`` and no head merge follows (``_merged_output`` found none): Keras'
    context ``einsum('acbe,aecd->abcd')``, written ``MatMul`` then ``Transpose(0, 2, 1, 3)``. The op's output split
    into heads is that value: split back to ``[B, N, S, dv]`` instead, a second run of the pipeline would cancel
    the Transpose there and the graph's own."""
    value, order = match.output, IDENTITY
    for _ in range(8):
        user = _single_user(value)
        if user is None or not is_onnx_op(user, "Transpose") or user.attributes.get("perm") is None:
            break
        perm = tuple(user.attributes["perm"].as_ints())
        if len(perm) != 4:
            return None
        value, order = user.outputs[0], compose(order, perm)
    return value if order == _TO_HEADS else None


def _merges_heads(reshape: ir.Node, known: list[int | None]) -> bool:
    """True if ``reshape`` turns ``[B, S, N, dv]`` into ``[B, S, N*dv]``."""
    data = reshape.inputs[0]
    tokens = shape_tokens(reshape.inputs[1])
    if tokens is None or len(tokens) != 3 or tokens.count(-1) > 1:
        return False
    allowzero = reshape.attributes.get_int("allowzero", 0) != 0
    sizes = [static_dim(data, axis) or known[axis] for axis in range(4)]
    width = sizes[2] * sizes[3] if None not in sizes[2:] else None
    kept = [
        same_dim(t, data, axis, index=axis, allowzero=allowzero, known=known[axis]) for axis, t in enumerate(tokens[:2])
    ]
    if tokens[2] == -1:
        return all(kept)
    return tokens[2] == width and sum(kept) + tokens[:2].count(-1) == 2


def _flattens_heads(reshape: ir.Node, known: list[int | None]) -> list[int] | None:
    """The target if ``reshape`` turns ``[B, S, N, dv]`` into ``[B*S, N*dv]``, else None.

    The target is constant: ``[-1, N*dv]``, ``[B*S, N*dv]`` or ``[B*S, -1]``, with ``N*dv``
    (and ``B*S`` where it is written) the static sizes. The same target on the op's
    ``[B, S, N*dv]`` output gives the same tensor: the elements are in the same order.
    """
    tokens = shape_tokens(reshape.inputs[1])
    if tokens is None or len(tokens) != 2 or not all(isinstance(t, int) and (t > 0 or t == -1) for t in tokens):
        return None
    data = reshape.inputs[0]
    sizes = [static_dim(data, axis) or known[axis] for axis in range(4)]
    rows = sizes[0] * sizes[1] if None not in sizes[:2] else None
    width = sizes[2] * sizes[3] if None not in sizes[2:] else None
    if tokens[0] == -1:
        return tokens if width is not None and tokens[1] == width else None
    if rows is None or tokens[0] != rows:
        return None
    return tokens if tokens[1] == -1 or tokens[1] == width else None


def _output_dims(match: _Attention, query: ir.Value, num_heads: int) -> list[int | None]:
    """Static ``[B, N, S, dv]`` of the attention output, where the query and value tell."""
    batch, seq = static_dim(query, 0), static_dim(query, 1)
    if match.query.split is None:
        batch = batch or static_dim(match.query.source, match.query.perm[0])
        seq = seq or static_dim(match.query.source, match.query.perm[2])
    return [batch, num_heads, seq, _dims(match.value)[1]]


# Adapters a rewrite may need around the fused op, and why: reported with each rewrite that needs one.
_FLATTENED = "the query merged back into [B, S, N*d] (Transpose + Reshape): it is not a head split of a projection"
_KV_TRANSPOSED = "key/value transposed into [B, N, T, d]: they are per-head tensors in another layout"
_KV_REPEATED = "one key/value head repeated for each query head (Expand): multi-query attention, broadcast by MatMul"
_EXPANDED = "the mask expanded to [*, *, S, T] (Expand): it may broadcast over queries or keys"
_SPLIT_BACK = "the output split back into [B, N, S, d] (Reshape + Transpose): the graph does not merge the heads next"
_SPLIT_PER_TOKEN = (
    "the output split back into [B, S, N, d] (Reshape), the layout the graph transposes it to: the graph does not "
    "merge the heads next"
)


def _rewrite(model: ir.Model, match: _Attention, num_heads: int, index: int, cache: dict) -> list[str]:
    """Replace the attention by MultiHeadAttention; return the adapters it needed (see ``_FLATTENED`` ...)."""
    build = NodeBuilder(
        model.graph, match.probs_matmul, f"MultiHeadAttention_{index}", onnx_opset(model.opset_imports, 0)
    )
    cache.setdefault(_SYMBOLIC, _SymbolicShapes(model))
    adapters, original, replacement = _build(build, match, num_heads, cache)
    replace_value(original, replacement)
    return adapters


def _build(build: NodeBuilder, match: _Attention, num_heads: int, cache: dict) -> tuple[list[str], ir.Value, ir.Value]:
    """Add the MultiHeadAttention computing the attention's output; return the adapters it needed, the
    value it computes and the value computing it (not yet read by the graph)."""
    adapters = []
    if not match.query.canonical():
        adapters.append(_FLATTENED)
    query = _query_input(build, match.query)
    key, value = _key_value_inputs(build, match.key, match.value, adapters, num_heads)
    bias = _attention_bias(build, match, query, key, cache, adapters)
    inputs = [query, key, value] + ([None, None, bias] if bias is not None else [])
    fused = build.node("MultiHeadAttention", inputs, domain=MS_DOMAIN, num_heads=num_heads, scale=match.scale)
    found = _merged_output(match, _output_dims(match, query, num_heads))
    if found is not None:
        merged, per_token, flat = found
        if flat is None:
            fused.shape, fused.type = merged.shape, merged.type
            return adapters, merged, fused
        # The graph's own flatten to [B*S, N*dv], now of the op's [B, S, N*dv] output.
        fused.type = merged.type
        if per_token.shape is not None and per_token.shape.rank() == 4:
            dims = list(per_token.shape)
            inner = dims[2] * dims[3] if all(isinstance(d, int) for d in dims[2:]) else None
            fused.shape = ir.Shape([dims[0], dims[1], inner])
        flattened = build.node("Reshape", [fused, build.ints("flatten_heads", flat)])
        flattened.shape, flattened.type = merged.shape, merged.type
        return adapters, merged, flattened
    split = build.node("Reshape", [fused, build.ints("split_heads", [0, 0, num_heads, -1])])
    per_token = _per_token_output(match)
    if per_token is not None:  # no Transpose to [B, N, S, d] for the graph's own to undo
        if per_token.is_graph_output():
            split.shape, split.type = per_token.shape, per_token.type
        return [*adapters, _SPLIT_PER_TOKEN], per_token, split
    per_head = build.node("Transpose", [split], perm=list(_TO_HEADS))
    if match.output.is_graph_output():  # it takes the output's place and declaration
        per_head.shape, per_head.type = match.output.shape, match.output.type
    return [*adapters, _SPLIT_BACK], match.output, per_head


def _candidate(softmax: ir.Node, opset: int, *, capped: bool = False) -> tuple[_Attention, int] | str:
    """The attention around ``softmax`` and its head count, or why it is not fused.

    A soft-capped attention is refused unless ``capped`` (MultiHeadAttention has no cap;
    the staging for GroupQueryAttention asks for one).
    """
    match = _match(softmax, opset)
    if isinstance(match, str):
        return match
    heads = _heads(match)
    if heads is None:
        return "the head count cannot be derived"
    if not math.isfinite(match.scale) or match.scale <= 0:
        return "the scale is not a positive finite number"
    mismatch = _kv_mismatch(match, heads, shared_ok=not capped)
    if mismatch is not None:
        return mismatch
    if match.logits.softcap is not None and not capped:
        return _CAPPED.format(cap=match.logits.softcap)
    return match, heads


def _shapes_may_help(candidate: tuple[_Attention, int] | str) -> bool:
    """Whether shapes inferred for the graph may let ``candidate`` match, or match in its plainest form (Q, K and V
    read as the 3-D tensors their head splits split)."""
    if isinstance(candidate, str):
        return True
    match = candidate[0]
    return not (match.query.canonical() and match.key.canonical() and match.value.canonical())


@dataclass
class StagedAttention:
    """A soft-capped attention built as MultiHeadAttention that the graph does not read yet.

    ``node`` computes ``c * tanh(scale * Q @ K^T / c)`` without the cap: it stands for the
    attention only together with ``softcap``, for a rewrite into an op that applies it
    (``connect`` then points the graph at it). ``nodes`` and ``initializers`` are what the
    staging added; ``take_back_staged`` removes those left unread.
    """

    node: ir.Node
    softcap: float
    original: ir.Value
    replacement: ir.Value
    nodes: list[ir.Node]
    initializers: list[ir.Value]

    def connect(self) -> None:
        """Point the readers of the attention's output at the staged value."""
        replace_value(self.original, self.replacement)


def _has_tanh(softmax: ir.Node) -> bool:
    """True if a Tanh is among the Softmax's producers back to the scores' MatMul (where a soft cap sits).

    Only a hint of which Softmaxes to stage: ``_candidate`` proves the cap. Masks, views of batched
    heads and NaN guards between the cap and the Softmax are a few nodes each, hence the depth.
    """
    frontier, seen = [softmax.inputs[0]], set()
    for _ in range(12):
        nodes = [v.producer() for v in frontier if v is not None and v.producer() is not None]
        nodes = [n for n in nodes if id(n) not in seen and not seen.add(id(n))]
        if any(is_onnx_op(n, "Tanh") for n in nodes):
            return True
        frontier = [v for n in nodes if not is_onnx_op(n, "MatMul") for v in n.inputs]
    return False


def stage_soft_capped(model: ir.Model) -> list[StagedAttention]:
    """Build a MultiHeadAttention (unread, ``StagedAttention``) for each soft-capped attention fuse-attention
    would fuse but for its cap; each with its own cap.

    The match is fuse-attention's, with the same refusals; a cap that is not provably one
    ``c * tanh(s / c)`` ahead of every mask is not staged. Shapes the exporter left off are
    inferred for the match and taken back as in ``AttentionFusion``.
    """
    opset = onnx_opset(model.opset_imports, 0)
    softmaxes = [n for n in model.graph if is_onnx_op(n, "Softmax") and _has_tanh(n)]
    if not softmaxes:
        return []
    if lacks_shapes(model):
        with inferred_shapes(model):
            return _stage(model, softmaxes, opset)
    return _stage(model, softmaxes, opset)


def _stage(model: ir.Model, softmaxes: list[ir.Node], opset: int) -> list[StagedAttention]:
    staged, cache = [], {_SYMBOLIC: _SymbolicShapes(model)}
    for softmax in softmaxes:
        candidate = _candidate(softmax, opset, capped=True)
        if isinstance(candidate, str) or candidate[0].logits.softcap is None:
            continue
        match, heads = candidate
        build = NodeBuilder(model.graph, match.probs_matmul, f"SoftCappedAttention_{len(staged)}", opset)
        _, original, replacement = _build(build, match, heads, cache)
        fused = next(n for n in build.nodes if n.op_type == "MultiHeadAttention")
        staged.append(
            StagedAttention(fused, match.logits.softcap, original, replacement, build.nodes, build.initializers)
        )
    return staged


def take_back_staged(model: ir.Model, staged: list[StagedAttention]) -> None:
    """Remove what the staging added that nothing reads (the stagings not connected, and their shared mask)."""
    nodes = [node for s in staged for node in s.nodes]
    removed = True
    while removed:
        removed = False
        for node in reversed(nodes):
            if node.graph is not None and not any(o.uses() or o.is_graph_output() for o in node.outputs):
                model.graph.remove(node, safe=True)
                removed = True
    for value in {id(v): v for s in staged for v in s.initializers}.values():
        if not value.uses() and value.name in model.graph.initializers:
            del model.graph.initializers[value.name]


_ONNX_ATTENTION = "ONNX Attention (opset 23)"


class AttentionFusion(FusionPass):
    """Rewrite scaled dot-product attention subgraphs into ``com.microsoft.MultiHeadAttention``.

    See the module docstring for what is recognised and when it refuses; each Softmax
    is counted as fused or refused with its reason. ``fused_count`` holds the
    rewrites of the last run. Packing the projections into ``Attention`` is the
    ``pack-qkv`` pass (``packed_attention.PackedAttentionFusion``).
    """

    fused_ops = ((MS_DOMAIN, "MultiHeadAttention"),)
    already_fused_ops = ((MS_DOMAIN, "GroupQueryAttention"), (MS_DOMAIN, "Attention"))
    starts_from = ("Softmax",)
    looks_for = "attention"

    def fuse(self, model: ir.Model) -> int:
        opset = onnx_opset(model.opset_imports, 0)
        attentions = onnx_attention_nodes(model.graph)
        # What an ONNX Attention is written out as reads the types and shapes of Q, K and V: where the file records
        # none (a float32 node was left as "not float32 or float16"), they are inferred as for a candidate below.
        if attentions and lacks_shapes(model):
            with inferred_shapes(model):
                return self._written_out_and_fused(model, attentions, opset)
        return self._written_out_and_fused(model, attentions, opset)

    def _written_out_and_fused(self, model: ir.Model, attentions: list[ir.Node], opset: int) -> int:
        # torch's dynamo exporter writes sdpa as ONNX's own Attention from opset 23: written out, it is matched as
        # any spelled-out attention, and put back where the match refuses it (``_onnx_attention``).
        spelled: dict[int, SpelledAttention] = {}
        masks = MaskBiases()
        for index, node in enumerate(attentions):
            result = spell_out(functools.partial(NodeBuilder, model.graph, node, opset=opset), node, index, masks)
            if isinstance(result, str):
                self.refuse(_ONNX_ATTENTION, f"{result}; ONNX Runtime runs it as written")
            else:
                spelled[id(result.softmax)] = result
        softmaxes = [n for n in model.graph if is_onnx_op(n, "Softmax")]
        # Shapes the exporter did not record are inferred only where a candidate needs them,
        # and taken back afterwards (``_inferred_shapes``): one refused, or one that would be fused with its
        # key/value as per-head tensors (dynamo's SDPA relayout of K through 3-D is followed as a head split
        # only where the ranks are known; a file saved without its value_info fused every attention so,
        # and pack-qkv and fuse-group-query-attention then left them all unfused).
        if any(_shapes_may_help(_candidate(s, opset)) for s in softmaxes) and lacks_shapes(model):
            with inferred_shapes(model):
                count = self._fuse(model, softmaxes, opset, spelled)
        else:
            count = self._fuse(model, softmaxes, opset, spelled)
        masks.remove_unused(model.graph)
        return count

    def _fuse(self, model: ir.Model, softmaxes: list[ir.Node], opset: int, spelled: dict[int, SpelledAttention]) -> int:
        count = 0
        cache: dict = {}
        adapters: Counter[str] = Counter()
        for softmax in softmaxes:
            candidate = _candidate(softmax, opset)
            written_out = spelled.get(id(softmax))
            if isinstance(candidate, str):
                if written_out is not None:
                    take_back(model.graph, written_out)
                    self.refuse(_ONNX_ATTENTION, f"written out, {candidate}; ONNX Runtime runs it as written")
                else:
                    self.refuse("Softmax", candidate)
                continue
            adapters.update(_rewrite(model, *candidate, count, cache))
            self.done(_ONNX_ATTENTION if written_out is not None else "Softmax")
            count += 1
        # Not refusals, but why a rewrite is not the plainest form: each adapter costs a kernel.
        for adapter, times in adapters.most_common():
            self.decline(f"{times} of {count} fused with {adapter}")
        if count:
            model.graph.sort()  # a mask term shared by blocks is built before the first block's anchor
        return count

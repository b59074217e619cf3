"""Attention fusion: scaled dot-product attention subgraphs into ``Attention`` or ``MultiHeadAttention``.

Anchored on each ``Softmax`` over the last axis, it recognises

    probs  = Softmax(Q @ K^T * scale [+ bias])      (scale on Q, K or the scores)
    probs  = Where(IsNaN(probs), 0, probs)          (optional: the SDPA guard)
    output = probs @ V

where Q, K and V are per-head tensors ``[B, N, S, d]``, and rewrites it into one
``com.microsoft.Attention`` (packed ``[D, q+k+v]`` weights, when Q, K and V are
constant projections of one input, GPT-2's ``Conv1D`` + ``Split`` included) or
``com.microsoft.MultiHeadAttention``, with the additive mask as ``attention_bias``.
This covers BERT/DistilBERT/ViT self-attention, GPT-2's causal attention (the causal
and padding masks are already folded into the bias by the exporter) and Llama-style
attention after rotary embedding with repeated KV heads, from both PyTorch
exporters, with or without the mask subgraph.

Where Q/K/V come straight from a head split (``Reshape(x, [0, 0, N, d])`` +
``Transpose``), the op takes the 3-D projections ``[B, S, N*d]``; otherwise it takes
``[B, N, S, d]`` key/value and the query is flattened back to 3-D. When the output
goes through the usual ``Transpose`` + ``Reshape`` back to ``[B, S, N*d]``, that
chain is replaced too.

We match structurally instead of with onnxscript patterns because the exporters
spell the key transpose and the scaling in many ways (see ``_layout``); onnxscript's
own SDPA/MHA rules fire on none of our fixtures after cleanup (docs/benchmarks.md).

Refuses (leaves the subgraph) when: Softmax is not over the last axis of a 4-D
tensor; the scale factors are not constant; the mask bias is not 4-D or not float;
the head count cannot be derived; or the scores or probabilities have other users.
Semantics differ in one degenerate case: a query row whose keys are *all* masked
gets zeros from the SDPA guard but uniform weights (finite bias) or NaN (``-inf``
bias) from the fused op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_domain
from optimizer.errors import RuntimeRefusedError
from optimizer.runtime import evaluate
from passes._utils import add_initializer, constant_array, replace_value
from passes.fusion._base import FusionPass
from passes.fusion._checks import is_float
from passes.fusion._layout import (
    HeadSplit,
    head_split,
    keeps_dim,
    last_dim,
    perm,
    producer,
    shape_tokens,
    strip_scale,
    transposed_key,
)
from passes.fusion._probe import PADDED_MASK, is_mask, token_feeds, token_inputs_of


@dataclass
class _Attention:
    softmax: ir.Node
    query: ir.Value  # per-head [B, N, S, d] (after removing the scale)
    query_split: HeadSplit | None
    key: ir.Value  # 3-D projection or per-head [B, N, T, d], per key_layout
    key_layout: str
    key_split: HeadSplit | None
    value: ir.Value  # per-head [B, N, T, dv]
    value_split: HeadSplit | None
    scale: float
    bias: ir.Value | None
    probs_matmul: ir.Node


def _single_user(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0]


def _scores_and_bias(softmax: ir.Node) -> tuple[ir.Node, float, ir.Value | None] | None:
    """The ``Q @ K^T`` MatMul feeding the Softmax, the scale applied after it, and the additive bias."""
    logits, scale = strip_scale(softmax.inputs[0])
    bias = None
    add = producer(logits, "Add")
    if add is not None:
        if scale != 1.0:
            return None  # softmax((QK^T + bias) * s) scales the bias too; the fused ops do not
        for i in (0, 1):
            scores, post_scale = strip_scale(add.inputs[i])
            if producer(scores, "MatMul") is not None:
                logits, bias, scale = scores, add.inputs[1 - i], scale * post_scale
                break
        else:
            return None
    matmul = producer(logits, "MatMul")
    if matmul is None:
        return None
    return matmul, scale, bias


def _probs_consumer(softmax: ir.Node) -> ir.Node | None:
    """The MatMul reading the probabilities, through the optional ``Where(IsNaN(p), 0, p)`` guard."""
    probs = softmax.outputs[0]
    uses = [node for node, _ in probs.uses()]
    if probs.is_graph_output():
        return None
    if len(uses) == 1 and uses[0].op_type == "MatMul" and uses[0].inputs[0] is probs:
        return uses[0]
    isnan = next((n for n in uses if n.op_type == "IsNaN"), None)
    where = next((n for n in uses if n.op_type == "Where"), None)
    if len(uses) != 2 or isnan is None or where is None:
        return None
    if where.inputs[0] is not isnan.outputs[0] or where.inputs[2] is not probs:
        return None
    zero = ir.convenience.get_const_tensor(where.inputs[1])
    if zero is None or zero.size != 1 or float(zero.numpy().reshape(())) != 0.0:
        return None
    user = _single_user(where.outputs[0])
    if user is None or user.op_type != "MatMul" or user.inputs[0] is not where.outputs[0]:
        return None
    return user


def _match(softmax: ir.Node, opset: int) -> _Attention | str:
    """Recognise the attention around ``softmax``, or say why not."""
    axis = softmax.attributes.get_int("axis", -1 if opset >= 13 else 1)
    scores_value = softmax.inputs[0]
    if scores_value.shape is None or scores_value.shape.rank() != 4 or axis not in (-1, 3):
        return "Softmax is not over the last axis of a 4-D tensor"
    if not is_float(scores_value):
        return "the scores are not float32 (the fused ops' CPU kernels)"
    found = _scores_and_bias(softmax)
    if found is None:
        return "Softmax input is not Q @ K^T [* scale] [+ bias]"
    scores, post_scale, bias = found
    if _single_user(scores.outputs[0]) is None:
        return "the scores have other users"
    probs_matmul = _probs_consumer(softmax)
    if probs_matmul is None:
        return "the probabilities do not feed one MatMul with V"
    if bias is not None:
        if opset < 15:
            return "a mask needs opset 15 (Shape with start/end) to be broadcast"
        if bias.shape is None or bias.shape.rank() != 4:
            return "the mask bias is not known to be 4-D"
        if bias.dtype != scores_value.dtype:
            return "the mask bias has another dtype"
    query, q_scale = strip_scale(scores.inputs[0])
    key_t, k_scale = strip_scale(scores.inputs[1])
    key = transposed_key(key_t)
    if key is None:
        return "the key is not a transposed per-head tensor"
    layout, key_value, key_split = key
    value = probs_matmul.inputs[1]
    return _Attention(
        softmax=softmax,
        query=query,
        query_split=head_split(query, (0, 2, 1, 3)),
        key=key_value,
        key_layout=layout,
        key_split=key_split,
        value=value,
        value_split=head_split(value, (0, 2, 1, 3)),
        scale=post_scale * q_scale * k_scale,
        bias=bias,
        probs_matmul=probs_matmul,
    )


def _heads(match: _Attention) -> tuple[int, int] | None:
    """``(num_heads, head_size)`` of the query, from reshape targets, shapes or projection widths."""
    for split in (match.query_split, _split_behind_elementwise(match.query)):
        heads = _split_heads(split) if split is not None else None
        if heads is not None:
            return heads, split.head_size
    shape = match.query.shape
    if shape is not None and shape.rank() == 4 and isinstance(shape[1], int) and isinstance(shape[3], int):
        return shape[1], shape[3]
    return None


def _split_heads(split: HeadSplit) -> int | None:
    if split.heads is not None:
        return split.heads
    hidden = last_dim(split.hidden)
    return hidden // split.head_size if hidden is not None and hidden % split.head_size == 0 else None


def _per_head_dims(value: ir.Value) -> tuple[int | None, int | None]:
    """``(heads, head_size)`` of a ``[B, N, T, d]`` tensor, from its shape or a constant Reshape target."""
    shape = value.shape
    heads = shape[1] if shape is not None and shape.rank() == 4 and isinstance(shape[1], int) else None
    size = shape[3] if shape is not None and shape.rank() == 4 and isinstance(shape[3], int) else None
    reshape = producer(value, "Reshape")
    target = constant_array(reshape.inputs[1]) if reshape is not None else None
    if target is not None and target.shape == (4,):
        heads = heads or (int(target[1]) if target[1] > 0 else None)
        size = size or (int(target[3]) if target[3] > 0 else None)
    return heads, size


def _kv_mismatch(match: _Attention, num_heads: int, head_size: int) -> str | None:
    """Why K/V do not have the query's head count (and K its head size), or None.

    The fused ops need as many K/V heads as query heads; MatMul broadcasting in the
    original (multi-query attention) does not carry over.
    """
    for name, split, per_head in (
        ("key", match.key_split, match.key),
        ("value", match.value_split, match.value),
    ):
        if split is not None:
            heads, size = _split_heads(split), split.head_size
        else:
            heads, size = _per_head_dims(per_head)
        if heads is not None and heads != num_heads:
            return f"the {name} has {heads} heads, the query {num_heads}"
        if name == "key" and size is not None and size != head_size:
            return f"key head size {size} differs from the query's {head_size}"
    return None


def _split_behind_elementwise(value: ir.Value, depth: int = 0) -> HeadSplit | None:
    """A head split reached through element-wise ops (rotary embedding: ``q * cos + rotate(q) * sin``)."""
    split = head_split(value, (0, 2, 1, 3))
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


class _Builder:
    """Adds the fused node and its adapters to the graph, just before ``anchor``."""

    def __init__(self, graph: ir.Graph, anchor: ir.Node, name: str) -> None:
        self.graph, self.anchor, self.name, self.count = graph, anchor, name, 0

    def node(self, op_type: str, inputs, domain: str = "", num_outputs: int = 1, **attributes) -> ir.Node:
        self.count += 1
        node = ir.node(op_type, inputs, attributes, domain=domain, num_outputs=num_outputs)
        node.name = f"{self.name}/{op_type}_{self.count}"
        for i, output in enumerate(node.outputs):
            output.name = f"{node.name}_output_{i}"
        self.graph.insert_before(self.anchor, node)
        return node

    def constant(self, name: str, values: list[int]) -> ir.Value:
        return add_initializer(self.graph, f"{self.name}/{name}", np.array(values, dtype=np.int64))

    def to_hidden(self, per_head: ir.Value) -> ir.Value:
        """``[B, N, S, d]`` into ``[B, S, N*d]``."""
        transposed = self.node("Transpose", [per_head], perm=[0, 2, 1, 3]).outputs[0]
        return self.node("Reshape", [transposed, self.constant("merge_heads", [0, 0, -1])]).outputs[0]

    def to_heads(self, split_output: ir.Value) -> ir.Value:
        """``[B, S, N, d]`` (a head split's Reshape output) into ``[B, N, S, d]``."""
        return self.node("Transpose", [split_output], perm=[0, 2, 1, 3]).outputs[0]


def _merged_output(
    probs_matmul: ir.Node, query_hidden: ir.Value | None, value_head_size: int | None
) -> ir.Value | None:
    """The ``[B, S, N*d]`` value the exporter builds from the attention output, if it does.

    ``query_hidden`` (the 3-D query, when known) tells a static sequence length in a
    Reshape target apart from a different one; ``value_head_size`` must match the
    head size such a Reshape names.
    """
    value = probs_matmul.outputs[0]
    user = _single_user(value)
    seq_ok = lambda t: t == 0 or (query_hidden is not None and keeps_dim(t, query_hidden, 1))  # noqa: E731
    # The legacy exporter inserts a Reshape that keeps the shape ([0, -1, S, d]) before the transpose.
    if user is not None and user.op_type == "Reshape":
        target = ir.convenience.get_const_tensor(user.inputs[1])
        if target is None or target.size != 4:
            return None
        batch, heads, seq, head_size = (int(t) for t in target.numpy())
        if (batch, heads) != (0, -1) or not seq_ok(seq) or head_size <= 0 or head_size != value_head_size:
            return None
        value, user = user.outputs[0], _single_user(user.outputs[0])
    if user is None or user.op_type != "Transpose" or perm(user) != (0, 2, 1, 3):
        return None
    reshape = _single_user(user.outputs[0])
    if reshape is None or reshape.op_type != "Reshape":
        return None
    target = ir.convenience.get_const_tensor(reshape.inputs[1])
    if target is None or target.size != 3 or int(target.numpy()[0]) != 0 or not seq_ok(int(target.numpy()[1])):
        return None
    return reshape.outputs[0]


def _int32(build: _Builder, mask: ir.Value, cache: dict) -> ir.Value:
    """The 2-D mask input as int32 (the Attention op's mask type), cast once per graph."""
    if mask.dtype == ir.DataType.INT32:
        return mask
    key = ("int32", id(mask))
    if key not in cache:
        cache[key] = build.node("Cast", [mask], to=ir.DataType.INT32).outputs[0]
    return cache[key]


def _full_size(dim) -> bool:
    """True if a bias dim is known not to broadcast: a static size above 1 or a named symbolic dim."""
    if isinstance(dim, int):
        return dim > 1
    return dim is not None and getattr(dim, "value", None) is not None


def _expanded_bias(build: _Builder, bias: ir.Value, query: ir.Value, key: ir.Value, cache: dict) -> ir.Value:
    """``bias`` broadcast to ``[*, *, S, T]``: MultiHeadAttention broadcasts only the batch and head axes.

    Skipped when the bias's last two dims are known not to broadcast; ``cache`` keeps
    one Expand per (bias, query, key).
    """
    if all(_full_size(d) for d in list(bias.shape)[2:]):
        return bias
    key_axis = 1 if key.shape is not None and key.shape.rank() == 3 else 2
    cache_key = (id(bias), id(query), id(key))
    if cache_key not in cache:
        seq = build.node("Shape", [query], start=1, end=2).outputs[0]
        total = build.node("Shape", [key], start=key_axis, end=key_axis + 1).outputs[0]
        shape = build.node("Concat", [build.constant("ones", [1, 1]), seq, total], axis=0).outputs[0]
        cache[cache_key] = build.node("Expand", [bias, shape]).outputs[0]
    return cache[cache_key]


def _projection(value: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray | None] | None:
    """``(x, W, b)`` when ``value = x @ W [+ b]`` with constant 2-D ``W`` (and 1-D ``b``), used only here."""
    if len(list(value.uses())) != 1 or value.is_graph_output():
        return None
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
        if bias.ndim != 1 or len(list(product.uses())) != 1:
            return None
    matmul = producer(product, "MatMul")
    weight = constant_array(matmul.inputs[1]) if matmul is not None else None
    if weight is None or weight.ndim != 2 or (bias is not None and bias.shape[0] != weight.shape[1]):
        return None
    return matmul.inputs[0], weight, bias


def _packed_qkv(match: _Attention) -> tuple[ir.Value, np.ndarray, np.ndarray, list[int]] | None:
    """Input, packed weights ``[D, q+k+v]``, packed bias and widths, when Q/K/V project one input."""
    if match.query_split is None or match.key_layout != "split" or match.value_split is None:
        return None
    hidden = [match.query_split.hidden, match.key, match.value_split.hidden]
    parts = [_projection(v) for v in hidden]
    if any(part is None for part in parts) or len({id(part[0]) for part in parts}) != 1:
        return _packed_by_split(hidden)
    weights = [part[1] for part in parts]
    if len({w.shape[0] for w in weights}) != 1 or weights[0].shape[1] != weights[1].shape[1]:
        return None
    if len({w.dtype for w in weights}) != 1:
        return None
    biases = [part[2] if part[2] is not None else np.zeros(w.shape[1], w.dtype) for part, w in zip(parts, weights)]
    widths = [w.shape[1] for w in weights]
    return parts[0][0], np.concatenate(weights, axis=1), np.concatenate(biases).astype(weights[0].dtype), widths


def _packed_by_split(hidden: list[ir.Value]) -> tuple[ir.Value, np.ndarray, np.ndarray, list[int]] | None:
    """GPT-2's Conv1D: Q, K, V are the three outputs of ``Split(Reshape(Gemm(Reshape(x, [-1, D]), W, b)))``."""
    split = producer(hidden[0], "Split")
    if split is None or list(split.outputs) != hidden or split.attributes.get_int("axis", 0) not in (-1, 2):
        return None
    if any(len(list(v.uses())) != 1 or v.is_graph_output() for v in hidden):
        return None
    outer = producer(split.inputs[0], "Reshape")
    gemm = producer(outer.inputs[0], "Gemm") if outer is not None else None
    inner = producer(gemm.inputs[0], "Reshape") if gemm is not None else None
    if inner is None or len(gemm.inputs) < 3:
        return None
    if any(len(list(v.uses())) != 1 for v in (split.inputs[0], outer.inputs[0])):
        return None
    attrs = gemm.attributes
    if attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_float("beta", 1.0) != 1.0 or attrs.get_int("transA", 0):
        return None
    weight, bias = constant_array(gemm.inputs[1]), constant_array(gemm.inputs[2])
    if (
        weight is None
        or bias is None
        or weight.ndim != 2
        or bias.shape != (weight.shape[1 - attrs.get_int("transB", 0)],)
    ):
        return None
    if attrs.get_int("transB", 0):
        weight = weight.T
    x = inner.inputs[0]
    flatten = constant_array(inner.inputs[1])
    if x.shape is None or x.shape.rank() != 3 or flatten is None or list(flatten) != [-1, weight.shape[0]]:
        return None
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
        return None
    widths = [last_dim(v) for v in hidden]
    if None in widths or sum(widths) != weight.shape[1] or widths[0] != widths[1]:
        return None
    return x, np.ascontiguousarray(weight), bias, widths


def _mask_kind(model: ir.Model, bias: ir.Value) -> tuple[ir.Value, bool] | None:
    """``(mask_input, causal)`` when the additive ``bias`` is exactly what a 2-D padding mask input implies.

    The bias subgraph is evaluated on ONNX Runtime for a left- and a right-padded row;
    it must be 0 where ``mask[b, t] == 1`` (and ``t <= s`` if causal) and at most -1e4
    elsewhere, whatever exporter code built it.
    """
    mask_types = (ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL, ir.DataType.FLOAT)
    inputs = token_inputs_of([bias], mask_types)
    masks = [v for v in inputs or () if is_mask(v)]
    if len(masks) != 1:
        return None
    batch, seq = PADDED_MASK.shape
    try:
        (value,) = evaluate(model, [bias], token_feeds(inputs, PADDED_MASK))
    except RuntimeRefusedError:
        return None
    wanted = (batch, value.shape[1] if value.ndim == 4 else 0, seq, seq)
    if value.ndim != 4 or any(d not in (1, want) for d, want in zip(value.shape, wanted)):
        return None
    value = np.broadcast_to(value, (batch, value.shape[1], seq, seq))
    padding = np.broadcast_to(PADDED_MASK[:, None, None, :] == 1, value.shape)
    causal = padding & np.tril(np.ones((seq, seq), dtype=bool))
    for allowed, is_causal in ((padding, False), (causal, True)):
        if np.all(value[allowed] == 0) and np.all(value[~allowed] <= -1e4):
            return masks[0], is_causal
    return None


def _rewrite(model: ir.Model, match: _Attention, num_heads: int, index: int, cache: dict, pack_qkv: bool) -> None:
    graph = model.graph
    packed = _packed_qkv(match) if pack_qkv else None
    op_type = "Attention" if packed is not None else "MultiHeadAttention"
    build = _Builder(graph, match.probs_matmul, f"{op_type}_{index}")
    attributes = {"num_heads": num_heads, "scale": match.scale}
    if packed is not None:
        x, weights, biases, widths = packed
        if widths[2] != widths[0]:
            attributes["qkv_hidden_sizes"] = widths
        bias, mask_index = None, None
        if match.bias is not None:
            key = ("mask", id(match.bias))
            if key not in cache:
                cache[key] = _mask_kind(model, match.bias)
            if cache[key] is not None:
                # A plain padding (or causal + padding) mask: the op reads the 2-D mask and the
                # exporter's [B, 1, S, T] bias subgraph goes away.
                mask, causal = cache[key]
                mask_index = _int32(build, mask, cache)
                if causal:
                    attributes["unidirectional"] = 1
            else:
                bias = _expanded_bias(build, match.bias, x, x, cache)
        inputs = [
            x,
            add_initializer(graph, f"{build.name}/qkv_weight", weights),
            add_initializer(graph, f"{build.name}/qkv_bias", biases),
            mask_index,
            None,
            bias,
        ]
    else:
        three_d = match.key_layout == "split" and match.value_split is not None
        if three_d:
            key, value = match.key, match.value_split.hidden
        else:
            key = build.to_heads(match.key_split.split) if match.key_layout == "split" else match.key
            value = match.value
        query = match.query_split.hidden if match.query_split is not None else build.to_hidden(match.query)
        bias = _expanded_bias(build, match.bias, query, key, cache) if match.bias is not None else None
        inputs = [query, key, value, None, None, bias]
    while inputs[-1] is None:
        inputs.pop()
    fused = build.node(op_type, inputs, domain=MS_DOMAIN, **attributes)
    value_head_size = match.value_split.head_size if match.value_split else _per_head_dims(match.value)[1]
    merged = _merged_output(
        match.probs_matmul, match.query_split.hidden if match.query_split else None, value_head_size
    )
    if merged is not None:
        fused.outputs[0].shape, fused.outputs[0].type = merged.shape, merged.type
        replace_value(merged, fused.outputs[0])
        return
    shape = build.constant("split_heads", [0, 0, num_heads, -1])
    split = build.node("Reshape", [fused.outputs[0], shape]).outputs[0]
    per_head = build.node("Transpose", [split], perm=[0, 2, 1, 3]).outputs[0]
    replace_value(match.probs_matmul.outputs[0], per_head)


class AttentionFusion(FusionPass):
    """Rewrite scaled dot-product attention subgraphs into ``com.microsoft.Attention`` / ``MultiHeadAttention``.

    See the module docstring for the matched forms and refusals; each refusal is
    logged at INFO with its reason. ``pack_qkv=False`` always emits MultiHeadAttention.
    ``fused_count`` holds the rewrites of the last run.
    """

    fused_ops = ((MS_DOMAIN, "MultiHeadAttention"), (MS_DOMAIN, "Attention"))

    def __init__(self, target: str = "cpu", pack_qkv: bool = True) -> None:
        super().__init__(target)
        self.pack_qkv = pack_qkv

    def fuse(self, model: ir.Model) -> int:
        count = 0
        opset = model.opset_imports.get("", 0)
        graph = model.graph
        expanded_biases: dict = {}
        for softmax in [n for n in graph if n.op_type == "Softmax" and is_onnx_domain(n)]:
            match = _match(softmax, opset)
            if isinstance(match, str):
                self.refuse("Softmax", match)
                continue
            heads = _heads(match)
            if heads is None or not math.isfinite(match.scale) or match.scale <= 0:
                self.refuse("Softmax", "head count or scale unknown")
                continue
            mismatch = _kv_mismatch(match, *heads)
            if mismatch is not None:
                self.refuse("Softmax", mismatch)
                continue
            _rewrite(model, match, heads[0], count, expanded_biases, self.pack_qkv)
            self.done("Softmax")
            count += 1
        return count

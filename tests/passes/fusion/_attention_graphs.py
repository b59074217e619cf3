"""Attention graphs for the attention fusion tests.

``attention_model`` builds a small self-attention block the way the legacy exporter
writes it, with options for the near-misses the fusions must refuse. ``variant``
rewrites every attention block of any graph (hand-built or exported) into another
spelling of the same computation, for metamorphic tests: the key transposes merged
or split, the scale moved, the mask written as a Where or a GatherND/And chain,
``FusedMatMul`` for Q @ K^T. The helpers here find the blocks with their own simple
walk, not with the pass's code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common  # noqa: F401  (ir.passes.common)
from onnx import TensorProto, helper, numpy_helper

HIDDEN, HEADS, HEAD_SIZE = 8, 2, 4
BATCH, SEQ = 2, 5
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int64)  # the second sequence padded after 3 tokens
# Local attention (GPT-Neo's local layers): a query sees the WINDOW keys up to itself,
# from a band table of TABLE_LENGTH positions; past TABLE_LENGTH tokens the model fails.
WINDOW, TABLE_LENGTH = 200, 512
_TABLE_MASKS = ("causal_table", "window_table")


def attention_model(
    *,
    softmax_axis: int = -1,
    key_form: str = "split",
    mask: str | None = "bias",
    scale_after_mask: bool = False,
    kv_heads: int = HEADS,
    value_head_size: int = HEAD_SIZE,
    projection: str = "matmul",
    dtype: type = np.float32,
) -> ir.Model:
    """BERT-style self-attention as the legacy exporter writes it (scale on the scores).

    ``key_form``: "split" transposes the key with perm (0, 2, 3, 1) straight from the
    head split; "bnsh" splits it like Q/V and then swaps the last two axes.
    ``mask``: None; "bias", a float ``mask_bias`` input ``[B, 1, 1, S]``; "input", the
    classic ``(1 - mask) * -10000`` from an int64 ``attention_mask``; "causal", a
    causal + padding mask from ``attention_mask`` as exporters build it; "causal_table",
    GPT-2's: a ``[1, 1, T, T]`` lower-triangular table (``TABLE_LENGTH``) sliced to
    ``[S, S]``, and padding; "window_table", GPT-Neo's local layers: a band table
    (keys ``s - WINDOW < t <= s``, ``TABLE_LENGTH`` positions) sliced the same way;
    "window_range", the same window built from ``Range`` comparisons (no table). ``projection``:
    "matmul" (MatMul + bias Add per projection), "cross" (key and value project a second
    input ``y``), or "conv1d" (GPT-2: one Gemm over the flattened input, then a Split).
    """
    rng = np.random.default_rng(0)
    elem = _elem(dtype)
    weights: dict[str, np.ndarray] = {}
    nodes = []
    widths = {"q": HIDDEN, "k": kv_heads * HEAD_SIZE, "v": kv_heads * value_head_size}
    head_sizes = {"q": HEAD_SIZE, "k": HEAD_SIZE, "v": value_head_size}
    inputs = [helper.make_tensor_value_info("x", elem, ["B", "S", HIDDEN])]
    if projection == "conv1d":
        weights["w_qkv"] = (rng.standard_normal((HIDDEN, sum(widths.values()))) * 0.5).astype(dtype)
        weights["b_qkv"] = (rng.standard_normal(sum(widths.values())) * 0.1).astype(dtype)
        weights["flat"] = np.array([-1, HIDDEN], np.int64)
        weights["sizes"] = np.array(list(widths.values()), np.int64)
        weights["lead_start"], weights["lead_end"] = np.array([0], np.int64), np.array([2], np.int64)
        weights["qkv_width"] = np.array([sum(widths.values())], np.int64)
        nodes += [
            helper.make_node("Reshape", ["x", "flat"], ["x_flat"]),
            helper.make_node("Gemm", ["x_flat", "w_qkv", "b_qkv"], ["qkv_flat"]),
            helper.make_node("Shape", ["x"], ["x_shape"]),
            helper.make_node("Slice", ["x_shape", "lead_start", "lead_end"], ["x_lead"]),
            helper.make_node("Concat", ["x_lead", "qkv_width"], ["qkv_shape"], axis=0),
            helper.make_node("Reshape", ["qkv_flat", "qkv_shape"], ["qkv"]),
            helper.make_node("Split", ["qkv", "sizes"], ["q_proj", "k_proj", "v_proj"], axis=2),
        ]
    else:
        if projection == "cross":
            inputs.append(helper.make_tensor_value_info("y", elem, ["B", "T", HIDDEN]))
        for name, width in widths.items():
            source = "y" if projection == "cross" and name != "q" else "x"
            weights[f"w{name}"] = (rng.standard_normal((HIDDEN, width)) * 0.5).astype(dtype)
            weights[f"b{name}"] = (rng.standard_normal(width) * 0.1).astype(dtype)
            nodes += [
                helper.make_node("MatMul", [source, f"w{name}"], [f"{name}_mm"]),
                helper.make_node("Add", [f"{name}_mm", f"b{name}"], [f"{name}_proj"]),
            ]
    for name in "qkv":
        weights[f"{name}_split_shape"] = np.array([0, 0, -1, head_sizes[name]], np.int64)
        nodes.append(helper.make_node("Reshape", [f"{name}_proj", f"{name}_split_shape"], [f"{name}_split"]))
    weights["merge_shape"] = np.array([0, 0, -1], dtype=np.int64)
    weights["sqrt_d"] = np.array(np.sqrt(HEAD_SIZE), dtype=dtype)
    nodes += [
        helper.make_node("Transpose", ["q_split"], ["q"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["v_split"], ["v"], perm=[0, 2, 1, 3]),
    ]
    if key_form == "split":
        nodes.append(helper.make_node("Transpose", ["k_split"], ["k_t"], perm=[0, 2, 3, 1]))
    else:
        nodes += [
            helper.make_node("Transpose", ["k_split"], ["k"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 1, 3, 2]),
        ]
    nodes.append(helper.make_node("MatMul", ["q", "k_t"], ["scores"]))
    if mask in ("input", "causal", *_TABLE_MASKS, "window_range"):
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "S"]))
        nodes += _mask_nodes(mask, weights, dtype)
    elif mask == "bias":
        inputs.append(helper.make_tensor_value_info("mask_bias", elem, ["B", 1, 1, "S"]))
    if mask is None:
        nodes.append(helper.make_node("Div", ["scores", "sqrt_d"], ["logits"]))
    elif scale_after_mask:
        # softmax((QK^T + bias) / sqrt(d)): the scale applies to the mask too.
        nodes += [
            helper.make_node("Add", ["scores", "mask_bias"], ["masked"]),
            helper.make_node("Div", ["masked", "sqrt_d"], ["logits"]),
        ]
    else:
        nodes += [
            helper.make_node("Div", ["scores", "sqrt_d"], ["scaled"]),
            helper.make_node("Add", ["scaled", "mask_bias"], ["logits"]),
        ]
    nodes += [
        helper.make_node("Softmax", ["logits"], ["probs"], axis=softmax_axis),
        helper.make_node("MatMul", ["probs", "v"], ["context"]),
        helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_t", "merge_shape"], ["y_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        inputs,
        [helper.make_tensor_value_info("y_out", elem, ["B", "S", kv_heads * value_head_size])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto)
    model = ir.from_proto(proto)
    ir.passes.common.ShapeInferencePass()(model)
    return model


def _elem(dtype: type) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _mask_nodes(mask: str, weights: dict, dtype: type) -> list[onnx.NodeProto]:
    weights["one"], weights["filler"] = np.array(1.0, dtype), np.array(-10000.0, dtype)
    weights["mask_axes"] = np.array([1, 2], np.int64)
    if mask == "input":  # the classic BERT extended mask: (1 - mask) * -10000, as [B, 1, 1, S]
        return [
            helper.make_node(
                "Cast", ["attention_mask"], ["mask_f"], to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
            ),
            helper.make_node("Sub", ["one", "mask_f"], ["inverted"]),
            helper.make_node("Mul", ["inverted", "filler"], ["mask_2d"]),
            helper.make_node("Unsqueeze", ["mask_2d", "mask_axes"], ["mask_bias"]),
        ]
    if mask in _TABLE_MASKS:
        return _table_mask_nodes(mask, weights, dtype)
    if mask == "window_range":
        return _range_window_nodes(weights, dtype)
    # causal + padding: key t is seen from query s if t <= s and mask[b, t]
    weights["zero_i"], weights["step"], weights["index_1"] = (np.array(v, np.int64) for v in (0, 1, [1]))
    weights["row_axes"], weights["col_axes"] = np.array([0], np.int64), np.array([1], np.int64)
    weights["zero"] = np.array(0.0, dtype)
    return [
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", "index_1"], ["seq_1d"], axis=0),
        helper.make_node("Squeeze", ["seq_1d"], ["seq"]),
        helper.make_node("Range", ["zero_i", "seq", "step"], ["positions"]),
        helper.make_node("Unsqueeze", ["positions", "row_axes"], ["key_pos"]),
        helper.make_node("Unsqueeze", ["positions", "col_axes"], ["query_pos"]),
        helper.make_node("LessOrEqual", ["key_pos", "query_pos"], ["causal"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_b"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["mask_b", "mask_axes"], ["padding"]),
        helper.make_node("And", ["causal", "padding"], ["allowed"]),
        helper.make_node("Where", ["allowed", "zero", "filler"], ["mask_bias"]),
    ]


def band_table(window: int | None = WINDOW, length: int = TABLE_LENGTH) -> np.ndarray:
    """``[1, 1, length, length]`` bool: key ``t`` seen from query ``s`` if ``s - window < t <= s`` (None: causal)."""
    causal = np.tril(np.ones((length, length), bool))
    if window is not None:
        causal ^= np.tril(causal, -window)  # GPT-Neo: bias ^ tril(bias, -window_size)
    return causal.reshape(1, 1, length, length)


def _table_mask_nodes(mask: str, weights: dict, dtype: type) -> list[onnx.NodeProto]:
    """``table[:, :, :S, :S] & mask[b, t]`` as ``Where(allowed, 0, -10000)``: GPT-2's and GPT-Neo's biases."""
    weights["band"] = band_table(None if mask == "causal_table" else WINDOW)
    weights["zero"] = np.array(0.0, dtype)
    weights["index_1"], weights["starts"] = np.array([1], np.int64), np.array([0, 0], np.int64)
    weights["table_axes"] = np.array([2, 3], np.int64)
    return [
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", "index_1"], ["seq_1d"], axis=0),
        helper.make_node("Concat", ["seq_1d", "seq_1d"], ["ends"], axis=0),
        helper.make_node("Slice", ["band", "starts", "ends", "table_axes"], ["band_slice"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_b"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["mask_b", "mask_axes"], ["padding"]),
        helper.make_node("And", ["band_slice", "padding"], ["allowed"]),
        helper.make_node("Where", ["allowed", "zero", "filler"], ["mask_bias"]),
    ]


def _range_window_nodes(weights: dict, dtype: type) -> list[onnx.NodeProto]:
    """``t <= s and s - t < WINDOW and mask[b, t]`` from ``Range`` positions (newer exports' sliding windows)."""
    weights["zero_i"], weights["step"], weights["index_1"] = (np.array(v, np.int64) for v in (0, 1, [1]))
    weights["row_axes"], weights["col_axes"] = np.array([0], np.int64), np.array([1], np.int64)
    weights["window"], weights["zero"] = np.array(WINDOW, np.int64), np.array(0.0, dtype)
    return [
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", "index_1"], ["seq_1d"], axis=0),
        helper.make_node("Squeeze", ["seq_1d"], ["seq"]),
        helper.make_node("Range", ["zero_i", "seq", "step"], ["positions"]),
        helper.make_node("Unsqueeze", ["positions", "row_axes"], ["key_pos"]),
        helper.make_node("Unsqueeze", ["positions", "col_axes"], ["query_pos"]),
        helper.make_node("LessOrEqual", ["key_pos", "query_pos"], ["causal"]),
        helper.make_node("Sub", ["query_pos", "key_pos"], ["distance"]),
        helper.make_node("Less", ["distance", "window"], ["near"]),
        helper.make_node("And", ["causal", "near"], ["local"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_b"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["mask_b", "mask_axes"], ["padding"]),
        helper.make_node("And", ["local", "padding"], ["allowed"]),
        helper.make_node("Where", ["allowed", "zero", "filler"], ["mask_bias"]),
    ]


def model_inputs(model: ir.Model, seq: int = SEQ) -> dict[str, np.ndarray]:
    """Inputs for a hand-built model: random hidden states, and masks padding the second sequence."""
    rng = np.random.default_rng(1)
    names = {v.name: v for v in model.graph.inputs}
    dtype = names["x"].dtype.numpy()
    feeds = {"x": rng.standard_normal((BATCH, seq, HIDDEN)).astype(dtype)}
    if "y" in names:
        feeds["y"] = rng.standard_normal((BATCH, seq + 2, HIDDEN)).astype(dtype)
    mask = np.ones((BATCH, seq), np.int64)
    mask[1, 3:] = 0
    if "attention_mask" in names:
        feeds["attention_mask"] = mask
    if "mask_bias" in names:
        feeds["mask_bias"] = np.where(mask == 1, 0, np.finfo(np.float32).min).astype(dtype)[:, None, None, :]
    return feeds


# -- Metamorphic variants ------------------------------------------------------------------------------------


def _compose(inner: tuple[int, ...], outer: tuple[int, ...]) -> tuple[int, ...]:
    """``Transpose(Transpose(x, inner), outer)`` as one permutation."""
    return tuple(inner[a] for a in outer)


def _after(first: tuple[int, ...], total: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation ``second`` with ``_compose(first, second) == total``."""
    inverse = np.argsort(first)
    return tuple(int(inverse[a]) for a in total)


def _scalar(value: ir.Value | None) -> float | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return float(tensor.numpy().reshape(())) if tensor is not None and tensor.size == 1 else None


def _unscale(node: ir.Node) -> tuple[ir.Value, float] | None:
    if node.op_type == "Mul":
        for data, factor in ((0, 1), (1, 0)):
            if _scalar(node.inputs[factor]) is not None:
                return node.inputs[data], _scalar(node.inputs[factor])
    if node.op_type == "Div" and _scalar(node.inputs[1]) is not None:
        return node.inputs[0], 1.0 / _scalar(node.inputs[1])
    return None


def _peel(value: ir.Value) -> tuple[ir.Value, tuple[int, ...], float]:
    """``(base, perm, scale)`` with ``value == Transpose(base, perm) * scale``, through Transposes and scalings."""
    order, scale = (0, 1, 2, 3), 1.0
    while (node := value.producer()) is not None:
        if node.op_type == "Transpose":
            order = _compose(tuple(node.attributes["perm"].as_ints()), order)
            value = node.inputs[0]
        elif (step := _unscale(node)) is not None:
            value, scale = step[0], scale * step[1]
        else:
            break
    return value, order, scale


@dataclass
class _Block:
    softmax: ir.Node
    q: tuple[ir.Value, tuple[int, ...], float]
    k_t: tuple[ir.Value, tuple[int, ...], float]
    scale: float  # on the scores (all of it: mask added after it)
    bias: ir.Value | None


def _blocks(model: ir.Model) -> list[_Block]:
    blocks = []
    for softmax in [n for n in model.graph if n.op_type == "Softmax"]:
        value, scale, bias = softmax.inputs[0], 1.0, None
        while (node := value.producer()) is not None and node.op_type != "MatMul":
            if (step := _unscale(node)) is not None:
                value, scale = step[0], scale * step[1]
            elif node.op_type == "Add" and bias is None:
                scores = _peel(node.inputs[0])[0].producer()
                side = 0 if scores is not None and scores.op_type == "MatMul" else 1
                value, bias = node.inputs[side], node.inputs[1 - side]
                assert scale == 1.0, "a scale after the mask: not a form the variants start from"
            else:
                raise AssertionError(f"unexpected {node.op_type} between the scores and the Softmax")
        q, k_t = _peel(node.inputs[0]), _peel(node.inputs[1])
        blocks.append(_Block(softmax, q, k_t, scale * q[2] * k_t[2], bias))
    return blocks


class _Writer:
    def __init__(self, graph: ir.Graph, anchor: ir.Node) -> None:
        self.graph, self.anchor, self.count = graph, anchor, 0

    def __call__(self, op: str, *inputs, domain: str = "", **attrs) -> ir.Value:
        node = ir.node(op, list(inputs), attrs, domain=domain, name=f"{self.anchor.name}/variant_{op}_{self.count}")
        self.count += 1
        node.outputs[0].name = f"{node.name}_out"
        self.graph.insert_before(self.anchor, node)
        return node.outputs[0]

    def const(self, array) -> ir.Value:
        self.count += 1
        name = f"{self.anchor.name}/variant_const_{self.count}"
        array = np.asarray(array)
        value = ir.Value(
            name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype))
        )
        value.const_value = ir.tensor(array, name=name)
        self.graph.register_initializer(value)
        return value

    def transposes(self, value: ir.Value, total: tuple[int, ...], count: int) -> ir.Value:
        """``Transpose(value, total)`` spelled as ``count`` Transposes (none for the identity and count 1)."""
        done = (0, 1, 2, 3)
        for perm in [(0, 2, 1, 3), (0, 1, 3, 2)][: count - 1]:
            value, done = self("Transpose", value, perm=list(perm)), _compose(done, perm)
        last = _after(done, total)
        return value if last == (0, 1, 2, 3) and count == 1 else self("Transpose", value, perm=list(last))

    def scaled(self, value: ir.Value, factor: float, op: str) -> ir.Value:
        if factor == 1.0:
            return value
        if op == "div":
            return self("Div", value, self.const(np.array(1.0 / factor, np.float32)))
        return self("Mul", value, self.const(np.array(factor, np.float32)))


def variant(
    model: ir.Model,
    *,
    key: str = "one",
    query: str = "one",
    scale: str = "scores",
    scale_op: str = "mul",
    mask: str = "add",
    output: str = "same",
) -> ir.Model:
    """A copy of ``model`` whose attention blocks compute the same thing spelled differently.

    ``key``: "one", "two" or "three" Transposes for K^T, or "fused" (``FusedMatMul(q, k,
    transB=1, alpha=scale)``). ``query``: "one" or "two" Transposes. ``scale``: on the
    "scores" before the mask, "after_mask" (the mask divided by it first), on "q", on "k",
    on "both" as square roots, or on "q_hidden" (the 3-D projection before the head
    split). ``scale_op``: "mul" or "div" (by the reciprocal). ``mask``: "add", "add_swapped"
    (bias first), "where_inf"/"where_min" (``Where(bias == 0, scores, fill)``),
    "where_negated" (``Where(bias != 0, fill, scores)``), "gathernd" (the dynamo export's
    GatherND/And boolean from ``attention_mask``, anded with ``bias == 0``, then
    ``Where(ok, 0, min)`` added). ``output``: "same" or "two" (the output's Transpose
    spelled as two).
    """
    model = model.clone()
    graph = model.graph
    if key == "fused":
        model.opset_imports.setdefault("com.microsoft", 1)
    for block in _blocks(model):
        w = _Writer(graph, block.softmax)
        (q_base, q_perm, _), (k_base, k_perm, _) = block.q, block.k_t
        s = block.scale
        on = {"q": 1.0, "k": 1.0, "scores": 1.0}
        if key == "fused":
            pass  # all of it is FusedMatMul's alpha
        elif scale in ("scores", "after_mask"):
            on["scores"] = s
        elif scale in ("q", "q_hidden"):
            on["q"] = s
        elif scale == "k":
            on["k"] = s
        else:
            on["q"] = on["k"] = float(np.sqrt(s))
        if scale == "q_hidden" and key != "fused":
            split = q_base.producer()
            assert split.op_type == "Reshape", "the query is not a head split"
            hidden = w.scaled(split.inputs[0], on["q"], scale_op)
            q_base, on["q"] = (
                w("Reshape", hidden, split.inputs[1], allowzero=split.attributes.get_int("allowzero", 0)),
                1.0,
            )
        q = w.scaled(w.transposes(q_base, q_perm, 2 if query == "two" else 1), on["q"], scale_op)
        if key == "fused":
            k = w.transposes(k_base, _compose(k_perm, (0, 1, 3, 2)), 1)
            scores = w("FusedMatMul", q, k, domain="com.microsoft", transB=1, alpha=s)
        else:
            k_t = w.scaled(w.transposes(k_base, k_perm, {"one": 1, "two": 2, "three": 3}[key]), on["k"], scale_op)
            scores = w("MatMul", q, k_t)
        logits = _masked(w, block.bias, scores, on["scores"], scale, scale_op, mask, graph)
        block.softmax.replace_input_with(0, logits)
        if output == "two":
            _split_output_transpose(graph, block.softmax)
    ir.passes.common.RemoveUnusedNodesPass()(model)
    # Exporters record shapes on most values; the contrib FusedMatMul gets none (non-strict inference).
    ir.passes.common.ShapeInferencePass(strict_mode=False)(model)
    return model


def _masked(w: _Writer, bias, scores, factor: float, scale: str, scale_op: str, mask: str, graph) -> ir.Value:
    if bias is None:
        return w.scaled(scores, factor, scale_op)
    after = scale == "after_mask" and factor != 1.0
    if not after:
        scores = w.scaled(scores, factor, scale_op)
    elif mask in ("add", "add_swapped", "gathernd"):
        bias = w("Mul", bias, w.const(np.array(1.0 / factor, np.float32)))
    allowed = w("Equal", bias, w.const(np.array(0.0, np.float32)))
    fill = np.float32(-np.inf) if mask == "where_inf" else np.finfo(np.float32).min
    if mask == "add":
        logits = w("Add", scores, bias)
    elif mask == "add_swapped":
        logits = w("Add", bias, scores)
    elif mask in ("where_inf", "where_min"):
        logits = w("Where", allowed, scores, w.const(fill))
    elif mask == "where_negated":
        logits = w("Where", w("Not", allowed), w.const(fill), scores)
    else:
        ok = w("And", _gathered_mask(w, graph), allowed)
        logits = w("Add", scores, w("Where", ok, w.const(np.float32(0.0)), w.const(fill)))
    return w.scaled(logits, factor, scale_op) if after else logits


def _gathered_mask(w: _Writer, graph: ir.Graph) -> ir.Value:
    """The dynamo export's padding mask: ``And(true [1, 1, S, 1], GatherND(mask, [b, t] index) [B, 1, 1, S])``."""
    (mask,) = [v for v in graph.inputs if v.name == "attention_mask"]
    ints = lambda values: w.const(np.array(values, np.int64))  # noqa: E731
    shape = w("Shape", mask)
    batch, seq = (w("Gather", shape, ints([axis]), axis=0) for axis in (0, 1))
    target = w("Concat", batch, ints([1, 1]), seq, axis=0)
    batch_index = w("Reshape", w("Range", ints(0), w("Squeeze", batch), ints(1)), ints([-1, 1, 1, 1]))
    key_index = w("Reshape", w("Range", ints(0), w("Squeeze", seq), ints(1)), ints([1, 1, 1, -1]))
    index = w(
        "Concat",
        w("Unsqueeze", w("Expand", batch_index, target), ints([-1])),
        w("Unsqueeze", w("Expand", key_index, target), ints([-1])),
        axis=-1,
    )
    gathered = w("GatherND", w("Cast", mask, to=ir.DataType.BOOL), index, batch_dims=0)
    query_index = w("Reshape", w("Range", ints(0), w("Squeeze", seq), ints(1)), ints([1, 1, -1, 1]))
    return w("And", w("GreaterOrEqual", query_index, ints(0)), gathered)


def _split_output_transpose(graph: ir.Graph, softmax: ir.Node) -> None:
    """Spell the first Transpose after the probabilities @ V as two."""
    value = softmax.outputs[0]
    for _ in range(6):
        (user, _), *_ = list(value.uses())
        if user.op_type == "Transpose":
            total = tuple(user.attributes["perm"].as_ints())
            first = ir.node("Transpose", [user.inputs[0]], {"perm": [0, 1, 3, 2]}, name=f"{user.name}/first_half")
            first.outputs[0].name = f"{first.name}_out"
            graph.insert_before(user, first)
            user.replace_input_with(0, first.outputs[0])
            user.attributes["perm"] = ir.AttrInt64s("perm", list(_after((0, 1, 3, 2), total)))
            return
        value = user.outputs[0]
    raise AssertionError("no Transpose after the attention")


def static_targets(model: ir.Model, batch: int = BATCH, seq: int = SEQ) -> ir.Model:
    """A copy whose inputs are ``[batch, seq, ...]`` and whose Reshape targets state static sizes, ``allowzero=1``.

    What ``--static-shapes`` makes of a dynamo export (``[1, 16, -1, 32]``).
    """
    model = model.clone()
    sizes = {"B": batch, "S": seq}
    for value in model.graph.inputs:
        value.shape = ir.Shape([sizes.get(getattr(d, "value", None), d) for d in value.shape])
    for value in model.graph.outputs:
        value.shape = ir.Shape([sizes.get(getattr(d, "value", None), d) for d in value.shape])
    ir.passes.common.ShapeInferencePass()(model)
    for node in model.graph:
        target = ir.convenience.get_const_tensor(node.inputs[1]) if node.op_type == "Reshape" else None
        if target is None or 0 not in target.numpy():
            continue
        data = list(node.inputs[0].shape)
        literal = np.array([data[i] if t == 0 else t for i, t in enumerate(target.numpy())], np.int64)
        name = f"{node.name or node.outputs[0].name}/static_target"
        value = ir.Value(name=name, shape=ir.Shape(literal.shape), type=ir.TensorType(ir.DataType.INT64))
        value.const_value = ir.tensor(literal, name=name)
        model.graph.register_initializer(value)
        node.replace_input_with(1, value)
        node.attributes["allowzero"] = ir.AttrInt64("allowzero", 1)
    ir.passes.common.ShapeInferencePass()(model)
    return model


def without_value_info(model: ir.Model) -> ir.Model:
    """A copy with no shape or type on any intermediate value, as the legacy exporter writes graphs."""
    proto = ir.to_proto(model)
    del proto.graph.value_info[:]
    return ir.from_proto(proto)


def batched_attention_model(
    *, merge: str = "heads", scores_split: str = "batch_heads", mask: str | None = "add", infer: bool = False
) -> ir.Model:
    """Self-attention on heads merged into the batch axis, as Hugging Face's eager BART-family code writes it.

    Q (scaled on its 3-D projection), K and V are split into heads, transposed to
    ``[B, N, S, d]`` and viewed as ``[B*N, S, d]`` (target ``[B * N, -1, d]``, ``B * N``
    computed from ``Shape(x)``) for ``torch.bmm``; the scores are viewed as ``[B, N, S,
    T]`` to add the ``(1 - mask) * -10000`` bias ``[B, 1, 1, T]`` ("add"; "sub" subtracts
    ``(1 - mask) * 10000``; None: no mask and no views) and back as ``[B*N, S, T]`` for the
    Softmax; the output ``[B*N, S, d]`` is viewed as ``[B, N, S, d]``, transposed and merged.
    Near misses: ``merge="positions"`` views the ``[B, S, N, d]`` split (not transposed) as
    ``[B*N, S, d]``, mixing heads and positions; ``scores_split="heads_batch"`` views the
    scores as ``[N, B, S, T]``, so the mask meets rows of other sequences. ``infer``
    records every shape (onnx's inference); otherwise only the inputs' and outputs'.
    """
    rng = np.random.default_rng(0)
    ints = lambda *v: np.array(v, np.int64)  # noqa: E731
    weights: dict[str, np.ndarray] = {
        "scaling": np.array(HEAD_SIZE**-0.5, np.float32),
        "split_shape": ints(0, 0, HEADS, HEAD_SIZE),
        "heads": ints(HEADS),
        "minus_one": ints(-1),
        "head_size": ints(HEAD_SIZE),
        "axis_0": ints(0),
        "axis_1": ints(1),
        "merge_shape": ints(0, 0, -1),
    }
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "axis_0"], ["batch"], axis=0),
        helper.make_node("Gather", ["x_shape", "axis_1"], ["seq"], axis=0),
        helper.make_node("Mul", ["batch", "heads"], ["batch_heads"]),
        helper.make_node("Concat", ["batch_heads", "minus_one", "head_size"], ["bmm_shape"], axis=0),
    ]
    for name in "qkv":
        weights[f"w{name}"] = (rng.standard_normal((HIDDEN, HIDDEN)) * 0.5).astype(np.float32)
        weights[f"b{name}"] = (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32)
        nodes += [
            helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}_mm"]),
            helper.make_node("Add", [f"{name}_mm", f"b{name}"], [f"{name}_proj"]),
        ]
    nodes.append(helper.make_node("Mul", ["q_proj", "scaling"], ["q_scaled"]))
    for name in "qkv":
        source = "q_scaled" if name == "q" else f"{name}_proj"
        nodes.append(helper.make_node("Reshape", [source, "split_shape"], [f"{name}_split"]))
        if merge == "heads":
            nodes.append(helper.make_node("Transpose", [f"{name}_split"], [f"{name}_heads"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"{name}_heads", "bmm_shape"], [f"{name}_3d"]))
        else:  # [B, S, N, d] viewed as [B*N, S, d]: rows mix heads and positions
            nodes.append(helper.make_node("Reshape", [f"{name}_split", "bmm_shape"], [f"{name}_3d"]))
    nodes += [
        helper.make_node("Transpose", ["k_3d"], ["k_3d_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q_3d", "k_3d_t"], ["scores"]),
        helper.make_node("Shape", ["k_3d"], ["k_shape"]),
        helper.make_node("Gather", ["k_shape", "axis_1"], ["keys"], axis=0),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", HIDDEN])]
    logits = "scores"
    if mask is not None:
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "S"]))
        weights["one"], weights["mask_axes"] = np.array(1.0, np.float32), ints(1, 2)
        weights["filler"] = np.array(10000.0 if mask == "sub" else -10000.0, np.float32)
        first, second = ("batch", "heads") if scores_split == "batch_heads" else ("heads", "batch")
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["one", "mask_f"], ["inverted"]),
            helper.make_node("Mul", ["inverted", "filler"], ["mask_2d"]),
            helper.make_node("Unsqueeze", ["mask_2d", "mask_axes"], ["mask_bias"]),
            helper.make_node("Concat", [first, second, "seq", "keys"], ["scores_4d_shape"], axis=0),
            helper.make_node("Reshape", ["scores", "scores_4d_shape"], ["scores_4d"]),
            helper.make_node("Sub" if mask == "sub" else "Add", ["scores_4d", "mask_bias"], ["masked_4d"]),
            helper.make_node("Concat", ["batch_heads", "seq", "keys"], ["scores_3d_shape"], axis=0),
            helper.make_node("Reshape", ["masked_4d", "scores_3d_shape"], ["masked"]),
        ]
        logits = "masked"
    nodes += [
        helper.make_node("Softmax", [logits], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v_3d"], ["context_3d"]),
        helper.make_node("Concat", ["batch", "heads", "seq", "head_size"], ["context_4d_shape"], axis=0),
        helper.make_node("Reshape", ["context_3d", "context_4d_shape"], ["context"]),
        helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_t", "merge_shape"], ["y_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "batched_attention",
        inputs,
        [helper.make_tensor_value_info("y_out", TensorProto.FLOAT, ["B", "S", HIDDEN])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    if infer:
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    return ir.from_proto(proto)


def range_causal_mask(length_of: str = "x") -> onnx.ModelProto:
    """``attention_model``'s block with the Llama legacy export's causal mask, ``[1, 1, L, L]`` built from two
    ``Range(0, Shape(length_of)[1])``, no intermediate shapes recorded.

    ONNX's shape inference gives each Range's length a fresh symbol, so the mask reads ``[1, 1, ?, ?]``;
    ORT's symbolic inference follows the arithmetic to ``[1, 1, L, L]``.
    """
    proto = ir.to_proto(attention_model(mask="bias"))
    graph = proto.graph
    del graph.input[1]  # mask_bias, computed below
    del graph.value_info[:]
    consts = {
        "zero_i": np.array(0, np.int64),
        "one_i": np.array(1, np.int64),
        "seq_axis": np.array(1, np.int64),
        "cols_axes": np.array([0, 1, 2], np.int64),
        "rows_axes": np.array([0, 1, 3], np.int64),
        "open": np.array(0, np.float32),
        "closed": np.array(-1e9, np.float32),
    }
    graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in consts.items())
    mask_nodes = [
        helper.make_node("Shape", [length_of], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", "seq_axis"], ["length"], axis=0),
        helper.make_node("Range", ["zero_i", "length", "one_i"], ["positions"]),
        helper.make_node("Unsqueeze", ["positions", "cols_axes"], ["cols"]),
        helper.make_node("Unsqueeze", ["positions", "rows_axes"], ["rows"]),
        helper.make_node("LessOrEqual", ["cols", "rows"], ["visible"]),
        helper.make_node("Where", ["visible", "open", "closed"], ["mask_bias"]),
    ]
    nodes = mask_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return proto

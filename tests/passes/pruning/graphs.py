"""Small transformer blocks for the pruning tests, some of whose units carry zero weights."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from tests.passes.quantization.graphs import weights


def _model(nodes, inputs, outputs, initializers) -> ir.Model:
    graph = helper.make_graph(nodes, "block", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers])
    imports = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    proto = helper.make_model(graph, opset_imports=imports, ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def ffn(
    hidden: int = 16,
    inner: int = 32,
    *,
    dead: tuple[int, ...] = (),
    gated: bool = False,
    tap: bool = False,
    copies: tuple[tuple[int, int], ...] = (),
) -> ir.Model:
    """``x`` → up (+ bias) → erf-GELU (or SiLU(gate) * up) → down (+ bias) → residual Add → ``y``.

    Neurons in ``dead`` have zero up (and gate) columns, zero up bias and zero down
    rows: removing them cannot change the output. For each ``(a, b)`` in ``copies``, neuron
    ``b`` computes what neuron ``a`` does (same up and gate columns and bias; its own down
    row): either can go if the other's down row takes both. ``tap`` also makes the hidden
    activation a second graph output, which forbids cutting it.
    """
    up, bias, down = weights(hidden, inner, seed=1), weights(inner, seed=2), weights(inner, hidden, seed=3)
    gate = weights(hidden, inner, seed=4)
    for j in dead:
        up[:, j] = bias[j] = down[j, :] = gate[:, j] = 0.0
    for a, b in copies:
        up[:, b], bias[b], gate[:, b] = up[:, a], bias[a], gate[:, a]
    init = [("up", up), ("up_bias", bias), ("down", down), ("down_bias", weights(hidden, seed=5))]
    nodes = [
        helper.make_node("MatMul", ["x", "up"], ["u"], name="up_proj"),
        helper.make_node("Add", ["u", "up_bias"], ["ub"], name="up_bias_add"),
    ]
    if gated:
        init.append(("gate", gate))
        nodes += [
            helper.make_node("MatMul", ["x", "gate"], ["g"], name="gate_proj"),
            helper.make_node("Sigmoid", ["g"], ["gs"], name="sigmoid"),
            helper.make_node("Mul", ["g", "gs"], ["silu"], name="silu"),
            helper.make_node("Mul", ["silu", "ub"], ["h"], name="gated"),
        ]
    else:
        init += [
            ("sqrt2", np.array(math.sqrt(2), np.float32)),
            ("one", np.array(1, np.float32)),
            ("half", np.array(0.5, np.float32)),
        ]
        nodes += [
            helper.make_node("Div", ["ub", "sqrt2"], ["d"], name="gelu_div"),
            helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
            helper.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
            helper.make_node("Mul", ["ub", "e1"], ["m"], name="gelu_mul"),
            helper.make_node("Mul", ["m", "half"], ["h"], name="gelu_half"),
        ]
    nodes += [
        helper.make_node("MatMul", ["h", "down"], ["o"], name="down_proj"),
        helper.make_node("Add", ["o", "down_bias"], ["ob"], name="down_bias_add"),
        helper.make_node("Add", ["ob", "x"], ["y"], name="residual"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", hidden])]
    if tap:
        outputs.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", "S", inner]))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden])], outputs, init)


def packed_attention(hidden: int = 16, heads: int = 4, *, dead: tuple[int, ...] = ()) -> ir.Model:
    """``x`` → com.microsoft Attention (packed QKV, mask) → output MatMul (+ bias) → ``y``; ``dead`` heads are zero."""
    size = hidden // heads
    qkv, bias, out = (
        weights(hidden, 3 * hidden, seed=6, scale=0.3),
        weights(3 * hidden, seed=7),
        weights(hidden, hidden, seed=8),
    )
    for h in dead:
        for block in range(3):
            qkv[:, block * hidden + h * size : block * hidden + (h + 1) * size] = 0.0
            bias[block * hidden + h * size : block * hidden + (h + 1) * size] = 0.0
        out[h * size : (h + 1) * size, :] = 0.0
    nodes = [
        helper.make_node("Cast", ["mask"], ["mask32"], to=TensorProto.INT32, name="cast"),
        helper.make_node(
            "Attention",
            ["x", "qkv", "qkv_bias", "mask32"],
            ["a"],
            domain="com.microsoft",
            name="attention",
            num_heads=heads,
        ),
        helper.make_node("MatMul", ["a", "out"], ["o"], name="out_proj"),
        helper.make_node("Add", ["o", "out_bias"], ["y"], name="out_bias_add"),
    ]
    init = [("qkv", qkv), ("qkv_bias", bias), ("out", out), ("out_bias", weights(hidden, seed=9))]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden]),
        helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", "S"]),
    ]
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", hidden])], init)


def multi_head_attention(
    hidden: int = 16, heads: int = 4, *, kv_heads: int | None = None, dead: tuple[int, ...] = (), rotary: bool = True
) -> ir.Model:
    """``x`` → Q/K/V MatMuls (+ RotaryEmbedding on Q and K) → MultiHeadAttention → output MatMul → ``y``.

    ``kv_heads`` < ``heads`` makes the K/V projections narrower and repeats their heads
    to the query's count (grouped-query attention, as exporters write it), which
    pruning must refuse.
    """
    size = hidden // heads
    kv_width = (kv_heads or heads) * size
    wq, wk, wv, wo = (
        weights(hidden, hidden, seed=10),
        weights(hidden, kv_width, seed=11),
        weights(hidden, kv_width, seed=12),
        weights(hidden, hidden, seed=13),
    )
    for h in dead:
        for w in (wq, wk, wv):
            w[:, h * size : (h + 1) * size] = 0.0
        wo[h * size : (h + 1) * size, :] = 0.0
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
    ]
    q, k, v = "q", "k", "v"
    init = [("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo)]
    if kv_heads:
        repeats = heads // kv_heads
        nodes += [
            helper.make_node("Concat", ["k"] * repeats, ["k_repeated"], axis=-1, name="repeat_k"),
            helper.make_node("Concat", ["v"] * repeats, ["v_repeated"], axis=-1, name="repeat_v"),
        ]
        k, v = "k_repeated", "v_repeated"
    if rotary:
        angles = np.arange(64)[:, None] / (10000 ** (np.arange(size // 2)[None, :] / (size // 2)))
        init += [("cos", np.cos(angles).astype(np.float32)), ("sin", np.sin(angles).astype(np.float32))]
        for name in ("q", "k"):
            nodes.append(
                helper.make_node(
                    "RotaryEmbedding",
                    [name, "positions", "cos", "sin"],
                    [f"{name}r"],
                    domain="com.microsoft",
                    name=f"{name}_rotary",
                    num_heads=heads,
                )
            )
        q, k = "qr", "kr"
    nodes += [
        helper.make_node("MultiHeadAttention", [q, k, v], ["a"], domain="com.microsoft", name="mha", num_heads=heads),
        helper.make_node("MatMul", ["a", "wo"], ["y"], name="out_proj"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden])]
    if rotary:
        inputs.append(helper.make_tensor_value_info("positions", TensorProto.INT64, ["B", "S"]))
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", hidden])], init)


def feeds(model: ir.Model, count: int = 4, sequence: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Normal floats, all-ones masks, positions 0..S-1."""
    rng = np.random.default_rng(seed)
    result = {}
    for value in model.graph.inputs:
        if value.name == "positions":
            result[value.name] = np.tile(np.arange(sequence), (count, 1)).astype(np.int64)
        elif value.dtype == ir.DataType.FLOAT:
            result[value.name] = rng.standard_normal((count, sequence, value.shape[-1])).astype(np.float32)
        else:
            result[value.name] = np.ones((count, sequence), dtype=np.int64)
    return result


def convnet(*, dead: tuple[int, ...] = (), depthwise: bool = False, residual: bool = False) -> ir.Model:
    """``x [B, 3, 12, 12]`` → conv1 (8 ch) → BatchNorm → Relu → [depthwise 3x3 → HardSwish] → conv2 → ``y``.

    Channels in ``dead`` have zero conv1 filters and bias, BatchNorm scale/bias 0 (so
    Relu(0) = 0 there), zero depthwise filters, and zero conv2 input weights.
    ``residual`` puts conv0 + Relu before conv1 and adds its activation to conv2's input
    (a ResNet skip): conv1 reads those channels too, so they cannot be cut.
    """
    c1, b1 = weights(8, 8 if residual else 3, 3, 3, seed=1, scale=0.3), weights(8, seed=2)
    scale, shift = 1.0 + weights(8, seed=3), weights(8, seed=4)
    mean, var = weights(8, seed=5), 1.0 + np.abs(weights(8, seed=6))
    dw, dwb = weights(8, 1, 3, 3, seed=7, scale=0.3), weights(8, seed=8)
    c2 = weights(6, 8, 3, 3, seed=9, scale=0.3)
    for c in dead:
        c1[c] = b1[c] = scale[c] = shift[c] = dw[c] = dwb[c] = 0.0
        mean[c] = 0.0
        c2[:, c] = 0.0
    nodes = [
        helper.make_node("Conv", ["r0" if residual else "x", "c1", "b1"], ["y1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["y1", "scale", "shift", "mean", "var"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
    ]
    init = [("c1", c1), ("b1", b1), ("scale", scale), ("shift", shift), ("mean", mean), ("var", var), ("c2", c2)]
    last = "r1"
    if depthwise:
        nodes += [
            helper.make_node("Conv", ["r1", "dw", "dwb"], ["d"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
            helper.make_node("HardSwish", ["d"], ["h"], name="hardswish"),
        ]
        init += [("dw", dw), ("dwb", dwb)]
        last = "h"
    if residual:
        nodes[:0] = [
            helper.make_node("Conv", ["x", "c0"], ["y0"], name="conv0", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["y0"], ["r0"], name="relu0"),
        ]
        init.append(("c0", weights(8, 3, 3, 3, seed=10, scale=0.3)))
        nodes.append(helper.make_node("Add", [last, "r0"], ["tied"], name="residual"))
        last = "tied"
    nodes.append(helper.make_node("Conv", [last, "c2"], ["y"], name="conv2", pads=[1, 1, 1, 1]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 12, 12])]
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 6, 12, 12])], init)


def images(count: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Normal ``[count, 3, 12, 12]`` images."""
    return {"x": np.random.default_rng(seed).standard_normal((count, 3, 12, 12)).astype(np.float32)}


def ffn_stack(scales: tuple[float, ...] = (1.0, 1.0), hidden: int = 16, inner: int = 32) -> ir.Model:
    """``x`` → one residual FFN block per scale (up + bias → Relu → down + bias, times the scale, + residual) → ``y``.

    Every block has the same kind of weights; a block's scale is how much its output
    reaches the model output, which a per-layer score cannot see.
    """
    nodes, init, last = [], [], "x"
    for i, scale in enumerate(scales):
        init += [
            (f"up{i}", weights(hidden, inner, seed=20 + i, scale=0.3)),
            (f"up_bias{i}", weights(inner, seed=30 + i)),
            (f"down{i}", weights(inner, hidden, seed=40 + i, scale=0.3)),
            (f"down_bias{i}", weights(hidden, seed=50 + i)),
            (f"scale{i}", np.array(scale, np.float32)),
        ]
        nodes += [
            helper.make_node("MatMul", [last, f"up{i}"], [f"u{i}"], name=f"up_proj{i}"),
            helper.make_node("Add", [f"u{i}", f"up_bias{i}"], [f"ub{i}"], name=f"up_bias_add{i}"),
            helper.make_node("Relu", [f"ub{i}"], [f"h{i}"], name=f"relu{i}"),
            helper.make_node("MatMul", [f"h{i}", f"down{i}"], [f"d{i}"], name=f"down_proj{i}"),
            helper.make_node("Add", [f"d{i}", f"down_bias{i}"], [f"db{i}"], name=f"down_bias_add{i}"),
            helper.make_node("Mul", [f"db{i}", f"scale{i}"], [f"s{i}"], name=f"scaled{i}"),
            helper.make_node("Add", [f"s{i}", last], [f"r{i}"], name=f"residual{i}"),
        ]
        last = f"r{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"], name="out"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden])]
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", hidden])], init)


def attention_ffn(hidden: int = 16, heads: int = 4, inner: int = 32, layers: int = 2) -> ir.Model:
    """``x`` → per layer: Q/K/V MatMuls → MultiHeadAttention → output MatMul + residual → FFN (Relu) + residual.

    A small encoder with both kinds of units, for cutting heads and neurons together.
    """
    nodes, init, last = [], [], "x"
    for i in range(layers):
        seed = 100 * (i + 1)
        for j, name in enumerate(("wq", "wk", "wv", "wo")):
            init.append((f"{name}{i}", weights(hidden, hidden, seed=seed + j, scale=0.3)))
        init += [
            (f"up{i}", weights(hidden, inner, seed=seed + 5, scale=0.3)),
            (f"up_bias{i}", weights(inner, seed=seed + 6)),
            (f"down{i}", weights(inner, hidden, seed=seed + 7, scale=0.3)),
        ]
        nodes += [
            helper.make_node("MatMul", [last, f"wq{i}"], [f"q{i}"], name=f"q_proj{i}"),
            helper.make_node("MatMul", [last, f"wk{i}"], [f"k{i}"], name=f"k_proj{i}"),
            helper.make_node("MatMul", [last, f"wv{i}"], [f"v{i}"], name=f"v_proj{i}"),
            helper.make_node(
                "MultiHeadAttention",
                [f"q{i}", f"k{i}", f"v{i}"],
                [f"a{i}"],
                domain="com.microsoft",
                name=f"mha{i}",
                num_heads=heads,
            ),
            helper.make_node("MatMul", [f"a{i}", f"wo{i}"], [f"o{i}"], name=f"out_proj{i}"),
            helper.make_node("Add", [f"o{i}", last], [f"r{i}"], name=f"attention_residual{i}"),
            helper.make_node("MatMul", [f"r{i}", f"up{i}"], [f"u{i}"], name=f"up_proj{i}"),
            helper.make_node("Add", [f"u{i}", f"up_bias{i}"], [f"ub{i}"], name=f"up_bias_add{i}"),
            helper.make_node("Relu", [f"ub{i}"], [f"h{i}"], name=f"relu{i}"),
            helper.make_node("MatMul", [f"h{i}", f"down{i}"], [f"d{i}"], name=f"down_proj{i}"),
            helper.make_node("Add", [f"d{i}", f"r{i}"], [f"f{i}"], name=f"ffn_residual{i}"),
        ]
        last = f"f{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"], name="out"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden])]
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", hidden])], init)


def inverted_residual(*, dead: tuple[int, ...] = (), channels: int = 8, expand: int = 4) -> ir.Model:
    """A 3×3 stem Conv + Clip(0, 6) on ``x [B, 3, 12, 12]``, then two MobileNetV2/EfficientNet-Lite
    inverted-residual blocks of ``channels``.

    Block ``b``: 1×1 expand (+ bias) → Clip(0, 6) → Pad (H, W only: TF "same") → 3×3
    depthwise (+ bias) → Clip(0, 6) → 1×1 project (+ bias) → residual Add with the
    block's input → ``y``. The expansion channels are free to cut (only the depthwise
    Conv and the projection read them); the block outputs are tied to the residual Adds.
    Expansion channels in ``dead`` (of both blocks) have zero expand filters and bias and
    zero depthwise filters and bias (Clip(0) = 0), so removing them changes nothing.
    """
    wide = channels * expand
    init = [("low", np.array(0.0, np.float32)), ("high", np.array(6.0, np.float32))]
    init += [("pads", np.array([0, 0, 0, 0, 0, 0, 2, 2], np.int64)), ("stem", weights(channels, 3, 3, 3, seed=59))]
    nodes = [
        helper.make_node("Conv", ["x", "stem"], ["s"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["s", "low", "high"], ["sc"], name="relu6_stem"),
    ]
    last = "sc"
    for b in range(2):
        seed = 60 + 10 * b
        ex, exb = weights(wide, channels, 1, 1, seed=seed, scale=0.5), weights(wide, seed=seed + 1)
        dw, dwb = weights(wide, 1, 3, 3, seed=seed + 2, scale=0.5), weights(wide, seed=seed + 3)
        pr, prb = weights(channels, wide, 1, 1, seed=seed + 4, scale=0.3), weights(channels, seed=seed + 5)
        for c in dead:
            ex[c] = exb[c] = dw[c] = dwb[c] = 0.0
        init += [(f"ex{b}", ex), (f"exb{b}", exb), (f"dw{b}", dw), (f"dwb{b}", dwb), (f"pr{b}", pr), (f"prb{b}", prb)]
        nodes += [
            helper.make_node("Conv", [last, f"ex{b}", f"exb{b}"], [f"e{b}"], name=f"expand{b}"),
            helper.make_node("Clip", [f"e{b}", "low", "high"], [f"ec{b}"], name=f"relu6_expand{b}"),
            helper.make_node("Pad", [f"ec{b}", "pads"], [f"p{b}"], name=f"pad{b}"),
            helper.make_node("Conv", [f"p{b}", f"dw{b}", f"dwb{b}"], [f"d{b}"], name=f"depthwise{b}", group=wide),
            helper.make_node("Clip", [f"d{b}", "low", "high"], [f"dc{b}"], name=f"relu6_depthwise{b}"),
            helper.make_node("Conv", [f"dc{b}", f"pr{b}", f"prb{b}"], [f"o{b}"], name=f"project{b}"),
            helper.make_node("Add", [f"o{b}", last], [f"r{b}"], name=f"residual{b}"),
        ]
        last = f"r{b}"
    nodes.append(helper.make_node("Identity", [last], ["y"], name="out"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 12, 12])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", channels, 12, 12])]
    return _model(nodes, inputs, outputs, init)


def classifier_head(*, dead: tuple[int, ...] = (), pooling: str = "GlobalAveragePool", flatten: str = "Flatten"):
    """``x [B, 3, 8, 8]`` → 3×3 Conv (16 ch, stride 2) → Clip(0, 6) → 1×1 Conv (32 ch) → Clip(0, 6) →
    global pooling → flattening → Gemm (``transB``, 10 classes) → ``y`` (EfficientNet-Lite's head, small).

    ``pooling``: GlobalAveragePool, or ReduceMean over H and W with ``keepdims`` (``ReduceMean``),
    or over the channel axis (``ReduceMeanChannels``: not a group). ``flatten``: Flatten,
    ``Reshape`` to ``[-1, 32]``, ``ReshapeBatch`` to ``[B, -1]`` (as a constant ``[1, -1]``), or
    ``Spatial`` (no pooling at all: the Gemm reads the flattened 4×4 map, which is not a group).
    Head channels in ``dead`` have zero 1×1 filters and bias (Clip(0) = 0) and zero Gemm rows.
    """
    init = [("low", np.array(0.0, np.float32)), ("high", np.array(6.0, np.float32))]
    head, head_bias = weights(32, 16, 1, 1, seed=80, scale=0.4), weights(32, seed=81) + 0.5
    classes = weights(10, 32 * 16 if flatten == "Spatial" else 32, seed=82, scale=0.3)
    for c in dead:
        head[c] = head_bias[c] = 0.0
        classes[:, c] = 0.0
    init += [("stem", weights(16, 3, 3, 3, seed=83, scale=0.5)), ("stem_bias", weights(16, seed=84))]
    init += [("head", head), ("head_bias", head_bias), ("fc", classes), ("fc_bias", weights(10, seed=85))]
    nodes = [
        helper.make_node("Conv", ["x", "stem", "stem_bias"], ["s"], name="stem", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["s", "low", "high"], ["sc"], name="relu6_stem"),
        helper.make_node("Conv", ["sc", "head", "head_bias"], ["h"], name="head"),
        helper.make_node("Clip", ["h", "low", "high"], ["hc"], name="relu6_head"),
    ]
    pooled = "hc"
    if flatten != "Spatial":
        pooled = "pooled"
        if pooling == "GlobalAveragePool":
            nodes.append(helper.make_node("GlobalAveragePool", ["hc"], ["pooled"], name="pool"))
        else:
            init.append(("axes", np.array([2, 3] if pooling == "ReduceMean" else [1], np.int64)))
            nodes.append(helper.make_node("ReduceMean", ["hc", "axes"], ["pooled"], name="pool", keepdims=1))
    if flatten in ("Flatten", "Spatial"):
        nodes.append(helper.make_node("Flatten", [pooled], ["flat"], name="flatten", axis=1))
    else:
        init.append(("target", np.array([-1, 32] if flatten == "Reshape" else [1, -1], np.int64)))
        nodes.append(helper.make_node("Reshape", [pooled, "target"], ["flat"], name="flatten"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc", "fc_bias"], ["y"], name="classifier", transB=1))
    batch = 1 if flatten == "ReshapeBatch" else "B"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])]
    model = _model(nodes, inputs, outputs, init)
    return ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(model)))


def head_images(count: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Normal ``[count, 3, 8, 8]`` images."""
    return {"x": np.random.default_rng(seed).standard_normal((count, 3, 8, 8)).astype(np.float32)}


def parallel_ffn(hidden: int = 16, inner: int = 32) -> ir.Model:
    """Two FFN branches of ``x`` summed, then the residual (GPT-J's parallel block): branch 0's down
    projection has no bias, branch 1's has one; ``y = x + down0(relu(up0 x)) + down1(relu(up1 x)) + b1``.

    Each down projection's residual skip is the other branch: branch 1's is branch 0's output,
    which gets a bias ``Add`` of its own when branch 0 is repaired.
    """
    init = [
        ("up0", weights(hidden, inner, seed=140, scale=0.3)),
        ("up_bias0", weights(inner, seed=141)),
        ("down0", weights(inner, hidden, seed=142, scale=0.3)),
        ("up1", weights(hidden, inner, seed=143, scale=0.3)),
        ("up_bias1", weights(inner, seed=144)),
        ("down1", weights(inner, hidden, seed=145, scale=0.3)),
        ("down_bias1", weights(hidden, seed=146)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "up0"], ["u0"], name="up_proj0"),
        helper.make_node("Add", ["u0", "up_bias0"], ["ub0"], name="up_bias_add0"),
        helper.make_node("Relu", ["ub0"], ["h0"], name="relu0"),
        helper.make_node("MatMul", ["h0", "down0"], ["d0"], name="down_proj0"),
        helper.make_node("MatMul", ["x", "up1"], ["u1"], name="up_proj1"),
        helper.make_node("Add", ["u1", "up_bias1"], ["ub1"], name="up_bias_add1"),
        helper.make_node("Relu", ["ub1"], ["h1"], name="relu1"),
        helper.make_node("MatMul", ["h1", "down1"], ["d1"], name="down_proj1"),
        helper.make_node("Add", ["d1", "down_bias1"], ["db1"], name="down_bias_add1"),
        helper.make_node("Add", ["d0", "db1"], ["s"], name="branch_sum"),
        helper.make_node("Add", ["s", "x"], ["y"], name="residual"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden])]
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", hidden])], init)

"""Small float models for the quantization tests, built with random (seeded) weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

RNG_SEED = 0


def _model(nodes, inputs, outputs, initializers, opset: int = 18) -> ir.Model:
    graph = helper.make_graph(nodes, "test", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers])
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    proto = helper.make_model(graph, opset_imports=imports, ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def weights(*shape: int, seed: int = RNG_SEED, scale: float = 0.1) -> np.ndarray:
    """Seeded normal weights."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def mlp(hidden: int = 32, inner: int = 64, *, gemm_trans_b: bool = False, head: bool = True) -> ir.Model:
    """``x [B, S, hidden]`` → MatMul+Add → Relu → (Gemm on 2-D | MatMul) → MatMul head ``y``.

    With ``gemm_trans_b`` the input is ``[B, hidden]`` and the middle layer a Gemm with
    a transposed weight. ``head`` adds a last MatMul producing the graph output.
    """
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="up"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="up_bias"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
    ]
    init = [("w1", weights(hidden, inner, seed=1)), ("b1", weights(inner, seed=2))]
    if gemm_trans_b:
        nodes.append(helper.make_node("Gemm", ["r1", "w2", "b2"], ["h"], name="down", transB=1))
        init += [("w2", weights(hidden, inner, seed=3)), ("b2", weights(hidden, seed=4))]
    else:
        nodes.append(helper.make_node("MatMul", ["r1", "w2"], ["h"], name="down"))
        init.append(("w2", weights(inner, hidden, seed=3)))
    out = "y" if head else "h"
    if head:
        nodes.append(helper.make_node("MatMul", ["h", "w3"], ["y"], name="head"))
        init.append(("w3", weights(hidden, 8, seed=5)))
    lead = ["B"] if gemm_trans_b else ["B", "S"]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, hidden])
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, [*lead, 8 if head else hidden])
    return _model(nodes, [x], [y], init)


def attention(hidden: int = 32, heads: int = 4, *, scale: float | None = None, unidirectional: int = 0) -> ir.Model:
    """``x`` → com.microsoft Attention (packed QKV, 2-D mask) → output MatMul ``y``."""
    attributes = {"num_heads": heads, "unidirectional": unidirectional}
    if scale is not None:
        attributes["scale"] = scale
    nodes = [
        helper.make_node("Cast", ["mask"], ["mask32"], to=TensorProto.INT32, name="cast"),
        helper.make_node(
            "Attention", ["x", "qkv", "qkv_bias", "mask32"], ["a"], domain="com.microsoft", name="attn", **attributes
        ),
        helper.make_node("MatMul", ["a", "wo"], ["o"], name="out_proj"),
        helper.make_node("Add", ["o", "x"], ["y"], name="residual"),
    ]
    init = [
        ("qkv", weights(hidden, 3 * hidden, seed=6, scale=0.2)),
        ("qkv_bias", weights(3 * hidden, seed=7)),
        ("wo", weights(hidden, hidden, seed=8)),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", "S"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", hidden])
    return _model(nodes, [x, mask], [y], init)


def convnet(channels: int = 8, *, opset: int = 18) -> ir.Model:
    """``x [B, 3, 16, 16]`` → Conv → Relu → Conv (+bias) → Relu → GlobalAveragePool → Flatten → Gemm head."""
    nodes = [
        helper.make_node("Conv", ["x", "c1", "cb1"], ["y1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["y1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2", "cb2"], ["y2"], name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["y2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="classifier", transB=1),
    ]
    init = [
        ("c1", weights(channels, 3, 3, 3, seed=9, scale=0.3)),
        ("cb1", weights(channels, seed=10)),
        ("c2", weights(channels, channels, 3, 3, seed=11, scale=0.2)),
        ("cb2", weights(channels, seed=12)),
        ("fc", weights(5, channels, seed=13)),
        ("fcb", weights(5, seed=14)),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 5])
    return _model(nodes, [x], [y], init, opset=opset)


def samples(model: ir.Model, count: int = 32, seed: int = 1, **dims: int) -> dict[str, np.ndarray]:
    """``count`` samples per float input (normal), masks of ones; symbolic dims other than the first from ``dims``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.inputs:
        shape = [count] + [d if isinstance(d, int) else dims.get(str(d), 6) for d in value.shape[1:]]
        if value.dtype == ir.DataType.FLOAT:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            feeds[value.name] = np.ones(shape, dtype=value.dtype.numpy())
    return feeds

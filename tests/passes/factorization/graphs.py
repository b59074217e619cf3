"""Small graphs for the low-rank factorization tests: projections with chosen ranks, tied and untied weights."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from passes.factorization._timing import parameter_limit
from tests.passes.pruning.graphs import _model


def low_rank(k: int, n: int, rank: int, seed: int) -> np.ndarray:
    """A ``[k, n]`` weight of exactly ``rank``."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((k, rank)) @ rng.standard_normal((rank, n)) / np.sqrt(k * rank)).astype(np.float32)


def full_rank(k: int, n: int, seed: int, decay: float = 0.97) -> np.ndarray:
    """A ``[k, n]`` weight whose singular values decay geometrically (as trained weights' roughly do)."""
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((k, k)))
    right, _ = np.linalg.qr(rng.standard_normal((n, n)))
    size = min(k, n)
    return (left[:, :size] * decay ** np.arange(size) @ right[:size] / 4).astype(np.float32)


def projections(k: int = 128, n: int = 192, *, rank: int | None = None, bias: bool = True) -> ir.Model:
    """``x [B, S, k]`` → MatMul ``up`` (+ bias) → Relu → MatMul ``down`` ``[n, k]`` → ``y``.

    Both weights have exactly ``rank`` when given (else a decaying full spectrum).
    """
    up = low_rank(k, n, rank, seed=1) if rank else full_rank(k, n, seed=1)
    down = low_rank(n, k, rank, seed=2) if rank else full_rank(n, k, seed=2)
    init = [("up", up), ("down", down)]
    nodes = [helper.make_node("MatMul", ["x", "up"], ["u"], name="up_proj")]
    if bias:
        init.append(("up_bias", (np.random.default_rng(3).standard_normal(n) * 0.1).astype(np.float32)))
        nodes.append(helper.make_node("Add", ["u", "up_bias"], ["ub"], name="up_bias_add"))
    nodes += [
        helper.make_node("Relu", ["ub" if bias else "u"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "down"], ["y"], name="down_proj"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", k])
    return _model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", k])], init)


def gemm(k: int = 128, n: int = 192, *, rank: int | None = None) -> ir.Model:
    """``x [B, k]`` → Gemm (transB, bias C) → ``y [B, n]``; the weight is stored ``[n, k]``."""
    weight = low_rank(k, n, rank, seed=4) if rank else full_rank(k, n, seed=4)
    init = [("w", weight.T.copy()), ("c", np.linspace(-1, 1, n, dtype=np.float32))]
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm", transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])
    return _model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])], init)


def tied(k: int = 128, *, gather: bool = False) -> ir.Model:
    """One ``[k, k]`` weight read by two MatMuls (``x @ W`` → Tanh → ``@ W``), or with ``gather`` by a
    MatMul and an embedding-style Gather (``W[ids]``), as a tied LM head and embedding table are."""
    weight = full_rank(k, k, seed=5)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", k])
    if gather:
        ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])
        nodes = [
            helper.make_node("Gather", ["w", "ids"], ["e"], name="embed"),
            helper.make_node("Add", ["x", "e"], ["xe"], name="add_embedding"),
            helper.make_node("MatMul", ["xe", "w"], ["y"], name="head"),
        ]
        return _model(nodes, [x, ids], [y], [("w", weight)])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="first"),
        helper.make_node("Tanh", ["a"], ["t"], name="tanh"),
        helper.make_node("MatMul", ["t", "w"], ["y"], name="second"),
    ]
    return _model(nodes, [x], [y], [("w", weight)])


def not_constant(k: int = 128) -> ir.Model:
    """A MatMul whose "weight" is computed from an input (``x @ (w * s)``): nothing to factorize offline."""
    weight = full_rank(k, k, seed=6)
    nodes = [
        helper.make_node("Mul", ["w", "s"], ["ws"], name="scale"),
        helper.make_node("MatMul", ["x", "ws"], ["y"], name="scaled_proj"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", k]),
        helper.make_tensor_value_info("s", TensorProto.FLOAT, [1]),
    ]
    return _model(
        nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", k])], [("w", weight)]
    )


def inputs(k: int, *, count: int = 16, sequence: int = 12, seed: int = 0, shape: tuple[int, ...] | None = None):
    """Correlated activations ``[count, sequence, k]`` with a mean offset: a few directions carry most energy."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).standard_normal((k, k)) * (0.9 ** np.arange(k))[:, None]
    z = rng.standard_normal((*(shape or (count, sequence)), k))
    return (z @ mixing + 0.5).astype(np.float32)


class FakeSpeed:
    """A timing cache that times nothing: faster up to ``break_even`` (default: wherever parameters shrink),
    slower above it, and slower at each rank in ``slow`` (a kernel the bisection's assumption misses)."""

    def __init__(self, break_even: int | None = None, slow: tuple[int, ...] = ()) -> None:
        self.fixed = break_even
        self.slow = set(slow)
        self.asked: list[tuple[int, int, int]] = []
        self.timed: list[tuple[int, int, int, int]] = []

    def break_even(self, k: int, n: int, m: int) -> int:
        self.asked.append((k, n, m))
        return parameter_limit(k, n) if self.fixed is None else self.fixed

    def ratio(self, k: int, n: int, r: int, m: int) -> float:
        self.asked.append((k, n, m))
        self.timed.append((k, n, r, m))
        if r in self.slow or (self.fixed is not None and r > self.fixed):
            return 1.3
        return r * (k + n) / (k * n)

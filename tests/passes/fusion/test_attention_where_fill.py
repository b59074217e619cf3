"""A ``Where(causal, scores, fill)`` mask fused into an additive bias: exact wherever the original's masked keys get
no weight (a review fed scores of size 1e4 next to GPT-2's -1e4 fill, and masked scores came back)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.runtime import run_model
from passes.fusion.attention import AttentionFusion
from tests.helpers import op_types

HIDDEN, HEADS, SEQ, TABLE = 16, 2, 8, 32
HEAD = HIDDEN // HEADS
FILL = -1e4


def _causal_where_attention() -> tuple[ir.Model, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) / 4 for name in ("wq", "wk", "wv", "wo")}
    constants = {
        **weights,
        "heads": np.array([0, 0, HEADS, HEAD], np.int64),
        "merge": np.array([0, 0, HIDDEN], np.int64),
        "scale": np.array(1 / np.sqrt(HEAD), np.float32),
        "causal": np.tril(np.ones((TABLE, TABLE), bool))[None, None],
        "fill": np.array(FILL, np.float32),
        "one": np.array([1], np.int64),
        "two": np.array([2], np.int64),
        "zeros": np.array([0, 0], np.int64),
        "last_two": np.array([2, 3], np.int64),
    }
    node = helper.make_node
    nodes = [
        *(node("MatMul", ["x", f"w{p}"], [f"{p}0"]) for p in "qkv"),
        *(node("Reshape", [f"{p}0", "heads"], [f"{p}1"]) for p in "qkv"),
        node("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3]),
        node("Transpose", ["k1"], ["kt"], perm=[0, 2, 3, 1]),
        node("Transpose", ["v1"], ["v"], perm=[0, 2, 1, 3]),
        node("MatMul", ["q", "kt"], ["s0"]),
        node("Mul", ["s0", "scale"], ["s"]),
        node("Shape", ["x"], ["shape"]),
        node("Slice", ["shape", "one", "two"], ["length"]),
        node("Concat", ["length", "length"], ["square"], axis=0),
        node("Slice", ["causal", "zeros", "square", "last_two"], ["cond"]),
        node("Where", ["cond", "s", "fill"], ["masked"]),
        node("Softmax", ["masked"], ["p"], axis=-1),
        node("MatMul", ["p", "v"], ["o0"]),
        node("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
        node("Reshape", ["o1", "merge"], ["o2"]),
        node("MatMul", ["o2", "wo"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "where_fill",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        [numpy_helper.from_array(array, name) for name, array in constants.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto), weights


def _scores(x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    def heads(w):
        return (x @ w).reshape(*x.shape[:2], HEADS, HEAD).transpose(0, 2, 1, 3)

    return heads(weights["wq"]) @ heads(weights["wk"]).transpose(0, 1, 3, 2) / np.sqrt(HEAD)


def test_a_large_masked_score_stays_masked_after_fusion():
    model, weights = _causal_where_attention()
    fused = AttentionFusion()(model.clone()).model
    assert "Softmax" not in op_types(fused)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((1, SEQ, HIDDEN)) * 100).astype(np.float32)
    scores = _scores(x, weights)
    causal = np.tril(np.ones((SEQ, SEQ), bool))
    unmasked_max = np.where(causal, scores, -np.inf).max(axis=-1)
    masked_max = np.where(causal, -np.inf, scores).max(axis=-1)
    # The case the review found: a masked score that the fill (added, not substituted) leaves above the row's
    # largest unmasked one. The contract: rows whose largest unmasked score is above fill + 104 agree.
    assert (masked_max + FILL > unmasked_max).any()
    rows = (unmasked_max > FILL + 104).all(axis=1)[0]  # a token row, over every head
    assert rows.sum() >= SEQ - 1
    expected = run_model(model, {"x": x})["y"][0, rows]
    got = run_model(fused, {"x": x})["y"][0, rows]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)

"""Hostile review (s56) of the accuracy budget (``optimizer/accuracy.py``) and its int8/int4 search
(``passes/quantization/_base.py``).

1. **An output turned from +Inf to -Inf (or to NaN) met every budget.** ``paired_drift`` returned ``Drift(0, inf)``
   only where AFTER had a NaN or Inf where BEFORE had a number; where both were non-finite, the position was simply
   left out. A quantized model whose output of signs (``k / 0``) went from +Inf to -Inf on 19 of 128 values of a
   held-out sample met ``--min-cosine 0.99 --max-error 1.0`` "on the held-out samples" and was verified, where
   ``graphopt compare --min-cosine 0.99`` on that sample fails it ("differs without bound").
2. **``Drift(0, inf)`` met ``--min-cosine 0``** (and any negative budget): the encoding of "NaN or Inf where the
   original has a number" is a cosine of 0, so a budget of 0 shipped a model whose output turned infinite
   ("budget --min-cosine 0.0 met ... cosine 0.0000, max |Δ| inf"), where compare's gates fail it at any X.
3. **The budget's per-layer SmoothQuant rewrote a layer ``--exclude`` keeps float.** ``_smooth_layers`` rescaled
   every layer reading the smoothed norm, excluded ones included: with ``--exclude k_proj`` and q_proj given
   SmoothQuant by the search, ``k_proj``'s weight was replaced by ``k_proj.smoothed_weight``; README says the
   scheme is offered "where a norm feeds only int8 layers" (and the global ``--smooth`` leaves such a norm alone).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import AccuracyBudget, Drift, paired_drift
from optimizer.api import optimize_with_report


def _w(*shape: int, seed: int, scale: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _calibration() -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((32, 8, 16)).astype(np.float32)
    x[:, 0] *= 30.0
    return x


def _signs_model(x: np.ndarray) -> onnx.ModelProto:
    """``x -> first -> Relu -> second = k``; outputs ``LayerNorm(k)`` and ``(k - c) / 0``, ``c`` just below ``k`` on
    sample 4 (held out: one in five), so that the second output is +Inf there and int8 flips some signs."""
    w1, w2 = _w(16, 32, seed=1), _w(32, 16, seed=2)
    k4 = np.maximum(x[4] @ w1, 0) @ w2
    c = (k4 - 1e-3 * np.abs(k4).max()).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["k"], name="second"),
        helper.make_node("LayerNormalization", ["k", "gamma"], ["y"], axis=-1, name="norm"),
        helper.make_node("Sub", ["k", "c"], ["g"], name="sub"),
        helper.make_node("Div", ["g", "zero"], ["z"], name="div"),
    ]
    init = {"w1": w1, "w2": w2, "gamma": np.ones(16, np.float32), "c": c, "zero": np.array(0.0, np.float32)}
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 16])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 16]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", "S", 16]),
        ],
        [numpy_helper.from_array(array, name) for name, array in init.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


# -- 1. / 2. non-finite outputs ------------------------------------------------------------------------------


def test_an_infinity_turned_to_its_opposite_or_nan_misses_the_budget():
    before = np.array([[np.inf, 1, 2, 3], [1, 2, 3, 4]], np.float32)
    for after in ([[-np.inf, 1, 2, 3], [1, 2, 3, 4]], [[np.nan, 1, 2, 3], [1, 2, 3, 4]], [[5, 1, 2, 3], [1, 2, 3, 4]]):
        drift = paired_drift([({"y": before}, {"y": np.array(after, np.float32)})])
        assert drift.max_error == np.inf, (after, drift)
        assert not AccuracyBudget(max_error=1.0).met(drift)
    same = np.array([[np.nan, 1, -np.inf, 3], [1, 2, 3, 4]], np.float32)
    assert AccuracyBudget(min_cosine=1.0).met(paired_drift([({"y": same}, {"y": same.copy()})]))


def test_an_output_gone_infinite_meets_no_budget_of_zero():
    budgets = (AccuracyBudget(min_cosine=0.0), AccuracyBudget(min_cosine=-1.0), AccuracyBudget(min_worst_cosine=0.0))
    for budget in budgets:
        assert not budget.met(Drift(0.0, float("inf")))


def test_a_quantized_output_of_signs_flipped_from_plus_to_minus_infinity_is_not_shipped():
    x = _calibration()
    model = _signs_model(x)
    optimized, report = optimize_with_report(
        model, calibration={"x": x}, quantize="dynamic", min_cosine=0.99, max_error=1.0, threads=1
    )
    before, after = _run(model, x[4:5])[1], _run(optimized, x[4:5])[1]
    flipped = int(((before == np.inf) & (after == -np.inf)).sum())
    assert flipped == 0, f"{flipped} of 'z' went from +Inf to -Inf on the held-out sample; verified={report.verified}"


# -- 3. --exclude and the budget's SmoothQuant ----------------------------------------------------------------


def _shared_norm_model() -> onnx.ModelProto:
    """``LayerNorm(x)`` (two channels scaled 40x) read by q_proj and k_proj; ``o_proj(q + k) -> Sigmoid``."""
    gamma = np.ones(32, np.float32)
    gamma[[3, 17]] = 40.0
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], axis=-1, name="ln"),
        helper.make_node("MatMul", ["n", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["n", "wk"], ["k"], name="k_proj"),
        helper.make_node("Add", ["q", "k"], ["s"], name="add"),
        helper.make_node("MatMul", ["s", "wo"], ["o"], name="o_proj"),
        helper.make_node("Sigmoid", ["o"], ["y"], name="sig"),
    ]
    init = {
        "g": gamma,
        "b": np.zeros(32, np.float32),
        "wq": _w(32, 32, seed=1),
        "wk": _w(32, 32, seed=3),
        "wo": _w(32, 32, seed=2),
    }
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 32])],
        [numpy_helper.from_array(array, name) for name, array in init.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_the_budgets_smoothquant_leaves_an_excluded_layers_weight_alone():
    model = _shared_norm_model()
    x = np.random.default_rng(0).standard_normal((30, 8, 32)).astype(np.float32)
    optimized, report = optimize_with_report(
        model, calibration={"x": x}, quantize="dynamic", min_cosine=0.9995, exclude=["k_proj"], threads=1
    )
    entry = next(record for record in report.passes if record.name == "quantize-dynamic")
    assert entry.status == "applied", entry.detail
    k_proj = next(node for node in optimized.graph.node if node.name == "k_proj")
    assert k_proj.op_type == "MatMul"
    weights = {tensor.name: tensor for tensor in optimized.graph.initializer}
    assert k_proj.input[1] == "wk", k_proj.input
    np.testing.assert_array_equal(numpy_helper.to_array(weights["wk"]), _w(32, 32, seed=3))
    assert not any("SmoothQuant" in note for note in entry.notes), entry.notes

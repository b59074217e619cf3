"""Review s59: per-sample figures of an output whose samples lie along a later axis than the first.

captcha-whisperer's CRNN (``captcha_crnn.onnx`` in the ``captcha-whisperer`` 0.1.0 wheel) returns time-major CTC
logits ``[20, batch, 37]``, as CTC recognizers commonly do. Every per-sample figure took rows along axis 0, so a
"sample" was one time step over every image: after ``--prune-channels 0.25`` compare showed worst sample 0.915966
(the worst time step); the worst image's cosine was 0.898. The accuracy budget read the same rows, so
``--min-worst-cosine`` held the worst time step, in which one image wrong at every step is diluted by the others.
The samples' axis of such an output is now the one its dim names like the input's batch.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import output_drift
from optimizer.compare.comparison import CompareSettings, compare

K, T, C, B = 6, 4, 5, 8


def _time_major(weights: np.ndarray) -> ir.Model:
    """x [batch, K] → logits [T, batch, C] (a recognizer's time-major output)."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["steps"]),
        helper.make_node("Transpose", ["steps"], ["logits"], perm=[1, 0, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "crnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [T, "batch", C])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(np.array([-1, T, C], np.int64), "shape")],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _pair() -> tuple[ir.Model, ir.Model, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, T * C)).astype(np.float32)
    broken = w.copy()
    broken[0] *= -1  # only the feature that image 0 alone carries: that image is wrong at every step
    x = rng.standard_normal((B, K)).astype(np.float32)
    x[:, 0] = 0.0
    x[0, 0] = 3.0
    return _time_major(w), _time_major(broken), {"x": x}


def _worst_image(before: ir.Model, after: ir.Model, x: dict[str, np.ndarray]) -> float:
    from optimizer.runtime import run_model

    e, a = (np.moveaxis(run_model(m, x)["logits"], 1, 0).reshape(B, -1).astype(np.float64) for m in (before, after))
    return float(((e * a).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(a, axis=1)).min())


def test_a_time_major_outputs_samples_are_found_along_its_batch_dim():
    from optimizer.samples import output_sample_axes  # new with the fix

    before, _, _ = _pair()
    assert output_sample_axes(before) == {"logits": 1}


def test_the_budget_scores_each_image_not_each_time_step():
    from optimizer.runtime import run_model

    before, after, x = _pair()
    drift = output_drift([run_model(before, x)], [run_model(after, x)], [x], before)
    assert drift.worst_cosine < 0.0  # image 0 points the other way (-0.29); the worst time step over 8 images: 0.20
    assert abs(drift.worst_cosine - _worst_image(before, after, x)) < 1e-6


def test_compare_shows_the_worst_image(tmp_path):
    before, after, x = _pair()
    report = compare(before, after, settings=CompareSettings(time_budget=0.5, iterations=5, warmup=1), inputs=x)
    (accuracy,) = report.providers[0].accuracy
    assert abs(accuracy.worst_sample_cosine - _worst_image(before, after, x)) < 1e-6

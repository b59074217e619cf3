"""A detector's one output of boxes in pixels beside class scores: the scores' errors must count.

NudeNet's YOLOv8n (``output0 [batch, 4 + 18, anchors]``) pruned by ``--prune-channels 0.25`` reported cosine 0.998
(worst sample 0.997) and was kept, while on held-out images it lost 10 of its 11 detections above 0.5: the cosine of
the whole output is its box coordinates' (RMS ~150) and does not see the class scores (RMS ~0.01).
"""

from __future__ import annotations

import numpy as np

from optimizer import accuracy
from optimizer.accuracy import AccuracyBudget, output_drift


def _detector_output(seed: int = 0, anchors: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(20.0, 300.0, size=(2, 4, anchors))
    scores = 1.0 / (1.0 + np.exp(-rng.normal(-6.0, 2.0, size=(2, 18, anchors))))
    return np.concatenate([boxes, scores], axis=1).astype(np.float32)


def test_lost_class_scores_fail_the_budget() -> None:
    before = _detector_output()
    after = before.copy()
    after[:, 4:] *= 0.1  # every detection's score cut to a tenth: no box survives a 0.25 threshold
    drift = output_drift([{"output0": before}], [{"output0": after}])
    assert drift.cosine < 0.9
    assert not AccuracyBudget(min_cosine=0.9).met(drift)
    assert "output0[4-21 along axis 1]" in str(drift)

    shuffled = before.copy()
    shuffled[:, 4:] = shuffled[:, 4:, ::-1]  # each anchor given another's class scores, norms kept
    drift = output_drift([{"output0": before}], [{"output0": shuffled}])
    assert drift.cosine < 0.9
    assert "output0[4-21 along axis 1]: values over 100x smaller" in str(drift)


def test_equal_scores_keep_the_boxes_figure() -> None:
    before = _detector_output()
    after = before.copy()
    after[:, :4] += 0.5  # half a pixel on every box: the scores are untouched
    drift = output_drift([{"output0": before}], [{"output0": after}])
    assert drift.cosine > 0.999
    assert drift.fields is None


def test_fields_laid_last_as_yolov5_does() -> None:
    before = np.moveaxis(_detector_output(), 1, 2).copy()  # [batch, anchors, 4 + classes]
    assert accuracy.small_scale_fields(before.astype(np.float64)) is not None
    after = before.copy()
    after[..., 4:] = 0.0
    assert output_drift([{"output0": before}], [{"output0": after}]).cosine < 0.5


def test_hidden_states_are_not_split() -> None:
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(2, 16, 384)) * rng.uniform(0.5, 20.0, size=384)  # outlier features, 40x apart
    assert accuracy.small_scale_fields(hidden) is None
    features = rng.normal(size=(2, 64, 100)) * np.geomspace(1.0, 50.0, 64)[None, :, None]  # no gap of 100x
    assert accuracy.small_scale_fields(features) is None


def test_compare_gives_the_fields_a_row() -> None:
    before = _detector_output()
    after = before.copy()
    after[:, 4:] = after[:, 4:, ::-1]  # each anchor given another's class scores
    rows = {item.name: item for item in accuracy.compare_accuracy({"output0": before}, {"output0": after})}
    assert rows["output0"].cosine > 0.999  # the boxes' figure, as before
    assert rows["output0[4-21 along axis 1]"].cosine < 0.9

"""A late review of the small-scale-fields rule (session 60): YOLOv8-pose's person score.

Since 20f012f the small fields had to be the last ones along the axis (silero VAD's scattered quiet LSTM units were
split off and rolled a correct int8 back). YOLOv8-pose's ``output0 [batch, 4 + 1 + 17 * 3, anchors]`` holds its
box in pixels, then the person score, then 17 keypoints of ``x, y`` in pixels and a small visibility: the score's
and the visibilities' fields are no tail, so nothing was split, and a result whose every person score was cut to a
tenth (no detection left above 0.25) scored cosine 0.9999999998 and met a 0.99 budget, the NudeNet failure again.
The fields after the leading ones may now be followed by a group of at most 3 fields repeated to the end (the
keypoints); the score is scored on its own.
"""

from __future__ import annotations

import numpy as np

from optimizer.accuracy import AccuracyBudget, output_drift, small_scale_fields


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pose_output(visibility: bool = True, anchors: int = 2100) -> np.ndarray:
    rng = np.random.default_rng(0)
    box = np.concatenate([rng.uniform(0, 640, (1, 2, anchors)), rng.uniform(5, 300, (1, 2, anchors))], axis=1)
    score = _sigmoid(rng.normal(-7.0, 2.0, (1, 1, anchors)))
    score[0, 0, :6] = 0.9  # six people
    keypoints = []
    for _ in range(17):
        keypoints += [rng.uniform(0, 640, (1, 1, anchors)), rng.uniform(0, 640, (1, 1, anchors))]
        keypoints += [_sigmoid(rng.normal(-3.0, 2.0, (1, 1, anchors)))] if visibility else []
    return np.concatenate([box, score, *keypoints], axis=1).astype(np.float32)


def test_a_pose_models_score_is_split_off() -> None:
    for visibility in (True, False):
        fields = small_scale_fields(_pose_output(visibility))
        assert fields is not None, visibility
        assert fields[0] == 1 and fields[1].tolist() == [4], visibility


def test_a_pose_model_that_lost_its_scores_fails_the_budget() -> None:
    before = _pose_output()
    after = before.copy()
    after[:, 4] *= 0.1
    drift = output_drift([{"output0": before}], [{"output0": after}])
    assert not AccuracyBudget(min_cosine=0.99).met(drift)
    assert "output0[4-4 along axis 1]" in str(drift)


def test_scattered_quiet_units_are_still_not_split() -> None:
    rng = np.random.default_rng(1)
    for quiet in (5, 34, 60):
        state = rng.normal(size=(2, 1, 128))
        state[:, :, rng.choice(128, quiet, replace=False)] *= 1e-3
        assert small_scale_fields(state) is None, quiet

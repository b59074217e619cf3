"""Review s71 (late 3): generated inputs and given data for recurrent state batches, and the compared-constant retry
at longer lengths. Each test failed before its fix.

1. A named batch beside an unnamed state batch (``input [batch, T]``, ``state [2, None, 4]`` into an LSTM's
   ``initial_h``/``initial_c``): the state's batch was drawn at 1 whatever ``batch`` was bound to, so the second
   binding (``batch=2``) was refused by ONNX Runtime's LSTM and dropped with a warning: rows were verified one at a
   time. It is drawn at the size bound to the batch dims that lead the inputs.
2. Given data for that model (``--inputs``, ``--calibration``, ``compare --inputs``): the state was not cut with the
   rows (only inputs leading with an unnamed dim linked it), so a batch of 2 windows was fed beside the state of all 5.
3. ``make_inputs(unnamed_length=...)`` (the compared-constant retry at 2x and 4x lengths) checked ``MAX_INPUT_BYTES`` at
   the default length: an input with unnamed dims past the first was drawn 4x as long on every such axis unchecked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optimizer import api, inputs
from optimizer.errors import InputSpecError
from optimizer.inputs import make_inputs
from optimizer.pipeline import STATUS_ROLLED_BACK
from optimizer.samples import hold_out, holds_samples, split_samples
from tests.helpers import optimize_with_rewrite
from tests.test_review_s71_silero import _HIDDEN, _sr_branches, _state_through_if_into_lstm


def _named_batch_beside_unnamed_state():
    proto = _state_through_if_into_lstm()
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    return proto


def test_an_unnamed_state_batch_is_drawn_at_the_named_batch_size():
    model = ir.from_proto(_named_batch_beside_unnamed_state())
    assert make_inputs(model)["state"].shape == (2, 1, _HIDDEN)
    assert make_inputs(model, {"batch": 2})["state"].shape == (2, 2, _HIDDEN)


def test_the_second_binding_of_a_named_batch_beside_an_unnamed_state_is_verified():
    _, report = api.optimize_with_report(_named_batch_beside_unnamed_state(), ["fold-constants"])
    assert report.verified
    assert "generated, second binding (batch=2)" in report.input_sets, (report.input_sets, report.warnings)
    assert not report.warnings, report.warnings


def test_given_rows_beside_a_named_batch_cut_the_unnamed_state_with_them():
    model = ir.from_proto(_named_batch_beside_unnamed_state())
    assert holds_samples(model).axis("state") == 1
    rng = np.random.default_rng(0)
    arrays = {
        "input": rng.standard_normal((5, 64)).astype(np.float32),
        "state": rng.standard_normal((2, 5, _HIDDEN)).astype(np.float32),
    }
    parts = split_samples(arrays, 2, model)
    assert [part["state"].shape[1] for part in parts] == [2, 2, 1], [p["state"].shape for p in parts]
    # Held out so too: row i of the state stays with row i of the audio.
    fitted, held = hold_out([arrays], model)
    (batch,) = list(held)
    assert batch["input"].shape[0] == batch["state"].shape[1] == 1
    np.testing.assert_array_equal(batch["state"][:, 0], arrays["state"][:, 4])
    np.testing.assert_array_equal(batch["input"][0], arrays["input"][4])


def test_longer_unnamed_lengths_are_held_to_the_input_size_limit(monkeypatch: pytest.MonkeyPatch):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "unnamed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, None])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    # 128 x 128 floats fit; 512 x 512 (the retry's 4x) take 16 times as much.
    monkeypatch.setattr(inputs, "MAX_INPUT_BYTES", 2 * 128 * 128 * 4)
    assert make_inputs(model)["x"].shape == (1, 128, 128)
    with pytest.raises(InputSpecError, match="limit"):
        make_inputs(model, unnamed_length=512)


def _sequence_major_gru():
    """``x [None, None, 8]`` into a GRU as it is (sequence-major: steps along axis 0, rows along 1) beside its
    ``h0 [1, None, 4]``."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("GRU", ["x", "W", "R", "", "", "h0"], ["y", "y_h"], hidden_size=_HIDDEN),
            helper.make_node("ReduceMean", ["y"], ["level"], axes=[0, 1, 3], keepdims=0),
        ],
        "sequence_major",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 8]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, None, _HIDDEN]),
        ],
        [helper.make_tensor_value_info("level", TensorProto.FLOAT, [None])],
        [
            helper.make_tensor("W", TensorProto.FLOAT, [1, 3 * _HIDDEN, 8], rng.standard_normal(3 * _HIDDEN * 8)),
            helper.make_tensor("R", TensorProto.FLOAT, [1, 3 * _HIDDEN, _HIDDEN], rng.standard_normal(3 * _HIDDEN**2)),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def test_given_steps_of_a_sequence_major_input_stay_with_their_rows():
    # Before: x cut along its steps (axis 0), h0 along its rows (axis 1): 2 steps of 5 rows beside 2 rows of state.
    model = _sequence_major_gru()
    holds = holds_samples(model)
    assert (holds.axis("x"), holds.axis("h0")) == (1, 1)
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.standard_normal((6, 5, 8)).astype(np.float32),
        "h0": rng.standard_normal((1, 5, _HIDDEN)).astype(np.float32),
    }
    parts = split_samples(arrays, 2, model)
    assert [(part["x"].shape, part["h0"].shape) for part in parts] == [
        ((6, 2, 8), (1, 2, _HIDDEN)),
        ((6, 2, 8), (1, 2, _HIDDEN)),
        ((6, 1, 8), (1, 1, _HIDDEN)),
    ]
    np.testing.assert_array_equal(parts[2]["x"][:, 0], arrays["x"][:, 4])


def test_the_longer_set_stays_within_max_sequence():
    # Before: beside --max-sequence 128 (a fusion's tables baked for 128 samples), a set of 256 was drawn.
    model = _sr_branches()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "samples"
    _, report = api.optimize_with_report(model, ["remove-identity", "fuse-rotary-embedding"], max_sequence=128)
    assert not any("longer lengths" in label for label in report.input_sets), report.input_sets
    assert any("'sr' at 16000" in w and "was not verified" in w for w in report.warnings), report.warnings


def _max_over_16k_frames(model: ir.Model) -> None:
    """The 16 kHz branch's mean over frames made a max: the same on one frame (256 samples), wrong on two."""
    branch = next(node for node in model.graph if node.op_type == "If").attributes["then_branch"].as_graph()
    next(node for node in branch if node.op_type == "ReduceMean").op_type = "ReduceMax"


def test_a_rewrite_wrong_past_the_first_longer_length_is_rolled_back(tmp_path: Path):
    # Before: the retry stopped at the first length the model took (256 samples, one 16 kHz frame).
    report = optimize_with_rewrite(_sr_branches(), _max_over_16k_frames, tmp_path)
    assert report.passes[0].status == STATUS_ROLLED_BACK, (report.passes[0].detail, report.input_sets)
    assert any("held at longer lengths (input [1, 512]" in label for label in report.input_sets), report.input_sets

"""Review s68 (late9b): hostile review of the session's figures, hold-out and generated samples.

1. An input that leads with an unnamed dim (``X [None, 4]``) whose rows must agree with an input's named batch
   (``Z [N, 8]``, joined by a ``Concat`` along axis 1) was verified on one row only: the second binding (N=2, X at
   one row) and the set of two rows along the unnamed dim (X at two rows, N=1) were both dropped, the original
   failing on them, so a rewrite that mixed the rows verified (``optimizer.api._add_unnamed_rows``). Fixed: where the
   original fails on the two rows, the inputs that lead with a named batch held at one row are joined too.
2. Fixed. A ``*_lens`` length trimmed an axis only where every row held exactly one value past its length
   (``_one_value_past``, 0ad56dc): a clip zero-padded and then dithered (1e-5 noise) held none, so the same clips
   padded to two widths were distinct samples (``shared_samples`` 0 of 3; before 0ad56dc, 3), and hold-out could put
   one padding among the fitted samples and the other among the held-out ones. Values past a length within a
   thousandth of the row's content are its padding now; content past it (NeMo's mel bins) is still not.
3. Fixed. The same model as 1 without ``--calibration``: every approximate pass was refused ("ONNX Runtime cannot
   run the original model on generated calibration samples ... 16 and 1"): Z drawn at N=16 and X at its one unnamed
   row. Beside an unnamed leading dim the named batch is drawn one row a draw too, 16 draws stacked.
4. Fixed. A figure after a pass fitted to the very samples it is checked on (a pruning repair on one sample, static
   int8's ranges without a budget) said nothing of that fit: ``quantize-dynamic`` after a one-sample ``prune-ffn``
   read "the 1 calibration sample", though its cosine, against the original, holds the repair fitted to that sample
   (and the last pass's cosine is the model's). Later figures now say "which the result of prune-ffn was fitted to".
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import optimize_with_rewrite

# -- 1. unnamed rows that must agree with a named batch --------------------------------------------------------------


def _rows_beside_a_batch() -> onnx.ModelProto:
    """``Concat(Relu(X @ W), Z, axis=1)``: ``X [None, 4]`` and ``Z [N, 8]`` hold the same rows."""
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Concat", ["r", "Z"], ["Y"], axis=1),
        ],
        "rows",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["N", 8]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 16])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _mix_rows(model: ir.Model) -> None:
    """``Relu(h)`` → ``Relu(h) + (h - ReduceMean(h, axis 0))``: the same on one row, wrong on more."""
    relu = next(node for node in model.graph if node.op_type == "Relu")
    hidden, output = relu.inputs[0], relu.outputs[0]
    mean = ir.node("ReduceMean", [hidden], attributes={"axes": [0], "keepdims": 1})
    centred = ir.node("Sub", [hidden, mean.outputs[0]])
    total = ir.node("Add", [output, centred.outputs[0]])
    model.graph.insert_after(relu, [mean, centred, total])
    for user, index in list(output.uses()):
        if user is not total:
            user.replace_input_with(index, total.outputs[0])


def test_rows_that_must_agree_with_a_named_batch_are_verified_at_two_rows(tmp_path):
    report = optimize_with_rewrite(_rows_beside_a_batch(), _mix_rows, tmp_path)
    record = report.passes[-1]
    # Before: applied, verified on "generated (N=1)" alone (both sets of two rows dropped: Concat's rows disagreed).
    assert record.status == "rolled back", (record.status, list(report.input_sets), report.warnings)


def test_a_right_rewrite_on_rows_beside_a_named_batch_still_verifies_on_two_rows(tmp_path):
    """A guard of fix 1: the set of two rows joins the named batch too, and an exact rewrite verifies on it."""

    def nothing(model: ir.Model) -> None:
        relu = next(node for node in model.graph if node.op_type == "Relu")
        relu.name = "renamed"

    report = optimize_with_rewrite(_rows_beside_a_batch(), nothing, tmp_path)
    assert report.passes[-1].status in ("applied", "unchanged"), report.passes[-1].detail
    assert "generated, two rows along unnamed leading dims (N=2)" in report.input_sets, list(report.input_sets)


# -- 2. a length beside a dithered clip -----------------------------------------------------------------------------


def _waveform_encoder() -> ir.Model:
    """``waveforms [B, T]`` and ``waveforms_lens [B]``: a mean over each clip's samples."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["waveforms", "axis"], ["total"], keepdims=0),
            helper.make_node("Cast", ["waveforms_lens"], ["count"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["total", "count"], ["outputs"]),
        ],
        "encoder",
        [
            helper.make_tensor_value_info("waveforms", TensorProto.FLOAT, ["B", "T"]),
            helper.make_tensor_value_info("waveforms_lens", TensorProto.INT64, ["B"]),
        ],
        [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, ["B"])],
        [numpy_helper.from_array(np.array([1], np.int64), "axis")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_the_same_dithered_clips_padded_to_two_lengths_are_the_same_samples():
    from optimizer.samples import shared_samples

    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (300, 500, 700)]
    lengths = np.array([len(clip) for clip in clips], np.int64)

    def padded(width: int) -> dict[str, np.ndarray]:
        x = 1e-5 * rng.standard_normal((len(clips), width)).astype(np.float32)  # dither, padding included
        for row, clip in enumerate(clips):
            x[row, : len(clip)] = clip
        return {"waveforms": x, "waveforms_lens": lengths}

    # Before: 0 (no one value past each length, so the length cut nothing: each padding its own sample); 3 with the
    # padding zeros, and before 0ad56dc with it dithered.
    assert shared_samples(padded(800), padded(900), _waveform_encoder()) == 3


# -- 3. generated calibration rows beside a named batch ----------------------------------------------------------


def test_generated_calibration_rows_beside_a_named_batch_are_drawn_one_row_a_draw():
    from optimizer.api import optimize_with_report

    # Before: InputSpecError "ONNX Runtime cannot run the original model on generated calibration samples (... Axis 0
    # has mismatched dimensions of 16 and 1)": Z drawn at N=16, X at its one unnamed row.
    _, report = optimize_with_report(
        ir.from_proto(_rows_beside_a_batch()), passes=["quantize-static"], quantize="static"
    )
    (record,) = report.passes
    assert record.status == "applied", record.detail
    assert record.accuracy_on.startswith("the 16 generated samples"), record.accuracy_on


# -- 4. a later figure on the samples an earlier pass fitted to ----------------------------------------------------


def test_a_figure_after_a_pass_fitted_to_the_one_sample_says_that_fit_is_in_it():
    from optimizer.api import optimize_with_report
    from tests.passes.pruning.graphs import ffn_stack

    x = np.random.default_rng(0).standard_normal((1, 8, 16)).astype(np.float32)
    _, report = optimize_with_report(
        ffn_stack((1.0, 1.0), hidden=16, inner=64),
        passes=["prune-ffn", "quantize-dynamic"],
        calibration={"x": x},
        quantize="dynamic",
        prune_ffn=0.25,
        importance="activation",
    )
    pruned, quantized = report.passes
    assert pruned.status == quantized.status == "applied", (pruned.detail, quantized.detail)
    assert pruned.accuracy_on == "the 1 calibration sample, which ranking and repair fit too (an optimistic figure)"
    # Before: "the 1 calibration sample", the model's final cosine (against the original, the repair in it) on the
    # very sample the repair was fitted to, unsaid.
    assert quantized.accuracy_on == (
        "the 1 calibration sample, which the result of prune-ffn was fitted to (an optimistic figure)"
    ), quantized.accuracy_on

"""A hostile review of low-rank factorization (session 57).

Findings, each fixed and tested here:

1. A pass after one fitted to the calibration samples (int8 or int4 after ``--lowrank`` or pruning, without a user
   budget) was held to the default floor on every sample, the fitted ones included, and the report showed its
   cosine there: ``--lowrank 0.4 --quantize dynamic`` reported 0.9819 for the factors on the held-out samples and
   then 0.9868 for the int8 result, which scored 0.9817 on them. ``--lowrank 0.78 --quantize int4 --block-size 128``
   shipped verified at 0.910 where the held-out samples gave 0.898, under the 0.9 floor. Every approximate pass
   after an applied fitted one is now measured on the held-out samples too.
2. Factorizing a model again (a second ``PassManager`` step, or ``--lowrank`` on a file ``--lowrank`` wrote) named
   a new node ``<layer>_low_rank`` beside the one already there: ONNX Runtime refused the result ("two nodes with
   same node name") and the pass failed or was rolled back. New names are now unique.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.api import optimize_with_report
from optimizer.runtime import drift_of, run_batches, run_model
from optimizer.samples import hold_out, split_samples
from passes.factorization import lowrank
from passes.factorization.lowrank import LowRankFactorizationPass
from tests.passes.factorization import graphs
from tests.passes.factorization.graphs import FakeSpeed
from tests.passes.pruning.graphs import ffn


def _held_out_drift(original: ir.Model, result: ir.Model, calibration: dict):
    held = list(hold_out(split_samples(calibration, model=original), original)[1])
    return drift_of(result, held, run_batches(original, held))


def test_a_pass_after_a_fitted_factorization_is_checked_on_the_held_out_samples(monkeypatch):
    monkeypatch.setattr(lowrank, "MeasuredSpeed", lambda target, threads=None: FakeSpeed())
    calibration = {"x": graphs.inputs(128, count=20, sequence=2)}  # few rows a sample: the fit shows
    model = ffn(hidden=128, inner=256)
    original = model.clone()
    result, report = optimize_with_report(
        model, lowrank=0.78, quantize="int4", block_size=128, calibration=calibration, raise_errors=True
    )
    records = {record.name: record for record in report.passes}
    assert records["factorize-lowrank"].status == "applied"
    assert 0.9 <= records["factorize-lowrank"].cosine < 0.91
    # The int4 result misses the default floor on the samples the factors were not fitted to: it was verified at
    # 0.910 on all of them.
    int4 = records["quantize-int4"]
    assert int4.status == "rolled back", (int4.status, int4.cosine)
    assert "held out of an earlier pass's fit misses the accuracy budget" in int4.detail
    assert _held_out_drift(original, result, calibration).cosine >= 0.9


def test_the_int8_figure_after_factorization_is_the_held_out_one(monkeypatch):
    monkeypatch.setattr(lowrank, "MeasuredSpeed", lambda target, threads=None: FakeSpeed())
    calibration = {"x": graphs.inputs(128, count=20)}
    model = ffn(hidden=128, inner=256)
    original = model.clone()
    result, report = optimize_with_report(
        model, lowrank=0.4, quantize="dynamic", calibration=calibration, raise_errors=True
    )
    records = {record.name: record for record in report.passes}
    assert records["factorize-lowrank"].status == records["quantize-dynamic"].status == "applied"
    held = _held_out_drift(original, result, calibration)
    assert abs(records["quantize-dynamic"].cosine - held.cosine) < 1e-6  # was 0.9868 on all, 0.9817 held out
    assert records["quantize-dynamic"].cosine <= records["factorize-lowrank"].cosine + 1e-4


def test_a_factorized_model_factorizes_again():
    model = graphs.projections(k=256, n=384)
    original = model.clone()
    x = graphs.inputs(256, count=20, sequence=4)
    result = ir.passes.PassManager([LowRankFactorizationPass(0.3, samples={"x": x}, speed=FakeSpeed())], steps=2)(
        model
    )  # failed: "two nodes with same node name (up_proj_low_rank)"
    names = [node.name for node in result.model.graph]
    assert len(names) == len(set(names)) and names.count("up_proj_low_rank_low_rank") == 1
    outputs = [value.name for node in result.model.graph for value in node.outputs]
    assert len(outputs) == len(set(outputs))
    assert sum(node.op_type == "MatMul" for node in result.model.graph) == 8  # each factor factorized again
    expected, got = run_model(original, {"x": x[:2]})["y"], run_model(result.model, {"x": x[:2]})["y"]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.1


def test_data_ranked_lowrank_without_calibration_is_refused_as_pruning_is(tmp_path):
    # --lowrank 0.3 --importance activation without --calibration ended "unchanged" with exit 0, the reason under
    # -v only, where the same request with --prune-ffn was an error (exit 2).
    from optimizer.api import refuse_conflicts
    from optimizer.errors import OptionError
    from optimizer.options import Options

    with pytest.raises(OptionError, match="--importance activation needs --calibration data: without it low-rank"):
        refuse_conflicts(None, Options(lowrank=0.3, importance="activation"), False, False)
    refuse_conflicts(None, Options(lowrank=0.3, importance="activation"), False, True)  # with data: fine

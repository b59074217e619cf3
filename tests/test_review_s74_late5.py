"""Review s74 (late5): the accuracy budgets fed the same draws (``optimizer.draws.budget_references``,
``FedBudgetRuns.candidate_runs``) on a float16 result. ``Draw.differs`` compared a Dropout's constant ratio with its
dtype, so ``convert-float16``'s ratio 0.5 (float16) was "ratio 0.5 → 0.5": the budget left the Dropout's output out
and verification rolled the pass back as changing the draw; fed, the mask was cast to the original's float32 beside
float16 data (ONNX Runtime refuses the ``Mul``), and the Dropout's data, exposed to be compared, was float16 against
the twin's float32 ("dtype float16 instead of float32"): a correct ``convert-float16`` was rolled back.

``passes._kernel_timing.OneModel`` serialized a model whose weights are still external data (a torch 2.13 export, a
``.data`` file beside it) with their absolute location, which ONNX Runtime refuses: ``--quantize static`` of a small CNN
so exported was rolled back, "ONNX Runtime cannot run the result: External data path validation failed".

And an approximate pass of a model whose every output is drawn (a training-mode transformer exported by torch 2.13)
met its budget in its own search, fed, and was rolled back by the pipeline, whose check of it on held-out samples left
drawn outputs out (``Verifier.check_twin`` refused such a model): a strict xfail here until review s75 xfix, where
that check feeds the original's draws to both models.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.draws import budget_references
from optimizer.runtime import drift_of

_N = helper.make_node


def _inner_dropout() -> ir.Model:
    """``y = Dropout(x @ W1, 0.5, training=True) + x`` beside ``z = x @ W2``: the Dropout's output is no graph output,
    so ``convert-float16`` keeps its name (and its draw's key)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            _N("MatMul", ["x", "W1"], ["h"]),
            _N("Dropout", ["h", "ratio", "training"], ["d"]),
            _N("Add", ["d", "x"], ["y"]),
            _N("MatMul", ["x", "W2"], ["z"]),
        ],
        "inner_dropout",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 8]) for name in ("y", "z")],
        [
            numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W1"),
            numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W2"),
            numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
            numpy_helper.from_array(np.array(True), "training"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


_BATCHES = [{"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)} for _ in range(2)]


def test_a_float16_result_is_measured_on_the_drawn_output_fed_the_same_masks():
    from passes.quantization.float16 import Float16Pass

    model = _inner_dropout()
    reference = budget_references(model, _BATCHES)
    assert all(set(run) == {"y", "z"} for run in reference)
    half = Float16Pass()(model.clone()).model
    expected, runs = reference.candidate_runs(half, _BATCHES)
    assert all(set(run) == {"y", "z"} for run in expected), "the float16 result's Dropout output was left out"
    drift = drift_of(half, _BATCHES, reference)
    assert drift.cosine > 0.999 and drift.max_error < 0.05, drift  # float16 rounding, the same masks


def test_a_wrong_float16_result_on_the_drawn_output_alone_misses_the_budget():
    from passes.quantization.float16 import Float16Pass

    model = _inner_dropout()
    reference = budget_references(model, _BATCHES)
    half = Float16Pass()(model.clone()).model
    weight = half.graph.initializers["W1"]
    weight.const_value = ir.tensor(-weight.const_value.numpy())  # wrong on the path to the Dropout alone
    assert drift_of(half, _BATCHES, reference).cosine < 0.9


def test_convert_float16_of_a_model_with_a_training_mode_dropout_is_applied():
    from optimizer.api import optimize_with_report

    _, report = optimize_with_report(
        _inner_dropout(), ["convert-float16"], fp16=True, target="cuda", dims={"batch": 2}, min_cosine=0.99
    )
    (record,) = [record for record in report.passes if record.name == "convert-float16"]
    assert record.status == "applied", record.detail


def _all_drawn() -> ir.Model:
    """``y = Dropout(x @ W, 0.1, training=True)``: the model's only output is drawn."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [_N("MatMul", ["x", "W1"], ["h"]), _N("Dropout", ["h", "ratio", "training"], ["y"])],
        "all_drawn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [
            numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "W1"),
            numpy_helper.from_array(np.array(0.1, np.float32), "ratio"),
            numpy_helper.from_array(np.array(True), "training"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


def test_int8_of_a_model_whose_every_output_is_drawn_is_applied_where_its_draws_are_fed():
    from optimizer.api import optimize_with_report

    _, report = optimize_with_report(
        _all_drawn(), ["quantize-dynamic"], quantize="dynamic", dims={"batch": 2}, min_cosine=0.99
    )
    (record,) = [record for record in report.passes if record.name == "quantize-dynamic"]
    assert any("cosine 0.99" in note for note in record.notes), record.notes  # the search's own figure, fed
    assert record.status == "applied", record.detail


def test_a_model_with_external_weights_is_timed(tmp_path):
    from passes._kernel_timing import OneModel

    model = _inner_dropout()
    ir.save(model, tmp_path / "m.onnx", external_data="m.onnx.data", size_threshold_bytes=0)
    loaded = ir.load(tmp_path / "m.onnx")
    assert any(isinstance(value.const_value, ir.ExternalTensor) for value in loaded.graph.initializers.values())
    OneModel(loaded, _BATCHES[0], "cpu", 1, "time the float model")  # was: RuntimeRefusedError (absolute path)
    assert isinstance(loaded.graph.initializers["W1"].const_value, ir.ExternalTensor)  # the caller's left as it was

"""factorize-lowrank: exact on rank-deficient weights, activation-aware and repaired on data, budgeted, tied
weights factorized once, readable refusals, composition with pruning and int8; nothing here times anything
(the timing cache is replaced by ``FakeSpeed``, or given a fake ``measure``)."""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.accuracy import AccuracyBudget, output_drift
from optimizer.api import optimize_with_report
from optimizer.errors import OptionError
from optimizer.parameters import count_parameters as parameter_count
from optimizer.runtime import run_batches, run_model
from passes.factorization import lowrank
from passes.factorization._timing import MeasuredSpeed, parameter_limit
from passes.factorization.lowrank import LowRankFactorizationPass
from tests.passes.factorization import graphs
from tests.passes.factorization.graphs import FakeSpeed
from tests.passes.pruning.twins import assert_differs_from_twin, assert_matches_twin, replace_weight

K = 128


def _outputs(model: ir.Model, x: np.ndarray) -> np.ndarray:
    return run_model(model, {"x": x})["y"].astype(np.float64)


def _relative_error(model: ir.Model, original: ir.Model, x: np.ndarray) -> float:
    expected = _outputs(original, x)
    return float(np.linalg.norm(_outputs(model, x) - expected) / np.linalg.norm(expected))


def _factorize(model: ir.Model, ratio: float, **options):
    options.setdefault("speed", FakeSpeed())
    return LowRankFactorizationPass(ratio, **options)(model)


@pytest.mark.parametrize("with_data", [False, True])
def test_rank_deficient_weights_factorize_with_no_error(with_data):
    """A rank-16 weight at rank 38 (ratio 0.5) is reproduced exactly, with or without data."""
    model = graphs.projections(rank=16)
    original = model.clone()
    x = graphs.inputs(K)
    samples = {"x": x} if with_data else None
    result = _factorize(model, 0.5, samples=samples)
    ops = [node.op_type for node in result.model.graph]
    assert ops == ["MatMul", "MatMul", "Add", "Relu", "MatMul", "MatMul"]
    assert "up" not in result.model.graph.initializers and "down" not in result.model.graph.initializers
    assert parameter_count(result.model) < parameter_count(original) / 2 + 200  # the bias stays
    np.testing.assert_allclose(_outputs(result.model, x), _outputs(original, x), rtol=1e-4, atol=1e-5)
    assert_matches_twin(result, {"x": x}, {"x": graphs.inputs(K, seed=5, shape=(2, 3))})
    assert any(note.startswith("rank 38 of 128×192: 24,576 → 12,160 parameters") for note in result.notes)
    assert any("plain SVD" in note for note in result.notes) != with_data
    # Exact factors: the repair has nothing to do, and the report does not say "after repair".
    assert not any("after repair" in note or note.startswith("without repair") for note in result.notes)
    assert not any(note.startswith("repair:") for note in result.notes)  # exact: nothing for it to try


def test_gemm_with_transposed_weight_and_bias_factorizes_exactly():
    model = graphs.gemm(rank=8)
    original = model.clone()
    x = graphs.inputs(K, shape=(6,))
    result = _factorize(model, 0.5, samples={"x": graphs.inputs(K, shape=(64,))})
    gemm = next(node for node in result.model.graph if node.op_type == "Gemm")
    assert gemm.attributes.get_int("transB") == 1 and gemm.inputs[0].producer().op_type == "MatMul"
    np.testing.assert_allclose(_outputs(result.model, x), _outputs(original, x), rtol=1e-4, atol=1e-4)
    assert_matches_twin(result, {"x": x})


def test_a_wrongly_wired_realization_differs_from_the_twin():
    model = graphs.projections()
    x = graphs.inputs(K)
    result = _factorize(model, 0.5, samples={"x": x})
    wrong = replace_weight(result.model, "up_proj", lambda v: v[::-1].copy())  # V's rows swapped
    assert_differs_from_twin(wrong, result, {"x": x})


def test_activation_aware_beats_plain_svd_on_held_out_rows():
    """Whitening by the input covariance spends the rank where the inputs are: lower output error on new rows."""
    model = graphs.projections()
    calibration, held_out = graphs.inputs(K, count=32), graphs.inputs(K, seed=11)
    errors = {}
    for importance in ("magnitude", "activation"):
        result = _factorize(model.clone(), 0.7, samples={"x": calibration}, importance=importance, repair=False)
        errors[importance] = _relative_error(result.model, model, held_out)
    assert errors["activation"] < 0.7 * errors["magnitude"], errors


@pytest.mark.parametrize("importance", ["magnitude", "activation"])
@pytest.mark.parametrize("ratio", [0.3, 0.85])
@pytest.mark.parametrize("count", [2, 32])
def test_repair_is_never_worse_than_no_repair_on_held_out_rows(importance, ratio, count):
    """The re-fit of V and the bias is kept only where it helps on held-out calibration rows: on new rows
    it is never worse than the factors alone, with few samples (2 sequences) or more."""
    model = graphs.projections()
    calibration, held_out = graphs.inputs(K, count=count, seed=1), graphs.inputs(K, count=16, seed=12)
    errors = {}
    for repair in (False, True):
        result = _factorize(model.clone(), ratio, samples={"x": calibration}, importance=importance, repair=repair)
        errors[repair] = _relative_error(result.model, model, held_out)
    assert errors[True] <= errors[False] * 1.001, errors


def test_repair_reports_what_it_bought():
    model = graphs.projections()
    x = graphs.inputs(K, count=32)
    result = _factorize(model, 0.7, samples={"x": x}, importance="magnitude")
    assert any(note.startswith("without repair: cosine") for note in result.notes)
    assert any("after repair" in note for note in result.notes)
    assert_matches_twin(result, {"x": x})


@pytest.mark.parametrize("min_cosine", [0.995, 0.9995])
def test_budget_is_met_with_ranks_chosen_per_layer(min_cosine):
    model = graphs.projections()
    original = model.clone()
    x = graphs.inputs(K, count=32)
    budget = AccuracyBudget(min_cosine=min_cosine)
    reference = run_batches(original, [{"x": x}])
    unbudgeted = _factorize(model.clone(), 0.9, samples={"x": x})
    assert not budget.met(output_drift(reference, run_batches(unbudgeted.model, [{"x": x}])))
    result = _factorize(model, 0.9, samples={"x": x}, budget=budget)
    drift = output_drift(reference, run_batches(result.model, [{"x": x}]))
    assert result.modified and budget.met(drift), drift
    assert any(note.startswith(f"budget --min-cosine {min_cosine:g}: per-layer output error") for note in result.notes)
    assert_matches_twin(result, {"x": x})
    assert parameter_count(original) > parameter_count(result.model) > parameter_count(unbudgeted.model)


@pytest.mark.parametrize("count", [10, 40])
def test_budget_is_checked_on_samples_the_factors_were_not_fitted_to(count):
    """Four rows per sample, 40 or 160 in all, of 128 dims: factors whitened by so few rows reproduce those
    rows almost exactly at any rank near their count, so a budget checked on them is met by the fit, not by
    the layer (on these samples it claimed cosine 0.9998 where new rows gave 0.991). The budget is searched
    on the one sample in five held out of the fit, and holds on rows neither has seen."""
    model = graphs.projections()
    original = model.clone()
    calibration, fresh = graphs.inputs(K, count=count, sequence=4, seed=1), graphs.inputs(K, count=16, seed=12)
    budget = AccuracyBudget(min_cosine=0.999)
    result = _factorize(model, 0.5, samples={"x": calibration}, budget=budget)
    drift = output_drift(run_batches(original, [{"x": fresh}]), run_batches(result.model, [{"x": fresh}]))
    assert drift.cosine >= 0.998, drift
    if result.modified:
        assert any(
            re.search(r"on the \d+ held-out calibration samples? \(one in 5, at least one; not fitted to\)", n)
            for n in result.notes
        )


def test_with_one_sample_a_budget_gets_factors_fitted_to_nothing():
    """With two to four samples the last is held out; with one, nothing can be, and a budget then gets plain
    SVD without repair rather than factors checked on the rows they were fitted to."""
    model = graphs.projections()
    one = graphs.inputs(K, count=1, sequence=48)
    result = _factorize(model, 0.5, samples={"x": one}, budget=AccuracyBudget(min_cosine=0.9))
    assert any(note.startswith("one calibration sample (batch, where the model fixes") for note in result.notes)
    assert any("plain SVD" in note for note in result.notes)
    assert not any(node.name.endswith("_bias_change") for node in result.model.graph)
    unbudgeted = _factorize(graphs.projections(), 0.5, samples={"x": one})
    assert any("fitted to (none held out: an optimistic figure)" in n for n in unbudgeted.notes)
    four = _factorize(graphs.projections(), 0.5, samples={"x": graphs.inputs(K, count=4)})
    assert any(re.search(r"on the \d+ held-out calibration samples? \(one in 5", n) for n in four.notes)


def test_a_rank_the_bisection_thought_fast_is_timed_itself_before_it_is_written():
    """The budget search picks ranks above the floor (7 at ratio 0.9); the timing cache's break-even assumes
    fewer ranks are faster. A layer whose chosen rank measured slower stays whole, says so with the figure,
    and the budget's note counts what was written, not what the search chose."""
    model = graphs.projections()
    speed = FakeSpeed(slow=tuple(range(8, 120)))  # every rank above the floor measures 1.3x
    x = graphs.inputs(K, count=32)
    result = _factorize(model, 0.9, samples={"x": x}, budget=AccuracyBudget(min_cosine=0.9995), speed=speed)
    assert not result.modified
    for shape in ("128×192", "192×128"):
        assert any(
            f"of {shape} measured no faster on cpu at 1 row (1.30x the whole MatMul)" in refusal
            for refusal in result.refusals
        ), result.refusals
    budget = next(note for note in result.notes if note.startswith("budget --min-cosine 0.9995"))
    assert budget.endswith("(0 of 2 weights factorized)"), budget
    assert {r for _, _, r, _ in speed.timed} - {7} <= speed.slow and len({r for _, _, r, _ in speed.timed}) >= 3


def test_target_cuda_without_cuda_times_nothing_and_says_why(monkeypatch):
    monkeypatch.setattr(lowrank, "cuda_unavailable_reason", lambda: "onnxruntime-gpu is not installed")
    measured = []
    monkeypatch.setattr(lowrank, "MeasuredSpeed", lambda target, threads=None: measured.append(target))
    result = LowRankFactorizationPass(0.5, target="cuda")(graphs.projections())
    assert not result.modified and not measured
    assert result.refusals == [
        "--target cuda: a layer is factorized only where it is measured faster on the target, "
        "and CUDA cannot be timed here: onnxruntime-gpu is not installed"
    ]


def test_a_kernel_timing_on_cuda_without_cuda_is_refused_not_run_on_the_cpu(monkeypatch, tmp_path):
    from optimizer.errors import RuntimeRefusedError
    from passes import _kernel_timing

    monkeypatch.setattr(_kernel_timing, "cuda_unavailable_reason", lambda: "no GPU is usable")
    speed = MeasuredSpeed("cuda", 2, path=tmp_path / "cache.json")
    with pytest.raises(RuntimeRefusedError, match="cannot time a kernel on CUDA: no GPU is usable"):
        speed.ratio(128, 192, 8, 1)
    assert not (tmp_path / "cache.json").exists()


def test_cuda_timings_are_filed_under_the_gpu_they_ran_on(monkeypatch):
    from passes import _kernel_timing

    monkeypatch.setattr(_kernel_timing, "gpu_name", lambda: "NVIDIA H200")
    assert "|cuda on NVIDIA H200|2 threads" in _kernel_timing.runtime_key("cuda", 2)
    assert _kernel_timing.runtime_key("cpu", 2).endswith("|cpu|2 threads")


def test_padded_positions_are_not_layer_inputs():
    """Rows at padded positions (attention_mask 0) count neither in the covariance nor in the sampled rows."""
    model = graphs.projections()
    mask = ir.Value(name="attention_mask", shape=ir.Shape(["B", "S"]), type=ir.TensorType(ir.DataType.INT64))
    model.graph.inputs.append(mask)
    x = graphs.inputs(K, count=3, sequence=5)
    attention = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=np.int64)
    groups = LowRankFactorizationPass(0.5, speed=FakeSpeed())._candidates(model.graph)
    layers = [layer for group in groups for layer in group.layers]
    inputs = lowrank._layer_inputs(model, layers, [{"x": x, "attention_mask": attention}], 1024, covariance=True)
    real = x[attention.astype(bool)]
    assert inputs.count["x"] == 9 and len(inputs.rows["x"]) == 9
    np.testing.assert_allclose(inputs.gram["x"], real.T @ real, rtol=1e-4, atol=1e-3)
    assert sorted(inputs.origins["x"].tolist()) == [0, 0, 0, 1, 1, 1, 1, 1, 2]


@pytest.mark.parametrize("layout", ["past", "flattened"])
def test_padded_positions_are_left_out_with_a_cache_or_flattened_rows(layout):
    """A decoder's mask covers past + new positions (the new ones are its last columns); an export that
    flattens [batch, sequence, K] into [batch × sequence, K] rows keeps one sequence's rows one sample."""
    rows = np.arange(3 * 5 * 2, dtype=np.float32).reshape(3, 5, 2)
    if layout == "past":
        mask = np.array([[0, 1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0, 0]])
        real = lowrank._real_rows(rows.shape, mask, cached=True)
        expected = mask[:, 2:].reshape(-1) != 0
        # Without a cache, a shorter input is not the mask's last positions (a pooled CLS token [B, 1, K]).
        assert lowrank._real_rows(rows.shape, mask) is None and lowrank._real_rows((3, 1, 2), mask) is None
    else:
        mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
        real = lowrank._real_rows((15, 2), mask)
        expected = mask.reshape(-1) != 0
    np.testing.assert_array_equal(real, expected)
    assert lowrank._real_rows((3, 2), mask, cached=True) is None  # pooled [batch, K]: every row a real sample
    assert lowrank._real_rows((3, 9, 2), mask, cached=True) is None  # longer than the mask: not these positions


def test_a_budget_nothing_meets_leaves_the_model_whole():
    model = graphs.projections()
    result = _factorize(model, 0.9, samples={"x": graphs.inputs(K)}, budget=AccuracyBudget(max_error=0.0))
    assert not result.modified
    assert any("kept whole to meet the accuracy budget" in refusal for refusal in result.refusals)


def test_tied_weight_is_factorized_once_and_saved_once(tmp_path):
    model = graphs.tied()
    original = model.clone()
    x = graphs.inputs(K)
    result = _factorize(model, 0.5, samples={"x": x})
    initializers = [name for name in result.model.graph.initializers if not name.endswith(".bias_change")]
    assert initializers == ["w.U", "w.V"], initializers  # beside the repair's bias changes, if it kept any
    matmuls = [node for node in result.model.graph if node.op_type == "MatMul"]
    assert len(matmuls) == 4 and {node.inputs[1].name for node in matmuls} == {"w.U", "w.V"}
    assert any("2 layers: first, second" in note for note in result.notes)
    assert_matches_twin(result, {"x": x})
    path = tmp_path / "tied.onnx"
    ir.save(result.model, path)
    saved = ir.load(path)
    factors = sorted(name for name in saved.graph.initializers if not name.endswith(".bias_change"))
    assert factors == ["w.U", "w.V"]
    k, r = K, 32  # rank at ratio 0.5 of 128×128
    stored = sum(saved.graph.initializers[name].const_value.size for name in factors)
    assert stored == 2 * k * r and parameter_count(saved) < parameter_count(original)


def test_weight_also_read_by_an_embedding_gather_is_refused_with_the_reason():
    model = graphs.tied(gather=True)
    result = _factorize(model, 0.5)
    assert not result.modified
    assert "1 of 1 MatMul left whole: its weight is also read by Gather: the weight would stay beside its factors" in (
        result.refusals
    )


def test_near_misses_do_not_fire():
    computed = _factorize(graphs.not_constant(), 0.5)
    assert not computed.modified and "1 of 1 MatMul left whole: weight is not a constant" in computed.refusals
    small = _factorize(graphs.projections(k=64, n=96), 0.5)
    assert not small.modified
    for shape in ("64×96", "96×64"):
        assert f"1 of 2 MatMul left whole: too small to pay ({shape} < 16,384 weights)" in small.refusals
    slower = _factorize(graphs.projections(), 0.5, speed=FakeSpeed(break_even=20))
    assert not slower.modified
    assert (
        "1 of 2 MatMul left whole: rank 38 of 128×192 measured no faster on cpu at 1 row (1.30x the whole MatMul)"
        in (slower.refusals)
    )
    tiny_ratio = _factorize(graphs.projections(), 0.05)
    assert not tiny_ratio.modified and "removes less than 10%" in tiny_ratio.refusals[0]


def test_layers_are_timed_at_the_rows_the_dims_fix():
    speed = FakeSpeed()
    _factorize(graphs.projections(), 0.5, dims={"B": 1, "S": 64}, speed=speed)
    # up_proj reads the graph input [B, S, 128]; down_proj's input has no shape in this graph: both defaults.
    assert {m for k, n, m in speed.asked if (k, n) == (K, 192)} == {64}
    assert {m for k, n, m in speed.asked if (k, n) == (192, K)} == set(lowrank.DEFAULT_ROWS)
    default = FakeSpeed()
    _factorize(graphs.projections(), 0.5, speed=default)
    assert {m for _, _, m in default.asked} == set(lowrank.DEFAULT_ROWS)


def test_generated_samples_fit_nothing():
    x = graphs.inputs(K)
    asked = _factorize(graphs.projections(), 0.5, samples={"x": x}, samples_generated=True, importance="activation")
    assert not asked.modified and "needs --calibration data" in asked.refusals[0]
    plain = _factorize(graphs.projections(), 0.5, samples={"x": x}, samples_generated=True)
    assert plain.modified and any("plain SVD" in note for note in plain.notes)
    assert any(note.endswith("on generated inputs") for note in plain.notes)


def test_timing_cache_bisects_the_break_even_rank_and_keeps_it(tmp_path):
    calls = []

    def measure(k, n, r, m):
        calls.append(r)
        return 0.5 if r <= 40 else 1.2

    speed = MeasuredSpeed("cpu", 2, path=tmp_path / "cache.json", measure=measure)
    found = speed.break_even(128, 192, 1)
    assert 40 - max(1, parameter_limit(128, 192) // 32) < found <= 40
    assert speed.timed == len(calls) <= 8
    again = MeasuredSpeed("cpu", 2, path=tmp_path / "cache.json", measure=measure)
    assert again.break_even(128, 192, 1) == found and again.timed == 0
    assert again.ratio(128, 192, 1, 1) == 0.5 and again.timed == 0
    assert MeasuredSpeed("cpu", 4, path=tmp_path / "cache.json", measure=lambda *a: 2.0).break_even(128, 192, 1) == 0


def test_pipeline_prunes_then_factorizes_then_quantizes(monkeypatch):
    """prune-ffn → factorize-lowrank → quantize-dynamic on one FFN block: the factors quantize like any MatMul."""
    from tests.passes.pruning.graphs import ffn

    monkeypatch.setattr(lowrank, "MeasuredSpeed", lambda target, threads=None: FakeSpeed())
    model = ffn(hidden=128, inner=256)
    # Correlated activations (a few directions carry most energy): a rank 0.4 factorization holds the default
    # floor on the held-out samples, as it would not on white noise.
    calibration = {"x": graphs.inputs(128, count=16)}
    result, report = optimize_with_report(
        model, prune_ffn=0.25, lowrank=0.4, quantize="dynamic", calibration=calibration, raise_errors=True
    )
    records = {record.name: record for record in report.passes}
    names = [record.name for record in report.passes]
    assert names.index("prune-ffn") < names.index("factorize-lowrank") < names.index("quantize-dynamic")
    for name in ("prune-ffn", "factorize-lowrank", "quantize-dynamic"):
        assert records[name].status == "applied", (name, records[name].detail, records[name].refusals)
    assert any(note.startswith("rank ") for note in records["factorize-lowrank"].notes)
    ops = [node.op_type for node in result.graph]
    assert ops.count("DynamicQuantizeMatMul") >= 4  # both factors of up and down
    # Random weights have no low-rank structure to find (trained ones do): the loss is what rank 0.6 keeps.
    assert records["factorize-lowrank"].cosine > 0.85


def test_option_checks():
    with pytest.raises(OptionError, match="--lowrank 1.5: expected a fraction of each layer's parameters"):
        optimize_with_report(graphs.projections(), lowrank=1.5)
    with pytest.raises(ValueError, match="low-rank ratio"):
        LowRankFactorizationPass(0.0)


def test_the_repair_says_when_it_had_too_few_samples_to_try():
    """Four fitted samples (one of five held out) leave the repair no fold to hold out: it is not tried, and
    the report says so rather than that a re-fit lost."""
    result = _factorize(graphs.projections(), 0.7, samples={"x": graphs.inputs(K, count=5)}, importance="magnitude")
    assert any(note.startswith("repair: not tried, fewer than 5 fitted calibration samples") for note in result.notes)
    assert not any("after repair" in note for note in result.notes)


def test_flattened_rows_without_a_mask_keep_one_sequence_one_sample():
    """x [B, S, K] reshaped to [B × S, K] before the MatMul: the repair's folds must hold whole sequences out."""
    from onnx import TensorProto, helper

    from tests.passes.pruning.graphs import _model

    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["xf"], name="flatten"),
        helper.make_node("MatMul", ["xf", "w"], ["y"], name="proj"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["BS", 192])]
    init = [("w", graphs.full_rank(K, 192, seed=1)), ("flat", np.array([-1, K], np.int64))]
    model = _model(nodes, inputs, outputs, init)
    groups = LowRankFactorizationPass(0.5, speed=FakeSpeed())._candidates(model.graph)
    layers = [layer for group in groups for layer in group.layers]
    x = graphs.inputs(K, count=3, sequence=5)
    found = lowrank._layer_inputs(model, layers, [{"x": x}], 1024, covariance=True)
    assert sorted(found.origins["xf"].tolist()) == [0] * 5 + [1] * 5 + [2] * 5

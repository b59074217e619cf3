"""The worst sample in the accuracy budget (``--min-worst-cosine``) and in ``compare``'s table.

``--min-cosine`` bounds the mean of the per-sample cosines, which can hide a sentence
far below it; ``--min-worst-cosine`` bounds the lowest one.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.accuracy import AccuracyBudget, Drift, compare_accuracy, cosine_text, paired_drift
from optimizer.api import optimize, optimize_with_report
from optimizer.cli import main
from optimizer.errors import OptionError
from optimizer.options import Options
from passes.quantization.dynamic import DynamicQuantizationPass
from tests.helpers import FIXTURES, calibration_samples


def _cosine(x, y) -> float:
    x, y = np.ravel(x).astype(np.float64), np.ravel(y).astype(np.float64)
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def test_drift_keeps_the_lowest_sample_of_every_output_over_every_run():
    rng = np.random.default_rng(0)
    before = [{"y": rng.normal(size=(4, 3, 5)).astype(np.float32)} for _ in range(2)]
    after = [{"y": run["y"].copy()} for run in before]
    after[1]["y"][2, 0] *= -1.0  # one row of one sample in the second run turned around
    drift = paired_drift(zip(before, after))
    cosines = [_cosine(b["y"][i], a["y"][i]) for b, a in zip(before, after) for i in range(4)]
    assert drift.cosine == pytest.approx(np.mean(cosines))
    assert drift.worst_cosine == pytest.approx(min(cosines)) and drift.worst_cosine < drift.cosine - 0.01
    assert f"(worst sample {cosine_text(min(cosines))})" in str(drift)


def test_an_integer_output_counts_its_worst_row_and_one_value_per_sample_its_score_over_all():
    ids = np.array([[1, 2, 3, 4], [1, 2, 3, 4]])
    changed = np.array([[1, 2, 3, 4], [1, 9, 9, 4]])
    drift = paired_drift([({"ids": ids}, {"ids": changed})])
    assert drift.cosine == pytest.approx(6 / 8) and drift.worst_cosine == pytest.approx(2 / 4)
    # A score per sample has no cosine: its relative error over all samples is what both read.
    score = paired_drift([({"s": np.array([1.0, 2.0])}, {"s": np.array([1.0, 2.2])})])
    assert score.worst_cosine == score.cosine == pytest.approx(1 - (0.2**2 / 5) / 2)


def test_the_budget_reads_the_worst_sample_only_where_asked():
    drift = Drift(cosine=0.999, max_error=0.1, worst_cosine=0.98)
    assert AccuracyBudget(min_cosine=0.995).met(drift)
    assert not AccuracyBudget(min_worst_cosine=0.99).met(drift)
    assert not AccuracyBudget(min_cosine=0.995, min_worst_cosine=0.99).met(drift)
    assert AccuracyBudget(min_worst_cosine=0.97).met(drift)
    assert AccuracyBudget(min_worst_cosine=0.99).shortfall(drift) == pytest.approx(0.02)
    assert AccuracyBudget(min_cosine=0.99).shortfall(drift) == pytest.approx(0.001)
    assert AccuracyBudget(min_cosine=0.99, min_worst_cosine=0.9).describe() == (
        "--min-cosine 0.99 --min-worst-cosine 0.9"
    )
    assert Drift(0.5, 1.0).worst_cosine == 0.5  # not given: the mean


def test_cosines_are_shown_with_the_digits_a_budget_needs():
    assert cosine_text(0.99984) == "0.99984" and cosine_text(0.9961) == "0.9961" and cosine_text(1.0) == "1.0000"


def test_options_check_the_worst_sample_bound():
    assert Options(min_worst_cosine=0.99).budget == AccuracyBudget(min_worst_cosine=0.99)
    with pytest.raises(OptionError, match=r"--min-worst-cosine 1.5: a cosine similarity is between -1 and 1"):
        Options(min_worst_cosine=1.5)


@pytest.fixture(scope="module")
def llama_int8():
    """The Llama fixture, its calibration samples, and the drift of every layer int8 on the pass's held-out rows."""
    model = ir.load(FIXTURES / "llama_legacy.onnx")
    samples = calibration_samples(model, 32)
    every_layer = DynamicQuantizationPass(budget=AccuracyBudget(min_cosine=-1.0), samples=samples)
    every_layer(model.clone())
    assert every_layer.kept_float == []
    return model, samples, every_layer.drift


def test_a_worst_sample_budget_keeps_layers_float_where_a_mean_budget_of_the_same_value_keeps_none(llama_int8):
    model, samples, drift = llama_int8
    # A bound between the worst sample and the mean of every layer int8: the mean meets it, the worst does not.
    assert drift.worst_cosine < drift.cosine - 1e-6
    bound = (drift.worst_cosine + drift.cosine) / 2
    mean = DynamicQuantizationPass(budget=AccuracyBudget(min_cosine=bound), samples=samples)
    mean(model.clone())
    assert mean.kept_float == [] and mean.drift.worst_cosine < bound
    worst = DynamicQuantizationPass(budget=AccuracyBudget(min_worst_cosine=bound), samples=samples)
    result = worst(model.clone())
    assert worst.drift.worst_cosine >= bound
    # Some layer leaves the default scheme: kept float, or SmoothQuant (since session 71 leaves padded positions out of
    # the statistics, one SmoothQuant layer meets this bound where a float one did before).
    met = [note for note in result.notes if f"budget --min-worst-cosine {bound!r} met" in note]
    changed = re.search(r"with (\d+) layers changed", met[0]) if met else None
    assert changed and int(changed.group(1)) >= 1, result.notes


def test_the_verifier_rolls_back_a_result_whose_worst_sample_misses_the_budget(llama_int8, monkeypatch):
    # The pass is told no budget (so it quantizes everything); the verifier holds the worst sample.
    from passes import catalog

    model, samples, _ = llama_int8
    original = catalog._int8
    monkeypatch.setattr(catalog, "_int8", lambda context: {**original(context), "budget": None})

    # quantize-dynamic alone on the default pipeline's fusions, run once (quantize="dynamic" runs them before it,
    # verified; that end to end is tests/test_quantization_pipeline.py's): the verifier holds the same pass's result.
    fused = optimize(model.clone(), verify=False)

    def verified(**budget):
        _, report = optimize_with_report(fused.clone(), ["quantize-dynamic"], calibration=samples, **budget)
        return next(r for r in report.passes if r.name == "quantize-dynamic")

    every_layer = verified(min_cosine=-1.0)  # what the verifier measures of every layer int8
    assert every_layer.status == "applied" and every_layer.worst_cosine < every_layer.cosine - 1e-6
    bound = (every_layer.worst_cosine + every_layer.cosine) / 2
    assert verified(min_cosine=bound).status == "applied"
    record = verified(min_worst_cosine=bound)
    assert record.status == "rolled back"
    assert f"misses the accuracy budget (--min-worst-cosine {bound!r})" in record.detail
    assert "worst sample" in record.detail


def test_cli_takes_the_flag_reports_it_and_refuses_it_without_an_approximate_pass(tmp_path, capsys):
    model = FIXTURES / "bert_legacy.onnx"
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **calibration_samples(ir.load(model), 16))
    output, report = tmp_path / "int8.onnx", tmp_path / "report.json"
    code = main(
        ["optimize", str(model), "-o", str(output), "--quantize", "dynamic", "--calibration", str(calibration)]
        + ["--min-worst-cosine", "0.999", "--pipeline-json", str(report), "-q"]
    )
    assert code == 0
    assert json.loads(report.read_text())["accuracy_budget"] == "--min-worst-cosine 0.999"
    capsys.readouterr()
    code = main(["optimize", str(model), "-o", str(tmp_path / "f.onnx"), "--min-worst-cosine", "0.99", "-q"])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--min-worst-cosine" in err and "Traceback" not in err


def test_compare_reports_each_outputs_worst_sample():
    rng = np.random.default_rng(1)
    before = {"h": rng.normal(size=(3, 4, 8)), "p": rng.normal(size=(3,))}
    after = {"h": before["h"].copy(), "p": before["p"] + 0.1}
    after["h"][1] += rng.normal(scale=0.5, size=(4, 8))
    hidden, pooled = compare_accuracy(before, after)
    assert hidden.worst_sample_cosine == pytest.approx(min(_cosine(before["h"][i], after["h"][i]) for i in range(3)))
    assert hidden.worst_sample_cosine < hidden.cosine
    assert pooled.worst_sample_cosine is None  # one value per sample: no cosine of its own


def _identity_and_one_bent_sample(tmp_path):
    """BEFORE ``y = x``; AFTER ``y = x - 2 relu(x - 5)``, which differs only where a value passes 5."""
    from onnx import TensorProto, helper, save

    def model(nodes, initializers, path):
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
            initializers,
        )
        save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        return str(path)

    before = model([helper.make_node("Identity", ["x"], ["y"])], [], tmp_path / "before.onnx")
    five, two = (helper.make_tensor(name, TensorProto.FLOAT, [], [v]) for name, v in (("five", 5.0), ("two", 2.0)))
    after = model(
        [
            helper.make_node("Sub", ["x", "five"], ["over"]),
            helper.make_node("Relu", ["over"], ["bent"]),
            helper.make_node("Mul", ["bent", "two"], ["twice"]),
            helper.make_node("Sub", ["x", "twice"], ["y"]),
        ],
        [five, two],
        tmp_path / "after.onnx",
    )
    x = np.clip(np.random.default_rng(0).normal(size=(256, 64)), -3, 3).astype(np.float32)
    x[17] = 1.0
    x[17, 0] = 10.0  # this sample's largest value becomes 0: its cosine is 63 / sqrt(163 * 63), about 0.62
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=x)
    return before, after, str(inputs)


def test_compare_gates_on_the_worst_sample_where_the_cosine_over_all_values_passes(tmp_path, capsys):
    before, after, inputs = _identity_and_one_bent_sample(tmp_path)
    common = ["compare", before, after, "--inputs", inputs, "--time-budget", "1", "--iterations", "20", "-q"]
    report = tmp_path / "compare.json"
    assert main([*common, "--min-cosine", "0.99", "--json", str(report)]) == 0
    (output,) = json.loads(report.read_text())["providers"][0]["accuracy"]
    assert output["cosine"] > 0.99 and output["worst_sample_cosine"] == pytest.approx(63 / np.sqrt(163 * 63))
    capsys.readouterr()
    assert main([*common, "--min-worst-cosine", "0.99"]) == 5
    err = capsys.readouterr().err
    assert "--min-worst-cosine 0.99: cpu: output 'y' has a sample at cosine 0.62" in err
    assert main([*common, "--min-worst-cosine", "0.5"]) == 0
    assert main([*common, "--min-worst-cosine", "2"]) == 2
    assert "--min-worst-cosine 2.0: a cosine similarity is between -1 and 1" in capsys.readouterr().err


# -- review findings ------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e160, 1e-170])
def test_the_worst_sample_of_identical_outputs_is_1_at_any_float64_scale(scale):
    from optimizer.accuracy import output_accuracy

    e = np.random.default_rng(0).normal(size=(4, 8)) * scale
    same = output_accuracy("y", e, e * (1 + 1e-12))
    assert same.worst_sample_cosine == pytest.approx(1.0) and same.cosine == pytest.approx(1.0)
    drift = paired_drift([({"y": e}, {"y": e.copy()})])
    assert drift.worst_cosine == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("cosine", "budget"), [(0.99896, 0.999), (0.99496, 0.995), (0.9999999991, 0.9999999995), (0.99999985, 0.9999999)]
)
def test_a_cosine_that_misses_a_budget_never_reads_as_the_budget(cosine, budget):
    for decimals in (4, 6):
        text = cosine_text(cosine, decimals)
        assert float(text) < budget and float(text) <= cosine, text
    missed = Drift(cosine=0.9999999999, max_error=0.01, worst_cosine=cosine)
    assert not AccuracyBudget(min_worst_cosine=budget).met(missed)
    assert f"worst sample {cosine_text(cosine)}" in str(missed)


def test_the_generate_gate_reads_each_sequences_teacher_forced_logits():
    from optimizer.gates import worst_sample_failures
    from optimizer.llm_accuracy import LLMAccuracy
    from tests.test_html_report import _report

    report = _report()
    provider = report.providers[0]
    provider.accuracy = []
    provider.llm_accuracy = LLMAccuracy(
        "held-out text", True, 6, 120, 0.98, 10.0, 10.1, 0.1, 6, 16, 8, 1.0, 1.0, "", 0.9946, 0.9928
    )
    (line,) = [line for line in worst_sample_failures(report, 0.994) if "teacher-forced" in line]
    assert "cpu: the teacher-forced logits of one sequence of held-out text have cosine 0.992800" in line
    assert not [line for line in worst_sample_failures(report, 0.99) if "teacher-forced" in line]


def test_an_output_whose_cosine_fails_gets_one_line_not_two():
    from optimizer.accuracy import OutputAccuracy
    from optimizer.gates import worst_sample_failures
    from tests.test_html_report import _report

    report = _report()
    report.providers[0].llm_accuracy = None
    report.providers[0].accuracy = [OutputAccuracy("y", "float32", [1, 4], 0.1, 0.1, 0.98, worst_sample_cosine=0.98)]
    lines = worst_sample_failures(report, 0.99)
    assert [line for line in lines if "output 'y'" in line] == [
        "--min-worst-cosine 0.99: cpu: output 'y' has cosine 0.980000"
    ], lines


def test_equal_outputs_read_as_1_and_the_largest_float64_values_have_a_cosine():
    assert cosine_text(1.0 - 2**-52, 6) == "0.9999999999" and cosine_text(1.0 - 1e-9, 6) == "0.9999999990"
    from optimizer.accuracy import vector_cosine

    top = np.array([np.finfo(np.float64).max, -np.finfo(np.float64).max / 2])
    assert vector_cosine(top, top) == pytest.approx(1.0)


def test_equal_outputs_meet_a_budget_of_exactly_1():
    from optimizer.accuracy import output_accuracy, vector_cosine

    rng = np.random.default_rng(5)
    for _ in range(200):  # dot / (norm * norm) of a vector with itself rounds below 1 for about a quarter of them
        x = rng.normal(size=(3, 17)).astype(np.float32)
        assert vector_cosine(x, x.copy()) == 1.0
        same = output_accuracy("y", x, x.copy())
        assert same.cosine == 1.0 and same.worst_sample_cosine == 1.0
        assert AccuracyBudget(min_worst_cosine=1.0, min_cosine=1.0).met(paired_drift([({"y": x}, {"y": x.copy()})]))

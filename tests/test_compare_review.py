"""A hostile review of ``graphopt compare`` (2026-12-01): each case gave a wrong verdict, a gate that passed,
or a traceback before."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto, helper

from optimizer.accuracy import compare_accuracy
from optimizer.compare.stats import RatioEstimate
from optimizer.gates import accuracy_failures, slower_failures
from tests._cli_models import run_cli


def _provider(**fields) -> SimpleNamespace:
    return SimpleNamespace(
        **{"ep": "cpu", "available": True, "batches": [], "generation": [], "accuracy": [], **fields}
    )


def test_non_finite_values_that_differ_are_an_unbounded_error():
    # -inf against NaN (a fused kernel's NaN where the original masked with -inf), +inf against -inf.
    for expected, actual in ((-np.inf, np.nan), (np.inf, -np.inf), (np.nan, np.inf)):
        before = {"y": np.array([[1.0, 2.0, expected]], np.float32)}
        after = {"y": np.array([[1.0, 2.0, actual]], np.float32)}
        (result,) = compare_accuracy(before, after)
        assert result.max_abs_error == np.inf and not result.exact
        report = SimpleNamespace(providers=[_provider(accuracy=[result])], warnings=[])
        assert accuracy_failures(report, 0.999), (expected, actual)
    same = {"y": np.array([[1.0, np.nan, -np.inf]], np.float32)}
    (result,) = compare_accuracy(same, {"y": same["y"].copy()})
    assert result.exact and result.max_abs_error == 0


def test_an_output_all_nan_in_after_has_no_cosine():
    (result,) = compare_accuracy({"y": np.ones((1, 4), np.float32)}, {"y": np.full((1, 4), np.nan, np.float32)})
    assert result.cosine is None and result.max_abs_error == np.inf


def test_a_single_value_output_is_held_to_its_relative_error():
    # The cosine of one number is +-1: a 13 % error passed --min-cosine 0.9999.
    (result,) = compare_accuracy({"y": np.array([1.0], np.float32)}, {"y": np.array([1.13], np.float32)})
    assert result.cosine is None
    report = SimpleNamespace(providers=[_provider(accuracy=[result])], warnings=[])
    (line,) = accuracy_failures(report, 0.9999)
    assert "output 'y' is one value (no cosine): relative error 0.13" in line
    (close,) = compare_accuracy({"y": np.array([1.0], np.float32)}, {"y": np.array([1.0001], np.float32)})
    assert accuracy_failures(SimpleNamespace(providers=[_provider(accuracy=[close])], warnings=[]), 0.9999) == []


def test_the_latency_gate_does_not_pass_on_too_few_pairs():
    # One timed pair gave a zero-width "interval" of 0.78 and passed --max-ratio 0.9.
    one_pair = RatioEstimate(0.78, 0.78, 0.78, 0.95, False, "only 1 paired runs")
    batch = SimpleNamespace(batch=1, ratio=one_pair, after=SimpleNamespace(runs=1))
    report = SimpleNamespace(providers=[_provider(batches=[batch])], warnings=[])
    (line,) = slower_failures(report, 0.9)
    assert "1 timed pair, too few to judge (at least 10)" in line
    timed = SimpleNamespace(
        batch=1,
        ttft_ratio=one_pair,
        tokens_per_s_ratio=RatioEstimate(1.2, 1.1, 1.3, 0.95, True),
        ttft_after=SimpleNamespace(runs=3),
        decode_after=SimpleNamespace(runs=3),
    )
    report = SimpleNamespace(providers=[_provider(generation=[timed])], warnings=[])
    (line,) = slower_failures(report, 2.0)
    assert "3 timed generations, too few to judge" in line


def test_output_names_with_rich_markup_are_printed_as_they_are(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y[/b]"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y[/b]", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), "m.onnx")
    code, out, err = run_cli(["compare", "m.onnx", "m.onnx", "--time-budget", "0.5", "--iterations", "3"], capsys)
    assert code == 0, err
    assert "y[/b]" in out


def _single_input_model(path: str, dims: list) -> None:
    """``y = Relu(x)`` with ``x`` of ``dims``."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)


def test_the_batch_is_what_the_inputs_hold_not_what_a_dim_is_named(tmp_path, monkeypatch, capsys):
    # A fixed batch of 2 (beside a [3] input) was timed and reported as batch 1.
    monkeypatch.chdir(tmp_path)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["scale"], ["z"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, [3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [3]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), "fixed.onnx")
    code, out, err = run_cli(["compare", "fixed.onnx", "fixed.onnx", "--time-budget", "1", "--json", "f.json"], capsys)
    assert code == 0, err
    report = json.loads(Path("f.json").read_text())
    assert [batch["batch"] for batch in report["providers"][0]["batches"]] == [2]
    assert any(
        "named like a batch (batch, N, ...): timed at the 2 rows its inputs hold" in w for w in report["warnings"]
    )


def test_inputs_of_another_type_or_a_dim_the_inputs_contradict_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _single_input_model("float.onnx", ["batch", 4])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), "half.onnx")
    code, _, err = run_cli(["compare", "float.onnx", "half.onnx", "--time-budget", "0.5"], capsys)
    assert code == 2 and "AFTER's input 'x' is float16, BEFORE's float32" in err
    np.savez("in.npz", x=np.ones((3, 4), np.float32))
    argv = ["compare", "float.onnx", "float.onnx", "--inputs", "in.npz", "--dim", "batch=7", "--time-budget", "0.5"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "--dim batch=7: the --inputs have batch=3" in err


def test_compare_runs_a_fixed_batch_model_on_inputs_holding_several_batches(tmp_path, monkeypatch, capsys):
    # A review: --inputs of 12 samples for a model fixed at batch 4 failed with ONNX Runtime's raw error
    # (the timing fed all 12 rows); now it is timed on the first batch of 4 and scored on all three.
    from onnx import numpy_helper

    monkeypatch.chdir(tmp_path)
    weight = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), "m.onnx")
    rng = np.random.default_rng(1)
    np.savez("i12.npz", x=rng.standard_normal((12, 8)).astype(np.float32))
    np.savez("i10.npz", x=rng.standard_normal((10, 8)).astype(np.float32))
    quick = ["--time-budget", "0.3", "--iterations", "12", "--warmup", "1", "--threads", "1"]
    code, _, err = run_cli(["compare", "m.onnx", "m.onnx", "--inputs", "i12.npz", *quick, "--json", "r.json"], capsys)
    assert code == 0, err
    report = json.loads(Path("r.json").read_text())
    assert report["providers"][0]["accuracy"]
    code, _, err = run_cli(["compare", "m.onnx", "m.onnx", "--inputs", "i10.npz", *quick], capsys)
    assert code == 2 and "10 samples, and the model fixes its batch at 4: give a multiple of 4" in err

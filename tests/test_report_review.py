"""A hostile review of graphopt's reports (2026-12-01): each case gave a verdict the numbers behind it did not
support, destroyed a file, or a traceback before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import compare_accuracy, floored_magnitude
from optimizer.compare.html import _accuracy_phrase
from optimizer.compare.report import _ratio_style
from optimizer.compare.stats import RatioEstimate
from optimizer.gates import accuracy_failures
from tests._cli_models import run_cli

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--time-budget", "0.3", "--iterations", "12", "--warmup", "1", "--threads", "1"]


def _save(path: str, nodes, inputs, outputs, initializers=()) -> None:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)


def _scaled(path: str, factor: float, dtype=TensorProto.FLOAT, numpy_dtype=np.float32) -> None:
    """``y = x * factor`` over ``x[batch, 4]``."""
    _save(
        path,
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        [helper.make_tensor_value_info("x", dtype, ["batch", 4])],
        [helper.make_tensor_value_info("y", dtype, ["batch", 4])],
        [numpy_helper.from_array(np.array(factor, numpy_dtype), "k")],
    )


def _verdict(accuracy) -> tuple[str, str]:
    segment = _accuracy_phrase(SimpleNamespace(llm_accuracy=None, accuracy=accuracy))
    return segment.text, segment.css


def test_values_past_1e154_that_are_identical_are_bit_identical():
    # The sums of squares overflowed: cosine inf/inf = NaN, a red "differ: NaN/Inf" and a failed --min-cosine.
    values = np.array([[1e200, -3e200, 2e180, 5.0]])
    (result,) = compare_accuracy({"y": values}, {"y": values.copy()})
    assert result.exact and result.cosine is not None and abs(result.cosine - 1) < 1e-12
    assert _verdict([result]) == ("outputs bit-identical", "good")
    provider = SimpleNamespace(ep="cpu", available=True, accuracy=[result])
    assert accuracy_failures(SimpleNamespace(providers=[provider], warnings=[]), 0.99) == []
    # Past 1e154 a difference is still seen, and across batches the sums keep one unit.
    other = values.copy()
    other[0, 1] = -2e200
    (moved,) = compare_accuracy({"y": values}, {"y": other})
    assert 0.9 < moved.cosine < 0.99 and moved.max_abs_error == 1e200


def test_the_rms_floor_does_not_overflow():
    # An infinite RMS made every float64 error relative to it zero, in verification too.
    magnitude = floored_magnitude(np.array([1e200, 3e200, 0.0]))
    assert np.isfinite(magnitude).all() and magnitude[2] > 1e200
    assert floored_magnitude(np.array([3.0, 4.0]))[0] == np.sqrt(12.5)


def test_integers_past_2_to_the_53_that_differ_are_not_equal():
    before = {"y": np.array([2**53, 7], np.int64)}
    (result,) = compare_accuracy(before, {"y": np.array([2**53 + 1, 7], np.int64)})
    assert result.max_abs_error == 1 and not result.exact
    text, css = _verdict([result])
    assert "equal" not in text and "identical" not in text and css == "concern"
    (extreme,) = compare_accuracy({"y": np.array([np.iinfo(np.int64).min])}, {"y": np.array([np.iinfo(np.int64).max])})
    assert extreme.max_abs_error == 2.0**64 - 1


def test_an_output_of_another_dtype_is_not_bit_identical():
    (result,) = compare_accuracy({"y": np.array([1.0, 2.0], np.float32)}, {"y": np.array([1.0, 2.0], np.float16)})
    assert not result.exact and result.max_abs_error == 0
    assert _verdict([result])[0] == "outputs equal in value"


def test_bool_outputs_that_differ_are_a_concern():
    (result,) = compare_accuracy({"y": np.array([True, False])}, {"y": np.array([False, False])})
    assert _verdict([result])[1] == "concern"


def test_an_output_scaled_by_500_is_not_identical():
    # Small values scaled by 500: max |diff| under 1e-4 and cosine 1, so "identical to 1e-4" in green.
    before = np.array([[1e-7, 2e-7, 3e-8, 5e-8]], np.float32)
    (result,) = compare_accuracy({"y": before}, {"y": before * 500})
    text, css = _verdict([result])
    assert "identical" not in text and "max rel 499" in text and css == "concern"
    (one,) = compare_accuracy({"y": np.array([1e-7], np.float32)}, {"y": np.array([5e-5], np.float32)})
    text, css = _verdict([one])
    assert "identical" not in text and css == "concern"


def test_untrusted_ratios_get_no_colour_in_the_terminal():
    untrusted = RatioEstimate(0.5, 0.4, 0.6, 0.95, False, "only 3 paired runs")
    assert _ratio_style(untrusted, lower_is_better=True) == "default"
    assert _ratio_style(untrusted, lower_is_better=False) == "default"
    trusted = RatioEstimate(0.5, 0.4, 0.6, 0.95, True)
    assert _ratio_style(trusted, lower_is_better=True) == "green"
    assert _ratio_style(trusted, lower_is_better=False) == "red"


def test_markup_in_the_inputs_path_is_printed_and_the_reports_written(tmp_path, monkeypatch, capsys):
    # "[/]" in the --inputs path crashed the accuracy table's caption: exit 1, no --json, no --html.
    monkeypatch.chdir(tmp_path)
    _scaled("m.onnx", 1.0)
    Path("[").mkdir()
    np.savez("[/]in.npz", x=np.ones((2, 4), np.float32))
    argv = ["compare", "m.onnx", "m.onnx", "--inputs", "[/]in.npz", *QUICK, "--json", "r.json", "--html", "r.html"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "[/]in.npz" in out and Path("r.json").exists() and Path("r.html").exists()


def test_a_string_input_is_measured_not_a_traceback(tmp_path, monkeypatch, capsys):
    # The memory probe saved the inputs without objects: ValueError, exit 1, nothing written.
    monkeypatch.chdir(tmp_path)
    _save(
        "s.onnx",
        [helper.make_node("Identity", ["s"], ["t"])],
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["batch"])],
    )
    code, _, err = run_cli(["compare", "s.onnx", "s.onnx", *QUICK, "--json", "s.json"], capsys)
    assert code == 0, err
    assert json.loads(Path("s.json").read_text())["providers"][0]["memory_before"] is not None


def test_an_output_left_out_is_named_in_the_verdict(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _save(
        "a.onnx",
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4]) for name in ("y", "z")],
    )
    shape = numpy_helper.from_array(np.array([4], np.int64), "shape")
    _save(
        "b.onnx",
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "shape"], ["y"])]
        + [helper.make_node("Relu", ["x"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4]),
        ],
        [shape],
    )
    code, _, err = run_cli(["compare", "a.onnx", "b.onnx", *QUICK, "--html", "r.html"], capsys)
    page = Path("r.html").read_text()
    assert "1 output not compared; the others bit-identical" in page
    assert "<title>" in page and "outputs bit-identical" not in page.replace("the others bit-identical", "")


def test_long_output_names_leave_the_figures_readable(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    name = "n" * 300
    _save(
        "m.onnx",
        [helper.make_node("Relu", ["x"], [name])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4])],
    )
    code, out, err = run_cli(["compare", "m.onnx", "m.onnx", *QUICK], capsys)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.strip().startswith("nnn"))
    assert "1.000000" in row  # the cosine column, not cut to "1.…"


def test_an_output_path_that_is_standard_output_is_refused(tmp_path):
    # `graphopt compare ... --json /dev/stdout >> log`: the atomic rename replaced the log with the JSON.
    _scaled(str(tmp_path / "m.onnx"), 1.0)
    log = tmp_path / "ci.log"
    log.write_text("earlier lines\n")
    with open(log, "a") as stdout:
        completed = subprocess.run(
            [sys.executable, "-m", "optimizer.cli", "compare", "m.onnx", "m.onnx", *QUICK, "--json", "/dev/stdout"],
            cwd=tmp_path,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
    assert completed.returncode == 2, completed.stderr
    assert "is this process's standard output" in completed.stderr
    assert log.read_text().startswith("earlier lines\n")


def test_values_near_the_largest_float64_are_compared():
    # The unit for sums past 2**1023 overflowed math.ldexp: OverflowError in compare and in verification.
    values = np.array([[1.7e308, -1.0, 3.0]])
    assert np.isfinite(floored_magnitude(values)).all()
    (result,) = compare_accuracy({"y": values}, {"y": values.copy()})
    assert result.exact and abs(result.cosine - 1) < 1e-12


def test_an_output_doubled_is_a_concern():
    # Every element 100 % off kept its cosine and read grey: "max rel 1" was under the bar of 1.
    before = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    (result,) = compare_accuracy({"probs": before}, {"probs": before * 2})
    text, css = _verdict([result])
    assert css == "concern" and "max rel 1" in text


def test_an_output_turned_nan_stays_red_beside_one_left_out():
    from optimizer.compare.html import _qualified_accuracy

    (nan,) = compare_accuracy({"y1": np.ones((1, 4), np.float32)}, {"y1": np.full((1, 4), np.nan, np.float32)})
    provider = SimpleNamespace(llm_accuracy=None, accuracy=[nan])
    report = SimpleNamespace(
        warnings=["output 'y2' is float32[4] in AFTER, float32[1, 4] in BEFORE: its accuracy is not compared"]
    )
    segment = _qualified_accuracy(report, provider)
    assert segment.css == "bad" and segment.text.startswith("1 output not compared; of the others: 'y1' differ")


def test_the_cosine_gate_sees_an_output_scaled():
    # A cosine does not see scale: every output doubled passed --min-cosine 0.9999 with exit 0.
    before = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    (doubled,) = compare_accuracy({"y": before}, {"y": before * 2})
    assert doubled.cosine > 0.9999 and abs(doubled.norm_ratio - 2) < 1e-6
    provider = SimpleNamespace(ep="cpu", available=True, accuracy=[doubled])
    (line,) = accuracy_failures(SimpleNamespace(providers=[provider], warnings=[]), 0.9999)
    assert "output 'y' is scaled: its norm is 2 times BEFORE's" in line
    (close,) = compare_accuracy({"y": before}, {"y": before * 1.001})
    provider = SimpleNamespace(ep="cpu", available=True, accuracy=[close])
    assert accuracy_failures(SimpleNamespace(providers=[provider], warnings=[]), 0.9999) == []


def test_strict_names_the_budget_that_cannot_be_met(tmp_path, monkeypatch, capsys):
    # The first refusal was shown ("its result is a model output"), not the budget no layer could meet.
    from tests._cli_models import save_matmul_model

    monkeypatch.chdir(tmp_path)
    save_matmul_model(tmp_path / "m.onnx")
    argv = ["optimize", "m.onnx", "-o", "o.onnx", "--quantize", "dynamic", "--max-error", "1e-9", "--strict"]
    code, _, err = run_cli(argv, capsys)
    assert code == 3, err
    assert "changed nothing: budget --max-error 1e-09 cannot be met" in err and "down to one int8 layer" in err


def test_symmetric_hqq_is_refused():
    import pytest

    from optimizer.errors import OptionError
    from optimizer.options import Options

    with pytest.raises(OptionError, match="--symmetric with --int4-method hqq"):
        Options(quantize="int4", int4_method="hqq", symmetric=True)

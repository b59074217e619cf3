"""Review of issue 16 (progress, exit codes, flags, config, HTML report): the holes a newcomer or a CI job falls in.

Each test failed before its fix: an output path of ``-`` (stdout, to most tools) wrote a file
named ``-``; the HTML verdict called outputs "identical" when a NaN, or a cosine far from 1
on small values, said otherwise.
"""

from __future__ import annotations

import math

import pytest

from optimizer import exit_codes
from optimizer.accuracy import OutputAccuracy
from optimizer.compare.html import render_html, verdict
from tests._cli_models import run_cli, save_matmul_model
from tests.test_html_report import _report


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["optimize", "m.onnx", "-o", "-", "--no-verify"], "-o"),
        (["optimize", "m.onnx", "-o", "o.onnx", "--no-verify", "--pipeline-json", "-"], "--pipeline-json"),
        (["optimize", "m.onnx", "-o", "o.onnx", "--no-verify", "--compare", "--compare-json", "-"], "--compare-json"),
        (["optimize", "m.onnx", "-o", "o.onnx", "--no-verify", "--compare", "--html", "-"], "--html"),
        (["compare", "m.onnx", "m.onnx", "--json", "-"], "--json"),
        (["compare", "m.onnx", "m.onnx", "--html", "-"], "--html"),
        (["make-inputs", "m.onnx", "-o", "-"], "-o"),
    ],
    ids=lambda item: " ".join(item) if isinstance(item, list) else item,
)
def test_a_dash_is_refused_not_written_as_a_file_named_dash(command, flag, tmp_path, capsys, monkeypatch):
    # CI users pipe `--json - | jq`: graphopt writes files only, so a "-" must be one line, not a file called "-".
    monkeypatch.chdir(tmp_path)
    save_matmul_model(tmp_path / "m.onnx")
    code, _, err = run_cli(command, capsys)
    assert code == exit_codes.USAGE, err
    assert f"graphopt: error: {flag} -:" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "-").exists()
    assert not (tmp_path / "o.onnx").exists(), "refused before any work"


def _with_accuracy(*outputs: OutputAccuracy):
    report = _report()
    report.providers[0].accuracy = list(outputs)
    return report


def test_verdict_does_not_call_small_but_different_outputs_identical():
    # Probabilities over a large vocabulary are ~1e-5 each: an absolute error of 5e-5 is all of the value.
    report = _with_accuracy(OutputAccuracy("probs", "float32", [1, 50000], 5e-5, 0.9, 0.5))
    line = verdict(report)
    assert "identical" not in line, line
    assert "cosine ≥ 0.50000" in line
    assert "class='seg concern'>cosine ≥ 0.50000" in render_html(report)


def test_verdict_names_a_nan_output_instead_of_hiding_it():
    good = OutputAccuracy("a", "float32", [1, 4], 1e-6, 1e-6, 0.99999999)
    for broken in (
        OutputAccuracy("b", "float32", [1, 4], math.nan, math.nan, math.nan),
        OutputAccuracy("b", "float32", [1, 4], math.inf, math.inf, math.nan),
    ):
        report = _with_accuracy(good, broken)
        line = verdict(report)
        assert "identical" not in line and "cosine ≥ 0.99" not in line, line
        assert "'b' differ" in line, line
        assert "<span class='seg bad'>&#x27;b&#x27; differ" in render_html(report)


def test_verdict_still_says_identical_for_rounding():
    report = _with_accuracy(OutputAccuracy("a", "float32", [1, 4], 3e-6, 1e-6, 0.9999999999))
    assert "outputs identical to 1e-5" in verdict(report)


def _save_unary_model(path, op: str):
    """``y = op(x)``, ``x: float32[batch, 8]``: ``Sqrt`` of generated N(0, 1) inputs is NaN where ``Relu`` is 0."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])],
        op.lower(),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def test_min_cosine_fails_an_after_that_turns_numbers_into_nan(tmp_path, capsys):
    # The cosine is taken over the positions both models left finite, so it alone passed a model that is NaN
    # on half its outputs (cosine 0.97 >= 0.9: exit 0).
    before = _save_unary_model(tmp_path / "relu.onnx", "Relu")
    after = _save_unary_model(tmp_path / "sqrt.onnx", "Sqrt")
    quick = ["--time-budget", "0.2", "--iterations", "5", "--warmup", "0"]
    code, _, err = run_cli(["compare", before, after, *quick, "--min-cosine", "0.5", "-q"], capsys)
    assert code == exit_codes.LESS_ACCURATE, err
    assert "--min-cosine 0.5: cpu: output 'y' differs without bound" in err


def test_comparison_json_is_strict_json(tmp_path):
    # Python writes NaN and Infinity, which are not JSON: jq, JavaScript and Go refuse the whole file.
    import json

    from optimizer.compare.report import write_json

    report = _with_accuracy(OutputAccuracy("y", "float32", [1, 8], math.inf, math.inf, math.nan))
    write_json(report, tmp_path / "c.json")

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    data = json.loads((tmp_path / "c.json").read_text(), parse_constant=refuse)
    (output,) = data["providers"][0]["accuracy"]
    assert output["max_abs_error"] == "inf" and output["cosine"] == "nan"
    assert isinstance(data["providers"][0]["batches"][0]["ratio"]["ratio"], float)


def test_gpu_check_reads_a_comparison_whose_outputs_went_nan(tmp_path, monkeypatch):
    # float16 on CUDA is where an output overflows: the check must still write its row (it crashed on
    # NaN in min()/round() before, and on the JSON strings write_json now uses).
    import importlib.util
    import sys
    from pathlib import Path

    from optimizer.compare.report import write_json

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_for_review", script)
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check_for_review", gpu_check)  # dataclasses look their module up
    spec.loader.exec_module(gpu_check)
    report = _with_accuracy(
        OutputAccuracy("a", "float32", [1, 8], 1e-3, 1e-3, 0.9999),
        OutputAccuracy("y", "float16", [1, 8], math.inf, math.inf, math.nan),
    )
    write_json(report, tmp_path / "c.json")
    row = gpu_check.compare_row("example", "fp16", tmp_path / "c.json", gpu_check.StepResult("compare", "ok"), "cpu")
    assert math.isnan(row.cosine) and row.max_abs == math.inf
    table = gpu_check.render_markdown({}, "cpu", [row], [], [], "gpu_check.py")
    assert "| nan | inf |" in table


def _graphopt_into_a_closed_pipe(argv: list, cwd) -> tuple[int, str]:
    """Run ``graphopt ARGV`` as ``graphopt ARGV | head -0`` does: its stdout's reader is gone before it prints."""
    import subprocess
    import sys

    command = [sys.executable, "-c", "import sys; from optimizer.cli import main; sys.exit(main())", *map(str, argv)]
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    err = process.stderr.read()
    return process.wait(timeout=300), err


def test_a_closed_stdout_still_writes_the_reports_and_judges_the_gates(tmp_path):
    # `graphopt compare ... --json c.json | head` is common in CI logs: rich exited 1 at the first line of the
    # table, before the JSON and HTML were written and the gates judged.
    model = save_matmul_model(tmp_path / "m.onnx")
    quick = ["--time-budget", "0.2", "--iterations", "5", "--warmup", "0"]
    code, err = _graphopt_into_a_closed_pipe(
        ["compare", model, model, *quick, "--json", "c.json", "--html", "c.html", "--min-cosine", "0.99"], tmp_path
    )
    assert code == exit_codes.OK, err
    assert (tmp_path / "c.json").exists() and (tmp_path / "c.html").exists()
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    code, err = _graphopt_into_a_closed_pipe(
        ["optimize", model, "-o", "o.onnx", "--pipeline-json", "p.json", "--compare", *quick, "--max-ratio", "1e-9"],
        tmp_path,
    )
    assert code == exit_codes.SLOWER, err
    assert (tmp_path / "o.onnx").exists() and (tmp_path / "p.json").exists()


@pytest.mark.parametrize("argv", [["--version"], ["optimize", "m.onnx", "-o", "o.onnx", "--print-config"]])
def test_printing_into_a_closed_stdout_is_no_traceback(argv, tmp_path):
    code, err = _graphopt_into_a_closed_pipe(argv, tmp_path)
    assert code == exit_codes.SIGPIPE, err
    assert err == "", err


def test_verdict_marks_accuracy_when_an_output_was_not_compared():
    # An output whose shape changed is left out of the accuracy (a warning says so in the card); the verdict
    # still read "outputs identical to 1e-6", green and unmarked, on the outputs that were compared.
    skipped = "output 'z' is float32[8] in AFTER, float32[1, 8] in BEFORE: its accuracy is not compared"
    report = _report(warnings=[skipped])
    page = render_html(report)
    head = page[page.index("<h1") : page.index("</h1>")]
    accuracy = head[head.index("1 output not compared; the others identical") - 40 :]
    assert "seg concern" in accuracy and "href='#card-accuracy'" in accuracy, head
    report.providers[0].accuracy = []  # no output could be compared
    assert "outputs not compared" in verdict(report)


def _save_two_output_model(path, *, flatten_z: bool):
    """``y = Relu(x)`` and ``z = Relu(x)``; ``flatten_z`` gives ``z`` another shape, ``[batch * 8]``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["r"])]
    initializers = []
    if flatten_z:
        nodes.append(helper.make_node("Reshape", ["r", "flat"], ["z"]))
        initializers.append(numpy_helper.from_array(np.array([-1], np.int64), "flat"))
    else:
        nodes.append(helper.make_node("Identity", ["r"], ["z"]))
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n"] if flatten_z else ["batch", 8]),
        ],
        initializer=initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def test_min_cosine_fails_when_an_output_could_not_be_compared(tmp_path, capsys):
    # AFTER's z has another shape, so compare leaves it out of the accuracy (with a warning) and the gate,
    # reading only the outputs compared, passed on y alone.
    before = _save_two_output_model(tmp_path / "before.onnx", flatten_z=False)
    after = _save_two_output_model(tmp_path / "after.onnx", flatten_z=True)
    quick = ["--time-budget", "0.2", "--iterations", "5", "--warmup", "0"]
    code, _, err = run_cli(["compare", before, after, *quick, "--min-cosine", "0.99", "-q"], capsys)
    assert code == exit_codes.LESS_ACCURATE, err
    assert "--min-cosine 0.99: output 'z' is float32[8] in AFTER, float32[1, 8] in BEFORE: its accuracy is not" in err


def test_no_verify_compare_takes_inputs_for_the_comparison(tmp_path, capsys):
    # On optimize --compare, --inputs are also the comparison's data; with --no-verify they are only that,
    # and the run was refused as if they did nothing.
    import json

    import numpy as np

    model = save_matmul_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "held_out.npz", x=np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32))
    quick = ["--time-budget", "0.2", "--iterations", "5", "--warmup", "0"]
    command = ["optimize", model, "-o", tmp_path / "o.onnx", "--no-verify", "--inputs", tmp_path / "held_out.npz"]
    code, _, err = run_cli([*command, "--compare", *quick, "--compare-json", tmp_path / "c.json"], capsys)
    assert code == exit_codes.OK, err
    (provider,) = json.loads((tmp_path / "c.json").read_text())["providers"]
    assert "held_out.npz" in provider["accuracy_data"] and provider["accuracy"][0]["samples"] == 4
    code, _, err = run_cli(command, capsys)  # without --compare they would do nothing: still refused
    assert code == exit_codes.USAGE and "--inputs are verification inputs" in err

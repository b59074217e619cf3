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

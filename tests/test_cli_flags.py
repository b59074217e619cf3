"""No flag is silently ignored; -v/-q after the subcommand; --version; the renamed report flags."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from optimizer import exit_codes
from tests._cli_models import make_pass_fail, run_cli, save_matmul_model


@pytest.fixture
def model(tmp_path):
    return save_matmul_model(tmp_path / "m.onnx")


def _one_error(code: int, err: str, message: str) -> None:
    assert code == exit_codes.USAGE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # refused before any work: not even a progress line
    assert lines[0].startswith("graphopt: error: ") and message in lines[0], lines[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ep", "cpu"], "--ep: comparison flags do nothing without --compare"),
        (["--batch", "2", "--compare-json", "c.json"], "--batch, --compare-json: comparison flags do nothing"),
        (["--max-ratio", "1.1"], "--max-ratio: comparison flags do nothing without --compare"),
        (["--compare", "--ep", "tpu"], "--ep tpu: unknown execution provider (choose from cpu, cuda)"),
        (["--compare", "--prompt-length", "8"], "--prompt-length: only with --generate"),
        (["--calibration-method", "percentile"], "--calibration-method does nothing here: it needs --quantize static"),
        (["--block-size", "32"], "--block-size does nothing here: it needs --quantize int4"),
        (["--per-channel"], "--per-channel does nothing here: it needs"),
        (["--keep-io-types"], "--keep-io-types does nothing here: it needs --fp16"),
        # Away from its default the registry refuses it, in the words the Python API uses.
        (["--no-repair"], "--no-repair (repair=False) needs --prune-ffn R"),
        (["-v", "-q"], "-v and -q: choose one"),
        # On the CPU target the default split-conv-padding times kernels (at --threads): without it, nothing does.
        (
            ["--target", "cuda", "--threads", "1"],
            "--threads does nothing here: it sets the threads of --compare and of",
        ),
        (["--quantize", "dynamic", "--passes", "-split-conv-padding", "--threads", "1"], "--threads does nothing here"),
        (["--threads", "0", "--compare"], "--threads 0: expected a positive number of threads"),
        (["--budget-decode-steps", "0"], "--budget-decode-steps 0 (budget_decode_steps=0) does nothing here: it"),
        (["--quantize", "dynamic", "--budget-decode-steps", "4"], "does nothing here: it sets how an accuracy budget"),
        (["--quantize", "dynamic", "--min-cosine", "0.9", "--budget-decode-steps", "-1"], "0 or more"),
    ],
)
def test_a_flag_that_would_do_nothing_is_an_error(model, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "out.onnx"
    code, out, err = run_cli(["optimize", model, "-o", output, *flags], capsys)
    _one_error(code, err, message)
    assert out == "" and not output.exists()


def test_calibration_without_an_approximate_pass_is_an_error(model, tmp_path, capsys):
    np.savez(tmp_path / "c.npz", x=np.ones((4, 8), np.float32))
    code, _, err = run_cli(["optimize", model, "-o", tmp_path / "o.onnx", "--calibration", tmp_path / "c.npz"], capsys)
    _one_error(code, err, "--calibration needs --prune-ffn R or")


def test_generate_flags_on_compare_need_generate(model, capsys):
    code, _, err = run_cli(["compare", model, model, "--new-tokens", "4"], capsys)
    _one_error(code, err, "--new-tokens: only with --generate")


def test_old_report_spellings_still_work_with_a_warning(model, tmp_path, capsys):
    report, comparison = tmp_path / "r.json", tmp_path / "c.json"
    quick = ["--time-budget", "0.2", "--iterations", "3", "--warmup", "0"]
    command = ["optimize", model, "-o", tmp_path / "o.onnx", "--report", report, "--compare", "--json", comparison]
    code, _, err = run_cli([*command, *quick], capsys)
    assert code == exit_codes.OK, err
    assert "graphopt: warning: --report is now --pipeline-json" in err
    assert "graphopt: warning: --json is now --compare-json" in err
    assert json.loads(report.read_text())["schema"] == "graphopt.pipeline-report/1"
    assert json.loads(comparison.read_text())["schema"] == "graphopt.comparison-report/1"
    # The new spellings, without a warning.
    command = ["optimize", model, "-o", tmp_path / "o.onnx", "--pipeline-json", report]
    code, _, err = run_cli([*command, "--compare", "--compare-json", comparison, *quick], capsys)
    assert code == exit_codes.OK and "warning: --" not in err


def test_old_spelling_is_named_in_path_errors(model, tmp_path, capsys):
    code, _, err = run_cli(["optimize", model, "-o", tmp_path / "o.onnx", "--report", model], capsys)
    assert code == exit_codes.USAGE and "choose another --report" in err


def test_version(capsys):
    from optimizer.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == exit_codes.OK
    line = capsys.readouterr().out.strip()
    assert line.startswith("graphopt ") and "onnx-ir " in line and "Python " in line
    assert "\n" not in line


def test_verbose_after_the_subcommand(model, tmp_path, capsys, monkeypatch):
    make_pass_fail(monkeypatch, "remove-identity")
    command = ["optimize", model, "-o", tmp_path / "o.onnx"]
    _, _, err = run_cli(command, capsys)
    assert "Traceback" not in err  # a failed pass's traceback is for -v
    before = logging.getLogger("optimizer").level  # another test module may have set it
    code, _, err = run_cli([*command, "-v"], capsys)
    assert code == exit_codes.OK
    assert "optimizer.pipeline: pass remove-identity raised; rolled back" in err and "Traceback" in err
    # The levels come back after the run.
    assert logging.getLogger("optimizer").level == before


def test_verbose_keeps_the_libraries_at_warning():
    from rich.console import Console

    from optimizer.console import logging_for

    levels = {}
    for verbosity in (0, 1, 2):
        with logging_for(verbosity, Console(stderr=True)):
            levels[verbosity] = (
                logging.getLogger("optimizer").getEffectiveLevel(),
                logging.getLogger("onnxscript.rewriter").getEffectiveLevel(),
            )
    assert levels[0] == (logging.ERROR, logging.ERROR)
    assert levels[1] == (logging.INFO, logging.WARNING)
    assert levels[2] == (logging.DEBUG, logging.INFO)


@pytest.mark.parametrize(
    ("options", "attribute"),
    [
        ({"quantize": "dynamic", "min_cosine": 0.99}, "timing_threads"),
        ({"quantize": "static", "min_cosine": 0.99}, "timing_threads"),
        ({"quantize": "static"}, None),  # no budget: nothing times kernels
        ({"quantize": "int4", "min_cosine": 0.99}, "timing_threads"),
        ({"lowrank": 0.25}, "threads"),
    ],
)
def test_threads_reach_the_passes_that_time_kernels(options, attribute):
    from optimizer.errors import PassSelectionError
    from optimizer.options import Options
    from optimizer.protocol import PassContext
    from optimizer.registry import resolve

    context = PassContext(Options(threads=1, **options))
    if attribute is None:  # nothing times kernels: the registry refuses threads, as for any unused option
        with pytest.raises(PassSelectionError, match="does nothing here"):
            resolve(["-split-conv-padding"], context.options)  # the CPU default's split-conv-padding times kernels
        return
    timing = [
        spec
        for spec in resolve(None, context.options)
        if spec.kernels_timed(context.options) and spec.name != "split-conv-padding"
    ]
    assert len(timing) == 1
    assert getattr(timing[0].factory(context), attribute) == 1


def test_threads_with_a_pass_that_times_kernels_needs_no_compare(model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["--quantize", "dynamic", "--min-cosine", "0.5", "--threads", "1"]
    code, _, err = run_cli(["optimize", model, "-o", tmp_path / "q.onnx", *flags], capsys)
    assert code == 0, err


def test_the_api_refuses_threads_that_nothing_uses(model):
    from optimizer.api import optimize
    from optimizer.errors import PassSelectionError

    with pytest.raises(PassSelectionError, match="--threads 2 \\(threads=2\\) does nothing here"):
        optimize(model, threads=2, target="cuda")


def test_threads_for_compare_alone_still_run(model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["--compare", "--threads", "1", "--time-budget", "0.2", "--iterations", "3", "--warmup", "0"]
    code, _, err = run_cli(["optimize", model, "-o", tmp_path / "o.onnx", *flags], capsys)
    assert code == 0, err

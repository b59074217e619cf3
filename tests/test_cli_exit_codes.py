"""Exit codes that gate CI: --strict, compare --max-ratio and --min-cosine, usage errors (optimizer.exit_codes)."""

from __future__ import annotations

import pytest

from optimizer import exit_codes
from optimizer.errors import GraphoptError
from tests._cli_models import make_pass_fail, run_cli, save_matmul_model

# Compare as little as possible: these tests check the verdict, never a speed.
QUICK = ["--time-budget", "0.2", "--iterations", "10", "--warmup", "0"]  # 10 pairs: the fewest --max-ratio judges


def test_codes_are_distinct_and_usage_is_graphopterror_code():
    codes = [exit_codes.OK, exit_codes.BUG, exit_codes.USAGE, *exit_codes.GATE_ORDER, exit_codes.SIGINT]
    assert len(set(codes)) == len(codes)
    assert GraphoptError.exit_code == exit_codes.USAGE


@pytest.fixture
def model(tmp_path):
    return save_matmul_model(tmp_path / "m.onnx")


def test_strict_fails_when_a_pass_asked_for_by_name_fails(model, tmp_path, capsys, monkeypatch):
    make_pass_fail(monkeypatch, "remove-identity")
    command = ["optimize", model, "-o", tmp_path / "out.onnx", "--passes", "remove-identity,fold-constants"]
    code, _, err = run_cli([*command, "--strict"], capsys)
    assert code == exit_codes.STRICT_FAILED
    assert "--strict: remove-identity, asked for, failed: RuntimeError: this pass always fails" in err
    assert (tmp_path / "out.onnx").exists()  # the result is still written: the gate only sets the exit code
    # Without --strict the same run succeeds (the table says the pass failed).
    code, out, _ = run_cli(command, capsys)
    assert code == exit_codes.OK and "failed" in out


def test_strict_ignores_a_default_pass_nobody_asked_for(model, tmp_path, capsys, monkeypatch):
    make_pass_fail(monkeypatch, "remove-identity")
    code, _, err = run_cli(["optimize", model, "-o", tmp_path / "out.onnx", "--strict"], capsys)
    assert code == exit_codes.OK, err
    assert "--strict" not in err


def test_strict_counts_a_pass_added_with_plus(model, tmp_path, capsys, monkeypatch):
    make_pass_fail(monkeypatch, "fuse-gelu")
    code, _, err = run_cli(["optimize", model, "-o", tmp_path / "o.onnx", "--passes", "+fuse-gelu", "--strict"], capsys)
    assert code == exit_codes.STRICT_FAILED, err


@pytest.fixture
def pair(tmp_path):
    before = save_matmul_model(tmp_path / "before.onnx")
    after = save_matmul_model(tmp_path / "after.onnx", noise=0.5)
    return before, after


def test_min_cosine_fails_a_less_accurate_model(pair, capsys):
    code, _, err = run_cli(["compare", *pair, *QUICK, "--min-cosine", "0.9999"], capsys)
    assert code == exit_codes.LESS_ACCURATE
    assert "--min-cosine 0.9999: cpu: output 'y' has cosine" in err


def test_min_cosine_passes_an_identical_model(pair, capsys):
    before, _ = pair
    code, _, err = run_cli(["compare", before, before, *QUICK, "--min-cosine", "0.9999"], capsys)
    assert code == exit_codes.OK, err


def test_max_ratio_uses_the_upper_end_of_the_interval(pair, capsys):
    before, _ = pair
    # No model runs in a billionth of another's time; every model runs within a billion times.
    code, _, err = run_cli(["compare", before, before, *QUICK, "--max-ratio", "1e-9"], capsys)
    assert code == exit_codes.SLOWER
    assert "--max-ratio 1e-09: cpu batch 1: AFTER takes" in err and "95 % interval up to" in err
    code, _, err = run_cli(["compare", before, before, *QUICK, "--max-ratio", "1e9"], capsys)
    assert code == exit_codes.OK, err


def test_several_failed_gates_print_all_and_exit_with_the_first(pair, capsys):
    code, _, err = run_cli(["compare", *pair, *QUICK, "--max-ratio", "1e-9", "--min-cosine", "0.9999"], capsys)
    assert code == exit_codes.LESS_ACCURATE
    assert "--max-ratio" in err and "--min-cosine" in err


def test_optimize_compare_gates(model, tmp_path, capsys):
    command = ["optimize", model, "-o", tmp_path / "o.onnx", "--compare", *QUICK]
    code, _, err = run_cli([*command, "--max-ratio", "1e-9", "--compare-min-cosine", "0.99"], capsys)
    assert code == exit_codes.SLOWER, err
    assert "--min-cosine" not in err  # the optimized model is exact


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-ratio", "0"], "--max-ratio 0.0: expected a positive ratio"),
        (["--max-ratio", "nan"], "--max-ratio nan: expected a positive ratio"),
        (["--min-cosine", "1.5"], "--min-cosine 1.5: a cosine similarity is between -1 and 1"),
    ],
)
def test_bad_gate_values_are_usage_errors(pair, capsys, flags, message):
    code, _, err = run_cli(["compare", *pair, *QUICK, *flags], capsys)
    assert code == exit_codes.USAGE
    assert err.strip().splitlines()[-1].startswith("graphopt: error: " + message)

"""$GRAPHOPT_SESSION_THREADS: the intra-op threads of the sessions graphopt checks and calibrates with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer import runtime, sessions
from optimizer.errors import OptionError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "encoder.onnx"


def test_unset_leaves_onnx_runtimes_default(monkeypatch):
    monkeypatch.delenv(runtime.SESSION_THREADS_ENV, raising=False)
    # On a machine whose container quota caps the cores, unset takes the quota instead (tests/test_cores.py).
    monkeypatch.setattr(sessions, "_quota_threads", lambda: 0)
    assert runtime.session_threads() == 0
    assert runtime.session_options().intra_op_num_threads == 0


def test_a_count_sets_the_checking_sessions_but_not_the_timing_ones(monkeypatch):
    monkeypatch.setenv(runtime.SESSION_THREADS_ENV, " 3 ")
    assert runtime.session_options("all").intra_op_num_threads == 3
    assert runtime.session_options("all", 2).intra_op_num_threads == 2  # asked for: kept
    # compare's and the budget's timings run as deployed (ONNX Runtime's default, or --threads)
    assert runtime.session_options("all", sequential=True).intra_op_num_threads == 0
    assert runtime.session_options("all", 4, sequential=True).intra_op_num_threads == 4


@pytest.mark.parametrize("given", ["0", "-1", "two", "1.5"])
def test_a_bad_count_is_an_option_error(monkeypatch, given):
    monkeypatch.setenv(runtime.SESSION_THREADS_ENV, given)
    with pytest.raises(OptionError, match=r"\$GRAPHOPT_SESSION_THREADS must be a whole number"):
        runtime.session_options()


def test_the_cli_says_so_in_one_line_and_writes_nothing(tmp_path):
    output = tmp_path / "out.onnx"
    before = EXAMPLE.read_bytes()
    env = {**os.environ, runtime.SESSION_THREADS_ENV: "many"}
    done = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "optimize", str(EXAMPLE), "-o", str(output)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "graphopt: error: $GRAPHOPT_SESSION_THREADS must be a whole number of threads, at least 1, not 'many'"
    ]
    assert not output.exists() and EXAMPLE.read_bytes() == before


@pytest.mark.parametrize("command", [["optimize", "--no-verify"], ["compare"]])
def test_every_command_refuses_it_up_front(tmp_path, capsys, monkeypatch, command):
    """Also where no checking session opens (--no-verify, compare's timing sessions take --threads)."""
    from optimizer import cli

    monkeypatch.setenv(runtime.SESSION_THREADS_ENV, "0")
    output = tmp_path / "out.onnx"
    argv = [command[0], str(EXAMPLE), *(["-o", str(output)] if command[0] == "optimize" else [str(EXAMPLE)])]
    assert cli.main([*argv, *command[1:]]) == 2
    assert "$GRAPHOPT_SESSION_THREADS must be a whole number" in capsys.readouterr().err
    assert not output.exists()

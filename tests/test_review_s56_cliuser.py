"""Review s56, the command line as a user meets it: pipes, progress, refused runs, flags that do nothing.

Found (each test below failed before its fix):

- ``graphopt optimize ... 2>&1 | head`` (a reader of stderr that leaves): the next progress line raised
  ``BrokenPipeError`` (``FailSafeStream`` passed it on for both streams), which ``main`` took for
  ``--print-config`` into ``| head -0``: exit 141 and no model written, where README's 141 row says optimize and
  compare go on, write their files and judge their gates.
- ``compare --iterations 1000000`` on a model that runs in microseconds: the bootstrap drew 2000 x (pairs timed)
  picks at once (4.1 GiB at 276,563 pairs in 5 s): the system killed the run (exit 137, no word), or with a
  memory limit it ended in "out of memory ... bind smaller sizes with --dim", after the work.
- ``FORCE_COLOR=1`` (set by many CI jobs for colored logs) made rich take a log for a terminal: live progress
  bars, redrawn many times a second and cleared at the end, filled the log in place of README's plain lines.
- ``graphopt demo`` refused (``--max-ratio 2`` without ``--compare``, a missing ``--inputs``) left an empty
  ``build/demo/`` in the current folder: the folder was made before the checks.
- ``optimize --no-verify --dim batch=2`` (no ``--static-shapes``, ``--compare`` or approximate pass) ran with the
  ``--dim`` doing nothing, where README says no flag is silently ignored.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from optimizer.compare import stats
from optimizer.console import BarsSink, LinesSink, progress_sink
from tests._cli_models import run_cli, save_matmul_model

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return save_matmul_model(tmp_path / "m.onnx")


def _run_with_a_reader_that_leaves(folder: Path, argv: list[str], stream: str) -> int:
    """``graphopt ARGV`` whose ``stream`` (stderr, or both) goes to a pipe whose reader leaves after one line."""
    env = {**os.environ, "PYTHONPATH": os.fspath(REPO_ROOT)}
    read, write = os.pipe()
    streams = {"stdout": subprocess.DEVNULL, "stderr": write}
    if stream == "both":
        streams["stdout"] = write
    process = subprocess.Popen([sys.executable, "-m", "optimizer.cli", *argv], cwd=folder, env=env, **streams)
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        reader.readline()
    return process.wait(timeout=120)


@pytest.mark.parametrize("stream", ["stderr", "both"])
def test_a_reader_of_stderr_that_leaves_does_not_stop_the_run(model, tmp_path, stream):
    # One progress line per pass follows the first: the second went into the closed pipe.
    code = _run_with_a_reader_that_leaves(tmp_path, ["optimize", "m.onnx", "-o", "out.onnx"], stream)
    assert code == 0
    assert (tmp_path / "out.onnx").exists()


def test_a_failed_gate_into_a_stderr_whose_reader_left_keeps_its_exit_code(model, tmp_path):
    argv = ["optimize", "m.onnx", "-o", "out.onnx", "--passes", "fuse-gelu", "--strict", "--pipeline-json", "r.json"]
    assert _run_with_a_reader_that_leaves(tmp_path, argv, "stderr") == 3
    assert (tmp_path / "out.onnx").exists() and (tmp_path / "r.json").exists()


def test_the_bootstrap_draws_a_bounded_block_at_a_time(monkeypatch):
    drawn = []
    real = np.random.default_rng

    class Spy:
        def __init__(self, seed):
            self.rng = real(seed)

        def integers(self, low, high, size):
            drawn.append(int(np.prod(size)))
            return self.rng.integers(low, high, size=size)

    monkeypatch.setattr(stats, "BOOTSTRAP_BLOCK", 50_000)
    monkeypatch.setattr(stats.np.random, "default_rng", Spy)
    rng = real(1)
    before = rng.random(3_000) + 1.0
    after = before * 0.8 + rng.random(3_000) * 0.1
    estimate = stats.paired_ratio(before, after)
    assert max(drawn) <= 50_000 and sum(drawn) == 2000 * 3_000
    assert estimate.low <= estimate.ratio <= estimate.high


def test_the_bootstrap_of_the_usual_run_counts_is_unchanged():
    # 2000 resamples of up to 2,097 pairs are one block: the same draws, the same interval as before.
    rng = np.random.default_rng(3)
    for pairs in (10, 200, 2_000):
        before = rng.random(pairs) + 1.0
        after = before * 0.9 + rng.random(pairs) * 0.05
        picks = np.random.default_rng(0).integers(0, pairs, size=(2000, pairs))
        ratios = np.median(after[picks], axis=1) / np.median(before[picks], axis=1)
        low, high = np.quantile(ratios, [0.025, 0.975])
        estimate = stats.paired_ratio(before, after)
        assert (estimate.low, estimate.high) == (low, high)


def test_force_color_off_a_terminal_gets_plain_lines(monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    log = Console(file=io.StringIO())  # rich reads FORCE_COLOR: a terminal to it, not to the log
    assert log.is_terminal
    with progress_sink(log, quiet=False) as sink:
        assert isinstance(sink, LinesSink)


def test_a_real_terminal_still_gets_bars(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    console = Console(file=Terminal(), force_terminal=True)
    with progress_sink(console, quiet=False) as sink:
        assert isinstance(sink, BarsSink)


@pytest.mark.parametrize("flags", [["--max-ratio", "2"], ["--inputs", "absent.npz"]], ids=["flag", "file"])
def test_a_refused_demo_leaves_no_build_folder(tmp_path, monkeypatch, capsys, flags):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["demo", *flags], capsys)
    assert code == 2 and err.startswith("graphopt: error:"), err
    assert not (tmp_path / "build").exists()


def test_a_demo_keeps_a_build_folder_that_was_there(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build" / "demo").mkdir(parents=True)
    code, _, _ = run_cli(["demo", "--max-ratio", "2"], capsys)
    assert code == 2 and (tmp_path / "build" / "demo").is_dir()


def test_dim_with_no_verify_and_nothing_it_sizes_is_refused(model, capsys):
    code, _, err = run_cli(["optimize", "m.onnx", "-o", "out.onnx", "--no-verify", "--dim", "batch=2"], capsys)
    assert code == 2 and "--dim does nothing with --no-verify" in err, err
    assert not Path("out.onnx").exists()


@pytest.mark.parametrize(
    "extra", [["--static-shapes"], ["--compare"], ["--quantize", "dynamic"]], ids=["static", "compare", "approximate"]
)
def test_dim_with_no_verify_and_something_it_sizes_is_taken(model, capsys, extra):
    argv = ["optimize", "m.onnx", "-o", "out.onnx", "--no-verify", "--dim", "batch=2", *extra, "--print-config"]
    code, printed, err = run_cli(argv, capsys)
    assert code == 0 and "dim = { batch = 2 }" in printed, err


def test_a_batch_size_named_twice_is_refused(model, capsys):
    # --ep cpu,cpu was refused; --batch 1,1 timed batch 1 twice, each with half its share of the time budget.
    code, _, err = run_cli(["compare", model, model, "--batch", "1,2,1", "-q"], capsys)
    assert code == 2 and "batch size 1 is named twice" in err, err


def test_passes_quiet_lists_the_default_pipeline_names_only(capsys):
    # -q was accepted and printed the whole table anyway ("no flag is ignored").
    from optimizer.registry import all_passes

    code, out, _ = run_cli(["passes", "-q", "--target", "cuda"], capsys)
    assert code == 0
    assert out.split() == [spec.name for spec in all_passes() if "cuda" in spec.default_for]

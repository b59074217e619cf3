"""Progress: the protocol passes report to (optimizer.progress) and what the CLI shows (optimizer.console)."""

from __future__ import annotations

import io
import re
import time

from optimizer import exit_codes
from optimizer.console import LinesSink
from optimizer.progress import reporting_to, task, track
from tests._cli_models import run_cli, save_matmul_model


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, description, total):
        self.events.append(("start", description, total))
        return len(self.events)

    def update(self, key, completed, description=None):
        self.events.append(("update", key, completed, description))

    def stop(self, key, finished=True):
        self.events.append(("stop", key, finished))


def test_without_a_sink_work_is_silent_and_loops_unchanged():
    items = [1, 2, 3]
    assert track(items, "steps") is items
    with task("a step", total=2) as step:
        step.advance()
        step.describe("renamed")
    assert step.completed == 1


def test_a_sink_sees_tasks_counts_and_their_end_even_on_error():
    recorder = _Recorder()
    with reporting_to(recorder):
        assert list(track([10, 20], "items")) == [10, 20]
        try:
            with task("fails", total=3) as step:
                step.advance(2)
                raise ValueError
        except ValueError:
            pass
    assert recorder.events == [
        ("start", "items", 2),
        ("update", 1, 1, None),
        ("update", 1, 2, None),
        ("stop", 1, True),
        ("start", "fails", 3),
        ("update", 5, 2, None),
        ("stop", 5, False),
    ]
    # The sink is gone after the block.
    assert track([1], "after") == [1]


def test_a_loop_left_before_its_last_item_is_not_finished():
    recorder = _Recorder()
    with reporting_to(recorder):
        try:
            for _ in track([1, 2, 3], "raises"):
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        steps = track([1, 2, 3], "breaks")
        for item in steps:
            if item == 2:
                break
        steps.close()
    stops = [event for event in recorder.events if event[0] == "stop"]
    assert stops == [("stop", 1, False), ("stop", 3, False)]
    with reporting_to(recorder):
        assert list(track([1, 2], "runs out")) == [1, 2]
    assert recorder.events[-1] == ("stop", 6, True)


def test_lines_sink_says_a_step_left_by_an_interruption_stopped_not_done():
    stream, clock = io.StringIO(), _Clock()
    sink = LinesSink(stream, interval=10.0, clock=clock)
    with reporting_to(sink):
        try:
            with task("optimizing m.onnx"), task("pass 1/1 quantize-static"):
                for _ in track(range(100), "calibration batches"):
                    clock.now += 6.0
                    if clock.now > 30:
                        raise KeyboardInterrupt  # what the CLI's SIGTERM handler raises (Interrupted)
        except KeyboardInterrupt:
            pass
    last = stream.getvalue().splitlines()[-1]
    assert last == "graphopt:     calibration batches 5/100, 36 s, stopped", stream.getvalue()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_sink_prints_passes_and_an_occasional_count():
    stream, clock = io.StringIO(), _Clock()
    sink = LinesSink(stream, interval=10.0, clock=clock)
    run = sink.start("optimizing m.onnx", None)
    assert stream.getvalue() == ""  # the run's line waits for a line under it
    one = sink.start("pass 1/2 quantize-dynamic", None)
    loop = sink.start("calibration batches", 100)
    for done in range(1, 101):
        clock.now += 0.25  # a batch every quarter second: one line per 10 s, not one per batch
        sink.update(loop, done)
    sink.stop(loop)
    sink.stop(one)
    sink.stop(run)
    lines = stream.getvalue().splitlines()
    assert lines[:2] == ["graphopt: optimizing m.onnx", "graphopt:   pass 1/2 quantize-dynamic"]
    counts = [line for line in lines if "calibration batches" in line]
    assert counts[0] == "graphopt:     calibration batches 40/100, 10 s"
    assert counts[-1] == "graphopt:     calibration batches 100/100, 25 s, done"
    assert len(counts) == 3  # at 10 s, 20 s, and the end


def test_optimize_off_a_terminal_prints_plain_pass_lines(tmp_path, capsys):
    model = save_matmul_model(tmp_path / "m.onnx")
    code, out, err = run_cli(["optimize", model, "-o", tmp_path / "o.onnx"], capsys)
    assert code == exit_codes.OK
    lines = err.splitlines()
    assert lines[0] == "graphopt: optimizing m.onnx"
    assert re.fullmatch(r"graphopt:   pass 1/\d+ remove-identity", lines[1])
    assert all(line.startswith("graphopt:   pass ") for line in lines[1:]), err
    assert "\x1b[" not in err  # no terminal control codes in a log
    assert "wrote" in out


def test_quiet_prints_nothing(tmp_path, capsys):
    model = save_matmul_model(tmp_path / "m.onnx")
    command = ["optimize", model, "-o", tmp_path / "o.onnx"]
    for argv in (["-q", *command], [*command, "-q"]):
        code, out, err = run_cli(argv, capsys)
        assert code == exit_codes.OK
        assert (out, err) == ("", "")
    quick = ["--time-budget", "0.2", "--iterations", "3", "--warmup", "0"]
    code, out, err = run_cli(["compare", model, model, *quick, "--quiet"], capsys)
    assert code == exit_codes.OK and (out, err) == ("", "")


def test_compare_off_a_terminal_shows_its_timing(tmp_path, capsys):
    model = save_matmul_model(tmp_path / "m.onnx")
    quick = ["--time-budget", "0.2", "--iterations", "3", "--warmup", "0"]
    code, _, err = run_cli(["compare", model, model, *quick], capsys)
    assert code == exit_codes.OK
    assert "graphopt: comparing BEFORE and AFTER\ngraphopt:   timing cpu batch 1\n" in err
    # The timing task ends before the memory probes start: they are a step of their own, not under it.
    assert "\ngraphopt:   cpu: memory of BEFORE, then AFTER\n" in err


def test_lines_sink_heartbeat_names_the_innermost_step():
    # The heartbeat runs on the real clock, in its own thread: wait for it (a few 0.05 s intervals).
    stream = io.StringIO()
    with LinesSink(stream, interval=0.05) as sink:
        run = sink.start("optimizing m.onnx", None)
        deadline = time.monotonic() + 10
        while "still running" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        sink.stop(run)
    first = stream.getvalue().splitlines()[0]
    assert first.startswith("graphopt: optimizing m.onnx, ") and first.endswith("(still running)")


def test_timing_stopped_by_its_time_budget_reports_the_step_done():
    # Stopped early by the budget, the last count must end the step: a watcher that waits for
    # done == total would otherwise show "timing ... 12/200 (still running)" through later steps.
    from optimizer.compare.timing import TimingPlan, time_interleaved

    class Instant:
        def run(self) -> float:
            return 0.0

    seen: list[tuple[int, int]] = []
    plan = TimingPlan(warmup=0, iterations=200, time_budget=0.0, min_iterations=12)
    before, _ = time_interleaved(Instant(), Instant(), plan, lambda done, total: seen.append((done, total)))
    assert len(before) == 12
    assert seen[-1] == (12, 12) and seen[-2] == (12, 200)


def test_warm_up_runs_stop_when_they_have_taken_the_time_budget(monkeypatch):
    """``--warmup 100000`` (a typo) ran every warm-up run outside ``--time-budget``: they stop once they have taken
    it, after one pair at least; then the timed runs still get their ``min_iterations``."""
    from optimizer.compare import timing

    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    class OneSecond:
        runs = 0

        def run(self) -> float:
            OneSecond.runs += 1
            clock[0] += 1.0
            return 1.0

    plan = timing.TimingPlan(warmup=100000, iterations=200, time_budget=10.0, min_iterations=3)
    before, after = timing.time_interleaved(OneSecond(), OneSecond(), plan)
    assert len(before) == len(after) >= 3
    warm_up = OneSecond.runs - len(before) - len(after)
    assert 2 <= warm_up <= 12, warm_up  # five or six pairs: the budget's 10 s at 2 s a pair
    assert warm_up < 2 * plan.warmup

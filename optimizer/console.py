"""What the CLI shows while it works: progress sinks for a terminal and for a log, and its logging levels.

- On a terminal, ``BarsSink`` draws one live line per open task (``pass 3/12
  fuse-attention``, and under it ``calibration batches ━━━━ 40/128``), each with its
  elapsed time, and clears them when the work is done.
- Off a terminal (CI logs, ``| tee``), ``LinesSink`` writes plain lines to stderr: one
  as each pass starts, and for longer steps one every ``interval`` seconds at most,
  so a log shows a heartbeat without a line per batch.
- ``--quiet`` installs no sink at all (see ``optimizer.progress``).

Verbosity: 0 shows errors only (the report says the rest), 1 (``-v``) graphopt's decisions
(``optimizer.*`` and ``passes.*`` at INFO, the libraries still at WARNING), 2
(``-vv``) the libraries' logs too (onnxscript, onnx-ir at INFO; graphopt at DEBUG).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from optimizer.streams import point_at_null_device

# Loggers of graphopt itself; everything else (onnxscript, onnx_ir, onnx) is "the libraries".
OWN_LOGGERS = ("optimizer", "passes")
# The libraries whose logs -vv shows: set explicitly, since a library (or an embedding program)
# may have given its logger a level of its own that the root's would not override.
LIBRARY_LOGGERS = ("onnxscript", "onnx_ir")

# Off a terminal: the least time between two heartbeat lines of the same run.
HEARTBEAT_SECONDS = 10.0


class ReportConsole(Console):
    """The report's console (stdout): when the reader of stdout goes away (``| head``), printing stops, the run goes on.

    rich's own ``Console`` exits with code 1 at the first write into the closed pipe,
    before the run has written its JSON and HTML reports and judged its gates.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        silence_stdout()


def silence_stdout() -> None:
    """Point stdout at the null device, so that what is still buffered, or printed later, goes nowhere quietly."""
    point_at_null_device(sys.stdout)


class _Count(ProgressColumn):
    """``40/128``, or nothing for a task whose count is unknown (a pass)."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{int(task.completed)}/{int(task.total)}", style="progress.download")


class BarsSink:
    """Progress as live bars on a terminal (rich), one line per open task, indented by nesting."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            _Count(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._open: list[Hashable] = []

    def __enter__(self) -> BarsSink:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, description: str, total: int | None) -> Hashable:
        key = self._progress.add_task("  " * len(self._open) + description, total=total)
        self._open.append(key)
        return key

    def update(self, key: Hashable, completed: int, description: str | None = None) -> None:
        if description is not None:
            depth = self._open.index(key) if key in self._open else 0
            self._progress.update(key, completed=completed, description="  " * depth + description)
        else:
            self._progress.update(key, completed=completed)

    def stop(self, key: Hashable, finished: bool = True) -> None:
        if key in self._open:
            self._open.remove(key)
        self._progress.remove_task(key)


class _Open:
    """A task ``LinesSink`` follows: its words, count and when it started."""

    def __init__(self, description: str, total: int | None, depth: int, started: float) -> None:
        self.description, self.total, self.depth, self.started = description, total, depth, started
        self.completed = 0
        self.reported = False
        self.shown = False


class LinesSink:
    """Progress as plain lines (a log, CI): each top-level step as it starts, then a heartbeat.

    Tasks at depth 1 (each pass) print a line when they start, after the line of the run
    they belong to (depth 0), which waits for that first line under it. Deeper
    tasks (a pass's loops) print their count at most every ``interval`` seconds, and a
    last line when they end if they printed any. When no line was printed for
    ``interval`` seconds, a background heartbeat names the innermost open task and its
    elapsed time, so a long silent step still shows the run is alive.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float = HEARTBEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._interval, self._clock = interval, clock
        self._open: dict[int, _Open] = {}
        self._next_key = 0
        self._last_line = clock()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> LinesSink:
        self._heartbeat = threading.Thread(target=self._beat, name="graphopt-heartbeat", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        if self._heartbeat is not None:
            self._heartbeat.join()

    def start(self, description: str, total: int | None) -> Hashable:
        with self._lock:
            key, self._next_key = self._next_key, self._next_key + 1
            self._open[key] = _Open(description, total, len(self._open), self._clock())
            if self._open[key].depth == 1:
                self._write(f"  {description}")
        return key

    def update(self, key: Hashable, completed: int, description: str | None = None) -> None:
        with self._lock:
            item = self._open.get(key)
            if item is None:
                return
            item.completed = completed
            if description is not None:
                item.description = description
            if self._clock() - self._last_line >= self._interval:
                item.reported = True
                self._write(self._state(item))

    def stop(self, key: Hashable, finished: bool = True) -> None:
        with self._lock:
            item = self._open.pop(key, None)
            if item is not None and item.reported:
                self._write(f"{self._state(item)}, {'done' if finished else 'stopped'}")

    def _state(self, item: _Open) -> str:
        count = f" {item.completed}/{item.total}" if item.total is not None else ""
        return f"{'  ' * item.depth}{item.description}{count}, {_seconds(self._clock() - item.started)}"

    def _beat(self) -> None:
        while not self._stopped.wait(min(self._interval, 1.0)):
            with self._lock:
                if not self._open or self._clock() - self._last_line < self._interval:
                    continue
                innermost = max(self._open)
                self._open[innermost].reported = True
                self._open[innermost].shown = True  # the run's own line would only repeat it
                self._write(f"{self._state(self._open[innermost])} (still running)")

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stderr
        # The run's own line waits for the first line under it: a run refused before any
        # step (a missing file) leaves stderr with its one error line.
        for item in self._open.values():
            if item.depth == 0 and not item.shown:
                item.shown = True
                stream.write(f"graphopt: {item.description}\n")
        stream.write(f"graphopt: {text}\n")
        stream.flush()
        self._last_line = self._clock()


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.0f} s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes} min {seconds:02d} s"


def progress_sink(console: Console, quiet: bool) -> contextlib.AbstractContextManager:
    """The sink for this run: bars on a terminal, lines off one, none (``nullcontext(None)``) when quiet."""
    if quiet:
        return contextlib.nullcontext(None)
    if console.is_terminal and not console.is_dumb_terminal and _isatty(console.file):
        return BarsSink(console)
    return LinesSink()


def _isatty(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal. rich takes ``FORCE_COLOR`` (set in many CI jobs for colored logs) for one:
    live bars, redrawn many times a second and cleared at the end, then filled the log in place of its lines."""
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def logging_for(verbosity: int, console: Console) -> Iterator[None]:
    """Log at ``verbosity`` (0, 1 = -v, 2 = -vv) while the block runs; the previous levels and handlers come back.

    On a terminal records go through rich, above the live progress bars; off one, as
    ``name: message`` lines on stderr.
    """
    root = logging.getLogger()
    own = [logging.getLogger(name) for name in OWN_LOGGERS]
    library = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = (root.level, [logger.level for logger in own], [logger.level for logger in library])
    if console.is_terminal and not console.is_dumb_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    libraries, graphopt = {0: (logging.ERROR, logging.ERROR), 1: (logging.WARNING, logging.INFO)}.get(
        verbosity, (logging.INFO, logging.DEBUG)
    )
    root.setLevel(libraries)
    for logger in library:
        logger.setLevel(libraries)
    for logger in own:
        logger.setLevel(graphopt)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for logger, level in zip([*own, *library], [*saved[1], *saved[2]]):
            logger.setLevel(level)

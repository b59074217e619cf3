"""Progress of long steps: the protocol between the work and whoever shows it.

Work that takes long — a pass's calibration batches, a budget search, a repair fit,
a timing loop — wraps its loop in ``track(items, "calibration batches")``, or opens
``with task("budget search", total=8) as step:`` and calls ``step.advance()``. Nothing
is shown unless a *sink* is installed for the current context with
``reporting_to(sink)``: the graphopt CLI installs one (bars on a terminal, a plain
line now and then in a log, nothing with ``--quiet``). A pass run in someone else's
onnx-ir ``PassManager`` stays silent and pays one context-variable lookup per loop.

The sink lives in a ``contextvars.ContextVar``, so two runs in two threads or tasks
report to their own sinks. This module imports nothing of graphopt, so passes may
import it (as they import ``optimizer.protocol``) without depending on the CLI.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Hashable, Iterable, Iterator, Sized
from typing import Protocol, TypeVar

T = TypeVar("T")

__all__ = ["ProgressSink", "Task", "reporting_to", "task", "track"]


class ProgressSink(Protocol):
    """Where progress goes. Tasks nest: ``start`` while another task is open starts a sub-task of it."""

    def start(self, description: str, total: int | None) -> Hashable:
        """A task began; ``total`` steps, or None when the count is not known. Returns the task's key."""

    def update(self, key: Hashable, completed: int, description: str | None = None) -> None:
        """The task has done ``completed`` steps (and is now described as ``description``, if given)."""

    def stop(self, key: Hashable, finished: bool = True) -> None:
        """The task ended: ``finished``, or False when left before its end (an error, an interruption, a loop's
        ``break`` before its last item)."""


_SINK: contextvars.ContextVar[ProgressSink | None] = contextvars.ContextVar("graphopt_progress_sink", default=None)


class Task:
    """An open task: ``advance()`` counts a step done, ``describe(text)`` renames it."""

    def __init__(self, sink: ProgressSink | None, key: Hashable = None) -> None:
        self._sink, self._key, self.completed = sink, key, 0

    def advance(self, steps: int = 1) -> None:
        self.completed += steps
        if self._sink is not None:
            self._sink.update(self._key, self.completed)

    def describe(self, description: str) -> None:
        if self._sink is not None:
            self._sink.update(self._key, self.completed, description)


@contextlib.contextmanager
def task(description: str, total: int | None = None) -> Iterator[Task]:
    """A long step, reported to the installed sink while the block runs (a silent ``Task`` when none is)."""
    sink = _SINK.get()
    if sink is None:
        yield Task(None)
        return
    key = sink.start(description, total)
    try:
        yield Task(sink, key)
    except BaseException:
        sink.stop(key, finished=False)
        raise
    sink.stop(key)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterable[T]:
    """``items``, counting each one taken as a step of a task ``description``.

    ``total`` defaults to ``len(items)`` where it has one. Without a sink, ``items``
    itself is returned: a loop that is not watched costs nothing more.
    """
    sink = _SINK.get()
    if sink is None:
        return items
    if total is None and isinstance(items, Sized):
        total = len(items)
    return _tracked(sink, items, description, total)


def _tracked(sink: ProgressSink, items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    key = sink.start(description, total)
    try:
        for done, item in enumerate(items, 1):
            yield item
            sink.update(key, done)
    except BaseException:  # GeneratorExit too: the loop left before the last item (a break, or its own error)
        sink.stop(key, finished=False)
        raise
    sink.stop(key)


@contextlib.contextmanager
def reporting_to(sink: ProgressSink | None) -> Iterator[None]:
    """Send the progress of work done inside the block (in this context) to ``sink``; None silences it."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)

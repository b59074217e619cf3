"""The process's standard streams as the CLI uses them: one whose writes fail ends what it shows, not the run."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any


def point_at_null_device(stream: Any) -> None:
    """Point the descriptor behind ``stream`` at the null device (nothing for a stream with no file behind it)."""
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)


class FailSafeStream:
    """A standard stream whose write errors (a full disk: ``> /dev/full``, an I/O error) end what it shows, not
    the run: at the first one its descriptor is pointed at the null device (so what is still buffered goes
    nowhere too) and later writes are dropped; the run still writes its files and returns its own code. A broken
    pipe on standard output is raised as before (``ReportConsole.on_broken_pipe`` handles a reader that left, and
    ``--version``/``--print-config`` exit 141); on standard error (``graphopt ... 2>&1 | head``) it ends the progress
    and messages alone: raised there, the next progress line stopped the run before its model was written."""

    def __init__(self, stream: Any, name: str) -> None:
        self._stream, self._name, self._failed = stream, name, False

    def write(self, text: str) -> int:
        if not self._failed:
            try:
                return self._stream.write(text)
            except OSError as error:
                if isinstance(error, BrokenPipeError) and self._name == "standard output":
                    raise
                self._fail(error)
        return len(text)

    def flush(self) -> None:
        if not self._failed:
            try:
                self._stream.flush()
            except OSError as error:
                if isinstance(error, BrokenPipeError) and self._name == "standard output":
                    raise
                self._fail(error)

    def _fail(self, error: OSError) -> None:
        self._failed = True
        point_at_null_device(self._stream)
        if self._name == "standard output" and sys.stderr is not self:
            reason = error.strerror or error
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"graphopt: warning: {self._name}: {reason}; the report is not shown\n")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

"""Timing sessions on ONNX Runtime's execution providers, interleaved so drift hits both models alike.

Sessions run at ONNX Runtime's default optimization level (ORT_ENABLE_ALL): the
baseline for every speed claim is the original model as ORT would run it anyway.
On CUDA, inputs and outputs stay on the device through IO binding and each run is
synchronized, so host↔device copies do not pollute the kernel time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from optimizer.cores import usable_cores
from optimizer.errors import InputSpecError, InvalidModelError, RuntimeRefusedError
from optimizer.sessions import (
    calling_onnxruntime,
    cuda_unavailable_reason,
    import_onnxruntime,
    open_session,
    preload_cuda_libraries,
    session_options,
)

EP_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


@dataclass(frozen=True)
class ExecutionProvider:
    """An EP the user asked for, and whether this machine can run it (``reason`` if not)."""

    name: str
    available: bool
    reason: str = ""


def resolve_execution_providers(names: list[str]) -> list[ExecutionProvider]:
    """Check each requested EP (``cpu``, ``cuda``) against the installed onnxruntime and GPU.

    CUDA counts as available only where a session really runs on it
    (``optimizer.sessions.cuda_unavailable_reason``), not merely where it is compiled in.
    """
    ort = import_onnxruntime()
    available = set(ort.get_available_providers())
    result = []
    for name in names:
        if name not in EP_PROVIDERS:
            raise InputSpecError(f"--ep {name}: unknown execution provider (choose from {', '.join(EP_PROVIDERS)})")
        provider = EP_PROVIDERS[name][0]
        reason = cuda_unavailable_reason() if name == "cuda" else None
        if reason is None and provider not in available:
            reason = f"{provider} is not available"
        result.append(ExecutionProvider(name, reason is None, reason or ""))
    return result


def default_threads() -> int:
    """Intra-op threads when the user gives none: the cores this process may use (``optimizer.cores``: its
    affinity, capped by a container's CPU quota)."""
    return usable_cores()


class TimedSession:
    """One model on one EP with fixed inputs; ``run()`` times a single inference in seconds."""

    def __init__(
        self, path: str, ep: str, inputs: Mapping[str, np.ndarray], threads: int, *, profile_prefix: str | None = None
    ) -> None:
        self.ep, self.path = ep, path
        options = session_options("all", threads, sequential=True, profile_prefix=profile_prefix)
        if ep == "cuda":
            preload_cuda_libraries()
        try:
            self.session = open_session(path, options, EP_PROVIDERS[ep])
        except RuntimeRefusedError as error:
            raise InvalidModelError(f"{path}: ONNX Runtime cannot load it on {ep}: {error.reason}") from error
        if EP_PROVIDERS[ep][0] not in self.session.get_providers():
            # ORT falls back to the CPU when an EP cannot start: timing that as CUDA would be a lie.
            raise InvalidModelError(
                f"{path}: ONNX Runtime ran it on the CPU, not on {ep} ({EP_PROVIDERS[ep][0]} did not start)"
            )
        names = [meta.name for meta in self.session.get_inputs()]
        self.feeds = {name: inputs[name] for name in names}
        self.output_names = [meta.name for meta in self.session.get_outputs()]
        if ep == "cuda":
            with self._running():  # copying the inputs onto the device is where a bad GPU state shows
                self._binding = self._bind_on_device()
        else:
            self._binding = None

    def _bind_on_device(self) -> Any:
        ort = import_onnxruntime()
        binding = self.session.io_binding()
        for name, array in self.feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cuda", 0)
        return binding

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """ONNX Runtime refusing to run the model is the user's one-line ``InvalidModelError``."""
        try:
            with calling_onnxruntime("run it"):
                yield
        except RuntimeRefusedError as error:
            raise InvalidModelError(f"{self.path}: ONNX Runtime cannot run it on {self.ep}: {error.reason}") from error

    def outputs(self) -> dict[str, Any]:
        """Run once and return the outputs by name, on the host."""
        with self._running():
            return dict(zip(self.output_names, self.session.run(self.output_names, self.feeds)))

    def run(self) -> float:
        """Time one inference (synchronized on CUDA)."""
        with self._running():  # entered and left outside the timed interval
            return self._timed_run()

    def _timed_run(self) -> float:
        if self._binding is not None:
            started = time.perf_counter()
            self._binding.synchronize_inputs()
            self.session.run_with_iobinding(self._binding)
            self._binding.synchronize_outputs()
            return time.perf_counter() - started
        started = time.perf_counter()
        self.session.run(self.output_names, self.feeds)
        return time.perf_counter() - started

    def end_profiling(self) -> str:
        """Stop ORT's profiler and return the path of its JSON trace."""
        return self.session.end_profiling()


@dataclass(frozen=True)
class TimingPlan:
    """How long to time: warm-up runs, then up to ``iterations`` pairs or ``time_budget`` seconds."""

    warmup: int = 10
    iterations: int = 200
    time_budget: float = 20.0
    min_iterations: int = 10


class Timed(Protocol):
    """Anything ``time_interleaved`` can time: one ``run()`` returns the seconds it took
    (one inference of a ``TimedSession``, one whole generation of a causal LM)."""

    def run(self) -> float: ...


def time_interleaved(
    before: Timed,
    after: Timed,
    plan: TimingPlan,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[float], list[float]]:
    """Time the two sessions alternately (A, B, A, B, ...); return both lists of seconds.

    Warm-up runs are discarded; they stop after ``plan.warmup`` pairs or once the time budget
    has passed, after one pair at least (a ``--warmup 100000`` typo ran for hours, outside the
    budget). Then stops after ``plan.iterations`` pairs or when the time budget is spent,
    whichever comes first, but never before ``min_iterations``. The order within a pair
    alternates too, so neither model always runs second.
    """
    warming = time.perf_counter() + plan.time_budget
    for _ in range(plan.warmup):
        before.run()
        after.run()
        if time.perf_counter() > warming:
            break
    times_before: list[float] = []
    times_after: list[float] = []
    deadline = time.perf_counter() + plan.time_budget
    for index in range(plan.iterations):
        if index % 2 == 0:
            times_before.append(before.run())
            times_after.append(after.run())
        else:
            times_after.append(after.run())
            times_before.append(before.run())
        if on_progress is not None:
            on_progress(index + 1, plan.iterations)
        if index + 1 >= plan.min_iterations and time.perf_counter() > deadline:
            if on_progress is not None:  # the time budget ended it: the step is done, not still running
                on_progress(index + 1, index + 1)
            break
    return times_before, times_after

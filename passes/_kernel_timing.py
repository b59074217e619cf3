"""Kernel timings a pass decides by, measured on this machine and kept in a small cache per machine.

Some rewrites pay on one machine and not another: a factorized projection, a layer kept
float under an accuracy budget. Such a pass times tiny one-layer models on ONNX Runtime
(``OneModel``, ORT_ENABLE_ALL, sequential execution, as ``graphopt compare`` times),
alternately so that drift hits both alike (``interleaved_times``), and keeps what it
measured in a JSON file (``TimingCache``: ``$GRAPHOPT_CACHE_DIR``, else
``$XDG_CACHE_HOME/graphopt``, else ``~/.cache/graphopt``) under a key naming the machine,
ONNX Runtime's version, the EP and the thread count (``runtime_key``), so the next
optimization on this machine reads it instead of timing again.

(``graphopt compare`` times whole models the same way with more runs and a confidence
interval; a pass may not depend on the comparison code, and a pass needs many short answers.)
"""

from __future__ import annotations

import abc
import contextlib
import functools
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from optimizer.cores import usable_cores
from optimizer.cpu_features import cpu_identity
from optimizer.errors import RuntimeRefusedError
from optimizer.runtime import (
    calling_onnxruntime,
    cuda_unavailable_reason,
    has_external_tensors,
    import_onnxruntime,
    open_session,
    save_model_file,
    session_options,
    temporary_folder,
)

# A rewrite timed against what it replaces counts as faster when its median time is at most this fraction of the
# other's: a 5 % margin, so timing noise on a busy machine does not turn a tie into a rewrite.
FASTER_BELOW = 0.95
# A short comparison, for passes that make many (``interleaved_times``' arguments): warm-up runs, then interleaved
# pairs until the budget (seconds) is spent, at least min_pairs.
SHORT_PLAN = {"warmup": 5, "max_pairs": 100, "min_pairs": 15, "budget": 0.4}

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def cores() -> int:
    """The cores this process may use (``optimizer.cores.usable_cores``: its affinity, capped by a container's CPU
    quota), the threads a deployed session gets where none are given."""
    return usable_cores()


# How ``OneModel`` times (threads stop spinning when a run returns; outputs bound once), part of every
# key: timings cached by a graphopt that timed otherwise are measured again.
TIMING_METHOD = "spin stopped, outputs bound"


def runtime_key(target: str, threads: int) -> str:
    """What a kernel's speed depends on besides its shape: ``CPU|ort 1.32.0|cpu|2 threads``, the CPU named by
    its brand string, microarchitecture and int8 features (``cpu_identity``: a brand string alone names
    different generations alike), and on CUDA the GPU too (``…|cuda on NVIDIA H200|…``). Keys of an older
    graphopt (the brand string alone, or only ``cuda``, or another ``TIMING_METHOD``) are no longer read:
    those layers are timed again."""
    where = f"cuda on {gpu_name()}" if target == "cuda" else target
    return f"{cpu_identity()}|ort {import_onnxruntime().__version__}|{TIMING_METHOD}|{where}|{threads} threads"


@functools.cache
def gpu_name() -> str:
    """The first NVIDIA GPU's name as ``nvidia-smi`` gives it, or ``unknown GPU``."""
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"
    lines = [line.strip() for line in found.stdout.splitlines() if line.strip()]
    return lines[0] if found.returncode == 0 and lines else "unknown GPU"


def cache_path(file_name: str) -> Path:
    """Where the timing cache ``file_name`` is kept on this machine."""
    if os.environ.get("GRAPHOPT_CACHE_DIR"):
        return Path(os.environ["GRAPHOPT_CACHE_DIR"]) / file_name
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "graphopt" / file_name


class TimingCache:
    """Numbers measured on this machine, by key, read once and written back atomically.

    Another optimization may write the same file meanwhile: a write merges what is on disk
    with what this process measured. A home that cannot be written keeps the numbers for
    this process only.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, float] | None = None

    def get(self, key: str) -> float | None:
        """The number cached under ``key``, or None."""
        return self._read().get(key)

    def put(self, key: str, value: float) -> None:
        """Cache ``value`` under ``key``, in memory and on disk."""
        self._read()[key] = value
        written = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {**self._load(), **self._entries}
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as file:
                written = file.name
                json.dump(merged, file, indent=0, sort_keys=True)
            os.replace(file.name, self.path)
            written = None
        except OSError:
            pass  # a read-only home or a full disk: the measurement still holds for this run
        finally:
            # Whatever stopped the write (an OSError, a Ctrl-C while it was written), no .tmp is left behind.
            if written is not None:
                with contextlib.suppress(OSError):
                    os.unlink(written)

    def _read(self) -> dict[str, float]:
        if self._entries is None:
            self._entries = self._load()
        return self._entries

    def _load(self) -> dict[str, float]:
        """The file's entries that are measurements: a positive finite number under a text key. Anything else (a
        file of another shape, a NaN, a negative time, text) is left out, measured again and overwritten."""
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(stored, dict):
            return {}
        return {
            key: value
            for key, value in stored.items()
            if isinstance(key, str)
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        }


class OneModel:
    """One small model in an ORT session at ORT_ENABLE_ALL with sequential execution; ``run()`` times one run.

    On the CPU its inputs and outputs are bound once (IO binding, outputs written into buffers
    kept from a first run), so a run times the kernels, not the wrapping of each output in a new
    array (about 1.3 us an output: a probe of 64 one-row layers has 64).
    """

    def __init__(
        self, model: ir.Model | bytes, feeds: Mapping[str, np.ndarray], target: str, threads: int, what: str
    ) -> None:
        if target == "cuda" and (reason := cuda_unavailable_reason()) is not None:
            # ORT would run it on the CPU and the figure would be filed under CUDA.
            raise RuntimeRefusedError("time a kernel on CUDA", reason)
        options = session_options("all", threads, sequential=True)
        if not isinstance(model, bytes) and has_external_tensors(model):
            # Serialized as they are, its weights point at their file by an absolute path, which ONNX Runtime
            # refuses: --quantize static of a torch 2.13 export (weights beside it in a .data file) was rolled
            # back, "ONNX Runtime cannot run the result" (review s74 late5). Written to a folder of its own with
            # its weights beside it, as ``inference_session`` does: read into one proto, a whole model's weights
            # were copied twice in memory, and past protobuf's 2 GB could not be serialized (review s74 late6).
            with temporary_folder("graphopt-timing-") as folder:
                path = os.path.join(folder, "model.onnx")
                save_model_file(model, path, external_data="model.onnx.data")
                self.session = open_session(path, options, PROVIDERS[target])
        else:
            serialized = model if isinstance(model, bytes) else ir.to_proto(model).SerializeToString()
            self.session = open_session(serialized, options, PROVIDERS[target])
        self.feeds = dict(feeds)
        self.what = what
        self._binding = self._bound() if target == "cpu" else None

    def _bound(self) -> Any:
        """The session's inputs bound to the feeds and its outputs to buffers of a first run's shapes."""
        ort = import_onnxruntime()
        with calling_onnxruntime(self.what):
            outputs = self.session.run(None, self.feeds)
            binding = self.session.io_binding()
            for name, array in self.feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
            for meta, value in zip(self.session.get_outputs(), outputs):
                binding.bind_ortvalue_output(meta.name, ort.OrtValue.ortvalue_from_numpy(np.empty_like(value)))
        return binding

    def run(self) -> float:
        with calling_onnxruntime(self.what):
            if self._binding is not None:
                started = time.perf_counter()
                self.session.run_with_iobinding(self._binding)
                return time.perf_counter() - started
            started = time.perf_counter()
            self.session.run(None, self.feeds)
            return time.perf_counter() - started


def interleaved_times(
    before: OneModel, after: OneModel, *, warmup: int, max_pairs: int, min_pairs: int, budget: float
) -> tuple[list[float], list[float]]:
    """Seconds of each run of ``before`` and ``after``, run alternately (A B, B A, ...) after
    ``warmup`` runs each: up to ``max_pairs`` pairs, or fewer once ``budget`` seconds are spent
    (never fewer than ``min_pairs``)."""
    for _ in range(warmup):
        before.run()
        after.run()
    times: tuple[list[float], list[float]] = ([], [])
    deadline = time.perf_counter() + budget
    for index in range(max_pairs):
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for which in order:
            times[which].append((before, after)[which].run())
        if index + 1 >= min_pairs and time.perf_counter() > deadline:
            break
    return times


class MachineTimings(abc.ABC):
    """Base of a pass's timings on this machine: ``target`` EP, ``threads`` (default: the usable
    cores), a ``TimingCache`` at ``path`` (default: ``cache_path(CACHE_FILE)``), and ``measure``
    (injectable for tests; default: the subclass's ``_time``). ``timed`` counts measurements
    actually run in this process (not read from the cache)."""

    CACHE_FILE = "timings.json"

    def __init__(
        self,
        target: str = "cpu",
        threads: int | None = None,
        *,
        path: Path | None = None,
        measure: Callable[..., Any] | None = None,
    ) -> None:
        self.target = target
        self.threads = threads or cores()
        self.path = path or cache_path(self.CACHE_FILE)
        self._cache = TimingCache(self.path)
        self._measure = measure or self._time
        self.timed = 0

    @abc.abstractmethod
    def _time(self, *args: Any) -> Any:
        """Measure one thing on this machine (each subclass its own kind of timing)."""

"""Whether a factorized projection runs faster than the whole one, measured on this machine and cached per shape.

``x [m, k] @ W [k, n]`` against ``(x @ U [k, r]) @ V [r, n]``: two kernels instead of
one, fewer multiply-adds and fewer weight bytes. Whether that is faster depends on the
kernel library, the execution provider, the thread count and the row count ``m``
(one decoded token reads the weights once; a 128-token prompt is compute-bound), so it
is measured, not guessed: for each (machine, ONNX Runtime version, EP, threads, k, n, m)
the *break-even rank* — the largest rank whose two MatMuls measured faster than the one
— is found by bisection over the rank with interleaved timing at ORT_ENABLE_ALL, and
kept in a JSON file (``$GRAPHOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphopt``, else
``~/.cache/graphopt``), so the next optimization on this machine does not time it again.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir

from optimizer.runtime import calling_onnxruntime, import_onnxruntime, open_session, session_options

# The factorized layer counts as faster when its median time is at most this fraction of the whole
# layer's: a 5 % margin, so timing noise on a busy machine does not turn a tie into a rewrite.
FASTER_BELOW = 0.95
# Each comparison is short, because a bisection makes about seven of them per shape and row count:
# warm-up runs, then interleaved pairs until the budget (seconds) is spent, at least _MIN_PAIRS.
_WARMUP, _MAX_PAIRS, _MIN_PAIRS, _BUDGET = 5, 100, 15, 0.4
_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
_CACHE_FILE = "lowrank_timing.json"

Measure = Callable[[int, int, int, int], float]


def cache_path() -> Path:
    """Where measured break-even ranks are kept on this machine."""
    if os.environ.get("GRAPHOPT_CACHE_DIR"):
        return Path(os.environ["GRAPHOPT_CACHE_DIR"]) / _CACHE_FILE
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "graphopt" / _CACHE_FILE


def parameter_limit(k: int, n: int) -> int:
    """The largest rank whose two factors hold fewer parameters than ``W [k, n]``: ``r (k + n) < k n``."""
    return (k * n - 1) // (k + n)


class MeasuredSpeed:
    """Break-even ranks and speed ratios of factorized ``[k, n]`` projections, timed on ``target`` and cached.

    ``measure(k, n, r, m)`` (injectable for tests) returns the factorized layer's
    median time over the whole layer's at ``m`` rows; by default it builds the two
    one-layer models and times them interleaved on ONNX Runtime.
    """

    def __init__(
        self,
        target: str = "cpu",
        threads: int | None = None,
        *,
        path: Path | None = None,
        measure: Measure | None = None,
    ) -> None:
        self.target = target
        self.threads = threads or _cores()
        self.path = path or cache_path()
        self._measure = measure or self._time
        self._entries: dict[str, float] | None = None
        self.timed = 0  # comparisons actually run (not read from the cache)

    def break_even(self, k: int, n: int, m: int) -> int:
        """The largest rank at which ``[k, n]`` factorized measured faster at ``m`` rows (0: not even rank 1)."""
        key = self._key("break_even", k, n, m)
        cached = self._read().get(key)
        if cached is not None:
            return int(cached)
        limit = parameter_limit(k, n)
        if limit < 1 or not self.ratio(k, n, 1, m) <= FASTER_BELOW:
            found = 0
        else:
            # Fewer ranks, fewer multiply-adds and weight bytes: faster below some rank, not above.
            low, high = 1, limit + 1  # low measured faster; high is assumed not
            if self.ratio(k, n, limit, m) <= FASTER_BELOW:
                low = limit
            step = max(1, limit // 32)  # a bisection to within 3 % of the limit is enough
            while high - low > step:
                middle = (low + high) // 2
                if self.ratio(k, n, middle, m) <= FASTER_BELOW:
                    low = middle
                else:
                    high = middle
            found = low
        self._write(key, found)
        return found

    def ratio(self, k: int, n: int, r: int, m: int) -> float:
        """Median time of ``x [m, k] @ U [k, r] @ V [r, n]`` over ``x @ W [k, n]``, measured once per machine."""
        key = self._key("ratio", k, n, m, r)
        cached = self._read().get(key)
        if cached is not None:
            return float(cached)
        value = float(self._measure(k, n, r, m))
        self.timed += 1
        self._write(key, value)
        return value

    def _key(self, kind: str, k: int, n: int, m: int, r: int | None = None) -> str:
        ort = import_onnxruntime()
        shape = f"{k}x{n}" + (f"r{r}" if r is not None else "")
        return f"{kind}|{_machine()}|ort {ort.__version__}|{self.target}|{self.threads} threads|{shape}|m{m}"

    def _read(self) -> dict[str, float]:
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def _write(self, key: str, value: float) -> None:
        self._read()[key] = value
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:  # another optimization may have added entries meanwhile
                merged = {**json.loads(self.path.read_text()), **self._entries}
            except (OSError, ValueError):
                merged = dict(self._entries)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as file:
                json.dump(merged, file, indent=0, sort_keys=True)
            os.replace(file.name, self.path)
        except OSError:
            pass  # a read-only home: the measurement still holds for this run

    def _time(self, k: int, n: int, r: int, m: int) -> float:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((m, k), dtype=np.float32)
        whole = _matmul_chain([rng.standard_normal((k, n), dtype=np.float32)], m)
        factors = [rng.standard_normal((k, r), dtype=np.float32), rng.standard_normal((r, n), dtype=np.float32)]
        before = _Timed(whole, x, self.target, self.threads)
        after = _Timed(_matmul_chain(factors, m), x, self.target, self.threads)
        return _interleaved_ratio(before, after)


class _Timed:
    """One MatMul chain on one EP, at ORT_ENABLE_ALL with sequential execution (as ``graphopt compare`` times)."""

    def __init__(self, model: bytes, x: np.ndarray, target: str, threads: int) -> None:
        options = session_options("all", threads, sequential=True)
        self.session = open_session(model, options, _PROVIDERS[target])
        self.feeds = {"x": x}

    def run(self) -> float:
        with calling_onnxruntime("time a factorized MatMul"):
            started = time.perf_counter()
            self.session.run(None, self.feeds)
            return time.perf_counter() - started


def _interleaved_ratio(before: _Timed, after: _Timed) -> float:
    """Median time of ``after`` over ``before``, run alternately (A B, B A, ...) so drift hits both alike.

    (``graphopt compare`` does the same with more runs and a confidence interval; a pass may not
    depend on the comparison code, and a bisection needs many short answers.)
    """
    for _ in range(_WARMUP):
        before.run()
        after.run()
    times: tuple[list[float], list[float]] = ([], [])
    deadline = time.perf_counter() + _BUDGET
    for index in range(_MAX_PAIRS):
        first, second = (0, 1) if index % 2 == 0 else (1, 0)
        for which in (first, second):
            times[which].append((before, after)[which].run())
        if index + 1 >= _MIN_PAIRS and time.perf_counter() > deadline:
            break
    return float(np.median(times[1]) / np.median(times[0]))


def _matmul_chain(weights: list[np.ndarray], m: int) -> bytes:
    """``x [m, k]`` multiplied by each weight in turn, as a serialized one-input model."""
    x = ir.Value(name="x", shape=ir.Shape([m, weights[0].shape[0]]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 18}, name="chain")
    current = x
    for index, weight in enumerate(weights):
        w = ir.Value(name=f"w{index}", shape=ir.Shape(weight.shape), type=ir.TensorType(ir.DataType.FLOAT))
        w.const_value = ir.tensor(weight, name=f"w{index}")
        graph.register_initializer(w)
        node = ir.Node("", "MatMul", [current, w], name=f"matmul{index}")
        graph.append(node)
        current = node.outputs[0]
        current.name, current.type = f"y{index}", ir.TensorType(ir.DataType.FLOAT)
        current.shape = ir.Shape([m, weight.shape[1]])
    graph.outputs.append(current)
    return ir.to_proto(ir.Model(graph, ir_version=9)).SerializeToString()


def _cores() -> int:
    """The cores this process may use (ONNX Runtime's default thread count follows them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _machine() -> str:
    """The CPU model (what the kernels' speed depends on), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

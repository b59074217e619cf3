"""ONNX Runtime's sessions as graphopt opens them: importing ONNX Runtime, session options (optimization level,
threads, timing), opening a session, ONNX Runtime's refusals as ``RuntimeRefusedError``, and whether CUDA runs here.

Nothing here imports onnx or onnx_ir at module level: compare's memory probe is a child process per model that
opens one session, and importing the whole spine there cost about a second a child (two a comparison, hundreds in
the test suite). ``optimizer.runtime`` re-exports every name.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from optimizer.errors import OptionError, RuntimeMissingError, RuntimeRefusedError, one_line

OPTIMIZATION_LEVELS = ("disable_all", "basic", "extended", "all")


def import_onnxruntime() -> Any:
    """Return the ``onnxruntime`` module, or raise a one-line error saying how to install it."""
    try:
        import onnxruntime
    except ImportError as error:
        raise RuntimeMissingError(
            "ONNX Runtime is not installed: pip install 'graphopt[cpu]' (or 'graphopt[gpu]' for CUDA)"
        ) from error
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


CUDA_PROVIDER = "CUDAExecutionProvider"


def cuda_unavailable_reason() -> str | None:
    """None when ONNX Runtime can run a session on CUDA here; otherwise why not, in one line.

    ``get_available_providers()`` lists the providers compiled into the installed build:
    onnxruntime-gpu lists CUDA on a machine with no GPU, no driver or no CUDA libraries, and
    a session asking for it then falls back to the CPU or raises. So past that list, a
    one-node session is opened on CUDA and must keep CUDA among its providers (the probe is
    cached: the answer does not change while the process runs).
    """
    ort = import_onnxruntime()
    if CUDA_PROVIDER not in ort.get_available_providers():
        return "onnxruntime-gpu is not installed (pip install 'graphopt[gpu]')"
    return _probe_cuda()


@functools.cache
def preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu find CUDA and cuDNN in the nvidia-* wheels (PyTorch's): once per process.

    ORT (1.21 and later) finds them only once ``onnxruntime.preload_dlls()`` has loaded them;
    it prints, rather than raises, what it could not load, and does nothing in a CPU build.
    Every process that opens a CUDA session calls this first (compare's memory probe is a
    child process of its own).
    """
    ort = import_onnxruntime()
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(OSError, RuntimeError):
            preload()


@functools.cache
def _probe_cuda() -> str | None:
    import onnx  # here, not at the top: a child process that only opens sessions starts without it

    ort = import_onnxruntime()
    preload_cuda_libraries()
    node = onnx.helper.make_node("Add", ["x", "x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node], "cuda_probe", [value("x", onnx.TensorProto.FLOAT, [1])], [value("y", onnx.TensorProto.FLOAT, [1])]
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    # A CUDA EP that cannot start logs an error and the session falls back to the CPU: the
    # answer is in the session's providers, so ORT's own log would only repeat it.
    ort.set_default_logger_severity(4)
    try:
        with calling_onnxruntime("start CUDA"):
            session = ort.InferenceSession(
                proto.SerializeToString(), session_options(), providers=[CUDA_PROVIDER, "CPUExecutionProvider"]
            )
            session.run(None, {"x": np.ones(1, np.float32)})
    except RuntimeRefusedError as error:
        return f"onnxruntime-gpu is installed but CUDA did not start: {error.reason}"
    finally:
        ort.set_default_logger_severity(3)
    if CUDA_PROVIDER not in session.get_providers():
        return (
            "onnxruntime-gpu is installed but no GPU is usable (ONNX Runtime fell back to the CPU: "
            "no NVIDIA GPU or driver, or CUDA/cuDNN libraries it cannot load)"
        )
    return None


@functools.cache
def _refusals() -> tuple[type[BaseException], ...]:
    """The exception types that mean "ONNX Runtime refused this model or these inputs".

    ORT's C++ errors (``Fail``, ``InvalidArgument``, ``InvalidGraph``, ``NotImplemented``,
    ...) derive from ``Exception`` directly; its Python wrapper raises ``RuntimeError``,
    ``ValueError`` and ``TypeError`` for bad feeds and providers.
    """
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    native = tuple(
        value
        for value in vars(state).values()
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == state.__name__
    )
    return (*native, RuntimeError, ValueError, TypeError)


@contextlib.contextmanager
def calling_onnxruntime(what: str) -> Iterator[None]:
    """Turn ONNX Runtime's own exceptions raised inside the block into ``RuntimeRefusedError``.

    ``what`` says what was being done ("load the model", "run the model"); it starts the message.
    Callers already hold ONNX Runtime (a session), so nothing is imported here: this wraps
    every timed run.
    """
    try:
        yield
    except _refusals() as error:
        raise RuntimeRefusedError(what, one_line(error, 300)) from error


# Sessions timed against each other alternate run by run. ONNX Runtime's intra-op threads keep
# spinning for a while after a run returns, and the idle session's spinning threads then take
# the cores from the other session's run: on 2 cores (AMD EPYC, 2026-12-01) that doubled
# MiniLM's run time (8.3 -> 16.2 ms) and moved its int8/float ratio from 0.41 to 0.48, and made
# a float 60x384x1536 MatMul 0.28 ms instead of 0.16 (one-layer timings 1.7x off). Stopping the
# spin when a run returns keeps spinning inside each run, as a deployed session has it.
TIMING_CONFIG = {"session.force_spinning_stop": "1"}


# The intra-op threads of the sessions graphopt opens to check, calibrate and probe a model where none are
# asked (its timing sessions take --threads): unset, ONNX Runtime's default, one per core. Several graphopt
# processes side by side on one machine (a test suite's workers, parallel CI jobs) each spinning that many
# threads on the same cores ran 20-30 % slower than with a share each.
SESSION_THREADS_ENV = "GRAPHOPT_SESSION_THREADS"


def max_threads() -> int:
    """The most intra-op threads ``--threads`` or ``$GRAPHOPT_SESSION_THREADS`` may ask for: four per core of this
    machine, at least 256 (a recipe written on a large machine still runs on a small CI runner)."""
    return max(256, 4 * (os.cpu_count() or 1))


def session_threads() -> int:
    """``$GRAPHOPT_SESSION_THREADS`` as a thread count, 0 (ONNX Runtime's default) where unset; ``OptionError``
    if it is not a whole number of at least 1, or is over ``max_threads`` (ONNX Runtime starts every thread asked
    for: 3000 of them took a three-node model's optimization past two minutes, where ``--threads 3000`` is
    refused)."""
    given = os.environ.get(SESSION_THREADS_ENV, "").strip()
    if not given:
        return 0
    if not given.isdigit() or int(given) < 1:
        raise OptionError(f"${SESSION_THREADS_ENV} must be a whole number of threads, at least 1, not {given!r}")
    if int(given) > max_threads():
        raise OptionError(
            f"${SESSION_THREADS_ENV}={given}: more than {max_threads()} (four per core of this machine, at least 256) "
            "is surely a typo; each is a thread ONNX Runtime starts"
        )
    return int(given)


@functools.cache
def _quota_threads() -> int:
    """``quota_capped_cores()``, 0 where no quota caps the cores (read once a process)."""
    from optimizer.cores import quota_capped_cores  # on first use: a pass imported alone loads no more of the spine

    return quota_capped_cores() or 0


def session_options(
    optimization_level: str = "disable_all",
    intra_op_threads: int = 0,
    *,
    sequential: bool = False,
    profile_prefix: str | None = None,
) -> Any:
    """``onnxruntime.SessionOptions`` at ``optimization_level`` (one of ``OPTIMIZATION_LEVELS``).

    ``sequential`` pins one inter-op thread and sequential execution and stops the intra-op threads
    spinning when a run returns (for timing, ``TIMING_CONFIG``); ``profile_prefix`` turns on ORT's
    profiler, writing its trace there.
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization_level]
    # Timing sessions keep ONNX Runtime's default: a deployed session has it, and --threads sets it. Others take
    # $GRAPHOPT_SESSION_THREADS, else a container's CPU quota where it is below the cores ONNX Runtime would
    # spin a thread on each of (``optimizer.cores``), else ONNX Runtime's default.
    options.intra_op_num_threads = intra_op_threads or (0 if sequential else session_threads() or _quota_threads())
    # graphopt's sessions probe models that may refuse the inputs (a second binding past a
    # position table, a fusion's probe at --max-sequence): the refusal comes back as an
    # exception that is reported in one line, so ORT's own log on stderr only repeats it.
    options.log_severity_level = 4
    if sequential:
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        for key, value in TIMING_CONFIG.items():
            options.add_session_config_entry(key, value)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


@functools.cache
def _registered_cpu_arena() -> bool:
    """Register one CPU arena with ONNX Runtime's environment, once per process (``create_and_register_allocator``);
    whether it is there. False where this ONNX Runtime cannot (no such API, or it refused)."""
    ort = import_onnxruntime()
    try:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return False
    return True


def share_cpu_arena(options: Any) -> Any:
    """``options`` with the session drawing its CPU memory from the one arena graphopt's own CPU sessions share
    (``session.use_env_allocators``: ONNX Runtime's way for many sessions in one process).

    Each session's own arena keeps the most its runs ever held until the session is gone, and verification holds
    several at once (the original's, kept for the whole pipeline, beside each check's): a 42-node U-Net at 8 images
    of 256x256 reached 5 GB and a static quantization of it was killed for memory at 14.6 GB; shared, the same run
    peaks at 1.7 GB (MiniLM 1.96 -> 1.35 GB), as fast. The shared arena stays allocated while the process lives.
    Timing sessions keep their own (a deployed session has one)."""
    if _registered_cpu_arena():
        options.add_session_config_entry("session.use_env_allocators", "1")
    return options


def open_session(source: str | os.PathLike | bytes, options: Any, providers: Sequence[str]) -> Any:
    """An ``onnxruntime.InferenceSession`` for a model file or serialized bytes; ``RuntimeRefusedError`` if refused."""
    ort = import_onnxruntime()
    with calling_onnxruntime("load the model"):
        return ort.InferenceSession(
            source if isinstance(source, bytes) else os.fspath(source), options, providers=list(providers)
        )

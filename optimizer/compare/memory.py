"""Peak memory of creating and running an ONNX Runtime session, measured in a fresh process.

Each model is measured in a child process of its own, so one model's allocations
cannot hide in the other's peak. In the child, Python, numpy and ONNX Runtime are
imported and the inputs loaded; then the session is created and run once and the
process's peak resident memory is read. We report the peak and its growth over the
resident memory just before the session. How the peak is read depends on what the
platform offers, and ``MemoryUsage.method`` says which was used:

- Linux: the peak-RSS counter (``VmHWM``) is first reset to the current RSS through
  ``/proc/self/clear_refs``, so import-time spikes do not count (``linux-vmhwm-reset``);
  where the kernel refuses the reset, the peak includes them (``linux-vmhwm``);
- macOS and other Unix: ``getrusage``'s ``ru_maxrss``, which cannot be reset
  (``rusage-maxrss``): the baseline is the peak so far, so the session's growth is a
  lower bound;
- Windows: the process's ``PeakWorkingSetSize`` and ``WorkingSetSize`` from
  ``GetProcessMemoryInfo`` (``windows-working-set``), which cannot be reset either.

Nothing here is imported at module level that a platform lacks (``resource`` is
Unix-only), so ``import optimizer`` works everywhere. On CUDA the child also reports
how much device memory the GPU's ``memory.used`` grew by (from ``nvidia-smi``), which
is what the session and its arena took.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optimizer.errors import GraphoptError


@dataclass(frozen=True)
class MemoryUsage:
    """Memory one model needs on one EP, in bytes (``gpu_bytes`` None off CUDA).

    ``method`` names how the peak was read (see the module docstring); ``resettable``
    says whether import-time spikes were excluded from it.
    """

    peak_rss_bytes: int
    baseline_rss_bytes: int
    session_rss_bytes: int
    gpu_bytes: int | None = None
    method: str = "linux-vmhwm-reset"
    resettable: bool = True


def measure_session_memory(path: str, ep: str, inputs: Mapping[str, np.ndarray], threads: int) -> MemoryUsage:
    """Create and run ``path`` once on ``ep`` in a child process and return its memory use."""
    # Imported here: the child imports this module too, and needs neither (nor the onnx and onnx_ir they load).
    from optimizer.runtime import temporary_folder
    from optimizer.samples import save_npz

    with temporary_folder("graphopt-memory-") as folder:
        feeds = os.path.join(folder, "inputs.npz")
        # Strings travel as unicode (an .npz holds no Python objects) and are objects again in the child.
        save_npz(feeds, {name: _unicode(array) for name, array in inputs.items() if not isinstance(array, list)})
        # A seq(tensor) input travels as an .npz of its elements, a list again in the child: saved as one array it
        # was a tensor there, which ONNX Runtime refused after the whole comparison had been timed.
        sequences = {}
        for index, (name, items) in enumerate((n, a) for n, a in inputs.items() if isinstance(a, list)):
            sequences[name] = os.path.join(folder, f"sequence{index}.npz")
            save_npz(sequences[name], {str(k): _unicode(item) for k, item in enumerate(items)})
        completed = subprocess.run(
            [*_child_command(), path, feeds, ep, str(threads), json.dumps(sequences)],
            capture_output=True,
            text=True,
            check=False,
        )
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise GraphoptError(f"memory probe failed for {path}: {last}")
    return MemoryUsage(**json.loads(completed.stdout.strip().splitlines()[-1]))


def _unicode(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return array.astype(str) if array.dtype.kind == "O" else array


def _objects(array: np.ndarray) -> np.ndarray:
    return array.astype(object) if array.dtype.kind == "U" else array


def _child_command() -> list[str]:
    """``python -m optimizer.compare.memory`` with graphopt's own folder first on ``sys.path``, not the working
    folder (``-m`` puts the working folder first: an ``onnxruntime/`` or ``numpy/`` there would be imported)."""
    root = os.fspath(Path(__file__).resolve().parents[2])
    launcher = (
        f"import runpy, sys; sys.path[0] = {root!r}; "
        "runpy.run_module('optimizer.compare.memory', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", launcher]


def query_gpu(field: str) -> str | None:
    """One ``nvidia-smi --query-gpu`` field of GPU 0, or None without nvidia-smi or a GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    completed = subprocess.run(
        ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits", "--id=0"],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0 or not completed.stdout.strip():
        return None
    return completed.stdout.strip().splitlines()[0]


def _gpu_memory_used() -> int | None:
    used_mib = query_gpu("memory.used")
    return None if used_mib is None else int(float(used_mib)) * (1 << 20)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class _RssReader:
    """The process's current and peak resident memory, read the best way this platform offers."""

    def __init__(self) -> None:
        if _status_kib("VmHWM") is not None:
            self.method, self.resettable = "linux-vmhwm", False
        elif sys.platform == "win32":
            self.method, self.resettable = "windows-working-set", False
        else:
            self.method, self.resettable = "rusage-maxrss", False

    def reset(self) -> int:
        """Reset the peak where the OS allows it; return the current RSS in bytes (the peak so far where
        the current RSS cannot be read)."""
        if self.method == "linux-vmhwm":
            try:
                with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                    handle.write("5")
                self.method, self.resettable = "linux-vmhwm-reset", True
            except OSError:
                pass
            current = _status_kib("VmRSS")
            if current is not None:
                return current * 1024
        if self.method == "windows-working-set":
            return _windows_memory()[1]
        return self.peak()

    def peak(self) -> int:
        """The peak resident memory in bytes (since the reset, where there was one)."""
        if self.method.startswith("linux-vmhwm"):
            return (_status_kib("VmHWM") or 0) * 1024
        if self.method == "windows-working-set":
            return _windows_memory()[0]
        import resource  # Unix only

        # ru_maxrss: KiB on Linux and the BSDs, bytes on macOS.
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _windows_memory() -> tuple[int, int]:
    """(peak, current) working set of this process, from psapi's GetProcessMemoryInfo."""
    import ctypes
    from ctypes import wintypes

    class Counters(ctypes.Structure):
        _fields_ = [
            ("cb", wintypes.DWORD),
            ("PageFaultCount", wintypes.DWORD),
            ("PeakWorkingSetSize", ctypes.c_size_t),
            ("WorkingSetSize", ctypes.c_size_t),
            ("QuotaPeakPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
            ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
            ("PagefileUsage", ctypes.c_size_t),
            ("PeakPagefileUsage", ctypes.c_size_t),
        ]

    counters = Counters()
    counters.cb = ctypes.sizeof(Counters)
    process = ctypes.windll.kernel32.GetCurrentProcess()
    if not ctypes.windll.psapi.GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb):
        raise OSError("GetProcessMemoryInfo failed")
    return int(counters.PeakWorkingSetSize), int(counters.WorkingSetSize)


def _probe(
    path: str, feeds_path: str, ep: str, threads: int, sequences: Mapping[str, str] | None = None
) -> MemoryUsage:
    from optimizer.compare.timing import TimedSession
    from optimizer.sessions import import_onnxruntime, preload_cuda_libraries

    # ONNX Runtime (and on CUDA its libraries) is imported lazily, by the first session: imported here, before the
    # reset, so its ~12 MB count in neither model's growth (a 3-node model read 22 MB, 12 of them the import).
    import_onnxruntime()
    if ep == "cuda":
        preload_cuda_libraries()
    with np.load(feeds_path) as archive:
        inputs = {name: _objects(archive[name]) for name in archive.files}
    for name, file in (sequences or {}).items():
        with np.load(file) as archive:
            inputs[name] = [_objects(archive[str(k)]) for k in range(len(archive.files))]
    reader = _RssReader()
    baseline = reader.reset()
    gpu_before = _gpu_memory_used() if ep == "cuda" else None
    session = TimedSession(path, ep, inputs, threads)
    session.run()
    peak = reader.peak()
    gpu_after = _gpu_memory_used() if ep == "cuda" else None
    gpu = gpu_after - gpu_before if gpu_before is not None and gpu_after is not None else None
    return MemoryUsage(peak, baseline, max(0, peak - baseline), gpu, reader.method, reader.resettable)


if __name__ == "__main__":
    model_path, inputs_path, provider, thread_count, sequence_paths = sys.argv[1:6]
    usage = _probe(model_path, inputs_path, provider, int(thread_count), json.loads(sequence_paths))
    print(json.dumps(usage.__dict__))

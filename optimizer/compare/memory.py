"""Peak memory of creating and running an ONNX Runtime session, measured in a fresh process.

Each model is measured in a child process of its own, so one model's allocations
cannot hide in the other's peak. In the child, Python, numpy and ONNX Runtime are
imported and the inputs loaded; then, on Linux, the peak-RSS counter (``VmHWM``) is
reset to the current RSS through ``/proc/self/clear_refs`` so import-time spikes do
not count; the session is created and run once and the peak is read again. We
report the peak and its growth over the resident memory just before the session. On CUDA the
child also reports how much device memory the GPU's ``memory.used`` grew by
(from ``nvidia-smi``), which is what the session and its arena took.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MemoryUsage:
    """Memory one model needs on one EP, in bytes (``gpu_bytes`` None off CUDA)."""

    peak_rss_bytes: int
    baseline_rss_bytes: int
    session_rss_bytes: int
    gpu_bytes: int | None = None


def measure_session_memory(path: str, ep: str, inputs: Mapping[str, np.ndarray], threads: int) -> MemoryUsage:
    """Create and run ``path`` once on ``ep`` in a child process and return its memory use."""
    with tempfile.TemporaryDirectory(prefix="graphopt-memory-") as folder:
        feeds = os.path.join(folder, "inputs.npz")
        np.savez(feeds, **inputs)
        command = [sys.executable, "-m", "optimizer.compare.memory", path, feeds, ep, str(threads)]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe failed for {path}: {last}")
    return MemoryUsage(**json.loads(completed.stdout.strip().splitlines()[-1]))


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


def _reset_peak_rss() -> int:
    """Reset the peak-RSS counter where the OS allows it; return the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass
    current = _status_kib("VmRSS")
    return current * 1024 if current is not None else _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    peak = _status_kib("VmHWM")
    if peak is not None:
        return peak * 1024
    # ru_maxrss: KiB on Linux, bytes on macOS; it cannot be reset.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _probe(path: str, feeds_path: str, ep: str, threads: int) -> MemoryUsage:
    from optimizer.compare.timing import TimedSession

    with np.load(feeds_path) as archive:
        inputs = {name: archive[name] for name in archive.files}
    baseline = _reset_peak_rss()
    gpu_before = _gpu_memory_used() if ep == "cuda" else None
    session = TimedSession(path, ep, inputs, threads)
    session.run()
    peak = _peak_rss_bytes()
    gpu_after = _gpu_memory_used() if ep == "cuda" else None
    gpu = gpu_after - gpu_before if gpu_before is not None and gpu_after is not None else None
    return MemoryUsage(peak, baseline, peak - baseline, gpu)


if __name__ == "__main__":
    model_path, inputs_path, provider, thread_count = sys.argv[1:5]
    usage = _probe(model_path, inputs_path, provider, int(thread_count))
    print(json.dumps(usage.__dict__))

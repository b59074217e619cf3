"""The comparison tool: two models timed side by side on ONNX Runtime (latency, throughput, memory, size, accuracy).

``compare`` runs the measurement, ``report`` renders it (terminal, JSON) and ``html`` as a page;
``timing``, ``memory``, ``profiling`` and ``stats`` are its parts. It reads models
as files and never runs a pass: it is the second product beside the optimizer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CompareSettings", "ComparisonReport", "compare"]


def __getattr__(name: str) -> Any:
    """The comparison's names, imported on first use: compare's memory probe runs ``optimizer.compare.memory`` in a
    child process per model, and importing the comparison (and with it onnx, onnx_ir and the spine) there cost
    about a second a child."""
    if name in __all__:
        from optimizer.compare import comparison

        return getattr(comparison, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

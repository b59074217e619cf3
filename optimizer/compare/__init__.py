"""The comparison tool: two models timed side by side on ONNX Runtime (latency, throughput, memory, size, accuracy).

``compare`` runs the measurement, ``report`` renders it (terminal, JSON) and ``html`` as a page;
``timing``, ``memory``, ``profiling`` and ``stats`` are its parts. It reads models
as files and never runs a pass: it is the second product beside the optimizer.
"""

from optimizer.compare.comparison import CompareSettings, ComparisonReport, compare

__all__ = ["CompareSettings", "ComparisonReport", "compare"]

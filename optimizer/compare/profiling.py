"""Where the time goes: ONNX Runtime's profiler, summarized as time per operator type."""

from __future__ import annotations

import json
import os
from collections import defaultdict


def time_per_op_type(trace_path: str, runs: int) -> dict[str, float]:
    """Average milliseconds per run spent in each operator type, from an ORT profile trace.

    ORT writes one ``Node`` event per kernel execution (``<node>_kernel_time``) with
    its op type in ``args.op_name`` and its duration in microseconds. The trace file
    is deleted after reading.
    """
    with open(trace_path, encoding="utf-8") as handle:
        events = json.load(handle)
    os.remove(trace_path)
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op_type = event.get("args", {}).get("op_name", "?")
        totals[op_type] += float(event.get("dur", 0)) / 1000.0
    return {op: total / max(runs, 1) for op, total in sorted(totals.items(), key=lambda item: -item[1])}

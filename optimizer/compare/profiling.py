"""Where the time goes: ONNX Runtime's profiler, summarized as time per operator type."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any


def time_per_op_type(trace_path: str, runs: int, *, warmup: int = 0) -> dict[str, float]:
    """Average milliseconds per run spent in each operator type, from an ORT profile trace of ``warmup`` runs and
    then ``runs`` more; the warm-up runs' events are left out (a session's first run allocated its buffers and
    took ten times a later run's time on a small model: averaged in, it was a tenth of every figure).

    ORT writes one ``Node`` event per kernel execution (``<node>_kernel_time``) with its op type in
    ``args.op_name`` and its duration in microseconds, and one ``model_run`` event per run. An ``If``, ``Loop`` or
    ``Scan`` event spans the kernels of the subgraph it runs, which have events of their own: each event counts
    its own time only, less the events nested in it, so a subgraph's time is not counted twice. The trace file
    is deleted after reading.
    """
    with open(trace_path, encoding="utf-8") as handle:
        events = json.load(handle)
    os.remove(trace_path)
    starts = sorted(float(event.get("ts", 0)) for event in events if _is_run(event))
    # Kernels of the warm-up runs start before the first measured run does.
    measured_from = starts[warmup] if warmup and len(starts) > warmup else (float("inf") if warmup else 0.0)
    kernels = [event for event in events if _is_kernel(event) and float(event.get("ts", 0)) >= measured_from]
    totals: dict[str, float] = defaultdict(float)
    for event, own in _own_times(kernels):
        totals[event.get("args", {}).get("op_name", "?")] += own / 1000.0
    return {op: total / max(runs, 1) for op, total in sorted(totals.items(), key=lambda item: -item[1])}


def _is_run(event: dict[str, Any]) -> bool:
    return event.get("cat") == "Session" and event.get("name") == "model_run"


def _is_kernel(event: dict[str, Any]) -> bool:
    return event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time")


def _own_times(kernels: list[dict[str, Any]]) -> list[tuple[dict[str, Any], float]]:
    """Each kernel event with its duration less those of the events directly nested in it (same thread)."""
    own: dict[int, float] = {}
    by_thread: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for event in kernels:
        by_thread[event.get("tid")].append(event)
    for thread in by_thread.values():
        open_events: list[dict[str, Any]] = []
        for event in sorted(thread, key=lambda e: (float(e.get("ts", 0)), -float(e.get("dur", 0)))):
            start, duration = float(event.get("ts", 0)), float(event.get("dur", 0))
            while open_events and start >= float(open_events[-1]["ts"]) + float(open_events[-1].get("dur", 0)):
                open_events.pop()
            own[id(event)] = duration
            if open_events:
                own[id(open_events[-1])] -= duration
            open_events.append(event)
    return [(event, max(own[id(event)], 0.0)) for event in kernels]

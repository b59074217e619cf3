"""The pipeline report: what each pass did, how long it took, and how far outputs moved."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from optimizer.accuracy import cosine_text

STATUS_APPLIED = "applied"
STATUS_UNCHANGED = "unchanged"
STATUS_ROLLED_BACK = "rolled back"
STATUS_FAILED = "failed"


@dataclass
class PassRecord:
    """One pass's row: status is applied, unchanged, rolled back (verification) or failed (error)."""

    name: str
    status: str
    seconds: float
    nodes_before: int
    nodes_after: int
    max_abs_error: float | None = None
    detail: str = ""
    cosine: float | None = None
    notes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    # Approximate passes: the exact twin the result was checked against, and how close it came.
    twin: str = ""
    # Approximate passes: the lowest per-sample cosine of any output (``cosine`` is their mean).
    worst_cosine: float | None = None
    # Approximate passes: the samples ``cosine`` and ``worst_cosine`` were measured on, counted ("the 33 calibration
    # samples held out of the pass's fit").
    accuracy_on: str = ""


@dataclass
class PipelineReport:
    """Everything the pipeline did to one model, serializable to JSON."""

    model: str
    target: str
    verified: bool
    nodes_before: int
    nodes_after: int = 0
    initializer_bytes_before: int = 0
    initializer_bytes_after: int = 0
    seconds: float = 0.0
    inputs: list[dict[str, list[int]]] = field(default_factory=list)
    # Where each verification input set came from, in the order of ``inputs``.
    input_sets: list[str] = field(default_factory=list)
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)
    accuracy_budget: str | None = None
    warnings: list[str] = field(default_factory=list)
    passes: list[PassRecord] = field(default_factory=list)
    output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; the schema is documented in README.md."""
        return {"schema": "graphopt.pipeline-report/1", **asdict(self)}

    def write_json(self, path: str | os.PathLike) -> None:
        """Write the report as strict JSON (``strict_json``), atomically (``model_io.write_atomically``)."""
        from optimizer.model_io import write_atomically

        text = json.dumps(strict_json(self.to_dict()), indent=2, allow_nan=False) + "\n"
        write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"), "pipeline report")

    def failures(self) -> list[PassRecord]:
        """Passes that were rolled back or raised."""
        return [record for record in self.passes if record.status in (STATUS_ROLLED_BACK, STATUS_FAILED)]


def strict_json(value: Any) -> Any:
    """``value`` with each NaN or infinite float as the string ``"nan"``, ``"inf"`` or ``"-inf"``.

    JSON has no NaN or Infinity: Python writes them anyway, and jq, JavaScript and Go then
    refuse the whole file (a rolled-back pass's max |Δ| is infinite exactly when CI reads it).
    A string, not ``null``, so that a consumer's ``max_abs_error < 1e-3`` cannot pass on it
    (jq orders null before every number).
    """
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def render_table(report: PipelineReport, console: Console | None = None, *, verbose: bool = False) -> None:
    """Print the per-pass table and a one-line summary to the terminal; ``verbose`` adds each pass's refusals."""
    console = console or Console()
    table = Table(title=escape(f"graphopt: {report.model} (target {report.target})"), box=box.SIMPLE_HEAD)
    table.add_column("pass", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("nodes in", justify="right")
    table.add_column("nodes out", justify="right")
    table.add_column("max |Δ|" if report.verified else "verified", justify="right", no_wrap=True)
    approximate = any(record.cosine is not None for record in report.passes)
    if approximate:
        table.add_column("cosine", justify="right", no_wrap=True)
        table.add_column("worst sample", justify="right", no_wrap=True)
    styles = {STATUS_APPLIED: "green", STATUS_UNCHANGED: "dim", STATUS_ROLLED_BACK: "yellow", STATUS_FAILED: "red"}
    for record in report.passes:
        error = _format_error(record.max_abs_error) if report.verified else "off"
        row = [
            record.name,
            f"[{styles.get(record.status, '')}]{record.status}[/]",
            f"{record.seconds * 1000:.0f} ms",
            str(record.nodes_before),
            str(record.nodes_after),
            error,
        ]
        if approximate:
            row.append("" if record.cosine is None else cosine_text(record.cosine))
            row.append("" if record.worst_cosine is None else cosine_text(record.worst_cosine))
        table.add_row(*row)
    console.print(table)
    console.print(
        f"nodes {report.nodes_before} → {report.nodes_after} ({node_change(report)}), "
        f"weights {_format_bytes(report.initializer_bytes_before)} → {_format_bytes(report.initializer_bytes_after)}, "
        f"{report.seconds:.2f} s" + ("" if report.verified else " — outputs NOT verified (--no-verify)")
    )
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if report.accuracy_budget:
        console.print(f"approximate passes verified against the accuracy budget: {report.accuracy_budget}")
    for record in report.passes:
        if record.twin and record.status == STATUS_APPLIED:
            console.print(f"{record.name}: matches its twin, {escape(record.twin)}", highlight=False, soft_wrap=True)
        if record.accuracy_on and record.cosine is not None:
            checked = "checked" if record.status == STATUS_APPLIED else "missed"
            console.print(
                f"{record.name}: budget {checked} on {escape(record.accuracy_on)} (the table's cosine)",
                highlight=False,
                soft_wrap=True,
            )
        for note in record.notes:
            console.print(f"{record.name}: {escape(note)}", highlight=False, soft_wrap=True)
        for refusal in record.refusals if verbose else ():
            console.print(f"[dim]{record.name}:[/] {escape(refusal)}", highlight=False, soft_wrap=True)
    hidden = 0 if verbose else sum(len(record.refusals) for record in report.passes)
    if hidden:
        lines = f"{hidden} more line{'s' if hidden > 1 else ''}"
        console.print(f"[dim]-v shows {lines} on what passes left alone, and why[/]")
    for record in report.failures():
        console.print(f"[yellow]{record.name} {record.status}:[/] {escape(record.detail)}", highlight=False)


def node_change(report: PipelineReport) -> str:
    """What the pipeline did to the node count, in words: ``3 removed``, ``2 added`` (int8 QDQ, a pass that splits a
    node); never ``-2 removed``."""
    change = report.nodes_before - report.nodes_after
    return f"{-change} added" if change < 0 else f"{change} removed"


def _format_error(value: float | None) -> str:
    return "—" if value is None else f"{value:.2e}"


def _format_bytes(count: int) -> str:
    return format_size(count)


def format_size(nbytes: int | None) -> str:
    """A size in MB of 2^20 bytes: the one unit graphopt's reports give file sizes, weights and memory in
    (``4.1 MB``; ``0.0123 MB`` below a tenth, ``1,234.5 MB`` past a thousand); ``—`` for None."""
    if nbytes is None:
        return "—"
    megabytes = nbytes / (1 << 20)
    return f"{megabytes:,.1f} MB" if megabytes >= 0.1 or megabytes == 0 else f"{megabytes:.3g} MB"

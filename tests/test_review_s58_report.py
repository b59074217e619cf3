"""Review s58 (the report and how a CI gates on it): what the summary line says of the node count."""

from __future__ import annotations

from rich.console import Console

from optimizer.compare.html import _pipeline_section
from optimizer.report import PipelineReport, render_table


def _summary(report: PipelineReport) -> str:
    console = Console(record=True, width=200)
    render_table(report, console)
    return console.export_text()


def test_a_pipeline_that_adds_nodes_says_added_not_a_negative_count_removed():
    """int8 QDQ adds nodes (3 → 5 on a one-MatMul model): the summary said "(-2 removed)"."""
    report = PipelineReport(model="m.onnx", target="cpu", verified=True, nodes_before=3, nodes_after=5)
    assert "nodes 3 → 5 (2 added)" in _summary(report)
    assert "(2 added)" in _pipeline_section(report)
    assert "-2" not in _summary(report) and "-2 removed" not in _pipeline_section(report)


def test_a_pipeline_that_removes_nodes_still_says_removed():
    report = PipelineReport(model="m.onnx", target="cpu", verified=True, nodes_before=5, nodes_after=3)
    assert "nodes 5 → 3 (2 removed)" in _summary(report)
    assert "(2 removed)" in _pipeline_section(report)
    unchanged = PipelineReport(model="m.onnx", target="cpu", verified=True, nodes_before=3, nodes_after=3)
    assert "nodes 3 → 3 (0 removed)" in _summary(unchanged)

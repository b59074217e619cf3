"""Rendering a ComparisonReport: a rich table, JSON, and a self-contained HTML page."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from optimizer.compare.comparison import BatchResult, ComparisonReport, ProviderResult
from optimizer.compare.generation_timing import GenerationResult
from optimizer.model_io import write_atomically


def render_comparison(report: ComparisonReport, console: Console | None = None) -> None:
    """Print the comparison to the terminal, one table per execution provider."""
    console = console or Console()
    env = report.environment
    console.print(
        f"[bold]BEFORE[/] {escape(report.before.path)} ({_mb(report.before.file_bytes)}, {report.before.nodes} nodes)  "
        f"[bold]AFTER[/] {escape(report.after.path)} ({_mb(report.after.file_bytes)}, {report.after.nodes} nodes)",
        highlight=False,
    )
    console.print(
        f"onnxruntime {env['onnxruntime']}, {env['graph_optimization_level']}, "
        f"{env['intra_op_threads']} intra-op threads, "
        f"CPU {env['cpu']}" + (f", GPU {env['gpu']}" if env.get("gpu") else ""),
        highlight=False,
    )
    for provider in report.providers:
        if not provider.available:
            console.print(f"[yellow]{provider.ep}: skipped[/]: {escape(provider.reason)}", highlight=False)
            continue
        if provider.batches:
            console.print(_provider_table(provider))
        if provider.generation:
            console.print(_generation_table(provider))
        if provider.accuracy:  # none when no output could be compared (the warnings say why)
            console.print(_accuracy_table(provider))
        if provider.llm_accuracy is not None:
            console.print(_llm_accuracy_table(provider))
        if provider.profile_before_ms:
            console.print(_profile_table(provider))
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


def write_json(report: ComparisonReport, path: str | os.PathLike) -> None:
    """Write every figure of the report as JSON (atomically: see ``optimizer.model_io.write_atomically``)."""
    text = json.dumps(report.to_dict(), indent=2, default=_json_default) + "\n"
    write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"), "comparison")


def write_html(report: ComparisonReport, path: str | os.PathLike) -> None:
    """Write a single self-contained HTML page (atomically): the tables and a latency plot per EP (inline SVG)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>graphopt comparison</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
        "th:first-child,td:first-child{text-align:left}.warn{color:#a60}</style></head><body>",
        "<h1>graphopt: before / after</h1>",
        _html_table(
            ["", "file", "size", "nodes", "parameters"],
            [
                [
                    "BEFORE",
                    report.before.path,
                    _mb(report.before.file_bytes),
                    report.before.nodes,
                    report.before.parameters,
                ],
                ["AFTER", report.after.path, _mb(report.after.file_bytes), report.after.nodes, report.after.parameters],
            ],
        ),
        _html_table(["setting", "value"], [[key, value] for key, value in report.environment.items()]),
    ]
    for provider in report.providers:
        parts.append(f"<h2>{html.escape(provider.ep)}</h2>")
        if not provider.available:
            parts.append(f"<p class='warn'>skipped: {html.escape(provider.reason)}</p>")
            continue
        if provider.generation:
            parts.append(_html_table(_GENERATION_HEADER, [_generation_row(g) for g in provider.generation]))
        if provider.llm_accuracy is not None:
            parts.append(_html_table(["language-model accuracy", "value"], _llm_accuracy_rows(provider)))
        if provider.batches:
            parts.append(
                _html_table(
                    [
                        "batch",
                        "runs",
                        "median ms before",
                        "median ms after",
                        "p90 after",
                        "p99 after",
                        "after/before",
                        "95% interval",
                        "items/s before",
                        "items/s after",
                    ],
                    [
                        [
                            b.batch,
                            b.before.runs,
                            f"{b.before.median_ms:.3f}",
                            f"{b.after.median_ms:.3f}",
                            f"{b.after.p90_ms:.3f}",
                            f"{b.after.p99_ms:.3f}",
                            f"{b.ratio.ratio:.3f}",
                            f"{b.ratio.low:.3f}–{b.ratio.high:.3f}",
                            f"{b.throughput_before:.1f}",
                            f"{b.throughput_after:.1f}",
                        ]
                        for b in provider.batches
                    ],
                )
            )
        parts.append(
            _html_table(
                ["output", "max abs error", "max rel error", "cosine", "top-1 agreement"],
                [
                    [
                        a.name,
                        f"{a.max_abs_error:.3g}",
                        f"{a.max_rel_error:.3g}",
                        _opt(a.cosine, ".6f"),
                        _opt(a.top1_agreement, ".3f"),
                    ]
                    for a in provider.accuracy
                ],
            )
        )
        if provider.memory_before and provider.memory_after:
            parts.append(_html_table(["memory", "before", "after"], _memory_rows(provider)))
        for batch in provider.batches:
            parts.append(f"<h3>latency distribution, batch {batch.batch}</h3>" + _latency_svg(batch))
        if provider.profile_before_ms:
            parts.append(_html_table(["op type", "ms/run before", "ms/run after"], _profile_rows(provider)))
    for warning in report.warnings:
        parts.append(f"<p class='warn'>warning: {html.escape(warning)}</p>")
    parts.append("</body></html>")
    page = "\n".join(parts)
    write_atomically(path, lambda temporary: Path(temporary).write_text(page, encoding="utf-8"), "comparison")


def _provider_table(provider: ProviderResult) -> Table:
    runs = ", ".join(str(batch.before.runs) for batch in provider.batches)
    table = Table(
        title=f"latency on {provider.ep}, ms ({runs} interleaved pairs)",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
    )
    for column in ("batch", "model", "p50", "p90", "p99", "items/s", "ratio", "95% CI"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for batch in provider.batches:
        ratio = batch.ratio
        style = "green" if ratio.high < 1 else "red" if ratio.low > 1 else "default"
        for name, summary, throughput in (
            ("before", batch.before, batch.throughput_before),
            ("after", batch.after, batch.throughput_after),
        ):
            table.add_row(
                str(batch.batch) if name == "before" else "",
                name,
                f"{summary.median_ms:.2f}",
                f"{summary.p90_ms:.2f}",
                f"{summary.p99_ms:.2f}",
                f"{throughput:.1f}",
                f"[{style}]{ratio.ratio:.3f}[/]" if name == "after" else "",
                f"{ratio.low:.2f}–{ratio.high:.2f}" if name == "after" else "",
            )
    table.caption = _memory_caption(provider)
    return table


def _memory_caption(provider: ProviderResult) -> str | None:
    if not (provider.memory_before and provider.memory_after):
        return None
    before, after = provider.memory_before, provider.memory_after
    return (
        f"session memory {_mb(before.session_rss_bytes)} → {_mb(after.session_rss_bytes)} "
        f"(peak RSS {_mb(before.peak_rss_bytes)} → {_mb(after.peak_rss_bytes)})"
        + (
            f", GPU {_mb(before.gpu_bytes)} → {_mb(after.gpu_bytes)}"
            if before.gpu_bytes is not None and after.gpu_bytes is not None
            else ""
        )
    )


_GENERATION_HEADER = [
    "batch",
    "runs",
    "TTFT ms before",
    "TTFT ms after",
    "TTFT after/before",
    "95% interval",
    "tokens/s before",
    "tokens/s after",
    "tokens/s after/before",
    "95% interval",
]


def _generation_row(g: GenerationResult) -> list[object]:
    return [
        g.batch,
        g.ttft_before.runs,
        f"{g.ttft_before.median_ms:.3f}",
        f"{g.ttft_after.median_ms:.3f}",
        f"{g.ttft_ratio.ratio:.3f}",
        f"{g.ttft_ratio.low:.3f}–{g.ttft_ratio.high:.3f}",
        f"{g.tokens_per_s_before:.1f}",
        f"{g.tokens_per_s_after:.1f}",
        f"{g.tokens_per_s_ratio.ratio:.3f}",
        f"{g.tokens_per_s_ratio.low:.3f}–{g.tokens_per_s_ratio.high:.3f}",
    ]


def _generation_table(provider: ProviderResult) -> Table:
    first = provider.generation[0]
    runs = ", ".join(str(g.ttft_before.runs) for g in provider.generation)
    table = Table(
        title=f"generation on {provider.ep}: {first.prompt_length}-token prompt, {first.new_tokens} new tokens "
        f"({runs} interleaved pairs)",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
    )
    columns = ("batch", "model", "TTFT ms", "TTFT p90", "ms/step", "tokens/s", "TTFT ratio", "95% CI")
    for column in (*columns, "tokens/s ratio", "95% CI "):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for g in provider.generation:
        ttft, rate = g.ttft_ratio, g.tokens_per_s_ratio
        ttft_style = "green" if ttft.high < 1 else "red" if ttft.low > 1 else "default"
        rate_style = "green" if rate.low > 1 else "red" if rate.high < 1 else "default"
        for name, first_token, decode, tokens_per_s in (
            ("before", g.ttft_before, g.decode_before, g.tokens_per_s_before),
            ("after", g.ttft_after, g.decode_after, g.tokens_per_s_after),
        ):
            after = name == "after"
            table.add_row(
                "" if after else str(g.batch),
                name,
                f"{first_token.median_ms:.2f}",
                f"{first_token.p90_ms:.2f}",
                f"{decode.median_ms / g.new_tokens:.3f}",
                f"{tokens_per_s:.1f}",
                f"[{ttft_style}]{ttft.ratio:.3f}[/]" if after else "",
                f"{ttft.low:.2f}–{ttft.high:.2f}" if after else "",
                f"[{rate_style}]{rate.ratio:.3f}[/]" if after else "",
                f"{rate.low:.2f}–{rate.high:.2f}" if after else "",
            )
    if not provider.batches:
        table.caption = _memory_caption(provider)
    return table


def _llm_accuracy_rows(provider: ProviderResult) -> list[list[str]]:
    llm = provider.llm_accuracy
    rows = [
        ["text", llm.text],
        [f"next-token top-1 agreement ({llm.scored_tokens} tokens, teacher-forced)", f"{llm.top1_agreement:.4f}"],
        [
            "perplexity before → after (Δ)",
            f"{llm.perplexity_before:.4g} → {llm.perplexity_after:.4g} ({llm.perplexity_delta:+.3g})",
        ],
        [
            f"greedy continuations equal ({llm.prompts} prompts, {llm.continuation_tokens} tokens)",
            f"{llm.exact_match:.3f}",
        ],
        ["agreement until the first different token", f"{llm.prefix_agreement:.3f}"],
    ]
    if llm.note:
        rows.append(["note", llm.note])
    return rows


def _llm_accuracy_table(provider: ProviderResult) -> Table:
    table = Table(
        title=f"AFTER vs BEFORE as language models on {provider.ep}",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
    )
    table.add_column("metric", justify="left")
    table.add_column("value", justify="right")
    for metric, value in _llm_accuracy_rows(provider):
        if metric != "note":
            table.add_row(escape(metric), escape(value))
    table.caption = escape(provider.llm_accuracy.note) or None
    return table


def _accuracy_table(provider: ProviderResult) -> Table:
    table = Table(
        title=f"accuracy of AFTER vs BEFORE on {provider.ep}", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False
    )
    for column in ("output", "max abs", "max rel", "cosine", "top-1"):
        table.add_column(column, justify="right" if column != "output" else "left", no_wrap=True)
    for item in provider.accuracy:
        table.add_row(
            item.name,
            f"{item.max_abs_error:.3g}",
            f"{item.max_rel_error:.3g}",
            _opt(item.cosine, ".6f"),
            _opt(item.top1_agreement, ".3f"),
        )
    return table


def _profile_table(provider: ProviderResult) -> Table:
    table = Table(title=f"time per op type on {provider.ep} (ms/run, ORT profiler)", box=box.SIMPLE_HEAD)
    for column in ("op type", "before", "after"):
        table.add_column(column, justify="right" if column != "op type" else "left")
    for row in _profile_rows(provider):
        table.add_row(*[str(cell) for cell in row])
    return table


def _profile_rows(provider: ProviderResult) -> list[list[str]]:
    ops = sorted(
        set(provider.profile_before_ms) | set(provider.profile_after_ms),
        key=lambda op: -max(provider.profile_before_ms.get(op, 0), provider.profile_after_ms.get(op, 0)),
    )
    return [
        [op, _opt(provider.profile_before_ms.get(op), ".3f"), _opt(provider.profile_after_ms.get(op), ".3f")]
        for op in ops
    ]


def _memory_rows(provider: ProviderResult) -> list[list[str]]:
    before, after = provider.memory_before, provider.memory_after
    rows = [
        ["session growth", _mb(before.session_rss_bytes), _mb(after.session_rss_bytes)],
        ["peak RSS", _mb(before.peak_rss_bytes), _mb(after.peak_rss_bytes)],
    ]
    if before.gpu_bytes is not None and after.gpu_bytes is not None:
        rows.append(["GPU memory", _mb(before.gpu_bytes), _mb(after.gpu_bytes)])
    return rows


def _latency_svg(batch: BatchResult, width: int = 640, height: int = 220) -> str:
    """Overlaid histograms of the two models' run times, as inline SVG (no plotting library needed)."""
    samples = {"before": np.asarray(batch.samples_before_ms), "after": np.asarray(batch.samples_after_ms)}
    everything = np.concatenate(list(samples.values()))
    if everything.size == 0:
        return ""
    low, high = np.percentile(everything, [0.5, 99.5])
    high = high if high > low else low + 1e-3
    edges = np.linspace(low, high, 41)
    counts = {name: np.histogram(np.clip(values, low, high), edges)[0] for name, values in samples.items()}
    peak = max(int(c.max()) for c in counts.values()) or 1
    left, bottom, plot_w, plot_h = 40, height - 30, width - 60, height - 50
    colors = {"before": "#4477aa", "after": "#ee6677"}
    shapes = []
    for name, count in counts.items():
        bar_w = plot_w / len(count)
        for index, value in enumerate(count):
            bar_h = plot_h * value / peak
            shapes.append(
                f"<rect x='{left + index * bar_w:.1f}' y='{bottom - bar_h:.1f}' width='{bar_w:.1f}' "
                f"height='{bar_h:.1f}' fill='{colors[name]}' fill-opacity='0.5'/>"
            )
        median = float(np.median(samples[name]))
        x = left + plot_w * (min(max(median, low), high) - low) / (high - low)
        shapes.append(
            f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{bottom - plot_h}' y2='{bottom}' "
            f"stroke='{colors[name]}' stroke-width='2'/>"
        )
    labels = [
        f"<text x='{left}' y='{height - 10}' font-size='11'>{low:.3f} ms</text>",
        f"<text x='{left + plot_w}' y='{height - 10}' font-size='11' text-anchor='end'>{high:.3f} ms</text>",
        f"<text x='{left + 5}' y='15' font-size='12' fill='{colors['before']}'>before (median line)</text>",
        f"<text x='{left + 160}' y='15' font-size='12' fill='{colors['after']}'>after (median line)</text>",
    ]
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>{''.join(shapes + labels)}</svg>"


def _html_table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _opt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _mb(count: int | None) -> str:
    return "—" if count is None else f"{count / (1 << 20):.1f} MB"


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")

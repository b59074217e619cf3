"""Rendering a ComparisonReport: a rich table, JSON, and (through ``optimizer.compare.html``) an HTML page."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from optimizer.accuracy import cosine_text, share_text
from optimizer.compare.comparison import ComparisonReport, ProviderResult
from optimizer.compare.generation_timing import GenerationResult
from optimizer.compare.stats import P99_MIN_RUNS, RatioEstimate
from optimizer.model_io import write_atomically
from optimizer.report import PipelineReport, format_size, strict_json


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
        f"CPU {env['cpu']}"
        + (f" ({env['cpu_microarchitecture']}; {env['cpu_features']})" if env.get("cpu_microarchitecture") else "")
        + (f", GPU {env['gpu']}" if env.get("gpu") else ""),
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
    text = json.dumps(strict_json(report.to_dict()), indent=2, default=_json_default, allow_nan=False) + "\n"
    write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"), "comparison")


def write_html(report: ComparisonReport, path: str | os.PathLike, pipeline: PipelineReport | None = None) -> None:
    """Write the comparison as one self-contained HTML page (atomically; see ``optimizer.compare.html``).

    ``pipeline``, the report of the ``optimize`` run that made AFTER, adds the pass table. A file name that is not
    UTF-8 (``--inputs`` from such a folder) is shown with its odd bytes escaped (``\\udce9``), as the JSON has it.
    """
    from optimizer.compare.html import render_html  # it builds on this module's rows

    page = render_html(report, pipeline)
    write_atomically(
        path,
        lambda temporary: Path(temporary).write_text(page, encoding="utf-8", errors="backslashreplace"),
        "comparison",
    )


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
        ratio = batch.ratio  # its interval with the ratio's 3 decimals: 0.999 beside "1.00–1.00" read outside it
        style = _ratio_style(ratio, lower_is_better=True)
        for name, summary, throughput in (
            ("before", batch.before, batch.throughput_before),
            ("after", batch.after, batch.throughput_after),
        ):
            table.add_row(
                str(batch.batch) if name == "before" else "",
                name,
                f"{summary.median_ms:.2f}",
                f"{summary.p90_ms:.2f}",
                "—" if summary.p99_ms is None else f"{summary.p99_ms:.2f}",
                f"{throughput:.1f}",
                f"[{style}]{ratio.ratio:.3f}[/]" if name == "after" else "",
                f"{ratio.low:.3f}–{ratio.high:.3f}" if name == "after" else "",
            )
    caption = _memory_caption(provider)
    if any(summary.p99_ms is None for batch in provider.batches for summary in (batch.before, batch.after)):
        note = f"p99 —: under {P99_MIN_RUNS} pairs it is the slowest run or two, drawn anew each comparison"
        caption = note if caption is None else f"{caption}\n{note}"
    table.caption = caption
    return table


def _ratio_style(ratio: RatioEstimate, *, lower_is_better: bool) -> str:
    """Green where the whole interval says better, red where it says worse; no colour says "faster" or
    "slower" where the interval cannot be trusted (as on the HTML page)."""
    if not ratio.trustworthy:
        return "default"
    better = ratio.high < 1 if lower_is_better else ratio.low > 1
    worse = ratio.low > 1 if lower_is_better else ratio.high < 1
    return "green" if better else "red" if worse else "default"


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
        + f"; read as {before.method}"  # how this platform measures a peak (optimizer.compare.memory)
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
        ttft_style = _ratio_style(ttft, lower_is_better=True)
        rate_style = _ratio_style(rate, lower_is_better=False)
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
                f"{ttft.low:.3f}–{ttft.high:.3f}" if after else "",
                f"[{rate_style}]{rate.ratio:.3f}[/]" if after else "",
                f"{rate.low:.3f}–{rate.high:.3f}" if after else "",
            )
    if not provider.batches:
        table.caption = _memory_caption(provider)
    return table


def _llm_accuracy_rows(provider: ProviderResult) -> list[list[str]]:
    llm = provider.llm_accuracy
    rows = [
        ["text", llm.text],
        [
            f"next-token top-1 agreement ({llm.scored_tokens} tokens, teacher-forced)",
            cosine_text(llm.top1_agreement, 4),
        ],
        [
            "perplexity before → after (Δ)",
            f"{llm.perplexity_before:.4g} → {llm.perplexity_after:.4g} ({llm.perplexity_delta:+.3g})",
        ],
        [
            f"greedy continuations equal ({llm.prompts} prompts, {llm.continuation_tokens} tokens)",
            share_text(llm.exact_match),
        ],
        ["agreement until the first different token", share_text(llm.prefix_agreement)],
        ["teacher-forced logits cosine (every scored position)", cosine_text(llm.logits_cosine, 6)],
        ["teacher-forced logits cosine, worst sequence", cosine_text(llm.logits_worst_cosine, 6)],
        ["greedy decode steps' logits cosine (AFTER fed BEFORE's tokens)", cosine_text(llm.decode_logits_cosine, 6)],
        ["greedy decode steps' logits cosine, worst prompt", cosine_text(llm.decode_logits_worst_cosine, 6)],
    ]
    if llm.note:
        rows.append(["note", llm.note])
    return rows


def _llm_accuracy_table(provider: ProviderResult) -> Table:
    batch = provider.llm_accuracy.batch
    rows = "one row" if batch == 1 else f"up to {batch} rows"  # "up to 1 rows" for a model that takes one
    table = Table(
        title=f"AFTER vs BEFORE as language models on {provider.ep}, {rows} at a time",
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
    table.caption = escape(f"on {provider.accuracy_data}") if provider.accuracy_data else None
    # A long output name folds onto more lines; the figures never shrink to fit it.
    table.add_column("output", justify="left", overflow="fold")
    for column in ("max abs", "max rel", "cosine", "worst sample", "top-1", "agree"):
        table.add_column(column, justify="right", no_wrap=True)
    for item in provider.accuracy:
        table.add_row(
            escape(item.name),
            f"{item.max_abs_error:.3g}",
            f"{item.max_rel_error:.3g}",
            _cosine_or_dash(item.cosine),
            _cosine_or_dash(item.worst_sample_cosine),
            share_text(item.top1_agreement),
            share_text(item.agreement),
        )
    return table


def _profile_table(provider: ProviderResult) -> Table:
    table = Table(title=f"time per op type on {provider.ep} (ms/run, ORT profiler)", box=box.SIMPLE_HEAD)
    for column in ("op type", "before", "after"):
        table.add_column(column, justify="right" if column != "op type" else "left")
    for row in _profile_rows(provider):
        table.add_row(*[escape(str(cell)) for cell in row])
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


def _cosine_or_dash(value: float | None) -> str:
    """A cosine to six decimals, rounded down (``cosine_text``), or a dash where there is none."""
    return "—" if value is None else cosine_text(value, 6)


def _opt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _mb(count: int | None) -> str:
    return format_size(count)  # one unit in every report (optimizer.report.format_size)


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")

"""The comparison as one self-contained HTML page: a verdict first, then the evidence.

The first screen holds the verdict in one line ("AFTER 0.80× latency [0.70–0.91],
outputs identical to 1e-6, 4.1 → 1.2 MB") and a card per figure with the warnings that
qualify it beside it (a wide interval beside the latency, a dtype change beside the
accuracy). Below: what the optimizer did when the page comes from ``optimize --compare``
(each pass, what was rolled back and why, the passes' notes such as layers kept float),
then per execution provider the latency histograms (axes, ticks, outliers left out and
counted), the run times in order (a noisy or drifting machine shows there), BEFORE's and
AFTER's percentiles side by side, and the remaining tables.

Everything is inline (CSS, SVG; no script, font or image is fetched), so the file opens
offline and can be attached to a ticket.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

import numpy as np

from optimizer.accuracy import cosine_text, share_text
from optimizer.compare.comparison import NOT_COMPARED, BatchResult, ComparisonReport, ProviderResult
from optimizer.compare.generation_timing import GenerationResult
from optimizer.compare.report import (
    _GENERATION_HEADER,
    _cosine_or_dash,
    _generation_row,
    _llm_accuracy_rows,
    _mb,
    _memory_rows,
    _profile_rows,
)
from optimizer.compare.stats import LatencySummary, RatioEstimate
from optimizer.report import STATUS_APPLIED, STATUS_FAILED, STATUS_ROLLED_BACK, PipelineReport, node_change

# Outputs within this of BEFORE are float rounding, not a change: the verdict says "identical to 1e-N".
_ROUNDING_ABS = 1e-4
# ... and within this relative to each element (floored at the output's RMS): a cosine and an absolute bound
# both miss an output scaled by 500 whose values are small, and a one-value output has no cosine.
_ROUNDING_REL = 1e-3
# Below this cosine the verdict's accuracy figure is marked as a concern; for outputs without a cosine (one
# value, integers), past this relative error.
_CONCERN_COSINE = 0.999
_CONCERN_REL = 0.045  # the relative error a cosine of 0.999 allows: sqrt(2 (1 - 0.999))
# Past this relative error (floored at the output's RMS) an element is off by half its size or more: an output
# doubled by a rewrite keeps its cosine (a review's "probs", every element 100 % off, read grey and calm).
_SCALED_REL = 0.5
# "Identical to 1e-N" needs the cosine this close to 1 too: an absolute bound says nothing about outputs
# that are small themselves (probabilities over a large vocabulary), where 1e-5 can be all of the value.
_IDENTICAL_COSINE = 0.99999
# The histograms and the run strip show runs up to Q3 + this many interquartile ranges; slower ones are
# counted, not drawn (Tukey's "far out").
_FENCE_IQR = 3.0

_BEFORE_COLOR, _AFTER_COLOR = "#3b6fb6", "#e0703a"

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d232b;background:#fff}
main{max-width:76em;margin:0 auto;padding:1.2em 2em 3em}
h1{font-size:1.4em;margin:.2em 0 .1em;line-height:1.3}
h2{font-size:1.2em;margin:2em 0 .4em;border-bottom:1px solid #dde2e8;padding-bottom:.2em}
h3{font-size:1em;margin:1.4em 0 .3em}
.files{color:#5a6573;font-size:.9em;margin:0 0 .8em;overflow-wrap:anywhere}
.verdict .seg{white-space:nowrap}
.good{color:#17803d}.bad{color:#b42318}.flat{color:#4b5563}.concern{color:#a15c00}
.mark{color:#a15c00;font-size:.7em;vertical-align:super;text-decoration:none}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{border:1px solid #dde2e8;border-radius:6px;padding:.6em .9em;flex:1 1 15em;min-width:14em}
.card .figure{font-size:1.35em;font-weight:600}
.card .label{color:#5a6573;font-size:.8em;text-transform:uppercase;letter-spacing:.04em}
.sub{color:#4b5563;font-size:.88em}
.warn{color:#8a4b00;background:#fff6e5;border-left:3px solid #e8a33d;padding:.25em .5em;margin:.35em 0;font-size:.88em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.92em}
td,th{border:1px solid #dde2e8;padding:.25em .6em;text-align:right;vertical-align:top}
.passes td{white-space:nowrap}
th{background:#f4f6f8;white-space:nowrap}
th:first-child,td:first-child,td.text,th.text{text-align:left}
tr.rolled td{background:#fff6e5}tr.failed td{background:#fdecea}
td.why{text-align:left;max-width:38em;font-size:.9em;white-space:normal}
.status-applied{color:#17803d}.status-unchanged{color:#6b7280}
.status-rolled{color:#a15c00;font-weight:600}.status-failed{color:#b42318;font-weight:600}
details{margin:.3em 0}summary{cursor:pointer;color:#3b4a5c}
.plots{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
svg text{font-family:system-ui,sans-serif}
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em;vertical-align:-.05em}
"""


def render_html(report: ComparisonReport, pipeline: PipelineReport | None = None) -> str:
    """The whole page as one string: verdict and cards, the pass table (with ``pipeline``), then each EP."""
    headline = _headline(report)
    consumed: set[str] = set()
    parts = [
        "<!doctype html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        # No script, style or image may be fetched: the page is read offline, attached to tickets.
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; "
        'img-src data:">',
        f"<title>{html.escape(verdict(report))}</title>",
        f"<style>{_STYLE}</style></head><body><main>",
        _verdict_html(report, headline),
        _files_line(report, headline),
        _cards(report, headline, consumed),
    ]
    if pipeline is not None:
        parts.append(_pipeline_section(pipeline))
    for provider in report.providers:
        parts.append(_provider_section(provider, report.warnings, consumed))
    remaining = [w for w in report.warnings if w not in consumed]
    if remaining:
        parts.append("<h2>Other warnings</h2>" + "".join(_warn(w) for w in remaining))
    parts.append("<h2>Environment</h2>")
    parts.append(_table(["setting", "value"], [[key, value] for key, value in report.environment.items()]))
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def verdict(report: ComparisonReport) -> str:
    """The verdict as one plain line: latency ratio with its interval, how close the outputs are, the sizes."""
    return ", ".join(segment.text for segment in _segments(report, _headline(report)))


@dataclass
class _Headline:
    """The figure the verdict leads with: the first EP that was measured, at its first batch size whose
    interval can be trusted (the first batch size when none can)."""

    provider: ProviderResult | None
    batch: BatchResult | None = None
    generation: GenerationResult | None = None
    skipped: list[ProviderResult] = field(default_factory=list)


def _headline(report: ComparisonReport) -> _Headline:
    skipped = [p for p in report.providers if not p.available]
    for provider in report.providers:
        if provider.available and provider.batches:
            batch = next((b for b in provider.batches if b.ratio.trustworthy), provider.batches[0])
            return _Headline(provider, batch=batch, skipped=skipped)
        if provider.available and provider.generation:
            calm = (g for g in provider.generation if g.ttft_ratio.trustworthy and g.tokens_per_s_ratio.trustworthy)
            return _Headline(provider, generation=next(calm, provider.generation[0]), skipped=skipped)
    measured = next((p for p in report.providers if p.available), None)
    return _Headline(measured, skipped=skipped)


@dataclass
class _Segment:
    text: str
    css: str
    anchor: str = ""
    warned: bool = False


def _segments(report: ComparisonReport, headline: _Headline) -> list[_Segment]:
    segments = []
    if headline.batch is not None:
        ratio = headline.batch.ratio
        segments.append(
            _Segment(
                f"AFTER {ratio.ratio:.2f}× latency [{ratio.low:.2f}–{ratio.high:.2f}]",
                _ratio_css(ratio, lower_is_better=True),
                "latency",
                not ratio.trustworthy,
            )
        )
    elif headline.generation is not None:
        g = headline.generation
        segments.append(
            _Segment(
                f"AFTER {g.ttft_ratio.ratio:.2f}× time to first token [{g.ttft_ratio.low:.2f}–{g.ttft_ratio.high:.2f}]",
                _ratio_css(g.ttft_ratio, lower_is_better=True),
                "latency",
                not g.ttft_ratio.trustworthy,
            )
        )
        segments.append(
            _Segment(
                f"{g.tokens_per_s_ratio.ratio:.2f}× tokens/s "
                f"[{g.tokens_per_s_ratio.low:.2f}–{g.tokens_per_s_ratio.high:.2f}]",
                _ratio_css(g.tokens_per_s_ratio, lower_is_better=False),
                "latency",
                not g.tokens_per_s_ratio.trustworthy,
            )
        )
    else:
        why = "; ".join(f"{p.ep} skipped ({p.reason})" for p in headline.skipped) or "no timing"
        segments.append(_Segment(f"not timed: {why}", "concern", "latency", True))
    accuracy = _qualified_accuracy(report, headline.provider)
    if accuracy is not None:
        segments.append(accuracy)
    segments.append(
        _Segment(f"{_mb(report.before.file_bytes)} → {_mb(report.after.file_bytes)}", "flat", "size", False)
    )
    return segments


def _qualified_accuracy(report: ComparisonReport, provider: ProviderResult | None) -> _Segment | None:
    """``_accuracy_phrase`` qualified by the report's warnings: marked, and where an output was left out (another
    shape or kind in AFTER) the figure says so instead of calling every output "identical"."""
    accuracy = _accuracy_phrase(provider)
    qualified = _accuracy_report_warnings(report)
    if accuracy is None and provider is not None and qualified:
        return _Segment("outputs not compared", "concern", "accuracy", True)
    if accuracy is not None and qualified:
        accuracy.warned = True
        if left_out := sum(1 for warning in qualified if warning.endswith(NOT_COMPARED)):
            accuracy.css = "bad" if accuracy.css == "bad" else "concern"  # NaN/Inf stays red
            lead = f"{left_out} output{'s' if left_out > 1 else ''} not compared"
            if accuracy.text.startswith("outputs "):
                accuracy.text = f"{lead}; the others {accuracy.text.removeprefix('outputs ')}"
            else:
                accuracy.text = f"{lead}; of the others: {accuracy.text}"
    return accuracy


def _ratio_css(ratio: RatioEstimate, *, lower_is_better: bool) -> str:
    if not ratio.trustworthy:  # no colour says "faster" or "slower" when the interval cannot be trusted
        return "concern"
    better = ratio.high < 1 if lower_is_better else ratio.low > 1
    worse = ratio.low > 1 if lower_is_better else ratio.high < 1
    return "good" if better else "bad" if worse else "flat"


def _accuracy_phrase(provider: ProviderResult | None) -> _Segment | None:
    """How close AFTER's outputs are to BEFORE's, in words a reader can act on."""
    if provider is None:
        return None
    warned = bool(_accuracy_warnings_of(provider))
    # An infinite error (NaN/Inf where the other model has a number, or non-numeric values that differ) must
    # lead the verdict: max() and min() skip a NaN unless it comes first, and a cosine over finite values hides it.
    # With --generate too: an output the generation does not read (a hidden state beside the logits) that turned
    # Inf failed --min-cosine under a calm grey "logits cosine 1.0000" (a review).
    broken = [
        item
        for item in provider.accuracy
        if not math.isfinite(item.max_abs_error) or (item.cosine is not None and math.isnan(item.cosine))
    ]
    if broken:
        # A string label's agreement says how many differ (one in 10,000 read as every one).
        names = ", ".join(
            f"'{item.name}'" + (f" (agreement {share_text(item.agreement)})" if item.agreement is not None else "")
            for item in broken
        )
        return _Segment(f"{names} differ: NaN/Inf or non-numeric values", "bad", "accuracy", warned)
    # Integer or bool outputs that differ at all (class ids, masks) hold other answers, not rounding; so do an ArgMax's
    # ids cast to float, held by their agreement (``optimizer.class_scores.argmax_outputs``): every one a class off read
    # "outputs within 1", its agreement unsaid.
    integers_differ = any(
        (np.dtype(item.dtype).kind in "iub" or getattr(item, "agreement", None) is not None)
        and not item.exact
        and item.max_abs_error > 0
        for item in provider.accuracy
    )
    if provider.llm_accuracy is not None:
        # Every figure that can show a broken decoder leads, not the teacher-forced top-1 alone: a model that
        # ignored its past kept top-1 1.000 there while its continuations all differed (a review).
        llm = provider.llm_accuracy
        cosines = [llm.logits_cosine, llm.decode_logits_cosine]
        cosines += [item.cosine for item in provider.accuracy if item.cosine is not None]
        lowest = float(np.min(cosines))  # NaN stays NaN, and fails both tests below
        # A few prompts move the continuations in big steps (one of 4 differing is 0.75): they colour amber only.
        if not (llm.top1_agreement >= 0.9 and lowest >= 0.99):
            css = "bad"
        elif not (llm.top1_agreement >= 0.99 and llm.exact_match == 1 and lowest >= 0.9999) or integers_differ:
            css = "concern"
        else:
            css = "flat"
        said = (
            f"next-token top-1 agreement {share_text(llm.top1_agreement)}, greedy continuations equal "
            f"{share_text(llm.exact_match)}, logits cosine {cosine_text(lowest, 4)}"
        )
        return _Segment(said, css, "accuracy", warned)
    if not provider.accuracy:
        return None
    worst_abs = max(item.max_abs_error for item in provider.accuracy)
    cosines = [item.cosine for item in provider.accuracy if item.cosine is not None]
    top1 = [item.top1_agreement for item in provider.accuracy if item.top1_agreement is not None]
    if all(item.exact for item in provider.accuracy):
        return _Segment("outputs bit-identical", "good", "accuracy", warned)
    if worst_abs == 0:
        return _Segment("outputs equal in value", "good", "accuracy", warned)
    worst_rel = max(item.max_rel_error for item in provider.accuracy)
    if (
        worst_abs <= _ROUNDING_ABS
        and worst_rel <= _ROUNDING_REL
        and not integers_differ
        and min(cosines, default=1.0) >= _IDENTICAL_COSINE
        and min(top1, default=1.0) == 1
    ):
        bound = 10.0 ** math.ceil(math.log10(worst_abs))
        return _Segment(f"outputs identical to {bound:.0e}".replace("e-0", "e-"), "good", "accuracy", warned)
    if cosines:
        text = f"cosine ≥ {_cosine(min(cosines))} (max |Δ| {worst_abs:.3g})"
    else:
        text = f"outputs within {worst_abs:.3g}"
    # Errors as large as the values themselves (an output scaled by 500 keeps its cosine): said, and a concern.
    scaled = worst_rel > _SCALED_REL
    if scaled:
        text += f", max rel {worst_rel:.3g}"
    if top1:
        text += f", top-1 agreement {share_text(min(top1))}"
    # A label's or token ids' agreement, which the max |Δ| does not say (one label of 1000 moved, or every one).
    if integers_differ and (agreements := [item.agreement for item in provider.accuracy if item.agreement is not None]):
        text += f", integer agreement {share_text(min(agreements))}"
    concern = (
        not math.isfinite(worst_abs)
        or integers_differ
        or scaled
        or bool(cosines and min(cosines) < _CONCERN_COSINE)
        or any(item.cosine is None and item.max_rel_error > _CONCERN_REL for item in provider.accuracy)
    )
    return _Segment(text, "concern" if concern else "flat", "accuracy", warned)


def _cosine(value: float) -> str:
    """Enough digits to tell the cosine from 1 (0.99999990, not 1.00000), never fewer than five, rounded down:
    the verdict says "cosine ≥" it (0.9999949 is "0.999994", not "0.999995")."""
    gap = 1.0 - value
    digits = 5 if gap <= 0 else min(9, max(5, round(-math.log10(gap)) + 1))
    return str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_FLOOR))


def _accuracy_warnings_of(provider: ProviderResult) -> list[str]:
    notes = []
    if provider.llm_accuracy is not None and provider.llm_accuracy.note:
        notes.append(provider.llm_accuracy.note)
    return notes


def _verdict_html(report: ComparisonReport, headline: _Headline) -> str:
    pieces = []
    for segment in _segments(report, headline):
        mark = f"<a class='mark' href='#card-{segment.anchor}' title='see the warning'>⚠</a>" if segment.warned else ""
        pieces.append(f"<span class='seg {segment.css}'>{html.escape(segment.text)}{mark}</span>")
    return f"<h1 id='verdict' class='verdict'>{', '.join(pieces)}</h1>"


def _files_line(report: ComparisonReport, headline: _Headline) -> str:
    where = ""
    if headline.provider is not None and (headline.batch or headline.generation):
        batch = headline.batch.batch if headline.batch else headline.generation.batch
        where = f"latency on {html.escape(headline.provider.ep)} at batch {batch}; "
    return (
        f"<p class='files'>{where}BEFORE <code>{html.escape(report.before.path)}</code> → "
        f"AFTER <code>{html.escape(report.after.path)}</code></p>"
    )


def _cards(report: ComparisonReport, headline: _Headline, consumed: set[str]) -> str:
    """One card per figure of the verdict, each with the warnings that qualify it."""
    cards = [_latency_card(report, headline, consumed), _accuracy_card(report, headline, consumed)]
    before, after = report.before, report.after
    size_lines = [
        f"nodes {before.nodes} → {after.nodes}",
        f"parameters {before.parameters:,} → {after.parameters:,}",
    ]
    cards.append(_card("size", "file size", f"{_mb(before.file_bytes)} → {_mb(after.file_bytes)}", size_lines, []))
    provider = headline.provider
    if provider is not None and provider.memory_before and provider.memory_after:
        rows = _memory_rows(provider)
        cards.append(
            _card(
                "memory",
                f"memory on {provider.ep}",
                f"{rows[0][1]} → {rows[0][2]}",
                [f"{rows[0][0]} (RSS)"] + [f"{name} {b} → {a}" for name, b, a in rows[1:]],
                [],
            )
        )
    return "<div class='cards'>" + "".join(cards) + "</div>"


def _latency_card(report: ComparisonReport, headline: _Headline, consumed: set[str]) -> str:
    warnings: list[str] = []
    lines: list[str] = []
    provider = headline.provider
    if headline.batch is not None:
        batch = headline.batch
        figure = f"{batch.before.median_ms:.3g} → {batch.after.median_ms:.3g} ms"
        lines.append(
            f"median of {batch.before.runs} interleaved pairs; ratio {batch.ratio.ratio:.3f}, "
            f"95% interval {batch.ratio.low:.3f}–{batch.ratio.high:.3f}"
        )
        for other in (b for b in provider.batches if b is not batch):
            lines.append(
                f"batch {other.batch}: {other.ratio.ratio:.3f}× [{other.ratio.low:.3f}–{other.ratio.high:.3f}]"
            )
    elif headline.generation is not None:
        g = headline.generation
        figure = f"{g.ttft_before.median_ms:.3g} → {g.ttft_after.median_ms:.3g} ms to first token"
        lines.append(f"{g.tokens_per_s_before:.1f} → {g.tokens_per_s_after:.1f} tokens/s")
        lines.append(f"{g.prompt_length}-token prompt, {g.new_tokens} new tokens, {g.ttft_before.runs} pairs")
        for other in (timed for timed in provider.generation if timed is not g):
            ttft, rate = other.ttft_ratio, other.tokens_per_s_ratio
            lines.append(
                f"batch {other.batch}: {ttft.ratio:.3f}× time to first token [{ttft.low:.3f}–{ttft.high:.3f}], "
                f"{rate.ratio:.3f}× tokens/s [{rate.low:.3f}–{rate.high:.3f}]"
            )
    else:
        figure = "not timed"
    if provider is not None:
        warnings += _latency_warnings(provider, report.warnings, consumed)
    for skipped in headline.skipped:
        warnings.append(f"{skipped.ep} skipped: {skipped.reason}")
    title = f"latency on {provider.ep}" if provider is not None else "latency"
    return _card("latency", title, figure, lines, warnings)


def _latency_warnings(provider: ProviderResult, warnings: Sequence[str], consumed: set[str]) -> list[str]:
    """The report's warnings about this EP's timing (noisy pairs, skipped batch sizes), marked consumed."""
    mine = [w for w in warnings if w.startswith(f"{provider.ep} batch ") or w.startswith(f"{provider.ep}: batch ")]
    mine += [w for w in warnings if w.startswith(f"{provider.ep} generation batch ")]
    consumed.update(mine)
    return mine


def _accuracy_card(report: ComparisonReport, headline: _Headline, consumed: set[str]) -> str:
    provider = headline.provider
    segment = _qualified_accuracy(report, provider)
    lines = []
    if provider is not None:
        for item in provider.accuracy:
            detail = f"{item.name}: max |Δ| {item.max_abs_error:.3g}"
            if item.cosine is not None:  # rounded down, as in the table: 0.99999962 is not "1.000000"
                detail += f", cosine {cosine_text(item.cosine, 6)}"
            if item.top1_agreement is not None:
                detail += f", top-1 {share_text(item.top1_agreement)}"
            if item.agreement is not None:
                detail += f", agreement {share_text(item.agreement)}"
            lines.append(detail)
        if provider.accuracy and provider.accuracy_data:  # which data, as under the terminal's table
            lines.append(f"on {provider.accuracy_data}")
    mine = [w for w in _accuracy_report_warnings(report) if w not in consumed]
    consumed.update(mine)
    if provider is not None:
        mine += _accuracy_warnings_of(provider)
    figure = segment.text if segment is not None else "not compared"
    return _card("accuracy", "accuracy of AFTER vs BEFORE", figure, lines, mine)


def _accuracy_report_warnings(report: ComparisonReport) -> list[str]:
    """The warnings that qualify the accuracy: a dtype change, NaN inputs, outputs not compared."""
    return [w for w in report.warnings if w.startswith("output '") or w.startswith("--inputs") or "accuracy" in w]


def _card(anchor: str, label: str, figure: str, lines: Sequence[str], warnings: Sequence[str]) -> str:
    body = "".join(f"<div class='sub'>{html.escape(line)}</div>" for line in lines)
    return (
        f"<div class='card' id='card-{anchor}'><div class='label'>{html.escape(label)}</div>"
        f"<div class='figure'>{html.escape(figure)}</div>{body}{''.join(_warn(w) for w in warnings)}</div>"
    )


def _warn(text: str) -> str:
    return f"<div class='warn'>⚠ {html.escape(text)}</div>"


def _pipeline_section(pipeline: PipelineReport) -> str:
    """What the optimizer did: one row per pass, rolled-back and failed rows with their reason."""
    summary = (
        f"{html.escape(pipeline.model)} (target {html.escape(pipeline.target)}): nodes {pipeline.nodes_before} → "
        f"{pipeline.nodes_after} ({node_change(pipeline)}), weights {_mb(pipeline.initializer_bytes_before)} → "
        f"{_mb(pipeline.initializer_bytes_after)}, {pipeline.seconds:.2f} s"
        + ("" if pipeline.verified else " — outputs NOT verified (--no-verify)")
    )
    approximate = any(record.cosine is not None for record in pipeline.passes)
    header = ["pass", "status", "time", "nodes in → out", "max |Δ|" if pipeline.verified else "verified"]
    header += ["cosine", "worst sample"] if approximate else []
    header += ["what it decided, and why"]
    rows = []
    for record in pipeline.passes:
        css = {STATUS_ROLLED_BACK: "rolled", STATUS_FAILED: "failed"}.get(record.status, "")
        status_css = {STATUS_ROLLED_BACK: "rolled", STATUS_FAILED: "failed", STATUS_APPLIED: "applied"}.get(
            record.status, "unchanged"
        )
        why = []
        if record.detail and record.status in (STATUS_ROLLED_BACK, STATUS_FAILED):
            why.append(f"<b>{html.escape(record.status)}:</b> {html.escape(record.detail)}")
        why += [html.escape(note) for note in record.notes]
        if record.twin and record.status == STATUS_APPLIED:
            why.append(f"matches its twin, {html.escape(record.twin)}")
        if record.refusals:
            count = len(record.refusals)
            items = "".join(f"<li>{html.escape(refusal)}</li>" for refusal in record.refusals)
            why.append(
                f"<details><summary>{count} thing{'s' if count > 1 else ''} left alone, and why</summary>"
                f"<ul>{items}</ul></details>"
            )
        error = ("—" if record.max_abs_error is None else f"{record.max_abs_error:.2e}") if pipeline.verified else "off"
        cells = [
            html.escape(record.name),
            f"<span class='status-{status_css}'>{html.escape(record.status)}</span>",
            f"{record.seconds * 1000:.0f} ms",
            f"{record.nodes_before} → {record.nodes_after}",
            error,
        ]
        if approximate:
            cells.append("" if record.cosine is None else cosine_text(record.cosine))
            cells.append("" if record.worst_cosine is None else cosine_text(record.worst_cosine))
        cells.append("<br>".join(why))
        classes = ["text", "text"] + [""] * (len(cells) - 3) + ["why"]
        cells_html = "".join(
            f"<td class='{c}'>{cell}</td>" if c else f"<td>{cell}</td>" for c, cell in zip(classes, cells)
        )
        rows.append(f"<tr class='{css}'>{cells_html}</tr>")
    text_columns = {"pass", "status", "what it decided, and why"}
    head = "".join(
        f"<th class='text'>{html.escape(cell)}</th>" if cell in text_columns else f"<th>{html.escape(cell)}</th>"
        for cell in header
    )
    parts = [
        "<h2 id='passes'>What the optimizer did</h2>",
        f"<p>{summary}</p>",
        "".join(_warn(w) for w in pipeline.warnings),
    ]
    if pipeline.accuracy_budget:
        parts.append(
            f"<p class='sub'>approximate passes verified against the accuracy budget: "
            f"{html.escape(pipeline.accuracy_budget)}</p>"
        )
        for record in pipeline.passes:  # on which samples each cosine of the table was measured, and how many
            if getattr(record, "accuracy_on", "") and record.cosine is not None:
                where = html.escape(record.accuracy_on)
                parts.append(f"<p class='sub'>{html.escape(record.name)}: cosine measured on {where}</p>")
    parts.append(f"<table class='passes'><tr>{head}</tr>{''.join(rows)}</table>")
    if pipeline.input_sets:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in pipeline.input_sets)
        parts.append(f"<details><summary>verification inputs</summary><ul>{items}</ul></details>")
    return "".join(parts)


def _provider_section(provider: ProviderResult, warnings: Sequence[str], consumed: set[str]) -> str:
    """One EP's evidence; its timing warnings not shown in a card open it (a ratio's own, above its plot)."""
    parts = [f"<h2 id='ep-{html.escape(provider.ep)}'>{html.escape(provider.ep)}</h2>"]
    if not provider.available:
        parts.append(_warn(f"skipped: {provider.reason}"))
        return "".join(parts)
    ratios = [b.ratio for b in provider.batches]
    ratios += [r for g in provider.generation for r in (g.ttft_ratio, g.tokens_per_s_ratio)]
    plotted = [r.warning for r in ratios if r.warning]
    for warning in _latency_warnings(provider, [w for w in warnings if w not in consumed], consumed):
        if not any(warning.endswith(shown) for shown in plotted):
            parts.append(_warn(warning))
    for batch in provider.batches:
        parts.append(f"<h3>latency, batch {batch.batch}</h3>")
        if not batch.ratio.trustworthy:
            parts.append(_warn(batch.ratio.warning))
        parts.append(_legend())
        parts.append(
            _plots(batch.before, batch.after, batch.samples_before_ms, batch.samples_after_ms, "one inference")
        )
        parts.append(_strip_svg(batch.samples_before_ms, batch.samples_after_ms, "one inference (ms)"))
    if provider.batches:
        parts.append(
            _table(
                ["batch", "runs", "median ms before", "median ms after", "after/before", "95% interval"]
                + ["items/s before", "items/s after"],
                [
                    [
                        b.batch,
                        b.before.runs,
                        f"{b.before.median_ms:.3f}",
                        f"{b.after.median_ms:.3f}",
                        f"{b.ratio.ratio:.3f}",
                        f"{b.ratio.low:.3f}–{b.ratio.high:.3f}",
                        f"{b.throughput_before:.1f}",
                        f"{b.throughput_after:.1f}",
                    ]
                    for b in provider.batches
                ],
            )
        )
    for g in provider.generation:
        parts.append(f"<h3>generation, batch {g.batch}: time to first token</h3>")
        for ratio in (g.ttft_ratio, g.tokens_per_s_ratio):
            if not ratio.trustworthy:
                parts.append(_warn(ratio.warning))
        parts.append(_legend())
        parts.append(
            _plots(
                g.ttft_before, g.ttft_after, g.samples_ttft_before_ms, g.samples_ttft_after_ms, "time to first token"
            )
        )
        parts.append(_strip_svg(g.samples_decode_before_ms, g.samples_decode_after_ms, "decode steps (ms)"))
    if provider.generation:
        parts.append(_table(_GENERATION_HEADER, [_generation_row(g) for g in provider.generation]))
    if provider.llm_accuracy is not None:
        parts.append("<h3>AFTER vs BEFORE as language models</h3>")
        parts.append(_table(["metric", "value"], _llm_accuracy_rows(provider)))
    if provider.accuracy:
        parts.append("<h3>accuracy per output</h3>")
        parts.append(
            _table(
                [
                    "output",
                    "dtype",
                    "shape",
                    "max abs error",
                    "max rel error",
                    "cosine",
                    "worst sample cosine",
                    "top-1 agreement",
                    "agreement (integers)",
                ],
                [
                    [
                        a.name,
                        a.dtype,
                        "×".join(str(d) for d in a.shape),
                        f"{a.max_abs_error:.3g}",
                        f"{a.max_rel_error:.3g}",
                        _cosine_or_dash(a.cosine),
                        _cosine_or_dash(a.worst_sample_cosine),
                        share_text(a.top1_agreement),
                        share_text(a.agreement),
                    ]
                    for a in provider.accuracy
                ],
            )
        )
    if provider.memory_before and provider.memory_after:
        parts.append("<h3>memory</h3>" + _table(["memory", "before", "after"], _memory_rows(provider)))
    if provider.profile_before_ms:
        parts.append("<h3>time per op type (ORT profiler)</h3>")
        parts.append(_table(["op type", "ms/run before", "ms/run after"], _profile_rows(provider)))
    return "".join(parts)


def _legend() -> str:
    return (
        f"<div class='legend sub'><span style='background:{_BEFORE_COLOR}'></span>BEFORE"
        f"<span style='background:{_AFTER_COLOR}'></span>AFTER (dashed line: median)</div>"
    )


def _plots(
    before: LatencySummary,
    after: LatencySummary,
    samples_before: Sequence[float],
    samples_after: Sequence[float],
    what: str,
) -> str:
    """A histogram of ``what`` (ms) before and after beside their percentile table."""
    return (
        "<div class='plots'>"
        + _histogram_svg(samples_before, samples_after, f"{what} (ms)")
        + _percentile_table(before, after, samples_before, samples_after)
        + "</div>"
    )


def _percentile_table(
    before: LatencySummary, after: LatencySummary, samples_before: Sequence[float], samples_after: Sequence[float]
) -> str:
    """BEFORE and AFTER percentiles side by side, with AFTER/BEFORE for each."""
    rows: list[list[object]] = [["runs", before.runs, after.runs, ""]]
    figures = [
        ("min", before.min_ms, after.min_ms),
        ("p10", *_percentiles(samples_before, samples_after, 10)),
        ("p50 (median)", before.median_ms, after.median_ms),
        ("p90", before.p90_ms, after.p90_ms),
        ("p99", before.p99_ms, after.p99_ms),
        ("max", *_percentiles(samples_before, samples_after, 100)),
        ("mean", before.mean_ms, after.mean_ms),
    ]
    for name, b, a in figures:
        if b is None or a is None:
            continue
        rows.append([name, f"{b:.3f}", f"{a:.3f}", f"{a / b:.3f}" if b > 0 else "—"])
    return _table(["ms", "BEFORE", "AFTER", "AFTER/BEFORE"], rows)


def _percentiles(before: Sequence[float], after: Sequence[float], q: float) -> tuple[float | None, float | None]:
    if not len(before) or not len(after):
        return None, None
    return float(np.percentile(before, q)), float(np.percentile(after, q))


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 × 10^k apart) covering [low, high]."""
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if span / (m * magnitude) <= count + 1 + 1e-9)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(value) or 1.0
    decimals = max(0, -math.floor(math.log10(step)) if step < 1 else 0)
    return f"{value:.{decimals}f}"


def _clip_range(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """From the fastest run to Tukey's far-out fence (Q3 + 3 IQR of both models' runs together).

    Latency's outliers are all on the slow side; one 40 ms hiccup among 4 ms runs would
    squeeze every bar into one. Runs past the fence are counted under the plot instead.
    """
    everything = np.concatenate([before, after])
    q1, q3 = np.percentile(everything, [25, 75])
    low, high = float(everything.min()), float(min(everything.max(), q3 + _FENCE_IQR * (q3 - q1)))
    if high <= low:
        high = low + max(abs(low) * 1e-3, 1e-6)
    return low, high


def _histogram_svg(samples_before: Sequence[float], samples_after: Sequence[float], axis: str) -> str:
    """Overlaid histograms with axes and ticks; runs beyond the shown range are counted, not drawn."""
    before, after = np.asarray(samples_before, dtype=float), np.asarray(samples_after, dtype=float)
    if before.size == 0 or after.size == 0:
        return ""
    width, height = 560, 250
    left, right, top, bottom = 52, 14, 12, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    low, high = _clip_range(before, after)
    edges = np.linspace(low, high, 41)
    shown = {}
    clipped = {}
    for name, values in (("BEFORE", before), ("AFTER", after)):
        inside = values[values <= high]
        shown[name] = np.histogram(inside, edges)[0]
        clipped[name] = (int((values > high).sum()), float(values.max()))
    peak = max(int(c.max()) for c in shown.values()) or 1
    y_ticks = [t for t in _nice_ticks(0, peak, 4) if t == int(t)]

    def x_of(value: float) -> float:
        return left + plot_w * (value - low) / (high - low)

    def y_of(count: float) -> float:
        return top + plot_h * (1 - count / max(peak, y_ticks[-1] if y_ticks else peak))

    shapes = [_axes(left, top, plot_w, plot_h)]
    for name, color in (("BEFORE", _BEFORE_COLOR), ("AFTER", _AFTER_COLOR)):
        bar_w = plot_w / (len(edges) - 1)
        for index, count in enumerate(shown[name]):
            if count:
                y = y_of(count)
                shapes.append(
                    f"<rect x='{left + index * bar_w:.1f}' y='{y:.1f}' width='{bar_w:.1f}' "
                    f"height='{top + plot_h - y:.1f}' fill='{color}' fill-opacity='0.5'/>"
                )
        median = float(np.median(before if name == "BEFORE" else after))
        if low <= median <= high:
            x = x_of(median)
            shapes.append(
                f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{top}' y2='{top + plot_h}' stroke='{color}' "
                "stroke-width='2' stroke-dasharray='5 3'/>"
            )
    x_ticks = _nice_ticks(low, high)
    shapes += _x_ticks(x_ticks, x_of, top + plot_h)
    shapes += _y_ticks(y_ticks, y_of, left, lambda t: f"{int(t)}")
    shapes.append(_axis_title(left + plot_w / 2, height - 6, axis))
    shapes.append(_y_title(top + plot_h / 2, "runs"))
    notes = [
        f"{name}: {above} run{'s' if above != 1 else ''} above {high:.3g} ms (up to {worst:.3g}) not drawn"
        for name, (above, worst) in clipped.items()
        if above
    ]
    caption = "".join(f"<div class='sub'>{html.escape(note)}</div>" for note in notes)
    svg = (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
        f"aria-label='latency histogram'>{''.join(shapes)}</svg>"
    )
    return f"<figure style='margin:0'>{svg}<figcaption>{caption}</figcaption></figure>"


def _strip_svg(samples_before: Sequence[float], samples_after: Sequence[float], axis: str) -> str:
    """Each run's time in the order it ran: drift, bursts and a noisy neighbour show as a wandering band."""
    before, after = np.asarray(samples_before, dtype=float), np.asarray(samples_after, dtype=float)
    if before.size == 0 or after.size == 0:
        return ""
    width, height = 900, 150
    left, right, top, bottom = 52, 14, 10, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    low, high = _clip_range(before, after)
    runs = max(before.size, after.size)

    def x_of(index: float) -> float:
        return left + plot_w * (index / max(runs - 1, 1))

    def y_of(value: float) -> float:
        return top + plot_h * (1 - (min(max(value, low), high) - low) / (high - low))

    shapes = [_axes(left, top, plot_w, plot_h)]
    for values, color in ((before, _BEFORE_COLOR), (after, _AFTER_COLOR)):
        points = " ".join(f"{x_of(i):.1f},{y_of(v):.1f}" for i, v in enumerate(values))
        shapes.append(f"<polyline points='{points}' fill='none' stroke='{color}' stroke-width='1' opacity='0.8'/>")
        for i, v in enumerate(values):
            if v > high:  # an outlier: pinned to the top edge as a tick mark
                shapes.append(
                    f"<path d='M{x_of(i) - 3:.1f},{top + 6} l3,-6 l3,6 z' fill='{color}'>"
                    f"<title>{v:.3f} ms</title></path>"
                )
    y_ticks = _nice_ticks(low, high, 3)
    shapes += _y_ticks(y_ticks, y_of, left, lambda t: _tick_label(t, y_ticks))
    x_ticks = [t for t in _nice_ticks(0, runs - 1, 8) if t == int(t)] if runs > 1 else [0]
    shapes += _x_ticks(x_ticks, x_of, top + plot_h, lambda t: str(int(t) + 1))
    shapes.append(_axis_title(left + plot_w / 2, height - 4, "run (interleaved pair)"))
    shapes.append(_y_title(top + plot_h / 2, axis.replace(" (ms)", ", ms")))
    svg = (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
        f"aria-label='run times in order'>{''.join(shapes)}</svg>"
    )
    return (
        "<figure style='margin:.4em 0 1em'>"
        f"{svg}<figcaption class='sub'>Run times in the order they ran (▲: above the shown range). "
        "Both lines moving together is the machine; a gap that holds is the model.</figcaption></figure>"
    )


def _axes(left: float, top: float, plot_w: float, plot_h: float) -> str:
    bottom = top + plot_h
    return (
        f"<line x1='{left}' y1='{bottom}' x2='{left + plot_w}' y2='{bottom}' stroke='#6b7280'/>"
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{bottom}' stroke='#6b7280'/>"
    )


def _x_ticks(ticks: Sequence[float], x_of, bottom: float, label=None) -> list[str]:
    label = label or (lambda t: _tick_label(t, ticks))
    shapes = []
    for tick in ticks:
        x = x_of(tick)
        shapes.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{bottom}' y2='{bottom + 4}' stroke='#6b7280'/>")
        shapes.append(
            f"<text x='{x:.1f}' y='{bottom + 16}' font-size='11' text-anchor='middle' fill='#374151'>"
            f"{html.escape(label(tick))}</text>"
        )
    return shapes


def _y_ticks(ticks: Sequence[float], y_of, left: float, label) -> list[str]:
    shapes = []
    for tick in ticks:
        y = y_of(tick)
        shapes.append(f"<line x1='{left - 4}' x2='{left}' y1='{y:.1f}' y2='{y:.1f}' stroke='#6b7280'/>")
        shapes.append(
            f"<text x='{left - 6}' y='{y + 4:.1f}' font-size='11' text-anchor='end' fill='#374151'>"
            f"{html.escape(label(tick))}</text>"
        )
    return shapes


def _axis_title(x: float, y: float, text: str) -> str:
    return (
        f"<text x='{x:.0f}' y='{y:.0f}' font-size='11' text-anchor='middle' fill='#4b5563'>{html.escape(text)}</text>"
    )


def _y_title(y: float, text: str) -> str:
    return (
        f"<text x='12' y='{y:.0f}' font-size='11' text-anchor='middle' fill='#4b5563' "
        f"transform='rotate(-90 12 {y:.0f})'>{html.escape(text)}</text>"
    )


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"

"""The HTML comparison page: the verdict, warnings beside their figures, the pass table, the plots.

The page is built from reports made here (fixed run times), so nothing is timed. The browser
test opens it in headless Chromium (Debian's ``chromium`` package, driven by playwright) and
skips when either is missing.
"""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest

from optimizer.accuracy import OutputAccuracy
from optimizer.compare.comparison import BatchResult, ComparisonReport, ModelSummary, ProviderResult
from optimizer.compare.html import _nice_ticks, render_html, verdict
from optimizer.compare.memory import MemoryUsage
from optimizer.compare.report import write_html
from optimizer.compare.stats import LatencySummary, paired_ratio
from optimizer.report import PassRecord, PipelineReport

MB = 1 << 20


def _batch(batch: int, before_ms: np.ndarray, after_ms: np.ndarray) -> BatchResult:
    before_s, after_s = before_ms / 1000, after_ms / 1000
    summary_before, summary_after = LatencySummary.of(before_s), LatencySummary.of(after_s)
    return BatchResult(
        batch,
        summary_before,
        summary_after,
        paired_ratio(before_s, after_s),
        throughput_before=batch / (summary_before.median_ms / 1000),
        throughput_after=batch / (summary_after.median_ms / 1000),
        samples_before_ms=before_ms.tolist(),
        samples_after_ms=after_ms.tolist(),
    )


def _report(*, noisy: bool = False, max_abs: float = 6e-7, warnings: list[str] | None = None) -> ComparisonReport:
    rng = np.random.default_rng(0)
    runs = 200
    machine = 1 + 0.02 * rng.standard_normal(runs)  # what both runs of a pair share
    before = 5.0 * machine * (1 + 0.01 * rng.standard_normal(runs))
    after = 4.0 * machine * (1 + 0.01 * rng.standard_normal(runs))
    if noisy:  # bursts that hit one run of a pair only: pairing cannot cancel them
        before *= np.where(rng.random(runs) < 0.3, 1 + rng.random(runs) * 2, 1)
        after *= np.where(rng.random(runs) < 0.3, 1 + rng.random(runs) * 2, 1)
    before[17] = 40.0  # one far outlier: left out of the plots and counted
    accuracy = [OutputAccuracy("last_hidden_state", "float32", [1, 16, 64], max_abs, max_abs * 10, 0.9999999)]
    cpu = ProviderResult(
        "cpu",
        True,
        batches=[_batch(1, before, after), _batch(8, before * 6, after * 6)],
        accuracy=accuracy,
        memory_before=MemoryUsage(200 * MB, 100 * MB, 30 * MB),
        memory_after=MemoryUsage(150 * MB, 100 * MB, 12 * MB),
    )
    cuda = ProviderResult("cuda", False, "onnxruntime-gpu is not installed (pip install 'graphopt[gpu]')")
    return ComparisonReport(
        environment={"onnxruntime": "1.32.0", "graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_threads": 2},
        before=ModelSummary("examples/encoder.onnx", int(4.1 * MB), 475, 1_000_000),
        after=ModelSummary("build/encoder.int8.onnx", int(1.2 * MB), 67, 1_000_000),
        providers=[cpu, cuda],
        warnings=list(warnings or []),
    )


def _pipeline() -> PipelineReport:
    report = PipelineReport("encoder.onnx", "cpu", True, 475, 67, int(4.1 * MB), int(1.9 * MB), 2.8)
    report.warnings = ["no --calibration data: approximate passes measured on generated random inputs"]
    report.passes = [
        PassRecord("fold-constants", "applied", 0.27, 475, 463, 0.0),
        PassRecord("fuse-rms-norm", "unchanged", 0.05, 463, 463),
        PassRecord(
            "fuse-attention",
            "rolled back",
            0.03,
            463,
            400,
            0.3,
            detail="max |Δ| 0.3 exceeds the tolerance 1e-4 on output last_hidden_state",
            refusals=["1 of 4 left unfused: the scores have other users"],
        ),
        PassRecord(
            "quantize-dynamic",
            "applied",
            0.5,
            400,
            67,
            0.029,
            cosine=0.99998,
            notes=["14 layers int8, 2 float: cosine 1.0000, max |Δ| 0.0294"],
            refusals=["MatMul /lm_head: kept float to meet the accuracy budget (most sensitive)"],
        ),
    ]
    return report


def test_verdict_is_one_line_with_ratio_interval_accuracy_and_sizes():
    report = _report()
    line = verdict(report)
    ratio = report.providers[0].batches[0].ratio
    assert line.startswith(f"AFTER {ratio.ratio:.2f}× latency [{ratio.low:.2f}–{ratio.high:.2f}]")
    assert "outputs identical to 1e-6" in line and line.endswith("4.1 MB → 1.2 MB")
    assert "\n" not in line
    page = render_html(report)
    assert re.search(r"<h1 id='verdict'[^>]*>.*AFTER 0\.\d\d× latency", page)
    assert page.index("id='verdict'") < page.index("<svg"), "the verdict comes before any plot"


@pytest.mark.parametrize(
    ("max_abs", "expected"),
    [
        (0.0, "outputs equal in value"),
        (3e-5, "outputs identical to 1e-4"),
        (0.03, "cosine ≥ 0.99999990 (max |Δ| 0.03)"),
    ],
)
def test_verdict_says_how_close_the_outputs_are(max_abs, expected):
    assert expected in verdict(_report(max_abs=max_abs))


def test_warnings_sit_beside_the_figure_they_qualify():
    ratio_warning = "cpu batch 1: paired run ratios vary by 80% (noisy machine?)"
    dtype_warning = "output 'logits' is float16[1, 2] in AFTER, float32[1, 2] in BEFORE"
    page = render_html(_report(warnings=[ratio_warning, dtype_warning, "something general"]))
    latency_card = page[page.index("id='card-latency'") : page.index("id='card-accuracy'")]
    accuracy_card = page[page.index("id='card-accuracy'") : page.index("id='card-size'")]
    assert "noisy machine?" in latency_card and "onnxruntime-gpu is not installed" in latency_card
    assert "float16[1, 2] in AFTER" in accuracy_card and "noisy machine" not in accuracy_card
    others = page[page.index("Other warnings") :]
    assert "something general" in others and "noisy machine" not in others, "each warning is shown once"


def test_noisy_timing_marks_the_verdict_and_explains_beside_the_plot():
    report = _report(noisy=True)
    first = report.providers[0].batches[0]
    assert not first.ratio.trustworthy
    page = render_html(report)
    verdict_line = page[page.index("<h1") : page.index("</h1>")]
    assert "href='#card-latency'" in verdict_line, "an untrustworthy ratio is flagged in the verdict"
    assert "seg concern'>AFTER" in verdict_line and "seg good" not in verdict_line.split(",")[0], "and not green"
    section = page[page.index("<h3>latency, batch 1</h3>") :]
    assert section.index(first.ratio.warning.split(";")[0].replace("–", "–")) < section.index("<svg")


def test_verdict_leads_with_a_batch_size_whose_interval_can_be_trusted():
    report = _report(noisy=True, warnings=["cpu batch 1: paired run ratios vary by 80% (noisy machine?)"])
    calm = _report().providers[0].batches[1]
    report.providers[0].batches[1] = calm
    assert not report.providers[0].batches[0].ratio.trustworthy and calm.ratio.trustworthy
    assert verdict(report).startswith(f"AFTER {calm.ratio.ratio:.2f}× latency [{calm.ratio.low:.2f}–")
    page = render_html(report)
    assert "latency on cpu at batch 8" in page
    card = page[page.index("id='card-latency'") : page.index("id='card-accuracy'")]
    assert "batch 1: " in card and "noisy machine" in card


def test_pass_table_shows_rollbacks_with_reason_and_layers_kept_float():
    page = render_html(_report(), _pipeline())
    table = page[page.index("What the optimizer did") :]
    assert "<tr class='rolled'>" in table and "exceeds the tolerance 1e-4" in table
    assert "14 layers int8, 2 float" in table and "kept float to meet the accuracy budget" in table
    assert "no --calibration data" in table
    assert "What the optimizer did" not in render_html(_report()), "no pass table for a plain compare"


def test_plots_have_axes_ticks_and_count_the_outliers_they_leave_out():
    page = render_html(_report())
    assert page.count("aria-label='latency histogram'") == 2 and page.count("aria-label='run times in order'") == 2
    histogram = page[page.index("aria-label='latency histogram'") : page.index("</svg>")]
    labels = re.findall(r"text-anchor='middle' fill='#374151'>([0-9.]+)</text>", histogram)
    assert len(labels) >= 3 and all(float(a) < float(b) for a, b in zip(labels, labels[1:]))
    assert ">one inference (ms)<" in histogram and ">runs<" in histogram
    assert "BEFORE: 1 run above" in page and "(up to 40)" in page, "the 40 ms outlier is counted, not drawn"
    assert "40.000 ms" in page, "the run strip marks it at its place in time"


def test_percentiles_side_by_side():
    report = _report()
    page = render_html(report)
    batch = report.providers[0].batches[0]
    table = page[page.index("<th>AFTER/BEFORE</th>") :]
    row = re.search(r"<td>p90</td><td>([0-9.]+)</td><td>([0-9.]+)</td>", table)
    assert row and float(row.group(1)) == pytest.approx(batch.before.p90_ms, abs=1e-3)
    assert float(row.group(2)) == pytest.approx(batch.after.p90_ms, abs=1e-3)


def test_page_is_self_contained(tmp_path):
    path = tmp_path / "report.html"
    write_html(_report(), path, _pipeline())
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"<script|<link|<img|@import|url\(", page)
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "").replace("http-equiv", "")
    assert "default-src 'none'" in page


def test_names_from_the_model_are_escaped():
    report = _report(warnings=["output '<script>x</script>' is odd"])
    report.before.path = "<img src=x>.onnx"
    page = render_html(report)
    assert "<script>x" not in page and "<img src=x>" not in page


def test_nice_ticks():
    assert _nice_ticks(3.7, 4.9) == pytest.approx([3.8, 4.0, 4.2, 4.4, 4.6, 4.8])
    assert _nice_ticks(0, 37, 4) == [0, 10, 20, 30]


def _chromium() -> str | None:
    return os.environ.get("GRAPHOPT_CHROMIUM") or next(
        (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None
    )


def test_page_renders_in_a_headless_browser(tmp_path):
    """Chromium opens the page: no console error, nothing fetched, the verdict visible without scrolling."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    path = tmp_path / "report.html"
    write_html(_report(noisy=True, warnings=["cpu batch 1: paired run ratios vary by 80% (noisy machine?)"]), path)
    url = path.resolve().as_uri()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors, requests = [], []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(url, wait_until="load")
            verdict_box = page.locator("#verdict").bounding_box()
            latency_card = page.locator("#card-latency").bounding_box()
            svg_count = page.locator("svg").count()
            svg_box = page.locator("svg").first.bounding_box()
            page.screenshot(path=str(tmp_path / "report.png"))
        finally:
            browser.close()
    assert errors == []
    assert requests == [url], "the page fetched something besides itself"
    assert verdict_box is not None and verdict_box["height"] > 0
    assert verdict_box["y"] >= 0 and verdict_box["y"] + verdict_box["height"] <= 800
    assert verdict_box["x"] >= 0 and verdict_box["x"] + verdict_box["width"] <= 1280
    assert latency_card["y"] + latency_card["height"] <= 800, "the latency figure and its warning are on screen"
    assert svg_count == 4 and svg_box["width"] > 100 and svg_box["height"] > 100
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_optimize_compare_html_carries_the_pass_table(tmp_path):
    from optimizer.cli import EXAMPLE_MODEL, main

    page_path = tmp_path / "report.html"
    output = tmp_path / "encoder.int8.onnx"
    quick = ["--threads", "1", "--iterations", "10", "--warmup", "1", "--time-budget", "1"]
    code = main(
        ["optimize", str(EXAMPLE_MODEL), "-o", str(output), "--quantize", "dynamic", "--compare", "--html"]
        + [str(page_path), "-q", *quick]
    )
    assert code == 0
    page = page_path.read_text(encoding="utf-8")
    table = page[page.index("What the optimizer did") :]
    assert "<td class='text'>quantize-dynamic</td>" in table and "<td class='text'>fold-constants</td>" in table
    assert page.index("id='verdict'") < page.index("What the optimizer did")


def test_generation_report_leads_with_time_to_first_token_and_tokens_per_second():
    from optimizer.compare.generation_timing import GenerationResult
    from optimizer.llm_accuracy import LLMAccuracy

    rng = np.random.default_rng(1)
    ttft_before, ttft_after = 20 + rng.random(30), 15 + rng.random(30)
    decode_before, decode_after = 100 + rng.random(30), 80 + rng.random(30)
    generation = GenerationResult(
        1,
        128,
        32,
        LatencySummary.of(ttft_before / 1000),
        LatencySummary.of(ttft_after / 1000),
        paired_ratio(ttft_before, ttft_after),
        LatencySummary.of(decode_before / 1000),
        LatencySummary.of(decode_after / 1000),
        320.0,
        400.0,
        paired_ratio(1 / decode_before, 1 / decode_after),
        ttft_before.tolist(),
        ttft_after.tolist(),
        decode_before.tolist(),
        decode_after.tolist(),
    )
    llm = LLMAccuracy("random tokens", False, 4, 500, 0.982, 10.1, 10.3, 0.2, 4, 128, 32, 0.75, 0.9, "not real text")
    report = _report()
    report.providers[0] = ProviderResult("cpu", True, generation=[generation], llm_accuracy=llm)
    line = verdict(report)
    assert line.startswith("AFTER 0.") and "× time to first token [" in line and "× tokens/s [" in line
    assert "next-token top-1 agreement 0.982" in line
    page = render_html(report)
    assert "time to first token (ms)" in page and "decode steps, ms" in page
    accuracy_card = page[page.index("id='card-accuracy'") : page.index("id='card-size'")]
    assert "not real text" in accuracy_card


def test_nothing_timed_says_why_in_the_verdict():
    report = _report()
    report.providers = [report.providers[1]]  # only CUDA, skipped
    line = verdict(report)
    assert line.startswith("not timed: cuda skipped (onnxruntime-gpu is not installed")
    assert "id='card-latency'" in render_html(report)


def test_a_second_eps_warnings_open_its_own_section():
    report = _report()
    second = _report(noisy=True).providers[0]
    second.ep = "cuda"
    report.providers[1] = second
    noisy = f"cuda batch 1: {second.batches[0].ratio.warning}"
    report.warnings = [noisy, "cuda: batch 8 skipped: the model has no symbolic batch axis"]
    page = render_html(report)
    cuda = page[page.index("<h2 id='ep-cuda'>") :]
    assert "no symbolic batch axis" in cuda and f"⚠ {noisy}" not in cuda, "a ratio's warning shows above its plot only"
    assert cuda.count(second.batches[0].ratio.warning) == len(second.batches)
    assert "Other warnings" not in page

"""The CUDA path end to end, on a machine with an NVIDIA GPU, in under 8 minutes: a markdown table.

What it runs, each step in its own process with its own timeout (a step that fails, times
out or cannot run is a row saying so; the script itself does not stop):

0. the tests that run on CUDA when it is there (``pytest tests/test_generation.py -k on_the_gpu``);
1. ``graphopt optimize --target cuda`` then ``graphopt compare --ep cuda`` (IO binding:
   inputs and outputs stay on the GPU, each run synchronized) on the example encoder and
   two exported fixtures, BERT and a Llama decoder with a KV cache;
2. ``--fp16`` (``--target cuda --fp16``) against the float32 original on the example and
   BERT: accuracy and speed;
3. the fusion ablation (``benchmarks/fusion_ablation.py --ep cuda``) for the fusions in
   the ``cuda`` default pipeline, each alone over the cleanup passes;
4. ``--quantize int4 --quantize-outputs`` on the Llama decoder (``MatMulNBits`` at
   accuracy_level 0 on CUDA), as the ``cuda`` default runs it (``merge-matmul-nbits``
   included) and without that pass, each against the float32 original;
5. ``optimize --target cuda`` and ``compare --ep cuda`` on four decoder families' cache
   exports (``FAMILY_MODELS``: GroupQueryAttention with one key/value head, a sliding window,
   no rotary in a layer), for their answers on CUDA's kernels;
6. ``compare --generate --ep cuda`` on the Llama decoder, float and int4, against
   the float original: time to first token and decode tokens/s with the cache kept on the
   GPU between steps, and next-token agreement and greedy continuations.

Before anything it preloads CUDA's libraries (``onnxruntime.preload_dlls()``) and prints
the Python, onnxruntime and onnx versions, the providers, the GPU's name and driver, and
whether a session really runs on CUDA (``optimizer.runtime.cuda_unavailable_reason``);
when it does not, every step is a skipped row and the exit code is 2. The table goes to
stdout and ``OUT/gpu_check.md`` (for docs/benchmarks.md), each comparison's JSON and HTML
beside it. Exit code: 0 when every step ran, 1 when one failed or timed out.

Usage, from the repository root (``benchmarks/gpu_check.sh --prepare`` puts onnxruntime-gpu
and graphopt's dependencies for Python 3.12 in ``.gpu/`` where the registry can be reached;
``benchmarks/gpu_check.sh`` installs them on the GPU machine, sets the path and runs this)::

    PYTHONPATH=$PWD/.gpu/site:$PWD python benchmarks/gpu_check.py [--out build/gpu_check]
    python benchmarks/gpu_check.py --ep cpu --models example --steps compare   # a dry run on the CPU
    python benchmarks/gpu_check.py --plan                                      # print the commands only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# graphopt from this checkout, installed or not (the steps run `python -m optimizer.cli` from ROOT).
sys.path.insert(0, str(ROOT))
MODELS = {
    "example": ROOT / "examples" / "encoder.onnx",
    "bert_legacy": ROOT / "tests" / "fixtures" / "bert_legacy.onnx",
    "llama_kv_legacy": ROOT / "tests" / "fixtures" / "llama_kv_legacy.onnx",
}
# Decoder families whose cache graphs fuse other GroupQueryAttention settings (tests/test_decoder_families.py): one
# key/value head (Falcon), a sliding window of 6 beside a global layer with per-head norms (Gemma 3), a layer without
# rotary (SmolLM3), a packed QKV projection (Phi-3). Compared last: the step a short budget drops first.
FAMILY_MODELS = {
    name: ROOT / "tests" / "fixtures" / f"{name}.onnx"
    for name in ("falcon_kv_legacy", "gemma3_kv_legacy", "smollm3_kv_dynamo", "phi3_kv_legacy")
}
MODELS.update(FAMILY_MODELS)
FP16_MODELS = ("example", "bert_legacy")
ABLATION_MODELS = ("bert_legacy", "llama_kv_legacy")
STEPS = ("tests", "compare", "fp16", "ablation", "int4", "families", "generate")
# compare --generate on these decoders, for these variants (each optimized by an earlier step).
GENERATE_MODELS = ("llama_kv_legacy",)
GENERATE_VARIANTS = ("default", "int4")
GENERATE_PROMPT, GENERATE_TOKENS = 64, 32
INT4_MODELS = ("llama_kv_legacy",)
# int4 variants: the cuda default (merge-matmul-nbits included), and the same without that pass.
INT4_VARIANTS = ("int4", "int4-unmerged")
INT4_FLAGS = ["--quantize", "int4", "--quantize-outputs"]
# The tests that run on CUDA when it is there (the KV cache kept on the device while generating).
CUDA_TESTS = ["tests/test_generation.py", "-k", "on_the_gpu"]
# The whole check must fit a lent GPU's 8 minutes with the machine's start-up around it.
DEFAULT_BUDGET_S = 450.0
OPTIMIZE_TIMEOUT_S = 120.0
COMPARE_TIMEOUT_S = 120.0
ABLATION_TIMEOUT_S = 180.0
# Below this many seconds left, a step is not started: it could not finish.
MIN_STEP_S = 5.0

STATUS_OK, STATUS_FAILED, STATUS_TIMED_OUT, STATUS_SKIPPED = "ok", "failed", "timed out", "skipped"


@dataclass
class StepResult:
    """One step's outcome: ``status`` is ok, failed, timed out or skipped; ``detail`` says what went wrong."""

    name: str
    status: str
    seconds: float = 0.0
    detail: str = ""
    stdout: str = ""


@dataclass
class Step:
    """A command to run, with its own timeout, and the files it should leave."""

    name: str
    command: list[str]
    timeout: float
    produces: list[Path] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)  # names of steps that must have succeeded first
    summary: bool = False  # when it succeeds, its last line of output is the row's detail


class Runner:
    """Runs steps one after another within a total budget; never raises for a step that goes wrong."""

    def __init__(self, budget_s: float, env: dict[str, str], skip_reason: str | None = None) -> None:
        self.deadline = time.monotonic() + budget_s
        self.env, self.skip_reason = env, skip_reason
        self.results: dict[str, StepResult] = {}

    def run(self, step: Step) -> StepResult:
        """Run ``step`` (or skip it, saying why) and record its result."""
        result = self._run(step)
        self.results[step.name] = result
        print(f"[{result.status}] {step.name} ({result.seconds:.0f} s){': ' + result.detail if result.detail else ''}")
        return result

    def _run(self, step: Step) -> StepResult:
        if self.skip_reason is not None:
            return StepResult(step.name, STATUS_SKIPPED, detail=self.skip_reason)
        failed = [name for name in step.needs if self.results.get(name, StepResult(name, "")).status != STATUS_OK]
        if failed:
            return StepResult(step.name, STATUS_SKIPPED, detail=f"needs {failed[0]}, which did not succeed")
        left = self.deadline - time.monotonic()
        if left < MIN_STEP_S:
            return StepResult(step.name, STATUS_SKIPPED, detail="out of the check's time budget")
        timeout = min(step.timeout, left)
        started = time.monotonic()
        try:
            done = subprocess.run(
                step.command, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=ROOT, check=False
            )
        except subprocess.TimeoutExpired:
            return StepResult(
                step.name, STATUS_TIMED_OUT, time.monotonic() - started, f"timed out after {timeout:.0f} s"
            )
        except OSError as error:  # the program itself is missing
            return StepResult(step.name, STATUS_FAILED, time.monotonic() - started, f"could not start: {error}")
        seconds = time.monotonic() - started
        if done.returncode != 0:
            return StepResult(
                step.name, STATUS_FAILED, seconds, f"exit {done.returncode}: {last_line(done.stderr or done.stdout)}"
            )
        missing = [path.name for path in step.produces if not path.exists()]
        if missing:
            return StepResult(step.name, STATUS_FAILED, seconds, f"wrote no {missing[0]}", done.stdout)
        return StepResult(step.name, STATUS_OK, seconds, last_line(done.stdout) if step.summary else "", done.stdout)


def last_line(text: str, limit: int = 200) -> str:
    """The last non-empty line of a process's output (where a one-line error or a traceback's cause is)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    line = lines[-1] if lines else "no output"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def graphopt(*arguments: str) -> list[str]:
    """The command line of ``graphopt`` run with this interpreter."""
    return [sys.executable, "-m", "optimizer.cli", *arguments]


def int4_flags(variant: str) -> list[str]:
    """The flags an int4 variant adds to ``--target cuda`` (the unmerged one lists its pipeline in full)."""
    if variant == "int4":
        return list(INT4_FLAGS)
    from optimizer.registry import all_passes

    passes = [
        s.name
        for s in all_passes()
        if ("cuda" in s.default_for or s.name == "quantize-int4") and s.name != "merge-matmul-nbits"
    ]
    return [*INT4_FLAGS, "--passes", ",".join(passes)]


def _generate_flags() -> list[str]:
    return ["--generate", "--prompt-length", str(GENERATE_PROMPT), "--new-tokens", str(GENERATE_TOKENS)]


def default_cuda_fusions() -> list[str]:
    """The fusions in the ``cuda`` default pipeline, in pipeline order."""
    from optimizer.registry import all_passes

    return [s.name for s in all_passes() if "cuda" in s.default_for and s.name.startswith(("fuse-", "pack-"))]


def plan(args: argparse.Namespace, out: Path) -> list[Step]:
    """The steps the arguments ask for, in the order they run."""
    timing = ["--time-budget", str(args.time_budget), "--iterations", str(args.iterations)]
    timing += ["--threads", str(args.threads)] if args.threads else []
    steps: list[Step] = []

    def optimized(name: str, suffix: str, flags: Sequence[str]) -> Path:
        path = out / f"{name}.{suffix}.onnx"
        steps.append(
            Step(
                f"optimize {name} {suffix}",
                graphopt("optimize", str(MODELS[name]), "-o", str(path), "--target", "cuda", "-q", *flags),
                OPTIMIZE_TIMEOUT_S,
                [path],
            )
        )
        return path

    def compared(name: str, suffix: str, after: Path, generate: bool = False) -> None:
        stem = out / (f"{name}.{suffix}" + (".generate" if generate else ""))
        steps.append(
            Step(
                f"{'generate' if generate else 'compare'} {name} {suffix}",
                graphopt(
                    "compare",
                    str(MODELS[name]),
                    str(after),
                    "--ep",
                    args.ep,
                    "--json",
                    f"{stem}.json",
                    "--html",
                    f"{stem}.html",
                    *timing,
                    *(_generate_flags() if generate else []),
                ),
                COMPARE_TIMEOUT_S,
                [Path(f"{stem}.json")],
                needs=[f"optimize {name} {suffix}"],
            )
        )

    if "tests" in args.steps:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *CUDA_TESTS]
        steps.append(Step("pytest on CUDA", command, COMPARE_TIMEOUT_S, summary=True))
    if "compare" in args.steps:
        for name in (m for m in args.models if m not in FAMILY_MODELS):
            compared(name, "default", optimized(name, "default", []))
    if "fp16" in args.steps:
        for name in (m for m in args.models if m in FP16_MODELS):
            compared(name, "fp16", optimized(name, "fp16", ["--fp16"]))
    if "ablation" in args.steps:
        fusions = ",".join(default_cuda_fusions())
        for name in (m for m in args.models if m in ABLATION_MODELS):
            # fusion_ablation writes its variants beside the model: a copy in OUT keeps the fixtures clean.
            copy = out / "ablation" / f"{name}.onnx"
            ablation_timing = ["--time-budget", str(args.time_budget), "--iterations", str(args.iterations)]
            ablation_timing += ["--threads", str(args.threads or 1)]
            steps.append(
                Step(
                    f"ablation {name}",
                    [sys.executable, str(ROOT / "benchmarks" / "fusion_ablation.py"), str(copy), "--fusions", fusions]
                    + ["--ep", args.ep, *ablation_timing],
                    ABLATION_TIMEOUT_S,
                )
            )
    if "int4" in args.steps:
        for name in (m for m in args.models if m in INT4_MODELS):
            for variant in INT4_VARIANTS:
                compared(name, variant, optimized(name, variant, int4_flags(variant)))
    if "families" in args.steps:
        for name in (m for m in args.models if m in FAMILY_MODELS):
            compared(name, "default", optimized(name, "default", []))
    if "generate" in args.steps:
        made = {step.name for step in steps}
        for name in (m for m in args.models if m in GENERATE_MODELS):
            for variant in GENERATE_VARIANTS:
                flags = int4_flags(variant) if variant in INT4_VARIANTS else []
                after = out / f"{name}.{variant}.onnx"
                if f"optimize {name} {variant}" not in made:
                    after = optimized(name, variant, flags)
                compared(name, variant, after, generate=True)
    return steps


def environment(ep: str) -> tuple[dict[str, str], str | None]:
    """Versions, providers and the GPU, printed first; and why ``ep`` cannot run here (None if it can)."""
    info = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import onnxruntime
    except ImportError as error:
        return info, f"onnxruntime is not importable: {error}"
    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is not None and ep == "cuda":
        # CUDA and cuDNN from the nvidia-* wheels (PyTorch's) are found only once preloaded.
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.suppress(OSError, RuntimeError):
            preload()
        info["preload_dlls"] = last_line(printed.getvalue(), 120) if printed.getvalue().strip() else "done"
    info["onnxruntime"] = f"{onnxruntime.__version__} ({getattr(onnxruntime, '__file__', '?')})"
    info["providers"] = ", ".join(onnxruntime.get_available_providers())
    for distribution in ("onnx", "onnx-ir", "onnxscript", "numpy", "torch"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[distribution] = importlib.metadata.version(distribution)
    info["gpu"] = gpu_name()
    missing = [m for m in ("onnx", "onnx_ir", "onnxscript", "numpy", "rich") if _absent(m)]
    if missing:
        return info, f"graphopt's dependencies are missing: {', '.join(missing)}"
    if ep != "cuda":
        return info, None
    from optimizer.runtime import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    info["cuda session"] = reason or "runs on CUDAExecutionProvider"
    return info, reason


def _absent(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return True
    return False


def gpu_name() -> str:
    """The GPU's name, driver and memory from nvidia-smi, or why there is none."""
    if shutil.which("nvidia-smi") is None:
        return "none (no nvidia-smi)"
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "unknown (nvidia-smi timed out)"
    return last_line(done.stdout) if done.returncode == 0 else f"none (nvidia-smi: {last_line(done.stderr)})"


@dataclass
class CompareRow:
    """One comparison's figures as the table shows them."""

    model: str
    variant: str
    status: str
    before_ms: float | None = None
    after_ms: float | None = None
    ratio: tuple[float, float, float] | None = None
    cosine: float | None = None
    max_abs: float | None = None
    note: str = ""


def _measured(path: Path, result: StepResult | None, ep: str) -> tuple[dict, dict] | str:
    """``graphopt compare``'s JSON and its entry for ``ep``; or why the row has none (the step failed, ep skipped)."""
    if result is None or result.status != STATUS_OK:
        return "not run" if result is None else f"{result.status}: {result.detail}"
    data = json.loads(path.read_text(encoding="utf-8"))
    provider = next((p for p in data["providers"] if p["ep"] == ep), None)
    if provider is None or not provider["available"]:
        return f"skipped: {provider['reason'] if provider else ep + ' not measured'}"
    return data, provider


def compare_row(model: str, variant: str, path: Path, result: StepResult | None, ep: str) -> CompareRow:
    """A table row from ``graphopt compare``'s JSON, or the step's failure."""
    measured = _measured(path, result, ep)
    if isinstance(measured, str):
        return CompareRow(model, variant, measured)
    data, provider = measured
    row = CompareRow(model, variant, STATUS_OK)
    if provider["batches"]:
        first = provider["batches"][0]
        row.before_ms, row.after_ms = first["before"]["median_ms"], first["after"]["median_ms"]
        ratio = first["ratio"]
        row.ratio = (ratio["ratio"], ratio["low"], ratio["high"])
        if not ratio.get("trustworthy", True):
            row.note = ratio.get("warning", "")
    accuracy = provider["accuracy"]
    # The JSON spells NaN and Inf as strings ("nan", "inf"); min() and max() would skip a NaN that is not first.
    cosines = [float(item["cosine"]) for item in accuracy if item.get("cosine") is not None]
    row.cosine = _worst(cosines, min)
    row.max_abs = _worst([float(item["max_abs_error"]) for item in accuracy], max)
    notes = [w for w in data.get("warnings", []) if not w.startswith(f"{ep} batch ")]
    row.note = "; ".join(filter(None, [row.note, *notes]))
    return row


@dataclass
class GenerateRow:
    """One ``compare --generate`` as the table shows it: time to first token, decode tokens/s, agreement."""

    model: str
    variant: str
    status: str
    ttft_ms: tuple[float, float] | None = None  # before, after (medians)
    ttft_ratio: tuple[float, float, float] | None = None
    tokens_per_s: tuple[float, float] | None = None
    tokens_ratio: tuple[float, float, float] | None = None
    top1: float | None = None
    exact_match: float | None = None


def generate_row(model: str, variant: str, path: Path, result: StepResult | None, ep: str) -> GenerateRow:
    """A table row from ``graphopt compare --generate``'s JSON, or the step's failure."""
    measured = _measured(path, result, ep)
    if isinstance(measured, str):
        return GenerateRow(model, variant, measured)
    provider = measured[1]
    if not provider.get("generation"):
        return GenerateRow(model, variant, f"skipped: no {ep} generation measured")
    first = provider["generation"][0]
    row = GenerateRow(model, variant, STATUS_OK)
    row.ttft_ms = (first["ttft_before"]["median_ms"], first["ttft_after"]["median_ms"])
    row.ttft_ratio = tuple(first["ttft_ratio"][k] for k in ("ratio", "low", "high"))
    row.tokens_per_s = (first["tokens_per_s_before"], first["tokens_per_s_after"])
    row.tokens_ratio = tuple(first["tokens_per_s_ratio"][k] for k in ("ratio", "low", "high"))
    accuracy = provider.get("llm_accuracy") or {}
    row.top1, row.exact_match = accuracy.get("top1_agreement"), accuracy.get("exact_match")
    return row


def ablation_rows(
    model: str, result: StepResult | None, folder: Path | None = None, fusions: Sequence[str] = ()
) -> list[tuple[str, str, str]]:
    """(model, fusion, ratio or what happened) rows from fusion_ablation's JSON line.

    fusion_ablation prints its line only when a model is done; a run cut short by its
    timeout still left each finished fusion's variant and comparison JSON in ``folder``,
    and those fusions are reported from there.
    """
    if result is not None and result.status == STATUS_OK:
        rows = []
        for line in result.stdout.splitlines():
            if not line.startswith("{"):
                continue
            for fusion, value in json.loads(line)["ratio_vs_cleanup"].items():
                shown = value if isinstance(value, str) else _ci(value)
                rows.append((model, fusion, shown))
        return rows or [(model, "—", "no result line")]
    why = "not run" if result is None else f"{result.status}: {result.detail}"
    rows = [(model, fusion, shown) for fusion in fusions if (shown := _finished(folder, model, fusion))]
    return rows + [(model, "others" if rows else "—", why)]


def _finished(folder: Path | None, model: str, fusion: str) -> str:
    """What fusion_ablation left for one fusion before it was stopped ('' if nothing usable)."""
    if folder is None:
        return ""
    variant, comparison = folder / f"{model}.{fusion}.onnx", folder / f"{model}.{fusion}.json"
    if comparison.exists():
        with contextlib.suppress(ValueError, KeyError, IndexError):
            ratio = json.loads(comparison.read_text(encoding="utf-8"))["providers"][0]["batches"][0]["ratio"]
            return _ci((ratio["ratio"], ratio["low"], ratio["high"]))
    cleanup = folder / f"{model}.cleanup.onnx"
    if variant.exists() and cleanup.exists() and variant.read_bytes() == cleanup.read_bytes():
        return "no change"
    return ""


def render_markdown(
    info: dict[str, str],
    ep: str,
    compares: Sequence[CompareRow],
    ablations: Sequence[tuple[str, str, str]],
    steps: Sequence[StepResult],
    command: str,
    generations: Sequence[GenerateRow] = (),
) -> str:
    """The check as markdown: where it ran, the comparisons, the ablation, and every step's status."""
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f"### CUDA check ({today}, `{command}`)",
        "",
        f"EP `{ep}`; GPU: {info.get('gpu', '?')}; onnxruntime {info.get('onnxruntime', '?')}; "
        f"providers: {info.get('providers', '?')}; Python {info.get('python', '?')}"
        + (f"; CUDA session: {info['cuda session']}" if "cuda session" in info else "")
        + (f"; **cannot run here: {info['cannot run']}**" if "cannot run" in info else ""),
        "",
    ]
    if compares:
        lines += [
            "| model | pipeline | BEFORE ms | AFTER ms | AFTER/BEFORE [95% CI] | min cosine | max abs | note |",
            "| --- | --- | ---: | ---: | --- | ---: | ---: | --- |",
        ]
        for row in compares:
            if row.status != STATUS_OK:
                lines.append(f"| {row.model} | {row.variant} | — | — | {_cell(row.status)} | — | — | |")
                continue
            lines.append(
                f"| {row.model} | {row.variant} | {_num(row.before_ms, '.3f')} | {_num(row.after_ms, '.3f')} | "
                f"{_ci(row.ratio)} | {_cosine(row.cosine)} | {_num(row.max_abs, '.2e')} | {_cell(row.note)} |"
            )
        lines.append("")
    if generations:
        lines += [
            f"Generation on `{ep}` (`compare --generate`: prompt {GENERATE_PROMPT} tokens, {GENERATE_TOKENS} decode "
            "steps, batch 1; "
            "AFTER/BEFORE of time to first token, and of decode tokens/s where higher is faster; "
            "agreement on random token ids):",
            "",
            "| model | pipeline | TTFT ms before → after | TTFT AFTER/BEFORE | tokens/s before → after "
            "| tokens/s AFTER/BEFORE | top-1 | continuations equal |",
            "| --- | --- | --- | --- | --- | --- | ---: | ---: |",
        ]
        for row in generations:
            if row.status != STATUS_OK:
                lines.append(f"| {row.model} | {row.variant} | — | {_cell(row.status)} | — | — | — | — |")
                continue
            lines.append(
                f"| {row.model} | {row.variant} | {row.ttft_ms[0]:.3f} → {row.ttft_ms[1]:.3f} | "
                f"{_ci(row.ttft_ratio)} | "
                f"{row.tokens_per_s[0]:.0f} → {row.tokens_per_s[1]:.0f} | {_ci(row.tokens_ratio)} | "
                f"{_num(row.top1, '.4f')} | {_num(row.exact_match, '.3f')} |"
            )
        lines.append("")
    if ablations:
        lines += [
            f"Fusion ablation on `{ep}` (each default fusion alone over the cleanup passes; "
            "AFTER/BEFORE = fused / cleanup only):",
            "",
            "| model | fusion | AFTER/BEFORE [95% CI] |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {model} | {fusion} | {_cell(value)} |" for model, fusion, value in ablations]
        lines.append("")
    lines += ["| step | status | seconds | detail |", "| --- | --- | ---: | --- |"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {_cell(s.detail)} |" for s in steps]
    return "\n".join(lines) + "\n"


def _ci(value: Sequence[float] | None) -> str:
    """A ratio and its interval: ``0.537 [0.532–0.544]``."""
    return "—" if value is None else f"{value[0]:.3f} [{value[1]:.3f}–{value[2]:.3f}]"


def _worst(values: list[float], pick: Callable[[list[float]], float]) -> float | None:
    """``pick(values)``, NaN if any value is NaN, None if there are none."""
    if not values:
        return None
    return math.nan if any(math.isnan(value) for value in values) else pick(values)


def _cosine(value: float | None) -> str:
    """Enough digits to tell the cosine from 1 (0.99999962, not 1.000000)."""
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    gap = 1.0 - value
    digits = 6 if gap <= 0 else min(10, max(6, round(-math.log10(gap)) + 2))
    return f"{value:.{digits}f}"


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; unknown model or step names are refused by argparse in one line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ep", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of the same steps")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "gpu_check", help="folder for models and tables")
    parser.add_argument("--models", type=_names(MODELS), default=list(MODELS), help="comma-separated; default: all")
    parser.add_argument("--steps", type=_names(STEPS), default=list(STEPS), help=f"{','.join(STEPS)} (default)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole check")
    parser.add_argument("--time-budget", type=float, default=8.0, help="compare's --time-budget per comparison")
    parser.add_argument("--iterations", type=int, default=200, help="compare's --iterations (interleaved pairs)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: ORT's; the ablation uses 1)")
    parser.add_argument("--plan", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    if args.budget <= 0 or args.time_budget <= 0 or args.iterations < 1:
        parser.error("--budget, --time-budget and --iterations must be positive")
    return args


def _names(allowed: Sequence[str]):
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{unknown[0] if unknown else text!r}: choose from {', '.join(allowed)}")
        return names

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; 0 when every step ran, 1 when one failed or timed out, 2 when the EP cannot run here."""
    args = parse_args(argv)
    out = args.out.resolve()
    steps = plan(args, out)
    if args.plan:
        for step in steps:
            print(f"{step.name} (timeout {step.timeout:.0f} s): {' '.join(step.command)}")
        return 0
    info, reason = environment(args.ep)
    for key, value in info.items():
        print(f"{key}: {value}")
    if reason:
        info["cannot run"] = reason
        print(f"{args.ep} cannot run here: {reason}")
    out.mkdir(parents=True, exist_ok=True)
    if "ablation" in args.steps:
        (out / "ablation").mkdir(exist_ok=True)
        for name in (m for m in args.models if m in ABLATION_MODELS):
            shutil.copyfile(MODELS[name], out / "ablation" / f"{name}.onnx")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH", ""), str(ROOT)]))
    runner = Runner(args.budget, env, f"{args.ep} cannot run here (see above the tables)" if reason else None)
    for step in steps:
        runner.run(step)
    results = runner.results
    compares = [
        compare_row(model, variant, out / f"{model}.{variant}.json", results.get(f"compare {model} {variant}"), args.ep)
        for variant, models, step in (
            ("default", [m for m in args.models if m not in FAMILY_MODELS], "compare"),
            ("fp16", [m for m in args.models if m in FP16_MODELS], "fp16"),
            *((variant, [m for m in args.models if m in INT4_MODELS], "int4") for variant in INT4_VARIANTS),
            ("default", [m for m in args.models if m in FAMILY_MODELS], "families"),
        )
        if step in args.steps
        for model in models
    ]
    ablations = [
        row
        for model in args.models
        if model in ABLATION_MODELS and "ablation" in args.steps
        for row in ablation_rows(model, results.get(f"ablation {model}"), out / "ablation", default_cuda_fusions())
    ]
    generations = [
        generate_row(
            model,
            variant,
            out / f"{model}.{variant}.generate.json",
            results.get(f"generate {model} {variant}"),
            args.ep,
        )
        for model in args.models
        if model in GENERATE_MODELS and "generate" in args.steps
        for variant in GENERATE_VARIANTS
    ]
    command = " ".join(["python benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    table = render_markdown(info, args.ep, compares, ablations, list(results.values()), command, generations)
    (out / "gpu_check.md").write_text(table, encoding="utf-8")
    print()
    print(table)
    print(f"wrote {out / 'gpu_check.md'}")
    if reason:
        return 2
    return 1 if any(r.status in (STATUS_FAILED, STATUS_TIMED_OUT) for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

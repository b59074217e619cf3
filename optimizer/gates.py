"""Checks that end a run with a non-zero exit code, for CI: ``--strict``, ``--max-ratio``, ``--min-cosine``.

Each check returns the lines that say what failed (empty when it passed); the CLI
prints them and exits with the code of ``optimizer.exit_codes``. A gate that has
nothing to judge (every execution provider skipped, no output compared) fails, and so
does each execution provider the comparison was asked for and skipped (``--ep
cuda,cpu`` without a GPU), and for ``--max-ratio`` each ``--batch`` skipped: a CI job must not pass on a
measurement that did not happen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from optimizer.accuracy import cosine_text, share_text
from optimizer.compare.comparison import NOT_COMPARED, ComparisonReport
from optimizer.compare.stats import MIN_PAIRS
from optimizer.options import Options
from optimizer.registry import resolve
from optimizer.report import STATUS_FAILED, STATUS_ROLLED_BACK, STATUS_UNCHANGED, PipelineReport


def requested_passes(names: Iterable[str] | None, options: Options) -> set[str]:
    """The passes the user asked for: named in ``--passes`` (``+NAME`` too; ``-NAME`` leaves one out), or added by an
    option's flag."""
    asked = {
        name.strip().removeprefix("+") for name in names or () if name.strip() and not name.strip().startswith("-")
    }
    for spec in resolve(list(names) if names is not None else None, options):
        if spec.requested_by is not None and spec.requested_by.asked(options):
            asked.add(spec.name)
    return asked


def strict_failures(report: PipelineReport, requested: set[str]) -> list[str]:
    """``--strict``: each pass in ``requested`` that was rolled back or failed, or changed nothing
    (an int8 budget no layer could meet leaves the model float: asked for, not done), with the reason."""
    lines = []
    for record in report.passes:
        if record.name not in requested:
            continue
        if record.status in (STATUS_ROLLED_BACK, STATUS_FAILED):
            lines.append(f"--strict: {record.name}, asked for, {record.status}: {record.detail}")
        elif record.status == STATUS_UNCHANGED:
            why = record.detail or next(iter([*record.refusals, *record.notes]), "nothing in the model it applies to")
            lines.append(f"--strict: {record.name}, asked for, changed nothing: {why}")
    return lines


def slower_failures(report: ComparisonReport, max_ratio: float) -> list[str]:
    """``--max-ratio R``: each measurement whose AFTER/BEFORE latency ratio's interval reaches above R, or that
    rests on fewer than ``MIN_PAIRS`` timed pairs (whose interval means little: one pair gives a zero-width
    one). Noise widens the interval, and its upper end is what is judged. A ``--batch`` the comparison skipped
    (``ProviderResult.skipped_batches``) fails too, as a skipped execution provider does.

    One-run timing uses the latency ratio; ``--generate`` uses time to first token and
    the decode step time (the inverse of the tokens/s ratio, whose low end bounds it).
    """
    failures, measured = [], 0
    for provider in report.providers:
        if not provider.available:
            continue
        for batch in provider.batches:
            measured += 1
            high = batch.ratio.high
            if batch.after.runs < MIN_PAIRS:
                failures.append(
                    f"--max-ratio {max_ratio:.12g}: {provider.ep} batch {batch.batch}: {batch.after.runs} timed "
                    f"pair{'s' if batch.after.runs != 1 else ''}, too few to judge (at least {MIN_PAIRS}): give more "
                    "--time-budget or --iterations"
                )
            elif high > max_ratio:
                failures.append(
                    f"--max-ratio {max_ratio:.12g}: {provider.ep} batch {batch.batch}: AFTER takes "
                    f"{batch.ratio.ratio:.2f}x BEFORE's time (95 % interval up to {_above(high, max_ratio)}x)"
                )
        for timed in provider.generation:
            measured += 1
            figures = (
                ("time to first token", timed.ttft_ratio.ratio, timed.ttft_ratio.high),
                ("decode step time", _inverse(timed.tokens_per_s_ratio.ratio), _inverse(timed.tokens_per_s_ratio.low)),
            )
            runs = min(timed.ttft_after.runs, timed.decode_after.runs)
            if runs < MIN_PAIRS:
                failures.append(
                    f"--max-ratio {max_ratio:.12g}: {provider.ep} generation batch {timed.batch}: {runs} timed "
                    f"generation{'s' if runs != 1 else ''}, too few to judge (at least {MIN_PAIRS}): give more "
                    "--time-budget or --iterations"
                )
            for figure, ratio, high in figures if runs >= MIN_PAIRS else ():
                if high > max_ratio:
                    failures.append(
                        f"--max-ratio {max_ratio:.12g}: {provider.ep} generation batch {timed.batch}, {figure}: "
                        f"AFTER {ratio:.2f}x BEFORE (95 % interval up to {_above(high, max_ratio)}x)"
                    )
    gate = f"--max-ratio {max_ratio:.12g}"
    # A --batch asked for and skipped (BEFORE refuses its rows tiled to it) is no measurement that passed: the gate
    # judged the other batches alone, or a batch not asked for timed in its place, and exited 0.
    skipped = [
        f"{gate}: {provider.ep} batch {batch.batch} was skipped ({batch.reason}): its latency is not judged; drop it "
        "from --batch to gate on the others"
        for provider in report.providers
        if provider.available
        for batch in getattr(provider, "skipped_batches", ())
    ]
    if not measured:
        return [f"{gate}: no latency was measured (every execution provider was skipped{_why(report)})"]
    return skipped_failures(report, gate, "latency") + skipped + failures


def _above(value: float, limit: float) -> str:
    """``value``, which is above ``limit``, with the decimals that show it is: an interval up to 1.0018 failed
    ``--max-ratio 1`` as "up to 1.00x", which read as a pass."""
    for digits in range(2, 10):
        if float(text := f"{value:.{digits}f}") > limit:
            return text
    return repr(value)


def skipped_failures(report: ComparisonReport, gate: str, judged: str) -> list[str]:
    """One line per execution provider the comparison was asked for and skipped: the gate did not judge it."""
    return [
        f"{gate}: {provider.ep} was skipped ({provider.reason}): its {judged} is not judged; "
        f"drop it from --ep to gate on the others"
        for provider in report.providers
        if not provider.available
    ]


def _why(report: ComparisonReport) -> str:
    """ ": cpu: REASON; cuda: REASON" for the skipped execution providers, so that the gate's line says why."""
    reasons = "; ".join(f"{p.ep}: {p.reason}" for p in report.providers if not p.available and p.reason)
    return f": {reasons}" if reasons else ""


def _inverse(ratio: float) -> float:
    return 1.0 / ratio if ratio > 0 else math.inf


def _allowed(min_cosine: float) -> float:
    """The relative error a cosine of ``min_cosine`` allows a vector (cosine ~ 1 - r^2 / 2)."""
    return math.sqrt(2.0 * max(0.0, 1.0 - min_cosine))


def accuracy_failures(report: ComparisonReport, min_cosine: float, flag: str = "--min-cosine") -> list[str]:
    """``--min-cosine X``: each float output of AFTER whose cosine similarity to BEFORE's is below X.

    Outputs that are not float (token ids, masks) have no cosine; they must be equal in value
    instead (an int64 output that became int32 with the same values is no difference: the report
    says "equal in value"), and so must an ``ArgMax``'s ids cast to float (their agreement is reported). An
    output whose error is infinite (NaN or Inf where BEFORE has a number) fails whatever its cosine, which is taken
    over the values both left finite;
    so does an output ``compare`` could not compare (another shape or kind in AFTER). A float
    output of one value has no cosine; its relative error may be at most ``sqrt(2 (1 - X))``,
    what a cosine of X allows a vector, and a float output's norm may differ from BEFORE's by as
    much relatively (a cosine does not see an output scaled by 2).
    ``flag`` names the gate as the user gave it (``--compare-min-cosine`` on ``optimize``).
    """
    gate = f"{flag} {min_cosine:.12g}"  # as given: 0.99999999 is not 1
    # compare() records an output it left out of the accuracy only as this warning.
    failures = [f"{gate}: {w}" for w in report.warnings if w.endswith(NOT_COMPARED)]
    measured = 0
    for provider in report.providers:
        for output in provider.accuracy if provider.available else ():
            measured += 1
            floating = output.dtype.startswith(("float", "bfloat"))
            if floating and not math.isfinite(output.max_abs_error):
                failures.append(
                    f"{gate}: {provider.ep}: output '{output.name}' differs without bound "
                    "(NaN or Inf where the other has a number, or another NaN or Inf)"
                )
            elif output.cosine is None and floating and not output.exact and output.agreement is None:
                # One number has no cosine (it is +-1): its relative error is held to what the cosine allows
                # a vector (cosine ~ 1 - r^2 / 2 for a relative RMS error r).
                allowed = _allowed(min_cosine)
                if not output.max_rel_error <= allowed:
                    failures.append(
                        f"{gate}: {provider.ep}: output '{output.name}' is one value (no cosine): relative error "
                        f"{output.max_rel_error:.3g} is above the {allowed:.3g} a cosine of {min_cosine:.12g} allows"
                    )
            elif output.cosine is None:
                if not output.exact and not output.max_abs_error == 0:
                    # How many of its values differ, which a classifier's labels are judged by.
                    agreement = getattr(output, "agreement", None)
                    agreed = f" (agreement {share_text(agreement)})" if agreement is not None else ""
                    failures.append(
                        f"{gate}: {provider.ep}: output '{output.name}' ({output.dtype}) "
                        f"differs and has no cosine similarity{agreed}"
                    )
            elif not output.cosine >= min_cosine:  # NaN fails too
                failures.append(
                    f"{gate}: {provider.ep}: output '{output.name}' has cosine {cosine_text(output.cosine, 6)}"
                )
            elif (ratio := getattr(output, "norm_ratio", None)) is not None and not abs(ratio - 1) <= _allowed(
                min_cosine
            ):
                # A cosine does not see scale: an output doubled has cosine 1. Its norm is held to the relative
                # error the cosine allows a vector, as one value is.
                failures.append(
                    f"{gate}: {provider.ep}: output '{output.name}' is scaled: its norm is {ratio:.6g} "
                    f"times BEFORE's, beyond the {_allowed(min_cosine):.3g} a cosine of {min_cosine:.12g} allows"
                )
        llm = getattr(provider, "llm_accuracy", None) if provider.available else None
        if llm is not None and not llm.logits_cosine >= min_cosine:
            # With --generate the one run above is a step over a cache; the teacher-forced text starts from an
            # empty one, so a model wrong only at the prefill shows here.
            failures.append(
                f"{gate}: {provider.ep}: the teacher-forced logits ({llm.scored_tokens} tokens of {llm.text}) have "
                f"cosine {cosine_text(llm.logits_cosine, 6)}"
            )
        if llm is not None and not getattr(llm, "decode_logits_cosine", 1.0) >= min_cosine:
            # ... and a model wrong only at generation's one-token steps over its own cache, here.
            failures.append(
                f"{gate}: {provider.ep}: the greedy decode steps' logits ({llm.prompts} prompts, "
                f"{llm.continuation_tokens} tokens, AFTER fed BEFORE's tokens) have cosine "
                f"{cosine_text(llm.decode_logits_cosine, 6)}"
            )
    if not measured and not failures:
        return [f"{gate}: no accuracy was measured (every execution provider was skipped{_why(report)})"]
    return (skipped_failures(report, gate, "accuracy") if measured else []) + failures


def worst_sample_failures(report: ComparisonReport, min_cosine: float, flag: str = "--min-worst-cosine") -> list[str]:
    """``--min-worst-cosine X``: what ``--min-cosine X`` refuses (``accuracy_failures``), and each float output one
    of whose samples (a row along axis 0, over every batch compared) has a cosine similarity below X to BEFORE's,
    each sample's cosine held to ``1 - (q - 1)**2 / 2`` of its norm ratio ``q`` too (one sample scaled by 2 has
    cosine 1, and the whole output's norm barely moves).

    A cosine over all of an output's values is a norm-weighted mean of its samples': one sentence
    of 128 far off barely moves it. An output of one value per sample has no per-sample cosine
    and is held as ``--min-cosine`` holds it.
    """
    failures = accuracy_failures(report, min_cosine, flag)
    gate = f"{flag} {min_cosine:.12g}"
    for provider in report.providers:
        for output in provider.accuracy if provider.available else ():
            worst = output.worst_sample_cosine
            # Where the cosine over all values already failed, its line says so.
            if (
                worst is not None
                and not worst >= min_cosine
                and output.cosine is not None
                and output.cosine >= min_cosine
            ):
                failures.append(
                    f"{gate}: {provider.ep}: output '{output.name}' has a sample at cosine {cosine_text(worst, 6)} "
                    f"(held to its norm ratio too; over all its values {cosine_text(output.cosine, 6)})"
                )
        llm = getattr(provider, "llm_accuracy", None) if provider.available else None
        if llm is not None and llm.logits_cosine >= min_cosine and not llm.logits_worst_cosine >= min_cosine:
            failures.append(
                f"{gate}: {provider.ep}: the teacher-forced logits of one sequence of {llm.text} have cosine "
                f"{cosine_text(llm.logits_worst_cosine, 6)} (over all {llm.scored_tokens} tokens "
                f"{cosine_text(llm.logits_cosine, 6)})"
            )
        decode, worst = getattr(llm, "decode_logits_cosine", 1.0), getattr(llm, "decode_logits_worst_cosine", 1.0)
        if llm is not None and decode >= min_cosine and not worst >= min_cosine:
            failures.append(
                f"{gate}: {provider.ep}: the greedy decode steps' logits of one prompt have cosine "
                f"{cosine_text(worst, 6)} (over all {llm.prompts} prompts {cosine_text(decode, 6)})"
            )
    return failures

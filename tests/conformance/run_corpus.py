"""Run graphopt's default pipeline over the ONNX backend corpus and classify every case.

Three runs, each answering its own question:

* ``VERIFIED`` (the default): the pipeline as a user with data runs it, verification on
  and the case's own inputs. No case may come out wrong; which passes verification
  rolled back, case by case, is compared with the pin in ``expected_rollbacks.json``.
* ``PASSES_ALONE``: ``verify=False``, the way other optimizers are measured. The
  verifier cannot hide a broken pass here: every case's outputs after the passes must
  still match the expected outputs. A regression is bisected to the pass that caused it.
  Given the ``VERIFIED`` run of the same cases (``verified=``), it runs again only where
  that run rolled a pass back, saw one fail, refused or crashed, and every
  ``REUSE_SPOT_CHECK``-th of the others: elsewhere verification kept every pass, so the
  passes ran on the same models as without it and wrote the model that run checked
  (each spot check must write it byte for byte).
* ``GENERATED``: default flags and no inputs, so graphopt must generate verification
  inputs ONNX Runtime accepts; counts the models it refuses (with their reasons).
  Only the inputs are at stake, so it runs no passes.

Usable as a script (``python -m tests.conformance.run_corpus [--mode MODE] [--pin]``:
prints the counts; ``--pin`` rewrites ``expected_rollbacks.json`` from a verified run)
and from ``test_onnx_backend.py``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from optimizer.api import optimize_with_report
from optimizer.errors import GraphoptError
from optimizer.registry import default_pass_names
from optimizer.report import STATUS_FAILED, STATUS_ROLLED_BACK
from optimizer.runtime import import_onnxruntime
from tests.conformance.onnx_corpus import (
    CorpusCase,
    classify_failure,
    iter_corpus_cases,
    one_line,
    outputs_match,
    run_with_ort,
)

VERIFIED = "verified"
PASSES_ALONE = "passes alone"
GENERATED = "generated inputs"
MODES = (VERIFIED, PASSES_ALONE, GENERATED)

EXPECTED_ROLLBACKS = Path(__file__).with_name("expected_rollbacks.json")
# A passes-alone run given the verified one runs every this-many-th case it could reuse, and must write its model.
REUSE_SPOT_CHECK = 10


@dataclass
class CorpusResult:
    """Counts per outcome, and the cases behind the outcomes that must stay empty (or pinned)."""

    mode: str = VERIFIED
    total: int = 0
    out_of_scope: collections.Counter = field(default_factory=collections.Counter)
    ort_disagrees_with_reference: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    optimized: int = 0
    changed: int = 0
    # case -> {pass name: "rolled back: why" / "failed: why"}
    rollbacks: dict[str, dict[str, str]] = field(default_factory=dict)
    wrong_answers: dict[str, str] = field(default_factory=dict)
    crashes: dict[str, str] = field(default_factory=dict)
    # case -> (changed, sha256 of the optimized model) where every pass was applied or left it unchanged
    kept_every_pass: dict[str, tuple[bool, str]] = field(default_factory=dict)
    reused: int = 0  # passes alone: cases counted from the verified run instead of run again
    seconds: float = 0.0

    @property
    def rolled_back(self) -> collections.Counter:
        """How many cases each pass was rolled back (or failed) on."""
        return collections.Counter(name for passes in self.rollbacks.values() for name in passes)

    def summary(self) -> str:
        """A human-readable report of the run."""
        in_scope = self.total - sum(self.out_of_scope.values())
        lines = [
            f"{self.mode}: {self.total} cases in {self.seconds:.0f} s",
            f"  out of scope (ONNX Runtime cannot run the original): {sum(self.out_of_scope.values())}",
            *[f"    {reason}: {count}" for reason, count in self.out_of_scope.most_common()],
            "  ONNX Runtime disagrees with the reference outputs (compared with ORT's own instead): "
            f"{len(self.ort_disagrees_with_reference)}",
        ]
        if self.mode == GENERATED:
            lines.append(f"  refused (no verification inputs it can generate): {len(self.refused)} of {in_scope}")
            lines += [f"    {reason}: {count}" for reason, count in refusal_kinds(self.refused).most_common()]
            lines += [f"    {name}: {reason}" for name, reason in sorted(self.refused.items())[:20]]
            lines.append(f"  accepted: {self.optimized}")
            return "\n".join(lines)
        lines.append(f"  refused by graphopt with a one-line reason: {len(self.refused)}")
        lines += [f"    {name}: {reason}" for name, reason in sorted(self.refused.items())[:20]]
        verb = "verified" if self.mode == VERIFIED else "checked"
        lines.append(f"  optimized and {verb}: {self.optimized} ({self.changed} changed)")
        if self.reused:
            lines.append(f"    of which taken from the verified run (every pass kept there): {self.reused}")
        if self.mode == VERIFIED:
            lines.append(f"  passes rolled back by verification: {dict(self.rolled_back)}")
            lines += [
                f"    {case}: {name} {why}"
                for case, passes in sorted(self.rollbacks.items())
                for name, why in passes.items()
            ]
            lines.append(f"  wrong answers: {len(self.wrong_answers)}")
        else:
            lines.append(f"  regressions (outputs no longer match): {len(self.wrong_answers)}")
        lines += [f"    {name}: {problem}" for name, problem in sorted(self.wrong_answers.items())]
        lines.append(f"  crashes: {len(self.crashes)}")
        lines += [f"    {name}: {problem}" for name, problem in sorted(self.crashes.items())]
        return "\n".join(lines)


def refusal_kinds(refused: dict[str, str]) -> collections.Counter:
    """Refusal messages grouped by what they say, with input names and ORT's details left out."""
    kinds: collections.Counter = collections.Counter()
    for reason in refused.values():
        kind = reason.split(":", 1)[0] if reason.startswith("ONNX Runtime") else reason.split("(", 1)[0]
        kinds[" ".join(word if "'" not in word else "'…'" for word in kind.split())[:90]] += 1
    return kinds


def run_corpus(
    cases: list[CorpusCase] | None = None, mode: str = VERIFIED, *, verified: CorpusResult | None = None
) -> CorpusResult:
    """Classify every case in ``mode``: out of scope, refused, or optimized (and checked against the reference).

    ``verified`` (``PASSES_ALONE`` only): the ``VERIFIED`` run of the same cases, whose cases with every pass kept
    are counted as it counted them, but for every ``REUSE_SPOT_CHECK``-th, which runs and must write the same model.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    if verified is not None and (mode != PASSES_ALONE or verified.mode != VERIFIED):
        raise ValueError("verified= is a verified run, for a passes-alone run")
    import_onnxruntime().set_default_logger_severity(4)  # out-of-scope cases make ORT log errors we expect
    quiet = [logging.getLogger(name) for name in ("optimizer", "onnxscript")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        return _run_cases(cases, mode, verified)
    finally:  # the rest of a test session logs as before
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def _original_outputs(case: CorpusCase) -> list[dict[str, Any]] | str:
    """What ONNX Runtime gives on each of ``case``'s input sets, or why it cannot run the case (out of scope)."""
    try:
        return [run_with_ort(case.model, inputs) for inputs in case.inputs]
    except Exception as error:  # ORT's many exception types: the case is out of scope
        return classify_failure(case.model, error)


@functools.lru_cache(maxsize=1)
def _whole_corpus() -> tuple[tuple[CorpusCase, list[dict[str, Any]] | str], ...]:
    """Every case with its original outputs, read and run once for the three runs of one process (about 15 s
    of the corpus's 2.5 minutes was reading and running the originals, three times over)."""
    return tuple((case, _original_outputs(case)) for case in iter_corpus_cases())


def _run_cases(cases: list[CorpusCase] | None, mode: str, verified: CorpusResult | None = None) -> CorpusResult:
    started = time.perf_counter()
    result = CorpusResult(mode=mode)
    reusable = verified.kept_every_pass if verified is not None else {}
    seen = 0
    prepared = _whole_corpus() if cases is None else ((case, _original_outputs(case)) for case in cases)
    for case, original in prepared:
        result.total += 1
        if isinstance(original, str):
            result.out_of_scope[original] += 1
            continue
        reference = case.expected
        if any(outputs_match(got, want, case.rtol, case.atol) for got, want in zip(original, case.expected)):
            result.ort_disagrees_with_reference.append(case.name)
            reference = original
        if mode == GENERATED:
            _generate_inputs(case, result)
            continue
        if case.name in reusable:
            seen += 1
            if seen % REUSE_SPOT_CHECK:
                result.reused += 1
                result.optimized += 1
                result.changed += reusable[case.name][0]
                continue
        _optimize_and_check(case, reference, result, verify=mode == VERIFIED)
        if case.name in reusable and result.kept_every_pass.get(case.name) != reusable[case.name]:
            result.wrong_answers.setdefault(
                case.name,
                "the passes alone wrote another model than the verified run, which kept every pass: its cases "
                "cannot stand in for a passes-alone run",
            )
    result.seconds = time.perf_counter() - started
    return result


def _generate_inputs(case: CorpusCase, result: CorpusResult) -> None:
    """What ``graphopt optimize MODEL`` does with default flags before its first pass: generate
    inputs, then run the original on them (``passes=[]`` stops it there)."""
    try:
        optimize_with_report(case.model, passes=[])
    except GraphoptError as error:
        result.refused[case.name] = str(error)
        return
    except Exception as error:  # noqa: BLE001 - a crash is what this harness exists to find
        result.crashes[case.name] = f"{type(error).__name__}: {one_line(error)}"
        return
    result.optimized += 1


def _optimize_and_check(
    case: CorpusCase, reference: list[dict[str, Any]], result: CorpusResult, *, verify: bool
) -> None:
    # Sequence, optional and map inputs cannot be handed to the verifier: those cases run unverified.
    verify = verify and all(isinstance(value, np.ndarray) for value in case.inputs[0].values())
    try:
        optimized, report = _optimize(case.model, verify=verify, inputs=case.inputs[0])
    except GraphoptError as error:
        result.refused[case.name] = str(error)
        return
    except Exception as error:  # noqa: BLE001 - a crash is what this harness exists to find
        result.crashes[case.name] = f"{type(error).__name__}: {error}"
        return
    for record in report.passes:
        if record.status in (STATUS_FAILED, STATUS_ROLLED_BACK):
            result.rollbacks.setdefault(case.name, {})[record.name] = f"{record.status}: {record.detail}"
        if record.status == STATUS_FAILED:
            result.crashes[case.name] = f"{record.name}: {record.detail}"
    result.optimized += 1
    written = optimized.SerializeToString()
    changed = written != case.model.SerializeToString()
    result.changed += changed
    # An unchanged model gives what the original gave, which ``_run_cases`` compared with the reference already.
    problem = _check(case, optimized, reference) if changed else None
    if problem is None:
        if case.name not in result.rollbacks:
            result.kept_every_pass[case.name] = (changed, hashlib.sha256(written).hexdigest())
        return
    if not verify:
        problem = f"{_first_breaking_pass(case, reference)}: {problem}"
    if problem.split(": ", 1)[-1].startswith("ONNX Runtime cannot run"):
        result.crashes[case.name] = problem
    else:
        result.wrong_answers[case.name] = problem


def _optimize(model: onnx.ModelProto, *, verify: bool, inputs: dict[str, Any], passes: list[str] | None = None):
    if verify:
        return optimize_with_report(model, passes, inputs=inputs)
    return optimize_with_report(model, passes, verify=False)


def _check(case: CorpusCase, optimized: onnx.ModelProto, reference: list[dict[str, Any]]) -> str | None:
    """None if ``optimized`` reproduces ``reference`` on every data set, else what differs."""
    for inputs, want in zip(case.inputs, reference):
        try:
            got = run_with_ort(optimized, inputs)
        except Exception as error:  # noqa: BLE001
            return f"ONNX Runtime cannot run the optimized model: {one_line(error)}"
        problem = outputs_match(got, want, case.rtol, case.atol)
        if problem:
            return problem
    return None


def _first_breaking_pass(case: CorpusCase, reference: list[dict[str, Any]]) -> str:
    """The first pass of the default pipeline whose prefix, run unverified, no longer reproduces ``reference``."""
    names = default_pass_names()
    for end in range(1, len(names) + 1):
        optimized, _ = _optimize(case.model, verify=False, inputs={}, passes=names[:end])
        if _check(case, optimized, reference) is not None:
            return names[end - 1]
    return "the pipeline"


# ---------------------------------------------------------------------------
# The pinned rollbacks


def pinned_rollbacks() -> dict[str, list[str]]:
    """``expected_rollbacks.json``: case -> the passes verification rolls back (or that fail) on it."""
    return json.loads(EXPECTED_ROLLBACKS.read_text())["rollbacks"]


def rollback_differences(result: CorpusResult, pinned: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(new rollbacks, pinned rollbacks that no longer happen), one readable line each."""
    actual = {(case, name): why for case, passes in result.rollbacks.items() for name, why in passes.items()}
    expected = {(case, name) for case, names in pinned.items() for name in names}
    new = [f"{name} on {case} ({actual[case, name]})" for case, name in sorted(set(actual) - expected)]
    gone = [f"{name} on {case}" for case, name in sorted(expected - set(actual))]
    return new, gone


def write_pin(result: CorpusResult) -> None:
    """Rewrite ``expected_rollbacks.json`` from a verified run."""
    import onnxruntime  # noqa: PLC0415

    pin = {
        "about": "Passes that verification rolls back (or that fail) on each ONNX backend corpus case; "
        "tests/conformance/test_onnx_backend.py fails on any difference. Regenerate with "
        "python -m tests.conformance.run_corpus --pin",
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "rollbacks": {case: sorted(passes) for case, passes in sorted(result.rollbacks.items())},
    }
    EXPECTED_ROLLBACKS.write_text(json.dumps(pin, indent=2) + "\n")


# ``--mode`` spells each run as the README does (one word each: ``--mode passes-alone``).
MODE_FLAGS = {"verified": VERIFIED, "passes-alone": PASSES_ALONE, "generated": GENERATED}


def build_parser() -> argparse.ArgumentParser:
    """The script's command line: ``[--mode verified|passes-alone|generated ...] [--pin]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODE_FLAGS, action="append", help="run these modes (default: all three)")
    parser.add_argument("--pin", action="store_true", help="rewrite expected_rollbacks.json from the verified run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    modes = [MODE_FLAGS[mode] for mode in args.mode] if args.mode else ([VERIFIED] if args.pin else list(MODES))
    for mode in modes:
        result = run_corpus(mode=mode)
        print(result.summary())
        if mode == VERIFIED:
            new, gone = rollback_differences(result, pinned_rollbacks())
            print(f"  against the pin: {len(new)} new rollbacks, {len(gone)} gone")
            if args.pin:
                write_pin(result)
                print(f"  pinned {sum(len(p) for p in result.rollbacks.values())} rollbacks in {EXPECTED_ROLLBACKS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

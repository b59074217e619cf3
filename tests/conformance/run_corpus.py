"""Run graphopt's default pipeline over the ONNX backend corpus and classify every case.

Usable as a script (``python -m tests.conformance.run_corpus``: prints the counts)
and from ``test_onnx_backend.py``.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimizer.api import optimize_with_report
from optimizer.errors import GraphoptError
from optimizer.report import STATUS_FAILED
from optimizer.runtime import import_onnxruntime
from tests.conformance.onnx_corpus import (
    CorpusCase,
    classify_failure,
    iter_corpus_cases,
    outputs_match,
    run_with_ort,
)


@dataclass
class CorpusResult:
    """Counts per outcome, and the cases behind the outcomes that must stay empty."""

    total: int = 0
    out_of_scope: collections.Counter = field(default_factory=collections.Counter)
    ort_disagrees_with_reference: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    optimized: int = 0
    changed: int = 0
    rolled_back: collections.Counter = field(default_factory=collections.Counter)
    wrong_answers: dict[str, str] = field(default_factory=dict)
    crashes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        """A human-readable report of the run."""
        lines = [
            f"{self.total} cases in {self.seconds:.0f} s",
            f"  out of scope (ONNX Runtime cannot run the original): {sum(self.out_of_scope.values())}",
            *[f"    {reason}: {count}" for reason, count in self.out_of_scope.most_common()],
            "  ONNX Runtime disagrees with the reference outputs (compared with ORT's own instead): "
            f"{len(self.ort_disagrees_with_reference)}",
            f"  refused by graphopt with a one-line reason: {len(self.refused)}",
            *[f"    {name}: {reason}" for name, reason in sorted(self.refused.items())[:20]],
            f"  optimized and verified: {self.optimized} ({self.changed} changed)",
            f"  passes rolled back by verification: {dict(self.rolled_back)}",
            f"  wrong answers: {len(self.wrong_answers)}",
            f"  crashes: {len(self.crashes)}",
        ]
        return "\n".join(lines)


def run_corpus(cases: list[CorpusCase] | None = None) -> CorpusResult:
    """Classify every case: out of scope, refused, or optimized (and checked against the reference)."""
    import_onnxruntime().set_default_logger_severity(4)  # out-of-scope cases make ORT log errors we expect
    logging.getLogger("optimizer").setLevel(logging.ERROR)
    started = time.perf_counter()
    result = CorpusResult()
    for case in cases if cases is not None else iter_corpus_cases():
        result.total += 1
        try:
            original = [run_with_ort(case.model, inputs) for inputs in case.inputs]
        except Exception as error:  # ORT's many exception types: the case is out of scope
            result.out_of_scope[classify_failure(case.model, error)] += 1
            continue
        reference = case.expected
        if any(outputs_match(got, want, case.rtol, case.atol) for got, want in zip(original, case.expected)):
            result.ort_disagrees_with_reference.append(case.name)
            reference = original
        _optimize_and_check(case, reference, result)
    result.seconds = time.perf_counter() - started
    return result


def _optimize_and_check(case: CorpusCase, reference: list[dict[str, Any]], result: CorpusResult) -> None:
    verifiable = all(isinstance(value, np.ndarray) for value in case.inputs[0].values())
    try:
        optimized, report = optimize_with_report(
            case.model, inputs=case.inputs[0] if verifiable else None, verify=verifiable
        )
    except GraphoptError as error:
        result.refused[case.name] = str(error)
        return
    except Exception as error:  # noqa: BLE001 - a crash is what this harness exists to find
        result.crashes[case.name] = f"{type(error).__name__}: {error}"
        return
    for record in report.passes:
        if record.status == STATUS_FAILED:
            result.crashes[case.name] = f"{record.name}: {record.detail}"
        elif record.status == "rolled back":
            result.rolled_back[record.name] += 1
    result.optimized += 1
    if optimized.SerializeToString() != case.model.SerializeToString():
        result.changed += 1
    for inputs, want in zip(case.inputs, reference):
        try:
            got = run_with_ort(optimized, inputs)
        except Exception as error:  # noqa: BLE001
            result.crashes[case.name] = f"ONNX Runtime cannot run the optimized model: {error}"
            return
        problem = outputs_match(got, want, case.rtol, case.atol)
        if problem:
            result.wrong_answers[case.name] = problem
            return


if __name__ == "__main__":
    print(run_corpus().summary())

"""What ONNX Runtime makes of the ONNX backend test corpus, before any optimization.

    python tests/conformance/corpus_stats.py            # counts, wall time, slowest cases
    python tests/conformance/corpus_stats.py -v         # ... and every out-of-scope / disagreeing case
    python tests/conformance/corpus_stats.py --isolate  # run in child processes: find cases that
                                                        # kill the interpreter (add them to EXCLUDED)

Prints total cases (node vs model), runnable, ORT-disagrees-with-reference, and
out-of-scope cases by reason category.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import select
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.conformance import onnx_corpus  # noqa: E402
from tests.conformance.onnx_corpus import REASONS, baseline, iter_corpus_cases  # noqa: E402


@dataclass
class Record:
    """The part of a Baseline the report needs (JSON-able, for --isolate)."""

    name: str
    kind: str
    suite: str
    status: str
    reason: str | None
    detail: str
    ort_matches_reference: bool | None
    ort_deterministic: bool | None
    seconds: float


def _record(case: onnx_corpus.CorpusCase) -> Record:
    b = baseline(case)
    return Record(
        case.name,
        case.kind,
        case.suite,
        b.status,
        b.reason,
        b.detail,
        b.ort_matches_reference,
        b.ort_deterministic,
        b.seconds,
    )


def run_in_process() -> tuple[list[Record], float]:
    started = time.perf_counter()
    onnx_corpus._node_testcases()  # noqa: SLF001 - timed separately: generating the node cases
    collect_s = time.perf_counter() - started
    return [_record(case) for case in iter_corpus_cases()], collect_s


def worker(start: int) -> None:
    """--worker: baseline cases from index ``start`` on, one line before and one after each."""
    out = sys.stdout
    for index, case in enumerate(iter_corpus_cases()):
        if index < start:
            continue
        out.write(f"B\t{index}\t{case.name}\n")
        out.flush()
        out.write(f"E\t{index}\t{json.dumps(_record(case).__dict__)}\n")
        out.flush()
    out.write("DONE\n")
    out.flush()


def run_isolated(case_timeout: float) -> tuple[list[Record], dict[str, str]]:
    """Baseline everything in child processes; a case that kills or hangs its child is a crash."""
    records: list[Record] = []
    crashes: dict[str, str] = {}
    start = 0
    while True:
        child = subprocess.Popen(  # noqa: S603
            [sys.executable, os.path.abspath(__file__), "--worker", str(start)],
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        fd = child.stdout.fileno()
        current: tuple[int, str] | None = None
        finished = False
        pending = b""
        lines: list[str] = []
        while not finished:
            if not lines:
                # Generous while the child generates the node cases (no case begun yet).
                wait = case_timeout if current is not None else max(case_timeout, 300.0)
                ready, _, _ = select.select([fd], [], [], wait)
                if not ready:
                    if current is not None:
                        crashes[current[1]] = f"no result within {case_timeout:.0f} s"
                    child.kill()
                    break
                chunk = os.read(fd, 1 << 16)
                if not chunk:  # the child exited
                    break
                pending += chunk
                *complete, pending = pending.split(b"\n")
                lines.extend(line.decode() for line in complete)
                continue
            line = lines.pop(0)
            if line == "DONE":
                finished = True
            elif line.startswith("B\t"):
                _, index, name = line.split("\t", 2)
                current = (int(index), name)
            elif line.startswith("E\t"):
                records.append(Record(**json.loads(line.split("\t", 2)[2])))
                current = None
        rc = child.wait()
        child.stdout.close()
        if finished:
            return records, crashes
        if current is None:
            raise RuntimeError(f"worker exited with status {rc} outside any case")
        crashes.setdefault(current[1], f"process died (exit status {rc})")
        print(f"  crash: {current[1]}: {crashes[current[1]]}", file=sys.stderr)
        start = current[0] + 1


def report(records: list[Record], wall_s: float, collect_s: float | None, verbose: bool) -> str:
    import onnx  # noqa: PLC0415
    import onnxruntime  # noqa: PLC0415

    kinds = collections.Counter(r.kind for r in records)
    suites = collections.Counter(r.suite for r in records if r.kind == "model")
    runnable = [r for r in records if r.status == onnx_corpus.RUNNABLE]
    disagree = [r for r in runnable if not r.ort_matches_reference]
    nondet = [r for r in disagree if r.ort_deterministic is False]
    out_of_scope = [r for r in records if r.status == onnx_corpus.OUT_OF_SCOPE]
    by_reason = collections.Counter(r.reason for r in out_of_scope)
    lines = [
        f"ONNX backend test corpus: onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__} (CPU)",
        f"total cases                      {len(records):5d}",
        f"  node                           {kinds['node']:5d}",
        f"  model                          {kinds['model']:5d}  ("
        + ", ".join(f"{suite} {n}" for suite, n in sorted(suites.items()))
        + ")",
        f"runnable in ORT                  {len(runnable):5d}",
        f"  ORT matches the reference      {len(runnable) - len(disagree):5d}",
        f"  ORT disagrees with reference   {len(disagree):5d}  (of which nondeterministic: {len(nondet)})",
        f"out of scope                     {len(out_of_scope):5d}",
    ]
    for reason in REASONS:
        if by_reason[reason]:
            lines.append(f"  {reason:<31}{by_reason[reason]:5d}")
    for reason in sorted(set(by_reason) - set(REASONS), key=str):
        lines.append(f"  {reason!s:<31}{by_reason[reason]:5d}")
    timing = f"wall time {wall_s:.1f} s"
    if collect_s is not None:
        timing += f" (generating node cases {collect_s:.1f} s)"
    peak_mb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    lines.append(f"{timing}; peak RSS {peak_mb:.0f} MB")
    slowest = sorted(records, key=lambda r: r.seconds, reverse=True)[:5]
    lines.append("slowest: " + ", ".join(f"{r.name} {r.seconds:.2f} s" for r in slowest))
    if verbose:
        lines.append("\nORT disagrees with the reference:")
        lines += [f"  {r.name}: {r.detail}" for r in disagree]
        for reason in sorted(by_reason, key=lambda x: REASONS.index(x) if x in REASONS else 99):
            lines.append(f"\nout of scope: {reason}")
            lines += [f"  {r.name}: {r.detail}" for r in out_of_scope if r.reason == reason]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="list the cases behind each count")
    parser.add_argument("--isolate", action="store_true", help="run in child processes to find hard crashes")
    parser.add_argument("--case-timeout", type=float, default=120.0, help="--isolate: seconds per case")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return 0
    started = time.perf_counter()
    if args.isolate:
        records, crashes = run_isolated(args.case_timeout)
        collect_s = None
    else:
        records, collect_s = run_in_process()
        crashes = {}
    print(report(records, time.perf_counter() - started, collect_s, args.verbose))
    if args.isolate:
        print(f"cases that kill the process: {len(crashes)}")
        for name, why in crashes.items():
            print(f"  {name}: {why}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())

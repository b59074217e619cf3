"""How the way two ONNX Runtime sessions are alternated changes their measured times and ratio.

ONNX Runtime's intra-op threads keep spinning for a while after a run returns; timed
alternately run by run, the idle session's spinning threads share the cores with the other
session's run. This times two models (the same inputs, token ids ``input_ids`` and an
all-ones ``attention_mask`` of ``--sequence`` tokens, zeros for any other int64 input) in
five ways, and the run-by-run recovery after each switch (``docs/benchmarks.md``,
*Interleaved timing and spinning threads*)::

    python benchmarks/interleaved_spinning.py BEFORE.onnx AFTER.onnx [--sequence 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

# (label, allow_spinning, force_spinning_stop, timed runs per turn)
WAYS = [
    ("alternating run by run, threads spinning (ORT's default)", "1", "0", 1),
    ("alternating run by run, no spinning at all", "0", "0", 1),
    ("alternating run by run, spinning stopped when a run returns", "1", "1", 1),
    ("blocks of 30 runs, spinning stopped on return", "1", "1", 30),
    ("blocks of 30 runs, threads spinning", "1", "0", 30),
]


def session(path: str, threads: int, spin: str, stop: str, sequence: int):
    """A callable running ``path`` once on fixed inputs (warmed up)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.force_spinning_stop", stop)
    runner = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(1000, 2000, (1, sequence))
    given = {"input_ids": ids, "attention_mask": np.ones((1, sequence), np.int64)}
    feeds = {i.name: given.get(i.name, np.zeros((1, sequence), np.int64)) for i in runner.get_inputs()}
    for _ in range(10):
        runner.run(None, feeds)
    return lambda: runner.run(None, feeds)


def seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def alternate(runs, per_turn: int, turns: int, settle: int = 0) -> list[list[list[float]]]:
    """``[model][turn][run]`` seconds; the order within a pair of turns alternates (A B, B A, ...)."""
    times: list[list[list[float]]] = [[], []]
    for turn in range(turns):
        for which in (0, 1) if turn % 2 == 0 else (1, 0):
            for _ in range(settle):
                runs[which]()
            times[which].append([seconds(runs[which]) for _ in range(per_turn)])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=150)
    args = parser.parse_args()
    for label, spin, stop, per_turn in WAYS:
        runs = [session(path, args.threads, spin, stop, args.sequence) for path in (args.before, args.after)]
        settle = 5 if per_turn > 1 else 0
        times = alternate(runs, per_turn, args.pairs if per_turn == 1 else 5, settle)
        before, after = (float(np.median(np.concatenate(t))) for t in times)
        print(f"{label:62s} before {before * 1e3:7.2f} ms  after {after * 1e3:7.2f} ms  ratio {after / before:.3f}")
    runs = [session(path, args.threads, "1", "0", args.sequence) for path in (args.before, args.after)]
    times = alternate(runs, 8, 60)
    for which, name in enumerate(("before", "after")):
        recovery = np.median(np.array(times[which]), axis=0) * 1e3
        print(f"threads spinning, {name} run 1..8 after a switch (ms): " + " ".join(f"{t:.2f}" for t in recovery))


if __name__ == "__main__":
    main()

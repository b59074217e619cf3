"""Decode-step and prefill time of decoders whose inputs differ (another exporter's layout of the same weights).

``graphopt compare`` refuses two models that take different inputs; this script drives each
with graphopt's generation loop (``optimizer.generation.CausalLMSession``: position ids only
where the model takes them, right-padded prompts where it reads the mask as row lengths), so
Optimum's export, graphopt's result from it and ONNX Runtime GenAI's decoder of the same
weights can be timed side by side. Usage (run under the timing lock)::

    flock /tmp/graphopt_timing.lock python benchmarks/decoder_layouts.py \\
        optimum=tests/fixtures/llama_kv_optimum.onnx optimum+graphopt=opt.onnx \\
        genai=tests/fixtures/llama_kv_genai.onnx [--prompt 32] [--rounds 200] [--threads 2]

Per round every model runs, in an order that rotates each round: a prefill of ``--prompt``
random tokens (batch 1, empty cache) and one decode step of one token over that prefill's
cache. Printed per model: median ms of each, and the ratio of its median to the first
model's with a paired bootstrap 95 % interval (``optimizer.compare.stats.paired_ratio``,
which also flags noisy runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from optimizer.compare.stats import paired_ratio  # noqa: E402
from optimizer.generation import CausalLMSession, recognise_causal_lm  # noqa: E402


def open_session(path: str, threads: int) -> CausalLMSession:
    """A generation session on ``path``; exits with the reason when it is no causal LM with a cache."""
    layout = recognise_causal_lm(ir.load(path))
    if isinstance(layout, str):
        sys.exit(f"{path}: {layout}")
    return CausalLMSession(path, layout, threads=threads)


def one_round(session: CausalLMSession, ids: np.ndarray) -> tuple[float, float]:
    """Seconds of a prefill over ``ids`` and of one decode step after it."""
    mask = np.ones_like(ids)
    started = time.perf_counter()
    logits, cache = session.forward(ids, mask, session.empty_cache(len(ids)))
    prefill = time.perf_counter() - started
    token = logits[:, -1].argmax(-1)[:, None]
    mask = np.ones((len(ids), ids.shape[1] + 1), dtype=mask.dtype)
    started = time.perf_counter()
    session.forward(token, mask, cache)
    return prefill, time.perf_counter() - started


def main() -> None:
    """Time every model, interleaved, and print medians and ratios to the first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=PATH, the first is the reference")
    parser.add_argument("--prompt", type=int, default=32, help="prefill tokens (default 32)")
    parser.add_argument("--rounds", type=int, default=200, help="interleaved rounds (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed rounds first (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    args = parser.parse_args()
    names, sessions = [], []
    for item in args.models:
        name, _, path = item.partition("=")
        if not path:
            sys.exit(f"{item}: give NAME=PATH")
        names.append(name)
        sessions.append(open_session(path, args.threads))
    ids = np.random.default_rng(0).integers(1, min(s.vocab for s in sessions), (1, args.prompt))
    times = {name: [] for name in names}
    for index in range(args.warmup + args.rounds):
        shift = index % len(names)
        for name, session in list(zip(names, sessions))[shift:] + list(zip(names, sessions))[:shift]:
            measured = one_round(session, ids)
            if index >= args.warmup:
                times[name].append(measured)
    reference = np.array(times[names[0]])
    print(f"prompt {args.prompt}, batch 1, {args.rounds} rounds, {args.threads} threads")
    for name in names:
        runs = np.array(times[name])
        line = f"{name:20s} prefill {np.median(runs[:, 0]) * 1e3:7.3f} ms  decode {np.median(runs[:, 1]) * 1e3:7.3f} ms"
        if name != names[0]:
            for label, column in (("prefill", 0), ("decode", 1)):
                ratio = paired_ratio(reference[:, column], runs[:, column])
                line += f"  {label} x{ratio.ratio:.3f} ({ratio.low:.3f}-{ratio.high:.3f})"
                if ratio.warning:
                    line += f" [{ratio.warning}]"
        print(line)


if __name__ == "__main__":
    main()

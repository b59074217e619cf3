"""Greedy generation of two causal LMs with a KV cache, token for token: batch 1 and a left-padded batch of 2.

Runs ``graphopt``'s own generation loop (``optimizer.generation``) on BEFORE and AFTER over
held-out text rows (``input_ids`` in ``--text``): ``--prompts`` prompts of ``--prompt-length``
tokens, ``--steps`` greedy tokens each, at batch 1; then one left-padded batch of two prompts
(``--prompt-length`` and ``--short`` tokens). Prints how many continuations are equal and the
largest prefill-logits difference over real (unpadded) tokens.

Usage::

    python benchmarks/generation_equality.py smollm2_kv_dynamo.onnx dyn_opt.onnx --text heldout_text.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.generation import CausalLMSession, left_padded, recognise_causal_lm  # noqa: E402


def session(path: str, threads: int) -> CausalLMSession:
    """A generation session on ``path`` (an error if it is not a causal LM with a cache)."""
    lm = recognise_causal_lm(ir.load(path))
    if isinstance(lm, str):
        raise SystemExit(f"{path}: {lm}")
    return CausalLMSession(path, lm, threads=threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--text", type=Path, required=True, help=".npz with input_ids [rows, length]")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=48)
    parser.add_argument("--short", type=int, default=20, help="the padded row's length in the batch of 2")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    before, after = session(args.before, args.threads), session(args.after, args.threads)
    ids = np.load(args.text)["input_ids"]
    equal, worst = 0, 0.0
    for row in range(args.prompts):
        prompt = ids[row : row + 1, : args.prompt_length]
        mask = np.ones_like(prompt)
        equal += int(
            np.array_equal(
                before.greedy(prompt, mask, args.steps).tokens, after.greedy(prompt, mask, args.steps).tokens
            )
        )
        worst = max(worst, float(np.abs(before.logits(prompt, mask) - after.logits(prompt, mask)).max()))
    print(
        f"batch 1: {equal}/{args.prompts} continuations of {args.steps} tokens equal; "
        f"prefill logits max |diff| {worst:.2e}"
    )
    rows = [ids[args.prompts, : args.prompt_length], ids[args.prompts + 1, : args.short]]
    padded, mask = left_padded(rows)
    same = np.array_equal(before.greedy(padded, mask, args.steps).tokens, after.greedy(padded, mask, args.steps).tokens)
    real = mask.astype(bool)
    difference = float(np.abs(before.logits(padded, mask) - after.logits(padded, mask))[real].max())
    print(
        f"left-padded batch of 2 ({args.prompt_length} and {args.short} tokens): {args.steps} tokens "
        f"{'equal' if same else 'DIFFERENT'}; prefill logits max |diff| over real tokens {difference:.2e}"
    )


if __name__ == "__main__":
    main()

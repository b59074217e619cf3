"""Generation timed interleaved: time to first token and decode tokens/s of two causal LMs.

One repetition is one generation: a prefill over the prompt (its time, with the choice of
the first token, is the time to first token) and then ``new_tokens`` decode steps of one
token each (their time gives tokens/s: batch × new tokens / seconds). Repetitions of BEFORE
and AFTER alternate as compare's latency runs do (``time_interleaved``), so drift hits both;
medians and paired-bootstrap intervals come from ``optimizer.compare.stats``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from optimizer.compare.stats import LatencySummary, RatioEstimate, paired_ratio
from optimizer.compare.timing import TimingPlan, time_interleaved
from optimizer.generation import CausalLMSession, random_prompts

# Warm-up generations at most, whatever --warmup says: one generation is many runs.
MAX_WARMUP_GENERATIONS = 2


@dataclass
class GenerationResult:
    """Interleaved generation timing of both models at one batch size.

    ``ttft_*``: time to first token (prefill of ``prompt_length`` tokens); ``ttft_ratio`` is
    after/before of the medians (below 1: AFTER answers sooner). ``decode_*``: the
    ``new_tokens`` decode steps after it; ``tokens_per_s_*`` = batch × new_tokens / median
    decode time, and ``tokens_per_s_ratio`` is after/before (above 1: AFTER decodes faster).
    """

    batch: int
    prompt_length: int
    new_tokens: int
    ttft_before: LatencySummary
    ttft_after: LatencySummary
    ttft_ratio: RatioEstimate
    decode_before: LatencySummary
    decode_after: LatencySummary
    tokens_per_s_before: float
    tokens_per_s_after: float
    tokens_per_s_ratio: RatioEstimate
    samples_ttft_before_ms: list[float] = field(default_factory=list)
    samples_ttft_after_ms: list[float] = field(default_factory=list)
    samples_decode_before_ms: list[float] = field(default_factory=list)
    samples_decode_after_ms: list[float] = field(default_factory=list)


class _TimedGeneration:
    """One model generating from fixed prompts; ``run()`` is one generation (what ``time_interleaved`` times)."""

    def __init__(self, session: CausalLMSession, ids: np.ndarray, mask: np.ndarray, steps: int) -> None:
        self.session, self.ids, self.mask, self.steps = session, ids, mask, steps
        self.first_token: list[float] = []
        self.decode: list[float] = []

    def run(self) -> float:
        generation = self.session.greedy(self.ids, self.mask, self.steps)
        self.first_token.append(generation.first_token_seconds)
        self.decode.append(generation.decode_seconds)
        return generation.first_token_seconds + generation.decode_seconds


def time_generation(
    before: CausalLMSession,
    after: CausalLMSession,
    *,
    batch: int,
    prompt_length: int,
    new_tokens: int,
    plan: TimingPlan,
    on_progress: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Time both models generating ``new_tokens`` tokens after ``batch`` random prompts of ``prompt_length``
    tokens (rows left-padded to mixed lengths where the model takes an attention mask)."""
    ids, mask = random_prompts(
        batch, prompt_length, before.vocab, padded=before.lm.attention_mask is not None, seed=batch
    )
    timed_before = _TimedGeneration(before, ids, mask, new_tokens)
    timed_after = _TimedGeneration(after, ids, mask, new_tokens)
    warmup = min(plan.warmup, MAX_WARMUP_GENERATIONS)
    generation_plan = TimingPlan(warmup, plan.iterations, plan.time_budget, plan.min_iterations)
    timed, _ = time_interleaved(timed_before, timed_after, generation_plan, on_progress)
    # The warm-up stops early once it has taken the time budget: the runs it made are the ones before the timed ones
    # (sliced at ``warmup``, a cut-short warm-up dropped timed generations, and with --iterations 1 all of them).
    warm = len(timed_before.first_token) - len(timed)
    ttft_before, ttft_after = timed_before.first_token[warm:], timed_after.first_token[warm:]
    decode_before, decode_after = timed_before.decode[warm:], timed_after.decode[warm:]
    decode_summary_before, decode_summary_after = LatencySummary.of(decode_before), LatencySummary.of(decode_after)
    tokens = batch * new_tokens
    return GenerationResult(
        batch=batch,
        prompt_length=prompt_length,
        new_tokens=new_tokens,
        ttft_before=LatencySummary.of(ttft_before),
        ttft_after=LatencySummary.of(ttft_after),
        ttft_ratio=paired_ratio(ttft_before, ttft_after),
        decode_before=decode_summary_before,
        decode_after=decode_summary_after,
        tokens_per_s_before=tokens / (decode_summary_before.median_ms / 1000.0),
        tokens_per_s_after=tokens / (decode_summary_after.median_ms / 1000.0),
        # Tokens per second are inverse times: after/before of the rates is before/after of the times.
        tokens_per_s_ratio=paired_ratio(decode_after, decode_before),
        samples_ttft_before_ms=[t * 1000.0 for t in ttft_before],
        samples_ttft_after_ms=[t * 1000.0 for t in ttft_after],
        samples_decode_before_ms=[t * 1000.0 for t in decode_before],
        samples_decode_after_ms=[t * 1000.0 for t in decode_after],
    )

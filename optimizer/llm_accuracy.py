"""Accuracy of a rewritten causal LM against the original, in the language model's own terms.

Per-output errors say how far logits moved; these say whether the model still says the same
thing. On held-out text (token ids): teacher-forced next-token top-1 agreement of AFTER with
BEFORE, and each model's perplexity against the real next tokens. From prompts cut from that
text: greedy continuations of both models, compared token by token (the whole continuation
equal, and how far they agree before they first diverge). Without text, random token ids stand
in, and the result says so: their perplexity is no language-modelling figure, though agreement
still compares the two models.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from optimizer.accuracy import scale_scores, vector_cosine
from optimizer.errors import InputSpecError
from optimizer.generation import CausalLM, CausalLMSession, left_padded, random_prompts
from optimizer.progress import track
from optimizer.tokenizer_inputs import is_text_mask, tokens_attending

# Random token rows scored when the user gives no text: a few rows keep it cheap on real models.
GENERATED_ROWS = 4


@dataclass(frozen=True)
class TokenText:
    """Token-id rows (``ids`` where ``mask`` is 1; pads may sit on either side) and where they came from."""

    rows: tuple[np.ndarray, ...]
    source: str
    real: bool


def text_mask_name(lm: CausalLM) -> str:
    """The name of held-out text's mask: the model's attention mask, or ``attention_mask`` for a model that takes
    none (a tokenizer's output holds one; its pads are dropped, and the rows scored at their own lengths)."""
    return lm.attention_mask or "attention_mask"


def text_from_arrays(arrays: Mapping[str, np.ndarray], lm: CausalLM, source: str) -> TokenText:
    """Held-out text from ``{input_ids: [rows, length], attention_mask: [rows, length]}`` (the mask optional,
    named as ``text_mask_name`` says).

    ``InputSpecError`` naming ``source`` for ids that are not a 2-D integer array, a mask of
    another shape, of floats where the model's own 2-D mask is not float or of floats other than 0 and 1, or with pads
    between a row's tokens, ids outside the vocabulary, or no row with two tokens
    (nothing to score).
    """
    ids = np.asarray(arrays[lm.input_ids])
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise InputSpecError(f"{source}: '{lm.input_ids}' must be token ids, integers [rows, length], not {_kind(ids)}")
    mask_name = text_mask_name(lm)
    mask = arrays.get(mask_name)
    if mask is None:
        mask = np.ones_like(ids)
    mask = np.asarray(mask)
    if mask.shape != ids.shape or not is_text_mask(mask, lm):
        raise InputSpecError(
            f"{source}: '{mask_name}' must be 0/1 of the ids' shape {list(ids.shape)}, not {_kind(mask)}"
        )
    mask = tokens_attending(mask, lm)  # booleans for a model that pads where its mask is true are read so
    for index, keep in enumerate(mask.astype(bool)):
        held = np.flatnonzero(keep)
        if len(held) and held[-1] - held[0] + 1 != len(held):
            # Dropping the pads joined the pieces into one row: the token after the gap was scored as the next of
            # the one before it (a review).
            raise InputSpecError(
                f"{source}: '{mask_name}' row {index} masks positions between its tokens ({held[0]} to {held[-1]}): "
                "pads go at either end of a row; give each piece of text a row of its own"
            )
    rows = tuple(row[keep.astype(bool)].astype(np.int64) for row, keep in zip(ids, mask))
    # Gather reads negative indices from the end: a negative id would be scored as another token.
    high = lm.vocab if lm.vocab is not None else np.iinfo(np.int64).max
    if any(((row < 0) | (row >= high)).any() for row in rows):
        limit = f"0 to {lm.vocab - 1}" if lm.vocab is not None else "no negative ids"
        raise InputSpecError(f"{source}: '{lm.input_ids}' holds ids outside the vocabulary ({limit})")
    given = len(rows)
    rows = tuple(row for row in rows if len(row) >= 2)
    if not rows:
        raise InputSpecError(f"{source}: no row holds two tokens: there is no next token to score")
    # Said, not dropped silently: a row of pads only (or one token) has no next token to score.
    short = f"; {given - len(rows)} of {given} left out, holding under two tokens" if len(rows) < given else ""
    return TokenText(rows, f"{source} ({len(rows)} rows{short})", real=True)


def _kind(array: np.ndarray) -> str:
    return f"{array.dtype}{list(array.shape)}"


def random_text(vocab: int, length: int, *, padded: bool) -> TokenText:
    """``GENERATED_ROWS`` rows of random token ids, ``length`` long or shorter (left-padded rows, cut)."""
    ids, mask = random_prompts(GENERATED_ROWS, max(length, 2), vocab, padded=padded, seed=1)
    rows = tuple(row[keep.astype(bool)] for row, keep in zip(ids, mask))
    return TokenText(rows, f"random token ids ({len(rows)} rows, not real text)", real=False)


@dataclass(frozen=True)
class LLMAccuracy:
    """AFTER against BEFORE as language models (see the module docstring).

    ``top1_agreement``: fraction of scored positions where both models' most likely next
    token is the same (teacher forcing: each position sees the real text before it).
    ``perplexity_*``: exp of the mean negative log-likelihood of the real next token over
    those positions; ``perplexity_delta`` is after − before. ``exact_match``: fraction of
    prompts whose ``continuation_tokens`` greedy tokens are all the same in both models;
    ``prefix_agreement``: mean fraction of each continuation before the first token that
    differs (1.0 when all match). ``logits_cosine``: the cosine similarity of the two models'
    teacher-forced logits over every scored position (one vector), for ``--min-cosine``: the
    one-run comparison beside it always runs over a cache, never the prefill;
    ``logits_worst_cosine`` the lowest such cosine of one sequence, for ``--min-worst-cosine``.
    ``decode_logits_cosine`` / ``decode_logits_worst_cosine``: the same of the greedy continuations'
    decode-step logits, AFTER fed BEFORE's tokens (the one-token steps over a cache that generation runs; one
    step past a continuation of one token), not the prefill's, which chose the first token.
    Each cosine is held to ``1 - (q - 1)**2 / 2`` of the norm ratio ``q`` too (a cosine does not see
    logits scaled). A logit that is NaN or infinite in both models alike (a vocabulary masked with
    ``-inf``) counts in none of the cosines; one that is so in one model only makes them NaN. Where ``batch`` is
    above 1, each cosine is the lower of the batched rows' and the rows' run alone (batch 1), the other figures
    the batched rows'.
    """

    text: str
    real_text: bool
    sequences: int
    scored_tokens: int
    top1_agreement: float
    perplexity_before: float
    perplexity_after: float
    perplexity_delta: float
    prompts: int
    prompt_tokens: int
    continuation_tokens: int
    exact_match: float
    prefix_agreement: float
    note: str = ""
    logits_cosine: float = 1.0
    # The lowest of each sequence's teacher-forced logits cosine (over its scored positions).
    logits_worst_cosine: float = 1.0
    # The greedy continuations' step logits (AFTER fed BEFORE's tokens): over all steps, and the lowest prompt's.
    decode_logits_cosine: float = 1.0
    decode_logits_worst_cosine: float = 1.0
    # Rows run at a time (left-padded to one length), at most.
    batch: int = 1


def measure_llm_accuracy(
    before: CausalLMSession,
    after: CausalLMSession,
    text: TokenText,
    *,
    batch: int,
    prompt_length: int,
    new_tokens: int,
) -> LLMAccuracy:
    """Teacher-forced agreement and perplexity on ``text``, and greedy continuations of its first
    ``prompt_length`` tokens, ``new_tokens`` long; ``batch`` rows run at a time, left-padded (rows of one
    length at a time where the model takes no positions and pads on the left), and where that is more than one,
    each row alone too, for the cosines."""
    # Padding needs a mask, and positions that skip it: given as position_ids, or counted from the row's start
    # (right padding). A model with neither may count positions from its cache (transformers' GPT-2 without
    # position_ids): a left-padded row would be read at shifted positions, so it gets rows of one length.
    lm = before.lm
    padded = lm.attention_mask is not None and (lm.position_ids is not None or lm.padding == "right")
    measure = functools.partial(_measure, before, after, text, batch, prompt_length, new_tokens)
    if not padded:
        result = measure(padded=False)
    else:
        try:
            result = measure(padded=True)
        except _BeforeNotFiniteWhenPadded:
            unpadded = measure(padded=False)
            note = (
                "BEFORE's own logits are NaN at real tokens of left-padded rows (a softmax over keys that are all "
                "masked at the pads, -inf, reaches the next layer): rows of one length were compared at a time"
            )
            result = dataclasses.replace(unpadded, note=_joined(unpadded.note, note))
    if result.batch > 1:
        # Rows alone too: a generation of one row runs one-row steps, which kernels may take another path for (a
        # review's AFTER wrong at every decode step of batch 1 passed --min-cosine at --batch 1,4, measured at 4).
        alone = _measure(before, after, text, 1, prompt_length, new_tokens, padded=False)
        result = _with_lower_cosines(result, alone)
    return result


_COSINES = ("logits_cosine", "logits_worst_cosine", "decode_logits_cosine", "decode_logits_worst_cosine")


def _with_lower_cosines(batched: LLMAccuracy, alone: LLMAccuracy) -> LLMAccuracy:
    """``batched`` with each cosine the lower of its own and that of the rows run alone (NaN where either is), and a
    note naming those lower alone."""
    lower = {}
    for name in _COSINES:
        mine, theirs = getattr(batched, name), getattr(alone, name)
        lower[name] = float(np.min([mine, theirs]))  # NaN stays NaN (min() would skip it)
    # Below 1e-6 the two differ by rounding only (another batch, another order of sums).
    worse = [name for name in _COSINES if getattr(alone, name) < getattr(batched, name) - 1e-6]
    if not worse:
        return dataclasses.replace(batched, **lower)
    figures = ", ".join(
        f"{name} {getattr(alone, name):.6g} (rows together {getattr(batched, name):.6g})" for name in worse
    )
    note = (
        f"each row alone (batch 1), AFTER's logits are further from BEFORE's: {figures}; the cosines given are "
        f"those, the other figures {batched.batch} rows' at a time"
    )
    return dataclasses.replace(batched, **lower, note=_joined(batched.note, note))


def _joined(note: str, more: str) -> str:
    return f"{note}; {more}" if note else more


class _BeforeNotFiniteWhenPadded(Exception):
    """BEFORE's logits hold NaN at scored positions of a padded batch (the model's own doing: an infinite logit
    is no sign of padding, a vocabulary masked with ``-inf`` has them in every row)."""


def _measure(
    before: CausalLMSession,
    after: CausalLMSession,
    text: TokenText,
    batch: int,
    prompt_length: int,
    new_tokens: int,
    *,
    padded: bool,
) -> LLMAccuracy:
    """``measure_llm_accuracy`` with rows left-padded into batches (``padded``), or batched by length."""
    agree = scored = 0
    nll_before = nll_after = 0.0
    dot = norm_before = norm_after = 0.0
    worst = 1.0
    batches = -(-len(text.rows) // batch)
    for ids, mask in track(_batches(text.rows, batch, padded), "accuracy: teacher-forced next tokens", batches):
        expected, actual = before.logits(ids, mask), after.logits(ids, mask)
        if expected.ndim != 3 or expected.shape[1] != ids.shape[1]:
            raise InputSpecError(
                f"{before.path}: the logits hold {expected.shape[1] if expected.ndim == 3 else 1} positions for "
                f"{ids.shape[1]} tokens: teacher-forced accuracy needs the logits of every position"
            )
        if actual.shape != expected.shape:
            raise InputSpecError(
                f"{after.path}: its logits are {list(actual.shape)} where {before.path}'s are {list(expected.shape)} "
                "for the same tokens: both models must give logits over one vocabulary at every position"
            )
        # Position t predicts token t + 1; both must be real tokens (not pads).
        scored_at = (mask[:, :-1] != 0) & (mask[:, 1:] != 0)
        if padded and np.isnan(expected[:, :-1][scored_at]).any():
            raise _BeforeNotFiniteWhenPadded
        targets = ids[:, 1:]
        agree += int(np.sum((expected[:, :-1].argmax(-1) == actual[:, :-1].argmax(-1)) & scored_at))
        scored += int(scored_at.sum())
        nll_before += _negative_log_likelihood(expected[:, :-1], targets, scored_at)
        nll_after += _negative_log_likelihood(actual[:, :-1], targets, scored_at)
        a, b = _comparable(expected[:, :-1][scored_at], actual[:, :-1][scored_at])
        for row, scored_row in enumerate(scored_at):
            if scored_row.any():
                cosine = _held_cosine(expected[row, :-1][scored_row], actual[row, :-1][scored_row])
                worst = float(np.min([worst, cosine]))  # NaN stays NaN (min() would skip it)
        dot, norm_before, norm_after = (
            dot + float(np.sum(a * b)),
            norm_before + float(np.sum(a * a)),
            norm_after + float(np.sum(b * b)),
        )
    prompts = [row[:prompt_length] for row in text.rows]
    # The prefill chooses the first token; one decode step at least, whose logits the step cosines hold (with
    # --new-tokens 1 none ran, and a model wrong at every decode step passed the gates).
    steps = max(new_tokens - 1, 1)
    exact = prefix = 0.0
    step_dot = step_before = step_after = 0.0
    step_worst = 1.0
    for ids, mask in track(_batches(prompts, batch, padded), "accuracy: greedy continuations", batches):
        # AFTER is fed BEFORE's tokens: up to its first different choice it generates what it would alone (the
        # same inputs), so the continuations compare as two free runs would, and every decode step's logits
        # compare on the same tokens (a review: a model wrong only at one-token steps over a cache passed
        # --min-cosine, which read only the prefill and one run over a random cache).
        want = before.greedy(ids, mask, steps, keep_logits=True)
        if padded and np.isnan(want.logits).any():
            raise _BeforeNotFiniteWhenPadded
        fed = after.greedy(ids, mask, steps, fed=want.tokens, keep_logits=True)
        same = (want.logits.argmax(-1) == fed.logits.argmax(-1))[:, :new_tokens]
        exact += float(same.all(axis=1).sum())
        first_difference = np.where(same.all(axis=1), same.shape[1], np.argmin(same, axis=1))
        prefix += float((first_difference / same.shape[1]).sum())
        # The one-token steps alone: the first logits are the prefill's (the teacher-forced figures hold those; a
        # model wrong only at the prefill was reported wrong at its decode steps).
        a, b = _comparable(want.logits[:, 1:], fed.logits[:, 1:])
        step_dot += float(np.sum(a * b))
        step_before += float(np.sum(a * a))
        step_after += float(np.sum(b * b))
        for row in range(len(a)):
            step_worst = float(np.min([step_worst, _held_cosine(a[row], b[row])]))
    ppl_before, ppl_after = float(np.exp(nll_before / scored)), float(np.exp(nll_after / scored))
    note = (
        ""
        if text.real
        else "random token ids, not real text: the perplexities are no language-modelling figure "
        "(give held-out text as --inputs FILE.npz holding input_ids, and attention_mask if padded)"
    )
    return LLMAccuracy(
        text=text.source,
        real_text=text.real,
        sequences=len(text.rows),
        scored_tokens=scored,
        top1_agreement=agree / scored,
        perplexity_before=ppl_before,
        perplexity_after=ppl_after,
        perplexity_delta=0.0 if ppl_after == ppl_before else ppl_after - ppl_before,  # inf - inf is NaN
        prompts=len(prompts),
        prompt_tokens=max(len(prompt) for prompt in prompts),
        continuation_tokens=new_tokens,
        exact_match=exact / len(prompts),
        prefix_agreement=prefix / len(prompts),
        batch=min(batch, len(text.rows)),
        logits_cosine=_summed_cosine(dot, norm_before, norm_after),
        logits_worst_cosine=worst,
        decode_logits_cosine=_summed_cosine(step_dot, step_before, step_after),
        decode_logits_worst_cosine=step_worst,
        note=note,
    )


def _summed_cosine(dot: float, before: float, after: float) -> float:
    """The cosine of two vectors from their dot product and squared norms, held to ``1 - (q - 1)**2 / 2`` of their
    norm ratio ``q`` (``accuracy.scale_scores``: a cosine does not see logits scaled)."""
    if not before or not after:
        return float(dot == 0 and before == after)
    cosine = dot / np.sqrt(before * after)
    return float(min(cosine, scale_scores(np.sqrt(after / before))))


def _comparable(expected: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both in float64, a value NaN or infinite in both alike (the same infinity, or NaN) 0 in both (nothing to a
    cosine); all NaN where one holds a NaN or infinity the other has not (the cosines then say NaN, and fail)."""
    e, a = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    finite = np.isfinite(e) & np.isfinite(a)
    if finite.all():
        return e, a
    alike = finite | (e == a) | (np.isnan(e) & np.isnan(a))
    if not alike.all():
        return np.full_like(e, np.nan), np.full_like(a, np.nan)
    return np.where(finite, e, 0.0), np.where(finite, a, 0.0)


def _held_cosine(expected: np.ndarray, actual: np.ndarray) -> float:
    """``vector_cosine``, held to the norm ratio as ``_summed_cosine`` is."""
    expected, actual = _comparable(expected, actual)
    if np.isnan(expected).any():
        return float("nan")
    cosine = vector_cosine(expected, actual)
    before = float(np.linalg.norm(np.asarray(expected, np.float64)))
    if not before:
        return cosine
    ratio = float(np.linalg.norm(np.asarray(actual, np.float64))) / before
    return float(np.min([cosine, float(scale_scores(ratio))]))


def _negative_log_likelihood(logits: np.ndarray, targets: np.ndarray, scored: np.ndarray) -> float:
    """Sum over scored positions of -log softmax(logits)[target], in float64 (float16 logits overflow exp)."""
    values = logits.astype(np.float64)
    peak = values.max(axis=-1, keepdims=True)
    log_total = np.log(np.exp(values - peak).sum(axis=-1)) + peak[..., 0]
    chosen = np.take_along_axis(values, targets[..., None], axis=-1)[..., 0]
    return float(np.sum((log_total - chosen)[scored]))


def _batches(rows: tuple[np.ndarray, ...] | list[np.ndarray], size: int, padded: bool) -> Iterator[tuple]:
    """Rows as left-padded batches of at most ``size``; a model without an attention mask cannot skip pads,
    so it gets batches of rows of one length."""
    if padded:
        groups = [list(rows)]
    else:
        by_length: dict[int, list[np.ndarray]] = {}
        for row in rows:
            by_length.setdefault(len(row), []).append(row)
        groups = list(by_length.values())
    for group in groups:
        for start in range(0, len(group), size):
            yield left_padded(group[start : start + size])

"""Review s78 (issue 14's "Done when", checked as a user would): a decoder with a KV cache optimized by the default
pipeline fuses into GroupQueryAttention with its interface unchanged, and over a prefill and 16 greedy decode steps,
each step fed the model's own presents, gives the original's tokens at batch 1 and at batch 2 with prompts of
different lengths, left-padded and right-padded (new tokens after the pads: holes in the mask), and after a chunk of
several new tokens over a past.

Finding (failed before the fix): the decoder path's first step, README's ``benchmarks/export_smollm2.py`` (export a real
decoder with a cache), stopped with ``ModuleNotFoundError: No module named 'gguf'`` in the environment
``graphopt[export]`` installs: transformers loads SmolLM2's GGUF checkpoint only with ``gguf`` and ``accelerate``
("accelerate is required when loading a GGUF file"), which the extra did not list.

The review found no failure in the generation checks, on every KV fixture (legacy, dynamo, Optimum, GenAI, GPT-2,
Llama, Phi-3, Gemma 3, Falcon, CodeGen, SmolLM3) nor on a fresh legacy export of SmolLM2-135M; this file keeps the
issue's own numbers in the suite on the smallest Llama-style fixture (``tests/test_decoder_layouts.py`` runs 8 steps,
one row left-padded).
The pipeline runs without verification, so a rewrite that broke padding would show here, not be rolled back.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from optimizer.generation import CausalLMSession, recognise_causal_lm
from tests.helpers import FIXTURES

FIXTURE = FIXTURES / "llama_kv_legacy.onnx"
STEPS = 16


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    output = tmp_path_factory.mktemp("s78_decdone") / "optimized.onnx"
    optimizer.optimize_with_report(str(FIXTURE), output=output, verify=False)
    return output


def _session(path) -> CausalLMSession:
    lm = recognise_causal_lm(ir.load(path))
    assert not isinstance(lm, str), lm
    session = CausalLMSession(str(path), lm, threads=1)
    session.check_cache_pairs()
    return session


@pytest.fixture(scope="module")
def sessions(optimized):
    return _session(FIXTURE), _session(optimized)


def _interface(model: ir.Model) -> list[tuple[str, str, str]]:
    return [(v.name, str(v.dtype), str(v.shape)) for v in (*model.graph.inputs, *model.graph.outputs)]


def test_default_pipeline_fuses_the_cache_attention_with_the_interface_unchanged(optimized):
    model = ir.load(optimized)
    ops = Counter(node.op_type for node in model.graph)
    assert ops["GroupQueryAttention"] == 2 and ops["Softmax"] == 0, ops
    assert _interface(model) == _interface(ir.load(FIXTURE))


def _prompts(padding: str) -> tuple[np.ndarray, np.ndarray]:
    """Two prompts of 9 and 4 random tokens (one of 9 for ``batch1``), the shorter padded on the given side."""
    rng = np.random.default_rng(14)
    rows = [rng.integers(1, 256, 9), rng.integers(1, 256, 4)][: 1 if padding == "batch1" else 2]
    ids, mask = np.zeros((len(rows), 9), np.int64), np.zeros((len(rows), 9), np.int64)
    for index, row in enumerate(rows):
        where = slice(9 - len(row), 9) if padding == "left" else slice(0, len(row))
        ids[index, where], mask[index, where] = row, 1
    return ids, mask


def _generate(session: CausalLMSession, ids: np.ndarray, mask: np.ndarray, chunks=()) -> tuple[np.ndarray, np.ndarray]:
    """Greedy tokens and their logits: the prompt fed in pieces ending at ``chunks`` (then the rest), then ``STEPS``
    one-token steps over the presents; each row's next token read at its last real token (right padding too)."""
    cache, start = session.empty_cache(len(ids)), 0
    for end in (*chunks, ids.shape[1]):
        logits, cache = session.forward(ids[:, start:end], mask[:, :end], cache)
        start = end
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1] != 0, axis=1) - (ids.shape[1] - logits.shape[1])
    chosen = [logits[np.arange(len(ids)), last]]
    for _ in range(STEPS):
        token = chosen[-1].argmax(-1)[:, None]
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
        logits, cache = session.forward(token, mask, cache)
        chosen.append(logits[:, -1])
    steps = np.stack(chosen, axis=1)
    return steps.argmax(-1), steps


@pytest.mark.parametrize("padding", ["batch1", "left", "right"])
def test_sixteen_decode_steps_give_the_originals_tokens(sessions, padding):
    before, after = sessions
    ids, mask = _prompts(padding)
    expected_tokens, expected = _generate(before, ids, mask)
    tokens, logits = _generate(after, ids, mask)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_a_chunk_over_a_past_in_a_padded_batch_gives_the_originals_tokens(sessions):
    # A prefill of 3 positions (the shorter row's are all pads), 4 more over that past, then one token at a time.
    before, after = sessions
    ids, mask = _prompts("left")
    expected_tokens, expected = _generate(before, ids, mask, chunks=(3, 7))
    tokens, logits = _generate(after, ids, mask, chunks=(3, 7))
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_the_export_extra_installs_what_the_smollm2_export_needs():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["export"]
    names = {re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower() for requirement in extra}
    assert {"torch", "transformers", "gguf", "accelerate"} <= names, extra

"""Session 72's review of the suite's time: what its cuts must keep.

- The conformance corpus's passes-alone run (``tests/conformance/test_onnx_backend.py``) ran the whole corpus a
  second time without verification, though the verified run had kept every pass on all but the cases it refused:
  there the passes run on the same models with verification or without and write the same model. Given the verified
  run, it now runs again only where verification rolled back, failed or refused, and on every
  ``REUSE_SPOT_CHECK``-th other case, which must write the verified run's model byte for byte.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.conformance import run_corpus as corpus_runs
from tests.conformance.onnx_corpus import iter_corpus_cases
from tests.conformance.run_corpus import PASSES_ALONE, VERIFIED, run_corpus


@pytest.fixture(scope="module")
def operator_cases():
    """The first 14 ``pytorch-operator`` model cases: small, and the passes change most of them."""
    return list(iter_corpus_cases(node=False, names=lambda name: name.startswith("pytorch-operator/")))[:14]


@pytest.fixture(scope="module")
def verified(operator_cases):
    return run_corpus(operator_cases, mode=VERIFIED)


def test_the_passes_alone_given_the_verified_run_count_what_a_whole_run_counts(operator_cases, verified):
    whole = run_corpus(operator_cases, mode=PASSES_ALONE)
    cheap = run_corpus(operator_cases, mode=PASSES_ALONE, verified=verified)
    assert (cheap.optimized, cheap.changed, cheap.wrong_answers, cheap.crashes) == (
        whole.optimized,
        whole.changed,
        whole.wrong_answers,
        whole.crashes,
    )
    assert whole.changed > 0 and whole.reused == 0
    # Every case verification kept whole is reused but for the spot checks.
    kept = len(verified.kept_every_pass)
    assert kept == verified.optimized and cheap.reused == kept - kept // corpus_runs.REUSE_SPOT_CHECK


def test_a_spot_check_that_writes_another_model_than_the_verified_run_is_a_wrong_answer(
    operator_cases, verified, monkeypatch
):
    # As if a default pass read something only verification gives it (the bound dims): every case disagrees.
    monkeypatch.setattr(corpus_runs, "REUSE_SPOT_CHECK", 1)
    other = {name: (changed, "0" * 64) for name, (changed, _) in verified.kept_every_pass.items()}
    alone = run_corpus(operator_cases, mode=PASSES_ALONE, verified=dataclasses.replace(verified, kept_every_pass=other))
    assert alone.reused == 0 and set(alone.wrong_answers) == set(other)
    assert all("another model than the verified run" in problem for problem in alone.wrong_answers.values())


def test_only_a_verified_run_stands_in_for_a_passes_alone_one(operator_cases, verified):
    with pytest.raises(ValueError, match="verified= is a verified run"):
        run_corpus(operator_cases[:1], mode=VERIFIED, verified=verified)

"""Conformance: graphopt's default pipeline over the ONNX backend test corpus (~2,000 models).

Every case ONNX Runtime can run must, after optimization, still give the expected
outputs within the case's tolerances (or, where ORT itself disagrees with the
reference, ORT's own outputs), or be refused with a one-line reason. Cases ORT
cannot run at all are out of scope and only counted. The run takes ~25 s.
"""

from __future__ import annotations

import pytest

from tests.conformance.run_corpus import CorpusResult, run_corpus


@pytest.fixture(scope="module")
def corpus() -> CorpusResult:
    result = run_corpus()
    print("\n" + result.summary())
    return result


def test_covers_the_whole_corpus(corpus):
    assert corpus.total > 2000
    in_scope = corpus.total - sum(corpus.out_of_scope.values())
    assert in_scope > 1600, corpus.summary()


def test_no_crashes(corpus):
    assert corpus.crashes == {}, corpus.summary()


def test_no_wrong_answers(corpus):
    assert corpus.wrong_answers == {}, corpus.summary()


def test_every_in_scope_case_is_optimized_or_refused_with_a_reason(corpus):
    in_scope = corpus.total - sum(corpus.out_of_scope.values())
    assert corpus.optimized + len(corpus.refused) + len(corpus.crashes) == in_scope
    assert all(reason.strip() and "\n" not in reason for reason in corpus.refused.values())


def test_the_pipeline_actually_rewrites_many_models(corpus):
    # Guards against a pipeline that passes by doing nothing.
    assert corpus.changed > 400, corpus.summary()

"""Conformance: graphopt's default pipeline over the ONNX backend test corpus (~2,000 models).

Three runs (see ``run_corpus.py``), about 2 minutes of one worker in all (2.5 before the passes alone reused
the verified run):

* verified, on each case's own inputs: every case ONNX Runtime can run must still give
  the expected outputs within the case's tolerances (or, where ORT itself disagrees
  with the reference, ORT's own outputs), or be refused with a one-line reason; and
  the passes verification rolls back are exactly the pinned ones
  (``expected_rollbacks.json``), so a pass that starts breaking models cannot hide
  behind its rollbacks;
* the passes alone (``verify=False``): no case may regress (run again where verification rolled a pass back,
  saw one fail or refused, and on every tenth other case, which must write what the verified run wrote; the
  rest are the verified run's, whose passes ran on the same models);
* default flags, no inputs: graphopt generates inputs ONNX Runtime accepts for all but
  ``MAX_GENERATED_INPUT_REFUSALS`` models.

Cases ORT cannot run at all are out of scope and only counted. A sabotage check proves
the first two would catch a pass that corrupts weights.
"""

from __future__ import annotations

import onnx_ir as ir
import pytest

from passes.constant_folding import FoldConstantsPass
from tests.conformance.onnx_corpus import iter_corpus_cases
from tests.conformance.run_corpus import (
    GENERATED,
    PASSES_ALONE,
    VERIFIED,
    CorpusResult,
    pinned_rollbacks,
    rollback_differences,
    run_corpus,
)

# With onnx 1.23.2 and onnxruntime 1.32.0: 4 of 1,724 runnable models (expanded
# AffineGrid functions, whose size input reaches its Reshape through an If). Lower it
# when generation gets better; never raise it to make a change pass.
MAX_GENERATED_INPUT_REFUSALS = 4


def _run(mode: str, verified: CorpusResult | None = None) -> CorpusResult:
    result = run_corpus(mode=mode, verified=verified)
    print("\n" + result.summary())
    return result


@pytest.fixture(scope="module")
def corpus() -> CorpusResult:
    return _run(VERIFIED)


@pytest.fixture(scope="module")
def passes_alone(corpus) -> CorpusResult:
    return _run(PASSES_ALONE, verified=corpus)


@pytest.fixture(scope="module")
def generated() -> CorpusResult:
    return _run(GENERATED)


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


def test_verification_rolls_back_exactly_the_pinned_passes(corpus):
    new, gone = rollback_differences(corpus, pinned_rollbacks())
    problems = [f"new rollback: {line}" for line in new]
    problems += [f"no longer rolled back (remove it from expected_rollbacks.json): {line}" for line in gone]
    assert not problems, (
        "\n".join(problems) + "\n(a new rollback is a pass that broke a model; fix the pass, or, if the rollback is "
        "right, re-pin with python -m tests.conformance.run_corpus --pin)"
    )


def test_the_passes_alone_regress_no_case(passes_alone):
    assert passes_alone.wrong_answers == {}, passes_alone.summary()
    assert passes_alone.crashes == {}, passes_alone.summary()


def test_the_passes_alone_see_every_in_scope_case(passes_alone, corpus):
    assert passes_alone.optimized == corpus.optimized + len(corpus.refused)
    assert passes_alone.changed > 400, passes_alone.summary()


def test_generated_inputs_are_refused_for_few_models(generated):
    assert generated.crashes == {}, generated.summary()
    assert len(generated.refused) <= MAX_GENERATED_INPUT_REFUSALS, generated.summary()
    assert all("\n" not in reason and "--no-verify" in reason for reason in generated.refused.values())


# --- the sabotage check: would the runs above catch a broken pass? --------------------

# Small converted PyTorch modules with weights: fast, and folding runs on each.
_SABOTAGE_SUITES = ("pytorch-converted/", "pytorch-operator/")


def test_a_pass_that_corrupts_weights_is_caught(monkeypatch):
    fold = FoldConstantsPass.call

    def scale_weights(self, model):
        # fold-constants as before, then every float initializer times 1.5: the
        # sabotage that once left every conformance number unchanged.
        fold(self, model)
        for value in model.graph.initializers.values():
            if value.const_value is not None and value.dtype is not None and value.dtype.is_floating_point():
                value.const_value = ir.tensor(value.const_value.numpy() * 1.5, name=value.name)
        return self.result(model, True)

    cases = list(iter_corpus_cases(node=False, names=lambda name: name.startswith(_SABOTAGE_SUITES)))
    monkeypatch.setattr(FoldConstantsPass, "call", scale_weights)
    verified = run_corpus(cases, mode=VERIFIED)
    alone = run_corpus(cases, mode=PASSES_ALONE, verified=verified)  # as the passes_alone fixture runs it
    # Verification hides it from the answers...
    assert verified.wrong_answers == {}
    # ...but not from the pinned rollbacks,
    names = {case.name for case in cases}
    new, _ = rollback_differences(verified, {c: p for c, p in pinned_rollbacks().items() if c in names})
    assert len(new) > 10 and all(line.startswith("fold-constants on ") for line in new), new
    # and the passes alone regress, each regression named after the pass.
    assert len(alone.wrong_answers) > 10, alone.summary()
    assert all(problem.startswith("fold-constants: ") for problem in alone.wrong_answers.values())


def test_the_readme_figures_are_this_run(corpus):
    """README's *Conformance* counts, for the onnx and onnxruntime versions it names (a review found 1,724 "all
    optimized and verified (564 changed)" where 5 were refused and 555 changed)."""
    import re
    from importlib import metadata
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Conformance\n") : readme.index("\n## JSON report\n")]
    versions = re.search(r"With onnx ([\d.]+) and onnxruntime ([\d.]+)", section)
    if (metadata.version("onnx"), metadata.version("onnxruntime")) != versions.groups():
        pytest.skip(f"README's figures are for onnx {versions[1]} and onnxruntime {versions[2]}")

    def number(pattern: str) -> int:
        found = re.search(pattern, section)
        assert found, f"README's Conformance section no longer says {pattern!r}"
        return int(found.group(1).replace(",", ""))

    in_scope = corpus.total - sum(corpus.out_of_scope.values())
    assert number(r"([\d,]+) cases are out of scope") == sum(corpus.out_of_scope.values())
    assert number(r"In (\d+) of the rest ONNX Runtime itself") == len(corpus.ort_disagrees_with_reference)
    assert number(r"of the other ([\d,]+), [\d,]+ are") == in_scope
    assert number(r"([\d,]+) are\s+optimized and verified") == corpus.optimized
    assert number(r"optimized and verified \(([\d,]+) changed\)") == corpus.changed
    assert number(r"; (\d+) are refused in one line") == len(corpus.refused)

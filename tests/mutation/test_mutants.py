"""Proof that verification catches wrong rewrites: every mutant, on every model it applies to, is rolled back.

See ``tests/mutation/mutants.py`` for the catalog and ``tests/mutation/harness.py``
for how each case runs. Each case is its own test; ``test_kill_rate_is_100_percent``
runs any case not yet run and asserts that every one was killed. The per-mutant kill
rate is printed at the end of the run (and written as JSON to
``$GRAPHOPT_MUTATION_REPORT`` when that is set).
"""

from __future__ import annotations

from unittest import mock

import onnx_ir as ir
import pytest

import optimizer.api as api
from optimizer import registry
from optimizer.report import STATUS_FAILED, STATUS_ROLLED_BACK
from tests.mutation.harness import FUSED, KILLED, MODELS, all_cases
from tests.mutation.mutants import MUTANTS

CASES = all_cases()
USED_MODELS = sorted({case.model for case in CASES})


@pytest.mark.parametrize("model", USED_MODELS)
def test_the_default_pipeline_fused_what_the_mutants_target(harness, model):
    fused = {node.op_type for node in ir.load(harness.optimized(model)).graph}
    assert set(FUSED[model]) <= fused, f"{model}: {sorted(set(FUSED[model]) - fused)} missing after the pipeline"


def test_a_mutant_after_the_whole_default_pipeline_on_the_example_is_rolled_back(tmp_path):
    # The cases start from a cached optimized model; this one runs the export through the
    # default pipeline and the mutant in one call, as a user's run would.
    mutant = next(m for m in MUTANTS if m.name == "mask-ignored")
    spec = mutant.spec()
    with mock.patch.object(api, "resolve", lambda names, options: [*registry.resolve(names, options), spec]):
        _, report = api.optimize_with_report(MODELS["encoder"][0], output=tmp_path / "out.onnx")
    *pipeline, last = report.passes
    assert [record.name for record in pipeline] == [spec.name for spec in registry.resolve(None)]
    assert not [record.name for record in pipeline if record.status in (STATUS_ROLLED_BACK, STATUS_FAILED)]
    assert last.name == spec.name and last.status == STATUS_ROLLED_BACK
    assert "output 'last_hidden_state': max abs error" in last.detail


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_mutant_is_rolled_back_with_a_reason(harness, case):
    outcome = harness.run(case)
    assert outcome.verdict == KILLED, outcome.describe()


def test_kill_rate_is_100_percent(harness):
    for case in CASES:
        harness.run(case)
    print(harness.summary())
    missed = [outcome.case.id for outcome in harness.outcomes.values() if outcome.verdict != KILLED]
    assert not missed, f"kill rate {harness.kill_rate():.1%}; not killed: {', '.join(missed)}"

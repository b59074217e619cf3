"""Review s75 xfix3: ids a ``Concat`` joins between values of sizes known only at run time are placed on each input
set by that set's own run (``optimizer.verify._confirmed_widths``), read once a set when the sets are added (at
construction, ``add_input_set``, ``rebase``) and never per check; placed by the first set's run alone, on a set of
other widths they were held by the float tolerance, and one class off there verified."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer import verify
from optimizer.verify import Verifier
from tests.test_review_s73_floatids import _WIDE_X
from tests.test_review_s75_truth import _ids_between


def _set(width: int) -> dict[str, np.ndarray]:
    return {**_WIDE_X, "extra": np.ones((len(_WIDE_X["x"]), width), np.float32)}


@pytest.fixture
def runs(monkeypatch) -> list[int]:
    """The number of sets each ``collect_values`` of the verifier runs, one entry a call."""
    counted: list[int] = []
    collect = verify.collect_values

    def spy(model, names, batches):
        counted.append(len(batches))
        return collect(model, names, batches)

    monkeypatch.setattr(verify, "collect_values", spy)
    return counted


def test_sizes_are_read_once_a_set_when_the_sets_are_added_and_never_per_check(runs):
    verifier = Verifier(_ids_between(None), [_set(3), _set(5)])
    assert runs == [2]  # one run a set, in one call
    runs.clear()
    result = verifier.check(_ids_between(5))
    assert not result.ok
    assert "the ids of output 'out'" in result.first_failure
    assert runs == []


def test_a_set_added_later_places_the_ids_by_its_own_run(runs):
    verifier = Verifier(_ids_between(None), [_set(3)])
    assert verifier.add_input_set(_set(5), "wider")
    assert runs == [1, 1]
    result = verifier.check(_ids_between(5))
    assert not result.ok
    assert "the ids of output 'out'" in result.first_failure and "wider" in result.first_failure


def test_after_a_rebase_the_ids_are_placed_by_each_sets_run_of_the_accepted_model():
    verifier = Verifier(_ids_between(None), [_set(3), _set(5)])
    verifier.rebase(_ids_between(None))
    assert not verifier.check(_ids_between(5)).ok
    assert verifier.check(_ids_between(7)).ok  # no set of width 7: the rewrite is right on both


def test_a_model_without_ids_joined_to_other_values_runs_nothing_more(runs):
    verifier = Verifier(_ids_between(None), [_set(3), _set(5)])
    runs.clear()
    verifier.rebase(_ids_between(None))
    assert runs == [2]
    plain = _ids_between(None)
    plain.graph.outputs[0] = plain.graph.node(3).outputs[0]  # the Relu's output alone: no ids joined
    runs.clear()
    Verifier(plain, [_set(3), _set(5)])
    assert runs == []

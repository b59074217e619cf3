"""Review s72 (docs): every strict xfail added in session 72 names its limit in README.md, where a user reads about
that behaviour (as ``tests/test_review_s71_docs.py`` checks for session 71's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import strict_xfails

_ROOT = Path(__file__).resolve().parent.parent

# Each strict xfail added in session 72, and the README words that name its limit.
_NAMED = {
    "test_a_wholly_other_head_behind_half_the_classes_masked_misses_the_budget": "where half the classes or more are "
    "so masked they still do, a strict xfail in `tests/test_review_s72_late2.py`",
    "test_a_feature_mask_counted_for_a_mean_keeps_the_rows_of_absent_features": "one the graph also counts, dividing "
    "by its sum (a mean over the present features, as a mean pooling divides by its tokens), is still read as padding",
    "test_unnamed_logits_that_no_softmax_normalizes_are_held_by_their_top1": "Logits that no softmax in the graph "
    "normalizes, under a name that says nothing (vtop-auth-lite's CRNN returns `output`), get no top-1",
}


@pytest.fixture(scope="module")
def readme() -> str:
    return " ".join((_ROOT / "README.md").read_text().split())


def test_every_strict_xfail_of_session_72_has_its_words_here():
    assert strict_xfails("test_review_s72_*.py") == set(_NAMED)


@pytest.mark.parametrize("test", sorted(_NAMED))
def test_every_strict_xfail_of_session_72_is_named_in_the_readme(readme, test):
    assert _NAMED[test] in readme, test

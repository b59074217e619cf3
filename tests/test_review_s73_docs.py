"""Review s73 (docs): every strict xfail added in session 73 names its limit in README.md, where a user reads about
that behaviour (as ``tests/test_review_s72_docs.py`` checks for session 72's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import strict_xfails

_ROOT = Path(__file__).resolve().parent.parent

# Each strict xfail added in session 73, and the README words that name its limit.
_NAMED = {
    "test_a_rewrite_wrong_past_a_threshold_computed_from_constants_is_rolled_back": "a threshold computed from "
    "constants by nodes left unfolded (`x > Add(c, c)`: not read as a threshold)",
    "test_a_rewrite_wrong_where_two_float_inputs_are_equal_is_rolled_back": "two float inputs compared for equality "
    "(`Equal(x, y)`: never drawn equal)",
    "test_ids_concatenated_with_scores_one_class_off_are_rolled_back": "Ids concatenated with other floats (a `Concat` "
    "of `Cast(ArgMax)` and scores) are no output of ids",
    "test_float_ids_one_class_off_their_twin_fail_the_twin_check": "An approximate pass's float ids are held to its "
    "twin at the twin's tolerance (not exactly, as its integer ids are",
}


@pytest.fixture(scope="module")
def readme() -> str:
    return " ".join((_ROOT / "README.md").read_text().split())


def test_every_strict_xfail_of_session_73_has_its_words_here():
    assert strict_xfails("test_review_s73_*.py") == set(_NAMED)


@pytest.mark.parametrize("test", sorted(_NAMED))
def test_every_strict_xfail_of_session_73_is_named_in_the_readme(readme, test):
    assert _NAMED[test] in readme, test

"""Review s77 (docs): every strict xfail added in session 77 names its limit in README.md, where a user reads about
that behaviour (as ``tests/test_review_s76_docs.py`` checks for session 76's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import strict_xfails

_ROOT = Path(__file__).resolve().parent.parent

# Each strict xfail added in session 77, and the README words that name its limit.
_NAMED: dict[str, str] = {
    "test_a_part_added_to_its_input_scaled_per_channel_is_scored_on_its_own": (
        "One scale is fitted per batch, not one per channel: a part added to its input scaled per channel"
    ),
    "test_a_branch_on_a_sum_of_three_lengths_is_rolled_back": (
        "A sum of three or more lengths through `Add`s is not followed: no set is drawn where it holds"
    ),
}


@pytest.fixture(scope="module")
def readme() -> str:
    return " ".join((_ROOT / "README.md").read_text().split())


def test_every_strict_xfail_of_session_77_has_its_words_here():
    assert strict_xfails("test_review_s77_*.py") == set(_NAMED)


@pytest.mark.parametrize("test", sorted(_NAMED))
def test_every_strict_xfail_of_session_77_is_named_in_the_readme(readme, test):
    assert _NAMED[test] in readme, test

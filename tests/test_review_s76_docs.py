"""Review s76 (docs): every strict xfail added in session 76 names its limit in README.md, where a user reads about
that behaviour (as ``tests/test_review_s75_docs.py`` checks for session 75's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import strict_xfails

_ROOT = Path(__file__).resolve().parent.parent

# Each strict xfail added in session 76, and the README words that name its limit.
_NAMED: dict[str, str] = {
    "test_a_sliding_window_longer_than_every_generated_length_is_rolled_back": (
        "a decoder's generated sets hold 512 positions at most (a past of 255 and 257 new tokens), so a rewrite wrong "
        "only over a longer context, a `GroupQueryAttention` given a sliding window of 1,024 tokens that the model "
        "does not have, is verified"
    ),
    "test_a_length_between_two_thresholds_the_rewrite_compares_is_verified_at": (
        "Each comparison is held apart: a length between two thresholds whose sides every set holds one at a time is "
        "not drawn"
    ),
    "test_rows_swapped_in_a_max_pooled_bag_of_embeddings_are_rolled_back": (
        "a model that max-pools its tokens' embedding rows still hides such a swap"
    ),
}


@pytest.fixture(scope="module")
def readme() -> str:
    return " ".join((_ROOT / "README.md").read_text().split())


def test_every_strict_xfail_of_session_75_has_its_words_here():
    assert strict_xfails("test_review_s76_*.py") == set(_NAMED)


@pytest.mark.parametrize("test", sorted(_NAMED))
def test_every_strict_xfail_of_session_75_is_named_in_the_readme(readme, test):
    assert _NAMED[test] in readme, test

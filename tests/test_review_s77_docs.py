"""Review s77 (docs): every strict xfail added in session 77 names its limit in README.md, where a user reads about
that behaviour (as ``tests/test_review_s76_docs.py`` checks for session 76's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import strict_xfails

_ROOT = Path(__file__).resolve().parent.parent

# Each strict xfail added in session 77, and the README words that name its limit.
_NAMED: dict[str, str] = {
    "test_a_rewrite_wrong_only_in_a_changed_row_past_the_cap_is_rolled_back": (
        "a rewrite wrong only in a changed row read alone in no set (the fifth of six, halved, in a max-pooled bag) is "
        "verified (a strict xfail in `tests/test_review_s77_late77a.py`)"
    ),
    "test_a_part_added_to_its_input_scaled_per_channel_is_scored_on_its_own": (
        "One scale is fitted per batch, not one per channel: a part added to its input scaled per channel"
    ),
    "test_a_branch_on_a_sum_of_two_lengths_is_rolled_back": (
        "A sum of two inputs' lengths compared with a constant (`Shape(a)[1] + Shape(b)[1] == 7`, the length of their "
        "`Concat`) is not followed: no set is drawn where it holds, and a rewrite's branch there is verified"
    ),
    "test_a_branch_on_a_product_the_first_sets_sizes_do_not_divide_is_rolled_back": (
        "A product of lengths is still looked for at the first set's other sizes: an `Equal` they do not divide "
        "(`Size(x[B, L, C]) == 30` beside 128 tokens) finds no length, no set is drawn where it holds, and a "
        "rewrite's branch there is verified"
    ),
    "test_a_rewrite_wrong_only_where_a_local_function_compares_a_length_is_rolled_back": (
        "A comparison inside a function of the model's own (a call to a model-local function that reads the length) "
        "is not followed either: a rewrite wrong only where it holds (`L == 7` there) is verified"
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

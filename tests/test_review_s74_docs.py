"""Review s74 (docs): every strict xfail added in session 74 names its limit in README.md, where a user reads about
that behaviour (as ``tests/test_review_s73_docs.py`` checks for session 73's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import strict_xfails

_ROOT = Path(__file__).resolve().parent.parent

# Each strict xfail added in session 74, and the README words that name its limit (both of them were fixed in review
# s75 xfix).
_NAMED: dict[str, str] = {}


@pytest.fixture(scope="module")
def readme() -> str:
    return " ".join((_ROOT / "README.md").read_text().split())


def test_every_strict_xfail_of_session_74_has_its_words_here():
    assert strict_xfails("test_review_s74_*.py") == set(_NAMED)


@pytest.mark.parametrize("test", sorted(_NAMED))
def test_every_strict_xfail_of_session_74_is_named_in_the_readme(readme, test):
    assert _NAMED[test] in readme, test

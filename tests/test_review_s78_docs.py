"""Review s78 (docs): every strict xfail added in session 78 names its limit in README.md, where a user reads about
that behaviour (as ``tests/test_review_s77_docs.py`` checks for session 77's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import strict_xfails

_ROOT = Path(__file__).resolve().parent.parent

# Each strict xfail added in session 78, and the README words that name its limit.
_NAMED: dict[str, str] = {}


@pytest.fixture(scope="module")
def readme() -> str:
    return " ".join((_ROOT / "README.md").read_text().split())


def test_every_strict_xfail_of_session_78_has_its_words_here():
    assert strict_xfails("test_review_s78_*.py") == set(_NAMED)


@pytest.mark.parametrize("test", sorted(_NAMED))
def test_every_strict_xfail_of_session_78_is_named_in_the_readme(readme, test):
    assert _NAMED[test] in readme, test

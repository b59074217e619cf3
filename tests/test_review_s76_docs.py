"""Review s76 (docs): every strict xfail added in session 76 names its limit in README.md, where a user reads about
that behaviour (as ``tests/test_review_s75_docs.py`` checks for session 75's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import strict_xfails

_ROOT = Path(__file__).resolve().parent.parent

# Each strict xfail added in session 76, and the README words that name its limit.
_NAMED: dict[str, str] = {
    "test_a_relative_tables_last_row_is_read": "A relative table is not reached so: DeBERTa's `rel_embeddings`",
    "test_a_legacy_roformers_sinusoidal_table_is_read_to_its_last_row": (
        "The legacy exporter's RoFormer reads its sinusoidal table's length off the embeddings' output, "
        "`Shape(LayerNorm(words + token types))[1]`, which is not followed: its table gets no set at its end, so a "
        "rewrite wrong only in its last row is verified"
    ),
}


@pytest.fixture(scope="module")
def readme() -> str:
    return " ".join((_ROOT / "README.md").read_text().split())


def test_every_strict_xfail_of_session_76_has_its_words_here():
    assert strict_xfails("test_review_s76_*.py") == set(_NAMED)


@pytest.mark.parametrize("test", sorted(_NAMED))
def test_every_strict_xfail_of_session_76_is_named_in_the_readme(readme, test):
    assert _NAMED[test] in readme, test

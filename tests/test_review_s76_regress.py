"""Review s76 regress: what session 76's verification changes (12ca00c..479cc98) do to the real models together.

Every fixture, the example encoder, PP-OCR's classifier and MiniLM-L3 were optimized at both commits
(``docs/benchmarks.md``, "What session 76's verification costs"): no pass changed status and no note or warning
moved. The one set that did move is MiniLM's table end, from 2 tokens to 512: its 2-row ``token_type_embeddings``
(behind a buffer of zeros sliced to the length) was taken for the position table, so the last row of
``position_embeddings`` (row 511) was never read. This keeps that on the real export.

Found reading the per-pass walks those runs time: ONNX's own ``RotaryEmbedding`` (opset 23) at ``position_ids``
counted from the mask's length got no decode step at its changed rows (``counted_position_rows``). Review s76 late76f
found and fixed the same; its test in ``test_review_s76_late76f.py`` (an ONNX rotary cache read at positions the mask
counts, read to its last row) is this review's too: the two were the same graph and the same mutant.
"""

from __future__ import annotations

import onnx_ir as ir
import pytest

from optimizer.compared_inputs import position_table_lengths
from tests.real_models import MINILM_MISSING, minilm_path

MINILM = minilm_path()


@pytest.mark.skipif(MINILM is None, reason=MINILM_MISSING)
def test_minilm_table_end_is_its_position_tables_last_row_not_the_token_types():
    lengths = position_table_lengths(ir.load(MINILM))
    assert lengths == {"sequence_length": 512}  # {'sequence_length': 2} before late76c: the token-type table's end

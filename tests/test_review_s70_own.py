"""Session 70's own fixes, each a test that failed before it.

1. ``optimize --compare --generate`` asked for more tokens than a decoder's position table holds (GPT-2's 128
   positions: ``--prompt-length 120 --new-tokens 16``, or held-out text longer than the table) optimized the model
   and wrote it, then refused the comparison (exit 2): ``check_before_optimizing`` now runs BEFORE's longest steps
   first, as ``--generate`` will, and refuses in one line before any work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests._cli_models import run_cli
from tests.helpers import FIXTURES

GPT2 = str(FIXTURES / "gpt2_kv_legacy.onnx")  # a learned position table of 128 rows


@pytest.mark.parametrize("asked", ["steps", "text"])
def test_optimize_compare_generate_past_the_position_table_writes_nothing(tmp_path: Path, capsys, asked: str) -> None:
    output = tmp_path / "out.onnx"
    flags = ["--prompt-length", "120", "--new-tokens", "16"]
    if asked == "text":
        text = tmp_path / "text.npz"
        np.savez(text, input_ids=np.random.default_rng(0).integers(0, 200, (1, 140)).astype(np.int64))
        flags = ["--prompt-length", "8", "--new-tokens", "4", "--inputs", str(text)]
    code, _, err = run_cli(["optimize", GPT2, "-o", str(output), "--compare", "--generate", *flags, "-q"], capsys)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert f"at {129 if asked == 'steps' else 140} tokens" in err and "position table" in err, err
    assert not output.exists(), "the model was optimized and written before the comparison was refused"

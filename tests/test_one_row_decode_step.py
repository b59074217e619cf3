"""A decoder given inputs of several rows only is verified at a one-row decode step too (``_add_decode_step``).

A chat runs one row, one new token, every step; a kernel may take another path there. Generated inputs hold a
one-row step; inputs a user gives at batch 2 held none, and a rewrite wrong only at one row and one token was
verified on them."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import optimizer.api as api
from tests._tiny_lm import VOCAB, WIDTH, build, verifier_optimize_builds
from tests.test_review_s64_llmacc import _wrong_where


def _two_rows(past: int = 6, new: int = 3) -> dict[str, np.ndarray]:
    """Inputs of two rows with a past, the first row left-padded by two positions."""
    rng = np.random.default_rng(3)
    mask = np.ones((2, past + new), np.int64)
    mask[0, :2] = 0
    positions = np.cumsum(mask, axis=1)[:, past:] - 1
    cache = {
        f"past_key_values.0.{kind}": rng.standard_normal((2, 1, past, WIDTH)).astype(np.float32)
        for kind in ("key", "value")
    }
    ids = rng.integers(1, VOCAB, (2, new)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions.astype(np.int64), **cache}


@pytest.fixture(scope="module")
def two_row_verifier(tmp_path_factory):
    path = build(tmp_path_factory.mktemp("rows") / "tiny.onnx")
    return verifier_optimize_builds(path, inputs=_two_rows()), path


def test_inputs_of_two_rows_get_a_one_row_decode_step(two_row_verifier):
    verifier, _ = two_row_verifier
    alone = [(label, inputs) for label, inputs in zip(verifier.labels, verifier.input_sets) if "of one row" in label]
    assert len(alone) == 1, verifier.labels
    label, inputs = alone[0]
    assert inputs["input_ids"].shape == (1, 1) and inputs["past_key_values.0.key"].shape[0] == 1, label
    # The row that pads part of its past (row 1 here), so that a mask dropped at one token shows too.
    assert "row 1 of" in label and inputs["attention_mask"][0, :2].tolist() == [0, 0], label


def test_a_rewrite_wrong_only_at_a_one_row_step_is_not_verified_on_inputs_of_two_rows(two_row_verifier, tmp_path):
    verifier, source = two_row_verifier
    assert verifier.check(ir.load(str(source))).ok
    wrong = ir.load(_wrong_where(tmp_path / "wrong.onnx", "one_row_step", source))
    assert not verifier.check(wrong).ok, verifier.labels


def test_a_model_that_fixes_its_batch_gets_no_cut_row(tmp_path):
    layout = api.recognise_causal_lm(model := ir.load(str(build(tmp_path / "tiny.onnx"))))
    model.graph.inputs[0].shape = ir.Shape([2, "sequence"])
    assert api._one_row(model, layout, _two_rows(), 0) is None

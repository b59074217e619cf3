"""Review s71 (branch): a branch verification never ran while the report said "verified". Each test failed before.

1. Fixed: Silero VAD's ``If(Equal(sr, 16000))``: generated inputs hold ``sr`` at 16000 in alternate sets, but the model
   refuses that with the 128 samples drawn (its 16 kHz STFT ``Conv`` needs 256 or more), so ``sr`` was left drawn off
   16000 in every set: only the 8 kHz branch was verified, a rewrite wrong in the 16 kHz one was applied, and the
   report said nothing. Verification now adds a set holding such a refused constant with the unnamed dims past the
   first axis and the default length dims drawn 2, then 4 times as long (``_add_longer_compared_constants``).
2. Fixed (honesty): a compared constant no verification set holds even so (or the other branch of an input compared
   with one value, where every set holds it) is named in a report note, which says the branch it selects was not
   verified and to pass real inputs with ``--inputs``.
3. Kept (the fix's own regression, caught before it landed): under ``--static-shapes`` a named length dim is fixed at
   the first set's size, so the longer set draws the unnamed dims alone; drawn longer, ``bind-dims`` was rolled back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from optimizer import api
from optimizer.pipeline import STATUS_APPLIED, STATUS_ROLLED_BACK
from tests.helpers import optimize_with_rewrite
from tests.test_review_s71_silero import _sr_branches


def _unverified_notes(model) -> list[str]:
    _, report = api.optimize_with_report(model, ["remove-identity"])
    assert report.verified
    return [w for w in report.warnings if "was not verified" in w]


def _break_16k_branch(model: ir.Model) -> None:
    """The 16 kHz branch's kernel doubled: wrong only where ``sr`` is 16000."""
    branch = next(node for node in model.graph if node.op_type == "If").attributes["then_branch"].as_graph()
    kernel = next(node for node in branch if node.op_type == "Constant")
    doubled = kernel.attributes["value"].as_tensor().numpy() * 2
    kernel.attributes["value"] = ir.AttrTensor("value", ir.tensor(doubled.astype(np.float32)))


def _keep(model: ir.Model) -> None:
    model.graph.name = "renamed"


def test_a_rewrite_wrong_in_the_branch_refused_at_generated_lengths_is_rolled_back(tmp_path: Path):
    # Before: every set held 128 samples with sr off 16000; the doubled 16 kHz kernel was applied as verified.
    report = optimize_with_rewrite(_sr_branches(), _break_16k_branch, tmp_path)
    assert report.passes[0].status == STATUS_ROLLED_BACK, (report.passes[0].detail, report.input_sets)
    assert any("'sr' at 16000 held at longer lengths (input [1, 256]" in label for label in report.input_sets)
    assert not [w for w in report.warnings if "was not verified" in w], report.warnings


def test_a_correct_rewrite_of_that_model_still_verifies(tmp_path: Path):
    record = optimize_with_rewrite(_sr_branches(), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def test_a_compared_constant_refused_at_every_length_is_said_unverified():
    # 1024 samples at least: refused at 128, 256 and 512.
    notes = _unverified_notes(_sr_branches(width_16k=1024))
    assert len(notes) == 1, notes
    assert "'sr' at 16000" in notes[0] and "--inputs" in notes[0], notes


def test_the_other_branch_refused_at_every_length_is_said_unverified():
    # Every set holds sr at 16000 where the model refuses the 8 kHz branch at each length tried.
    notes = _unverified_notes(_sr_branches(width_16k=64, width_8k=1024))
    assert len(notes) == 1 and "'sr' other than 16000" in notes[0], notes


def test_no_longer_set_nor_note_where_both_branches_run():
    # The 16 kHz branch framed by 64 samples: the 128 drawn run both branches.
    _, report = api.optimize_with_report(_sr_branches(width_16k=64), ["remove-identity"])
    assert not any("longer lengths" in label for label in report.input_sets), report.input_sets
    assert not [w for w in report.warnings if "was not verified" in w], report.warnings


def test_static_shapes_are_not_rolled_back_by_a_longer_set():
    # --static-shapes fixes a named samples dim at 128: a set holding sr at 16000 with 256 samples would roll
    # bind-dims back (the result takes 128 alone); the branch is said unverified instead.
    model = _sr_branches()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "samples"
    _, report = api.optimize_with_report(model, static_shapes=True)
    assert [p.status for p in report.passes if p.name == "bind-dims"] == [STATUS_APPLIED], report.passes
    assert not any("longer lengths" in label for label in report.input_sets), report.input_sets
    assert any("'sr' at 16000" in w and "was not verified" in w for w in report.warnings), report.warnings

"""Hostile review of 6deb0fe (``Twin.unrounded``, ``Verifier._unrounded`` in ``optimizer/verify.py``), 3b64803
(``_spread_batches``, ``Verifier.refuse_unrunnable_samples``) and b32c757 (generated index inputs in
``optimizer/inputs.py``: contracting ops, per-component lows, bound Shape dims, Slice/Tile).

Findings, worst first (1 and 2 fixed since as suggested; 3 fixed since: the quotient's bounds are
mapped back through the division, ``_through_division``):
1. (6deb0fe) A wrong int4 result is verified. With ``--int4-outlier-channels`` at level 4, ``twin_layer(...,
   rounded_inputs=False)`` skips the whole ``if self._level(layer) == 4 and rounded_inputs`` block, so the
   unrounded twin's layer reads its input *with* the outlier channels, yet ``_extra_inputs``/``_corrected`` still
   add those channels' product again (``_correction_table`` holds their stored rows): they count twice. A result
   with the same fault (its ``..._outliers_zeroed`` Mul bypassed, MatMulNBits at level 0; logits 0.17 from the
   float model where the correct result's are 0.08) fails its level-4 twin, is bit-identical to itself at level
   0, and ``Verifier._unrounded`` verifies it with max |Δ| 4.8e-7 against "the twin without input rounding". The
   other way round, the correct level-0 result differs from that twin by 0.14 on the logits, so the rescue can
   never apply to a result with outlier channels. Suggested fix (tried in a worktree: both tests pass,
   tests/passes/quantization/test_int4*.py and test_review_systematic*.py pass, 104 tests): zero the split
   channels whenever the layer is level 4 and only skip ``_quantize_input_blocks`` without ``rounded_inputs``
   (the correct level-0 result then equals the unrounded twin bit for bit on llama_kv_legacy).
2. (6deb0fe) ``Twin.unrounded`` is not reentrant: the factory passes ``spare`` itself to ``_twin``, whose
   ``Int8Twin`` writes into it, so a second call builds on the first twin's graph. With outlier channels or
   block offsets (``method="hqq"``) the second twin is an invalid model ("two nodes with same node name
   '...MatMul.twin_outliers_0'" / "...twin_block_sums_0"): any caller that checks a ``PassResult`` twice (the
   API, a retried check) gets "its twin cannot run" and a rollback. Suggested fix: ``self._twin(spare.clone(),
   ...)`` (tried: the test passes). Without outliers or offsets the second call happens to be the same (612
   nodes, outputs equal).
3. (b32c757) ``_contracts`` follows ``Div`` by a scalar constant >= 1 as keeping an index drawn within the table
   within it. That holds only where the drawn interval starts at 0: ``Div`` moves values toward 0, so where the
   path after it offsets the index (``Div(idx, 2) - 10`` into 4 rows: ``_affine_interval`` draws 10..13, which
   ``Div`` makes 5..6, then -5..-4) or negates it (``10 - Div(idx, 2)``: 7..10 drawn, indices 5..7) the input
   model fails on its own generated inputs ("ONNX Runtime cannot run the input model on generated inputs";
   12..27 would fit). Before b32c757 the same graph failed too (idx drawn in {0, 1}), so this is a claim the
   commit makes that does not hold, not a regression. Suggested fix: follow Div as contracting only where the
   mapping after it is the identity (no offset, positive scale), or map the interval through the division
   (draw ``[c * low, c * high)``).

What held (2026-12-02, onnxruntime as installed, 2 shared cores):
- Without outlier channels or offsets, ``Twin.unrounded`` twice gives the same twin (test below); RTN, GPTQ and
  HQQ unrounded twins (first call) equal their result at level 0 bit for bit on llama_kv_legacy (0.0).
- A level-0 result with a wrong scale (llama_kv_legacy int4 level 4, every MatMulNBits at level 0, layer 0's
  up_proj scales x1.002..1.02 in a quarter or all rows), forced segment check: the new path and the old
  (``unrounded=None``) give the same verdict at every size (0.2 % on all rows and 1 % on a quarter rolled back,
  0.5 % on a quarter passes both); ``check_twin`` end to end passes even 1 % on all rows with or without it
  (the int4 tolerance, not this commit). The unrounded twin has the int4 tolerance (rtol 5e-3, atol 5e-4) and no
  rounding noise; a result whose kernels are not MatMulNBits passes the bit-identity test trivially and is then
  held to the float-input twin, which is what it computes. The report's line is written once (pipeline:
  ``twin_unrounded`` replaces the line, the segment clause is appended); the outlier note is not repeated
  (guarded by ``rounded_inputs``).
- A result that holds bit-identity on input set 1 only (level 4 whose inputs happen to be exact in int8)
  would be held to the unrounded twin on every set: a correct rounding result then risks rollback, not a
  wrong one acceptance (not reproduced: no fixture rounds exactly on set 1).
- Calibration data the original cannot run in a later batch (bert_legacy, one id 10**6 in sample 40 of 64,
  batch 3 of 16), CLI ``graphopt optimize --calibration cal.npz`` with prune-ffn, quantize-static,
  quantize-int4 and quantize-dynamic (which never runs the samples itself): every one exits 2 with one
  'error: ONNX Runtime cannot run the original model on the calibration samples (batch 3: ...)' line and
  writes no output file (test below for quantize-dynamic).
- ``refuse_unrunnable_samples`` with no samples (an exact pass's verifier) or generated samples returns at
  once. A fixed batch of 4 with 10 samples (or 3 with 64) is refused up front ("give a multiple of 4"); a
  fixed batch of 1 with 5 samples: applied. After the InputSpecError from a default pipeline with
  ``quantize="dynamic"``, the caller's model is unchanged (281 nodes). ``_spread_batches``: 1,000 batches of
  1 sample -> 64 batches, first and last included; 1,000 of 16
  -> 4; a single batch -> [0]; no batches -> [] (test below).
- Index inputs: ``Max(idx, 3)`` and ``Tile(idx, [1, 2])`` into 16 rows, ``Min(idx, 5) - 20`` into 16 rows
  run (Min/Max leave the drawn interval or fix a constant that is out of range for every input anyway).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.errors import RuntimeRefusedError
from optimizer.inputs import make_inputs
from optimizer.verify import Verifier, _spread_batches
from passes.quantization.int4 import Int4QuantizationPass
from tests._cli_models import run_cli
from tests.helpers import index_model as _model
from tests.helpers import refusal as _refusal
from tests.helpers import run

FIXTURES = Path(__file__).parent / "fixtures"


# -- b32c757: contracting ops -------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["i = Sub(h, off)", "i = Sub(off, h)"], ids=["offset", "negated"])
def test_a_division_before_an_offset_keeps_generated_indices_in_the_table(body):
    model = _model(
        "(int64[1, 8] idx) => (float[1, 8, 4] y)",
        f"h = Div(idx, two)\n{body}\ny = Gather(T, i)",
        {"T": (4, 4)},
        {"two": 2, "off": 10},
    )
    assert _refusal(model, {"idx": np.full((1, 8), 24, np.int64)}) is None  # inputs that fit exist
    inputs = make_inputs(model)
    assert _refusal(model, inputs) is None, inputs["idx"].tolist()


@pytest.mark.parametrize(
    ("body", "constants"),
    [
        ("h = Max(idx, c)\ny = Gather(T, h)", {"c": 3}),
        ("h = Min(idx, c)\ni = Sub(h, off)\ny = Gather(T, i)", {"c": 5, "off": 20}),
        ("h = Tile(idx, reps)\ny = Gather(T, h)", {"reps": [1, 2]}),
    ],
    ids=["max", "min-offset", "tile"],
)
def test_min_max_and_tile_keep_generated_indices_in_the_table(body, constants):
    out = "float[1, 16, 4]" if "Tile" in body else "float[1, 8, 4]"
    model = _model(f"(int64[1, 8] idx) => ({out} y)", body, {"T": (16, 4)}, constants)
    assert _refusal(model, make_inputs(model)) is None


# -- 6deb0fe: the twin without input rounding ----------------------------------------------------------------


def _level4():
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    feeds = make_inputs(model, seed=0)
    calibration = {k: np.concatenate([make_inputs(model, seed=s)[k] for s in (4, 5)]) for k in feeds}
    return model, feeds, Int4QuantizationPass(samples=calibration, accuracy_level=4)(model.clone())


def test_the_unrounded_twin_is_the_same_when_built_twice():
    model, feeds, result = _level4()
    first, second = result.twin.unrounded(), result.twin.unrounded()
    assert first.kind == second.kind == "int4-float"
    assert len(list(first.model.graph)) == len(list(second.model.graph))
    a, b = run(first.model, feeds), run(second.model, feeds)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def _level4_outliers():
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    feeds = make_inputs(model, seed=0)
    calibration = {k: np.concatenate([make_inputs(model, seed=s)[k] for s in (4, 5)]) for k in feeds}
    result = Int4QuantizationPass(samples=calibration, accuracy_level=4, outlier_channels=4)(model.clone())
    assert result.twin.unrounded is not None
    assert sum(1 for n in result.model.graph if n.name.endswith("_outliers_zeroed")) == 2
    return model, feeds, result


def test_a_result_that_counts_its_outlier_channels_twice_is_not_verified_through_the_unrounded_twin():
    model, feeds, result = _level4_outliers()
    wrong = result.model.clone()
    for node in list(wrong.graph):
        if node.op_type == "MatMulNBits":  # level 0: bit-identical to itself at level 0
            node.attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", 0)
        if node.name.endswith("_outliers_zeroed"):  # the kernel reads the outlier channels, then they are added again
            for user, index in list(node.outputs[0].uses()):
                if user.op_type == "MatMulNBits":
                    user.replace_input_with(index, node.inputs[0])
    original, correct, broken = (run(m, feeds)["logits"] for m in (model, result.model, wrong))
    assert np.abs(broken - original).max() > 2 * np.abs(correct - original).max()  # wrong: 0.17 against 0.08
    verdict = Verifier(model, [feeds, make_inputs(model, seed=1)]).check_twin(wrong, result.twin)
    assert not verdict.ok, f"verified: {verdict.twin_description}; max |Δ| {verdict.twin_error:.1e}"


def test_the_unrounded_twin_with_outlier_channels_can_be_built_twice():
    model, feeds, result = _level4_outliers()
    first = run(result.twin.unrounded().model, feeds)
    try:
        second = run(result.twin.unrounded().model, feeds)
    except RuntimeRefusedError as error:  # two nodes named '...down_proj/MatMul.twin_outliers_0'
        raise AssertionError(str(error)[:300]) from error
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


# -- 3b64803: calibration batches ----------------------------------------------------------------------------


def test_spread_batches_count_samples():
    def holds(name, array):
        return True

    def batches(count, size):
        return [{"x": np.zeros((size, 2), np.float32)} for _ in range(count)]

    ones = _spread_batches(batches(1000, 1), 64, holds)
    assert len(ones) == 64 and ones[0] == 0 and ones[-1] == 999
    assert len(_spread_batches(batches(1000, 16), 64, holds)) == 4
    assert _spread_batches(batches(1, 16), 64, holds) == [0]
    assert _spread_batches([], 64, holds) == []


def test_no_samples_no_refusal():
    model = ir.load(FIXTURES / "bert_legacy.onnx")
    Verifier(model, [make_inputs(model, seed=0)]).refuse_unrunnable_samples()


def test_calibration_the_original_cannot_run_stops_the_cli_with_one_line(tmp_path, capsys):
    model = ir.load(FIXTURES / "bert_legacy.onnx")
    calibration = make_inputs(model, {"batch": 64, "sequence": 8}, seed=5)
    calibration["input_ids"][40, 3] = 10**6  # batch 3 of 16
    np.savez(tmp_path / "cal.npz", **calibration)
    out = tmp_path / "out.onnx"
    argv = ["optimize", FIXTURES / "bert_legacy.onnx", "-o", out, "--passes", "quantize-dynamic"]
    code, _, err = run_cli([*argv, "--calibration", tmp_path / "cal.npz"], capsys)
    assert code == 2 and not out.exists()
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "cannot run the original model on the calibration samples (batch 3" in errors[0]

"""Review s45, more (22dde18 and today's README): the decode step beside given one-token steps, the up-front
``--static-shapes`` batch check, streamed chunks feeding different whole inputs, and the README's new claims.

All four findings are fixed (their tests pass): the decode step is cut after the padded copy is added; generated
samples are cut or repeated to a multiple of --static-shapes' batch; the --dim conflict is named first; a fixed
batch's zero-filled token type ids take as many rows as the given arrays hold.

Findings, worst first (each an xfail below, failing today):

1. A wrong model reported verified where ``dims`` (``--dim``) fix every dim of a decoder with a cache, without
   ``--static-shapes``: ``_add_second_binding`` adds nothing (no free dim), so ``_add_decode_step`` cuts the step
   from set 1, which is unpadded; the padded copy that pads a past comes from ``_ensure_padding``, which runs
   *after* the step is cut, and is a set of 4 new tokens. The mask mutant of tests/test_review_s45_decode_step.py
   (drops the mask where one token is fed) is *applied* on llama_kv_legacy and gpt2_kv_dynamo with
   ``dims={"batch": 2, "sequence": 4, "past_sequence": 4, "total_sequence": 8}`` (generated inputs), and with
   the same dims beside unpadded user ``inputs=`` of those shapes. Leave ``total_sequence`` free and a padded
   second binding is added: the same mutant is rolled back (logits max |Δ| 0.241 "on a decode step: set 2's
   past of 4"). Cut the step after ``_ensure_padding`` (or from its padded copy).
2. False rollback of asked-for approximate passes, ``--strict`` exit 3: ``--static-shapes --dim batch=3`` with
   no ``--calibration``. The generated samples are 16 along the batch (``_GENERATED_SAMPLES``) whatever batch
   ``--static-shapes`` binds, so the verifier's last sample batch holds 1 row and ONNX Runtime refuses it on the
   static result: quantize-static and prune-ffn on bert_legacy, and quantize-static on the CLI's matmul model, are
   rolled back with "ONNX Runtime cannot run the result: ... Got: 1 Expected: 3" (blaming the pass for our own
   data). With ``--dim batch=4`` (16 = 4 x 4) the same passes apply. Generated samples should be a multiple of the
   bound batch (e.g. 15 or 18 at batch 3).
3. Misleading refusal order: ``--static-shapes --dim batch=4`` with ``inputs=`` of batch 2 and 5 calibration
   samples is refused as "--calibration: 5 samples, and --static-shapes fixes the batch at 2: give a multiple of
   2" -- the user asked for 4, and the real mistake (inputs contradict --dim, refused by ``refuse_dims_unlike``
   when the count is even) is not named. Check the dims against the inputs before the count.
4. (Pre-existing, found on the way through ``SampleData``.) A model that fixes its batch at 2 with a zero-fillable
   ``token_type_ids [2, 4]``: calibration of 4 samples (a multiple of 2, which the README asks for) that leaves
   token_type_ids out is refused, "'x' holds 4 samples along axis 0 and 'token_type_ids' 2": the zero fill takes
   the model's fixed batch, not the chunk's rows. Given (as zeros [4, 4]) it is accepted.

Smaller notes (no test): ``_refuse_partial_static_batch`` names in-memory calibration "--calibration" in the Python
API, where every other refusal of the same data says "calibration"; a Conv refused behind an unnamed
Concat/Split/Transpose reads "through Concat ()" (empty parentheses), and refusals are keyed by node name or op
type, so two unnamed refused Convs collapse into one entry.

What held:
- ``len(SampleData.batches(size))`` equals the batches iterated for 300 random chunkings (1-7 feed dicts as a list
  and as a generator; symbolic batch and fixed batch 1 and 2; whole ``s [4]`` that differ or agree between chunks;
  a zero-fillable token_type_ids given in some chunks and filled in others; sizes 1-5 and 16).
- The decode step with user inputs, default pipeline, statuses identical with and without the step:
  llama_kv_optimum (batch 3 left-padded with a wholly padded step row; batch 2 right-padded 3 of 4 new tokens),
  gpt2_kv_legacy (batch 3 one-token unpadded step; batch 2 with row 1's whole past padded), llama_kv_dynamo (batch 1
  one-token step; batch 3 left-padded), llama_kv_genai (batch 1 past 4 + 4 left-padded; batch 3 one-token step
  left-padded; past 0). llama_kv_genai's mask is [batch_size, total_sequence_length] (2-D, positions); its
  GroupQueryAttention refuses batch > 1 with several new tokens after a past, which the original-run check reports
  up front. Float and bool masks for these int64-mask fixtures are refused by ``check_inputs`` in one line.
- ``_refuse_partial_static_batch``: ``--no-verify`` with ``--dim batch=2`` and 5 samples is refused (exit 2 on the
  CLI, one line); ``--dim batch=4`` with 8 or 20 samples runs prune-ffn on bert_legacy (applied, held-out split in
  whole batches); ``--dim batch=1`` never refuses; with ``--no-verify`` ``--inputs`` is refused as useless.
- README: the FFN/Conv walks name Concat/Split/Transpose between Convs; budgeted quantization holds out of ranges,
  SmoothQuant and ranking and checks on the held-out samples (``passes/quantization/_base.py``,
  ``Verifier.check_approximation``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import optimizer
from optimizer.errors import InputSpecError
from optimizer.generation import recognise_causal_lm
from optimizer.inputs import bind_dims, make_inputs
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from optimizer.samples import open_samples
from tests._cli_models import run_cli, save_matmul_model
from tests.helpers import FIXTURES
from tests.test_review_s45_decode_step import _IgnoreMaskAtOneTokenPass
from tests.test_review_s45_fixes import _with_a_whole_input
from tests.test_verification_holes import _with_mutant

BERT = FIXTURES / "bert_legacy.onnx"
EVERY_DIM = {"batch": 2, "sequence": 4, "past_sequence": 4, "total_sequence": 8}


def _unpadded(model: ir.Model, *, batch: int, past: int, new: int) -> dict[str, np.ndarray]:
    layout = recognise_causal_lm(model)
    rng = np.random.default_rng(0)
    given = {
        layout.input_ids: rng.integers(0, 100, (batch, new)).astype(layout.ids_dtype),
        layout.attention_mask: np.ones((batch, past + new), layout.mask_dtype),
        layout.position_ids: np.tile(np.arange(past, past + new), (batch, 1)).astype(layout.positions_dtype),
    }
    for pair in layout.cache:
        shape = [batch if a == 0 else past if a == pair.sequence_axis else d for a, d in enumerate(pair.shape)]
        given[pair.past] = rng.standard_normal(shape).astype(pair.dtype)
    return given


def _mask_mutant(monkeypatch, fixture: str, **options):
    _with_mutant(monkeypatch, "ignore-mask-at-one-token", _IgnoreMaskAtOneTokenPass, approximate=False)
    _, report = optimizer.optimize_with_report(
        ir.load(FIXTURES / f"{fixture}.onnx"), passes=["remove-identity"], **options
    )
    record = report.passes[-1]
    assert record.name == "ignore-mask-at-one-token"
    return record


# -- 1. every dim fixed by dims: the step is cut before the padded copy exists --------------------------------------


@pytest.mark.parametrize("fixture", ["llama_kv_legacy", "gpt2_kv_dynamo"])
def test_a_mask_dropped_at_one_token_is_caught_with_every_dim_fixed(monkeypatch, fixture):
    record = _mask_mutant(monkeypatch, fixture, dims=EVERY_DIM)
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_a_mask_dropped_at_one_token_is_caught_beside_user_inputs_and_every_dim(monkeypatch):
    inputs = _unpadded(ir.load(FIXTURES / "llama_kv_legacy.onnx"), batch=2, past=4, new=4)
    record = _mask_mutant(monkeypatch, "llama_kv_legacy", dims=EVERY_DIM, inputs=inputs)
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_control_one_free_dim_gives_a_padded_second_binding_and_catches_it(monkeypatch):
    dims = {name: size for name, size in EVERY_DIM.items() if name != "total_sequence"}
    record = _mask_mutant(monkeypatch, "llama_kv_legacy", dims=dims)
    assert record.status == STATUS_ROLLED_BACK and "a decode step" in record.detail, record.detail


# -- 2. generated samples under --static-shapes: 16, whatever the bound batch -------------------------------------


def test_generated_samples_fill_the_static_batch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save_matmul_model(Path("m.onnx"))
    argv = ["optimize", "m.onnx", "-o", "o.onnx", "--static-shapes", "--dim", "batch=3", "--quantize", "static"]
    code, out, err = run_cli([*argv, "--strict", "-q"], capsys)
    assert "cannot run the result" not in out + err
    assert code == 0, err


def test_generated_samples_do_not_roll_back_prune_ffn_at_a_static_batch_of_3():
    _, report = optimizer.optimize_with_report(
        ir.load(BERT), static_shapes=True, dims={"batch": 3, "sequence": 16}, prune_ffn=0.3
    )
    record = next(record for record in report.passes if record.name == "prune-ffn")
    assert record.status == STATUS_APPLIED, record.detail


def test_control_generated_samples_at_a_static_batch_of_4_apply(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save_matmul_model(Path("m.onnx"))
    argv = ["optimize", "m.onnx", "-o", "o.onnx", "--static-shapes", "--dim", "batch=4", "--quantize", "static"]
    code, _, err = run_cli([*argv, "--strict", "-q"], capsys)
    assert code == 0, err


# -- 3. the count is checked against the inputs' batch before the inputs against --dim ----------------------------


def test_inputs_contradicting_dim_are_named_before_the_calibration_count():
    model = ir.load(BERT)
    inputs = make_inputs(model, {**bind_dims(model), "batch": 2, "sequence": 16}, seed=0)
    calibration = make_inputs(model, {**bind_dims(model), "batch": 5, "sequence": 16}, seed=3)
    with pytest.raises(InputSpecError, match="batch=4"):
        optimizer.optimize_with_report(
            ir.load(BERT), static_shapes=True, dims={"batch": 4}, inputs=inputs, calibration=calibration, prune_ffn=0.3
        )


def test_cli_refuses_a_partial_static_batch_in_one_line_even_unverified(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save_matmul_model(Path("m.onnx"))
    np.savez("cal.npz", x=np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32))
    base = ["optimize", "m.onnx", "-o", "o.onnx", "--static-shapes", "--dim", "batch=4", "--calibration", "cal.npz"]
    for extra in ([], ["--no-verify"]):
        code, _, err = run_cli([*base, "--quantize", "static", *extra], capsys)
        assert code == 2 and "--static-shapes fixes the batch at 4: give a multiple of 4" in err, err
        assert len(err.strip().splitlines()) == 1 and not Path("o.onnx").exists()


# -- 4. (pre-existing) a zero-filled token_type_ids takes the model's fixed batch, not the chunk's rows -------------


def _fixed_batch_with_token_types(batch: int) -> ir.Model:
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["token_type_ids"], ["types"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["x", "types"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4]),
            helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, [batch, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_calibration_of_two_fixed_batches_without_token_types_is_accepted():
    data = open_samples({"x": np.ones((4, 4), np.float32)}, _fixed_batch_with_token_types(2))
    assert data.count == 4


def test_control_calibration_with_token_types_given_is_accepted():
    model = _fixed_batch_with_token_types(2)
    data = open_samples({"x": np.ones((4, 4), np.float32), "token_type_ids": np.zeros((4, 4), np.int64)}, model)
    assert data.count == 4 and len(data.batches(2)) == sum(1 for _ in data.batches(2)) == 2


# -- what held: len() of streamed batches agrees with iteration ----------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
def test_batch_count_agrees_with_iteration_over_whole_inputs_that_differ_or_agree(streamed):
    model = _with_a_whole_input()
    rng = np.random.default_rng(1)
    for _ in range(20):
        items = [
            {
                "x": rng.standard_normal((int(rng.integers(1, 4)), 4)).astype(np.float32),
                "s": np.full(4, float(rng.integers(0, 2)), np.float32),
            }
            for _ in range(int(rng.integers(1, 7)))
        ]
        data = open_samples((item for item in items) if streamed else items, model)
        for size in (1, 2, 3, 5, 16):
            batches = data.batches(size)
            seen = list(batches)
            assert len(batches) == len(seen)
            for batch in seen:  # never two values of s in one batch: each batch's rows come with their own s
                assert any(np.array_equal(batch["s"], item["s"]) for item in items)

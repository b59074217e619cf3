"""Hostile review s69 (late1) of the session's two merges (decoders' gaps, the user's side).

Findings (each test failed on 90c9c14):
1. Fixed. ``GeneratedLengths`` trying longer lengths beside ``--dim total_sequence=9`` alone set the past and the new
   tokens to 512 each, and the binding was refused as the user's own ``--dim`` ("--dim total_sequence=9 is not
   past_sequence=512 plus sequence=512"): a model ONNX Runtime refused at the first lengths got that line instead.
2. Fixed. Text (``--inputs``/``--calibration``: token ids and a tokenizer's mask, 1 where a token attends) for a
   decoder that reads its mask as padding where true (``CausalLM.mask_pads``) was fed the mask as given: every real
   position padded (the missing mask was negated by the decoders' gaps review; a given one was not).
3. Fixed. A decode step over an empty cache (caches given with no positions, a ``[batch, new]`` mask) for a decoder
   whose mask is 4-D was still refused "'attention_mask' is int64, the model expects float32".
4. Fixed. A decode step's 2-D mask of another length than past + new was made 4-D all the same, and ONNX Runtime
   refused it in a broadcast deep in the graph; now refused in one line naming the lengths.
5. Fixed. ONNX Runtime GenAI's decoder (``GroupQueryAttention``) runs a shared buffer longer than its mask, though it
   declares its present as long as the mask: ``--dim`` binding such a buffer was refused as a mask apart from its
   past and new tokens (a mask longer than both together is still refused).
6. Fixed. A second 2-D mask over the same past and new tokens, its length named apart (``total_b``), declared before
   the mask whose length ``--dim`` gave, kept the defaults' sum (256 beside 9), and ONNX Runtime refused the inputs.
7. Fixed. ``compare --generate`` fed each model's mask in the convention its own graph was read in: an AFTER equal
   to BEFORE whose graph reads the mask through ops ``pads_where_true`` does not follow (``Cast(1 - mask)`` for
   ``Not(mask)``) was fed its negation, and the next-token agreement of two equal models fell to chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.errors import InputSpecError
from optimizer.inputs import GeneratedLengths, check_inputs, make_inputs
from optimizer.runtime import run_model
from tests._tiny_lm import build
from tests.helpers import FIXTURES
from tests.test_review_s68_mask4d import _edited
from tests.test_review_s69_decgaps import _decode_step, _true_pads


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny LM (``tests/_tiny_lm.py``): a 2-D int64 mask, position ids, one layer's cache."""
    return build(tmp_path_factory.mktemp("late1") / "tiny.onnx")


@pytest.fixture(scope="module")
def additive(tiny: Path, tmp_path_factory) -> ir.Model:
    """The tiny LM with an additive 4-D mask ``[batch, 1, sequence, total_sequence]``."""
    return ir.load(_edited(tiny, tmp_path_factory.mktemp("late1_add") / "m.onnx", "additive"))


# -- 1. longer lengths beside a mask length alone ----------------------------------------------------------------------


def test_longer_lengths_beside_a_users_mask_length_alone_are_not_refused_as_the_users(tiny: Path):
    lengths = GeneratedLengths(ir.load(str(tiny)), {"total_sequence": 9})
    first = lengths.binding()
    assert first["past_sequence"] + first["sequence"] == 9, first
    # Before: InputSpecError "--dim total_sequence=9 is not past_sequence=512 plus sequence=512".
    lengths.advance(first, degenerate=True)
    bound = lengths.binding()
    assert bound["past_sequence"] + bound["sequence"] == bound["total_sequence"] == 9, bound


# -- 2. text for a mask that pads where true ---------------------------------------------------------------------------


def test_text_with_a_tokenizers_mask_for_a_model_padding_where_true_is_fed_negated(tiny: Path, tmp_path: Path):
    pads = ir.load(str(_true_pads(tiny, tmp_path / "pads.onnx")))
    ids = np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    attends = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # a tokenizer's: 1 where a token attends
    notes: list[str] = []
    given = check_inputs({"input_ids": ids, "attention_mask": attends}, pads, "text.npz", notes)
    twin = check_inputs({"input_ids": ids, "attention_mask": attends}, ir.load(str(tiny)), "text.npz", [])
    # Before: fed as given, true at every real position: all padded, logits 15 apart from the twin's.
    np.testing.assert_array_equal(given["attention_mask"], attends == 0)
    np.testing.assert_array_equal(given["position_ids"], twin["position_ids"])
    want = run_model(ir.load(str(tiny)), twin)["logits"]
    np.testing.assert_allclose(run_model(pads, given)["logits"], want, atol=1e-5)
    assert "attention_mask negated" in notes[0] and "without attention_mask" not in notes[0], notes


# -- 3. and 4. a decode step's 2-D mask ------------------------------------------------------------------------------


def test_a_decode_step_over_an_empty_cache_gets_its_mask_made_4d(tiny: Path, additive: ir.Model):
    step = _decode_step(rows=2, past=0)
    mask = np.ones((2, 4), np.int64)
    mask[0, :2] = 0
    ids = np.random.default_rng(1).integers(0, 64, (2, 4))
    step.update(input_ids=ids, attention_mask=mask, position_ids=np.where(mask == 0, 1, mask.cumsum(axis=1) - 1))
    notes: list[str] = []
    # Before: "'attention_mask' is int64, the model expects float32".
    checked = check_inputs(step, additive, "inputs.npz", notes)
    assert checked["attention_mask"].shape == (2, 1, 4, 4) and any("decode step" in note for note in notes), notes
    # The 2-D-masked twin gives the same logits at every real position (pads' rows attend to nothing there).
    got, want = run_model(additive, checked)["logits"], run_model(ir.load(str(tiny)), step)["logits"]
    np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=1e-5)


@pytest.mark.parametrize("extra", [-1, 1])
def test_a_decode_steps_mask_of_another_length_is_refused_in_one_line(additive: ir.Model, extra: int):
    step = _decode_step(rows=2, past=8)
    step["attention_mask"] = np.ones((2, 9 + extra), np.int64)
    # Before: made [2, 1, 1, 8 or 10], and ONNX Runtime refused it in an Add's broadcast.
    with pytest.raises(InputSpecError, match=r"the 8 cached and 1 new tokens make 9"):
        check_inputs(step, additive, "inputs.npz", [])


# -- 5. GenAI's shared buffer ------------------------------------------------------------------------------------------


def test_genais_shared_buffer_longer_than_its_mask_is_bound():
    model = ir.load(str(FIXTURES / "llama_kv_genai.onnx"))
    dims = {"batch_size": 1, "past_sequence_length": 16, "total_sequence_length": 8, "sequence_length": 1}
    # Before: "--dim total_sequence_length=8 is not past_sequence_length=16 plus sequence_length=1", which ONNX
    # Runtime runs (its present the 16 positions of the buffer).
    drawn = make_inputs(model, dims)
    assert drawn["attention_mask"].shape == (1, 8) and drawn["past_key_values.0.key"].shape[2] == 16
    assert run_model(model, drawn)["logits"].shape == (1, 1, 256)
    with pytest.raises(InputSpecError, match="is shorter than sequence_length=4"):
        make_inputs(model, {**dims, "total_sequence_length": 3, "sequence_length": 4})
    # Longer than the buffer and the new token together: ONNX Runtime refuses it in any layout.
    with pytest.raises(InputSpecError, match="is longer than past_sequence_length=3 plus sequence_length=1"):
        make_inputs(model, {**dims, "past_sequence_length": 3})


# -- 6. two masks over the same past and new tokens --------------------------------------------------------------------


def _two_masks(tiny: Path, first: bool) -> ir.Model:
    """The tiny LM with a second 2-D mask ``attention_mask_b [batch, total_b]`` and-ed with the first, declared before
    it (``first``) or after."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(tiny))
    at = next(index for index, node in enumerate(proto.graph.node) if node.output[0] == "mb")
    proto.graph.node[at].CopyFrom(helper.make_node("Cast", ["attention_mask"], ["ma"], to=TensorProto.BOOL))
    proto.graph.node.insert(at + 1, helper.make_node("Cast", ["attention_mask_b"], ["mbb"], to=TensorProto.BOOL))
    proto.graph.node.insert(at + 2, helper.make_node("And", ["ma", "mbb"], ["mb"]))
    second = helper.make_tensor_value_info("attention_mask_b", TensorProto.INT64, ["batch", "total_b"])
    if first:
        proto.graph.input.insert(0, second)
    else:
        proto.graph.input.append(second)
    return ir.from_proto(proto)


@pytest.mark.parametrize(("first", "given"), [(True, "total_sequence"), (False, "total_b")])
def test_a_second_masks_length_follows_the_one_given(tiny: Path, first: bool, given: str):
    model = _two_masks(tiny, first)
    drawn = make_inputs(model, {given: 9})
    # Before: the mask declared first kept 256 (the defaults' 128 + 128) beside the other's 9; ONNX Runtime refused.
    assert drawn["attention_mask"].shape == drawn["attention_mask_b"].shape == (1, 9), drawn["attention_mask_b"].shape
    assert run_model(model, drawn)["logits"].shape == (1, drawn["input_ids"].shape[1], 64)


# -- 7. compare --generate: AFTER's mask fed as BEFORE's -------------------------------------------------------------


def _negated_by_subtraction(pads: Path, path: Path) -> Path:
    """``_true_pads``' model with ``Not(mask)`` written ``Cast(1 - Cast(mask, int64), bool)``: equal on every input."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(pads))
    at = next(index for index, node in enumerate(proto.graph.node) if node.op_type == "Not")
    proto.graph.node[at].CopyFrom(helper.make_node("Cast", ["attention_mask"], ["mi"], to=TensorProto.INT64))
    proto.graph.node.insert(at + 1, helper.make_node("Sub", ["one", "mi"], ["ms"]))
    proto.graph.node.insert(at + 2, helper.make_node("Cast", ["ms"], ["mb"], to=TensorProto.BOOL))
    onnx.save(proto, str(path))
    return path


def test_compare_generate_feeds_afters_mask_as_befores(tiny: Path, tmp_path: Path):
    from optimizer.compare.comparison import CompareSettings, compare

    before = _true_pads(tiny, tmp_path / "pads.onnx")
    after = _negated_by_subtraction(before, tmp_path / "pads_sub.onnx")
    quick = dict(threads=1, iterations=2, warmup=0, time_budget=0.5, prompt_length=6, new_tokens=3)
    report = compare(before, after, settings=CompareSettings(batches=(2,), generate=True, **quick))
    # Before: AFTER fed the tokenizer's mask as given, every real position padded (next-token agreement ~0).
    assert report.providers[0].llm_accuracy.top1_agreement == 1.0, report.providers[0].llm_accuracy

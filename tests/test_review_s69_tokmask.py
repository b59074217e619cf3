"""Hostile review of the masks a tokenizer writes (``input_ids`` and ``attention_mask``, int64 ``[rows, length]`` of
0/1) given to graphs that want another form: a decoder whose 2-D mask is float (ONNX Runtime's GPT-2 export), and an
encoder taking Hugging Face's extended mask ``[batch, 1, 1, sequence]`` or a square ``[batch, 1, sequence, sequence]``.

Findings (each test failed on 90c9c14):
- A causal LM whose 2-D mask is float 0/1 was no causal LM to generation ("generation feeds attention mask only as
  ... 0/1"): text for it was refused (``--inputs``, ``--calibration``), ``compare --generate`` refused it, and a
  real decode step whose mask a tokenizer wrote (int64) was refused for its dtype. Now the mask is fed in the graph's
  dtype: text as prefills, ``--generate`` drives it, and a tokenizer's integers are cast (0 and 1 kept), with a note.
  A float text mask holding other values than 0 and 1 (an additive 0/-inf one) is refused naming the mask, and a 2-D
  float mask the graph adds to the scores is said to be one.
- A tokenizer's ``[rows, length]`` mask for an encoder's 4-D extended mask (``[batch, 1, 1, sequence]``, square, or
  boolean) was refused ("'attention_mask' is int64, the model expects float32"); now it is made the 4-D mask in the
  graph's convention and dtype (a key padding every query reads), with a note, for ``optimize --inputs``,
  ``--calibration`` and ``compare --inputs``; for a 2-D float mask the graph adds to the scores, 0 and float's lowest.
- Compare's accuracy figures and the budgets counted the positions a decoder's float 0/1 mask pads (only an integer
  mask counted), where verification hid them: an AFTER differing only there had an error of 14.8. Now such a mask
  (float, 2-D, beside a 4-D cache, not added to the scores) counts as one.
- A 2-D float mask the graph adds to the scores was generated 0/1: it masked nothing, verification hid its zeros (where
  it attends) as padding, and a rewrite flooring it at -1 verified. Now generated 0 and float's lowest, and read so.

Left open here, fixed in session 70 (``tests/test_review_s70_stacked.py``): ONNX Runtime's own GPT-2 export stacks its
caches ``past_{i} [2, batch, ...]``, which generation did not take, so its text was not fed as prefills (nor
``--generate`` run) whatever its mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import optimizer.api as api
from optimizer.compare.comparison import CompareSettings, compare
from optimizer.errors import InputSpecError
from optimizer.generation import recognise_causal_lm
from optimizer.inputs import check_inputs
from optimizer.samples import open_samples
from tests._tiny_lm import build
from tests.test_review_s68_late9a import _square_block

README = Path(__file__).resolve().parents[1] / "README.md"


def _float_mask_model(folder: Path, *, additive: bool = False) -> Path:
    """The tiny decoder with its 2-D mask declared float32 (ONNX Runtime's GPT-2 export): cast to integers inside, or
    (``additive``) 0/-1e9 added to the scores as well as read as ``mask > -1``."""
    model = onnx.load(build(folder / "tiny.onnx"))
    (mask,) = [value for value in model.graph.input if value.name == "attention_mask"]
    mask.type.tensor_type.elem_type = TensorProto.FLOAT
    for node in model.graph.node:
        node.input[:] = ["mask_read" if name == "attention_mask" else name for name in node.input]
    if additive:
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(-1.0, np.float32), "minus_one"))
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"))
        (softmax,) = [index for index, node in enumerate(model.graph.node) if node.op_type == "Softmax"]
        model.graph.node[softmax].input[0] = "sc_masked"
        model.graph.node.insert(softmax, helper.make_node("Add", ["sc", "mask4"], ["sc_masked"]))
        model.graph.node.insert(0, helper.make_node("Unsqueeze", ["attention_mask", "axes12"], ["mask4"]))
        model.graph.node.insert(0, helper.make_node("Greater", ["attention_mask", "minus_one"], ["mask_read"]))
    else:
        cast = helper.make_node("Cast", ["attention_mask"], ["mask_read"], to=TensorProto.INT64)
        model.graph.node.insert(0, cast)
    onnx.save(model, folder / ("additive.onnx" if additive else "float_mask.onnx"))
    return folder / ("additive.onnx" if additive else "float_mask.onnx")


@pytest.fixture(scope="module")
def float_mask(tmp_path_factory) -> Path:
    return _float_mask_model(tmp_path_factory.mktemp("float_mask"))


def _text(dtype=np.int64) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(0, 64, (2, 6))
    mask = np.ones((2, 6), dtype)
    mask[1, :2] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _settings(**fields) -> CompareSettings:
    return CompareSettings(eps=("cpu",), batches=(1,), threads=1, time_budget=0.2, iterations=2, warmup=0, **fields)


def test_a_float_mask_decoder_is_a_causal_lm_fed_its_own_dtype(float_mask):
    # Before: "input 'attention_mask' is FLOAT [batch, total_sequence]: generation feeds attention mask only as ...".
    lm = recognise_causal_lm(ir.load(str(float_mask)))
    assert not isinstance(lm, str), lm
    fed = lm.mask_feed(np.array([[0, 1, 1]]), 3)
    assert fed.dtype == np.float32 and fed.tolist() == [[0.0, 1.0, 1.0]]


def test_a_tokenizers_int_mask_is_fed_as_prefills_to_a_float_mask_decoder(float_mask):
    # Before: "no array for graph input 'position_ids' ...; token ids are fed as prefills only to a decoder graphopt
    # recognises, and here input 'attention_mask' is FLOAT".
    notes: list[str] = []
    arrays = check_inputs(_text(), ir.load(str(float_mask)), "inputs", notes)
    assert arrays["attention_mask"].dtype == np.float32
    assert arrays["attention_mask"].tolist() == _text()["attention_mask"].astype(np.float32).tolist()
    assert arrays["past_key_values.0.key"].shape[2] == 0
    assert "'attention_mask' int64 cast to float32 (0 and 1 kept)" in notes, notes
    assert any("fed as prefills" in note for note in notes), notes


def test_a_real_decode_step_with_a_tokenizers_mask_is_taken_by_a_float_mask_decoder(float_mask):
    # Before: "inputs: 'attention_mask' is int64, the model expects float32" (floats are never cast).
    rng = np.random.default_rng(0)
    past = rng.standard_normal((2, 1, 4, 16)).astype(np.float32)
    mask = np.ones((2, 5), np.int64)
    mask[1, :2] = 0
    step = {
        "input_ids": rng.integers(0, 64, (2, 1)),
        "attention_mask": mask,
        "position_ids": np.array([[4], [2]]),
        "past_key_values.0.key": past,
        "past_key_values.0.value": past,
    }
    notes: list[str] = []
    arrays = check_inputs(step, ir.load(str(float_mask)), "inputs", notes)
    assert arrays["attention_mask"].dtype == np.float32 and (arrays["attention_mask"] == mask).all()
    assert notes == ["'attention_mask' int64 cast to float32 (0 and 1 kept)"], notes


def test_compare_generate_drives_a_float_mask_decoder_on_a_tokenizers_text(float_mask, tmp_path: Path):
    # Before: "--generate needs a causal LM with a KV cache: ...: input 'attention_mask' is FLOAT [batch,
    # total_sequence]"; a float 0/1 mask (the model's own dtype) is text too.
    for dtype in (np.int64, np.float32):
        np.savez(tmp_path / "text.npz", **_text(dtype))
        report = compare(
            float_mask,
            float_mask,
            settings=_settings(generate=True, prompt_length=4, new_tokens=2),
            inputs=tmp_path / "text.npz",
        )
        (accuracy,) = [provider.llm_accuracy for provider in report.providers]
        assert accuracy.real_text and accuracy.top1_agreement == 1.0, accuracy


def test_a_float_text_mask_of_other_values_is_refused_naming_the_mask(float_mask):
    # An additive 0/-inf mask given for a 0/1 float one: read as 0/1 it attends to its pads. Before: refused naming
    # position_ids and the model's mask, not the values.
    text = _text(np.float32)
    text["attention_mask"] = np.where(text["attention_mask"] == 1, 0, -np.inf).astype(np.float32)
    with pytest.raises(InputSpecError, match=r"'attention_mask' must hold 0 and 1 alone .* \(an additive mask\?\)"):
        api.optimize_with_report(ir.load(str(float_mask)), ["remove-identity"], inputs=text)
    with pytest.raises(InputSpecError, match=r"'attention_mask' must be 0/1 of the ids' shape"):
        from optimizer.llm_accuracy import text_from_arrays

        text_from_arrays(text, recognise_causal_lm(ir.load(str(float_mask))), "inputs")


def test_a_float_text_mask_stays_refused_for_an_integer_mask_decoder(tmp_path: Path):
    # Not a finding: a guard on the change above. An integer-mask decoder's float text mask is no tokenizer's.
    path = build(tmp_path / "tiny.onnx")
    with pytest.raises(InputSpecError, match=r"'attention_mask' must be 0/1 integers or booleans .* not float32"):
        api.optimize_with_report(ir.load(str(path)), ["remove-identity"], inputs=_text(np.float32))


def test_a_2d_float_mask_added_to_the_scores_is_said_so(tmp_path: Path):
    # Guard and message: an additive 2-D mask is no 0/1 one, and fed 0/1 it masks nothing. Before: "generation feeds
    # attention mask only as a [batch, past + new tokens] of 0/1", as if its dtype alone were wrong.
    model = ir.load(str(_float_mask_model(tmp_path, additive=True)))
    lm = recognise_causal_lm(model)
    assert isinstance(lm, str) and "added to the scores" in lm, lm
    with pytest.raises(InputSpecError, match="added to the scores"):
        check_inputs(_text(), model, "inputs", [])


def _bool_block(path: Path, query) -> str:
    """``_square_block`` with a boolean mask read as ``Where(mask, scores, -1e9)`` (true attends)."""
    model = onnx.load(_square_block(path, query=query))
    (mask,) = [value for value in model.graph.input if value.name == "attention_mask"]
    mask.type.tensor_type.elem_type = TensorProto.BOOL
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(-1e9, np.float32), "fill"))
    (add,) = [node for node in model.graph.node if node.op_type == "Add" and "attention_mask" in node.input]
    add.op_type, add.input[:] = "Where", ["attention_mask", "s0", "fill"]
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize(
    "query, dtype",
    [(1, "float"), ("sequence", "float"), (1, "bool"), ("sequence", "bool")],
    ids=["extended", "square", "extended bool", "square bool"],
)
def test_a_tokenizers_mask_is_made_an_encoders_4d_mask(tmp_path: Path, query, dtype: str):
    # Before: "inputs: 'attention_mask' is int64, the model expects float32" (bool: "has rank 2, the model expects 4").
    path = tmp_path / "block.onnx"
    model = ir.load(_bool_block(path, query) if dtype == "bool" else _square_block(path, query=query))
    ids = np.random.default_rng(0).integers(0, 64, (2, 6))
    mask = np.ones((2, 6), np.int64)
    mask[1, 4:] = 0
    notes: list[str] = []
    made = check_inputs({"input_ids": ids, "attention_mask": mask}, model, "inputs", notes)["attention_mask"]
    queries = 1 if query == 1 else 6
    assert made.shape == (2, 1, queries, 6)
    attends = made if dtype == "bool" else made == 0
    assert made.dtype == (np.bool_ if dtype == "bool" else np.float32)
    assert (attends == (mask != 0)[:, None, None, :]).all()
    shape = "[batch, 1, 1, length]" if query == 1 else "[batch, 1, length, length]"
    assert f"holds a tokenizer's mask: attention_mask [batch, length] made {shape}" in notes[0], notes


def test_compare_and_calibration_take_a_tokenizers_mask_for_an_extended_one(tmp_path: Path):
    # Before: compare --inputs and --calibration refused it ("'attention_mask' is int64, the model expects float32").
    path = _square_block(tmp_path / "extended.onnx", query=1)
    ids = np.random.default_rng(0).integers(0, 64, (2, 6))
    mask = np.ones((2, 6), np.int64)
    mask[1, 4:] = 0
    np.savez(tmp_path / "text.npz", input_ids=ids, attention_mask=mask)
    report = compare(path, path, settings=_settings(), inputs=tmp_path / "text.npz")
    assert "positions the attention mask pads left out" in report.providers[0].accuracy_data
    samples = open_samples(tmp_path / "text.npz", ir.load(path), flag="--calibration").first()
    assert samples["attention_mask"].shape == (2, 1, 1, 6)
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "a tokenizer's `[batch, length]` mask for an encoder's 4-D one" in text


def _zeroed_at_pads(source: Path, path: Path) -> Path:
    """``source`` (a float-mask decoder) with its logits multiplied by the mask: zero at a prefill's padded positions,
    where what a model returns is undefined, and the same at every real one."""
    model = onnx.load(source)
    for node in model.graph.node:
        node.output[:] = ["logits_raw" if name == "logits" else name for name in node.output]
        node.input[:] = ["logits_raw" if name == "logits" else name for name in node.input]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), "last_axis"))
    model.graph.node.extend(
        [
            helper.make_node("Unsqueeze", ["attention_mask", "last_axis"], ["mask_last"]),
            helper.make_node("Mul", ["logits_raw", "mask_last"], ["logits"]),
        ]
    )
    onnx.save(model, path)
    return path


def test_compare_leaves_a_float_mask_decoders_padding_out_of_the_accuracy(float_mask, tmp_path: Path):
    # Verification hides the positions a decoder's float 0/1 mask pads (mask_inputs), but compare's accuracy and the
    # budgets counted them (only an integer mask counted): an AFTER differing only there had an error of 14.8.
    after = _zeroed_at_pads(float_mask, tmp_path / "after.onnx")
    np.savez(tmp_path / "text.npz", **_text())
    report = compare(float_mask, after, settings=_settings(), inputs=tmp_path / "text.npz")
    (provider,) = report.providers
    (logits,) = [row for row in provider.accuracy if row.name == "logits"]
    assert logits.max_abs_error == 0, provider.accuracy_data
    assert "positions the attention mask pads left out of 'logits'" in provider.accuracy_data


def _stacked_past(source: Path, path: Path) -> Path:
    """``source`` (the float-mask decoder) with its cache stacked as ONNX Runtime's GPT-2 export stacks it:
    ``past_0 [2, batch, heads, past_seq_len, head size]`` in, ``present_0 [2, batch, heads, total_seq_len, head size]``
    out (``onnxruntime.transformers.models.gpt2.gpt2_helper``)."""
    model = onnx.load(source)
    graph = model.graph
    kept = [value for value in graph.input if not value.name.startswith("past_key_values")]
    del graph.input[:]
    graph.input.extend(kept)
    graph.input.append(helper.make_tensor_value_info("past_0", TensorProto.FLOAT, [2, "batch", 1, "past_sequence", 16]))
    logits = [value for value in graph.output if value.name == "logits"]
    del graph.output[:]
    graph.output.extend(logits)
    graph.output.append(
        helper.make_tensor_value_info("present_0", TensorProto.FLOAT, [2, "batch", 1, "total_sequence", 16])
    )
    for index, name in enumerate(("key", "value")):
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(index, np.int64), f"stack_{name}"))
        graph.node.insert(0, helper.make_node("Gather", ["past_0", f"stack_{name}"], [f"past_key_values.0.{name}"]))
        graph.node.append(helper.make_node("Unsqueeze", [f"present.0.{name}", "zero1"], [f"stacked_{name}"]))
    graph.node.append(helper.make_node("Concat", ["stacked_key", "stacked_value"], ["present_0"], axis=0))
    onnx.save(model, path)
    return path


def test_text_for_onnx_runtimes_gpt2_layout_is_fed_as_prefills(float_mask, tmp_path: Path):
    stacked = _stacked_past(float_mask, tmp_path / "gpt2_stacked.onnx")
    notes: list[str] = []
    arrays = check_inputs(_text(), ir.load(str(stacked)), "inputs", notes)
    assert arrays["past_0"].shape == (2, 2, 1, 0, 16)


def _additive_2d_encoder(path: Path, *, clamped: bool = False) -> str:
    """``_square_block`` taking its additive mask 2-D, ``attention_mask [batch, sequence]`` float (0 attends, a large
    negative pads), unsqueezed to ``[batch, 1, 1, sequence]`` and added to the scores; ``clamped`` adds it floored at
    -1 (wrong wherever the mask pads, right wherever it is 0 or 1)."""
    model = onnx.load(_square_block(path, query=1))
    (mask,) = [value for value in model.graph.input if value.name == "attention_mask"]
    del mask.type.tensor_type.shape.dim[1:3]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(-1.0, np.float32), "floor"))
    (add,) = [node for node in model.graph.node if node.op_type == "Add" and "attention_mask" in node.input]
    add.input[1] = "mask_floored" if clamped else "mask4"
    index = list(model.graph.node).index(add)
    model.graph.node.insert(index, helper.make_node("Unsqueeze", ["attention_mask", "axes12"], ["mask4"]))
    if clamped:
        model.graph.node.insert(index + 1, helper.make_node("Max", ["mask4", "floor"], ["mask_floored"]))
    onnx.save(model, path)
    return str(path)


def test_an_additive_2d_mask_is_generated_padding_and_verified_so(tmp_path: Path):
    # A 2-D float mask added to the scores was generated 0/1 (the last row's end 0, "padded"): it masked nothing, its
    # zeros were hidden from verification as padding where they attend, and a rewrite flooring it at -1 verified.
    from optimizer.inputs import make_inputs
    from tests._tiny_lm import verifier_optimize_builds

    before = _additive_2d_encoder(tmp_path / "before.onnx")
    generated = make_inputs(ir.load(before), {"batch": 2, "sequence": 8})["attention_mask"]
    assert generated.min() <= -1e9 and set(np.unique(generated)) == {0, generated.min()}, generated
    verifier = verifier_optimize_builds(before)
    assert not verifier.check(ir.load(_additive_2d_encoder(tmp_path / "after.onnx", clamped=True))).ok


def test_a_tokenizers_mask_is_made_an_additive_2d_mask(tmp_path: Path):
    # Before: "inputs: 'attention_mask' is int64, the model expects float32" (floats are never cast); fed 0/1 it would
    # mask nothing.
    model = ir.load(_additive_2d_encoder(tmp_path / "additive.onnx"))
    mask = np.ones((2, 6), np.int64)
    mask[1, 4:] = 0
    notes: list[str] = []
    ids = np.random.default_rng(0).integers(0, 64, (2, 6))
    made = check_inputs({"input_ids": ids, "attention_mask": mask}, model, "inputs", notes)["attention_mask"]
    assert made.dtype == np.float32 and (made == np.where(mask == 1, 0, np.finfo(np.float32).min)).all()
    assert "attention_mask [batch, length] made 0 where real and float's lowest where padded" in notes[0], notes

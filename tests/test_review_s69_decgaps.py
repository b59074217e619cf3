"""Hostile review s69 (decgaps): the known gaps in decoders' masks and compare's figures, each reproduced.

Findings (each test failed on 0d633ba):
a. Fixed. ``compare --generate`` (``CausalLMSession``) fed a 2-D decoder mask the graph reads as padding where true
   (PyTorch's key padding mask, ``padding.PadsWhereTrue``) as given, ones: every position padded, every generation
   figure computed on garbage (greedy tokens unlike the same model's with a 0/1 mask). ``with_model_cache`` and
   ``prefill_of_text`` fed it so too. ``CausalLM.mask_pads`` now negates it.
b. Fixed. ``--inputs`` holding a real decode step (a past, new tokens and a tokenizer's ``[batch, past + new]`` mask)
   for a decoder whose mask is 4-D was refused "'attention_mask' is int64, the model expects float32" (or "has rank
   2"), as if the mask were wrong; now made the 4-D mask causal over it, with a note.
c. Fixed. A square 4-D mask ``[batch, 1, sequence, sequence]`` named ``*encoder*``/``*cross*`` was generated as ones
   (an additive one: + 1 everywhere), padding nothing; now a key padding as an unnamed one is.
d. Fixed. ONNX Runtime GenAI's drawn prompt (``api._drawn_prompt``) drew 7 tokens where ``--dim sequence_length=1``
   fixed the new tokens at one.
e. Fixed. ``--dim total_sequence=9`` alone left the past and new tokens at their defaults (128 each beside a mask of
   9, inputs ONNX Runtime refuses); now split between them.
f. Fixed. ``compare`` gave integer outputs (a predicted label, token ids) a max |Δ| but no agreement figure; now
   ``agreement``, the fraction of values equal, in the JSON, the table, the HTML card and its verdict.
g. Fixed. A cross mask ``[batch, 1, sequence, source]`` neither named ``*encoder*``/``*cross*`` nor over a length
   another input holds (its memory computed in the graph from frames of another length) was read as causal: its
   source length bound to past + new and generated causal. Now a mask whose scores' ``MatMul`` reads its keys from no
   cache input is a cross mask (``padding._keys_read_no_cache``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from optimizer.accuracy import output_accuracy
from optimizer.generation import CausalLMSession, recognise_causal_lm
from optimizer.inputs import check_inputs, make_inputs
from optimizer.padding import causal_mask, causal_masks, cross_masks
from optimizer.report import STATUS_ROLLED_BACK
from optimizer.runtime import run_model
from tests._tiny_lm import build, verifier_optimize_builds
from tests.helpers import FIXTURES, optimize_with_rewrite
from tests.test_review_s68_late9a import _square_block
from tests.test_review_s68_mask4d import _edited

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny LM (``tests/_tiny_lm.py``): a 2-D int64 mask, one layer's cache."""
    return build(tmp_path_factory.mktemp("s69") / "tiny.onnx")


# -- a. a mask that pads where true, in generation --------------------------------------------------------------------


def _true_pads(tiny: Path, path: Path) -> Path:
    """The tiny LM with its mask boolean and read ``Not(mask)`` where it attends: true pads (PyTorch's convention)."""
    proto = onnx.load(str(tiny))
    (mask,) = [value for value in proto.graph.input if value.name == "attention_mask"]
    mask.CopyFrom(helper.make_tensor_value_info("attention_mask", TensorProto.BOOL, ["batch", "total_sequence"]))
    for node in proto.graph.node:
        if node.output[0] == "mb":
            node.CopyFrom(helper.make_node("Not", ["attention_mask"], ["mb"]))
    onnx.save(proto, str(path))
    return path


def test_generation_feeds_a_mask_that_pads_where_true_negated(tiny: Path, tmp_path: Path):
    pads = _true_pads(tiny, tmp_path / "pads.onnx")
    ids = np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    runs = [
        CausalLMSession(str(path), recognise_causal_lm(ir.load(str(path)))).greedy(ids, mask, 3, keep_logits=True)
        for path in (tiny, pads)
    ]
    # Before: ones fed as given padded every position (logits 23 apart, other greedy tokens).
    np.testing.assert_array_equal(runs[1].tokens, runs[0].tokens)
    np.testing.assert_allclose(runs[1].logits, runs[0].logits, atol=1e-5)
    assert recognise_causal_lm(ir.load(str(pads))).mask_pads and not recognise_causal_lm(ir.load(str(tiny))).mask_pads


# -- b. a real decode step with a 2-D mask for a 4-D one ---------------------------------------------------------------


def _decode_step(rows: int = 2, past: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((rows, past + 1), np.int64)
    mask[0, :3] = 0
    cache = {
        f"past_key_values.0.{kind}": rng.standard_normal((rows, 1, past, 16)).astype(np.float32)
        for kind in ("key", "value")
    }
    positions = (mask.cumsum(axis=1) - 1)[:, -1:]
    return {"input_ids": rng.integers(0, 64, (rows, 1)), "attention_mask": mask, "position_ids": positions, **cache}


@pytest.mark.parametrize("variant", ["additive", "cast", "where_pads"])
def test_a_decode_steps_2d_mask_is_made_the_4d_one(tiny: Path, tmp_path: Path, variant: str):
    model = ir.load(_edited(tiny, tmp_path / "m.onnx", variant))
    step, notes = _decode_step(), []
    # Before: "'attention_mask' is int64, the model expects float32" (additive), "has rank 2" (the others).
    checked = check_inputs(step, model, "inputs", notes)
    convention = causal_masks(model)["attention_mask"]
    dtype = model.graph.inputs[1].dtype.numpy()
    expected = causal_mask(step["attention_mask"] != 0, 1, convention, dtype)
    np.testing.assert_array_equal(checked["attention_mask"], expected)
    assert any("decode step" in note for note in notes), notes
    # The model's own 2-D-masked twin gives the same logits on the step.
    want = run_model(ir.load(str(tiny)), step)["logits"]
    np.testing.assert_allclose(run_model(model, checked)["logits"], want, atol=1e-5)


def test_a_decode_steps_2d_mask_is_taken_by_optimize(tiny: Path, tmp_path: Path):
    import optimizer.api as api

    model = ir.load(_edited(tiny, tmp_path / "m.onnx", "additive"))
    _, report = api.optimize_with_report(model, ["remove-identity"], inputs=_decode_step())
    assert report.input_sets[0] == "the given inputs", report.input_sets
    assert report.passes[0].status != STATUS_ROLLED_BACK, report.passes[0].detail


# -- c. a square encoder- or cross-named 4-D mask ---------------------------------------------------------------------


def _renamed_mask(path: Path, name: str) -> onnx.ModelProto:
    """``_square_block``'s additive ``[batch, 1, sequence, sequence]`` mask renamed ``name``."""
    proto = onnx.load(_square_block(path))
    for value in proto.graph.input:
        if value.name == "attention_mask":
            value.name = name
    for node in proto.graph.node:
        node.input[:] = [name if item == "attention_mask" else item for item in node.input]
    return proto


@pytest.mark.parametrize("name", ["encoder_attention_mask", "cross_attn_mask"])
def test_a_square_encoder_or_cross_named_mask_is_generated_padding(tmp_path: Path, name: str):
    drawn = make_inputs(ir.from_proto(_renamed_mask(tmp_path / "square.onnx", name)), {"batch": 2, "sequence": 8})
    padded = drawn[name] < -1e3
    assert padded.any() and not padded.all(axis=-1).any(), drawn[name]  # before: 1.0 everywhere


def test_a_rewrite_dropping_a_square_encoder_mask_is_rolled_back(tmp_path: Path):
    def dropped(model: ir.Model) -> None:
        (add,) = [node for node in model.graph if node.op_type == "Add"]
        add.op_type = "Identity"
        add.replace_input_with(1, None)
        add.resize_inputs(1)

    proto = _renamed_mask(tmp_path / "square.onnx", "encoder_attention_mask")
    report = optimize_with_rewrite(proto, dropped, tmp_path)
    assert report.passes[0].status == STATUS_ROLLED_BACK, (report.passes[0].status, report.passes[0].detail)


# -- d. GenAI's drawn prompt against --dim sequence_length=1 ----------------------------------------------------------


def test_genais_drawn_prompt_keeps_the_users_one_new_token():
    verifier = verifier_optimize_builds(FIXTURES / "llama_kv_genai.onnx", dims={"batch_size": 2, "sequence_length": 1})
    tokens = {np.shape(inputs["input_ids"])[1] for inputs in verifier.input_sets}
    assert tokens == {1}, list(zip(verifier.labels, tokens))  # before: a prompt of 7 drawn, and its padded copy


# -- e. --dim total_sequence alone ------------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [9, 1])
def test_a_mask_length_alone_gives_the_past_and_new_tokens(tiny: Path, total: int):
    model = ir.load(str(tiny))
    drawn = make_inputs(model, {"total_sequence": total})
    past, new = drawn["past_key_values.0.key"].shape[2], drawn["input_ids"].shape[1]
    assert past + new == total and new >= 1, (past, new)  # before: 128 and 128 beside a mask of 9
    assert run_model(model, drawn)["present.0.key"].shape[2] == total


def test_optimize_at_a_mask_length_alone_verifies_at_it(tiny: Path):
    verifier = verifier_optimize_builds(tiny, dims={"total_sequence": 9})
    assert np.shape(verifier.inputs["attention_mask"]) == (1, 9), verifier.labels
    assert np.shape(verifier.inputs["past_key_values.0.key"])[2] + np.shape(verifier.inputs["input_ids"])[1] == 9


# -- f. integer outputs' agreement ------------------------------------------------------------------------------------


def test_an_integer_outputs_agreement_is_reported():
    before = np.array([0, 1, 2, 3, 4, 5, 6, 7], np.int64)
    after = before.copy()
    after[[1, 5]] = 9
    accuracy = output_accuracy("label", before, after)
    assert accuracy.agreement == pytest.approx(0.75) and accuracy.max_abs_error == 8
    assert output_accuracy("y", before.astype(np.float32), after.astype(np.float32)).agreement is None


def test_an_integer_outputs_agreement_leaves_padded_positions_out():
    from optimizer.accuracy import AccuracyAccumulator

    before = np.array([[1, 2, 3, 4]], np.int64)
    after = np.array([[9, 2, 3, 4]], np.int64)
    accumulator = AccuracyAccumulator()
    accumulator.add({"ids": before}, {"ids": after}, padded={"ids": np.array([[True, False, False, False]])})
    (result,) = accumulator.results()
    assert result.agreement == 1.0, result


def _label_model(path: Path, shift: float) -> Path:
    """Logistic regression over 4 features to 3 classes (``label`` int64, ``probabilities``), its intercept moved by
    ``shift`` on class 0."""
    rng = np.random.default_rng(0)
    intercept = rng.standard_normal(3).astype(np.float32)
    intercept[0] += shift
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "coef"], ["m"]),
            helper.make_node("Add", ["m", "intercept"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "labels",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
        ],
        [
            numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "coef"),
            numpy_helper.from_array(intercept, "intercept"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_compare_reports_a_labels_agreement(tmp_path: Path):
    from optimizer.compare.comparison import CompareSettings, compare
    from optimizer.compare.report import _accuracy_table, write_html

    before, after = _label_model(tmp_path / "a.onnx", 0.0), _label_model(tmp_path / "b.onnx", 0.7)
    data = {"X": np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32)}
    settings = CompareSettings(eps=("cpu",), batches=(1,), threads=1, time_budget=0.1, iterations=2, warmup=0)
    report = compare(before, after, settings=settings, inputs=data)
    (label,) = [item for item in report.providers[0].accuracy if item.name == "label"]
    labels = [run_model(ir.load(str(path)), data)["label"] for path in (before, after)]
    assert 0 < label.agreement < 1 and label.agreement == pytest.approx(np.mean(labels[0] == labels[1]))
    assert "agreement" in report.to_dict()["providers"][0]["accuracy"][0]
    console = Console(width=160, record=True)
    console.print(_accuracy_table(report.providers[0]))
    assert f"{label.agreement:.3f}" in console.export_text()
    write_html(report, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert f"integer agreement {label.agreement:.3f}" in page
    assert '"worst_sample_cosine", "agreement"}' in README.read_text(encoding="utf-8")


# -- g. a cross mask named like neither, over a length no input holds -------------------------------------------------


def _with_unnamed_cross_attention(tiny: Path) -> ir.Model:
    """The tiny LM with a cross-attention over a memory computed from ``frames [batch, frames, 16]`` (every second
    frame: its ``source`` length no input holds), masked by an additive ``memory_mask [batch, 1, sequence, source]``."""
    proto = onnx.load(str(tiny))
    n = helper.make_node
    for node in proto.graph.node:
        node.output[:] = ["hres0" if out == "hres" else out for out in node.output]
    at = next(index for index, node in enumerate(proto.graph.node) if "hres0" in node.output) + 1
    nodes = [
        n("Slice", ["frames", "zero1", "big1", "one1", "two1"], ["memory"]),
        n("Transpose", ["memory"], ["memory_t"], perm=[0, 2, 1]),
        n("MatMul", ["q3", "memory_t"], ["cs0"]),
        n("Unsqueeze", ["cs0", "one1"], ["cs1"]),
        n("Add", ["cs1", "memory_mask"], ["cs"]),
        n("Softmax", ["cs"], ["ca"], axis=-1),
        n("Squeeze", ["ca", "one1"], ["ca3"]),
        n("MatMul", ["ca3", "memory"], ["co"]),
        n("Add", ["hres0", "co"], ["hres"]),
    ]
    for offset, node in enumerate(nodes):
        proto.graph.node.insert(at + offset, node)
    proto.graph.initializer.append(numpy_helper.from_array(np.array([2**62], np.int64), "big1"))
    proto.graph.input.extend(
        [
            helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", "frames", 16]),
            helper.make_tensor_value_info("memory_mask", TensorProto.FLOAT, ["batch", 1, "sequence", "source"]),
        ]
    )
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_a_cross_mask_over_a_computed_memory_is_not_read_as_causal(tiny: Path):
    model = _with_unnamed_cross_attention(tiny)
    assert "memory_mask" not in causal_masks(model) and "memory_mask" in cross_masks(model)
    drawn = make_inputs(model, {"batch": 2, "sequence": 3, "past_sequence": 3, "frames": 16, "source": 8})
    mask = drawn["memory_mask"]
    # Before: causal over its 8 source positions (the first query attending to 6 of them), taken for past + new.
    assert mask.shape == (2, 1, 3, 8) and (mask == mask[:, :, :1]).all(), mask
    assert (mask[1, 0, 0] < -1e3).any() and not (mask[0] < -1e3).any(), mask
    assert run_model(model, drawn)["logits"].shape == (2, 3, 64)


def test_a_cross_mask_reached_by_no_matmul_stays_as_it_was(tiny: Path, tmp_path: Path):
    """A guard of the fix of g: a 4-D mask read by a fused op (here ``Attention``-like: an op of another domain) is not
    shown to mask a cross-attention's scores, and stays causal as before."""
    proto = onnx.load(_edited(tiny, tmp_path / "m.onnx", "additive"))
    for node in proto.graph.node:
        if node.op_type == "Add" and "attention_mask" in node.input:
            node.CopyFrom(helper.make_node("BiasAdd", ["sc1", "attention_mask"], ["sc"], domain="test.fused"))
    model = ir.from_proto(proto)
    assert "attention_mask" in causal_masks(model)

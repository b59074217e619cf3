"""Hostile review of decoders whose attention mask is 4-D ``[batch, 1, sequence, total_sequence]`` (session 68), as
some exporters and hand-written generation loops feed it, causal inside: added to the scores (float, 0 attends), read
by ``Where(mask, scores, -inf)`` (true attends) or ``Where(mask, -inf, scores)`` (true pads), or cast to a condition.

Findings (each one's test failed on 2c62ded):
- Such a decoder was refused on generated inputs (``optimize`` needed ``--inputs``): the mask's total length was not
  bound to past + new tokens, and no causal mask, padded mask, prefill, decode step or draft was generated for it.
- Its padded query rows were not hidden from comparison: no 4-D mask was read as padding.
- ``compare --generate`` refused it ("generation feeds attention mask only as a [batch, past + new tokens]").
- Every generated 4-D mask was causal over a padding: a rewrite imposing its own causal order or reading the mask as
  each key's padding was verified (now a prefill whose mask attends past the diagonal and packs two sequences).
- ``make-inputs`` wrote the 4-D mask as ones (non-causal; for an additive mask, + 1 everywhere).
- ``--inputs``/``--calibration`` holding a tokenizer's ``[rows, length]`` mask were refused for it ("has rank 2").
- ``fuse-group-query-attention`` said such a mask's "head count or head size is not static" (taken for a cache).
- A 4-D mask ``[batch, 1, sequence, sequence]`` in a model without a cache was generated as ones, padding nothing.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.generation import CausalLMSession, random_prompts, recognise_causal_lm
from optimizer.padding import padded_at
from tests._tiny_lm import build, verifier_optimize_builds

# Each variant's mask dtype: read by a cast to a condition, added to the scores, or by Where as true attends / pads.
_READS = {
    "cast": TensorProto.INT64,
    "additive": TensorProto.FLOAT,
    "where": TensorProto.BOOL,
    "where_pads": TensorProto.BOOL,
}
# The names of the nodes the tiny LM reads its 2-D mask with, into ``sc``.
_MASK_NODES = ("mb", "mb3", "allowed3", "allowed", "bias", "sc")


def _read(variant: str, mask: str = "attention_mask") -> list:
    """Nodes turning ``mask`` into ``sc`` as ``variant`` does."""
    n = helper.make_node
    if variant == "additive":
        return [n("Add", ["sc1", mask], ["sc"])]
    if variant == "where":
        return [n("Where", [mask, "sc1", "ninf"], ["sc"])]
    if variant == "where_pads":
        return [n("Where", [mask, "ninf", "sc1"], ["sc"])]
    return [
        n("Cast", [mask], ["allowed"], to=TensorProto.BOOL),
        n("Where", ["allowed", "f0", "fneg"], ["bias"]),
        n("Add", ["sc1", "bias"], ["sc"]),
    ]


def _allowed(variant: str, mask: str, out: str) -> list:
    """Nodes writing ``out``: where ``mask`` (read as ``variant`` reads it) attends, as booleans."""
    n = helper.make_node
    if variant == "additive":
        return [n("Greater", [mask, "thr"], [out])]
    if variant == "where":
        return [n("Identity", [mask], [out])]
    if variant == "where_pads":
        return [n("Not", [mask], [out])]
    return [n("Cast", [mask], [out], to=TensorProto.BOOL)]


def _edited(source, path, variant: str, scores: list | None = None, logits: list | None = None) -> str:
    """The tiny LM at ``source`` taking a 4-D mask read as ``variant``, its scores ``sc`` written by ``scores``
    (nodes) instead of the mask's read where given, and its logits by ``logits`` (nodes reading its own as
    ``logits_raw``) where given, saved at ``path``."""
    proto = onnx.load(str(source))
    if logits is not None:
        for node in proto.graph.node:
            node.output[:] = ["logits_raw" if out == "logits" else out for out in node.output]
        proto.graph.node.extend(logits)
    dtype = _READS[variant]
    (mask,) = [value for value in proto.graph.input if value.name == "attention_mask"]
    mask.CopyFrom(helper.make_tensor_value_info("attention_mask", dtype, ["batch", 1, "sequence", "total_sequence"]))
    kept = [node for node in proto.graph.node if node.output[0] not in _MASK_NODES]
    at = next(index for index, node in enumerate(kept) if node.op_type == "Softmax")
    kept[at:at] = scores if scores is not None else _read(variant)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    for name, value in {"ninf": -np.inf, "thr": -1e3, "five": 5.0}.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return str(path)


def _causal4() -> list:
    n = helper.make_node
    return [n("Unsqueeze", ["causal", "zero1"], ["c3"]), n("Unsqueeze", ["c3", "one1"], ["c4"])]


def _ignoring_padding(variant: str) -> list:
    """The scores under the graph's own causal mask alone: right wherever nothing is padded."""
    n = helper.make_node
    return [*_causal4(), n("Where", ["c4", "f0", "fneg"], ["cb"]), n("Add", ["sc1", "cb"], ["sc"])]


def _padded_rows_moved(variant: str) -> list:
    """The logits moved by 5 at each query that attends to no real position up to its own (a row's padded start):
    wrong only at padding."""
    n = helper.make_node
    return [
        *_causal4(),
        *_allowed(variant, "attention_mask", "am"),
        n("And", ["c4", "am"], ["both"]),
        n("Cast", ["both"], ["bothf"], to=TensorProto.FLOAT),
        n("ReduceMax", ["bothf"], ["row_any"], axes=[3], keepdims=1),
        n("Sub", ["onef", "row_any"], ["row_none"]),
        n("Squeeze", ["row_none", "one1"], ["row_none3"]),
        n("Mul", ["row_none3", "five"], ["moved"]),
        n("Add", ["logits_raw", "moved"], ["logits"]),
    ]


def _own_causal(variant: str) -> list:
    """The scores under the graph's own causal mask And the given one (a kernel's causal flag): right wherever the
    given mask is causal, but the graph imposes no order of its own."""
    n = helper.make_node
    return [
        *_causal4(),
        *_allowed(variant, "attention_mask", "am"),
        n("And", ["c4", "am"], ["both"]),
        n("Where", ["both", "f0", "fneg"], ["cb"]),
        n("Add", ["sc1", "cb"], ["sc"]),
    ]


def _last_row(variant: str) -> list:
    """Nodes writing ``am``: where the mask's last query attends (``[batch, 1, 1, total]``), as booleans."""
    n = helper.make_node
    constants = [
        n("Constant", [], [k], value=numpy_helper.from_array(np.array(v, np.int64)))
        for k, v in {"last_s": [-1], "last_e": [2**62], "last_a": [2]}.items()
    ]
    return [
        *constants,
        n("Slice", ["attention_mask", "last_s", "last_e", "last_a"], ["last_row"]),
        *_allowed(variant, "last_row", "am"),
    ]


def _key_padding(variant: str) -> list:
    """The scores under the graph's own causal mask and the keys the mask's last query attends to (a kernel that
    takes a mask as each key's padding): right wherever the mask is causal over a padding."""
    n = helper.make_node
    return [
        *_last_row(variant),
        *_causal4(),
        n("And", ["c4", "am"], ["both"]),
        n("Where", ["both", "f0", "fneg"], ["cb"]),
        n("Add", ["sc1", "cb"], ["sc"]),
    ]


def _not_causal(variant: str) -> list:
    """The scores under the mask's last query row for every query: right at one new token only."""
    n = helper.make_node
    return [*_last_row(variant), n("Where", ["am", "f0", "fneg"], ["cb"]), n("Add", ["sc1", "cb"], ["sc"])]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="module")
def twin_labels(tiny):
    """The labels of the sets verification runs the tiny LM (its 2-D mask) on."""
    return verifier_optimize_builds(tiny).labels


@pytest.fixture(scope="module", params=list(_READS))
def four_d_model(request, tiny, tmp_path_factory):
    """``(variant, the tiny LM taking a 4-D mask read so)`` for each way of reading a 4-D mask."""
    return request.param, _edited(tiny, tmp_path_factory.mktemp(request.param) / "mask4d.onnx", request.param)


@pytest.fixture(scope="module")
def four_d(four_d_model, tiny, tmp_path_factory):
    """``(variant, folder, the tiny LM, the verifier optimize builds for the 4-D mask's model)``."""
    variant, path = four_d_model
    return variant, tmp_path_factory.mktemp(variant), tiny, verifier_optimize_builds(path)


def test_a_4d_mask_decoder_gets_the_sets_a_2d_mask_decoder_gets(four_d, twin_labels):
    # Refused before (ONNX Runtime: the mask's total length was not past + new); now every decoder set, as for the
    # same model reading a 2-D mask, and one whose mask is not causal.
    _, _, _, verifier = four_d
    assert verifier.labels[:-1] == twin_labels
    for inputs in verifier.input_sets:
        mask, ids = inputs["attention_mask"], inputs["input_ids"]
        past = inputs["past_key_values.0.key"].shape[2]
        assert mask.shape == (ids.shape[0], 1, ids.shape[1], past + ids.shape[1])


def test_a_4d_mask_decoder_is_rolled_back_when_a_rewrite_ignores_its_padding(four_d):
    variant, folder, tiny, verifier = four_d
    candidate = _edited(tiny, folder / "ignoring.onnx", variant, _ignoring_padding(variant))
    assert not verifier.check(ir.load(candidate)).ok


def test_a_4d_mask_decoder_is_rolled_back_when_a_rewrite_drops_its_causality(four_d):
    variant, folder, tiny, verifier = four_d
    candidate = _edited(tiny, folder / "not_causal.onnx", variant, _not_causal(variant))
    assert not verifier.check(ir.load(candidate)).ok


def test_a_4d_mask_decoders_padded_query_rows_are_not_compared(four_d):
    # Wrong only at the queries a row's padded start holds: padding, whose outputs are undefined.
    variant, folder, tiny, verifier = four_d
    candidate = _edited(tiny, folder / "moved.onnx", variant, logits=_padded_rows_moved(variant))
    result = verifier.check(ir.load(candidate))
    assert result.ok, result.first_failure
    assert any(label.startswith("a padded prefill") for label in verifier.labels)


@pytest.mark.parametrize("rewrite", [_own_causal, _key_padding])
def test_a_4d_mask_decoder_is_rolled_back_when_a_rewrite_reads_its_mask_as_causal(four_d, rewrite):
    # Every generated 4-D mask was causal over a padding, so a rewrite that imposed its own causal order (a prefix-LM's
    # prompt attends both ways) or read the mask as each key's padding (two sequences packed in a row) was verified.
    variant, folder, tiny, verifier = four_d
    candidate = _edited(tiny, folder / f"{rewrite.__name__}.onnx", variant, rewrite(variant))
    assert not verifier.check(ir.load(candidate)).ok
    assert "its mask not causal" in verifier.labels[-1]


def test_generation_steps_a_4d_mask_decoder_as_its_2d_twin(four_d_model, tiny):
    # compare --generate refused it; now fed a causal 4-D mask over the left-padded prompts, it chooses what the same
    # model reading a 2-D mask chooses.
    _, path = four_d_model
    lm, twin = recognise_causal_lm(ir.load(path)), recognise_causal_lm(ir.load(str(tiny)))
    assert not isinstance(lm, str), lm
    ids, mask = random_prompts(3, 9, 64, padded=True)
    runs = [
        CausalLMSession(str(p), layout, threads=1).greedy(ids, mask, 4, keep_logits=True)
        for p, layout in ((path, lm), (tiny, twin))
    ]
    np.testing.assert_array_equal(runs[0].tokens, runs[1].tokens)
    np.testing.assert_allclose(runs[0].logits, runs[1].logits, rtol=1e-4, atol=1e-4)


def test_make_inputs_writes_a_4d_mask_causal(four_d_model, tmp_path, capsys):
    # It wrote ones (additive: + 1 everywhere; true pads: zeros): a decoder fed that skeleton read every later token.
    from tests._cli_models import run_cli

    variant, path = four_d_model
    code, out, err = run_cli(["make-inputs", path, "-o", tmp_path / "i.npz", "--dim", "sequence=4"], capsys)
    assert code == 0, err
    assert "attention_mask" in out and "causal" in out
    with np.load(tmp_path / "i.npz") as arrays:
        mask, past = arrays["attention_mask"], arrays["past_key_values.0.key"].shape[2]
    attends = {"additive": mask == 0, "where_pads": mask == 0}.get(variant, mask != 0)
    expected = np.arange(past + 4)[None, :] <= past + np.arange(4)[:, None]
    assert (attends == expected).all()


def test_a_tokenizers_2d_mask_is_taken_for_a_4d_mask_decoders_text(four_d_model):
    # ``--inputs``/``--calibration`` holding a tokenizer's output (input_ids, attention_mask [rows, length]) were
    # refused: "'attention_mask' has rank 2, the model expects 4", where compare --generate took them.
    _, path = four_d_model
    ids = np.random.default_rng(0).integers(0, 64, (2, 6))
    mask = np.ones((2, 6), np.int64)
    mask[1, :2] = 0
    verifier = verifier_optimize_builds(path, inputs={"input_ids": ids, "attention_mask": mask})
    first = verifier.input_sets[0]
    assert first["attention_mask"].shape == (2, 1, 6, 6) and first["past_key_values.0.key"].shape[2] == 0
    assert (padded_at(first, verifier.masks[0]) == (mask == 0)).all()  # row 2's first two queries hidden
    assert verifier.check(ir.load(path)).ok


def test_group_query_attention_says_why_a_4d_mask_is_left_unfused(tiny, tmp_path):
    # Its note took the mask for a cache: "it reads attention_mask, whose head count or head size is not static".
    import optimizer.api as api

    path = _edited(tiny, tmp_path / "mask4d.onnx", "additive")
    _, report = api.optimize_with_report(ir.load(path), ["fuse-attention", "fuse-group-query-attention"])
    (record,) = [record for record in report.passes if record.name == "fuse-group-query-attention"]
    said = record.notes + record.refusals
    assert said and all("a 4-D mask" in line for line in said), said


def _no_cache_block(path, *, drop_mask: bool = False) -> str:
    """One attention over token ids with an additive 4-D mask ``[batch, 1, sequence, sequence]`` and no cache (a
    decoder exported without its past, or an encoder fed its extended mask); ``drop_mask`` leaves the mask unread."""
    rng = np.random.default_rng(0)
    shapes = {"E": (64, 16), "Wq": (16, 16), "Wk": (16, 16), "Wv": (16, 16), "Wo": (16, 64)}
    arrays = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) / 4, k) for k, s in shapes.items()]
    arrays.append(numpy_helper.from_array(np.array([1], np.int64), "one1"))
    n = helper.make_node
    masked = n("Identity", ["s0"], ["s"]) if drop_mask else n("Add", ["s0", "attention_mask"], ["s"])
    nodes = [
        n("Gather", ["E", "input_ids"], ["x"]),
        *(n("MatMul", ["x", f"W{p}"], [f"{p}3"]) for p in "qkv"),
        *(n("Unsqueeze", [f"{p}3", "one1"], [p]) for p in "qkv"),
        n("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q", "kt"], ["s0"]),
        masked,
        n("Softmax", ["s"], ["a"], axis=-1),
        n("MatMul", ["a", "v"], ["o4"]),
        n("Squeeze", ["o4", "one1"], ["o"]),
        n("MatMul", ["o", "Wo"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "no_cache",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, ["batch", 1, "sequence", "sequence"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 64])],
        arrays,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(proto, str(path))
    return str(path)


def test_a_4d_mask_without_a_cache_is_padded_in_verification(tmp_path):
    # Generated as ones, it padded nothing: a rewrite that dropped an additive mask (+1 on every score, which Softmax
    # cancels) verified. Now a key padding for every query, padded as a 2-D mask is, its padded queries hidden.
    verifier = verifier_optimize_builds(_no_cache_block(tmp_path / "block.onnx"))
    dropped = _no_cache_block(tmp_path / "dropped.onnx", drop_mask=True)
    assert not verifier.check(ir.load(dropped)).ok

"""A hostile review of padding masks recognised by what the graph does with them (session 69, stmask).

The unidic/sudachi "imitator" ALBERT taggers (PyTorch 2.0's legacy export) take their attention mask as
``onnx::Unsqueeze_1``, static ``[1, 256]``, beside ``tags [1, 256]``: named otherwise and over no named dim, it was no
mask, and their per-token tags were scored over every position, padding included. Here a tagger in small, spelled as
that export spells Hugging Face's extended mask: ``(1 - Cast(Unsqueeze(mask))) * min`` added to ``q @ k^T / sqrt(d)``,
beside a ``token_type_ids`` added to the embeddings (no mask) and, in a variant, a float bias added to the scores
unscaled (no mask either).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import output_drift
from optimizer.padding import looks_like_mask, mask_inputs, padded_copy, padding_layout, reads_as_attention_mask

MASK = "onnx::Unsqueeze_1"
SEQUENCE, WIDTH, VOCAB, TAGS = 8, 8, 16, 5


def _tagger(mask: str = MASK, sequence: int | str = SEQUENCE, bias: bool = False) -> onnx.ModelProto:
    """``tags [batch, sequence]`` (ArgMax of one attention layer's logits) of ``input_ids``, ``token_type_ids`` and
    the mask ``mask``; ``bias``: a float ``score_bias [batch, sequence]`` added to the scores as it is."""
    rng = np.random.default_rng(0)
    batch = 1 if isinstance(sequence, int) else "batch"

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    initializers = [
        weight("E", VOCAB, WIDTH),
        weight("T", 2, WIDTH),
        weight("Wq", WIDTH, WIDTH),
        weight("Wk", WIDTH, WIDTH),
        weight("Wv", WIDTH, WIDTH),
        weight("Wo", WIDTH, TAGS),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "lowest"),
        numpy_helper.from_array(np.array(np.sqrt(WIDTH), np.float32), "root"),
    ]
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["words"]),
        helper.make_node("Gather", ["T", "token_type_ids"], ["types"]),
        helper.make_node("Add", ["words", "types"], ["embedded"]),
        helper.make_node("MatMul", ["embedded", "Wq"], ["q"]),
        helper.make_node("MatMul", ["embedded", "Wk"], ["k"]),
        helper.make_node("MatMul", ["embedded", "Wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Div", ["qk", "root"], ["scores"]),
        helper.make_node("Unsqueeze", [mask, "axis1"], ["mask3"]),
        helper.make_node("Cast", ["mask3"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "maskf"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "lowest"], ["extended"]),
        helper.make_node("Add", ["scores", "extended"], ["masked"]),
    ]
    scores = "masked"
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, sequence]),
        helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, [batch, sequence]),
        helper.make_tensor_value_info(mask, TensorProto.INT64, [batch, sequence]),
    ]
    if bias:
        nodes += [
            helper.make_node("Unsqueeze", ["score_bias", "axis1"], ["bias3"]),
            helper.make_node("Add", ["masked", "bias3"], ["biased"]),
        ]
        scores = "biased"
        inputs.append(helper.make_tensor_value_info("score_bias", TensorProto.FLOAT, [batch, sequence]))
    nodes += [
        helper.make_node("Softmax", [scores], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["context"]),
        helper.make_node("Add", ["context", "embedded"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "Wo"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["tags"], axis=-1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tagger", inputs, [helper.make_tensor_value_info("tags", TensorProto.INT64, [batch, sequence])]
    )
    graph.initializer.extend(initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def tagger() -> ir.Model:
    return ir.serde.deserialize_model(_tagger())


@pytest.fixture(scope="module")
def biased() -> ir.Model:
    return ir.serde.deserialize_model(_tagger(bias=True))


def _feeds(mask: str = MASK) -> dict[str, np.ndarray]:
    return {
        "input_ids": np.array([[5, 6, 7, 1, 1, 1, 1, 1]], np.int64),
        "token_type_ids": np.array([[0, 0, 1, 1, 1, 1, 1, 1]], np.int64),
        mask: np.array([[1, 1, 1, 0, 0, 0, 0, 0]], np.int64),
    }


def _input(model: ir.Model, name: str) -> ir.Value:
    return next(value for value in model.graph.inputs if value.name == name)


def test_an_input_the_graph_makes_an_attention_mask_is_one_whatever_its_name(tagger: ir.Model) -> None:
    assert reads_as_attention_mask(_input(tagger, MASK))
    assert mask_inputs(tagger, _feeds()) == [MASK]


def test_token_types_and_an_unscaled_score_bias_are_no_mask(biased: ir.Model) -> None:
    feeds = {**_feeds(), "score_bias": np.array([[0, 1, 0, 1, 0, 1, 0, 1]], np.float32)}
    assert not looks_like_mask(_input(biased, "token_type_ids"))
    assert not looks_like_mask(_input(biased, "score_bias"))
    assert not looks_like_mask(_input(biased, "input_ids"))
    assert mask_inputs(biased, feeds) == [MASK]


def test_a_static_masks_tags_are_laid_out_along_it(tagger: ir.Model) -> None:
    masks, laid_out, _ = padding_layout(tagger)
    assert masks == {MASK} and laid_out == {"tags": 1}


def test_an_unnamed_static_masks_tags_are_scored_over_real_tokens_only(tagger: ir.Model) -> None:
    before = {"tags": np.array([[3, 4, 5, 0, 0, 0, 0, 0]], np.int64)}
    after = {"tags": np.array([[3, 9, 5, 0, 0, 0, 0, 0]], np.int64)}
    assert output_drift([before], [after], [_feeds()], tagger).cosine == pytest.approx(2 / 3)  # 7 / 8 with padding


def test_the_padded_copy_pads_an_unnamed_static_mask(tagger: ir.Model) -> None:
    from optimizer.inputs import verification_bindings

    ones = {**_feeds(), MASK: np.ones((1, SEQUENCE), np.int64)}
    padded, described = padded_copy(ones, mask_inputs(tagger, ones))
    assert padded[MASK][0, 0] == 0 and padded[MASK][0, -1] == 0, described
    assert len(verification_bindings(tagger)) == 2  # the first set and its padded copy (static: no longer one)


def test_a_generated_unnamed_mask_is_ones_not_drawn_at_random(tagger: ir.Model) -> None:
    from optimizer.inputs import make_inputs

    generated = make_inputs(tagger)
    assert np.array_equal(generated[MASK], np.ones((1, SEQUENCE), np.int64))


def _static_renamed(path: str, rows: int = 2, sequence: int = SEQUENCE) -> onnx.ModelProto:
    """A fixture with its ``attention_mask`` renamed ``onnx::Unsqueeze_1`` and its inputs and outputs static
    (``batch``, ``sequence`` bound to ``rows``, ``sequence``), as PyTorch 2.0's legacy export wrote the imitators'."""
    proto = onnx.load(path)
    for node in proto.graph.node:
        node.input[:] = [MASK if name == "attention_mask" else name for name in node.input]
    for value in [*proto.graph.input, *proto.graph.output]:
        if value.name == "attention_mask":
            value.name = MASK
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in ("batch", "sequence"):
                dim.dim_value = rows if dim.dim_param == "batch" else sequence
    del proto.graph.value_info[:]
    return proto


@pytest.fixture(scope="module")
def static_bert() -> ir.Model:
    from tests.helpers import FIXTURES

    return ir.serde.deserialize_model(_static_renamed(str(FIXTURES / "bert_legacy.onnx")))


def test_berts_renamed_static_mask_is_found_and_its_token_types_are_not(static_bert: ir.Model) -> None:
    feeds = {
        "input_ids": np.arange(16, dtype=np.int64).reshape(2, SEQUENCE) + 5,
        "token_type_ids": np.array([[0] * 4 + [1] * 4, [0] * 8], np.int64),
        MASK: np.array([[1] * 8, [1] * 5 + [0] * 3], np.int64),
    }
    assert mask_inputs(static_bert, feeds) == [MASK]
    masks, laid_out, _ = padding_layout(static_bert)
    assert masks == {MASK} and laid_out == {"last_hidden_state": 1}
    from tests.helpers import run

    before = run(static_bert, feeds)
    after = {"last_hidden_state": before["last_hidden_state"].copy()}
    after["last_hidden_state"][1, 5:] = -after["last_hidden_state"][1, 5:]  # undefined there: padding
    assert output_drift([before], [after], [feeds], static_bert).cosine == pytest.approx(1.0)


def test_make_inputs_writes_an_unnamed_mask_as_ones_not_zeros(tmp_path) -> None:
    from optimizer.input_skeleton import write_input_skeleton

    onnx.save(_tagger(), tmp_path / "tagger.onnx")
    said = write_input_skeleton(tmp_path / "tagger.onnx", tmp_path / "tagger.npz")
    assert np.array_equal(np.load(tmp_path / "tagger.npz")[MASK], np.ones((1, SEQUENCE), np.int64)), said


def test_two_sentences_alike_but_for_their_padding_are_one_sample(tagger: ir.Model) -> None:
    # Held-out rows that copy calibration rows are counted by content, the positions a mask pads left out.
    from optimizer.samples import _sample_keys, holds_samples

    holds = holds_samples(tagger)
    other = {**_feeds(), "input_ids": np.array([[5, 6, 7, 9, 9, 9, 9, 9]], np.int64)}
    assert _sample_keys(_feeds(), holds, False) == _sample_keys(other, holds, False)


def test_a_renamed_static_mask_is_still_one_once_attention_is_fused(static_bert: ir.Model) -> None:
    # ``compare`` reads BEFORE's graph: a model optimized already (its mask an ``Attention``'s bias) is one.
    from optimizer import api

    fused = api.optimize(ir.serde.serialize_model(static_bert))
    assert "Attention" in {node.op_type for node in fused.graph.node}
    masks, laid_out, _ = padding_layout(ir.serde.deserialize_model(fused))
    assert masks == {MASK} and laid_out == {"last_hidden_state": 1}

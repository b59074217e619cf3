"""Hostile review s68 (late8) of this session's fixes: float16's lifted Constants and returned statistics, the
decoders' verification sets, and a mask that pads where true (``PadsWhereTrue``).

Findings (each one's test failed on ac6d0a3):
1. Fixed. A decode step's end of a past padded, its hole between real positions and its every new token made real
   wrote 0 for padded and 1 for real whatever the mask's convention: on a mask that pads where true
   (``PadsWhereTrue``) the "padded" positions stayed real and the "real" new tokens were padded, each labelled as
   done (``_with_the_end_of_a_past_padded``, ``_with_a_hole_in_a_past``, ``_with_every_new_token_real``).
2. Fixed. A decoder whose mask pads where true got each prefill written ones (``_prefill_of``): every position
   padded, labelled "the prefill" and "a padded prefill: ... row 1's first 1 and row 2's last 1 of 7 positions
   padded", and a rewrite wrong at every real token of a prompt verified; no short chunk was cut from its unpadded
   steps either (``_short_chunk`` read "unpadded" as ones).
3. Fixed. A per-row lengths input cut the second dim of the inputs it may describe, which for NeMo's encoder
   (``audio_signal [B, 80, T]`` beside ``length`` in frames) is its mel bins: two clips alike in their first
   ``length`` bins alone were one sample (``shared_samples`` counted a new one as a calibration sample). A length
   now cuts only where what lies past it is one value (padding).
4. Fixed. Hold-out read an integer mask that pads where 1 (``Where(Cast(mask, bool), -1e9, scores)``, a byte key
   padding mask) as attending there: two sentences padded alike were one sample (their padding was their content),
   and one sentence padded to two lengths was two. ``holds_samples`` says which masks pad where true.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from optimizer import api
from optimizer.padding import PadsWhereTrue, padded_at
from tests._tiny_lm import build, verifier_optimize_builds

# -- 1. a decode step's changes on a mask that pads where true ---------------------------------------------------------

_PAST = 6


@pytest.mark.parametrize(
    ("change", "padded"),
    [
        # Row 2's new token padded after a real past: made real.
        (api._with_every_new_token_real, np.array([[0] * 7, [0] * 7], bool)),
        # Row 1 (the most real past positions) holed at its third sixth: position 2.
        (api._with_a_hole_in_a_past, np.array([[0, 0, 1, 0, 0, 0, 0], [0] * 6 + [1]], bool)),
        # Row 1's last quarter of its past (one position) padded.
        (api._with_the_end_of_a_past_padded, np.array([[0, 0, 0, 0, 0, 1, 0], [0] * 6 + [1]], bool)),
    ],
    ids=["every-new-token-real", "hole", "end-of-past"],
)
def test_a_decode_steps_change_is_written_as_a_mask_that_pads_where_true_reads_it(change, padded):
    name = PadsWhereTrue("key_padding_mask")
    mask = np.zeros((2, _PAST + 1), bool)  # false attends
    mask[1, _PAST] = True  # row 2's new token padded
    changed, words = change({name: mask}, [name], _PAST)
    # before: the mask as given (0 written where it pads nothing, 1 where it pads), the words saying it changed
    np.testing.assert_array_equal(padded_at(changed, name), padded, err_msg=words)


# -- 2. a decoder whose mask pads where true ---------------------------------------------------------------------------


def _tiny_true_pads(path: Path, *, wrong_at_a_real_prompt: bool = False) -> Path:
    """The tiny LM reading its ``attention_mask`` as a key padding mask (``Not(Cast(mask, bool))`` where it
    attended); ``wrong_at_a_real_prompt``: its logits + 3 at each real token of a prefill (the cache empty)."""
    build(path)
    model = onnx.load(path)
    nodes = list(model.graph.node)
    at = next(i for i, node in enumerate(nodes) if node.op_type == "Cast" and node.input[0] == "attention_mask")
    nodes[at].output[0] = "pads"
    nodes.insert(at + 1, h.make_node("Not", ["pads"], ["mb"]))
    if wrong_at_a_real_prompt:
        next(node for node in nodes if node.output[0] == "logits").output[0] = "right_logits"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array([2**62], np.int64), "to_the_end"),
                numpy_helper.from_array(np.array([2], np.int64), "two_axis"),
                numpy_helper.from_array(np.array(3.0, np.float32), "three"),
            ]
        )
        nodes += [
            h.make_node("Cast", ["mb"], ["real"], to=TensorProto.FLOAT),
            h.make_node("Neg", ["S1"], ["new_start"]),
            h.make_node("Slice", ["real", "new_start", "to_the_end", "one1"], ["real_new"]),
            h.make_node("Unsqueeze", ["real_new", "two_axis"], ["real_new3"]),
            h.make_node("Mul", ["real_new3", "prefillf"], ["at_a_real_prompt"]),
            h.make_node("Mul", ["at_a_real_prompt", "three"], ["off"]),
            h.make_node("Add", ["right_logits", "off"], ["logits"]),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def true_pads(tmp_path_factory):
    """The tiny true-pads LM's folder and the verifier ``optimize`` builds for it."""
    folder = tmp_path_factory.mktemp("true_pads")
    verifier = verifier_optimize_builds(_tiny_true_pads(folder / "tiny.onnx"))
    return folder, verifier


def test_a_true_pads_decoders_prefills_hold_real_tokens(true_pads):
    _, verifier = true_pads
    prefills = [(label, s) for label, s in zip(verifier.labels, verifier.input_sets) if "prefill" in label]
    assert prefills, verifier.labels
    for label, inputs in prefills:
        # before: every position padded (the mask written ones)
        assert (~padded_at(inputs, PadsWhereTrue("attention_mask"))).any(axis=1).all(), label
    assert any(label.startswith("a short chunk") for label in verifier.labels), verifier.labels


def test_a_rewrite_wrong_at_a_real_prompt_of_a_true_pads_decoder_is_not_verified(true_pads):
    folder, verifier = true_pads
    wrong = _tiny_true_pads(folder / "wrong.onnx", wrong_at_a_real_prompt=True)
    assert not verifier.check(ir.load(str(wrong))).ok, verifier.labels  # before: verified


# -- 3. a lengths input beside features whose second dim is not its length ---------------------------------------------


def _conformer_encoder() -> ir.Model:
    """NeMo's conformer encoder takes ``audio_signal [B, 80, T]`` (mel bins, then frames) and ``length [B]`` in
    frames (here a mean over them)."""
    graph = h.make_graph(
        [
            h.make_node("ReduceSum", ["audio_signal", "axis"], ["total"], keepdims=0),
            h.make_node("Cast", ["length"], ["count"], to=TensorProto.FLOAT),
            h.make_node("Div", ["total", "count"], ["outputs"]),
        ],
        "encoder",
        [
            h.make_tensor_value_info("audio_signal", TensorProto.FLOAT, ["B", 80, "T"]),
            h.make_tensor_value_info("length", TensorProto.INT64, ["B"]),
        ],
        [h.make_tensor_value_info("outputs", TensorProto.FLOAT, ["B", 80])],
        [numpy_helper.from_array(np.array([2], np.int64), "axis")],
    )
    return ir.from_proto(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))


def test_features_alike_in_their_first_mel_bins_alone_are_two_samples():
    from optimizer.samples import shared_samples

    rng = np.random.default_rng(0)
    first = rng.standard_normal((1, 80, 50)).astype(np.float32)
    second = first.copy()
    second[:, 40:] = rng.standard_normal((1, 40, 50))  # another clip's upper 40 mel bins
    frames = np.array([40], np.int64)
    fitted, measured = {"audio_signal": first, "length": frames}, {"audio_signal": second, "length": frames}
    # before: 1 (the 40 frames' mask cut the mel bins, axis 1: the clips alike in bins 0-39 were one sample)
    assert shared_samples(fitted, measured, _conformer_encoder()) == 0


# -- 4. an integer mask that pads where true, read by hold-out ---------------------------------------------------------


def _key_padding_encoder() -> ir.Model:
    """``tokens [B, S]`` and a ``uint8`` ``key_padding_mask [B, S]`` that pads where 1 (PyTorch before 1.2 took a
    byte mask): ``Softmax(Where(Cast(mask, bool), -1e9, scores))``."""
    graph = h.make_graph(
        [
            h.make_node("Gather", ["E", "tokens"], ["x"]),
            h.make_node("ReduceSum", ["x", "last"], ["scores"], keepdims=0),
            h.make_node("Cast", ["key_padding_mask"], ["pads"], to=TensorProto.BOOL),
            h.make_node("Where", ["pads", "fill", "scores"], ["masked"]),
            h.make_node("Softmax", ["masked"], ["weights"], axis=-1),
        ],
        "encoder",
        [
            h.make_tensor_value_info("tokens", TensorProto.INT64, ["B", "S"]),
            h.make_tensor_value_info("key_padding_mask", TensorProto.UINT8, ["B", "S"]),
        ],
        [h.make_tensor_value_info("weights", TensorProto.FLOAT, ["B", "S"])],
        [
            numpy_helper.from_array(np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32), "E"),
            numpy_helper.from_array(np.array([2], np.int64), "last"),
            numpy_helper.from_array(np.array(-1e9, np.float32), "fill"),
        ],
    )
    return ir.from_proto(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))


def test_two_sentences_padded_alike_by_a_mask_that_pads_where_1_are_two_samples():
    from optimizer.samples import shared_samples

    mask = np.array([[0, 0, 0, 0, 1, 1]], np.uint8)
    fitted = {"tokens": np.array([[5, 6, 7, 8, 0, 0]]), "key_padding_mask": mask}
    measured = {"tokens": np.array([[9, 10, 11, 12, 0, 0]]), "key_padding_mask": mask}
    # before: 1 (the mask's 1s read as the real positions: the sentences' padding alone was their content)
    assert shared_samples(fitted, measured, _key_padding_encoder()) == 0


def test_one_sentence_padded_to_two_lengths_by_a_mask_that_pads_where_true_is_one_sample():
    """Its zeros are the sentence: copies padded to two lengths go together (before: 0, two samples)."""
    from optimizer.samples import shared_samples

    short = {"tokens": np.array([[5, 6, 7, 0]]), "key_padding_mask": np.array([[0, 0, 0, 1]], np.uint8)}
    long = {"tokens": np.array([[5, 6, 7, 0, 0, 0]]), "key_padding_mask": np.array([[0, 0, 0, 1, 1, 1]], np.uint8)}
    assert shared_samples(short, long, _key_padding_encoder()) == 1

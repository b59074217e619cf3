"""Hostile review s69 (late 5) of the last two merges: the user's journey fixes (507e8ad) and the tokenizer-mask
follow-ups (6d03896). Each test failed on 6d03896.

1. Fixed: left-padded text for a decoder that reads its mask as each row's length (ONNX Runtime GenAI's) given with
   its position ids: the tokens were moved to each row's start, the position ids left where they were (each token read
   a pad's position: logits 0.03 off the row run alone on a model whose logits read the positions).
2. Fixed: such text with a row of no token (ONNX Runtime's GroupQueryAttention refused its length of -1, in a message
   naming no input), or with pads between a row's tokens (read as tokens, and the row's last tokens cut as padding,
   silently), is refused in one line, as ``--generate`` refuses the second.
3. Fixed: a tokenizer's 0/1 integers for an encoder's 2-D boolean mask that pads where true (PyTorch's key padding
   mask) were cast value for value, 1 to true: every real token padded, every pad attended to, and figures computed on
   the pads. Made true where padded now, with a note; booleans are the graph's own convention, fed as given. A decoder's
   text reads a boolean mask as a tokenizer's (1 attends), as ``--generate`` does: the note says so.
4. Fixed: ``make-inputs`` wrote the last of several rows of a per-row lengths input a quarter shorter (as verification
   draws it) while saying each row was whole, and a float lengths input as normal draws, said to be lengths.
5. Fixed: a tokenizer's mask cast by the user to floats of 0 and 1, for a 2-D mask the graph adds to the scores, was
   added as given: it masked nothing. Made 0 where real and float's lowest where padded, as integers are.
6. Fixed: a tokenizer's mask made a square ``[batch, 1, S, S]`` mask (no cache) is a key padding, not causal, which
   the graph cannot tell from a decoder's exported without its cache: the note says what was assumed.
7. Fixed: a float input a ``OneHotEncoder`` reads itself (the ONNX-ML spec lets it cast float codes to its int64
   cats) was drawn standard normal, none of its cats: with ``zeros=0`` ONNX Runtime refused every generated input, with
   ``zeros=1`` every row encoded as zeros.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.errors import InputSpecError
from optimizer.input_skeleton import write_input_skeleton
from optimizer.inputs import check_inputs
from optimizer.runtime import run_model
from tests._tiny_lm import build
from tests.helpers import FIXTURES
from tests.test_review_s68_late9a import _square_block
from tests.test_review_s69_decgaps import _true_pads
from tests.test_review_s69_tokmask import _additive_2d_encoder

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def genai_with_positions(tmp_path_factory) -> ir.Model:
    """``llama_kv_genai.onnx`` (its mask read as each row's length) taking ``position_ids`` too, added to its logits
    (a hundredth each): a token fed another position shows in its logits."""
    model = onnx.load(str(FIXTURES / "llama_kv_genai.onnx"))
    for node in model.graph.node:
        node.output[:] = ["logits_raw" if name == "logits" else name for name in node.output]
    positions = helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    model.graph.input.insert(2, positions)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1], np.int64), "axes_last"),
            numpy_helper.from_array(np.array(0.01, np.float32), "position_scale"),
        ]
    )
    model.graph.node.extend(
        [
            helper.make_node("Cast", ["position_ids"], ["positions_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["positions_f", "axes_last"], ["positions_3"]),
            helper.make_node("Mul", ["positions_3", "position_scale"], ["positions_scaled"]),
            helper.make_node("Add", ["logits_raw", "positions_scaled"], ["logits"]),
        ]
    )
    path = tmp_path_factory.mktemp("s69late5") / "genai_positions.onnx"
    onnx.save(model, path)
    return ir.load(str(path))


def test_given_position_ids_move_with_each_rows_tokens_for_a_decoder_reading_lengths(genai_with_positions):
    # Before: the tokens moved to each row's start, the positions [1, 1, 1, 0, 1, 2, 3, 4] stayed: 0.03 off.
    model = genai_with_positions
    ids = np.array([[0, 0, 0, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8]])
    mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    positions = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)
    notes: list[str] = []
    feed = check_inputs({"input_ids": ids, "attention_mask": mask, "position_ids": positions}, model, "text", notes)
    np.testing.assert_array_equal(feed["position_ids"][0, :5], np.arange(5))
    row = {"input_ids": ids[:1, 3:], "attention_mask": mask[:1, 3:], "position_ids": positions[:1, 3:]}
    alone = run_model(model, check_inputs(row, model, "row", []))["logits"][0]
    np.testing.assert_allclose(run_model(model, feed)["logits"][0, :5], alone, atol=1e-5)
    assert any("each row's tokens and position ids moved to its start" in note for note in notes), notes
    assert not any("position ids counted from the mask" in note for note in notes), notes


@pytest.mark.parametrize(
    ("mask", "said"),
    [([[0, 0, 0, 0], [1, 1, 1, 1]], "row 0 holds no token"), ([[1, 1, 0, 1], [1] * 4], "row 0 masks positions")],
    ids=["empty row", "pads between tokens"],
)
def test_text_a_decoder_reading_lengths_cannot_take_is_refused_in_one_line(mask, said):
    # Before: the empty row failed in ONNX Runtime ("seqlens_k[0] = -1 is out of range"); the gap was fed silently,
    # its pad read as a token and the row's last token cut.
    model = ir.load(str(FIXTURES / "llama_kv_genai.onnx"))
    text = {"input_ids": np.array([[1, 2, 3, 4], [1, 2, 3, 4]]), "attention_mask": np.array(mask)}
    with pytest.raises(InputSpecError, match=f"{said}.*each row's length"):
        check_inputs(text, model, "text.npz", [])


def _true_pads_encoder() -> ir.Model:
    """``y = Where(attention_mask, -1e9, x @ W)``: a 2-D boolean mask that pads where true (PyTorch's key padding)."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Unsqueeze", ["attention_mask", "last"], ["padded"]),
            helper.make_node("Where", ["padded", "fill", "h"], ["y"]),
        ],
        "true_pads",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 4]),
            helper.make_tensor_value_info("attention_mask", TensorProto.BOOL, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 4])],
        [
            numpy_helper.from_array(np.eye(4, dtype=np.float32), "W"),
            numpy_helper.from_array(np.array([-1], np.int64), "last"),
            numpy_helper.from_array(np.array(-1e9, np.float32), "fill"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_tokenizers_mask_for_a_boolean_true_pads_mask_is_made_true_where_padded():
    # Before: "'attention_mask' int64 cast to bool (every value kept)": every real token padded.
    model, x = _true_pads_encoder(), np.ones((2, 3, 4), np.float32)
    tokenizer = np.array([[1, 1, 1], [1, 1, 0]])
    notes: list[str] = []
    feed = check_inputs({"x": x, "attention_mask": tokenizer}, model, "inputs", notes)
    np.testing.assert_array_equal(feed["attention_mask"], tokenizer == 0)
    assert any("made true where padded, false where real" in note for note in notes), notes
    # Booleans are the graph's own convention: fed as given.
    own = check_inputs({"x": x, "attention_mask": tokenizer == 0}, model, "inputs", [])
    np.testing.assert_array_equal(own["attention_mask"], tokenizer == 0)


def test_a_decoders_boolean_text_mask_is_said_to_be_read_in_the_models_convention(tmp_path: Path):
    # The decision (compare's review, the same session): a boolean mask for a graph that pads where its mask is true is
    # read as the graph reads its own (PyTorch writes it so; a tokenizer writes integers), and the note says so.
    model = ir.load(str(_true_pads(build(tmp_path / "tiny.onnx"), tmp_path / "pads.onnx")))
    notes: list[str] = []
    text = {
        "input_ids": np.array([[0, 5, 6], [1, 2, 3]]),
        "attention_mask": np.array([[True, False, False], [False] * 3]),
    }
    check_inputs(text, model, "text.npz", notes)
    assert any("boolean: read as the model reads its own, true where a token is padded" in note for note in notes)


def test_make_inputs_writes_every_row_of_integer_lengths_whole_and_float_ones_as_zeros(tmp_path: Path):
    # Before: waveforms_lens [400, 400, 300] "(each row whole)"; float lengths normal draws, said to be lengths.
    for dtype, written, said in (
        (TensorProto.INT64, [400] * 3, "lengths (each row whole)"),
        (TensorProto.FLOAT, [1] * 3, "lengths as fractions of each row (1: whole)"),  # zeros until late7
    ):
        nodes = [
            helper.make_node("ReduceSum", ["waveforms"], ["total"], keepdims=0),
            helper.make_node("Cast", ["waveforms_lens"], ["lengths"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["total", "lengths"], ["y"]),
        ]
        graph = helper.make_graph(
            nodes,
            "lengths",
            [
                helper.make_tensor_value_info("waveforms", TensorProto.FLOAT, ["batch", "N"]),
                helper.make_tensor_value_info("waveforms_lens", dtype, ["batch"]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        )
        path = tmp_path / f"lengths{dtype}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        line = write_input_skeleton(str(path), str(tmp_path / f"{dtype}.npz"), {"batch": 3, "N": 400})
        np.testing.assert_array_equal(np.load(tmp_path / f"{dtype}.npz")["waveforms_lens"], written)
        assert f"waveforms_lens {'int64' if dtype == TensorProto.INT64 else 'float32'}[3] {said}" in line, line


def test_a_tokenizers_mask_cast_to_floats_for_an_additive_mask_is_made_additive(tmp_path: Path):
    # Before: fed as given, 0 and 1 added to the scores: nothing masked.
    model = ir.load(_additive_2d_encoder(tmp_path / "additive.onnx"))
    mask = np.ones((2, 6), np.float32)
    mask[1, 4:] = 0
    notes: list[str] = []
    feed = check_inputs({"input_ids": np.ones((2, 6), np.int64), "attention_mask": mask}, model, "inputs", notes)
    np.testing.assert_array_equal(feed["attention_mask"] <= np.finfo(np.float32).min, mask == 0)
    assert any("float's lowest where padded" in note for note in notes), notes
    zeros = check_inputs({"input_ids": np.ones((2, 6), np.int64), "attention_mask": 0 * mask}, model, "inputs", [])
    assert not zeros["attention_mask"].any()  # an additive mask padding nothing stays so


def test_a_square_mask_made_from_a_tokenizers_says_it_is_not_causal(tmp_path: Path):
    model = ir.load(_square_block(tmp_path / "square.onnx", query="sequence"))
    notes: list[str] = []
    mask = np.ones((2, 6), np.int64)
    check_inputs({"input_ids": np.ones((2, 6), np.int64), "attention_mask": mask}, model, "inputs", notes)
    assert any("an encoder's, not causal" in note for note in notes), notes
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "A square mask is made an encoder's, not causal, as the note says" in text


@pytest.mark.parametrize("zeros", [0, 1])
def test_float_codes_a_one_hot_encoder_reads_itself_are_drawn_from_its_cats(zeros: int):
    # Before: drawn standard normal, none of the cats: with zeros=0 ONNX Runtime refused them ("Unknown Category and
    # zeros = 0"); with zeros=1 every row encoded all zeros, and a rewrite of the weights behind it would verify.
    from optimizer.inputs import make_inputs

    encoder = helper.make_node("OneHotEncoder", ["x"], ["y"], domain="ai.onnx.ml", cats_int64s=[3, 7, 9], zeros=zeros)
    graph = helper.make_graph(
        [encoder],
        "one_hot",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 3])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]
    model = ir.from_proto(helper.make_model(graph, opset_imports=opsets, ir_version=8))
    drawn = make_inputs(model, {"n": 16})
    assert np.isin(drawn["x"], [3, 7, 9]).mean() >= 0.5, drawn["x"]
    assert run_model(model, drawn)["y"].sum() > 0

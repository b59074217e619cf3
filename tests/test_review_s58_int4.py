"""Review s58 (int4 on decoders, embedding tables): what was found and fixed."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.errors import OptionError
from optimizer.options import Options
from optimizer.runtime import run_model
from passes.quantization.int4 import Int4QuantizationPass
from tests.passes.quantization.test_int4 import _embedding_model


def test_an_out_of_range_id_looks_up_zeros_in_the_4bit_table_and_the_note_says_so():
    """The float ``Gather`` refuses an id outside ``[-rows, rows)`` (ONNX Runtime's INVALID_ARGUMENT);
    ``GatherBlockQuantized`` returned a row of zeros for it, silently: a bad id gave other values instead of an
    error, and neither the report nor the README said so."""
    model = _embedding_model(tied=False)
    result = Int4QuantizationPass()(model.clone())
    feeds = {"ids": np.array([[1024, 10**9, -1025, 3, 5]], dtype=np.int64)}
    with pytest.raises(Exception, match="out of data bounds"):
        run_model(model, feeds)
    hidden = run_model(result.model, feeds)["logits"]
    assert (hidden[:3] == 0).all() and (hidden[3:] != 0).any()
    assert any("an id outside the table" in note and "row of zeros" in note for note in result.notes), result.notes


def test_a_table_under_the_size_floor_stays_float_with_its_reason():
    """A table under 65,536 values was skipped with no word (every tiny decoder's 256 x 64 table), where
    quantize-embeddings says why."""
    model = _embedding_model(tied=False, vocab=512, hidden=64)
    result = Int4QuantizationPass()(model.clone())
    assert "GatherBlockQuantized" not in [node.op_type for node in result.model.graph]
    assert "1 of 1 embedding tables stay float: under 65,536 values: the saving is not worth the op" in (
        result.refusals
    )


def test_tables_left_float_because_no_layer_was_quantized_say_so():
    """With every layer kept float (``--exclude``, a model output) the tables stay float too, as the README says;
    the report gave no reason for them."""
    model = _embedding_model(tied=False)
    result = Int4QuantizationPass(exclude=["mix"])(model.clone())
    assert not result.modified
    assert any(
        refusal.startswith("1 of 1 embedding tables stay float: no layer was quantized") for refusal in result.refusals
    ), result.refusals


def _two_lookups() -> ir.Model:
    """One table looked up twice (``embed_a``, ``embed_b``), then one MatMul."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((1024, 64)).astype(np.float32)
    weight = (rng.standard_normal((64, 64)) / 8).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["a"], name="embed_a"),
        helper.make_node("Gather", ["table", "ids"], ["b"], name="embed_b"),
        helper.make_node("Add", ["a", "b"], ["summed"], name="add"),
        helper.make_node("MatMul", ["summed", "w"], ["h"], name="mix"),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 64])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(weight, "w")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


@pytest.mark.parametrize("pattern", ["embed_a", "embed_b"])
def test_exclude_matching_any_lookup_of_a_table_keeps_it_float(pattern):
    """``--exclude`` was matched against the first lookup of a table only: ``--exclude embed_b`` (the second)
    kept nothing float, and both lookups became GatherBlockQuantized."""
    result = Int4QuantizationPass(exclude=[pattern])(_two_lookups())
    assert [node.op_type for node in result.model.graph].count("Gather") == 2
    assert "1 of 1 embedding tables stay float: matched by --exclude" in result.refusals


def test_a_float_block_size_is_an_option_error_not_a_failed_pass():
    """``block_size=32.0`` passed the option check (32.0 equals 32) and the pass then raised in numpy's padding
    (``pad_width must be of integral type``): a traceback and a failed pass where ``block_size="32"`` and
    ``block_size=True`` are an ``OptionError``."""
    with pytest.raises(OptionError, match="--block-size 32.0: expected one of 16, 32, 64, 128, 256"):
        Options.build(None, quantize="int4", block_size=32.0)
    assert Options.build(None, quantize="int4", block_size=np.int64(64)).block_size == 64

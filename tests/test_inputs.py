"""Verification inputs: dim binding, token-id ranges, masks, .npz loading."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optimizer.errors import InputSpecError
from optimizer.inputs import (
    alternate_binding,
    bind_dims,
    dims_from_inputs,
    load_inputs,
    make_inputs,
    parse_dim_flags,
)
from tests.helpers import FIXTURES, parse_model

BERT = FIXTURES / "bert_legacy.onnx"


def test_defaults_bind_batch_to_1_and_others_to_128():
    model = ir.load(BERT)
    assert bind_dims(model) == {"batch": 1, "sequence": 128}
    assert bind_dims(model, {"sequence": 7}) == {"batch": 1, "sequence": 7}


def test_unknown_dim_name_is_an_error():
    with pytest.raises(InputSpecError, match="no symbolic dimension of that name.*batch, sequence"):
        bind_dims(ir.load(BERT), {"seq_len": 4})


@pytest.mark.parametrize("flag", ["sequence", "sequence=", "sequence=abc", "=4", "sequence=0", "sequence=-2"])
def test_malformed_dim_flags(flag):
    with pytest.raises(InputSpecError, match="NAME=VALUE"):
        parse_dim_flags([flag])


def test_token_ids_stay_inside_the_embedding_table():
    model = ir.load(BERT)
    vocab = model.graph.initializers["model.embeddings.word_embeddings.weight"].shape[0]
    types = model.graph.initializers["model.embeddings.token_type_embeddings.weight"].shape[0]
    inputs = make_inputs(model, {"batch": 4, "sequence": 64})
    assert inputs["input_ids"].shape == (4, 64) and inputs["input_ids"].dtype == np.int64
    assert 0 <= inputs["input_ids"].min() and inputs["input_ids"].max() < vocab
    assert inputs["input_ids"].max() > types, "ids should use the table, not a tiny range"
    assert inputs["token_type_ids"].max() < types
    # Ones, except the last row's final quarter: verification sees a padded sequence.
    assert (inputs["attention_mask"][:3] == 1).all()
    assert inputs["attention_mask"][3].tolist() == [1] * 48 + [0] * 16


def test_generation_is_deterministic():
    model = ir.load(BERT)
    first, second = make_inputs(model), make_inputs(model)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_float_bool_and_static_inputs():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 3] pixels, bool[N] keep_mask, float16[2, 2] h) => (float[N, 3] y) {
          y = Relu(pixels)
        }""")
    inputs = make_inputs(model, {"N": 5})
    assert inputs["pixels"].shape == (5, 3) and inputs["pixels"].dtype == np.float32
    assert inputs["keep_mask"].dtype == bool and inputs["keep_mask"].all()
    assert inputs["h"].dtype == np.float16 and inputs["h"].shape == (2, 2)


def test_missing_input_shape_is_an_error():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float x) => (float y) { y = Relu(x) }""")
    model.graph.inputs[0].shape = None
    with pytest.raises(InputSpecError, match="input 'x' has no shape; pass --inputs FILE.npz or --no-verify"):
        make_inputs(model)


def test_alternate_binding_changes_the_free_dims_only():
    model = ir.load(BERT)
    assert alternate_binding(model) == {"batch": 2, "sequence": 65}
    assert alternate_binding(model, {"sequence": 10}) == {"batch": 2, "sequence": 10}
    assert alternate_binding(model, {"batch": 1, "sequence": 10}) is None


def test_dims_from_inputs():
    model = ir.load(BERT)
    assert dims_from_inputs(model, make_inputs(model, {"batch": 3, "sequence": 9})) == {"batch": 3, "sequence": 9}


def test_npz_inputs(tmp_path):
    model = ir.load(BERT)
    arrays = make_inputs(model, {"sequence": 5})
    path = tmp_path / "inputs.npz"
    np.savez(path, **arrays)
    loaded = load_inputs(path, model)
    assert list(loaded) == ["input_ids", "attention_mask", "token_type_ids"]
    np.savez(path, input_ids=arrays["input_ids"], attention_mask=arrays["attention_mask"])
    with pytest.raises(InputSpecError, match="no array for graph input 'token_type_ids'"):
        load_inputs(path, model)
    np.savez(path, **{**arrays, "input_ids": arrays["input_ids"].astype(np.int32)})
    with pytest.raises(InputSpecError, match="'input_ids' is int32, the model expects int64"):
        load_inputs(path, model)


def test_negative_static_dims_are_treated_as_dynamic():
    # Paddle-exported models (e.g. PP-OCR's classifier) declare dynamic dims as -1.
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 3, "?", "?"])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [-1, 3, "?", "?"])],
        )
    )
    inputs = make_inputs(ir.from_proto(proto))
    assert inputs["x"].shape == (1, 3, 128, 128)

"""Verification inputs: dim binding, token-id ranges, masks, .npz loading."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optimizer.errors import InputSpecError
from optimizer.inputs import (
    SEQUENCE_LENGTH,
    alternate_binding,
    bind_dims,
    dims_from_inputs,
    format_bytes,
    input_bytes,
    load_inputs,
    make_inputs,
    parse_dim_flags,
    verification_bindings,
)
from tests.helpers import FIXTURES, parse_model, run

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
    with pytest.raises(InputSpecError, match="input 'x' has no shape, which ONNX requires on graph inputs"):
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


# --- sequences, optionals, strings --------------------------------------------------


def test_sequence_optional_and_string_inputs_are_generated():
    model = ir.from_proto(
        onnx.helper.make_model(
            onnx.helper.make_graph(
                [
                    onnx.helper.make_node("SequenceAt", ["xs", "i"], ["first"]),
                    onnx.helper.make_node("OptionalGetElement", ["maybe"], ["got"]),
                    onnx.helper.make_node("Add", ["first", "got"], ["y"]),
                    onnx.helper.make_node("StringConcat", ["words", "words"], ["twice"]),
                ],
                "g",
                [
                    onnx.helper.make_tensor_sequence_value_info("xs", onnx.TensorProto.FLOAT, ["rows", 3]),
                    onnx.helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
                    onnx.helper.make_value_info(
                        "maybe",
                        onnx.helper.make_optional_type_proto(
                            onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, ["rows", 3])
                        ),
                    ),
                    onnx.helper.make_tensor_value_info("words", onnx.TensorProto.STRING, [2]),
                ],
                [
                    onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["rows", 3]),
                    onnx.helper.make_tensor_value_info("twice", onnx.TensorProto.STRING, [2]),
                ],
            ),
            opset_imports=[onnx.helper.make_opsetid("", 20)],
        )
    )
    inputs = make_inputs(model, {"rows": 5})
    assert isinstance(inputs["xs"], list) and len(inputs["xs"]) == SEQUENCE_LENGTH
    assert all(x.shape == (5, 3) and x.dtype == np.float32 for x in inputs["xs"])
    assert inputs["xs"].shape == (SEQUENCE_LENGTH, 5, 3)  # what reports print
    assert inputs["maybe"].shape == (5, 3)  # an optional is given, not empty
    assert inputs["words"].shape == (2,) and all(isinstance(w, str) and w for w in inputs["words"])
    outputs = run(model, inputs)
    assert outputs["y"].shape == (5, 3) and list(outputs["twice"]) == [w + w for w in inputs["words"]]
    again = make_inputs(model, {"rows": 5})
    np.testing.assert_array_equal(np.stack(inputs["xs"]), np.stack(again["xs"]))
    np.testing.assert_array_equal(inputs["words"], again["words"])


def test_sequence_elements_without_a_shape_are_a_checked_guess():
    model = ir.from_proto(
        onnx.helper.make_model(
            onnx.helper.make_graph(
                [onnx.helper.make_node("SequenceLength", ["xs"], ["n"])],
                "g",
                [onnx.helper.make_tensor_sequence_value_info("xs", onnx.TensorProto.FLOAT, None)],
                [onnx.helper.make_tensor_value_info("n", onnx.TensorProto.INT64, [])],
            ),
            opset_imports=[onnx.helper.make_opsetid("", 17)],
        )
    )
    assert model.graph.inputs[0].shape is None
    inputs = make_inputs(model)
    assert len(inputs["xs"]) == SEQUENCE_LENGTH and inputs["xs"][0].ndim == 1


# --- inputs whose values the model reads as sizes, axes or counts -------------------

_SIZES_MODEL = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[N, 6] x, int64[2] target, int64[1] starts, int64[1] ends, int64[1] axes, int64[1] steps,
       int64[2] parts, int64[1] k, int64[2] grow, int64[2] divisor) => (float[a, b] r, float[c, d] s,
       float[N, e] p0, float[N, f] p1, float[N, g] top, float[h, i] big, int64[2] q) {
      r = Reshape(x, target)
      s = Slice(x, starts, ends, axes, steps)
      p0, p1 = Split<axis = 1>(x, parts)
      top, top_i = TopK(x, k)
      big = Expand(x, grow)
      n = Shape(x)
      q = Div(n, divisor)
    }"""


def test_values_read_as_sizes_fit_what_they_size():
    model = parse_model(_SIZES_MODEL)
    inputs = make_inputs(model, {"N": 4})
    assert inputs["target"].tolist() == [4, 6]  # the data's own dims
    assert inputs["starts"].tolist() == [0] and inputs["axes"].tolist() == [0] and inputs["steps"].tolist() == [1]
    assert inputs["parts"].tolist() == [3, 3]  # adds up to the split axis
    assert inputs["k"].tolist() == [1] and inputs["grow"].tolist() == [1, 1]
    assert (inputs["divisor"] != 0).all()
    assert inputs["x"].shape == (4, 6) and inputs["x"].dtype == np.float32  # data stays random
    run(model, inputs)  # ONNX Runtime takes them
    for name, array in make_inputs(model, {"N": 4}).items():
        np.testing.assert_array_equal(array, inputs[name])


def test_computed_sizes_try_the_next_candidates_until_onnx_runtime_accepts():
    # The target reaches Reshape computed (through Add), so nothing fits it ahead of time:
    # the random values, then ones, are refused; twos are the first that run.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 2] x, int64[2] target) => (float[a, b] y) {
          zero = Constant<value = int64[2] {0, 0}>()
          shifted = Add(target, zero)
          y = Reshape(x, shifted)
        }""")
    assert make_inputs(model)["target"].tolist() == [2, 2]


def test_sizes_onnx_runtime_refuses_every_way_are_one_line_with_both_ways_out():
    # One input read as both a Reshape target of six elements and Squeeze axes of a tensor
    # with no axis of size 1: no value satisfies both.
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 3] x, int64[1] s) => (float[a] y, float[2, 3] z) {
          y = Reshape(x, s)
          z = Squeeze(x, s)
        }""")
    with pytest.raises(InputSpecError) as error:
        make_inputs(model)
    message = str(error.value)
    assert "\n" not in message and "'s'" in message and "sizes, axes or counts" in message
    assert message.endswith("pass real inputs with --inputs FILE.npz, or --no-verify")


def test_models_without_value_carrying_inputs_are_not_run(monkeypatch):
    def refuse(*_):
        raise AssertionError("make_inputs ran the model")

    monkeypatch.setattr("optimizer.inputs.run_model", refuse)
    monkeypatch.setattr("optimizer.compared_inputs.run_model", refuse)
    make_inputs(ir.load(BERT))


def test_a_longer_alternate_binding_goes_past_the_default_length():
    assert alternate_binding(ir.load(BERT), longer=True) == {"batch": 2, "sequence": 257}


def test_input_bytes_counts_a_binding_without_generating_it():
    model = ir.load(BERT)
    # Three int64 inputs of [batch, sequence].
    assert input_bytes(model, {"batch": 2, "sequence": 8}) == (3 * 2 * 8 * 8, "'input_ids' int64[2, 8]")
    # Python integers: a product past int64 is counted, not wrapped around.
    assert input_bytes(model, {"batch": 2**40, "sequence": 2**40})[0] == 3 * 2**80 * 8


def test_verification_counts_the_padded_copy_and_the_longer_binding():
    bindings = verification_bindings(ir.load(BERT), {"sequence": 16})
    # attention_mask makes a padded copy of the first set; the second binding grows the batch only.
    assert bindings == [{"batch": 1, "sequence": 16}, {"batch": 1, "sequence": 16}, {"batch": 2, "sequence": 16}]


@pytest.mark.parametrize(
    ("nbytes", "shown"),
    [(512, "512 bytes"), (6 * 1024, "6 KiB"), (4 << 30, "4 GiB"), (6_400_000_000, "5.96 GiB"), (1.2e12, "1.09 TiB")],
)
def test_sizes_are_shown_in_binary_units(nbytes, shown):
    assert format_bytes(nbytes) == shown


def test_verification_bindings_stay_within_max_sequence():
    # --max-sequence 32 on a decoder with rotary: the fused model's caches end at 32 positions, and
    # verification at 128 + 128 (then 257 + 257) tokens rolled every correct rotary fusion back.
    from optimizer.inputs import alternate_binding, bind_dims

    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    free = bind_dims(model)
    assert free["total_sequence"] == free["past_sequence"] + free["sequence"] > 32
    first = bind_dims(model, max_positions=32)
    assert first["total_sequence"] == first["past_sequence"] + first["sequence"] <= 32
    second = alternate_binding(model, longer=True, base=first, max_positions=32)
    assert second["total_sequence"] == second["past_sequence"] + second["sequence"] <= 32
    fixed = bind_dims(model, {"sequence": 40}, max_positions=32)
    assert fixed["sequence"] == 40  # what the user binds stays bound
    # A dim the model reads at one size only (GenAI's head size `kv_cache_dim`, 16) is no length to cap.
    genai = ir.load(FIXTURES / "llama_kv_genai.onnx")
    for binding in (bind_dims(genai, max_positions=8), alternate_binding(genai, longer=True, max_positions=8)):
        assert binding["kv_cache_dim"] == 16
        assert binding["total_sequence_length"] == binding["past_sequence_length"] + binding["sequence_length"] <= 8
    # The smallest caps: at least one new token, the past takes the rest, down to none.
    for limit, past in ((1, 0), (2, 1), (3, 2)):
        for binding in (
            bind_dims(model, max_positions=limit),
            alternate_binding(model, longer=True, max_positions=limit),
        ):
            assert (binding["past_sequence"], binding["sequence"], binding["total_sequence"]) == (past, 1, limit)


def test_a_decoder_optimized_for_a_short_max_sequence_keeps_its_rotary_fusion():
    import optimizer

    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    _, report = optimizer.optimize_with_report(model, max_sequence=32)
    statuses = {record.name: record.status for record in report.passes}
    assert statuses["fuse-rotary-embedding"] == "applied"
    assert statuses["fuse-group-query-attention"] == "applied"
    assert all(
        sum(shape[1] for name, shape in inputs.items() if name == "attention_mask") <= 32 for inputs in report.inputs
    )


def test_under_max_sequence_every_length_stays_equal_and_the_second_binding_still_changes_it():
    # A review: a legacy export names one sequence per input (embeds' and mask's); only the mask's was
    # capped, so the model could not run, and a float input's own length kept the longer binding while
    # the token length stayed: a rewrite baking the length in passed.
    import optimizer

    model = parse_model(
        """
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[batch, embeds_len, 4] embeds, int64[batch, mask_len] attention_mask) => (float[batch, embeds_len, 4] y)
        <int64[1] axis = {-1}> {
            mask = Cast <to = 1> (attention_mask)
            column = Unsqueeze (mask, axis)
            y = Mul (embeds, column)
        }
        """
    )
    _, report = optimizer.optimize_with_report(model, max_sequence=32)
    lengths = [(inputs["embeds"][1], inputs["attention_mask"][1]) for inputs in report.inputs]
    assert all(embeds == mask <= 32 for embeds, mask in lengths)
    assert len({embeds for embeds, _ in lengths}) > 1  # the second binding is another length


def test_a_loops_trip_count_runs_its_body_more_than_once():
    # Drawn as other integers (0 or 1), a trip count ran the body at most once: a rewrite wrong from the second trip
    # on verified (tests/test_review_s43_subgraphs.py). Through a Cast too.
    model = parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (int32 n, float[2] x) => (float[2] y) {
          m = Cast <to = 7> (n)
          cond = Constant <value = bool {1}> ()
          y = Loop (m, cond, x) <body = b (int64 i, bool c, float[2] s) => (bool c_out, float[2] s_out) {
            c_out = Identity (c)
            s_out = Add (s, s)
          }>
        }
        """
    )
    feeds = make_inputs(model)
    assert feeds["n"] == 3
    assert run(model, feeds)["y"].tolist() == (feeds["x"] * 8).tolist()

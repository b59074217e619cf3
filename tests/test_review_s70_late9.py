"""A hostile review (session 70, late 9) of session 69's last merge (float frame counts, static masks matched to the
outputs read along their keys) and the refactors after it.

1. Fixed: float per-row lengths were frame counts only where nothing but moves, casts and rounding lay between them
   and the comparison with the positions, and positions computed by any ``Mul`` or ``Div`` were "scaled". Counts
   multiplied by 1, sample counts divided by a hop length (with NeMo's offset or not), or compared with frame
   positions times the hop length, or clamped (``Clip``, ``Min``), were drawn as fractions of the row (1, 0.75): one
   frame real in each row, every other masked, and a rewrite wrong past the first frame verified. A ``Mul``/``Div``
   by a constant that shrinks the lengths (or grows the positions), an offset and a clamp now carry counts; fractions
   are still those the graph scales up by the row's size (``wav_lens * T``, a static ``* 64``) or compares with
   positions scaled down (``arange(T) / T``, or such positions folded into a constant).

2. Fixed: the first comparison the lengths reach decided, even one with a constant (``wav_lens > 0`` guarding
   ``wav_lens * T``): fractions were drawn as counts (64 for a row of 64: every frame of every row real, the last
   row's padding never met). So were fractions compared with ``arange(T) / T`` folded into a constant.

3. Fixed: a static tagger whose layers run in a ``Loop`` body had its tags and logits no longer laid out along its
   static mask: the keys' walk stopped at the body's state input and took it for the keys' only input, so
   ``input_ids`` was "another input the keys do not read". Keys computed from a loop's state are unknown now (laid out
   by size, as before the late-8 review).

4. Fixed: ``_read_along_keys`` said an output counts where each static 2-D input it reads feeds *some* mask's keys,
   but asked that all feed *one* mask's: a static encoder-decoder's logits, read from ``input_ids`` (the encoder
   mask's keys) and ``decoder_input_ids`` (the decoder mask's), were laid out along neither, their decoder padding
   counted in every figure. ``paddings`` pads where all masks of one shape pad, so such logits lose only positions
   the decoder's mask pads.

The three refactors were checked line by line and held: the walkers gave the same readers and scatter answers on
every value of every fixture (15,870 values, subgraphs included), and ``check_inputs`` without notes skips only the
pure ``causal_masks`` call.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import make_inputs


def _lengths_model(lengths: list[onnx.NodeProto], positions: list[onnx.NodeProto]) -> onnx.ModelProto:
    """``y``: how many positions of each row the graph reads as real, ``Less(positions, column)``. ``lengths`` make
    ``len2`` from the float input ``length``; ``positions`` make ``positions`` from ``frames`` (the row's size in
    samples, float)."""
    nodes = [
        helper.make_node("Shape", ["wavs"], ["shape"], start=1, end=2),
        helper.make_node("Squeeze", ["shape"], ["frames_i"]),
        helper.make_node("Cast", ["frames_i"], ["frames"], to=TensorProto.FLOAT),
        *positions,
        *lengths,
        helper.make_node("Unsqueeze", ["len2", "axis"], ["column"]),
        helper.make_node("Less", ["positions", "column"], ["real"]),
        helper.make_node("Cast", ["real"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["mask", "axis"], ["y"], keepdims=0),
    ]
    constants = {"zero": 0, "one": 1, "hop": 160, "window": 400, "sixty_four": 64}
    graph = helper.make_graph(
        nodes,
        "lengths",
        [
            helper.make_tensor_value_info("wavs", TensorProto.FLOAT, ["batch", "time"]),
            helper.make_tensor_value_info("length", TensorProto.FLOAT, ["batch"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in constants.items()]
        + [
            numpy_helper.from_array(np.array(1e9, np.float32), "huge"),
            numpy_helper.from_array(np.arange(64, dtype=np.float32) / 64, "relative"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


_SAMPLE_POSITIONS = [helper.make_node("Range", ["zero", "frames", "one"], ["positions"])]
_FRAME_POSITIONS = [
    helper.make_node("Div", ["frames", "hop"], ["per_hop"]),
    helper.make_node("Ceil", ["per_hop"], ["hops"]),
    helper.make_node("Range", ["zero", "hops", "one"], ["positions"]),
]
_COUNTS = {
    "times one": ([helper.make_node("Mul", ["length", "one"], ["len2"])], _SAMPLE_POSITIONS),
    "over a hop": ([helper.make_node("Div", ["length", "hop"], ["len2"])], _FRAME_POSITIONS),
    "NeMo's (len - window) / hop + 1": (
        [
            helper.make_node("Sub", ["length", "window"], ["shifted"]),
            helper.make_node("Div", ["shifted", "hop"], ["hops_in"]),
            helper.make_node("Floor", ["hops_in"], ["whole"]),
            helper.make_node("Add", ["whole", "one"], ["len2"]),
        ],
        _FRAME_POSITIONS,
    ),
    "clamped": ([helper.make_node("Clip", ["length", "zero", "huge"], ["len2"])], _SAMPLE_POSITIONS),
    "at most the row": ([helper.make_node("Min", ["length", "frames"], ["len2"])], _SAMPLE_POSITIONS),
    "positions times a hop": (
        [helper.make_node("Identity", ["length"], ["len2"])],
        [
            helper.make_node("Div", ["frames", "hop"], ["per_hop"]),
            helper.make_node("Range", ["zero", "per_hop", "one"], ["frame_steps"]),
            helper.make_node("Mul", ["frame_steps", "hop"], ["positions"]),
        ],
    ),
}


@pytest.mark.parametrize("spelling", list(_COUNTS))
def test_float_sample_counts_shrunk_or_shifted_before_the_comparison_are_counts(spelling: str) -> None:
    import onnxruntime as ort

    model = _lengths_model(*_COUNTS[spelling])
    generated = make_inputs(ir.from_proto(model), {"batch": 3, "time": 640})
    np.testing.assert_array_equal(generated["length"], [640, 640, 480])  # [1, 1, 0.75] before
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    real = session.run(None, {"wavs": generated["wavs"], "length": generated["length"]})[0]
    assert real[0] > 1 and real[2] < real[0], real  # [1, 1, 1] before: one real frame a row


_FRACTIONS = {
    "static wav_lens * 64": (
        [helper.make_node("Mul", ["length", "sixty_four"], ["len2"])],
        _SAMPLE_POSITIONS,
    ),
    "arange(T) * (1 / 64)": (
        [helper.make_node("Identity", ["length"], ["len2"])],
        [
            helper.make_node("Range", ["zero", "frames", "one"], ["steps"]),
            helper.make_node("Div", ["steps", "sixty_four"], ["positions"]),
        ],
    ),
    "checked > 0, then * T": (
        [
            helper.make_node("Greater", ["length", "zero"], ["given"]),
            helper.make_node("Mul", ["length", "frames"], ["scaled"]),
            helper.make_node("Where", ["given", "scaled", "zero"], ["len2"]),
        ],
        _SAMPLE_POSITIONS,
    ),
    "arange(64) / 64 folded": (
        [helper.make_node("Identity", ["length"], ["len2"])],
        [helper.make_node("Identity", ["relative"], ["positions"])],
    ),
}


@pytest.mark.parametrize("spelling", list(_FRACTIONS))
def test_float_fractions_of_the_row_stay_fractions(spelling: str) -> None:
    generated = make_inputs(ir.from_proto(_lengths_model(*_FRACTIONS[spelling])), {"batch": 3, "time": 64})
    np.testing.assert_array_equal(generated["length"], [1, 1, 0.75])


def _looped_tagger(sequence: int = 8, vocab: int = 6, width: int = 4) -> onnx.ModelProto:
    """A static tagger (``input_ids``, ``attention_mask``, ``token_type_ids`` all ``[1, sequence]``) whose two
    attention layers run in a ``Loop`` body, its mask added to each layer's scores as ``(1 - mask) * lowest``."""
    rng = np.random.default_rng(0)

    def layer(hidden: str, out: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node("Transpose", [hidden], ["keys_t"], perm=[0, 2, 1]),
            helper.make_node("MatMul", [hidden, "keys_t"], ["scores"]),
            helper.make_node("Add", ["scores", "extended"], ["masked"]),
            helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
            helper.make_node("MatMul", ["probs", hidden], [out]),
        ]

    body = helper.make_graph(
        [helper.make_node("Identity", ["going"], ["going_out"]), *layer("state", "state_out")],
        "layers",
        [
            helper.make_tensor_value_info("step", TensorProto.INT64, []),
            helper.make_tensor_value_info("going", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("going_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, None),
        ],
    )
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["words"]),
        helper.make_node("Gather", ["T", "token_type_ids"], ["types"]),
        helper.make_node("Add", ["words", "types"], ["embedded"]),
        helper.make_node("Unsqueeze", ["attention_mask", "axis1"], ["mask3"]),
        helper.make_node("Cast", ["mask3"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "maskf"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "lowest"], ["extended"]),
        helper.make_node("Loop", ["trips", "", "embedded"], ["encoded"], body=body),
        helper.make_node("MatMul", ["encoded", "Wo"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["tags"], axis=-1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "looped_tagger",
        [
            helper.make_tensor_value_info(name, TensorProto.INT64, [1, sequence])
            for name in ("input_ids", "attention_mask", "token_type_ids")
        ],
        [
            helper.make_tensor_value_info("tags", TensorProto.INT64, [1, sequence]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, sequence, vocab]),
        ],
        [
            numpy_helper.from_array(rng.normal(size=(vocab, width)).astype(np.float32), "E"),
            numpy_helper.from_array(rng.normal(size=(2, width)).astype(np.float32), "T"),
            numpy_helper.from_array(rng.normal(size=(width, vocab)).astype(np.float32), "Wo"),
            numpy_helper.from_array(np.array(2, np.int64), "trips"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "lowest"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_static_tagger_whose_layers_run_in_a_loop_is_laid_out_along_its_mask() -> None:
    from optimizer.padding import padding_layout

    masks, laid_out, _ = padding_layout(ir.serde.deserialize_model(_looped_tagger()))
    assert masks == {"attention_mask"}
    assert laid_out == {"tags": 1, "logits": 1}  # {} after the late-8 review: the body's state read as the keys' input


def _seq2seq_with_both_masks(sequence: int = 8, vocab: int = 6, width: int = 4) -> onnx.ModelProto:
    """A static encoder-decoder in small, each side's mask (``attention_mask``, ``decoder_attention_mask``, all
    ``[1, sequence]``) added as ``(1 - mask) * lowest`` to its own self-attention's scores (the encoder's to the
    cross-attention's too), and ``logits [1, sequence, vocab]`` per decoder position."""
    rng = np.random.default_rng(0)

    def extended(mask: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node("Unsqueeze", [mask, "axis1"], [f"{mask}_3d"]),
            helper.make_node("Cast", [f"{mask}_3d"], [f"{mask}_f"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["one", f"{mask}_f"], [f"{mask}_inverted"]),
            helper.make_node("Mul", [f"{mask}_inverted", "lowest"], [f"{mask}_added"]),
        ]

    def attention(queries: str, keys: str, mask: str, out: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node("Transpose", [keys], [f"{out}_keys_t"], perm=[0, 2, 1]),
            helper.make_node("MatMul", [queries, f"{out}_keys_t"], [f"{out}_scores"]),
            helper.make_node("Add", [f"{out}_scores", f"{mask}_added"], [f"{out}_masked"]),
            helper.make_node("Softmax", [f"{out}_masked"], [f"{out}_probs"], axis=-1),
            helper.make_node("MatMul", [f"{out}_probs", keys], [out]),
        ]

    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["source"]),
        helper.make_node("Gather", ["E", "decoder_input_ids"], ["target"]),
        *extended("attention_mask"),
        *extended("decoder_attention_mask"),
        *attention("source", "source", "attention_mask", "encoded"),
        *attention("target", "target", "decoder_attention_mask", "decoded"),
        *attention("decoded", "encoded", "attention_mask", "context"),
        helper.make_node("MatMul", ["context", "Wo"], ["logits"]),
    ]
    names = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
    graph = helper.make_graph(
        nodes,
        "seq2seq_both_masks",
        [helper.make_tensor_value_info(name, TensorProto.INT64, [1, sequence]) for name in names],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, sequence, vocab])],
        [
            numpy_helper.from_array(rng.normal(size=(vocab, width)).astype(np.float32), "E"),
            numpy_helper.from_array(rng.normal(size=(width, vocab)).astype(np.float32), "Wo"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "lowest"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_static_decoders_logits_beside_its_own_mask_are_laid_out() -> None:
    from optimizer.padding import padded_outputs, padding_layout

    model = ir.serde.deserialize_model(_seq2seq_with_both_masks())
    masks, laid_out, _ = padding_layout(model)
    assert masks == {"attention_mask", "decoder_attention_mask"}
    assert laid_out == {"logits": 1}  # {} after the late-8 review: no one mask's keys read both ids
    batch = {"attention_mask": np.array([[1] * 6 + [0] * 2]), "decoder_attention_mask": np.array([[1] * 4 + [0] * 4])}
    logits = np.zeros((1, 8, 6), np.float32)
    padded = padded_outputs(model, batch, {"logits": logits}, {"logits": logits})
    # Where both masks pad (paddings' rule for masks of one shape): the decoder's padding, never a real decoder token.
    np.testing.assert_array_equal(padded["logits"].reshape(-1), [False] * 6 + [True] * 2)

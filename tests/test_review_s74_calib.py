"""Review s74 of static int8 calibration run a few samples at a time (``passes/quantization/calibration.py``).

Session 73 exposed the tensors a few samples a run (one first, then as many as fit 64 MB) and checked on two samples
whether a model's samples meet. The ranges must be those of the batches run whole: the check was fooled by a batch that
began with two copies of a sample and by a ``Gather`` of the batch's first row, never made where the first batch held
one sample, and skipped for a model whose samples lie along axis 1 of an input (a time-major ``x [5, batch, 3]``), for a
constant as long as the batch, and for a table input broadcast against the samples. A count of samples a run measured
on the first batch ran later batches of longer samples far past the limit, and the check held the first sample's
tensors through its two other runs. Static int8 ran its samples three times (percentile's two passes and bias
correction's channel means); the means are now summed on the first pass, and the second runs its batches as the first
ended (no sample alone, no check)."""

from __future__ import annotations

import weakref

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import runtime
from passes._layers import find_layers
from passes.quantization import calibration
from passes.quantization.static import StaticQuantizationPass
from tests.passes.quantization.graphs import convnet


def _model(nodes, inputs, outputs, initializers=()) -> ir.Model:
    graph = helper.make_graph(nodes, "calibrated", inputs, outputs, list(initializers))
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def _float(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _batch_centred() -> ir.Model:
    """``s = x - mean(x over the batch)``: each sample's values depend on every other's."""
    return _model(
        [
            helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "mean"], ["s"]),
        ],
        [_float("x", ["B", 4])],
        [_float("s", ["B", 4])],
    )


def _whole_batch_ranges(model, names, batches):
    return calibration.tensor_ranges(runtime.collect_values(model, names, batches), "minmax")


@pytest.fixture
def runs(monkeypatch):
    """Each calibration run's feeds and exposed bytes, and how many tensors of earlier runs were alive as it began."""
    record = {"parts": [], "bytes": [], "alive": []}
    collector = calibration.value_collector

    class _Spy:
        def __init__(self, model, names):
            self.context = collector(model, names)

        def __enter__(self):
            run = self.context.__enter__()
            earlier: list[weakref.ref] = []

            def spied(part):
                record["parts"].append(part)
                record["alive"].append(sum(ref() is not None for ref in earlier))
                outputs = run(part)
                record["bytes"].append(sum(array.nbytes for array in outputs.values()))
                earlier.extend(weakref.ref(array) for array in outputs.values())
                return outputs

            return spied

        def __exit__(self, *exc):
            return self.context.__exit__(*exc)

    monkeypatch.setattr(calibration, "value_collector", _Spy)
    return record


@pytest.mark.parametrize(("method", "passes"), [("percentile", 2), ("minmax", 1)])
def test_static_int8_runs_its_samples_once_per_pass_of_the_ranges(runs, method, passes):
    """Bias correction's channel means are summed on the ranges' first pass: each sample runs once per pass of the
    ranges (3 and 2 times before, a pass more for the means), and the ranges and means are those taken apart."""
    model = convnet()
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)}
    quantization = StaticQuantizationPass(samples=feeds, method=method)
    quantization.prepare(model, find_layers(model.graph, ("conv",))[0], [feeds])
    last = feeds["x"][-1]  # never one of the check's two samples
    assert sum(any(np.array_equal(row, last) for row in part["x"]) for part in runs["parts"]) == passes
    runs["parts"].clear()
    ranges = calibration.calibrate(model, list(quantization.ranges), [feeds], method)
    assert quantization.ranges == ranges
    means = calibration.channel_means(model, list(quantization.input_means), [feeds])
    assert set(means) == {"x", "r1"}
    for name, mean in means.items():
        np.testing.assert_array_equal(quantization.input_means[name], mean)


def test_a_batch_that_begins_with_two_copies_of_a_sample_is_checked_on_another():
    """``x - mean(x over the batch)`` is 0 for one sample alone and for two copies of one together: the check saw no
    meeting, and the ranges were (0, 0) for the batch's (-1.75, 1.48)."""
    model = _batch_centred()
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    x[1] = x[0]
    batches = [{"x": x}]
    assert calibration.calibrate(model, ["s"], batches) == _whole_batch_ranges(model, ["s"], batches)


def test_samples_along_a_later_axis_of_an_input_are_checked():
    """A time-major ``x [5, batch, 3]`` (its samples along axis 1, ``SampleAxes``) softmaxed over axis 1: every op
    keeps samples apart along axis 0, and the ranges were a Softmax over one sample, (1.0, 1.0)."""
    model = _model(
        [helper.make_node("Softmax", ["x"], ["s"], axis=1), helper.make_node("Relu", ["a"], ["r"])],
        [_float("a", ["batch", 4]), _float("x", [5, "batch", 3])],
        [_float("s", [5, "batch", 3]), _float("r", ["batch", 4])],
    )
    rng = np.random.default_rng(0)
    batches = [{"a": rng.standard_normal((6, 4)).astype(np.float32), "x": rng.standard_normal((5, 6, 3), np.float32)}]
    assert calibration.calibrate(model, ["s"], batches) == _whole_batch_ranges(model, ["s"], batches)


def test_a_constant_as_long_as_the_batch_is_checked():
    """``x [B, 4] * c [6, 4]`` (a mask traced at the export's batch): one sample alone is multiplied by all 6 rows."""
    c = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    model = _model(
        [helper.make_node("Mul", ["x", "c"], ["s"])],
        [_float("x", ["B", 4])],
        [_float("s", ["B", 4])],
        [numpy_helper.from_array(c, "c")],
    )
    batches = [{"x": np.random.default_rng(2).standard_normal((6, 4)).astype(np.float32)}]
    assert calibration.calibrate(model, ["s"], batches) == _whole_batch_ranges(model, ["s"], batches)


def test_a_table_input_broadcast_against_the_samples_runs_its_batch_whole():
    """``x [B, 4] + t [4, 4]``: a batch of 4 runs row by row, one sample alone over all 4 rows of the table, and two
    together not at all (ONNX Runtime refuses 2 against 4): calibrated one sample a run, the ranges were every
    pair's."""
    model = _model(
        [helper.make_node("Add", ["x", "t"], ["s"])],
        [_float("x", ["B", 4]), _float("t", [4, 4])],
        [_float("s", ["B", 4])],
    )
    rng = np.random.default_rng(3)
    batches = [{"x": rng.standard_normal((4, 4), np.float32), "t": rng.standard_normal((4, 4), np.float32)}]
    assert calibration.calibrate(model, ["s"], batches) == _whole_batch_ranges(model, ["s"], batches)


def test_a_later_batch_of_longer_samples_keeps_a_run_within_the_limit(runs, monkeypatch):
    """Samples a run were counted on the first batch's first sample alone: a later file of 32x longer rows ran that
    many of them at once (here 2 samples of 2 KB each where the limit is 128 B, two short samples' bytes)."""
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_float("x", ["B", "T"])], [_float("y", ["B", "T"])])
    rng = np.random.default_rng(4)
    batches = [{"x": rng.standard_normal((4, 8), np.float32)}, {"x": rng.standard_normal((4, 256), np.float32)}]
    monkeypatch.setattr(calibration, "_RUN_BYTES", 2 * 2 * 8 * 4)  # two short samples' x and y
    ranges = calibration.calibrate(model, ["x", "y"], batches)
    assert ranges == _whole_batch_ranges(model, ["x", "y"], batches)
    one_long = 2 * 256 * 4
    assert max(runs["bytes"]) <= max(calibration._RUN_BYTES, one_long), runs["bytes"]


def test_the_check_holds_one_run_of_tensors_at_a_time(runs, monkeypatch):
    """The first sample's tensors were kept while the check ran the second alone and both together: three samples'
    tensors at once where one huge intermediate takes each sample's share of memory."""
    model = _model(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]), helper.make_node("Relu", ["t"], ["y"])],
        [_float("x", ["B", 5, 4])],
        [_float("y", ["B", 4, 5])],
    )
    monkeypatch.setattr(calibration, "_RUN_BYTES", 1)
    batches = [{"x": np.random.default_rng(5).standard_normal((4, 5, 4)).astype(np.float32)}]
    assert calibration.calibrate(model, ["t", "y"], batches) == _whole_batch_ranges(model, ["t", "y"], batches)
    assert 3 in [len(part["x"]) for part in runs["parts"]]  # the check ran (on three samples since review s75 xfix)
    # The loop's last tensor may still be named when the next run starts; no more of any run.
    assert max(runs["alive"]) <= 1, runs["alive"]


def test_a_first_batch_of_one_sample_leaves_the_check_to_the_next(monkeypatch):
    """A first file of one sample has no second to check against: the check was skipped for good, and the batch of 6
    after it, run a sample at a time, calibrated a batch-centred tensor to (0, 0)."""
    model = _batch_centred()
    rng = np.random.default_rng(6)
    batches = [{"x": rng.standard_normal((1, 4), np.float32)}, {"x": rng.standard_normal((6, 4), np.float32)}]
    monkeypatch.setattr(calibration, "_RUN_BYTES", 1)  # a sample a run after the first, as large activations take
    assert calibration.calibrate(model, ["s"], batches) == _whole_batch_ranges(model, ["s"], batches)


def test_a_tensor_that_takes_one_sample_of_the_batch_is_found_to_meet_them():
    """``Gather`` of row 0 of the batch: where the first sample's extremes span the second's, two together read the
    same extremes as each alone, and the batch was run a sample at a time: ranges (-5, 5) of a later sample the model
    never reads, for the whole batch's (-1, 1)."""
    model = _model(
        [helper.make_node("Gather", ["x", "row"], ["s"], axis=0)],
        [_float("x", ["B", 4])],
        [_float("s", [1, 4])],
        [numpy_helper.from_array(np.array([0], np.int64), "row")],
    )
    x = np.random.default_rng(7).uniform(-1, 1, (6, 4)).astype(np.float32)
    x[0], x[5] = [-1, 1, 0, 0], [-5, 5, 0, 0]
    batches = [{"x": x}]
    assert calibration.calibrate(model, ["s"], batches) == _whole_batch_ranges(model, ["s"], batches)


def test_the_second_pass_runs_its_batches_as_the_first_ended(runs):
    """Percentile's second pass (the histogram) measured each batch's first samples alone again and checked them again:
    it runs them as many a run as the first pass found to fit, with no check."""
    model = convnet()
    batches = [{"x": np.random.default_rng(8).standard_normal((6, 3, 16, 16)).astype(np.float32)}]
    names = ["x", "r1", "r2"]
    assert calibration.calibrate(model, names, batches, "percentile") == calibration.tensor_ranges(
        runtime.collect_values(model, names, batches), "percentile"
    )
    sizes = [len(part["x"]) for part in runs["parts"]]
    check = 3 if 2 in sizes else 0  # a second sample alone and two together, where the check was made
    assert sizes[-1] == 6 and sum(sizes) == 6 + check + 6, sizes

"""Review s73, static int8's calibration cost (``passes/quantization/calibration.py``): what one calibration run holds.

Every intermediate a CNN's layers read was exposed for a whole batch of 16 samples in one run, and the dict of one run
was still held while the next ran (the loop's name): a MobileNetV2-like net at 224x224 peaked at 1.1 GB for 12 images,
0.75 GB of it those arrays. The ranges and channel means must come out the same, whatever the grouping of samples.
"""

from __future__ import annotations

import weakref

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optimizer import runtime
from passes.quantization import calibration
from tests.passes.quantization.graphs import convnet, samples

_NAMES = ["x", "r1", "r2", "p"]


@pytest.fixture(scope="module")
def model():
    return convnet(4)


@pytest.fixture(scope="module")
def batch(model):
    return samples(model, 6, seed=3)


@pytest.fixture
def spied(monkeypatch):
    """Each calibration run's sample count, and how many of the previous run's tensors were alive when it began."""
    record = {"samples": [], "alive": []}
    collector = calibration.value_collector

    def spying(model, names):
        context = collector(model, names)

        class _Spy:
            def __enter__(self):
                run = context.__enter__()
                previous: list[weakref.ref] = []

                def counted(part):
                    record["samples"].append(len(part["x"]))
                    record["alive"].append(sum(ref() is not None for ref in previous))
                    outputs = run(part)
                    previous[:] = [weakref.ref(array) for array in outputs.values()]
                    return outputs

                return counted

            def __exit__(self, *exc):
                return context.__exit__(*exc)

        return _Spy()

    monkeypatch.setattr(calibration, "value_collector", spying)
    # A run may expose one sample's tensors at most (the fix's limit; absent before it, when one run took the batch).
    monkeypatch.setattr(calibration, "_RUN_BYTES", 1, raising=False)
    return record


@pytest.mark.parametrize("method", ["minmax", "percentile"])  # entropy bins as percentile does (and takes 2 s)
def test_calibration_runs_one_sample_at_a_time_and_drops_each_run(model, batch, spied, method):
    whole = runtime.collect_values(model, _NAMES, [batch])
    expected = calibration.tensor_ranges(whole, method)
    ranges = calibration.calibrate(model, _NAMES, [batch], method)
    assert ranges == expected
    assert spied["samples"] and set(spied["samples"]) == {1}, spied["samples"]
    # The loop's last tensor may still be named when the next run starts; no more of its run.
    assert max(spied["alive"]) <= 1, spied["alive"]


def test_channel_means_run_one_sample_at_a_time_with_the_same_means(model, batch, spied):
    names = ["x", "r1"]
    means = calibration.channel_means(model, names, [batch])
    whole = runtime.collect_values(model, names, [batch])[0]
    for name in names:
        expected = whole[name].astype(np.float64).mean(axis=(0, 2, 3)).astype(np.float32)
        np.testing.assert_allclose(means[name], expected, rtol=1e-6, atol=1e-7)
    assert set(spied["samples"]) == {1}, spied["samples"]
    assert max(spied["alive"]) <= 1, spied["alive"]


def test_runs_grow_to_the_byte_limit_after_the_first(model, spied, monkeypatch):
    """After one sample says what a sample's tensors take, later batches run as many samples as fit the limit."""
    monkeypatch.setattr(calibration, "_RUN_BYTES", 1 << 30, raising=False)
    batches = [samples(model, 4, seed=5), samples(model, 4, seed=6)]
    calibration.calibrate(model, _NAMES, batches, "minmax")
    assert spied["samples"] == [1, 1, 1, 1, 4], spied["samples"]


def test_percentile_histogram_counts_as_with_the_edges_given():
    """Binned on numpy's equal-width path (no sort), the counts are those of the explicit float64 edges, values lying
    on edges included."""
    rng = np.random.default_rng(4)
    runs = [{"t": (np.round(rng.standard_normal(5000) * 8) / 8).astype(np.float32)} for _ in range(3)]
    low = min(float(run["t"].min()) for run in runs)
    high = max(float(run["t"].max()) for run in runs)
    threshold = max(abs(low), abs(high))
    edges = np.linspace(-threshold, threshold, calibration._BINS + 1)
    counts = sum(np.histogram(run["t"], bins=edges)[0] for run in runs)
    cut = calibration._percentile_range(counts, edges, 99.0)
    expected = (max(low, cut[0]), min(high, cut[1]))
    assert calibration.tensor_ranges(runs, "percentile", 99.0)["t"] == expected


def test_a_model_that_runs_only_at_its_batch_is_calibrated_on_its_batch_whole():
    """A batch traced into a Reshape (``x [B, 3]`` reshaped to ``[4, 3]``) runs on the 4 samples given and on no single
    one: ONNX Runtime refuses the one-sample run, and calibration runs the batches whole, as before."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["y"])],
        "traced_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [4, 3])],
    )
    traced = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    batches = [{"x": np.random.default_rng(7).standard_normal((4, 3)).astype(np.float32)}]
    ranges = calibration.calibrate(traced, ["r", "y"], batches, "minmax")
    assert ranges == calibration.tensor_ranges(runtime.collect_values(traced, ["r", "y"], batches), "minmax")
    means = calibration.channel_means(traced, ["r"], batches)
    np.testing.assert_allclose(means["r"], batches[0]["x"].mean(axis=0), rtol=1e-6)

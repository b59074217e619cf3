"""Review s75, hunt 11: real models from PyPI (mne-icalabel's ICLabel and MEGnet, torchfcpe's pitch estimator, BeatNet's
beat tracker), each finding reproduced here on a tiny model of the same structure.

Found: (1) int8 verification's layer probe built a ``K × K`` identity (float64) for a layer of ``K`` input channels, to
ask whether the activation could be probed at all and again for each chunk of rows, and bounded a chunk by its outputs
only: MEGnet's dense layer reads 45,411 features, and ``--quantize dynamic`` (and ``static``) was killed at 24 GB.
(2) ICLabel reads its rows four at a time (``Reshape [4, -1]`` over each component's four augmented copies): a
pruning pass's run of the input model on the rows it fits to failed, and the rollback said "ONNX Runtime cannot run
the result". (3) ``compare`` on ICLabel without ``--batch`` exited 2, "leave it out of --batch", of the default batch.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import layer_probe

# Wide enough that a K × K float64 identity (72 MB) stands out of everything else the probe holds.
_WIDE = 3000


def _model(nodes, inputs, outputs, initializers) -> ir.Model:
    graph = helper.make_graph(
        nodes, "hunt11", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers]
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


@pytest.fixture(scope="module")
def wide_dense() -> tuple[ir.Model, dict[str, np.ndarray]]:
    """MEGnet's head: a ``Concat`` of both branches' flattened features, 45,411 wide, into ``MatMul [45411, 117]``;
    here 3,000 into 2."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(_WIDE, 2)).astype(np.float32)
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", _WIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [("w", weight)],
    )
    return model, {"x": rng.normal(size=(1, _WIDE)).astype(np.float32)}


def test_layer_probe_of_a_wide_layer_holds_no_square_identity(wide_dense, monkeypatch):
    """The probe's peak memory is its chunk of rows, not ``K × K``: asked whether ``x`` could be probed at all,
    ``probe_rows`` built every channel's row (72 MB here, 16 GB on MEGnet) to compare it with None."""
    model, examples = wide_dense
    monkeypatch.setattr(layer_probe, "PROBE_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        failure, probed = layer_probe.layer_probe_failure(model, model, [("x", "y")], examples)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (failure, probed) == ("", 1)
    assert peak < 16 << 20, f"the probe held {peak / 2**20:.0f} MB for a {_WIDE}-wide layer"


def test_layer_probe_chunk_is_bounded_by_the_rows_it_feeds(wide_dense, monkeypatch):
    """A chunk of probe rows was sized by the layer's outputs alone (2 columns here: every channel at once, 36 MB
    of rows; MEGnet's 45,411 channels, 8 GB): the rows fed in one run stay within ``PROBE_BYTES`` too."""
    model, examples = wide_dense
    monkeypatch.setattr(layer_probe, "PROBE_BYTES", 1 << 20)
    fed: list[int] = []
    run = layer_probe.run_session

    def counting(session, feeds, *args, **kwargs):
        fed.append(sum(np.asarray(v).nbytes for v in feeds.values()))
        return run(session, feeds, *args, **kwargs)

    monkeypatch.setattr(layer_probe, "run_session", counting)
    failure, probed = layer_probe.layer_probe_failure(model, model, [("x", "y")], examples)
    assert (failure, probed) == ("", 1)
    # Each run is fed its chunk's unit rows and the two rows every chunk adds (the negative one and zero).
    assert max(fed) <= (1 << 20) + 2 * 4 * _WIDE, f"one probe run was fed {max(fed) / 2**20:.1f} MB"
    # Every channel was probed, in more than one run.
    assert len(fed) > 2


def _grouped_rows() -> onnx.ModelProto:
    """ICLabel's ending: ``x [4n, 1, 8, 8]`` holds each of n components, negated, mirrored and both (the rows
    mne-icalabel feeds); three ``Conv`` → ``Softmax`` → ``Reshape [4, -1]`` → ``Transpose`` → ``ReduceMean`` →
    ``labels [n, 5]``."""
    rng = np.random.default_rng(1)
    weights = {
        "w1": rng.normal(size=(16, 1, 3, 3)).astype(np.float32) * 0.5,
        "w2": rng.normal(size=(16, 16, 3, 3)).astype(np.float32) * 0.2,
        "w3": rng.normal(size=(5, 16, 8, 8)).astype(np.float32) * 0.05,
        "groups": np.array([4, -1], np.int64),
        "classes": np.array([-1, 5], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"]),
        helper.make_node("Flatten", ["c3"], ["flat"]),
        helper.make_node("Softmax", ["flat"], ["probs"], axis=1),
        helper.make_node("Reshape", ["probs", "groups"], ["grouped"]),
        helper.make_node("Transpose", ["grouped"], ["by_row"], perm=[1, 0]),
        helper.make_node("ReduceMean", ["by_row"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("Reshape", ["mean", "classes"], ["labels"]),
    ]
    graph = helper.make_graph(
        nodes,
        "grouped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 1, 8, 8])],
        [helper.make_tensor_value_info("labels", TensorProto.FLOAT, ["components", 5])],
        [numpy_helper.from_array(a, n) for n, a in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(proto)
    return proto


def _augmented(components: int, seed: int) -> np.ndarray:
    """Rows as mne-icalabel's ``_format_input`` lays them out: every component, then each negated, mirrored, both."""
    maps = np.random.default_rng(seed).normal(size=(components, 1, 8, 8)).astype(np.float32)
    return np.concatenate([maps, -maps, maps[..., ::-1], -maps[..., ::-1]])


def test_rows_read_in_groups_are_not_blamed_on_the_result():
    """ICLabel's ``--prune-channels 0.25`` was rolled back as "ONNX Runtime cannot run the result": the pass ran the
    input model on the rows it fits to (four of every five), which the original cannot run either (its
    ``Reshape [4, -1]`` needs all four copies of each component). The reason now says so."""
    from optimizer.api import optimize_with_report

    _, report = optimize_with_report(
        _grouped_rows(),
        ["prune-channels"],
        prune_channels=0.25,
        inputs={"x": _augmented(2, 0)},
        calibration={"x": _augmented(8, 1)},
    )
    (record,) = [r for r in report.passes if r.name == "prune-channels"]
    assert "cannot run the result" not in record.detail, record.detail
    assert "cannot run the original model on the calibration samples split" in record.detail, record.detail


def test_compare_times_rows_read_in_groups_as_given_where_no_batch_was_asked(tmp_path):
    """``graphopt compare`` on ICLabel without ``--batch`` exited 2: the default batch of 1 was cut from the 12 rows
    given, which BEFORE cannot run, and the error said "leave it out of --batch" of a flag not given. The default
    batch is skipped with a warning that says why, and the rows are timed as given."""
    from optimizer.compare.comparison import CompareSettings, compare

    path = tmp_path / "grouped.onnx"
    onnx.save(_grouped_rows(), path)
    quick = CompareSettings(eps=("cpu",), threads=1, time_budget=0.1, iterations=2, warmup=0)
    report = compare(str(path), str(path), settings=quick, inputs={"x": _augmented(2, 0)})
    (provider,) = report.providers
    assert [batch.batch for batch in provider.batches] == [8]
    assert [skip.batch for skip in provider.skipped_batches] == [1]
    assert "the default batch of 1" in provider.skipped_batches[0].reason

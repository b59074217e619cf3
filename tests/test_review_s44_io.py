"""A hostile review of graphopt's file handling (2026-12-03, session 44): model and data paths, outputs, reports,
external data, models over 2 GB, and ``graphopt compare``'s paths.

Each finding is a strict xfail asserting what the README promises; it fails now, for the reason it states.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer.model_io as model_io
from optimizer import cli
from optimizer.errors import GraphoptError

WEIGHTS = np.arange(64 * 8, dtype=np.float32).reshape(64, 8) / 100
BIAS = np.linspace(-1, 1, 8, dtype=np.float32)
QUICK_COMPARE = ["--time-budget", "0.2", "--iterations", "3", "--warmup", "0"]


# --- models --------------------------------------------------------------------------------


def _affine() -> onnx.ModelProto:
    """``y = x @ W + B``: 2 KiB of weights."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _inline(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(_affine(), os.fspath(folder / "m.onnx"))
    return folder / "m.onnx"


def _external(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save(_affine(), os.fspath(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    return path


def _x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)


def _ort_y(path: Path) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": _x()})[0]


def _cli(argv: list, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main([os.fspath(arg) for arg in argv])
    return rc, capsys.readouterr().err


# --- a report linked to the name the model's weights take ---------------------------------------


def test_a_report_linked_to_the_outputs_weights_name_does_not_replace_the_weights(tmp_path, capsys):
    model = _external(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "r.json").symlink_to("out.onnx.data")  # dangling: the weights -o will write are not there yet
    rc, stderr = _cli(["-q", "optimize", model, "-o", out / "out.onnx", "--pipeline-json", out / "r.json"], capsys)
    assert "Traceback" not in stderr
    if rc == 0:  # written: the model must compute with its own weights
        np.testing.assert_allclose(_ort_y(out / "out.onnx"), _x() @ WEIGHTS + BIAS, rtol=1e-5, atol=1e-5)
    else:  # or refused before any work, as two outputs on one file are
        assert rc == 2 and not (out / "out.onnx").exists(), (rc, stderr)


# --- a model path that is a pipe -----------------------------------------------------------------


class _PipeWatch:
    """Notes whether anyone opens ``fifo`` for reading, and lets each such reader through (at EOF)."""

    def __init__(self, fifo: Path) -> None:
        self.fifo, self.opened, self.done = fifo, False, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.done.is_set():
            try:
                descriptor = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader waits
            except OSError:
                time.sleep(0.01)
                continue
            self.opened = True
            os.close(descriptor)  # the blocked reader reads an empty file and goes on

    def __enter__(self) -> _PipeWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "{model}", "{fifo}", *QUICK_COMPARE],
        ["compare", "{fifo}", "{model}", *QUICK_COMPARE],
        ["optimize", "{fifo}", "-o", "{existing}"],
        ["optimize", "{fifo}", "-o", "{new}", "--compare", *QUICK_COMPARE],
    ],
    ids=["compare-after", "compare-before", "optimize-over-an-existing-output", "optimize-compare"],
)
def test_a_model_path_that_is_a_pipe_is_refused_without_reading_it(tmp_path, capsys, argv):
    model = _inline(tmp_path)
    fifo = tmp_path / "model.onnx.fifo"
    os.mkfifo(fifo)
    existing = tmp_path / "old.onnx"
    existing.write_bytes(model.read_bytes())
    names = {"model": model, "fifo": fifo, "existing": existing, "new": tmp_path / "new.onnx"}
    with _PipeWatch(fifo) as watch:
        rc, stderr = _cli(["-q", *(arg.format(**names) for arg in argv)], capsys)
    assert rc == 2 and "Traceback" not in stderr, (rc, stderr)
    assert not watch.opened, "graphopt opened the pipe to read it: without a writer it would hang there"


# --- models over 2 GB --------------------------------------------------------------------------

# 540,000 x 1024 float32 = 2.21e9 bytes, past protobuf's 2 GiB: a sparse file, nothing written.
BIG_ROWS, BIG_COLUMNS = 540_000, 1024


def test_a_model_over_2gb_with_its_weights_in_a_constant_node_loads(tmp_path):
    """Exporters that keep weights in ``Constant`` nodes (Paddle's) write them to external data past 2 GB
    (``onnx.save(..., convert_attribute=True)``); graphopt reads such a tensor's location (``_proto_tensors``)."""
    with open(tmp_path / "w.bin", "wb") as handle:
        handle.truncate(BIG_ROWS * BIG_COLUMNS * 4)  # sparse: costs no disk
    table = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[BIG_ROWS, BIG_COLUMNS])
    table.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "w.bin", "offset": "0", "length": str(BIG_ROWS * BIG_COLUMNS * 4)}.items():
        table.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["W"], value=table),
            helper.make_node("Gather", ["W", "idx"], ["rows"]),
            helper.make_node("Add", ["x", "rows"], ["y"]),
        ],
        "big",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, BIG_COLUMNS]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, BIG_COLUMNS])],
    )
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    try:
        model = model_io.load_model(path)
    except GraphoptError as error:  # a one-line refusal would at least keep the promise of no traceback
        pytest.fail(f"a model over 2 GB did not load: {error}")
    assert model.graph.node(0).op_type == "Constant"


def test_weights_in_constant_nodes_past_the_threshold_are_saved_beside_the_model(tmp_path, monkeypatch):
    """Over 1.5 GB (here a threshold of 64 KiB) "weights are saved beside the output": a Constant's are not, so past
    2 GB the protobuf cannot be written. ``--passes`` without ``lift-constants`` keeps the Constant."""
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD_BYTES", 64 << 10)
    weights = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)  # 256 KiB
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(weights, "W")),
            helper.make_node("MatMul", ["x", "W"], ["y"]),
        ],
        "constants",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
    )
    source = tmp_path / "c.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), source)
    from optimizer import optimize

    output = Path(optimize(source, ["remove-unused"], output=tmp_path / "out.onnx", verify=False))
    data = tmp_path / "out.onnx.data"
    assert output.stat().st_size < weights.nbytes // 4, (
        f"the model file holds the weights ({output.stat().st_size} bytes; "
        f"{data.name}: {data.stat().st_size if data.exists() else 'absent'} bytes)"
    )


# --- non-UTF-8 paths and the comparison ----------------------------------------------------------


def test_optimize_compare_to_a_name_that_is_not_utf8_compares_or_refuses_before_writing(tmp_path, capsys):
    model = _inline(tmp_path)
    output = tmp_path / os.fsdecode(b"out\xff.onnx")
    rc, stderr = _cli(["-q", "optimize", model, "-o", output, "--compare", *QUICK_COMPARE], capsys)
    assert "Traceback" not in stderr
    assert rc == 0 or (rc == 2 and not output.exists()), (rc, stderr, output.exists())


# --- a data folder with a broken link ------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--calibration", "--inputs"])
def test_a_broken_link_in_a_data_folder_is_refused_not_skipped(tmp_path, capsys, flag):
    model = _inline(tmp_path)
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.savez(folder / "a.npz", x=rng.standard_normal((4, 64)).astype(np.float32))
    (folder / "b.npz").symlink_to(tmp_path / "blobs" / "b.npz")  # the blob never arrived
    if flag == "--calibration":
        argv = ["optimize", model, "-o", tmp_path / "out.onnx", "--quantize", "dynamic", "--calibration", folder]
    else:
        argv = ["compare", model, model, "--inputs", folder, *QUICK_COMPARE]
    rc, stderr = _cli(["-q", *argv], capsys)
    assert "Traceback" not in stderr
    assert rc == 2 and "b.npz" in stderr, (rc, stderr)

"""Loading and saving models: round trips, external data, atomic writes, models over 2 GiB."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import model_io
from optimizer.errors import OutputPathError
from optimizer.model_io import load_model, save_model
from tests.helpers import assert_same_outputs, parse_model, run, snapshot_tree

REPO_ROOT = Path(__file__).resolve().parents[1]


def _external_locations(path: Path) -> set[str]:
    proto = onnx.load(os.fspath(path), load_external_data=False)
    return {
        entry.value for tensor in proto.graph.initializer for entry in tensor.external_data if entry.key == "location"
    }


def _ort_run(path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


# --- small models ---------------------------------------------------------------------

WEIGHTS = np.arange(64 * 8, dtype=np.float32).reshape(64, 8) / 100
BIAS = np.linspace(-1, 1, 8, dtype=np.float32)


def _affine_proto() -> onnx.ModelProto:
    """``y = x @ W + B``; W is 2 KiB, enough to go to external data."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _save_with_external_data(path: Path, location: str) -> Path:
    # onnx.save(save_as_external_data=True) empties the proto it is given; use a fresh one.
    onnx.save(_affine_proto(), os.fspath(path), save_as_external_data=True, location=location, size_threshold=0)
    return path


def _affine_inputs() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)}


def _affine_expected(inputs: dict[str, np.ndarray]) -> np.ndarray:
    return inputs["x"] @ WEIGHTS + BIAS


def test_round_trip_keeps_outputs(tmp_path):
    model = parse_model(
        """
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[N, 4] x) => (float[N, 4] y) <float[4] b = {1.0, -2.0, 0.5, 3.0}> {
            t = Mul(x, x)
            y = Add(t, b)
        }
        """
    )
    path = save_model(model, tmp_path / "model.onnx")
    assert path == (tmp_path / "model.onnx").absolute()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"], "a small model is one file"
    loaded = load_model(path)
    assert [node.op_type for node in loaded.graph] == ["Mul", "Add"]
    assert_same_outputs(model, loaded, {"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)})


def test_external_data_is_written_beside_the_output(tmp_path):
    source, destination = tmp_path / "source", tmp_path / "destination"
    source.mkdir()
    destination.mkdir()
    _save_with_external_data(source / "model.onnx", "w.bin")
    source_before = snapshot_tree(source)

    model = load_model(source / "model.onnx")
    assert isinstance(model.graph.initializers["W"].const_value, ir.ExternalTensor), "weights stay on disk"
    save_model(model, destination / "model.opt.onnx")

    assert sorted(p.name for p in destination.iterdir()) == ["model.opt.onnx", "model.opt.onnx.data"]
    assert _external_locations(destination / "model.opt.onnx") == {"model.opt.onnx.data"}
    assert snapshot_tree(source) == source_before, "the input and its data file are untouched"

    # The output folder alone must be enough: move it away from the source before running it.
    moved = shutil.move(destination, tmp_path / "elsewhere")
    inputs = _affine_inputs()
    (actual,) = _ort_run(Path(moved) / "model.opt.onnx", inputs)
    np.testing.assert_allclose(actual, _affine_expected(inputs), rtol=1e-5, atol=1e-5)
    # Saving must not leave the in-memory model pointing at the deleted staging folder.
    np.testing.assert_allclose(run(model, inputs)["y"], _affine_expected(inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_failed_write_leaves_the_previous_output(tmp_path, monkeypatch, external):
    source, destination = tmp_path / "source", tmp_path / "destination"
    source.mkdir()
    destination.mkdir()
    if external:
        _save_with_external_data(source / "model.onnx", "w.bin")
    else:
        onnx.save(_affine_proto(), os.fspath(source / "model.onnx"))
    model = load_model(source / "model.onnx")
    output = save_model(model, destination / "out.onnx")
    assert (destination / "out.onnx.data").exists() == external
    before = snapshot_tree(tmp_path)

    real_save = ir.save

    def save_then_fail(model, path, **kwargs):
        # Write everything, then damage what was written, as a full disk would.
        real_save(model, path, **kwargs)
        with open(path, "r+b") as written:
            written.truncate(7)
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path))

    # model_io calls onnx_ir's save through the module (``ir.save``), so patch it there.
    assert model_io.ir is ir
    monkeypatch.setattr(ir, "save", save_then_fail)
    with pytest.raises(OutputPathError, match="cannot write the output model \\(No space left on device\\)"):
        save_model(model, output)
    assert snapshot_tree(tmp_path) == before, "the previous output changed or a temporary file was left"
    inputs = _affine_inputs()
    (actual,) = _ort_run(output, inputs)
    np.testing.assert_allclose(actual, _affine_expected(inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_refuses_to_overwrite_the_input(tmp_path, spelling):
    path = tmp_path / "model.onnx"
    onnx.save(_affine_proto(), os.fspath(path))
    (tmp_path / "sub").mkdir()
    output = {
        "same": path,
        "dotdot": tmp_path / "sub" / ".." / "model.onnx",
        "symlink": tmp_path / "link.onnx",
        "hardlink": tmp_path / "hard.onnx",
    }[spelling]
    if spelling == "symlink":
        output.symlink_to(path)
    elif spelling == "hardlink":
        os.link(path, output)
    before = snapshot_tree(tmp_path)
    model = load_model(path)
    with pytest.raises(OutputPathError, match="would overwrite the input model"):
        save_model(model, output, input_path=path)
    assert snapshot_tree(tmp_path) == before


def test_refuses_to_overwrite_the_weights_the_model_reads(tmp_path):
    # out.onnx.data is a name saving as out.onnx gives its weights, and the very file W is read from.
    _save_with_external_data(tmp_path / "model.onnx", "out.onnx.data")
    before = snapshot_tree(tmp_path)
    model = load_model(tmp_path / "model.onnx")
    with pytest.raises(OutputPathError, match="out.onnx.data: the model reads its weights from this file"):
        save_model(model, tmp_path / "out.onnx")
    assert snapshot_tree(tmp_path) == before


def test_saving_again_renames_the_weights_and_removes_the_old_ones(tmp_path):
    """Each save gives the weights a name no file has; the old model's weights go once the new model is in place."""
    source = _save_with_external_data(tmp_path / "model.onnx", "w.bin")
    output = tmp_path / "out" / "out.onnx"
    output.parent.mkdir()
    (output.parent / "out.onnx.unrelated.data").write_bytes(b"kept")  # not a name graphopt gives: kept
    names = []
    for _ in range(3):
        save_model(load_model(source), output)
        (location,) = _external_locations(output)
        names.append(location)
        assert sorted(p.name for p in output.parent.iterdir()) == sorted(
            ["out.onnx", location, "out.onnx.unrelated.data"]
        )
        inputs = _affine_inputs()
        np.testing.assert_allclose(_ort_run(output, inputs)[0], _affine_expected(inputs), rtol=1e-5, atol=1e-5)
    assert names[0] == names[2] == "out.onnx.data" and re.fullmatch(r"out\.onnx\.[0-9a-f]{8}\.data", names[1])


# --- a model over 2 GiB -----------------------------------------------------------------

# 540,000 x 1024 float32 = 2.21e9 bytes, past protobuf's 2 GiB (2.147e9) limit.
BIG_ROWS, BIG_COLUMNS = 540_000, 1024
FILLED_ROWS = [0, 1, 12_345, BIG_ROWS - 1]


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    """``y = x + Gather(W, idx)`` with W of 2.2 GB in external data, mostly a sparse hole.

    ``idx`` is a graph input so nothing can fold W away; Gather makes ORT touch only
    four rows, so running it costs nothing next to writing the weights.
    """
    folder = tmp_path_factory.mktemp("big-source")
    weights = np.memmap(folder / "weights.bin", dtype=np.float32, mode="w+", shape=(BIG_ROWS, BIG_COLUMNS))
    for row in FILLED_ROWS:
        weights[row] = np.arange(BIG_COLUMNS, dtype=np.float32) + row
    weights.flush()
    del weights
    table = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[BIG_ROWS, BIG_COLUMNS])
    table.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "weights.bin", "offset": "0", "length": str(BIG_ROWS * BIG_COLUMNS * 4)}.items():
        table.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["W", "idx"], ["rows"]), helper.make_node("Add", ["x", "rows"], ["y"])],
        "big",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(FILLED_ROWS), BIG_COLUMNS]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, [len(FILLED_ROWS)]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(FILLED_ROWS), BIG_COLUMNS])],
        initializer=[table],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), folder / "big.onnx")
    yield folder / "big.onnx"
    shutil.rmtree(folder, ignore_errors=True)


def _check_big_output(output: Path, source: Path) -> None:
    assert sorted(p.name for p in output.parent.iterdir()) == sorted([output.name, output.name + ".data"])
    assert output.stat().st_size < 64 << 10, "the weights must not be inside the .onnx file"
    assert (output.parent / (output.name + ".data")).stat().st_size >= BIG_ROWS * BIG_COLUMNS * 4
    assert _external_locations(output) == {output.name + ".data"}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((len(FILLED_ROWS), BIG_COLUMNS)).astype(np.float32)
    idx = np.array(FILLED_ROWS[::-1], dtype=np.int64)
    (actual,) = _ort_run(output, {"x": x, "idx": idx})
    table = np.memmap(source.parent / "weights.bin", dtype=np.float32, mode="r", shape=(BIG_ROWS, BIG_COLUMNS))
    np.testing.assert_array_equal(actual, x + table[idx])


def _source_state(source: Path) -> tuple:
    data = source.parent / "weights.bin"
    return source.read_bytes(), source.stat().st_mtime_ns, data.stat().st_size, data.stat().st_mtime_ns


def test_model_over_2gb_loads_saves_and_runs(big_model, tmp_path):
    before = _source_state(big_model)
    model = load_model(big_model)
    table = model.graph.initializers["W"].const_value
    assert isinstance(table, ir.ExternalTensor), "weights must be memory-mapped, not read"
    assert table.nbytes > 1 << 31
    output = tmp_path / "out" / "big.onnx"
    output.parent.mkdir()
    try:
        assert save_model(model, output) == output
        _check_big_output(output, big_model)
        assert _source_state(big_model) == before
    finally:
        shutil.rmtree(output.parent, ignore_errors=True)


def test_cli_optimizes_model_over_2gb_with_verification(big_model, tmp_path):
    before = _source_state(big_model)
    output = tmp_path / "out" / "big.opt.onnx"
    output.parent.mkdir()
    report = tmp_path / "report.json"
    try:
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "optimizer.cli",
                "optimize",
                os.fspath(big_model),
                "-o",
                os.fspath(output),
                "--pipeline-json",
                os.fspath(report),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert completed.returncode == 0, completed.stderr
        assert json.loads(report.read_text())["verified"] is True
        _check_big_output(output, big_model)
        assert _source_state(big_model) == before
    finally:
        shutil.rmtree(output.parent, ignore_errors=True)


def test_external_tensors_in_attributes_and_subgraphs_are_read_from_the_models_folder(tmp_path, monkeypatch):
    """A Constant's value and an If branch's initializer in external data: run and saved from any working directory."""
    constant = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.arange(256, dtype=np.float32)))
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["x", "t"], ["then_y"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, [256])],
        initializer=[numpy_helper.from_array(np.ones(256, np.float32), "t")],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Sub", ["x", "c"], ["else_y"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, [256])],
    )
    graph = helper.make_graph(
        [constant, helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        "branches",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [256]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])],
    )
    source = tmp_path / "source" / "m.onnx"
    source.parent.mkdir()
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10),
        os.fspath(source),
        save_as_external_data=True,
        location="m.data",
        size_threshold=0,
        convert_attribute=True,
    )
    monkeypatch.chdir(tmp_path)  # not the model's folder
    output = save_model(load_model(source), tmp_path / "out.onnx")
    x = np.zeros(256, np.float32)
    session = ort.InferenceSession(os.fspath(output), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x, "cond": np.array(True)})[0], x + 1)
    np.testing.assert_array_equal(session.run(None, {"x": x, "cond": np.array(False)})[0], x - np.arange(256))


def _nbits_without_its_domain() -> onnx.ModelProto:
    """``y = MatMulNBits(x)`` in a model importing only the default domain, as ONNX Runtime's own
    ``matmul_nbits_quantizer`` writes it (ONNX Runtime runs it: its contrib ops are version 1)."""
    weight = np.random.default_rng(0).integers(0, 256, (8, 1, 16), dtype=np.uint8)
    node = helper.make_node(
        "MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=32, N=8, bits=4, block_size=32
    )
    graph = helper.make_graph(
        [node],
        "nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.full(8, 0.1, np.float32), "s")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_contrib_ops_without_their_domain_import_are_read_as_onnx_runtime_reads_them(tmp_path):
    proto = _nbits_without_its_domain()
    path = tmp_path / "ort_quantized.onnx"
    onnx.save(proto, path)
    before = path.read_bytes()
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # ONNX Runtime accepts it
    model = load_model(path)
    assert model.opset_imports["com.microsoft"] == 1
    saved = save_model(model, tmp_path / "out.onnx")
    onnx.checker.check_model(onnx.load(saved))
    assert path.read_bytes() == before  # the input is never modified

    from optimizer.api import optimize

    result = optimize(proto)  # the API's in-memory proto too
    assert result.opset_import and any(opset.domain == "com.microsoft" for opset in result.opset_import)
    given = ir.from_proto(proto)  # and an onnx-ir model, which stays as the caller gave it
    result = optimize(given)
    assert result.opset_imports["com.microsoft"] == 1 and "com.microsoft" not in given.opset_imports
    onnx.checker.check_model(ir.to_proto(result))


def test_compare_refuses_before_any_work_a_data_link_onnx_runtime_will_not_open(tmp_path, capsys):
    # graphopt reads a data file linked from another folder; ONNX Runtime (1.24+) does not, so
    # `optimize --compare` optimized, wrote the model, and then failed opening the input for timing.
    from tests._cli_models import run_cli

    real = tmp_path / "real"
    real.mkdir()
    _save_with_external_data(real / "model.onnx", "model.data")
    linked = tmp_path / "linked"
    linked.mkdir()
    shutil.copy(real / "model.onnx", linked / "model.onnx")
    (linked / "model.data").symlink_to(real / "model.data")
    output = tmp_path / "out.onnx"
    code, _, err = run_cli(
        ["optimize", linked / "model.onnx", "-o", output, "--compare", "--time-budget", "0.2"], capsys
    )
    assert code == 2 and "links to" in err and "outside the model's folder" in err
    assert not output.exists()
    code, _, err = run_cli(["compare", linked / "model.onnx", real / "model.onnx", "--time-budget", "0.2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "copy the data file beside the model" in err
    # A Hugging Face cache links the model file too, into the data's folder: ONNX Runtime opens it.
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    snapshot.mkdir()
    shutil.copy(real / "model.onnx", blobs / "a1")
    shutil.copy(real / "model.data", blobs / "model.data")
    (snapshot / "model.onnx").symlink_to(blobs / "a1")
    (snapshot / "model.data").symlink_to(blobs / "model.data")
    model_io.refuse_data_onnxruntime_will_not_open(snapshot / "model.onnx", "m")
    assert ort.InferenceSession(str(snapshot / "model.onnx"), providers=["CPUExecutionProvider"])
    # Without --compare nothing opens the input from its path: the linked model optimizes.
    assert run_cli(["optimize", linked / "model.onnx", "-o", output, "-q"], capsys)[0] == 0


@pytest.mark.parametrize("in_memory", [False, True])
def test_a_default_domain_spelled_ai_onnx_is_read_as_the_empty_spelling(tmp_path, in_memory):
    """A model importing "ai.onnx" (the same operator set as "") is read with "" everywhere: a rewrite adding a
    standard node imported "" at version 1 beside it, ONNX Runtime read every "" node at opset 1, and the
    pass was rolled back."""
    from optimizer.api import optimize_with_report

    nodes = [
        helper.make_node("Cast", ["x"], ["c"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["c"], ["d"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    if in_memory:
        optimized, report = optimize_with_report(ir.from_proto(proto))
    else:
        _, report = optimize_with_report(path, output=tmp_path / "out.onnx")
        optimized = ir.load(tmp_path / "out.onnx")
    assert [(p.name, p.status) for p in report.passes if p.status not in ("applied", "unchanged")] == []
    assert dict(optimized.opset_imports).get("") == 17 and "ai.onnx" not in optimized.opset_imports
    assert {node.domain for node in optimized.graph} <= {""}
    if not in_memory:
        assert onnx.load(path) == proto  # the input file is never modified

"""A hostile review of graphopt's file handling (session 57): loading and saving, external data, the 2 GB size
logic, ``-o``, and the Python API's ways in and out.

Findings, each fixed and tested here:

1. External data of a tensor in a model-local function (a ``Constant`` node's ``value``, as ``onnx.save(...,
   convert_attribute=True)`` writes one) was checked beside the model but then read from the *working
   directory*: ``load_model`` gave only the main graph's tensors their base folder. With verification, a valid
   model ONNX Runtime runs was refused ("ONNX Runtime cannot run the input model ... External data path does not
   exist: CWD/w.bin"); with a ``w.bin`` in the working directory, both models were verified on that file's
   numbers; and the output was written naming ``w.bin`` beside *itself* (a file that is not there, or another
   one: with ``--no-verify``, exit 0 and an output ONNX Runtime cannot load, or that computes 112 where the input
   computes 960).
2. Past 2 GB, weights in a ``Constant`` that is its graph's output (an ``If`` branch returning its weight table)
   stayed in the model file: onnx-ir's lifting skips a Constant that is a graph output, and the 2.2 GB model ended
   in a traceback (``google.protobuf.message.EncodeError: Failed to serialize proto``, exit 1) after 47 s. Such a
   Constant is now an ``Identity`` of its lifted initializer. What no initializer can hold (a model-local
   function's Constants past 2 GB) is a one-line error, exit 2, nothing written.
3. ``optimize(onnx_ir_model)`` of a model with external data returned a model whose tensors name their file by
   absolute path (graphopt's own anchoring): ``optimize`` refused that model ("outside the model's folder"), and
   ``onnx_ir.save`` of it, beside the input as the input itself saves, named the weights by absolute path, which
   ONNX Runtime refuses.

Held (checked, no test): an empty, random, text or cut ``.onnx``, a folder, a missing path (one line, exit 2);
``-o`` into a missing folder, under a file, onto the input's weights in a subfolder (one line, nothing written);
unicode and spaces in the model's, the weights' (in a subfolder) and the output's names; a 2.2 GB model whose If
branch returns a Constant, and one whose function holds it, run through the CLI (the second refused in one line,
no staging folder left); an ``onnx.ModelProto`` with external data returned naming its file as given.
"""

from __future__ import annotations

import os
from pathlib import Path

import google.protobuf.message
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer.model_io as model_io
from optimizer import cli, optimize
from optimizer.errors import UnsupportedModelError
from tests.helpers import snapshot_tree


def _run(path: Path, feed: dict) -> list:
    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"]).run(None, feed)


def _cli(argv: list, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main([os.fspath(arg) for arg in argv])
    return rc, capsys.readouterr().err


# --- 1. external data of a function's Constant ---------------------------------------------------------------

WEIGHTS = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)


def _function_external(folder: Path) -> Path:
    """``y = F(x)``, the local function ``F`` a ``MatMul`` by a ``Constant`` whose tensor is in ``w.bin``."""
    folder.mkdir(parents=True)
    (folder / "w.bin").write_bytes(WEIGHTS.tobytes())
    stored = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=list(WEIGHTS.shape))
    stored.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "w.bin", "offset": "0", "length": str(WEIGHTS.nbytes)}.items():
        stored.external_data.add(key=key, value=value)
    function = helper.make_function(
        "local",
        "F",
        ["i"],
        ["o"],
        [helper.make_node("Constant", [], ["c"], value=stored), helper.make_node("MatMul", ["i", "c"], ["o"])],
        [helper.make_opsetid("", 18)],
    )
    graph = helper.make_graph(
        [helper.make_node("F", ["x"], ["y"], domain="local")],
        "function-weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]
    path = folder / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets, functions=[function], ir_version=10), path)
    return path


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
@pytest.mark.parametrize("decoy", [False, True], ids=["nothing-in-cwd", "a-same-named-file-in-cwd"])
def test_a_functions_external_constant_is_read_from_the_models_folder(tmp_path, capsys, monkeypatch, verify, decoy):
    source = _function_external(tmp_path / "in")
    before = snapshot_tree(tmp_path / "in")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "out").mkdir()
    if decoy:
        (tmp_path / "cwd" / "w.bin").write_bytes((WEIGHTS * 0 + 7).tobytes())
        (tmp_path / "out" / "w.bin").write_bytes((WEIGHTS * 0 + 7).tobytes())
    monkeypatch.chdir(tmp_path / "cwd")
    output = tmp_path / "out" / "o.onnx"
    rc, stderr = _cli(["-q", "optimize", source, "-o", output, *([] if verify else ["--no-verify"])], capsys)
    assert rc == 0 and "Traceback" not in stderr, stderr
    feed = {"x": np.ones((2, 16), np.float32)}
    np.testing.assert_array_equal(_run(output, feed)[0], _run(source, feed)[0])
    assert snapshot_tree(tmp_path / "in") == before


# --- 2. past 2 GB: Constants a lifting leaves in the model file --------------------------------------------------

TABLE = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)


def _if_returning_constants(path: Path) -> Path:
    """``y = x @ (T if c else -T)``, each branch a lone ``Constant`` that is the branch's output."""

    def branch(name: str, table: np.ndarray) -> onnx.GraphProto:
        node = helper.make_node("Constant", [], [f"{name}_w"], value=numpy_helper.from_array(table, f"{name}_t"))
        return helper.make_graph(
            [node], name, [], [helper.make_tensor_value_info(f"{name}_w", TensorProto.FLOAT, [64, 64])]
        )

    graph = helper.make_graph(
        [
            helper.make_node("If", ["c"], ["w"], then_branch=branch("then", TABLE), else_branch=branch("else", -TABLE)),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        "if-constants",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    return path


def test_a_constant_that_is_a_branchs_output_is_saved_beside_the_model_past_the_threshold(tmp_path, monkeypatch):
    """Over 1.5 GB (here a threshold of 1 KiB) a Constant's weights go beside the output, also one that is its
    graph's output: past 2 GB inline, the protobuf cannot be written."""
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD_BYTES", 1 << 10)
    source = _if_returning_constants(tmp_path / "if.onnx")
    output = model_io.save_model(model_io.load_model(source), tmp_path / "out.onnx")
    assert output.stat().st_size < TABLE.nbytes, "the weights must not be inside the .onnx file"
    assert (tmp_path / "out.onnx.data").stat().st_size >= 2 * TABLE.nbytes
    onnx.checker.check_model(os.fspath(output), full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    for c in (True, False):
        feed = {"c": np.array(c), "x": x}
        np.testing.assert_array_equal(_run(output, feed)[0], _run(source, feed)[0])


def test_a_model_file_past_2gb_is_a_one_line_error_and_writes_nothing(tmp_path, monkeypatch):
    """What stays in the model file past 2 GB (a function's Constants) makes protobuf refuse to write it."""
    source = _function_external(tmp_path / "in")
    model = model_io.load_model(source)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "o.onnx").write_bytes(b"old")
    before = snapshot_tree(tmp_path)

    def past_2gb(*args, **kwargs):
        raise google.protobuf.message.EncodeError("Failed to serialize proto")

    monkeypatch.setattr(onnx, "save", past_2gb)  # what ir.save calls once the tensors are laid out
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)
    with pytest.raises(UnsupportedModelError, match="past protobuf's 2 GB"):
        model_io.save_model(model, tmp_path / "out" / "o.onnx", input_path=source)
    assert snapshot_tree(tmp_path) == before


# --- 3. the Python API: an onnx_ir.Model with external data ---------------------------------------------------


def test_an_onnx_ir_model_comes_back_naming_its_weights_as_it_did(tmp_path):
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "W")],
    )
    source = tmp_path / "m.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, os.fspath(source), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    optimized = optimize(ir.load(source))
    again = optimize(optimized)  # graphopt takes back what it gave
    ir.save(again, tmp_path / "again.onnx")  # beside the weights, as the input itself saves
    feed = {"x": rng.standard_normal((3, 64)).astype(np.float32)}
    np.testing.assert_allclose(_run(tmp_path / "again.onnx", feed)[0], _run(source, feed)[0], rtol=1e-6)

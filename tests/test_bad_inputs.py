"""The CLI's answer to bad input: one line on stderr, exit 2, no traceback, nothing written.

Every case builds its bad model (or flag, or .npz) in ``tmp_path``, runs ``graphopt
optimize`` and checks that the whole folder is exactly as it was: the input's bytes and
mtime, no output file, no temporary folder left beside where the output would go.
Most cases call ``optimizer.cli.main`` in-process (a subprocess costs about 1.5 s of
imports each); a few run the real ``python -m optimizer.cli`` to prove that the entry
point itself prints no traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import cli
from tests.helpers import snapshot_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
OPSET = 18
IR_VERSION = 10


# --- models -------------------------------------------------------------------------


def _model(
    nodes: list[onnx.NodeProto] | None = None,
    *,
    inputs: list[onnx.ValueInfoProto] | None = None,
    outputs: list[onnx.ValueInfoProto] | None = None,
    initializers: list[onnx.TensorProto] | None = None,
    opsets: list[onnx.OperatorSetIdProto] | None = None,
) -> onnx.ModelProto:
    """``y = x + x`` on ``x: float32[batch, 3]`` unless told otherwise; not checked, on purpose."""
    graph = helper.make_graph(
        nodes if nodes is not None else [helper.make_node("Add", ["x", "x"], ["y"])],
        "g",
        inputs if inputs is not None else [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        outputs if outputs is not None else [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=initializers or [],
    )
    return helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def _model_with_weights() -> onnx.ModelProto:
    """``y = x @ W`` with a 16 KiB initializer, so a cut lands inside real tensor data."""
    weights = numpy_helper.from_array(np.arange(4 * 1024, dtype=np.float32).reshape(1024, 4), "W")
    return _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializers=[weights],
    )


def _save(proto: onnx.ModelProto, path: Path, **kwargs) -> Path:
    # onnx.save(save_as_external_data=True) empties the tensors of the proto it is
    # given; save a copy so a builder can be reused.
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    onnx.save(copy, os.fspath(path), **kwargs)
    return path


# --- cases --------------------------------------------------------------------------


@dataclass
class Case:
    """A bad invocation: ``build(inputs, outputs)`` makes files and returns (model, output, extra args)."""

    build: Callable[[Path, Path], tuple[Path, Path, list[str]]]
    message: str  # a regex the single stderr line must match


def _good(inputs: Path, outputs: Path, *args: str) -> tuple[Path, Path, list[str]]:
    return _save(_model(), inputs / "model.onnx"), outputs / "out.onnx", list(args)


def _file_with(content: bytes) -> Callable[[Path, Path], tuple[Path, Path, list[str]]]:
    def build(inputs: Path, outputs: Path):
        path = inputs / "model.onnx"
        path.write_bytes(content)
        return path, outputs / "out.onnx", []

    return build


def _truncated(fraction: float | None) -> Callable[[Path, Path], tuple[Path, Path, list[str]]]:
    def build(inputs: Path, outputs: Path):
        data = _model_with_weights().SerializeToString()
        cut = len(data) - 1 if fraction is None else int(len(data) * fraction)
        path = inputs / "model.onnx"
        path.write_bytes(data[:cut])
        return path, outputs / "out.onnx", []

    return build


def _bad_model(proto_factory: Callable[[], onnx.ModelProto], *args: str):
    def build(inputs: Path, outputs: Path):
        return _save(proto_factory(), inputs / "model.onnx"), outputs / "out.onnx", list(args)

    return build


def _missing_file(inputs: Path, outputs: Path):
    return inputs / "absent.onnx", outputs / "out.onnx", []


def _folder_as_model(inputs: Path, outputs: Path):
    (inputs / "folder.onnx").mkdir()
    return inputs / "folder.onnx", outputs / "out.onnx", []


def _unknown_domain() -> onnx.ModelProto:
    return _model(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
        opsets=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example", 1)],
    )


def _unknown_domain_in_subgraph() -> onnx.ModelProto:
    branch = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["b"], domain="com.example")],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3])],
    )
    return _model(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        inputs=[
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
        ],
        opsets=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example", 1)],
    )


def _undefined_input() -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", "z"], ["y"])])


def _two_producers() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])])


def _unknown_onnx_op() -> onnx.ModelProto:
    return _model([helper.make_node("NoSuchOp", ["x"], ["y"])])


def _wrong_arity() -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x"], ["y"])])


def _shapeless_input() -> onnx.ModelProto:
    return _model(
        [helper.make_node("Relu", ["pixel_values"], ["y"])],
        inputs=[helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, None)],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )


def _nested_sequence_input() -> onnx.ModelProto:
    nested = helper.make_sequence_type_proto(
        helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [3]))
    )
    return _model(
        [helper.make_node("Identity", ["xs"], ["y"])],
        inputs=[helper.make_value_info("xs", nested)],
        outputs=[helper.make_value_info("y", nested)],
    )


def _sizes_no_value_fits() -> onnx.ModelProto:
    # 's' is both a Reshape target for six elements and Squeeze axes of a tensor with no axis of size 1.
    return _model(
        [helper.make_node("Reshape", ["x", "s"], ["y"]), helper.make_node("Squeeze", ["x", "s"], ["z"])],
        inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("s", TensorProto.INT64, [1]),
        ],
        outputs=[
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a"]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]),
        ],
    )


def _external_weights(inputs: Path, location: str) -> Path:
    # MatMul with a graph input keeps W alive through every pass, so the result
    # still reads W from external data.
    return _save(
        _model_with_weights(),
        inputs / "model.onnx",
        save_as_external_data=True,
        location=location,
        size_threshold=0,
    )


def _missing_external_data(inputs: Path, outputs: Path):
    model = _external_weights(inputs, "weights.bin")
    (inputs / "weights.bin").unlink()
    return model, outputs / "out.onnx", []


def _truncated_external_data(inputs: Path, outputs: Path):
    model = _external_weights(inputs, "weights.bin")
    os.truncate(inputs / "weights.bin", 4)
    return model, outputs / "out.onnx", []


def _external_data_outside_folder(inputs: Path, outputs: Path):
    (inputs / "inner").mkdir()
    model = _external_weights(inputs / "inner", "weights.bin")
    (inputs / "inner" / "weights.bin").rename(inputs / "weights.bin")
    proto = onnx.load(os.fspath(model), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../weights.bin"
    onnx.save(proto, os.fspath(model))
    return model, outputs / "out.onnx", []


def _npz(arrays: dict[str, np.ndarray]):
    def build(inputs: Path, outputs: Path):
        model, output, _ = _good(inputs, outputs)
        np.savez(inputs / "inputs.npz", **arrays)
        return model, output, ["--inputs", str(inputs / "inputs.npz")]

    return build


def _npy(inputs: Path, outputs: Path):
    model, output, _ = _good(inputs, outputs)
    np.save(inputs / "inputs.npy", np.zeros((2, 3), np.float32))
    return model, output, ["--inputs", str(inputs / "inputs.npy")]


def _npz_pickled(inputs: Path, outputs: Path):
    model, output, _ = _good(inputs, outputs)
    np.savez(inputs / "inputs.npz", x=np.array([{"not": "numbers"}], dtype=object))
    return model, output, ["--inputs", str(inputs / "inputs.npz")]


def _npz_not_npz(inputs: Path, outputs: Path):
    model, output, _ = _good(inputs, outputs)
    (inputs / "inputs.npz").write_text("x = [1, 2, 3]\n")
    return model, output, ["--inputs", str(inputs / "inputs.npz")]


def _npz_absent(inputs: Path, outputs: Path):
    model, output, _ = _good(inputs, outputs)
    return model, output, ["--inputs", str(inputs / "absent.npz")]


def _output_is_input(inputs: Path, outputs: Path):
    model, _, _ = _good(inputs, outputs)
    return model, model, []


def _output_is_input_spelled_differently(inputs: Path, outputs: Path):
    model, _, _ = _good(inputs, outputs)
    (inputs / "sub").mkdir()
    return model, inputs / "sub" / ".." / "model.onnx", []


def _output_is_symlink_to_input(inputs: Path, outputs: Path):
    model, output, _ = _good(inputs, outputs)
    output.symlink_to(model)
    return model, output, []


def _output_data_is_input_data(inputs: Path, outputs: Path):
    # The output's weights would go to out.onnx.data, which is the file the input reads.
    model = _external_weights(inputs, "out.onnx.data")
    return model, inputs / "out.onnx", []


def _output_folder_missing(inputs: Path, outputs: Path):
    model, _, _ = _good(inputs, outputs)
    return model, outputs / "absent" / "out.onnx", []


def _output_is_folder(inputs: Path, outputs: Path):
    model, _, _ = _good(inputs, outputs)
    (outputs / "out.onnx").mkdir()
    return model, outputs / "out.onnx", []


_CHECKER = r"rejected by onnx's checker"
_BAD_DIM = r"--dim .*: expected NAME=VALUE with a positive integer VALUE"
_NOT_ONNX = r"not a readable ONNX model \(the file is truncated, corrupt or not ONNX"

CASES: dict[str, Case] = {
    # the file itself
    "missing-file": Case(_missing_file, r"absent\.onnx: no such file"),
    "folder-as-model": Case(_folder_as_model, r"folder\.onnx: not a file"),
    "empty-file": Case(_file_with(b""), r"model\.onnx: the file is empty"),
    "text-file": Case(_file_with(b"this is not a model\nat all\n"), _NOT_ONNX),
    "random-bytes": Case(_file_with(np.random.default_rng(0).bytes(4096)), _NOT_ONNX),
    "png-header": Case(_file_with(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)), _NOT_ONNX),
    "truncated-50%": Case(_truncated(0.5), _NOT_ONNX),
    "truncated-90%": Case(_truncated(0.9), _NOT_ONNX),
    "truncated-1-byte": Case(_truncated(None), _NOT_ONNX),
    "missing-external-data": Case(
        _missing_external_data, r"external data file 'weights\.bin' is missing beside the model"
    ),
    "truncated-external-data": Case(
        _truncated_external_data, r"external data file 'weights\.bin' is truncated \(4 bytes; tensor '\w+' ends at byte"
    ),
    "external-data-outside-folder": Case(
        _external_data_outside_folder,
        r"tensor 'W' has its external data at '\.\./weights\.bin', outside the model's folder",
    ),
    # what we cannot check
    "unknown-domain": Case(_bad_model(_unknown_domain), r"operator domain 'com\.example', which graphopt cannot check"),
    "unknown-domain-in-subgraph": Case(
        _bad_model(_unknown_domain_in_subgraph), r"operator domain 'com\.example', which graphopt cannot check"
    ),
    "opset-too-new": Case(
        _bad_model(lambda: _model(opsets=[helper.make_opsetid("", 999)])),
        r"opset ai\.onnx 999 is newer than this onnx .* upgrade onnx",
    ),
    "ml-opset-too-new": Case(
        _bad_model(lambda: _model(opsets=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", 999)])),
        r"opset ai\.onnx\.ml 999 is newer than this onnx",
    ),
    # what onnx's checker rejects
    "checker-undefined-input": Case(_bad_model(_undefined_input), _CHECKER + r".*'z'"),
    "checker-two-producers": Case(_bad_model(_two_producers), _CHECKER + r".*single static assignment"),
    "checker-unknown-op": Case(_bad_model(_unknown_onnx_op), _CHECKER + r".*NoSuchOp"),
    "checker-wrong-arity": Case(_bad_model(_wrong_arity), _CHECKER + r".*input size 1"),
    # verification inputs
    "shapeless-input": Case(_bad_model(_shapeless_input), r"'pixel_values'.*no shape"),
    "nested-sequence-input": Case(
        _bad_model(_nested_sequence_input),
        r"input 'xs' is a sequence of .*cannot generate; pass real inputs with --inputs FILE\.npz, or --no-verify",
    ),
    "sizes-input-no-value-fits": Case(
        _bad_model(_sizes_no_value_fits),
        r"ONNX Runtime refuses every value graphopt generated for 's' .*--inputs FILE\.npz, or --no-verify",
    ),
    "dim-unknown-name": Case(
        lambda i, o: _good(i, o, "--dim", "sequence=8"),
        r"--dim sequence: the model has no symbolic dimension of that name \(it has: batch\)",
    ),
    "dim-no-value": Case(lambda i, o: _good(i, o, "--dim", "batch"), _BAD_DIM),
    "dim-not-a-number": Case(lambda i, o: _good(i, o, "--dim", "batch=two"), _BAD_DIM),
    "dim-zero": Case(lambda i, o: _good(i, o, "--dim", "batch=0"), _BAD_DIM),
    "dim-negative": Case(lambda i, o: _good(i, o, "--dim", "batch=-1"), _BAD_DIM),
    "dim-no-name": Case(lambda i, o: _good(i, o, "--dim", "=4"), _BAD_DIM),
    "npz-missing-key": Case(
        _npz({"input": np.zeros((2, 3), np.float32)}), r"--inputs .*inputs\.npz: no array for graph input 'x'"
    ),
    "npz-wrong-dtype": Case(_npz({"x": np.zeros((2, 3), np.float64)}), r"'x' is float64, the model expects float32"),
    "npz-wrong-rank": Case(_npz({"x": np.zeros(3, np.float32)}), r"'x' has rank 1, the model expects 2"),
    "npz-wrong-size": Case(_npz({"x": np.zeros((2, 5), np.float32)}), r"'x' has 5 on axis 1, where the model fixes 3"),
    "npz-pickled-objects": Case(_npz_pickled, r"--inputs .*inputs\.npz: not a readable \.npz file"),
    "npz-not-npz": Case(_npz_not_npz, r"--inputs .*inputs\.npz: not a readable \.npz file"),
    "npz-absent": Case(_npz_absent, r"--inputs .*absent\.npz: no such file"),
    "npy-not-npz": Case(
        _npy, r"--inputs .*inputs\.npy: a single array, not a \.npz file with one array per input name"
    ),
    # passes
    "unknown-pass": Case(
        lambda i, o: _good(i, o, "--passes", "fold-constants,no-such-pass"), r"unknown pass 'no-such-pass'"
    ),
    # the output path
    "output-is-input": Case(_output_is_input, r"the output would overwrite the input model; choose another -o"),
    "output-is-input-via-dotdot": Case(
        _output_is_input_spelled_differently, r"the output would overwrite the input model"
    ),
    "output-is-symlink-to-input": Case(_output_is_symlink_to_input, r"the output would overwrite the input model"),
    "output-data-is-input-data": Case(
        _output_data_is_input_data, r"out\.onnx\.data: the model reads its weights from this file"
    ),
    "output-folder-missing": Case(_output_folder_missing, r"absent: output folder does not exist"),
    "output-is-folder": Case(_output_is_folder, r"out\.onnx: is a folder"),
}


# Enough to prove the real entry point prints no traceback, one per family.
SUBPROCESS_CASES = [
    "missing-file",
    "truncated-50%",
    "unknown-domain",
    "checker-two-producers",
    "dim-no-value",
    "npz-missing-key",
    "output-is-input",
]


# --- running and checking -------------------------------------------------------------


def _prepare(case: Case, tmp_path: Path) -> tuple[list[str], Path]:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    model, output, extra = case.build(inputs, outputs)
    return ["optimize", os.fspath(model), "-o", os.fspath(output), *extra], output


_PROGRESS_LINE = re.compile(r"graphopt: (optimizing |comparing |  )")


def _assert_clean_failure(rc: int, stdout: str, stderr: str, message: str) -> None:
    assert "Traceback" not in stdout + stderr, stderr
    assert rc == 2, (rc, stderr)
    # Off a terminal the CLI writes progress lines to stderr as passes run (optimizer.console.LinesSink).
    lines = [line for line in stderr.strip("\n").splitlines() if not _PROGRESS_LINE.match(line)]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("graphopt: error: "), lines[0]
    assert re.search(message, lines[0]), f"{message!r} not in {lines[0]!r}"
    assert stdout == "", stdout


def _run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _run_subprocess(argv: list[str]) -> tuple[int, str, str]:
    completed = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return completed.returncode, completed.stdout, completed.stderr


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_error(name, tmp_path, capsys):
    argv, output = _prepare(CASES[name], tmp_path)
    existed = output.exists() or output.is_symlink()
    before = snapshot_tree(tmp_path)
    rc, stdout, stderr = _run_in_process(argv, capsys)
    _assert_clean_failure(rc, stdout, stderr, CASES[name].message)
    assert snapshot_tree(tmp_path) == before, "the run changed, added or left files behind"
    if not existed:
        assert not output.exists()


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_entry_point_prints_no_traceback(name, tmp_path):
    argv, output = _prepare(CASES[name], tmp_path)
    before = snapshot_tree(tmp_path)
    rc, stdout, stderr = _run_subprocess(argv)
    _assert_clean_failure(rc, stdout, stderr, CASES[name].message)
    assert snapshot_tree(tmp_path) == before
    assert not output.exists() or output == Path(argv[1])


def test_checker_message_is_not_cut_mid_sentence(tmp_path, capsys):
    # onnx's message for an undefined input spans three lines ("... input 'z' of node:",
    # the node, "is not output of any previous nodes."); its first line alone ends mid-sentence.
    argv, _ = _prepare(CASES["checker-undefined-input"], tmp_path)
    _, _, stderr = _run_in_process(argv, capsys)
    assert not stderr.rstrip().endswith("node:"), stderr


def test_unwritable_output_folder_is_one_line_error(tmp_path, capsys, monkeypatch):
    # Permission bits do not stop root, so make the folder refuse new entries the way a
    # read-only folder does: the staging folder cannot be created.
    import tempfile

    argv, output = _prepare(Case(_good, ""), tmp_path)
    mkdtemp = tempfile.mkdtemp

    def refuse_in_output_folder(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).absolute() == output.parent.absolute():
            raise PermissionError(13, "Permission denied", os.fspath(dir))
        return mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", refuse_in_output_folder)
    before = snapshot_tree(tmp_path)
    rc, stdout, stderr = _run_in_process(argv, capsys)
    _assert_clean_failure(rc, stdout, stderr, re.escape(os.fspath(output.parent)))
    assert snapshot_tree(tmp_path) == before and not output.exists()


def test_valid_model_succeeds_and_leaves_input_alone(tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    model = _save(_model_with_weights(), inputs / "model.onnx")
    input_before = snapshot_tree(inputs)
    output = outputs / "model.optimized.onnx"
    rc, stdout, stderr = _run_subprocess(["optimize", os.fspath(model), "-o", os.fspath(output)])
    assert rc == 0, stderr
    assert "Traceback" not in stdout + stderr
    onnx.checker.check_model(onnx.load(os.fspath(output)))
    assert snapshot_tree(inputs) == input_before
    assert sorted(path.name for path in outputs.iterdir()) == [output.name], "no temporary files beside the output"


def test_wrote_line_names_the_output_in_one_piece(tmp_path, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / ("a-folder-name-long-enough-to-push-the-path-past-80-columns" * 2)
    inputs.mkdir()
    outputs.mkdir()
    model = _save(_model(), inputs / "model.onnx")
    output = outputs / "model.optimized.onnx"
    rc, stdout, stderr = _run_in_process(["optimize", os.fspath(model), "-o", os.fspath(output)], capsys)
    assert rc == 0, stderr
    assert f"wrote {output}\n" in stdout

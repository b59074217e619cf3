"""Hostile or careless inputs, sizes and settings: one line on stderr and exit 2, never a traceback.

Issue 13's input cases: ``--inputs``/``--calibration`` files that are not what they claim
(empty, a ``.npy`` named ``.npz``, a cut or corrupted zip, a member that is no array, text,
pickled objects); sizes that would make graphopt allocate terabytes (a declared dim of
10^9, ``--dim batch=100000000000``, ``compare --batch``); tolerances that switch
verification off (NaN, infinity); input values that make verification meaningless
(all NaN, all empty) or that graphopt would drop (an initializer's value); API
arguments of the wrong type; and ``compare`` settings that cannot be measured
(``--iterations 0``, ``--threads -3``, ...) or models whose outputs differ in shape.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer.inputs
from optimizer import cli
from optimizer.api import optimize, optimize_with_report
from optimizer.compare.comparison import CompareSettings, compare
from optimizer.errors import GraphoptError, InputSpecError, OptionError
from optimizer.inputs import load_inputs, parse_dim_flags
from optimizer.options import Options
from optimizer.verify import parse_tolerance_flags
from tests.helpers import snapshot_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
OPSET = 18
# compare settings that keep a comparison to about a second.
QUICK = ["--time-budget", "0.5", "--iterations", "12", "--warmup", "1", "--threads", "1"]


# --- models ---------------------------------------------------------------------------


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)


def _float(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _add(shape=("batch", 3)) -> onnx.ModelProto:
    """``y = x + x`` on ``x: float32[shape]``."""
    return _model([helper.make_node("Add", ["x", "x"], ["y"])], [_float("x", list(shape))], [_float("y", list(shape))])


def _matmul(features: int = 4) -> onnx.ModelProto:
    """``y = x @ W`` on ``x: float32[batch, features]``: something ``--quantize dynamic`` can quantize."""
    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((features, 4)).astype(np.float32), "W")
    return _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [_float("x", ["batch", features])],
        [_float("y", ["batch", 4])],
        [weights],
    )


def _with_default() -> onnx.ModelProto:
    """``y = x + w``, where ``w`` is a graph input with an initializer: an input with a default value."""
    return _model(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [_float("x", ["batch", 3]), _float("w", [3])],
        [_float("y", ["batch", 3])],
        [numpy_helper.from_array(np.ones(3, np.float32), "w")],
    )


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save(proto, os.fspath(path))
    return path


# --- running the CLI ------------------------------------------------------------------


def _one_line_error(rc: int, stdout: str, stderr: str, message: str) -> str:
    assert "Traceback" not in stdout + stderr, stderr
    assert rc == 2, (rc, stderr)
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("graphopt: error: "), lines[0]
    assert re.search(message, lines[0]), f"{message!r} not in {lines[0]!r}"
    return lines[0]


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([os.fspath(arg) for arg in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _subprocess(argv: list[str]) -> tuple[int, str, str]:
    completed = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", *[os.fspath(arg) for arg in argv]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return completed.returncode, completed.stdout, completed.stderr


# --- files that are not the .npz they claim to be --------------------------------------


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _good_npz() -> bytes:
    return _npz_bytes(x=np.arange(6, dtype=np.float32).reshape(2, 3))


def _npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 3), np.float32))
    return buffer.getvalue()


def _bad_crc() -> bytes:
    data = bytearray(_good_npz())
    # The arrays are stored, not compressed: change one value's bytes; the zip's CRC no longer matches.
    position = bytes(data).index(np.float32(5).tobytes())
    data[position] ^= 0xFF
    return bytes(data)


def _corrupt_deflate() -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32))
    data = bytearray(buffer.getvalue())
    start = data.index(b"x.npy") + len(b"x.npy") + 20  # inside the deflate stream
    data[start : start + 16] = bytes(16)
    return bytes(data)


def _zip_of(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _pickled_objects() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"not": "numbers"}], dtype=object))
    return buffer.getvalue()


_UNREADABLE = r"not a readable \.npz file"
BAD_FILES = {
    "empty-file": (b"", _UNREADABLE + r" \(the file is empty\)"),
    "npy-named-npz": (_npy_bytes(), r"a single array, not a \.npz file"),
    "text-file": (b"x = [1, 2, 3]\n", _UNREADABLE + r" \(not a zip archive of \.npy arrays"),
    "truncated-zip": (_good_npz()[: len(_good_npz()) // 2], _UNREADABLE + r" \(truncated or corrupt"),
    "zip-cut-before-its-end": (_good_npz()[:-10], _UNREADABLE + r" \(truncated or corrupt"),
    "bad-crc": (_bad_crc(), _UNREADABLE + r" \(truncated or corrupt.*CRC"),
    "corrupt-deflate-stream": (_corrupt_deflate(), _UNREADABLE + r" \(truncated or corrupt"),
    "member-not-an-array": (_zip_of(**{"x.npy": b"hello world"}), _UNREADABLE + r" \('x\.npy' is not a \.npy array"),
    "member-not-npy": (
        _zip_of(**{"x.npy": _npy_bytes(), "readme.txt": b"hello"}),
        _UNREADABLE + r" \('readme\.txt' is not a \.npy array",
    ),
    "pickled-objects": (_pickled_objects(), _UNREADABLE + r" \('x' holds Python objects"),
    "member-declares-terabytes": (
        _zip_of(**{"x.npy": _npy_header((10**12, 3)) + bytes(12)}),
        _UNREADABLE + r" \(truncated or corrupt: 'x' declares float32\[1000000000000, 3\]",
    ),
    "member-of-unknown-format-version": (
        _zip_of(**{"x.npy": b"\x93NUMPY\x09\x00" + _npy_header((2, 3))[8:] + bytes(24)}),
        _UNREADABLE + r" \('x\.npy' is not a \.npy array",
    ),
}


def _bad_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "data" / "inputs.npz"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(BAD_FILES[name][0])
    return path


def _never_numpy_advice(line: str) -> None:
    assert "allow_pickle" not in line and "pickle.load" not in line and "unsafely" not in line, line


@pytest.mark.parametrize("flag", ["--inputs", "--calibration"])
@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_inputs_file_is_one_line_without_numpys_advice(name, flag, tmp_path, capsys):
    model = _save(_matmul(), tmp_path / "model.onnx")
    data = _bad_file(tmp_path, name)
    output = tmp_path / "out" / "out.onnx"
    output.parent.mkdir()
    extra = ["--quantize", "dynamic"] if flag == "--calibration" else []
    before = snapshot_tree(tmp_path)
    rc, stdout, stderr = _cli(["optimize", model, "-o", output, flag, data, *extra], capsys)
    line = _one_line_error(rc, stdout, stderr, rf"{flag} .*inputs\.npz: " + BAD_FILES[name][1])
    _never_numpy_advice(line)
    assert snapshot_tree(tmp_path) == before


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_the_api_and_compare_refuse_bad_files_alike(name, tmp_path):
    data = _bad_file(tmp_path, name)
    with pytest.raises(InputSpecError) as refused:
        optimize(_matmul(), inputs=data)
    assert "\n" not in str(refused.value)
    assert re.search(BAD_FILES[name][1], str(refused.value)), str(refused.value)
    _never_numpy_advice(str(refused.value))
    model = _save(_matmul(), tmp_path / "model.onnx")
    with pytest.raises(InputSpecError, match=BAD_FILES[name][1]):
        compare(model, model, inputs=data)


@pytest.mark.parametrize("name", ["empty-file", "bad-crc", "member-not-an-array", "text-file"])
def test_the_entry_point_prints_one_line_for_a_bad_inputs_file(name, tmp_path):
    model = _save(_add(), tmp_path / "model.onnx")
    data = _bad_file(tmp_path, name)
    rc, stdout, stderr = _subprocess(["optimize", model, "-o", tmp_path / "out.onnx", "--inputs", data])
    _never_numpy_advice(_one_line_error(rc, stdout, stderr, BAD_FILES[name][1]))
    assert not (tmp_path / "out.onnx").exists()


def test_a_folder_given_as_inputs_is_one_line(tmp_path, capsys):
    model = _save(_add(), tmp_path / "model.onnx")
    (tmp_path / "inputs.npz").mkdir()
    rc, stdout, stderr = _cli(
        ["optimize", model, "-o", tmp_path / "o.onnx", "--inputs", tmp_path / "inputs.npz"], capsys
    )
    _one_line_error(rc, stdout, stderr, r"--inputs .*inputs\.npz: is a folder, not a \.npz file")


def test_a_file_holding_more_than_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "inputs.npz"
    np.savez(path, x=np.zeros((512, 3), np.float32))
    monkeypatch.setattr(optimizer.inputs, "MAX_INPUT_BYTES", 4096)
    with pytest.raises(
        InputSpecError, match=r"--inputs .*: its arrays take 6 KiB, more than graphopt's limit of 4 KiB"
    ):
        load_inputs(path, onnx_ir_model(_add()))


def onnx_ir_model(proto: onnx.ModelProto):
    import onnx_ir as ir

    return ir.from_proto(proto)


def test_a_good_npz_still_loads_and_a_valid_run_still_succeeds(tmp_path, capsys):
    model = _save(_add(), tmp_path / "model.onnx")
    data = tmp_path / "inputs.npz"
    data.write_bytes(_good_npz())
    rc, _, stderr = _cli(["optimize", model, "-o", tmp_path / "out.onnx", "--inputs", data], capsys)
    assert rc == 0, stderr
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, x=np.ones((2, 3), np.float32))
    assert load_inputs(compressed, onnx_ir_model(_add()))["x"].shape == (2, 3)


# --- sizes that would allocate terabytes ------------------------------------------------

_WAYS_OUT = r"--dim NAME=SIZE.*--inputs FILE\.npz.*--no-verify"


@pytest.mark.parametrize(
    ("proto", "flags", "message"),
    [
        (_add(), ["--dim", "batch=100000000000"], r"'x' float32\[100000000000, 3\]"),
        (_add((1_000_000_000, 3)), [], r"'x' float32\[1000000000, 3\]"),
        (_add(("batch", 1_000_000_000)), [], r"'x' float32\[2, 1000000000\]"),
        # 320 MiB at the default binding; the second, longer binding verification adds (batch 2,
        # each free dim 257 instead of 128) takes 5.1 GiB.
        (
            _add(("batch", "d1", "d2", "d3", 40)),
            [],
            r"generated verification inputs.*'x' float32\[2, 257, 257, 257, 40\]",
        ),
    ],
    ids=["dim-flag", "declared-dim", "declared-dim-with-batch", "second-binding"],
)
def test_generated_inputs_past_the_memory_limit_are_refused_up_front(proto, flags, message, tmp_path, capsys):
    model = _save(proto, tmp_path / "model.onnx")
    rc, stdout, stderr = _cli(["optimize", model, "-o", tmp_path / "out.onnx", *flags], capsys)
    line = _one_line_error(rc, stdout, stderr, r"would take [\d.]+ [GT]iB.*more than graphopt's limit of 4 GiB")
    assert re.search(message, line) and re.search(_WAYS_OUT, line), line
    assert not (tmp_path / "out.onnx").exists()


def test_generated_calibration_samples_count_sixteen_along_the_batch_axis(tmp_path, capsys):
    # One sample row is 400 MB: verification (batch 1 and 2) fits, 16 calibration samples do not.
    model = _save(_add(("batch", 100_000_000)), tmp_path / "model.onnx")
    rc, stdout, stderr = _cli(["optimize", model, "-o", tmp_path / "out.onnx", "--quantize", "dynamic"], capsys)
    line = _one_line_error(rc, stdout, stderr, r"generated calibration samples .*would take 5\.96 GiB")
    assert "--calibration FILE.npz" in line and "--dim NAME=SIZE" in line, line


def test_the_memory_limit_is_checked_through_the_api_and_in_make_inputs():
    with pytest.raises(InputSpecError, match=_WAYS_OUT):
        optimize(_add(), dims={"batch": 10**11})
    with pytest.raises(InputSpecError, match=r"more than graphopt's limit"):
        optimizer.inputs.make_inputs(onnx_ir_model(_add()), {"batch": 10**11})


def test_the_entry_point_refuses_a_huge_dim_in_one_line(tmp_path):
    model = _save(_add(), tmp_path / "model.onnx")
    rc, stdout, stderr = _subprocess(["optimize", model, "-o", tmp_path / "out.onnx", "--dim", "batch=100000000000"])
    _one_line_error(rc, stdout, stderr, _WAYS_OUT)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("batch=0", r"--dim batch=0: expected NAME=VALUE with a positive integer VALUE"),
        ("batch=-3", r"--dim batch=-3: expected NAME=VALUE with a positive integer VALUE"),
        ("batch=²", r"--dim batch=²: expected NAME=VALUE with a positive integer VALUE"),
        ("batch=٣", r"--dim batch=٣: expected NAME=VALUE with a positive integer VALUE"),
        ("batch=1e3", r"--dim batch=1e3: expected NAME=VALUE with a positive integer VALUE"),
        ("batch=10000000000000000000000000", r"--dim batch=10000000000000000000000000: larger than"),
    ],
)
def test_dim_values_that_are_not_sizes_are_one_line(flag, message, tmp_path, capsys):
    model = _save(_add(), tmp_path / "model.onnx")
    for extra in ([], ["--no-verify", "--static-shapes"]):
        rc, stdout, stderr = _cli(["optimize", model, "-o", tmp_path / "out.onnx", "--dim", flag, *extra], capsys)
        _one_line_error(rc, stdout, stderr, message)


def test_options_refuse_a_dim_no_onnx_shape_can_hold():
    with pytest.raises(OptionError, match=r"--dim batch=\d+: larger than an ONNX dimension can be"):
        Options(dims={"batch": 2**63})
    with pytest.raises(InputSpecError):
        parse_dim_flags(["batch=٣"])


@pytest.mark.parametrize("flags", [["--dim", "batch=100000000000"], ["--batch", "1,100000000000"]])
def test_compare_refuses_inputs_past_the_memory_limit(flags, tmp_path, capsys):
    model = _save(_add(), tmp_path / "model.onnx")
    rc, stdout, stderr = _cli(["compare", model, model, *flags, *QUICK], capsys)
    line = _one_line_error(rc, stdout, stderr, r"would take [\d.]+ TiB.*more than graphopt's limit of 4 GiB")
    assert flags[0] in line, line


# --- tolerances that turn verification off ----------------------------------------------


@pytest.mark.parametrize("value", ["nan,nan", "nan,1e-4", "1e-3,nan", "inf,1e-4", "1e-3,inf", "1e-3,1e400", "-1,0"])
def test_tolerances_must_be_finite_and_not_negative(value, tmp_path, capsys):
    model = _save(_add(), tmp_path / "model.onnx")
    rc, stdout, stderr = _cli(["optimize", model, "-o", tmp_path / "o.onnx", "--tolerance", f"float32={value}"], capsys)
    _one_line_error(rc, stdout, stderr, rf"--tolerance float32={re.escape(value)}: .*finite.*not negative")
    with pytest.raises(InputSpecError, match="finite"):
        parse_tolerance_flags([f"float32={value}"])
    rtol, atol = (float(part) for part in value.split(","))
    with pytest.raises(OptionError, match=r"--tolerance float32=.*: rtol and atol must be finite and not negative"):
        Options(tolerances={"float32": (rtol, atol)})


# --- values that make verification meaningless -----------------------------------------


def test_all_nan_inputs_are_refused(tmp_path, capsys):
    model = _save(_add(), tmp_path / "model.onnx")
    data = tmp_path / "inputs.npz"
    np.savez(data, x=np.full((2, 3), np.nan, np.float32))
    rc, stdout, stderr = _cli(["optimize", model, "-o", tmp_path / "out.onnx", "--inputs", data], capsys)
    _one_line_error(rc, stdout, stderr, r"--inputs .*inputs\.npz: 'x' is all NaN: nothing can be checked on it")
    with pytest.raises(InputSpecError, match=r"inputs: 'x' is all NaN"):
        optimize(_add(), inputs={"x": np.full((2, 3), np.nan, np.float32)})


def test_empty_inputs_are_refused(tmp_path, capsys):
    model = _save(_add(), tmp_path / "model.onnx")
    data = tmp_path / "inputs.npz"
    np.savez(data, x=np.zeros((0, 3), np.float32))
    rc, stdout, stderr = _cli(["optimize", model, "-o", tmp_path / "out.onnx", "--inputs", data], capsys)
    _one_line_error(rc, stdout, stderr, r"--inputs .*inputs\.npz: every array is empty")


def test_partly_nan_inputs_are_used_with_a_note():
    x = np.array([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]], np.float32)
    _, report = optimize_with_report(_add(), inputs={"x": x})
    assert "'x' holds 1 NaN among 6 values" in report.input_sets[0], report.input_sets


def test_infinities_are_values_an_additive_mask_may_hold():
    x = np.array([[0.0, -np.inf, 0.0], [0.0, 0.0, -np.inf]], np.float32)
    _, report = optimize_with_report(_add(), inputs={"x": x})
    assert report.input_sets[0] == "the given inputs"


def test_calibration_data_holding_a_nan_is_refused(tmp_path, capsys):
    model = _save(_matmul(), tmp_path / "model.onnx")
    data = tmp_path / "calibration.npz"
    argv = ["optimize", model, "-o", tmp_path / "out.onnx", "--quantize", "dynamic", "--calibration", data]
    np.savez(data, x=np.full((4, 4), np.nan, np.float32))
    rc, stdout, stderr = _cli(argv, capsys)
    _one_line_error(rc, stdout, stderr, r"--calibration .*calibration\.npz: 'x' is all NaN")
    # Partly NaN too, where it reaches the outputs: int8 ranges leave a NaN out, but pruning's scores (every one NaN,
    # so the cut kept the first units by position) and low-rank's SVD do not (tests/test_review_s43_approx.py).
    np.savez(data, x=np.where(np.eye(4) > 0, np.nan, 1).astype(np.float32))
    rc, stdout, stderr = _cli(argv, capsys)
    _one_line_error(
        rc,
        stdout,
        stderr,
        r"--calibration .*calibration\.npz: 'x' holds 4 NaN, and the model reads them",
    )


# --- a value for an input that has a default (an initializer) ----------------------------


_DEFAULT_REFUSED = r"'w' has a default value in the model \(an initializer\).*remove 'w'"


def test_a_value_for_an_input_with_a_default_is_refused_everywhere(tmp_path, capsys):
    model = _save(_with_default(), tmp_path / "model.onnx")
    data = tmp_path / "inputs.npz"
    np.savez(data, x=np.ones((2, 3), np.float32), w=np.full(3, 5, np.float32))
    rc, stdout, stderr = _cli(["optimize", model, "-o", tmp_path / "out.onnx", "--inputs", data], capsys)
    _one_line_error(rc, stdout, stderr, r"--inputs .*inputs\.npz: " + _DEFAULT_REFUSED)
    arrays = {"x": np.ones((2, 3), np.float32), "w": np.full(3, 5, np.float32)}
    with pytest.raises(InputSpecError, match=r"^inputs: " + _DEFAULT_REFUSED):
        optimize(_with_default(), inputs=arrays)
    with pytest.raises(InputSpecError, match=r"^calibration: " + _DEFAULT_REFUSED):
        optimize(_with_default(), calibration=arrays, quantize="dynamic")
    with pytest.raises(InputSpecError, match=_DEFAULT_REFUSED):
        compare(model, model, inputs=data)
    # Without the value, the model's own default is used, as before.
    optimize(_with_default(), inputs={"x": np.ones((2, 3), np.float32)})


# --- API arguments of the wrong type -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (42, r"expected a mapping of input names to arrays, or an \.npz path, not int"),
        ([np.ones((2, 3), np.float32)], r"expected a mapping of input names to arrays, or an \.npz path, not list"),
        ({"x": None}, r"'x' is None, not an array"),
        ({"x": object()}, r"'x' holds Python objects \(object\), not numbers or strings"),
        ({"x": {"a": 1}}, r"'x' holds Python objects \(dict\), not numbers or strings"),
        ({"x": [[1.0], [1.0, 2.0]]}, r"'x' is not an array \(rows of different lengths"),
        ({7: np.ones((2, 3), np.float32)}, r"input names are strings, not 7"),
    ],
)
def test_inputs_of_the_wrong_type_are_one_line(value, message):
    with pytest.raises(InputSpecError, match=r"^inputs: " + message):
        optimize(_add(), inputs=value)
    with pytest.raises(InputSpecError, match=r"^calibration: " + message):
        optimize(_matmul(), calibration=value, quantize="dynamic")


def test_compare_inputs_of_the_wrong_type_are_one_line(tmp_path):
    model = _save(_add(), tmp_path / "model.onnx")
    with pytest.raises(InputSpecError, match=r"^inputs: expected a mapping"):
        compare(model, model, inputs=42)


# --- compare: settings that cannot be measured, outputs that differ ----------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--iterations", "0"], r"--iterations 0: expected a positive number of timed runs"),
        (["--iterations", "-5"], r"--iterations -5: expected a positive number of timed runs"),
        (["--threads", "-3"], r"--threads -3: expected a positive number of threads"),
        (["--threads", "0"], r"--threads 0: expected a positive number of threads"),
        (["--warmup", "-1"], r"--warmup -1: expected a number of untimed runs, 0 or more"),
        (["--time-budget", "0"], r"--time-budget 0(\.0)?: expected a positive, finite number of seconds"),
        (["--time-budget", "-2"], r"--time-budget -2(\.0)?: expected a positive, finite number of seconds"),
        (["--time-budget", "nan"], r"--time-budget nan: expected a positive, finite number of seconds"),
        (["--time-budget", "inf"], r"--time-budget inf: expected a positive, finite number of seconds"),
    ],
)
def test_compare_settings_out_of_range_are_one_line(flags, message, tmp_path, capsys):
    model = _save(_add(), tmp_path / "model.onnx")
    settings = dict(zip(["--time-budget", "--iterations", "--warmup", "--threads"], ["0.5", "12", "1", "1"]))
    settings.update(dict(zip(flags[::2], flags[1::2])))
    argv = ["compare", model, model, *[part for pair in settings.items() for part in pair]]
    rc, stdout, stderr = _cli(argv, capsys)
    _one_line_error(rc, stdout, stderr, message)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"iterations": 0}, r"--iterations 0"),
        ({"threads": -3}, r"--threads -3"),
        ({"threads": True}, r"--threads True"),
        ({"warmup": -1}, r"--warmup -1"),
        ({"warmup": 1.5}, r"--warmup 1.5"),
        ({"time_budget": 0}, r"--time-budget 0"),
        ({"batches": (0,)}, r"--batch 0: expected a positive integer"),
        ({"batches": ()}, r"--batch: give at least one batch size"),
        ({"eps": 42}, r"--ep 42: expected execution provider names"),
        ({"eps": ("cpu", None)}, r"--ep None: expected execution provider names"),
    ],
)
def test_compare_settings_are_checked_where_they_are_built(values, message):
    with pytest.raises(OptionError, match=message):
        CompareSettings(**values)


def test_compare_settings_take_a_comma_separated_string_of_providers_as_the_cli_does():
    assert CompareSettings(eps="cpu, cuda").eps == ("cpu", "cuda")


def _widened() -> onnx.ModelProto:
    """``y = concat(x, x)``: ``y`` is float32[batch, 6] where ``_add``'s is float32[batch, 3]."""
    return _model(
        [helper.make_node("Concat", ["x", "x"], ["y"], axis=1)],
        [_float("x", ["batch", 3])],
        [_float("y", ["batch", 6])],
    )


def _halved() -> onnx.ModelProto:
    """``y = float16(x + x)``: ``_add`` computed, then stored as float16."""
    return _model(
        [helper.make_node("Add", ["x", "x"], ["s"]), helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT16)],
        [_float("x", ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 3])],
    )


def _stringified() -> onnx.ModelProto:
    return _model(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)],
        [_float("x", ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", 3])],
    )


@pytest.mark.parametrize(
    ("after", "warning", "compared"),
    [
        (
            _widened,
            r"output 'y' is float32\[1, 6\] in AFTER, float32\[1, 3\] in BEFORE: its accuracy is not compared",
            False,
        ),
        (_halved, r"output 'y' is float16\[1, 3\] in AFTER, float32\[1, 3\] in BEFORE", True),
        (
            _stringified,
            r"output 'y' is string\[1, 3\] in AFTER, float32\[1, 3\] in BEFORE: its accuracy is not compared",
            False,
        ),
    ],
    ids=["shape", "dtype", "kind"],
)
def test_compare_says_when_outputs_differ_in_shape_or_dtype(after, warning, compared, tmp_path, capsys):
    before = _save(_add(), tmp_path / "before.onnx")
    after_path = _save(after(), tmp_path / "after.onnx")
    rc, stdout, stderr = _cli(["compare", before, after_path, *QUICK, "--json", tmp_path / "c.json"], capsys)
    assert rc == 0 and "Traceback" not in stdout + stderr, stderr
    assert re.search(warning, " ".join(stdout.split())), stdout
    report = compare(before, after_path, settings=CompareSettings(threads=1, time_budget=0.2, iterations=10, warmup=0))
    assert any(re.search(warning, text) for text in report.warnings), report.warnings
    assert [accuracy.name for accuracy in report.providers[0].accuracy] == (["y"] if compared else [])


def test_every_refusal_here_is_a_graphopt_error():
    # What the CLI prints in one line is a GraphoptError; a bare ValueError would be a traceback.
    assert issubclass(InputSpecError, GraphoptError) and issubclass(OptionError, GraphoptError)

"""A hostile review of the command line (2026-12-05): each case below passed a run it should have stopped.

A flag of one value given twice kept the last value without a word (a CI job's shared gates loosened by its own
``--min-cosine -1``, ``-o a -o b`` writing only ``b``, a verification tolerance given twice); ``--threads 3000``
started thousands of threads and did not stop on SIGTERM; an output folder ``os.access`` called writable refused
the file after the work was done; ``--print-config`` wrote a non-UTF-8 path as ``?``, and the recipe ran another file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._cli_models import run_cli, save_matmul_model


@pytest.fixture
def model(tmp_path) -> Path:
    return save_matmul_model(tmp_path / "m.onnx")


def _run(argv: list[object], capsys) -> tuple[int, str, str]:
    """``run_cli``, with argparse's own exit (its errors) read as the exit code it is."""
    try:
        return run_cli(argv, capsys)
    except SystemExit as stop:
        captured = capsys.readouterr()
        return int(stop.code), captured.out, captured.err


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--min-cosine", "0.99", "--min-cosine", "-1"], "--min-cosine given twice (0.99 and -1.0)"),
        (["-o", "b.onnx"], "-o given twice (out.onnx and b.onnx)"),
        (["--quantize", "static", "--quantize", "dynamic"], "--quantize given twice (static and dynamic)"),
        (["--tolerance", "float32=0,0", "--tolerance", "float32=1,1"], "--tolerance float32 given twice (0,0 and 1,1)"),
    ],
)
def test_optimize_refuses_a_flag_given_twice_with_different_values(model, tmp_path, capsys, extra, said):
    code, _, err = _run(["optimize", model, "-o", tmp_path / "out.onnx", *extra], capsys)
    assert code == 2 and said in err.replace(os.fspath(tmp_path) + os.sep, ""), err
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "b.onnx").exists()


def test_compare_refuses_a_gate_given_twice_with_different_values(model, capsys):
    code, _, err = _run(["compare", model, model, "--max-ratio", "0.01", "--max-ratio", "100"], capsys)
    assert code == 2 and "--max-ratio given twice (0.01 and 100.0)" in err


def test_the_same_value_twice_is_one_value(model, tmp_path, capsys):
    code, _, err = _run(
        [
            "optimize",
            model,
            "-o",
            tmp_path / "out.onnx",
            "--passes",
            "remove-unused",
            "--passes",
            "remove-unused",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err


@pytest.mark.parametrize("command", ["optimize", "compare"])
def test_a_thread_count_past_four_per_core_is_refused(model, tmp_path, capsys, command):
    argv = ["optimize", model, "-o", tmp_path / "out.onnx"] if command == "optimize" else ["compare", model, model]
    code, _, err = _run([*argv, "--threads", "3000"], capsys)
    assert code == 2 and "--threads 3000: more than" in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc, where os.access says yes and open says no")
def test_an_output_folder_that_refuses_files_is_found_before_the_work(model, tmp_path, capsys):
    code, _, err = _run(["compare", model, model, "--json", tmp_path / "a.json", "--html", "/proc/x.html"], capsys)
    assert code == 2 and "/proc: cannot write here" in err
    assert not (tmp_path / "a.json").exists()  # no report written beside the one that could not be


@pytest.mark.skipif(os.name == "nt", reason="POSIX file names are bytes")
def test_print_config_refuses_a_path_toml_cannot_hold(model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    odd = os.fsdecode(b"model\xff.onnx")
    Path(odd).write_bytes(model.read_bytes())
    code, out, err = _run(["optimize", odd, "-o", "out.onnx", "--print-config"], capsys)
    assert code == 2 and "not UTF-8 text" in err and out == ""


@pytest.mark.parametrize(
    "flags",
    [["--compare-js", "a.json", "--json", "b.json"], ["--json", "a.json", "--compare-js", "b.json"]],
)
def test_an_old_flag_name_beside_an_abbreviated_new_one_is_refused(model, tmp_path, capsys, flags):
    # A review: argparse hands an abbreviation's full name to the action; a look at the command line's words for
    # the full new name missed it, and one of the two values was dropped without a word.
    argv = ["optimize", model, "-o", tmp_path / "out.onnx", "--compare", *flags, "--print-config"]
    code, out, err = _run(argv, capsys)
    assert code == 2 and "the old and the new name of one flag" in err, err


def test_an_initializer_does_not_take_a_graph_inputs_name_added_later():
    # A review: an input appended after the graph was built was missing from onnx_ir's name record, and an
    # initializer of its name became the input's overridable default (the fed value replaced the constant).
    import numpy as np
    import onnx_ir as ir

    from passes._utils import add_initializer

    graph = ir.Graph([], [], nodes=[], opset_imports={"": 18})
    graph.inputs.append(ir.Value(name="mask", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2])))
    value = add_initializer(graph, "mask", np.ones(2, np.float32))
    assert value.name != "mask"

"""A hostile review of the command line's file safety and messages (2026-12-01): each case failed before.

Data loss with exit 0 (an output over the ``--config`` file, or into an ``--inputs``
folder), a ``--dim`` silently dropped, input names numpy took for its own arguments, a
memory probe that imported the working folder's packages, ``demo`` tracebacks,
``optimize --compare`` writing its model before a comparison mistake was found, and
misleading or missing messages.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests._cli_models import run_cli, save_matmul_model
from tests.helpers import snapshot_tree


@pytest.fixture
def model(tmp_path) -> Path:
    return save_matmul_model(tmp_path / "m.onnx")


@pytest.mark.parametrize(
    "argv",
    [
        ["optimize", "m.onnx", "--config", "recipe.toml", "-o", "recipe.toml"],
        ["optimize", "m.onnx", "-o", "out.onnx", "--config", "recipe.toml", "--pipeline-json", "recipe.toml"],
        ["compare", "m.onnx", "m.onnx", "--config", "recipe.toml", "--html", "recipe.toml"],
    ],
)
def test_no_output_overwrites_the_config_file(model, tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    Path("recipe.toml").write_text('passes = "remove-unused"\n' if argv[0] == "optimize" else "threads = 1\n")
    before = snapshot_tree(tmp_path)
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "would overwrite the --config file" in err
    assert snapshot_tree(tmp_path) == before


@pytest.mark.parametrize("flag", ["-o", "--pipeline-json"])
def test_no_data_file_is_written_into_an_inputs_or_calibration_folder(model, tmp_path, monkeypatch, capsys, flag):
    monkeypatch.chdir(tmp_path)
    os.mkdir("data")
    np.save("data/x.npy", np.ones((2, 8), np.float32))
    argv = ["optimize", "m.onnx", "--inputs", "data"]
    argv += ["-o", "data/x.npy"] if flag == "-o" else ["-o", "out.onnx", "--pipeline-json", "data/new.npz"]
    before = snapshot_tree(tmp_path)
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "into the --inputs folder" in err
    assert snapshot_tree(tmp_path) == before


def test_a_dim_the_inputs_contradict_is_refused_not_dropped(model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.savez("in.npz", x=np.ones((1, 8), np.float32))
    code, _, err = run_cli(
        ["optimize", "m.onnx", "-o", "s.onnx", "--static-shapes", "--dim", "batch=4", "--inputs", "in.npz"], capsys
    )
    assert code == 2 and "--dim batch=4: --inputs in.npz have batch=1" in err
    assert not Path("s.onnx").exists()


def test_inputs_named_like_numpy_arguments_are_written_and_compared(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    graph = helper.make_graph(
        [helper.make_node("Add", ["file", "allow_pickle"], ["y"])],
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4]) for name in ("file", "allow_pickle")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), "named.onnx")
    code, _, err = run_cli(["make-inputs", "named.onnx", "-o", "in.npz"], capsys)
    assert code == 0, err
    assert sorted(np.load("in.npz")) == ["allow_pickle", "file"]
    # Some packages beside the working folder's model must not shadow the installed ones in the memory probe.
    os.mkdir("onnxruntime")
    Path("onnxruntime/__init__.py").write_text("raise ImportError('a stray folder, not ONNX Runtime')\n")
    code, _, err = run_cli(
        ["compare", "named.onnx", "named.onnx", "--inputs", "in.npz", "--time-budget", "0.5", "--iterations", "3"],
        capsys,
    )
    assert code == 0, err


def test_demo_into_a_folder_that_cannot_exist_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("")
    code, _, err = run_cli(["demo", "-o", "afile/x.onnx"], capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    code, _, err = run_cli(["demo", "-o", "made/by/demo/x.onnx", "--passes", "nosuch"], capsys)
    assert code == 2 and not Path("made").exists()


def test_a_comparison_mistake_is_found_before_the_model_is_written(model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("out.onnx").write_text("an earlier result")
    code, _, err = run_cli(["optimize", "m.onnx", "-o", "out.onnx", "--compare", "--generate"], capsys)
    assert code == 2 and "--generate needs a causal LM" in err
    np.savez("bad.npz", x=np.ones((1, 8), np.int64))
    code, _, err = run_cli(
        ["optimize", "m.onnx", "-o", "out.onnx", "--no-verify", "--compare", "--inputs", "bad.npz"], capsys
    )
    assert code == 2 and "'x' is int64, the model expects float32" in err
    assert Path("out.onnx").read_text() == "an earlier result"


def test_messages_a_review_found_missing_or_misleading(model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.savez("typo.npz", x=np.ones((1, 8), np.float32), x_typo=np.ones((1, 8), np.float32))
    code, out, err = run_cli(["optimize", "m.onnx", "-o", "o.onnx", "--inputs", "typo.npz"], capsys)
    assert code == 0 and "'x_typo' matches no graph input: ignored" in out + err
    code, out, err = run_cli(
        ["optimize", "m.onnx", "-o", "q.onnx", "--quantize", "dynamic", "--exclude", "*lm_haed*"], capsys
    )
    assert code == 0 and "--exclude '*lm_haed*' matches no node name or op type" in out + err
    code, _, err = run_cli(
        ["optimize", "m.onnx", "-o", "o.onnx", "--report", "a.json", "--pipeline-json", "b.json"], capsys
    )
    assert code == 2 and "the old and the new name of one flag" in err
    assert not Path("a.json").exists() and not Path("b.json").exists()
    os.mkfifo("fifo")
    for flag in ("--inputs", "--calibration"):
        code, _, err = run_cli(["optimize", "m.onnx", "-o", "o2.onnx", "--quantize", "dynamic", flag, "fifo"], capsys)
        assert code == 2 and "not a regular file or folder" in err, flag
    # A config from a pipe no one writes to is refused, not a hang; /dev/null is an empty config; /dev/zero
    # is no config (it was read without end).
    code, _, err = run_cli(["optimize", "m.onnx", "-o", "o3.onnx", "--config", "fifo"], capsys)
    assert code == 2 and "a pipe that gave nothing" in err
    code, _, err = run_cli(["optimize", "m.onnx", "-o", "o3.onnx", "--config", "/dev/null"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["optimize", "m.onnx", "-o", "o4.onnx", "--config", "/dev/zero"], capsys)
    assert code == 2 and "not a config file" in err
    # The Python API refuses such data too (it hung).
    from optimizer.api import optimize
    from optimizer.errors import InputSpecError

    with pytest.raises(InputSpecError, match="not a regular file or folder"):
        optimize("m.onnx", output="o5.onnx", inputs="fifo")


def test_an_accuracy_gate_names_what_failed_when_an_output_could_not_be_compared(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, width in (("four", 4), ("eight", 8)):
        graph = helper.make_graph(
            [helper.make_node("Tile", ["x", "repeats"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
            [onnx.numpy_helper.from_array(np.array([1, width // 4], np.int64), "repeats")],
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), f"{name}.onnx")
    argv = [
        "compare",
        "four.onnx",
        "eight.onnx",
        "--time-budget",
        "0.5",
        "--iterations",
        "3",
        "--min-cosine",
        "0.99999999",
    ]
    code, _, err = run_cli(argv, capsys)
    assert code == 5
    assert "--min-cosine 0.99999999: output 'y'" in err and "no accuracy was measured" not in err

"""A review of the command line (s58): config files, make-inputs, exit codes, interruption."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import signal
import sys

import numpy as np
import onnx
import pytest

from optimizer import exit_codes
from tests._cli_models import run_cli, save_matmul_model


class _InterruptedExtensionInit(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import onnxruntime`` as when Ctrl-C lands in its C extension's initialization: the CLI's handler raises
    there, and pybind11 turns that exception into ``ImportError("initialization failed")`` (seen on a real run)."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if name != "onnxruntime":
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):  # noqa: ANN001, ANN201
        return None

    def exec_module(self, module):  # noqa: ANN001, ANN201
        try:
            signal.raise_signal(signal.SIGINT)
        except BaseException as error:
            raise ImportError("initialization failed") from error


def test_ctrl_c_in_an_extensions_import_is_an_interruption_not_a_missing_runtime(tmp_path, capsys, monkeypatch):
    # It said "graphopt: error: ONNX Runtime is not installed: pip install ..." and exited 2.
    save_matmul_model(tmp_path / "m.onnx")
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_InterruptedExtensionInit(), *sys.meta_path])
    code, out, err = run_cli(["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "-q"], capsys)
    assert (code, err.strip()) == (exit_codes.SIGINT, "graphopt: interrupted by SIGINT")
    assert not (tmp_path / "o.onnx").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.onnx"]


def test_an_error_while_not_interrupted_is_still_the_error(tmp_path, capsys):
    code, _, err = run_cli(["optimize", str(tmp_path / "absent.onnx"), "-o", str(tmp_path / "o.onnx")], capsys)
    assert code == exit_codes.USAGE and "no such file" in err


@pytest.mark.parametrize("flags", [["--inputs", ""], ["--quantize", "dynamic", "--calibration", ""]])
def test_an_empty_data_path_is_refused_not_read_as_the_current_folder(tmp_path, capsys, monkeypatch, flags):
    # `--calibration "$DATA"` with DATA unset calibrated on every .npz in the working folder ('on --inputs .').
    monkeypatch.chdir(tmp_path)
    save_matmul_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    for index in range(2):
        np.savez(tmp_path / f"s{index}.npz", x=rng.standard_normal((1, 8)).astype(np.float32))
    code, _, err = run_cli(["optimize", "m.onnx", "-o", "o.onnx", *flags], capsys)
    assert code == exit_codes.USAGE and f"graphopt: error: {flags[-2]} '': an empty path" in err, err
    assert not (tmp_path / "o.onnx").exists()
    code, _, err = run_cli(["compare", "m.onnx", "m.onnx", "--inputs", ""], capsys)
    assert code == exit_codes.USAGE and "graphopt: error: --inputs '': an empty path" in err, err


def test_a_path_with_a_del_character_round_trips_through_print_config(tmp_path, capsys, monkeypatch):
    # The printed config held a raw DEL, which --config then refused: "not valid TOML: Illegal character '\x7f'".
    monkeypatch.chdir(tmp_path)
    code, printed, err = run_cli(["optimize", "m.onnx", "-o", "o\x7f.onnx", "--print-config"], capsys)
    assert code == exit_codes.OK, err
    (tmp_path / "recipe.toml").write_text(printed, encoding="utf-8")
    code, again, err = run_cli(["optimize", "--config", "recipe.toml", "--print-config"], capsys)
    assert (code, again) == (exit_codes.OK, printed), err
    assert 'output = "o\\u007f.onnx"' in printed


def test_a_single_batch_size_in_a_config_is_that_batch(tmp_path, capsys, monkeypatch):
    # `batch = 8` was refused with "expected a string"; the docs say a list, and `batch = [8]` is --batch 8.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.toml").write_text("batch = 8\n")
    code, printed, err = run_cli(["compare", "a.onnx", "b.onnx", "--config", "recipe.toml", "--print-config"], capsys)
    assert code == exit_codes.OK, err
    assert "batch = [8]" in printed


@pytest.mark.parametrize(
    "flags",
    [
        ["--quantize", "dynamic", "--full-range-weights", "--no-full-range-weights"],
        ["--quantize", "dynamic", "--no-full-range-weights", "--full-range-weights"],
        ["--fp16", "--target", "cuda", "--no-keep-io-types", "--keep-io-types"],
    ],
)
def test_both_sides_of_a_switch_are_refused_not_the_last_taken(tmp_path, capsys, flags):
    # The last one won without a word (exit 0), where `--min-cosine 0.99 --min-cosine -1` is refused.
    with pytest.raises(SystemExit) as stop:  # as argparse refuses a flag given twice
        run_cli(["optimize", "m.onnx", "-o", "o.onnx", *flags, "--print-config"], capsys)
    printed, err = capsys.readouterr()
    assert (stop.value.code, printed) == (exit_codes.USAGE, "")
    assert f"graphopt: error: {flags[-2]} and {flags[-1]}: give one" in err


def test_a_switch_given_twice_the_same_way_is_one_switch(capsys):
    argv = ["optimize", "m.onnx", "-o", "o.onnx", "--quantize", "dynamic", "--no-full-range-weights"]
    code, printed, err = run_cli([*argv, "--no-full-range-weights", "--print-config"], capsys)
    assert code == exit_codes.OK and "full-range-weights = false" in printed, err


def test_a_config_with_a_utf8_byte_order_mark_reads_and_utf16_is_named(tmp_path, capsys, monkeypatch):
    # Windows editors write a UTF-8 BOM ("Invalid statement (line 1, column 1)"); PowerShell 5's `>` writes UTF-16.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bom.toml").write_bytes("\ufeffbatch = 8\n".encode())
    code, printed, err = run_cli(["compare", "a.onnx", "b.onnx", "--config", "bom.toml", "--print-config"], capsys)
    assert code == exit_codes.OK and "batch = [8]" in printed, err
    (tmp_path / "wide.toml").write_bytes("batch = 8\n".encode("utf-16"))
    code, printed, err = run_cli(["compare", "a.onnx", "b.onnx", "--config", "wide.toml", "--print-config"], capsys)
    assert code == exit_codes.USAGE and "UTF-16 text; save it as UTF-8" in err, err


def test_make_inputs_of_a_model_without_inputs_says_the_file_holds_none(tmp_path):
    # "wrote noin.npz: " ended in nothing.
    from onnx import TensorProto, helper, numpy_helper

    from optimizer.input_skeleton import write_input_skeleton

    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones(2, np.float32)))],
        "no_inputs",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "noin.onnx")
    said = write_input_skeleton(tmp_path / "noin.onnx", tmp_path / "noin.npz")
    assert said.endswith("no arrays (the model has no inputs to feed)"), said

"""``graphopt make-inputs``: an .npz skeleton that ``--inputs`` accepts (the writer is optimizer.inputs')."""

from __future__ import annotations

import numpy as np

from optimizer import exit_codes
from tests._cli_models import run_cli, save_matmul_model


def test_make_inputs_writes_what_optimize_accepts(tmp_path, capsys):
    model = save_matmul_model(tmp_path / "m.onnx")
    skeleton = tmp_path / "inputs.npz"
    code, out, err = run_cli(["make-inputs", model, "-o", skeleton, "--dim", "batch=3"], capsys)
    assert code == exit_codes.OK, err
    assert out.startswith(f"wrote {skeleton}") and "x float32[3, 8]" in out
    with np.load(skeleton) as arrays:
        assert {name: (a.dtype, a.shape) for name, a in arrays.items()} == {"x": (np.float32, (3, 8))}
    code, _, err = run_cli(["optimize", model, "-o", tmp_path / "o.onnx", "--inputs", skeleton, "-q"], capsys)
    assert (code, err) == (exit_codes.OK, "")


def test_make_inputs_mistakes_are_one_line(tmp_path, capsys):
    model = save_matmul_model(tmp_path / "m.onnx")
    code, _, err = run_cli(["make-inputs", model, "-o", tmp_path / "i.npz", "--dim", "nope=2"], capsys)
    assert code == exit_codes.USAGE and err.startswith("graphopt: error: --dim nope") and err.count("\n") == 1
    code, _, err = run_cli(["make-inputs", model, "-o", model], capsys)
    assert code == exit_codes.USAGE and "would overwrite the model" in err
    code, out, err = run_cli(["make-inputs", model, "-o", tmp_path / "i.npz", "-q"], capsys)
    assert (code, out, err) == (exit_codes.OK, "", "")

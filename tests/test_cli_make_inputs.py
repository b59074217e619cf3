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


def test_make_inputs_writes_a_length_the_model_runs(tmp_path, capsys):
    # GigaAM's STFT front end needs more than the default 128 samples; make-inputs wrote 128 (ONNX Runtime refused
    # the file it wrote, "window_size <= signal_size was false") where optimize found 512.
    import onnxruntime as ort

    from tests.helpers import FIXTURES

    model = FIXTURES / "real" / "gigaam_v3.onnx"
    skeleton = tmp_path / "inputs.npz"
    code, out, err = run_cli(["make-inputs", model, "-o", skeleton], capsys)
    assert code == exit_codes.OK, err
    assert "waveforms float32[1, 512]" in out and "(ONNX Runtime refused the model at N=128)" in out
    with np.load(skeleton) as arrays:
        ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, dict(arrays))


def test_make_inputs_says_when_no_length_runs(tmp_path, capsys):
    from onnx import TensorProto, helper, save

    # A Reshape to a fixed 7 elements: no generated length of x runs.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7])],
        [helper.make_tensor("shape", TensorProto.INT64, [1], [7])],
    )
    path = tmp_path / "fixed.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, out, err = run_cli(["make-inputs", path, "-o", tmp_path / "i.npz"], capsys)
    assert code == exit_codes.OK, err
    assert "x float32[128]" in out and "ONNX Runtime refuses the model on these, at every length tried" in out

"""A hostile review of how graphopt reads inputs and calibration data (2026-12-01): each case was a traceback,
a silent cut, an error blamed on the model, or a verification that proved nothing."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import registry
from optimizer.errors import InputSpecError
from optimizer.inputs import load_inputs, parse_dim_flags
from optimizer.samples import open_samples
from tests._cli_models import run_cli

QUICK = ["--time-budget", "0.3", "--iterations", "12", "--warmup", "1", "--threads", "1"]


def _save(path, nodes, inputs, outputs, initializers=()) -> None:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)


def _relu(path, shape) -> None:
    _save(
        path,
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )


def _embedding(path) -> None:
    """``y = Gather(table[10, 8], ids) @ W`` over ``ids: int64[batch, 4]``."""
    rng = np.random.default_rng(0)
    _save(
        path,
        [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "W"], ["y"])],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8])],
        [
            numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "table"),
            numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W"),
        ],
    )


class _ReluToIdentity(ir.passes.InPlacePass):
    """A wrong rewrite: Relu -> Identity (right only where the input is never negative)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        changed = False
        for node in model.graph:
            if node.op_type == "Relu":
                node.op_type, changed = "Identity", True
        return ir.passes.PassResult(model, changed)


def test_inputs_of_one_repeated_value_are_verified_beside_generated_ones(tmp_path, monkeypatch, capsys):
    # On make-inputs' zeros a fixed-shape model was verified on them alone: a wrong Relu -> Identity applied.
    monkeypatch.chdir(tmp_path)
    _relu("m.onnx", [2, 64])
    np.savez("zeros.npz", x=np.zeros((2, 64), np.float32))
    specs = [
        dataclasses.replace(spec, factory=lambda context: _ReluToIdentity()) if spec.name == "simplify-ops" else spec
        for spec in registry.all_passes()
    ]
    monkeypatch.setattr(registry, "all_passes", lambda: list(specs))
    code, out, err = run_cli(["optimize", "m.onnx", "-o", "o.onnx", "--inputs", "zeros.npz"], capsys)
    assert code == 0, err
    assert "'x' holds one value repeated" in out + err
    assert [node.op_type for node in onnx.load("o.onnx").graph.node] == ["Relu"]


def test_a_batch_of_zero_rows_is_refused(tmp_path, monkeypatch, capsys):
    # A scalar beside zero-row arrays passed "every array is empty", and --static-shapes wrote a batch-0 model.
    monkeypatch.chdir(tmp_path)
    _save(
        "m.onnx",
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    np.savez("empty.npz", x=np.zeros((0, 4), np.float32), s=np.array(2.0, np.float32))
    code, _, err = run_cli(["optimize", "m.onnx", "-o", "o.onnx", "--static-shapes", "--inputs", "empty.npz"], capsys)
    assert code == 2 and "every array is empty" in err and not Path("o.onnx").exists()


def test_samples_of_unequal_counts_are_refused(tmp_path):
    _save(
        tmp_path / "m.onnx",
        [helper.make_node("Add", ["x", "b"], ["y"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4]) for name in ("x", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = ir.load(tmp_path / "m.onnx")
    for rows in (1, 16):  # one row broadcast over 20, or 20 cut to 16, without a word
        data = {"x": np.ones((20, 4), np.float32), "b": np.ones((rows, 4), np.float32)}
        with pytest.raises(InputSpecError, match=f"'x' holds 20 samples along axis 0 and 'b' {rows}"):
            open_samples(data, model)


def test_calibration_the_original_cannot_run_on_is_the_data_s_fault(tmp_path, monkeypatch, capsys):
    # Ids past the table failed inside the pass, whose rollback blamed its own result (exit 0).
    monkeypatch.chdir(tmp_path)
    _embedding("m.onnx")
    np.savez("cal.npz", ids=np.full((8, 4), 100, np.int64))
    argv = ["optimize", "m.onnx", "-o", "o.onnx", "--quantize", "dynamic", "--calibration", "cal.npz"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "cannot run the original model on the first samples of --calibration cal.npz" in err
    assert "Traceback" not in err and not Path("o.onnx").exists()


def test_inputs_the_original_cannot_run_on_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _embedding("m.onnx")
    np.savez("ids.npz", ids=np.full((1, 4), 100, np.int64))
    code, _, err = run_cli(["optimize", "m.onnx", "-o", "o.onnx", "--inputs", "ids.npz"], capsys)
    assert code == 2 and "cannot run the input model on --inputs ids.npz" in err and "fix the model" not in err


def test_sizes_the_model_fixes_and_strings_are_checked(tmp_path):
    _relu(tmp_path / "fixed.onnx", [1, 8])
    np.savez(tmp_path / "wide.npz", x=np.ones((1, 9), np.float32))
    with pytest.raises(InputSpecError, match="'x' has 9 on axis 1, where the model fixes 8"):
        load_inputs(tmp_path / "wide.npz", ir.load(tmp_path / "fixed.onnx"))
    _save(
        tmp_path / "s.onnx",
        [helper.make_node("Identity", ["s"], ["t"])],
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["n"])],
    )
    strings = ir.load(tmp_path / "s.onnx")
    np.savez(tmp_path / "floats.npz", s=np.ones(3, np.float32))
    with pytest.raises(InputSpecError, match="'s' is float32, the model expects strings"):
        load_inputs(tmp_path / "floats.npz", strings)
    # 236 bytes declaring ten million strings of no length: ONNX Runtime read memory it did not own.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<U0", "fortran_order": False, "shape": (10_000_000,)})
    with zipfile.ZipFile(tmp_path / "none.npz", "w") as archive:
        archive.writestr("s.npy", header.getvalue())
    with pytest.raises(InputSpecError, match="'s' is strings of no length"):
        load_inputs(tmp_path / "none.npz", strings)
    np.savez(tmp_path / "words.npz", s=np.array(["a", "bc"]))
    assert load_inputs(tmp_path / "words.npz", strings)["s"].tolist() == ["a", "bc"]


def test_npy_folders_that_cannot_be_read_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _relu("m.onnx", ["batch", 4])
    Path("empty").mkdir()
    Path("empty/x.npy").write_bytes(b"")  # EOFError before
    Path("zipped").mkdir()
    with zipfile.ZipFile("zipped/x.npy", "w") as archive:  # an .npz named .npy: AttributeError before
        archive.writestr("x.npy", b"")
    for folder, message in (("empty", "x.npy is not a readable .npy array"), ("zipped", "is an .npz archive")):
        for command in (["optimize", "m.onnx", "-o", "o.onnx"], ["compare", "m.onnx", "m.onnx", *QUICK]):
            code, _, err = run_cli([*command, "--inputs", folder], capsys)
            assert code == 2 and message in err and "Traceback" not in err, (folder, command, err)


def test_running_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _relu("m.onnx", ["batch", 4])

    def no_memory(*args, **kwargs):
        raise np._core._exceptions._ArrayMemoryError((10**12,), np.dtype(np.float32))

    monkeypatch.setattr("optimizer.api.make_inputs", no_memory)
    code, _, err = run_cli(["optimize", "m.onnx", "-o", "o.onnx"], capsys)
    assert code == 2 and err.startswith("graphopt: error: out of memory") and "--dim" in err


def test_a_dim_given_twice_with_two_sizes_is_refused():
    with pytest.raises(InputSpecError, match="--dim batch given twice"):
        parse_dim_flags(["batch=2", "batch=5"])
    assert parse_dim_flags(["batch=2", "batch=2"]) == {"batch": 2}


def test_a_float_input_of_zeros_beside_varying_ids_is_noted():
    from optimizer.inputs import constant_inputs_note

    note = constant_inputs_note({"ids": np.arange(8).reshape(1, 8), "x": np.zeros((1, 8), np.float32)})
    assert note is not None and "'x' holds one value repeated" in note
    assert (
        constant_inputs_note({"ids": np.zeros((1, 8), np.int64), "attention_mask": np.ones((1, 8), np.float32)}) is None
    )


def test_calibration_for_a_fixed_batch_is_a_multiple_of_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _relu("m.onnx", [4, 8])
    np.savez("cal.npz", x=np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32))
    argv = ["optimize", "m.onnx", "-o", "o.onnx", "--quantize", "dynamic", "--calibration", "cal.npz"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "6 samples, and the model fixes its batch at 4: give a multiple of 4" in err


def test_inputs_with_two_batch_dims_may_hold_different_counts(tmp_path):
    # A CLIP export's texts and images: its own batch dim each.
    _save(
        tmp_path / "clip.onnx",
        [helper.make_node("ReduceMean", ["t"], ["a"]), helper.make_node("ReduceMean", ["i"], ["b"])],
        [
            helper.make_tensor_value_info("t", TensorProto.FLOAT, ["text_batch_size", 4]),
            helper.make_tensor_value_info("i", TensorProto.FLOAT, ["image_batch_size", 4]),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1]) for name in ("a", "b")],
    )
    data = {"t": np.ones((5, 4), np.float32), "i": np.ones((20, 4), np.float32)}
    assert open_samples(data, ir.load(tmp_path / "clip.onnx")).count == 5


def test_bytes_for_a_string_input_are_refused(tmp_path):
    # ONNX Runtime reads numpy bytes as one run: [b"Hello", b"WORLD"] became "HelloWORLD".
    _save(
        tmp_path / "s.onnx",
        [helper.make_node("Identity", ["s"], ["t"])],
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["n"])],
    )
    np.savez(tmp_path / "bytes.npz", s=np.array([b"Hello", b"WORLD"]))
    with pytest.raises(InputSpecError, match=r"'s' is bytes \(numpy 'S'; give str\)"):
        load_inputs(tmp_path / "bytes.npz", ir.load(tmp_path / "s.onnx"))


@pytest.mark.parametrize("form", ["npz", "npy folder", "npz folder"])
def test_a_fixed_batch_model_calibrates_with_an_input_beside_its_samples(tmp_path, monkeypatch, capsys, form):
    # x [1, K] beside s [K]: with no symbolic dim every array was cut as samples (s into 64 "samples").
    monkeypatch.chdir(tmp_path)
    k = 16
    _save(
        "m.onnx",
        [helper.make_node("Add", ["x", "s"], ["xs"]), helper.make_node("MatMul", ["xs", "W"], ["y"])],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [k]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k])],
        [numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, k)).astype(np.float32), "W")],
    )
    rng = np.random.default_rng(1)
    x, s = rng.standard_normal((6, k)).astype(np.float32), rng.standard_normal(k).astype(np.float32)
    if form == "npz":
        np.savez("cal.npz", x=x, s=s)
        source = "cal.npz"
    elif form == "npy folder":
        Path("cal").mkdir()
        np.save("cal/x.npy", x)
        np.save("cal/s.npy", s)
        source = "cal"
    else:
        Path("cal").mkdir()
        np.savez("cal/a.npz", x=x[:4], s=s)
        np.savez("cal/b.npz", x=x[4:], s=s)
        source = "cal"
    data = open_samples(source, ir.load("m.onnx"))
    assert data.count == 6
    assert [batch["s"].shape for batch in data.batches(1)] == [(k,)] * 6
    argv = [
        "optimize",
        "m.onnx",
        "-o",
        "o.onnx",
        "--quantize",
        "dynamic",
        "--quantize-outputs",
        "--calibration",
        source,
    ]
    code, _, err = run_cli([*argv, "-q"], capsys)
    assert code == 0, err
    assert "DynamicQuantizeMatMul" in [node.op_type for node in onnx.load("o.onnx").graph.node]


def test_a_one_element_input_beside_a_fixed_batch_is_no_batch_of_one(tmp_path, monkeypatch, capsys):
    # x [2, K] beside s [1]: the smallest fixed first dim (1) was taken as the batch, s cut as the samples.
    from optimizer.samples import fixed_batch_size

    monkeypatch.chdir(tmp_path)
    k = 8
    _save(
        "m.onnx",
        [helper.make_node("Add", ["x", "s"], ["xs"]), helper.make_node("MatMul", ["xs", "W"], ["y"])],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, k])],
        [numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, k)).astype(np.float32), "W")],
    )
    assert fixed_batch_size(ir.load("m.onnx")) == 2
    rng = np.random.default_rng(1)
    np.savez("cal.npz", x=rng.standard_normal((8, k)).astype(np.float32), s=np.ones(1, np.float32))
    argv = ["optimize", "m.onnx", "-o", "o.onnx", "--quantize", "dynamic", "--quantize-outputs", "--calibration"]
    code, _, err = run_cli([*argv, "cal.npz", "-q"], capsys)
    assert code == 0, err

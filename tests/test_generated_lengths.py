"""Generated verification inputs a model refuses at the default length: shorter ones are generated.

CLIP's text encoder adds a table of 77 positions sliced by the sequence length, so ONNX Runtime refuses the
default 128 tokens (a broadcast error) and `graphopt optimize` stopped with exit 2 on a model that runs at every
length up to 77. The first set is now generated again at half the length until the model runs (down to 8), with a
warning that names the lengths verified; lengths the user gives (`--dim`, `--inputs`) are never shortened.
`graphopt compare` shortens its generated inputs the same way (it stopped with exit 2 where optimize verified).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.errors import GeneratedInputsRefusedError
from tests._cli_models import run_cli

POSITIONS = 20


def _position_table_model() -> ir.Model:
    """``y = Relu(x + table[:S])`` with ``x [batch, sequence]`` and a table of ``POSITIONS`` rows."""
    table = np.linspace(-1, 1, POSITIONS).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], start=1, end=2),
        helper.make_node("Slice", ["table", "zero", "shape"], ["positions"]),
        helper.make_node("Add", ["x", "positions"], ["sum"]),
        helper.make_node("Identity", ["sum"], ["copy"]),
        helper.make_node("Relu", ["copy"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "positions",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence"])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([0], np.int64), "zero")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_a_model_refusing_the_default_length_is_verified_on_shorter_generated_inputs():
    _, report = optimize_with_report(_position_table_model(), ["remove-identity"])
    (record,) = report.passes
    assert record.status == "applied", record.detail
    assert report.verified
    assert any("generated inputs of sequence=128: verified on shorter ones (sequence=16)" in w for w in report.warnings)
    assert all(shape["x"][1] <= POSITIONS for shape in report.inputs), report.inputs


def test_a_length_the_user_gives_is_not_shortened():
    with pytest.raises(GeneratedInputsRefusedError, match="cannot run the input model on generated inputs"):
        optimize_with_report(_position_table_model(), ["remove-identity"], dims={"sequence": 64})


def test_compare_shortens_generated_inputs_a_model_refuses(tmp_path, capsys):
    # compare stopped with exit 2 where optimize verified on shorter inputs: it now times and scores the same way.
    path = tmp_path / "positions.onnx"
    onnx.save(ir.to_proto(_position_table_model()), path)
    json_path = tmp_path / "compare.json"
    code, _, err = run_cli(
        ["compare", path, path, "--time-budget", "0.5", "--iterations", "5", "-q", "--json", json_path], capsys
    )
    assert code == 0, err
    report = json.loads(json_path.read_text())
    (warning,) = [w for w in report["warnings"] if "generated inputs of" in w]
    assert "generated inputs of sequence=128: compared on shorter ones (sequence=16)" in warning


def test_compare_names_the_generated_sizes_where_nothing_shortens(tmp_path, capsys):
    # A length the user binds is never shortened: the error names the generated sizes and the ways out.
    path = tmp_path / "positions.onnx"
    onnx.save(ir.to_proto(_position_table_model()), path)
    code, _, err = run_cli(
        ["compare", path, path, "--dim", "sequence=64", "--time-budget", "0.5", "--iterations", "5", "-q"], capsys
    )
    assert code == 2
    assert "the inputs were generated (batch=1, sequence=64): bind other sizes with --dim NAME=SIZE" in err
    assert "Traceback" not in err


def test_generated_calibration_samples_are_shortened_too():
    # An approximate pass without --calibration measures on generated samples: at the default 128 positions the
    # model refused them, and optimize stopped ("cannot run the original model on generated calibration samples").
    _, report = optimize_with_report(_position_table_model(), ["remove-identity", "prune-ffn"], prune_ffn=0.25)
    assert report.verified
    assert any("generated random inputs" in w and "sequence=16" in w for w in report.warnings), report.warnings


def _halving_detector() -> ir.Model:
    """``Concat(x, Resize(MaxPool(x), 2x))`` over ``x [batch, 4, height, width]``: runs only where the sizes halve
    evenly (a feature pyramid's upsampled map concatenated with the finer one, as in YOLO)."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["pooled", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Concat", ["x", "up"], ["joined"], axis=1),
        helper.make_node("Identity", ["joined"], ["copy"]),
        helper.make_node("Relu", ["copy"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, "height", "width"])],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_a_second_binding_is_found_where_sizes_must_halve_evenly():
    # 257 and 65 both fail the upsampled Concat (verified at one binding only, with a warning: a rewrite baking
    # 128 x 128 in passed, as on nudenet's YOLOv8n); 64 x 32 runs (height and width named apart are drawn apart, by
    # halves there: test_review_s63_lengths_apart), and is verified.
    _, report = optimize_with_report(_halving_detector(), ["remove-identity"])
    assert report.verified
    assert [shape["x"][2:] for shape in report.inputs] == [[128, 128], [64, 32]], report.inputs
    assert not any("second binding" in w for w in report.warnings), report.warnings


def _batch_of_one() -> ir.Model:
    """``Relu(xᵀ @ W)`` with ``W [1, 4]``: runs at batch 1 only, at every length."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node("MatMul", ["xt", "W"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["sequence", 4])],
        [numpy_helper.from_array(np.ones((1, 4), np.float32), "W")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


def test_compare_names_the_first_generated_sizes_where_halving_does_not_help(tmp_path, capsys):
    # The refusal is of the batch (2), not the length: halved to 8 and still refused, the error named
    # sequence=8 as if that were what was generated; then every length was tried and blamed. Since review s64 the
    # batch is named at once (tests/test_review_s64_compare.py).
    path = tmp_path / "one.onnx"
    onnx.save(ir.to_proto(_batch_of_one()), path)
    code, _, err = run_cli(["compare", path, path, "--batch", "1,2", "--time-budget", "0.5", "-q"], capsys)
    assert code == 2
    assert "--batch 2:" in err and "the model does not take a batch of 2" in err, err
    assert "sequence=8" not in err, err


def _long_window_model() -> ir.Model:
    """``y = Pad(x) * 0.5``, a reflect Pad of 150 on the time axis, which ONNX Runtime refuses for fewer
    than 151 steps (an STFT's window, as Silero VAD's needs its 512-sample chunks)."""
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["padded"], mode="reflect"),
        helper.make_node("Mul", ["padded", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "window",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "padded_time"])],
        [
            numpy_helper.from_array(np.array([0, 150, 0, 150], np.int64), "pads"),
            numpy_helper.from_array(np.array(0.5, np.float32), "scale"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_generated_calibration_samples_take_the_inputs_sizes():
    # Drawn at the default 128 steps (then halved), the samples were refused where the --inputs beside them, at
    # 512 steps, ran: "cannot run the original model on generated calibration samples" (Silero VAD with --fp16).
    inputs = {"x": np.random.default_rng(0).standard_normal((2, 512)).astype(np.float32)}
    _, report = optimize_with_report(_long_window_model(), ["convert-float16"], target="cuda", fp16=True, inputs=inputs)
    (record,) = report.passes
    assert record.status == "applied", record.detail

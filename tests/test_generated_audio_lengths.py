"""Generated inputs for speech front ends (onnx-asr's real NeMo and GigaAM models, ``tests/fixtures/real``).

- ``waveforms [batch_size, N]``: the one-letter ``N`` was read as a batch (NCHW's), so the audio was one sample long
  and ONNX Runtime refused every such model; beside a dim named like a batch it is a length.
- ``waveforms_lens [batch_size]`` was drawn 0 or 1, as other integers: every frame was masked, NeMo's features were
  zeros before and after, and a rewrite corrupting its mel filterbank verified. Lengths are drawn as the audio's.
- Over the default 128 samples (less than one frame) NeMo's features are constant, and GigaAM's STFT refuses fewer
  than its 320-sample window: longer lengths are tried (512, then 2048) where the default and every shorter one
  are refused or give constant outputs, in verification, generated calibration and ``compare``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optimizer.api import optimize_with_report
from optimizer.inputs import GeneratedLengths, batch_dims, bind_dims, make_inputs
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from tests._cli_models import run_cli
from tests.helpers import optimize_with_rewrite
from tests.real_models import GIGAAM_V3_FRONT_END, NEMO80_FRONT_END


def _perturbed_filterbank(model: ir.Model) -> None:
    """Each weight of the mel filterbank (the MatMul's constant) scaled by its own factor in [0.5, 1.5]: features
    no longer what the model computes (a uniform scale would be undone by NeMo's per-feature normalization)."""
    for node in model.graph:
        if node.op_type == "MatMul":
            weight = next(value for value in node.inputs if value is not None and value.const_value is not None)
            array = weight.const_value.numpy()
            factors = np.random.default_rng(0).uniform(0.5, 1.5, array.shape)
            weight.const_value = ir.tensor((array * factors).astype(array.dtype))
            return
    raise AssertionError("no MatMul")


def test_a_one_letter_length_beside_a_named_batch_is_not_a_batch():
    model = ir.load(NEMO80_FRONT_END)
    assert batch_dims(model) == ["batch_size"]
    assert bind_dims(model) == {"batch_size": 1, "N": 128}


def test_a_leading_one_letter_dim_stays_a_batch():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "nchw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert batch_dims(model) == ["N"]
    assert bind_dims(model) == {"N": 1, "H": 128, "W": 128}


def test_lengths_are_drawn_as_the_audio_they_describe():
    model = ir.load(NEMO80_FRONT_END)
    inputs = make_inputs(model, {"batch_size": 2, "N": 1000})
    assert inputs["waveforms"].shape == (2, 1000)
    # Every row at full length, the last a quarter shorter: masking at work.
    np.testing.assert_array_equal(inputs["waveforms_lens"], [1000, 750])


def test_a_corrupted_mel_filterbank_is_rolled_back(tmp_path: Path):
    record = optimize_with_rewrite(onnx.load(NEMO80_FRONT_END), _perturbed_filterbank, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_constant_outputs_at_the_default_length_move_to_longer_ones(tmp_path: Path):
    source = tmp_path / "nemo.onnx"
    onnx.save(onnx.load(NEMO80_FRONT_END), source)
    _, report = optimize_with_report(source, ["remove-identity"], output=tmp_path / "out.onnx")
    assert report.verified
    assert report.input_sets[0] == "generated (batch_size=1, N=512)", report.input_sets
    assert any("every output of the input model is constant on generated inputs of N=128" in w for w in report.warnings)


def test_a_front_end_whose_stft_needs_a_window_is_verified_on_longer_inputs(tmp_path: Path):
    source = tmp_path / "gigaam.onnx"
    onnx.save(onnx.load(GIGAAM_V3_FRONT_END), source)
    _, report = optimize_with_report(source, ["remove-identity"], output=tmp_path / "out.onnx")
    assert report.verified
    assert report.input_sets[0] == "generated (batch_size=1, N=512)", report.input_sets
    note = next(w for w in report.warnings if "cannot run the input model on generated inputs of N=128" in w)
    assert "verified on longer ones (N=512)" in note


def test_generated_calibration_samples_take_longer_lengths_too(tmp_path: Path):
    source = tmp_path / "gigaam.onnx"
    onnx.save(onnx.load(GIGAAM_V3_FRONT_END), source)
    _, report = optimize_with_report(source, ["quantize-dynamic"], output=tmp_path / "out.onnx")
    (record,) = report.passes
    assert record.status == STATUS_APPLIED, record.detail
    assert any("N=512: ONNX Runtime refused the model at shorter ones" in w for w in report.warnings), report.warnings


def test_compare_moves_to_longer_inputs(tmp_path: Path, capsys):
    code, out, err = run_cli(
        ["compare", GIGAAM_V3_FRONT_END, GIGAAM_V3_FRONT_END, "--iterations", "10", "--warmup", "1"], capsys
    )
    assert code == 0, err
    assert "compared on longer ones (N=512)" in " ".join((out + err).split())


def test_every_output_constant_at_every_length_is_verified_with_a_warning(tmp_path: Path):
    # y = x * 0: constant at any length (as the ONNX corpus's acosh of N(0, 1) draws, NaN): a valid model, verified
    # at the first lengths, with a warning that says what that is worth.
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "zero"], ["y"])],
        "zeros",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time"])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    source = tmp_path / "zeros.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), source)
    _, report = optimize_with_report(source, ["remove-identity"], output=tmp_path / "out.onnx")
    assert report.input_sets[0] == "generated (batch=1, time=128)", report.input_sets
    (warning,) = [w for w in report.warnings if "every output of the input model is constant" in w]
    assert "a wrong rewrite may match as well" in warning


def test_longer_lengths_stop_at_max_positions():
    model = ir.load(GIGAAM_V3_FRONT_END)
    lengths = GeneratedLengths(model, None, max_positions=600)
    assert lengths.advance({"batch_size": 1, "N": 8}, degenerate=True)
    assert lengths.binding()["N"] == 512
    assert not lengths.advance({"batch_size": 1, "N": 512})  # 2048 is past 600


def _branch_on_sample_rate() -> onnx.ModelProto:
    """``If(Equal(sr, 16000))``: ``x * 2`` at 16 kHz, else ``x * 3`` (Silero VAD v4's branch on its ``sr`` input)."""

    def branch(name: str, factor: float) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Mul", ["x", f"{name}_factor"], [f"{name}_y"])],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["batch", "time"])],
            [helper.make_tensor(f"{name}_factor", TensorProto.FLOAT, [], [factor])],
        )

    graph = helper.make_graph(
        [
            helper.make_node("Equal", ["sr", "rate"], ["is_16k"]),
            helper.make_node("If", ["is_16k"], ["y"], then_branch=branch("then", 2.0), else_branch=branch("else", 3.0)),
        ],
        "vad",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time"]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time"])],
        [helper.make_tensor("rate", TensorProto.INT64, [], [16000])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("branch", ["then_branch", "else_branch"])
def test_both_branches_a_compared_input_selects_are_verified(tmp_path: Path, branch: str):
    # sr drawn 0 or 1 only ran the else branch: a rewrite wrong in the 16 kHz branch, the one real audio takes,
    # verified. The first binding now holds the constant it is compared with, the second stays drawn.
    def rewrite(model: ir.Model) -> None:
        (node,) = [node for node in model.graph if node.op_type == "If"]
        (mul,) = list(node.attributes[branch].as_graph())
        factor = mul.inputs[1]
        factor.const_value = ir.tensor(np.array(factor.const_value.numpy() * 1.25, np.float32))

    record = optimize_with_rewrite(_branch_on_sample_rate(), rewrite, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_a_compared_constant_the_model_refuses_is_left_as_drawn():
    # If(Equal(mode, 3)): the branch 3 selects reshapes x to [7, -1], which ONNX Runtime refuses for 128 values:
    # mode stays as drawn (the model still verifies on the other branch), not a refused model.
    then_branch = helper.make_graph(
        [helper.make_node("Reshape", ["x", "bad"], ["then_y"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, None)],
        [helper.make_tensor("bad", TensorProto.INT64, [2], [7, -1])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["else_y"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Equal", ["mode", "three"], ["is_3"]),
            helper.make_node("If", ["is_3"], ["y"], then_branch=then_branch, else_branch=else_branch),
        ],
        "modes",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 128]),
            helper.make_tensor_value_info("mode", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("three", TensorProto.INT64, [], [3])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    inputs = make_inputs(model, {"batch": 1})
    assert int(inputs["mode"]) in (0, 1)
    rate = ir.from_proto(_branch_on_sample_rate())
    assert int(make_inputs(rate, {"batch": 1, "time": 8})["sr"]) == 16000
    assert int(make_inputs(rate, {"batch": 1, "time": 8}, seed=1)["sr"]) in (0, 1)


def test_longer_lengths_are_not_tried_along_an_images_height_and_width(tmp_path: Path):
    # A detector's zeros on noise (constant at every size): 512 x 512 and 2,048 x 2,048 images were drawn for it,
    # minutes of convolutions; longer lengths are tried along lengths only, no input holding two of them.
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "zero"], ["y"])],
        "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    lengths = GeneratedLengths(model, None)
    assert not lengths.advance({"batch": 1, "height": 128, "width": 128}, degenerate=True)
    source = tmp_path / "detector.onnx"
    onnx.save(ir.to_proto(model), source)
    _, report = optimize_with_report(source, ["remove-identity"], output=tmp_path / "out.onnx")
    assert report.input_sets[0] == "generated (batch=1, height=128, width=128)", report.input_sets


def test_longer_lengths_are_not_tried_along_one_name_for_an_images_height_and_width(tmp_path: Path):
    # x [1, 3, size, size]: one name for both axes is still an image's height and width (counted as one dim, 512 x
    # 512 and 2,048 x 2,048 images were drawn for a detector's zeros on noise: seconds here, minutes on a detector).
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "zero"], ["y"])],
        "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "size", "size"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, "size", "size"])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    lengths = GeneratedLengths(model, None)
    assert not lengths.advance({"size": 128}, degenerate=True)
    source = tmp_path / "detector.onnx"
    onnx.save(ir.to_proto(model), source)
    _, report = optimize_with_report(source, ["remove-identity"], output=tmp_path / "out.onnx")
    assert report.input_sets[0] == "generated (size=128)", report.input_sets


def _flags_over_128_positions(tmp_path: Path) -> Path:
    """Flags per token, False on random tokens (constant), over a table of 128 positions (512 and 2,048 refused)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["input_ids"], ["shape"]),
            helper.make_node("Gather", ["shape", "one"], ["length"], axis=0),
            helper.make_node("Range", ["zero", "length", "one"], ["positions"]),
            helper.make_node("Gather", ["tokens", "input_ids"], ["token_rows"]),
            helper.make_node("Gather", ["table", "positions"], ["position_rows"]),
            helper.make_node("Add", ["token_rows", "position_rows"], ["embedded"]),
            helper.make_node("MatMul", ["embedded", "weight"], ["hidden"]),
            helper.make_node("Greater", ["hidden", "threshold"], ["flags"]),
        ],
        "flags",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("flags", TensorProto.BOOL, ["batch", "sequence", 16])],
        [
            onnx.numpy_helper.from_array(rng.standard_normal((100, 16)).astype(np.float32), "tokens"),
            onnx.numpy_helper.from_array(rng.standard_normal((128, 16)).astype(np.float32), "table"),
            onnx.numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "weight"),
            onnx.numpy_helper.from_array(np.array(1e6, np.float32), "threshold"),
            onnx.numpy_helper.from_array(np.array(0, np.int64), "zero"),
            onnx.numpy_helper.from_array(np.array(1, np.int64), "one"),
        ],
    )
    source = tmp_path / "flags.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)
    return source


def test_calibration_constant_at_the_default_and_refused_longer_goes_back_to_the_default(tmp_path: Path):
    # Verification went back to the default lengths with a warning, but generated calibration raised: --quantize
    # dynamic, which verified before longer lengths were tried, was refused.
    source = _flags_over_128_positions(tmp_path)
    _, report = optimize_with_report(source, ["quantize-dynamic"], output=tmp_path / "out.onnx")
    assert report.verified
    assert report.input_sets[0] == "generated (batch=1, sequence=128)", report.input_sets
    assert not any("constant at longer ones" in warning for warning in report.warnings), report.warnings


def test_compare_constant_at_the_default_and_refused_longer_goes_back_to_the_default(tmp_path: Path, capsys):
    # compare failed (exit 2) where it compared at the default lengths before longer ones were tried.
    source = str(_flags_over_128_positions(tmp_path))
    code, out, err = run_cli(["compare", source, source, "--iterations", "3", "--warmup", "1"], capsys)
    assert code == 0, err
    assert "constant on generated inputs of sequence=128, and ONNX Runtime refused the longer ones" in " ".join(
        (out + err).split()
    )


def test_verification_says_longer_lengths_were_refused_not_constant(tmp_path: Path):
    # Constant at the default, refused at 512 and 2,048 (a table of 128 positions): the warning said "longer ones
    # too", as if those were constant as well.
    source = _flags_over_128_positions(tmp_path)
    _, report = optimize_with_report(source, ["remove-identity"], output=tmp_path / "out.onnx")
    (warning,) = [w for w in report.warnings if "every output of the input model is constant" in w]
    assert "ONNX Runtime refused longer ones" in warning and "longer ones too" not in warning

"""Reduced precision through the pipeline, the API and the CLI: budgets, verification, reports, errors."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.api import optimize_with_report
from optimizer.cli import EXAMPLE_MODEL, main
from optimizer.errors import InputSpecError
from optimizer.inputs import make_inputs
from optimizer.runtime import run_batches, run_model
from optimizer.verify import DEFAULT_TOLERANCES, compare_outputs
from tests.helpers import ALL_FIXTURES, FIXTURES, calibration_samples, computed_op_types, without_layer_probe
from tests.passes.quantization.conftest import drift

INT8_OPS = {"DynamicQuantizeMatMul", "QAttention", "QuantizeLinear"}


@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_exported_models_quantize_after_fusion_and_pass_verification(name, mode):
    model = ir.load(FIXTURES / f"{name}.onnx")
    result, report = optimize_with_report(model, [f"+quantize-{mode}"], raise_errors=True)
    record = next(r for r in report.passes if r.name == f"quantize-{mode}")
    fusion = next(r for r in report.passes if r.name == "fuse-attention")
    if name.startswith("resnet") and mode == "dynamic":
        # Dynamic int8 leaves Convs float (ConvInteger is slower than float on CPU) and the
        # classifier is the model output: nothing to do.
        assert record.status == "unchanged"
        assert record.refusals == [
            "1 of 1 Gemm stay float: its result is a model output (--quantize-outputs quantizes it)"
        ]
        return
    assert record.status == "applied", record.detail
    assert set(computed_op_types(result)) & INT8_OPS
    # the integer kernels computed the float twin the pass declared (int8 tolerance), then the budget held
    assert "int8-dequantized" in record.twin and "(int8 tolerance)" in record.twin
    # verified on ORT against the original, after fusion (attention was fused first where there is one)
    assert record.cosine is not None and record.cosine > 0.999
    assert fusion.status in ("applied", "unchanged")
    # passes after quantization are verified against the quantized model, not rolled back
    assert all(r.status != "rolled back" for r in report.passes), [r.detail for r in report.failures()]


def test_end_to_end_encoder_accuracy_on_held_out_inputs(tmp_path):
    original = ir.load(EXAMPLE_MODEL)
    calibration = calibration_samples(original, 32)
    for mode in ("dynamic", "static"):
        output = tmp_path / f"{mode}.onnx"
        _, report = optimize_with_report(EXAMPLE_MODEL, [f"+quantize-{mode}"], output=output, calibration=calibration)
        assert next(r for r in report.passes if r.name == f"quantize-{mode}").status == "applied"
        assert set(computed_op_types(ir.load(output))) & INT8_OPS
        held_out = make_inputs(original, {"batch": 8, "sequence": 20}, seed=11)
        assert drift(original, ir.load(output), held_out).cosine > 0.995, mode


def test_a_budget_the_pass_cannot_meet_rolls_nothing_back_and_says_so():
    model = ir.load(FIXTURES / "bert_legacy.onnx")
    _, report = optimize_with_report(model, quantize="dynamic", min_cosine=1.0)
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert record.status == "unchanged"
    assert any("cannot be met" in note for note in record.notes)


def test_verification_rolls_back_an_approximate_pass_that_misses_the_budget(monkeypatch):
    # The pass is told no budget (so it quantizes everything); the verifier holds it to one.
    from passes import catalog

    original = catalog._int8
    monkeypatch.setattr(catalog, "_int8", lambda context: {**original(context), "budget": None})
    model = ir.load(FIXTURES / "llama_legacy.onnx")
    _, report = optimize_with_report(model, quantize="dynamic", min_cosine=0.9999999)
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert record.status == "rolled back"
    assert "misses the accuracy budget (--min-cosine 0.9999999)" in record.detail


def test_cli_quantize_with_calibration_budget_and_report(tmp_path, capsys):
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **calibration_samples(ir.load(EXAMPLE_MODEL), 16))
    output, report = tmp_path / "int8.onnx", tmp_path / "report.json"
    code = main(
        ["optimize", str(EXAMPLE_MODEL), "-o", str(output), "--quantize", "dynamic", "--calibration", str(calibration)]
        + ["--min-cosine", "0.999", "--pipeline-json", str(report)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "accuracy budget: --min-cosine 0.999" in printed and "quantize-dynamic:" in printed
    data = json.loads(report.read_text())
    record = next(r for r in data["passes"] if r["name"] == "quantize-dynamic")
    assert record["status"] == "applied" and record["cosine"] >= 0.999 and record["notes"]
    assert data["accuracy_budget"] == "--min-cosine 0.999"


def test_cli_static_without_calibration_warns_and_uses_generated_inputs(tmp_path, capsys):
    code = main(["optimize", str(EXAMPLE_MODEL), "-o", str(tmp_path / "q.onnx"), "--quantize", "static"])
    assert code == 0
    assert "warning: no --calibration data" in capsys.readouterr().out
    assert "QuantizeLinear" in computed_op_types(ir.load(tmp_path / "q.onnx"))


def test_passes_flag_with_calibration_works_like_quantize(tmp_path):
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **calibration_samples(ir.load(EXAMPLE_MODEL), 8))
    output = tmp_path / "q.onnx"
    code = main(
        ["optimize", str(EXAMPLE_MODEL), "-o", str(output), "--passes", "+quantize-static"]
        + ["--calibration", str(calibration), "--exclude", "*attention*"]
    )
    assert code == 0 and "QuantizeLinear" in computed_op_types(ir.load(output))


def test_generated_calibration_keeps_its_sample_count_when_dims_are_bound():
    model = ir.load(EXAMPLE_MODEL)
    _, report = optimize_with_report(model, ["+quantize-static"], dims={"batch": 1, "sequence": 8})
    record = next(r for r in report.passes if r.name == "quantize-static")
    assert any("on 16 samples" in note for note in record.notes)


def test_empty_calibration_is_refused():
    model = ir.load(EXAMPLE_MODEL)
    empty = {name: array[:0] for name, array in calibration_samples(model, 2).items()}
    with pytest.raises(InputSpecError, match="no samples"):
        optimize_with_report(model, ["+quantize-dynamic"], calibration=empty)


@pytest.mark.parametrize("keep_io_types", [True, False])
def test_cli_fp16_for_cuda(tmp_path, keep_io_types):
    output, report = tmp_path / "fp16.onnx", tmp_path / "report.json"
    flags = [] if keep_io_types else ["--no-keep-io-types"]
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(output), "--target", "cuda", "--fp16", *flags]
    assert main([*command, "--pipeline-json", str(report)]) == 0
    record = next(r for r in json.loads(report.read_text())["passes"] if r["name"] == "convert-float16")
    assert record["status"] == "applied", record["detail"]  # verified, float16 inputs included
    model = ir.load(output)
    assert model.graph.outputs[0].dtype == (ir.DataType.FLOAT if keep_io_types else ir.DataType.FLOAT16)
    assert any(v.const_value.dtype == ir.DataType.FLOAT16 for v in model.graph.initializers.values())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fp16"], "--fp16 is for --target cuda"),
        (["--target", "cuda", "--fp16", "--quantize", "static"], "--quantize static and --fp16 do not combine"),
        (["--target", "cuda", "--quantize", "dynamic"], "--quantize dynamic is for --target cpu"),
        (
            ["--calibration", "x.npz"],
            "--calibration needs --prune-ffn R or --prune-heads R or --prune-channels R or --lowrank R"
            " or --quantize dynamic",
        ),
        (["--prune-ffn", "1.5"], "--prune-ffn 1.5: expected a fraction"),
        (["--no-repair"], "--no-repair (repair=False) needs --prune-ffn R or --prune-heads R or --prune-channels R"),
        (["--smooth", "0.5"], "--smooth 0.5 (smooth=0.5) needs --quantize dynamic or --quantize static"),
        (["--quantize", "dynamic", "--smooth", "2"], "--smooth 2.0: expected a migration strength"),
        (["--quantize", "dynamic", "--calibration", "missing.npz"], "--calibration missing.npz: no such file"),
        (["--quantize", "dynamic", "--min-cosine", "1.5"], "--min-cosine 1.5: a cosine similarity is between"),
        (["--quantize", "dynamic", "--max-error", "-1"], "--max-error -1.0: expected a non-negative error"),
    ],
)
def test_bad_precision_flags_are_one_line_errors(flags, message, tmp_path, capsys):
    code = main(["optimize", str(EXAMPLE_MODEL), "-o", str(tmp_path / "q.onnx"), *flags])
    error = capsys.readouterr().err
    assert code != 0 and message in error and "Traceback" not in error
    assert error.count("\n") == 1


def test_calibration_with_wrong_inputs_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, nonsense=np.ones((2, 2)))
    code = main(
        [
            "optimize",
            str(EXAMPLE_MODEL),
            "-o",
            str(tmp_path / "q.onnx"),
            "--quantize",
            "static",
            "--calibration",
            str(bad),
        ]
    )
    error = capsys.readouterr().err
    assert code != 0 and error.startswith("graphopt: error: --calibration") and error.count("\n") == 1


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_float16_conversion_of_exported_models_passes_verification(name):
    model = ir.load(FIXTURES / f"{name}.onnx")
    _, report = optimize_with_report(model, ["+convert-float16"], target="cuda", raise_errors=True)
    record = next(r for r in report.passes if r.name == "convert-float16")
    assert record.status == "applied", record.detail
    assert "(float16 tolerance)" in record.twin
    assert record.cosine > 0.9999


@pytest.mark.parametrize("name", [f"{m}_{e}" for m in ("gpt2", "gptneo", "llama") for e in ("legacy", "dynamo")])
def test_float16_decoders_stay_finite_on_a_left_padded_batch(name):
    # Decoders' tokenizers pad on the left, and with causal attention a left-padded query
    # sees no key. Fused attention floors such a row's -inf mask at float32's minimum;
    # float16 made that floor -inf again (legacy Llama came out NaN over every padded
    # row, through the padded positions' keys and values). Unverified, so the float16
    # result itself is what runs here, fusions first as the default pipeline does.
    model = ir.load(FIXTURES / f"{name}.onnx")
    result, report = optimize_with_report(model, ["+convert-float16"], target="cuda", verify=False, raise_errors=True)
    assert next(r for r in report.passes if r.name == "convert-float16").status == "applied"
    inputs = make_inputs(model, {"batch": 3, "sequence": 65})
    mask = np.ones_like(inputs["attention_mask"])
    mask[0, :16], mask[1, :40] = 0, 0  # left padding; the last row has none
    inputs["attention_mask"] = mask
    (actual,) = run_batches(result, [inputs])[0].values()
    (expected,) = run_model(model, inputs).values()
    assert np.isfinite(actual).all()
    unpadded = mask.astype(bool)  # what a left-padded query returns is not defined
    tolerance = {"float32": DEFAULT_TOLERANCES["float16"]}
    assert compare_outputs({"y": expected[unpadded]}, {"y": actual[unpadded]}, tolerance).ok


def test_cli_quantize_embeddings_shrinks_the_file(tmp_path):
    plain, small = tmp_path / "plain.onnx", tmp_path / "small.onnx"
    assert main(["optimize", str(EXAMPLE_MODEL), "-o", str(plain), "--quantize", "dynamic"]) == 0
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(small), "--quantize", "dynamic", "--quantize-embeddings"]
    assert main(command) == 0
    assert small.stat().st_size < plain.stat().st_size
    assert "Cast" in computed_op_types(ir.load(small))


@pytest.mark.parametrize("flags", [{"quantize": "dynamic"}, {"prune_ffn": 0.25}])
def test_static_shapes_and_approximate_passes_verify_at_the_bound_batch(flags):
    model = ir.load(FIXTURES / "bert_legacy.onnx")
    _, report = optimize_with_report(model, static_shapes=True, dims={"batch": 1, "sequence": 8}, **flags)
    name = "quantize-dynamic" if "quantize" in flags else "prune-ffn"
    record = next(r for r in report.passes if r.name == name)
    assert record.status == "applied", record.detail


def test_a_realization_that_differs_from_its_twin_is_rolled_back(monkeypatch):
    # One layer's int8 weight scale written 2x too large: the accuracy floor would let it
    # through on this model; the twin check does not.
    from passes.quantization import dynamic

    original, broken = dynamic._quantize_matmul, []

    def doubled_scale(graph, layer, *args):
        original(graph, layer, *args)
        if not broken:
            scale = graph.initializers[f"{layer.node.name}.weight_scale"]
            scale.const_value = ir.tensor(scale.const_value.numpy() * np.float32(2), name=scale.name)
            broken.append(layer.name)

    monkeypatch.setattr(dynamic, "_quantize_matmul", doubled_scale)
    _, report = optimize_with_report(ir.load(EXAMPLE_MODEL), quantize="dynamic")
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert broken and record.status == "rolled back"
    assert "uses other weights than its twin's" in record.detail  # the layer alone, on probe rows
    broken.clear()
    without_layer_probe(monkeypatch)  # behind it, the whole model against its twin
    _, report = optimize_with_report(ir.load(EXAMPLE_MODEL), quantize="dynamic")
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert broken and record.status == "rolled back"
    assert "differs from its twin" in record.detail


def test_quantized_embeddings_match_their_dequantized_twin_exactly():
    _, report = optimize_with_report(ir.load(EXAMPLE_MODEL), quantize_embeddings=True)
    record = next(r for r in report.passes if r.name == "quantize-embeddings")
    assert record.status == "applied", record.detail
    assert "dequantized int8 rows" in record.twin and "(float32 tolerance)" in record.twin

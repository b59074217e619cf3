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
from tests.helpers import (
    ALL_FIXTURES,
    FIXTURES,
    calibration_samples,
    computed_op_types,
    split_pipeline,
    without_layer_probe,
)
from tests.passes.quantization.conftest import drift

INT8_OPS = {"DynamicQuantizeMatMul", "QAttention", "QuantizeLinear"}


@pytest.fixture(scope="module")
def fused_fixtures() -> dict:
    """The passes a precision pass runs after, run once per fixture, target and verification for the module; the
    results are only read (cloned) after. ``+quantize-dynamic`` and ``+quantize-static`` run the same passes before
    the quantizer (the cache's key checks it), so both modes and the budget tests below quantize one fused model."""
    return {}


def _fused(cache: dict, name: str, passes: list[str], *, target: str = "cpu", verify: bool = True):
    """``name``'s fixture (or the example model) after ``passes`` on ``target``, with the report, from ``cache`` or
    run and kept there."""
    key = (name, tuple(passes), target, verify)
    if key not in cache:
        model = ir.load(EXAMPLE_MODEL if name == "example" else FIXTURES / f"{name}.onnx")
        cache[key] = optimize_with_report(model, passes, target=target, verify=verify, raise_errors=True)
    return cache[key]


@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_exported_models_quantize_after_fusion_and_pass_verification(name, mode, fused_fixtures):
    # The verified pipeline of +quantize-MODE in two runs: the passes before the quantizer (verified against the
    # original, shared by both modes), then the quantizer and the passes after it (verified against that result).
    before, after = split_pipeline(f"quantize-{mode}", [f"+quantize-{mode}"])
    fused, fused_report = _fused(fused_fixtures, name, before)
    result, report = optimize_with_report(fused.clone(), after, raise_errors=True)
    record = next(r for r in report.passes if r.name == f"quantize-{mode}")
    fusion = next(r for r in fused_report.passes if r.name == "fuse-attention")
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
    # no pass before quantization is rolled back; those after it are verified against the quantized model, and not
    assert all(r.status != "rolled back" for r in fused_report.passes), [r.detail for r in fused_report.failures()]
    assert all(r.status != "rolled back" for r in report.passes), [r.detail for r in report.failures()]


def test_end_to_end_encoder_accuracy_on_held_out_inputs(tmp_path, fused_fixtures):
    original = ir.load(EXAMPLE_MODEL)
    calibration = calibration_samples(original, 32)
    for mode in ("dynamic", "static"):
        # +quantize-MODE in two runs (the same passes in the same order, the same model): the passes before the
        # quantizer, verified and shared by both modes, then the quantizer and the passes after it, from a file.
        before, after = split_pipeline(f"quantize-{mode}", [f"+quantize-{mode}"])
        fused, fused_report = _fused(fused_fixtures, "example", before)
        assert not fused_report.failures(), fused_report.failures()
        ir.save(fused, tmp_path / "fused.onnx")
        output = tmp_path / f"{mode}.onnx"
        _, report = optimize_with_report(tmp_path / "fused.onnx", after, output=output, calibration=calibration)
        assert next(r for r in report.passes if r.name == f"quantize-{mode}").status == "applied"
        assert set(computed_op_types(ir.load(output))) & INT8_OPS
        held_out = make_inputs(original, {"batch": 8, "sequence": 20}, seed=11)
        assert drift(original, ir.load(output), held_out).cosine > 0.995, mode


def test_a_budget_the_pass_cannot_meet_rolls_nothing_back_and_says_so(fused_fixtures):
    # quantize="dynamic" in two runs: the passes before the quantizer are shared with the tests above.
    before, after = split_pipeline("quantize-dynamic", quantize="dynamic")
    fused, _ = _fused(fused_fixtures, "bert_legacy", before)
    _, report = optimize_with_report(fused.clone(), after, quantize="dynamic", min_cosine=1.0)
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert record.status == "unchanged"
    assert any("cannot be met" in note for note in record.notes)


def test_verification_rolls_back_an_approximate_pass_that_misses_the_budget(monkeypatch, fused_fixtures):
    # The pass is told no budget (so it quantizes everything); the verifier holds it to one. quantize="dynamic" in two
    # runs: the passes before the quantizer are shared with the tests above.
    from passes import catalog

    original = catalog._int8
    monkeypatch.setattr(catalog, "_int8", lambda context: {**original(context), "budget": None})
    before, after = split_pipeline("quantize-dynamic", quantize="dynamic")
    fused, _ = _fused(fused_fixtures, "llama_legacy", before)
    _, report = optimize_with_report(fused.clone(), after, quantize="dynamic", min_cosine=0.9999999)
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
    # The quantizer alone (--passes): the warning and the generated samples are its; the fusions before it in the
    # default pipeline are the CLI runs above and below.
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(tmp_path / "q.onnx"), "--quantize", "static"]
    code = main([*command, "--passes", "quantize-static"])
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
    _, report = optimize_with_report(model, ["quantize-static"], dims={"batch": 1, "sequence": 8})  # the pass alone
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
    # The verified default pipeline before the float16 pass in one case; the float16 pass alone (--passes) in the
    # other, whose float16 inputs its verification feeds.
    alone = [] if keep_io_types else ["--passes", "convert-float16"]
    assert main([*command, *alone, "--pipeline-json", str(report)]) == 0
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
def test_float16_conversion_of_exported_models_passes_verification(name, fused_fixtures):
    # The passes before convert-float16 on --target cuda run once per fixture, unverified (the CPU pipeline, which
    # runs each of them, is verified on every fixture in tests/test_exported_models.py; this test reads the float16
    # pass's record alone); the float16 pass and those after it are verified against their result.
    before, after = split_pipeline("convert-float16", ["+convert-float16"], target="cuda")
    fused, _ = _fused(fused_fixtures, name, before, target="cuda", verify=False)
    _, report = optimize_with_report(fused.clone(), after, target="cuda", raise_errors=True)
    record = next(r for r in report.passes if r.name == "convert-float16")
    assert record.status == "applied", record.detail
    assert "(float16 tolerance)" in record.twin
    assert record.cosine > 0.9999


@pytest.mark.parametrize("name", [f"{m}_{e}" for m in ("gpt2", "gptneo", "llama") for e in ("legacy", "dynamo")])
def test_float16_decoders_stay_finite_on_a_left_padded_batch(name, fused_fixtures):
    # Decoders' tokenizers pad on the left, and with causal attention a left-padded query
    # sees no key. Fused attention floors such a row's -inf mask at float32's minimum;
    # float16 made that floor -inf again (legacy Llama came out NaN over every padded
    # row, through the padded positions' keys and values). Unverified, so the float16
    # result itself is what runs here, fusions first as the default pipeline does (+convert-float16 in two runs, the
    # passes before it shared with the test above).
    model = ir.load(FIXTURES / f"{name}.onnx")
    before, after = split_pipeline("convert-float16", ["+convert-float16"], target="cuda")
    fused, _ = _fused(fused_fixtures, name, before, target="cuda", verify=False)
    result, report = optimize_with_report(fused.clone(), after, target="cuda", verify=False, raise_errors=True)
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
    # The file sizes, unverified (each pass decides what it quantizes on its own budget; verification can only roll
    # one back): test_quantized_embeddings_match_their_dequantized_twin_exactly verifies the embeddings pass.
    plain, small = tmp_path / "plain.onnx", tmp_path / "small.onnx"
    assert main(["optimize", str(EXAMPLE_MODEL), "-o", str(plain), "--quantize", "dynamic", "--no-verify"]) == 0
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(small), "--quantize", "dynamic", "--quantize-embeddings"]
    command.append("--no-verify")
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


def test_a_realization_that_differs_from_its_twin_is_rolled_back(monkeypatch, fused_fixtures):
    # One layer's int8 weight scale written 2x too large: the accuracy floor would let it
    # through on this model; the twin check does not. quantize="dynamic" in two runs, the passes before the
    # quantizer run once for both checks.
    from passes.quantization import dynamic

    before, after = split_pipeline("quantize-dynamic", quantize="dynamic")
    fused, _ = _fused(fused_fixtures, "example", before)

    original, broken = dynamic._quantize_matmul, []

    def doubled_scale(graph, layer, *args):
        original(graph, layer, *args)
        if not broken:
            scale = graph.initializers[f"{layer.node.name}.weight_scale"]
            scale.const_value = ir.tensor(scale.const_value.numpy() * np.float32(2), name=scale.name)
            broken.append(layer.name)

    monkeypatch.setattr(dynamic, "_quantize_matmul", doubled_scale)
    _, report = optimize_with_report(fused.clone(), after, quantize="dynamic")
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert broken and record.status == "rolled back"
    assert "uses other weights than its twin's" in record.detail  # the layer alone, on probe rows
    broken.clear()
    without_layer_probe(monkeypatch)  # behind it, the whole model against its twin
    _, report = optimize_with_report(fused.clone(), after, quantize="dynamic")
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert broken and record.status == "rolled back"
    assert "differs from its twin" in record.detail


def test_quantized_embeddings_match_their_dequantized_twin_exactly():
    # The pass alone: its twin is what is read, not the fusions the default pipeline runs before it.
    _, report = optimize_with_report(ir.load(EXAMPLE_MODEL), ["quantize-embeddings"], quantize_embeddings=True)
    record = next(r for r in report.passes if r.name == "quantize-embeddings")
    assert record.status == "applied", record.detail
    assert "dequantized int8 rows" in record.twin and "(float32 tolerance)" in record.twin

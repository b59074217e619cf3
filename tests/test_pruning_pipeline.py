"""Pruning through the pipeline: exported models, composition with fusion and quantization, the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.api import optimize, optimize_with_report
from optimizer.cli import EXAMPLE_MODEL, main
from optimizer.errors import OptionError
from optimizer.inputs import make_inputs
from optimizer.parameters import count_parameters as parameter_count
from tests.helpers import ALL_FIXTURES, EXPORTED_MODELS, FIXTURES, calibration_samples, run, split_pipeline


@pytest.mark.parametrize("name", EXPORTED_MODELS + ["vit_legacy"])
def test_exported_models_prune_and_still_run(name):
    model = ir.load(FIXTURES / f"{name}.onnx")
    # The pipeline in two runs (the same passes in the same order, the same model): the passes before the cut
    # unverified (tests/test_exported_models.py verifies the default pipeline on every fixture, nothing rolled back,
    # so they make the model verification keeps), then the cut and the passes after it, verified against that.
    first, rest = split_pipeline("prune-ffn-heads", prune_ffn=0.25, prune_heads=0.25)
    fused = optimize(model, first, verify=False, raise_errors=True)
    result, report = optimize_with_report(
        fused, rest, prune_ffn=0.25, prune_heads=0.25, calibration=calibration_samples(model), raise_errors=True
    )
    records = {r.name: r for r in report.passes}
    assert "prune-ffn" not in records and "prune-heads" not in records  # both flags: one combined cut
    record = records["prune-ffn-heads"]
    assert record.status == "applied", record.detail
    # heads: every fused attention (Llama legacy's too since simplify-shapes proves its repeated key/value heads'
    # targets: its attention_bias is no longer per head)
    kinds = next(note for note in record.notes if note.startswith("kept per group"))
    assert kinds.startswith("kept per group (heads/neurons)"), kinds
    # The cut's own count, on the fused model it was given (fusion adds tables, rotary caches: like with like).
    summary = next(note for note in record.notes if "parameters " in note and " → " in note)
    counts = summary.split("parameters ", 1)[1].split(";")[0].split(" → ")
    before, after = (int(count.replace(",", "")) for count in counts)
    assert after < before and parameter_count(result) < before
    assert record.cosine > 0.9  # verified against the fused original
    assert any(note.startswith("without repair:") for note in record.notes)


def test_prune_fuse_quantize_compose():
    model = ir.load(FIXTURES / "bert_dynamo.onnx")
    result, report = optimize_with_report(
        model, prune_ffn=0.25, prune_heads=0.25, quantize="dynamic", calibration=calibration_samples(model)
    )
    statuses = {r.name: r.status for r in report.passes}
    assert statuses["fuse-attention"] == statuses["prune-ffn-heads"] == statuses["quantize-dynamic"] == "applied"
    ops = [node.op_type for node in result.graph]
    assert "QAttention" in ops and "DynamicQuantizeMatMul" in ops
    attentions = [node for node in result.graph if node.op_type == "QAttention"]
    # 25 % of all heads, ranked across the layers (not necessarily one per layer)
    assert sum(node.attributes.get_int("num_heads") for node in attentions) == 3 * len(attentions)
    inputs = make_inputs(model, {"batch": 2, "sequence": 7})
    assert run(result, inputs)["last_hidden_state"].shape == (2, 7, 64)


def test_cli_prunes_with_calibration_and_reports_the_trade_off(tmp_path, capsys):
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **calibration_samples(ir.load(EXAMPLE_MODEL), 16))
    output, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(output), "--prune-ffn", "0.3", "--prune-heads", "0.25"]
    assert main([*command, "--calibration", str(calibration), "--pipeline-json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "prune-ffn-heads: ratios ffn 0.30, heads 0.25" in printed and "without repair" in printed
    assert "prune-ffn-heads: kept per group (heads/neurons): " in printed
    data = json.loads(report.read_text())
    assert data["initializer_bytes_after"] < data["initializer_bytes_before"]


def test_cli_budget_searches_the_ratio(tmp_path, capsys):
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **calibration_samples(ir.load(EXAMPLE_MODEL), 16))
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(tmp_path / "p.onnx"), "--prune-ffn", "0.9"]
    assert main([*command, "--calibration", str(calibration), "--min-cosine", "0.995"]) == 0
    assert "budget --min-cosine 0.995 on held-out samples, which ranking and repair do not see: " in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("name", ["resnet_dynamo", "resnet_legacy"])
def test_resnets_prune_channels_inside_blocks_and_leave_residual_ties(name):
    model = ir.load(FIXTURES / f"{name}.onnx")
    result, report = optimize_with_report(
        model, prune_channels=0.25, calibration=calibration_samples(model, 8), raise_errors=True
    )
    record = next(r for r in report.passes if r.name == "prune-channels")
    assert record.status == "applied", record.detail
    assert any("residual tie" in refusal for refusal in record.refusals)
    # the default pipeline's parameters, unverified (tests/test_exported_models.py verifies it on both ResNets)
    unpruned = optimize(model, verify=False)
    assert parameter_count(result) < parameter_count(unpruned)
    assert run(result, make_inputs(model, {"batch": 2}))["logits"].shape == (2, 10)


def test_cli_prune_pass_named_and_flagged_runs_once(tmp_path, capsys):
    output, report = tmp_path / "p.onnx", tmp_path / "r.json"
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(output), "--passes", "+prune-ffn", "--prune-ffn", "0.25"]
    assert main([*command, "--pipeline-json", str(report)]) == 0
    assert [r["name"] for r in json.loads(report.read_text())["passes"]].count("prune-ffn") == 1
    assert main(["optimize", str(EXAMPLE_MODEL), "-o", str(output), "--passes", "+prune-heads"]) == 2
    assert "prune-heads needs its ratio: --prune-heads R" in capsys.readouterr().err


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_exported_models_compute_their_twins(name):
    """Each pruning pass that finds groups in the fused fixture, with calibration samples (repair on):
    the result with all of ONNX Runtime's optimizations matches the twin, as written, at float32
    tolerance, at two input shapes."""
    from passes.pruning.channels import ChannelPruningPass
    from passes.pruning.ffn import FfnPruningPass
    from passes.pruning.heads import HeadPruningPass
    from tests.passes.pruning.twins import assert_matches_twin

    model = optimize(ir.load(FIXTURES / f"{name}.onnx"), verify=False)
    samples = calibration_samples(model, 8)
    text = name in EXPORTED_MODELS
    dims = [{"batch": 2, "sequence": 7}, {"batch": 1, "sequence": 12}] if text else [{"batch": 2}, {"batch": 1}]
    input_sets = [make_inputs(model, d, seed=4 + i) for i, d in enumerate(dims)]
    pruned = 0
    for kind in (FfnPruningPass, HeadPruningPass, ChannelPruningPass):
        result = kind(0.25, samples=samples)(model.clone())
        if result.modified:
            pruned += 1
            assert_matches_twin(result, *input_sets)
    assert pruned >= 1


def test_without_calibration_data_pruning_ranks_by_magnitude_and_does_not_repair():
    """Generated samples measure the drift, but nothing is fitted to them: the result is the
    magnitude-ranked, unrepaired cut (README, Structured pruning)."""
    from passes.pruning.ffn import FfnPruningPass
    from tests.helpers import assert_same_outputs

    model = ir.load(EXAMPLE_MODEL)
    result, report = optimize_with_report(model, prune_ffn=0.25, raise_errors=True)
    record = next(r for r in report.passes if r.name == "prune-ffn")
    assert record.status == "applied", record.detail
    assert "no --calibration data: ranked by weight magnitude, not re-fitted" in record.notes
    assert not any(note.startswith("without repair") for note in record.notes)
    fused = optimize(model, verify=False)  # the passes the verified run above ran (a rollback there shows here)
    magnitude = FfnPruningPass(0.25)(fused.clone()).model  # no samples at all: magnitude, no repair
    assert_same_outputs(magnitude, result, make_inputs(model, {"batch": 2, "sequence": 9}), rtol=1e-4, atol=1e-5)


def test_activation_importance_without_calibration_data_is_refused(tmp_path, capsys):
    output = tmp_path / "p.onnx"
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(output), "--prune-heads", "0.25"]
    assert main([*command, "--importance", "activation"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--importance activation needs --calibration data" in error and "\n" not in error
    assert not output.exists()
    with pytest.raises(OptionError, match="repair needs --calibration data"):
        optimize_with_report(ir.load(EXAMPLE_MODEL), prune_heads=0.25, repair=True)
    # The pass refuses on its own too, for use outside graphopt's pipeline.
    from passes.pruning.heads import HeadPruningPass

    result = HeadPruningPass(0.25, importance="activation", samples={}, samples_generated=True)(ir.load(EXAMPLE_MODEL))
    assert not result.modified and "needs --calibration data" in result.refusals[0]

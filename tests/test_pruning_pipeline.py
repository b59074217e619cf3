"""Pruning through the pipeline: exported models, composition with fusion and quantization, the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.api import optimize_with_report
from optimizer.cli import EXAMPLE_MODEL, main
from optimizer.inputs import make_inputs
from passes.pruning._base import parameter_count
from tests.helpers import EXPORTED_MODELS, FIXTURES, calibration_samples, run


@pytest.mark.parametrize("name", EXPORTED_MODELS + ["vit_legacy"])
def test_exported_models_prune_and_still_run(name):
    model = ir.load(FIXTURES / f"{name}.onnx")
    result, report = optimize_with_report(
        model, prune_ffn=0.25, prune_heads=0.25, calibration=calibration_samples(model), raise_errors=True
    )
    records = {r.name: r for r in report.passes}
    assert records["prune-ffn"].status == "applied", records["prune-ffn"].detail
    # heads: every fused attention except GPT-2 dynamo's (its output is re-split into heads
    # and merged again before the projection) and Llama legacy's (a per-head attention_bias)
    expect_heads = name not in ("gpt2_dynamo", "llama_legacy")
    assert (records["prune-heads"].status == "applied") == expect_heads, records["prune-heads"].refusals
    unpruned, _ = optimize_with_report(model)  # fusion adds tables (rotary caches): compare like with like
    assert parameter_count(result) < parameter_count(unpruned)
    assert records["prune-ffn"].cosine > 0.9  # verified against the original
    assert any(note.startswith("without repair:") for note in records["prune-ffn"].notes)


def test_prune_fuse_quantize_compose():
    model = ir.load(FIXTURES / "bert_dynamo.onnx")
    result, report = optimize_with_report(
        model, prune_ffn=0.25, prune_heads=0.25, quantize="dynamic", calibration=calibration_samples(model)
    )
    statuses = {r.name: r.status for r in report.passes}
    assert statuses["fuse-attention"] == statuses["prune-heads"] == statuses["quantize-dynamic"] == "applied"
    ops = [node.op_type for node in result.graph]
    assert "QAttention" in ops and "DynamicQuantizeMatMul" in ops
    attention = next(node for node in result.graph if node.op_type == "QAttention")
    assert attention.attributes.get_int("num_heads") == 3
    inputs = make_inputs(model, {"batch": 2, "sequence": 7})
    assert run(result, inputs)["last_hidden_state"].shape == (2, 7, 64)


def test_cli_prunes_with_calibration_and_reports_the_trade_off(tmp_path, capsys):
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **calibration_samples(ir.load(EXAMPLE_MODEL), 16))
    output, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(output), "--prune-ffn", "0.3", "--prune-heads", "0.25"]
    assert main([*command, "--calibration", str(calibration), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "prune-ffn: ratio 0.30" in printed and "without repair" in printed
    data = json.loads(report.read_text())
    assert data["initializer_bytes_after"] < data["initializer_bytes_before"]


def test_cli_budget_searches_the_ratio(tmp_path, capsys):
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **calibration_samples(ir.load(EXAMPLE_MODEL), 16))
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(tmp_path / "p.onnx"), "--prune-ffn", "0.9"]
    assert main([*command, "--calibration", str(calibration), "--min-cosine", "0.995"]) == 0
    assert "budget --min-cosine 0.995: " in capsys.readouterr().out


@pytest.mark.parametrize("name", ["resnet_dynamo", "resnet_legacy"])
def test_resnets_prune_channels_inside_blocks_and_leave_residual_ties(name):
    model = ir.load(FIXTURES / f"{name}.onnx")
    result, report = optimize_with_report(
        model, prune_channels=0.25, calibration=calibration_samples(model, 8), raise_errors=True
    )
    record = next(r for r in report.passes if r.name == "prune-channels")
    assert record.status == "applied", record.detail
    assert any("residual tie" in refusal for refusal in record.refusals)
    unpruned, _ = optimize_with_report(model)
    assert parameter_count(result) < parameter_count(unpruned)
    assert run(result, make_inputs(model, {"batch": 2}))["logits"].shape == (2, 10)


def test_cli_prune_pass_named_and_flagged_runs_once(tmp_path, capsys):
    output, report = tmp_path / "p.onnx", tmp_path / "r.json"
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(output), "--passes", "+prune-ffn", "--prune-ffn", "0.25"]
    assert main([*command, "--report", str(report)]) == 0
    assert [r["name"] for r in json.loads(report.read_text())["passes"]].count("prune-ffn") == 1
    assert main(["optimize", str(EXAMPLE_MODEL), "-o", str(output), "--passes", "+prune-heads"]) == 2
    assert "prune-heads needs its ratio: --prune-heads R" in capsys.readouterr().err

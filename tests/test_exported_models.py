"""The default pipeline on exported transformer and CNN graphs (both PyTorch exporters)."""

from __future__ import annotations

import onnx_ir as ir
import pytest

import optimizer
from optimizer.inputs import make_inputs
from optimizer.registry import default_pass_names
from optimizer.report import STATUS_APPLIED, STATUS_UNCHANGED
from tests.helpers import ALL_FIXTURES, FIXTURES, assert_same_outputs, default_pipeline, op_types


def _computed_reshapes(model: ir.Model) -> int:
    return sum(
        1
        for node in model.graph
        if node.op_type == "Reshape" and ir.convenience.get_const_tensor(node.inputs[1]) is None
    )


def test_default_pipeline_is_verified_and_shrinks_the_graph(exported_model):
    name, model = exported_model
    # The verified default pipeline, run once per fixture and process (tests.helpers.default_pipeline) for the test
    # below and the respelled fixtures' and fixed-point tests; a pass that raised is recorded failed.
    optimized, report = default_pipeline(name)
    assert all(record.status in (STATUS_APPLIED, STATUS_UNCHANGED) for record in report.passes), report.failures()
    assert len(report.inputs) == 2, "verified at two bindings of batch and sequence"
    # Roughly half of every raw export is shape arithmetic, constants and duplicates.
    assert report.nodes_after < 0.6 * report.nodes_before, name
    assert _computed_reshapes(optimized) < _computed_reshapes(model)
    assert "Identity" not in op_types(optimized)
    for dims in ({"batch": 1, "sequence": 7}, {"batch": 4, "sequence": 33}):
        assert_same_outputs(model, optimized, make_inputs(model, dims), rtol=1e-4, atol=1e-5)


def test_legacy_bert_attention_reshapes_become_constant():
    # Every head split/merge reshape in a legacy BERT export reads B and S from a
    # Shape at run time; all of them can be written with 0/-1.
    model = ir.load(FIXTURES / "bert_legacy.onnx")
    cleanup = [name for name in default_pass_names("cpu") if not name.startswith("fuse-")]  # fusion removes them
    optimized = optimizer.optimize(model, cleanup)
    attention = [node for node in optimized.graph if node.op_type == "Reshape" and "attention" in node.name]
    assert len(attention) == 10
    assert all(ir.convenience.get_const_tensor(node.inputs[1]) is not None for node in attention)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_default_pipeline_keeps_every_fixture_correct(name):
    # Text models, ViT and a ResNet (legacy export folds BatchNorm itself; dynamo keeps it).
    model = ir.load(FIXTURES / f"{name}.onnx")
    optimized, report = default_pipeline(name)  # shared with the test above (a pass that raised is a failure)
    assert not report.failures(), report.failures()
    assert report.nodes_after <= report.nodes_before
    for batch in (1, 3):
        assert_same_outputs(model, optimized, make_inputs(model, {"batch": batch}), rtol=1e-4, atol=1e-5)

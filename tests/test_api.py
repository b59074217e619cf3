"""The Python API: optimize() returns what it was given; our passes work in any PassManager."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import pytest

import optimizer
from optimizer.cli import main
from optimizer.errors import OutputPathError, PassSelectionError
from optimizer.registry import resolve
from passes.cleanup import RemoveIdentityPass, RemoveUnusedPass
from passes.constant_folding import FoldConstantsPass
from passes.fusion.attention import AttentionFusion
from passes.fusion.bias_gelu import BiasGeluFusion
from passes.fusion.gelu import GeluFusion
from passes.fusion.packed_attention import PackedAttentionFusion
from passes.shape_simplification import ShapeSimplificationPass
from tests.helpers import FIXTURES, assert_same_outputs, run

BERT = FIXTURES / "bert_legacy.onnx"


def _inputs(sequence=8):
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(0, 100, (2, sequence)),
        "attention_mask": np.ones((2, sequence), np.int64),
        "token_type_ids": np.zeros((2, sequence), np.int64),
    }


def test_path_in_path_out(tmp_path):
    output = tmp_path / "out.onnx"
    result = optimizer.optimize(BERT, output=output)
    assert result == output and output.exists()
    assert optimizer.optimize(str(BERT), output=str(tmp_path / "out2.onnx")) == str(tmp_path / "out2.onnx")
    assert_same_outputs(ir.load(BERT), ir.load(output), _inputs())


def test_path_without_output_is_an_error():
    with pytest.raises(OutputPathError):
        optimizer.optimize(BERT)


def test_model_proto_in_model_proto_out():
    proto = onnx.load(BERT)
    original_bytes = proto.SerializeToString()
    result = optimizer.optimize(proto)
    assert isinstance(result, onnx.ModelProto)
    assert proto.SerializeToString() == original_bytes, "the argument must not be modified"
    assert len(result.graph.node) < len(proto.graph.node)
    assert_same_outputs(ir.from_proto(proto), ir.from_proto(result), _inputs())


def test_ir_model_in_ir_model_out():
    model = ir.load(BERT)
    nodes = len(model.graph)
    result = optimizer.optimize(model, passes=["fold-constants", "simplify-shapes"])
    assert isinstance(result, ir.Model) and result is not model
    assert len(model.graph) == nodes
    assert_same_outputs(model, result, _inputs())


def test_report_and_explicit_inputs():
    model = ir.load(BERT)
    _, report = optimizer.optimize_with_report(model, inputs=_inputs(sequence=12))
    shapes = {"input_ids": [2, 12], "attention_mask": [2, 12], "token_type_ids": [2, 12]}
    # The given inputs, then a generated second binding grown from them: batch 3, and
    # (257 being past the fixture's 128 positions) half their length; padded at both ends.
    assert report.inputs == [shapes, {name: [3, 7] for name in shapes}]
    assert report.input_sets[0] == "the given inputs"
    assert report.input_sets[1].startswith("generated, second binding (batch=3, sequence=7), attention_mask: row 1")
    assert all(record.status in ("applied", "unchanged") for record in report.passes)
    assert report.nodes_after < report.nodes_before


def test_unknown_pass_name():
    with pytest.raises(PassSelectionError, match="unknown pass 'fuse-everything'"):
        optimizer.optimize(ir.load(BERT), passes=["fuse-everything"])


def test_default_pipeline_lists_registered_safe_passes():
    names = optimizer.default_pass_names("cpu")
    assert names[0] == "remove-identity" and names[-1] == "remove-unused"
    assert "bind-dims" not in names, "shape specialization is opt-in"


def test_passes_work_in_an_onnx_ir_pass_manager():
    # What an export pipeline does: our passes next to onnx-ir's own.
    model = ir.load(BERT)
    reference = run(model, _inputs())
    manager = ir.passes.PassManager(
        [
            RemoveIdentityPass(),
            FoldConstantsPass(),
            ShapeSimplificationPass(),
            RemoveUnusedPass(),
            common_passes.TopologicalSortPass(),
        ],
    )
    result = manager(model)
    assert result.modified
    actual = run(result.model, _inputs())
    np.testing.assert_allclose(actual["last_hidden_state"], reference["last_hidden_state"], rtol=1e-4, atol=1e-5)


def test_fusion_passes_work_in_an_onnx_ir_pass_manager():
    model = ir.load(BERT)
    reference = run(model, _inputs())
    manager = ir.passes.PassManager(
        [
            FoldConstantsPass(),
            ShapeSimplificationPass(),
            GeluFusion(),
            BiasGeluFusion(),
            AttentionFusion(),
            PackedAttentionFusion(),
            RemoveUnusedPass(),
        ],
    )
    result = manager(model)
    assert {"Attention", "BiasGelu"} <= {node.op_type for node in result.model.graph}
    actual = run(result.model, _inputs())
    np.testing.assert_allclose(actual["last_hidden_state"], reference["last_hidden_state"], rtol=1e-4, atol=1e-5)


def test_plus_names_add_opt_in_passes_to_the_default_pipeline():
    names = [spec.name for spec in resolve(["+fuse-gelu", "+fuse-bias-gelu"])]
    default = optimizer.default_pass_names("cpu")
    assert [name for name in names if name not in ("fuse-gelu", "fuse-bias-gelu")] == default
    assert names.index("fuse-gelu") < names.index("fuse-bias-gelu") < names.index("fuse-attention")
    with pytest.raises(PassSelectionError):
        resolve(["+fuse-gelu", "remove-unused"])


def test_fusion_refuses_a_target_without_the_kernel(monkeypatch):
    # The gate every fusion shares: an EP lacking the fused op's kernel keeps the standard-ONNX form.
    from optimizer.domains import MS_DOMAIN
    from passes.fusion import _targets

    for op in ("Gelu", "FastGelu"):
        monkeypatch.setitem(_targets._KERNELS, (MS_DOMAIN, op), frozenset({"cpu"}))
    model = ir.load(BERT)
    FoldConstantsPass()(model)
    assert not GeluFusion(target="cuda")(model).modified


def test_max_sequence_must_be_positive(tmp_path, capsys):
    code = main(["optimize", str(BERT), "-o", str(tmp_path / "out.onnx"), "--max-sequence", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-sequence 0" in err and len(err.strip().splitlines()) == 1


def test_static_shapes_removes_all_shape_ops():
    model = ir.load(BERT)
    result, report = optimizer.optimize_with_report(model, dims={"batch": 2, "sequence": 8}, static_shapes=True)
    assert report.passes[0].name == "bind-dims"
    assert not any(node.op_type == "Shape" for node in result.graph)
    assert [d for d in result.graph.inputs[0].shape] == [2, 8]
    assert_same_outputs(model, result, _inputs(sequence=8))


def test_an_onnx_ir_model_given_to_optimize_is_left_exactly_as_it_was():
    # A review: the default pipeline named four Constant tensors of the caller's model (a clone shares them).
    from pathlib import Path

    given = ir.load(Path(__file__).resolve().parents[1] / "examples" / "encoder.onnx")
    before = ir.serde.serialize_model(given).SerializeToString()
    optimizer.optimize(given)
    assert ir.serde.serialize_model(given).SerializeToString() == before

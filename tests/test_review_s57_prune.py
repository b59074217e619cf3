"""Review s57 (structured pruning on real exports): what was found and fixed.

1. A packed ``Attention`` with an ``attention_bias`` input was left whole whatever the bias's shape, with the
   refusal "qkv_hidden_sizes, past or attention_bias inputs": the dynamo exporter's ViT, DeiT and DINOv2 pass
   their padding mask as a ``[batch, 1, S, T]`` bias shared by every head, so no head of theirs was ever pruned
   (the legacy exports of the same models were). A bias shared by all heads is now accepted, as it already was
   on ``MultiHeadAttention``; a per-head one is refused by that name.
2. With grouped-query attention the report's "kept per group (heads)" counted key/value heads (``1/2``) where the
   attention's ``num_heads`` went from 4 to 2 and the twin's description said "4 of 8 heads zeroed": it now counts
   heads as the attention does, the key/value heads in brackets (``2/4 (1/2 key/value heads)``).
3. ModernBERT's FFN (up and gate packed in one ``Wi`` projection, split by ``Split``/``Slice``) was skipped with
   only the generic "no group to prune" note; README says an FFN whose walk meets an op it does not trace is
   named with that op. It now is (the split itself is still not traced: the FFN stays whole).
"""

from __future__ import annotations

import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optimizer.api import optimize_with_report
from optimizer.inputs import make_inputs
from passes.pruning.heads import HeadPruningPass
from tests.helpers import FIXTURES, calibration_samples
from tests.passes.pruning import graphs
from tests.passes.pruning.twins import assert_matches_twin


def test_the_dynamo_vits_shared_attention_bias_does_not_stop_the_heads_being_cut():
    model = ir.load(FIXTURES / "vit_dynamo.onnx")
    result, report = optimize_with_report(
        model, prune_heads=0.5, calibration=calibration_samples(model, 8), raise_errors=True
    )
    record = next(r for r in report.passes if r.name == "prune-heads")
    assert record.status == "applied", (record.detail, record.refusals)
    attentions = [node for node in result.graph if node.op_type == "Attention"]
    assert attentions and all(node.inputs[5] is not None for node in attentions)  # the bias is still read
    assert all(node.attributes.get_int("num_heads") == 2 for node in attentions)


def test_the_cut_under_a_shared_attention_bias_computes_its_twin():
    from optimizer.api import optimize

    model = optimize(ir.load(FIXTURES / "vit_dynamo.onnx"), verify=False)
    result = HeadPruningPass(0.5, samples=calibration_samples(model, 8))(model.clone())
    assert result.modified
    assert_matches_twin(result, *(make_inputs(model, {"batch": b}, seed=4 + b) for b in (1, 3)))


@pytest.mark.parametrize(("heads_dim", "refused"), [(1, False), (4, True)])
def test_a_per_head_attention_bias_is_refused_by_that_name(heads_dim, refused):
    model = graphs.packed_attention()
    node = model.graph.node("attention")
    bias = ir.Value(name="bias", shape=ir.Shape(["B", heads_dim, "S", "S"]), type=ir.TensorType(ir.DataType.FLOAT))
    model.graph.inputs.append(bias)
    node.resize_inputs(6)
    node.replace_input_with(5, bias)
    result = HeadPruningPass(0.5)(model)
    assert result.modified is not refused
    if refused:
        assert any("an attention_bias not known to be shared by all heads" in r for r in result.refusals)
    else:
        assert node.attributes.get_int("num_heads") == 2


@pytest.mark.parametrize("name", ["llama_dynamo", "llama_legacy"])
def test_grouped_query_heads_kept_are_reported_as_the_heads_left(name):
    """A grouped-query unit is a key/value head with the query heads reading it: the note counted those units
    under "(heads)" (``1/2``) where the attention went from 4 heads to 2 and the twin said "4 of 8 heads"."""
    from optimizer.api import optimize

    model = optimize(ir.load(FIXTURES / f"{name}.onnx"), verify=False)
    result = HeadPruningPass(0.5)(model)
    assert result.modified
    heads = {n.name: n.attributes.get_int("num_heads") for n in result.model.graph if n.op_type == "MultiHeadAttention"}
    note = next(note for note in result.notes if note.startswith("kept per group (heads): "))
    assert heads and all(f"{name} {count}/4 (1/2 key/value heads)" in note for name, count in heads.items()), note
    assert "4 of 8 heads" in result.twin.description


@pytest.mark.parametrize("split", ["Split", "Slice"])
def test_a_gated_ffn_packed_in_one_projection_is_named_not_skipped(split):
    """ModernBERT's GeGLU: one up projection of twice the width, split into input and gate (dynamo: Split;
    legacy: two Slices). The walk does not trace the split; the FFN was skipped with only the generic "no
    group" note, where README says an FFN whose walk meets an op it does not trace is named with that op."""
    import numpy as np
    from onnx import numpy_helper

    hidden, inner = 16, 32
    rng = np.random.default_rng(0)
    init = {
        "wi": rng.standard_normal((hidden, 2 * inner)).astype(np.float32),
        "wo": rng.standard_normal((inner, hidden)).astype(np.float32),
    }
    if split == "Split":
        init["sizes"] = np.array([inner, inner], np.int64)
        halves = [helper.make_node("Split", ["u", "sizes"], ["a", "g"], axis=-1, name="chunk")]
    else:
        init.update(
            zero=np.array([0], np.int64), mid=np.array([inner], np.int64), end=np.array([2 * inner], np.int64),
            last=np.array([-1], np.int64),
        )  # fmt: skip
        halves = [
            helper.make_node("Slice", ["u", "zero", "mid", "last"], ["a"], name="chunk"),
            helper.make_node("Slice", ["u", "mid", "end", "last"], ["g"], name="chunk_gate"),
        ]
    nodes = [
        helper.make_node("MatMul", ["x", "wi"], ["u"], name="wi"),
        *halves,
        helper.make_node("Gelu", ["a"], ["act"], name="gelu"),
        helper.make_node("Mul", ["act", "g"], ["h"], name="gated"),
        helper.make_node("MatMul", ["h", "wo"], ["y"], name="wo"),
    ]
    graph = helper.make_graph(
        nodes,
        "geglu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", hidden])],
        [numpy_helper.from_array(array, name) for name, array in init.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9))
    from passes.pruning.ffn import FfnPruningPass

    result = FfnPruningPass(0.5)(model)
    assert not result.modified
    assert any(r.startswith(f"wo left whole: {split} (chunk") and "is not traced" in r for r in result.refusals), (
        result.refusals,
        result.notes,
    )

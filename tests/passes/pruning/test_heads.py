"""prune-heads: heads of fused Attention/MultiHeadAttention cut with their projections and num_heads."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from passes.pruning.heads import HeadPruningPass, head_groups
from tests.helpers import assert_same_outputs
from tests.passes.pruning.graphs import feeds, multi_head_attention, packed_attention
from tests.passes.pruning.twins import assert_matches_twin
from tests.passes.quantization.conftest import drift


def test_removing_a_zero_head_of_packed_attention_leaves_outputs_unchanged():
    model = packed_attention(dead=(2,))
    pruning = HeadPruningPass(0.25)
    after = pruning(model.clone()).model
    attention = after.graph.node("attention")
    assert attention.attributes.get_int("num_heads") == 3
    assert attention.inputs[1].const_value.shape == (16, 36)
    assert attention.inputs[2].const_value.shape == (36,)
    assert after.graph.node("out_proj").inputs[1].const_value.shape == (12, 16)
    inputs = feeds(model)
    inputs["mask"][-1, 4:] = 0  # padding still works
    assert_same_outputs(model, after, inputs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rotary", [True, False])
def test_multi_head_attention_with_rotary_embeddings(rotary):
    model = multi_head_attention(dead=(0, 3), rotary=rotary)
    pruning = HeadPruningPass(0.5)
    after = pruning(model.clone()).model
    assert after.graph.node("mha").attributes.get_int("num_heads") == 2
    if rotary:
        assert after.graph.node("q_rotary").attributes.get_int("num_heads") == 2
        assert after.graph.node("k_rotary").attributes.get_int("num_heads") == 2
    for name in ("q_proj", "k_proj", "v_proj"):
        assert after.graph.node(name).inputs[1].const_value.shape == (16, 8)
    assert_same_outputs(model, after, feeds(model), rtol=1e-5, atol=1e-6)


def test_an_unrecognized_head_repetition_is_left_whole():
    # K/V heads repeated by a Concat, not the exporters' Reshape/Expand repeat_kv.
    model = multi_head_attention(kv_heads=2, rotary=False)
    groups, refused = head_groups(model.graph)
    assert groups == [] and "mha" in refused
    pruning = HeadPruningPass(0.5)
    result = pruning(model)
    assert not result.modified
    assert result.refusals[0].startswith("mha left whole:")


def test_repair_after_removing_live_heads():
    model = packed_attention()
    calibration, held_out = feeds(model, 64, 8, seed=1), feeds(model, 16, 8, seed=2)
    plain = HeadPruningPass(0.5, samples=calibration, repair=False)(model.clone()).model
    repaired = HeadPruningPass(0.5, samples=calibration)(model.clone()).model
    assert drift(model, repaired, held_out).cosine > drift(model, plain, held_out).cosine


def test_output_projection_behind_width_last_reshapes():
    """GPT-2 legacy: Attention → Reshape to [B*S, hidden] (Concat-built target) → Gemm."""
    import onnx_ir as ir

    from optimizer.api import optimize
    from tests.helpers import FIXTURES, run

    model = optimize(ir.load(FIXTURES / "gpt2_legacy.onnx"), verify=False)
    groups, _ = head_groups(model.graph)
    assert len(groups) == 2 and all(g.consumer.op_type == "Gemm" and g.shape_constants for g in groups)
    after = HeadPruningPass(0.25)(model.clone()).model
    assert {n.attributes.get_int("num_heads") for n in after.graph if n.op_type == "Attention"} == {3}
    inputs = {"input_ids": np.ones((2, 5), np.int64), "attention_mask": np.ones((2, 5), np.int64)}
    assert run(after, inputs)["last_hidden_state"].shape == (2, 5, 64)


def test_grouped_query_attention_prunes_a_key_value_head_with_its_query_group():
    """Llama dynamo (4 query heads sharing 2 key/value heads, repeated as exported): zero out
    key/value head 1 and the query heads 2-3 that read it, then prune half: nothing changes."""
    import onnx_ir as ir

    from optimizer.api import optimize
    from passes._utils import add_initializer, constant_array
    from tests.helpers import FIXTURES

    model = optimize(ir.load(FIXTURES / "llama_dynamo.onnx"), verify=False)
    groups, _ = head_groups(model.graph)
    assert len(groups) == 2 and all(g.size == 2 and g.unit == 32 for g in groups)
    for group in groups:
        query, key, value = (cut.node for cut in group.producers)
        for node, columns in ((query, slice(32, 64)), (key, slice(16, 32)), (value, slice(16, 32))):
            weight = constant_array(node.inputs[1]).copy()
            weight[:, columns] = 0.0
            node.replace_input_with(1, add_initializer(model.graph, f"{node.name}.zeroed", weight))
        rows = constant_array(group.consumer.inputs[1]).copy()
        rows[32:64] = 0.0
        group.consumer.replace_input_with(1, add_initializer(model.graph, f"{group.consumer.name}.zeroed", rows))
    pruning = HeadPruningPass(0.5)
    after = pruning(model.clone()).model
    assert set(pruning.pruned.values()) == {(1, 2)}
    assert [n.attributes.get_int("num_heads") for n in after.graph if n.op_type == "MultiHeadAttention"] == [2, 2]
    rotary_heads = sorted(n.attributes.get_int("num_heads") for n in after.graph if n.op_type == "RotaryEmbedding")
    assert rotary_heads == [1, 1, 2, 2]  # key (1 kv head) and query (2 heads) per layer
    rng = np.random.default_rng(0)
    inputs = {"input_ids": rng.integers(0, 100, (2, 7)), "attention_mask": np.ones((2, 7), np.int64)}
    inputs["attention_mask"][1, 5:] = 0
    assert_same_outputs(model, after, inputs, rtol=1e-5, atol=1e-5)


def test_packed_attention_computes_its_twin_and_a_swap_of_two_heads_does_not():
    """Repaired, with padding: the result is the input with two heads' output rows zeroed and the
    re-fitted rows in place; swapping two kept heads' output rows is told apart."""
    from passes._utils import constant_array
    from tests.passes.pruning.twins import assert_differs_from_twin, assert_matches_twin, replace_weight

    model = packed_attention()
    result = HeadPruningPass(0.5, samples=feeds(model, 32, 8, seed=1))(model.clone())
    padded = feeds(model, seed=4)
    padded["mask"][-1, 3:] = 0
    held_out = padded, feeds(model, 2, 9, seed=5)
    assert_matches_twin(result, *held_out)
    assert result.twin.description == (
        "the input with 2 of 4 heads zeroed in the output projections' rows, repaired weights and biases in place"
    )
    twin = result.twin.model.graph
    assert twin.node("attention").attributes.get_int("num_heads") == 4
    rows = constant_array(twin.node("out_proj").inputs[1])
    assert [bool(np.abs(rows[h * 4 : (h + 1) * 4]).sum() == 0) for h in range(4)].count(True) == 2

    def swap_heads(weight):
        return np.concatenate([weight[4:8], weight[0:4]])

    assert_differs_from_twin(replace_weight(result.model, "out_proj", swap_heads), result, *held_out)


@pytest.mark.parametrize("rotary", [True, False])
def test_multi_head_attention_computes_its_twin(rotary):
    from tests.passes.pruning.twins import assert_differs_from_twin, assert_matches_twin, replace_weight

    model = multi_head_attention(rotary=rotary)
    result = HeadPruningPass(0.25)(model.clone())
    held_out = feeds(model, seed=4), feeds(model, 2, 9, seed=5)
    assert_matches_twin(result, *held_out)

    def zero_a_kept_head(weight):
        weight[:4] = 0.0
        return weight

    assert_differs_from_twin(replace_weight(result.model, "out_proj", zero_a_kept_head), result, *held_out)


def test_grouped_query_attention_computes_its_twin():
    """Llama dynamo (2 key/value heads for 4 query heads), live weights, repaired: a unit is a key/value
    head with its two query heads, 32 rows of the output projection."""
    import onnx_ir as ir

    from optimizer.api import optimize
    from optimizer.inputs import make_inputs
    from passes._utils import constant_array
    from tests.helpers import FIXTURES, calibration_samples
    from tests.passes.pruning.twins import assert_differs_from_twin, assert_matches_twin, replace_weight

    model = optimize(ir.load(FIXTURES / "llama_dynamo.onnx"), verify=False)
    pruning = HeadPruningPass(0.5, samples=calibration_samples(model, 8))
    result = pruning(model.clone())
    assert set(pruning.pruned.values()) == {(1, 2)}
    assert result.twin.description.startswith("the input with 4 of 8 heads zeroed in the output projections' rows")
    held_out = make_inputs(model, {"batch": 2, "sequence": 7}, seed=4), make_inputs(model, {"batch": 1}, seed=5)
    assert_matches_twin(result, *held_out)
    consumers = [g.consumer.name for g in head_groups(model.graph)[0]]
    for name in consumers:
        rows = constant_array(result.twin.model.graph.node(name).inputs[1])
        assert rows.shape[0] == 64 and int((np.abs(rows).sum(axis=1) == 0).sum()) == 32

    def swap_query_heads(weight):
        return np.concatenate([weight[16:32], weight[0:16]])  # the two query heads of the kept unit

    wrong = replace_weight(result.model, consumers[0], swap_query_heads)
    assert_differs_from_twin(wrong, result, *held_out)


@pytest.mark.parametrize(("start", "end", "cut"), [(-1, None, False), (0, 2, True)])
def test_a_shape_reader_of_the_attention_output_is_let_through_only_if_it_never_reads_the_width(start, end, cut):
    """``y / sqrt(width)`` with the width read by Shape from the attention output: cutting heads would change the
    width it divides by, which the twin (full width) does not, so the group is left whole with a note. A Shape of
    the batch and sequence dims only computes the same after the cut."""
    model = multi_head_attention(rotary=False)
    graph = model.graph
    output = graph.node("out_proj").outputs[0]
    attention_output = graph.node("mha").outputs[0]
    attention_output.shape = ir.Shape(["B", "S", 16])  # the rank the exporters record
    bounds = [ir.AttrInt64("start", start)] + ([] if end is None else [ir.AttrInt64("end", end)])
    shape = ir.Node("", "Shape", [attention_output], attributes=bounds, name="width_of_attention")
    product = ir.Node("", "ReduceProd", [shape.outputs[0]], attributes=[ir.AttrInt64("keepdims", 0)], name="product")
    cast = ir.Node("", "Cast", [product.outputs[0]], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT)], name="cast")
    root = ir.Node("", "Sqrt", [cast.outputs[0]], name="root")
    scaled = ir.Node("", "Div", [output, root.outputs[0]], name="scaled")
    for node in (shape, product, cast, root, scaled):
        graph.append(node)
    graph.outputs[0] = scaled.outputs[0]
    output.name, scaled.outputs[0].name = "unscaled", "y"
    scaled.outputs[0].type, scaled.outputs[0].shape = output.type, output.shape
    result = HeadPruningPass(0.25)(model.clone())
    assert result.modified == cut, result.refusals
    if cut:
        assert_matches_twin(result, feeds(model))
    else:
        assert result.refusals == [
            "mha left whole: a's width is read by width_of_attention (Shape): the cut would change what it computes"
        ]

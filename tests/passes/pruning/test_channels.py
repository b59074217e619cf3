"""prune-channels: Conv output channels cut through BatchNorm, activations and depthwise Convs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from passes.pruning.channels import ChannelPruningPass, channel_groups
from tests.helpers import assert_same_outputs
from tests.passes.pruning.graphs import convnet, images
from tests.passes.quantization.conftest import drift


@pytest.mark.parametrize("depthwise", [False, True])
def test_removing_zero_channels_leaves_outputs_unchanged(depthwise):
    model = convnet(dead=(2, 5), depthwise=depthwise)
    pruning = ChannelPruningPass(0.25)
    after = pruning(model.clone()).model
    assert pruning.pruned == {"conv2": (6, 8)}
    assert after.graph.node("conv1").inputs[1].const_value.shape == (6, 3, 3, 3)
    assert after.graph.node("bn1").inputs[1].const_value.shape == (6,)
    assert after.graph.node("conv2").inputs[1].const_value.shape == (6, 6, 3, 3)
    if depthwise:
        node = after.graph.node("depthwise")
        assert node.attributes.get_int("group") == 6 and node.inputs[1].const_value.shape == (6, 1, 3, 3)
    assert_same_outputs(model, after, images(), rtol=1e-5, atol=1e-6)


def test_activation_importance_finds_the_zero_channels():
    model = convnet(dead=(0, 7), depthwise=True)
    pruning = ChannelPruningPass(0.25, samples=images(16, seed=1))
    result = pruning(model.clone())
    after = result.model
    assert pruning.importance == "activation" and not any("without repair" in n for n in result.notes)
    assert_same_outputs(model, after, images(seed=2), rtol=1e-5, atol=1e-6)


def test_a_residual_tie_is_left_whole():
    groups, refused = channel_groups(convnet(residual=True).graph)
    assert groups == [] and "residual tie" in refused["conv2"]


def test_live_channels_cost_some_accuracy_but_still_run():
    model = convnet(depthwise=True)
    after = ChannelPruningPass(0.5)(model.clone()).model
    assert 0.3 < drift(model, after, images()).cosine < 1.0


@pytest.mark.parametrize("depthwise", [False, True])
def test_the_result_computes_its_twin(depthwise):
    """Live channels through BatchNorm, Relu (and a depthwise Conv and HardSwish, nonzero at zero):
    the twin zeroes only the next Conv's input filters for them."""
    import numpy as np

    from passes._utils import constant_array
    from tests.passes.pruning.twins import assert_differs_from_twin, assert_matches_twin, replace_weight

    model = convnet(depthwise=depthwise)
    result = ChannelPruningPass(0.5, samples=images(16, seed=1))(model.clone())
    held_out = images(seed=4), images(2, seed=5)
    assert_matches_twin(result, *held_out)
    assert result.twin.description == "the input with 4 of 8 channels zeroed in the next Convs' input filters"
    twin = result.twin.model.graph
    assert constant_array(twin.node("conv1").inputs[1]).shape == (8, 3, 3, 3)
    filters = constant_array(twin.node("conv2").inputs[1])
    assert int((np.abs(filters).sum(axis=(0, 2, 3)) == 0).sum()) == 4

    def zero_a_kept_channel(weight):
        weight[:, 0] = 0.0
        return weight

    assert_differs_from_twin(replace_weight(result.model, "conv2", zero_a_kept_channel), result, *held_out)


def test_inverted_residual_expansion_channels_are_cut_and_residual_ties_refused():
    """1×1 expand → Clip → Pad → depthwise → Clip → 1×1 project, twice, with residual Adds: the
    expansion channels go (dead ones first, outputs unchanged), the block outputs stay, named."""
    from tests.passes.pruning.graphs import inverted_residual

    model = inverted_residual(dead=tuple(range(8)))
    groups, refused = channel_groups(model.graph)
    assert sorted(g.name for g in groups) == ["project0", "project1"]
    assert sorted(refused) == ["expand0", "expand1"]  # the stem's and block 0's outputs feed residual Adds
    assert refused["expand0"].startswith("residual tie: sc is also read by residual0, a residual Add")
    assert refused["expand1"].startswith("residual tie: r0 is also read by residual1, a residual Add")
    pruning = ChannelPruningPass(0.25)
    result = pruning(model.clone())
    after = result.model
    assert pruning.pruned == {"project0": (24, 32), "project1": (24, 32)}
    assert after.graph.node("expand0").inputs[1].const_value.shape == (24, 8, 1, 1)
    assert after.graph.node("expand0").inputs[2].const_value.shape == (24,)
    depthwise = after.graph.node("depthwise0")
    assert depthwise.attributes.get_int("group") == 24 and depthwise.inputs[1].const_value.shape == (24, 1, 3, 3)
    assert after.graph.node("project0").inputs[1].const_value.shape == (8, 24, 1, 1)
    assert after.graph.node("pad0").inputs[1].const_value.numpy().tolist() == [0, 0, 0, 0, 0, 0, 2, 2]
    assert any("expand1 left whole: residual tie" in refusal for refusal in result.refusals)
    assert "2 of 4 candidate groups left whole (see refusals)" in result.notes
    assert any(note.startswith("kept per group (channels): project0 24/32, project1 24/32") for note in result.notes)
    assert_same_outputs(model, after, images(4, seed=3), rtol=1e-5, atol=1e-5)  # only dead channels went


def test_inverted_residual_projection_is_repaired_and_matches_its_twin():
    from tests.passes.pruning.graphs import inverted_residual
    from tests.passes.pruning.twins import assert_matches_twin

    model = inverted_residual()
    rng = np.random.default_rng(1)
    calibration = {"x": rng.standard_normal((16, 3, 12, 12)).astype(np.float32)}
    held_out = {"x": rng.standard_normal((8, 3, 12, 12)).astype(np.float32)}
    plain = ChannelPruningPass(0.5, samples=calibration, repair=False)(model.clone()).model
    result = ChannelPruningPass(0.5, samples=calibration)(model.clone())
    assert any(note.startswith("without repair:") for note in result.notes)
    assert drift(model, result.model, held_out).cosine > drift(model, plain, held_out).cosine
    assert_matches_twin(result, held_out, {"x": held_out["x"][:2]})


def test_a_pad_of_the_channel_axis_is_not_traced():
    from tests.passes.pruning.graphs import inverted_residual

    model = inverted_residual()
    pad = model.graph.node("pad0")
    pad.replace_input_with(1, ir.Value(name="channel_pads", const_value=ir.tensor(np.array([0, 1, 0, 0, 0, 1, 2, 2]))))
    model.graph.initializers["channel_pads"] = pad.inputs[1]
    groups, refused = channel_groups(model.graph)
    assert [g.name for g in groups] == ["project1"]
    assert "pad0: a Pad of the batch or channel axis" in refused["project0"]


def test_wide_conv_groups_keep_a_multiple_of_eight_channels():
    """ONNX Runtime's blocked Conv layout needs channel counts in multiples of 8: a cut to 45 of
    64 channels ran slower than no cut, so the kept count is rounded to a multiple of 8."""
    from tests.passes.pruning.graphs import inverted_residual

    model = inverted_residual(expand=8)  # 64 expansion channels per block
    rng = np.random.default_rng(1)
    calibration = {"x": rng.standard_normal((16, 3, 12, 12)).astype(np.float32)}
    pruning = ChannelPruningPass(0.3, samples=calibration, ranking="global", repair=False)
    pruning(model.clone())
    assert pruning.pruned and all(kept % 8 == 0 for kept, _ in pruning.pruned.values())

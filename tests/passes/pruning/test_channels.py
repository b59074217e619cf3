"""prune-channels: Conv output channels cut through BatchNorm, activations and depthwise Convs."""

from __future__ import annotations

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

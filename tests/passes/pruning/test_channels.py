"""prune-channels: Conv output channels cut through BatchNorm, activations and depthwise Convs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from passes.pruning.channels import ChannelPruningPass, channel_groups
from tests.helpers import assert_same_outputs
from tests.passes.pruning.graphs import convnet, images
from tests.passes.pruning.twins import assert_matches_twin
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
    assert result.twin.description == (
        "the input with 4 of 8 channels zeroed in the next layers' weights (Conv input filters, classifier rows)"
    )
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


def test_narrow_conv_groups_keep_a_multiple_of_the_block_or_their_width():
    """A count off a multiple of 4 is slow (a 1x1 Conv 32 -> 13 -> 96 ran 1.47x the time of 16 channels), and one
    off the NCHWc block runs as the block above it (12 as fast as 16, 8 in 0.81 of it; AVX2,
    benchmarks/conv_channel_counts.py): a 16-wide group keeps 8 or all 16, never the 12 ONNX Runtime pads back."""
    from tests.passes.pruning.graphs import inverted_residual

    model = inverted_residual(expand=2)  # 16 expansion channels per block: 20 % would keep 13, 40 % 10
    rng = np.random.default_rng(1)
    calibration = {"x": rng.standard_normal((16, 3, 12, 12)).astype(np.float32)}
    pruning = ChannelPruningPass(0.2, samples=calibration, repair=False)
    pruning(model.clone())
    assert pruning.pruned == {}
    pruning = ChannelPruningPass(0.4, samples=calibration, repair=False)
    pruning(model.clone())
    assert pruning.pruned and all(size == 16 and kept == 8 for kept, size in pruning.pruned.values())


@pytest.mark.parametrize(
    ("width", "multiple", "expected"),
    [(8, None, 2), (12, 8, 8), (16, 8, 8), (28, 8, 16), (32, 8, 16), (36, 8, 16), (40, 8, 16), (1050, None, 523)],
)
def test_the_kept_count_is_a_multiple_of_the_block_for_groups_wider_than_one(width, multiple, expected):
    """With the block of 8 (the suite's pin): half the width less 2 kept, rounded to the nearer multiple of 8 (a tie,
    28 keeping 12, keeps 16); a group of one block or less, or of a width off 4, is left unrounded."""
    from passes.pruning._base import _aligned, _alignment
    from passes.pruning._groups import ChannelGroup

    group = ChannelGroup("channels", "g", width, 1, None, channel_axis=1)
    assert _alignment(group) == multiple
    scores = np.arange(width, dtype=np.float64)
    kept = list(range(width // 2 + 2, width))
    assert len(_aligned(group, kept, scores)) == expected
    if multiple:  # 2 short of the width: the width itself is nearer (or a tie) than the multiple below it
        assert len(_aligned(group, list(range(2, width)), scores)) == width


@pytest.mark.parametrize(
    ("pooling", "flatten"),
    [("GlobalAveragePool", "Flatten"), ("ReduceMean", "Reshape"), ("GlobalAveragePool", "ReshapeBatch")],
)
def test_classifier_head_channels_are_cut_with_the_gemm_rows(monkeypatch, pooling, flatten):
    """The 1×1 head Conv's channels reach the Gemm through a global pooling and a Flatten/Reshape:
    they are one group, cut in the Conv's filters and bias and the Gemm's weight rows; dead ones go first."""
    import passes.pruning._base as base
    from tests.passes.pruning.graphs import classifier_head, head_images

    monkeypatch.setattr(base, "CHANNEL_MULTIPLE", 4)  # the stem's 16 cut to 12 (the block of 8 keeps 8 or 16)

    model = classifier_head(dead=tuple(range(0, 32, 4)), pooling=pooling, flatten=flatten)
    groups, refused = channel_groups(model.graph)
    assert sorted(g.name for g in groups) == ["classifier", "head"] and not refused
    pruning = ChannelPruningPass(0.25)
    after = pruning(model.clone()).model
    assert pruning.pruned == {"classifier": (24, 32), "head": (12, 16)}
    assert after.graph.node("head").inputs[1].const_value.shape == (24, 12, 1, 1)
    assert after.graph.node("classifier").inputs[1].const_value.shape == (10, 24)
    target = after.graph.node("flatten").inputs[1] if flatten != "Flatten" else None
    if flatten == "Reshape":
        assert target.const_value.numpy().tolist() == [-1, 24]
    count = 1 if flatten == "ReshapeBatch" else 4
    only_dead = ChannelPruningPass(0.25)
    only_dead.find_groups = lambda graph: ([g for g in channel_groups(graph)[0] if g.name == "classifier"], {})
    head_only = only_dead(model.clone()).model
    assert_same_outputs(model, head_only, head_images(count, seed=3), rtol=1e-5, atol=1e-5)
    assert_same_outputs(model, head_only, head_images(count, seed=4), rtol=1e-5, atol=1e-5)
    assert 0.5 < drift(model, after, head_images(count, seed=3)).cosine < 1.0


@pytest.mark.parametrize(("pooling", "flatten"), [("ReduceMeanChannels", "Flatten"), ("GlobalAveragePool", "Spatial")])
def test_a_classifier_without_a_global_pooling_over_h_and_w_is_not_a_group(pooling, flatten):
    """A mean over the channels, or a flattened feature map (channels mixed with positions), is not a group."""
    from tests.passes.pruning.graphs import classifier_head

    groups, refused = channel_groups(classifier_head(pooling=pooling, flatten=flatten).graph)
    assert [g.name for g in groups] == ["head"] and not refused


def test_the_classifier_is_repaired_on_pooled_rows_and_matches_its_twin():
    from tests.passes.pruning.graphs import classifier_head, head_images
    from tests.passes.pruning.twins import assert_matches_twin

    model = classifier_head()
    calibration, held_out = head_images(64, seed=1), head_images(32, seed=2)
    plain = ChannelPruningPass(0.4, samples=calibration, repair=False)(model.clone()).model
    result = ChannelPruningPass(0.4, samples=calibration)(model.clone())
    assert result.model.graph.node("classifier").inputs[1].const_value.shape == (10, 24)  # 20 of 32: a tie, 24
    assert drift(model, result.model, held_out).cosine > drift(model, plain, held_out).cosine
    assert_matches_twin(result, held_out, head_images(2, seed=5))


def test_unit_costs_count_parameters_and_multiply_adds():
    """A head channel: 16 filter weights + 1 bias + 10 Gemm weights = 27 parameters; 16 multiply-adds at
    each of 4×4 positions plus 10 in the Gemm = 266. A stem channel: 27 + 1 + 32 parameters; 27 at
    4×4 positions and 32 at the head Conv's 4×4 = 944 multiply-adds."""
    from tests.passes.pruning.graphs import classifier_head

    model = classifier_head()
    groups = {g.name: g for g in channel_groups(model.graph)[0]}
    assert ChannelPruningPass(0.2).unit_cost(groups["head"]) is None
    assert ChannelPruningPass(0.2, cost="parameters").unit_cost(groups["classifier"]) == 27
    assert ChannelPruningPass(0.2, cost="macs").unit_cost(groups["classifier"]) == 266
    assert ChannelPruningPass(0.2, cost="parameters").unit_cost(groups["head"]) == 60
    assert ChannelPruningPass(0.2, cost="macs").unit_cost(groups["head"]) == 944
    with pytest.raises(ValueError, match="unknown channel cost"):
        ChannelPruningPass(0.2, cost="flops")


def test_a_global_cut_by_multiply_adds_removes_that_share_of_them(monkeypatch):
    """With ``cost="macs"`` the ratio is a share of the groups' multiply-adds, not of their channels: the
    stem's channels (944 each) and the head's (266) are weighed by effect per multiply-add."""
    import passes.pruning._base as base
    from tests.passes.pruning.graphs import classifier_head, head_images

    monkeypatch.setattr(base, "CHANNEL_MULTIPLE", 1)  # exact counts: no rounding to NCHWc blocks
    monkeypatch.setattr(base, "NARROW_CHANNEL_MULTIPLE", 1)
    model = classifier_head()
    calibration = head_images(16, seed=1)
    costs = {"head": 944, "classifier": 266}
    total = sum(costs[g.name] * g.size for g in channel_groups(model.graph)[0])
    removed = {}
    for cost in ("channels", "macs"):
        pruning = ChannelPruningPass(0.4, samples=calibration, ranking="global", repair=False, cost=cost)
        pruning(model.clone())
        removed[cost] = sum((size - kept) * costs[name] for name, (kept, size) in pruning.pruned.items()) / total
        channels = sum(size - kept for kept, size in pruning.pruned.values())
        if cost == "channels":
            assert channels == int(0.4 * 48)
    assert 0.4 <= removed["macs"] < 0.4 + 944 / total and removed["macs"] != removed["channels"]


def test_excluded_consumers_leave_their_groups_whole():
    """``exclude=["Conv"]`` leaves every group a Conv reads whole and cuts only the classifier head's."""
    from tests.passes.pruning.graphs import classifier_head

    pruning = ChannelPruningPass(0.25, exclude=["Conv"])
    result = pruning(classifier_head())
    assert pruning.pruned == {"classifier": (24, 32)}
    assert "head left whole: excluded: its consumer head (Conv) matches 'Conv'" in result.refusals
    by_name = ChannelPruningPass(0.5, exclude=["class*"])  # 0.25 would keep 12 of 16, rounded back to 16
    by_name(classifier_head())
    assert by_name.pruned == {"head": (8, 16)}


def test_multiply_adds_without_declared_shapes_fall_back_to_channel_counts():
    from tests.passes.pruning.graphs import classifier_head, head_images

    model = classifier_head()
    for node in model.graph:
        for output in node.outputs:
            if not output.is_graph_output():
                output.shape = None
    pruning = ChannelPruningPass(0.25, samples=head_images(8, seed=1), ranking="global", cost="macs", repair=False)
    result = pruning(model)
    assert any(note.startswith("cost macs: ") and "ranked by channel counts" in note for note in result.notes)
    assert sum(size - kept for kept, size in pruning.pruned.values()) >= 8


def test_a_residual_blocks_refit_also_absorbs_the_drift_of_its_skip_path(monkeypatch):
    """Block 1's skip is block 0's output, which block 0's cut moved (left unrepaired here, as a cut whose
    consumer is no 1×1 Conv would be): block 1's projection is fitted toward the original residual sum
    less what the skip now carries, so it makes up for part of both cuts."""
    from passes.pruning import _base
    from tests.passes.pruning.graphs import inverted_residual
    from tests.passes.pruning.twins import assert_matches_twin

    model = inverted_residual()
    project0, project1 = (model.graph.node(name) for name in ("project0", "project1"))
    assert _base._residual_skip(project0).name == "sc" and _base._residual_skip(project1).name == "r0"
    refittable = _base._refittable
    monkeypatch.setattr(_base, "_refittable", lambda consumer: refittable(consumer) and consumer.name != "project0")
    rng = np.random.default_rng(7)
    calibration = {"x": rng.standard_normal((48, 3, 12, 12)).astype(np.float32)}
    held_out = {"x": rng.standard_normal((16, 3, 12, 12)).astype(np.float32)}
    result = ChannelPruningPass(0.5, samples=calibration)(model.clone())
    monkeypatch.setattr(_base, "_residual_skip", lambda consumer: None)
    projection_only = ChannelPruningPass(0.5, samples=calibration)(model.clone()).model
    with_skip, without = drift(model, result.model, held_out), drift(model, projection_only, held_out)
    assert 1 - with_skip.cosine < 0.9 * (1 - without.cosine)  # 0.0120 against 0.0144
    assert_matches_twin(result, held_out, {"x": held_out["x"][:2]})


def test_only_an_add_of_a_computed_value_after_the_bias_is_a_residual_skip():
    from passes.pruning._base import _residual_skip
    from tests.passes.pruning.graphs import attention_ffn, ffn_stack

    graph = attention_ffn().graph
    assert _residual_skip(graph.node("out_proj0")) is None  # x, a graph input, does not drift
    assert _residual_skip(graph.node("out_proj1")).name == "f0"
    assert _residual_skip(graph.node("down_proj1")).name == "r1"
    stack = ffn_stack().graph
    assert _residual_skip(stack.node("down_proj1")) is None  # a Mul by the block's scale comes between
    assert _residual_skip(stack.node("up_proj0")) is None  # its bias Add feeds a Relu


def test_a_skip_that_broadcasts_keeps_the_old_target():
    """Only a skip of the consumer's shape (but for channels) is taken row for row: a ``[1, C, H, W]`` skip of
    a batch of two would line up with the rows by count alone where the positions are subsampled."""
    from passes.pruning._base import _skip_rows

    inputs = np.ones((2, 6, 4, 4), np.float32)
    same = np.arange(2 * 3 * 16, dtype=np.float32).reshape(2, 3, 4, 4)
    rows = _skip_rows({}, same, inputs, 1, (32, 3))
    assert np.array_equal(rows, np.moveaxis(same, 1, -1).reshape(-1, 3))
    assert not _skip_rows({}, same[:1], inputs, 1, (32, 3)).any()
    assert not _skip_rows({}, same[..., :1], inputs, 1, (32, 3)).any()


def _pointwise_chain(*, tied: bool = False) -> ir.Model:
    """``x [B, 3, 12, 12]`` → conv0 (3×3, 8 ch) → Relu → conv1 (1×1, 8 ch) → Relu → conv2 (1×1) → ``y``, no biases.

    ``tied``: conv1 and conv2 read one weight (8 → 8), as a model sharing a layer's weights does.
    """
    from onnx import TensorProto, helper

    from tests.passes.pruning.graphs import _model
    from tests.passes.quantization.graphs import weights

    nodes = [
        helper.make_node("Conv", ["x", "c0"], ["y0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "c1"], ["y1"], name="conv1"),
        helper.make_node("Relu", ["y1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c1" if tied else "c2"], ["y"], name="conv2"),
    ]
    init = [("c0", weights(8, 3, 3, 3, seed=1, scale=0.3)), ("c1", weights(8, 8, 1, 1, seed=2, scale=0.3))]
    if not tied:
        init.append(("c2", weights(6, 8, 1, 1, seed=3, scale=0.3)))
    out = 8 if tied else 6
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 12, 12])]
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", out, 12, 12])], init)


def test_a_bias_the_repair_gives_a_conv_is_cut_with_the_channels_it_produces():
    """conv1 has no bias: its repair gives it one (8 channels) before conv2's group cuts conv1's output channels,
    which must cut that bias too (ONNX Runtime refused the full-width B on the narrower filters)."""
    model = _pointwise_chain()
    result = ChannelPruningPass(0.25, samples=images(16, seed=1))(model.clone())
    assert result.modified and any("after repair" in note for note in result.notes), result.notes
    conv1 = result.model.graph.node("conv1")
    assert conv1.inputs[1].const_value.shape == (6, 6, 1, 1) and conv1.inputs[2].const_value.shape == (6,)
    assert_matches_twin(result, images(seed=2))


def test_a_conv_weight_shared_by_two_layers_is_left_whole():
    """conv1 and conv2 share their weight: cutting conv2's input channels and conv1's output channels would store
    pruned copies beside it (the model grows), so both groups are refused."""
    groups, refused = channel_groups(_pointwise_chain(tied=True).graph)
    assert groups == []
    assert "its weight c1 is also read by 1 other node(s) (shared by several layers)" in refused["conv1"]
    assert "its weight c1 is read by 2 of the layers it cuts (tied between them)" in refused["conv2"]

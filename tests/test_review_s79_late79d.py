"""Review s79 late79d: the AVX-512 rounding of Conv channel groups (``passes/pruning/_base.py``: ``_counts``,
``_aligned``) under the global ranking, end to end after reviews s79 xblk, late79b and xnarrow.

A 16-wide group a depthwise Conv (or a Gemm) reads keeps all 16 at any ratio on AVX-512. The global ranking still
pooled its channels with the others': the channels it chose there were rounded back, so that share of the ratio was
cut nowhere (0.5 of a 16-wide such group and an 8-wide group removed 3 channels, not the 8-wide group's 4), and it
ran a trial cut of the group (a model clone and an ONNX Runtime session on the calibration samples) to measure an
effect no cut would use.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.pruning._groups import ChannelGroup
from passes.pruning.channels import ChannelPruningPass


@pytest.fixture(scope="module")
def calibration():
    return {"x": np.random.default_rng(1).standard_normal((8, 3, 12, 12)).astype(np.float32)}


def _model(depthwise: bool = True) -> ir.Model:
    """``x [B, 3, 12, 12]`` → 3×3 Conv (16) → Relu → 3×3 depthwise Conv → Relu → 1×1 Conv ``conv2`` (8) → Relu →
    1×1 Conv ``conv3`` (4): group ``conv2`` (16 through the depthwise Conv, kept whole on AVX-512) and group
    ``conv3`` (8 a 1×1 Conv reads, cut to any count). Without ``depthwise`` the 16 channels go straight to
    ``conv2``: group ``conv2`` then keeps 4 or 16 (a 1×1 Conv reads it), as EfficientNet-Lite0's ``node_Conv_801``."""
    rng = np.random.default_rng(3)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    init = {"w1": weight(16, 3, 3, 3), "dw": weight(16, 1, 3, 3), "w2": weight(8, 16, 1, 1), "w3": weight(4, 8, 1, 1)}
    if not depthwise:
        del init["dw"]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        *(
            [
                helper.make_node("Conv", ["r", "dw"], ["d"], name="depthwise", pads=[1, 1, 1, 1], group=16),
                helper.make_node("Relu", ["d"], ["dr"], name="relu_depthwise"),
            ]
            if depthwise
            else []
        ),
        helper.make_node("Conv", ["dr" if depthwise else "r", "w2"], ["h2"], name="conv2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(array, name) for name, array in init.items()],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


@pytest.mark.parametrize("cost", ["channels", "macs"])
def test_on_avx512_the_global_ranking_cuts_its_ratio_where_a_cut_is_kept(avx512, calibration, cost):
    """0.5 of the 8 channels a cut can reach is 4 (the layer ranking cuts conv3 to 4/8 too); pooled with the 16 kept
    whole, the ranking spent most of the ratio there and conv3 kept 5 (channels and macs alike)."""
    layer = ChannelPruningPass(0.5, samples=calibration, repair=False, cost=cost)
    layer(_model())
    pruning = ChannelPruningPass(0.5, samples=calibration, repair=False, ranking="global", cost=cost)
    pruning(_model())
    assert pruning.pruned == layer.pruned == {"conv3": (4, 8)}, (pruning.pruned, layer.pruned)


def test_on_avx512_the_global_ranking_runs_no_trial_cut_of_a_group_kept_whole(avx512, calibration, monkeypatch):
    """The gain of each group is measured by a trial cut run on ONNX Runtime; conv2 keeps all 16 at any ratio, so
    its trial (a clone and a session) measured what nothing reads."""
    applied = []
    apply = ChannelGroup.apply

    def recording(self, graph, kept):
        applied.append(self.name)
        return apply(self, graph, kept)

    monkeypatch.setattr(ChannelGroup, "apply", recording)
    pruning = ChannelPruningPass(0.5, samples=calibration, repair=False, ranking="global")
    pruning(_model())
    assert "conv3" in applied and "conv2" not in applied, applied


@pytest.mark.parametrize(
    ("depthwise", "why"),
    [(False, "4 or all 16 where a 1×1 Conv reads it"), (True, "all 16 where a depthwise Conv reads it")],
)
def test_on_avx512_a_16_wide_group_rounded_back_from_12_says_why(avx512, calibration, depthwise, why):
    """0.25 asks 12 of 16, a multiple of 4; the note said "kept as multiples of 4 … rounded back to the whole width:
    conv2 12/16 → 16/16" and not which counts a group of one block keeps (EfficientNet-Lite0's node_Conv_801)."""
    pruning = ChannelPruningPass(0.25, samples=calibration, repair=False)
    result = pruning(_model(depthwise))
    assert pruning.pruned == {"conv3": (6, 8)}, pruning.pruned
    note = next(line for line in result.notes if "rounded back to the whole width" in line)
    assert "conv2 12/16 → 16/16 (of one block of 16 only counts that ran faster than 16 are kept: " + why in note, note

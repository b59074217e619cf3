"""Review s58 (encoder fusions): fuse-embed-layer-norm left a LayerNormalization over summed embedding lookups
without a word where its docstring says it refuses them: CLIP's text embeddings (token + position), whose sum is
also the first residual, were left as they were with no refusal in the report, and so was a sum of four lookups or
one normalized without a constant scale. A LayerNormalization over a residual sum is still no candidate."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.embed_layer_norm import _SUM_USED, EmbedLayerNormFusion

VOCAB, POSITIONS, HIDDEN = 20, 16, 8


def _model(form: str) -> ir.Model:
    """word[input_ids] + position[0..S-1] (+ extra lookups), LayerNorm, then the form's twist."""
    rng = np.random.default_rng(0)
    weights = {
        "word": rng.standard_normal((VOCAB, HIDDEN)),
        "position": rng.standard_normal((POSITIONS, HIDDEN)),
        "extra": rng.standard_normal((3, HIDDEN)),
        "gamma": rng.uniform(0.5, 1.5, HIDDEN),
        "beta": rng.standard_normal(HIDDEN),
    }
    initializers = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()]
    ints = {"buffer": np.arange(POSITIONS).reshape(1, -1), "zero": [0], "one": [1], "two": [2]}
    initializers += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    n = helper.make_node
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"])]
    nodes = [
        n("Shape", ["input_ids"], ["ids_shape"]),
        n("Slice", ["ids_shape", "one", "two"], ["seq"]),
        n("Slice", ["buffer", "zero", "seq", "one"], ["position_ids"]),
        n("Gather", ["word", "input_ids"], ["w"]),
        n("Gather", ["position", "position_ids"], ["p"]),
        n("Add", ["w", "p"], ["total"]),
    ]
    if form == "four lookups":
        for name in ("segment_ids", "lang_ids"):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["B", "S"]))
        nodes += [
            n("Gather", ["extra", "segment_ids"], ["s"]),
            n("Gather", ["extra", "lang_ids"], ["l"]),
            n("Add", ["total", "s"], ["ts"]),
            n("Add", ["ts", "l"], ["tsl"]),
        ]
        normed = "tsl"
    else:
        normed = "total"
    scale = "gamma"
    if form == "scale computed":
        nodes.append(n("Abs", ["gamma"], ["gamma_abs"]))
        scale = "gamma_abs"
    nodes.append(n("LayerNormalization", [normed, scale, "beta"], ["y"], axis=-1, epsilon=1e-5))
    output = "y"
    if form in ("sum used", "residual"):  # CLIP: the embeddings' sum is the first residual
        nodes.append(n("Add", ["total", "y"], ["r"]))
        output = "r"
    if form == "residual":  # and the next LayerNormalization reads that residual sum: no candidate
        nodes.append(n("LayerNormalization", ["r", "gamma", "beta"], ["r_norm"], axis=-1, epsilon=1e-5))
        output = "r_norm"
    outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["B", "S", HIDDEN])]
    graph = helper.make_graph(nodes, "embeddings", inputs, outputs, initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ("sum used", "the sum of the lookups has other users"),
        ("four lookups", "4 lookups are summed"),
        ("scale computed", "the LayerNormalization is not over the last axis with a constant float32 scale"),
    ],
)
def test_a_norm_over_summed_lookups_left_unfused_says_why(form, reason):
    result = EmbedLayerNormFusion()(_model(form))
    assert not result.modified
    assert len(result.refusals) == 1
    assert result.refusals[0].startswith("1 of 1 LayerNormalization over embeddings left unfused: " + reason)


def test_a_norm_over_a_residual_sum_is_no_candidate():
    result = EmbedLayerNormFusion()(_model("residual"))
    assert not result.modified
    # The first norm (over the embeddings, whose sum is the residual) is refused; the second is not counted.
    assert result.refusals == ["1 of 1 LayerNormalization over embeddings left unfused: " + _SUM_USED]


def test_the_plain_embedding_sum_still_fuses():
    result = EmbedLayerNormFusion()(_model("plain"))
    assert result.modified and not result.refusals

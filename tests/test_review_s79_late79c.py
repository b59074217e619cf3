"""Review s79 (late 79c): fuse-softmax's spellings and axes after tf2onnx's transposed softmax and the refusal of a
softmax over another axis than the last.

A softmax whose input's rank is recorded nowhere (it comes out of a ``Gather``, which ``rank`` does not trace) is
fused once ONNX shape inference gives the rank (``fuse_with_inferred_shapes``). Where its max and its sum name the one
axis in two spellings (``-1`` beside ``3``, ``-3`` beside ``1``), the two were called "different axes" before the
rank was known, and the softmax was left unfused with that reason though the retry would have matched it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.softmax import SoftmaxFusion
from tests.helpers import assert_same_outputs, op_types

_SHAPE = [2, 3, 4, 5]


def _softmax_of_unranked_logits(max_axis: int, sum_axis: int, transposed: bool) -> ir.Model:
    """``Exp(x - ReduceMax(x, [max_axis])) / ReduceSum(..., [sum_axis])`` (opset 13) on ``x = Gather(logits, ids)``,
    whose rank only shape inference gives; ``transposed``: tf2onnx's ``Transpose(e, [0, 2, 3, 1]) / Reshape(sum)``."""
    nodes = [
        helper.make_node("Gather", ["logits", "ids"], ["x"], axis=0),
        helper.make_node("ReduceMax", ["x"], ["peak"], axes=[max_axis], keepdims=1),
        helper.make_node("Sub", ["x", "peak"], ["shifted"]),
        helper.make_node("Exp", ["shifted"], ["e"]),
        helper.make_node("ReduceSum", ["e", "sum_axes"], ["total"], keepdims=1),
    ]
    if transposed:
        nodes += [
            helper.make_node("Transpose", ["e"], ["moved"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", ["total", "target"], ["laid"]),
            helper.make_node("Div", ["moved", "laid"], ["y"]),
        ]
    else:
        nodes.append(helper.make_node("Div", ["e", "total"], ["y"]))
    weights = [
        numpy_helper.from_array(np.arange(_SHAPE[0], dtype=np.int64), "ids"),
        numpy_helper.from_array(np.array([sum_axis], np.int64), "sum_axes"),
        numpy_helper.from_array(np.array([-1, 4, 5, 1], np.int64), "target"),
    ]
    graph = helper.make_graph(
        nodes,
        "unranked_softmax",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, _SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        weights,
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


@pytest.mark.parametrize(
    ("max_axis", "sum_axis", "transposed"),
    [(3, 3, False), (-1, 3, False), (3, -1, False), (-3, 1, True)],
    ids=["one spelling", "max -1, sum 3", "max 3, sum -1", "transposed, max -3, sum 1"],
)
def test_a_softmax_whose_rank_only_inference_gives_is_fused_however_it_spells_its_axis(max_axis, sum_axis, transposed):
    # Before: "the max and the sum reduce different axes" for -1 beside 3, no retry (the sum over -1: fused as the
    # plain form, Softmax(x - max), the max kept); "one spelling" was fused whole.
    original = _softmax_of_unranked_logits(max_axis, sum_axis, transposed)
    result = SoftmaxFusion()(_softmax_of_unranked_logits(max_axis, sum_axis, transposed))
    assert result.modified
    assert op_types(result.model) == ["Gather", *(["Transpose"] if transposed else []), "Softmax"]
    logits = (np.random.default_rng(0).standard_normal(_SHAPE) * 4).astype(np.float32)
    assert_same_outputs(original, result.model, {"logits": logits})


def test_a_max_and_a_sum_over_two_axes_of_an_unranked_input_stay_apart():
    # The retry infers the rank: -1 (axis 3) and 2 differ, so the stable form is not fused over either.
    result = SoftmaxFusion()(_softmax_of_unranked_logits(-1, 2, False))
    assert "ReduceMax" in op_types(result.model)

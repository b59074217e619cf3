"""fuse-softmax: ``Exp(x [- ReduceMax(x)]) / ReduceSum(Exp(...))`` into ``Softmax``, then attention fusion."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from passes.fusion.attention import AttentionFusion
from passes.fusion.softmax import SoftmaxFusion
from tests.helpers import assert_same_outputs, op_types
from tests.passes.fusion._attention_graphs import attention_model, model_inputs, without_value_info

_DECOMPOSED = {"Exp", "ReduceSum", "ReduceMax"}


def _decomposed(model: ir.Model, *, shifted: bool = True, sum_axes=(-1,), keepdims: int = 1) -> ir.Model:
    """A copy of ``model`` whose Softmax is written out with Exp, ReduceMax (when ``shifted``) and ReduceSum."""
    model = model.clone()
    graph = model.graph
    (softmax,) = [n for n in graph if n.op_type == "Softmax"]
    x = softmax.inputs[0]

    def constant(name: str, values) -> ir.Value:
        value = ir.Value(name=name, shape=ir.Shape([len(values)]), type=ir.TensorType(ir.DataType.INT64))
        value.const_value = ir.tensor(np.array(values, np.int64), name=name)
        graph.register_initializer(value)
        return value

    def add(op: str, inputs, **attrs) -> ir.Value:
        node = ir.node(op, inputs, attrs, name=f"decomposed_{op}")
        node.outputs[0].name = f"decomposed_{op}_out"
        graph.insert_before(softmax, node)
        return node.outputs[0]

    shifted_x = add("Sub", [x, add("ReduceMax", [x, constant("max_axes", [-1])], keepdims=1)]) if shifted else x
    exps = add("Exp", [shifted_x])
    total = add("ReduceSum", [exps, constant("sum_axes", list(sum_axes))], keepdims=keepdims)
    probs = add("Div", [exps, total])
    softmax.outputs[0].replace_all_uses_with(probs)
    graph.remove(softmax, safe=True)
    return model


@pytest.mark.parametrize("shifted", [True, False], ids=["max subtracted", "plain"])
@pytest.mark.parametrize("shapes", [True, False], ids=["shapes", "no shapes"])
def test_a_written_out_softmax_becomes_softmax_and_then_attention(shifted, shapes):
    original = attention_model(mask="input")
    model = _decomposed(original, shifted=shifted)
    model = model if shapes else without_value_info(model)
    fusion = SoftmaxFusion()
    result = fusion(model.clone())
    assert fusion.fused_count == 1
    after = op_types(result.model)
    assert "Softmax" in after and not _DECOMPOSED & set(after)
    assert after.count("Div") == op_types(model).count("Div") - 1  # the scores' scale stays
    attention = AttentionFusion()(result.model.clone())
    assert op_types(attention.model).count("MultiHeadAttention") == 1, attention.refusals
    for seq in (5, 9):
        feeds = model_inputs(original, seq)
        assert_same_outputs(model, result.model, feeds, rtol=1e-5, atol=1e-6)
        assert_same_outputs(model, attention.model, feeds, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"sum_axes": (2, 3)}, "the ReduceSum is not over one constant axis"),
        ({"keepdims": 0}, "the ReduceSum drops the reduced axis (keepdims=0)"),
    ],
    ids=["two axes", "keepdims 0"],
)
def test_a_sum_that_is_not_the_softmax_denominator_is_refused(options, reason):
    model = _decomposed(attention_model(mask="input"), shifted=False, **options)
    before = op_types(model)
    result = SoftmaxFusion()(model)
    assert not result.modified
    assert result.refusals == [f"1 near match at Div left unfused: {reason}"]
    assert op_types(result.model) == before


def test_an_exp_read_elsewhere_is_left_alone():
    model = _decomposed(attention_model(mask="input"))
    (exp,) = [n for n in model.graph if n.op_type == "Exp"]
    model.graph.outputs.append(exp.outputs[0])
    result = SoftmaxFusion()(model)
    assert not result.modified
    assert "Softmax" not in op_types(result.model)

"""bind-dims: symbolic input dims become fixed sizes and the shape arithmetic folds away."""

from __future__ import annotations

import numpy as np

from optimizer.inputs import make_inputs
from passes.constant_folding import FoldConstantsPass
from passes.dim_binding import BindDimsPass
from tests.helpers import assert_same_outputs, op_types, parse_model


def test_bound_dims_let_shape_arithmetic_fold():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[batch, sequence] x) => (float[batch, sequence] y) {
          shape = Shape(x)
          y = Reshape(x, shape)
        }""")
    bound = BindDimsPass({"batch": 2, "sequence": 3})(model.clone()).model
    assert [dim for dim in bound.graph.inputs[0].shape] == [2, 3]
    assert [dim for dim in bound.graph.outputs[0].shape] == [2, 3]
    folded = FoldConstantsPass()(bound).model
    assert "Shape" not in op_types(folded)
    assert_same_outputs(model, folded, {"x": np.ones((2, 3), np.float32)})


def test_unknown_dim_names_leave_the_model_alone():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[batch, 4] x) => (float[batch, 4] y) {
          y = Relu(x)
        }""")
    result = BindDimsPass({"sequence": 8})(model.clone())
    assert not result.modified


def test_exported_bert_has_no_shape_ops_once_bound(exported_model):
    name, model = exported_model
    dims = {"batch": 2, "sequence": 16}
    folded = FoldConstantsPass()(BindDimsPass(dims)(model.clone()).model).model
    assert "Shape" not in op_types(folded), name
    assert_same_outputs(model, folded, make_inputs(model, dims))

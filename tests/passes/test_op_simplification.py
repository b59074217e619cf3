"""simplify-ops: onnxscript's default rewrite rules, on hand-built graphs and exported models."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optimizer.inputs import make_inputs
from passes.constant_folding import FoldConstantsPass
from passes.op_simplification import SimplifyOpsPass
from tests.helpers import FIXTURES, assert_same_outputs, op_types, parse_model


def test_no_ops_are_removed_without_leaving_identities():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) {
          zero = Constant<value = float {0.0}>()
          one = Constant<value = float {1.0}>()
          a = Add(x, zero)
          b = Mul(a, one)
          y = Relu(b)
        }""")
    after = SimplifyOpsPass()(model.clone()).model
    assert op_types(after) == ["Relu"]
    assert_same_outputs(model, after, {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)})


@pytest.mark.parametrize(
    ("op", "constant"), [("Add", "1e-12"), ("Add", "1e-9"), ("Sub", "1e-9"), ("Mul", "1.000005"), ("Div", "1.000001")]
)
def test_an_operation_by_a_constant_near_its_neutral_element_is_no_no_op(op, constant):
    # A review: onnxscript matches x + 0 and x * 1 within abs_tol 1e-8 and rel_tol 1e-5, so a LayerNorm's
    # variance + 1e-12 was removed, and a constant row then normalized to 0/0 = NaN (verified: random rows).
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) {{
          k = Constant<value = float {{{constant}}}>()
          y = {op}(x, k)
        }}""")
    assert op_types(SimplifyOpsPass()(model.clone()).model) == ["Constant", op]


def test_two_rewrites_naming_a_new_initializer_alike_both_keep_theirs():
    # A review: Gemma 2's legacy export flattens the mask twice; onnxscript's Flatten rule names its new
    # shape initializer after the input and registers only the first, so the second Reshape read a
    # tensor missing from the saved model (ONNX Runtime refused the file; --no-verify wrote it).
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 3, 4] x) => (float[N, 12] y, float[N, 12] z) {
          y = Flatten<axis = 1>(x)
          f = Flatten<axis = 1>(x)
          z = Relu(f)
        }""")
    after = SimplifyOpsPass()(model.clone()).model
    assert op_types(after).count("Reshape") == 2
    assert all(node.inputs[1].is_initializer() for node in after.graph if node.op_type == "Reshape")
    onnx.checker.check_model(ir.to_proto(after), full_check=True)
    assert_same_outputs(model, after, {"x": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)})


def _conv_bn(bn_scale: np.ndarray) -> ir.Model:
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
        "scale": bn_scale,
        "bias": rng.standard_normal(4).astype(np.float32),
        "mean": rng.standard_normal(4).astype(np.float32),
        "var": rng.uniform(0.5, 1.5, 4).astype(np.float32),
    }
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            onnx.helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-5),
        ],
        "conv_bn",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 8, 8])],
        [onnx.numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_batchnorm_is_folded_into_conv():
    model = _conv_bn(np.random.default_rng(1).uniform(0.5, 2.0, 4).astype(np.float32))
    after = SimplifyOpsPass()(model.clone()).model
    assert op_types(after) == ["Conv"]
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert_same_outputs(model, after, {"x": x}, rtol=1e-4, atol=1e-5)


def test_batchnorm_with_runtime_scale_is_left_alone():
    # Near miss: the BN scale is a graph input, so it cannot be folded into weights.
    model = _conv_bn(np.ones(4, np.float32))
    scale = model.graph.initializers.pop("scale")
    model.graph.inputs.append(scale)
    result = SimplifyOpsPass()(model.clone())
    assert "BatchNormalization" in op_types(result.model)


def test_resnet_dynamo_loses_its_batchnorms():
    # The dynamo export computes some BN operands at run time; folding makes them constant.
    model = ir.load(FIXTURES / "resnet_dynamo.onnx")
    after = SimplifyOpsPass()(FoldConstantsPass()(model.clone()).model).model
    assert "BatchNormalization" in op_types(model) and "BatchNormalization" not in op_types(after)
    assert_same_outputs(model, after, make_inputs(model, {"batch": 2}), rtol=1e-4, atol=1e-5)


def test_exported_transformers_keep_their_outputs(exported_model):
    name, model = exported_model
    after = SimplifyOpsPass()(model.clone()).model
    assert len(after.graph) <= len(model.graph), name
    assert_same_outputs(model, after, make_inputs(model, {"sequence": 16}), rtol=1e-4, atol=1e-5)


def test_batchnorm_reading_constant_node_weights_is_folded():
    # Paddle's exporter (PP-OCR models) keeps every weight in a Constant node.
    model = _conv_bn(np.random.default_rng(1).uniform(0.5, 2.0, 4).astype(np.float32))
    proto = ir.to_proto(model)
    constants = [
        onnx.helper.make_node("Constant", [], [tensor.name], value=tensor) for tensor in proto.graph.initializer
    ]
    nodes = constants + list(proto.graph.node)
    del proto.graph.initializer[:]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    model = ir.from_proto(proto)
    after = SimplifyOpsPass()(model.clone()).model
    assert op_types(after) == ["Conv"]
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert_same_outputs(model, after, {"x": x}, rtol=1e-4, atol=1e-5)

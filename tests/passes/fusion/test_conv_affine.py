"""fuse-conv-affine: per-channel Mul/Add after a Conv folded into its weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer
from passes._utils import add_initializer
from passes.fusion.conv_affine import ConvAffineFusion
from tests.helpers import FIXTURES, assert_same_outputs, computed_op_types


def _conv_affine(scale_shape, offset_shape) -> ir.Model:
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
        "s": rng.uniform(0.5, 2.0, scale_shape).astype(np.float32),
        "t": rng.standard_normal(offset_shape).astype(np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Mul", ["s", "c"], ["m"]),
            helper.make_node("Add", ["m", "t"], ["y"]),
        ],
        "conv_affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


@pytest.mark.parametrize(("scale_shape", "offset_shape"), [((4, 1, 1), (1, 4, 1, 1)), ((), (4, 1, 1))])
def test_per_channel_affine_is_folded(scale_shape, offset_shape):
    model = _conv_affine(scale_shape, offset_shape)
    after = ConvAffineFusion()(model.clone()).model
    assert computed_op_types(after) == ["Conv"]
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert_same_outputs(model, after, {"x": x}, rtol=1e-4, atol=1e-5)


def test_per_pixel_offset_is_left_out_of_the_fold():
    model = _conv_affine((4, 1, 1), (4, 6, 6))
    after = ConvAffineFusion()(model.clone()).model
    # The per-channel scale folds; the per-pixel offset cannot and stays an Add.
    assert computed_op_types(after) == ["Conv", "Add"]
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert_same_outputs(model, after, {"x": x}, rtol=1e-4, atol=1e-5)


def test_exported_resnet_after_batchnorm_folding():
    # simplify-ops has folded every BatchNorm; a per-channel scale and shift put after the
    # first Conv (as a decomposed norm would be) is then folded into it.
    model = ir.load(FIXTURES / "resnet_dynamo.onnx")
    model = optimizer.optimize(model)
    first_conv = next(node for node in model.graph if node.op_type == "Conv")
    conv_out = first_conv.outputs[0]
    channels = first_conv.inputs[1].const_value.shape[0]
    scale = add_initializer(model.graph, "scale", np.linspace(0.5, 1.5, channels, dtype=np.float32).reshape(-1, 1, 1))
    shift = add_initializer(model.graph, "shift", np.linspace(-1, 1, channels, dtype=np.float32).reshape(-1, 1, 1))
    users = list(conv_out.uses())
    mul = ir.node("Mul", [conv_out, scale])
    add = ir.node("Add", [mul.outputs[0], shift])
    model.graph.insert_after(first_conv, [mul, add])
    for user, index in users:
        user.replace_input_with(index, add.outputs[0])
    before = ir.from_proto(ir.to_proto(model))
    after = ConvAffineFusion()(model).model
    assert computed_op_types(after).count("Mul") == 0 and computed_op_types(after).count("Conv") == 6
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert_same_outputs(before, after, {"pixel_values": x}, rtol=1e-4, atol=1e-4)


def test_two_convs_sharing_one_weight_get_their_own_folded_weights():
    model = _conv_affine((4, 1, 1), (4, 1, 1))
    graph = model.graph
    conv = next(n for n in graph if n.op_type == "Conv")
    twin = ir.node("Conv", list(conv.inputs), {"pads": [1, 1, 1, 1]})
    scaled = ir.node("Mul", [twin.outputs[0], graph.initializers["s"]])
    total = ir.node("Add", [scaled.outputs[0], graph.outputs[0]])
    graph.extend([twin, scaled, total])
    total.outputs[0].name = "z"
    graph.outputs[0] = total.outputs[0]
    before = ir.from_proto(ir.to_proto(model))
    after = ConvAffineFusion()(model).model
    assert computed_op_types(after).count("Mul") == 0
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert_same_outputs(before, after, {"x": x}, rtol=1e-4, atol=1e-4)

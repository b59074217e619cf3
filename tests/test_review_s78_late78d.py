"""Review s78 (late78d): late hostile review of fp16's declines of a model converted for nothing
(``passes.quantization.float16._float16_nodes``, review s78 late78c).

- A model computing a part in float16 already, beside a tree ensemble the converter keeps float32, whose file declares
  no type of that part (a ``Relu`` between Casts to and from float16): the input's float16 nodes were counted on the
  types the file declares, none, so the result's ``Relu`` counted as new and the trees' features and probabilities
  were rounded through float16 for nothing, reported applied. Fixed: the input's are counted on its inferred types.
- Without kept I/O types a model that only moves values (a ``Transpose`` and ``Reshape`` of its input) was declined
  ("would only round the graph's float inputs and outputs through float16"): given in float16, it moves half the bytes
  and no Cast is added, which is the user's point (converted before review s78 late78c). Fixed: a value-moving op
  reading a float16 graph input counts, as one reading a weight does.
- A ``Pad``, a ``Where`` or a ``GatherElements`` of the features before the trees, each only moving values, was
  counted as computing in float16: converted for nothing, reported applied. Fixed: they are among ``_MOVING_OPS``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.quantization.float16 import Float16Pass
from tests.test_review_s78_hunt16 import _tree_ensemble

_N = helper.make_node


def test_fp16_declines_a_model_computing_an_undeclared_part_in_float16_already():
    proto = _tree_ensemble()
    proto.graph.node.extend(
        [
            _N("Cast", ["X"], ["half"], to=TensorProto.FLOAT16),
            _N("Relu", ["half"], ["rectified"]),
            _N("Cast", ["rectified"], ["positive"], to=TensorProto.FLOAT),
        ]
    )
    proto.graph.output.append(helper.make_tensor_value_info("positive", TensorProto.FLOAT, [None, 2]))
    assert not proto.graph.value_info  # the file declares no type of the float16 part
    result = Float16Pass()(ir.from_proto(proto))
    # Before the fix: modified, the Relu counted as new, the trees' features and probabilities cast to float16 and back.
    assert not result.modified, [node.op_type for node in result.model.graph]
    assert any("no op would compute in float16 that does not already" in line for line in result.refusals)


def test_fp16_without_kept_io_types_converts_a_model_that_moves_its_input():
    graph = helper.make_graph(
        [_N("Transpose", ["X"], ["columns"], perm=[1, 0]), _N("Reshape", ["columns", "shape"], ["Y"])],
        "layout",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["rows", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None])],
        [numpy_helper.from_array(np.array([-1], np.int64), "shape")],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    result = Float16Pass(keep_io_types=False)(model)
    # Before the fix: declined, "would only round the graph's float inputs and outputs through float16".
    assert result.modified, result.refusals
    assert result.model.graph.inputs[0].dtype == ir.DataType.FLOAT16
    assert [node.op_type for node in result.model.graph] == ["Transpose", "Reshape"]  # no Cast added
    # Keeping I/O types the same model would only cast its input to float16 and back: declined, as before.
    assert not Float16Pass()(model).modified


@pytest.mark.parametrize("spelling", ["Pad", "Where", "GatherElements"])
def test_fp16_declines_trees_after_an_op_that_only_moves_their_features(spelling):
    proto = _tree_ensemble()
    proto.graph.node[0].input[0] = "features"
    constants = {}
    if spelling == "Pad":
        node = _N("Pad", ["X", "pads"], ["features"])
        constants["pads"] = np.zeros(4, np.int64)
    elif spelling == "Where":
        node = _N("Where", ["present", "X", "fallback"], ["features"])
        proto.graph.input.append(helper.make_tensor_value_info("present", TensorProto.BOOL, [None, 2]))
        proto.graph.input.append(helper.make_tensor_value_info("fallback", TensorProto.FLOAT, [None, 2]))
    else:
        node = _N("GatherElements", ["X", "order"], ["features"], axis=1)
        constants["order"] = np.array([[1, 0]], np.int64)
    proto.graph.node.insert(0, node)
    proto.graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in constants.items())
    result = Float16Pass()(ir.from_proto(proto))
    # Before the fix: modified, the op in float16 between Casts computing nothing (the features rounded).
    assert not result.modified, [node.op_type for node in result.model.graph]
    assert any("no op would compute in float16" in line for line in result.refusals), result.refusals

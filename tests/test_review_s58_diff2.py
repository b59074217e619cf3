"""A hostile review of b783e16..98b2bd1 (session 58): each finding with a test that failed before its fix.

* ``--static-shapes`` took every dim guessed for a batch (``_batch_names``) as the batch, whatever sizes they were
  bound to: ``x [DD.0, 8]`` beside a table ``t [DD.1, 8]`` bound to 4 and 10 read as a batch of 4, calibration of 8
  samples was cut to batches of 4 (the table's 10 rows with them) and the pass rolled back blaming its own result
  ("ONNX Runtime cannot run the result ... table ... Got: 4 Expected: 10"), where b783e16 refused the calibration
  with a readable reason. Guessed dims bound to different sizes are no batch now.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.errors import InputSpecError


def _with_table() -> ir.Model:
    """``MatMul(Relu(x @ W), table^T)`` with ``x [p2o.DynamicDimension.0, 8]`` and ``table
    [p2o.DynamicDimension.1, 8]``: two dims guessed for a batch, the second a table's rows."""
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Transpose", ["table"], ["tt"], perm=[1, 0]),
        helper.make_node("MatMul", ["r", "tt"], ["y"]),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["p2o.DynamicDimension.0", 8]),
        helper.make_tensor_value_info("table", TensorProto.FLOAT, ["p2o.DynamicDimension.1", 8]),
    ]
    graph = helper.make_graph(nodes, "table", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    graph.initializer.append(weight)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_static_shapes_takes_no_table_rows_for_the_batch():
    rng = np.random.default_rng(3)
    inputs = {"x": rng.normal(size=(4, 8)).astype(np.float32), "table": rng.normal(size=(10, 8)).astype(np.float32)}
    calibration = {"x": rng.normal(size=(8, 8)).astype(np.float32), "table": inputs["table"]}
    with pytest.raises(InputSpecError, match=r"the samples have p2o\.DynamicDimension\.0=8"):
        optimize_with_report(
            _with_table(), inputs=inputs, calibration=calibration, quantize="static", static_shapes=True
        )

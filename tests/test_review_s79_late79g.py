"""Review s79 (late79g): float16 conversion keeping float32 the floats a graph computes from positions and constants
alone (``passes.quantization.float16._positions_kept`` on ``optimizer.position_values.classified_positions``). A
rotary ``inv_freq`` computed in the graph (``1 / base ** (arange(0, dim, 2) / dim)``, not folded where
``convert-float16`` runs alone) reads a ``Range`` of constants: an integer computed from constants alone was neither a
position nor a constant to the classifier, so neither was ``inv_freq``, the angles ``position * inv_freq`` were
computed in float16 (position 4,095 is 4,096 there) and the check at the longest length did not see them. Still
computed in float16 there (a strict xfail): a diffusion timestep's sinusoidal embedding whose frequencies are computed
in the graph (``exp(-log(10000) * arange(half) / half)``, diffusers' ``get_timestep_embedding``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.report import STATUS_APPLIED

_DIM = 8


def _rotary_with_inv_freq_in_graph() -> ir.Model:
    """``y = x * cos(a) + x * sin(a)``, ``a = concat(f, f)``, ``f = position * inv_freq``, the positions a ``Range``
    of the length and ``inv_freq = 1 / 10000 ** (Cast(Range(0, dim, 2)) / dim)`` computed in the graph."""

    def scalar(name: str, value: float, dtype: type = np.int64) -> TensorProto:
        return numpy_helper.from_array(np.array(value, dtype), name)

    graph = helper.make_graph(
        [
            helper.make_node("Range", ["zero", "dim", "two"], ["even"]),
            helper.make_node("Cast", ["even"], ["even_f"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["even_f", "dim_f"], ["exponent"]),
            helper.make_node("Pow", ["base", "exponent"], ["power"]),
            helper.make_node("Div", ["unit", "power"], ["inv_freq"]),
            helper.make_node("Shape", ["x"], ["length"], start=1, end=2),
            helper.make_node("Squeeze", ["length"], ["limit"]),
            helper.make_node("Range", ["zero", "limit", "one"], ["positions"]),
            helper.make_node("Cast", ["positions"], ["positions_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["positions_f", "last"], ["column"]),
            helper.make_node("Mul", ["column", "inv_freq"], ["freqs"]),
            helper.make_node("Concat", ["freqs", "freqs"], ["angles"], axis=-1),
            helper.make_node("Cos", ["angles"], ["cos"]),
            helper.make_node("Sin", ["angles"], ["sin"]),
            helper.make_node("Mul", ["x", "cos"], ["x_cos"]),
            helper.make_node("Mul", ["x", "sin"], ["x_sin"]),
            helper.make_node("Add", ["x_cos", "x_sin"], ["y"]),
        ],
        "inv_freq_in_graph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", _DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            scalar("zero", 0),
            scalar("one", 1),
            scalar("two", 2),
            scalar("dim", _DIM),
            numpy_helper.from_array(np.array([-1], np.int64), "last"),
            scalar("dim_f", _DIM, np.float32),
            scalar("base", 10000.0, np.float32),
            scalar("unit", 1.0, np.float32),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_the_angles_of_an_inv_freq_computed_in_the_graph_are_kept_float32():
    # Computed in float16 and verified until review s79 late79g: the angles at position 4,095 (4,096 in float16) are
    # a radian off, and only the positions' float (exact) was checked at that length.
    result, report = optimize_with_report(
        _rotary_with_inv_freq_in_graph(), passes=["convert-float16"], target="cuda", fp16=True
    )
    (record,) = report.passes
    assert record.status == STATUS_APPLIED, record.detail
    typed = {node.outputs[0].name: node.outputs[0].dtype for node in result.graph if node.op_type in ("Mul", "Concat")}
    assert typed["freqs"] == typed["angles"] == ir.DataType.FLOAT, typed
    assert typed["x_cos"] == ir.DataType.FLOAT16, typed  # the activations are still converted
    assert {node.inputs[0].dtype for node in result.graph if node.op_type in ("Cos", "Sin")} == {ir.DataType.FLOAT}


def _timestep_embedding() -> ir.Model:
    """``y = concat(sin(a), cos(a)) @ W``, ``a = Cast(timestep) * exp(-log(10000) * Cast(Range(0, 4)) / 4)``."""
    graph = helper.make_graph(
        [
            helper.make_node("Range", ["zero", "half", "one"], ["steps"]),
            helper.make_node("Cast", ["steps"], ["steps_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["steps_f", "rate"], ["exponent"]),
            helper.make_node("Exp", ["exponent"], ["freqs"]),
            helper.make_node("Cast", ["timestep"], ["timestep_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["timestep_f", "last"], ["column"]),
            helper.make_node("Mul", ["column", "freqs"], ["angles"]),
            helper.make_node("Sin", ["angles"], ["sin"]),
            helper.make_node("Cos", ["angles"], ["cos"]),
            helper.make_node("Concat", ["sin", "cos"], ["embedding"], axis=-1),
            helper.make_node("MatMul", ["embedding", "W"], ["y"]),
        ],
        "timestep_embedding",
        [helper.make_tensor_value_info("timestep", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array(_DIM // 2, np.int64), "half"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array(-np.log(10000) / (_DIM // 2), np.float32), "rate"),
            numpy_helper.from_array(np.array([-1], np.int64), "last"),
            numpy_helper.from_array(np.random.default_rng(0).standard_normal((_DIM, _DIM)).astype(np.float32), "W"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.xfail(
    strict=True,
    reason="a timestep is no position to the classifier, and _angles follows no Exp to constants: the angles of a "
    "timestep embedding whose frequencies the graph computes stay float16 where convert-float16 runs alone",
)
def test_the_angles_of_a_timestep_embedding_computing_its_frequencies_are_kept_float32():
    # At timestep 999 the angle 999 * 0.1 (99.9) is rounded to a step of 0.0625 in float16; the default pipeline folds
    # the frequencies into a constant first, and its angles are kept float32.
    result, report = optimize_with_report(_timestep_embedding(), passes=["convert-float16"], target="cuda", fp16=True)
    (record,) = report.passes
    assert record.status == STATUS_APPLIED, record.detail
    (angles,) = (node for node in result.graph if node.outputs[0].name == "angles")
    assert angles.outputs[0].dtype == ir.DataType.FLOAT, angles

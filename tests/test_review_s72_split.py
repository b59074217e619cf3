"""Review s72 (split): the drawing of inputs compared with constants moved out of ``optimizer/inputs.py`` into
``optimizer/compared_inputs.py`` (behaviour unchanged: every fixture's generated inputs byte-identical). Its two walks,
the many-element one (``_compared_keys``) and the one-element one (``_compared_readers``), follow different ops, so
the same computation spelled two ways is drawn two ways. Both were strict xfails here, fixed in review s72 (inputsx):
the two walks share one table of moves (``_COMPARED_MOVES``) and undo a ``Neg`` as a ``Mul`` by -1
(``_shifted_by_constant``); more in ``tests/test_review_s72_inputsx.py``.

1. A one-element input negated by a ``Neg`` before a threshold (``Where(Greater(Neg(speed), -1.5), ...)``) is held at
   no value, so every set draws it on one side; spelled ``Mul(speed, -1)`` it is held each side in turn. The
   many-element walk follows the ``Neg`` (``_after_affine``); the one-element walk only steps it undoes exactly
   (``_shifted_by_constant``).
2. An input of several elements compared with a constant after a ``Slice`` or a ``Tile`` (tf2onnx takes a column
   ``x[:, 0:1]`` with a ``Slice``) is drawn as before, none of the constant; through a ``Reshape``, or with one element,
   it is half the constant. The one-element walk follows ``_INDEX_PRESERVING_OPS`` (``Slice`` and ``Tile`` among
   them); the many-element one only ops that move elements unchanged (``_COMPARED_MOVES``).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.compared_inputs import compared_constants
from optimizer.inputs import make_inputs

# The sets verification draws a one-element input's constants in (``api._COMPARED_TURNS``: seeds 0, 2, 4, 6).
_TURNS = (0, 2, 4, 6)


def _model(nodes, inputs, initializers) -> ir.Model:
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]
    graph = helper.make_graph(nodes, "compared", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return ir.from_proto(model)


def _negated_threshold(spelling: str) -> ir.Model:
    """``y = Where(-speed > -1.5, x * 2, x * 3)``, ``speed`` a float of one element, ``-speed`` spelled ``spelling``."""
    negated = (
        helper.make_node("Neg", ["speed"], ["negated"])
        if spelling == "Neg"
        else helper.make_node("Mul", ["speed", "minus_one"], ["negated"])
    )
    nodes = [
        negated,
        helper.make_node("Greater", ["negated", "threshold"], ["slow"]),
        helper.make_node("Mul", ["x", "two"], ["doubled"]),
        helper.make_node("Mul", ["x", "three"], ["tripled"]),
        helper.make_node("Where", ["slow", "doubled", "tripled"], ["y"]),
    ]
    constants = [
        numpy_helper.from_array(np.array(value, np.float32), name)
        for name, value in (("minus_one", -1.0), ("threshold", -1.5), ("two", 2.0), ("three", 3.0))
    ]
    inputs = [
        helper.make_tensor_value_info("speed", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
    ]
    return _model(nodes, inputs, constants)


def _held(model: ir.Model) -> list[float | None]:
    inputs = make_inputs(model)
    held = [compared_constants(model, inputs, seed=seed).get("speed") for seed in _TURNS]
    return [None if value is None else float(value) for value in held]


def test_a_one_element_input_multiplied_by_minus_one_before_a_threshold_is_held_each_side():
    held = _held(_negated_threshold("Mul"))
    assert {value < 1.5 for value in held} == {True, False}, held


def test_a_one_element_input_negated_before_a_threshold_is_held_as_when_multiplied_by_minus_one():
    assert _held(_negated_threshold("Neg")) == _held(_negated_threshold("Mul"))


def _code_compared_after(op: str, length: int) -> ir.Model:
    """``y = Where(op(code) == 3, x * 2, x * 3)``, ``code`` an int64 code of ``length`` elements indexing nothing."""
    moved = {
        "Reshape": helper.make_node("Reshape", ["code", "shape"], ["moved"]),
        "Slice": helper.make_node("Slice", ["code", "start", "end"], ["moved"]),
        "Tile": helper.make_node("Tile", ["code", "repeats"], ["moved"]),
    }[op]
    nodes = [
        moved,
        helper.make_node("Equal", ["moved", "three_code"], ["chosen"]),
        helper.make_node("Mul", ["x", "two"], ["doubled"]),
        helper.make_node("Mul", ["x", "three"], ["tripled"]),
        helper.make_node("Where", ["chosen", "doubled", "tripled"], ["y"]),
    ]
    constants = [
        numpy_helper.from_array(np.array([-1], np.int64), "shape"),
        numpy_helper.from_array(np.array([0], np.int64), "start"),
        numpy_helper.from_array(np.array([length], np.int64), "end"),
        numpy_helper.from_array(np.array([4 // length], np.int64), "repeats"),
        numpy_helper.from_array(np.array(3, np.int64), "three_code"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(3.0, np.float32), "three"),
    ]
    inputs = [
        helper.make_tensor_value_info("code", TensorProto.INT64, [length]),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
    ]
    return _model(nodes, inputs, constants)


def test_a_code_reshaped_before_an_equal_is_drawn_as_its_constant_half_the_time():
    assert (make_inputs(_code_compared_after("Reshape", 4))["code"] == 3).any()


def test_a_one_element_code_sliced_or_tiled_before_an_equal_holds_its_constant():
    for op in ("Slice", "Tile"):
        assert make_inputs(_code_compared_after(op, 1))["code"].tolist() == [3], op


@pytest.mark.parametrize("op", ["Slice", "Tile"])
def test_a_code_sliced_or_tiled_before_an_equal_is_drawn_as_its_constant_half_the_time(op):
    assert (make_inputs(_code_compared_after(op, 4 if op == "Slice" else 2))["code"] == 3).any()

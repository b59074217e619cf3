"""Review s72 (inputsx): the two walks that draw inputs at the constants the graph compares them with
(``optimizer/compared_inputs.py``) now follow the same ops where it is the same maths, and a constant row is drawn
column by column.

1. A ``Neg`` is a step both walks undo exactly (``_shifted_by_constant``): ``Equal(Neg(code), -3)`` drew ``code``
   never 3 (many elements: the walk followed the ``Neg`` as arithmetic not undone exactly, and skipped the ``Equal``
   after it) and held a one-element ``code`` at no value (the one-element walk did not follow it at all, nor a
   threshold after it: ``tests/test_review_s72_split.py``).
2. ``Slice`` and ``Tile`` are moves both walks follow (one table, ``_COMPARED_MOVES``): a threshold after a ``Slice``
   of an input of several elements was drawn on one side (the ``Equal`` case: ``tests/test_review_s72_split.py``).
3. ``Equal(x[B, 4], reference[4])`` compares column j with ``reference[j]``: each element was drawn from all four
   constants, so a column held its own in about one row of 8 (``tests/test_review_s71_s70merge.py``). Every other
   row now holds each column's own constant, the others none; a single row, every other column's. A threshold row,
   ``Less(x[B, 4], limits[4])``, was drawn each side of any of its limits, a column past its own in about one row of
   16: every other row now holds each column just below its own, the others just above.
4. An unnamed state axis that a ``Concat`` along another axis holds equal to an input's leading axis (the audio's
   rows, through a reduction) is drawn as those rows (``recurrent_batch_axes``), not at 128, which ONNX Runtime
   refused (``tests/test_review_s71_hunt5.py``); not where the ``Concat`` is along that axis itself.
5. A sequence-major ``x [None, None, 8]`` a ``GRU`` reads as it is has its unnamed first axis drawn as a length
   (``recurrent_step_inputs``), not one step (``tests/test_review_s71_docs.py``); with ``layout=1`` that axis is the
   batch, and stays 1.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.compared_inputs import compared_constants
from optimizer.inputs import input_bytes, make_inputs


def _model(nodes, inputs, initializers, output_shape, opset: int = 18) -> ir.Model:
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)]
    graph = helper.make_graph(nodes, "compared", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return ir.from_proto(model)


def _negated_code(length: int) -> ir.Model:
    """``y = Cast(Equal(Neg(code), -3))``, ``code`` an int64 code of ``length`` elements (``[]`` for one)."""
    nodes = [
        helper.make_node("Neg", ["code"], ["negated"]),
        helper.make_node("Equal", ["negated", "minus_three"], ["same"]),
        helper.make_node("Cast", ["same"], ["y"], to=TensorProto.FLOAT),
    ]
    shape = [length] if length > 1 else []
    inputs = [helper.make_tensor_value_info("code", TensorProto.INT64, shape)]
    constants = [numpy_helper.from_array(np.array(-3, np.int64), "minus_three")]
    return _model(nodes, inputs, constants, shape)


def test_a_code_of_several_elements_negated_before_an_equal_is_drawn_as_its_constant_half_the_time():
    assert (make_inputs(_negated_code(8))["code"] == 3).any()


def test_a_one_element_code_negated_before_an_equal_is_held_at_its_constant_then_off_it():
    model = _negated_code(1)
    assert make_inputs(model, seed=0)["code"].tolist() == 3
    assert make_inputs(model, seed=1)["code"].tolist() != 3
    assert compared_constants(model, make_inputs(model))["code"].tolist() == 3


def _sliced_threshold() -> ir.Model:
    """``y = Cast(Slice(x)[:4] > 10)``, ``x`` a float of 8 elements."""
    nodes = [
        helper.make_node("Slice", ["x", "start", "end"], ["head"]),
        helper.make_node("Greater", ["head", "ten"], ["above"]),
        helper.make_node("Cast", ["above"], ["y"], to=TensorProto.FLOAT),
    ]
    constants = [
        numpy_helper.from_array(np.array([0], np.int64), "start"),
        numpy_helper.from_array(np.array([4], np.int64), "end"),
        numpy_helper.from_array(np.array(10.0, np.float32), "ten"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])], constants, [4])


def test_a_float_sliced_before_a_threshold_is_drawn_each_side_of_it():
    drawn = make_inputs(_sliced_threshold())["x"]
    assert (drawn > 10).any() and (drawn[(drawn > 5)] < 10).any(), drawn


def _compared_with_a_row(kind: str) -> ir.Model:
    """``y = Cast(Equal(x, reference))``, ``x [batch, 4]`` of ``kind`` (int64 or string), ``reference`` a row of 4."""
    if kind == "int64":
        reference = numpy_helper.from_array(np.array([10, 20, 30, 40], np.int64), "reference")
        element = TensorProto.INT64
    else:
        reference = helper.make_tensor("reference", TensorProto.STRING, [4], [b"cat", b"dog", b"owl", b"elk"])
        element = TensorProto.STRING
    nodes = [
        helper.make_node("Equal", ["x", "reference"], ["same"]),
        helper.make_node("Cast", ["same"], ["y"], to=TensorProto.FLOAT),
    ]
    inputs = [helper.make_tensor_value_info("x", element, ["batch", 4])]
    return _model(nodes, inputs, [reference], ["batch", 4], opset=20)  # Equal of strings: opset 20


@pytest.mark.parametrize("kind", ["int64", "string"])
@pytest.mark.parametrize("seed", [0, 1])
def test_each_column_compared_with_a_constant_row_is_drawn_at_its_own_constant_and_off_it(kind, seed):
    model = _compared_with_a_row(kind)
    reference = model.graph.initializers["reference"].const_value.numpy().reshape(-1)
    if kind == "string":
        reference = np.asarray([word.decode() for word in reference], dtype=object)
    drawn = make_inputs(model, {"batch": 2}, seed=seed)["x"]
    same = drawn == reference
    assert same.any(axis=0).all() and (~same).any(axis=0).all(), drawn
    single = make_inputs(model, {"batch": 1}, seed=seed)["x"]
    assert (single == reference).any() and (single != reference).any(), single


def _state_concatenated(axis: int) -> ir.Model:
    """``input [None, None]`` and ``state [2, None, 4]``: ``Concat(mean of input over axis 1, state[0], axis)``."""
    nodes = [
        helper.make_node("ReduceMean", ["input", "one_axis"], ["level"], keepdims=1),
        helper.make_node("Gather", ["state", "zero"], ["h"], axis=0),
        helper.make_node("Concat", ["level", "h"], ["joined"], axis=axis),
        helper.make_node("ReduceSum", ["joined"], ["y"], keepdims=0),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, None]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 4] if axis else [2, None, 1]),
    ]
    constants = [
        numpy_helper.from_array(np.array([1], np.int64), "one_axis"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
    ]
    return _model(nodes, inputs, constants, [])


def test_an_unnamed_state_concatenated_beside_the_audios_rows_is_drawn_at_those_rows():
    inputs = make_inputs(_state_concatenated(axis=1))
    assert inputs["input"].shape == (1, 128) and inputs["state"].shape == (2, 1, 4)


def test_an_unnamed_state_concatenated_along_its_own_axis_is_still_a_length():
    # Concat along axis 0: the state's rows are joined to the audio's, not held equal to them.
    assert make_inputs(_state_concatenated(axis=0))["state"].shape == (2, 128, 1)


def _gru(layout: int) -> ir.Model:
    """``y_h = GRU(x)``, ``x [None, None, 8]`` read as it is (``layout`` 0: steps first; 1: rows first)."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((1, 12, 8)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, 12, 4)).astype(np.float32), "R"),
    ]
    node = helper.make_node("GRU", ["x", "W", "R"], ["", "y_h"], hidden_size=4, layout=layout)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 8])]
    outputs = [helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [None, 1, 4] if layout else [1, None, 4])]
    graph = helper.make_graph([node], "gru", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return ir.from_proto(model)


def test_a_sequence_major_input_with_no_dim_names_is_drawn_at_many_steps():
    model = _gru(layout=0)
    assert make_inputs(model)["x"].shape == (128, 1, 8)
    assert make_inputs(model, unnamed_length=16)["x"].shape == (16, 1, 8)
    assert input_bytes(model)[0] == 128 * 8 * 4


def test_a_batch_major_input_with_no_dim_names_is_still_drawn_at_one_row():
    assert make_inputs(_gru(layout=1))["x"].shape == (1, 128, 8)


def _below_a_row() -> ir.Model:
    """``y = Cast(Less(x, limits))``, ``x [batch, 4]`` a float, ``limits`` a row ``[10, 20, 30, 40]``."""
    nodes = [
        helper.make_node("Less", ["x", "limits"], ["below"]),
        helper.make_node("Cast", ["below"], ["y"], to=TensorProto.FLOAT),
    ]
    limits = numpy_helper.from_array(np.array([10, 20, 30, 40], np.float32), "limits")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])]
    return _model(nodes, inputs, [limits], ["batch", 4])


def test_each_column_compared_with_a_threshold_row_is_drawn_each_side_of_its_own():
    model = _below_a_row()
    limits = np.array([10, 20, 30, 40], np.float32)
    drawn = make_inputs(model, {"batch": 2}, seed=0)["x"]
    assert ((drawn < limits).any(axis=0) & (drawn >= limits).any(axis=0)).all(), drawn
    single = make_inputs(model, {"batch": 1}, seed=0)["x"]
    assert (single < limits).any() and (single >= limits).any(), single


def test_an_unnamed_state_concatenated_beside_a_named_length_is_not_drawn_at_one_row():
    # ``input [samples, None]``: its leading axis is no batch (bound 3 here), and the rows a linked state is drawn at
    # are a batch's (1): the state is not linked to it (drawn as a length, as before; --dim or --inputs are the way).
    model = _state_concatenated(axis=1)
    model.graph.inputs[0].shape = ir.Shape([ir.SymbolicDim("samples"), None])
    inputs = make_inputs(model, {"samples": 3})
    assert inputs["input"].shape == (3, 128) and inputs["state"].shape[1] != 1

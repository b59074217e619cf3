"""Hostile review s71 (late 1): the two merges into input drawing read together, the ``Equal``-after-arithmetic walk
(exact undo steps) and the thresholds (``_after_affine``). Each test failed before its fix.

1. Fixed (a regression of the merge): an ``Equal`` behind an ``Add`` of a one-element constant of two dims
   (``code + [[1]]``) was followed by the ``Equal`` walk alone; joined to the thresholds' ``_after_affine``, which took
   only constants of at most one dim, it was followed no more: the codes were drawn 0 or 1, none shifted to a
   constant, and a swap of the two constants verified.
2. Fixed (a regression): a one-element input compared with a constant and also clamped (``If(Equal(n, 7))`` beside
   ``Clip(n, 0, 100)``) held the clamp's six side values first and 7 past the sets verification draws: the branch 7
   selects never ran, and a rewrite wrong in it verified.
3. Fixed: a one-element input compared with a threshold after arithmetic (``If(Greater(step - 10, 0))``) was held each
   side of the threshold in the compared units (``step`` at -1, 0 and 1, all ``step - 10 <= 0``): one branch ran.
4. Fixed: an integer divided by a constant, then compared (``code // 4 > 3``, ONNX's integer ``Div`` truncates), was
   drawn each side of ``3 * 4`` by one (11, 12, 13: all 3 or less once divided): one side ran.
5. Fixed: an ``Equal`` after a ``Div`` by a constant (``Equal(code / 2, 3)``, integer or float) was not followed: the
   codes were drawn 0 or 1 (normal floats), none halved to a constant, and a swap of the two constants verified.
6. Fixed: a one-element integer compared with two thresholds (``n > 10``, ``n > 20``) was held at three values for
   each (9, 10, 11, then 19, 20, 21), and verification draws four: ``n`` never passed 20, and a rewrite wrong there
   verified. An integer of one element is now held at the two nearest values each threshold tells apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.compared_inputs import compared_constants
from optimizer.inputs import make_inputs
from optimizer.pipeline import STATUS_APPLIED, STATUS_ROLLED_BACK
from tests.helpers import optimize_with_rewrite
from tests.test_review_s70_strkeys import _swap_constants, _switch
from tests.test_review_s71_trust import _branches, _keep, _model, _set


def _tensor(name: str, value, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype), name)


def _shifted_by_a_1x1_constant() -> onnx.ModelProto:
    """``code + [[1]]`` (``code: int64[1, L]``) compared with 3 and 7 (``_switch``)."""
    nodes, constants = _switch("shifted", 3, 7)
    nodes.insert(0, helper.make_node("Add", ["code", "shift"], ["shifted"]))
    constants.append(_tensor("shift", [[1]]))
    inputs = [helper.make_tensor_value_info("code", TensorProto.INT64, [1, "L"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "L"])]
    return _model(nodes, inputs, constants, outputs)


def test_swapping_constants_compared_after_a_shift_by_a_1x1_constant_is_rolled_back(tmp_path: Path) -> None:
    record = optimize_with_rewrite(_shifted_by_a_1x1_constant(), _swap_constants, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_codes_shifted_by_a_1x1_constant_are_drawn_as_the_values_it_turns_into_the_constants() -> None:
    drawn = make_inputs(ir.from_proto(_shifted_by_a_1x1_constant()), {"L": 64})["code"]
    assert {2, 6} <= set(drawn.reshape(-1).tolist())


def _scalar_switch(*, clamped: bool = False, shift: int | None = None) -> onnx.ModelProto:
    """``y = If(cond, x * above, x * below) (+ Cast(Clip(n, 0, 100)) where clamped)``, ``n: int64[1]``: ``cond`` is
    ``n == 7``, or ``n - shift > 0`` where ``shift`` is given."""
    then_graph, else_graph = _branches()
    if shift is None:
        nodes = [helper.make_node("Equal", ["n", "seven"], ["compared"])]
    else:
        nodes = [
            helper.make_node("Sub", ["n", "shift"], ["moved"]),
            helper.make_node("Greater", ["moved", "zero"], ["compared"]),
        ]
    nodes += [
        helper.make_node("Squeeze", ["compared"], ["chosen"]),
        helper.make_node(
            "If", ["chosen"], ["branch" if clamped else "y"], then_branch=then_graph, else_branch=else_graph
        ),
    ]
    constants = [
        _tensor("above", 2.0, np.float32),
        _tensor("below", 3.0, np.float32),
        _tensor("seven", [7]) if shift is None else _tensor("shift", [shift]),
    ]
    if shift is not None:
        constants.append(_tensor("zero", 0))
    if clamped:
        nodes += [
            helper.make_node("Clip", ["n", "low", "high"], ["clamped"]),
            helper.make_node("Cast", ["clamped"], ["clamped_float"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["branch", "clamped_float"], ["y"]),
        ]
        constants += [_tensor("low", 0), _tensor("high", 100)]
        nodes.insert(0, nodes.pop(-3))  # the clamp read first, as an export may order it
    inputs = [
        helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"]),
    ]
    return _model(nodes, inputs, constants, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L"])])


_SCALAR_SWITCHES = {
    "equal beside a clamp": lambda: _scalar_switch(clamped=True),
    "threshold after a shift": lambda: _scalar_switch(shift=10),
}


@pytest.mark.parametrize("kind", list(_SCALAR_SWITCHES))
def test_each_branch_a_one_element_input_selects_is_verified(tmp_path: Path, kind: str) -> None:
    record = optimize_with_rewrite(_SCALAR_SWITCHES[kind](), _set("above", 5.0), tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


@pytest.mark.parametrize("kind", list(_SCALAR_SWITCHES))
def test_a_correct_rewrite_of_a_one_element_switch_still_verifies(tmp_path: Path, kind: str) -> None:
    record = optimize_with_rewrite(_SCALAR_SWITCHES[kind](), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def test_a_one_element_input_is_held_at_its_compared_constant_before_a_clamp_s_sides() -> None:
    model = ir.from_proto(_scalar_switch(clamped=True))
    assert compared_constants(model, make_inputs(model, {"L": 2}), seed=0)["n"].tolist() == [7]


def test_a_one_element_input_is_held_each_side_of_a_threshold_after_a_shift() -> None:
    model = ir.from_proto(_scalar_switch(shift=10))
    inputs = make_inputs(model, {"L": 2})
    held = {compared_constants(model, inputs, seed=seed)["n"].item() - 10 > 0 for seed in (0, 2, 4)}
    assert held == {True, False}


def _divided() -> onnx.ModelProto:
    """``torch.where(code // 4 > 3, x * above, x * below)``, ``code: int64[L]`` (ONNX's integer ``Div``)."""
    nodes = [
        helper.make_node("Div", ["code", "four"], ["quotient"]),
        helper.make_node("Greater", ["quotient", "three"], ["chosen"]),
        helper.make_node("Mul", ["x", "above"], ["scaled_above"]),
        helper.make_node("Mul", ["x", "below"], ["scaled_below"]),
        helper.make_node("Where", ["chosen", "scaled_above", "scaled_below"], ["y"]),
    ]
    constants = [
        _tensor("four", 4),
        _tensor("three", 3),
        _tensor("above", 2.0, np.float32),
        _tensor("below", 3.0, np.float32),
    ]
    inputs = [
        helper.make_tensor_value_info("code", TensorProto.INT64, ["L"]),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"]),
    ]
    return _model(nodes, inputs, constants, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L"])])


def test_a_rewrite_wrong_past_a_threshold_after_an_integer_division_is_rolled_back(tmp_path: Path) -> None:
    record = optimize_with_rewrite(_divided(), _set("above", 5.0), tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_a_correct_rewrite_past_an_integer_division_still_verifies(tmp_path: Path) -> None:
    record = optimize_with_rewrite(_divided(), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def _divided_switch(dtype: int) -> onnx.ModelProto:
    """``code / 2`` (``code: [L]`` of ``dtype``: ONNX's integer ``Div`` truncates) compared with 3 and 7
    (``_switch``)."""
    numpy_type = helper.tensor_dtype_to_np_dtype(dtype)
    nodes, constants = _switch("halved", numpy_type.type(3), numpy_type.type(7))
    nodes.insert(0, helper.make_node("Div", ["code", "divisor"], ["halved"]))
    constants.append(_tensor("divisor", 2, numpy_type))
    inputs = [helper.make_tensor_value_info("code", dtype, ["L"])]
    return _model(nodes, inputs, constants, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L"])])


_DIVIDED = {"integer": TensorProto.INT64, "float": TensorProto.FLOAT}


@pytest.mark.parametrize("kind", list(_DIVIDED))
def test_swapping_constants_compared_after_a_division_is_rolled_back(tmp_path: Path, kind: str) -> None:
    # Before: codes drawn 0 or 1 (normal floats) halved to none of the constants, every row 0, and the swap verified.
    record = optimize_with_rewrite(_divided_switch(_DIVIDED[kind]), _swap_constants, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


@pytest.mark.parametrize("kind", list(_DIVIDED))
def test_a_correct_rewrite_of_a_divided_comparison_still_verifies(tmp_path: Path, kind: str) -> None:
    record = optimize_with_rewrite(_divided_switch(_DIVIDED[kind]), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def _two_thresholds() -> onnx.ModelProto:
    """``y = x * (1 + 2 * (n > 10) + 4 * (n > 20))``, ``n: int64[1]`` (a step past two points of a schedule)."""
    nodes = [
        helper.make_node("Greater", ["n", "first"], ["past_first"]),
        helper.make_node("Greater", ["n", "second"], ["past_second"]),
        helper.make_node("Cast", ["past_first"], ["first_float"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["past_second"], ["second_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["first_float", "above"], ["first_term"]),
        helper.make_node("Mul", ["second_float", "below"], ["second_term"]),
        helper.make_node("Add", ["first_term", "second_term"], ["terms"]),
        helper.make_node("Add", ["terms", "one"], ["factor"]),
        helper.make_node("Mul", ["x", "factor"], ["y"]),
    ]
    constants = [
        _tensor("first", [10]),
        _tensor("second", [20]),
        _tensor("above", 2.0, np.float32),
        _tensor("below", 4.0, np.float32),
        _tensor("one", 1.0, np.float32),
    ]
    inputs = [
        helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"]),
    ]
    return _model(nodes, inputs, constants, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L"])])


def test_a_rewrite_wrong_past_a_one_element_input_s_second_threshold_is_rolled_back(tmp_path: Path) -> None:
    # Before: n held at 9, 10, 11 and 19 (the first threshold's three values first), and 8; never past 20.
    record = optimize_with_rewrite(_two_thresholds(), _set("below", 5.0), tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_a_correct_rewrite_beside_two_thresholds_still_verifies(tmp_path: Path) -> None:
    record = optimize_with_rewrite(_two_thresholds(), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail

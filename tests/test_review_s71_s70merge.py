"""Hostile review s71: session 70's merges read by fresh eyes. Each test failed before its fix (or is a strict xfail).

1. Fixed: an input compared with constants after an ``Add``, ``Sub`` or ``Mul`` of a constant (``Equal(code + 1, 3)``, a
   one-element step's ``If(Equal(step + 1, 8))``) was never drawn as a value the comparison matches: every row (the
   only element) took one branch, and a swap of the two constants, or a rewrite wrong in the branch, verified.
2. Fixed: a constant an integer or string input is compared with was mixed into its draws over a lookup that fails on
   a value none of its keys (a ``OneHotEncoder`` of ``zeros=0``, whose keys were drawn alone so that it never sees
   one): ONNX Runtime refused every generated input of a model it ran before session 70's merge.
3. Fixed: a one-element string switch behind a ``StringNormalizer`` or a ``StringConcat``
   (``If(Equal(StringNormalizer(mode), "train"))``) was held at no constant (``compared_constants`` followed only
   casts and reshapes) nor mixed at generation (one-element strings are left to it): the branch "train" selects never
   ran, and a rewrite wrong in it verified.
4. Fixed: a one-element integer compared with a constant that is also read as a size (``If(Equal(n, 3))`` beside
   ``Range(0, n)``) was held at the constant, then replaced in every set by the size candidates graphopt tries for
   inputs read as sizes: the branch the constant selects never ran, and a rewrite wrong in it verified.
5. Fixed: a float compared with a constant that is also cast to an index (``Gather(table, Cast(x))``) was drawn as
   that constant, past the table: ONNX Runtime refused every generated input (integers that index a table were
   already left as drawn).
6. An elementwise comparison ``Equal(x [rows, 4], reference [4])`` drew each element from all four constants, so a
   rewrite wrong for one column verified where the few rows drawn held none of its constant (a strict xfail here until
   review s72 inputsx: every other row now holds each column's own, ``tests/test_review_s72_inputsx.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.pipeline import STATUS_APPLIED, STATUS_ROLLED_BACK
from tests.helpers import optimize_with_rewrite
from tests.test_review_s70_strkeys import _break_first_branch, _keep, _model, _swap_constants, _switch


def _tensor(name: str, value, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype), name)


def _shifted_switch(op: str) -> onnx.ModelProto:
    """Codes shifted or scaled by a constant (``code + 1``, ``code - 1``, ``10 - code``, ``code * 2``, ``x + 0.5``),
    then compared with two constants (``_switch``)."""
    if op == "float add":
        nodes, constants = _switch("shifted", np.float32(3.5), np.float32(7.5))
        shift = helper.make_node("Add", ["code", "shift"], ["shifted"])
        constants.append(_tensor("shift", 0.5, np.float32))
        return _model([shift, *nodes], [helper.make_tensor_value_info("code", TensorProto.FLOAT, ["L"])], constants)
    nodes, constants = _switch("shifted", *((6, 14) if op == "mul" else (3, 7)))
    inputs = ["shift", "code"] if op == "rsub" else ["code", "shift"]
    shift = helper.make_node({"add": "Add", "mul": "Mul"}.get(op, "Sub"), inputs, ["shifted"])
    constants.append(_tensor("shift", {"rsub": 10, "mul": 2}.get(op, 1)))
    return _model([shift, *nodes], [helper.make_tensor_value_info("code", TensorProto.INT64, ["L"])], constants)


_SHIFTS = ["add", "sub", "rsub", "mul", "float add"]


@pytest.mark.parametrize("op", _SHIFTS)
def test_swapping_constants_compared_after_a_shift_is_rolled_back(tmp_path: Path, op: str) -> None:
    # Before: codes drawn 0 or 1 (normal floats) shifted to none of the constants, every row 0, and the swap verified.
    record = optimize_with_rewrite(_shifted_switch(op), _swap_constants, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


@pytest.mark.parametrize("op", _SHIFTS)
def test_a_correct_rewrite_of_a_shifted_comparison_still_verifies(tmp_path: Path, op: str) -> None:
    record = optimize_with_rewrite(_shifted_switch(op), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def _one_element_step_switch() -> onnx.ModelProto:
    """``y = If(Equal(step + 1, 8), one, zero)`` with ``step: int64[1]``, every dim fixed (no second binding)."""

    def branch(name: str, source: str) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [])
        return helper.make_graph([helper.make_node("Identity", [source], [f"{name}_out"])], name, [], [out])

    nodes = [
        helper.make_node("Add", ["step", "shift"], ["next"]),
        helper.make_node("Equal", ["next", "last"], ["is_last"]),
        helper.make_node("Squeeze", ["is_last"], ["condition"]),
        helper.make_node(
            "If", ["condition"], ["y"], then_branch=branch("then", "one"), else_branch=branch("else", "zero")
        ),
    ]
    constants = [
        _tensor("shift", [1]),
        _tensor("last", [8]),
        _tensor("one", 1.0, np.float32),
        _tensor("zero", 0.0, np.float32),
    ]
    inputs = [helper.make_tensor_value_info("step", TensorProto.INT64, [1])]
    return _model(nodes, inputs, constants, output_shape=())


def test_a_branch_a_shifted_one_element_input_selects_is_verified(tmp_path: Path) -> None:
    # Before: step was drawn 0 or 1 in every set (step + 1 never 8): the then branch never ran, and 'one' changed to 5
    # verified.
    record = optimize_with_rewrite(_one_element_step_switch(), _break_first_branch, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def _sentinel_beside_strict_one_hot() -> onnx.ModelProto:
    """``x: int64[L]`` one-hot encoded over cats 10, 11, 12 with ``zeros=0`` (fails on any other value), and compared
    with a sentinel 5."""
    nodes = [
        helper.make_node("OneHotEncoder", ["x"], ["hot"], domain="ai.onnx.ml", zeros=0, cats_int64s=[10, 11, 12]),
        helper.make_node("ReduceSum", ["hot", "axis"], ["summed"], keepdims=0),
        helper.make_node("Equal", ["x", "sentinel"], ["is_sentinel"]),
        helper.make_node("Cast", ["is_sentinel"], ["flag"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["summed", "flag"], ["y"]),
    ]
    constants = [_tensor("axis", [-1]), _tensor("sentinel", 5)]
    graph = helper.make_graph(
        nodes,
        "strict_one_hot",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L"])],
        constants,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def test_a_sentinel_beside_a_one_hot_encoder_of_zeros_0_is_not_drawn(tmp_path: Path) -> None:
    # Before: half the codes were the sentinel 5, none of the encoder's cats: "ONNX Runtime cannot run the input
    # model on generated inputs (... Unknown Category and zeros = 0)".
    record = optimize_with_rewrite(_sentinel_beside_strict_one_hot(), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def _float_compared_and_cast_to_an_index() -> onnx.ModelProto:
    """``y = table[int(x)] + (x == 100)`` with ``x: float[L]`` and a table of 10 rows."""
    nodes = [
        helper.make_node("Equal", ["x", "sentinel"], ["is_sentinel"]),
        helper.make_node("Cast", ["is_sentinel"], ["flag"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["x"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["row"]),
        helper.make_node("Add", ["row", "flag"], ["y"]),
    ]
    constants = [_tensor("sentinel", 100.0, np.float32), _tensor("table", np.arange(10), np.float32)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"])], constants)


def test_a_float_compared_with_a_constant_past_the_table_it_indexes_is_not_drawn_as_it(tmp_path: Path) -> None:
    # Before: "ONNX Runtime cannot run the input model on generated inputs (... indices element out of data bounds,
    # idx=100 ...)".
    record = optimize_with_rewrite(_float_compared_and_cast_to_an_index(), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def test_shifted_codes_are_drawn_as_the_values_the_shift_turns_into_the_constants() -> None:
    from optimizer.inputs import make_inputs

    drawn = make_inputs(ir.from_proto(_shifted_switch("rsub")), {"L": 64})["code"]
    assert {7, 3} <= set(drawn.tolist()), drawn  # 10 - 7 == 3, 10 - 3 == 7


def _one_element_string_switch(before: str) -> onnx.ModelProto:
    """``y = If(Equal(f(mode), word), one, zero)`` with ``mode: string[1]``, ``f`` a ``StringNormalizer`` (LOWER) or a
    ``StringConcat`` with "_en"."""

    def branch(name: str, source: str) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [])
        return helper.make_graph([helper.make_node("Identity", [source], [f"{name}_out"])], name, [], [out])

    if before == "normalizer":  # locale "C": ONNX Runtime's default locale may not be installed
        step = helper.make_node("StringNormalizer", ["mode"], ["read"], case_change_action="LOWER", locale="C")
    else:
        step = helper.make_node("StringConcat", ["mode", "suffix"], ["read"])
    nodes = [
        step,
        helper.make_node("Equal", ["read", "word"], ["is_word"]),
        helper.make_node("Squeeze", ["is_word"], ["condition"]),
        helper.make_node(
            "If", ["condition"], ["y"], then_branch=branch("then", "one"), else_branch=branch("else", "zero")
        ),
    ]
    word = "train" if before == "normalizer" else "train_en"
    constants = [
        numpy_helper.from_array(np.array([word], dtype=object), "word"),
        numpy_helper.from_array(np.array(["_en"], dtype=object), "suffix"),
        _tensor("one", 1.0, np.float32),
        _tensor("zero", 0.0, np.float32),
    ]
    inputs = [helper.make_tensor_value_info("mode", TensorProto.STRING, [1])]
    return _model(nodes, inputs, constants, output_shape=())


@pytest.mark.parametrize("before", ["normalizer", "concat"])
def test_a_branch_a_one_element_string_selects_behind_a_string_op_is_verified(tmp_path: Path, before: str) -> None:
    # Before: mode was one of the fixed words in every set: the then branch never ran, and 'one' changed verified.
    record = optimize_with_rewrite(_one_element_string_switch(before), _break_first_branch, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


@pytest.mark.parametrize("before", ["normalizer", "concat"])
def test_a_correct_rewrite_of_a_one_element_string_switch_still_verifies(tmp_path: Path, before: str) -> None:
    record = optimize_with_rewrite(_one_element_string_switch(before), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def _size_switch() -> onnx.ModelProto:
    """``s = sum(range(n))``; ``y = If(Equal(n, 3), s * two, s)`` with ``n: int64[1]``."""

    def branch(name: str, source: str) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [])
        return helper.make_graph([helper.make_node("Identity", [source], [f"{name}_out"])], name, [], [out])

    nodes = [
        helper.make_node("Squeeze", ["n"], ["limit"]),
        helper.make_node("Range", ["start", "limit", "step"], ["steps"]),
        helper.make_node("Cast", ["steps"], ["floats"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["floats"], ["summed"], keepdims=0),
        helper.make_node("Mul", ["summed", "one"], ["scaled"]),
        helper.make_node("Equal", ["n", "three"], ["is_three"]),
        helper.make_node("Squeeze", ["is_three"], ["condition"]),
        helper.make_node(
            "If", ["condition"], ["y"], then_branch=branch("then", "scaled"), else_branch=branch("else", "summed")
        ),
    ]
    constants = [_tensor("start", 0), _tensor("step", 1), _tensor("three", [3]), _tensor("one", 2.0, np.float32)]
    return _model(nodes, [helper.make_tensor_value_info("n", TensorProto.INT64, [1])], constants, output_shape=())


def test_a_branch_selected_by_a_size_compared_with_a_constant_is_verified(tmp_path: Path) -> None:
    # Before: n was held at 3, then replaced by the Range limit's candidate in every set: the then branch never ran.
    record = optimize_with_rewrite(_size_switch(), _break_first_branch, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_a_correct_rewrite_of_a_size_switch_still_verifies(tmp_path: Path) -> None:
    record = optimize_with_rewrite(_size_switch(), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def _elementwise_switch() -> onnx.ModelProto:
    """``y = Equal(x, [10, 20, 30, 40])`` with ``x: int64[batch, 4]``: each column compared with its own constant."""
    nodes = [
        helper.make_node("Equal", ["x", "reference"], ["same"]),
        helper.make_node("Cast", ["same"], ["y"], to=TensorProto.FLOAT),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 4])]
    return _model(nodes, inputs, [_tensor("reference", [10, 20, 30, 40])], output_shape=("batch", 4))


def _change_the_last_reference(model: ir.Model) -> None:
    model.graph.initializers["reference"].const_value = ir.Tensor(np.array([10, 20, 30, 41]), name="reference")


def test_a_rewrite_wrong_for_one_column_of_an_elementwise_comparison_is_rolled_back(tmp_path: Path) -> None:
    record = optimize_with_rewrite(_elementwise_switch(), _change_the_last_reference, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail

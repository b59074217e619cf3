"""Hostile review s70: inputs drawn from the constants the graph compares them with. Each test failed before.

1. Fixed: a string input compared by ``Equal`` with constant strings (a hand-written vocabulary, a category switch
   ``Where(Equal(x, "cat"), a, b)``, the same after a ``StringNormalizer``, a ``StringConcat`` or a ``Gather`` of a
   column) was drawn from four fixed words, an integer code compared so (``Where(Equal(code, 3), ...)``, through a
   ``Cast``) as 0 or 1, and a float compared with a sentinel (skl2onnx's ``Where(Equal(X, 0), nan, X)``) as normal
   draws: no element ever equalled a constant, every row took one branch, and a rewrite that broke the other branch or
   swapped two constants verified. Such inputs are now drawn half from the constants, half as before.
2. Fixed: a one-element string an ``If`` condition compares (``If(Equal(mode, "train"))``) was never the constant;
   it holds it in even seeds' sets now and another word in odd ones, as integers did; a one-element integer compared
   with several constants holds each in turn (only the first was ever held).
3. Fixed: a boolean or integer ``If`` condition of no dims drawn true (or equal to its constant) in an odd seed's set
   was to be moved off it, but numpy made ``~array(True)`` a scalar, which ONNX Runtime refused, so it stayed true and
   the other branch never ran.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import make_inputs
from optimizer.pipeline import STATUS_APPLIED, STATUS_ROLLED_BACK
from tests.helpers import optimize_with_rewrite

_OPSETS = [helper.make_opsetid("", 20)]


def _model(nodes, inputs, initializers, output="y", output_type=TensorProto.FLOAT, output_shape=("L",)):
    outputs = [helper.make_tensor_value_info(output, output_type, list(output_shape))]
    graph = helper.make_graph(nodes, "compared", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=_OPSETS, ir_version=9)


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=object if isinstance(value, str) else None), name)


def _switch(source: str, first, second) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``y = 1 where source == first, 2 where source == second, else 0`` (floats)."""
    nodes = [
        helper.make_node("Equal", [source, "first"], ["is_first"]),
        helper.make_node("Equal", [source, "second"], ["is_second"]),
        helper.make_node("Where", ["is_second", "two", "zero"], ["other"]),
        helper.make_node("Where", ["is_first", "one", "other"], ["y"]),
    ]
    constants = [
        _const("first", first),
        _const("second", second),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    return nodes, constants


def _swap_constants(model: ir.Model) -> None:
    """The two compared constants swapped: the same output wherever no element equals either."""
    first, second = model.graph.initializers["first"], model.graph.initializers["second"]
    a, b = first.const_value.numpy().copy(), second.const_value.numpy().copy()
    first.const_value, second.const_value = ir.Tensor(b, name="first"), ir.Tensor(a, name="second")


def _break_first_branch(model: ir.Model) -> None:
    """The value taken where the first constant matches changed: wrong only on its rows."""
    model.graph.initializers["one"].const_value = ir.Tensor(np.array(5.0, np.float32), name="one")


def _keep(model: ir.Model) -> None:
    """A correct rewrite: nothing changed but the graph's name."""
    model.graph.name = "renamed"


def _string_switch() -> onnx.ModelProto:
    nodes, constants = _switch("x", "cat", "dog")
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.STRING, ["L"])], constants)


def _code_switch() -> onnx.ModelProto:
    """int32 codes cast to int64, then compared with 3 and 7."""
    nodes, constants = _switch("code64", 3, 7)
    cast = helper.make_node("Cast", ["code"], ["code64"], to=TensorProto.INT64)
    return _model([cast, *nodes], [helper.make_tensor_value_info("code", TensorProto.INT32, ["L"])], constants)


def _normalized_switch() -> onnx.ModelProto:
    """Words lowered by a ``StringNormalizer`` (dropping "the"), then compared with "cat" and "dog"."""
    nodes, constants = _switch("lowered", "cat", "dog")
    # locale "C": ONNX Runtime's default, en_US.UTF-8, fails to load where that locale is not installed.
    normalize = helper.make_node(
        "StringNormalizer", ["x"], ["lowered"], case_change_action="LOWER", stopwords=["the"], locale="C"
    )
    return _model([normalize, *nodes], [helper.make_tensor_value_info("x", TensorProto.STRING, ["L"])], constants)


def _column_switch() -> onnx.ModelProto:
    """The second column of ``table [N, 3]`` (a ``Gather`` of index 1 along axis 1), compared with "cat" and "dog"."""
    nodes, constants = _switch("column", "cat", "dog")
    gather = helper.make_node("Gather", ["table", "index"], ["column"], axis=1)
    constants.append(numpy_helper.from_array(np.array(1, np.int64), "index"))
    return _model([gather, *nodes], [helper.make_tensor_value_info("table", TensorProto.STRING, ["L", 3])], constants)


_MODELS = {
    "string": _string_switch,
    "int32 code cast": _code_switch,
    "string normalized": _normalized_switch,
    "string column": _column_switch,
}


@pytest.mark.parametrize("kind", list(_MODELS))
def test_swapping_two_compared_constants_is_rolled_back(tmp_path: Path, kind: str) -> None:
    # Before: no generated element equalled "cat"/"dog" (3/7), every row gave 0, and the swap verified.
    record = optimize_with_rewrite(_MODELS[kind](), _swap_constants, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


@pytest.mark.parametrize("kind", list(_MODELS))
def test_breaking_the_branch_a_constant_selects_is_rolled_back(tmp_path: Path, kind: str) -> None:
    record = optimize_with_rewrite(_MODELS[kind](), _break_first_branch, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


@pytest.mark.parametrize("kind", list(_MODELS))
def test_a_correct_rewrite_of_a_compared_input_still_verifies(tmp_path: Path, kind: str) -> None:
    record = optimize_with_rewrite(_MODELS[kind](), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def test_compared_strings_are_drawn_from_the_constants_and_from_none_of_them() -> None:
    drawn = make_inputs(ir.from_proto(_string_switch()), {"L": 64})["x"]
    assert {"cat", "dog"} <= set(drawn) and set(drawn) - {"cat", "dog"}


def test_normalized_strings_are_drawn_in_the_case_the_normalizer_folds_and_never_a_stopword() -> None:
    drawn = set(make_inputs(ir.from_proto(_normalized_switch()), {"L": 64})["x"])
    assert {"CAT", "DOG"} & drawn and {"cat", "dog"} & drawn
    assert not {"the", "THE"} & drawn


def _branches() -> tuple[onnx.GraphProto, onnx.GraphProto]:
    """An ``If``'s branches ``x * two`` and ``x + one`` (``x`` and the constants from the main graph)."""
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["then_y"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, ["L"])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["else_y"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, ["L"])],
    )
    return then_graph, else_graph


def _mode_model() -> onnx.ModelProto:
    """``y = If(Equal(mode, "train"), x * 2, x + 1)``: a one-element string selecting a branch."""
    then_graph, else_graph = _branches()
    nodes = [
        helper.make_node("Equal", ["mode", "train"], ["is_train_1"]),
        helper.make_node("Squeeze", ["is_train_1"], ["is_train"]),
        helper.make_node("If", ["is_train"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    constants = [
        _const("train", ["train"]),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    inputs = [
        helper.make_tensor_value_info("mode", TensorProto.STRING, [1]),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"]),
    ]
    return _model(nodes, inputs, constants)


def _break_then_branch(model: ir.Model) -> None:
    model.graph.initializers["two"].const_value = ir.Tensor(np.array(3.0, np.float32), name="two")


def _break_else_branch(model: ir.Model) -> None:
    model.graph.initializers["one"].const_value = ir.Tensor(np.array(4.0, np.float32), name="one")


@pytest.mark.parametrize("rewrite", [_break_then_branch, _break_else_branch])
def test_a_branch_a_one_element_string_selects_is_verified_both_ways(tmp_path: Path, rewrite) -> None:
    # Before: "train" was never drawn, so the then branch never ran.
    record = optimize_with_rewrite(_mode_model(), rewrite, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_a_correct_rewrite_of_a_string_switched_if_still_verifies(tmp_path: Path) -> None:
    record = optimize_with_rewrite(_mode_model(), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def test_a_one_element_string_an_if_compares_holds_the_constant_then_another_word() -> None:
    # Drawn from the constant and a word half the time each, both sets could take one branch: now they cannot.
    model = ir.from_proto(_mode_model())
    drawn = [make_inputs(model, {"L": 4}, seed=seed)["mode"][0] for seed in range(6)]
    assert drawn[0::2] == ["train"] * 3 and "train" not in drawn[1::2]


def _scalar_flag_model() -> onnx.ModelProto:
    """``y = If(flag, x * 2, x + 1)``, ``flag`` a boolean of no dims (Optimum's ``use_cache_branch`` is ``[1]``)."""
    then_graph, else_graph = _branches()
    constants = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    inputs = [
        helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"]),
    ]
    node = helper.make_node("If", ["flag"], ["y"], then_branch=then_graph, else_branch=else_graph)
    return _model([node], inputs, constants)


def test_a_scalar_flag_drawn_true_in_a_second_set_is_moved_off_it() -> None:
    # Before: ~array(True) is numpy's scalar False, which ONNX Runtime refused, so the flag was left true: with every
    # dim fixed, or the second binding's draw true, the else branch never ran.
    model = ir.from_proto(_scalar_flag_model())
    drawn = [bool(make_inputs(model, {"L": 4}, seed=seed)["flag"]) for seed in range(8)]
    assert drawn == [True, False] * 4


def test_a_one_element_code_compared_with_several_constants_holds_each_in_turn() -> None:
    # Before: the first constant only (3), in every even set; 7's branch never ran.
    model = ir.from_proto(_code_switch())
    drawn = [int(make_inputs(model, {"L": 1}, seed=seed)["code"][0]) for seed in range(4)]
    assert drawn[0::2] == [3, 7] and not {3, 7} & set(drawn[1::2])


def _replace_transformer(to_value: float) -> onnx.ModelProto:
    """skl2onnx 1.20's ``SklearnReplaceTransformer``: ``Where(Equal(X, 0), to_value, X)`` on ``X [None, 4]``."""
    nodes = [
        helper.make_node("Equal", ["X", "zero_name"], ["mask_name"]),
        helper.make_node("Where", ["mask_name", "nan_name", "X"], ["variable"]),
    ]
    constants = [
        numpy_helper.from_array(np.array([0.0], np.float32), "zero_name"),
        numpy_helper.from_array(np.array([to_value], np.float32), "nan_name"),
    ]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])]
    return _model(nodes, inputs, constants, output="variable", output_shape=(None, 4))


def _replace_with_minus_one(model: ir.Model) -> None:
    model.graph.initializers["nan_name"].const_value = ir.Tensor(np.array([-1.0], np.float32), name="nan_name")


@pytest.mark.parametrize("to_value", [np.nan, 5.0])
def test_a_float_compared_with_a_sentinel_is_drawn_as_it_too(tmp_path: Path, to_value: float) -> None:
    # Before: normal draws were never 0, the Where always took X, and a wrong replacement value verified.
    record = optimize_with_rewrite(_replace_transformer(to_value), _replace_with_minus_one, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def _suffixed_switch() -> onnx.ModelProto:
    """``StringConcat(x, "_en")`` compared with "cat_en" and "dog_en" (opset 20)."""
    nodes, constants = _switch("suffixed", "cat_en", "dog_en")
    concat = helper.make_node("StringConcat", ["x", "suffix"], ["suffixed"])
    constants.append(_const("suffix", "_en"))
    return _model([concat, *nodes], [helper.make_tensor_value_info("x", TensorProto.STRING, ["L"])], constants)


def test_a_string_concatenated_before_its_comparison_is_drawn_from_the_constants(tmp_path: Path) -> None:
    # Drawn as words joined to "_en", none was "cat_en": the swap verified.
    record = optimize_with_rewrite(_suffixed_switch(), _swap_constants, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail

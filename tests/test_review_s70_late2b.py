"""Hostile review s70 (late2b): inputs drawn from the constants the graph compares them with. Each test failed before.

1. Fixed: a one-element input compared with several constants (``Where(Equal(code, 3), a, Where(Equal(code, 7), b,
   c))``, a switch's ``Equal(mode, "train")`` and ``Equal(mode, "eval")``) holds the k-th of them in the sets of seed
   2k, but generated verification sets are of seeds 0 and 1: the second constant was never held, and a rewrite wrong
   in the branch it selects was applied as verified. Verification now adds a set holding each of the next (up to four
   constants in all).
2. Fixed: ``compared_constants`` gathered a constant table's distinct elements in a list, quadratic in its size: a
   one-element token id one-hot encoded by ``Equal(ids, arange(vocab))`` (a constant-folded export) took seconds per
   generated set at 32000 ids (minutes at 256000), where it took milliseconds before the constants were gathered.
3. Fixed (a regression of the change reviewed): a one-element float compared with a constant (a temperature's
   ``Where(Equal(t, 0), v, v / t)``) was mixed as longer floats are, the constant half the time, at random: in a model
   of fixed dims, seed 0 drew ``t = 0``, the only set ran the greedy branch alone, and a rewrite wrong in the sampled
   one was applied as verified (drawn normal before, it was rolled back). It is held as integers are now: the constant
   in the first set, and a set drawn otherwise added.
4. Fixed: a bfloat16 input compared with a constant was never drawn as it (the constant's elements, of ml_dtypes'
   kind "V", were taken for no number), as the README says floats are.
"""

from __future__ import annotations

import time
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import make_inputs
from optimizer.pipeline import STATUS_APPLIED, STATUS_ROLLED_BACK
from tests.helpers import optimize_with_rewrite
from tests.test_review_s70_strkeys import _model, _switch


def _one_element_switch(kind: str, dim) -> onnx.ModelProto:
    """``y = v * (1 where source is the first constant, 2 where the second, else 0)``, ``source`` of one element: an
    int32 code cast to int64 (3, 7) or a string ("train", "eval")."""
    first, second = (3, 7) if kind == "code" else ("train", "eval")
    nodes, constants = _switch("source" if kind == "string" else "code64", first, second)
    nodes[-1].output[0] = "selected"
    nodes.append(helper.make_node("Mul", ["selected", "v"], ["y"]))
    if kind == "code":
        nodes.insert(0, helper.make_node("Cast", ["source"], ["code64"], to=TensorProto.INT64))
    source = helper.make_tensor_value_info("source", TensorProto.INT32 if kind == "code" else TensorProto.STRING, [1])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [dim])
    return _model(nodes, [source, v], constants, output_shape=(dim,))


def _break_second_branch(model: ir.Model) -> None:
    """The value taken where the second constant matches changed: wrong only where ``source`` is it."""
    model.graph.initializers["two"].const_value = ir.Tensor(np.array(5.0, np.float32), name="two")


def _keep(model: ir.Model) -> None:
    model.graph.name = "renamed"


@pytest.mark.parametrize(("kind", "dim"), [("code", 4), ("code", "L"), ("string", 4)])
def test_the_branch_a_second_compared_constant_selects_is_verified(tmp_path: Path, kind: str, dim) -> None:
    # Before: seed 0's set held the first constant, seed 1's a value none of them; 7 ("eval") never ran.
    record = optimize_with_rewrite(_one_element_switch(kind, dim), _break_second_branch, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_a_correct_rewrite_of_a_one_element_switch_still_verifies(tmp_path: Path) -> None:
    record = optimize_with_rewrite(_one_element_switch("code", 4), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def test_a_one_element_id_one_hot_encoded_against_a_constant_vocabulary_is_generated_quickly() -> None:
    # Before: 60000 ids gathered one by one into a list, each checked against all before it: about 17 s; now 0.3 s.
    vocabulary = 60000
    nodes = [
        helper.make_node("Unsqueeze", ["ids", "last"], ["column"]),
        helper.make_node("Equal", ["column", "vocabulary"], ["one_hot"]),
        helper.make_node("Cast", ["one_hot"], ["y"], to=TensorProto.FLOAT),
    ]
    constants = [
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
        numpy_helper.from_array(np.arange(vocabulary, dtype=np.int64), "vocabulary"),
    ]
    model = _model(
        nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 1])], constants, output_shape=(1, 1, None)
    )
    start = time.perf_counter()
    drawn = [int(make_inputs(ir.from_proto(model), seed=seed)["ids"][0, 0]) for seed in (0, 2)]
    assert time.perf_counter() - start < 4, "quadratic in the vocabulary's size"
    assert drawn == [0, 1]  # each in turn, in the order the table holds them


def _temperature(dim) -> onnx.ModelProto:
    """``y = v where t == 0 (greedy), v / t * gain elsewhere``, ``t: float[1]``."""
    nodes = [
        helper.make_node("Equal", ["t", "zero"], ["greedy"]),
        helper.make_node("Div", ["v", "t"], ["divided"]),
        helper.make_node("Mul", ["divided", "gain"], ["sampled"]),
        helper.make_node("Where", ["greedy", "v", "sampled"], ["y"]),
    ]
    constants = [
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "gain"),
    ]
    inputs = [
        helper.make_tensor_value_info("t", TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info("v", TensorProto.FLOAT, [dim]),
    ]
    return _model(nodes, inputs, constants, output_shape=(dim,))


def _break_sampled_branch(model: ir.Model) -> None:
    model.graph.initializers["gain"].const_value = ir.Tensor(np.array(2.0, np.float32), name="gain")


def test_the_branch_a_one_element_float_takes_off_its_constant_is_verified(tmp_path: Path) -> None:
    # Before: with every dim fixed, seed 0 drew t = 0 and the sampled branch never ran.
    record = optimize_with_rewrite(_temperature(4), _break_sampled_branch, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_a_one_element_float_compared_with_a_constant_holds_it_then_another_value() -> None:
    model = ir.from_proto(_temperature(4))
    drawn = [float(make_inputs(model, seed=seed)["t"][0]) for seed in range(4)]
    assert drawn[0::2] == [0.0, 0.0] and 0.0 not in drawn[1::2]


def test_a_bfloat16_input_compared_with_a_constant_is_drawn_as_it_too() -> None:
    nodes = [helper.make_node("Equal", ["x", "half"], ["y"])]
    half = numpy_helper.from_array(np.array(0.5, dtype=ml_dtypes.bfloat16), "half")
    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["L"])
    model = _model(nodes, [x], [half], output_type=TensorProto.BOOL)
    drawn = make_inputs(ir.from_proto(model), {"L": 16})["x"].astype(np.float32)
    assert 0.5 in drawn and (drawn != 0.5).any()

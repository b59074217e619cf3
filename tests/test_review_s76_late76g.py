"""Review s76 (late76g): ids a ``Concat`` joins to scores as review s76 xfix3 reads them, through a ``Slice``,
``Gather`` or ``Expand`` on the way out and in an ``If``'s branches (``optimizer.class_scores.joined_through``,
``_joining``; ``optimizer.verify._joined_index``, ``_ids_beside_differ``).

1. **An ``If`` of a constant condition whose branches join otherwise** (``If(True)`` returning
   ``Concat(top, ids, top)`` from one branch, ``Concat(ids, top, top)`` from the other): not read, the float tolerance
   held the whole output, every id one class off past 10,000 classes verified, and the correct result of
   ``fold-constants``, which inlines the branch that runs, rolled back for a flip at a tie. The branch that runs is
   read, where it joins values computed before the ``If``; a condition a caller may override is no constant.
2. **Float ids sliced, gathered, expanded or transposed on the way out, no ``Concat`` joining them**
   (``Slice(Cast(ArgMax))``): not among ``argmax_outputs``, held by the float tolerance, one class off past 10,000
   classes verified; and a flip at a tie of them sliced, gathered or expanded, not read from their integers
   (``_cast_integers``), rolled back. Each value is still an id: held exactly, and its flips read from the
   ``ArgMax``'s floats.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.class_scores import concatenated_ids
from optimizer.verify import Verifier
from tests.test_review_s73_floatids import _TIED_X, _WIDE_X, _flipped_at_the_tie, _tied, _wide

_N = helper.make_node
_F = TensorProto.FLOAT
_SETS = [_WIDE_X, {"x": _WIDE_X["x"][:3]}]
_I = np.int64
_JOINED = {True: ["top", "ids", "top"], False: ["ids", "top", "top"]}  # by the branch: then, else


def _constant_if(
    weight: np.ndarray, offset: float, runs: bool, *, folded: bool = False, computed: bool = False
) -> ir.Model:
    """``out``: an ``If`` whose condition is the constant ``runs`` (an initializer, or ``Not`` of one where
    ``computed``) returning ``_JOINED[True]`` from its then branch and ``_JOINED[False]`` from its else branch, of each
    row's ``ArgMax`` id of ``x @ weight`` (cast to float, offset by ``offset``: 0 the original's) and its top score;
    the branch that runs inlined where ``folded`` (as constant folding leaves it)."""
    nodes = [
        _N("MatMul", ["x", "W"], ["logits"]),
        _N("ArgMax", ["logits"], ["picked"], axis=1, keepdims=1),
        _N("Cast", ["picked"], ["f"], to=_F),
        _N("Add", ["f", "offset"], ["ids"]),
        _N("ReduceMax", ["logits"], ["top"], axes=[1], keepdims=1),
    ]
    if folded:
        nodes.append(_N("Concat", _JOINED[runs], ["out"], axis=1))
    else:
        branches = {
            f"{name}_branch": helper.make_graph(
                [_N("Concat", _JOINED[name == "then"], [f"joined_{name}"], axis=1)],
                name,
                [],
                [helper.make_tensor_value_info(f"joined_{name}", _F, None)],
            )
            for name in ("then", "else")
        }
        nodes += [
            *([_N("Not", ["written"], ["condition"])] if computed else []),
            _N("If", ["condition"], ["out"], **branches),
        ]
    constants = {"W": weight, "offset": np.array(offset, np.float32)}
    constants["written" if computed else "condition"] = np.array(runs != computed)
    graph = helper.make_graph(
        nodes,
        "constant_if",
        [helper.make_tensor_value_info("x", _F, ["batch", 4])],
        [helper.make_tensor_value_info("out", _F, None)],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


@pytest.mark.parametrize(("runs", "computed"), [(True, False), (False, True)], ids=["then, written", "else, computed"])
def test_ids_joined_in_the_branch_a_constant_condition_runs_one_class_off_are_rolled_back(runs, computed):
    verifier = Verifier(_constant_if(_wide(), 0.0, runs, computed=computed), _SETS)
    assert verifier.check(_constant_if(_wide(), 0.0, runs, folded=True)).ok
    for wrong in (_constant_if(_wide(), 1.0, runs, computed=computed), _constant_if(_wide(), 1.0, runs, folded=True)):
        result = verifier.check(wrong)
        assert not result.ok  # verified: 1 is within rtol of ids past 19,950
        assert "the ids of output 'out'" in result.first_failure


def test_a_tie_flip_of_an_if_of_a_constant_condition_folded_away_still_verifies():
    verifier = Verifier(_constant_if(_tied(), 0.0, True), [_TIED_X])
    result = verifier.check(_flipped_at_the_tie(_constant_if(_tied(), 0.0, True, folded=True)))
    assert result.ok, result.first_failure  # rolled back: 'out' max abs error 3 exceeds rtol
    assert result.integer_flips


def test_a_condition_a_caller_may_override_is_no_constant():
    model = _constant_if(_wide(), 0.0, True)
    model.graph.inputs.append(model.graph.initializers["condition"])
    assert "out" not in concatenated_ids(model)


# How the float ids ``ids`` (``[batch, 1]``) reach ``out``: the node, and its constants.
_PICKED = {
    "sliced": (
        _N("Slice", ["ids", "starts", "ends"], ["out"]),
        {"starts": np.array([1], _I), "ends": np.array([3], _I)},
    ),
    "gathered": (_N("Gather", ["ids", "rows"], ["out"]), {"rows": np.array([2, 0, -1], _I)}),
    "expanded": (_N("Expand", ["ids", "shape"], ["out"]), {"shape": np.array([2, 1, 3], _I)}),
    "transposed": (_N("Transpose", ["ids"], ["out"]), {}),
}


def _picked_ids(weight: np.ndarray, offset: float, tail: str) -> ir.Model:
    """``out``: each row's ``ArgMax`` id of ``x @ weight``, cast to float and offset by ``offset`` (0: the original's),
    through ``_PICKED[tail]``."""
    node, constants = _PICKED[tail]
    graph = helper.make_graph(
        [
            _N("MatMul", ["x", "W"], ["logits"]),
            _N("ArgMax", ["logits"], ["picked"], axis=1, keepdims=1),
            _N("Cast", ["picked"], ["f"], to=_F),
            _N("Add", ["f", "offset"], ["ids"]),
            node,
        ],
        "picked_ids",
        [helper.make_tensor_value_info("x", _F, ["batch", 4])],
        [helper.make_tensor_value_info("out", _F, None)],
        [
            numpy_helper.from_array(value, name)
            for name, value in {**constants, "W": weight, "offset": np.array(offset, np.float32)}.items()
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


@pytest.mark.parametrize("tail", sorted(_PICKED))
def test_float_ids_picked_on_the_way_out_one_class_off_are_rolled_back(tail):
    verifier = Verifier(_picked_ids(_wide(), 0.0, tail), _SETS)
    assert verifier.check(_picked_ids(_wide(), 0.0, tail)).ok
    result = verifier.check(_picked_ids(_wide(), 1.0, tail))
    assert not result.ok  # verified: 1 is within rtol of ids past 19,950
    assert "exact match required" in result.first_failure


def test_a_tie_flip_of_float_ids_gathered_on_the_way_out_still_verifies():
    model = _picked_ids(_tied(), 0.0, "gathered")
    result = Verifier(model, [_TIED_X]).check(_flipped_at_the_tie(model))
    assert result.ok, result.first_failure  # rolled back: values differ by up to 3 (exact match required)
    assert result.integer_flips

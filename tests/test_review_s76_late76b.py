"""Review s76 (late76b): ids a ``Concat`` joins to scores, after review s76 xfix traced them through ops that move
the joined values on the way out (``optimizer.class_scores.concatenated_ids``, ``_picked_along``;
``optimizer.verify._as_joined``, ``_confirmed_widths``).

1. **Ids moved before they are joined** (``Concat(Reshape(top), Reshape(ids), Reshape(top))``, the same values as
   ``Reshape(Concat(top, ids, top))``; a ``Flatten`` or ``Transpose`` of each; or ids picked along 1 joined along 0):
   the ids were
   read only where their picker keeps the joined axis (or an ``Unsqueeze`` adds it), so they were not found, the
   float tolerance held the whole output, and every id one class off past 10,000 classes verified; and a correct
   flip at a tie by a result that moves the ``Reshape`` before the ``Concat`` was rolled back (its ids not found, no
   tie excuse). Each value of such an input is an id, in the picker's order, flat: how many lie along the axis is
   read on each set's run (``IdsBeside.sized_by_run``).
2. **A ``Concat`` cast on its way out** (``Cast(Concat(top, ids))`` to float16, the same as joining ids cast to
   float16, which was read): not read, the output was held by float16's tolerance of 1e-2, ids past 100 classes one
   class off verified, and a correct flip at a tie was rolled back. A ``Cast`` keeps each value in place: the
   ``Concat`` is read through it as through a ``Reshape``.
3. **An int8 twin with no checkpoint to cut at**: where ONNX Runtime fuses an all-ONNX int8 result into integer
   kernels end to end, it is proven with its rewrites off (``Verifier._check_integer_end_to_end``), which held only
   ids outputs exactly: ids joined to scores were held by the int8 twin's rtol of 5e-3, ids past 200 classes one class
   off verified. They are held at their positions there too, and a flip of them as deployed differs in kind.
4. **Left unread here, read since review s76 xfix3** (``tests/test_review_s76_xfix3.py``): a ``Concat`` sliced or
   gathered on its way out, a ``Concat`` in an ``If``'s branch, and against a twin, a flip at a tie of ids transposed
   before they are joined.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.protocol import Twin
from optimizer.verify import Verifier
from tests.test_review_s73_floatids import _TIED_X, _WIDE_X, _flipped_at_the_tie, _tied, _wide

_N = helper.make_node
_F = TensorProto.FLOAT

# How ``top`` and ``ids`` (each ``[batch, 1]``) are joined into ``out``: the nodes, from ``top`` and ``ids``.
_FLAT = np.array([-1], np.int64)
_JOINS = {
    "reshaped before": [
        _N("Reshape", ["top", "flat"], ["t"]),
        _N("Reshape", ["ids", "flat"], ["i"]),
        _N("Concat", ["t", "i", "t"], ["out"], axis=0),
    ],
    "flattened before": [
        _N("Flatten", ["top"], ["t"], axis=0),
        _N("Flatten", ["ids"], ["i"], axis=0),
        _N("Concat", ["t", "i", "t"], ["out"], axis=1),
    ],
    "joined along another axis": [_N("Concat", ["top", "ids", "top"], ["out"], axis=0)],
    "reshaped after": [_N("Concat", ["top", "ids", "top"], ["j"], axis=0), _N("Reshape", ["j", "flat"], ["out"])],
    "cast to float16 after": [
        _N("Concat", ["top", "ids", "top"], ["j"], axis=1),
        _N("Cast", ["j"], ["out"], to=TensorProto.FLOAT16),
    ],
    "transposed before": [
        _N("Transpose", ["top"], ["t"], perm=[1, 0]),
        _N("Transpose", ["ids"], ["i"], perm=[1, 0]),
        _N("Concat", ["t", "i", "t"], ["out"], axis=1),
    ],
    "sliced after": [_N("Concat", ["top", "ids", "top"], ["j"], axis=1), _N("Slice", ["j", "zero", "two"], ["out"])],
}


def _joined(weight: np.ndarray, join: str, wrong_at: int | None = None) -> ir.Model:
    """``out``: each row's ``ArgMax`` id of ``x @ weight`` (kept axis 1) cast to float beside its top score, joined
    per ``_JOINS[join]``; no shape recorded but the input's. ``wrong_at``: every id one class off where the batch is
    ``wrong_at``."""
    nodes = [
        _N("MatMul", ["x", "W"], ["logits"]),
        _N("ArgMax", ["logits"], ["picked"], axis=1, keepdims=1),
        _N("Cast", ["picked"], ["ids" if wrong_at is None else "f"], to=_F),
        _N("ReduceMax", ["logits"], ["top"], axes=[1], keepdims=1),
    ]
    constants = {"W": weight, "flat": _FLAT, "zero": np.array([0], np.int64), "two": np.array([2], np.int64)}
    if wrong_at is not None:
        nodes += [
            _N("Shape", ["x"], ["shape"]),
            _N("Gather", ["shape", "zero_index"], ["batch"]),
            _N("Equal", ["batch", "wrong_at"], ["wrong"]),
            _N("Cast", ["wrong"], ["offset"], to=_F),
            _N("Add", ["f", "offset"], ["ids"]),
        ]
        constants.update(zero_index=np.array(0, np.int64), wrong_at=np.array(wrong_at, np.int64))
    nodes += _JOINS[join]
    graph = helper.make_graph(
        nodes,
        "joined",
        [helper.make_tensor_value_info("x", _F, ["batch", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT16 if "float16" in join else _F, None)],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


# Two sets of other batches: the ids' span along the joined axis is the batch, read on each set's own run.
_SETS = [_WIDE_X, {"x": _WIDE_X["x"][:3]}]


@pytest.mark.parametrize(
    "join", ["reshaped before", "flattened before", "transposed before", "joined along another axis"]
)
def test_ids_moved_before_they_are_joined_one_class_off_are_rolled_back(join):
    verifier = Verifier(_joined(_wide(), join), _SETS)
    assert verifier.check(_joined(_wide(), join)).ok
    for wrong_at, on in ((8, "input set 1"), (3, "input set 2")):
        result = verifier.check(_joined(_wide(), join, wrong_at))
        assert not result.ok, wrong_at  # verified: 1 is within rtol of ids past 19,950
        assert "the ids of output 'out'" in result.first_failure and on in result.first_failure


def test_ids_beside_scores_one_class_off_fail_an_int8_twin_with_no_checkpoint_to_cut_at():
    """An all-ONNX int8 result whose twin's checkpoints are none it can be cut at (ONNX Runtime fuses a CNN's QDQ into
    integer kernels) is proven with ONNX Runtime's rewrites off (``Verifier._check_integer_end_to_end``)."""
    verifier = Verifier(_joined(_wide(), "reshaped after"), _SETS)
    twin = Twin(model=_joined(_wide(), "reshaped after"), kind="int8", description="it", checkpoints=("fused",))
    assert verifier.check_twin(_joined(_wide(), "reshaped after"), twin).ok
    for wrong_at, on in ((8, "input set 1"), (3, "input set 2")):
        result = verifier.check_twin(_joined(_wide(), "reshaped after", wrong_at), twin)
        assert not result.ok, wrong_at  # verified: 1 is within the int8 twin's rtol of 5e-3 of ids past 200
        assert "with ONNX Runtime's rewrites off" in result.first_failure
        assert f"not its twin either, on {on}: the ids of output 'out'" in result.first_failure


def _hundreds() -> np.ndarray:
    """1,500 classes, the last 50 scored: every id is past 1,450, whole in float16 (to 2,048), one class off within
    its rtol of 1e-2."""
    weight = np.zeros((4, 1500), np.float32)
    weight[:, -50:] = np.random.default_rng(0).standard_normal((4, 50))
    return weight


def test_ids_beside_scores_cast_to_float16_on_the_way_out_one_class_off_are_rolled_back():
    verifier = Verifier(_joined(_hundreds(), "cast to float16 after"), _SETS)
    assert verifier.check(_joined(_hundreds(), "cast to float16 after")).ok
    for wrong_at, on in ((8, "input set 1"), (3, "input set 2")):
        result = verifier.check(_joined(_hundreds(), "cast to float16 after", wrong_at))
        assert not result.ok, wrong_at  # verified: 1 is within float16's rtol of ids past 1,450
        assert "the ids of output 'out'" in result.first_failure and on in result.first_failure


@pytest.mark.parametrize("against", ["the original", "a twin"])
@pytest.mark.parametrize(
    ("original", "result"), [("reshaped after", "reshaped before"), ("cast to float16 after", "cast to float16 after")]
)
def test_a_tie_flip_of_ids_moved_or_cast_around_the_concat_still_verifies(original, result, against):
    model = _joined(_tied(), original)
    candidate = _flipped_at_the_tie(_joined(_tied(), result))
    verifier = Verifier(model, [_TIED_X])
    assert not np.array_equal(verifier.references[0]["out"], Verifier(candidate, [_TIED_X]).references[0]["out"])
    if against == "a twin":
        checked = verifier.check_twin(candidate, Twin(model=model, kind="float32", description="it"))
    else:
        checked = verifier.check(candidate)
    assert checked.ok, checked.first_failure  # rolled back: 'out' max abs error 3 exceeds rtol (the ids not found)
    assert checked.integer_flips


def test_a_tie_flip_of_ids_transposed_before_the_concat_still_verifies():
    model = _joined(_tied(), "transposed before")
    result = Verifier(model, [_TIED_X]).check(_flipped_at_the_tie(model))
    assert result.ok, result.first_failure  # rolled back: 'out' max abs error 3 exceeds rtol=0.0001
    assert result.integer_flips


def test_a_tie_flip_of_ids_transposed_before_the_concat_still_passes_its_twin():
    model = _joined(_tied(), "transposed before")
    twin = Twin(model=model, kind="float32", description="it")
    result = Verifier(model, [_TIED_X]).check_twin(_flipped_at_the_tie(model), twin)
    assert result.ok, result.first_failure  # rolled back: the ids of output 'out' differ by up to 3


def test_ids_beside_scores_sliced_on_the_way_out_one_class_off_are_rolled_back():
    result = Verifier(_joined(_wide(), "sliced after"), [_WIDE_X]).check(_joined(_wide(), "sliced after", 8))
    assert not result.ok  # verified: 1 is within rtol of ids past 19,950


def _branched(wrong: bool) -> ir.Model:
    """``out``: ``Concat(top, ids, top)`` of ``_joined`` computed in an ``If``'s branches (both alike), every id one
    class off where ``wrong``."""
    branches = {}
    for name in ("then", "else"):
        branches[f"{name}_branch"] = helper.make_graph(
            [_N("Concat", ["top", "ids", "top"], [f"joined_{name}"], axis=1)],
            name,
            [],
            [helper.make_tensor_value_info(f"joined_{name}", _F, None)],
        )
    graph = helper.make_graph(
        [
            _N("MatMul", ["x", "W"], ["logits"]),
            _N("ArgMax", ["logits"], ["picked"], axis=1, keepdims=1),
            _N("Cast", ["picked"], ["f"], to=_F),
            _N("Add", ["f", "offset"], ["ids"]),
            _N("ReduceMax", ["logits"], ["top"], axes=[1], keepdims=1),
            _N("ReduceMax", ["x"], ["largest"], keepdims=0),
            _N("IsNaN", ["largest"], ["nan"]),
            _N("If", ["nan"], ["out"], **branches),
        ],
        "branched",
        [helper.make_tensor_value_info("x", _F, ["batch", 4])],
        [helper.make_tensor_value_info("out", _F, None)],
        [numpy_helper.from_array(_wide(), "W"), numpy_helper.from_array(np.array(float(wrong), np.float32), "offset")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def test_ids_beside_scores_joined_in_an_if_branch_one_class_off_are_rolled_back():
    verifier = Verifier(_branched(False), [_WIDE_X])
    assert verifier.check(_branched(False)).ok
    assert not verifier.check(_branched(True)).ok  # verified: 1 is within rtol of ids past 19,950

"""Review s76 (xfix): ids a ``Concat`` joins to scores in an output that ops moving its values pass on
(``optimizer.class_scores.concatenated_ids`` through ``joined_through``; ``optimizer.verify._as_joined``).

``out = Flatten(Concat(e, ids, e))`` (or a ``Reshape``, a ``Transpose``, an ``Unsqueeze``, or a ``Transpose`` then a
``Reshape``): the ``Concat`` was read through ``Identity`` and ``Dropout`` alone, so its ids were not found and the
float tolerance held the whole output; a rewrite giving every id one class off past 10,000 classes verified, in the
exact check, an approximate pass's twin check (end to end and segment by segment) and the exact check as deployed,
and a correct flip of such ids at a tie was rolled back (the strict xfail of review s75 xfix2). The ``Concat``'s rank
and the shapes each op gives are now read on each input set's run, and the ids' positions traced through them.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import verify
from optimizer.protocol import Twin
from optimizer.verify import VerificationResult, Verifier
from tests.test_review_s73_floatids import _TIED_X, _WIDE_X, _flipped_at_the_tie, _tied, _wide
from tests.test_review_s75_xfix2 import _unranked

_N = helper.make_node

# The ops after the ``Concat``, each as (op, attributes, a shape input where it takes one).
_CLOSINGS = {
    "flatten": [("Flatten", {"axis": 0}, None)],
    "reshape": [("Reshape", {}, [-1])],
    "transpose": [("Transpose", {}, None)],
    "unsqueeze": [("Unsqueeze", {}, [0])],
    "transpose then reshape": [("Transpose", {"perm": [1, 0]}, None), ("Reshape", {}, [1, -1])],
}


def _moved(closing: str, wrong_at: int | None, rounded: bool = False) -> ir.Model:
    """``out``: ``Concat(e, ids, e)`` along 1, each row's ``ArgMax`` id of ``x @ W`` (20,000 classes) cast to float
    between two copies of ``e = Relu(extra [batch, n])``, passed through ``_CLOSINGS[closing]``; no shape recorded
    but the inputs'. A rewrite of it (``wrong_at`` given) gives every id one class off where ``n`` is ``wrong_at``.
    ``rounded``: ``e`` rounded (a decision: an exact result is run as deployed too)."""
    nodes = [
        _N("MatMul", ["x", "W"], ["logits"]),
        _N("ArgMax", ["logits"], ["picked"], axis=1, keepdims=1),
        _N("Cast", ["picked"], ["ids" if wrong_at is None else "f"], to=TensorProto.FLOAT),
        _N("Relu", ["extra"], ["unrounded" if rounded else "e"]),
        *([_N("Round", ["unrounded"], ["e"])] if rounded else []),
    ]
    constants = [numpy_helper.from_array(_wide(), "W")]
    if wrong_at is not None:
        nodes += [
            _N("Shape", ["extra"], ["shape"]),
            _N("Gather", ["shape", "one"], ["n"]),
            _N("Equal", ["n", "wrong_at"], ["wrong"]),
            _N("Cast", ["wrong"], ["offset"], to=TensorProto.FLOAT),
            _N("Add", ["f", "offset"], ["ids"]),
        ]
        constants += [
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array(wrong_at, np.int64), "wrong_at"),
        ]
    nodes.append(_N("Concat", ["e", "ids", "e"], ["joined0"], axis=1))
    steps = _CLOSINGS[closing]
    for index, (op, attributes, shape) in enumerate(steps):
        inputs = [f"joined{index}"]
        if shape is not None:
            constants.append(numpy_helper.from_array(np.array(shape, np.int64), f"shape{index}"))
            inputs.append(f"shape{index}")
        output = "out" if index == len(steps) - 1 else f"joined{index + 1}"
        nodes.append(_N(op, inputs, [output], **attributes))
    graph = helper.make_graph(
        nodes,
        "moved",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["batch", "n"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        constants,
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def _set(width: int) -> dict[str, np.ndarray]:
    return {**_WIDE_X, "extra": np.ones((len(_WIDE_X["x"]), width), np.float32)}


_VERIFIERS: dict[str, Verifier] = {}


def _verifier(closing: str) -> Verifier:
    """The original of ``closing`` on two sets of other widths (3, 5), built once a module."""
    if closing not in _VERIFIERS:
        _VERIFIERS[closing] = Verifier(_moved(closing, None), [_set(3), _set(5)])
    return _VERIFIERS[closing]


@pytest.mark.parametrize("closing", sorted(_CLOSINGS))
def test_ids_beside_scores_moved_on_the_way_out_one_class_off_are_rolled_back(closing):
    verifier = _verifier(closing)
    assert verifier.check(_moved(closing, None)).ok
    for wrong_at, on in ((3, "input set 1"), (5, "input set 2")):
        result = verifier.check(_moved(closing, wrong_at))
        assert not result.ok, (closing, wrong_at)  # verified: 1 is within rtol of ids past 19,950
        assert "the ids of output 'out'" in result.first_failure and on in result.first_failure


@pytest.mark.parametrize("checkpoints", [(), ("logits",)], ids=["end to end", "by segment"])
def test_ids_beside_scores_flattened_one_class_off_their_twin_fail_it(checkpoints):
    twin = Twin(_moved("flatten", None), "int8", "the input", checkpoints=checkpoints)
    verifier = _verifier("flatten")
    assert verifier.check_twin(_moved("flatten", None), twin).ok
    for wrong_at, on in ((3, "input set 1"), (5, "input set 2")):
        result = verifier.check_twin(_moved("flatten", wrong_at), twin)
        assert not result.ok, wrong_at  # verified: 1 is within the twin's rtol of ids past 19,950
        assert "the ids of output 'out'" in result.first_failure and on in result.first_failure
        assert ("segment by segment" in result.first_failure) == bool(checkpoints)


def test_ids_beside_scores_moved_and_rounded_one_class_off_are_rolled_back_as_deployed():
    model = _moved("transpose then reshape", None, rounded=True)
    assert verify.rounded_decisions(model) == ["Round"]
    verifier = Verifier(model, [_set(3), _set(5)])
    assert verifier.check(model).ok
    # Run as deployed alone (as written it fails first): the ids must be held there too, on each set's own shapes.
    for wrong_at, on in ((3, "input set 1"), (5, "input set 2")):
        result = verifier._decided_as_deployed(
            _moved("transpose then reshape", wrong_at, rounded=True), VerificationResult()
        )
        assert not result.ok, wrong_at  # verified: held by the float tolerance there
        assert "as deployed" in result.first_failure and "the ids of output 'out'" in result.first_failure
        assert on in result.first_failure


def test_ids_beside_scores_flattened_flipped_at_a_tie_still_verify():
    model = _unranked(_tied(), 0.0, "flattened")
    candidate = _flipped_at_the_tie(model)
    verifier = Verifier(model, [_TIED_X])
    assert not np.array_equal(verifier.references[0]["out"], Verifier(candidate, [_TIED_X]).references[0]["out"])
    result = verifier.check(candidate)
    assert result.ok, result.first_failure  # rolled back: 'out' max abs error 3 exceeds rtol=0.0001
    assert result.integer_flips


def test_ids_beside_scores_flattened_flipped_at_a_tie_still_pass_their_twin():
    model = _unranked(_tied(), 0.0, "flattened")
    twin = Twin(model=model, kind="float32", description="it")
    result = Verifier(model, [_TIED_X]).check_twin(_flipped_at_the_tie(model), twin)
    assert result.ok, result.first_failure  # rolled back: 'out' max abs error 3 exceeds the twin's rtol
    assert result.integer_flips


def _renamed_concat(model: ir.Model) -> ir.Model:
    """``model`` with its ``Concat``'s output renamed (as a pass may): the base's rank of it is not that name's."""
    for node in model.graph:
        if node.op_type == "Concat":
            node.outputs[0].name = "renamed"
    return model


@pytest.mark.parametrize("against", ["the original", "a twin"])
def test_ids_beside_scores_flattened_flipped_at_a_tie_by_a_result_that_renames_the_concat_still_verify(against):
    model = _unranked(_tied(), 0.0, "flattened")
    candidate = _renamed_concat(_flipped_at_the_tie(model))
    verifier = Verifier(model, [_TIED_X])
    if against == "a twin":
        result = verifier.check_twin(candidate, Twin(model=model, kind="float32", description="it"))
    else:
        result = verifier.check(candidate)
    assert result.ok, result.first_failure  # rolled back: the result's ids not found at the base's ranks, no excuse
    assert result.integer_flips


def test_ids_are_traced_where_the_shapes_lead_to_the_output_and_refused_where_not():
    """``_as_joined`` undoes a ``Transpose`` then a ``Reshape``: the ``Concat``'s ``[2, 3]`` back from ``[1, 6]``; an
    output of a size the run's shapes do not lead to, or shapes not read, give None (held by the float tolerance)."""
    beside = verify.concatenated_ids(_moved("transpose then reshape", None), {"joined0": 2})["out"]
    assert beside.axis == 1 and [ids is not None for ids in beside.ids] == [False, True, False]
    joined = np.arange(6.0).reshape(2, 3)
    traced = beside._replace(shapes=((2, 3), (3, 2)))
    out = joined.T.reshape(1, -1)
    np.testing.assert_array_equal(verify._as_joined(traced, out), joined)
    assert verify._as_joined(traced, out[:, :5]) is None
    assert verify._as_joined(beside, out) is None  # no run read: no shapes

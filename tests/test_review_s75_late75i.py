"""Review s75 late75i: ids a ``Concat`` joins between values of sizes known only at run time, placed on each input set
by that set's own run (``optimizer.verify._confirmed_widths``, ``Verifier._beside_on``) in every check that compares
on the sets, not the exact check as written alone: an approximate pass's twin check placed them by the first set's
run (one class off on a second set of other widths verified), and so did the exact check as deployed; the twin check
segment by segment held them by the tolerance (one class off on any set verified there)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from optimizer import verify
from optimizer.protocol import Twin
from optimizer.verify import Verifier
from tests.test_review_s73_floatids import _WIDE_X
from tests.test_review_s75_truth import _ids_between


def _set(width: int) -> dict[str, np.ndarray]:
    return {**_WIDE_X, "extra": np.ones((len(_WIDE_X["x"]), width), np.float32)}


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return Verifier(_ids_between(None), [_set(3), _set(5)])


def test_twin_check_ids_one_class_off_on_a_second_set_of_other_widths_are_rolled_back(verifier):
    twin = Twin(_ids_between(None), "float32", "the input")
    assert verifier.check_twin(_ids_between(None), twin).ok
    result = verifier.check_twin(_ids_between(5), twin)  # right on the first set (width 3), one class off on the second
    assert not result.ok
    assert "the ids of output 'out'" in result.first_failure and "input set 2" in result.first_failure


def _rounded(wrong_at: int | None) -> ir.Model:
    """``_ids_between`` with its joined values rounded (``Round(Relu(extra))``): a decision, so a result exact as
    written is run as deployed too."""
    proto = ir.to_proto(_ids_between(wrong_at))
    index = next(index for index, node in enumerate(proto.graph.node) if node.op_type == "Relu")
    proto.graph.node[index].output[0] = "unrounded"
    proto.graph.node.insert(index + 1, helper.make_node("Round", ["unrounded"], ["e"]))
    return ir.from_proto(proto)


def test_the_check_as_deployed_places_the_ids_by_each_sets_own_widths(monkeypatch):
    assert verify.rounded_decisions(_rounded(None)) == ["Round"]
    verifier = Verifier(_rounded(None), [_set(3), _set(5)])
    placed: list[tuple[int, int]] = []  # (the output's width, the widths the ids were placed by), each comparison
    compare = verify.compare_outputs

    def spy(reference, outputs, *args: Any, **kwargs: Any):
        beside = kwargs.get("beside", args[4] if len(args) > 4 else None)
        if beside and "out" in beside and "out" in reference:
            placed.append((np.shape(reference["out"])[1], sum(width or 0 for width in beside["out"].widths)))
        return compare(reference, outputs, *args, **kwargs)

    monkeypatch.setattr(verify, "compare_outputs", spy)
    assert verifier.check(_rounded(None)).ok
    assert len(placed) == 4  # as written and as deployed, on each set
    assert all(width == widths for width, widths in placed), placed


def test_no_input_set_reads_no_widths(monkeypatch):
    runs: list[int] = []
    collect = verify.collect_values

    def spy(model, names, batches):
        runs.append(len(batches))
        return collect(model, names, batches)

    monkeypatch.setattr(verify, "collect_values", spy)
    Verifier(_ids_between(None), [])
    assert runs == []  # a session built to run nothing


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_twin_check_by_segment_holds_the_ids_at_their_positions(verifier, kind):
    # A checkpoint at the logits: the ids one class off fail end to end, and the check goes segment by segment.
    twin = Twin(_ids_between(None), kind, "the input", checkpoints=("logits",))
    assert verifier.check_twin(_ids_between(None), twin).ok
    for wrong_at, on in ((3, "input set 1"), (5, "input set 2")):
        result = verifier.check_twin(_ids_between(wrong_at), twin)
        assert not result.ok
        assert "segment by segment" in result.first_failure and "the ids of output 'out'" in result.first_failure
        assert on in result.first_failure

"""Review s68 (late11): the session's last merged changes (the hidden-logits check's ``Cast``, written-out sigmoid,
``_sum_axis`` and segment probe; ``cross_masks``; the fitted wording; ``_marked``; ``_one_value_past``) broken.

A saturating head behind a ``Cast`` to an integer or boolean type (a Sigmoid or Softmax rounded to 0/1 labels) was
walked to, but its output's saturated share was read as 0 (``_saturated`` counts only floats): the rounded output
shows nothing of the logits, and a wrong rewrite of them verified.

An approximate pass with ``--inputs`` and no ``--calibration`` on a model with no dim to generate samples along
(``x [sequence, 8]``) raised a ZeroDivisionError (``_refuse_oversized_samples`` dividing by no draws, since the
generated-rows change) instead of the one-line refusal it gave before.

An exact rewrite whose hidden logits missed end to end and passed segment by segment (``_hidden_logits_by_segment``)
was reported as having missed at "output 'h23'", a tensor that is no output of the model (its output is 'label').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer
from optimizer.errors import InputSpecError
from optimizer.report import STATUS_ROLLED_BACK
from optimizer.verify import Verifier, _saturated, hidden_logits
from tests.helpers import optimize_with_rewrite
from tests.test_exact_segments import _chain, _inputs, _split_everywhere, _weights
from tests.test_review_s68_late10 import _cast, _under_argmax, _with_tail
from tests.test_review_s68_vacuous import _classifier, _doubled_logits


@pytest.mark.parametrize(
    ("head", "to"),
    [("Sigmoid", TensorProto.INT64), ("Softmax", TensorProto.INT32), ("Sigmoid", TensorProto.BOOL)],
    ids=["sigmoid-int64", "softmax-int32", "sigmoid-bool"],
)
def test_a_wrong_rewrite_behind_a_head_rounded_by_an_integer_cast_is_rolled_back(tmp_path: Path, head: str, to: int):
    # Before: the walk passed the Cast to the head, but the int/bool output counted 0% saturated, no logits were
    # compared, and doubled logits (every rounded label unchanged) were applied as verified.
    model = _with_tail(_classifier(head), [_cast("y0", "y", to)], to)
    record = optimize_with_rewrite(model, _doubled_logits, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert f"the logits 'logits' ({head} output 'y' is cast to " in record.detail, record.detail


def test_an_integer_output_of_a_saturating_head_counts_as_saturated():
    assert _saturated("Sigmoid", np.array([[0, 1, 0]], np.int64)) == 1.0
    assert _saturated("Tanh", np.array([[True, False]])) == 1.0
    assert _saturated("Sigmoid", np.array([[0.5, 0.25]], np.float32)) == 0.0


def test_an_unsaturated_float_head_behind_a_float_cast_is_not_held_on_its_logits():
    # The near miss: a Softmax of logits a few units apart cast to float16 is compared as its output is.
    model = ir.from_proto(_with_tail(_classifier("Softmax", scale=0.05), [_cast("y0", "y", 10)], 10))
    probabilities = np.full((2, 10), 0.1, np.float16)
    assert hidden_logits(model, [{"y": probabilities}]) == {}


def test_an_approximate_pass_with_inputs_on_a_model_with_no_batch_is_refused_in_one_line(tmp_path: Path):
    # Before: ZeroDivisionError from _refuse_oversized_samples (draws 0), a traceback at the CLI.
    weight = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["sequence", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["sequence", 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=np.ones((5, 8), np.float32))
    with pytest.raises(InputSpecError, match="no batch dimension to generate them on"):
        optimizer.optimize(
            tmp_path / "m.onnx", output=tmp_path / "out.onnx", inputs=tmp_path / "x.npz", quantize="static"
        )
    assert not (tmp_path / "out.onnx").exists()


def test_logits_checked_by_segment_are_not_named_as_outputs():
    weights = _weights()
    verifier = Verifier(_under_argmax(_chain(weights)), [_inputs()])
    verdict = verifier.check(_under_argmax(_split_everywhere(weights)), by_segment=True)
    assert verdict.ok, verdict.first_failure
    assert "output 'h23'" not in verdict.end_to_end, verdict.end_to_end
    assert "the logits 'h23' behind 'label'" in verdict.end_to_end, verdict.end_to_end

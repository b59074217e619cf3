"""Review s72 (top-1): the accuracy budget reads class scores' argmax, not their cosine alone.

1. **Class scores were held by cosine alone** (hunt 6's open finding, ``tests/test_review_s72_hunt6.py``). The
   approximate passes' budget (``--min-cosine``, ``--min-worst-cosine``, the search of ``--quantize``, pruning's and
   low-rank's) and optimize's figures read a float output of class scores by its per-sample cosine: a CTC recognizer's
   logits, dominated by the blank class, kept cosine 0.998 after ``--prune-channels 0.25`` while the argmax of a third
   of their non-blank steps changed (khmer-ocr-ocm's CRNN: 0.9984 reported, 43 of 48 held-out lines read differently).
   An output of class scores (``optimizer.class_scores.class_score_outputs``: a ``Softmax``'s or ``LogSoftmax``'s over
   the last axis, or the logits one normalizes; or named like logits or scores, as ``compare`` reads its top-1) now
   has its top-1 counted: the share of positions whose argmax is the original's or flipped at a near tie (the rule
   the ``ArgMax`` ids of review s72's budget are read by: the candidate's class within 5 % of the logits' RMS of the
   original's pick, in the original's logits). The figure says it with the positions changed, and ``--min-top1 X``
   holds it. On the khmer CRNN's 48 held-out lines the pruning reads top-1 0.950 (327 of 6096 steps changed, 21 at a
   near tie); its static int8 0.9988 (14 changed, 7 at a near tie). A separate bound, not the cosine's score lowered
   by the share as an ``ArgMax``'s ids are: so lowered, the default floor of 0.9 rolled back int4 of a random-weight
   decoder whose next-token logits changed 4 of 16 picks (``tests/test_decoder_layouts.py``), and every
   ``--min-cosine`` of a language model would bound its next-token agreement.
2. **Probabilities are tied on their logarithms.** A softmax's output of a confident classifier has a tiny spread
   along its classes: on the probabilities a flip between two classes at 0.45 would be no near tie, and a correct int8
   rewrite's one flip would count whole. Centred log-probabilities are the centred logits.
3. **Logits beside their probabilities are class scores** for ``compare``'s top-1 and the budget alike.
4. Open (strict xfail): logits that no softmax in the graph normalizes and whose name says nothing (vtop-auth-lite's
   CRNN returns ``output``) have no top-1 counted.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import AccuracyBudget, output_drift, row_cosines, scale_scores
from optimizer.class_scores import class_score_outputs
from optimizer.runtime import budget_runs, drift_of
from optimizer.verify import DEFAULT_APPROXIMATION_FLOOR, _streamed_drift

_N = helper.make_node


def _model(nodes, outputs, weights: dict[str, np.ndarray], inputs=(("x", ["batch", 6]),)) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _classifier_logits(rng: np.random.Generator, classes: int = 10, gap: float = 1e-3) -> np.ndarray:
    """Logits of a classifier's 16 samples, sample 0 a near tie between classes 3 and 4 (``gap`` apart), the rest sure
    of class 0."""
    logits = rng.standard_normal((16, classes))
    logits[:, 0] += 4.0
    logits[0, 0] = 0.0
    logits[0, 3], logits[0, 4] = 3.0, 3.0 - gap
    return logits


def test_an_int8_classifiers_flip_at_a_near_tie_still_meets_the_budget():
    rng = np.random.default_rng(0)
    before = _classifier_logits(rng)
    after = before + 0.02 * rng.standard_normal(before.shape)  # an int8 rewrite's 2 % of the logits' RMS
    after[0, 3], after[0, 4] = 2.999, 3.0  # the toss-up goes the other way
    drift = output_drift([{"logits": before}], [{"logits": after}])
    assert drift.top1 == ("logits", 1, 1, 16)
    assert drift.top1_agreement == 1.0
    assert DEFAULT_APPROXIMATION_FLOOR.met(drift) and AccuracyBudget(min_top1=1.0, min_worst_cosine=0.99).met(drift)
    assert "top-1 1.000" in str(drift) and "1 of 16 changed, 1 at a near tie" in str(drift)
    # The same flip where the original was sure of its class counts whole.
    sure = before.copy()
    sure[0, 3] = 6.0
    drift = output_drift([{"logits": sure}], [{"logits": after}])
    assert drift.top1 == ("logits", 1, 0, 16) and drift.top1_agreement == 15 / 16
    assert not AccuracyBudget(min_top1=0.95).met(drift) and AccuracyBudget(min_top1=0.9).met(drift)
    assert AccuracyBudget(min_top1=0.95).describe() == "--min-top1 0.95"


def test_a_softmax_classifiers_probabilities_are_tied_on_their_logarithms():
    model = _model([_N("Softmax", ["x"], ["output"], axis=-1)], [("output", ["batch", 6])], {})
    rng = np.random.default_rng(1)
    # 0.05 apart in logits whose RMS (centred) is 1.7: a near tie; as probabilities 0.02 apart, 0.07 of theirs.
    logits = _classifier_logits(rng, classes=6, gap=0.05)
    after_logits = logits + 0.02 * rng.standard_normal(logits.shape)
    after_logits[0, 3], after_logits[0, 4] = 2.95, 3.0

    def softmax(values: np.ndarray) -> np.ndarray:
        exps = np.exp(values - values.max(axis=-1, keepdims=True))
        return (exps / exps.sum(axis=-1, keepdims=True)).astype(np.float32)

    batches = [{"x": logits.astype(np.float32)}]
    before, after = softmax(logits), softmax(after_logits)
    assert class_score_outputs(model) == {"output"}  # not named like scores: the graph says it
    drift = output_drift([{"output": before}], [{"output": after}], batches, model)
    assert drift.top1 == ("output", 1, 1, 16)
    assert AccuracyBudget(min_top1=1.0).met(drift), drift


def test_logits_beside_their_probabilities_are_class_scores():
    weights = {"w": np.random.default_rng(2).standard_normal((6, 5)).astype(np.float32)}
    nodes = [_N("MatMul", ["x", "w"], ["out"]), _N("Softmax", ["out"], ["p"], axis=-1), _N("Relu", ["out"], ["r"])]
    model = _model(nodes, [("out", ["batch", 5]), ("p", ["batch", 5]), ("r", ["batch", 5])], weights)
    assert class_score_outputs(model) == {"out", "p"}
    # Normalized over another axis (a segmenter's classes along axis 1), no row of class scores along the last.
    nodes = [_N("MatMul", ["x", "w"], ["out"]), _N("Softmax", ["out"], ["p"], axis=0)]
    model = _model(nodes, [("out", ["batch", 5]), ("p", ["batch", 5])], weights)
    assert class_score_outputs(model) == frozenset()


def _recognizer(head: np.ndarray) -> ir.Model:
    """``x [batch, 5 steps, 6] -> MatMul head [6, 4] -> LogSoftmax = y [batch, 5, 4]``, a CTC recognizer's tail."""
    nodes = [_N("MatMul", ["x", "w"], ["logits"]), _N("LogSoftmax", ["logits"], ["y"], axis=-1)]
    return _model(nodes, [("y", ["batch", 5, 4])], {"w": head}, inputs=(("x", ["batch", 5, 6]),))


@pytest.fixture(scope="module")
def heads() -> tuple[np.ndarray, np.ndarray, list[dict[str, np.ndarray]]]:
    """A recognizer's head, the same with two characters read as each other, and two batches of its inputs (the
    blank class the argmax of 31 of their 40 steps, 9 of the rest changed by the swap)."""
    rng = np.random.default_rng(3)
    head = rng.standard_normal((6, 4)).astype(np.float32)
    head[:, 0] += 1.0  # a blank class
    pruned = head.copy()
    pruned[:, 1], pruned[:, 2] = head[:, 2], head[:, 1]
    x = np.abs(rng.standard_normal((8, 5, 6))).astype(np.float32)
    return head, pruned, [{"x": x[:4]}, {"x": x[4:]}]


def test_the_budget_and_verification_hold_a_recognizers_top1(heads):
    head, swapped, batches = heads
    original, pruned = _recognizer(head), _recognizer(swapped)
    for drift in (
        drift_of(pruned, batches, budget_runs(original, batches), layout=original),
        _streamed_drift(original, pruned, batches),  # verification of samples streamed from disk
    ):
        name, changed, near, compared = drift.top1
        assert (name, changed, compared) == ("y", 9, 40) and near < changed
        assert drift.top1_agreement == (compared - changed + near) / compared
        assert not AccuracyBudget(min_top1=0.9).met(drift) and "class scores, top-1" in str(drift)


def test_an_output_of_no_class_scores_is_scored_as_before():
    rng = np.random.default_rng(4)
    before = rng.standard_normal((8, 20, 12))
    after = before + 0.3 * rng.standard_normal(before.shape)
    after[:, :, [1, 2]] = after[:, :, [2, 1]]  # argmaxes moved: no class scores, no top-1
    drift = output_drift([{"hidden": before}], [{"hidden": after}])
    assert drift.top1 is None and drift.top1_agreement is None and "top-1" not in str(drift)
    assert AccuracyBudget(min_top1=1.0).met(drift)  # no class scores: nothing for it to hold
    rows = row_cosines(before, after)
    ratios = np.linalg.norm(after.reshape(8, -1), axis=1) / np.linalg.norm(before.reshape(8, -1), axis=1)
    scores = np.minimum(rows, scale_scores(ratios))
    assert drift.cosine == pytest.approx(float(np.mean(scores)), abs=1e-12)
    assert drift.worst_cosine == pytest.approx(float(scores.min()), abs=1e-12)


@pytest.mark.xfail(
    strict=True,
    reason="logits no Softmax or LogSoftmax in the graph normalizes, returned under a name that says nothing "
    "(vtop-auth-lite's CRNN returns 'output'), are not known as class scores: no top-1 is counted or held by "
    "--min-top1 (compare shows none for them either); telling them from other values needs the user to name them",
)
def test_unnamed_logits_that_no_softmax_normalizes_are_held_by_their_top1(heads):
    head, pruned, batches = heads

    def plain(weights: np.ndarray) -> ir.Model:
        return _model(
            [_N("MatMul", ["x", "w"], ["output"])],
            [("output", ["batch", 5, 4])],
            {"w": weights},
            (("x", ["batch", 5, 6]),),
        )

    original = plain(head)
    drift = drift_of(plain(pruned), batches, budget_runs(original, batches), layout=original)
    assert drift.top1 is not None


def test_min_top1_is_a_budget_option_of_the_cli_and_the_api():
    from optimizer.cli import build_parser
    from optimizer.errors import OptionError
    from optimizer.options import Options

    # Set alone it keeps the default floor's cosine beside it (``tests/test_review_s72_late4.py``).
    assert Options.build(min_top1=0.9).budget == AccuracyBudget(
        min_cosine=DEFAULT_APPROXIMATION_FLOOR.min_cosine, min_top1=0.9
    )
    assert Options.build(min_top1=0.9, min_cosine=0.5).budget == AccuracyBudget(min_cosine=0.5, min_top1=0.9)
    with pytest.raises(OptionError, match="--min-top1 1.5: a share of positions is between 0 and 1"):
        Options.build(min_top1=1.5)
    args = build_parser().parse_args(["optimize", "m.onnx", "-o", "o.onnx", "--min-top1", "0.95"])
    assert args.min_top1 == 0.95

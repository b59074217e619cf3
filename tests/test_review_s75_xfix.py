"""Review s75 (xfix): the pipeline's accuracy budget on samples held out of a pass's fit or streamed from disk
(``optimizer.verify._streamed_drift``) fed no draws: it left every drawn output out, so a model whose every output is
drawn (a training-mode transformer exported by torch 2.13) had nothing to measure, and ``Verifier.check_twin`` refused
an approximate result of it though the pass's own search measured it fed (session 74's strict xfail in
``tests/test_review_s74_late5.py``). It now feeds the original's draws on each batch, from the original's own run, to
the candidate, as the passes' searches do: such a result is held to the budget, and a wrong one misses it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import AccuracyBudget
from optimizer.verify import Verifier

_N = helper.make_node


def _all_drawn(ratio: float = 0.1) -> ir.Model:
    """``y = Dropout(x @ W, ratio, training=True)``: the model's only output is drawn."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [_N("MatMul", ["x", "W"], ["h"]), _N("Dropout", ["h", "ratio", "training"], ["y"])],
        "all_drawn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [
            numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "W"),
            numpy_helper.from_array(np.array(ratio, np.float32), "ratio"),
            numpy_helper.from_array(np.array(True), "training"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


def _scaled(model: ir.Model, factor: float) -> ir.Model:
    """A copy of ``model`` whose weight is ``factor`` times the original's (a result that far off, or nearly none)."""
    copy = model.clone()
    weight = copy.graph.initializers["W"]
    weight.const_value = ir.tensor(weight.const_value.numpy() * np.float32(factor))
    return copy


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    samples = np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32)
    model = _all_drawn()
    return Verifier(model, [{"x": samples[:2]}], samples={"x": samples}, budget=AccuracyBudget(min_cosine=0.99))


def test_a_result_close_to_an_all_drawn_model_meets_the_budget_on_held_out_samples_fed_its_draws(verifier):
    verdict = verifier.check_approximation(_scaled(verifier._original, 1.001), held_out=True)
    assert verdict.ok, verdict.first_failure  # was: ValueError "no outputs to compare"
    assert verdict.drift.cosine > 0.9999 and "held out" in verdict.measured_on


def test_a_wrong_result_of_an_all_drawn_model_misses_the_budget_on_held_out_samples(verifier):
    wrong = _scaled(verifier._original, 1.0)
    wrong.graph.initializers["W"].const_value = ir.tensor(
        np.random.default_rng(7).standard_normal((32, 32)).astype(np.float32)
    )
    verdict = verifier.check_approximation(wrong, held_out=True)
    assert not verdict.ok and "misses the accuracy budget" in verdict.first_failure, verdict.first_failure
    assert verdict.drift is not None and verdict.drift.cosine < 0.5


def test_a_result_that_draws_otherwise_is_refused_not_measured_on_nothing(verifier):
    other = _scaled(_all_drawn(ratio=0.3), 1.0)  # another draw: the original's masks cannot be fed to it
    verdict = verifier.check_approximation(other, held_out=True)
    assert not verdict.ok and "every output of the model is computed from random draws" in verdict.first_failure


class _WrongWithItsTwin(ir.passes.InPlacePass):
    """An approximate pass whose result (its weight scaled by 0.5) is its own twin: only the budget can catch it."""

    def call(self, model):
        from optimizer.protocol import NotedResult, Twin

        weight = model.graph.initializers["W"]
        weight.const_value = ir.tensor(weight.const_value.numpy() * np.float32(0.5))
        return NotedResult(model, True, twin=Twin(model.clone(), "float32", "the result itself"))


def test_a_wrong_approximate_pass_of_an_all_drawn_model_is_rolled_back_by_the_budget_fed():
    from optimizer.pipeline import run_pipeline
    from optimizer.protocol import PassSpec

    model = _all_drawn()
    inputs = {"x": np.random.default_rng(2).standard_normal((2, 32)).astype(np.float32)}
    checker = Verifier(model, [inputs], budget=AccuracyBudget(min_cosine=0.99, max_error=0.01))
    spec = PassSpec("halved", lambda context: _WrongWithItsTwin(), "test", approximate=True)
    _, report = run_pipeline(model, [spec], verifier=checker)
    (record,) = report.passes
    assert record.status == "rolled back", record.detail
    # Measured fed the original's draws (was: refused as "every output ... random", measuring nothing).
    assert "misses the accuracy budget" in record.detail, record.detail


def test_a_model_without_draws_is_measured_on_held_out_samples_as_before(monkeypatch):
    """No draw: no probe, no fed copy, no extra run; ``_streamed_drift`` is given no draws to feed."""
    import optimizer.verify as verify

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("the draws of a model without any were looked for by running it")

    given = []
    streamed = verify._streamed_drift

    def spy(*args, **kwargs):
        given.append(args[4:] + tuple(kwargs.values()))
        return streamed(*args, **kwargs)

    for name in ("fed_budget_runs", "draws_exposed", "with_draws_fed", "draw_values"):
        monkeypatch.setattr(f"optimizer.verify.{name}", refused)
    monkeypatch.setattr(verify, "_streamed_drift", spy)
    model = _all_drawn()
    model.graph.initializers["training"].const_value = ir.tensor(np.array(False))  # inference: no draw
    samples = np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32)
    checker = Verifier(model, [{"x": samples[:2]}], samples={"x": samples}, budget=AccuracyBudget(min_cosine=0.99))
    assert not checker.skipped
    verdict = checker.check_approximation(_scaled(model, 1.001), held_out=True)
    assert verdict.ok and verdict.drift.cosine > 0.9999, verdict.first_failure
    assert given == [(None,)] and checker._budget_draws(model) is None

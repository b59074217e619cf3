"""Scale: every default pass does work linear in the graph's size (speed itself lives in benchmarks/).

The guard is structural, not a timing: the number of Python function calls (generator
resumes included, so walking a graph counts one per node) a pass makes on a chain of
N nodes and on one of 2N, counted in one run of the default pipeline. Linear work doubles
(measured 1.98-2.05); a step that walks the graph at every node, as onnxscript's
multi-output matcher did, shows as 3.3 for simplify-ops at these sizes. Counts do not
depend on the machine's load.
"""

from __future__ import annotations

import gc
import sys
from collections import Counter

import onnx_ir as ir
import pytest
from onnxscript import rewriter
from onnxscript.rewriter import pattern

from benchmarks.scale_benchmark import chain_model
from optimizer.api import optimize_with_report
from optimizer.pipeline import detached_clone
from optimizer.protocol import PassContext
from passes._utils import linear_rule_set, remove_dead_nodes
from passes.catalog import CATALOG
from passes.fusion.rms_norm import RmsNormFusion
from tests.helpers import FIXTURES, parse_model

SIZES = (1000, 2000)
# Linear work doubles; quadratic work on these sizes more than triples.
MAX_GROWTH = 2.15
DEFAULT_PASSES = [spec for spec in CATALOG if "cpu" in spec.default_for]


def _pipeline_calls(nodes: int) -> tuple[int, dict[str, int]]:
    """Calls of the unverified default pipeline on a chain of ``nodes`` nodes: in all, and inside each pass's call."""
    passes = {type(spec.factory(PassContext())): spec.name for spec in DEFAULT_PASSES}
    entries = {cls.__call__.__code__ for cls in passes}
    per_pass: Counter = Counter()
    total, current = 0, None

    def left(frame, event, arg):  # noqa: ANN001, ANN202
        nonlocal current
        if event == "return":
            current = None
        return left

    # A trace function sees each call (a generator's resume too), and no return, C call or line but the pass's
    # own return it asks for: a third of the events a profile function is called for, counted alike.
    def count(frame, event, arg):  # noqa: ANN001, ANN202
        nonlocal total, current
        total += 1
        if current is not None:
            per_pass[current] += 1
        elif frame.f_code in entries:  # a pass the pipeline runs, not one a pass runs inside itself
            current = passes.get(type(frame.f_locals["self"]))
            return left if current is not None else None
        return None

    model = chain_model(nodes)
    sys.settrace(count)
    try:
        optimize_with_report(model, verify=False)
    finally:
        sys.settrace(None)
    return total, dict(per_pass)


def test_the_pipeline_and_every_default_pass_grow_linearly():
    # One counted run of the pipeline for both: its own work (cloning the model for each pass, counting nodes,
    # checking each result's ensures) and, apart, the calls inside each default pass (run in pipeline order, each
    # on the result of the ones before, as the pipeline runs them).
    optimize_with_report(chain_model(50), verify=False)  # first calls import modules and fill caches
    (small, small_passes), (large, large_passes) = (_pipeline_calls(nodes) for nodes in SIZES)
    assert large / small <= MAX_GROWTH, large / small
    assert set(small_passes) == set(large_passes) == {spec.name for spec in DEFAULT_PASSES}, small_passes
    growth = {name: large_passes[name] / small_passes[name] for name in small_passes}
    assert all(value <= MAX_GROWTH for value in growth.values()), growth


def _slice_pairs() -> ir.Model:
    """Two Slices halving x's last axis, the upper half first (the order onnxscript's SlicesSplit fuses)."""
    return parse_model(
        """
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 8] x) => (float[2, 4] y) {
            zero = Constant <value = int64[1] {0}> ()
            half = Constant <value = int64[1] {4}> ()
            end = Constant <value = int64[1] {8}> ()
            axis = Constant <value = int64[1] {-1}> ()
            upper = Slice (x, half, end, axis)
            lower = Slice (x, zero, half, axis)
            other = Slice (x, zero, half, axis)
            y = Add (upper, lower)
        }
        """
    )


@pytest.mark.parametrize("model_name", ["slice_pairs", "llama_legacy", "llama_dynamo", "gpt2_legacy", "bert_dynamo"])
def test_linear_rules_rewrite_what_onnxscripts_rewrite(model_name):
    load = _slice_pairs if model_name == "slice_pairs" else lambda: ir.load(FIXTURES / f"{model_name}.onnx")
    ours, theirs = load(), load()
    applied = linear_rule_set(rewriter._DEFAULT_REWRITE_RULES).apply_to_model(ours)
    assert applied == pattern.RewriteRuleSet(list(rewriter._DEFAULT_REWRITE_RULES)).apply_to_model(theirs)
    remove_dead_nodes(ours)  # what the callers do after a round that fired; onnxscript's rule set does it itself
    assert [node.op_type for node in ours.graph] == [node.op_type for node in theirs.graph]
    if model_name == "slice_pairs":
        assert Counter(node.op_type for node in ours.graph)["Split"] == 1


def test_near_misses_come_from_the_last_round_not_a_tracing_run(monkeypatch):
    applications = []
    apply = pattern.RewriteRuleSet.apply_to_model

    def counted(self, model, **kwargs):
        applications.append(kwargs.get("tracer") is not None)
        return apply(self, model, **kwargs)

    monkeypatch.setattr(pattern.RewriteRuleSet, "apply_to_model", counted)
    fusion = RmsNormFusion()
    result = fusion(chain_model(200))
    # One round that fuses, one that finds nothing more and traces; no tracing run.
    assert applications == [False, False]
    assert result.modified
    assert any("near match" in reason and "last axis" in reason for reason in result.refusals)


def test_near_misses_match_a_tracing_run():
    from passes.fusion._base import _NearMisses

    model = chain_model(400)
    fusion = RmsNormFusion()
    result = fusion(model)
    tracer = _NearMisses()
    fusion.rule_set().apply_to_model(model, tracer=tracer)
    traced = Counter(tracer.reasons())
    reported = [reason for reason in result.refusals if "near" in reason]
    assert reported == [
        f"{count} near {'match' if count == 1 else 'matches'} at {op} left unfused: {why}"
        for (op, why), count in traced.most_common()
    ]


@pytest.mark.parametrize("enabled", [True, False])
def test_copying_a_model_leaves_the_collector_as_it_was(enabled):
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        copy = detached_clone(chain_model(50))
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
    assert len(copy.graph) == len(chain_model(50).graph)


def test_chain_model_runs_and_every_default_pass_has_work():
    model = chain_model(300)
    optimized, report = optimize_with_report(model, verify=True)
    applied = {record.name for record in report.passes if record.status == "applied"}
    assert {"remove-identity", "fold-constants", "simplify-ops", "simplify-shapes", "merge-subexpressions"} <= applied
    assert {"lift-constants", "fuse-rms-norm", "fuse-attention", "deduplicate-initializers"} <= applied
    assert report.nodes_after < report.nodes_before / 2
    assert isinstance(optimized, ir.Model)

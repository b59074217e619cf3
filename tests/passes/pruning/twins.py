"""Checking a pruning pass's result against its twin, as the pipeline does: the result with all of ONNX
Runtime's optimizations, the twin exactly as written, elementwise at float32 tolerance."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from optimizer.protocol import NotedResult
from optimizer.runtime import run_batches, run_model
from optimizer.verify import DEFAULT_TOLERANCES, VerificationResult, compare_outputs

FLOAT32 = {"float32": DEFAULT_TOLERANCES["float32"]}


def twin_check(result: ir.Model, twin: ir.Model, inputs: Mapping[str, np.ndarray]) -> VerificationResult:
    """How ``result`` compares with ``twin`` on ``inputs`` at float32 tolerance."""
    return compare_outputs(run_model(twin, inputs), run_batches(result, [inputs])[0], FLOAT32)


def assert_matches_twin(result: NotedResult, *input_sets: Mapping[str, np.ndarray]) -> None:
    """The pass declared a float32 twin, and its result computes it on every input set."""
    assert result.modified and result.twin is not None and result.twin.kind == "float32"
    assert result.twin.model is not result.model
    for inputs in input_sets:
        verdict = twin_check(result.model, result.twin.model, inputs)
        assert verdict.ok, f"{result.twin.description}: {verdict.first_failure}"


def assert_differs_from_twin(wrong: ir.Model, result: NotedResult, *input_sets: Mapping[str, np.ndarray]) -> None:
    """A deliberately wrong realization ``wrong`` is told apart from the twin on some input set."""
    assert any(not twin_check(wrong, result.twin.model, inputs).ok for inputs in input_sets)


def replace_weight(model: ir.Model, node_name: str, change) -> ir.Model:
    """A copy of ``model`` whose node ``node_name`` has ``change(weight copy)`` as its weight (input 1)."""
    from passes._utils import add_initializer, constant_array

    copy = model.clone()
    node = copy.graph.node(node_name)
    weight = constant_array(node.inputs[1]).copy()
    changed = change(weight)
    node.replace_input_with(1, add_initializer(copy.graph, f"{node.inputs[1].name}.wrong", changed))
    return copy

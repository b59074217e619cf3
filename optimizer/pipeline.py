"""The pass pipeline: run passes in order, time them, verify each result, roll back failures.

Each pass runs on a clone of the current model (clones share weight tensors, so
this is cheap). If the pass raises, or its result fails verification, the clone is
dropped and the pipeline goes on from the model as it was before that pass. Each
pass, and each verification, is a task of ``optimizer.progress`` (``pass 3/12 NAME``),
shown by whoever installed a sink (the CLI) and silent otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import time
from collections.abc import Iterator, Sequence
from copy import deepcopy
from typing import NamedTuple

import onnx_ir as ir

from optimizer.errors import RuntimeMissingError, RuntimeRefusedError, one_line
from optimizer.progress import task
from optimizer.protocol import NotedResult, PassContext, PassSpec
from optimizer.report import (
    STATUS_APPLIED,
    STATUS_FAILED,
    STATUS_ROLLED_BACK,
    STATUS_UNCHANGED,
    PassRecord,
    PipelineReport,
)
from optimizer.runtime import model_graphs, stored_weight_bytes
from optimizer.verify import (
    DEFAULT_APPROXIMATION_FLOOR,
    NOISE_FACTOR,
    UNCUT_ROW_EXCESS,
    VerificationResult,
    Verifier,
    checkpoint_words,
)

logger = logging.getLogger(__name__)


def count_nodes(model: ir.Model) -> int:
    """Number of nodes in the model, subgraphs and functions included."""
    # model_graphs, not onnx-ir's recursive iterator: that fails on a function's graph attribute that is its
    # caller's (``body = @body``).
    return sum(sum(1 for _ in graph) for graph in model_graphs(model))


def detached_clone(model: ir.Model) -> ir.Model:
    """``model.clone()`` whose values own their type objects.

    onnx-ir's clone shares each value's type object with the original, so a pass that
    sets ``value.dtype`` on its copy would retype the model it was given — and a
    rolled-back pass would leave that change behind. Weight tensors stay shared (they
    are replaced, never written in place).
    """
    with _no_collection():
        copy = model.clone()
        for graph in model_graphs(copy):
            initializers = getattr(graph, "initializers", {}).values()  # a function has none
            outputs = (value for node in graph for value in node.outputs)
            for value in (*graph.inputs, *initializers, *outputs):
                if value.type is not None:
                    value.type = _own_type(value.type)
    return copy


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a model is copied.

    A copy makes about 50 objects per node and no garbage. With the collector on, those
    allocations trigger its full collections, each of which walks every live object
    (both models): at 20,000 nodes, 16 of them took 13 of the default pipeline's 28 s.
    Paused, the copy costs one young collection when it ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _own_type(value_type: ir.TypeProtocol) -> ir.TypeProtocol:
    """A new type object equal to ``value_type`` (``deepcopy`` is 10x slower: it runs for every value)."""
    kind = type(value_type)
    if kind in (ir.TensorType, ir.SparseTensorType):
        return kind(value_type.dtype, denotation=value_type.denotation)
    if kind in (ir.SequenceType, ir.OptionalType):
        return kind(_own_type(value_type.elem_type), denotation=value_type.denotation)
    return deepcopy(value_type)


def run_pipeline(
    model: ir.Model,
    specs: Sequence[PassSpec],
    *,
    context: PassContext | None = None,
    verifier: Verifier | None = None,
    label: str = "model",
) -> tuple[ir.Model, PipelineReport]:
    """Run ``specs`` over a clone of ``model``; return the optimized model and its report.

    ``model`` itself is never modified. With a ``verifier``, every modifying pass is
    checked on ONNX Runtime and rolled back if its outputs diverge or ORT cannot run
    it. A pass that raises (its ``ensures`` included) is rolled back and reported as
    failed; the ``raise_errors`` option re-raises instead (for tests and debugging). A pass that needs
    ONNX Runtime where it is not installed raises ``RuntimeMissingError`` out of the run.
    """
    context = context or PassContext()
    if context.original is None:
        context = dataclasses.replace(context, original=model)
    if not context.pipeline:
        context = dataclasses.replace(context, pipeline=tuple(spec.name for spec in specs))
    started = time.perf_counter()
    current = detached_clone(model)
    report = PipelineReport(
        model=label,
        target=context.target,
        verified=verifier is not None,
        nodes_before=count_nodes(current),
        initializer_bytes_before=stored_weight_bytes(current),
    )
    if verifier is not None:
        report.inputs = [{name: list(array.shape) for name, array in inputs.items()} for inputs in verifier.input_sets]
        report.input_sets = list(verifier.labels)
        report.warnings.extend(verifier.dropped)
        for why, names in verifier.outputs_never_compared().items():
            quoted, many = ", ".join(f"'{name}'" for name in names), len(names) > 1
            if why == "random":
                report.warnings.append(
                    f"output{'s' if many else ''} {quoted} of the input model {'are' if many else 'is'} computed from "
                    "random draws (RandomNormal, Bernoulli, a training-mode Dropout, ...), which change from run to "
                    f"run and with the graph's structure: verification compared no value of {'them' if many else 'it'}"
                )
                continue
            state = "empty" if why == "empty" else "NaN or infinite at every position"
            report.warnings.append(
                f"output{'s' if many else ''} {quoted} of the input model {'are' if many else 'is'} {state} on every "
                "verification input set: verification compared no value of "
                f"{'them' if many else 'it'}; give --inputs on which the model computes some"
            )
        if fed := verifier.drawn_outputs_compared():
            quoted, many = ", ".join(f"'{name}'" for name in fed), len(fed) > 1
            report.warnings.append(
                f"output{'s' if many else ''} {quoted} of the input model {'are' if many else 'is'} computed from "
                "random draws (RandomNormal, Bernoulli, a training-mode Dropout, ...): verification fed both models "
                f"the draws of one run of the input model and compared {'them' if many else 'it'} on those alone (an "
                "approximate pass's accuracy budget measures them fed the same draws too)"
            )
        report.tolerances = {k: {"rtol": t.rtol, "atol": t.atol} for k, t in verifier.tolerances.items()}
        if any(spec.approximate for spec in specs):
            default = verifier.budget == DEFAULT_APPROXIMATION_FLOOR
            report.accuracy_budget = verifier.budget.describe() + (" (default floor)" if default else "")
    nodes = report.nodes_before
    for index, spec in enumerate(specs, 1):
        with task(f"pass {index}/{len(specs)} {spec.name}"):
            current, record = _run_one(current, nodes, spec, context, verifier)
        report.passes.append(record)
        nodes = record.nodes_after
    report.nodes_after = nodes
    report.initializer_bytes_after = stored_weight_bytes(current)
    report.seconds = time.perf_counter() - started
    return current, report


def undefined_input(model: ir.Model) -> str | None:
    """The first node input or graph output of ``model`` (its subgraphs' and model-local functions' too) that is
    not defined where it is read, said in words; None when all are. A node may read a value defined before it: in
    the main graph by an input, an initializer or an earlier node; in a function by an input or an earlier node;
    in a subgraph by its own inputs, initializers and earlier nodes, or by what is defined in the graphs around
    it before the node that holds the subgraph (onnx.checker's rule: values defined after that node, or by it,
    are out of scope). A graph output must be an input, initializer or node output of its own graph. A rewrite that
    lost an initializer, removed a node whose output is still read, or put a node before what it reads writes a
    file onnx.checker rejects; ONNX Runtime refuses it too, except in the main graph, which it sorts itself."""
    problem = _undefined_in(model.graph)
    if problem is not None:
        return problem
    for function in model.functions.values():
        problem = _undefined_in(function)
        if problem is not None:
            name = f"{function.domain}.{function.name}" if function.domain else function.name
            return f"in function {name}, {problem}"
    return None


class _Scope(NamedTuple):
    """A graph being checked: what is defined in it so far, and (while a subgraph of it is checked) the node
    holding that subgraph."""

    graph: ir.Graph
    defined: set[ir.Value]
    holder: ir.Node | None = None


def _undefined_in(root: ir.Graph | ir.Function) -> str | None:
    """``undefined_input`` for one graph or function and the subgraphs in it, scope by scope."""
    if isinstance(root, ir.Function):
        # A function holds no initializers (saving drops any put on its graph): only its inputs and nodes define.
        return _undefined_in_scope(root.graph, (), set(root.inputs))
    return _undefined_in_scope(root, (), {*root.inputs, *root.initializers.values()})


def _undefined_in_scope(graph: ir.Graph, outer: tuple[_Scope, ...], defined: set[ir.Value]) -> str | None:
    """The first read in ``graph`` (or a subgraph of it) of a value that neither ``graph`` nor a scope around it
    has defined by then (``defined``: what ``graph`` defines before its first node). A subgraph sees its own
    values and those the graphs around it define before the node that holds it, never a sibling's or a nested
    graph's. One walk: each graph's nodes are visited once, in order."""
    scopes = (_Scope(graph, defined), *outer)
    for node in graph:
        for value in node.inputs:
            if value is not None and not any(value in scope.defined for scope in scopes):
                return _read_too_early(node, value, scopes)
        for attr in node.attributes.values():
            if attr.is_ref() or attr.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                continue
            inner = (_Scope(graph, defined, node), *outer)
            for subgraph in [attr.value] if attr.type == ir.AttributeType.GRAPH else attr.value:
                own = {*subgraph.inputs, *subgraph.initializers.values()}
                problem = _undefined_in_scope(subgraph, inner, own)
                if problem is not None:
                    return problem
        defined.update(node.outputs)
    for value in graph.outputs:
        # An output is the graph's own value: onnx.checker and ONNX Runtime refuse a subgraph returning an outer one.
        if value not in defined:
            if any(value in scope.defined for scope in outer):
                return f"the subgraph output {value.name!r} is a value of the graph around it, not one of its own"
            return f"the graph output {value.name!r} is computed by no node"
    return None


def _read_too_early(node: ir.Node, value: ir.Value, scopes: tuple[_Scope, ...]) -> str:
    """Why ``node`` may not read ``value``, which no scope in ``scopes`` has defined by then."""
    reader = f"{node.op_type} node {node.name or '(unnamed)'}"
    producer = value.producer()
    if producer is node:
        return f"{reader} reads its own output {value.name!r}"
    if producer is not None:
        writer = f"{producer.op_type} node {producer.name or '(unnamed)'}"
        if producer.graph is scopes[0].graph:
            return f"{reader} reads {value.name!r} before {writer} defines it (the nodes are out of order)"
        for scope in scopes[1:]:
            if producer.graph is scope.graph and scope.holder is not None:
                holder = f"{scope.holder.op_type} node {scope.holder.name or '(unnamed)'}"
                if producer is scope.holder:
                    return f"{reader} reads {value.name!r}, an output of the {holder} that holds its subgraph"
                return (
                    f"{reader} reads {value.name!r}, which {writer} defines only after the {holder} that holds "
                    "its subgraph (a subgraph sees the outer values defined before that node)"
                )
    return f"{reader} reads {value.name!r}, which nothing defines"


def _run_one(
    model: ir.Model, nodes_before: int, spec: PassSpec, context: PassContext, verifier: Verifier | None
) -> tuple[ir.Model, PassRecord]:
    started = time.perf_counter()
    record = PassRecord(spec.name, STATUS_UNCHANGED, 0.0, nodes_before, nodes_before)
    earlier = list(verifier.fitted_on_checked) if verifier is not None else []  # fitted to the checked samples
    try:
        result = spec.factory(context)(detached_clone(model))
        record.seconds = time.perf_counter() - started
        if isinstance(result, NotedResult):
            record.notes, record.refusals = [str(n) for n in result.notes], [str(r) for r in result.refusals]
        if not result.modified:
            return model, record
        candidate = result.model
        record.nodes_after = count_nodes(candidate)
        undefined = undefined_input(candidate)
        if undefined is not None:
            # Checked with or without verification: under --no-verify nothing else stops the file.
            record.status, record.nodes_after = STATUS_FAILED, nodes_before
            record.detail = f"the result is no valid graph: {undefined}; kept the model as it was"
            return model, record
        if verifier is None:
            record.status = STATUS_APPLIED
            return candidate, record
        if (contradicted := verifier.declared_shape_contradicted(candidate, model)) is not None:
            record.status, record.nodes_after, record.detail = STATUS_ROLLED_BACK, nodes_before, contradicted
            return model, record
        with task("verifying on ONNX Runtime"):
            if not spec.approximate and (reached := verifier.reach_rewritten_rows(candidate, model)):
                record.notes.append(reached)
            reached, left_out = ("", "") if spec.approximate else verifier.reach_compared_lengths(candidate, model)
            if reached:
                record.notes.append(reached)
            verdict = (
                _check_approximate(verifier, model, candidate, result)
                if spec.approximate
                else verifier.check(candidate, by_segment=True)
            )
        if verdict.ok and spec.approximate:
            # Later exact passes keep this result's outputs, not the original's.
            verifier.rebase(candidate)
            if getattr(result, "fitted_to_samples", False):
                verifier.fitted_to()  # later approximate passes are measured where this one was not fitted
            if getattr(result, "fitted_to_checked", ""):
                verifier.fitted_on_checked.append(spec.name)  # later ones are measured where this one was fitted
    except RuntimeRefusedError as error:
        unsplit = ""
        if verifier is not None:  # the pass's own run of the samples may have failed on the data, not its result
            verifier.refuse_unrunnable_samples()
            unsplit = verifier.unsplittable_samples()  # or on their split, in the input model
        record.seconds = time.perf_counter() - started
        record.status, record.nodes_after = STATUS_ROLLED_BACK, nodes_before
        record.detail = unsplit or f"ONNX Runtime cannot run the result: {error.reason}"
        return model, record
    except RuntimeMissingError:
        # No ONNX Runtime is the installation's fault, not the pass's: the run stops in one line (as it does
        # when verification opens its first session) rather than writing a model that pass left undone.
        raise
    except Exception as error:
        # A broken pass (or a result too broken to verify) must not cost the user the rest
        # of the pipeline: report it by name with the error, keep the model as it was,
        # and log the traceback.
        if context.options.raise_errors:
            raise
        logger.warning("pass %s raised; rolled back", spec.name, exc_info=True)
        record.seconds = time.perf_counter() - started
        record.status, record.nodes_after = STATUS_FAILED, nodes_before
        record.detail = f"{type(error).__name__}: {one_line(error)}"
        return model, record
    if verdict.ok or verdict.checks or verdict.drift is not None:
        record.max_abs_error = verdict.max_abs_error
    else:
        # Failed before any output was compared with the input's (its twin check): the difference from its twin
        # that failed it where one was measured, else infinite ("inf" in the JSON: ``strict_json``), never a 0 that
        # reads as a result equal to its input, nor a null that a CI check's ``max_abs_error < 1e-3`` passes in jq.
        record.max_abs_error = verdict.failed_error if verdict.failed_error is not None else math.inf
    record.cosine = verdict.drift.cosine if verdict.drift is not None else None
    record.worst_cosine = verdict.drift.worst_cosine if verdict.drift is not None else None
    record.accuracy_on = verdict.measured_on if verdict.drift is not None else ""
    if record.accuracy_on and (fit := getattr(result, "fitted_to_checked", "")):
        # Measured on the very samples the pass fitted to (none held out), as the pass's note says.
        record.accuracy_on += f", which {fit}"
    if record.accuracy_on and earlier:
        # The result keeps an earlier pass's fit to those samples (a repair on the one sample, ranges taken from all),
        # and the figure, measured against the original, holds it: the last pass's is the model's accuracy.
        fitted = f"the result of {', '.join(earlier)} was fitted to (an optimistic figure)"
        record.accuracy_on += f"{', and' if fit else ','} which {fitted}"
    if record.accuracy_on and verdict.drift.scored_less:
        # An output the original computes as mostly one of its inputs: its cosine alone is the input's, and the
        # table's holds what the model adds to it too (``optimizer.accuracy.with_residuals``).
        less = ", ".join(f"{name} less input {source}" for name, source in verdict.drift.scored_less)
        record.accuracy_on += f"; {less} scored too (the output is mostly that input)"
    if verdict.twin_error is not None:
        twin = result.twin
        record.twin = f"{twin.description}; max |Δ| {verdict.twin_error:.2e} ({twin.kind} tolerance)"
        if verdict.twin_row_excess is not None:
            record.twin += (
                f", past it only where integer rounding took the other side of a tie "
                f"(no token row farther from the input than {verdict.twin_row_excess:.2f}x its twin)"
            )
        if verdict.twin_unrounded:
            record.twin = (
                f"{verdict.twin_description}; max |Δ| {verdict.twin_error:.2e} (int4-float tolerance): "
                "ONNX Runtime runs its MatMulNBits on float inputs here (the same outputs as at accuracy_level 0, "
                f"bit for bit), not rounded to int8 as its twin with rounding said ({verdict.twin_unrounded})"
            )
        if verdict.twin_segments is not None:
            record.twin += (
                f"; checked segment by segment ({verdict.twin_segments} segments between the "
                f"{checkpoint_words(twin.kind)}, each fed its twin's values), because end to end it "
                f"{verdict.twin_end_to_end}"
            )
        if verdict.twin_without_rewrites:
            record.twin += (
                f"; held to it with ONNX Runtime's rewrites off (its QDQ nodes in float) and, as written, row by row "
                f"within {UNCUT_ROW_EXCESS:g}x its twin's distance from the input, "
                f"because {verdict.twin_without_rewrites}"
            )
        if verdict.twin_as_written is not None:
            record.twin += (
                f", past it only by ONNX Runtime's own rewrites of the result: with them off it is "
                f"{verdict.twin_as_written:.2e} from its twin, and they move it no more than {NOISE_FACTOR:g}x "
                "what they move the original"
            )
        if verdict.twin_layers_probed:
            record.twin += (
                f"; each of {verdict.twin_layers_probed} layers also run alone on probe rows that no kernel rounds "
                "(one input channel at a time): the same weights as its twin's, to float32 rounding"
            )
    if verdict.segments is not None and verdict.ok:
        record.max_abs_error = verdict.end_to_end_error  # the table's column is the distance end to end
        record.notes.append(
            ("with its rounding kernels at level 0, " if verdict.rounding else "")
            + f"verified segment by segment: end to end it missed {verdict.end_to_end}; cut around the "
            f"{verdict.segments_nodes} nodes the original lacks ({verdict.segments} segments, each fed the "
            f"original's values), every segment and output is within the float tolerance "
            f"(max |Δ| {verdict.max_abs_error:.2e} segment by segment)"
        )
    if verdict.integer_flips and verdict.ok:
        record.notes.append(f"integer outputs verified at the floats they are computed from: {verdict.integer_flips}")
    if verdict.rounding and verdict.ok:
        record.max_abs_error = verdict.rounding_error  # as written, the model that ships
        record.notes.append(f"verified with its rounding kernels at level 0: {verdict.rounding}")
    if not verdict.ok:
        logger.warning("pass %s rolled back: %s", spec.name, verdict.first_failure)
        record.status, record.nodes_after, record.detail = STATUS_ROLLED_BACK, nodes_before, verdict.first_failure
        return model, record
    record.status = STATUS_APPLIED
    if left_out:  # the lengths the kept rewrite was not verified at; of a rolled-back one, no word
        record.notes.append(left_out)
    return candidate, record


def _check_approximate(
    verifier: Verifier, model: ir.Model, candidate: ir.Model, result: ir.passes.PassResult
) -> VerificationResult:
    """An approximate pass's result against its twin (near-float tolerance), then against the accuracy budget."""
    twin = result.twin if isinstance(result, NotedResult) else None
    if twin is None:
        return VerificationResult(
            error="the pass declares no exact twin to verify its result against (every approximate pass must)"
        )
    if twin.source is not None and twin.source is not model:
        # The twin approximates an exact rewrite of the input (SmoothQuant's rescaled norms and weights, a Gemm
        # written as the kernels take it): that rewrite is held to the input as any exact pass is, or a wrong
        # rescaling or Gemm rewrite would ship as the twin's claim.
        rescaled = verifier.check(twin.source, by_segment=True, rescaled=True)
        if not rescaled.ok:
            # Its measured difference from the input (max abs error 1.39 in the reason read "max |Δ| inf" beside it).
            measured = rescaled.max_abs_error if rescaled.checks or rescaled.drift is not None else None
            return VerificationResult(
                error="the exact rewrite of its input that its twin starts from (SmoothQuant's norms and weights, "
                "Gemms written as the kernels take them) "
                f"does not compute what the input does: {rescaled.first_failure}",
                failed_error=measured,
            )
    exact = verifier.check_twin(candidate, twin, base=model)
    if not exact.ok:
        return exact
    verdict = verifier.check_approximation(candidate, held_out=getattr(result, "fitted_to_samples", False))
    if verdict.ok and twin.deployed is not None:
        # The CPU runs most float16 ops as float32 kernels: what float16 kernels compute (an activation past 65504
        # infinite) is held to the budget in the model that rounds every float16 activation.
        deployed = verifier.check_deployed(twin.deployed)
        if not deployed.ok:
            return VerificationResult(
                drift=deployed.drift,
                error=f"with every activation it stores as float16 rounded to float16, as float16 kernels compute "
                f"it: {deployed.first_failure}",
                measured_on=deployed.measured_on,
            )
        if not (long := verifier.check_long_positions(twin.deployed, twin, model)).ok:
            return long
        # The accuracy the pass reports is the deployed model's: the result run here on float32 kernels showed
        # (h + 3000) - 3000 at cosine 0.99999998, where float16 kernels keep 0.975 of it.
        if deployed.drift is not None:
            verdict.drift = deployed.drift
    verdict.twin_error, verdict.twin_row_excess = exact.twin_error, exact.twin_row_excess
    verdict.twin_segments, verdict.twin_end_to_end = exact.twin_segments, exact.twin_end_to_end
    verdict.twin_layers_probed = exact.twin_layers_probed
    verdict.twin_without_rewrites = exact.twin_without_rewrites
    verdict.twin_as_written = exact.twin_as_written
    verdict.integer_flips = verdict.integer_flips or exact.integer_flips
    verdict.twin_unrounded, verdict.twin_description = exact.twin_unrounded, exact.twin_description
    return verdict

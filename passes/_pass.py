"""What every graphopt pass shares: notes and counted refusals for the report, and cheap structural ``ensures``.

``GraphoptPass`` is a mixin placed before an onnx-ir pass base
(``class X(GraphoptPass, ir.passes.InPlacePass)``), so each pass stays an ordinary
onnx-ir pass that runs in anyone's ``PassManager``. During ``call`` a pass records
``note(...)`` (what it decided) and ``refuse(kind, reason)`` / ``done(kind)`` (what it
did with each candidate) and returns ``self.result(model, modified)``: a
``NotedResult`` whose refusals are counted ("2 of 12 Softmax left unfused: the scores
have other users"); a pass built on an onnx-ir pass, whose ``call`` returns a plain
``PassResult``, has it turned into one when called.

The ``ensures`` it adds hold even when outputs are not verified (``--no-verify``):
graph inputs and outputs keep their names, element types and static sizes (unless
the pass declares ``keeps_interface = False``), every operator domain a node uses is
imported by the model unless the input already lacked it (a contrib op without the
``com.microsoft`` opset is a model ONNX Runtime rejects), and the nodes are in
topological order (which ONNX Runtime does not need, but onnx's checker and every later
pass do). A violation raises ``PostconditionError``, which the pipeline reports as a
failed pass and rolls back.

Called as an onnx-ir pass (``__call__``, as any ``PassManager`` does), a pass first reads
a dim declared negative (tf2onnx's and Paddle's -1, "any size") as unnamed, as graphopt's
own entry points do before any pass: ONNX's inference takes -1 for a size. A pass that
changes nothing (or returns a new model) leaves its input's -1 dims as they were. Its notes
and refusals are also logged at DEBUG on its module's logger: a ``PassManager`` returns a
plain ``PassResult``, so they are the one place its user learns why nothing was fused.
"""

from __future__ import annotations

import logging
import numbers
from collections import Counter
from collections.abc import Iterator

import onnx_ir as ir

from optimizer.model_io import unname_negative_dims
from optimizer.options import DATA_IMPORTANCE_KINDS, TARGETS
from optimizer.protocol import NotedResult, Twin
from passes._utils import rename_shadowed_initializers


class Tally:
    """What happened to each candidate of a kind (``"Softmax"``): done, or left alone with a reason."""

    def __init__(self, left: str = "left unfused") -> None:
        self.left = left
        self.done: Counter[str] = Counter()
        self.refused: dict[str, Counter[str]] = {}

    def record_done(self, kind: str) -> None:
        self.done[kind] += 1

    def record_refused(self, kind: str, reason: str) -> None:
        self.refused.setdefault(kind, Counter())[reason] += 1

    def lines(self) -> list[str]:
        """``"2 of 12 Softmax left unfused: the scores have other users"``, most frequent reason first."""
        lines = []
        for kind, reasons in self.refused.items():
            total = self.done[kind] + sum(reasons.values())
            for reason, count in reasons.most_common():
                lines.append(f"{count} of {total} {kind} {self.left}: {reason}")
        return lines


class GraphoptPass:
    """Mixin for graphopt's passes: notes, counted refusals, and structural ``ensures`` (see the module docstring)."""

    # Graph inputs and outputs keep names, element types and static sizes.
    keeps_interface: bool = True
    # How a refused candidate is described: "left unfused", "stays float", "left whole".
    left_as: str = "left unfused"

    def __call__(self, model_or_result: ir.Model | ir.passes.PassResult, /) -> ir.passes.PassResult:
        model = model_or_result.model if isinstance(model_or_result, ir.passes.PassResult) else model_or_result
        if not isinstance(model, ir.Model):  # an onnx.ModelProto failed deep inside with "AttributeError: inputs"
            raise TypeError(
                f"{type(self).__name__} takes an onnx_ir.Model (ir.from_proto(proto) for an onnx.ModelProto), "
                f"not {type(model).__name__}"
            )
        declared = unname_negative_dims(model)
        try:
            result = super().__call__(model_or_result)  # type: ignore[misc]
        except BaseException:
            _restore_shapes(declared)
            raise
        if result.model is not model or not result.modified:
            _restore_shapes(declared)
        if result.modified:
            rename_shadowed_initializers(result.model.graph, getattr(self, "_initializers_before", set()))
        if not isinstance(result, NotedResult):  # a pass built on an onnx-ir pass returns its plain result
            result = self.result(result.model, result.modified)
        # A PassManager returns a plain PassResult: logged, a refusal's reason reaches its user too (the pipeline
        # shows them in the report; the CLI's -vv shows these lines).
        logger = logging.getLogger(type(self).__module__)
        for line in (*result.refusals, *result.notes):
            logger.debug("%s: %s", type(self).__name__, line)
        return result

    def requires(self, model: ir.Model) -> None:
        super().requires(model)  # type: ignore[misc]
        self._reset()
        self._interface = _interface(model)
        self._initializers_before = set(model.graph.initializers)
        self._unimported = {(where, domain) for where, domain, _ in _unimported_domains(model)}

    def ensures(self, model: ir.Model) -> None:
        super().ensures(model)  # type: ignore[misc]
        if self.keeps_interface and getattr(self, "_interface", None) is not None:
            _check_interface(self._interface, _interface(model))
        _check_domains(model, already=getattr(self, "_unimported", set()))
        _check_order(model)

    def note(self, text: str) -> None:
        """Record a decision for the report ("3 layers kept float: ...")."""
        self._state()[0].append(text)

    def done(self, kind: str) -> None:
        """Count one candidate of ``kind`` rewritten."""
        self._state()[1].record_done(kind)

    def refuse(self, kind: str, reason: str) -> None:
        """Count one candidate of ``kind`` left alone, and say why."""
        self._state()[1].record_refused(kind, reason)

    def decline(self, reason: str) -> None:
        """Say why the pass as a whole left the model alone (no kernel on the target, no samples)."""
        self._state()[2].append(reason)

    def said_why(self) -> bool:
        """Whether a refusal or a decline already says why something was left alone."""
        _, tally, declined = self._state()
        return bool(declined or tally.lines())

    def result(
        self,
        model: ir.Model,
        modified: bool,
        twin: Twin | None = None,
        *,
        fitted_to_samples: bool = False,
        fitted_to_checked: str = "",
    ) -> NotedResult:
        """The pass's result with its notes and refusals (declines first, then the counted ones).

        Approximate passes give the ``twin`` their result claims to compute (see
        ``optimizer.protocol.Twin``); the pipeline rolls back a modified result without one.
        ``fitted_to_samples``: the result was fitted to the calibration samples but those
        ``optimizer.samples.hold_out`` holds out, on which alone the budget is then checked. ``fitted_to_checked``:
        what was fitted to the very samples the budget is checked on, none held out ("its ranges were taken from").
        """
        notes, tally, declined = self._state()
        refusals = [*declined, *tally.lines()]
        return NotedResult(
            model,
            modified,
            notes=list(notes),
            refusals=refusals,
            twin=twin,
            fitted_to_samples=fitted_to_samples,
            fitted_to_checked=fitted_to_checked,
        )

    def _state(self) -> tuple[list[str], Tally, list[str]]:
        # ``call`` may be used without ``__call__`` (and so without ``requires``).
        if not hasattr(self, "_notes"):
            self._reset()
        return self._notes, self._tally, self._declined

    def _reset(self) -> None:
        self._notes: list[str] = []
        self._tally = Tally(self.left_as)
        self._declined: list[str] = []


def checked_target(target: object) -> str:
    """``target`` where it is one of graphopt's targets, else ``ValueError``.

    Checked where a pass is built, as its other arguments are: the pipeline's options are checked before any pass
    is built, but a pass built by hand for an unknown target ("gpu", "CUDA") had no kernels, so every fusion
    declined, and a plain ``PassManager`` keeps no pass's refusals to say why (the int4 pass raised ``KeyError``)."""
    if not isinstance(target, str) or target not in TARGETS:
        raise ValueError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
    return target


def checked_length(value: object, name: str = "max_sequence") -> int:
    """``value`` where it is a positive whole number of tokens, else ``ValueError``: the fusions that probe a mask
    or build rotary tables up to it failed deep inside numpy on 0, a negative or a float, or on a string in a
    comparison, after the pass had started."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} {value!r}: expected a positive number of tokens")
    return int(value)


def unfit_on_generated_samples(importance: str | None, repair: bool | None, fitting: str, default: str) -> str | None:
    """Why ``--importance activation`` (or ``reconstruction``) or ``repair=True``, asked for explicitly, cannot be
    honoured when the samples are generated random inputs (``fitting``: what they would fit, e.g. "ranking
    or re-fitting units"; ``default``: what runs instead); None if neither was asked for."""
    asked = [f"--importance {importance}"] if importance in DATA_IMPORTANCE_KINDS else []
    asked += ["repair=True"] if repair else []
    if not asked:
        return None
    return (
        f"{' and '.join(asked)} needs --calibration data: the samples are generated random inputs, "
        f"and {fitting} on them fits noise (give real samples, or leave both to their defaults for {default})"
    )


def refuse_without_samples(importance: str | None, repair: bool | None, fitting: str, default: str) -> None:
    """``ValueError`` where ``--importance activation`` (or ``reconstruction``) or ``repair=True`` is asked of a pass
    built without samples (``fitting``: what they would fit, e.g. "ranking or re-fitting units"; ``default``: what
    runs without them): it would run ``default`` and say nothing of it."""
    asked = [f"importance={importance!r}"] if importance in DATA_IMPORTANCE_KINDS else []
    asked += ["repair=True"] if repair else []
    if asked:
        raise ValueError(
            f"{' and '.join(asked)} {'need' if len(asked) > 1 else 'needs'} samples= (calibration data) for {fitting}: "
            f"without them the pass runs {default} (give samples, or leave both to their defaults)"
        )


def _interface(model: ir.Model) -> tuple[list, list]:
    def describe(values) -> list:
        return [(v.name, v.dtype, None if v.shape is None else list(v.shape)) for v in values]

    return describe(model.graph.inputs), describe(model.graph.outputs)


def _check_interface(before: tuple[list, list], after: tuple[list, list]) -> None:
    for side, old, new in (("input", before[0], after[0]), ("output", before[1], after[1])):
        if [name for name, _, _ in old] != [name for name, _, _ in new]:
            raise ir.passes.PostconditionError(
                f"graph {side}s changed from {[n for n, _, _ in old]} to {[n for n, _, _ in new]}"
            )
        for (name, dtype, shape), (_, new_dtype, new_shape) in zip(old, new):
            if dtype is not None and new_dtype is not None and dtype != new_dtype:
                raise ir.passes.PostconditionError(f"graph {side} {name!r} changed type from {dtype} to {new_dtype}")
            if shape is None or new_shape is None:
                continue
            if len(shape) != len(new_shape) or any(
                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(shape, new_shape)
            ):
                raise ir.passes.PostconditionError(f"graph {side} {name!r} changed shape from {shape} to {new_shape}")


def _check_order(model: ir.Model) -> None:
    """Every node of the main graph and of each function comes after the nodes producing its inputs."""
    for graph in (model.graph, *model.functions.values()):
        seen: set[int] = set()
        for node in graph:
            for value in node.inputs:
                producer = value.producer() if value is not None else None
                if producer is not None and producer.graph is node.graph and id(producer) not in seen:
                    raise ir.passes.PostconditionError(
                        f"{node.op_type} {node.name!r} reads {value.name!r} before {producer.op_type} "
                        f"{producer.name!r} computes it (the graph is not in topological order)"
                    )
            seen.add(id(node))


def _restore_shapes(declared: list[tuple[ir.Value, ir.Shape]]) -> None:
    for value, shape in declared:
        value.shape = shape


def _unimported_domains(model: ir.Model) -> Iterator[tuple[str, str, ir.Node]]:
    """``(where, domain, node)`` for each node whose domain neither its model, nor the function it is in, imports
    (a local function's own domain excepted)."""
    local = {(function.domain, function.name) for function in model.functions.values()}
    scopes = [(model.graph, model.opset_imports, "the model")]
    scopes += [
        (f, {**model.opset_imports, **f.opset_imports}, f"function {f.name!r}") for f in model.functions.values()
    ]
    for graph, imports, where in scopes:
        for node in ir.traversal.RecursiveGraphIterator(graph):
            domain = "" if node.domain == "ai.onnx" else node.domain
            if domain and domain not in imports and (node.domain, node.op_type) not in local:
                yield where, domain, node


def _check_domains(model: ir.Model, already: set[tuple[str, str]] = frozenset()) -> None:
    """Every node's domain is imported where it is used, unless the pass's input already lacked that import there
    (``already``: ``(where, domain)`` pairs; ONNX Runtime's own quantizer writes ``com.microsoft`` ops without it)."""
    for where, domain, node in _unimported_domains(model):
        if (where, domain) not in already:
            raise ir.passes.PostconditionError(
                f"{node.op_type} {node.name!r} is in domain {domain!r}, which {where} does not import"
            )

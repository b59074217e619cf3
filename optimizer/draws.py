"""A model's random draws: which outputs they reach, which draws of the main graph verification can feed, and feeding
them.

A draw is a node that may draw random numbers (``NONDETERMINISTIC_OPS``: ``RandomNormal[Like]``,
``RandomUniform[Like]``, ``Multinomial``, ``Bernoulli``, and a training-mode ``Dropout``, whose draw is its mask). Two
runs of ONNX Runtime draw other numbers, and so does one graph rewritten: the outputs a draw reaches
(``drawn_outputs``) are random, and neither an exact check nor an accuracy budget can compare them run against run
(``undrawn`` leaves them out of a run; ``undrawn_budget_runs``, out of an approximate pass's budget reference). The
draws of the main graph (``main_draws``) can instead be taken from one run of a model (``draw_values``) and fed to
copies of it and of a rewrite of it (``with_draws_fed``), where those outputs are computed from the same numbers and
compared as deterministic ones are (``optimizer.verify``'s ``_FedDraws``), and measured by the accuracy budgets
(``budget_references``, ``fed_budget_runs``: ``optimizer.runtime.drift_of`` feeds the candidate). A draw inside an
``If``'s branch, a ``Loop``'s or ``Scan``'s body or a model-local function is not fed: it may draw at each iteration or
call, or never.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_domain
from optimizer.errors import RuntimeRefusedError
from optimizer.padding import nodes_and_subgraphs, nodes_within
from optimizer.runtime import budget_runs, exposing, inference_session, run_session

# Ops whose outputs change from run to run; outputs that depend on them are not compared. A Dropout draws its mask
# in training mode (a graph exported from model.train()): compared, every rewrite of it was rolled back for its
# draws; in inference mode its outputs do not change between the two runs, and are compared.
NONDETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}
)


def undrawn(run: Mapping[str, Any], random: Collection[str]) -> dict[str, Any]:
    """One run of a model less its outputs named in ``random`` (drawn: ``drawn_outputs``, or
    ``optimizer.verify.Verifier.skipped``), which the accuracy budget does not measure: two runs draw other numbers (a
    training-mode Dropout's mask in each run of ONNX Runtime), and int8 of a model with a drawn output beside a
    deterministic one missed the budget at a cosine of 0.46 on them, rolled back as inaccurate (review s74 late2)."""
    return {name: value for name, value in run.items() if name not in random}


def may_draw(node: ir.Node) -> bool:
    """Whether ``node`` may draw random numbers (``NONDETERMINISTIC_OPS``): a Dropout only where it is given a
    ``training_mode`` that is not a constant False (without one, or below opset 12, it passes its input through)."""
    if node.op_type not in NONDETERMINISTIC_OPS:
        return False
    if node.op_type != "Dropout":
        return True
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is None:
        return False
    constant = ir.convenience.get_const_tensor(training)
    return constant is None or bool(np.any(constant.numpy()))


def _draws_on_every_run(node: ir.Node) -> bool:
    """Whether ``node``, a node of the main graph, draws random numbers whatever the inputs: a random op of
    ``NONDETERMINISTIC_OPS``, a Dropout only where its ``training_mode`` is a constant True and its ratio the default
    or a constant above 0 (an overridable default, or a ratio or mode fed as an input, may be 0 or False)."""
    if node.op_type != "Dropout":
        return node.op_type in NONDETERMINISTIC_OPS
    training, ratio = (_fixed(node.inputs[index]) if len(node.inputs) > index else None for index in (2, 1))
    if training is None or not bool(np.all(training)):
        return False
    return (len(node.inputs) < 2 or node.inputs[1] is None) or (ratio is not None and bool(np.all(ratio > 0)))


def _fixed(value: ir.Value | None) -> np.ndarray | None:
    """A constant's value, None for a computed value or a graph input's default (a caller may override it)."""
    tensor = None if value is None or value.is_graph_input() else ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def drawn_outputs(graph: ir.Graph, functions: Mapping[ir.OperatorIdentifier, ir.Function] | None = None) -> set[str]:
    """Names of ``graph``'s outputs computed from a draw of a node of ``graph`` itself (``_draws_on_every_run``, or a
    call of one of the model's local ``functions`` whose body so draws: ``_drawing_functions``), through its nodes'
    inputs or the outer values their subgraphs read. Such a node runs on every run, so these outputs are random
    whatever a few runs happened to draw: a Bernoulli over one value draws the same in five runs once in 16, a
    Multinomial of 0.7 and 0.3 once in 6. (A draw inside a branch or a loop body may never run; its outputs are found
    by running the original.)"""
    return _reached_by_draws(graph, _drawing_functions(functions or {}))


def _drawing_functions(functions: Mapping[ir.OperatorIdentifier, ir.Function]) -> dict[ir.OperatorIdentifier, set[int]]:
    """For each local function of ``functions`` whose body draws on every call (through the functions it calls too),
    the positions of its outputs a draw reaches (``_reached_by_draws``): a sampler written as a function was never
    known random, its outputs compared, and every rewrite of its model rolled back for the other numbers it drew
    (review s74)."""
    drawing: dict[ir.OperatorIdentifier, set[int]] = {}
    grown = True
    while grown:  # to a fixed point over nested calls; the sets only grow
        grown = False
        for key, function in functions.items():
            reached = _reached_by_draws(function.graph, drawing)
            positions = {index for index, value in enumerate(function.outputs) if value.name in reached}
            if positions != drawing.get(key, set()):
                drawing[key], grown = positions, True
    return drawing


def _reached_by_draws(graph: ir.Graph, drawing: Mapping[ir.OperatorIdentifier, set[int]]) -> set[str]:
    """Names of ``graph``'s outputs a draw of its own nodes reaches (``drawn_outputs``), ``drawing`` the positions of
    the outputs a call of each local function draws (``_drawing_functions``)."""

    def drawn_by(node: ir.Node) -> list[ir.Value]:
        if _draws_on_every_run(node):
            return list(node.outputs)
        positions = drawing.get(node.op_identifier(), set())
        return [value for index, value in enumerate(node.outputs) if index in positions]

    reached: set[int] = set()
    if not any(drawn_by(node) for node in graph):
        return set()
    grown = True
    while grown:  # once over a sorted graph, and once more to see nothing grew (ONNX Runtime runs unsorted ones too)
        before = len(reached)
        for node in graph:
            if node.op_type in ("Shape", "Size"):
                continue  # a draw's shape is no draw: a rewrite wrong in it must still be caught
            if any(id(value) in reached for value in _values_read(node)):
                reached.update(id(value) for value in node.outputs)
            else:
                reached.update(id(value) for value in drawn_by(node))
        grown = len(reached) > before
    return {value.name for value in graph.outputs if id(value) in reached}


def _values_read(node: ir.Node) -> Iterator[ir.Value]:
    """The values ``node`` reads: its inputs (less those whose values it cannot pass on, ``_passes_on``), and those its
    subgraphs' nodes read (values from outside among them; of an ``If`` of a constant condition, the branch it takes:
    a draw read only in the other made its outputs random, never compared, until review s74)."""
    yield from (value for index, value in enumerate(node.inputs) if value is not None and _passes_on(node, index))
    inner_nodes = nodes_within(node)
    if node.op_type == "If" and is_onnx_domain(node) and (condition := _fixed(node.inputs[0])) is not None:
        taken = node.attributes.get("then_branch" if bool(np.all(condition)) else "else_branch")
        branch = taken.as_graph() if taken is not None and not taken.is_ref() else None
        inner_nodes = nodes_and_subgraphs(branch) if branch is not None else iter(())
    for inner in inner_nodes:
        yield from (value for value in inner.inputs if value is not None)


# Draws of finite values only, which a constant 0 multiplies away (a Dropout passes its input's inf on).
_FINITE_DRAWS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli"})


def _passes_on(node: ir.Node, index: int) -> bool:
    """Whether the values of input ``index`` of ``node`` can reach its outputs' values: not the dtype ``CastLike``
    reads, the side a constant condition of ``Where`` never picks, nor a finite draw multiplied by a constant 0 (a
    DDIM step exported at eta 0 adds ``0 * RandomNormalLike``): a deterministic output read as drawn was never
    compared, and a model of such outputs alone was refused as unverifiable (review s73 late1)."""
    if not is_onnx_domain(node):
        return True
    if node.op_type == "CastLike":
        return index == 0
    if node.op_type == "Where" and index in (1, 2) and (condition := _fixed(node.inputs[0])) is not None:
        return bool(np.any(condition if index == 1 else ~condition.astype(bool)))
    if node.op_type == "Mul" and len(node.inputs) == 2 and (value := node.inputs[index]) is not None:
        factor = _fixed(node.inputs[1 - index])
        producer = value.producer()
        drawn = producer is not None and is_onnx_domain(producer) and producer.op_type in _FINITE_DRAWS
        return not (drawn and factor is not None and factor.size > 0 and not np.any(factor))
    return True


# Names verification gives what it adds to a model whose draws it feeds (``with_draws_fed``), after the draw's key (the
# name of its first output): the graph input its random values are fed under (a Dropout's: its mask), and the outputs
# that expose the draw's computed inputs.
FED_MARK = "::graphopt_drawn"
READ_MARK = "::graphopt_read_by_draw"
_DRAW_INPUT_NAMES = {"Dropout": ("data", "ratio", "training_mode")}
# The draws whose values are of their input's type where no ``dtype`` attribute says otherwise.
_INPUT_TYPED = frozenset({"RandomNormalLike", "RandomUniformLike", "Bernoulli"})
# The draws whose values are of their input's shape.
_INPUT_SHAPED = frozenset({"RandomNormalLike", "RandomUniformLike", "Bernoulli"})
# The draws' attribute defaults (ONNX's operator schemas): one written out, or left out where it was written, draws
# the same; read as a changed draw ("scale unset → 1.0"), such a correct rewrite was rolled back (review s74 late2).
# Not a ``*Like``'s or a Bernoulli's dtype, whose default is its input's.
_DRAW_DEFAULTS: dict[str, dict[str, Any]] = {
    "RandomNormal": {"mean": 0.0, "scale": 1.0, "dtype": ir.DataType.FLOAT.value},
    "RandomNormalLike": {"mean": 0.0, "scale": 1.0},
    "RandomUniform": {"low": 0.0, "high": 1.0, "dtype": ir.DataType.FLOAT.value},
    "RandomUniformLike": {"low": 0.0, "high": 1.0},
    "Multinomial": {"sample_size": 1, "dtype": ir.DataType.INT32.value},
}


def main_draws(graph: ir.Graph) -> dict[str, ir.Node]:
    """The nodes of ``graph`` itself (not of its subgraphs, nor calls of functions) that may draw random numbers
    (``may_draw``), by the name of their first output; not a Dropout of a constant ratio 0, which keeps every value
    (a rewrite may drop it)."""
    return {
        node.outputs[0].name: node
        for node in graph
        if is_onnx_domain(node) and may_draw(node) and node.outputs and node.outputs[0].name and not _keeps_all(node)
    }


# The ops whose output may name a draw in a rewrite of the base (``draw_aliases``): removed where they change nothing
# (``remove-identity``, ``simplify-ops``' no-op rules), their output's name goes to their input.
_RENAMING = frozenset({"Identity", "Cast", "Reshape", "Transpose", "Expand"})


def draw_aliases(graph: ir.Graph, keys: Collection[str]) -> dict[str, str]:
    """Each name an ``Identity`` (or a chain of ``_RENAMING`` ops) gives the values of a draw of ``keys`` in ``graph``,
    to the draw's key: removing that Identity names the draw so where it was a graph output (onnx-ir's
    ``IdentityEliminationPass``), and such a correct rewrite was rolled back as one that removed the draw (review s74
    late2); so the other ops ``simplify-ops`` removes where they change nothing (a Cast to the draw's own type: review
    s75 late74a). A name only pairs a result's draw with the base's (``matched_draws``): each is compared after, fed
    the same."""
    aliases: dict[str, str] = {}
    for node in graph:
        if node.op_type in _RENAMING and is_onnx_domain(node) and node.inputs and node.inputs[0] is not None:
            source = node.inputs[0].name or ""
            key = source if source in keys else aliases.get(source)
            if key is not None and node.outputs[0].name:
                aliases[node.outputs[0].name] = key
    return aliases


def _keeps_all(node: ir.Node) -> bool:
    """Whether ``node`` is a Dropout of a constant ratio 0, which keeps every value."""
    ratio = _fixed(node.inputs[1]) if node.op_type == "Dropout" and len(node.inputs) > 1 else None
    return ratio is not None and not np.any(ratio)


def reached_from(graph: ir.Graph, values: Sequence[ir.Value]) -> set[str]:
    """Names of ``graph``'s outputs whose values ``values`` reach, as ``_reached_by_draws`` follows a draw."""
    reached = {id(value) for value in values}
    grown = True
    while grown:
        before = len(reached)
        for node in graph:
            if node.op_type not in ("Shape", "Size") and any(id(value) in reached for value in _values_read(node)):
                reached.update(id(value) for value in node.outputs)
        grown = len(reached) > before
    return {value.name for value in graph.outputs if id(value) in reached}


def values_reaching(graph: ir.Graph, names: set[str]) -> set[int]:
    """The ids of ``graph``'s values whose values reach one of its outputs named in ``names``, as ``reached_from``
    follows them: one walk back over the graph for all of its draws."""
    reaching = {id(value) for value in graph.outputs if value.name in names}
    grown = True
    while grown:
        before = len(reaching)
        for node in reversed(graph):
            if node.op_type not in ("Shape", "Size") and any(id(value) in reaching for value in node.outputs):
                reaching.update(id(value) for value in _values_read(node))
        grown = len(reaching) > before
    return reaching


def _shown(value: Any) -> str:
    """An attribute's or a constant input's value in a reason: a scalar as itself, a tensor by its shape."""
    if value is None:
        return "unset"
    if isinstance(value, ir.TensorProtocol):
        value = value.numpy()
    if isinstance(value, np.ndarray):
        return str(value.item()) if value.size == 1 else f"a {list(value.shape)} tensor"
    return str(value)


def _same_value(first: Any, second: Any) -> bool:
    # A runtime protocol's isinstance is slow (a model of 600 draws spent 0.4 s a check here): scalars first.
    plain = (int, float, str, type(None))
    arrays = [
        value.numpy() if not isinstance(value, plain) and isinstance(value, ir.TensorProtocol) else value
        for value in (first, second)
    ]
    if any(isinstance(array, np.ndarray) for array in arrays):
        return (
            all(isinstance(array, np.ndarray) for array in arrays)
            # A float16 model's ratio 0.5 is the float32 model's 0.5: the same draw (``convert-float16`` was rolled
            # back as "ratio 0.5 → 0.5"; review s74 late5), where 0.1 is not 0.1 in float16.
            and (arrays[0].dtype == arrays[1].dtype or all(array.dtype.kind == "f" for array in arrays))
            and np.array_equal(arrays[0], arrays[1])
        )
    return type(arrays[0]) is type(arrays[1]) and arrays[0] == arrays[1]


@dataclass
class Draw:
    """A draw of the base's main graph (``may_draw``) that verification feeds (``optimizer.verify._FedDraws``): its
    ``node``, the dtype of the values it draws (a Dropout's mask: bool), and a Dropout's data type."""

    node: ir.Node
    dtype: ir.DataType
    data: ir.DataType | None = None

    @property
    def computed(self) -> list[int]:
        """The positions of its inputs that are computed (not constants): exposed as outputs, compared there."""
        return [index for index, value in enumerate(self.node.inputs) if value is not None and _fixed(value) is None]

    def read_as(self, index: int) -> ir.DataType | None:
        """The data type of this draw's input ``index`` in the base: recorded, or that of what it drew where it draws
        in its input's type (a Dropout's data, a ``*Like`` or a ``Bernoulli`` with no ``dtype``); None where unknown."""
        if index == 0 and self.data is not None:
            return self.data
        if (recorded := self.node.inputs[index].dtype) is not None:
            return recorded
        follows = self.node.op_type in _INPUT_TYPED and "dtype" not in self.node.attributes
        return self.dtype if index == 0 and follows else None

    def differs(self, node: ir.Node) -> str | None:
        """How ``node``, the rewrite's node of this draw's key, draws otherwise, in words: its op, an attribute or a
        constant input (its computed inputs are compared as outputs); None where it draws as this one does."""
        if node.op_type != self.node.op_type:
            return f"{self.node.op_type} → {node.op_type}"
        defaults = _DRAW_DEFAULTS.get(node.op_type, {})
        ours = {**defaults, **{name: attribute.value for name, attribute in self.node.attributes.items()}}
        theirs = {**defaults, **{name: attribute.value for name, attribute in node.attributes.items()}}
        for name in sorted(ours.keys() | theirs.keys()):
            if not _same_value(ours.get(name), theirs.get(name)):
                return f"{name} {_shown(ours.get(name))} → {_shown(theirs.get(name))}"
        labels = _DRAW_INPUT_NAMES.get(node.op_type, ())
        for index in range(max(len(self.node.inputs), len(node.inputs))):
            mine, other = (inputs[index] if index < len(inputs) else None for inputs in (self.node.inputs, node.inputs))
            label = labels[index] if index < len(labels) else f"input {index}"
            if (mine is None) != (other is None):
                return f"{label} {'given' if mine is None else 'left out'}"
            if mine is None or (fixed := _fixed(mine)) is None:
                continue
            found = _fixed(other)
            if found is None or not _same_value(fixed, found):
                return f"{label} {_shown(fixed)} → {'computed' if found is None else _shown(found)}"
        return None


def matched_draws(found: Mapping[str, ir.Node], keys: Collection[str], aliases: Mapping[str, str]) -> dict[str, str]:
    """The keys of ``keys`` by the names of ``found`` (a rewrite's draws, ``main_draws``) that draw them: under the key
    itself or, where none does, under a name an ``Identity`` of it had (``draw_aliases``), or that of a ``Cast`` (or a
    chain of them) of its values: ``convert-float16`` casts a float16 Dropout's output to the float32 graph output it
    was, and its float16-rounded twin (``Twin.deployed``) casts each Dropout's to float16 and back under its name; read
    as a draw removed, such a correct result was rolled back, or measured without the outputs the draw reaches (review
    s75 late75a). Fed each its key's values, a rewrite that drew otherwise still differs where outputs are compared."""
    matched = {name: name for name in found if name in keys}
    for name, node in found.items():
        if name in matched:
            continue
        for key in (aliases.get(name), *_cast_names(node.outputs[0])):
            if key is not None and key in keys and key not in found and key not in matched.values():
                matched[name] = key
                break
    return matched


def _cast_names(value: ir.Value) -> list[str]:
    """The names of the outputs of the ``Cast`` nodes reading ``value``, and of those reading them, nearest first."""
    names, frontier = [], [value]
    while frontier:
        for use in frontier.pop(0).uses():
            if use.node.op_type == "Cast" and is_onnx_domain(use.node):
                names.append(use.node.outputs[0].name)
                frontier.append(use.node.outputs[0])
    return names


def read_name(key: str, index: int) -> str:
    """The name of the output ``with_draws_fed`` exposes input ``index`` of the draw ``key`` reads under."""
    return f"{key}{READ_MARK}{index}"


def draws_exposed(model: ir.Model, draws: Collection[str], also: Sequence[str] = ()) -> tuple[ir.Model, dict[str, str]]:
    """A copy of ``model`` whose outputs include what each draw of its main graph named in ``draws`` (by key) draws
    (and the values ``also`` names), and the names of those outputs by the name each draw is fed under
    (``with_draws_fed``): a run of it gives the values to feed copies of ``model`` and of a rewrite of it. A Dropout's
    draw is its mask: one that leaves it out is given it."""
    probe = model.clone()
    found = main_draws(probe.graph)
    exposed: dict[str, str] = {}  # fed name -> the probe's value
    for key in draws:
        node = found[key]
        if node.op_type != "Dropout":
            exposed[key + FED_MARK] = key
            continue
        if len(node.outputs) < 2 or not node.outputs[1].name:
            twin = ir.Node("", "Dropout", node.inputs, node.attributes.values(), num_outputs=2, name=node.name)
            ir.convenience.replace_nodes_and_values(
                probe.graph, node, [node], [twin], [node.outputs[0]], [twin.outputs[0]]
            )
            twin.outputs[1].name = key + FED_MARK
            node = twin
        exposed[key + FED_MARK] = node.outputs[1].name
    return exposing(probe, [*exposed.values(), *also]), exposed


def draw_values(
    model: ir.Model, draws: Mapping[str, ir.Node], input_sets: Sequence[Mapping[str, np.ndarray]]
) -> tuple[list[dict[str, np.ndarray]], dict[str, Draw]]:
    """What ``draws`` (nodes of ``model``'s main graph, by key) draw in one run of ``model`` on each input set, by
    the name they are fed under (``with_draws_fed``), and each as a ``Draw``. A Dropout's draw is its mask: one that
    leaves it out is given it in the run."""
    data = {key: key for key, node in draws.items() if node.op_type == "Dropout"}  # its output, for its data type
    probe, exposed = draws_exposed(model, draws, also=list(data.values()))
    with inference_session(probe) as session:
        runs = [run_session(session, inputs) for inputs in input_sets]
    values = [{fed: run[name] for fed, name in exposed.items()} for run in runs]
    fed = {
        key: Draw(
            node,
            ir.DataType.from_numpy(values[0][key + FED_MARK].dtype),
            ir.DataType.from_numpy(runs[0][data[key]].dtype) if key in data else None,
        )
        for key, node in draws.items()
    }
    return values, fed


def with_draws_fed(
    model: ir.Model, draws: Mapping[str, Draw], renamed: Mapping[str, str] | None = None, *, reads: bool = True
) -> ir.Model:
    """A copy of ``model`` in which each node of its main graph of a key of ``draws`` reads what it draws from a graph
    input (``key + FED_MARK``) instead: a random op becomes an ``Identity`` of it; a Dropout computes ``x * mask / (1 -
    ratio)`` from the mask fed, as ONNX Runtime does (``x`` where ``training_mode`` is false: ``_fed_dropout``), and
    outputs the mask where it did. With ``reads``, each computed input of such a node is also an output
    (``read_name``), so the values it draws from are compared too (an accuracy budget measures the model's own outputs
    alone: exposed there, each Dropout's input was kept for every batch of samples, then dropped; review s75
    late74a). Without ``reads``, a Dropout's mask or a ``*Like``'s or ``Bernoulli``'s values fed where its data or
    input is of another shape fail the run, and a ``Multinomial``'s ids where its input has other rows: broadcast, they
    passed a budget for a rewrite that draws otherwise (reviews s75 late75c and late75d). The same in every model it is
    given, so two models fed one draw compute the same where they compute the same from it. ``renamed`` gives the key
    of a draw ``model`` names otherwise (``optimizer.verify._FedDraws.matched``), by its name there."""
    copy = model.clone()
    graph = copy.graph
    for name, node in main_draws(graph).items():
        key = (renamed or {}).get(name, name)
        draw = draws.get(key)
        if draw is None:
            continue
        for index in draw.computed if reads else ():
            # A float16 rewrite's Dropout data read in the original's float32, as its float outputs are compared (a
            # dtype of its own failed ``convert-float16``; review s74 late5), and so a sampler's input (review s75
            # late74a).
            read_as = draw.read_as(index)
            if read_as is not None and index < len(node.inputs) and node.inputs[index].dtype not in (None, read_as):
                read = ir.node("Cast", [node.inputs[index]], {"to": read_as}, name=read_name(key, index))
            else:
                read = ir.node("Identity", [node.inputs[index]], name=read_name(key, index))
            read.outputs[0].name = read_name(key, index)
            graph.insert_before(node, read)
            graph.outputs.append(read.outputs[0])
        fed = ir.Value(name=key + FED_MARK, type=ir.TensorType(draw.dtype))
        graph.inputs.append(fed)
        if node.op_type != "Dropout":
            # A float16 rewrite's sampler (``RandomNormalLike`` or ``Bernoulli`` of a float16 input) fed the original's
            # numbers in its own type: fed as they were drawn, the copy did not load, and ``convert-float16`` of a
            # model with a sampler was rolled back (review s75 late74a).
            drawn, values, new = node.outputs[0].dtype, fed, []
            if not reads and node.op_type in _INPUT_SHAPED and node.inputs and node.inputs[0] is not None:
                # The values in its input's shape, or no run, as a Dropout's mask (``_fed_dropout``).
                new += [ir.node("Shape", [node.inputs[0]], name=f"{key}{FED_MARK}_input_shape")]
                new += [ir.node("Reshape", [fed, new[-1].outputs[0]], name=f"{key}{FED_MARK}_as_input")]
            elif not reads and node.op_type == "Multinomial" and node.inputs and node.inputs[0] is not None:
                # Its ids as ``[batch, sample_size]`` of its input, or no run: broadcast, ids drawn for ``x [1, C]`` fed
                # a rewrite's draw for ``Expand(x) [3, C]`` (a draw a row) passed a budget (review s75 late75d).
                samples = node.attributes.get_int("sample_size", 1)
                new += [ir.node("Shape", [node.inputs[0]], name=f"{key}{FED_MARK}_input_shape")]
                first = ir.tensor(np.array([0], np.int64), name=f"{key}{FED_MARK}_first")
                new += [ir.node("Constant", [], {"value": first}, name=f"{key}{FED_MARK}_first")]
                new += [ir.node("Gather", [new[0].outputs[0], new[1].outputs[0]], name=f"{key}{FED_MARK}_batch")]
                size = ir.tensor(np.array([samples], np.int64), name=f"{key}{FED_MARK}_samples")
                new += [ir.node("Constant", [], {"value": size}, name=f"{key}{FED_MARK}_samples")]
                shape = [new[2].outputs[0], new[3].outputs[0]]
                new += [ir.node("Concat", shape, {"axis": 0}, name=f"{key}{FED_MARK}_drawn_shape")]
                new += [ir.node("Reshape", [fed, new[-1].outputs[0]], name=f"{key}{FED_MARK}_as_input")]
            for step in new:
                step.outputs[0].name = step.name
            if new:
                values = new[-1].outputs[0]
            if drawn is not None and drawn != draw.dtype:
                new.append(ir.node("Cast", [values], {"to": drawn}, name=key + FED_MARK))
            else:
                new.append(ir.node("Identity", [values], name=key + FED_MARK))
            ir.convenience.replace_nodes_and_values(graph, node, [node], new, [node.outputs[0]], [new[-1].outputs[0]])
            continue
        olds = [node.outputs[0]]
        if len(node.outputs) > 1 and node.outputs[1].name:
            olds.append(node.outputs[1])
        # The data type of this model's Dropout, which a float16 rewrite changes from the draw's.
        data = node.inputs[0].dtype if node.inputs[0] is not None and node.inputs[0].dtype is not None else draw.data
        nodes = _fed_dropout(key, node, fed, data or ir.DataType.FLOAT, shaped=not reads)
        helpers = len(nodes) - 2
        new = nodes[: helpers + len(olds)]
        ir.convenience.replace_nodes_and_values(graph, node, [node], new, olds, [n.outputs[0] for n in new[helpers:]])
    return copy


def _fed_dropout(key: str, node: ir.Node, kept: ir.Value, data: ir.DataType, *, shaped: bool) -> list[ir.Node]:
    """The nodes that compute a Dropout's outputs from its ``kept`` mask, fed (``with_draws_fed``): helpers, then its
    data output, ``x * mask / (1 - ratio)`` as ONNX Runtime computes it (``x * mask * (1 / (1 - ratio))`` is an ulp
    off), ``x`` where ``training_mode`` is false, and its mask. With ``shaped``, a mask not of the data's shape fails
    the run (where the data is not compared, ``reads``)."""
    x, ratio, training = (node.inputs[index] if index < len(node.inputs) else None for index in range(3))
    one = ir.node("Constant", [], {"value": ir.tensor(np.array(1.0, np.float32))}, name=f"{key}{FED_MARK}_one")
    if ratio is None:
        share = ir.node("Constant", [], {"value": ir.tensor(np.array(0.5, np.float32))}, name=f"{key}{FED_MARK}_ratio")
    else:
        share = ir.node("Cast", [ratio], {"to": ir.DataType.FLOAT}, name=f"{key}{FED_MARK}_ratio")
    nodes = [one, share, ir.node("Sub", [one.outputs[0], share.outputs[0]], name=f"{key}{FED_MARK}_kept_share")]
    nodes.append(ir.node("Where", [training, nodes[-1].outputs[0], one.outputs[0]], name=f"{key}{FED_MARK}_divisor_f"))
    nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], {"to": data}, name=f"{key}{FED_MARK}_divisor"))
    divisor = nodes[-1].outputs[0]
    if shaped:
        # The mask in the data's shape, or no run: broadcast, a mask drawn for ``x [1, 4]`` fed a rewrite's Dropout of
        # ``Expand(x) [3, 4]`` (a draw a row, where the original drew one for every row) gave each row the same mask,
        # and a budget, which compares no draw's input, measured it at a cosine of 1.0 (review s75 late75c).
        nodes.append(ir.node("Shape", [x], name=f"{key}{FED_MARK}_data_shape"))
        nodes.append(ir.node("Reshape", [kept, nodes[-1].outputs[0]], name=f"{key}{FED_MARK}_mask_as_data"))
        kept = nodes[-1].outputs[0]
    nodes.append(ir.node("Cast", [kept], {"to": data}, name=f"{key}{FED_MARK}_kept"))
    nodes.append(ir.node("Mul", [x, nodes[-1].outputs[0]], name=f"{key}{FED_MARK}_masked"))
    nodes.append(ir.node("Div", [nodes[-1].outputs[0], divisor], name=f"{key}{FED_MARK}_data"))
    nodes.append(ir.node("Identity", [kept], name=f"{key}{FED_MARK}_mask"))
    for new in nodes[:-2]:
        new.outputs[0].name = new.name
    return nodes


def budget_references(model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, Any]]:
    """An approximate pass's budget reference: ``model``'s runs on ``batches`` with the draws of its main graph that
    reach an output fed (``fed_budget_runs``), where it has any, which ``optimizer.runtime.drift_of`` feeds a
    candidate too, so that the outputs they reach are measured on the same numbers; else (and for the outputs a draw
    not fed reaches) ``undrawn_budget_runs``. Left out of every budget, a drawn output's error was bounded by nothing:
    low-rank of the layer feeding only a Dropout reported a cosine of 1.0000 under ``--min-cosine 0.99``, the
    Dropout's output at 0.93 from the input's on one mask (review s74 feedbudget). A model without draws: no copy, no
    extra run."""
    if batches and (draws := feedable_draws(model.graph)):
        fed = fed_budget_runs(model, batches, draws)
        if fed is not None:
            return fed
    return undrawn_budget_runs(model, batches)


def undrawn_budget_runs(model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, Any]]:
    """``optimizer.runtime.budget_runs`` of ``model`` on ``batches``, an accuracy budget's reference, less its random
    outputs (``undrawn``), so that an approximate pass's own budget search measures what the pipeline's budget does
    (which leaves out ``optimizer.verify.Verifier.skipped``): measured on the numbers each run draws, a training-mode
    Dropout's output beside a deterministic one scored a cosine of 0.455, and quantization's search left a model float
    that int8 met ``--min-cosine 0.99`` on (review s74 drawsmod). Random are the outputs a draw reaches on every run
    (``drawn_outputs`` of its main graph and local functions) and, where a node anywhere may draw (``may_draw``: a
    ``training_mode`` fed as an input, a draw in a branch or a loop body), those that differ between two runs of the
    first batch in one session (ONNX Runtime draws the same numbers in a new session), the first batch run once more
    for it. Where every output is random, the runs as they are (nothing else to measure; the pipeline rolls back an
    approximate pass of such a model). ``budget_references`` feeds the draws it can first."""
    runs, drawn = _undrawn_runs(model, batches)
    return BudgetRuns(runs, drawn) if len(runs) and drawn and not set(runs[0]) >= drawn else runs


class BudgetRuns(list):
    """An accuracy budget's reference runs less the outputs computed from draws that no run feeds (``left_out``)."""

    def __init__(self, runs: Sequence[dict[str, Any]], left_out: Collection[str]) -> None:
        super().__init__(runs)
        self.left_out = frozenset(left_out)


def left_out_note(reference: Sequence[Mapping[str, Any]] | None) -> str | None:
    """A pass's note naming the outputs its budget ``reference`` (``budget_references``) does not measure, computed
    from draws that are not fed; None where it measures every output."""
    left = sorted(getattr(reference, "left_out", ()))
    if not left:
        return None
    quoted, many = ", ".join(f"'{name}'" for name in left), len(left) > 1
    return (
        f"budget: output{'s' if many else ''} {quoted} not measured: computed from random draws that cannot be fed "
        "the same in each run (in a branch, a loop body or a function, or a Dropout whose training_mode is an input)"
    )


def _undrawn_runs(
    model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]]
) -> tuple[list[dict[str, Any]], set[str]]:
    """``budget_runs`` of ``model`` on ``batches`` less its random outputs (``undrawn_budget_runs``), and those."""
    drawn = drawn_outputs(model.graph, model.functions)
    if batches and _may_draw_anywhere(model):
        again, *runs = budget_runs(model, [batches[0], *batches])
        drawn |= {name for name, value in again.items() if name in runs[0] and not _same_run(value, runs[0][name])}
    else:
        runs = budget_runs(model, batches)
    if not drawn or drawn >= {value.name for value in model.graph.outputs}:
        return runs, drawn
    return [undrawn(run, drawn) for run in runs], drawn


def feedable_draws(graph: ir.Graph) -> dict[str, ir.Node]:
    """The draws of ``graph``'s main graph (``main_draws``) that reach an output and that an accuracy budget feeds
    (``fed_budget_runs``): not a Dropout whose ``training_mode`` is a graph input or computed (a caller may give it
    False, where it draws nothing)."""
    found = main_draws(graph)
    reaching = values_reaching(graph, {value.name for value in graph.outputs}) if found else set()
    return {
        key: node
        for key, node in found.items()
        if any(id(value) in reaching for value in node.outputs)
        and (node.op_type != "Dropout" or _fixed(node.inputs[2]) is not None)
    }


class FedBudgetRuns(BudgetRuns):
    """An accuracy budget's reference runs (``fed_budget_runs``) of a model whose ``draws`` were fed their ``values``
    (one mapping per batch, by the name each is fed under): ``optimizer.runtime.drift_of`` runs a candidate fed the
    same values (``candidate_runs``), so the outputs they reach (``measured``) are measured as deterministic ones
    are. A slice keeps the values of its batches."""

    def __init__(
        self,
        runs: Sequence[dict[str, Any]],
        draws: Mapping[str, Draw],
        values: Sequence[Mapping[str, np.ndarray]],
        measured: Collection[str],
        left_out: Collection[str] = frozenset(),
    ) -> None:
        super().__init__(runs, left_out)
        self.draws, self.values, self.measured = dict(draws), list(values), frozenset(measured)
        self.shapes: list[dict[str, tuple[int, ...]]] = []  # of the batches the values were drawn on
        self.aliases: dict[str, str] = {}  # the draws' other names in the model (``draw_aliases``)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self._like(list.__getitem__(self, index), self.values[index], self.shapes[index], self.left_out)
        return list.__getitem__(self, index)

    def _like(self, runs: Sequence[dict[str, Any]], values, shapes, left_out: Collection[str]) -> FedBudgetRuns:
        like = FedBudgetRuns(runs, self.draws, values, self.measured, left_out)
        like.shapes, like.aliases = list(shapes), self.aliases
        return like

    def without(self, random: Collection[str]) -> FedBudgetRuns:
        """These runs less the outputs of ``random`` (``optimizer.verify.Verifier.skipped``) that no fed draw made
        measurable (``undrawn``)."""
        left = set(random) - self.measured
        return self._like([undrawn(run, left) for run in self], self.values, self.shapes, self.left_out | left)

    def matched(self, model: ir.Model) -> dict[str, str] | None:
        """The keys of ``draws`` by the names ``model`` draws them under (``matched_draws``: a draw a rewrite renamed
        is fed as itself) where it draws each of them as the reference did (``Draw.differs``); None where it does not
        (removed, another ratio): only then is it fed them, and the outputs they reach measured."""
        found = main_draws(model.graph)
        renamed = matched_draws(found, self.draws, self.aliases)
        names = {key: name for name, key in renamed.items()}
        if all(key in names and draw.differs(found[names[key]]) is None for key, draw in self.draws.items()):
            return renamed
        return None

    def drawn_alike(self, model: ir.Model) -> bool:
        """Whether ``model`` draws each of ``draws`` as the reference did, under its key or a name a rewrite gave it
        (``matched``)."""
        return self.matched(model) is not None

    def candidate_runs(
        self, model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The reference to measure ``model`` on ``batches`` by and ``model``'s ``budget_runs`` on them, fed the same
        draws: these runs and those of a copy of ``model`` fed them (``with_draws_fed``). Where ``model`` does not draw
        each of them as the reference did (``matched``: removed, another ratio), or ``batches`` are not those the
        values were drawn on, its runs as they are, and the reference less ``measured``. A draw a rewrite renamed
        (``matched_draws``) is fed as itself: matched by its name alone, the outputs a Dropout reached were left out
        of the pipeline's budget after ``remove-identity`` named it as its output (review s75 late74a)."""
        renamed = self.matched(model)
        same = (
            len(batches) == len(self.values)
            and all(_shapes(batch) == shapes for batch, shapes in zip(batches, self.shapes))
            and renamed is not None
        )
        if not same:
            return [undrawn(run, self.measured) for run in self], budget_runs(model, batches)
        fed = [{**batch, **values} for batch, values in zip(batches, self.values)]
        return list(self), budget_runs(with_draws_fed(model, self.draws, renamed, reads=False), fed)


def fed_budget_runs(
    model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]], draws: Mapping[str, ir.Node]
) -> FedBudgetRuns | None:
    """``undrawn_budget_runs`` of a copy of ``model`` fed ``draws`` (``feedable_draws``) as one run of ``model`` on
    each batch drew them (``draw_values``, ``with_draws_fed``), the outputs they reach measured
    (``FedBudgetRuns.measured``). The outputs a draw not fed reaches (in a branch, a loop body or a function, a
    Dropout's ``training_mode`` fed as an input) stay left out. None where ONNX Runtime cannot run the copy."""
    try:
        values, fed = draw_values(model, draws, batches)
        copy = with_draws_fed(model, fed, reads=False)
        runs, random = _undrawn_runs(copy, [{**batch, **drawn} for batch, drawn in zip(batches, values)])
    except RuntimeRefusedError:
        return None
    if not runs or random >= {value.name for value in model.graph.outputs}:
        return None  # every output still random: the runs as they are (``undrawn_budget_runs``)
    reached = reached_from(model.graph, [value for node in draws.values() for value in node.outputs])
    left_out = random if not set(runs[0]) >= random else set()
    reference = FedBudgetRuns(runs, fed, values, reached - random, left_out)
    reference.shapes = [_shapes(batch) for batch in batches]
    reference.aliases = draw_aliases(model.graph, fed)
    return reference


def _shapes(batch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shapes of a batch's inputs: a fed reference's draws fit only batches of those."""
    return {name: np.shape(value) for name, value in batch.items()}


def _may_draw_anywhere(model: ir.Model) -> bool:
    """Whether a node of ``model``'s graph, of a subgraph or of a local function may draw (``may_draw``)."""
    graphs = [model.graph, *(function.graph for function in model.functions.values())]
    return any(may_draw(node) for graph in graphs for node in nodes_and_subgraphs(graph))


def _same_run(first: Any, second: Any) -> bool:
    """Whether two runs gave one output the same values (NaN where NaN); an output that is no array, the same."""
    if not isinstance(first, np.ndarray) or not isinstance(second, np.ndarray):
        return True
    if first.dtype.kind in "fc" and second.dtype.kind in "fc":
        return np.array_equal(first, second, equal_nan=True)
    return np.array_equal(first, second)

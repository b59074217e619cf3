"""The shared driver of the pruning passes: importance, which units go, repair, the budget search, the twin.

A subclass finds its groups (``find_groups``); this base ranks each group's units,
removes the least important ``ratio`` of them, and — with calibration data — re-fits
each group's consumer (the layer reading the removed channels) by least squares so
that its output on the samples changes as little as possible: the kept channels'
weights absorb what the removed ones did, and their mean goes into the bias.

Every pruned result comes with its twin (``optimizer.protocol.Twin``): the input model
with the removed units' consumer rows zeroed and the repaired weights in place, built
without the slicing that realizes the cut, so the pipeline can check that the smaller
model computes exactly what the pass decided.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.accuracy import AccuracyBudget, Drift, output_drift
from optimizer.inputs import split_samples
from optimizer.progress import track
from optimizer.protocol import Twin
from optimizer.runtime import collect_values, run_batches
from passes._layers import name_nodes
from passes._least_squares import fit_toward_prior
from passes._pass import GraphoptPass
from passes._utils import add_initializer, constant_array, remove_dead_nodes, replace_value
from passes.pruning._groups import ChannelGroup

IMPORTANCE = ("magnitude", "activation")
_SEARCH_STEPS = 6


def parameter_count(model: ir.Model) -> int:
    """Number of weight elements in the main graph's initializers."""
    return sum(math.prod(v.const_value.shape.numpy()) for v in model.graph.initializers.values() if v.const_value)


class PruningPass(GraphoptPass, ir.passes.InPlacePass):
    """Base of the structured pruning passes. After a run, ``pruned`` maps group → units kept/total and
    ``drift`` is the accuracy on the samples; the result's notes say it in words, its refusals
    name the groups left whole, with the reason, and its twin is the input with the removed
    units zeroed where the consumers read them (and the repaired weights in place).

    ``samples_generated``: the samples are generated random inputs, not calibration data.
    They still measure drift (and drive the budget search), but nothing is fitted to them:
    importance is weight magnitude and the consumers are not re-fitted. Asking for
    ``importance="activation"`` or ``repair=True`` on generated samples is refused (the
    model is left whole, with the reason): ranking and re-fitting to random tokens is not
    what either option promises, and measured worse than magnitude for heads.
    """

    unit_name = "units"
    # Where the removed units are zeroed in the twin, for its description.
    consumer_rows = "their consumers' rows"

    def units_named(self, group: ChannelGroup) -> int:
        """How many ``unit_name`` one of the group's units is (for the twin's description)."""
        return 1

    def __init__(
        self,
        ratio: float,
        *,
        importance: str | None = None,
        ranking: str = "layer",
        samples: Mapping[str, np.ndarray] | None = None,
        repair: bool | None = None,
        budget: AccuracyBudget | None = None,
        samples_generated: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"pruning ratio {ratio}: expected a fraction in [0, 1)")
        self.unfit: str | None = None
        self.samples_generated = samples_generated and samples is not None
        if self.samples_generated:
            asked = [f"--importance {importance}"] if importance == "activation" else []
            asked += ["repair=True"] if repair else []
            if asked:
                self.unfit = (
                    f"{' and '.join(asked)} needs --calibration data: the samples are generated random "
                    "inputs, and ranking or re-fitting units on them fits noise (give real samples, "
                    "or leave both to their defaults for magnitude importance without repair)"
                )
            importance, repair = "magnitude", False
        importance = importance or ("activation" if samples is not None else "magnitude")
        if importance not in IMPORTANCE:
            raise ValueError(f"unknown importance {importance!r} (choose from {', '.join(IMPORTANCE)})")
        if ranking not in ("layer", "global"):
            raise ValueError(f"unknown ranking {ranking!r} (layer or global)")
        self.ratio = ratio
        self.importance = importance if samples is not None else "magnitude"
        self.ranking = ranking
        self.samples = samples
        self.repair = samples is not None if repair is None else repair and samples is not None
        self.budget = budget if budget is not None and budget != AccuracyBudget() else None
        self.pruned: dict[str, tuple[int, int]] = {}
        self.drift: Drift | None = None

    @abc.abstractmethod
    def find_groups(self, graph: ir.Graph) -> tuple[list[ChannelGroup], dict[str, str]]:
        """The groups this pass prunes, and the reasons other candidates were left whole."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.pruned, self.drift = {}, None
        if self.unfit is not None:
            self.decline(self.unfit)
            return self.result(model, modified=False)
        name_nodes(model.graph)  # groups are keyed by their node's name
        groups, refused = self.find_groups(model.graph)
        for name, reason in refused.items():
            self.decline(f"{name} left whole: {reason}")
        if not groups or self.ratio == 0.0:
            return self.result(model, modified=False)
        batches = split_samples(self.samples, model=model) if self.samples is not None else []
        inputs = {}
        if batches and (self.importance == "activation" or self.repair):
            runs = collect_values(model, [g.consumer.inputs[0].name for g in groups], batches)
            inputs = {g.name: _rows(runs, g.consumer.inputs[0].name, g.channel_axis) for g in groups}
        scores = {g.name: self._scores(g, inputs.get(g.name)) for g in groups}
        reference = run_batches(model, batches) if batches else None
        ratio = self.ratio
        if self.budget is not None and not batches:
            self.note("no sample inputs: the budget was not searched")
        if self.budget is not None and batches:
            ratio = self._search(model, scores, inputs, batches, reference)
            if ratio == 0.0:
                self.note(f"no ratio meets {self.budget.describe()}: nothing pruned")
                return self.result(model, modified=False)
        before = parameter_count(model)
        repairable = self.repair and reference is not None and any(_refittable(g.consumer) for g in groups)
        source = model.clone()  # the input: the twin and the unrepaired comparison start from it
        removals = self._prune(model, scores, inputs, ratio, record=True)
        if reference is not None:
            self.drift = output_drift(reference, run_batches(model, batches))
        summary = f"ratio {ratio:.2f}: {len(self.pruned)} groups, parameters {before:,} → {parameter_count(model):,}"
        if self.drift is not None:
            summary += f"; {self.drift}" + (" after repair" if repairable else "")
            summary += " on generated inputs" if self.samples_generated else ""
        self.note(summary)
        if self.samples_generated:
            self.note("no --calibration data: ranked by weight magnitude, not re-fitted")
        if repairable:
            # The same cut without the repair, so the report shows what the repair bought.
            unrepaired = source.clone()
            self._prune(unrepaired, scores, inputs, ratio, repair=False)
            self.note(f"without repair: {output_drift(reference, run_batches(unrepaired, batches))}")
        return self.result(model, modified=True, twin=self._twin(source, removals))

    def _twin(self, source: ir.Model, removals: list[_Removal]) -> Twin:
        """``source`` (the pass's input) with the removed units' consumer rows zeroed, the repaired weights in place.

        A removed unit loses its producer columns, bias entries and per-channel
        constants, but it reaches the outputs only through the consumer's weight rows
        that read it (a group whose channels are read anywhere else is left whole), so
        zeroing those rows computes what the pruned model computes. Nothing here uses
        the slicing that realizes the cut (``ChannelGroup.apply``): the channel indices
        and the weight axis are worked out again, and a repaired bias is added as its
        change after the consumer, whichever bias the realization rewrote.
        """
        graph = source.graph
        nodes = list(graph)
        for removal in removals:
            consumer = nodes[removal.position]
            original = constant_array(consumer.inputs[1])
            weight = (original if removal.weight is None else removal.weight).copy()
            channels = np.arange(removal.size * removal.unit).reshape(removal.size, removal.unit)[removal.removed]
            index = [slice(None)] * weight.ndim
            index[_input_channel_axis(consumer)] = channels.ravel()
            weight[tuple(index)] = 0
            consumer.replace_input_with(1, add_initializer(graph, f"{consumer.inputs[1].name}.twin", weight))
            if removal.bias_change is not None:
                _add_after(graph, consumer, removal.bias_change)
        removed = sum(len(r.removed) * r.named for r in removals)
        total = sum(r.size * r.named for r in removals)
        description = f"the input with {removed} of {total} {self.unit_name} zeroed in {self.consumer_rows}"
        if any(r.weight is not None for r in removals):
            description += ", repaired weights and biases in place"
        return Twin(source, "float32", description)

    def _scores(self, group: ChannelGroup, rows: np.ndarray | None) -> np.ndarray:
        consumer = group.consumer_row_norms()
        if self.importance == "activation" and rows is not None:
            energy = (rows.astype(np.float64) ** 2).mean(axis=0)
            return np.sqrt(energy.reshape(group.size, group.unit).sum(axis=1)) * consumer
        return group.weight_norms()

    def _kept(self, groups: list[ChannelGroup], scores: dict[str, np.ndarray], ratio: float) -> dict[str, list[int]]:
        """The units each group keeps: per layer, or ranked across all groups (scores over their group's mean)."""
        if self.ranking == "global":
            pooled = [
                (score / max(float(scores[g.name].mean()), 1e-30), index, g.name, unit)
                for index, g in enumerate(groups)
                for unit, score in enumerate(scores[g.name])
            ]
            pooled.sort()
            remaining = {g.name: g.size for g in groups}
            removed: dict[str, set[int]] = {g.name: set() for g in groups}
            budget = int(math.floor(ratio * len(pooled) + 1e-9))
            for _, _, name, unit in pooled:
                if budget == 0:
                    break
                if remaining[name] > 1:  # every group keeps at least one unit
                    removed[name].add(unit)
                    remaining[name] -= 1
                    budget -= 1
            return {g.name: [u for u in range(g.size) if u not in removed[g.name]] for g in groups}
        kept = {}
        for g in groups:
            count = max(1, g.size - int(math.floor(ratio * g.size + 1e-9)))
            order = np.argsort(-scores[g.name], kind="stable")
            kept[g.name] = sorted(int(u) for u in order[:count])
        return kept

    def _prune(
        self, model: ir.Model, scores, inputs, ratio: float, *, record: bool = False, repair=None
    ) -> list[_Removal]:
        """Cut ``ratio`` of each group's units (re-fitting consumers if ``repair``); what was decided, per group."""
        groups, _ = self.find_groups(model.graph)
        kept = self._kept(groups, scores, ratio)
        repair = self.repair if repair is None else repair
        # Positions before any cut: realizing a group may insert nodes (a Reshape target's Concat).
        positions = {id(node): index for index, node in enumerate(model.graph)}
        removals = []
        for group in track(groups, "pruning: re-fitting each layer" if repair else "pruning: each layer"):
            units = kept[group.name]
            if len(units) == group.size:
                continue
            removed = sorted(set(range(group.size)) - set(units))
            removal = _Removal(positions[id(group.consumer)], group.size, group.unit, removed, self.units_named(group))
            if repair and group.name in inputs and _refittable(group.consumer):
                removal.weight, removal.bias_change = _repair(model.graph, group, inputs[group.name], units)
            group.apply(model.graph, units)
            removals.append(removal)
            if record:
                self.pruned[group.name] = (len(units), group.size)
        remove_dead_nodes(model)
        return removals

    def _search(self, model: ir.Model, scores, inputs, batches, reference) -> float:
        """The largest ratio up to ``self.ratio`` whose pruned model meets the budget (bisection)."""
        low, high, best = 0.0, self.ratio, 0.0
        trial = model.clone()
        self._prune(trial, scores, inputs, high)
        if self.budget.met(output_drift(reference, run_batches(trial, batches))):
            self.note(f"budget {self.budget.describe()}: met at the largest ratio asked, {high:.2f}")
            return high
        for _ in track(range(_SEARCH_STEPS), "pruning: bisection over the ratio"):
            middle = (low + high) / 2
            trial = model.clone()
            self._prune(trial, scores, inputs, middle)
            drift = output_drift(reference, run_batches(trial, batches))
            if self.budget.met(drift):
                low = best = middle
            else:
                high = middle
        self.note(f"budget {self.budget.describe()}: largest ratio {best:.2f} (of up to {self.ratio:.2f})")
        return best


@dataclass
class _Removal:
    """What pruning one group decided, in terms of its consumer (the node at ``position`` in the input graph).

    ``removed``: the units cut, each ``unit`` of the consumer's ``size * unit`` input
    channels; ``weight``: the repaired consumer weight at full width (zero where removed),
    ``bias_change``: the repaired bias minus the old one (both None without repair).
    """

    position: int
    size: int
    unit: int
    removed: list[int]
    named: int  # how many of the pass's ``unit_name`` one unit is
    weight: np.ndarray | None = None
    bias_change: np.ndarray | None = None


def _input_channel_axis(consumer: ir.Node) -> int:
    """The axis of the consumer's weight that runs over its input channels."""
    if consumer.op_type == "Conv" or (consumer.op_type == "Gemm" and consumer.attributes.get_int("transB", 0)):
        return 1  # [out, in, ...] filters; a Gemm's transposed [out, in]
    return 0


def _add_after(graph: ir.Graph, node: ir.Node, value: np.ndarray) -> None:
    """Add the constant ``value`` to ``node``'s first output, for everything that reads it."""
    output = node.outputs[0]
    bias = add_initializer(graph, f"{node.name}.twin_bias", value)
    add = ir.Node("", "Add", [output, bias], name=f"{node.name}_twin_bias")
    graph.insert_after(node, add)
    replace_value(output, add.outputs[0])  # this also points the new Add at itself ...
    add.replace_input_with(0, output)  # ... so it reads the node again
    add.outputs[0].type, add.outputs[0].shape = output.type, output.shape


def _refittable(consumer: ir.Node) -> bool:
    """Whether the repair's model ``X W + b`` is what the consumer computes (not a Conv, no scaled Gemm)."""
    if consumer.op_type == "Conv":
        return False
    if consumer.op_type == "Gemm":
        attributes = consumer.attributes
        scaled = attributes.get_float("alpha", 1.0) != 1.0 or attributes.get_float("beta", 1.0) != 1.0
        return not scaled and not attributes.get_int("transA", 0)
    return True


def _rows(runs: Sequence[Mapping[str, np.ndarray]], name: str, axis: int = -1) -> np.ndarray:
    """A tensor's values over all samples as rows of its channel ``axis``."""
    arrays = [np.moveaxis(np.asarray(run[name]), axis, -1) for run in runs]
    return np.concatenate([array.reshape(-1, array.shape[-1]) for array in arrays])


def _repair(graph: ir.Graph, group: ChannelGroup, rows: np.ndarray, kept: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Re-fit the consumer's weight rows for the kept channels (and its bias) by regularized least squares.

    Writes the new weight (full width: ``apply`` cuts the removed rows next) and bias
    into the graph and returns them: the weight, and the bias's change.

    The target is the consumer's original output on the samples, ``X W + b``; the kept
    channels ``X_k`` plus a constant column are fitted to it, pulled toward the unrepaired
    weights ``W_k`` (not toward zero) with a strength chosen on held-out rows, so a few
    samples cannot make the fit worse than no repair at all.
    """
    consumer = group.consumer
    cut = group.consumer_cut
    weight = constant_array(consumer.inputs[1]).astype(np.float64)
    weight = weight.T if cut.axis == 1 else weight  # [channels, outputs]
    bias, set_bias = _bias(graph, consumer)
    x = rows.astype(np.float64)
    target = x @ weight + bias
    channels = cut.indices(kept, group.size, group.unit)
    design = np.concatenate([x[:, channels], np.ones((len(x), 1))], axis=1)
    prior = np.concatenate([weight[channels], bias[None, :]])
    solution = fit_toward_prior(design, target, prior)
    fitted = np.zeros_like(weight)
    fitted[channels] = solution[:-1]  # the removed rows are cut by ``apply`` right after
    new_weight = (fitted.T if cut.axis == 1 else fitted).astype(np.float32)
    consumer.replace_input_with(1, add_initializer(graph, f"{consumer.inputs[1].name}.repaired", new_weight))
    new_bias = solution[-1].astype(np.float32)
    set_bias(new_bias)
    return new_weight, (new_bias.astype(np.float64) - bias).astype(np.float32)


def _bias(graph: ir.Graph, consumer: ir.Node):
    """The consumer's bias (zeros if none) and a function that stores a new one.

    The bias is a Gemm's C input, or the constant of the Add right after a MatMul;
    failing both, the new bias gets an Add of its own.
    """
    transposed = consumer.op_type == "Gemm" and consumer.attributes.get_int("transB", 0)
    width = constant_array(consumer.inputs[1]).shape[0 if transposed else 1]
    if consumer.op_type == "Gemm":
        has_bias = len(consumer.inputs) > 2 and consumer.inputs[2] is not None
        current = constant_array(consumer.inputs[2]) if has_bias else None
        if not has_bias or (current is not None and current.size == width):

            def store_gemm(value: np.ndarray) -> None:
                if len(consumer.inputs) < 3:
                    consumer.resize_inputs(3)
                consumer.replace_input_with(2, add_initializer(graph, f"{consumer.name}.repaired_bias", value))

            return (np.zeros(width) if current is None else current.reshape(-1).astype(np.float64)), store_gemm
    output = consumer.outputs[0]
    users = list(output.uses())
    if len(users) == 1 and users[0].node.op_type == "Add" and not output.is_graph_output():
        add, slot = users[0].node, 1 - users[0].idx
        current = constant_array(add.inputs[slot])
        if current is not None and current.size == width:

            def store_add(value: np.ndarray) -> None:
                new = add_initializer(graph, f"{add.name}.repaired_bias", value.reshape(current.shape))
                add.replace_input_with(slot, new)

            return current.reshape(-1).astype(np.float64), store_add

    def insert_add(value: np.ndarray) -> None:
        add = ir.Node("", "Add", [output, add_initializer(graph, f"{consumer.name}.repaired_bias", value)])
        add.name = f"{consumer.name}_repaired_bias"
        graph.insert_after(consumer, add)
        for user, index in users:
            user.replace_input_with(index, add.outputs[0])
        add.outputs[0].type, add.outputs[0].shape = output.type, output.shape
        if output.is_graph_output():
            outputs = graph.outputs
            outputs[[v is output for v in outputs].index(True)] = add.outputs[0]
            add.outputs[0].name, output.name = output.name, f"{output.name}.unbiased"

    return np.zeros(width), insert_add

"""The shared driver of the pruning passes: importance, which units go, repair, the budget search, the twin.

A subclass finds its groups (``find_groups``); this base ranks each group's units,
removes the least important ``ratio`` of them (per layer, or ranked across all groups:
``ranking="global"``), and — with calibration data — re-fits each group's consumer (the
layer reading the removed channels) by least squares so that its output changes as
little as possible: the kept channels' weights absorb what the removed ones did, and
their mean goes into the bias. The repaired weight and bias are written in the weight's
float type (a float16 model stays float16); a bias the repair gives a consumer that had none
is cut with the consumer's output channels where the next group cuts those (``_cut_added_bias``).

The repair runs after the whole cut, layer by layer in graph order: each consumer is
fitted on its inputs in the model whose earlier layers are already cut and repaired,
toward its output in the original model, so a layer also absorbs what the cuts before
it changed; a layer whose output goes into a residual Add is fitted toward the original
sum less what the skip path carries in the cut model, so it also makes up for the part
of the skip's drift its kept inputs can predict. Its statistics are streamed over every
calibration row (``_refit``), so all the data is used at the cost of one model run per repaired layer.

With calibration data and global ranking, units are ranked by their estimated effect on
the model's outputs: a unit's local effect (the energy it sends through its consumer)
times its group's measured gain (how far the model's outputs move when the group's
weakest units are cut, per unit of local effect removed). A pass may prune several kinds
at once (``ratio`` per kind: FFN neurons and heads in one cut); each kind's ratio is then
a total over its groups.

Every pruned result comes with its twin (``optimizer.protocol.Twin``): the input model
with the removed units' consumer rows zeroed and the repaired weights in place, built
without the slicing that realizes the cut, so the pipeline can check that the smaller
model computes exactly what the pass decided.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx_ir as ir

from optimizer.accuracy import AccuracyBudget, Drift
from optimizer.cpu_features import detect as cpu_features
from optimizer.domains import is_onnx_domain, is_onnx_op
from optimizer.draws import budget_references, left_out_note
from optimizer.options import IMPORTANCE_KINDS
from optimizer.parameters import count_parameters
from optimizer.progress import track
from optimizer.protocol import Twin
from optimizer.runtime import drift_of, stream_values, value_collector
from optimizer.samples import (
    few_held_out,
    fixes_batch,
    held_out_parts,
    held_out_samples,
    searched_caveat,
    split_samples,
)
from passes._layers import add_after, fold_into_bias, is_feature_bias, name_nodes
from passes._least_squares import GramFit
from passes._pass import GraphoptPass, refuse_without_samples, unfit_on_generated_samples
from passes._utils import (
    add_initializer,
    dequantized_weight,
    initializer_bytes,
    nothing_found_note,
    remove_dead_nodes,
    weight_array,
    written_in_float_note,
)
from passes.pruning._groups import ChannelGroup, Cut
from passes.pruning._reconstruction import MAX_INPUTS, removal_scores
from passes.pruning._refit import channel_rows

IMPORTANCE = IMPORTANCE_KINDS
_SEARCH_STEPS = 6
# What one unit of each kind of group is called in notes.
UNIT_NAMES = {"ffn": "neurons", "heads": "heads", "channels": "channels"}
# Conv channel groups keep a multiple of ONNX Runtime's NCHWc block (None: this CPU's, ``CpuFeatures.nchwc_block``:
# 16 channels with AVX-512F, 8 on other x86, none elsewhere): ONNX Runtime pads a count to its block, so a count off
# it runs as slow as the multiple above it (on AVX-512 an 88-channel layer as 96, 40 as 48; docs/benchmarks.md).
# Where the CPU has no block, counts keep a multiple of NARROW_CHANNEL_MULTIPLE, the least ONNX Runtime blocks at all.
CHANNEL_MULTIPLE: int | None = None
NARROW_CHANNEL_MULTIPLE = 4
# AVX-512's block. A 1×1 Conv reading fewer channels than one block ran slower per channel (ONNX Runtime 1.32,
# Zen 4, one thread, benchmarks/narrow_conv_groups.py, docs/benchmarks.md): 1×1 Convs 32 → C → 96 with C = 12 or 8 of
# a 16-wide group took 1.2–1.9× the time of all 16, C = 4 0.85–1.0×; an inverted residual (1×1 → C, 3×3 depthwise
# on C, 1×1 C →) 1.05–1.55× at 12 or 8, 0.96–1.18× at 4; 3×3 Convs 16 → C → 16 0.90–1.02× at 12, 0.79–0.90× at 8,
# 0.63–0.80× at 4; a 1×1 Conv 32 → C, GlobalAveragePool, Gemm C → 10 (a classifier head) 1.0–1.4× at 12 or 8,
# 1.0–1.2× at 4 (review s79 late79b). So a group of one such block keeps all 16 where a depthwise Conv or a Gemm or
# MatMul reads it, 4 or 16 where a 1×1 Conv does (strided too: it ran as one), else 4, 8 or 16 (``_counts``).
_WIDE_BLOCK = 16
# What a refusal says of each set of counts ``_counts`` allows a group of one AVX-512 block.
_NARROW_COUNTS_SAID = {
    (16,): "all 16 where a depthwise Conv reads it or a Gemm or MatMul does",
    (4, 16): "4 or all 16 where a 1×1 Conv reads it",
    (4, 8, 16): "4, 8 or all 16 where neither a 1×1 nor a depthwise Conv reads it",
}
# Calibration samples (at least) that measure each group's gain for the global ranking.
_GAIN_SAMPLES = 64


class PruningPass(GraphoptPass, ir.passes.InPlacePass):
    """Base of the structured pruning passes. After a run, ``pruned`` maps group → units kept/total and
    ``drift`` is the accuracy on the samples; the result's notes say it in words, its refusals
    name the groups left whole, with the reason, and its twin is the input with the removed
    units zeroed where the consumers read them (and the repaired weights in place).

    ``importance``: ``magnitude`` (weights only), ``activation`` (RMS of each unit's
    activation on the samples times its consumer rows; with samples, the default of a pass whose
    ``default_importance`` says so), or
    ``reconstruction`` (the output error its removal costs once the repair re-fits the kept
    units: ``_reconstruction.removal_scores`` over the inputs' covariance; layers the repair
    does not re-fit, and those of more than ``MAX_INPUTS`` inputs or fewer rows than inputs,
    by activation, with a note).

    ``samples_generated``: the samples are generated random inputs, not calibration data.
    They still measure drift (and drive the budget search), but nothing is fitted to them:
    importance is weight magnitude and the consumers are not re-fitted. Asking for
    ``importance="activation"`` (or ``"reconstruction"``) or ``repair=True`` on generated samples is refused (the
    model is left whole, with the reason): ranking and re-fitting to random tokens is not
    what either option promises, and measured worse than magnitude for heads. Without samples, either is a
    ``ValueError`` when the pass is built (it would rank by magnitude without repair and say nothing of it).
    """

    unit_name = "units"
    # The importance with calibration data and the repair on, when none is asked for.
    default_importance = "activation"
    # What a group is, for the note when none is found, and the ops that make one (counted in subgraphs).
    looks_for = "no layer of the kinds it prunes"
    layer_ops: tuple[str, ...] = ()
    # Where the removed units are zeroed in the twin, for its description.
    consumer_rows = "their consumers' rows"

    def units_named(self, group: ChannelGroup) -> int:
        """How many of its kind's units one of the group's units is (a grouped-query unit is several heads)."""
        return max((per_unit for _, per_unit in group.grouped_head_counts), default=1)

    def __init__(
        self,
        ratio: float | Mapping[str, float],
        *,
        importance: str | None = None,
        ranking: str = "layer",
        samples: Mapping[str, np.ndarray] | None = None,
        repair: bool | None = None,
        budget: AccuracyBudget | None = None,
        samples_generated: bool = False,
        original: ir.Model | None = None,
    ) -> None:
        super().__init__()
        # The model the budget bounds (the pipeline's input): after an earlier approximate pass, its drift counts.
        self.original = original
        ratios = dict(ratio) if isinstance(ratio, Mapping) else {None: ratio}
        for value in ratios.values():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"pruning ratio {value}: expected a fraction in [0, 1)")
        self.unfit: str | None = None
        self.samples_generated = samples_generated and samples is not None
        if self.samples_generated:
            self.unfit = unfit_on_generated_samples(
                importance, repair, "ranking or re-fitting units", "magnitude importance without repair"
            )
            importance, repair = "magnitude", False
        if samples is None:
            refuse_without_samples(
                importance, repair, "ranking or re-fitting units", "magnitude importance without repair"
            )
        if importance is None and samples is not None:
            # Reconstruction ranks for the repair; without it a layer would be ranked by activation anyway.
            importance = self.default_importance if repair is None or repair else "activation"
        importance = importance or "magnitude"
        if importance not in IMPORTANCE:
            raise ValueError(f"unknown importance {importance!r} (choose from {', '.join(IMPORTANCE)})")
        if ranking not in ("layer", "global"):
            raise ValueError(f"unknown ranking {ranking!r} (layer or global)")
        # Per kind of group ({"ffn": 0.3, "heads": 0.25}), or {None: r} for every group.
        self.ratios: dict[str | None, float] = ratios
        self.ratio = max(ratios.values(), default=0.0)
        self.importance = importance if samples is not None else "magnitude"
        self.ranking = ranking
        self.samples = samples
        self.repair = samples is not None if repair is None else repair and samples is not None
        self.budget = budget if budget is not None and budget.bounds_anything else None
        self.pruned: dict[str, tuple[int, int]] = {}
        self.drift: Drift | None = None
        self._totals: dict[str, int] = {}  # units of each kind in the model, for the twin's description

    @abc.abstractmethod
    def find_groups(self, graph: ir.Graph) -> tuple[list[ChannelGroup], dict[str, str]]:
        """The groups this pass prunes, and the reasons other candidates were left whole."""

    def unit_cost(self, group: ChannelGroup) -> float | None:
        """What removing one of ``group``'s units saves, for the global ranking (None: every unit counts one).

        With costs, the global ranking removes units by their score squared (their effect)
        per cost, until the ratio of the groups' total cost is removed.
        """
        return None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # A budget with nothing to hold out ranks by magnitude without repair for one run (``_fitted_and_checked``).
        importance, repair = self.importance, self.repair
        try:
            return self._call(model)
        finally:
            self.importance, self.repair = importance, repair

    def _call(self, model: ir.Model) -> ir.passes.PassResult:
        self.pruned, self.drift = {}, None
        self._skips: dict[str, str] = {}  # group → the residual skip its refit subtracts (``_observe``)
        self._grams: dict[str, tuple[np.ndarray, int]] = {}  # group → its consumer's input covariance, rows
        self._uncompensated: dict[str, np.ndarray] = {}  # group → activation scores, where reconstruction ranks
        self._rounded_whole: dict[str, tuple[int, int]] = {}  # group → units chosen, width, where rounding kept all
        if self.unfit is not None:
            self.decline(self.unfit)
            return self.result(model, modified=False)
        name_nodes(model.graph)  # groups are keyed by their node's name
        groups, refused = self.find_groups(model.graph)
        for name, reason in refused.items():
            self.decline(f"{name} left whole: {reason}")
        if refused:
            self.note(f"{len(refused)} of {len(groups) + len(refused)} candidate groups left whole (see refusals)")
        if not groups and not refused:
            self.note(nothing_found_note(model, "group to prune", self.looks_for, self.layer_ops))
        if not groups or self.ratio == 0.0:
            return self.result(model, modified=False)
        self._totals = {}
        for group in groups:
            self._totals[group.kind] = self._totals.get(group.kind, 0) + group.size * self.units_named(group)
        batches = split_samples(self.samples, model=model) if self.samples is not None else []
        # Ranking and repair fit only the samples the budget is not checked on.
        batches, checked = self._fitted_and_checked(model, batches)
        held_out = checked is not batches
        energy, targets = {}, {}
        if batches and (self.importance != "magnitude" or self.repair):
            energy, targets = self._observe(model, groups, batches)
        scores = {g.name: self._scores(g, energy.get(g.name)) for g in groups}
        reference = budget_references(model, batches) if batches else None
        if note := left_out_note(reference):
            self.note(note)
        comparable = False
        if self.ranking == "global" and energy and reference is not None:
            scores = self._output_effect(model, groups, scores, batches, reference)
            comparable = True
        scale = 1.0
        checked_reference = reference if not held_out else budget_references(model, checked)
        if self.budget is not None and not batches:
            self.note("no sample inputs: the budget was not searched")
        searched = self._searched_on if held_out else checked  # held-out samples the search may choose by
        self._bisected = False
        if self.budget is not None and batches:
            # The budget bounds the whole model against the pipeline's input, as the pipeline's own check does.
            if self.original is not None:
                bound = budget_references(self.original, searched)
            else:
                bound = checked_reference if searched is checked else budget_references(model, searched)
            scale = self._search(model, scores, comparable, batches, targets, searched, bound)
            if scale == 0.0:
                self.decline(f"no cut that removes a unit meets {self.budget.describe()}{self._checked_on}")
                return self.result(model, modified=False)
        ratios = self._scaled(scale)
        before = count_parameters(model)
        stored_before, by_hand = initializer_bytes(model), _dequantizes_by_hand(groups)
        repairable = bool(targets) and reference is not None
        source = model.clone()  # the input: the twin and the unrepaired comparison start from it
        removals = self._prune(model, scores, ratios, comparable, batches, targets, record=True)
        if held_out:  # the figures the report shows are the held-out samples', as the budget's
            batches, reference = checked, checked_reference
        if not removals:  # --strict must see that nothing was pruned: "applied" with 0 groups said otherwise
            self.decline(f"{_describe_ratios(ratios)} removes no unit: {self._why_none(groups)}")
            return self.result(model, modified=False)
        for kind, ratio in ratios.items():  # a kind asked for whose every group holds one unit: said, not silent
            members = [g for g in groups if g.kind == kind]
            if kind is not None and ratio and members and all(g.size == 1 for g in members):
                self.decline(f"{kind} {ratio:.2f} removes no unit: {self._why_none(members)}")
        if reference is not None:
            self.drift = drift_of(model, batches, reference, layout=self.original)
        after = count_parameters(model)
        summary = f"{_describe_ratios(ratios)}: {len(self.pruned)} groups, parameters {before:,} → {after:,}"
        if self.drift is not None:
            summary += f"; {self.drift}" + (" after repair" if repairable else "")
            if held_out:
                summary += f" on {held_out_samples(batches, model)}"
                summary += searched_caveat(
                    searched, batches, model, chose=self._bisected, searching=self.budget is not None
                )
            if not held_out and self._checked_on:  # one sample: nothing could be held out of the fit
                summary += f"{self._checked_on} (an optimistic figure: give more samples to hold some out)"
            summary += " on generated inputs" if self.samples_generated else ""
            if not held_out:  # a ratio bisected on every sample meets the budget on them by the search
                summary += searched_caveat(searched, batches, model, chose=self._bisected, held_out=False)
        self.note(summary)
        if by_hand and (stored_after := initializer_bytes(model)) > stored_before:
            # The cut weight is written as the float32 array it computes (as it was when ``fold-constants`` folded
            # it): fewer parameters, more bytes (a 64-channel 3×3 Conv stored int8, cut by a quarter: 10 → 28 kB).
            self.note(written_in_float_note(stored_before, stored_after))
        if held_out and self.drift is not None and (caveat := few_held_out(batches, model)):
            self.note(caveat)
        self.note(self._decisions(groups, removals))
        whole = self._rounded_whole
        rounded = _rounding_note([g for g in groups if g.name in {**self.pruned, **whole}], self.pruned, whole)
        if rounded:
            self.note(rounded)
        if self.samples_generated:
            self.note("no --calibration data: ranked by weight magnitude, not re-fitted")
        if repairable:
            # A consumer the repair does not re-fit (a 3×3 Conv, a scaled Gemm) was never fitted: no fit lost to it.
            unfitted = sum(r.group not in targets for r in removals)
            kept_as_is = sum(r.weight is None for r in removals) - unfitted
            if kept_as_is:
                self.note(f"repair: {kept_as_is} of {len(removals)} layers kept their weights (no fit beat them)")
            if unfitted:
                self.note(
                    f"repair: {unfitted} of {len(removals)} layers not re-fitted: their consumer is none the repair "
                    "re-fits (MatMul, unscaled Gemm and 1×1 Conv of stride 1 without padding)"
                )
            # The same cut without the repair, so the report shows what the repair bought.
            unrepaired = source.clone()
            self._prune(unrepaired, scores, ratios, comparable)
            self.note(f"without repair: {drift_of(unrepaired, batches, reference, layout=self.original)}")
        # One sample: ranking and repair fit the rows the figure is on, and the report's ``accuracy_on`` says so too.
        fitted = "ranking and repair fit too (an optimistic figure)" if not held_out and self._checked_on else ""
        twin = self._twin(source, removals)
        return self.result(model, modified=True, twin=twin, fitted_to_samples=held_out, fitted_to_checked=fitted)

    def _why_none(self, groups: list[ChannelGroup]) -> str:
        """Why a ratio removes no unit of ``groups``. Every group keeps at least one unit, so a group of one never
        loses any, whatever the fraction: multi-query attention's heads are one unit (its one key/value head with
        every query head reading it); nor does a Conv group ``_counts`` keeps whole (it was told to ask for a larger
        fraction; review s79 late79b)."""
        if all(g.size == 1 for g in groups):
            why = "every group holds a single unit, and each group keeps at least one"
            if any(self.units_named(g) > 1 for g in groups):
                why += (
                    " (a unit of grouped-query attention is a key/value head with the query heads reading it: "
                    "with one key/value head, no head can be cut)"
                )
            return why + "; no fraction removes any"
        sizes = ", ".join(str(size) for size in sorted({g.size for g in groups}))
        if multiples := sorted({m for g in groups if (m := _alignment(g)) is not None}):
            sizes += f"; Conv channel counts keep multiples of {' or '.join(map(str, multiples))} or the whole width"
            narrow = {tuple(counts) for g in groups if g.size == _WIDE_BLOCK and (counts := _counts(g))}
            if said := [
                _NARROW_COUNTS_SAID[counts] for counts in sorted(narrow, key=len) if counts in _NARROW_COUNTS_SAID
            ]:
                sizes += f"; of one block of {_WIDE_BLOCK}: {'; '.join(said)}"
        # A group whose only count is its width (16 on AVX-512 through a depthwise Conv) keeps it at any fraction.
        stuck = all(_counts(g) == [g.size] for g in groups)
        return f"in every group it rounds to none (groups of {sizes}); " + (
            "no fraction removes any" if stuck else "ask for a larger fraction"
        )

    def _scaled(self, scale: float) -> dict[str | None, float]:
        return {kind: ratio * scale for kind, ratio in self.ratios.items()}

    def _ratio_of(self, group: ChannelGroup, ratios: Mapping[str | None, float]) -> float:
        return ratios.get(group.kind, ratios.get(None, 0.0))

    def _decisions(self, groups: list[ChannelGroup], removals: list[_Removal]) -> str:
        """Per group, the units kept of how many: ``layer.0.ffn 1075/1536``; counted in its kind's units (heads,
        where a grouped-query unit is a key/value head and the query heads reading it: ``attn 4/8 (1/2 key/value
        heads)``), as the twin's description and the ``num_heads`` left count them."""
        cut = {r.group: r for r in removals}
        parts = []
        for g in sorted(groups, key=lambda g: g.name):
            kept, named = g.size - len(cut[g.name].removed) if g.name in cut else g.size, self.units_named(g)
            parts.append(f"{g.name} {kept * named}/{g.size * named}")
            if named > 1:
                parts[-1] += f" ({kept}/{g.size} key/value heads)"
        return f"kept per group ({'/'.join(dict.fromkeys(UNIT_NAMES.get(g.kind, 'units') for g in groups))}): " + (
            ", ".join(parts)
        )

    def _observe(self, model: ir.Model, groups: list[ChannelGroup], batches) -> tuple[dict, dict]:
        """One streamed run of the input model: each group's per-channel activation energy, and (for
        repair) the target the refit aims at on every calibration row: its consumer's output, or
        where that output goes into a residual Add (``_residual_skip``), the residual sum."""
        sums = {g.name: 0.0 for g in groups}
        counts = dict.fromkeys(sums, 0)
        grams, means = {}, {}
        if self.importance == "reconstruction":
            for g in groups:
                refusal = self._reconstruction_refusal(g)
                if refusal:
                    self.note(f"importance reconstruction: {g.name} {refusal}; ranked by activation")
                else:
                    grams[g.name], means[g.name] = 0.0, 0.0
        targets: dict[str, list[np.ndarray]] = {}
        linear = {g.name: _linear(model.graph, g.consumer) for g in groups if self.repair and _refittable(g.consumer)}
        skips = {name: _residual_skip(g.consumer) for g in groups if (name := g.name) in linear}
        skips = {name: skip for name, skip in skips.items() if skip is not None}
        names = [g.consumer.inputs[0].name for g in groups] + [skip.name for skip in skips.values()]
        for batch, values in zip(batches, stream_values(model, list(dict.fromkeys(names)), batches)):
            for g in groups:
                rows = channel_rows(batch, values[g.consumer.inputs[0].name], g.channel_axis).astype(np.float64)
                sums[g.name] = sums[g.name] + (rows**2).sum(axis=0)
                counts[g.name] += len(rows)
                if g.name in grams:
                    grams[g.name] = grams[g.name] + rows.T @ rows
                    means[g.name] = means[g.name] + rows.sum(axis=0)
                if g.name in linear:
                    weight, bias = linear[g.name]
                    target = rows @ weight + bias
                    if g.name in skips:
                        skip, inputs = values[skips[g.name].name], values[g.consumer.inputs[0].name]
                        target += _skip_rows(batch, skip, inputs, g.channel_axis, target.shape)
                    targets.setdefault(g.name, []).append(target.astype(np.float32))
        self._skips = {name: skip.name for name, skip in skips.items()}
        for name, gram in grams.items():
            # The repair fits a bias, so what a unit costs is over its inputs' covariance: a constant
            # channel costs nothing (the bias takes it), however large.
            mean = means[name] / max(counts[name], 1)
            self._grams[name] = (gram / max(counts[name], 1) - np.outer(mean, mean), counts[name])
        energy = {name: sums[name] / max(counts[name], 1) for name in sums}
        return energy, targets

    def _reconstruction_refusal(self, group: ChannelGroup) -> str | None:
        """Why ``group`` is not ranked by reconstruction (its cost assumes the repair's re-fit), or None."""
        if not self.repair:
            return "is not repaired (--no-repair), so nothing makes up for a removed unit"
        if not _refittable(group.consumer):
            return (
                f"is read by a {group.consumer.op_type} the repair does not re-fit (it re-fits MatMul, unscaled"
                " Gemm and 1×1 Conv of stride 1 without padding)"
            )
        if group.size * group.unit > MAX_INPUTS:
            return f"has {group.size * group.unit} inputs (more than {MAX_INPUTS})"
        return None

    def _twin(self, source: ir.Model, removals: list[_Removal]) -> Twin:
        """``source`` (the pass's input) with the removed units' consumer rows zeroed, the repaired weights in place.

        A removed unit loses its producer columns, bias entries and per-channel
        constants, but it reaches the outputs only through the consumer's weight rows
        that read it (a group whose channels are read anywhere else is left whole), so
        zeroing those rows computes what the pruned model computes. Nothing here uses
        the slicing that realizes the cut (``ChannelGroup.apply``): the channel indices
        and the weight axis are worked out again, and a repaired bias is added as its
        change after the consumer, whichever bias the realization rewrote; into a Gemm's
        C or a Conv's B (``fold_into_bias``), where the repair stores it too, so that the
        consumer's output holds the same values in both where a checkpoint reads it.
        """
        graph = source.graph
        nodes = list(graph)
        half = False
        for removal in removals:
            consumer = nodes[removal.position]
            original = weight_array(consumer.inputs[1])
            half = half or original.dtype == np.float16
            weight = (original if removal.weight is None else removal.weight).copy()
            channels = np.arange(removal.size * removal.unit).reshape(removal.size, removal.unit)[removal.removed]
            index = [slice(None)] * weight.ndim
            index[_input_channel_axis(consumer)] = channels.ravel()
            weight[tuple(index)] = 0
            consumer.replace_input_with(1, add_initializer(graph, f"{consumer.inputs[1].name}.twin", weight))
            change = removal.bias_change
            if change is not None and not fold_into_bias(graph, consumer, change, "twin_bias"):
                add_after(graph, consumer, change, "twin_bias")
        counts = []
        for kind in dict.fromkeys(r.kind for r in removals):
            removed = sum(len(r.removed) * r.named for r in removals if r.kind == kind)
            total = self._totals.get(kind, sum(r.size * r.named for r in removals if r.kind == kind))
            counts.append(f"{removed} of {total} {UNIT_NAMES.get(kind, self.unit_name)}")
        description = f"the input with {' and '.join(counts)} zeroed in {self.consumer_rows}"
        if any(r.weight is not None for r in removals):
            description += ", repaired weights and biases in place"
        # Cut the check at the activations the pruned blocks read (as int8's at its layers' inputs) and at their
        # MatMul consumers' outputs, so a deep model's rounding does not cascade end to end; none a cut narrows (the
        # twin's value would not fit).
        narrowed = {name for r in removals for name in r.narrowed}
        checkpoints = tuple(dict.fromkeys(n for r in removals for n in (*r.reads, *r.exits) if n and n not in narrowed))
        # A float16 model (float32 inputs and outputs, as converters keep them) sums the narrower layers in float16
        # in another order: its outputs carry float16 rounding however they are typed, so it is held at float16's.
        return Twin(source, "float16" if half else "float32", description, checkpoints=checkpoints)

    def _scores(self, group: ChannelGroup, energy: np.ndarray | None) -> np.ndarray:
        consumer = group.consumer_row_norms()
        activation = None if energy is None else np.sqrt(energy.reshape(group.size, group.unit).sum(axis=1)) * consumer
        gram, rows = self._grams.pop(group.name, (None, 0))
        if gram is not None:
            weight = _as_rows_by_outputs(weight_array(group.consumer.inputs[1]), _input_channel_axis(group.consumer))
            if rows < len(gram):
                refusal = f"has {rows} calibration rows for {len(gram)} inputs"
            elif not (np.isfinite(gram).all() and np.isfinite(weight).all()):
                refusal = "has non-finite inputs or weights"
            else:
                cut = group.consumer_cut
                units = [cut.indices([u], group.size, group.unit) for u in range(group.size)]
                # The global ranking's gain is measured by cutting units without compensation:
                # it is taken per unit of their uncompensated effect (``_output_effect``).
                if activation is not None:
                    self._uncompensated[group.name] = activation
                return removal_scores(weight, gram, units)
            self.note(f"importance reconstruction: {group.name} {refusal}; ranked by activation")
        if self.importance != "magnitude" and activation is not None:
            return activation
        return group.weight_norms()

    def _output_effect(self, model: ir.Model, groups, scores, batches, reference) -> dict[str, np.ndarray]:
        """Scores on one scale across groups: each group's local scores times the square root of its gain.

        The gain is measured: cut the group's weakest units that have any effect alone (its kind's ratio
        of the group's units, dead ones left out: cutting those moves nothing), run the model on the first
        ``_GAIN_SAMPLES`` calibration samples and take how far the outputs moved (1 - cosine, the worst
        output) per unit of local effect removed (the sum of the cut units' squared scores; ranked by
        reconstruction, of their activation scores, since the trial cut is not compensated). Both grow with
        the squared size of the change, so their ratio carries a layer's sensitivity over to its other units.
        """
        per_batch = max(len(next((a for a in batches[0].values() if np.ndim(a)), [0])), 1)
        count = -(-_GAIN_SAMPLES // per_batch)
        probe, expected = batches[:count], reference[:count]
        comparable = {}
        for group in track(groups, "pruning: each layer's effect on the outputs"):
            if _counts(group) == [group.size]:  # kept whole at any ratio (``_kept``): no trial run
                comparable[group.name] = scores[group.name]
                continue
            local = scores[group.name] ** 2
            effect = self._uncompensated.get(group.name, scores[group.name]) ** 2
            count = min(group.size - 1, max(1, int(math.floor(self._ratio_of(group, self.ratios) * group.size))))
            # Units with no effect (dead: zero weights, or a ReLU that never fires on the samples) move nothing
            # when cut, so a trial of only them measured 0/0 and read as a gain of 1e18: the layer's live units
            # were never cut while other layers' strong ones were. The trial cuts the weakest units that act.
            order = np.argsort(local, kind="stable")
            acting = order[effect[order] > 0]
            weakest = (acting if len(acting) else order)[:count]
            trial = model.clone()
            twin = next(g for g in self.find_groups(trial.graph)[0] if g.name == group.name)
            twin.apply(trial.graph, sorted(set(range(group.size)) - {int(u) for u in weakest}))
            moved = max(1.0 - drift_of(trial, probe, expected, layout=self.original).cosine, 1e-12)
            gain = moved / max(float(effect[weakest].sum()), 1e-30)
            comparable[group.name] = scores[group.name] * math.sqrt(gain)
        return comparable

    def _kept(
        self,
        groups: list[ChannelGroup],
        scores: dict[str, np.ndarray],
        ratios: float | Mapping[str | None, float],
        comparable: bool = False,
    ) -> dict[str, list[int]]:
        """The units each group keeps: per layer, or ranked across the groups of each kind.

        Across groups the scores are compared as they are when ``comparable`` (effects on
        the model's outputs), otherwise each over its group's mean. Each kind removes its
        ratio of all its units (of their total cost, with ``unit_cost``) but those of groups no count but the whole
        width is kept of (``_counts``); every group keeps at least one.
        """
        ratios = ratios if isinstance(ratios, Mapping) else {None: ratios}
        if self.ranking == "global":
            removed: dict[str, set[int]] = {g.name: set() for g in groups}
            for kind in dict.fromkeys(g.kind for g in groups):
                # A group whose only kept count is its width (16 channels a depthwise Conv or a Gemm reads on AVX-512,
                # ``_counts``) is no part of the pool: units ranked there were rounded back, and the ratio went
                # uncut (0.5 of a 16-wide such group and an 8-wide one removed 3 channels, not 4; review s79 late79d).
                members = [g for g in groups if g.kind == kind and _counts(g) != [g.size]]
                if not members:
                    continue
                costs = {g.name: self.unit_cost(g) for g in members}
                if any(cost is None for cost in costs.values()):
                    costs = dict.fromkeys(costs, 1.0)
                weighted = any(cost != 1.0 for cost in costs.values())
                pooled = []
                for index, g in enumerate(members):
                    relative = scores[g.name] / (1.0 if comparable else max(float(scores[g.name].mean()), 1e-30))
                    # Effect (the score squared) per cost; with unit costs the plain score orders the same.
                    keys = relative**2 / costs[g.name] if weighted else relative
                    pooled += [(float(key), index, g.name, unit) for unit, key in enumerate(keys)]
                pooled.sort()
                remaining = {g.name: g.size for g in members}
                budget = self._ratio_of(members[0], ratios) * sum(costs[g.name] * g.size for g in members)
                budget = math.floor(budget + 1e-9) if not weighted else budget
                for _, _, name, unit in pooled:
                    if budget <= 0:
                        break
                    if remaining[name] > 1:  # every group keeps at least one unit
                        removed[name].add(unit)
                        remaining[name] -= 1
                        budget -= costs[name]
            kept = {g.name: [u for u in range(g.size) if u not in removed[g.name]] for g in groups}
        else:
            kept = {}
            for g in groups:
                count = max(1, g.size - int(math.floor(self._ratio_of(g, ratios) * g.size + 1e-9)))
                order = np.argsort(-scores[g.name], kind="stable")
                kept[g.name] = sorted(int(u) for u in order[:count])
        aligned = {g.name: _aligned(g, kept[g.name], scores[g.name]) for g in groups}
        # Groups a cut was chosen in that the rounding left whole (count chosen, width), which the note names.
        self._rounded_whole = {
            g.name: (len(kept[g.name]), g.size) for g in groups if len(kept[g.name]) < g.size == len(aligned[g.name])
        }
        return aligned

    def _prune(
        self, model: ir.Model, scores, ratios, comparable=False, batches=(), targets=None, *, record: bool = False
    ) -> list[_Removal]:
        """Cut each group to the units ``_kept`` chooses; with ``targets``, repair sequentially.

        Groups are cut in graph order. A group with a target is re-fitted just before its
        cut, on its consumer's inputs in the model as cut so far (earlier layers cut and
        repaired), toward that consumer's output in the input model (or, before a residual Add,
        toward the input model's sum less what the skip carries in the model as cut so far).
        """
        groups, _ = self.find_groups(model.graph)
        kept = self._kept(groups, scores, ratios, comparable)
        targets = targets or {}
        # Positions before any cut: realizing a group may insert nodes (a Reshape target's Concat).
        positions = {id(node): index for index, node in enumerate(model.graph)}
        groups.sort(key=lambda g: positions[id(g.consumer)])
        removals = []
        label = "pruning: re-fitting each layer" if targets else "pruning: each layer"
        for index, group in enumerate(track(groups, label)):
            units = kept[group.name]
            if len(units) == group.size:
                continue
            removed = sorted(set(range(group.size)) - set(units))
            removal = _Removal(
                positions[id(group.consumer)],
                group.size,
                group.unit,
                removed,
                self.units_named(group),
                group.name,
                group.kind,
                reads=tuple(cut.node.inputs[0].name for cut in group.producers if cut.slot != 0 and cut.node.inputs[0]),
                narrowed=tuple(v.name for v in (*group.values, *group.reshaped_values, group.consumer.inputs[0]) if v),
                # A MatMul consumer's own output holds the same values in the result and the twin (a repaired bias
                # goes after it in both): a cut there keeps the layers after the cut from amplifying its rounding.
                exits=(group.consumer.outputs[0].name,) if is_onnx_op(group.consumer, "MatMul") else (),
            )
            if group.name in targets:
                refit = _refit(model, group, units, batches, targets[group.name], self._skips.get(group.name))
                if refit is not None:
                    removal.weight, removal.bias_change, added = refit
                    if added is not None:  # the consumer had no bias: the groups it produces for cut the new one
                        _cut_added_bias(groups[index + 1 :], group.consumer, *added)
            group.apply(model.graph, units)
            removals.append(removal)
            if record:
                self.pruned[group.name] = (len(units), group.size)
        remove_dead_nodes(model)
        return removals

    def _fitted_and_checked(self, model: ir.Model, batches) -> tuple[Sequence, Sequence]:
        """The samples ranking and repair may use, and those the budget is checked on: where ranking or repair
        reads the samples and there are two or more, some held out of the first (``optimizer.samples.hold_out``,
        as for factorize-lowrank: one in five, with two to four the last, whole batches where the model fixes its
        batch); else the same samples for both. A repair fitted to the very rows the budget is checked on meets
        it by the fit: on 20 samples a 0.99 budget was met at cosine 0.990 and missed on new samples (0.975);
        the pipeline checks the default floor on the held-out samples too. ``self._checked_on`` says which for
        the budget's note. With a budget and one sample (nothing to hold out), units are ranked by weight magnitude
        and not re-fitted, as factorize-lowrank's factors are then plain SVD: a budget checked on the rows the
        repair was fitted to is met by the fit (16 token rows of one sentence met 0.99 at a cut new sentences
        scored 0.964 on)."""
        self._checked_on = ""
        fits = self.importance != "magnitude" or self.repair
        if not batches or not fits:
            return batches, batches
        # Where enough are held out, the budget's bisection stops on half of them and the figures (and the
        # pipeline's check) are the other half's: a ratio bisected on the rows it is reported on meets it there.
        fitted, self._searched_on, reported = held_out_parts(batches, model)
        if len(reported) == 0:
            whole = "batch (the model fixes its batch size)" if fixes_batch(model) else "sample"
            if self.budget is not None:
                self.note(
                    f"one calibration {whole}: none can be held out to check the budget on, so units are ranked by "
                    "weight magnitude and not re-fitted (nothing fitted to the samples the budget is checked on); "
                    "give more samples for activation ranking and repair"
                )
                self.importance, self.repair = "magnitude", False
                return batches, batches
            self._checked_on = f" on the one calibration {whole}, which ranking and repair fit too"
            return batches, batches
        self._checked_on = " on held-out samples, which ranking and repair do not see"
        return fitted, reported

    def _search(self, model: ir.Model, scores, comparable, batches, targets, checked, reference) -> float:
        """The largest fraction (up to 1) of the ratios asked whose pruned model meets the budget on ``checked``
        (whose outputs in the input model are ``reference``), fitting to ``batches`` (bisection)."""
        low, high, best = 0.0, 1.0, 0.0
        trial = model.clone()
        if not self._prune(trial, scores, self._scaled(high), comparable, batches, targets):
            return high  # the ratios asked remove no unit, nor does any fraction of them: the caller says why
        if self.budget.met(drift_of(trial, checked, reference, layout=self.original)):
            self.note(
                f"budget {self.budget.describe()}{self._checked_on}: met at the largest ratio asked, "
                f"{self._describe(high)}"
            )
            return high
        self._bisected = True
        for _ in track(range(_SEARCH_STEPS), "pruning: bisection over the ratio"):
            middle = (low + high) / 2
            trial = model.clone()
            # A ratio that removes no unit meets any budget: it is no cut that meets this one.
            if self._prune(trial, scores, self._scaled(middle), comparable, batches, targets) and self.budget.met(
                drift_of(trial, checked, reference, layout=self.original)
            ):
                low = best = middle
            else:
                high = middle
        asked = _describe_ratios(self.ratios).removeprefix("ratio ")
        budget = f"budget {self.budget.describe()}{self._checked_on}"
        self.note(f"{budget}: largest ratio {self._describe(best)} (of up to {asked})")
        return best

    def _describe(self, scale: float) -> str:
        return _describe_ratios(self._scaled(scale)).removeprefix("ratio ").removeprefix("ratios ")


def _aligned(group: ChannelGroup, kept: list[int], scores: np.ndarray) -> list[int]:
    """``kept``, for a Conv channel group, rounded to the nearest multiple of the group's alignment or to the whole
    width (the strongest units first; a tie keeps more; never none, never more than the width): with an NCHWc block
    (``_block``), the block for every group whose width is a multiple of 4 and more than one block (12, 16, … with
    the block of 8; 20, 24, 40, 48, … with 16: 40 of 48 becomes 32 or 48); with the block of 16 (AVX-512), a group
    of one block keeps the counts that ran faster than all 16 (``_counts``: 4 where a 1×1 Conv reads it, 4 or 8 where
    another Conv does, none through a depthwise Conv or into a Gemm or MatMul), and a group 8 or 12 wide a multiple
    of 4 where a depthwise Conv reads it (``_alignment``); where the CPU has none, 4 for widths a multiple of 4 and at
    least 16; other widths unchanged (8 or 12 read by another Conv with the block of 16, 8 with the block of 8,
    1050, …). A cut of a group of one block of 8 (AVX2) is not measured here: it is left as asked, which leaves the
    suite's 8-channel models something to cut.

    ONNX Runtime's CPU Convs run in a blocked layout (NCHWc, 8 channels a block on x86, 16 with AVX-512F) when
    the channel counts are multiples of 4, each padded with zero filters up to the block (seen in the
    session-optimized model: on AVX-512 40 and 44 ran as 48, 20 and 24 as 32, 8 and 12 as 16): EfficientNet-Lite0
    with 25 % of its expansion channels cut to counts like 1050 ran 2.4× *slower* than the original, and a count
    off the block costs what the block above it costs.
    Narrow groups too (benchmarks/conv_channel_counts.py, AVX2, one thread): a 1×1 Conv
    32 → C → 96 at 112×112 with C of 9–11 or 13–15 ran 1.34–1.53× the time of C = 16,
    12 in 1.01–1.04 of it, 8 in 0.81: a cut of 16 to 12 saves nothing, one of 12 to 8 a fifth. On AVX-512
    (Zen 4, one thread) C = 88 ran 1.01× the time of 96, 72 as 80, 56 as 64: a cut of 8 there saves nothing.
    """
    counts = _counts(group)
    if counts is None or len(kept) == group.size:
        return kept
    count = min(counts, key=lambda c: (abs(c - len(kept)), -c))
    if count == len(kept):
        return kept
    order = np.argsort(-scores, kind="stable")
    return sorted(int(u) for u in order[:count])


def _alignment(group: ChannelGroup) -> int | None:
    """The channel multiple a Conv group's kept count is rounded to (``_aligned``), or None (not a Conv group, a
    width off 4, or one too narrow to round): on AVX-512 a group 8 or 12 wide that a depthwise Conv reads keeps a
    multiple of 4 (a count off 4 ran slower than the whole width there: 9–11 of 12 1.1–1.4× the time of 12, 5–7 of 8
    1.0–1.9× of 8; 8 of 12 0.90–0.98×, 4 of 8 0.81–0.94×; reviews s79 late79b and xnarrow); read by a 1×1 or 3×3 Conv
    a count off 4 ran in 0.76–1.03× the time of the width (a trade of time for accuracy), so it is left as asked."""
    if group.kind != "channels" or group.size % NARROW_CHANNEL_MULTIPLE:
        return None
    if (block := _block()) is not None and group.size > block:
        return block
    if block == _WIDE_BLOCK and group.size > NARROW_CHANNEL_MULTIPLE and group.group_counts:
        return NARROW_CHANNEL_MULTIPLE
    # No block, or a group of one block or less (16 with AVX-512F: there see ``_counts``): at least a count ONNX
    # Runtime blocks.
    return NARROW_CHANNEL_MULTIPLE if group.size >= 4 * NARROW_CHANNEL_MULTIPLE else None


def _counts(group: ChannelGroup) -> list[int] | None:
    """The kept counts ``_aligned`` rounds a Conv group to (None: any count): the multiples of its alignment below its
    width, and the width (4 or 8 of 8, 4, 8 or 12 of 12 through a depthwise Conv on AVX-512); of a group of one
    AVX-512 block (16 channels, ``_WIDE_BLOCK``) only those that ran faster than all 16: none where a depthwise Conv
    reads the group (its 4 saved no time) or a Gemm or MatMul does (a classifier's: 12 and 8 ran slower than 16, 4 as
    16), 4 where a 1×1 Conv reads it (8 and 12 ran slower than 16), else 4 and 8 (a 3×3 Conv reading 12 ran as 16)."""
    if (multiple := _alignment(group)) is None:
        return None
    if group.size == _block() == _WIDE_BLOCK:
        if group.group_counts or (group.consumer is not None and group.consumer.op_type in ("Gemm", "MatMul")):
            return [group.size]
        if _read_pointwise(group):
            return [NARROW_CHANNEL_MULTIPLE, group.size]
        return [NARROW_CHANNEL_MULTIPLE, 2 * NARROW_CHANNEL_MULTIPLE, group.size]
    return [*range(multiple, group.size, multiple), group.size]


def _read_pointwise(group: ChannelGroup) -> bool:
    """Whether a 1×1 Conv reads the group (a weight of known shape whose kernel is 1 in every spatial dim), at any
    stride. The shape is the weight's own: a ``Constant`` node's output, a float16 weight a ``Cast`` widens or an int8
    one dequantized by hand declares none (such a 1×1 Conv kept 8 of 16; review s79 late79b)."""
    consumer = group.consumer
    if consumer is None or consumer.op_type != "Conv" or len(consumer.inputs) < 2 or consumer.inputs[1] is None:
        return False
    weight = weight_array(consumer.inputs[1])
    shape = weight.shape if weight is not None else consumer.inputs[1].shape
    return shape is not None and len(shape) > 2 and all(dim == 1 for dim in tuple(shape)[2:])


def _block() -> int | None:
    """The NCHWc block kept counts are multiples of: ``CHANNEL_MULTIPLE``, else this CPU's (None: it has none)."""
    return CHANNEL_MULTIPLE or cpu_features().nchwc_block


def _rounding_note(
    groups: Sequence[ChannelGroup],
    kept: Mapping[str, tuple[int, int]],
    whole: Mapping[str, tuple[int, int]] | None = None,
) -> str | None:
    """What the kept Conv channel counts were rounded to, and why (None where no group is rounded or off the block);
    each Conv group whose kept count (``kept``: its count, then its width) is off this CPU's NCHWc block, which ONNX
    Runtime runs as the multiple of the block above (the note said only "off it a cut saves no time" while ResNet's 16-
    and 32-channel groups kept 12 and 24 on AVX-512, review s78 regress78; a group too narrow to round, 4 of 8 on AVX2,
    was not named, review s78 truth78), or slower: a count off 4 (6 of 8 on AVX2 was reported without a word), and
    below one block, where the next Conv reads it unblocked (12 of 16 ran 1.6× the time of 16 on AVX-512; review s78
    late78e); on AVX-512 a multiple of 4 below one block is named apart, as read in less time than the width it was
    cut from or as much (4 of 16 was called "as 16", review s79 xblk), and so is a count off 4 of a narrower group a
    Conv reads with no depthwise Conv on the way (9 of 12 was called "as 16 or slower", review s79 xnarrow).
    ``whole``: the groups a cut was chosen in that rounding left whole (their count chosen, then width), named at the
    end (the report listed them as ``32/32`` without a word while the multiple shown was another group's; review s78
    late78e)."""
    multiples = sorted({m for g in groups if (m := _alignment(g)) is not None}, reverse=True)
    shown = " or ".join(str(m) for m in multiples)
    whole = whole or {}
    left = [f"{name} {count}/{size} → {size}/{size}" for name, (count, size) in whole.items()]
    left_said = f"; rounded back to the whole width: {_first_three(left)}" if left else ""
    # A group of one AVX-512 block rounded back from a multiple of 4 (12 of 16) is not explained by "multiples of 4"
    # (EfficientNet-Lite0 at 0.25: "node_Conv_801 12/16 → 16/16" without a word; review s79 late79d).
    rounded = {tuple(_counts(g) or ()) for g in groups if g.name in whole and g.size == _WIDE_BLOCK}
    if why := [_NARROW_COUNTS_SAID[counts] for counts in sorted(rounded, key=len) if counts in _NARROW_COUNTS_SAID]:
        left_said += f" (of one block of {_WIDE_BLOCK} only counts that ran faster than 16 are kept: {'; '.join(why)})"
    if (block := _block()) is None:
        if not multiples:
            return None
        return (
            f"Conv channel counts kept as multiples of {shown}: ONNX Runtime blocks no Conv on this CPU (its default "
            "builds block none off x86); 4 is what its blocked kernels need elsewhere (not measured here)" + left_said
        )
    kept = {**{name: (size, size) for name, (_, size) in whole.items()}, **kept}
    cut = {g.name: count for g in groups if g.kind == "channels" and (count := kept[g.name][0]) < g.size}
    # On AVX-512 a multiple of 4 below the block ran faster than the width it was cut from, or as fast (4 or 8 of 16
    # as ``_counts`` keeps them, 8 of 12; ``_WIDE_BLOCK``): it does not run "as 16". So did a count off 4 of a group
    # narrower than the block that a Conv reads with no depthwise Conv on the way (which rounds 8 or 12 wide,
    # ``_alignment``): 1×1 or 3×3 Convs reading 5–11 channels ran 0.76–1.03× the time of the group's width, a 3×3 one
    # 0.64–0.91× the time of 16 (the note said "9/12 as 16 or slower"; review s79 xnarrow).
    narrow = [
        g
        for g in groups
        if g.name in cut
        and block == _WIDE_BLOCK
        and cut[g.name] < block
        and (
            not cut[g.name] % NARROW_CHANNEL_MULTIPLE
            or (g.size < block and g.consumer.op_type == "Conv" and not g.group_counts)
        )
    ]
    faster = [f"{g.name} {cut[g.name]}/{g.size}" for g in narrow]
    # 8 or 12 wide through a depthwise Conv keeps a multiple of 4 (``_alignment``); another Conv may read a count off
    # 4 of a narrower group: their own figures, not a 16's.
    narrow_said = (
        ", an inverted residual with its depthwise Conv on 8 or 4 of 12 or 4 of 8 0.76–0.98× the time of the "
        "whole width"
        if any(g.group_counts for g in narrow)
        else ""
    ) + (
        ", a 1×1 or 3×3 Conv reading a count off 4 of a narrower group 0.76–1.03× the time of the whole width"
        if any(cut[g.name] % NARROW_CHANNEL_MULTIPLE for g in narrow)
        else ""
    )
    off = [
        # A count off 4 is not blocked at all (a depthwise Conv on it runs unblocked; ``_aligned``): slower still.
        f"{g.name} {count}/{g.size} as {-(-count // block) * block}"
        + (" or slower (off 4: not blocked)" if count % NARROW_CHANNEL_MULTIPLE else "")
        for g in groups
        if (count := cut.get(g.name, 0)) % block and f"{g.name} {count}/{g.size}" not in faster
    ]
    # Below one block the next Conv reads the channels unblocked, slower per channel than the block (AVX-512, one
    # thread, 1×1 Conv 32 → C → 96 at 112×112, ONNX Runtime 1.32: C = 12 ran 1.58× the time of 16, 8 1.21×, 4 0.76×).
    below = any(kept[g.name][0] < block for g in groups if g.kind == "channels" and g.consumer.op_type == "Conv")
    if not multiples and not off and not faster:
        return None
    faster_said = (
        f"below one block: {_first_three(faster)}, which the next Conv reads in less time than the width it was cut "
        "from or as much (AVX-512, one thread: a 1×1 Conv reading 4 of 16 ran 0.7–1.0× the time of 16, a 3×3 "
        f"one reading 8 or 4 0.6–0.9×{narrow_said}; counts of 16 that ran no faster than 16 are not kept)"
        if faster
        else ""
    )
    one = len(off) == 1
    runs = (
        f"{len(off)} narrower group{'' if one else 's'} kept a count off it and run{'s' if one else ''} as the "
        f"multiple above: {_first_three(off)}"
        if off
        else ""
    )
    if off and below:
        runs += (
            "; below one block the next Conv reads them unblocked, which can cost more time than the whole block "
            "(AVX-512: 12 of 16 ran 1.6× the time of 16, 8 1.2×, 4 0.8×)"
        )
    block_said = f"ONNX Runtime's NCHWc Conv block on this CPU is {block} channels (16 with AVX-512F, 8 without)"
    if not multiples:
        return f"Conv channel counts: {block_said}; " + "; ".join(said for said in (faster_said, runs) if said)
    return (
        f"Conv channel counts kept as multiples of {shown}: {block_said}; off it a cut saves no time"
        + (f", except {faster_said}" if faster_said else "")
        + (f"; {runs}" if runs else "")
        + left_said
    )


def _first_three(items: Sequence[str]) -> str:
    """``a, b, c, ...``: the first three of ``items``, and whether there are more."""
    return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")


def _describe_ratios(ratios: Mapping[str | None, float]) -> str:
    """``ratio 0.30``, or per kind: ``ratios ffn 0.30, heads 0.25``."""
    if list(ratios) == [None]:
        return f"ratio {ratios[None]:.2f}"
    return "ratios " + ", ".join(f"{kind} {ratio:.2f}" for kind, ratio in ratios.items())


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
    named: int  # how many of its kind's units (``UNIT_NAMES``) one unit is
    group: str = ""
    kind: str = ""
    weight: np.ndarray | None = None
    bias_change: np.ndarray | None = None
    # The activations its producers read (the twin's checkpoints) and the tensors its cut narrows.
    reads: tuple[str, ...] = ()
    narrowed: tuple[str, ...] = ()
    exits: tuple[str, ...] = ()


def _input_channel_axis(consumer: ir.Node) -> int:
    """The axis of the consumer's weight that runs over its input channels."""
    if consumer.op_type == "Conv" or (consumer.op_type == "Gemm" and consumer.attributes.get_int("transB", 0)):
        return 1  # [out, in, ...] filters; a Gemm's transposed [out, in]
    return 0


def _refittable(consumer: ir.Node) -> bool:
    """Whether the repair's model ``X W + b`` is what the consumer computes over its input channels.

    MatMul, an unscaled Gemm (alpha 1, and beta 1 where it has a C: beta scales C alone, and a C the repair adds
    sets it to 1), or a 1×1 Conv (group 1, stride 1, no padding): there every
    output position is the input channels at that position times ``W``. Other Convs
    mix neighbouring positions, which needs their patches, not their channels.
    """
    attributes = consumer.attributes
    if consumer.op_type == "Conv":
        weight = weight_array(consumer.inputs[1])
        return (
            weight is not None
            and all(d == 1 for d in weight.shape[2:])
            and attributes.get_int("group", 1) == 1
            and all(v == 1 for v in attributes.get_ints("strides", ()))
            and not any(attributes.get_ints("pads", ()))
            and attributes.get_string("auto_pad", "NOTSET") in ("NOTSET", "VALID")
        )
    if consumer.op_type == "Gemm":
        has_c = len(consumer.inputs) > 2 and consumer.inputs[2] is not None
        scaled = attributes.get_float("alpha", 1.0) != 1.0 or (has_c and attributes.get_float("beta", 1.0) != 1.0)
        return not scaled and not attributes.get_int("transA", 0)
    return True


def _as_rows_by_outputs(weight: np.ndarray, axis: int) -> np.ndarray:
    """The consumer's weight as ``[input channels, outputs]`` (a Conv's ``[out, in, 1, 1]`` included)."""
    weight = weight.reshape(weight.shape[:2]) if weight.ndim > 2 else weight
    return weight.T if axis == 1 else weight


def _dequantizes_by_hand(groups: Sequence[ChannelGroup]) -> bool:
    """Whether a weight some of ``groups`` cut is stored in a narrow integer type and dequantized in the graph
    (``dequantized_weight``)."""
    return any(
        dequantized_weight(cut.node.inputs[cut.slot]) is not None
        for group in groups
        for cut in (*group.producers, *group.vectors, group.consumer_cut)
    )


def _linear(graph: ir.Graph, consumer: ir.Node) -> tuple[np.ndarray, np.ndarray]:
    """The consumer as ``X W + b``: ``W`` as ``[input channels, outputs]`` and ``b`` (float64)."""
    weight = weight_array(consumer.inputs[1]).astype(np.float64)
    return _as_rows_by_outputs(weight, _input_channel_axis(consumer)), _bias(graph, consumer)[0]


def _up_to(model: ir.Model, *names: str) -> ir.Model:
    """A copy of ``model`` computing only the values ``names`` (the layers after them are not run)."""
    probe = model.clone()
    produced = {v.name: v for node in probe.graph for v in node.outputs}
    probe.graph.outputs.clear()
    probe.graph.outputs.extend(produced[name] for name in dict.fromkeys(names) if name in produced)
    remove_dead_nodes(probe)
    return probe


def _residual_skip(consumer: ir.Node) -> ir.Value | None:
    """The other operand of the residual Add the consumer's output flows into (past one Add of a constant: a bias).

    The refit then aims at the residual sum: the consumer also absorbs how far the skip
    path has moved in the model cut so far (``_refit``). None where the output is not
    read by exactly one such Add.
    """
    output = consumer.outputs[0]
    for _ in range(2):
        users = list(output.uses())
        if len(users) != 1 or output.is_graph_output():
            return None
        add, index = users[0].node, users[0].idx
        if add.op_type != "Add" or not is_onnx_domain(add) or len(add.inputs) != 2:
            return None
        other = add.inputs[1 - index]
        if other is None:
            return None
        if weight_array(other) is None:
            return other if other.producer() is not None else None  # a graph input does not drift
        output = add.outputs[0]  # a bias: the residual Add, if any, comes next
    return None


def _skip_rows(batch, skip: np.ndarray, inputs: np.ndarray, channel_axis: int, shape: tuple[int, ...]) -> np.ndarray:
    """The skip tensor as the rows the targets (``shape``) are in; zeros where it broadcasts into them.

    A skip is taken row for row only where it has the consumer's ``inputs``' shape but for the
    channel axis (same batch, positions or tokens); a broadcast one keeps the old target.
    """
    skip, inputs = np.asarray(skip), np.asarray(inputs)
    if skip.ndim != inputs.ndim or skip.ndim < 2:
        return np.zeros(shape)
    axis = channel_axis % skip.ndim
    if np.delete(skip.shape, axis).tolist() != np.delete(inputs.shape, axis).tolist():
        return np.zeros(shape)
    rows = channel_rows(batch, skip, channel_axis).astype(np.float64)
    return rows if rows.shape == shape else np.zeros(shape)


def _refit(
    model: ir.Model, group: ChannelGroup, kept: list[int], batches, targets: list[np.ndarray], skip: str | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[Cut, ir.Value | None] | None] | None:
    """Re-fit the consumer's weight rows for the kept channels (and its bias) by regularized least squares.

    The rows are the consumer's inputs in ``model`` as it is now (the earlier groups cut
    and repaired), streamed batch by batch; the targets are its outputs in the input
    model on the same rows, or, with ``skip`` (``_residual_skip``), the input model's
    residual sums less that skip value in ``model``. The kept channels plus a constant column
    are fitted to them, pulled toward the unrepaired weights (``_least_squares.GramFit``:
    strength chosen on held-out rows, and no change at all if that fits the held-out rows best).

    Writes the new weight (full width: ``apply`` cuts the removed rows next) and bias into
    the graph, in the weight's float type, and returns them: the weight, the bias's change, and
    where a bias the consumer did not have now lives (``_bias``); None if the weights stay.
    """
    graph, consumer, cut = model.graph, group.consumer, group.consumer_cut
    original = weight_array(consumer.inputs[1])
    axis = _input_channel_axis(consumer)
    weight = _as_rows_by_outputs(original.astype(np.float64), axis)
    bias, set_bias = _bias(graph, consumer)
    channels = cut.indices(kept, group.size, group.unit)
    fit = GramFit(len(channels), weight.shape[1])
    name = consumer.inputs[0].name
    if skip is not None:
        # The skip as the residual Add reads it now: an earlier refit may have put a new bias Add
        # after the layer that computes it (a parallel branch), and the sum carries that bias.
        current = _residual_skip(consumer)
        skip = current.name if current is not None else skip
    names = [name] if skip is None else [name, skip]
    with value_collector(_up_to(model, *names), names) as run:
        for batch, target in zip(batches, targets):
            values = run(batch)
            rows = channel_rows(batch, values[name], group.channel_axis)
            if skip is not None:  # the target is the residual sum: what the skip path now carries is subtracted
                target = target - _skip_rows(batch, values[skip], values[name], group.channel_axis, target.shape)
            fit.add(rows[:, channels], target)
    prior = np.concatenate([weight[channels], bias[None, :]])
    solution, unchanged = fit.solve(prior)
    if unchanged:
        return None
    fitted = np.zeros_like(weight)
    fitted[channels] = solution[:-1]  # the removed rows are cut by ``apply`` right after
    fitted = fitted.T if axis == 1 else fitted
    # Written in the model's own float type: a float32 weight in a float16 model is a type error.
    new_weight = fitted.reshape(original.shape).astype(original.dtype)
    consumer.replace_input_with(1, add_initializer(graph, f"{consumer.inputs[1].name}.repaired", new_weight))
    new_bias = solution[-1].astype(original.dtype)
    added = set_bias(new_bias)
    change = (new_bias.astype(np.float64) - bias).astype(original.dtype)
    if consumer.op_type == "Conv":
        change = change.reshape(-1, *([1] * (original.ndim - 2)))  # added after an NCHW output
    return new_weight, change, added


def _bias(graph: ir.Graph, consumer: ir.Node):
    """The consumer's bias (zeros if none) and a function that stores a new one.

    The bias is a Gemm's C of one value per output (``[N]``, ``[1, N]``) or a Conv's B, or the
    constant of the Add right after a MatMul (or a Gemm without such a C) when it broadcasts
    along the output's last axis (``passes._layers.is_feature_bias``: an ``[M, 1]`` constant
    adds one value per row, whatever ``M``); failing both, the new bias gets an Add of its own.

    The store function returns where a bias it *added* lives: a ``Cut`` of its output channels
    and the new Add's output (None for a Gemm's or Conv's new input), so the groups that cut the
    consumer's output channels next cut it too (``_cut_added_bias``); None where it replaced a bias.
    """
    conv = consumer.op_type == "Conv"
    transposed = consumer.op_type == "Gemm" and consumer.attributes.get_int("transB", 0)
    width = weight_array(consumer.inputs[1]).shape[0 if transposed or conv else 1]
    if consumer.op_type in ("Gemm", "Conv"):
        has_bias = len(consumer.inputs) > 2 and consumer.inputs[2] is not None
        current = weight_array(consumer.inputs[2]) if has_bias else None
        per_output = current is not None and (
            current.size == width if conv else is_feature_bias(current.shape, width, 2)
        )
        if not has_bias or per_output:

            def store_gemm(value: np.ndarray) -> tuple[Cut, None] | None:
                if len(consumer.inputs) < 3:
                    consumer.resize_inputs(3)
                if not has_bias and not conv:  # a Gemm without C may state any beta: the new C is added as it is
                    consumer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
                consumer.replace_input_with(2, add_initializer(graph, f"{consumer.name}.repaired_bias", value))
                return None if has_bias else (Cut(consumer, 2, 0 if conv else -1), None)

            return (np.zeros(width) if current is None else current.reshape(-1).astype(np.float64)), store_gemm
    output = consumer.outputs[0]
    users = list(output.uses())
    if not conv and len(users) == 1 and users[0].node.op_type == "Add" and not output.is_graph_output():
        add, slot = users[0].node, 1 - users[0].idx
        current = weight_array(add.inputs[slot])
        known = output.shape if output.shape is not None else consumer.inputs[0].shape
        rank = known.rank() if known is not None else None
        if current is not None and is_onnx_domain(add) and is_feature_bias(current.shape, width, rank):

            def store_add(value: np.ndarray) -> None:
                new = add_initializer(graph, f"{add.name}.repaired_bias", value.reshape(current.shape))
                add.replace_input_with(slot, new)

            return current.reshape(-1).astype(np.float64), store_add

    def insert_add(value: np.ndarray) -> tuple[Cut, ir.Value]:
        if conv:  # added after an NCHW output
            rank = output.shape.rank() if output.shape is not None else 4
            value = value.reshape(-1, *([1] * (rank - 2)))
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
        return Cut(add, 1, 0 if conv else -1), add.outputs[0]

    return np.zeros(width), insert_add


def _cut_added_bias(groups: Sequence[ChannelGroup], node: ir.Node, bias: Cut, value: ir.Value | None) -> None:
    """Make the groups that cut ``node``'s output channels (``node`` is one of their producers) cut the bias
    the repair has just given it too, and the new Add's output ``value`` with them.

    The groups were found before the repair added it: without this the next cut leaves a
    full-width bias on a narrower output (ONNX Runtime refuses the result).
    """
    for group in groups:
        cut = next((c for c in group.producers if c.node is node and c.slot == 1), None)
        if cut is not None:
            group.vectors.append(replace(cut, node=bias.node, slot=bias.slot, axis=bias.axis))
            if value is not None:
                group.values.append(value)

"""Low-rank factorization: a MatMul/Gemm/Attention with a constant weight ``W [k, n]`` becomes ``(x · U) · V``.

``U [k, r]`` and ``V [r, n]`` hold ``r (k + n)`` parameters instead of ``k n``. The
rank is what ``ratio`` leaves: ``--lowrank 0.5`` removes half of each factorized
layer's parameters. The original node stays and reads the new ``MatMul(x, U)`` and
``V`` in place of ``x`` and ``W`` (a Gemm keeps its bias and ``transB``; a
com.microsoft Attention with packed QKV weights takes the ``r``-wide input, which its
kernel accepts), so everything after it is untouched.

How the factors are chosen:

- **Held out first**: one calibration sample in five (whole sequences,
  ``optimizer.samples.hold_out``) is kept away from everything below that fits to data;
  the pass's accuracy figures and its budget search are measured on those samples, at the
  positions the padding masks of the pipeline's input (``original``) leave real (factors
  whitened by a few hundred rows reproduce those rows almost exactly, so a budget checked
  on them is met by the fit, not by the layer). With two to four samples
  the last one is held out; with a single one nothing can be: with a budget the factors
  are then plain SVD without repair (nothing fitted to the samples the budget is checked
  on); without one, the figures say they are measured on the fitted sample.
- **Activation-aware** (with calibration data, the default): the error that matters
  is the layer's output error ``|x (W - U V)|`` over the inputs the layer actually
  sees, not ``|W - U V|``. With ``C = XᵀX / N`` over every unpadded row of the fitted
  samples, shrunk toward its diagonal by ``k / (k + N)`` (few rows, little trust in
  their correlations) plus a ``_RIDGE`` of its mean diagonal, and its Cholesky factor
  ``C = L Lᵀ``, the best rank-``r`` ``U V`` in that metric is the truncated SVD of
  ``Lᵀ W`` mapped back by ``L⁻ᵀ`` (SVD-LLM; ASVD's diagonal scaling is the special case
  of a diagonal ``C``). Without data, or with ``importance="magnitude"``, plain SVD of
  ``W``, and a note says so.
- **Repair** (with calibration data): ``V`` and a bias change are re-fitted by least
  squares to the original layer's output on the fitted samples, with ``U`` fixed — the
  same regularized solve as pruning's repair (``passes._least_squares``). The re-fit is
  kept only where it lowers the error on folds of those samples it was not fitted to
  (whole sequences, by 2 %); with fewer than five samples the factors stay as they are.
- **Rank selection with a budget** (``--min-cosine``/``--max-error``): ``ratio`` is then
  the most that may be removed. Each layer's sensitivity is its spectrum measured on
  the held-out rows: the smallest rank whose relative output error there is at most
  ``ε``. One ``ε`` for the whole model is bisected (on log scale) so the model meets the
  budget on the held-out samples; layers that would need a rank that no longer pays stay
  whole.

A layer is left whole (a counted refusal with the reason) when its weight is not a
constant float32 2-D matrix, it is too small to pay (``_MIN_PARAMETERS``), the rank
would not save ``_MIN_SAVING`` of its parameters, its weight is also read by something
that is not a layer of the same orientation (an embedding Gather: the weight would stay
beside its factors) or read through a ``Transpose`` (a tied LM head), or the factorized
layer is not measured faster on the target EP at the rows it will run
(``passes.factorization._timing``: a per-shape timing cache on this machine; the rank a
layer gets is timed itself, not inferred from a bisection). With ``target="cuda"`` where
CUDA cannot run, the pass declines: it cannot time anything there. A weight
read by several layers (tied) is factorized once: its covariance is pooled over every
reader's inputs, and the readers share ``U`` and ``V``.

Every result carries its twin (``optimizer.protocol.Twin``, float32): the input with
each factorized weight replaced by the product ``U V`` and each bias change added after
its layer, built from the pass's decisions, not from the rewritten graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from optimizer.accuracy import AccuracyBudget, Drift
from optimizer.draws import budget_references, left_out_note
from optimizer.options import IMPORTANCE_KINDS
from optimizer.padding import cache_outputs, mask_inputs, padded_at
from optimizer.parameters import count_parameters
from optimizer.protocol import Twin
from optimizer.runtime import cuda_unavailable_reason, drift_of, value_collector
from optimizer.samples import (
    HOLD_OUT_EVERY,
    few_held_out,
    held_out_parts,
    held_out_samples,
    holds_samples,
    samples_in,
    searched_caveat,
    split_samples,
)
from passes._layers import (
    Layer,
    add_after,
    bias_add,
    excluded,
    find_layers,
    fold_into_bias,
    name_nodes,
    tied_weight_reason,
    unmatched_patterns,
)
from passes._least_squares import GramFit
from passes._pass import GraphoptPass, checked_target, refuse_without_samples, unfit_on_generated_samples
from passes._utils import (
    add_initializer,
    dequantized_weight,
    initializer_bytes,
    nothing_found_note,
    remove_dead_nodes,
    unique_name,
    weight_array,
    written_in_float_note,
)
from passes.factorization._timing import FASTER_BELOW, MeasuredSpeed, parameter_limit

# "reconstruction" (pruning's compensated ranking) is activation-aware here: the whitened SVD is already
# the reconstruction-optimal factorization.
IMPORTANCE = IMPORTANCE_KINDS
# Below this many weight entries a second kernel launch costs more than the multiply-adds saved.
_MIN_PARAMETERS = 16384
# A factorization must remove at least this fraction of a layer's parameters to be worth a second MatMul.
_MIN_SAVING = 0.1
# A ridge on the input covariance (after its shrinkage toward the diagonal, see ``_Group.decompose``),
# relative to its mean diagonal: a channel the samples never moved still counts a little, and C stays definite.
_RIDGE = 1e-3
# Rows of each layer's input sampled for the covariance and the repair.
_SAMPLE_ROWS = 1024
# The repair is kept where it lowers the held-out squared error below this fraction of the unrepaired
# one: a re-fit that only moves rounding noise is not worth a new bias Add.
_REPAIR_GAIN = 0.98
# Folds of whole samples the sampled rows are split into for the repair's held-out choice (every fifth is
# held out): rows of one sequence are alike, and rows held out beside their neighbours do not show a fit
# that learnt the calibration sequences rather than the layer (on clustered sequences it doubled the error).
_REPAIR_BATCHES = 10
# Factors this close to the layer (relative output error on held-out rows) are exact up to float32 rounding.
_EXACT = 1e-5
# Bisection steps of the budget search over the per-layer error ε.
_SEARCH_STEPS = 8
# Row counts timed when the layer's rows are not fixed by the bound dims: one decoded token, one prompt.
DEFAULT_ROWS = (1, 128)

SpeedCheck = Callable[[int, int, int], int]


class LowRankFactorizationPass(GraphoptPass, ir.passes.InPlacePass):
    """Factorize large constant-weight MatMul/Gemm/Attention layers into two thinner MatMuls (see the module docstring).

    After a run, ``ranks`` maps each factorized weight to ``(rank, k, n)`` and ``drift``
    is the accuracy on the samples (when there are any). Without samples the factors are plain SVD without repair;
    asking for ``importance="activation"`` (or ``"reconstruction"``) or ``repair=True`` then is a ``ValueError``.

    ``speed`` (injectable for tests) is the per-shape timing cache, a
    ``MeasuredSpeed`` for ``target`` at ``threads`` (None: all cores) by default; ``rows``, the row counts each layer is
    timed at, comes from ``dims`` where they fix the layer's input shape, else
    ``DEFAULT_ROWS``.
    """

    left_as = "left whole"

    def __init__(
        self,
        ratio: float,
        *,
        importance: str | None = None,
        repair: bool | None = None,
        samples: Mapping[str, np.ndarray] | None = None,
        samples_generated: bool = False,
        budget: AccuracyBudget | None = None,
        target: str = "cpu",
        dims: Mapping[str, int] | None = None,
        exclude: Sequence[str] = (),
        speed: MeasuredSpeed | None = None,
        threads: int | None = None,
        original: ir.Model | None = None,
    ) -> None:
        super().__init__()
        self.threads = threads
        # The model the budget bounds (the pipeline's input): after an earlier approximate pass, its drift counts.
        self.original = original
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"low-rank ratio {ratio}: expected a fraction of parameters in (0, 1)")
        if importance not in (None, *IMPORTANCE):
            raise ValueError(f"unknown importance {importance!r} (choose from {', '.join(IMPORTANCE)})")
        self.unfit: str | None = None
        self.samples_generated = samples_generated and samples is not None
        if self.samples_generated:
            self.unfit = unfit_on_generated_samples(
                importance, repair, "whitening or re-fitting factors", "plain SVD without repair"
            )
            importance, repair = "magnitude", False
        if samples is None:
            refuse_without_samples(importance, repair, "whitening or re-fitting factors", "plain SVD without repair")
        real = samples is not None and not self.samples_generated
        self.ratio = ratio
        self.activation_aware = real and importance != "magnitude"
        self.repair = real and repair is not False
        self.samples = samples
        self.budget = budget if budget is not None and budget.bounds_anything else None
        self.target = checked_target(target)
        self.dims = dict(dims or {})
        self.exclude = tuple(exclude)
        self.speed = speed
        self.ranks: dict[str, tuple[int, int, int]] = {}
        self.drift: Drift | None = None
        self._searching = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.ranks, self.drift = {}, None
        if self.unfit is not None:
            self.decline(self.unfit)
            return self.result(model, modified=False)
        if self.ratio < _MIN_SAVING:
            self.decline(f"--lowrank {self.ratio:g} removes less than {_MIN_SAVING:.0%}: not worth a second MatMul")
            return self.result(model, modified=False)
        if self.target == "cuda" and self.speed is None and (reason := cuda_unavailable_reason()) is not None:
            self.decline(
                "--target cuda: a layer is factorized only where it is measured faster on the target, "
                f"and CUDA cannot be timed here: {reason}"
            )
            return self.result(model, modified=False)
        batches = split_samples(self.samples, model=model) if self.samples is not None else []
        aware, repair = self.activation_aware, self.repair
        # Where enough are held out, the rank search weighs and stops on half of them, and the figures (and the
        # pipeline's check) are the other half's: a tolerance bisected on the rows it is reported on meets it there.
        fitted, searched, checked = (
            held_out_parts(batches, model) if batches and (aware or repair) else ([], [], batches)
        )
        if fitted and not len(checked):
            if self.budget is not None:
                # A budget checked on the rows the factors were fitted to is met by fitting them, not the layer
                # (a few sequences' rows are reproduced almost exactly at ranks near their count).
                self.note(
                    "one calibration sample (batch, where the model fixes its batch size): none can be held out "
                    "to check the budget on, so the factors are plain SVD without repair (nothing fitted to the "
                    "samples the budget is checked on); give more samples for activation-aware, repaired factors"
                )
                aware, repair, fitted, checked = False, False, [], batches
            else:
                checked = fitted
        if not len(searched):
            searched = checked
        in_sample = bool(fitted) and checked is fitted
        self._searching = self.budget is not None and bool(batches)
        self._bisected = False  # set by ``_search`` where it chose ranks on ``searched``
        name_nodes(model.graph)
        for pattern in unmatched_patterns(model.graph, self.exclude):  # a typo would keep nothing whole, unsaid
            self.note(f"--exclude '{pattern}' matches no node name or op type of the graph: it keeps nothing whole")
        groups = self._candidates(model.graph)
        if not groups:
            if not self.said_why():
                wanted = "it factors MatMul/Gemm layers with constant 2-D weights"
                self.note(nothing_found_note(model, "layer to factor", wanted, ("MatMul", "Gemm")))
            return self.result(model, modified=False)
        layers = [layer for group in groups for layer in group.layers]
        statistics = _layer_inputs(model, layers, fitted, _SAMPLE_ROWS, covariance=aware) if fitted else None
        evaluation = None
        if self._searching:  # the rank search measures each layer's error on rows nothing was fitted to
            evaluation = _layer_inputs(model, layers, searched, _SAMPLE_ROWS, covariance=False).rows
        # An infinity in a layer's input (calibration holding one: NaN is refused up front), or products past
        # float32's range, leave nothing to fit or measure: the SVD failed ("did not converge") and so did the pass.
        infinite = _not_finite(statistics, evaluation)
        if infinite:
            reason = "its input holds an infinity on the calibration samples (or its squares overflow float32)"
            for group in [group for group in groups if infinite.intersection(group.activations)]:
                groups.remove(group)
                for layer in group.layers:
                    self.refuse(layer.node.op_type, reason)
            if not groups:
                return self.result(model, modified=False)
        for group in groups:
            group.decompose(statistics if aware else None, evaluation, searched=self._searching)
        rows = statistics.rows if statistics is not None and repair else {}
        for group in groups:
            group.origins = statistics.origins if statistics is not None else {}
        if not aware:
            self.note(
                "plain SVD of the weights (no --calibration data, --importance magnitude, or too few samples): "
                "not activation-aware, give calibration data to factor in the metric of the layers' inputs"
            )
        reference = budget_references(model, checked) if len(checked) else None
        if note := left_out_note(reference):
            self.note(note)
        ranks: dict[str, int | None] = {group.key: group.floor for group in groups}
        if self.budget is not None and not batches:
            self.note("no sample inputs: the budget was not searched")
        search_summary = None
        if self._searching:
            # The budget bounds the whole model against the pipeline's input, as the pipeline's own check does.
            if self.original is not None:
                bound = budget_references(self.original, searched)
            else:
                bound = reference if searched is checked else budget_references(model, searched)
            ranks, search_summary = self._search(model, groups, rows, searched, bound, repair)
            if not any(rank is not None for rank in ranks.values()):
                self.note(f"no ranks meet {self.budget.describe()}: nothing factorized")
                return self.result(model, modified=False)
        ranks = self._confirm_speed(groups, ranks)
        if search_summary is not None:
            kept = sum(rank is not None for rank in ranks.values())
            self.note(f"budget {self.budget.describe()}: {search_summary} ({kept} of {len(groups)} weights factorized)")
        if not any(rank is not None for rank in ranks.values()):
            return self.result(model, modified=False)
        source = model.clone()
        before, stored = count_parameters(model), initializer_bytes(model)
        by_hand = any(dequantized_weight(layer.source) is not None for group in groups for layer in group.layers)
        decisions = self._factorize(model, groups, ranks, rows, repair=repair)
        self._report(decisions)
        summary = f"{len(decisions)} weights factorized, parameters {before:,} → {count_parameters(model):,}"
        where = ""
        repaired = any(decision.bias_change is not None for decision in decisions)
        if reference is not None:
            where = _described(
                in_sample,
                fitted,
                checked,
                model,
                searched_caveat(searched, checked, model, chose=self._bisected, searching=self._searching),
                split=searched is not checked,
            )
            self.drift = self._drift(model, checked, reference)
            summary += f"; {self.drift}" + (" after repair" if repaired else "") + where
            summary += " on generated inputs" if self.samples_generated else ""
            if not len(fitted):  # plain SVD: ranks bisected on every sample meet the budget on them by the search
                summary += searched_caveat(checked, checked, model, chose=self._bisected, held_out=False)
        self.note(summary)
        if by_hand and initializer_bytes(model) > stored:  # its factors are float32 (an int8 256×256: 64 → 128 kB)
            self.note(written_in_float_note(stored, initializer_bytes(model)))
        outcomes = set().union(*(decision.group.repair_outcome for decision in decisions))
        if repair and not repaired and "tried" in outcomes:
            self.note("repair: no re-fit lowered a layer's error on calibration samples it was not fitted to by 2 %")
        elif repair and not repaired and "few" in outcomes:
            self.note(
                "repair: not tried, fewer than 5 fitted calibration samples (a re-fit must beat the factors on "
                "samples it was not fitted to)"
            )
        if repaired and reference is not None:
            unrepaired = source.clone()
            self._factorize(unrepaired, groups, ranks, rows, repair=False)
            unrepaired_drift = self._drift(unrepaired, checked, reference)
            self.note(f"without repair: {unrepaired_drift}{where}")
        held_out = bool(fitted) and not in_sample and (aware or repair)
        # One sample: the factors were fitted to the rows the figure is on; the report's ``accuracy_on`` says so too.
        fit = "the factors were fitted to (none held out: an optimistic figure)" if in_sample else ""
        twin = self._twin(source, decisions)
        return self.result(model, modified=True, twin=twin, fitted_to_samples=held_out, fitted_to_checked=fit)

    def _confirm_speed(self, groups: list[_Group], ranks: Mapping[str, int | None]) -> dict[str, int | None]:
        """The ranks, less those whose factorized layer was not measured faster at every row count it runs at.

        The break-even rank is bisected on the assumption that fewer ranks are faster;
        kernels do not always agree (and a busy machine blurs a comparison), so the rank a
        layer gets is timed itself before it is written, and the report shows that figure.
        """
        confirmed = dict(ranks)
        for group in groups:
            rank = ranks.get(group.key)
            if rank is None or rank == group.floor:  # the floor was timed in ``_group``
                continue
            slower = self._slower(*group.shape, rank, group.rows)
            if slower is not None:
                confirmed[group.key] = None
                for layer in group.layers:
                    self.refuse(layer.node.op_type, slower)
        return confirmed

    def _slower(self, k: int, n: int, rank: int, rows: Sequence[int]) -> str | None:
        """Why ``[k, n]`` at ``rank`` stays whole: the first row count at which it was not measured faster."""
        for m in rows:
            ratio = self.speed.ratio(k, n, rank, m)
            if not ratio <= FASTER_BELOW:
                return (
                    f"rank {rank} of {k}×{n} measured no faster on {self.target} at {m} row{'s' if m > 1 else ''} "
                    f"({ratio:.2f}x the whole MatMul)"
                )
        return None

    # -- which layers ---------------------------------------------------------------------------------

    def _candidates(self, graph: ir.Graph) -> list[_Group]:
        """The weights worth factorizing at ``ratio``, grouped by weight (tied readers together)."""
        layers, refused = find_layers(graph, ("matmul", "gemm", "attention"))
        for node, reason in refused.items():
            self.refuse(node.op_type, reason)
        by_weight: dict[int, list[Layer]] = {}
        for layer in layers:
            by_weight.setdefault(id(layer.node.inputs[1]), []).append(layer)
        groups = []
        for readers in by_weight.values():
            group_or_reason = self._group(readers)
            if isinstance(group_or_reason, str):
                for layer in readers:
                    self.refuse(layer.node.op_type, group_or_reason)
            else:
                groups.append(group_or_reason)
        return groups

    def _group(self, readers: list[Layer]) -> _Group | str:
        first = readers[0]
        weight_value = first.node.inputs[1]
        k, n = first.weight.shape
        if any(excluded(layer, self.exclude) for layer in readers):
            return "matched by an exclude pattern"
        if any(layer.transposed for layer in readers):
            # Transpose(table): a tied LM head; its factors would sit beside the table.
            return tied_weight_reason(first) or "its weight is read through a Transpose"
        layer_uses = {(id(layer.node), 1) for layer in readers}
        other = [user for user, index in weight_value.uses() if (id(user), index) not in layer_uses]
        if other or weight_value.is_graph_output():
            what = other[0].op_type if other else "a graph output"
            return f"its weight is also read by {what}: the weight would stay beside its factors"
        if len({_transposed(layer.node) for layer in readers}) > 1:
            return "its weight is read transposed by some layers and not by others"
        if k * n < _MIN_PARAMETERS:
            return f"too small to pay ({k}×{n} < {_MIN_PARAMETERS:,} weights)"
        floor = int(math.floor((1.0 - self.ratio) * k * n / (k + n)))
        if floor < 1:
            return f"--lowrank {self.ratio:g} leaves no rank for {k}×{n}"
        pays = min(parameter_limit(k, n), int(math.floor((1.0 - _MIN_SAVING) * k * n / (k + n))))
        timed = self._rows(readers)
        speed = self.speed if self.speed is not None else MeasuredSpeed(self.target, self.threads)
        self.speed = speed
        slower = self._slower(k, n, floor, timed)
        if slower is not None:
            return slower
        if self._searching:  # ranks above the floor are searched up to the largest one that measured faster
            pays = min([pays, *(max(speed.break_even(k, n, m), floor) for m in timed)])
        key = weight_value.name or first.name
        return _Group(readers, key, [layer.activation.name for layer in readers], floor, max(pays, floor), timed)

    def _rows(self, readers: list[Layer]) -> tuple[int, ...]:
        """The row counts the layers run at: fixed by their input shapes and ``dims``, else ``DEFAULT_ROWS``."""
        counts = set()
        for layer in readers:
            shape = layer.activation.shape
            if shape is None or len(shape) < 2:
                return DEFAULT_ROWS
            count = 1
            for dim in list(shape)[:-1]:
                size = dim if isinstance(dim, int) else self.dims.get(str(dim))
                if size is None:
                    return DEFAULT_ROWS
                count *= size
            counts.add(count)
        return tuple(sorted(counts))

    # -- ranks ----------------------------------------------------------------------------------------

    def _search(self, model, groups: list[_Group], rows, batches, reference, repair) -> tuple[dict, str]:
        """Ranks that meet the budget (each layer's smallest rank within one error ε, ε bisected on log
        scale), and how they were found, for the report."""
        ranks = {group.key: group.floor for group in groups}
        drift = self._trial(model, groups, ranks, rows, batches, reference, repair)
        if self.budget.met(drift):
            return ranks, f"met at the largest ratio asked, {self.ratio:g}"
        self._bisected = True
        high = max(group.error(group.floor) for group in groups)  # every layer at the floor: not met
        low = high * 1e-4
        best: dict[str, int | None] = {group.key: None for group in groups}
        best_error = 0.0
        for _ in range(_SEARCH_STEPS):
            middle = math.sqrt(low * high)
            trial = {group.key: group.rank_within(middle) for group in groups}
            if not any(rank is not None for rank in trial.values()):
                low = middle
                continue
            drift = self._trial(model, groups, trial, rows, batches, reference, repair)
            if self.budget.met(drift):
                low, best, best_error = middle, trial, middle
            else:
                high = middle
        for group in groups:
            if best[group.key] is None:
                for layer in group.layers:
                    self.refuse(layer.node.op_type, "kept whole to meet the accuracy budget")
        return best, f"per-layer output error up to {best_error:.3g}, ranks by each layer's spectrum"

    def _trial(self, model, groups, ranks, rows, batches, reference, repair) -> Drift:
        trial = model.clone()
        self._factorize(trial, groups, ranks, rows, repair=repair)
        return self._drift(trial, batches, reference)

    def _drift(self, model: ir.Model, batches, reference) -> Drift:
        """``model``'s drift from ``reference`` on ``batches``, leaving out the positions the padding masks hide in the
        pipeline's input (``original``, where given), as the pipeline's own check does: a decoder whose attention was
        fused into GroupQueryAttention no longer shows which of its logits are padding (``optimizer.padding``), and
        the factors, fitted to real rows alone, were counted at left-padded positions."""
        return drift_of(model, batches, reference, layout=self.original)

    # -- the rewrite ----------------------------------------------------------------------------------

    def _factorize(
        self, model: ir.Model, groups: list[_Group], ranks: Mapping[str, int | None], rows, *, repair: bool
    ) -> list[_Decision]:
        """Rewrite each group at its rank in ``model``; what was decided, per group."""
        graph = model.graph
        decisions = []
        # New nodes and values are named after the layer: unique, as ONNX Runtime requires (a second run on the
        # result, or a model factorized before, already holds ``<layer>_low_rank`` and ``<layer>.low_rank``).
        taken = {node.name for node in ir.traversal.RecursiveGraphIterator(graph) if node.name}
        names = {v.name for n in ir.traversal.RecursiveGraphIterator(graph) for v in (*n.inputs, *n.outputs) if v}
        names |= {v.name for v in (*graph.inputs, *graph.initializers.values())}
        for group in groups:
            rank = ranks.get(group.key)
            if rank is None:
                continue
            u, v = group.factors(rank)
            change = None
            if repair and rows:
                v, change = group.repair(u, v, rows)
            decision = _Decision(group, rank, u, v, change)
            _rewrite(graph, decision, taken, names)
            decisions.append(decision)
        remove_dead_nodes(model)  # the factorized weights, and biases replaced by repaired ones
        return decisions

    def _twin(self, source: ir.Model, decisions: list[_Decision]) -> Twin:
        """``source`` with each factorized weight replaced by ``U V`` and each bias change added after its layer (a
        Gemm's or an Attention's to its bias input, where the rewrite stores it: the layer's output, which the next
        layer may read as a checkpoint, holds the same values in both).

        Built on the pass's input from the declared factors, without the rewrite: a
        realization that wires the factors wrongly (swapped, transposed, the bias on
        the wrong side) computes something else than this.
        """
        graph = source.graph
        reads: dict[str, None] = {}  # the factorized layers' inputs: where the check may cut a deep model
        for decision in decisions:
            product = (decision.u.astype(np.float64) @ decision.v.astype(np.float64)).astype(np.float32)
            for layer in decision.group.layers:
                node = graph.node(layer.name)
                if node.inputs[0] is not None:
                    reads[node.inputs[0].name] = None
                weight = product.T if _transposed(node) else product
                node.replace_input_with(1, add_initializer(graph, f"{node.inputs[1].name}.low_rank", weight))
                if decision.bias_change is None:
                    continue
                if layer.kind == "attention":  # the QKV bias is inside the node
                    bias = (_constant(node.inputs[2]) + decision.bias_change).astype(np.float32)
                    node.replace_input_with(2, add_initializer(graph, f"{node.name}.twin_bias", bias))
                # A Gemm's into C, where the rewrite stores it (``_store_bias``): added after the Gemm, its output
                # (the next layer's input, a checkpoint) would hold the old bias here and the new one in the result.
                elif not (layer.kind == "gemm" and fold_into_bias(graph, node, decision.bias_change, "twin_bias")):
                    add_after(graph, node, decision.bias_change.astype(np.float32), "twin_bias")
        weights = sum(len(d.group.layers) for d in decisions)
        description = f"the input with {len(decisions)} weights ({weights} layers) replaced by their low-rank products"
        if any(d.bias_change is not None for d in decisions):
            description += ", repaired bias changes added"
        return Twin(source, "float32", description, checkpoints=tuple(reads))

    def _report(self, decisions: list[_Decision]) -> None:
        """One note per (shape, rank, row counts timed): the layers, their parameters and the measured speed (layers
        of one shape and rank timed at other rows, one whose rows ``dims`` fix, get a note of their own)."""
        lines: dict[tuple[int, int, int, tuple[int, ...]], list[str]] = {}
        weights: dict[tuple[int, int, int, tuple[int, ...]], int] = {}
        for decision in decisions:
            for layer in decision.group.layers:
                self.done(layer.node.op_type)
            k, n = decision.group.shape
            key = (k, n, decision.rank, decision.group.rows)
            lines.setdefault(key, []).extend(layer.name for layer in decision.group.layers)
            weights[key] = weights.get(key, 0) + 1
            self.ranks[decision.group.key] = (decision.rank, k, n)
        for (k, n, rank, rows), names in lines.items():
            speeds = ", ".join(f"{self.speed.ratio(k, n, rank, m):.2f}x at {m} row{'s' if m > 1 else ''}" for m in rows)
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            # Tied layers share one weight's factors: "each" is per weight, not per layer.
            count = weights[(k, n, rank, rows)]
            shared = ""
            if count < len(names):
                shared = f" ({count} weight{'s' if count > 1 else ''} read by {len(names)} layers)"
            self.note(
                f"rank {rank} of {k}×{n}: {k * n:,} → {rank * (k + n):,} parameters each{shared}, "
                f"measured to take {speeds} of the whole MatMul's time on {self.target}; {len(names)} layers: {shown}"
            )


@dataclass
class _Group:
    """The layers reading one weight, and its decomposition in the metric of their pooled inputs."""

    # The layers' nodes are those of the pass's input, which the rewrite changes: names are taken first.
    layers: list[Layer]
    key: str  # the weight's name
    activations: list[str]  # each layer's input tensor
    floor: int  # the rank at ``ratio``
    cap: int  # the largest rank that still pays (parameters and measured speed)
    rows: tuple[int, ...]  # the row counts it was timed at
    # The decomposition: W ≈ left[:, :r] @ right[:r] with left = L⁻ᵀ P √S and right = √S Qᵀ.
    left: np.ndarray | None = None
    right: np.ndarray | None = None
    spectrum: np.ndarray | None = None  # each rank component's output energy, all of them (``decompose``)
    # Per input tensor, the sample (sequence) each sampled row comes from (``_sample_rows``).
    origins: Mapping[str, np.ndarray] = field(default_factory=dict)
    _repairs: dict = field(default_factory=dict)
    # What the repair found, over the ranks it was asked for: "exact", "few" (samples), "tried".
    repair_outcome: set = field(default_factory=set)

    @property
    def shape(self) -> tuple[int, int]:
        return self.layers[0].weight.shape

    def decompose(
        self, statistics: _Inputs | None, evaluation: Mapping[str, np.ndarray] | None, *, searched: bool
    ) -> None:
        """The SVD of the weight in the metric of its readers' pooled inputs (``statistics``; None: plain SVD).

        Kept up to ``cap`` when ranks are searched, else up to ``floor`` (the factors of a
        large model's every layer at full rank would not fit in memory). ``spectrum`` is
        each rank component's share of the output energy: on the ``evaluation`` rows where
        given (rows nothing was fitted to: the fit's own rows make every rank look better
        than it is), else in the fitted metric.
        """
        weight = self.layers[0].weight.astype(np.float64)
        k = weight.shape[0]
        lower = None
        if statistics is not None:
            count = sum(statistics.count[name] for name in self.activations)
            covariance = sum(statistics.gram[name].astype(np.float64) for name in self.activations) / max(count, 1)
            # Shrunk toward its diagonal by k / (k + rows): a covariance from few rows whitens by the few
            # directions the samples visited and overfits them (MiniLM's attention output projection fitted to
            # 128 rows: held-out output error 0.284 shrunk, 0.329 with a 1 % ridge alone; docs/benchmarks.md).
            shrink = k / (k + count)
            diagonal = np.diag(covariance).copy()
            covariance *= 1.0 - shrink
            covariance[np.diag_indices(k)] += shrink * diagonal + _RIDGE * max(float(diagonal.mean()), 1e-12)
            lower = np.linalg.cholesky(covariance)
        whitened = lower.T @ weight if lower is not None else weight
        p, s, qt = np.linalg.svd(whitened, full_matrices=False)
        keep = self.cap if searched else self.floor
        root = np.sqrt(s[:keep])
        left = p[:, :keep] * root
        if lower is not None:
            left = np.linalg.solve(lower.T, left)  # L⁻ᵀ P √S (a triangular system)
        self.left = left.astype(np.float32)
        self.right = (root[:, None] * qt[:keep]).astype(np.float32)
        self.spectrum = s**2
        present = [name for name in self.activations if evaluation is not None and name in evaluation]
        if present:
            # x W = x L⁻ᵀ P S Qᵀ with orthonormal rows of Qᵀ: component i carries s_i² |x L⁻ᵀ pᵢ|² of |x W|².
            x = np.concatenate([evaluation[name] for name in present]).astype(np.float64)
            z = x @ (np.linalg.solve(lower.T, p) if lower is not None else p)
            self.spectrum = s**2 * (z**2).sum(axis=0)

    def error(self, rank: int) -> float:
        """Relative output error of the rank-``rank`` truncation (on the evaluation rows, see ``decompose``)."""
        total = float(self.spectrum.sum())
        return math.sqrt(float(self.spectrum[rank:].sum()) / total) if total > 0 else 0.0

    def rank_within(self, tolerance: float) -> int | None:
        """The smallest rank (at least ``floor``) with error at most ``tolerance``; None if above ``cap``."""
        tail = np.sqrt(np.maximum(np.cumsum(self.spectrum[::-1])[::-1], 0.0) / max(self.spectrum.sum(), 1e-300))
        # tail[r] is the error of keeping r ranks.
        fits = np.nonzero(np.append(tail, 0.0) <= tolerance)[0]
        rank = max(self.floor, int(fits[0]) if len(fits) else len(tail))
        return rank if rank <= self.cap else None

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        return np.ascontiguousarray(self.left[:, :rank]), np.ascontiguousarray(self.right[:rank])

    def repair(
        self, u: np.ndarray, v: np.ndarray, rows: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``V`` and a bias change re-fitted to ``x W`` on the samples with ``U`` fixed, if that helps on held-out rows.

        Every reader's rows count (tied weights share ``V`` and the bias change).
        Without any reader's rows, the factors stay as they are.
        """
        rank = u.shape[1]
        if rank in self._repairs:
            return self._repairs[rank]
        present = [name for name in self.activations if name in rows and name in self.origins]
        if not present:
            return v, None
        x = np.concatenate([rows[name] for name in present]).astype(np.float64)
        folds = np.concatenate([self.origins[name] for name in present]) % _REPAIR_BATCHES
        target = x @ self.layers[0].weight.astype(np.float64)
        projected = x @ u.astype(np.float64)
        prior = np.concatenate([v.astype(np.float64), np.zeros((1, v.shape[1]))])
        unrepaired = float(((projected @ prior[:-1] - target) ** 2).sum())
        if unrepaired <= _EXACT**2 * float((target**2).sum()):
            self.repair_outcome.add("exact")
            self._repairs[rank] = (v, None)  # exact already (a rank-deficient weight): nothing to repair
            return self._repairs[rank]
        # The shared streamed fit (pruning's): folds of whole samples are its batches, one in five held out.
        fit = GramFit(rank, v.shape[1])
        for fold in range(_REPAIR_BATCHES):
            chosen = folds == fold
            if chosen.any():
                fit.add(projected[chosen], target[chosen])
        if fit.batches < 5:  # nothing to hold out: a re-fit could not show it is better than none
            self.repair_outcome.add("few")
            self._repairs[rank] = (v, None)
            return self._repairs[rank]
        self.repair_outcome.add("tried")
        solution, unchanged = fit.solve(prior, gain=_REPAIR_GAIN)
        if unchanged:
            self._repairs[rank] = (v, None)
        else:
            self._repairs[rank] = (solution[:-1].astype(np.float32), solution[-1].astype(np.float32))
        return self._repairs[rank]


@dataclass
class _Inputs:
    """What a pass knows of its layers' inputs, per input tensor: sampled rows and the sample each comes
    from, and (with ``covariance``) ``XᵀX`` and the row count over every row."""

    rows: dict[str, np.ndarray]
    origins: dict[str, np.ndarray]
    gram: dict[str, np.ndarray]
    count: dict[str, int]


def _layer_inputs(
    model: ir.Model,
    layers: Sequence[Layer],
    batches: Sequence[Mapping[str, np.ndarray]],
    rows: int,
    *,
    covariance: bool,
) -> _Inputs:
    """Each layer's input on ``batches``, padded positions left out.

    Up to ``rows`` rows ``[rows, K]`` of each input (a seeded random subset of each batch's
    rows, as ``passes.quantization._base.sample_layer_inputs`` draws them) and, per row, the
    sample it comes from (its index along the batch axis, counted over all batches; a 2-D
    input's every row is a sample); with ``covariance``, ``XᵀX`` (float32) over every row.
    A row is a padded position where the batch holds one padding mask (``optimizer.padding``;
    not an encoder's) that is 0 there (``_real_rows``). A flattened ``[batch × sequence, K]``
    input's rows are matched to the batch's samples, each sequence one sample.
    """
    names = list(dict.fromkeys(layer.activation.name for layer in layers))
    rng = np.random.default_rng(0)
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    origins: dict[str, list[np.ndarray]] = {name: [] for name in names}
    gram: dict[str, np.ndarray] = {}
    count = dict.fromkeys(names, 0)
    seen = dict.fromkeys(names, 0)
    share = max(1, rows // max(len(batches), 1))
    holds = holds_samples(model)
    # A decoder's new positions are its mask's last columns; elsewhere a mask covers the input's own positions
    # (an encoder's mask read by the decoder of an encoder-decoder is not its padding).
    cached = bool(cache_outputs(model))
    masks: list[str] | None = None
    with value_collector(model, names) as collect:  # each batch read once (samples on disk stay there)
        for batch in batches:
            if masks is None:
                masks = [name for name in mask_inputs(model, batch) if "encoder" not in name.lower()]
            mask = ~padded_at(batch, masks[0]) if len(masks) == 1 else None  # where it attends
            in_batch = samples_in(batch, holds)
            for name, array in collect(batch).items():
                shape = np.shape(array)
                flat = np.asarray(array, dtype=np.float32).reshape(-1, shape[-1])
                samples = shape[0] if len(shape) >= 3 and shape[0] else len(flat)
                if len(shape) == 2 and len(flat) > in_batch and len(flat) % in_batch == 0:
                    samples = in_batch  # [batch × sequence, K]: the rows of one sequence are one sample
                sample = np.repeat(np.arange(samples), max(1, len(flat) // samples))[: len(flat)]
                real = _real_rows(shape, mask, cached=cached)
                if real is not None:
                    flat, sample = flat[real], sample[real]
                if covariance:
                    with np.errstate(over="ignore", invalid="ignore"):  # an infinity is refused by ``_not_finite``
                        product = flat.T @ flat
                        gram[name] = gram[name] + product if name in gram else product
                    count[name] += len(flat)
                chosen = rng.choice(len(flat), min(share, len(flat)), replace=False)
                collected[name].append(flat[chosen])
                origins[name].append(seen[name] + sample[chosen])
                seen[name] += samples
    return _Inputs(
        {name: np.concatenate(parts) for name, parts in collected.items() if parts},
        {name: np.concatenate(parts) for name, parts in origins.items() if parts},
        gram,
        count,
    )


def _not_finite(statistics: _Inputs | None, evaluation: Mapping[str, np.ndarray] | None) -> set[str]:
    """The input tensors whose sampled rows, ``XᵀX`` or evaluation rows hold a value that is not finite."""
    parts = [] if statistics is None else [*statistics.rows.items(), *statistics.gram.items()]
    parts += list((evaluation or {}).items())
    return {name for name, array in parts if not np.isfinite(array).all()}


def _real_rows(shape: tuple[int, ...], mask: np.ndarray | None, *, cached: bool = False) -> np.ndarray | None:
    """Which rows of a ``[batch, S, K]`` (or flattened ``[batch × S, K]``) layer input are real tokens under the
    padding ``mask [batch, T]``: every position where ``S == T``; in a decoder with a key/value cache
    (``cached``), where ``T = past + S``, its last ``S``. None where the shapes do not line up that way (every
    row then counts: a pooled ``[batch, 1, K]`` token is not the mask's last position)."""
    if mask is None or mask.ndim != 2:
        return None
    batch, total = mask.shape
    length = shape[1] if len(shape) == 3 and shape[0] == batch else None
    if len(shape) == 2 and shape[0] % batch == 0 and shape[0] > batch:
        length = shape[0] // batch
    if length is None or not (length == total or (cached and 0 < length < total)):
        return None
    return mask[:, total - length :].reshape(-1) != 0


def _described(
    in_sample: bool, fitted: Sequence, checked: Sequence, model: ir.Model, searched: str = "", *, split: bool = False
) -> str:
    """Where the pass's own accuracy figures were measured; ``searched`` (``searched_caveat``) says how they stand
    to the budget search's rows, and ``split`` that ``checked`` is half the held-out samples (``held_out_parts``):
    one in twice ``HOLD_OUT_EVERY``."""
    if in_sample:
        return " on the one calibration sample the factors were fitted to (none held out: an optimistic figure)"
    if len(fitted):
        held = held_out_samples(checked, model).replace("held-out sample", "held-out calibration sample")
        caveat = few_held_out(checked, model)
        return (
            f" on {held} (one in {2 * HOLD_OUT_EVERY if split else HOLD_OUT_EVERY}, at least one; not fitted to)"
            f"{searched}"
            f"{f'; {caveat}' if caveat else ''}"
        )
    return ""


@dataclass
class _Decision:
    """One weight factorized: its group, rank, factors and the bias change its readers get (None: none)."""

    group: _Group
    rank: int
    u: np.ndarray
    v: np.ndarray
    bias_change: np.ndarray | None


def _rewrite(graph: ir.Graph, decision: _Decision, taken: set[str], names: set[str]) -> None:
    """Each reader reads ``MatMul(x, U)`` and ``V`` in place of ``x`` and ``W``; bias changes go into its bias.

    ``taken`` and ``names`` are the graph's node and value names, which the new node and its output avoid.
    """
    group = decision.group
    transposed = _transposed(graph.node(group.layers[0].name))
    u = add_initializer(graph, f"{group.key}.U", decision.u)
    v = add_initializer(graph, f"{group.key}.V", decision.v.T.copy() if transposed else decision.v)
    for layer in group.layers:
        node = graph.node(layer.name)
        narrow = ir.Node("", "MatMul", [node.inputs[0], u], name=unique_name(f"{node.name}_low_rank", taken))
        narrow.outputs[0].name = unique_name(f"{node.name}.low_rank", names)
        narrow.outputs[0].type = node.inputs[0].type
        graph.insert_before(node, narrow)
        node.replace_input_with(0, narrow.outputs[0])
        node.replace_input_with(1, v)
        if decision.bias_change is not None:
            _store_bias(graph, node, layer, decision.bias_change)


def _store_bias(graph: ir.Graph, node: ir.Node, layer: Layer, change: np.ndarray) -> None:
    """Add ``change`` to the layer's bias: a Gemm's C, an Attention's QKV bias, the Add after a MatMul, or a new Add.
    A bias input left empty (``Gemm(x, W, "")``) is one the node has not."""
    kind, weight = layer.kind, layer.weight
    if kind in ("gemm", "attention"):
        slot = 2
        given = len(node.inputs) > slot and node.inputs[slot] is not None
        current = _constant(node.inputs[slot]) if given else None
        if len(node.inputs) <= slot:
            node.resize_inputs(slot + 1)
        if kind == "gemm" and current is None:  # a Gemm without C may state any beta (``find_layers`` takes it)
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        total = change if current is None else current.reshape(-1) + change
        node.replace_input_with(slot, add_initializer(graph, f"{node.name}.repaired_bias", total.astype(np.float32)))
        return
    found = bias_add(Layer(node, "matmul", weight, None))
    if found is not None:
        bias, add, index = found
        shape = add.inputs[index].shape
        total = (bias + change).astype(np.float32).reshape(list(shape) if shape is not None else (-1,))
        add.replace_input_with(index, add_initializer(graph, f"{add.name}.repaired_bias", total))
        return
    add_after(graph, node, change.astype(np.float32), "bias_change")


def _constant(value: ir.Value | None) -> np.ndarray:
    array = weight_array(value)  # a bias stored int8 and dequantized by hand is one (``find_layers`` takes it)
    if array is None:
        raise ValueError(f"{value.name if value is not None else 'a missing input'} is not a constant")
    return array.astype(np.float64)


def _transposed(node: ir.Node) -> bool:
    return node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0))

"""The shared driver of the int8 passes: layer selection, the accuracy-budget search, and notes for the report.

A subclass says which layer kinds it handles (``kinds``) and how to rewrite one
layer (``quantize_layer``); this base decides *which* layers to rewrite:

- layers matching an ``exclude`` glob, and layers whose result is a graph output
  (an LM head or classifier: int8 error there reaches the answer undamped), stay float;
- with an accuracy budget and sample inputs, the search buys accuracy where it costs
  least latency. Each layer has *schemes*: the pass's default, cheaper fixes a subclass
  offers (``alternatives``: per-row activation scales, SmoothQuant for that layer,
  8-bit weights, int8 weights with float activations, int8 under int4), and float.
  Each scheme's accuracy cost is measured per layer (that layer alone in that scheme,
  the rest float; a local estimate beyond ``_EXHAUSTIVE_LAYERS``) and its latency is
  measured on this machine at the layer's shape (``_layer_speed``, cached per machine):
  at the rows one sample gives it, and for a decoder with a key/value cache as one
  generation (those rows as a prefill, then ``GENERATED_TOKENS`` one-row steps).
  A greedy path then takes, step by step, the change with the most accuracy gained per
  second of latency given back (a change that costs nothing comes first), and the
  shortest prefix of that path whose whole model meets the budget is chosen (prefixes
  tried in order for few layers, by bisection for many). The configurations measured
  on the way are the *frontier* (``frontier``, and one note each), so a user can pick
  another point.

Every modified result carries its twin (``optimizer.protocol.Twin``, kind ``"int8"``):
the input, after SmoothQuant's rescaling where it ran and its Gemms written as the kernels
take them (``passes._layers.canonical_gemms``; both exact float rewrites, which the pipeline
holds to the input through the twin's ``source``), with each quantized layer's weight
replaced by its dequantized int8 values and its input quantized and dequantized in
float, as ``twin_layer`` declares. It is built from a copy taken before any layer is
rewritten, by different code than ``quantize_layer``.
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnxscript import version_converter

from optimizer.accuracy import AccuracyBudget, Drift
from optimizer.domains import MS_DOMAIN
from optimizer.draws import budget_references, left_out_note
from optimizer.options import DEFAULT_BUDGET_DECODE_STEPS
from optimizer.padding import batch_padding, cache_outputs, token_rows, unpadded_rows
from optimizer.progress import task, track
from optimizer.protocol import Twin
from optimizer.runtime import cuda_unavailable_reason, drift_of, stream_values, value_collector
from optimizer.samples import (
    few_held_out,
    fixed_batch_size,
    fixes_batch,
    held_out_parts,
    held_out_samples,
    holds_samples,
    samples_in,
    searched_caveat,
    split_samples,
)
from passes._layers import (
    Layer,
    canonical_gemms,
    excluded,
    feeds_graph_output,
    find_layers,
    float_weighted,
    gemm_forms_wanted,
    name_nodes,
    restore_gemms,
    tied_weight_reason,
    unmatched_patterns,
)
from passes._pass import GraphoptPass, checked_target
from passes._utils import declared_shapes_kept, nothing_found_note, remove_dead_nodes
from passes.quantization import smoothing
from passes.quantization._int8 import ROW_LEVELS, ROW_SCALE_FLOOR, activation_parameters, quantize_weight
from passes.quantization._layer_speed import FLOAT, ConvShape, LayerShape, LayerSpeeds, layer_probe, probe_names
from passes.quantization._twin import Int8Twin

# Up to this many layers, each layer's sensitivity is measured on the whole model and the
# budget searched one layer at a time; beyond, both would take hours on a large model.
_EXHAUSTIVE_LAYERS = 24
# Rows of each layer's input kept for the local sensitivity estimate.
_LOCAL_ROWS = 1024
# SmoothQuant's migration strength when the budget offers it for one layer.
_LAYER_SMOOTH_ALPHA = 0.5
# Tokens a decoder with a key/value cache is taken to generate after its prompt when the budget weighs
# its layers' latency (``graphopt compare --generate``'s default --new-tokens).
GENERATED_TOKENS = DEFAULT_BUDGET_DECODE_STEPS  # --budget-decode-steps unless given
# What each scheme is called in notes.
SCHEME_LABELS = {
    "float": "float",
    "int8": "int8",
    "int4": "int4",
    "int4-float-input": "int4 with float inputs (accuracy_level 0)",
    "row": "per-row activation scales",
    "smooth": "SmoothQuant",
    "w8": "8-bit weights",
    "weight-only": "int8 weights via DequantizeLinear (MatMulNBits 8-bit in ONNX Runtime)",
}


@dataclass(frozen=True)
class FrontierPoint:
    """One configuration the budget search measured: the layers not in the pass's default scheme, with
    the scheme each got (``"float"`` for kept float), the whole model's drift on the samples, and the
    estimated time of the quantizable layers (the sum of their measured one-layer times), in seconds."""

    changes: tuple[tuple[str, str], ...]
    drift: Drift
    seconds: float

    def describe(self, float_seconds: float, default_seconds: float, measured: bool) -> str:
        """``2 float (a, b), 1 per-row activation scales (c): cosine 0.9961, ..., layers 4.2 ms (...)``."""
        groups: dict[str, list[str]] = {}
        for name, scheme in self.changes:
            groups.setdefault(scheme, []).append(name)
        parts = []
        for scheme, names in groups.items():
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            parts.append(f"{len(names)} {SCHEME_LABELS.get(scheme, scheme)} ({shown})")
        what = "; ".join(parts) or "every layer in the default scheme"
        saving = float_seconds - default_seconds
        if measured:
            if self.seconds < default_seconds:
                # Layers whose default scheme is slower than float, kept float: faster than the default itself.
                share = f"{(default_seconds - self.seconds) * 1e3:.3g} ms less than the default"
                if saving <= 0 and self.seconds < float_seconds:
                    share += f" and {(float_seconds - self.seconds) * 1e3:.3g} ms less than float"
            elif saving > 0 and self.seconds > float_seconds:  # a slower scheme than float's taken for accuracy
                share = f"{(self.seconds - float_seconds) * 1e3:.3g} ms more than float"
            elif saving > 0:
                share = f"{(float_seconds - self.seconds) / saving:.0%} of the saving kept"
            else:  # the default scheme is no faster than float here: there is no saving to keep
                share = "the default scheme saves nothing here"
            cost = (
                f"layers {self.seconds * 1e3:.3g} ms (float {float_seconds * 1e3:.3g}, "
                f"default {default_seconds * 1e3:.3g}: {share})"
            )
        else:
            cost = f"{round(self.seconds)} layers' worth of latency given back"
        return f"{what}: {self.drift}, {cost}"


class QuantizationPass(GraphoptPass, ir.passes.InPlacePass):
    """Base of the int8 passes. After a run, ``quantized`` and ``kept_float`` name the layers,
    ``schemes`` says how each quantized layer was written where the budget chose other than the
    default, ``frontier`` holds the configurations the budget search measured and ``drift`` the
    accuracy reached (when samples were given); the result's notes say it in words and its
    refusals say why layers stayed float. A layer whose weight constant other nodes also read
    (an LM head tied to the embedding ``Gather``, through ``Transpose(table)``) stays float
    unless the pass shares its quantized weight with them (``tied_weight_refusal``): a
    quantized copy beside the float table would store it twice.

    ``layer_speeds`` times the layers for the budget (by default on this machine, cached per
    shape in the user's cache folder; tests inject a measurement), on ``timing_target``'s
    device at ``timing_threads`` intra-op threads (None: all cores). A decoder with a
    key/value cache is timed as a generation: the samples' tokens as a prefill, then
    ``decode_steps`` one-token steps (None: ``GENERATED_TOKENS``; 0: the prefill alone).
    """

    kinds: tuple[str, ...] = ()
    left_as = "stay float"
    # What a quantized layer is called in the notes ("int4" for weight-only 4-bit).
    precision = "int8"
    # Whether the pass rewrites MatMul and Gemm layers computing in float16 too (``find_layers(float16=True)``).
    float16_layers = False
    # How the twin quantizes each layer's input, for its description.
    twin_inputs = ""
    # The scheme every chosen layer gets unless the budget picks another.
    default_scheme = "int8"
    # Whether the budget times this pass's layers: a probe of copies of each layer's kernel written by the pass
    # (``_layer_model``) must stand for the layer's (``untimed_reason`` names the layers it cannot time).
    measures_speed = False
    # Whether a budgeted result must also run faster than the float model, timed whole (``_if_faster``): where
    # the conversions between int8 and float layers, which no layer's own time holds, can outweigh the saving.
    confirms_speed = False

    def __init__(
        self,
        *,
        per_channel: bool = True,
        reduce_range: bool = True,
        exclude: Sequence[str] = (),
        quantize_outputs: bool = False,
        budget: AccuracyBudget | None = None,
        samples: Mapping[str, np.ndarray] | None = None,
        smooth_alpha: float | None = None,
        layer_speeds: LayerSpeeds | None = None,
        timing_threads: int | None = None,
        timing_target: str = "cpu",
        weight_range_note: str | None = None,
        decode_steps: int | None = None,
        original: ir.Model | None = None,
    ) -> None:
        super().__init__()
        self.per_channel = per_channel
        self.reduce_range = reduce_range
        # Why the weights are 7- or 8-bit (optimizer.cpu_features), shown once layers are quantized.
        self.weight_range_note = weight_range_note
        self.exclude = tuple(exclude)
        self.quantize_outputs = quantize_outputs
        self.budget = budget if budget is not None and budget.bounds_anything else None
        self.samples = samples
        self.smooth_alpha = smooth_alpha
        self.layer_speeds = layer_speeds
        self.timing_threads = timing_threads
        self.timing_target = checked_target(timing_target)
        if decode_steps is not None and (
            not isinstance(decode_steps, int) or isinstance(decode_steps, bool) or decode_steps < 0
        ):
            raise ValueError(f"decode_steps {decode_steps!r}: expected a whole number of steps, 0 or more")
        self.decode_steps = decode_steps
        # The model the budget is held against (the pipeline's input): where an earlier approximate pass (pruning,
        # low-rank) changed the model given here, its drift counts too, as the pipeline's own check counts it.
        self.original = original
        self.quantized: list[str] = []
        self.kept_float: list[str] = []
        # Layers the pass has no form for (refused for their form, not their weight): float, counted beside kept_float.
        self.float_by_form: list[str] = []
        self.schemes: dict[str, str] = {}
        self.frontier: list[FrontierPoint] = []
        self.drift: Drift | None = None
        self._float: ir.Model | None = None
        self._batches: Sequence[Mapping[str, np.ndarray]] = []
        # The samples the budget search stops on, and how many points it measured there (``_trial``).
        self._searched_on: Sequence[Mapping[str, np.ndarray]] = []
        self._search_trials = 0
        # The layers this run may change (not matched by --exclude, not a model output, no tied weight).
        self._changeable: frozenset[str] = frozenset()
        # How many Gemms ``canonical_gemms`` wrote out before layers were found: the twin then approximates that
        # rewrite of the input, which the pipeline holds to the input as an exact pass (``Twin.source``).
        self._gemms_written = 0

    def _find_layers(self, graph: ir.Graph) -> tuple[list[Layer], dict[ir.Node, str]]:
        """``find_layers`` of ``graph`` for this pass's ``kinds``, float16 ones too where it takes them."""
        return find_layers(graph, self.kinds, float16=self.float16_layers)

    def unsupported_layers(self, graph: ir.Graph) -> dict[ir.Node, str]:
        """Nodes of ``graph`` outside ``kinds`` that the pass has no form for, with why: refused, and counted float
        where they are layers (``float_weighted``). None by default."""
        return {}

    @abc.abstractmethod
    def quantize_layer(self, graph: ir.Graph, layer: Layer) -> None:
        """Rewrite one layer of ``graph`` into its reduced form (``scheme(layer)`` says which)."""

    @abc.abstractmethod
    def twin_layer(self, twin: Int8Twin, layer: Layer) -> None:
        """Write into ``twin`` (a float copy) the arithmetic ``quantize_layer`` claims for ``layer``, in float ops."""

    def begin(self, layers: Sequence[Layer]) -> None:  # noqa: B027
        """Hook run before ``layers`` of a fresh model copy are rewritten (to reset per-graph caches)."""

    def prepare(self, model: ir.Model, layers: Sequence[Layer], batches: Sequence[Mapping[str, np.ndarray]]) -> None:  # noqa: B027
        """Hook run once before any rewrite, on the float model (static quantization calibrates here)."""

    def scheme(self, layer: Layer) -> str:
        """How ``layer`` is written: the pass's default unless the budget chose an alternative."""
        return self.schemes.get(layer.name, self.default_scheme)

    def tied_weight_refusal(self, layer: Layer) -> str | None:
        """Why ``layer`` stays float because its weight is tied (``passes._layers.tied_weight_reason``),
        or None. A pass that can share the quantized weight with the other readers overrides this."""
        return tied_weight_reason(layer)

    def layer_refusal(self, layer: Layer) -> str | None:
        """Why this pass has no form for ``layer``'s weight (it stays float, counted), or None. None here."""
        return None

    def alternatives(self, layer: Layer) -> tuple[str, ...]:
        """Schemes besides the default and float that this pass can write for ``layer`` (keys of
        ``SCHEME_LABELS``), for the budget to try before it gives the layer up. None here."""
        return ()

    def speed_form(self, scheme: str, layer: Layer | None = None) -> str:
        """The kernel ``scheme`` runs (for ``layer``, where its form depends on the layer), as timed and
        cached: schemes that only change values (SmoothQuant's rescaled weights, 8-bit instead of 7-bit
        weights) run the default's."""
        if scheme in ("smooth", "w8"):
            scheme = self.default_scheme
        return f"{type(self).__name__} {scheme}"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Quantize the layers of ``model`` in place. A ``Gemm`` with ``transA``, ``alpha``, a ``beta`` on its C or a C
        that is no bias of its features (a full ``[M, N]``) is first written in a form the kernels take
        (``passes._layers.canonical_gemms``: a Transpose before, alpha in the weight, C added after), and put back as
        it was where it stays float (``restore_gemms``), so a float layer keeps its one kernel."""
        name_nodes(model.graph)
        half = self.float16_layers
        # On the graph as given: the Transpose, Mul and Add written below are no node a user's pattern meant.
        unmatched = unmatched_patterns(model.graph, self.exclude)
        before = model.clone() if gemm_forms_wanted(model.graph, float16=half) else None
        forms = canonical_gemms(model.graph, float16=half) if before is not None else []
        self._gemms_written = len(forms)
        result = self._quantize_model(model, unmatched)
        if not forms:
            return result
        if not result.modified:  # a result that says it changed nothing leaves the model as it was
            model.graph = before.graph
        elif restore_gemms(model.graph, forms):
            remove_dead_nodes(model)
        return result

    def _quantize_model(self, model: ir.Model, unmatched: Sequence[str]) -> ir.passes.PassResult:
        self.quantized, self.kept_float, self.drift, self.schemes, self.frontier = [], [], None, {}, []
        self.float_by_form = []
        layers, refused = self._find_layers(model.graph)
        for node, reason in {**refused, **self.unsupported_layers(model.graph)}.items():
            self.refuse(node.op_type, reason)
            if float_weighted(node):
                self.float_by_form.append(node.name or "")
        for pattern in unmatched:
            self.note(f"--exclude '{pattern}' matches no node name or op type of the graph: it keeps nothing float")
        chosen = []
        for layer in layers:
            if excluded(layer, self.exclude):
                self.kept_float.append(layer.name)
                self.refuse(layer.node.op_type, "matched by --exclude")
            elif not self.quantize_outputs and feeds_graph_output(layer):
                self.kept_float.append(layer.name)
                self.refuse(layer.node.op_type, "its result is a model output (--quantize-outputs quantizes it)")
            elif (tied := self.tied_weight_refusal(layer)) is not None:
                self.kept_float.append(layer.name)
                self.refuse(layer.node.op_type, tied)
            elif (reason := self.layer_refusal(layer)) is not None:
                self.kept_float.append(layer.name)
                self.refuse(layer.node.op_type, reason)
            else:
                chosen.append(layer)
        # A weight another layer reads and keeps float (a model output, --exclude) stays float for all its readers:
        # the reduced copy of a reader would be stored beside it (a weight two layers share, one of them the head:
        # 16,384 → 32,768 parameters).
        kept = set(self.kept_float)
        floats = {id(layer.source) for layer in layers if layer.name in kept and layer.source is not None}
        for layer in [layer for layer in chosen if layer.source is not None and id(layer.source) in floats]:
            chosen.remove(layer)
            self.kept_float.append(layer.name)
            self.refuse(
                layer.node.op_type,
                f"its weight is also read by a layer that stays float: an {self.precision} copy would be stored "
                "beside it",
            )
        if not chosen:
            if not layers and not refused:
                self.note(_nothing_to_quantize(model, self.kinds))
            else:
                # A pass asked for by flag that quantizes nothing says why without -v (an already QDQ model's
                # every layer refused), as one that finds no layer at all does.
                self.note(_none_quantized(self._state()[1].lines()))
            return self.result(model, modified=False)
        self._changeable = frozenset(layer.name for layer in chosen)
        if self.weight_range_note:
            self.note(self.weight_range_note)
        batches = split_samples(self.samples, model=model) if self.samples is not None else []
        # With a budget, its search stops on samples held out of the ranges, SmoothQuant and the layers'
        # ranking (``optimizer.samples.hold_out``, as pruning's): a search stopped on the rows it ranked by meets
        # the budget by the search. Where enough are held out, the figure and the pipeline's check are on half
        # of them that the search never ran (``held_out_parts``); else on those it chose by, and the note says so.
        checked, held_out = batches, False
        reported: Sequence[Mapping[str, np.ndarray]] = batches
        self._search_trials = 0
        if self.budget is not None and batches:
            fitted, held, reported = held_out_parts(batches, model)
            if len(held):
                batches, checked, held_out = fitted, held, True
            else:
                whole = "batch (the model fixes its batch size)" if fixes_batch(model) else "sample"
                self.note(f"budget: one calibration {whole}, searched and checked on it (nothing could be held out)")
        self._batches, self._searched_on = batches, checked
        self._float = model.clone() if batches else None
        norms: list[str] = []
        if self.smooth_alpha is not None and batches:
            shared: list[str] = []
            norms = smoothing.smooth(model, chosen, batches, self.smooth_alpha, shared)
            shown = ", ".join(norms[:8]) + (f" and {len(norms) - 8} more" if len(norms) > 8 else "")
            self.note(f"SmoothQuant (alpha {self.smooth_alpha:g}) on {len(norms)} norms: {shown or 'none'}")
            if shared:
                self.note(
                    f"SmoothQuant left {len(shared)} norms alone ({', '.join(shared[:4])}"
                    f"{', ...' if len(shared) > 4 else ''}): a layer they feed shares its weight with other layers, "
                    "and each would store its own smoothed copy"
                )
            if norms:
                # SmoothQuant rewrote the weights of the layers it rescaled: what the budget offers and estimates
                # (8-bit weights only where no adjacent pair can saturate, the local errors) reads them as they are.
                current = {layer.name: layer for layer in self._find_layers(model.graph)[0]}
                chosen = [current.get(layer.name, layer) for layer in chosen]
        self.prepare(model, chosen, batches)
        if self.budget is not None and batches:
            chosen = self._fit_budget(model, chosen, batches, checked)
            if not chosen:
                if norms:  # a result that says it changed nothing leaves the model as it was: not smoothed
                    model.graph = self._float.graph
                self._float, self._batches = None, []
                return self.result(model, modified=False)
        elif self.budget is not None:
            self.note("no sample inputs: the accuracy budget was not searched")
        names = [layer.name for layer in chosen]
        norms += self._smooth_layers(model, names)  # SmoothQuant the budget chose for single layers
        source = model.clone()  # shares the weights' tensors; the twin replaces the quantized ones
        self._apply(model, names)
        self.quantized = names
        twin = self._twin(source, self.quantized, smoothed=bool(norms))
        for layer in chosen:
            self.done(layer.node.op_type)
        if held_out and reported is not checked:  # the search's own figure is on the rows it chose by
            bound = self._float if self.original is None else self.original
            self.drift = drift_of(model, reported, budget_references(bound, reported), layout=self.original)
        elif batches and self.drift is None:
            self.drift = drift_of(model, checked, budget_references(self._float, checked), layout=self.original)
        # Nothing held out (one sample) and a search that tried more than one point there: the figure on it is the
        # point the search picked, which meets the budget there by the search (it said nothing until a review on
        # 2026-12-07; pruning's said so).
        chose = ""
        if self.budget is not None and batches and not held_out and self._search_trials > 1:
            chose = searched_caveat(checked, checked, model, chose=True, held_out=False)
        if self.drift is not None:
            counts: dict[str, int] = {}
            for layer in chosen:
                label = self.layer_label(layer)
                counts[label] = counts.get(label, 0) + 1
            reduced = ", ".join(f"{count} layers {label}" for label, count in counts.items())
            caveat = "" if held_out else self.fitted_caveat(smoothed=bool(norms))
            held = f" on the calibration samples {caveat}" if caveat else ""
            if held_out:
                held = f" on {held_out_samples(reported, model)}" + searched_caveat(
                    checked, reported, model, chose=self._search_trials > 1
                )
            elif chose:
                held = (held or " on the calibration samples") + chose
            self.note(f"{reduced}, {len(self.kept_float) + len(self.float_by_form)} float: {self.drift}{held}")
            if held_out and (caveat := few_held_out(reported, model)):
                self.note(caveat)
        self._float, self._batches = None, []
        fitted = self.fitted_caveat(smoothed=bool(norms)) if batches and not held_out else ""
        if chose:  # the report's ``accuracy_on`` says it too, as pruning's does
            fitted = f"{fitted}, and which{chose.removeprefix(', which')}" if fitted else chose.removeprefix(", which ")
        return self.result(model, modified=True, twin=twin, fitted_to_samples=held_out, fitted_to_checked=fitted)

    def call_converted(self, model: ir.Model, opset: int) -> ir.passes.PassResult:
        """``QuantizationPass.call`` on a copy of ``model`` converted to ``opset`` (an exact rewrite), the copy's
        graph and functions taken into ``model`` only where the pass modified it: a result that says it changed
        nothing (every layer left float) leaves the caller's model at its own opset, as an onnx-ir pass says."""
        converted = model.clone()
        version_converter.convert_version(converted, opset, fallback=True)
        declared_shapes_kept(model, converted)
        result = QuantizationPass.call(self, converted)
        if result.modified:
            model.graph, model.ir_version = converted.graph, converted.ir_version
            model.functions.clear()
            model.functions.update(converted.functions)
        result.model = model
        return result

    def fitted_caveat(self, smoothed: bool = False) -> str:
        """What was fitted to the calibration samples when none was held out, the words that qualify an accuracy
        figure measured on them ("its ranges were taken from (none held out: an optimistic figure)": int4's GPTQ,
        static int8's ranges, SmoothQuant's factors where ``smoothed``); "" where the values were not fitted to
        them. The summary note and the report's ``accuracy_on`` both say it."""
        return optimistic_figure("SmoothQuant's factors were fitted to", self.budget) if smoothed else ""

    def layer_label(self, layer: Layer) -> str:
        """What the summary note calls ``layer``'s precision once quantized ("int8", "int4", "int8 weights only")."""
        scheme = self.scheme(layer)
        return self.precision if scheme == self.default_scheme else SCHEME_LABELS.get(scheme, scheme)

    def _apply(self, model: ir.Model, names: Sequence[str]) -> None:
        """Quantize the named layers of ``model`` in place, each in its ``scheme``."""
        wanted = set(names)
        layers = [layer for layer in self._find_layers(model.graph)[0] if layer.name in wanted]
        self.begin(layers)
        for layer in track(layers, "quantizing each layer"):  # GPTQ and HQQ take seconds a layer
            self.quantize_layer(model.graph, layer)
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        remove_dead_nodes(model)

    def _smooth_layers(self, model: ir.Model, names: Sequence[str]) -> list[str]:
        """SmoothQuant (exact float rescaling) at the inputs of the named layers whose scheme is ``"smooth"``.

        Every layer reading the same input is rescaled with them (smoothing changes the
        norm they all read); those keep their own schemes. A norm also read by a layer this run
        leaves alone (``--exclude``, a model output, a tied weight) is not smoothed: that layer's
        weight would be rewritten (``smoothing.smooth`` smooths a norm only where the layers
        given read all of it), nor a gated product whose up projection is such a layer (its
        columns would be rewritten). Returns the norms smoothed.
        """
        wanted = {name for name in names if self.schemes.get(name) == "smooth"}
        if not wanted or not self._batches:
            return []
        layers = [layer for layer in self._find_layers(model.graph)[0] if layer.name in self._changeable]
        inputs = {layer.activation.name for layer in layers if layer.name in wanted}
        readers = [layer for layer in layers if layer.activation.name in inputs]
        return smoothing.smooth(model, readers, self._batches, _LAYER_SMOOTH_ALPHA, rewritable=layers)

    def _twin(self, source: ir.Model, names: Sequence[str], *, smoothed: bool) -> Twin:
        """The float model the quantized layers named ``names`` claim to compute, built on ``source``."""
        float_source = self._twin_source(source, smoothed)
        twin = Int8Twin(source)
        for layer in twin.layers(self.kinds, names, float16=self.float16_layers):
            self.twin_layer(twin, layer)
        base = self._twin_base(smoothed)
        description = (
            f"{base} with {len(names)} layers' weights int8-dequantized and inputs {self.twin_inputs}, in float32"
        )
        return Twin(
            twin.finish(),
            "int8",
            description,
            checkpoints=twin.checkpoints,
            layer_outputs=twin.layer_outputs,
            source=float_source,
        )

    def _twin_source(self, source: ir.Model, smoothed: bool) -> ir.Model | None:
        """The float model the twin approximates where that is not the pass's input (``Twin.source``): ``source``
        rewritten by SmoothQuant or by ``canonical_gemms`` before any layer was quantized. The pipeline holds it to the
        input as an exact rewrite: a wrong rescaling or Gemm rewrite is in the twin too, which no twin check sees."""
        return source.clone() if smoothed or self._gemms_written else None

    def _twin_base(self, smoothed: bool) -> str:
        """What the twin's description calls the float model it starts from."""
        base = "the input after SmoothQuant" if smoothed else "the input"
        if self._gemms_written:
            gemms = "1 Gemm" if self._gemms_written == 1 else f"{self._gemms_written} Gemms"
            base += f" ({gemms} rewritten into the kernels' form: canonical_gemms)"
        return base

    def _trial(self, model: ir.Model, schemes: Mapping[str, str], batches, reference) -> Drift:
        """The drift of ``model`` with each layer named in ``schemes`` written in its scheme (the rest float)."""
        if batches is self._searched_on:  # more than one point tried there: its figure there is the search's pick
            self._search_trials += 1
        return drift_of(self._written(model, schemes), batches, reference, layout=self.original)

    def _written(self, model: ir.Model, schemes: Mapping[str, str]) -> ir.Model:
        """A copy of ``model`` with each layer named in ``schemes`` written in its scheme (the rest float)."""
        trial = model.clone()
        saved, self.schemes = self.schemes, dict(schemes)
        try:
            names = [name for name, scheme in schemes.items() if scheme != FLOAT]
            self._smooth_layers(trial, names)
            self._apply(trial, names)
        finally:
            self.schemes = saved
        return trial

    # -- the budget ------------------------------------------------------------------------

    def _fit_budget(self, model: ir.Model, layers: list[Layer], batches, checked=None) -> list[Layer]:
        """The layers to quantize, and the scheme of each, so the model meets the budget at the least latency:
        layers ranked on ``batches``, the budget checked on ``checked`` (the held-out samples; else ``batches``)."""
        reference = budget_references(self._float, batches)
        if note := left_out_note(reference):
            self.note(note)
        # The budget bounds the whole model against the original; the layers are ranked on what this pass changes.
        bound = self._float if self.original is None else self.original
        if checked is None or checked is batches:
            checked, where = batches, ""
            checked_reference = reference if bound is self._float else budget_references(bound, batches)
        else:
            checked_reference = budget_references(bound, checked)
            where = " on held-out samples (which ranges and ranking do not see)"
        decoder = bool(cache_outputs(model))
        if self.decode_steps is not None and not decoder:
            self.note(
                f"budget: --budget-decode-steps {self.decode_steps} does nothing here: the model has no "
                "key/value cache, so its layers are timed at the samples' rows"
            )
        default = {layer.name: self.default_scheme for layer in layers}
        drift = self._trial(model, default, checked, checked_reference)
        if self.budget.met(drift):
            self.drift = drift
            met = f"budget {self.budget.describe()} met{where} with every layer {self.precision}"
            if self.decode_steps is not None and decoder:
                met += f" (no layer timed: --budget-decode-steps {self.decode_steps} changed nothing)"
            self.note(met)
            if self.confirms_speed and not self._timing_refusal(layers):
                # Printed as every measured configuration is: a model the whole-model timing then retries or
                # declines said nowhere else what every layer in the default scheme gave (the closing note does
                # where it is kept as it is).
                self.note(f"frontier: every layer {self.precision}, the budget met without a search: {drift}{where}")
            return self._if_faster(model, layers, default, batches, (checked, checked_reference))
        options = {layer.name: (self.default_scheme, *self._offered(layer), FLOAT) for layer in layers}
        times, measured = self._layer_times(model, layers, batches, options)
        errors = self._scheme_errors(model, layers, options, batches, reference)
        path = greedy_path(default, errors, times)

        def total(schemes: Mapping[str, str]) -> float:
            return sum(times[name][scheme] for name, scheme in schemes.items())

        partners = _weight_partners(layers)

        def state(count: int) -> dict[str, str]:
            schemes = dict(default)
            schemes.update(path[:count])
            # A weight several layers read stays float for all of them once one is float: the others' reduced
            # copy would be stored beside it (the search kept one of two readers float: twice the parameters).
            for name in [name for name, scheme in schemes.items() if scheme == FLOAT]:
                schemes.update(dict.fromkeys(partners.get(name, ()), FLOAT))
            return schemes

        points = {0: FrontierPoint((), drift, total(default))}
        reached: dict[tuple, FrontierPoint] = {}

        def attempt(count: int) -> bool:
            schemes = state(count)
            if all(scheme == FLOAT for scheme in schemes.values()):
                return False
            changes = tuple((name, scheme) for name, scheme in schemes.items() if scheme != default[name])
            # A step that floats a layer whose weight's partner already took it float reaches the same model:
            # measured once, and one point of the frontier (it was run and listed twice).
            if changes not in reached:
                point_drift = self._trial(model, schemes, checked, checked_reference)
                reached[changes] = FrontierPoint(changes, point_drift, total(schemes))
            points[count] = reached[changes]
            return self.budget.met(points[count].drift)

        # The path ends with every layer float once float is the last change left: no point to try.
        usable = len(path) - 1 if path and all(scheme == FLOAT for scheme in state(len(path)).values()) else len(path)
        found = _shortest_prefix(attempt, usable, exhaustive=len(layers) <= _EXHAUSTIVE_LAYERS)
        self.frontier = list({id(point): point for point in (points[count] for count in sorted(points))}.values())
        float_seconds, default_seconds = total(dict.fromkeys(default, FLOAT)), total(default)
        described = self.budget.describe()
        if found is None:
            self.kept_float.extend(default)
            for layer in layers:
                self.refuse(layer.node.op_type, f"no point of the accuracy budget's search met it ({self.precision})")
            self._note_frontier(float_seconds, default_seconds, measured)
            # Not "with any layer": the search's points are prefixes of one order, down to one layer left in it (on
            # PP-OCRv4's recognizer a Conv, 0.9942 against 0.999, where 8 MatMuls alone met it at 0.99965).
            unmet = (
                f"budget {described} cannot be met{where} by the search: each layer made float in turn, in its order, "
                f"down to one {self.precision} layer (the frontier's last point; other sets of layers are not tried); "
                "model left float"
            )
            self.note(unmet)
            # A decline leads the pass's reasons: --strict names it, not a model-output layer refused earlier.
            self.decline(unmet)
            return []
        schemes = state(found)
        self.drift = points[found].drift
        self.schemes = {name: scheme for name, scheme in schemes.items() if scheme != FLOAT}
        floated = [name for name, scheme in schemes.items() if scheme == FLOAT]
        self.kept_float.extend(floated)
        for layer in layers:
            if layer.name in floated:
                self.refuse(layer.node.op_type, "kept float to meet the accuracy budget")
        self._note_frontier(float_seconds, default_seconds, measured)
        changed = points[found].describe(float_seconds, default_seconds, measured)
        self.note(f"budget {described} met{where} with {len(points[found].changes)} layers changed: {changed}")
        chosen = self._if_faster(model, layers, schemes, batches, (checked, checked_reference), times)
        return [layer for layer in chosen if layer.name not in floated]

    def _offered(self, layer: Layer) -> tuple[str, ...]:
        """``alternatives(layer)``, less SmoothQuant where a layer this run leaves alone reads the same input, or
        is the up projection of the gated product it reads (``_smooth_layers`` would not smooth it: the scheme
        would be the default's)."""
        readers = [user.name for user, _ in smoothing.data_uses(layer.activation)]
        producer = layer.activation.producer()
        if producer is not None and producer.op_type == "Mul" and smoothing.gated(producer):  # its up projection too
            operands = [value.producer() for value in producer.inputs if value is not None]
            readers += [node.name for node in operands if node is not None and node.op_type == "MatMul"]
        return tuple(
            scheme
            for scheme in self.alternatives(layer)
            if scheme != "smooth" or all(name in self._changeable for name in readers)
        )

    def _if_faster(
        self,
        model: ir.Model,
        layers: list[Layer],
        schemes: Mapping[str, str],
        batches,
        checked: tuple,
        times: Mapping[str, Mapping[str, float]] | None = None,
    ) -> list[Layer]:
        """``layers`` if the model with ``schemes`` runs faster than the float model as a whole
        (``confirms_speed``), else none: the pass declines, every layer float. The layers' times are summed as if
        independent; the conversions between an int8 layer and a float one are not in them.

        Before declining it tries one more point: ``schemes`` with every layer whose own timing says its
        scheme runs no faster than float (``times``; measured now where the budget was met without them) kept
        float too, if that still meets the budget on ``checked`` (the samples and their float outputs). A
        loose budget that every layer in int8 meets otherwise leaves float a model whose slow layers alone made
        int8 lose. Each check keeps a model only where the upper end of a 95 %
        confidence interval is below 1, a one-sided error of 2.5 %: two checks together wrongly keep a model
        no faster than float at most 5 % of the time.
        """
        if not self.confirms_speed or self._timing_refusal(layers):
            return layers
        ratio, upper, runs = self._model_ratio(model, schemes, batches)
        # Float: the budget's choice and the layers kept float before it (--exclude, a model output), as the
        # pass's closing note counts them.
        kept = len(set(self.kept_float) | {name for name, scheme in schemes.items() if scheme == FLOAT})
        kept += len(self.float_by_form)
        what = f"{_layers(sum(scheme != FLOAT for scheme in schemes.values()))} {self.precision}, {kept} float"
        runs_at = self._runs_at(ratio, upper, runs, model)
        # Kept only where surely faster: a result within the timing's noise of float flips from run to run.
        if upper < 1.0:
            self.note(f"budget: with {what} the model {runs_at}")
            return layers
        first = f"budget met with {what}, but that model {runs_at}"
        faster = self._slow_layers_float(model, layers, schemes, batches, checked, times)
        if isinstance(faster, tuple):
            floated, drift = faster
            schemes = {name: FLOAT if name in floated else scheme for name, scheme in schemes.items()}
            ratio, upper, runs = self._model_ratio(model, schemes, batches)
            runs_at = self._runs_at(ratio, upper, runs, model)
            shown = ", ".join(floated[:6]) + (f" and {len(floated) - 6} more" if len(floated) > 6 else "")
            retried = (
                f"{first}. Retried with the {_layers(len(floated))} whose {self.precision} kernel timed no faster "
                f"than float kept float too ({shown}), which meets the budget with {drift}: it {runs_at}"
            )
            if upper < 1.0:
                self.note(retried)
                self.drift = drift
                self.schemes = {name: scheme for name, scheme in schemes.items() if scheme != FLOAT}
                for layer in layers:
                    if layer.name in floated:
                        self.kept_float.append(layer.name)
                        self.refuse(
                            layer.node.op_type,
                            f"its {self.precision} kernel timed no faster than float here, and the model with every "
                            f"such layer float ran faster than float where the one without did not",
                        )
                return [layer for layer in layers if layer.name not in floated]
            first = retried
        elif faster:
            first = f"{first}. {faster}"
        declined = (
            f"{first}: not surely faster than float, so {self.precision} does not pay on this machine; model left float"
        )
        for layer in layers:
            if layer.name not in self.kept_float:
                self.kept_float.append(layer.name)
                self.refuse(layer.node.op_type, f"{self.precision} runs no faster than float here")
        self.schemes, self.drift = {}, None
        self.note(declined)
        self.decline(declined)
        return []

    def _model_ratio(self, model: ir.Model, schemes: Mapping[str, str], batches) -> tuple[float, float, int]:
        """The whole model with ``schemes`` timed against the float one (``LayerSpeeds.model_ratio``): on one
        sample, as the layers were timed (the latency a user of batch 1 sees), or the batch a model fixes."""
        speeds = self.layer_speeds or LayerSpeeds(self.timing_target, threads=self.timing_threads)
        trial = self._written(model, schemes)
        fixed = fixed_batch_size(model)
        holds = holds_samples(model)
        first = {
            name: holds.take(name, array, slice(0, 1)) if fixed is None and holds(name, array) else array
            for name, array in batches[0].items()
        }
        return speeds.model_ratio(self._float, trial, first)

    def _runs_at(self, ratio: float, upper: float, runs: int, model: ir.Model) -> str:
        fixed = fixed_batch_size(model)
        timed = f"whole models, {runs} interleaved pairs, 95 % CI up to {upper:.2f}x" if runs else "whole models"
        sample = "one sample" if fixed is None else f"its fixed batch of {fixed}"
        return f"runs {ratio:.2f}x the float model's latency here at {sample} ({timed})"

    def _slow_layers_float(
        self,
        model: ir.Model,
        layers: list[Layer],
        schemes: Mapping[str, str],
        batches,
        checked: tuple,
        times: Mapping[str, Mapping[str, float]] | None,
    ) -> tuple[list[str], Drift] | str:
        """The layers of ``schemes`` not float whose scheme timed no faster than float, and the drift of the
        model with them float too, where that still meets the budget on ``checked`` (the point joins ``frontier``
        and a note); else why not ("" where no such layer is left, or every layer would be float)."""
        if times is None:
            options = {layer.name: (schemes[layer.name], FLOAT) for layer in layers if schemes[layer.name] != FLOAT}
            # Measured: ``_if_faster`` stops before the retry wherever the layers are not timed.
            times, _ = self._layer_times(model, [layer for layer in layers if layer.name in options], batches, options)
        slow = [
            name
            for name, scheme in schemes.items()
            if scheme != FLOAT and name in times and times[name][scheme] >= times[name][FLOAT]
        ]
        partners = _weight_partners(layers)  # a weight's other readers go float with it (``_fit_budget``'s state)
        slow += [
            other
            for other in dict.fromkeys(other for name in slow for other in partners.get(name, ()))
            if other not in slow and schemes.get(other, FLOAT) != FLOAT
        ]
        if not slow or len(slow) + sum(scheme == FLOAT for scheme in schemes.values()) == len(schemes):
            return ""
        trial = {name: FLOAT if name in slow else scheme for name, scheme in schemes.items()}
        drift = self._trial(model, trial, *checked)
        if not self.budget.met(drift):
            return (
                f"Not retried with the {_layers(len(slow))} timed no faster than float kept float too: "
                f"that misses the budget ({drift})"
            )
        timed = [name for name in trial if name in times]
        changes = tuple((name, scheme) for name, scheme in trial.items() if scheme != self.default_scheme)
        point = FrontierPoint(changes, drift, sum(times[name][trial[name]] for name in timed))
        self.frontier.append(point)
        float_seconds = sum(times[name][FLOAT] for name in timed)
        default_seconds = sum(times[name].get(self.default_scheme, times[name][FLOAT]) for name in timed)
        self.note(f"frontier, retried: {point.describe(float_seconds, default_seconds, True)}")
        return slow, drift

    def _timing_refusal(self, layers: Sequence[Layer]) -> str:
        """Why the budget's latencies are not measured here ("" where they are)."""
        if not self.measures_speed:
            return "not measured for this pass"
        if untimed := self.untimed_reason(layers):
            return untimed
        if self.layer_speeds is None and self.timing_target == "cuda" and (reason := cuda_unavailable_reason()):
            return f"not measured: --target cuda and {reason}"
        return ""

    def _note_frontier(self, float_seconds: float, default_seconds: float, measured: bool) -> None:
        for index, point in enumerate(self.frontier):
            described = point.describe(float_seconds, default_seconds, measured)
            self.note(f"frontier {index + 1}/{len(self.frontier)}: {described}")

    def _scheme_errors(
        self, model: ir.Model, layers: list[Layer], options: Mapping[str, Sequence[str]], batches, reference
    ) -> dict[str, dict[str, float]]:
        """Each layer's accuracy cost in each of its schemes (float costs nothing).

        Up to ``_EXHAUSTIVE_LAYERS`` layers: the model's drift with that layer alone in that
        scheme. Beyond: the default's cost from ``_sensitivity`` and the alternatives' from
        ``_local_alternative_errors`` (a scheme with no local estimate is not offered).
        """
        sensitivity = self._sensitivity(model, layers, batches, reference)
        if len(layers) > _EXHAUSTIVE_LAYERS:
            scaled = self._role_scale(model, layers, sensitivity, batches, reference)
        else:
            scaled = _unscaled
        errors = {
            layer.name: {self.default_scheme: scaled(layer.name, sensitivity[layer.name]), FLOAT: 0.0}
            for layer in layers
        }
        alternatives = {
            name: [scheme for scheme in schemes if scheme not in (self.default_scheme, FLOAT)]
            for name, schemes in options.items()
        }
        if not any(alternatives.values()):
            return errors
        if len(layers) <= _EXHAUSTIVE_LAYERS:
            pairs = [(name, scheme) for name, schemes in alternatives.items() for scheme in schemes]
            for name, scheme in track(pairs, "budget: each layer alone in each alternative"):
                errors[name][scheme] = self._cost(self._trial(model, {name: scheme}, batches, reference))
            tried = sum(len(schemes) for schemes in alternatives.values())
            self.note(f"budget: {tried} alternatives to float measured layer by layer on the samples")
            return errors
        local = self._local_alternative_errors(model, [layer for layer in layers if alternatives[layer.name]], batches)
        dropped: dict[str, int] = {}
        for name, schemes in alternatives.items():
            for scheme in schemes:
                if scheme in local.get(name, {}):
                    errors[name][scheme] = scaled(name, local[name][scheme])
                else:
                    dropped[scheme] = dropped.get(scheme, 0) + 1
        for scheme, count in dropped.items():
            self.note(f"budget: {SCHEME_LABELS.get(scheme, scheme)} not tried on {count} layers (no local estimate)")
        return errors

    def _role_scale(
        self, model: ir.Model, layers: list[Layer], local: Mapping[str, float], batches, reference
    ) -> Callable[[str, float], float]:
        """What turns a layer's local estimate into the model's drift, measured per role.

        A role is the layers that play one part in every block (``layers.3/self_attn/q_proj``
        and its siblings in the other blocks: ``block_role``). Each role is quantized alone,
        all its blocks together, the rest float; the model's drift over the role's summed
        local estimates scales its layers' estimates and their alternatives'. A drift in
        cosine grows with the square of an error (1 - cos ≈ e²/2), a max error with the error
        itself, so the estimates are squared first for a cosine budget. A local estimate sees
        a layer's own output, not what comes after it: on SmolLM2 per-row int8 in the Q/K/V
        projections alone costs the logits as much cosine (0.9983) as in the five-times-larger
        MLPs (0.9981), because the softmax amplifies a query's or key's error, and their local
        errors did not show it. Layers in no role (a head, a stem) get the median factor; a
        role whose estimates are all zero gets its measured drift shared among its layers as a
        floor; convolutions keep their own measured cost. Estimates stay as they are (and a note
        says why) where no role has two layers or there are more roles than
        ``_EXHAUSTIVE_LAYERS``.
        """
        roles: dict[str, list[Layer]] = {}
        for layer in layers:
            role = block_role(layer.name) if layer.kind != "conv" else None
            if role is not None:
                roles.setdefault(role, []).append(layer)
        roles = {role: members for role, members in roles.items() if len(members) >= 2}
        if not roles or len(roles) > _EXHAUSTIVE_LAYERS:
            why = (
                "no layer name carries a block index (layers.N, layer.N, h.N, blocks.N)"
                if not roles
                else (f"{len(roles)} roles, more than {_EXHAUSTIVE_LAYERS} trials")
            )
            self.note(f"sensitivity: local estimates not scaled per role ({why})")
            return _unscaled
        power = 2.0 if self.budget.bounds_cosine else 1.0
        factors: dict[str, float] = {}
        floors: dict[str, float] = {}
        by_role = []
        for members in track(list(roles.values()), "sensitivity: each role across the blocks"):
            total = sum(local[member.name] ** power for member in members)
            trial = {member.name: self.default_scheme for member in members}
            cost = self._cost(self._trial(model, trial, batches, reference))
            factor = cost / total if total > 0 else 0.0
            if total <= 0:
                floors.update(dict.fromkeys((member.name for member in members), cost / len(members)))
            by_role.append(factor)
            factors.update(dict.fromkeys((member.name for member in members), factor))
        median = float(np.median(by_role))
        for layer in layers:
            if layer.kind != "conv" and layer.name not in factors:
                factors[layer.name] = median
        self.note(
            f"sensitivity: local estimates scaled by the model's drift with each of {len(roles)} roles "
            "quantized across its blocks (a role: one layer's part in every block)"
        )

        def scale(name: str, value: float) -> float:
            if name not in factors:
                return value
            return max(factors[name] * value**power, floors.get(name, 0.0))

        return scale

    def _local_alternative_errors(
        self, model: ir.Model, layers: Sequence[Layer], batches
    ) -> dict[str, dict[str, float]]:
        """Local estimates (relative error of the layer's output on sampled input rows, as ``_local_errors``)
        of each layer's alternatives (``_local_alternative_error``), from one run of the model."""
        rows = sample_layer_inputs(model, layers, batches)
        estimates: dict[str, dict[str, float]] = {}
        for layer in layers:
            x = rows[layer.activation.name].astype(np.float64)
            found = estimates.setdefault(layer.name, {})
            for scheme in self.alternatives(layer):
                if (error := self._local_alternative_error(x, layer, scheme)) is not None:
                    found[scheme] = error
        return estimates

    def _local_alternative_error(self, x: np.ndarray, layer: Layer, scheme: str) -> float | None:
        """``layer``'s local estimate in the alternative ``scheme`` on its input rows ``x`` (None: none);
        a subclass with schemes of its own adds theirs."""
        if scheme not in _LOCAL_FORMS:
            return None
        activation, reduce_range = _LOCAL_FORMS[scheme]
        reduce_range = self.reduce_range if reduce_range is None else reduce_range
        return local_error(x, layer, activation, reduce_range, self.per_channel)

    def _layer_times(
        self, model: ir.Model, layers: list[Layer], batches, options: Mapping[str, Sequence[str]]
    ) -> tuple[dict[str, dict[str, float]], bool]:
        """Seconds of each layer in each of its schemes, and whether they were measured.

        Measured (``measures_speed``): each layer as a probe of its kernel (``speed_shape``: a MatMul at its
        weight's ``K x N`` and the rows one sample gives it, tokens per sample; a Conv at one sample's input
        between int8 layers), in each scheme's kernel. Otherwise every layer counts the same: 1 float, 0 reduced.
        """
        unit = {name: {scheme: float(scheme == FLOAT) for scheme in schemes} for name, schemes in options.items()}
        # On --target cuda without a GPU, timed on the CPU they would rank layers for the wrong device.
        untimed = self._timing_refusal(layers)
        if untimed:
            self.note(f"budget: layer latencies {untimed}; every layer kept float costs the same")
            return unit, False
        speeds = self.layer_speeds or LayerSpeeds(self.timing_target, threads=self.timing_threads)
        inputs = _sample_input_shapes(model, layers, batches)
        # A decoder with a key/value cache spends a generation mostly in one-token steps, where streaming
        # the weights limits (what int4 is for: 0.18x float at 1 row, 1.3x at 128); its layers are timed as
        # a generation: the samples' tokens as a prefill, then GENERATED_TOKENS steps of one row.
        steps = GENERATED_TOKENS if self.decode_steps is None else self.decode_steps
        decoder = bool(cache_outputs(model))
        times: dict[str, dict[str, float]] = {}
        shapes = set()
        for layer in layers:
            prefill = self.speed_shape(layer, *inputs[layer.activation.name])
            parts = [(prefill, 1)]
            if decoder and steps and isinstance(prefill, LayerShape):
                # a layer that reads one row even in the prefill (the last token's head) too
                parts.append((LayerShape("MatMul", 1, prefill.k, prefill.n), steps))
            total: dict[str, float] = {}
            forms = {
                scheme: self.speed_form(scheme, layer) if scheme != FLOAT else FLOAT for scheme in options[layer.name]
            }
            for shape, count in parts:
                shapes.add(shape)
                builders = {form: _builder(self, shape, scheme, layer) for scheme, form in forms.items()}
                for form, seconds in speeds.seconds(shape, builders).items():
                    total[form] = total.get(form, 0.0) + count * seconds
            times[layer.name] = {scheme: total[form] for scheme, form in forms.items()}
        if decoder and steps:
            workload = (
                f" (a decoder with a key/value cache: timed as a generation, a prefill of the samples' tokens and "
                f"{steps} one-token steps)"
            )
        elif decoder:
            workload = " (a decoder with a key/value cache: timed as a prefill of the samples' tokens alone)"
        else:
            workload = ""
        self.note(
            f"budget: latency of {len(layers)} layers ({len(shapes)} shapes) measured on this machine{workload}, "
            f"{speeds.timed} kernels timed now, the rest read from {speeds.path}"
        )
        return times, True

    def untimed_reason(self, layers: Sequence[Layer]) -> str:
        """Why the budget cannot time ``layers`` (then every layer kept float costs the same), or "": here, a
        layer whose weight is not a matrix (the probe is a MatMul)."""
        if any(layer.weight.ndim != 2 for layer in layers):
            return "not measured for this pass"
        return ""

    def speed_shape(self, layer: Layer, shape: tuple[int, ...], samples: int) -> LayerShape | ConvShape:
        """The kernel ``layer`` runs for one sample, as timed: its input's ``shape`` on a batch of ``samples``.
        Here a MatMul of the rows one sample gives it (tokens per sample) by its weight's ``K x N``."""
        k, n = (int(size) for size in layer.weight.shape)
        rows = max(1, int(np.prod(shape[:-1], dtype=np.int64)) // samples)
        return LayerShape("MatMul", rows, k, n)

    def _layer_model(self, shape: LayerShape, scheme: str, layer: Layer | None = None) -> ir.Model:
        """The timing probe at ``shape`` (``layer_probe``: copies of one MatMul) written in ``scheme`` by this
        pass's own rewrite (as for ``layer``)."""
        model = layer_probe(shape)
        if scheme == FLOAT:
            return model
        names = probe_names(shape)
        saved, self.schemes = self.schemes, dict.fromkeys(names, scheme)
        try:
            self._apply(model, names)
        finally:
            self.schemes = saved
        return model

    def _sensitivity(self, model: ir.Model, layers: list[Layer], batches, reference) -> dict[str, float]:
        """Each layer's sensitivity in the default scheme: the model's drift with that layer alone reduced
        (a local estimate for matmul-like layers when there are more than ``_EXHAUSTIVE_LAYERS``)."""
        if len(layers) <= _EXHAUSTIVE_LAYERS:
            alone = track(layers, "sensitivity: each layer alone quantized")
            return {
                layer.name: self._cost(self._trial(model, {layer.name: self.default_scheme}, batches, reference))
                for layer in alone
            }
        local = [layer for layer in layers if layer.kind != "conv"]
        scores = _local_errors(model, local, batches, self.per_channel, self.reduce_range)
        for layer in layers:
            if layer.kind == "conv":
                scores[layer.name] = self._cost(
                    self._trial(model, {layer.name: self.default_scheme}, batches, reference)
                )
        self.note(
            f"sensitivity of {_layers(len(local))} estimated locally (relative int8 error of each layer's output)"
        )
        return scores

    def _cost(self, drift: Drift) -> float:
        # The budget's own measure orders the layers (the worst sample's cosine, the mean's, the error).
        return self.budget.shortfall(drift)


def _unscaled(name: str, value: float) -> float:
    """A local estimate as it is (no role scaled it)."""
    return value


_BLOCK_INDEX = re.compile(r"((?:^|[/._])(?:layers|layer|h|blocks|block)[._])\d+(?=[/._]|$)")


def block_role(name: str) -> str | None:
    """A layer's part in its block, its name with the block index left out (``.../layers.#/mlp/down_proj``),
    or None where the name has no block index (``layers.N``, ``layer.N``, ``h.N``, ``blocks.N``)."""
    role, found = _BLOCK_INDEX.subn(r"\1#", name, count=1)  # the outer block (an MLP's own layers.N stays)
    return role if found else None


def _weight_partners(layers: Sequence[Layer]) -> dict[str, list[str]]:
    """For each layer, the other layers of ``layers`` that read the same weight constant (``Layer.source``)."""
    readers: dict[int, list[str]] = {}
    for layer in layers:
        if layer.source is not None:
            readers.setdefault(id(layer.source), []).append(layer.name)
    return {name: [other for other in group if other != name] for group in readers.values() for name in group}


def _layers(count: int) -> str:
    return f"{count} layer" if count == 1 else f"{count} layers"


def greedy_path(
    start: Mapping[str, str], errors: Mapping[str, Mapping[str, float]], times: Mapping[str, Mapping[str, float]]
) -> list[tuple[str, str]]:
    """The order in which to change layers' schemes: each step the change with the most accuracy cost
    removed per second of latency added, from ``start`` until every layer is in its most accurate scheme.

    ``errors[layer][scheme]`` is the accuracy cost of the layer in that scheme (taken as additive
    over layers), ``times[layer][scheme]`` its seconds. A change that adds no latency comes before
    any that does (the one saving most latency first, then the larger gain); a change that removes no
    cost is not taken, so a scheme
    slower and no more accurate than one already taken never is. Costs measured one layer at a time
    miss what only layers together lose (each alone may cost nothing), so the path ends by turning
    the remaining layers float, the costliest first (the cheapest to keep float among equals).
    """
    current = dict(start)
    path = []
    while True:
        best, best_key = None, None
        for name, costs in errors.items():
            now_error, now_time = costs[current[name]], times[name][current[name]]
            for scheme, error in costs.items():
                gain = now_error - error
                if gain <= 0:
                    continue
                added = times[name][scheme] - now_time
                # Changes that cost no latency first, the fastest of them first (int4 -> int8 before
                # int4 -> float where int4's kernel is the slowest); then the most gain per second.
                key = (gain / added, gain, -added) if added > 0 else (float("inf"), -added, gain)
                if best_key is None or key > best_key:
                    best, best_key = (name, scheme), key
        if best is None:
            break
        current[best[0]] = best[1]
        path.append(best)
    remaining = [name for name, scheme in current.items() if scheme != FLOAT and FLOAT in errors[name]]
    remaining.sort(key=lambda name: (-errors[name][current[name]], times[name][FLOAT] - times[name][current[name]]))
    return path + [(name, FLOAT) for name in remaining]


def _shortest_prefix(attempt: Callable[[int], bool], length: int, *, exhaustive: bool) -> int | None:
    """The smallest count in ``1..length`` for which ``attempt`` holds (``attempt(0)`` is known to fail).

    ``exhaustive``: counts in order. Otherwise bisection, assuming that once a prefix meets the
    budget every longer one does.
    """
    if exhaustive:
        counts = track(range(1, length + 1), "budget: the search's path, one change at a time")
        return next((count for count in counts if attempt(count)), None)
    if length == 0 or not attempt(length):
        return None
    low, high = 0, length  # attempt(low) fails, attempt(high) holds
    with task("budget: bisection over the search's path", total=max(1, math.ceil(math.log2(length)))) as step:
        while high - low > 1:
            middle = (low + high) // 2
            if attempt(middle):
                high = middle
            else:
                low = middle
            step.advance()
    return high


def _builder(
    owner: QuantizationPass, shape: LayerShape, scheme: str, layer: Layer | None = None
) -> Callable[[], ir.Model]:
    return lambda: owner._layer_model(shape, scheme, layer)


def _sample_input_shapes(model: ir.Model, layers: Sequence[Layer], batches) -> dict[str, tuple[tuple[int, ...], int]]:
    """The shape of each layer's input on the first batch, and how many samples that batch holds (for
    ``QuantizationPass.speed_shape``: what one inference at batch 1 gives the layer)."""
    names = list(dict.fromkeys(layer.activation.name for layer in layers))
    # A table t [S, K] or a cache_position [S] beside the samples does not count.
    samples = samples_in(batches[0], holds_samples(model))
    shapes = {}
    for run in stream_values(model, names, batches[:1]):
        for name, array in run.items():
            shapes[name] = (tuple(int(size) for size in np.shape(array)), max(1, samples))
    return shapes


# Alternatives estimated locally: (activation rounding, weight reduce_range or None for the pass's own).
_LOCAL_FORMS = {"row": ("row", None), "w8": ("tensor", False), "weight-only": ("none", None), "int8": ("tensor", None)}


def output_error(approximate: np.ndarray, exact: np.ndarray) -> float:
    """A layer's relative output error with every row (token) counting alike: the root mean square over
    rows of ``|Δ row| / |row|``.

    One relative error over the whole output is dominated by a few rows of massive
    activations (a decoder's first token, 1000x the others): an int8 scale set by that row
    rounds every other row to nothing while the whole-output error hardly moves. On SmolLM2
    the whole-output measure ranked layer 11's down projection among the safest to run
    per-tensor int8, and that layer alone in int8 takes the logits' cosine to 0.87. A row
    far smaller than the typical one is measured against a tenth of the median row, so
    that its rounding cannot outweigh every other row.
    """
    width = exact.shape[-1]
    size = np.linalg.norm(exact.reshape(-1, width), axis=1)
    missed = np.linalg.norm((approximate - exact).reshape(-1, width), axis=1)
    floor = max(0.1 * float(np.median(size)) if len(size) else 0.0, 1e-30)
    return float(np.sqrt(np.mean((missed / np.maximum(size, floor)) ** 2))) if len(size) else 0.0


def local_error(x: np.ndarray, layer: Layer, activation: str, reduce_range: bool, per_channel: bool) -> float:
    """Relative error (``output_error``) of ``x @ W`` when ``x`` is rounded per ``activation``
    (``"tensor"``: uint8 at one scale; ``"row"``: symmetric int8 per row; ``"none"``: exact) and ``W`` is int8."""
    if activation == "tensor":
        scale, zero_point = activation_parameters(x.min(), x.max())
        x_q = (np.clip(np.rint(x / scale) + float(zero_point), 0, 255) - float(zero_point)) * float(scale)
    elif activation == "row":
        step = np.maximum(np.abs(x).max(axis=1, keepdims=True) / ROW_LEVELS, ROW_SCALE_FLOOR)
        x_q = np.rint(x / step) * step
    else:
        x_q = x
    weight = quantize_weight(layer.weight, 1 if per_channel else None, reduce_range=reduce_range)
    exact = x @ layer.weight.astype(np.float64)
    approximate = x_q @ weight.dequantize().astype(np.float64)
    return output_error(approximate, exact)


def sample_layer_inputs(
    model: ir.Model, layers: Sequence[Layer], batches: Sequence[Mapping[str, np.ndarray]], rows: int = _LOCAL_ROWS
) -> dict[str, np.ndarray]:
    """Up to ``rows`` rows ``[rows, K]`` of each layer's input on the batches (a seeded random subset of
    each batch's rows, its padded positions left out: ``optimizer.padding.unpadded_rows``), by tensor name: one
    streamed run of ``model``."""
    names = list(dict.fromkeys(layer.activation.name for layer in layers))
    rng = np.random.default_rng(0)
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    share = max(1, rows // max(len(batches), 1))
    tokens = token_rows(model, names)
    with value_collector(model, names) as run:
        for batch in batches:
            padding = batch_padding(model, batch)
            for name, array in run(batch).items():
                flat = unpadded_rows(np.asarray(array, dtype=np.float32), padding if name in tokens else {})
                collected[name].append(flat[rng.choice(len(flat), min(share, len(flat)), replace=False)])
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def _local_errors(
    model: ir.Model, layers: Sequence[Layer], batches, per_channel: bool, reduce_range: bool
) -> dict[str, float]:
    """Relative error of each layer's output when its input and weight go through int8, on sampled input rows.

    One run of the float model collects the inputs (a random subset of rows per
    tensor); the int8 arithmetic is then simulated in numpy: per-tensor uint8 input,
    int8 weights as the pass would store them.
    """
    rows = sample_layer_inputs(model, layers, batches)
    errors = {}
    for layer in track(layers, "sensitivity: local int8 error per layer"):
        x = rows[layer.activation.name].astype(np.float64)
        scale, zero_point = activation_parameters(x.min(), x.max())
        x_int8 = (np.clip(np.rint(x / scale) + float(zero_point), 0, 255) - float(zero_point)) * float(scale)
        weight = quantize_weight(layer.weight, 1 if per_channel else None, reduce_range=reduce_range)
        exact = x @ layer.weight.astype(np.float64)
        approximate = x_int8 @ weight.dequantize().astype(np.float64)
        errors[layer.name] = output_error(approximate, exact)
    return errors


_KIND_OPS = {"matmul": "MatMul", "gemm": "Gemm", "conv": "Conv", "attention": "Attention"}


def optimistic_figure(fit: str, budget: AccuracyBudget | None) -> str:
    """``fitted_caveat``'s words for a figure on the calibration samples that ``fit`` ("GPTQ was fitted to")."""
    held = "" if budget is not None else "; an accuracy budget holds some out"
    return f"{fit} (none held out: an optimistic figure{held})"


def _none_quantized(refusals: Sequence[str]) -> str:
    """Why a quantization pass that found layers quantized none of them: its counted refusals, the first three."""
    shown = "; ".join(refusals[:3])
    more = f"; -v shows {len(refusals) - 3} more reasons" if len(refusals) > 3 else ""
    return f"no layer quantized: {shown}{more}"


def _nothing_to_quantize(model: ir.Model, kinds: Sequence[str]) -> str:
    """Why a quantization pass found no layer (``nothing_found_note``)."""
    wanted = [_KIND_OPS[kind] for kind in kinds]
    takes = ", ".join(wanted[:-1]) + f" or {wanted[-1]}" if len(wanted) > 1 else wanted[0]
    return nothing_found_note(model, "layer to quantize", f"it takes a {takes} with a constant weight", wanted)

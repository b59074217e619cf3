"""The shared driver of the int8 passes: layer selection, the accuracy-budget search, and notes for the report.

A subclass says which layer kinds it handles (``kinds``) and how to rewrite one
layer (``quantize_layer``); this base decides *which* layers to rewrite:

- layers matching an ``exclude`` glob, and layers whose result is a graph output
  (an LM head or classifier: int8 error there reaches the answer undamped), stay float;
- with an accuracy budget and sample inputs, each remaining layer's sensitivity is
  measured (quantize it alone, compare the model's outputs with the float ones),
  and the most sensitive layers are kept float one by one, greedily, until the
  whole quantized model meets the budget.

Every modified result carries its twin (``optimizer.protocol.Twin``, kind ``"int8"``):
the input, after SmoothQuant's rescaling where it ran (an exact float rewrite, so the
smoothed model computes what the input does), with each quantized layer's weight
replaced by its dequantized int8 values and its input quantized and dequantized in
float, as ``twin_layer`` declares. It is built from a copy taken before any layer is
rewritten, by different code than ``quantize_layer``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from optimizer.accuracy import AccuracyBudget, Drift, output_drift
from optimizer.domains import MS_DOMAIN
from optimizer.inputs import split_samples
from optimizer.progress import task, track
from optimizer.protocol import Twin
from optimizer.runtime import run_batches, stream_values
from passes._layers import Layer, excluded, feeds_graph_output, find_layers, name_nodes
from passes._pass import GraphoptPass
from passes._utils import remove_dead_nodes
from passes.quantization import smoothing
from passes.quantization._int8 import activation_parameters, quantize_weight
from passes.quantization._twin import Int8Twin

# Up to this many layers, each layer's sensitivity is measured on the whole model and the
# budget searched one layer at a time; beyond, both would take hours on a large model.
_EXHAUSTIVE_LAYERS = 24
# Rows of each layer's input kept for the local sensitivity estimate.
_LOCAL_ROWS = 1024


class QuantizationPass(GraphoptPass, ir.passes.InPlacePass):
    """Base of the int8 passes. After a run, ``quantized`` and ``kept_float`` name the layers and
    ``drift`` is the measured accuracy (when samples were given); the result's notes say it in words
    and its refusals say why layers stayed float.
    """

    kinds: tuple[str, ...] = ()
    left_as = "stay float"
    # What a quantized layer is called in the notes ("int4" for weight-only 4-bit).
    precision = "int8"
    # How the twin quantizes each layer's input, for its description.
    twin_inputs = ""

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
        weight_range_note: str | None = None,
    ) -> None:
        super().__init__()
        self.per_channel = per_channel
        self.reduce_range = reduce_range
        # Why the weights are 7- or 8-bit (optimizer.cpu_features), shown once layers are quantized.
        self.weight_range_note = weight_range_note
        self.exclude = tuple(exclude)
        self.quantize_outputs = quantize_outputs
        self.budget = budget if budget is not None and (budget.min_cosine, budget.max_error) != (None, None) else None
        self.samples = samples
        self.smooth_alpha = smooth_alpha
        self.quantized: list[str] = []
        self.kept_float: list[str] = []
        self.drift: Drift | None = None
        self._float: ir.Model | None = None

    @abc.abstractmethod
    def quantize_layer(self, graph: ir.Graph, layer: Layer) -> None:
        """Rewrite one layer of ``graph`` into its int8 form."""

    @abc.abstractmethod
    def twin_layer(self, twin: Int8Twin, layer: Layer) -> None:
        """Write into ``twin`` (a float copy) the arithmetic ``quantize_layer`` claims for ``layer``, in float ops."""

    def begin(self, layers: Sequence[Layer]) -> None:  # noqa: B027
        """Hook run before ``layers`` of a fresh model copy are rewritten (to reset per-graph caches)."""

    def prepare(self, model: ir.Model, layers: Sequence[Layer], batches: Sequence[Mapping[str, np.ndarray]]) -> None:  # noqa: B027
        """Hook run once before any rewrite, on the float model (static quantization calibrates here)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.quantized, self.kept_float, self.drift = [], [], None
        name_nodes(model.graph)
        layers, refused = find_layers(model.graph, self.kinds)
        for node, reason in refused.items():
            self.refuse(node.op_type, reason)
        chosen = []
        for layer in layers:
            if excluded(layer, self.exclude):
                self.kept_float.append(layer.name)
                self.refuse(layer.node.op_type, "matched by --exclude")
            elif not self.quantize_outputs and feeds_graph_output(layer):
                self.kept_float.append(layer.name)
                self.refuse(layer.node.op_type, "its result is a model output (--quantize-outputs quantizes it)")
            else:
                chosen.append(layer)
        if not chosen:
            return self.result(model, modified=False)
        if self.weight_range_note:
            self.note(self.weight_range_note)
        batches = split_samples(self.samples, model=model) if self.samples is not None else []
        self._float = model.clone() if batches else None
        norms: list[str] = []
        if self.smooth_alpha is not None and batches:
            norms = smoothing.smooth(model, chosen, batches, self.smooth_alpha)
            shown = ", ".join(norms[:8]) + (f" and {len(norms) - 8} more" if len(norms) > 8 else "")
            self.note(f"SmoothQuant (alpha {self.smooth_alpha:g}) on {len(norms)} norms: {shown or 'none'}")
        self.prepare(model, chosen, batches)
        if self.budget is not None and batches:
            chosen = self._fit_budget(model, chosen, batches)
            if not chosen:
                return self.result(model, modified=False)
        elif self.budget is not None:
            self.note("no sample inputs: the accuracy budget was not searched")
        source = model.clone()  # shares the weights' tensors; the twin replaces the quantized ones
        self._apply(model, [layer.name for layer in chosen])
        self.quantized = [layer.name for layer in chosen]
        twin = self._twin(source, self.quantized, smoothed=bool(norms))
        for layer in chosen:
            self.done(layer.node.op_type)
        if batches and self.drift is None:
            self.drift = output_drift(run_batches(self._float, batches), run_batches(model, batches))
        if self.drift is not None:
            self.note(f"{len(self.quantized)} layers {self.precision}, {len(self.kept_float)} float: {self.drift}")
        self._float = None
        return self.result(model, modified=True, twin=twin)

    def _apply(self, model: ir.Model, names: Sequence[str]) -> None:
        """Quantize the named layers of ``model`` in place."""
        wanted = set(names)
        layers = [layer for layer in find_layers(model.graph, self.kinds)[0] if layer.name in wanted]
        self.begin(layers)
        for layer in layers:
            self.quantize_layer(model.graph, layer)
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        remove_dead_nodes(model)

    def _twin(self, source: ir.Model, names: Sequence[str], *, smoothed: bool) -> Twin:
        """The float model the quantized layers named ``names`` claim to compute, built on ``source``."""
        float_source = source.clone() if smoothed else None  # the twin approximates the smoothed model
        twin = Int8Twin(source)
        for layer in twin.layers(self.kinds, names):
            self.twin_layer(twin, layer)
        base = "the input after SmoothQuant" if smoothed else "the input"
        description = (
            f"{base} with {len(names)} layers' weights int8-dequantized and inputs {self.twin_inputs}, in float32"
        )
        return Twin(twin.finish(), "int8", description, checkpoints=twin.checkpoints, source=float_source)

    def _trial(self, model: ir.Model, names: Sequence[str], batches, reference) -> Drift:
        trial = model.clone()
        self._apply(trial, names)
        return output_drift(reference, run_batches(trial, batches))

    def _fit_budget(self, model: ir.Model, layers: list[Layer], batches) -> list[Layer]:
        """The layers to quantize so the model meets the budget: all, minus the most sensitive ones."""
        reference = run_batches(self._float, batches)
        names = [layer.name for layer in layers]
        drift = self._trial(model, names, batches, reference)
        if self.budget.met(drift):
            self.drift = drift
            self.note(f"budget {self.budget.describe()} met with every layer {self.precision}")
            return layers
        sensitivity = self._sensitivity(model, layers, batches, reference)
        ranked = sorted(names, key=lambda name: sensitivity[name], reverse=True)
        found = self._fewest_float(model, names, ranked, batches, reference)
        if found is None:
            self.kept_float.extend(names)
            for layer in layers:
                self.refuse(layer.node.op_type, f"the accuracy budget cannot be met with any layer {self.precision}")
            described = self.budget.describe()
            self.note(f"budget {described} cannot be met with any {self.precision} layer; model left float")
            return []
        count, self.drift = found
        keep = set(ranked[:count])
        self.kept_float.extend(ranked[:count])
        for layer in layers:
            if layer.name in keep:
                self.refuse(layer.node.op_type, "kept float to meet the accuracy budget (most sensitive)")
        shown = ", ".join(ranked[:count][:12]) + (f" and {count - 12} more" if count > 12 else "")
        self.note(f"budget {self.budget.describe()} met keeping the {count} most sensitive layers float: {shown}")
        return [layer for layer in layers if layer.name not in keep]

    def _fewest_float(self, model, names, ranked, batches, reference) -> tuple[int, Drift] | None:
        """The smallest count of most-sensitive layers to keep float so the model meets the budget.

        One at a time for small models; for many layers, bisection over the count
        (assuming that keeping more layers float never hurts).
        """

        def attempt(count: int) -> Drift | None:
            keep = set(ranked[:count])
            remaining = [name for name in names if name not in keep]
            if not remaining:
                return None
            drift = self._trial(model, remaining, batches, reference)
            return drift if self.budget.met(drift) else None

        if len(names) <= _EXHAUSTIVE_LAYERS:
            for count in track(range(1, len(names)), "budget: most sensitive layers kept float"):
                if (drift := attempt(count)) is not None:
                    return count, drift
            return None
        low, high, best = 0, len(names) - 1, None  # attempt(low) fails; search (low, high]
        if (drift := attempt(high)) is None:
            return None
        best = (high, drift)
        with task("budget: bisection over layers kept float", total=math.ceil(math.log2(high - low))) as step:
            while high - low > 1:
                middle = (low + high) // 2
                if (drift := attempt(middle)) is not None:
                    high, best = middle, (middle, drift)
                else:
                    low = middle
                step.advance()
        return best

    def _sensitivity(self, model: ir.Model, layers: list[Layer], batches, reference) -> dict[str, float]:
        """Each layer's sensitivity: the model's drift with that layer alone int8 (a local estimate
        for matmul-like layers when there are more than ``_EXHAUSTIVE_LAYERS``)."""
        if len(layers) <= _EXHAUSTIVE_LAYERS:
            alone = track(layers, "sensitivity: each layer alone quantized")
            return {layer.name: self._cost(self._trial(model, [layer.name], batches, reference)) for layer in alone}
        local = [layer for layer in layers if layer.kind != "conv"]
        scores = _local_errors(model, local, batches, self.per_channel, self.reduce_range)
        for layer in layers:
            if layer.kind == "conv":
                scores[layer.name] = self._cost(self._trial(model, [layer.name], batches, reference))
        self.note(f"sensitivity of {len(local)} layers estimated locally (relative int8 error of each layer's output)")
        return scores

    def _cost(self, drift: Drift) -> float:
        # The budget's own measure orders the layers; cosine first when both are set.
        if self.budget.min_cosine is not None:
            return 1.0 - drift.cosine
        return drift.max_error


def sample_layer_inputs(
    model: ir.Model, layers: Sequence[Layer], batches: Sequence[Mapping[str, np.ndarray]], rows: int = _LOCAL_ROWS
) -> dict[str, np.ndarray]:
    """Up to ``rows`` rows ``[rows, K]`` of each layer's input on the batches (a seeded random subset of
    each batch's rows), by tensor name: one streamed run of ``model``."""
    names = list(dict.fromkeys(layer.activation.name for layer in layers))
    rng = np.random.default_rng(0)
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    share = max(1, rows // max(len(batches), 1))
    for run in stream_values(model, names, batches):
        for name, array in run.items():
            flat = np.asarray(array, dtype=np.float32).reshape(-1, np.shape(array)[-1])
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
        errors[layer.name] = float(np.linalg.norm(approximate - exact) / max(np.linalg.norm(exact), 1e-30))
    return errors

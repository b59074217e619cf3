"""How much faster one layer runs in each reduced-precision form, measured on this machine and cached per shape.

The accuracy budget trades accuracy for latency layer by layer (``QuantizationPass``):
keeping a layer float gives back that layer's int8 saving, which depends on the
kernel library, the execution provider, the thread count and the layer's shape
(a 384x384 projection at 60 rows gains little; a 1536-wide FFN a lot). So it is
measured, not guessed: a probe model of copies of the layer (``layer_probe``), float,
and in each rewritten form the pass would write for it (built by the pass itself: the
same operators), timed interleaved against the float one at ORT_ENABLE_ALL (medians of the
paired runs), once per (machine, ONNX Runtime version, EP, threads, op, rows x K x N,
dtype, form). Results live in a JSON file (``$GRAPHOPT_CACHE_DIR``, else
``$XDG_CACHE_HOME/graphopt``, else ``~/.cache/graphopt``) so the next optimization on
this machine reads them instead of timing again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from passes._kernel_timing import MachineTimings, OneModel, interleaved_times, runtime_key

FLOAT = "float"
_CACHE_FILE = "layer_speed.json"
# One probe run holds copies of the layer, each with its own weight and input, until their float
# weights reach STREAMED_BYTES (past a server CPU's last-level cache, as a model's layers stream
# their weights) or MAX_COPIES: at one row a lone layer's run is mostly the call's fixed cost (a
# Python call, waking the intra-op threads: 10-30 us against a 576x576 MatMul's 4 us), and its
# weight sits in cache, which a deployed decoder's does not. A layer whose own work already
# reaches PROBE_MACS multiply-adds (a prefill, an encoder) needs no copies: they would only
# multiply the probe's time and memory (1500x384x1536: 29 copies took 7.75x the time, 5x the
# memory, for the same per-layer figures within 8 %).
STREAMED_BYTES = 64 << 20
MAX_COPIES = 64
PROBE_MACS = 1 << 26
# Part of every key beside ``runtime_key``'s timing method: a probe of copies times what a lone layer
# did not, so timings cached by an older graphopt are measured again.
_METHOD = "streamed copies"
# Short comparisons: a model has a few distinct layer shapes, each timed once per form.
_PLAN = {"warmup": 5, "max_pairs": 120, "min_pairs": 20, "budget": 0.6}


@dataclass(frozen=True)
class LayerShape:
    """A matrix-multiply layer as the kernels see it: ``x [rows, k] @ W [k, n]``, on ``dtype`` inputs."""

    op: str
    rows: int
    k: int
    n: int
    dtype: str = "float32"

    def __str__(self) -> str:
        return f"{self.op} {self.rows}x{self.k}x{self.n} {self.dtype}"


class LayerSpeeds(MachineTimings):
    """Median seconds of one layer in each form, measured once per machine and shape, cached on disk.

    ``seconds(shape, builders)`` returns a time for every form in ``builders``: read from
    the cache, or measured (``measure``, by default interleaved ONNX Runtime timing of each
    form against the float layer) and written back. ``timed`` counts the forms measured
    in this process (0 when everything came from the cache).
    """

    CACHE_FILE = _CACHE_FILE

    def key(self, shape: LayerShape, form: str) -> str:
        """The cache key of ``form`` at ``shape`` on this machine, runtime, EP and thread count."""
        return f"{runtime_key(self.target, self.threads)}|{_METHOD}|{shape}|{form}"

    def seconds(self, shape: LayerShape, builders: Mapping[str, Callable[[], ir.Model]]) -> dict[str, float]:
        """Median seconds per run of the layer in each form of ``builders`` (``"float"`` must be one)."""
        if FLOAT not in builders:
            raise ValueError("the float form is what every other form is timed against")
        found = {form: self._cache.get(self.key(shape, form)) for form in builders}
        missing = [form for form in builders if found[form] is None and form != FLOAT]
        if missing or found[FLOAT] is None:
            # Every form is timed against a float run of its own; a float time already cached
            # stays the reference and the new forms are scaled to it (their ratio is what was measured).
            measured = self._measure(shape, {form: builders[form] for form in (FLOAT, *missing)})
            self.timed += len(missing)
            scale = 1.0 if found[FLOAT] is None else found[FLOAT] / float(measured[FLOAT])
            if found[FLOAT] is None:
                found[FLOAT] = float(measured[FLOAT])
                self._cache.put(self.key(shape, FLOAT), found[FLOAT])
            for form in missing:
                found[form] = float(measured[form]) * scale
                self._cache.put(self.key(shape, form), found[form])
        return {form: float(found[form]) for form in builders}

    def _time(self, shape: LayerShape, builders: Mapping[str, Callable[[], ir.Model]]) -> dict[str, float]:
        """Each form timed interleaved against the float layer; the float time is the median of all its runs."""
        x = np.random.default_rng(0).standard_normal((shape.rows, shape.k), dtype=np.float32)
        copies = probe_copies(shape)

        def timed(model: ir.Model) -> OneModel:
            if len(model.graph.inputs) != copies:  # the time is divided by the copies
                raise ValueError(f"a probe at {shape} holds {copies} copies, not {len(model.graph.inputs)}")
            feeds = {value.name: x for value in model.graph.inputs}
            return OneModel(model, feeds, self.target, self.threads, "time one quantized layer")

        reference = timed(builders[FLOAT]())
        float_times: list[float] = []
        result = {}
        for form, build in builders.items():
            if form == FLOAT:
                continue
            before, after = interleaved_times(reference, timed(build()), **_PLAN)
            float_times.extend(before)
            result[form] = float(np.median(after) / np.median(before))
        if not float_times:
            float_times, _ = interleaved_times(reference, reference, **_PLAN)
        float_seconds = float(np.median(float_times)) / copies
        return {FLOAT: float_seconds, **{form: ratio * float_seconds for form, ratio in result.items()}}


def probe_copies(shape: LayerShape) -> int:
    """How many copies of a layer one timing run holds (``STREAMED_BYTES``, ``MAX_COPIES``, ``PROBE_MACS``)."""
    weight_bytes = 4 * shape.k * shape.n
    by_bytes = -(-STREAMED_BYTES // weight_bytes)
    by_work = -(-PROBE_MACS // (shape.rows * shape.k * shape.n))
    return int(max(1, min(MAX_COPIES, by_bytes, by_work)))


def probe_names(shape: LayerShape) -> list[str]:
    """The MatMul names of ``layer_probe(shape)``: one per copy."""
    return [f"speed_probe_{shape.rows}x{shape.k}x{shape.n}_{index}" for index in range(probe_copies(shape))]


def layer_probe(shape: LayerShape, seed: int = 0) -> ir.Model:
    """``y_i = x_i [rows, k] @ W_i [k, n]`` for each of ``probe_copies(shape)`` copies, with seeded normal weights
    of their own, the MatMuls named ``probe_names(shape)`` (float32 only)."""
    if shape.dtype != "float32":
        raise ValueError(f"layer timing builds float32 layers, not {shape.dtype}")
    graph = ir.Graph([], [], nodes=[], opset_imports={"": 18, "com.microsoft": 1}, name="layer")
    for index, name in enumerate(probe_names(shape)):
        rng = np.random.default_rng(seed + index)
        weight = (rng.standard_normal((shape.k, shape.n)) * 0.05).astype(np.float32)
        x = ir.Value(name=f"{name}.x", shape=ir.Shape([shape.rows, shape.k]), type=ir.TensorType(ir.DataType.FLOAT))
        graph.inputs.append(x)
        w = ir.Value(name=f"{name}.weight", shape=ir.Shape(weight.shape), type=ir.TensorType(ir.DataType.FLOAT))
        w.const_value = ir.tensor(weight, name=w.name)
        graph.register_initializer(w)
        node = ir.Node("", "MatMul", [x, w], name=name)
        graph.append(node)
        y = node.outputs[0]
        y.name, y.type = f"{name}.y", ir.TensorType(ir.DataType.FLOAT)
        y.shape = ir.Shape([shape.rows, shape.n])
        graph.outputs.append(y)
    return ir.Model(graph, ir_version=9)

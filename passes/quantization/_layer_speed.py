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

A Conv (``ConvShape``, static int8) is timed with the conversions it pays in the model with every
other layer int8 (``conv_probe``): between int8 neighbours, which hand it uint8 and take uint8
back, float dequantizes its input, convolves in float and quantizes its output, and int8 is one
``QLinearConv``; reading the image or a float activation (HardSwish, a squeeze-excite ``Mul``),
int8 quantizes its input first, and feeding a float op it dequantizes its output, where float
does neither. Timed alone with float input and output, the int8 form would pay conversions a
chain does not, and a float layer kept in an int8 chain would look free of those it adds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from passes._kernel_timing import MachineTimings, OneModel, interleaved_times, runtime_key
from passes._utils import add_initializer

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
# A whole model against the float one, once per budget search.
_WHOLE_PLAN = {"warmup": 5, "max_pairs": 200, "min_pairs": 30, "budget": 3.0}


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

    @property
    def macs(self) -> int:
        """Multiply-adds of one run of the layer."""
        return self.rows * self.k * self.n


@dataclass(frozen=True)
class ConvShape:
    """A Conv layer as it runs in the model: ``batch`` samples of input ``[c, *spatial]``, weight
    ``[m, c / group, *kernel]``, the node's other attributes (``attributes``: sorted name, value pairs:
    strides, pads, dilations, group, auto_pad), a bias or not (float32 only); whether, with every layer
    int8, its input arrives quantized (``quantized_input``: another int8 layer's requantized output, not
    the image or a float op's result) and its output leaves quantized (``quantized_output``: every reader
    an int8 layer or a requantized residual Add)."""

    batch: int
    c: int
    spatial: tuple[int, ...]
    m: int
    kernel: tuple[int, ...]
    attributes: tuple[tuple[str, object], ...]
    bias: bool
    quantized_input: bool = True
    quantized_output: bool = True
    op = "Conv"

    def __str__(self) -> str:
        spatial, kernel = "x".join(map(str, self.spatial)), "x".join(map(str, self.kernel))
        parts = [f"{name}={value}" for name, value in self.attributes] + ([] if self.bias else ["no bias"])
        edges = (
            f"{'uint8' if self.quantized_input else 'float'} in, {'uint8' if self.quantized_output else 'float'} out"
        )
        return " ".join([f"Conv ({edges}) {self.batch}x{self.c}x{spatial} -> {self.m} kernel {kernel}", *parts])

    @property
    def group(self) -> int:
        return int(dict(self.attributes).get("group", 1))

    @property
    def macs(self) -> int:
        """Multiply-adds of one run, about (each output position read as one input position per stride)."""
        strides = dict(self.attributes).get("strides") or (1,) * len(self.spatial)
        positions = math.prod(max(1, size // stride) for size, stride in zip(self.spatial, strides))
        return self.batch * self.m * (self.c // self.group) * math.prod(self.kernel) * positions


class LayerSpeeds(MachineTimings):
    """Median seconds of one layer in each form, measured once per machine and shape, cached on disk.

    ``seconds(shape, builders)`` returns a time for every form in ``builders``: read from
    the cache, or measured (``measure``, by default interleaved ONNX Runtime timing of each
    form against the float layer) and written back. ``timed`` counts the forms measured
    in this process (0 when everything came from the cache).
    """

    CACHE_FILE = _CACHE_FILE

    def key(self, shape: LayerShape | ConvShape, form: str) -> str:
        """The cache key of ``form`` at ``shape`` on this machine, runtime, EP and thread count."""
        return f"{runtime_key(self.target, self.threads)}|{_METHOD}|{shape}|{form}"

    def seconds(
        self, shape: LayerShape | ConvShape, builders: Mapping[str, Callable[[], ir.Model]]
    ) -> dict[str, float]:
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

    def model_ratio(
        self, before: ir.Model, after: ir.Model, feeds: Mapping[str, np.ndarray]
    ) -> tuple[float, float, int]:
        """The median of ``after``'s latency over ``before``'s, paired run by run (whole models run interleaved
        on ``feeds`` at this target and thread count), the upper end of its 95 % confidence interval, and the
        pairs (not cached: a whole model is timed once)."""
        return self._models(before, after, feeds)

    def _models(self, before: ir.Model, after: ir.Model, feeds: Mapping[str, np.ndarray]) -> tuple[float, float, int]:
        first = OneModel(before, feeds, self.target, self.threads, "time the float model")
        second = OneModel(after, feeds, self.target, self.threads, "time the quantized model")
        times_before, times_after = interleaved_times(first, second, **_WHOLE_PLAN)
        ratios = np.sort(np.asarray(times_after) / np.asarray(times_before))
        return float(np.median(ratios)), median_upper_bound(ratios), len(ratios)

    def _time(self, shape: LayerShape | ConvShape, builders: Mapping[str, Callable[[], ir.Model]]) -> dict[str, float]:
        """Each form timed interleaved against the float layer; the float time is the median of all its runs."""
        copies = probe_copies(shape)

        def timed(model: ir.Model) -> OneModel:
            if len(model.graph.inputs) != copies:  # the time is divided by the copies
                raise ValueError(f"a probe at {shape} holds {copies} copies, not {len(model.graph.inputs)}")
            feeds = {value.name: _probe_feed(value) for value in model.graph.inputs}
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


def probe_copies(shape: LayerShape | ConvShape) -> int:
    """How many copies of a layer one timing run holds (``STREAMED_BYTES``, ``MAX_COPIES``, ``PROBE_MACS``;
    a Conv's weights are small beside its feature maps: its copies count work alone)."""
    by_work = -(-PROBE_MACS // max(1, shape.macs))
    if isinstance(shape, ConvShape):
        return int(max(1, min(MAX_COPIES, by_work)))
    by_bytes = -(-STREAMED_BYTES // (4 * shape.k * shape.n))
    return int(max(1, min(MAX_COPIES, by_bytes, by_work)))


def _probe_feed(value: ir.Value) -> np.ndarray:
    """Seeded input for one probe input: standard normal float32, or uniform uint8 (a Conv probe's)."""
    shape = tuple(int(size) for size in value.shape)
    rng = np.random.default_rng(0)
    if value.type is not None and value.type.dtype == ir.DataType.UINT8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.standard_normal(shape, dtype=np.float32)


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


# The uint8 scale and zero point of a Conv probe's input and output (any would do: the kernels' speed
# does not depend on them).
_PROBE_SCALE, _PROBE_ZERO_POINT = 0.05, 128


def conv_probe(shape: ConvShape, int8: bool, seed: int = 0) -> ir.Model:
    """``probe_copies(shape)`` copies of the Conv as it runs in the model, with seeded normal weights of their own,
    the Convs named ``conv_probe_names(shape)``, in float or, with ``int8``, between the quantization pairs
    ONNX Runtime fuses into ``QLinearConv`` (the pass then writes each copy's weight and bias as
    ``DequantizeLinear`` of int8 and int32). Each copy's input is uint8 where ``shape.quantized_input``
    (float: dequantized first; int8: read as it is), else float (int8: quantized first); its output uint8
    where ``shape.quantized_output`` (float: quantized last), else float (int8: dequantized last). So each
    form pays the conversions it pays in the model with every other layer int8."""
    graph = ir.Graph([], [], nodes=[], opset_imports={"": 18, "com.microsoft": 1}, name="conv")
    uint8, float32 = ir.TensorType(ir.DataType.UINT8), ir.TensorType(ir.DataType.FLOAT)

    def node(op: str, inputs: list[ir.Value], name: str) -> ir.Value:
        added = ir.Node("", op, inputs, name=name)
        graph.append(added)
        return added.outputs[0]

    scale = add_initializer(graph, "probe.scale", np.array(_PROBE_SCALE, dtype=np.float32))
    zero_point = add_initializer(graph, "probe.zero_point", np.array(_PROBE_ZERO_POINT, dtype=np.uint8))
    for index, name in enumerate(conv_probe_names(shape)):
        rng = np.random.default_rng(seed + index)
        weight_shape = (shape.m, shape.c // shape.group, *shape.kernel)
        fan_in = math.prod(weight_shape[1:])
        weight = (rng.standard_normal(weight_shape) / math.sqrt(fan_in)).astype(np.float32)
        dims = ir.Shape([shape.batch, shape.c, *shape.spatial])
        x = ir.Value(name=f"{name}.x", shape=dims, type=uint8 if shape.quantized_input else float32)
        graph.inputs.append(x)
        data = x
        if int8 and not shape.quantized_input:
            data = node("QuantizeLinear", [data, scale, zero_point], f"{name}.input_q")
        if int8 or shape.quantized_input:
            data = node("DequantizeLinear", [data, scale, zero_point], f"{name}.input_dq")
        inputs = [data, add_initializer(graph, f"{name}.weight", weight)]
        if shape.bias:
            inputs.append(
                add_initializer(graph, f"{name}.bias", (rng.standard_normal(shape.m) * 0.1).astype(np.float32))
            )
        attributes = [_attribute(key, value) for key, value in shape.attributes]
        conv = ir.Node("", "Conv", inputs, attributes=attributes, name=name)
        graph.append(conv)
        y = conv.outputs[0]
        if int8 or shape.quantized_output:
            y = node("QuantizeLinear", [y, scale, zero_point], f"{name}.output_q")
        if int8 and not shape.quantized_output:
            y = node("DequantizeLinear", [y, scale, zero_point], f"{name}.output_dq")
        y.name, y.type = f"{name}.y", uint8 if shape.quantized_output else float32
        graph.outputs.append(y)
    return ir.Model(graph, ir_version=9)


def conv_probe_names(shape: ConvShape) -> list[str]:
    """The Conv names of ``conv_probe(shape)``: one per copy."""
    return [f"speed_probe_conv_{index}" for index in range(probe_copies(shape))]


def _attribute(name: str, value: object) -> ir.Attr:
    if isinstance(value, tuple):
        return ir.AttrInt64s(name, list(value))
    if isinstance(value, str):
        return ir.AttrString(name, value)
    return ir.AttrInt64(name, int(value))


def median_upper_bound(values: np.ndarray) -> float:
    """The upper end of a distribution-free 95 % confidence interval for the median of ``values`` (the order
    statistic at n/2 + 1.96 sqrt(n)/2, by the binomial's normal approximation)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    n = len(ordered)
    index = min(n - 1, int(math.ceil(n / 2 + 1.96 * math.sqrt(n) / 2)))
    return float(ordered[index])

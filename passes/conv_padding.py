"""split-conv-padding: a tall convolution's padding written as its own ``Pad``, where measured faster on this machine.

ONNX Runtime's CPU runs a 2-D ``Conv`` in its NCHWc layout, and that kernel pays for padding inside the
convolution: with a ``k×1`` kernel (a 1-D signal laid out as ``[N, C, T, 1]``, CREPE's pitch CNN) a ``Pad`` beside
an unpadded convolution ran the layer in 0.51× the time (64×1, 31/32 rows of padding) and CREPE-tiny's dynamo export
in 0.571× its time, outputs bit for bit; a 5×5 convolution with two pixels of padding ran 1.33× slower so. So each
candidate is timed both ways on this machine (one-layer models at its own shape, batch 1, interleaved at
ORT_ENABLE_ALL; cached per machine, ONNX Runtime version and thread count, as ``factorize-lowrank``'s timings are)
and rewritten only where the split measured at most 0.95× the fused time (a model below opset 18 is then converted
to 18, an exact rewrite, so that the ``Pad`` can name its ``axes``):

    Conv(x, W, pads=[t, l, b, r])  ->  Conv(Pad(x, [t, l, b, r], axes=[2, 3]), W, pads=0)

The ``Pad`` names its ``axes`` (an input from opset 18): ONNX Runtime's PadFusion folds a ``Pad`` without one back
into the ``Conv`` when it loads the model, and ``simplify-ops`` leaves a ``Pad`` with ``axes`` before a tall ``Conv``
alone (``tall_conv``), so a second run keeps what this one measured.

Candidates: an ONNX ``Conv`` of a 4-D input whose kernel is 1 wide along one spatial axis (``k×1`` or ``1×k``, ``k``
at least 2), with explicit non-negative padding (``auto_pad`` NOTSET), a constant weight, and channels and spatial
sizes of its input known (recorded, or inferred by ONNX shape inference); others are not timed. Refuses, with a
reason in the report, a Conv ONNX Runtime runs as int8 (a float weight behind a single-scale ``DequantizeLinear``
whose result is quantized again: a ``Pad`` between would keep it float), where the split measured no faster, and
below opset 18 where the model cannot be converted. The timings run at ``--threads`` (default: the usable cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_op, onnx_opset
from optimizer.errors import RuntimeRefusedError
from optimizer.qdq_rewrites import float_layer_behind_dequantize
from passes._kernel_timing import FASTER_BELOW, SHORT_PLAN, MachineTimings, OneModel, interleaved_times, runtime_key
from passes._pass import GraphoptPass, checked_target
from passes._utils import add_initializer, constant_array, declared_shapes_kept, unique_name

_KIND = "padded tall Conv"


@dataclass(frozen=True)
class ConvShape:
    """A 2-D convolution as timed: input ``[1, channels, height, width]``, its weight shape and attributes."""

    channels: int
    height: int
    width: int
    weight: tuple[int, ...]
    pads: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    group: int

    def key(self) -> str:
        return (
            f"c{self.channels}h{self.height}w{self.width}|w{'x'.join(map(str, self.weight))}|p{self.pads}"
            f"|s{self.strides}|d{self.dilations}|g{self.group}"
        )


class PaddingSpeed(MachineTimings):
    """The split convolution's median time over the fused one's, per ``ConvShape``, timed once per machine."""

    CACHE_FILE = "conv_padding_timing.json"

    def ratio(self, shape: ConvShape) -> float:
        key = f"split|{runtime_key(self.target, self.threads)}|{shape.key()}"
        cached = self._cache.get(key)
        if cached is not None:
            return float(cached)
        value = float(self._measure(shape))
        self.timed += 1
        self._cache.put(key, value)
        return value

    def _time(self, shape: ConvShape) -> float:
        x = np.random.default_rng(0).standard_normal((1, shape.channels, shape.height, shape.width), dtype=np.float32)
        fused = OneModel(_one_conv(shape, split=False), {"x": x}, self.target, self.threads, "time a padded Conv")
        split = OneModel(_one_conv(shape, split=True), {"x": x}, self.target, self.threads, "time a padded Conv")
        times_fused, times_split = interleaved_times(fused, split, **SHORT_PLAN)
        return float(np.median(times_split) / np.median(times_fused))


class SplitConvPaddingPass(GraphoptPass, ir.passes.InPlacePass):
    """Write a tall convolution's padding as a ``Pad`` with ``axes`` before it where measured faster (module docstring:
    the candidates, the timing and the refusals)."""

    left_as = "left padded inside"

    def __init__(self, target: str = "cpu", threads: int | None = None, speed: PaddingSpeed | None = None) -> None:
        super().__init__()
        self.target = checked_target(target)
        self.speed = speed or PaddingSpeed(target, threads)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        candidates = [node for node in model.graph if _candidate(node)]
        if not candidates:
            return self.result(model, modified=False)
        from passes.fusion._inferred_shapes import inferred_shapes, lacks_shapes  # imported where a candidate needs it

        if lacks_shapes(model):
            with inferred_shapes(model):
                shapes = [(node, _shape_of(node)) for node in candidates]
        else:
            shapes = [(node, _shape_of(node)) for node in candidates]
        faster: list[tuple[int, ConvShape, float]] = []
        positions = {id(node): index for index, node in enumerate(model.graph)}
        for node, shape in shapes:
            if float_layer_behind_dequantize(node) is not None:
                # ONNX Runtime quantizes such a layer's float weight and runs it as QLinearConv; a Pad between the
                # DequantizeLinear and the Conv keeps it float (a 33x1 layer: the model 1.78x slower, outputs moved
                # by a quantization step), and the timing, float against float, would not see it.
                self.refuse(
                    _KIND,
                    "ONNX Runtime runs it as int8 (its input a single-scale DequantizeLinear, its result quantized "
                    "again): a Pad before it would keep it float",
                )
                continue
            if isinstance(shape, str):
                self.refuse(_KIND, shape)
                continue
            try:
                ratio = self.speed.ratio(shape)
            except RuntimeRefusedError as error:
                self.refuse(_KIND, f"ONNX Runtime could not time it: {error.reason}")
                continue
            if ratio > FASTER_BELOW:
                self.refuse(_KIND, f"its padding as a Pad measured no faster on {self.target} ({ratio:.2f}x its time)")
                continue
            faster.append((positions[id(node)], shape, ratio))
        if not faster:
            return self.result(model, modified=False)
        opset = onnx_opset(model.opset_imports, 0)
        written = model
        if opset < 18:
            # A Pad names its axes from opset 18; without them ONNX Runtime folds it back into the Conv.
            written = _at_opset_18(model)
            if written is None:
                for _ in faster:
                    self.refuse(
                        _KIND,
                        f"measured faster split, but the model could not be converted from opset {opset} "
                        "to 18, where a Pad names its axes (ONNX Runtime folds one without them back)",
                    )
                return self.result(model, modified=False)
        nodes = list(written.graph)
        taken = {node.name for node in nodes if node.name} | {
            value.name for node in nodes for value in (*node.inputs, *node.outputs) if value is not None
        }
        for position, shape, ratio in faster:
            node = nodes[position]
            _split(written.graph, node, shape, taken)
            self.done(_KIND)
            where = node.name or node.outputs[0].name
            self.note(f"{where}: padding {list(shape.pads)} as a Pad, measured {ratio:.2f}x the layer's time")
        if written is not model:
            model.graph, model.ir_version = written.graph, written.ir_version
            model.functions.clear()
            model.functions.update(written.functions)
            self.note(
                f"converted from opset {opset} to 18, where a Pad names its axes (ONNX Runtime folds one without "
                "them back into its Conv)"
            )
        return self.result(model, modified=True)


def _at_opset_18(model: ir.Model) -> ir.Model | None:
    """A copy of ``model`` converted to opset 18 (onnxscript's converter, an exact rewrite) with its nodes in the same
    order (the candidates are found by position), or None where it could not be."""
    from onnxscript import version_converter

    converted = model.clone()
    version_converter.convert_version(converted, 18, fallback=True)
    if onnx_opset(converted.opset_imports, 0) != 18 or [n.op_type for n in converted.graph] != [
        n.op_type for n in model.graph
    ]:
        return None
    declared_shapes_kept(model, converted)  # --static-shapes' declared shapes: the converter rebuilt them
    return converted


def tall_conv(node: ir.Node) -> bool:
    """A 2-D ONNX ``Conv`` with a float32 ``k×1`` or ``1×k`` constant weight (``k`` at least 2)."""
    if not is_onnx_op(node, "Conv") or len(node.inputs) < 2 or node.inputs[0] is None:
        return False
    weight = constant_array(node.inputs[1])
    if weight is None or weight.ndim != 4 or weight.dtype != np.float32:
        return False
    kernel = weight.shape[2:]
    return 1 in kernel and max(kernel) >= 2


def _candidate(node: ir.Node) -> bool:
    """A ``tall_conv`` with explicit padding that is not all zero."""
    if not tall_conv(node) or (node.attributes.get_string("auto_pad", "NOTSET") or "NOTSET") != "NOTSET":
        return False
    pads = node.attributes.get_ints("pads", None)
    return pads is not None and len(pads) == 4 and any(pads) and min(pads) >= 0


def _shape_of(node: ir.Node) -> ConvShape | str:
    """``node`` as timed, or why it cannot be: its input's channels and spatial sizes must be known."""
    x = node.inputs[0]
    dims = list(x.shape) if x.shape is not None else []
    if len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:]):
        return "its input's channels and spatial sizes are not known: not timed"
    weight = constant_array(node.inputs[1])
    return ConvShape(
        channels=dims[1],
        height=dims[2],
        width=dims[3],
        weight=tuple(int(d) for d in weight.shape),
        pads=tuple(node.attributes.get_ints("pads")),
        strides=tuple(node.attributes.get_ints("strides", [1, 1])),
        dilations=tuple(node.attributes.get_ints("dilations", [1, 1])),
        group=node.attributes.get_int("group", 1),
    )


def _split(graph: ir.Graph, node: ir.Node, shape: ConvShape, taken: set[str]) -> None:
    """``Pad(x, pads, axes=[2, 3])`` before ``node``, whose own padding becomes zero."""
    name = node.name or node.outputs[0].name
    pads = add_initializer(graph, unique_name(f"{name}_padding", taken), np.array(shape.pads, np.int64))
    axes = add_initializer(graph, unique_name(f"{name}_padding_axes", taken), np.array([2, 3], np.int64))
    padded = ir.Value(name=unique_name(f"{name}_padded", taken), type=node.inputs[0].type)
    pad = ir.Node(
        "",
        "Pad",
        [node.inputs[0], pads, None, axes],
        attributes=[ir.AttrString("mode", "constant")],
        name=unique_name(f"{name}_pad", taken),
        outputs=[padded],
    )
    graph.insert_before(node, pad)
    node.replace_input_with(0, padded)
    node.attributes["pads"] = ir.AttrInt64s("pads", [0, 0, 0, 0])


def _one_conv(shape: ConvShape, *, split: bool) -> bytes:
    """A one-``Conv`` model of ``shape`` (random weight), its padding inside the Conv or as a ``Pad`` before it."""
    size = ir.Shape([1, shape.channels, shape.height, shape.width])
    x = ir.Value(name="x", shape=size, type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 18}, name="conv")
    weight = np.random.default_rng(1).standard_normal(shape.weight, dtype=np.float32)
    w = add_initializer(graph, "w", weight)
    data = x
    pads = list(shape.pads)
    if split:
        padding = add_initializer(graph, "pads", np.array(pads, np.int64))
        axes = add_initializer(graph, "axes", np.array([2, 3], np.int64))
        pad = ir.Node("", "Pad", [x, padding, None, axes], attributes=[ir.AttrString("mode", "constant")], name="pad")
        graph.append(pad)
        data, pads = pad.outputs[0], [0, 0, 0, 0]
        data.name = "padded"
    conv = ir.Node(
        "",
        "Conv",
        [data, w],
        attributes=[
            ir.AttrInt64s("pads", pads),
            ir.AttrInt64s("strides", list(shape.strides)),
            ir.AttrInt64s("dilations", list(shape.dilations)),
            ir.AttrInt64("group", shape.group),
        ],
        name="conv",
    )
    graph.append(conv)
    conv.outputs[0].name, conv.outputs[0].type = "y", ir.TensorType(ir.DataType.FLOAT)
    graph.outputs.append(conv.outputs[0])
    return ir.to_proto(ir.Model(graph, ir_version=9)).SerializeToString()

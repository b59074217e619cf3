"""The exact float twins of the reduced-precision passes: the approximation each claims, written in plain ONNX.

A twin (``optimizer.protocol.Twin``) is the pass's input with its declared
approximation applied in float32 and nothing else, built by different code from the
rewrite it checks: the int8 passes write integer kernels (DynamicQuantizeMatMul,
QAttention, QDQ pairs ORT fuses into QLinearConv), their twin writes the same
quantize-dequantize steps as ``DynamicQuantizeLinear``/``QuantizeLinear`` →
``DequantizeLinear`` on each input and float constants holding each dequantized
weight, and runs as written (ORT_DISABLE_ALL). A realization that differs from its
claim — a scale off by 2x, a transposed weight, a kernel that saturates — then shows
up as a difference between the result and its twin. (Not every difference is a wrong
realization: where the twin's float arithmetic lands an activation within an ulp of a
rounding tie, the kernel may round it the other way, and that one step can cascade
through later layers; ``benchmarks/twin_tolerance.py`` measures how far.)

The float16 twin is the input with the weights ORT's converter stores as float16
rounded to float16, and every activation it stores as float16 rounded to float16 (infinite
past 65504), computing in float32 (``float16_twin``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np
import onnx_ir as ir
from onnxscript import version_converter

from optimizer.domains import onnx_opset
from passes._layers import Layer, bias_add, find_layers
from passes._utils import add_initializer, remove_dead_nodes, weight_array
from passes.quantization._int8 import ROW_LEVELS, ROW_SCALE_FLOOR, QuantizedWeight

# DynamicQuantizeLinear's first opset; older models' twins are converted to the oldest
# opset onnxscript's version converter targets.
_DYNAMIC_QUANTIZE_OPSET = 11
_CONVERTED_OPSET = 18


class Int8Twin:
    """A float copy of an int8 pass's input, into which the pass writes the arithmetic it claims, layer by layer.

    ``model`` is the copy (the caller clones); ``layers`` finds the chosen layers in it.
    Each activation tensor is quantized at most once, as the passes do: a tensor read by
    several layers (Q/K/V projections of one norm) goes through one quantize-dequantize.
    """

    def __init__(self, model: ir.Model) -> None:
        opset = onnx_opset(model.opset_imports, 1)
        if opset < _DYNAMIC_QUANTIZE_OPSET:
            # An exact rewrite of the copy; the realization needs none (its kernels are com.microsoft ops).
            version_converter.convert_version(model, _CONVERTED_OPSET, fallback=True)
        self.model = model
        self._dequantized: dict[str, ir.Value] = {}
        self._sources: dict[int, ir.Value] = {}
        self._checkpoints: dict[str, None] = {}
        self._layer_outputs: dict[tuple[str, str], None] = {}

    def layers(self, kinds: Iterable[str], names: Iterable[str], *, float16: bool = False) -> list[Layer]:
        """The twin's layers named ``names`` (of the given kinds; float16 layers too with ``float16``), in graph
        order."""
        wanted = set(names)
        found = find_layers(self.model.graph, kinds, float16=float16)[0]
        layers = [layer for layer in found if layer.name in wanted]
        for layer in layers:
            if layer.activation is not None and layer.activation.name:
                self._checkpoints[layer.activation.name] = None
                if _probed(layer):
                    # A bias Add after the MatMul may be absorbed into the realization's kernel, its output kept.
                    following = bias_add(layer)
                    output = following[1].outputs[0] if following is not None else layer.node.outputs[0]
                    self._layer_outputs[(layer.activation.name, output.name)] = None
        return layers

    @property
    def checkpoints(self) -> tuple[str, ...]:
        """The float activations the twin's layers read, in graph order (``optimizer.protocol.Twin.checkpoints``)."""
        return tuple(self._checkpoints)

    @property
    def layer_outputs(self) -> tuple[tuple[str, str], ...]:
        """Each MatMul, Gemm or Conv layer's (activation, output) names, in graph order, the output after a MatMul's
        bias Add where it has one (``optimizer.protocol.Twin.layer_outputs``)."""
        return tuple(self._layer_outputs)

    def quantize_input(
        self, layer: Layer, scale: np.floating | None = None, zero_point: np.integer | None = None
    ) -> None:
        """Route the layer's data input through uint8 quantize-dequantize.

        Without ``scale``: ``DynamicQuantizeLinear`` (this run's range, what ORT's dynamic
        int8 kernels compute). With it: ``QuantizeLinear`` at the calibrated ``scale`` and
        ``zero_point``.
        """
        layer.node.replace_input_with(0, self._qdq(layer.activation, layer.node, scale, zero_point))

    def quantize_layer_rows(self, layer: Layer, weight: QuantizedWeight) -> None:
        """Make a MatMul/Gemm compute ``(Round(x / s) @ q) * (s * w_scale)``: per-row int8 input, int8 weight.

        ``s = max(max|x_row| / 127, float32's smallest normal)`` per row, ``q`` the int8
        weight held as float. This is the product of the dequantized input and weight,
        associated as ``MatMulIntegerToFloat`` computes it: an exact integer sum (float32
        holds these integer sums exactly below 2**24), then one multiply by the product
        of the scales, so one layer matches the kernel to float32 rounding (1e-7 on the
        test MLP; 3e-7 associated the other way). Across a deep decoder the result can
        still stray from this twin where other float differences (ORT_ENABLE_ALL's fused
        ops) flip a row's rounding tie and the flip cascades: on SmolLM2-135M's held-out
        text a token row 2.4-5.5x farther from the float model than the twin's.
        A Gemm's own bias is added after the scaling.
        """
        value, node = layer.activation, layer.node
        key = f"{value.name}\0rows"
        if key not in self._dequantized:
            self._dequantized[key] = self._row_rounded(value, node)
        rounded, scale = self._dequantized[key]
        node.replace_input_with(0, rounded)
        self.set_weight(layer, weight.values.astype(np.float32))
        graph = self.model.graph
        output = node.outputs[0]
        weight_scale = add_initializer(graph, f"{node.name}.twin_weight_scale", weight.scale.astype(np.float32))
        product = ir.Node("", "Mul", [scale, weight_scale], name=f"{node.name}_twin_scales")
        scaled = ir.Node("", "Mul", [output, product.outputs[0]], name=f"{node.name}_twin_scaled")
        added = [product, scaled]
        if layer.kind == "gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = node.inputs[2]
            node.replace_input_with(2, None)
            added.append(ir.Node("", "Add", [scaled.outputs[0], bias], name=f"{node.name}_twin_bias"))
        self.follow_output(node, added, "twin_integer_sum")

    def follow_output(self, node: ir.Node, added: Sequence[ir.Node], suffix: str) -> None:
        """Insert ``added`` (which read ``node``'s first output) after ``node``, the last one's output standing
        for that output from then on: for every other user, under its name (the first output is renamed with
        ``suffix``), and as the graph output."""
        output = node.outputs[0]
        ours = {id(made) for made in added}
        users = [(user, index) for user, index in output.uses() if id(user) not in ours]
        result = added[-1].outputs[0]
        result.shape, result.type = output.shape, output.type
        self.model.graph.insert_after(node, added)
        for user, index in users:
            user.replace_input_with(index, result)
        name = output.name
        output.name = f"{name}.{suffix}"
        result.name = name
        if output.is_graph_output():
            outputs = self.model.graph.outputs
            outputs[list(outputs).index(output)] = result

    def quantize_output(self, node: ir.Node, scale: np.floating, zero_point: np.uint8) -> None:
        """Route every user of ``node``'s first output through one quantize-dequantize pair (a requantized output)."""
        output = node.outputs[0]
        users = list(output.uses())
        order = {id(n): i for i, n in enumerate(self.model.graph)}
        first = min((user for user, _ in users), key=lambda user: order[id(user)])
        dequantized = self._qdq(output, first, scale, zero_point)
        for user, index in users:
            user.replace_input_with(index, dequantized)

    def source(self, value: ir.Value) -> ir.Value:
        """The float tensor ``value`` stands for: itself, or the one it is the dequantized side of."""
        return self._sources.get(id(value), value)

    def set_weight(self, layer: Layer, weight: np.ndarray) -> None:
        """Give the layer ``weight`` (in ``Layer.weight``'s layout: ``[K, N]`` for MatMul, Gemm and Attention)."""
        weight = np.asarray(weight, dtype=np.float32).reshape(layer.weight.shape)
        if layer.kind == "gemm" and layer.node.attributes.get_int("transB", 0):
            weight = weight.T
        # Written as a new initializer: the layer may read its weight through Transpose(table).
        written = add_initializer(self.model.graph, f"{layer.node.name}.twin_1", np.ascontiguousarray(weight))
        layer.node.replace_input_with(1, written)

    def set_input(self, node: ir.Node, index: int, array: np.ndarray) -> None:
        """Replace a constant input of ``node`` by ``array`` (float32, shaped like the constant it replaces, or
        ``[N]`` where that was one value broadcast to every output feature: a Gemm's one-value C)."""
        old = weight_array(node.inputs[index])  # a Conv's bias may be stored int8 and dequantized by hand
        array = np.asarray(array, dtype=np.float32)
        array = np.ascontiguousarray(array.reshape(old.shape) if array.size == old.size else array.reshape(-1))
        node.replace_input_with(index, add_initializer(self.model.graph, f"{node.name}.twin_{index}", array))

    def finish(self) -> ir.Model:
        """The twin, with the float weights it replaced removed."""
        remove_dead_nodes(self.model)
        return self.model

    def _row_rounded(self, value: ir.Value, before: ir.Node) -> tuple[ir.Value, ir.Value]:
        graph = self.model.graph
        name = value.name

        def constant(suffix: str, number, dtype) -> ir.Value:
            return add_initializer(graph, f"{name}.twin_{suffix}", np.array(number, dtype=dtype))

        if onnx_opset(self.model.opset_imports, 1) >= 18:
            axes = [constant("row_axes", [-1], np.int64)]
            attributes = [ir.AttrInt64("keepdims", 1)]
        else:
            axes, attributes = [], [ir.AttrInt64s("axes", [-1]), ir.AttrInt64("keepdims", 1)]
        magnitude = ir.Node("", "Abs", [value])
        peak = ir.Node("", "ReduceMax", [magnitude.outputs[0], *axes], attributes=attributes)
        step = ir.Node("", "Div", [peak.outputs[0], constant("row_levels", ROW_LEVELS, np.float32)])
        scale = ir.Node("", "Max", [step.outputs[0], constant("row_floor", ROW_SCALE_FLOOR, np.float32)])
        divided = ir.Node("", "Div", [value, scale.outputs[0]])
        rounded = ir.Node("", "Round", [divided.outputs[0]])
        nodes = [magnitude, peak, step, scale, divided, rounded]
        for index, node in enumerate(nodes):
            node.name = f"{name}_twin_row_{index}"
        result = rounded.outputs[0]
        result.name = f"{name}.twin_row_integers"
        result.shape, result.type = value.shape, value.type
        graph.insert_before(before, nodes)
        return result, scale.outputs[0]

    def _qdq(self, value: ir.Value, before: ir.Node, scale, zero_point) -> ir.Value:
        if value.name in self._dequantized:
            return self._dequantized[value.name]
        if id(value) in self._sources:
            return value  # already the dequantized side of a pair (a Conv output read by the next Conv)
        graph = self.model.graph
        if scale is None:
            quantize = ir.Node("", "DynamicQuantizeLinear", [value], num_outputs=3, name=f"{value.name}_twin_q")
            inputs = list(quantize.outputs)
        else:
            parameters = [
                add_initializer(graph, f"{value.name}.twin_scale", np.array(scale, dtype=np.float32)),
                add_initializer(graph, f"{value.name}.twin_zero_point", np.array(zero_point, dtype=np.uint8)),
            ]
            quantize = ir.Node("", "QuantizeLinear", [value, *parameters], name=f"{value.name}_twin_q")
            inputs = [quantize.outputs[0], *parameters]
        dequantize = ir.Node("", "DequantizeLinear", inputs, name=f"{value.name}_twin_dq")
        dequantize.outputs[0].name = f"{value.name}.twin_dequantized"
        dequantize.outputs[0].shape, dequantize.outputs[0].type = value.shape, value.type
        graph.insert_before(before, [quantize, dequantize])
        self._dequantized[value.name] = dequantize.outputs[0]
        self._sources[id(dequantize.outputs[0])] = value
        return dequantize.outputs[0]


def _probed(layer: Layer) -> bool:
    """Whether ``optimizer.layer_probe`` can probe ``layer``: a MatMul or Gemm reading its activation as the left
    operand, untransposed (probe rows), or a Conv (its real input, quantized by the same QuantizeLinear)."""
    node = layer.node
    if layer.kind not in ("matmul", "gemm", "conv") or node.inputs[0] is not layer.activation:
        return False
    return not (layer.kind == "gemm" and node.attributes.get_int("transA", 0))


def round_to_float16(array: np.ndarray) -> np.ndarray:
    """``array`` (float32) rounded to float16 the way ORT's converter stores it, kept float32.

    The converter clamps magnitudes to ``[5.96e-8, 65504]`` first: tiny nonzero values
    become float16's smallest subnormal instead of zero, large ones its largest finite value.
    """
    from onnxruntime.transformers.float16 import convert_np_to_float16

    array = np.asarray(array, dtype=np.float32)
    clamped = convert_np_to_float16(array.reshape(-1))  # it indexes with np.where: no 0-d arrays
    return np.asarray(clamped, dtype=np.float16).astype(np.float32).reshape(array.shape)


def float16_twin(
    model: ir.Model,
    blocked_ops: Iterable[str],
    *,
    keep_io_types: bool,
    kept_nodes: Collection[str] = (),
    float16_values: Collection[str] = (),
) -> ir.Model:
    """A copy of ``model`` with every float32 weight the float16 converter stores as float16 rounded to it, and each
    activation named in ``float16_values`` rounded to float16, in float32.

    Which weights (onnxruntime's ``convert_float_to_float16``): an initializer read by at
    least one node not blocked (its op not in ``blocked_ops``, its name not in ``kept_nodes``:
    the converter's ``op_block_list`` and ``node_block_list``), and not at an input its op keeps
    float32 (Resize's scales), and the float tensors in the attributes of every node not blocked
    (Constant values). Activations: with ``float16_values`` (the node outputs, of any node,
    that the converter's shape inference types float32: it casts a blocked node's float32
    result to float16 after it), each of them and, with ``keep_io_types``, the float graph
    inputs (it casts them to float16 first) are rounded by a ``Cast`` to float16 and back,
    so a value past 65504 becomes infinite: the model as float16 kernels compute it (a
    GPU's), which ONNX Runtime's CPU EP does not show, as it runs most float16 ops as
    float32 kernels between Casts it then drops. Without
    ``keep_io_types`` the float graph inputs and outputs are float16 too, cast to and
    from float32 at the graph's edge.
    """
    from onnxruntime.transformers.float16 import ALWAYS_FLOAT_INPUTS

    always_float = dict(ALWAYS_FLOAT_INPUTS)
    if onnx_opset(model.opset_imports, 11) <= 10:
        # As the converter reads them: opset 10's Resize(X, scales) keeps input 1 float32. Rounded here, scales of
        # 4/3 sized a 3-pixel image 3 where the result (and the input) gives 4, and the pass was rolled back.
        always_float["Resize"] = [1]
    blocked, kept = set(blocked_ops), set(kept_nodes)
    twin = model.clone()
    graphs = {id(twin.graph): twin.graph}
    for node in ir.traversal.RecursiveGraphIterator(twin.graph):
        graphs.setdefault(id(node.graph), node.graph)
        if node.op_type in blocked or node.name in kept:
            continue
        for name, attribute in list(node.attributes.items()):
            if attribute.type == ir.AttributeType.TENSOR and attribute.value.dtype == ir.DataType.FLOAT:
                rounded = ir.tensor(round_to_float16(attribute.value.numpy()), name=attribute.value.name)
                node.attributes[name] = ir.AttrTensor(name, rounded)
    for graph in graphs.values():
        for value in graph.initializers.values():
            if value.const_value is None or value.const_value.dtype != ir.DataType.FLOAT:
                continue
            if any(
                user.op_type not in blocked
                and user.name not in kept
                and index not in always_float.get(user.op_type, ())
                for user, index in value.uses()
            ):
                value.const_value = ir.tensor(round_to_float16(value.const_value.numpy()), name=value.name)
    if float16_values:
        _round_activations(twin.graph, set(float16_values), inputs=keep_io_types)
    if not keep_io_types:
        _float16_interface(twin.graph)
    return twin


def _round_activations(graph: ir.Graph, names: set[str], *, inputs: bool) -> None:
    """Round to float16 each float node output of ``graph`` and its subgraphs named in ``names``, and with ``inputs``
    each float graph input (``_rounded_to_float16``)."""
    values = [value for value in graph.inputs if inputs and value.dtype == ir.DataType.FLOAT]
    nodes = list(ir.traversal.RecursiveGraphIterator(graph))
    for node in nodes:
        values += [
            value
            for value in node.outputs
            if value.name in names and value.dtype in (None, ir.DataType.FLOAT) and value.const_value is None
        ]
    _rounded_to_float16(graph, values)


def _rounded_to_float16(graph: ir.Graph, values: Iterable[ir.Value]) -> None:
    """Round each of ``values`` (float node outputs of ``graph`` or its subgraphs, or graph inputs of ``graph``) to
    float16 (a ``Cast`` to float16 and back) for every reader: a rounded node output takes the name, the exact one
    ``<name>.unrounded``, so outputs keep theirs (a graph input keeps its own; ``<name>.rounded`` is read)."""
    for value in values:
        producer = value.producer()
        home = graph if producer is None else producer.graph
        name = value.name
        to_half = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT16)])
        back = ir.Node("", "Cast", to_half.outputs, attributes=[ir.AttrInt64("to", ir.DataType.FLOAT)])
        uses = [(user, index) for user, index in value.uses() if user is not to_half]
        to_half.outputs[0].name = f"{name}.float16"
        if producer is None:  # a graph input keeps its name: the rounded value is another
            back.outputs[0].name = f"{name}.rounded"
        else:
            value.name, back.outputs[0].name = f"{name}.unrounded", name
        back.outputs[0].shape, back.outputs[0].dtype = value.shape, ir.DataType.FLOAT
        for user, index in uses:
            user.replace_input_with(index, back.outputs[0])
        for index, output in enumerate(list(home.outputs)):
            if output is value and producer is not None:  # a graph input also an output stays as it is
                home.outputs[index] = back.outputs[0]
        if producer is None:
            if len(home):
                home.insert_before(home.node(0), [to_half, back])
            else:
                home.extend([to_half, back])
        else:
            home.insert_after(producer, [to_half, back])


def _float16_interface(graph: ir.Graph) -> None:
    """Make the graph's float32 inputs and outputs float16, with Casts to and from float32 inside."""
    inputs = [value for value in graph.inputs if value.dtype == ir.DataType.FLOAT]
    _read_as_float32(graph, inputs)
    for value in inputs:
        # A new type object: clones share their values' types, and setting ``dtype`` in
        # place would retype the pass's input too.
        value.type = ir.TensorType(ir.DataType.FLOAT16)
    _outputs_as_float16(graph, {value.name for value in graph.outputs if value.dtype == ir.DataType.FLOAT})


def _read_as_float32(graph: ir.Graph, inputs: Sequence[ir.Value]) -> None:
    """Have every reader of each of ``inputs`` (graph inputs) read it through a ``Cast`` to float32 at the graph's
    start, named ``<name>.float32``."""
    casts = []
    for value in inputs:
        uses = list(value.uses())
        cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT)])
        cast.name = f"{value.name}_f32"
        cast.outputs[0].name = f"{value.name}.float32"
        cast.outputs[0].shape, cast.outputs[0].dtype = value.shape, ir.DataType.FLOAT
        for user, index in uses:
            user.replace_input_with(index, cast.outputs[0])
        casts.append(cast)
    if casts and len(graph):
        graph.insert_before(graph.node(0), casts)
    else:
        graph.extend(casts)


def _outputs_as_float16(graph: ir.Graph, names: Collection[str]) -> None:
    """Make the float32 graph outputs named in ``names`` float16: a ``Cast`` of the float32 value, under the output's
    name (the value's own becomes ``<name>.float32``); an output listed twice is cast once."""
    halves: dict[int, ir.Value] = {}
    for index, value in enumerate(list(graph.outputs)):
        if id(value) in halves:
            graph.outputs[index] = halves[id(value)]
            continue
        if value.name not in names or value.dtype != ir.DataType.FLOAT:
            continue
        cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT16)])
        cast.name = f"{value.name}_f16"
        name, value.name = value.name, f"{value.name}.float32"
        cast.outputs[0].name, cast.outputs[0].shape = name, value.shape
        cast.outputs[0].dtype = ir.DataType.FLOAT16
        graph.append(cast)
        graph.outputs[index] = halves[id(value)] = cast.outputs[0]


def _widened(type_: ir.TypeProtocol) -> ir.TypeProtocol:
    """``type_`` (a tensor, or a sequence or optional of them, of float16) with float32 tensors: a container is not
    rounded by a Cast (ONNX Runtime refused a ``SplitToSequence`` typed a tensor, and a result was rolled back), and
    needs none, as the ops making one (``SplitToSequence``, ``SequenceConstruct``) only move values rounded before."""
    if isinstance(type_, (ir.SequenceType, ir.OptionalType)):
        return type(type_)(_widened(type_.elem_type))
    return type(type_)(ir.DataType.FLOAT)  # a tensor (a sparse one too)


def float16_kernels(result: ir.Model) -> ir.Model | None:
    """``result`` (a model computing in float16) as float16 kernels compute it, written in float32 for a CPU: every
    float16 weight and constant widened exactly, every op computing in float32, and every value ``result`` stores as
    float16 (a node's float16 output, a float16 graph input) rounded to float16 after it is computed (a ``Cast`` to
    float16 and back: infinite past 65504; a sequence of float16 tensors is only retyped, ``_widened``). Its inputs
    and outputs keep ``result``'s types. None where ``result`` holds a subgraph or a function (their values' types
    are not rewritten here), or a float16 value of unknown type.

    Built from the result itself, not from the input: ONNX Runtime's CPU EP runs most float16 ops as float32
    kernels and drops the Casts around them, so a float16 value that overflows on a GPU is finite in the result run
    on CPU, and a model of the rounding built from the input by names held a realization computing another value
    under an input's name to the input's value (``g = h * 3e4`` in float16, 1.9e6 here and infinite on a GPU)."""
    if result.functions or any(
        attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for node in result.graph
        for attribute in node.attributes.values()
    ):
        return None
    model = result.clone()
    graph = model.graph
    half, single = ir.DataType.FLOAT16, ir.DataType.FLOAT
    for value in graph.initializers.values():
        if value.const_value is not None and value.const_value.dtype == half:
            value.const_value = ir.tensor(value.const_value.numpy().astype(np.float32), name=value.name)
            value.type = ir.TensorType(single)  # a new type object: a clone shares its values' types
    stored: list[ir.Value] = []
    for node in list(graph):
        for name, attribute in list(node.attributes.items()):
            if attribute.is_ref():
                continue
            if attribute.type == ir.AttributeType.TENSOR and attribute.value.dtype == half:
                widened = ir.tensor(attribute.value.numpy().astype(np.float32), name=attribute.value.name)
                node.attributes[name] = ir.AttrTensor(name, widened)
            elif name in ("to", "dtype") and attribute.type == ir.AttributeType.INT and attribute.value == half:
                node.attributes[name] = ir.AttrInt64(name, single)
        for value in node.outputs:
            if value.type is None and value.uses():
                return None  # a value whose type nothing says may be float16: its rounding would be missed
            if value.dtype == half and isinstance(value.type, ir.TensorType):
                value.type = ir.TensorType(single)
                stored.append(value)
            elif value.dtype == half:  # a sequence or optional of float16 tensors: its elements are rounded already
                value.type = _widened(value.type)
    _read_as_float32(graph, [value for value in graph.inputs if value.dtype == half])
    _rounded_to_float16(graph, stored)
    _outputs_as_float16(graph, {value.name for value in result.graph.outputs if value.dtype == half})
    return model

"""Float16 conversion for GPU targets, with numerically sensitive ops kept in float32.

The conversion itself is onnxruntime's ``transformers.float16.convert_float_to_float16``
(the converter ORT's own transformer optimizer uses); this pass chooses what stays
float32 and keeps the graph's input and output types.

The converter clamps the constants it converts to float16's finite range (its
``max_finite_val``), but not the ones it keeps float32 for a blocked op. Where such a
constant bounds a Max or Min whose result is cast to float16, the bound would become
infinite at the Cast: fused attention floors its additive mask at float32's minimum
(``Max(mask, -3.4e38)``, so a fully masked row stays finite), and cast to float16 the
floor is -inf again. A left-padded query under causal attention sees no key, its row
of scores is all -inf, its output NaN, and every later layer reads that NaN through
the padded position's key and value (NaN times a softmax weight of 0 is NaN): legacy
Llama's left-padded rows came out NaN throughout. Those bounds are clamped to float16's
range first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from typing import TypeVar

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import common as common_passes

from optimizer.domains import MS_DOMAIN
from optimizer.errors import RuntimeRefusedError
from optimizer.protocol import Twin
from optimizer.runtime import open_session, session_options
from passes._pass import GraphoptPass
from passes._utils import constant_array, unique_name
from passes.quantization._twin import float16_kernels, float16_twin

# Kept float32, with Casts at their boundaries: the reductions of decomposed
# normalizations (a sum of squares overflows float16's 65504 quickly), and softmax
# over raw scores. The fused norm and attention ops accumulate in float32 themselves.
SENSITIVE_OPS = ("Pow", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Sqrt", "Softmax", "LogSoftmax")

# Kept float32 too: quantization ops, whose float input or output is float32 only (DynamicQuantizeLinear; Quantize-
# and DequantizeLinear before opset 19; onnxruntime's dynamic int8 ops). Converted, an int8 model's float16 input
# fed DynamicQuantizeLinear, and ONNX Runtime refused the result.
QUANTIZATION_OPS = (
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
)

# Kept float32 too: ops whose float output is float32 whatever their inputs' type (their ``output_datatype``
# attribute, float32 by default, or ONNX's own type constraint says so). The converter declared it float16, and ONNX
# Runtime refused the result (a HannWindow of a computed length: "Type (tensor(float16)) of output arg (w) does not
# match expected type (tensor(float))"); kept float32, their result is cast to float16 after them.
FLOAT32_OUTPUT_OPS = ("TfIdfVectorizer", "HannWindow", "HammingWindow", "BlackmanWindow", "MelWeightMatrix")

# A kept reduction's result is cast to float16 right after it, and a sum of squares past 65504 became infinite there,
# before the division by the width that would bring it back (magika's jax LayerNorm: ReduceSum(h * h) of 129000).
# What is computed from such a statistic and constants alone (the mean, the variance, its root and reciprocal, the
# reshapes that broadcast it) is kept float32 with it, as is a square read only by kept reductions (Mul(h, h) of a
# 300 is 90000), and a value computed and read only by float32-kept nodes stays float32 between them
# (``_float32_edges``): where a statistic meets the activations (``Sub(x, mean)``, ``Div(h, scale)``) it is cast.
_KEPT_REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2")
_SHAPED_OPS = ("Reshape", "Expand", "Unsqueeze", "Squeeze")  # only input 0 is data
_STATISTIC_OPS = (
    *("Add", "Sub", "Mul", "Div", "Max", "Min", "Clip", "Sqrt", "Reciprocal", "Pow", "Neg", "Abs", "Identity"),
    *_SHAPED_OPS,
)

# Ops whose constant operands are bounds: clamping such a bound to float16's range
# changes the result only where the Cast to float16 after it would overflow (it then
# saturates at +-65504 instead of becoming infinite). Clip's bounds are inputs 1 and 2.
# Ops that carry a rotary angle computed from positions (``_angles``): only input 0 of the ``_SHAPED_OPS`` is data.
_ANGLE_OPS = (
    *("Mul", "MatMul", "Einsum", "Div", "Add", "Sub", "Neg", "Identity", "Cast", "Transpose", "Concat", "Tile"),
    "Range",
    *_SHAPED_OPS,
)

# Ops that compute nothing, only move, copy or pick their input's values or read its shape (``_float16_nodes``), and
# Cast. A Pad, Where or GatherElements before the trees was converted for nothing (review s78 late78d).
_MOVING_OPS = (
    *("Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice"),
    *("Gather", "Expand", "Tile", "Pad", "Where", "GatherElements", "GatherND", "DepthToSpace", "SpaceToDepth"),
    *("Dropout", "Shape", "Size"),
)

_BOUNDED_OPS = {"Max": None, "Min": None, "Clip": (1, 2)}
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_PROTO_LIMIT = 2**31 - 2**24  # a protobuf message's 2 GB, less room for the graph itself


class Float16Pass(GraphoptPass, ir.passes.FunctionalPass):
    """Convert float32 weights and computation to float16, except ``SENSITIVE_OPS`` and ORT's
    default block list (ops without float16 kernels: TopK, NonMaxSuppression, Range, ...), and
    the statistics computed from a kept reduction and constants alone, with a square only
    reductions read (``_statistics_kept``: named to the converter's ``node_block_list``), and the angles a rotary table
    computes from positions with their ``Cos``/``Sin`` (``_positions_kept``: 231 radians in float16 is 0.125 off),
    and every float computed from positions and constants alone (an ALiBi distance: 2,049 is 2,048 in float16). A
    value both computed and read by ops kept float32 stays float32 between them (``_float32_edges``), as does a float
    ``Constant`` that only they read (``_kept_constants_lifted``); keeping I/O types, a graph output such a value is
    too is returned float32 (``_kept_outputs_returned``).

    With ``keep_io_types`` (the default) float graph inputs and outputs stay float32,
    with Casts inside the graph. Refuses (unchanged) a model with no float32 tensors, one
    whose external data passes 2 GB (less is read into memory first), one converted already (its own
    result: the converter would only add Casts of float16 values to float16), one whose every float op the converter
    keeps float32 (a scikit-learn tree ensemble alone: the result would only round its inputs and outputs through
    float16, ``_float16_nodes``; so where it would compute no more in float16 than the input did, or only move values
    in float16), and one whose
    values onnx's shape inference cannot type and ONNX Runtime refuses to load (``_types_inferred``).

    A constant bound of a Max, Min or Clip kept float32 whose result is cast to float16
    (``Max(mask, float32 min)``, the floor fused attention puts under a -inf mask) is
    first clamped to float16's finite range, as the converter clamps the constants it
    converts; otherwise the Cast makes it infinite again (see the module docstring).

    The twin (kind ``"float16"``): the input with those bounds clamped and every float32
    weight the converter stores as float16 (one a node not kept float32 reads) rounded to
    float16, computing in float32 (``_twin.float16_twin``); the result also rounds some activations to float16, which
    is what the float16 tolerance allows for. ONNX Runtime's CPU EP runs most float16 ops
    as float32 kernels and drops the Casts around them, so the result checked on CPU does
    not overflow where float16 kernels (a GPU's) do: the twin's ``deployed`` model, the
    result computing in float32 with every value it stores as float16 rounded to float16
    (infinite past 65504; ``_twin.float16_kernels``), is held to the accuracy budget beside
    the result (a ``MatMul`` to 192000 was verified on CPU and infinite on a GPU). Where the
    result holds a subgraph, a function or an untyped value, the input's twin with the
    activations the converter stores as float16 rounded stands in, those read off the result
    (``_stored_float16``) among them; a result storing a float16 value the input does not
    compute is refused, as that stand-in could not round it.

    Local functions are inlined first: the converter retypes a call's inputs but not the
    function's own float32 constants.

    Keeping I/O types, a graph output that is an initializer is computed by an
    ``Identity`` of it, and one that is a graph input or repeats another is set aside
    while converting and put back: the converter defined such outputs twice. Values and
    nodes named as the converter names its I/O Casts (``graph_input_cast_0``: a model it
    converted before, this pass's own result) are renamed first, so such a model converts again.
    """

    def __init__(self, *, keep_io_types: bool = True, block_ops: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.keep_io_types = keep_io_types
        self.block_ops = SENSITIVE_OPS + tuple(block_ops)
        # Without kept I/O types the graph's float inputs and outputs become float16.
        self.keeps_interface = keep_io_types

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        if not any(v.dtype == ir.DataType.FLOAT for v in _values(model.graph)):
            self.decline("no float32 tensors")
            return self.result(model.clone(), modified=False)  # a functional pass returns a new model
        external = [v for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]
        if sum(v.const_value.nbytes for v in external) > _PROTO_LIMIT:
            self.decline("weights in external data past 2 GB: not converted (the converter holds one proto)")
            return self.result(model.clone(), modified=False)
        blocked = [*DEFAULT_OP_BLOCK_LIST, *self.block_ops, *QUANTIZATION_OPS, *FLOAT32_OUTPUT_OPS]
        given = model
        model = model.clone()  # a functional pass: the bounds are clamped in a copy
        for value in model.graph.initializers.values():
            # The converter reads a proto's raw data: an external reference (khmersm's model.onnx.data, 7 MB) it
            # would leave float32 beside float16 users. Read into memory here; saving puts them back outside.
            if isinstance(value.const_value, ir.ExternalTensor):
                value.const_value = ir.Tensor(np.array(value.const_value.numpy()), name=value.const_value.name)
        if model.functions:
            # The converter retypes a call's float inputs and leaves the function's own float Constants float32
            # (Mul(float16, float32): ONNX Runtime refused the result); ONNX Runtime inlines them at load anyway.
            common_passes.InlinePass()(model)
            self.note("local functions inlined (the converter does not convert their bodies)")
        statistics_kept = _statistics_kept(model, set(blocked))
        positions_kept = _positions_kept(model, set(blocked))
        kept_nodes = {node.name for node in (*statistics_kept, *positions_kept)}
        _kept_constants_lifted(model.graph, set(blocked), kept_nodes)
        if self.keep_io_types:
            kept_nodes.update(node.name for node in _kept_outputs_returned(model.graph, set(blocked), kept_nodes))
        clamped = _clamp_bounds(model, set(blocked), kept_nodes, float16_outputs=not self.keep_io_types)
        bounds = f"{len(clamped)} Max/Min bound{'' if len(clamped) == 1 else 's'} clamped to float16's range"
        if clamped:
            named = ", ".join(clamped[:3]) + (", ..." if len(clamped) > 3 else "")
            self.note(f"{bounds} (+-65504; a Cast to float16 follows): {named}")
        if self.keep_io_types:
            _initializer_outputs_computed(model.graph)
            _rename_converter_names(model.graph)
        _stft_onesided_spelled_out(model)
        _quantized_outputs_typed(model)
        _float_constants_spelled_as_tensors(model)
        statistics = _normalization_statistics_cast(model)
        proto = ir.to_proto(model)
        passed_through = _passed_through_outputs(proto.graph) if self.keep_io_types else []
        # Inferred once, here: the converter would infer the same shapes again (it runs onnx's infer_shapes first).
        proto, untyped = _types_inferred(proto)
        if untyped:
            named = ", ".join(untyped[:3]) + (", ..." if len(untyped) > 3 else "")
            self.decline(
                f"the types of {len(untyped)} value{'' if len(untyped) == 1 else 's'} are unknown ({named}): not "
                "converted (the converter casts and checks as float16 only the float values it knows)"
            )
            return self.result(given.clone(), modified=False)
        # Counted on the inferred types: a file declares few (a Relu between Casts to and from float16, undeclared,
        # was no float16 node of the input, and the trees beside it were converted for nothing, review s78 late78d).
        already = _float16_nodes(model, _names_typed(proto, onnx.TensorProto.FLOAT16))
        _undeclared(proto.graph, statistics)  # left float32 by the converter, as LayerNormalization computes them
        edges = _float32_edges(proto.graph, set(blocked), kept_nodes)
        _undeclared(proto.graph, set(edges))  # undeclared, the converter casts them neither to float16 nor back
        # An initializer's tensor says its type. Declared, one the converter keeps float32 (read by blocked ops alone)
        # was declared float16 in the result and read through a Cast to float: the pass raised on its own result
        # (onnx's shape inference: "Inferred elem type differs from existing elem type"). It declares those it converts.
        _drop_initializer_value_info(proto.graph)
        direct = _float32_kept_outputs(proto.graph, set(blocked), kept_nodes) if self.keep_io_types else set()
        float16_values = _names_typed(proto) - direct
        converted = convert_float_to_float16(
            proto,
            keep_io_types=self.keep_io_types,
            op_block_list=blocked,
            node_block_list=sorted(kept_nodes),
            disable_shape_infer=True,
        )
        converted.graph.value_info.extend(edges.values())  # declared again, float32, for the check below
        _put_back_outputs(converted.graph, passed_through)
        _outputs_read_direct(converted.graph, direct)
        if moved := _casts_into_their_subgraphs(converted):
            self.note(f"{moved} Casts the converter wrote in the main graph moved into the If/Loop bodies they read")
        result = ir.from_proto(converted)
        result.graph.sort()  # the converter appends the input Casts after their users
        _empty_scales_kept_constant(result)
        if not clamped and _converted_form(result) == _converted_form(given):
            # Its own result again (or onnxruntime's): the converter only wrote Casts of float16 values to float16,
            # and the pass reported them as a conversion, applied, each run a few nodes more.
            self.decline("already float16: converting again would only add Casts of float16 values to float16")
            return self.result(given.clone(), modified=False)
        if _float16_nodes(result) <= already:
            nodes = ir.traversal.RecursiveGraphIterator(result.graph)
            kept_ops = sorted({node.op_type for node in nodes if not _in_float16(node)} - set(_MOVING_OPS))
            self.decline(
                f"no op would compute in float16{' that does not already' if already else ''} "
                f"({', '.join(kept_ops[:4]) or 'no op'} stay float32): converting would "
                "only round the graph's float inputs and outputs through float16"
            )
            return self.result(given.clone(), modified=False)
        stored, unknown = _stored_float16(result, model)
        if unknown:
            named = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
            self.decline(
                f"the result stores {len(unknown)} float16 value{'' if len(unknown) == 1 else 's'} the input does not "
                f"compute ({named}): not converted (its check as float16 kernels compute it rounds the input's values)"
            )
            return self.result(given.clone(), modified=False)
        kept = sum(1 for node in ir.traversal.RecursiveGraphIterator(result.graph) if node.op_type in self.block_ops)
        with_them = f", {len(statistics_kept)} computing their statistics with them" if statistics_kept else ""
        if positions_kept:
            with_them += f", {len(positions_kept)} computing rotary angles from positions (and their Cos/Sin) or "
            with_them += "other floats (distances)"
        self.note(f"float16; {kept} sensitive nodes kept float32{with_them}")
        twin = Twin(
            float16_twin(model, blocked, keep_io_types=self.keep_io_types, kept_nodes=kept_nodes),
            "float16",
            "the input with its float16 weights rounded to float16, computing in float32"
            + (f", {bounds}" if clamped else "")
            + ("" if self.keep_io_types else ", float16 inputs and outputs"),
            deployed=float16_kernels(result)
            or float16_twin(
                model,
                blocked,
                keep_io_types=self.keep_io_types,
                kept_nodes=kept_nodes,
                float16_values=float16_values | stored,
            ),
        )
        return self.result(result, modified=True, twin=twin)


_Message = TypeVar("_Message", onnx.NodeProto, onnx.ValueInfoProto)


def _quantized_outputs_typed(model: ir.Model) -> None:
    """Type the float output of each onnxruntime dynamic int8 op (``DynamicQuantizeMatMul``,
    ``MatMulIntegerToFloat``: its scales' type, input 2, and 3 of the latter) left untyped, in place: onnx's shape
    inference is not run on a model with com.microsoft ops, and the converter, not knowing the output float, fed it
    uncast to the float16 op after it (a ``--quantize dynamic`` result's ``Relu``: ONNX Runtime refused the result,
    rolled back)."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain != MS_DOMAIN or node.op_type not in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
            continue
        # DynamicQuantizeMatMul(A, B, b_scale, b_zero_point, ...); MatMulIntegerToFloat(A, B, a_scale, b_scale, ...).
        read = node.inputs[2:3] if node.op_type == "DynamicQuantizeMatMul" else node.inputs[2:4]
        scales = [value.dtype for value in read if value is not None and value.dtype is not None]
        if node.outputs[0].dtype is None and scales:
            node.outputs[0].dtype = scales[0]


def _float_constants_spelled_as_tensors(model: ir.Model) -> None:
    """Spell each ``Constant`` written with ``value_float`` or ``value_floats`` with a ``value`` tensor of the same
    values, in place: the converter converts only tensor attributes, and declared the float32 it left float16 (the
    ``Mul`` reading it: ONNX Runtime refused the result, "bound to different types")."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for name in ("value_float", "value_floats"):
            attribute = node.attributes.pop(name, None)
            if attribute is not None:
                array = np.asarray(attribute.value, dtype=np.float32)  # value_float: a scalar; value_floats: 1-D
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(array))


def _normalization_statistics_cast(model: ir.Model) -> set[str]:
    """Make LayerNormalization's ``Mean`` and ``InvStdDev`` outputs float16 by a Cast after them, in place; return the
    names of the statistics so cast. They are float32 whatever the op's input type (ONNX's ``U``): the converter
    declared them float16 and ONNX Runtime refused the result ("Type (tensor(float16)) of output arg (mean) ...
    does not match expected type (tensor(float))"). An unused one is dropped, as onnx-ir's unused removal drops it;
    a used one keeps its name on a ``Cast`` to float (which the converter makes a Cast to float16), the statistic
    itself renamed and left undeclared (``_undeclared``), so that the converter leaves it float32; one read by Casts
    alone (this pass's result) is only left undeclared."""
    statistics: set[str] = set()
    taken = {value.name for value in (*model.graph.inputs, *model.graph.initializers.values())}
    taken |= {output.name for node in ir.traversal.RecursiveGraphIterator(model.graph) for output in node.outputs}
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx") or len(node.outputs) < 2:
            continue
        for value in node.outputs[1:3]:
            if not value.name:
                continue
            if not value.uses() and not value.is_graph_output():
                value.name = ""
                continue
            if not value.is_graph_output() and all(user.op_type == "Cast" for user, _ in value.uses()):
                statistics.add(value.name)  # read through Casts already (this pass's own result)
                continue
            name = value.name
            cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT)])
            uses = [(user, index) for user, index in value.uses() if user is not cast]
            value.name = unique_name(f"{name}.float32", taken)
            cast.outputs[0].name, cast.outputs[0].shape = name, value.shape
            cast.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
            for user, index in uses:
                user.replace_input_with(index, cast.outputs[0])
            for index, output in enumerate(node.graph.outputs):
                if output is value:
                    node.graph.outputs[index] = cast.outputs[0]
            node.graph.insert_after(node, cast)
            statistics.add(value.name)
        kept = len(node.outputs)
        while kept > 1 and not node.outputs[kept - 1].name:
            kept -= 1
        node.resize_outputs(kept)
    return statistics


def _undeclared(graph: onnx.GraphProto, names: set[str]) -> None:
    """Drop the ``value_info`` of ``names`` from ``graph`` and its subgraphs, in place."""
    if names:
        _drop_value_info(graph, lambda _: names)


def _drop_value_info(graph: onnx.GraphProto, dropped: Callable[[onnx.GraphProto], set[str]]) -> None:
    """Drop from ``graph``'s ``value_info``, and from each subgraph's, the names ``dropped`` gives for that graph."""
    names = dropped(graph)
    kept = [_copy_of(info) for info in graph.value_info if info.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                _drop_value_info(sub, dropped)


def _stft_onesided_spelled_out(model: ir.Model) -> None:
    """Give each ``STFT`` that leaves ``onesided`` out its default (1), in place: onnx's shape inference (1.23)
    reads it as 0 (``frame_length`` bins for ``frame_length // 2 + 1``), and the converter declared an output of a
    fixed-shape front end so sized (``[1, 13, 64, 2]`` for ``[1, 13, 33, 2]``: the pass was rolled back)."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "STFT" and node.domain in ("", "ai.onnx") and "onesided" not in node.attributes:
            node.attributes["onesided"] = ir.AttrInt64("onesided", 1)


def _initializer_outputs_computed(graph: ir.Graph) -> None:
    """Make each float32 initializer that is also a graph output (and not an input) an ``Identity``'s output of its
    name, reading the initializer renamed: onnxruntime's converter, keeping I/O types, writes the Cast back to
    float32 of such an output under the initializer's own name (a second definition: the model was invalid)."""
    for index, value in enumerate(list(graph.outputs)):
        if value.producer() is not None or value.is_graph_input() or value.const_value is None:
            continue
        if value.dtype != ir.DataType.FLOAT:
            continue
        name = value.name
        value.name = _fresh(graph, f"{name}.initializer")
        identity = ir.Node("", "Identity", [value], name=f"{name}_output")
        identity.outputs[0].name, identity.outputs[0].type = name, ir.TensorType(ir.DataType.FLOAT)
        identity.outputs[0].shape = value.shape
        graph.append(identity)
        for at, output in enumerate(graph.outputs):
            if output is value and at >= index:
                graph.outputs[at] = identity.outputs[0]


# The names onnxruntime's converter, keeping I/O types, gives the Casts it writes at the graph's inputs and outputs
# (``graph_input_cast_0`` computed by the node ``graph_input_cast0``).
_CONVERTER_NAMES = ("graph_input_cast", "graph_output_cast")


def _rename_converter_names(graph: ir.Graph) -> None:
    """Rename the nodes and values (other than graph inputs and outputs) named as the converter names its I/O Casts:
    a model it already converted (graphopt's or onnxruntime's float16 output, converted again) holds them, and the
    converter wrote its new Casts under the same names (the model was invalid: the pass failed with onnx-ir's
    "redeclared" error)."""
    interface = {id(value) for value in (*graph.inputs, *graph.outputs)}
    taken = {value.name for value in (*graph.inputs, *graph.initializers.values())}
    taken |= {output.name for node in ir.traversal.RecursiveGraphIterator(graph) for output in node.outputs}
    names = {node.name for node in ir.traversal.RecursiveGraphIterator(graph)}
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.name and node.name.startswith(_CONVERTER_NAMES):
            node.name = unique_name(f"{node.name}_kept", names)
        for value in node.outputs:
            if value.name and value.name.startswith(_CONVERTER_NAMES) and id(value) not in interface:
                value.name = unique_name(f"{value.name}_kept", taken)


def _fresh(graph: ir.Graph, name: str) -> str:
    """``name`` or a variant no value of ``graph`` (its subgraphs too) has."""
    taken = {value.name for value in (*graph.inputs, *graph.initializers.values())}
    taken |= {output.name for node in ir.traversal.RecursiveGraphIterator(graph) for output in node.outputs}
    return unique_name(name, taken)


def _float32_kept_outputs(graph: onnx.GraphProto, blocked: set[str], kept_nodes: set[str]) -> set[str]:
    """The float32 graph outputs that a node kept float32 computes and nothing else reads. Keeping I/O types, the
    converter casts such an output to float16 after the node and back to float32 for the graph: a ``ReduceSum`` kept
    float32 so that its sum of 96000 does not overflow returned inf, and the pass was rolled back."""
    outputs = {info.name for info in graph.output if info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    read = {name for node in graph.node for name in node.input}
    return {
        name
        for node in graph.node
        if (node.op_type in blocked and node.domain in ("", "ai.onnx")) or node.name in kept_nodes
        for name in node.output
        if name in outputs and name not in read
    }


def _statistics_kept(model: ir.Model, blocked: set[str]) -> list[ir.Node]:
    """The nodes of ``model``'s main graph, other than blocked ones, that are kept float32 with a kept reduction (see
    ``_KEPT_REDUCTIONS``), each given a name no other node has (the converter blocks nodes by name), in place.

    A statistic is a kept reduction's float result, or the result of a ``_STATISTIC_OPS`` node whose float operands
    are statistics and constants, one at least a statistic (``Mul(sum, 1/width)``, ``Sub(mean_of_squares,
    mean * mean)``, ``Reciprocal(Sqrt(variance + eps))``); its node is kept. So is a square ``Mul(h, h)`` whose every
    reader is a kept reduction. A node that reads an activation besides (``Div(h, scale)``) is not: it computes in
    float16, reading the statistic cast to float16 (a mean, a root, a scale: in range where the activations are)."""
    reductions = {op for op in _KEPT_REDUCTIONS if op in blocked}
    statistics: set[int] = set()
    kept: list[ir.Node] = []
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or any(
            output.dtype not in (None, ir.DataType.FLOAT) for output in node.outputs
        ):
            continue
        if node.op_type in reductions:
            statistics.update(id(output) for output in node.outputs)
            continue
        if node.op_type not in blocked and _is_square_reduced(node, reductions):
            kept.append(node)
            continue
        if node.op_type not in _STATISTIC_OPS:
            continue
        data = node.inputs[:1] if node.op_type in _SHAPED_OPS else node.inputs
        operands = [value for value in data if value is not None]
        if not any(id(value) in statistics for value in operands):
            continue
        if all(id(value) in statistics or constant_array(value) is not None for value in operands):
            statistics.update(id(output) for output in node.outputs)
            if node.op_type not in blocked:  # a Sqrt or Pow is kept already
                kept.append(node)
    shared = Counter(node.name for node in ir.traversal.RecursiveGraphIterator(model.graph) if node.name)
    names = set(shared)  # unique_name adds the names it gives
    for node in kept:
        if not node.name or shared[node.name] > 1:
            node.name = unique_name(f"{node.name or node.op_type}_float32", names)
    return kept


def _positions_kept(model: ir.Model, blocked: set[str]) -> list[ir.Node]:
    """The nodes of ``model``'s main graph, other than blocked ones (a float ``Range`` aside), that compute a float
    value from positions (a rotary table's ``position * inv_freq`` for a ``Cos`` or ``Sin``, those ``Cos`` and ``Sin``
    too, an ALiBi bias ``slope * (j - i)``, T5's log of distances), each given a name no other node has (the converter
    blocks nodes by name), in place.

    An angle is the float result of a ``Cast`` of integers (positions), or of a ``_ANGLE_OPS`` node whose float
    operands are angles and constants, one at least an angle (a ``Range`` to the ``Cast`` of a length); a node
    computing one is kept where a ``Cos`` or ``Sin`` reads what it computes through angles alone. In float16 an angle
    of 231 radians is rounded to a step of 0.125: Llama's unfused rotary keys at position 231 moved 6 % (0.0126,
    present.0.key) off the float32-computing twin, and the conversion was rolled back. Kept float32, the angles are
    exact as the input computes them; the ``Cos``/``Sin`` results, within [-1, 1], are what is cast to float16.

    Kept too: every node computing a float value from positions and constants alone (``_position_floats``: the values
    ``optimizer.position_values`` checks at the longest length), whatever reads it. Such a value grows with the length,
    and float16's step with it: positions 2,049 and 2,051 are 2,048 and 2,052 in float16, so a neighbour's ALiBi
    distance of 1 became 0 or 2 (its attention weight e times off), and was verified (review s79 late79e, xbias). Kept
    float32, a distance is exact, and it is cast to float16 where the scores read it (a relative step of float16
    there)."""
    kept = {id(node): node for node in _angles(model, blocked)}
    kept.update((id(node), node) for node in _position_floats(model) if node.op_type not in blocked - {"Range"})
    shared = Counter(node.name for node in ir.traversal.RecursiveGraphIterator(model.graph) if node.name)
    names = set(shared)  # unique_name adds the names it gives
    for node in kept.values():
        if not node.name or shared[node.name] > 1:
            node.name = unique_name(f"{node.name or node.op_type}_float32", names)
    return list(kept.values())


def _position_floats(model: ir.Model) -> list[ir.Node]:
    """The nodes of ``model``'s main graph whose float32 results are computed from positions and constants alone
    (``optimizer.position_values.classified_positions``' floats, on the types ONNX's inference gives), the nodes
    computing the float32 constants they read (``Expand(inv_freq, Shape(position_ids))``), and those that read such a
    value into integers (T5's bucket ``Cast(log_distance, to=int64)``: it truncates the float32 value, not one cast to
    float16 for it)."""
    from optimizer.position_values import classified_positions, inferred_types  # the checker's own notion of positions

    if not any(node.op_type == "Cast" for node in model.graph):
        return []
    typed = inferred_types(model)
    floats, alone = classified_positions(typed)
    if not floats:
        return []
    dtypes = {value.name: value.dtype for node in typed.graph for value in node.outputs if value.name}
    producers = {value.name: node for node in model.graph for value in node.outputs if value.name}

    def float32(node: ir.Node) -> bool:
        return all(dtypes.get(output.name) == ir.DataType.FLOAT for output in node.outputs)

    def from_floats(node: ir.Node) -> bool:  # integers or booleans computed from a position float
        data = [value for value in node.inputs if value is not None]
        return (
            not any(dtypes.get(output.name) in (None, ir.DataType.FLOAT) for output in node.outputs)
            and any(value.name in floats for value in data)
            and all(value.name in alone or value.const_value is not None for value in data)
        )

    # A Cos or Sin result is within [-1, 1] at any length: what is computed from it alone (``cos * attention_scaling``,
    # its reshapes) is left to float16, as before; the Cos and Sin themselves are kept, reading their angles float32.
    bounded: set[str] = set()
    for node in typed.graph:
        data = [value.name for value in node.inputs if value is not None and value.name in floats]
        if node.op_type in ("Cos", "Sin") or (data and all(name in bounded for name in data)):
            bounded.update(output.name for output in node.outputs if output.name in floats)
    frontier = [
        node
        for node in model.graph
        if node.domain in ("", "ai.onnx")
        and node.outputs
        and (
            float32(node)
            and all(output.name in floats for output in node.outputs)
            and (node.op_type in ("Cos", "Sin") or not any(output.name in bounded for output in node.outputs))
            or from_floats(node)
        )
    ]
    kept: dict[int, ir.Node] = {}
    while frontier:
        node = frontier.pop()
        if id(node) in kept:
            continue
        kept[id(node)] = node
        for value in node.inputs:
            producer = producers.get(value.name) if value is not None else None
            if producer is not None and value.name in alone and float32(producer) and producer.op_type != "Constant":
                frontier.append(producer)
    return list(kept.values())


def _angles(model: ir.Model, blocked: set[str]) -> list[ir.Node]:
    """The nodes of ``model``'s main graph that compute an angle for a ``Cos`` or ``Sin``, those ``Cos`` and ``Sin``
    too (``_positions_kept``). An angle is the float result of a ``Cast`` of integers (positions, a timestep: any
    integers), or of a ``_ANGLE_OPS`` node whose float operands are angles and constants, one at least an angle (a
    ``Range`` to the ``Cast`` of a length); a node computing one is kept where a ``Cos`` or ``Sin`` reads what it
    computes through angles alone."""
    if not any(node.op_type in ("Cos", "Sin") for node in model.graph):
        return []
    angles: dict[int, ir.Node] = {}  # an angle's id -> the node computing it
    fixed: dict[int, ir.Node] = {}  # a value computed from constants alone (``Expand(inv_freq, shape)``) -> its node
    trig: list[ir.Node] = []
    for node in model.graph:
        # A float Range (``torch.arange(n, dtype=inv_freq.dtype)``: the positions of a table built in the graph) is
        # blocked, so float32 already, but carries the angle on: its products (and an Einsum's, ``einsum("i,j->ij", t,
        # inv_freq)``) were left to float16, verified at 257 positions and 9.7x past the tolerance at 2,048, until
        # review s79 mut.
        if node.domain not in ("", "ai.onnx") or (node.op_type in blocked and node.op_type != "Range"):
            continue
        if node.op_type == "Cast" and node.attributes.get_int("to", 0) == ir.DataType.FLOAT:
            if _integer_valued(node.inputs[0]):
                angles[id(node.outputs[0])] = node
                continue
        if node.op_type in ("Cos", "Sin") and node.inputs and node.inputs[0] is not None:
            if id(node.inputs[0]) in angles:
                trig.append(node)
            continue
        if node.op_type not in _ANGLE_OPS or any(
            output.dtype not in (None, ir.DataType.FLOAT) for output in node.outputs
        ):
            continue
        data = node.inputs[:1] if node.op_type in _SHAPED_OPS else node.inputs
        operands = [value for value in data if value is not None]
        if not all(
            id(value) in angles or id(value) in fixed or constant_array(value) is not None for value in operands
        ):
            continue
        found = angles if any(id(value) in angles for value in operands) else fixed
        found.update((id(output), node) for output in node.outputs)
    # Kept: the Cos/Sin and every node they read through angles, back to the Casts and the constants.
    computed = {**fixed, **angles}
    kept: dict[int, ir.Node] = {id(node): node for node in trig}
    frontier = [angles[id(node.inputs[0])] for node in trig]
    while frontier:
        node = frontier.pop()
        if id(node) in kept:
            continue
        kept[id(node)] = node
        frontier.extend(computed[id(value)] for value in node.inputs if value is not None and id(value) in computed)
    return list(kept.values())


def _integer_valued(value: ir.Value | None) -> bool:
    """Whether ``value`` holds integers: typed so, or, untyped (a file that records no types), reshaped, gathered or
    sliced from integers (``position_ids``, a ``Range`` or a ``Shape``)."""
    while value is not None:
        if value.dtype is not None:
            return value.dtype.is_integer()
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin"):
            return True
        if node.op_type not in (*_SHAPED_OPS, "Identity", "Slice", "Gather", "Range") or not node.inputs:
            return False
        value = node.inputs[0]
    return False


def _is_kept(node: ir.Node, blocked: set[str], kept_nodes: set[str]) -> bool:
    """Whether the converter keeps ``node`` float32: a blocked ONNX op, or one named in ``kept_nodes``."""
    return (node.op_type in blocked and node.domain in ("", "ai.onnx")) or node.name in kept_nodes


def _read_by_kept_alone(value: ir.Value, graph: ir.Graph, blocked: set[str], kept_nodes: set[str]) -> bool:
    """Whether ``value`` has readers, all of them nodes of ``graph`` itself (none in a subgraph) kept float32."""
    users = [user for user, _ in value.uses()]
    return bool(users) and all(user.graph is graph and _is_kept(user, blocked, kept_nodes) for user in users)


def _kept_constants_lifted(graph: ir.Graph, blocked: set[str], kept_nodes: set[str]) -> None:
    """Make each float32 ``Constant`` node of ``graph`` (main graph) that only nodes kept float32 read an initializer of
    the same name and value, in place. The converter converts a Constant's tensor unless the Constant itself is
    blocked, clamping it to float16's range, while it leaves float32 an initializer only blocked nodes read: a kept
    ``Min(variance, Constant(1e9))`` capped a variance of 90,000 at 65504 (15% off the output, and verified, as the
    twin rounds a Constant's tensor too); as an initializer the bound stays 1e9, or ``_clamp_bounds`` clamps it
    where a Cast to float16 follows."""
    for node in list(graph):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            continue
        value = node.outputs[0]
        tensor = ir.convenience.get_const_tensor(value)
        if tensor is None or tensor.dtype != ir.DataType.FLOAT or value.is_graph_output():
            continue
        if not _read_by_kept_alone(value, graph, blocked, kept_nodes):
            continue
        lifted = ir.Value(name=value.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(ir.DataType.FLOAT))
        lifted.const_value = ir.tensor(tensor.numpy(), name=value.name)
        value.replace_all_uses_with(lifted)
        graph.remove(node, safe=True)
        graph.register_initializer(lifted)


def _kept_outputs_returned(graph: ir.Graph, blocked: set[str], kept_nodes: set[str]) -> list[ir.Node]:
    """The nodes that return a float32 value a kept node computes as a float graph output of ``graph`` (main graph),
    each named uniquely so that the converter keeps it float32 too, in place; return them. Keeping I/O types, the
    converter casts a float graph output to float16 right after its node (``graph_output_cast_N``), for the nodes
    reading it as for the output: a kept statistic also returned (``variance``, read by a kept ``Min``) was infinite
    past 65504 there and in the ``Sqrt`` reading it. Such an output, read by other kept nodes alone, becomes the
    output of an ``Identity`` of its name, reading the value renamed. A ``Cast`` to float that returns a kept node's
    float32 value read by kept nodes alone besides (this pass's own result returns the kept value so) is kept as it
    is: converting its own result again, the value was cast to float16 before it (inf again), not declined. Either
    way the value is a ``_float32_edges`` edge and the output one ``_outputs_read_direct`` reads."""
    names = {node.name for node in ir.traversal.RecursiveGraphIterator(graph) if node.name}
    returning = []
    for value in dict.fromkeys(graph.outputs):
        producer = value.producer()
        if producer is None or producer.graph is not graph or value.dtype != ir.DataType.FLOAT:
            continue
        if _is_kept(producer, blocked, kept_nodes) and _read_by_kept_alone(value, graph, blocked, kept_nodes):
            name = value.name
            value.name = _fresh(graph, f"{name}.float32")
            identity = ir.Node("", "Identity", [value], name=unique_name(f"{name}_float32_output", names))
            identity.outputs[0].name, identity.outputs[0].type = name, ir.TensorType(ir.DataType.FLOAT)
            identity.outputs[0].shape = value.shape
            graph.insert_after(producer, identity)
            for index, output in enumerate(graph.outputs):
                if output is value:
                    graph.outputs[index] = identity.outputs[0]
            returning.append(identity)
        elif _returns_kept_float32(producer, graph, blocked, kept_nodes):
            producer.name = unique_name(f"{value.name}_float32_output", names)
            returning.append(producer)
    return returning


def _returns_kept_float32(node: ir.Node, graph: ir.Graph, blocked: set[str], kept_nodes: set[str]) -> bool:
    """Whether ``node`` is a ``Cast`` to float of a float32 value that a kept node of ``graph`` computes and that,
    besides ``node``, only kept nodes of ``graph`` read."""
    if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
        return False
    if node.attributes.get_int("to", 0) != ir.DataType.FLOAT:
        return False
    source = node.inputs[0]
    producer = source.producer()
    return (
        source.dtype == ir.DataType.FLOAT
        and not source.is_graph_output()
        and producer is not None
        and producer.graph is graph
        and _is_kept(producer, blocked, kept_nodes)
        and all(
            user is node or (user.graph is graph and _is_kept(user, blocked, kept_nodes)) for user, _ in source.uses()
        )
    )


def _is_square_reduced(node: ir.Node, reductions: set[str]) -> bool:
    """Whether ``node`` is ``Mul(h, h)`` whose result only reductions in ``reductions`` read."""
    if node.op_type != "Mul" or len(node.inputs) != 2 or node.inputs[0] is None or node.inputs[0] is not node.inputs[1]:
        return False
    square = node.outputs[0]
    readers = [user for user, _ in square.uses()]
    return bool(readers) and not square.is_graph_output() and all(user.op_type in reductions for user in readers)


def _float32_edges(graph: onnx.GraphProto, blocked: set[str], kept_nodes: set[str]) -> dict[str, onnx.ValueInfoProto]:
    """The float32 values of ``graph`` (main graph) that a node kept float32 computes and only nodes kept float32 read
    (not a graph output, not read inside a subgraph), with their ``value_info``. The converter casts a blocked node's
    float result to float16 after it and back before the next blocked node: ``Pow(h, 2)`` of an ``h`` of 300 became
    infinite between the ``Pow`` and the ``ReduceMean`` both kept float32."""

    def is_kept(node: onnx.NodeProto) -> bool:
        return (node.op_type in blocked and node.domain in ("", "ai.onnx")) or node.name in kept_nodes

    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    inner = _subgraph_reads(graph)
    outputs = {info.name for info in graph.output}
    infos = {info.name: info for info in graph.value_info if info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    return {
        name: _copy_of(infos[name])
        for node in graph.node
        if is_kept(node)
        for name in node.output
        if name in infos and name not in outputs and name not in inner
        and readers.get(name) and all(is_kept(reader) for reader in readers[name])
    }  # fmt: skip


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """The names the subgraphs of ``graph`` (at any depth) read."""
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                names.update(name for inner in sub.node for name in inner.input)
                names |= _subgraph_reads(sub)
    return names


def _outputs_read_direct(graph: onnx.GraphProto, names: set[str]) -> None:
    """Make each graph output in ``names`` (``_float32_kept_outputs``) the float32 value its node computes, in place:
    the converter wrote ``node -> Cast(to float16) -> Cast(to float) -> output``; the output's Cast now reads the
    node's float32 result (a Cast to float of a float, exact) and the Cast to float16 goes."""
    producers = {name: node for node in graph.node for name in node.output}
    for name in names:
        back = producers.get(name)
        half = producers.get(back.input[0]) if back is not None and back.op_type == "Cast" else None
        if half is None or half.op_type != "Cast" or sum(half.output[0] in node.input for node in graph.node) != 1:
            continue
        if not any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in half.attribute):
            continue
        back.input[0] = half.input[0]
        graph.node.remove(half)


def _passed_through_outputs(graph: onnx.GraphProto) -> list[tuple[int, onnx.ValueInfoProto]]:
    """Remove from ``graph``'s outputs, and return with their positions, those that are graph inputs or repeat an
    earlier output: the converter, keeping I/O types, writes a Cast to each float output under the output's name
    (a graph input's second definition), and renames a repeated one's producer twice. The converted graph keeps
    the inputs float32 and computes the first of the repeated outputs, so each is put back as it was."""
    inputs, seen = {value.name for value in graph.input}, set()
    removed, kept = [], []
    for index, info in enumerate(graph.output):
        (removed if info.name in inputs or info.name in seen else kept).append((index, _copy_of(info)))
        seen.add(info.name)
    if removed:
        del graph.output[:]
        graph.output.extend(info for _, info in kept)
    return removed


def _put_back_outputs(graph: onnx.GraphProto, removed: list[tuple[int, onnx.ValueInfoProto]]) -> None:
    outputs = [_copy_of(info) for info in graph.output]
    for index, info in removed:
        outputs.insert(index, info)
    del graph.output[:]
    graph.output.extend(outputs)


def _casts_into_their_subgraphs(proto: onnx.ModelProto) -> int:
    """Move each Cast of the main graph that reads a value only a subgraph defines into that subgraph (into each
    one, where branches reuse the name), right after the value's producer; return how many were moved.
    onnxruntime's float16 converter writes the Casts around an op it keeps float32 inside an ``If``, ``Loop`` or
    ``Scan`` body (Silero VAD v4's STFT) in the main graph, where what they read does not exist. Its float16
    ``value_info`` for an initializer it kept float32 is dropped too (onnx's full check refuses it)."""
    main = proto.graph
    moved = 0
    while True:
        defined = {value.name for value in (*main.input, *main.initializer)} | {o for n in main.node for o in n.output}
        homes = _subgraph_homes(main)
        index = next(
            (
                i
                for i, node in enumerate(main.node)
                if node.op_type == "Cast" and node.input[0] not in defined and node.input[0] in homes
            ),
            None,
        )
        if index is None:
            break
        stray = _copy_of(main.node[index])
        del main.node[index]
        for sub in homes[stray.input[0]]:
            nodes = [_copy_of(node) for node in sub.node]
            at = next((i + 1 for i, node in enumerate(nodes) if stray.input[0] in node.output), 0)
            nodes.insert(at, _copy_of(stray))
            del sub.node[:]
            sub.node.extend(nodes)
        moved += 1
    if moved:
        _drop_initializer_value_info(main)
    return moved


def _subgraph_homes(graph: onnx.GraphProto) -> dict[str, list[onnx.GraphProto]]:
    """Each name a subgraph of ``graph`` (at any depth) defines (its inputs, initializers, node outputs), with
    the subgraphs that define it."""
    homes: dict[str, list[onnx.GraphProto]] = {}
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                names = (
                    *(v.name for v in sub.input),
                    *(t.name for t in sub.initializer),
                    *(o for n in sub.node for o in n.output),
                )
                for name in dict.fromkeys(names):
                    homes.setdefault(name, []).append(sub)
                for name, deeper in _subgraph_homes(sub).items():
                    homes.setdefault(name, []).extend(deeper)
    return homes


def _drop_initializer_value_info(graph: onnx.GraphProto) -> None:
    _drop_value_info(graph, lambda g: {tensor.name for tensor in g.initializer})


def _copy_of(message: _Message) -> _Message:
    copied = type(message)()
    copied.CopyFrom(message)
    return copied


def _clamp_bounds(model: ir.Model, blocked: set[str], kept_nodes: set[str], *, float16_outputs: bool) -> list[str]:
    """Clamp to float16's finite range the float32 constant bounds the converter keeps float32
    (every reader blocked) of Max/Min/Clip nodes whose result reaches float16; return their names.

    Only bounds read by nothing else are clamped: any other reader would see a changed value.
    """
    clamped = []
    for value in _initializers(model):
        const = value.const_value
        if const is None or const.dtype != ir.DataType.FLOAT or value.is_graph_output():
            continue
        uses = list(value.uses())
        if not uses or not all(_is_bound(user, index, blocked, kept_nodes) for user, index in uses):
            continue
        array = const.numpy()
        finite = np.isfinite(array)
        if not np.any(finite & (np.abs(array) > _FLOAT16_MAX)):
            continue
        if not any(_reaches_float16(user, model.graph, blocked, kept_nodes, float16_outputs) for user, _ in uses):
            continue
        bounded = np.where(finite, np.clip(array, -_FLOAT16_MAX, _FLOAT16_MAX), array).astype(np.float32)
        value.const_value = ir.tensor(bounded, name=value.name)
        clamped.append(value.name)
    return clamped


def _initializers(model: ir.Model):
    yield from model.graph.initializers.values()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attribute in node.attributes.values():
            if attribute.type == ir.AttributeType.GRAPH:
                yield from attribute.value.initializers.values()
            elif attribute.type == ir.AttributeType.GRAPHS:
                for graph in attribute.value:
                    yield from graph.initializers.values()


def _is_bound(node: ir.Node, index: int, blocked: set[str], kept_nodes: set[str]) -> bool:
    """Whether input ``index`` of ``node`` is a bound of a Max/Min/Clip the converter keeps float32."""
    if node.op_type not in _BOUNDED_OPS or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type not in blocked and node.name not in kept_nodes:
        return False
    indices = _BOUNDED_OPS[node.op_type]
    return indices is None or index in indices


def _reaches_float16(
    node: ir.Node, main: ir.Graph, blocked: set[str], kept_nodes: set[str], float16_outputs: bool
) -> bool:
    """Whether ``node``'s result, through other float32-kept (blocked) nodes, reaches a node the
    converter makes float16 (or a graph output it makes float16): there a Cast to float16 follows.
    A value that only kept nodes read stays float32 between them (``_float32_edges``): no Cast follows
    it, and a bound clamped there would change what they compute (``Min(variance, 1e9)`` of 90000 read
    by a kept ``Sqrt`` became 65504), so the walk does not go on through it."""
    stack, seen = [node], {id(node)}
    while stack:
        for output in stack.pop().outputs:
            if float16_outputs and output.is_graph_output():
                return True
            if _stays_float32(output, main, blocked, kept_nodes):
                continue
            for user, _ in output.uses():
                if user.op_type not in blocked and user.name not in kept_nodes:
                    return True
                if id(user) not in seen:
                    seen.add(id(user))
                    stack.append(user)
    return False


def _stays_float32(value: ir.Value, main: ir.Graph, blocked: set[str], kept_nodes: set[str]) -> bool:
    """Whether ``value`` is one ``_float32_edges`` keeps float32: a float value (or one not yet typed) of the main
    graph ``main`` that is not a graph output and that only nodes of ``main`` kept float32 read."""
    users = [user for user, _ in value.uses()]
    return (
        value.dtype in (None, ir.DataType.FLOAT)
        and value.graph is main
        and not value.is_graph_output()
        and bool(users)
        and all(
            user.graph is main
            and (user.op_type in blocked or user.name in kept_nodes)
            and user.domain in ("", "ai.onnx")
            for user in users
        )
    )


def _empty_scales_kept_constant(model: ir.Model) -> None:
    """Feed each ``Resize`` that the converter gave ``Cast(empty constant)`` for its scales (it casts a Resize's
    scales to float32 always; ``sizes`` given, the scales are an empty tensor, as torch's opset-11 export and Paddle
    write them) an empty float32 constant instead: through a Cast ONNX Runtime no longer sees the scales empty, and
    refused the result ("Either `sizes` or `scales` must be provided, but not both")."""
    empty: ir.Value | None = None
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "Resize" or len(node.inputs) < 4 or node.inputs[2] is None or node.inputs[3] is None:
            continue
        cast = node.inputs[2].producer()
        source = cast.inputs[0] if cast is not None and cast.op_type == "Cast" and cast.inputs else None
        constant = constant_array(source)
        if constant is None or constant.size != 0:
            continue
        if empty is None:
            name = _fresh(model.graph, "resize_empty_scales")
            empty = ir.Value(name=name, const_value=ir.tensor(np.zeros(0, np.float32), name=name))
            model.graph.register_initializer(empty)
        node.replace_input_with(2, empty)


def _converted_form(model: ir.Model) -> tuple:
    """What float16 conversion changes in ``model``, names aside: each node's op, attributes and output types (a Cast to
    the type its input already has left out), the graph inputs' and outputs' types, the initializers' types and
    shapes. Equal before and after converting means the converter changed nothing but such Casts."""
    nodes: Counter = Counter()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        to = node.attributes.get("to") if node.op_type == "Cast" and node.domain in ("", "ai.onnx") else None
        source = node.inputs[0] if node.inputs else None
        if to is not None and source is not None and source.dtype is not None and source.dtype == ir.DataType(to.value):
            continue
        attributes = tuple(
            sorted((name, repr(a.value)) for name, a in node.attributes.items() if a.type != ir.AttributeType.GRAPH)
        )
        nodes[(node.domain, node.op_type, attributes, tuple(str(output.dtype) for output in node.outputs))] += 1
    interface = tuple(str(value.dtype) for value in (*model.graph.inputs, *model.graph.outputs))
    initializers = Counter((str(value.dtype), str(value.shape)) for value in model.graph.initializers.values())
    return nodes, interface, initializers


def _values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


def _stored_float16(result: ir.Model, model: ir.Model) -> tuple[set[str], list[str]]:
    """The values of ``model`` that ``result`` stores as float16, read off the result, and the result's float16
    activations that are none of them.

    The twin's ``deployed`` model rounds the activations the converter is expected to store as float16
    (``_names_typed``); a realization storing another (a review's injected fault: ``h * 3e4 * (1/3e4)`` in float16,
    infinite on a GPU) passed. Read off the result, a float16 tensor a node computes is the input's value of its name,
    or a ``Cast`` to float16 of one (a graph input's, a blocked op's float32 result), or one a ``Cast`` to float32
    turns back into one (a graph output's, which the converter computes as ``graph_output_cast_N``).

    A value stored under one of the input's names is its value only where the same op computes it (the converter
    casts around ops, it never replaces one): an injected ``g = h * 3e4``, ``k = g * (1/3e4)`` under the names of
    two ``Relu`` after ``h`` was verified, as the check rounded the input's small ``g`` and ``k``; so was a float16
    ``t = h * 3e4`` cast back to float32 under ``g``'s name (read as the graph output's ``graph_output_cast_N``)."""
    names = {value.name for value in model.graph.inputs}
    names.update(value.name for node in ir.traversal.RecursiveGraphIterator(model.graph) for value in node.outputs)
    ops: dict[str, set[tuple[str, str]]] = {}  # a set: an If's branches may compute one name with different ops
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for value in node.outputs:
            ops.setdefault(value.name, set()).add((node.domain or "", node.op_type))
    stored: set[str] = set()
    unknown: list[str] = []
    for node in ir.traversal.RecursiveGraphIterator(result.graph):
        for value in node.outputs:
            if value.dtype != ir.DataType.FLOAT16 or not isinstance(value.type, ir.TensorType):
                continue  # a sequence's elements are stored as the values taken from it
            if value.name in ops and not ops[value.name] & _computing_ops(node):
                unknown.append(value.name)  # the input's name, another computation
            elif value.name in names:
                stored.add(value.name)
            elif node.op_type == "Cast" and node.inputs[0] is not None and node.inputs[0].name in names:
                stored.add(node.inputs[0].name)
            elif back := [user.outputs[0].name for user, _ in value.uses() if user.op_type == "Cast"
                          and ops.get(user.outputs[0].name, set()) & _computing_ops(node)]:  # fmt: skip
                stored.update(back)
            else:
                unknown.append(value.name)
    return stored, unknown


def _float16_nodes(model: ir.Model, inferred: Collection[str] = ()) -> int:
    """How many nodes other than a ``Cast`` read or write a float16 tensor, ops that only move values (``_MOVING_OPS``)
    counted only where they read a weight or a graph input (without kept I/O types, given in float16). The result
    has no more than its input where every float op is one the converter keeps float32 (scikit-learn's
    ``TreeEnsembleClassifier`` or ``SVMClassifier`` alone): keeping I/O types, the result only casts each float
    input to float16 and back before that op, and each output so after it (a tree's features rounded, a real
    breast-cancer row's probability moved by 0.06), and computes nothing more in float16. Counted against the input,
    not for any: a model computing a part in float16 already (a ``Mul`` of float16 values beside the trees) was
    converted for nothing and reported applied, and so was one whose only op converted was a ``Reshape`` of the
    features before the trees (review s78 late78c); the input's are counted on its inferred types (``inferred``: the
    names its inference types float16)."""
    return sum(
        _in_float16(node, inferred)
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
        if node.domain not in ("", "ai.onnx")
        or node.op_type not in _MOVING_OPS
        # A weight such an op reads is stored in half the bytes (an embedding table's Gather), and without kept I/O
        # types a graph input is given in float16 and moved so, no Cast added: that is a gain (a Transpose of the
        # input was declined, review s78 late78d).
        # (Where's data are inputs 1 and 2: a mask of two constants, ``Where(allowed, 0, -inf)``, reads weights.)
        or (
            node.op_type != "Cast"
            and any(map(_given_in_float16, node.inputs[1:] if node.op_type == "Where" else node.inputs[:1]))
        )
    )


def _given_in_float16(value: ir.Value | None) -> bool:
    """Whether ``value`` is a float16 weight or graph input."""
    return (
        value is not None and value.dtype == ir.DataType.FLOAT16 and (value.is_initializer() or value.is_graph_input())
    )


def _in_float16(node: ir.Node, inferred: Collection[str] = ()) -> bool:
    """Whether ``node`` reads or writes a float16 tensor (one typed so, or named in ``inferred``)."""
    return any(
        value is not None and (value.dtype == ir.DataType.FLOAT16 or value.name in inferred)
        for value in (*node.inputs, *node.outputs)
    )


def _computing_ops(node: ir.Node) -> set[tuple[str, str]]:
    """``(domain, op_type)`` of ``node`` and, for a ``Cast``, of the node it reads: the converter computes a blocked
    op's result (``pow_1``) as a ``Cast`` to float16 of its float32 one."""
    ops = {(node.domain or "", node.op_type)}
    source = node.inputs[0].producer() if node.op_type == "Cast" and node.inputs and node.inputs[0] else None
    if source is not None:
        ops.add((source.domain or "", source.op_type))
    return ops


def _names_typed(proto: onnx.ModelProto, elem_type: int = onnx.TensorProto.FLOAT) -> set[str]:
    """The names the converter stores as float16: those its graphs' inputs, outputs and ``value_info`` type float32
    (after its shape inference), in every subgraph too; given ``elem_type``, those typed so."""
    names: set[str] = set()
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        names.update(
            info.name
            for info in (*graph.input, *graph.output, *graph.value_info)
            if info.type.tensor_type.elem_type == elem_type
        )
        for node in graph.node:
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs)
    return names


def _types_inferred(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``proto`` with the type of each node output declared, and the main graph's node outputs still untyped.

    The converter makes float16 exactly the values its graphs declare float32 and writes the Casts around a blocked
    op only for those, and the twin's ``deployed`` model rounds only those: a float value left undeclared ran as
    float16 unchecked. onnx's shape inference does not know com.microsoft ops and types nothing after one whose
    outputs the file leaves undeclared (a ``Gelu`` in a model without ``value_info``: a ``MatMul`` to 192000 after
    it was verified, and is infinite on a GPU); ONNX Runtime, which knows them, types those values when it loads
    the model, and onnx's inference then types the subgraphs that read them.
    """
    # onnx's inference keeps the types a file declares for contrib outputs (none lost on the fused fixtures).
    proto = onnx.shape_inference.infer_shapes(proto)
    untyped = _untyped_outputs(proto.graph)
    if not untyped or not _has_contrib_ops(proto):
        return proto, []
    types = _runtime_types(proto, untyped)
    if types is None:
        return proto, untyped
    proto.graph.value_info.extend(
        onnx.helper.make_tensor_value_info(name, elem_type, None) for name, elem_type in types.items() if elem_type
    )
    return onnx.shape_inference.infer_shapes(proto), []


def _untyped_outputs(graph: onnx.GraphProto) -> list[str]:
    typed = {
        info.name
        for info in (*graph.input, *graph.output, *graph.value_info)
        if info.type.WhichOneof("value") not in (None, "tensor_type") or info.type.tensor_type.elem_type
    }
    return [name for node in graph.node for name in node.output if name and name not in typed]


def _runtime_types(proto: onnx.ModelProto, names: list[str]) -> dict[str, int] | None:
    """The tensor element types ONNX Runtime gives ``names`` (main-graph values) when it loads ``proto`` (0 for one
    that is not a tensor: a sequence); None if it refuses the model."""
    outputs = len(proto.graph.output)
    proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    try:
        session = open_session(proto.SerializeToString(), session_options("disable_all", 1), ["CPUExecutionProvider"])
    except RuntimeRefusedError:
        return None
    finally:
        del proto.graph.output[outputs:]
    types = {}
    for output in session.get_outputs()[outputs:]:
        spelled = output.type.removeprefix("tensor(").removesuffix(")") if output.type.startswith("tensor(") else ""
        types[output.name] = getattr(onnx.TensorProto, spelled.upper(), 0) if spelled else 0
    return types


def _has_contrib_ops(proto: onnx.ModelProto) -> bool:
    # onnx's shape inference does not know com.microsoft ops, nor type some ai.onnx.ml ones (skl2onnx's Scaler): their
    # undeclared outputs need ONNX Runtime's types. Left untyped, a Scaler's float32 output met a float16 column in a
    # Concat, uncast, and ONNX Runtime refused the result.
    return any(node.domain in (MS_DOMAIN, "ai.onnx.ml") for node in proto.graph.node)

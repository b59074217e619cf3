"""Finding layers: nodes with a constant float32 weight (what quantization and pruning rewrite).

A *layer* is one node whose weight is an initializer or Constant (or one stored in int8 and dequantized by hand in the
graph, ``Mul(Cast(q), scale)``: ``weight_array``): MatMul and Gemm
(weight ``[K, N]`` after undoing ``transB``), Conv, and com.microsoft Attention with
packed QKV weights. Each is named (unnamed nodes get a stable name) so ``--exclude``
patterns, sensitivity reports and the float-kept list can refer to it.

A MatMul or Gemm weight may also be ``Transpose(constant)`` (perm ``[1, 0]``): that is
how the dynamo exporter spells an LM head tied to the embedding table, and how
``deduplicate-initializers`` stores a transposed copy. The layer reads the constant
transposed; ``Layer.source`` is the constant and ``Layer.tied`` the other nodes that
read it (the embedding ``Gather``), so a pass that would write its own copy of the
weight can refuse (``tied_weight_reason``) instead of storing the table twice.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_domain, onnx_opset
from optimizer.protocol import EXACT_CORRECTION_PREFIX
from passes._utils import add_initializer, constant_array, replace_value, unique_name, weight_array


@dataclass
class Layer:
    """A node with a constant weight, seen the way the int8 kernels want it.

    ``weight`` is ``[K, N]`` for MatMul, Gemm and Attention (N = output features),
    ``[M, C/groups, *kernel]`` for Conv; ``bias`` is a ``[N]``/``[M]`` vector or None; both float32.
    """

    node: ir.Node
    kind: str
    weight: np.ndarray
    bias: np.ndarray | None
    # The constant that holds the weight (the node's input, or the input of the Transpose it
    # reads), and the nodes other than layers that read that constant too (a tied lookup).
    source: ir.Value | None = None
    tied: tuple[ir.Node, ...] = ()
    # A MatMul or Gemm computing in float16 (``find_layers(float16=True)``): ``weight`` and ``bias`` are float32
    # copies of its float16 constants.
    float16: bool = False

    @property
    def transposed(self) -> bool:
        """True if the layer reads its weight through ``Transpose(source)``."""
        return self.source is not None and self.source is not self.node.inputs[1]

    @property
    def name(self) -> str:
        return self.node.name or ""

    @property
    def activation(self) -> ir.Value:
        """The float input the int8 kernel quantizes (the layer's data input)."""
        return self.node.inputs[0]


def name_nodes(graph: ir.Graph) -> None:
    """Give every unnamed node of ``graph`` a unique ``<op_type>_<index>`` name."""
    taken = {node.name for node in graph if node.name}
    for index, node in enumerate(graph):
        if node.name:
            continue
        name = f"{node.op_type}_{index}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)


def find_layers(
    graph: ir.Graph, kinds: Iterable[str], *, float16: bool = False
) -> tuple[list[Layer], dict[ir.Node, str]]:
    """The quantizable layers of ``graph`` of the given kinds, and why other weighted nodes were refused.

    ``kinds`` is a subset of ``{"matmul", "gemm", "conv", "attention"}``. The refusals
    map node → reason, for nodes that looked like candidates. With ``float16``, a MatMul or Gemm computing in
    float16 (its input and constant weight float16) is a layer too (``Layer.float16``); else it is refused
    ("input is not float32").
    """
    kinds = set(kinds)
    layers, refused = [], {}
    for node in graph:
        kind = _kind(node)
        if kind is None or kind not in kinds:
            continue
        found = _layer(node, kind, float16)
        if isinstance(found, str):
            refused[node] = found
        else:
            layers.append(found)
    _find_tied_readers(layers)
    return layers, refused


def float_weighted(node: ir.Node) -> bool:
    """True if ``node`` is a layer by its weight (a MatMul, Gemm, Conv or packed-QKV Attention reading a constant
    float32 weight, finite, from a float32 input), whatever ``find_layers`` said of its form: one a pass refuses
    for its form (an Attention's ``attention_bias``, a Gemm's ``transA``) stays float, and is counted so."""
    kind = _kind(node)
    if kind is None or len(node.inputs) < 2 or not _float32(node.inputs[0]):
        return False
    weight, source = _weight(node, kind)
    if weight is None or weight.dtype != np.float32 or not np.isfinite(weight).all():
        return False
    return source is None or not (source.name or "").startswith(EXACT_CORRECTION_PREFIX)


def tied_weight_reason(layer: Layer) -> str | None:
    """Why rewriting ``layer``'s weight into a new tensor would store it twice, or None.

    A layer whose weight constant is also read by other nodes (an LM head tied to the
    embedding ``Gather``), or is itself a model output, keeps that constant alive: a
    quantized or factorized copy of the weight would sit beside it.
    """
    if not layer.tied:
        if layer.source is not None and layer.source.is_graph_output():
            return "its weight is also a model output: a rewritten copy would be stored beside it, so it stays float"
        return None
    readers = sorted({node.op_type for node in layer.tied})
    return (
        f"its weight is also read by {', '.join(readers)} (a tied table): "
        "a rewritten copy would be stored beside it, so it stays float and stored once"
    )


def row_lookup(node: ir.Node) -> bool:
    """True if ``node`` is an ONNX ``Gather`` of whole rows of a 2-D table: axis 0, or -2 (the same axis of a 2-D
    table; a table of another rank is the caller's to refuse)."""
    return node.op_type == "Gather" and is_onnx_domain(node) and node.attributes.get_int("axis", 0) in (0, -2)


def excluded(layer: Layer, patterns: Iterable[str]) -> bool:
    """True if a ``--exclude`` glob matches the layer's node name or its op type."""
    return any(fnmatch.fnmatchcase(layer.name, p) or fnmatch.fnmatchcase(layer.node.op_type, p) for p in patterns)


def unmatched_patterns(graph: ir.Graph, patterns: Iterable[str]) -> list[str]:
    """The ``--exclude`` globs that match no node name or op type of ``graph`` (a typo keeps nothing float)."""
    nodes = list(graph)
    return [
        pattern
        for pattern in patterns
        if not any(
            fnmatch.fnmatchcase(node.name or "", pattern) or fnmatch.fnmatchcase(node.op_type, pattern)
            for node in nodes
        )
    ]


def feeds_graph_output(layer: Layer) -> bool:
    """True if the layer's result (after a Mul by one constant value, then a bias Add, each if any) is a graph output:
    an LM head or classifier. The Mul is a Gemm's alpha that ``canonical_gemms`` wrote after it, or a logit scale: a
    head quantized behind it reaches the answer undamped all the same. So is a result that reaches an output through
    ops that only move its values (``_moved_to_graph_output``): attacut's ``Linear(32, 1)`` returned as ``view(-1)``,
    an unrolled greedy decoder's per-step logits joined by a ``Concat``, were quantized as hidden layers until review
    s73."""
    output = layer.node.outputs[0]
    users = [user for user, _ in output.uses()]
    if len(users) == 1 and users[0].op_type == "Mul" and is_onnx_domain(users[0]) and len(users[0].inputs) == 2:
        other = users[0].inputs[1] if users[0].inputs[0] is output else users[0].inputs[0]
        if (factor := constant_array(other)) is not None and factor.size == 1:
            output = users[0].outputs[0]
    if _moved_to_graph_output(output):
        return True
    users = [user for user, _ in output.uses()]
    return len(users) == 1 and users[0].op_type == "Add" and _moved_to_graph_output(users[0].outputs[0])


# Ops that move or regroup their data input's values into their output without computing with them (a Concat joins
# every input so).
_MOVES = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat")
# Ops that read an answer's scores to pick or normalize them (a greedy decoder's ArgMax, a Softmax beside the logits).
_READS_AN_ANSWER = ("ArgMax", "TopK", "Softmax", "LogSoftmax", "Sigmoid")


def _moved_to_graph_output(value: ir.Value) -> bool:
    """Whether ``value`` is a graph output, or reaches one through ``_MOVES`` alone (their data input; any input of a
    ``Concat``) with nothing else reading it or what it is moved into but ``_READS_AN_ANSWER``: a decoder's keys and
    values, reshaped, transposed and joined to the past into its ``present`` outputs, are read by its attention's
    ``MatMul`` too, and are no answer."""
    if value.is_graph_output():
        return True
    seen, todo, reached = {id(value)}, [value], False
    while todo:
        value = todo.pop()
        reached = reached or value.is_graph_output()
        for user, index in value.uses():
            if not is_onnx_domain(user):
                return False
            if user.op_type in _READS_AN_ANSWER:
                continue
            if user.op_type not in _MOVES or (index != 0 and user.op_type != "Concat"):
                return False
            for moved in user.outputs:
                if id(moved) not in seen:
                    seen.add(id(moved))
                    todo.append(moved)
    return reached


def bias_add(layer: Layer) -> tuple[np.ndarray, ir.Node, int] | None:
    """The bias Add after a MatMul: ``(bias vector [N], the Add node, the bias operand's index)``, or None.

    Only when the Add is the MatMul's one user and adds a constant of N values, along the last axis, of no more
    dims than the product has, in the layer's own type (float32, float16 for a float16 layer); the vector is a float32
    copy, as ``Layer.bias`` is.
    """
    output = layer.node.outputs[0]
    users = list(output.uses())
    if layer.kind != "matmul" or output.is_graph_output() or len(users) != 1:
        return None
    add, index = users[0].node, 1 - users[0].idx
    if add.op_type != "Add" or not is_onnx_domain(add):
        return None
    bias = constant_array(add.inputs[index])
    columns = layer.weight.shape[1]
    # The product has the input's rank (a 2-D weight), where it is known.
    rank = layer.activation.shape.rank() if layer.activation.shape is not None else None
    own = np.float16 if layer.float16 else np.float32
    if bias is None or bias.dtype != own or not is_feature_bias(bias.shape, columns, rank):
        return None
    return bias.reshape(-1).astype(np.float32), add, index


def add_after(graph: ir.Graph, node: ir.Node, value: np.ndarray, base_name: str) -> None:
    """Add the constant ``value`` to ``node``'s first output for everything that reads it, graph outputs included
    (they keep their name): an ``Add`` named ``{node}_{base_name}`` reading an initializer ``{node}.{base_name}``."""
    output = node.outputs[0]
    bias = add_initializer(graph, f"{node.name}.{base_name}", value)
    add = ir.Node("", "Add", [output, bias], name=f"{node.name}_{base_name}")
    graph.insert_after(node, add)
    replace_value(output, add.outputs[0])  # this also points the new Add at itself ...
    add.replace_input_with(0, output)  # ... so it reads the node again
    add.outputs[0].type, add.outputs[0].shape = output.type, output.shape


def fold_into_bias(graph: ir.Graph, node: ir.Node, change: np.ndarray, base_name: str) -> bool:
    """Add ``change`` to a Gemm's C of one value per output or a Conv's B (zeros where it has none), as a new
    initializer ``{node}.{base_name}``; False, changing nothing, for any other node or C (a Gemm's C that a beta other
    than 1 scales too). A weight or bias stored int8 and dequantized in the graph (``weight_array``) is read as its
    float32 values, and the new bias is written in float32 in its place. A Gemm given a C where it had none gets
    beta 1 (without C, any beta is taken as a layer).

    A repaired bias added after such a node instead (``add_after``) leaves its output holding the old bias: where
    that output is a checkpoint of a twin (a residual block's input, read by its up projection and its skip), the
    twin and the result, which stores the new bias in C, would differ there by the whole change."""
    if node.op_type not in ("Gemm", "Conv") or not is_onnx_domain(node):
        return False
    conv = node.op_type == "Conv"
    weight = weight_array(node.inputs[1])  # a weight or bias stored int8 and dequantized in the graph too
    if weight is None:
        return False
    width = weight.shape[0 if conv or node.attributes.get_int("transB", 0) else 1]
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    if has_bias and not conv and node.attributes.get_float("beta", 1.0) != 1.0:
        return False  # C is scaled by beta: the change would be too
    current = weight_array(node.inputs[2]) if has_bias else np.zeros(width)
    if current is None or current.size != width or not (conv or is_feature_bias(current.shape, width, 2)):
        return False
    total = (current.astype(np.float64) + change.astype(np.float64).reshape(current.shape)).astype(weight.dtype)
    if not has_bias:
        node.resize_inputs(3)
        if not conv:  # a Gemm without C may state any beta (``find_layers`` takes it): the new C is added as it is
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    node.replace_input_with(2, add_initializer(graph, f"{node.name}.{base_name}", total))
    return True


def is_feature_bias(shape: Sequence[int], columns: int, rank: int | None) -> bool:
    """Whether a constant of ``shape`` added to a product ``[..., columns]`` of ``rank`` dims (None: unknown) is one
    value per output feature: ``columns`` values along the last axis (``[N]``, ``[1, N]``, ``[1, 1, N]``), of no more
    dims than the product.

    A constant of ``[M, 1]`` with ``M == N`` adds one value per *row*; one of more dims than the product adds them to
    the output (``[N] @ W + [1, N]`` is ``[1, N]``): taken for a bias of the features, either would be lost.
    """
    shape = tuple(shape)
    if math.prod(shape) != columns or shape[-1:] != (columns,):
        return False
    return len(shape) <= 1 or (rank is not None and rank >= len(shape))


def _kind(node: ir.Node) -> str | None:
    if is_onnx_domain(node):
        return {"MatMul": "matmul", "Gemm": "gemm", "Conv": "conv"}.get(node.op_type)
    if node.domain == MS_DOMAIN and node.op_type == "Attention":
        return "attention"
    return None


def _float16(value: ir.Value | None) -> bool:
    return value is not None and value.dtype in (ir.DataType.FLOAT16, None)


def _float32(value: ir.Value | None) -> bool:
    # Legacy exports leave intermediate dtypes unknown; the float32 weight decides then.
    return value is not None and value.dtype in (ir.DataType.FLOAT, None)


def _find_tied_readers(layers: list[Layer]) -> None:
    """Fill ``Layer.tied``: who else reads each layer's weight constant (not as a layer's weight)."""
    weight_reads = {(id(layer.node), 1) for layer in layers}
    for layer in layers:
        if layer.source is None:
            continue
        tied = []
        for user, index in layer.source.uses():
            if (id(user), index) in weight_reads:
                continue
            transpose_to_layers = _is_matrix_transpose(user) and all(
                (id(reader), i) in weight_reads for reader, i in user.outputs[0].uses()
            )
            if not transpose_to_layers or user.outputs[0].is_graph_output():
                tied.append(user)
        layer.tied = tuple(tied)


def _is_matrix_transpose(node: ir.Node) -> bool:
    if node.op_type != "Transpose" or not is_onnx_domain(node) or len(node.inputs) != 1:
        return False
    perm = node.attributes.get_ints("perm", None)
    return perm is None or list(perm) == [1, 0]


def _weight(node: ir.Node, kind: str) -> tuple[np.ndarray | None, ir.Value | None]:
    """The layer's weight and the value holding it: the input itself (a constant, or a weight dequantized by hand,
    ``weight_array``), or a transposed one (``Transpose(Mul(Cast(q), scale))`` too: ``fold-constants`` leaves that
    chain, and such a MatMul was left float as "weight is not a constant")."""
    value = node.inputs[1]
    weight = weight_array(value)
    if weight is not None:
        return weight, value
    producer = value.producer() if value is not None else None
    if kind in ("matmul", "gemm") and producer is not None and _is_matrix_transpose(producer):
        source = producer.inputs[0]
        transposed = weight_array(source)
        if transposed is not None and transposed.ndim == 2:
            # The exporters' tied LM head: MatMul(x, Transpose(table)).
            return np.ascontiguousarray(transposed.T), source
    return None, None


def _layer(node: ir.Node, kind: str, float16: bool = False) -> Layer | str:
    inputs = list(node.inputs)
    half = float16 and kind in ("matmul", "gemm") and len(inputs) > 1 and _float16(inputs[0])
    if len(inputs) < 2 or not (half or _float32(inputs[0])):
        return "input is not float32"
    weight, source = _weight(node, kind)
    if weight is None:
        return _not_constant_reason(node, kind)
    if source is not None and (source.name or "").startswith(EXACT_CORRECTION_PREFIX):
        return "graphopt's own exact float correction beside a quantized layer (block offsets, outlier channels)"
    half = half and weight.dtype == np.float16  # an input of unknown type beside a float32 weight is float32
    if weight.dtype != np.float32 and not half:
        return "weight is not float32"
    weight = weight.astype(np.float32) if half else weight
    if not np.isfinite(weight).all():  # no scale, factor or ranking stands for it (int8 failed the whole pass)
        return "weight holds NaN or Inf"
    # A bias stored int8 and dequantized by hand beside such a weight is one too (a Conv's was "not a constant").
    bias = weight_array(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else None
    if kind == "matmul":
        if weight.ndim != 2:
            return f"weight has rank {weight.ndim}, not 2"
        return Layer(node, kind, weight, None, source, float16=half)
    if kind == "gemm":
        found = _gemm(node, weight, None if bias is None else bias.astype(np.float32) if half else bias, inputs)
        if isinstance(found, Layer):
            found.float16 = half
    elif kind == "conv":
        if weight.ndim < 3:
            return "weight rank below 3"
        if len(inputs) > 2 and inputs[2] is not None and bias is None:
            return "bias is not a constant"
        found = Layer(node, kind, weight, bias)
    else:
        found = _attention(node, weight, bias, inputs)
    if isinstance(found, Layer):
        found.source = source
    return found


def _not_constant_reason(node: ir.Node, kind: str) -> str:
    """Why a candidate's second input is no weight: a constant first operand (``W @ x``), a weight already
    dequantized from integers, or no constant at all."""
    weight = node.inputs[1]
    producer = weight.producer() if weight is not None else None
    if producer is not None and producer.op_type == "DequantizeLinear" and is_onnx_domain(producer):
        return "weight is already quantized (it is read through DequantizeLinear)"
    if kind in ("matmul", "gemm") and constant_array(node.inputs[0]) is not None:
        return "its constant is the first operand (W @ x); only x @ W, the constant second, is taken"
    return "weight is not a constant"


def _gemm(node: ir.Node, weight: np.ndarray, bias: np.ndarray | None, inputs: list) -> Layer | str:
    attrs = node.attributes
    has_c = len(inputs) > 2 and inputs[2] is not None
    # beta scales C alone: a Gemm without C computes the same product whatever its beta (a rewrite that gives it a
    # C sets beta to 1, ``fold_into_bias``).
    if (
        attrs.get_int("transA", 0)
        or attrs.get_float("alpha", 1.0) != 1.0
        or (has_c and attrs.get_float("beta", 1.0) != 1.0)
    ):
        return "transA, alpha or beta is set"
    if weight.ndim != 2:
        return "weight is not 2-D"
    if attrs.get_int("transB", 0):
        weight = weight.T
    if has_c:
        if bias is None:
            return "bias is not a constant"
        columns = weight.shape[1]
        if bias.size == 1:
            bias = np.full(columns, bias.reshape(-1)[0], dtype=bias.dtype)
        elif not is_feature_bias(bias.shape, columns, 2):
            # C of shape [M, 1] or [M, N] adds per row or per element: not a bias of the output features.
            return f"bias of shape {list(bias.shape)} is not one value per output feature"
        bias = bias.reshape(-1)
    return Layer(node, "gemm", np.ascontiguousarray(weight), bias)


def _attention(node: ir.Node, weight: np.ndarray, bias: np.ndarray | None, inputs: list) -> Layer | str:
    # QAttention has no qkv_hidden_sizes, past/present, attention_bias or cache inputs.
    attrs = node.attributes
    if weight.ndim != 2 or weight.shape[1] % 3:
        return "weight is not [input hidden, 3*hidden]"
    if bias is None or bias.shape != (weight.shape[1],):
        return "no constant [3*hidden] bias"
    if len(inputs) > 4 and any(v is not None for v in inputs[4:]):
        return "uses past, attention_bias or cache inputs"
    if "qkv_hidden_sizes" in attrs or attrs.get_int("do_rotary", 0) or attrs.get_int("past_present_share_buffer", 0):
        return "qkv_hidden_sizes, rotary or shared past buffer"
    if len(node.outputs) > 1 and any(v is not None and v.uses() for v in node.outputs[1:]):
        return "its present output is used"
    return Layer(node, "attention", weight, bias)


@dataclass
class GemmForm:
    """A ``Gemm`` that ``canonical_gemms`` rewrote into a form ``find_layers`` takes, with what it read before."""

    node: ir.Node
    inputs: tuple[ir.Value | None, ...]
    attributes: tuple[ir.Attr, ...]
    written: tuple[ir.Value | None, ...]
    before: ir.Node | None  # Transpose(A), for transA
    after: tuple[ir.Node, ...]  # Mul by alpha, then Add of C; a Mul of a computed C by beta before that Add


def canonical_gemms(graph: ir.Graph, *, float16: bool = False) -> list[GemmForm]:
    """Rewrite each float32 ``Gemm`` layer that ``find_layers`` refuses for its form alone into one it takes.

    ``Y = alpha * op(A) @ op(B) + beta * C`` becomes, with ``transB`` kept:

    - ``transA``: ``A`` read through ``Transpose`` (the quantized kernels read ``[M, K]`` rows);
    - ``alpha``: folded into a copy of the weight where the weight is a constant this node alone reads (the
      quantizers' scales then carry it), else a ``Mul`` by alpha after the product;
    - ``beta`` on a constant C of one value per output feature: folded into a copy of C, which stays the Gemm's C;
    - any other C (a full ``[M, N]``, ``[M, 1]``, or computed C): an ``Add`` after the product (of ``beta * C``: a
      copy of a constant C, or a ``Mul`` of a computed one), as ``MatMul`` + ``Add`` is quantized with its ``Add``
      kept;
    - ``beta`` 0: C dropped, as ONNX Runtime skips it (``0 * C`` would be NaN where C holds an infinity).

    Below opset 11, where Gemm requires C, a C taken off is a C of one 0.

    The result computes the same ``Y`` (alpha and beta folded into a constant round once more, within float32's
    rounding). Gemms that are layers already, or that ``find_layers`` refuses for anything but this form (a weight
    not constant or not float32, a float16 input unless ``float16``), are left alone. A float16 Gemm's alpha and beta
    are folded in float16. Returns the rewrites, for ``restore_gemms``.
    """
    forms = []
    wanted = [node for node in graph if _form_wanted(node, float16)]
    if not wanted:
        return forms
    # Names of the nodes and values made: unused by any node or value of the graph.
    taken = {name for node in graph for name in (node.name, *(value.name for value in node.outputs)) if name}
    taken |= {value.name for value in (*graph.inputs, *graph.initializers.values()) if value.name}
    for node in wanted:
        attrs = node.attributes
        c = node.inputs[2] if len(node.inputs) > 2 else None
        weight, _ = _weight(node, "gemm")
        trans_a, alpha, beta = attrs.get_int("transA", 0), attrs.get_float("alpha", 1.0), attrs.get_float("beta", 1.0)
        forms.append(_rewrite_gemm(graph, node, weight, trans_a, alpha, beta, c, taken))
    _share_transposes(graph, forms)
    return forms


def _share_transposes(graph: ir.Graph, forms: Sequence[GemmForm]) -> None:
    """Point the Gemms of ``forms`` that read one A (Q, K and V) at the first one's Transpose of it, the others'
    removed: one pass over A, and one input for their quantized kernels to share (one MatMulNBits over their columns,
    one DynamicQuantizeLinear). ``forms`` is in graph order: that Transpose comes before them all."""
    first: dict[int, ir.Node] = {}
    for form in forms:
        if form.before is None:
            continue
        kept = first.setdefault(id(form.before.inputs[0]), form.before)
        if kept is not form.before:
            form.node.replace_input_with(0, kept.outputs[0])
            graph.remove(form.before, safe=True)
            form.before, form.written = kept, tuple(form.node.inputs)


def gemm_forms_wanted(graph: ir.Graph, *, float16: bool = False) -> bool:
    """True if ``canonical_gemms`` would rewrite a Gemm of ``graph``."""
    return any(_form_wanted(node, float16) for node in graph)


def _form_wanted(node: ir.Node, float16: bool) -> bool:
    """True for a Gemm that ``find_layers`` refuses for its form alone (transA, alpha, beta, a C that is no feature
    bias or not a constant) and would take in the form ``canonical_gemms`` writes."""
    if _kind(node) != "gemm" or len(node.inputs) < 2 or isinstance(_layer(node, "gemm", float16), Layer):
        return False
    attrs = node.attributes
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if not (attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0 or c is not None):
        return False
    weight, source = _weight(node, "gemm")
    return weight is not None and weight.ndim == 2 and _layer_after_form(node, weight, source, c, float16) is None


def restore_gemms(graph: ir.Graph, forms: Iterable[GemmForm]) -> int:
    """Put back, as they were, the Gemms of ``forms`` still float in ``graph``: the node still reads what
    ``canonical_gemms`` wrote (a quantizer left it alone), and its Transpose, Mul and Add are still there. A
    float Gemm with ``transA`` or C runs in one kernel, without the extra pass over ``A`` or ``Y``. Returns how many."""
    restored = 0
    for form in forms:
        node = form.node
        helpers = [*([form.before] if form.before is not None else []), *form.after]
        if (
            node.graph is not graph
            or len(node.inputs) != len(form.written)
            or any(a is not b for a, b in zip(node.inputs, form.written))
            or any(made.graph is not graph for made in helpers)
            or not all(_restorable(graph, value) for value in form.inputs)
        ):
            continue
        for value in form.inputs:  # an initializer the rewritten node no longer read was removed as unused
            if value is not None and value.producer() is None and value.const_value is not None:
                if graph.initializers.get(value.name) is not value:
                    graph.register_initializer(value)
        if form.after:
            last = form.after[-1]
            replace_value(last.outputs[0], node.outputs[0], inherit=True)
        node.resize_inputs(len(form.inputs))
        for index, value in enumerate(form.inputs):
            node.replace_input_with(index, value)
        node.attributes.clear()
        for attribute in form.attributes:
            node.attributes[attribute.name] = attribute
        for made in reversed(helpers):
            if not any(output.uses() or output.is_graph_output() for output in made.outputs):
                graph.remove(made, safe=True)
        restored += 1
    return restored


def _restorable(graph: ir.Graph, value: ir.Value | None) -> bool:
    """Whether ``graph`` can read ``value`` again: a value of the graph (an input, a node's output still there), or an
    initializer, registered again under its name where nothing else took it."""
    if value is None or value.is_graph_input():
        return True
    producer = value.producer()
    if producer is not None:
        return producer.graph is graph
    if value.const_value is None:
        return False
    registered = graph.initializers.get(value.name)
    return registered is value or (registered is None and value.name is not None)


def _layer_after_form(
    node: ir.Node, weight: np.ndarray, source: ir.Value | None, c: ir.Value | None, float16: bool
) -> str | None:
    """Why the Gemm would not be a layer even in the form ``canonical_gemms`` writes (None: it would)."""
    half = float16 and _float16(node.inputs[0]) and weight.dtype == np.float16
    if not (half or _float32(node.inputs[0])):
        return "input is not float32"
    if source is not None and (source.name or "").startswith(EXACT_CORRECTION_PREFIX):
        return "correction"
    if weight.dtype != (np.float16 if half else np.float32) or not np.isfinite(weight).all():
        return "weight"
    if c is not None and c.dtype not in (ir.DataType.FLOAT16 if half else ir.DataType.FLOAT, None):
        return "C is not of the input's type"
    return None


def _rewrite_gemm(
    graph: ir.Graph,
    node: ir.Node,
    weight: np.ndarray,
    trans_a: int,
    alpha: float,
    beta: float,
    c: ir.Value | None,
    taken: set[str],
) -> GemmForm:
    """``canonical_gemms``'s rewrite of one Gemm; the nodes it makes are named after it, apart from ``taken``."""

    def made(op_type: str, inputs: list, suffix: str, **attributes) -> ir.Node:
        attrs = [ir.AttrInt64s(key, value) for key, value in attributes.items()]
        new = ir.Node("", op_type, inputs, attributes=attrs, name=unique_name(f"{node.name}_{suffix}", taken))
        new.outputs[0].name = unique_name(f"{new.name}.output", taken)
        return new

    inputs, attributes = tuple(node.inputs), tuple(node.attributes.values())
    element = weight.dtype  # float32, or float16 (``canonical_gemms(float16=True)``)
    before, after = None, []
    if trans_a:
        before = made("Transpose", [node.inputs[0]], "transpose_a", perm=[1, 0])
        graph.insert_before(node, before)
        node.replace_input_with(0, before.outputs[0])
    stored = constant_array(node.inputs[1])
    alone = stored is not None and len(node.inputs[1].uses()) == 1 and not node.inputs[1].is_graph_output()
    scaled_after = alpha != 1.0 and not alone
    if alpha != 1.0 and alone:
        node.replace_input_with(
            1, add_initializer(graph, f"{node.name}.scaled_weight", (stored * np.float32(alpha)).astype(element))
        )
    if c is not None and beta == 0.0:
        # At beta 0 ONNX Runtime and ONNX's reference skip C: beta * C would be NaN where C holds an infinity (or NaN).
        _drop_c(graph, node, element)
        c = None
    columns = weight.shape[0 if node.attributes.get_int("transB", 0) else 1]
    c_array = weight_array(c) if c is not None else None
    feature = (
        c_array is not None and not scaled_after and (c_array.size == 1 or is_feature_bias(c_array.shape, columns, 2))
    )
    if c is not None and feature and beta != 1.0:
        node.replace_input_with(
            2, add_initializer(graph, f"{node.name}.scaled_bias", (c_array * np.float32(beta)).astype(element))
        )
    elif c is not None and not feature:
        _drop_c(graph, node, element)
        if beta == 1.0:
            addend = c
        elif c_array is not None:
            addend = add_initializer(graph, f"{node.name}.scaled_c", (c_array * np.float32(beta)).astype(element))
        else:
            factor = add_initializer(graph, f"{node.name}.beta", np.array(beta, element))
            scale = made("Mul", [c, factor], "beta")
            after.append(scale)
            addend = scale.outputs[0]
    for name in ("transA", "alpha", "beta"):
        node.attributes.pop(name, None)
    output = node.outputs[0]
    tail = []
    if scaled_after:
        factor = add_initializer(graph, f"{node.name}.alpha", np.array(alpha, element))
        tail.append(made("Mul", [output, factor], "alpha"))
    if c is not None and not feature:
        last = tail[-1].outputs[0] if tail else output
        tail.append(made("Add", [last, addend], "c"))
    if tail:
        graph.insert_after(node, [*after, *tail])
        replace_value(output, tail[-1].outputs[0], inherit=True)  # this also points the first of them at itself ...
        tail[0].replace_input_with(0, output)  # ... so it reads the product again
        output.name = unique_name(f"{node.name}_product.output", taken)
    elif after:
        graph.insert_after(node, after)
    return GemmForm(node, inputs, attributes, tuple(node.inputs), before, (*after, *tail))


def _drop_c(graph: ir.Graph, node: ir.Node, element: np.dtype) -> None:
    """Take C off the Gemm ``node``; below opset 11, where Gemm requires C, give it a C of one 0 instead (ONNX Runtime
    refused the Gemm without one there, and every layer of the pass was rolled back with it)."""
    if onnx_opset(graph.opset_imports, 11) < 11:
        node.replace_input_with(2, add_initializer(graph, f"{node.name}.zero_c", np.zeros(1, element)))
        return
    node.replace_input_with(2, None)
    node.resize_inputs(2)

"""Shapes a fusion needs but the exporter did not record, inferred for the time of one pass and then taken back.

Exporters record ``value_info`` for some intermediate values, for all of them or for
none (the legacy exporter leaves it off; a model saved after an edit often has
none). A fusion that decides from ranks and dims (the attention fusion reads a mask's
rank and the dims a Reshape keeps) would then depend on how the file was written,
not on what it computes. ``inferred_shapes`` fills the missing shapes and element
types from ONNX shape inference (with data propagation, so shape arithmetic on
``Shape`` outputs gives symbolic dims) and removes them again when the block ends, so
a pass that rewrote nothing leaves the model exactly as it found it (an honest
``modified=False``) and one that did leaves only its own rewrite.

Inference runs on a clone that owns its types (weights are shared, not serialized:
onnx-ir's ``ShapeInferencePass`` drops initializers over 1 KB while it calls onnx), and
only values with no shape or no type at all are filled; recorded shapes are never
overwritten. An initializer that is also a graph input is inferred from as an input (its
declared shape, not its value): a caller may override it. If inference fails on the graph (onnx-ir's pass then leaves it
unchanged), nothing is filled.

ONNX shape inference stops at an operator it has no schema for: ONNX Runtime's contrib ops
(``SimplifiedLayerNormalization``, which ORT registers in the ONNX domain, and the
``com.microsoft`` ops) get no output shape, and nor does anything computed from them, so a
fusion after an earlier one (an unscaled RMSNorm after a fused scaled one, an attention after
a fused norm or rotary embedding, a head split after an int4 ``MatMulNBits`` projection) would
see no shapes at all. In the clone, each output of a contrib op whose shape is a fixed function
of the op's inputs is read from a stand-in that ONNX knows, of exactly that shape and type
(``_STAND_INS``: an ``Identity`` of the input whose shape and type the output keeps, a
``CastLike`` of it where the output takes another input's type, EmbedLayerNormalization's table
``Gather``, a ``MatMul`` against a zero weight of the op's logical shape for MatMulNBits,
FusedMatMul and Attention, a ``Gather`` from a zero table for GatherBlockQuantized, an
``Expand`` to the shapes MultiHeadAttention's output and presents take); an op not listed, and an
output with no rule, stays unknown, as do their consumers. No dim is ever guessed, and no stand-in passes
values on (ONNX's data propagation would read a norm of a shape as the shape; ``MatMul``,
``Expand`` and ``ConstantOfShape`` carry none). ``infer_contrib_outputs`` runs the same rules
on one node, for the constant folder's node-by-node inference.

Where ONNX's data propagation (shape arithmetic on ``Shape`` outputs and constants) would read
a shape wrong, the clone hides the values from it: through a ``Cast`` that can change a size
(``_hide_lossy_casts``), and out of a ``Slice`` whose start is not a constant, which ONNX reads
as 0 (``_hide_computed_slice_starts``; a named dim, NonZero's count or an input's value alike).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common  # noqa: F401  (ir.passes.common)

from optimizer.domains import MS_DOMAIN, ONNX_DOMAINS, onnx_opset
from passes._utils import clear_misinferred_shapes, inference_opsets


def _values(graph: ir.Graph) -> Iterator[ir.Value]:
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


def _element_type(value: ir.Value) -> ir.DataType | None:
    """``value``'s element type where the graph states it: a recorded type or a constant's."""
    if value.type is not None and value.dtype is not None:
        return value.dtype
    if value.const_value is not None:
        return value.const_value.dtype
    node = value.producer()
    if node is not None and node.op_type == "Constant" and node.domain in ONNX_DOMAINS:
        attribute = node.attributes.get("value")
        if attribute is not None and attribute.type == ir.AttributeType.TENSOR:
            return attribute.value.dtype
    return None


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _like_input(node: ir.Node) -> ir.Node | None:
    """Input 0's shape and type: the rule of every output listed with it below."""
    return ir.node("Identity", [node.inputs[0]])


def _like_input_typed_as_scale(node: ir.Node) -> ir.Node | None:
    """Input 0's shape in input 1's type: SimplifiedLayerNormalization's Y (type V, the scale's; X is T).

    An ``Identity`` where the two types are one, else ``CastLike`` (opset 15 on). Never ``Cast``:
    ONNX's data propagation carries values through it, so a norm of a shape computed in
    float would pass for that shape itself (a review: a Reshape's target read so was wrong).
    """
    scale = _input(node, 1)
    dtype = None if scale is None else _element_type(scale)
    if dtype is None:
        return None
    if _element_type(node.inputs[0]) == dtype:
        return _like_input(node)
    graph = node.graph
    opset = onnx_opset(graph.opset_imports, 0) if graph is not None else 0
    return ir.node("CastLike", [node.inputs[0], scale]) if opset >= 15 else None


def _query_with_key(node: ir.Node) -> ir.Node | None:
    """GroupQueryAttention's output with a separate key: the query's [B, S, num_heads * head_size] and type
    (a packed query, without a key, holds the key's and value's heads too)."""
    return _like_input(node) if _input(node, 1) is not None else None


def _embedded(node: ir.Node) -> ir.Node | None:
    """EmbedLayerNormalization's output and embedding_sum: ``input_ids``' [B, S] and the word table's
    hidden size, in its type, which is what gathering the table's rows at the ids gives."""
    table = _input(node, 2)
    return None if table is None else ir.node("Gather", [table, node.inputs[0]], {"axis": 0})


def _opset(node: ir.Node) -> int:
    graph = node.graph
    return onnx_opset(graph.opset_imports, 0) if graph is not None else 0


def _ints(values: list[int]) -> ir.Node:
    return ir.node("Constant", [], {"value": ir.tensor(np.array(values, np.int64))})


def _zeros_of_shape(dims: list[int], dtype: ir.DataType) -> list[ir.Node]:
    """A tensor of ``dims`` in ``dtype`` (``ConstantOfShape``: ONNX's data propagation passes on no values of it)."""
    shape = _ints(dims)
    zero = ir.tensor(np.zeros(1, dtype.numpy()))
    return [shape, ir.node("ConstantOfShape", [shape.outputs[0]], {"value": zero})]


def _shape_of(value: ir.Value) -> ir.Shape | None:
    """``value``'s shape: a constant's, or a recorded one's. An initializer that is also a graph input is a
    default a caller may override with a tensor of another shape its declaration allows: its declared shape."""
    if value.const_value is not None and not value.is_graph_input():
        return value.const_value.shape
    return value.shape


def _static_dims(value: ir.Value) -> list[int] | None:
    """``value``'s dims where every one is a known size: a constant's, or a recorded shape's."""
    shape = _shape_of(value)
    if shape is None or not all(isinstance(dim, int) for dim in shape):
        return None
    return [int(dim) for dim in shape]


def _matmul_nbits(node: ir.Node) -> list[ir.Node] | None:
    """MatMulNBits' Y: ``A @ W`` for a ``[K, N]`` weight in the type of A (and of the scales): A's shape with its
    last dim N, which ONNX Runtime's kernel computes with MatMul's rule against ``[K, N]`` (a 1-D A gives
    ``[N]``; an A whose last dim is not K is refused)."""
    scales = _input(node, 2)
    dtype = None if scales is None else _element_type(scales)
    k, n = node.attributes.get_int("K", 0), node.attributes.get_int("N", 0)
    if dtype is None or k <= 0 or n <= 0:
        return None
    weight = _zeros_of_shape([k, n], dtype)
    return [*weight, ir.node("MatMul", [node.inputs[0], weight[-1].outputs[0]])]


def _last_two_swapped(value: ir.Value) -> tuple[list[ir.Node], ir.Value]:
    """A value of ``value``'s type with its last two dims swapped, whatever its rank (2 or more; a lower one gets
    no shape): ``[.., m, k]`` -> ``[.., k, 1] * [.., 1, m]``, each factor a sum over the axis it drops."""
    last, third = _ints([-1]), _ints([-3])
    column = ir.node("Unsqueeze", [value, last.outputs[0]])  # [.., m, k, 1]
    column_sum = ir.node("ReduceSum", [column.outputs[0], third.outputs[0]], {"keepdims": 0})  # [.., k, 1]
    row = ir.node("Unsqueeze", [value, third.outputs[0]])  # [.., 1, m, k]
    row_sum = ir.node("ReduceSum", [row.outputs[0], last.outputs[0]], {"keepdims": 0})  # [.., 1, m]
    product = ir.node("Mul", [column_sum.outputs[0], row_sum.outputs[0]])
    return [last, third, column, column_sum, row, row_sum, product], product.outputs[0]


def _fused_matmul(node: ir.Node) -> list[ir.Node] | None:
    """FusedMatMul's Y: ``MatMul`` of the operands transposed as its attributes say (alpha only scales).

    ONNX Runtime moves a ``transBatch`` operand's first axis behind its other batch axes
    (``[b0, b1.., m, k]`` -> ``[b1.., b0, m, k]``), then swaps the last two axes of a ``trans`` one; it refuses
    ``transBatch`` unless both operands have one rank of at least 3, so that case needs both ranks recorded
    (a ``Transpose``), while ``trans`` alone takes any rank (ONNX ops of negative axes). Below opset 13 (axes
    as attributes) there is no stand-in.
    """
    operands = [node.inputs[0], _input(node, 1)]
    if operands[1] is None or _opset(node) < 13:
        return None
    batch = [node.attributes.get_int("transBatchA", 0), node.attributes.get_int("transBatchB", 0)]
    last = [node.attributes.get_int("transA", 0), node.attributes.get_int("transB", 0)]
    ranks = {None if v.shape is None else v.shape.rank() for v in operands}
    if any(batch) and (len(ranks) != 1 or None in ranks or min(ranks) < 3):
        return None
    nodes: list[ir.Node] = []
    for index, value in enumerate(operands):
        if batch[index]:
            rank = value.shape.rank()
            perm = [*range(1, rank - 1), 0, rank - 1]
            if last[index]:
                perm[-2:] = perm[-1], perm[-2]
            nodes.append(ir.node("Transpose", [value], {"perm": perm}))
            operands[index] = nodes[-1].outputs[0]
        elif last[index]:
            swapped, operands[index] = _last_two_swapped(value)
            nodes.extend(swapped)
    return [*nodes, ir.node("MatMul", operands)]


def _dims(value: ir.Value, start: int, end: int | None = None) -> ir.Node:
    attributes = {"start": start} if end is None else {"start": start, "end": end}
    return ir.node("Shape", [value], attributes)


def _expanded_to(dims: list[ir.Node], like: ir.Value) -> list[ir.Node]:
    """A tensor in ``like``'s type whose shape is the concatenation of ``dims``' (shape-valued) outputs:
    ``Expand`` of a zero cast like ``like`` to the shape ONNX's data propagation computes (it carries no
    values through ``Expand``)."""
    concat = ir.node("Concat", [part.outputs[0] for part in dims], {"axis": 0})
    zero = ir.node("Constant", [], {"value": ir.tensor(np.zeros((), np.float32))})
    typed = ir.node("CastLike", [zero.outputs[0], like])
    return [concat, zero, typed, ir.node("Expand", [typed.outputs[0], concat.outputs[0]])]


def _zeros_shaped(dims: list[ir.Node]) -> list[ir.Node]:
    """Float zeros whose shape is the concatenation of ``dims``' (shape-valued) outputs, after ``dims``
    (``Expand``: ONNX's data propagation carries no values through it)."""
    concat = ir.node("Concat", [part.outputs[0] for part in dims], {"axis": 0})
    zero = ir.node("Constant", [], {"value": ir.tensor(np.zeros((), np.float32))})
    return [*dims, concat, zero, ir.node("Expand", [zero.outputs[0], concat.outputs[0]])]


def _product_of(dims: list[ir.Node]) -> list[ir.Node]:
    """A shape-valued ``[d0 * d1 * ..]`` of the concatenation of ``dims``' (shape-valued) outputs, a named dim
    kept where the others are 1 or none: ``Shape(Flatten(zeros of those dims, axis=0), start=1)``, after
    ``dims``.

    ONNX's shape inference multiplies dims as dims (``1 * Dv`` is ``Dv``, ``4 * 8`` is 32), where its data
    propagation (``Mul`` of two shape values) names every product with a symbol afresh (``unk__N``): a width
    read so would not be the input's ``Dv``.
    """
    zeros = _zeros_shaped(dims)
    flat = ir.node("Flatten", [zeros[-1].outputs[0]], {"axis": 0})  # [1, product]
    return [*zeros, flat, _dims(flat.outputs[0], 1)]


def _rank(value: ir.Value) -> int | None:
    shape = _shape_of(value)
    return None if shape is None else shape.rank()


_UNKNOWN_RANK = 0


def _last_size(value: ir.Value) -> int | None:
    shape = _shape_of(value)
    return shape[-1] if shape is not None and shape.rank() and isinstance(shape[-1], int) else None


def _unpacked_key_and_value_rank(node: ir.Node) -> int | None:
    """The rank (3 or 4) of MultiHeadAttention's key and value, ``_UNKNOWN_RANK`` where it is not known before
    inference; None where ONNX Runtime refuses the layout as far as the ranks and sizes known tell, and below
    opset 15 (the rules read dims through ``Shape`` with start and end).

    ONNX Runtime refuses a query not of rank 3, a key and value not of one rank, 3 or 4, a past of one of key
    and value alone or not of rank 4, no ``num_heads``, a 3-D key or value whose width is not a multiple of
    it, a BNSH key and value of two head sizes, and a query whose width is not the key's (``num_heads * H`` of
    a BNSH one). The packed forms (no key
    or no value: a packed KV key or QKV query) get None too: ONNX Runtime's CPU kernel refuses them, so no run
    checked a rule for them.
    """
    query, key, value = node.inputs[0], _input(node, 1), _input(node, 2)
    pasts = [_input(node, 6), _input(node, 7)]
    heads = _num_heads(node)
    if key is None or value is None or heads <= 0 or _opset(node) < 15 or (pasts[0] is None) != (pasts[1] is None):
        return None
    ranks = {_rank(key), _rank(value)} - {None}
    if _rank(query) not in (None, 3) or len(ranks) > 1 or not ranks <= {3, 4}:
        return None
    if any(past is not None and _rank(past) not in (None, 4) for past in pasts):
        return None
    rank = ranks.pop() if ranks else _UNKNOWN_RANK
    query_width, key_width, value_width = _last_size(query), _last_size(key), _last_size(value)
    if rank == 3 and any(width is not None and width % heads for width in (key_width, value_width)):
        return None
    if rank == 4 and None not in (key_width, value_width) and key_width != value_width:
        return None
    if rank == 4 and key_width is not None:
        key_width *= heads
    if rank != _UNKNOWN_RANK and None not in (query_width, key_width) and query_width != key_width:
        return None
    return rank


def _multi_head_attention(node: ir.Node) -> list[ir.Node] | None:
    """MultiHeadAttention's output: ``[B, S, v_hidden]`` in the query's type, B and S the query's first dims.

    v_hidden is the value's: its last dim where it is ``[B, L, v_hidden]`` (the value's own dim, a symbol
    too), ``num_heads * H_v`` where it is ``[B, N, L, H_v]`` (ONNX Runtime refuses a value whose N is not
    ``num_heads``). Where the value's rank is not known before inference, ``N * H_v`` of the dims between its
    first and its last two (``[]`` or ``[N]``) and its last, which is the last dim alone at rank 3. None for
    the layouts ``_unpacked_key_and_value_rank`` refuses.
    """
    rank, heads = _unpacked_key_and_value_rank(node), _num_heads(node)
    if rank is None:
        return None
    query, value = node.inputs[0], node.inputs[2]
    middle = _ints([heads]) if rank == 4 else _dims(value, 1, -2)
    width = _product_of([middle, _dims(value, -1)])
    batch_and_sequence = _dims(query, 0, 2)
    return [batch_and_sequence, *width, *_expanded_to([batch_and_sequence, width[-1]], query)]


def _num_heads(node: ir.Node) -> int:
    """The node's ``num_heads``, or 0 where it is missing or not an int (ONNX Runtime refuses the node)."""
    attribute = node.attributes.get("num_heads")
    if attribute is None or attribute.type != ir.AttributeType.INT:
        return 0
    return attribute.as_int()


def _multi_head_attention_present(index: int) -> _StandIn:
    """MultiHeadAttention's present_key (``index`` 1: of the key and past_key) or present_value (2: of the
    value and past_value): ``[B, num_heads, P + L, H]`` in the query's type, as ONNX Runtime computes it.

    H is always the new key's or value's head size, of ``[B, num_heads, L, H]`` or of ``[B, L, num_heads * H]``
    (where the rank is not known before inference, the product of its dims after the first and its last two,
    over num_heads): ONNX Runtime checks past_value against the key's head size but writes present_value at
    the value's. With a past ``[B, num_heads, P, H']`` (ONNX Runtime refuses another N, and a past of one of
    key and value alone): its B, and P + L, L the new key's or value's length (its dim -2 at either rank).
    Without one: the new key's or value's B and L. P + L and a width over num_heads are sizes where what they
    are computed from are sizes, else unnamed dims. None for the layouts the output has none for, a past not
    of rank 4, and where ``past_sequence_length`` or ``cache_indirection`` is given (ONNX Runtime then writes
    into a buffer).
    """

    def present(node: ir.Node) -> list[ir.Node] | None:
        rank, heads = _unpacked_key_and_value_rank(node), _num_heads(node)
        if rank is None or _input(node, 8) is not None or _input(node, 9) is not None:
            return None
        query, new, past = node.inputs[0], node.inputs[index], _input(node, 5 + index)
        heads_dim, length = _ints([heads]), _dims(new, -2, -1)
        # The head size is always the new key's or value's: ONNX Runtime checks past_value against the
        # key's head size, and writes present_value at the value's (narrower where Dv < the key's width).
        if rank == 4:
            head = _dims(new, -1)
            nodes = [heads_dim, length, head]
        else:
            split = _ints([heads, -1])
            zeros = _zeros_shaped([_dims(new, 1, -2), _dims(new, -1)])  # [D] or [N, H]
            by_head = ir.node("Reshape", [zeros[-1].outputs[0], split.outputs[0]])
            head = _dims(by_head.outputs[0], 1)
            nodes = [heads_dim, length, *zeros, split, by_head, head]
        if past is not None:
            batch, past_length = _dims(past, 0, 1), _dims(past, 2, 3)
            total = ir.node("Add", [past_length.outputs[0], length.outputs[0]])
            nodes, sequence = [*nodes, batch, past_length, total], total
        else:
            batch = _dims(new, 0, 1)
            nodes, sequence = [*nodes, batch], length
        return [*nodes, *_expanded_to([batch, heads_dim, sequence, head], query)]

    return present


def _attention(node: ir.Node) -> list[ir.Node] | None:
    """Attention's output: ``[B, S, v_hidden]`` in the input's type, ``input @ W`` for a ``[hidden_in,
    v_hidden]`` weight; v_hidden is ``qkv_hidden_sizes``' last, else a third of the weights' width (both
    static, or no stand-in). QAttention's likewise (no ``qkv_hidden_sizes``), in the type of its
    ``input_scale`` (input 3), its integer input cast like it.

    None where ONNX Runtime refuses the node as far as the sizes known tell: an input whose rank is not 3,
    no ``num_heads``, hidden sizes that are not multiples of it, ``qkv_hidden_sizes`` not of three elements
    summing to the weights' width, a query's size not the key's, or, with a past, a key's not the value's."""
    quantized = node.op_type == "QAttention"
    weights, typed_as = _input(node, 1), _input(node, 3 if quantized else 1)
    dims = None if weights is None else _static_dims(weights)
    dtype = None if typed_as is None else _element_type(typed_as)
    heads = _num_heads(node)
    if dims is None or len(dims) != 2 or dtype is None or (quantized and _opset(node) < 15):
        return None
    if _rank(node.inputs[0]) not in (None, 3) or heads <= 0:
        return None
    sizes = [] if quantized else list(node.attributes.get_ints("qkv_hidden_sizes", []))
    if not sizes and dims[1] % 3 == 0:
        sizes = [dims[1] // 3] * 3
    past = None if quantized else _input(node, 4)
    if len(sizes) != 3 or sum(sizes) != dims[1] or sizes[0] != sizes[1] or (past is not None and sizes[1] != sizes[2]):
        return None
    if any(size <= 0 or size % heads for size in sizes):
        return None
    cast = [ir.node("CastLike", [node.inputs[0], typed_as])] if quantized else []
    source = cast[0].outputs[0] if cast else node.inputs[0]
    weight = _zeros_of_shape([dims[0], sizes[2]], dtype)
    return [*cast, *weight, ir.node("MatMul", [source, weight[-1].outputs[0]])]


def _integer_matmul(node: ir.Node) -> list[ir.Node] | None:
    """DynamicQuantizeMatMul's and MatMulIntegerToFloat's Y: ``A @ B`` (B static) in the float type of input 2
    (b_scale, a_scale: the output's type T1, T3), A cast like it (opset 15 on)."""
    b, scale = _input(node, 1), _input(node, 2)
    dims = None if b is None else _static_dims(b)
    dtype = None if scale is None else _element_type(scale)
    if dims is None or len(dims) < 2 or dtype is None or _opset(node) < 15:
        return None
    cast = ir.node("CastLike", [node.inputs[0], scale])
    weight = _zeros_of_shape(dims, dtype)
    return [cast, *weight, ir.node("MatMul", [cast.outputs[0], weight[-1].outputs[0]])]


# GatherBlockQuantized's data types whose dims are the table's (uint8 packs 8 / bits values along the last axis).
_LOGICAL_TABLE_TYPES = frozenset({ir.DataType.INT4, ir.DataType.UINT4})


def _gather_block_quantized(node: ir.Node) -> list[ir.Node] | None:
    """GatherBlockQuantized's output: ``Gather`` of a zero table of the data's logical dims, in the scales'
    type, at the indices along ``gather_axis``. uint8 data of ``bits`` < 8 packs ``8 / bits`` values along its
    last axis (ONNX Runtime's rule: ``gather_axis`` is 0 then, and not the quantize axis); int4/uint4 data has
    the table's dims; other data types (FP8/FP4) have no stand-in."""
    data, indices, scales = node.inputs[0], _input(node, 1), _input(node, 2)
    dims = _static_dims(data)
    dtype = None if scales is None else _element_type(scales)
    kind = _element_type(data)
    if indices is None or dims is None or not dims or dtype is None or kind is None:
        return None
    axis = node.attributes.get_int("gather_axis", 0)
    if -len(dims) <= axis < 0:
        axis += len(dims)
    if kind == ir.DataType.UINT8:
        bits = node.attributes.get_int("bits", 4)
        if bits not in (2, 4, 8) or (bits < 8 and axis != 0):
            return None
        dims[-1] *= 8 // bits
    elif kind not in _LOGICAL_TABLE_TYPES:
        return None
    table = _zeros_of_shape(dims, dtype)
    return [*table, ir.node("Gather", [table[-1].outputs[0], indices], {"axis": axis})]


# Contrib ops graphopt writes, by (domain, op type): for each output whose shape and type are a fixed
# function of the inputs, ONNX ops computing a value of exactly that shape and type. ONNX Runtime's kernels
# allocate these outputs so (each rule was checked against its outputs, symbolic and concrete dims). The types
# are the schemas': each output listed is of its op's type T, the type of input 0 (of the word table for
# EmbedLayerNormalization), except SimplifiedLayerNormalization's Y, of the scale's type V, and
# GatherBlockQuantized's, of the scales' type. Not covered, so they stay unknown (or as recorded): the norms'
# mean and inv_std_var ([.., 1], float), EmbedLayerNormalization's mask_index, GroupQueryAttention's caches
# (their length depends on the buffer), MultiHeadAttention's qk and presents written into a buffer
# (past_sequence_length given), and (Q)Attention's present (graphopt writes none of them). The integer ops'
# outputs take a scale's float type.
_SKIP_NORM = {0: _like_input, 3: _like_input}  # output and input_skip_bias_sum
_StandIn = Callable[[ir.Node], "ir.Node | list[ir.Node] | None"]
_STAND_INS: dict[tuple[str, str], dict[int, _StandIn]] = {
    **{(domain, "SimplifiedLayerNormalization"): {0: _like_input_typed_as_scale} for domain in ONNX_DOMAINS},
    (MS_DOMAIN, "SkipSimplifiedLayerNormalization"): _SKIP_NORM,
    (MS_DOMAIN, "SkipLayerNormalization"): _SKIP_NORM,
    (MS_DOMAIN, "Gelu"): {0: _like_input},
    (MS_DOMAIN, "FastGelu"): {0: _like_input},  # its optional bias is a vector over the last axis
    (MS_DOMAIN, "QuickGelu"): {0: _like_input},
    (MS_DOMAIN, "BiasGelu"): {0: _like_input},  # likewise its bias
    (MS_DOMAIN, "RotaryEmbedding"): {0: _like_input},
    (MS_DOMAIN, "EmbedLayerNormalization"): {0: _embedded, 2: _embedded},
    (MS_DOMAIN, "GroupQueryAttention"): {0: _query_with_key},
    (MS_DOMAIN, "MultiHeadAttention"): {
        0: _multi_head_attention,
        1: _multi_head_attention_present(1),
        2: _multi_head_attention_present(2),
    },
    (MS_DOMAIN, "Attention"): {0: _attention},
    (MS_DOMAIN, "FusedMatMul"): {0: _fused_matmul},
    (MS_DOMAIN, "MatMulNBits"): {0: _matmul_nbits},
    (MS_DOMAIN, "GatherBlockQuantized"): {0: _gather_block_quantized},
    (MS_DOMAIN, "QAttention"): {0: _attention},
    (MS_DOMAIN, "DynamicQuantizeMatMul"): {0: _integer_matmul},
    (MS_DOMAIN, "MatMulIntegerToFloat"): {0: _integer_matmul},
}


# Casts that keep every size a shape can hold (below 2**31): ONNX's data propagation carries a shape's values
# through any Cast unchanged, which is right only for these.
_EXACT_SIZE_TYPES = frozenset({ir.DataType.INT64, ir.DataType.INT32, ir.DataType.UINT64, ir.DataType.UINT32,
                               ir.DataType.DOUBLE, ir.DataType.STRING})  # fmt: skip


def _hide_lossy_casts(model: ir.Model) -> bool:
    """Keep ONNX's data propagation from reading a shape through a Cast that changes it; whether it may run.

    A shape cast to int8 wraps 257 to 1, to bool makes every size 1, to float loses sizes past 2**24;
    ONNX's propagation reads the same shape after each (a review: an ``Expand`` to such a shape was inferred
    ``[2, 7, 257]`` where ONNX Runtime computes ``[2, 7, 1]``, and a GELU fused on it changed the output's
    shape). In the clone each such Cast, in the main graph, its subgraphs and the model's functions, becomes
    ``CastLike`` to a ``Constant`` of its type (opset 15 on), which ONNX infers the same type and shape of,
    and propagates no values through; below opset 15 there is no such op, and propagation is turned off
    (False). A Cast to a string keeps every size (its text reads back the same).
    """
    roots: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    nodes = [node for root in roots for node in ir.traversal.RecursiveGraphIterator(root)]
    lossy = [
        node
        for node in nodes
        if node.op_type == "Cast" and node.domain in ONNX_DOMAINS
        and ir.DataType(node.attributes.get_int("to", 0)) not in _EXACT_SIZE_TYPES
    ]  # fmt: skip
    if not lossy:
        return True
    if any(onnx_opset(root.opset_imports, 0) < 15 for root in roots):
        return False
    taken = {value.name for node in nodes for value in (*node.inputs, *node.outputs) if value is not None}
    for index, node in enumerate(lossy):
        dtype = ir.DataType(node.attributes.get_int("to", 0))
        try:
            zero = ir.tensor(np.zeros((), dtype.numpy()))
        except (TypeError, ValueError):  # no numpy type: no constant to cast like
            return False
        like = ir.node("Constant", [], {"value": zero})
        cast_like = ir.node("CastLike", [node.inputs[0], like.outputs[0]])
        node.graph.insert_before(node, [like, cast_like])
        name = f"_inferred_shapes_like_{index}"
        while name in taken:
            name += "_"
        like.outputs[0].name = name
        _take_over(node.outputs[0], cast_like.outputs[0], taken)
        node.graph.remove(node, safe=True)
    return True


def _is_constant(value: ir.Value) -> bool:
    if value.const_value is not None:
        return True
    node = value.producer()
    return node is not None and node.op_type == "Constant" and node.domain in ONNX_DOMAINS


def _hide_computed_slice_starts(model: ir.Model) -> None:
    """Keep ONNX's data propagation from reading a Slice start it does not know as 0.

    ONNX's Slice data propagator (onnx 1.23) reads any start it cannot, a graph input's as well as a size
    that is not a number (named ``S`` or anonymous, as NonZero's count), as 0, and propagates the values (or,
    where it does not know its input's, as many unknown values) of that slice: ``Slice([1, 1, 1],
    Shape(NonZero(a))[1:2], [3])`` is propagated as ``[1, 1, 1]`` whatever the count, a ``ConstantOfShape``
    of it inferred ``[1, 1, 1]``, and a GELU fused on that changed the output's rank (a review). Naming the
    dims does not help: a declared ``S`` reads as 0 too, and so does an unknown start of a Slice of an input
    whose values are unknown (its values' count is then taken as known). An unknown end or step propagates
    nothing, an unknown axis of a 1-D input is 0 wherever the model is valid, and the other propagating ops
    (Add, Sub, Mul, Gather, Concat, Squeeze, Unsqueeze, Cast, Shape, Size) read no unknown as a number (each
    checked with named, anonymous and unfed values). In the clone, the readers of each Slice whose
    ``starts`` is not a constant (in the main graph, its subgraphs and the model's functions) read it
    through ``Where(true, sliced, sliced)``: the same values, type and shape, through which ONNX propagates
    no values. The Slice's own shape, which its shape inference reads from constant starts only, is kept.
    """
    roots: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    nodes = [node for root in roots for node in ir.traversal.RecursiveGraphIterator(root)]
    computed = [
        node
        for node in nodes
        if node.op_type == "Slice" and node.domain in ONNX_DOMAINS and node.outputs[0].uses()
        and len(node.inputs) > 1 and node.inputs[1] is not None and not _is_constant(node.inputs[1])
    ]  # fmt: skip
    if not computed:
        return
    taken = {value.name for node in nodes for value in (*node.inputs, *node.outputs) if value is not None}
    for node in computed:
        sliced = node.outputs[0]
        readers = list(sliced.uses())
        true = ir.node("Constant", [], {"value": ir.tensor(np.array(True))})
        opaque = ir.node("Where", [true.outputs[0], sliced, sliced])
        node.graph.insert_after(node, [true, opaque])
        _name_helper(true.outputs[0], taken)
        _name_helper(opaque.outputs[0], taken)
        for reader, index in readers:
            reader.replace_input_with(index, opaque.outputs[0])


def _stand_in_for_contrib_ops(graph: ir.Graph) -> None:
    """Give each read output of a contrib op of ``_STAND_INS`` a stand-in of its exact shape and type.

    Only the clone is edited. The output's readers read the stand-in's output instead, which
    takes the output's name (so what inference gives it is read back by name); the op keeps
    the output under another name, read by none, and its other outputs as they were. An
    output stays as it is where its op has no input 0, it has no rule, or its stand-in
    cannot be built (a type the rule needs is not stated).
    """
    taken = {value.name for value in _values(graph)}
    for node in list(graph):
        rule = _STAND_INS.get((node.domain, node.op_type))
        if rule is None or not node.inputs or node.inputs[0] is None:
            continue
        for index, out in enumerate(node.outputs):
            if index not in rule or not (out.uses() or out.is_graph_output()):
                continue
            stand_in = rule[index](node)
            if stand_in is None:
                continue
            nodes = stand_in if isinstance(stand_in, list) else [stand_in]
            graph.insert_before(node, nodes)
            for helper in nodes[:-1]:
                _name_helper(helper.outputs[0], taken)
            _take_over(out, nodes[-1].outputs[0], taken)


def infer_contrib_outputs(node: ir.Node, opset_imports: dict[str, int]) -> bool:
    """Give ``node``'s outputs the types and shapes their stand-ins get from the inputs' present ones; whether
    ``node`` is an op of ``_STAND_INS``.

    For a pass that infers node by node (the constant folder, whose ONNX inference stops at a contrib op):
    the same rules as ``inferred_shapes``, run by ONNX on a graph of the node alone, its inputs declared as
    they are now (no values). A type or shape already known is kept.
    """
    if (node.domain, node.op_type) not in _STAND_INS:
        return False
    declared = tuple(None if value is None else (_element_type(value), _dims_of(value)) for value in node.inputs)
    attributes = tuple(sorted((name, repr(attr.value)) for name, attr in node.attributes.items()))
    key = (node.domain, node.op_type, attributes, declared, tuple(sorted(opset_imports.items())), len(node.outputs))
    if key not in _STOOD_IN:
        if len(_STOOD_IN) >= 4096:
            _STOOD_IN.clear()
        _STOOD_IN[key] = _stood_in_outputs(node, declared, opset_imports)
    for out, facts in zip(node.outputs, _STOOD_IN[key]):
        if facts is None:
            continue
        dtype, dims = facts
        if out.type is None:
            out.type = ir.TensorType(dtype)
        if out.shape is None and dims is not None:
            out.shape = ir.Shape(dims)
    return True


_Dims = tuple[int | str | None, ...] | None
# What the stand-ins gave each output, by the op, its attributes and its inputs' types and shapes: a model's
# layers repeat them, and one ONNX run per node would cost a few milliseconds each.
_STOOD_IN: dict[tuple, list[tuple[ir.DataType, _Dims] | None]] = {}


def _dims_of(value: ir.Value) -> _Dims:
    shape = _shape_of(value)
    if shape is None:
        return None
    return tuple(dim if isinstance(dim, int) else dim.value for dim in shape)


def _stood_in_outputs(
    node: ir.Node, declared: tuple[tuple[ir.DataType | None, _Dims] | None, ...], opset_imports: dict[str, int]
) -> list[tuple[ir.DataType, _Dims] | None]:
    """The type and dims ONNX infers for each output of ``node``'s stand-ins, its inputs ``declared`` (type,
    dims); None for an output with none."""
    inputs: list[ir.Value | None] = []
    for index, facts in enumerate(declared):
        if facts is None:
            inputs.append(None)
            continue
        dtype, dims = facts
        value = ir.Value(name=f"input_{index}", type=None if dtype is None else ir.TensorType(dtype))
        value.shape = None if dims is None else ir.Shape(list(dims))
        inputs.append(value)
    twin = ir.Node(node.domain, node.op_type, inputs, list(node.attributes.values()), num_outputs=len(node.outputs))
    for index, out in enumerate(twin.outputs):
        out.name = f"output_{index}"
    graph = ir.Graph(
        [value for value in inputs if value is not None],
        list(twin.outputs),
        nodes=[twin],
        opset_imports=inference_opsets(opset_imports),
    )
    _stand_in_for_contrib_ops(graph)
    ir.passes.common.ShapeInferencePass(strict_mode=False, data_prop=True)(ir.Model(graph, ir_version=10))
    # A dim named by none of the inputs is one ONNX made up for this graph alone ("unk__0"): another
    # node's would have the same name, so it is left unknown.
    names = {dim for facts in declared if facts is not None and facts[1] is not None for dim in facts[1]}
    results: list[tuple[ir.DataType, _Dims] | None] = []
    for inferred in graph.outputs:
        if inferred.type is None or inferred.dtype is None or inferred.producer() is twin:  # no rule or stand-in
            results.append(None)
            continue
        dims = None
        if inferred.shape is not None:
            dims = tuple(dim if isinstance(dim, int) or dim.value in names else None for dim in inferred.shape)
        results.append((inferred.dtype, dims))
    return results


def _name_helper(value: ir.Value, taken: set[str]) -> None:
    """A name no other value has, for a value a stand-in computes on its way."""
    index = len(taken)
    while f"_inferred_shapes_{index}" in taken:
        index += 1
    value.name = f"_inferred_shapes_{index}"
    taken.add(value.name)


def _take_over(out: ir.Value, new: ir.Value, taken: set[str]) -> None:
    """``new`` takes ``out``'s type, shape, readers and name (so what inference gives it is read back by
    name); ``out`` keeps a name no other value has."""
    new.type, new.shape = out.type, out.shape
    out.replace_all_uses_with(new, replace_graph_outputs=True)
    name, suffix = out.name, 0
    while f"{name}/stood_in{suffix or ''}" in taken:
        suffix += 1
    out.name = f"{name}/stood_in{suffix or ''}"
    taken.add(out.name)
    new.name = name


def _unknown(dim) -> bool:
    return not isinstance(dim, int) and getattr(dim, "value", None) is None


def _incomplete(value: ir.Value) -> bool:
    return value.shape is None or value.type is None or any(_unknown(dim) for dim in value.shape)


def lacks_shapes(model: ir.Model) -> bool:
    """True if a value of the main graph has no recorded shape or type, or a dim neither sized nor named."""
    return any(_incomplete(value) for value in _values(model.graph))


@contextlib.contextmanager
def inferred_shapes(model: ir.Model) -> Iterator[int]:
    """Fill the main graph's missing shapes and types from ONNX shape inference; take them back on exit.

    A recorded shape keeps its sizes and names; only its unknown dims are filled. Yields
    the number of values whose shape was filled in. Values the block creates keep what it
    gives them; values it removes are restored too (harmlessly). A graph output the block
    replaced is declared as the one it replaced was: a rewrite copies the shape of the
    value it replaces, an inferred one while the block runs.
    """
    outputs = list(model.graph.outputs)
    missing = {value.name: value for value in _values(model.graph) if _incomplete(value)}
    filled: list[tuple[ir.Value, ir.Shape | None, bool]] = []
    if missing:
        copy = model.clone()
        for value in _values(copy.graph):
            # onnx-ir's clone shares type objects; the inference pass may set a dtype on them.
            if value.type is not None:
                value.type = ir.TensorType(value.dtype) if isinstance(value.type, ir.TensorType) else value.type
        # An initializer that is also a graph input is a default a caller may override: inferring from its
        # value (a Reshape's target shape) would bake the default into the fusion.
        for value in copy.graph.inputs:
            if value.name in copy.graph.initializers:
                del copy.graph.initializers[value.name]
                value.const_value = None
        copy.opset_imports.update(inference_opsets(dict(copy.opset_imports)))
        _stand_in_for_contrib_ops(copy.graph)
        propagate = _hide_lossy_casts(copy)
        if propagate:
            _hide_computed_slice_starts(copy)
        ir.passes.common.ShapeInferencePass(strict_mode=False, data_prop=propagate)(copy)
        clear_misinferred_shapes(copy.graph)  # sizes ONNX infers and ONNX Runtime does not compute
        for twin in _values(copy.graph):
            value = missing.get(twin.name)
            if value is None:
                continue
            recorded, shape = value.shape, None
            if twin.shape is not None and (recorded is None or recorded.rank() == twin.shape.rank()):
                dims = list(twin.shape) if recorded is None else list(recorded)
                dims = [theirs if _unknown(mine) else mine for mine, theirs in zip(dims, twin.shape)]
                shape = ir.Shape(dims) if recorded is None or dims != list(recorded) else None
            typed = value.type is None and isinstance(twin.type, ir.TensorType) and twin.dtype is not None
            if shape is not None:
                value.shape = shape
            if typed:
                value.type = ir.TensorType(twin.dtype)
            if shape is not None or typed:
                filled.append((value, recorded if shape is not None else value.shape, typed))
    try:
        yield sum(1 for value, recorded, _ in filled if value.shape is not recorded)
    finally:
        for value, recorded, typed in filled:
            value.shape = recorded
            if typed:
                value.type = None
        if len(model.graph.outputs) == len(outputs):
            for new, old in zip(model.graph.outputs, outputs):
                if new is not old:
                    new.shape, new.type = old.shape, old.type

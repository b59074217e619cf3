"""The mutant catalog: deliberately wrong rewrites, each a small onnx-ir pass registered only in the test.

Every mutant is what a buggy pass would plausibly write — a fusion that read the wrong
epsilon, an attention rewrite that dropped the mask or the band, a "pruning" or int8
pass whose realization differs from what it declares — applied to a graph the default
pipeline already optimized. Verification must roll each one back and say why.

Exact mutants (``approximate=False``) claim to keep the outputs and return a plain
``PassResult``; verification compares them with the reference at float32 tolerance.
Approximate mutants return ``NotedResult(..., twin=Twin(...))``, the twin built from
their *input* model plus what they claim (or no twin at all); verification compares
the result with that twin.

A mutant that finds nothing to act on raises ``LookupError``: the harness reports it
as broken, never as killed.

The mutants are plain ``InPlacePass`` subclasses, not ``GraphoptPass``: the mixin's
structural ``ensures`` would stop the output-renaming and dtype mutants before
verification sees them, and what is tested here is verification.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN
from optimizer.protocol import NotedResult, PassContext, PassSpec, Twin
from passes._utils import add_initializer, constant_array

NORMS = (
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
)
ATTENTIONS = ("Attention", "MultiHeadAttention")
# The fill the exporters' masks use; one term only, so it never sums to -inf.
_MASKED = np.float32(np.finfo(np.float32).min)
# int8 weight ranges: 7-bit (what graphopt writes by default) and the full 8 bits.
_REDUCED, _FULL = 63, 127


# --- What the verifier must say ------------------------------------------------------------------------------------

# Regular expressions a rolled-back pass's ``detail`` must match (``re.search``).
# A value mutant must be caught by its values: ONNX Runtime refusing it would mean the mutant is malformed.
VALUES_DIFFER = (
    r"output '[^']+': (max abs error \S+ \(max rel \S+\) exceeds rtol=\S+, atol=\S+|NaN/Inf in different places)"
)
SHAPE_DIFFERS = r"output '[^']+': shape \(.*\) instead of \(.*\)|ONNX Runtime cannot run the result: \S"
OUTPUT_MISSING = r"output '[^']+' is missing"
TWIN_DIFFERS = r"differs from its twin \(.+\) on .+: output '[^']+': (max abs error|NaN/Inf|shape|dtype)"
NO_TWIN = r"declares no exact twin"
TWIN_OR_SHAPE = rf"{TWIN_DIFFERS}|ONNX Runtime cannot run the result: \S|its twin \(.+\) cannot run: \S"


def dtype_differs(dtype: str) -> str:
    return rf"output '[^']+': dtype {dtype} instead of float32"


# --- Small graph helpers -------------------------------------------------------------------------------------------


def _nodes(model: ir.Model, op_types: Iterable[str]) -> list[ir.Node]:
    wanted = set(op_types)
    return [node for node in model.graph if node.op_type in wanted]


def _require(found, what: str):
    if not found:
        raise LookupError(f"mutant has no target: no {what} in the optimized graph")
    return found


def _set_constant(model: ir.Model, node: ir.Node, index: int, array: np.ndarray, label: str) -> None:
    """Give ``node`` a fresh constant input (others sharing the old one keep it)."""
    node.replace_input_with(index, add_initializer(model.graph, f"mutant.{label}", np.ascontiguousarray(array)))


def _set_attribute(node: ir.Node, name: str, value) -> None:
    if isinstance(value, float):
        node.attributes[name] = ir.AttrFloat32(name, value)
    else:
        node.attributes[name] = ir.AttrInt64(name, int(value))


def _add(model: ir.Model, before: ir.Node, op_type: str, inputs, attributes=None, *, domain: str = "", outputs=1):
    """A new node inserted before ``before``; returns its output value(s)."""
    node = ir.node(op_type, inputs, attributes, domain=domain, num_outputs=outputs)
    model.graph.insert_before(before, [node])
    return node.outputs[0] if outputs == 1 else node.outputs


def _const(model: ir.Model, label: str, array) -> ir.Value:
    return add_initializer(model.graph, f"mutant.{label}", np.asarray(array))


def _graph_input(model: ir.Model, name: str) -> ir.Value | None:
    return next((value for value in model.graph.inputs if value.name == name), None)


def _depends_on(value: ir.Value | None, source: ir.Value) -> bool:
    """Whether ``value`` is computed from ``source``."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if current is source:
            return True
        producer = current.producer()
        if producer is not None:
            stack.extend(producer.inputs)
    return False


def _weight(node: ir.Node) -> np.ndarray | None:
    """A MatMul/Gemm's constant weight as ``[K, N]``."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return None
    weight = constant_array(node.inputs[1])
    if weight is None or weight.ndim != 2 or weight.dtype != np.float32:
        return None
    if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
        weight = weight.T
    return weight


def _set_weight(model: ir.Model, node: ir.Node, weight: np.ndarray, label: str) -> None:
    """Give a MatMul/Gemm the ``[K, N]`` ``weight`` (transposed back for ``transB``)."""
    if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
        weight = weight.T
    _set_constant(model, node, 1, weight.astype(np.float32), label)


def _ffn_down(model: ir.Model) -> ir.Node:
    """The first FFN down projection: a MatMul/Gemm with a constant weight wider in than out."""
    found = [
        node
        for node in _nodes(model, ("MatMul", "Gemm"))
        if (w := _weight(node)) is not None and w.shape[0] > w.shape[1]
    ]
    return _require(found, "FFN down projection (MatMul/Gemm with K > N)")[0]


def _heads(node: ir.Node) -> int:
    return node.attributes.get_int("num_heads", 0)


def _consumer_projection(value: ir.Value) -> ir.Node | None:
    """The MatMul/Gemm an attention output reaches through reshapes and transposes."""
    for user, index in value.uses():
        if user.op_type in ("MatMul", "Gemm") and index == 0 and _weight(user) is not None:
            return user
        if user.op_type in ("Reshape", "Transpose", "Identity"):
            found = _consumer_projection(user.outputs[0])
            if found is not None:
                return found
    return None


def _producer_projection(value: ir.Value) -> ir.Node | None:
    """The MatMul/Gemm a query is projected by, through rotary, reshapes, transposes and a bias Add."""
    producer = value.producer()
    while producer is not None:
        if producer.op_type in ("MatMul", "Gemm") and _weight(producer) is not None:
            return producer
        if producer.op_type in ("RotaryEmbedding", "Reshape", "Transpose", "Identity"):
            producer = producer.inputs[0].producer()
        elif producer.op_type == "Add":
            producer = next((i.producer() for i in producer.inputs if i is not None and i.producer() is not None), None)
        else:
            return None
    return None


def _swap_blocks(array: np.ndarray, axis: int, size: int, first: int = 0, second: int = 1) -> np.ndarray:
    """``array`` with blocks ``first`` and ``second`` of ``size`` along ``axis`` exchanged."""
    swapped = np.array(array, copy=True)
    a = [slice(None)] * array.ndim
    b = [slice(None)] * array.ndim
    a[axis] = slice(first * size, (first + 1) * size)
    b[axis] = slice(second * size, (second + 1) * size)
    swapped[tuple(a)], swapped[tuple(b)] = array[tuple(b)], array[tuple(a)]
    return swapped


def _ensure_ms_domain(model: ir.Model) -> None:
    model.opset_imports.setdefault(MS_DOMAIN, 1)


def _causal_bias(model: ir.Model, before: ir.Node, query: ir.Value) -> ir.Value:
    """A ``[1, 1, S, S]`` additive bias that hides each query's future keys (S: the query's length)."""
    shape = _add(model, before, "Shape", [query], {"start": 1, "end": 2})
    length = _add(model, before, "Squeeze", [shape, _const(model, "axis0", np.array([0], np.int64))])
    positions = _add(
        model, before, "Range", [_const(model, "zero", np.int64(0)), length, _const(model, "one", np.int64(1))]
    )
    rows = _add(model, before, "Unsqueeze", [positions, _const(model, "axis1", np.array([1], np.int64))])
    columns = _add(model, before, "Unsqueeze", [positions, _const(model, "axis0b", np.array([0], np.int64))])
    future = _add(model, before, "Greater", [columns, rows])
    bias = _add(
        model, before, "Where", [future, _const(model, "masked", _MASKED), _const(model, "kept", np.float32(0))]
    )
    return _add(model, before, "Unsqueeze", [bias, _const(model, "axes01", np.array([0, 1], np.int64))])


def _padding_bias(model: ir.Model, before: ir.Node, mask: ir.Value, query: ir.Value) -> ir.Value:
    """A ``[B, 1, S, S]`` additive bias that hides the keys ``mask`` pads, and nothing else (no causal part)."""
    padded = _add(model, before, "Equal", [mask, _const(model, "pad", np.array(0, dtype=_numpy_dtype(mask)))])
    bias = _add(
        model, before, "Where", [padded, _const(model, "masked", _MASKED), _const(model, "kept", np.float32(0))]
    )
    keys = _add(model, before, "Unsqueeze", [bias, _const(model, "axes12", np.array([1, 2], np.int64))])
    length = _add(model, before, "Shape", [query], {"start": 1, "end": 2})
    square = _add(
        model, before, "Concat", [_const(model, "ones", np.array([1, 1], np.int64)), length, length], {"axis": 0}
    )
    zeros = _add(model, before, "ConstantOfShape", [square], {"value": ir.tensor(np.array([0.0], np.float32))})
    return _add(model, before, "Add", [keys, zeros])


def _numpy_dtype(value: ir.Value) -> np.dtype:
    return value.dtype.numpy() if value.dtype is not None else np.dtype(np.int64)


# --- Exact mutants -------------------------------------------------------------------------------------------------


class _Exact(ir.passes.InPlacePass):
    """An exact-looking mutant: ``mutate`` rewrites the model; the result claims to keep its outputs."""

    def __init__(self, context: PassContext) -> None:
        super().__init__()
        self.context = context

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.mutate(model)
        model.graph.sort()
        return ir.passes.PassResult(model, True)

    @abc.abstractmethod
    def mutate(self, model: ir.Model) -> None:
        """Rewrite ``model`` in place into the wrong thing."""


class NormEpsilon(_Exact):
    """Every fused norm gets a wrong epsilon: 1e-5 where the model says less (BERT's 1e-12), else 100x the model's."""

    def mutate(self, model):
        for node in _require(_nodes(model, NORMS), "fused norm"):
            epsilon = node.attributes.get_float("epsilon", 1e-5)
            _set_attribute(node, "epsilon", 1e-5 if epsilon < 1e-7 else epsilon * 100.0)


class ScaleTwice(_Exact):
    """Attention's scale applied twice: ``scale`` becomes ``scale**2`` (1/head_size instead of 1/sqrt(head_size))."""

    def mutate(self, model):
        for node in _require(_nodes(model, ATTENTIONS), "Attention/MultiHeadAttention"):
            scale = node.attributes.get_float("scale", 0.0)
            if not scale:
                raise LookupError(f"{node.op_type} {node.name!r} has no explicit scale")
            _set_attribute(node, "scale", scale * scale)


class MaskIgnored(_Exact):
    """The attention mask dropped: Attention loses mask_index, MultiHeadAttention keeps only its bias's causal part."""

    def mutate(self, model):
        mask = _require(_graph_input(model, "attention_mask"), "attention_mask input")
        changed = False
        for node in _nodes(model, ATTENTIONS):
            if node.op_type == "Attention" and len(node.inputs) > 3 and _depends_on(node.inputs[3], mask):
                node.replace_input_with(3, None)
                changed = True
            elif node.op_type == "MultiHeadAttention" and len(node.inputs) > 5 and _depends_on(node.inputs[5], mask):
                node.replace_input_with(5, _causal_bias(model, node, node.inputs[0]))
                changed = True
        _require(changed, "attention reading attention_mask")


class MaskAsLengths(_Exact):
    """The 2-D padding mask turned into 1-D key lengths (``ReduceSum``): right only when padding is on the right."""

    def mutate(self, model):
        source = _require(_graph_input(model, "attention_mask"), "attention_mask input")
        changed = False
        for node in _nodes(model, ("Attention",)):
            mask = node.inputs[3] if len(node.inputs) > 3 else None
            if mask is None or not _depends_on(mask, source) or (mask.shape is not None and len(mask.shape) != 2):
                continue
            lengths = _add(
                model, node, "ReduceSum", [mask, _const(model, "axis1", np.array([1], np.int64))], {"keepdims": 0}
            )
            node.replace_input_with(3, lengths)
            changed = True
        _require(changed, "Attention with a 2-D mask_index")


class CausalFlipped(_Exact):
    """Causality flipped: Attention's ``unidirectional`` toggled, MultiHeadAttention's bias cut to its padding part."""

    def mutate(self, model):
        changed = False
        for node in _nodes(model, ATTENTIONS):
            if node.op_type == "Attention":
                _set_attribute(node, "unidirectional", 1 - node.attributes.get_int("unidirectional", 0))
                changed = True
            elif len(node.inputs) > 5 and node.inputs[5] is not None:
                mask = _require(_graph_input(model, "attention_mask"), "attention_mask input")
                node.replace_input_with(5, _padding_bias(model, node, mask, node.inputs[0]))
                changed = True
        _require(changed, "attention to flip")


def _window_offsets(model: ir.Model) -> list[tuple[ir.Node, int, int]]:
    """The band mask's window: an integer scalar subtracted from (or added to) positions before a comparison."""
    found = []
    for node in _nodes(model, ("Sub", "Add")):
        if not any(
            user.op_type in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual") for user, _ in node.outputs[0].uses()
        ):
            continue
        for index, value in enumerate(node.inputs):
            array = constant_array(value)
            if array is not None and array.size == 1 and array.dtype.kind == "i":
                found.append((node, index, int(array.reshape(()))))
    return _require(found, "band (sliding-window) mask")


class WindowChanged(_Exact):
    """A local-attention mask's window rescaled by ``factor`` (narrowed below 1, widened above)."""

    factor: float = 1.0

    def mutate(self, model):
        for node, index, window in _window_offsets(model):
            array = constant_array(node.inputs[index])
            _set_constant(model, node, index, np.full_like(array, max(1, int(window * self.factor))), "window")


class WindowNarrowed(WindowChanged):
    """The window halved."""

    factor = 0.5


class WindowWidened(WindowChanged):
    """The window doubled."""

    factor = 2.0


class BandAsCausal(_Exact):
    """The band dropped, as a rewrite to ``unidirectional=1`` would: exact up to the window's length, wrong past it."""

    def mutate(self, model):
        for node, index, _ in _window_offsets(model):
            array = constant_array(node.inputs[index])
            _set_constant(model, node, index, np.full_like(array, 2**40), "window")


def _rotary_nodes(model: ir.Model) -> list[ir.Node]:
    return _require(_nodes(model, ("RotaryEmbedding",)), "RotaryEmbedding")


class RotaryBase(_Exact):
    """RotaryEmbedding's cos/sin caches recomputed from a base 10x the model's (read back from the caches)."""

    def mutate(self, model):
        nodes = _rotary_nodes(model)
        cos, sin = constant_array(nodes[0].inputs[2]), constant_array(nodes[0].inputs[3])
        half = cos.shape[1]
        step = float(np.arctan2(sin[1, 1], cos[1, 1]))  # position 1, frequency 1: base ** (-1 / half)
        base = step ** (-half)
        inverse = (10.0 * base) ** (-np.arange(half, dtype=np.float64) / half)
        angles = np.arange(cos.shape[0], dtype=np.float64)[:, None] * inverse[None, :]
        new_cos = _const(model, "rotary_cos", np.cos(angles).astype(np.float32))
        new_sin = _const(model, "rotary_sin", np.sin(angles).astype(np.float32))
        for node in nodes:
            node.replace_input_with(2, new_cos)
            node.replace_input_with(3, new_sin)


_POSITION_TABLES = ("position_embeddings", "wpe")


def _query_rotaries(model: ir.Model) -> list[ir.Node]:
    """The RotaryEmbedding nodes that rotate an attention's query (through reshapes and transposes)."""
    found = []
    for node in _nodes(model, ATTENTIONS):
        producer = node.inputs[0].producer()
        while producer is not None and producer.op_type in ("Reshape", "Transpose", "Identity"):
            producer = producer.inputs[0].producer()
        if producer is not None and producer.op_type == "RotaryEmbedding":
            found.append(producer)
    return found


class PositionsOffByOne(_Exact):
    """Positions shifted by one: the query's rotary positions + 1, or the position table read one row late.

    Shifting the query's *and* the key's rotary positions together would be exact (rotary
    attention depends on relative positions only), so only the query's move.
    """

    def mutate(self, model):
        if _nodes(model, ("RotaryEmbedding",)):
            for node in _require(_query_rotaries(model), "RotaryEmbedding on an attention's query"):
                positions = node.inputs[1]
                array = constant_array(positions)
                if array is not None:
                    node.replace_input_with(1, _const(model, "positions", array + 1))
                else:
                    one = _const(model, "one", np.array(1, dtype=_numpy_dtype(positions)))
                    node.replace_input_with(1, _add(model, node, "Add", [positions, one]))
            return
        tables = [
            value
            for name, value in model.graph.initializers.items()
            if any(key in name for key in _POSITION_TABLES) and value.const_value is not None
        ]
        for value in _require(tables, "RotaryEmbedding or position table"):
            table = value.const_value.numpy()
            axis = table.ndim - 2  # [P, H] tables and [1, P, H] added embeddings
            late = np.concatenate(
                [np.take(table, [0], axis=axis), np.take(table, range(table.shape[axis] - 1), axis=axis)], axis=axis
            )
            value.const_value = ir.tensor(np.ascontiguousarray(late), name=value.name)


class HeadQuerySwapped(_Exact):
    """The query projection's columns of heads 0 and 1 exchanged (rows of PyTorch's ``[out, in]``), K and V kept."""

    def mutate(self, model):
        node = _require(_nodes(model, ATTENTIONS), "Attention/MultiHeadAttention")[0]
        heads = _heads(node)
        if node.op_type == "Attention":
            weight, bias = constant_array(node.inputs[1]), constant_array(node.inputs[2])
            head = weight.shape[1] // 3 // heads
            _set_constant(model, node, 1, _swap_blocks(weight, 1, head), "qkv_weight")
            if bias is not None:
                _set_constant(model, node, 2, _swap_blocks(bias, 0, head), "qkv_bias")
            return
        projection = _require(_producer_projection(node.inputs[0]), "query projection")
        weight = _weight(projection)
        _set_weight(model, projection, _swap_blocks(weight, 1, weight.shape[1] // heads), "q_weight")


class HeadOutputSwapped(_Exact):
    """The output projection's rows of heads 0 and 1 exchanged (head 0's output goes through head 1's weights)."""

    def mutate(self, model):
        node = _require(_nodes(model, ATTENTIONS), "Attention/MultiHeadAttention")[0]
        projection = _require(_consumer_projection(node.outputs[0]), "output projection after attention")
        weight = _weight(projection)
        _set_weight(model, projection, _swap_blocks(weight, 0, weight.shape[0] // _heads(node)), "o_weight")


def _important_units(weight: np.ndarray) -> list[int]:
    """Rows of a ``[K, N]`` down projection (units), largest contribution first."""
    return list(np.argsort(-np.linalg.norm(weight, axis=1)))


class UnitZeroed(_Exact):
    """A "pruning" rewrite declared exact: one FFN unit's down-projection row zeroed (a Conv channel in a CNN)."""

    def mutate(self, model):
        if _nodes(model, ATTENTIONS):
            node = _ffn_down(model)
            weight = _weight(node).copy()
            weight[_important_units(weight)[0]] = 0.0
            _set_weight(model, node, weight, "down_weight")
            return
        conv = _require(_nodes(model, ("Conv",)), "FFN or Conv")[0]
        weight = constant_array(conv.inputs[1]).copy()
        channel = int(np.argmax(np.abs(weight).reshape(len(weight), -1).sum(axis=1)))
        weight[channel] = 0.0
        _set_constant(model, conv, 1, weight, "conv_weight")
        if len(conv.inputs) > 2 and conv.inputs[2] is not None:
            bias = constant_array(conv.inputs[2]).copy()
            bias[channel] = 0.0
            _set_constant(model, conv, 2, bias, "conv_bias")


def _reshape_output(model: ir.Model, batch: int) -> None:
    """Route the first output through a Reshape whose target has the literal ``batch``."""
    graph = model.graph
    output = graph.outputs[0]
    dims = list(output.shape) if output.shape is not None else [None, None]
    target = [batch, -1] + [d if isinstance(d, int) else 0 for d in dims[2:]]
    reshape = ir.node("Reshape", [output, _const(model, "batch_shape", np.array(target, np.int64))])
    graph.append(reshape)
    restored = reshape.outputs[0]
    restored.dtype, restored.shape = output.dtype, output.shape
    restored.name, output.name = output.name, f"{output.name}.inner"
    graph.outputs[0] = restored


class ShapeBatchOne(_Exact):
    """A shape baked to batch 1: a Reshape target's copied or inferred batch (0 or -1) becomes a literal 1."""

    def mutate(self, model):
        for node in _nodes(model, ("Reshape",)):
            target = constant_array(node.inputs[1])
            if target is not None and target.ndim == 1 and len(target) >= 3 and target[0] in (0, -1):
                baked = target.copy()
                baked[0] = 1
                _set_constant(model, node, 1, baked, "reshape_target")
                return
        _reshape_output(model, 1)


class OutputRenamed(_Exact):
    """The first graph output renamed."""

    def mutate(self, model):
        output = model.graph.outputs[0]
        output.name = f"{output.name}_renamed"


class OutputCast(_Exact):
    """The first graph output cast to another float type under the same name."""

    dtype: ir.DataType = ir.DataType.FLOAT16

    def mutate(self, model):
        graph = model.graph
        output = graph.outputs[0]
        cast = ir.node("Cast", [output], {"to": self.dtype})
        graph.append(cast)
        result = cast.outputs[0]
        result.dtype, result.shape = self.dtype, output.shape
        result.name, output.name = output.name, f"{output.name}.float32"
        graph.outputs[0] = result


class OutputFloat16(OutputCast):
    """The output cast to float16."""

    dtype = ir.DataType.FLOAT16


class OutputFloat64(OutputCast):
    """The output cast to float64."""

    dtype = ir.DataType.DOUBLE


# --- Approximate mutants -------------------------------------------------------------------------------------------


class _Approximate(_Exact):
    """An approximate mutant: ``mutate`` rewrites the model, ``claim`` writes what it declares into an input copy."""

    description = ""
    kind = "float32"
    declares_twin = True

    def call(self, model: ir.Model) -> NotedResult:
        twin = model.clone() if self.declares_twin else None
        self.mutate(model)
        model.graph.sort()
        declared = None
        if twin is not None:
            self.claim(twin)
            twin.graph.sort()
            declared = Twin(twin, self.kind, self.description)
        return NotedResult(model, True, notes=[f"mutant: {type(self).__doc__.splitlines()[0]}"], twin=declared)

    def claim(self, twin: ir.Model) -> None:
        """Apply to ``twin`` (a copy of the input) what the pass claims it did; default: nothing."""


def _zero_unit(model: ir.Model, unit: int, label: str) -> None:
    node = _ffn_down(model)
    weight = _weight(node).copy()
    weight[unit] = 0.0
    _set_weight(model, node, weight, label)


class PruningTwinLies(_Approximate):
    """A pruning pass that zeroes FFN unit j while its twin claims unit k (both in the first FFN)."""

    description = "the input with FFN unit k zeroed"

    def _units(self, model: ir.Model) -> tuple[int, int]:
        order = _important_units(_weight(_ffn_down(model)))
        return order[0], order[1]

    def mutate(self, model):
        self._j, self._k = self._units(model)
        _zero_unit(model, self._j, "pruned")

    def claim(self, twin):
        _zero_unit(twin, self._k, "pruned")


class PruningWithoutTwin(_Approximate):
    """A pruning pass that zeroes an FFN unit and declares no twin."""

    declares_twin = False

    def mutate(self, model):
        _zero_unit(model, _important_units(_weight(_ffn_down(model)))[0], "pruned")


class HeadRotation(_Approximate):
    """An "approximate" pass that rotates the output projection's head blocks (h to h+1), claiming no change."""

    description = "the input unchanged (heads are interchangeable)"

    def mutate(self, model):
        node = _require(_nodes(model, ATTENTIONS), "Attention/MultiHeadAttention")[0]
        projection = _require(_consumer_projection(node.outputs[0]), "output projection after attention")
        weight = _weight(projection)
        heads = _heads(node)
        blocks = np.split(weight, heads, axis=0)
        _set_weight(model, projection, np.concatenate(blocks[-1:] + blocks[:-1], axis=0), "o_weight")


class BakeSampleBatch(_Approximate):
    """An approximate pass that bakes its samples' batch into an output Reshape, claiming no change."""

    description = "the input unchanged"

    def mutate(self, model):
        samples = self.context.samples
        if not samples:
            raise LookupError("mutant has no target: the context carries no samples")
        batch = int(np.shape(next(iter(samples.values())))[0])
        _reshape_output(model, batch)


def _matmul_layers(model: ir.Model) -> list[tuple[ir.Node, np.ndarray]]:
    """MatMuls with a constant float32 ``[K, N]`` weight and an even K (what the int8 mutants quantize)."""
    layers = []
    for node in _nodes(model, ("MatMul",)):
        weight = _weight(node)
        if weight is not None and weight.shape[0] % 2 == 0:
            layers.append((node, weight))
    return _require(layers, "MatMul with a constant weight")


def _symmetric_int8(weight: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 (graphopt's default): ``[K, N]`` int8 values and ``[N]`` scales."""
    scale = (np.abs(weight).max(axis=0) / limit).astype(np.float32)
    scale[scale == 0] = 1.0
    return np.clip(np.round(weight / scale), -limit, limit).astype(np.int8), scale


def _quantize_dequantize_input(model: ir.Model, node: ir.Node) -> None:
    """The twin's claim for a dynamic int8 layer: its input through uint8 quantize-dequantize."""
    quantized, scale, zero = _add(model, node, "DynamicQuantizeLinear", [node.inputs[0]], outputs=3)
    node.replace_input_with(0, _add(model, node, "DequantizeLinear", [quantized, scale, zero]))


def _dynamic_int8_twin(twin: ir.Model, limit: int, only: str | None = None) -> None:
    for node, weight in _matmul_layers(twin):
        if only is not None and node.name != only:
            continue
        quantized, scale = _symmetric_int8(weight, limit)
        _set_weight(twin, node, quantized.astype(np.float32) * scale, "dequantized")
        _quantize_dequantize_input(twin, node)


class Int8ScaleDoubled(_Approximate):
    """Dynamic int8 on one MatMul (the first FFN up) with weight scales written 2x; the twin claims the right ones."""

    kind = "int8"
    description = "the input with one MatMul's input and weight quantized to int8 (7-bit weights, per channel)"

    def mutate(self, model):
        _ensure_ms_domain(model)
        node, weight = next(
            ((n, w) for n, w in _matmul_layers(model) if w.shape[0] < w.shape[1]), _matmul_layers(model)[0]
        )
        self._layer = node.name
        quantized, scale = _symmetric_int8(weight, _REDUCED)
        replacement = ir.node(
            "DynamicQuantizeMatMul",
            [
                node.inputs[0],
                _const(model, "w_int8", quantized),
                _const(model, "w_scale", (2 * scale).astype(np.float32)),
            ],
            domain=MS_DOMAIN,
        )
        model.graph.insert_before(node, [replacement])
        node.outputs[0].replace_all_uses_with(replacement.outputs[0], replace_graph_outputs=True)
        model.graph.remove(node, safe=True)

    def claim(self, twin):
        _dynamic_int8_twin(twin, _REDUCED, only=self._layer)


class Int8FullRangeAvx2(_Approximate):
    """Full-range (8-bit) int8 weights on every MatMul, realized as AVX2's u8s8 kernel computes them.

    AVX2 without VNNI multiplies uint8 activations by int8 weights with ``vpmaddubsw``,
    which adds each adjacent pair of products in int16 and saturates; 7-bit weights keep
    the pair inside int16, full-range ones do not. This machine's ORT may use VNNI, so
    the realization spells the AVX2 arithmetic out in ONNX (pair sums clipped to int16);
    the twin claims the exact quantize-dequantize product.
    """

    kind = "int8"
    description = "the input with every MatMul's input and weight quantized to int8 (full-range weights, per channel)"

    def mutate(self, model):
        for node, weight in _matmul_layers(model):
            quantized, scale = _symmetric_int8(weight, _FULL)
            _avx2_matmul(model, node, quantized, scale)

    def claim(self, twin):
        _dynamic_int8_twin(twin, _FULL)


def _avx2_matmul(model: ir.Model, node: ir.Node, weight: np.ndarray, scale: np.ndarray) -> None:
    """Replace ``node`` by uint8 x int8 arithmetic whose adjacent product pairs saturate at int16."""
    k = weight.shape[0]
    even = weight[0::2].astype(np.float32)  # [K/2, N]
    odd = weight[1::2].astype(np.float32)
    quantized, a_scale, a_zero = _add(model, node, "DynamicQuantizeLinear", [node.inputs[0]], outputs=3)
    activation = _add(model, node, "Cast", [quantized], {"to": ir.DataType.FLOAT})
    minus_one = _const(model, "last_axis", np.array([-1], np.int64))
    a_even = _add(
        model, node, "Gather", [activation, _const(model, "even", np.arange(0, k, 2, dtype=np.int64))], {"axis": -1}
    )
    a_odd = _add(
        model, node, "Gather", [activation, _const(model, "odd", np.arange(1, k, 2, dtype=np.int64))], {"axis": -1}
    )
    pairs = _add(
        model,
        node,
        "Add",
        [
            _add(
                model, node, "Mul", [_add(model, node, "Unsqueeze", [a_even, minus_one]), _const(model, "w_even", even)]
            ),
            _add(model, node, "Mul", [_add(model, node, "Unsqueeze", [a_odd, minus_one]), _const(model, "w_odd", odd)]),
        ],
    )
    saturated = _add(
        model,
        node,
        "Clip",
        [pairs, _const(model, "int16_min", np.float32(-32768)), _const(model, "int16_max", np.float32(32767))],
    )
    raw = _add(
        model, node, "ReduceSum", [saturated, _const(model, "pair_axis", np.array([-2], np.int64))], {"keepdims": 0}
    )
    zero = _add(model, node, "Cast", [a_zero], {"to": ir.DataType.FLOAT})
    column_sums = _const(model, "w_colsum", weight.astype(np.float32).sum(axis=0))
    centered = _add(model, node, "Sub", [raw, _add(model, node, "Mul", [zero, column_sums])])
    output_scale = _add(model, node, "Mul", [a_scale, _const(model, "w_scale", scale)])
    result = _add(model, node, "Mul", [centered, output_scale])
    node.outputs[0].replace_all_uses_with(result, replace_graph_outputs=True)
    model.graph.remove(node, safe=True)


# --- The catalog ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    """One wrong rewrite: its pass, the optimized models it is applied to, and what the rollback must say.

    ``models`` are harness model keys (``bert_legacy``, ``bert_dynamo+skip``, ``encoder``...);
    ``reason`` a regular expression the rolled-back pass's ``detail`` must match;
    ``hole`` the issue's numbered hole it stands for, if any; ``padding``: also run
    under the padding-hostile flags (user inputs without padding, every ``--dim``,
    ``--static-shapes``).
    """

    name: str
    factory: Callable[[PassContext], ir.passes.PassBase]
    models: tuple[str, ...]
    reason: str
    approximate: bool = False
    hole: str = ""
    padding: bool = False

    @property
    def summary(self) -> str:
        return (self.factory.__doc__ or "").strip().splitlines()[0]

    def spec(self) -> PassSpec:
        return PassSpec(f"mutant-{self.name}", self.factory, self.summary, approximate=self.approximate)


TEXT_ENCODERS = ("bert_legacy", "bert_dynamo", "distilbert_legacy", "distilbert_dynamo", "encoder")

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "norm-epsilon",
        NormEpsilon,
        (
            "bert_legacy",
            "gpt2_dynamo",
            "llama_dynamo",
            "bert_dynamo+skip",
            "llama_legacy+skip",
            "vit_legacy",
            "encoder",
        ),
        VALUES_DIFFER,
    ),
    Mutant("scale-twice", ScaleTwice, ("gpt2_legacy", "llama_dynamo", "vit_dynamo", "encoder"), VALUES_DIFFER),
    Mutant(
        "mask-ignored",
        MaskIgnored,
        ("bert_dynamo", "gpt2_dynamo", "distilbert_legacy", "llama_legacy", "encoder"),
        VALUES_DIFFER,
        padding=True,
        hole="4",
    ),
    Mutant(
        "mask-as-lengths",
        MaskAsLengths,
        ("bert_legacy", "gpt2_legacy", "encoder"),
        VALUES_DIFFER,
        padding=True,
        hole="4",
    ),
    Mutant(
        "causal-flipped", CausalFlipped, ("gpt2_legacy", "bert_legacy", "llama_dynamo", "vit_dynamo"), VALUES_DIFFER
    ),
    Mutant("window-narrowed", WindowNarrowed, ("mistral_window16",), VALUES_DIFFER),
    Mutant("window-widened", WindowWidened, ("mistral_window16",), VALUES_DIFFER),
    Mutant("band-as-causal", BandAsCausal, ("mistral_window16", "mistral_window160"), VALUES_DIFFER, hole="1"),
    Mutant("rotary-base", RotaryBase, ("llama_legacy", "llama_dynamo"), VALUES_DIFFER),
    Mutant(
        "positions-off-by-one",
        PositionsOffByOne,
        ("llama_dynamo", "llama_legacy", "bert_legacy", "gpt2_dynamo", "vit_legacy"),
        VALUES_DIFFER,
    ),
    Mutant("head-query-swapped", HeadQuerySwapped, ("bert_legacy", "llama_dynamo", "vit_dynamo"), VALUES_DIFFER),
    Mutant("head-output-swapped", HeadOutputSwapped, ("gpt2_dynamo", "llama_legacy", "encoder"), VALUES_DIFFER),
    Mutant("unit-zeroed", UnitZeroed, ("bert_dynamo", "llama_dynamo", "resnet_legacy"), VALUES_DIFFER),
    Mutant(
        "shape-batch-one",
        ShapeBatchOne,
        ("gpt2_legacy", "llama_dynamo", "bert_dynamo", "resnet_dynamo", "vit_legacy"),
        SHAPE_DIFFERS,
    ),
    Mutant("output-renamed", OutputRenamed, ("distilbert_dynamo", "resnet_legacy"), OUTPUT_MISSING),
    Mutant("output-float16", OutputFloat16, ("bert_legacy", "vit_dynamo"), dtype_differs("float16")),
    Mutant("output-float64", OutputFloat64, ("llama_legacy", "resnet_dynamo"), dtype_differs("float64")),
    Mutant(
        "int8-scale-doubled",
        Int8ScaleDoubled,
        ("bert_dynamo", "llama_legacy", "encoder"),
        TWIN_DIFFERS,
        approximate=True,
        hole="2",
    ),
    Mutant("int8-full-range-avx2", Int8FullRangeAvx2, ("bert_legacy", "llama_dynamo"), TWIN_DIFFERS, approximate=True),
    Mutant(
        "pruning-twin-lies",
        PruningTwinLies,
        ("bert_legacy", "gpt2_dynamo", "llama_dynamo"),
        TWIN_DIFFERS,
        approximate=True,
        hole="2",
    ),
    Mutant(
        "pruning-without-twin",
        PruningWithoutTwin,
        ("distilbert_dynamo", "llama_legacy"),
        NO_TWIN,
        approximate=True,
        hole="2",
    ),
    Mutant("head-rotation", HeadRotation, ("bert_dynamo", "llama_legacy"), TWIN_DIFFERS, approximate=True, hole="2"),
    Mutant(
        "bake-sample-batch",
        BakeSampleBatch,
        ("gpt2_dynamo", "resnet_legacy"),
        TWIN_OR_SHAPE,
        approximate=True,
        hole="3",
    ),
)

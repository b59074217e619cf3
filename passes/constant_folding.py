"""Constant folding, including shape arithmetic, with onnxscript's folder.

onnxscript's ``FoldConstantsPass`` evaluates nodes whose inputs are all known
(initializers or Constants) and replaces them with constants. It also propagates
shapes and partially known shape values, so ``Shape → Gather → Concat → Reshape``
chains over static dimensions fold away, and ``Shape`` of a tensor whose shape is
fully static becomes a constant. It does this well on our exported transformers,
so we use it, with one guard: its rewrites of sequence ops (``ConcatFromSequence``,
``SplitToSequence``) write ``Unsqueeze``/``Split``/``Squeeze`` in their opset-13+
spellings whatever opset the model imports, which ONNX Runtime rejects as an invalid
graph in an opset-11 model. A rewrite whose new nodes do not exist in that form at the
model's opset is refused and counted. The folder evaluates with onnx's reference
implementation, not ONNX Runtime: where the two are known to differ (``_runtime_disagreement``)
the folded value is checked on ONNX Runtime and the node left for run time unless they agree.
See ``passes/shape_simplification.py`` for what the folder leaves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.optimizer import _constant_folding

from optimizer.domains import is_onnx_domain
from passes._pass import GraphoptPass
from passes._utils import (
    casts_narrow_weight,
    declaration_holds,
    declared_shapes_checked,
    draws_random,
    fed_from_graph_input,
    inference_opsets,
    overridable_inputs_hidden,
    recorded_facts,
    remove_dead_nodes,
    restore_facts,
    shared_input_dim_names,
)
from passes.fusion._inferred_shapes import infer_contrib_outputs

# onnxscript's defaults: do not evaluate ops on inputs over 8192 elements, nor store
# folded results over 512*512 elements; larger constants are weights, whose folding
# would bloat the file for no runtime gain.
DEFAULT_INPUT_SIZE_LIMIT = _constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT
DEFAULT_OUTPUT_SIZE_LIMIT = _constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT


class FoldConstantsPass(GraphoptPass, ir.passes.InPlacePass):
    """Replace nodes computable ahead of time with their constant results.

    Rewrites: any deterministic node (outside control flow bodies it cannot
    reason about) whose inputs are constants into a ``Constant``; ``Shape``/``Size``
    of statically shaped tensors into constants; shape arithmetic over them too;
    ``ConstantOfShape`` of at most 8192 elements (onnxscript keeps them
    all). Refuses: random ops, the ``Cast`` to float of a weight stored in a narrow integer type (``int8``...:
    a dequantization written by hand, kept as onnxscript keeps ``DequantizeLinear``), inputs larger than
    ``input_size_limit`` elements, results larger than ``output_size_limit`` elements; rewrites into operators
    spelled for a later opset than the model imports (onnxscript writes ``Split(x, split)`` and
    ``Unsqueeze(x, axes)`` for sequence ops even at opset 11). Nodes left without users
    are removed. When it folds something, the shapes it inferred along the way are kept
    on the values (the fusions read them), those of the contrib ops graphopt writes
    (``MatMulNBits``, the fused ops) too, which onnx's inference skips
    (``_inferred_shapes.infer_contrib_outputs``), and an ``STFT``'s with its ``onesided`` default
    spelled out (onnx's inference reads a left-out ``onesided`` as 0). When it folds nothing, it takes them
    back (with the types and constant values the folder recorded) and reports ``modified=False``: the
    model is as it was given, as the flag says (onnxscript's folder fills them in either way).
    """

    left_as = "left unfolded"

    def __init__(
        self,
        input_size_limit: int = DEFAULT_INPUT_SIZE_LIMIT,
        output_size_limit: int = DEFAULT_OUTPUT_SIZE_LIMIT,
    ) -> None:
        super().__init__()
        self.input_size_limit = input_size_limit
        self.output_size_limit = output_size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folder = _OpsetBoundFolder(
            self.refuse,
            shape_inference=True,
            input_size_limit=self.input_size_limit,
            output_size_limit=self.output_size_limit,
            should_fold=_should_fold,
            shared_names=shared_input_dim_names(model.graph),
        )
        # An Identity onto a graph output whose declared shape does not hold of its input stays
        # (``passes._utils.declaration_holds``): onnxscript renames the input to the output, which takes the
        # declaration, and ONNX Runtime folds a Shape of it to the declared size. Read before the shapes are checked.
        folder.kept = {
            id(node)
            for graph in model.graphs()
            for node in graph
            if node.op_type == "Identity" and is_onnx_domain(node) and node.outputs[0].is_graph_output()
            if not declaration_holds(node)
        }
        recorded = recorded_facts(model)
        # onnxscript drops an initializer its folded node was the last reader of, also one that is a graph input:
        # Shape(a) of an input declared [2, 3] folds (a feed of another shape is refused), and the default of ``a``
        # went with it, so the result required a feed the original did not (and verification, which feeds no
        # default, raised KeyError). Such a default stays, as remove-unused keeps it.
        defaults = [value for value in model.graph.inputs if value.is_initializer()]
        # A default a caller may override is no constant: some of onnxscript's evaluators (If, Dropout, Reshape)
        # read it before the folder's own graph-input check, folded on it and dropped it.
        # A shape the file declares is no fact where inference contradicts it (a stale value_info folded Shape to a
        # wrong constant); the folder keeps what it inferred where it folds.
        with (
            overridable_inputs_hidden(model),
            declared_shapes_checked(model),
            _hide_scalar_split_shapes(model),  # after the inference, which would find them again
        ):
            modified = folder(model).modified
        for value in defaults:
            if value.name not in model.graph.initializers:
                model.graph.register_initializer(value)
        if modified:
            remove_dead_nodes(model)
        else:
            restore_facts(recorded)
        return self.result(model, modified)


class _OpsetBoundFolder(_constant_folding.FoldConstantsPass):
    """onnxscript's folder, refusing replacements whose new nodes the graph's opset does not have.

    ``refuse(kind, reason)`` is told about each one (the folded node's op type, and why).
    """

    def __init__(self, refuse: Callable[[str, str], None], shared_names: set[str], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._refuse = refuse
        self._shared_names = shared_names  # the main graph's, also for an Expand in a branch that reads its input
        self.kept: set[int] = set()  # ids of nodes left as they are (see ``FoldConstantsPass.call``)

    def _do_inference(self, node: ir.Node) -> None:
        # onnx has no schema for ONNX Runtime's contrib ops: without this, inference stops at a MatMulNBits
        # (a model quantized by matmul_nbits_quantizer), and no head split behind a projection has a rank.
        if infer_contrib_outputs(node, self._opset_imports):
            return
        if node.op_type == "STFT" and is_onnx_domain(node) and "onesided" not in node.attributes:
            # onnx's STFT inference (1.23) reads onesided as 0 when the node leaves it out, where the default is 1:
            # frame_length bins for frame_length // 2 + 1 (512 for 257 on onnx-asr's NeMo and Whisper front ends
            # once --static-shapes binds the audio length), a shape ONNX Runtime refuses to load (the pass rolled
            # back). Inferred with the default spelled out, taken back after.
            node.attributes["onesided"] = ir.AttrInt64("onesided", 1)
            try:
                super()._do_inference(node)
            finally:
                del node.attributes["onesided"]
            return
        if node.op_type != "Reshape" or not is_onnx_domain(node):
            super()._do_inference(node)
            return
        # ONNX's Reshape-13 inference gives Reshape(x, Shape(y)) no rank; 14's, the same op, does.
        opsets, self._opset_imports = self._opset_imports, inference_opsets(self._opset_imports)
        try:
            super()._do_inference(node)
        finally:
            self._opset_imports = opsets

    def process_node(self, node: ir.Node, is_function: bool) -> _constant_folding.Replacement | None:
        if _left_whole(node, is_function) or id(node) in self.kept:
            return None
        replacement = super().process_node(node, is_function)
        if replacement is None:
            return replacement
        problem = _runtime_disagreement(node, replacement, self._opset_imports)
        if problem is None:
            return replacement
        self._refuse(node.op_type, problem)
        _discard(replacement.new_nodes)
        initializers = node.graph.initializers if node.graph is not None else {}
        for value in replacement.new_outputs:  # the folder registered its result before returning it
            if initializers.get(value.name) is value and not list(value.uses()):
                initializers.pop(value.name)
        return None

    def _prepare_folded_tensor(self, node: ir.Node, output_name: str, output_array: object) -> ir.Tensor | None:
        tensor = super()._prepare_folded_tensor(node, output_name, output_array)
        if tensor is None or tensor.dtype != ir.DataType.STRING:
            return tensor
        # onnx_ir writes text only from a StringTensor: a folded Concat of text constants, read by a later node,
        # failed the whole pass (SerdeError), and written as it was it would have failed the save.
        encoded = [item if isinstance(item, bytes) else str(item).encode() for item in output_array.reshape(-1)]
        return ir.StringTensor(encoded, shape=ir.Shape(output_array.shape), name=output_name)

    def replace_node(
        self, node: ir.Node, replacement: _constant_folding.Replacement, root: ir.Graph | ir.Function
    ) -> None:
        opsets = root.opset_imports if isinstance(root, ir.Function) else self._opset_imports
        problems = [_not_at_opset(new, opsets) for new in replacement.new_nodes]
        problems.append(_broadcast_taken_for_identity(node, replacement, self._shared_names))
        for problem in problems:
            if problem is not None:
                self._refuse(node.op_type, problem)
                _discard(replacement.new_nodes)
                for attr in node.attributes.values():  # what visit_node does for a node left as it is
                    self.visit_attribute(attr)
                return
        super().replace_node(node, replacement, root)


def _broadcast_taken_for_identity(
    node: ir.Node, replacement: _constant_folding.Replacement, shared: set[str]
) -> str | None:
    """Why an ``Expand`` must not become an ``Identity`` here, or None: onnxscript drops an Expand whose input's
    declared shape equals its computed target's by dim name (``Expand(position_ids [batch, sequence],
    Shape(hidden)[:2])``), but two inputs that share a dim name need not share its size (a ``[1, S]``
    ``position_ids`` fed for every row of a batch, which the Expand broadcasts). So for an input (or a value
    ``fed_from_graph_input``) whose dims share names with other inputs (``shared``), only a constant target or
    its own ``Shape`` proves the Expand a copy."""
    if node.op_type != "Expand" or not is_onnx_domain(node) or len(node.inputs) != 2:
        return None
    if [new.op_type for new in replacement.new_nodes] != ["Identity"]:
        return None
    data, target = node.inputs
    if ir.convenience.get_const_tensor(target) is not None or not fed_from_graph_input(data):
        return None  # dims computed from the inputs (a head split's) keep the names' proof, as in simplify-shapes
    shape = target.producer() if target is not None else None
    if shape is not None and shape.op_type == "Shape" and shape.inputs[0] is data and not shape.attributes:
        return None  # Expand(x, Shape(x)): a copy whatever is fed
    names = sorted({str(dim) for dim in data.shape or () if not isinstance(dim, int) and str(dim) in shared})
    if not names:
        return None  # sizes inferred as numbers are facts, and a name no other input declares is the input's own
    return (
        f"its input's shape equals the computed target only by dim names other inputs declare too "
        f"({', '.join(names)}); a feed that differs there (a [1, S] position_ids for a batch) needs the broadcast"
    )


def _not_at_opset(node: ir.Node, opsets: Mapping[str, int]) -> str | None:
    """Why ``node`` (a standard op) is not valid at the imported opset, or None if it is (or is not ours to judge)."""
    if not is_onnx_domain(node):
        return None
    version = opsets.get("", opsets.get("ai.onnx"))
    if version is None:
        return f"it would write {node.op_type} into a graph that imports no standard opset"
    try:
        schema = onnx.defs.get_schema(node.op_type, version, "")
    except onnx.defs.SchemaError:
        return f"{node.op_type} does not exist at opset {version}, which the model imports"
    inputs = len(node.inputs)
    while inputs and node.inputs[inputs - 1] is None:
        inputs -= 1
    if not schema.min_input <= inputs <= schema.max_input:
        return (
            f"the rewrite writes {node.op_type} with {inputs} inputs, a form opset {version} "
            f"(which the model imports) does not have"
        )
    unknown = sorted(set(node.attributes) - set(schema.attributes))
    if unknown:
        return (
            f"the rewrite writes {node.op_type} with attribute {unknown[0]!r}, which opset {version} "
            f"(which the model imports) does not have"
        )
    return None


# Folds whose reference evaluation (onnx's, which onnxscript's folder uses) is known to differ from ONNX Runtime's
# on some constants, found by reviews: a NaN in a max, min or arg-max; a reduction of nothing; integer sums,
# products and powers past their type's range (ONNX Runtime 1.32 saturates some); a float Range (ONNX Runtime adds
# the step, numpy multiplies); a Cast from text, to float8 or to a type narrower than a byte. These are checked on
# ONNX Runtime (``_checked``).
_REDUCTIONS = frozenset(
    {
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "ArgMax",
        "ArgMin",
        "CumSum",
    }
)
# Integer ops whose result can leave the type's range (or divide) where onnx and ONNX Runtime may part.
_INTEGER_CHECKED = frozenset(
    {"ReduceL1", "ReduceL2", "ReduceMean", "ReduceProd", "ReduceSum", "ReduceSumSquare", "CumSum", "Pow"}
)
# Float types onnx's reference sums in their own precision, in range enough to overflow (a float16 mean of 4096
# values of 20 overflowed to inf; ONNX Runtime accumulates wider): their reductions are always checked. Not
# bfloat16 (float32's range), which ONNX Runtime's CPU has no reductions for: checked, it would never fold.
_NARROW_FLOATS = frozenset({ir.DataType.FLOAT16})
# Ops that only move or copy elements: a NaN passes through them the same way in both.
_MOVES_ELEMENTS = frozenset(
    {
        "Concat",
        "Expand",
        "Flatten",
        "Gather",
        "GatherElements",
        "GatherND",
        "Identity",
        "Reshape",
        "Slice",
        "Split",
        "Squeeze",
        "Tile",
        "Transpose",
        "Unsqueeze",
    }
)
# Casts into types narrower than a byte or float8: onnx's reference truncates where ONNX Runtime rounds, and wraps
# or saturates otherwise (float32 2.5 and 7.9 to int4: 2 and 7 against 3 and -8; 9.0: 0 against -7).
_CAST_CHECKED = frozenset(
    {
        ir.DataType.FLOAT8E4M3FN,
        ir.DataType.FLOAT8E4M3FNUZ,
        ir.DataType.FLOAT8E5M2,
        ir.DataType.FLOAT8E5M2FNUZ,
        *(
            getattr(ir.DataType, name)
            for name in ("FLOAT8E8M0", "INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2", "FLOAT6E2M3", "FLOAT6E3M2")
            if hasattr(ir.DataType, name)
        ),
    }
)
# Ops whose reference evaluation a review found computing other values than ONNX Runtime's on ordinary constants, not
# only on edge values: ``Resize`` (and ``Upsample``) with ``align_corners`` and scales, ``nearest`` with scales that are
# no whole numbers, ``antialias``, ``half_pixel_symmetric``, a ``pytorch_half_pixel`` resize to one pixel (off by up to
# 3.6 on a standard normal image); ``LpNormalization`` with ``p=1`` (7.6 times ONNX Runtime's); ``RoiAlign`` in
# ``max`` mode (ONNX Runtime keeps its own summation, which it warns about). Always checked.
_REFERENCE_DIFFERS = frozenset({"Resize", "Upsample", "LpNormalization", "RoiAlign"})
# How far a folded float may sit from ONNX Runtime's own value (a few float32 ulps, not a NaN). Folds outside the
# checks above (a Sin, an Exp) are not compared: libm and ONNX Runtime may differ there by an ulp or two.
_FOLDED_RTOL = 1e-6


def _runtime_disagreement(
    node: ir.Node, replacement: _constant_folding.Replacement, opsets: Mapping[str, int]
) -> str | None:
    """Why a node folded into constants keeps its place: for the folds ``_checked`` names, the folder's values
    are not what ONNX Runtime (CPU) computes from the same constants, or it cannot compute them; else None.

    onnxscript's folder evaluates with onnx's reference implementation; a review found it folding
    ``ReduceMax([1, NaN, 3])`` to NaN (ONNX Runtime: 3), ``ArgMax`` with a NaN, ``ReduceMean`` of nothing and an
    int32 ``ReduceSum`` past 2**31 differently, and a model whose gated branch read such a constant then
    shipped other values than the original's, verified (verification's inputs never opened the gate).
    """
    inputs = [None if value is None else ir.convenience.get_const_tensor(value) for value in node.inputs]
    if any(value is not None and tensor is None for value, tensor in zip(node.inputs, inputs)):
        return None  # not evaluated from constants (a shape rewrite)
    folded = [ir.convenience.get_const_tensor(value) for value in replacement.new_outputs]
    if not folded or any(tensor is None for tensor in folded):
        return None
    if not _checked(node, inputs) and not _flattening_softmax(node, opsets):
        return None
    arrays = [None if tensor is None else tensor.numpy() for tensor in inputs]
    try:
        computed = _on_runtime(node, arrays, opsets)
    except Exception as error:  # noqa: BLE001 - whatever stops ONNX Runtime, the constant is not proven
        return f"ONNX Runtime (CPU) does not compute it from its constants ({type(error).__name__}): left for run time"
    for tensor, expected in zip(folded, computed):
        if not _same_values(tensor.numpy(), np.asarray(expected)):
            return "onnx's reference value of it differs from ONNX Runtime's on its constants: left for run time"
    return None


def _checked(node: ir.Node, inputs: Sequence[ir.TensorProtocol | None]) -> bool:
    """Whether a folded ``node`` is checked on ONNX Runtime: a ``Resize``, ``Upsample``, ``LpNormalization`` or
    ``RoiAlign``; a reduction, arg-max/min or CumSum reading a NaN, nothing, or float16; an integer sum, product,
    power, mean or CumSum; a float ``Range``; a ``Cast`` from text, to float8 or to a type narrower than a byte; any
    other op (but those that only move elements) reading a NaN."""
    if not is_onnx_domain(node) or any(
        attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attribute in node.attributes.values()
    ):
        return False
    present = [tensor for tensor in inputs if tensor is not None]
    dtypes = {tensor.dtype for tensor in present}
    if node.op_type in _INTEGER_CHECKED and any(dtype.is_integer() for dtype in dtypes):
        return True
    if node.op_type in _REFERENCE_DIFFERS:
        return True
    if node.op_type == "Range":
        return any(dtype.is_floating_point() for dtype in dtypes)
    if node.op_type == "Cast":
        target = ir.DataType(node.attributes.get_int("to", 0))
        return target in _CAST_CHECKED or ir.DataType.STRING in dtypes
    if node.op_type in _MOVES_ELEMENTS:
        return False
    if node.op_type in _REDUCTIONS and (
        any(tensor.size == 0 for tensor in present[:1]) or present[:1] and present[0].dtype in _NARROW_FLOATS
    ):
        return True
    return any(_holds_nan(tensor) for tensor in present)


def _flattening_softmax(node: ir.Node, opsets: Mapping[str, int]) -> bool:
    """Whether ``node`` is a ``Softmax``, ``LogSoftmax`` or ``Hardmax`` below opset 13, which normalizes the input
    flattened to 2-D at its axis: onnx's reference computes opset 13's, along the axis alone (at opset 12, a
    ``Softmax<axis=1>`` of a ``[2, 3, 4]`` constant folded to other values than ONNX Runtime's)."""
    if node.op_type not in ("Softmax", "LogSoftmax", "Hardmax") or not is_onnx_domain(node):
        return False
    version = opsets.get("", opsets.get("ai.onnx"))
    return version is not None and version < 13


def _holds_nan(tensor: ir.TensorProtocol) -> bool:
    """Whether a floating-point ``tensor`` (float16, bfloat16 and float8 included) holds a NaN."""
    if not tensor.dtype.is_floating_point():
        return False
    array = tensor.numpy()
    if array.dtype.kind != "f":  # bfloat16, float8 (ml_dtypes): their NaNs survive the widening
        array = array.astype(np.float32)
    return bool(np.isnan(array).any())


def _on_runtime(node: ir.Node, arrays: Sequence[np.ndarray | None], opsets: Mapping[str, int]) -> list[np.ndarray]:
    """``node``'s outputs on ONNX Runtime (CPU), its inputs the constant ``arrays``."""
    from optimizer.runtime import open_session, session_options

    proto = ir.serde.serialize_node(node)
    names = [f"input_{index}" if array is not None else "" for index, array in enumerate(arrays)]
    outputs = [f"output_{index}" for index in range(len(node.outputs))]
    del proto.input[:], proto.output[:]
    proto.input.extend(names)
    proto.output.extend(outputs)
    initializers = [_tensor_proto(array, name) for name, array in zip(names, arrays) if name]
    graph = onnx.helper.make_graph(
        [proto], "folded", [], [onnx.helper.make_empty_tensor_value_info(name) for name in outputs], initializers
    )
    ids = [onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items()]
    model = onnx.helper.make_model(graph, opset_imports=ids, ir_version=onnx.IR_VERSION)
    session = open_session(model.SerializeToString(), session_options(), ["CPUExecutionProvider"])
    return session.run(outputs, {})


def _tensor_proto(array: np.ndarray, name: str) -> onnx.TensorProto:
    """``array`` as an initializer: text by onnx's helper (as bytes), the rest (bfloat16, float8) by onnx_ir."""
    if array.dtype.kind in "OSU":
        encoded = [item if isinstance(item, bytes) else str(item).encode() for item in array.reshape(-1)]
        return onnx.helper.make_tensor(name, onnx.TensorProto.STRING, array.shape, encoded)
    return ir.serde.serialize_tensor(ir.tensor(array, name=name))


def _same_values(folded: np.ndarray, computed: np.ndarray) -> bool:
    """Same shape and values: text as text, float8 by its bytes (ONNX Runtime returns them as uint8), floats with
    the same NaNs and infinities and within ``_FOLDED_RTOL``, anything else equal and of the same dtype."""
    if folded.shape != computed.shape:
        return False
    if folded.dtype.kind in "OSU" or computed.dtype.kind in "OSU":
        as_text = np.vectorize(lambda item: item.decode() if isinstance(item, bytes) else str(item), otypes=[object])
        return bool(np.array_equal(as_text(folded), as_text(computed))) if folded.size else True
    if folded.dtype.kind == "V" and folded.dtype.itemsize == 1 and computed.dtype == np.uint8:
        return bool(np.array_equal(folded.view(np.uint8), computed))
    if folded.dtype != computed.dtype:
        return False
    if folded.dtype.kind not in "fc":
        return bool(np.array_equal(folded, computed))
    return bool(np.allclose(folded, computed, rtol=_FOLDED_RTOL, atol=0.0, equal_nan=True))


def _discard(nodes: Sequence[ir.Node]) -> None:
    """Detach nodes that were built but will not be inserted, so their inputs do not count them as users."""
    for node in nodes:
        for index in range(len(node.inputs)):
            node.replace_input_with(index, None)


def _should_fold(node: ir.Node) -> bool | None:
    """Never a node that draws random numbers (``draws_random``: onnxscript folds ``Bernoulli`` and a training-mode
    ``Dropout`` into one fixed draw), nor the ``Cast`` that starts a weight stored in a narrow integer type and
    dequantized by hand (``casts_narrow_weight``), as onnxscript keeps every ``DequantizeLinear``: folded, tinyocr's
    PP-OCRv6 recognizer stored 22 int8 convolution weights as float32 (1.2 → 1.3 MB) for no time (ONNX Runtime
    folds them when it loads the model), and the quantizers read such a weight as it is (``dequantized_weight``);
    else ``_small_constant_of_shape``."""
    if draws_random(node) or casts_narrow_weight(node):
        return False
    return _small_constant_of_shape(node)


def _left_whole(node: ir.Node, in_function: bool) -> bool:
    """Nodes onnxscript's folder (its evaluators and op-specific rewrites) gets wrong, left as they are:

    - an attribute that refers to the function caller's (``@p``): read as unset, ``Transpose<perm=@p>`` was
      folded as the default reversal, a LeakyRelu with alpha 0.01;
    - ``SplitToSequence`` given its splits with ``keepdims=0``: ONNX ignores keepdims there, onnxscript
      squeezed every piece;
    - a constant ``If`` in a function whose branches hold initializers: onnxscript moves them into the
      function, which holds none (the result read an undefined value, and the pass failed);
    - a ``Cast`` to text: the folded numpy text array cannot be serialized (onnx_ir), and the pass failed when a
      later node read it.
    """
    if any(attribute.is_ref() for attribute in node.attributes.values()):
        return True
    if not is_onnx_domain(node):
        return False
    if node.op_type == "Cast" and node.attributes.get_int("to", 0) == ir.DataType.STRING:
        return True
    if node.op_type == "SplitToSequence" and len(node.inputs) > 1 and node.inputs[1] is not None:
        return node.attributes.get_int("keepdims", 1) == 0
    if node.op_type == "If" and in_function:
        branches = [a.value for a in node.attributes.values() if a.type == ir.AttributeType.GRAPH]
        return any(branch.initializers for branch in branches)
    return False


def _small_constant_of_shape(node: ir.Node) -> bool | None:
    """Fold a ``ConstantOfShape`` with a constant shape of at most ``DEFAULT_INPUT_SIZE_LIMIT`` elements.

    onnxscript keeps every ConstantOfShape, so that folding does not write large
    constants into the file. A small one is shape arithmetic: under ``--static-shapes``
    the legacy exporter's token-type ids are ``Expand(ConstantOfShape([1, 16]))``, and
    until that folds shape inference cannot see the batch size every head split
    needs (the attention fusion then refuses). None leaves the decision to onnxscript.
    """
    if node.op_type != "ConstantOfShape" or not is_onnx_domain(node) or not node.inputs:
        return None
    shape = ir.convenience.get_const_tensor(node.inputs[0])
    if shape is None:
        return None
    sizes = shape.numpy().reshape(-1)
    return bool((sizes >= 0).all() and int(np.prod(sizes)) <= DEFAULT_INPUT_SIZE_LIMIT) or None


@contextlib.contextmanager
def _hide_scalar_split_shapes(model: ir.Model) -> Iterator[None]:
    """Work around an onnxscript 0.7 bug: its SplitToSequence evaluator dereferences the
    split value when ``split`` is a run-time scalar of known (rank-0) shape and crashes
    the whole fold (ONNX backend test ``test_split_to_sequence_1``). Without the shape
    the evaluator leaves the node alone; the shape is put back afterwards."""
    hidden = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "SplitToSequence" or not is_onnx_domain(node) or len(node.inputs) < 2:
            continue
        split = node.inputs[1]
        if split is not None and split.const_value is None and split.shape is not None and len(split.shape) == 0:
            hidden.append((split, split.shape))
            split.shape = None
    try:
        yield
    finally:
        for value, shape in hidden:
            value.shape = shape

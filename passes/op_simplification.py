"""Local algebraic simplifications with onnxscript's default rewrite rules.

These are the rules onnxscript's own ``optimize()`` runs between constant-folding
rounds: no-op removal (``x + 0``, ``x * 1``, identity Reshape/Transpose/Cast/Expand),
cast chains, collapsible Slices, ``Max/Min`` into ``Clip``, Relu/Clip chains,
``Pad`` into ``Conv``, ``BatchNormalization`` folded into the preceding ``Conv``/
``ConvTranspose``/``Gemm`` weights, redundant ``ScatterND``, optional empty biases.
On dynamo exports they remove 20–30 % more nodes than constant folding alone (see
docs/benchmarks.md), so we use them, matched in linear time
(``passes._utils.linear_rule_set``): onnxscript 0.7 matches its ``SlicesSplit`` rule (two
Slices of one tensor into a Split) by walking the whole graph at every node it visits,
168 s at 20,000 nodes (docs/upstream/onnxscript_quadratic.md). Its no-op rules are replaced by
exact ones: onnxscript matches ``x + 0`` and ``x * 1`` within ``abs_tol=1e-8, rel_tol=1e-5``,
so it removed a LayerNorm's ``+ 1e-12`` (0/0 = NaN on a constant row) and ``x * 1.000005``.
``x + 0`` is still removed although it turns ``-0.0`` into ``+0.0`` (as onnxscript's rule does): a
sign of zero only a division by it would show.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter import _pattern_ir, pattern
from onnxscript.rewriter.rules.common import (
    _cast_constant_of_shape,
    _fuse_batchnorm,
    _fuse_pad_into_conv,
    _fuse_relus_clips,
    _min_max_to_clip,
    _no_op,
    _redundant_scatter_nd,
)

from optimizer.domains import onnx_opset
from passes._canonical_forms import (
    EINSUM_RULES,
    KEPT_AXES_RULES,
    MEAN_RULES_BEFORE_18,
    MEAN_RULES_FROM_18,
    NEGATION_RULES,
    NORM_SCALE_RULES,
    TILE_RULES,
    UNBIND_RULES,
    VECTOR_RULES,
)
from passes._pass import GraphoptPass
from passes._utils import (
    constant_array,
    declared_shapes_inferred,
    linear_rule_set,
    overridable_inputs_hidden,
    remove_dead_nodes,
)
from passes.cleanup import LiftConstantsPass, RemoveIdentityPass


class SimplifyOpsPass(GraphoptPass, ir.passes.InPlacePass):
    """Apply onnxscript's default rewrite rules once over the model, and ``passes._canonical_forms``'s (``x * -1``
    into ``Neg``, a sum divided by its count into ``ReduceMean``, a norm's scale applied last, ...), then drop the
    ``Identity`` nodes they leave for removed no-ops and any dead nodes.

    Each rule checks its own preconditions (constant operands, matching shapes and
    dtypes, inference-mode BatchNormalization with one statistic per channel of the layer's
    weight type, a Pad folded into ConvInteger only where its zero point is 0, ...) and leaves
    non-matching nodes alone. An initializer that is also a graph input (a default a caller may override)
    is no constant operand here.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # onnxscript's BatchNorm rule needs the Conv weights as initializers; some exporters
        # (Paddle's) keep every weight in a Constant node, so lift those first.
        lifted = _has_constant_batchnorm_weights(model) and LiftConstantsPass()(model).modified
        lifted = _drop_empty_biases_before_batchnorm(model) or lifted
        opset = onnx_opset(model.opset_imports, 0)
        means = MEAN_RULES_FROM_18 if opset >= 18 else MEAN_RULES_BEFORE_18
        canonical = (*NEGATION_RULES, *EINSUM_RULES, *KEPT_AXES_RULES, *means, *VECTOR_RULES, *NORM_SCALE_RULES)
        canonical += (*TILE_RULES, *UNBIND_RULES)
        default = _RULES if opset >= 18 else _RULES_BEFORE_18 if opset >= 11 else _RULES_BEFORE_11
        rules = linear_rule_set((*default, *canonical))
        # A default a caller may override is no constant; a shape the file declares is no fact (the rules read
        # value shapes: ReshapeReshape, Flatten2Reshape, ExpandIdentity, a SAME Conv's pads).
        with overridable_inputs_hidden(model), declared_shapes_inferred(model):
            modified = rewriter.RewritePass(rules)(model).modified or lifted
        if modified:
            # onnxscript writes a rule's replacement where the last node it matched stood: SlicesSplit turns
            # ``x[1:2]`` (read by a Concat next to it) and a later ``x[0:1]`` into one Split after that Concat, a
            # graph read before it is computed (the afis LEADER fingerprint model, tf2onnx's space-to-batch pads).
            model.graph.sort()
            RemoveIdentityPass()(model)
            remove_dead_nodes(model)
        return ir.passes.PassResult(model, modified=modified)


def _exactly(number: int) -> _pattern_ir.Constant:
    """A constant pattern that matches ``number`` only, not a constant within onnxscript's default tolerance."""
    return _pattern_ir.Constant(number, rel_tol=0.0, abs_tol=0.0)


def _exact_no_op_rules() -> list[pattern.RewriteRule]:
    """``x * 1``, ``x + 0`` (either order), ``x - 0`` and ``x / 1`` into ``Identity(x)``, for those exact values."""
    rules = [
        pattern.RewriteRule(lambda op, x: op.Mul(x, _exactly(1)), _no_op.identity),
        pattern.RewriteRule(lambda op, x: op.Add(x, _exactly(0)), _no_op.identity),
    ]
    rules = [commuted for rule in rules for commuted in rule.commute()]
    rules += [
        pattern.RewriteRule(lambda op, x: op.Sub(x, _exactly(0)), _no_op.identity),
        pattern.RewriteRule(lambda op, x: op.Div(x, _exactly(1)), _no_op.identity),
    ]
    return rules


class _ClipRangesMeet:
    """onnxscript's Relu/Clip chain fusions, refused where the fused Clip would compute something else: where the two
    ranges do not meet (``Relu(Clip(x, lo, hi < 0))`` is 0, ``Clip(x, 0, hi)`` is ``hi``; two disjoint Clips end at
    the second's bound, the fused one at the first's) or the input's dtype is unknown (onnxscript reads it)."""

    def check(self, context, **kwargs):
        result = super().check(context, **kwargs)
        if not result:
            return result
        first = kwargs["out_first_clip"].producer()
        second = kwargs["out_second_clip"].producer() if kwargs.get("out_second_clip") is not None else None
        clips = [node for node in (first, second) if node is not None]
        if any(node.inputs[0] is None or node.inputs[0].dtype is None for node in clips):
            return result.fail("a Clip's input dtype is unknown")
        if any(_has_nan(bound) for node in clips for bound in node.inputs[1:]):
            return result.fail("a bound is NaN")
        low, high = self.compute_clip_min_max(first, second)
        if low is not None and high is not None and bool(np.any(low.numpy() > high.numpy())):
            return result.fail("the two ranges do not meet: the fused Clip would end at the other bound")
        return result


def _has_nan(value: ir.Value | None) -> bool:
    """Whether the constant ``value`` holds a NaN (a Clip or Min/Max bound that no fused Clip computes alike)."""
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None:
        return False
    array = tensor.numpy()
    return array.dtype.kind in "fc" and bool(np.isnan(array).any())


class _NoNanBounds:
    """onnxscript's Min/Max into Clip, refused where a bound is NaN (Min and Max propagate it; Clip does not)."""

    def check(self, context, out1, out2, **kwargs):
        result = super().check(context, out1, out2, **kwargs)
        if result and any(_has_nan(v) for node in (out1.producer(), out2.producer()) for v in node.inputs[1:]):
            return rewriter.MatchResult().fail("a bound is NaN")
        return result


class _SafeMinMaxToClip(_NoNanBounds, _min_max_to_clip.FuseMinMaxToClip):
    pass


class _SafeMaxMinToClip(_NoNanBounds, _min_max_to_clip.FuseMaxMinToClip):
    pass


class _SafeSuccessiveClip(_ClipRangesMeet, _fuse_relus_clips.FuseSuccessiveClip):
    pass


class _SafeSuccessiveClipRelu(_ClipRangesMeet, _fuse_relus_clips.FuseSuccessiveClipRelu):
    pass


class _SafeSuccessiveReluClip(_ClipRangesMeet, _fuse_relus_clips.FuseSuccessiveReluClip):
    pass


class _AssigningScatterAllStatic(_redundant_scatter_nd.ScatterAllStatic):
    """onnxscript's ``ScatterND`` over every row into its updates, only where it assigns: with a ``reduction``
    (add, mul, max, min) the result combines data and updates."""

    def pattern(self, op, data, indices, updates):
        return op.ScatterND(data, indices, updates, _outputs=["scattered"])

    def check(self, context, data, indices, updates, scattered, **kwargs):
        if scattered.producer().attributes.get_string("reduction", "none") != "none":
            return rewriter.MatchResult().fail("a ScatterND with a reduction combines data and updates")
        if data.shape is None or not data.shape.rank() or not isinstance(data.shape[0], int):
            return rewriter.MatchResult().fail("the rows of 'data' are not a number")  # onnxscript's range() raised
        return super().check(context, data, indices, updates, **kwargs)


class _FoldableBatchNorm:
    """onnxscript's BatchNormalization folds into the Conv/ConvTranspose/Gemm before it, refused where the folded
    layer would compute something else or not load: a BatchNormalization in training mode (it normalizes by the
    batch's own statistics, not its running ones), one whose statistics are not one per channel (opset 7's
    ``spatial=0``: one per position; the fold raised a broadcasting error), or one whose parameters are of another
    type than the layer's weight (opset 15 allows float32 statistics beside a float16 input: the folded weight
    took their type, a Conv ONNX Runtime refuses; float16 statistics beside a float32 weight lose its precision)."""

    def check(self, context, x, inbound_out, batchnorm_out, **kwargs):
        result = super().check(context, x, inbound_out, batchnorm_out, **kwargs)
        if not result:
            return result
        batchnorm, layer = batchnorm_out.producer(), inbound_out.producer()
        if batchnorm.attributes.get_int("training_mode", 0):
            return result.fail("the BatchNormalization is in training mode: it normalizes by the batch's statistics")
        weight = layer.inputs[1].const_value
        bias = layer.inputs[2] if len(layer.inputs) > 2 else None
        parameters = [value.const_value for value in (*batchnorm.inputs[1:], bias) if value is not None]
        if any(tensor.dtype != weight.dtype for tensor in parameters):
            return result.fail("the BatchNormalization's parameters are not of the layer's weight type")
        channels = _output_channels(layer, weight.shape)
        if any(tuple(tensor.shape) != (channels,) for tensor in parameters[:4]):
            return result.fail(f"the BatchNormalization's parameters are not one per channel ({channels})")
        return result


def _output_channels(layer: ir.Node, shape) -> int:
    """The output channels of a Conv (weight ``[M, C/g, ...]``), ConvTranspose (``[C, M/g, ...]``) or Gemm."""
    if layer.op_type == "Conv":
        return shape[0]
    if layer.op_type == "ConvTranspose":
        return shape[1] * layer.attributes.get_int("group", 1)
    return shape[0] if layer.attributes.get_int("transB", 0) else shape[1]


class _SafeBatchNormIntoConv(_FoldableBatchNorm, _fuse_batchnorm.FuseBatchNormIntoConv):
    pass


class _SafeBatchNormIntoConvTranspose(_FoldableBatchNorm, _fuse_batchnorm.FuseBatchNormIntoConvTranspose):
    pass


class _SafeBatchNormIntoGemm(_FoldableBatchNorm, _fuse_batchnorm.FuseBatchNormIntoGemm):
    pass


class _PadIntoConvUnlessSplit(_fuse_pad_into_conv.FuseConvPad):
    """onnxscript's ``Pad`` into ``Conv``, except a ``Pad`` that names its ``axes`` before a tall (``k×1``) Conv:
    ``split-conv-padding`` writes its measured splits so (ONNX Runtime does not fold such a Pad either), and folding
    them back undid on a second run what the first measured faster."""

    def check(self, context, x, pad, conv, **kwargs):
        result = super().check(context, x, pad, conv, **kwargs)
        if not result:
            return result
        from passes.conv_padding import tall_conv

        node = pad.producer()
        if len(node.inputs) > 3 and node.inputs[3] is not None and tall_conv(conv.producer()):
            return result.fail("a Pad with axes before a tall Conv: kept as split-conv-padding measured it")
        return result


class _ZeroPointFreeConvIntegerPad(_fuse_pad_into_conv.FuseConvIntegerPad):
    """onnxscript's ``Pad`` into ``ConvInteger``, only where the ConvInteger's ``x_zero_point`` is 0 or absent:
    ConvInteger pads with its zero point, the Pad with 0 (folded, a zero point of 128 turned the padding's 0 into
    128)."""

    def check(self, context, x, pad, conv, **kwargs):
        result = super().check(context, x, pad, conv, **kwargs)
        if not result:
            return result
        node = conv.producer()
        point = node.inputs[2] if len(node.inputs) > 2 else None
        if point is not None and ((array := constant_array(point)) is None or np.any(array != 0)):
            return result.fail("the ConvInteger pads with its x_zero_point, which is not 0: the Pad pads with 0")
        return result


# The types ONNX Runtime's ConstantOfShape fills (not float8, int4, strings): a fused one of another type does not load.
_FILLABLE = frozenset(
    {
        ir.DataType.FLOAT,
        ir.DataType.FLOAT16,
        ir.DataType.BFLOAT16,
        ir.DataType.DOUBLE,
        ir.DataType.BOOL,
        ir.DataType.INT8,
        ir.DataType.INT16,
        ir.DataType.INT32,
        ir.DataType.INT64,
        ir.DataType.UINT8,
        ir.DataType.UINT16,
        ir.DataType.UINT32,
        ir.DataType.UINT64,
    }
)


def _cast_fits(context, scalar, dtype, **_) -> bool:
    """Whether ``Cast(ConstantOfShape(scalar), to=dtype)`` can be one ConstantOfShape exactly as ONNX Runtime casts:
    a finite value within an integer type's range (out of it, onnxscript's rewrite raises OverflowError and ONNX
    Runtime's cast is undefined), any value for a float type. Never a type that refers to a function's caller's."""
    if dtype.is_ref():
        return False
    target = ir.DataType(dtype.as_int())
    if target not in _FILLABLE:
        return False
    value = scalar.value.numpy().reshape(-1)
    if value.size != 1:
        return False
    if target.is_integer():
        info = np.iinfo(target.numpy())
        number = float(value[0]) if value.dtype.kind in "fc" else int(value[0])
        return bool(np.isfinite(number) and info.min <= number <= info.max)
    return target.is_floating_point() or target == ir.DataType.BOOL


def _cast_unfilled(op, shape, dtype):
    return op.Cast(op.ConstantOfShape(shape, _outputs=["filled"]), to=dtype)


def _unfilled(context, filled, dtype, **_) -> bool:
    """Whether the ConstantOfShape has no ``value`` (zeros) and the cast's type is one it fills: onnxscript's pattern
    for it matches one with a value too (other attributes are allowed), and replaced
    ``Cast(ConstantOfShape(value=300))`` by zeros."""
    if dtype.is_ref():
        return False
    return "value" not in filled.producer().attributes and ir.DataType(dtype.as_int()) in _FILLABLE


_REPLACED = {
    id(_fuse_relus_clips.successive_clip_rule): _SafeSuccessiveClip().rule(),
    id(_fuse_relus_clips.successive_clip_relu_rule): _SafeSuccessiveClipRelu().rule(),
    id(_fuse_relus_clips.successive_relu_clip_rule): _SafeSuccessiveReluClip().rule(),
    id(_redundant_scatter_nd.no_op_static_scatter_nd_rule): _AssigningScatterAllStatic.rule(),
    id(_fuse_batchnorm.fuse_batchnorm_into_conv_rule): _SafeBatchNormIntoConv().rule(),
    id(_fuse_batchnorm.fuse_batchnorm_into_conv_transpose_rule): _SafeBatchNormIntoConvTranspose().rule(),
    id(_fuse_batchnorm.fuse_batchnorm_into_gemm_rule): _SafeBatchNormIntoGemm().rule(),
    id(_fuse_pad_into_conv.fuse_pad_into_conv_integer_rule): _ZeroPointFreeConvIntegerPad.rule(),
    id(_fuse_pad_into_conv.fuse_pad_into_conv_rule): _PadIntoConvUnlessSplit.rule(),
    id(_min_max_to_clip.min_max_rule): _SafeMinMaxToClip().rule(),
    id(_min_max_to_clip.max_min_rule): _SafeMaxMinToClip().rule(),
    id(_cast_constant_of_shape.cast_constant_of_shape_rule): pattern.RewriteRule(
        _cast_constant_of_shape.cast_constant_of_shape,
        _cast_constant_of_shape.fused_cast_constant_of_shape,
        _cast_fits,
    ),
    id(_cast_constant_of_shape.cast_constant_of_shape_without_value_rule): pattern.RewriteRule(
        _cast_unfilled, _cast_constant_of_shape.fused_cast_constant_of_shape_without_value, _unfilled
    ),
}
# onnxscript's own no-op rules for those four ops (its Dropout ones stay).
_TOLERANT = frozenset(
    id(rule)
    for rule in _no_op.rules.rules
    if str(rule._target_pattern.output_nodes[0].op) in ("Mul", "Add", "Sub", "Div")
)
# onnxscript's MaterializeReshapeShape sets allowzero=1, an attribute opset 13 and older lack (ddddocr's torch 1.9
# export at opset 12): a model ONNX Runtime refuses. simplify-shapes proves such targets instead.
logger = logging.getLogger(__name__)

_UNSOUND = frozenset({"MaterializeReshapeShape"})
_RULES = (
    *_exact_no_op_rules(),
    *(
        _REPLACED.get(id(rule), rule)
        for rule in rewriter._DEFAULT_REWRITE_RULES
        if id(rule) not in _TOLERANT and rule.name not in _UNSOUND
    ),
)
# onnxscript's SlicesSplit writes ``Split(x, num_outputs=2)``, an attribute Split has from opset 18 only: on afis's
# LEADER model (opset 17) ONNX Runtime refused the result ("invalid model"), and simplify-ops was rolled back whole.
_RULES_BEFORE_18 = tuple(rule for rule in _RULES if rule.name != "SlicesSplit")
# Before opset 11, Clip's bounds and Pad's pads are attributes: the rules written for them as inputs turned
# Clip(Clip(x, -1, 5), 0, 1) into a bare Clip(x), or wrote a Clip/Pad ONNX Runtime refuses at that opset.
_RULES_BEFORE_11 = tuple(
    rule for rule in _RULES_BEFORE_18 if not any(word in (rule.name or "") for word in ("Clip", "Pad"))
)


def _drop_empty_biases_before_batchnorm(model: ir.Model) -> bool:
    """Drop the empty trailing bias input (``Conv(x, W, "")``, which ONNX allows for an optional input) of each
    Conv/ConvTranspose/Gemm a BatchNormalization reads: onnxscript's fold reads a third input as a constant bias and
    raised ``AttributeError`` on the empty one, failing the whole pass. The layer computes the same without it."""
    dropped = False
    for node in model.graph.all_nodes():
        if node.op_type != "BatchNormalization" or not node.inputs or node.inputs[0] is None:
            continue
        layer = node.inputs[0].producer()
        if layer is None or layer.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(layer.inputs) != 3:
            continue
        if layer.inputs[2] is None:
            layer.resize_inputs(2)
            dropped = True
    return dropped


def _has_constant_batchnorm_weights(model: ir.Model) -> bool:
    """True if a BatchNormalization after a Conv/Gemm reads a Constant node (not an initializer)."""
    for node in model.graph:
        if node.op_type != "BatchNormalization" or node.inputs[0] is None:
            continue
        producer = node.inputs[0].producer()
        if producer is None or producer.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        weights = [v for v in list(node.inputs[1:]) + list(producer.inputs[1:]) if v is not None]
        if any(v.producer() is not None and v.producer().op_type == "Constant" for v in weights):
            return True
    return False

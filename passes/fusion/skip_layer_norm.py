"""Skip+LayerNorm fusion: residual ``Add`` + normalization into ``SkipLayerNormalization``.

Matches ``LayerNormalization(input + skip [+ bias])`` and
``SimplifiedLayerNormalization(input + skip [+ bias])`` (RMSNorm) over the last axis
and rewrites them into ``com.microsoft.SkipLayerNormalization`` /
``SkipSimplifiedLayerNormalization``. A constant 1-D bias added to either operand
(the preceding Linear layer's bias) is folded in. When the residual sum has other
users (the next block's skip connection) they read the fused op's fourth output.
"""

from __future__ import annotations

import re

import onnx_ir as ir
from onnxscript.rewriter import pattern

from optimizer.domains import MS_DOMAIN
from optimizer.runtime import ancestry
from passes.fusion._base import RuleFusionPass
from passes.fusion._checks import NOT_KNOWN_3D, fuse_with_inferred_shapes, is_float, vector_for_last_dim

# The dim names ONNX's shape inference makes up (``onnx/defs/shape_inference``'s ``unk__`` counter).
_INFERRED_DIM = re.compile(r"unk__\d+")


def _operand_order(a: ir.Value, b: ir.Value) -> tuple[ir.Value, ir.Value] | None:
    """``(input, skip)`` for the fused op, or None if the residual Add broadcasts in a way it cannot, or its
    operands' dims are not proven to match.

    The op's skip (not its input) may have batch 1, or no batch axis (``[S, D]``: ONNX Runtime's
    ``(sequence_length, hidden_size)`` skip: Pegasus' sinusoidal position embeddings added to the token
    embeddings); the sum is symmetric, so the operands are swapped when that one came first.
    """
    related = _related(a, b)
    if a.shape.rank() != b.shape.rank():
        first, second = (a, b) if a.shape.rank() == 3 else (b, a)
        if all(_may_be_equal(x, y, related) for x, y in zip(list(first.shape)[1:], second.shape)):
            return first, second
        return None
    if all(_may_be_equal(x, y, related) for x, y in zip(a.shape, b.shape)):
        return a, b
    for first, second in ((a, b), (b, a)):
        if second.shape[0] == 1 and first.shape[0] != 1:
            if all(_may_be_equal(x, y, related) for x, y in zip(list(first.shape)[1:], list(second.shape)[1:])):
                return first, second
    return None


def _may_be_equal(a, b, related: bool) -> bool:
    """Whether two dims count as equal: the same size or dim name; or, where one operand of the residual Add is
    computed from one computed value (``x + F(x)``, every exporter's residual: ``_related``), dims of unknown
    size that are not a static 1 or two different names.

    The fused op takes its output's shape from its input and does not broadcast: two independent operands of
    unnamed dims (Paddle's and tf2onnx's ``-1``s), fed ``[1, S, D]`` and ``[3, S, D]``, gave 1 row where the
    original gave 3 (a review; verification feeds unnamed dims one size at a time).
    """
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if a == 1 or b == 1:
        return False
    names = [None if isinstance(d, int) else getattr(d, "value", None) for d in (a, b)]
    if None not in names and names[0] == names[1]:
        return True
    # A name ONNX's shape inference makes up for a dim it cannot size (``unk__7``: the legacy exporter records no
    # shapes, and a computed Reshape target gives its output such dims) is no more than an unknown size: LayoutLM's
    # attention output ``[unk__20, unk__17, 64]`` beside its residual ``[unk__16, unk__18, 64]`` was read as two
    # different sizes, and two of its four residual norms were left unfused.
    if None not in names and not any(_INFERRED_DIM.fullmatch(name) for name in names):
        return False  # two names (onnx_ir compares two unknown dims as equal: only names prove it)
    return related


def _related(a: ir.Value, b: ir.Value) -> bool:
    """Whether ``a`` and ``b`` are computed from one non-constant value (one of them, a common ancestor, or a graph
    input both read): the residual ``x + F(x)``, where an earlier fusion may have replaced ``x``'s own node, so
    that ``F(x)`` reads ``x``'s operands. Two graph inputs are not related."""
    first = _ancestors(a)
    return bool(first) and not first.isdisjoint(_ancestors(b))


def _ancestors(value: ir.Value) -> set[int]:
    """The ids of ``value`` and of the non-constant values it is computed from (graph inputs included)."""
    nodes, leaves = ancestry([value], through_subgraphs=True)
    computed = (output for node in nodes if node.op_type != "Constant" for output in node.outputs)
    return {id(v) for v in (*computed, *leaves) if v.const_value is None}


class _SkipNorm(pattern.RewriteRuleClassBase):
    def __init__(self, *, simplified: bool, with_bias: bool) -> None:
        super().__init__(name=f"Skip{'Simplified' if simplified else ''}LayerNorm(bias={with_bias})")
        self._simplified = simplified
        self._with_bias = with_bias

    def pattern(self, op, input, skip, bias, gamma):
        if self._with_bias:
            input = op.Add(input, bias)
        total = op.Add(input, skip, _outputs=["total"])
        if self._simplified:
            return op.SimplifiedLayerNormalization(
                total, gamma, _allow_other_attributes=True, _outputs=["normalized"]
            ), total
        return op.LayerNormalization(
            total, gamma, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["normalized"]
        ), total

    def check(self, context, input, skip, gamma, normalized, bias=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        norm = normalized.producer()
        if norm.attributes.get_int("axis", -1) not in (-1,) and not (
            input.shape is not None and norm.attributes.get_int("axis", -1) == input.shape.rank() - 1
        ):
            return result.fail("normalization is not over the last axis")
        if len(norm.outputs) > 1 and any(o.uses() for o in norm.outputs[1:]):
            return result.fail("the normalization's mean/inv-std outputs are used")
        if norm.attributes.get_int("stash_type", 1) != 1:
            return result.fail("stash_type is not float32")
        if not vector_for_last_dim(gamma, input):
            return result.fail("scale is not a constant vector")
        if not self._simplified and len(norm.inputs) > 2 and norm.inputs[2] is not None:
            if not vector_for_last_dim(norm.inputs[2], input):
                return result.fail("LayerNorm bias is not a constant vector")
        if self._with_bias and not vector_for_last_dim(bias, input):
            return result.fail("the folded bias is not a constant vector")
        for operand in (input, skip):
            if operand.const_value is not None:
                return result.fail("an operand of the residual Add is constant")
            # SkipLayerNormalization needs a 3-D input and a skip of its shape, of batch 1, or without the batch
            # axis (no other broadcasting).
            if operand.shape is None or operand.shape.rank() not in (2, 3):
                return result.fail(f"operands are {NOT_KNOWN_3D}")
        if input.shape.rank() == skip.shape.rank() == 2:
            return result.fail(f"operands are {NOT_KNOWN_3D}")
        if _operand_order(input, skip) is None:
            return result.fail("operand shapes differ, or the first broadcasts")
        if not is_float(input) or not is_float(skip):
            return result.fail("operands are not float32")
        return result

    def rewrite(self, op, input, skip, gamma, normalized, bias=None, **_):
        norm = normalized.producer()
        input, skip = _operand_order(input, skip)
        epsilon = norm.attributes.get_float("epsilon", 1e-5)
        if self._simplified:
            inputs = [input, skip, gamma] + ([bias] if self._with_bias else [])
            out, _, _, total = op.SkipSimplifiedLayerNormalization(
                *inputs, epsilon=epsilon, _domain=MS_DOMAIN, _outputs=4
            )
        else:
            beta = norm.inputs[2] if len(norm.inputs) > 2 else None
            inputs = [input, skip, gamma, beta] + ([bias] if self._with_bias else [])
            while inputs and inputs[-1] is None:
                inputs.pop()
            out, _, _, total = op.SkipLayerNormalization(*inputs, epsilon=epsilon, _domain=MS_DOMAIN, _outputs=4)
        return out, total


class SkipLayerNormFusion(RuleFusionPass):
    """Rewrite residual Add (+ bias) + ``LayerNormalization`` into ``SkipLayerNormalization``.

    Refuses when the operands are not 3-D with matching dims, but for a skip of batch 1 or a 2-D ``[S, D]``
    skip (the broadcasts the fused op takes), when the scale or a bias is not constant, or when the
    normalization's extra outputs are used. Run it after LayerNorm fusion.
    """

    commute = True
    fused_ops = ((MS_DOMAIN, "SkipLayerNormalization"),)
    _simplified = False

    def fuse(self, model: ir.Model) -> int:
        # The legacy exporter records no intermediate shapes: ranks ONNX's inference finds are read then.
        return fuse_with_inferred_shapes(self, model, super().fuse, retry_on=(NOT_KNOWN_3D,))

    def rule_set(self) -> pattern.RewriteRuleSet:
        return pattern.RewriteRuleSet(
            [_SkipNorm.rule(simplified=self._simplified, with_bias=bias) for bias in (True, False)]
        )


class SkipRmsNormFusion(SkipLayerNormFusion):
    """Rewrite residual Add (+ bias) + ``SimplifiedLayerNormalization`` into ``SkipSimplifiedLayerNormalization``.

    Same refusals as ``SkipLayerNormFusion``; run it after RMSNorm fusion.
    """

    fused_ops = ((MS_DOMAIN, "SkipSimplifiedLayerNormalization"),)
    _simplified = True

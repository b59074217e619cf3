"""Conv + per-channel affine fusion: ``Conv(x, W, b) * s + t`` folded into the Conv's weights.

Matches a Conv followed by a ``Mul`` and/or ``Add`` with constants that broadcast
per output channel (a scalar, ``[C, 1, ..., 1]`` or ``[1, C, 1, ..., 1]``) — what a
decomposed BatchNorm, a LayerScale or a normalization constant leaves — and rewrites
it into one Conv with ``W' = W * s`` (per output channel) and ``b' = b * s + t``.
``BatchNormalization`` itself is folded by ``simplify-ops`` (onnxscript's rule).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from optimizer.domains import is_onnx_domain
from passes._utils import constant_array
from passes.fusion._base import RuleFusionPass


def _per_channel(value: ir.Value | None, channels: int, rank: int) -> np.ndarray | None:
    """The constant as a ``[channels]`` vector if it broadcasts per output channel of a rank-``rank`` Conv output."""
    array = constant_array(value)
    if array is None or array.dtype.kind != "f":
        return None
    if array.size == 1:
        # A scalar-like constant of higher rank than the Conv output would broadcast it up.
        return np.full(channels, array.reshape(()), dtype=array.dtype) if array.ndim <= rank else None
    shape = array.shape
    if len(shape) == rank:
        if shape[0] != 1:
            return None
        shape = shape[1:]
    if len(shape) != rank - 1 or shape[0] != channels or any(d != 1 for d in shape[1:]):
        return None
    return array.reshape(channels)


def _read_beside_an_affine(node: ir.Node) -> bool:
    """Whether ``node`` is a Conv with constant weights whose output a per-output-channel constant ``Mul``/``Add``
    reads and another node (or the graph's outputs) reads too: the fold would change what that reader sees.
    onnxscript's matcher drops such a match before the rule's check, so no near miss says why."""
    if node.op_type != "Conv" or not is_onnx_domain(node) or len(node.inputs) < 2 or not node.outputs:
        return False
    weights, output = constant_array(node.inputs[1]), node.outputs[0]
    uses = list(output.uses())
    if weights is None or weights.dtype.kind != "f" or (len(uses) < 2 and not output.is_graph_output()):
        return False
    for user, _ in uses:
        if user.op_type in ("Mul", "Add") and is_onnx_domain(user) and len(user.inputs) == 2:
            other = user.inputs[1] if user.inputs[0] is output else user.inputs[0]
            if _per_channel(other, weights.shape[0], weights.ndim) is not None:
                return True
    return False


class _ConvAffine(pattern.RewriteRuleClassBase):
    def __init__(self, *, scale: bool, offset: bool) -> None:
        super().__init__(name=f"ConvAffine(scale={scale}, offset={offset})")
        self._scale, self._offset = scale, offset

    def pattern(self, op, x, w, s, t):
        y = op.Conv(x, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["conv"])
        if self._scale:
            y = op.Mul(y, s)
        if self._offset:
            y = op.Add(y, t)
        return y

    def _factors(self, w, conv, s, t):
        weights = constant_array(w)
        if weights is None or weights.dtype.kind != "f":
            return None
        channels, rank = weights.shape[0], weights.ndim
        node = conv.producer()
        bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if len(node.inputs) > 2 and node.inputs[2] is not None and bias is None:
            return None
        scale = _per_channel(s, channels, rank) if self._scale else np.ones(channels, weights.dtype)
        offset = _per_channel(t, channels, rank) if self._offset else np.zeros(channels, weights.dtype)
        if scale is None or offset is None:
            return None
        bias = bias if bias is not None else np.zeros(channels, weights.dtype)
        return weights, bias, scale, offset

    def check(self, context, x, w, conv, s=None, t=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if len(list(conv.uses())) != 1 or conv.is_graph_output():
            return result.fail("the Conv output has other users")
        if self._factors(w, conv, s, t) is None:
            return result.fail("weights/bias not constant, or the affine is not per output channel")
        return result

    def rewrite(self, op, x, w, conv, s=None, t=None, **_):
        weights, bias, scale, offset = self._factors(w, conv, s, t)
        shape = (-1,) + (1,) * (weights.ndim - 1)
        # Named after the Conv's output (unique in the graph): two Convs may share one weight.
        new_w = op.initializer(ir.tensor((weights * scale.reshape(shape)).astype(weights.dtype)), f"{conv.name}_weight")
        new_b = op.initializer(ir.tensor((bias * scale + offset).astype(weights.dtype)), f"{conv.name}_bias")
        return op.Conv(x, new_w, new_b, **conv.producer().attributes)


class ConvAffineFusion(RuleFusionPass):
    """Fold a per-output-channel constant ``Mul`` and/or ``Add`` after a Conv into its weights and bias.

    Refuses when the Conv's weights or bias are not constants, when the Conv output
    has other users, or when a constant does not broadcast per output channel
    (e.g. a per-pixel bias).
    """

    fused_ops = (("", "Conv"),)
    held_ops_mean_fused = False

    def fuse(self, model: ir.Model) -> int:
        count = super().fuse(model)
        shared = sum(_read_beside_an_affine(node) for node in model.graph)
        if shared:
            matches = "match" if shared == 1 else "matches"
            self.decline(
                f"{shared} near {matches} at Conv left unfused: the Conv output is also read by another node "
                "(or is a model output), which the fold would change"
            )
        return count

    def rule_set(self) -> pattern.RewriteRuleSet:
        return pattern.RewriteRuleSet(
            [
                _ConvAffine.rule(scale=True, offset=True),
                _ConvAffine.rule(scale=True, offset=False),
                _ConvAffine.rule(scale=False, offset=True),
            ]
        )

"""MatMul fusions from onnxscript's rule sets: MatMul + Add into Gemm, Transpose/scale into FusedMatMul.

* ``MatMulAddFusion``: ``Add(MatMul(A, B), c)`` with 2-D operands (and a transposed
  A or B) into ``Gemm`` — onnxscript's ``matmul_add_to_gemm`` rules, which refuse
  operands that are not 2-D; here also a ``c`` that does not broadcast into the product's
  shape (the Add's result would be larger than the Gemm's) and operands of a type ONNX Runtime's Gemm
  does not compute (integers).
* ``FusedMatMulFusion``: ``Transpose`` of the last two axes of either MatMul operand
  and a division or multiplication of the result by a constant into
  ``com.microsoft.FusedMatMul`` — onnxscript's ``fused_matmul_rule_sets``, on float operands
  only (FusedMatMul has no integer kernel).

ONNX Runtime applies both rewrites itself when it loads a model at ORT_ENABLE_ALL, so
on its CPU EP they are neutral (docs/benchmarks.md); they are opt-in, for graphs
that are run with fewer optimizations or inspected.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions import fused_matmul_rule_sets as _fused_matmul
from onnxscript.rewriter.rules.common import _matmul_add_to_gemm

from optimizer.domains import MS_DOMAIN
from passes.fusion._base import RuleFusionPass


class MatMulAddFusion(RuleFusionPass):
    """Rewrite ``MatMul`` (2-D, optionally with transposed operands) + bias ``Add`` into ``Gemm``.

    Refuses (reported as near-miss reasons) operands that are not both 2-D or whose rank is
    unknown (onnxscript's checks), a ``c`` whose shape is unknown or does not broadcast into the
    product's ``[M, N]`` (a ``[1, M, N]`` or a ``[M, N]`` added to a ``[1, N]`` product makes the
    Add's result larger than a Gemm's), and integer operands (ONNX Runtime has no integer Gemm).
    """

    fused_ops = (("", "Gemm"),)
    held_ops_mean_fused = False  # a torch.nn.Linear exports a Gemm itself

    def rule_set(self) -> pattern.RewriteRuleSet:
        return pattern.RewriteRuleSet([_as_gemm(rule) for rule in _GEMM_RULES])


class FusedMatMulFusion(RuleFusionPass):
    """Fold operand transposes and constant scaling of a ``MatMul`` into ``com.microsoft.FusedMatMul``.

    Refuses (onnxscript's checks, reported as near-miss reasons) a ``Transpose`` that
    does not swap the last two axes only (or, on the 2-D rule, an operand that is not
    2-D), and a scale that is not a constant scalar.
    """

    fused_ops = ((MS_DOMAIN, "FusedMatMul"),)

    def rule_set(self) -> pattern.RewriteRuleSet:
        # onnxscript's FusedMatMulTranspose is replaced by ``_FusedMatMulTranspose`` (its flags, fixed).
        return pattern.RewriteRuleSet([_on_floats(rule) for rule in (_FusedMatMulTranspose, *_FUSED_RULES)])


class _FusedMatMulTranspose(_fused_matmul.FusedMatMulTranspose):
    """``Transpose(FusedMatMul(x, y))`` of 2-D operands into ``FusedMatMul(y, x)`` with transA = 1 - transB and
    transB = 1 - transA: ``(op(x) op(y))^T = op(y)^T op(x)^T``. onnxscript's rule flips each flag in place,
    which is right only where they are equal (a review: ``transA=1`` came out as ``y x^T``; verification rolled
    the whole pass back)."""

    def rewrite(self, op, x, y, fused: ir.Value | None = None, **_):
        kwargs = _fused_matmul._get_kwargs(_fused_matmul._get_node(fused, "FusedMatMul")) if fused else {}
        first, second = kwargs.get("transA", 0), kwargs.get("transB", 0)
        kwargs["transA"], kwargs["transB"] = 1 - second, 1 - first
        return op.FusedMatMul(y, x, **kwargs, _domain=MS_DOMAIN)


# The types ONNX Runtime's CPU kernels for Gemm and FusedMatMul compute (no integers).
_FLOATS = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})


class _FloatOperands:
    """A MatMul rule refused where its operands are of a known type the fused op has no kernel for (integers)."""

    def check(self, context, **kwargs):
        result = super().check(context, **kwargs)
        if not result:
            return result
        operands = [kwargs.get(name) for name in ("x", "y", "input_a", "input_b")]
        dtypes = {value.dtype for value in operands if value is not None and value.dtype is not None}
        if dtypes - _FLOATS:
            return result.fail(
                f"operands of type {', '.join(sorted(str(t) for t in dtypes - _FLOATS))}, which it has no kernel for"
            )
        return result


class _BroadcastBias:
    """``Add(MatMul(A, B), c)`` refused where ``c`` does not broadcast into the product's ``[M, N]``: the Add's
    result would then be larger than the Gemm's (a ``c`` of more dims, or rows added to a one-row product)."""

    def check(self, context, input_a, input_b, input_c, **kwargs):
        result = super().check(context, input_a=input_a, input_b=input_b, input_c=input_c, **kwargs)
        if not result:
            return result
        rows = input_a.shape[1 if self.trans_a else 0]
        columns = input_b.shape[0 if self.trans_b else 1]
        shape = input_c.shape
        if shape is None or shape.rank() > 2:
            return result.fail("the added c's shape is unknown or of more than 2 dims")
        for dim, target in zip(reversed(list(shape)), (columns, rows)):
            if dim != 1 and not (dim == target and (isinstance(dim, int) or dim.value is not None)):
                return result.fail(f"the added c of shape {list(shape)} does not broadcast into [{rows}, {columns}]")
        return result


def _as_gemm(rule: type) -> pattern.RewriteRule:
    return type(f"_Checked{rule.__name__}", (_BroadcastBias, _FloatOperands, rule), {}).rule(name=rule.__name__)


def _on_floats(rule: type) -> pattern.RewriteRule:
    return type(f"_Float{rule.__name__}", (_FloatOperands, rule), {}).rule(name=rule.__name__)


_GEMM_RULES = (
    _matmul_add_to_gemm.TransABMatMulAddToGemm,
    _matmul_add_to_gemm.TransAMatMulAddToGemm,
    _matmul_add_to_gemm.TransBMatMulAddToGemm,
    _matmul_add_to_gemm.MatMulAddToGemm,
)
# onnxscript's fused_matmul_rule_sets(), in its order, less FusedMatMulTranspose.
_FUSED_RULES = (
    _fused_matmul.FusedMatMulDiv1,
    _fused_matmul.FusedMatMulDiv2,
    _fused_matmul.MatMulTranspose,
    _fused_matmul.TransposeMatMul1,
    _fused_matmul.TransposeFusedMatMul1,
    _fused_matmul.TransposeMatMul2,
    _fused_matmul.TransposeFusedMatMul2,
    _fused_matmul.TransposeFusedMatMulWithFlippedBatch1,
    _fused_matmul.TransposeFusedMatMulWithFlippedBatch2,
    _fused_matmul.TransposeFusedMatMulWithFlippedBatchAndTranspose1,
    _fused_matmul.TransposeFusedMatMulWithFlippedBatchAndTranspose2,
    _fused_matmul.TransposeFusedMatMulWithBatchAndTranspose1,
    _fused_matmul.TransposeFusedMatMulWithBatchAndTranspose2,
)

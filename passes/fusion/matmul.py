"""MatMul fusions from onnxscript's rule sets: MatMul + Add into Gemm, Transpose/scale into FusedMatMul.

* ``MatMulAddFusion``: ``Add(MatMul(A, B), c)`` with 2-D operands (and a transposed
  A or B) into ``Gemm`` — onnxscript's ``matmul_add_to_gemm`` rules, which refuse
  operands that are not 2-D.
* ``FusedMatMulFusion``: ``Transpose`` of the last two axes of either MatMul operand
  and a division or multiplication of the result by a constant into
  ``com.microsoft.FusedMatMul`` — onnxscript's ``fused_matmul_rule_sets``.

ONNX Runtime applies both rewrites itself when it loads a model at ORT_ENABLE_ALL, so
on its CPU EP they are neutral (docs/benchmarks.md); they are opt-in, for graphs
that are run with fewer optimizations or inspected.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions import fused_matmul_rule_sets as _fused_matmul
from onnxscript.rewriter.ort_fusions.fused_matmul_rule_sets import fused_matmul_rule_sets
from onnxscript.rewriter.rules.common import _matmul_add_to_gemm

from optimizer.domains import MS_DOMAIN
from passes.fusion._base import RuleFusionPass


class MatMulAddFusion(RuleFusionPass):
    """Rewrite ``MatMul`` (2-D, optionally with transposed operands) + bias ``Add`` into ``Gemm``.

    Refuses (onnxscript's checks, reported as near-miss reasons) operands that are not
    both 2-D or whose rank is unknown.
    """

    fused_ops = (("", "Gemm"),)
    held_ops_mean_fused = False  # a torch.nn.Linear exports a Gemm itself

    def rule_set(self) -> pattern.RewriteRuleSet:
        return _matmul_add_to_gemm.rules


class FusedMatMulFusion(RuleFusionPass):
    """Fold operand transposes and constant scaling of a ``MatMul`` into ``com.microsoft.FusedMatMul``.

    Refuses (onnxscript's checks, reported as near-miss reasons) a ``Transpose`` that
    does not swap the last two axes only (or, on the 2-D rule, an operand that is not
    2-D), and a scale that is not a constant scalar.
    """

    fused_ops = ((MS_DOMAIN, "FusedMatMul"),)

    def rule_set(self) -> pattern.RewriteRuleSet:
        # onnxscript's FusedMatMulTranspose is replaced by ``_FusedMatMulTranspose`` (its flags, fixed).
        rules = [rule for rule in fused_matmul_rule_sets().rules if rule.name != "FusedMatMulTranspose"]
        return pattern.RewriteRuleSet([_FusedMatMulTranspose.rule(), *rules])


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

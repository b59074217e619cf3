"""Which fused operators each ONNX Runtime execution provider implements.

From ONNX Runtime's kernel registrations (docs/OperatorKernels.md, ORT 1.20+): a
fusion pass refuses to run for a target whose EP lacks one of the operators it
emits, so the graph keeps its standard-ONNX form there.
"""

from __future__ import annotations

from optimizer.domains import MS_DOMAIN

# (domain, op_type) -> execution providers with a float32 kernel.
_KERNELS: dict[tuple[str, str], frozenset[str]] = {
    ("", "LayerNormalization"): frozenset({"cpu", "cuda"}),
    ("", "Conv"): frozenset({"cpu", "cuda"}),
    ("", "Gemm"): frozenset({"cpu", "cuda"}),
    # ORT registers SimplifiedLayerNormalization in the ONNX domain (a contrib op).
    ("", "SimplifiedLayerNormalization"): frozenset({"cpu", "cuda"}),
    (MS_DOMAIN, "SkipLayerNormalization"): frozenset({"cpu", "cuda"}),
    (MS_DOMAIN, "SkipSimplifiedLayerNormalization"): frozenset({"cpu", "cuda"}),
    (MS_DOMAIN, "Gelu"): frozenset({"cpu", "cuda"}),
    (MS_DOMAIN, "FastGelu"): frozenset({"cpu", "cuda"}),
    (MS_DOMAIN, "QuickGelu"): frozenset({"cpu", "cuda"}),
    (MS_DOMAIN, "BiasGelu"): frozenset({"cpu", "cuda"}),
    (MS_DOMAIN, "MultiHeadAttention"): frozenset({"cpu", "cuda"}),
    (MS_DOMAIN, "Attention"): frozenset({"cpu", "cuda"}),
    # CUDA's GroupQueryAttention is float16/bfloat16 only.
    (MS_DOMAIN, "GroupQueryAttention"): frozenset({"cpu"}),
    (MS_DOMAIN, "RotaryEmbedding"): frozenset({"cpu", "cuda"}),
    (MS_DOMAIN, "EmbedLayerNormalization"): frozenset({"cpu", "cuda"}),
    (MS_DOMAIN, "FusedMatMul"): frozenset({"cpu", "cuda"}),
    (MS_DOMAIN, "MatMulNBits"): frozenset({"cpu", "cuda"}),
}


def unsupported_ops(ops: tuple[tuple[str, str], ...], target: str) -> list[str]:
    """The ``(domain, op_type)`` pairs of ``ops`` that ``target``'s EP has no kernel for, as names."""
    return [f"{domain or 'ai.onnx'}::{op}" for domain, op in ops if target not in _KERNELS.get((domain, op), ())]

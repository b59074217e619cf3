"""Operator domains: one spelling of "the ONNX domain" and of ONNX Runtime's contrib domain, and where each domain's
``RotaryEmbedding`` takes its positions and caches."""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir

# The default ONNX operator set is spelled "" or "ai.onnx".
ONNX_DOMAINS = frozenset({"", "ai.onnx"})
# ONNX Runtime's contrib operators (fused attention, norms, int8 kernels).
MS_DOMAIN = "com.microsoft"


def is_onnx_domain(node: ir.Node) -> bool:
    """True if ``node`` is a standard ONNX operator (domain ``""`` or ``"ai.onnx"``)."""
    return node.domain in ONNX_DOMAINS


def is_onnx_op(node: ir.Node | None, *op_types: str) -> bool:
    """True if ``node`` is a standard ONNX operator of one of ``op_types``."""
    return node is not None and node.op_type in op_types and node.domain in ONNX_DOMAINS


def onnx_opset(opset_imports: Mapping[str, int], default: int = 0) -> int:
    """The default ONNX operator set's version in ``opset_imports`` (imported as ``""`` or ``"ai.onnx"``)."""
    return opset_imports.get("", opset_imports.get("ai.onnx", default))


# The inputs of a ``RotaryEmbedding``, by its domain (the fused ``com.microsoft`` op, or ONNX's own of opset 23), that
# hold its position ids, then its cos and sin caches: where verification reads the caches' rows, and where their
# length bounds an encoder's sequence.
ROTARY_INPUTS = {MS_DOMAIN: (1, 2, 3), "": (3, 1, 2)}

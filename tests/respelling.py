"""Helpers of the respelling reviews (``test_review_s46_respellings.py``, ``test_review_s47_respellings.py``):
run the default pipeline on a graph and count what it fused, and edit a ``ModelProto``'s nodes in place."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from optimizer.api import optimize_with_report
from tests.helpers import run

# Fused ops ONNX Runtime registers in the default domain (the others are com.microsoft's).
_DEFAULT_DOMAIN_FUSED = {"SimplifiedLayerNormalization", "LayerNormalization"}


def fused(model: ir.Model) -> dict[str, int]:
    """How many of each fused op ``model`` holds."""
    return dict(
        Counter(n.op_type for n in model.graph if n.domain == "com.microsoft" or n.op_type in _DEFAULT_DOMAIN_FUSED)
    )


def optimized(proto: onnx.ModelProto, passes, feeds) -> tuple[dict[str, int], list, dict[str, np.ndarray]]:
    """The pipeline (``passes``, None for the default) on ``proto``: what it fused, the passes not applied cleanly
    (name, status, detail), and the result's outputs on ``feeds``."""
    result, report = optimize_with_report(ir.from_proto(proto), passes)
    trouble = [(p.name, p.status, p.detail[:160]) for p in report.passes if p.status not in ("applied", "unchanged")]
    return fused(result), trouble, run(result, feeds)


def close(expected: dict, actual: dict, atol: float) -> None:
    """The same outputs, in the same order, within ``atol`` (and a relative 1e-4)."""
    assert list(expected) == list(actual)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=atol, err_msg=name)


def clone(proto: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(proto.SerializeToString())


def producers(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in proto.graph.node for out in node.output}


def rotate_halves(proto: onnx.ModelProto):
    """Each ``Concat(Neg(Slice(x, d/2:)), Slice(x, :d/2))`` of ``proto``: (concat, neg, lo Slice, hi Slice)."""
    found = producers(proto)
    for node in proto.graph.node:
        if node.op_type != "Concat" or len(node.input) != 2:
            continue
        neg, lo = found.get(node.input[0]), found.get(node.input[1])
        if neg is None or neg.op_type != "Neg" or lo is None or lo.op_type != "Slice":
            continue
        hi = found.get(neg.input[0])
        if hi is not None and hi.op_type == "Slice" and hi.input[0] == lo.input[0]:
            yield node, neg, lo, hi


def users(proto: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def constant(proto: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The initializer or ``Constant`` node value called ``name``, or None."""
    for tensor in proto.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def add_initializer(proto: onnx.ModelProto, name: str, value) -> str:
    proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def with_nodes_before(proto: onnx.ModelProto, before: dict[str, list[onnx.NodeProto]]) -> onnx.ModelProto:
    """``proto`` with ``before[name]`` inserted ahead of the node whose first output is ``name`` (keyed by name: the
    protobuf wrappers of nodes are not stable objects)."""
    nodes = []
    for node in proto.graph.node:
        nodes.extend(before.get(node.output[0], []))
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto

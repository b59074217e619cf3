"""Helpers for the quantization tests: accuracy of a rewritten model, ORT's optimized graph."""

from __future__ import annotations

import collections
import os
import tempfile

import numpy as np
import onnx
import onnx_ir as ir

from optimizer.accuracy import Drift, output_drift
from optimizer.runtime import run_batches


def drift(before: ir.Model, after: ir.Model, feeds: dict[str, np.ndarray]) -> Drift:
    """How far ``after``'s outputs are from ``before``'s on ``feeds`` (both run at ORT_ENABLE_ALL)."""
    return output_drift(run_batches(before, [feeds]), run_batches(after, [feeds]))


def ort_op_counts(model: ir.Model) -> collections.Counter:
    """Op types of the graph ONNX Runtime actually runs (after its ORT_ENABLE_ALL rewrites)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
        return collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)

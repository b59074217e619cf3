"""ONNX Runtime sessions for verification: import it lazily, build sessions from onnx-ir models."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_domain
from optimizer.errors import RuntimeMissingError

# Serialized protos must stay under protobuf's 2 GiB limit; above this we hand
# ONNX Runtime a file with external data instead of bytes.
_IN_MEMORY_LIMIT_BYTES = 1 << 30


def import_onnxruntime() -> Any:
    """Return the ``onnxruntime`` module, or raise a one-line error saying how to install it."""
    try:
        import onnxruntime
    except ImportError as error:
        raise RuntimeMissingError(
            "ONNX Runtime is not installed: pip install 'graphopt[cpu]' (or 'graphopt[gpu]' for CUDA)"
        ) from error
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


def weight_bytes(model: ir.Model) -> int:
    """Total size in bytes of the main graph's weights: initializers and ``Constant`` nodes' tensors.

    (Some exporters, Paddle's for one, store every weight in a Constant node.)
    """
    total = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None:
            total += tensor.nbytes
    for node in model.graph:
        if node.op_type == "Constant" and is_onnx_domain(node):
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                total += attr.as_tensor().nbytes
    return total


def has_external_tensors(model: ir.Model) -> bool:
    """Whether any main-graph initializer is still stored as external data."""
    return any(isinstance(value.const_value, ir.ExternalTensor) for value in model.graph.initializers.values())


@contextlib.contextmanager
def inference_session(
    model: ir.Model,
    *,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
    optimization_level: str = "disable_all",
    intra_op_threads: int = 0,
) -> Iterator[Any]:
    """Yield an ``onnxruntime.InferenceSession`` for ``model``.

    Small models go to ONNX Runtime as bytes. Models near protobuf's 2 GiB limit, or
    with tensors still stored as external data, are written to a temporary folder
    with external data and loaded from there.
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization_level]
    options.intra_op_num_threads = intra_op_threads
    if weight_bytes(model) < _IN_MEMORY_LIMIT_BYTES and not has_external_tensors(model):
        payload = ir.to_proto(model).SerializeToString()
        yield ort.InferenceSession(payload, options, providers=list(providers))
        return
    with tempfile.TemporaryDirectory(prefix="graphopt-session-") as folder:
        path = os.path.join(folder, "model.onnx")
        ir.save(model, path, external_data="model.onnx.data")
        yield ort.InferenceSession(path, options, providers=list(providers))


def run_session(session: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Run ``session`` on the inputs it declares and return every output by name."""
    feeds = {}
    for meta in session.get_inputs():
        array = inputs[meta.name]
        # A float16 model (convert-float16 without kept I/O types) takes the same values as float16.
        if meta.type == "tensor(float16)" and getattr(array, "dtype", None) == np.float32:
            array = array.astype(np.float16)
        feeds[meta.name] = array
    output_names = [meta.name for meta in session.get_outputs()]
    return dict(zip(output_names, session.run(output_names, feeds)))


def run_batches(model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Outputs of ``model`` on each batch, in one session with all of ONNX Runtime's graph
    optimizations (as deployed: int8 QDQ graphs run on their integer kernels)."""
    with inference_session(model, optimization_level="all") as session:
        return [run_session(session, batch) for batch in batches]

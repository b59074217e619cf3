"""Reading models into onnx-ir and writing them back, safely.

Loading checks, in order, everything we can tell the user about in one line: the
file exists and parses as ONNX, its external data is present, its opsets and
operator domains are ones we can check, and onnx's checker accepts it. Saving is
atomic: the model (and its external data) are written into a temporary folder
beside the destination and renamed into place, so a failure never leaves a
half-written model, and the input file is never opened for writing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import google.protobuf.message
import numpy as np
import onnx
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, ONNX_DOMAINS
from optimizer.errors import (
    InvalidModelError,
    ModelFileError,
    OutputPathError,
    UnsupportedModelError,
    one_line,
)
from optimizer.runtime import has_external_tensors, weight_bytes

# Domains whose operators we can check: ONNX, ONNX-ML, and ONNX Runtime's contrib
# operators (which our fusions emit and ORT-optimized inputs contain).
KNOWN_DOMAINS = ONNX_DOMAINS | {"ai.onnx.ml", MS_DOMAIN, "ai.onnx.preview.training"}

# Past this many bytes of weights a model is saved with external data, because a
# single protobuf file cannot exceed 2 GiB.
EXTERNAL_DATA_THRESHOLD_BYTES = 1536 << 20


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX file into onnx-ir after validating it.

    External data is memory-mapped from beside the file, so models over 2 GB load
    without copying their weights. Raises a ``GraphoptError`` subclass with a
    one-line message for a missing, empty, non-ONNX or truncated file, missing
    external data, an opset or domain we cannot check, or a checker failure.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the file is empty")
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read the file ({error.strerror or error})") from error
    except (google.protobuf.message.DecodeError, RuntimeError, ValueError) as error:
        raise ModelFileError(
            f"{path}: not a readable ONNX model (the file is truncated, corrupt or not ONNX: {one_line(error)})"
        ) from error
    _check_looks_like_onnx(proto, str(path))
    _check_external_data(proto, path.parent, str(path))
    check_model_proto(proto, str(path), checker_path=path)
    model = ir.serde.deserialize_model(proto)
    ir.external_data.set_base_dir(model.graph, path.parent)
    return model


def check_model_proto(proto: onnx.ModelProto, label: str, checker_path: Path | None = None) -> None:
    """Raise if ``proto`` uses opsets or domains we cannot check, or fails onnx's checker.

    ``checker_path`` lets the checker read a file instead of the in-memory proto,
    which is required for models over 2 GB.
    """
    _check_opsets(proto, label)
    _check_domains(proto, label)
    _check_input_shapes(proto, label)
    if _uses_ort_onnx_domain_ops(proto):
        # onnx's checker rejects these ORT contrib ops; check a copy that files them under com.microsoft.
        proto, checker_path = _with_ort_ops_as_contrib(proto), None
    try:
        if checker_path is not None:
            onnx.checker.check_model(os.fspath(checker_path))
        elif proto.ByteSize() < (1 << 31) - 1:
            onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise InvalidModelError(f"{label}: rejected by onnx's checker: {one_line(error)}") from error


# Contrib operators ONNX Runtime registers in the ONNX domain (graphopt's RMSNorm fusion emits the first).
ORT_ONNX_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization"})


def _uses_ort_onnx_domain_ops(proto: onnx.ModelProto) -> bool:
    return any(node.domain in ONNX_DOMAINS and node.op_type in ORT_ONNX_DOMAIN_OPS for node in _all_nodes(proto))


def _with_ort_ops_as_contrib(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose ORT ONNX-domain contrib ops say com.microsoft.

    Weights stored as external data are not read: in the copy they become graph
    inputs of the same type and shape, which the checker accepts as it would them.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    graph = copy.graph
    declared = {value.name for value in graph.input}
    kept = []
    for tensor in graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            kept.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for node in _all_nodes(copy):
        if node.domain in ONNX_DOMAINS and node.op_type in ORT_ONNX_DOMAIN_OPS:
            node.domain = MS_DOMAIN
    if not any(opset.domain == MS_DOMAIN for opset in copy.opset_import):
        copy.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return copy


def save_model(model: ir.Model, path: str | os.PathLike, *, input_path: str | os.PathLike | None = None) -> Path:
    """Write ``model`` to ``path`` atomically and return the path.

    Weights go to external data (``<name>.data`` beside the output) when the model
    already used external data or is too large for one protobuf file. Refuses to
    write over ``input_path`` or over an external data file the model still reads.
    """
    path = Path(path).absolute()
    if input_path is not None and same_file(path, Path(input_path)):
        raise OutputPathError(f"{path}: the output would overwrite the input model; choose another -o")
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder; give a file name for the output model")
    folder = path.parent
    if not folder.is_dir():
        raise OutputPathError(f"{folder}: output folder does not exist")
    data_name = None
    if _needs_external_data(model):
        data_name = path.name + ".data"
        if _model_reads_file(model, folder / data_name):
            raise OutputPathError(
                f"{folder / data_name}: the model reads its weights from this file; choose another -o"
            )
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder))
    except OSError as error:
        raise OutputPathError(f"{folder}: cannot write here ({error.strerror or error})") from error
    try:
        ir.save(model, staging / path.name, external_data=data_name)
        if data_name is not None:
            os.replace(staging / data_name, folder / data_name)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def model_file_bytes(path: str | os.PathLike) -> int:
    """Size of a model file plus the external data files it references."""
    path = Path(path)
    proto = onnx.load(os.fspath(path), load_external_data=False)
    total = path.stat().st_size
    for location in _external_locations(proto):
        candidate = path.parent / location
        if candidate.exists():
            total += candidate.stat().st_size
    return total


def _check_input_shapes(proto: onnx.ModelProto, label: str) -> None:
    initializers = {tensor.name for tensor in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        if not value.type.tensor_type.HasField("shape"):
            raise InvalidModelError(
                f"{label}: input '{value.name}' has no shape, which ONNX requires on graph inputs; "
                "re-export the model with input shapes (dynamic axes are fine)"
            )


def _check_looks_like_onnx(proto: onnx.ModelProto, label: str) -> None:
    # Protobuf happily parses many random byte strings into a mostly empty message.
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelFileError(f"{label}: not an ONNX model (no IR version or no graph)")
    if not proto.graph.output:
        raise ModelFileError(f"{label}: the graph has no outputs (is the file truncated?)")


def _external_locations(proto: onnx.ModelProto) -> set[str]:
    locations = set()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if onnx.external_data_helper.uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return locations


def _check_external_data(proto: onnx.ModelProto, folder: Path, label: str) -> None:
    """Every external data file is beside the model and long enough for every tensor stored in it."""
    for location in sorted(_external_locations(proto)):
        if not (folder / location).is_file():
            raise ModelFileError(f"{label}: external data file '{location}' is missing beside the model")
    sizes = {location: (folder / location).stat().st_size for location in _external_locations(proto)}
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        length = entries.get("length")
        if length is None:  # not recorded: the tensor's own size
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            length = int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
        end = int(entries.get("offset", 0)) + int(length)
        if end > sizes[entries["location"]]:
            raise ModelFileError(
                f"{label}: external data file '{entries['location']}' is truncated "
                f"({sizes[entries['location']]} bytes; tensor '{tensor.name}' ends at byte {end})"
            )


def _check_opsets(proto: onnx.ModelProto, label: str) -> None:
    newest = {
        "": onnx.defs.onnx_opset_version(),
        "ai.onnx": onnx.defs.onnx_opset_version(),
        "ai.onnx.ml": onnx.defs.onnx_ml_opset_version() if hasattr(onnx.defs, "onnx_ml_opset_version") else None,
    }
    for opset in proto.opset_import:
        limit = newest.get(opset.domain)
        if limit is not None and opset.version > limit:
            name = opset.domain or "ai.onnx"
            raise UnsupportedModelError(
                f"{label}: opset {name} {opset.version} is newer than this onnx "
                f"({onnx.__version__}) knows (up to {limit}); upgrade onnx"
            )


def _check_domains(proto: onnx.ModelProto, label: str) -> None:
    local_domains = {function.domain for function in proto.functions}
    for node in _all_nodes(proto):
        if node.domain not in KNOWN_DOMAINS and node.domain not in local_domains:
            raise UnsupportedModelError(
                f"{label}: node '{node.name or node.op_type}' uses operator domain "
                f"'{node.domain}', which graphopt cannot check (known: ai.onnx, "
                f"ai.onnx.ml, com.microsoft, and the model's own functions)"
            )


def _all_nodes(proto: onnx.ModelProto):
    def walk(graph: onnx.GraphProto):
        for node in graph.node:
            yield node
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attribute.g)
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    for subgraph in attribute.graphs:
                        yield from walk(subgraph)

    yield from walk(proto.graph)
    for function in proto.functions:
        yield from function.node


def _needs_external_data(model: ir.Model) -> bool:
    return weight_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES or has_external_tensors(model)


def _model_reads_file(model: ir.Model, data_path: Path) -> bool:
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and same_file(Path(tensor.path), data_path):
            return True
    return False


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (through symlinks, hardlinks or ``..``)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.absolute() == b.absolute()

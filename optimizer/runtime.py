"""The one gateway into ONNX Runtime: sessions, batched runs, intermediate values and subgraph probes.

Everything graphopt runs on ONNX Runtime goes through here (verification,
calibration, pruning's statistics, fusions that evaluate a subgraph, timing), so that
"ONNX Runtime refused" has one type, ``RuntimeRefusedError``, raised from ORT's own
exceptions and nothing else: a ``KeyError`` or ``AttributeError`` in graphopt stays a
bug with a traceback. onnx-ir's ``passes/common/_c_api_utils.py::call_onnx_api`` is
the model.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import google.protobuf.message
import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import common as common_passes

from optimizer.accuracy import Drift, logits_key, output_drift, picks_key, ranks_key
from optimizer.domains import is_onnx_domain
from optimizer.errors import RuntimeRefusedError, UnsupportedModelError
from optimizer.sessions import (  # noqa: F401 (re-exported: the spine's callers import them from here)
    CUDA_PROVIDER,
    OPTIMIZATION_LEVELS,
    SESSION_THREADS_ENV,
    TIMING_CONFIG,
    _probe_cuda,
    _quota_threads,
    _refusals,
    calling_onnxruntime,
    cuda_unavailable_reason,
    import_onnxruntime,
    max_threads,
    open_session,
    preload_cuda_libraries,
    session_options,
    session_threads,
    share_cpu_arena,
)

if TYPE_CHECKING:
    from optimizer.class_scores import Pick

# Serialized protos must stay under protobuf's 2 GiB limit; above this we hand
# ONNX Runtime a file with external data instead of bytes.
_IN_MEMORY_LIMIT_BYTES = 1 << 30
# Above this many bytes of weights a session is opened from a file with external data, not from
# serialized bytes, even under the limit: copying the tensors into a proto, serializing it and
# parsing it back cost MiniLM's 90 MB 0.6-1.1 s a session against 0.29 s through a file (about
# 35 sessions a quantization); small models open faster from bytes.
_SESSION_FILE_ABOVE_BYTES = 16 << 20


def weight_bytes(model: ir.Model) -> int:
    """Total size in bytes of the main graph's weights: initializers and ``Constant`` nodes' tensors.

    (Some exporters, Paddle's for one, store every weight in a Constant node.)
    """
    initializers = [value.const_value for value in model.graph.initializers.values() if value.const_value is not None]
    return sum(map(tensor_bytes, [*initializers, *_constant_tensors(model.graph)]))


def stored_weight_bytes(model: ir.Model) -> int:
    """``weight_bytes`` of every graph of ``model``: the main graph's, its subgraphs' (If branches, Loop and Scan
    bodies) and its functions'. What decides whether the model's tensors fit in one protobuf (2 GiB): a model
    whose weights are all in If branches is past it as surely as one with them in the main graph."""
    graphs = list(model_graphs(model))
    initializers = [
        value.const_value
        for graph in graphs
        if isinstance(graph, ir.Graph)
        for value in graph.initializers.values()
        if value.const_value is not None
    ]
    return sum(map(tensor_bytes, [*initializers, *_constant_tensors(node for graph in graphs for node in graph)]))


def model_graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, every subgraph, and the model's functions (with their subgraphs)."""
    yield from graphs_within(model.graph)
    for function in model.functions.values():
        yield from graphs_within(function)


def graphs_within(graph: ir.Graph | ir.Function) -> Iterator[ir.Graph | ir.Function]:
    """``graph`` (a graph or a function) and every subgraph of its nodes, however deep; a function's reference to
    its caller's graph attribute (``body = @body``) holds no graph and is skipped, where onnx-ir's recursive
    iterator raises."""
    yield graph
    for node in graph:
        for attribute in node.attributes.values():
            if attribute.is_ref():
                continue
            if attribute.type == ir.AttributeType.GRAPH:
                yield from graphs_within(attribute.value)
            elif attribute.type == ir.AttributeType.GRAPHS:
                for subgraph in attribute.value:
                    yield from graphs_within(subgraph)


def _constant_tensors(nodes: Iterable[ir.Node]) -> Iterator[ir.TensorProtocol]:
    """The tensors ``Constant`` nodes among ``nodes`` hold (not one a function's caller gives: ``value = @w``)."""
    for node in nodes:
        if node.op_type == "Constant" and is_onnx_domain(node):
            attr = node.attributes.get("value")
            if attr is not None and not attr.is_ref() and attr.type == ir.AttributeType.TENSOR:
                # .value, not .as_tensor(): its isinstance against a Protocol costs about 30 us on Python 3.11, and
                # this runs for every Constant each time a session is opened.
                yield attr.value


def tensor_bytes(tensor: ir.TensorProtocol) -> int:
    """The bytes ``tensor`` holds; for strings (a folded label table is an ``ir.Tensor`` over a numpy
    array of objects, whose ``nbytes`` raises), the bytes of its UTF-8 strings."""
    if tensor.dtype != ir.DataType.STRING:
        return tensor.nbytes
    return sum(len(item) for item in _string_items(tensor))


def _string_items(tensor: ir.TensorProtocol) -> list[bytes]:
    if isinstance(tensor, ir.StringTensor):
        return list(tensor.string_data())
    return [item if isinstance(item, bytes) else str(item).encode() for item in np.asarray(tensor.numpy()).flat]


# onnx-ir's ``save`` keeps tensors of up to this many bytes in the model file (its ``size_threshold_bytes``).
_INLINE_TENSOR_BYTES = 256


def _small_external_initializers(model: ir.Model) -> Iterator[ir.Value]:
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor) and tensor.nbytes <= _INLINE_TENSOR_BYTES:
                yield value


def _has_small_external_tensors(model: ir.Model) -> bool:
    return any(True for _ in _small_external_initializers(model))


def _small_external_tensors_read(model: ir.Model) -> None:
    """Give each initializer of ``model`` that ``ir.save`` would read back into the model file (external, of up to
    ``_INLINE_TENSOR_BYTES``) a copy in memory; in place. ``ir.save`` reads such a tensor itself and closes its memory
    map, which raises ``BufferError`` while an array of it is held (a Reshape's target a pass read), and leaves the
    tensor of the model it was given closed: a model saved with ``onnx.save(..., size_threshold=0)`` (every tensor in
    its data file) failed static quantization's calibration so (a review in session 74)."""
    for value in list(_small_external_initializers(model)):
        tensor = value.const_value
        value.const_value = ir.Tensor(tensor.numpy().copy(), dtype=tensor.dtype, name=tensor.name)


def save_model_file(model: ir.Model, path: str | os.PathLike, external_data: str | None = None) -> None:
    """``ir.save`` that keeps string tensors inline (``strings_serializable``); with ``external_data``, weights in
    ``Constant`` nodes go there too, lifted to initializers in a copy (``ir.save`` moves only initializers: a
    model with 2 GB of weights in Constants, as Paddle exports store them, could not be written). A Constant
    that is its graph's output (an ``If`` branch that returns a weight table), which onnx-ir's lifting skips,
    becomes an ``Identity`` of its lifted initializer. ``UnsupportedModelError`` where the file would still be
    past protobuf's 2 GB (weights in a model-local function's Constants, which no initializer can hold)."""
    if external_data is not None and _has_small_external_tensors(model):
        model = model.clone()  # shares the tensors; the caller's keep their memory maps
        _small_external_tensors_read(model)
    if external_data is not None and _has_constant_weights(model):
        model = model.clone()  # shares the tensors
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=_LIFTED_ELEMENTS)(model)
        _lift_output_constants(model)
    with strings_serializable(model, external=external_data is not None):
        try:
            ir.save(model, path, external_data=external_data)
        except google.protobuf.message.EncodeError as error:  # past protobuf's 2 GB
            raise UnsupportedModelError(
                "the model cannot be written: even with its weights in external data the model file would be "
                "past protobuf's 2 GB (tensors graphopt cannot move out of it, such as the Constants of a "
                "model-local function)"
            ) from error


# ir.save moves a tensor of more than 256 bytes to external data; lifting from 64 float32 values on (256 bytes, kept
# in the model file) lifts every constant it could move.
_LIFTED_ELEMENTS = 64


def _lift_output_constants(model: ir.Model) -> None:
    """Make each weight-sized ``Constant`` left after lifting (one that is its graph's output) an ``Identity`` of
    an initializer holding its tensor, under a name no value of the model has; in place."""
    taken = {
        value.name
        for graph in model.graphs()
        for value in (*graph.inputs, *graph.initializers.values(), *(out for node in graph for out in node.outputs))
    }
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type != "Constant" or not is_onnx_domain(node) or list(node.attributes) != ["value"]:
            continue
        attr = node.attributes["value"]
        if attr.type != ir.AttributeType.TENSOR or attr.as_tensor().size < _LIFTED_ELEMENTS:
            continue
        tensor = attr.as_tensor()
        name, count = f"{node.outputs[0].name}__weights", 1
        while name in taken:
            count += 1
            name = f"{node.outputs[0].name}__weights{count}"
        taken.add(name)
        weights = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
        node.graph.register_initializer(weights)
        node.op_type = "Identity"
        node.attributes.clear()
        node.resize_inputs(1)
        node.replace_input_with(0, weights)


def _has_constant_weights(model: ir.Model) -> bool:
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and is_onnx_domain(node):
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR and attr.as_tensor().size >= _LIFTED_ELEMENTS:
                return True
    return False


@contextlib.contextmanager
def strings_serializable(model: ir.Model, *, external: bool = False) -> Iterator[None]:
    """While open, every string initializer of ``model`` is an ``ir.StringTensor`` onnx-ir can serialize (a
    folded label table is an ``ir.Tensor`` over numpy objects, which it cannot); with ``external``, one that
    ``ir.save`` keeps in the model file: ONNX has no external strings, and onnx-ir 1.1 moves every tensor of
    more than 256 bytes out, then fails on its ``tobytes``."""
    swapped = []
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None or tensor.dtype != ir.DataType.STRING or isinstance(tensor, ir.ExternalTensor):
                continue
            if not external and isinstance(tensor, (ir.StringTensor, ir.serde.TensorProtoTensor)):
                continue
            items = np.array(_string_items(tensor), dtype=object).reshape(tuple(tensor.shape.numpy()))
            swapped.append((value, tensor))
            value.const_value = (_InlineStrings if external else ir.StringTensor)(items, name=tensor.name)
    try:
        yield
    finally:
        for value, tensor in swapped:
            value.const_value = tensor


class _InlineStrings(ir.StringTensor):
    """A string tensor that ``ir.save`` keeps in the model file: it counts as no bytes."""

    @property
    def nbytes(self) -> int:
        return 0


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

    A CPU session draws its memory from the arena graphopt's CPU sessions share (``share_cpu_arena``).
    Small models go to ONNX Runtime as bytes. Models past ``_SESSION_FILE_ABOVE_BYTES`` of
    weights (faster so), or with tensors still stored as external data, are written to a
    temporary folder with external data and loaded from there.
    """
    options = session_options(optimization_level, intra_op_threads)
    if tuple(providers) == ("CPUExecutionProvider",):
        share_cpu_arena(options)  # verification's sessions overlap: one arena, not one each
    if stored_weight_bytes(model) < _SESSION_FILE_ABOVE_BYTES and not has_external_tensors(model):
        with strings_serializable(model):
            proto = ir.to_proto(model)
        yield open_session(proto.SerializeToString(), options, providers)
        return
    with temporary_folder("graphopt-session-") as folder:
        path = os.path.join(folder, "model.onnx")
        save_model_file(model, path, external_data="model.onnx.data")
        yield open_session(path, options, providers)


# A child process that loads a model on ONNX Runtime's CPU, so that a crash inside ONNX Runtime kills it, not us.
_LOAD_IN_CHILD = """
import sys
import onnxruntime as ort
options = ort.SessionOptions()
options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, sys.argv[2])
options.intra_op_num_threads = 1
options.log_severity_level = 4
try:
    ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
except Exception:
    pass  # a refusal: the caller's own session reports it
"""


def holds_float16(model: ir.Model) -> bool:
    """Whether any graph of ``model`` holds or computes float16: a float16 initializer, input, output or node output,
    a ``Constant`` of a float16 tensor, or a ``Cast`` to float16.

    Not only the initializers and the interface: the two-layer ViT that ONNX Runtime 1.32 crashes on loading
    (``loading_crash``) crashed it as well with its float16 weights in ``Constant`` nodes, or stored float32 and
    cast to float16 (a mixed-precision export), and such a model, not tried in a child, ended ``graphopt compare``
    and ``optimize`` with exit -11 and no report."""
    for graph in model_graphs(model):
        values = [*graph.inputs, *graph.outputs, *getattr(graph, "initializers", {}).values()]
        values += [output for node in graph for output in node.outputs]
        if any(value.dtype == ir.DataType.FLOAT16 for value in values if value is not None):
            return True
        for node in graph:
            for attribute in node.attributes.values():
                if attribute.is_ref():
                    continue
                if attribute.type == ir.AttributeType.TENSOR and attribute.value.dtype == ir.DataType.FLOAT16:
                    return True
                if node.op_type == "Cast" and attribute.name == "to" and attribute.value == ir.DataType.FLOAT16:
                    return True
    return False


def loading_crash(
    model: ir.Model, optimization_level: str = "all", *, path: str | os.PathLike | None = None
) -> str | None:
    """How a child process failed loading ``model`` on ONNX Runtime's CPU at ``optimization_level``: "crashed
    (signal SIGSEGV)", or "hung (no load within 150 s)" past ``load_seconds(model)`` (then killed); None where it
    loaded or refused (a refusal is left to the caller's own session).

    ONNX Runtime 1.32's CPU graph optimizations crash the process (a segmentation fault, no exception) loading
    some float16 models at ``ORT_ENABLE_ALL``: a two-layer torchvision ViT converted by onnxruntime's own float16
    converter. In graphopt's process that ended ``--fp16`` with no report, no output and no error message. A load
    that hangs would hang graphopt as well; the child is given a time that a load of this size does not need.

    With ``path``, the file ``model`` was loaded from, the child loads that file as it is (what ``graphopt compare``
    times): no copy of the model, its weights included, is written first."""
    level = {
        "disable_all": "ORT_DISABLE_ALL",
        "basic": "ORT_ENABLE_BASIC",
        "extended": "ORT_ENABLE_EXTENDED",
        "all": "ORT_ENABLE_ALL",
    }[optimization_level]
    with temporary_folder("graphopt-load-probe-") as folder:
        if path is None:
            path = os.path.join(folder, "model.onnx")
            save_model_file(model, path, external_data="model.onnx.data")
        seconds = load_seconds(model)
        try:
            child = subprocess.run(
                [sys.executable, "-c", _LOAD_IN_CHILD, os.fspath(path), level],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
                check=False,
                timeout=seconds,
            )
        except subprocess.TimeoutExpired:  # subprocess.run has killed and reaped the child
            return f"hung (no load within {seconds:.0f} s)"
    # Only a fault is ONNX Runtime's crash: a child killed for memory (SIGKILL) or by the user's Ctrl-C is not.
    if -child.returncode not in _FAULT_SIGNALS:
        return None
    return f"crashed (signal {signal.Signals(-child.returncode).name})"


def load_seconds(model: ir.Model) -> float:
    """How long ``loading_crash`` waits for a child to load ``model``: 120 s, and 60 s more per GB of weights (a
    load at ``ORT_ENABLE_ALL`` of a 500 MB float16 decoder takes seconds on two cores; a child that needs many
    times that is taken to hang)."""
    return 120.0 + 60.0 * stored_weight_bytes(model) / 1e9


_FAULT_SIGNALS = frozenset(
    int(getattr(signal, name)) for name in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT") if hasattr(signal, name)
)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back while open, delivered on exit.

    Held at their Python handlers, not with ``pthread_sigmask``: a signal sent to the process (Ctrl-C, ``kill``)
    goes to a thread that does not block it (OpenBLAS's, ONNX Runtime's, the progress heartbeat's) and CPython
    runs the handler in the main thread all the same, at once. Handlers run in the main thread only: in another
    nothing is held, and nothing needs to be.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous: dict[int, Callable[[int, Any], Any]] = {}
    holding = True

    def hold(signum: int, frame: Any) -> None:
        if holding:
            held.append(signum)
        else:  # arrived while the handlers are put back: the one it would have reached takes it
            previous[signum](signum, frame)

    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if callable(handler):  # SIG_DFL and SIG_IGN act in the kernel, before any hold
                previous[signum] = handler
                signal.signal(signum, hold)
        yield
    finally:
        holding = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


# Names tried before giving up, as tempfile.mkdtemp does (its TMP_MAX).
_FOLDER_ATTEMPTS = 10000


@contextlib.contextmanager
def temporary_folder(prefix: str) -> Iterator[str]:
    """A new private folder under the temporary directory, removed on exit, however the block ends.

    Not ``tempfile.TemporaryDirectory``: a signal (Ctrl-C) between its ``mkdtemp`` and the registration of its
    cleanup left the folder behind (seen under load). Here the folder is made inside the ``try`` that removes it.
    """
    made = None
    try:
        for attempt in range(_FOLDER_ATTEMPTS):
            folder = os.path.join(tempfile.gettempdir(), f"{prefix}{secrets.token_hex(6)}")
            try:
                with signals_held():  # a Ctrl-C between the mkdir and `made` would leave the folder
                    os.mkdir(folder, 0o700)
                    made = folder
            except FileExistsError:  # another's: never removed here
                if attempt == _FOLDER_ATTEMPTS - 1:
                    raise
                continue
            break
        yield made
    finally:
        if made is not None:
            remove_folder(made)


def remove_folder(path: str | os.PathLike) -> None:
    """Remove the folder ``path`` and what it holds, errors ignored, even where a signal cuts the removal short: a
    signal that lands in it (the run's first, when the block around it ended well: the CLI ignores any after it)
    stops ``rmtree`` halfway, and the second removal finishes it."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_session(session: Any, inputs: Mapping[str, np.ndarray], names: Collection[str] | None = None) -> dict[str, Any]:
    """Run ``session`` on the inputs it declares and return every output by name (with ``names``, only those of
    them, in the session's order: ONNX Runtime copies out no other)."""
    feeds = {}
    for meta in session.get_inputs():
        if meta.name not in inputs:  # as ONNX Runtime itself refuses a feed without it (a rewrite added an input)
            raise RuntimeRefusedError("run the model", f"it needs the input '{meta.name}', which the feed lacks")
        array = inputs[meta.name]
        # A float16 model (convert-float16 without kept I/O types) takes the same values as float16.
        if meta.type == "tensor(float16)" and getattr(array, "dtype", None) == np.float32:
            array = array.astype(np.float16)
        feeds[meta.name] = array
    output_names = [meta.name for meta in session.get_outputs() if names is None or meta.name in names]
    with calling_onnxruntime("run the model"):
        results = session.run(output_names, feeds)
    return dict(zip(output_names, results))


def available_memory() -> int | None:
    """Bytes of memory the system can still give this process (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_model(model: ir.Model, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Outputs of ``model`` on one input set, exactly as written (graph optimizations off)."""
    with inference_session(model) as session:
        return run_session(session, inputs)


def run_sets(model: ir.Model, input_sets: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, Any]]:
    """``run_model`` on each of ``input_sets``, in one session (a session a set serializes and loads it each time)."""
    with inference_session(model) as session:
        return [run_session(session, inputs) for inputs in input_sets]


def drift_of(
    model: ir.Model,
    batches: Sequence[Mapping[str, np.ndarray]],
    reference: Sequence[Mapping],
    *,
    layout: ir.Model | None = None,
) -> Drift:
    """``model``'s drift from ``reference`` (the outputs another model gave on ``batches``), run with
    ``run_batches``; positions the batches' padding masks hide are left out (``optimizer.padding.unpadded``), as the
    graph of ``layout`` says (default: ``model``'s). Give the model ``reference`` holds to where a rewrite hides them:
    a decoder fused into GroupQueryAttention no longer shows which of its logits are padding. A reference of a model
    whose draws were fed (``optimizer.draws.FedBudgetRuns``) runs ``model`` fed the same draws."""
    layout = model if layout is None else layout
    if (fed := getattr(reference, "candidate_runs", None)) is not None:
        reference, runs = fed(model, batches)
        return output_drift(reference, runs, batches, layout)
    return output_drift(reference, budget_runs(model, batches), batches, layout)


def logits_exposed(model: ir.Model) -> tuple[ir.Model, dict[str, Pick]]:
    """``model`` with the values each ``argmax_picks`` output picks among (and the ids it picks, where the output
    comes out of them otherwise) added to its outputs (``exposing``; the model itself where it has none), and those
    picks: run it and give ``with_logits`` its outputs."""
    # Imported here: a pass used alone in another PassManager loads no more of graphopt than it needs.
    from optimizer.class_scores import argmax_picks

    picks = argmax_picks(model)
    exposed = [name for pick in picks.values() for name in (pick.logits, pick.ids) if name is not None]
    return (exposing(model, exposed) if picks else model), picks


def with_logits(outputs: Mapping[str, Any], picks: Mapping[str, Pick], names: Sequence[str]) -> dict[str, Any]:
    """One run's ``names`` outputs (the model's own) of a ``logits_exposed`` model, each ``picks`` output's logits
    beside it under ``logits_key`` (an ``ArgMin``'s values negated), laid out as the ids with the classes along a last
    axis (a ``TopK`` of k > 1's repeated for each of its k indices, whose ranks lie under ``ranks_key``), and where the
    output comes out of the ids its node picks otherwise (``Pick.ids``), those under ``picks_key``, laid out as the
    output."""
    run = {name: outputs[name] for name in names}
    for name, pick in picks.items():
        values, shape = np.asarray(outputs[pick.logits]), np.shape(outputs[name])
        picked = None if pick.ids is None else np.asarray(outputs[pick.ids])
        if not values.ndim or not -values.ndim <= pick.axis < values.ndim:
            continue
        axis = pick.axis % values.ndim
        values = np.moveaxis(values, axis, -1)  # keepdims or not, the positions are the ids' in their order
        ranks = None
        if pick.ranked:
            if picked is None or picked.ndim != values.ndim:
                continue
            k = picked.shape[axis]
            values = np.repeat(np.expand_dims(values, axis), k, axis=axis)  # each of the k indices reads its row
            ranks = np.broadcast_to(
                np.arange(k).reshape([-1 if d == axis else 1 for d in range(picked.ndim)]), picked.shape
            )
        if math.prod(values.shape[:-1]) != math.prod(shape):
            continue
        run[logits_key(name)] = (-values if pick.smallest else values).reshape(*shape, values.shape[-1])
        if picked is not None and picked.size == math.prod(shape):
            run[picks_key(name)] = picked.reshape(shape)
        if ranks is not None:
            run[ranks_key(name)] = ranks.reshape(shape)
    return run


def budget_runs(model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, Any]]:
    """``run_batches`` as the accuracy budget reads a model: each output an ``ArgMax`` computes (``argmax_picks``)
    with the values it picks among beside it (``with_logits``), which its ids are scored on (``paired_drift``). A
    model with none runs as it is; one with some runs with those values exposed as outputs, which may change the
    kernels ONNX Runtime picks for them."""
    probe, picks = logits_exposed(model)
    if not picks:
        return run_batches(model, batches)
    names = [value.name for value in model.graph.outputs]
    return [with_logits(outputs, picks, names) for outputs in run_batches(probe, batches)]


def run_batches(model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Outputs of ``model`` on each batch, in one session with all of ONNX Runtime's graph
    optimizations (as deployed: int8 QDQ graphs run on their integer kernels); with none for a model holding
    float16 that ONNX Runtime crashes loading so (``loading_crash``, tried in a child process: a float16 ViT ended
    ``optimize --prune-ffn``, whose samples run here before any verification, with exit -11 and no report)."""
    crashes = holds_float16(model) and loading_crash(model, "all")
    with inference_session(model, optimization_level="disable_all" if crashes else "all") as session:
        return [run_session(session, batch) for batch in batches]


_BRANCHES = ("then_branch", "else_branch")
# Ops whose output is of their first input's dtype, and those whose float inputs all are of one dtype (``_dtype_of``).
_KEEPS_FIRST_DTYPE = (
    "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Slice", "Gather", "Expand", "Tile", "Pad",
    "Relu", "LeakyRelu", "Elu", "Neg", "Exp", "Abs", "Sqrt", "Erf", "Tanh", "Sigmoid", "HardSigmoid", "Clip",
    "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "BatchNormalization",
    "LayerNormalization", "Pow",
)  # fmt: skip
_ONE_DTYPE = ("Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "Conv", "ConvTranspose", "Max", "Min", "Sum", "Concat")
_DTYPE_WALK = 16  # how many producers ``_dtype_of`` looks through


def branch_values(graph: ir.Graph) -> dict[str, tuple[ir.Node, str, ir.Value, ir.DataType]]:
    """The tensors computed in a branch of an ``If`` of ``graph`` (one level down: not in an ``If`` inside a branch, nor
    in a ``Loop``'s or ``Scan``'s body), by name, each with its ``If``, the branch's attribute name and its dtype; only
    those whose dtype is known (``_dtype_of``: an empty tensor of it fills the other branch's slot where ``exposing``
    carries one out). A name both branches of one ``If`` compute is listed once, with the then branch's tensor:
    ``exposing`` carries out each branch's (``in_branch_of`` tells whether a tensor is one of them)."""
    found: dict[str, tuple[ir.Node, str, ir.Value, ir.DataType]] = {}
    for node in graph:
        if node.op_type != "If" or not is_onnx_domain(node) or not all(name in node.attributes for name in _BRANCHES):
            continue
        for name in _BRANCHES:
            for inner in node.attributes[name].as_graph():
                for value in inner.outputs:
                    if value.name and value.name not in found and (dtype := _dtype_of(value)) is not None:
                        found[value.name] = (node, name, value, dtype)
    return found


def in_branch_of(value: ir.Value, found: dict[str, tuple[ir.Node, str, ir.Value, ir.DataType]]) -> bool:
    """Whether ``value`` is a tensor that ``found`` (``branch_values``) lists by its name: one computed in a branch of
    that name's ``If``."""
    entry = found.get(value.name) if value.name else None
    producer = value.producer()
    if entry is None or producer is None:
        return False
    return any(producer.graph is entry[0].attributes[name].as_graph() for name in _BRANCHES)


def _dtype_of(value: ir.Value) -> ir.DataType | None:
    """``value``'s dtype: as recorded, else (a branch's tensors often carry none) that of the first recorded one met
    walking back through ops whose output is of their inputs' dtype (``_KEEPS_FIRST_DTYPE``, ``_ONE_DTYPE``); None
    where none is met."""
    for _ in range(_DTYPE_WALK):
        if (dtype := _recorded_dtype(value)) is not None:
            return dtype
        node = value.producer()
        if node is None or not is_onnx_domain(node) or not node.inputs:
            return None
        if node.op_type in _KEEPS_FIRST_DTYPE:
            sources = [node.inputs[0]]
        elif node.op_type in _ONE_DTYPE:
            sources = list(node.inputs)
        else:
            return None
        sources = [source for source in sources if source is not None]
        typed = [dtype for source in sources if (dtype := _recorded_dtype(source)) is not None]
        if typed or not sources:
            return typed[0] if typed else None
        value = sources[0]
    return None


def _recorded_dtype(value: ir.Value) -> ir.DataType | None:
    """``value``'s dtype as recorded, or as its ``Constant``'s tensor says."""
    if value.dtype is not None:
        return value.dtype
    node = value.producer()
    if node is not None and node.op_type == "Constant" and is_onnx_domain(node) and "value" in node.attributes:
        return node.attributes["value"].as_tensor().dtype
    return None


def exposing(model: ir.Model, names: Sequence[str]) -> ir.Model:
    """A copy of ``model`` with the named tensors added to its outputs: tensors of its graph, or computed in a branch
    of one of its graph's ``If`` nodes (``branch_values``: not deeper), carried out as one more output of that ``If``
    under the tensor's name, which the branch that computes it outputs and the other fills with an empty tensor of its
    dtype (shape [0]): on an input where the ``If`` takes the other branch, that output is empty. ``KeyError`` if it has
    no tensor of one of those names."""
    probe = model.clone()
    values = {value.name: value for node in probe.graph for value in node.outputs}
    values.update({value.name: value for value in probe.graph.inputs})
    existing = {value.name for value in probe.graph.outputs}
    missing = [name for name in names if name not in values]
    branched = branch_values(probe.graph) if missing else {}  # walked only for a name the graph lacks
    missing = [name for name in missing if name not in branched]
    if missing:
        raise KeyError(f"no tensor named {missing[0]!r} in the model")
    for name in dict.fromkeys(names):
        if name not in values:
            values[name] = _carried_out(*branched[name])
        if name not in existing:
            # Exposed as an output, an intermediate's recorded shape would be enforced, and after a
            # rewrite it may be stale: its dtype is enough.
            if values[name].producer() is not None:
                values[name].shape = None
            probe.graph.outputs.append(values[name])
    return probe


def _carried_out(node: ir.Node, branch: str, value: ir.Value, dtype: ir.DataType) -> ir.Value:
    """``value`` (computed in ``node``'s ``branch``, of ``dtype``) as one more output of ``node`` (an ``If``) under its
    name, the other branch's slot its own tensor of that name and dtype where it computes one, else an empty tensor of
    ``dtype``; the branches' own values renamed (one name, one definition). A tensor of the same name in the other
    branch was left out, and a head reading it with it, until a review in session 70."""
    name = value.name
    count = len(node.outputs)
    node.resize_outputs(count + 1)
    carried = node.outputs[count]
    carried.name, carried.dtype = name, dtype
    for other in _BRANCHES:
        graph = node.attributes[other].as_graph()
        # The other branch may compute a tensor of the same name (sibling branches may reuse names): its slot holds it.
        own = value if other == branch else next((v for n in graph for v in n.outputs if v.name == name), None)
        if own is not None and (own is value or _dtype_of(own) == dtype):
            own.name = f"{name}::graphopt_branch"
            step = ir.node("Identity", [own])
        else:
            empty = np.zeros(0, dtype.numpy())
            step = ir.node("Constant", [], attributes={"value": ir.tensor(empty, name=f"{name}::graphopt_none")})
        step.outputs[0].name = f"{name}::graphopt_{other}"
        step.outputs[0].dtype = dtype
        graph.append(step)
        graph.outputs.append(step.outputs[0])
    return carried


@contextlib.contextmanager
def value_collector(model: ir.Model, names: Sequence[str]) -> Iterator[Callable[[Mapping[str, np.ndarray]], dict]]:
    """A function that runs ``model`` on one batch and returns the named intermediate tensors.

    The tensors are exposed as extra outputs of a copy of ``model``; the session stays
    open for as many batches as the caller runs.
    """
    with inference_session(exposing(model, names)) as session:

        def run(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            outputs = run_session(session, batch)
            return {name: outputs[name] for name in names}

        yield run


def stream_values(
    model: ir.Model, names: Sequence[str], batches: Sequence[Mapping[str, np.ndarray]]
) -> Iterator[dict[str, np.ndarray]]:
    """The named tensors of ``model`` on each batch, one batch at a time (one batch's tensors in memory)."""
    with value_collector(model, names) as run:
        for batch in batches:
            yield run(batch)


def collect_values(
    model: ir.Model, names: Sequence[str], batches: Sequence[Mapping[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """The named tensors of ``model`` on each batch, one dict per batch."""
    with value_collector(model, names) as run:
        return [run(batch) for batch in batches]


class SubgraphError(ValueError):
    """The values depend on a node that carries a subgraph (If, Loop, Scan): they are not probed."""


def ancestry(values: Sequence[ir.Value], *, through_subgraphs: bool = False) -> tuple[list[ir.Node], list[ir.Value]]:
    """Nodes computing ``values`` and the producer-less values (graph inputs, initializers) they read.

    Raises ``SubgraphError`` if an ancestor carries a subgraph, unless ``through_subgraphs`` (a caller that
    only asks what the values are computed from, not to run them: a subgraph's outer reads are not followed).
    """
    nodes: dict[int, ir.Node] = {}
    leaves: dict[int, ir.Value] = {}
    stack = list(values)
    while stack:
        value = stack.pop()
        node = value.producer()
        if node is None:
            leaves[id(value)] = value
            continue
        if id(node) in nodes:
            continue
        if not through_subgraphs and any(
            attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()
        ):
            raise SubgraphError(f"{node.op_type} {node.name!r} carries a subgraph")
        nodes[id(node)] = node
        stack.extend(v for v in node.inputs if v is not None)
    return list(nodes.values()), list(leaves.values())


def in_topological_order(nodes: Sequence[ir.Node]) -> list[ir.Node]:
    """``nodes`` ordered so each comes after the ones among them it reads (a depth-first walk
    over ``nodes`` only: ordering by position in the whole graph made each probe cost the graph's size)."""
    members = {id(node) for node in nodes}
    seen: set[int] = set()
    ordered: list[ir.Node] = []
    for start in nodes:
        stack = [(start, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                ordered.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for value in node.inputs:
                producer = value.producer() if value is not None else None
                if producer is not None and id(producer) in members and id(producer) not in seen:
                    stack.append((producer, False))
    return ordered


def evaluate(model: ir.Model, values: Sequence[ir.Value], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Compute ``values`` of ``model`` on ONNX Runtime (CPU) from the graph inputs in ``feeds``.

    Only the ancestors of ``values`` are serialized (with the initializers they read),
    so probing stays cheap on models with gigabytes of weights. Raises
    ``SubgraphError`` for values computed through If/Loop/Scan and
    ``RuntimeRefusedError`` when ONNX Runtime cannot run the subgraph.
    """
    return evaluator(model, values)(feeds)


def evaluator(model: ir.Model, values: Sequence[ir.Value]) -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
    """``evaluate`` for many feeds: the subgraph is serialized and loaded once, then run per call.

    Raises like ``evaluate``: ``SubgraphError`` here, ``RuntimeRefusedError`` here (ONNX
    Runtime cannot load the subgraph) or from a call (it cannot run it on those feeds).
    """
    nodes, leaves = ancestry(values)
    nodes = in_topological_order(nodes)
    initializers, inputs = [], []
    for leaf in leaves:
        if leaf.const_value is not None:
            tensor = leaf.const_value
            if isinstance(tensor, ir.ExternalTensor):  # the proto goes to ONNX Runtime as bytes, without a folder
                tensor = ir.tensor(tensor.numpy(), name=leaf.name)
            initializers.append(ir.serde.serialize_tensor(tensor))
            initializers[-1].name = leaf.name
        else:
            inputs.append(ir.serde.serialize_value(leaf))
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(node) for node in nodes],
        "probe",
        inputs,
        [onnx.helper.make_empty_tensor_value_info(value.name) for value in values],
        initializers,
    )
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    if sum(t.ByteSize() for t in initializers) < _IN_MEMORY_LIMIT_BYTES:
        session = open_session(proto.SerializeToString(), session_options(), ["CPUExecutionProvider"])
    else:  # past protobuf's 2 GiB: through a folder, the weights as external data
        with temporary_folder("graphopt-probe-") as folder:
            path = os.path.join(folder, "probe.onnx")
            onnx.save_model(proto, path, save_as_external_data=True, location="probe.onnx.data")
            session = open_session(path, session_options(), ["CPUExecutionProvider"])
    needed = {meta.name for meta in session.get_inputs()}
    names = [value.name for value in values]

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with calling_onnxruntime("evaluate the subgraph"):
            return session.run(names, {k: v for k, v in feeds.items() if k in needed})

    return run


# The most nodes, and the most elements they read, of a subgraph of constants ``constant_value`` evaluates: a threshold
# a few ops compute from constants and no fold wrote out (``x > Add(c, c)``), not a table; and the most elements each
# of its values may hold, as ONNX's shape inference sizes them first (a ``ConstantOfShape`` or a broadcast of a few
# small constants can ask for gigabytes), as ``fold-constants`` bounds its results.
_CONSTANT_NODES = 8
_CONSTANT_ELEMENTS = 8192
_CONSTANT_RESULT_ELEMENTS = 262144


def constant_value(value: ir.Value) -> np.ndarray | None:
    """The array ``value`` holds where up to ``_CONSTANT_NODES`` ONNX nodes compute it from constants alone
    (initializers that are no graph input, ``Constant`` nodes; ``_CONSTANT_ELEMENTS`` elements read at most, no draw,
    no subgraph), evaluated on ONNX Runtime's CPU as written where ONNX's shape inference sizes every value it computes
    at ``_CONSTANT_RESULT_ELEMENTS`` elements at most (read-only; one evaluation per distinct subgraph); None
    otherwise, or where ONNX Runtime refuses it. ``value``'s own constant (an initializer) is not read here:
    ``ir.convenience.get_const_tensor`` gives it."""
    from optimizer.draws import NONDETERMINISTIC_OPS  # here: optimizer.draws runs models through this module

    if not value.name or value.producer() is None:
        return None
    nodes: dict[int, ir.Node] = {}
    leaves: dict[int, ir.Value] = {}
    stack = [value]
    while stack:
        current = stack.pop()
        node = current.producer()
        if node is None:
            if current.const_value is None or current.is_graph_input() or not current.name:
                return None  # a graph input, or an initializer a caller may override
            leaves[id(current)] = current
            continue
        if id(node) in nodes:
            continue
        if (
            not is_onnx_domain(node)
            or node.op_type in NONDETERMINISTIC_OPS
            or len(nodes) >= _CONSTANT_NODES
            or any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values())
            or any(not output.name for output in node.outputs)
        ):
            return None
        nodes[id(node)] = node
        stack.extend(v for v in node.inputs if v is not None)
    # A Constant node's tensor is read as an initializer is: uncounted, one of 4 million floats was serialized, and
    # kept as the cache's key, for each comparison with a reduction of it (review s75 late74a).
    constants = [node for node in nodes.values() if node.op_type == "Constant"]
    written = [ir.convenience.get_const_tensor(node.outputs[0]) for node in constants]
    read = [leaf.const_value for leaf in leaves.values()] + written
    if any(tensor is None for tensor in written) or sum(tensor.size for tensor in read) > _CONSTANT_ELEMENTS:
        return None
    graph = next(iter(nodes.values())).graph
    if not isinstance(graph, ir.Graph) or "" not in graph.opset_imports and "ai.onnx" not in graph.opset_imports:
        return None  # a subgraph's or a function's node: its opsets are its owner's
    initializers = []
    for leaf in leaves.values():
        tensor = leaf.const_value
        if isinstance(tensor, ir.ExternalTensor):
            tensor = ir.tensor(tensor.numpy(), name=leaf.name)
        initializers.append(ir.serde.serialize_tensor(tensor))
        initializers[-1].name = leaf.name
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in graph.opset_imports.items()]
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(
            [ir.serde.serialize_node(node) for node in in_topological_order(list(nodes.values()))],
            "constant",
            [],
            [onnx.helper.make_empty_tensor_value_info(value.name)],
            initializers,
        ),
        opset_imports=opsets,
        ir_version=onnx.helper.find_min_ir_version_for(opsets, ignore_unknown=True),
    )
    return _evaluated_constant(proto.SerializeToString())


# Input generation reads each comparison's constant several times over, in order: a cache smaller than the subgraphs
# a graph compares with evicted each before its next read (500 comparisons: 2,000 evaluations, 4x the time, until a
# late review in session 74).
@functools.lru_cache(maxsize=1024)
def _evaluated_constant(proto: bytes) -> np.ndarray | None:
    """The one output of serialized model ``proto`` (no inputs), read-only; None where ONNX's shape inference does not
    size each of its values within ``_CONSTANT_RESULT_ELEMENTS``, or ONNX Runtime refuses it."""
    model = onnx.ModelProto.FromString(proto)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return None
    sized = {info.name: info.type for info in (*inferred.graph.value_info, *inferred.graph.output)}
    for node in model.graph.node:
        for name in node.output:
            kind = sized[name].WhichOneof("value") if name in sized else None
            shape = sized[name].tensor_type.shape if kind == "tensor_type" else None
            if shape is None or not sized[name].tensor_type.HasField("shape"):
                return None
            dims = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in shape.dim]
            if min(dims, default=0) < 0 or math.prod(dims) > _CONSTANT_RESULT_ELEMENTS:
                return None
    try:
        session = open_session(proto, session_options(), ["CPUExecutionProvider"])
        with calling_onnxruntime("evaluate a constant"):
            (array,) = session.run(None, {})
    except RuntimeRefusedError:
        return None
    if not isinstance(array, np.ndarray):
        return None
    array.setflags(write=False)
    return array

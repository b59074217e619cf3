"""The ONNX backend test corpus of the installed ``onnx`` package, as runnable cases.

Two sources, no case counted twice:

* node cases: ``onnx.backend.test.case.node.collect_testcases(op_type=None)``
  generates them in memory (recent onnx wheels no longer ship ``data/node``; if a
  wheel does, its folders are skipped because the generator already covers them);
* model cases: the folders under ``onnx/backend/test/data/<suite>/test_*`` that
  hold ``model.onnx`` and ``test_data_set_N/{input,output}_M.pb``, plus the
  ``real`` suite, whose ``data.json`` points at the small "light" copies of the
  zoo models in ``data/light``: those get the same deterministic dummy input as
  onnx's runner and the ``light_*_output_0.pb`` expected output.  A ``real``
  case whose URL is remote (not on disk) is skipped.

Loading and comparison mirror ``onnx/backend/test/runner/__init__.py``: a
``.pb`` file is read as the TensorProto / SequenceProto / OptionalProto /
MapProto its graph input or output is typed as; outputs are compared with
``np.testing.assert_allclose(actual, expected, rtol, atol)`` after an exact
shape and dtype check (bfloat16 in float32 with rtol >= 2**-6, as the runner
does), strings and bools exactly, sequences element by element, an empty
optional only equal to another.  Default tolerances are the runner's
(rtol=1e-3, atol=1e-7), overridden by a folder's ``data.json``.

``baseline(case)`` runs the original model in ONNX Runtime (CPU, graph
optimizations off) and classifies the case as runnable (with whether ORT agrees
with the reference outputs) or out of scope, with one of a few reason
categories (``REASONS``).
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper

ONNX_PACKAGE_DIR = os.path.dirname(os.path.abspath(onnx.__file__))
DATA_DIR = os.path.join(ONNX_PACKAGE_DIR, "backend", "test", "data")
# Folders of data/ that are not suites of their own: "node" is what
# collect_testcases generates (older wheels shipped it as files too), "light"
# holds the files the "real" suite points at.
_NOT_SUITES = ("node", "light")

DEFAULT_RTOL = 1e-3  # onnx.backend.test.loader / runner defaults
DEFAULT_ATOL = 1e-7

# ---------------------------------------------------------------------------
# Cases that must not be run in-process at all, by name, with the reason.
# Filled from actually running the whole corpus (see corpus_stats.py
# --isolate): a case goes here only if ONNX Runtime kills the interpreter
# (segfault / abort / hang) instead of raising.
EXCLUDED: dict[str, str] = {}


# ---------------------------------------------------------------------------
# Cases


@dataclass(frozen=True, eq=False)
class CorpusCase:
    """One model with its data sets.

    ``inputs[i]`` / ``expected[i]`` are data set ``i``, keyed by graph input /
    output name.  Values are ``np.ndarray`` (0-d for scalars), ``list`` (a
    sequence), ``dict`` (a map) or ``None`` (an empty optional).
    """

    name: str  # "test_abs" for node cases, "<suite>/<folder>" for model cases
    kind: Literal["node", "model"]
    model: onnx.ModelProto
    inputs: list[dict[str, Any]]
    expected: list[dict[str, Any]]
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    suite: str = "node"  # "node", or the data/ folder: "real", "simple", "pytorch-converted"...


def iter_corpus_cases(
    *, node: bool = True, model: bool = True, names: Callable[[str], bool] | None = None
) -> Iterator[CorpusCase]:
    """Every node case (generated), then every model case present on disk.

    ``names`` optionally filters by case name before any file is read.
    Model cases are read lazily, one folder at a time.
    """
    if node:
        for test_case in _node_testcases():
            if names is None or names(test_case.name):
                yield _from_node_testcase(test_case)
    if model:
        for suite in model_suites():
            suite_dir = os.path.join(DATA_DIR, suite)
            for folder in sorted(os.listdir(suite_dir)):
                path = os.path.join(suite_dir, folder)
                name = f"{suite}/{folder}"
                if not os.path.isdir(path) or (names is not None and not names(name)):
                    continue
                case = _from_folder(suite, path, name)
                if case is not None:
                    yield case


def model_suites() -> list[str]:
    """The file-based suites actually shipped (real, simple, pytorch-converted, pytorch-operator...)."""
    if not os.path.isdir(DATA_DIR):
        return []
    return sorted(d for d in os.listdir(DATA_DIR) if d not in _NOT_SUITES and os.path.isdir(os.path.join(DATA_DIR, d)))


_NODE_TESTCASES: list[Any] | None = None


def _node_testcases() -> list[Any]:
    """``collect_testcases`` output (cached: it imports ~200 modules and takes seconds)."""
    global _NODE_TESTCASES  # noqa: PLW0603
    if _NODE_TESTCASES is None:
        from onnx.backend.test.case.node import collect_testcases  # noqa: PLC0415

        with warnings.catch_warnings(), np.errstate(all="ignore"):
            # The generators overflow / divide by zero on purpose.
            warnings.simplefilter("ignore")
            _NODE_TESTCASES = list(collect_testcases(op_type=None))
    return _NODE_TESTCASES


def _from_node_testcase(test_case: Any) -> CorpusCase:
    # A copy: the generated TestCases are cached, and a consumer may edit its model in place.
    model = onnx.ModelProto()
    model.CopyFrom(test_case.model)
    in_names = [vi.name for vi in model.graph.input]  # == the node's present inputs
    in_types = {vi.name: vi.type for vi in model.graph.input}
    out_names = [vi.name for vi in model.graph.output]
    inputs, expected = [], []
    for data_inputs, data_outputs in test_case.data_sets:
        inputs.append({n: _normalize(v, in_types[n]) for n, v in zip(in_names, data_inputs, strict=True)})
        expected.append({n: _normalize(v) for n, v in zip(out_names, data_outputs, strict=True)})
    return CorpusCase(
        name=test_case.name,
        kind="node",
        model=model,
        inputs=inputs,
        expected=expected,
        rtol=test_case.rtol,
        atol=test_case.atol,
        suite="node",
    )


def _normalize(value: Any, type_proto: onnx.TypeProto | None = None) -> Any:
    """Generated data mixes arrays, numpy/Python scalars and TensorProtos (types numpy lacks)."""
    if value is None:
        return None
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, (list, tuple)):
        elem = None
        if type_proto is not None and type_proto.HasField("sequence_type"):
            elem = type_proto.sequence_type.elem_type
        return [_normalize(v, elem) for v in value]
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value
    array = np.asarray(value)
    # A Python scalar (bool, int, float) has no ONNX type of its own: use the declared one.
    if type_proto is not None and type_proto.HasField("tensor_type") and type_proto.tensor_type.elem_type:
        want = onnx.helper.tensor_dtype_to_np_dtype(type_proto.tensor_type.elem_type)
        if array.dtype != want:
            array = array.astype(want)
    return array


def _read_json(path: str) -> dict[str, Any]:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _from_folder(suite: str, folder: str, name: str) -> CorpusCase | None:
    data = _read_json(os.path.join(folder, "data.json"))
    rtol = float(data.get("rtol", DEFAULT_RTOL))
    atol = float(data.get("atol", DEFAULT_ATOL))
    model_path = os.path.join(folder, "model.onnx")
    if os.path.exists(model_path):
        model = onnx.load(model_path)
        inputs, expected = [], []
        for data_set in sorted(glob.glob(os.path.join(folder, "test_data_set_*")), key=_numeric_suffix):
            inputs.append(_read_data_set(data_set, "input", _feedable_inputs(model)))
            expected.append(_read_data_set(data_set, "output", list(model.graph.output)))
        if not inputs:
            return None
        return CorpusCase(name, "model", model, inputs, expected, rtol, atol, suite)
    url = data.get("url")
    if isinstance(url, str) and url.startswith("onnx/backend/test/data/light/"):
        return _from_light(url, name, rtol, atol, suite)
    return None  # a remote model (would need a download): not on disk, skipped


def _numeric_suffix(path: str) -> int:
    match = re.search(r"_(\d+)(\.pb)?$", path)
    return int(match.group(1)) if match else 0


def _feedable_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers: the ones a data set provides, in order."""
    initializers = {t.name for t in model.graph.initializer}
    initializers |= {t.values.name for t in model.graph.sparse_initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def _read_data_set(folder: str, prefix: str, value_infos: list[onnx.ValueInfoProto]) -> dict[str, Any]:
    """``{prefix}_M.pb`` files, keyed by the proto's name if it is a graph name, else by position."""
    by_name = {vi.name: vi for vi in value_infos}
    values: dict[str, Any] = {}
    files = sorted(glob.glob(os.path.join(folder, f"{prefix}_*.pb")), key=_numeric_suffix)
    for index, path in enumerate(files):
        with open(path, "rb") as f:
            content = f.read()
        positional = value_infos[index] if index < len(value_infos) else None
        value, proto_name = _parse_value(content, positional.type if positional else None)
        if proto_name and proto_name in by_name:
            key = proto_name
            if positional is None or by_name[key].type != positional.type:
                value, _ = _parse_value(content, by_name[key].type)
        elif positional is not None:
            key = positional.name
        else:
            raise ValueError(f"{path}: no graph {prefix} #{index} to attach it to")
        values[key] = value
    return values


def _parse_value(content: bytes, type_proto: onnx.TypeProto | None) -> tuple[Any, str]:
    """Parse as the declared type, like the runner's ``_load_proto``; guess if untyped."""
    kind = type_proto.WhichOneof("value") if type_proto is not None else None
    parsers = {
        "tensor_type": (onnx.TensorProto, numpy_helper.to_array),
        "sequence_type": (onnx.SequenceProto, numpy_helper.to_list),
        "optional_type": (onnx.OptionalProto, numpy_helper.to_optional),
        "map_type": (onnx.MapProto, numpy_helper.to_dict),
    }
    if kind in parsers:
        proto_cls, convert = parsers[kind]
        proto = proto_cls()
        proto.ParseFromString(content)
        return convert(proto), proto.name
    for proto_cls, convert in parsers.values():  # untyped: first proto that round-trips
        proto = proto_cls()
        try:
            proto.ParseFromString(content)
        except Exception:  # noqa: BLE001 - DecodeError and friends: not this type
            continue
        if proto.SerializeToString() == content:
            return convert(proto), proto.name
    raise ValueError("unrecognized protobuf in test data")


def _from_light(url: str, name: str, rtol: float, atol: float, suite: str) -> CorpusCase | None:
    """A ``real`` case backed by ``data/light``: the runner's dummy input, the shipped output."""
    model_path = os.path.normpath(os.path.join(ONNX_PACKAGE_DIR, "..", url))
    if not os.path.exists(model_path):
        return None
    model = onnx.load(model_path)
    inputs: dict[str, Any] = {}
    for vi in _feedable_inputs(model):
        tensor_type = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tensor_type.elem_type != onnx.TensorProto.FLOAT:
            return None  # the runner cannot make dummy data for it either
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tensor_type.shape.dim)
        n = int(np.prod(shape))
        inputs[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    prefix = os.path.splitext(model_path)[0]
    expected: dict[str, Any] = {}
    for index, vi in enumerate(model.graph.output):
        path = f"{prefix}_output_{index}.pb"
        if not os.path.exists(path):
            return None  # the runner would compute it with the (slow) reference evaluator
        with open(path, "rb") as f:
            expected[vi.name], _ = _parse_value(f.read(), vi.type)
    return CorpusCase(name, "model", model, [inputs], [expected], rtol, atol, suite)


# ---------------------------------------------------------------------------
# ONNX Runtime

_ORT: Any = None


def _ort() -> Any:
    global _ORT  # noqa: PLW0603
    if _ORT is None:
        import onnxruntime  # noqa: PLC0415

        onnxruntime.set_default_logger_severity(3)  # errors we expect; keep stderr quiet
        _ORT = onnxruntime
    return _ORT


def ort_session(model: onnx.ModelProto) -> Any:
    """An ONNX Runtime CPU session on ``model``, graph optimizations off, one thread."""
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # Errors are raised as exceptions anyway; at the default level ORT also logs
    # them to stderr, which is pure noise for the many cases it cannot run.
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_session(session: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run ``session`` on ``inputs``; keys the session does not take are ignored."""
    accepted = {meta.name for meta in session.get_inputs()}
    accepted |= {meta.name for meta in session.get_overridable_initializers()}
    feeds = {name: value for name, value in inputs.items() if name in accepted}
    names = [meta.name for meta in session.get_outputs()]
    run_options = _ort().RunOptions()
    run_options.log_severity_level = 4
    return dict(zip(names, session.run(names, feeds, run_options), strict=True))


def run_with_ort(model: onnx.ModelProto, inputs: dict[str, Any]) -> dict[str, Any]:
    """Outputs of ``model`` on ``inputs`` in ONNX Runtime (CPU), keyed by output name. Raises on failure."""
    return run_session(ort_session(model), inputs)


# ---------------------------------------------------------------------------
# Comparison (onnx runner semantics)


def outputs_match(actual: dict[str, Any], expected: dict[str, Any], rtol: float, atol: float) -> str | None:
    """None if every expected output is matched, else a one-line description of the first mismatch."""
    for name, want in expected.items():
        if name not in actual:
            return f"output {name!r}: missing (got {sorted(actual)})"
        problem = _mismatch(actual[name], want, rtol, atol)
        if problem is not None:
            return f"output {name!r}{problem}"
    return None


def _mismatch(got: Any, want: Any, rtol: float, atol: float) -> str | None:
    """None if equal under the runner's rule, else ': what differs' (with a [i] path prefix)."""
    if want is None or got is None:
        if want is None and got is None:
            return None
        state = {True: "empty", False: "present"}
        return f": optional is {state[got is None]}, expected {state[want is None]}"
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f": got {type(got).__name__}, expected a sequence"
        if len(got) != len(want):
            return f": sequence length {len(got)}, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            problem = _mismatch(g, w, rtol, atol)
            if problem is not None:
                return f"[{i}]{problem}"
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f": got {type(got).__name__}, expected a map"
        if set(got) != set(want):
            return f": map keys {sorted(got)!r:.80}, expected {sorted(want)!r:.80}"
        for key in want:
            problem = _mismatch(got[key], want[key], rtol, atol)
            if problem is not None:
                return f"[{key!r}]{problem}"
        return None
    if isinstance(got, (list, tuple, dict)):
        return f": got {type(got).__name__}, expected a tensor"
    return _tensor_mismatch(np.asarray(got), np.asarray(want), rtol, atol)


def _tensor_mismatch(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str | None:
    if got.shape != want.shape:
        return f": shape {got.shape}, expected {want.shape}"
    if want.dtype.kind in "OUS" or got.dtype.kind in "OUS":  # strings: exact
        g, w = _as_str(got), _as_str(want)
        if np.array_equal(g, w):
            return None
        bad = int(np.sum(g != w))
        first = int(np.flatnonzero(g.reshape(-1) != w.reshape(-1))[0])
        g_first, w_first = g.reshape(-1)[first], w.reshape(-1)[first]
        return f": {bad} string(s) differ, first at flat index {first}: {g_first!r:.40} vs {w_first!r:.40}"
    if got.dtype == np.uint8 and want.dtype.name.startswith("float8"):
        # onnxruntime's Python API hands float8 tensors out as their raw bytes (uint8).
        got = got.view(want.dtype)
    if got.dtype != want.dtype:
        return f": dtype {got.dtype}, expected {want.dtype}"
    if want.dtype == np.bool_:
        if np.array_equal(got, want):
            return None
        return f": {int(np.sum(got != want))} of {want.size} bools differ"
    out_rtol = rtol
    if want.dtype.kind == "V":  # ml_dtypes (bfloat16, float8, int4...): numpy cannot promote them
        if want.dtype.name == "bfloat16":
            out_rtol = max(rtol, 2**-6)  # two bfloat16 ULPs, as the runner
        got, want = got.astype(np.float32), want.astype(np.float32)
    try:
        np.testing.assert_allclose(got, want, rtol=out_rtol, atol=atol)
    except AssertionError:
        return _numeric_message(got, want, out_rtol, atol)
    return None


def _as_str(array: np.ndarray) -> np.ndarray:
    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    return np.array(flat, dtype=object).reshape(array.shape)


def _numeric_message(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str:
    g = got.astype(np.complex128 if got.dtype.kind == "c" else np.float64).reshape(-1)
    w = want.astype(np.complex128 if want.dtype.kind == "c" else np.float64).reshape(-1)
    with np.errstate(all="ignore"):
        same_nan = np.isnan(g) & np.isnan(w)
        same_inf = np.isinf(g) & np.isinf(w) & (g == w)
        err = np.abs(g - w)
        err[same_nan | same_inf] = 0.0
        err[np.isnan(err)] = np.inf  # NaN on one side only
        finite = np.isfinite(g) & np.isfinite(w)
        bad = ~(same_nan | same_inf | (finite & (err <= atol + rtol * np.abs(w))))
    worst = int(np.argmax(err)) if err.size else 0
    return (
        f": max abs err {float(err[worst]):.3g} at flat index {worst} "
        f"(got {g[worst]:.6g}, expected {w[worst]:.6g}); "
        f"{int(bad.sum())}/{w.size} elements outside rtol={rtol:g} atol={atol:g}"
    )


# ---------------------------------------------------------------------------
# Baseline: what ONNX Runtime does with the original model

RUNNABLE = "runnable"
OUT_OF_SCOPE = "out_of_scope"

# Reason categories for out-of-scope cases, tested in this order (first wins).
R_EXCLUDED = "excluded: kills the process"  # EXCLUDED above; never run
R_OPSET = "opset/IR version newer than ORT"  # "only *guarantees* support...", "Unsupported model IR version"
R_TRAINING = "training domain"  # ai.onnx.preview.training ops (Adam, Gradient...): not in ORT inference builds
R_EXOTIC = "float8/int4/float4 types"  # the model uses them and ORT failed (no kernel, or can't pass them)
R_BFLOAT16_IO = "bfloat16 I/O (ORT Python API)"  # onnxruntime cannot take/return ml_dtypes.bfloat16 arrays
R_NOT_IMPLEMENTED = "NOT_IMPLEMENTED (no kernel)"  # op/version/type combination without a CPU kernel
R_UNREGISTERED = "op unknown to ORT"  # e.g. ai.onnx.preview FlexAttention: "not a registered function/op"
R_UNSUPPORTED_ATTR = "unsupported attribute value"  # kernel exists but refuses it (RNN layout=1...)
R_ENVIRONMENT = "environment (locale)"  # StringNormalizer needs the en_US.UTF-8 locale installed
R_INVALID_GRAPH = "INVALID_GRAPH (rejected at load)"
R_RUN_FAILED = "failed at run time"  # session built, run raised (ORT limitation or bug)
R_OTHER = "other load failure"
REASONS = (
    R_EXCLUDED,
    R_OPSET,
    R_TRAINING,
    R_EXOTIC,
    R_BFLOAT16_IO,
    R_NOT_IMPLEMENTED,
    R_UNREGISTERED,
    R_UNSUPPORTED_ATTR,
    R_ENVIRONMENT,
    R_INVALID_GRAPH,
    R_RUN_FAILED,
    R_OTHER,
)


@dataclass(frozen=True, eq=False)
class Baseline:
    """ONNX Runtime on the original model of one case."""

    name: str
    status: Literal["runnable", "out_of_scope"]
    reason: str | None = None  # one of REASONS when out of scope
    detail: str = ""  # one-line exception text (out of scope) or first mismatch (ORT disagrees)
    ort_outputs: list[dict[str, Any]] | None = field(default=None, repr=False)  # per data set
    ort_matches_reference: bool | None = None  # None when out of scope
    # Only checked where ORT disagrees with the reference: a second session gave
    # bit-identical outputs (False for e.g. training-mode Dropout without a seed).
    ort_deterministic: bool | None = None
    seconds: float = 0.0

    @property
    def runnable(self) -> bool:
        return self.status == RUNNABLE

    @property
    def ort_disagrees_with_reference(self) -> bool:
        return self.runnable and not self.ort_matches_reference

    def reference(self, case: CorpusCase) -> list[dict[str, Any]]:
        """What an optimized model must reproduce: the expected outputs, or ORT's own where ORT disagrees."""
        if not self.runnable:
            raise ValueError(f"{self.name} is out of scope: {self.reason}")
        return case.expected if self.ort_matches_reference else self.ort_outputs  # type: ignore[return-value]


def baseline(case: CorpusCase) -> Baseline:
    """Run the original model on every data set (one session) and classify the case."""
    started = time.perf_counter()
    if case.name in EXCLUDED:
        return Baseline(case.name, OUT_OF_SCOPE, R_EXCLUDED, EXCLUDED[case.name])
    stage = "load"
    try:
        session = ort_session(case.model)
        stage = "run"
        outputs = [run_session(session, inputs) for inputs in case.inputs]
    except Exception as error:  # noqa: BLE001 - ORT raises many exception types
        return Baseline(
            case.name,
            OUT_OF_SCOPE,
            classify_failure(case.model, error, stage),
            one_line(error),
            seconds=time.perf_counter() - started,
        )
    problem = None
    for got, want in zip(outputs, case.expected, strict=True):
        problem = outputs_match(got, want, case.rtol, case.atol)
        if problem is not None:
            break
    deterministic = None
    if problem is not None:
        again = [run_with_ort(case.model, inputs) for inputs in case.inputs]
        deterministic = all(outputs_match(b, a, 0.0, 0.0) is None for a, b in zip(outputs, again, strict=True))
    return Baseline(
        case.name,
        RUNNABLE,
        detail=problem or "",
        ort_outputs=outputs,
        ort_matches_reference=problem is None,
        ort_deterministic=deterministic,
        seconds=time.perf_counter() - started,
    )


def one_line(error: BaseException, limit: int = 240) -> str:
    """``Type: message`` on one line, without ORT's C++ source paths and function signatures."""
    text = " ".join(str(error).split())
    text = _strip_cpp_locations(text)
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _strip_cpp_locations(text: str) -> str:
    """Drop ``/onnxruntime_src/...cc:123 <C++ signature>`` prefixes from ORT messages."""
    out = []
    pos = 0
    for match in re.finditer(r"/onnxruntime_src/\S+:\d+ ", text):
        if match.start() < pos:
            continue
        out.append(text[pos : match.start()])
        pos = match.end()
        # A signature runs to the ')' that closes its first '(' (plus a trailing " const").
        open_at = text.find("(", pos)
        if open_at == -1 or open_at - pos > 200:
            continue
        depth = 0
        for i in range(open_at, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                end = i + 1
                for suffix in (" const", "::<lambda()>"):
                    if text.startswith(suffix, end):
                        end += len(suffix)
                if text.startswith(" [with ", end) and "]" in text[end:]:
                    end = text.index("]", end) + 1
                pos = end + 1 if text.startswith(" ", end) else end
                break
    out.append(text[pos:])
    return "".join(out)


_TRAINING_DOMAINS = {"ai.onnx.preview.training", "ai.onnx.training"}
_EXOTIC_TYPES = {
    getattr(onnx.TensorProto, name)
    for name in (
        "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2",
        "FLOAT8E5M2FNUZ",
        "FLOAT8E8M0",
        "INT4",
        "UINT4",
        "FLOAT4E2M1",
        "INT2",
        "UINT2",
    )
    if hasattr(onnx.TensorProto, name)
}


def classify_failure(model: onnx.ModelProto, error: BaseException, stage: str = "load") -> str:
    """A reason category (one of REASONS) for ONNX Runtime failing on ``model`` at ``stage`` ("load"/"run")."""
    text = str(error)
    if re.search(r"only \*guarantees\* support|Unsupported model IR version|is under development", text):
        return R_OPSET
    if any(op.domain in _TRAINING_DOMAINS for op in model.opset_import):
        return R_TRAINING
    if _uses_types(model, _EXOTIC_TYPES):
        return R_EXOTIC
    if re.search(r"MLDataType|No corresponding Numpy type|Unable to handle object of type", text) and (
        "bfloat16" in text or "Numpy_type 256" in text or _uses_types(model, {onnx.TensorProto.BFLOAT16})
    ):
        return R_BFLOAT16_IO
    if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text:
        return R_NOT_IMPLEMENTED
    if "is not a registered function/op" in text:
        return R_UNREGISTERED
    if "locale" in text:
        return R_ENVIRONMENT
    if "INVALID_GRAPH" in text:
        return R_INVALID_GRAPH
    if stage == "run":
        return R_RUN_FAILED
    if re.search(r"not supported|was false", text):
        return R_UNSUPPORTED_ATTR
    return R_OTHER


def _uses_types(model: onnx.ModelProto, elem_types: set[int]) -> bool:
    """Whether a typed value, initializer, or a Cast/constant attribute anywhere in the model uses ``elem_types``."""

    def type_hits(tp: onnx.TypeProto) -> bool:
        kind = tp.WhichOneof("value")
        if kind == "tensor_type":
            return tp.tensor_type.elem_type in elem_types
        if kind == "sparse_tensor_type":
            return tp.sparse_tensor_type.elem_type in elem_types
        if kind == "sequence_type":
            return type_hits(tp.sequence_type.elem_type)
        if kind == "optional_type":
            return type_hits(tp.optional_type.elem_type)
        if kind == "map_type":
            return type_hits(tp.map_type.value_type)
        return False

    def nodes_hit(nodes: Any) -> bool:
        for node in nodes:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.INT and attr.name in ("to", "output_dtype", "dtype"):
                    if attr.i in elem_types:
                        return True
                elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in elem_types:
                    return True
                elif attr.type == onnx.AttributeProto.GRAPH and graph_hits(attr.g):
                    return True
                elif attr.type == onnx.AttributeProto.GRAPHS and any(graph_hits(g) for g in attr.graphs):
                    return True
        return False

    def graph_hits(graph: onnx.GraphProto) -> bool:
        if any(type_hits(vi.type) for vi in (*graph.input, *graph.output, *graph.value_info)):
            return True
        if any(t.data_type in elem_types for t in graph.initializer):
            return True
        return nodes_hit(graph.node)

    return graph_hits(model.graph) or any(nodes_hit(f.node) for f in model.functions)

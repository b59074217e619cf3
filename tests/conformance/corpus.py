"""The ONNX backend test corpus of the installed onnx package, as (model, inputs, expected) cases.

Node cases come from ``onnx.backend.test.case.node.collect_testcases`` (recent onnx
wheels generate them instead of shipping files); model cases are the directories
under ``onnx/backend/test/data/`` that hold a ``model.onnx`` and
``test_data_set_*/{input,output}_*.pb``. Data loading and the comparison rule
(``assert_allclose`` with the case's rtol/atol, exact for non-numeric outputs)
follow onnx's own backend test runner.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx.backend.test.case.node as node_cases
from onnx import numpy_helper

DATA_ROOT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
# onnx's runner defaults, used by the model tests on disk.
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-7


@dataclass
class CorpusCase:
    """One model with its data sets: ``inputs[i]``/``expected[i]`` are keyed by graph input/output name."""

    name: str
    model: onnx.ModelProto
    inputs: list[dict[str, Any]]
    expected: list[dict[str, Any]]
    rtol: float
    atol: float


def iter_cases() -> Iterator[CorpusCase]:
    """Every node case, then every model case whose files are present."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the generators overflow on purpose
        generated = node_cases.collect_testcases(None)
    for case in generated:
        yield _from_generated(case)
    for folder in sorted(glob.glob(os.path.join(DATA_ROOT, "*", "*"))):
        if os.path.basename(os.path.dirname(folder)) == "node":
            continue
        case = _from_folder(folder)
        if case is not None:
            yield case


def _from_generated(case: Any) -> CorpusCase:
    model = case.model
    inputs_order = _runtime_inputs(model)
    outputs_order = [value.name for value in model.graph.output]
    inputs, expected = [], []
    for data_inputs, data_outputs in case.data_sets:
        inputs.append(dict(zip(inputs_order, map(_as_value, data_inputs))))
        expected.append(dict(zip(outputs_order, map(_as_value, data_outputs))))
    return CorpusCase(case.name, model, inputs, expected, case.rtol, case.atol)


def _from_folder(folder: str) -> CorpusCase | None:
    path = os.path.join(folder, "model.onnx")
    if not os.path.exists(path):
        return None
    model = onnx.load(path)
    inputs_order = _runtime_inputs(model)
    outputs_order = [value.name for value in model.graph.output]
    inputs, expected = [], []
    for data_set in sorted(glob.glob(os.path.join(folder, "test_data_set_*"))):
        inputs.append(_read_protos(data_set, "input", inputs_order))
        expected.append(_read_protos(data_set, "output", outputs_order))
    if not inputs:
        return None
    name = f"{os.path.basename(os.path.dirname(folder))}/{os.path.basename(folder)}"
    return CorpusCase(name, model, inputs, expected, DEFAULT_RTOL, DEFAULT_ATOL)


def _as_value(value: Any) -> Any:
    """Generated data sets mix arrays, numpy scalars and TensorProtos (for types numpy lacks)."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, list):
        return [_as_value(item) for item in value]
    return value


def _runtime_inputs(model: onnx.ModelProto) -> list[str]:
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in initializers]


def _read_protos(folder: str, kind: str, names: list[str]) -> dict[str, Any]:
    values = {}
    files = sorted(glob.glob(os.path.join(folder, f"{kind}_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))
    for index, file in enumerate(files):
        data = open(file, "rb").read()
        value, name = _parse(data)
        values[name or names[index]] = value
    return values


def _parse(data: bytes) -> tuple[Any, str]:
    # A .pb file holds a TensorProto, SequenceProto, MapProto or OptionalProto;
    # parse as each and keep the first that reads back its own bytes.
    for proto_type, convert in (
        (onnx.TensorProto, numpy_helper.to_array),
        (onnx.SequenceProto, numpy_helper.to_list),
        (onnx.MapProto, numpy_helper.to_dict),
        (onnx.OptionalProto, numpy_helper.to_optional),
    ):
        proto = proto_type()
        try:
            proto.ParseFromString(data)
        except Exception:  # protobuf's DecodeError and friends: not this type
            continue
        if proto.SerializeToString() == data:
            return convert(proto), proto.name
    raise ValueError("unrecognized protobuf in test data")


def outputs_match(actual: dict[str, Any], expected: dict[str, Any], rtol: float, atol: float) -> str | None:
    """None if every expected output matches (onnx runner's rule), else the first mismatch."""
    for name, want in expected.items():
        if name not in actual:
            return f"output '{name}' missing"
        problem = _mismatch(actual[name], want, rtol, atol)
        if problem:
            return f"output '{name}': {problem}"
    return None


def _mismatch(got: Any, want: Any, rtol: float, atol: float) -> str | None:
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return "sequence length differs"
        for item_got, item_want in zip(got, want):
            problem = _mismatch(item_got, item_want, rtol, atol)
            if problem:
                return problem
        return None
    if want is None or got is None:
        return None if want is None and got is None else "optional presence differs"
    want, got = np.asarray(want), np.asarray(got)
    if want.dtype.kind in "OSU" or want.dtype == bool:
        return None if np.array_equal(want, got) else "values differ"
    try:
        np.testing.assert_allclose(
            got.astype(np.float64) if got.dtype.kind != "c" else got,
            want.astype(np.float64) if want.dtype.kind != "c" else want,
            rtol=rtol,
            atol=atol,
            equal_nan=True,
        )
    except (AssertionError, ValueError, TypeError) as error:
        return str(error).strip().splitlines()[0][:200]
    return None

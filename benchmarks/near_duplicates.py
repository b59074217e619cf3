"""How often a model's constant tensors are near-duplicates that exact deduplication misses.

``deduplicate-initializers`` merges tensors whose dtype, shape and bytes agree. This script
counts, per model, the pairs of float constants (initializers and ``Constant`` nodes,
subgraphs included) that a verified sharing pass could merge beyond that:

- **rounding**: same shape, ``0 < max|a - b| <= 1e-6 * max|a|``;
- **transposed**: 2-D, ``a`` equals ``b.T`` exactly or to that rounding (an exporter's
  separate transposed copy of a tied weight: sharing needs a ``Transpose`` or a consumer
  that reads the other layout);
- **scaled**: ``a = s * b`` with one scale per channel along axis 0 or along axis 1
  (either layout of a MatMul/Gemm/Conv weight), ``b`` possibly transposed: every channel's
  cosine with its partner is at least ``1 - 1e-6`` and the least-squares scales leave
  ``max|a - s * b| <= 1e-5 * max|a|``; sharing stores ``b`` once plus the scale vector.

Exact duplicates are counted too (already merged by the pass) so the others read against
them. Tensors under 16 elements are left out (scalars and shape constants: sharing them
saves nothing). For every tensor the nearest other tensor is reported as well (the
smallest relative difference and the largest worst-channel cosine over all pairs), which
says how far real weights are from any of these criteria, not only whether they meet them.

Memory stays bounded on large models: tensors are grouped by shape (a 2-D shape and its
transpose in one group) and only one group is converted to arrays at a time.

    .venv/bin/python benchmarks/near_duplicates.py /work/models/*.onnx tests/fixtures/*.onnx --json /tmp/near.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROUNDING = 1e-6  # max |a - b| relative to max |a|
COSINE = 1e-6  # 1 - worst channel cosine
SCALED_RESIDUAL = 1e-5  # max |a - s * b| relative to max |a| after fitting s
MIN_ELEMENTS = 16
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass
class Found:
    """Pairs (and the clusters they form) of one kind, with the bytes sharing would save."""

    pairs: int = 0
    tensors: int = 0
    bytes_saved: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class ModelReport:
    model: str
    float_tensors: int
    float_bytes: int
    exact: Found
    rounding: Found
    transposed: Found
    scaled: Found
    near_total: Found  # rounding, transposed and scaled together (a tensor in two kinds counts once)
    nearest_difference: float | None  # smallest max|a-b|/max|a| of two distinct same-shape tensors
    nearest_cosine: float | None  # largest worst-channel |cosine| of two distinct matrices


def constant_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers and Constant-node tensors of every graph, subgraphs included."""

    def visit(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if node.op_type == "Constant" and attribute.name == "value":
                    tensor = onnx.TensorProto()
                    tensor.CopyFrom(attribute.t)
                    tensor.name = node.output[0]
                    yield tensor
                for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                    yield from visit(subgraph)

    yield from visit(model.graph)


def scan(path: Path) -> ModelReport:
    model = onnx.load(str(path))
    tensors = [t for t in constant_tensors(model) if t.data_type in FLOAT_TYPES and np.prod(t.dims) >= MIN_ELEMENTS]
    groups: dict[tuple[int, ...], list[onnx.TensorProto]] = defaultdict(list)
    for tensor in tensors:
        dims = tuple(tensor.dims)
        groups[tuple(sorted(dims)) if len(dims) == 2 else dims].append(tensor)
    report = ModelReport(
        path.name,
        len(tensors),
        sum(_nbytes(t) for t in tensors),
        Found(),
        Found(),
        Found(),
        Found(),
        Found(),
        None,
        None,
    )
    for members in groups.values():
        _scan_group(members, report)
        del members[:]  # release the protos' copies as we go
    return report


def _nbytes(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _scan_group(members: list[onnx.TensorProto], report: ModelReport) -> None:
    # Exact duplicates first: the rest compares one representative of each.
    by_digest: dict[tuple, list[onnx.TensorProto]] = defaultdict(list)
    arrays: dict[int, np.ndarray] = {}  # by id(): a Constant's output may share an initializer's name
    for tensor in members:
        array = np.ascontiguousarray(numpy_helper.to_array(tensor))
        key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(array.tobytes()).hexdigest())
        by_digest[key].append(tensor)
        if len(by_digest[key]) == 1:
            arrays[id(tensor)] = array.astype(np.float32)
    unique = [copies[0] for copies in by_digest.values()]
    for copies in by_digest.values():
        if len(copies) > 1:
            _add(report.exact, [(copies[0].name, other.name) for other in copies[1:]], _nbytes(copies[0]))
    rounding, transposed, scaled = [], [], []
    for i, first in enumerate(unique):
        a = arrays[id(first)]
        for second in unique[i + 1 :]:
            b = arrays[id(second)]
            candidates = []
            if a.shape == b.shape:
                candidates.append((b, False))
            if a.ndim == 2 and a.shape == b.shape[::-1]:
                candidates.append((np.ascontiguousarray(b.T), True))
            for other, is_transposed in candidates:
                kind = _classify(a, other, report)
                pair = (first.name, second.name)
                if kind == "rounding":
                    (transposed if is_transposed else rounding).append(pair)
                elif kind == "exact" and is_transposed:
                    transposed.append(pair)
                elif kind == "scaled":
                    scaled.append(pair)
    size = _nbytes(unique[0])
    _add(report.rounding, rounding, size)
    _add(report.transposed, transposed, size)
    # A scaled copy saves its bytes less the scale vector it needs (one float per channel).
    _add(report.scaled, scaled, size, overhead=4 * max(unique[0].dims))
    _add(report.near_total, rounding + transposed + scaled, size)


def _classify(a: np.ndarray, b: np.ndarray, report: ModelReport) -> str | None:
    """'exact', 'rounding', 'scaled' or None for two same-shape arrays; tracks the nearest misses."""
    peak = float(np.abs(a).max())
    difference = float(np.abs(a - b).max()) / peak if peak else float(np.abs(b).max() > 0)
    if difference == 0:
        return "exact"
    if report.nearest_difference is None or difference < report.nearest_difference:
        report.nearest_difference = difference
    if difference <= ROUNDING:
        return "rounding"
    if a.ndim == 1:
        channels = [(a[None, :], b[None, :])]  # one channel: a single scale for the whole vector
    else:
        channels = [(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))]
        channels.append((np.moveaxis(a, 1, 0).reshape(a.shape[1], -1), np.moveaxis(b, 1, 0).reshape(b.shape[1], -1)))
    for x, y in channels:
        cosine = _worst_cosine(x, y)
        # Nearest misses of matrices only: two norm gammas near 1 are close in angle and
        # would hide how far the weights are.
        if a.ndim > 1 and (report.nearest_cosine is None or cosine > report.nearest_cosine):
            report.nearest_cosine = cosine
        if cosine >= 1 - COSINE:
            scale = np.einsum("ij,ij->i", x, y, dtype=np.float64) / np.maximum(
                np.einsum("ij,ij->i", y, y, dtype=np.float64), 1e-300
            )
            if float(np.abs(x - scale[:, None] * y).max()) <= SCALED_RESIDUAL * peak:
                return "scaled"
    return None


def _worst_cosine(x: np.ndarray, y: np.ndarray) -> float:
    """The smallest |cosine| between matching rows of x and y (rows zero in both count as 1)."""
    dots = np.abs(np.einsum("ij,ij->i", x, y, dtype=np.float64))
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64) * np.einsum("ij,ij->i", y, y, dtype=np.float64))
    both_zero = (norms == 0) & (dots == 0)
    cosines = np.where(both_zero, 1.0, dots / np.where(norms == 0, 1.0, norms))
    return float(cosines.min())


def _add(found: Found, pairs: list[tuple[str, str]], size: int, overhead: int = 0) -> None:
    """Add ``pairs`` of tensors of ``size`` bytes: each cluster keeps one tensor, the others are saved."""
    if not pairs:
        return
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for first, second in pairs:
        parent[root(first)] = root(second)
    clusters: dict[str, int] = defaultdict(int)
    for name in list(parent):
        clusters[root(name)] += 1
    found.pairs += len(pairs)
    found.tensors += sum(clusters.values())
    found.bytes_saved += sum((count - 1) * (size - overhead) for count in clusters.values())
    found.examples += [f"{a} ~ {b}" for a, b in pairs[: max(0, 3 - len(found.examples))]]


def _row(r: ModelReport) -> str:
    def cell(found: Found) -> str:
        return f"{found.pairs} ({found.bytes_saved / 1e6:.3f} MB)" if found.pairs else "0"

    nearest = "-" if r.nearest_difference is None else f"{r.nearest_difference:.2g}"
    cosine = "-" if r.nearest_cosine is None else f"{r.nearest_cosine:.3f}"
    return (
        f"| {r.model} | {r.float_tensors} | {r.float_bytes / 1e6:.1f} | {cell(r.exact)} | {cell(r.rounding)} "
        f"| {cell(r.transposed)} | {cell(r.scaled)} | {cell(r.near_total)} | {nearest} | {cosine} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--json", type=Path, help="write the reports here")
    args = parser.parse_args()
    print("| model | float tensors | MB | exact pairs (merged already) | rounding | transposed | scaled ", end="")
    print("| near-duplicates in all | nearest difference | nearest channel cosine |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    reports = []
    for path in args.models:
        report = scan(path)
        reports.append(report)
        print(_row(report), flush=True)
        for kind in ("exact", "rounding", "transposed", "scaled"):  # a few pairs of each, by name
            for example in getattr(report, kind).examples:
                print(f"    {kind}: {example}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=1))


if __name__ == "__main__":
    main()

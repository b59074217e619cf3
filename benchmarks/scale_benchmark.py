"""Scale: seconds per default pass on long chains of transformer-like blocks (2.5k to 20k nodes).

Builds ``chain_model(nodes)``: a chain of blocks over a ``[batch, sequence, 8]`` float
tensor, each block giving every default pass something to do or refuse (the node kinds
a decoder layer exports):

- ``Identity`` (remove-identity); ``Add`` of two initializers (fold-constants);
- ``Mul`` by a ``Constant`` 1 (simplify-ops removes it; lift-constants lifts the others);
- ``Relu``, ``MatMul`` by a weight repeated every four blocks (deduplicate-initializers);
- a head split ``Reshape`` whose target is computed from ``Shape``/``Gather``/``Concat``
  (simplify-shapes), the same ``Shape`` chain spelled twice (merge-subexpressions),
  ``Transpose`` pairs that cancel (simplify-ops);
- a single-head-pair attention ``Softmax(Q @ K^T * s) @ V`` (fuse-attention, pack-qkv);
- rotate-half arithmetic ``x * cos + cat(-x2, x1) * sin`` (fuse-rotary-embedding);
- a residual ``Add`` and a decomposed RMSNorm (fuse-rms-norm, fuse-skip-rms-norm); every
  fourth block's mean is over another axis, a near miss the fusions report.

Usage::

    python benchmarks/scale_benchmark.py [--nodes 2500,5000,10000,20000] [--passes NAME,...]
        [--verify] [--decoder PATH.onnx] [--profile PASS]

Per size it prints each pass's seconds (the pipeline's own timing, ``--no-verify``), the
total, and with ``--verify`` the whole optimize call's seconds on generated inputs.
``--decoder`` adds an exported model (e.g. a 30-layer decoder) to the rows.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from optimizer.api import optimize_with_report  # noqa: E402

HIDDEN = 8
HEADS = 2
OPSET = 18


def _block(i: int, x: str, nodes: list, inits: list) -> str:
    """One block reading ``x`` (``[B, S, 8]``); appends its nodes and initializers, returns its output."""
    p = f"b{i}_"

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, p + name))
        return p + name

    def node(op: str, inputs: list[str], outputs: int | list[str] = 1, **attrs) -> list[str]:
        names = [f"{p}{op.lower()}{len(nodes)}_{k}" for k in range(outputs)] if isinstance(outputs, int) else outputs
        nodes.append(helper.make_node(op, inputs, names, name=f"{p}{op}{len(nodes)}", **attrs))
        return names

    rng = np.random.default_rng(i % 4)  # weights repeat every four blocks
    (ident,) = node("Identity", [x])
    (bias,) = node(
        "Add", [init("bias_a", np.full(HIDDEN, 0.01, np.float32)), init("bias_b", np.zeros(HIDDEN, np.float32))]
    )
    (shifted,) = node("Add", [ident, bias])
    (one,) = node("Constant", [], value=numpy_helper.from_array(np.array(1.0, np.float32)))
    (scaled,) = node("Mul", [shifted, one])
    (act,) = node("Relu", [scaled])
    weight = init("w", (rng.standard_normal((HIDDEN, HIDDEN)) * 0.3).astype(np.float32))
    (proj,) = node("MatMul", [act, weight])

    def computed_target(tail: list[int]) -> str:
        (shape,) = node("Shape", [proj])
        dims = []
        for axis in (0, 1):
            (dim,) = node("Gather", [shape, init(f"axis{axis}_{len(nodes)}", np.array(axis, np.int64))], axis=0)
            (dims_1d,) = node("Unsqueeze", [dim, init(f"unsq{len(nodes)}", np.array([0], np.int64))])
            dims.append(dims_1d)
        (target,) = node("Concat", [*dims, init(f"tail{len(nodes)}", np.array(tail, np.int64))], axis=0)
        return target

    (heads,) = node("Reshape", [proj, computed_target([HEADS, HIDDEN // HEADS])])
    (bnsd,) = node("Transpose", [heads], perm=[0, 2, 1, 3])
    (back,) = node("Transpose", [bnsd], perm=[0, 2, 1, 3])
    (again,) = node("Transpose", [back], perm=[0, 2, 1, 3])
    # rotate_half(q) * sin + q * cos
    half = HIDDEN // HEADS // 2
    if i % 2:
        first, second = node("Split", [again, init("split", np.array([half, half], np.int64))], 2, axis=-1)
    else:  # the legacy exporter's spelling: two Slices (simplify-ops makes them a Split)
        last = init("last", np.array([-1], np.int64))
        (first,) = node(
            "Slice", [again, init("zero", np.array([0], np.int64)), init("h", np.array([half], np.int64)), last]
        )
        (second,) = node(
            "Slice", [again, init("h2", np.array([half], np.int64)), init("end", np.array([2 * half], np.int64)), last]
        )
    (negated,) = node("Neg", [second])
    (rotated,) = node("Concat", [negated, first], axis=-1)
    angles = np.arange(half * 2, dtype=np.float32) * 0.1
    (sin_part,) = node("Mul", [rotated, init("sin", np.sin(angles))])
    (cos_part,) = node("Mul", [again, init("cos", np.cos(angles))])
    (query,) = node("Add", [cos_part, sin_part])
    (key_t,) = node("Transpose", [heads], perm=[0, 2, 3, 1])
    (value,) = node("Transpose", [heads], perm=[0, 2, 1, 3])  # the same as bnsd: merge-subexpressions
    (scores,) = node("MatMul", [query, key_t])
    (scaled_scores,) = node("Mul", [scores, init("scale", np.array(0.5, np.float32))])
    (probs,) = node("Softmax", [scaled_scores], axis=-1)
    (context,) = node("MatMul", [probs, value])
    (merged_heads,) = node("Transpose", [context], perm=[0, 2, 1, 3])
    (merged,) = node("Reshape", [merged_heads, computed_target([HIDDEN])])
    (residual,) = node("Add", [merged, x])
    (square,) = node("Pow", [residual, init("two", np.array(2.0, np.float32))])
    # A near miss: the mean is not over the last axis (counted from the end: over axis 1 of an input whose rank
    # no shape records, the norm fusion would run again with inferred shapes to find out).
    axis = -2 if i % 4 == 3 else -1
    (mean,) = node("ReduceMean", [square, init("axes", np.array([axis], np.int64))], keepdims=1)
    (eps,) = node("Constant", [], value=numpy_helper.from_array(np.array(1e-6, np.float32)))
    (shifted_mean,) = node("Add", [mean, eps])
    (root,) = node("Sqrt", [shifted_mean])
    (normalized,) = node("Div", [residual, root])
    (out,) = node("Mul", [normalized, init("gamma", np.ones(HIDDEN, np.float32))])
    return out


def _nodes_per_block() -> int:
    nodes: list = []
    _block(0, "x", nodes, [])
    return len(nodes)


def chain_model(nodes: int) -> ir.Model:
    """A chain of blocks with about ``nodes`` nodes (rounded up to whole blocks) over ``x: [batch, sequence, 8]``."""
    blocks = max(1, -(-nodes // _nodes_per_block()))
    graph_nodes: list = []
    inits: list = []
    x = "x"
    for i in range(blocks):
        x = _block(i, x, graph_nodes, inits)
    graph_nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    graph = helper.make_graph(
        graph_nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
    return ir.from_proto(proto)


def run(model: ir.Model, passes: list[str] | None, verify: bool) -> tuple[dict[str, float], float, int, int]:
    """Per-pass seconds, the whole call's seconds, nodes before and after."""
    started = time.perf_counter()
    _, report = optimize_with_report(model, passes, verify=verify)
    total = time.perf_counter() - started
    return {record.name: record.seconds for record in report.passes}, total, report.nodes_before, report.nodes_after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="2500,5000,10000,20000", help="comma-separated chain sizes")
    parser.add_argument("--passes", default=None, help="comma-separated passes (default: the default pipeline)")
    parser.add_argument("--verify", action="store_true", help="also time the optimize call with verification")
    parser.add_argument("--decoder", action="append", default=[], help="an exported model to time too")
    parser.add_argument("--profile", default=None, help="cProfile one pass (by name) at each size")
    args = parser.parse_args()
    passes = args.passes.split(",") if args.passes else None
    models = [(f"chain {n}", lambda n=n: chain_model(int(n))) for n in args.nodes.split(",") if n]
    models += [(Path(path).name, lambda path=path: ir.load(path)) for path in args.decoder]
    for label, build in models:
        model = build()
        if args.profile:
            profile(model, args.profile)
            continue
        seconds, total, before, after = run(model, passes, verify=False)
        row = "  ".join(f"{name} {s:.2f}" for name, s in seconds.items())
        print(f"{label}: {before} -> {after} nodes; passes {sum(seconds.values()):.1f} s (call {total:.1f} s)")
        print(f"  {row}", flush=True)
        if args.verify:
            seconds, total, _, _ = run(model, passes, verify=True)
            print(f"  verified: passes {sum(seconds.values()):.1f} s, call {total:.1f} s", flush=True)


def profile(model: ir.Model, name: str) -> None:
    """The top of a cProfile of pass ``name`` run alone on ``model``."""
    from optimizer.protocol import PassContext
    from passes.catalog import CATALOG

    spec = next(spec for spec in CATALOG if spec.name == name)
    instance = spec.factory(PassContext())
    profiler = cProfile.Profile()
    profiler.enable()
    instance(model)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()

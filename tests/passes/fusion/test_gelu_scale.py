"""fuse-gelu's work per activation on graphs full of Tanh that are no GELU (speed itself lives in benchmarks/).

The guard is structural, not a timing: Python function calls (as in tests/test_scale.py) per
Tanh. A Tanh after a chain of twenty scalings is a QuickGELU candidate at each of the chain's
values (each is some c*x); its output walked for each cost about 88,000 calls per Tanh, where
no product follows the Tanh and so no output can be GELU's. Before the QuickGELU-as-a-tanh
form it cost about 10,000; now about 9,500 (12,300 where a product follows, whose candidates' outputs are walked).
Counts do not depend on the machine's load.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.gelu import GeluFusion

TANHS = 10
# Three times today's count; the per-candidate output walks took nine times it.
MAX_CALLS_PER_TANH = 30_000


def _tanhs_after_scalings(count: int, read_elsewhere: bool = False, multiplied: bool = False) -> ir.Model:
    """``count`` blocks of: twenty scalings by 1.0001, a Tanh, twenty Adds of the last scaled value (a review's
    perf.py wide_arith); with ``read_elsewhere`` every scaled value is also read by a running Max, with
    ``multiplied`` the Tanh is multiplied by the last scaled value before the Adds."""
    nodes: list[onnx.NodeProto] = []

    def op(op_type: str, *inputs: str) -> str:
        name = f"v{len(nodes)}"
        nodes.append(helper.make_node(op_type, list(inputs), [name]))
        return name

    x = "x"
    for _ in range(count):
        scaled, largest = x, None
        for _ in range(20):
            scaled = op("Mul", scaled, "k")
            if read_elsewhere:
                largest = scaled if largest is None else op("Max", largest, scaled)
        t = op("Tanh", scaled)
        if multiplied:
            t = op("Mul", t, scaled)
        for _ in range(20):
            t = op("Add", t, scaled)
        x = op("Add", t, largest) if read_elsewhere else t
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tanhs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
        [numpy_helper.from_array(np.asarray(1.0001, dtype=np.float32), "k")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _calls(model: ir.Model) -> int:
    calls = 0

    def count(frame, event, arg) -> None:  # noqa: ANN001
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(count)
    try:
        result = GeluFusion()(model)
    finally:
        sys.setprofile(None)
    assert not result.modified and result.refusals == []
    return calls


@pytest.mark.parametrize("read_elsewhere", [False, True], ids=["read-once", "read-elsewhere"])
def test_a_tanh_after_scalings_that_is_only_added_to_costs_no_walk_per_candidate(read_elsewhere):
    calls = _calls(_tanhs_after_scalings(TANHS, read_elsewhere=read_elsewhere))
    assert calls / TANHS < MAX_CALLS_PER_TANH, calls / TANHS


def test_a_tanh_after_scalings_multiplied_by_them_is_walked_for_few_candidates():
    # A product follows each Tanh, so the QuickGELU candidates' outputs are walked; the first walk rules out the
    # scalings below it (their x*A coefficient is the first's times a known factor). 41,000 calls per Tanh with
    # a walk for each, about 12,300 now.
    calls = _calls(_tanhs_after_scalings(TANHS, multiplied=True))
    assert calls / TANHS < MAX_CALLS_PER_TANH, calls / TANHS

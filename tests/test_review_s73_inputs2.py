"""Review s73 (inputs2): generated verification inputs where the graph compares a reduction of an input or a length
with a constant (``optimizer/compared_inputs.py``'s ``_hold_reductions`` and ``compared_lengths``,
``optimizer/api.py``'s ``_add_other_reduced_side`` and ``_add_compared_lengths``).

1. Fixed: a reduction of a float input compared with a constant threshold (preprocessing's ``if x.max() > 1: x /=
   255``; ``ReduceMin``, ``ReduceMean`` over some axes, ``ReduceSum``, ``ReduceL2``, arithmetic after it) fell on one
   side in every generated set, and a rewrite wrong on the other side verified. Each slice is now held just below the
   threshold in the sets of seed 0 and just above in those of seed 1; a model of fixed dims (no second binding) gets a
   set of seed 1 beside the first.
2. Fixed: a length read through ``Shape`` or ``Size`` and compared with a constant (``Equal(Shape(x)[1], 16)``, an
   exported decode step's ``If(seq_len == 1)``, ``Greater(Size(x), 1536)``, and the other direction, ``Less(len, 8)``
   where every drawn length is 8 or more; of a dim without a name too) was never drawn at it: verification adds a set
   at each length that tells the comparison apart and goes another way than every set's (up to 4096, four sets).
3. Unchanged: an input reduced but not compared, or a shape read but not compared, draws and verifies as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.compared_inputs import UNNAMED_LENGTH, compared_lengths
from optimizer.inputs import make_inputs
from optimizer.pipeline import STATUS_APPLIED, STATUS_ROLLED_BACK
from tests.helpers import optimize_with_rewrite


def _switched(nodes, constants, shape=("L",), output=None) -> onnx.ModelProto:
    """``y = Where(cond, hit, miss)``, ``cond`` computed by ``nodes`` from float input ``x`` of ``shape``."""
    nodes = [*nodes, helper.make_node("Where", ["cond", "hit", "miss"], ["y"])]
    initializers = [numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items()]
    initializers += [numpy_helper.from_array(np.float32(1.0), "hit"), numpy_helper.from_array(np.float32(0.0), "miss")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape if output is None else output))]
    graph = helper.make_graph(nodes, "switched", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _reduced(op: str, comparison: str, threshold: float, shape=("L",), axes=None, scale=None) -> onnx.ModelProto:
    """``cond = comparison(op(x, axes) [/ scale], threshold)``, keepdims."""
    constants = {"c": np.float32(threshold)}
    inputs = ["x"]
    if axes is not None:
        constants["axes"], inputs = np.asarray(axes, np.int64), ["x", "axes"]
    nodes = [helper.make_node(op, inputs, ["r"], keepdims=1)]
    if scale is not None:
        constants["scale"] = np.float32(scale)
        nodes.append(helper.make_node("Div", ["r", "scale"], ["scaled"]))
    nodes.append(helper.make_node(comparison, [nodes[-1].output[0], "c"], ["cond"]))
    reduced = [1 if axes is None or axis in axes else dim for axis, dim in enumerate(shape)]
    return _switched(nodes, constants, shape, output=reduced)


def _length(comparison: str, constant: int, read: str = "Shape", shape=("B", "L")) -> onnx.ModelProto:
    """``cond = comparison(Shape(x)[1], constant)`` (``Size(x)`` where ``read`` is ``Size``)."""
    if read == "Shape":
        nodes = [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "at"], ["n"], axis=0),
        ]
        constants = {"at": np.int64(1)}
    else:
        nodes, constants = [helper.make_node("Size", ["x"], ["n"])], {}
    nodes.append(helper.make_node(comparison, ["n", "c"], ["cond"]))
    return _switched(nodes, {**constants, "c": np.int64(constant)}, shape, output=[])


def _break_hit(model: ir.Model) -> None:
    """The value taken where the condition holds changed: wrong only where it does."""
    model.graph.initializers["hit"].const_value = ir.Tensor(np.array(5.0, np.float32), name="hit")


def _keep(model: ir.Model) -> None:
    model.graph.name = "renamed"


@pytest.mark.parametrize(
    "model, rewrite",
    [
        pytest.param(lambda: _reduced("ReduceMax", "Greater", 1.0, scale=255), _break_hit, id="max-over-255"),
        pytest.param(lambda: _reduced("ReduceMin", "Less", -10.0), _break_hit, id="min-below"),
        pytest.param(lambda: _reduced("ReduceMean", "Greater", 5.0, ("B", "L"), axes=[1]), _break_hit, id="mean-axis"),
        pytest.param(lambda: _reduced("ReduceSum", "Greater", 100.0), _break_hit, id="sum"),
        pytest.param(lambda: _reduced("ReduceL2", "LessOrEqual", 3.0), _break_hit, id="l2"),
        pytest.param(lambda: _reduced("ReduceL2", "Less", 1e-6), _break_hit, id="l2-under-an-epsilon"),
        pytest.param(lambda: _reduced("ReduceMax", "Greater", 10.0, shape=(4, 8)), _break_hit, id="fixed-dims"),
    ],
)
def test_a_rewrite_wrong_past_a_reduced_threshold_is_rolled_back(tmp_path: Path, model, rewrite) -> None:
    # Before: the reduction on one side in every set (the maximum of 128 normals never past 10), and this verified.
    record = optimize_with_rewrite(model(), rewrite, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: _length("Less", 8), id="shorter-than-8"),
        pytest.param(lambda: _length("Greater", 512), id="longer-than-512"),
        pytest.param(lambda: _length("Equal", 1536, read="Size", shape=(3, "L")), id="size-equal"),
        pytest.param(lambda: _length("Less", 8, shape=(1, None)), id="unnamed-shorter-than-8"),
    ],
)
def test_a_rewrite_wrong_where_a_length_passes_a_constant_is_rolled_back(tmp_path: Path, model) -> None:
    record = optimize_with_rewrite(model(), _break_hit, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: _reduced("ReduceMax", "Greater", 10.0, shape=(4, 8)), id="reduction"),
        pytest.param(lambda: _length("Equal", 16), id="length"),
    ],
)
def test_a_correct_rewrite_past_a_compared_reduction_or_length_still_verifies(tmp_path: Path, model) -> None:
    record = optimize_with_rewrite(model(), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def test_a_reduction_or_a_shape_not_compared_draws_and_adds_as_before():
    bare = make_inputs(ir.from_proto(_switched([helper.make_node("IsInf", ["x"], ["cond"])], {})), seed=1)["x"]
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["r"], keepdims=1),
        helper.make_node("Add", ["r", "c"], ["s"]),
        helper.make_node("IsInf", ["s"], ["cond"]),
    ]
    uncompared = ir.from_proto(_switched(nodes, {"c": np.float32(10.0)}, output=[1]))
    assert make_inputs(uncompared, seed=1)["x"].tobytes() == bare.tobytes()
    assert compared_lengths(uncompared) == {}
    assert compared_lengths(ir.from_proto(_length("Greater", 100_000))) == {}  # no plausible length: a limit


def test_a_compared_length_is_drawn_at_the_lengths_that_tell_it_apart():
    shorter = ir.from_proto(_length("Less", 8))
    assert compared_lengths(shorter) == {"L": [7, 8]}
    assert compared_lengths(shorter, {"L": {128, 257}}) == {"L": [7]}  # 8 goes the way 128 goes: no set for it
    assert compared_lengths(ir.from_proto(_length("Less", 8, shape=(None, None)))) == {UNNAMED_LENGTH: [7, 8]}
    assert compared_lengths(ir.from_proto(_length("Equal", 1536, read="Size", shape=(3, "L")))) == {"L": [512]}

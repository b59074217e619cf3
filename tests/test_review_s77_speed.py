"""Review s77 (library speedups): input generation's dim checks.

``optimizer.inputs`` asks of every input dim whether it is a named symbolic dim. onnx-ir's ``SymbolicDim`` derives
from a typing ``Protocol``, whose ``isinstance`` runs Python code for each int, so the check now rules ints out first
(``_symbolic``). These tests hold it to ``isinstance`` on every kind of dim a shape holds, and hold what input
generation binds on a model whose shapes mix them.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer import inputs
from optimizer.inputs import batch_dims, bind_dims, make_inputs, symbolic_dims


class _NamedDim(ir.SymbolicDim):
    """A subclass: the check must not take the exact class for the only one."""


@pytest.mark.parametrize(
    "dim",
    [0, 7, -1, True, np.int64(3), None, "batch", ir.SymbolicDim("batch"), ir.SymbolicDim(None), _NamedDim("n")],
    ids=repr,
)
def test_the_dim_check_says_what_isinstance_says(dim):
    assert inputs._symbolic(dim) is isinstance(dim, ir.SymbolicDim)


def _model() -> ir.Model:
    """``ids [batch, sequence]`` and ``mask [batch, 1, sequence, total]`` (int64, with an unnamed and a fixed axis)
    added into ``out``."""
    ids = ir.Value(name="ids", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["batch", "sequence"]))
    mask = ir.Value(name="mask", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["batch", 1, None, "total"]))
    reduce = ir.node("ReduceSum", [mask], attributes={"keepdims": 0, "axes": [1, 2, 3]})
    reduce.outputs[0].name = "summed"
    add = ir.node("Add", [ids, reduce.outputs[0]])
    add.outputs[0].name, add.outputs[0].dtype = "out", ir.DataType.FLOAT
    add.outputs[0].shape = ir.Shape(["batch", "sequence"])
    graph = ir.Graph([ids, mask], [add.outputs[0]], nodes=[reduce, add], opset_imports={"": 18})
    return ir.Model(graph, ir_version=10)


def test_input_generation_reads_the_named_dims_of_mixed_shapes():
    model = _model()
    assert symbolic_dims(model) == ["batch", "sequence", "total"]
    assert batch_dims(model) == ["batch"]
    bound = bind_dims(model)
    assert set(bound) == {"batch", "sequence", "total"}
    generated = make_inputs(model, bound)
    assert generated["ids"].shape == (bound["batch"], bound["sequence"])
    assert generated["mask"].shape[0] == bound["batch"] and generated["mask"].shape[3] == bound["total"]

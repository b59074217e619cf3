"""deduplicate-initializers: identical tensors are merged, near-identical ones are not."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from optimizer.inputs import make_inputs
from passes.initializer_deduplication import DeduplicateInitializersPass, ShareTransposedInitializersPass
from tests.helpers import assert_same_outputs, op_types


def _model(weights: dict[str, np.ndarray]) -> ir.Model:
    """y = x @ w0 + x @ w1 + ... with the given [4, 4] (or broadcastable) weights."""
    nodes, terms = [], []
    for name in weights:
        nodes.append(onnx.helper.make_node("MatMul", ["x", name], [f"{name}_out"]))
        terms.append(f"{name}_out")
    total = terms[0]
    for index, term in enumerate(terms[1:]):
        nodes.append(onnx.helper.make_node("Add", [total, term], [f"sum{index}"]))
        total = f"sum{index}"
    nodes.append(onnx.helper.make_node("Identity", [total], ["y"]))
    graph = onnx.helper.make_graph(
        nodes,
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_identical_weights_are_merged():
    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    model = _model({"a": w, "b": w.copy(), "c": w + 1})
    after = DeduplicateInitializersPass()(model.clone()).model
    assert sorted(after.graph.initializers) == ["a", "c"]
    matmuls = [node for node in after.graph if node.op_type == "MatMul"]
    assert matmuls[0].inputs[1] is matmuls[1].inputs[1]
    assert_same_outputs(model, after, {"x": np.ones((2, 4), np.float32)})


def test_transposed_view_weights_are_merged():
    # onnx-ir's own pass raised "ndarray is not C-contiguous" on such tensors.
    base = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    model = _model({"a": np.ascontiguousarray(base.T), "b": base})
    model.graph.initializers["b"].const_value = ir.tensor(base.T, name="b")
    after = DeduplicateInitializersPass()(model.clone()).model
    assert sorted(after.graph.initializers) == ["a"]
    assert_same_outputs(model, after, {"x": np.ones((2, 4), np.float32)})


def test_same_bytes_different_shape_are_kept():
    # Scalar 1.0 and [1] of 1.0 share bytes but not shape.
    model = _model({"a": np.ones((4, 4), np.float32)})
    model.graph.initializers["s"] = ir.Value(name="s", const_value=ir.tensor(np.float32(1.0), name="s"))
    model.graph.initializers["v"] = ir.Value(name="v", const_value=ir.tensor(np.array([1.0], np.float32), name="v"))
    after = DeduplicateInitializersPass()(model.clone()).model
    assert {"s", "v"} <= set(after.graph.initializers)


def test_signed_zero_is_not_merged_with_zero():
    model = _model({"a": np.zeros((4, 4), np.float32), "b": np.full((4, 4), -0.0, np.float32)})
    after = DeduplicateInitializersPass()(model.clone()).model
    assert sorted(after.graph.initializers) == ["a", "b"]


def test_graph_input_initializers_are_kept():
    w = np.ones((4, 4), np.float32)
    model = _model({"a": w, "b": w.copy()})
    model.graph.inputs.append(model.graph.initializers["b"])
    result = DeduplicateInitializersPass()(model.clone())
    assert not result.modified


def test_exported_models_keep_their_outputs(exported_model):
    name, model = exported_model
    after = DeduplicateInitializersPass()(model.clone()).model
    assert op_types(after) == op_types(model)
    assert_same_outputs(model, after, make_inputs(model, {"sequence": 16}))


# -- share-transposed-initializers ------------------------------------------------------------


def _tied_lookup(head: np.ndarray, head_reader: str = "MatMul") -> ir.Model:
    """y = Gather(table, ids) @ head, where ``head`` is read by ``head_reader`` ("MatMul" or "Add")."""
    table = np.random.default_rng(2).standard_normal((64, 32)).astype(np.float32)
    second = ["x", "head"] if head_reader == "MatMul" else ["head", "head"]
    nodes = [
        onnx.helper.make_node("Gather", ["table", "ids"], ["rows"]),
        onnx.helper.make_node(head_reader, second, ["scores"]),
        onnx.helper.make_node("Identity", ["rows"], ["embedded"]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "g",
        [
            onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N"]),
            onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 32]),
        ],
        [
            onnx.helper.make_tensor_value_info("embedded", onnx.TensorProto.FLOAT, ["N", 32]),
            onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, None),
        ],
        [onnx.numpy_helper.from_array(table, "table"), onnx.numpy_helper.from_array(head(table), "head")],
    )
    return ir.from_proto(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))


def _lookup_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"ids": rng.integers(0, 64, 5), "x": rng.standard_normal((5, 32)).astype(np.float32)}


def test_a_transposed_copy_read_as_a_weight_becomes_a_transpose_of_the_table():
    model = _tied_lookup(lambda table: np.ascontiguousarray(table.T))
    after = ShareTransposedInitializersPass()(model.clone()).model
    assert sorted(after.graph.initializers) == ["table"]
    matmul = next(node for node in after.graph if node.op_type == "MatMul")
    transpose = matmul.inputs[1].producer()
    assert transpose.op_type == "Transpose" and transpose.inputs[0].name == "table"
    assert_same_outputs(model, after, _lookup_inputs(), rtol=0, atol=0)


def test_a_copy_off_by_one_value_is_kept():
    def almost(table: np.ndarray) -> np.ndarray:
        head = np.ascontiguousarray(table.T)
        head[3, 5] = np.nextafter(head[3, 5], np.float32(np.inf))
        return head

    result = ShareTransposedInitializersPass()(_tied_lookup(almost))
    assert not result.modified
    assert sorted(result.model.graph.initializers) == ["head", "table"]


def test_a_transposed_copy_read_by_other_ops_is_kept():
    # An Add reads it: no reader would see through a Transpose, so both stay.
    result = ShareTransposedInitializersPass()(_tied_lookup(lambda table: np.ascontiguousarray(table.T), "Add"))
    assert not result.modified

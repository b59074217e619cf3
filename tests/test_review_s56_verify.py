"""Review s56 (verification core): wrong rewrites that verification accepted as verified.

- An output holding a large finite fill (a suppressed token's logit written as -1e9 or float32's lowest) made the RMS
  floor of the tolerance huge: a rewrite scaling every other logit by 1.5 verified. Fills now lend no tolerance.
- Integer inputs that index no table were drawn as 0 or 1, a uint8 image too: a rewrite adding in uint8 (wrapping
  past 255) where the model widened first verified. 8- and 16-bit integer data are now drawn over their whole range,
  where ONNX Runtime runs the original on that (else 0 or 1, with a note).
- A rewrite that declared an output ``[1, 64]`` for ``["batch", 64]`` verified (values compare equal; ONNX Runtime
  only warns): a declared dim the model does not compute on an input set now rolls the pass back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import make_inputs
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from optimizer.verify import compare_outputs
from tests.helpers import optimize_with_rewrite


def _optimize_with(model: onnx.ModelProto, rewrite, folder: Path):
    """The record of ``rewrite`` run alone as a pass (``tests.helpers.optimize_with_rewrite``)."""
    return optimize_with_rewrite(model, rewrite, folder).passes[-1]


def _nodes(model: ir.Model, op_type: str) -> list[ir.Node]:
    return [node for node in model.graph if node.op_type == op_type]


def _constant(model: ir.Model, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array))
    model.graph.register_initializer(value)
    return value


# --- A fill in an output ---------------------------------------------------------------------------------------


def _suppressed_logits(fill: float) -> onnx.ModelProto:
    """Logits of 64 tokens, the first suppressed: written as ``fill``."""
    rng = np.random.default_rng(0)
    allowed = np.ones(64, bool)
    allowed[0] = False
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["raw"]), helper.make_node("Where", ["allowed", "raw", "fill"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        [
            numpy_helper.from_array(rng.standard_normal((16, 64)).astype(np.float32), "w"),
            numpy_helper.from_array(allowed, "allowed"),
            numpy_helper.from_array(np.array(fill, np.float32), "fill"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _scale_logits(factor: float):
    def rewrite(model: ir.Model) -> None:
        matmul, where = _nodes(model, "MatMul")[0], _nodes(model, "Where")[0]
        scaled = ir.node("Mul", [matmul.outputs[0], _constant(model, "factor", np.array(factor, np.float32))])
        model.graph.insert_after(matmul, scaled)
        where.replace_input_with(1, scaled.outputs[0])

    return rewrite


@pytest.mark.parametrize("fill", [-1e9, float(np.finfo(np.float32).min), -1e4])
def test_a_fill_in_an_output_lends_the_other_elements_no_tolerance(tmp_path, fill):
    record = _optimize_with(_suppressed_logits(fill), _scale_logits(1.5), tmp_path)
    assert record.status == STATUS_ROLLED_BACK
    assert "output 'y': max abs error" in record.detail


def test_an_exact_rewrite_beside_a_fill_still_verifies(tmp_path):
    record = _optimize_with(_suppressed_logits(-1e9), _scale_logits(1.0), tmp_path)
    assert record.status == STATUS_APPLIED


def test_large_activations_are_no_fills():
    # Values past 1e3 that are not far above the rest (boxes in pixels beside scores) keep their share of the RMS.
    before = np.array([[1500.0, 900.0, 0.5, 0.25]], np.float32)
    after = before + np.array([[0.0, 0.0, 0.05, 0.0]], np.float32)  # within 1e-4 of the RMS (~870)
    assert compare_outputs({"y": before}, {"y": after}).ok
    filled = np.array([[-1e9, 0.9, 0.5, 0.25]], np.float32)
    assert not compare_outputs({"y": filled}, {"y": filled + np.array([[0, 0, 0.05, 0]], np.float32)}).ok


# --- Raw integer data ------------------------------------------------------------------------------------------


def _uint8_image(table_rows: int | None = None) -> onnx.ModelProto:
    """A uint8 image widened to int32, shifted by 200, then convolved; with ``table_rows``, its pixels doubled also
    index a table of that many rows (a read generation does not follow)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Cast", ["image"], ["wide"], to=TensorProto.INT32),
        helper.make_node("Add", ["wide", "c200"], ["shifted"]),
        helper.make_node("Cast", ["shifted"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["f", "w"], ["y"]),
    ]
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(200, np.int32), "c200"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])]
    if table_rows is not None:
        nodes += [
            helper.make_node("Add", ["wide", "wide"], ["doubled"]),
            helper.make_node("Gather", ["table", "doubled"], ["looked_up"]),
        ]
        weights.append(numpy_helper.from_array(np.arange(table_rows, dtype=np.float32), "table"))
        outputs.append(helper.make_tensor_value_info("looked_up", TensorProto.FLOAT, ["batch", 3, 8, 8]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 3, 8, 8])], outputs, weights
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _add_in_uint8(model: ir.Model) -> None:
    """Moves the widening Cast after the Add: the Add then wraps past 255."""
    cast, add = _nodes(model, "Cast")[0], _nodes(model, "Add")[0]
    narrow_add = ir.node("Add", [model.graph.inputs[0], _constant(model, "c200_u8", np.array(200, np.uint8))])
    widen = ir.node("Cast", [narrow_add.outputs[0]], attributes={"to": ir.DataType.INT32})
    model.graph.insert_before(cast, [narrow_add, widen])
    add.outputs[0].replace_all_uses_with(widen.outputs[0])
    model.graph.remove(add, safe=True)


def test_uint8_pixels_are_drawn_over_their_whole_range():
    image = make_inputs(ir.from_proto(_uint8_image()))["image"]
    assert image.dtype == np.uint8 and image.min() < 16 and image.max() > 240


def test_a_rewrite_wrapping_uint8_pixels_is_rolled_back(tmp_path):
    record = _optimize_with(_uint8_image(), _add_in_uint8, tmp_path)
    assert record.status == STATUS_ROLLED_BACK
    assert "output 'y': max abs error" in record.detail


def test_raw_data_the_model_refuses_over_its_range_is_drawn_as_before_with_a_note():
    notes: list[str] = []
    image = make_inputs(ir.from_proto(_uint8_image(table_rows=4)), notes=notes)["image"]
    assert set(np.unique(image)) <= {0, 1}
    assert len(notes) == 1 and "'image': 0 or 1 only" in notes[0] and "--inputs" in notes[0]


# --- A declared output shape the model does not compute ---------------------------------------------------------


def _matmul() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_declared_batch_the_model_does_not_compute_is_rolled_back(tmp_path):
    def bake(model):
        model.graph.outputs[0].shape = ir.Shape([1, 64])

    record = _optimize_with(_matmul(), bake, tmp_path)
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "output 'y' is declared [1, 64], but the model computes [2, 64]" in record.detail


def test_a_declared_dim_the_model_computes_is_kept(tmp_path):
    def fill_in(model):
        model.graph.outputs[0].shape = ir.Shape(["batch", 64])  # as it was: nothing contradicted

    def name_it(model):
        model.graph.outputs[0].shape = ir.Shape(["n", 64])

    for folder, rewrite in (("a", fill_in), ("b", name_it)):
        (tmp_path / folder).mkdir()
        assert _optimize_with(_matmul(), rewrite, tmp_path / folder).status == STATUS_APPLIED

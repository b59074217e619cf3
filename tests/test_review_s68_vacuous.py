"""Review s68 (vacuous): verification that said nothing because the compared output saturates on generated inputs.

A classifier of large weights (vietcombank-captcha's tf2onnx CNN, five softmax heads) puts every Softmax at 1.0 and
0.0 on N(0, 1) inputs: a rewrite that doubled the logits, or moved one class's by 5, left every probability where it
was, and was applied as verified (an exact pass held to float32's tolerance). An ArgMax output alike shows only a
change that moves a largest logit. Approximate passes measured on such generated samples reported cosine 1.0000 with
only the generic "generated random inputs" warning.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

import optimizer
from optimizer.compare.html import _pipeline_section
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK, render_table
from optimizer.runtime import run_model
from tests.helpers import optimize_with_rewrite


def _classifier(head: str, scale: float = 10.0, classes: int = 10) -> onnx.ModelProto:
    """``head(relu(x @ w1) @ w2 + b2)``, weights of standard deviation ``scale``: at 10, the logits of N(0, 1) rows
    are thousands apart, and a Softmax or Sigmoid of them 0.0 or 1.0. ``head``: an op, ``Softmax+Identity``
    (tf2onnx's), ``exp/sum`` (a written-out softmax, magika's spelling) or ``TopK`` (its indices the output)."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal((32, 64)) * scale).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((64, classes)) * scale).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "b2"),
        numpy_helper.from_array(np.array([2], np.int64), "k"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["m"]),
        helper.make_node("Add", ["m", "b2"], ["logits"]),
    ]
    output_type, output_shape = TensorProto.FLOAT, ["batch", classes]
    if head == "Softmax+Identity":
        nodes += [helper.make_node("Softmax", ["logits"], ["p"], axis=-1), helper.make_node("Identity", ["p"], ["y"])]
    elif head == "exp/sum":
        nodes += [
            helper.make_node("ReduceMax", ["logits", "last"], ["top"], keepdims=1),
            helper.make_node("Sub", ["logits", "top"], ["shifted"]),
            helper.make_node("Exp", ["shifted"], ["e"]),
            helper.make_node("ReduceSum", ["e", "last"], ["total"], keepdims=1),
            helper.make_node("Div", ["e", "total"], ["y"]),
        ]
    elif head == "TopK":
        nodes.append(helper.make_node("TopK", ["logits", "k"], ["best", "y"], axis=-1))
        output_type, output_shape = TensorProto.INT64, ["batch", 2]
    elif head == "ArgMax":
        nodes.append(helper.make_node("ArgMax", ["logits"], ["y"], axis=-1, keepdims=0))
        output_type, output_shape = TensorProto.INT64, ["batch"]
    else:
        nodes.append(helper.make_node(head, ["logits"], ["y"], **({"axis": -1} if head == "Softmax" else {})))
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", output_type, output_shape)],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _doubled_logits(model: ir.Model) -> None:
    weight = model.graph.initializers["w2"]
    weight.const_value = ir.tensor(weight.const_value.numpy() * 2)


def _one_class_moved(model: ir.Model) -> None:
    bias = model.graph.initializers["b2"]
    values = bias.const_value.numpy().copy()
    values[3] += 5.0
    bias.const_value = ir.tensor(values)


@pytest.mark.parametrize("head", ["Softmax", "Sigmoid", "Softmax+Identity", "exp/sum"])
@pytest.mark.parametrize("rewrite", [_doubled_logits, _one_class_moved], ids=["doubled", "one-class-moved"])
def test_a_wrong_rewrite_behind_a_saturated_head_is_rolled_back(tmp_path: Path, head: str, rewrite):
    # Before: applied, verified at max |Δ| 0 (every probability stayed 1.0 or 0.0).
    record = optimize_with_rewrite(_classifier(head), rewrite, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    logits = "shifted" if head == "exp/sum" else "logits"  # the written-out softmax's: what its Exp reads
    assert f"the logits '{logits}'" in record.detail and "saturated" in record.detail, record.detail


@pytest.mark.parametrize("head", ["ArgMax", "TopK"])
def test_a_wrong_rewrite_behind_positions_is_rolled_back(tmp_path: Path, head: str):
    # One class's logit moved by 5 (of logits about 30 apart) left every position on the three generated rows as it
    # was, and was applied as verified; on other rows it picks class 3 where the model did not.
    model = _classifier(head, scale=1.0)
    rows = {"x": np.random.default_rng(5).standard_normal((256, 32)).astype(np.float32)}
    moved = ir.from_proto(model)
    _one_class_moved(moved)
    assert not np.array_equal(run_model(ir.from_proto(model), rows)["y"], run_model(moved, rows)["y"])
    record = optimize_with_rewrite(model, _one_class_moved, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert f"the logits 'logits' ({head} output 'y' reads them" in record.detail, record.detail


def _scaled_before_the_head(model: ir.Model) -> None:
    """``head(2 * logits)`` (the Exp's of a written-out softmax): the head's own input changed, the tensor it read
    (``logits``, ``shifted``) not."""
    (head,) = [node for node in model.graph if node.op_type in ("Softmax", "Sigmoid", "Exp")]
    two = ir.Value(name="two", const_value=ir.tensor(np.array(2.0, np.float32)))
    model.graph.register_initializer(two)
    scale = ir.node("Mul", [head.inputs[0], two], name="scale")
    model.graph.insert_before(head, scale)
    head.replace_input_with(0, scale.outputs[0])


@pytest.mark.parametrize("head", ["Softmax", "Sigmoid", "exp/sum"])
def test_a_wrong_rewrite_of_the_saturated_head_itself_is_rolled_back(tmp_path: Path, head: str):
    # A fusion of the head that drops a scale (a temperature) leaves the logits' tensor as it was: compared by
    # name, it matched; the head's own input is compared.
    record = optimize_with_rewrite(_classifier(head), _scaled_before_the_head, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "saturated" in record.detail, record.detail


def test_a_written_out_softmax_fused_behind_a_saturated_output_is_applied(tmp_path: Path):
    # exp(x - max) / sum into Softmax(x): the head's input is x, not x - max, and equal to it less its max.
    source = tmp_path / "in.onnx"
    onnx.save(_classifier("exp/sum"), source)
    _, report = optimizer.optimize_with_report(source, ["fuse-softmax"], output=tmp_path / "out.onnx")
    assert report.passes[0].status == STATUS_APPLIED, report.passes[0].detail
    assert "Softmax" in [node.op_type for node in onnx.load(tmp_path / "out.onnx").graph.node]


def _conv_classifier() -> onnx.ModelProto:
    """Conv, BatchNormalization, Relu, pooled, a Gemm of large weights and a saturated Softmax: simplify-ops folds the
    BatchNormalization into the Conv (a correct rewrite of the layers behind the logits)."""
    rng = np.random.default_rng(1)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "var"),
        numpy_helper.from_array((rng.standard_normal((5, 8)) * 50).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(5, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_correct_rewrite_behind_a_saturated_head_is_applied(tmp_path: Path):
    from optimizer.verify import hidden_logits

    model = _conv_classifier()
    inputs = {"x": np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)}
    assert set(hidden_logits(ir.from_proto(model), [run_model(ir.from_proto(model), inputs)])) == {"y"}
    source = tmp_path / "in.onnx"
    onnx.save(model, source)
    _, report = optimizer.optimize_with_report(source, ["simplify-ops"], output=tmp_path / "out.onnx")
    assert report.passes[0].status == STATUS_APPLIED, report.passes[0].detail
    assert "BatchNormalization" not in [node.op_type for node in onnx.load(tmp_path / "out.onnx").graph.node]


def test_an_unsaturated_head_adds_no_comparison(tmp_path: Path):
    # Weights of 0.1: probabilities that move. Nothing else compared, nothing said.
    from optimizer.verify import hidden_logits

    model = ir.from_proto(_classifier("Softmax", scale=0.1))
    inputs = {"x": np.random.default_rng(2).standard_normal((4, 32)).astype(np.float32)}
    assert hidden_logits(model, [run_model(model, inputs)]) == {}
    _, report = optimizer.optimize_with_report(model, quantize="dynamic")
    assert not any("saturated" in warning for warning in report.warnings), report.warnings


@pytest.fixture(scope="module")
def quantized_report():
    return optimizer.optimize_with_report(ir.from_proto(_classifier("Softmax")), quantize="dynamic")[1]


def test_a_cosine_on_saturated_generated_samples_says_so(quantized_report):
    # Before: cosine 1.0000 and only "measured on generated random inputs, which says little about accuracy".
    (record,) = [record for record in quantized_report.passes if record.name == "quantize-dynamic"]
    assert record.status == STATUS_APPLIED and record.cosine is not None
    (said,) = [warning for warning in quantized_report.warnings if "saturated" in warning]
    assert "output 'y' (Softmax: 100% of its values)" in said and "give --calibration" in said, said
    assert said in quantized_report.to_dict()["warnings"]
    console = Console(file=io.StringIO(), width=400)
    render_table(quantized_report, console)
    assert "the cosine says nothing of how far the logits" in console.file.getvalue()
    assert "the cosine says nothing of how far the logits" in _pipeline_section(quantized_report)


def test_a_compare_on_saturated_generated_inputs_says_so(tmp_path: Path):
    # `graphopt compare` without --inputs: cosine 1.000000 of BEFORE's 0.0s and 1.0s, with only "random values say
    # little about accuracy on real data". Compared with itself here: the figure, not the model, is at issue.
    from optimizer.compare.comparison import CompareSettings, compare
    from optimizer.compare.html import render_html

    source = tmp_path / "classifier.onnx"
    onnx.save(_classifier("Sigmoid"), source)
    settings = CompareSettings(eps=("cpu",), threads=1, time_budget=0.2, iterations=3, warmup=0)
    report = compare(source, source, settings=settings)
    (said,) = [warning for warning in report.warnings if "saturated" in warning]
    assert said.startswith("accuracy: output 'y' (Sigmoid: 100% of its values) of BEFORE is saturated"), said
    assert "give --inputs" in said
    assert "the cosine says nothing of how far the logits" in render_html(report)


def test_a_compare_on_given_inputs_says_nothing_of_saturation(tmp_path: Path):
    # Saturated on the user's own inputs is what the model does there: the figure stands.
    from optimizer.compare.comparison import CompareSettings, compare

    source, inputs = tmp_path / "classifier.onnx", tmp_path / "inputs.npz"
    onnx.save(_classifier("Sigmoid"), source)
    np.savez(inputs, x=np.random.default_rng(3).standard_normal((2, 32)).astype(np.float32))
    settings = CompareSettings(eps=("cpu",), threads=1, time_budget=0.2, iterations=3, warmup=0)
    report = compare(source, source, settings=settings, inputs=inputs)
    assert not any("saturated" in warning for warning in report.warnings), report.warnings


@pytest.mark.xfail(
    strict=True,
    reason="open: an approximate pass's end-to-end twin check (and its segments, cut at the activations the layers "
    "read) compares the saturated Softmax output, not the logits behind it, so a last layer's int8 scale written 2x "
    "matches its twin at max |Δ| 0; only optimizer.layer_probe (off here) catches it",
)
def test_a_wrong_last_layer_behind_a_saturated_head_differs_from_its_twin(monkeypatch):
    from passes.quantization import dynamic
    from tests.helpers import without_layer_probe

    without_layer_probe(monkeypatch)
    original, layers = dynamic._quantize_matmul, []

    def last_scale_doubled(graph, layer, *args):
        original(graph, layer, *args)
        layers.append(layer.node.name)
        if layer.node.inputs[1] is not None and layer.node.inputs[1].name == "w2":
            scale = graph.initializers[f"{layer.node.name}.weight_scale"]
            scale.const_value = ir.tensor(scale.const_value.numpy() * np.float32(2), name=scale.name)

    monkeypatch.setattr(dynamic, "_quantize_matmul", last_scale_doubled)
    _, report = optimizer.optimize_with_report(ir.from_proto(_classifier("Softmax")), quantize="dynamic")
    record = next(r for r in report.passes if r.name == "quantize-dynamic")
    assert len(layers) == 2
    assert record.status == STATUS_ROLLED_BACK, record.twin

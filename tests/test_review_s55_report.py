"""A hostile review of what ``graphopt optimize`` tells the user: the table, ``--pipeline-json``, the API's
``PipelineReport`` (session 55).

Findings, each fixed and tested here:

1. An output the input model computes as NaN or infinite at every position on every verification input set (a
   ``Log`` of the generated standard-normal values summed) was "verified" with max |Δ| 0 and no word: the
   comparison holds only where NaN and Inf appear, so a rewrite computing anything else that stays NaN passed (the
   verifier accepted a ``Mul`` by 2 turned into one by 3). So was an output empty on every set (``NonZero`` of
   ``x > 100``, as a detector's boxes on random images: a threshold changed to 5 passed). The report now names
   such outputs in a warning (table, JSON, HTML), as it does for partly NaN ``--inputs``.
2. The report's weights (``initializer_bytes_before``/``_after``, the summary's "weights A → B") counted the main
   graph's alone: a model whose 32 KB of weights sit in its ``If`` branches was reported as 4 bytes. They now count
   every graph and function, as the file holds them (``runtime.stored_weight_bytes``).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from optimizer.api import optimize_with_report
from optimizer.cli import main
from optimizer.inputs import bind_dims, make_inputs
from optimizer.model_io import load_model
from optimizer.verify import Verifier


def _log_sum_model(path) -> None:
    """``y = 2 * sum(log(x))`` over 16 standard-normal values: NaN on (almost) every generated input."""
    nodes = [
        oh.make_node("Log", ["x"], ["l"]),
        oh.make_node("ReduceSum", ["l"], ["s"], keepdims=1),
        oh.make_node("Identity", ["s"], ["s2"]),
        oh.make_node("Mul", ["s2", "two"], ["y"]),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array(2, np.float32), "two")],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)


def test_an_output_never_finite_on_the_verification_inputs_is_named(tmp_path):
    model_path = tmp_path / "log.onnx"
    _log_sum_model(model_path)
    model = load_model(model_path)
    verifier = Verifier(model, [make_inputs(model, bind_dims(model, {}))])
    wrong = model.clone()
    wrong.graph.initializers["two"].const_value = ir.tensor(np.array(3, np.float32), name="two")
    assert verifier.check(wrong).ok  # what the checks can say about such an output: nothing
    assert verifier.outputs_never_compared() == {"non-finite": ["y"]}

    report_path = tmp_path / "report.json"
    code = main(["optimize", str(model_path), "-o", str(tmp_path / "out.onnx"), "--pipeline-json", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["verified"] is True
    warned = [warning for warning in report["warnings"] if "'y'" in warning]
    assert warned and "NaN or infinite at every position" in warned[0], report["warnings"]
    assert "compared no value" in warned[0]


def test_outputs_with_numbers_get_no_such_warning(tmp_path):
    model_path = tmp_path / "log.onnx"
    _log_sum_model(model_path)
    inputs = {"x": np.abs(np.random.default_rng(0).standard_normal((2, 16))).astype(np.float32) + 0.1}
    _, report = optimize_with_report(str(model_path), output=tmp_path / "out.onnx", inputs=inputs)
    assert report.verified
    assert not any("NaN or infinite" in warning for warning in report.warnings), report.warnings


def _weights_in_branches_model(path) -> None:
    def branch(name: str, seed: int) -> onnx.GraphProto:
        weight = np.random.default_rng(seed).standard_normal((64, 64)).astype(np.float32)
        return oh.make_graph(
            [oh.make_node("MatMul", ["x", f"W_{name}"], [f"y_{name}"])],
            name,
            [],
            [oh.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, [1, 64])],
            [numpy_helper.from_array(weight, f"W_{name}")],
        )

    nodes = [
        oh.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        oh.make_node("Greater", ["s", "zero"], ["c"]),
        oh.make_node("If", ["c"], ["y"], then_branch=branch("then", 1), else_branch=branch("else", 2)),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(np.array(0, np.float32), "zero")],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)


def test_the_reported_weights_count_those_in_subgraphs(tmp_path):
    model_path = tmp_path / "branches.onnx"
    _weights_in_branches_model(model_path)
    _, report = optimize_with_report(str(model_path), output=tmp_path / "out.onnx")
    in_branches = 2 * 64 * 64 * 4 + 4  # two branch weights and the main graph's scalar
    assert report.initializer_bytes_before == in_branches
    assert report.initializer_bytes_after == in_branches


def test_an_output_empty_on_every_verification_input_set_is_named(tmp_path):
    """``NonZero`` of ``max(x) > 2**32`` over standard-normal values: empty on every generated set, as a detector's
    boxes on random images are; a threshold changed to 5 passes the checks. (Of ``x > 100`` itself until review s71,
    which draws an input compared with a threshold on both sides of it, and of ``max(x) > 100`` until review s73,
    which holds a reduction each side of a threshold it can reach: 2**32 is past any value drawn.)"""
    nodes = [
        oh.make_node("ReduceMax", ["x"], ["peak"], axes=[1], keepdims=1),
        oh.make_node("Greater", ["peak", "limit"], ["big"]),
        oh.make_node("NonZero", ["big"], ["where"]),
        oh.make_node("Identity", ["where"], ["found"]),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [oh.make_tensor_value_info("found", TensorProto.INT64, [2, "n"])],
        [numpy_helper.from_array(np.array(2.0**32, np.float32), "limit")],
    )
    model_path = tmp_path / "nonzero.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), model_path)
    model = load_model(model_path)
    verifier = Verifier(model, [make_inputs(model, bind_dims(model, {}))])
    wrong = model.clone()
    wrong.graph.initializers["limit"].const_value = ir.tensor(np.array(5, np.float32), name="limit")
    assert verifier.check(wrong).ok
    assert verifier.outputs_never_compared() == {"empty": ["found"]}

    _, report = optimize_with_report(str(model_path), output=tmp_path / "out.onnx")
    warned = [warning for warning in report.warnings if "'found'" in warning]
    assert warned and "is empty on every verification input set" in warned[0], report.warnings

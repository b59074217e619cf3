"""Review s64 (late 1): the float16 load probe of ``graphopt compare`` and ``optimize``, and the float16 values
convert-float16 reads off its result.

1. ``holds_float16`` chose which models are first loaded in a child process (ONNX Runtime 1.32 segfaults loading
   some float16 graphs at ``ORT_ENABLE_ALL``), and it looked only at initializers, inputs and outputs: the two-layer
   ViT that crashes ONNX Runtime, with its float16 weights stored float32 and cast to float16 (a mixed-precision
   export) or held in ``Constant`` nodes, still crashes it, was not tried first, and ended ``graphopt compare``
   (and ``optimize``'s noise floor) with exit -11 and no report.
2. ``_stored_float16`` took a float16 value stored under one of the input's names for the input's value: a
   realization computing ``g = h * 3e4`` and ``k = g * (1/3e4)`` in float16 under the names of two ``Relu`` after
   ``h`` was verified (its check rounded the input's small ``g`` and ``k``; on a GPU ``g`` is infinite).
3. Found unfixed, fixed since (2026-12-06): prune-ffn ran its samples through that ViT at ``ORT_ENABLE_ALL`` in
   graphopt's own process (``runtime.run_batches``), before any verification: exit -11 and no report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime.transformers.float16 as ort_float16
import pytest
from onnx import helper, numpy_helper

from optimizer.runtime import holds_float16, loading_crash
from tests.test_review_s55_fp16 import _float, _model, _record

FIXTURE = Path(__file__).parent / "fixtures" / "vit_tiny_legacy.onnx"
REPO = Path(__file__).resolve().parents[1]


def _float16_vit(weights: str) -> ir.Model:
    """The two-layer ViT as onnxruntime's converter makes it float16, its float16 weights then stored as
    ``"initializers"``, as float32 initializers each cast to float16 (``"cast"``) or as ``Constant`` nodes."""
    proto = ort_float16.convert_float_to_float16(onnx.load(FIXTURE), keep_io_types=True)
    graph = proto.graph
    nodes, kept = [], []
    for tensor in graph.initializer:
        if weights == "initializers" or tensor.data_type != onnx.TensorProto.FLOAT16:
            kept.append(tensor)
        elif weights == "cast":
            array = numpy_helper.to_array(tensor).astype(np.float32)
            kept.append(numpy_helper.from_array(array, f"{tensor.name}_float32"))
            nodes.append(
                helper.make_node("Cast", [f"{tensor.name}_float32"], [tensor.name], to=onnx.TensorProto.FLOAT16)
            )
        else:
            nodes.append(helper.make_node("Constant", [], [tensor.name], value=tensor))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes += graph.node
    del graph.node[:]
    graph.node.extend(nodes)
    model = ir.serde.deserialize_model(proto)
    model.graph.sort()  # the converter appends its input Casts after their users
    return model


@pytest.mark.parametrize("weights", ["cast", "constants"])
def test_a_model_computing_in_float16_holds_float16(weights):
    model = _float16_vit(weights)
    assert not any(value.dtype == ir.DataType.FLOAT16 for value in model.graph.initializers.values())
    assert holds_float16(model)


def test_holds_float16_is_false_for_a_float32_model():
    assert not holds_float16(ir.load(FIXTURE))


def test_compare_skips_the_cpu_for_a_float16_model_with_float32_weights_not_a_crash(tmp_path):
    after = tmp_path / "fp16_cast_weights.onnx"
    ir.save(_float16_vit("cast"), after)
    if loading_crash(ir.load(after), "all") is None:
        pytest.skip("an ONNX Runtime that no longer crashes loading this model: nothing to skip")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "compare", str(FIXTURE), str(after), "--iterations", "3",
         "--json", str(tmp_path / "c.json")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    (provider,) = json.loads((tmp_path / "c.json").read_text())["providers"]
    assert provider["available"] is False
    assert "crashed (signal SIGSEGV) loading AFTER" in provider["reason"]


def test_compare_probes_the_file_it_times_not_a_copy(tmp_path, monkeypatch):
    """The load probe wrote a copy of each float16 model, weights and all, before loading it in the child (twice the
    disk and the time on a multi-GB model), and probed onnx-ir's re-serialization rather than the file the timing
    sessions load. It now loads the file as given."""
    import optimizer.runtime
    from optimizer.compare.comparison import CompareSettings, compare

    after = tmp_path / "fp16.onnx"
    ir.save(_float16_vit("initializers"), after)
    if loading_crash(ir.load(after), "all") is None:
        pytest.skip("an ONNX Runtime that no longer crashes loading this model: nothing to skip")

    def copied(*args, **kwargs):
        raise AssertionError("the probe wrote a copy of the model")

    monkeypatch.setattr(optimizer.runtime, "save_model_file", copied)
    report = compare(FIXTURE, after, settings=CompareSettings(iterations=3))
    (provider,) = report.providers
    assert not provider.available
    assert "crashed (signal SIGSEGV) loading AFTER" in provider.reason


def _relu_chain() -> ir.Model:
    weight = numpy_helper.from_array(np.full((64, 4), 0.1, np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Relu", ["h"], ["g"]),
        helper.make_node("Relu", ["g"], ["k"]),
        helper.make_node("Relu", ["k"], ["y"]),
    ]
    return _model(nodes, [weight], [_float("x", ["B", 64])], [_float("y", ["B", 4])])


def _scaled_under_the_inputs_names(real):
    """The converter's result with its float16 ``g`` computed as ``h * 3e4`` and ``k`` as ``g * (1/3e4)``: on ONNX
    Runtime's CPU (float32 kernels) exactly the input's values, on a GPU ``g`` and ``k`` infinite."""

    def convert(proto, **kwargs):
        converted = real(proto, **kwargs)
        graph = converted.graph
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(3e4, np.float16), "up"),
                numpy_helper.from_array(np.array(1 / 3e4, np.float16), "down"),
            ]
        )
        for node in graph.node:
            if list(node.output) in (["g"], ["k"]):
                node.op_type = "Mul"
                node.input.append("up" if node.output[0] == "g" else "down")
        return converted

    return convert


def test_a_float16_value_stored_under_the_inputs_name_computed_otherwise_is_refused(monkeypatch):
    monkeypatch.setattr(
        ort_float16, "convert_float_to_float16", _scaled_under_the_inputs_names(ort_float16.convert_float_to_float16)
    )
    record = _record(_relu_chain(), {"x": np.full((2, 64), 10.0, np.float32)})
    assert record.status == "unchanged", record.detail
    said = " ".join(record.refusals + record.notes)
    assert "stores 2 float16 values the input does not compute (g, k)" in said, said


def _scaled_then_cast_back(real):
    """The converter's result with a float16 ``t = h * 3e4`` cast to float32 under ``g``'s name, and ``k`` computed
    as ``g * (1/3e4)`` in float32: ``t`` was taken for the input's ``g`` (a Cast to float32 after it names it, as the
    converter's ``graph_output_cast_N`` is read), which the check rounded; on a GPU ``t`` is infinite."""

    def convert(proto, **kwargs):
        converted = real(proto, **kwargs)
        graph = converted.graph
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(3e4, np.float16), "up"),
                numpy_helper.from_array(np.array(1 / 3e4, np.float32), "down"),
            ]
        )
        for node in list(graph.node):
            if list(node.output) == ["g"]:
                node.op_type, node.output[0] = "Mul", "t"
                node.input.append("up")
                graph.node.insert(list(graph.node).index(node) + 1, helper.make_node("Cast", ["t"], ["g"], to=1))
            elif list(node.output) == ["k"]:
                node.op_type = "Mul"
                node.input.append("down")
        float32 = ("g", "k", "graph_output_cast_0")
        kept = [info for info in graph.value_info if info.name not in float32]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        graph.value_info.append(helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT16, None))
        graph.value_info.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in float32)
        return converted

    return convert


def test_a_float16_value_cast_back_under_the_inputs_name_computed_otherwise_is_refused(monkeypatch):
    monkeypatch.setattr(
        ort_float16, "convert_float_to_float16", _scaled_then_cast_back(ort_float16.convert_float_to_float16)
    )
    record = _record(_relu_chain(), {"x": np.full((2, 64), 10.0, np.float32)})
    assert record.status == "unchanged", record.detail
    said = " ".join(record.refusals + record.notes)
    assert "stores 1 float16 value the input does not compute (t)" in said, said


def test_the_converters_own_result_of_the_relu_chain_is_applied():
    assert _record(_relu_chain(), {"x": np.full((2, 64), 10.0, np.float32)}).status == "applied"


def _mul_chain() -> ir.Model:
    weight = numpy_helper.from_array(np.full((64, 4), 0.1, np.float32), "W")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Mul", ["h", "one"], ["g"]),
        helper.make_node("Mul", ["g", "one"], ["k"]),
        helper.make_node("Relu", ["k"], ["y"]),
    ]
    return _model(nodes, [weight, one], [_float("x", ["B", 64])], [_float("y", ["B", 4])])


def _scaled_operands(real):
    """The converter's result with ``g = h * 3e4`` and ``k = g * (1/3e4)``: the input's ops, other operands."""

    def convert(proto, **kwargs):
        converted = real(proto, **kwargs)
        converted.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(3e4, np.float16), "up"),
                numpy_helper.from_array(np.array(1 / 3e4, np.float16), "down"),
            ]
        )
        for node in converted.graph.node:
            if list(node.output) in (["g"], ["k"]):
                node.input[1] = "up" if node.output[0] == "g" else "down"
        return converted

    return convert


def test_a_float16_value_the_same_op_computes_from_other_operands_is_not_verified(monkeypatch):
    # Found unfixed by the review (the deployed check rounded the input's small g and k; the result's g is 1.9e6,
    # inf on a GPU); fixed by building that check from the result itself (``_twin.float16_kernels``).
    monkeypatch.setattr(ort_float16, "convert_float_to_float16", _scaled_operands(ort_float16.convert_float_to_float16))
    record = _record(_mul_chain(), {"x": np.full((2, 64), 10.0, np.float32)})
    assert record.status != "applied", record.detail


def test_a_name_each_if_branch_computes_with_another_op_is_converted():
    """A control for the check above (it passes on the base too): an ``If``'s branches may each compute ``out``, with
    different ops (``Relu``, ``Sigmoid``); either is the input's ``out``."""
    from passes.quantization.float16 import Float16Pass

    weight = numpy_helper.from_array(np.full((64, 4), 0.1, np.float32), "W")
    branches = {
        name: helper.make_graph(
            [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node(op, ["h"], ["out"])],
            name,
            [],
            [_float("out", [1, 4])],
        )
        for name, op in (("then", "Relu"), ("else", "Sigmoid"))
    }
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=branches["then"], else_branch=branches["else"]),
    ]
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    model = _model(nodes, [weight, zero], [_float("x", [1, 64])], [_float("y", [1, 4])])
    result = Float16Pass()(model)
    assert result.modified, result.refusals


def test_pruning_a_float16_model_onnxruntime_crashes_on_is_not_a_crash(tmp_path):
    given = tmp_path / "fp16.onnx"
    ir.save(_float16_vit("initializers"), given)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "optimize", str(given), "-o", str(tmp_path / "out.onnx"),
         "--prune-ffn", "0.5"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])

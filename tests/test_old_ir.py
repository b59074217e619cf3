"""Models of IR version < 4: their initializers, all listed as graph inputs as ONNX then required, are constants.

ONNX Runtime lets no caller feed them (``tests/test_review_lead_fixes.py`` checks that premise), so graphopt
takes them off the inputs at load (``optimizer.model_io.constants_of_old_ir``) and writes IR version 4, where
an initializer need not be an input; the file it read is left as it was.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optimizer import exit_codes
from optimizer.api import optimize_with_report
from optimizer.inputs import bind_dims, make_inputs
from optimizer.model_io import load_model
from tests._cli_models import run_cli
from tests.helpers import FIXTURES

WARNING = (
    "IR version 3: its 3 initializers listed as inputs are constants, as ONNX Runtime reads them; "
    "written as IR version 4"
)
OVERRIDABLE = "graph inputs with a default value a caller may override"


def _model(ir_version: int = 3) -> onnx.ModelProto:
    """``Relu(x @ w + (a + b))`` with ``w``, ``a`` and ``b`` initializers listed as graph inputs too."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w"),
        numpy_helper.from_array(np.full((32,), 0.25, np.float32), "a"),
        numpy_helper.from_array(np.full((32,), 0.5, np.float32), "b"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in initializers]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("Add", ["m", "ab"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])], initializers
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir_version)


def _run(model: str | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_an_old_ir_file_is_folded_and_written_as_ir_4_and_left_as_it_was(tmp_path):
    path, output = tmp_path / "old.onnx", tmp_path / "new.onnx"
    onnx.save(_model(), path)
    original = path.read_bytes()
    _, report = optimize_with_report(path, output=output, passes=["fold-constants"])
    written = onnx.load(output)
    assert written.ir_version == 4
    assert [value.name for value in written.graph.input] == ["x"]
    assert sorted(t.name for t in written.graph.initializer) == ["ab", "w"]  # a + b folded
    assert [node.op_type for node in written.graph.node] == ["MatMul", "Add", "Relu"]
    assert WARNING in report.warnings
    assert not any(OVERRIDABLE in warning for warning in report.warnings)
    assert path.read_bytes() == original
    onnx.checker.check_model(written)
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)}
    np.testing.assert_array_equal(_run(str(output), feeds)[0], _run(str(path), feeds)[0])


def test_an_old_ir_proto_or_onnx_ir_model_is_left_as_it_was():
    proto = _model()
    result, report = optimize_with_report(proto, passes=["fold-constants"])
    assert (result.ir_version, [value.name for value in result.graph.input]) == (4, ["x"])
    assert (proto.ir_version, len(proto.graph.input)) == (3, 4)
    assert WARNING in report.warnings
    model = ir.from_proto(_model())
    result, report = optimize_with_report(model, passes=["fold-constants"])
    assert (result.ir_version, [value.name for value in result.graph.inputs]) == (4, ["x"])
    assert (model.ir_version, len(model.graph.inputs)) == (3, 4)
    assert WARNING in report.warnings


def test_load_model_takes_an_old_ir_model_s_initializers_off_its_inputs(tmp_path):
    path = tmp_path / "old.onnx"
    onnx.save(_model(), path)
    model = load_model(path)
    assert (model.ir_version, [value.name for value in model.graph.inputs]) == (4, ["x"])
    assert sorted(model.graph.initializers) == ["a", "b", "w"]
    warnings: list[str] = []
    load_model(path, warnings=warnings)
    assert warnings == [WARNING]


def test_an_ir_4_model_keeps_its_overridable_inputs(tmp_path):
    """The near-miss: from IR 4 on, an initializer listed as an input is a default ONNX Runtime lets a caller
    override, so it stays an input and nothing reading it folds."""
    result, report = optimize_with_report(_model(ir_version=4), passes=["fold-constants"])
    assert result.ir_version == 4 and len(result.graph.input) == 4
    assert sum(node.op_type == "Add" for node in result.graph.node) == 2
    assert not any(warning.startswith("IR version") for warning in report.warnings)
    assert any(OVERRIDABLE in warning for warning in report.warnings)


def test_make_inputs_feeds_no_initializer_of_an_old_ir_model(tmp_path, capsys):
    path, skeleton = tmp_path / "old.onnx", tmp_path / "inputs.npz"
    onnx.save(_model(), path)
    code, _, err = run_cli(["make-inputs", path, "-o", skeleton, "--dim", "batch=2"], capsys)
    assert code == exit_codes.OK, err
    with np.load(skeleton) as arrays:
        assert sorted(arrays) == ["x"]


def test_bert_resaved_as_ir_3_optimizes_as_its_ir_8_export_does(tmp_path):
    """bert_legacy with every initializer listed as an input, at IR 3, as a 2017-2019 model zoo file reads."""
    proto = onnx.load(FIXTURES / "bert_legacy.onnx")
    listed = {value.name for value in proto.graph.input}
    proto.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in proto.graph.initializer
        if t.name not in listed
    )
    proto.ir_version = 3
    path = tmp_path / "bert_ir3.onnx"
    onnx.save(proto, path)
    new, report = optimize_with_report(path, output=tmp_path / "bert_ir3.opt.onnx")
    control = optimize_with_report(FIXTURES / "bert_legacy.onnx", output=tmp_path / "bert.opt.onnx")[0]
    written = onnx.load(new)
    assert written.ir_version == 4
    assert [value.name for value in written.graph.input] == [value.name for value in onnx.load(control).graph.input]
    ops = sorted(node.op_type for node in written.graph.node)
    assert ops == sorted(node.op_type for node in onnx.load(control).graph.node)
    assert any(warning.startswith("IR version 3: its ") for warning in report.warnings)
    model = load_model(path)
    feeds = make_inputs(model, bind_dims(model, None))
    for got, want in zip(_run(str(new), feeds), _run(str(path), feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

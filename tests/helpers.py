"""Test helpers: build models from ONNX text, run them on ONNX Runtime, compare outputs."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from optimizer.model_io import check_model_proto
from optimizer.runtime import run_model

FIXTURES = Path(__file__).parent / "fixtures"
# Transformer text models (inputs [batch, sequence]); every pass is tested on these.
EXPORTED_MODELS = [
    f"{name}_{exporter}" for name in ("bert", "gpt2", "distilbert", "llama") for exporter in ("legacy", "dynamo")
]
# Every exported fixture, image models included (inputs [batch, 3, 32, 32]).
ALL_FIXTURES = EXPORTED_MODELS + [
    f"{name}_{exporter}" for name in ("vit", "resnet") for exporter in ("legacy", "dynamo")
]


def parse_model(text: str) -> ir.Model:
    """An onnx-ir model from ONNX's textual syntax (checked by onnx's checker)."""
    proto = onnx.parser.parse_model(text)
    check_model_proto(proto, "test model")
    return ir.from_proto(proto)


def inferred_model(graph: onnx.GraphProto, opset: int = 18) -> ir.Model:
    """An onnx-ir model of ``graph`` with its shapes inferred (strictly) and checked by onnx's checker."""
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def run(model: ir.Model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of ``model`` on ONNX Runtime (CPU, graph optimizations off)."""
    return run_model(model, inputs)


def assert_same_outputs(before: ir.Model, after: ir.Model, inputs: dict[str, np.ndarray], rtol=1e-5, atol=1e-6) -> None:
    """ONNX Runtime gives the same outputs for both models on ``inputs``."""
    expected, actual = run(before, inputs), run(after, inputs)
    assert list(expected) == list(actual)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=atol, err_msg=name)


def run_deployed(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``model``'s outputs on ONNX Runtime's CPU as deployed (its default, ORT_ENABLE_ALL), warnings quiet."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_deployed_equal(
    original: onnx.ModelProto, optimized: onnx.ModelProto, feeds_list: list[dict], *, signs: bool = False
) -> None:
    """Equal outputs, bit for bit, as deployed (``run_deployed``), on each of ``feeds_list``; with ``signs`` the
    sign of a zero too."""
    for feeds in feeds_list:
        for before, after in zip(run_deployed(original, feeds), run_deployed(optimized, feeds), strict=True):
            assert before.shape == after.shape, f"{feeds}: shape {after.shape} instead of {before.shape}"
            np.testing.assert_array_equal(after, before, err_msg=str(feeds))
            if signs and before.dtype.kind == "f":
                np.testing.assert_array_equal(np.signbit(after), np.signbit(before), err_msg=str(feeds))


def op_types(model: ir.Model) -> list[str]:
    """Op types of the main graph's nodes, in order."""
    return [node.op_type for node in model.graph]


def computed_op_types(model: ir.Model) -> list[str]:
    """Op types of the main graph's nodes, in order, leaving out Constant nodes."""
    return [t for t in op_types(model) if t != "Constant"]


def snapshot_tree(root: Path) -> dict[str, object]:
    """Everything under ``root``: file bytes and mtimes, symlink targets, folders."""
    state: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        key = os.fspath(path.relative_to(root))
        if path.is_symlink():
            state[key] = ("link", os.readlink(path))
        elif path.is_dir():
            state[key] = ("dir",)
        else:
            state[key] = ("file", path.read_bytes(), path.stat().st_mtime_ns)
    return state


def calibration_samples(model: ir.Model, count: int = 16, sequence: int = 12) -> dict[str, np.ndarray]:
    """Generated sample inputs: ``count`` along the model's batch dims, ``sequence`` for its other symbolic dims."""
    from optimizer.inputs import batch_dims, make_inputs, symbolic_dims

    dims = {name: count if name in batch_dims(model) else sequence for name in symbolic_dims(model)}
    return make_inputs(model, dims, seed=3)


def index_model(signature: str, body: str, tables: dict, constants: dict | None = None) -> ir.Model:
    """A model of ONNX text (opset 17), with zero float ``tables`` and int64 ``constants`` as initializers."""
    proto = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\ng {signature}\n{{\n{body}\n}}')
    for name, shape in tables.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), name))
    for name, value in (constants or {}).items():
        proto.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def weighted_proto(signature: str, body: str, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A checked model of ONNX text (opset 17) with ``weights`` as its initializers."""
    proto = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\ng {signature}\n{{\n{body}\n}}')
    for name, value in weights.items():
        proto.graph.initializer.append(numpy_helper.from_array(value, name))
    onnx.checker.check_model(proto)
    return proto


def strict_xfails(pattern: str) -> set[str]:
    """Names of the tests marked ``xfail(strict=True)`` in the test files matching ``pattern`` (a session's
    ``test_review_sNN_*.py``): the docs tests hold each to the README words that name its limit."""
    import re

    found = set()
    for path in Path(__file__).resolve().parent.glob(pattern):
        found |= set(re.findall(r"@pytest\.mark\.xfail\(\s*strict=True,.*?\)\s*\ndef (\w+)", path.read_text(), re.S))
    return found


def refusal(model: ir.Model, inputs: dict) -> str | None:
    """None where ONNX Runtime runs ``model`` on ``inputs``, else its reason (200 characters at most)."""
    from optimizer.errors import RuntimeRefusedError

    try:
        run(model, inputs)
    except RuntimeRefusedError as error:
        return str(error)[:200]
    return None


def without_layer_probe(monkeypatch) -> None:
    """Turn off ``optimizer.layer_probe``'s exact check of each quantized layer, so a test sees what the twin's
    end-to-end and segment checks catch behind it (the probe catches every weight tamper these tests write)."""
    from optimizer.verify import Verifier

    monkeypatch.setattr(Verifier, "_probe_layers", lambda self, candidate, twin: ("", 0))


class _Rewrite(ir.passes.InPlacePass):
    """A test pass: ``rewrite(model)`` changes the model in place (it reports a change whatever it did)."""

    def __init__(self, rewrite) -> None:
        super().__init__()
        self.rewrite = rewrite

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.rewrite(model)
        return ir.passes.PassResult(model, True)


def fuse_written_out_softmax(model: ir.Model) -> None:
    """``model``'s written-out softmax (``Exp(x [- ReduceMax(x)]) / ReduceSum(...)``, one in the graph) replaced by
    ``Softmax(x, axis=a)`` over the sum's one axis ``a``, in place: the rewrite fuse-softmax makes over the last axis,
    written by hand for any (it refuses the others, which ONNX Runtime's CPU ``Softmax`` runs slower)."""
    graph = model.graph
    (div,) = [node for node in graph if node.op_type == "Div" and node.inputs[0].producer().op_type == "Exp"]
    exp, total = div.inputs[0].producer(), div.inputs[1].producer()
    dead = [div, total, exp]
    x = exp.inputs[0]
    if x.producer() is not None and x.producer().op_type == "Sub":
        sub = x.producer()
        x = sub.inputs[0]
        dead += [sub, sub.inputs[1].producer()]
    (axis,) = ir.convenience.get_const_tensor(total.inputs[1]).numpy().reshape(-1).tolist()
    softmax = ir.node("Softmax", [x], attributes={"axis": int(axis)})
    graph.insert_before(div, softmax)
    y = div.outputs[0]
    name, y.name = y.name, None
    ir.convenience.replace_all_uses_with(y, softmax.outputs[0], replace_graph_outputs=True)
    softmax.outputs[0].name, softmax.outputs[0].type, softmax.outputs[0].shape = name, y.type, y.shape
    graph.remove(dead, safe=True)


def optimize_with_rewrite(model: onnx.ModelProto, rewrite, folder: Path):
    """The pipeline report of ``rewrite(model)`` (in place) run alone as a pass through ``optimize`` (saved to
    ``folder``), verified on generated inputs: how a wrong rewrite is shown to be caught or missed."""
    from unittest import mock

    import optimizer.api as api
    from optimizer.protocol import PassSpec

    spec = PassSpec("rewrite", lambda context: _Rewrite(rewrite), "a test rewrite")
    source = folder / "in.onnx"
    onnx.save(model, source)
    with mock.patch.object(api, "resolve", lambda names, options: [spec]):
        _, report = api.optimize_with_report(source, [], output=folder / "out.onnx")
    return report


@functools.cache
def _default_pipeline(name: str):
    from optimizer.api import optimize_with_report

    return optimize_with_report(ir.load(FIXTURES / f"{name}.onnx"))


def default_pipeline(name: str):
    """The verified default pipeline on fixture ``name`` and its report: run once per process (per xdist worker)
    for every test that reads it (tests/test_exported_models.py, tests/test_respelled_fixtures.py,
    tests/test_pipeline_fixed_point.py); the model is a fresh copy each call, the report is shared and only read."""
    model, report = _default_pipeline(name)
    return model.clone(), report


def split_pipeline(pass_name: str, passes: list[str] | None = None, **options) -> tuple[list[str], list[str]]:
    """The pipeline ``passes`` and ``options`` ask for, cut at ``pass_name``: the passes before it, and it with the
    passes after it. Run one after the other they make the same model as the whole pipeline (the same passes in the
    same order), so tests that run one pass several ways on a fixture run the passes before it once."""
    from optimizer.options import Options
    from optimizer.registry import resolve

    names = [spec.name for spec in resolve(passes, Options(**options))]
    return names[: names.index(pass_name)], names[names.index(pass_name) :]

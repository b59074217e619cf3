"""The pass protocol: notes and refusals reach the report, structural ensures fail loudly, one pass imports alone."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.api import optimize_with_report
from optimizer.cli import main
from optimizer.options import Options
from optimizer.pipeline import run_pipeline
from optimizer.protocol import NotedResult, PassContext, PassSpec
from optimizer.report import STATUS_APPLIED, STATUS_FAILED
from passes._pass import GraphoptPass, Tally
from tests.helpers import FIXTURES, parse_model

ROOT = Path(__file__).resolve().parents[1]

# A decomposed LayerNorm whose epsilon is a graph input: the pattern matches, the check refuses.
LAYER_NORM_WITH_INPUT_EPSILON = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[N, 5, 8] x, float eps) => (float[N, 5, 8] y) {
      axes = Constant<value = int64[1] {-1}>()
      two = Constant<value = float {2.0}>()
      gamma = Constant<value = float[8] {1.0, 0.5, 2.0, 1.5, 0.8, 1.2, 0.9, 1.1}>()
      beta = Constant<value = float[8] {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8}>()
      mean = ReduceMean<keepdims = 1>(x, axes)
      d = Sub(x, mean)
      sq = Pow(d, two)
      var = ReduceMean<keepdims = 1>(sq, axes)
      ve = Add(var, eps)
      std = Sqrt(ve)
      n = Div(d, std)
      s = Mul(n, gamma)
      y = Add(s, beta)
    }"""
REFUSAL = "1 near match at Add left unfused: epsilon is not a constant scalar"


def _feeds() -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    return {"x": x, "eps": np.array(1e-5, np.float32)}


def test_a_fusion_near_miss_reaches_the_report_the_json_and_the_verbose_table(tmp_path, capsys):
    model = parse_model(LAYER_NORM_WITH_INPUT_EPSILON)
    _, report = optimize_with_report(model, ["+fuse-layer-norm"], inputs=_feeds())
    record = next(r for r in report.passes if r.name == "fuse-layer-norm")
    assert record.refusals == [REFUSAL]
    path, inputs = tmp_path / "m.onnx", tmp_path / "inputs.npz"
    ir.save(model, path)
    np.savez(inputs, **_feeds())
    command = ["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--passes", "+fuse-layer-norm"]
    command += ["--inputs", str(inputs), "--pipeline-json", str(tmp_path / "r.json")]
    assert main(command) == 0
    quiet = capsys.readouterr().out
    assert REFUSAL not in quiet and re.search(r"-v shows \d+ more lines? on what passes left alone, and why", quiet)
    written = json.loads((tmp_path / "r.json").read_text())
    assert next(r for r in written["passes"] if r["name"] == "fuse-layer-norm")["refusals"] == [REFUSAL]
    assert main(["-v", *command]) == 0
    assert f"fuse-layer-norm: {REFUSAL}" in capsys.readouterr().out


def test_a_target_without_the_kernel_is_a_refusal_of_the_whole_pass(monkeypatch):
    # A target graphopt knows whose EP lacks the fused ops (an unknown target is refused when the pass is built).
    from optimizer.domains import MS_DOMAIN
    from passes.fusion import _targets
    from passes.fusion.gelu import GeluFusion

    for op in ("Gelu", "FastGelu"):
        monkeypatch.setitem(_targets._KERNELS, (MS_DOMAIN, op), frozenset({"cpu"}))
    result = GeluFusion(target="cuda")(ir.load(FIXTURES / "bert_dynamo.onnx"))
    assert not result.modified
    assert result.refusals == ["target cuda has no kernel for com.microsoft::Gelu, com.microsoft::FastGelu"]


def test_counted_refusals_say_how_many_of_how_many():
    tally = Tally()
    for _ in range(10):
        tally.record_done("Softmax")
    tally.record_refused("Softmax", "the scores have other users")
    tally.record_refused("Softmax", "the scores have other users")
    tally.record_refused("Softmax", "the mask bias is not known to be 4-D")
    assert tally.lines() == [
        "2 of 13 Softmax left unfused: the scores have other users",
        "1 of 13 Softmax left unfused: the mask bias is not known to be 4-D",
    ]


class _RenamesTheOutput(GraphoptPass, ir.passes.InPlacePass):
    def call(self, model):
        model.graph.outputs[0].name = "renamed"
        return self.result(model, modified=True)


class _EmitsAContribOpWithoutItsOpset(GraphoptPass, ir.passes.InPlacePass):
    def call(self, model):
        relu = next(node for node in model.graph if node.op_type == "Relu")
        relu.op_type, relu.domain = "Gelu", "com.microsoft"
        return self.result(model, modified=True)


class _WidensTheOutput(GraphoptPass, ir.passes.InPlacePass):
    def call(self, model):
        model.graph.outputs[0].shape = ir.Shape(["N", 5])
        return self.result(model, modified=True)


RMS_NORM = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[N, 5, 8] x) => (float[N, 5, 8] y) {
      axes = Constant<value = int64[1] {-1}>()
      eps = Constant<value = float {1e-6}>()
      two = Constant<value = float {2.0}>()
      gamma = Constant<value = float[8] {1.0, 0.5, 2.0, 1.5, 0.8, 1.2, 0.9, 1.1}>()
      sq = Pow(x, two)
      ms = ReduceMean<keepdims = 1>(sq, axes)
      v = Add(ms, eps)
      r = Sqrt(v)
      n = Div(x, r)
      y = Mul(gamma, n)
    }"""

MODEL = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) {
      b = Relu(x)
      y = Add(b, x)
    }"""


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (_RenamesTheOutput, "graph outputs changed from ['y'] to ['renamed']"),
        (_EmitsAContribOpWithoutItsOpset, "is in domain 'com.microsoft', which the model does not import"),
        (_WidensTheOutput, "graph output 'y' changed shape from"),
    ],
)
def test_structural_ensures_fail_loudly_without_verification(broken, message):
    spec = PassSpec("broken", lambda context: broken(), "test pass")
    optimized, report = run_pipeline(parse_model(MODEL), [spec], verifier=None)
    record = report.passes[0]
    assert record.status == STATUS_FAILED and record.detail.startswith("PostconditionError")
    assert message in record.detail
    assert [node.op_type for node in optimized.graph] == ["Relu", "Add"]  # rolled back
    with pytest.raises(ir.passes.PostconditionError):
        run_pipeline(parse_model(MODEL), [spec], context=PassContext(Options(raise_errors=True)))


def test_a_pass_that_declares_a_new_interface_may_change_it():
    class Specializes(_WidensTheOutput):
        keeps_interface = False

    _, report = run_pipeline(parse_model(MODEL), [PassSpec("bind", lambda c: Specializes(), "test")], verifier=None)
    assert report.passes[0].status == STATUS_APPLIED


def test_one_pass_imports_alone_and_runs_in_someone_elses_pass_manager():
    script = """
import sys
import onnx_ir as ir
before = set(sys.modules)
from passes.fusion.rms_norm import RmsNormFusion
loaded = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("passes", "optimizer"))
print(len(loaded), " ".join(loaded), "rich" in sys.modules, "onnxruntime" in sys.modules)
model = ir.from_proto(__import__("onnx").parser.parse_model(sys.argv[1]))
manager = ir.passes.PassManager([ir.passes.common.RemoveUnusedNodesPass(), RmsNormFusion()])
result = manager(model)
print(result.modified, sum(node.op_type == "SimplifiedLayerNormalization" for node in result.model.graph))
"""
    output = subprocess.run(
        [sys.executable, "-c", script, RMS_NORM],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    count, *modules, has_rich, has_ort = output[0].split()
    # 18 since optimizer.runtime's session code became optimizer.sessions (a module more, no more code loaded).
    assert int(count) <= 18, modules
    assert not {"passes.catalog", "optimizer.registry", "optimizer.api", "optimizer.cli"} & set(modules)
    assert (has_rich, has_ort) == ("False", "False")
    modified, fused = output[1].split()
    assert modified == "True" and int(fused) > 0


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_spine_names_no_pass_and_no_pass_reaches_the_pipeline():
    pass_side = {"optimizer.registry", "optimizer.api", "optimizer.pipeline", "optimizer.cli", "optimizer.report"}
    for path in (ROOT / "passes").rglob("*.py"):
        reached = {name for name in _imports(path) if name in pass_side or name.startswith("optimizer.compare")}
        assert not reached, f"{path.relative_to(ROOT)} imports {reached}"
    for path in (ROOT / "optimizer").rglob("*.py"):
        named = {name for name in _imports(path) if name.split(".")[0] == "passes"}
        allowed = {"passes.catalog"} if path.name == "registry.py" else set()
        assert named <= allowed, f"{path.relative_to(ROOT)} imports {named - allowed}"


def test_results_are_onnx_ir_results_with_notes():
    from passes.cleanup import RemoveUnusedPass

    result = RemoveUnusedPass()(parse_model(MODEL))
    assert isinstance(result, ir.passes.PassResult)
    assert not isinstance(result, NotedResult) or result.refusals == []


def test_a_contrib_op_inside_a_function_that_imports_its_domain_passes_the_ensures():
    import onnx

    proto = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 17, "custom" : 1]>
        g (float[N, 4] x) => (float[N, 4] y) {
          a = Identity(x)
          y = custom.F(a)
        }
        <domain: "custom", opset_import: ["" : 17, "com.microsoft" : 1]>
        F (t) => (u) {
          u = com.microsoft.Gelu(t)
        }""")
    _, report = optimize_with_report(ir.from_proto(proto), inputs={"x": np.ones((2, 4), np.float32)})
    assert all(record.status != STATUS_FAILED for record in report.passes), [r.detail for r in report.passes]


def test_verbose_works_after_the_subcommand_too(tmp_path, capsys):
    model = parse_model(LAYER_NORM_WITH_INPUT_EPSILON)
    path, inputs = tmp_path / "m.onnx", tmp_path / "inputs.npz"
    ir.save(model, path)
    np.savez(inputs, **_feeds())
    command = ["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--passes", "+fuse-layer-norm"]
    assert main([*command, "--inputs", str(inputs), "-v"]) == 0
    assert f"fuse-layer-norm: {REFUSAL}" in capsys.readouterr().out


def test_a_pass_that_reports_no_change_leaves_the_model_as_it_was():
    # onnxscript's rule sets delete every unused node and initializer after a round, even one where
    # nothing fired: simplify-ops and every fusion reported modified=False on a model they had changed.
    from optimizer.registry import all_passes

    model = parse_model(
        """
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 4] x) => (float[2, 4] y) <float[3] unused = {1.0, 2.0, 3.0}> {
            dead = Relu (x)
            y = Abs (x)
        }
        """
    )
    for spec in all_passes():
        if spec.approximate or spec.needs or not spec.name.startswith(("fuse-", "simplify-")):
            continue
        result = spec.factory(PassContext(Options()))(model.clone())
        if not result.modified:
            assert "unused" in result.model.graph.initializers, spec.name
            assert [node.op_type for node in result.model.graph] == ["Relu", "Abs"], spec.name

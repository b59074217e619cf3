"""graphopt compare end to end: the example encoder against its optimized version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from optimizer.cli import main
from optimizer.compare.comparison import SCHEMA, CompareSettings, compare
from optimizer.compare.report import write_html, write_json
from optimizer.errors import InputSpecError
from optimizer.runtime import import_onnxruntime
from tests.helpers import parse_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "encoder.onnx"
QUICK = dict(time_budget=2.0, iterations=20, warmup=2)


@pytest.fixture(scope="module")
def optimized_example(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("compare") / "encoder.optimized.onnx"
    optimizer.optimize(EXAMPLE, output=output)
    return output


@pytest.fixture(scope="module")
def report(optimized_example):
    settings = CompareSettings(eps=("cpu",), batches=(1, 2), threads=1, profile=True, **QUICK)
    return compare(EXAMPLE, optimized_example, settings=settings, dims={"sequence": 32})


def test_report_has_every_figure(report):
    cpu = report.providers[0]
    assert cpu.ep == "cpu" and cpu.available
    assert [batch.batch for batch in cpu.batches] == [1, 2]
    for batch in cpu.batches:
        assert batch.before.runs == batch.after.runs >= 10
        assert batch.before.median_ms > 0 and batch.after.p99_ms >= batch.after.median_ms
        assert batch.ratio.low <= batch.ratio.ratio <= batch.ratio.high
        assert batch.throughput_after == pytest.approx(batch.batch / (batch.after.median_ms / 1000))
    assert cpu.memory_before.session_rss_bytes > 0 and cpu.memory_after.peak_rss_bytes > 0
    (accuracy,) = cpu.accuracy
    assert accuracy.name == "last_hidden_state" and accuracy.max_abs_error < 1e-4 and accuracy.cosine > 0.99999
    assert "MatMul" in cpu.profile_before_ms and "MatMul" in cpu.profile_after_ms
    assert report.before.nodes > report.after.nodes
    assert report.before.file_bytes > 0 and report.before.parameters == report.after.parameters
    env = report.environment
    assert env["onnxruntime"] == import_onnxruntime().__version__
    assert env["graph_optimization_level"] == "ORT_ENABLE_ALL" and env["intra_op_threads"] == 1
    assert env["cpu"]


def test_json_schema(report, tmp_path):
    path = tmp_path / "report.json"
    write_json(report, path)
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA
    assert set(data) == {"schema", "environment", "before", "after", "providers", "warnings"}
    provider = data["providers"][0]
    assert set(provider) >= {
        "ep",
        "available",
        "reason",
        "batches",
        "accuracy",
        "memory_before",
        "memory_after",
        "profile_before_ms",
        "profile_after_ms",
    }
    batch = provider["batches"][0]
    assert set(batch["before"]) == {"runs", "mean_ms", "median_ms", "p90_ms", "p99_ms", "min_ms", "spread"}
    assert set(batch["ratio"]) == {"ratio", "low", "high", "confidence", "trustworthy", "warning"}
    assert len(batch["samples_before_ms"]) == batch["before"]["runs"]
    assert set(provider["accuracy"][0]) >= {"name", "max_abs_error", "max_rel_error", "cosine", "top1_agreement"}


def test_html_is_self_contained(report, tmp_path):
    path = tmp_path / "report.html"
    write_html(report, path)
    page = path.read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert page.count("aria-label='latency histogram'") == 2, "one latency histogram per batch size"
    assert "last_hidden_state" in page and "ORT_ENABLE_ALL" in page
    external = page.replace("http://www.w3.org/2000/svg", "").replace("http-equiv", "")
    assert "http" not in external, "no external resources"


def test_cuda_requested_without_gpu_is_skipped_not_fatal(optimized_example, monkeypatch):
    ort = import_onnxruntime()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    settings = CompareSettings(eps=("cuda", "cpu"), batches=(1,), threads=1, **QUICK)
    result = compare(EXAMPLE, optimized_example, settings=settings, dims={"sequence": 16})
    cuda, cpu = result.providers
    assert not cuda.available and "onnxruntime-gpu is not installed" in cuda.reason and not cuda.batches
    assert cpu.available and cpu.batches


def test_unknown_ep_is_a_user_error(optimized_example):
    with pytest.raises(InputSpecError, match="--ep tpu"):
        compare(EXAMPLE, optimized_example, settings=CompareSettings(eps=("tpu",)))


def test_models_with_different_inputs_are_refused(optimized_example):
    gpt2 = Path(__file__).parent / "fixtures" / "gpt2_legacy.onnx"
    with pytest.raises(InputSpecError, match="different inputs"):
        compare(EXAMPLE, gpt2, settings=CompareSettings(**QUICK))


def test_cli_compare_writes_json_and_html(optimized_example, tmp_path, capsys):
    json_path, html_path = tmp_path / "c.json", tmp_path / "c.html"
    code = main(
        [
            "compare",
            str(EXAMPLE),
            str(optimized_example),
            "--dim",
            "sequence=16",
            "--threads",
            "1",
            "--time-budget",
            "1",
            "--iterations",
            "10",
            "--warmup",
            "1",
            "--json",
            str(json_path),
            "--html",
            str(html_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "latency on cpu" in out and "accuracy of AFTER vs BEFORE" in out
    assert json.loads(json_path.read_text())["schema"] == SCHEMA
    assert html_path.read_text().startswith("<!doctype html>")


def test_optimize_then_compare(tmp_path, capsys):
    output = tmp_path / "fast.onnx"
    code = main(
        [
            "optimize",
            str(EXAMPLE),
            "-o",
            str(output),
            "--dim",
            "sequence=16",
            "--compare",
            "--threads",
            "1",
            "--time-budget",
            "1",
            "--iterations",
            "10",
            "--warmup",
            "1",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "remove-unused" in out and "latency on cpu" in out


def test_model_onnxruntime_rejects_is_a_one_line_error(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # onnx's checker accepts this (it does not infer shapes); ONNX Runtime refuses a rank-3 Gemm input.
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"])],
        "bad_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
        [numpy_helper.from_array(np.ones((4, 4), "float32"), "w")],
    )
    bad = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), bad)
    code = main(["compare", str(bad), str(bad), "--time-budget", "1", "--iterations", "2", "--warmup", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "ONNX Runtime cannot load it" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_model_that_loads_but_cannot_run_is_a_one_line_error(tmp_path, capsys):
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[7] y) {
          shape = Constant<value = int64[1] {7}>()
          y = Reshape(x, shape)
        }""")
    path = tmp_path / "runfail.onnx"
    ir.save(model, path)
    code = main(["compare", str(path), str(path), "--time-budget", "1", "--iterations", "2"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert error.startswith(f"graphopt: error: {path}: ONNX Runtime cannot run it on cpu: ")


def test_optimizer_compare_is_the_comparison_tool_whatever_was_imported_first():
    import optimizer.compare.report  # noqa: F401

    assert optimizer.compare.compare is compare and optimizer.compare.report.write_json is write_json


def test_a_kv_cache_model_without_generate_is_compared_on_one_run_as_before():
    # --generate is what turns on generation timing and the language-model accuracy.
    gpt2 = Path(__file__).parent / "fixtures" / "gpt2_kv_legacy.onnx"
    settings = CompareSettings(threads=1, time_budget=1.0, iterations=3, warmup=0)
    result = compare(gpt2, gpt2, settings=settings, dims={"sequence": 4, "past_sequence": 4})
    (cpu,) = result.providers
    assert [batch.batch for batch in cpu.batches] == [1] and not cpu.generation and cpu.llm_accuracy is None
    assert cpu.accuracy[0].name == "logits" and cpu.accuracy[0].exact

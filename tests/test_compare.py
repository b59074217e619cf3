"""graphopt compare end to end: the example encoder against its optimized version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from optimizer import cpu_features
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


def test_a_p99_of_under_a_hundred_pairs_is_left_out_and_said(report):
    import io

    from rich.console import Console

    from optimizer.compare.report import render_comparison

    assert all(batch.before.runs < 100 and batch.after.p99_ms is None for batch in report.providers[0].batches)
    out = io.StringIO()
    render_comparison(report, Console(file=out, width=200))
    assert "p99 —: under 100 pairs" in out.getvalue()


def test_report_has_every_figure(report):
    cpu = report.providers[0]
    assert cpu.ep == "cpu" and cpu.available
    assert [batch.batch for batch in cpu.batches] == [1, 2]
    for batch in cpu.batches:
        assert batch.before.runs == batch.after.runs >= 10
        assert batch.before.median_ms > 0 and batch.after.p90_ms >= batch.after.median_ms
        assert batch.after.p99_ms is None or batch.after.p99_ms >= batch.after.p90_ms
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
    assert env["cpu"] == cpu_features.cpu_name() and env["cpu_features"] == cpu_features.detect().describe()
    assert env["cpu_microarchitecture"] == cpu_features.microarchitecture()
    assert "stop spinning when a run returns" in env["timing"]


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
    assert "read as linux-vmhwm" in " ".join(out.split())  # the terminal says how the memory peak was read
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


# --- what compare says: accuracy on the user's data, parameters of quantized models, models in memory ----

FAST = CompareSettings(eps=("cpu",), batches=(1,), threads=1, time_budget=0.5, iterations=5, warmup=1)


@pytest.fixture(scope="module")
def quantized_examples(tmp_path_factory) -> dict[str, Path]:
    """The example quantized three ways, unverified: what these tests read is compare's and the parameter count's
    view of a quantized file, not the verifier's (on this example each file is byte for byte the verified one,
    checked 2026-12-07; the quantizers' verification is tested in tests/test_quantization_pipeline.py and the
    int4 tests)."""
    from optimizer.inputs import make_inputs

    folder = tmp_path_factory.mktemp("quantized")
    original = ir.load(EXAMPLE)
    calibration = make_inputs(original, {"batch": 16, "sequence": 12}, seed=3)
    models = {}
    for name, options in {
        "dynamic": {"quantize": "dynamic", "quantize_embeddings": True},
        "static": {"quantize": "static"},
        "int4": {"quantize": "int4"},
    }.items():
        models[name] = optimizer.optimize(
            EXAMPLE, output=folder / f"{name}.onnx", calibration=calibration, verify=False, **options
        )
    return {name: Path(path) for name, path in models.items()}


@pytest.mark.parametrize(
    ("name", "ops"),
    [
        ("dynamic", {"DynamicQuantizeMatMul", "QAttention"}),
        ("static", {"DequantizeLinear", "QAttention"}),
        ("int4", {"MatMulNBits", "GatherBlockQuantized"}),
    ],
)
def test_quantized_models_have_the_parameters_of_their_float_original(quantized_examples, name, ops):
    from optimizer.parameters import count_parameters

    quantized = ir.load(quantized_examples[name])
    assert ops <= {node.op_type for node in quantized.graph}, "the quantized ops this test is about are there"
    # int8 and int4 weights counted at their logical size; scales and zero points are not weights
    assert count_parameters(quantized) == count_parameters(ir.load(EXAMPLE))


def test_a_float_model_counts_its_float_weights_only():
    from optimizer.parameters import count_parameters

    model = parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 4] y)
        <float[3, 4] w = {1,2,3,4,5,6,7,8,9,10,11,12}, float eps = {1}, int64[2] shape = {2, 4}>
        { m = MatMul(x, w)  y = Reshape(m, shape) }
        """
    )
    assert count_parameters(model) == 12


def test_accuracy_is_measured_on_every_sample_of_the_inputs(quantized_examples, tmp_path):
    from optimizer.inputs import make_inputs

    samples = make_inputs(ir.load(EXAMPLE), {"batch": 40, "sequence": 10}, seed=7)
    folder = tmp_path / "held_out"
    folder.mkdir()
    for index in range(4):
        np.savez(folder / f"{index}.npz", **{k: v[index * 10 : (index + 1) * 10] for k, v in samples.items()})
    for given, label in ((samples, "inputs (40 samples)"), (folder, "(40 samples in 4 files)")):
        report = compare(EXAMPLE, quantized_examples["dynamic"], settings=FAST, inputs=given)
        cpu = report.providers[0]
        (accuracy,) = cpu.accuracy
        assert accuracy.samples == 40 and label in cpu.accuracy_data
        assert 0.99 < accuracy.cosine < 1.0
        # floored at the output's RMS: int8 rounding is a small fraction of it, whatever a value's own size
        assert accuracy.max_rel_error < 0.2


def test_without_inputs_the_calibration_samples_are_measured_and_said_to_be(quantized_examples):
    from optimizer.inputs import make_inputs

    calibration = make_inputs(ir.load(EXAMPLE), {"batch": 16, "sequence": 12}, seed=3)
    report = compare(EXAMPLE, quantized_examples["static"], settings=FAST, calibration=calibration)
    assert report.providers[0].accuracy[0].samples == 16
    assert any("the samples the approximate passes were fitted to" in w for w in report.warnings)
    generated = compare(EXAMPLE, quantized_examples["static"], settings=FAST)
    assert generated.providers[0].accuracy_data.startswith("generated inputs (1 sample, one run)")


def test_compare_takes_what_optimize_takes(optimized_example):
    import onnx

    proto = onnx.load(EXAMPLE)
    report = compare(proto, ir.load(optimized_example), settings=FAST, dims={"sequence": 8})
    assert report.before.path == "main_graph (onnx ModelProto)"
    assert report.after.path.endswith("(onnx_ir Model)")
    assert report.before.file_bytes > 0 and report.before.parameters == report.after.parameters
    assert report.providers[0].accuracy[0].cosine > 0.99999
    assert report.providers[0].memory_after.peak_rss_bytes > 0
    with pytest.raises(TypeError, match="compare\\(\\) takes a path, onnx.ModelProto or onnx_ir.Model, not int"):
        compare(3, optimized_example, settings=FAST)


def test_every_timed_session_stops_its_threads_spinning_when_a_run_returns(monkeypatch):
    # Interleaved sessions: the idle one's spinning intra-op threads took the cores from the other's run
    # (MiniLM on 2 cores: 8.3 ms alone, 16.2 ms interleaved; a one-layer float MatMul 0.16 -> 0.28 ms).
    from optimizer import generation, runtime
    from optimizer.compare import timing
    from passes import _kernel_timing

    opened = []

    def record(source, options, providers):
        opened.append(options.get_session_config_entry("session.force_spinning_stop"))
        raise RuntimeError("recorded")

    for module in (timing, generation, _kernel_timing):
        monkeypatch.setattr(module, "open_session", record)
    model = ir.load(EXAMPLE)
    with pytest.raises(RuntimeError, match="recorded"):
        timing.TimedSession(str(EXAMPLE), "cpu", {}, 1)
    with pytest.raises(RuntimeError, match="recorded"):
        _kernel_timing.OneModel(model, {}, "cpu", 1, "time it")
    with pytest.raises(RuntimeError, match="recorded"):
        generation.CausalLMSession(str(EXAMPLE), None, ["CPUExecutionProvider"], 1)
    assert opened == ["1", "1", "1"]
    # Sessions that only compute (verification, calibration) keep ONNX Runtime's defaults.
    with pytest.raises(RuntimeError, match="does not have configuration"):
        runtime.session_options("all", 2).get_session_config_entry("session.force_spinning_stop")

"""Review of README.md and docs/benchmarks.md against the code (session 66): each test holds a behaviour the
corrected README states."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import optimizer
from optimizer import exit_codes
from optimizer.errors import InputSpecError
from optimizer.options import max_threads
from tests._cli_models import run_cli, save_matmul_model


def test_a_session_thread_count_past_the_threads_cap_is_refused_as_a_typo(tmp_path, monkeypatch, capsys):
    # README, Threads: $GRAPHOPT_SESSION_THREADS above --threads' cap is an error (exit 2). It was taken as given:
    # 3000 threads per session kept a three-node model's optimization running past two minutes.
    model = save_matmul_model(tmp_path / "m.onnx")
    monkeypatch.setenv("GRAPHOPT_SESSION_THREADS", str(max_threads() + 1))
    # --no-verify and one pass: no session is opened, so the run is quick with the variable taken as given too.
    argv = ["optimize", model, "-o", tmp_path / "out.onnx", "--no-verify", "--passes", "remove-unused", "-q"]
    code, _, err = run_cli(argv, capsys)
    assert code == exit_codes.USAGE
    assert err.startswith(f"graphopt: error: $GRAPHOPT_SESSION_THREADS={max_threads() + 1}: more than {max_threads()}")
    assert err.count("\n") == 1
    assert not (tmp_path / "out.onnx").exists()


def test_quiet_prints_no_warning_for_an_old_flag_name(tmp_path, capsys):
    # README, Progress and verbosity: -q prints nothing but errors and failed gates (--help: "errors only"); an old
    # spelling's warning (--report for --pipeline-json) was printed all the same.
    model = save_matmul_model(tmp_path / "m.onnx")
    report = tmp_path / "r.json"
    argv = ["optimize", model, "-o", tmp_path / "out.onnx", "--no-verify", "--passes", "remove-unused"]
    code, out, err = run_cli([*argv, "--report", report, "-q"], capsys)
    assert (code, out, err) == (exit_codes.OK, "", "")
    assert json.loads(report.read_text())["schema"] == "graphopt.pipeline-report/1"
    code, _, err = run_cli([*argv, "--report", report], capsys)
    assert code == exit_codes.OK
    assert "graphopt: warning: --report is now --pipeline-json" in err


def test_an_input_with_no_shape_is_refused_whatever_inputs_are_given(tmp_path, capsys):
    # README, Errors: an input with no shape was "(pass --inputs or --no-verify)"; neither helps: the file is one
    # onnx's checker rejects. Given as an onnx_ir.Model (not checked so), the refusal said to pass --inputs while
    # inputs were given: verification generates sets of its own beside them.
    proto = onnx.load(save_matmul_model(tmp_path / "m.onnx"))
    proto.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(proto, tmp_path / "noshape.onnx")
    np.savez(tmp_path / "x.npz", x=np.ones((2, 8), np.float32))
    for extra in (["--inputs", tmp_path / "x.npz"], ["--no-verify"]):
        code, _, err = run_cli(["optimize", tmp_path / "noshape.onnx", "-o", tmp_path / "o.onnx", *extra], capsys)
        assert code == exit_codes.USAGE
        assert "input 'x' has no shape, which ONNX requires on graph inputs" in err and err.count("\n") == 1
    model = ir.load(tmp_path / "noshape.onnx")
    with pytest.raises(InputSpecError) as raised:
        optimizer.optimize(model, inputs={"x": np.ones((2, 8), np.float32)})
    assert "which ONNX requires on graph inputs" in str(raised.value)
    assert "pass --inputs" not in str(raised.value)


def test_nodes_that_name_the_default_domain_ai_onnx_are_read_as_its_other_spelling(tmp_path, capsys):
    # README, Command line: a model importing the default operator set as "ai.onnx" is read and written with "".
    # One whose nodes name that domain too (ONNX Runtime runs it) was refused: onnx's checker finds no schema
    # for "ai.onnx" nodes, though the reader renames them.
    proto = onnx.load(save_matmul_model(tmp_path / "m.onnx"))
    for node in proto.graph.node:
        node.domain = "ai.onnx"
    proto.opset_import[0].domain = "ai.onnx"
    onnx.save(proto, tmp_path / "spelled.onnx")
    code, _, err = run_cli(["optimize", tmp_path / "spelled.onnx", "-o", tmp_path / "o.onnx", "-q"], capsys)
    assert code == exit_codes.OK, err
    result = onnx.load(tmp_path / "o.onnx")
    assert {opset.domain for opset in result.opset_import} == {""}
    assert {node.domain for node in result.graph.node} == {""}
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    (before,) = ort.InferenceSession(tmp_path / "spelled.onnx").run(None, {"x": x})
    (after,) = ort.InferenceSession(tmp_path / "o.onnx").run(None, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def test_an_interval_within_ten_percent_either_way_is_still_flagged_wide_past_1_2_from_end_to_end():
    # README, Honesty: the report warned "when the interval is wider than ±10 %"; the rule is the upper end over
    # 1.2× the lower (about ±9 %): 0.91–1.09 is flagged. Doc finding: the corrected README states this rule.
    from optimizer.compare.stats import paired_ratio

    before = [10.0] * 20
    after = (10 * (1 + 0.22 * np.linspace(-1, 1, 20))).tolist()
    estimate = paired_ratio(before, after)
    assert 0.9 <= estimate.low and estimate.high <= 1.1
    assert estimate.high / estimate.low > 1.2
    assert not estimate.trustworthy and "too wide" in estimate.warning

"""Review s63, torchvision sweep: ``--fp16`` on a two-layer torchvision ViT (legacy export, opset 17).

ONNX Runtime 1.32's CPU graph optimizations crash (SIGSEGV) loading that model once it is float16, and graphopt
opened the converted result at ``ORT_ENABLE_ALL`` in its own process to check it against its twin: the whole run
died with exit -11, no report, no output and no error message. The load is now tried in a child process first,
and the conversion rolled back with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import onnx_ir as ir

from optimizer.runtime import loading_crash

FIXTURE = Path(__file__).parent / "fixtures" / "vit_tiny_legacy.onnx"
REPO = Path(__file__).resolve().parents[1]


def test_fp16_of_a_model_onnxruntime_crashes_on_is_rolled_back_not_a_crash(tmp_path):
    out = tmp_path / "out.onnx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "optimize", str(FIXTURE), "-o", str(out), "--fp16", "--target", "cuda",
         "--passes", "fold-constants,fuse-attention,convert-float16"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert out.exists()
    if any(node.op_type == "Cast" for node in onnx.load(out).graph.node):
        return  # an ONNX Runtime that no longer crashes: the conversion was checked and kept
    assert "crashed (signal SIGSEGV) loading the result" in run.stdout


def test_loading_crash_is_none_for_a_model_onnxruntime_loads():
    model = ir.serde.deserialize_model(onnx.load(FIXTURE))
    assert loading_crash(model, "all") is None


def test_a_float16_input_that_onnxruntime_crashes_on_is_optimized_not_a_crash(tmp_path):
    """The noise floor loads the original at ``ORT_ENABLE_ALL`` too: a float16 input that crashes ONNX Runtime
    there killed the default run (exit -11) before any pass was checked. Its floor is now left out."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = ir.serde.deserialize_model(convert_float_to_float16(onnx.load(FIXTURE), keep_io_types=True))
    converted.graph.sort()  # the converter appends its input Casts after their users
    given = tmp_path / "fp16.onnx"
    ir.save(converted, given)
    out = tmp_path / "out.onnx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "optimize", str(given), "-o", str(out), "--passes", "fold-constants"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert out.exists()


def test_only_a_fault_in_the_child_counts_as_a_crash(monkeypatch):
    # A child killed for memory (SIGKILL) or by the user's Ctrl-C (SIGINT) is no ONNX Runtime crash: the caller's own
    # session says what happens then, and the pass is not rolled back for a crash it did not have (a review).
    import signal

    model = ir.load(FIXTURE)
    cases = ((-signal.SIGKILL, None), (-signal.SIGINT, None), (0, None), (-signal.SIGSEGV, "crashed (signal SIGSEGV)"))
    for code, said in cases:
        monkeypatch.setattr(subprocess, "run", lambda *a, code=code, **k: subprocess.CompletedProcess(a, code))
        assert loading_crash(model) == said


def _crashing_float16(tmp_path: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = ir.serde.deserialize_model(convert_float_to_float16(onnx.load(FIXTURE), keep_io_types=True))
    converted.graph.sort()
    path = tmp_path / "fp16.onnx"
    ir.save(converted, path)
    return path


def test_compare_skips_the_cpu_where_a_float16_model_crashes_onnxruntime_not_a_crash(tmp_path):
    """``graphopt compare`` loaded both models at ``ORT_ENABLE_ALL`` in its own process: AFTER, a float16 model that
    ONNX Runtime 1.32 segfaults loading so, ended the comparison with exit -11 and no report. The CPU is now skipped
    with the reason (tried in a child first), and a gate asked of it fails, as for an EP that is not installed."""
    after = _crashing_float16(tmp_path)
    if loading_crash(ir.load(after), "all") is None:
        return  # an ONNX Runtime that no longer crashes on it: nothing to skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "optimizer.cli", "compare", str(FIXTURE), str(after), "--iterations", "3"]
    run = subprocess.run(
        [*base, "--json", str(tmp_path / "c.json")], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    (provider,) = __import__("json").loads((tmp_path / "c.json").read_text())["providers"]
    assert provider["available"] is False
    assert "crashed (signal SIGSEGV) loading AFTER" in provider["reason"]
    gated = subprocess.run(
        [*base, "--max-ratio", "2"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False
    )
    assert gated.returncode == 4, (gated.returncode, gated.stderr[-2000:])
    assert "crashed (signal SIGSEGV)" in gated.stderr


def test_a_load_that_hangs_is_killed_and_named(monkeypatch):
    """The child had no time limit: a load that hangs hung graphopt with it. It is now killed after
    ``load_seconds`` and reported as hung."""
    from optimizer.runtime import load_seconds

    model = ir.load(FIXTURE)

    def hang(*args, **kwargs):
        assert kwargs["timeout"] == load_seconds(model)
        raise subprocess.TimeoutExpired(args[0], kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", hang)
    assert loading_crash(model) == f"hung (no load within {load_seconds(model):.0f} s)"

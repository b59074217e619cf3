"""CUDA counts as available only where a session really runs on it, not where it is merely compiled in.

No GPU is needed: ONNX Runtime is monkeypatched to look like onnxruntime-gpu on a machine
whose CUDA provider falls back to the CPU, raises, or works.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer import runtime
from optimizer.cli import main
from optimizer.compare.timing import resolve_execution_providers
from optimizer.runtime import CUDA_PROVIDER, cuda_unavailable_reason, import_onnxruntime

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "encoder.onnx"


@pytest.fixture(autouse=True)
def fresh_probe():
    runtime._probe_cuda.cache_clear()
    yield
    runtime._probe_cuda.cache_clear()


class _Sessions:
    """Stands in for ``onnxruntime.InferenceSession``: CPU sessions are real; a CUDA request does ``cuda``."""

    def __init__(self, real, cuda: str) -> None:
        self.real, self.cuda, self.cuda_requests = real, cuda, 0

    def __call__(self, source, options=None, providers=None, **kwargs):
        providers = list(providers or ["CPUExecutionProvider"])
        if CUDA_PROVIDER not in providers:
            return self.real(source, options, providers=providers, **kwargs)
        self.cuda_requests += 1
        if self.cuda == "raises":
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected ; GPU=0 ; file=cuda_call.cc")
        session = self.real(source, options, providers=["CPUExecutionProvider"], **kwargs)
        if self.cuda == "works":
            return _ClaimsCuda(session)
        return session  # "falls back": the real CPU session, whose providers lack CUDA


class _ClaimsCuda:
    def __init__(self, session) -> None:
        self.session = session

    def get_providers(self):
        return [CUDA_PROVIDER, "CPUExecutionProvider"]

    def run(self, *args, **kwargs):
        return self.session.run(*args, **kwargs)


@pytest.fixture
def gpu_build(monkeypatch):
    """onnxruntime as onnxruntime-gpu would look: CUDA listed among the available providers."""
    ort = import_onnxruntime()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, "CPUExecutionProvider"])

    def install(cuda: str) -> _Sessions:
        sessions = _Sessions(ort.InferenceSession, cuda)
        monkeypatch.setattr(ort, "InferenceSession", sessions)
        return sessions

    return install


def test_cpu_build_says_onnxruntime_gpu_is_missing_without_probing(monkeypatch):
    ort = import_onnxruntime()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    sessions = _Sessions(ort.InferenceSession, "works")
    monkeypatch.setattr(ort, "InferenceSession", sessions)
    assert "onnxruntime-gpu is not installed" in cuda_unavailable_reason()
    assert sessions.cuda_requests == 0


def test_gpu_build_without_a_gpu_is_unavailable(gpu_build):
    sessions = gpu_build("falls back")
    reason = cuda_unavailable_reason()
    assert reason is not None and "no GPU is usable" in reason and "\n" not in reason
    assert cuda_unavailable_reason() == reason and sessions.cuda_requests == 1, "the probe is cached"
    (cuda,) = resolve_execution_providers(["cuda"])
    assert not cuda.available and cuda.reason == reason


def test_cuda_that_raises_is_one_line(gpu_build):
    gpu_build("raises")
    reason = cuda_unavailable_reason()
    assert reason.startswith("onnxruntime-gpu is installed but CUDA did not start: CUDA failure 100")
    assert "\n" not in reason


def test_working_cuda_is_available(gpu_build):
    gpu_build("works")
    assert cuda_unavailable_reason() is None
    cuda, cpu = resolve_execution_providers(["cuda", "cpu"])
    assert cuda.available and cuda.reason == "" and cpu.available


def test_compare_on_cuda_without_a_gpu_is_a_skip_not_a_traceback(gpu_build, tmp_path, capsys):
    gpu_build("falls back")
    json_path = tmp_path / "c.json"
    code = main(
        ["compare", str(EXAMPLE), str(EXAMPLE), "--ep", "cuda", "--json", str(json_path), "--dim"]
        + ["sequence=8", "--iterations", "10", "--warmup", "1", "--time-budget", "1", "--threads", "1"]
    )
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "cuda: skipped" in captured.out and "no GPU is usable" in captured.out
    assert code == 0
    assert '"available": false' in json_path.read_text()


def test_a_timed_session_that_fell_back_to_the_cpu_is_not_timed_as_cuda(gpu_build):
    from optimizer.compare.timing import TimedSession
    from optimizer.errors import InvalidModelError
    from optimizer.inputs import make_inputs
    from optimizer.model_io import load_model

    gpu_build("falls back")
    inputs = make_inputs(load_model(EXAMPLE), {"sequence": 8})
    with pytest.raises(InvalidModelError, match="ran it on the CPU, not on cuda"):
        TimedSession(str(EXAMPLE), "cuda", inputs, 1)
    assert TimedSession(str(EXAMPLE), "cpu", inputs, 1).run() > 0

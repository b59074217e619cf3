"""Shared fixtures: the exported transformer models."""

from __future__ import annotations

import os

import onnx_ir as ir
import pytest

from tests.helpers import EXPORTED_MODELS, FIXTURES


def pytest_configure(config):
    """Each xdist worker's ONNX Runtime sessions (and those of the graphopt processes it starts) take a share of
    the cores, not one thread per core each: two workers on two cores spinning two threads each ran the suite
    20-30 % slower (``optimizer.runtime.SESSION_THREADS_ENV``)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "GRAPHOPT_SESSION_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        os.environ["GRAPHOPT_SESSION_THREADS"] = str(max(1, cores // workers))


@pytest.fixture(params=EXPORTED_MODELS)
def exported_model(request) -> tuple[str, ir.Model]:
    """Each exported transformer fixture as (name, model)."""
    return request.param, ir.load(FIXTURES / f"{request.param}.onnx")


@pytest.fixture(autouse=True)
def _no_layer_timing(monkeypatch, tmp_path):
    """Tests time nothing: the int8 budget's per-layer timing (``passes.quantization._layer_speed``) is
    replaced by a fixed cost model (multiply-adds; int8 half of float, per-row 0.6, weight-only 1.2,
    int4 0.8), a whole model's by a ratio of 0.5, and its cache goes to a temporary folder."""
    from passes.quantization import _layer_speed

    def modelled(self, shape, builders):
        flops = shape.macs * 1e-9
        factors = {"DynamicQuantizeMatMul": 0.5, "per-row quantizer + MatMulIntegerToFloat": 0.6}
        factors["DequantizeLinear + MatMul"] = 1.2
        return {form: flops * factors.get(form, 1.0 if form == _layer_speed.FLOAT else 0.8) for form in builders}

    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "graphopt-cache"))
    monkeypatch.setattr(_layer_speed.LayerSpeeds, "_time", modelled)
    # A whole budgeted model against the float one (quantize-static's check): taken to run at half its latency.
    monkeypatch.setattr(_layer_speed.LayerSpeeds, "_models", lambda self, before, after, feeds: (0.5, 0.55, 0))


@pytest.fixture(autouse=True)
def _avx2_channel_block(monkeypatch):
    """Pruned Conv channel counts are those of an AVX2 CPU (ONNX Runtime's NCHWc block of 8) on every machine, so
    no test's counts change on one with AVX-512F (a block of 16); tests of that block set it themselves."""
    from passes.pruning import _base

    monkeypatch.setattr(_base, "CHANNEL_MULTIPLE", 8)


@pytest.fixture
def avx512(monkeypatch):
    """Pruning as on an x86 CPU with AVX-512F (ONNX Runtime's NCHWc block of 16), the suite's AVX2 pin undone."""
    from optimizer.cpu_features import CpuFeatures
    from passes.pruning import _base

    monkeypatch.setattr(_base, "CHANNEL_MULTIPLE", None)
    monkeypatch.setattr(_base, "cpu_features", lambda: CpuFeatures("x86", frozenset({"avx2", "avx512f"})))

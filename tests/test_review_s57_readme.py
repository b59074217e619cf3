"""Review s57 (README and docs against the code): findings with a test."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

import optimizer
from optimizer.cli import main
from optimizer.errors import RuntimeMissingError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "encoder.onnx"


@pytest.fixture
def no_onnxruntime(monkeypatch):
    """``import onnxruntime`` fails, as where neither the ``cpu`` nor the ``gpu`` extra is installed."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


def _pass_needing_onnxruntime(monkeypatch) -> list[str]:
    """Every pipeline resolves to one pass that imports ONNX Runtime when it runs (as fuse-group-query-attention's
    probes do; a real pass may find what it needs cached by an earlier run in the same process)."""
    import onnx_ir as ir

    import optimizer.api as api
    from optimizer.protocol import PassSpec
    from optimizer.runtime import import_onnxruntime

    class NeedsOnnxRuntime(ir.passes.InPlacePass):
        def call(self, model: ir.Model) -> ir.passes.PassResult:
            import_onnxruntime()
            return ir.passes.PassResult(model, False)

    spec = PassSpec("needs-onnxruntime", lambda context: NeedsOnnxRuntime(), "a test pass")
    monkeypatch.setattr(api, "resolve", lambda names, options: [spec])
    return ["needs-onnxruntime"]


def test_without_onnxruntime_a_pass_that_needs_it_stops_the_run_in_one_line(
    no_onnxruntime, monkeypatch, tmp_path, capsys
):
    # README: "Without either, graphopt stops with `ONNX Runtime is not installed: pip install 'graphopt[cpu]'
    # ...`". Under --no-verify nothing opened a session up front: the default pipeline's
    # fuse-group-query-attention raised it, was reported as a failed pass, and the run wrote a model with
    # the passes after it left undone and exited 0.
    _pass_needing_onnxruntime(monkeypatch)
    output = tmp_path / "out.onnx"
    code = main(["optimize", str(EXAMPLE), "-o", str(output), "--no-verify", "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert "graphopt: error: ONNX Runtime is not installed: pip install 'graphopt[cpu]'" in err
    assert "Traceback" not in err and not output.exists()


def test_without_onnxruntime_the_api_raises_rather_than_reporting_a_failed_pass(no_onnxruntime, monkeypatch):
    names = _pass_needing_onnxruntime(monkeypatch)
    with pytest.raises(RuntimeMissingError, match="ONNX Runtime is not installed"):
        optimizer.optimize(onnx.load(EXAMPLE), passes=names, verify=False)

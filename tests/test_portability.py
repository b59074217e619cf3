"""graphopt imports and measures memory where Linux-only facilities are missing (macOS, Windows)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from optimizer.compare import memory

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "encoder.onnx"


def test_import_optimizer_without_the_resource_module():
    # Windows has no ``resource``; a None entry in sys.modules makes ``import resource`` fail as it would there.
    code = (
        "import sys; sys.modules['resource'] = None\n"
        "import optimizer, optimizer.cli, optimizer.compare, optimizer.compare.memory, optimizer.cpu_features\n"
        "from optimizer.compare.comparison import compare\n"
        "print(optimizer.compare.compare is compare)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "True"


def test_the_memory_probe_says_how_it_read_the_peak():
    from optimizer.inputs import make_inputs
    from optimizer.model_io import load_model

    inputs = make_inputs(load_model(EXAMPLE), {"batch": 1, "sequence": 8})
    usage = memory.measure_session_memory(str(EXAMPLE), "cpu", inputs, 1)
    assert usage.method in ("linux-vmhwm-reset", "linux-vmhwm")
    assert usage.resettable is (usage.method == "linux-vmhwm-reset")
    assert usage.peak_rss_bytes >= usage.session_rss_bytes > 0


def test_without_proc_the_peak_comes_from_getrusage(monkeypatch):
    monkeypatch.setattr(memory, "_status_kib", lambda field: None)
    reader = memory._RssReader()
    assert reader.method == "rusage-maxrss" and not reader.resettable
    baseline = reader.reset()
    grown = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
    peak = reader.peak()
    del grown
    assert peak >= baseline > 0

"""Review s60 (CLI, files and reports): findings of a hostile review, each a test that failed before its fix."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tests._cli_models import run_cli, save_matmul_model


def _y(path: Path) -> np.ndarray:
    x = np.arange(16, dtype=np.float32).reshape(2, 8) / 16
    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_stale_link_at_the_output_is_replaced_not_refused(tmp_path, capsys):
    # README: "A symlink at -o is replaced by the model file, not written through". A link left from an earlier
    # build, into a folder since removed, was refused as "a link into ..., a folder that does not exist".
    model = save_matmul_model(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    out.symlink_to(tmp_path / "gone" / "old.onnx")
    code, _, err = run_cli(["optimize", model, "-o", out, "-q"], capsys)
    assert code == 0, err
    assert not out.is_symlink() and np.allclose(_y(out), _y(model))
    assert not (tmp_path / "gone").exists()


def test_a_stale_link_at_a_report_or_make_inputs_output_is_still_refused(tmp_path, capsys):
    # Those are written through their link: its target's folder must exist.
    model = save_matmul_model(tmp_path / "in.onnx")
    report, skeleton = tmp_path / "r.json", tmp_path / "x.npz"
    report.symlink_to(tmp_path / "gone" / "r.json")
    skeleton.symlink_to(tmp_path / "gone" / "x.npz")
    code, _, err = run_cli(["optimize", model, "-o", tmp_path / "o.onnx", "--pipeline-json", report, "-q"], capsys)
    assert code == 2 and "a folder that does not exist" in err and not (tmp_path / "o.onnx").exists()
    code, _, err = run_cli(["make-inputs", model, "-o", skeleton], capsys)
    assert code == 2 and "a folder that does not exist" in err


def test_compare_on_make_inputs_template_says_the_accuracy_cannot_tell(tmp_path, capsys):
    # make-inputs' zeros through Relu(x @ W) are zeros whatever W: a wrong AFTER was "bit-identical" on them, and
    # passed --min-cosine, with no word that the data could not tell (verification and calibration say so).
    import json

    before = save_matmul_model(tmp_path / "before.onnx")
    after = save_matmul_model(tmp_path / "after.onnx", noise=1.0)
    template, report = tmp_path / "inputs.npz", tmp_path / "c.json"
    assert run_cli(["make-inputs", before, "-o", template], capsys)[0] == 0
    argv = ["compare", before, after, "--inputs", template, "--iterations", "3", "--warmup", "0", "--json", report]
    code, out, err = run_cli([*argv, "--min-cosine", "0.99"], capsys)
    assert code == 0, err
    warnings = json.loads(report.read_text())["warnings"]
    assert any("'x' holds one value repeated in every sample" in warning for warning in warnings), warnings
    assert "one value repeated in every sample" in " ".join(out.split())  # the printed report says it too


def test_a_report_a_sticky_folder_will_not_let_us_replace_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    # In a shared sticky folder (/tmp), a file another user left can be neither removed nor renamed over, though a
    # new file can be made beside it: the run did all its work, wrote the model, then "cannot write the pipeline
    # report (Operation not permitted)", exit 2 with the model written and the report not.
    import stat

    model = save_matmul_model(tmp_path / "in.onnx")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777 | stat.S_ISVTX)
    (shared / "r.json").write_text("{}")
    someone_else = os.geteuid() + 1 if os.geteuid() else 4242  # owns neither the folder nor the file
    monkeypatch.setattr(os, "geteuid", lambda: someone_else)
    output = tmp_path / "out.onnx"
    code, _, err = run_cli(["optimize", model, "-o", output, "--pipeline-json", shared / "r.json", "-q"], capsys)
    assert code == 2 and "another user's file" in err and "\n" not in err.strip()
    assert not output.exists() and (shared / "r.json").read_text() == "{}"
    # A new name there, or a file of the user's own, is fine.
    monkeypatch.setattr(os, "geteuid", lambda: (shared / "r.json").stat().st_uid)
    code, _, err = run_cli(["optimize", model, "-o", output, "--pipeline-json", shared / "r.json", "-q"], capsys)
    assert code == 0, err


def test_a_failed_max_ratio_line_shows_the_interval_above_the_limit():
    # compare --max-ratio 1 failed (exit 4) with "AFTER takes 0.99x BEFORE's time (95 % interval up to 1.00x)":
    # the upper end, 1.0018, rounded to the limit itself, and the one line CI shows read as a pass.
    from types import SimpleNamespace

    from optimizer.gates import slower_failures

    batch = SimpleNamespace(batch=1, after=SimpleNamespace(runs=200), ratio=SimpleNamespace(ratio=0.9963, high=1.0018))
    report = SimpleNamespace(providers=[SimpleNamespace(available=True, ep="cpu", batches=[batch], generation=[])])
    (line,) = slower_failures(report, 1.0)
    assert "interval up to 1.002x" in line, line
    batch.ratio.high = 1.2345
    assert "interval up to 1.23x" in slower_failures(report, 1.0)[0]  # two decimals where they show it

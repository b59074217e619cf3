"""Review s65 (files, paths and processes): findings of a hostile review, each a test that failed before its fix."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer.model_io as model_io
from optimizer.model_io import load_model, save_model


def _external_model(path: Path, scale: float) -> Path:
    """``y = x @ (scale * I)`` over 64 float32 features, its 16 KiB of weights in ``NAME.data`` beside it."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        initializer=[numpy_helper.from_array((scale * np.eye(64)).astype(np.float32), "W")],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, os.fspath(path), save_as_external_data=True, location=f"{path.name}.data", size_threshold=0)
    return path


def _scale_of(path: Path) -> float:
    x = np.ones((1, 64), dtype=np.float32)
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return float(session.run(None, {"x": x})[0][0, 0])


class _Stop(Exception):
    """A run stopped (Ctrl-C, a failed rename) between placing its weights and placing its model."""


def test_a_save_that_races_another_on_one_output_never_breaks_the_model_the_other_wrote(tmp_path, monkeypatch):
    # Two saves to one -o at once (two `graphopt optimize` runs, or two threads of an API user), no OUT.data there
    # yet: both chose the name OUT.data, and the later placed its weights over the earlier's with os.replace. The
    # earlier's finished model then read the other run's weights; and a run stopped between its weights' rename and
    # its model's (Ctrl-C, a failed rename) removed "its" weights file, which was the finished model's: the model at
    # -o, reported written, no longer loaded.
    first = load_model(_external_model(tmp_path / "a" / "m.onnx", 2.0))
    second = load_model(_external_model(tmp_path / "b" / "m.onnx", 3.0))
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()
    real_save_file, real_pause = model_io.save_model_file, model_io._pause_for_tests
    calls = []

    def save_file_while_the_other_saves(model, path, external_data=None):  # noqa: ANN001
        real_save_file(model, path, external_data=external_data)
        if not calls:
            calls.append(path)
            save_model(second, output)  # the other run, from start to finish, while this one is staged
            assert _scale_of(output) == 3.0
            calls.append("the other is done")

    def stop_after_placing_the_weights(step: str) -> None:
        real_pause(step)
        if step == "data" and len(calls) == 2:
            assert _scale_of(output) == 3.0, "the other run's finished model reads this run's weights"
            raise _Stop

    monkeypatch.setattr(model_io, "save_model_file", save_file_while_the_other_saves)
    monkeypatch.setattr(model_io, "_pause_for_tests", stop_after_placing_the_weights)
    with pytest.raises(_Stop):
        save_model(first, output)
    assert _scale_of(output) == 3.0, "the finished model must still load with its own weights"
    assert sorted(p.name for p in output.parent.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_a_save_that_finishes_after_another_on_one_output_leaves_its_weights_and_no_orphan(tmp_path, monkeypatch):
    # The same race run to its end (a guard of the fix above, which passed before it too): the later save's model is
    # at -o with its own weights, placed under a fresh name, and the weights file of the model it replaced (the
    # other run's, placed after this save chose its name) does not stay behind, orphaned.
    first = load_model(_external_model(tmp_path / "a" / "m.onnx", 2.0))
    second = load_model(_external_model(tmp_path / "b" / "m.onnx", 3.0))
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()
    real_save_file = model_io.save_model_file
    calls = []

    def save_file_while_the_other_saves(model, path, external_data=None):  # noqa: ANN001
        real_save_file(model, path, external_data=external_data)
        if not calls:
            calls.append(path)
            save_model(second, output)

    monkeypatch.setattr(model_io, "save_model_file", save_file_while_the_other_saves)
    save_model(first, output)
    assert _scale_of(output) == 2.0
    left = sorted(p.name for p in output.parent.iterdir())
    assert len(left) == 2 and left[0] == "model.onnx" and left[1].startswith("model.onnx."), left


def test_a_timing_cache_write_cut_short_by_ctrl_c_leaves_no_temporary_file(tmp_path, monkeypatch):
    # The kernel timing cache (~/.cache/graphopt) is written through a temporary file that only an OSError removed:
    # a Ctrl-C (KeyboardInterrupt, or the CLI's Interrupted) while it was written left its tmp*.tmp file there for good.
    from passes import _kernel_timing

    folder = tmp_path / "cache"
    cache = _kernel_timing.TimingCache(folder / "timings.json")
    cache.put("kept", 1.0)

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003
        raise KeyboardInterrupt

    monkeypatch.setattr(_kernel_timing.json, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.put("cut short", 2.0)
    assert sorted(p.name for p in folder.iterdir()) == ["timings.json"]


def test_weights_are_placed_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    # A guard of the fix above: the placing is a hard link; a FAT or FUSE folder refuses one (EPERM), and the
    # weights are renamed then.
    import errno

    def no_links(source, target):  # noqa: ANN001
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(model_io.os, "link", no_links)
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()
    save_model(load_model(_external_model(tmp_path / "a" / "m.onnx", 2.0)), output)
    save_model(load_model(_external_model(tmp_path / "b" / "m.onnx", 3.0)), output)  # over the first
    assert _scale_of(output) == 3.0
    assert sorted(p.name for p in output.parent.iterdir())[0] == "model.onnx"
    assert len(list(output.parent.iterdir())) == 2


def test_the_size_compare_reports_counts_only_the_part_of_a_shared_weights_file_the_model_reads(tmp_path):
    # README: "File size includes external data". Two models that share one weights file (onnx.save appends a
    # second model's tensors to the file the first wrote) each counted the whole file: BEFORE was reported with the
    # other model's weights in its size, and the AFTER graphopt wrote (its own weights only) looked 17 times smaller.
    small = _external_model(tmp_path / "small.onnx", 2.0)  # 16 KiB of weights in small.onnx.data
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "V"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
        initializer=[numpy_helper.from_array(np.eye(256, dtype=np.float32), "V")],
    )
    big = tmp_path / "big.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10),
        os.fspath(big),
        save_as_external_data=True,
        location="small.onnx.data",  # appended: 256 KiB after small's 16 KiB
        size_threshold=0,
    )
    assert (tmp_path / "small.onnx.data").stat().st_size == (64 * 64 + 256 * 256) * 4
    assert model_io.model_file_bytes(small) == small.stat().st_size + 64 * 64 * 4
    assert model_io.model_file_bytes(big) == big.stat().st_size + 256 * 256 * 4
    alone = _external_model(tmp_path / "alone" / "m.onnx", 1.0)  # a file of its own: its whole size, as before
    assert model_io.model_file_bytes(alone) == alone.stat().st_size + (alone.parent / "m.onnx.data").stat().st_size


@pytest.mark.parametrize("where", ["model", "output folder"])
def test_a_path_with_a_newline_still_gets_a_one_line_error(tmp_path, capsys, where):
    # README: "a user mistake: one line `graphopt: error: ...`". A path holding a newline (or another control
    # character: a tab, an escape sequence that rewrites the terminal) was printed as it is: two lines.
    from tests._cli_models import run_cli, save_matmul_model

    model = save_matmul_model(tmp_path / "in.onnx")
    if where == "model":
        argv = ["optimize", tmp_path / "no\nsuch\x1b[2K.onnx", "-o", tmp_path / "out.onnx"]
    else:
        argv = ["optimize", model, "-o", tmp_path / "no\nfolder" / "out.onnx"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("graphopt: error: ") and "\x1b" not in err, err
    assert "no\\nsuch\\x1b[2K.onnx: no such file" in err if where == "model" else "no\\nfolder" in err


@pytest.mark.skipif(os.name == "nt", reason="POSIX file names are bytes")
def test_the_html_comparison_is_written_when_the_inputs_file_name_is_not_utf8(tmp_path, capsys):
    # A comparison takes --inputs from a folder or file whose name is not UTF-8 (ONNX Runtime never opens it), and
    # the page names that file: writing it as UTF-8 raised UnicodeEncodeError after all the timing, a traceback and
    # exit 1, with the HTML not written (the JSON, ASCII-escaped, was).
    from tests._cli_models import run_cli, save_matmul_model

    model = save_matmul_model(tmp_path / "m.onnx")
    inputs = tmp_path / os.fsdecode(b"donn\xe9es.npz")
    np.savez(inputs, x=np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32))
    page = tmp_path / "r.html"
    argv = ["compare", model, model, "--inputs", inputs, "--html", page, "--iterations", "3", "--warmup", "0", "-q"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "donn\\udce9es.npz" in page.read_text(encoding="utf-8")


def test_ctrl_c_while_an_output_folder_is_probed_leaves_no_probe_file(tmp_path, monkeypatch):
    # check_paths makes and removes a file in each output folder (os.access says yes on read-only mounts); a Ctrl-C
    # between the two, before any work, left a .graphopt-probe-* file in the user's output folder.
    import signal

    real_close = os.close

    def interrupted_close(handle: int) -> None:
        signal.raise_signal(signal.SIGINT)  # Python's handler raises KeyboardInterrupt here, unless it is held
        real_close(handle)

    monkeypatch.setattr(model_io.os, "close", interrupted_close)
    folder = tmp_path / "out"
    folder.mkdir()
    # Python's own handler, whatever an earlier test in this worker left (a worker's SIGINT ignored: no
    # KeyboardInterrupt at all, and the test failed once in a suite run).
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            model_io.check_paths({"-o": folder / "model.onnx"})
    finally:
        signal.signal(signal.SIGINT, handler)
        monkeypatch.undo()
    assert list(folder.iterdir()) == []

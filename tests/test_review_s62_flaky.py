"""Review (s62): the flaky ``test_hostile.py::test_signal_during_verification_removes_temporary_copies[2]``.

It failed once under load (a ``graphopt-session-*`` folder left after SIGINT). The race is graphopt's, not the
test's; two windows, each reproduced here by putting the signal at that point (no timing luck):

1. A signal landing while a temporary folder is being removed at the end of a block that ended normally (the
   session's model was run, its copy goes) cut ``shutil.rmtree`` short: the ``finally`` that removes the folder was
   itself unwound by the signal, and the folder stayed. Reproduced on a real run by sending SIGINT as soon as a
   file of a complete session copy was gone: 6 of 8 runs left the folder. The same for ``save_model``'s staging
   folder (a hidden ``.OUT.onnx.*.tmp`` left beside the output).
2. ``runtime.signals_held`` blocked SIGINT and SIGTERM with ``pthread_sigmask``, which holds nothing in a process
   with another thread (OpenBLAS's, ONNX Runtime's, the progress heartbeat's: importing ``optimizer.runtime``
   already makes one): the kernel hands a signal sent to the process (Ctrl-C, ``kill``) to a thread that does not
   block it, and CPython runs the Python handler in the main thread all the same, at once. So the windows it was
   to close (``os.mkdir`` to ``made = folder`` in ``temporary_folder``, ``mkdtemp`` to ``staging`` in
   ``save_model``) were open. The earlier tests raised the signal with ``signal.raise_signal``, which goes to the
   calling thread only, and so did not see it.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer.runtime as runtime
from optimizer import cli, model_io


def _external_model(path: Path) -> Path:
    """``y = x @ W``, W stored as external data: verification opens its sessions from a temporary copy."""
    weights = np.arange(16 * 64, dtype=np.float32).reshape(16, 64) / 100  # 4 KiB: written as external data too
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    path.parent.mkdir(parents=True)
    onnx.save(proto, os.fspath(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    return path


@contextlib.contextmanager
def _signal_reached_a_thread() -> Iterator[Callable[[], object]]:
    """Yield a function that waits until a signal sent since has reached a thread's C handler (CPython writes its
    number to the wakeup fd once it has marked the signal for the main thread's Python handler)."""
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    try:
        yield lambda: select.select([reader], [], [], 30)
    finally:
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()


@contextlib.contextmanager
def _another_thread() -> Iterator[None]:
    """A thread that does not block SIGINT: one is there in any graphopt run (OpenBLAS, ONNX Runtime, the
    heartbeat); made here so that the test does not depend on which."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _graphopt_entries(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith("graphopt-"))


# --- 1. a signal during the removal of a temporary folder -----------------------------------------


def test_sigint_while_the_session_copy_is_removed_leaves_no_folder(tmp_path, capsys, monkeypatch):
    model = _external_model(tmp_path / "in" / "m.onnx")
    temporary, output = tmp_path / "tmp", tmp_path / "out" / "m.opt.onnx"
    temporary.mkdir()
    output.parent.mkdir()
    monkeypatch.setattr(runtime.tempfile, "tempdir", os.fspath(temporary))
    rmtree, fired = shutil.rmtree, []

    def rmtree_cut_by_a_signal(path, *args, **kwargs):
        if os.path.basename(path).startswith("graphopt-session-") and not fired:
            fired.append(path)
            os.unlink(os.path.join(path, "model.onnx"))  # the removal under way: a file gone, then Ctrl-C
            signal.raise_signal(signal.SIGINT)
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(runtime.shutil, "rmtree", rmtree_cut_by_a_signal)
    capsys.readouterr()
    code = cli.main(["optimize", os.fspath(model), "-o", os.fspath(output), "--dim", "batch=2"])
    stderr = capsys.readouterr().err
    assert fired
    assert code == 130, stderr
    assert stderr.strip().splitlines()[-1] == "graphopt: interrupted by SIGINT"
    assert _graphopt_entries(temporary) == [], "a temporary copy was left"
    assert os.listdir(output.parent) == []


@pytest.mark.parametrize("where", ["as-the-clean-up-starts", "during-the-removal"])
def test_sigint_in_the_clean_up_after_a_save_leaves_no_staging_folder(tmp_path, monkeypatch, where):
    model = ir.load(os.fspath(_external_model(tmp_path / "in" / "m.onnx")))
    output = tmp_path / "out" / "m.onnx"
    output.parent.mkdir()
    rmtree, lexists, fired = shutil.rmtree, os.path.lexists, []

    def rmtree_cut_by_a_signal(path, *args, **kwargs):
        if os.fspath(path).endswith(".tmp") and not fired:
            fired.append(path)
            signal.raise_signal(signal.SIGINT)
        return rmtree(path, *args, **kwargs)

    def lexists_then_signal(path):
        # save_model's clean-up asks first whether the staged model is still there (it was renamed into place)
        if Path(path).parent.name.endswith(".tmp") and not fired:
            fired.append(path)
            signal.raise_signal(signal.SIGINT)
        return lexists(path)

    if where == "during-the-removal":
        monkeypatch.setattr(shutil, "rmtree", rmtree_cut_by_a_signal)
    else:
        monkeypatch.setattr(model_io.os.path, "lexists", lexists_then_signal)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            model_io.save_model(model, output)
    finally:
        signal.signal(signal.SIGINT, handler)
        monkeypatch.undo()
    assert fired
    assert sorted(os.listdir(output.parent)) == ["m.onnx", "m.onnx.data"], "a staging folder was left"


# --- 2. signals_held and a signal sent to the process ----------------------------------------------


def test_signals_held_holds_a_signal_sent_to_the_process():
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    reached_the_end = False
    try:
        with _another_thread(), _signal_reached_a_thread() as wait, pytest.raises(KeyboardInterrupt):
            with runtime.signals_held():
                os.kill(os.getpid(), signal.SIGINT)  # to the process, as Ctrl-C or kill(1): any thread may take it
                wait()
                reached_the_end = True
    finally:
        signal.signal(signal.SIGINT, handler)
    assert reached_the_end, "the signal was delivered inside the held block"


def test_a_signal_sent_to_the_process_as_the_folder_is_made_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.tempfile, "tempdir", os.fspath(tmp_path))
    mkdir, fired = os.mkdir, []

    def mkdir_then_signal(path, *args, **kwargs):
        mkdir(path, *args, **kwargs)
        if os.path.basename(path).startswith("graphopt-review-") and not fired:
            fired.append(path)
            os.kill(os.getpid(), signal.SIGINT)
            wait()

    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _another_thread(), _signal_reached_a_thread() as wait:
            monkeypatch.setattr(runtime.os, "mkdir", mkdir_then_signal)
            with pytest.raises(KeyboardInterrupt):
                with runtime.temporary_folder("graphopt-review-"):
                    pass
            monkeypatch.undo()
    finally:
        signal.signal(signal.SIGINT, handler)
    assert fired
    assert os.listdir(tmp_path) == []


def test_a_signal_sent_to_the_process_as_the_staging_folder_is_made_leaves_no_folder(tmp_path, monkeypatch):
    model = ir.load(os.fspath(_external_model(tmp_path / "in" / "m.onnx")))
    output = tmp_path / "out" / "m.onnx"
    output.parent.mkdir()
    mkdir, fired = os.mkdir, []

    def mkdir_then_signal(path, *args, **kwargs):
        mkdir(path, *args, **kwargs)
        if os.fspath(path).endswith(".tmp") and not fired:
            fired.append(path)
            os.kill(os.getpid(), signal.SIGINT)
            wait()

    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _another_thread(), _signal_reached_a_thread() as wait:
            monkeypatch.setattr(model_io.tempfile._os, "mkdir", mkdir_then_signal)
            with pytest.raises(KeyboardInterrupt):
                model_io.save_model(model, output)
            monkeypatch.undo()
    finally:
        signal.signal(signal.SIGINT, handler)
    assert fired
    assert os.listdir(output.parent) == [], "a staging folder was left"

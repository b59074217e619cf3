"""Small models and a failing pass for the CLI tests (tests/test_cli_*.py): each runs in well under a second."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer import registry


def save_matmul_model(path: Path, *, weight_seed: int = 0, noise: float = 0.0) -> Path:
    """``y = Relu(x @ W)`` with ``x: float32[batch, 8]``; ``noise`` perturbs W (a model that is less accurate)."""
    rng = np.random.default_rng(weight_seed)
    weight = rng.standard_normal((8, 8)).astype(np.float32)
    if noise:
        weight += noise * np.random.default_rng(99).standard_normal((8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["x_copy"], name="copy"),
            helper.make_node("MatMul", ["x_copy", "W"], ["h"], name="matmul"),
            helper.make_node("Relu", ["h"], ["y"], name="relu"),
        ],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, path)
    return path


class _Raises(ir.passes.InPlacePass):
    """A pass that always raises: the pipeline reports it failed and rolls it back."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        raise RuntimeError("this pass always fails")


def make_pass_fail(monkeypatch, name: str) -> None:
    """Replace the registered pass ``name`` by one that raises (for ``--strict``)."""
    specs = [
        dataclasses.replace(spec, factory=lambda context: _Raises()) if spec.name == name else spec
        for spec in registry.all_passes()
    ]
    monkeypatch.setattr(registry, "all_passes", lambda: list(specs))


def run_cli(argv: list[object], capsys) -> tuple[int, str, str]:
    """``graphopt ARGV`` in this process: exit code, stdout, stderr."""
    from optimizer.cli import main

    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_graphopt(
    cwd: Path, *argv: object, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout: float = 60
) -> subprocess.CompletedProcess:
    """``graphopt ARGV`` run in ``cwd`` as a user runs it (a process of its own), its output as text."""
    env = {**os.environ, "PYTHONPATH": os.fspath(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "optimizer.cli", *map(str, argv)],
        cwd=cwd,
        env=env,
        stdout=stdout,
        stderr=stderr,
        text=True,
        timeout=timeout,
    )

"""A hostile review of pruning and low-rank (2026-12-01): each case reported a cut that removed nothing as
applied, met a budget only on the rows its repair was fitted to, or named the wrong thing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import AccuracyBudget
from optimizer.api import optimize_with_report
from optimizer.errors import OptionError
from optimizer.options import Options
from optimizer.protocol import PassContext
from optimizer.registry import resolve
from passes.pruning.ffn import FfnPruningPass
from tests._cli_models import run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "encoder.onnx"


def _ffn(path, *, weight_output: bool = False, trans_a: bool = False, leading: str = "batch") -> None:
    """``y = Relu(x @ W1) @ W2`` over ``x: float32[batch, 16]``, hidden 64; W2 also a graph output, or the down
    projection a ``Gemm`` reading its input transposed."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 64)).astype(np.float32) / 4
    w2 = rng.standard_normal((64, 16)).astype(np.float32) / 8
    down = (
        helper.make_node("Gemm", ["h", "W2"], ["y"], transA=1)
        if trans_a
        else helper.make_node("MatMul", ["h", "W2"], ["y"])
    )
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 16] if trans_a else [leading, 16])]
    if weight_output:
        outputs.append(helper.make_tensor_value_info("W2", TensorProto.FLOAT, [64, 16]))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["u"]), helper.make_node("Relu", ["u"], ["h"]), down],
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 16] if trans_a else [leading, 16])],
        outputs,
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)


def test_a_ratio_that_removes_no_unit_is_not_applied(tmp_path, monkeypatch, capsys):
    # 0.1 of 4 heads rounds to none: "applied, 0 groups", and --strict exited 0.
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["optimize", EXAMPLE, "-o", "o.onnx", "--prune-heads", "0.1", "--strict"], capsys)
    assert code == 3, err
    assert "ratio 0.10 removes no unit: in every group it rounds to none (groups of 4)" in out + err


def test_a_weight_that_is_a_graph_output_is_left_whole(tmp_path):
    _ffn(tmp_path / "m.onnx", weight_output=True)
    model = ir.load(tmp_path / "m.onnx")
    groups, refused = FfnPruningPass(0.5).find_groups(model.graph)
    assert not groups and "is also a graph output" in next(iter(refused.values()))


def test_a_gemm_reading_its_input_transposed_is_no_down_projection(tmp_path):
    _ffn(tmp_path / "m.onnx", trans_a=True)
    groups, refused = FfnPruningPass(0.5).find_groups(ir.load(tmp_path / "m.onnx").graph)
    assert not groups and any("transA" in reason for reason in refused.values())


def test_the_budget_is_checked_on_samples_the_repair_did_not_fit(tmp_path):
    _ffn(tmp_path / "m.onnx")
    samples = {"x": np.random.default_rng(1).standard_normal((20, 16)).astype(np.float32)}
    _, report = optimize_with_report(
        str(tmp_path / "m.onnx"),
        output=str(tmp_path / "o.onnx"),
        passes=["prune-ffn"],
        calibration=samples,
        prune_ffn=0.5,
        min_cosine=0.9,
    )
    entry = next(record for record in report.passes if record.name == "prune-ffn")
    notes = " ".join(entry.notes)
    assert "on held-out samples, which ranking and repair do not see" in notes and re.search(
        r"on the \d+ held-out samples?", notes
    )
    assert "4 held-out samples are few: new data may fall short" in notes  # 20 samples: 4 held out
    # The held-out samples are every fifth; with one sample none is held out.
    held = {"x": samples["x"][4::5]}
    pruned = FfnPruningPass(0.5, samples=samples, budget=AccuracyBudget(min_cosine=0.99))
    model = ir.load(tmp_path / "m.onnx")
    assert pruned._fitted_and_checked(model, [samples])[1][0]["x"].tolist() == held["x"].tolist()
    one = FfnPruningPass(0.5, samples=samples, budget=AccuracyBudget(min_cosine=0.99))
    fitted, checked = one._fitted_and_checked(model, [{"x": samples["x"][:1]}])
    assert checked is fitted  # nothing held out


def test_errors_name_what_was_asked(tmp_path):
    # No batch dim (the leading dim named like a length) and no fixed one: samples cannot be generated. (A fixed
    # leading dim is taken for a fixed batch now, and samples are drawn at it: tests/test_review_s56_static.py.)
    _ffn(tmp_path / "tokens.onnx", leading="tokens")
    with pytest.raises(Exception, match="--prune-ffn R needs sample inputs"):
        optimize_with_report(str(tmp_path / "tokens.onnx"), output=str(tmp_path / "o.onnx"), prune_ffn=0.5)
    with pytest.raises(OptionError, match=r"--prune-ffn '0.3': expected a fraction"):
        Options(prune_ffn="0.3")


def test_exclude_reaches_the_low_rank_pass():
    (spec,) = [s for s in resolve(["factorize-lowrank"], Options(lowrank=0.5, exclude=("g*",)))]
    factorize = spec.factory(PassContext(Options(lowrank=0.5, exclude=("g*",))))
    assert factorize.exclude == ("g*",)

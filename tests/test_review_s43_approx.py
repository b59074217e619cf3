"""A hostile review of the approximate passes: structured pruning and low-rank factorization (2026-12-04, session 43).

Each finding was a strict xfail asserting what the README promises; all are fixed in the same session and pass
(NaN and one-value calibration refused in one line; parameters counted in Constant nodes; the budget, the default
floor included, checked on held-out samples by the pass and the pipeline; a kind the combined cut finds nowhere
declined in words; a budget no cut meets declined as such).

Findings:
- ``--calibration`` holding a NaN (one value of 1,920) is taken as it is (``optimizer/api.py`` ``_samples`` has no NaN
  check nor ``nan_note``, unlike ``--inputs``): pruning's activation scores become NaN for every unit, so the cut keeps
  the first units by index (with half the neurons dead, it keeps exactly the dead ones and removes every live one),
  the repair is dropped as "no fit beat them", and the result is verified at cosine 0.996; ``--lowrank`` fails with
  "LinAlgError: SVD did not converge" (a traceback for ``-v``, exit 3 under ``--strict``), not a readable refusal.
- ``parameter_count`` (``passes/pruning/_base.py``) counts only initializers: on a model whose weights are ``Constant``
  nodes (Paddle's export: PP-OCR's classifier) run with ``--passes prune-ffn`` / ``prune-channels`` the report says
  "parameters 0 → 544" (and "0 → 1,762" on PP-OCR): the model seemingly grew from nothing.
- The default accuracy floor (``--min-cosine 0.9`` when no budget is given) is checked by the pipeline on every
  calibration sample, four in five of which the factors were fitted to: ``--lowrank 0.8`` on 10 samples notes
  "cosine 0.8911 ... on the held-out calibration samples (not fitted to)" in its own report, yet is applied and
  verified against the 0.9 floor (pipeline cosine 0.9205); fresh samples of the same distribution get 0.881.
  (MiniLM, ``--passes factorize-lowrank --lowrank 0.5`` with its 32 sentences: pipeline 0.922, the pass's held-out
  0.830, the 64 held-out sentences 0.829 — verified.)
- ``--calibration`` of one value repeated (``graphopt make-inputs``' zeros, the template it says is "never a measure
  of accuracy") is fitted to and reported exact: ``--prune-ffn 0.5 --min-cosine 0.99`` says "met at the largest
  ratio asked ... cosine 1.0000, max |Δ| 0", fresh inputs get cosine 0.69; ``--lowrank 0.5 --min-cosine 0.99``
  "cosine 1.0000", fresh 0.93. ``--inputs`` of one value repeated get a note and generated values beside them
  (``constant_inputs_note``); ``--calibration`` gets neither.
- ``--prune-ffn R --prune-heads R`` together on a model with no fused attention: the combined pass says
  "ratios ffn 0.50, heads 0.50" and nothing about heads (no note, no refusal, even with ``-v``), and ``--strict``
  exits 0; ``--prune-heads R`` alone says "no group to prune ... it prunes fused Attention/MultiHeadAttention" and
  ``--strict`` exits 3.
- A budget no cut can meet (``--prune-ffn 0.5 --min-cosine 0.9999999``): ``PruningPass._search`` bisects down to a
  ratio that removes no unit, which meets any budget trivially, notes "largest ratio 0.02 (of up to 0.50)", and the
  refusal reads "ratio 0.02 removes no unit ... ask for a larger fraction" (and "--min-cosine 1" for 0.9999999).

What held: ``--calibration`` of the wrong dtype, rank or fixed size, a missing input, zero rows or no arrays refused
in one line (exit 2); an extra array warned and ignored; a folder of .npz files of different sequence lengths
(prune-ffn with and without a budget and reconstruction importance, lowrank); FFN respellings (Gemm transB on 2-D
inputs with tanh GELU, bias-free ReLU FFN, opset-20 ``Gelu`` with a ``[1, 1, N]`` bias, SwiGLU with operands
swapped, opset-13 ``Clip``, a per-channel ``Mul``, float16 weights, unnamed batch and sequence dims) pruned and
verified against their twins; a pruned consumer whose output is also a graph output; overridable (graph-input)
weights left whole with the warning; the API leaves its argument (ir.Model or proto) unmodified; every exported
fixture (BERT, DistilBERT, GPT-2, Llama, GPT-Neo, MVP; legacy and dynamo; KV-cache decoders without calibration)
under ``--prune-ffn``, ``--prune-heads`` and both: applied and twin-verified, or refused with a reason;
``--prune-channels`` on PP-OCR (``--global-ranking`` with ``--channel-cost macs|parameters``, ``--importance
reconstruction``, a budget): the parameters removed are 25 % of the groups' parameters as asked; MiniLM
``--prune-ffn 0.3``: 17,243,024 → 16,181,804 parameters, exactly the 1,380 neurons' weights and biases; MiniLM
``--lowrank 0.5`` with packed-QKV ``Attention`` factorized (twin max |Δ| 1.9e-6); ``--no-verify`` says "outputs NOT
verified"; the option refusals (``--channel-cost`` or ``--exclude`` without a pass that reads it, ratios 0, 1, NaN,
negative, ``--importance activation`` without ``--calibration``).
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.errors import GraphoptError
from tests.helpers import run
from tests.passes.factorization import graphs as lowrank_graphs
from tests.passes.pruning import graphs as pruning_graphs
from tests.real_models import PPOCR_CLS, ppocr_lines


@pytest.fixture(autouse=True)
def _modelled_lowrank_speed(monkeypatch):
    """factorize-lowrank times nothing: two MatMuls at rank r cost r (k + n) / (k n) of the one (faster wherever
    parameters shrink)."""
    from passes.factorization import _timing

    monkeypatch.setattr(_timing.MeasuredSpeed, "_time", lambda self, k, n, r, m: r * (k + n) / (k * n))


def _record(report, name: str):
    return next(record for record in report.passes if record.name == name)


def _mean_cosine(before: np.ndarray, after: np.ndarray) -> float:
    """The mean per-sample cosine, as the accuracy budget takes it."""
    x = before.reshape(len(before), -1).astype(np.float64)
    y = after.reshape(len(after), -1).astype(np.float64)
    return float(((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).mean())


def _as_ir(model) -> ir.Model:
    return model if isinstance(model, ir.Model) else ir.from_proto(model)


def _relu_ffn(hidden: int = 16, inner: int = 32) -> onnx.ModelProto:
    """``x [B, S, hidden]`` → MatMul ``up`` (no bias) → Relu → MatMul ``down`` → ``y``."""
    rng = np.random.default_rng(0)
    up = (rng.standard_normal((hidden, inner)) * 0.3).astype(np.float32)
    down = (rng.standard_normal((inner, hidden)) * 0.3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "up"], ["u"], name="up_proj"),
            helper.make_node("Relu", ["u"], ["h"], name="relu"),
            helper.make_node("MatMul", ["h", "down"], ["y"], name="down_proj"),
        ],
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", hidden])],
        [numpy_helper.from_array(up, "up"), numpy_helper.from_array(down, "down")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _with_one_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[3, 2, 1] = np.nan
    return x


# -- NaN in --calibration --------------------------------------------------------------------------------------


def test_a_nan_in_the_calibration_does_not_decide_which_neurons_go():
    # Neurons 0-15 are dead (zero weights): removing them is exact, and the clean calibration does exactly that.
    model = pruning_graphs.ffn(hidden=16, inner=32, dead=tuple(range(16)))
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((20, 6, 16)).astype(np.float32)
    fresh = {"x": rng.standard_normal((8, 9, 16)).astype(np.float32)}
    try:
        pruned, _ = optimize_with_report(model, calibration={"x": _with_one_nan(samples)}, prune_ffn=0.5)
    except GraphoptError:
        return  # refusing calibration data with a NaN in one line is fine
    expected, got = run(model, fresh)["y"], run(pruned, fresh)["y"]
    ffn_branch = np.linalg.norm(expected - fresh["x"])
    # With the NaN: 0.63 of the FFN's output is lost (every live neuron removed); without it, 1e-7.
    assert np.linalg.norm(got - expected) / ffn_branch < 1e-3


def test_a_nan_in_the_calibration_is_no_linalg_failure_of_lowrank():
    samples = lowrank_graphs.inputs(128, count=20)
    try:
        _, report = optimize_with_report(
            lowrank_graphs.projections(), calibration={"x": _with_one_nan(samples)}, lowrank=0.5
        )
    except GraphoptError:
        return
    record = _record(report, "factorize-lowrank")
    assert record.status != "failed", record.detail


# -- parameter counts ------------------------------------------------------------------------------------------


def _ffn_with_constant_nodes() -> ir.Model:
    """``pruning_graphs.ffn`` with every initializer held by a ``Constant`` node, as Paddle exports weights."""
    proto = ir.to_proto(pruning_graphs.ffn(hidden=16, inner=32))
    constants = [
        helper.make_node("Constant", [], [tensor.name], value=tensor, name=f"const_{tensor.name}")
        for tensor in proto.graph.initializer
    ]
    nodes = [*constants, *proto.graph.node]
    del proto.graph.initializer[:]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _parameters_note(record) -> tuple[int, int]:
    note = next(note for note in record.notes if "parameters" in note)
    before, after = re.search(r"parameters ([\d,]+) → ([\d,]+)", note).groups()
    return int(before.replace(",", "")), int(after.replace(",", ""))


@pytest.mark.parametrize("case", ["ffn", "ppocr"])
def test_the_parameters_a_cut_removes_are_counted_where_the_weights_are_constant_nodes(case):
    if case == "ffn":
        model, name = _ffn_with_constant_nodes(), "prune-ffn"
        samples = {"x": np.random.default_rng(0).standard_normal((20, 6, 16)).astype(np.float32)}
        _, report = optimize_with_report(model, ["prune-ffn"], calibration=samples, prune_ffn=0.5)
    else:  # Paddle's export: every weight a Constant node
        model, name = ir.load(PPOCR_CLS), "prune-channels"
        samples = {"x": ppocr_lines("calibration")["x"][:8]}
        _, report = optimize_with_report(model, ["prune-channels"], calibration=samples, prune_channels=0.25)
    record = _record(report, name)
    assert record.status == "applied"
    before, after = _parameters_note(record)
    assert before > after > 0, record.notes


# -- the default floor, checked on what was fitted -------------------------------------------------------------


def test_the_default_floor_holds_on_samples_the_factors_were_not_fitted_to():
    model = lowrank_graphs.projections()
    samples = {"x": lowrank_graphs.inputs(128, count=10, sequence=2, seed=0)}
    fresh = {"x": lowrank_graphs.inputs(128, count=64, sequence=2, seed=70)}  # the same distribution
    factorized, report = optimize_with_report(model, calibration=samples, lowrank=0.8)
    record = _record(report, "factorize-lowrank")
    if record.status != "applied":
        return  # rolled back against the floor: what the held-out figure says
    held_out = next(note for note in record.notes if "on the held-out" in note)
    cosine = _mean_cosine(run(model, fresh)["y"], run(factorized, fresh)["y"])
    assert cosine >= 0.9, f"verified against the 0.9 floor at {record.cosine:.4f}; {held_out}; fresh: {cosine:.4f}"


# -- a make-inputs template as --calibration -------------------------------------------------------------------


@pytest.mark.parametrize("case", ["prune-ffn", "factorize-lowrank"])
def test_a_calibration_of_one_repeated_value_is_not_reported_as_exact(case):
    rng = np.random.default_rng(1)
    if case == "prune-ffn":
        model, options = _as_ir(_relu_ffn()), {"prune_ffn": 0.5}
        zeros = np.zeros((20, 6, 16), np.float32)
        fresh = {"x": rng.standard_normal((64, 6, 16)).astype(np.float32)}
    else:
        model, options = lowrank_graphs.projections(), {"lowrank": 0.5}
        zeros = np.zeros((20, 4, 128), np.float32)
        fresh = {"x": lowrank_graphs.inputs(128, count=64, sequence=4, seed=9)}
    try:
        result, report = optimize_with_report(model, calibration={"x": zeros}, min_cosine=0.99, **options)
    except GraphoptError:
        return  # refusing the template in one line is fine
    record = _record(report, case)
    said = [*report.warnings, *record.notes, *record.refusals]
    if record.status != "applied" or any("repeated" in line for line in said):
        return  # not applied, or the report says what the figures rest on
    cosine = _mean_cosine(run(model, fresh)["y"], run(result, fresh)["y"])
    assert cosine >= 0.99, f"budget reported met ({record.notes[:2]}); fresh inputs: cosine {cosine:.3f}"


# -- the combined cut ------------------------------------------------------------------------------------------


def test_the_combined_cut_says_why_no_head_was_pruned():
    samples = {"x": np.random.default_rng(0).standard_normal((20, 6, 16)).astype(np.float32)}
    _, report = optimize_with_report(pruning_graphs.ffn(), calibration=samples, prune_ffn=0.5, prune_heads=0.5)
    record = _record(report, "prune-ffn-heads")
    assert record.status == "applied"  # the FFN is cut
    # prune-heads alone: "no group to prune in the graph: it prunes fused Attention/MultiHeadAttention ..."
    assert any("Attention" in line for line in [*record.notes, *record.refusals]), record.notes


# -- the budget search -----------------------------------------------------------------------------------------


def test_a_budget_no_cut_meets_is_named_as_the_reason_nothing_was_pruned():
    samples = {"x": np.random.default_rng(0).standard_normal((20, 6, 16)).astype(np.float32)}
    _, report = optimize_with_report(pruning_graphs.ffn(), calibration=samples, prune_ffn=0.5, min_cosine=0.9999999)
    record = _record(report, "prune-ffn")
    assert record.status == "unchanged"
    said = [*record.notes, *record.refusals]
    assert not any("ask for a larger fraction" in line for line in said), said


# -- held up ---------------------------------------------------------------------------------------------------


def test_a_parameter_cost_removes_that_share_of_the_groups_parameters_on_ppocr():
    """``--channel-cost parameters --global-ranking``: R is a share of the channel groups' parameters (README), here
    on a real CNN whose weights are Constant nodes (lifted by the default pipeline)."""
    from passes.pruning.channels import ChannelPruningPass

    samples = {"x": ppocr_lines("calibration")["x"][:16]}
    unpruned, _ = optimize_with_report(ir.load(PPOCR_CLS))
    costing = ChannelPruningPass(0.25, cost="parameters")
    groups, _ = costing.find_groups(_as_ir(unpruned).graph)
    total = sum(costing.unit_cost(group) * group.size for group in groups)
    _, report = optimize_with_report(
        ir.load(PPOCR_CLS), calibration=samples, prune_channels=0.25, global_ranking=True, channel_cost="parameters"
    )
    before, after = _parameters_note(_record(report, "prune-channels"))
    assert 0.22 <= (before - after) / total <= 0.28

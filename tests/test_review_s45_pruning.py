"""Hostile review of structured pruning and low-rank factorization, and of the held-out check they go through
(session 45: ``passes/pruning/``, ``passes/factorization/lowrank.py``, ``optimizer/verify.py``
``check_approximation``, ``optimizer/samples.py`` ``hold_out``).

All four findings are fixed (their tests pass): samples are held out by distinct content, copies going with
their first; one sample's figures say they are on the fitted sample; an FFN or Conv group the walk cannot trace
is refused by name (a Cast is traced); --static-shapes' batch is checked against the calibration count up front.

Findings, worst first (each a strict xfail that fails today for the reason it states):

1. **"Held-out" samples that are copies of fitted ones.** ``hold_out`` takes every fifth sample by position, and
   nothing looks at what the samples hold: a calibration set made by repeating a few samples (``np.tile``, a
   dataset padded to a round count, the same sentence in several batches) puts copies of fitted samples among
   the held-out ones. ``--prune-ffn 0.75 --min-cosine 0.99`` on 4 distinct samples tiled 5 times reports
   "budget --min-cosine 0.99 on held-out samples, which ranking and repair do not see: met at the largest ratio
   asked" and "cosine 1.0000 ... after repair on the held-out samples"; the pipeline verifies it at 1.0000; fresh
   inputs of the same distribution get cosine 0.54. ``--lowrank 0.8 --min-cosine 0.99`` likewise: reported
   1.0000, fresh 0.87. The promise "accuracy claims are on held-out data" fails without a word. Fix: hold out
   by distinct content (hash each sample; a held-out sample equal to a fitted one is no held-out sample), or
   say so in the report and refuse a budget checked on such samples.
2. **One calibration sample: pruning's report does not say nothing was held out.** README: "With one sample
   nothing is held out, and the report says so." Without a budget, ``graphopt optimize relu.onnx --prune-ffn 0.5
   --calibration one_sample.npz`` prints "cosine 1.0000, max |Δ| 0.0155 after repair" and "approximate passes
   verified against the accuracy budget: --min-cosine 0.9 (default floor)" — measured on the very rows the
   repair was fitted to (3 token rows, which the re-fit reproduces: the pipeline verifies it at 1.0000, fresh
   inputs get 0.71), and nothing says so (``_base.py``:
   ``_checked_on`` is only shown with a budget; the summary adds "on the held-out samples" only when there are
   some). factorize-lowrank says it ("on the one calibration sample the factors were fitted to ... an
   optimistic figure"); pruning must too.
3. **Groups silently skipped.** ``ffn._group`` and ``channels._group`` return None (no refusal, not counted)
   where the walk meets an op they do not trace: an FFN with a ``Cast`` between its up projection and its
   activation (mixed-precision exports cast around GELU) is neither pruned nor named; a 1×1 Conv reading a
   ``Concat`` of two branches is neither pruned nor named, though ``ChannelPruningPass``'s docstring says it
   *refuses* "Convs whose input comes through ops that move channels (Reshape, Concat, Split)" and STYLE.md asks
   for every "why not" to reach the report, counted. The report shows "1 groups" and the kept counts of the
   others, as if the model had no other FFN / Conv.
4. **Calibration that does not fill the batch ``--static-shapes --dim`` fixes blames the result.**
   ``graphopt optimize relu.onnx -o o.onnx --prune-ffn 0.5 --calibration ten_samples.npz --static-shapes --dim
   B=3 --dim S=3`` exits 0 with "prune-ffn rolled back: ONNX Runtime cannot run the result: ... Got: 1 Expected:
   3" (exit 3 with --strict): the last batch of 10 samples holds 1. The same data on a model that fixes its
   batch at 3 is refused up front in one line, exit 2 ("10 samples, and the model fixes its batch at 3: give a
   multiple of 3"); under --static-shapes the check is on the input model's symbolic batch and never made.

What held (2026-12-05, 2 shared cores):
- Ratios at the edges: ``--prune-ffn 0.999`` on bert_legacy keeps one neuron per group, twin-verified (the
  summary says "ratio 1.00"); ``inf``, ``0.5x``, NaN, negative, 0 and 1 are one-line errors; ``--lowrank 0.999``,
  ``1e-9`` and ``0.05`` decline or factor nothing too small, no traceback.
- The input never modified: bert_legacy saved with external data, ``--prune-ffn 0.3 --prune-heads 0.25
  --calibration`` written beside it (new ``out.onnx.data``), the input's .onnx and .data byte-identical; ``-o``
  onto the input refused in one line.
- Held-out bookkeeping with distinct samples: the pass's figure, the budget search and the pipeline's check are
  all on the same held-out fifth (20 samples: reported 0.9903, fresh 0.985 at a 0.99 budget: the noise of 4
  held-out samples, not a fit); with two samples the last is held out and the default floor rolls back a cut
  that misses it there (prune-ffn 0.5: 0.787 held out).
- An integer-only FFN (int64 MatMuls) is pruned but rolled back by the floor (exact-match cosine 0.016), never
  shipped; no traceback.
- Twins: the packed-QKV and MultiHeadAttention head groups, grouped-query repeats and FFN chains were read
  against their realizations (``_groups.ChannelGroup.apply``, ``_base._twin``): the twin recomputes the channel
  indices and the weight axis itself, shares only the decision (units removed, repaired weight); no case found
  where a wrong slicing would match its twin.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from tests._cli_models import run_cli
from tests.helpers import FIXTURES, run
from tests.passes.factorization import graphs as lowrank_graphs


@pytest.fixture(autouse=True)
def _modelled_lowrank_speed(monkeypatch):
    """factorize-lowrank times nothing: two MatMuls at rank r cost r (k + n) / (k n) of the one."""
    from passes.factorization import _timing

    monkeypatch.setattr(_timing.MeasuredSpeed, "_time", lambda self, k, n, r, m: r * (k + n) / (k * n))


def _record(report, name: str):
    return next(record for record in report.passes if record.name == name)


def _mean_cosine(before: np.ndarray, after: np.ndarray) -> float:
    """The mean per-sample cosine, as the accuracy budget takes it."""
    x = before.reshape(len(before), -1).astype(np.float64)
    y = after.reshape(len(after), -1).astype(np.float64)
    return float(((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).mean())


def _relu_ffn(hidden: int = 16, inner: int = 64, *, fixed: tuple[int, int] | None = None) -> onnx.ModelProto:
    """``x [B, S, hidden]`` → MatMul ``up`` → Relu → MatMul ``down`` → ``y`` (no residual, no bias)."""
    rng = np.random.default_rng(0)
    up = (rng.standard_normal((hidden, inner)) * 0.3).astype(np.float32)
    down = (rng.standard_normal((inner, hidden)) * 0.3).astype(np.float32)
    dims = list(fixed) if fixed else ["B", "S"]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "up"], ["u"], name="up_proj"),
            helper.make_node("Relu", ["u"], ["h"], name="relu"),
            helper.make_node("MatMul", ["h", "down"], ["y"], name="down_proj"),
        ],
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*dims, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*dims, hidden])],
        [numpy_helper.from_array(up, "up"), numpy_helper.from_array(down, "down")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _said(report, record) -> list[str]:
    return [*report.warnings, *record.notes, *record.refusals]


# -- 1. held-out samples that are copies of fitted ones --------------------------------------------------------


@pytest.mark.parametrize("case", ["prune-ffn", "factorize-lowrank"])
def test_held_out_samples_that_repeat_fitted_ones_do_not_vouch_for_the_budget(case):
    if case == "prune-ffn":
        model, options = ir.from_proto(_relu_ffn()), {"prune_ffn": 0.75}
        rng = np.random.default_rng(0)
        distinct = rng.standard_normal((4, 3, 16)).astype(np.float32)
        fresh = {"x": rng.standard_normal((64, 3, 16)).astype(np.float32)}
    else:
        model, options = lowrank_graphs.projections(), {"lowrank": 0.8}
        distinct = lowrank_graphs.inputs(128, count=4, sequence=2, seed=0)
        fresh = {"x": lowrank_graphs.inputs(128, count=64, sequence=2, seed=70)}
    tiled = np.tile(distinct, (5, 1, 1))  # 20 samples: every held-out one (index 4, 9, ...) is also fitted to
    result, report = optimize_with_report(model, [case], calibration={"x": tiled}, min_cosine=0.99, **options)
    record = _record(report, case)
    if record.status != "applied":
        return  # refused: fine
    said = _said(report, record)
    if any(word in line for line in said for word in ("repeat", "duplicate", "copies", "identical")):
        return  # the report says what its held-out figure rests on
    cosine = _mean_cosine(run(model, fresh)["y"], run(result, fresh)["y"])
    assert cosine >= 0.98, (
        f"verified at {record.cosine:.4f} against --min-cosine 0.99 'on held-out samples'; fresh inputs: {cosine:.3f}; "
        f"{record.notes[:2]}"
    )


# -- 2. one calibration sample ---------------------------------------------------------------------------------


def test_one_calibration_sample_the_pruning_report_says_nothing_was_held_out():
    model = ir.from_proto(_relu_ffn())
    one = {"x": np.random.default_rng(3).standard_normal((1, 3, 16)).astype(np.float32)}
    _, report = optimize_with_report(model, ["prune-ffn"], calibration=one, prune_ffn=0.5)
    record = _record(report, "prune-ffn")
    assert record.status == "applied", record.detail
    said = " ".join(_said(report, record))
    assert any(words in said for words in ("fitted to", "held out", "fit too", "optimistic")), said


def test_one_calibration_sample_lowrank_says_its_figure_is_on_the_fitted_sample():
    """What held: factorize-lowrank says where its figure comes from."""
    one = {"x": lowrank_graphs.inputs(128, count=1, sequence=4, seed=0)}
    _, report = optimize_with_report(lowrank_graphs.projections(), ["factorize-lowrank"], calibration=one, lowrank=0.5)
    record = _record(report, "factorize-lowrank")
    assert record.status == "applied", record.detail
    assert any("fitted to" in note for note in record.notes), record.notes


# -- 3. groups silently skipped --------------------------------------------------------------------------------


def _two_ffns_one_with_a_cast() -> ir.Model:
    """Two residual ReLU FFNs; the second casts its up projection's output (to float: a no-op) before the Relu."""
    rng = np.random.default_rng(0)

    def weight(*shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32))

    inits = {"up1": weight(16, 64), "down1": weight(64, 16), "up2": weight(16, 64), "down2": weight(64, 16)}
    for name, tensor in inits.items():
        tensor.name = name
    nodes = [
        helper.make_node("MatMul", ["x", "up1"], ["u1"], name="up1"),
        helper.make_node("Relu", ["u1"], ["h1"], name="relu1"),
        helper.make_node("MatMul", ["h1", "down1"], ["d1"], name="down1"),
        helper.make_node("Add", ["x", "d1"], ["r1"], name="res1"),
        helper.make_node("MatMul", ["r1", "up2"], ["u2"], name="up2"),
        helper.make_node("Cast", ["u2"], ["c2"], to=TensorProto.FLOAT, name="cast2"),
        helper.make_node("Relu", ["c2"], ["h2"], name="relu2"),
        helper.make_node("MatMul", ["h2", "down2"], ["d2"], name="down2"),
        helper.make_node("Add", ["r1", "d2"], ["y"], name="res2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 16])],
        list(inits.values()),
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _concat_convnet() -> ir.Model:
    """Two Conv branches (3×3 → ReLU → 3×3 → ReLU, and 1×1 → ReLU) concatenated into a 1×1 Conv."""
    rng = np.random.default_rng(0)
    shapes = {"w1": (16, 3, 3, 3), "w2": (16, 16, 3, 3), "w3": (16, 3, 1, 1), "w4": (8, 32, 1, 1)}
    inits = [
        numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), name) for name, s in shapes.items()
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu1"),
        helper.make_node("Conv", ["ar", "w2"], ["b"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["b"], ["br"], name="relu2"),
        helper.make_node("Conv", ["x", "w3"], ["c"], name="conv3"),
        helper.make_node("Relu", ["c"], ["cr"], name="relu3"),
        helper.make_node("Concat", ["br", "cr"], ["cat"], axis=1, name="concat"),
        helper.make_node("Conv", ["cat", "w4"], ["y"], name="conv4"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def test_an_ffn_the_walk_cannot_trace_is_named_in_the_report():
    samples = {"x": np.random.default_rng(1).standard_normal((20, 4, 16)).astype(np.float32)}
    _, report = optimize_with_report(_two_ffns_one_with_a_cast(), ["prune-ffn"], calibration=samples, prune_ffn=0.5)
    record = _record(report, "prune-ffn")
    assert record.status == "applied", record.detail  # the first FFN is cut
    said = [*record.notes, *record.refusals]
    assert any("down2" in line for line in said), said


def test_a_conv_reading_a_concat_is_named_in_the_report():
    images = {"x": np.random.default_rng(1).standard_normal((20, 3, 8, 8)).astype(np.float32)}
    # 0.5: conv1's 16 channels keep 8 (0.25 would keep 12, which the NCHWc block of 8 rounds back to 16)
    _, report = optimize_with_report(_concat_convnet(), ["prune-channels"], calibration=images, prune_channels=0.5)
    record = _record(report, "prune-channels")
    assert record.status == "applied", record.detail  # conv2's input channels are cut
    said = [*record.notes, *record.refusals]
    assert any("conv4" in line for line in said), said


# -- 4. a static batch the calibration does not fill -----------------------------------------------------------


def test_calibration_that_does_not_fill_the_static_batch_is_refused_up_front(tmp_path, capsys):
    onnx.save(_relu_ffn(), tmp_path / "relu.onnx")
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).standard_normal((10, 3, 16)).astype(np.float32))
    code, _, err = run_cli(
        [
            "optimize", tmp_path / "relu.onnx", "-o", tmp_path / "out.onnx", "--prune-ffn", "0.5",
            "--calibration", tmp_path / "cal.npz", "--static-shapes", "--dim", "B=3", "--dim", "S=3",
        ],
        capsys,
    )  # fmt: skip
    assert code == 2 and "multiple of 3" in err, (code, err)


def test_a_model_that_fixes_its_batch_refuses_such_calibration_in_one_line(tmp_path, capsys):
    """What held: the same data on a model that fixes batch 3 itself."""
    onnx.save(_relu_ffn(fixed=(3, 3)), tmp_path / "relu.onnx")
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).standard_normal((10, 3, 16)).astype(np.float32))
    code, _, err = run_cli(
        ["optimize", tmp_path / "relu.onnx", "-o", tmp_path / "o.onnx", "--prune-ffn", "0.5", "--calibration",
         tmp_path / "cal.npz"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "multiple of 3" in err and "Traceback" not in err, (code, err)


# -- what held ---------------------------------------------------------------------------------------------------


def test_pruning_a_model_with_external_data_leaves_the_input_untouched(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(
        onnx.load(FIXTURES / "bert_legacy.onnx"),
        folder / "bert.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="bert.data",
        size_threshold=0,
    )
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "cal.npz",
        input_ids=rng.integers(0, 100, (10, 8)).astype(np.int64),
        attention_mask=np.ones((10, 8), np.int64),
        token_type_ids=np.zeros((10, 8), np.int64),
    )
    code, _, err = run_cli(
        ["optimize", folder / "bert.onnx", "-o", folder / "out.onnx", "--passes", "prune-ffn", "--prune-ffn", "0.3",
         "--calibration", tmp_path / "cal.npz"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert {name: (folder / name).read_bytes() for name in before} == before

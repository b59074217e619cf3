"""Review s75 (late75a): a late look at session 75's two fixes. The accuracy budget on held-out or streamed samples fed
the original's draws (``optimizer.verify._streamed_drift``, ``Verifier._budget_draws``, ``FedBudgetRuns.drawn_alike``)
and static calibration's mixing check on three samples (``passes/quantization/calibration.py``).

1. **A draw ``remove-identity`` renamed was no draw of the reference.** ``d = Dropout(h); y = Identity(d)``, ``y`` a
   graph output: ``remove-identity`` (default) names the Dropout ``y``. The exact check reads that name as the draw's
   (``_FedDraws.aliases``, review s74 late2), but the budgets matched draws by key alone: int8 of a model whose every
   output the Dropout reaches failed in its own search ("no outputs to compare"), and where other outputs were
   deterministic, the drawn one was left out, a result wrong on the path to it alone (its weight replaced) met the
   budget at a cosine of 1.0. ``FedBudgetRuns.renamed`` matches them as the exact check does.
2. **A first batch of copies of one sample was taken as checked.** The mixing check then ran copies alone and
   together, which meet as one sample does in a batch-centred model (``x - mean(x)`` is 0 either way); later batches
   ran as many samples a run as their bytes allow (one, for a model whose tensors are 64 MB a sample) with no check,
   and the ranges were (0, 0) for the batches' (-1.7, 1.1). Such a batch now leaves the check to the next.
3. **A draw renamed by a ``Cast`` was no draw either.** ``convert-float16`` casts a float16 Dropout's output to the
   float32 graph output it was (``y`` now a ``Cast`` of it): rolled back, "the rewrite removed the random draw 'y'".
   And its float16-rounded twin (``Twin.deployed``, where float16 kernels show an overflow) names each Dropout
   ``d.unrounded``: its budget left every output that Dropout reaches out, and float16 overflowing (inf) on the path to
   a drawn output alone was applied. A draw is matched through a chain of ``Cast`` too (``matched_draws``).
4. **Every CNN whose weights are cast or dequantized at run time got the mixing check** (review s75 late74b's rule for a
   Conv whose kernel is an activation): a kernel computed from constants alone is a constant's again. Such values met
   by an activation (``x [B, 4] + Cast(c [3, 4])``) were read as activations, and a constant as long as the batch so
   computed left the graph unchecked, ranges one sample's over every row: held to the batch-long rule now.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import runtime
from optimizer.accuracy import AccuracyBudget
from optimizer.verify import Verifier
from passes.quantization import calibration

_N = helper.make_node


def _identity_after_dropout(mixed: bool) -> ir.Model:
    """``y = Identity(Dropout(x @ W, 0.1, training=True))``, and with ``mixed`` ``z = x @ W2`` beside it."""
    rng = np.random.default_rng(0)
    nodes = [
        _N("MatMul", ["x", "W"], ["h"]),
        _N("Dropout", ["h", "ratio", "training"], ["d"]),
        _N("Identity", ["d"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])]
    if mixed:
        nodes.append(_N("MatMul", ["x", "W2"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 32]))
    graph = helper.make_graph(
        nodes,
        "identity_after_dropout",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        outputs,
        [
            numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "W2"),
            numpy_helper.from_array(np.array(0.1, np.float32), "ratio"),
            numpy_helper.from_array(np.array(True), "training"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


def _identity_removed(model: ir.Model, weight: np.ndarray | None = None) -> ir.Model:
    """``model`` through ``remove-identity`` (its Dropout now named ``y``), ``W`` replaced by ``weight`` if given."""
    from passes.cleanup import RemoveIdentityPass

    result = RemoveIdentityPass()(model.clone()).model
    assert "d" not in {value.name for node in result.graph for value in node.outputs}  # the draw renamed
    if weight is not None:
        result.graph.initializers["W"].const_value = ir.tensor(weight)
    return result


def test_int8_of_a_model_whose_every_output_a_renamed_dropout_reaches_is_applied():
    from optimizer.api import optimize_with_report

    _, report = optimize_with_report(
        _identity_after_dropout(mixed=False),
        ["remove-identity", "quantize-dynamic"],
        quantize="dynamic",
        dims={"batch": 2},
        min_cosine=0.99,
    )
    records = {record.name: record for record in report.passes}
    assert records["remove-identity"].status == "applied", records["remove-identity"].detail
    # Was: "failed", ValueError "no outputs to compare" in the pass's own search.
    assert records["quantize-dynamic"].status == "applied", records["quantize-dynamic"].detail


@pytest.mark.parametrize("held_out", [False, True], ids=["in_memory", "held_out"])
def test_a_result_wrong_on_the_path_to_a_renamed_draw_alone_misses_the_budget(held_out):
    model = _identity_after_dropout(mixed=True)
    samples = np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32)
    checker = Verifier(model, [{"x": samples[:2]}], samples={"x": samples}, budget=AccuracyBudget(min_cosine=0.99))
    close = checker.check_approximation(_identity_removed(model), held_out=held_out)
    assert close.ok and close.drift.cosine > 0.9999, close.first_failure
    wrong = np.random.default_rng(7).standard_normal((32, 32)).astype(np.float32)
    verdict = checker.check_approximation(_identity_removed(model, wrong), held_out=held_out)
    # Was: met at a cosine of 1.0, on ``z`` alone.
    assert not verdict.ok and "misses the accuracy budget" in verdict.first_failure, verdict.first_failure
    assert verdict.drift.cosine < 0.5


def _dropout_model(scale: float, spelling: str) -> ir.Model:
    """``y = Dropout(x @ W, 0.5, training=True)`` (``W`` of standard normal values times ``scale``) with ``spelling``
    "output"; "inner", ``y`` that times ``1e-4``; "mixed", that and ``z = x @ W2`` beside it."""
    rng = np.random.default_rng(0)
    inner = spelling != "output"
    nodes = [_N("MatMul", ["x", "W"], ["h"]), _N("Dropout", ["h", "ratio", "training"], ["d" if inner else "y"])]
    nodes += [_N("Mul", ["d", "small"], ["y"])] if inner else []
    names = ["y"]
    if spelling == "mixed":
        nodes.append(_N("MatMul", ["x", "W2"], ["z"]))
        names.append("z")
    graph = helper.make_graph(
        nodes,
        "dropout",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 32]) for name in names],
        [
            numpy_helper.from_array((rng.standard_normal((32, 32)) * scale).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "W2"),
            numpy_helper.from_array(np.array(1e-4, np.float32), "small"),
            numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
            numpy_helper.from_array(np.array(True), "training"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


def _float16_record(model: ir.Model):
    from optimizer.api import optimize_with_report

    _, report = optimize_with_report(
        model, ["convert-float16"], fp16=True, target="cuda", dims={"batch": 2}, min_cosine=0.99
    )
    (record,) = [record for record in report.passes if record.name == "convert-float16"]
    return record


@pytest.mark.parametrize("spelling", ["output", "inner"])
def test_convert_float16_of_a_model_whose_every_output_is_drawn_is_applied(spelling):
    """With "output", the float16 Dropout's output is cast to the float32 ``y``, under another name: was rolled back,
    "the rewrite removed the random draw 'y' (Dropout)". With "inner", the float16-rounded twin's Dropout is
    ``d.unrounded``: was rolled back, "every output of the model is computed from random draws"."""
    record = _float16_record(_dropout_model(1.0, spelling))
    assert record.status == "applied", record.detail


def test_float16_overflowing_on_the_path_to_a_drawn_output_alone_is_rolled_back():
    """``x @ W`` reaches 1e5, past float16's 65504, on the path to the Dropout alone: float16 kernels give ``y`` inf.
    The float16-rounded twin that shows it names its Dropout ``d.unrounded``, so its budget left ``y`` out and measured
    ``z`` alone: the pass was applied."""
    record = _float16_record(_dropout_model(2e4, "mixed"))
    assert record.status == "rolled back", record.detail
    assert "as float16 kernels compute it" in record.detail and "max |Δ| inf" in record.detail, record.detail


def _batch_centred() -> ir.Model:
    """``s = x - mean(x over the batch)``."""
    graph = helper.make_graph(
        [_N("ReduceMean", ["x", "zero"], ["m"], keepdims=1), _N("Sub", ["x", "m"], ["s"])],
        "batch_centred",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["B", 4])],
        [numpy_helper.from_array(np.array([0], np.int64), "zero")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


def test_a_first_batch_of_copies_of_one_sample_leaves_the_mixing_check_to_the_next(monkeypatch):
    # One sample a run after the first batch, as for a model whose exposed tensors take 64 MB a sample.
    monkeypatch.setattr(calibration, "_RUN_BYTES", 1)
    model = _batch_centred()
    rng = np.random.default_rng(0)
    batches = [
        {"x": np.repeat(rng.standard_normal((1, 4)).astype(np.float32), 3, axis=0)},
        {"x": rng.standard_normal((3, 4)).astype(np.float32)},
    ]
    whole = calibration.tensor_ranges(runtime.collect_values(model, ["s"], batches), "minmax")
    assert whole["s"][0] < -0.5  # the second batch spreads about its mean
    assert calibration.calibrate(model, ["s"], batches, "minmax") == whole  # was (0.0, 0.0)


def _cnn(weight: str) -> ir.Model:
    """``y = Relu(Conv(x, w))``, ``w`` a float16 constant's ``Cast`` to float32, or an int8 one's ``DequantizeLinear``
    (both left unfolded, as fold-constants leaves large ones)."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((4, 2, 3, 3))
    if weight == "cast":
        nodes = [_N("Cast", ["w16"], ["w"], to=TensorProto.FLOAT)]
        constants = [numpy_helper.from_array(kernel.astype(np.float16), "w16")]
    else:
        nodes = [_N("DequantizeLinear", ["w8", "scale"], ["w"])]
        constants = [
            numpy_helper.from_array(np.clip(np.round(kernel * 40), -127, 127).astype(np.int8), "w8"),
            numpy_helper.from_array(np.array(0.025, np.float32), "scale"),
        ]
    graph = helper.make_graph(
        [*nodes, _N("Conv", ["x", "w"], ["s"]), _N("Relu", ["s"], ["y"])],
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4, 4, 4])],
        constants,
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


@pytest.mark.parametrize("weight", ["cast", "dequantize"])
def test_a_cnn_whose_weights_are_cast_or_dequantized_at_run_time_needs_no_mixing_check(monkeypatch, weight):
    """A kernel computed from constants alone keeps the samples apart as a constant one does: read as an activation
    (review s75 late74b's rule for a Siamese tracker's), each such CNN ran the check's three extra runs."""

    def refused(*args: object) -> None:
        raise AssertionError("the samples of a CNN were checked for meeting")

    monkeypatch.setattr(calibration, "_check_group", refused)
    model = _cnn(weight)
    batches = [{"x": np.random.default_rng(1).standard_normal((3, 2, 6, 6)).astype(np.float32)}]
    whole = calibration.tensor_ranges(runtime.collect_values(model, ["s"], batches), "minmax")
    assert calibration.calibrate(model, ["s"], batches, "minmax") == whole


@pytest.mark.parametrize("computed", ["Cast", "Reshape"])
def test_a_constant_as_long_as_the_batch_computed_at_run_time_gets_the_mixing_check(computed):
    """``s = x [B, 4] + c``, ``c [3, 4]`` a constant's ``Cast`` or ``Reshape`` with its shape recorded (a mask traced at
    the export's batch): one sample alone meets all 3 rows. Its ``Cast`` read as an activation of ``x``'s rank, the
    graph was taken to keep its samples apart, and the ranges were one sample's over every row."""
    rows = np.array([[0.0] * 4, [10.0] * 4, [-10.0] * 4])
    if computed == "Cast":
        node = _N("Cast", ["table"], ["c"], to=TensorProto.FLOAT)
        table = numpy_helper.from_array(rows.astype(np.float64), "table")
    else:
        node = _N("Reshape", ["table", "shape"], ["c"])
        table = numpy_helper.from_array(rows.astype(np.float32).ravel(), "table")
    graph = helper.make_graph(
        [node, _N("Add", ["x", "c"], ["s"])],
        "batch_long",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["B", 4])],
        [table, numpy_helper.from_array(np.array([3, 4], np.int64), "shape")],
        value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT, [3, 4])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))
    spread = np.array([[5.0], [1.0], [1.0]])  # the first sample's far from 0, where the others' rows are +-10
    batches = [{"x": (np.random.default_rng(0).standard_normal((3, 4)) * spread).astype(np.float32)}]
    whole = calibration.tensor_ranges(runtime.collect_values(model, ["s"], batches), "minmax")
    assert calibration.calibrate(model, ["s"], batches, "minmax") == whole

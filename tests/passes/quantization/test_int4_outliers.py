"""quantize-int4 --int4-outlier-channels: the largest input channels kept out of the level-4 int8 rounding."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.cli import main
from optimizer.errors import OptionError
from optimizer.options import Options
from optimizer.runtime import run_batches, run_model
from passes._layers import find_layers
from passes.quantization._layer_speed import LayerShape
from passes.quantization._outliers import choose_outlier_channels
from passes.quantization.int4 import Int4QuantizationPass
from tests.helpers import FIXTURES, computed_op_types

K, N = 64, 48


def _norm_and_two_readers(
    outliers=(3, 40), gain: float = 30.0, *, head_bias: bool = False, opset: int = 18, shapes: bool = False
) -> ir.Model:
    """``h = x * g`` (``g`` 1 but ``gain`` at the ``outliers`` channels: a norm with massive activations),
    read by two projections (q and k of one norm) whose sum is ``y``; with ``shapes``, ``h``'s shape inferred."""
    rng = np.random.default_rng(7)
    scale = np.ones(K, np.float32)
    scale[list(outliers)] = gain
    w1, w2 = ((rng.standard_normal((K, N)) * 0.1).astype(np.float32) for _ in range(2))
    nodes = [
        helper.make_node("Mul", ["x", "gain"], ["h"], name="norm"),
        helper.make_node("MatMul", ["h", "w1"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["h", "w2"], ["k"], name="k_proj"),
    ]
    initializers = [("gain", scale), ("w1", w1), ("w2", w2)]
    if head_bias:
        nodes.append(helper.make_node("Add", ["k", "b"], ["kb"], name="k_bias"))
        initializers.append(("b", (rng.standard_normal(N) * 0.1).astype(np.float32)))
    nodes.append(helper.make_node("Add", ["q", "kb" if head_bias else "k"], ["y"], name="sum"))
    graph = helper.make_graph(
        nodes,
        "outliers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", N])],
        [numpy_helper.from_array(a, n) for n, a in initializers],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(proto)
    if shapes:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return ir.from_proto(proto)


def _x(seed: int, batch: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((batch, 8, K)).astype(np.float32)}


def _int4(model: ir.Model, **options):
    options.setdefault("samples", _x(1))
    return Int4QuantizationPass(quantize_outputs=True, **options)(model.clone())


@pytest.mark.parametrize("method", ["rtn", "hqq"])
def test_outlier_channels_leave_the_rounding_and_come_back_exactly(method):
    model = _norm_and_two_readers()
    feeds = _x(2)
    split = _int4(model, method=method, outlier_channels=2)
    plain = _int4(model, method=method)
    exact_inputs = _int4(model, method=method, accuracy_level=0)  # the same 4-bit weights, float inputs
    ops = computed_op_types(split.model)
    # one zeroing Mul for both readers (beside the norm's own Mul), each MatMulNBits reads it
    assert ops.count("Mul") == 2 and ops.count("MatMulNBits") == 2
    zeroed = {node.inputs[0].name for node in split.model.graph if node.op_type == "MatMulNBits"}
    assert len(zeroed) == 1 and next(iter(zeroed)) != "h"
    # one Gather of the two channels for both readers, each adds them times its stored rows (MatMul);
    # with offsets the block sums (one Reshape + ReduceSum, its shape from a Concat) are concatenated with them
    # and share that MatMul
    assert ops.count("Gather") == 1
    assert ops.count("MatMul") == 2
    assert ops.count("ReduceSum") == (0 if method == "rtn" else 1)
    assert ops.count("Concat") == (0 if method == "rtn" else 2)
    # the realization matches its twin, and the twin says what it claims
    out = run_batches(split.model, [feeds])[0]["y"]
    assert np.abs(out - run_model(split.twin.model, feeds)["y"]).max() < 1e-4
    assert "2 with 2 outlier input channels zeroed" in split.twin.description
    # what the split is for: the int8 rounding of the input costs far less (its error against
    # the float-input product of the same weights)
    reference = run_batches(exact_inputs.model, [feeds])[0]["y"]
    unsplit = run_batches(plain.model, [feeds])[0]["y"]
    assert np.abs(out - reference).max() < 0.5 * np.abs(unsplit - reference).max()


def test_the_channels_are_the_largest_on_the_samples_wherever_they_sit():
    # Metamorphic: move the massive channels, the same rewrite picks them up where they are.
    for outliers in [(3, 40), (0, 63), (17, 18)]:
        model = _norm_and_two_readers(outliers)
        chosen, left_out = choose_outlier_channels(model, ["h"], [_x(1)], 2)
        assert not left_out
        assert chosen["h"].indices.tolist() == sorted(outliers)
        assert chosen["h"].ratio > 10
        result = _int4(model, outlier_channels=2)
        mask = next(
            node.inputs[1].const_value.numpy()
            for node in result.model.graph
            if node.op_type == "Mul" and node.name.endswith("_outliers_zeroed")
        )
        assert np.flatnonzero(mask == 0).tolist() == sorted(outliers)
        feeds = _x(3)
        out = run_batches(result.model, [feeds])[0]["y"]
        assert np.abs(out - run_model(result.twin.model, feeds)["y"]).max() < 1e-4


def test_a_bias_and_the_split_both_reach_the_output():
    model = _norm_and_two_readers(head_bias=True)
    feeds = _x(2)
    split = _int4(model, outlier_channels=2, accuracy_level=4)
    level0 = _int4(model, accuracy_level=0)
    out, reference = (run_batches(r.model, [feeds])[0]["y"] for r in (split, level0))
    # a lost bias (0.1 scale) or a lost outlier product (30x channels) would be far past this
    assert np.abs(out - reference).max() < 0.05


def test_without_samples_no_channels_are_chosen_and_it_says_so():
    result = Int4QuantizationPass(quantize_outputs=True, outlier_channels=2)(_norm_and_two_readers().clone())
    assert result.modified
    assert not any(node.name.endswith("_outliers_zeroed") for node in result.model.graph)
    assert any("no sample inputs, no channels chosen" in note for note in result.notes)


def test_the_budget_times_the_split_form():
    model = _norm_and_two_readers()
    quantizer = Int4QuantizationPass(outlier_channels=4)
    quantizer.prepare(model, [], [])
    assert "4 outlier channels float" in quantizer.speed_form("int4")
    # float inputs (level 0) round nothing: that alternative has no split
    assert "outlier" not in quantizer.speed_form("int4-float-input")
    probe = quantizer._layer_model(LayerShape("MatMul", 1, 64, 96), "int4")
    assert any(node.name.endswith("_outliers_zeroed") for node in probe.graph)
    assert any(node.op_type == "Gather" for node in probe.graph)
    float_input = quantizer._layer_model(LayerShape("MatMul", 1, 64, 96), "int4-float-input")
    assert not any(node.name.endswith("_outliers_zeroed") for node in float_input.graph)


def _budgeted_record():
    """quantize-int4's report record with the split under a budget that puts one of the two readers float."""
    _, report = optimize_with_report(
        _norm_and_two_readers(),
        quantize="int4",
        quantize_outputs=True,
        int4_outlier_channels=2,
        calibration=_x(1, batch=8),
        min_cosine=0.997,  # between every layer split int4 (0.996) and one layer float (0.998)
    )
    return next(r for r in report.passes if r.name == "quantize-int4")


def test_under_a_budget_the_split_and_the_alternatives_verify():
    record = _budgeted_record()
    assert record.status == "applied", record.detail
    assert any("2 largest channels of 1 layer inputs" in note for note in record.notes)
    assert any(note.startswith("frontier 2/") for note in record.notes)


def test_options_are_checked():
    with pytest.raises(OptionError, match="--int4-outlier-channels -1: expected a count"):
        Options(quantize="int4", int4_outlier_channels=-1)
    with pytest.raises(OptionError, match="only accuracy_level 4"):
        Options(quantize="int4", int4_outlier_channels=4, int4_accuracy_level=0)
    with pytest.raises(OptionError, match="only accuracy_level 4"):
        Options(quantize="int4", int4_outlier_channels=4, target="cuda")
    with pytest.raises(ValueError, match="outlier_channels 2: expected 0, or a positive count at accuracy_level 4"):
        Int4QuantizationPass(outlier_channels=2, target="cuda")


def test_cli_on_a_decoder_with_a_kv_cache(tmp_path):
    output, report = tmp_path / "int4.onnx", tmp_path / "report.json"
    source = FIXTURES / "llama_kv_legacy.onnx"
    before = source.read_bytes()
    command = ["optimize", str(source), "-o", str(output), "--quantize", "int4", "--block-size", "16"]
    assert main([*command, "--int4-outlier-channels", "2", "--report", str(report)]) == 0
    assert source.read_bytes() == before
    record = next(r for r in json.loads(report.read_text())["passes"] if r["name"] == "quantize-int4")
    assert record["status"] == "applied", record
    assert any("largest channels of" in note and "generated samples" in note for note in record["notes"])
    result = ir.load(output)
    assert any(node.name.endswith("_outliers_zeroed") for node in result.graph)


def test_the_local_sensitivity_estimate_models_the_split():
    # Past _EXHAUSTIVE_LAYERS the budget ranks layers by a numpy model of each one's error:
    # with the split it must be the split's error (smaller), or the budget misjudges every layer.
    model = _norm_and_two_readers()
    rows = _x(1)["x"].reshape(-1, K).astype(np.float64) * model.graph.initializers["gain"].const_value.numpy()
    errors = {}
    for count in (0, 2):
        quantizer = Int4QuantizationPass(outlier_channels=count, samples=_x(1))
        layers = find_layers(model.graph, ("matmul",))[0]
        quantizer.prepare(model, layers, [_x(1)])
        errors[count] = quantizer._local_error(rows, layers[0], rounded_input=True)
        float_input = quantizer._local_error(rows, layers[0], rounded_input=False)
    # (the 4-bit weights' own error, the same in all three, is most of each)
    assert float_input <= errors[2] and errors[2] - float_input < 0.5 * (errors[0] - float_input)


def _chain(*, method: str = "rtn") -> ir.Model:
    """``x * g → A → B``: B reads A's output directly (as ``--lowrank``'s two factors are written)."""
    rng = np.random.default_rng(11)
    scale = np.ones(K, np.float32)
    scale[[5, 50]] = 30.0
    a = (rng.standard_normal((K, K)) * 0.1).astype(np.float32)
    a[:, [9, 33]] *= 40.0  # A's output has massive channels too
    b = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["x", "gain"], ["h"], name="norm"),
        helper.make_node("MatMul", ["h", "a"], ["t"], name="first"),
        helper.make_node("MatMul", ["t", "b"], ["y"], name="second"),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", N])],
        [numpy_helper.from_array(v, n) for n, v in [("gain", scale), ("a", a), ("b", b)]],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    return ir.from_proto(proto)


@pytest.mark.parametrize("method", ["rtn", "hqq"])
def test_a_layer_reading_another_layers_output_keeps_its_split_in_the_twin(method):
    # The twin rewrites A's output (offsets, outlier rows) before B is reached: B's split must not
    # depend on the name of its input (found by a hostile review: model and twin 0.4 apart).
    model = _chain(method=method)
    result = _int4(model, method=method, outlier_channels=2)
    assert "2 with 2 outlier input channels zeroed" in result.twin.description
    assert any("of 2 layer inputs (read by 2 layers" in note for note in result.notes)
    feeds = _x(4)
    out = run_batches(result.model, [feeds])[0]["y"]
    assert np.abs(out - run_model(result.twin.model, feeds)["y"]).max() < 1e-3 * np.abs(out).max()


def test_a_second_run_names_its_nodes_apart_from_the_first():
    model = _norm_and_two_readers()
    first = _int4(model, outlier_channels=2, exclude=["q_proj"])
    second = _int4(first.model, outlier_channels=2)
    names = [node.name for node in second.model.graph]
    assert len(names) == len(set(names))
    zeroed = [node for node in second.model.graph if node.name.startswith("h_outliers_zeroed")]
    assert len(zeroed) == 2
    feeds = _x(2)
    out = run_batches(second.model, [feeds])[0]["y"]  # ONNX Runtime loads it
    assert np.abs(out - run_model(second.twin.model, feeds)["y"]).max() < 1e-3


@pytest.mark.parametrize("method", ["rtn", "hqq"])
def test_a_second_run_leaves_the_first_runs_exact_corrections_float(method):
    # The block sums, offsets and outlier rows are MatMuls with constant weights: a second run
    # rounded them to 4 bits (and its twin agreed), losing the split (a second hostile review).
    model = _norm_and_two_readers()
    once = _int4(model, method=method, outlier_channels=2)
    first = _int4(model, method=method, outlier_channels=2, exclude=["q_proj"])
    twice = _int4(first.model, method=method, outlier_channels=2)
    assert computed_op_types(twice.model).count("MatMulNBits") == 2
    feeds = _x(2)
    out_once, out_twice = (run_batches(r.model, [feeds])[0]["y"] for r in (once, twice))
    assert np.abs(out_twice - out_once).max() < 1e-3 * np.abs(out_once).max()


def test_readers_that_differ_still_share_what_they_have_in_common():
    # One reader with block offsets (HQQ) and one without (float inputs at level 0 have no split
    # either): the block sums and the outlier Gather are each made once for the input.
    model = _norm_and_two_readers()
    quantization = Int4QuantizationPass(method="hqq", outlier_channels=2)
    quantization.prepare(model, find_layers(model.graph, ("matmul",))[0], [_x(1)])
    quantization.schemes = {"q_proj": "int4-float-input"}
    result, names = model.clone(), ["q_proj", "k_proj"]
    quantization._apply(result, names)
    ops = computed_op_types(result)
    assert ops.count("Gather") == 1 and ops.count("MatMulNBits") == 2
    sums = [node for node in result.graph if node.name == "h_block_sums"]
    assert len(sums) == 1 and sums[0].op_type == "ReduceSum"
    twin = quantization._twin(model.clone(), names, smoothed=False)
    feeds = _x(2)
    out = run_batches(result, [feeds])[0]["y"]
    assert np.abs(out - run_model(twin.model, feeds)["y"]).max() < 1e-3


def test_the_note_counts_what_the_budget_left_split():
    record = _budgeted_record()
    assert record.status == "applied"
    # one of the two readers went float: one input split, read by one layer
    assert any("of 1 layer inputs (read by 1 layers" in note for note in record.notes), record.notes


def test_inputs_without_outliers_or_too_narrow_stay_whole_and_it_says_so():
    flat = _int4(_norm_and_two_readers(gain=1.0), outlier_channels=2)
    assert not any(node.name.endswith("_outliers_zeroed") for node in flat.model.graph)
    assert any("under 2x the median" in note for note in flat.notes)
    narrow = _int4(_norm_and_two_readers(), outlier_channels=K)
    assert any(f"1 not wider than {K} channels" in note for note in narrow.notes)  # one input, two readers
    # not-finite samples are named as such, not as narrow
    samples = _x(1)
    samples["x"][0, 0, 7] = np.inf
    infinite = _int4(_norm_and_two_readers(), outlier_channels=2, samples=samples)
    notes = " ".join(infinite.notes)
    assert "not finite on the samples" in notes and "not wider" not in notes


def test_one_block_sums_matrix_per_width_whatever_the_channels():
    # Each input's outlier channels come through a Gather: the block sums matrix (before opset 15, where the sums
    # are no ReduceSum) stays one per (K, block).
    result = _int4(_norm_and_two_readers(opset=13), method="hqq", outlier_channels=2)
    sums = [name for name in result.model.graph.initializers if name.startswith("graphopt.exact.block_sums")]
    assert len(sums) == 1
    ops = computed_op_types(result.model)
    # one block sums MatMul, one Gather and one Concat for the input both layers read
    assert ops.count("Gather") == 1 and ops.count("Concat") == 1


def test_block_sums_are_reduced_from_opset_15_and_a_matmul_before():
    # The block offsets read each block's sum of the input: Reshape(x, Concat(Shape(x)[:-1], [blocks, block]))
    # + ReduceSum from opset 15 (Shape's end), the same sums as the 0/1 MatMul written before it (a MatMul of one
    # row by 576x18 costs ONNX Runtime several times the four small nodes).
    feeds = _x(2)
    reduced = _int4(_norm_and_two_readers(opset=18), method="hqq", outlier_channels=2)
    multiplied = _int4(_norm_and_two_readers(opset=13), method="hqq", outlier_channels=2)
    ops = computed_op_types(reduced.model)
    assert ops.count("ReduceSum") == 1 and ops.count("Reshape") == 1  # one per input, both readers share it
    assert ops.count("MatMul") == computed_op_types(multiplied.model).count("MatMul") - 1
    assert "ReduceSum" not in computed_op_types(multiplied.model)
    assert not [name for name in reduced.model.graph.initializers if "block_sums" in name]
    out = run_batches(reduced.model, [feeds])[0]["y"]
    assert np.abs(out - run_batches(multiplied.model, [feeds])[0]["y"]).max() < 1e-5
    assert np.abs(out - run_model(reduced.twin.model, feeds)["y"]).max() < 1e-4


def test_block_sums_read_the_leading_dims_at_run_time_not_a_declared_rank():
    # A review: the Reshape's target was [0] * (rank - 1) + [blocks, block] from x's declared rank, and a
    # value_info declaring x [B, K] for a run-time [2, 1, K] gave y [2, 2, N] (the sums broadcast against the
    # product), silently, where the original gives [2, 1, N].
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["inp", "s"], ["x"]), helper.make_node("MatMul", ["x", "w"], ["y"], name="q")],
        "declared_rank",
        [
            helper.make_tensor_value_info("inp", TensorProto.FLOAT, ["M", K]),
            helper.make_tensor_value_info("s", TensorProto.INT64, [None]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
        value_info=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))
    samples = {"inp": rng.standard_normal((6, K)).astype(np.float32), "s": np.array([6, K])}
    result = Int4QuantizationPass(quantize_outputs=True, method="hqq", samples=samples)(model.clone())
    assert "ReduceSum" in computed_op_types(result.model)
    feeds = {"inp": rng.standard_normal((2, K)).astype(np.float32), "s": np.array([2, 1, K])}
    expected = run_model(model, feeds)["y"]
    out = run_model(result.model, feeds)["y"]
    assert out.shape == expected.shape == (2, 1, N)
    assert np.abs(out - run_model(result.twin.model, feeds)["y"]).max() < 1e-4


def test_block_sums_of_a_k_that_leaves_a_partial_block_stay_a_matmul():
    # K = 64 in blocks of 128: one partial block, which a Reshape cannot make; the 0/1 MatMul sums it.
    result = _int4(_norm_and_two_readers(), method="hqq", outlier_channels=2, block_size=128)
    ops = computed_op_types(result.model)
    assert "ReduceSum" not in ops
    assert [name for name in result.model.graph.initializers if "block_sums" in name]
    feeds = _x(2)
    out = run_batches(result.model, [feeds])[0]["y"]
    assert np.abs(out - run_model(result.twin.model, feeds)["y"]).max() < 1e-4

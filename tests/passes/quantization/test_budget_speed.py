"""The accuracy budget buys speed: changes ranked by accuracy per latency, alternatives before float,
the frontier reported, per-layer timing cached per machine and shape, int4 falling back to int8.

Nothing here times anything: every per-layer time is an injected measurement.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import AccuracyBudget
from optimizer.runtime import run_batches
from passes.quantization._base import FLOAT, greedy_path
from passes.quantization._layer_speed import LayerShape, LayerSpeeds
from passes.quantization.dynamic import DynamicQuantizationPass, cannot_saturate
from passes.quantization.int4 import Int4QuantizationPass
from tests.passes.quantization.conftest import drift
from tests.passes.quantization.graphs import weights

_REAL_TIME = LayerSpeeds._time  # the conftest replaces it by a cost model in every test

# Injected per-layer seconds per multiply-add, by kernel: int8 half of float, per-row a little more,
# the DequantizeLinear weight (MatMulNBits 8-bit in ORT) slower than float, int4 in between.
_FACTORS = {
    "float": 1.0,
    "DynamicQuantizeMatMul": 0.5,
    "per-row quantizer + MatMulIntegerToFloat": 0.6,
    "DequantizeLinear + MatMul": 1.2,
}


def _fake(calls: list | None = None):
    def measure(shape: LayerShape, builders) -> dict[str, float]:
        if calls is not None:
            calls.append((shape, sorted(builders)))
        work = shape.rows * shape.k * shape.n
        return {form: work * _FACTORS.get(form, 0.8) for form in builders}

    return measure


def _speeds(tmp_path, calls: list | None = None) -> LayerSpeeds:
    return LayerSpeeds(path=tmp_path / "layer_speed.json", measure=_fake(calls))


def _model(nodes, inputs, outputs, initializers) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _outlier_tokens_chain(second: np.ndarray | None = None) -> ir.Model:
    """``x [B, S, 16]`` → first → second → LayerNorm ``y`` (each token's row normalized, so every token counts);
    ``second`` replaces the second layer's weight."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("MatMul", ["h", "w2"], ["k"], name="second"),
        helper.make_node("LayerNormalization", ["k", "gamma"], ["y"], axis=-1, name="norm"),
    ]
    init = [
        ("w1", weights(16, 16, seed=1, scale=0.3)),
        ("w2", weights(16, 16, seed=2, scale=0.3) if second is None else second),
        ("gamma", np.ones(16, np.float32)),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 16])
    return _model(nodes, [x], [y], init)


def _outlier_samples(count: int, seed: int) -> dict[str, np.ndarray]:
    """Token 0 of every sample 1000x the others: one scale per tensor rounds the other tokens to nothing."""
    x = np.random.default_rng(seed).standard_normal((count, 8, 16)).astype(np.float32)
    x[:, 0] *= 1000.0
    return {"x": x}


# -- the search's order ------------------------------------------------------------------------


def test_at_equal_gain_the_layer_cheaper_to_keep_float_goes_first():
    start = {"cheap": "int8", "costly": "int8"}
    errors = {name: {"int8": 0.1, FLOAT: 0.0} for name in start}
    times = {"cheap": {"int8": 1.0, FLOAT: 2.0}, "costly": {"int8": 4.0, FLOAT: 12.0}}
    assert greedy_path(start, errors, times) == [("cheap", FLOAT), ("costly", FLOAT)]


def test_a_larger_gain_per_second_beats_a_larger_gain():
    start = {"a": "int8", "b": "int8"}
    errors = {"a": {"int8": 0.3, FLOAT: 0.0}, "b": {"int8": 0.1, FLOAT: 0.0}}
    times = {"a": {"int8": 1.0, FLOAT: 11.0}, "b": {"int8": 1.0, FLOAT: 2.0}}  # 0.03/s against 0.1/s
    assert greedy_path(start, errors, times)[0] == ("b", FLOAT)


def test_cheaper_alternatives_come_before_float_and_a_slower_less_accurate_one_never():
    start = {"layer": "int8"}
    errors = {"layer": {"int8": 0.2, "row": 0.05, "weight-only": 0.01, "w8": 0.15, FLOAT: 0.0}}
    times = {"layer": {"int8": 1.0, "row": 1.2, "weight-only": 3.0, "w8": 1.0, FLOAT: 2.0}}
    # 8-bit weights cost nothing, per-row scales 0.1/0.2 s, float 0.05/0.8 s; weight-only is slower than float
    assert greedy_path(start, errors, times) == [("layer", "w8"), ("layer", "row"), ("layer", FLOAT)]


def test_where_the_default_is_slower_than_float_the_fastest_fix_comes_first():
    # int4 at accuracy_level 4 measured slower than float on MiniLM's 60-token layers: int8 is both
    # faster and more accurate than int4, float more accurate still but slower than int8
    start = {"layer": "int4"}
    errors = {"layer": {"int4": 0.2, "int8": 0.05, FLOAT: 0.0}}
    times = {"layer": {"int4": 3.0, "int8": 1.0, FLOAT: 2.0}}
    assert greedy_path(start, errors, times) == [("layer", "int8"), ("layer", FLOAT)]


def test_layers_that_cost_nothing_alone_are_still_on_the_path():
    start = {"a": "int8", "b": "int8"}
    errors = {"a": {"int8": 0.0, FLOAT: 0.0}, "b": {"int8": 0.0, FLOAT: 0.0}}
    times = {"a": {"int8": 1.0, FLOAT: 5.0}, "b": {"int8": 1.0, FLOAT: 2.0}}
    assert greedy_path(start, errors, times) == [("b", FLOAT), ("a", FLOAT)]


# -- the pass ----------------------------------------------------------------------------------


def test_per_row_scales_are_chosen_before_float_and_the_frontier_is_reported(tmp_path):
    model = _outlier_tokens_chain()
    unbudgeted = DynamicQuantizationPass(quantize_outputs=True)(model.clone()).model
    assert drift(model, unbudgeted, _outlier_samples(16, seed=7)).cosine < 0.9
    quantization = DynamicQuantizationPass(
        quantize_outputs=True,
        budget=AccuracyBudget(min_cosine=0.999),
        samples=_outlier_samples(32, seed=0),
        layer_speeds=_speeds(tmp_path),
    )
    result = quantization(model.clone())
    assert quantization.kept_float == []
    assert quantization.schemes == {"first": "row", "second": "row"}
    ops = [node.op_type for node in result.model.graph]
    assert ops.count("MatMulIntegerToFloat") == 2 and "MatMul" not in ops
    # held-out samples meet the budget too
    assert drift(model, result.model, _outlier_samples(16, seed=7)).cosine >= 0.999
    # the frontier: every configuration measured, from the default to the one chosen, with its latency
    frontier = quantization.frontier
    assert len(frontier) >= 2 and frontier[0].changes == () and frontier[0].drift.cosine < 0.9
    assert frontier[-1].changes == (("first", "row"), ("second", "row")) and frontier[-1].drift.cosine >= 0.999
    assert frontier[-1].seconds > frontier[0].seconds
    frontier_notes = [note for note in result.notes if note.startswith("frontier ")]
    assert len(frontier_notes) == len(frontier)
    assert "2 per-row activation scales (first, second)" in frontier_notes[-1]
    assert "of the saving kept" in frontier_notes[-1]
    assert any("with 2 layers changed" in note for note in result.notes)
    # the realization computes what its twin claims
    batch = [_outlier_samples(4, seed=3)]
    got, claimed = run_batches(result.model, batch)[0]["y"], run_batches(result.twin.model, batch)[0]["y"]
    assert np.abs(got - claimed).max() < 1e-3


def test_weight_only_and_8_bit_weights_realize_their_twin(tmp_path):
    # 8-bit weights are offered only where no pair along K can saturate the int16 sums of x86
    # kernels without VNNI (cannot_saturate); forced on any other weight, such a CPU (AVX2 only,
    # as an AMD EPYC CI machine) really does compute something else, and the twin check says so.
    second = weights(16, 16, seed=2, scale=0.3)
    second[1::2] *= 0.004  # each pair: one full-range weight and one under a level
    assert cannot_saturate(second, per_channel=True)
    model = _outlier_tokens_chain(second)
    quantization = DynamicQuantizationPass(quantize_outputs=True, layer_speeds=_speeds(tmp_path))
    quantization.schemes = {"first": "weight-only", "second": "w8"}
    copy = model.clone()
    source = copy.clone()
    quantization._apply(copy, ["first", "second"])
    ops = [node.op_type for node in copy.graph]
    assert ops[:2] == ["DequantizeLinear", "MatMul"] and "DynamicQuantizeMatMul" in ops
    stored = {value.name: value.const_value.numpy() for value in copy.graph.initializers.values()}
    assert np.abs(stored["second.weight_int8"]).max() > 63  # 8-bit: past the 7-bit limit
    twin = quantization._twin(source, ["first", "second"], smoothed=False)
    feeds = [{"x": np.random.default_rng(1).standard_normal((2, 8, 16)).astype(np.float32)}]
    got, claimed = run_batches(copy, feeds)[0]["y"], run_batches(twin.model, feeds)[0]["y"]
    assert np.abs(got - claimed).max() < 1e-3


def test_8_bit_weights_are_offered_only_where_no_pair_can_saturate():
    safe = np.zeros((4, 2), np.float32)
    safe[0, :] = 1.0  # one peak per pair: 127 + 0
    assert cannot_saturate(safe, per_channel=True)
    risky = safe.copy()
    risky[1, :] = 0.5  # 127 + 64 > 128 in the pair (0, 1)
    assert not cannot_saturate(risky, per_channel=True)
    risky_odd = np.zeros((3, 1), np.float32)
    risky_odd[1:, 0] = 1.0  # rows 1 and 2 are in different pairs
    assert cannot_saturate(risky_odd, per_channel=True)


def test_an_unreachable_budget_still_reports_its_frontier(tmp_path):
    model = _outlier_tokens_chain()
    quantization = DynamicQuantizationPass(
        quantize_outputs=True,
        budget=AccuracyBudget(min_cosine=1.0),
        samples=_outlier_samples(16, seed=0),
        layer_speeds=_speeds(tmp_path),
    )
    result = quantization(model.clone())
    assert not result.modified and "cannot be met" in result.notes[-1]
    assert len(quantization.frontier) >= 2
    assert any(note.startswith("frontier ") for note in result.notes)


# -- the per-layer timing cache ----------------------------------------------------------------


def test_layer_times_are_measured_once_and_read_back(tmp_path):
    calls: list = []
    shape = LayerShape("MatMul", 8, 16, 32)
    builders = {FLOAT: lambda: None, "DynamicQuantizeMatMul": lambda: None}
    first = _speeds(tmp_path, calls).seconds(shape, builders)
    assert calls == [(shape, sorted(builders))]
    assert first == {FLOAT: 8 * 16 * 32, "DynamicQuantizeMatMul": 8 * 16 * 32 * 0.5}
    # a new process on the same machine reads the file instead of timing
    again = _speeds(tmp_path, calls)
    assert again.seconds(shape, builders) == first and again.timed == 0 and len(calls) == 1
    keys = json.loads((tmp_path / "layer_speed.json").read_text())
    key = again.key(shape, "DynamicQuantizeMatMul")
    assert key in keys
    import onnxruntime

    for part in (f"ort {onnxruntime.__version__}", "cpu", f"{again.threads} threads", "MatMul 8x16x32 float32"):
        assert part in key


def test_the_cache_key_separates_threads_shapes_and_forms(tmp_path):
    calls: list = []
    shape = LayerShape("MatMul", 8, 16, 32)
    builders = {FLOAT: lambda: None, "DynamicQuantizeMatMul": lambda: None}
    LayerSpeeds(threads=2, path=tmp_path / "c.json", measure=_fake(calls)).seconds(shape, builders)
    LayerSpeeds(threads=1, path=tmp_path / "c.json", measure=_fake(calls)).seconds(shape, builders)
    LayerSpeeds(threads=1, path=tmp_path / "c.json", measure=_fake(calls)).seconds(
        LayerShape("MatMul", 9, 16, 32), builders
    )
    assert len(calls) == 3
    # a form not cached yet is timed against the float layer again and scaled to the cached float time
    speeds = LayerSpeeds(threads=1, path=tmp_path / "c.json", measure=_fake(calls))
    more = speeds.seconds(shape, {**builders, "DequantizeLinear + MatMul": lambda: None})
    assert calls[-1] == (shape, sorted([FLOAT, "DequantizeLinear + MatMul"])) and speeds.timed == 1
    assert more["DequantizeLinear + MatMul"] == pytest.approx(8 * 16 * 32 * 1.2)


def test_the_pass_times_each_shape_once_and_uses_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    model = _outlier_tokens_chain()
    quantization = DynamicQuantizationPass(
        quantize_outputs=True, budget=AccuracyBudget(min_cosine=0.999), samples=_outlier_samples(16, seed=0)
    )
    quantization(model.clone())
    cached = json.loads((tmp_path / "cache" / "layer_speed.json").read_text())
    # both layers are 8 rows (tokens per sample) x 16 x 16: one shape, each form timed once
    assert {key.split("|")[-2] for key in cached} == {"MatMul 8x16x16 float32"}
    assert {key.split("|")[-1] for key in cached} == {
        FLOAT,
        "DynamicQuantizeMatMul",
        "per-row quantizer + MatMulIntegerToFloat",
        "DequantizeLinear + MatMul",
    }


# -- int4 under a budget -----------------------------------------------------------------------


def _wide_chain() -> ir.Model:
    """``x [B, 64]`` → a → b → c ``y``: weights wide enough for 4-bit blocks of 32; b's rows carry one
    channel of a 100x larger input, which 4-bit blocks round badly and int8 columns keep."""
    wa, wb, wc = weights(64, 64, seed=1, scale=0.3), weights(64, 64, seed=2, scale=0.3), weights(64, 64, seed=3)
    wa[:, 0] *= 100.0
    wb[0, :] /= 100.0
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["h"], name="a"),
        helper.make_node("MatMul", ["h", "wb"], ["k"], name="b"),
        helper.make_node("MatMul", ["k", "wc"], ["y"], name="c"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 64])
    return _model(nodes, [x], [y], [("wa", wa), ("wb", wb), ("wc", wc)])


def test_int4_falls_back_to_int8_per_layer_before_float(tmp_path):
    model = _wide_chain()
    feeds = {"x": np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)}
    plain = Int4QuantizationPass(quantize_outputs=True, embeddings=False)(model.clone()).model
    reached = drift(model, plain, feeds).cosine
    quantization = Int4QuantizationPass(
        quantize_outputs=True,
        embeddings=False,
        budget=AccuracyBudget(min_cosine=min(0.9999, 1 - (1 - reached) / 4)),
        samples=feeds,
        layer_speeds=_speeds(tmp_path),
    )
    result = quantization(model.clone())
    assert result.modified and "int8" in quantization.schemes.values()
    assert quantization.kept_float == [] or set(quantization.kept_float) < {"a", "b", "c"}
    ops = [node.op_type for node in result.model.graph]
    assert "DynamicQuantizeMatMul" in ops
    assert ops.count("DynamicQuantizeMatMul") == list(quantization.schemes.values()).count("int8")
    assert ops.count("MatMulNBits") == list(quantization.schemes.values()).count("int4")
    assert "int8 layers' weights int8-dequantized" in result.twin.description
    held_out = {"x": np.random.default_rng(5).standard_normal((16, 64)).astype(np.float32)}
    assert drift(model, result.model, held_out).cosine > reached
    got, claimed = run_batches(result.model, [held_out])[0]["y"], run_batches(result.twin.model, [held_out])[0]["y"]
    assert np.abs(got - claimed).max() < 1e-2 * np.abs(claimed).max()


def test_a_decoder_with_a_cache_is_timed_as_a_generation(tmp_path):
    """A decoder's layers are timed at the prompt's rows and at one row (32 generated tokens): int4 is slower
    than float on a prompt and far faster per generated token, and the budget must see both."""
    from tests.helpers import FIXTURES
    from tests.test_decoder_cache import PAST_NAMES, step_feed

    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    rng = np.random.default_rng(0)
    prompt = rng.integers(1, 256, (4, 6))
    samples = step_feed(2, prompt, np.ones((4, 6), np.int64), None)
    assert set(PAST_NAMES) <= set(samples)
    calls: list = []
    quantization = DynamicQuantizationPass(
        budget=AccuracyBudget(min_cosine=0.9999), samples=samples, layer_speeds=_speeds(tmp_path, calls)
    )
    result = quantization(model.clone())
    timed_rows = {shape.rows for shape, _ in calls}
    assert timed_rows == {6, 1}, timed_rows
    assert any(
        "timed as a generation, a prefill of the samples' tokens and 32 one-token steps" in n for n in result.notes
    )
    # Each layer's time is its prompt's 6 rows once plus one row 32 times (the fake's time is rows x k x n).
    from optimizer.samples import split_samples
    from passes._layers import find_layers

    layers = [layer for layer in find_layers(model.graph, ("matmul",))[0] if layer.weight.ndim == 2][:3]
    times, measured = quantization._layer_times(
        model, layers, split_samples(samples, model=model), {layer.name: (FLOAT,) for layer in layers}
    )
    assert measured and layers
    for layer in layers:
        k, n = layer.weight.shape
        assert times[layer.name][FLOAT] == pytest.approx((6 + 32) * k * n)
    encoder = _outlier_tokens_chain()
    calls.clear()
    DynamicQuantizationPass(
        budget=AccuracyBudget(min_cosine=0.999),
        samples=_outlier_samples(4, seed=0),
        layer_speeds=_speeds(tmp_path, calls),
    )(encoder)
    assert {shape.rows for shape, _ in calls} == {8}


def test_the_local_estimate_counts_every_token_not_the_massive_one():
    """One token row 1000x the others (a decoder's first token): a per-tensor int8 scale rounds the other
    rows to nothing. Measured over the whole output the error is small (the massive row dominates both
    norms); per row, it is what every other token loses."""
    from passes._layers import find_layers
    from passes.quantization._base import local_error, output_error

    model = _outlier_tokens_chain()
    layers, _ = find_layers(model.graph, ("matmul",))
    first = next(layer for layer in layers if layer.name == "first")
    x = _outlier_samples(4, seed=0)["x"].reshape(-1, 16).astype(np.float64)
    exact = x @ first.weight.astype(np.float64)
    per_tensor = local_error(x, first, "tensor", False, False)
    per_row = local_error(x, first, "row", False, False)
    assert per_tensor > 0.5 > 0.05 > per_row, (per_tensor, per_row)
    whole = np.linalg.norm(exact * 1.001 - exact) / np.linalg.norm(exact)
    assert output_error(exact * 1.001, exact) == pytest.approx(whole, rel=1e-6)  # a uniform error is the same
    assert output_error(np.zeros((3, 4)), np.zeros((3, 4))) == 0.0


def test_local_estimates_are_scaled_by_each_role_across_the_blocks(monkeypatch):
    """Beyond 24 layers the search orders layers by local estimates, which see a layer's own output, not what
    the softmax after a query or key does with its error. Each role (one layer's part in every block) is
    quantized alone across the blocks; the model's drift over the role's summed local estimates scales them."""
    from optimizer.accuracy import Drift
    from passes._layers import find_layers
    from passes.quantization._base import block_role

    nodes, init, previous = [], [], "x"
    for block in range(13):  # 26 layers: past the exhaustive search
        for part in ("q", "up"):
            name = f"/model/layers.{block}/{part}/MatMul"
            init.append((f"w{block}{part}", weights(16, 16, seed=block * 2 + (part == "up"), scale=0.2)))
            nodes.append(helper.make_node("MatMul", [previous, f"w{block}{part}"], [name + "_out"], name=name))
            previous = name + "_out"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])
    y = helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["B", 16])
    model = _model(nodes, [x], [y], init)
    layers = find_layers(model.graph, ("matmul",))[0]
    assert len(layers) == 26 and block_role(layers[0].name) == "/model/layers.#/q/MatMul"
    local = {layer.name: (0.01 if "/q/" in layer.name else 0.02) for layer in layers}  # q looks the safer
    quantization = DynamicQuantizationPass(budget=AccuracyBudget(min_cosine=0.99))

    def trial(model, schemes, batches, reference):  # q alone costs the model 10x what up does
        return Drift(cosine=0.9 if all("/q/" in name for name in schemes) else 0.99, max_error=0.0)

    monkeypatch.setattr(quantization, "_trial", trial)
    scale = quantization._role_scale(model, layers, local, [], None)
    # A cosine drift grows with the square of an error: squared estimates, shared in proportion.
    assert scale("/model/layers.0/q/MatMul", 0.01) == pytest.approx(0.1 / 13)
    assert scale("/model/layers.0/up/MatMul", 0.02) == pytest.approx(0.01 / 13)
    assert scale("/model/layers.0/q/MatMul", 0.02) == pytest.approx(4 * 0.1 / 13)  # an alternative, same units
    assert block_role("/model/layers.3/mlp/layers.0/MatMul") != block_role("/model/layers.3/mlp/layers.2/MatMul")
    # And the search reads them: _scheme_errors scales what _sensitivity estimated.
    monkeypatch.setattr(quantization, "_sensitivity", lambda *args: dict(local))
    default = quantization.default_scheme
    errors = quantization._scheme_errors(model, layers, {layer.name: (default, FLOAT) for layer in layers}, [], None)
    assert errors["/model/layers.5/q/MatMul"][default] == pytest.approx(0.1 / 13)
    assert errors["/model/layers.5/up/MatMul"][default] == pytest.approx(0.01 / 13)
    # A role whose estimates are all zero still costs what it measured, shared among its layers.
    zero = dict(local, **{name: 0.0 for name in local if "/q/" in name})
    assert quantization._role_scale(model, layers, zero, [], None)("/model/layers.0/q/MatMul", 0.0) == pytest.approx(
        0.1 / 13
    )


@pytest.mark.parametrize(
    ("shape", "copies"),
    [
        (LayerShape("MatMul", 1, 576, 576), 51),
        (LayerShape("MatMul", 1, 64, 96), 64),
        (LayerShape("MatMul", 1, 576, 49152), 1),
        (LayerShape("MatMul", 60, 384, 1536), 2),
        (LayerShape("MatMul", 1500, 384, 1536), 1),
    ],
    ids=["decoder-projection", "tiny", "lm-head", "encoder", "long-prefill"],
)
def test_a_probe_holds_copies_until_their_weights_stream(shape, copies):
    # One row of a lone 576x576 layer is mostly the call's fixed cost and a weight in cache; copies with
    # weights of their own, past the last-level cache, are what a decoder's step streams. A layer with
    # work enough of its own (a prefill) gets none: they would only multiply the probe's time and memory.
    from passes.quantization import _layer_speed

    assert _layer_speed.probe_copies(shape) == copies
    probe = _layer_speed.layer_probe(shape)
    assert len(probe.graph.inputs) == len(probe.graph.outputs) == copies
    assert len({value.name for value in probe.graph.initializers.values()}) == copies
    first, *rest = (init.const_value.numpy() for init in probe.graph.initializers.values())
    assert all(not np.array_equal(first, other) for other in rest[:3])  # a weight of its own each


def test_an_int4_probe_leaves_the_layers_weights_alone():
    # A probe's copies are rounded to nearest whatever the method (only their form is timed), and neither
    # their values nor their grids are kept where the real layers' chosen weights live.
    from tests.passes.quantization.graphs import mlp

    quantizer = Int4QuantizationPass(method="hqq")
    quantizer.prepare(mlp(head=False), [], [])
    weights_before, grids_before = dict(quantizer._weights), dict(quantizer._grids)
    probe = quantizer._layer_model(LayerShape("MatMul", 1, 64, 96), "int4")
    assert quantizer._weights == weights_before and quantizer._grids == grids_before
    assert quantizer._probe is None
    packed = [init for init in probe.graph.initializers.values() if init.name.endswith(".weight_int4")]
    assert len(packed) == 64


@pytest.mark.parametrize(
    ("quantizer", "op"),
    [(DynamicQuantizationPass(), "DynamicQuantizeMatMul"), (Int4QuantizationPass(), "MatMulNBits")],
    ids=["dynamic", "int4"],
)
def test_every_copy_in_a_probe_is_rewritten_in_the_form_timed(quantizer, op):
    from tests.passes.quantization.graphs import mlp

    quantizer.prepare(mlp(head=False), [], [])
    shape = LayerShape("MatMul", 4, 64, 96)
    probe = quantizer._layer_model(shape, "int8" if op == "DynamicQuantizeMatMul" else "int4")
    written = [node for node in probe.graph if node.op_type == op]
    assert len(written) == len(probe.graph.inputs) == 64
    assert not [node for node in probe.graph if node.op_type == "MatMul"]


def test_a_probes_time_is_per_copy(monkeypatch, tmp_path):
    # The conftest models every timing; here LayerSpeeds' own ``_time`` runs on real probes with the
    # interleaved runs' seconds given: what it returns is one copy's time, not the whole probe's.
    from passes.quantization import _layer_speed

    monkeypatch.setattr(_layer_speed.LayerSpeeds, "_time", _REAL_TIME)
    monkeypatch.setattr(_layer_speed, "MAX_COPIES", 8)
    shape = LayerShape("MatMul", 2, 32, 48)
    seen = []

    def pairs(before, after, **plan):
        seen.append(len(before.feeds))
        return [0.08] * 3, [0.04] * 3  # seconds of one run of all 8 copies

    monkeypatch.setattr(_layer_speed, "interleaved_times", pairs)
    quantizer = DynamicQuantizationPass()
    speeds = LayerSpeeds(threads=1, path=tmp_path / "c.json")
    times = speeds.seconds(
        shape,
        {
            FLOAT: lambda: quantizer._layer_model(shape, FLOAT),
            "DynamicQuantizeMatMul": lambda: quantizer._layer_model(shape, "int8"),
        },
    )
    assert seen == [8]
    assert times[FLOAT] == pytest.approx(0.01) and times["DynamicQuantizeMatMul"] == pytest.approx(0.005)
    assert "streamed copies" in speeds.key(shape, FLOAT)


@pytest.mark.parametrize(("steps", "rows"), [(0, {6}), (4, {6, 1})], ids=["prefill-alone", "four-steps"])
def test_the_decode_steps_a_decoders_budget_times_are_the_users_choice(tmp_path, steps, rows):
    # A long-prompt workload (retrieval, classification) is a prefill: weights-only int8 or int4 that pay at one
    # row cost it, so the budget can time the prefill alone (--budget-decode-steps 0) or any number of steps.
    from optimizer.samples import split_samples
    from passes._layers import find_layers
    from tests.helpers import FIXTURES
    from tests.test_decoder_cache import step_feed

    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    samples = step_feed(2, np.random.default_rng(0).integers(1, 256, (4, 6)), np.ones((4, 6), np.int64), None)
    calls: list = []
    quantization = DynamicQuantizationPass(
        budget=AccuracyBudget(min_cosine=0.9999),
        samples=samples,
        layer_speeds=_speeds(tmp_path, calls),
        decode_steps=steps,
    )
    result = quantization(model.clone())
    assert {shape.rows for shape, _ in calls} == rows
    expected = "timed as a prefill of the samples' tokens alone" if steps == 0 else "and 4 one-token steps"
    assert any(expected in note for note in result.notes)
    layers = [layer for layer in find_layers(model.graph, ("matmul",))[0] if layer.weight.ndim == 2][:2]
    times, _ = quantization._layer_times(
        model, layers, split_samples(samples, model=model), {layer.name: (FLOAT,) for layer in layers}
    )
    for layer in layers:
        k, n = layer.weight.shape
        assert times[layer.name][FLOAT] == pytest.approx((6 + steps) * k * n)


def test_decode_steps_on_a_model_without_a_cache_say_they_do_nothing(tmp_path):
    calls: list = []

    def quantized(min_cosine: float, steps: int):
        return DynamicQuantizationPass(
            budget=AccuracyBudget(min_cosine=min_cosine),
            samples=_outlier_samples(4, seed=0),
            layer_speeds=_speeds(tmp_path, calls),
            decode_steps=steps,
        )(_outlier_tokens_chain())

    result = quantized(0.999, 0)
    assert {shape.rows for shape, _ in calls} == {8}
    assert any("--budget-decode-steps 0 does nothing here: the model has no key/value cache" in n for n in result.notes)
    # Said too where the budget is met at once and nothing is timed
    calls.clear()
    met = quantized(0.5, 3)
    assert not calls and any("--budget-decode-steps 3 does nothing here" in note for note in met.notes)


@pytest.mark.parametrize("steps", [True, 2.5, "3", -1])
def test_the_pass_refuses_decode_steps_that_are_not_a_count(steps):
    with pytest.raises(ValueError, match="expected a whole number of steps"):
        DynamicQuantizationPass(decode_steps=steps)


def test_a_timed_probe_binds_its_outputs_once_and_computes_the_same():
    # Wrapping each of a probe's outputs in a new array costs about 1.3 us a copy, on every form alike:
    # IO binding writes them into buffers kept from a first run.
    from passes._kernel_timing import OneModel
    from passes.quantization._layer_speed import layer_probe

    probe = layer_probe(LayerShape("MatMul", 2, 32, 48))
    x = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    feeds = {value.name: x for value in probe.graph.inputs}
    timed = OneModel(probe, feeds, "cpu", 1, "time a probe")
    assert timed._binding is not None and timed.run() > 0
    bound = timed._binding.copy_outputs_to_cpu()
    expected = timed.session.run(None, feeds)
    assert len(bound) == len(expected) == len(probe.graph.outputs)
    for got, want in zip(bound, expected):
        np.testing.assert_array_equal(got, want)

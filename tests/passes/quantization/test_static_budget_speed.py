"""quantize-static's budget times its Conv layers as they run between int8 layers (``conv_probe``), so that it
keeps float the layers that buy accuracy cheaply, not the first ones a layer count would give up.

Nothing here times a real run except through an injected ``interleaved_times``; the probes themselves are built
and handed to ONNX Runtime to see which kernels it makes of them.
"""

from __future__ import annotations

import dataclasses

import pytest

from optimizer.accuracy import AccuracyBudget
from passes.quantization import _base as quantization_module
from passes.quantization import _layer_speed
from passes.quantization._layer_speed import FLOAT, ConvShape, LayerSpeeds, conv_probe_names, probe_copies
from passes.quantization.static import StaticQuantizationPass
from tests.passes.quantization.conftest import ort_op_counts
from tests.passes.quantization.test_static_cnn import CHANNELS, EXPANDED, _images, mobile_net

_REAL_TIME = LayerSpeeds._time  # the conftest replaces it by a cost model in every test
_DEPTHWISE = ConvShape(1, 16, (8, 8), 16, (3, 3), (("group", 16), ("pads", (1, 1, 1, 1))), True)


def test_a_conv_layer_is_timed_at_one_samples_input_with_its_own_attributes():
    model = mobile_net()
    quantization = StaticQuantizationPass(samples=_images(8, 0), method="minmax")
    calls = []

    def measure(shape, builders):
        calls.append(shape)
        return {form: shape.macs * (1.0 if form == FLOAT else 0.5) for form in builders}

    quantization.layer_speeds = LayerSpeeds(path=None, measure=measure)
    from passes._layers import find_layers
    from passes.quantization._base import _sample_input_shapes

    layers = find_layers(model.graph, ("conv",))[0]
    batches = [_images(4, 1)]
    quantization.prepare(model, layers, batches)  # calibrates, and learns which tensors every int8 layer requantizes
    shapes = {
        layer.name: quantization.speed_shape(
            layer, *_sample_input_shapes(model, [layer], batches)[layer.activation.name]
        )
        for layer in layers
    }
    depthwise = shapes["b1_depthwise"]
    assert depthwise == ConvShape(
        batch=1,
        c=EXPANDED,
        spatial=(16, 16),
        m=EXPANDED,
        kernel=(3, 3),
        attributes=(("group", EXPANDED), ("pads", (1, 1, 1, 1))),
        bias=True,
        quantized_input=True,  # the expand's requantized ReLU6
        quantized_output=True,  # read by the int8 project alone
    )
    assert shapes["stem"].c == 3 and shapes["stem"].m == CHANNELS and shapes["b1_project"].kernel == (1, 1)
    # The stem reads the float image; its ReLU6 is read by an int8 Conv and a requantized residual Add.
    assert not shapes["stem"].quantized_input and shapes["stem"].quantized_output
    assert str(depthwise) == "Conv (uint8 in, uint8 out) 1x16x16x16 -> 16 kernel 3x3 group=16 pads=(1, 1, 1, 1)"


def test_the_int8_probe_runs_as_qlinearconv_and_the_float_one_stays_float_in_onnxruntime():
    quantization = StaticQuantizationPass(samples=_images(8, 0))
    copies = probe_copies(_DEPTHWISE)
    assert copies > 1 and len(conv_probe_names(_DEPTHWISE)) == copies
    int8 = ort_op_counts(quantization._layer_model(_DEPTHWISE, "int8"))
    assert int8["QLinearConv"] == copies and int8["DequantizeLinear"] == 0 and int8["QuantizeLinear"] == 0
    floating = ort_op_counts(quantization._layer_model(_DEPTHWISE, FLOAT))
    # Float between int8 neighbours: its input dequantized, its output quantized, its weight float.
    assert floating["QLinearConv"] == 0 and floating["Conv"] == copies
    assert floating["DequantizeLinear"] == copies and floating["QuantizeLinear"] == copies


def test_a_conv_between_float_ops_pays_its_conversions_in_int8_and_none_in_float():
    # A stem reading the image, a Conv before a HardSwish: int8 quantizes its input and dequantizes its output.
    quantization = StaticQuantizationPass(samples=_images(8, 0))
    shape = dataclasses.replace(_DEPTHWISE, quantized_input=False, quantized_output=False)
    copies = probe_copies(shape)
    int8 = ort_op_counts(quantization._layer_model(shape, "int8"))
    assert int8["QLinearConv"] == copies and int8["QuantizeLinear"] == copies and int8["DequantizeLinear"] == copies
    floating = ort_op_counts(quantization._layer_model(shape, FLOAT))
    assert floating["QLinearConv"] == 0 and floating["QuantizeLinear"] == 0 and floating["DequantizeLinear"] == 0
    assert str(shape).startswith("Conv (float in, float out) ")


def test_a_conv_probe_is_timed_on_uint8_inputs_and_divided_by_its_copies(monkeypatch, tmp_path):
    monkeypatch.setattr(_layer_speed.LayerSpeeds, "_time", _REAL_TIME)
    seen = []

    def pairs(before, after, **plan):
        seen.append(sorted({str(array.dtype) for array in before.feeds.values()}))
        return [0.02] * 3, [0.01] * 3

    monkeypatch.setattr(_layer_speed, "interleaved_times", pairs)
    quantization = StaticQuantizationPass(samples=_images(8, 0))
    speeds = LayerSpeeds(threads=1, path=tmp_path / "c.json")
    form = quantization.speed_form("int8")
    times = speeds.seconds(
        _DEPTHWISE,
        {
            FLOAT: lambda: quantization._layer_model(_DEPTHWISE, FLOAT),
            form: lambda: quantization._layer_model(_DEPTHWISE, "int8"),
        },
    )
    assert seen == [["uint8"]]
    copies = probe_copies(_DEPTHWISE)
    assert times[FLOAT] == pytest.approx(0.02 / copies) and times[form] == pytest.approx(0.01 / copies)


def test_the_budget_gives_up_the_layers_whose_int8_saves_nothing_before_the_one_that_saves_most(tmp_path):
    # Timed so that only the stem gains from int8 (a tenth of its float time) and every other Conv's int8 form is
    # as slow as its float one: the budget floats those first, whatever they cost in accuracy, and keeps the stem
    # int8. Counted instead (every layer kept float costing the same), the ranking is by accuracy alone.
    def measure(shape, builders):
        fast = shape.c == 3
        return {form: float(shape.macs) * (0.1 if fast and form != FLOAT else 1.0) for form in builders}

    quantization = StaticQuantizationPass(
        samples=_images(48, 0),
        method="minmax",
        budget=AccuracyBudget(min_cosine=0.999999),  # past every mix with an int8 layer: the whole path is tried
        layer_speeds=LayerSpeeds(path=tmp_path / "s.json", measure=measure),
    )
    result = quantization(mobile_net())
    notes = " ".join(result.notes)
    assert "budget: latency of 7 layers (4 shapes) measured on this machine" in notes
    others = {"b1_expand", "b1_depthwise", "b1_project", "b2_expand", "b2_depthwise", "b2_project"}
    points = [dict(point.changes) for point in quantization.frontier]
    assert len(points) > 2
    for changed in points:
        assert "stem" not in changed or others <= set(changed), changed
    assert set(points[-1]) == others  # the stem is the last layer the path gives up
    assert "of the saving kept" in notes  # the frontier in milliseconds, not in layers


@pytest.mark.parametrize(("ratio", "upper"), [(0.8, 0.85), (0.97, 1.01), (1.05, 1.1)])
def test_a_budgeted_static_model_is_kept_only_if_it_runs_surely_faster_than_the_float_one_as_a_whole(
    monkeypatch, ratio, upper
):
    # Layers timed one by one miss the conversions between an int8 layer and a float one; the whole model decides,
    # and one within the timing's noise of float (its confidence interval reaching 1) is not kept.
    monkeypatch.setattr(LayerSpeeds, "_models", lambda self, before, after, feeds: (ratio, upper, 40))
    quantization = StaticQuantizationPass(
        samples=_images(48, 0), method="minmax", budget=AccuracyBudget(min_cosine=0.9)
    )
    model = mobile_net()
    result = quantization(model)
    notes = " ".join(result.notes)
    if upper < 1:
        assert result.modified and quantization.quantized
        assert (
            "the model runs 0.80x the float model's latency here at one sample (whole models, 40 interleaved" in notes
        )
        assert "95 % CI up to 0.85x" in notes
    else:
        assert not result.modified and not quantization.quantized and quantization.schemes == {}
        assert f"runs {ratio:.2f}x the float model's latency here" in notes and "model left float" in notes
        assert set(quantization.kept_float) >= {"stem", "b1_expand", "b2_project"}
        assert "int8 does not pay on this machine" in result.refusals[0]  # the decline leads (--strict names it)


def test_a_model_that_fixes_its_batch_is_timed_whole_at_that_batch(monkeypatch):
    import onnx

    seen = []

    def models(self, before, after, feeds):
        seen.append({name: array.shape for name, array in feeds.items()})
        return 0.5, 0.55, 40

    monkeypatch.setattr(LayerSpeeds, "_models", models)
    proto = onnx.shape_inference.infer_shapes(__import__("onnx_ir").to_proto(mobile_net()))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    proto.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 4
    model = __import__("onnx_ir").from_proto(proto)
    quantization = StaticQuantizationPass(
        samples=_images(16, 0), method="minmax", budget=AccuracyBudget(min_cosine=0.9)
    )
    result = quantization(model)
    assert result.modified and seen == [{"x": (4, 3, 16, 16)}]
    assert "at its fixed batch of 4" in " ".join(result.notes)


def _slow_stem(shape, builders):
    """The stem's int8 form (3 input channels) times slower than its float one; every other Conv's twice as fast."""
    slow = shape.c == 3
    return {form: float(shape.macs) * (1.0 if form == FLOAT else 1.3 if slow else 0.5) for form in builders}


def _stem_is_float(model) -> bool:
    return _reads_float(next(node for node in model.graph if node.name == "stem"))


def _budgeted(tmp_path, measure, **options) -> StaticQuantizationPass:
    """quantize-static at ``--min-cosine 0.9`` on 48 test images, its layers timed by ``measure``."""
    return StaticQuantizationPass(
        samples=_images(48, 0),
        method="minmax",
        budget=AccuracyBudget(min_cosine=0.9),
        layer_speeds=LayerSpeeds(path=tmp_path / "s.json", measure=measure),
        **options,
    )


def _whole_models(monkeypatch, ratio, seen_of=_stem_is_float) -> list:
    """Whole models timed as ``ratio(seen)`` (ratio, CI upper end, pairs), where ``seen = seen_of(after)``; the
    list of what each timed model was seen as."""
    seen = []

    def models(self, before, after, feeds):
        seen.append(seen_of(after))
        return ratio(seen[-1])

    monkeypatch.setattr(LayerSpeeds, "_models", models)
    return seen


def test_a_budget_all_int8_meets_keeps_its_slow_layers_float_when_that_makes_the_whole_model_faster(
    monkeypatch, tmp_path
):
    # Every layer int8 meets a loose budget but runs slower than float as a whole; the stem, timed slower in int8
    # than in float, is given up too and that model runs faster: it is kept, not the whole pass declined.
    seen = _whole_models(monkeypatch, lambda stem_float: (0.8, 0.86, 40) if stem_float else (1.02, 1.05, 40))
    quantization = _budgeted(tmp_path, _slow_stem)
    model = mobile_net()
    result = quantization(model)
    notes = " ".join(result.notes)
    assert seen == [False, True]
    assert result.modified and "stem" in quantization.kept_float and "stem" not in quantization.quantized
    assert set(quantization.quantized) >= {"b1_expand", "b1_depthwise", "b2_project"}
    assert _stem_is_float(model)
    assert "runs 1.02x the float model's latency" in notes
    assert "Retried with the 1 layer whose int8 kernel timed no faster than float kept float too (stem)" in notes
    assert "it runs 0.80x the float model's latency" in notes
    assert "frontier, retried: 1 float (stem): cosine" in notes
    assert "ms less than the default)" in notes and "% of the saving kept" not in notes.split("frontier, retried")[1]
    assert dict(quantization.frontier[-1].changes) == {"stem": FLOAT}
    assert any("int8 kernel timed no faster than float here" in reason for reason in result.refusals)
    assert quantization.drift is not None and quantization.budget.met(quantization.drift)


def test_the_pass_declines_when_its_slow_layers_kept_float_do_not_make_it_faster_either(monkeypatch, tmp_path):
    seen = _whole_models(monkeypatch, lambda stem_float: (1.02, 1.05, 40))
    quantization = _budgeted(tmp_path, _slow_stem)
    result = quantization(mobile_net())
    notes = " ".join(result.notes)
    assert seen == [False, True]
    assert not result.modified and not quantization.quantized and quantization.schemes == {}
    assert "kept float too (stem)" in notes and "int8 does not pay on this machine; model left float" in notes
    assert "int8 does not pay on this machine" in result.refusals[0]


def test_no_second_model_is_timed_where_no_layer_timed_slower_in_int8(monkeypatch, tmp_path):
    seen = _whole_models(monkeypatch, lambda stem_float: (1.02, 1.05, 40))
    quantization = _budgeted(
        tmp_path, lambda shape, builders: {form: 1.0 if form == FLOAT else 0.5 for form in builders}
    )
    result = quantization(mobile_net())
    assert seen == [False] and not result.modified
    assert "kept float too" not in " ".join(result.notes)


def test_slow_layers_are_not_kept_float_where_that_would_miss_the_budget(monkeypatch, tmp_path):
    # Floating a layer normally only helps accuracy; where it does not (here: the trial made to miss), the pass
    # declines and says why rather than ship a model that misses its budget.
    from optimizer.accuracy import Drift

    seen = _whole_models(monkeypatch, lambda stem_float: (1.02, 1.05, 40))
    real_trial = StaticQuantizationPass._trial

    def trial(self, model, schemes, batches, reference):
        drift = real_trial(self, model, schemes, batches, reference)
        if schemes.get("stem") == FLOAT and any(scheme != FLOAT for scheme in schemes.values()):
            return Drift(cosine=0.5, max_error=drift.max_error, worst_cosine=0.5)
        return drift

    monkeypatch.setattr(StaticQuantizationPass, "_trial", trial)
    quantization = _budgeted(tmp_path, _slow_stem)
    result = quantization(mobile_net())
    notes = " ".join(result.notes)
    assert seen == [False] and not result.modified
    assert "Not retried with the 1 layer timed no faster than float kept float too: that misses the budget" in notes


def test_a_point_the_search_chose_is_retried_with_its_slow_layers_float_too(monkeypatch, tmp_path):
    # Every layer int8 misses the budget here, so the search runs; its path floats the layers whose int8 saves
    # nothing first (the stem and both depthwise Convs, timed slower in int8), and it stops after the first
    # step. The two slow layers still int8 there are kept float by the retry, from the times the search measured.
    def slow(shape) -> bool:
        return shape.c == 3 or dict(shape.attributes).get("group", 1) > 1

    timed = []

    def measure(shape, builders):
        timed.append(shape)
        return {form: float(shape.macs) * (1.0 if form == FLOAT else 1.3 if slow(shape) else 0.5) for form in builders}

    slow_names = {"stem", "b1_depthwise", "b2_depthwise"}
    seen = _whole_models(
        monkeypatch,
        lambda floated: (0.8, 0.86, 40) if floated == slow_names else (1.02, 1.05, 40),
        lambda after: {node.name for node in after.graph if node.name in slow_names and _reads_float(node)},
    )

    def first_step(attempt, length, exhaustive):
        assert attempt(1)
        return 1

    real_trial = StaticQuantizationPass._trial
    calls = []

    def trial(self, model, schemes, batches, reference):
        calls.append(dict(schemes))
        drift = real_trial(self, model, schemes, batches, reference)
        if len(calls) == 1:  # every layer int8: made to miss, so that the budget searches
            return type(drift)(cosine=0.5, max_error=drift.max_error, worst_cosine=0.5)
        return drift

    monkeypatch.setattr(quantization_module, "_shortest_prefix", first_step)
    monkeypatch.setattr(StaticQuantizationPass, "_trial", trial)
    quantization = _budgeted(tmp_path, measure)
    model = mobile_net()
    result = quantization(model)
    notes = " ".join(result.notes)
    chosen = dict(quantization.frontier[1].changes)
    assert len(chosen) == 1 and set(chosen) <= slow_names and set(chosen.values()) == {FLOAT}
    assert len(seen) == 2 and seen[0] == set(chosen) and seen[1] == slow_names
    assert result.modified and slow_names <= set(quantization.kept_float)
    assert len(quantization.kept_float) == len(set(quantization.kept_float))
    assert {node.name for node in model.graph if node.name in slow_names and _reads_float(node)} == slow_names
    assert dict(quantization.frontier[-1].changes) == dict.fromkeys(slow_names, FLOAT)
    assert "Retried with the 2 layers whose int8 kernel timed no faster than float kept float too" in notes
    assert len(timed) == len(set(timed))  # the retry read the search's times: no layer shape timed twice


def _reads_float(node) -> bool:
    """Whether a Conv is float: its weight a float constant, not an int8 one dequantized (a float layer may still
    read its input through a DequantizeLinear: the per-channel one ``_keep_float_layers_float`` gives it)."""
    producer = node.inputs[1].producer()
    return producer is None or producer.op_type != "DequantizeLinear"


def test_a_retried_point_faster_than_float_where_every_layer_int8_is_slower_says_so(monkeypatch, tmp_path):
    # The depthwise Convs' int8 timed far slower than float: every layer int8 sums above float, and the retried
    # point below both. Its frontier note says how much less than each, not "the default scheme saves nothing".
    def measure(shape, builders):
        slow = dict(shape.attributes).get("group", 1) > 1
        return {form: 1e-6 * (1.0 if form == FLOAT else 50.0 if slow else 0.5) for form in builders}

    ratios = iter([(1.3, 1.35, 40), (0.8, 0.85, 40)])
    monkeypatch.setattr(LayerSpeeds, "_models", lambda self, before, after, feeds: next(ratios))
    quantization = _budgeted(tmp_path, measure)
    result = quantization(mobile_net())
    note = next(note for note in result.notes if note.startswith("frontier, retried"))
    assert result.modified
    assert "ms less than the default and" in note and "ms less than float)" in note, note
    assert "saves nothing" not in note


@pytest.mark.parametrize(
    ("seconds", "float_seconds", "default_seconds", "said"),
    [
        (3e-3, 4e-3, 2e-3, "50% of the saving kept"),  # between the default and float
        (5e-3, 4e-3, 2e-3, "1 ms more than float"),  # a scheme slower than float, taken for accuracy
        (1.5e-3, 4e-3, 2e-3, "0.5 ms less than the default)"),  # slow layers float: below the default
        (3e-3, 4e-3, 5e-3, "2 ms less than the default and 1 ms less than float"),  # the default slower than float
        (5e-3, 4e-3, 5e-3, "the default scheme saves nothing here"),
    ],
)
def test_a_frontier_point_is_described_against_float_and_the_default(seconds, float_seconds, default_seconds, said):
    from passes.quantization._base import FrontierPoint

    line = FrontierPoint((("a", FLOAT),), "cosine 0.99", seconds).describe(float_seconds, default_seconds, True)
    assert said in line, line
    assert "-" not in line.split("layers ")[1], line  # no negative share or saving


def test_the_whole_model_notes_count_the_layers_kept_float_before_the_budget(monkeypatch, tmp_path):
    # --exclude keeps a layer float before the budget; the whole-model note counts it as the closing note does.
    monkeypatch.setattr(LayerSpeeds, "_models", lambda self, before, after, feeds: (0.8, 0.85, 40))
    quantization = _budgeted(tmp_path, _slow_stem, exclude=("b1_expand",))
    result = quantization(mobile_net())
    notes = " ".join(result.notes)
    int8, floats = len(quantization.quantized), len(quantization.kept_float)
    assert floats >= 1 and f"budget: with {int8} layers int8, {floats} float the model runs" in notes, notes
    assert f"{int8} layers int8, {floats} float:" in notes

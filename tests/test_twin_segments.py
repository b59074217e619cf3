"""The twin check segment by segment (``Twin.checkpoints``): exact where the model is, and still
catching a wrong realization in any one layer, with no cascade from the layers before it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.inputs import make_inputs
from optimizer.runtime import collect_values, run_model
from optimizer.verify import Verifier, _computed, _cut_at, _segment_checkpoints
from passes.quantization.dynamic import DynamicQuantizationPass
from passes.quantization.static import StaticQuantizationPass
from tests.passes.quantization.graphs import convnet, mlp, samples
from tests.passes.quantization.test_smoothing import _pre_norm_block, _x
from tests.passes.quantization.test_twins import _scaled

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


def _quantized(model: ir.Model, calibration, **options):
    result = DynamicQuantizationPass(samples=calibration, quantize_outputs=True, **options)(model.clone())
    assert result.modified and result.twin.checkpoints
    return result


def test_a_model_cut_at_its_checkpoints_and_fed_its_own_values_computes_the_same():
    model = mlp(head=False)
    feeds = samples(model, 3, seed=5)
    result = _quantized(model, samples(model, 16))
    names = _segment_checkpoints(result.model, result.twin, model)
    assert names
    whole = run_model(model, feeds)
    values = collect_values(model, names, [feeds])[0]
    cut = run_model(_cut_at(model, names, values), {**feeds, **values})
    for name in names:
        np.testing.assert_array_equal(cut[_computed(name)], values[name])
    for name, array in whole.items():
        np.testing.assert_array_equal(cut[name], array)
    # Fed other values, the segment after the cut computes from them, not from upstream.
    shifted = run_model(_cut_at(model, names, values), {**feeds, **{n: v + 1 for n, v in values.items()}})
    assert not np.array_equal(shifted[next(iter(whole))], whole[next(iter(whole))])


@pytest.mark.parametrize("case", ["mlp", "pre-norm", "per-row"])
def test_a_correct_int8_result_passes_segment_by_segment_and_a_doubled_scale_fails(case):
    if case == "pre-norm":
        model, calibration, feeds, layer, options = _pre_norm_block(), _x(16), _x(4), "k_proj", {}
    else:
        model = mlp(head=False)
        calibration, feeds, layer = samples(model, 16), samples(model, 4, seed=5), "up"
        options = {"activation_scale": "row"} if case == "per-row" else {}
    result = _quantized(model, calibration, **options)
    verifier = Verifier(model, [feeds])
    verdict = verifier._check_twin_by_segment(result.model, result.twin, "end to end: (forced)")
    assert verdict.ok, verdict.first_failure
    assert verdict.twin_segments and verdict.twin_segments >= 2
    broken = _scaled(result.model, f"{layer}.weight_scale")
    verdict = verifier._check_twin_by_segment(broken, result.twin, "end to end: (forced)")
    assert not verdict.ok and "segment by segment" in verdict.first_failure


def test_static_conv_chains_are_not_cut_inside_their_integer_units():
    model = convnet()
    result = StaticQuantizationPass(samples=samples(model, 16), quantize_outputs=True)(model.clone())
    names = _segment_checkpoints(result.model, result.twin, model)
    produced = {v.name: v for node in result.model.graph for v in node.outputs}
    for name in names:
        producer = produced[name].producer()
        reads_dq = any(
            v is not None and v.producer() is not None and v.producer().op_type == "DequantizeLinear"
            for v in producer.inputs
        )
        assert not (reads_dq and any(u.op_type == "QuantizeLinear" for u, _ in produced[name].uses()))


def test_a_real_decoder_fixture_passes_segment_by_segment_and_one_wrong_layer_fails():
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    feeds = make_inputs(model, seed=3)
    calibration = {k: np.concatenate([make_inputs(model, seed=s)[k] for s in (4, 5)]) for k in feeds}
    result = DynamicQuantizationPass(samples=calibration)(model.clone())
    assert result.modified
    verifier = Verifier(model, [feeds])
    verdict = verifier._check_twin_by_segment(result.model, result.twin, "end to end: (forced)")
    assert verdict.ok, verdict.first_failure
    scales = [name for name in result.model.graph.initializers if name.endswith(".weight_scale")]
    broken = _scaled(result.model, scales[len(scales) // 2], 1.5)
    assert not verifier._check_twin_by_segment(broken, result.twin, "end to end: (forced)").ok

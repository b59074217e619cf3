"""The segment check cuts a static int8 result at its int8 tensors where the float side is fused into an integer
kernel (``optimizer.verify._QuantizedCut``): every kernel ONNX Runtime deploys stays, the segments get short, and a
wrong realization between two such cuts still fails."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.runtime import collect_values
from optimizer.verify import Verifier, _checkpoint_cuts, _cut_at, _segment_checkpoints
from passes.quantization.static import StaticQuantizationPass
from tests.helpers import without_layer_probe
from tests.passes.quantization.graphs import convnet, samples
from tests.test_review_segments import _deployed_ops


def _static(model: ir.Model):
    result = StaticQuantizationPass(samples=samples(model, 16), quantize_outputs=True)(model.clone())
    assert result.modified
    return result


def test_a_fused_checkpoint_is_cut_at_its_int8_tensor_keeping_every_kernel(tmp_path):
    model = convnet()
    result = _static(model)
    names, quantized = _checkpoint_cuts(result.model, result.twin, model)
    # The Relu outputs are the float sides of fused QLinearConv units: no float cut there, an int8 one instead.
    assert quantized and not set(quantized) & set(_segment_checkpoints(result.model, result.twin, model))
    twin_names = [cut.twin_name for cut in quantized.values()]
    floats = [name for name in names if name not in quantized]
    values = collect_values(result.twin.model, [*floats, *twin_names], [samples(model, 2, seed=3)])[0]
    cut = _cut_at(
        result.model,
        [quantized[name].result_name if name in quantized else name for name in names],
        {**values, **{cut.result_name: values[cut.twin_name] for cut in quantized.values()}},
    )
    deployed = _deployed_ops(result.model, tmp_path / "deployed.onnx")
    assert deployed.count("QLinearConv") == 2
    assert _deployed_ops(cut, tmp_path / "cut.onnx") == deployed


def test_a_correct_static_result_passes_between_its_int8_cuts():
    model = convnet()
    result = _static(model)
    verifier = Verifier(model, [samples(model, 4, seed=5)], samples=samples(model, 16))
    verdict = verifier._check_twin_by_segment(result.model, result.twin, "end to end: (forced)")
    assert verdict.ok, verdict.first_failure
    names, quantized = _checkpoint_cuts(result.model, result.twin, model)
    assert verdict.twin_segments == len(names) + 1 and quantized


def _scaled_dequantize(model: ir.Model, quantized_name: str, factor: float) -> ir.Model:
    """``model`` with the DequantizeLinear that reads ``quantized_name`` scaled by ``factor`` (its own scale
    constant, so the QuantizeLinear before it keeps the right one): the next layer reads values ``factor`` off."""
    model = model.clone()
    reader = next(
        node for node in model.graph if node.op_type == "DequantizeLinear" and node.inputs[0].name == quantized_name
    )
    scale = ir.convenience.get_const_tensor(reader.inputs[1]).numpy() * np.float32(factor)
    constant = ir.Value(name=f"{quantized_name}.review_scale", const_value=ir.tensor(scale.astype(np.float32)))
    model.graph.register_initializer(constant)
    reader.replace_input_with(1, constant)
    return model


@pytest.mark.parametrize("factor", [1.02, 2.0])
def test_a_scale_off_after_an_int8_cut_fails_segment_by_segment(factor, monkeypatch):
    model = convnet()
    result = _static(model)
    names, quantized = _checkpoint_cuts(result.model, result.twin, model)
    first = quantized[names[0]] if names[0] in quantized else next(iter(quantized.values()))
    broken = _scaled_dequantize(result.model, first.result_name, factor)
    verifier = Verifier(model, [samples(model, 4, seed=5)], samples=samples(model, 16))
    without_layer_probe(monkeypatch)
    verdict = verifier.check_twin(broken, result.twin)
    assert not verdict.ok

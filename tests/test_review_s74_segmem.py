"""Review s74 (segmem): the memory of verification's twin check by segment (``Verifier._check_twin_by_segment``).

On a MobileNetV2-like CNN at 16 images of 3x256x320 the check peaked at 3.9 GB (hunt 9, CenterFace's static int8): a
batch's int8 checkpoints were dequantized all at once, the twin's and the result's (every one of them alive beside the
float checkpoints), and the float model's run for the row rule returned every checkpoint, not the ones it reads. Now
each int8 checkpoint is dequantized as it is read, and that run returns only the outputs the row rule holds; the
verdicts are the same (``tests/test_quantized_cuts.py``, ``tests/test_twin_segments.py``)."""

from __future__ import annotations

import weakref

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optimizer import verify
from optimizer.runtime import inference_session, run_session
from optimizer.verify import Verifier, _checkpoint_cuts
from passes.quantization.static import StaticQuantizationPass
from tests.passes.quantization.graphs import _model, samples, weights
from tests.test_quantized_cuts import _scaled_dequantize


def _chain(convs: int = 4, channels: int = 8) -> ir.Model:
    """``x [B, 3, 16, 16]`` → (Conv → Relu) x ``convs`` → Conv: an int8 checkpoint after each Relu."""
    nodes, init, last = [], [], "x"
    for index in range(convs + 1):
        inputs = 3 if index == 0 else channels
        nodes.append(
            helper.make_node("Conv", [last, f"w{index}", f"b{index}"], [f"c{index}"], pads=[1] * 4, kernel_shape=[3, 3])
        )
        init += [(f"w{index}", weights(channels, inputs, 3, 3, seed=20 + index, scale=0.25))]
        init += [(f"b{index}", weights(channels, seed=40 + index))]
        last = f"c{index}"
        if index < convs:
            nodes.append(helper.make_node("Relu", [last], [f"r{index}"]))
            last = f"r{index}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 16, 16])
    y = helper.make_tensor_value_info(last, TensorProto.FLOAT, ["B", channels, 16, 16])
    return _model(nodes, [x], [y], init)


@pytest.fixture(scope="module")
def static_result():
    model = _chain()
    result = StaticQuantizationPass(samples=samples(model, 16), quantize_outputs=True)(model.clone())
    assert result.modified
    return model, result


def test_the_segment_check_holds_no_batch_of_dequantized_int8_checkpoints_at_once(static_result, monkeypatch):
    model, result = static_result
    _, quantized = _checkpoint_cuts(result.model, result.twin, model)
    assert len(quantized) >= 2  # else one at a time is all there is
    alive: list[weakref.ref] = []
    most = [0]
    dequantize = verify._QuantizedCut.dequantize

    def spy(self, values):
        array = dequantize(self, values)
        alive[:] = [ref for ref in alive if ref() is not None] + [weakref.ref(array)]
        most[0] = max(most[0], len(alive))
        return array

    monkeypatch.setattr(verify._QuantizedCut, "dequantize", spy)
    verifier = Verifier(model, [samples(model, 4, seed=5)], samples=samples(model, 16))
    verdict = verifier._check_twin_by_segment(result.model, result.twin, "end to end: (forced)")
    assert verdict.ok, verdict.first_failure
    # One checkpoint's twin values and the result's at a time (before: every int8 checkpoint's, twice).
    assert 0 < most[0] <= 2, most[0]


def test_a_session_run_returns_only_the_outputs_named(static_result):
    model, _ = static_result
    with inference_session(model) as session:
        names = [meta.name for meta in session.get_outputs()]
        feeds = samples(model, 2, seed=7)
        whole = run_session(session, feeds)
        some = run_session(session, feeds, {names[0]})
    assert list(some) == [names[0]]
    np.testing.assert_array_equal(some[names[0]], whole[names[0]])


def test_the_row_rule_runs_the_float_model_for_the_checkpoints_it_holds_alone(static_result, monkeypatch):
    model, result = static_result
    names, quantized = _checkpoint_cuts(result.model, result.twin, model)
    broken = _scaled_dequantize(result.model, quantized[names[-1]].result_name, 1.02)
    runs = []  # per run in the check: (outputs the session has, outputs returned)
    run = verify.run_session

    def spy(session, inputs, *names):
        outputs = run(session, inputs, *names)
        runs.append((len(session.get_outputs()), len(outputs)))
        return outputs

    monkeypatch.setattr(verify, "run_session", spy)
    verifier = Verifier(model, [samples(model, 4, seed=5)], samples=samples(model, 16))
    verdict = verifier._check_twin_by_segment(broken, result.twin, "end to end: (forced)")
    assert not verdict.ok
    # The row rule's run of the float model returned the outputs that missed, not every checkpoint.
    assert any(returned < held for held, returned in runs), runs

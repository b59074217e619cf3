"""An exact rewrite of a deep model checked segment by segment (``Verifier.check`` with a ``base``):
float rounding that later layers amplify past the tolerance passes; a rewrite that is wrong in
one layer, or in the graph between the rewritten regions, still fails."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.options import Options
from optimizer.pipeline import _run_one
from optimizer.protocol import PassContext, PassSpec
from optimizer.runtime import run_model
from optimizer.verify import VerificationResult, Verifier

LAYERS, WIDTH, GAIN = 24, 32, 2.5


def _weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32) for _ in range(LAYERS)]


def _chain(
    weights: list[np.ndarray],
    split: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    *,
    gain: float = GAIN,
    activation: str = "Tanh",
) -> ir.Model:
    """``h = tanh(GAIN * h @ W_i)`` (or another ``activation`` and ``gain``), one layer per weight, in the
    weights' dtype: chaotic, so a last-bit difference in one layer grows through the rest. Layers in
    ``split`` compute ``h @ A + h @ B`` (new nodes) under the same tensor name."""
    dtype, width = ir.DataType.from_numpy(weights[0].dtype), weights[0].shape[0]
    x = ir.Value(name="x", type=ir.TensorType(dtype), shape=ir.Shape(["batch", width]))
    gain = ir.Value(name="gain", const_value=ir.tensor(np.array(gain, weights[0].dtype)))
    graph = ir.Graph([x], [], nodes=[], initializers=[gain], opset_imports={"": 18}, name="chain")
    h = x
    for i, weight in enumerate(weights):
        if split and i in split:
            parts = []
            for tag, part in zip("ab", split[i]):
                w = ir.Value(name=f"w{i}{tag}", const_value=ir.tensor(part))
                graph.register_initializer(w)
                node = ir.Node("", "MatMul", [h, w], name=f"mm{i}{tag}")
                graph.append(node)
                parts.append(node.outputs[0])
            product = ir.Node("", "Add", parts, name=f"sum{i}")
        else:
            w = ir.Value(name=f"w{i}", const_value=ir.tensor(weight))
            graph.register_initializer(w)
            product = ir.Node("", "MatMul", [h, w], name=f"mm{i}")
        graph.append(product)
        product.outputs[0].name = f"product{i}"
        scaled = ir.Node("", "Mul", [product.outputs[0], gain], name=f"scale{i}")
        act = ir.Node("", activation, [scaled.outputs[0]], name=f"{activation.lower()}{i}")
        graph.extend([scaled, act])
        scaled.outputs[0].name, act.outputs[0].name = f"scaled{i}", f"h{i}"
        h = act.outputs[0]
    graph.outputs.append(h)
    h.type, h.shape = ir.TensorType(dtype), ir.Shape(["batch", width])
    return ir.Model(graph, ir_version=10)


def _exact_split(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``A + B == weight`` exactly in float32: B keeps a few bits, A the rest."""
    coarse = np.round(weight * 8) / 8
    return (weight - coarse).astype(np.float32), coarse.astype(np.float32)


def _inputs() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(7).standard_normal((4, WIDTH)).astype(np.float32)}


def _split_everywhere(weights, wrong_layer: int | None = None, factor: float = 1.0):
    split = {i: _exact_split(w) for i, w in enumerate(weights)}
    for i, (a, b) in split.items():
        np.testing.assert_array_equal(a + b, weights[i])
    if wrong_layer is not None:
        a, b = split[wrong_layer]
        split[wrong_layer] = ((a * factor).astype(np.float32), b)
    return _chain(weights, split)


def test_the_exact_split_misses_end_to_end_and_passes_segment_by_segment():
    weights = _weights()
    original, candidate = _chain(weights), _split_everywhere(weights)
    verifier = Verifier(original, [_inputs()])
    # The premise: end to end, rounding amplified through the chain is past the tolerance.
    assert not verifier.check(candidate).ok
    verdict = verifier.check(candidate, by_segment=True)
    assert verdict.ok, verdict.first_failure
    # Cut at each layer's input (but the graph input), its product and the product's reader (the Mul).
    assert verdict.segments == LAYERS * 3 and verdict.segments_nodes == LAYERS * 3
    assert "output 'h" in verdict.end_to_end


@pytest.mark.parametrize("layer", [0, LAYERS // 2, LAYERS - 1])
def test_a_rewrite_wrong_in_one_layer_fails_its_segment(layer):
    weights = _weights()
    original = _chain(weights)
    broken = _split_everywhere(weights, wrong_layer=layer, factor=1.001)
    verifier = Verifier(original, [_inputs()])
    assert not verifier.check(broken, by_segment=True).ok
    # Early, the chain amplifies the error past SEGMENT_CAP end to end and that alone rolls it back;
    # the segment check, run regardless, finds it in its own layer wherever it is.
    forced = VerificationResult(error="end to end: (forced)")
    verdict = verifier._check_exact_by_segment(broken, forced, "(forced)")
    assert not verdict.ok and "segment by segment" in verdict.first_failure
    assert f"product{layer}" in verdict.first_failure or layer == LAYERS - 1


def test_a_difference_past_the_cap_end_to_end_is_not_checked_by_segment():
    weights = _weights()
    original = _chain(weights)
    verdict = Verifier(original, [_inputs()]).check(
        _split_everywhere(weights, wrong_layer=0, factor=1.001), by_segment=True
    )
    assert not verdict.ok and "segment by segment" not in verdict.first_failure


def test_a_change_between_the_rewritten_regions_fails_too():
    weights = _weights()
    original = _chain(weights)
    candidate = _split_everywhere(weights)
    # An untouched node changed on the side: Tanh -> Sigmoid in one layer (no node added there).
    node = next(n for n in candidate.graph if n.name == "tanh5")
    node.op_type = "Sigmoid"
    verdict = Verifier(original, [_inputs()]).check(candidate, by_segment=True)
    assert not verdict.ok


def test_without_a_cut_the_end_to_end_failure_stands():
    weights = _weights()
    original = _chain(weights)
    verifier = Verifier(original, [_inputs()])
    # An exact rewrite whose nodes read and write only tensors the original does not compute: nowhere to cut.
    renamed = _split_everywhere(weights)
    for node in renamed.graph:
        for value in node.outputs:
            if not value.is_graph_output():
                value.name += "_renamed"
    verdict = verifier.check(renamed, by_segment=True)
    assert not verdict.ok and "segment by segment" not in verdict.first_failure


class _SplitPass(ir.passes.FunctionalPass):
    def __init__(self, weights, wrong: bool = False):
        super().__init__()
        self.weights, self.wrong = weights, wrong

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rewritten = _split_everywhere(self.weights, wrong_layer=4 if self.wrong else None, factor=1.001)
        return ir.passes.PassResult(rewritten, modified=True)


@pytest.mark.parametrize("wrong", [False, True])
def test_the_pipeline_keeps_a_segment_verified_rewrite_and_says_so(wrong):
    weights = _weights()
    original = _chain(weights)
    verifier = Verifier(original, [_inputs()])
    spec = PassSpec("split-matmuls", lambda context: _SplitPass(weights, wrong), "test")
    context = PassContext(Options())
    result, record = _run_one(original, len(list(original.graph)), spec, context, verifier)
    if wrong:
        assert record.status == "rolled back" and result is original
    else:
        assert record.status == "applied", record.detail
        assert any("verified segment by segment" in note for note in record.notes)
        np.testing.assert_allclose(run_model(result, _inputs())["h23"], run_model(original, _inputs())["h23"], atol=1)


def test_a_segment_check_that_would_not_fit_in_memory_is_not_started(monkeypatch):
    weights = _weights()
    original, candidate = _chain(weights), _split_everywhere(weights)
    verifier = Verifier(original, [_inputs()])
    monkeypatch.setattr("optimizer.verify.available_memory", lambda: 1024)
    verdict = verifier.check(candidate, by_segment=True)
    assert not verdict.ok
    assert "not checked segment by segment" in verdict.first_failure and "GB available" in verdict.first_failure
    monkeypatch.setattr("optimizer.verify.available_memory", lambda: None)  # unknown: checked
    assert verifier.check(candidate, by_segment=True).ok


def test_available_memory_is_read_where_the_system_says():
    from optimizer.runtime import available_memory

    memory = available_memory()
    if __import__("os").path.exists("/proc/meminfo"):
        assert isinstance(memory, int) and memory > 0
    else:
        assert memory is None

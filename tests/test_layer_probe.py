"""Each quantized layer run alone on probe rows no kernel rounds (``optimizer.layer_probe``): exact, so a weight's
scale a fraction of a percent off is rolled back wherever it acts, and no correct result is."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer import layer_probe
from optimizer.api import optimize, optimize_with_report
from passes.quantization import dynamic, int4, static
from passes.quantization.dynamic import DynamicQuantizationPass
from tests.helpers import FIXTURES
from tests.real_models import MINILM_MISSING, PPOCR_CLS, minilm_path, minilm_sentences, ppocr_lines

LLAMA = "llama_kv_legacy.onnx"
LLAMA_Q = "/model/model/layers.0/self_attn/q_proj/MatMul"
LLAMA_DOWN = "/model/model/layers.1/mlp/down_proj/MatMul"


def _record(report, prefix: str = "quantize"):
    return next(record for record in report.passes if record.name.startswith(prefix))


# -- the probe itself ------------------------------------------------------------------------


def test_probe_rows_put_each_channel_alone_at_the_activations_peak_then_one_negative_row_then_zero():
    example = np.array([[[0.5, -3.0, 1.0]], [[2.0, 0.0, 0.25]]], dtype=np.float32)
    rows = layer_probe.probe_rows(example)
    assert rows.shape == (1, 5, 3) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[0, :3], 3.0 * np.eye(3))
    np.testing.assert_array_equal(rows[0, 3], [-1.5, 0, 0])
    np.testing.assert_array_equal(rows[0, 4], np.zeros(3))
    chunk = layer_probe.probe_rows(example, 1, 1)  # channel 1 alone, its negative row too
    np.testing.assert_array_equal(chunk[0], [[0, 3.0, 0], [0, -1.5, 0], [0, 0, 0]])
    np.testing.assert_array_equal(layer_probe.probe_rows(example, 5, 2)[0, 0], [0, 3.0, 0])  # past K: the last 2
    assert layer_probe.probe_rows(np.ones((4,), np.float32)).shape == (6, 4)  # a vector's layer: rows too
    assert layer_probe.probe_rows(np.zeros((), np.float32)) is None
    assert layer_probe.probe_rows(np.zeros((2, 3), np.int64)) is None
    assert layer_probe.probe_rows(np.zeros((2, 3), np.float32))[0, 0] == 1.0  # all zero: unit rows


def _two_layers() -> ir.Model:
    """``y = x @ W + b`` (a function of x alone) and ``z = (x + mask) @ W`` (reads a second input)."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["b", "s", 4]))
    mask = ir.Value(name="mask", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["b", "s", 4]))
    weight = ir.Value(name="W", const_value=ir.tensor(np.arange(12, dtype=np.float32).reshape(4, 3)))
    bias = ir.Value(name="bias", const_value=ir.tensor(np.ones(3, dtype=np.float32)))
    product = ir.node("MatMul", [x, weight], name="mm")
    y = ir.node("Add", [product.outputs[0], bias], name="add")
    masked = ir.node("Add", [x, mask], name="masked")
    z = ir.node("MatMul", [masked.outputs[0], weight], name="mm2")
    for node, name in ((product, "p"), (y, "y"), (masked, "m"), (z, "z")):
        node.outputs[0].name = name
        node.outputs[0].dtype = ir.DataType.FLOAT
    graph = ir.Graph(
        [x, mask],
        [y.outputs[0], z.outputs[0]],
        nodes=[product, y, masked, z],
        initializers=[weight, bias],
        opset_imports={"": 17},
    )
    return ir.Model(graph, ir_version=8)


def test_probe_model_keeps_only_layers_computed_from_their_activation_and_constants():
    model = _two_layers()
    examples = {"x": np.ones((2, 5, 4), np.float32), "m": np.ones((2, 5, 4), np.float32)}
    probe, kept = layer_probe.probe_model(model, [("x", "y"), ("x", "z"), ("m", "z"), ("x", "absent")], examples)
    assert kept == [("x", "y"), ("m", "z")]  # z from x reads the mask; from its own activation m it does not
    assert [v.name for v in probe.graph.inputs] == ["x", "m"]
    assert [v.name for v in probe.graph.outputs] == ["y::graphopt_probed", "z::graphopt_probed"]
    assert sorted(node.name for node in probe.graph) == ["add", "mm", "mm2"]  # the mask's Add is gone
    assert model.graph.inputs[1].name == "mask" and len(list(model.graph)) == 4  # the model itself untouched


def _verdict(*chunks) -> str:
    columns = layer_probe._Columns(-1)
    for expected, actual in chunks:
        if failure := columns.add(expected, actual):
            return failure
    return columns.verdict()


def test_a_column_off_by_more_than_rounding_differs_and_rounding_does_not():
    expected = np.random.default_rng(0).standard_normal((1, 9, 6)).astype(np.float32)
    assert _verdict((expected, expected * np.float32(1 + 3e-7))) == ""
    off = expected.copy()
    off[0, 2, 4] *= np.float32(1.0002)  # one weight 0.02 % off
    assert "differs in column 4" in _verdict((expected, off))
    # Judged against the column's peak over every chunk: an exact zero in one chunk is no column of its own.
    zero, rounded = np.zeros((1, 1, 6), np.float32), np.full((1, 1, 6), 3e-8, np.float32)
    assert _verdict((zero, rounded), (expected, expected)) == ""
    assert "differs in column 4" in _verdict((zero, rounded), (expected, off))
    infinite = expected.copy()
    infinite[0, 0, 0] = np.inf
    assert "NaN or infinite" in _verdict((expected, infinite))
    assert "float64" in _verdict((expected, expected.astype(np.float64)))


def test_a_large_layer_is_probed_a_chunk_of_channels_at_a_time_with_the_same_verdict(monkeypatch):
    # A channel or two per run instead of all 64: the tamper (q_proj 0.3 % high) and the correct result alike.
    monkeypatch.setattr(layer_probe, "PROBE_BYTES", 2 * 4 * 3 * 1000)
    runs = []
    original = layer_probe.run_session
    monkeypatch.setattr(layer_probe, "run_session", lambda session, feeds: runs.append(1) or original(session, feeds))
    _, report = optimize_with_report(ir.load(FIXTURES / LLAMA), passes=["quantize-int4"], int4_accuracy_level=4)
    assert _record(report).status == "applied" and len(runs) > 20
    _scale_initializer(monkeypatch, int4.Int4QuantizationPass, "quantize_layer", LLAMA_Q, "scales", 1.003)
    _, report = optimize_with_report(ir.load(FIXTURES / LLAMA), passes=["quantize-int4"], int4_accuracy_level=4)
    assert "uses other weights than its twin's" in _record(report).detail


# -- through the pipeline --------------------------------------------------------------------


def change_initializer(monkeypatch, owner, function: str, node_name: str, initializer: str, change) -> None:
    """After ``owner.function`` writes ``node_name``'s layer, its ``initializer`` changed by ``change`` (a copy in,
    an array out); the twin keeps the pass's own values, as a packing or scale bug would leave them."""
    written = getattr(owner, function)

    def tampered(*args, **kwargs):
        outcome = written(*args, **kwargs)
        graph = next(a for a in args if isinstance(a, ir.Graph))
        layer = next(a for a in args if hasattr(a, "node") and hasattr(a, "activation"))
        if layer.node.name == node_name and getattr(args[0], "_probe", None) is None:
            value = graph.initializers[f"{node_name}.{initializer}"]
            value.const_value = ir.tensor(change(value.const_value.numpy().copy()), name=value.name)
        return outcome

    monkeypatch.setattr(owner, function, tampered)


def _scale_initializer(monkeypatch, owner, function: str, node_name: str, initializer: str, factor: float) -> None:
    """``change_initializer`` multiplying by ``factor``."""
    change_initializer(monkeypatch, owner, function, node_name, initializer, lambda array: array * np.float32(factor))


@pytest.mark.parametrize("factor", [1.002, 0.995])
def test_an_int4_q_projs_scales_a_fraction_of_a_percent_off_are_rolled_back(monkeypatch, factor):
    # A query projection's gain acts through the softmax: no checkpoint's gain, and twin max |Δ| ~1e-5.
    _scale_initializer(monkeypatch, int4.Int4QuantizationPass, "quantize_layer", LLAMA_Q, "scales", factor)
    _, report = optimize_with_report(ir.load(FIXTURES / LLAMA), passes=["quantize-int4"], int4_accuracy_level=4)
    record = _record(report)
    assert record.status == "rolled back", record.twin
    assert "uses other weights than its twin's" in record.detail and "q_proj" in record.detail


@pytest.mark.parametrize("scheme", ["int8", "row", "weight-only"])
def test_an_int8_weight_scale_a_fraction_of_a_percent_off_is_rolled_back_in_every_scheme(monkeypatch, scheme):
    function = "_dequantized_weight" if scheme == "weight-only" else "_quantize_matmul"
    _scale_initializer(monkeypatch, dynamic, function, LLAMA_DOWN, "weight_scale", 1.003)
    if scheme != "int8":
        monkeypatch.setattr(DynamicQuantizationPass, "scheme", lambda self, layer: scheme)
    _, report = optimize_with_report(ir.load(FIXTURES / LLAMA), passes=["quantize-dynamic"])
    record = _record(report)
    assert record.status == "rolled back", record.twin
    assert "uses other weights than its twin's" in record.detail and "down_proj" in record.detail


@pytest.mark.parametrize("scheme", ["row", "weight-only"])
def test_every_scheme_written_correctly_is_probed_and_applied(monkeypatch, scheme):
    monkeypatch.setattr(DynamicQuantizationPass, "scheme", lambda self, layer: scheme)
    _, report = optimize_with_report(ir.load(FIXTURES / LLAMA), passes=["quantize-dynamic"])
    record = _record(report)
    assert record.status == "applied", record.detail
    assert "each of 14 layers also run alone on probe rows" in record.twin


@pytest.fixture(scope="module")
def fused_fixtures() -> dict[str, ir.Model]:
    """Fixtures after the default pipeline, unverified, filled on first use and only read (cloned) after."""
    return {}


@pytest.mark.parametrize(
    ("fixture", "options", "probed"),
    [
        (LLAMA, {"quantize": "dynamic"}, 14),
        (LLAMA, {"quantize": "static"}, 14),
        (LLAMA, {"quantize": "int4", "int4_accuracy_level": 4, "int4_method": "hqq"}, 14),
        (LLAMA, {"quantize": "int4", "int4_outlier_channels": 4, "quantize_outputs": True}, 15),
        ("gpt2_kv_legacy.onnx", {"quantize": "int4", "symmetric": True, "block_size": 128}, 8),
        ("bert_legacy.onnx", {"quantize": "dynamic"}, 6),  # Q/K/V inside QAttention read the mask: not probed
        ("distilbert_dynamo.onnx", {"quantize": "static"}, 6),
        ("vit_legacy.onnx", {"quantize": "static"}, 7),  # its patch embedding's Conv too
        ("resnet_legacy.onnx", {"quantize": "static"}, 6),
        ("resnet_dynamo.onnx", {"quantize": "static"}, 6),
    ],
)
def test_correct_results_are_probed_and_applied(fixture, options, probed, fused_fixtures):
    # The quantizer alone on the default pipeline's result (the fusions quantize= runs before it, and the cleanup
    # it runs after): each fixture fused once for the module, unverified (the fusions' verification is tested
    # beside each fusion), so four Llama cases share one pipeline run.
    if fixture not in fused_fixtures:
        fused_fixtures[fixture] = optimize(ir.load(FIXTURES / fixture), verify=False)
    options = dict(options)
    quantize = options.pop("quantize")
    _, report = optimize_with_report(fused_fixtures[fixture].clone(), [f"quantize-{quantize}"], **options)
    record = _record(report)
    assert record.status == "applied", record.detail
    assert f"each of {probed} layers also run alone on probe rows" in record.twin, record.twin


@pytest.fixture(scope="module")
def fused_minilm() -> ir.Model:
    """MiniLM after the default pipeline's fusions (their own verification is tests/test_real_models.py's)."""
    if minilm_path() is None:
        pytest.skip(MINILM_MISSING)
    return optimize(ir.load(minilm_path()), verify=False)


# dynamic: tests/test_real_models.py's MiniLM int8 run asserts the same of quantize="dynamic" end to end.
@pytest.mark.parametrize("quantize", ["static", "int4"])
def test_minilms_real_weights_are_probed_and_applied(quantize, fused_minilm):
    sentences = minilm_sentences("calibration")
    _, report = optimize_with_report(fused_minilm.clone(), [f"quantize-{quantize}"], calibration=sentences)
    record = _record(report)
    assert record.status == "applied", record.detail
    assert "layers also run alone on probe rows" in record.twin, record.twin


@pytest.fixture(scope="module")
def fused_ppocr() -> ir.Model:
    """PP-OCR's classifier after the default pipeline, unverified (its verified run is tests/test_real_models.py's);
    the test below runs quantize-static alone on a clone (quantize="static" runs it after the fusions)."""
    return optimize(ir.load(PPOCR_CLS), verify=False)


def _ppocr_static(fused_ppocr: ir.Model):
    return optimize_with_report(fused_ppocr.clone(), ["quantize-static"], calibration=ppocr_lines("calibration"))


# That PP-OCR's 54 layers (53 Conv and the classifier's MatMul) are probed and applied on their real inputs is asserted
# by tests/test_real_models.py's static int8 run (quantize="static" end to end, the same calibration lines).


def test_one_conv_channels_weight_scale_a_tenth_of_a_percent_off_is_rolled_back(monkeypatch, fused_ppocr):
    written = static.StaticQuantizationPass.quantize_layer
    tampered = []

    def quantize_layer(self, graph, layer):
        written(self, graph, layer)
        if layer.kind == "conv" and not tampered:
            value = graph.initializers[f"{layer.node.name}.weight_scale"]
            scales = value.const_value.numpy().copy()
            scales.reshape(-1)[0] *= np.float32(1.001)
            value.const_value = ir.tensor(scales, name=value.name)
            tampered.append(layer.node.name)

    monkeypatch.setattr(static.StaticQuantizationPass, "quantize_layer", quantize_layer)
    _, report = _ppocr_static(fused_ppocr)
    record = _record(report)
    assert tampered and record.status == "rolled back", record.twin
    assert "uses other weights than its twin's" in record.detail and "differs in channel 0" in record.detail

"""Hostile review (s57) of int8 on decoders (``passes/quantization/``: SmoothQuant, the budget's alternatives).

1. **With ``--smooth``, the budget offered 8-bit weights by the weight before smoothing.** ``QuantizationPass.call``
   smoothed the norms, then handed the budget the ``Layer`` objects found before, whose ``weight`` is the float
   weight SmoothQuant replaced. ``DynamicQuantizationPass.alternatives`` offers ``"w8"`` (8-bit weights in a 7-bit
   run) only "where no adjacent weight pair can saturate the int16 sums of x86 kernels without VNNI"
   (``cannot_saturate``), and checked that on the stale weight: a layer whose weight passed before smoothing and
   not after (SmoothQuant multiplies each row by its own factor) was written with 8-bit weights whose adjacent
   pairs sum to 194 (> 128): on an AVX2 CPU, the one a 7-bit run is for, ``vpmaddubsw`` saturates on such pairs.
   The local estimates past 24 layers read the stale weights too. The budget now reads the layers as smoothed.
2. **SmoothQuant rewrote the weight of an up projection ``--exclude`` keeps float.** A gated product
   ``silu(gate) * up`` is smoothed by dividing the up projection's columns; neither ``--smooth`` nor the budget's
   per-layer SmoothQuant asked whether that layer may be rewritten (s56 fixed the same for a norm's readers): with
   ``--exclude '*up_proj*'`` the Llama export's up projections read ``up_proj/MatMul.smoothed_weight``. README
   offers the scheme only where no layer ``--exclude``, a model output or a tied weight keeps float would be
   rewritten.
3. **A ``Shape`` of a norm's output kept SmoothQuant off it.** torch's dynamo exporter sizes the attention's
   ``Reshape`` from the norm's output: GPT-J's and Phi's norms (and the legacy Llama's input norms) were never
   smoothed, "SmoothQuant (alpha 0.5) on 0 norms: none", with no reason given. A ``Shape``/``Size`` reads no value
   that rescaling changes.
4. **``compare --generate``'s decode-step cosines held the prefill's logits** (``optimizer/llm_accuracy.py``): the
   greedy run keeps the prefill's last logits first, then one per step, and the step figures took all of them. A
   model exact at every decode step and wrong only at the prefill (logits x1.5 where the cache is empty) failed
   ``--min-cosine 0.99`` with "the greedy decode steps' logits ... have cosine 0.988931" beside the teacher-forced
   line, naming a fault its decode steps do not have (and a decode-only fault was averaged with the prefill).
5. **A budget that left the model float left it smoothed.** ``--smooth`` rewrites the model in place before the
   search; where no layer could meet the budget (or int8 did not pay) the pass returned ``modified=False``, "model
   left float", on a model whose norm and layers read smoothed copies, the float weights left beside them (an
   onnx-ir ``PassManager`` takes such a result as the model it was given). The float model is put back.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import AccuracyBudget
from optimizer.runtime import run_model
from passes._layers import find_layers
from passes.quantization._layer_speed import LayerSpeeds
from passes.quantization.dynamic import SATURATION_FREE_PAIR, DynamicQuantizationPass, cannot_saturate

_K = 16


def _norm_then_projection() -> tuple[ir.Model, np.ndarray]:
    """``x -> LayerNorm (scales over 8 decades) -> proj -> Relu -> head``; ``proj``'s columns each hold one large
    weight and tiny ones elsewhere, so its int8 pairs are saturation-free until SmoothQuant rescales its rows."""
    weight = np.full((_K, _K), 0.004, np.float32)
    weight[np.arange(_K), np.arange(_K)] = 1.0
    gamma = np.logspace(-4, 4, _K).astype(np.float32)
    head = (np.random.default_rng(3).standard_normal((_K, _K)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma"], ["n"], axis=-1, name="norm"),
        helper.make_node("MatMul", ["n", "w"], ["h"], name="proj"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8, _K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8, _K])],
        [numpy_helper.from_array(array, name) for name, array in (("w", weight), ("gamma", gamma), ("w2", head))],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    return ir.from_proto(proto), weight


def test_eight_bit_weights_are_offered_by_the_smoothed_weight(tmp_path):
    model, weight = _norm_then_projection()
    assert cannot_saturate(weight, True)  # before smoothing, 8-bit weights would be safe

    def measure(shape, builders):  # int8 half of float; per-row and weight-only slower than float
        factors = {"float": 1.0, "DynamicQuantizeMatMul": 0.5}
        return {form: factors.get(form, 2.0) * shape.rows * shape.k * shape.n for form in builders}

    samples = {"x": np.random.default_rng(0).standard_normal((32, 8, _K)).astype(np.float32)}
    quantization = DynamicQuantizationPass(
        samples=samples,
        budget=AccuracyBudget(min_cosine=0.99996),
        smooth_alpha=0.5,
        reduce_range=True,  # a 7-bit run: for x86 CPUs without VNNI
        layer_speeds=LayerSpeeds(path=tmp_path / "layer_speed.json", measure=measure),
    )
    result = quantization.call(model)
    assert quantization.schemes.get("proj") != "w8", quantization.schemes
    for value in result.model.graph.initializers.values():
        if value.name.endswith(".weight_int8"):
            values = np.abs(value.const_value.numpy().astype(np.int32))
            pairs = values[0::2] + values[1::2]
            assert values.max() <= 63 or pairs.max() <= SATURATION_FREE_PAIR, (value.name, int(pairs.max()))


def _swiglu(with_norm: bool = True) -> ir.Model:
    """``x -> x * gamma -> gate, up -> silu(gate) * up -> down``."""
    rng = np.random.default_rng(1)
    arrays = {
        "gamma": np.linspace(0.5, 4.0, _K).astype(np.float32),
        "w_gate": (rng.standard_normal((_K, 32)) * 0.3).astype(np.float32),
        "w_up": (rng.standard_normal((_K, 32)) * 0.3).astype(np.float32),
        "w_down": (rng.standard_normal((32, _K)) * 0.3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Mul", ["x", "gamma"], ["n"], name="norm"),
        helper.make_node("MatMul", ["n", "w_gate"], ["g"], name="gate"),
        helper.make_node("MatMul", ["n", "w_up"], ["u"], name="up"),
        helper.make_node("Sigmoid", ["g"], ["sg"]),
        helper.make_node("Mul", ["g", "sg"], ["silu"]),
        helper.make_node("Mul", ["silu", "u"], ["p"], name="product"),
        helper.make_node("MatMul", ["p", "w_down"], ["y"], name="down"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8, _K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8, _K])],
        [numpy_helper.from_array(array, name) for name, array in arrays.items()],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


def _samples() -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((16, 8, _K)).astype(np.float32)
    x[..., 3] *= 40.0  # an outlier channel
    return {"x": x}


def test_smooth_leaves_an_excluded_up_projection_as_it_is():
    # --smooth rescaled the columns of an up projection --exclude keeps float, as it had not the norm it reads.
    quantization = DynamicQuantizationPass(samples=_samples(), smooth_alpha=0.5, exclude=("up",), quantize_outputs=True)
    model = quantization.call(_swiglu()).model
    up = next(node for node in model.graph if node.name == "up")
    assert up.inputs[1].name == "w_up", up.inputs[1].name
    assert "up" not in quantization.quantized and "down" in quantization.quantized


def test_smooth_still_rescales_a_product_whose_up_projection_is_quantized():
    quantization = DynamicQuantizationPass(samples=_samples(), smooth_alpha=0.5, quantize_outputs=True)
    result = quantization.call(_swiglu())
    model = result.model
    assert any("product" in note for note in result.notes if "SmoothQuant" in note), result.notes
    assert not any(value.name == "w_up" for value in model.graph.initializers.values())


def test_the_budget_offers_no_smoothquant_through_an_excluded_up_projection():
    quantization = DynamicQuantizationPass(samples=_samples(), exclude=("up",), quantize_outputs=True)
    model = _swiglu()
    quantization.call(model.clone())  # sets the layers this run may change
    down = next(layer for layer in find_layers(model.graph, quantization.kinds)[0] if layer.name == "down")
    assert "smooth" in quantization.alternatives(down)
    assert "smooth" not in quantization._offered(down)


def test_smooth_reads_past_a_shape_of_the_norm_output():
    # torch's dynamo exporter reads a norm output's sizes (Shape) for the attention's Reshape: GPT-J's norms were
    # never smoothed ("SmoothQuant (alpha 0.5) on 0 norms: none"), though a Shape sees no rescaled channel.
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Mul", ["x", "gamma"], ["n"], name="norm"),
        helper.make_node("MatMul", ["n", "w"], ["h"], name="proj"),
        helper.make_node("Shape", ["n"], ["sizes"]),
        helper.make_node("Reshape", ["h", "sizes"], ["y"]),
    ]
    arrays = {
        "gamma": np.linspace(0.5, 4.0, _K).astype(np.float32),
        "w": (rng.standard_normal((_K, _K)) * 0.3).astype(np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8, _K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8, _K])],
        [numpy_helper.from_array(array, name) for name, array in arrays.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))
    before = model.clone()
    quantization = DynamicQuantizationPass(samples=_samples(), smooth_alpha=0.5, quantize_outputs=True)
    result = quantization.call(model)
    assert any("on 1 norms: norm" in note for note in result.notes), result.notes
    x = _samples()["x"][:2]
    expected = run_model(before, {"x": x})["y"]
    actual = run_model(result.model, {"x": x})["y"]
    assert actual.shape == expected.shape
    cosine = float(np.sum(actual * expected) / np.linalg.norm(actual) / np.linalg.norm(expected))
    assert cosine > 0.999, cosine


def test_decode_step_cosines_leave_out_the_prefill(tmp_path):
    # A model wrong only at the prefill (its logits x1.5 where the cache is empty, its steps exact) was reported by
    # `compare --generate --min-cosine 0.99` as "the greedy decode steps' logits ... have cosine 0.988931": the
    # step figures included the prefill's logits, which chose the first token.
    from optimizer.generation import CausalLMSession, recognise_causal_lm
    from optimizer.llm_accuracy import measure_llm_accuracy, random_text
    from tests._tiny_lm import build

    before, after = build(tmp_path / "before.onnx"), build(tmp_path / "after.onnx", prefill_scale=1.5)
    lm = recognise_causal_lm(ir.load(before))
    first, second = CausalLMSession(str(before), lm), CausalLMSession(str(after), lm)
    text = random_text(first.vocab, 24, padded=True)
    result = measure_llm_accuracy(first, second, text, batch=2, prompt_length=16, new_tokens=8)
    assert result.logits_cosine < 0.9
    assert result.decode_logits_cosine > 0.99999 and result.decode_logits_worst_cosine > 0.99999, result
    wrong_steps = CausalLMSession(str(build(tmp_path / "steps.onnx", decode_bias=True)), lm)
    result = measure_llm_accuracy(first, wrong_steps, text, batch=2, prompt_length=16, new_tokens=1)
    assert result.decode_logits_cosine < 0.99, result


def test_a_budget_left_float_leaves_the_model_unsmoothed(tmp_path):
    # The pass said "model left float" and modified=False, while the model it was given had been smoothed: the
    # norm read norm.smoothed_scale and every layer a smoothed weight (the float ones left beside them).
    model = _swiglu()
    quantization = DynamicQuantizationPass(
        samples=_samples(),
        smooth_alpha=0.5,
        quantize_outputs=True,
        budget=AccuracyBudget(min_cosine=0.9999999999),
        layer_speeds=LayerSpeeds(
            path=tmp_path / "layer_speed.json", measure=lambda shape, forms: dict.fromkeys(forms, 1.0)
        ),
    )
    result = quantization(model)
    assert not result.modified and not quantization.quantized
    inputs = {node.name: [value.name for value in node.inputs] for node in result.model.graph}
    assert inputs["norm"] == ["x", "gamma"] and inputs["up"] == ["n", "w_up"] and inputs["down"] == ["p", "w_down"]

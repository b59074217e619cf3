"""Verification holes that let a wrong model ship as "verified", each closed and kept closed.

- An approximate pass is checked against the exact twin it declares, so a wrong
  realization cannot hide inside the accuracy budget (a zeroed matrix passes a
  cosine floor of 0.9 easily).
- An approximate pass without a twin is rolled back.
- An approximate result that bakes one batch size in is rolled back with a reason,
  never a traceback from a later step.
- Padding is verified whatever the flags: user inputs or a batch of one without a
  padded row get a padded copy.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from optimizer.protocol import NotedResult, PassSpec, Twin
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from passes._utils import add_initializer, constant_array
from tests.helpers import FIXTURES

BERT = FIXTURES / "bert_legacy.onnx"


def _inputs(batch=2, sequence=12, padded=False):
    rng = np.random.default_rng(3)
    mask = np.ones((batch, sequence), dtype=np.int64)
    if padded:  # as a mixed batch: an encoder's row padded on the right, a decoder's on the left
        mask[-1, -3:] = 0
        mask[0, :2] = 0
    return {
        "input_ids": rng.integers(0, 100, (batch, sequence)).astype(np.int64),
        "attention_mask": mask,
        "token_type_ids": np.zeros((batch, sequence), dtype=np.int64),
    }


def _largest_matmul_weight(model: ir.Model) -> tuple[ir.Node, np.ndarray]:
    candidates = [
        (node, constant_array(node.inputs[1]))
        for node in model.graph
        if node.op_type == "MatMul" and constant_array(node.inputs[1]) is not None
    ]
    return max(candidates, key=lambda pair: pair[1].size)


class _ZeroWeightPass(ir.passes.InPlacePass):
    """An "approximate" pass that zeroes the largest MatMul weight; its twin claims ``claimed`` instead."""

    def __init__(self, claimed: str, twin: bool = True) -> None:
        super().__init__()
        self.claimed, self.twin = claimed, twin

    def call(self, model):
        twin = model.clone()
        node, weight = _largest_matmul_weight(model)
        node.replace_input_with(1, add_initializer(model.graph, "zeroed", np.zeros_like(weight)))
        if self.claimed == "the zeroed weight":
            twin_node, _ = _largest_matmul_weight(twin)
            twin_node.replace_input_with(1, add_initializer(twin.graph, "zeroed", np.zeros_like(weight)))
        declared = Twin(twin, "float32", f"the input with {self.claimed}") if self.twin else None
        return NotedResult(model, True, twin=declared)


class _BatchOnePass(ir.passes.InPlacePass):
    """An "approximate" pass whose result accepts batch 1 only (squeezes the batch axis and restores it)."""

    def call(self, model):
        twin = model.clone()
        graph = model.graph
        output = graph.outputs[0]
        axes = add_initializer(graph, "batch_axis", np.array([0], np.int64))
        squeeze = ir.node("Squeeze", [output, axes])
        unsqueeze = ir.node("Unsqueeze", [squeeze.outputs[0], axes])
        graph.extend([squeeze, unsqueeze])
        restored = unsqueeze.outputs[0]
        restored.dtype, restored.shape = output.dtype, output.shape
        graph.outputs[0] = restored
        restored.name, output.name = output.name, output.name + ".inner"
        return NotedResult(model, True, twin=Twin(twin, "float32", "the input unchanged"))


def _with_mutant(monkeypatch, name, factory, *, approximate=True):
    """Run ``factory()``'s pass after whatever pipeline ``optimize`` resolves."""
    import optimizer.api as api

    resolve = api.resolve

    def resolve_with_mutant(names, options):
        # The budget is read by the mutant, which the real registry does not know.
        options = dataclasses.replace(options, min_cosine=None, max_error=None)
        return [*resolve(names, options), PassSpec(name, lambda context: factory(), "mutant", approximate=approximate)]

    monkeypatch.setattr(api, "resolve", resolve_with_mutant)


@pytest.mark.parametrize("inputs", [None, "given"])
def test_an_undeclared_zeroed_matrix_fails_its_twin_although_it_meets_the_floor(monkeypatch, inputs):
    _with_mutant(monkeypatch, "zero-a-matrix", lambda: _ZeroWeightPass("nothing changed"))
    given = _inputs() if inputs else None
    _, report = optimizer.optimize_with_report(ir.load(BERT), passes=["remove-identity"], inputs=given)
    record = report.passes[-1]
    assert record.status == STATUS_ROLLED_BACK
    assert "differs from its twin (the input with nothing changed)" in record.detail


def test_a_declared_zeroed_matrix_matches_its_twin_and_meets_the_floor(monkeypatch):
    _with_mutant(monkeypatch, "zero-a-matrix", lambda: _ZeroWeightPass("the zeroed weight"))
    _, report = optimizer.optimize_with_report(ir.load(BERT), passes=["remove-identity"])
    record = report.passes[-1]
    # What the twin check guarantees is that the result is what the pass says; whether
    # that is good enough is the budget's call (here the default floor, which it meets).
    assert record.status == STATUS_APPLIED, record.detail
    assert record.twin.startswith("the input with the zeroed weight; max |Δ|")


def test_a_declared_zeroed_matrix_misses_a_real_budget(monkeypatch):
    _with_mutant(monkeypatch, "zero-a-matrix", lambda: _ZeroWeightPass("the zeroed weight"))
    _, report = optimizer.optimize_with_report(ir.load(BERT), passes=["remove-identity"], min_cosine=0.9999)
    assert report.passes[-1].status == STATUS_ROLLED_BACK
    assert "misses the accuracy budget" in report.passes[-1].detail
    # Measured on generated samples (no calibration data): the reason says so, and the way out.
    assert "on generated random inputs; give --calibration data" in report.passes[-1].detail


def test_an_approximate_pass_without_a_twin_is_rolled_back(monkeypatch):
    _with_mutant(monkeypatch, "no-twin", lambda: _ZeroWeightPass("the zeroed weight", twin=False))
    _, report = optimizer.optimize_with_report(ir.load(BERT), passes=["remove-identity"])
    assert report.passes[-1].status == STATUS_ROLLED_BACK
    assert "declares no exact twin" in report.passes[-1].detail


@pytest.mark.parametrize("inputs", [None, "given"])
def test_an_approximate_result_that_bakes_batch_one_is_rolled_back_not_a_traceback(monkeypatch, inputs):
    _with_mutant(monkeypatch, "batch-one", _BatchOnePass)
    given = _inputs(batch=2) if inputs else None
    _, report = optimizer.optimize_with_report(ir.load(BERT), passes=["remove-identity"], inputs=given)
    record = report.passes[-1]
    assert record.status == STATUS_ROLLED_BACK
    assert "ONNX Runtime cannot run the result" in record.detail


class _IgnoreMaskPass(ir.passes.InPlacePass):
    """An exact-looking pass that feeds the model an all-ones mask: right on unpadded inputs only."""

    def call(self, model):
        graph = model.graph
        mask = next(value for value in graph.inputs if value.name == "attention_mask")
        shape = ir.node("Shape", [mask])
        ones = ir.node("ConstantOfShape", [shape.outputs[0]], {"value": ir.tensor(np.array([1], np.int64))})
        graph.insert_before(graph.node(0), [shape, ones])
        for user, index in list(mask.uses()):
            if user is not shape:
                user.replace_input_with(index, ones.outputs[0])
        return ir.passes.PassResult(model, True)


@pytest.mark.parametrize(
    "how",
    [
        {"inputs": _inputs(batch=2)},
        {"inputs": _inputs(batch=1)},
        {"dims": {"batch": 1, "sequence": 16}},
        {"dims": {"batch": 1, "sequence": 16}, "static_shapes": True},
    ],
    ids=["given-batch-2", "given-batch-1", "all-dims", "static-shapes"],
)
def test_padding_is_verified_whatever_the_flags(monkeypatch, how):
    _with_mutant(monkeypatch, "ignore-mask", _IgnoreMaskPass, approximate=False)
    _, report = optimizer.optimize_with_report(ir.load(BERT), passes=["remove-identity"], **how)
    record = report.passes[-1]
    assert record.status == STATUS_ROLLED_BACK, report.input_sets
    assert "padded" in " ".join(report.input_sets[1:])


def test_user_inputs_padded_on_one_side_get_a_copy_padded_on_both(monkeypatch):
    inputs = _inputs()
    inputs["attention_mask"][-1, -3:] = 0
    # Every dim fixed: no generated second binding to carry the padding.
    dims = {"batch": 2, "sequence": 12}
    _, report = optimizer.optimize_with_report(ir.load(BERT), passes=["remove-identity"], inputs=inputs, dims=dims)
    assert report.input_sets[0] == "the given inputs"
    assert report.input_sets[1].startswith("padded copy of the given inputs (attention_mask: row 1's first 4")


def test_padded_user_inputs_are_used_as_given(monkeypatch):
    _with_mutant(monkeypatch, "ignore-mask", _IgnoreMaskPass, approximate=False)
    dims = {"batch": 2, "sequence": 12}
    _, report = optimizer.optimize_with_report(
        ir.load(BERT), passes=["remove-identity"], inputs=_inputs(padded=True), dims=dims
    )
    assert report.input_sets == ["the given inputs"]
    assert report.passes[-1].status == STATUS_ROLLED_BACK


def test_a_dropped_input_set_is_a_warning_not_silence(monkeypatch):
    import optimizer.api as api

    real = api.make_inputs

    def failing_second_binding(model, dims=None, *, seed=0, notes=None):
        inputs = real(model, dims, seed=seed, notes=notes)
        if seed == 1:  # the second binding: an id past the vocabulary makes the original fail
            inputs["input_ids"] = inputs["input_ids"] + 10**6
        return inputs

    monkeypatch.setattr(api, "make_inputs", failing_second_binding)
    _, report = optimizer.optimize_with_report(ir.load(BERT), passes=["remove-identity"])
    assert any("second binding" in w and "the original model fails on it" in w for w in report.warnings)
    # The second binding carried the padded row; a padded copy of the first replaces it.
    assert report.input_sets[-1].startswith("padded copy of generated")


@pytest.mark.parametrize("asked", [{"importance": "activation"}, {"repair": True}])
def test_pruning_that_fits_data_without_calibration_data_is_a_one_line_error(asked):
    from optimizer.errors import OptionError

    with pytest.raises(OptionError, match="needs --calibration data"):
        optimizer.optimize(ir.load(BERT), prune_ffn=0.25, **asked)


def test_outputs_at_padded_positions_are_not_compared_but_their_dtype_is():
    from optimizer.padding import hide_padded

    padding = np.array([[True, False, False]])
    reference = {"y": np.zeros((1, 3, 2), np.float32)}
    changed_there = {"y": np.array([[[5, 5], [0, 0], [0, 0]]], np.float32)}
    assert np.array_equal(hide_padded(changed_there, padding, reference)["y"], reference["y"])
    changed_elsewhere = {"y": np.array([[[0, 0], [1, 0], [0, 0]]], np.float32)}
    assert hide_padded(changed_elsewhere, padding, reference)["y"][0, 1, 0] == 1
    other_dtype = {"y": np.ones((1, 3, 2), np.float16)}
    assert hide_padded(other_dtype, padding, reference)["y"].dtype == np.float16


def _corrupting(monkeypatch, pass_name, corrupt):
    """Run the real ``pass_name``, then ``corrupt`` its result in place; its twin stays what the pass declared."""
    import optimizer.api as api

    resolve = api.resolve

    def resolve_corrupted(names, options):
        specs = []
        for spec in resolve(names, options):
            if spec.name == pass_name:

                def factory(context, real=spec.factory):
                    instance = real(context)

                    def run(model):
                        result = instance(model)
                        if result.modified:
                            corrupt(result.model)
                        return result

                    return run

                spec = dataclasses.replace(spec, factory=factory)
            specs.append(spec)
        return specs

    monkeypatch.setattr(api, "resolve", resolve_corrupted)


def _replace_first_output(model, build):
    graph = model.graph
    output = graph.outputs[0]
    nodes, new = build(graph, output)
    graph.extend(nodes)
    new.dtype = new.dtype or output.dtype
    new.shape = output.shape
    new.name, output.name = output.name, output.name + ".inner"
    graph.outputs[0] = new


def _scale_last_position(model, factor=0.97):
    def build(graph, output):
        def constant(name, value, dtype=np.int64):
            return add_initializer(graph, name, np.array(value, dtype))

        head = ir.node("Slice", [output, constant("h0", [0]), constant("h1", [-1]), constant("a0", [1])])
        tail = ir.node("Slice", [output, constant("t0", [-1]), constant("t1", [2**62]), constant("a1", [1])])
        scaled = ir.node("Mul", [tail.outputs[0], constant("k", factor, np.float32)])
        concat = ir.node("Concat", [head.outputs[0], scaled.outputs[0]], {"axis": 1})
        return [head, tail, scaled, concat], concat.outputs[0]

    _replace_first_output(model, build)


def _cast_to_float64(model):
    def build(graph, output):
        cast = ir.node("Cast", [output], {"to": ir.DataType.DOUBLE})
        cast.outputs[0].dtype = ir.DataType.DOUBLE
        return [cast], cast.outputs[0]

    _replace_first_output(model, build)


@pytest.mark.parametrize(
    ("model", "corrupt", "reason"),
    [
        ("llama_legacy", _scale_last_position, "max abs error"),
        ("bert_legacy", _cast_to_float64, "dtype float64 instead of float32"),
    ],
    ids=["last-position-scaled", "output-float64"],
)
def test_an_int8_result_is_not_excused_as_rounding_unless_it_is(monkeypatch, model, corrupt, reason):
    # Past the elementwise tolerance an int8 result is accepted only for finite float
    # differences no token row of which strays farther from the input than its twin does.
    _corrupting(monkeypatch, "quantize-dynamic", corrupt)
    _, report = optimizer.optimize_with_report(ir.load(FIXTURES / f"{model}.onnx"), passes=[], quantize="dynamic")
    record = report.passes[-1]
    assert record.status == STATUS_ROLLED_BACK
    assert "differs from its twin" in record.detail and reason in record.detail


def test_the_second_binding_grows_from_the_users_inputs():
    _, report = optimizer.optimize_with_report(ir.load(BERT), passes=["remove-identity"], inputs=_inputs(batch=2))
    assert report.input_sets[1].startswith("generated, second binding (batch=3, sequence=7)")


def test_an_additive_or_boolean_mask_is_not_read_as_padding():
    from optimizer.padding import mask_inputs

    graph = ir.Graph([ir.Value(name=n) for n in ("attention_mask", "additive_mask", "key_padding_mask")], [], nodes=[])
    model = ir.Model(graph, ir_version=9)
    inputs = {
        "attention_mask": np.array([[1, 1, 0]], np.int64),
        "additive_mask": np.array([[0.0, 0.0, -1e4]], np.float32),
        "key_padding_mask": np.array([[False, False, True]]),
    }
    assert mask_inputs(model, inputs) == ["attention_mask"]


def test_a_two_token_row_is_padded_at_its_end_and_says_so():
    from optimizer.padding import padded_copy

    padded, how = padded_copy({"attention_mask": np.ones((1, 2), np.int64)}, ["attention_mask"])
    assert padded["attention_mask"].tolist() == [[1, 0]]
    assert how == "attention_mask: the last of 2 positions padded"


def test_a_padded_copy_never_empties_a_row():
    # A left-padded prompt holding only its last token is not padded at its end too: a fully
    # padded row is still compared, and means nothing.
    from optimizer.padding import padded_copy

    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    padded = padded_copy({"attention_mask": mask}, ["attention_mask"])[0]["attention_mask"]
    assert padded.any(axis=1).all()
    assert (padded[:, 0] == 0).any() and (padded[:, -1] == 0).any()


def test_only_outputs_computed_as_a_cache_hide_their_padded_positions():
    # Decided from the graph (Concat of a 4-D past input on the sequence axis), not from names:
    # an encoder's cache or an output merely named "value" is still compared everywhere.
    from optimizer.padding import cache_outputs, hide_padded

    for name in ("gpt2_kv_dynamo", "llama_kv_legacy"):
        caches = cache_outputs(ir.load(FIXTURES / f"{name}.onnx"))
        assert caches == {f"present.{i}.{kind}" for i in range(2) for kind in ("key", "value")}
    assert not cache_outputs(ir.load(FIXTURES / "bert_legacy.onnx"))
    padding = np.array([[True, False, False]])
    reference = {"present.0.key": np.zeros((1, 2, 3, 4)), "value": np.zeros((1, 2, 3, 4))}
    outputs = {name: array + 1 for name, array in reference.items()}
    hidden = hide_padded(outputs, padding, reference, frozenset({"present.0.key"}))
    assert (hidden["present.0.key"][:, :, 0] == 0).all() and (hidden["present.0.key"][:, :, 1:] == 1).all()
    assert (hidden["value"] == 1).all()


def _qdq_layer(bias_0: float = 0.0) -> ir.Model:
    """An int8 QDQ layer: ORT_ENABLE_ALL runs it on integer kernels, ORT_DISABLE_ALL in float, so
    every row of its output differs by a rounding step between the two (the float noise)."""
    from onnx import TensorProto, helper, numpy_helper

    width = 256
    weights = np.random.default_rng(0).standard_normal((width, width)).astype(np.float32) / 16
    bias = np.zeros(width, np.float32)
    bias[0] = bias_0
    constants = {
        "xs": np.array(0.02, np.float32),
        "z": np.array(0, np.int8),
        "wq": np.clip(np.round(weights / 0.01), -127, 127).astype(np.int8),
        "ws": np.array(0.01, np.float32),
        "b": bias,
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "z"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y0"]),
        helper.make_node("QuantizeLinear", ["y0", "xs", "z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "xs", "z"], ["yd"]),
        helper.make_node("Add", ["yd", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", width])],
        [numpy_helper.from_array(array, name) for name, array in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return ir.from_proto(model)


def test_the_float_noise_floor_never_passes_a_wrong_constant_on_a_noisy_model():
    # Every row of the QDQ layer is noisy under ORT's own rewrites (a whole rounding step): the
    # floor is capped at 1 % of the output's RMS in all, so a bias off by 0.03 still fails.
    from optimizer.verify import Verifier

    x = {"x": np.random.default_rng(1).standard_normal((1, 128, 256)).astype(np.float32)}
    verifier = Verifier(_qdq_layer(), [x], labels=["given"])
    assert verifier.check(_qdq_layer()).ok
    assert not verifier.check(_qdq_layer(bias_0=0.03)).ok


def test_a_nan_the_reference_lacks_is_never_hidden_at_a_padded_position():
    # A cache slot left unwritten is read again at the next step (with weight 0: 0 * NaN is NaN).
    from optimizer.padding import hide_padded

    padding = np.array([[True, False]])
    reference = {"present.0.value": np.zeros((1, 1, 2, 2))}
    outputs = {"present.0.value": np.full((1, 1, 2, 2), np.nan)}
    hidden = hide_padded(outputs, padding, reference, frozenset({"present.0.value"}))
    assert np.isnan(hidden["present.0.value"]).all()


def test_a_decoder_is_verified_on_the_cache_it_builds_itself():
    from optimizer.generation import MAX_MODEL_CACHE, recognise_causal_lm, with_model_cache
    from optimizer.inputs import make_inputs

    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    inputs = make_inputs(model, {"sequence": 3, "past_sequence": 5})
    cached = with_model_cache(model, inputs)
    past = "past_key_values.0.key"
    assert cached[past].shape == inputs[past].shape and not np.array_equal(cached[past], inputs[past])
    np.testing.assert_array_equal(with_model_cache(model, inputs)[past], cached[past])  # seeded
    # Too long to prefill, or pairs matched by shape alone (possibly crossed): the random cache stays.
    longer = make_inputs(model, {"sequence": 1, "past_sequence": MAX_MODEL_CACHE + 1})
    assert with_model_cache(model, longer) is None
    renamed = model.clone()
    for value in list(renamed.graph.inputs) + list(renamed.graph.outputs):
        if value.name.startswith(("past_key_values.", "present.")):
            value.name = value.name.replace("past_key_values.", "past_").replace("present.", "out_").replace(".", "_")
    assert all(pair.matched_by == "shape" for pair in recognise_causal_lm(renamed).cache)
    assert with_model_cache(renamed, {v.name: inputs[k] for k, v in zip(inputs, renamed.graph.inputs)}) is None


def test_an_initializer_that_is_also_a_graph_input_is_no_constant_to_the_passes(tmp_path):
    # A review: 0.5 * x * (1 + erf(x / s)) with `s` an initializer listed as a graph input (a default a caller
    # may override, as old exporters wrote every weight) was fused into Gelu with s = sqrt(2) baked in;
    # verification never fed `s`, and a caller feeding it got answers off by up to 24.
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from optimizer.api import optimize_with_report
    from tests.helpers import run

    nodes = [
        helper.make_node("Div", ["x", "s"], ["a"]),
        helper.make_node("Erf", ["a"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["x", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gelu_with_a_default",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [
            numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "s"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    model = ir.load(path)
    assert constant_array(model.graph.initializers["s"]) is None
    assert constant_array(model.graph.initializers["one"]) is not None
    optimized, report = optimize_with_report(model, "+fuse-gelu")
    assert "Gelu" not in {node.op_type for node in optimized.graph}
    assert any("default value a caller may override (initializers: 's'" in w for w in report.warnings)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32), "s": np.float32(0.5)}
    np.testing.assert_allclose(run(optimized, feeds)["y"], run(model, feeds)["y"], rtol=1e-6)


@pytest.mark.parametrize(("op", "neutral"), [("Mul", 1.0), ("Div", 1.0), ("Add", 0.0), ("Sub", 0.0)])
def test_simplify_ops_keeps_a_no_op_whose_operand_a_caller_may_override(tmp_path, op, neutral):
    # A review: x * k with k = 1 an initializer listed as a graph input was removed by onnxscript's no-op
    # rules; a caller feeding k = 3 got x.
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ["r", "k"], ["y"])],
        "overridable",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("k", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(np.array(neutral, np.float32), "k")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), path)
    import onnxruntime as ort

    out = tmp_path / "out.onnx"
    optimizer.optimize(str(path), output=str(out))
    feeds = {"x": np.arange(16, dtype=np.float32).reshape(2, 8), "k": np.array(3.0, np.float32)}
    before, after = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (path, out))
    np.testing.assert_allclose(after.run(None, feeds)[0], before.run(None, feeds)[0])


def test_over_a_past_the_logits_of_padded_new_tokens_are_not_compared():
    # A decoder's logits are [batch, new, vocab] while its mask is [batch, past + new]: the new tokens are
    # the mask's tail. A right-padded new token whose sliding window holds only padding sees no key, and
    # a fused kernel returns something else there than the exporter's uniform softmax: a correct
    # GroupQueryAttention with a 6-token window was rolled back.
    from optimizer.padding import hide_padded, new_token_outputs

    for name in ("gpt2_kv_dynamo", "llama_kv_legacy", "llama_kv_optimum", "gpt2_kv_legacy", "gpt2_kv_optimum"):
        layout = new_token_outputs(ir.load(FIXTURES / f"{name}.onnx"))
        assert layout is not None and layout.outputs == {"logits"}, name
    assert new_token_outputs(ir.load(FIXTURES / "llama_legacy.onnx")) is None  # no past: the mask is the sequence
    assert new_token_outputs(ir.load(BERT)) is None
    # GroupQueryAttention reads each row's tokens as ending where its ones end, not at the mask's end.
    assert new_token_outputs(ir.load(FIXTURES / "llama_kv_genai.onnx")) is None
    padding = np.array([[False, False, False, True, True], [False] * 5])  # past 3, new 2: row 1's new padded
    reference = {"logits": np.zeros((2, 2, 4)), "hidden": np.zeros((2, 2, 4)), "present.0.key": np.zeros((2, 1, 5, 2))}
    outputs = {name: array + 1 for name, array in reference.items()}
    caches, new = frozenset({"present.0.key"}), frozenset({"logits"})
    hidden = hide_padded(outputs, padding, reference, caches, new, past=3)
    assert (hidden["logits"][0] == 0).all() and (hidden["logits"][1] == 1).all()
    assert (hidden["hidden"] == 1).all()  # not named as the token ids' length: compared everywhere
    # A mask that is not past + new (a static buffer longer than both): nothing is aligned.
    for past in (None, 2):
        assert (hide_padded(outputs, padding, reference, caches, new, past=past)["logits"] == 1).all()


def test_the_new_tokens_are_the_masks_tail_only_where_the_inputs_say_so():
    # A review: ONNX Runtime GenAI's static buffers feed a mask of max_length (ones, then zeros) beside
    # caches as long: the whole step's logits were hidden. An encoder's mask whose length happened to be
    # the decoder's past + new hid the logits of its padded rows.
    from onnx import TensorProto, helper

    from optimizer.padding import new_token_outputs

    layout = new_token_outputs(ir.load(FIXTURES / "llama_kv_legacy.onnx"))
    padding = np.zeros((2, 9), bool)
    past = {"input_ids": np.zeros((2, 1), np.int64)}
    past.update({name: np.zeros((2, 2, 8, 16), np.float32) for name in layout.pasts})
    assert layout.past_length(past, padding) == 8
    static = dict(past, **{name: np.zeros((2, 2, 9, 16), np.float32) for name in layout.pasts})
    assert layout.past_length(static, padding) is None  # a buffer of 9 beside a mask of 9: where do the new go?

    nodes = [
        helper.make_node("Concat", ["past_key", "new_key"], ["present_key"], axis=2),
        helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids", "last"], ["logits"]),
        helper.make_node("Identity", ["encoder_hidden_states"], ["unused"]),
    ]
    graph = helper.make_graph(
        nodes,
        "encoder_decoder_step",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "decoder_sequence"]),
            helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT64, ["batch", "encoder_sequence"]),
            helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["batch", "encoder_sequence", 8]),
            helper.make_tensor_value_info("past_key", TensorProto.FLOAT, ["batch", 1, "past", 8]),
            helper.make_tensor_value_info("new_key", TensorProto.FLOAT, ["batch", 1, "decoder_sequence", 8]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "decoder_sequence", 1]),
            helper.make_tensor_value_info("present_key", TensorProto.FLOAT, ["batch", 1, "past + decoder_sequence", 8]),
        ],
        [helper.make_tensor("last", TensorProto.INT64, [1], [-1])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert new_token_outputs(model) is None
    # The same step whose mask is the decoder's, named only there: its logits are the mask's tail.
    proto = ir.to_proto(model)
    proto.graph.input[1].name = "attention_mask"
    proto.graph.input[1].type.tensor_type.shape.dim[1].dim_param = "total"
    del proto.graph.input[2]
    del proto.graph.node[3]
    assert new_token_outputs(ir.from_proto(proto)).outputs == {"logits"}


def test_a_cache_with_as_many_heads_as_positions_is_hidden_by_position():
    from optimizer.padding import hide_padded

    padding = np.array([[True, False], [False, False]])
    reference = {"present.0.key": np.zeros((2, 2, 2, 4))}  # [batch 2, heads 2, positions 2, 4]
    hidden = hide_padded({"present.0.key": np.ones((2, 2, 2, 4))}, padding, reference, frozenset(reference))
    assert (hidden["present.0.key"][0, :, 0] == 0).all() and (hidden["present.0.key"][0, :, 1] == 1).all()
    assert (hidden["present.0.key"][1] == 1).all()


def logits_plus_one_where(padded: bool, proto=None) -> ir.Model:
    """``proto`` (default: the Llama KV fixture) whose logits gain 1 at the new tokens its mask pads (``padded``) or
    keeps; ``proto`` itself is left as it is."""
    import onnx
    from onnx import helper

    if proto is None:
        proto = onnx.load(FIXTURES / "llama_kv_legacy.onnx")
    else:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
    producer = next(node for node in proto.graph.node if "logits" in node.output)
    producer.output[list(producer.output).index("logits")] = "logits_raw"
    proto.graph.node.extend(
        [
            helper.make_node("Shape", ["input_ids"], ["new"], start=1, end=2),
            helper.make_node("Neg", ["new"], ["from_end"]),
            helper.make_node("Constant", [], ["end"], value_ints=[2**62]),
            helper.make_node("Constant", [], ["axis"], value_ints=[1]),
            helper.make_node("Slice", ["attention_mask", "from_end", "end", "axis"], ["tail"]),
            helper.make_node("Cast", ["tail"], ["kept"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Constant", [], ["one"], value_float=1.0),
            helper.make_node("Sub", ["one", "kept"], ["padded"]),
            helper.make_node("Constant", [], ["last"], value_ints=[-1]),
            helper.make_node("Unsqueeze", ["padded" if padded else "kept", "last"], ["where"]),
            helper.make_node("Add", ["logits_raw", "where"], ["logits"]),
        ]
    )
    return ir.from_proto(proto)


@pytest.mark.parametrize("padded", [True, False])
def test_a_decoder_step_is_judged_on_its_real_new_tokens_only(padded):
    from optimizer.inputs import make_inputs
    from optimizer.verify import Verifier

    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    inputs = make_inputs(model, {"batch": 2, "sequence": 3, "past_sequence": 5})
    mask = np.ones((2, 8), dtype=np.int64)
    mask[1, -2:] = 0  # row 2's last two new tokens padded on the right
    mask[0, :2] = 0  # row 1's start padded on the left
    inputs["attention_mask"] = mask
    verifier = Verifier(model, [inputs], labels=["given"])
    assert verifier.check(logits_plus_one_where(padded)).ok is padded


class _IgnoreMaskPass(ir.passes.InPlacePass):
    """A "fusion" that reads an attention mask of ones: every token attends to every past token."""

    def call(self, model):
        graph = model.graph
        mask = next(value for value in graph.inputs if value.name == "attention_mask")
        shape = ir.node("Shape", [mask])
        ones = ir.node("ConstantOfShape", [shape.outputs[0]], attributes={"value": ir.tensor(np.array([1], np.int64))})
        graph.insert_before(graph[0], [shape, ones])
        for user, index in list(mask.uses()):
            if user is not shape:
                user.replace_input_with(index, ones.outputs[0])
        return NotedResult(model, True)


@pytest.mark.parametrize("max_sequence", [2, 3, None])
def test_a_rewrite_ignoring_the_mask_over_a_past_is_rolled_back(monkeypatch, max_sequence):
    # A review: the prefill that builds the model's own cache drew its tokens from the generated inputs' seed,
    # so the past held the very tokens that followed it; at --max-sequence 2 (one past, one new token) the
    # first layer's values were equal at both positions and hiding the past changed nothing.
    _with_mutant(monkeypatch, "ignore-mask", _IgnoreMaskPass, approximate=False)
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    options = {"max_sequence": max_sequence} if max_sequence else {}
    _, report = optimizer.optimize_with_report(model, passes=["fuse-rotary-embedding"], **options)
    assert report.passes[-1].name == "ignore-mask" and report.passes[-1].status == STATUS_ROLLED_BACK


class _WrongAtOneTokenPass(ir.passes.InPlacePass):
    """An exact-looking pass whose result scales the logits by 1.5 where one new token is fed: right at every
    prefill and every chunk of several tokens, wrong at each decode step of a generation."""

    def call(self, model):
        graph = model.graph
        ids = next(value for value in graph.inputs if value.name == "input_ids")
        logits = graph.outputs[0]
        index = add_initializer(graph, "sequence_axis", np.array([1], np.int64))
        one = add_initializer(graph, "one_token", np.array([1], np.int64))
        half = add_initializer(graph, "half", np.array([0.5], np.float32))
        shape = ir.node("Shape", [ids])
        length = ir.node("Gather", [shape.outputs[0], index], {"axis": 0})
        single = ir.node("Equal", [length.outputs[0], one])
        as_float = ir.node("Cast", [single.outputs[0]], {"to": ir.DataType.FLOAT})
        extra = ir.node("Mul", [as_float.outputs[0], half])
        gain = ir.node("Add", [extra.outputs[0], add_initializer(graph, "unit", np.array([1.0], np.float32))])
        scaled = ir.node("Mul", [logits, gain.outputs[0]])
        graph.extend([shape, length, single, as_float, extra, gain, scaled])
        result = scaled.outputs[0]
        result.dtype, result.shape = logits.dtype, logits.shape
        graph.outputs[0] = result
        result.name, logits.name = logits.name, logits.name + ".inner"
        return ir.passes.PassResult(model, True)


@pytest.mark.parametrize("fixture", ["llama_kv_legacy", "gpt2_kv_dynamo", "llama_kv_optimum"])
def test_a_rewrite_wrong_only_at_a_decode_step_is_rolled_back(monkeypatch, fixture):
    # Every set verification fed a decoder held several new tokens (after a past, or the prefill's), so a
    # rewrite wrong only where one token is fed, each step of a generation after the first, was verified.
    _with_mutant(monkeypatch, "wrong-at-one-token", _WrongAtOneTokenPass, approximate=False)
    _, report = optimizer.optimize_with_report(ir.load(FIXTURES / f"{fixture}.onnx"), passes=["remove-identity"])
    record = report.passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "a decode step: set " in record.detail
    assert any(label.startswith("a decode step: ") for label in report.input_sets)


def test_a_decode_step_is_cut_from_the_users_own_set_with_a_past():
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    from optimizer.generation import recognise_causal_lm

    layout = recognise_causal_lm(model)
    rng = np.random.default_rng(0)
    batch, past, new = 2, 5, 3
    given = {
        layout.input_ids: rng.integers(0, 100, (batch, new)).astype(layout.ids_dtype),
        layout.attention_mask: np.ones((batch, past + new), layout.mask_dtype),
    }
    given[layout.attention_mask][0, :2] = 0  # row 1 left-padded: the step from this set pads some of its past
    if layout.position_ids is not None:
        given[layout.position_ids] = np.tile(np.arange(past, past + new), (batch, 1)).astype(layout.positions_dtype)
    for pair in layout.cache:
        shape = [batch if axis == 0 else past if axis == pair.sequence_axis else d for axis, d in enumerate(pair.shape)]
        given[pair.past] = rng.standard_normal(shape).astype(pair.dtype)
    _, report = optimizer.optimize_with_report(model, passes=["remove-identity"], inputs=given)
    # Its row 2 pads the end of its past too (since review s66): the label says so after these words.
    step = f"a decode step: set 1's past of {past} with its first new token"
    assert any(label.startswith(step) for label in report.input_sets), report.input_sets

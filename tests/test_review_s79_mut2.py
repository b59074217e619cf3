"""Review s79 (mut2): a mutation hunt on verification, round 2 (constant folding and cleanup, shape simplification,
embed-layer-norm, GroupQueryAttention's lengths and heads, MatMulNBits and GatherBlockQuantized layouts,
merge-matmul-nbits, split-packed-heads, norm epsilons, the mask kind). Small realistic bugs were put into the passes
one at a time (in a scratch clone, none here) and each mutant's model was checked against the original on inputs of
its own; what the report called verified while the model was wrong is pinned here, built without a mutated pass.

Found: a decoder's key/value cache is not compared at padded positions, since no real token attends there; a finite
value there was hidden however large. A rewrite that wrote the mask's fill (float32's lowest) into
the cache's padded slots was verified, and the next generation step, fed that cache as its past, gave the padded row
other logits: ``q . k`` of such a key overflows to an infinity that no additive mask takes back (fixed: a padded
cache value past 16 times the original's largest in that cache, or 1, is compared).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from tests.helpers import optimize_with_rewrite

_WIDTH, _VOCAB = 4, 16
_LOWEST = float(np.finfo(np.float32).min)


def _tiny_decoder() -> onnx.ModelProto:
    """One attention head over a key/value cache: ``present = Concat(past, new, axis=2)``, scores plus the padding
    mask's additive bias (float32's lowest where the mask is 0), then logits over a 16-token vocabulary."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int, gain: float = 1.0) -> onnx.TensorProto:
        return numpy_helper.from_array((gain * rng.standard_normal(shape)).astype(np.float32), name)

    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["x"])]
    for part in ("q", "k", "v"):
        nodes += [
            helper.make_node("MatMul", ["x", f"W{part}"], [f"{part}_flat"]),
            helper.make_node("Unsqueeze", [f"{part}_flat", "one_axis"], [f"{part}_new"]),
        ]
    nodes += [
        helper.make_node("Concat", ["past_key_values.0.key", "k_new"], ["present.0.key"], axis=2),
        helper.make_node("Concat", ["past_key_values.0.value", "v_new"], ["present.0.value"], axis=2),
        helper.make_node("Transpose", ["present.0.key"], ["key_t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q_new", "key_t"], ["raw_scores"]),
        helper.make_node("Mul", ["raw_scores", "scale"], ["scores"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "mask_float"], ["padded"]),
        helper.make_node("Mul", ["padded", "lowest"], ["bias_flat"]),
        helper.make_node("Unsqueeze", ["bias_flat", "bias_axes"], ["bias"]),
        helper.make_node("Add", ["scores", "bias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "present.0.value"], ["context"]),
        helper.make_node("Squeeze", ["context", "one_axis"], ["context_flat"]),
        helper.make_node("MatMul", ["context_flat", "Wo"], ["logits"]),
    ]
    cache = ["batch", 1, "past_sequence", _WIDTH]
    present = ["batch", 1, "total_sequence", _WIDTH]
    graph = helper.make_graph(
        nodes,
        "tiny_decoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
            helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, cache),
            helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT, cache),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", _VOCAB]),
            helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, present),
            helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, present),
        ],
        [
            weight("E", _VOCAB, _WIDTH),
            *(weight(f"W{part}", _WIDTH, _WIDTH, gain=4.0) for part in ("q", "k", "v")),
            weight("Wo", _WIDTH, _VOCAB),
            numpy_helper.from_array(np.array([1], np.int64), "one_axis"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "bias_axes"),
            numpy_helper.from_array(np.array(0.5, np.float32), "scale"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(_LOWEST, np.float32), "lowest"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fill_padded_keys(fill: float):
    """The wrong rewrite: ``present.0.key + (1 - mask) * fill``, the cache's padded slots given the mask's fill."""

    def rewrite(model: ir.Model) -> None:
        graph = model.graph
        present = next(value for value in graph.outputs if value.name == "present.0.key")
        mask = next(value for value in graph.inputs if value.name == "attention_mask")

        def constant(name: str, array: np.ndarray) -> ir.Value:
            value = ir.Value(name=name, const_value=ir.tensor(array))
            graph.register_initializer(value)
            return value

        cast = ir.node("Cast", [mask], {"to": ir.DataType.FLOAT})
        padded = ir.node("Sub", [constant("fill.one", np.array(1, np.float32)), cast.outputs[0]])
        spread = ir.node("Unsqueeze", [padded.outputs[0], constant("fill.axes", np.array([1, 3], np.int64))])
        filled = ir.node("Mul", [spread.outputs[0], constant("fill.value", np.array(fill, np.float32))])
        added = ir.node("Add", [present, filled.outputs[0]])
        graph.extend([cast, padded, spread, filled, added])
        index = list(graph.outputs).index(present)
        present.name = "present.0.key.unfilled"
        added.outputs[0].name = "present.0.key"
        added.outputs[0].shape, added.outputs[0].dtype = present.shape, present.dtype
        graph.outputs[index] = added.outputs[0]

    return rewrite


def _next_step_logits(model: onnx.ModelProto) -> np.ndarray:
    """The padded row's logits one generation step after a left-padded prefill, its presents fed back as pasts."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], np.int64)
    empty = np.zeros((2, 1, 0, _WIDTH), np.float32)
    ids = np.array([[3, 5, 7, 9, 11], [0, 0, 2, 4, 6]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
    _, key, value = session.run(None, {**feeds, "past_key_values.0.key": empty, "past_key_values.0.value": empty})
    step = {"input_ids": np.array([[1], [3]], np.int64), "attention_mask": np.ones((2, 6), np.int64)}
    step["attention_mask"][1, :2] = 0
    (logits, *_) = session.run(None, {**step, "past_key_values.0.key": key, "past_key_values.0.value": value})
    return logits[1]


def test_a_cache_holding_the_masks_fill_at_padded_positions_is_rolled_back(tmp_path):
    """A rewrite that adds the mask's fill (float32's lowest) to the key cache's padded slots changes the next step's
    logits on the padded row, though no real token attends there: q . k of such a key overflows to an infinity."""
    original = _tiny_decoder()
    wrong = ir.from_proto(original)
    _fill_padded_keys(_LOWEST)(wrong)
    assert not np.allclose(_next_step_logits(ir.to_proto(wrong)), _next_step_logits(original), atol=1e-3)
    record = optimize_with_rewrite(original, _fill_padded_keys(_LOWEST), tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "present.0.key" in record.detail


def test_a_cache_differing_at_padded_positions_by_ordinary_values_is_still_hidden(tmp_path):
    """Padded slots stay don't-care at ordinary magnitudes: what a kernel caches for a query that sees no key is not
    defined, and no real token reads it (the safe side of the bound is not a rollback of every fused attention)."""
    record = optimize_with_rewrite(_tiny_decoder(), _fill_padded_keys(0.5), tmp_path).passes[-1]
    assert record.status == STATUS_APPLIED, (record.status, record.detail)

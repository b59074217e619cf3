"""Review s57 (attention masks): pack-qkv read a mask's kind at 7 and 13 tokens and at lengths from 8 on only, so
a mask that is bidirectional up to a short length (``S <= 4``) and causal from there was packed with
``unidirectional=1`` and reported verified, wrong at 2-4 tokens. Lengths from 2 to 8 are probed too."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.attention import AttentionFusion
from passes.fusion.packed_attention import PackedAttentionFusion, _mask_kind

HIDDEN, HEADS = 8, 2
FLOAT_MIN = float(np.finfo(np.float32).min)


def _model(switch: int | None) -> ir.Model:
    """One self-attention block; its mask is causal + padding, or padding alone while ``S <= switch``."""
    rng = np.random.default_rng(0)
    head = HIDDEN // HEADS
    arrays = {
        "E": rng.standard_normal((32, HIDDEN)),
        "Wo": rng.standard_normal((HIDDEN, HIDDEN)) * 0.5,
        "scale": np.array(head**-0.5),
        "one_f": np.array(1.0),
        "fill": np.array(FLOAT_MIN),
    }
    for p in "qkv":
        arrays[f"W{p}"] = rng.standard_normal((HIDDEN, HIDDEN)) * 0.5
    constants = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()]
    ints = {"i0": 0, "i1": 1, "switch": switch or 0}
    constants += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    shapes = {"ax1": [1], "ax12": [1, 2], "heads": [0, 0, HEADS, head], "merge": [0, 0, HIDDEN]}
    constants += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in shapes.items()]
    n = helper.make_node
    nodes = [
        n("Gather", ["E", "input_ids"], ["x"]),
        *(n("MatMul", ["x", f"W{p}"], [f"{p}3"]) for p in "qkv"),
        *(n("Reshape", [f"{p}3", "heads"], [f"{p}h"]) for p in "qkv"),
        n("Transpose", ["qh"], ["q"], perm=[0, 2, 1, 3]),
        n("Transpose", ["kh"], ["kt"], perm=[0, 2, 3, 1]),
        n("Transpose", ["vh"], ["v"], perm=[0, 2, 1, 3]),
        n("MatMul", ["q", "kt"], ["qk"]),
        n("Mul", ["qk", "scale"], ["scores"]),
        # The mask: keys up to the query's position (causal) among the real tokens.
        n("Shape", ["input_ids"], ["ids_shape"]),
        n("Gather", ["ids_shape", "i1"], ["S"]),
        n("Range", ["i0", "S", "i1"], ["pos"]),
        n("Unsqueeze", ["pos", "ax1"], ["qpos"]),
        n("LessOrEqual", ["pos", "qpos"], ["causal"]),
        n("Cast", ["attention_mask"], ["mb"], to=TensorProto.BOOL),
        n("Unsqueeze", ["mb", "ax12"], ["mb4"]),
        n("And", ["causal", "mb4"], ["causal_padding"]),
        n("Cast", ["causal_padding"], ["allowed"], to=TensorProto.FLOAT),
    ]
    if switch is not None:  # padding alone (every key of the row) while S <= switch
        nodes += [
            n("Or", ["causal", "mb4"], ["any"]),
            n("And", ["mb4", "any"], ["padding"]),
            n("Cast", ["padding"], ["padding_f"], to=TensorProto.FLOAT),
            n("LessOrEqual", ["S", "switch"], ["short"]),
            n("Where", ["short", "padding_f", "allowed"], ["kept"]),
        ]
    else:
        nodes.append(n("Identity", ["allowed"], ["kept"]))
    nodes += [
        n("Sub", ["one_f", "kept"], ["masked"]),
        n("Mul", ["masked", "fill"], ["bias"]),
        n("Add", ["scores", "bias"], ["logits"]),
        n("Softmax", ["logits"], ["probs"], axis=-1),
        n("MatMul", ["probs", "v"], ["o4"]),
        n("Transpose", ["o4"], ["o4t"], perm=[0, 2, 1, 3]),
        n("Reshape", ["o4t", "merge"], ["o3"]),
        n("MatMul", ["o3", "Wo"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "short_switch",
        [
            helper.make_tensor_value_info(name, TensorProto.INT64, ["B", "S"])
            for name in ("input_ids", "attention_mask")
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "S", HIDDEN])],
        constants,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def _bias(model: ir.Model) -> ir.Value:
    return next(node for node in model.graph if node.op_type == "Mul" and node.outputs[0].name == "bias").outputs[0]


def _run(model: ir.Model, feeds: dict) -> np.ndarray:
    proto = ir.to_proto(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_a_mask_whose_kind_switches_below_eight_tokens_is_not_read_as_causal():
    model = _model(switch=4)
    reason = _mask_kind(model, _bias(model))
    assert isinstance(reason, str) and "implies at 2 tokens" in reason


def test_a_plain_causal_padding_mask_is_still_read_as_causal():
    model = _model(switch=None)
    found = _mask_kind(model, _bias(model))
    assert not isinstance(found, str)
    mask, causal, _ = found
    assert mask.name == "attention_mask" and causal


def test_the_packed_result_agrees_with_the_original_at_short_lengths():
    model = _model(switch=4)
    fused = AttentionFusion()(model.clone()).model
    packed = PackedAttentionFusion()(fused).model
    rng = np.random.default_rng(1)
    for length in (2, 3, 4, 5, 9):
        mask = np.ones((3, length), np.int64)
        mask[0, 0] = mask[1, -1] = 0
        feeds = {"input_ids": rng.integers(0, 32, (3, length)), "attention_mask": mask}
        expected, actual = _run(model, feeds), _run(packed, feeds)
        real = mask.astype(bool)
        np.testing.assert_allclose(actual[real], expected[real], rtol=1e-4, atol=1e-5, err_msg=f"{length} tokens")

"""fuse-embed-layer-norm: BERT embedding lookups + LayerNorm into EmbedLayerNormalization."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.embed_layer_norm import EmbedLayerNormFusion
from tests.helpers import assert_same_outputs, op_types

VOCAB, POSITIONS, HIDDEN = 20, 16, 8


def _embedding_model(
    *, position_offset: int = 0, with_segment: bool = True, position_buffer: np.ndarray | None = None
) -> ir.Model:
    """word[input_ids] + segment[token_type_ids] + position[buffer[:S]], then LayerNorm.

    ``buffer`` is ``arange(POSITIONS) + position_offset``, or ``position_buffer`` (``[1, P]``, P table rows).
    """
    rng = np.random.default_rng(0)
    if position_buffer is None:
        position_buffer = (np.arange(POSITIONS) + position_offset).reshape(1, -1)
    weights = {
        "word": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32),
        "position": rng.standard_normal((position_buffer.shape[1], HIDDEN)).astype(np.float32),
        "segment": rng.standard_normal((2, HIDDEN)).astype(np.float32),
        "gamma": rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32),
        "beta": rng.standard_normal(HIDDEN).astype(np.float32),
        # The exporter's position_ids buffer, sliced to the sequence length.
        "position_buffer": position_buffer.astype(np.int64),
        "zero": np.array([0], np.int64),
        "one": np.array([1], np.int64),
    }
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Slice", ["ids_shape", "one", "ids_end"], ["seq"]),
        helper.make_node("Slice", ["position_buffer", "zero", "seq", "one"], ["position_ids"]),
        helper.make_node("Gather", ["word", "input_ids"], ["w"]),
        helper.make_node("Gather", ["position", "position_ids"], ["p"]),
        helper.make_node("Add", ["w", "p"], ["wp"]),
    ]
    weights["ids_end"] = np.array([2], np.int64)
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"])]
    total = "wp"
    if with_segment:
        nodes += [
            helper.make_node("Gather", ["segment", "token_type_ids"], ["s"]),
            helper.make_node("Add", ["s", "wp"], ["wps"]),
        ]
        inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["B", "S"]))
        total = "wps"
    nodes.append(helper.make_node("LayerNormalization", [total, "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12))
    graph = helper.make_graph(
        nodes,
        "embeddings",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", HIDDEN])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _inputs(with_segment: bool = True, sequence: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {"input_ids": rng.integers(0, VOCAB, (2, sequence))}
    if with_segment:
        feeds["token_type_ids"] = rng.integers(0, 2, (2, sequence))
    return feeds


@pytest.mark.parametrize("with_segment", [True, False], ids=["bert", "distilbert"])
def test_embedding_lookups_and_layer_norm_are_fused(with_segment):
    model = _embedding_model(with_segment=with_segment)
    after = EmbedLayerNormFusion()(model.clone()).model
    assert "EmbedLayerNormalization" in op_types(after)
    assert not {"Gather", "LayerNormalization"} & set(op_types(after))
    assert_same_outputs(model, after, _inputs(with_segment), rtol=1e-4, atol=1e-5)


def test_positions_counted_from_the_mask_are_left_alone():
    # cumsum(mask) - 1 equals 0..S-1 only without left padding; the op would assume it always does.
    model = _embedding_model(with_segment=False)
    graph = model.graph
    position_gather = next(n for n in graph if n.op_type == "Gather" and n.inputs[0].name == "position")
    mask = ir.Value(name="attention_mask", shape=ir.Shape(["B", "S"]), type=ir.TensorType(ir.DataType.INT64))
    graph.inputs.append(mask)
    cumsum = ir.node("CumSum", [mask, graph.initializers["one"]])
    positions = ir.node("Sub", [cumsum.outputs[0], graph.initializers["one"]])
    graph.insert_before(position_gather, [cumsum, positions])
    position_gather.replace_input_with(1, positions.outputs[0])
    assert not EmbedLayerNormFusion()(model).modified


def test_shifted_position_ids_are_left_alone():
    # RoBERTa-style positions start after the padding index: the op's default 0..S-1 would be wrong.
    model = _embedding_model(position_offset=2)
    assert not EmbedLayerNormFusion()(model).modified


def test_a_position_buffer_is_checked_at_its_full_length():
    # The buffer is 0..S-1 on a short probe but wraps around at 128 (a model trained on 128
    # positions reusing them): the op's 0..S-1 would be wrong from 128 tokens on.
    model = _embedding_model(position_buffer=(np.arange(512) % 128).reshape(1, -1))
    result = EmbedLayerNormFusion()(model.clone())
    assert not result.modified
    assert result.refusals == [
        "1 of 1 LayerNormalization over embeddings left unfused: computed position ids are not 0..S-1 at 512 tokens"
    ]
    assert_same_outputs(model, result.model, _inputs(sequence=300), rtol=1e-4, atol=1e-5)


def test_a_position_buffer_counting_to_its_end_is_fused_up_to_it():
    # HF's position_ids buffer: 0..P-1. Past P tokens the original fails (a [1, P] slice), so P is the limit.
    model = _embedding_model(position_buffer=np.arange(512).reshape(1, -1))
    after = EmbedLayerNormFusion()(model.clone()).model
    assert "EmbedLayerNormalization" in op_types(after)
    for sequence in (6, 300, 512):
        assert_same_outputs(model, after, _inputs(sequence=sequence), rtol=1e-4, atol=1e-5)

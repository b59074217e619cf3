"""Review s67 late4: the session's changes to generated inputs (masks that pad where true, one-hot tables, image
batches), padding read from the original, and the batched draft over a long past.

1. Fixed. A mask that pads where true (PyTorch's key padding mask, ``optimizer.inputs.pads_where_true``) was generated
   as zeros in every binding and never padded a position: a rewrite that dropped it (``Where(src_mask, -1e9, scores)``
   → ``scores``; ``memory * Cast(Not(src_mask))`` → ``memory``) verified. It is now the other convention's mask
   inverted: true on the last row's final quarter at two rows or more.
2. Fixed. ``scores - 1e9 * Cast(Not(mask))`` (Hugging Face's convention, true attends) was read as PyTorch's: a
   ``Mul`` by any constant that is not a fill counted as a multiplication of data. Such a constant is inconclusive now.
3. Fixed. An input compared by ``Equal`` with a small dense table of special ids (``[101, 102]``, ``[0, 1, 2]``) was
   drawn over those values alone: every token special, a pooled output of zeros, and a rewrite of the projection
   verified. It is drawn over the table's values and one past them that no class matches.
4. Fixed (review s68). A true-pads mask was no padding mask to ``optimizer.padding``, so no set padded a row's start,
   and a rewrite that reads the mask as key lengths (padding at the end) verified. ``mask_inputs`` now returns it as a
   ``PadsWhereTrue``, read inverted.
5. Fixed. A tf2onnx NHWC image with dynamic height and width (``[unk__614, unk__615, unk__616, 3]``) was not taken
   for an image by ``image_batch_dims`` (channels on axis 1 only): 128 images, then 129, verified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import alternate_binding, bind_dims, make_inputs
from tests.helpers import optimize_with_rewrite
from tests.test_review_s67_hunt import _attention_under_padding_mask, _pooled_by_padding_mask, _scaled


def _mask_dropped(model: ir.Model) -> None:
    """The attention's Where(src_mask, -1e9, scores) replaced by its scores: the key padding mask ignored."""
    where = next(node for node in model.graph if node.op_type == "Where")
    where.outputs[0].replace_all_uses_with(where.inputs[2])
    model.graph.remove(where, safe=True)


def test_a_rewrite_that_drops_a_true_pads_mask_is_rolled_back(tmp_path: Path):
    report = optimize_with_rewrite(_attention_under_padding_mask(), _mask_dropped, tmp_path)
    record = report.passes[0]
    assert record.status == "rolled back", (record.status, record.detail)


def test_a_rewrite_that_drops_a_true_pads_mask_from_a_pooled_mean_is_rolled_back(tmp_path: Path):
    def unmasked(model: ir.Model) -> None:
        # memory * Cast(Not(src_mask)) read as memory: every position pooled, padded or not.
        mul = next(node for node in model.graph if node.op_type == "Mul")
        mul.outputs[0].replace_all_uses_with(mul.inputs[0])
        model.graph.remove(mul, safe=True)

    report = optimize_with_rewrite(_pooled_by_padding_mask(), unmasked, tmp_path)
    record = report.passes[0]
    assert record.status == "rolled back", (record.status, record.detail)


def _subtracted_mask(width: int = 8) -> onnx.ModelProto:
    """Hugging Face's boolean mask (true attends) written as a penalty subtracted from the scores: ``scores - 1e9 *
    Cast(Not(attention_mask))``. The ``Mul`` by a positive constant is no multiplication of data."""
    rng = np.random.default_rng(8)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["hidden", "query"], ["q"]),
            helper.make_node("Transpose", ["memory"], ["keys"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["q", "keys"], ["scores"]),
            helper.make_node("Not", ["attention_mask"], ["padded"]),
            helper.make_node("Unsqueeze", ["padded", "middle"], ["padded3"]),
            helper.make_node("Cast", ["padded3"], ["padded_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["padded_float", "penalty"], ["bias"]),
            helper.make_node("Sub", ["scores", "bias"], ["masked"]),
            helper.make_node("Softmax", ["masked"], ["weights"], axis=-1),
            helper.make_node("MatMul", ["weights", "memory"], ["context"]),
        ],
        "subtracted",
        [
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", 1, width]),
            helper.make_tensor_value_info("memory", TensorProto.FLOAT, ["batch", "src_len", width]),
            helper.make_tensor_value_info("attention_mask", TensorProto.BOOL, ["batch", "src_len"]),
        ],
        [helper.make_tensor_value_info("context", TensorProto.FLOAT, ["batch", 1, width])],
        [
            numpy_helper.from_array(np.array([1], np.int64), "middle"),
            numpy_helper.from_array(np.array(1e9, np.float32), "penalty"),
            numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "query"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_negated_mask_times_a_positive_penalty_attends_where_true():
    drawn = make_inputs(ir.from_proto(_subtracted_mask()), {"batch": 2, "src_len": 8})["attention_mask"]
    assert drawn.all(), drawn


def _nhwc_model(channels: int = 3) -> onnx.ModelProto:
    """A Keras image model as tf2onnx writes it: ``input [unk__614, unk__615, unk__616, 3]`` (NHWC, height and width
    dynamic), transposed to NCHW for a ``Conv``."""
    weight = numpy_helper.from_array(np.ones((4, channels, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["nchw", "w"], ["y"], pads=[1, 1, 1, 1]),
        ],
        "keras_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["unk__614", "unk__615", "unk__616", channels])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["unk__614", 4, "unk__615", "unk__616"])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_tf2onnx_nhwc_image_batch_is_bound_as_a_batch():
    model = ir.from_proto(_nhwc_model())
    assert bind_dims(model)["unk__614"] == 1
    assert alternate_binding(model, longer=True)["unk__614"] == 2  # a batch grows by one


def test_a_wide_fixed_last_axis_leaves_a_guessed_leading_dim_a_length():
    """The near miss: a rank-4 input whose last axis holds 16 fixed features is no NHWC image."""
    model = ir.from_proto(_nhwc_model(channels=16))
    assert bind_dims(model)["unk__614"] == 128


def _pooled_without_special_tokens(specials=(101, 102), width: int = 8) -> onnx.ModelProto:
    """A pooling head that leaves out special tokens (BERT's [CLS] 101 and [SEP] 102): ``input_ids`` index no table
    here, they are compared by ``Equal`` with the special ids, and the tokens that match none are summed."""
    rng = np.random.default_rng(9)
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["input_ids", "last"], ["ids3"]),
            helper.make_node("Equal", ["ids3", "specials"], ["matches"]),
            helper.make_node("Cast", ["matches"], ["matches_float"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", ["matches_float"], ["special"], axes=[-1], keepdims=1),
            helper.make_node("Sub", ["one", "special"], ["keep"]),
            helper.make_node("MatMul", ["token_embeddings", "projection"], ["projected"]),
            helper.make_node("Mul", ["projected", "keep"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "sequence_axis"], ["pooled"], keepdims=0),
        ],
        "pooling",
        [
            helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "sequence", width]),
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", width])],
        [
            numpy_helper.from_array(np.array([-1], np.int64), "last"),
            numpy_helper.from_array(np.array([1], np.int64), "sequence_axis"),
            numpy_helper.from_array(np.array(specials, np.int64), "specials"),
            numpy_helper.from_array(np.array(1, np.float32), "one"),
            numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "projection"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("specials", [(101, 102), (0, 1, 2)])
def test_ids_compared_with_special_ids_are_not_all_special(specials):
    drawn = make_inputs(ir.from_proto(_pooled_without_special_tokens(specials)), {"batch": 2, "sequence": 64})
    special = np.isin(drawn["input_ids"], specials)
    assert special.any() and not special.all(), np.unique(drawn["input_ids"])


def test_a_rewrite_of_the_tokens_a_special_id_check_keeps_is_rolled_back(tmp_path: Path):
    report = optimize_with_rewrite(_pooled_without_special_tokens(), _scaled("projection"), tmp_path)
    record = report.passes[0]
    assert record.status == "rolled back", (record.status, record.detail)


def _mask_read_as_lengths(model: ir.Model) -> None:
    """The key padding mask read as each row's count of real keys, padding assumed at the end (as a kernel that takes
    key lengths reads it): exact where rows are padded on the right, wrong for a row padded at its start."""
    graph = model.graph
    where = next(node for node in graph if node.op_type == "Where")
    mask = next(value for value in graph.inputs if value.name == "src_mask")

    def add(op: str, inputs: list, **attributes) -> ir.Value:
        node = ir.node(op, inputs, attributes=attributes)
        graph.insert_before(where, node)
        return node.outputs[0]

    def constant(array: np.ndarray) -> ir.Value:
        return add("Constant", [], value=ir.tensor(array))

    flags = add("Cast", [mask], to=ir.DataType.INT64)
    padded = add("ReduceSum", [flags, constant(np.array([1]))], keepdims=1)
    length = add("Gather", [add("Shape", [mask]), constant(np.array(1))], axis=0)
    count = add("Sub", [length, padded])  # [batch, 1]: real keys per row
    positions = add("Range", [constant(np.array(0)), length, constant(np.array(1))])
    past_the_count = add("Not", [add("Less", [positions, count])])  # [batch, src_len]
    where.replace_input_with(0, add("Unsqueeze", [past_the_count, constant(np.array([1]))]))


def test_a_rewrite_that_reads_a_true_pads_mask_as_key_lengths_is_rolled_back(tmp_path: Path):
    report = optimize_with_rewrite(_attention_under_padding_mask(), _mask_read_as_lengths, tmp_path)
    record = report.passes[0]
    assert record.status == "rolled back", (record.status, record.detail)

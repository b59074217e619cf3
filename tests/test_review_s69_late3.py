"""Review s69 (late 3): this session's merges on tokenizer masks (6a99b7b) and the last review's fixes (3c63fd0).

1. Fixed: compare's accuracy figures and the budgets counted the positions a 2-D float mask the graph adds to the
   scores pads (``padding.AdditiveMask``: 0 attends, float's lowest pads), where verification hides them: an AFTER
   equal to BEFORE at every real token and zero at the padded ones had a max error of 0.19 on a tokenizer's text.
   ``padding._integer_masks`` counted integer masks, boolean ones that pad where true and a decoder's float 0/1 one,
   not an additive one, though nothing but a padding mask is added to the scores.
2. Fixed: codes that reach an ``ai.onnx.ml`` lookup through a ``Cast`` (int32 codes, or a float column, cast to the
   int64 a ``LabelEncoder`` takes) were drawn 0 or 1, none of its keys: every row mapped to the default, and a
   rewrite that swapped two names of the table was applied as verified. ``inputs._lookup_keys`` followed only ops
   that move elements; it follows a ``Cast`` now, keeping the keys the input's type holds exactly.
3. Fixed: a saturated head behind a ``Split`` (YOLOv5's head splits its Sigmoid into xy, wh and confidences, then
   joins them again) was no head: the walk from the output stopped at the Split, and a rewrite that doubled the
   logits was applied as verified. A Split's part is a selection of its input, as a Slice is.
4. Fixed: scikit-learn's ``OneHotEncoder()`` as skl2onnx writes it (each column taken by a ``Gather`` along axis 1, a
   float one cast to int64, into its own ``OneHotEncoder`` of ``zeros=0``, which fails on a value none of its cats)
   could not be verified on generated inputs: "ONNX Runtime cannot run the input model on generated inputs (...
   Unknown Category and zeros = 0)". A value outside the keys was drawn on purpose (``_with_unknown``), no column was
   read through its ``Gather`` (text from random words, floats normal), and one lookup's keys served every column.
   Nor was a column a ``ColumnTransformer`` takes by an ``ArrayFeatureExtractor``. Now each column is drawn from its
   own lookup's keys, and no unknown where a lookup fails on one.
5. Fixed: codes a lookup maps that also index a table (an id both embedded and named) were drawn over the table
   alone, mostly none of the lookup's keys: a swapped name table verified. Half of them are its keys within the table
   now, half drawn over the table (its other rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optimizer.compare.comparison import compare
from optimizer.report import STATUS_ROLLED_BACK
from tests.helpers import optimize_with_rewrite
from tests.test_review_s68_late10 import _with_tail
from tests.test_review_s68_vacuous import _classifier, _doubled_logits
from tests.test_review_s69_late2 import _CODES, _swap_two_names, _tensor
from tests.test_review_s69_tokmask import _additive_2d_encoder, _settings

README = Path(__file__).resolve().parents[1] / "README.md"


def _zeroed_where_padded(source: str, path: Path) -> Path:
    """``source`` (``_additive_2d_encoder``) with its logits zeroed where its additive mask pads (below -1), as they
    were at every real token."""
    model = onnx.load(source)
    for node in model.graph.node:
        node.output[:] = ["logits_raw" if name == "logits" else name for name in node.output]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(-1.0, np.float32), "minus_one"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), "last_axis"))
    model.graph.node.extend(
        [
            helper.make_node("Greater", ["attention_mask", "minus_one"], ["real"]),
            helper.make_node("Cast", ["real"], ["real_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["real_f", "last_axis"], ["real_3"]),
            helper.make_node("Mul", ["logits_raw", "real_3"], ["logits"]),
        ]
    )
    onnx.save(model, path)
    return path


def test_compare_leaves_an_additive_masks_padding_out_of_the_accuracy(tmp_path: Path):
    # Before: max_abs_error 0.19 on 'logits', the padded positions counted (verification hid them).
    before = _additive_2d_encoder(tmp_path / "before.onnx")
    after = _zeroed_where_padded(before, tmp_path / "after.onnx")
    mask = np.zeros((2, 6), np.float32)
    mask[1, 4:] = np.finfo(np.float32).min
    np.savez(tmp_path / "text.npz", input_ids=np.random.default_rng(0).integers(0, 64, (2, 6)), attention_mask=mask)
    report = compare(before, after, settings=_settings(), inputs=tmp_path / "text.npz")
    (provider,) = report.providers
    (logits,) = [row for row in provider.accuracy if row.name == "logits"]
    assert logits.max_abs_error == 0, provider.accuracy_data
    assert "positions the attention mask pads left out of 'logits'" in provider.accuracy_data
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "a 2-D float one the graph adds to the scores, 0 where it attends (counted until" in text


def _cast_codes(dtype: int) -> onnx.ModelProto:
    """Codes of ``dtype`` cast to int64 and mapped to names by a ``LabelEncoder`` of ``keys_int64s`` (ONNX Runtime's
    takes int64 alone: int32 codes and a float column are cast to it first)."""
    nodes = [
        helper.make_node("Cast", ["codes"], ["codes64"], to=TensorProto.INT64),
        helper.make_node(
            "LabelEncoder",
            ["codes64"],
            ["found"],
            domain="ai.onnx.ml",
            keys_int64s=_CODES,
            values_strings=["a", "b", "c", "d", "e"],
            default_string="?",
        ),
        helper.make_node("Identity", ["found"], ["names"]),
    ]
    graph = helper.make_graph(
        nodes, "cast_codes", [_tensor("codes", ("n", 3), dtype)], [_tensor("names", ("n", 3), TensorProto.STRING)]
    )
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 2)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


@pytest.mark.parametrize("dtype", [TensorProto.INT32, TensorProto.FLOAT], ids=["int32", "float"])
def test_a_rewrite_wrong_for_cast_codes_is_caught_on_generated_codes(tmp_path: Path, dtype: int):
    # Before: applied, every generated code (0 or 1, or normal floats cast to 0, 1, -1) unknown, every name "?".
    record = optimize_with_rewrite(_cast_codes(dtype), _swap_two_names, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_a_wrong_rewrite_behind_a_split_saturated_head_is_rolled_back(tmp_path: Path):
    # YOLOv5's head: xy, wh, conf = sigmoid(x).split((2, 2, nc + 1), -1), xy and wh scaled, all joined again. Before:
    # the walk from the output stopped at the Split, and doubled logits behind the saturated Sigmoid were applied.
    model = _classifier("Sigmoid")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([4, 6], np.int64), "parts"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    tail = [
        helper.make_node("Split", ["y0", "parts"], ["boxes", "confidences"], axis=1),
        helper.make_node("Mul", ["boxes", "two"], ["scaled"]),
        helper.make_node("Concat", ["scaled", "confidences"], ["y"], axis=1),
    ]
    record = optimize_with_rewrite(_with_tail(model, tail, TensorProto.FLOAT), _doubled_logits, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "the logits 'logits' (Sigmoid behind output 'y' is saturated" in record.detail, record.detail


def _one_hot_columns(dtype: int, *, extracted: bool = False) -> onnx.ModelProto:
    """scikit-learn's ``OneHotEncoder()`` over two columns as skl2onnx writes it: each column taken by a ``Gather``
    along axis 1 (a float one cast to int64) into its own ``OneHotEncoder`` of ``zeros=0`` (``handle_unknown="error"``,
    the default: ONNX Runtime fails on a value none of its cats), joined, then a linear model's weights; ``extracted``:
    the two columns are columns 3 and 1 of four, taken by an ``ArrayFeatureExtractor`` (a ``ColumnTransformer``'s)."""
    if dtype == TensorProto.STRING:
        columns = ({"cats_strings": ["red", "green", "blue"]}, {"cats_strings": ["small", "large"]})
    else:
        columns = ({"cats_int64s": [3, 7, 9]}, {"cats_int64s": [100, 200]})
    nodes, encoded = [], []
    if extracted:
        nodes.append(helper.make_node("ArrayFeatureExtractor", ["x", "taken"], ["xs"], domain="ai.onnx.ml"))
    for place, cats in enumerate(columns):
        nodes.append(helper.make_node("Gather", ["xs" if extracted else "x", f"column{place}"], [f"x{place}"], axis=1))
        read = f"x{place}"
        if dtype != TensorProto.STRING:
            nodes.append(helper.make_node("Cast", [read], [f"x{place}_int"], to=TensorProto.INT64))
            read = f"x{place}_int"
        nodes.append(helper.make_node("OneHotEncoder", [read], [f"hot{place}"], domain="ai.onnx.ml", zeros=0, **cats))
        encoded.append(f"hot{place}")
    nodes += [
        helper.make_node("Concat", encoded, ["hot"], axis=-1),
        helper.make_node("Reshape", ["hot", "flat"], ["hot2"]),
        helper.make_node("Cast", ["hot2"], ["features"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["features", "w"], ["y"]),
    ]
    initializers = [
        onnx.numpy_helper.from_array(np.array([0], np.int64), "column0"),
        onnx.numpy_helper.from_array(np.array([1], np.int64), "column1"),
        onnx.numpy_helper.from_array(np.array([-1, 5], np.int64), "flat"),
        onnx.numpy_helper.from_array(np.arange(10, dtype=np.float32).reshape(5, 2), "w"),
        onnx.numpy_helper.from_array(np.array([3, 1], np.int64), "taken"),
    ]
    graph = helper.make_graph(
        nodes, "one_hot", [_tensor("x", ("n", 4 if extracted else 2), dtype)], [_tensor("y", ("n", 2))], initializers
    )
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _swap_last_two_weight_rows(model: ir.Model) -> None:
    """The weights of the second column's two categories swapped: the same output where that column is never drawn."""
    weights = model.graph.initializers["w"]
    values = weights.const_value.numpy().copy()
    values[[3, 4]] = values[[4, 3]]
    weights.const_value = ir.tensor(values)


@pytest.mark.parametrize(
    ("dtype", "extracted"),
    [(TensorProto.STRING, False), (TensorProto.FLOAT, False), (TensorProto.FLOAT, True)],
    ids=["text", "float", "column transformer"],
)
def test_a_one_hot_encoded_pipeline_runs_on_generated_inputs(tmp_path: Path, dtype: int, extracted: bool):
    # Before: "ONNX Runtime cannot run the input model on generated inputs (... Unknown Category and zeros = 0)": a
    # value none of the cats was drawn on purpose, and the second column was drawn from the first one's cats (text),
    # or normal floats were (none of them read through the Cast, nor through an ArrayFeatureExtractor).
    model = _one_hot_columns(dtype, extracted=extracted)
    record = optimize_with_rewrite(model, _swap_last_two_weight_rows, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_a_rewrite_wrong_for_codes_that_also_index_is_caught(tmp_path: Path):
    # Before: applied; codes drawn over the 600 rows of the table that they also index, none of the five keys.
    table = np.random.default_rng(0).standard_normal((600, 4)).astype(np.float32)
    nodes = [
        helper.make_node(
            "LabelEncoder",
            ["codes"],
            ["found"],
            domain="ai.onnx.ml",
            keys_int64s=_CODES,
            values_strings=["a", "b", "c", "d", "e"],
            default_string="?",
        ),
        helper.make_node("Identity", ["found"], ["names"]),
        helper.make_node("Gather", ["table", "codes"], ["embedded"]),
    ]
    outputs = [_tensor("names", ("n", 3), TensorProto.STRING), _tensor("embedded", ("n", 3, 4))]
    graph = helper.make_graph(
        nodes,
        "named_ids",
        [_tensor("codes", ("n", 3), TensorProto.INT64)],
        outputs,
        [onnx.numpy_helper.from_array(table, "table")],
    )
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 2)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    record = optimize_with_rewrite(model, _swap_two_names, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail

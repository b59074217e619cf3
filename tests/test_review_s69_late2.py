"""Review s69 (late 2): this session's merges on saturated heads (f0d3504) and the real-model hunt (de7664a), broken.

1. Fixed: a model whose ``If`` branch reads an outer value that a later node of the main graph computes was refused
   ("rejected by onnx's checker: Nodes in a graph must be topologically sorted"), though ONNX Runtime sorts and runs
   it: ``model_io._nodes_out_of_order`` looked for a read of a value computed later only within each graph's own
   nodes, so the model was never sorted.
2. Fixed: a per-token text output (a tagger's labels, ``string [batch, sequence]``) beside a padding mask was scored
   over every position, its padding counted as agreement (7/8 where one of three real labels changed), though the
   README and ``padding.unpadded`` say text is masked there: ``padded_outputs`` took numbers only.
3. Fixed: an integer (or float) input that an ``ai.onnx.ml`` lookup maps (a ``LabelEncoder`` of ``keys_int64s``, a
   ``CategoryMapper`` of codes to names) was drawn 0 or 1, none of its keys: every row mapped to the default, and a
   rewrite that swapped two of its names verified. Such inputs are drawn from the lookup's keys now, as string inputs
   were (``_string_keys``, which also missed a lookup behind a ``Reshape`` of its input). So are the tokens a
   ``TfIdfVectorizer`` counts (its pool): none drawn, every count was 0 and a rewrite that swapped two rows of the
   weights after it was applied (with a warning that every output was constant).
4. Fixed: a saturated head behind a ``Mul`` of two computed tensors (a detector's confidence, objectness times class
   scores) was no head: the walk from the output passed a ``Mul`` only by a constant, and a rewrite that doubled the
   logits behind both Sigmoids was applied as verified at ``max |Δ|`` 0. Both factors are walked now; a correct
   fusion of ``x * sigmoid(1.702 x)`` into ``QuickGelu`` over saturated values is still applied (a guard). So was a
   head behind a comparison with a constant threshold (``probs > 0.5``, a multi-label classifier's labels): a rewrite
   that moved one class's logit by 5 was applied, though it flips that label wherever the logit lies within 5 of 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from optimizer import api
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from tests.helpers import optimize_with_rewrite
from tests.test_review_s68_late10 import _with_tail
from tests.test_review_s68_vacuous import _classifier, _doubled_logits, _one_class_moved


def _tensor(name: str, shape=("batch", 4), dtype=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def _if_before_its_outer_value() -> onnx.ModelProto:
    """``y = -relu(x) if c else relu(x)``, the ``If`` listed before the ``Relu`` whose output its branches read."""
    then = helper.make_graph([helper.make_node("Neg", ["a"], ["t"])], "then", [], [_tensor("t", None)])
    other = helper.make_graph([helper.make_node("Identity", ["a"], ["e"])], "else", [], [_tensor("e", None)])
    nodes = [
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
        helper.make_node("Relu", ["x"], ["a"]),
    ]
    graph = helper.make_graph(nodes, "late", [_tensor("x"), _tensor("c", (), TensorProto.BOOL)], [_tensor("y")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_an_if_reading_an_outer_value_computed_after_it_is_read_sorted(tmp_path: Path) -> None:
    source, output = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(_if_before_its_outer_value(), source)
    written = source.read_bytes()
    feeds = {"x": np.array([[1, -2, 3, -4]], np.float32), "c": np.array(True)}
    expected = ort.InferenceSession(str(source)).run(None, feeds)[0]  # ONNX Runtime sorts and runs it
    api.optimize(source, output=output)  # before: InvalidModelError, "Nodes in a graph must be topologically sorted"
    onnx.checker.check_model(onnx.load(output))
    assert np.array_equal(ort.InferenceSession(str(output)).run(None, feeds)[0], expected)
    assert source.read_bytes() == written


def _tagger(dtype: int) -> ir.Model:
    """``tags [batch, sequence]`` of ``dtype`` (text: a tagger's labels) beside a padding mask; only the declarations
    are read."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input_ids", "attention_mask"], ["ids"]),
            helper.make_node("Cast", ["ids"], ["tags"], to=dtype),
        ],
        "tagger",
        [_tensor(name, ("batch", "sequence"), TensorProto.INT64) for name in ("input_ids", "attention_mask")],
        [_tensor("tags", ("batch", "sequence"), dtype)],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_text_taggers_agreement_counts_real_tokens_only() -> None:
    from optimizer.accuracy import output_drift

    batch = {
        "input_ids": np.array([[5, 6, 7, 0, 0, 0, 0, 0]], np.int64),
        "attention_mask": np.array([[1, 1, 1, 0, 0, 0, 0, 0]], np.int64),
    }
    before = {"tags": np.array([["B", "I", "O", "O", "O", "O", "O", "O"]], dtype=object)}
    after = {"tags": np.array([["B", "O", "O", "O", "O", "O", "O", "O"]], dtype=object)}
    drift = output_drift([before], [after], [batch], _tagger(TensorProto.STRING))
    assert drift.cosine == pytest.approx(2 / 3)  # before: 7/8, the five padded labels counted as agreeing
    assert drift.worst_cosine == pytest.approx(2 / 3)


_CODES = [100, 205, 310, 415, 520]


def _code_lookup(op: str, moved: bool = False) -> onnx.ModelProto:
    """Codes → names by an ``ai.onnx.ml`` ``op`` (``LabelEncoder`` of ``keys_int64s``, ``CategoryMapper``), the codes
    read directly or (``moved``) through a ``Reshape``."""
    names = ["a", "b", "c", "d", "e"]
    read = "flat" if moved else "codes"
    if op == "LabelEncoder":
        attributes = {"keys_int64s": _CODES, "values_strings": names, "default_string": "?"}
    else:
        attributes = {"cats_int64s": _CODES, "cats_strings": names, "default_string": "?"}
    nodes = [helper.make_node(op, [read], ["found"], domain="ai.onnx.ml", **attributes)]
    nodes.append(helper.make_node("Identity", ["found"], ["names"]))
    initializers = []
    if moved:
        initializers.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), "flat_shape"))
        nodes.insert(0, helper.make_node("Reshape", ["codes", "flat_shape"], ["flat"]))
    graph = helper.make_graph(
        nodes,
        "codes",
        [_tensor("codes", ("n", 3), TensorProto.INT64)],
        [_tensor("names", ("n * 3",) if moved else ("n", 3), TensorProto.STRING)],
        initializers,
    )
    ml = 2 if op == "LabelEncoder" else 1
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", ml)], ir_version=8
    )


def _swap_two_names(model: ir.Model) -> None:
    """The names of codes 205 and 310 swapped: the same output wherever every code is unknown (the default)."""
    node = next(node for node in model.graph if node.domain == "ai.onnx.ml")
    name = "values_strings" if node.op_type == "LabelEncoder" else "cats_strings"
    names = list(node.attributes[name].value)
    names[1], names[2] = names[2], names[1]
    node.attributes[name] = ir.AttrStrings(name, names)


@pytest.mark.parametrize(("op", "moved"), [("LabelEncoder", False), ("CategoryMapper", False), ("LabelEncoder", True)])
def test_a_rewrite_wrong_for_known_codes_is_caught_on_generated_integers(tmp_path: Path, op: str, moved: bool) -> None:
    # Before: applied, every generated code (0 or 1) unknown, every name the default "?" on both sides.
    record = optimize_with_rewrite(_code_lookup(op, moved), _swap_two_names, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def _counted_tokens(kind: str) -> onnx.ModelProto:
    """``counts(tokens) @ w``: a ``TfIdfVectorizer`` counting the tokens of its pool (``kind``: integers or text) in
    each row, then weights."""
    pool = {"pool_int64s": [12, 13, 15, 17]} if kind == "int" else {"pool_strings": ["the", "cat", "sat", "mat"]}
    counter = helper.make_node(
        "TfIdfVectorizer",
        ["tokens"],
        ["counts"],
        mode="TF",
        min_gram_length=1,
        max_gram_length=1,
        max_skip_count=0,
        ngram_counts=[0],
        ngram_indexes=[0, 1, 2, 3],
        **pool,
    )
    weights = onnx.numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    tokens = _tensor("tokens", ("n", 6), TensorProto.INT64 if kind == "int" else TensorProto.STRING)
    graph = helper.make_graph(
        [counter, helper.make_node("MatMul", ["counts", "w"], ["y"])],
        "tfidf",
        [tokens],
        [_tensor("y", ("n", 3))],
        [weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _swap_two_weight_rows(model: ir.Model) -> None:
    weights = model.graph.initializers["w"]
    values = weights.const_value.numpy().copy()
    values[[1, 2]] = values[[2, 1]]
    weights.const_value = ir.tensor(values)


@pytest.mark.parametrize("kind", ["int", "text"])
def test_a_rewrite_wrong_for_counted_tokens_is_caught_on_generated_tokens(tmp_path: Path, kind: str) -> None:
    # Before: applied (every count 0 on both sides), with a warning that every output was constant.
    record = optimize_with_rewrite(_counted_tokens(kind), _swap_two_weight_rows, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def _objectness_times_classes() -> onnx.ModelProto:
    """The saturated Sigmoid classifier (``_classifier``) with its first label as objectness and the other nine as
    classes, ``y = classes * objectness``, as a detector's confidence is computed."""
    model = _classifier("Sigmoid")
    for name, value in (("first", 0), ("second", 1), ("end", 10), ("labels", 1)):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([value], np.int64), name))
    tail = [
        helper.make_node("Slice", ["y0", "first", "second", "labels"], ["objectness"]),
        helper.make_node("Slice", ["y0", "second", "end", "labels"], ["classes"]),
        helper.make_node("Mul", ["classes", "objectness"], ["y"]),
    ]
    model = _with_tail(model, tail, TensorProto.FLOAT)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 9
    return model


def test_a_wrong_rewrite_behind_a_product_of_saturated_heads_is_rolled_back(tmp_path: Path) -> None:
    # Before: applied, verified at max |Δ| 0 (every confidence stayed 0.0 or 1.0).
    record = optimize_with_rewrite(_objectness_times_classes(), _doubled_logits, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "the logits 'logits' (Sigmoid behind output 'y' is saturated" in record.detail, record.detail


def test_a_wrong_rewrite_behind_a_thresholded_saturated_head_is_rolled_back(tmp_path: Path) -> None:
    model = _classifier("Sigmoid")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    model = _with_tail(model, [helper.make_node("Greater", ["y0", "half"], ["y"])], TensorProto.BOOL)
    # Before: applied (logits thousands apart: no label crossed 0.5 on generated inputs).
    record = optimize_with_rewrite(model, _one_class_moved, tmp_path).passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "the logits 'logits' (Sigmoid behind output 'y' is saturated" in record.detail, record.detail


def test_a_saturated_quick_gelu_output_is_still_fused(tmp_path: Path) -> None:
    # x * sigmoid(1.702 x), the Sigmoid saturated (weights x10), is now a head behind a Mul: its fusion stays applied.
    rng = np.random.default_rng(0)
    weights = [
        onnx.numpy_helper.from_array((rng.standard_normal((16, 8)) * 10).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(np.array(1.702, np.float32), "alpha"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Mul", ["h", "alpha"], ["scaled"]),
        helper.make_node("Sigmoid", ["scaled"], ["gate"]),
        helper.make_node("Mul", ["h", "gate"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "quick_gelu", [_tensor("x", ("batch", 16))], [_tensor("y", ("batch", 8))], weights)
    source = tmp_path / "in.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), source)
    _, report = api.optimize_with_report(source, ["+fuse-gelu"], output=tmp_path / "out.onnx")
    record = next(record for record in report.passes if record.name == "fuse-gelu")
    assert record.status == STATUS_APPLIED, record.detail

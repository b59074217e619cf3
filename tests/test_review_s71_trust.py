"""Hostile review s71 (trust): inputs compared with a constant threshold. Each test failed before its fix.

1. Fixed: an input compared with a constant by ``Less``, ``Greater``, ``LessOrEqual`` or ``GreaterOrEqual`` (or
   ``ai.onnx.ml``'s ``Binarizer``) where the draws all fall on one side of it (floats are standard normal, integers 0
   or 1) took one side only: skl2onnx's double ``Binarizer`` (``Where(Less(X, th), 0, 1)``), its float
   ``Binarizer`` op, its ``KBinsDiscretizer`` (``Less`` of each ``ArrayFeatureExtractor`` column with the bin edges,
   then ``ArgMax``), torch's ``torch.where(age > 10, ...)`` of integer codes and ``torch.where(x < -4, ...)`` of
   floats: a rewrite wrong on the side never drawn was applied as verified. Such inputs are now drawn about half
   each side of the threshold (``_compared_keys``, ``_threshold_sides``).
2. Fixed: an input of one element compared so (``If(Greater(speed, 1.5))``, ``If(Less(step, 0))``) took one branch in
   every set; it now holds a value each side in turn (``compared_constants``).
3. Fixed: a clipped path (``Clip(x, 0, 6)``, ``Max(x, -5)``, a clamp then a branch) and the splits of a tree ensemble
   (``TreeEnsembleRegressor``, opset 5's ``TreeEnsemble``) were never reached by normal draws either: a ReLU6
   rewritten as a ReLU, a dropped clamp and a wrong leaf past a split at 30.5 verified.
4. Fixed: the same behind a normalization by constants (``(x - 300) / 50 > 1``; skl2onnx's ``Scaler`` before a tree:
   a split of a scaled age at 0.3 is an age of 43.6, which normal draws never reach).
5. Fixed: a float an ``IsNaN`` or an ``ai.onnx.ml`` ``Imputer`` reads (skl2onnx's ``SimpleImputer``) was never drawn
   missing: a wrong imputed mean verified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import make_inputs
from optimizer.pipeline import STATUS_APPLIED, STATUS_ROLLED_BACK
from tests.helpers import optimize_with_rewrite

_OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid("ai.onnx.ml", 3)]


def _model(nodes, inputs, initializers, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "thresholds", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=_OPSETS, ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _binarizer_double(threshold: float = 5.0) -> onnx.ModelProto:
    """skl2onnx's ``Binarizer`` of doubles: ``Where(Less(X, th), 0, 1)``."""
    nodes = [
        helper.make_node("Less", ["X", "th"], ["binbool"]),
        helper.make_node("Where", ["binbool", "cst0", "cst1"], ["variable"]),
    ]
    constants = [
        numpy_helper.from_array(np.array(0.0), "cst0"),
        numpy_helper.from_array(np.array(1.0), "cst1"),
        numpy_helper.from_array(np.array(threshold), "th"),
    ]
    inputs = [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, 4])]
    outputs = [helper.make_tensor_value_info("variable", TensorProto.DOUBLE, [None, 4])]
    return _model(nodes, inputs, constants, outputs)


def _binarizer_op(threshold: float = 5.0) -> onnx.ModelProto:
    """skl2onnx's ``Binarizer`` of floats: ``ai.onnx.ml``'s ``Binarizer`` op (1 where ``X > threshold``)."""
    nodes = [helper.make_node("Binarizer", ["X"], ["variable"], domain="ai.onnx.ml", threshold=threshold)]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])]
    outputs = [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 4])]
    return _model(nodes, inputs, [], outputs)


_EDGES = ([20.0, 40.0, 60.0], [0.2, 0.5], [-3.0, 3.0])  # an age's, a ratio's and a score's inner bin edges


def _k_bins(rows: int | None = None) -> onnx.ModelProto:
    """skl2onnx's ``KBinsDiscretizer`` (ordinal): each column taken by an ``ArrayFeatureExtractor``, cast, compared
    with its inner bin edges by ``Less``, and the first edge above it found by ``ArgMax`` over a column of ones
    (``column * 0 + 1``), over ``rows`` rows (unnamed: any)."""
    nodes, digitised = [], []
    constants = [
        numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        numpy_helper.from_array(np.ones(1, np.float32), "one"),
    ]
    for i, edges in enumerate(_EDGES):
        constants += [
            numpy_helper.from_array(np.array(i, np.int64), f"index{i}"),
            numpy_helper.from_array(np.array(edges, np.float32), f"edges{i}"),
        ]
        nodes += [
            helper.make_node("ArrayFeatureExtractor", ["X", f"index{i}"], [f"column{i}"], domain="ai.onnx.ml"),
            helper.make_node("Cast", [f"column{i}"], [f"cast{i}"], to=TensorProto.FLOAT),
            helper.make_node("Less", [f"cast{i}", f"edges{i}"], [f"less{i}"]),
            helper.make_node("Cast", [f"less{i}"], [f"lessf{i}"], to=TensorProto.FLOAT),
        ]
        if i == 0:
            nodes += [
                helper.make_node("Mul", ["cast0", "zero"], ["zeros"]),
                helper.make_node("Add", ["zeros", "one"], ["last"]),
            ]
        nodes += [
            helper.make_node("Concat", [f"lessf{i}", "last"], [f"joined{i}"], axis=1),
            helper.make_node("ArgMax", [f"joined{i}"], [f"bin{i}"], axis=1),
            helper.make_node("Cast", [f"bin{i}"], [f"digitised{i}"], to=TensorProto.FLOAT),
        ]
        digitised.append(f"digitised{i}")
    nodes.append(helper.make_node("Concat", digitised, ["variable"], axis=1))
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [rows, len(_EDGES)])]
    outputs = [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [rows, len(_EDGES)])]
    return _model(nodes, inputs, constants, outputs)


def _where(source: str, op: str, threshold, dtype) -> onnx.ModelProto:
    """torch's ``torch.where(source <op> threshold, x * above, x * below)`` (``source`` of ``dtype``, ``[L]``)."""
    nodes = [
        helper.make_node(op, [source, "threshold"], ["chosen"]),
        helper.make_node("Mul", ["x", "above"], ["scaled_above"]),
        helper.make_node("Mul", ["x", "below"], ["scaled_below"]),
        helper.make_node("Where", ["chosen", "scaled_above", "scaled_below"], ["y"]),
    ]
    constants = [
        numpy_helper.from_array(np.array(threshold, dtype=helper.tensor_dtype_to_np_dtype(dtype)), "threshold"),
        numpy_helper.from_array(np.array(2.0, np.float32), "above"),
        numpy_helper.from_array(np.array(3.0, np.float32), "below"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"])]
    if source != "x":
        inputs.append(helper.make_tensor_value_info(source, dtype, ["L"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L"])]
    return _model(nodes, inputs, constants, outputs)


def _set(name: str, value) -> callable:
    def rewrite(model: ir.Model) -> None:
        old = model.graph.initializers[name].const_value.numpy()
        model.graph.initializers[name].const_value = ir.Tensor(np.asarray(value, dtype=old.dtype), name=name)

    return rewrite


def _threshold_attribute(value: float):
    def rewrite(model: ir.Model) -> None:
        (node,) = model.graph
        node.attributes["threshold"] = ir.AttrFloat32("threshold", value)

    return rewrite


def _keep(model: ir.Model) -> None:
    model.graph.name = "renamed"


_WRONG = {
    "binarizer double: the value at or above": (_binarizer_double, _set("cst1", 2.0)),
    "binarizer op: threshold moved": (_binarizer_op, _threshold_attribute(8.0)),
    "k-bins: every edge moved past the data": (_k_bins, _set("edges0", [1e9, 1e9, 1e9])),
    "integer code above 10": (lambda: _where("age", "Greater", 10, TensorProto.INT64), _set("above", 5.0)),
    "float below -4": (lambda: _where("x", "Less", -4.0, TensorProto.FLOAT), _set("above", 5.0)),
    "float at or above 4": (lambda: _where("x", "GreaterOrEqual", 4.0, TensorProto.FLOAT), _set("above", 5.0)),
}


@pytest.mark.parametrize("kind", list(_WRONG))
def test_a_rewrite_wrong_on_the_side_of_a_threshold_never_drawn_is_rolled_back(tmp_path: Path, kind: str) -> None:
    build, rewrite = _WRONG[kind]
    record = optimize_with_rewrite(build(), rewrite, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


@pytest.mark.parametrize("kind", list(_WRONG))
def test_a_correct_rewrite_beside_a_threshold_still_verifies(tmp_path: Path, kind: str) -> None:
    record = optimize_with_rewrite(_WRONG[kind][0](), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def test_k_bins_columns_are_drawn_into_every_bin() -> None:
    drawn = make_inputs(ir.from_proto(_k_bins(rows=64)))["X"]
    for column, edges in enumerate(_EDGES):
        bins = set(np.searchsorted(np.asarray(edges, np.float32), drawn[:, column], side="right").tolist())
        assert bins == set(range(len(edges) + 1)), (column, bins)


def _branches() -> tuple[onnx.GraphProto, onnx.GraphProto]:
    """An ``If``'s branches ``x * above`` and ``x * below`` (``x`` and the constants from the main graph)."""
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "above"], ["then_y"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, ["L"])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "below"], ["else_y"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, ["L"])],
    )
    return then_graph, else_graph


def _scalar_if(op: str, threshold, dtype) -> onnx.ModelProto:
    """``y = If(source <op> threshold, x * above, x * below)``, ``source`` a scalar of ``dtype`` (a speed, a step)."""
    then_graph, else_graph = _branches()
    nodes = [
        helper.make_node(op, ["source", "threshold"], ["chosen"]),
        helper.make_node("If", ["chosen"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    constants = [
        numpy_helper.from_array(np.array(threshold, dtype=helper.tensor_dtype_to_np_dtype(dtype)), "threshold"),
        numpy_helper.from_array(np.array(2.0, np.float32), "above"),
        numpy_helper.from_array(np.array(3.0, np.float32), "below"),
    ]
    inputs = [
        helper.make_tensor_value_info("source", dtype, []),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L"])]
    return _model(nodes, inputs, constants, outputs)


_SCALARS = {
    "float above 1.5": (lambda: _scalar_if("Greater", 1.5, TensorProto.FLOAT), "above"),
    "float below 1.5": (lambda: _scalar_if("Greater", 1.5, TensorProto.FLOAT), "below"),
    "integer at least 4": (lambda: _scalar_if("GreaterOrEqual", 4, TensorProto.INT64), "above"),
    "integer below 0": (lambda: _scalar_if("Less", 0, TensorProto.INT64), "above"),
}


@pytest.mark.parametrize("kind", list(_SCALARS))
def test_each_branch_a_scalar_threshold_selects_is_verified(tmp_path: Path, kind: str) -> None:
    build, broken = _SCALARS[kind]
    record = optimize_with_rewrite(build(), _set(broken, 7.0), tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def _clipped(low: float | None, high: float | None, *, then: str = "") -> onnx.ModelProto:
    """``y = Clip(x, low, high)`` (``x [L]``), or with ``then`` a comparison, ``torch.where(y > 50, y * above, y *
    below)`` after it (clamp, then branch)."""
    names = ["x", "low" if low is not None else "", "high" if high is not None else ""]
    nodes = [helper.make_node("Clip", names, ["clipped" if then else "y"])]
    constants = [
        numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("low", low), ("high", high)) if v is not None
    ]
    constants += [
        numpy_helper.from_array(np.array(50.0, np.float32), "threshold"),
        numpy_helper.from_array(np.array(2.0, np.float32), "above"),
        numpy_helper.from_array(np.array(3.0, np.float32), "below"),
    ]
    if then:
        nodes += [
            helper.make_node(then, ["clipped", "threshold"], ["chosen"]),
            helper.make_node("Mul", ["clipped", "above"], ["scaled_above"]),
            helper.make_node("Mul", ["clipped", "below"], ["scaled_below"]),
            helper.make_node("Where", ["chosen", "scaled_above", "scaled_below"], ["y"]),
        ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L"])]
    return _model(nodes, inputs, [c for c in constants if c.name in {n for node in nodes for n in node.input}], outputs)


def _floored_at(bound: float) -> onnx.ModelProto:
    """``y = Max(x, bound)`` (``x [L]``): ``torch.clamp(x, min=bound)`` as some exporters write it."""
    nodes = [helper.make_node("Max", ["x", "bound"], ["y"])]
    constants = [numpy_helper.from_array(np.array(bound, np.float32), "bound")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L"])]
    return _model(nodes, inputs, constants, outputs)


def _unclipped(model: ir.Model) -> None:
    """The clip (or ``Max``) dropped: the same output wherever no element is past its bounds."""
    (node,) = [node for node in model.graph if node.op_type in ("Clip", "Max")]
    output = node.outputs[0]
    identity = ir.node("Identity", [node.inputs[0]])
    model.graph.insert_after(node, identity)
    output.replace_all_uses_with(identity.outputs[0], replace_graph_outputs=True)
    identity.outputs[0].name, output.name = output.name, "gone"
    model.graph.remove(node, safe=True)


def _tree(split: float = 30.5) -> onnx.ModelProto:
    """skl2onnx's ``DecisionTreeRegressor`` of two features: ``X[:, 0] <= split`` (an age) then ``X[:, 1] <= -0.2``."""
    node = helper.make_node(
        "TreeEnsembleRegressor",
        ["X"],
        ["variable"],
        domain="ai.onnx.ml",
        n_targets=1,
        nodes_treeids=[0] * 5,
        nodes_nodeids=[0, 1, 2, 3, 4],
        nodes_featureids=[0, 1, 0, 0, 0],
        nodes_values=[split, -0.2, 0.0, 0.0, 0.0],
        nodes_modes=["BRANCH_LEQ", "BRANCH_LEQ", "LEAF", "LEAF", "LEAF"],
        nodes_truenodeids=[1, 2, 0, 0, 0],
        nodes_falsenodeids=[4, 3, 0, 0, 0],
        nodes_hitrates=[1.0] * 5,
        nodes_missing_value_tracks_true=[0] * 5,
        target_treeids=[0, 0, 0],
        target_nodeids=[2, 3, 4],
        target_ids=[0, 0, 0],
        target_weights=[1.0, 2.0, 3.0],
    )
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])]
    outputs = [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])]
    return _model([node], inputs, [], outputs)


def _older_leaf(model: ir.Model) -> None:
    """The leaf past the first split (``X[:, 0] > 30.5``) given another value."""
    (node,) = [node for node in model.graph if node.op_type == "TreeEnsembleRegressor"]
    node.attributes["target_weights"] = ir.AttrFloat32s("target_weights", [1.0, 2.0, 9.0])


_CLIPPED = {
    "clip at 6 dropped (relu6 to relu)": (lambda: _clipped(0.0, 6.0), _set("high", 3e38)),
    "max at -5 dropped": (lambda: _floored_at(-5.0), _unclipped),
    "clamped then above 50": (lambda: _clipped(0.0, 100.0, then="Greater"), _set("above", 5.0)),
    "tree leaf past a split": (_tree, _older_leaf),
}


@pytest.mark.parametrize("kind", list(_CLIPPED))
def test_a_rewrite_wrong_past_a_clip_or_a_split_is_rolled_back(tmp_path: Path, kind: str) -> None:
    build, rewrite = _CLIPPED[kind]
    record = optimize_with_rewrite(build(), rewrite, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


@pytest.mark.parametrize("kind", list(_CLIPPED))
def test_a_correct_rewrite_beside_a_clip_or_a_split_still_verifies(tmp_path: Path, kind: str) -> None:
    record = optimize_with_rewrite(_CLIPPED[kind][0](), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def test_a_tree_s_features_are_drawn_each_side_of_its_splits() -> None:
    model = _tree()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 64
    drawn = make_inputs(ir.from_proto(model))["X"]
    assert (drawn[:, 0] <= 30.5).any() and (drawn[:, 0] > 30.5).any()


def _tree_opset5(split: float = 30.5) -> onnx.ModelProto:
    """LightGBM's tree as onnxmltools writes it for ``ai.onnx.ml`` opset 5 (``TreeEnsemble``, float64 ``X [None,
    2]``, as atspm-detector's): ``X[:, 0] <= split`` picks leaf 1.0, else 3.0."""
    node = helper.make_node(
        "TreeEnsemble",
        ["X"],
        ["variable"],
        domain="ai.onnx.ml",
        n_targets=1,
        tree_roots=[0],
        nodes_featureids=[0],
        nodes_splits=numpy_helper.from_array(np.array([split], np.float64)),
        nodes_modes=numpy_helper.from_array(np.array([0], np.uint8)),
        nodes_truenodeids=[0],
        nodes_trueleafs=[1],
        nodes_falsenodeids=[1],
        nodes_falseleafs=[1],
        leaf_targetids=[0, 0],
        leaf_weights=numpy_helper.from_array(np.array([1.0, 3.0], np.float64)),
    )
    inputs = [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, 2])]
    outputs = [helper.make_tensor_value_info("variable", TensorProto.DOUBLE, [None, 1])]
    graph = helper.make_graph([node], "tree5", inputs, outputs)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def test_an_opset_5_tree_s_features_are_drawn_each_side_of_its_splits() -> None:
    model = _tree_opset5()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 64
    drawn = make_inputs(ir.from_proto(model))["X"]
    assert (drawn[:, 0] <= 30.5).any() and (drawn[:, 0] > 30.5).any()
    assert (np.abs(drawn[:, 1]) < 8).all()  # the feature no split reads: drawn as before


def _scaled_tree() -> onnx.ModelProto:
    """skl2onnx's ``make_pipeline(StandardScaler(), DecisionTreeRegressor())``: ``Scaler`` (an age of mean 40 and
    deviation 12, a feature already standard), then a tree that splits the scaled age at 0.3 (an age of 43.6)."""
    model = _tree(split=0.3)
    scaler = helper.make_node("Scaler", ["X"], ["scaled"], domain="ai.onnx.ml", offset=[40.0, 0.0], scale=[1 / 12, 1.0])
    model.graph.node[0].input[0] = "scaled"
    model.graph.node.insert(0, scaler)
    return model


def _normalized_where() -> onnx.ModelProto:
    """torch's ``torch.where((x - 300) / 50 > 1, x * above, x * below)``: an input normalized by constants, then
    compared (a sample rate's, a pitch's, a count's)."""
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "deviation"], ["normalized"]),
        helper.make_node("Greater", ["normalized", "threshold"], ["chosen"]),
        helper.make_node("Mul", ["x", "above"], ["scaled_above"]),
        helper.make_node("Mul", ["x", "below"], ["scaled_below"]),
        helper.make_node("Where", ["chosen", "scaled_above", "scaled_below"], ["y"]),
    ]
    constants = [
        numpy_helper.from_array(np.array(value, np.float32), name)
        for name, value in (("mean", 300.0), ("deviation", 50.0), ("threshold", 1.0), ("above", 2.0), ("below", 3.0))
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L"])]
    return _model(nodes, inputs, constants, outputs)


_NORMALIZED = {
    "scaler then tree": (_scaled_tree, _older_leaf),
    "normalized then compared": (_normalized_where, _set("above", 5.0)),
}


@pytest.mark.parametrize("kind", list(_NORMALIZED))
def test_a_rewrite_wrong_past_a_threshold_on_normalized_values_is_rolled_back(tmp_path: Path, kind: str) -> None:
    build, rewrite = _NORMALIZED[kind]
    record = optimize_with_rewrite(build(), rewrite, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


@pytest.mark.parametrize("kind", list(_NORMALIZED))
def test_a_correct_rewrite_beside_a_threshold_on_normalized_values_verifies(tmp_path: Path, kind: str) -> None:
    record = optimize_with_rewrite(_NORMALIZED[kind][0](), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail


def test_a_scaled_feature_is_drawn_each_side_of_a_split_in_its_own_units() -> None:
    model = _scaled_tree()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 64
    drawn = make_inputs(ir.from_proto(model))["X"]
    assert (drawn[:, 0] <= 43.6).any() and (drawn[:, 0] > 43.6).any()
    assert (np.abs(drawn[:, 1]) < 8).all()  # split nowhere: drawn as before


def _imputer(spelling: str) -> onnx.ModelProto:
    """skl2onnx's ``SimpleImputer(strategy="mean")`` of ``X [None, 3]``: ``ai.onnx.ml``'s ``Imputer`` (NaN replaced
    by each column's mean), or the same written ``Where(IsNaN(X), means, X)``."""
    means = [40.0, 0.5, -3.0]
    if spelling == "Imputer":
        nodes = [
            helper.make_node(
                "Imputer",
                ["X"],
                ["variable"],
                domain="ai.onnx.ml",
                imputed_value_floats=means,
                replaced_value_float=float("nan"),
            )
        ]
        constants = []
    else:
        nodes = [
            helper.make_node("IsNaN", ["X"], ["missing"]),
            helper.make_node("Where", ["missing", "means", "X"], ["variable"]),
        ]
        constants = [numpy_helper.from_array(np.array(means, np.float32), "means")]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])]
    outputs = [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 3])]
    return _model(nodes, inputs, constants, outputs)


def _other_mean(model: ir.Model) -> None:
    """The imputed value of the first column changed: wrong only where a value is missing."""
    node = next(iter(model.graph))
    if node.op_type == "Imputer":
        node.attributes["imputed_value_floats"] = ir.AttrFloat32s("imputed_value_floats", [41.0, 0.5, -3.0])
    else:
        _set("means", [41.0, 0.5, -3.0])(model)


@pytest.mark.parametrize("spelling", ["Imputer", "IsNaN"])
def test_a_wrong_imputed_value_is_rolled_back(tmp_path: Path, spelling: str) -> None:
    record = optimize_with_rewrite(_imputer(spelling), _other_mean, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


@pytest.mark.parametrize("spelling", ["Imputer", "IsNaN"])
def test_a_correct_rewrite_beside_an_imputer_verifies(tmp_path: Path, spelling: str) -> None:
    record = optimize_with_rewrite(_imputer(spelling), _keep, tmp_path).passes[0]
    assert record.status == STATUS_APPLIED, record.detail

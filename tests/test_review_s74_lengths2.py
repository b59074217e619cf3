"""Review s74 (lengths, build): the generated verification sets that hold a threshold behind an op whose preimage
depends on its attribute or has no closed form (``optimizer/compared_inputs.py``'s ``_preimage``: ``LeakyRelu``,
``Elu``, ``Erf``), a product of lengths or two lengths compared with each other (``compared_lengths``,
``_lengths_met``), and the size of the sets ``optimizer/api.py``'s ``_add_compared_lengths`` adds. The promise: a
rewrite wrong on one side of such a comparison is rolled back, and no set past a budget is drawn for it.

1. Fixed: ``LeakyRelu`` and ``Elu`` were not followed whatever their ``alpha`` (``LeakyRelu(x, alpha=0.1) < -0.5`` is
   ``x < -5``, ``Elu(x) < -0.99`` is ``x < log(0.01)``: never drawn), nor ``Erf``.
2. Fixed: a product of lengths (``ReduceProd(Shape(x))``, or a ``Mul`` of two: ``Shape(x)[0] * Shape(x)[1]``) and two
   lengths compared with each other were not read; the sides two lengths held are each set's, not the union of every
   length a dim had.
3. Fixed: a length compared with 1000 on images ``[N, 3, 224, 224]`` drew a set of 1001 images (600 MB); past the
   budget a length is left out and named in the report's note.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer.compared_inputs as compared_inputs
from optimizer.compared_inputs import compared_lengths
from optimizer.pipeline import STATUS_ROLLED_BACK
from tests.helpers import optimize_with_rewrite
from tests.test_review_s73_inputs2 import _break_hit, _keep, _switched
from tests.test_review_s74_lengths import _lengths_compared, _product


def _behind(op: str, comparison: str, threshold: float, **attributes) -> onnx.ModelProto:
    """``cond = comparison(op(x), threshold)`` of float ``x [L]``."""
    nodes = [helper.make_node(op, ["x"], ["t"], **attributes), helper.make_node(comparison, ["t", "c"], ["cond"])]
    return _switched(nodes, {"c": np.float32(threshold)})


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: _behind("LeakyRelu", "Less", -0.5, alpha=0.1), id="leaky-relu-alpha-0.1"),
        pytest.param(lambda: _behind("Elu", "Less", -0.99), id="elu"),
        pytest.param(lambda: _behind("Elu", "Greater", 6.0, alpha=2.0), id="elu-above-0"),
    ],
)
def test_a_rewrite_wrong_past_a_threshold_behind_an_op_of_an_alpha_is_rolled_back(tmp_path: Path, model) -> None:
    record = optimize_with_rewrite(model(), _break_hit, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail


def test_erf_is_taken_back_to_the_x_it_maps_to_the_threshold() -> None:
    wanted = np.asarray([-0.999999, -0.5, 0.0, 0.3, 0.99, float(np.float32(0.999999)), 1 - 1e-12])
    found = compared_inputs._erf_inverse(wanted)
    assert np.abs([math.erf(x) - y for x, y in zip(found.tolist(), wanted.tolist())]).max() < 1e-13


def test_the_lengths_that_decide_a_product_of_lengths() -> None:
    product = ir.from_proto(_product())  # ReduceProd(Shape(x[B, L])) > 1000
    assert compared_lengths(product) == {}  # no size for B: which length is unknown
    assert compared_lengths(product, sizes={"B": 4}) == {"L": [250, 251]}  # 4 rows: 1000 elements at 250
    assert compared_lengths(product, {"L": {128}}, sizes={"B": 4}) == {"L": [251]}  # 128 rows: under


def test_the_lengths_that_decide_two_lengths_compared_are_those_no_set_holds() -> None:
    model = ir.from_proto(_lengths_compared())  # Shape(a)[1] < Shape(b)[1]
    sizes = {"La": 128, "Lb": 128}
    assert compared_lengths(model, sizes=sizes) == {"La": [127, 128]}  # each side once
    assert compared_lengths(model, sizes=sizes, bindings=[sizes, {"La": 257, "Lb": 255}]) == {"La": [127]}
    # Each set's pair, not every length a dim had: a at 100 is under 128, but not under the 50 beside it.
    assert compared_lengths(model, sizes=sizes, bindings=[sizes, {"La": 100, "Lb": 50}]) == {"La": [127]}
    assert compared_lengths(model, sizes=sizes, bindings=[sizes, {"La": 100, "Lb": 150}]) == {}


def _images_past(limit: int) -> onnx.ModelProto:
    """``y = Where(Shape(x)[0] > limit, 1, 0)`` of images ``x [N, 3, 224, 224]``."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "at"], ["n"], axis=0),
        helper.make_node("Greater", ["n", "c"], ["cond"]),
        helper.make_node("Where", ["cond", "hit", "miss"], ["y"]),
    ]
    constants = {"at": np.int64(0), "c": np.int64(limit), "hit": np.float32(1.0), "miss": np.float32(0.0)}
    initializers = [numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items()]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])]
    graph = helper.make_graph(nodes, "images_past", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_a_length_whose_set_is_past_the_budget_is_named_not_drawn(tmp_path: Path) -> None:
    # Before: a set of 1001 images (600 MB, 12.9 s on this graph) was drawn.
    report = optimize_with_rewrite(_images_past(1000), _keep, tmp_path)
    assert not any("'N' at 1001" in label for label in report.input_sets), report.input_sets
    assert any("'N' at 1001" in warning and "at most" in warning for warning in report.warnings), report.warnings


def _rows_times_length(limit: int) -> onnx.ModelProto:
    """``cond = Shape(x)[0] * Shape(x)[1] > limit`` of ``x [B, L]``: lengths multiplied by a ``Mul``."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "first"], ["rows"], axis=0),
        helper.make_node("Gather", ["s", "second"], ["length"], axis=0),
        helper.make_node("Mul", ["rows", "length"], ["p"]),
        helper.make_node("Greater", ["p", "c"], ["cond"]),
    ]
    constants = {"first": np.int64(0), "second": np.int64(1), "c": np.int64(limit)}
    return _switched(nodes, constants, ("B", "L"), output=[])


def test_a_rewrite_wrong_past_two_lengths_multiplied_by_a_mul_is_rolled_back(tmp_path: Path) -> None:
    record = optimize_with_rewrite(_rows_times_length(1000), _break_hit, tmp_path).passes[0]
    assert record.status == STATUS_ROLLED_BACK, record.detail

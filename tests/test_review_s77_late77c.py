"""Review s77 (late77c): a late hostile review of review s77 xlen's lengths drawn together
(``compared_inputs.lengths_together``).

- Each pair of ways met is not each way of three dims at once: ``B > 1 and L < 6 and C > 2`` beside (1, 128, 128),
  (2, 257, 256), (1, 5, 128), (1, 128, 2) and the pair cover's (2, 5, 2) was never run, and a rewrite's branch there,
  or a rewrite wrong only in the original's own window there, verified (fixed: where three or more dims are compared,
  the ways of all of them at once no set holds come after the pairs, within the same four sets, the rest counted).
- A product of lengths compared (``Size(x[B, L]) == 10``, ``Shape(x)[0] * Shape(x)[1] == 10``, ``Size(x) < 301``) was
  read as its last dim's length at the first set's other sizes: beside ``B == 2`` the set drawn together was 10 tokens
  in a batch of 2 (20 elements), 5 never, and for ``Size(x) < 301`` the second binding (2, 257) was counted as under
  301; the rewrite verified (fixed: a product's way is read, and drawn, beside each set's own sizes).
- The three s76 tests whose labels changed in xlen still check their behaviour, but one no longer guards its
  mechanism: the original's own set at 129 now catches a rewrite's branch there first, and taking out the rewrite's
  own draw of the original's ways together (review s76 late76e's fix) failed no test. Guarded again here, where the
  original's four sets are taken before 129.
- Verified until review s77 xfix77 (strict xfails here until then): a sum of two inputs' lengths compared with a
  constant (``Shape(a)[1] + Shape(b)[1] == 7``, not followed), a product compared with an ``Equal`` the first set's
  other sizes do not divide (``Size(x[B, L, C]) == 30`` beside 128 tokens: no length found), and a comparison inside a
  model-local function (not followed); now each is rolled back (``compared_inputs.lengths_combined``, ``_inlined``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optimizer.compared_inputs import lengths_together
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from tests.test_review_s76_late76e import _ScaledAt129, _ScaledWhere, _verdict, _WindowScaledMore


def _save(path, nodes: list, dims: list[str], initializers: list) -> None:
    graph = helper.make_graph(
        nodes,
        "late77c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        initializers,
    )
    ir.save(ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)), path)


# The window on three dims: ``B > 1 and L < 6 and C > 2``.
_THREE = (("Greater", 1), ("Less", 6), ("Greater", 2))


def _window_of_three(path) -> None:
    """``x[B, L, C]`` -> ``x * (1 + 0.1 * (B > 1 and L < 6 and C > 2))``."""
    nodes, flags, bounds = [], [], []
    for axis, (op, number) in enumerate(_THREE):
        nodes.append(helper.make_node("Shape", ["x"], [f"length{axis}"], start=axis, end=axis + 1))
        bounds.append(helper.make_tensor(f"bound{axis}", TensorProto.INT64, [1], [number]))
        nodes.append(helper.make_node(op, [f"length{axis}", f"bound{axis}"], [f"flag{axis}"]))
        flags.append(f"flag{axis}")
    nodes += [
        helper.make_node("And", flags[:2], ["both"]),
        helper.make_node("And", ["both", flags[2]], ["inside"]),
        helper.make_node("Cast", ["inside"], ["flag"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["flag", "tenth"], ["bump"]),
        helper.make_node("Add", ["bump", "one"], ["scale"]),
        helper.make_node("Mul", ["x", "scale"], ["y"]),
    ]
    one, tenth = (helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("one", 1.0), ("tenth", 0.1)))
    _save(path, nodes, ["B", "L", "C"], [one, tenth, *bounds])


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """``x[B, L, C] -> x * 1.5``: no comparison of its own."""
    path = tmp_path_factory.mktemp("late77c") / "plain.onnx"
    half = helper.make_tensor("factor", TensorProto.FLOAT, [], [1.5])
    _save(path, [helper.make_node("Mul", ["x", "factor"], ["y"])], ["B", "L", "C"], [half])
    return path


class _ScaledInThree(_ScaledWhere):
    """The output scaled by 1.1 where ``B > 1 and L < 6 and C > 2``."""

    def condition(self, graph, constant):
        new, flags = [], []
        for axis, (op, number) in enumerate(_THREE):
            new.append(ir.node("Shape", [graph.inputs[0]], {"start": axis, "end": axis + 1}))
            new.append(ir.node(op, [new[-1].outputs[0], constant(f"bound{axis}", [number])]))
            flags.append(new[-1].outputs[0])
        new.append(ir.node("And", flags[:2]))
        new.append(ir.node("And", [new[-1].outputs[0], flags[2]]))
        return new


class _ExactInThree(_ScaledInThree):
    """``B > 1 and L < 6 and C > 2``, times 1.0 (exact)."""

    scale = 0.0


def test_a_branch_on_three_lengths_at_once_a_rewrite_wrote_is_rolled_back(plain, tmp_path):
    record = _verdict(plain, _ScaledInThree, tmp_path)
    # Before the fix: applied, verified; every pair of ways was held, (2, 5, 128) never.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "lengths the rewrite compares together (B=2, L=5, C=128)" in record.detail


def test_an_exact_branch_on_three_lengths_is_kept_and_checked_at_once(plain, tmp_path):
    record = _verdict(plain, _ExactInThree, tmp_path)
    assert record.status == STATUS_APPLIED, (record.status, record.detail)
    assert any("lengths the rewrite compares together (B=2, L=5, C=128)" in note for note in record.notes)


def test_a_rewrite_wrong_only_in_the_originals_window_on_three_dims_is_rolled_back(tmp_path):
    path = tmp_path / "three.onnx"
    _window_of_three(path)
    record = _verdict(path, _WindowScaledMore, tmp_path)
    # Before the fix: applied, verified; the original's sets met each pair of its ways, never all three at once.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "lengths the graph compares together (B=2, L=5, C=128)" in record.detail


@pytest.fixture(scope="module")
def plain2(tmp_path_factory):
    """``x[B, L] -> x * 1.5``."""
    path = tmp_path_factory.mktemp("late77c") / "plain2.onnx"
    half = helper.make_tensor("factor", TensorProto.FLOAT, [], [1.5])
    _save(path, [helper.make_node("Mul", ["x", "factor"], ["y"])], ["B", "L"], [half])
    return path


class _ScaledWhereProduct(_ScaledWhere):
    """The output scaled by 1.1 where ``B == 2`` and the elements of ``x[B, L]`` (``Size``, or a ``Mul`` of the two
    lengths) meet ``op`` ``number``."""

    op, number, size = "Equal", 10, True

    def condition(self, graph, constant):
        x = graph.inputs[0]
        new = [ir.node("Shape", [x], {"start": 0, "end": 1})]
        batch = new[0].outputs[0]
        if self.size:
            new.append(ir.node("Size", [x]))
            number = constant("elements", np.array(self.number, np.int64))
        else:
            new.append(ir.node("Shape", [x], {"start": 1, "end": 2}))
            new.append(ir.node("Mul", [batch, new[-1].outputs[0]]))
            number = constant("elements", [self.number])
        new.append(ir.node(self.op, [new[-1].outputs[0], number]))
        new.append(ir.node("Equal", [batch, constant("two", [2])]))
        new.append(ir.node("And", [new[-2].outputs[0], new[-1].outputs[0]]))
        return new


class _ScaledWhereMulOfLengths(_ScaledWhereProduct):
    size = False


class _ScaledWhereFewElements(_ScaledWhereProduct):
    op, number = "Less", 301


@pytest.mark.parametrize(
    ("mutant", "shown"),
    [
        (_ScaledWhereProduct, "(B=2, L=5)"),
        (_ScaledWhereMulOfLengths, "(B=2, L=5)"),
        (_ScaledWhereFewElements, "(B=2, L=128)"),
    ],
)
def test_a_branch_on_a_product_of_lengths_and_a_length_is_rolled_back(plain2, tmp_path, mutant, shown):
    record = _verdict(plain2, mutant, tmp_path)
    # Before the fix: applied, verified; drawn at (2, 10), 20 elements, or (2, 301), and (2, 257) counted under 301.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert f"lengths the rewrite compares together {shown}" in record.detail


def test_lengths_together_reads_a_product_beside_each_sets_sizes():
    two, ten = (helper.make_tensor(n, TensorProto.INT64, v, [k]) for n, v, k in (("two", [1], 2), ("ten", [], 10)))
    nodes = [
        helper.make_node("Shape", ["x"], ["batch"], start=0, end=1),
        helper.make_node("Size", ["x"], ["elements"]),
        helper.make_node("Equal", ["batch", "two"], ["at_b"]),
        helper.make_node("Equal", ["elements", "ten"], ["at_ten"]),
        helper.make_node("And", ["at_b", "at_ten"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "product",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, [1])],
        [two, ten],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    bindings = [{"B": 1, "L": 128}, {"B": 2, "L": 257}, {"B": 1, "L": 10}]
    # 10 elements in a batch of 2 is 5 tokens (at the first set's batch of 1 it was 10).
    assert lengths_together(model, bindings, ["B", "L"]) == ([{"B": 2, "L": 5}], 0)
    assert lengths_together(model, [*bindings, {"B": 2, "L": 5}], ["B", "L"]) == ([], 0)
    # (2, 10) is 20 elements, no pair held before: drawn again at 5.
    assert lengths_together(model, [*bindings, {"B": 2, "L": 10}], ["B", "L"]) == ([{"B": 2, "L": 5}], 0)


def test_a_branch_in_the_originals_window_its_four_sets_left_out_is_rolled_back(tmp_path):
    """The original's ``129 <= L < 200`` beside ``L < 10``, ``L < 20``, ``L < 30`` and ``L < 40``: its four sets are
    9, 19, 29 and 39, and 129 is named, not drawn, for the original; a rewrite's branch at 129 is drawn for the
    rewrite (review s76 late76e's fix, no longer guarded by its own test since xlen drew 129 for the original)."""
    one, tenth, hundredth = (
        helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("one", 1.0), ("tenth", 0.1), ("cent", 0.01))
    )
    bounds = [helper.make_tensor(n, TensorProto.INT64, s, v) for n, s, v in (("low", [1], [129]), ("high", [1], [200]))]
    steps = helper.make_tensor("steps", TensorProto.INT64, [4], [10, 20, 30, 40])
    nodes = [
        helper.make_node("Shape", ["x"], ["length"], start=1, end=2),
        helper.make_node("GreaterOrEqual", ["length", "low"], ["above"]),
        helper.make_node("Less", ["length", "high"], ["below"]),
        helper.make_node("And", ["above", "below"], ["inside"]),
        helper.make_node("Cast", ["inside"], ["flag"], to=TensorProto.FLOAT),
        helper.make_node("Less", ["length", "steps"], ["under"]),
        helper.make_node("Cast", ["under"], ["unders"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["unders"], ["count"], keepdims=0),
        helper.make_node("Mul", ["count", "cent"], ["nudge"]),
        helper.make_node("Mul", ["flag", "tenth"], ["bump"]),
        helper.make_node("Add", ["bump", "nudge"], ["bumps"]),
        helper.make_node("Add", ["bumps", "one"], ["scale"]),
        helper.make_node("Mul", ["x", "scale"], ["y"]),
    ]
    path = tmp_path / "steps.onnx"
    _save(path, nodes, ["B", "L"], [one, tenth, hundredth, steps, *bounds])
    record = _verdict(path, _ScaledAt129, tmp_path)
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'L' at 129, a length the rewrite compares" in record.detail


class _ScaledWhereSumIsSeven(_ScaledWhere):
    """The output scaled by 1.1 where the two inputs' lengths add up to 7 (``Shape(a)[1] + Shape(b)[1] == 7``, as
    the length of their ``Concat`` along it)."""

    factor = 0

    def condition(self, graph, constant):
        new = [ir.node("Shape", [value], {"start": 1, "end": 2}) for value in graph.inputs]
        new.append(ir.node("Add", [new[0].outputs[0], new[1].outputs[0]]))
        new.append(ir.node("Equal", [new[-1].outputs[0], constant("seven", [7])]))
        return new


def test_a_branch_on_a_sum_of_two_lengths_is_rolled_back(tmp_path):
    path = tmp_path / "two.onnx"
    half = helper.make_tensor("factor", TensorProto.FLOAT, [], [1.5])
    graph = helper.make_graph(
        [
            helper.make_node("Concat", ["a", "b"], ["joined"], axis=1),
            helper.make_node("Mul", ["joined", "factor"], ["y"]),
        ],
        "two",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", dim]) for name, dim in (("a", "L"), ("b", "P"))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T"])],
        [half],
    )
    ir.save(ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)), path)
    record = _verdict(path, _ScaledWhereSumIsSeven, tmp_path)
    # Before review s77 xfix77: applied, verified; no set was 7 long in all (128 + 128, 257 + 257, ...).
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)


class _ScaledWhereThirtyElements(_ScaledWhere):
    """The output scaled by 1.1 where ``x[B, L, C]`` holds 30 elements (``Size(x) == 30``: 2 x 5 x 3, ...)."""

    def condition(self, graph, constant):
        new = [ir.node("Size", [graph.inputs[0]])]
        new.append(ir.node("Equal", [new[0].outputs[0], constant("thirty", np.array(30, np.int64))]))
        return new


def test_a_branch_on_a_product_the_first_sets_sizes_do_not_divide_is_rolled_back(plain, tmp_path):
    record = _verdict(plain, _ScaledWhereThirtyElements, tmp_path)
    # Before review s77 xfix77: applied, verified; read as ``C`` beside B = 1 and L = 128, 30 elements are no whole
    # number of ``C``.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)


def test_a_rewrite_wrong_only_where_a_local_function_compares_a_length_is_rolled_back(tmp_path):
    """``x[B, L]`` -> ``x * (1 + 0.1 * (L == 7))``, the ``Equal`` inside a function of the model's own."""
    seven = helper.make_tensor("seven", TensorProto.INT64, [1], [7])
    function = helper.make_function(
        "local",
        "IsSeven",
        ["length"],
        ["at"],
        [
            helper.make_node("Constant", [], ["seven"], value=seven),
            helper.make_node("Equal", ["length", "seven"], ["at"]),
        ],
        [helper.make_opsetid("", 17)],
    )
    one, tenth = (helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("one", 1.0), ("tenth", 0.1)))
    nodes = [
        helper.make_node("Shape", ["x"], ["length"], start=1, end=2),
        helper.make_node("IsSeven", ["length"], ["inside"], domain="local"),
        helper.make_node("Cast", ["inside"], ["flag"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["flag", "tenth"], ["bump"]),
        helper.make_node("Add", ["bump", "one"], ["scale"]),
        helper.make_node("Mul", ["x", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "local",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "L"])],
        [one, tenth],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=9, functions=[function])
    path = tmp_path / "local.onnx"
    ir.save(ir.from_proto(proto), path)
    record = _verdict(path, _WindowScaledMore, tmp_path)
    # Before review s77 xfix77: applied, verified; no set was 7 long (128, 257, ...), the ``Equal`` in a function.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)

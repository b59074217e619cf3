"""Review s77 (xfix77): sums and products of lengths compared with constants, and comparisons inside model-local
functions (``compared_inputs.lengths_combined`` and ``_inlined``, which fixed review s77 late77c's three strict
xfails).

- A difference of two inputs' lengths (``Shape(a)[1] - Shape(b)[1] == 3``) was no more followed than their sum: every
  set held them equal, and a rewrite's branch there verified (fixed with the sum: its value is read, and a set drawn
  at the other dim's size with the last solved for).
- A product compared with a threshold the first set's other sizes overshoot (``Size(x[B, L, C]) < 64`` beside
  B = 1, L = 128: no ``C`` is under half an element) found no length either, and a rewrite's branch there verified.
- The length of a ``Concat`` of two inputs compared with a constant (``Shape(Concat(a, b))[1] == 7``, a ``Shape`` of no
  input) was not followed either (fixed: read as the sum of the two lengths).
- A length read inside a model-local function (``Shape`` there) and compared outside it, and a function calling
  another, were not followed (fixed: the calls are inlined in a copy the walk reads).
- Must not fire: an exact branch on a sum is applied and checked on the set drawn for it; a model without local
  functions is read as it is (no copy).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optimizer.compared_inputs import _inlined, lengths_combined
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from optimizer.verify import _samples_kept_apart
from tests.test_review_s76_late76e import _ScaledWhere, _verdict, _WindowScaledMore


def _model(nodes, inputs, outputs, initializers, functions=(), domains=()):
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(domain, 1) for domain in domains)]
    graph = helper.make_graph(nodes, "xfix77", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=opsets, ir_version=9, functions=list(functions))


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """``a[B, L]``, ``b[B, P]`` -> ``Concat(a, b) * 1.5``."""
    path = tmp_path_factory.mktemp("xfix77") / "joined.onnx"
    half = helper.make_tensor("factor", TensorProto.FLOAT, [], [1.5])
    proto = _model(
        [
            helper.make_node("Concat", ["a", "b"], ["joined"], axis=1),
            helper.make_node("Mul", ["joined", "factor"], ["y"]),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", dim]) for name, dim in (("a", "L"), ("b", "P"))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T"])],
        [half],
    )
    ir.save(ir.from_proto(proto), path)
    return path


class _ScaledWhereDifferenceIsThree(_ScaledWhere):
    """The output scaled by 1.1 where ``Shape(a)[1] - Shape(b)[1] == 3``."""

    factor = 0
    op = "Sub"

    def condition(self, graph, constant):
        new = [ir.node("Shape", [value], {"start": 1, "end": 2}) for value in graph.inputs]
        new.append(ir.node(self.op, [new[0].outputs[0], new[1].outputs[0]]))
        new.append(ir.node("Equal", [new[-1].outputs[0], constant("three", [3])]))
        return new


class _ExactWhereSumIsThree(_ScaledWhereDifferenceIsThree):
    """``Shape(a)[1] + Shape(b)[1] == 3``, times 1.0 (exact)."""

    op, scale = "Add", 0.0


def test_a_branch_on_a_difference_of_two_lengths_is_rolled_back(joined, tmp_path):
    record = _verdict(joined, _ScaledWhereDifferenceIsThree, tmp_path)
    # Before the fix: applied, verified; every set held the two lengths equal.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "lengths the rewrite compares together" in record.detail


def test_an_exact_branch_on_a_sum_is_kept_and_checked_where_it_holds(joined, tmp_path):
    record = _verdict(joined, _ExactWhereSumIsThree, tmp_path)
    assert record.status == STATUS_APPLIED, (record.status, record.detail)
    checked = [note for note in record.notes if "lengths the rewrite compares together" in note]
    assert checked and "L=1, P=2" in checked[0], record.notes


class _ScaledWhereTheJoinedLengthIsSeven(_ScaledWhere):
    """The output scaled by 1.1 where the ``Concat`` of the two inputs is 7 long (``Shape(joined)[1] == 7``)."""

    factor = 0

    def condition(self, graph, constant):
        joined = graph.outputs[0].producer().inputs[0]
        new = [ir.node("Shape", [joined], {"start": 1, "end": 2})]
        new.append(ir.node("Equal", [new[-1].outputs[0], constant("seven", [7])]))
        return new


def test_a_branch_on_the_length_of_a_concat_of_two_inputs_is_rolled_back(joined, tmp_path):
    record = _verdict(joined, _ScaledWhereTheJoinedLengthIsSeven, tmp_path)
    # Before the fix: applied, verified; a ``Shape`` of no input was no start of a walk, and no set was 7 long in all.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "lengths the rewrite compares together" in record.detail


def plain_model(path) -> None:
    """``x[B, L, C] -> x * 1.5``, at ``path``."""
    half = helper.make_tensor("factor", TensorProto.FLOAT, [], [1.5])
    proto = _model(
        [helper.make_node("Mul", ["x", "factor"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L", "C"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "L", "C"])],
        [half],
    )
    ir.save(ir.from_proto(proto), path)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """``plain_model``."""
    path = tmp_path_factory.mktemp("xfix77") / "plain.onnx"
    plain_model(path)
    return path


class _ScaledWhereFewElements(_ScaledWhere):
    """The output scaled by 1.1 where ``x[B, L, C]`` holds under 64 elements."""

    def condition(self, graph, constant):
        new = [ir.node("Size", [graph.inputs[0]])]
        new.append(ir.node("Less", [new[0].outputs[0], constant("few", np.array(64, np.int64))]))
        return new


def test_a_branch_on_a_product_under_what_the_first_sets_sizes_hold_is_rolled_back(plain, tmp_path):
    record = _verdict(plain, _ScaledWhereFewElements, tmp_path)
    # Before the fix: applied, verified; beside B = 1 and L = 128, under 64 elements is no length of ``C``.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)


def test_lengths_combined_solves_the_last_dim_beside_the_others():
    ten = helper.make_tensor("ten", TensorProto.INT64, [], [10])
    proto = _model(
        [helper.make_node("Size", ["x"], ["elements"]), helper.make_node("Equal", ["elements", "ten"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, [])],
        [ten],
    )
    model = ir.from_proto(proto)
    bindings = [{"B": 1, "L": 128}, {"B": 2, "L": 257}]
    assert lengths_combined(model, bindings, ["B", "L"]) == ([{"L": 10}], 0)
    assert lengths_combined(model, [*bindings, {"B": 2, "L": 5}], ["B", "L"]) == ([], 0)  # 10 elements held
    # ``L`` fixed by the caller: 10 elements in a batch of 1 is no set it may draw.
    assert lengths_combined(model, bindings, ["B"]) == ([], 0)
    # The same comparison in the model a rewrite was given: nothing new.
    assert lengths_combined(model, bindings, ["B", "L"], before=model) == ([], 0)


def _function_model(path, nested: bool) -> None:
    """``x[B, L]`` -> ``x * (1 + 0.1 * (L == 7))``, the length read by a ``Shape`` inside a function of the model's
    own (called from another with ``nested``) and compared outside it."""
    length = helper.make_function(
        "local", "LengthOf", ["x"], ["length"], [helper.make_node("Shape", ["x"], ["length"], start=1, end=2)], []
    )
    length.opset_import.extend([helper.make_opsetid("", 17)])
    functions = [length]
    called = "LengthOf"
    if nested:
        outer = helper.make_function(
            "local",
            "Outer",
            ["x"],
            ["length"],
            [helper.make_node("LengthOf", ["x"], ["length"], domain="local")],
            [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        )
        functions.append(outer)
        called = "Outer"
    one, tenth = (helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("one", 1.0), ("tenth", 0.1)))
    seven = helper.make_tensor("seven", TensorProto.INT64, [1], [7])
    nodes = [
        helper.make_node(called, ["x"], ["length"], domain="local"),
        helper.make_node("Equal", ["length", "seven"], ["inside"]),
        helper.make_node("Cast", ["inside"], ["flag"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["flag", "tenth"], ["bump"]),
        helper.make_node("Add", ["bump", "one"], ["scale"]),
        helper.make_node("Mul", ["x", "scale"], ["y"]),
    ]
    proto = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "L"])],
        [one, tenth, seven],
        functions,
        ["local"],
    )
    ir.save(ir.from_proto(proto), path)


@pytest.mark.parametrize("nested", [False, True])
def test_a_length_read_in_a_function_and_compared_outside_is_followed(tmp_path, nested):
    path = tmp_path / "length_of.onnx"
    _function_model(path, nested)
    record = _verdict(path, _WindowScaledMore, tmp_path)
    # Before the fix: applied, verified; the ``Shape`` in the function was no start of a walk.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'L' at 7, a length the graph compares" in record.detail


def test_a_model_without_local_functions_is_read_as_it_is(plain):
    model = ir.load(plain)
    assert _inlined(model) is model


# --- rows past the cap of four read alone, a sample each (late77a's strict xfail) ------------------------------------


def _bag_proto(dims: tuple[str, str], pooled: list[int], reshaped: bool = False):
    """``input_ids`` of ``dims`` -> ``Abs`` of a 200-row table's rows, max-pooled over ``pooled`` (reshaped to
    ``[-1, 4]`` first with ``reshaped``)."""
    rng = np.random.default_rng(0)
    table = helper.make_tensor("words", TensorProto.FLOAT, [200, 4], rng.standard_normal(800).tolist())
    axes = helper.make_tensor("axes", TensorProto.INT64, [len(pooled)], pooled)
    nodes = [helper.make_node("Gather", ["words", "input_ids"], ["rows"]), helper.make_node("Abs", ["rows"], ["size"])]
    initializers = [table, axes]
    kept = [dim for axis, dim in enumerate(dims) if axis not in pooled]
    if reshaped:
        initializers.append(helper.make_tensor("flat", TensorProto.INT64, [2], [-1, 4]))
        nodes.append(helper.make_node("Reshape", ["size", "flat"], ["flattened"]))
    nodes.append(helper.make_node("ReduceMax", [nodes[-1].output[0], "axes"], ["pooled"], keepdims=0))
    proto = _model(
        nodes,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, list(dims))],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [4] if reshaped else [*kept, 4])],
        initializers,
    )
    proto.opset_import[0].version = 18  # ``axes`` an input of ``ReduceMax``
    return proto


class _SixNegatedOneHalved(ir.passes.InPlacePass):
    """Rows 101 to 106 negated (exact behind ``Abs``), row 102 halved too (wrong)."""

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        value = model.graph.initializers["words"]
        array = value.const_value.numpy().copy()
        array[101:107] *= -1
        array[102] *= 0.5
        value.const_value = ir.tensor(array, name=value.name)
        return ir.passes.PassResult(model, True)


def test_a_row_past_the_cap_in_a_sequence_major_bag_is_read_alone_in_a_sample(tmp_path):
    path = tmp_path / "sequence_major.onnx"
    ir.save(ir.from_proto(_bag_proto(("sequence", "batch"), [0])), path)
    record = _verdict(path, _SixNegatedOneHalved, tmp_path)
    # Before the fix: applied, verified; rows 101, 103, 104 and 106 were read alone, 102 and 105 only beside others.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.notes)
    assert "each of rows 102, 105 of 'words', each alone in its sample" in record.detail


@pytest.mark.parametrize(
    ("dims", "pooled", "reshaped", "apart"),
    [
        (("batch", "sequence"), [1], False, True),
        (("sequence", "batch"), [0], False, True),
        (("batch", "sequence"), [0, 1], False, False),
        (("sequence", "batch"), [1], False, False),  # the batch, second: pooled across it
        (("batch", "sequence"), [0], True, False),
    ],
)
def test_samples_are_kept_apart_only_where_no_op_mixes_them(dims, pooled, reshaped, apart):
    model = ir.from_proto(_bag_proto(dims, pooled, reshaped))
    assert _samples_kept_apart(model, "batch") is apart

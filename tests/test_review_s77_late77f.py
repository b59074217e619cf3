"""Review s77 (late77f): a late hostile review of review s77 xfix77's samples kept apart
(``verify._samples_kept_apart``, ``Verifier._reach_rows_apart``) and sums and products of lengths compared with a
constant (``compared_inputs.lengths_combined``).

- A ``Softmax`` with no ``axis`` before opset 13 normalizes from axis 1 on (the input flattened there), not over the
  last axis alone: a sequence-major ``[L, B, D]`` one mixes its batch, and was read as keeping its samples apart, the
  set of one sample per row then named "the graph keeps its samples apart" (fixed: the default axis by opset).
- The bytes of one sample of the set of rows apart were read along each input's first axis: a sequence-major input's
  "sample" was one token's, and 16 samples of ``[L, B, D]`` inputs ran L times past the 16 MiB (fixed: along the
  batch axes of each input that is tiled).
- The length of a ``Concat`` of three inputs compared with a constant (``Shape(Concat(a, b, c))[1] == 7``) was not
  followed, not named, and a rewrite's branch there verified (fixed: a sum of any number of inputs' lengths).
- A ``ReduceProd`` of a shape compared with a value the first set's other sizes do not divide
  (``ReduceProd(Shape(x[B, L, C])) == 30``, README: "read as ``Size`` is") was not read in its own value as ``Size``
  is since xfix77, and a rewrite's branch there verified (fixed).
- A length read in a model-local function that imports ONNX at another opset than the model (18 beside 17, which ONNX
  Runtime runs) was not followed: the inliner refuses to mix opsets, the model was read as it is, and a rewrite's
  branch at ``L == 7`` verified (fixed: the copy's functions are read at the model's opsets; the model is untouched).
- A way of a sum or product whose tries ran out inside its search (``_MOST_COMBINED_TRIES``, shared across a call) was
  dropped unsaid, not counted in the note as those past the tries before it are (fixed: counted).
- A sum of three lengths (``Shape(a)[1] + Shape(b)[1] + Shape(c)[1] == 7``) was not followed: a strict xfail here, fixed
  in review s78 xfix78.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import optimizer.compared_inputs as compared_inputs
import optimizer.verify as verify
from optimizer.compared_inputs import _inlined, lengths_combined
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from optimizer.verify import _samples_kept_apart
from tests.test_review_s76_late76e import _ScaledWhere, _verdict, _WindowScaledMore
from tests.test_review_s77_xfix77 import _function_model, _model, plain_model

# --- samples kept apart ----------------------------------------------------------------------------------------------


def _softmax_bag(opset: int, axis: int | None = None):
    """``input_ids[sequence, batch]`` -> a table's rows, ``Softmax`` (``axis`` where given), max over the tokens."""
    table = helper.make_tensor("words", TensorProto.FLOAT, [200, 4], np.linspace(-1, 1, 800).tolist())
    softmax = helper.make_node("Softmax", ["rows"], ["scores"], **({} if axis is None else {"axis": axis}))
    proto = _model(
        [
            helper.make_node("Gather", ["words", "input_ids"], ["rows"]),
            softmax,
            helper.make_node("ReduceMax", ["scores"], ["pooled"], axes=[0], keepdims=0),
        ],
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["sequence", "batch"])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4])],
        [table],
    )
    proto.opset_import[0].version = opset
    return ir.from_proto(proto)


@pytest.mark.parametrize(
    ("opset", "axis", "apart"),
    [(11, None, False), (12, 1, False), (11, 2, True), (13, None, True), (13, 1, False)],
)
def test_a_softmax_before_opset_13_normalizes_from_axis_1_across_a_sequence_major_batch(opset, axis, apart):
    # Before the fix: (11, None) was read as apart, the default axis taken for -1 (the last) at every opset.
    assert _samples_kept_apart(_softmax_bag(opset, axis), "batch") is apart


def _wide_bag(path) -> None:
    """``input_ids[sequence, batch]``, ``extra[sequence, batch, 4]`` -> ``Abs`` of a table's rows plus ``extra``,
    max-pooled over the tokens: samples kept apart, each input sequence-major."""
    rng = np.random.default_rng(0)
    table = helper.make_tensor("words", TensorProto.FLOAT, [200, 4], rng.standard_normal(800).tolist())
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    proto = _model(
        [
            helper.make_node("Gather", ["words", "input_ids"], ["rows"]),
            helper.make_node("Abs", ["rows"], ["size"]),
            helper.make_node("Add", ["size", "extra"], ["summed"]),
            helper.make_node("ReduceMax", ["summed", "axes"], ["pooled"], keepdims=0),
        ],
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["sequence", "batch"]),
            helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["sequence", "batch", 4]),
        ],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4])],
        [table, axes],
    )
    proto.opset_import[0].version = 18
    ir.save(ir.from_proto(proto), path)


class _TwentyNegated(ir.passes.InPlacePass):
    """Rows 101 to 120 negated (exact behind ``Abs``)."""

    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        value = model.graph.initializers["words"]
        array = value.const_value.numpy().copy()
        array[101:121] *= -1
        value.const_value = ir.tensor(array, name=value.name)
        return ir.passes.PassResult(model, True)


def test_the_rows_apart_set_keeps_to_its_bytes_where_the_batch_is_not_the_first_axis(tmp_path):
    path = tmp_path / "wide.onnx"
    _wide_bag(path)
    # A sample of the first set (128 tokens): 1 KiB of ids and 2 KiB of ``extra``; room for 3 samples.
    with mock.patch.object(verify, "_ROWS_APART_BYTES", 3 * 3 << 10):
        record = _verdict(path, _TwentyNegated, tmp_path)
    assert record.status == STATUS_APPLIED, (record.status, record.detail)
    apart = [note for note in record.notes if "each alone in its sample" in note]
    assert apart, record.notes
    shown = apart[0].split("for each of rows ", 1)[1].split(" of 'words'", 1)[0]
    # Before the fix: 16 rows (a "sample" read along the tokens: 24 bytes), 16 times the bytes allowed.
    assert len(shown.split(", ")) == 3, apart[0]


# --- sums of lengths -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def joined_three(tmp_path_factory):
    """``a[B, L]``, ``b[B, P]``, ``c[B, Q]`` -> ``Concat(a, b, c) * 1.5``."""
    path = tmp_path_factory.mktemp("late77f") / "joined_three.onnx"
    half = helper.make_tensor("factor", TensorProto.FLOAT, [], [1.5])
    named = (("a", "L"), ("b", "P"), ("c", "Q"))
    proto = _model(
        [
            helper.make_node("Concat", ["a", "b", "c"], ["joined"], axis=1),
            helper.make_node("Mul", ["joined", "factor"], ["y"]),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", dim]) for name, dim in named],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T"])],
        [half],
    )
    ir.save(ir.from_proto(proto), path)
    return path


class _ScaledWhereTheJoinedLengthIsSeven(_ScaledWhere):
    """The output scaled by 1.1 where the ``Concat`` of the inputs is 7 long (``Shape(joined)[1] == 7``)."""

    factor = 0

    def condition(self, graph, constant):
        joined = graph.outputs[0].producer().inputs[0]
        new = [ir.node("Shape", [joined], {"start": 1, "end": 2})]
        new.append(ir.node("Equal", [new[-1].outputs[0], constant("seven", [7])]))
        return new


def test_a_branch_on_the_length_of_a_concat_of_three_inputs_is_rolled_back(joined_three, tmp_path):
    record = _verdict(joined_three, _ScaledWhereTheJoinedLengthIsSeven, tmp_path)
    # Before the fix: applied, verified, and no note; only a ``Concat`` of two inputs was read as a sum.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "lengths the rewrite compares together" in record.detail


class _ScaledWhereTheThreeLengthsAddToSeven(_ScaledWhere):
    """The output scaled by 1.1 where ``Shape(a)[1] + Shape(b)[1] + Shape(c)[1] == 7``."""

    factor = 0

    def condition(self, graph, constant):
        new = [ir.node("Shape", [value], {"start": 1, "end": 2}) for value in graph.inputs]
        new.append(ir.node("Add", [new[0].outputs[0], new[1].outputs[0]]))
        new.append(ir.node("Add", [new[-1].outputs[0], new[2].outputs[0]]))
        new.append(ir.node("Equal", [new[-1].outputs[0], constant("seven", [7])]))
        return new


def test_a_branch_on_a_sum_of_three_lengths_is_rolled_back(joined_three, tmp_path):
    record = _verdict(joined_three, _ScaledWhereTheThreeLengthsAddToSeven, tmp_path)
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """xfix77's ``plain_model``."""
    path = tmp_path_factory.mktemp("late77f") / "plain.onnx"
    plain_model(path)
    return path


class _ScaledWhereTheShapesProductIsThirty(_ScaledWhere):
    """The output scaled by 1.1 where ``ReduceProd(Shape(x[B, L, C])) == 30``."""

    def condition(self, graph, constant):
        new = [ir.node("Shape", [graph.inputs[0]])]
        new.append(ir.node("ReduceProd", [new[0].outputs[0]], {"keepdims": 0}))
        new.append(ir.node("Equal", [new[-1].outputs[0], constant("thirty", np.array(30, np.int64))]))
        return new


def test_a_branch_on_a_reduceprod_of_a_shape_the_first_sizes_do_not_divide_is_rolled_back(plain, tmp_path):
    record = _verdict(plain, _ScaledWhereTheShapesProductIsThirty, tmp_path)
    # Before the fix: applied, verified; 30 elements beside B = 1 and L = 128 is no length of ``C``.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "lengths the rewrite compares together" in record.detail


def test_a_length_read_in_a_function_at_another_opset_is_followed(tmp_path):
    path = tmp_path / "length_of.onnx"
    _function_model(path, nested=False)
    proto = onnx.load(path)
    proto.functions[0].opset_import[0].version = 18  # the model imports ONNX at 17
    onnx.save(proto, path)
    record = _verdict(path, _WindowScaledMore, tmp_path)
    # Before the fix: applied, verified; the inliner refused (opset mismatch) and the ``Shape`` went unread.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'L' at 7, a length the graph compares" in record.detail
    model = ir.load(path)
    assert [node.op_type for node in _inlined(model).graph][0] == "Shape"
    assert next(iter(model.functions.values())).opset_imports[""] == 18  # the model itself is left as it is


def test_a_way_whose_tries_run_out_inside_its_search_is_counted():
    thirty = helper.make_tensor("thirty", TensorProto.INT64, [], [30])
    proto = _model(
        [helper.make_node("Size", ["x"], ["elements"]), helper.make_node("Equal", ["elements", "thirty"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L", "C"])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, [])],
        [thirty],
    )
    model = ir.from_proto(proto)
    bindings = [{"B": 1, "L": 128, "C": 4}]
    # With every try: ``C`` at 30 once (B, L) = (1, 1) is tried.
    assert lengths_combined(model, bindings, ["B", "L", "C"]) == ([{"L": 1, "C": 30}], 0)
    # One try: (B, L) = (1, 128) gives no whole ``C``, and the search stops there.
    with mock.patch.object(compared_inputs, "_MOST_COMBINED_TRIES", 1):
        # Before the fix: ([], 0), the way left out and not counted.
        assert lengths_combined(model, bindings, ["B", "L", "C"]) == ([], 1)

"""Generated integer inputs that reach a table through arithmetic by constants, or through an index tuple of a width
no shape records: every final index stays in the table, and the inputs still vary.

Index inputs were followed to the ``Gather``/``GatherND`` reading them through shape ops only. An ``Add``, ``Sub`` or
``Mul`` by a constant on the way (torch's legacy export spells ``table[batch, ids]`` as a flat ``Gather`` of
``ids + Range(0, batch) * rows``) stopped the walk: positions were drawn 0..127 and the input model failed on its
own generated inputs. A ``GatherND`` tuple component after an index whose width no shape recorded could sit at any
table axis, so it got the smallest (a batch axis of 1): every generated value was 0.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optimizer.inputs import _index_bounds, make_inputs
from tests.helpers import index_model as _model
from tests.helpers import run

# name: (signature, body, tables, constants, (least value, exclusive bound) the input is drawn under)
_ARITHMETIC = {
    # c - ids on 8 rows: 10 - ids stays in [0, 8) for ids in [3, 10]; drawn 0..1, the old code read rows 10 and 9
    "reversed-sub": (
        "(int64[1, sequence] input_ids) => (float[1, sequence, 4] y)",
        "index = Sub(ten, input_ids)\ny = Gather(E, index)",
        {"E": (8, 4)},
        {"ten": 10},
        (3, 11),
    ),
    # ids - 1: from 1, every index a row counted from the start (the old code drew 0, reading the last row)
    "minus-one": (
        "(int64[1, sequence] input_ids) => (float[1, sequence, 4] y)",
        "index = Sub(input_ids, one)\ny = Gather(E, index)",
        {"E": (8, 4)},
        {"one": 1},
        (1, 9),
    ),
    # -ids can only be read from the end: ONNX's [-8, 8) leaves ids 0..8 (only 0 stays non-negative)
    "negated": (
        "(int64[1, sequence] input_ids) => (float[1, sequence, 4] y)",
        "index = Neg(input_ids)\ny = Gather(E, index)",
        {"E": (8, 4)},
        {},
        (0, 9),
    ),
    # a row scaled by 0 reads row 0 whatever the position; the other, scaled by 2, bounds them: 2 * 7 < 16
    "mul-by-zero-in-one-row": (
        "(int64[2, sequence] position_ids) => (float[2, sequence, 4] y)",
        "index = Mul(position_ids, scales)\ny = Gather(E, index)",
        {"E": (16, 4)},
        {"scales": [[0], [2]]},
        (0, 8),
    ),
    # (ids + [[0], [8]]) * [[2], [1]]: row 0 ends as 2 * ids, row 1 as ids + 8; each constant broadcast meets its own
    # row (pairing every offset with every scale would give 2 * ids + 16 and a bound of 4)
    "broadcast-constants-stay-paired": (
        "(int64[2, sequence] position_ids) => (float[2, sequence, 4] y)",
        "shifted = Add(position_ids, offsets)\nindex = Mul(shifted, scales)\ny = Gather(E, index)",
        {"E": (24, 4)},
        {"offsets": [[0], [8]], "scales": [[2], [1]]},
        (0, 12),
    ),
    # a GatherND component after arithmetic: position + 1 indexes the 64-row axis
    "gather-nd-component-plus-one": (
        "(int64[1, sequence] position_ids) => (float[1, sequence, 4] y)",
        """
        column = Unsqueeze(position_ids, last)
        next = Add(column, one)
        shape = Shape(column)
        batch = Expand(zero, shape)
        index = Concat<axis = -1>(batch, next)
        y = GatherND(T, index)
        """,
        {"T": (1, 64, 4)},
        {"last": [-1], "one": 1, "zero": [[[0]]]},
        (0, 63),
    ),
}


@pytest.mark.parametrize("case", list(_ARITHMETIC))
def test_an_index_through_arithmetic_by_constants_stays_in_its_table(case):
    signature, body, tables, constants, (low, high) = _ARITHMETIC[case]
    model = _model(signature, body, tables, constants)
    inputs = make_inputs(model)
    (values,) = inputs.values()
    assert values.min() == low and values.max() == high - 1  # in the table, and all of what fits it
    run(model, inputs)  # the model runs on its generated inputs
    whole, components, least, component_lows = _index_bounds(model.graph.inputs[0])
    assert max([least, *component_lows.values()]) == low
    assert min([whole, *components.values()], key=lambda bound: np.inf if bound is None else bound) == high


def test_an_index_scaled_by_zero_everywhere_is_bounded_by_its_other_uses_only():
    # Near-miss of the above (the code before never followed the Mul, and passed it too): ids * 0 reads row 0 of the
    # 8-row table whatever ids hold, so only the 100-row embedding bounds them (a scale of 0 taken as a bound would
    # draw 0..7).
    model = _model(
        "(int64[1, sequence] input_ids) => (float[1, sequence, 4] y, float[1, sequence, 4] z)",
        "index = Mul(input_ids, zero)\ny = Gather(E, index)\nz = Gather(F, input_ids)",
        {"E": (8, 4), "F": (100, 4)},
        {"zero": 0},
    )
    assert _index_bounds(model.graph.inputs[0]) == (100, {}, 0, {})
    inputs = make_inputs(model)
    assert inputs["input_ids"].max() >= 8
    run(model, inputs)


# torch's legacy export of ``table[torch.arange(ids.shape[0])[:, None], ids]`` on a [2, 64, 4] table, op for op
# (torch.onnx.export(..., dynamo=False, opset_version=17); only the names are shortened).
LEGACY_FLAT_INDEX = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[batch, S] position_ids) => (float[batch, S, 4] y) <float[2, 64, 4] table = {ONES}, int64[1] rows = {64},
                                                                int64[1] width = {4}, int64[2] flat = {-1, 4}> {
      shape = Shape(position_ids)
      zero = Constant<value = int64 {0}>()
      count = Gather<axis = 0>(shape, zero)
      count64 = Cast<to = 7>(count)
      start = Constant<value = int64 {0}>()
      step = Constant<value = int64 {1}>()
      range = Range(start, count64, step)
      one = Constant<value = int64[1] {1}>()
      batch = Unsqueeze(range, one)
      table2 = Flatten<axis = 2>(table)
      offsets = Mul(batch, rows)
      index = Add(position_ids, offsets)
      rows_read = Gather<axis = 0>(table2, index)
      index_shape = Shape(index)
      gathered = Reshape(rows_read, flat)
      out_shape = Concat<axis = 0>(index_shape, width)
      y = Reshape(gathered, out_shape)
    }""".replace("ONES", ", ".join(["1.0"] * 512))


def test_the_legacy_flat_index_stays_in_each_batch_row_at_every_batch():
    # The row offsets come from Range(0, Shape(position_ids)[0]) * 64, read at the batch the inputs are generated
    # at: at batch 1 the flat table's 128 rows are the only bound, at batch 2 the second row starts at 64.
    proto = onnx.parser.parse_model(LEGACY_FLAT_INDEX)
    onnx.checker.check_model(proto)
    model = ir.from_proto(proto)
    for batch, high in ((2, 64), (1, 128)):
        inputs = make_inputs(model, {"batch": batch})
        assert inputs["position_ids"].max() == high - 1
        run(model, inputs)
    assert _index_bounds(model.graph.inputs[0], {"batch": 2, "S": 128}) == (64, {}, 0, {})
    # A third row would start at 128, past the table: no position fits (the model fails on any), and none is promised.
    assert _index_bounds(model.graph.inputs[0], {"batch": 3, "S": 128})[0] == 0


def _tuple_after(batch: str, table: tuple[int, ...]) -> ir.Model:
    """position_ids as component 1 of a GatherND tuple, after a component 0 ``batch`` computes of them."""
    return _model(
        "(int64[1, S] position_ids) => (float y)",
        f"""
        column = Unsqueeze(position_ids, last)
        {batch}
        index = Concat<axis = -1>(batch, column)
        y = GatherND(T, index)
        """,
        {"T": table},
        {"last": [-1], "zero": [[[0]]], "one": [1]},
    )


@pytest.mark.parametrize(
    "batch",
    [
        "batch = Mul(zero, column)",  # broadcasting: the width of its inputs
        "leading = Shape(position_ids)\ntarget = Concat<axis = 0>(leading, one)\nbatch = Expand(zero, target)",
    ],
    ids=["mul", "expand-to-a-concatenated-shape"],
)
def test_the_width_of_a_computed_batch_component_is_read_where_provable(batch):
    model = _tuple_after(batch, (1, 64, 4))
    inputs = make_inputs(model)
    assert inputs["position_ids"].max() == 63
    run(model, inputs)
    assert _index_bounds(model.graph.inputs[0])[0] == 64


def test_positions_of_an_unprovable_component_vary_where_onnx_runtime_takes_them(caplog):
    # Min's width is not read: position_ids may be component 0, 1 or 2 of the tuple, and the smallest axis, the
    # batch of 1, leaves only 0. Drawn under the widest axis (64) instead, the model runs: they are kept.
    model = _tuple_after("batch = Min(zero, column)", (1, 64, 4))
    notes: list[str] = []
    with caplog.at_level(logging.WARNING, logger="optimizer.inputs"):
        inputs = make_inputs(model, notes=notes)
    assert 0 < inputs["position_ids"].max() < 64
    run(model, inputs)
    assert not caplog.records and not notes
    assert _index_bounds(model.graph.inputs[0])[0] == 1  # the bound proven; the wider one was checked


def test_positions_that_only_a_constant_fits_are_kept_with_a_warning(caplog):
    # The same graph on a [4, 1, 8] table: position_ids really are component 1, an axis of 1, so wider values
    # fail in ONNX Runtime; the zeros stay, and the user is told (a note, and a warning logged) that verification
    # does not exercise other values.
    model = _tuple_after("batch = Min(zero, column)", (4, 1, 8))
    notes: list[str] = []
    with caplog.at_level(logging.WARNING, logger="optimizer.inputs"):
        inputs = make_inputs(model, notes=notes)
    assert not inputs["position_ids"].any()
    run(model, inputs)
    (note,) = notes
    assert note.startswith("generated 'position_ids': one value repeated") and "--inputs FILE.npz" in note
    assert [record.getMessage() for record in caplog.records] == notes


def test_optimize_reports_positions_that_only_a_constant_fits():
    # The note reaches the report's warnings, which the CLI prints at its default verbosity (a logged warning alone
    # does not show there).
    from optimizer.api import optimize_with_report

    model = _tuple_after("batch = Min(zero, column)", (4, 1, 8))
    _, report = optimize_with_report(model, ["remove-unused"])
    assert any("generated 'position_ids': one value repeated" in warning for warning in report.warnings), (
        report.warnings
    )

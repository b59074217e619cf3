"""Review s74 (late4): the session's last merges, tried to break — per-row lengths beside a batch exported static
(``_row_length``, hunt 9), the accuracy budget with drawn outputs left out (late2), and tests sharing one verified run
of the passes before the one under test (``tests.helpers.split_pipeline``).

1. **Per-row lengths that also index a table were drawn past it.** A length input (``length [1]`` beside
   ``input_ids [1, T]``, or ``[batch]`` beside ``[batch, T]``) that picks a row of a length-bucket embedding was drawn
   at the sequence's full length, past the table: ONNX Runtime refused every generated input ("indices element out of
   data bounds") and ``optimize`` stopped with an error. Since hunt 9 read a static ``[1]`` as a batch, this hit
   models that verified before. Such lengths are now drawn within the table, as other indices are. Likewise a
   ``max_length [1]`` beside ``input_ids [1, T]`` that counts a ``Loop``'s trips, whose body indexes a table by its
   iteration number: drawn at T (past the table at a longer length) since hunt 9, it is a trip count again.
2. **An approximate pass scored on an output it does not touch** (a strict xfail until review s74 feedbudget, which
   measures drawn outputs fed the same draws): where the only
   deterministic output is computed apart from the quantized layer and the layer's error reaches a drawn output alone
   (a training-mode Dropout's), the budget leaves the drawn output out and measures a cosine of 1.0 on the other: an
   int8 layer the budget keeps float on the same model without the Dropout is applied, its record saying cosine 1.0.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import make_inputs
from optimizer.runtime import run_model

_N = helper.make_node


def _bucketed_length(rows: int | str, table: int) -> ir.Model:
    """Token ids ``[rows, T]`` embedded, plus the row of a ``table``-row embedding that ``length [rows]`` picks."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            _N("Gather", ["tokens", "input_ids"], ["embedded"]),
            _N("Gather", ["buckets", "length"], ["bucket"]),
            _N("Unsqueeze", ["bucket", "one"], ["bucket3"]),
            _N("Add", ["embedded", "bucket3"], ["out"]),
        ],
        "bucketed_length",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [rows, "T"]),
            helper.make_tensor_value_info("length", TensorProto.INT64, [rows]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [rows, "T", 3])],
        [
            numpy_helper.from_array(rng.standard_normal((12, 3)).astype(np.float32), "tokens"),
            numpy_helper.from_array(rng.standard_normal((table, 3)).astype(np.float32), "buckets"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


@pytest.mark.parametrize("rows", [1, "batch"])
def test_lengths_that_index_a_table_are_drawn_within_it(rows):
    model = _bucketed_length(rows, table=4)
    dims = {"T": 6} if rows == 1 else {"T": 6, "batch": 2}
    inputs = make_inputs(model, dims, seed=0)
    assert inputs["length"].max() < 4, inputs["length"]  # was each row's full length, 6
    run_model(model, inputs)  # ONNX Runtime refused the Gather's index 6 into 4 rows
    # Near miss: a table longer than the sequence keeps each row's full length.
    assert make_inputs(_bucketed_length(rows, table=64), dims, seed=0)["length"][0] == 6


def _counted_loop() -> ir.Model:
    """``input_ids [1, T]`` embedded plus the sum of the first ``max_length [1]`` rows of a 16-row table, summed by a
    ``Loop`` whose trip count is ``max_length`` and whose body gathers the table's row at its iteration number."""
    rng = np.random.default_rng(0)
    body = helper.make_graph(
        [
            _N("Gather", ["table", "i"], ["row"]),
            _N("Add", ["sum_in", "row"], ["sum_out"]),
            _N("Identity", ["going_in"], ["going_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("going_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("sum_in", TensorProto.FLOAT, [4]),
        ],
        [
            helper.make_tensor_value_info("going_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("sum_out", TensorProto.FLOAT, [4]),
        ],
    )
    graph = helper.make_graph(
        [
            _N("Squeeze", ["max_length"], ["trips"]),
            _N("Loop", ["trips", "", "zeros"], ["sum"], body=body),
            _N("Gather", ["tokens", "input_ids"], ["embedded"]),
            _N("Add", ["embedded", "sum"], ["out"]),
        ],
        "counted_loop",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "T"]),
            helper.make_tensor_value_info("max_length", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "T", 4])],
        [
            numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "table"),
            numpy_helper.from_array(rng.standard_normal((12, 4)).astype(np.float32), "tokens"),
            numpy_helper.from_array(np.zeros(4, np.float32), "zeros"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_a_loops_trip_count_beside_a_static_batch_is_no_rows_length():
    model = _counted_loop()
    inputs = make_inputs(model, {"T": 32}, seed=0)
    assert 1 < inputs["max_length"][0] <= 16, inputs["max_length"]  # was 32, the sequence's length
    run_model(model, inputs)  # ONNX Runtime refused the body's Gather of row 16 of 16


def _drawn_apart(drawn: bool) -> ir.Model:
    """``y`` a training-mode Dropout (``drawn``; else an Identity) of ``(x * keep) @ W1``, ``W1``'s first row 3000,
    which int8 (per channel) rounds the rest of to 0, and ``keep`` zero there: the layer's int8 output is near 0;
    ``z = Relu(x)``, deterministic and apart from the MatMul. (One outlier the first row reads whole kept the layer at a
    cosine of 0.9999, int8 per channel: review s74 feedbudget.)"""
    weight = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    weight[0] = 3000.0
    keep = np.ones(32, np.float32)
    keep[0] = 0.0
    graph = helper.make_graph(
        [
            _N("Mul", ["x", "keep"], ["k"]),
            _N("MatMul", ["k", "W1"], ["h"]),
            _N("Dropout", ["h", "ratio", "training"], ["y"]) if drawn else _N("Identity", ["h"], ["y"]),
            _N("Relu", ["x"], ["z"]),
        ],
        "drawn_apart",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 32]) for name in ("y", "z")],
        [
            numpy_helper.from_array(weight, "W1"),
            numpy_helper.from_array(keep, "keep"),
            numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
            numpy_helper.from_array(np.array(True), "training"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def test_int8_whose_error_reaches_a_drawn_output_alone_is_not_scored_on_another():
    from optimizer.api import optimize_with_report

    def record(drawn: bool):
        _, report = optimize_with_report(
            _drawn_apart(drawn), ["quantize-dynamic"], quantize="dynamic", dims={"batch": 2}
        )
        return next(r for r in report.passes if r.name == "quantize-dynamic")

    assert record(False).status == "unchanged"  # without the Dropout the layer stays float: it misses the budget
    drawn = record(True)
    # Applied with "cosine 1.0", measured on z alone, which the int8 layer does not reach.
    assert drawn.status != "applied" or (drawn.cosine is not None and drawn.cosine < 0.9), (drawn.status, drawn.cosine)

"""Review s79 (xbias): float16 conversion of the floats a graph computes from positions and constants alone
(``passes.quantization.float16._positions_kept``). Only a rotary table's angles (for a ``Cos``/``Sin``) were kept
float32; every other such float was computed in float16, its step growing with the length: an ALiBi distance past
2,048 positions (``tests/test_review_s79_late79e.py``), and a relative-position bucket (T5's, WavLM's:
``Cast(log(distance) * scale, to=int64)``), its ``Log`` and products rounded to float16 and cast to float16 for the
``Cast`` to integers. They are now computed in float32, as the input computes them, and the ``Cast`` to integers
reads them so (no float16 bucket is truncated: none of T5's configurations measured differed up to 4,096, so this
is exactness kept rather than a wrong bucket seen). Positions are found on the types ONNX's inference gives: the
unfused Llama fixture records none, its angles were computed in float16, and ``--passes convert-float16`` was rolled
back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.report import STATUS_APPLIED

_WIDTH = 8


def _bucketed_bias() -> ir.Model:
    """Attention over ``h`` with a bias looked up by a log-spaced bucket of the distance ``|j - i|`` (T5's relative
    attention bias, with no exact small buckets): ``table[min(int(log(d + 1) * 4), 15)]``."""
    weight = np.random.default_rng(0).standard_normal((_WIDTH, _WIDTH)).astype(np.float32) * 0.1
    table = np.random.default_rng(1).standard_normal(16).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["length"], start=1, end=2),
            helper.make_node("Squeeze", ["length"], ["limit"]),
            helper.make_node("Range", ["zero", "limit", "one"], ["positions"]),
            helper.make_node("Unsqueeze", ["positions", "first"], ["row"]),
            helper.make_node("Unsqueeze", ["positions", "second"], ["column"]),
            helper.make_node("Sub", ["row", "column"], ["relative"]),
            helper.make_node("Abs", ["relative"], ["distance"]),
            helper.make_node("Cast", ["distance"], ["distance_f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["distance_f", "unit"], ["shifted"]),
            helper.make_node("Log", ["shifted"], ["log"]),
            helper.make_node("Mul", ["log", "scale"], ["scaled"]),
            helper.make_node("Cast", ["scaled"], ["bucket"], to=TensorProto.INT64),
            helper.make_node("Min", ["bucket", "last"], ["capped"]),
            helper.make_node("Gather", ["table", "capped"], ["bias"]),
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Transpose", ["h"], ["h_t"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["h", "h_t"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["biased"]),
            helper.make_node("Softmax", ["biased"], ["weights"], axis=-1),
            helper.make_node("MatMul", ["weights", "h"], ["y"]),
        ],
        "bucketed_bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", _WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array(15, np.int64), "last"),
            numpy_helper.from_array(np.array([0], np.int64), "first"),
            numpy_helper.from_array(np.array([1], np.int64), "second"),
            numpy_helper.from_array(np.array(1.0, np.float32), "unit"),
            numpy_helper.from_array(np.array(4.0, np.float32), "scale"),
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(weight, "W"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_relative_position_bucket_is_computed_in_float32_and_truncated_from_float32():
    # The Log and its products computed in float16, and the Cast to integers reading them through a Cast to float16,
    # until review s79 xbias: a float16 step (1/64 at 16) below a whole number truncates to the next bucket.
    result, report = optimize_with_report(_bucketed_bias(), passes=["convert-float16"], target="cuda", fp16=True)
    (record,) = report.passes
    assert record.status == STATUS_APPLIED, record.detail
    typed = {node.op_type: node.outputs[0].dtype for node in result.graph if node.op_type in ("Log", "Mul")}
    assert typed == {"Log": ir.DataType.FLOAT, "Mul": ir.DataType.FLOAT}, typed
    (bucket,) = (node for node in result.graph if node.op_type == "Cast" and node.outputs[0].name == "bucket")
    assert bucket.inputs[0].dtype == ir.DataType.FLOAT, bucket.inputs[0]


def test_the_rotary_angles_of_a_file_recording_no_types_are_kept_float32():
    # llama_legacy.onnx records no types: its positions reach the rotary Cast through ops ``_integer_valued`` does not
    # follow, so its angles were computed in float16 and the long check rolled the conversion back ("'sequence' at
    # 4096: ... max abs error 0.959"); the typed positions of ``_position_floats`` find them.
    model = ir.load(str(Path(__file__).parent / "fixtures" / "llama_legacy.onnx"))
    _, report = optimize_with_report(model, passes=["convert-float16"], target="cuda", fp16=True)
    (record,) = report.passes
    assert record.status == STATUS_APPLIED, record.detail
